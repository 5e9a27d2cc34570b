"""The unified family's outputs, input checks, embeddings and masked-modelling heads (`modeling_unified` holds the
models)."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from .configuration_unified import VLPUnifiedConfig
from .modeling_base import VLPClassifierOutput, VLPModelOutput, VLPRetrievalOutput
from .modeling_heads import VLPRegionEmbeddings
from .modeling_layers import (
    VLPPatchEmbeddings,
    VLPPredictionHeadTransform,
    VLPTextEmbeddings,
    check_finite,
)

# --------------------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------------------


@dataclass
class VLPUnifiedModelOutput(ModelOutput):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, text_length + num_visual_tokens, hidden_size)`):
        The encoder's output over `[text; visual]` (after the final LayerNorm of a pre-norm model).
    pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
        dense + tanh of the first token.
    text_length (`int`):
        Number of text tokens `T`: `last_hidden_state[:, :T]` is text, `last_hidden_state[:, T:]` visual.
    visual_attention_mask (`torch.LongTensor` of shape `(batch_size, num_visual_tokens)`):
        The mask actually used for the visual tokens (1 = attended), including the class token of patch inputs.
    visual_token_index (`torch.LongTensor` of shape `(batch_size, num_visual_tokens)`, *optional*):
        Patch inputs: the index of each visual token in its image's patch grid (raster order over the
        `pixel_values` grid, -1 for the class token); tells which patches were kept when they are sampled. None for
        region inputs, whose visual token j is region j.
    hidden_states (`tuple(torch.FloatTensor)`, *optional*):
        The embeddings and every layer's output, each `(batch_size, sequence_length, hidden_size)`.
    attentions (`tuple(torch.FloatTensor)`, *optional*):
        Every layer's attention weights `(batch_size, num_heads, sequence_length, sequence_length)` (eager only).
    """

    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    text_length: int | None = None
    visual_attention_mask: torch.Tensor | None = None
    visual_token_index: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class VLPUnifiedForPreTrainingOutput(VLPModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*):
        `itm_loss_weight * loss_itm + mlm_loss_weight * loss_mlm + mim_loss_weight * loss_mim` over the losses
        computed (each only when its labels or mask are given).
    loss_itm (`torch.FloatTensor` of shape `()`, *optional*, with `itm_labels`):
        Cross-entropy of `itm_logits` against `itm_labels` (1 = the caption matches the image).
    loss_mlm (`torch.FloatTensor` of shape `()`, *optional*, with `mlm_labels`):
        Cross-entropy over the labelled text tokens of matching rows.
    loss_mim (`torch.FloatTensor` of shape `()`, *optional*, with `mim_mask`):
        Patches: mean squared error to the per-patch normalised pixels of the masked patches. Regions:
        `loss_mim_regression + loss_mim_classification`.
    loss_mim_regression (`torch.FloatTensor` of shape `()`, *optional*, regions only):
        Mean squared error to the original features of the masked regions (UNITER's MRFR).
    loss_mim_classification (`torch.FloatTensor` of shape `()`, *optional*, regions only):
        KL divergence to `region_class_scores`, or cross-entropy to `region_labels`, over the masked regions.
    mlm_logits (`torch.FloatTensor` of shape `(batch_size, text_length, vocab_size)`):
        Masked-LM scores of the text tokens.
    itm_logits (`torch.FloatTensor` of shape `(batch_size, 2)`):
        Image-text matching scores (index 1: match).
    mim_predictions (`torch.FloatTensor`, *optional*, with `mim_mask`):
        Patches: `(batch_size, num_visual_tokens, patch_size**2 * num_channels)`, the predicted normalised pixels of
        each visual token's patch (the class token's row is unused). Regions: `(batch_size, num_regions,
        visual_feat_dim)`, the predicted region features.
    mim_class_logits (`torch.FloatTensor` of shape `(batch_size, num_regions, num_object_labels)`, *optional*):
        Region classification scores (regions with `num_object_labels > 0`, with `mim_mask`).
    unified_output (`VLPUnifiedModelOutput`):
        The base model's output the heads read (states, masks, hidden states and attentions).
    """

    loss: torch.Tensor | None = None
    loss_itm: torch.Tensor | None = None
    loss_mlm: torch.Tensor | None = None
    loss_mim: torch.Tensor | None = None
    loss_mim_regression: torch.Tensor | None = None
    loss_mim_classification: torch.Tensor | None = None
    mlm_logits: torch.Tensor | None = None
    itm_logits: torch.Tensor | None = None
    mim_predictions: torch.Tensor | None = None
    mim_class_logits: torch.Tensor | None = None
    unified_output: VLPUnifiedModelOutput | None = None


@dataclass
class VLPUnifiedQuestionAnsweringOutput(VLPClassifierOutput):
    r"""
    `loss` (with `labels`: ViLT's BCE with logits times `num_labels`, `vqa_loss="bce"`, or VisualBERT's KL
    divergence, "kl") and `logits` `(batch_size, num_labels)` (raw answer scores, also with the KL loss), then:
    unified_output (`VLPUnifiedModelOutput`): the base model's output.
    """

    unified_output: VLPUnifiedModelOutput | None = None


@dataclass
class VLPUnifiedImageTextRetrievalOutput(VLPRetrievalOutput):
    r"""
    The fields of `VLPRetrievalOutput` (`loss`, with `labels`: cross-entropy of `itm_logits`, 1 = match), then:
    unified_output (`VLPUnifiedModelOutput`): the base model's output.
    """

    unified_output: VLPUnifiedModelOutput | None = None


# --------------------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------------------


def _shape(tensor) -> tuple:
    return tuple(tensor.shape)


def check_text_inputs(config, input_ids, inputs_embeds, attention_mask, token_type_ids) -> tuple[int, int]:
    """Returns (batch_size, text_length)."""
    if input_ids is not None and inputs_embeds is not None:
        raise ValueError("Pass either `input_ids` or `inputs_embeds`, not both.")
    if input_ids is None and inputs_embeds is None:
        raise ValueError("`input_ids` is required: pass texts through the tokenizer or processor first.")
    if input_ids is not None and input_ids.ndim != 2:
        raise ValueError(f"`input_ids` must have shape (batch_size, text_length), got {_shape(input_ids)}.")
    if inputs_embeds is not None and (inputs_embeds.ndim != 3 or inputs_embeds.shape[-1] != config.hidden_size):
        raise ValueError(
            f"`inputs_embeds` must have shape (batch_size, text_length, {config.hidden_size}), "
            f"got {_shape(inputs_embeds)}."
        )
    batch_size, text_length = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
    if text_length > config.max_position_embeddings:
        raise ValueError(
            f"The text has {text_length} tokens, more than the model's {config.max_position_embeddings} positions "
            "(`max_position_embeddings`); truncate it (e.g. `truncation=True, max_length=...`)."
        )
    for name, value in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
        if value is not None and _shape(value) != (batch_size, text_length):
            raise ValueError(
                f"`{name}` must have the shape of the text, ({batch_size}, {text_length}), got {_shape(value)}."
            )
    return batch_size, text_length


def check_visual_inputs(
    config, batch_size, pixel_values, pixel_mask, visual_feats, visual_pos, visual_attention_mask
) -> int:
    """Returns the number of MIM units: patches of the `pixel_values` grid, or regions."""
    if pixel_values is not None and visual_feats is not None:
        raise ValueError("Pass either `pixel_values` (images) or `visual_feats` (region features), not both.")
    if pixel_values is None and visual_feats is None:
        expected = "`pixel_values`" if config.visual_input == "patches" else "`visual_feats` (and `visual_pos`)"
        raise ValueError(f"No visual input: this model (visual_input={config.visual_input!r}) needs {expected}.")
    if config.visual_input == "patches":
        return _check_pixels(config, batch_size, pixel_values, pixel_mask, visual_feats, visual_attention_mask)
    return _check_regions(config, batch_size, pixel_values, visual_feats, visual_pos, visual_attention_mask)


def _check_pixels(config, batch_size, pixel_values, pixel_mask, visual_feats, visual_attention_mask) -> int:
    if visual_feats is not None:
        raise ValueError(
            "This model embeds image patches (visual_input='patches'): pass `pixel_values`, not `visual_feats`."
        )
    if visual_attention_mask is not None:
        raise ValueError(
            "`visual_attention_mask` is for region inputs; a patch model takes `pixel_mask` (batch_size, height, "
            "width) for padded images."
        )
    if pixel_values.ndim != 4 or pixel_values.shape[1] != config.num_channels:
        raise ValueError(
            f"`pixel_values` must have shape (batch_size, {config.num_channels}, height, width), "
            f"got {_shape(pixel_values)}."
        )
    images, _, height, width = pixel_values.shape
    if images != batch_size:
        raise ValueError(
            f"The batch has {batch_size} texts but {images} images (`pixel_values`); pass one image per text."
        )
    if height % config.patch_size or width % config.patch_size:
        raise ValueError(
            f"`pixel_values` height and width ({height}x{width}) must be multiples of the patch size "
            f"({config.patch_size}); the image processor's `size_divisor` does that."
        )
    side = config.image_size // config.patch_size
    too_large = height // config.patch_size > side or width // config.patch_size > side
    if not config.interpolate_pos_encoding and too_large:
        raise ValueError(
            f"`pixel_values` of {height}x{width} has more patches per side than the model's {side}x{side} position "
            f"embeddings ({config.image_size}px images, interpolate_pos_encoding=False)."
        )
    if pixel_mask is not None and _shape(pixel_mask) != (images, height, width):
        raise ValueError(
            f"`pixel_mask` must have shape (batch_size, height, width) = {(images, height, width)}, "
            f"got {_shape(pixel_mask)}."
        )
    return (height // config.patch_size) * (width // config.patch_size)


def _check_regions(config, batch_size, pixel_values, visual_feats, visual_pos, visual_attention_mask) -> int:
    if pixel_values is not None:
        raise ValueError(
            "This model embeds detector regions (visual_input='regions'): pass `visual_feats` and `visual_pos`, "
            "not `pixel_values`."
        )
    if visual_feats.ndim != 3 or visual_feats.shape[-1] != config.visual_feat_dim:
        raise ValueError(
            f"`visual_feats` must have shape (batch_size, num_regions, {config.visual_feat_dim}), "
            f"got {_shape(visual_feats)}."
        )
    images, num_regions = visual_feats.shape[:2]
    if images != batch_size:
        raise ValueError(
            f"The batch has {batch_size} texts but {images} images (`visual_feats`); pass one image per text."
        )
    if num_regions > config.max_regions:
        raise ValueError(
            f"`visual_feats` has {num_regions} regions per image, more than the model's `max_regions` "
            f"({config.max_regions})."
        )
    if visual_attention_mask is not None and _shape(visual_attention_mask) != (images, num_regions):
        raise ValueError(
            f"`visual_attention_mask` must have shape (batch_size, num_regions) = {(images, num_regions)}, "
            f"got {_shape(visual_attention_mask)}."
        )
    if config.box_embedding == "none":
        if visual_pos is not None:
            raise ValueError("This model takes no boxes (box_embedding='none', as VisualBERT): drop `visual_pos`.")
        return num_regions
    widths = (config.visual_pos_dim,) if config.box_embedding == "linear" else (4, 7)
    if visual_pos is None:
        raise ValueError(
            f"`visual_pos` (batch_size, num_regions, {' or '.join(map(str, widths))}) is required: this model "
            f"embeds the region boxes (box_embedding={config.box_embedding!r})."
        )
    if visual_pos.ndim != 3 or _shape(visual_pos)[:2] != (images, num_regions) or visual_pos.shape[-1] not in widths:
        raise ValueError(
            f"`visual_pos` must have shape (batch_size, num_regions, {' or '.join(map(str, widths))}) = "
            f"({images}, {num_regions}, ...), got {_shape(visual_pos)}."
        )
    return num_regions


def check_mim_mask(mim_mask, batch_size: int, num_units: int, visual_input: str) -> torch.Tensor | None:
    if mim_mask is None:
        return None
    units = "patches of the pixel_values grid" if visual_input == "patches" else "regions"
    if _shape(mim_mask) != (batch_size, num_units):
        raise ValueError(
            f"`mim_mask` must have shape (batch_size, number of {units}) = {(batch_size, num_units)}, "
            f"got {_shape(mim_mask)}."
        )
    return mim_mask.bool()


def check_labels(name: str, labels, expected: tuple, what: str) -> None:
    if labels is not None and _shape(labels) != expected:
        raise ValueError(f"`{name}` must have shape {what} = {expected}, got {_shape(labels)}.")


# --------------------------------------------------------------------------------------------------------------
# Embeddings
# --------------------------------------------------------------------------------------------------------------


class VLPUnifiedPatchEmbeddings(VLPPatchEmbeddings):
    """ViLT's visual embedding: patches of padded, variable-size images.

    The parameters are those of `VLPPatchEmbeddings` (patch projection, class token, positions of the configured
    grid) plus the MIM `mask_token`; `forward` differs: a patch is valid when the top-left pixel of its square is
    (`pixel_mask` resized to the patch grid by nearest neighbour, as ViLT), the position grid is resized bilinearly
    (align_corners, as ViLT) to each image's valid grid and padded with zeros, and the tokens kept are every valid
    patch (evaluation, or `max_image_length=-1`) or a random `max_image_length` of them (training).
    """

    def __init__(self, config: VLPUnifiedConfig):
        super().__init__(config)
        self.grid_side = config.image_size // config.patch_size
        self.max_image_length = config.max_image_length
        self.interpolate = config.interpolate_pos_encoding
        self.mask_token = nn.Parameter(torch.zeros(self.embed_dim))

    def grid_positions(self, heights: torch.Tensor, widths: torch.Tensor, grid_height: int, grid_width: int):
        """(B, grid_height * grid_width, D) positions: each image's (height, width) valid grid gets the learned
        grid resized to it, the rest zeros."""
        batch_size = heights.shape[0]
        side = self.grid_side
        grid = self.position_embedding.weight[self.num_prefix_tokens :]
        grid = grid.reshape(side, side, self.embed_dim).permute(2, 0, 1).unsqueeze(0)  # (1, D, side, side)
        if not self.interpolate:
            grid = grid[..., :grid_height, :grid_width]
            return grid.flatten(2).transpose(1, 2).expand(batch_size, -1, -1)
        sizes = torch.stack([heights, widths], dim=1).unique(dim=0).tolist()
        if len(sizes) == 1 and sizes[0] == [grid_height, grid_width]:
            resized = self._resize(grid, grid_height, grid_width)
            return resized.flatten(2).transpose(1, 2).expand(batch_size, -1, -1)
        positions = grid.new_zeros(batch_size, self.embed_dim, grid_height, grid_width)
        for height, width in sizes:
            rows = (heights == height) & (widths == width)
            positions[rows, :, :height, :width] = self._resize(grid, height, width)
        return positions.flatten(2).transpose(1, 2)

    def _resize(self, grid: torch.Tensor, height: int, width: int) -> torch.Tensor:
        if (height, width) == (self.grid_side, self.grid_side):
            return grid
        return F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=True)

    def select_patches(self, valid: torch.Tensor) -> torch.Tensor | None:
        """(B, num_patches) validity -> (B, L) indices of the patches to keep, in raster order, or None for all.
        L is the largest valid count (capped at `max_image_length` when sampling); images with fewer valid patches
        are padded with invalid ones, masked out."""
        num_patches = valid.shape[1]
        length = int(valid.sum(dim=1).max())
        sample = self.training and 0 < self.max_image_length < length
        if not sample and length == num_patches:
            return None
        if sample:
            length = self.max_image_length
            priority = torch.rand(valid.shape, device=valid.device)
        else:
            priority = torch.arange(num_patches, device=valid.device, dtype=torch.float32).expand_as(valid)
            priority = priority / num_patches
        # Valid patches first (priority in [0, 1)), then padding; the first `length` are kept.
        keep = (priority + (~valid).float() * 2).argsort(dim=1)[:, :length]
        return keep.sort(dim=1).values

    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor | None = None,
        mim_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns the visual tokens (B, 1 + L, D) (class token first), their mask (B, 1 + L) and their patch index
        (B, 1 + L) (-1 for the class token)."""
        batch_size = pixel_values.shape[0]
        check_finite(self, "pixel_values", pixel_values)
        embeddings = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        grid_height, grid_width = embeddings.shape[-2:]
        embeddings = embeddings.flatten(2).transpose(1, 2)
        if mim_mask is not None:
            # SimMIM / BEiT: a masked patch's embedding becomes the learned mask token; its position stays.
            embeddings = torch.where(mim_mask.unsqueeze(-1), self.mask_token.to(embeddings.dtype), embeddings)

        if pixel_mask is None:
            patch_mask = torch.ones(batch_size, grid_height, grid_width, dtype=torch.bool, device=embeddings.device)
        else:
            patch_mask = F.interpolate(pixel_mask[:, None].float(), size=(grid_height, grid_width)).squeeze(1) != 0
        heights, widths = patch_mask[:, :, 0].sum(dim=1), patch_mask[:, 0, :].sum(dim=1)
        if bool(((heights == 0) | (widths == 0)).any()):
            empty = ((heights == 0) | (widths == 0)).nonzero().flatten().tolist()
            raise ValueError(
                f"`pixel_mask` of image(s) {empty} covers no whole patch: the valid region must start at the "
                "top-left corner (the image processor pads at the bottom and right)."
            )
        embeddings = embeddings + self.grid_positions(heights, widths, grid_height, grid_width)

        valid = patch_mask.flatten(1)
        keep = self.select_patches(valid)
        if keep is None:
            token_index = torch.arange(valid.shape[1], device=valid.device).expand(batch_size, -1)
        else:
            embeddings = embeddings.gather(1, keep.unsqueeze(-1).expand(-1, -1, self.embed_dim))
            valid = valid.gather(1, keep)
            token_index = keep
        class_token = (self.class_embedding + self.position_embedding.weight[0]).to(embeddings.dtype)
        embeddings = torch.cat([class_token.expand(batch_size, 1, -1), embeddings], dim=1)
        mask = torch.cat([valid.new_ones(batch_size, 1), valid], dim=1).long()
        token_index = torch.cat([token_index.new_full((batch_size, 1), -1), token_index], dim=1)
        return embeddings, mask, token_index


