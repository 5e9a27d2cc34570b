"""The fusion-encoder family: unimodal text and image encoders, then fusion layers over both streams (LXMERT,
ViLBERT, ALBEF, METER).

The model exposes its steps so that an objective encodes each modality once (`encode_text`, `encode_image`, their
ITC projections `project_text` / `project_image`) and fuses as many (text, image) pairings as it needs (`fuse`):
ALBEF's hard-negative ITM and re-ranked retrieval (`evaluation.rerank.rerank_retrieval`) are built on that.
"""

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import BaseModelOutput

from .configuration_fusion import VLPFusionConfig
from .losses import (
    answer_loss,
    contrastive_logits,
    contrastive_loss,
    masked_lm_loss,
    masked_patch_loss,
    region_loss,
    weighted_sum,
)
from .modeling_base import exp_logit_scale, share_attn_implementation
from .modeling_fusion_layers import (
    VLPFusionEncoder,
    VLPFusionForPreTrainingOutput,
    VLPFusionFuseOutput,
    VLPFusionImageOutput,
    VLPFusionModelOutput,
    VLPFusionPreTrainedModel,
    VLPFusionQuestionAnsweringOutput,
    VLPFusionRetrievalOutput,
    VLPRegionHead,
    check_fuse_inputs,
    check_pairs,
    check_region_inputs,
    check_visual_inputs,
    key_padding_mask,
    patch_attention_mask,
    region_targets,
)
from .modeling_fusion_coattention import fused_pooled_output, fused_pooler, fusion_answer_head, region_embeddings
from .modeling_fusion_shared import build_text_encoder, encode_text_layers, itc_text_states
from .modeling_heads import VLPMLMHead
from .modeling_layers import (
    VLPEncoder,
    VLPPatchEmbeddings,
    VLPTextEmbeddings,
    check_input_ids,
    check_pixel_values,
    masked_mean,
    self_attention_mask,
)


