"""Ranking metrics over score matrices, written once in plain torch: retrieval Recall@k and ranks, their chance
levels, zero-shot and top-k accuracy (the `evaluate` modules in `metrics/` wrap these functions).

Ranking convention, used everywhere: the rank of the ground truth is 1 + the number of wrong candidates scoring *at
least* as high as the best ground-truth candidate. Ties therefore count against the model (a constant similarity
scores 0 at R@1, not 100), and when an item has several ground truths (an image with five captions), only the
best-placed one counts, as in the Flickr30k / COCO protocol.
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

def _ranks(scores: torch.Tensor, is_target: torch.Tensor) -> torch.Tensor:
    """1-based rank of the best target in each row of `scores`, ties counting against it."""
    ranks = []
    for start in range(0, scores.shape[0], _RANK_CHUNK):
        rows = scores[start : start + _RANK_CHUNK]
        targets = is_target[start : start + _RANK_CHUNK]
        best = rows.masked_fill(~targets, -math.inf).amax(dim=1, keepdim=True)
        ranks.append(1 + ((rows >= best) & ~targets).sum(dim=1))
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)

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
            best ground truth (see the module docstring for ties).
        `rsum`: the sum of all recalls above.
    """
    scores = _as_float_tensor("similarity", similarity)
    if scores.dim() != 2:
        raise ValueError(f"similarity must have shape (num_images, num_texts), got {tuple(scores.shape)}")
    num_images, num_texts = scores.shape
    if num_images == 0 or num_texts == 0:
        raise ValueError(f"similarity must be non-empty, got shape {tuple(scores.shape)}")
    targets = _as_index_tensor("text_to_image", text_to_image, num_texts, num_images)
    if any(int(k) < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {tuple(ks)}")
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
    i2t_ranks = _ranks(scores, image_text_match)
    t2i_ranks = _ranks(t2i_scores, image_text_match.T)

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
