"""What `vlp pretrain` and `vlp finetune` share: resuming from checkpoints, the datasets and the held-out split, the
processor (a tokenizer trained on the captions, or a pretrained one), the config from a preset and the command
line, a pretrained text tower, pushing a finished run and logging."""

import json
import logging
import os
import pickle
from collections.abc import Sequence

import torch
from safetensors import SafetensorError, safe_open
from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, PreTrainedConfig, TrainingArguments
from transformers.models.auto.modeling_auto import MODEL_MAPPING
from transformers.trainer_pt_utils import safe_globals
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..data.local import (
    load_image_text_dataset,
    load_region_text_dataset,
    pick_eval_split,
)
from ..data.rows import NOT_TEXT, usable_rows
from ..data.scenes import make_scenes_dataset
from ..data.sources import load_training_data
from ..data.streaming import ImageTextStream, stream_captions
from ..families import FAMILIES, FAMILIES_BY_MODEL_TYPE, family_of
from ..hub.card import model_card_for_run
from ..hub.push import (
    HubPushError,
    add_push_arguments,
    push_folder,
    push_kwargs_from_args,
)
from ..modeling_dual_encoder import VLPDualEncoderModel, VLPTextModel, VLPVisionModel, _load_tower
from ..presets import get_preset_config
from ..processors.image_processing_vlp import VLPImageProcessor
from ..processors.processing_vlp import VLPProcessor
from ..processors.tokenization_vlp import VLPTokenizer
from .arguments import PretrainArguments

logger = logging.getLogger("modeling_vlp.cli")

TRAINER_STATE_NAME = "trainer_state.json"
EVAL_RESULTS_NAME = "eval_results.json"


def find_resume_checkpoint(output_dir: str) -> str | None:
    """The newest complete `checkpoint-N` in `output_dir` that `checkpoint_problem` finds whole. The Trainer writes
    `trainer_state.json` last, so a checkpoint without it was interrupted while saving; one whose files cannot be read
    (truncated, empty) is skipped too, each with one log line, and the previous one is used."""
    if not os.path.isdir(output_dir):
        return None
    steps = []
    for name in os.listdir(output_dir):
        prefix, _, step = name.partition("-")
        if prefix == PREFIX_CHECKPOINT_DIR and step.isdigit() and os.path.isdir(os.path.join(output_dir, name)):
            steps.append(int(step))
    for step in sorted(steps, reverse=True):
        path = os.path.join(output_dir, f"{PREFIX_CHECKPOINT_DIR}-{step}")
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        logger.warning("Skipping %s: %s.", path, problem)
    return None


# What reading a damaged file raises: json (ValueError), safetensors, torch.load (RuntimeError, pickle, EOF), the OS.
UNREADABLE = (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError, SafetensorError)


def checkpoint_problem(path: str) -> str | None:
    """Why the Trainer could not resume from the checkpoint folder `path`, or None: it needs `trainer_state.json`,
    and every file it would read must be whole: each JSON file parses, each safetensors file is as long as its header
    says, each torch file (optimizer, scheduler, scaler, RNG, data states) loads with `weights_only=True`."""
    if not os.path.isfile(os.path.join(path, TRAINER_STATE_NAME)):
        return f"it has no {TRAINER_STATE_NAME} (interrupted while saving)"
    for name in sorted(os.listdir(path)):
        file = os.path.join(path, name)
        try:
            if name.endswith(".json"):
                with open(file, encoding="utf-8") as handle:
                    json.load(handle)
            elif name.endswith(".safetensors"):
                with safe_open(file, "pt"):
                    pass
            elif name.endswith((".pt", ".pth")):
                with safe_globals():
                    torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except UNREADABLE as error:
            reason = " ".join(str(error).split()).split(". ")[0][:160] or type(error).__name__
            return f"{name} cannot be read ({os.path.getsize(file)} bytes: {reason})"
    return None


def checkpoint_step(checkpoint: str) -> int:
    """The global step a Trainer checkpoint was saved at."""
    with open(os.path.join(checkpoint, TRAINER_STATE_NAME)) as handle:
        return int(json.load(handle)["global_step"])


