"""Pretraining objectives as functions of tensors.

Each loss takes the features a model produced and returns a scalar; nothing here knows about a model class.
Distributed concerns are one argument: `gather` pulls the other ranks' features in (see `distributed.py`), and
`local_loss` computes only the local rows of the global similarity matrix (labels offset by rank), as open_clip.
"""

import torch
import torch.nn.functional as F

from .distributed import all_gather_features, get_rank, get_world_size


def contrastive_logits(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised (N, D) image and (M, D) text embeddings -> logits_per_image (N, M), logits_per_text (M, N).
    `logit_scale` is the already-exponentiated temperature."""
    logits_per_text = logit_scale * text_embeds @ image_embeds.t()
    if logit_bias is not None:
        logits_per_text = logits_per_text + logit_bias
    return logits_per_text.t(), logits_per_text


def check_paired(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> None:
    if image_embeds.shape[0] != text_embeds.shape[0]:
        raise ValueError(
            f"A contrastive loss needs one caption per image, but got {image_embeds.shape[0]} images and "
            f"{text_embeds.shape[0]} texts; pass paired batches (same size for `pixel_values` and `input_ids`)."
        )


def softmax_contrastive_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    gather: bool = True,
    local_loss: bool = False,
    gather_with_grad: bool = True,
) -> torch.Tensor:
    """CLIP's symmetric InfoNCE over paired, L2-normalised embeddings (pair i is image i with text i).

    With `gather` under torch.distributed the negatives are the global batch. `local_loss=False` computes the
    full (world*B)^2 similarity on each rank; `local_loss=True` only the local rows, with labels offset by rank.
    """
    check_paired(image_embeds, text_embeds)
    batch_size = image_embeds.shape[0]
    if gather and get_world_size() > 1:
        all_images = all_gather_features(image_embeds, gather_with_grad)
        all_texts = all_gather_features(text_embeds, gather_with_grad)
        if local_loss:
            logits_per_image = logit_scale * image_embeds @ all_texts.t()
            logits_per_text = logit_scale * text_embeds @ all_images.t()
            labels = torch.arange(batch_size, device=image_embeds.device) + get_rank() * batch_size
        else:
            logits_per_image, logits_per_text = contrastive_logits(all_images, all_texts, logit_scale)
            labels = torch.arange(all_images.shape[0], device=image_embeds.device)
    else:
        logits_per_image, logits_per_text = contrastive_logits(image_embeds, text_embeds, logit_scale)
        labels = torch.arange(batch_size, device=image_embeds.device)
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def sigmoid_contrastive_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    gather: bool = True,
    gather_with_grad: bool = True,
) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss: every (image, text) pair is a binary problem, positive on the diagonal.
    Summed over texts, averaged over images. Under torch.distributed the local images meet every rank's texts;
    DDP's gradient average then matches the single-process loss over the global batch."""
    check_paired(image_embeds, text_embeds)
    batch_size = image_embeds.shape[0]
    offset = 0
    if gather and get_world_size() > 1:
        text_embeds = all_gather_features(text_embeds, gather_with_grad)
        offset = get_rank() * batch_size
    logits = logit_scale * image_embeds @ text_embeds.t() + logit_bias
    labels = -torch.ones_like(logits)
    rows = torch.arange(batch_size, device=logits.device)
    labels[rows, rows + offset] = 1.0
    return -F.logsigmoid(labels * logits).sum() / batch_size


def contrastive_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None,
    loss_type: str = "softmax",
    gather: bool = True,
    local_loss: bool = False,
    gather_with_grad: bool = True,
) -> torch.Tensor:
    """The ITC loss a dual encoder's `config.loss_type` names: softmax InfoNCE or pairwise sigmoid (which needs
    `logit_bias`). `local_loss` applies to the softmax loss only."""
    if loss_type == "sigmoid":
        if logit_bias is None:
            raise ValueError("The sigmoid contrastive loss needs `logit_bias`, got None.")
        return sigmoid_contrastive_loss(
            image_embeds, text_embeds, logit_scale, logit_bias, gather=gather, gather_with_grad=gather_with_grad
        )
    return softmax_contrastive_loss(
        image_embeds, text_embeds, logit_scale, gather=gather, local_loss=local_loss, gather_with_grad=gather_with_grad
    )


