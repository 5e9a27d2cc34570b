"""Retrieval and zero-shot evaluation of dual encoders, written once in plain torch.

Ranking convention, used everywhere here: the rank of the ground truth is 1 + the number of
wrong candidates scoring *at least* as high as the best ground-truth candidate. Ties therefore
count against the model (a constant similarity scores 0 at R@1, not 100), and when an item has
several ground truths (an image with five captions), only the best-placed one counts, as in the
Flickr30k / COCO protocol.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data import ZERO_SHOT_TEMPLATES


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


def retrieval_metrics(similarity, text_to_image, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Image->text and text->image recall@k (%) and mean ranks from a similarity matrix.

    Args:
        similarity: `(num_images, num_texts)` scores, higher is more similar (tensor or array).
        text_to_image: `(num_texts,)` index of the image each text describes; an image may have
            several texts, and every image needs at least one.
        ks: the k of recall@k.

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

    image_text_match = targets.unsqueeze(0) == torch.arange(num_images).unsqueeze(1)  # (I, T)
    i2t_ranks = _ranks(scores, image_text_match)
    t2i_ranks = _ranks(scores.T, image_text_match.T)

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
    targets = _as_index_tensor("labels", labels, images.shape[0], classes.shape[0])
    logits = images @ classes.T
    is_target = F.one_hot(targets, classes.shape[0]).bool()
    ranks = _ranks(logits, is_target)
    return {f"top{k}": _recall(ranks, k) for k in ks}


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _model_dtype(model: torch.nn.Module) -> torch.dtype:
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


def _embeddings(output, method: str) -> torch.Tensor:
    # transformers 5 returns a BaseModelOutputWithPooling whose pooler_output is the projected
    # embedding; older models and simple modules return the tensor itself.
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if isinstance(pooled, torch.Tensor):
        return pooled
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(
        f"model.{method} returned {type(output).__name__}, expected a tensor or an output with pooler_output"
    )


class _eval_mode:
    """Put a model in eval mode for the duration of a block and restore its previous mode."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was_training)


def _text_max_length(model, tokenizer) -> int | None:
    """Longest input the text tower accepts, for tokenizers without a sensible model_max_length."""
    config = getattr(model, "config", None)
    text_config = getattr(config, "text_config", config)
    positions = getattr(text_config, "max_position_embeddings", None)
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if positions is None:
        return None
    if tokenizer_limit is None or tokenizer_limit > positions:
        return positions
    return tokenizer_limit


def encode_images(
    model,
    image_processor,
    images: Sequence,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    show_progress: bool = True,
) -> torch.Tensor:
    """L2-normalised image embeddings `(num_images, D)` (float32, CPU), computed in batches.

    `images` is any sliceable sequence of PIL images (a list, or a `datasets` image column, which
    then decodes one batch at a time). `image_processor` may also be a processor holding one.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    image_processor = getattr(image_processor, "image_processor", image_processor)
    device = torch.device(device) if device is not None else _model_device(model)
    dtype = _model_dtype(model)
    embeddings = []
    with _eval_mode(model), torch.no_grad():
        for start in tqdm(range(0, len(images), batch_size), desc="Encoding images", disable=not show_progress):
            batch = [image.convert("RGB") for image in images[start : start + batch_size]]
            pixel_values = image_processor(images=batch, return_tensors="pt")["pixel_values"]
            output = model.get_image_features(pixel_values=pixel_values.to(device=device, dtype=dtype))
            embeddings.append(F.normalize(_embeddings(output, "get_image_features").float(), dim=-1).cpu())
    if not embeddings:
        raise ValueError("images is empty")
    return torch.cat(embeddings)


def encode_texts(
    model,
    tokenizer,
    texts: Sequence[str],
    batch_size: int = 64,
    device: torch.device | str | None = None,
    show_progress: bool = True,
) -> torch.Tensor:
    """L2-normalised text embeddings `(num_texts, D)` (float32, CPU), computed in batches.

    Texts are tokenized with padding and truncation (to the text tower's position limit when the
    tokenizer sets none). `tokenizer` may also be a processor holding one.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    device = torch.device(device) if device is not None else _model_device(model)
    max_length = _text_max_length(model, tokenizer)
    texts = list(texts)
    embeddings = []
    with _eval_mode(model), torch.no_grad():
        for start in tqdm(range(0, len(texts), batch_size), desc="Encoding texts", disable=not show_progress):
            encoded = tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            inputs = {"input_ids": encoded["input_ids"].to(device)}
            if "attention_mask" in encoded:
                inputs["attention_mask"] = encoded["attention_mask"].to(device)
            output = model.get_text_features(**inputs)
            embeddings.append(F.normalize(_embeddings(output, "get_text_features").float(), dim=-1).cpu())
    if not embeddings:
        raise ValueError("texts is empty")
    return torch.cat(embeddings)


