"""Configurations of the modeling_vlp towers and families, and the named presets.

A preset is the single source of truth for a known architecture: converting a published checkpoint means
translating its config into a preset-shaped config, renaming its weights and proving parity.
"""

import copy
import math

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
class VLPVisionConfig(PreTrainedConfig):
    r"""A ViT image tower.

    `pre_norm` picks pre-LN (CLIP, SigLIP) or post-LN (BERT-style) blocks; `pre_layernorm` adds CLIP's LayerNorm on
    the embeddings before the encoder; `final_norm` applies the last LayerNorm to the pooled token only ("pooled",
    CLIP), to every token ("all", SigLIP / open_clip) or not at all. `pooling` is the first token ("cls"), the mean
    of the patch tokens ("mean") or a learned probe attending over all tokens ("attention", SigLIP's MAP head).
    `initializer_style` sets how a tower trained from scratch starts: "normal" draws every linear weight from
    N(0, initializer_range) (BERT, ViLT); "clip" scales the attention and MLP weights by width and depth as CLIP does
    (q/k/v and fc2 std d^-0.5 (2L)^-0.5, out_proj d^-0.5, fc1 (2d)^-0.5), which trains markedly better from scratch.
    """

    model_type = "vlp_vision"
    base_config_key = "vision_config"

    image_size: int = 224
    patch_size: int = 32
    num_channels: int = 3
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
    class_token: bool = True
    patch_bias: bool = False
    pre_layernorm: bool = True
    final_norm: str = "pooled"
    pooling: str = "cls"
    initializer_range: float = 0.02
    initializer_style: str = "normal"

    def validate_architecture(self):
        _check_heads(self.hidden_size, self.num_attention_heads)
        _check_choice("initializer_style", self.initializer_style, INITIALIZER_STYLES)
        _check_choice("pooling", self.pooling, VISION_POOLINGS)
        _check_choice("final_norm", self.final_norm, FINAL_NORMS)
        if self.pooling == "cls" and not self.class_token:
            raise ValueError("`pooling='cls'` needs `class_token=True`; use 'mean' or 'attention' without one.")
        if self.image_size % self.patch_size != 0:
            raise ValueError(f"`image_size` ({self.image_size}) must be a multiple of `patch_size` ({self.patch_size}).")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@strict
class VLPTextConfig(PreTrainedConfig):
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
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    type_vocab_size: int = 0
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    qkv_bias: bool = True
    pre_norm: bool = True
    causal: bool = True
    embedding_layernorm: bool = False
    final_layernorm: bool = True
    pooling: str = "eos"
    pad_token_id: int | None = 1
    bos_token_id: int | None = 49406
    eos_token_id: int | None = 49407
    initializer_range: float = 0.02
    initializer_style: str = "normal"

    def validate_architecture(self):
        _check_heads(self.hidden_size, self.num_attention_heads)
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


