"""`vlp pretrain`: build a model of a family from a preset (or with a pretrained text tower), train it with the
family's objectives on the embedded scenes or a local corpus, evaluate it, save it (and push it).

    vlp pretrain --family dual --output-dir runs/x [options]
    vlp pretrain --family fusion --objectives itc,itm,mlm --momentum-distill --output-dir runs/albef
"""

import json
import logging
import os
from collections.abc import Callable, Sequence

import torch
from transformers import HfArgumentParser, TrainerState, TrainingArguments, set_seed

from ..families import FAMILIES
from ..presets import get_preset_config
from ..training.collators import VLPCollator, VLPPretrainingCollator
from ..training.family_objectives import resolve_objectives, VLPObjectiveArguments
from ..data.sources import materialized_stream
from ..data.streaming import ImageTextStream
from ..training.trainer import VLPTrainer
from .arguments import CPU_TRAINING_DEFAULTS, PretrainArguments, settle_worker_options
from .common import (
    EVAL_RESULTS_NAME,
    SCENES_DESCRIPTION,
    TRAINER_STATE_NAME,
    _check_text_model_options,
    load_saved_processor,
    _setup_logging,
    build_config,
    apply_tower_locks,
    build_model_with_towers,
    build_processor,
    build_text_model_processor,
    check_family_options,
    check_model_options,
    checkpoint_problem,
    checkpoint_step,
    find_resume_checkpoint,
    given_options,
    load_datasets,
    load_model_for_pretraining,
    load_model_processor,
    push_run,
    read_model_config,
    split_push_arguments,
)

logger = logging.getLogger("modeling_vlp.cli")
# The command-line options that are `VLPObjectiveArguments` fields of the same name.
OBJECTIVE_OPTIONS = (
    "local_loss", "gather_with_grad", "itm_negative_ratio", "momentum_distill", "momentum", "distill_alpha", "queue_size",
    "accum_freq", "distill_warmup_steps",
)

# --------------------------------------------------------------------------------------------------------------
# vlp pretrain
# --------------------------------------------------------------------------------------------------------------






def _pretrain_parser() -> HfArgumentParser:
    parser = HfArgumentParser(
        (PretrainArguments, TrainingArguments),
        prog="vlp pretrain",
        description="Pretrain a vision-language model, evaluate it on the held-out split and save it with its "
        "processor. Also takes every transformers TrainingArguments option. Re-running the command with the same "
        "--output-dir resumes from the last complete checkpoint there. --push-to-hub REPO_ID (with --hub-endpoint, "
        "--private, --revision, --commit-message; see `vlp push --help`) pushes the finished run with a model card.",
    )
    parser.set_defaults(**CPU_TRAINING_DEFAULTS)
    if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Several CPU processes (torchrun): without both, accelerate leaves them as independent single-process runs.
        parser.set_defaults(use_cpu=True, ddp_backend="gloo")
    for action in parser._actions:
        if action.dest == "output_dir":
            action.required = True
    return parser


def _split_items(items: Sequence[str]) -> list[str]:
    """`["itm,mlm", "mim"]` -> `["itm", "mlm", "mim"]`."""
    return [part for item in items for part in item.split(",") if part]


def parse_objective_weights(objectives: Sequence[str], weights: Sequence[str]) -> dict[str, float]:
    """`["itc", "itm"]` (or `["itc,itm"]`), `["itm=0.5"]` -> `{"itc": 1.0, "itm": 0.5}`."""
    objectives = _split_items(objectives)
    result = {name: 1.0 for name in objectives}
    for item in _split_items(weights):
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


def _uses_regions(config) -> bool:
    return getattr(config, "visual_input", "patches") == "regions"


def _prepare_processor(training_args, resume_from, build):
    """The main process builds the processor and saves it before the others load it, so that every rank uses the
    very same tokenizer; a resumed run takes the one saved with its checkpoint."""
    output_dir = training_args.output_dir
    with training_args.main_process_first(desc="processor"):
        processor = load_saved_processor(resume_from) if resume_from else None
        if processor is None and training_args.local_process_index > 0:
            processor = load_saved_processor(output_dir)
        if processor is None:
            processor = build()
            processor.save_pretrained(output_dir)
    return processor


def _resume_checkpoint(training_args: TrainingArguments, resume: bool) -> str | None:
    output_dir = training_args.output_dir
    resume_from = training_args.resume_from_checkpoint or (find_resume_checkpoint(output_dir) if resume else None)
    problem = checkpoint_problem(resume_from) if training_args.resume_from_checkpoint else None
    if problem is not None:  # the checkpoint asked for: no other one is taken instead
        raise ValueError(f"--resume-from-checkpoint {resume_from!r} cannot be resumed from: {problem}.")
    if resume_from:
        logger.info("Resuming from %s", resume_from)
    return resume_from