class VLPUnifiedEmbeddings(nn.Module):
    """Text tokens, visual tokens, modality-type embeddings and the LayerNorm(s), placed by `embedding_norm`."""

    def __init__(self, config: VLPUnifiedConfig):
        super().__init__()
        self.text_embeddings = VLPTextEmbeddings(config)
        if config.embedding_norm == "joint":
            # The joint LayerNorm comes after the text sum: dropout once, after it, as BERT.
            self.text_embeddings.dropout = nn.Identity()
        if config.visual_input == "patches":
            self.visual_embeddings = VLPUnifiedPatchEmbeddings(config)
        else:
            self.visual_embeddings = VLPRegionEmbeddings(
                config.visual_feat_dim, config.box_feature_dim, config.hidden_size, config.layer_norm_eps,
                feat_layernorm=config.visual_feat_layernorm, box_layernorm=config.visual_pos_layernorm,
                uniter_boxes=config.box_embedding == "uniter",
            )  # fmt: skip
        self.modality_type_embedding = nn.Embedding(2, config.hidden_size)
        self.visual_layer_norm = (
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.embedding_norm == "separate" else None
        )
        self.layer_norm = (
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.embedding_norm == "joint" else None
        )
        self.dropout = nn.Dropout(config.hidden_dropout)

    def embed_text(self, input_ids=None, token_type_ids=None, inputs_embeds=None) -> torch.Tensor:
        text = self.text_embeddings
        if inputs_embeds is None:
            return text(input_ids, token_type_ids=token_type_ids)
        embeddings = inputs_embeds + text.position_embedding(text.position_ids[:, : inputs_embeds.shape[1]])
        if text.token_type_embedding is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
            embeddings = embeddings + text.token_type_embedding(token_type_ids)
        if text.layer_norm is not None:
            embeddings = text.layer_norm(embeddings)
        return text.dropout(embeddings)

    def forward(self, text_embeddings: torch.Tensor, visual_embeddings: torch.Tensor) -> torch.Tensor:
        """Add the modality types to the embedded text (B, T, D) and visual tokens (B, V, D); -> (B, T + V, D)."""
        text_embeddings = text_embeddings + self.modality_type_embedding.weight[0]
        visual_embeddings = visual_embeddings + self.modality_type_embedding.weight[1]
        if self.visual_layer_norm is not None:
            visual_embeddings = self.visual_layer_norm(visual_embeddings)
        if self.layer_norm is None:
            return torch.cat([text_embeddings, self.dropout(visual_embeddings)], dim=1)
        return self.dropout(self.layer_norm(torch.cat([text_embeddings, visual_embeddings], dim=1)))


# --------------------------------------------------------------------------------------------------------------
# Heads and losses
# --------------------------------------------------------------------------------------------------------------


class VLPPatchMIMHead(nn.Module):
    """SimMIM's linear head: each visual token predicts its patch's normalised pixels (patch_size**2 * channels)."""

    def __init__(self, config: VLPUnifiedConfig):
        super().__init__()
        self.decoder = nn.Linear(config.hidden_size, config.patch_size**2 * config.num_channels)

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.decoder(hidden_states), None


class VLPRegionMIMHead(nn.Module):
    """UNITER's masked region heads: feature regression and (with `num_object_labels`) region classification."""

    def __init__(self, config: VLPUnifiedConfig):
        super().__init__()
        self.transform = VLPPredictionHeadTransform(config.hidden_size, config.hidden_act, config.layer_norm_eps)
        self.regression = nn.Linear(config.hidden_size, config.visual_feat_dim)
        self.classifier = (
            nn.Linear(config.hidden_size, config.num_object_labels) if config.num_object_labels > 0 else None
        )

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden_states = self.transform(hidden_states)
        logits = self.classifier(hidden_states) if self.classifier is not None else None
        return self.regression(hidden_states), logits
