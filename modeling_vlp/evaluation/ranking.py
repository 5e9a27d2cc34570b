"""Ranking metrics over score matrices, written once in plain torch: retrieval Recall@k and ranks, their chance
levels, how many queries are tied, zero-shot and top-k accuracy and the majority-class baseline (the `evaluate`
modules in `metrics/` wrap these functions).

Ranking convention, used everywhere: the rank of the ground truth is 1 + the number of wrong candidates scoring *at
least* as high as the best ground-truth candidate. Ties therefore count against the model (a constant similarity
scores 0 at R@1, not 100), and when an item has several ground truths (an image with five captions), only the
best-placed one counts, as in the Flickr30k / COCO protocol. `retrieval_tie_counts` says how many queries such a tie
decided (`i2t_tied_queries`, `t2i_tied_queries`), so that a report can show when the pessimistic convention matters.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F

_RANK_CHUNK = 1024  # rows of the similarity matrix compared at once, to bound memory

def _as_float_tensor(name: str, value) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)
    tensor = tensor.detach().to("cpu", torch.float64)
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return tensor

def _as_index_tensor(name: str, value, length: int, upper: int) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value).detach().cpu()
    if tensor.dim() != 1 or tensor.numel() != length:
        raise ValueError(f"{name} must have shape ({length},), got {tuple(tensor.shape)}")
    if tensor.is_floating_point() or tensor.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer indices, got dtype {tensor.dtype}")
    tensor = tensor.long()
    if length and (tensor.min() < 0 or tensor.max() >= upper):
        raise ValueError(f"{name} must hold indices in [0, {upper}), got values in [{tensor.min()}, {tensor.max()}]")
    return tensor

def _ranks_and_ties(scores: torch.Tensor, is_target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """1-based rank of the best target in each row of `scores`, ties counting against it, and whether a wrong
    candidate scores exactly as the best target (the rank is then ambiguous: another tie-break would place it
    higher)."""
    ranks, ties = [], []
    for start in range(0, scores.shape[0], _RANK_CHUNK):
        rows = scores[start : start + _RANK_CHUNK]
        targets = is_target[start : start + _RANK_CHUNK]
        best = rows.masked_fill(~targets, -math.inf).amax(dim=1, keepdim=True)
        ranks.append(1 + ((rows >= best) & ~targets).sum(dim=1))
        ties.append(((rows == best) & ~targets).any(dim=1))
    if not ranks:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.bool)
    return torch.cat(ranks), torch.cat(ties)


def _ranks(scores: torch.Tensor, is_target: torch.Tensor) -> torch.Tensor:
    """1-based rank of the best target in each row of `scores`, ties counting against it."""
    return _ranks_and_ties(scores, is_target)[0]

def _recall(ranks: torch.Tensor, k: int) -> float:
    return float((ranks <= k).double().mean() * 100)

def retrieval_metrics(
    similarity, text_to_image, ks: Sequence[int] = (1, 5, 10), text_to_image_scores=None
) -> dict[str, float]:
    """Image->text and text->image recall@k (%) and mean ranks from a similarity matrix.

    Args:
        similarity: `(num_images, num_texts)` scores, higher is more similar (tensor or array).
        text_to_image: `(num_texts,)` index of the image each text describes; an image may have
            several texts, and every image needs at least one.
        ks: the k of recall@k.
        text_to_image_scores: `(num_texts, num_images)` scores that rank the images of each text, when they differ
            from `similarity.T` (a re-ranking that rescores each direction's own shortlist); text->image metrics
            then come from them.

    Returns:
        `i2t_r@k`: % of images with at least one of their texts in the top k texts.
        `t2i_r@k`: % of texts whose image is in the top k images.
        `i2t_mean_rank`, `t2i_mean_rank`, `i2t_median_rank`, `t2i_median_rank`: 1-based rank of the
            best ground truth.
        `rsum`: the sum of all recalls above.

    A tie counts as a miss: a wrong candidate scoring exactly as the best ground truth is ranked above it (a
    constant similarity scores 0 at R@1). `retrieval_tie_counts` says how many queries that decided.
    """
    if any(int(k) < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {tuple(ks)}")
    (i2t_ranks, _), (t2i_ranks, _) = _both_directions(similarity, text_to_image, text_to_image_scores)

    metrics = {}
    for k in ks:
        metrics[f"i2t_r@{k}"] = _recall(i2t_ranks, k)
    for k in ks:
        metrics[f"t2i_r@{k}"] = _recall(t2i_ranks, k)
    metrics["i2t_mean_rank"] = float(i2t_ranks.double().mean())
    metrics["t2i_mean_rank"] = float(t2i_ranks.double().mean())
    metrics["i2t_median_rank"] = float(np.median(i2t_ranks.numpy()))
    metrics["t2i_median_rank"] = float(np.median(t2i_ranks.numpy()))
    metrics["rsum"] = float(sum(metrics[f"{d}_r@{k}"] for d in ("i2t", "t2i") for k in ks))
    return metrics


def _both_directions(similarity, text_to_image, text_to_image_scores=None):
    """((image->text ranks, ties), (text->image ranks, ties)) of `retrieval_metrics`' arguments, checked."""
    scores = _as_float_tensor("similarity", similarity)
    if scores.dim() != 2:
        raise ValueError(f"similarity must have shape (num_images, num_texts), got {tuple(scores.shape)}")
    num_images, num_texts = scores.shape
    if num_images == 0 or num_texts == 0:
        raise ValueError(f"similarity must be non-empty, got shape {tuple(scores.shape)}")
    targets = _as_index_tensor("text_to_image", text_to_image, num_texts, num_images)
    image_has_text = torch.zeros(num_images, dtype=torch.bool)
    image_has_text[targets] = True
    if not image_has_text.all():
        missing = torch.nonzero(~image_has_text).flatten()[:10].tolist()
        raise ValueError(
            f"every image needs at least one text in text_to_image; images without one include {missing}"
        )

    t2i_scores = scores.T
    if text_to_image_scores is not None:
        t2i_scores = _as_float_tensor("text_to_image_scores", text_to_image_scores)
        if t2i_scores.shape != (num_texts, num_images):
            raise ValueError(
                f"text_to_image_scores must have shape (num_texts, num_images) = ({num_texts}, {num_images}), got "
                f"{tuple(t2i_scores.shape)}"
            )

    image_text_match = targets.unsqueeze(0) == torch.arange(num_images).unsqueeze(1)  # (I, T)
    return _ranks_and_ties(scores, image_text_match), _ranks_and_ties(t2i_scores, image_text_match.T)


def retrieval_tie_counts(similarity, text_to_image, text_to_image_scores=None) -> dict[str, float]:
    """How many queries a tie decided, in each direction: `i2t_tied_queries` (images whose best own caption scores
    exactly as some other image's caption) and `t2i_tied_queries` (texts whose image scores exactly as another
    image). Their rank is ambiguous, and `retrieval_metrics` resolves it against the model: the tied wrong candidates
    are ranked first, so a tie at the top is a miss at R@1. Arguments as `retrieval_metrics`'."""
    (_, i2t_ties), (_, t2i_ties) = _both_directions(similarity, text_to_image, text_to_image_scores)
    return {"i2t_tied_queries": float(i2t_ties.sum()), "t2i_tied_queries": float(t2i_ties.sum())}


def image_to_text_ranks(similarity, text_to_image) -> torch.Tensor:
    """`(num_images,)` 1-based rank of each image's best-placed own caption, as `retrieval_metrics` counts it."""
    return _both_directions(similarity, text_to_image)[0][0]

def retrieval_chance_levels(text_to_image, num_images: int, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Expected recall@k (%) of a model that ranks candidates uniformly at random.

    Text->image: k / num_images. Image->text: an image with n of the T texts is hit when at least
    one of them lands in the top k, probability 1 - C(T - n, k) / C(T, k), averaged over images.
    """
    targets = _as_index_tensor("text_to_image", text_to_image, len(text_to_image), num_images)
    num_texts = targets.numel()
    # Images grouped by how many texts they have; exact fractions keep 1/N exactly 1/N.
    images_with = Counter(torch.bincount(targets, minlength=num_images).tolist())
    levels = {}
    for k in ks:
        k_texts = min(k, num_texts)
        miss = sum(
            count * Fraction(math.comb(num_texts - n, k_texts), math.comb(num_texts, k_texts))
            for n, count in images_with.items()
        )
        levels[f"chance_i2t_r@{k}"] = float(100 * (1 - miss / num_images))
    for k in ks:
        levels[f"chance_t2i_r@{k}"] = float(Fraction(100 * min(k, num_images), num_images))
    return levels

def majority_class_accuracy(labels, num_classes: int | None = None) -> float:
    """Accuracy (%) of always answering the most frequent class of `labels` (the evaluated split's): the baseline a
    classifier must beat on an unbalanced split, where uniform chance (1 / num_classes) is too low a bar."""
    targets = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels).flatten()
    if targets.numel() == 0:
        raise ValueError("labels is empty")
    if targets.is_floating_point() or targets.dtype == torch.bool or bool((targets < 0).any()):
        raise ValueError(f"labels must hold non-negative class indices, got dtype {targets.dtype}")
    if num_classes is not None and int(targets.max()) >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got up to {int(targets.max())}")
    counts = torch.bincount(targets.long())
    return float(Fraction(100 * int(counts.max()), targets.numel()))


def zero_shot_accuracy(image_embeds, class_text_embeds, labels, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k zero-shot classification accuracy (%) as `{"top1": ..., "top5": ...}`.

    Args:
        image_embeds: `(num_images, D)` image embeddings (L2-normalised for cosine scores).
        class_text_embeds: `(num_classes, D)` one (template-ensembled) text embedding per class.
        labels: `(num_images,)` true class index of each image.
        ks: the k of top-k; a k >= num_classes is 100 by definition.

    A tie between the true class and a wrong one counts as a miss for top-1.
    """
    images = _as_float_tensor("image_embeds", image_embeds)
    classes = _as_float_tensor("class_text_embeds", class_text_embeds)
    if images.dim() != 2 or classes.dim() != 2 or images.shape[1] != classes.shape[1]:
        raise ValueError(
            "image_embeds (num_images, D) and class_text_embeds (num_classes, D) must share D, got "
            f"{tuple(images.shape)} and {tuple(classes.shape)}"
        )
    return topk_accuracy(images @ classes.T, labels, ks)

def topk_accuracy(logits, labels, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy (%) of class scores, `{"top1": ..., "top5": ...}`; ties with the true class count as misses.

    Args:
        logits: `(num_examples, num_classes)` scores, higher is more likely (tensor or array).
        labels: `(num_examples,)` true class index of each example.
        ks: the k of top-k; a k >= num_classes is 100 by definition.
    """
    logits = _as_float_tensor("logits", logits)
    if logits.dim() != 2 or logits.shape[0] == 0 or logits.shape[1] == 0:
        raise ValueError(f"logits must have shape (num_examples, num_classes), non-empty; got {tuple(logits.shape)}")
    if any(int(k) < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {tuple(ks)}")
    targets = _as_index_tensor("labels", labels, logits.shape[0], logits.shape[1])
    ranks = _ranks(logits, F.one_hot(targets, logits.shape[1]).bool())
    return {f"top{k}": _recall(ranks, k) for k in ks}
