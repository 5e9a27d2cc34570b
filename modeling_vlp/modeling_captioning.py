"""The captioning family: an image encoder and a causal text decoder cross-attending to the image tokens (BLIP's
captioner, CoCa), trained with next-token prediction and generating with transformers' `GenerationMixin` and a KV
cache (self-attention keys/values grow each step, the image's cross-attention keys/values are computed once)."""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import GenerationMixin
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.modeling_layers import GradientCheckpointingLayer

from .configuration_captioning import VLPCaptioningConfig
from .losses import contrastive_loss, weighted_sum
from .modeling_base import (
    VLPModelOutput,
    VLPPreTrainedModel,
    exp_logit_scale,
    share_attn_implementation,
)
from .modeling_dual_encoder import VLPVisionModel
from .modeling_layers import (
    VLPMLP,
    VLPAttention,
    VLPPredictionHeadTransform,
    VLPTextEmbeddings,
    VLPTransformerLayer,
    additive_padding_mask,
    check_input_ids,
    check_pixel_values,
    decoder_attention_mask,
    pool_text,
)
from .transformers_compat import CacheModelOutput, cache_argument


@dataclass
class VLPCaptioningModelOutput(CacheModelOutput):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, text_hidden_size)`):
        The decoder's output states of the tokens given (after its final LayerNorm, if any).
    cache (`EncoderDecoderCache`, *optional*, returned when `use_cache=True`):
        The decoder's self-attention keys/values of every token so far and its cross-attention keys/values of the
        image tokens; pass it back (`cache=`) with the next tokens only. `past_key_values`, its name before
        transformers 5.24, still reads it.
    image_hidden_states (`torch.FloatTensor` of shape `(batch_size, num_image_tokens, image_token_size)`):
        The vision tower's last hidden state, or with `attentional_pool_queries` the pooler's output (the first token
        is the contrastive one, the decoder attends to the others).
    text_unimodal_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, text_hidden_size)`, *optional*):
        The output of the text-only layers (models with `num_unimodal_layers > 0`); with `text_cls_token` and no
        cache, one position longer: the CLS token's state is last.
    image_embeds / text_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`, *optional*):
        L2-normalised contrastive embeddings (models with `projection_dim`, when no tokens are cached).
    logit_scale (`torch.FloatTensor` of shape `()`, *optional*):
        The temperature `exp(logit_scale)` of the contrastive head.
    hidden_states (`tuple(torch.FloatTensor)`, *optional*):
        The decoder's embeddings output and each layer's output.
    attentions / cross_attentions (`tuple(torch.FloatTensor)`, *optional*):
        Each decoder layer's self-attention weights `(batch_size, heads, query_length, key_length)` and
        cross-attention weights (None for layers without cross-attention); eager attention only.
    """

    last_hidden_state: torch.Tensor | None = None
    cache: Cache | None = None
    image_hidden_states: torch.Tensor | None = None
    text_unimodal_state: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    logit_scale: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor | None, ...] | None = None


@dataclass
class VLPCaptioningOutput(VLPModelOutput, CacheModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*):
        `loss_weights`-weighted sum of `loss_lm` and `loss_itc` (those computed).
    loss_lm (`torch.FloatTensor` of shape `()`, *optional*, returned with `labels`):
        Next-token cross-entropy (with the config's label smoothing) over the label positions that are not ignored.
    loss_itc (`torch.FloatTensor` of shape `()`, *optional*, returned with `return_loss=True` and a contrastive head):
        Contrastive loss of the local batch (`VLPTrainer` gathers the global one).
    logits (`torch.FloatTensor` of shape `(batch_size, sequence_length, vocab_size)`):
        Next-token scores at every position given (only the last `logits_to_keep` ones when it is set).
    cache (`EncoderDecoderCache`, *optional*, returned when `use_cache=True`):
        `captioning_output.cache`, also here because `generate` takes the cache from the output of the model it
        runs (as from every transformers language model's).
    captioning_output (`VLPCaptioningModelOutput`):
        The base model's output: decoder states, image tokens, contrastive embeddings, hidden states, attentions.
    """

    loss: torch.Tensor | None = None
    loss_lm: torch.Tensor | None = None
    loss_itc: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: Cache | None = None
    captioning_output: VLPCaptioningModelOutput | None = None

    # Read-only views of the base output, where `generate(output_hidden_states=True, output_attentions=True,
    # return_dict_in_generate=True)` looks for them on a decoder's output (not fields: nothing is copied).
    @property
    def hidden_states(self) -> tuple[torch.Tensor, ...] | None:
        """`captioning_output.hidden_states`."""
        return self.captioning_output.hidden_states if self.captioning_output is not None else None

    @property
    def attentions(self) -> tuple[torch.Tensor, ...] | None:
        """`captioning_output.attentions`."""
        return self.captioning_output.attentions if self.captioning_output is not None else None


class VLPCaptioningHead(nn.Module):
    """Decoder states -> next-token scores: BERT's prediction head (transform, then a vocabulary decoder with a bias;
    BLIP) or the vocabulary decoder alone, without bias. `decoder.weight` is tied to the word embeddings."""

    def __init__(self, config: VLPCaptioningConfig):
        super().__init__()
        text = config.text_config
        self.transform = (
            VLPPredictionHeadTransform(text.hidden_size, text.hidden_act, text.layer_norm_eps)
            if config.lm_head_transform
            else None
        )
        self.decoder = nn.Linear(text.hidden_size, text.vocab_size, bias=config.lm_head_transform)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.transform is not None:
            hidden_states = self.transform(hidden_states)
        return self.decoder(hidden_states)


class VLPAttentionalPooler(nn.Module):
    """open_clip's `AttentionalPooler` and the LayerNorm its CoCa puts after it (`ln_post`): learned queries
    (LayerNorm'd) attend over the LayerNorm'd image tokens. (B, N, vision width) -> (B, queries, projection_dim)."""

    def __init__(self, config: VLPCaptioningConfig):
        super().__init__()
        vision, width = config.vision_config, config.projection_dim
        self.query = nn.Parameter(torch.zeros(config.attentional_pool_queries, width))
        self.layer_norm_query = nn.LayerNorm(width, eps=vision.layer_norm_eps)
        self.layer_norm_kv = nn.LayerNorm(vision.hidden_size, eps=vision.layer_norm_eps)
        self.attention = VLPAttention(
            vision, hidden_size=width, num_heads=config.attentional_pool_heads, kv_hidden_size=vision.hidden_size,
            qkv_bias=True,
        )  # fmt: skip
        self.post_layernorm = nn.LayerNorm(width, eps=vision.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        query = self.layer_norm_query(self.query).expand(hidden_states.shape[0], -1, -1)
        pooled, _ = self.attention(query, encoder_hidden_states=self.layer_norm_kv(hidden_states))
        return self.post_layernorm(pooled)


class VLPCrossAttentionLayer(GradientCheckpointingLayer):
    """open_clip's cross-attention block (`MultimodalTransformer.cross_attn[i]`), pre-norm and without
    self-attention: x += xattn(ln_cross(x), ln_kv(image)); x += mlp(ln2(x)). Returns what `VLPTransformerLayer` does."""

    def __init__(self, config, kv_hidden_size: int, layer_idx: int | None = None):
        super().__init__()
        hidden_size, eps = config.hidden_size, config.layer_norm_eps
        self.layer_norm_cross = nn.LayerNorm(hidden_size, eps=eps)
        self.layer_norm_kv = nn.LayerNorm(kv_hidden_size, eps=eps)
        self.cross_attn = VLPAttention(config, kv_hidden_size=kv_hidden_size, layer_idx=layer_idx)
        self.layer_norm2 = nn.LayerNorm(hidden_size, eps=eps)
        self.mlp = VLPMLP(hidden_size, config.intermediate_size, config.hidden_act)
        self.dropout = nn.Dropout(getattr(config, "hidden_dropout", 0.0))

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None, **kwargs):
        out, weights = self.cross_attn(
            self.layer_norm_cross(hidden_states), encoder_attention_mask,
            encoder_hidden_states=self.layer_norm_kv(encoder_hidden_states), **kwargs,
        )  # fmt: skip
        hidden_states = hidden_states + self.dropout(out)
        hidden_states = hidden_states + self.dropout(self.mlp(self.layer_norm2(hidden_states)))
        return hidden_states, None, weights


def cls_attention_mask(attention_mask: torch.Tensor, legacy: bool, dtype: torch.dtype) -> torch.Tensor:
    """The causal mask of `L` tokens followed by a CLS token, (B, 1, L + 1, L + 1): keys are the real tokens and the
    CLS ("correct"), or, as open_clip's legacy CoCa mask, those flags shifted right by one (the first position is
    always a key, the CLS is one when the last token is real)."""
    ones = attention_mask.new_ones(attention_mask.shape[0], 1)
    keys = torch.cat([ones, attention_mask] if legacy else [attention_mask, ones], dim=1)
    return additive_padding_mask(keys, dtype, is_causal=True)


class VLPCaptioningDecoder(nn.Module):
    """Token + position embeddings, causal layers (text-only, then with cross-attention to the image) and an
    optional final LayerNorm. Every layer has its `layer_idx` in the KV cache. With `text_cls_token` and no cache,
    a CLS embedding (at the next position) follows the tokens through the text-only layers, then leaves."""

    def __init__(self, config: VLPCaptioningConfig):
        super().__init__()
        text = config.text_config
        self.config = text
        self.num_unimodal_layers = config.num_unimodal_layers
        self.embeddings = VLPTextEmbeddings(text)
        self.cls_mode = config.text_cls_token
        self.cls_embedding = nn.Parameter(torch.zeros(text.hidden_size)) if config.text_cls_token else None
        image_size = config.image_token_size
        self.layers = nn.ModuleList(
            [
                VLPCrossAttentionLayer(text, image_size, layer_idx=i)
                if config.separate_cross_attention and config.has_cross_attention(i)
                else VLPTransformerLayer(
                    text,
                    is_causal=True,
                    cross_attention_hidden_size=image_size if config.has_cross_attention(i) else None,
                    layer_idx=i,
                )
                for i in range(text.num_hidden_layers)
            ]
        )
        self.final_layer_norm = (
            nn.LayerNorm(text.hidden_size, eps=text.layer_norm_eps) if text.final_layernorm else nn.Identity()
        )
        self.gradient_checkpointing = False

    def forward(
        self,
        input_ids: torch.Tensor,
        image_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Cache | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> VLPCaptioningModelOutput:
        past_length = cache.get_seq_length() if cache is not None else 0
        query_length = input_ids.shape[1]
        max_positions = self.config.max_position_embeddings
        append_cls = self.cls_embedding is not None and cache is None
        if position_ids is None:
            if past_length + query_length + append_cls > max_positions:
                raise ValueError(
                    f"`input_ids` has {query_length} tokens after {past_length} cached ones{' and a CLS token' * append_cls}"
                    f", more than the decoder's {max_positions} positions (`text_config.max_position_embeddings`)."
                )
            position_ids = torch.arange(past_length, past_length + query_length, device=input_ids.device)[None]
        hidden_states = self.embeddings(input_ids, position_ids=position_ids)
        mask = decoder_attention_mask(
            self.config, attention_mask, query_length, past_length, hidden_states.dtype, hidden_states.device
        )
        unimodal_mask = mask
        if append_cls:
            cls = self.cls_embedding + self.embeddings.position_embedding(position_ids[:, -1:] + 1)
            hidden_states = torch.cat([hidden_states, cls.expand(len(hidden_states), -1, -1).to(hidden_states.dtype)], 1)
            valid = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
            unimodal_mask = cls_attention_mask(valid.to(hidden_states.device), self.cls_mode == "legacy", hidden_states.dtype)
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        self_weights, cross_weights = ((), ()) if output_attentions else (None, None)
        unimodal_state = None
        for index, layer in enumerate(self.layers):
            if index == self.num_unimodal_layers and index > 0:
                unimodal_state = hidden_states
                hidden_states = hidden_states[:, :query_length]  # the CLS token leaves
            layer_mask = unimodal_mask if index < self.num_unimodal_layers else mask
            hidden_states, weights, cross = layer(
                hidden_states, layer_mask, image_hidden_states, None, past_key_values=cache
            )
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                self_weights += (weights,)
                cross_weights += (cross,)
        return VLPCaptioningModelOutput(
            last_hidden_state=self.final_layer_norm(hidden_states),
            cache=cache,
            text_unimodal_state=unimodal_state,
            hidden_states=all_hidden_states,
            attentions=self_weights,
            cross_attentions=cross_weights,
        )


class VLPCaptioningModel(VLPPreTrainedModel):
    """Image encoder (`VLPVisionModel`) + causal text decoder cross-attending to the image tokens (+ CoCa's
    contrastive projections with `projection_dim`). Returns the decoder states; `VLPForConditionalGeneration`
    adds the LM head, the losses and `generate`."""

    config: VLPCaptioningConfig
    config_class = VLPCaptioningConfig
    family_auto_map = {
        "AutoModel": "VLPCaptioningModel",
        "AutoModelForImageTextToText": "VLPForConditionalGeneration",
    }
    input_modalities = ("image", "text")
    _no_split_modules = ["VLPTransformerLayer", "VLPPatchEmbeddings", "VLPTextEmbeddings"]
    _text_embeddings = "decoder.embeddings"

    def __init__(self, config: VLPCaptioningConfig):
        super().__init__(config)
        share_attn_implementation(config)
        self.vision_model = VLPVisionModel._from_config(config.vision_config)
        self.decoder = VLPCaptioningDecoder(config)
        self.visual_projection = self.text_projection = self.logit_scale = self.unimodal_layer_norm = None
        self.attentional_pool = VLPAttentionalPooler(config) if config.attentional_pool_queries is not None else None
        if config.projection_dim is not None:
            text = config.text_config
            self.visual_projection = nn.Linear(config.image_token_size, config.projection_dim, bias=config.projection_bias)
            self.text_projection = nn.Linear(text.hidden_size, config.projection_dim, bias=config.projection_bias)
            self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))
            if text.final_layernorm:
                # The unimodal stack ends where a text encoder would: pre-norm states need their own LayerNorm.
                self.unimodal_layer_norm = nn.LayerNorm(text.hidden_size, eps=text.layer_norm_eps)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self and self.logit_scale is not None:
            init.constant_(self.logit_scale, float(self.config.logit_scale_init_value))
        if isinstance(module, VLPAttentionalPooler):
            init.normal_(module.query, std=module.query.shape[-1] ** -0.5)
        if isinstance(module, VLPCaptioningDecoder) and module.cls_embedding is not None:
            init.normal_(module.cls_embedding, std=0.01)

    def get_image_features(
        self, pixel_values: torch.Tensor | None = None, interpolate_pos_encoding: bool = False, **kwargs
    ) -> torch.Tensor:
        """The image tokens, `(batch_size, num_image_tokens, image_token_size)`: the vision tower's last hidden state
        or its attentional pooler's output (`image_hidden_states`); computed once per `generate` call."""
        check_pixel_values(pixel_values, self.config.vision_config.num_channels)
        hidden = self.vision_model(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True)
        hidden = hidden.last_hidden_state
        return self.attentional_pool(hidden) if self.attentional_pool is not None else hidden

    def get_logit_scale(self) -> torch.Tensor:
        """exp(logit_scale), clamped to `config.logit_scale_max` when set."""
        return exp_logit_scale(self.logit_scale, self.config.logit_scale_max)

    def _pool_image(self, image_hidden_states: torch.Tensor) -> torch.Tensor:
        pooling = self.config.vision_config.pooling
        if pooling == "cls" or self.attentional_pool is not None:
            return image_hidden_states[:, 0]
        if pooling == "mean":
            return image_hidden_states[:, self.vision_model.embeddings.num_prefix_tokens :].mean(dim=1)
        return self.vision_model.head(image_hidden_states)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_hidden_states: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> VLPCaptioningModelOutput:
        r"""
        input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
            Caption tokens starting with the decoder start token; with a `cache`, only the new tokens.
        attention_mask (`torch.LongTensor`, *optional*):
            1 for real tokens, 0 for padding, over the cached and the new tokens `(batch_size, past + sequence_length)`.
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`), or
        image_hidden_states (`torch.FloatTensor` of shape `(batch_size, num_image_tokens, vision_hidden_size)`):
            The images, or their already encoded tokens (`get_image_features`), which skip the vision tower.
        position_ids (`torch.LongTensor`, *optional*):
            Positions of the given tokens; defaults to the positions after the cached ones.
        cache (`Cache`, *optional*), use_cache (`bool`, *optional*):
            The KV cache of the earlier tokens; `use_cache=True` without one starts an `EncoderDecoderCache`. A plain
            `DynamicCache` is wrapped into an `EncoderDecoderCache` (the returned one) so the image keys/values are
            cached too. `past_key_values=`, its name before transformers 5.24, is accepted too.
        """
        cache = cache_argument(cache, kwargs)
        check_input_ids(input_ids, None)
        if image_hidden_states is None:
            if pixel_values is None:
                raise ValueError(
                    "`pixel_values` (or the encoded `image_hidden_states`) is required: the decoder attends to the image."
                )
            image_hidden_states = self.get_image_features(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        elif image_hidden_states.ndim != 3 or image_hidden_states.shape[-1] != self.config.image_token_size:
            raise ValueError(
                "`image_hidden_states` must have shape (batch_size, num_image_tokens, "
                f"{self.config.image_token_size}), got {tuple(image_hidden_states.shape)}."
            )
        if image_hidden_states.shape[0] != input_ids.shape[0]:
            images = "`pixel_values`" if pixel_values is not None else "`image_hidden_states`"
            raise ValueError(
                f"`input_ids` has {input_ids.shape[0]} rows but the images ({images}) number "
                f"{image_hidden_states.shape[0]}; pass one image per caption."
            )
        use_cache = use_cache if use_cache is not None else (cache is not None)
        if use_cache:
            if cache is None:
                cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
            elif not isinstance(cache, EncoderDecoderCache):
                cache = EncoderDecoderCache(cache, DynamicCache())
        else:
            cache = None
        past_length = cache.get_seq_length() if cache is not None else 0

        outputs = self.decoder(
            input_ids,
            image_hidden_states if self.attentional_pool is None else image_hidden_states[:, 1:],
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            output_hidden_states=bool(output_hidden_states or self.config.output_hidden_states),
            output_attentions=bool(output_attentions or self.config.output_attentions),
        )
        outputs.image_hidden_states = image_hidden_states
        if self.config.projection_dim is not None and past_length == 0 and (cache is None or not self.config.text_cls_token):
            text_state = outputs.text_unimodal_state
            if self.config.text_cls_token:
                text_state = text_state[:, -1:]
            if self.unimodal_layer_norm is not None:
                text_state = self.unimodal_layer_norm(text_state)
            text_pooled = text_state[:, 0] if self.config.text_cls_token else pool_text(
                text_state, input_ids, attention_mask, self.config.text_config.pooling,
                self.config.text_config.eos_token_id,
            )  # fmt: skip
            outputs.image_embeds = nn.functional.normalize(
                self.visual_projection(self._pool_image(image_hidden_states)), dim=-1
            )
            outputs.text_embeds = nn.functional.normalize(self.text_projection(text_pooled), dim=-1)
            outputs.logit_scale = self.get_logit_scale()
        return self._output(outputs, return_dict)


class VLPForConditionalGeneration(VLPPreTrainedModel, GenerationMixin):
    """Captioning: `VLPCaptioningModel` + an LM head tied to the word embeddings; next-token loss from `labels` (and
    CoCa's contrastive loss with `return_loss=True`); `generate(pixel_values=...)` writes captions."""

    config: VLPCaptioningConfig
    config_class = VLPCaptioningConfig
    family_auto_map = VLPCaptioningModel.family_auto_map
    input_modalities = ("image", "text")
    # GenerationMixin grows `input_ids`; the image goes in once through `generate(pixel_values=...)`.
    main_input_name = "input_ids"
    _tied_weights_keys = {"lm_head.decoder.weight": "vlp.decoder.embeddings.token_embedding.weight"}
    _output_embeddings = "lm_head.decoder"

    def __init__(self, config: VLPCaptioningConfig):
        super().__init__(config)
        self.vlp = VLPCaptioningModel(config)
        self.lm_head = VLPCaptioningHead(config)
        self.post_init()

    def lm_loss(
        self, logits: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Next-token cross-entropy: position t predicts `labels[:, t + 1]`. Ignored targets: -100, the pad token
        (unless it is also the eos token) and positions where `attention_mask` is 0."""
        if labels.shape != logits.shape[:2]:
            raise ValueError(
                f"`labels` must have the shape of `input_ids` {tuple(logits.shape[:2])}, got {tuple(labels.shape)}."
            )
        text = self.config.text_config
        labels = labels.clone()
        if text.pad_token_id is not None and text.pad_token_id != text.eos_token_id:
            labels = labels.masked_fill(labels == text.pad_token_id, -100)
        if attention_mask is not None and attention_mask.shape == labels.shape:
            labels = labels.masked_fill(attention_mask == 0, -100)
        return nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
            labels[:, 1:].reshape(-1),
            ignore_index=-100,
            label_smoothing=self.config.label_smoothing,
        )

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        image_hidden_states: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        return_loss: bool | None = None,
        logits_to_keep: int = 0,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> VLPCaptioningOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            The caption tokens, usually `input_ids` itself: the model shifts them (the logits at t score token t + 1).
            -100, the pad token and positions with `attention_mask` 0 are ignored.
        return_loss (`bool`, *optional*):
            Also compute the contrastive loss of the local batch (models with `projection_dim`).
        logits_to_keep (`int`, defaults to 0):
            Compute the logits of the last `logits_to_keep` positions only (0: all); generation needs the last one.
        The other arguments are `VLPCaptioningModel.forward`'s.
        """
        if labels is not None:
            use_cache = False
        outputs = self.vlp(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=pixel_values,
            image_hidden_states=image_hidden_states,
            position_ids=position_ids,
            cache=cache_argument(cache, kwargs),
            use_cache=use_cache,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )
        hidden_states = outputs.last_hidden_state
        if logits_to_keep:
            hidden_states = hidden_states[:, -logits_to_keep:]
        logits = self.lm_head(hidden_states)

        losses = {}
        if labels is not None:
            losses["lm"] = self.lm_loss(logits, labels, attention_mask)
        if return_loss and self.config.projection_dim is not None and outputs.image_embeds is not None:
            losses["itc"] = contrastive_loss(
                outputs.image_embeds, outputs.text_embeds, outputs.logit_scale, None, "softmax"
            )
        output = VLPCaptioningOutput(
            loss=weighted_sum(losses, self.config.loss_weights),
            loss_lm=losses.get("lm"),
            loss_itc=losses.get("itc"),
            logits=logits,
            cache=outputs.cache,
            captioning_output=outputs,
        )
        return self._output(output, return_dict)

    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_hidden_states: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        **generate_kwargs,
    ):
        r"""Captions for `pixel_values` (or already encoded `image_hidden_states`), with every `GenerationMixin`
        strategy (greedy, beam search, sampling; `use_cache`). The image is encoded once; its tokens are expanded
        with the beams / returned sequences like any tensor model input.

        input_ids (`torch.LongTensor` of shape `(batch_size, prompt_length)`, *optional*):
            A prompt starting with the decoder start token (left-padded with its `attention_mask` if the rows differ
            in length); None starts every caption from `decoder_start_token_id`.
        Returns what `GenerationMixin.generate` returns: the prompt followed by the generated tokens.
        """
        if image_hidden_states is None:
            if pixel_values is None:
                raise ValueError("`pixel_values` (or the encoded `image_hidden_states`) is required to write a caption.")
            image_hidden_states = self.vlp.get_image_features(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        batch_size = image_hidden_states.shape[0]
        if input_ids is None:
            input_ids = torch.full(
                (batch_size, 1), self.config.decoder_start_id, dtype=torch.long, device=image_hidden_states.device
            )
        check_input_ids(input_ids, attention_mask)
        if input_ids.shape[0] != batch_size:
            raise ValueError(
                f"`input_ids` has {input_ids.shape[0]} prompts but there are {batch_size} images; pass one prompt per image."
            )
        max_positions = self.config.text_config.max_position_embeddings
        prompt_length = input_ids.shape[1]
        max_new_tokens = generate_kwargs.get("max_new_tokens")
        if max_new_tokens is not None and max_new_tokens <= 0:
            raise ValueError(f"`max_new_tokens` must be a positive number of tokens, got {max_new_tokens}.")
        if prompt_length >= max_positions:
            raise ValueError(
                f"`input_ids` has {prompt_length} prompt tokens, but the decoder has {max_positions} positions "
                "(`text_config.max_position_embeddings`): no room is left for a new token."
            )
        if max_new_tokens is not None and prompt_length + max_new_tokens > max_positions:
            raise ValueError(
                f"`max_new_tokens={max_new_tokens}` after a {prompt_length}-token prompt needs "
                f"{prompt_length + max_new_tokens} positions, but the decoder has {max_positions}; ask for at most "
                f"{max_positions - prompt_length} new tokens."
            )
        if max_new_tokens is None:
            max_length = generate_kwargs.get("max_length") or self.generation_config.max_length
            generate_kwargs["max_length"] = min(max_length, max_positions)
        return super().generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            image_hidden_states=image_hidden_states,
            **generate_kwargs,
        )


__all__ = [
    "VLPCaptioningModel",
    "VLPCaptioningModelOutput",
    "VLPCaptioningOutput",
    "VLPForConditionalGeneration",
]
