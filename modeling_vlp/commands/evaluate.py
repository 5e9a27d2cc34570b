"""`vlp evaluate`: evaluate a saved model (a folder or a Hub repo id) on retrieval, zero-shot classification, VQA or
captioning.

    vlp evaluate --model runs/x --task retrieval                  the scenes validation split `vlp pretrain` used
    vlp evaluate --model runs/x --task zero-shot --dataset DIR    a local dataset with a label column
    vlp evaluate --model runs/vqa --task vqa                      the scenes VQA validation split of `vlp finetune`
    vlp evaluate --model runs/cap --task captioning --num-beams 3 BLEU / CIDEr of generated captions (scenes validation)

Prints one JSON object (the metrics, `task`, `model`, `num_images`, `num_texts`, `png`) on stdout, writes it to
`<output-dir>/eval_<task>.json` with a PNG report next to it; logs and progress bars go to stderr. Bad input
(a missing column or split, a task the model's family cannot do) is a one-line error and exit status 2.

A task is one entry of `TASKS` (the function that runs it, its data); which families can do it, and with which of
their classes, is each family's `evaluation_tasks` (`families.FAMILIES`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import AutoConfig

from ..data.local import (
    load_image_text_dataset,
    load_region_text_dataset,
    pick_eval_split,
)
from ..data.rows import usable_rows
from ..data.scenes import (
    ZERO_SHOT_TEMPLATES,
    make_scenes_dataset,
    make_scenes_vqa_dataset,
)
from ..evaluation.captioning import caption_references, generate_captions
from ..evaluation.embeddings import (
    build_zero_shot_classifier,
    encode_images,
    encode_texts,
    retrieval_texts,
    zero_shot_class_labels,
)
from ..evaluation.matching import fusion_rerank_scores, image_text_match_matrix
from ..evaluation.metrics import load_metric
from ..evaluation.ranking import (
    majority_class_accuracy,
    retrieval_chance_levels,
    retrieval_metrics,
    retrieval_tie_counts,
)
from ..evaluation.visualize import (
    caption_grid,
    confusion_matrix_image,
    retrieval_report,
    vqa_grid,
)
from ..evaluation.vqa import vqa_metrics, vqa_predictions, vqa_score
from ..families import FAMILIES, family_of
from ..registration import MODEL_CLASSES
from .common import load_saved_processor

logger = logging.getLogger("modeling_vlp.evaluate")

PNG_ROWS = 8  # query images / questions drawn in the PNG reports
# The embedded scenes splits `vlp pretrain` / `vlp finetune` evaluate on by default: their --num-validation and seed.
SCENES_IMAGES = 500
SCENES_VQA_IMAGES = 300
SCENES_SEED = 0
# Single-stream retrieval runs the model on every image-caption pair: like `vlp pretrain`, the first 100 images.
UNIFIED_RETRIEVAL_IMAGES = 100


@dataclass
class EvaluationRun:
    """What a task runner gets: the loaded model and processor, the split and the command's options."""

    model: torch.nn.Module
    processor: object
    dataset: object  # datasets.Dataset
    args: argparse.Namespace
    png_path: str


@dataclass(frozen=True)
class Task:
    run: Callable[[EvaluationRun], dict]  # -> metrics, with "num_images", "num_texts" and "png" (a path or None)
    data: str  # "image-text" or "vqa": which loader and default split
    summary: str


# --------------------------------------------------------------------------------------------------------------
# Retrieval
# --------------------------------------------------------------------------------------------------------------


def _retrieval_png(run: EvaluationRun, image_text_scores: torch.Tensor, texts, text_to_image, title: str):

    if "image" not in run.dataset.column_names:
        return None  # region features only: nothing to draw
    # Queries spread over the ranks their own captions got (hits and misses), not the first rows.
    retrieval_report(
        lambda index: run.dataset[index]["image"], image_text_scores, texts, text_to_image, run.png_path,
        title=title, count=PNG_ROWS,
    )  # fmt: skip
    return run.png_path


def _retrieval_metrics(text_image_scores, text_to_image, image_text_scores=None) -> dict[str, float]:
    """The `vlp_retrieval` metric over one score row per text (its scores for every image), and how many queries
    a tie decided (`i2t_tied_queries`, `t2i_tied_queries`; counted as misses)."""

    metric = load_metric("vlp_retrieval")
    metric.add_batch(scores=text_image_scores.numpy(), image_index=list(text_to_image))
    extra = {} if image_text_scores is None else {"image_to_text_scores": image_text_scores.numpy()}
    i2t_scores = text_image_scores.T if image_text_scores is None else image_text_scores
    return {**metric.compute(**extra), **retrieval_tie_counts(i2t_scores, text_to_image, text_image_scores)}


