"""The `vlp` command.

    vlp pretrain --family dual --output-dir runs/x [options]   pretrain a model, evaluate it, save it
    vlp <command> --help                                        the options of one command

Each command is a function `argv -> exit status` in `COMMANDS`; `evaluate`, `convert` and `push` go next to
`pretrain` the same way.
"""

import json
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import AutoTokenizer, HfArgumentParser, TrainerState, TrainingArguments, set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .configuration_vlp import get_preset_config, preset_names
from .modeling_dual_encoder import VLPDualEncoderModel


logger = logging.getLogger("modeling_vlp.cli")

TRAINER_STATE_NAME = "trainer_state.json"
EVAL_RESULTS_NAME = "eval_results.json"


# --------------------------------------------------------------------------------------------------------------
# Families
# --------------------------------------------------------------------------------------------------------------


def _evaluate_dual(model, processor, eval_dataset, batch_size: int) -> dict[str, float]:
    from .evaluation import evaluate_dual_encoder

    return evaluate_dual_encoder(model, processor, eval_dataset, batch_size=batch_size, show_progress=False)


@dataclass(frozen=True)
class Family:
    """What `vlp pretrain` needs to know about a model family."""

    default_preset: str
    model_class: type
    evaluate: Callable  # (model, processor, eval_dataset, batch_size) -> flat dict of floats


FAMILIES: dict[str, Family] = {
    "dual": Family(default_preset="dual-small", model_class=VLPDualEncoderModel, evaluate=_evaluate_dual),
}


# --------------------------------------------------------------------------------------------------------------
# vlp pretrain
# --------------------------------------------------------------------------------------------------------------


@dataclass
class PretrainArguments:
    """Options of `vlp pretrain` besides transformers' `TrainingArguments`."""

    family: str = field(default="dual", metadata={"help": "Model family.", "choices": sorted(FAMILIES)})
    preset: str | None = field(
        default=None,
        metadata={"help": f"Architecture preset (default: the family's CPU preset, dual-small): {preset_names()}."},
    )
    dataset: str | None = field(
        default=None,
        metadata={
            "help": "Local image-text corpus: imagefolder with metadata.jsonl/csv, parquet, webdataset .tar shards or "
            "a save_to_disk folder. Default: the embedded generated scenes dataset."
        },
    )
    image_column: str | None = field(default=None, metadata={"help": "Image column of --dataset (default: detected)."})
    text_column: str | None = field(default=None, metadata={"help": "Caption column of --dataset (default: detected)."})
    num_train: int = field(default=6000, metadata={"help": "Training examples of the embedded scenes dataset."})
    num_validation: int = field(
        default=500,
        metadata={
            "help": "Validation examples of the embedded dataset; with a --dataset that has no validation or test "
            "split, the number of training rows held out for evaluation."
        },
    )
    # Architecture overrides of the preset.
    image_size: int | None = field(default=None, metadata={"help": "Input image side (a multiple of the patch size)."})
    patch_size: int | None = field(default=None, metadata={"help": "ViT patch size."})
    vision_layers: int | None = field(default=None, metadata={"help": "Transformer layers of the image tower."})
    vision_width: int | None = field(default=None, metadata={"help": "Hidden size of the image tower (MLP: 4x)."})
    vision_heads: int | None = field(default=None, metadata={"help": "Attention heads of the image tower."})
    text_layers: int | None = field(default=None, metadata={"help": "Transformer layers of the text tower."})
    text_width: int | None = field(default=None, metadata={"help": "Hidden size of the text tower (MLP: 4x)."})
    text_heads: int | None = field(default=None, metadata={"help": "Attention heads of the text tower."})
    max_text_length: int | None = field(
        default=None, metadata={"help": "Longest caption in tokens (the text tower's position embeddings)."}
    )
    projection_dim: int | None = field(default=None, metadata={"help": "Dimension of the shared embedding space."})
    loss_type: str | None = field(
        default=None,
        metadata={
            "help": "Contrastive loss: softmax (CLIP) or sigmoid (SigLIP). Default: the preset's.",
            "choices": ["softmax", "sigmoid"],
        },
    )
    # Objectives.
    objectives: list[str] = field(default_factory=lambda: ["itc"], metadata={"help": "Objectives to train."})
    objective_weights: list[str] = field(
        default_factory=list, metadata={"help": "Weights as NAME=WEIGHT (e.g. itc=1.0); unlisted objectives weigh 1."}
    )
    local_loss: bool = field(
        default=False, metadata={"help": "Contrastive loss over the local rows of the global similarity matrix only."}
    )
    gather_with_grad: bool = field(
        default=True, metadata={"help": "Backpropagate through the features gathered from other ranks."}
    )
    # Text and image processing.
    tokenizer: str | None = field(
        default=None, metadata={"help": "Tokenizer folder (any AutoTokenizer). Default: train one on the captions."}
    )
    vocab_size: int = field(default=1000, metadata={"help": "Vocabulary size of the trained tokenizer (a soft limit)."})
    tokenizer_model_type: str = field(
        default="bpe",
        metadata={"help": "SentencePiece model of the trained tokenizer.", "choices": ["bpe", "unigram"]},
    )
    resume: bool = field(
        default=True,
        metadata={
            "help": "Continue from the last complete checkpoint in --output-dir when there is one "
            "(--no-resume: start over)."
        },
    )
    sample_captions: bool = field(
        default=True, metadata={"help": "Train on a random one of each image's captions when a `captions` list exists."}
    )


