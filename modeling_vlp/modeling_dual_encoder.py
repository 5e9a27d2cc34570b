"""The dual-encoder family: an image tower and a text tower aligned contrastively (CLIP, SigLIP, ALIGN, LiT)."""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .configuration_vlp import VLPDualEncoderConfig, VLPTextConfig, VLPVisionConfig
from .losses import contrastive_logits, contrastive_loss
from .modeling_base import VLPContrastiveOutput, VLPPreTrainedModel, exp_logit_scale
from .modeling_layers import (
    VLPAttentionPool,
    VLPEncoder,
    VLPPatchEmbeddings,
    VLPTextEmbeddings,
    check_input_ids,
    check_pixel_values,
    masked_mean,
    pool_text,
    self_attention_mask,
)


@dataclass
class VLPDualEncoderOutput(VLPContrastiveOutput):
    r"""
    The fields of `VLPContrastiveOutput` (`loss`: softmax InfoNCE or pairwise sigmoid, by `config.loss_type`;
    `logits_per_image` include the learned bias of the sigmoid loss), and:
    logit_bias (`torch.FloatTensor` of shape `()`, *optional*):
        The learned bias of the sigmoid loss.
    text_model_output / vision_model_output (`BaseModelOutputWithPooling`):
        The towers' outputs; their `pooler_output` holds the projected, not yet normalised, embeddings.
    """

    logit_bias: torch.Tensor | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None


