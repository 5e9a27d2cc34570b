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


def weighted_sum(losses: dict[str, torch.Tensor | None], weights: dict[str, float]) -> torch.Tensor | None:
    """`sum(weights[name] * loss)` over the losses computed (not None), as FLAVA's; None when there is none."""
    computed = [weights[name] * loss for name, loss in losses.items() if loss is not None]
    return sum(computed) if computed else None


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


def masked_patch_loss(
    predictions: torch.Tensor,
    pixel_values: torch.Tensor,
    patch_size: int,
    mim_mask: torch.Tensor,
    token_index: torch.Tensor | None = None,
    token_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Masked patch modelling: MSE between predicted and per-patch normalised pixels (MAE's `norm_pix_loss`) over
    the masked patches `mim_mask` (B, num_patches). `predictions` (B, N, patch_size**2 * channels) are one per patch
    in raster order, or, with `token_index` (B, N), of the patch each visual token came from (a unified model's
    sampled patches), counted where `token_mask` (B, N) is set."""
    targets = normalized_patch_targets(pixel_values, patch_size)
    mask = mim_mask.bool()
    if token_index is not None:
        targets = targets.gather(1, token_index.unsqueeze(-1).expand(-1, -1, targets.shape[-1]))
        mask = mask.gather(1, token_index) & token_mask.bool()
    errors = (predictions.float() - targets).pow(2).mean(dim=-1)
    return masked_mean_of(errors, mask)


def answer_loss(logits: torch.Tensor, labels: torch.Tensor, kind: str = "bce") -> torch.Tensor:
    """The VQA loss. Answer indices `(B,)`: cross-entropy (LXMERT's pretraining QA task). Soft scores
    `(B, num_labels)` in [0, 1]: `kind="bce"`, binary cross-entropy per answer times `num_labels` (summed over
    answers, as LXMERT, ViLT and ban-vqa), or "kl", the KL divergence of the softmax to the scores (VisualBERT)."""
    if labels.ndim == 1 and not labels.is_floating_point():
        return F.cross_entropy(logits, labels.to(logits.device))
    if labels.shape != logits.shape:
        raise ValueError(
            f"Answer labels must be indices of shape ({logits.shape[0]},) or soft scores of shape "
            f"{tuple(logits.shape)}, got shape {tuple(labels.shape)} ({labels.dtype})."
        )
    if kind == "kl":
        return F.kl_div(F.log_softmax(logits, dim=-1), labels.to(logits), reduction="batchmean")
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits)) * labels.shape[1]


def _weighted_mean(losses, weights, valid, normalizer):
    return (losses * weights.to(losses)).mean() * normalizer


def _masked_mean(losses, weights, valid, normalizer):
    return masked_mean_of(losses, weights.bool() & valid)


# kind: (feature regression per region, soft-class loss per region of the log-probabilities, reduction, in float32)
REGION_LOSS_KINDS = {
    # LXMERT: smooth L1 and soft cross-entropy, `(loss * weights).mean() * normalizer` over every region, in the
    # scores' dtype. The weights are the masked regions or detector confidences.
    "lxmert": (
        lambda scores, target: F.smooth_l1_loss(scores, target.to(scores), reduction="none").mean(-1),
        lambda log_probs, target: -(target.to(log_probs) * log_probs).sum(-1),
        _weighted_mean,
        False,
    ),
    # UNITER: MRFR (squared error) and MRC-kl (KL divergence), averaged over the masked regions (class ids -100
    # left out), in float32.
    "uniter": (
        lambda scores, target: (scores - target.to(scores)).pow(2).mean(-1),
        lambda log_probs, target: F.kl_div(log_probs, target.to(log_probs), reduction="none").sum(-1),
        _masked_mean,
        True,
    ),
}


def region_loss(
    predictions: dict[str, torch.Tensor],
    targets: dict[str, tuple[torch.Tensor, torch.Tensor]],
    kind: str = "lxmert",
    visual_loss_normalizer: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Masked region modelling, one loss per target: `targets[name] = (labels, weights)` with weights `(B, N)`
    (the masked regions, or detector confidences) scored against `predictions[name]`. "feat" is a feature regression
    `(B, N, visual_feat_dim)`; any other name ("obj", "attr") a classification whose labels are class indices
    `(B, N)` (cross-entropy, -100 ignored) or distributions `(B, N, C)` (the soft loss of `kind`). `kind` names the
    paper's variant (`REGION_LOSS_KINDS`): "lxmert" (`visual_loss_normalizer` scales each) or "uniter"."""
    if kind not in REGION_LOSS_KINDS:
        raise ValueError(f"Unknown region loss kind {kind!r}; choose one of {sorted(REGION_LOSS_KINDS)}.")
    regression, soft_classification, reduce, in_float = REGION_LOSS_KINDS[kind]
    losses = {}
    for name, (labels, weights) in targets.items():
        scores = predictions[name].float() if in_float else predictions[name]
        valid = torch.ones_like(weights, dtype=torch.bool)
        if name == "feat":
            per_region = regression(scores, labels)
        elif labels.is_floating_point():
            per_region = soft_classification(F.log_softmax(scores, dim=-1), labels)
        else:
            flat = F.cross_entropy(scores.flatten(0, -2), labels.reshape(-1), ignore_index=-100, reduction="none")
            per_region, valid = flat.view(labels.shape), labels != -100
        losses[name] = reduce(per_region, weights, valid, visual_loss_normalizer)
    return losses
