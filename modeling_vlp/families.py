"""The model families, each described once: its classes, default preset and objectives (with the trainer's
implementation of each), how `vlp pretrain` builds and evaluates it, which `vlp evaluate` tasks it can do, how the
retrieval pipeline ranks with it, and its model card text and Hub pipeline tag.

The commands, `VLPTrainer` (through `training.register_objectives`), the pipelines and the Hub code all read
`FAMILIES`; adding a family is adding one `Family` entry here and its model file.
"""

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .evaluation.captioning import evaluate_captioning
from .evaluation.embeddings import evaluate_dual_encoder
from .evaluation.matching import evaluate_fusion_retrieval, evaluate_image_text_matching
from .registration import MODEL_CLASSES
from .training.family_objectives import (
    captioning_itc_objective,
    fusion_itc_objective,
    fusion_itm_objective,
    fusion_mlm_objective,
    itc_objective,
    lm_objective,
    matching_objective,
    mim_objective,
    mlm_objective,
    Objective,
    prepare_itm_pairs,
    prepare_lm_labels,
    register_objectives,
)

logger = logging.getLogger("modeling_vlp.cli")

def _evaluate_dual(model, processor, eval_dataset, batch_size: int) -> dict[str, float]:

    return evaluate_dual_encoder(model, processor, eval_dataset, batch_size=batch_size, show_progress=False)


def _evaluate_matching(model, processor, eval_dataset, batch_size: int) -> dict[str, float]:

    return evaluate_image_text_matching(model, processor, eval_dataset, batch_size=batch_size, show_progress=False)


def _evaluate_fusion(model, processor, eval_dataset, batch_size: int) -> dict[str, float]:
    if getattr(model.config, "projection_dim", None) is None:  # no ITC head (LXMERT): ITM on every pair
        return _evaluate_matching(model, processor, eval_dataset, batch_size)
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


def _towers_with_tokenizer(args, base, tokenizer) -> dict:
    """The tower overrides given, the text tower taking the tokenizer's vocabulary and special tokens."""
    towers = _tower_overrides(args, base)
    if tokenizer is not None:
        towers["text_config"].update(_tokenizer_fields(tokenizer))
    overrides = {name: {k: v for k, v in tower.items() if v is not None} for name, tower in towers.items()}
    if args.projection_dim is not None:
        overrides["projection_dim"] = args.projection_dim
    return overrides


def _fusion_overrides(args, base, tokenizer) -> dict:
    overrides = _towers_with_tokenizer(args, base, tokenizer)
    if args.fusion_layers is not None:
        overrides["num_fusion_layers"] = args.fusion_layers
    return overrides


