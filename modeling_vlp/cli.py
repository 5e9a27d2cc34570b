"""The `vlp` command.

    vlp pretrain --family dual --output-dir runs/x [options]   pretrain a model, evaluate it, save it
    vlp finetune --task vqa --model runs/x --output-dir runs/y  fine-tune a pretrained model for VQA
    vlp evaluate --model runs/x --task retrieval                evaluate a saved model, print JSON, write a PNG
    vlp push runs/x namespace/name                              push a saved folder to the Hub with a model card
    vlp <command> --help                                        the options of one command

Each command is a function `argv -> exit status` in `COMMANDS`; a `convert` command would go next to
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
from transformers import AutoConfig, AutoTokenizer, HfArgumentParser, TrainerState, TrainingArguments, set_seed
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


def _evaluate_matching(model, processor, eval_dataset, batch_size: int) -> dict[str, float]:
    from .evaluation import evaluate_image_text_matching

    return evaluate_image_text_matching(model, processor, eval_dataset, batch_size=batch_size, show_progress=False)


def _evaluate_fusion(model, processor, eval_dataset, batch_size: int) -> dict[str, float]:
    from .evaluation import evaluate_fusion_retrieval

    return evaluate_fusion_retrieval(model, processor, eval_dataset, batch_size=batch_size, show_progress=False)


def _evaluate_captioning(model, processor, eval_dataset, batch_size: int) -> dict[str, float]:
    """Greedy captions of the held-out images scored against their reference captions (BLEU, CIDEr), with a few
    examples in the log."""
    from .evaluation import evaluate_captioning

    metrics, predictions, references = evaluate_captioning(
        model, processor, eval_dataset, batch_size, show_progress=False, return_predictions=True
    )
    for prediction, refs in list(zip(predictions, references))[:CAPTION_EXAMPLES]:
        logger.info("Caption: %r; references: %s", prediction, refs)
    return metrics


def _tower_overrides(args: "PretrainArguments", base) -> dict:
    """Overrides of the image and text towers (dual and fusion families)."""
    vision = {"image_size": args.image_size, "patch_size": args.patch_size, "num_hidden_layers": args.vision_layers}
    vision.update(_width_overrides(args.vision_width, args.vision_heads, base.vision_config.num_attention_heads))
    text = {"num_hidden_layers": args.text_layers, "max_position_embeddings": args.max_text_length}
    text.update(_width_overrides(args.text_width, args.text_heads, base.text_config.num_attention_heads))
    return {"vision_config": vision, "text_config": text}


def _fusion_overrides(args: "PretrainArguments", base, tokenizer) -> dict:
    towers = _tower_overrides(args, base)
    if tokenizer is not None:
        towers["text_config"].update(_tokenizer_fields(tokenizer))
    overrides = {name: {k: v for k, v in tower.items() if v is not None} for name, tower in towers.items()}
    if args.fusion_layers is not None:
        overrides["num_fusion_layers"] = args.fusion_layers
    if args.projection_dim is not None:
        overrides["projection_dim"] = args.projection_dim
    return overrides


def _dual_overrides(args: "PretrainArguments", base, tokenizer) -> dict:
    towers = _tower_overrides(args, base)
    vision, text = towers["vision_config"], towers["text_config"]
    if tokenizer is not None:
        text.update(_tokenizer_fields(tokenizer))
        if text["eos_token_id"] is None and base.text_config.pooling == "eos":
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
    return overrides


def _captioning_overrides(args: "PretrainArguments", base, tokenizer) -> dict:
    """The dual family's tower overrides, the text tower being the decoder; its start, end and padding tokens come
    from the tokenizer (a caption is bos, words, eos)."""
    towers = _tower_overrides(args, base)
    if tokenizer is not None:
        towers["text_config"].update(_tokenizer_fields(tokenizer))
    overrides = {name: {k: v for k, v in tower.items() if v is not None} for name, tower in towers.items()}
    if args.projection_dim is not None:
        overrides["projection_dim"] = args.projection_dim
    return overrides


def _check_captioning_objectives(config, objectives) -> None:
    if "itc" in objectives and config.projection_dim is None:
        raise ValueError(
            "--objectives itc needs a contrastive head, but this captioning config has projection_dim=None: train "
            "with --objectives lm, or use --preset coca-small (or set --projection-dim with a preset that has "
            "unimodal text layers)."
        )


def _unified_overrides(args: "PretrainArguments", base, tokenizer) -> dict:
    overrides = {
        "image_size": args.image_size, "patch_size": args.patch_size, "num_hidden_layers": args.layers,
        "max_position_embeddings": args.max_text_length,
    }  # fmt: skip
    overrides.update(_width_overrides(args.width, args.heads, base.num_attention_heads))
    if tokenizer is not None:
        fields = _tokenizer_fields(tokenizer)
        overrides.update(vocab_size=fields["vocab_size"], pad_token_id=fields["pad_token_id"])
    return {key: value for key, value in overrides.items() if value is not None}


@dataclass(frozen=True)
class Family:
    """What `vlp pretrain` / `vlp finetune` need to know about a model family."""

    model_type: str  # `config.model_type` of the family's checkpoints
    default_preset: str
    default_objectives: tuple[str, ...]
    model_class: Callable[[], type]  # the pretraining class (imported on use)
    question_answering_class: Callable[[], type] | None
    config_overrides: Callable  # (args, preset config, tokenizer or None) -> get_preset_config overrides
    image_size: Callable  # config -> input image side
    max_text_length: Callable  # config -> text positions
    evaluate: Callable  # (model, processor, eval_dataset, batch_size) -> flat dict of floats
    # Command-line options that have no meaning for the family (named in the error when given).
    unused_options: tuple[str, ...] = ()
    # Preset config -> default objectives, when they depend on the preset (CoCa presets add itc to lm).
    preset_objectives: Callable | None = None
    # (config, objectives) -> None; raises before training for objectives the config cannot train.
    check_objectives: Callable | None = None


def _lazy_class(module: str, name: str) -> Callable[[], type]:
    def load() -> type:
        import importlib

        return getattr(importlib.import_module(f"modeling_vlp.{module}"), name)

    return load


FAMILIES: dict[str, Family] = {
    "dual": Family(
        model_type="vlp_dual_encoder",
        default_preset="dual-small",
        default_objectives=("itc",),
        model_class=lambda: VLPDualEncoderModel,
        question_answering_class=None,
        config_overrides=_dual_overrides,
        image_size=lambda config: config.vision_config.image_size,
        max_text_length=lambda config: config.text_config.max_position_embeddings,
        evaluate=_evaluate_dual,
        unused_options=(
            "layers", "width", "heads", "fusion_layers", "mlm_probability", "mim_ratio", "momentum_distill",
        ),
    ),  # fmt: skip
    "unified": Family(
        model_type="vlp_unified",
        default_preset="unified-small",
        default_objectives=("itm", "mlm"),
        model_class=_lazy_class("modeling_unified", "VLPUnifiedForPreTraining"),
        question_answering_class=_lazy_class("modeling_unified", "VLPUnifiedForQuestionAnswering"),
        config_overrides=_unified_overrides,
        image_size=lambda config: config.image_size,
        max_text_length=lambda config: config.max_position_embeddings,
        evaluate=_evaluate_matching,
        unused_options=(
            "vision_layers", "vision_width", "vision_heads", "text_layers", "text_width", "text_heads",
            "projection_dim", "loss_type", "local_loss", "fusion_layers", "momentum_distill",
        ),
    ),  # fmt: skip
    "fusion": Family(
        model_type="vlp_fusion",
        default_preset="fusion-small",
        default_objectives=("itc", "itm", "mlm"),
        model_class=_lazy_class("modeling_fusion", "VLPFusionForPreTraining"),
        question_answering_class=_lazy_class("modeling_fusion", "VLPFusionForQuestionAnswering"),
        config_overrides=_fusion_overrides,
        image_size=lambda config: config.vision_config.image_size,
        max_text_length=lambda config: config.text_config.max_position_embeddings,
        evaluate=_evaluate_fusion,
        unused_options=("layers", "width", "heads", "loss_type"),
    ),
    "captioning": Family(
        model_type="vlp_captioning",
        default_preset="captioning-small",
        default_objectives=("lm",),
        model_class=_lazy_class("modeling_captioning", "VLPForConditionalGeneration"),
        question_answering_class=None,
        config_overrides=_captioning_overrides,
        image_size=lambda config: config.vision_config.image_size,
        max_text_length=lambda config: config.text_config.max_position_embeddings,
        evaluate=_evaluate_captioning,
        unused_options=(
            "layers", "width", "heads", "fusion_layers", "loss_type", "mlm_probability", "mim_ratio",
            "momentum_distill",
        ),
        preset_objectives=lambda config: ("itc", "lm") if config.projection_dim is not None else ("lm",),
        check_objectives=_check_captioning_objectives,
    ),  # fmt: skip
}

# Generated captions shown in the log after a captioning run.
CAPTION_EXAMPLES = 3


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
    layers: int | None = field(default=None, metadata={"help": "Transformer layers of a single-stream (unified) model."})
    width: int | None = field(default=None, metadata={"help": "Hidden size of a single-stream model (MLP: 4x)."})
    heads: int | None = field(default=None, metadata={"help": "Attention heads of a single-stream model."})
    fusion_layers: int | None = field(default=None, metadata={"help": "Fusion layers of a fusion-encoder model."})
    projection_dim: int | None = field(default=None, metadata={"help": "Dimension of the shared embedding space."})
    loss_type: str | None = field(
        default=None,
        metadata={
            "help": "Contrastive loss: softmax (CLIP) or sigmoid (SigLIP). Default: the preset's.",
            "choices": ["softmax", "sigmoid"],
        },
    )
    # Objectives.
    objectives: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Objectives to train, space- or comma-separated (itc; itm, mlm, mim; lm). Default: the family's "
            "(dual: itc; unified: itm mlm; captioning: lm, with a CoCa preset such as coca-small: itc lm)."
        },
    )
    objective_weights: list[str] = field(
        default_factory=list,
        metadata={"help": "Weights as NAME=WEIGHT (e.g. itm=1.0,mlm=0.5); unlisted objectives weigh 1."},
    )
    itm_negative_ratio: float = field(
        default=0.5, metadata={"help": "Share of rows paired with another image's caption for ITM (unified)."}
    )
    mlm_probability: float = field(default=0.15, metadata={"help": "Share of caption tokens masked for MLM."})
    mim_ratio: float = field(default=0.4, metadata={"help": "Share of patches or regions masked for MIM."})
    momentum_distill: bool = field(
        default=False,
        metadata={"help": "Fusion family: ALBEF's momentum distillation (EMA teacher, soft ITC/MLM targets, queue)."},
    )
    momentum: float = field(default=0.995, metadata={"help": "EMA decay of the momentum teacher per step."})
    distill_alpha: float = field(default=0.4, metadata={"help": "Weight of the teacher's soft targets."})
    queue_size: int = field(default=4096, metadata={"help": "Teacher features kept as extra ITC negatives."})
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
    random_crop_scale: float | None = field(
        default=None,
        metadata={
            "help": "Train-time augmentation: each training image becomes a random crop covering at least this share "
            "of its area (aspect 3/4 to 4/3, torchvision's RandomResizedCrop), e.g. 0.5. Default: whole images."
        },
    )
    text_model: str | None = field(
        default=None,
        metadata={
            "help": "Dual family: start the text tower from this pretrained model folder (any transformers text "
            "model, e.g. MiniLM / BERT; LiT / ALIGN-style) and use its tokenizer (unless --tokenizer). The image "
            "tower comes from the preset and its overrides; --max-text-length truncates captions."
        },
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
    from .data import load_image_text_dataset, load_region_text_dataset, make_scenes_dataset

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
    if not with_images:
        return VLPProcessor(None, tokenizer)
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


def _tokenizer_fields(tokenizer) -> dict:
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    return dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=bos, eos_token_id=eos)


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
    from .modeling_dual_encoder import VLPTextModel, _load_tower

    text_model = _load_tower(text_model_path, VLPTextModel)
    config.text_config = text_model.config
    # The tower's own attention implementation: a config left at None makes BERT ignore its padding mask.
    config.text_config._attn_implementation = text_model.config._attn_implementation
    return VLPDualEncoderModel(config, text_model=text_model)


def held_out_split(splits, num_validation: int, seed: int):
    """(train, eval) splits: the dataset's validation/test split, or `num_validation` rows held out of train."""
    from .data import pick_eval_split

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


