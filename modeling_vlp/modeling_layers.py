"""Blocks shared by every family: embeddings, attention, MLP, the transformer layer, the attention pool, the input
checks and attention masks (the base class: `modeling_base`; heads and region inputs: `modeling_heads`).

Every block is configured by arguments (pre- or post-norm, activation, biases, causal or not, cross-attention),
not by the architecture it came from, so that CLIP, SigLIP, BERT-style and fusion layers are the same code.
Attention goes through transformers' `ALL_ATTENTION_FUNCTIONS`, so `attn_implementation` = "eager" | "sdpa" |
any registered kernel works everywhere.
"""

from collections.abc import Callable

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, EncoderDecoderCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference attention: (B, heads, Q, d) x (B, heads, K, d) -> (B, Q, heads, d), weights (B, heads, Q, K)."""
    attn_weights = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            attn_weights = attn_weights.masked_fill(~attention_mask, torch.finfo(attn_weights.dtype).min)
        else:
            attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class VLPAttention(nn.Module):
    """Multi-head attention; self-attention, or cross-attention when `kv_hidden_size` is given (keys and values
    then come from `encoder_hidden_states` of that width).

    With a `layer_idx`, a decoder's attention reads and extends a transformers `Cache` (`past_key_values`): self-
    attention appends this step's keys and values to its layer of the cache (of `EncoderDecoderCache
    .self_attention_cache`, or of a plain cache), cross-attention computes the keys and values of
    `encoder_hidden_states` once and reuses them from `EncoderDecoderCache.cross_attention_cache` afterwards (with a
    plain cache it recomputes them every step). Without a cache it behaves as without `layer_idx`.
    """

    def __init__(
        self,
        config,
        hidden_size: int | None = None,
        num_heads: int | None = None,
        kv_hidden_size: int | None = None,
        is_causal: bool = False,
        qkv_bias: bool | None = None,
        layer_idx: int | None = None,
    ):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.embed_dim = hidden_size or config.hidden_size
        self.num_heads = num_heads or config.num_attention_heads
        self.head_dim = self.embed_dim // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = getattr(config, "attention_dropout", 0.0)
        self.is_causal = is_causal
        self.is_cross_attention = kv_hidden_size is not None
        bias = getattr(config, "qkv_bias", True) if qkv_bias is None else qkv_bias
        kv_dim = kv_hidden_size or self.embed_dim
        self.q_proj = nn.Linear(self.embed_dim, self.embed_dim, bias=bias)
        self.k_proj = nn.Linear(kv_dim, self.embed_dim, bias=bias)
        self.v_proj = nn.Linear(kv_dim, self.embed_dim, bias=bias)
        self.out_proj = nn.Linear(self.embed_dim, self.embed_dim)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        is_cross_attention = encoder_hidden_states is not None
        kv_states = encoder_hidden_states if is_cross_attention else hidden_states
        batch_size, q_len = hidden_states.shape[:2]
        query = self.q_proj(hidden_states).view(batch_size, q_len, -1, self.head_dim).transpose(1, 2)

        cache = None
        if past_key_values is not None and self.layer_idx is not None:
            if isinstance(past_key_values, EncoderDecoderCache):
                cache = past_key_values.cross_attention_cache if is_cross_attention else past_key_values.self_attention_cache
            elif not is_cross_attention:
                cache = past_key_values
        # The image keys/values are computed at the first step and read back afterwards (public `get_seq_length`,
        # not `EncoderDecoderCache.is_updated`, whose bookkeeping is internal to transformers).
        if is_cross_attention and cache is not None and cache.get_seq_length(self.layer_idx) > 0:
            key, value = cache.layers[self.layer_idx].keys, cache.layers[self.layer_idx].values
        else:
            key = self.k_proj(kv_states).view(batch_size, kv_states.shape[1], -1, self.head_dim).transpose(1, 2)
            value = self.v_proj(kv_states).view(batch_size, kv_states.shape[1], -1, self.head_dim).transpose(1, 2)
            if cache is not None:
                key, value = cache.update(key, value, self.layer_idx)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            scaling=self.scaling,
            dropout=self.dropout if self.training else 0.0,
            is_causal=self.is_causal and not is_cross_attention,
            **kwargs,
        )
        attn_output = self.out_proj(attn_output.reshape(batch_size, q_len, -1).contiguous())
        return attn_output, attn_weights


class VLPMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.activation_fn = ACT2FN[hidden_act]
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(hidden_states)))


class VLPTransformerLayer(GradientCheckpointingLayer):
    """Self-attention (+ optional cross-attention) + MLP, pre-norm (CLIP/ViT) or post-norm (BERT).

    Pre-norm:  x += attn(ln1(x)); x += xattn(ln_cross(x), enc); x += mlp(ln2(x))
    Post-norm: x = ln1(x + attn(x)); x = ln_cross(x + xattn(x, enc)); x = ln2(x + mlp(x))

    `cross_attention_first` puts the cross-attention block before self-attention (LXMERT's cross-modality layer);
    `pre_norm` overrides `config.pre_norm` (fusion layers placed on a pre-norm tower may be post-norm, METER).
    `layer_idx` is the layer's index in a decoder's KV cache (`past_key_values`, passed through `forward`'s kwargs).
    """

    def __init__(
        self,
        config,
        is_causal: bool = False,
        cross_attention_hidden_size: int | None = None,
        cross_attention_first: bool = False,
        pre_norm: bool | None = None,
        layer_idx: int | None = None,
    ):
        super().__init__()
        hidden_size = config.hidden_size
        self.pre_norm = config.pre_norm if pre_norm is None else pre_norm
        self.cross_attention_first = cross_attention_first
        self.self_attn = VLPAttention(config, is_causal=is_causal, layer_idx=layer_idx)
        self.layer_norm1 = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.cross_attn = None
        if cross_attention_hidden_size is not None:
            self.cross_attn = VLPAttention(config, kv_hidden_size=cross_attention_hidden_size, layer_idx=layer_idx)
            self.layer_norm_cross = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.mlp = VLPMLP(hidden_size, config.intermediate_size, config.hidden_act)
        self.layer_norm2 = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(getattr(config, "hidden_dropout", 0.0))
        if getattr(config, "initializer_style", "normal") == "clip":
            self._set_clip_init_stds(config.num_hidden_layers)

    def _set_clip_init_stds(self, num_layers: int) -> None:
        """CLIP's width- and depth-scaled init (transformers' `CLIPPreTrainedModel._init_weights`), read by
        `VLPPreTrainedModel._init_weights` from each Linear's `init_std` (the layer itself holds no parameters, so
        its own init hook would not run for remote code)."""
        depth_scale = (2 * num_layers) ** -0.5
        for attention in (self.self_attn, self.cross_attn):
            if attention is None:
                continue
            for projection in (attention.q_proj, attention.k_proj, attention.v_proj):
                projection.init_std = attention.embed_dim**-0.5 * depth_scale
            attention.out_proj.init_std = attention.embed_dim**-0.5
        hidden_size = self.mlp.fc1.in_features
        self.mlp.fc1.init_std = (2 * hidden_size) ** -0.5
        self.mlp.fc2.init_std = hidden_size**-0.5 * depth_scale

    def _residual(self, hidden_states, norm, block, *args, **kwargs):
        if self.pre_norm:
            out = block(norm(hidden_states), *args, **kwargs)
            out, weights = out if isinstance(out, tuple) else (out, None)
            return hidden_states + self.dropout(out), weights
        out = block(hidden_states, *args, **kwargs)
        out, weights = out if isinstance(out, tuple) else (out, None)
        return norm(hidden_states + self.dropout(out)), weights

    def _cross_attention(
        self, hidden_states, encoder_hidden_states, encoder_attention_mask, shared_cross_attention, **kwargs
    ):
        attention, norm = shared_cross_attention or (self.cross_attn, getattr(self, "layer_norm_cross", None))
        if attention is None:
            return hidden_states, None
        if encoder_hidden_states is None:
            raise ValueError("This layer cross-attends: `encoder_hidden_states` is required.")
        return self._residual(
            hidden_states, norm, attention, encoder_attention_mask, encoder_hidden_states=encoder_hidden_states,
            **kwargs,
        )  # fmt: skip

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        shared_cross_attention: tuple[nn.Module, nn.Module] | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        r"""shared_cross_attention: `(attention, layer_norm)` to cross-attend with instead of this layer's own, for
        a cross-attention shared by two streams (LXMERT uses one in both directions)."""
        cross = (encoder_hidden_states, encoder_attention_mask, shared_cross_attention)
        cross_weights = None
        if self.cross_attention_first:
            hidden_states, cross_weights = self._cross_attention(hidden_states, *cross, **kwargs)
        hidden_states, self_weights = self._residual(
            hidden_states, self.layer_norm1, self.self_attn, attention_mask, **kwargs
        )
        if not self.cross_attention_first:
            hidden_states, cross_weights = self._cross_attention(hidden_states, *cross, **kwargs)
        hidden_states, _ = self._residual(hidden_states, self.layer_norm2, self.mlp)
        return hidden_states, self_weights, cross_weights


class VLPEncoder(nn.Module):
    """A stack of `VLPTransformerLayer`s. `hidden_states` in the output start with the encoder's input."""

    def __init__(self, config, is_causal: bool = False, cross_attention_hidden_size: int | None = None):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(
            [VLPTransformerLayer(config, is_causal, cross_attention_hidden_size) for _ in range(config.num_hidden_layers)]
        )
        self.gradient_checkpointing = False

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> BaseModelOutput:
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layers:
            hidden_states, weights, _ = layer(
                hidden_states, attention_mask, encoder_hidden_states, encoder_attention_mask
            )
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (weights,)
        return BaseModelOutput(
            last_hidden_state=hidden_states, hidden_states=all_hidden_states, attentions=all_attentions
        )


def check_finite(module: nn.Module, name: str, values: torch.Tensor) -> None:
    """NaN / inf inputs make every output NaN. The check (a device sync) is off with `check_inputs=False` in the
    config of the model `module` belongs to (`module.checks_config`, set by `VLPPreTrainedModel.post_init`)."""
    if getattr(module.checks_config, "check_inputs", True) is not False and not bool(values.isfinite().all()):
        index = (~values.isfinite()).nonzero()[0].tolist()
        raise ValueError(
            f"`{name}` has {values[tuple(index)].item()} at index {index}; expected finite values (set "
            "`model.config.check_inputs = False` to skip this check)."
        )


def check_token_ids(name: str, ids: torch.Tensor, size: int, size_name: str) -> None:
    """Ids outside the embedding table would be an IndexError deep inside (a device-side assert on GPU)."""
    outside = (ids < 0) | (ids >= size)
    if bool(outside.any()):
        index = outside.nonzero()[0].tolist()
        raise ValueError(
            f"`{name}` has {ids[tuple(index)].item()} at index {index}; expected ids in [0, {size}) (`{size_name}` = "
            f"{size}): were the texts tokenized with this model's tokenizer?"
        )


def check_pixel_values(pixel_values: torch.Tensor | None, num_channels: int) -> None:
    if pixel_values is None:
        raise ValueError("`pixel_values` is required: pass images through the processor first.")
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"`pixel_values` must be a torch.Tensor, got {type(pixel_values).__name__}.")
    if pixel_values.ndim != 4 or pixel_values.shape[1] != num_channels:
        raise ValueError(
            f"`pixel_values` must have shape (batch_size, {num_channels}, height, width), "
            f"got {tuple(pixel_values.shape)}."
        )


def check_input_ids(
    input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None, token_type_ids: torch.Tensor | None = None
) -> None:
    if input_ids is None:
        raise ValueError("`input_ids` is required: pass texts through the tokenizer or processor first.")
    if input_ids.ndim != 2:
        raise ValueError(f"`input_ids` must have shape (batch_size, sequence_length), got {tuple(input_ids.shape)}.")
    for name, value in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
        if value is not None and value.shape != input_ids.shape:
            raise ValueError(f"`{name}` has shape {tuple(value.shape)} but `input_ids` has {tuple(input_ids.shape)}.")


def additive_padding_mask(attention_mask: torch.Tensor, dtype: torch.dtype, is_causal: bool = False) -> torch.Tensor:
    """(B, K) 1/0 padding mask -> (B, 1, Q=K, K) additive mask (0 where attended, dtype min elsewhere), optionally
    combined with a causal mask. Rows that would attend nowhere keep their diagonal so softmax stays finite."""
    batch_size, length = attention_mask.shape
    allowed = attention_mask.bool()[:, None, None, :].expand(batch_size, 1, length, length)
    if is_causal:
        causal = torch.ones(length, length, dtype=torch.bool, device=attention_mask.device).tril()
        allowed = allowed & causal
    nowhere = ~allowed.any(dim=-1, keepdim=True)
    allowed = allowed | (nowhere & torch.eye(length, dtype=torch.bool, device=attention_mask.device))
    return torch.zeros(allowed.shape, dtype=dtype, device=attention_mask.device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )


def self_attention_mask(
    config, attention_mask: torch.Tensor | None, length: int, dtype: torch.dtype, device, is_causal: bool
) -> torch.Tensor | None:
    """The mask a self-attention stack needs, or None when there is nothing to mask. Without padding, a causal
    stack leaves the mask to the kernel (`is_causal`) except in eager attention, which needs it spelled out."""
    if attention_mask is not None and bool(attention_mask.all()):
        attention_mask = None
    if attention_mask is not None:
        return additive_padding_mask(attention_mask.to(device), dtype, is_causal)
    if is_causal and config._attn_implementation not in ("sdpa", "flash_attention_2", "flash_attention_3"):
        mask = torch.full((length, length), torch.finfo(dtype).min, dtype=dtype, device=device).triu(1)
        return mask[None, None]
    return None


def decoder_attention_mask(
    config, attention_mask: torch.Tensor | None, query_length: int, past_length: int, dtype: torch.dtype, device
) -> torch.Tensor | None:
    """The causal self-attention mask of a decoder step with `past_length` cached tokens: (B or 1, 1, Q, past + Q)
    additive, or None when the kernel's own causal flag is enough. Query i sits at position `past_length + i` and sees
    every cached key and the keys up to itself. `attention_mask` (B, past + Q) covers the cached tokens too."""
    key_length = past_length + query_length
    if attention_mask is not None:
        if attention_mask.ndim != 2 or attention_mask.shape[1] != key_length:
            raise ValueError(
                f"`attention_mask` must have shape (batch_size, {key_length}) (the {past_length} cached tokens and the "
                f"{query_length} new ones), got {tuple(attention_mask.shape)}."
            )
        if bool(attention_mask.all()):
            attention_mask = None
    if attention_mask is None:
        if query_length == 1:
            return None
        if past_length == 0:
            return self_attention_mask(config, None, query_length, dtype, device, is_causal=True)
    positions = torch.arange(key_length, device=device)
    allowed = (positions[None, :] <= positions[past_length:, None])[None, None]
    if attention_mask is not None:
        allowed = allowed & attention_mask.to(device).bool()[:, None, None, :]
        # A padded query row that sees no key keeps its own position so that softmax stays finite.
        nowhere = ~allowed.any(dim=-1, keepdim=True)
        allowed = allowed | (nowhere & (positions[None, :] == positions[past_length:, None]))
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)


class VLPPatchEmbeddings(nn.Module):
    """Image -> patch tokens (+ optional class token) + learned positions, interpolated for other image sizes."""

    checks_config = None  # the model's config (its `check_inputs`)

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed_dim = config.hidden_size
        self.image_size = config.image_size
        self.patch_size = config.patch_size
        self.patch_embedding = nn.Conv2d(
            config.num_channels, self.embed_dim, config.patch_size, config.patch_size, bias=config.patch_bias
        )
        self.class_embedding = nn.Parameter(torch.zeros(self.embed_dim)) if config.class_token else None
        self.num_prefix_tokens = 1 if config.class_token else 0
        self.num_patches = (self.image_size // self.patch_size) ** 2
        self.num_positions = self.num_patches + self.num_prefix_tokens
        self.position_embedding = nn.Embedding(self.num_positions, self.embed_dim)
        self.position_ids = nn.Buffer(torch.arange(self.num_positions).expand((1, -1)), persistent=False)

    def interpolate_pos_encoding(self, height: int, width: int) -> torch.Tensor:
        """Position embeddings for a (height, width) image: the patch grid is resized bicubically."""
        position_embedding = self.position_embedding.weight.unsqueeze(0)
        new_height, new_width = height // self.patch_size, width // self.patch_size
        if new_height * new_width == self.num_patches and new_height == new_width:
            return position_embedding
        prefix = position_embedding[:, : self.num_prefix_tokens]
        grid = position_embedding[:, self.num_prefix_tokens :]
        side = int(self.num_patches**0.5)
        grid = grid.reshape(1, side, side, self.embed_dim).permute(0, 3, 1, 2)
        grid = nn.functional.interpolate(grid, size=(new_height, new_width), mode="bicubic", align_corners=False)
        grid = grid.permute(0, 2, 3, 1).reshape(1, -1, self.embed_dim)
        return torch.cat([prefix, grid], dim=1)

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        batch_size, _, height, width = pixel_values.shape
        if not interpolate_pos_encoding and (height != self.image_size or width != self.image_size):
            raise ValueError(
                f"`pixel_values` has images of {height}x{width}, but the model expects "
                f"{self.image_size}x{self.image_size}; resize them or pass `interpolate_pos_encoding=True`."
            )
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"`pixel_values` height and width ({height}x{width}) must be multiples of the patch size "
                f"({self.patch_size})."
            )
        check_finite(self, "pixel_values", pixel_values)
        embeddings = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        embeddings = embeddings.flatten(2).transpose(1, 2)
        if self.class_embedding is not None:
            embeddings = torch.cat([self.class_embedding.expand(batch_size, 1, -1), embeddings], dim=1)
        if interpolate_pos_encoding:
            return embeddings + self.interpolate_pos_encoding(height, width)
        return embeddings + self.position_embedding(self.position_ids)


class VLPPatchDropout(nn.Module):
    """FLIP's patch dropout (open_clip's `PatchDropout`): in training, each image keeps a random
    `1 - prob` share of its patch tokens (at least one) and its prefix (class) tokens; in eval mode it is the
    identity, so evaluation and generation see every patch."""

    def __init__(self, prob: float, num_prefix_tokens: int):
        super().__init__()
        self.prob = prob
        self.num_prefix_tokens = num_prefix_tokens

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if not self.training or self.prob == 0.0:
            return hidden_states
        prefix, patches = hidden_states[:, : self.num_prefix_tokens], hidden_states[:, self.num_prefix_tokens :]
        batch_size, num_patches, width = patches.shape
        keep = max(1, int(num_patches * (1.0 - self.prob)))
        kept = torch.rand(batch_size, num_patches, device=patches.device).topk(keep, dim=-1).indices
        patches = patches.gather(1, kept.unsqueeze(-1).expand(-1, -1, width))
        return torch.cat([prefix, patches], dim=1)


class VLPTextEmbeddings(nn.Module):
    """Token + learned position (+ token type) embeddings, with BERT's optional LayerNorm and dropout."""

    def __init__(self, config):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embedding = (
            nn.Embedding(config.type_vocab_size, config.hidden_size) if config.type_vocab_size > 0 else None
        )
        self.layer_norm = (
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.embedding_layernorm else None
        )
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.position_ids = nn.Buffer(torch.arange(config.max_position_embeddings).expand((1, -1)), persistent=False)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        seq_length = input_ids.shape[1]
        max_positions = self.position_embedding.num_embeddings
        if seq_length > max_positions:
            raise ValueError(
                f"`input_ids` has {seq_length} tokens per sequence, more than the model's {max_positions} positions "
                "(`max_position_embeddings`); truncate the text (e.g. `truncation=True, max_length=...`)."
            )
        if position_ids is None:
            position_ids = self.position_ids[:, :seq_length]
        check_token_ids("input_ids", input_ids, self.token_embedding.num_embeddings, "vocab_size")
        embeddings = self.token_embedding(input_ids) + self.position_embedding(position_ids)
        if self.token_type_embedding is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            else:
                types = self.token_type_embedding.num_embeddings
                check_token_ids("token_type_ids", token_type_ids, types, "type_vocab_size")
            embeddings = embeddings + self.token_type_embedding(token_type_ids)
        if self.layer_norm is not None:
            embeddings = self.layer_norm(embeddings)
        return self.dropout(embeddings)


class VLPAttentionPool(nn.Module):
    """Multihead attention pooling (SigLIP's MAP head): a learned probe attends over all tokens, then a residual
    MLP. Returns (B, D)."""

    def __init__(self, config):
        super().__init__()
        self.probe = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.attention = VLPAttention(config, kv_hidden_size=config.hidden_size, qkv_bias=True)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = VLPMLP(config.hidden_size, config.intermediate_size, config.hidden_act)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        probe = self.probe.expand(hidden_states.shape[0], -1, -1)
        pooled, _ = self.attention(probe, encoder_hidden_states=hidden_states)
        pooled = pooled + self.mlp(self.layer_norm(pooled))
        return pooled[:, 0]


class VLPPredictionHeadTransform(nn.Module):
    """BERT's prediction-head transform: dense + activation + LayerNorm."""

    def __init__(self, hidden_size: int, hidden_act: str, layer_norm_eps: float):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.activation = ACT2FN[hidden_act]
        self.layer_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(self.activation(self.dense(hidden_states)))


def masked_mean(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    if attention_mask is None:
        return hidden_states.mean(dim=1)
    weights = attention_mask.to(hidden_states.dtype).unsqueeze(-1)
    return (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def pool_text(
    hidden_states: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    pooling: str,
    eos_token_id: int | None = None,
) -> torch.Tensor:
    """Pick the sentence representation from (B, L, D) token states."""
    batch = torch.arange(hidden_states.shape[0], device=hidden_states.device)
    if pooling == "first":
        return hidden_states[:, 0]
    if pooling == "last":
        return hidden_states[:, -1]
    if pooling == "mean":
        return masked_mean(hidden_states, attention_mask)
    if pooling == "argmax":
        return hidden_states[batch, input_ids.to(torch.int).argmax(dim=-1)]
    # "eos": the first eos token; a sequence truncated before its eos falls back to its last real token.
    is_eos = input_ids == eos_token_id
    if attention_mask is not None:
        last_real = attention_mask.sum(dim=-1).clamp(min=1) - 1
    else:
        last_real = torch.full_like(batch, input_ids.shape[1] - 1)
    index = torch.where(is_eos.any(dim=-1), is_eos.int().argmax(dim=-1), last_real)
    return hidden_states[batch, index]
