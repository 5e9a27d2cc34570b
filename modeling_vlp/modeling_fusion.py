"""The fusion-encoder family: unimodal text and image encoders, then fusion layers over both streams (LXMERT,
ViLBERT, ALBEF, METER).

The model exposes its steps separately so that an objective encodes each modality once (`encode_text`,
`encode_image`, and their ITC projections `project_text` / `project_image`) and fuses as many (text, image)
pairings as it needs (`fuse`): ALBEF's hard-negative ITM and re-ranked retrieval (`rerank_retrieval`) are built on
that.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutput
from transformers.utils import ModelOutput

from .configuration_vlp import VLPFusionConfig
from .losses import (
    contrastive_logits,
    contrastive_loss,
    itm_log_odds,
    masked_lm_loss,
    masked_mean_of,
    normalized_patch_targets,
)
from .modeling_dual_encoder import check_input_ids, check_pixel_values
from .modeling_layers import (
    VLPAttention,
    VLPEncoder,
    VLPMLMHead,
    VLPPatchEmbeddings,
    VLPPooler,
    VLPPredictionHeadTransform,
    VLPPreTrainedModel,
    VLPTextEmbeddings,
    VLPTransformerLayer,
    masked_mean,
    self_attention_mask,
)

# --------------------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------------------


@dataclass
class VLPFusionImageOutput(ModelOutput):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_image_tokens, vision_hidden_size)`):
        The unimodal image encoder's output (patch tokens with the class token first, or one token per region).
    attention_mask (`torch.LongTensor` of shape `(batch_size, num_image_tokens)`):
        1 for real image tokens, 0 for padding (padded regions, or patches wholly outside `pixel_mask`).
    hidden_states, attentions (`tuple(torch.FloatTensor)`, *optional*):
        The image encoder's input and layer outputs, and its self-attention weights.
    """

    last_hidden_state: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class VLPFusionFuseOutput(ModelOutput):
    r"""
    text_last_hidden_state (`torch.FloatTensor` of shape `(batch_size, text_length, text_hidden_size)`):
        The fused text stream.
    image_last_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_image_tokens, vision_hidden_size)`):
        The fused image stream (co-attention); None for merge fusion, which leaves the image stream unchanged.
    pooler_output (`torch.FloatTensor` of shape `(batch_size, text_hidden_size)`):
        The fused text [CLS], through BERT's pooler (`fused_pooling="pooler"`, LXMERT) or as is ("first", ALBEF):
        what the ITM and VQA heads read.
    hidden_states (`tuple(torch.FloatTensor)`, *optional*):
        The text stream entering the fusion and after each fusion layer.
    image_hidden_states (`tuple(torch.FloatTensor)`, *optional*):
        The same for the image stream (co-attention only).
    attentions (`tuple(torch.FloatTensor)`, *optional*):
        Self-attention weights of the text stream in each fusion layer, `(batch_size, heads, text_length,
        text_length)`.
    cross_attentions (`tuple(torch.FloatTensor)`, *optional*):
        Text-to-image attention weights of each fusion layer, `(batch_size, heads, text_length, num_image_tokens)`
        (LXMERT's `cross_encoder_attentions`).
    """

    text_last_hidden_state: torch.Tensor | None = None
    image_last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    image_hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class VLPFusionModelOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `return_loss=True`):
        ITC loss of the local batch (pair i is text i with image i).
    logits_per_image (`torch.FloatTensor` of shape `(batch_size, batch_size)`, *optional*):
        Scaled cosine similarities of every image with every text of the batch (None without an ITC head).
    logits_per_text (`torch.FloatTensor` of shape `(batch_size, batch_size)`, *optional*):
        The transpose of `logits_per_image`.
    text_embeds, image_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`, *optional*):
        L2-normalised ITC embeddings of the unimodal states.
    logit_scale (`torch.FloatTensor` of shape `()`, *optional*):
        The temperature `exp(logit_scale)` (clamped), for objectives outside the model.
    text_last_hidden_state (`torch.FloatTensor` of shape `(batch_size, text_length, text_hidden_size)`):
        The fused text stream (LXMERT's `language_output`).
    image_last_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_image_tokens, vision_hidden_size)`):
        The fused image stream (LXMERT's `vision_output`); for merge fusion the image encoder's output.
    pooler_output (`torch.FloatTensor` of shape `(batch_size, text_hidden_size)`):
        The fused text [CLS] the ITM / VQA heads read (LXMERT's `pooled_output`).
    text_unimodal_state (`torch.FloatTensor` of shape `(batch_size, text_length, text_hidden_size)`):
        The unimodal text encoder's output, what `fuse` reads (objectives fuse other pairings of it: hard negatives).
    image_unimodal_state (`torch.FloatTensor` of shape `(batch_size, num_image_tokens, vision_hidden_size)`):
        The unimodal image encoder's output.
    text_attention_mask (`torch.LongTensor` of shape `(batch_size, text_length)`):
        The text padding mask (ones when none was given).
    image_attention_mask (`torch.LongTensor` of shape `(batch_size, num_image_tokens)`):
        The image tokens' padding mask.
    text_hidden_states, image_hidden_states (`tuple(torch.FloatTensor)`, *optional*):
        Each stream's embeddings, then the output of every unimodal layer, then of every fusion layer (the image
        stream's stop at the unimodal layers for merge fusion). LXMERT's own tuples leave out the embeddings.
    text_attentions, image_attentions (`tuple(torch.FloatTensor)`, *optional*):
        Self-attention weights of the unimodal layers.
    cross_attentions (`tuple(torch.FloatTensor)`, *optional*):
        Text-to-image attention weights of each fusion layer.
    """

    loss: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    logit_scale: torch.Tensor | None = None
    text_last_hidden_state: torch.Tensor | None = None
    image_last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    text_unimodal_state: torch.Tensor | None = None
    image_unimodal_state: torch.Tensor | None = None
    text_attention_mask: torch.Tensor | None = None
    image_attention_mask: torch.Tensor | None = None
    text_hidden_states: tuple[torch.Tensor, ...] | None = None
    image_hidden_states: tuple[torch.Tensor, ...] | None = None
    text_attentions: tuple[torch.Tensor, ...] | None = None
    image_attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class VLPFusionForPreTrainingOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*):
        `sum(config.loss_weights[name] * loss_<name>)` over the losses computed (those whose labels were given).
    loss_itc (`torch.FloatTensor` of shape `()`, *optional*, returned when `return_loss=True`):
        ITC over the local batch.
    loss_itm (`torch.FloatTensor` of shape `()`, *optional*, returned with `itm_labels`):
        Cross-entropy of the ITM head.
    loss_mlm (`torch.FloatTensor` of shape `()`, *optional*, returned with `mlm_labels`):
        Cross-entropy over the masked tokens of matching pairs (rows with `itm_labels == 0` are ignored).
    loss_mim (`torch.FloatTensor` of shape `()`, *optional*):
        Regions: the sum of LXMERT's visual losses (object / attribute classification, feature regression), each
        `(loss * weight).mean() * visual_loss_normalizer`. Patches: MSE of the per-patch normalised pixels over
        the masked patches.
    loss_vqa (`torch.FloatTensor` of shape `()`, *optional*, returned with `answer_labels`):
        The answer head's loss (see `answer_loss`).
    mlm_logits (`torch.FloatTensor` of shape `(batch_size, text_length, vocab_size)`):
        The MLM head on the fused text stream (LXMERT's `prediction_logits`).
    itm_logits (`torch.FloatTensor` of shape `(batch_size, 2)`):
        The ITM head on `pooler_output`, [no match, match] (LXMERT's `cross_relationship_score`).
    mim_predictions (`torch.FloatTensor`, *optional*):
        Region features `(batch_size, num_regions, visual_feat_dim)` or patch pixels `(batch_size, num_patches,
        patch_size**2 * num_channels)` predicted from the image stream.
    obj_logits, attr_logits (`torch.FloatTensor` of shape `(batch_size, num_regions, num_object_labels /
    num_attribute_labels)`, *optional*):
        LXMERT's region classification heads.
    answer_logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`, *optional*):
        The answer head (`config.pretraining_answer_head`; LXMERT's `question_answering_score`).
    The other fields are those of `VLPFusionModelOutput`.
    """

    loss: torch.Tensor | None = None
    loss_itc: torch.Tensor | None = None
    loss_itm: torch.Tensor | None = None
    loss_mlm: torch.Tensor | None = None
    loss_mim: torch.Tensor | None = None
    loss_vqa: torch.Tensor | None = None
    mlm_logits: torch.Tensor | None = None
    itm_logits: torch.Tensor | None = None
    mim_predictions: torch.Tensor | None = None
    obj_logits: torch.Tensor | None = None
    attr_logits: torch.Tensor | None = None
    answer_logits: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    logit_scale: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    text_last_hidden_state: torch.Tensor | None = None
    image_last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    text_unimodal_state: torch.Tensor | None = None
    image_unimodal_state: torch.Tensor | None = None
    text_attention_mask: torch.Tensor | None = None
    image_attention_mask: torch.Tensor | None = None
    text_hidden_states: tuple[torch.Tensor, ...] | None = None
    image_hidden_states: tuple[torch.Tensor, ...] | None = None
    text_attentions: tuple[torch.Tensor, ...] | None = None
    image_attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class VLPFusionQuestionAnsweringOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*, returned with `labels`): see `answer_loss`.
    logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`): answer scores.
    pooler_output (`torch.FloatTensor` of shape `(batch_size, text_hidden_size)`): what the answer head read.
    text_hidden_states, image_hidden_states, text_attentions, image_attentions, cross_attentions: as
    `VLPFusionModelOutput`.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    text_hidden_states: tuple[torch.Tensor, ...] | None = None
    image_hidden_states: tuple[torch.Tensor, ...] | None = None
    text_attentions: tuple[torch.Tensor, ...] | None = None
    image_attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class VLPFusionRetrievalOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*):
        ITC loss (`return_loss=True`) plus ITM cross-entropy (`itm_labels`), each weighted by `config.loss_weights`.
    logits (`torch.FloatTensor` of shape `(batch_size,)`):
        ITM log-odds `itm_logits[:, 1] - itm_logits[:, 0]` that text i matches image i.
    itm_logits (`torch.FloatTensor` of shape `(batch_size, 2)`): the ITM head, [no match, match].
    logits_per_image, logits_per_text, text_embeds, image_embeds, logit_scale: ITC, as `VLPFusionModelOutput`.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    itm_logits: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    logit_scale: torch.Tensor | None = None


@dataclass
class VLPRerankedRetrieval:
    r"""What `rerank_retrieval` returns.

    scores_i2t (`(num_images, num_texts)`) / scores_t2i (`(num_texts, num_images)`): the final ranking scores. For
        each query its top k candidates by ITC score `itm_log_odds + cosine_similarity` (ALBEF adds the two the
        same way); the other candidates keep their ITC order, shifted by one constant below every re-scored one
        (the matrices stay finite, so `evaluation.retrieval_metrics` can read them).
    similarity (`(num_images, num_texts)`): ITC cosine similarities of all pairs.
    topk_i2t (`(num_images, k)`) / topk_t2i (`(num_texts, k)`): the re-scored candidates of each query.
    num_itm_pairs: pairs scored by the ITM head (the two directions' top k, each pair once).
    metrics: R@1/5/10 (%) of the re-ranked (`i2t_r@1`, ...) and ITC-only (`itc_i2t_r@1`, ...) rankings, with the
        conventions of `evaluation.retrieval_metrics` (ties count against; an image's best caption counts).
    """

    scores_i2t: torch.Tensor
    scores_t2i: torch.Tensor
    similarity: torch.Tensor
    topk_i2t: torch.Tensor
    topk_t2i: torch.Tensor
    num_itm_pairs: int
    metrics: dict[str, float]


# --------------------------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------------------------


def key_padding_mask(attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """(B, K) 1/0 mask of the keys -> (B, 1, 1, K) additive mask for any number of queries (cross-attention to
    that stream); None when nothing is padded."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    mask = torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device)
    return mask.masked_fill(~attention_mask.bool(), torch.finfo(dtype).min)[:, None, None, :]


class VLPRegionEmbeddings(nn.Module):
    """Detector regions -> tokens, as LXMERT: LayerNorm(Linear(features)) and LayerNorm(Linear(boxes)), averaged."""

    def __init__(self, config: VLPFusionConfig):
        super().__init__()
        vision = config.vision_config
        self.feat_proj = nn.Linear(config.visual_feat_dim, vision.hidden_size)
        self.feat_layer_norm = nn.LayerNorm(vision.hidden_size, eps=vision.layer_norm_eps)
        self.box_proj = nn.Linear(config.visual_pos_dim, vision.hidden_size)
        self.box_layer_norm = nn.LayerNorm(vision.hidden_size, eps=vision.layer_norm_eps)
        self.dropout = nn.Dropout(vision.hidden_dropout)

    def forward(self, visual_feats: torch.Tensor, visual_pos: torch.Tensor) -> torch.Tensor:
        dtype = self.feat_proj.weight.dtype
        feats = self.feat_layer_norm(self.feat_proj(visual_feats.to(dtype)))
        boxes = self.box_layer_norm(self.box_proj(visual_pos.to(dtype)))
        return self.dropout((feats + boxes) / 2)


class VLPCoAttentionLayer(nn.Module):
    """Both streams, each attending to itself and to the other stream as it entered this layer, then its FFN.

    The order is LXMERT's cross -> self -> FFN or METER's self -> cross -> FFN (`config.co_attention_order`). With
    `config.share_cross_attention` one cross-attention module (and its LayerNorm) serves both directions (LXMERT).
    """

    def __init__(self, config: VLPFusionConfig):
        super().__init__()
        text, vision = config.text_config, config.vision_config
        shared = config.share_cross_attention
        order = dict(cross_attention_first=config.co_attention_order == "cross_first", pre_norm=config.fusion_pre_norm)
        self.text_layer = VLPTransformerLayer(
            text, cross_attention_hidden_size=None if shared else vision.hidden_size, **order
        )
        self.image_layer = VLPTransformerLayer(
            vision, cross_attention_hidden_size=None if shared else text.hidden_size, **order
        )
        self.cross_attn = VLPAttention(text, kv_hidden_size=vision.hidden_size) if shared else None
        self.layer_norm_cross = nn.LayerNorm(text.hidden_size, eps=text.layer_norm_eps) if shared else None

    def forward(self, text_states, text_self_mask, text_keys_mask, image_states, image_self_mask, image_keys_mask):
        shared = (self.cross_attn, self.layer_norm_cross) if self.cross_attn is not None else None
        new_text, text_weights, cross_weights = self.text_layer(
            text_states, text_self_mask, image_states, image_keys_mask, shared_cross_attention=shared
        )
        new_image, _, _ = self.image_layer(
            image_states, image_self_mask, text_states, text_keys_mask, shared_cross_attention=shared
        )
        return new_text, new_image, text_weights, cross_weights


class VLPFusionEncoder(nn.Module):
    """`num_fusion_layers` co-attention layers, or merge layers (text self-attention + cross-attention to the image
    + FFN, ALBEF)."""

    def __init__(self, config: VLPFusionConfig):
        super().__init__()
        self.fusion_type = config.fusion_type
        if config.fusion_type == "merge":
            layers = [
                VLPTransformerLayer(
                    config.text_config,
                    cross_attention_hidden_size=config.vision_config.hidden_size,
                    pre_norm=config.fusion_pre_norm,
                )
                for _ in range(config.num_fusion_layers)
            ]
        else:
            layers = [VLPCoAttentionLayer(config) for _ in range(config.num_fusion_layers)]
        self.layers = nn.ModuleList(layers)

    def forward(
        self,
        text_states, text_self_mask, text_keys_mask, image_states, image_self_mask, image_keys_mask,
        output_hidden_states: bool = False, output_attentions: bool = False,
    ) -> VLPFusionFuseOutput:  # fmt: skip
        co_attention = self.fusion_type == "co_attention"
        text_hidden = (text_states,) if output_hidden_states else None
        image_hidden = (image_states,) if output_hidden_states and co_attention else None
        self_weights, cross_weights = ((), ()) if output_attentions else (None, None)
        for layer in self.layers:
            if co_attention:
                text_states, image_states, weights, cross = layer(
                    text_states, text_self_mask, text_keys_mask, image_states, image_self_mask, image_keys_mask
                )
            else:
                text_states, weights, cross = layer(text_states, text_self_mask, image_states, image_keys_mask)
            if output_hidden_states:
                text_hidden += (text_states,)
                if co_attention:
                    image_hidden += (image_states,)
            if output_attentions:
                self_weights += (weights,)
                cross_weights += (cross,)
        return VLPFusionFuseOutput(
            text_last_hidden_state=text_states,
            image_last_hidden_state=image_states if co_attention else None,
            hidden_states=text_hidden,
            image_hidden_states=image_hidden,
            attentions=self_weights,
            cross_attentions=cross_weights,
        )


class VLPRegionHead(nn.Module):
    """LXMERT's masked-region heads on the image stream: object and attribute classes, feature regression."""

    def __init__(self, config: VLPFusionConfig):
        super().__init__()
        vision = config.vision_config
        self.transform = VLPPredictionHeadTransform(vision.hidden_size, vision.hidden_act, vision.layer_norm_eps)
        sizes = {"obj": config.num_object_labels, "attr": config.num_attribute_labels, "feat": config.visual_feat_dim}
        self.decoders = nn.ModuleDict(
            {name: nn.Linear(vision.hidden_size, sizes[name]) for name in config.region_losses}
        )

    def forward(self, hidden_states: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden_states = self.transform(hidden_states)
        return {name: decoder(hidden_states) for name, decoder in self.decoders.items()}


class VLPAnswerHead(nn.Module):
    """LXMERT's answer classifier: Linear(D, 2D) -> GELU -> LayerNorm -> Linear(2D, num_labels)."""

    def __init__(self, hidden_size: int, num_labels: int, layer_norm_eps: float):
        super().__init__()
        self.dense = nn.Linear(hidden_size, 2 * hidden_size)
        self.activation = ACT2FN["gelu"]
        self.layer_norm = nn.LayerNorm(2 * hidden_size, eps=layer_norm_eps)
        self.classifier = nn.Linear(2 * hidden_size, num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.layer_norm(self.activation(self.dense(pooled))))


# --------------------------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------------------------


def answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Answer indices `(B,)`: cross-entropy (LXMERT's pretraining QA task). Soft scores `(B, num_labels)` in
    [0, 1]: binary cross-entropy per answer, times `num_labels` (VQA fine-tuning in LXMERT and ViLT)."""
    if labels.ndim == 1 and not labels.is_floating_point():
        return F.cross_entropy(logits, labels.to(logits.device))
    if labels.shape != logits.shape:
        raise ValueError(
            f"Answer labels must be indices of shape ({logits.shape[0]},) or soft scores of shape "
            f"{tuple(logits.shape)}, got shape {tuple(labels.shape)} ({labels.dtype})."
        )
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits)) * labels.shape[1]


def region_loss(
    predictions: dict[str, torch.Tensor],
    targets: dict[str, tuple[torch.Tensor, torch.Tensor]],
    visual_loss_normalizer: float,
) -> torch.Tensor:
    """LXMERT's visual losses. `targets[name] = (labels, weights)` with weights `(B, N)` (the masked regions, or
    detector confidences). Classes ("obj", "attr") are indices `(B, N)` (cross-entropy) or distributions
    `(B, N, C)` (soft cross-entropy, UNITER's MRC-kl); "feat" is `(B, N, visual_feat_dim)` (smooth L1, averaged
    over the feature). Each is `(loss * weights).mean() * visual_loss_normalizer`, and they are summed."""
    total = None
    for name, (labels, weights) in targets.items():
        scores = predictions[name]
        if name == "feat":
            loss = F.smooth_l1_loss(scores, labels.to(scores), reduction="none").mean(-1)
        elif labels.is_floating_point():
            loss = -(labels.to(scores) * F.log_softmax(scores, dim=-1)).sum(-1)
        else:
            loss = F.cross_entropy(scores.flatten(0, -2), labels.reshape(-1), reduction="none").view(labels.shape)
        loss = (loss * weights.to(loss)).mean() * visual_loss_normalizer
        total = loss if total is None else total + loss
    return total


def patch_regression_loss(
    predictions: torch.Tensor, pixel_values: torch.Tensor, mim_mask: torch.Tensor, patch_size: int
) -> torch.Tensor:
    """MSE between predicted and per-patch normalised pixels (MAE's `norm_pix_loss`) over the masked patches."""
    target = normalized_patch_targets(pixel_values, patch_size)
    loss = ((predictions.float() - target) ** 2).mean(dim=-1)
    return masked_mean_of(loss, mim_mask.bool())


# --------------------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------------------


def _return(model, output: ModelOutput, return_dict: bool | None):
    return output if (return_dict if return_dict is not None else model.config.return_dict) else output.to_tuple()


class VLPFusionPreTrainedModel(VLPPreTrainedModel):
    config: VLPFusionConfig
    config_class = VLPFusionConfig
    input_modalities = ("image", "text")
    _no_split_modules = [*VLPPreTrainedModel._no_split_modules, "VLPCoAttentionLayer", "VLPRegionEmbeddings"]
    family_auto_map = {
        "AutoModel": "VLPFusionModel",
        "AutoModelForPreTraining": "VLPFusionForPreTraining",
        "AutoModelForMaskedLM": "VLPFusionForPreTraining",
        "AutoModelForVisualQuestionAnswering": "VLPFusionForQuestionAnswering",
    }

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, VLPFusionModel):
            if module.logit_scale is not None:
                init.constant_(module.logit_scale, float(self.config.logit_scale_init_value))
            if module.mask_token is not None:
                init.normal_(module.mask_token, std=self.config.initializer_range)


class VLPFusionModel(VLPFusionPreTrainedModel):
    """Text encoder + image encoder (ViT on patches, or LXMERT's region encoder) + fusion layers + pooler + ITC
    projections. See `VLPFusionConfig` for the architectures."""

    def __init__(self, config: VLPFusionConfig):
        super().__init__(config)
        text, vision = config.text_config, config.vision_config
        # The layers read the towers' configs, whose attention implementation `PreTrainedModel.__init__` leaves
        # unresolved (it resolves the top-level config's only): they follow the model's unless set on their own.
        for tower in (text, vision):
            if tower._attn_implementation is None:
                tower._attn_implementation_internal = config._attn_implementation
        self.text_embeddings = VLPTextEmbeddings(text)
        self.text_encoder = VLPEncoder(text)
        self.text_final_layernorm = (
            nn.LayerNorm(text.hidden_size, eps=text.layer_norm_eps) if text.final_layernorm else nn.Identity()
        )
        if config.visual_input == "regions":
            self.image_embeddings = VLPRegionEmbeddings(config)
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
        self.pooler = VLPPooler(text.hidden_size) if config.fused_pooling == "pooler" else None
        self.text_projection = self.image_projection = self.logit_scale = None
        if config.projection_dim is not None:
            self.text_projection = nn.Linear(text.hidden_size, config.projection_dim)
            self.image_projection = nn.Linear(vision.hidden_size, config.projection_dim)
            self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.text_embeddings.token_embedding

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.text_embeddings.token_embedding = value

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
        r"""The unimodal text encoder: `last_hidden_state` `(batch_size, text_length, text_hidden_size)`."""
        check_input_ids(input_ids, attention_mask)
        if token_type_ids is not None and token_type_ids.shape != input_ids.shape:
            raise ValueError(
                f"`token_type_ids` has shape {tuple(token_type_ids.shape)} but `input_ids` has "
                f"{tuple(input_ids.shape)}."
            )
        hidden_states = self.text_embeddings(input_ids, token_type_ids=token_type_ids)
        mask = self_attention_mask(
            self.config.text_config, attention_mask, input_ids.shape[1], hidden_states.dtype, hidden_states.device,
            is_causal=False,
        )  # fmt: skip
        outputs = self.text_encoder(
            hidden_states, mask, output_hidden_states=output_hidden_states, output_attentions=output_attentions
        )
        return BaseModelOutput(
            last_hidden_state=self.text_final_layernorm(outputs.last_hidden_state),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def _check_visual_inputs(self, pixel_values, visual_feats, visual_pos) -> None:
        if self.config.visual_input == "regions":
            if pixel_values is not None:
                raise ValueError(
                    "This model reads detector regions (`config.visual_input='regions'`): pass `visual_feats` "
                    "(batch_size, num_regions, visual_feat_dim) and `visual_pos`, not `pixel_values`."
                )
            if visual_feats is None or visual_pos is None:
                given = (("visual_feats", visual_feats), ("visual_pos", visual_pos))
                missing = [name for name, value in given if value is None]
                raise ValueError(
                    f"`{'` and `'.join(missing)}` is required: this model reads detector regions and their boxes."
                )
        elif visual_feats is not None or visual_pos is not None:
            raise ValueError(
                "This model reads images as patches (`config.visual_input='patches'`): pass `pixel_values`, not "
                "region features (`visual_feats` / `visual_pos`)."
            )

    def _image_batch_size(self, pixel_values, visual_feats) -> int | None:
        image = visual_feats if self.config.visual_input == "regions" else pixel_values
        return image.shape[0] if isinstance(image, torch.Tensor) and image.ndim > 0 else None

    def _embed_regions(self, visual_feats, visual_pos, visual_attention_mask, mim_mask):
        if visual_feats.ndim != 3 or visual_feats.shape[-1] != self.config.visual_feat_dim:
            raise ValueError(
                f"`visual_feats` must have shape (batch_size, num_regions, {self.config.visual_feat_dim}), got "
                f"{tuple(visual_feats.shape)}."
            )
        expected = (*visual_feats.shape[:2], self.config.visual_pos_dim)
        if tuple(visual_pos.shape) != expected:
            raise ValueError(
                f"`visual_pos` must have shape {expected} (one box per region), got {tuple(visual_pos.shape)}."
            )
        for name, mask in (("visual_attention_mask", visual_attention_mask), ("mim_mask", mim_mask)):
            if mask is not None and tuple(mask.shape) != tuple(visual_feats.shape[:2]):
                raise ValueError(
                    f"`{name}` must have shape {tuple(visual_feats.shape[:2])} (one value per region), got "
                    f"{tuple(mask.shape)}."
                )
        if mim_mask is not None:  # LXMERT zeroes the features of masked regions and keeps their boxes
            visual_feats = visual_feats.masked_fill(mim_mask.bool()[..., None], 0.0)
        return self.image_embeddings(visual_feats, visual_pos), visual_attention_mask

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
        attention_mask = None
        if pixel_mask is not None:
            if tuple(pixel_mask.shape) != (batch_size, height, width):
                raise ValueError(
                    f"`pixel_mask` must have shape ({batch_size}, {height}, {width}) like `pixel_values`, got "
                    f"{tuple(pixel_mask.shape)}."
                )
            # A patch is padding when none of its pixels is real.
            patch_size = self.config.vision_config.patch_size
            real = F.max_pool2d(pixel_mask[:, None].float(), patch_size).flatten(1) > 0
            prefix_mask = torch.ones(batch_size, prefix, dtype=torch.bool, device=real.device)
            attention_mask = torch.cat([prefix_mask, real], dim=1).long()
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
        self._check_visual_inputs(pixel_values, visual_feats, visual_pos)
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

    def project_text(self, text_states: torch.Tensor) -> torch.Tensor:
        """Unimodal text states (B, T, D) -> L2-normalised ITC embeddings (B, projection_dim) of the first token."""
        self._require_itc_head()
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
        return self.project_text(self.encode_text(input_ids, attention_mask, token_type_ids).last_hidden_state)

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
        scale = self.logit_scale
        if self.config.logit_scale_max is not None:
            scale = scale.clamp(max=math.log(self.config.logit_scale_max))
        return scale.exp()

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
        if text_states.shape[0] != image_states.shape[0]:
            raise ValueError(
                f"`fuse` pairs text i with image i, but got {text_states.shape[0]} texts and {image_states.shape[0]} "
                "images; index both sides to the pairs you want (e.g. `text_states[i]`, `image_states[j]`)."
            )
        for name, mask, states in (
            ("text_attention_mask", text_attention_mask, text_states),
            ("image_attention_mask", image_attention_mask, image_states),
        ):
            if mask is not None and tuple(mask.shape) != tuple(states.shape[:2]):
                raise ValueError(f"`{name}` must have shape {tuple(states.shape[:2])}, got {tuple(mask.shape)}.")
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
            text_states,
            text_self_mask,
            key_padding_mask(text_attention_mask, image_states.dtype) if co_attention else None,
            image_states,
            image_self_mask,
            key_padding_mask(image_attention_mask, dtype),
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        text_last = outputs.text_last_hidden_state
        return VLPFusionFuseOutput(
            text_last_hidden_state=text_last,
            image_last_hidden_state=outputs.image_last_hidden_state,
            pooler_output=self.pooler(text_last) if self.pooler is not None else text_last[:, 0],
            hidden_states=outputs.hidden_states,
            image_hidden_states=outputs.image_hidden_states,
            attentions=outputs.attentions,
            cross_attentions=outputs.cross_attentions,
        )

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
        self._check_visual_inputs(pixel_values, visual_feats, visual_pos)
        image_batch = self._image_batch_size(pixel_values, visual_feats)
        if input_ids is not None and image_batch is not None and input_ids.shape[0] != image_batch:
            image_name = "visual_feats" if self.config.visual_input == "regions" else "pixel_values"
            raise ValueError(
                f"`input_ids` has {input_ids.shape[0]} texts but `{image_name}` has {image_batch} images; a fusion "
                "model takes (text, image) pairs, so both batch sizes must be equal (repeat the images or texts, or "
                "use `encode_text` / `encode_image` once and `fuse` on the pairings)."
            )
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
            text_embeds = self.project_text(text.last_hidden_state)
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
        return _return(self, output, return_dict)


class VLPFusionForPreTraining(VLPFusionPreTrainedModel):
    """`VLPFusionModel` with ITC (in the base model), ITM, MLM (tied), masked region / patch modelling and
    optionally LXMERT's pretraining answer head. Each loss is computed only when its labels are given."""

    _tied_weights_keys = {"mlm_head.decoder.weight": "vlp.text_embeddings.token_embedding.weight"}

    def __init__(self, config: VLPFusionConfig):
        super().__init__(config)
        text, vision = config.text_config, config.vision_config
        self.vlp = VLPFusionModel(config)
        self.itm_head = nn.Linear(text.hidden_size, 2)
        self.mlm_head = VLPMLMHead(text.hidden_size, text.vocab_size, text.hidden_act, text.layer_norm_eps)
        self.region_head = self.patch_head = None
        if config.visual_input == "regions":
            self.region_head = VLPRegionHead(config) if config.region_losses else None
        else:
            self.patch_head = nn.Linear(vision.hidden_size, vision.patch_size**2 * vision.num_channels)
        self.answer_head = (
            VLPAnswerHead(text.hidden_size, config.num_labels, text.layer_norm_eps)
            if config.pretraining_answer_head
            else None
        )
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.vlp.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.vlp.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.mlm_head.decoder

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.mlm_head.decoder = value

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

    def _region_targets(self, obj_labels, attr_labels, feat_labels, region_class_scores, visual_feats, mim_mask):
        """LXMERT's `obj_labels` dict `{name: (labels, weights)}` as is, or one built from separate labels weighted
        by `mim_mask`; feature regression targets the unmasked `visual_feats` whenever `mim_mask` is given."""
        if isinstance(obj_labels, dict):
            unknown = sorted(set(obj_labels) - set(self.config.region_losses))
            if unknown:
                raise ValueError(
                    f"`obj_labels` has entries {unknown} this model has no head for (`config.region_losses` = "
                    f"{self.config.region_losses})."
                )
            return {name: tuple(value) for name, value in obj_labels.items()}
        if obj_labels is not None and region_class_scores is not None:
            raise ValueError("Pass `obj_labels` (class indices) or `region_class_scores` (distributions), not both.")
        labels = {
            "obj": obj_labels if obj_labels is not None else region_class_scores,
            "attr": attr_labels,
            "feat": feat_labels if feat_labels is not None else (visual_feats if mim_mask is not None else None),
        }
        labels = {name: value for name, value in labels.items() if value is not None}
        if not labels:
            return {}
        if mim_mask is None:
            raise ValueError(
                f"Region labels ({', '.join(labels)}) need `mim_mask` (batch_size, num_regions), True for the "
                "regions that were masked, which the losses are computed on."
            )
        explicit = {name for name in labels if name != "feat" or feat_labels is not None}
        missing_heads = sorted(explicit - set(self.config.region_losses))
        if missing_heads:
            raise ValueError(f"This model has no region head for {missing_heads} (`config.region_losses`).")
        weights = mim_mask.float()
        return {name: (value, weights) for name, value in labels.items() if name in self.config.region_losses}

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
        batch_size = input_ids.shape[0]
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

        losses = {}
        if return_loss:
            losses["itc"] = outputs.loss
        if itm_labels is not None:
            if tuple(itm_labels.shape) != (batch_size,):
                raise ValueError(f"`itm_labels` must have shape ({batch_size},), got {tuple(itm_labels.shape)}.")
            losses["itm"] = F.cross_entropy(itm_logits, itm_labels.to(itm_logits.device))
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
                self._region_targets(obj_labels, attr_labels, feat_labels, region_class_scores, visual_feats, mim_mask)
                if self.region_head is not None
                else {}
            )
            if targets:
                losses["mim"] = region_loss(region_predictions, targets, self.config.visual_loss_normalizer)
        elif mim_mask is not None:
            patch_size = self.config.vision_config.patch_size
            losses["mim"] = patch_regression_loss(mim_predictions, pixel_values, mim_mask, patch_size)
        if answer_labels is not None:
            if answer_logits is None:
                raise ValueError("`answer_labels` needs an answer head: set `config.pretraining_answer_head=True`.")
            losses["vqa"] = answer_loss(answer_logits, answer_labels)

        loss = None
        if losses:
            loss = sum(self.config.loss_weights[name] * value for name, value in losses.items())
        output = VLPFusionForPreTrainingOutput(
            loss=loss,
            loss_itc=losses.get("itc"),
            loss_itm=losses.get("itm"),
            loss_mlm=losses.get("mlm"),
            loss_mim=losses.get("mim"),
            loss_vqa=losses.get("vqa"),
            mlm_logits=mlm_logits,
            itm_logits=itm_logits,
            mim_predictions=mim_predictions,
            obj_logits=region_predictions.get("obj"),
            attr_logits=region_predictions.get("attr"),
            answer_logits=answer_logits,
            text_embeds=outputs.text_embeds,
            image_embeds=outputs.image_embeds,
            logit_scale=outputs.logit_scale,
            logits_per_image=outputs.logits_per_image,
            logits_per_text=outputs.logits_per_text,
            text_last_hidden_state=outputs.text_last_hidden_state,
            image_last_hidden_state=outputs.image_last_hidden_state,
            pooler_output=outputs.pooler_output,
            text_unimodal_state=outputs.text_unimodal_state,
            image_unimodal_state=outputs.image_unimodal_state,
            text_attention_mask=outputs.text_attention_mask,
            image_attention_mask=outputs.image_attention_mask,
            text_hidden_states=outputs.text_hidden_states,
            image_hidden_states=outputs.image_hidden_states,
            text_attentions=outputs.text_attentions,
            image_attentions=outputs.image_attentions,
            cross_attentions=outputs.cross_attentions,
        )
        return _return(self, output, return_dict)


class VLPFusionForQuestionAnswering(VLPFusionPreTrainedModel):
    """`VLPFusionModel` with LXMERT's answer head on `pooler_output` (`config.num_labels` answers, names in
    `config.id2label`)."""

    def __init__(self, config: VLPFusionConfig):
        super().__init__(config)
        text = config.text_config
        self.vlp = VLPFusionModel(config)
        self.answer_head = VLPAnswerHead(text.hidden_size, config.num_labels, text.layer_norm_eps)
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
        output = VLPFusionQuestionAnsweringOutput(
            loss=answer_loss(logits, labels) if labels is not None else None,
            logits=logits,
            pooler_output=outputs.pooler_output,
            text_hidden_states=outputs.text_hidden_states,
            image_hidden_states=outputs.image_hidden_states,
            text_attentions=outputs.text_attentions,
            image_attentions=outputs.image_attentions,
            cross_attentions=outputs.cross_attentions,
        )
        return _return(self, output, return_dict)


class VLPFusionForImageTextRetrieval(VLPFusionPreTrainedModel):
    """`VLPFusionModel` with an ITM head: ITC similarity for every pair, ITM log-odds for given pairs, and ALBEF's
    re-ranked retrieval (`rank`)."""

    # A pretraining checkpoint loads here with its ITM head; its other heads are not part of this model.
    _keys_to_ignore_on_load_unexpected = [r"^(mlm|mim|patch|region|answer)_head\."]

    def __init__(self, config: VLPFusionConfig):
        super().__init__(config)
        self.vlp = VLPFusionModel(config)
        self.itm_head = nn.Linear(config.text_config.hidden_size, 2)
        self.post_init()

    def itm_logits_for_pairs(
        self,
        text_states: torch.Tensor,
        text_attention_mask: torch.Tensor | None,
        image_states: torch.Tensor,
        image_attention_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """ITM logits (B, 2) of text i with image i, from unimodal states."""
        fused = self.vlp.fuse(text_states, text_attention_mask, image_states, image_attention_mask)
        return self.itm_head(fused.pooler_output)

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
        itm_labels: torch.Tensor | None = None,
        return_loss: bool | None = None,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
        **kwargs,
    ) -> VLPFusionRetrievalOutput:
        r"""Scores text i against image i (`logits`, ITM log-odds) and every text against every image of the batch
        (`logits_per_image`, ITC). `itm_labels` `(batch_size,)` adds the ITM cross-entropy, `return_loss` the ITC
        loss."""
        outputs = self.vlp(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            pixel_values=pixel_values, pixel_mask=pixel_mask, visual_feats=visual_feats, visual_pos=visual_pos,
            visual_attention_mask=visual_attention_mask, return_loss=return_loss,
            interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True,
        )  # fmt: skip
        itm_logits = self.itm_head(outputs.pooler_output)
        losses = {}
        if return_loss:
            losses["itc"] = outputs.loss
        if itm_labels is not None:
            losses["itm"] = F.cross_entropy(itm_logits, itm_labels.to(itm_logits.device))
        loss = sum(self.config.loss_weights[name] * value for name, value in losses.items()) if losses else None
        output = VLPFusionRetrievalOutput(
            loss=loss,
            logits=itm_log_odds(itm_logits),
            itm_logits=itm_logits,
            logits_per_image=outputs.logits_per_image,
            logits_per_text=outputs.logits_per_text,
            text_embeds=outputs.text_embeds,
            image_embeds=outputs.image_embeds,
            logit_scale=outputs.logit_scale,
        )
        return _return(self, output, return_dict)

    def rank(
        self,
        image_inputs: dict[str, torch.Tensor],
        text_inputs: dict[str, torch.Tensor],
        k: int = 16,
        batch_size: int = 64,
        image_ids: torch.Tensor | None = None,
        show_progress: bool = False,
    ) -> VLPRerankedRetrieval:
        """ALBEF's re-ranked retrieval over these images and texts; see `rerank_retrieval`."""
        return rerank_retrieval(self, image_inputs, text_inputs, k, batch_size, image_ids, show_progress)


# --------------------------------------------------------------------------------------------------------------
# Re-ranked retrieval
# --------------------------------------------------------------------------------------------------------------

IMAGE_INPUT_NAMES = ("pixel_values", "pixel_mask", "visual_feats", "visual_pos", "visual_attention_mask")
TEXT_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def _batch_rows(inputs: dict, argument: str, names: tuple[str, ...]) -> int:
    if not isinstance(inputs, dict) or not inputs:
        raise ValueError(
            f"`{argument}` must be a non-empty dict of tensors (keys among {names}), got {type(inputs).__name__}."
        )
    unknown = sorted(set(inputs) - set(names))
    if unknown:
        raise ValueError(f"`{argument}` has unknown keys {unknown}; expected keys among {names}.")
    sizes = {name: value.shape[0] for name, value in inputs.items() if value is not None}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"The tensors of `{argument}` must have the same batch size, got {sizes}.")
    return next(iter(sizes.values()))


def _text_to_image(image_ids, num_images: int, num_texts: int, device) -> torch.Tensor:
    if image_ids is None:
        if num_images != num_texts:
            raise ValueError(
                f"Got {num_images} images and {num_texts} texts: when several captions share an image, pass "
                "`image_ids` (num_texts,), the index among the images of the image each text describes."
            )
        return torch.arange(num_texts, device=device)
    image_ids = torch.as_tensor(image_ids, device=device)
    if image_ids.shape != (num_texts,) or image_ids.is_floating_point():
        raise ValueError(
            f"`image_ids` must hold one integer image index per text, shape ({num_texts},), got shape "
            f"{tuple(image_ids.shape)} ({image_ids.dtype})."
        )
    if num_texts and (int(image_ids.min()) < 0 or int(image_ids.max()) >= num_images):
        raise ValueError(
            f"`image_ids` must index the {num_images} images, got values in [{int(image_ids.min())}, "
            f"{int(image_ids.max())}]."
        )
    return image_ids.long()


def _recalls(scores: torch.Tensor, is_target: torch.Tensor, ks=(1, 5, 10)) -> list[float]:
    """R@k (%) of the best target in each row, ties counting against it (as `evaluation.retrieval_metrics`)."""
    best = scores.masked_fill(~is_target, -math.inf).amax(dim=1, keepdim=True)
    ranks = 1 + ((scores >= best) & ~is_target).sum(dim=1)
    return [float((ranks <= k).double().mean() * 100) for k in ks]


@torch.no_grad()
def rerank_retrieval(
    model: nn.Module,
    image_inputs: dict[str, torch.Tensor],
    text_inputs: dict[str, torch.Tensor],
    k: int = 16,
    batch_size: int = 64,
    image_ids: torch.Tensor | None = None,
    show_progress: bool = False,
) -> VLPRerankedRetrieval:
    """Rank every text for every image and every image for every text, the ALBEF way.

    Every image and text is encoded once (in batches of `batch_size`); the ITC cosine similarity ranks all pairs;
    then for each query, in both directions, the ITM head re-scores its top `k` candidates: final score = ITM
    log-odds + cosine similarity. A pair in both directions' top k is fused once. Fusion runs in batches of
    `batch_size` pairs, so the number of candidates is bounded by memory for the unimodal states only.

    Args:
        model: a fusion model with an ITM head (`VLPFusionForImageTextRetrieval`, `VLPFusionForPreTraining`).
        image_inputs: `pixel_values` (+ `pixel_mask`) or `visual_feats`, `visual_pos` (+ `visual_attention_mask`)
            of the `num_images` images.
        text_inputs: `input_ids` (+ `attention_mask`, `token_type_ids`) of the `num_texts` texts.
        k: candidates re-scored per query; at most the number of images and of texts.
        image_ids: `(num_texts,)` index of the image each text describes; required when the numbers of images and
            texts differ (several captions per image), else text i describes image i. Used for `metrics`.
    """
    if not hasattr(model, "vlp") or not hasattr(model, "itm_head"):
        raise ValueError(f"`model` must be a fusion model with an ITM head, got {type(model).__name__}.")
    vlp, itm_head = model.vlp, model.itm_head
    vlp._require_itc_head()
    num_images = _batch_rows(image_inputs, "image_inputs", IMAGE_INPUT_NAMES)
    num_texts = _batch_rows(text_inputs, "text_inputs", TEXT_INPUT_NAMES)
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"`k` must be a positive int, got {k!r}.")
    if k > min(num_images, num_texts):
        side, count = ("texts", num_texts) if num_texts < num_images else ("images", num_images)
        raise ValueError(f"`k` ({k}) is larger than the number of candidate {side} ({count}).")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}.")
    device = vlp.device
    text_to_image = _text_to_image(image_ids, num_images, num_texts, device)

    from tqdm.auto import tqdm

    def batches(inputs, count, description):
        present = {name: value for name, value in inputs.items() if value is not None}
        for start in tqdm(range(0, count, batch_size), desc=description, disable=not show_progress):
            yield {name: value[start : start + batch_size].to(device) for name, value in present.items()}

    image_states, image_masks, image_embeds = [], [], []
    for chunk in batches(image_inputs, num_images, "images"):
        image = vlp.encode_image(**chunk)
        image_states.append(image.last_hidden_state)
        image_masks.append(image.attention_mask)
        image_embeds.append(vlp.project_image(image.last_hidden_state, image.attention_mask))
    text_states, text_masks, text_embeds = [], [], []
    for chunk in batches(text_inputs, num_texts, "texts"):
        states = vlp.encode_text(**chunk).last_hidden_state
        text_states.append(states)
        text_masks.append(chunk.get("attention_mask", torch.ones(states.shape[:2], dtype=torch.long, device=device)))
        text_embeds.append(vlp.project_text(states))
    image_states, image_masks = torch.cat(image_states), torch.cat(image_masks)
    text_states, text_masks = torch.cat(text_states), torch.cat(text_masks)
    similarity = (torch.cat(image_embeds) @ torch.cat(text_embeds).t()).float()

    topk_i2t = similarity.topk(k, dim=1).indices  # (num_images, k) texts
    topk_t2i = similarity.t().topk(k, dim=1).indices  # (num_texts, k) images
    # Pairs as image * num_texts + text: the two directions' candidates, each pair fused once.
    keys_i2t = torch.arange(num_images, device=device)[:, None] * num_texts + topk_i2t
    keys_t2i = topk_t2i * num_texts + torch.arange(num_texts, device=device)[:, None]
    pairs = torch.unique(torch.cat([keys_i2t.flatten(), keys_t2i.flatten()]))  # sorted
    log_odds = torch.empty(pairs.shape[0], device=device)
    for start in tqdm(range(0, pairs.shape[0], batch_size), desc="ITM pairs", disable=not show_progress):
        chunk = pairs[start : start + batch_size]
        images, texts = chunk // num_texts, chunk % num_texts
        fused = vlp.fuse(text_states[texts], text_masks[texts], image_states[images], image_masks[images])
        log_odds[start : start + batch_size] = itm_log_odds(itm_head(fused.pooler_output)).float()

    rescored_i2t = log_odds[torch.searchsorted(pairs, keys_i2t)] + similarity.gather(1, topk_i2t)
    rescored_t2i = log_odds[torch.searchsorted(pairs, keys_t2i)] + similarity.t().gather(1, topk_t2i)
    # Candidates outside the top k keep their ITC order, all below the lowest re-scored candidate.
    lowest = torch.minimum(rescored_i2t.min(), rescored_t2i.min())
    below = similarity - (similarity.max() - lowest + 1.0)
    scores_i2t = below.scatter(1, topk_i2t, rescored_i2t)
    scores_t2i = below.t().scatter(1, topk_t2i, rescored_t2i)

    is_pair = text_to_image[None, :] == torch.arange(num_images, device=device)[:, None]  # (images, texts)
    metrics = {}
    for prefix, i2t, t2i in (("", scores_i2t, scores_t2i), ("itc_", similarity, similarity.t())):
        for direction, scores, targets in (("i2t", i2t, is_pair), ("t2i", t2i, is_pair.t())):
            for cutoff, recall in zip((1, 5, 10), _recalls(scores, targets)):
                metrics[f"{prefix}{direction}_r@{cutoff}"] = recall
    return VLPRerankedRetrieval(
        scores_i2t=scores_i2t,
        scores_t2i=scores_t2i,
        similarity=similarity,
        topk_i2t=topk_i2t,
        topk_t2i=topk_t2i,
        num_itm_pairs=int(pairs.shape[0]),
        metrics=metrics,
    )


__all__ = [
    "VLPFusionPreTrainedModel",
    "VLPFusionModel",
    "VLPFusionForPreTraining",
    "VLPFusionForQuestionAnswering",
    "VLPFusionForImageTextRetrieval",
    "VLPFusionImageOutput",
    "VLPFusionFuseOutput",
    "VLPFusionModelOutput",
    "VLPFusionForPreTrainingOutput",
    "VLPFusionQuestionAnsweringOutput",
    "VLPFusionRetrievalOutput",
    "VLPRerankedRetrieval",
    "rerank_retrieval",
]
