"""The global-batch parts of the pretraining objectives: the contrastive loss over every rank's features, and the
ITM negatives drawn from the global batch (random, or ALBEF's hard negatives from the gathered similarities).

Distributed concerns are one argument each, as in open_clip's `loss.py`: `gather` pulls the other ranks' features in
(see `distributed.py`) and `local_loss` scores only the local rows of the global similarity matrix (labels offset by
rank); the loss itself is the model's own (`modeling_vlp.losses`).
"""

import torch

from ..losses import check_paired, sigmoid_contrastive_loss, softmax_contrastive_loss
from .distributed import all_gather_features, get_rank, get_world_size


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
    """The ITC loss that `loss_type` names with negatives from the global batch under torch.distributed.

    Softmax: `local_loss=False` computes the full (world*B)^2 similarity on each rank; `local_loss=True` only the
    local rows, with labels offset by rank. Sigmoid (needs `logit_bias`): the local images meet every rank's texts;
    DDP's gradient average then matches the single-process loss over the global batch."""
    if loss_type == "sigmoid" and logit_bias is None:
        raise ValueError("The sigmoid contrastive loss needs `logit_bias`, got None.")
    check_paired(image_embeds, text_embeds)
    batch_size = image_embeds.shape[0]
    distributed = gather and get_world_size() > 1
    if loss_type == "sigmoid":
        if not distributed:
            return sigmoid_contrastive_loss(image_embeds, text_embeds, logit_scale, logit_bias)
        all_texts = all_gather_features(text_embeds, gather_with_grad)
        return sigmoid_contrastive_loss(
            image_embeds, text_embeds, logit_scale, logit_bias, text_candidates=all_texts,
            label_offset=get_rank() * batch_size,
        )  # fmt: skip
    if not distributed:
        return softmax_contrastive_loss(image_embeds, text_embeds, logit_scale)
    all_images = all_gather_features(image_embeds, gather_with_grad)
    all_texts = all_gather_features(text_embeds, gather_with_grad)
    if local_loss:
        return softmax_contrastive_loss(
            image_embeds, text_embeds, logit_scale, image_candidates=all_images, text_candidates=all_texts,
            label_offset=get_rank() * batch_size,
        )  # fmt: skip
    return softmax_contrastive_loss(all_images, all_texts, logit_scale)


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
