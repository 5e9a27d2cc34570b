"""Heads and region inputs shared by the fusion and unified families: BERT's pooler and masked-LM head,
detector-region embeddings, the VQA answer head."""

import torch
from torch import nn
from transformers.activations import ACT2FN

from .modeling_layers import VLPPredictionHeadTransform, check_finite


class VLPPooler(nn.Module):
    """BERT's pooler: dense + tanh over the first token."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden_states[:, 0]))


class VLPMLMHead(nn.Module):
    """BERT's masked-LM head: transform + vocabulary decoder. Models tie `decoder.weight` to their word embeddings
    (`_tied_weights_keys`); the decoder's bias is its own."""

    def __init__(self, hidden_size: int, vocab_size: int, hidden_act: str, layer_norm_eps: float):
        super().__init__()
        self.transform = VLPPredictionHeadTransform(hidden_size, hidden_act, layer_norm_eps)
        self.decoder = nn.Linear(hidden_size, vocab_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden_states))


def uniter_box_features(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) normalised `(x1, y1, x2, y2)` -> UNITER's (..., 7) `[x1, y1, x2, y2, w, h, w * h]`; (..., 7) are
    returned unchanged."""
    if boxes.shape[-1] == 7:
        return boxes
    width = boxes[..., 2] - boxes[..., 0]
    height = boxes[..., 3] - boxes[..., 1]
    return torch.cat([boxes, width[..., None], height[..., None], (width * height)[..., None]], dim=-1)


def check_boxes(visual_pos: torch.Tensor, normalized: bool = True) -> None:
    """Boxes `(..., 4 | 5 | 7)` starting with corners `(x1, y1, x2, y2)`: x1 <= x2, y1 <= y2 and, when `normalized`,
    every value in [0, 1] (NaN is outside). Padded regions are zeros, which pass."""
    if normalized:
        outside = ~((visual_pos >= 0) & (visual_pos <= 1))
        if bool(outside.any()):
            index, largest = outside.nonzero()[0].tolist(), visual_pos.nan_to_num(0.0, 0.0, 0.0).max().item()
            hint = ": they look like pixels, divide x by the image width and y by its height" if largest > 2 else ""
            raise ValueError(
                f"`visual_pos` has {visual_pos[tuple(index)].item():.4g} at index {index} (largest {largest:.4g}); "
                f"expected boxes normalised to [0, 1] by the image size{hint}."
            )
    corners = visual_pos[..., :4]
    reversed_ = (corners[..., 2] < corners[..., 0]) | (corners[..., 3] < corners[..., 1])
    if bool(reversed_.any()):
        index = reversed_.nonzero()[0].tolist()
        raise ValueError(
            f"`visual_pos` has the box {[round(x, 4) for x in corners[tuple(index)].tolist()]} at index {index}, with "
            "x2 < x1 or y2 < y1; expected corners (x1, y1, x2, y2) with x1 <= x2, y1 <= y2 (not x, y, width, height)."
        )


class VLPRegionEmbeddings(nn.Module):
    """Detector regions -> tokens: Linear(features) (+ LayerNorm) and Linear(box features) (+ LayerNorm), summed
    (VisualBERT, UNITER) or averaged (`average=True`, LXMERT), then dropout. `box_dim=0`: no box input;
    `uniter_boxes` expands `(x1, y1, x2, y2)` to UNITER's 7 box features. Masked regions (`mim_mask`) have their
    features zeroed and keep their boxes (LXMERT, UNITER). `projection_names` are the two Linears' attribute names,
    those of the checkpoints each family converts (the unified family's `feat_projection` / `box_projection`,
    LXMERT's `feat_proj` / `box_proj`), so that state-dict keys stay those of the published weights. Inputs are
    checked here for every family: `check_boxes` (the range unless `config.normalized_boxes=False`), `check_finite`."""

    checks_config = None  # the model's config (set by `VLPPreTrainedModel.post_init`)

    def __init__(
        self,
        visual_feat_dim: int,
        box_dim: int,
        hidden_size: int,
        layer_norm_eps: float,
        feat_layernorm: bool = True,
        box_layernorm: bool = True,
        average: bool = False,
        uniter_boxes: bool = False,
        dropout: float = 0.0,
        projection_names: tuple[str, str] = ("feat_projection", "box_projection"),
    ):
        super().__init__()
        self.feat_name, self.box_name = projection_names
        self.average, self.uniter_boxes = average, uniter_boxes
        setattr(self, self.feat_name, nn.Linear(visual_feat_dim, hidden_size))
        self.feat_layer_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps) if feat_layernorm else None
        setattr(self, self.box_name, nn.Linear(box_dim, hidden_size) if box_dim else None)
        self.box_layer_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps) if box_layernorm and box_dim else None
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, visual_feats: torch.Tensor, visual_pos: torch.Tensor | None = None, mim_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        feat_projection, box_projection = getattr(self, self.feat_name), getattr(self, self.box_name)
        check_finite(self, "visual_feats", visual_feats)
        if box_projection is not None:
            check_finite(self, "visual_pos", visual_pos)
            check_boxes(visual_pos, normalized=getattr(self.checks_config, "normalized_boxes", True))
        feats = visual_feats.to(feat_projection.weight.dtype)
        if mim_mask is not None:
            feats = feats.masked_fill(mim_mask.bool().unsqueeze(-1), 0.0)
        embeddings = feat_projection(feats)
        if self.feat_layer_norm is not None:
            embeddings = self.feat_layer_norm(embeddings)
        if box_projection is not None:
            boxes = uniter_box_features(visual_pos) if self.uniter_boxes else visual_pos
            box_embeddings = box_projection(boxes.to(feats.dtype))
            if self.box_layer_norm is not None:
                box_embeddings = self.box_layer_norm(box_embeddings)
            embeddings = embeddings + box_embeddings
        return self.dropout(embeddings / 2 if self.average else embeddings)


class VLPAnswerHead(nn.Module):
    """An answer classifier: LXMERT's / ViLT's MLP on the pooled output (Linear(D, 2D), activation and LayerNorm
    in `norm_first` order, Linear(2D, num_labels)), or VisualBERT's dropout + Linear (`mlp=False`)."""

    def __init__(
        self,
        hidden_size: int,
        num_labels: int,
        layer_norm_eps: float = 1e-5,
        mlp: bool = True,
        norm_first: bool = False,
        dropout: float = 0.0,
        names: tuple[str, str] = ("dense", "classifier"),
    ):
        super().__init__()
        self.dense_name, self.decoder_name = names
        self.norm_first = norm_first
        width = 2 * hidden_size if mlp else hidden_size
        setattr(self, self.dense_name, nn.Linear(hidden_size, width) if mlp else None)
        if mlp:
            self.layer_norm = nn.LayerNorm(width, eps=layer_norm_eps)
            self.activation = ACT2FN["gelu"]
        else:
            self.dropout = nn.Dropout(dropout)
        setattr(self, self.decoder_name, nn.Linear(width, num_labels))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        dense, decoder = getattr(self, self.dense_name), getattr(self, self.decoder_name)
        if dense is None:
            return decoder(self.dropout(pooled))
        hidden = dense(pooled)
        if self.norm_first:
            return decoder(self.activation(self.layer_norm(hidden)))
        return decoder(self.layer_norm(self.activation(hidden)))
