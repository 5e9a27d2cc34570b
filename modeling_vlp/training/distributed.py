"""Rank helpers and the differentiable all-gather, on torch.distributed.

Contrastive objectives want negatives from the global batch. Two ways to get them, as in open_clip:
- `gather_with_grad=True`: `torch.distributed.nn.functional.all_gather`, whose backward sends every rank's gradient
  for a feature back to the rank that produced it. With the full global loss on every rank, DDP's gradient average
  then gives exactly the single-process gradient of the global batch.
- `gather_with_grad=False`: a plain all-gather (no gradient through other ranks' features) with the local slice put
  back so that at least the local features get their gradient. Cheaper, but an approximation: the gradient that
  other ranks' losses would send to this rank's features is dropped (with `local_loss` too).
"""

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn


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