def run_retrieval(run: EvaluationRun) -> dict:

    model, processor, dataset, args = run.model, run.processor, run.dataset, run.args
    model_type = model.config.model_type
    metrics = {}
    if model_type == "vlp_dual_encoder":
        image_embeds = encode_images(model, processor, dataset["image"], args.batch_size)
        texts, text_to_image = retrieval_texts(dataset)
        text_embeds = encode_texts(model, processor, texts, args.batch_size)
        scores = image_embeds @ text_embeds.T
        metrics.update(_retrieval_metrics(scores.T, text_to_image))
        how = "cosine similarity"
    elif model_type == "vlp_fusion":
        result, texts, text_to_image = fusion_rerank_scores(model, processor, dataset, args.rerank_k, args.batch_size)
        scores = result.scores_i2t
        # Each direction re-scored its own shortlist, so the two directions come as two matrices.
        metrics.update(_retrieval_metrics(result.scores_t2i, text_to_image, image_text_scores=result.scores_i2t))
        itc = retrieval_metrics(result.similarity, text_to_image)
        metrics.update({f"itc_{name}": value for name, value in itc.items()})
        metrics.update(rerank_k=float(min(args.rerank_k, len(dataset), len(texts))),
                       num_itm_pairs=float(result.num_itm_pairs))  # fmt: skip
        how = f"ITC + ITM re-ranking of the top {args.rerank_k}"
    else:
        scores, texts, text_to_image, _ = image_text_match_matrix(model, processor, dataset, args.batch_size)
        metrics.update(_retrieval_metrics(scores.T, text_to_image))
        how = "ITM log-odds"
    metrics.update(retrieval_chance_levels(text_to_image, len(dataset)))
    metrics.update(num_images=len(dataset), num_texts=len(texts))
    title = f"{args.model}: image->text R@1 {metrics['i2t_r@1']:.1f}% ({how}); top 3 captions per image"
    metrics["png"] = _retrieval_png(run, scores, texts, text_to_image, title)
    return metrics


# --------------------------------------------------------------------------------------------------------------
# Zero-shot classification
# --------------------------------------------------------------------------------------------------------------


def _itc_encoder(model):
    """The module with `get_image_features` / `get_text_features`: the model (dual, fusion base model) or the fusion
    base model inside a model with heads; None when it has no ITC projection."""
    encoder = model.vlp if hasattr(model, "vlp") else model
    if not hasattr(encoder, "get_image_features"):
        return None
    if getattr(encoder, "text_projection", True) is None:
        return None
    return encoder


def class_labels(dataset, label_column: str) -> tuple[list[int], list[str]]:
    """(label index per row, class names) from a `ClassLabel` column or a column of class-name strings."""
    import datasets

    if label_column not in dataset.column_names:
        raise ValueError(
            f"zero-shot needs a label column: {label_column!r} (--label-column) is missing; columns found: "
            f"{dataset.column_names}"
        )
    feature = dataset.features[label_column]
    values = list(dataset[label_column])
    if isinstance(feature, datasets.ClassLabel):
        return values, list(feature.names)
    if all(isinstance(value, str) for value in values):
        names = sorted(set(values))
        index = {name: position for position, name in enumerate(names)}
        return [index[value] for value in values], names
    raise ValueError(
        f"label column {label_column!r} holds {feature}; zero-shot needs class names: a ClassLabel feature or the "
        "class names themselves as strings"
    )


