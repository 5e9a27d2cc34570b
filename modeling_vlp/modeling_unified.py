"""The unified single-stream family: one transformer over `[text; visual]` tokens (ViLT, VisualBERT, UNITER).

Visual tokens are image patches (ViLT: padded variable-size images with `pixel_mask`, positions resized to each
image's own patch grid, optional patch sampling in training) or detector regions (VisualBERT, UNITER: features and
boxes). Heads: image-text matching (ITM), masked language modelling (MLM, tied to the word embeddings), masked image
modelling (MIM: normalised-pixel regression for patches, feature regression + classification for regions), VQA.
"""


import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from .configuration_unified import VLPUnifiedConfig
from .losses import (
    answer_loss,
    itm_log_odds,
    masked_lm_loss,
    masked_patch_loss,
    region_loss,
    weighted_sum,
)
from .modeling_base import VLPClassifierOutput, VLPPreTrainedModel, encoder_auto_map
from .modeling_heads import VLPAnswerHead, VLPMLMHead, VLPPooler
from .modeling_layers import (
    VLPEncoder,
    self_attention_mask,
)
from .modeling_unified_layers import (
    VLPPatchMIMHead,
    VLPRegionMIMHead,
    VLPUnifiedEmbeddings,
    VLPUnifiedForPreTrainingOutput,
    VLPUnifiedImageTextRetrievalOutput,
    VLPUnifiedModelOutput,
    VLPUnifiedPatchEmbeddings,
    VLPUnifiedQuestionAnsweringOutput,
    check_labels,
    check_mim_mask,
    check_text_inputs,
    check_visual_inputs,
)


class VLPUnifiedPreTrainedModel(VLPPreTrainedModel):
    config: VLPUnifiedConfig
    config_class = VLPUnifiedConfig
    input_modalities = ("image", "text")
    main_input_name = "input_ids"
    _no_split_modules = ["VLPTransformerLayer", "VLPUnifiedEmbeddings"]
    # Written into a saved checkpoint's `auto_map` whichever class saves it, so that with `trust_remote_code` every
    # head loads from any checkpoint of the family (see `VLPPreTrainedModel.save_pretrained`).
    family_auto_map = encoder_auto_map("VLPUnifiedModel", "VLPUnifiedForPreTraining", "VLPUnifiedForQuestionAnswering")

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, VLPUnifiedPatchEmbeddings):
            init.normal_(module.mask_token, std=self.config.initializer_range)


class VLPUnifiedModel(VLPUnifiedPreTrainedModel):
    """Embeddings of `[text; visual]` -> one transformer (-> final LayerNorm when pre-norm) -> pooler."""

    _text_embeddings = "embeddings.text_embeddings"

    def __init__(self, config: VLPUnifiedConfig):
        super().__init__(config)
        self.embeddings = VLPUnifiedEmbeddings(config)
        self.encoder = VLPEncoder(config)
        # A pre-norm stack leaves its output un-normalised: ViLT's final LayerNorm.
        self.final_layer_norm = (
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.pre_norm else nn.Identity()
        )
        self.pooler = VLPPooler(config.hidden_size)
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
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> VLPUnifiedModelOutput:
        r"""
        input_ids (`torch.LongTensor` of shape `(batch_size, text_length)`), attention_mask, token_type_ids (same
        shape): the tokenized text. `inputs_embeds` `(batch_size, text_length, hidden_size)` replaces `input_ids`.
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Patch models: the images, normalised; height and width multiples of the patch size.
        pixel_mask (`torch.LongTensor` of shape `(batch_size, height, width)`, *optional*):
            1 on real pixels, 0 on the padding of images smaller than the batch (the image processor's `do_pad`).
        visual_feats (`torch.FloatTensor` of shape `(batch_size, num_regions, visual_feat_dim)`):
            Region models: detector features.
        visual_pos (`torch.FloatTensor` of shape `(batch_size, num_regions, 4 or 5 or 7)`):
            Region models with boxes: normalised boxes `(x1, y1, x2, y2[, area])` (UNITER: or its 7-d features).
        visual_attention_mask (`torch.LongTensor` of shape `(batch_size, num_regions)`, *optional*):
            Region models: 1 on real regions, 0 on padding.
        mim_mask (`torch.BoolTensor` of shape `(batch_size, num_units)`, *optional*):
            True = masked. Patches (num_units = patches of the `pixel_values` grid, raster order) are replaced by the
            learned mask token before positions are added; regions (num_units = num_regions) have their features
            zeroed.
        """
        config = self.config
        batch_size, text_length = check_text_inputs(config, input_ids, inputs_embeds, attention_mask, token_type_ids)
        num_units = check_visual_inputs(
            config, batch_size, pixel_values, pixel_mask, visual_feats, visual_pos, visual_attention_mask
        )
        mim_mask = check_mim_mask(mim_mask, batch_size, num_units, config.visual_input)

        text_embeddings = self.embeddings.embed_text(input_ids, token_type_ids, inputs_embeds)
        if config.visual_input == "patches":
            visual_embeddings, visual_mask, visual_token_index = self.embeddings.visual_embeddings(
                pixel_values, pixel_mask, mim_mask
            )
        else:
            visual_embeddings = self.embeddings.visual_embeddings(visual_feats, visual_pos, mim_mask)
            visual_mask = (
                torch.ones(visual_feats.shape[:2], dtype=torch.long, device=visual_embeddings.device)
                if visual_attention_mask is None
                else visual_attention_mask.long()
            )
            visual_token_index = None
        hidden_states = self.embeddings(text_embeddings, visual_embeddings)

        text_mask = (
            torch.ones(batch_size, text_length, dtype=torch.long, device=hidden_states.device)
            if attention_mask is None
            else attention_mask.long()
        )
        mask = self_attention_mask(
            config, torch.cat([text_mask, visual_mask], dim=1), hidden_states.shape[1], hidden_states.dtype,
            hidden_states.device, is_causal=False,
        )  # fmt: skip
        encoder_outputs = self.encoder(
            hidden_states,
            mask,
            output_hidden_states=bool(output_hidden_states or config.output_hidden_states),
            output_attentions=bool(output_attentions or config.output_attentions),
        )
        last_hidden_state = self.final_layer_norm(encoder_outputs.last_hidden_state)
        output = VLPUnifiedModelOutput(
            last_hidden_state=last_hidden_state,
            pooler_output=self.pooler(last_hidden_state),
            text_length=text_length,
            visual_attention_mask=visual_mask,
            visual_token_index=visual_token_index,
            hidden_states=encoder_outputs.hidden_states,
            attentions=encoder_outputs.attentions,
        )
        return self._output(output, return_dict)


