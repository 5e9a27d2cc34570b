"""Retrieval and zero-shot evaluation, VQA accuracy and captioning metrics, written once in plain torch (the `evaluate`
modules of `modeling_vlp.metrics` wrap these functions).

Ranking convention, used everywhere here: the rank of the ground truth is 1 + the number of
wrong candidates scoring *at least* as high as the best ground-truth candidate. Ties therefore
count against the model (a constant similarity scores 0 at R@1, not 100), and when an item has
several ground truths (an image with five captions), only the best-placed one counts, as in the
Flickr30k / COCO protocol.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data import ZERO_SHOT_TEMPLATES
from .objectives import itm_log_odds


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
    texts, text_to_image = retrieval_texts(eval_dataset)
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


# ---------------------------------------------------------------------------------------------
# Visual question answering
# ---------------------------------------------------------------------------------------------

# The official VQA evaluation's answer processing (vqaEval.py: processPunctuation, processDigitArticle), with its
# list of contractions shortened to the common ones.
_VQA_NUMBERS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_VQA_ARTICLES = {"a", "an", "the"}
_VQA_CONTRACTIONS = {
    "arent": "aren't", "cant": "can't", "couldnt": "couldn't", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hasnt": "hasn't", "havent": "haven't", "isnt": "isn't", "shouldnt": "shouldn't",
    "thats": "that's", "theres": "there's", "wasnt": "wasn't", "werent": "weren't", "whats": "what's",
    "wont": "won't", "wouldnt": "wouldn't", "youre": "you're", "im": "i'm", "ive": "i've", "lets": "let's",
}  # fmt: skip
_VQA_PUNCTUATION = ";/[]\"{}()=+\\_-><@`,?!"
_VQA_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_VQA_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def normalize_vqa_answer(text: str) -> str:
    """An answer as the official VQA evaluation compares it: lowercased, punctuation removed (or turned into spaces
    inside words, "black-and-white" -> "black and white"), periods dropped except in numbers ("2.5"), number words
    as digits ("two" -> "2"), articles removed, common contractions given their apostrophe ("dont" -> "don't")."""
    if not isinstance(text, str):
        raise TypeError(f"answer has type {type(text).__name__}; expected str.")
    text = text.replace("\n", " ").replace("\t", " ").strip().lower()
    for mark in _VQA_PUNCTUATION:
        if f"{mark} " in text or f" {mark}" in text or _VQA_COMMA_STRIP.search(text) is not None:
            text = text.replace(mark, "")
        else:
            text = text.replace(mark, " ")
    text = _VQA_PERIOD_STRIP.sub("", text)
    words = [_VQA_NUMBERS.get(word, word) for word in text.split()]
    return " ".join(_VQA_CONTRACTIONS.get(word, word) for word in words if word not in _VQA_ARTICLES)


def vqa_score(prediction: str, answers: Sequence[str], normalize: bool = True) -> float:
    """The official VQA accuracy of one prediction, in [0, 1]: the mean, over the leave-one-out subsets of the
    annotators' answers (10 subsets of 9 for VQA's 10 annotators), of min(#answers equal to the prediction / 3, 1).

    With 10 answers: 0, 1, 2, 3 matches score 0, 0.3, 0.6, 0.9, and 4 or more score 1. A single answer scores 1 if
    it matches (there is nothing to leave out). Answers and prediction are compared after `normalize_vqa_answer`.
    """
    if isinstance(answers, str) or len(answers) == 0:
        raise ValueError(f"answers must be a non-empty list of annotator answers, got {answers!r}")
    if normalize:
        prediction = normalize_vqa_answer(prediction)
        answers = [normalize_vqa_answer(answer) for answer in answers]
    matches = sum(answer == prediction for answer in answers)
    if len(answers) == 1:
        return float(matches)
    # Leaving out a matching answer leaves matches - 1 of them; leaving out another leaves all of them.
    total = matches * min((matches - 1) / 3, 1.0) + (len(answers) - matches) * min(matches / 3, 1.0)
    return total / len(answers)


def vqa_accuracy(predictions: Sequence[str], answers_lists: Sequence[Sequence[str]]) -> float:
    """Mean `vqa_score` (%) of predictions against their annotators' answers."""
    if len(predictions) != len(answers_lists):
        raise ValueError(
            f"predictions has {len(predictions)} items but answers_lists has {len(answers_lists)}; expected one list "
            "of answers per prediction."
        )
    if len(predictions) == 0:
        raise ValueError("predictions is empty")
    return 100.0 * sum(vqa_score(p, a) for p, a in zip(predictions, answers_lists)) / len(predictions)


def _id2label_list(id2label) -> list[str]:
    if isinstance(id2label, dict):
        labels = {int(index): label for index, label in id2label.items()}
        if sorted(labels) != list(range(len(labels))):
            raise ValueError(f"id2label keys must be 0..{len(labels) - 1}, got {sorted(labels)[:10]}...")
        return [labels[index] for index in range(len(labels))]
    return list(id2label)


def evaluate_vqa(
    model,
    processor,
    dataset,
    id2label,
    batch_size: int = 64,
    image_column: str = "image",
    question_column: str = "question",
    answers_column: str = "answers",
    question_type_column: str = "question_type",
    visual_input: str = "patches",
    max_length: int | None = None,
    device: torch.device | str | None = None,
    show_progress: bool = True,
) -> dict[str, float]:
    """VQA accuracy (%) of a question-answering model: the argmax of its `logits` over `id2label`, scored against
    each question's annotator answers with `vqa_score`.

    Args:
        model: Any model whose output has `logits` `(B, num_labels)`, called with the processor's tensors
            (`pixel_values` (+ `pixel_mask`) or `visual_feats` / `visual_pos` / `visual_attention_mask`, and
            `input_ids`, `attention_mask` (+ `token_type_ids`)).
        processor: A `VLPProcessor` (or any processor with the same call).
        dataset: A `datasets.Dataset` with the image (or region) columns, questions and answers.
        id2label: Answer of each logit, a list or a dict `{index: answer}` (e.g. `model.config.id2label`).
        visual_input: `"patches"` (images in `image_column`) or `"regions"` (`visual_feats` and `visual_pos`
            columns, or their `.npy` files, see `VLPQuestionAnsweringCollator`).

    Returns:
        `vqa_accuracy`, `num_questions` and, when the dataset has `question_type_column`, `vqa_accuracy_<type>` for
        each question type.
    """
    predictions = vqa_predictions(
        model, processor, dataset, id2label, batch_size=batch_size, image_column=image_column,
        question_column=question_column, answers_column=answers_column, visual_input=visual_input,
        max_length=max_length, device=device, show_progress=show_progress,
    )  # fmt: skip
    question_types = list(dataset[question_type_column]) if question_type_column in dataset.column_names else None
    return vqa_metrics(predictions, list(dataset[answers_column]), question_types)


def vqa_metrics(
    predictions: Sequence[str], answers_lists: Sequence[Sequence[str]], question_types: Sequence[str] | None = None
) -> dict[str, float]:
    """`vqa_accuracy` (%), `num_questions` and, given `question_types`, `vqa_accuracy_<type>` per type."""
    if len(predictions) != len(answers_lists):
        raise ValueError(f"predictions has {len(predictions)} items but answers_lists has {len(answers_lists)}")
    if len(predictions) == 0:
        raise ValueError("predictions is empty")
    scores = [vqa_score(prediction, answers) for prediction, answers in zip(predictions, answers_lists)]
    metrics = {"vqa_accuracy": 100.0 * sum(scores) / len(scores), "num_questions": float(len(scores))}
    if question_types is not None:
        by_type: dict[str, list[float]] = {}
        for question_type, score in zip(question_types, scores):
            by_type.setdefault(question_type, []).append(score)
        for question_type, values in sorted(by_type.items()):
            metrics[f"vqa_accuracy_{question_type}"] = 100.0 * sum(values) / len(values)
    return metrics


def vqa_predictions(
    model,
    processor,
    dataset,
    id2label,
    batch_size: int = 64,
    image_column: str = "image",
    question_column: str = "question",
    answers_column: str = "answers",
    visual_input: str = "patches",
    max_length: int | None = None,
    device: torch.device | str | None = None,
    show_progress: bool = True,
) -> list[str]:
    """The answer (from `id2label`) of the argmax logit for each question of `dataset`; see `evaluate_vqa`."""
    from .collators import VLPQuestionAnsweringCollator  # collators import this module

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for column in (question_column, answers_column):
        if column not in dataset.column_names:
            raise ValueError(f"dataset needs a {column!r} column, found {dataset.column_names}")
    if len(dataset) == 0:
        raise ValueError("dataset is empty")
    labels = _id2label_list(id2label)
    collator = VLPQuestionAnsweringCollator(
        processor,
        label2id={label: index for index, label in enumerate(labels)},
        image_column=image_column,
        question_column=question_column,
        answers_column=answers_column,
        max_length=max_length,
        visual_input=visual_input,
    )
    device = torch.device(device) if device is not None else _model_device(model)
    dtype = _model_dtype(model)
    predictions = []
    with _eval_mode(model), torch.no_grad():
        for start in tqdm(range(0, len(dataset), batch_size), desc="Answering", disable=not show_progress):
            columns = dataset[start : start + batch_size]
            rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
            batch = collator(rows)
            batch.pop("labels")
            inputs = {
                name: value.to(device=device, dtype=dtype) if value.is_floating_point() else value.to(device)
                for name, value in batch.items()
            }
            logits = model(**inputs).logits
            if logits.shape[-1] != len(labels):
                raise ValueError(f"model logits have {logits.shape[-1]} classes but id2label has {len(labels)}")
            predictions.extend(labels[index] for index in logits.argmax(dim=-1).tolist())
    return predictions


# --------------------------------------------------------------------------------------------------------------
# Image-text matching models (single-stream): every pair goes through the model
# --------------------------------------------------------------------------------------------------------------

VISUAL_INPUT_NAMES = ("pixel_values", "pixel_mask", "visual_feats", "visual_pos", "visual_attention_mask")


def _match_scores(outputs) -> torch.Tensor:
    """Log-odds of a match from an ITM head's two logits, or a retrieval model's single score."""
    itm_logits = outputs.get("itm_logits") if hasattr(outputs, "get") else None
    if itm_logits is not None:
        return itm_log_odds(itm_logits).float()
    return outputs.logits.reshape(-1).float()


@torch.no_grad()
def image_text_match_scores(
    model,
    visual_inputs: dict[str, torch.Tensor],
    text_inputs: dict[str, torch.Tensor],
    batch_size: int = 64,
    show_progress: bool = True,
) -> torch.Tensor:
    """(num_images, num_texts) ITM scores of every image with every text, for models that read the pair jointly.

    `visual_inputs` holds per-image tensors (`pixel_values` (+ `pixel_mask`) or `visual_feats`, `visual_pos`,
    `visual_attention_mask`), `text_inputs` per-text ones (`input_ids`, `attention_mask`, ...). Each image is paired
    with `batch_size` texts per forward; scores are the ITM log-odds (or a retrieval model's `logits`)."""
    visual_inputs = {key: value for key, value in visual_inputs.items() if key in VISUAL_INPUT_NAMES and value is not None}
    if not visual_inputs:
        raise ValueError(f"visual_inputs needs one of {VISUAL_INPUT_NAMES}; got {sorted(visual_inputs)}.")
    if "input_ids" not in text_inputs:
        raise ValueError(f"text_inputs needs `input_ids`; got {sorted(text_inputs)}.")
    device = _model_device(model)
    num_images = next(iter(visual_inputs.values())).shape[0]
    num_texts = text_inputs["input_ids"].shape[0]
    scores = torch.empty(num_images, num_texts)
    with _eval_mode(model):
        for image in tqdm(range(num_images), desc="ITM scores", disable=not show_progress):
            for start in range(0, num_texts, batch_size):
                texts = {key: value[start : start + batch_size].to(device) for key, value in text_inputs.items()}
                count = texts["input_ids"].shape[0]
                visual = {
                    key: value[image : image + 1].to(device).expand(count, *value.shape[1:])
                    for key, value in visual_inputs.items()
                }
                scores[image, start : start + count] = _match_scores(model(**visual, **texts, return_dict=True)).cpu()
    return scores


def _visual_batch(processor, eval_dataset) -> dict[str, torch.Tensor]:
    from .data import read_region_column

    columns = eval_dataset.column_names
    if "visual_feats" in columns or "visual_feats_file" in columns:
        # Region features, held in the rows or in the .npy files they name.
        rows = eval_dataset.select_columns([c for c in columns if c.startswith(("visual_feats", "visual_pos"))])
        feats = [read_region_column(row, "visual_feats") for row in rows]
        boxes = [read_region_column(row, "visual_pos") for row in rows]
        return dict(processor(visual_feats=feats, visual_pos=boxes, return_tensors="pt"))
    if "image" not in columns:
        raise ValueError(f"eval_dataset needs an 'image' column or 'visual_feats'/'visual_pos' columns; it has {columns}.")
    return dict(processor(images=list(eval_dataset["image"]), return_tensors="pt"))


def image_text_match_matrix(model, processor, eval_dataset, batch_size: int = 64, show_progress: bool = True):
    """(scores `(num_images, num_texts)`, texts, text_to_image, visual inputs) of a single-stream model on an
    image-caption split: the ITM score of every image with every caption (`image_text_match_scores`)."""
    if len(eval_dataset) == 0:
        raise ValueError("eval_dataset is empty.")
    if "caption" not in eval_dataset.column_names:
        raise ValueError(f"eval_dataset needs a 'caption' column; it has {eval_dataset.column_names}.")
    tokenizer = processor.tokenizer
    texts, text_to_image = retrieval_texts(eval_dataset)
    text_inputs = dict(
        tokenizer(texts, padding=True, truncation=True, max_length=_text_max_length(model, tokenizer), return_tensors="pt")
    )
    visual_inputs = _visual_batch(processor, eval_dataset)
    scores = image_text_match_scores(model, visual_inputs, text_inputs, batch_size, show_progress)
    return scores, texts, text_to_image, visual_inputs


def evaluate_image_text_matching(
    model,
    processor,
    eval_dataset,
    num_images: int = 100,
    batch_size: int = 64,
    ks: Sequence[int] = (1, 5, 10),
    mlm_probability: float = 0.15,
    seed: int = 0,
    show_progress: bool = True,
) -> dict[str, float]:
    """Retrieval, ITM and MLM metrics of a single-stream (unified) model on an image-text split.

    Retrieval scores every pair of the first `num_images` images with all their captions through the ITM head
    (num_images x num_texts forward rows, hence the subset), under the multi-caption protocol of
    `retrieval_metrics`. `itm_accuracy` is the share of pairs classified right (match when log-odds > 0) among the
    positive pairs and as many negatives (each caption with the next image's). `mlm_accuracy` is the share of masked
    caption tokens (seeded, BERT 80/10/10) predicted right when the model has an MLM head.
    """
    from .masking import mask_tokens_for_mlm

    subset = eval_dataset.select(range(min(num_images, len(eval_dataset))))
    scores, texts, text_to_image, visual_inputs = image_text_match_matrix(model, processor, subset, batch_size, show_progress)
    tokenizer = processor.tokenizer
    metrics = retrieval_metrics(scores, text_to_image, ks)
    metrics.update(retrieval_chance_levels(text_to_image, len(subset), ks))
    metrics["num_images"] = float(len(subset))
    metrics["num_texts"] = float(len(texts))

    image_index = torch.as_tensor(text_to_image)
    positives = scores[image_index, torch.arange(len(texts))]
    negatives = scores[(image_index + 1) % len(subset), torch.arange(len(texts))] if len(subset) > 1 else None
    correct = (positives > 0).float().sum() + (0 if negatives is None else (negatives <= 0).float().sum())
    metrics["itm_accuracy"] = float(100 * correct / (len(texts) * (1 if negatives is None else 2)))

    mask_token_id = getattr(tokenizer, "mask_token_id", None)
    if mlm_probability > 0 and mask_token_id is not None and hasattr(model, "mlm_head"):
        generator = torch.Generator().manual_seed(seed)
        captions = dict(
            tokenizer(list(subset["caption"]), padding=True, truncation=True,
                      max_length=_text_max_length(model, tokenizer), return_tensors="pt", return_special_tokens_mask=True)
        )  # fmt: skip
        special = captions.pop("special_tokens_mask").bool()
        captions["input_ids"], labels = mask_tokens_for_mlm(
            captions["input_ids"], special, mask_token_id, len(tokenizer), mlm_probability, generator,
            captions["attention_mask"],
        )  # fmt: skip
        device, hits, total = _model_device(model), 0, 0
        with torch.no_grad(), _eval_mode(model):
            for start in range(0, len(subset), batch_size):
                batch = {key: value[start : start + batch_size].to(device) for key, value in captions.items()}
                batch.update({key: value[start : start + batch_size].to(device) for key, value in visual_inputs.items()})
                logits = model(**batch, return_dict=True).mlm_logits
                chunk = labels[start : start + batch_size].to(device)
                masked = chunk != -100
                hits += int((logits.argmax(-1)[masked] == chunk[masked]).sum())
                total += int(masked.sum())
        metrics["mlm_accuracy"] = float(100 * hits / max(total, 1))
    return metrics


def fusion_rerank_scores(
    model, processor, eval_dataset, k: int = 16, batch_size: int = 64, show_progress: bool = True
):
    """(`VLPRerankedRetrieval`, texts, text_to_image) of a fusion model on an image-caption split: ITC similarity of
    every pair, ITM re-scoring of each query's top `k` (capped at the numbers of images and texts) in both
    directions (`modeling_fusion.rerank_retrieval`)."""
    from .modeling_fusion import rerank_retrieval

    if len(eval_dataset) == 0:
        raise ValueError("eval_dataset is empty.")
    if "caption" not in eval_dataset.column_names:
        raise ValueError(f"eval_dataset needs a 'caption' column; it has {eval_dataset.column_names}.")
    tokenizer = processor.tokenizer
    texts, text_to_image = retrieval_texts(eval_dataset)
    text_inputs = dict(
        tokenizer(texts, padding=True, truncation=True, max_length=_text_max_length(model, tokenizer), return_tensors="pt")
    )
    image_inputs = _visual_batch(processor, eval_dataset)
    k = min(k, len(eval_dataset), len(texts))
    with _eval_mode(model):
        result = rerank_retrieval(
            model, image_inputs, text_inputs, k=k, batch_size=batch_size,
            image_ids=torch.as_tensor(text_to_image), show_progress=show_progress,
        )  # fmt: skip
    return result, texts, text_to_image


def evaluate_fusion_retrieval(
    model,
    processor,
    eval_dataset,
    k: int = 16,
    batch_size: int = 64,
    ks: Sequence[int] = (1, 5, 10),
    show_progress: bool = True,
) -> dict[str, float]:
    """Retrieval metrics of a fusion model the ALBEF way: ITC similarity for every pair, then the ITM head re-scores
    the top `k` candidates of each query (`modeling_fusion.rerank_retrieval`). Reports the re-ranked metrics
    (`i2t_r@1`, ...), the ITC-only ones (`itc_i2t_r@1`, ...), chance levels and the number of ITM forward pairs."""
    result, texts, text_to_image = fusion_rerank_scores(model, processor, eval_dataset, k, batch_size, show_progress)
    k = min(k, len(eval_dataset), len(texts))
    # Each direction re-scores its own shortlist: text->image ranks come from `scores_t2i`, not `scores_i2t.T`.
    metrics = retrieval_metrics(result.scores_i2t, text_to_image, ks, text_to_image_scores=result.scores_t2i)
    itc = retrieval_metrics(result.similarity, text_to_image, ks)
    metrics.update({f"itc_{name}": value for name, value in itc.items()})
    metrics.update(retrieval_chance_levels(text_to_image, len(eval_dataset), ks))
    metrics.update(num_images=float(len(eval_dataset)), num_texts=float(len(texts)), rerank_k=float(k),
                   num_itm_pairs=float(result.num_itm_pairs))  # fmt: skip
    return metrics


# --------------------------------------------------------------------------------------------------------------
# VQA accuracy inside the Trainer, and captioning metrics
# --------------------------------------------------------------------------------------------------------------


def vqa_soft_score_accuracy(logits, soft_scores) -> float:
    """VQA accuracy (%) from class scores and per-class soft targets: the mean target value of each row's argmax
    class. With the targets of `VLPQuestionAnsweringCollator` (min(#annotators / 3, 1) per answer) this is the
    Trainer-side figure; it gives 0.33 / 0.67 / 1 for 1 / 2 / 3 matching annotators where the official
    leave-one-out `vqa_score` gives 0.3 / 0.6 / 0.9.

    Args:
        logits: `(num_questions, num_answers)` scores (array or tensor).
        soft_scores: `(num_questions, num_answers)` soft targets, the collator's `labels`.
    """
    logits = logits.detach().cpu().numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits)
    scores = soft_scores.detach().cpu().numpy() if isinstance(soft_scores, torch.Tensor) else np.asarray(soft_scores)
    if logits.ndim != 2 or logits.shape != scores.shape or logits.shape[0] == 0:
        raise ValueError(
            "logits and soft_scores must be non-empty (num_questions, num_answers) arrays of the same shape, got "
            f"{logits.shape} and {scores.shape}"
        )
    chosen = logits.argmax(axis=-1)
    return float(100 * scores[np.arange(len(chosen)), chosen].mean())


