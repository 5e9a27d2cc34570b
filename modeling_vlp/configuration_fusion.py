"""The fusion-encoder family's config (LXMERT, ViLBERT, ALBEF, METER, BridgeTower)."""

import math

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .configuration_vlp import (
    _FUSION_BERT_BASE,
    _VIT_B_16,
    VISUAL_INPUTS,
    VLPTextConfig,
    VLPVisionConfig,
    _check_choice,
    _tower_config,
    check_own_towers,
)

FUSION_TYPES = ("co_attention", "merge")
CO_ATTENTION_ORDERS = ("cross_first", "self_first")
FUSED_POOLINGS = ("pooler", "first")
IMAGE_EMBED_POOLINGS = ("first", "mean")
REGION_LOSSES = ("obj", "attr", "feat")
FUSION_LOSSES = ("itc", "itm", "mlm", "mim", "vqa")


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
    # The Trainer's predictions leave out the base model's output a head's output holds (features, not predictions).
    keys_to_ignore_at_inference = ["fusion_output"]
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
        check_own_towers(self, "fusion")
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


__all__ = ["VLPFusionConfig"]