class VLPVisionModel(VLPPreTrainedModel):
    """A ViT: patch embeddings -> (pre-LN) -> transformer -> pooled token (cls / mean / attention probe)."""

    config: VLPVisionConfig
    config_class = VLPVisionConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _input_embed_layer = "patch_embedding"

    def __init__(self, config: VLPVisionConfig):
        super().__init__(config)
        self.embeddings = VLPPatchEmbeddings(config)
        self.pre_layrnorm = (
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.pre_layernorm else nn.Identity()
        )
        self.encoder = VLPEncoder(config)
        self.post_layernorm = (
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
            if config.final_norm != "none"
            else nn.Identity()
        )
        self.head = VLPAttentionPool(config) if config.pooling == "attention" else None
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Normalised images, as the image processor returns them.
        Returns `last_hidden_state` `(batch_size, num_tokens, hidden_size)` and `pooler_output`
        `(batch_size, hidden_size)`.
        """
        check_pixel_values(pixel_values, self.config.num_channels)
        hidden_states = self.embeddings(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        hidden_states = self.pre_layrnorm(hidden_states)
        encoder_outputs = self.encoder(
            hidden_states,
            output_hidden_states=bool(output_hidden_states or self.config.output_hidden_states),
            output_attentions=bool(output_attentions or self.config.output_attentions),
        )
        last_hidden_state = encoder_outputs.last_hidden_state
        if self.config.final_norm == "all":
            last_hidden_state = self.post_layernorm(last_hidden_state)
        if self.config.pooling == "cls":
            pooled = last_hidden_state[:, 0]
        elif self.config.pooling == "mean":
            pooled = last_hidden_state[:, self.embeddings.num_prefix_tokens :].mean(dim=1)
        else:
            pooled = self.head(last_hidden_state)
        if self.config.final_norm == "pooled":
            pooled = self.post_layernorm(pooled)
        output = BaseModelOutputWithPooling(
            last_hidden_state=last_hidden_state,
            pooler_output=pooled,
            hidden_states=encoder_outputs.hidden_states,
            attentions=encoder_outputs.attentions,
        )
        return self._output(output, return_dict)


class VLPTextModel(VLPPreTrainedModel):
    """A transformer text encoder, causal (CLIP) or bidirectional (BERT, SigLIP), pooled by `config.pooling`."""

    config: VLPTextConfig
    config_class = VLPTextConfig
    input_modalities = ("text",)
    _input_embed_layer = "token_embedding"

    def __init__(self, config: VLPTextConfig):
        super().__init__(config)
        self.embeddings = VLPTextEmbeddings(config)
        self.encoder = VLPEncoder(config, is_causal=config.causal)
        self.final_layer_norm = (
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.final_layernorm else nn.Identity()
        )
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        r"""
        input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`), attention_mask (same shape, 1 for
        real tokens). Returns `last_hidden_state` `(batch_size, sequence_length, hidden_size)` (after the final
        LayerNorm) and `pooler_output` `(batch_size, hidden_size)`.
        """
        check_input_ids(input_ids, attention_mask)
        hidden_states = self.embeddings(input_ids, token_type_ids=token_type_ids, position_ids=position_ids)
        mask = self_attention_mask(
            self.config, attention_mask, input_ids.shape[1], hidden_states.dtype, hidden_states.device,
            self.config.causal,
        )  # fmt: skip
        encoder_outputs = self.encoder(
            hidden_states,
            mask,
            output_hidden_states=bool(output_hidden_states or self.config.output_hidden_states),
            output_attentions=bool(output_attentions or self.config.output_attentions),
        )
        last_hidden_state = self.final_layer_norm(encoder_outputs.last_hidden_state)
        pooled = pool_text(last_hidden_state, input_ids, attention_mask, self.config.pooling, self.config.eos_token_id)
        output = BaseModelOutputWithPooling(
            last_hidden_state=last_hidden_state,
            pooler_output=pooled,
            hidden_states=encoder_outputs.hidden_states,
            attentions=encoder_outputs.attentions,
        )
        return self._output(output, return_dict)


def _build_tower(config: PreTrainedConfig, own_class: type) -> nn.Module:
    # Compared by model_type: under remote code the config class may come from another copy of the module.
    if config.model_type == own_class.config_class.model_type:
        return own_class._from_config(config)
    return AutoModel.from_config(config)


class VLPDualEncoderModel(VLPPreTrainedModel):
    """Image tower + text tower + projections + a learned temperature (and bias, for the sigmoid loss).

    Either tower may be any transformers model (`from_vision_text_pretrained`), pooled by
    `config.foreign_vision_pooling` / `config.foreign_text_pooling`.
    """

    config: VLPDualEncoderConfig
    config_class = VLPDualEncoderConfig
    # The zero-shot image classification pipeline loads through its own Auto class.
    family_auto_map = {
        "AutoModel": "VLPDualEncoderModel",
        "AutoModelForZeroShotImageClassification": "VLPDualEncoderModel",
    }
    input_modalities = ("image", "text")

    def __init__(
        self,
        config: VLPDualEncoderConfig,
        vision_model: nn.Module | None = None,
        text_model: nn.Module | None = None,
    ):
        r"""`vision_model` / `text_model`: already built (e.g. pretrained) towers to use instead of fresh ones."""
        super().__init__(config)
        self.vision_model = vision_model if vision_model is not None else _build_tower(config.vision_config, VLPVisionModel)
        self.text_model = text_model if text_model is not None else _build_tower(config.text_config, VLPTextModel)
        self.vision_embed_dim = config.vision_config.hidden_size
        self.text_embed_dim = config.text_config.hidden_size
        self.visual_projection = self._projection(config.vision_projection, self.vision_embed_dim)
        self.text_projection = self._projection(config.text_projection, self.text_embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))
        self.logit_bias = (
            nn.Parameter(torch.tensor(float(config.logit_bias_init_value or 0.0)))
            if config.loss_type == "sigmoid"
            else None
        )
        self.post_init()

    def _projection(self, kind: str, width: int) -> nn.Module:
        if kind == "none":
            return nn.Identity()
        return nn.Linear(width, self.config.projection_dim, bias=self.config.projection_bias)

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self:
            for projection, width in ((self.visual_projection, self.vision_embed_dim), (self.text_projection, self.text_embed_dim)):
                if isinstance(projection, nn.Linear):
                    init.normal_(projection.weight, std=width**-0.5 * self.config.initializer_factor)
            init.constant_(self.logit_scale, float(self.config.logit_scale_init_value))
            if self.logit_bias is not None:
                init.constant_(self.logit_bias, float(self.config.logit_bias_init_value or 0.0))

    @classmethod
    def from_vision_text_pretrained(
        cls,
        vision_model_name_or_path: str,
        text_model_name_or_path: str,
        **config_kwargs,
    ) -> "VLPDualEncoderModel":
        """A dual encoder whose towers start from pretrained models (LiT / ALIGN-style training starts):
        any transformers vision model (ViT, CLIP vision, one of ours...) and text model (BERT, MiniLM...). The
        projections and temperature are freshly initialised. `config_kwargs` go to `VLPDualEncoderConfig`."""
        vision_model = _load_tower(vision_model_name_or_path, VLPVisionModel)
        text_model = _load_tower(text_model_name_or_path, VLPTextModel)
        attn_implementations = (vision_model.config._attn_implementation, text_model.config._attn_implementation)
        config = VLPDualEncoderConfig(
            vision_config=vision_model.config, text_config=text_model.config, **config_kwargs
        )
        # A new config resets its sub-configs' attention implementation to None; these are the loaded towers' own
        # configs, and a tower left at None ignores its padding mask (BERT) or falls back to eager attention.
        config.vision_config._attn_implementation, config.text_config._attn_implementation = attn_implementations
        return cls(config, vision_model=vision_model, text_model=text_model)

    def _pool_foreign(self, outputs, attention_mask, pooling: str) -> torch.Tensor:
        if pooling == "pooler" and getattr(outputs, "pooler_output", None) is not None:
            return outputs.pooler_output
        if pooling == "mean":
            return masked_mean(outputs.last_hidden_state, attention_mask)
        return outputs.last_hidden_state[:, 0]

    def get_image_features(
        self,
        pixel_values: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        r"""The vision tower's output with `pooler_output` replaced by the projected image embeddings
        `(batch_size, projection_dim)` (not normalised), as transformers' `CLIPModel.get_image_features`."""
        tower_kwargs = dict(output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        if isinstance(self.vision_model, VLPVisionModel):
            outputs = self.vision_model(
                pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True, **tower_kwargs
            )
            pooled = outputs.pooler_output
        else:
            check_pixel_values(pixel_values, getattr(self.config.vision_config, "num_channels", 3))
            if interpolate_pos_encoding:
                tower_kwargs["interpolate_pos_encoding"] = True
            outputs = self.vision_model(pixel_values=pixel_values, return_dict=True, **tower_kwargs)
            pooled = self._pool_foreign(outputs, None, self.config.foreign_vision_pooling)
        return BaseModelOutputWithPooling(
            last_hidden_state=outputs.last_hidden_state,
            pooler_output=self.visual_projection(pooled),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def get_text_features(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        r"""The text tower's output with `pooler_output` replaced by the projected text embeddings
        `(batch_size, projection_dim)` (not normalised)."""
        check_input_ids(input_ids, attention_mask)
        tower_kwargs = dict(output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        if token_type_ids is not None:
            tower_kwargs["token_type_ids"] = token_type_ids
        if position_ids is not None:
            tower_kwargs["position_ids"] = position_ids
        outputs = self.text_model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **tower_kwargs)
        if isinstance(self.text_model, VLPTextModel):
            pooled = outputs.pooler_output
        else:
            pooled = self._pool_foreign(outputs, attention_mask, self.config.foreign_text_pooling)
        return BaseModelOutputWithPooling(
            last_hidden_state=outputs.last_hidden_state,
            pooler_output=self.text_projection(pooled),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def get_logit_scale(self) -> torch.Tensor:
        """exp(logit_scale), clamped to `config.logit_scale_max` when set."""
        return exp_logit_scale(self.logit_scale, self.config.logit_scale_max)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        return_loss: bool | None = None,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> VLPDualEncoderOutput:
        r"""
        return_loss (`bool`, *optional*):
            Return the contrastive loss of the batch, whose image i and text i are a pair. The loss here uses the
            local batch only; `VLPTrainer` gathers features across ranks for global negatives.
        """
        flags = dict(output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        vision_outputs = self.get_image_features(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **flags)
        text_outputs = self.get_text_features(
            input_ids, attention_mask, token_type_ids=token_type_ids, position_ids=position_ids, **flags
        )
        image_embeds = nn.functional.normalize(vision_outputs.pooler_output, dim=-1)
        text_embeds = nn.functional.normalize(text_outputs.pooler_output, dim=-1)
        logit_scale = self.get_logit_scale()
        logits_per_image, logits_per_text = contrastive_logits(image_embeds, text_embeds, logit_scale, self.logit_bias)

        loss = None
        if return_loss:
            loss = contrastive_loss(
                image_embeds, text_embeds, logit_scale, self.logit_bias, self.config.loss_type
            )

        output = VLPDualEncoderOutput(
            loss=loss,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            logit_scale=logit_scale,
            logit_bias=self.logit_bias,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
        )
        return self._output(output, return_dict)


def _load_tower(name_or_path: str, own_class: type) -> nn.Module:
    """A pretrained tower: ours, any transformers model, or the matching tower of a two-tower checkpoint (CLIP)."""
    config = AutoConfig.from_pretrained(name_or_path)
    if config.model_type == own_class.config_class.model_type:
        return own_class.from_pretrained(name_or_path)
    model = AutoModel.from_pretrained(name_or_path)
    tower = "vision_model" if own_class is VLPVisionModel else "text_model"
    return getattr(model, tower) if hasattr(model, tower) and hasattr(config, f"{tower[:-6]}_config") else model


__all__ = ["VLPVisionModel", "VLPTextModel", "VLPDualEncoderModel", "VLPDualEncoderOutput"]