def _load_saved_processor(path: str):
    from .processors import VLPProcessor

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

    from .conversion import hub

    parser = hub.add_push_arguments(argparse.ArgumentParser(add_help=False, allow_abbrev=False))
    push_args, rest = parser.parse_known_args(list(argv))
    return (push_args if push_args.push_to_hub else None), rest


def push_run(push_args, output_dir: str, objectives: Sequence[str] | None, dataset: str | None,
             dataset_description: str | None) -> int:  # fmt: skip
    """Push a finished run with a model card of what it measured; 0 when pushed, 1 when not (the folder stays)."""
    from .conversion import hub

    card = hub.model_card_for_run(
        output_dir, repo_id=push_args.push_to_hub, objectives=list(objectives or []) or None, dataset=dataset,
        dataset_description=dataset_description, base_model=push_args.base_model, license=push_args.license,
    )  # fmt: skip
    try:
        info = hub.push_folder(output_dir, push_args.push_to_hub, model_card=card, **hub.push_kwargs_from_args(push_args))
    except hub.HubPushError as error:
        logger.error("Push to %s failed: %s (the run is saved in %s; `vlp push %s %s` retries).",
                     push_args.push_to_hub, error, output_dir, output_dir, push_args.push_to_hub)  # fmt: skip
        return 1
    logger.info("Pushed %s to %s", output_dir, getattr(info, "commit_url", push_args.push_to_hub))
    return 0