def run_zero_shot(run: EvaluationRun) -> dict:

    model, processor, dataset, args = run.model, run.processor, run.dataset, run.args
    encoder = _itc_encoder(model)
    if encoder is None:
        raise ValueError(
            f"--model {args.model!r} ({type(model).__name__}) has no ITC projection (`projection_dim` is None), which "
            "zero-shot classification needs."
        )
    if "image" not in dataset.column_names:
        raise ValueError(f"zero-shot needs an 'image' column; columns found: {dataset.column_names}")
    labels, class_names = class_labels(dataset, args.label_column)
    image_embeds = encode_images(encoder, processor, dataset["image"], args.batch_size)
    classifier = build_zero_shot_classifier(
        encoder, processor, class_names, ZERO_SHOT_TEMPLATES, args.batch_size, show_progress=True
    )
    logits = image_embeds @ classifier.T
    metric = load_metric("vlp_zero_shot")
    metric.add_batch(predictions=logits.numpy(), references=labels)
    metrics = metric.compute()
    for k in (1, 5):
        metrics[f"chance_top{k}"] = 100.0 * min(k, len(class_names)) / len(class_names)
    metrics["majority_class_accuracy"] = majority_class_accuracy(labels, len(class_names))  # of this split
    metrics.update(num_classes=len(class_names), num_images=len(dataset), num_texts=len(class_names) * len(ZERO_SHOT_TEMPLATES))
    predictions = logits.argmax(dim=-1).tolist()
    confusion_matrix_image(labels, predictions, class_names, run.png_path, title=f"{args.model} zero-shot")
    metrics["png"] = run.png_path
    return metrics


# --------------------------------------------------------------------------------------------------------------
# VQA
# --------------------------------------------------------------------------------------------------------------


def run_vqa(run: EvaluationRun) -> dict:

    model, processor, dataset, args = run.model, run.processor, run.dataset, run.args
    if not type(model).__name__.endswith("ForQuestionAnswering"):
        raise ValueError(
            f"--model {args.model!r} is a {type(model).__name__} without a VQA head; fine-tune it first "
            "(`vlp finetune --task vqa --model ...`)."
        )
    visual_input = getattr(model.config, "visual_input", "patches")
    positions = getattr(getattr(model.config, "text_config", model.config), "max_position_embeddings", None)
    tokenizer_limit = getattr(processor.tokenizer, "model_max_length", None)
    max_length = min(limit for limit in (positions, tokenizer_limit) if limit is not None) if positions else None
    predictions = vqa_predictions(
        model, processor, dataset, model.config.id2label, batch_size=args.batch_size, visual_input=visual_input,
        max_length=max_length,
    )  # fmt: skip
    answers = [list(item) for item in dataset["answers"]]
    question_types = list(dataset["question_type"]) if "question_type" in dataset.column_names else None
    metrics = vqa_metrics(predictions, answers, question_types)
    metric = load_metric("vlp_vqa_accuracy")
    metric.add_batch(predictions=predictions, references=answers)
    metrics.update(metric.compute())
    num_images = len(set(dataset["image_id"])) if "image_id" in dataset.column_names else len(dataset)
    metrics.update(num_images=num_images, num_texts=len(dataset))
    metrics["png"] = None
    if "image" in dataset.column_names:
        count = min(PNG_ROWS, len(dataset))
        vqa_grid(
            [dataset[index]["image"] for index in range(count)], list(dataset["question"][:count]), predictions[:count],
            answers[:count], [vqa_score(p, a) for p, a in zip(predictions[:count], answers[:count])], run.png_path,
            title=f"{args.model}: VQA accuracy {metrics['vqa_accuracy']:.1f}%",
        )  # fmt: skip
        metrics["png"] = run.png_path
    return metrics


# --------------------------------------------------------------------------------------------------------------
# Captioning
# --------------------------------------------------------------------------------------------------------------


def images_with_references(dataset):
    """One row per image with its reference captions in a `captions` list: the dataset itself when it has such a
    column, else (COCO's annotation layout, one caption per row) the rows grouped by `image_id`, first row of each
    image kept, in order of first appearance. Without `image_id` each row is an image with its one `caption`."""
    columns = dataset.column_names
    if "captions" in columns or "image_id" not in columns:
        return dataset
    image_ids = list(dataset["image_id"])
    if len(set(image_ids)) == len(image_ids):
        return dataset
    first, captions = {}, {}
    for row, (image_id, caption) in enumerate(zip(image_ids, dataset["caption"])):
        first.setdefault(image_id, row)
        captions.setdefault(image_id, []).append(caption)
    grouped = dataset.select(list(first.values()))
    return grouped.add_column("captions", [captions[image_id] for image_id in first])


