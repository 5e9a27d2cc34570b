"""A contrastive batch larger than memory: open_clip's `--accum-freq` (gradient caching).

Plain gradient accumulation trains on K small batches whose negatives never meet. Here the K micro-batches of one
optimizer step share one contrastive loss over all K x B pairs (and, gathered, over every rank's):

1. every micro-batch runs once without a graph, and its image and text embeddings are kept;
2. every micro-batch runs again with its graph; its slice of the cached embeddings is replaced by the live ones, the
   loss over all K x B pairs is computed and back-propagated. Only one micro-batch's activations are alive at a time.

The K backward passes sum to the gradient of the one loss over the K x B batch: pass j gives the part that flows
through micro-batch j's embeddings. Objectives of a single micro-batch (captioning LM, MLM, MIM: losses the model
computes from its own rows) are added in pass j as micro-batch j's loss over K, so their gradient is that of their mean
over the micro-batches (equal to the whole batch's when the micro-batches weigh the same).

The temperature (and the sigmoid loss's bias) enter the contrastive loss directly, not through the embeddings, so they
are differentiated in one pass only (the last); open_clip counts them K times.

Randomness: the second pass of a micro-batch must see the dropout masks (and any other draw) of its first, or the
cached embeddings are not those of the graph being differentiated. The torch CPU and CUDA generator states are
recorded before each first pass and restored before the second, then set back to where the first passes left them,
so the following steps draw as if each micro-batch had run once.
"""

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch
from transformers.utils import ModelOutput

logger = logging.getLogger(__name__)


def split_batch(inputs: dict[str, Any], accum_freq: int) -> list[dict[str, Any]]:
    """`inputs` cut along the batch into `accum_freq` consecutive micro-batches (sizes differ by at most one; a batch
    of fewer rows gives fewer micro-batches). Tensors whose first dimension is the batch are split; anything else
    (scalars, non-tensors) goes to every micro-batch unchanged."""
    batch_size = _batch_size(inputs)
    pieces = [index for index in torch.arange(batch_size).tensor_split(accum_freq) if len(index)]
    micro_batches = []
    for index in pieces:
        start, stop = int(index[0]), int(index[-1]) + 1
        micro_batches.append(
            {
                key: value[start:stop] if _is_batched(value, batch_size) else value
                for key, value in inputs.items()
            }
        )
    return micro_batches


def embeddings_output(outputs: ModelOutput) -> ModelOutput:
    """The output that holds the contrastive `image_embeds` / `text_embeds` and `logit_scale`: `outputs` itself (dual
    encoder) or the base model's output a head's output nests (`fusion_output`, `captioning_output`)."""
    for candidate in (outputs, *(value for value in outputs.values() if isinstance(value, ModelOutput))):
        if candidate.get("image_embeds") is not None and candidate.get("text_embeds") is not None:
            return candidate
    raise ValueError(f"{type(outputs).__name__} holds no `image_embeds` and `text_embeds` to accumulate.")


def accumulate_contrastive_gradients(
    micro_batches: list[dict[str, Any]],
    forward: Callable[[dict[str, Any]], ModelOutput],
    loss: Callable[[ModelOutput, dict[str, Any]], torch.Tensor],
    backward: Callable[[torch.Tensor], None],
    no_sync: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    micro_batch_loss: Callable[[ModelOutput, dict[str, Any]], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Back-propagate the contrastive loss over all `micro_batches` together, one micro-batch graph at a time.

    Args:
        micro_batches: the micro-batches of one step (`split_batch`).
        forward: runs the model on a micro-batch (with a graph unless called under `torch.no_grad`).
        loss: the contrastive loss of an output whose embeddings are those of every micro-batch, concatenated in order
            (`embeddings_output(outputs)` holds them); the micro-batch is passed along.
        backward: back-propagates a loss (e.g. `accelerator.backward`); gradients accumulate over the passes.
        no_sync: a context in which a backward does not all-reduce gradients (DDP's `no_sync`); every pass but the
            last runs in it, the last one under whatever the caller set.
        micro_batch_loss: optional, the loss of the other objectives on one micro-batch alone, computed on its outputs
            before its embeddings are replaced; pass j back-propagates it divided by the number of micro-batches.

    Returns the (detached) contrastive loss, the same number in every pass.
    """
    states, images, texts = [], [], []
    with torch.no_grad():
        for batch in micro_batches:
            states.append(_rng_state())
            cached = embeddings_output(forward(batch))
            images.append(cached.image_embeds)
            texts.append(cached.text_embeds)
    after = _rng_state()
    last = len(micro_batches) - 1
    value = None
    for j, batch in enumerate(micro_batches):
        _set_rng_state(states[j])
        with no_sync() if j < last else contextlib.nullcontext():
            outputs = forward(batch)
            own = micro_batch_loss(outputs, batch) / len(micro_batches) if micro_batch_loss is not None else 0.0
            live = embeddings_output(outputs)
            live["image_embeds"] = torch.cat([*images[:j], live.image_embeds, *images[j + 1 :]])
            live["text_embeds"] = torch.cat([*texts[:j], live.text_embeds, *texts[j + 1 :]])
            if j < last:  # the direct gradient of the temperature and bias is taken once, in the last pass
                for key in ("logit_scale", "logit_bias"):
                    if isinstance(live.get(key), torch.Tensor):
                        live[key] = live[key].detach()
            step_loss = loss(outputs, batch)
            backward(step_loss + own)
        value = step_loss.detach()
        del outputs, live, step_loss, own
    _set_rng_state(after)
    return value


def warn_gradient_accumulation_with_itc(gradient_accumulation_steps: int, objectives: dict[str, float]) -> None:
    """Warn that `--gradient-accumulation-steps` with ITC keeps each batch's negatives to itself."""
    if gradient_accumulation_steps > 1 and "itc" in objectives:
        logger.warning(
            "--gradient-accumulation-steps %d with the contrastive objective (itc): each of the %d batches of a step "
            "meets only its own negatives, so the contrastive batch is not enlarged. Use --accum-freq %d instead "
            "(one contrastive loss over all of them, open_clip's --accum-freq).",
            gradient_accumulation_steps, gradient_accumulation_steps, gradient_accumulation_steps,
        )  # fmt: skip


def _batch_size(inputs: dict[str, Any]) -> int:
    for key in ("pixel_values", "input_ids", "visual_feats"):
        if isinstance(inputs.get(key), torch.Tensor):
            return inputs[key].shape[0]
    raise ValueError(f"Cannot split a batch without `pixel_values` or `input_ids`; it has {sorted(inputs)}.")


def _is_batched(value: Any, batch_size: int) -> bool:
    return isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == batch_size


def _cuda_devices() -> Iterator[int]:
    return range(torch.cuda.device_count()) if torch.cuda.is_available() and torch.cuda.is_initialized() else range(0)


def _rng_state() -> tuple[torch.Tensor, list[torch.Tensor]]:
    return torch.get_rng_state(), [torch.cuda.get_rng_state(device) for device in _cuda_devices()]


def _set_rng_state(state: tuple[torch.Tensor, list[torch.Tensor]]) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    for device, device_state in zip(_cuda_devices(), cuda):
        torch.cuda.set_rng_state(device_state, device)


__all__ = [
    "accumulate_contrastive_gradients",
    "embeddings_output",
    "split_batch",
    "warn_gradient_accumulation_with_itc",
]