def _check_enough_rows(train_dataset, training_args: TrainingArguments, accum_freq: int) -> None:
    """Refuse a training split too small for one batch per process and data worker (every batch would repeat rows,
    or, as the Trainer does with `dataloader_drop_last`, training would end at step 0 having learnt nothing)."""
    batch = training_args.per_device_train_batch_size * accum_freq
    slots = training_args.world_size * max(1, training_args.dataloader_num_workers)
    if len(train_dataset) // slots < batch:
        raise ValueError(
            f"--dataset: {len(train_dataset)} training rows are fewer than one batch of {batch} rows for each of the "
            f"{slots} data readers ({training_args.world_size} processes x {max(1, training_args.dataloader_num_workers)} "
            "workers); lower --per-device-train-batch-size or --dataloader-num-workers, or give more data"
        )


def _finish(trainer, model, output_dir: str, evaluate: Callable[[], dict[str, float]]) -> int:
    """Save the final model and state, evaluate on the main process, write and print the metrics."""
    if trainer.state.global_step == 0 and trainer.args.max_steps != 0:
        raise ValueError(f"training ended at step 0 without an optimizer step; {trainer.skipped_rows.summary()}")
    logger.info("Training done at step %d; training rows: %s.", trainer.state.global_step, trainer.skipped_rows.summary())
    trainer.save_model(output_dir)
    trainer.save_state()
    logger.info("Saved the model and processor to %s.", output_dir)
    if not trainer.is_world_process_zero():
        return 0
    metrics = evaluate()
    metrics["global_step"] = float(trainer.state.global_step)
    with open(os.path.join(output_dir, EVAL_RESULTS_NAME), "w") as handle:
        json.dump(metrics, handle, indent=2, sort_keys=True)
    print(json.dumps(metrics, sort_keys=True), flush=True)
    return 0


def _check_decoder_objectives(family_name: str, objectives) -> None:
    """The captioning objective on a family without a text decoder: say which family has one (the trainer would
    only say that the objective is unknown to the model, after the tokenizer is trained)."""

    if "lm" in objectives and "lm" not in FAMILIES[family_name].objectives:
        raise ValueError(
            f"--objectives {','.join(objectives)}: 'lm' (captioning) needs a text decoder, which the {family_name!r} "
            "family does not have; use --family captioning --preset coca-small (CoCa: itc and lm in one model), or "
            "--family captioning alone for lm."
        )


def _truncation_length(args, max_text_length: int) -> int:
    """`--max-text-length` with `--model` truncates captions; it cannot add positions to the checkpoint."""
    if args.max_text_length > max_text_length:
        raise ValueError(
            f"--max-text-length {args.max_text_length} exceeds the {max_text_length} tokens --model {args.model!r} "
            f"reads: --model fixes the architecture; give --max-text-length {max_text_length} or less (it truncates)."
        )
    return args.max_text_length


def _is_finished(resume_from: str | None, training_args: TrainingArguments) -> bool:
    # transformers' Trainer resumed from a checkpoint at max_steps still takes one more step: skip training instead.
    return resume_from is not None and 0 < training_args.max_steps <= checkpoint_step(resume_from)