def run_captioning(run: EvaluationRun) -> dict:

    model, processor, args = run.model, run.processor, run.args
    if "image" not in run.dataset.column_names:
        raise ValueError(f"captioning needs an 'image' column; columns found: {run.dataset.column_names}")
    dataset = images_with_references(run.dataset)
    if args.max_examples is not None:
        dataset = dataset.select(range(min(args.max_examples, len(dataset))))
    references = caption_references(dataset)
    predictions = generate_captions(
        model, processor, dataset["image"], args.batch_size, args.max_new_tokens, args.num_beams
    )
    metric = load_metric("vlp_caption")
    metric.add_batch(predictions=predictions, references=references)
    metrics = metric.compute()
    metrics.update(num_images=len(dataset), num_texts=sum(len(refs) for refs in references))
    count = min(PNG_ROWS, len(dataset))
    decoding = "greedy" if args.num_beams == 1 else f"beam search ({args.num_beams} beams)"
    caption_grid(
        [dataset[index]["image"] for index in range(count)], predictions[:count], references[:count], run.png_path,
        title=f"{args.model}: BLEU-4 {metrics['bleu_4']:.1f}, CIDEr {metrics['cider']:.1f} ({decoding}); generated "
        "caption and references",
    )  # fmt: skip
    metrics["png"] = run.png_path
    metrics["examples"] = [
        {"generated": prediction, "references": refs} for prediction, refs in zip(predictions[:3], references[:3])
    ]
    return metrics


# Which family can do which task, and the class it loads for it: `Family.evaluation_tasks`.
TASKS: dict[str, Task] = {
    "retrieval": Task(run_retrieval, "image-text", "image<->text recall@1/5/10 and ranks"),
    "zero-shot": Task(run_zero_shot, "image-text", "top-1/top-5 accuracy with the prompt-template ensemble"),
    "vqa": Task(run_vqa, "vqa", "official VQA accuracy"),
    "captioning": Task(
        run_captioning, "image-text", "BLEU-1..4, CIDEr (and METEOR with Java) of generated captions",
    ),
}  # fmt: skip


# --------------------------------------------------------------------------------------------------------------
# Model, processor and data
# --------------------------------------------------------------------------------------------------------------

def tasks_by_family() -> str:
    """"dual: retrieval, zero-shot; unified: retrieval, vqa; ..." from `FAMILIES`."""
    return "; ".join(f"{name}: {', '.join(family.evaluation_tasks)}" for name, family in FAMILIES.items())


def load_model(model_path: str, task: str):
    """The checkpoint's own class (`config.architectures`), or the task's default class for its model type."""
    try:
        config = AutoConfig.from_pretrained(model_path)
    except (OSError, ValueError) as error:
        raise ValueError(f"--model {model_path!r} could not be loaded: {str(error).splitlines()[0]}") from error
    model_type = getattr(config, "model_type", None)
    family = family_of(config)
    if family is None or task not in family.evaluation_tasks:
        raise ValueError(
            f"--task {task} does not apply to --model {model_path!r}, a {model_type!r} "
            f"({family.name if family else model_type}) model; the tasks of each family are {tasks_by_family()}."
        )
    names = [name for name in (config.architectures or []) if name in MODEL_CLASSES]
    class_name = names[0] if names else family.classes[family.evaluation_tasks[task]].__name__
    if task == "retrieval" and model_type != "vlp_dual_encoder" and not class_name.endswith(("PreTraining", "Retrieval")):
        raise ValueError(
            f"--model {model_path!r} is a {class_name} without the ITM head that retrieval needs; evaluate the "
            "pretrained checkpoint instead."
        )
    if task == "vqa" and not class_name.endswith("ForQuestionAnswering"):
        raise ValueError(
            f"--model {model_path!r} is a {class_name} without a VQA head; fine-tune it first (`vlp finetune --task "
            "vqa --model ...`)."
        )
    if task == "captioning" and class_name != "VLPForConditionalGeneration":
        raise ValueError(
            f"--model {model_path!r} is a {class_name} without the language-model head that captioning needs; save "
            "a VLPForConditionalGeneration (what `vlp pretrain --family captioning` writes)."
        )
    logger.info("Loading %s from %s.", class_name, model_path)
    model = MODEL_CLASSES[class_name].from_pretrained(model_path)
    return model.to("cuda" if torch.cuda.is_available() else "cpu").eval()


def load_processor(model_path: str):

    processor = load_saved_processor(model_path)
    if processor is None:
        raise ValueError(f"--model {model_path!r} has no processor saved with it (processor_config.json + tokenizer).")
    return processor


