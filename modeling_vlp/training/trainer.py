"""`VLPTrainer`: a `transformers.Trainer` that computes the pretraining objectives over the global batch.

The model's own `forward` only sees the local batch. What needs every rank's features lives in this package: the
contrastive (ITC) loss with negatives gathered across ranks (`objectives.py` / `distributed.py`), each family's
objective functions and their weighted sum (`family_objectives.py`), and here the training loop's part: one
forward per batch (or `--accum-freq` micro-batches, `accumulation.py`), logging each objective's loss separately
(`loss_itc`, `eval_loss_itc`, ...), the momentum teacher (`momentum.py`), the family's metrics during evaluation
(`VLPReportingTrainer`) and throughput.
"""

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainerState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
from transformers.utils import ModelOutput

from ..data.streaming import ImageTextStream
from .accumulation import (
    accumulate_contrastive_gradients,
    split_batch,
    warn_gradient_accumulation_with_itc,
)
from .collators import SKIPPED_ROWS_KEY
from .data_loading import SkippedRows, load_loader_state, save_loader_state, stream_loader
from .distributed import drop_tied_copies, enable_fsdp_on_cpu, own_class, replicate_scalar_parameters
from .family_objectives import VLPObjectiveArguments, compute_objective_losses, forward_inputs, resolve_objectives
from .momentum import MOMENTUM_STATE_NAME, MomentumDistiller

