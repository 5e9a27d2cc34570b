"""The losses that our models' `forward` computes, as functions of tensors (copied with a checkpoint's remote code,
so nothing here knows about ranks: `training/objectives.py` gathers the other ranks' features and calls these).

The contrastive losses take the rows to score (the local batch) and the candidates to score them against (the same
batch, or every rank's features), with the label of row i at candidate `label_offset + i`, as open_clip's `loss.py`.
"""

import torch
import torch.nn.functional as F


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
    image_candidates: torch.Tensor | None = None,
    text_candidates: torch.Tensor | None = None,
    label_offset: int = 0,
) -> torch.Tensor:
    """CLIP's symmetric InfoNCE over paired, L2-normalised embeddings (pair i is image i with text i): each image
    against `text_candidates`, each text against `image_candidates` (default: the batch itself)."""
    check_paired(image_embeds, text_embeds)
    if image_candidates is None and text_candidates is None:
        logits_per_image, logits_per_text = contrastive_logits(image_embeds, text_embeds, logit_scale)
    else:
        image_candidates = image_embeds if image_candidates is None else image_candidates
        text_candidates = text_embeds if text_candidates is None else text_candidates
        logits_per_image = logit_scale * image_embeds @ text_candidates.t()
        logits_per_text = logit_scale * text_embeds @ image_candidates.t()
    labels = torch.arange(image_embeds.shape[0], device=image_embeds.device) + label_offset
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def sigmoid_contrastive_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    text_candidates: torch.Tensor | None = None,
    label_offset: int = 0,
) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss: every (image, text candidate) pair is a binary problem, positive for image i
    with candidate `label_offset + i`. Summed over texts, averaged over images."""
    check_paired(image_embeds, text_embeds)
    batch_size = image_embeds.shape[0]
    text_candidates = text_embeds if text_candidates is None else text_candidates
    logits = logit_scale * image_embeds @ text_candidates.t() + logit_bias
    labels = -torch.ones_like(logits)
    rows = torch.arange(batch_size, device=logits.device)
    labels[rows, rows + label_offset] = 1.0
    return -F.logsigmoid(labels * logits).sum() / batch_size


def contrastive_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None,
    loss_type: str = "softmax",
) -> torch.Tensor:
    """The ITC loss of the local batch that `loss_type` names: softmax InfoNCE or pairwise sigmoid (which needs
    `logit_bias`)."""
    if loss_type == "sigmoid":
        if logit_bias is None:
            raise ValueError("The sigmoid contrastive loss needs `logit_bias`, got None.")
        return sigmoid_contrastive_loss(image_embeds, text_embeds, logit_scale, logit_bias)
    return softmax_contrastive_loss(image_embeds, text_embeds, logit_scale)


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