def _image_size(config) -> int | None:
    vision = getattr(config, "vision_config", config)
    return getattr(vision, "image_size", None)


def _scenes_split(args, task: Task, config):
    """The embedded scenes split `vlp pretrain` / `vlp finetune` evaluate on (the same images: seed 0, rendered at
    the model's input size), only as many images as needed."""

    split = args.split or "validation"
    if split not in ("train", "validation", "test"):
        raise ValueError(f"--split {split!r} is not a split of the embedded scenes dataset; splits: train, validation, test")
    total = SCENES_VQA_IMAGES if task.data == "vqa" else SCENES_IMAGES
    # Each scene has at least 3 questions, so max_examples images give at least max_examples questions.
    count = min(total, args.max_examples) if args.max_examples else total
    counts = {"num_train": 0, "num_validation": 0, "num_test": 0}
    counts[f"num_{split}"] = count
    image_size = _image_size(config) or 64
    if task.data == "vqa":
        splits = make_scenes_vqa_dataset(image_size=image_size, seed=SCENES_SEED, **counts)
    else:
        regions = getattr(config, "visual_input", "patches") == "regions"
        splits = make_scenes_dataset(
            image_size=image_size, seed=SCENES_SEED, region_features=config.visual_feat_dim if regions else 0, **counts
        )
    return splits[split], f"scenes/{split}"


def _local_split(args, task: Task, config):

    regions = getattr(config, "visual_input", "patches") == "regions"
    try:
        if task.data == "vqa":
            splits = load_image_text_dataset(args.dataset, args.image_column, text_column=args.question_column)
            splits = splits.rename_column("caption", "question")
        elif regions:
            splits = load_region_text_dataset(args.dataset, text_column=args.text_column)
        else:
            splits = load_image_text_dataset(args.dataset, image_column=args.image_column, text_column=args.text_column)
    except ValueError as error:  # datasets' own errors do not say which path they are about
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(message if args.dataset in message else f"--dataset {args.dataset!r}: {message}") from error
    if args.task == "zero-shot":  # class names from every split, not only the evaluated one
        splits = zero_shot_class_labels(splits, args.label_column)
    if args.split is not None:
        if args.split not in splits:
            raise ValueError(f"--split {args.split!r} is not a split of {args.dataset!r}; splits found: {list(splits)}")
        split = args.split
    else:
        try:
            split = pick_eval_split(splits)
        except ValueError:
            raise ValueError(
                f"{args.dataset!r} has no validation or test split (splits found: {list(splits)}); pass --split"
            ) from None
    dataset = splits[split]
    if task.data == "vqa":
        if args.answers_column not in dataset.column_names:
            raise ValueError(
                f"split {split!r} of {args.dataset!r} is missing the answers column {args.answers_column!r} "
                f"(--answers-column); columns found: {dataset.column_names}"
            )
        if args.answers_column != "answers":
            dataset = dataset.rename_column(args.answers_column, "answers")
    return dataset, f"{args.dataset}/{split}"


def load_split(args, task: Task, config):
    dataset, name = _scenes_split(args, task, config) if args.dataset is None else _local_split(args, task, config)
    if args.dataset is not None:
        # Rows that cannot be evaluated (an image that does not decode, a blank or non-text caption or question) are
        # skipped and counted, never ranked or scored.
        regions = getattr(config, "visual_input", "patches") == "regions"
        caption_column = "question" if task.data == "vqa" else "caption"
        dataset, skipped = usable_rows(dataset, name, caption_column, image_column=None if regions else "image")
        args.skipped_rows = len(skipped)
    if args.max_examples is not None:
        dataset = dataset.select(range(min(args.max_examples, len(dataset))))
    if len(dataset) == 0:
        raise ValueError(f"split {name!r} is empty; nothing to evaluate")
    return dataset, name


# --------------------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------------------


