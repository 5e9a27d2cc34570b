"""The pieces of ViLBERT's and METER's fusion that LXMERT's co-attention layer has no use for: ViLBERT's co-attention
block (cross-attention at its own width + FFN), the two-stream poolers (ViLBERT's product, METER's concatenation) and
ViLBERT's region embeddings. `VLPCoAttentionLayer` and `VLPFusionModel` (`modeling_fusion_layers`, `modeling_fusion`)
put them together as `VLPFusionConfig` says."""

import torch
from torch import nn

from .configuration_fusion import TWO_STREAM_POOLINGS, VLPFusionConfig
from .modeling_heads import VLPAnswerHead, VLPPooler, VLPRegionEmbeddings
from .modeling_layers import VLPMLP, VLPAttention


class FusionStreamConfig:
    """A tower's config as the co-attention layers see it: `hidden_act`, `layer_norm_eps` and the dropouts replaced
    by the fusion config's `fusion_hidden_act` / `fusion_layer_norm_eps` / `fusion_dropout` where set, every other
    field (the attention implementation included) read from the tower's config when asked."""

    def __init__(self, config, **overrides):
        self._config = config
        self._overrides = {name: value for name, value in overrides.items() if value is not None}

    def __getattr__(self, name):
        if name.startswith("__") or name in ("_config", "_overrides"):  # copying before __init__ has run
            raise AttributeError(name)
        return self._overrides[name] if name in self._overrides else getattr(self._config, name)


def fusion_stream_config(stream_config, config: VLPFusionConfig):
    """`stream_config` (a tower's) with the fusion's overrides, or itself when there are none."""
    overrides = dict(
        hidden_act=config.fusion_hidden_act, layer_norm_eps=config.fusion_layer_norm_eps,
        hidden_dropout=config.fusion_dropout, attention_dropout=config.fusion_dropout,
    )  # fmt: skip
    if all(value is None for value in overrides.values()):
        return stream_config
    return FusionStreamConfig(stream_config, **overrides)


class VLPCoAttention(VLPAttention):
    """Cross-attention whose queries, keys and values are projected to `attention_size` with `num_heads` heads and
    back to the query stream's width (ViLBERT's `BertBiAttention`: `bi_hidden_size`, `bi_num_attention_heads`)."""

    def __init__(self, config, kv_hidden_size: int, attention_size: int, num_heads: int):
        super().__init__(config, hidden_size=attention_size, num_heads=num_heads, kv_hidden_size=kv_hidden_size)
        self.q_proj = nn.Linear(config.hidden_size, attention_size, bias=self.q_proj.bias is not None)
        self.out_proj = nn.Linear(attention_size, config.hidden_size)


def _residual(pre_norm: bool, hidden_states, norm, out, dropout):
    """`hidden_states + out` then `norm` (post-norm), or `hidden_states + out` where `out` read the normed input."""
    return hidden_states + dropout(out) if pre_norm else norm(hidden_states + dropout(out))


class VLPCoAttentionBlock(nn.Module):
    """One stream's half of ViLBERT's `BertConnectionLayer`: cross-attention to the other stream, then an FFN, each
    with its residual and LayerNorm (`BertBiAttention` + `BertBiOutput`, then `v_/t_intermediate` + `v_/t_output`)."""

    def __init__(self, config, kv_hidden_size: int, attention_size: int, num_heads: int, pre_norm: bool | None):
        super().__init__()
        self.pre_norm = config.pre_norm if pre_norm is None else pre_norm
        self.cross_attn = VLPCoAttention(config, kv_hidden_size, attention_size, num_heads)
        self.layer_norm_cross = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = VLPMLP(config.hidden_size, config.intermediate_size, config.hidden_act)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(getattr(config, "hidden_dropout", 0.0))

    def forward(self, hidden_states, other_states, other_keys_mask):
        pre = self.pre_norm
        query = self.layer_norm_cross(hidden_states) if pre else hidden_states
        out, weights = self.cross_attn(query, other_keys_mask, encoder_hidden_states=other_states)
        hidden_states = _residual(pre, hidden_states, self.layer_norm_cross, out, self.dropout)
        out = self.mlp(self.layer_norm2(hidden_states) if pre else hidden_states)
        return _residual(pre, hidden_states, self.layer_norm2, out, self.dropout), weights


