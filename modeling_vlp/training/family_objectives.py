"""Each family's objectives as `VLPTrainer` calls them: `VLPObjectiveArguments` (which objectives, their weights and
how the contrastive loss meets the other ranks), the objective functions, the `OBJECTIVES` registry the families
fill (`modeling_vlp.families` through `register_objectives`) and `compute_objective_losses`, one forward and every
objective's loss.

An objective is a function `(model, outputs, inputs, objective_args) -> scalar loss`, where `model` is the unwrapped
model (read its config, call its building steps), `outputs` what its forward returned on the batch and `inputs` the
whole collated batch (including columns the model does not take, such as `image_id`), with an optional `prepare`
step `(model, inputs, objective_args) -> inputs` that runs before the forward (e.g. pairing images with other
captions for ITM).
"""

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers.utils import ModelOutput

from .distributed import all_gather_features, all_gather_padded, get_rank, get_world_size
from .momentum import soft_cross_entropy
from .objectives import contrastive_loss, sample_hard_negatives, sample_itm_negatives

logger = logging.getLogger(__name__)


@dataclass
class VLPObjectiveArguments:
    """Which objectives to train and how the contrastive loss meets the other ranks.

    objectives: objective name -> weight of its loss in the total (`loss = sum(weight * loss_<name>)`); a list of
        names weighs each 1.
    gather: gather image and text features from every rank so that the negatives are the global batch; False keeps
        each rank's negatives to its own batch (cheaper, a different and weaker objective).
    local_loss: compute only the local rows of the global similarity matrix (labels offset by rank) instead of the
        full matrix on every rank; same gradient, less compute and memory (open_clip's `--local-loss`).
    gather_with_grad: let the gradient flow back through the other ranks' features; with it the DDP-averaged
        gradient is exactly that of the global-batch loss in one process (tests/test_trainer.py). Without it each rank
        back-propagates only into its own features: cheaper, an approximation.
    itm_negative_ratio: for single-stream (unified) models, the share of rows whose caption is replaced by a caption
        of another image from the global batch for image-text matching (ViLT and UNITER use one half).
    momentum_distill: (fusion models) ALBEF's momentum distillation: an EMA copy of the model gives soft ITC and MLM
        targets, mixed with the one-hot ones with weight `distill_alpha`, and its features fill queues of `queue_size`
        extra contrastive negatives. `momentum` is the EMA decay per optimizer step. `distill_warmup_steps` ramps the
        weight linearly from 0 to `distill_alpha` over that many optimizer steps (ALBEF: the first epoch); None is one
        epoch where its length is known (`vlp pretrain` sets it from the training set), else no warm-up; 0: none.
    accum_freq: open_clip's `--accum-freq`: each optimizer step draws `accum_freq` batches of the per-device batch
        size B (the dataloader yields K x B rows) and computes one contrastive loss over all K x B pairs (gathered
        across ranks), keeping only one micro-batch's graph in memory at a time (`accumulation.py`): the contrastive
        batch of K x B without its activations. Needs `itc`; `lm`, `mlm`, `mim` may come with it (their losses are
        averaged over the micro-batches), `itm` may not. Unlike `gradient_accumulation_steps`, whose K batches never
        meet as negatives.
    """

    objectives: dict[str, float] = field(default_factory=lambda: {"itc": 1.0})
    gather: bool = True
    local_loss: bool = False
    gather_with_grad: bool = True
    itm_negative_ratio: float = 0.5
    momentum_distill: bool = False
    momentum: float = 0.995
    distill_alpha: float = 0.4
    distill_warmup_steps: int | None = None
    queue_size: int = 4096
    accum_freq: int = 1
    # Set by VLPTrainer when `momentum_distill` is on: the EMA teacher and its queues (momentum.py).
    distiller: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        if isinstance(self.objectives, str):
            self.objectives = [self.objectives]
        if not isinstance(self.objectives, dict):
            self.objectives = {name: 1.0 for name in self.objectives}
        if not self.objectives:
            raise ValueError("`objectives` must name at least one objective, got an empty mapping.")
        known = sorted(OBJECTIVE_DESCRIPTIONS)
        unknown = sorted(set(self.objectives) - set(known))
        if unknown:
            raise ValueError(f"Unknown objectives {unknown} in `objectives`; known objectives: {known}.")
        if not 0.0 <= self.itm_negative_ratio <= 1.0:
            raise ValueError(f"`itm_negative_ratio` must be in [0, 1], got {self.itm_negative_ratio}.")
        negative = {name: weight for name, weight in self.objectives.items() if weight < 0}
        if negative:
            raise ValueError(f"Objective weights must be >= 0, got {negative}.")
        if self.accum_freq < 1:
            raise ValueError(f"`--accum-freq` must be >= 1, got {self.accum_freq}.")
        if self.accum_freq > 1 and ("itc" not in self.objectives or not set(self.objectives) <= _ACCUMULATED):
            raise ValueError(
                f"`--accum-freq {self.accum_freq}` with a non-contrastive objective: got objectives "
                f"{sorted(self.objectives)}; --accum-freq > 1 accepts 'itc', alone or with "
                f"{sorted(_ACCUMULATED - {'itc'})} (averaged over the micro-batches; itm draws its negatives from the "
                "whole batch)."
            )
        if self.distill_warmup_steps is not None and self.distill_warmup_steps < 0:
            raise ValueError(f"`distill_warmup_steps` must be >= 0 (0: no warm-up), got {self.distill_warmup_steps}.")
        if self.accum_freq > 1 and self.momentum_distill:
            raise ValueError(
                f"`--accum-freq {self.accum_freq}` with --momentum-distill: the teacher's queue and soft targets are "
                "not accumulated; --accum-freq > 1 accepts momentum_distill=False only."
            )