# Applied when the command line does not set them: a run that fits a laptop CPU.
CPU_TRAINING_DEFAULTS = dict(
    max_steps=1000,
    per_device_train_batch_size=64,
    per_device_eval_batch_size=128,
    learning_rate=1e-3,
    weight_decay=0.1,
    adam_beta2=0.98,
    warmup_steps=0.05,
    lr_scheduler_type="cosine",
    max_grad_norm=1.0,
    logging_steps=25,
    eval_strategy="no",
    save_strategy="steps",
    save_steps=250,
    save_total_limit=2,
    report_to="none",
    remove_unused_columns=False,
    dataloader_num_workers=0,
    dataloader_drop_last=True,
    ddp_find_unused_parameters=False,
    dataloader_pin_memory=torch.cuda.is_available(),
    seed=0,
)


def _pretrain_parser() -> HfArgumentParser:
    parser = HfArgumentParser(
        (PretrainArguments, TrainingArguments),
        prog="vlp pretrain",
        description="Pretrain a vision-language model, evaluate it on the held-out split and save it with its "
        "processor. Also takes every transformers TrainingArguments option. Re-running the command with the same "
        "--output-dir resumes from the last complete checkpoint there.",
    )
    parser.set_defaults(**CPU_TRAINING_DEFAULTS)
    if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Several CPU processes (torchrun): without both, accelerate leaves them as independent single-process runs.
        parser.set_defaults(use_cpu=True, ddp_backend="gloo")
    for action in parser._actions:
        if action.dest == "output_dir":
            action.required = True
    return parser


def parse_objective_weights(objectives: Sequence[str], weights: Sequence[str]) -> dict[str, float]:
    """`["itc", "itm"]`, `["itm=0.5"]` -> `{"itc": 1.0, "itm": 0.5}`."""
    result = {name: 1.0 for name in objectives}
    for item in weights:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--objective-weights items must look like NAME=WEIGHT, got {item!r}.")
        if name not in result:
            raise ValueError(f"--objective-weights names {name!r}, which is not in --objectives {list(objectives)}.")
        try:
            result[name] = float(value)
        except ValueError:
            raise ValueError(f"--objective-weights {item!r}: {value!r} is not a number.") from None
    return result


def find_resume_checkpoint(output_dir: str) -> str | None:
    """The newest complete `checkpoint-N` in `output_dir`. The Trainer writes `trainer_state.json` last, so a
    checkpoint without it was interrupted while saving and is skipped."""
    if not os.path.isdir(output_dir):
        return None
    steps = []
    for name in os.listdir(output_dir):
        prefix, _, step = name.partition("-")
        if prefix == PREFIX_CHECKPOINT_DIR and step.isdigit() and os.path.isdir(os.path.join(output_dir, name)):
            steps.append(int(step))
    for step in sorted(steps, reverse=True):
        path = os.path.join(output_dir, f"{PREFIX_CHECKPOINT_DIR}-{step}")
        if os.path.isfile(os.path.join(path, TRAINER_STATE_NAME)):
            return path
        logger.warning("Skipping %s: it has no %s (interrupted while saving).", path, TRAINER_STATE_NAME)
    return None


