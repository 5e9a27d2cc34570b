"""`vlp finetune --task vqa`: fine-tune a pretrained model (or a preset from scratch) for visual question answering
with the transformers Trainer, on a local VQA dataset or questions about the embedded scenes, report VQA accuracy
on the held-out split and save the model with its processor (optionally pushing it to the Hub)."""

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import (
    AutoConfig,
    HfArgumentParser,
    TrainerState,
    TrainingArguments,
    set_seed,
)

from ..data.local import load_image_text_dataset
from ..data.scenes import make_scenes_vqa_dataset, vqa_answer_vocabulary
from ..evaluation.vqa import evaluate_vqa
from ..families import FAMILIES
from ..presets import get_preset_config
from ..training.collators import VLPQuestionAnsweringCollator
from ..training.trainer import VLPReportingTrainer
from .arguments import FINETUNE_DEFAULTS, PretrainArguments, settle_worker_options
from .common import (
    TRAINER_STATE_NAME,
    load_saved_processor,
    _setup_logging,
    build_config,
    build_processor,
    held_out_split,
    push_run,
    split_push_arguments,
)
from .pretrain import _finish, _is_finished, _prepare_processor, _resume_checkpoint

logger = logging.getLogger("modeling_vlp.cli")


@dataclass
class FinetuneArguments:
    """Options of `vlp finetune` besides transformers' `TrainingArguments`."""

    task: str = field(default="vqa", metadata={"help": "Downstream task.", "choices": ["vqa"]})
    model: str | None = field(
        default=None,
        metadata={"help": "Pretrained model folder (e.g. the output of `vlp pretrain`); its processor is reused."},
    )
    family: str = field(
        default="unified",
        metadata={
            "help": "Model family when starting from --preset.",
            "choices": [name for name, family in FAMILIES.items() if family.question_answering_class],
        },
    )
    preset: str | None = field(
        default=None, metadata={"help": "Train from scratch with this preset instead of --model (a baseline)."}
    )
    dataset: str | None = field(
        default=None,
        metadata={
            "help": "Local VQA dataset (imagefolder/parquet/save_to_disk) with image, question and answers (a list "
            "of annotator answers) columns. Default: questions generated about the embedded scenes."
        },
    )
    image_column: str | None = field(default=None, metadata={"help": "Image column of --dataset (default: detected)."})
    question_column: str = field(default="question", metadata={"help": "Question column of --dataset."})
    answers_column: str = field(default="answers", metadata={"help": "Annotator answers column of --dataset."})
    num_train: int = field(default=3000, metadata={"help": "Training images of the embedded scenes VQA dataset."})
    num_validation: int = field(default=300, metadata={"help": "Validation images of the embedded dataset."})
    min_answer_count: int = field(default=1, metadata={"help": "Answers seen fewer times in training are dropped."})
    vocab_size: int = field(default=1000, metadata={"help": "Vocabulary of the tokenizer trained with --preset."})
    resume: bool = field(default=True, metadata={"help": "Continue from the last complete checkpoint in --output-dir."})


def _finetune_parser() -> HfArgumentParser:
    parser = HfArgumentParser(
        (FinetuneArguments, TrainingArguments),
        prog="vlp finetune",
        description="Fine-tune a pretrained model for visual question answering with the transformers Trainer, "
        "report VQA accuracy on the held-out split and save the model with its processor.",
    )
    parser.set_defaults(**FINETUNE_DEFAULTS)
    for action in parser._actions:
        if action.dest == "output_dir":
            action.required = True
    return parser


def load_vqa_datasets(args: FinetuneArguments, image_size: int, seed: int):
    if args.dataset is None:
        splits = make_scenes_vqa_dataset(args.num_train, args.num_validation, image_size=image_size, seed=seed)
    else:
        splits = load_image_text_dataset(args.dataset, image_column=args.image_column, text_column=args.question_column)
        splits = splits.rename_column("caption", "question")
        if args.answers_column not in splits["train"].column_names:
            raise ValueError(
                f"--dataset {args.dataset!r} has no {args.answers_column!r} column (--answers-column); it has "
                f"{splits['train'].column_names}."
            )
        if args.answers_column != "answers":
            splits = splits.rename_column(args.answers_column, "answers")
    return held_out_split(splits, args.num_validation, seed)