def build_zero_shot_classifier(
    model,
    tokenizer,
    class_names: Sequence[str],
    templates: Sequence[str] = ZERO_SHOT_TEMPLATES,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    show_progress: bool = False,
) -> torch.Tensor:
    """One text embedding per class, `(num_classes, D)`, by CLIP prompt ensembling.

    Every template ("a photo of a {}.") is filled with every class name and encoded; each class
    averages its L2-normalised template embeddings and re-normalises the mean.
    """
    if not class_names or not templates:
        raise ValueError(f"need at least one class name and one template, got {len(class_names)} and {len(templates)}")
    if any("{}" not in template for template in templates):
        raise ValueError(f"every template needs a '{{}}' placeholder, got {list(templates)}")
    prompts = [template.format(name) for name in class_names for template in templates]
    embeds = encode_texts(model, tokenizer, prompts, batch_size, device, show_progress)
    embeds = embeds.view(len(class_names), len(templates), -1).mean(dim=1)
    return F.normalize(embeds, dim=-1)


def _retrieval_texts(eval_dataset) -> tuple[list[str], list[int]]:
    if "captions" in eval_dataset.column_names:
        texts, text_to_image = [], []
        for index, (caption, captions) in enumerate(zip(eval_dataset["caption"], eval_dataset["captions"])):
            for text in captions or [caption]:
                texts.append(text)
                text_to_image.append(index)
        return texts, text_to_image
    captions = list(eval_dataset["caption"])
    return captions, list(range(len(captions)))


def evaluate_dual_encoder(
    model,
    processor,
    eval_dataset,
    class_names: Sequence[str] | None = None,
    templates: Sequence[str] = ZERO_SHOT_TEMPLATES,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    ks: Sequence[int] = (1, 5, 10),
    show_progress: bool = True,
) -> dict[str, float]:
    """Retrieval (and zero-shot classification) metrics of a dual encoder on an image-text split.

    `eval_dataset` is a `datasets.Dataset` with `image` and `caption` columns. When it has a
    `captions` column (a list per image) every listed caption is a retrieval query mapped to its
    image; otherwise the single caption is. When `class_names` is given, or the dataset has a
    `label` `ClassLabel` column (class names from the feature), zero-shot top-1 / top-5 accuracy
    is added using `templates`.

    `processor` provides both the image processor and the tokenizer (e.g. a `CLIPProcessor`, or
    any object with `image_processor` and `tokenizer` attributes).

    Returns a flat dict of floats: the `retrieval_metrics` keys, `chance_i2t_r@k` and
    `chance_t2i_r@k`, `num_images`, `num_texts`, and when classifying `zero_shot_top1`,
    `zero_shot_top5`, `zero_shot_chance_top1`, `zero_shot_chance_top5` and `num_classes`.
    """
    for column in ("image", "caption"):
        if column not in eval_dataset.column_names:
            raise ValueError(f"eval_dataset needs a {column!r} column, found {eval_dataset.column_names}")
    if len(eval_dataset) == 0:
        raise ValueError("eval_dataset is empty")
    image_processor = getattr(processor, "image_processor", processor)
    tokenizer = getattr(processor, "tokenizer", processor)

    image_embeds = encode_images(model, image_processor, eval_dataset["image"], batch_size, device, show_progress)
    texts, text_to_image = _retrieval_texts(eval_dataset)
    text_embeds = encode_texts(model, tokenizer, texts, batch_size, device, show_progress)

    metrics = retrieval_metrics(image_embeds @ text_embeds.T, text_to_image, ks)
    metrics.update(retrieval_chance_levels(text_to_image, len(image_embeds), ks))
    metrics["num_images"] = float(len(image_embeds))
    metrics["num_texts"] = float(len(texts))

    label_feature = eval_dataset.features.get("label")
    if class_names is None and label_feature is not None and hasattr(label_feature, "names"):
        class_names = label_feature.names
    if class_names is not None and "label" in eval_dataset.column_names:
        classifier = build_zero_shot_classifier(model, tokenizer, class_names, templates, batch_size, device)
        accuracy = zero_shot_accuracy(image_embeds, classifier, list(eval_dataset["label"]), ks=(1, 5))
        for k in (1, 5):
            metrics[f"zero_shot_top{k}"] = accuracy[f"top{k}"]
            metrics[f"zero_shot_chance_top{k}"] = float(100 * min(k, len(class_names)) / len(class_names))
        metrics["num_classes"] = float(len(class_names))
    return metrics