def checkpoint_step(checkpoint: str) -> int:
    """The global step a Trainer checkpoint was saved at."""
    with open(os.path.join(checkpoint, TRAINER_STATE_NAME)) as handle:
        return int(json.load(handle)["global_step"])


def load_datasets(args: PretrainArguments, image_size: int, seed: int):
    """(train split, eval split) of the embedded scenes dataset or of `--dataset`."""
    from .data import load_image_text_dataset, make_scenes_dataset, pick_eval_split

    if args.dataset is None:
        splits = make_scenes_dataset(args.num_train, args.num_validation, image_size=image_size, seed=seed)
    else:
        splits = load_image_text_dataset(args.dataset, image_column=args.image_column, text_column=args.text_column)
    if "train" not in splits:
        raise ValueError(f"The dataset needs a 'train' split; found {list(splits)}.")
    try:
        eval_split = pick_eval_split(splits)
    except ValueError:
        if len(splits["train"]) < 2:
            raise ValueError("The dataset has no validation/test split and too few training rows to hold some out.")
        held_out = min(args.num_validation, len(splits["train"]) // 5) or 1
        logger.warning("No validation or test split: holding out %d training rows for evaluation.", held_out)
        parts = splits["train"].train_test_split(test_size=held_out, seed=seed)
        return parts["train"], parts["test"]
    return splits["train"], splits[eval_split]


def _train_captions(train_dataset) -> list[str]:
    columns = [name for name in ("captions", "caption") if name in train_dataset.column_names][:1]
    texts = []
    for row in train_dataset.select_columns(columns):
        value = row[columns[0]]
        texts.extend(value if isinstance(value, list) else [value])
    return texts


def build_processor(args: PretrainArguments, train_dataset, image_size: int, max_text_length: int):
    from .processors import VLPImageProcessor, VLPProcessor, VLPTokenizer

    if args.tokenizer is not None:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.sep_token
    else:
        tokenizer = VLPTokenizer.train_from_iterator(
            _train_captions(train_dataset), vocab_size=args.vocab_size, model_type=args.tokenizer_model_type,
            model_max_length=max_text_length,
        )  # fmt: skip
    image_processor = VLPImageProcessor(
        size={"height": image_size, "width": image_size}, do_center_crop=False,
        crop_size={"height": image_size, "width": image_size},
    )  # fmt: skip
    return VLPProcessor(image_processor, tokenizer)


def _width_overrides(width: int | None, heads: int | None, preset_heads: int) -> dict:
    overrides = {}
    if width is not None:
        overrides.update(hidden_size=width, intermediate_size=4 * width)
        if heads is None and width % preset_heads != 0:
            heads = max(1, width // 64)
    if heads is not None:
        overrides["num_attention_heads"] = heads
    return overrides


def build_config(args: PretrainArguments, preset: str, tokenizer=None):
    """The preset's config with the command line's overrides and, given a tokenizer, its vocabulary and ids."""
    base = get_preset_config(preset)
    vision = {"image_size": args.image_size, "patch_size": args.patch_size, "num_hidden_layers": args.vision_layers}
    vision.update(_width_overrides(args.vision_width, args.vision_heads, base.vision_config.num_attention_heads))
    text = {"num_hidden_layers": args.text_layers, "max_position_embeddings": args.max_text_length}
    text.update(_width_overrides(args.text_width, args.text_heads, base.text_config.num_attention_heads))
    if tokenizer is not None:
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
        text.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=bos, eos_token_id=eos)
        if eos is None and base.text_config.pooling == "eos":
            text["pooling"] = "mean"
    overrides = {
        "vision_config": {key: value for key, value in vision.items() if value is not None},
        "text_config": {key: value for key, value in text.items() if value is not None},
    }
    if args.projection_dim is not None:
        overrides["projection_dim"] = args.projection_dim
    if args.loss_type is not None and args.loss_type != base.loss_type:
        overrides["loss_type"] = args.loss_type
        if args.loss_type == "sigmoid" and base.logit_bias_init_value is None:
            # SigLIP's start: temperature 10 and bias -10, so the many negatives do not swamp the first steps.
            overrides.update(logit_scale_init_value=math.log(10.0), logit_bias_init_value=-10.0, logit_scale_max=None)
    return get_preset_config(preset, **overrides)


def _load_saved_processor(path: str):
    from .processors import VLPProcessor

    try:
        return VLPProcessor.from_pretrained(path)
    except (OSError, ValueError) as error:
        logger.warning("Could not reload the processor saved in %s (%s); building a new one.", path, error)
        return None


def pretrain(argv: Sequence[str]) -> int:
    from .collators import VLPCollator
    from .trainer import VLPObjectiveArguments, VLPTrainer

    args, training_args = _pretrain_parser().parse_args_into_dataclasses(args=list(argv))
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if training_args.should_log else logging.WARNING,
    )
    family = FAMILIES[args.family]
    preset = args.preset or family.default_preset
    objective_args = VLPObjectiveArguments(
        objectives=parse_objective_weights(args.objectives, args.objective_weights),
        local_loss=args.local_loss,
        gather_with_grad=args.gather_with_grad,
    )
    set_seed(training_args.seed)

    output_dir = training_args.output_dir
    resume_from = training_args.resume_from_checkpoint or (find_resume_checkpoint(output_dir) if args.resume else None)
    if resume_from:
        logger.info("Resuming from %s", resume_from)

    logger.info("vlp pretrain: family %s, preset %s, output %s", args.family, preset, output_dir)
    config = build_config(args, preset)
    image_size = config.vision_config.image_size
    max_text_length = config.text_config.max_position_embeddings
    train_dataset, eval_dataset = load_datasets(args, image_size, training_args.seed)
    logger.info("Data: %d training and %d evaluation examples.", len(train_dataset), len(eval_dataset))

    # The main process builds the processor and saves it before the others load it, so that every rank uses the
    # very same tokenizer; a resumed run takes the one saved with its checkpoint.
    with training_args.main_process_first(desc="processor"):
        processor = _load_saved_processor(resume_from) if resume_from else None
        if processor is None and training_args.local_process_index > 0:
            processor = _load_saved_processor(output_dir)
        if processor is None:
            processor = build_processor(args, train_dataset, image_size, max_text_length)
            processor.save_pretrained(output_dir)
    tokenizer = processor.tokenizer
    config = build_config(args, preset, tokenizer)
    max_text_length = min(config.text_config.max_position_embeddings, tokenizer.model_max_length)

    # transformers' Trainer resumed from a checkpoint at max_steps still takes one more step: skip training instead.
    finished = resume_from is not None and 0 < training_args.max_steps <= checkpoint_step(resume_from)
    if finished:
        logger.info("%s already reached --max-steps %d: evaluating it.", resume_from, training_args.max_steps)
        model = family.model_class.from_pretrained(resume_from)
    else:
        torch.manual_seed(training_args.seed)
        model = family.model_class(config)
    logger.info(
        "Model: %s (%s), %.2fM parameters.",
        type(model).__name__, preset, sum(p.numel() for p in model.parameters()) / 1e6,
    )  # fmt: skip
    trainer = VLPTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset if training_args.eval_strategy != "no" else None,
        data_collator=VLPCollator(
            processor, sample_captions=args.sample_captions, max_length=max_text_length, seed=training_args.seed
        ),
        processing_class=processor,
        objective_args=objective_args,
    )
    if finished:
        trainer.state = TrainerState.load_from_json(os.path.join(resume_from, TRAINER_STATE_NAME))
    else:
        trainer.train(resume_from_checkpoint=resume_from)
    logger.info("Training done at step %d.", trainer.state.global_step)
    trainer.save_model(output_dir)
    trainer.save_state()
    logger.info("Saved the model and processor to %s.", output_dir)

    if not trainer.is_world_process_zero():
        return 0
    logger.info("Evaluating on %d examples.", len(eval_dataset))
    metrics = family.evaluate(model, processor, eval_dataset, training_args.per_device_eval_batch_size)
    metrics["global_step"] = float(trainer.state.global_step)
    with open(os.path.join(output_dir, EVAL_RESULTS_NAME), "w") as handle:
        json.dump(metrics, handle, indent=2, sort_keys=True)
    print(json.dumps(metrics, sort_keys=True), flush=True)
    return 0


# --------------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------------

COMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "pretrain": (pretrain, "pretrain a model on image-text pairs, evaluate it and save it"),
}


def _usage() -> str:
    lines = ["usage: vlp <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "`vlp <command> --help` lists the options of a command."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"vlp: unknown command {command!r}.\n\n{_usage()}", file=sys.stderr)
        return 2
    return COMMANDS[command][0](rest)


if __name__ == "__main__":
    sys.exit(main())