def _text_batch(input_ids, inputs_embeds) -> tuple[int, int]:
    reference = input_ids if input_ids is not None else inputs_embeds
    if reference is None or reference.ndim < 2:
        return -1, -1  # the base model's checks report it
    return tuple(reference.shape[:2])


class VLPUnifiedForPreTraining(VLPUnifiedPreTrainedModel):
    """The unified model with the ITM, MLM and MIM heads; each loss is computed when its labels or mask are given."""

    _tied_weights_keys = {"mlm_head.decoder.weight": "vlp.embeddings.text_embeddings.token_embedding.weight"}
    _output_embeddings = "mlm_head.decoder"

    def __init__(self, config: VLPUnifiedConfig):
        super().__init__(config)
        self.vlp = VLPUnifiedModel(config)
        self.itm_head = nn.Linear(config.hidden_size, 2)
        self.mlm_head = VLPMLMHead(config.hidden_size, config.vocab_size, config.hidden_act, config.layer_norm_eps)
        self.mim_head = VLPPatchMIMHead(config) if config.visual_input == "patches" else VLPRegionMIMHead(config)
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
        inputs_embeds: torch.Tensor | None = None,
        mlm_labels: torch.Tensor | None = None,
        itm_labels: torch.Tensor | None = None,
        region_labels: torch.Tensor | None = None,
        region_class_scores: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> VLPUnifiedForPreTrainingOutput:
        r"""
        Inputs as `VLPUnifiedModel`, and:
        mlm_labels (`torch.LongTensor` of shape `(batch_size, text_length)`, *optional*):
            Token ids to predict at the masked positions, -100 elsewhere. Rows with `itm_labels == 0` are ignored (a
            caption paired with the wrong image is no masked-LM example).
        itm_labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*): 1 = the caption matches the image.
        mim_mask (`torch.BoolTensor` of shape `(batch_size, num_units)`, *optional*): the patches / regions to mask
            and predict (padding is never counted).
        region_labels (`torch.LongTensor` of shape `(batch_size, num_regions)`, *optional*):
            Detector class id of each region (-100 ignored), for the region classification loss.
        region_class_scores (`torch.FloatTensor` of shape `(batch_size, num_regions, num_object_labels)`, *optional*):
            The detector's class probabilities; the classification loss is then the KL divergence to them.
        """
        config = self.config
        batch_size, text_length = _text_batch(input_ids, inputs_embeds)
        check_labels("mlm_labels", mlm_labels, (batch_size, text_length), "(batch_size, text_length) of input_ids")
        check_labels("itm_labels", itm_labels, (batch_size,), "(batch_size,)")
        if itm_labels is not None and bool(((itm_labels != 0) & (itm_labels != 1)).any()):
            raise ValueError(
                f"`itm_labels` must be 0 (no match) or 1 (match), got values {itm_labels.unique().tolist()}."
            )
        self._check_region_targets(mim_mask, visual_feats, region_labels, region_class_scores)

        outputs = self.vlp(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            pixel_values=pixel_values, pixel_mask=pixel_mask, visual_feats=visual_feats, visual_pos=visual_pos,
            visual_attention_mask=visual_attention_mask, mim_mask=mim_mask, inputs_embeds=inputs_embeds,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=True,
        )  # fmt: skip
        sequence_output, text_length = outputs.last_hidden_state, outputs.text_length
        mlm_logits = self.mlm_head(sequence_output[:, :text_length])
        itm_logits = self.itm_head(outputs.pooler_output)

        loss_itm = loss_mlm = loss_mim = loss_regression = loss_classification = None
        mim_predictions = mim_class_logits = None
        if itm_labels is not None:
            loss_itm = F.cross_entropy(itm_logits.float(), itm_labels.long())
        if mlm_labels is not None:
            matching = None if itm_labels is None else itm_labels == 1
            loss_mlm = masked_lm_loss(mlm_logits, mlm_labels, matching)
        if mim_mask is not None:
            mim_mask = mim_mask.bool()
            mim_predictions, mim_class_logits = self.mim_head(sequence_output[:, text_length:])
            if config.visual_input == "patches":
                loss_mim = masked_patch_loss(
                    mim_predictions[:, 1:], pixel_values, config.patch_size, mim_mask,
                    outputs.visual_token_index[:, 1:], outputs.visual_attention_mask[:, 1:],
                )  # fmt: skip
            else:
                region_mask = mim_mask & outputs.visual_attention_mask.bool()
                targets = {"feat": (visual_feats, region_mask)}
                class_targets = region_class_scores if region_class_scores is not None else region_labels
                if mim_class_logits is not None and class_targets is not None:
                    targets["obj"] = (class_targets, region_mask)
                predictions = {"feat": mim_predictions, "obj": mim_class_logits}
                region_losses = region_loss(predictions, targets, "uniter")
                loss_regression, loss_classification = region_losses["feat"], region_losses.get("obj")
                loss_mim = loss_regression if loss_classification is None else loss_regression + loss_classification

        losses = {"itm": loss_itm, "mlm": loss_mlm, "mim": loss_mim}
        weights = {"itm": config.itm_loss_weight, "mlm": config.mlm_loss_weight, "mim": config.mim_loss_weight}
        output = VLPUnifiedForPreTrainingOutput(
            loss=weighted_sum(losses, weights),
            loss_itm=loss_itm,
            loss_mlm=loss_mlm,
            loss_mim=loss_mim,
            loss_mim_regression=loss_regression,
            loss_mim_classification=loss_classification,
            mlm_logits=mlm_logits,
            itm_logits=itm_logits,
            mim_predictions=mim_predictions,
            mim_class_logits=mim_class_logits,
            unified_output=outputs,
        )
        return self._output(output, return_dict)

    def _check_region_targets(self, mim_mask, visual_feats, region_labels, region_class_scores) -> None:
        if region_labels is None and region_class_scores is None:
            return
        name = "region_labels" if region_labels is not None else "region_class_scores"
        if self.config.visual_input != "regions" or self.config.num_object_labels == 0:
            raise ValueError(
                f"`{name}` needs a region model with a region classifier (visual_input='regions', "
                f"num_object_labels > 0); this one has visual_input={self.config.visual_input!r}, "
                f"num_object_labels={self.config.num_object_labels}."
            )
        if mim_mask is None:
            raise ValueError(f"`{name}` is the target of masked regions: pass `mim_mask` too.")
        if visual_feats is None or visual_feats.ndim != 3:
            return  # the base model reports the missing or malformed features
        regions = tuple(visual_feats.shape[:2])
        check_labels("region_labels", region_labels, regions, "(batch_size, num_regions)")
        check_labels(
            "region_class_scores", region_class_scores, (*regions, self.config.num_object_labels),
            "(batch_size, num_regions, num_object_labels)",
        )  # fmt: skip