class VLPTwoStreamPooler(nn.Module):
    """Both fused streams' first tokens, each through a dense layer: ReLU and multiplied (ViLBERT's `t_pooler` *
    `v_pooler`, then its heads' dropout) or tanh and concatenated (METER's `cross_modal_*_pooler`, `cls_feats`)."""

    def __init__(self, config: VLPFusionConfig):
        super().__init__()
        text, vision = config.text_config, config.vision_config
        self.product = config.fused_pooling == "text_image_product"
        size = config.fused_pooled_size
        self.text_dense = nn.Linear(text.hidden_size, size if self.product else text.hidden_size)
        self.image_dense = nn.Linear(vision.hidden_size, size if self.product else vision.hidden_size)
        self.activation = nn.ReLU() if self.product else nn.Tanh()
        self.dropout = nn.Dropout(text.hidden_dropout if self.product else 0.0)

    def forward(self, text_states: torch.Tensor, image_states: torch.Tensor) -> torch.Tensor:
        text = self.activation(self.text_dense(text_states[:, 0]))
        image = self.activation(self.image_dense(image_states[:, 0]))
        return self.dropout(text * image) if self.product else torch.cat([text, image], dim=-1)


def fused_pooler(config: VLPFusionConfig) -> nn.Module | None:
    """The module `pooler_output` comes from: BERT's pooler ("pooler"), both streams' (two-stream poolings), or
    none ("first": the fused text [CLS] as is)."""
    if config.fused_pooling in TWO_STREAM_POOLINGS:
        return VLPTwoStreamPooler(config)
    return VLPPooler(config.text_config.hidden_size) if config.fused_pooling == "pooler" else None


def fused_pooled_output(pooler: nn.Module | None, text_states: torch.Tensor, image_states) -> torch.Tensor:
    if isinstance(pooler, VLPTwoStreamPooler):
        return pooler(text_states, image_states)
    return pooler(text_states) if pooler is not None else text_states[:, 0]


class VLPSummedRegionEmbeddings(VLPRegionEmbeddings):
    """ViLBERT's `BertImageEmbeddings`: LayerNorm(Linear(features) + Linear(boxes)), then dropout; the inputs, masked
    regions (`mim_mask`: features zeroed, boxes kept) and the Linears' names as `VLPRegionEmbeddings` (LXMERT's)."""

    def __init__(self, visual_feat_dim: int, box_dim: int, hidden_size: int, layer_norm_eps: float, dropout: float):
        super().__init__(
            visual_feat_dim, box_dim, hidden_size, layer_norm_eps, feat_layernorm=False, box_layernorm=False,
            projection_names=("feat_proj", "box_proj"),
        )  # fmt: skip
        self.layer_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.summed_dropout = nn.Dropout(dropout)

    def forward(self, visual_feats, visual_pos=None, mim_mask=None) -> torch.Tensor:
        return self.summed_dropout(self.layer_norm(super().forward(visual_feats, visual_pos, mim_mask)))


def region_embeddings(config: VLPFusionConfig) -> nn.Module:
    """The region stream's embeddings (`config.region_embedding_norm`): LXMERT's or ViLBERT's."""
    vision = config.vision_config
    sizes = (config.visual_feat_dim, config.visual_pos_dim, vision.hidden_size, vision.layer_norm_eps)
    if config.region_embedding_norm == "sum":
        return VLPSummedRegionEmbeddings(*sizes, dropout=vision.hidden_dropout)
    return VLPRegionEmbeddings(
        *sizes, average=True, dropout=vision.hidden_dropout, projection_names=("feat_proj", "box_proj")
    )


def fusion_answer_head(config: VLPFusionConfig) -> VLPAnswerHead:
    """The answer MLP on `pooler_output`: LXMERT's / ViLBERT's (Linear to twice the pooled width, GELU, LayerNorm,
    Linear) or, with `answer_head_size` and `answer_head_norm_first`, METER's `vqa_classifier` (Linear(1536, 1536),
    LayerNorm, GELU, Linear)."""
    width, eps = config.fused_pooled_size, config.text_config.layer_norm_eps
    head = VLPAnswerHead(width, config.num_labels, eps, norm_first=config.answer_head_norm_first)
    size = config.answer_head_size
    if size is not None and size != 2 * width:  # the same modules (and names) at another width
        head.dense, head.layer_norm = nn.Linear(width, size), nn.LayerNorm(size, eps=eps)
        head.classifier = nn.Linear(size, config.num_labels)
    return head