# The objectives `accum_freq > 1` trains: ITC over all micro-batches, the others per micro-batch.
_ACCUMULATED = {"itc", "lm", "mlm", "mim"}

ObjectiveFunction = Callable[[nn.Module, ModelOutput, dict[str, Any], VLPObjectiveArguments], torch.Tensor]
PrepareFunction = Callable[[nn.Module, dict[str, Any], VLPObjectiveArguments], dict[str, Any]]


@dataclass(frozen=True)
class Objective:
    """A named pretraining objective: `loss` reads the model outputs; `prepare`, when set, rewrites the batch before
    the forward (every prepare step of the selected objectives runs, in order, before the one forward)."""

    loss: ObjectiveFunction
    prepare: PrepareFunction | None = None


def itc_objective(
    model: nn.Module, outputs: ModelOutput, inputs: dict[str, Any], args: VLPObjectiveArguments
) -> torch.Tensor:
    """Image-text contrastive loss over the global batch: softmax InfoNCE or pairwise sigmoid by
    `model.config.loss_type`. Reads `image_embeds`, `text_embeds` (L2-normalised), `logit_scale` (exponentiated)
    and, for the sigmoid loss, `logit_bias` from the model outputs."""
    return contrastive_loss(
        outputs.image_embeds, outputs.text_embeds, outputs.logit_scale, outputs.get("logit_bias"),
        loss_type=getattr(model.config, "loss_type", "softmax"),
        gather=args.gather, local_loss=args.local_loss, gather_with_grad=args.gather_with_grad,
    )  # fmt: skip


def model_loss(name: str, needs: str) -> ObjectiveFunction:
    """An objective whose loss the model's forward computes from labels in the batch (`outputs.loss_<name>`)."""

    def objective(model, outputs, inputs, args):
        loss = outputs.get(f"loss_{name}")
        if loss is None:
            raise ValueError(
                f"Objective {name!r}: {type(model).__name__} returned no `loss_{name}`; the batch needs {needs}."
            )
        return loss

    objective.__name__ = f"{name}_objective"
    return objective


_TEXT_PAD_VALUES = {"input_ids": None, "attention_mask": 0, "token_type_ids": 0, "mlm_labels": -100}


