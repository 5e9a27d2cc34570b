"""BLIP's fusion (`VLPFusionConfig.share_text_layers`): the text encoder's own layers carry the cross-attention to
the image, as BLIP's `BlipTextModel`, which runs them without the image for ITC and with it for ITM.

The unimodal text state (`encode_text`, what `fuse` reads) is then the text embeddings: ITC runs the layers on them
without their cross-attention (`itc_text_states`), `fuse` with it (`VLPFusionEncoder` on the text encoder's layers).
"""

import torch
from transformers.modeling_outputs import BaseModelOutput

from .modeling_layers import VLPEncoder, self_attention_mask

# `shared_cross_attention` that attends to nothing: a `VLPTransformerLayer` given it skips its cross-attention block.
_NO_CROSS_ATTENTION = (None, None)


def build_text_encoder(config) -> VLPEncoder:
    """The text encoder; with `share_text_layers` its layers also cross-attend to the image tokens."""
    cross = config.vision_config.hidden_size if config.share_text_layers else None
    return VLPEncoder(config.text_config, cross_attention_hidden_size=cross)


def encode_text_layers(encoder: VLPEncoder, config, embeddings, mask, **flags) -> BaseModelOutput:
    """The unimodal text pass: the encoder's layers, or with `share_text_layers` the embeddings as they are (the
    layers run in `itc_text_states` and `fuse`)."""
    if not config.share_text_layers:
        return encoder(embeddings, mask, **flags)
    return BaseModelOutput(
        last_hidden_state=embeddings,
        hidden_states=(embeddings,) if flags.get("output_hidden_states") else None,
        attentions=() if flags.get("output_attentions") else None,
    )


def itc_text_states(encoder: VLPEncoder, config, text_states: torch.Tensor, attention_mask) -> torch.Tensor:
    """What ITC projects the first token of: the unimodal states, or with `share_text_layers` the text encoder's
    layers run on the embeddings without cross-attention (BLIP's text encoder without `encoder_hidden_states`)."""
    if not config.share_text_layers:
        return text_states
    mask = self_attention_mask(
        config.text_config, attention_mask, text_states.shape[1], text_states.dtype, text_states.device, is_causal=False
    )
    for layer in encoder.layers:
        text_states, _, _ = layer(text_states, mask, shared_cross_attention=_NO_CROSS_ATTENTION)
    return text_states


__all__ = ["build_text_encoder", "encode_text_layers", "itc_text_states"]