def load_datasets(args: PretrainArguments, image_size: int, seed: int, region_features: int = 0):
    """(train split, eval split) of the embedded scenes dataset (with `region_features`-dimensional synthetic region
    features when > 0) or of `--dataset`. The train split is an `ImageTextStream` when `--dataset` streams (webdataset
    shards and URL patterns, `--streaming`), else a `datasets.Dataset`; the eval split is always materialized, without
    its unusable rows."""

    if args.dataset is not None and not region_features:
        try:
            return load_training_data(
                args.dataset, args.num_validation, seed, streaming=args.streaming, resampled=args.dataset_resampled,
                samples_per_epoch=args.train_num_samples, weights=args.dataset_weights,
                shuffle_buffer=args.shuffle_buffer, image_column=args.image_column, text_column=args.text_column,
            )  # fmt: skip
        except LookupError:  # a materialized corpus
            pass
    if args.dataset is None:
        splits = make_scenes_dataset(
            args.num_train, args.num_validation, image_size=image_size, seed=seed, region_features=region_features
        )
    elif region_features:
        splits = load_region_text_dataset(args.dataset, text_column=args.text_column)
    else:
        splits = load_image_text_dataset(args.dataset, image_column=args.image_column, text_column=args.text_column)
    train, evaluation = held_out_split(splits, args.num_validation, seed)
    if args.dataset is not None and not region_features:
        evaluation, _ = usable_rows(evaluation, "evaluation split")
    return train, evaluation


def _train_captions(train_dataset) -> list[str]:
    if isinstance(train_dataset, ImageTextStream):
        return stream_captions(train_dataset)
    columns = [name for name in ("captions", "caption", "question") if name in train_dataset.column_names][:1]
    texts = []
    for row in train_dataset.select_columns(columns):
        value = row[columns[0]]
        # Captions the training stream will skip (null, blank, not text) do not shape the vocabulary either.
        texts.extend(text for text in (value if isinstance(value, list) else [value])
                     if isinstance(text, str) and text.strip() and text != NOT_TEXT)  # fmt: skip
    return texts


def build_processor(
    args: PretrainArguments, train_dataset, image_size: int, max_text_length: int, with_images: bool = True
):
    """A processor for the run: a tokenizer trained on the training captions (or `--tokenizer`) and, unless the
    model reads precomputed region features (`with_images=False`), an image processor to `image_size` squares."""

    if args.tokenizer is not None:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.sep_token
    else:
        tokenizer = VLPTokenizer.train_from_iterator(
            _train_captions(train_dataset), vocab_size=args.vocab_size, model_type=args.tokenizer_model_type,
            model_max_length=max_text_length,
        )  # fmt: skip
    if not with_images:
        return VLPProcessor(None, tokenizer)
    image_processor = VLPImageProcessor(
        size={"height": image_size, "width": image_size}, do_center_crop=False,
        crop_size={"height": image_size, "width": image_size},
        **{"resize_backend": "torchvision", **vision_model_processing(getattr(args, "vision_model", None))},
    )  # fmt: skip
    return VLPProcessor(image_processor, tokenizer)






def check_family_options(args: PretrainArguments, family_name: str) -> None:
    """Options given on the command line that the family has no use for are errors, not silently ignored."""
    given = [name for name in FAMILIES[family_name].unused_options if getattr(args, name) not in (None, False)]
    defaults = PretrainArguments()
    given = [name for name in given if getattr(args, name) != getattr(defaults, name)]
    if given:
        options = ", ".join("--" + name.replace("_", "-") for name in given)
        raise ValueError(f"{options} do not apply to the {family_name!r} family.")


def build_config(args: PretrainArguments, preset: str, tokenizer=None, family: str | None = None):
    """The preset's config with the command line's overrides and, given a tokenizer, its vocabulary and ids. With
    `--text-model` the text tower is that model's config instead of the preset's."""
    base = get_preset_config(preset)
    family = family or args.family
    overrides = FAMILIES[family].config_overrides(args, base, tokenizer)
    if args.text_model is not None:
        overrides["text_config"] = AutoConfig.from_pretrained(args.text_model)
    if args.vision_model is not None:
        overrides["vision_config"] = _vision_model_config(args.vision_model, args.image_size)
    return get_preset_config(preset, **overrides)


