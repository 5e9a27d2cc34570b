"""What `vlp pretrain` and `vlp finetune` share: resuming from checkpoints, the datasets and the held-out split, the
processor (a tokenizer trained on the captions, or a pretrained one), the config from a preset and the command
line, a pretrained text tower, pushing a finished run and logging."""

import json
import logging
import os
from collections.abc import Sequence

from transformers import AutoConfig, AutoTokenizer, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..data.local import (
    load_image_text_dataset,
    load_region_text_dataset,
    pick_eval_split,
)
from ..data.scenes import make_scenes_dataset
from ..families import FAMILIES
from ..hub.card import model_card_for_run
from ..hub.push import (
    HubPushError,
    add_push_arguments,
    push_folder,
    push_kwargs_from_args,
)
from ..modeling_dual_encoder import VLPDualEncoderModel, VLPTextModel, _load_tower
from ..presets import get_preset_config
from ..processors.image_processing_vlp import VLPImageProcessor
from ..processors.processing_vlp import VLPProcessor
from ..processors.tokenization_vlp import VLPTokenizer
from .arguments import PretrainArguments

logger = logging.getLogger("modeling_vlp.cli")

TRAINER_STATE_NAME = "trainer_state.json"
EVAL_RESULTS_NAME = "eval_results.json"


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


def load_datasets(args: PretrainArguments, image_size: int, seed: int, region_features: int = 0):
    """(train split, eval split) of the embedded scenes dataset (with `region_features`-dimensional synthetic region
    features when > 0) or of `--dataset`."""

    if args.dataset is None:
        splits = make_scenes_dataset(
            args.num_train, args.num_validation, image_size=image_size, seed=seed, region_features=region_features
        )
    elif region_features:
        splits = load_region_text_dataset(args.dataset, text_column=args.text_column)
    else:
        splits = load_image_text_dataset(args.dataset, image_column=args.image_column, text_column=args.text_column)
    return held_out_split(splits, args.num_validation, seed)


def _train_captions(train_dataset) -> list[str]:
    columns = [name for name in ("captions", "caption", "question") if name in train_dataset.column_names][:1]
    texts = []
    for row in train_dataset.select_columns(columns):
        value = row[columns[0]]
        texts.extend(value if isinstance(value, list) else [value])
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
    return get_preset_config(preset, **overrides)


def _check_text_model_options(args: PretrainArguments) -> None:
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
    tokenizer_args = PretrainArguments(tokenizer=args.tokenizer or args.text_model)
    processor = build_processor(tokenizer_args, None, image_size, max_text_length or 0)
    if max_text_length is not None:
        processor.tokenizer.model_max_length = min(max_text_length, processor.tokenizer.model_max_length)
    return processor


def build_model_with_text_model(config, text_model_path: str):
    """A dual encoder whose text tower is loaded from `text_model_path` (weights kept; the image tower, the
    projections and the temperature freshly initialised), as `VLPDualEncoderModel.from_vision_text_pretrained`."""

    text_model = _load_tower(text_model_path, VLPTextModel)
    config.text_config = text_model.config
    # The tower's own attention implementation: a config left at None makes BERT ignore its padding mask.
    config.text_config._attn_implementation = text_model.config._attn_implementation
    return VLPDualEncoderModel(config, text_model=text_model)


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


def split_push_arguments(argv: Sequence[str]):
    """(push options, the rest of argv): `--push-to-hub REPO_ID` and its companions (see `vlp push --help`) are ours,
    not TrainingArguments' (whose boolean --push-to-hub would push from `save_model`, before the evaluation exists,
    and whose --hub-token would be pickled into every checkpoint's training_args.bin)."""
    import argparse


    parser = add_push_arguments(argparse.ArgumentParser(add_help=False, allow_abbrev=False))
    push_args, rest = parser.parse_known_args(list(argv))
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