def pretrain(argv: Sequence[str]) -> int:

    push_args, argv = split_push_arguments(argv)
    parser = _pretrain_parser()
    args, training_args = parser.parse_args_into_dataclasses(args=argv)
    settle_worker_options(training_args)
    _setup_logging(training_args)
    start_config = None  # --model: the checkpoint's config, which fixes the family and the architecture
    if args.model is not None:
        start_family, start_config = read_model_config(args.model)
        check_model_options(args, given_options(parser, argv), start_family.name)
        args.family = start_family.name
        if getattr(args, "patch_dropout", None) is not None and hasattr(start_config, "vision_config"):
            start_config.vision_config.patch_dropout = args.patch_dropout  # a training-time option, not architecture
    family = FAMILIES[args.family]
    if args.family != "dual" and not any(item.startswith("--ddp-find-unused-parameters") for item in argv):
        # Heads of objectives not trained (the MIM head and mask token without mim, ...) get no gradient, which DDP
        # refuses unless told to look for unused parameters.
        training_args.ddp_find_unused_parameters = True
    check_family_options(args, args.family)
    _check_text_model_options(args)
    preset = args.model or args.preset or family.default_preset
    default_objectives = family.default_objectives
    if family.preset_objectives is not None and not args.objectives:
        default_objectives = family.preset_objectives(start_config or get_preset_config(preset))
    objectives = parse_objective_weights(args.objectives or default_objectives, args.objective_weights)
    _check_decoder_objectives(args.family, objectives)
    objective_args = VLPObjectiveArguments(
        objectives=objectives, **{name: getattr(args, name) for name in OBJECTIVE_OPTIONS}
    )
    set_seed(training_args.seed)
    output_dir = training_args.output_dir
    resume_from = _resume_checkpoint(training_args, args.resume)

    start = "model" if args.model is not None else "preset"
    logger.info("vlp pretrain: family %s, %s %s, output %s", args.family, start, preset, output_dir)
    config = start_config or build_config(args, preset)
    if family.check_objectives is not None:
        family.check_objectives(config, objective_args.objectives)
    image_size = family.image_size(config)
    regions = _uses_regions(config)
    train_dataset, eval_dataset = load_datasets(
        args, image_size, training_args.seed, region_features=config.visual_feat_dim if regions else 0
    )
    streamed = isinstance(train_dataset, ImageTextStream)
    epoch_rows = args.train_num_samples if streamed else len(train_dataset)
    logger.info(
        "Data: %s training and %d evaluation examples.",
        "streamed" + (f", {epoch_rows} per epoch," if epoch_rows else "") if streamed else len(train_dataset),
        len(eval_dataset),
    )
    if not streamed:
        _check_enough_rows(train_dataset, training_args, objective_args.accum_freq)
    if objective_args.momentum_distill and objective_args.distill_warmup_steps is None and epoch_rows:
        # ALBEF ramps the distillation weight over the first epoch: its optimizer steps.
        batches = -(-epoch_rows // (training_args.per_device_train_batch_size * training_args.world_size))
        objective_args.distill_warmup_steps = max(1, batches // training_args.gradient_accumulation_steps)

    def build():
        if args.model is not None:
            return load_model_processor(args.model)
        if args.text_model is not None:
            return build_text_model_processor(args, image_size, args.max_text_length)
        return build_processor(args, train_dataset, image_size, family.max_text_length(config), not regions)

    processor = _prepare_processor(training_args, resume_from, build)
    tokenizer = processor.tokenizer
    config = start_config or build_config(args, preset, tokenizer)
    max_text_length = min(family.max_text_length(config), tokenizer.model_max_length)
    if args.model is not None and args.max_text_length is not None:
        max_text_length = _truncation_length(args, max_text_length)

    finished = _is_finished(resume_from, training_args)
    if finished:
        logger.info("%s already reached --max-steps %d: evaluating it.", resume_from, training_args.max_steps)
        model = family.model_class.from_pretrained(resume_from)
    else:
        torch.manual_seed(training_args.seed)
        if args.model is not None:
            model = load_model_for_pretraining(family, args.model, start_config)
        elif args.text_model is not None or args.vision_model is not None:
            model = build_model_with_towers(config, args)
        else:
            model = family.model_class(config)
        apply_tower_locks(model, args)
    resolve_objectives(model, objective_args)  # fail before training when the family lacks an objective
    logger.info(
        "Model: %s (%s), %.2fM parameters; objectives %s.",
        type(model).__name__, preset, sum(p.numel() for p in model.parameters()) / 1e6, objective_args.objectives,
    )  # fmt: skip
    collator_args = dict(
        sample_captions=args.sample_captions, max_length=max_text_length, seed=training_args.seed,
        random_crop_scale=args.random_crop_scale,
    )  # fmt: skip
    if not family.masked_inputs:  # image-caption pairs; the lm objective makes its labels
        collator = VLPCollator(processor, **collator_args)
    else:
        collator = VLPPretrainingCollator(
            processor,
            mlm_probability=args.mlm_probability if "mlm" in objective_args.objectives else 0.0,
            mim_ratio=args.mim_ratio if "mim" in objective_args.objectives else 0.0,
            patch_size=getattr(config, "patch_size", None),
            visual_input=getattr(config, "visual_input", "patches"),
            **collator_args,
        )

    def family_metrics(model, dataset) -> dict[str, float]:
        # The family's own evaluation at each --eval-strategy evaluation: logged as eval_rsum, eval_cider, ...
        return family.evaluate(model, processor, dataset, training_args.per_device_eval_batch_size)

    evaluating = training_args.eval_strategy != "no"
    trainer = VLPTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset if streamed else materialized_stream(train_dataset, training_args.seed),
        max_bad_fraction=args.max_bad_fraction,
        eval_dataset=eval_dataset if evaluating else None,
        data_collator=collator,
        processing_class=processor,
        objective_args=objective_args,
        compute_model_metrics=family_metrics if evaluating else None,
    )
    if finished:
        trainer.state = TrainerState.load_from_json(os.path.join(resume_from, TRAINER_STATE_NAME))
    else:
        trainer.train(resume_from_checkpoint=resume_from)

    def evaluate() -> dict[str, float]:
        logger.info("Evaluating on %d examples.", len(eval_dataset))
        # Under FSDP the trained model is sharded across the ranks: the main process evaluates the weights just saved.
        evaluated = family.model_class.from_pretrained(output_dir) if trainer.is_fsdp_enabled else model
        return family.evaluate(evaluated, processor, eval_dataset, training_args.per_device_eval_batch_size)

    status = _finish(trainer, model, output_dir, evaluate)
    if status == 0 and push_args is not None and trainer.is_world_process_zero():
        description = SCENES_DESCRIPTION if args.dataset is None else None
        if args.model is not None and not os.path.isdir(args.model):
            push_args.base_model = push_args.base_model or args.model  # a Hub start is the card's base_model
        status = push_run(push_args, output_dir, objective_args.objectives, args.dataset or "scenes", description)
    return status