TOWER_OPTIONS = {"vision_model": ("vision", "pixel_values"), "text_model": ("text", "input_ids")}


def _tower_config(path: str, option: str):
    """The config of `--vision-model` / `--text-model` (the matching tower of a two-tower checkpoint), or a one-line
    error when the model reads the other modality."""
    kind, expected = TOWER_OPTIONS[option]
    config = AutoConfig.from_pretrained(path)
    if hasattr(config, "vision_config") and hasattr(config, "text_config"):
        return getattr(config, f"{kind}_config")
    model_class = MODEL_MAPPING[type(config)] if type(config) in MODEL_MAPPING else None
    reads = getattr(model_class, "main_input_name", None)
    if reads != expected:
        flag = "--" + option.replace("_", "-")
        raise ValueError(
            f"{flag} {path!r} is a {config.model_type!r} model reading `{reads}`; {flag} takes a {kind} model "
            f"reading `{expected}` (" + ("ViT, CLIP / SigLIP, ours, a timm folder" if kind == "vision"
                                         else "BERT, MiniLM, ours, or a CLIP / SigLIP checkpoint") + ")."
        )  # fmt: skip
    return config


def _vision_model_config(path: str, image_size: int | None):
    """`--vision-model`'s config, with the input side the run renders images at as its `image_size` when it has
    none (a timm tower: `--image-size`, else its pretrained_cfg's input size)."""
    config = _tower_config(path, "vision_model")
    if isinstance(getattr(config, "model_args", None), dict):
        config.model_args.pop("num_classes", None)  # transformers passes num_classes=0 to timm itself
    if getattr(config, "image_size", None) is None:
        input_size = (getattr(config, "pretrained_cfg", None) or {}).get("input_size") or (3, 224, 224)
        config.image_size = image_size or int(input_size[-1])
    return config


def vision_model_processing(path: str | None) -> dict:
    """The image mean, std and interpolation of a pretrained vision tower's own preprocessing (timm's
    `pretrained_cfg`, else the image processor saved with it), as `VLPImageProcessor` arguments; {} without one."""
    if path is None:
        return {}
    timm_cfg = getattr(AutoConfig.from_pretrained(path), "pretrained_cfg", None)
    if timm_cfg:
        return {"image_mean": timm_cfg["mean"], "image_std": timm_cfg["std"],
                "resample": timm_cfg.get("interpolation", "bicubic")}  # fmt: skip
    try:
        processor = AutoImageProcessor.from_pretrained(path)
    except (OSError, ValueError, KeyError):
        logger.warning("--vision-model %s has no image processor: images are normalised as CLIP's.", path)
        return {}
    fields = {"image_mean": "image_mean", "image_std": "image_std", "resample": "resample"}
    return {ours: getattr(processor, theirs) for ours, theirs in fields.items()
            if getattr(processor, theirs, None) is not None}  # fmt: skip


def check_tower_options(args: PretrainArguments) -> None:
    """One-line errors for the pretrained-tower, locking and patch-dropout options."""
    if args.patch_dropout is not None and not 0.0 <= args.patch_dropout < 1.0:
        raise ValueError(
            "--patch-dropout must be in [0, 1) (the share of image patches dropped in training), got "
            f"{args.patch_dropout}."
        )
    for lock, option in (("lock_image", "lock_image_unlocked_groups"), ("lock_text", "lock_text_unlocked_layers")):
        flag, value = "--" + option.replace("_", "-"), getattr(args, option)
        if value < 0:
            raise ValueError(f"{flag} must be 0 or more (the last groups left trainable), got {value}.")
        if value and not getattr(args, lock):
            raise ValueError(f"{flag} {value} needs --{lock.replace('_', '-')} (it says what a lock leaves trainable).")
    if args.text_model is not None:
        _tower_config(args.text_model, "text_model")
    if args.vision_model is None:
        return
    architecture = ("patch_size", "vision_layers", "vision_width", "vision_heads")
    given = [name for name in architecture if getattr(args, name) is not None]
    if given:
        options = ", ".join("--" + name.replace("_", "-") for name in given)
        raise ValueError(f"{options} cannot change the pretrained image tower of --vision-model {args.vision_model!r}.")
    config = _tower_config(args.vision_model, "vision_model")
    fixed = getattr(config, "image_size", None)
    if args.image_size is not None and fixed is not None and args.image_size != fixed:
        raise ValueError(
            f"--image-size {args.image_size} differs from the {fixed} pixels --vision-model {args.vision_model!r} "
            f"reads (its config's image_size); give --image-size {fixed} or leave it out."
        )
    if args.patch_dropout and config.model_type != VLPVisionModel.config_class.model_type:
        raise ValueError(
            f"--patch-dropout {args.patch_dropout} needs our ViT image tower (model_type 'vlp_vision'); "
            f"--vision-model {args.vision_model!r} is a {config.model_type!r} model."
        )


