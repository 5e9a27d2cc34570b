"""The trainer's side of `ImageTextStream`: a `StatefulDataLoader` whose state is saved with every checkpoint, and the
count of the rows the stream skipped.

- `stream_loader` builds torchdata's `StatefulDataLoader` over the stream (each process reads its own share, so the
  loader is not split again by accelerate), with the Trainer's worker, pinning and prefetch options.
- `save_loader_state` / `load_loader_state` write and read `data_state_rank{R}.pt` in a checkpoint: every worker's
  place in the stream and the skipped-row counts, so a resumed run reads on from the next unseen sample instead of
  skipping batches from the start.
- `SkippedRows` counts usable and skipped rows, logs the first few skipped rows (where, why), adds the running count
  to the training logs and stops the run when more than `max_bad_fraction` of the rows read are unusable.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import Counter
from typing import Any

import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from ..data.streaming import ImageTextStream

logger = logging.getLogger(__name__)
# torchdata 0.11 calls a torch API that torch 2.14 deprecated, once per iterator.
warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)

DATA_STATE_NAME = "data_state_rank{rank}.pt"
# Rows read before the unusable share is judged (a few bad rows early on are not a broken corpus), unless the stream
# is shorter.
MIN_ROWS_JUDGED = 1000


class UnusableDataError(ValueError):
    """Too much of the training data cannot be used; the message says how much and why."""


def stream_loader(stream: ImageTextStream, args, batch_size: int, collate_fn) -> StatefulDataLoader:
    """A `StatefulDataLoader` over `stream` for this process (`args`: the `TrainingArguments`)."""
    stream.distribute(args.process_index, args.world_size)
    workers = args.dataloader_num_workers
    options: dict[str, Any] = dict(
        batch_size=batch_size, collate_fn=collate_fn, num_workers=workers, drop_last=True,
        pin_memory=args.dataloader_pin_memory and torch.cuda.is_available(),
        # Its own generator: creating the iterator must not draw from the global RNG, which the checkpoint restores
        # for the model's random choices (dropout, ITM negatives) just before a resumed run creates it.
        generator=torch.Generator().manual_seed(args.seed),
    )  # fmt: skip
    if workers > 0:
        options.update(
            persistent_workers=args.dataloader_persistent_workers, prefetch_factor=args.dataloader_prefetch_factor,
            multiprocessing_context=args.dataloader_multiprocessing_context, in_order=True,
        )  # fmt: skip
    return StatefulDataLoader(stream, **options)


class SkippedRows:
    """Counts of the rows read and skipped by this process, the first few skipped rows logged one per line."""

    def __init__(self, max_bad_fraction: float = 0.05, log_first: int = 10, rows_judged: int = MIN_ROWS_JUDGED):
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
        self.max_bad_fraction = max_bad_fraction
        self.log_first = log_first
        self.rows_judged = rows_judged
        self.usable = 0
        self.skipped = 0
        self.reasons: Counter = Counter()
        self._logged: set[str] = set()  # rows already named in the log (a bad row comes back every pass)

    def add(self, usable: int, skipped: list) -> None:
        self.usable += usable
        for where, reason in skipped:
            self.skipped += 1
            self.reasons[reason.split(":")[0]] += 1
            if where in self._logged or len(self._logged) > self.log_first:
                continue
            self._logged.add(where)
            if len(self._logged) <= self.log_first:
                logger.warning("Skipped training row %s: %s.", where, reason)
            else:
                logger.warning("Further skipped rows are counted (skipped_rows in the logs), not listed.")
        read = self.usable + self.skipped
        if read >= self.rows_judged and self.skipped > self.max_bad_fraction * read:
            raise UnusableDataError(
                f"{self.skipped} of the {read} training rows read so far could not be used "
                f"({self.share():.1%}, over --max-bad-fraction {self.max_bad_fraction}): {self.summary()}; the data is "
                "mostly broken, fix it or raise --max-bad-fraction"
            )

    def share(self) -> float:
        read = self.usable + self.skipped
        return self.skipped / read if read else 0.0

    def summary(self) -> str:
        read = f"{self.usable + self.skipped} rows read"
        if not self.skipped:
            return f"{read}, none skipped"
        reasons = ", ".join(f"{count} {reason}" for reason, count in self.reasons.most_common(5))
        return f"{read}, {self.skipped} skipped ({reasons})"

    def state_dict(self) -> dict:
        return {"usable": self.usable, "skipped": self.skipped, "reasons": dict(self.reasons)}

    def load_state_dict(self, state: dict) -> None:
        self.usable, self.skipped = int(state["usable"]), int(state["skipped"])
        self.reasons = Counter(state.get("reasons", {}))


def save_loader_state(folder: str, rank: int, loader: StatefulDataLoader, rows: SkippedRows) -> None:
    """Write this rank's loader state into the checkpoint `folder` (atomically: a temp file renamed)."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, DATA_STATE_NAME.format(rank=rank))
    torch.save({"loader": loader.state_dict(), "rows": rows.state_dict()}, path + ".tmp")
    os.replace(path + ".tmp", path)


def load_loader_state(folder: str, rank: int) -> dict | None:
    """The state `save_loader_state` wrote for this rank, or None when the checkpoint has none."""
    path = os.path.join(folder, DATA_STATE_NAME.format(rank=rank))
    if not os.path.isfile(path):
        return None
    return torch.load(path, weights_only=True)