SCENES_DESCRIPTION = (
    "the embedded generated scenes (coloured shapes with several captions per image, made by "
    "`modeling_vlp.data.make_scenes_dataset`; no download)"
)


def _uses_regions(config) -> bool:
    return getattr(config, "visual_input", "patches") == "regions"


def _setup_logging(training_args: TrainingArguments) -> None:
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if training_args.should_log else logging.WARNING,
    )


def _prepare_processor(training_args, resume_from, build):
    """The main process builds the processor and saves it before the others load it, so that every rank uses the
    very same tokenizer; a resumed run takes the one saved with its checkpoint."""
    output_dir = training_args.output_dir
    with training_args.main_process_first(desc="processor"):
        processor = _load_saved_processor(resume_from) if resume_from else None
        if processor is None and training_args.local_process_index > 0:
            processor = _load_saved_processor(output_dir)
        if processor is None:
            processor = build()
            processor.save_pretrained(output_dir)
    return processor


def _resume_checkpoint(training_args: TrainingArguments, resume: bool) -> str | None:
    output_dir = training_args.output_dir
    resume_from = training_args.resume_from_checkpoint or (find_resume_checkpoint(output_dir) if resume else None)
    if resume_from:
        logger.info("Resuming from %s", resume_from)
    return resume_from