def build_model_with_towers(config, args: PretrainArguments):
    """A dual encoder whose towers come from `--vision-model` / `--text-model` (weights kept; the other tower from
    the preset, the projections and the temperature freshly initialised)."""
    towers = {}
    for option, own_class, key in (
        ("vision_model", VLPVisionModel, "vision_config"), ("text_model", VLPTextModel, "text_config")
    ):
        if getattr(args, option) is None:
            continue
        tower = towers[option] = _load_tower(getattr(args, option), own_class)
        if option == "vision_model":
            tower.config.image_size = config.vision_config.image_size  # what the run renders (a timm tower has none)
            if args.patch_dropout:
                tower.config.patch_dropout = tower.patch_dropout.prob = args.patch_dropout
        setattr(config, key, tower.config)
        # The tower's own attention implementation: a config left at None makes BERT ignore its padding mask.
        getattr(config, key)._attn_implementation = tower.config._attn_implementation
    return VLPDualEncoderModel(config, **towers)


def apply_tower_locks(model, args: PretrainArguments) -> None:
    """`--lock-image` / `--lock-text` on a built model; too many unlocked groups is a one-line error."""
    for lock, method, option, norm_option in (
        ("lock_image", "lock_image_tower", "lock_image_unlocked_groups", "lock_image_freeze_bn_stats"),
        ("lock_text", "lock_text_tower", "lock_text_unlocked_layers", "lock_text_freeze_layer_norm"),
    ):
        if not getattr(args, lock):
            continue
        try:
            getattr(model, method)(getattr(args, option), getattr(args, norm_option))
        except ValueError as error:
            raise ValueError(f"--{option.replace('_', '-')} {getattr(args, option)}: {error}") from None
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        logger.info("--%s: %.2fM of %.2fM parameters train.", lock.replace("_", "-"), trainable / 1e6,
                    sum(p.numel() for p in model.parameters()) / 1e6)  # fmt: skip


def _check_text_model_options(args: PretrainArguments) -> None:
    check_tower_options(args)
    if args.text_model is None:
        return
    if args.family != "dual":
        raise ValueError(f"--text-model applies to the 'dual' family only, got --family {args.family!r}.")
    given = [name for name in ("text_layers", "text_width", "text_heads") if getattr(args, name) is not None]
    if given:
        options = ", ".join("--" + name.replace("_", "-") for name in given)
        raise ValueError(f"{options} cannot change the pretrained text tower of --text-model {args.text_model!r}.")


def build_text_model_processor(args: PretrainArguments, image_size: int, max_text_length: int | None):
    """The processor of a run with `--text-model`: the pretrained tower's own tokenizer (or `--tokenizer`),
    truncating at `max_text_length` (saved as its `model_max_length`, so evaluation and reloads truncate alike)."""
    tokenizer_args = PretrainArguments(tokenizer=args.tokenizer or args.text_model, vision_model=args.vision_model)
    processor = build_processor(tokenizer_args, None, image_size, max_text_length or 0)
    if max_text_length is not None:
        processor.tokenizer.model_max_length = min(max_text_length, processor.tokenizer.model_max_length)
    return processor


def build_model_with_text_model(config, text_model_path: str):
    """A dual encoder whose text tower is loaded from `text_model_path` (weights kept; the image tower, the
    projections and the temperature freshly initialised), as `VLPDualEncoderModel.from_vision_text_pretrained`."""
    return build_model_with_towers(config, PretrainArguments(text_model=text_model_path))