def vqa_compute_metrics(eval_prediction) -> dict[str, float]:
    """`compute_metrics` of a VQA `Trainer`: `{"vqa_accuracy": ...}` computed by the `vlp_vqa_accuracy` metric
    (`evaluate`, configuration "soft_scores") from the logits and the collator's soft-score labels; the same
    numbers as `vqa_soft_score_accuracy`."""
    from .metrics import load_metric

    logits, labels = eval_prediction.predictions, eval_prediction.label_ids
    logits = logits[0] if isinstance(logits, tuple) else logits
    metric = load_metric("vlp_vqa_accuracy", config_name="soft_scores")
    return metric.compute(predictions=logits, references=labels)


# What the COCO caption toolkit's PTBTokenizer (a Java program) drops after tokenising: quotes, brackets (its
# -LRB- ... tokens) and sentence punctuation. Other symbols ("&", "%", "$") stay tokens.
_COCO_PUNCTUATION = frozenset(["''", "'", "``", "`", '"', "(", ")", "[", "]", "{", "}", ".", "?", "!", ",", ":",
                               "-", "--", "...", ";"])  # fmt: skip
_COCO_TOKEN = re.compile(
    r"[^\W_]+(?=n't\b)"  # "don't" -> "do" "n't", as PTB splits clitics
    r"|n't\b|'(?:s|re|ve|ll|d|m)\b"
    r"|\d+(?:[.,]\d+)+"  # "2.5", "1,000" stay one token
    r"|[^\W_]+(?:-[^\W_]+)*"  # words, hyphenated ones whole ("black-and-white")
    r"|\S"
)


