"""The dual-encoder family: an image tower and a text tower aligned contrastively (CLIP, SigLIP, ALIGN, LiT)."""

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .configuration_vlp import VLPDualEncoderConfig, VLPTextConfig, VLPVisionConfig, tower_width
from .losses import contrastive_logits, contrastive_loss
from .modeling_base import VLPContrastiveOutput, VLPPreTrainedModel, exp_logit_scale
from .modeling_layers import (
    VLPAttentionPool,
    VLPEncoder,
    VLPPatchDropout,
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
    """A ViT: patch embeddings -> (patch dropout in training) -> (pre-LN) -> transformer -> pooled token (cls / mean /
    attention probe)."""

    config: VLPVisionConfig
    config_class = VLPVisionConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _input_embed_layer = "patch_embedding"

    def __init__(self, config: VLPVisionConfig):
        super().__init__(config)
        self.embeddings = VLPPatchEmbeddings(config)
        self.patch_dropout = VLPPatchDropout(config.patch_dropout, self.embeddings.num_prefix_tokens)
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
        hidden_states = self.pre_layrnorm(self.patch_dropout(hidden_states))
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
    `config.foreign_vision_pooling` / `config.foreign_text_pooling`: a ViT, CLIP or SigLIP vision tower, a BERT, or a
    timm model through transformers' `TimmWrapperModel` (whose code is transformers' own and needs `timm` installed
    wherever the checkpoint loads). `lock_image_tower` / `lock_text_tower` freeze them (LiT).
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
        self.vision_embed_dim = tower_width(config.vision_config)
        self.text_embed_dim = tower_width(config.text_config)
        self.visual_projection = self._projection(config.vision_projection, self.vision_embed_dim)
        self.text_projection = self._projection(config.text_projection, self.text_embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))
        self.logit_bias = (
            nn.Parameter(torch.tensor(float(config.logit_bias_init_value or 0.0)))
            if config.loss_type == "sigmoid"
            else None
        )
        # Set by lock_image_tower / lock_text_tower: towers run without autograd, modules kept in eval mode.
        self._no_grad_towers: set[str] = set()
        self._eval_modules: list[str] = []
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        # The text tower's token embeddings, as CLIPModel / SiglipModel (accelerate's FSDP2 wrapping asks for them).
        return self.text_model.get_input_embeddings()

    def train(self, mode: bool = True):
        """As `nn.Module.train`, but the modules a lock froze stay in eval mode (BatchNorm statistics and dropout of
        a locked tower; the Trainer calls `model.train()` every step)."""
        super().train(mode)
        if mode:
            for name in self._eval_modules:
                self.get_submodule(name).eval()
        return self

    def lock_image_tower(self, unlocked_groups: int = 0, freeze_bn_stats: bool = True) -> None:
        """Freeze the image tower but its last `unlocked_groups` groups (LiT; open_clip's `lock_image_tower`).
        Groups are the stem, then one per block, the last block with what follows it (final norm, pooler); a timm
        tower's are timm's `group_matcher` groups. With `freeze_bn_stats` (the default, unlike open_clip) the locked
        BatchNorm layers keep their running statistics: they stay in eval mode through `train()`. A fully locked
        tower runs under `torch.no_grad()` (and, with `freeze_bn_stats`, in eval mode: no dropout either). The
        projection and the temperature stay trainable. A randomly initialised tower can be locked too. A lock is a
        training setting: checkpoints do not save it (lock again after `from_pretrained`)."""
        self._lock_tower("vision_model", unlocked_groups, "unlocked_groups", freeze_bn_stats, freeze_norm=True)

    def lock_text_tower(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        """Freeze the text tower but its last `unlocked_layers` transformer layers (open_clip's `lock_text_tower`);
        with `freeze_layer_norm=False` the LayerNorms of the locked part stay trainable. A fully locked tower with
        frozen LayerNorms runs under `torch.no_grad()` in eval mode (no dropout)."""
        self._lock_tower("text_model", unlocked_layers, "unlocked_layers", freeze_layer_norm, freeze_layer_norm)

    def _lock_tower(self, name: str, unlocked: int, option: str, eval_mode: bool, freeze_norm: bool) -> None:
        tower = getattr(self, name)
        groups = tower_groups(tower)
        if not 0 <= unlocked < len(groups):
            raise ValueError(
                f"`{option}` must be between 0 and {len(groups) - 1} for this {type(tower).__name__} ({len(groups)} "
                f"groups: the stem and its blocks; the stem stays locked), got {unlocked}."
            )
        locked = {param for group in groups[: len(groups) - unlocked] for param in group}
        norms = {f"{module}.{param}" for module, norm in tower.named_modules() if isinstance(norm, nn.LayerNorm)
                 for param, _ in norm.named_parameters(recurse=False)}  # fmt: skip
        for param_name, param in tower.named_parameters():
            param.requires_grad_(param_name not in locked or (not freeze_norm and param_name in norms))
        self._no_grad_towers.discard(name)
        self._eval_modules = [module for module in self._eval_modules if module.split(".")[0] != name]
        if not any(param.requires_grad for param in tower.parameters()):
            self._no_grad_towers.add(name)
            if eval_mode:
                self._eval_modules.append(name)
        elif eval_mode and freeze_norm:
            self._eval_modules += [
                f"{name}.{module_name}" for module_name, module in tower.named_modules()
                if isinstance(module, nn.modules.batchnorm._BatchNorm)
                and all(f"{module_name}.{param}" in locked for param, _ in module.named_parameters(recurse=False))
            ]  # fmt: skip
        self.train(self.training)

    def _tower_context(self, name: str):
        return torch.no_grad() if name in self._no_grad_towers else nullcontext()

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
        with self._tower_context("vision_model"):
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
            attentions=getattr(outputs, "attentions", None),  # timm towers have none
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
        with self._tower_context("text_model"):
            outputs = self.text_model(
                input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **tower_kwargs
            )
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
    """A pretrained tower: ours, any transformers model (a timm one through `TimmWrapperModel`), or the matching
    tower of a two-tower checkpoint (CLIP, SigLIP). Raises ValueError when the model reads the other modality."""
    config = AutoConfig.from_pretrained(name_or_path)
    if config.model_type == own_class.config_class.model_type:
        return own_class.from_pretrained(name_or_path)
    if isinstance(getattr(config, "model_args", None), dict):  # timm: transformers passes num_classes=0 itself
        config.model_args.pop("num_classes", None)
    model = AutoModel.from_pretrained(name_or_path, config=config)
    if getattr(config, "pretrained_cfg", None) and getattr(config, "image_size", None) is None:
        config.image_size = int(config.pretrained_cfg.get("input_size", (3, 224, 224))[-1])  # what timm trained at
    tower = "vision_model" if own_class is VLPVisionModel else "text_model"
    if hasattr(model, tower) and hasattr(config, f"{tower[:-6]}_config"):
        sub_config, model = getattr(config, f"{tower[:-6]}_config"), getattr(model, tower)
        if not isinstance(model, PreTrainedModel):  # CLIP / SigLIP keep a bare transformer: wrap it in its model
            wrapper = AutoModel.from_config(sub_config)
            if hasattr(wrapper, tower):
                setattr(wrapper, tower, model)
                model = wrapper
    expected = "pixel_values" if own_class is VLPVisionModel else "input_ids"
    if getattr(model, "main_input_name", expected) != expected:
        kind = "vision" if own_class is VLPVisionModel else "text"
        raise ValueError(
            f"{name_or_path!r} is a {type(model).__name__} (model_type {config.model_type!r}) reading "
            f"`{model.main_input_name}`, not a {kind} model reading `{expected}`."
        )
    return model


def _block_list(tower: nn.Module) -> tuple[str, nn.ModuleList]:
    """The tower's stack of blocks: its longest `nn.ModuleList` (`encoder.layers`, ViT / BERT `encoder.layer`)."""
    lists = [(name, module) for name, module in tower.named_modules() if isinstance(module, nn.ModuleList)]
    if not lists:
        raise ValueError(f"Cannot find the blocks of a {type(tower).__name__} to lock (it has no nn.ModuleList).")
    return max(lists, key=lambda item: len(item[1]))


def tower_groups(tower: nn.Module) -> list[list[str]]:
    """A tower's parameter names in groups, first to last, as open_clip locks them: the stem (what comes before the
    blocks), one group per block, the last block together with what follows it (final norm, pooler). A timm tower
    (`TimmWrapperModel`) is grouped by its own `group_matcher`, as open_clip's `TimmModel.lock` does."""
    timm_model = getattr(tower, "timm_model", None)
    if timm_model is not None and hasattr(timm_model, "group_matcher"):
        from timm.models import group_parameters  # only a timm tower comes here, and timm builds it

        groups = group_parameters(timm_model, timm_model.group_matcher())
        return [[f"timm_model.{name}" for name in groups[key]] for key in sorted(groups)]
    blocks_name, blocks = _block_list(tower)
    stem, block_groups, tail = [], [[] for _ in blocks], []
    for name, _ in tower.named_parameters():
        if name.startswith(blocks_name + "."):
            block_groups[int(name[len(blocks_name) + 1 :].split(".")[0])].append(name)
        else:
            (tail if any(block_groups) else stem).append(name)
    block_groups[-1] += tail
    return [stem, *block_groups]


__all__ = ["VLPVisionModel", "VLPTextModel", "VLPDualEncoderModel", "VLPDualEncoderOutput"]
