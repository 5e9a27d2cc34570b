"""Momentum distillation (ALBEF): an exponential-moving-average copy of the model and queues of its features.

The momentum ("teacher") model sees the same batch as the model being trained; its ITC similarities and MLM
predictions become soft targets mixed with the one-hot ones (weight `alpha`), which tolerates the noisy captions of
web data, and its features fill first-in-first-out queues that serve as extra contrastive negatives. The state (the
EMA weights and the queues) is saved in every checkpoint and restored on resume (see `VLPTrainer`).
"""

import copy

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.tensor import DTensor

from .distributed import all_gather_features

MOMENTUM_STATE_NAME = "momentum_state.safetensors"


class MomentumDistiller:
    """The EMA teacher of a model and its feature queues.

    Args:
        model: the model being trained (unwrapped); the teacher starts as its copy.
        momentum: EMA decay per optimizer step, `teacher = momentum * teacher + (1 - momentum) * model` (ALBEF 0.995).
        queue_size: entries of the image / text feature queues (0: no queue); a multiple of the global batch keeps
            whole batches in it.
        alpha: weight of the teacher's soft targets against the one-hot ones (ALBEF 0.4).
        embed_dim: width of the ITC features that the queues hold.

    `steps` counts the teacher's EMA updates (optimizer steps), saved with the teacher, so that the distillation
    weight ramps up from 0 (`ramped_alpha`, ALBEF's first-epoch warm-up) across a resume.
    """

    def __init__(self, model: nn.Module, momentum: float = 0.995, queue_size: int = 4096, alpha: float = 0.4,
                 embed_dim: int | None = None):  # fmt: skip
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"`momentum` must be in [0, 1), got {momentum}.")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"`alpha` (distillation weight) must be in [0, 1], got {alpha}.")
        if queue_size < 0:
            raise ValueError(f"`queue_size` must be >= 0, got {queue_size}.")
        self.momentum = momentum
        self.alpha = alpha
        self.teacher = copy.deepcopy(model)
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        parameter = next(model.parameters())
        embed_dim = embed_dim or model.config.projection_dim
        generator = torch.Generator().manual_seed(0)
        # As ALBEF, the queues start as random unit vectors with no image id (-1 never equals a real id).
        self.image_queue = nn.functional.normalize(torch.randn(queue_size, embed_dim, generator=generator), dim=1)
        self.text_queue = nn.functional.normalize(torch.randn(queue_size, embed_dim, generator=generator), dim=1)
        self.image_queue = self.image_queue.to(parameter.device)
        self.text_queue = self.text_queue.to(parameter.device)
        self.id_queue = torch.full((queue_size,), -1, dtype=torch.long, device=parameter.device)
        self.queue_pointer = 0
        self.steps = 0

    def alpha_at(self, warmup_steps: int | None) -> float:
        """The distillation weight now: `alpha` ramped linearly from 0 over `warmup_steps` (see `ramped_alpha`)."""
        return ramped_alpha(self.alpha, self.steps, warmup_steps)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step of the teacher towards `model` (call after each optimizer step)."""
        self.steps += 1
        for teacher_parameter, parameter in zip(self.teacher.parameters(), model.parameters()):
            if isinstance(parameter, DTensor):  # FSDP2 holds this rank's shard: every rank gathers the whole
                parameter = parameter.full_tensor()
            teacher_parameter.mul_(self.momentum).add_(parameter.detach(), alpha=1.0 - self.momentum)

    @torch.no_grad()
    def enqueue(self, image_feats: torch.Tensor, text_feats: torch.Tensor, image_ids: torch.Tensor) -> None:
        """Add this step's teacher features of the global batch (gathered from every rank) to the queues."""
        queue_size = self.image_queue.shape[0]
        if queue_size == 0:
            return
        image_feats = all_gather_features(image_feats.detach(), gather_with_grad=False)
        text_feats = all_gather_features(text_feats.detach(), gather_with_grad=False)
        image_ids = all_gather_features(image_ids.detach(), gather_with_grad=False)
        count = min(image_feats.shape[0], queue_size)
        positions = (self.queue_pointer + torch.arange(count, device=self.id_queue.device)) % queue_size
        self.image_queue[positions] = image_feats[:count].to(self.image_queue.dtype)
        self.text_queue[positions] = text_feats[:count].to(self.text_queue.dtype)
        self.id_queue[positions] = image_ids[:count].to(self.id_queue.device)
        self.queue_pointer = int((self.queue_pointer + count) % queue_size)

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"teacher.{name}": value for name, value in self.teacher.state_dict().items()}
        state.update(
            image_queue=self.image_queue, text_queue=self.text_queue, id_queue=self.id_queue,
            queue_pointer=torch.tensor(self.queue_pointer), steps=torch.tensor(self.steps),
        )  # fmt: skip
        return {name: value.detach().contiguous().cpu() for name, value in state.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        teacher = {name[len("teacher."):]: value for name, value in state.items() if name.startswith("teacher.")}
        self.teacher.load_state_dict(teacher, strict=False)
        for name in ("image_queue", "text_queue", "id_queue"):
            if state[name].shape != getattr(self, name).shape:
                raise ValueError(
                    f"The saved momentum {name} has shape {tuple(state[name].shape)}, this run's is "
                    f"{tuple(getattr(self, name).shape)}; resume with the same --queue-size."
                )
            setattr(self, name, state[name].to(getattr(self, name).device))
        self.queue_pointer = int(state["queue_pointer"])
        # A state saved before the step count was kept comes from a run past any warm-up.
        self.steps = int(state["steps"]) if "steps" in state else _WARM

    def save(self, path: str) -> None:
        # Tied weights share storage; safetensors wants each tensor once.
        save_file({name: value.clone() for name, value in self.state_dict().items()}, path)

    def load(self, path: str) -> None:
        self.load_state_dict(load_file(path))


_WARM = 2**62


def ramped_alpha(alpha: float, step: int, warmup_steps: int | None) -> float:
    """ALBEF's distillation warm-up: `alpha * min(1, step / warmup_steps)`, so that the teacher's soft targets, which
    start as the random model's, weigh nothing at the first step and `alpha` from `warmup_steps` on (ALBEF ramps
    over the first epoch). `warmup_steps` None or 0: `alpha` from the start."""
    if not warmup_steps:
        return alpha
    if warmup_steps < 0:
        raise ValueError(f"`distill_warmup_steps` must be >= 0, got {warmup_steps}.")
    return alpha * min(1.0, step / warmup_steps)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -sum(targets * log_softmax(logits)) (targets are distributions)."""
    return -(torch.log_softmax(logits, dim=-1) * targets).sum(dim=-1).mean()


__all__ = ["MOMENTUM_STATE_NAME", "MomentumDistiller", "ramped_alpha", "soft_cross_entropy"]