def prepare_itm_pairs(model: nn.Module, inputs: dict[str, Any], args: VLPObjectiveArguments) -> dict[str, Any]:
    """Single-stream ITM: replace the caption of a random `itm_negative_ratio` of the rows by a caption of another
    image drawn from the global batch (every rank's captions), and add `itm_labels` (1 match, 0 not).

    Images never move, only token rows (`input_ids`, `attention_mask`, `token_type_ids`, `mlm_labels`), so nothing
    differentiable crosses ranks. `image_id` in the batch keeps captions of the same image from being drawn as
    negatives; without it every row counts as its own image."""
    if "input_ids" not in inputs:
        raise ValueError("Objective 'itm' needs `input_ids` in the batch.")
    input_ids = inputs["input_ids"]
    batch_size, device = input_ids.shape[0], input_ids.device
    pad_values = dict(_TEXT_PAD_VALUES, input_ids=getattr(model.config, "pad_token_id", None) or 0)
    keys = [key for key in pad_values if isinstance(inputs.get(key), torch.Tensor)]
    image_ids = _image_ids(inputs, batch_size, device)
    if args.gather and get_world_size() > 1:
        candidates = {key: all_gather_padded(inputs[key], pad_values[key]) for key in keys}
        candidate_image_ids = all_gather_features(image_ids, gather_with_grad=False)
        own_index = torch.arange(batch_size, device=device) + get_rank() * batch_size
    else:
        candidates = {key: inputs[key] for key in keys}
        candidate_image_ids = image_ids
        own_index = torch.arange(batch_size, device=device)
    choice, itm_labels = sample_itm_negatives(image_ids, candidate_image_ids, own_index, args.itm_negative_ratio)
    paired = {key: candidates[key][choice] for key in keys}
    if "attention_mask" in paired:
        # Drop the columns that are padding in every row (the gathered batch is padded to the longest rank's).
        length = int(paired["attention_mask"].sum(dim=1).max().clamp(min=1))
        paired = {key: value[:, :length] for key, value in paired.items()}
    return {**inputs, **paired, "itm_labels": itm_labels}


_warned_no_image_ids = False


def _image_ids(inputs: dict[str, Any], batch_size: int, device) -> torch.Tensor:
    """The batch's `image_id`, or (with a warning) one id per row, unique across ranks."""
    global _warned_no_image_ids
    image_ids = inputs.get("image_id")
    if image_ids is not None:
        return image_ids.to(device)
    if not _warned_no_image_ids:
        logger.warning(
            "The batch has no `image_id`: every row counts as a different image, so another caption of the same "
            "image can be drawn as a negative. Add an image_id column when images have several captions."
        )
        _warned_no_image_ids = True
    return torch.arange(batch_size, device=device) + get_rank() * batch_size


def _unimodal_states(outputs: ModelOutput) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    names = ("text_unimodal_state", "text_attention_mask", "image_unimodal_state", "image_attention_mask")
    missing = [name for name in names if outputs.get(name) is None]
    if missing:
        raise ValueError(f"Hard-negative ITM needs the unimodal states in the model outputs; missing {missing}.")
    return tuple(outputs[name] for name in names)


