"""`VLPTrainer`: a `transformers.Trainer` that computes the pretraining objectives over the global batch.

The model's own `forward` only sees the local batch. What needs every rank's features lives here: the contrastive
(ITC) loss with negatives gathered across ranks (`objectives.py` / `distributed.py`), the weighted sum of the
objectives, and logging each objective's loss separately (`loss_itc`, `eval_loss_itc`, ...).

An objective is a function `(model, outputs, inputs, objective_args) -> scalar loss`, where `model` is the unwrapped
model (read its config, call its building steps), `outputs` what its forward returned on the batch and `inputs` the
whole collated batch (including columns the model does not take, such as `image_id`), with an optional `prepare`
step `(model, inputs, objective_args) -> inputs` that runs before the forward (e.g. pairing images with other
captions for ITM). `OBJECTIVES` maps each family's `config.model_type` to its objectives by name; the families
fill it (`modeling_vlp.families`).
"""

import inspect
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
from transformers.utils import ModelOutput

from .accumulation import (
    accumulate_contrastive_gradients,
    split_batch,
    warn_gradient_accumulation_with_itc,
)
from .distributed import (
    all_gather_features,
    all_gather_padded,
    get_rank,
    get_world_size,
)
from .momentum import MOMENTUM_STATE_NAME, MomentumDistiller, soft_cross_entropy
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
        extra contrastive negatives. `momentum` is the EMA decay per optimizer step.
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
        alpha = distiller.alpha
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
    return (1 - distiller.alpha) * loss + distiller.alpha * distill


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


def _forward_inputs(model: nn.Module, inputs: dict[str, Any]) -> dict[str, Any]:
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
    forward_inputs = _forward_inputs(unwrapped_model, inputs)
    if objective_args.distiller is not None:
        with torch.no_grad():
            inputs = {**inputs, "teacher_outputs": objective_args.distiller.teacher(**forward_inputs, return_dict=True)}
    outputs = model(**forward_inputs, return_dict=True)
    losses = {name: objective.loss(unwrapped_model, outputs, inputs, objective_args) for name, objective in objectives.items()}
    total = sum(objective_args.objectives[name] * loss for name, loss in losses.items())
    return total, losses, outputs