def finetune(argv: Sequence[str]) -> int:
    push_args, argv = split_push_arguments(argv)
    args, training_args = _finetune_parser().parse_args_into_dataclasses(args=argv)
    settle_worker_options(training_args)
    _setup_logging(training_args)
    if (args.model is None) == (args.preset is None):
        raise ValueError("vlp finetune needs exactly one of --model (a pretrained folder) or --preset (from scratch).")
    set_seed(training_args.seed)
    output_dir = training_args.output_dir
    resume_from = _resume_checkpoint(training_args, args.resume)

    if args.model is not None:
        base_config = AutoConfig.from_pretrained(args.model)
        family_name = next(
            (name for name, family in FAMILIES.items() if family.model_type == base_config.model_type), None
        )
    else:
        base_config = get_preset_config(args.preset)
        family_name = args.family
    family = FAMILIES.get(family_name) if family_name else None
    if family is None or family.question_answering_class is None:
        raise ValueError(
            f"{args.model or args.preset} is a {base_config.model_type!r} model, which has no VQA head; VQA "
            f"fine-tuning works for the families {[n for n, f in FAMILIES.items() if f.question_answering_class]}."
        )
    image_size = family.image_size(base_config)
    train_dataset, eval_dataset = load_vqa_datasets(args, image_size, training_args.seed)
    id2label, label2id = vqa_answer_vocabulary(train_dataset, min_count=args.min_answer_count)
    logger.info("VQA data: %d / %d questions, %d answers.", len(train_dataset), len(eval_dataset), len(id2label))

    def build():
        if args.model is not None:
            processor = load_saved_processor(args.model)
            if processor is None:
                raise ValueError(f"--model {args.model!r} has no processor saved with it.")
            return processor
        pretrain_args = PretrainArguments(vocab_size=args.vocab_size)
        return build_processor(pretrain_args, train_dataset, image_size, family.max_text_length(base_config))

    processor = _prepare_processor(training_args, resume_from, build)
    model_class = family.question_answering_class
    labels = dict(num_labels=len(id2label), id2label=id2label, label2id=label2id)
    if _is_finished(resume_from, training_args):
        model = model_class.from_pretrained(resume_from)
    elif args.model is not None:
        model = model_class.from_pretrained(args.model, **labels)
    else:
        pretrain_args = PretrainArguments(family=family_name)
        config = build_config(pretrain_args, args.preset, processor.tokenizer, family=family_name)
        config.update(labels)
        torch.manual_seed(training_args.seed)
        model = model_class(config)
    max_text_length = min(family.max_text_length(model.config), processor.tokenizer.model_max_length)
    visual_input = getattr(model.config, "visual_input", "patches")

    def vqa_metrics(model, dataset) -> dict[str, float]:
        # The official VQA accuracy (and per question type) of the whole split, at every evaluation: eval_vqa_accuracy.
        return evaluate_vqa(
            model, processor, dataset, model.config.id2label, batch_size=training_args.per_device_eval_batch_size,
            show_progress=False, visual_input=visual_input,
        )  # fmt: skip

    trainer = VLPReportingTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=VLPQuestionAnsweringCollator(
            processor, label2id, max_length=max_text_length, visual_input=visual_input
        ),
        processing_class=processor,
        compute_model_metrics=vqa_metrics,
    )
    if _is_finished(resume_from, training_args):
        trainer.state = TrainerState.load_from_json(os.path.join(resume_from, TRAINER_STATE_NAME))
    else:
        trainer.train(resume_from_checkpoint=resume_from)

    def evaluate() -> dict[str, float]:
        evaluated = {key: float(value) for key, value in trainer.evaluate().items()}  # eval_loss, eval_vqa_accuracy
        return {**trainer.last_model_metrics, **evaluated}

    status = _finish(trainer, model, output_dir, evaluate)
    if status == 0 and push_args is not None and trainer.is_world_process_zero():
        description = "VQA questions generated about the embedded scenes" if args.dataset is None else None
        status = push_run(push_args, output_dir, ["vqa"], args.dataset or "scenes-vqa", description)
    return status