def coco_tokenize(text: str) -> str:
    """A caption as the COCO caption evaluation compares it: lowercased, PTB-style tokens joined by spaces, with
    punctuation removed ("A dog's ball, red." -> "a dog 's ball red"). Plain Python; the toolkit runs Stanford's
    PTBTokenizer in Java, which this follows for English captions."""
    if not isinstance(text, str):
        raise TypeError(f"caption has type {type(text).__name__}; expected str.")
    tokens = _COCO_TOKEN.findall(text.replace("\n", " ").lower())
    return " ".join(token for token in tokens if token not in _COCO_PUNCTUATION)


def caption_metrics(
    predictions: Sequence[str], references: Sequence[Sequence[str]], meteor: bool | None = None
) -> dict[str, float]:
    """COCO captioning metrics (all as percents, x100, as captioning papers report them) of one generated caption
    per image against its reference captions, computed by `pycocoevalcap` on `coco_tokenize`d text.

    Returns:
        `bleu_1` ... `bleu_4`: corpus BLEU (pycocoevalcap's `Bleu(4)`, closest reference length).
        `cider`: CIDEr-D (pycocoevalcap's `Cider`: sigma 6, clipped counts, x10 inside), whose document frequencies
            come from the references of this very corpus: one image alone scores 0, and the figure is meaningful
            over a whole split only.
        `meteor`: METEOR 1.5 (pycocoevalcap's `Meteor`, a Java program), only when `meteor` is True, or None (the
            default) and a `java` executable is on the PATH; the key is left out otherwise.
    """
    import contextlib
    import io
    import shutil

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    if isinstance(predictions, str) or isinstance(references, str):
        raise ValueError("predictions and references must be lists (one item per image), got a str")
    if len(predictions) != len(references):
        raise ValueError(
            f"predictions has {len(predictions)} items but references has {len(references)}; expected one list of "
            "reference captions per prediction."
        )
    if len(predictions) == 0:
        raise ValueError("predictions is empty")
    for index, refs in enumerate(references):
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(f"references[{index}] must be a non-empty list of captions, got {refs!r}")
    gts = {index: [coco_tokenize(ref) for ref in refs] for index, refs in enumerate(references)}
    res = {index: [coco_tokenize(prediction)] for index, prediction in enumerate(predictions)}
    # pycocoevalcap prints its BLEU statistics to stdout, which belongs to the caller (`vlp evaluate` prints JSON).
    with contextlib.redirect_stdout(io.StringIO()):
        bleu, _ = Bleu(4).compute_score(gts, res)
        cider, _ = Cider().compute_score(gts, res)
    metrics = {f"bleu_{n + 1}": 100.0 * float(score) for n, score in enumerate(bleu)}
    metrics["cider"] = 100.0 * float(cider)
    if meteor is None:
        meteor = shutil.which("java") is not None
    if meteor:
        from pycocoevalcap.meteor.meteor import Meteor

        scorer = Meteor()
        try:
            score, _ = scorer.compute_score(gts, res)
        finally:
            del scorer  # stops the Java process
        metrics["meteor"] = 100.0 * float(score)
    return metrics