class _LossTracker:
    """Sums of detached per-objective losses between two reports, kept on device to avoid a sync per step."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0.0

    def add(self, losses: dict[str, torch.Tensor], weight: float = 1.0) -> None:
        for name, loss in losses.items():
            value = loss.detach().float() * weight
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.count += weight

    def pop_means(self, accelerator) -> dict[str, float]:
        """Means over the interval and over all ranks; every rank must call it at the same point."""
        if not self.sums:
            return {}
        names = sorted(self.sums)
        totals = torch.stack([self.sums[name] for name in names] + [self.sums[names[0]].new_tensor(self.count)])
        totals = accelerator.reduce(totals, reduction="sum")
        self.sums, self.count = {}, 0.0
        return {name: (totals[i] / totals[-1]).item() for i, name in enumerate(names)}


# `(model, eval_dataset) -> {name: value}`: metrics of the whole evaluation set (retrieval, VQA accuracy, BLEU ...).
ModelMetrics = Callable[[nn.Module, Any], dict[str, float]]


class _Throughput(TrainerCallback):
    """Times the training steps: the time from one step's end to the next step's beginning is spent waiting for data
    (the Trainer fetches a step's batches there); logging, evaluation and checkpointing restart the clock and do not
    count. On an accelerator the host clock reads queued work, so the figures are those the host sees."""

    def __init__(self):
        self.busy = self.wait = 0.0
        self.steps = 0
        self.last_end = self.begin = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.last_end = time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        self.begin = time.perf_counter()
        if self.last_end is not None:
            self.wait += self.begin - self.last_end

    def on_step_end(self, args, state, control, **kwargs):
        self.last_end = time.perf_counter()
        if self.begin is not None:
            self.busy += self.last_end - self.begin
            self.steps += 1

    def _restart(self, args, state, control, **kwargs):
        self.last_end = time.perf_counter()

    on_log = on_evaluate = on_save = _restart

    def pop(self, samples_per_step: int) -> dict[str, float]:
        """`samples_per_second` and `data_wait_share` since the last call ({} before the first timed step)."""
        total = self.busy + self.wait
        if not self.steps or total <= 0:
            return {}
        logs = {"samples_per_second": self.steps * samples_per_step / total, "data_wait_share": self.wait / total}
        self.busy = self.wait = 0.0
        self.steps = 0
        return logs


class VLPReportingTrainer(Trainer):
    """A `Trainer` that reports more: each evaluation also computes `compute_model_metrics(model, eval_dataset)` on
    the whole evaluation dataset, and each training log carries the throughput since the last one.

    `compute_model_metrics` receives the unwrapped model and the evaluation dataset as given (raw rows); its results
    are logged and returned with the evaluation's prefix (`eval_rsum`, `eval_vqa_accuracy`, `eval_cider`, ...) next
    to `eval_loss`, so `metric_for_best_model` / `load_best_model_at_end` can use them. Unlike `compute_metrics`, which
    sees the gathered predictions of one forward per row, it can rank every image against every caption, re-rank with
    a head or generate. Every rank computes it on the same data (same result on each). `last_model_metrics` keeps the
    latest results without prefix.

    Training logs add `samples_per_second` (samples of the global batch per second of step time since the last log)
    and `data_wait_share` (the share of that time spent waiting for the next batch); the Trainer's own
    `train_samples_per_second` comes at the end.
    """

    def __init__(self, *args, compute_model_metrics: ModelMetrics | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.compute_model_metrics = compute_model_metrics
        self.last_model_metrics: dict[str, float] = {}
        self._throughput = _Throughput()
        self.add_callback(self._throughput)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            samples_per_step = self._train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
            logs.update(self._throughput.pop(samples_per_step))
        super().log(logs, start_time)

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        dataset = getattr(dataloader, "dataset", None)
        if self.compute_model_metrics is not None and dataset is not None:
            model = self.accelerator.unwrap_model(self.model)
            training = model.training
            metrics = self.compute_model_metrics(model, dataset)
            model.train(training)
            self.last_model_metrics = {name: float(value) for name, value in metrics.items()}
            prefixed = {f"{metric_key_prefix}_{name}": value for name, value in self.last_model_metrics.items()}
            output.metrics.update(prefixed)
        return output


class VLPTrainer(VLPReportingTrainer):
    """A `Trainer` whose loss is the weighted sum of named pretraining objectives computed over the global batch.

    Logs `loss_<name>` next to `loss` (each the mean over the logging interval and the ranks) and
    `eval_loss_<name>` next to `eval_loss`, with the model metrics and throughput of `VLPReportingTrainer`. It turns
    `remove_unused_columns` off (saying so): `VLPCollator` reads the raw image and caption columns, and the
    objectives read `image_id`. In `predict` / `compute_metrics` the predictions are `(image_embeds, text_embeds)` and
    the label ids the batch's `image_id` when the collator passes one.

    Args:
        objective_args (`VLPObjectiveArguments`, *optional*): the objectives, their weights and the gather options;
            defaults to ITC alone with global negatives.
        compute_model_metrics (`(model, eval_dataset) -> dict`, *optional*): metrics of each evaluation, e.g.
            `lambda model, dataset: FAMILIES["dual"].evaluate(model, processor, dataset, 64)` (retrieval R@K, rsum).
        Every other argument is `transformers.Trainer`'s.
    """

    def __init__(self, *args, objective_args: VLPObjectiveArguments | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if self.args.remove_unused_columns:
            logger.info(
                "VLPTrainer sets remove_unused_columns=False: the collator reads the raw image and caption columns "
                "and the objectives read `image_id`, which the model's forward does not take."
            )
            self.args.remove_unused_columns = False
        self.objective_args = objective_args if objective_args is not None else VLPObjectiveArguments()
        # Our losses are per-batch means and never take `num_items_in_batch`: let the Trainer scale them for
        # gradient accumulation.
        self.model_accepts_loss_kwargs = False
        self.loss_is_scaled_for_ga = False
        self._train_losses = _LossTracker()
        self._eval_losses = _LossTracker()
        # --accum-freq K: the dataloader yields K x B rows, split into K micro-batches in `training_step`.
        self._train_batch_size *= self.objective_args.accum_freq
        warn_gradient_accumulation_with_itc(self.args.gradient_accumulation_steps, self.objective_args.objectives)
        if self.objective_args.momentum_distill:
            unwrapped = self.accelerator.unwrap_model(self.model)
            self.objective_args.distiller = MomentumDistiller(
                unwrapped, momentum=self.objective_args.momentum, queue_size=self.objective_args.queue_size,
                alpha=self.objective_args.distill_alpha,
            )  # fmt: skip
            self.add_callback(_MomentumUpdate(self.objective_args.distiller))

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        # A checkpoint saves its model first and trainer_state.json last, which marks it complete: the momentum
        # teacher and its queues are written with the model, in checkpoints only (the final model folder, which is
        # what gets pushed, does not carry the teacher).
        super().save_model(output_dir, _internal_call=_internal_call)
        folder = output_dir or self.args.output_dir
        is_checkpoint = os.path.basename(os.path.normpath(folder)).startswith(PREFIX_CHECKPOINT_DIR)
        if self.objective_args.distiller is not None and self.args.should_save and is_checkpoint:
            self.objective_args.distiller.save(os.path.join(folder, MOMENTUM_STATE_NAME))

    def load_momentum_state(self, checkpoint: str) -> None:
        """Restore the momentum teacher and its queues saved in `checkpoint` (`train` does it when resuming)."""
        path = os.path.join(checkpoint, MOMENTUM_STATE_NAME)
        if not os.path.isfile(path):
            raise ValueError(f"{checkpoint} has no {MOMENTUM_STATE_NAME}: it was not trained with momentum distillation.")
        self.objective_args.distiller.load(path)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        if self.objective_args.distiller is not None and resume_from_checkpoint:
            checkpoint = resume_from_checkpoint
            if checkpoint is True:
                checkpoint = get_last_checkpoint(self.args.output_dir)
            if checkpoint:  # else the Trainer reports that there is no checkpoint to resume from
                self.load_momentum_state(checkpoint)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        # As open_clip: no weight decay on scalars and vectors (temperature, sigmoid bias, norms, biases, class
        # token). Decaying `logit_scale` would pull the temperature towards 1 for no reason.
        decay = set(super().get_decay_parameter_names(model))
        return [name for name, parameter in model.named_parameters() if name in decay and parameter.ndim >= 2]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        unwrapped_model = self.accelerator.unwrap_model(model)
        total, losses, outputs = compute_objective_losses(model, inputs, self.objective_args, unwrapped_model)
        if model.training:
            self._train_losses.add(losses)
        else:
            self._eval_losses.add(losses, weight=_batch_size(inputs))
        outputs["loss"] = total
        return (total, outputs) if return_outputs else total

    def training_step(self, model, inputs, num_items_in_batch=None):
        accum_freq = self.objective_args.accum_freq
        if accum_freq == 1:
            return super().training_step(model, inputs, num_items_in_batch)
        # --accum-freq: one contrastive loss over the K micro-batches of this batch (accumulation.py).
        if self.args.n_gpu > 1:
            raise ValueError(
                f"`--accum-freq {accum_freq}` with DataParallel ({self.args.n_gpu} GPUs in one process): launch one "
                "process per GPU (torchrun / accelerate launch) instead."
            )
        model.train()
        if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
            self.optimizer.train()
        inputs = self._prepare_inputs(inputs)
        unwrapped_model, args = self.accelerator.unwrap_model(model), self.objective_args
        objectives = resolve_objectives(unwrapped_model, args)
        for objective in objectives.values():  # deterministic for the objectives accumulated (lm labels)
            if objective.prepare is not None:
                inputs = objective.prepare(unwrapped_model, inputs, args)
        others = {name: objective for name, objective in objectives.items() if name != "itc"}
        recorded = {name: [] for name in objectives}

        def forward(batch):
            with self.compute_loss_context_manager():
                return model(**_forward_inputs(unwrapped_model, batch), return_dict=True)

        def loss(outputs, batch):
            with self.compute_loss_context_manager():
                value = objectives["itc"].loss(unwrapped_model, outputs, batch, args)
            recorded["itc"] = [value.detach()]
            return args.objectives["itc"] * value

        def micro_batch_loss(outputs, batch):
            with self.compute_loss_context_manager():
                losses = {name: other.loss(unwrapped_model, outputs, batch, args) for name, other in others.items()}
            for name, value in losses.items():
                recorded[name].append(value.detach())
            return sum(args.objectives[name] * value for name, value in losses.items())

        scale = 1 / getattr(self, "current_gradient_accumulation_steps", 1)
        accumulate_contrastive_gradients(
            split_batch(inputs, accum_freq), forward, loss, lambda value: self.accelerator.backward(scale * value),
            no_sync=lambda: self.accelerator.no_sync(model), micro_batch_loss=micro_batch_loss if others else None,
        )  # fmt: skip
        means = {name: torch.stack(values).mean() for name, values in recorded.items()}
        self._train_losses.add(means)
        return scale * sum(args.objectives[name] * value for name, value in means.items())

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # The Trainer's training logs carry "loss" (the mean since the last log): report each objective beside it.
        if "loss" in logs:
            means = self._train_losses.pop_means(self.accelerator)
            logs.update({f"loss_{name}": value for name, value in means.items()})
        super().log(logs, start_time)

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        self._eval_losses = _LossTracker()
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        for name, value in self._eval_losses.pop_means(self.accelerator).items():
            output.metrics[f"{metric_key_prefix}_loss_{name}"] = value
        return output

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
        loss = loss.detach()
        if prediction_loss_only:
            return loss, None, None
        # The ITC embeddings are in the output itself (dual encoder) or in the base model's output a head's holds.
        found = [outputs, *(value for value in outputs.values() if isinstance(value, ModelOutput))]
        outputs = next((value for value in found if value.get("image_embeds") is not None), outputs)
        embeds = tuple(outputs[key].detach() for key in ("image_embeds", "text_embeds") if outputs.get(key) is not None)
        return loss, embeds, inputs.get("image_id")


class _MomentumUpdate(TrainerCallback):
    """Moves the EMA teacher one step after every optimizer step."""

    def __init__(self, distiller: MomentumDistiller):
        self.distiller = distiller

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.distiller.update(model)


def _batch_size(inputs: dict[str, Any]) -> int:
    for key in ("pixel_values", "input_ids"):
        if isinstance(inputs.get(key), torch.Tensor):
            return inputs[key].shape[0]
    return 1


__all__ = [
    "OBJECTIVES",
    "OBJECTIVE_DESCRIPTIONS",
    "Objective",
    "VLPObjectiveArguments",
    "VLPReportingTrainer",
    "VLPTrainer",
    "compute_objective_losses",
    "itc_objective",
    "prepare_itm_pairs",
    "prepare_lm_labels",
    "register_objectives",
    "resolve_objectives",
]
