"""The captioning family's config (BLIP's captioner, CoCa)."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .configuration_vlp import (
    _FUSION_BERT_BASE,
    _VIT_B_16,
    VLPTextConfig,
    VLPVisionConfig,
    _check_heads,
    _tower_config,
    check_own_towers,
)

CAPTIONING_LOSSES = ("lm", "itc")

# The towers of `VLPCaptioningConfig()`: BLIP's captioning base (ViT-B/16 at 384px, a 12-layer BERT decoder whose
# every layer cross-attends to the image; [DEC] = 30522 starts a caption, [SEP] = 102 ends it).
_BLIP_VISION = dict(_VIT_B_16, image_size=384, layer_norm_eps=1e-5)
_BLIP_TEXT = dict(
    _FUSION_BERT_BASE, vocab_size=30524, num_hidden_layers=12, type_vocab_size=0, causal=True, pooling="eos",
    bos_token_id=30522,
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

    open_clip's CoCa (all off by default). `attentional_pool_queries` puts open_clip's attentional pooler on the
    image tokens: that many learned queries (width `projection_dim`, `attentional_pool_heads` heads) attend over them,
    then a LayerNorm; the first query is the contrastive image token, the others are what the decoder attends to.
    `text_cls_token` appends a learned CLS embedding after the tokens (without a KV cache) whose unimodal state is
    the contrastive text state: "correct" lets it see the real tokens and itself, "legacy" reproduces open_clip's
    original mask (shifted by one position; `correct_cls_mask=False`, its pretrained weights). `separate_cross_attention`
    makes the multimodal layers pairs of a causal self-attention layer and a cross-attention-only layer (LayerNorms on
    the queries and on the image tokens, its own MLP), open_clip's `MultimodalTransformer`; the multimodal part then
    has an even number of layers and `cross_attention_every` must be 1.
    """

    model_type = "vlp_captioning"
    # The Trainer's predictions leave out the base model's output a head's output holds (features, not predictions).
    keys_to_ignore_at_inference = ["captioning_output", "cache", "past_key_values"]
    sub_configs_defaults = {"vision_config": VLPVisionConfig, "text_config": VLPTextConfig}

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    num_unimodal_layers: int = 0
    cross_attention_every: int = 1
    separate_cross_attention: bool = False
    attentional_pool_queries: int | None = None
    attentional_pool_heads: int = 8
    text_cls_token: str | None = None
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
        check_own_towers(self, "captioning")
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
        self._validate_open_clip_options()
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

    def _validate_open_clip_options(self):
        if self.separate_cross_attention and (
            self.cross_attention_every != 1 or (self.text_config.num_hidden_layers - self.num_unimodal_layers) % 2
        ):
            raise ValueError(
                "`separate_cross_attention` pairs a self-attention and a cross-attention layer: it needs "
                "`cross_attention_every=1` and an even number of multimodal layers (text_config.num_hidden_layers - "
                "num_unimodal_layers)."
            )
        if self.text_cls_token not in (None, "correct", "legacy"):
            raise ValueError(f"`text_cls_token` must be None, 'correct' or 'legacy', got {self.text_cls_token!r}.")
        if self.attentional_pool_queries is not None:
            if self.projection_dim is None or self.attentional_pool_queries < 2:
                raise ValueError(
                    "`attentional_pool_queries` needs a contrastive head (`projection_dim`, the pooler's width) and "
                    f"at least 2 queries (one contrastive, the rest for the decoder), got {self.attentional_pool_queries}."
                )
            _check_heads(self.projection_dim, self.attentional_pool_heads)

    @property
    def image_token_size(self) -> int:
        """The width of the image tokens the decoder attends to: the pooler's with `attentional_pool_queries`."""
        return self.projection_dim if self.attentional_pool_queries is not None else self.vision_config.hidden_size

    @property
    def decoder_start_id(self) -> int | None:
        """The token a caption starts with: `decoder_start_token_id`, else the text config's bos."""
        return self.decoder_start_token_id if self.decoder_start_token_id is not None else self.text_config.bos_token_id

    def has_cross_attention(self, layer_index: int) -> bool:
        """Whether decoder layer `layer_index` cross-attends to the image tokens."""
        multimodal_index = layer_index - self.num_unimodal_layers
        if self.separate_cross_attention:
            return multimodal_index >= 0 and multimodal_index % 2 == 1
        return multimodal_index >= 0 and multimodal_index % self.cross_attention_every == 0


__all__ = ["VLPCaptioningConfig"]