# ---------------------------------------------------------------------------------------------
# Captioning
# ---------------------------------------------------------------------------------------------

# New tokens of a caption when the caller names no limit: scene and COCO captions fit with room to spare.
DEFAULT_CAPTION_TOKENS = 40


def caption_token_budget(model, max_new_tokens: int | None = None, prompt_length: int = 1) -> int:
    """`max_new_tokens`, or the default: `DEFAULT_CAPTION_TOKENS` capped by the decoder positions left after a
    `prompt_length`-token prompt (the start token alone: 1)."""
    if max_new_tokens is not None:
        return max_new_tokens
    positions = model.config.text_config.max_position_embeddings
    return max(1, min(DEFAULT_CAPTION_TOKENS, positions - prompt_length))


def generate_captions(
    model,
    processor,
    images: Sequence,
    batch_size: int = 64,
    max_new_tokens: int | None = None,
    num_beams: int = 1,
    show_progress: bool = True,
    **generate_kwargs,
) -> list[str]:
    """One caption per image by `model.generate` (greedy with `num_beams=1`), decoded without special tokens.

    `images` is any sliceable sequence of PIL images (a list, or a `datasets` image column, decoded one batch at a
    time); `processor` holds the image processor and the tokenizer (a `VLPProcessor`). `max_new_tokens` defaults to
    `caption_token_budget(model)`; `generate_kwargs` go to `generate` (`do_sample`, `repetition_penalty`, ...).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    image_processor = getattr(processor, "image_processor", processor)
    tokenizer = getattr(processor, "tokenizer", processor)
    device, dtype = _model_device(model), _model_dtype(model)
    max_new_tokens = caption_token_budget(model, max_new_tokens)
    captions = []
    with _eval_mode(model), torch.no_grad():
        for start in tqdm(range(0, len(images), batch_size), desc="Writing captions", disable=not show_progress):
            batch = [image.convert("RGB") for image in images[start : start + batch_size]]
            pixel_values = image_processor(images=batch, return_tensors="pt")["pixel_values"]
            sequences = model.generate(
                pixel_values=pixel_values.to(device=device, dtype=dtype), max_new_tokens=max_new_tokens,
                num_beams=num_beams, **generate_kwargs,
            )  # fmt: skip
            captions.extend(text.strip() for text in tokenizer.batch_decode(sequences, skip_special_tokens=True))
    if not captions:
        raise ValueError("images is empty")
    return captions


def caption_references(eval_dataset) -> list[list[str]]:
    """The reference captions of each row: its `captions` list when the dataset has one (empty lists fall back to
    `caption`), else its `caption`."""
    columns = eval_dataset.column_names
    if "captions" not in columns and "caption" not in columns:
        raise ValueError(f"eval_dataset needs a 'captions' (list) or 'caption' column, found {columns}")
    if "captions" in columns:
        singles = eval_dataset["caption"] if "caption" in columns else [None] * len(eval_dataset)
        references = []
        for index, (captions, caption) in enumerate(zip(eval_dataset["captions"], singles)):
            refs = [text for text in (captions or []) if isinstance(text, str) and text.strip()] or (
                [caption] if caption else []
            )
            if not refs:
                raise ValueError(f"row {index} of eval_dataset has no reference caption (captions={captions!r})")
            references.append(refs)
        return references
    return [[caption] for caption in eval_dataset["caption"]]


def evaluate_captioning(
    model,
    processor,
    eval_dataset,
    batch_size: int = 64,
    max_new_tokens: int | None = None,
    num_beams: int = 1,
    show_progress: bool = True,
    meteor: bool | None = None,
    return_predictions: bool = False,
):
    """COCO caption metrics (`caption_metrics`: `bleu_1` ... `bleu_4`, `cider`, and `meteor` with Java) of the
    captions `generate_captions` writes for the `image` column of `eval_dataset`, against each row's references
    (`caption_references`: its `captions` list, else its `caption`), plus `num_images`. With `return_predictions`,
    `(metrics, predictions, references)`."""
    if "image" not in eval_dataset.column_names:
        raise ValueError(f"eval_dataset needs an 'image' column, found {eval_dataset.column_names}")
    if len(eval_dataset) == 0:
        raise ValueError("eval_dataset is empty")
    references = caption_references(eval_dataset)
    predictions = generate_captions(
        model, processor, eval_dataset["image"], batch_size, max_new_tokens, num_beams, show_progress
    )
    metrics = caption_metrics(predictions, references, meteor=meteor)
    metrics["num_images"] = float(len(predictions))
    return (metrics, predictions, references) if return_predictions else metrics
