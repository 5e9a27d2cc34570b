"""Rank helpers and the differentiable all-gather, on torch.distributed.

Contrastive objectives want negatives from the global batch. Two ways to get them, as in open_clip:
- `gather_with_grad=True`: `torch.distributed.nn.functional.all_gather`, whose backward sends every rank's gradient
  for a feature back to the rank that produced it. With the full global loss on every rank, DDP's gradient average
  then gives exactly the single-process gradient of the global batch.
- `gather_with_grad=False`: a plain all-gather (no gradient through other ranks' features) with the local slice put
  back so that at least the local features get their gradient. Cheaper, but an approximation: the gradient that
  other ranks' losses would send to this rank's features is dropped (with `local_loss` too).
"""

import os
import re
from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from accelerate import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from torch import nn
from torch.distributed.fsdp import FSDPModule


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def all_gather_features(features: torch.Tensor, gather_with_grad: bool = True) -> torch.Tensor:
    """(B, ...) on every rank -> (world_size * B, ...) ordered by rank. Identity without torch.distributed.
    Every rank must pass the same B."""
    if not is_distributed():
        return features
    if gather_with_grad:
        return torch.cat(dist_fn.all_gather(features.contiguous()), dim=0)
    gathered = [torch.empty_like(features) for _ in range(get_world_size())]
    dist.all_gather(gathered, features.detach().contiguous())
    gathered[get_rank()] = features
    return torch.cat(gathered, dim=0)


def all_gather_object_list(value) -> list:
    """Gather any picklable value from every rank (e.g. image ids for ITM negatives)."""
    if not is_distributed():
        return [value]
    gathered = [None] * get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def all_gather_padded(tensor: torch.Tensor, pad_value, dim: int = 1) -> torch.Tensor:
    """Gather (B, L_rank, ...) tensors whose `dim` differs between ranks (token ids of differently padded batches):
    each is padded with `pad_value` to the longest, then concatenated along the batch, ordered by rank. No gradient
    flows (it is meant for ids and masks). Identity without torch.distributed. Every rank must pass the same B."""
    if not is_distributed():
        return tensor
    length = torch.tensor([tensor.shape[dim]], device=tensor.device)
    lengths = [torch.empty_like(length) for _ in range(get_world_size())]
    dist.all_gather(lengths, length)
    longest = int(max(value.item() for value in lengths))
    if tensor.shape[dim] < longest:
        pad_shape = list(tensor.shape)
        pad_shape[dim] = longest - tensor.shape[dim]
        tensor = torch.cat([tensor, tensor.new_full(pad_shape, pad_value)], dim=dim)
    gathered = [torch.empty_like(tensor) for _ in range(get_world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered, dim=0)


def enable_fsdp_on_cpu(accelerator, fsdp_plugin_args: dict | None) -> bool:
    """Let FSDP run on CPU processes (gloo). accelerate 1.15 only turns FSDP on for accelerators: on CPU processes
    (`MULTI_CPU`) it drops the plugin that the Trainer's `--fsdp` / `--fsdp_config` (`fsdp_plugin_args`) or
    `accelerate launch` with an FSDP config (`ACCELERATE_USE_FSDP`) give, and training silently runs as DDP.
    torch's FSDP1 and FSDP2 themselves run on CPU with gloo; this puts `accelerator`'s state into FSDP mode with that
    plugin, as accelerate does on GPUs. Call it right after creating the accelerator, before anything is prepared.
    Returns whether it did (False elsewhere: on accelerators accelerate does it itself)."""
    state = accelerator.state
    if state.distributed_type != DistributedType.MULTI_CPU:
        return False
    if fsdp_plugin_args is not None:
        plugin = FullyShardedDataParallelPlugin(**fsdp_plugin_args)
    elif os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        plugin = FullyShardedDataParallelPlugin()  # reads the launcher's FSDP_* variables
    else:
        return False
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    return True


def replicate_scalar_parameters(plugin: FullyShardedDataParallelPlugin, model: nn.Module) -> list[str]:
    """FSDP2's `fully_shard` refuses 0-d parameters (the temperature `logit_scale`, SigLIP's `logit_bias`). Leave them
    out of the sharding (`ignored_params`, through the plugin's `ignored_modules`): each rank keeps the whole scalar,
    as under DDP, and since FSDP does not reduce the gradients of ignored parameters, a hook averages theirs over the
    ranks in backward, as DDP does. Returns their names."""
    scalars = [(name, parameter) for name, parameter in model.named_parameters() if parameter.ndim == 0]
    if not scalars:
        return []
    ignored = plugin.ignored_modules
    if isinstance(ignored, str):  # a pattern of module names, as accelerate reads it
        ignored = [module for name, module in model.named_modules() if re.fullmatch(ignored, name)]
    # The plugin outlives a Trainer (accelerate's state is per process): drop the scalars of an earlier model.
    ignored = [module for module in ignored or [] if not isinstance(module, _ReplicatedScalars)]
    plugin.ignored_modules = [*ignored, _ReplicatedScalars([parameter for _, parameter in scalars])]
    for _, parameter in scalars:
        if parameter.requires_grad:
            parameter.register_hook(_average_over_ranks)
    return [name for name, _ in scalars]


class _ReplicatedScalars(nn.ParameterList):
    """The 0-d parameters `replicate_scalar_parameters` leaves out of FSDP2's sharding (not part of the model)."""


def _average_over_ranks(grad: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return grad
    grad = grad.clone()
    dist.all_reduce(grad)  # gloo has no AVG
    return grad / get_world_size()


@contextmanager
def own_class(module: nn.Module):
    """FSDP2's `fully_shard` gives a module a generated class, `FSDP<Name>` (a subclass of `FSDPModule` and of the
    module's class, defined in torch). Within this context the module has its own class back, e.g. for
    `save_pretrained`, which names the class in `auto_map` and copies the file that defines it as remote code."""
    fsdp_class = type(module)
    if not isinstance(module, FSDPModule):
        yield module
        return
    module.__class__ = next(base for base in fsdp_class.__mro__ if not issubclass(base, FSDPModule))
    try:
        yield module
    finally:
        module.__class__ = fsdp_class


def drop_tied_copies(state_dict: dict | None, model: nn.Module) -> dict | None:
    """FSDP gathers a full state dict tensor by tensor, so tied weights (the MLM decoder and the word embeddings)
    arrive as separate, equal copies that `save_pretrained` no longer recognises as one (it looks for shared
    storage) and saves twice. Drop the copies of tied targets that equal their source, as it would."""
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    if state_dict is None or not tied:
        return state_dict
    kept = dict(state_dict)
    for target, source in tied.items():
        if target in kept and source in kept and torch.equal(kept[target], kept[source]):
            del kept[target]
    return kept
