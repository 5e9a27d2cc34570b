"""TODO docstring"""

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from .evaluation.captioning import evaluate_captioning
from .evaluation.embeddings import evaluate_dual_encoder
from .evaluation.matching import evaluate_fusion_retrieval, evaluate_image_text_matching
from .modeling_dual_encoder import VLPDualEncoderModel

logger = logging.getLogger("modeling_vlp.cli")

# --------------------------------------------------------------------------------------------------------------
# Families
# --------------------------------------------------------------------------------------------------------------


def _evaluate_dual(model, processor, eval_dataset, batch_size: int) -> dict[str, float]:

    return evaluate_dual_encoder(model, processor, eval_dataset, batch_size=batch_size, show_progress=False)


def _evaluate_matching(model, processor, eval_dataset, batch_size: int) -> dict[str, float]:

    return evaluate_image_text_matching(model, processor, eval_dataset, batch_size=batch_size, show_progress=False)


def _evaluate_fusion(model, processor, eval_dataset, batch_size: int) -> dict[str, float]:

    return evaluate_fusion_retrieval(model, processor, eval_dataset, batch_size=batch_size, show_progress=False)


def _evaluate_captioning(model, processor, eval_dataset, batch_size: int) -> dict[str, float]:
    """Greedy captions of the held-out images scored against their reference captions (BLEU, CIDEr), with a few
    examples in the log."""

    metrics, predictions, references = evaluate_captioning(
        model, processor, eval_dataset, batch_size, show_progress=False, return_predictions=True
    )
    for prediction, refs in list(zip(predictions, references))[:CAPTION_EXAMPLES]:
        logger.info("Caption: %r; references: %s", prediction, refs)
    return metrics


def _tower_overrides(args, base) -> dict:
    """Overrides of the image and text towers (dual and fusion families)."""
    vision = {"image_size": args.image_size, "patch_size": args.patch_size, "num_hidden_layers": args.vision_layers}
    vision.update(_width_overrides(args.vision_width, args.vision_heads, base.vision_config.num_attention_heads))
    text = {"num_hidden_layers": args.text_layers, "max_position_embeddings": args.max_text_length}
    text.update(_width_overrides(args.text_width, args.text_heads, base.text_config.num_attention_heads))
    return {"vision_config": vision, "text_config": text}


def _fusion_overrides(args, base, tokenizer) -> dict:
    towers = _tower_overrides(args, base)
    if tokenizer is not None:
        towers["text_config"].update(_tokenizer_fields(tokenizer))
    overrides = {name: {k: v for k, v in tower.items() if v is not None} for name, tower in towers.items()}
    if args.fusion_layers is not None:
        overrides["num_fusion_layers"] = args.fusion_layers
    if args.projection_dim is not None:
        overrides["projection_dim"] = args.projection_dim
    return overrides


def _dual_overrides(args, base, tokenizer) -> dict:
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


def _captioning_overrides(args, base, tokenizer) -> dict:
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


def _unified_overrides(args, base, tokenizer) -> dict:
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