def fusion_itm_objective(
    model: nn.Module, outputs: ModelOutput, inputs: dict[str, Any], args: VLPObjectiveArguments
) -> torch.Tensor:
    """ALBEF's image-text matching with hard negatives from the global batch.

    For every image a negative caption, and for every caption a negative image, is drawn from the softmax of the
    ITC similarities against the whole gathered batch, never one of the same `image_id`. The unimodal states are
    gathered with their gradient, so a negative from another rank trains that rank's encoders too. The fusion layers
    then read B positive and up to 2B negative pairs; the loss is the ITM head's cross-entropy over all of them.
    A model without ITC head (`projection_dim=None`, LXMERT) draws its negatives uniformly instead, as LXMERT did."""
    outputs = outputs.fusion_output  # the base model's: unimodal states and ITC embeddings
    has_itc = outputs.image_embeds is not None
    text_states, text_mask, image_states, image_mask = _unimodal_states(outputs)
    batch_size, device = text_states.shape[0], text_states.device
    image_ids = _image_ids(inputs, batch_size, device)
    distributed = args.gather and get_world_size() > 1
    if distributed:
        text_length = int(all_gather_padded(torch.tensor([[text_states.shape[1]]], device=device), 0).max())
        text_states = nn.functional.pad(text_states, (0, 0, 0, text_length - text_states.shape[1]))
        text_mask = nn.functional.pad(text_mask, (0, text_length - text_mask.shape[1]))
        all_text_states = all_gather_features(text_states, args.gather_with_grad)
        all_text_mask = all_gather_features(text_mask, gather_with_grad=False)
        all_image_states = all_gather_features(image_states, args.gather_with_grad)
        all_image_mask = all_gather_features(image_mask, gather_with_grad=False)
        all_image_ids = all_gather_features(image_ids, gather_with_grad=False)
        if has_itc:
            all_image_embeds = all_gather_features(outputs.image_embeds.detach(), gather_with_grad=False)
            all_text_embeds = all_gather_features(outputs.text_embeds.detach(), gather_with_grad=False)
    else:
        all_text_states, all_text_mask, all_image_states, all_image_mask = text_states, text_mask, image_states, image_mask
        all_image_ids = image_ids
        if has_itc:
            all_image_embeds, all_text_embeds = outputs.image_embeds.detach(), outputs.text_embeds.detach()
    with torch.no_grad():
        if has_itc:
            scale = outputs.logit_scale.detach()
            image_to_text = scale * outputs.image_embeds.detach() @ all_text_embeds.t()
            text_to_image = scale * outputs.text_embeds.detach() @ all_image_embeds.t()
        else:  # equal scores: a uniform draw among the other images' captions
            image_to_text = text_to_image = torch.zeros(batch_size, all_image_ids.shape[0], device=device)
        negative_texts, has_text = sample_hard_negatives(image_to_text, image_ids, all_image_ids)
        negative_images, has_image = sample_hard_negatives(text_to_image, image_ids, all_image_ids)
    pair_text = [text_states, all_text_states[negative_texts[has_text]], text_states[has_image]]
    pair_text_mask = [text_mask, all_text_mask[negative_texts[has_text]], text_mask[has_image]]
    pair_image = [image_states, image_states[has_text], all_image_states[negative_images[has_image]]]
    pair_image_mask = [image_mask, image_mask[has_text], all_image_mask[negative_images[has_image]]]
    base_model = model.base_model
    fused = base_model.fuse(
        torch.cat(pair_text), torch.cat(pair_text_mask), torch.cat(pair_image), torch.cat(pair_image_mask)
    )
    logits = model.itm_head(fused.pooler_output)
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=device)
    labels[:batch_size] = 1
    return nn.functional.cross_entropy(logits.float(), labels)


def fusion_itc_objective(
    model: nn.Module, outputs: ModelOutput, inputs: dict[str, Any], args: VLPObjectiveArguments
) -> torch.Tensor:
    """ITC over the global batch; with momentum distillation, ALBEF's: the candidates are the teacher's features of
    the global batch and its queue, the targets the teacher's similarities mixed with the ground truth (every
    candidate of the same `image_id` is a positive)."""
    outputs = outputs.fusion_output  # the base model's: ITC embeddings and temperature
    distiller = args.distiller
    if distiller is None:
        return itc_objective(model, outputs, inputs, args)
    teacher = inputs["teacher_outputs"].fusion_output
    batch_size, device = outputs.image_embeds.shape[0], outputs.image_embeds.device
    image_ids = _image_ids(inputs, batch_size, device)
    gather = args.gather and get_world_size() > 1
    gathered = (lambda x: all_gather_features(x, gather_with_grad=False)) if gather else (lambda x: x)
    with torch.no_grad():
        all_images = torch.cat([gathered(teacher.image_embeds), distiller.image_queue.to(device)])
        all_texts = torch.cat([gathered(teacher.text_embeds), distiller.text_queue.to(device)])
        all_ids = torch.cat([gathered(image_ids), distiller.id_queue.to(device)])
        positives = (image_ids[:, None] == all_ids[None, :]).float()
        hard_targets = positives / positives.sum(dim=1, keepdim=True)
        scale = outputs.logit_scale.detach()
        alpha = distiller.alpha_at(args.distill_warmup_steps)
        i2t_targets = alpha * torch.softmax(scale * teacher.image_embeds @ all_texts.t(), dim=1) + (1 - alpha) * hard_targets
        t2i_targets = alpha * torch.softmax(scale * teacher.text_embeds @ all_images.t(), dim=1) + (1 - alpha) * hard_targets
    loss_i2t = soft_cross_entropy(outputs.logit_scale * outputs.image_embeds @ all_texts.t(), i2t_targets)
    loss_t2i = soft_cross_entropy(outputs.logit_scale * outputs.text_embeds @ all_images.t(), t2i_targets)
    if model.training:
        distiller.enqueue(teacher.image_embeds, teacher.text_embeds, image_ids)
    return (loss_i2t + loss_t2i) / 2


