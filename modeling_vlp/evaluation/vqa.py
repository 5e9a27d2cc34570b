"""VQA accuracy: the official leave-one-out score of an answer (`vqa_score`), its mean over a split, the answers of a
question-answering model (`vqa_predictions`, `evaluate_vqa`) and the Trainer-side soft-score accuracy
(`vqa_compute_metrics`); used by `vlp finetune`, `vlp evaluate` and the `vlp_vqa_accuracy` metric."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.answers import normalize_vqa_answer
from ..training.collators import VLPQuestionAnsweringCollator
from .embeddings import _check_one_per_prediction, _eval_mode, _model_device, _model_dtype
from .metrics import load_metric


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
    _check_one_per_prediction(
        predictions, answers_lists, "answers_lists", "; expected one list of answers per prediction."
    )
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
    *,
    answers_column: str = "answers",
    question_type_column: str = "question_type",
    **prediction_kwargs,
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
        prediction_kwargs: the options of `vqa_predictions`: `batch_size`, `image_column`, `question_column`,
            `visual_input` (`"patches"`, images in `image_column`, or `"regions"`, `visual_feats` and `visual_pos`
            columns or their `.npy` files, see `VLPQuestionAnsweringCollator`), `max_length`, `device`,
            `show_progress`.

    Returns:
        `vqa_accuracy`, `num_questions` and, when the dataset has `question_type_column`, `vqa_accuracy_<type>` for
        each question type.
    """
    predictions = vqa_predictions(
        model, processor, dataset, id2label, answers_column=answers_column, **prediction_kwargs
    )
    question_types = list(dataset[question_type_column]) if question_type_column in dataset.column_names else None
    return vqa_metrics(predictions, list(dataset[answers_column]), question_types)


def vqa_metrics(
    predictions: Sequence[str], answers_lists: Sequence[Sequence[str]], question_types: Sequence[str] | None = None
) -> dict[str, float]:
    """`vqa_accuracy` (%), `num_questions` and, given `question_types`, `vqa_accuracy_<type>` per type."""
    _check_one_per_prediction(predictions, answers_lists, "answers_lists")
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
    logits, labels = eval_prediction.predictions, eval_prediction.label_ids
    logits = logits[0] if isinstance(logits, tuple) else logits
    metric = load_metric("vlp_vqa_accuracy", config_name="soft_scores")
    return metric.compute(predictions=logits, references=labels)