@strict
class VLPDualEncoderConfig(PreTrainedConfig):
    r"""Two towers and a contrastive head (CLIP, SigLIP, ALIGN, LiT).

    Each tower is a `VLPVisionConfig` / `VLPTextConfig` or the config of any transformers model (a pretrained ViT,
    BERT, ...). A tower's pooled output goes through a projection to `projection_dim` (`vision_projection` /
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
            width = getattr(self, f"{name}_config").hidden_size
            if getattr(self, f"{name}_projection") == "none" and width != self.projection_dim:
                raise ValueError(
                    f"`{name}_projection='none'` needs the {name} tower's hidden_size ({width}) to equal "
                    f"`projection_dim` ({self.projection_dim})."
                )


VISUAL_INPUTS = ("patches", "regions")
EMBEDDING_NORMS = ("text", "joint", "separate")
BOX_EMBEDDINGS = ("none", "linear", "uniter")
VQA_HEADS = ("pooled_mlp", "text_token")
VQA_LOSSES = ("bce", "kl")


@strict
class VLPUnifiedConfig(PreTrainedConfig):
    r"""One transformer over `[text; visual]` tokens (ViLT, VisualBERT, UNITER, Oscar).

    Text tokens are word + position + token-type embeddings. Visual tokens come from `visual_input`:
    - "patches" (ViLT): a convolutional patch projection of `pixel_values`, a class token, and learned positions for
      the `image_size / patch_size` grid, resized bilinearly to each image's own grid (`interpolate_pos_encoding`;
      without it, a patch at row r, column c takes the position of (r, c) and larger images are refused). In
      training `max_image_length > 0` samples that many patches per image; in evaluation every valid patch is used.
    - "regions" (VisualBERT, UNITER): detector features `visual_feats (B, N, visual_feat_dim)` through a Linear
      (+ LayerNorm with `visual_feat_layernorm`), plus box features by `box_embedding`: none ("none", VisualBERT),
      a Linear of the `visual_pos_dim` (4 or 5) box coordinates ("linear"), or UNITER's 7-d
      `[x1, y1, x2, y2, w, h, w*h]` computed from `(x1, y1, x2, y2)` ("uniter"); + LayerNorm with
      `visual_pos_layernorm`. At most `max_regions` regions; `normalized_boxes` checks that boxes lie in [0, 1].

    Both streams get a modality-type embedding (0 text, 1 visual). `embedding_norm` says where the embedding
    LayerNorm sits: "text" (ViLT: inside the text embeddings only; modality added after), "joint" (VisualBERT: one
    LayerNorm over `[text; visual]` after all sums) or "separate" (UNITER: the text LayerNorm, and a visual LayerNorm
    over the visual sum including its modality embedding).

    The encoder is pre-norm with a final LayerNorm (`pre_norm=True`, ViLT) or post-norm BERT (VisualBERT, UNITER);
    the pooler is BERT's (dense + tanh on the first token).

    Heads: the pretraining losses are weighted by `itm_loss_weight`, `mlm_loss_weight`, `mim_loss_weight`; region
    inputs classify masked regions over `num_object_labels` detector classes (0: no classifier). `vqa_head` is
    ViLT's MLP on the pooled output ("pooled_mlp") or VisualBERT's linear layer on the text token before [SEP]
    ("text_token"); `vqa_loss` is ViLT's BCE on soft scores times the number of answers ("bce") or VisualBERT's
    KL divergence to the soft scores ("kl").
    """

    model_type = "vlp_unified"

    # text
    vocab_size: int = 30522
    max_position_embeddings: int = 40
    type_vocab_size: int = 2
    # visual input
    visual_input: str = "patches"
    image_size: int = 384
    patch_size: int = 32
    num_channels: int = 3
    patch_bias: bool = True
    max_image_length: int = 200
    interpolate_pos_encoding: bool = True
    visual_feat_dim: int = 2048
    box_embedding: str = "linear"
    visual_pos_dim: int = 4
    visual_feat_layernorm: bool = False
    visual_pos_layernorm: bool = False
    normalized_boxes: bool = True
    max_regions: int = 100
    # embeddings and encoder
    embedding_norm: str = "text"
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    qkv_bias: bool = True
    pre_norm: bool = True
    # heads
    itm_loss_weight: float = 1.0
    mlm_loss_weight: float = 1.0
    mim_loss_weight: float = 1.0
    num_object_labels: int = 0
    vqa_head: str = "pooled_mlp"
    vqa_loss: str = "bce"
    pad_token_id: int | None = 0
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02

    def validate_architecture(self):
        _check_heads(self.hidden_size, self.num_attention_heads)
        _check_choice("visual_input", self.visual_input, VISUAL_INPUTS)
        _check_choice("embedding_norm", self.embedding_norm, EMBEDDING_NORMS)
        _check_choice("box_embedding", self.box_embedding, BOX_EMBEDDINGS)
        _check_choice("vqa_head", self.vqa_head, VQA_HEADS)
        _check_choice("vqa_loss", self.vqa_loss, VQA_LOSSES)
        if self.image_size % self.patch_size != 0:
            raise ValueError(
                f"`image_size` ({self.image_size}) must be a multiple of `patch_size` ({self.patch_size})."
            )
        if self.max_image_length == 0 or self.max_image_length < -1:
            raise ValueError(
                f"`max_image_length` must be -1 (use every patch) or a positive number, got {self.max_image_length}."
            )
        if self.box_embedding == "linear" and self.visual_pos_dim not in (4, 5):
            raise ValueError(
                f"`visual_pos_dim` must be 4 (x1, y1, x2, y2) or 5 (+ area) with box_embedding='linear', "
                f"got {self.visual_pos_dim}."
            )
        if self.max_regions < 1:
            raise ValueError(f"`max_regions` must be positive, got {self.max_regions}.")
        if self.num_object_labels < 0:
            raise ValueError(f"`num_object_labels` must be >= 0, got {self.num_object_labels}.")

    # Read by the shared blocks of modeling_layers (VLPTextEmbeddings, VLPPatchEmbeddings).
    @property
    def embedding_layernorm(self) -> bool:
        return self.embedding_norm in ("text", "separate")

    @property
    def class_token(self) -> bool:
        return True

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def box_feature_dim(self) -> int:
        """Width of the box features the box Linear reads (0: no box input)."""
        return {"none": 0, "linear": self.visual_pos_dim, "uniter": 7}[self.box_embedding]


FUSION_TYPES = ("co_attention", "merge")
CO_ATTENTION_ORDERS = ("cross_first", "self_first")
FUSED_POOLINGS = ("pooler", "first")
IMAGE_EMBED_POOLINGS = ("first", "mean")
REGION_LOSSES = ("obj", "attr", "feat")
FUSION_LOSSES = ("itc", "itm", "mlm", "mim", "vqa")

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


@strict
class VLPFusionConfig(PreTrainedConfig):
    r"""A text encoder, an image encoder and fusion layers over both (LXMERT, ViLBERT, ALBEF, METER, BridgeTower).

    Towers. `text_config` (a `VLPTextConfig`, bidirectional) is the unimodal text encoder: `num_hidden_layers` text
    layers before fusion. `vision_config` (a `VLPVisionConfig`) is the unimodal image encoder. With
    `visual_input="patches"` it is a ViT on `pixel_values` (`final_norm` "all" or "none": every token goes on to the
    fusion). With `visual_input="regions"` the image is a set of detector regions, `visual_feats`
    `(B, N, visual_feat_dim)` with boxes `visual_pos` `(B, N, visual_pos_dim)`, embedded as LXMERT does (LayerNorm
    of a projection of the features and of the boxes, averaged); only the transformer fields of `vision_config`
    are read then (`num_hidden_layers` = region self-attention layers, LXMERT's relation layers; may be 0).

    Fusion. `fusion_type="co_attention"`: each of `num_fusion_layers` layers updates both streams, each attending
    to itself and to the other stream's layer input (ViLBERT, LXMERT, METER). `co_attention_order="cross_first"` is
    LXMERT's cross-attention -> self-attention -> FFN, "self_first" METER's self -> cross -> FFN.
    `share_cross_attention` uses one cross-attention module in both directions (LXMERT; equal widths only).
    `fusion_type="merge"`: text layers with self-attention, cross-attention to the image tokens and FFN, the image
    stream unchanged (ALBEF, BLIP's ITM encoder). Each stream's fusion layers take that stream's tower settings
    (width, heads, FFN, activation); cross-attention projects keys and values from the other stream's width, so
    the two widths may differ (ViLBERT). `fusion_pre_norm` overrides the towers' norm placement in the fusion
    layers (None keeps it).

    Outputs. `fused_pooling` reads the fused text [CLS]: "pooler" through BERT's dense + tanh (LXMERT) or "first"
    as is (ALBEF). ITC: the unimodal states' first token (`image_embed_pooling="first"`; "mean" averages the image
    tokens, for regions without a summary token) projected to `projection_dim` (None: no ITC head, as LXMERT) with
    a learned temperature `exp(logit_scale)` clamped to `logit_scale_max`.

    Heads. MLM is tied to the word embeddings (`tie_word_embeddings`). Region inputs get LXMERT's region heads,
    `region_losses` of "obj" (`num_object_labels` classes), "attr" (`num_attribute_labels`) and "feat" (feature
    regression), each loss scaled by `visual_loss_normalizer` as LXMERT; pixel inputs a masked-patch regression
    head. `num_labels` answers for VQA; `pretraining_answer_head` adds that answer head to `ForPreTraining`
    (LXMERT's QA pretraining task). `loss_weights` weigh the losses of `ForPreTraining` into its total.
    """

    model_type = "vlp_fusion"
    sub_configs_defaults = {"vision_config": VLPVisionConfig, "text_config": VLPTextConfig}

    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    visual_input: str = "patches"
    visual_feat_dim: int = 2048
    visual_pos_dim: int = 4
    fusion_type: str = "merge"
    num_fusion_layers: int = 6
    co_attention_order: str = "cross_first"
    share_cross_attention: bool = False
    fusion_pre_norm: bool | None = None
    fused_pooling: str = "first"
    projection_dim: int | None = 256
    image_embed_pooling: str = "first"
    logit_scale_init_value: float = math.log(1 / 0.07)
    logit_scale_max: float | None = 100.0
    num_object_labels: int = 1600
    num_attribute_labels: int = 400
    region_losses: list[str] | None = None
    visual_loss_normalizer: float = 6.67
    pretraining_answer_head: bool = False
    loss_weights: dict[str, float] | None = None
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        self.text_config = _tower_config(_FUSION_BERT_BASE if self.text_config is None else self.text_config, VLPTextConfig)
        self.vision_config = _tower_config(
            _VIT_B_16 if self.vision_config is None else self.vision_config, VLPVisionConfig
        )
        if self.region_losses is None:
            self.region_losses = list(REGION_LOSSES)
        self.region_losses = list(self.region_losses)
        self.loss_weights = {**dict.fromkeys(FUSION_LOSSES, 1.0), **(self.loss_weights or {})}
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        _check_choice("visual_input", self.visual_input, VISUAL_INPUTS)
        _check_choice("fusion_type", self.fusion_type, FUSION_TYPES)
        _check_choice("co_attention_order", self.co_attention_order, CO_ATTENTION_ORDERS)
        _check_choice("fused_pooling", self.fused_pooling, FUSED_POOLINGS)
        _check_choice("image_embed_pooling", self.image_embed_pooling, IMAGE_EMBED_POOLINGS)
        for name in self.region_losses:
            _check_choice("region_losses[...]", name, REGION_LOSSES)
        unknown = sorted(set(self.loss_weights) - set(FUSION_LOSSES))
        if unknown:
            raise ValueError(f"`loss_weights` has unknown losses {unknown}; known: {FUSION_LOSSES}.")
        text, vision = self.text_config, self.vision_config
        towers = (("text_config", text, VLPTextConfig), ("vision_config", vision, VLPVisionConfig))
        for name, tower, tower_class in towers:
            if tower.model_type != tower_class.model_type:
                raise ValueError(
                    f"`{name}` must be a {tower_class.__name__} (model_type {tower_class.model_type!r}) for a fusion "
                    f"model, got model_type {tower.model_type!r}."
                )
        if text.causal:
            raise ValueError("The fusion text encoder is bidirectional: `text_config.causal` must be False.")
        if vision.final_norm == "pooled":
            raise ValueError(
                "`vision_config.final_norm='pooled'` normalises a pooled token only, but a fusion model passes every "
                "image token on: use 'all' (or 'none')."
            )
        if self.num_fusion_layers < 0:
            raise ValueError(f"`num_fusion_layers` must be >= 0, got {self.num_fusion_layers}.")
        if self.share_cross_attention:
            if self.fusion_type != "co_attention":
                raise ValueError("`share_cross_attention=True` needs `fusion_type='co_attention'`.")
            if (text.hidden_size, text.num_attention_heads) != (vision.hidden_size, vision.num_attention_heads):
                raise ValueError(
                    "`share_cross_attention=True` needs equal text and vision widths and heads, got "
                    f"{text.hidden_size}/{text.num_attention_heads} and {vision.hidden_size}/"
                    f"{vision.num_attention_heads}."
                )
        if self.projection_dim is not None and self.projection_dim < 1:
            raise ValueError(
                f"`projection_dim` must be a positive int or None (no ITC head), got {self.projection_dim}."
            )

    @property
    def num_image_tokens(self) -> int | None:
        """Image tokens of a patch model (patches + class token); None for regions (set by the input)."""
        if self.visual_input == "regions":
            return None
        return self.vision_config.num_patches + int(self.vision_config.class_token)


CAPTIONING_LOSSES = ("lm", "itc")

# The towers of `VLPCaptioningConfig()`: BLIP's captioning base (ViT-B/16 at 384px, a 12-layer BERT decoder whose
# every layer cross-attends to the image; [DEC] = 30522 starts a caption, [SEP] = 102 ends it).
_BLIP_VISION = dict(_VIT_B_16, image_size=384, layer_norm_eps=1e-5)
_BLIP_TEXT = dict(
    vocab_size=30524, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=512, type_vocab_size=0, hidden_act="gelu", layer_norm_eps=1e-12, pre_norm=False,
    causal=True, embedding_layernorm=True, final_layernorm=False, pooling="eos", pad_token_id=0,
    bos_token_id=30522, eos_token_id=102,
)  # fmt: skip


@strict
class VLPCaptioningConfig(PreTrainedConfig):
    r"""An image encoder and a causal text decoder that cross-attends to the image tokens (BLIP's captioner, CoCa).

    Towers. `vision_config` (a `VLPVisionConfig`) encodes the image; every one of its tokens goes to the decoder, so
    its `final_norm` is "all" or "none". `text_config` (a `VLPTextConfig` with `causal=True`) is the decoder: its
    `num_hidden_layers` layers are `num_unimodal_layers` text-only layers (CoCa's unimodal text encoder; 0 for BLIP)
    followed by multimodal layers, of which every `cross_attention_every`-th (1: all, BLIP) has a cross-attention to
    the image tokens. `text_config.final_layernorm` puts a LayerNorm on the decoder output (pre-norm decoders).

    Head. `lm_head_transform=True` is BERT's prediction head (dense + activation + LayerNorm, then the vocabulary
    decoder with a bias; BLIP); False a plain linear layer without bias (CoCa, GPT-style). With
    `tie_word_embeddings` the vocabulary decoder shares the decoder's word embeddings.

    Tokens. A caption is `decoder_start_token_id` (None: `text_config.bos_token_id`), the words, then
    `text_config.eos_token_id`; padding is `text_config.pad_token_id`. `generate()` starts from
    `decoder_start_token_id` when given no prompt and stops at the eos token.

    Losses. The LM loss is next-token cross-entropy with `label_smoothing`. With `projection_dim` set, the model
    also has CoCa's contrastive head: the image tower's pooled token and the unimodal text state at the first eos
    (`text_config.pooling`) projected to `projection_dim`, with a learned temperature `exp(logit_scale)` clamped to
    `logit_scale_max`; None (BLIP's captioner) has no contrastive head. `loss_weights` weigh "lm" and "itc" into the
    total `loss` of `VLPForConditionalGeneration`.
    """

    model_type = "vlp_captioning"
    sub_configs_defaults = {"vision_config": VLPVisionConfig, "text_config": VLPTextConfig}

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    num_unimodal_layers: int = 0
    cross_attention_every: int = 1
    lm_head_transform: bool = True
    projection_dim: int | None = None
    projection_bias: bool = False
    logit_scale_init_value: float = 2.6592
    logit_scale_max: float | None = 100.0
    decoder_start_token_id: int | None = None
    label_smoothing: float = 0.0
    loss_weights: dict[str, float] | None = None
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        self.vision_config = _tower_config(_BLIP_VISION if self.vision_config is None else self.vision_config, VLPVisionConfig)
        self.text_config = _tower_config(_BLIP_TEXT if self.text_config is None else self.text_config, VLPTextConfig)
        self.loss_weights = {**dict.fromkeys(CAPTIONING_LOSSES, 1.0), **(self.loss_weights or {})}
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        text, vision = self.text_config, self.vision_config
        for name, tower, tower_class in (("text_config", text, VLPTextConfig), ("vision_config", vision, VLPVisionConfig)):
            if tower.model_type != tower_class.model_type:
                raise ValueError(
                    f"`{name}` must be a {tower_class.__name__} (model_type {tower_class.model_type!r}) for a "
                    f"captioning model, got model_type {tower.model_type!r}."
                )
        if not text.causal:
            raise ValueError("The captioning text decoder is causal: `text_config.causal` must be True.")
        if vision.final_norm == "pooled":
            raise ValueError(
                "`vision_config.final_norm='pooled'` normalises a pooled token only, but the decoder reads every "
                "image token: use 'all' (or 'none')."
            )
        if not 0 <= self.num_unimodal_layers < text.num_hidden_layers:
            raise ValueError(
                f"`num_unimodal_layers` must be in [0, text_config.num_hidden_layers={text.num_hidden_layers}) so that "
                f"at least one layer cross-attends to the image, got {self.num_unimodal_layers}."
            )
        if self.cross_attention_every < 1:
            raise ValueError(f"`cross_attention_every` must be >= 1, got {self.cross_attention_every}.")
        if self.projection_dim is not None:
            if self.projection_dim < 1:
                raise ValueError(
                    f"`projection_dim` must be a positive int or None (no contrastive head), got {self.projection_dim}."
                )
            if self.num_unimodal_layers < 1:
                raise ValueError(
                    "A contrastive head (`projection_dim` set) reads the unimodal text state: `num_unimodal_layers` "
                    "must be >= 1."
                )
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"`label_smoothing` must be in [0, 1), got {self.label_smoothing}.")
        unknown = sorted(set(self.loss_weights) - set(CAPTIONING_LOSSES))
        if unknown:
            raise ValueError(f"`loss_weights` has unknown losses {unknown}; known: {CAPTIONING_LOSSES}.")
        if self.decoder_start_id is None:
            raise ValueError("A caption needs a start token: set `decoder_start_token_id` or `text_config.bos_token_id`.")

    @property
    def decoder_start_id(self) -> int | None:
        """The token a caption starts with: `decoder_start_token_id`, else the text config's bos."""
        return self.decoder_start_token_id if self.decoder_start_token_id is not None else self.text_config.bos_token_id

    def has_cross_attention(self, layer_index: int) -> bool:
        """Whether decoder layer `layer_index` cross-attends to the image tokens."""
        multimodal_index = layer_index - self.num_unimodal_layers
        return multimodal_index >= 0 and multimodal_index % self.cross_attention_every == 0


# --------------------------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------------------------

_CLIP_TEXT = dict(
    vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
    max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, causal=True, pooling="eos",
    pad_token_id=1, bos_token_id=49406, eos_token_id=49407, initializer_style="clip",
)  # fmt: skip
_CLIP_VISION = dict(
    image_size=224, patch_size=32, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, hidden_act="quick_gelu", layer_norm_eps=1e-5, class_token=True, patch_bias=False,
    pre_layernorm=True, final_norm="pooled", pooling="cls", initializer_style="clip",
)  # fmt: skip
_SIGLIP_VISION = dict(
    image_size=224, patch_size=16, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, class_token=False, patch_bias=True,
    pre_layernorm=False, final_norm="all", pooling="attention",
)  # fmt: skip
_SIGLIP_TEXT = dict(
    vocab_size=32000, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=64, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, causal=False, pooling="last",
    pad_token_id=1, bos_token_id=None, eos_token_id=1,
)  # fmt: skip
_SIGLIP_HEAD = dict(
    projection_dim=768, vision_projection="none", text_projection="linear", projection_bias=True,
    loss_type="sigmoid", logit_scale_init_value=math.log(10.0), logit_bias_init_value=-10.0, logit_scale_max=None,
)  # fmt: skip

_BERT_BASE = dict(
    vocab_size=30522, max_position_embeddings=512, type_vocab_size=2, hidden_size=768, intermediate_size=3072,
    num_hidden_layers=12, num_attention_heads=12, hidden_act="gelu", layer_norm_eps=1e-12, hidden_dropout=0.1,
    attention_dropout=0.1, pre_norm=False, pad_token_id=0,
)  # fmt: skip
_SMALL = dict(
    vocab_size=1000, max_position_embeddings=32, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
    num_attention_heads=4, layer_norm_eps=1e-12, pre_norm=True, embedding_norm="text", pad_token_id=0,
)  # fmt: skip

_LXMERT_TEXT = dict(_FUSION_BERT_BASE, num_hidden_layers=9, hidden_dropout=0.1, attention_dropout=0.1)
# LXMERT's region stream: BERT layers on region embeddings (image fields unused).
_LXMERT_REGIONS = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=5, num_attention_heads=12, hidden_act="gelu",
    layer_norm_eps=1e-12, hidden_dropout=0.1, attention_dropout=0.1, pre_norm=False, pre_layernorm=False,
    final_norm="none",
)  # fmt: skip
_CLIP_VIT_B_16 = dict(
    _VIT_B_16, hidden_act="quick_gelu", layer_norm_eps=1e-5, patch_bias=False, pre_layernorm=True
)
_ROBERTA_BASE = dict(
    _FUSION_BERT_BASE, vocab_size=50265, num_hidden_layers=12, max_position_embeddings=514, type_vocab_size=1,
    layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2,
)  # fmt: skip

PRESETS: dict[str, tuple[type, dict]] = {
    "clip-vit-b-32": (VLPDualEncoderConfig, dict(vision_config=_CLIP_VISION, text_config=_CLIP_TEXT)),
    "clip-vit-b-16": (
        VLPDualEncoderConfig,
        dict(vision_config={**_CLIP_VISION, "patch_size": 16}, text_config=_CLIP_TEXT),
    ),
    "clip-vit-l-14": (
        VLPDualEncoderConfig,
        dict(
            vision_config={**_CLIP_VISION, "patch_size": 14, "hidden_size": 1024, "intermediate_size": 4096,
                           "num_hidden_layers": 24, "num_attention_heads": 16},
            text_config={**_CLIP_TEXT, "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12},
            projection_dim=768,
        ),
    ),  # fmt: skip
    "siglip-b-16": (VLPDualEncoderConfig, dict(vision_config=_SIGLIP_VISION, text_config=_SIGLIP_TEXT, **_SIGLIP_HEAD)),
    # Trains in minutes on a laptop CPU: the default of `vlp pretrain`. The text vocabulary is set by the tokenizer.
    # Width 128 rather than 192: on 2 CPU cores twice the steps in the same time retrieve better (R@1 40 vs 34).
    "dual-small": (
        VLPDualEncoderConfig,
        dict(
            vision_config={**_CLIP_VISION, "image_size": 64, "patch_size": 8, "hidden_size": 128,
                           "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 4,
                           "hidden_act": "gelu"},
            text_config={**_CLIP_TEXT, "vocab_size": 1000, "hidden_size": 128, "intermediate_size": 512,
                         "num_hidden_layers": 4, "num_attention_heads": 4, "max_position_embeddings": 32,
                         "hidden_act": "gelu", "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3},
            projection_dim=128,
        ),
    ),  # fmt: skip
    # For tests: every code path, seconds to build.
    "dual-tiny": (
        VLPDualEncoderConfig,
        dict(
            vision_config={**_CLIP_VISION, "image_size": 32, "patch_size": 8, "hidden_size": 32,
                           "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4},
            text_config={**_CLIP_TEXT, "vocab_size": 99, "hidden_size": 32, "intermediate_size": 64,
                         "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 16,
                         "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2},
            projection_dim=16,
        ),
    ),  # fmt: skip
    # dandelin/vilt-b32-mlm: BERT's vocabulary and 40 text positions, ViT-B/32 blocks over 384px patch grids.
    "vilt-b-32": (
        VLPUnifiedConfig,
        dict(
            vocab_size=30522, max_position_embeddings=40, type_vocab_size=2, visual_input="patches", image_size=384,
            patch_size=32, patch_bias=True, max_image_length=200, embedding_norm="text", hidden_size=768,
            intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, hidden_act="gelu",
            layer_norm_eps=1e-12, pre_norm=True, vqa_head="pooled_mlp", vqa_loss="bce", pad_token_id=0,
        ),
    ),  # fmt: skip
    # uclanlp/visualbert-vqa-coco-pre: BERT-base over 2048-d detector features, no box input.
    "visualbert-base": (
        VLPUnifiedConfig,
        dict(
            **_BERT_BASE, visual_input="regions", visual_feat_dim=2048, box_embedding="none", max_regions=100,
            embedding_norm="joint", vqa_head="text_token", vqa_loss="kl",
        ),
    ),  # fmt: skip
    # UNITER-base: BERT-base, 2048-d features, 7-d box features, LayerNorms on features, boxes and the visual sum;
    # region classification over Visual Genome's 1600 classes + background.
    "uniter-base": (
        VLPUnifiedConfig,
        dict(
            **_BERT_BASE, visual_input="regions", visual_feat_dim=2048, box_embedding="uniter",
            visual_feat_layernorm=True, visual_pos_layernorm=True, max_regions=100, embedding_norm="separate",
            num_object_labels=1601, vqa_head="pooled_mlp", vqa_loss="bce",
        ),
    ),  # fmt: skip
    # CPU default of `vlp pretrain --family unified`; the vocabulary size is set by the tokenizer.
    "unified-small": (
        VLPUnifiedConfig,
        dict(**_SMALL, visual_input="patches", image_size=64, patch_size=8, max_image_length=-1),
    ),
    "unified-small-regions": (
        VLPUnifiedConfig,
        dict(
            **{**_SMALL, "embedding_norm": "separate"}, visual_input="regions", visual_feat_dim=64,
            box_embedding="linear", visual_pos_dim=4, visual_feat_layernorm=True, visual_pos_layernorm=True,
            max_regions=36, num_object_labels=5,  # the 5 shape classes of the embedded scenes' regions
        ),
    ),  # fmt: skip
    # For tests: every code path, seconds to build.
    "unified-tiny": (
        VLPUnifiedConfig,
        dict(
            vocab_size=99, max_position_embeddings=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, visual_input="patches", image_size=32, patch_size=8, max_image_length=-1,
            pre_norm=True, embedding_norm="text", pad_token_id=0,
        ),
    ),  # fmt: skip
    # unc-nlp/lxmert-base-uncased: 9 language, 5 relation and 5 cross-modality layers; one cross-attention shared
    # by both directions; no ITC head (projection_dim=None), as the checkpoint has none.
    "lxmert-base": (
        VLPFusionConfig,
        dict(
            text_config=_LXMERT_TEXT, vision_config=_LXMERT_REGIONS, visual_input="regions", visual_feat_dim=2048,
            visual_pos_dim=4, fusion_type="co_attention", num_fusion_layers=5, co_attention_order="cross_first",
            share_cross_attention=True, fused_pooling="pooler", projection_dim=None, image_embed_pooling="mean",
            num_object_labels=1600, num_attribute_labels=400, num_labels=9500, pretraining_answer_head=True,
        ),
    ),  # fmt: skip
    # ViLBERT: BERT-base text (6 text-only layers, then 6 with co-attention), a 1024-wide region stream on 2048-d
    # features + 5-d boxes (x1, y1, x2, y2, area). Co-attention here is METER-ordered; ViLBERT's own layer has no
    # self-attention inside the co-attention block, and its pooled output multiplies both streams'.
    "vilbert-base": (
        VLPFusionConfig,
        dict(
            text_config=dict(_FUSION_BERT_BASE, num_hidden_layers=6, hidden_dropout=0.1, attention_dropout=0.1),
            vision_config=dict(_LXMERT_REGIONS, hidden_size=1024, intermediate_size=1024, num_hidden_layers=0,
                               num_attention_heads=8),
            visual_input="regions", visual_feat_dim=2048, visual_pos_dim=5, fusion_type="co_attention",
            num_fusion_layers=6, co_attention_order="self_first", fused_pooling="pooler", projection_dim=None,
            image_embed_pooling="first", num_object_labels=1601, region_losses=["obj"], num_labels=3129,
        ),
    ),  # fmt: skip
    # ALBEF: ViT-B/16, 6 BERT text layers + 6 merge layers (text self-attention + cross-attention to the image), ITC
    # on 256-d projections with a learned temperature initialised at 0.07 (clamped to [0.001, 0.5] in ALBEF).
    "albef-base": (
        VLPFusionConfig,
        dict(
            text_config=_FUSION_BERT_BASE, vision_config=_VIT_B_16, visual_input="patches", fusion_type="merge",
            num_fusion_layers=6, fused_pooling="first", projection_dim=256, logit_scale_init_value=math.log(1 / 0.07),
            logit_scale_max=1000.0,
        ),
    ),  # fmt: skip
    # METER (CLIP-ViT-B/16 + RoBERTa-base): 6 post-norm co-attention layers, self-attention first, on both 768-d
    # streams; its [CLS] of the two streams are pooled and concatenated for ITM, here the text pooler alone.
    "meter-base": (
        VLPFusionConfig,
        dict(
            text_config=_ROBERTA_BASE, vision_config=_CLIP_VIT_B_16, visual_input="patches",
            fusion_type="co_attention", num_fusion_layers=6, co_attention_order="self_first", fusion_pre_norm=False,
            fused_pooling="pooler", projection_dim=None, num_labels=3129,
        ),
    ),  # fmt: skip
    # The CPU default of `vlp pretrain --family fusion`; the text vocabulary is set by the tokenizer.
    "fusion-small": (
        VLPFusionConfig,
        dict(
            text_config=dict(_FUSION_BERT_BASE, vocab_size=1000, hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=32, pad_token_id=0, bos_token_id=2,
                             eos_token_id=3),
            vision_config=dict(_VIT_B_16, image_size=64, patch_size=8, hidden_size=128, intermediate_size=512,
                               num_hidden_layers=2, num_attention_heads=4),
            visual_input="patches", fusion_type="merge", num_fusion_layers=2, fused_pooling="first",
            projection_dim=128,
        ),
    ),  # fmt: skip
    # For tests: every code path, milliseconds to run.
    "fusion-tiny": (
        VLPFusionConfig,
        dict(
            text_config=dict(_FUSION_BERT_BASE, vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=16, pad_token_id=0, bos_token_id=1,
                             eos_token_id=2),
            vision_config=dict(_VIT_B_16, image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                               num_hidden_layers=2, num_attention_heads=4),
            visual_input="patches", visual_feat_dim=24, visual_pos_dim=4, fusion_type="merge", num_fusion_layers=2,
            fused_pooling="first", projection_dim=16, num_object_labels=11, num_attribute_labels=7, num_labels=5,
        ),
    ),  # fmt: skip
    # Salesforce/blip-image-captioning-base: ViT-B/16 at 384px and a 12-layer BERT decoder cross-attending in every
    # layer, BERT's prediction head tied to the word embeddings; no contrastive head in the captioning checkpoint.
    "blip-base": (
        VLPCaptioningConfig,
        dict(vision_config=_BLIP_VISION, text_config=_BLIP_TEXT, lm_head_transform=True, projection_dim=None),
    ),
    # The CPU default for captioning: dual-small's shapes with a 4-layer pre-norm decoder; the vocabulary is set by
    # the tokenizer (bos 2 starts a caption, eos 3 ends it, pad 0).
    "captioning-small": (
        VLPCaptioningConfig,
        dict(
            vision_config=dict(_VIT_B_16, image_size=64, patch_size=8, hidden_size=128, intermediate_size=512,
                               num_hidden_layers=4, num_attention_heads=4),
            text_config={**_CLIP_TEXT, "vocab_size": 1000, "hidden_size": 128, "intermediate_size": 512,
                         "num_hidden_layers": 4, "num_attention_heads": 4, "max_position_embeddings": 32,
                         "hidden_act": "gelu", "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3},
            lm_head_transform=False,
        ),
    ),  # fmt: skip
    # CoCa at CPU scale: 2 unimodal text layers (their eos state is the contrastive text embedding) then 2 layers
    # cross-attending to the image, one checkpoint for ITC and captioning.
    "coca-small": (
        VLPCaptioningConfig,
        dict(
            vision_config=dict(_VIT_B_16, image_size=64, patch_size=8, hidden_size=128, intermediate_size=512,
                               num_hidden_layers=4, num_attention_heads=4),
            text_config={**_CLIP_TEXT, "vocab_size": 1000, "hidden_size": 128, "intermediate_size": 512,
                         "num_hidden_layers": 4, "num_attention_heads": 4, "max_position_embeddings": 32,
                         "hidden_act": "gelu", "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3},
            num_unimodal_layers=2, lm_head_transform=False, projection_dim=128,
        ),
    ),  # fmt: skip
    # For tests: every code path, milliseconds to run.
    "captioning-tiny": (
        VLPCaptioningConfig,
        dict(
            vision_config=dict(_VIT_B_16, image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                               num_hidden_layers=2, num_attention_heads=4),
            text_config={**_CLIP_TEXT, "vocab_size": 99, "hidden_size": 32, "intermediate_size": 64,
                         "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 16,
                         "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2},
            lm_head_transform=False,
        ),
    ),  # fmt: skip
}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def get_preset_config(name: str, **overrides) -> PreTrainedConfig:
    """The config of a named preset. `overrides` replace top-level fields; `vision_config` / `text_config`
    overrides given as dicts are merged into the preset's tower instead of replacing it."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; known presets: {', '.join(preset_names())}.")
    config_class, fields = PRESETS[name]
    fields = copy.deepcopy(fields)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(fields.get(key), dict):
            fields[key].update(value)
        else:
            fields[key] = value
    return config_class(**fields)


__all__ = [
    "VLPVisionConfig",
    "VLPTextConfig",
    "VLPDualEncoderConfig",
    "VLPUnifiedConfig",
    "VLPFusionConfig",
    "VLPCaptioningConfig",
    "PRESETS",
    "get_preset_config",
    "preset_names",
]