def fusion_mlm_objective(
    model: nn.Module, outputs: ModelOutput, inputs: dict[str, Any], args: VLPObjectiveArguments
) -> torch.Tensor:
    """MLM on the fused text; with momentum distillation mixed with the teacher's predicted distribution (ALBEF)."""
    loss = mlm_objective(model, outputs, inputs, args)
    distiller = args.distiller
    if distiller is None:
        return loss
    labels = inputs["mlm_labels"]
    masked = labels != -100
    if "itm_labels" in inputs:
        masked = masked & (inputs["itm_labels"] == 1)[:, None]
    if not masked.any():
        return loss
    teacher_probs = torch.softmax(inputs["teacher_outputs"].mlm_logits[masked].float(), dim=-1)
    distill = soft_cross_entropy(outputs.mlm_logits[masked].float(), teacher_probs)
    alpha = distiller.alpha_at(args.distill_warmup_steps)
    return (1 - alpha) * loss + alpha * distill


mlm_objective = model_loss("mlm", "`mlm_labels` (VLPPretrainingCollator with mlm_probability > 0)")
mim_objective = model_loss("mim", "`mim_mask` (VLPPretrainingCollator with mim_ratio > 0)")
matching_objective = model_loss("itm", "`input_ids` (negatives are drawn here)")  # single-stream ITM
lm_objective = model_loss("lm", "`labels` or `input_ids`")


def prepare_lm_labels(model: nn.Module, inputs: dict[str, Any], args: VLPObjectiveArguments) -> dict[str, Any]:
    """Captioning: the labels are the caption tokens themselves (the model shifts them), padding set to -100. A batch
    that brings its own `labels` keeps them."""
    if "labels" in inputs:
        return inputs
    if "input_ids" not in inputs:
        raise ValueError("Objective 'lm' needs `input_ids` (the captions) in the batch.")
    labels = inputs["input_ids"]
    if isinstance(inputs.get("attention_mask"), torch.Tensor):
        labels = labels.masked_fill(inputs["attention_mask"] == 0, -100)
    return {**inputs, "labels": labels}


def captioning_itc_objective(
    model: nn.Module, outputs: ModelOutput, inputs: dict[str, Any], args: VLPObjectiveArguments
) -> torch.Tensor:
    """CoCa's contrastive loss over the global batch; only for captioning models with a contrastive head."""
    outputs = outputs.captioning_output  # the base model's: contrastive embeddings and temperature
    if getattr(model.config, "projection_dim", None) is None or outputs.get("image_embeds") is None:
        raise ValueError(
            f"Objective 'itc' needs a contrastive head, but {type(model).__name__} has `projection_dim=None`; "
            "train it with 'lm' only or use a config with `projection_dim` (e.g. the coca-small preset)."
        )
    return itc_objective(model, outputs, inputs, args)