class VLPUnifiedWithHead(VLPUnifiedPreTrainedModel):
    """A unified model with one head on its output, trained from `labels`: what the VQA and retrieval heads share
    (`_check_labels` before the base model runs, `_head` after it)."""

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
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> VLPClassifierOutput:
        r"""Inputs as `VLPUnifiedModel`, and `labels` as the class says."""
        batch_size, _ = _text_batch(input_ids, inputs_embeds)
        self._check_labels(labels, batch_size)
        outputs = self.vlp(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            pixel_values=pixel_values, pixel_mask=pixel_mask, visual_feats=visual_feats, visual_pos=visual_pos,
            visual_attention_mask=visual_attention_mask, inputs_embeds=inputs_embeds,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=True,
        )  # fmt: skip
        return self._output(self._head(outputs, labels, attention_mask), return_dict)


class VLPUnifiedForQuestionAnswering(VLPUnifiedWithHead):
    """VQA as classification over `config.num_labels` answers (`id2label`), trained on soft scores.

    labels (`torch.FloatTensor` of shape `(batch_size, num_labels)`, *optional*):
        Soft answer scores (VQA: min(#annotators giving the answer / 3, 1)). The loss is ViLT's BCE with logits
        times `num_labels` (`vqa_loss="bce"`) or VisualBERT's KL divergence of the softmax to the scores ("kl").
    Returns `logits` `(batch_size, num_labels)` (raw scores, also with the KL loss).
    """

    def __init__(self, config: VLPUnifiedConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vlp = VLPUnifiedModel(config)
        # ViLT's MLP (LayerNorm before GELU, PyTorch's default eps) or VisualBERT's dropout + Linear.
        self.classifier = VLPAnswerHead(
            config.hidden_size, config.num_labels, mlp=config.vqa_head == "pooled_mlp", norm_first=True,
            dropout=config.hidden_dropout, names=("dense", "decoder"),
        )  # fmt: skip
        self.post_init()

    def _check_labels(self, labels, batch_size: int) -> None:
        check_labels("labels", labels, (batch_size, self.config.num_labels), "(batch_size, num_labels)")

    def _head(self, outputs: VLPUnifiedModelOutput, labels, attention_mask) -> VLPUnifiedQuestionAnsweringOutput:
        if self.config.vqa_head == "pooled_mlp":
            features = outputs.pooler_output
        else:
            # VisualBERT reads the last text token before [SEP] of each (right-padded) caption.
            batch_size, text_length = outputs.last_hidden_state.shape[0], outputs.text_length
            lengths = (
                torch.full((batch_size,), text_length, device=outputs.last_hidden_state.device)
                if attention_mask is None
                else attention_mask.sum(dim=1)
            )
            index = (lengths - 2).clamp(min=0).long()
            features = outputs.last_hidden_state[torch.arange(batch_size, device=index.device), index]
        logits = self.classifier(features)
        loss = answer_loss(logits, labels, self.config.vqa_loss) if labels is not None else None
        return VLPUnifiedQuestionAnsweringOutput(loss=loss, logits=logits, unified_output=outputs)


class VLPUnifiedForImageTextRetrieval(VLPUnifiedWithHead):
    """Scores image-text pairs with the ITM head (the same `itm_head` as pretraining, so a pretrained model loads).

    `labels` (`torch.LongTensor` of shape `(batch_size,)`, *optional*): 1 where the caption matches the image.
    Returns `logits` `(batch_size,)`, the log-odds of a match.
    """

    # A pretraining checkpoint loads here with its ITM head; its other heads are not part of this model.
    _keys_to_ignore_on_load_unexpected = [r"^(mlm|mim|patch|region|answer)_head\."]

    def __init__(self, config: VLPUnifiedConfig):
        super().__init__(config)
        self.vlp = VLPUnifiedModel(config)
        self.itm_head = nn.Linear(config.hidden_size, 2)
        self.post_init()

    def _check_labels(self, labels, batch_size: int) -> None:
        check_labels("labels", labels, (batch_size,), "(batch_size,)")

    def _head(self, outputs: VLPUnifiedModelOutput, labels, attention_mask) -> VLPUnifiedImageTextRetrievalOutput:
        itm_logits = self.itm_head(outputs.pooler_output)
        loss = None if labels is None else F.cross_entropy(itm_logits.float(), labels.long())
        return VLPUnifiedImageTextRetrievalOutput(
            loss=loss, logits=itm_log_odds(itm_logits), itm_logits=itm_logits, unified_output=outputs
        )


__all__ = [
    "VLPUnifiedModel",
    "VLPUnifiedModelOutput",
    "VLPUnifiedPreTrainedModel",
    "VLPUnifiedForPreTraining",
    "VLPUnifiedForPreTrainingOutput",
    "VLPUnifiedWithHead",
    "VLPUnifiedForQuestionAnswering",
    "VLPUnifiedQuestionAnsweringOutput",
    "VLPUnifiedForImageTextRetrieval",
    "VLPUnifiedImageTextRetrievalOutput",
]
