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
CO_ATTENTION_ORDERS = ("cross_first", "self_first", "cross_ffn_first")
FUSED_POOLINGS = ("pooler", "first", "text_image_product", "text_image_concat")
TWO_STREAM_POOLINGS = ("text_image_product", "text_image_concat")
REGION_EMBEDDING_NORMS = ("each", "sum")
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
    LXMERT's cross-attention -> self-attention -> FFN, "self_first" METER's self -> cross -> FFN, "cross_ffn_first"
    ViLBERT's co-attention block (cross-attention -> its own FFN, `BertConnectionLayer`) then a plain layer (self-
    attention -> FFN, `BertLayer` / `BertImageLayer`); its cross-attention works at `co_attention_hidden_size` with
    `co_attention_num_heads` heads (ViLBERT's `bi_hidden_size` / `bi_num_attention_heads`; None: the query stream's).
    `cross_modal_transform` maps each unimodal stream by a Linear before the fusion and `fusion_token_type_embeddings`
    adds a learned type embedding (0 text, 1 image) to both streams there (METER's `cross_modal_*_transform` and
    `token_type_embeddings`; equal widths). `fusion_hidden_act` and `fusion_layer_norm_eps` override the towers'
    activation and LayerNorm eps in the co-attention layers (METER builds both streams' from one BERT config: gelu,
    1e-12); None keeps the tower's; `fusion_dropout` sets their hidden and attention dropout likewise (METER: 0.1).
    `share_cross_attention` uses one cross-attention module in both directions (LXMERT; equal widths only).
    `fusion_type="merge"`: text layers with self-attention, cross-attention to the image tokens and FFN, the image
    stream unchanged (ALBEF, BLIP's ITM encoder). `share_text_layers` makes the text encoder's own layers the merge
    layers, with cross-attention added, as BLIP's text encoder: ITC reads them run without the image, ITM with it
    (the unimodal text state is then the text embeddings; `num_fusion_layers` must be 0). Each stream's fusion
    layers take that stream's tower settings
    (width, heads, FFN, activation); cross-attention projects keys and values from the other stream's width, so
    the two widths may differ (ViLBERT). `fusion_pre_norm` overrides the towers' norm placement in the fusion
    layers (None keeps it).

    Outputs. `fused_pooling` reads the fused text [CLS]: "pooler" through BERT's dense + tanh (LXMERT) or "first"
    as is (ALBEF); or both streams' first tokens: "text_image_product" multiplies ReLU(dense) of each, of width
    `co_attention_hidden_size` (ViLBERT's `t_pooler` * `v_pooler`), "text_image_concat" concatenates BERT's pooler of
    each (METER's `cls_feats`). `fused_pooled_size` is the width of that output, which the ITM and VQA heads read.
    Regions are embedded as LayerNorm(features) + LayerNorm(boxes) averaged (`region_embedding_norm="each"`, LXMERT)
    or as one LayerNorm of their sum ("sum", ViLBERT's `BertImageEmbeddings`). ITC: the unimodal states' first token (`image_embed_pooling="first"`; "mean" averages the image
    tokens, for regions without a summary token) projected to `projection_dim` (None: no ITC head, as LXMERT) with
    a learned temperature `exp(logit_scale)` clamped to `logit_scale_max`.

    Heads. MLM is tied to the word embeddings (`tie_word_embeddings`). Region inputs get LXMERT's region heads,
    `region_losses` of "obj" (`num_object_labels` classes), "attr" (`num_attribute_labels`) and "feat" (feature
    regression), each loss scaled by `visual_loss_normalizer` as LXMERT; pixel inputs a masked-patch regression
    head. `num_labels` answers for VQA, by LXMERT's MLP on `pooler_output` (Linear to `answer_head_size`, None:
    twice its input; GELU then LayerNorm, or LayerNorm then GELU with `answer_head_norm_first`: METER's
    `vqa_classifier`); `pretraining_answer_head` adds that answer head to `ForPreTraining` (LXMERT's QA pretraining
    task). `loss_weights` weigh the losses of `ForPreTraining` into its total.
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
    co_attention_hidden_size: int | None = None
    co_attention_num_heads: int | None = None
    share_cross_attention: bool = False
    share_text_layers: bool = False
    fusion_pre_norm: bool | None = None
    fusion_hidden_act: str | None = None
    fusion_layer_norm_eps: float | None = None
    fusion_dropout: float | None = None
    cross_modal_transform: bool = False
    fusion_token_type_embeddings: bool = False
    fused_pooling: str = "first"
    region_embedding_norm: str = "each"
    projection_dim: int | None = 256
    image_embed_pooling: str = "first"
    logit_scale_init_value: float = math.log(1 / 0.07)
    logit_scale_max: float | None = 100.0
    num_object_labels: int = 1600
    num_attribute_labels: int = 400
    region_losses: list[str] | None = None
    visual_loss_normalizer: float = 6.67
    pretraining_answer_head: bool = False
    answer_head_size: int | None = None
    answer_head_norm_first: bool = False
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
        _check_choice("region_embedding_norm", self.region_embedding_norm, REGION_EMBEDDING_NORMS)
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
        self._check_co_attention_options()
        if self.answer_head_size is not None and self.answer_head_size < 1:
            raise ValueError(f"`answer_head_size` must be a positive int or None, got {self.answer_head_size}.")
        if self.share_text_layers and (self.fusion_type != "merge" or self.num_fusion_layers != 0):
            raise ValueError(
                "`share_text_layers=True` (BLIP) fuses in the text encoder's own layers: it needs "
                f"`fusion_type='merge'` and `num_fusion_layers=0`, got {self.fusion_type!r} and {self.num_fusion_layers}."
            )
        if self.projection_dim is not None and self.projection_dim < 1:
            raise ValueError(
                f"`projection_dim` must be a positive int or None (no ITC head), got {self.projection_dim}."
            )

    def _check_co_attention_options(self):
        text, vision = self.text_config, self.vision_config
        two_stream = self.fused_pooling in TWO_STREAM_POOLINGS
        co_attention = self.fusion_type == "co_attention"
        co_attention_only = {
            f"fused_pooling={self.fused_pooling!r}": two_stream,
            **{name: bool(getattr(self, name)) for name in ("cross_modal_transform", "fusion_token_type_embeddings")},
            **{
                name: getattr(self, name) is not None
                for name in ("fusion_hidden_act", "fusion_layer_norm_eps", "fusion_dropout")
            },
        }
        given = [f"`{name}`" for name, is_set in co_attention_only.items() if is_set]
        if not co_attention and given:
            raise ValueError(
                f"{', '.join(given)}: options of the co-attention layers and of the image stream they fuse, which "
                "need `fusion_type='co_attention'`."
            )
        vilbert = co_attention and self.co_attention_order == "cross_ffn_first"
        if self.co_attention_num_heads is not None and not vilbert:
            raise ValueError("`co_attention_num_heads` is read by `co_attention_order='cross_ffn_first'` only.")
        if self.co_attention_hidden_size is not None and not (vilbert or self.fused_pooling == "text_image_product"):
            raise ValueError(
                "`co_attention_hidden_size` is read by `co_attention_order='cross_ffn_first'` and "
                "`fused_pooling='text_image_product'` only."
            )
        if vilbert and self.share_cross_attention:
            raise ValueError("`co_attention_order='cross_ffn_first'` has one cross-attention per stream: no sharing.")
        for stream in (text, vision) if vilbert else ():
            size = self.co_attention_hidden_size or stream.hidden_size
            heads = self.co_attention_num_heads or stream.num_attention_heads
            if size % heads:
                raise ValueError(f"The co-attention width {size} must be a multiple of its {heads} heads.")
        if self.fusion_token_type_embeddings and text.hidden_size != vision.hidden_size:
            raise ValueError(
                "`fusion_token_type_embeddings` adds one embedding table to both streams: it needs equal text and "
                f"vision widths, got {text.hidden_size} and {vision.hidden_size}."
            )

    @property
    def fused_pooled_size(self) -> int:
        """The width of `pooler_output`, what the ITM and answer heads read."""
        text_width = self.text_config.hidden_size
        if self.fused_pooling == "text_image_concat":
            return text_width + self.vision_config.hidden_size
        if self.fused_pooling == "text_image_product":
            return self.co_attention_hidden_size or text_width
        return text_width

    @property
    def num_image_tokens(self) -> int | None:
        """Image tokens of a patch model (patches + class token); None for regions (set by the input)."""
        if self.visual_input == "regions":
            return None
        return self.vision_config.num_patches + int(self.vision_config.class_token)


__all__ = ["VLPFusionConfig"]