# Every objective by name, with what it trains (model cards quote these).
OBJECTIVE_DESCRIPTIONS = {
    "itc": "image-text contrastive learning (matched pairs against every other pair of the global batch)",
    "itm": "image-text matching (a binary classifier on the fused pair, with hard negatives)",
    "mlm": "masked language modelling conditioned on the image",
    "mim": "masked image modelling (masked patches or regions reconstructed)",
    "lm": "captioning (language modelling conditioned on the image)",
}
# Each family's implementation of its objectives, by `config.model_type`. The families register theirs
# (`modeling_vlp.families`, imported with the package); `register_objectives` adds a new one.
OBJECTIVES: dict[str, dict[str, Objective]] = {}


def register_objectives(model_type: str, objectives: dict[str, Objective]) -> None:
    """Make `objectives` (name -> `Objective`) the objectives `VLPTrainer` trains models of `model_type` with."""
    unknown = sorted(set(objectives) - set(OBJECTIVE_DESCRIPTIONS))
    if unknown:
        raise ValueError(f"Objectives {unknown} of {model_type!r} have no entry in OBJECTIVE_DESCRIPTIONS.")
    OBJECTIVES[model_type] = dict(objectives)


def resolve_objectives(model: nn.Module, objective_args: VLPObjectiveArguments) -> dict[str, Objective]:
    """The selected objectives as implemented for `model`'s family (its `config.model_type`)."""
    model_type = getattr(model.config, "model_type", None)
    table = OBJECTIVES.get(model_type)
    if table is None:
        raise ValueError(
            f"{type(model).__name__} (model_type {model_type!r}) has no pretraining objectives; "
            f"families with objectives: {sorted(OBJECTIVES)}."
        )
    missing = [name for name in objective_args.objectives if name not in table]
    if missing:
        raise ValueError(
            f"Objectives {missing} are not available for {type(model).__name__} ({model_type}); "
            f"it trains with: {sorted(table)}."
        )
    return {name: table[name] for name in objective_args.objectives}


def forward_inputs(model: nn.Module, inputs: dict[str, Any]) -> dict[str, Any]:
    """The entries of `inputs` that `model.forward` names; the rest (`image_id`, ...) are for the objectives."""
    parameters = inspect.signature(model.forward).parameters
    return {key: value for key, value in inputs.items() if key in parameters}


def compute_objective_losses(
    model: nn.Module,
    inputs: dict[str, Any],
    objective_args: VLPObjectiveArguments,
    unwrapped_model: nn.Module | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], ModelOutput]:
    """Run `model` (possibly DDP-wrapped) on a batch and compute every objective.

    Returns the weighted total loss, each objective's unweighted loss by name, and the model outputs. Call it the
    same way on every rank: the contrastive objective gathers features across ranks.
    """
    unwrapped_model = model if unwrapped_model is None else unwrapped_model
    objectives = resolve_objectives(unwrapped_model, objective_args)
    for objective in objectives.values():
        if objective.prepare is not None:
            inputs = objective.prepare(unwrapped_model, inputs, objective_args)
    model_inputs = forward_inputs(unwrapped_model, inputs)
    if objective_args.distiller is not None:
        with torch.no_grad():
            inputs = {**inputs, "teacher_outputs": objective_args.distiller.teacher(**model_inputs, return_dict=True)}
    outputs = model(**model_inputs, return_dict=True)
    losses = {name: objective.loss(unwrapped_model, outputs, inputs, objective_args) for name, objective in objectives.items()}
    total = sum(objective_args.objectives[name] * loss for name, loss in losses.items())
    return total, losses, outputs


__all__ = [
    "OBJECTIVES",
    "OBJECTIVE_DESCRIPTIONS",
    "Objective",
    "VLPObjectiveArguments",
    "captioning_itc_objective",
    "compute_objective_losses",
    "forward_inputs",
    "fusion_itc_objective",
    "fusion_itm_objective",
    "fusion_mlm_objective",
    "itc_objective",
    "lm_objective",
    "matching_objective",
    "mim_objective",
    "mlm_objective",
    "model_loss",
    "prepare_itm_pairs",
    "prepare_lm_labels",
    "register_objectives",
    "resolve_objectives",
]