def sample_itm_negatives(
    image_ids: torch.Tensor,
    candidate_image_ids: torch.Tensor,
    own_index: torch.Tensor,
    ratio: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ITM pairs: each of the B rows becomes a negative with probability `ratio`, paired with a candidate
    (a caption of the global batch) drawn uniformly among those of *another* image.

    Args:
        image_ids: (B,) image id of each local row.
        candidate_image_ids: (M,) image id of each candidate caption (the gathered global batch).
        own_index: (B,) index of each local row's own caption among the candidates.
        ratio: share of negatives, in [0, 1].

    Returns:
        `choice` (B,): the candidate each row is paired with (its own caption for positives) and `itm_labels` (B,):
        1 for a matching pair, 0 for a negative. A row whose every candidate shows the same image stays positive.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"`ratio` (share of ITM negatives) must be in [0, 1], got {ratio}.")
    if image_ids.shape != own_index.shape:
        raise ValueError(f"`image_ids` {tuple(image_ids.shape)} and `own_index` {tuple(own_index.shape)} must match.")
    device = image_ids.device
    other_image = candidate_image_ids[None, :].to(device) != image_ids[:, None]
    draw = torch.rand(image_ids.shape[0], generator=generator, device="cpu").to(device)
    negative = (draw < ratio) & other_image.any(dim=1)
    choice = own_index.clone()
    if negative.any():
        weights = other_image[negative].float().cpu()
        choice[negative] = torch.multinomial(weights, 1, generator=generator).squeeze(1).to(device)
    return choice, (~negative).long()


def sample_hard_negatives(
    similarity: torch.Tensor, image_ids: torch.Tensor, candidate_image_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """ALBEF's hard negatives: for each of the B queries, a candidate drawn from the softmax of its (B, M)
    similarities, never a candidate of the query's own image.

    Returns the drawn candidate index (B,) and whether the row has a negative at all (B,) bool (False when every
    candidate shows the query's image; the index is then 0 and must be ignored)."""
    if similarity.shape != (image_ids.shape[0], candidate_image_ids.shape[0]):
        raise ValueError(
            f"`similarity` has shape {tuple(similarity.shape)}, expected (len(image_ids), len(candidate_image_ids)) = "
            f"({image_ids.shape[0]}, {candidate_image_ids.shape[0]})."
        )
    same_image = image_ids[:, None] == candidate_image_ids[None, :].to(image_ids.device)
    weights = torch.softmax(similarity.float(), dim=1).masked_fill(same_image, 0.0)
    has_negative = (~same_image).any(dim=1)
    # Rows whose other candidates all underflowed to 0 still get a uniform draw among them.
    weights = torch.where(weights.sum(dim=1, keepdim=True) > 0, weights, (~same_image).float())
    weights[~has_negative] = 1.0
    return torch.multinomial(weights, 1).squeeze(1), has_negative


def masked_mean_of(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` where `mask` (bool, same shape) is set; 0 with a gradient path where nothing is."""
    weights = mask.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp(min=1.0)


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor, row_mask: torch.Tensor | None = None) -> torch.Tensor:
    """MLM cross-entropy over the tokens whose label is not -100, in the rows where `row_mask` (B,) is set (ITM
    negatives are not MLM examples); 0 with a gradient path when nothing is labelled."""
    if row_mask is not None:
        labels = labels.masked_fill(~row_mask.bool().to(labels.device).unsqueeze(-1), -100)
    labelled = labels != -100
    # Only the labelled positions: the full (B, T, vocab) logits in float32 would be a large copy.
    loss = F.cross_entropy(logits[labelled].float(), labels[labelled], reduction="sum")
    return loss / labelled.sum().clamp(min=1)


def patchify(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/p * W/p, p * p * C), patches in raster order, pixels (row, column, channel) as MAE,
    the order of the patch embeddings."""
    batch_size, channels, height, width = pixel_values.shape
    rows, columns = height // patch_size, width // patch_size
    patches = pixel_values.reshape(batch_size, channels, rows, patch_size, columns, patch_size)
    patches = patches.permute(0, 2, 4, 3, 5, 1)
    return patches.reshape(batch_size, rows * columns, patch_size**2 * channels)


def normalized_patch_targets(pixel_values: torch.Tensor, patch_size: int, eps: float = 1e-6) -> torch.Tensor:
    """MAE's `norm_pix_loss` targets: each patch normalised by its own mean and (unbiased) variance."""
    patches = patchify(pixel_values.float(), patch_size)
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps) ** 0.5


def itm_log_odds(itm_logits: torch.Tensor) -> torch.Tensor:
    """(B, 2) ITM logits [no match, match] -> (B,) log-odds of a match: the score that ranks pairs."""
    return itm_logits[:, 1] - itm_logits[:, 0]