def evaluate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlp evaluate",
        description="Evaluate a saved model (folder or Hub repo id) and print the metrics as one JSON object; "
        f"also writes <output-dir>/eval_<task>.json and a PNG report. Tasks by family: {tasks_by_family()}.",
    )
    parser.add_argument("--model", required=True, help="Model folder (e.g. the output of `vlp pretrain`) or Hub id.")
    parser.add_argument("--task", required=True, help=f"One of {', '.join(TASKS)}.")
    parser.add_argument(
        "--dataset", default=None,
        help="Local dataset (imagefolder, parquet, webdataset shards, save_to_disk). Default: the embedded scenes "
        "validation split that `vlp pretrain` (retrieval, zero-shot, captioning) or `vlp finetune` (vqa) evaluate "
        "on. Captioning: an image column and a caption column holding a list of references per image, or one "
        "caption per row with an image_id column (rows of one image are grouped).",
    )  # fmt: skip
    parser.add_argument("--split", default=None, help="Split to evaluate (default: validation, else test).")
    parser.add_argument("--batch-size", type=int, default=64, help="Images, texts or pairs per forward pass.")
    parser.add_argument(
        "--output-dir", default=None, help="Where the JSON and PNG go (default: <model>/eval, or ./vlp-eval for a Hub id)."
    )
    parser.add_argument("--max-examples", type=int, default=None, help="Evaluate the first N images (VQA: questions).")
    parser.add_argument("--rerank-k", type=int, default=16, help="Fusion retrieval: candidates re-scored by ITM.")
    parser.add_argument("--image-column", default=None, help="Image column of --dataset (default: detected).")
    parser.add_argument("--text-column", default=None, help="Caption column of --dataset (default: detected).")
    parser.add_argument("--label-column", default="label", help="Zero-shot: class column (ClassLabel or names).")
    parser.add_argument("--question-column", default="question", help="VQA: question column of --dataset.")
    parser.add_argument("--answers-column", default="answers", help="VQA: annotator answers column of --dataset.")
    parser.add_argument("--num-beams", type=int, default=1, help="Captioning: beams (1: greedy decoding).")
    parser.add_argument(
        "--max-new-tokens", type=int, default=None,
        help="Captioning: tokens per caption at most (default: 40, capped by the decoder's positions).",
    )  # fmt: skip
    return parser


def run_evaluation(args: argparse.Namespace) -> dict:
    """Load the model, processor and split named by `args`, run the task, write the JSON and PNG; the result."""
    if args.task not in TASKS:
        raise ValueError(f"unknown --task {args.task!r}; tasks: {', '.join(TASKS)} ({tasks_by_family()})")
    for name in ("batch_size", "max_examples", "rerank_k", "num_beams", "max_new_tokens"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    task = TASKS[args.task]
    model = load_model(args.model, args.task)
    processor = load_processor(args.model)
    dataset, split_name = load_split(args, task, model.config)
    if args.task == "retrieval" and model.config.model_type == "vlp_unified" and args.max_examples is None:
        if len(dataset) > UNIFIED_RETRIEVAL_IMAGES:
            logger.warning(
                "Single-stream retrieval scores every image-caption pair: the first %d of %d images (--max-examples "
                "to change).", UNIFIED_RETRIEVAL_IMAGES, len(dataset),
            )  # fmt: skip
            dataset = dataset.select(range(UNIFIED_RETRIEVAL_IMAGES))
    output_dir = args.output_dir or (os.path.join(args.model, "eval") if os.path.isdir(args.model) else "vlp-eval")
    os.makedirs(output_dir, exist_ok=True)
    logger.info("Evaluating %s on %s (%d rows), task %s.", args.model, split_name, len(dataset), args.task)
    run = EvaluationRun(model, processor, dataset, args, os.path.join(output_dir, f"eval_{args.task}.png"))
    with torch.no_grad():
        metrics = task.run(run)
    result = {key: float(value) if isinstance(value, (int, float)) else value for key, value in metrics.items()}
    result.update(task=args.task, model=args.model, dataset=split_name, skipped_rows=getattr(args, "skipped_rows", 0))
    result["num_images"], result["num_texts"] = int(metrics["num_images"]), int(metrics["num_texts"])
    with open(os.path.join(output_dir, f"eval_{args.task}.json"), "w") as handle:
        json.dump(result, handle, indent=2, sort_keys=True)
    return result


def evaluate_command(argv: Sequence[str]) -> int:
    """`vlp evaluate [options]`: 0 with the metrics as one JSON line on stdout, 2 with a one-line error on stderr."""
    args = evaluate_parser().parse_args(list(argv))
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO, stream=sys.stderr)
    try:
        result = run_evaluation(args)
    except ValueError as error:
        print(f"vlp evaluate: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result, sort_keys=True), flush=True)
    return 0


__all__ = ["TASKS", "Task", "EvaluationRun", "evaluate_command", "evaluate_parser", "run_evaluation", "tasks_by_family"]
