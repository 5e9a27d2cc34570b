"""Configurations shared by every family: the image and text towers (`VLPVisionConfig`, `VLPTextConfig`), the dual
encoder that pairs them (`VLPDualEncoderConfig`), and the helpers the family configs build on.

Each family's own config lives in its module (`configuration_fusion`, `configuration_unified`,
`configuration_captioning`), so that a checkpoint ships only its family's config; the named presets are in
`modeling_vlp.presets` (never part of a checkpoint).
"""

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig

VISION_POOLINGS = ("cls", "mean", "attention")
TEXT_POOLINGS = ("eos", "argmax", "first", "last", "mean")
FINAL_NORMS = ("pooled", "all", "none")
PROJECTIONS = ("linear", "none")
LOSS_TYPES = ("softmax", "sigmoid")
INITIALIZER_STYLES = ("normal", "clip")


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}.")


def _check_heads(hidden_size: int, num_attention_heads: int) -> None:
    if hidden_size % num_attention_heads != 0:
        raise ValueError(
            f"`hidden_size` ({hidden_size}) must be a multiple of `num_attention_heads` ({num_attention_heads})."
        )


@strict
class VLPTransformerConfig(PreTrainedConfig):
    r"""What the shared transformer layers read of a config (`modeling_layers`): one stack's widths, depth, heads,
    activation, LayerNorm placement and eps, dropouts, biases and init range. The towers and the unified family's
    single stack build on it (with their own defaults where they differ)."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    qkv_bias: bool = True
    pre_norm: bool = True
    initializer_range: float = 0.02

    def validate_architecture(self):
        _check_heads(self.hidden_size, self.num_attention_heads)


@strict
class VLPVisionConfig(VLPTransformerConfig):
    r"""A ViT image tower.

    `pre_norm` picks pre-LN (CLIP, SigLIP) or post-LN (BERT-style) blocks; `pre_layernorm` adds CLIP's LayerNorm on
    the embeddings before the encoder; `final_norm` applies the last LayerNorm to the pooled token only ("pooled",
    CLIP), to every token ("all", SigLIP / open_clip) or not at all. `pooling` is the first token ("cls"), the mean
    of the patch tokens ("mean") or a learned probe attending over all tokens ("attention", SigLIP's MAP head).
    `initializer_style` sets how a tower trained from scratch starts: "normal" draws every linear weight from
    N(0, initializer_range) (BERT, ViLT); "clip" scales the attention and MLP weights by width and depth as CLIP does
    (q/k/v and fc2 std d^-0.5 (2L)^-0.5, out_proj d^-0.5, fc1 (2d)^-0.5), which trains markedly better from scratch.
    `patch_dropout` drops that share of the patch tokens (a random subset per image, the class token kept) in
    training only (FLIP); evaluation and generation see every patch.
    """

    model_type = "vlp_vision"
    base_config_key = "vision_config"

    image_size: int = 224
    patch_size: int = 32
    num_channels: int = 3
    class_token: bool = True
    patch_bias: bool = False
    pre_layernorm: bool = True
    final_norm: str = "pooled"
    pooling: str = "cls"
    initializer_style: str = "normal"
    patch_dropout: float = 0.0

    def validate_architecture(self):
        super().validate_architecture()
        _check_choice("initializer_style", self.initializer_style, INITIALIZER_STYLES)
        _check_choice("pooling", self.pooling, VISION_POOLINGS)
        if not 0.0 <= self.patch_dropout < 1.0:
            raise ValueError(f"`patch_dropout` must be in [0, 1), got {self.patch_dropout}.")
        _check_choice("final_norm", self.final_norm, FINAL_NORMS)
        if self.pooling == "cls" and not self.class_token:
            raise ValueError("`pooling='cls'` needs `class_token=True`; use 'mean' or 'attention' without one.")
        if self.image_size % self.patch_size != 0:
            raise ValueError(f"`image_size` ({self.image_size}) must be a multiple of `patch_size` ({self.patch_size}).")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@strict
class VLPTextConfig(VLPTransformerConfig):
    r"""A transformer text tower.

    `causal` picks a causal (CLIP) or bidirectional (BERT, SigLIP) encoder. `pooling` reads the first `eos_token_id`
    ("eos"), the highest token id ("argmax", open_clip), the first ("first", BERT [CLS]) or last ("last", SigLIP)
    position, or the masked mean ("mean"). `type_vocab_size > 0` adds BERT token-type embeddings and
    `embedding_layernorm` BERT's LayerNorm on the embeddings; `final_layernorm` CLIP's LayerNorm after the encoder.
    `initializer_style`: "normal" or "clip", as for `VLPVisionConfig`.
    """

    model_type = "vlp_text"
    base_config_key = "text_config"

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    type_vocab_size: int = 0
    causal: bool = True
    embedding_layernorm: bool = False
    final_layernorm: bool = True
    pooling: str = "eos"
    pad_token_id: int | None = 1
    bos_token_id: int | None = 49406
    eos_token_id: int | None = 49407
    initializer_style: str = "normal"

    def validate_architecture(self):
        super().validate_architecture()
        _check_choice("initializer_style", self.initializer_style, INITIALIZER_STYLES)
        _check_choice("pooling", self.pooling, TEXT_POOLINGS)
        if self.pooling == "eos" and self.eos_token_id is None:
            raise ValueError("`pooling='eos'` needs an `eos_token_id`.")


def _tower_config(value, default_class):
    """A tower config from a config, a dict (our own or any transformers `model_type`) or None."""
    if isinstance(value, PreTrainedConfig):
        return value
    if value is None:
        return default_class()
    value = dict(value)
    model_type = value.get("model_type", default_class.model_type)
    if model_type == default_class.model_type:
        value.pop("model_type", None)
        return default_class(**value)
    value.pop("model_type", None)
    return AutoConfig.for_model(model_type, **value)


def tower_width(config: PreTrainedConfig) -> int:
    """The width of a tower's pooled features, whatever its kind: `hidden_size` (ours, ViT, CLIP, BERT), timm's
    `num_features` (`TimmWrapperConfig`), the last stage of a convolutional transformers model (`hidden_sizes`,
    ResNet / ConvNeXt), or `embed_dim`."""
    for name in ("hidden_size", "num_features", "embed_dim"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    sizes = getattr(config, "hidden_sizes", None)
    if sizes:
        return int(sizes[-1])
    raise ValueError(
        f"Cannot tell the feature width of a {type(config).__name__} (model_type {config.model_type!r}): it has no "
        "`hidden_size`, `num_features`, `embed_dim` or `hidden_sizes`."
    )


def check_own_towers(config, family: str) -> None:
    """A family whose layers read our tower configs' fields: both towers must be ours, whatever the dicts said."""
    for name, tower_class in (("text_config", VLPTextConfig), ("vision_config", VLPVisionConfig)):
        tower = getattr(config, name)
        if tower.model_type != tower_class.model_type:
            raise ValueError(
                f"`{name}` must be a {tower_class.__name__} (model_type {tower_class.model_type!r}) for a {family} "
                f"model, got model_type {tower.model_type!r}."
            )


@strict
class VLPDualEncoderConfig(PreTrainedConfig):
    r"""Two towers and a contrastive head (CLIP, SigLIP, ALIGN, LiT).

    Each tower is a `VLPVisionConfig` / `VLPTextConfig` or the config of any transformers model (a pretrained ViT,
    CLIP / SigLIP vision tower, BERT, a timm model's `TimmWrapperConfig`, ...); its feature width is `tower_width`'s.
    A tower's pooled output goes through a projection to `projection_dim` (`vision_projection` /
    `text_projection` = "linear") or straight to the head ("none", SigLIP's vision tower). `loss_type` picks the
    softmax InfoNCE loss (CLIP) or the pairwise sigmoid loss with a learned bias (SigLIP). The learned temperature
    `exp(logit_scale)` is clamped to `logit_scale_max` (CLIP's 100) to keep training stable; None leaves it free.
    `foreign_vision_pooling` / `foreign_text_pooling` say how to pool a tower that is not one of ours:
    "pooler" (its `pooler_output`), "cls" (first token) or "mean" (masked mean of its last hidden state).
    """

    model_type = "vlp_dual_encoder"
    sub_configs_defaults = {"vision_config": VLPVisionConfig, "text_config": VLPTextConfig}

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    projection_dim: int = 512
    vision_projection: str = "linear"
    text_projection: str = "linear"
    projection_bias: bool = False
    loss_type: str = "softmax"
    logit_scale_init_value: float = 2.6592
    logit_bias_init_value: float | None = None
    logit_scale_max: float | None = 100.0
    foreign_vision_pooling: str = "pooler"
    foreign_text_pooling: str = "mean"
    initializer_factor: float = 1.0

    def __post_init__(self, **kwargs):
        self.vision_config = _tower_config(self.vision_config, VLPVisionConfig)
        self.text_config = _tower_config(self.text_config, VLPTextConfig)
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        _check_choice("loss_type", self.loss_type, LOSS_TYPES)
        _check_choice("vision_projection", self.vision_projection, PROJECTIONS)
        _check_choice("text_projection", self.text_projection, PROJECTIONS)
        _check_choice("foreign_vision_pooling", self.foreign_vision_pooling, ("pooler", "cls", "mean"))
        _check_choice("foreign_text_pooling", self.foreign_text_pooling, ("pooler", "cls", "mean"))
        for name in ("vision", "text"):
            width = tower_width(getattr(self, f"{name}_config"))
            if getattr(self, f"{name}_projection") == "none" and width != self.projection_dim:
                raise ValueError(
                    f"`{name}_projection='none'` needs the {name} tower's hidden_size ({width}) to equal "
                    f"`projection_dim` ({self.projection_dim})."
                )


VISUAL_INPUTS = ("patches", "regions")

# The towers of `VLPFusionConfig()`: ALBEF's ViT-B/16 and BERT-base.
_VIT_B_16 = dict(
    image_size=224, patch_size=16, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, hidden_act="gelu", layer_norm_eps=1e-6, pre_norm=True, class_token=True,
    patch_bias=True, pre_layernorm=False, final_norm="all", pooling="cls",
)  # fmt: skip
_FUSION_BERT_BASE = dict(
    vocab_size=30522, hidden_size=768, intermediate_size=3072, num_hidden_layers=6, num_attention_heads=12,
    max_position_embeddings=512, type_vocab_size=2, hidden_act="gelu", layer_norm_eps=1e-12, pre_norm=False,
    causal=False, embedding_layernorm=True, final_layernorm=False, pooling="first", pad_token_id=0,
    bos_token_id=101, eos_token_id=102,
)  # fmt: skip



__all__ = ["VLPVisionConfig", "VLPTextConfig", "VLPDualEncoderConfig"]