def _dual_overrides(args, base, tokenizer) -> dict:
    towers = _tower_overrides(args, base)
    vision, text = towers["vision_config"], towers["text_config"]
    if tokenizer is not None:
        text.update(_tokenizer_fields(tokenizer))
        if text["eos_token_id"] is None and base.text_config.pooling == "eos":
            text["pooling"] = "mean"
    vision["patch_dropout"] = args.patch_dropout
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
    from the tokenizer (a caption is bos, words, eos); `--patch-dropout` drops image patches in training."""
    overrides = _towers_with_tokenizer(args, base, tokenizer)
    if args.patch_dropout is not None:
        overrides["vision_config"]["patch_dropout"] = args.patch_dropout
    return overrides


def _check_captioning_objectives(config, objectives) -> None:
    if "itc" in objectives and config.projection_dim is None:
        raise ValueError(
            "--objectives itc needs a contrastive head, but this captioning config has projection_dim=None: train "
            "with --objectives lm, or use --preset coca-small (or set --projection-dim with a preset that has "
            "unimodal text layers)."
        )


def _check_fusion_objectives(config, objectives) -> None:
    if "itc" in objectives and config.projection_dim is None:
        raise ValueError(
            f"--objectives {','.join(objectives)}: 'itc' needs an ITC head, but this fusion config has "
            "projection_dim=None (as LXMERT); train --objectives itm,mlm (ITM then draws its negatives uniformly), "
            "or use a preset with an ITC head such as fusion-small or albef-base."
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


# --------------------------------------------------------------------------------------------------------------
# Model cards: architecture lines read from config.json
# --------------------------------------------------------------------------------------------------------------


def _describe_vision(vision: Mapping) -> str:
    if vision.get("architecture"):  # a timm model through transformers' TimmWrapperModel
        return f"timm's `{vision['architecture']}` (width {vision.get('num_features')}, through `TimmWrapperModel`)"
    if vision.get("model_type", "vlp_vision") != "vlp_vision":
        return f"a `{vision.get('model_type')}` image encoder (width {vision.get('hidden_size')})"
    return (
        f"a ViT with {vision.get('num_hidden_layers')} layers, width {vision.get('hidden_size')}, "
        f"{vision.get('num_attention_heads')} heads, on {vision.get('image_size')}px images cut in "
        f"{vision.get('patch_size')}px patches"
    )


def _describe_text(text: Mapping) -> str:
    if text.get("model_type", "vlp_text") != "vlp_text":
        return f"a `{text.get('model_type')}` text encoder (width {text.get('hidden_size')})"
    kind = "causal" if text.get("causal") else "bidirectional"
    return (
        f"a {kind} transformer with {text.get('num_hidden_layers')} layers, width {text.get('hidden_size')}, "
        f"{text.get('num_attention_heads')} heads, a {text.get('vocab_size')}-token vocabulary and up to "
        f"{text.get('max_position_embeddings')} tokens"
    )


def _describe_visual_input(config: Mapping, patches: str) -> str:
    if config.get("visual_input") == "regions":
        return (
            f"detector region features ({config.get('visual_feat_dim')}-d, with "
            f"{config.get('visual_pos_dim', 4)}-d boxes) instead of pixels"
        )
    return patches


def _describe_dual(config: Mapping) -> list[str]:
    vision, text = config.get("vision_config") or {}, config.get("text_config") or {}
    loss = {"softmax": "softmax (CLIP's InfoNCE)", "sigmoid": "sigmoid (SigLIP's pairwise)"}.get(
        config.get("loss_type"), config.get("loss_type")
    )
    return [
        f"Image tower: {_describe_vision(vision)}.",
        f"Text tower: {_describe_text(text)}.",
        f"Both project to a shared {config.get('projection_dim')}-d embedding, scored by the {loss} contrastive loss.",
    ]


def _describe_unified(config: Mapping) -> list[str]:
    visual = _describe_visual_input(
        config, f"image patches ({config.get('image_size')}px images, {config.get('patch_size')}px patches)"
    )
    return [
        f"One transformer over `[text; visual]` tokens: {config.get('num_hidden_layers')} layers, width "
        f"{config.get('hidden_size')}, {config.get('num_attention_heads')} heads "
        f"({'pre' if config.get('pre_norm') else 'post'}-norm).",
        f"Text: a {config.get('vocab_size')}-token vocabulary, up to {config.get('max_position_embeddings')} "
        f"tokens. Visual tokens: {visual}.",
    ]


def _describe_fusion(config: Mapping) -> list[str]:
    vision, text = config.get("vision_config") or {}, config.get("text_config") or {}
    return [
        f"Text encoder: {_describe_text(text)}.",
        f"Image encoder: {_describe_visual_input(config, _describe_vision(vision))}.",
        f"Fusion: {config.get('num_fusion_layers')} `{config.get('fusion_type')}` layers over both streams.",
    ]


def _describe_captioning(config: Mapping) -> list[str]:
    vision, text = config.get("vision_config") or {}, config.get("text_config") or {}
    lines = [
        f"Image encoder: {_describe_vision(vision)}.",
        f"Text decoder: {_describe_text(text)}, cross-attending to the image tokens.",
    ]
    if config.get("projection_dim") is not None:
        lines.append(
            f"Contrastive head (CoCa): image and unimodal text features project to a shared "
            f"{config.get('projection_dim')}-d embedding."
        )
    return lines


# --------------------------------------------------------------------------------------------------------------
# The families
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """Everything the commands, the trainer, the evaluation, the pipelines and the Hub code know about a family.

    `classes` names the family's model classes by role: "base" (the bare model), "pretraining" (what `vlp pretrain`
    trains and saves), and where they exist "question_answering" (`vlp finetune`), "retrieval" (ITM head only) and
    "generation".
    """

    name: str  # `vlp pretrain --family NAME`
    model_type: str  # `config.model_type` of the family's checkpoints
    summary: str  # "A <size> vision-language <summary>, saved with modeling_vlp ..." on the model card
    classes: Mapping[str, type]
    default_preset: str
    default_objectives: tuple[str, ...]
    objectives: Mapping[str, Objective]  # what VLPTrainer trains the family with, by objective name
    config_overrides: Callable  # (args, preset config, tokenizer or None) -> get_preset_config overrides
    image_size: Callable  # config -> input image side
    max_text_length: Callable  # config -> text positions
    # (model, processor, eval_dataset, batch_size) -> flat dict of floats: after `vlp pretrain`, and at each of its
    # --eval-strategy evaluations (logged as eval_<name>)
    evaluate: Callable
    evaluation_tasks: Mapping[str, str]  # `vlp evaluate --task` -> role of the class it loads by default
    describe: Callable[[Mapping], list[str]]  # config.json -> the model card's architecture lines
    pipeline_tags: Mapping[str, str]  # class role -> Hub pipeline tag ("*": any other role)
    # How the "image-text-retrieval" pipeline ranks: "embeddings" (cosine of the two towers), "rerank" (ALBEF's ITC
    # shortlist re-scored by ITM, or ITM on every pair without ITC head), "match" (ITM on every pair, or on a dual
    # encoder's shortlist); None: no retrieval. `retrieval_roles`: the classes that can rank.
    retrieval_ranking: str | None = None
    retrieval_roles: tuple[str, ...] = ()
    masked_inputs: bool = False  # `vlp pretrain` batches through VLPPretrainingCollator (MLM / MIM masks, ITM ids)
    # Command-line options that have no meaning for the family (named in the error when given).
    unused_options: tuple[str, ...] = ()
    # Preset config -> default objectives, when they depend on the preset (CoCa presets add itc to lm).
    preset_objectives: Callable | None = None
    # (config, objectives) -> None; raises before training for objectives the config cannot train.
    check_objectives: Callable | None = None

    @property
    def model_class(self) -> type:
        return self.classes["pretraining"]

    @property
    def question_answering_class(self) -> type | None:
        return self.classes.get("question_answering")

    def roles_of(self, class_name: str | None) -> list[str]:
        return [role for role, cls in self.classes.items() if cls.__name__ == class_name]

    def pipeline_tag(self, class_name: str | None) -> str:
        """The tag of the first role of the class that has one (a class may serve two roles), else the "*" tag."""
        tagged = [self.pipeline_tags[role] for role in self.roles_of(class_name) if role in self.pipeline_tags]
        return tagged[0] if tagged else self.pipeline_tags["*"]


def _tower_image_size(config) -> int:
    return config.vision_config.image_size


def _tower_text_length(config) -> int:
    return config.text_config.max_position_embeddings


def _classes(**roles: str) -> dict[str, type]:
    """Role -> model class, by class name (`registration.MODEL_CLASSES`, wherever the model file defines it)."""
    return {role: MODEL_CLASSES[name] for role, name in roles.items()}


_MIM = Objective(mim_objective)
FAMILY_LIST = (
    Family(
        name="dual",
        model_type="vlp_dual_encoder",
        summary="dual encoder (separate image and text towers scored by a dot product, CLIP / SigLIP style)",
        classes=_classes(base="VLPDualEncoderModel", pretraining="VLPDualEncoderModel"),
        default_preset="dual-small",
        default_objectives=("itc",),
        objectives={"itc": Objective(itc_objective)},
        config_overrides=_dual_overrides,
        image_size=_tower_image_size,
        max_text_length=_tower_text_length,
        evaluate=_evaluate_dual,
        evaluation_tasks={"retrieval": "base", "zero-shot": "base"},
        describe=_describe_dual,
        pipeline_tags={"*": "zero-shot-image-classification"},
        retrieval_ranking="embeddings",
        retrieval_roles=("base",),
        unused_options=(
            "layers", "width", "heads", "fusion_layers", "mlm_probability", "mim_ratio", "momentum_distill",
        ),
    ),  # fmt: skip
    Family(
        name="unified",
        model_type="vlp_unified",
        summary="unified single-stream encoder (one transformer over text and visual tokens, ViLT / VisualBERT / "
        "UNITER style)",
        classes=_classes(
            base="VLPUnifiedModel", pretraining="VLPUnifiedForPreTraining",
            question_answering="VLPUnifiedForQuestionAnswering", retrieval="VLPUnifiedForImageTextRetrieval",
        ),  # fmt: skip
        default_preset="unified-small",
        default_objectives=("itm", "mlm"),
        objectives={
            "itm": Objective(matching_objective, prepare=prepare_itm_pairs), "mlm": Objective(mlm_objective),
            "mim": _MIM,
        },  # fmt: skip
        config_overrides=_unified_overrides,
        image_size=lambda config: config.image_size,
        max_text_length=lambda config: config.max_position_embeddings,
        evaluate=_evaluate_matching,
        evaluation_tasks={"retrieval": "retrieval", "vqa": "question_answering"},
        describe=_describe_unified,
        pipeline_tags={"question_answering": "visual-question-answering", "*": "feature-extraction"},
        retrieval_ranking="match",
        retrieval_roles=("retrieval", "pretraining"),
        masked_inputs=True,
        unused_options=(
            "vision_layers", "vision_width", "vision_heads", "text_layers", "text_width", "text_heads",
            "projection_dim", "loss_type", "local_loss", "fusion_layers", "momentum_distill", "patch_dropout",
            "vision_model", "lock_image", "lock_image_unlocked_groups", "lock_image_freeze_bn_stats", "lock_text",
            "lock_text_unlocked_layers", "lock_text_freeze_layer_norm",
        ),
    ),  # fmt: skip
    Family(
        name="fusion",
        model_type="vlp_fusion",
        summary="fusion encoder (text and image encoders joined by fusion layers, LXMERT / ALBEF style)",
        classes=_classes(
            base="VLPFusionModel", pretraining="VLPFusionForPreTraining",
            question_answering="VLPFusionForQuestionAnswering", retrieval="VLPFusionForImageTextRetrieval",
        ),  # fmt: skip
        default_preset="fusion-small",
        default_objectives=("itc", "itm", "mlm"),
        objectives={
            "itc": Objective(fusion_itc_objective), "itm": Objective(fusion_itm_objective),
            "mlm": Objective(fusion_mlm_objective), "mim": _MIM,
        },  # fmt: skip
        config_overrides=_fusion_overrides,
        image_size=_tower_image_size,
        max_text_length=_tower_text_length,
        evaluate=_evaluate_fusion,
        evaluation_tasks={"retrieval": "retrieval", "zero-shot": "base", "vqa": "question_answering"},
        describe=_describe_fusion,
        pipeline_tags={"question_answering": "visual-question-answering", "*": "feature-extraction"},
        retrieval_ranking="rerank",
        retrieval_roles=("retrieval", "pretraining"),
        masked_inputs=True,
        unused_options=(
            "layers", "width", "heads", "loss_type", "patch_dropout",  # fusion embeds its own patches
            "vision_model", "lock_image", "lock_image_unlocked_groups", "lock_image_freeze_bn_stats", "lock_text",
            "lock_text_unlocked_layers", "lock_text_freeze_layer_norm",
        ),
        # A fusion model without ITC head (projection_dim=None, LXMERT) trains ITM (uniform negatives) and MLM.
        preset_objectives=lambda config: ("itc", "itm", "mlm") if config.projection_dim is not None else ("itm", "mlm"),
        check_objectives=_check_fusion_objectives,
    ),  # fmt: skip
    Family(
        name="captioning",
        model_type="vlp_captioning",
        summary="captioning model (an image encoder and a text decoder cross-attending to it, BLIP / CoCa style)",
        classes=_classes(
            base="VLPCaptioningModel", pretraining="VLPForConditionalGeneration", generation="VLPForConditionalGeneration"
        ),
        default_preset="captioning-small",
        default_objectives=("lm",),
        objectives={
            "itc": Objective(captioning_itc_objective), "lm": Objective(lm_objective, prepare=prepare_lm_labels),
        },  # fmt: skip
        config_overrides=_captioning_overrides,
        image_size=_tower_image_size,
        max_text_length=_tower_text_length,
        evaluate=_evaluate_captioning,
        evaluation_tasks={"captioning": "generation"},
        describe=_describe_captioning,
        pipeline_tags={"generation": "image-text-to-text", "*": "feature-extraction"},
        unused_options=(
            "layers", "width", "heads", "fusion_layers", "loss_type", "mlm_probability", "mim_ratio",
            "momentum_distill", "vision_model", "lock_image", "lock_image_unlocked_groups",
            "lock_image_freeze_bn_stats", "lock_text", "lock_text_unlocked_layers", "lock_text_freeze_layer_norm",
        ),
        preset_objectives=lambda config: ("itc", "lm") if config.projection_dim is not None else ("lm",),
        check_objectives=_check_captioning_objectives,
    ),  # fmt: skip
)
FAMILIES: dict[str, Family] = {family.name: family for family in FAMILY_LIST}
FAMILIES_BY_MODEL_TYPE: dict[str, Family] = {family.model_type: family for family in FAMILY_LIST}
for _family in FAMILY_LIST:
    register_objectives(_family.model_type, _family.objectives)


@dataclass(frozen=True)
class Tower:
    """A single tower saved on its own (`VLPVisionModel`, `VLPTextModel`): what its model card says."""

    summary: str
    describe: Callable[[Mapping], list[str]]
    tag: str

    def pipeline_tag(self, class_name: str | None) -> str:
        """The same as `Family.pipeline_tag`: one tag, whichever tower class saved it."""
        return self.tag


TOWERS: dict[str, Tower] = {
    "vlp_vision": Tower(
        "image encoder (the vision tower of a modeling_vlp model)",
        lambda config: [f"Image encoder: {_describe_vision(config)}."], "image-feature-extraction",
    ),
    "vlp_text": Tower(
        "text encoder (the text tower of a modeling_vlp model)",
        lambda config: [f"Text encoder: {_describe_text(config)}."], "feature-extraction",
    ),
}  # fmt: skip


def described(config: Mapping) -> Family | Tower | None:
    """The family or tower a config.json dict belongs to (what its model card says), None for other models."""
    return family_of(config) or TOWERS.get(config.get("model_type"))


def family_of(model_or_config) -> Family | None:
    """The family of a model, a config or a config.json dict (by `model_type`); None for other models."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = config.get("model_type") if isinstance(config, Mapping) else getattr(config, "model_type", None)
    return FAMILIES_BY_MODEL_TYPE.get(model_type)


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
