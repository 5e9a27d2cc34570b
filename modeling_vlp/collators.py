"""Data collators: raw dataset rows (PIL images + captions) -> model-ready batches, processed on the fly.

Processing in the collator keeps datasets as they are on disk (no `map` pass writing pixel arrays), lets a training
run draw a different caption of each image every epoch, and works unchanged in `DataLoader` workers.
"""

from collections.abc import Sequence
from typing import Any

import torch


class VLPCollator:
    """Collate dataset rows into a paired image-text batch with a processor.

    Each row is a mapping with an image (PIL image, path, bytes, array: anything the image processor accepts) under
    `image_column` and a caption under `text_column`. When `sample_captions=True` and a row has a non-empty list of
    captions under `captions_column`, one of them is drawn at random instead (a seeded generator: the same sequence
    of batches gives the same captions). Columns in `passthrough_columns` that a row has (`image_id` by default) are
    returned as tensors for the objectives (e.g. ITM negatives must not be another caption of the same image).

    Use with `Trainer(..., args=TrainingArguments(remove_unused_columns=False))` so the rows reach the collator whole.

    Args:
        processor: A `VLPProcessor` (any processor taking `images=`, `text=`, `paired=True` and tokenizer kwargs).
        image_column (`str`, defaults to `"image"`), text_column (`str`, defaults to `"caption"`): Row keys.
        captions_column (`str`, defaults to `"captions"`): Row key of the list of alternative captions.
        sample_captions (`bool`, defaults to `False`): Draw one caption of `captions_column` per row (training);
            `False` always uses `text_column` (evaluation).
        max_length (`int`, *optional*): Truncate captions to this many tokens (the text tower's position limit);
            `None` leaves it to the tokenizer's `model_max_length`.
        padding (`bool` or `str`, defaults to `True`): Tokenizer padding (`True` pads to the longest in the batch).
        passthrough_columns (`Sequence[str]`, defaults to `("image_id",)`): Integer columns returned as tensors.
        seed (`int`, defaults to 0): Seed of the caption sampler. In `DataLoader` workers each worker draws from its
            own stream, seeded by `seed` and the worker id.
    """

    def __init__(
        self,
        processor,
        image_column: str = "image",
        text_column: str = "caption",
        captions_column: str = "captions",
        sample_captions: bool = False,
        max_length: int | None = None,
        padding: bool | str = True,
        passthrough_columns: Sequence[str] = ("image_id",),
        seed: int = 0,
    ):
        self.processor = processor
        self.image_column = image_column
        self.text_column = text_column
        self.captions_column = captions_column
        self.sample_captions = sample_captions
        self.max_length = max_length
        self.padding = padding
        self.passthrough_columns = tuple(passthrough_columns)
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed)
        self._worker_id = None

    def _caption(self, row: dict[str, Any], index: int) -> str:
        if self.sample_captions:
            captions = row.get(self.captions_column)
            if captions:
                return captions[int(torch.randint(len(captions), (), generator=self._generator))]
        if self.text_column not in row:
            raise KeyError(
                f"Row {index} of the batch has no {self.text_column!r} column (text_column); it has {sorted(row)}."
            )
        return row[self.text_column]

    def _reseed_in_worker(self) -> None:
        # A DataLoader worker gets a copy of this collator; without reseeding every worker would repeat one stream.
        worker = torch.utils.data.get_worker_info()
        if worker is not None and worker.id != self._worker_id:
            self._worker_id = worker.id
            self._generator = torch.Generator().manual_seed(self.seed * 1000 + worker.id + 1)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("VLPCollator got an empty list of rows.")
        self._reseed_in_worker()
        missing = [index for index, row in enumerate(rows) if self.image_column not in row]
        if missing:
            raise KeyError(
                f"Rows {missing[:5]} of the batch have no {self.image_column!r} column (image_column); "
                f"row {missing[0]} has {sorted(rows[missing[0]])}. Pass remove_unused_columns=False to the Trainer."
            )
        images = [row[self.image_column] for row in rows]
        texts = [self._caption(row, index) for index, row in enumerate(rows)]
        tokenizer_kwargs = dict(padding=self.padding, truncation=True)
        if self.max_length is not None:
            tokenizer_kwargs["max_length"] = self.max_length
        batch = dict(self.processor(images=images, text=texts, paired=True, return_tensors="pt", **tokenizer_kwargs))
        for column in self.passthrough_columns:
            if all(column in row and row[column] is not None for row in rows):
                batch[column] = torch.tensor([row[column] for row in rows], dtype=torch.long)
        return batch


__all__ = ["VLPCollator"]