def _finish(trainer, model, output_dir: str, evaluate: Callable[[], dict[str, float]]) -> int:
    """Save the final model and state, evaluate on the main process, write and print the metrics."""
    logger.info("Training done at step %d.", trainer.state.global_step)
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
    from .trainer import OBJECTIVES

    if "lm" in objectives and "lm" not in OBJECTIVES.get(FAMILIES[family_name].model_type, {}):
        raise ValueError(
            f"--objectives {','.join(objectives)}: 'lm' (captioning) needs a text decoder, which the {family_name!r} "
            "family does not have; use --family captioning --preset coca-small (CoCa: itc and lm in one model), or "
            "--family captioning alone for lm."
        )


def _is_finished(resume_from: str | None, training_args: TrainingArguments) -> bool:
    # transformers' Trainer resumed from a checkpoint at max_steps still takes one more step: skip training instead.
    return resume_from is not None and 0 < training_args.max_steps <= checkpoint_step(resume_from)


def pretrain(argv: Sequence[str]) -> int:
    from .collators import VLPCollator, VLPPretrainingCollator
    from .trainer import VLPObjectiveArguments, VLPTrainer, resolve_objectives

    push_args, argv = split_push_arguments(argv)
    args, training_args = _pretrain_parser().parse_args_into_dataclasses(args=argv)
    _setup_logging(training_args)
    family = FAMILIES[args.family]
    if args.family != "dual" and not any(item.startswith("--ddp-find-unused-parameters") for item in argv):
        # Heads of objectives not trained (the MIM head and mask token without mim, ...) get no gradient, which DDP
        # refuses unless told to look for unused parameters.
        training_args.ddp_find_unused_parameters = True
    check_family_options(args, args.family)
    _check_text_model_options(args)
    preset = args.preset or family.default_preset
    default_objectives = family.default_objectives
    if family.preset_objectives is not None and not args.objectives:
        default_objectives = family.preset_objectives(get_preset_config(preset))
    objectives = parse_objective_weights(args.objectives or default_objectives, args.objective_weights)
    _check_decoder_objectives(args.family, objectives)
    objective_args = VLPObjectiveArguments(
        objectives=objectives,
        local_loss=args.local_loss,
        gather_with_grad=args.gather_with_grad,
        itm_negative_ratio=args.itm_negative_ratio,
        momentum_distill=args.momentum_distill,
        momentum=args.momentum,
        distill_alpha=args.distill_alpha,
        queue_size=args.queue_size,
    )
    set_seed(training_args.seed)
    output_dir = training_args.output_dir
    resume_from = _resume_checkpoint(training_args, args.resume)

    logger.info("vlp pretrain: family %s, preset %s, output %s", args.family, preset, output_dir)
    config = build_config(args, preset)
    if family.check_objectives is not None:
        family.check_objectives(config, objective_args.objectives)
    image_size = family.image_size(config)
    regions = _uses_regions(config)
    train_dataset, eval_dataset = load_datasets(
        args, image_size, training_args.seed, region_features=config.visual_feat_dim if regions else 0
    )
    logger.info("Data: %d training and %d evaluation examples.", len(train_dataset), len(eval_dataset))

    def build():
        if args.text_model is not None:
            return build_text_model_processor(args, image_size, args.max_text_length)
        return build_processor(args, train_dataset, image_size, family.max_text_length(config), not regions)

    processor = _prepare_processor(training_args, resume_from, build)
    tokenizer = processor.tokenizer
    config = build_config(args, preset, tokenizer)
    max_text_length = min(family.max_text_length(config), tokenizer.model_max_length)

    finished = _is_finished(resume_from, training_args)
    if finished:
        logger.info("%s already reached --max-steps %d: evaluating it.", resume_from, training_args.max_steps)
        model = family.model_class().from_pretrained(resume_from)
    else:
        torch.manual_seed(training_args.seed)
        if args.text_model is not None:
            model = build_model_with_text_model(config, args.text_model)
        else:
            model = family.model_class()(config)
    resolve_objectives(model, objective_args)  # fail before training when the family lacks an objective
    logger.info(
        "Model: %s (%s), %.2fM parameters; objectives %s.",
        type(model).__name__, preset, sum(p.numel() for p in model.parameters()) / 1e6, objective_args.objectives,
    )  # fmt: skip
    collator_args = dict(
        sample_captions=args.sample_captions, max_length=max_text_length, seed=training_args.seed,
        random_crop_scale=args.random_crop_scale,
    )  # fmt: skip
    if args.family in ("dual", "captioning"):  # image-caption pairs; the lm objective makes its labels
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
    trainer = VLPTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset if training_args.eval_strategy != "no" else None,
        data_collator=collator,
        processing_class=processor,
        objective_args=objective_args,
    )
    if finished:
        trainer.state = TrainerState.load_from_json(os.path.join(resume_from, TRAINER_STATE_NAME))
    else:
        trainer.train(resume_from_checkpoint=resume_from)

    def evaluate() -> dict[str, float]:
        logger.info("Evaluating on %d examples.", len(eval_dataset))
        return family.evaluate(model, processor, eval_dataset, training_args.per_device_eval_batch_size)

    status = _finish(trainer, model, output_dir, evaluate)
    if status == 0 and push_args is not None and trainer.is_world_process_zero():
        description = SCENES_DESCRIPTION if args.dataset is None else None
        status = push_run(push_args, output_dir, objective_args.objectives, args.dataset or "scenes", description)
    return status