def held_out_split(splits, num_validation: int, seed: int):
    """(train, eval) splits: the dataset's validation/test split, or `num_validation` rows held out of train."""

    if "train" not in splits:
        raise ValueError(f"The dataset needs a 'train' split; found {list(splits)}.")
    try:
        eval_split = pick_eval_split(splits)
    except ValueError:
        if len(splits["train"]) < 2:
            raise ValueError("The dataset has no validation/test split and too few training rows to hold some out.")
        held_out = min(num_validation, len(splits["train"]) // 5) or 1
        logger.warning("No validation or test split: holding out %d training rows for evaluation.", held_out)
        parts = splits["train"].train_test_split(test_size=held_out, seed=seed)
        return parts["train"], parts["test"]
    return splits["train"], splits[eval_split]


def load_saved_processor(path: str):

    try:
        return VLPProcessor.from_pretrained(path)
    except (OSError, ValueError) as error:
        logger.warning("Could not reload the processor saved in %s (%s); building a new one.", path, error)
        return None


# What `--model` fixes: options that would contradict the checkpoint's architecture or its tokenizer. The tower
# options of a run built from parts (`vision_model`, ...) are named when this version of PretrainArguments has them.
MODEL_FIXED_OPTIONS = (
    "preset", "image_size", "patch_size", "vision_layers", "vision_width", "vision_heads", "text_layers",
    "text_width", "text_heads", "layers", "width", "heads", "fusion_layers", "projection_dim", "loss_type",
    "tokenizer", "vocab_size", "tokenizer_model_type", "text_model", "vision_model",
)  # fmt: skip


def given_options(parser, argv: Sequence[str]) -> set[str]:
    """The `dest` of every option `argv` spells out (`--vision-layers 2`, `--vision_layers=2`)."""
    spelled = {item.split("=", 1)[0] for item in argv if item.startswith("--")}
    return {action.dest for action in parser._actions if spelled.intersection(action.option_strings)}


def read_model_config(model: str):
    """(family, config) of `vlp pretrain --model PATH_OR_REPO_ID`, or a one-line `ValueError` naming the option, what
    it got and what it accepts."""
    accepts = "a folder saved by vlp pretrain, vlp convert or save_pretrained, or a Hub repo id of one"
    if os.path.isdir(model) and not os.path.isfile(os.path.join(model, "config.json")):
        raise ValueError(f"--model {model!r}: the folder has no config.json; --model takes {accepts}.")
    try:
        config_dict, _ = PreTrainedConfig.get_config_dict(model)
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        message = f"--model {model!r}: no config.json could be read ({reason}); --model takes {accepts}."
        raise ValueError(message) from None
    family = family_of(config_dict)
    if family is None:
        known = ", ".join(f"{model_type} ({found.name})" for model_type, found in FAMILIES_BY_MODEL_TYPE.items())
        raise ValueError(
            f"--model {model!r} has model_type {config_dict.get('model_type')!r}, which no family trains; --model "
            f"accepts the model types {known} (convert a published checkpoint first: vlp convert KIND)."
        )
    return family, family.model_class.config_class.from_pretrained(model)


def check_model_options(args: PretrainArguments, given: set[str], family_name: str) -> None:
    """With `--model`, the options that would change the checkpoint's architecture (or family) are errors."""
    if "family" in given and args.family != family_name:
        raise ValueError(
            f"--family {args.family!r} contradicts --model {args.model!r}, a {family_name!r} checkpoint: --model fixes "
            f"the family (drop --family, or give --family {family_name})."
        )
    fixed = [name for name in MODEL_FIXED_OPTIONS if hasattr(args, name)]
    defaults = PretrainArguments()
    named = [name for name in fixed if name in given or getattr(args, name) != getattr(defaults, name)]
    if named:
        options = ", ".join("--" + name.replace("_", "-") for name in named)
        raise ValueError(
            f"{options} cannot be combined with --model {args.model!r}: --model fixes the architecture (its "
            "config.json) and the tokenizer (its processor); drop the option, or start from --preset without --model."
        )


def load_model_processor(model: str):
    """The processor saved with `--model`, or a one-line error."""
    processor = load_saved_processor(model)
    if processor is None:
        raise ValueError(
            f"--model {model!r} has no processor saved with it (processor_config.json, tokenizer files); save one "
            "beside the model (processor.save_pretrained) or convert the checkpoint with vlp convert, which does."
        )
    return processor


def load_model_for_pretraining(family, model: str, config=None):
    """`family.model_class` from `--model` (with `config`, its config.json with training-time changes, when given),
    even when the checkpoint was saved by another class of the family (a base model: the heads it lacks start freshly
    initialised, and the log says which)."""
    loaded, info = family.model_class.from_pretrained(model, config=config, output_loading_info=True)
    saved = list(getattr(loaded.config, "architectures", None) or [])

    def modules(keys) -> str:
        names = sorted({key.split(".")[0] for key in keys})
        return ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")

    missing, unexpected = sorted(info.get("missing_keys") or []), sorted(info.get("unexpected_keys") or [])
    if missing:
        logger.warning(
            "--model %s was saved as %s: the %d weights of %s it lacks are freshly initialised (%s).",
            model, ", ".join(saved) or "another class", len(missing), family.model_class.__name__, modules(missing),
        )  # fmt: skip
    if unexpected:
        logger.warning(
            "--model %s: %d weights of its %s have no place in %s and are left out (%s).",
            model, len(unexpected), ", ".join(saved) or "class", family.model_class.__name__, modules(unexpected),
        )  # fmt: skip
    if not missing and not unexpected:
        saved_as = f" (saved as {', '.join(saved)})" if saved and saved != [family.model_class.__name__] else ""
        logger.info("Loaded every weight of %s from --model %s%s.", family.model_class.__name__, model, saved_as)
    loaded.config.architectures = [family.model_class.__name__]
    return loaded


def split_push_arguments(argv: Sequence[str]):
    """(push options, the rest of argv): `--push-to-hub REPO_ID` and its companions (see `vlp push --help`) are ours,
    not TrainingArguments' (whose boolean --push-to-hub would push from `save_model`, before the evaluation exists,
    and whose --hub-token would be pickled into every checkpoint's training_args.bin). Every spelling of the token
    option is ours: --hub-token, --hub_token, and abbreviations that TrainingArguments' parser would accept."""
    import argparse


    parser = add_push_arguments(argparse.ArgumentParser(add_help=False, allow_abbrev=False))
    argv = ["--hub-token" + item[len(name):] if len(name) > len("--hub_") and "--hub_token".startswith(name) else item
            for item in argv for name in [item.split("=", 1)[0].replace("-", "_").replace("__", "--", 1)]]  # fmt: skip
    push_args, rest = parser.parse_known_args(argv)
    return (push_args if push_args.push_to_hub else None), rest


def push_run(push_args, output_dir: str, objectives: Sequence[str] | None, dataset: str | None,
             dataset_description: str | None) -> int:  # fmt: skip
    """Push a finished run with a model card of what it measured; 0 when pushed, 1 when not (the folder stays)."""

    card = model_card_for_run(
        output_dir, repo_id=push_args.push_to_hub, objectives=list(objectives or []) or None, dataset=dataset,
        dataset_description=dataset_description, base_model=push_args.base_model, license=push_args.license,
    )  # fmt: skip
    try:
        info = push_folder(output_dir, push_args.push_to_hub, model_card=card, **push_kwargs_from_args(push_args))
    except HubPushError as error:
        logger.error("Push to %s failed: %s (the run is saved in %s; `vlp push %s %s` retries).",
                     push_args.push_to_hub, error, output_dir, output_dir, push_args.push_to_hub)  # fmt: skip
        return 1
    logger.info("Pushed %s to %s", output_dir, getattr(info, "commit_url", push_args.push_to_hub))
    return 0


SCENES_DESCRIPTION = (
    "the embedded generated scenes (coloured shapes with several captions per image, made by "
    "`modeling_vlp.data.make_scenes_dataset`; no download)"
)


def _setup_logging(training_args: TrainingArguments) -> None:
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if training_args.should_log else logging.WARNING,
    )