logger = logging.getLogger(__name__)


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

    def __init__(
        self, *args, compute_model_metrics: ModelMetrics | None = None, max_bad_fraction: float = 0.05, **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.compute_model_metrics = compute_model_metrics
        self.last_model_metrics: dict[str, float] = {}
        self._throughput = _Throughput()
        self.add_callback(self._throughput)
        # An `ImageTextStream` train_dataset: a StatefulDataLoader whose state goes into every checkpoint, so resuming
        # reads on from the next unseen row (the Trainer's own resume would skip batches from the start of the epoch).
        self.skipped_rows = SkippedRows(max_bad_fraction)
        self._stream_loader = None
        self._data_state: dict | None = None
        if isinstance(self.train_dataset, ImageTextStream):
            rows = self.train_dataset.materialized_rows()
            if rows is not None:  # a small corpus is judged after one pass, not after 1000 rows
                self.skipped_rows.rows_judged = min(self.skipped_rows.rows_judged, max(1, rows // self.args.world_size))
            if self.args.max_steps <= 0:
                raise ValueError("max_steps: a streamed train_dataset has no length; give max_steps > 0")
            self.args.ignore_data_skip = True

    def get_train_dataloader(self):
        if not isinstance(self.train_dataset, ImageTextStream):
            return super().get_train_dataloader()
        loader = stream_loader(self.train_dataset, self.args, self._train_batch_size, self.data_collator)
        if self._data_state is not None:
            loader.load_state_dict(self._data_state["loader"])
            self.skipped_rows.load_state_dict(self._data_state["rows"])
        self._stream_loader = loader
        return loader

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        checkpoint = get_last_checkpoint(self.args.output_dir) if resume_from_checkpoint is True else resume_from_checkpoint
        if checkpoint and isinstance(self.train_dataset, ImageTextStream):
            self._data_state = load_loader_state(checkpoint, self.args.process_index)
            if self._data_state is None:
                logger.warning("%s has no saved data state: the stream starts again from its beginning.", checkpoint)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _save_checkpoint(self, model, trial):
        # Written before the Trainer's files, so a checkpoint with trainer_state.json (written last) is complete.
        if self._stream_loader is not None:
            folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            save_loader_state(folder, self.args.process_index, self._stream_loader, self.skipped_rows)
        super()._save_checkpoint(model, trial)

    def _prepare_inputs(self, inputs):
        if isinstance(inputs, dict) and SKIPPED_ROWS_KEY in inputs:
            inputs = dict(inputs)
            skipped = inputs.pop(SKIPPED_ROWS_KEY)
            if self.model.training:
                self.skipped_rows.add(_batch_size(inputs), skipped)
        return super()._prepare_inputs(inputs)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        # Under FSDP2 the model's class is torch's generated FSDP<Name>: save the code and auto_map of its own, and
        # the gathered full state dict once per tied weight.
        model = self.accelerator.unwrap_model(self.model)
        with own_class(model):
            super()._save(output_dir, state_dict=drop_tied_copies(state_dict, model))

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if self.is_fsdp_enabled:
            _complete_adam_state(getattr(self.optimizer, "optimizer", self.optimizer))
        super()._save_optimizer_and_scheduler(output_dir)

    def create_accelerator_and_postprocess(self):
        super().create_accelerator_and_postprocess()
        # --fsdp on CPU processes: accelerate would quietly train with DDP instead (distributed.enable_fsdp_on_cpu).
        if enable_fsdp_on_cpu(self.accelerator, self.args.fsdp_plugin_args):
            self.is_fsdp_enabled = True
        if self.is_fsdp_enabled and self.accelerator.is_fsdp2 and self.model is not None:
            replicate_scalar_parameters(self.accelerator.state.fsdp_plugin, self.model)  # logit_scale: 0-d

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            samples_per_step = self._train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
            logs.update(self._throughput.pop(samples_per_step))
            if self._stream_loader is not None:  # the running count over every rank
                counts = torch.tensor([self.skipped_rows.skipped, self.skipped_rows.usable], device=self.args.device)
                counts = self.accelerator.reduce(counts, reduction="sum")
                logs["skipped_rows"] = int(counts[0])
                logs["rows_read"] = int(counts[0] + counts[1])
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

    @property
    def state(self) -> TrainerState:
        return self._state

    @state.setter
    def state(self, value: TrainerState) -> None:
        # Every state the Trainer sets (at the start, or read back on resume) writes trainer_state.json atomically.
        if type(value) is TrainerState:
            value.__class__ = AtomicTrainerState
        self._state = value

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
                return model(**forward_inputs(unwrapped_model, batch), return_dict=True)

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


class AtomicTrainerState(TrainerState):
    """A `TrainerState` whose `save_to_json` writes a temporary file and renames it over the target: a checkpoint's
    trainer_state.json, written last, marks it complete, so it is never left empty or half-written."""

    def save_to_json(self, json_path: str) -> None:
        temporary = f"{json_path}.tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, json_path)


class _MomentumUpdate(TrainerCallback):
    """Moves the EMA teacher one step after every optimizer step."""

    def __init__(self, distiller: MomentumDistiller):
        self.distiller = distiller

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.distiller.update(model)


def _complete_adam_state(optimizer: torch.optim.Optimizer) -> None:
    """Give every trainable parameter that has had no gradient yet (a head no objective trains: the MIM head without
    mim, ...) the zero Adam state that Adam(W) creates at its first gradient. torch's distributed checkpoint, which
    FSDP checkpoints use, refuses to load an optimizer state that lacks a trainable parameter; the zeros change
    nothing (Adam skips parameters without gradient and starts a parameter's state as these zeros)."""
    if not isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
        return
    for group in optimizer.param_groups:
        on_device = group.get("fused") or group.get("capturable")
        for parameter in group["params"]:
            if not parameter.requires_grad or optimizer.state.get(parameter):
                continue
            state = {
                "step": torch.zeros((), device=parameter.device) if on_device else torch.tensor(0.0),
                "exp_avg": torch.zeros_like(parameter, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(parameter, memory_format=torch.preserve_format),
            }
            if group.get("amsgrad"):
                state["max_exp_avg_sq"] = torch.zeros_like(parameter, memory_format=torch.preserve_format)
            optimizer.state[parameter] = state


def _batch_size(inputs: dict[str, Any]) -> int:
    for key in ("pixel_values", "input_ids"):
        if isinstance(inputs.get(key), torch.Tensor):
            return inputs[key].shape[0]
    return 1


__all__ = [
    "VLPReportingTrainer",
    "VLPTrainer",
]