# --------------------------------------------------------------------------------------------------------------
# vlp finetune
# --------------------------------------------------------------------------------------------------------------


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
        metadata={"help": "Model family when starting from --preset.", "choices": ["unified", "fusion"]},
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


FINETUNE_DEFAULTS = dict(
    CPU_TRAINING_DEFAULTS, max_steps=600, learning_rate=3e-4, warmup_steps=0.1, eval_strategy="steps",
    eval_steps=200, save_steps=200, weight_decay=0.01, dataloader_drop_last=False,
)  # fmt: skip


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
    from .data import load_image_text_dataset, make_scenes_vqa_dataset

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
    from transformers import Trainer

    from .collators import VLPQuestionAnsweringCollator
    from .data import vqa_answer_vocabulary
    from .evaluation import evaluate_vqa, vqa_compute_metrics

    push_args, argv = split_push_arguments(argv)
    args, training_args = _finetune_parser().parse_args_into_dataclasses(args=argv)
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
            processor = _load_saved_processor(args.model)
            if processor is None:
                raise ValueError(f"--model {args.model!r} has no processor saved with it.")
            return processor
        pretrain_args = PretrainArguments(vocab_size=args.vocab_size)
        return build_processor(pretrain_args, train_dataset, image_size, family.max_text_length(base_config))

    processor = _prepare_processor(training_args, resume_from, build)
    model_class = family.question_answering_class()
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
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=VLPQuestionAnsweringCollator(
            processor, label2id, max_length=max_text_length, visual_input=getattr(model.config, "visual_input", "patches")
        ),
        processing_class=processor,
        compute_metrics=vqa_compute_metrics,
    )
    if _is_finished(resume_from, training_args):
        trainer.state = TrainerState.load_from_json(os.path.join(resume_from, TRAINER_STATE_NAME))
    else:
        trainer.train(resume_from_checkpoint=resume_from)

    def evaluate() -> dict[str, float]:
        metrics = evaluate_vqa(
            model, processor, eval_dataset, model.config.id2label,
            batch_size=training_args.per_device_eval_batch_size, show_progress=False,
            visual_input=getattr(model.config, "visual_input", "patches"),
        )  # fmt: skip
        metrics.update({key: float(value) for key, value in trainer.evaluate().items()})
        return metrics

    status = _finish(trainer, model, output_dir, evaluate)
    if status == 0 and push_args is not None and trainer.is_world_process_zero():
        description = "VQA questions generated about the embedded scenes" if args.dataset is None else None
        status = push_run(push_args, output_dir, ["vqa"], args.dataset or "scenes-vqa", description)
    return status


# --------------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------------

def _push(argv: Sequence[str]) -> int:
    from .conversion.hub import push_command

    return push_command(argv)


def _evaluate(argv: Sequence[str]) -> int:
    from .evaluate_command import evaluate_command

    return evaluate_command(argv)


COMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "pretrain": (pretrain, "pretrain a model on image-text pairs, evaluate it and save it"),
    "finetune": (finetune, "fine-tune a pretrained model for a downstream task (vqa), evaluate it and save it"),
    "evaluate": (_evaluate, "evaluate a saved model (retrieval, zero-shot, vqa, captioning) and write a JSON + PNG report"),
    "push": (_push, "push a saved folder to the Hugging Face Hub with a generated model card"),
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
    try:
        return COMMANDS[command][0](rest)
    finally:
        _close_process_group()


def _close_process_group() -> None:
    """Under torchrun, wait for every rank (rank 0 evaluates while the others are done) and close the process group
    before the interpreter exits: a gloo group torn down at exit can abort the process ("terminate called without
    an active exception"), failing the whole launch after a successful run."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
