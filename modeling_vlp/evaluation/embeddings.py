"""Dual-encoder evaluation: batched, L2-normalised image and text embeddings, the prompt-ensembled zero-shot
classifier and `evaluate_dual_encoder` (retrieval and zero-shot metrics of a split), used by `vlp pretrain` and
`vlp evaluate`, and the dataset-wide class list of zero-shot (`zero_shot_class_labels`); also the model helpers
(`_eval_mode`, device, dtype) that the other evaluation modules share."""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.scenes import ZERO_SHOT_TEMPLATES
from .ranking import (
    majority_class_accuracy,
    retrieval_chance_levels,
    retrieval_metrics,
    retrieval_tie_counts,
    zero_shot_accuracy,
)


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


def _check_one_per_prediction(predictions: Sequence, references: Sequence, name: str, expected: str = "") -> None:
    """Raise unless there are predictions and `references` (the argument `name`) has one item per prediction;
    `expected` ends the message of a length mismatch."""
    if len(predictions) != len(references):
        raise ValueError(f"predictions has {len(predictions)} items but {name} has {len(references)}{expected}")
    if len(predictions) == 0:
        raise ValueError("predictions is empty")


def _encode(model, method: str, items: Sequence, inputs, batch_size: int, name: str, show_progress: bool):
    """`model.<method>(**inputs(batch))` over `items` in batches of `batch_size`: the L2-normalised embeddings,
    float32 on the CPU, `(len(items), D)`; `name` ("images", "texts") labels the progress bar and the errors."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    embeddings = []
    with _eval_mode(model), torch.no_grad():
        for start in tqdm(range(0, len(items), batch_size), desc=f"Encoding {name}", disable=not show_progress):
            output = getattr(model, method)(**inputs(items[start : start + batch_size]))
            embeddings.append(F.normalize(_embeddings(output, method).float(), dim=-1).cpu())
    if not embeddings:
        raise ValueError(f"{name} is empty")
    return torch.cat(embeddings)


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
    image_processor = getattr(image_processor, "image_processor", image_processor)
    device = torch.device(device) if device is not None else _model_device(model)
    dtype = _model_dtype(model)

    def inputs(batch) -> dict[str, torch.Tensor]:
        images = [image.convert("RGB") for image in batch]
        pixel_values = image_processor(images=images, return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixel_values.to(device=device, dtype=dtype)}

    return _encode(model, "get_image_features", images, inputs, batch_size, "images", show_progress)


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
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    device = torch.device(device) if device is not None else _model_device(model)
    max_length = _text_max_length(model, tokenizer)

    def inputs(batch) -> dict[str, torch.Tensor]:
        encoded = tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return {name: encoded[name].to(device) for name in ("input_ids", "attention_mask") if name in encoded}

    return _encode(model, "get_text_features", list(texts), inputs, batch_size, "texts", show_progress)


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


def retrieval_texts(eval_dataset) -> tuple[list[str], list[int]]:
    """(texts, text_to_image) of an image-caption split: every caption of an image's `captions` list (else its
    `caption`) as a query, with the row index of its image."""
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
    `chance_t2i_r@k`, `i2t_tied_queries` and `t2i_tied_queries` (`retrieval_tie_counts`: queries
    whose rank a tie decided, counted as misses), `num_images`, `num_texts`, and when classifying
    `zero_shot_top1`, `zero_shot_top5`, their uniform chance `zero_shot_chance_top1` /
    `zero_shot_chance_top5`, `zero_shot_majority_class_accuracy` (always answering the split's most
    frequent class) and `num_classes`.
    """
    for column in ("image", "caption"):
        if column not in eval_dataset.column_names:
            raise ValueError(f"eval_dataset needs a {column!r} column, found {eval_dataset.column_names}")
    if len(eval_dataset) == 0:
        raise ValueError("eval_dataset is empty")
    image_processor = getattr(processor, "image_processor", processor)
    tokenizer = getattr(processor, "tokenizer", processor)

    image_embeds = encode_images(model, image_processor, eval_dataset["image"], batch_size, device, show_progress)
    texts, text_to_image = retrieval_texts(eval_dataset)
    text_embeds = encode_texts(model, tokenizer, texts, batch_size, device, show_progress)

    similarity = image_embeds @ text_embeds.T
    metrics = retrieval_metrics(similarity, text_to_image, ks)
    metrics.update(retrieval_chance_levels(text_to_image, len(image_embeds), ks))
    metrics.update(retrieval_tie_counts(similarity, text_to_image))
    metrics["num_images"] = float(len(image_embeds))
    metrics["num_texts"] = float(len(texts))

    label_feature = eval_dataset.features.get("label")
    if class_names is None and label_feature is not None and hasattr(label_feature, "names"):
        class_names = label_feature.names
    if class_names is not None and "label" in eval_dataset.column_names:
        classifier = build_zero_shot_classifier(model, tokenizer, class_names, templates, batch_size, device)
        labels = list(eval_dataset["label"])
        accuracy = zero_shot_accuracy(image_embeds, classifier, labels, ks=(1, 5))
        for k in (1, 5):
            metrics[f"zero_shot_top{k}"] = accuracy[f"top{k}"]
            metrics[f"zero_shot_chance_top{k}"] = float(100 * min(k, len(class_names)) / len(class_names))
        metrics["zero_shot_majority_class_accuracy"] = majority_class_accuracy(labels, len(class_names))
        metrics["num_classes"] = float(len(class_names))
    return metrics


def zero_shot_class_labels(splits, label_column: str = "label"):
    """`splits` (a `DatasetDict`) with a label column of class-name strings cast to a `ClassLabel` whose names are
    the sorted names found in *every* split, so that zero-shot classification of one split chooses among the whole
    dataset's classes (a class missing from the evaluated split is still a wrong answer the model can give) and the
    class indices agree across splits. A `ClassLabel` column (names already dataset-wide), a split without the column
    or a column of other values are left as they are."""
    with_column = {name: split for name, split in splits.items() if label_column in split.column_names}
    features = [split.features[label_column] for split in with_column.values()]
    strings = all(isinstance(f, datasets.Value) and f.dtype in ("string", "large_string") for f in features)
    if not with_column or not strings:
        return splits
    names = sorted(set().union(*(split.unique(label_column) for split in with_column.values())) - {None})
    label = datasets.ClassLabel(names=names)
    cast = {name: split.cast_column(label_column, label) for name, split in with_column.items()}
    return datasets.DatasetDict({name: cast.get(name, split) for name, split in splits.items()})