class VLPFusionModel(VLPFusionPreTrainedModel):
    """Text encoder + image encoder (ViT on patches, or LXMERT's region encoder) + fusion layers + pooler + ITC
    projections. See `VLPFusionConfig` for the architectures."""

    _text_embeddings = "text_embeddings"

    def __init__(self, config: VLPFusionConfig):
        super().__init__(config)
        text, vision = config.text_config, config.vision_config
        share_attn_implementation(config)
        self.text_embeddings = VLPTextEmbeddings(text)
        self.text_encoder = build_text_encoder(config)  # with cross-attention too for BLIP (`share_text_layers`)
        self.text_final_layernorm = (
            nn.LayerNorm(text.hidden_size, eps=text.layer_norm_eps) if text.final_layernorm else nn.Identity()
        )
        if config.visual_input == "regions":
            self.image_embeddings = region_embeddings(config)  # LXMERT's or ViLBERT's
            self.mask_token = None
        else:
            self.image_embeddings = VLPPatchEmbeddings(vision)
            self.mask_token = nn.Parameter(torch.zeros(vision.hidden_size))
        self.image_pre_layernorm = (
            nn.LayerNorm(vision.hidden_size, eps=vision.layer_norm_eps) if vision.pre_layernorm else nn.Identity()
        )
        self.image_encoder = VLPEncoder(vision)
        self.image_post_layernorm = (
            nn.LayerNorm(vision.hidden_size, eps=vision.layer_norm_eps)
            if vision.final_norm == "all"
            else nn.Identity()
        )
        self.fusion = VLPFusionEncoder(config)
        self.pooler = fused_pooler(config)
        self.text_projection = self.image_projection = self.logit_scale = None
        if config.projection_dim is not None:
            self.text_projection = nn.Linear(text.hidden_size, config.projection_dim)
            self.image_projection = nn.Linear(vision.hidden_size, config.projection_dim)
            self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))
        self.post_init()

    # ----------------------------------------------------------------------------------------------------------
    # Unimodal encoders
    # ----------------------------------------------------------------------------------------------------------

    def encode_text(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> BaseModelOutput:
        r"""The unimodal text encoder: `last_hidden_state` `(batch_size, text_length, text_hidden_size)` (the embeddings
        with `config.share_text_layers`, BLIP: see `modeling_fusion_shared`)."""
        check_input_ids(input_ids, attention_mask, token_type_ids)
        hidden_states = self.text_embeddings(input_ids, token_type_ids=token_type_ids)
        mask = self_attention_mask(
            self.config.text_config, attention_mask, input_ids.shape[1], hidden_states.dtype, hidden_states.device,
            is_causal=False,
        )  # fmt: skip
        flags = dict(output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        outputs = encode_text_layers(self.text_encoder, self.config, hidden_states, mask, **flags)
        return BaseModelOutput(
            last_hidden_state=self.text_final_layernorm(outputs.last_hidden_state),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def _embed_regions(self, visual_feats, visual_pos, visual_attention_mask, mim_mask):
        check_region_inputs(self.config, visual_feats, visual_pos, visual_attention_mask, mim_mask)
        # LXMERT zeroes the features of masked regions and keeps their boxes.
        return self.image_embeddings(visual_feats, visual_pos, mim_mask), visual_attention_mask

    def _embed_patches(self, pixel_values, pixel_mask, mim_mask, interpolate_pos_encoding):
        check_pixel_values(pixel_values, self.config.vision_config.num_channels)
        embeddings = self.image_embeddings(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        prefix = self.image_embeddings.num_prefix_tokens
        batch_size, _, height, width = pixel_values.shape
        num_patches = embeddings.shape[1] - prefix
        if mim_mask is not None:
            if tuple(mim_mask.shape) != (batch_size, num_patches):
                raise ValueError(
                    f"`mim_mask` must have shape ({batch_size}, {num_patches}) (one value per patch, class token "
                    f"excluded), got {tuple(mim_mask.shape)}."
                )
            # A masked patch is the mask token at that patch's position (BEiT, SimMIM).
            positions = self.image_embeddings.interpolate_pos_encoding(height, width)[:, prefix:]
            masked = self.mask_token.to(embeddings.dtype) + positions
            patches = torch.where(mim_mask.bool()[..., None], masked, embeddings[:, prefix:])
            embeddings = torch.cat([embeddings[:, :prefix], patches], dim=1)
        patch_size = self.config.vision_config.patch_size
        attention_mask = patch_attention_mask(pixel_mask, batch_size, prefix, height, width, patch_size)
        return self.image_pre_layernorm(embeddings), attention_mask

    def encode_image(
        self,
        pixel_values: torch.Tensor | None = None,
        pixel_mask: torch.Tensor | None = None,
        visual_feats: torch.Tensor | None = None,
        visual_pos: torch.Tensor | None = None,
        visual_attention_mask: torch.Tensor | None = None,
        mim_mask: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> VLPFusionImageOutput:
        r"""
        The unimodal image encoder, on `pixel_values` `(batch_size, 3, height, width)` (+ `pixel_mask`
        `(batch_size, height, width)`, 1 for real pixels) or on regions `visual_feats` `(batch_size, num_regions,
        visual_feat_dim)`, `visual_pos` `(batch_size, num_regions, visual_pos_dim)` (+ `visual_attention_mask`).
        mim_mask (`torch.BoolTensor` of shape `(batch_size, num_patches or num_regions)`, *optional*):
            True where the input is masked: a region's features are zeroed (LXMERT), a patch embedding is replaced
            by the learned mask token.
        """
        check_visual_inputs(self.config, pixel_values, visual_feats, visual_pos)
        if self.config.visual_input == "regions":
            embedded = self._embed_regions(visual_feats, visual_pos, visual_attention_mask, mim_mask)
        else:
            embedded = self._embed_patches(pixel_values, pixel_mask, mim_mask, interpolate_pos_encoding)
        hidden_states, attention_mask = embedded
        batch_size, length = hidden_states.shape[:2]
        mask = self_attention_mask(
            self.config.vision_config, attention_mask, length, hidden_states.dtype, hidden_states.device, False
        )
        outputs = self.image_encoder(
            hidden_states, mask, output_hidden_states=output_hidden_states, output_attentions=output_attentions
        )
        if attention_mask is None:
            attention_mask = torch.ones(batch_size, length, dtype=torch.long, device=hidden_states.device)
        return VLPFusionImageOutput(
            last_hidden_state=self.image_post_layernorm(outputs.last_hidden_state),
            attention_mask=attention_mask,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    # ----------------------------------------------------------------------------------------------------------
    # ITC
    # ----------------------------------------------------------------------------------------------------------

    def _require_itc_head(self) -> None:
        if self.text_projection is None:
            raise ValueError(
                "This model has no ITC head (`config.projection_dim` is None, as LXMERT's checkpoints); set "
                "`projection_dim` to train one."
            )

    def project_text(self, text_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Unimodal text states (B, T, D) -> L2-normalised ITC embeddings (B, projection_dim) of the first token
        (with `config.share_text_layers` of the text layers run on them without cross-attention, which reads the
        `(B, T)` mask)."""
        self._require_itc_head()
        text_states = itc_text_states(self.text_encoder, self.config, text_states, attention_mask)
        return F.normalize(self.text_projection(text_states[:, 0]), dim=-1)

    def project_image(self, image_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Unimodal image states (B, V, D) -> L2-normalised ITC embeddings (B, projection_dim) of the first token
        (`config.image_embed_pooling="first"`) or of the mean of the real tokens ("mean")."""
        self._require_itc_head()
        if self.config.image_embed_pooling == "mean":
            pooled = masked_mean(image_states, attention_mask)
        else:
            pooled = image_states[:, 0]
        return F.normalize(self.image_projection(pooled), dim=-1)

    def get_text_features(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """L2-normalised ITC text embeddings (B, projection_dim)."""
        return self.project_text(self.encode_text(input_ids, attention_mask, token_type_ids)[0], attention_mask)

    def get_image_features(
        self,
        pixel_values: torch.Tensor | None = None,
        pixel_mask: torch.Tensor | None = None,
        visual_feats: torch.Tensor | None = None,
        visual_pos: torch.Tensor | None = None,
        visual_attention_mask: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs,
    ) -> torch.Tensor:
        """L2-normalised ITC image embeddings (B, projection_dim)."""
        image = self.encode_image(
            pixel_values, pixel_mask, visual_feats, visual_pos, visual_attention_mask,
            interpolate_pos_encoding=interpolate_pos_encoding,
        )  # fmt: skip
        return self.project_image(image.last_hidden_state, image.attention_mask)

    def get_logit_scale(self) -> torch.Tensor:
        """exp(logit_scale), clamped to `config.logit_scale_max` when set."""
        self._require_itc_head()
        return exp_logit_scale(self.logit_scale, self.config.logit_scale_max)

    # ----------------------------------------------------------------------------------------------------------
    # Fusion
    # ----------------------------------------------------------------------------------------------------------

    def fuse(
        self,
        text_states: torch.Tensor,
        text_attention_mask: torch.Tensor | None,
        image_states: torch.Tensor,
        image_attention_mask: torch.Tensor | None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> VLPFusionFuseOutput:
        r"""Fuse text i with image i: unimodal states `(B, T, Dt)` and `(B, V, Dv)` with their `(B, T)` / `(B, V)`
        masks (None: no padding) -> fused streams and `pooler_output` `(B, Dt)`."""
        check_fuse_inputs(text_states, text_attention_mask, image_states, image_attention_mask)
        dtype, device = text_states.dtype, text_states.device
        co_attention = self.config.fusion_type == "co_attention"
        text_self_mask = self_attention_mask(
            self.config.text_config, text_attention_mask, text_states.shape[1], dtype, device, is_causal=False
        )
        image_self_mask = None
        if co_attention:
            image_self_mask = self_attention_mask(
                self.config.vision_config, image_attention_mask, image_states.shape[1], image_states.dtype,
                image_states.device, is_causal=False,
            )  # fmt: skip
        outputs = self.fusion(
            text_states, text_self_mask,
            key_padding_mask(text_attention_mask, image_states.dtype) if co_attention else None,
            image_states, image_self_mask, key_padding_mask(image_attention_mask, dtype),
            output_hidden_states=output_hidden_states, output_attentions=output_attentions,
            layers=self.text_encoder.layers if self.config.share_text_layers else None,  # BLIP: the text layers
        )  # fmt: skip
        text_last = outputs.text_last_hidden_state
        pooled = fused_pooled_output(self.pooler, text_last, outputs.image_last_hidden_state)
        return dataclasses.replace(outputs, pooler_output=pooled)  # in field order, as `to_tuple` reads it

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_mask: torch.Tensor | None = None,
        visual_feats: torch.Tensor | None = None,
        visual_pos: torch.Tensor | None = None,
        visual_attention_mask: torch.Tensor | None = None,
        mim_mask: torch.Tensor | None = None,
        return_loss: bool | None = None,
        interpolate_pos_encoding: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> VLPFusionModelOutput:
        r"""
        Text i is fused with image i: `input_ids` `(batch_size, text_length)` and either `pixel_values` or
        `visual_feats` + `visual_pos` with the same batch size (see `encode_image`).
        mim_mask (`torch.BoolTensor`, *optional*): masked patches / regions, see `encode_image`.
        return_loss (`bool`, *optional*): return the ITC loss of the local batch (`VLPTrainer` gathers features
            across ranks for global negatives).
        """
        output_attentions = bool(output_attentions if output_attentions is not None else self.config.output_attentions)
        output_hidden_states = bool(
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        check_visual_inputs(self.config, pixel_values, visual_feats, visual_pos)
        check_pairs(self.config, input_ids, pixel_values, visual_feats)
        flags = dict(output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        text = self.encode_text(input_ids, attention_mask, token_type_ids, **flags)
        image = self.encode_image(
            pixel_values, pixel_mask, visual_feats, visual_pos, visual_attention_mask, mim_mask,
            interpolate_pos_encoding=interpolate_pos_encoding, **flags,
        )  # fmt: skip
        fused = self.fuse(
            text.last_hidden_state, attention_mask, image.last_hidden_state, image.attention_mask, **flags
        )

        text_embeds = image_embeds = logit_scale = logits_per_image = logits_per_text = loss = None
        if self.text_projection is not None:
            text_embeds = self.project_text(text.last_hidden_state, attention_mask)
            image_embeds = self.project_image(image.last_hidden_state, image.attention_mask)
            logit_scale = self.get_logit_scale()
            logits_per_image, logits_per_text = contrastive_logits(image_embeds, text_embeds, logit_scale)
            if return_loss:
                loss = contrastive_loss(image_embeds, text_embeds, logit_scale, None, "softmax")
        elif return_loss:
            self._require_itc_head()

        co_attention = fused.image_last_hidden_state is not None
        output = VLPFusionModelOutput(
            loss=loss,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            logit_scale=logit_scale,
            text_last_hidden_state=fused.text_last_hidden_state,
            image_last_hidden_state=fused.image_last_hidden_state if co_attention else image.last_hidden_state,
            pooler_output=fused.pooler_output,
            text_unimodal_state=text.last_hidden_state,
            image_unimodal_state=image.last_hidden_state,
            text_attention_mask=(
                attention_mask if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.long)
            ),
            image_attention_mask=image.attention_mask,
            text_hidden_states=text.hidden_states + fused.hidden_states[1:] if output_hidden_states else None,
            image_hidden_states=(
                image.hidden_states + (fused.image_hidden_states[1:] if co_attention else ())
                if output_hidden_states
                else None
            ),
            text_attentions=text.attentions,
            image_attentions=image.attentions,
            cross_attentions=fused.cross_attentions,
        )
        return self._output(output, return_dict)


class VLPFusionWithITMHead(VLPFusionPreTrainedModel):
    """`VLPFusionModel` with the ITM head on its fused [CLS] (`pooler_output`): what the pretraining and retrieval
    heads share, so that a pretrained ITM head loads into the retrieval head."""

    def __init__(self, config: VLPFusionConfig):
        super().__init__(config)
        self.vlp = VLPFusionModel(config)
        self.itm_head = nn.Linear(config.fused_pooled_size, 2)

    def itm_logits_for_pairs(
        self,
        text_states: torch.Tensor,
        text_attention_mask: torch.Tensor | None,
        image_states: torch.Tensor,
        image_attention_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """ITM logits (B, 2) of text i with image i, from unimodal states (hard negatives, re-ranking)."""
        fused = self.vlp.fuse(text_states, text_attention_mask, image_states, image_attention_mask)
        return self.itm_head(fused.pooler_output)

    def _matching_losses(self, outputs: VLPFusionModelOutput, itm_logits, itm_labels, return_loss) -> dict:
        """ITC of the local batch (`return_loss`) and the ITM cross-entropy (`itm_labels`), by name."""
        losses = {"itc": outputs.loss} if return_loss else {}
        if itm_labels is not None:
            batch_size = itm_logits.shape[0]
            if tuple(itm_labels.shape) != (batch_size,):
                raise ValueError(f"`itm_labels` must have shape ({batch_size},), got {tuple(itm_labels.shape)}.")
            losses["itm"] = F.cross_entropy(itm_logits, itm_labels.to(itm_logits.device))
        return losses


class VLPFusionForPreTraining(VLPFusionWithITMHead):
    """`VLPFusionModel` with ITC (in the base model), ITM, MLM (tied), masked region / patch modelling and
    optionally LXMERT's pretraining answer head. Each loss is computed only when its labels are given."""

    _tied_weights_keys = {"mlm_head.decoder.weight": "vlp.text_embeddings.token_embedding.weight"}
    _output_embeddings = "mlm_head.decoder"

    def __init__(self, config: VLPFusionConfig):
        super().__init__(config)
        text, vision = config.text_config, config.vision_config
        self.mlm_head = VLPMLMHead(text.hidden_size, text.vocab_size, text.hidden_act, text.layer_norm_eps)
        self.region_head = self.patch_head = None
        if config.visual_input == "regions":
            self.region_head = VLPRegionHead(config) if config.region_losses else None
        else:
            self.patch_head = nn.Linear(vision.hidden_size, vision.patch_size**2 * vision.num_channels)
        self.answer_head = (
            fusion_answer_head(config)
            if config.pretraining_answer_head
            else None
        )
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_mask: torch.Tensor | None = None,
        visual_feats: torch.Tensor | None = None,
        visual_pos: torch.Tensor | None = None,
        visual_attention_mask: torch.Tensor | None = None,
        mim_mask: torch.Tensor | None = None,
        mlm_labels: torch.Tensor | None = None,
        itm_labels: torch.Tensor | None = None,
        obj_labels: torch.Tensor | dict | None = None,
        attr_labels: torch.Tensor | None = None,
        feat_labels: torch.Tensor | None = None,
        region_class_scores: torch.Tensor | None = None,
        answer_labels: torch.Tensor | None = None,
        region_labels: torch.Tensor | None = None,
        return_loss: bool | None = None,
        interpolate_pos_encoding: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> VLPFusionForPreTrainingOutput:
        r"""
        mlm_labels (`torch.LongTensor` of shape `(batch_size, text_length)`, *optional*):
            Token ids at masked positions, -100 elsewhere. Rows whose `itm_labels` is 0 are ignored.
        itm_labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*): 1 when text i matches image i.
        mim_mask (`torch.BoolTensor` of shape `(batch_size, num_patches or num_regions)`, *optional*):
            Masks the input (see `VLPFusionModel.encode_image`). Patches: the patch-regression loss is computed on
            the masked patches. Regions: the weights of the region losses, whose feature target is then the
            unmasked `visual_feats` (or `feat_labels`).
        obj_labels: object class indices `(batch_size, num_regions)`, or LXMERT's dict `{"obj": (labels,
            weights), "attr": (labels, weights), "feat": (features, weights)}` (features already masked by the
            data pipeline; `mim_mask` not needed).
        attr_labels (`(batch_size, num_regions)`), feat_labels (`(batch_size, num_regions, visual_feat_dim)`),
        region_class_scores (`(batch_size, num_regions, num_object_labels)`, detector class distributions: a soft
            object target instead of `obj_labels`), *optional*.
        answer_labels (`(batch_size,)` indices or `(batch_size, num_labels)` soft scores, *optional*):
            Needs `config.pretraining_answer_head`.
        region_labels (`(batch_size, num_regions)`, *optional*): the package's common name of `obj_labels` (what
            `VLPPretrainingCollator` and the unified family use). As in the unified family, `region_class_scores`
            take precedence when both are given.
        return_loss (`bool`, *optional*): compute ITC over the local batch (`loss_itc`).
        """
        if region_labels is not None:
            if obj_labels is not None:
                raise ValueError("Pass `obj_labels` or `region_labels` (the same object classes), not both.")
            if region_class_scores is None:
                obj_labels = region_labels
        outputs = self.vlp(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            pixel_values=pixel_values, pixel_mask=pixel_mask, visual_feats=visual_feats, visual_pos=visual_pos,
            visual_attention_mask=visual_attention_mask, mim_mask=mim_mask, return_loss=return_loss,
            interpolate_pos_encoding=interpolate_pos_encoding, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, return_dict=True,
        )  # fmt: skip
        mlm_logits = self.mlm_head(outputs.text_last_hidden_state)
        itm_logits = self.itm_head(outputs.pooler_output)
        answer_logits = self.answer_head(outputs.pooler_output) if self.answer_head is not None else None
        region_predictions, mim_predictions = {}, None
        if self.region_head is not None:
            region_predictions = self.region_head(outputs.image_last_hidden_state)
            mim_predictions = region_predictions.get("feat")
        elif self.patch_head is not None:
            prefix = self.vlp.image_embeddings.num_prefix_tokens
            mim_predictions = self.patch_head(outputs.image_last_hidden_state[:, prefix:])

        losses = self._matching_losses(outputs, itm_logits, itm_labels, return_loss)
        if mlm_labels is not None:
            if mlm_labels.shape != input_ids.shape:
                raise ValueError(
                    f"`mlm_labels` must have the shape of `input_ids` {tuple(input_ids.shape)}, got "
                    f"{tuple(mlm_labels.shape)}."
                )
            # A caption of another image (itm_labels 0) has nothing to predict its tokens from.
            matching = None if itm_labels is None else itm_labels == 1
            losses["mlm"] = masked_lm_loss(mlm_logits, mlm_labels.to(mlm_logits.device), matching)
        if self.config.visual_input == "regions":
            if self.region_head is None and (obj_labels is not None or attr_labels is not None):
                raise ValueError("Region labels were given, but this model has no region heads (`region_losses=[]`).")
            targets = (
                region_targets(self.config, obj_labels, attr_labels, feat_labels, region_class_scores, visual_feats, mim_mask)
                if self.region_head is not None
                else {}
            )
            if targets:
                region_losses = region_loss(region_predictions, targets, "lxmert", self.config.visual_loss_normalizer)
                losses["mim"] = sum(region_losses.values())
        elif mim_mask is not None:
            patch_size = self.config.vision_config.patch_size
            losses["mim"] = masked_patch_loss(mim_predictions, pixel_values, patch_size, mim_mask)
        if answer_labels is not None:
            if answer_logits is None:
                raise ValueError("`answer_labels` needs an answer head: set `config.pretraining_answer_head=True`.")
            losses["vqa"] = answer_loss(answer_logits, answer_labels)

        output = VLPFusionForPreTrainingOutput(
            loss=weighted_sum(losses, self.config.loss_weights),
            **{f"loss_{name}": value for name, value in losses.items()},
            mlm_logits=mlm_logits,
            itm_logits=itm_logits,
            mim_predictions=mim_predictions,
            obj_logits=region_predictions.get("obj"),
            attr_logits=region_predictions.get("attr"),
            answer_logits=answer_logits,
            fusion_output=outputs,
        )
        return self._output(output, return_dict)


class VLPFusionForQuestionAnswering(VLPFusionPreTrainedModel):
    """`VLPFusionModel` with LXMERT's answer head on `pooler_output` (`config.num_labels` answers, names in
    `config.id2label`)."""

    def __init__(self, config: VLPFusionConfig):
        super().__init__(config)
        self.vlp = VLPFusionModel(config)
        self.answer_head = fusion_answer_head(config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_mask: torch.Tensor | None = None,
        visual_feats: torch.Tensor | None = None,
        visual_pos: torch.Tensor | None = None,
        visual_attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> VLPFusionQuestionAnsweringOutput:
        r"""
        labels (`torch.FloatTensor` of shape `(batch_size, num_labels)` soft scores (binary cross-entropy, ViLT /
            LXMERT's VQA fine-tuning) or `torch.LongTensor` `(batch_size,)` answer indices (cross-entropy, as
            transformers' `LxmertForQuestionAnswering`), *optional*.
        """
        outputs = self.vlp(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            pixel_values=pixel_values, pixel_mask=pixel_mask, visual_feats=visual_feats, visual_pos=visual_pos,
            visual_attention_mask=visual_attention_mask, interpolate_pos_encoding=interpolate_pos_encoding,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=True,
        )  # fmt: skip
        logits = self.answer_head(outputs.pooler_output)
        loss = answer_loss(logits, labels) if labels is not None else None
        output = VLPFusionQuestionAnsweringOutput(loss=loss, logits=logits, fusion_output=outputs)
        return self._output(output, return_dict)


__all__ = [
    "VLPFusionPreTrainedModel",
    "VLPFusionModel",
    "VLPFusionWithITMHead",
    "VLPFusionForPreTraining",
    "VLPFusionForQuestionAnswering",
    "VLPFusionImageOutput",
    "VLPFusionFuseOutput",
    "VLPFusionModelOutput",
    "VLPFusionForPreTrainingOutput",
    "VLPFusionQuestionAnsweringOutput",
    "VLPFusionRetrievalOutput",
]
