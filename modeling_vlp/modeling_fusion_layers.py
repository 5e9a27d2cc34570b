"""The fusion family's base class, outputs and blocks: the co-attention layer, the fusion encoder, LXMERT's region
heads, and the input checks of `VLPFusionModel` (`modeling_fusion`)."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_fusion import VLPFusionConfig
from .modeling_base import (
    VLPClassifierOutput,
    VLPContrastiveOutput,
    VLPModelOutput,
    VLPPreTrainedModel,
    VLPRetrievalOutput,
    encoder_auto_map,
)
from .modeling_fusion_coattention import VLPCoAttentionBlock, fusion_stream_config
from .modeling_layers import (
    VLPAttention,
    VLPPredictionHeadTransform,
    VLPTransformerLayer,
)


class VLPFusionPreTrainedModel(VLPPreTrainedModel):
    config: VLPFusionConfig
    config_class = VLPFusionConfig
    input_modalities = ("image", "text")
    _no_split_modules = [*VLPPreTrainedModel._no_split_modules, "VLPCoAttentionLayer", "VLPRegionEmbeddings"]
    family_auto_map = encoder_auto_map("VLPFusionModel", "VLPFusionForPreTraining", "VLPFusionForQuestionAnswering")

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self.base_model:  # the VLPFusionModel, on its own or in a head
            if module.logit_scale is not None:
                init.constant_(module.logit_scale, float(self.config.logit_scale_init_value))
            if module.mask_token is not None:
                init.normal_(module.mask_token, std=self.config.initializer_range)


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
    pooler_output (`torch.FloatTensor` of shape `(batch_size, config.fused_pooled_size)`):
        The fused text [CLS], through BERT's pooler (`fused_pooling="pooler"`, LXMERT) or as is ("first", ALBEF), or
        both streams' poolers multiplied (ViLBERT) or concatenated (METER): what the ITM and VQA heads read.
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
class VLPFusionModelOutput(VLPContrastiveOutput):
    r"""
    The fields of `VLPContrastiveOutput` (ITC of the unimodal states; None without an ITC head), and:
    text_last_hidden_state (`torch.FloatTensor` of shape `(batch_size, text_length, text_hidden_size)`):
        The fused text stream (LXMERT's `language_output`).
    image_last_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_image_tokens, vision_hidden_size)`):
        The fused image stream (LXMERT's `vision_output`); for merge fusion the image encoder's output.
    pooler_output (`torch.FloatTensor` of shape `(batch_size, config.fused_pooled_size)`):
        The pooled fusion output the ITM / VQA heads read (LXMERT's `pooled_output`).
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
class VLPFusionForPreTrainingOutput(VLPModelOutput):
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
    fusion_output (`VLPFusionModelOutput`):
        The base model's output the heads read: ITC embeddings and logits, fused and unimodal states, masks, hidden
        states and attentions.
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
    fusion_output: VLPFusionModelOutput | None = None


@dataclass
class VLPFusionQuestionAnsweringOutput(VLPClassifierOutput):
    r"""
    `loss` (with `labels`, see `answer_loss`) and `logits` `(batch_size, num_labels)` (answer scores), then:
    fusion_output (`VLPFusionModelOutput`): the base model's output (`pooler_output` is what the answer head read).
    """

    fusion_output: VLPFusionModelOutput | None = None


@dataclass
class VLPFusionRetrievalOutput(VLPRetrievalOutput):
    r"""
    The fields of `VLPRetrievalOutput` (`loss`: ITC (`return_loss=True`) plus ITM cross-entropy (`itm_labels`),
    each weighted by `config.loss_weights`), then:
    fusion_output (`VLPFusionModelOutput`): the base model's output (ITC: `logits_per_image`, `text_embeds`, ...).
    """

    fusion_output: VLPFusionModelOutput | None = None


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


class VLPCoAttentionLayer(nn.Module):
    """Both streams, each attending to itself and to the other stream as it entered this layer, then its FFN.

    The order is LXMERT's cross -> self -> FFN or METER's self -> cross -> FFN (`config.co_attention_order`). With
    `config.share_cross_attention` one cross-attention module (and its LayerNorm) serves both directions (LXMERT).
    ViLBERT's order ("cross_ffn_first") is a co-attention block per stream (`text_cross`, `image_cross`: cross-
    attention + FFN) and then a plain layer per stream (`text_layer`, `image_layer`: self-attention + FFN).
    """

    def __init__(self, config: VLPFusionConfig):
        super().__init__()
        text = fusion_stream_config(config.text_config, config)
        vision = fusion_stream_config(config.vision_config, config)
        self.text_cross = self.image_cross = None
        if config.co_attention_order == "cross_ffn_first":
            size, heads, pre_norm = config.co_attention_hidden_size, config.co_attention_num_heads, config.fusion_pre_norm
            self.text_cross = VLPCoAttentionBlock(
                text, vision.hidden_size, size or text.hidden_size, heads or text.num_attention_heads, pre_norm
            )
            self.image_cross = VLPCoAttentionBlock(
                vision, text.hidden_size, size or vision.hidden_size, heads or vision.num_attention_heads, pre_norm
            )
            self.text_layer = VLPTransformerLayer(text, pre_norm=pre_norm)
            self.image_layer = VLPTransformerLayer(vision, pre_norm=pre_norm)
            self.cross_attn = self.layer_norm_cross = None
            return
        shared = config.share_cross_attention
        order = dict(
            cross_attention_first=config.co_attention_order == "cross_first",
            pre_norm=config.fusion_pre_norm,
        )
        self.text_layer = VLPTransformerLayer(
            text,
            cross_attention_hidden_size=None if shared else vision.hidden_size,
            **order,
        )
        self.image_layer = VLPTransformerLayer(
            vision,
            cross_attention_hidden_size=None if shared else text.hidden_size,
            **order,
        )
        self.cross_attn = VLPAttention(text, kv_hidden_size=vision.hidden_size) if shared else None
        self.layer_norm_cross = nn.LayerNorm(text.hidden_size, eps=text.layer_norm_eps) if shared else None

    def forward(
        self,
        text_states,
        text_self_mask,
        text_keys_mask,
        image_states,
        image_self_mask,
        image_keys_mask,
    ):
        if self.text_cross is not None:  # ViLBERT: both co-attention blocks read the layer's inputs
            new_text, cross_weights = self.text_cross(text_states, image_states, image_keys_mask)
            new_image, _ = self.image_cross(image_states, text_states, text_keys_mask)
            new_text, text_weights, _ = self.text_layer(new_text, text_self_mask)
            new_image, _, _ = self.image_layer(new_image, image_self_mask)
            return new_text, new_image, text_weights, cross_weights
        shared = (self.cross_attn, self.layer_norm_cross) if self.cross_attn is not None else None
        new_text, text_weights, cross_weights = self.text_layer(
            text_states,
            text_self_mask,
            image_states,
            image_keys_mask,
            shared_cross_attention=shared,
        )
        new_image, _, _ = self.image_layer(
            image_states,
            image_self_mask,
            text_states,
            text_keys_mask,
            shared_cross_attention=shared,
        )
        return new_text, new_image, text_weights, cross_weights


class VLPFusionEncoder(nn.Module):
    """`num_fusion_layers` co-attention layers, or merge layers (text self-attention + cross-attention to the image
    + FFN, ALBEF). METER's input maps (`config.cross_modal_transform`: `text_transform`, `image_transform`) and
    type embeddings (`config.fusion_token_type_embeddings`: 0 text, 1 image) apply to the streams entering it."""

    def __init__(self, config: VLPFusionConfig):
        super().__init__()
        self.fusion_type = config.fusion_type
        text_width, image_width = config.text_config.hidden_size, config.vision_config.hidden_size
        transform = config.cross_modal_transform
        self.text_transform = nn.Linear(text_width, text_width) if transform else None
        self.image_transform = nn.Linear(image_width, image_width) if transform else None
        self.token_type_embeddings = nn.Embedding(2, text_width) if config.fusion_token_type_embeddings else None
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
        output_hidden_states: bool = False, output_attentions: bool = False, layers: nn.ModuleList | None = None,
    ) -> VLPFusionFuseOutput:  # fmt: skip
        r"""layers: merge layers to run instead of this encoder's own (BLIP's, `share_text_layers`: the text
        encoder's, which cross-attend)."""
        co_attention = self.fusion_type == "co_attention"
        if self.text_transform is not None:
            text_states, image_states = self.text_transform(text_states), self.image_transform(image_states)
        if self.token_type_embeddings is not None:
            types = self.token_type_embeddings.weight
            text_states, image_states = text_states + types[0], image_states + types[1]
        text_hidden = (text_states,) if output_hidden_states else None
        image_hidden = (image_states,) if output_hidden_states and co_attention else None
        self_weights, cross_weights = ((), ()) if output_attentions else (None, None)
        for layer in self.layers if layers is None else layers:
            if co_attention:
                text_states, image_states, weights, cross = layer(
                    text_states,
                    text_self_mask,
                    text_keys_mask,
                    image_states,
                    image_self_mask,
                    image_keys_mask,
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
        sizes = {
            "obj": config.num_object_labels,
            "attr": config.num_attribute_labels,
            "feat": config.visual_feat_dim,
        }
        self.decoders = nn.ModuleDict(
            {name: nn.Linear(vision.hidden_size, sizes[name]) for name in config.region_losses}
        )

    def forward(self, hidden_states: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden_states = self.transform(hidden_states)
        return {name: decoder(hidden_states) for name, decoder in self.decoders.items()}


def check_visual_inputs(config, pixel_values, visual_feats, visual_pos) -> None:
    """Patches or regions, as `config.visual_input` says, and nothing of the other kind."""
    if config.visual_input == "regions":
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


def region_targets(
    config,
    obj_labels,
    attr_labels,
    feat_labels,
    region_class_scores,
    visual_feats,
    mim_mask,
):
    """LXMERT's `obj_labels` dict `{name: (labels, weights)}` as is, or one built from separate labels weighted
    by `mim_mask`; feature regression targets the unmasked `visual_feats` whenever `mim_mask` is given."""
    if isinstance(obj_labels, dict):
        unknown = sorted(set(obj_labels) - set(config.region_losses))
        if unknown:
            raise ValueError(
                f"`obj_labels` has entries {unknown} this model has no head for (`config.region_losses` = "
                f"{config.region_losses})."
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
    missing_heads = sorted(explicit - set(config.region_losses))
    if missing_heads:
        raise ValueError(f"This model has no region head for {missing_heads} (`config.region_losses`).")
    weights = mim_mask.float()
    return {name: (value, weights) for name, value in labels.items() if name in config.region_losses}


def check_pairs(config, input_ids, pixel_values, visual_feats) -> None:
    """A fusion model takes (text, image) pairs: as many texts as images."""
    image = visual_feats if config.visual_input == "regions" else pixel_values
    image_batch = image.shape[0] if isinstance(image, torch.Tensor) and image.ndim > 0 else None
    if input_ids is not None and image_batch is not None and input_ids.shape[0] != image_batch:
        image_name = "visual_feats" if config.visual_input == "regions" else "pixel_values"
        raise ValueError(
            f"`input_ids` has {input_ids.shape[0]} texts but `{image_name}` has {image_batch} images; a fusion "
            "model takes (text, image) pairs, so both batch sizes must be equal (repeat the images or texts, or "
            "use `encode_text` / `encode_image` once and `fuse` on the pairings)."
        )


def check_region_inputs(config, visual_feats, visual_pos, visual_attention_mask, mim_mask) -> None:
    if visual_feats.ndim != 3 or visual_feats.shape[-1] != config.visual_feat_dim:
        raise ValueError(
            f"`visual_feats` must have shape (batch_size, num_regions, {config.visual_feat_dim}), got "
            f"{tuple(visual_feats.shape)}."
        )
    expected = (*visual_feats.shape[:2], config.visual_pos_dim)
    if tuple(visual_pos.shape) != expected:
        raise ValueError(
            f"`visual_pos` must have shape {expected} (one box per region), got {tuple(visual_pos.shape)}."
        )
    for name, mask in (
        ("visual_attention_mask", visual_attention_mask),
        ("mim_mask", mim_mask),
    ):
        if mask is not None and tuple(mask.shape) != tuple(visual_feats.shape[:2]):
            raise ValueError(
                f"`{name}` must have shape {tuple(visual_feats.shape[:2])} (one value per region), got "
                f"{tuple(mask.shape)}."
            )


def check_fuse_inputs(text_states, text_attention_mask, image_states, image_attention_mask) -> None:
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


def patch_attention_mask(
    pixel_mask, batch_size: int, prefix: int, height: int, width: int, patch_size: int
) -> torch.Tensor | None:
    """(B, H, W) pixel mask -> (B, prefix + patches) token mask: a patch is padding when none of its pixels is real."""
    if pixel_mask is None:
        return None
    if tuple(pixel_mask.shape) != (batch_size, height, width):
        raise ValueError(
            f"`pixel_mask` must have shape ({batch_size}, {height}, {width}) like `pixel_values`, got "
            f"{tuple(pixel_mask.shape)}."
        )
    real = F.max_pool2d(pixel_mask[:, None].float(), patch_size).flatten(1) > 0
    prefix_mask = torch.ones(batch_size, prefix, dtype=torch.bool, device=real.device)
    return torch.cat([prefix_mask, real], dim=1).long()
