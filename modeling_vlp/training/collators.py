"""Data collators: raw dataset rows (PIL images or region features + captions) -> model-ready batches, processed on
the fly.

Processing in the collator keeps datasets as they are on disk (no `map` pass writing pixel arrays), lets a training
run draw a different caption of each image every epoch (and different masks), and works unchanged in `DataLoader`
workers. `VLPCollator` makes image-text pairs (dual encoders); `VLPPretrainingCollator` adds the masks of MLM and
MIM (and region inputs) for single-stream and fusion models; `VLPQuestionAnsweringCollator` makes VQA batches.
"""

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from ..data.answers import normalize_vqa_answer
from ..data.local import read_region_column
from ..processors.image_processing_vlp import load_image
from .masking import (
    mask_tokens_for_mlm,
    patch_valid_mask,
    random_patch_mask,
    random_region_mask,
)


# The batch key of the rows an `ImageTextStream` skipped (a list of (where, reason)); not a model input.
SKIPPED_ROWS_KEY = "skipped_rows"


class VLPCollator:
    """Collate dataset rows into a paired image-text batch with a processor.

    Each row is a mapping with an image (PIL image, path, bytes, array: anything the image processor accepts) under
    `image_column` and a caption under `caption_column` (any name: `caption_column="text"`). When
    `sample_captions=True` and a row has a non-empty list of captions under `captions_column`, one of them is drawn
    at random instead (a seeded generator: the same sequence of batches gives the same captions). Columns in `passthrough_columns` that a row has (`image_id` by default) are
    returned as tensors for the objectives (e.g. ITM negatives must not be another caption of the same image).

    Use with `Trainer(..., args=TrainingArguments(remove_unused_columns=False))` so the rows reach the collator whole
    (`VLPTrainer` sets it itself).

    Args:
        processor: A `VLPProcessor` (any processor taking `images=`, `text=`, `paired=True` and tokenizer kwargs).
        image_column (`str`, defaults to `"image"`), caption_column (`str`, defaults to `"caption"`): Row keys
            of the image and its caption; `text_column` is the older name of `caption_column`.
        captions_column (`str`, defaults to `"captions"`): Row key of the list of alternative captions.
        sample_captions (`bool`, defaults to `False`): Draw one caption of `captions_column` per row (training);
            `False` always uses `caption_column` (evaluation).
        max_length (`int`, *optional*): Truncate captions to this many tokens (the text tower's position limit);
            `None` leaves it to the tokenizer's `model_max_length`.
        padding (`bool` or `str`, defaults to `True`): Tokenizer padding (`True` pads to the longest in the batch).
        passthrough_columns (`Sequence[str]`, defaults to `("image_id",)`): Integer columns returned as tensors.
        seed (`int`, defaults to 0): Seed of the caption sampler and of the crops. In `DataLoader` workers each
            worker draws from its own stream, seeded by `seed` and the worker id.
        random_crop_scale (`float`, *optional*): Train-time augmentation: replace each image by a random crop
            covering between this share of its area and all of it, with an aspect ratio between 3/4 and 4/3
            (torchvision's `RandomResizedCrop`), before the processor resizes it. `None` (the default) keeps whole
            images, as evaluation must.
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
        random_crop_scale: float | None = None,
        caption_column: str | None = None,
    ):
        if caption_column is not None and text_column not in ("caption", caption_column):
            raise ValueError(
                f"caption_column={caption_column!r} and text_column={text_column!r} name two caption columns; give "
                "caption_column alone (text_column is its older name)."
            )
        text_column = caption_column or text_column
        if random_crop_scale is not None and not 0.0 < random_crop_scale <= 1.0:
            raise ValueError(f"random_crop_scale must be in (0, 1] (None disables it), got {random_crop_scale}.")
        self.random_crop_scale = random_crop_scale
        self.processor = processor
        self.image_column = image_column
        self.text_column = self.caption_column = text_column
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
                f"Row {index} of the batch has no {self.text_column!r} column (the caption_column); it has "
                f"{sorted(row)}: pass caption_column=NAME."
            )
        return row[self.text_column]

    def _reseed_in_worker(self) -> None:
        # A DataLoader worker gets a copy of this collator; without reseeding every worker would repeat one stream.
        worker = torch.utils.data.get_worker_info()
        if worker is not None and worker.id != self._worker_id:
            self._worker_id = worker.id
            self._generator = torch.Generator().manual_seed(self.seed * 1000 + worker.id + 1)

    def _visual_inputs(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """The processor's visual arguments for these rows (images here; region features in subclasses)."""
        missing = [index for index, row in enumerate(rows) if self.image_column not in row]
        if missing:
            raise KeyError(
                f"Rows {missing[:5]} of the batch have no {self.image_column!r} column (image_column); "
                f"row {missing[0]} has {sorted(rows[missing[0]])}. Pass remove_unused_columns=False to the Trainer."
            )
        images = [row[self.image_column] for row in rows]
        if self.random_crop_scale is not None:
            images = [
                random_resized_crop(load_image(image, index), self.random_crop_scale, self._generator)
                for index, image in enumerate(images)
            ]
        return {"images": images}

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError(f"{type(self).__name__} got an empty list of rows.")
        self._reseed_in_worker()
        if "__seed__" in rows[0]:
            # Rows of an `ImageTextStream`: the batch's random choices follow from its first row's place in the
            # stream, so they are the same after a resume and with any number of workers.
            self._generator = torch.Generator().manual_seed(int(rows[0]["__seed__"]))
        visual_inputs = self._visual_inputs(rows)
        texts = [self._caption(row, index) for index, row in enumerate(rows)]
        tokenizer_kwargs = dict(padding=self.padding, truncation=True)
        if self.max_length is not None:
            tokenizer_kwargs["max_length"] = self.max_length
        batch = dict(self.processor(**visual_inputs, text=texts, paired=True, return_tensors="pt", **tokenizer_kwargs))
        for column in self.passthrough_columns:
            if all(column in row and row[column] is not None for row in rows):
                batch[column] = torch.tensor([row[column] for row in rows], dtype=torch.long)
        skipped = [item for row in rows for item in row.get("__skipped__", ())]
        if "__seed__" in rows[0]:
            # (where, why) of the rows the stream skipped before these; `VLPTrainer` counts, logs and removes them.
            batch[SKIPPED_ROWS_KEY] = skipped
        return batch


def random_resized_crop(image, min_scale: float, generator: torch.Generator, ratio=(3 / 4, 4 / 3)):
    """A random crop of a PIL image covering a share in [min_scale, 1] of its area with an aspect ratio in `ratio`
    (log-uniform), drawn as torchvision's `RandomResizedCrop.get_params`: ten tries, then the whole image."""
    width, height = image.size
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        draws = torch.rand(2, generator=generator).tolist()
        target_area = area * (min_scale + (1.0 - min_scale) * draws[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * draws[1])
        crop_width = round(math.sqrt(target_area * aspect))
        crop_height = round(math.sqrt(target_area / aspect))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            left = int(torch.randint(width - crop_width + 1, (), generator=generator))
            top = int(torch.randint(height - crop_height + 1, (), generator=generator))
            return image.crop((left, top, left + crop_width, top + crop_height))
    return image


_VISUAL_INPUTS = ("patches", "regions")


def _check_visual_input(visual_input: str) -> None:
    if visual_input not in _VISUAL_INPUTS:
        raise ValueError(f"visual_input must be one of {_VISUAL_INPUTS}, got {visual_input!r}.")


def collate_region_columns(
    rows: list[dict[str, Any]], required: dict[str, str], optional: dict[str, str] | None = None
) -> dict[str, list]:
    """Region arguments of `VLPProcessor` (`visual_feats`, `visual_pos`, ...) from row columns, given as
    `{argument: column}`. Each column holds the array itself or names a `.npy` file in `<column>_file` (see
    `load_region_text_dataset`). An optional argument is passed only when every row has it."""
    inputs = {}
    for argument, column in required.items():
        values = [read_region_column(row, column) for row in rows]
        missing = [index for index, value in enumerate(values) if value is None]
        if missing:
            raise KeyError(
                f"Rows {missing[:5]} of the batch have neither a {column!r} nor a {column + '_file'!r} column "
                f"(region inputs need {argument}); row {missing[0]} has {sorted(rows[missing[0]])}. Pass "
                "remove_unused_columns=False to the Trainer."
            )
        inputs[argument] = values
    for argument, column in (optional or {}).items():
        values = [read_region_column(row, column) for row in rows]
        if all(value is not None for value in values):
            inputs[argument] = values
    return inputs


class VLPPretrainingCollator(VLPCollator):
    """Collate rows into a pretraining batch for single-stream (and fusion) models: the `VLPCollator` batch, with
    text masked for MLM and visual tokens chosen for MIM, seeded like the caption sampler.

    Args:
        processor: A `VLPProcessor`; its tokenizer needs a mask token when `mlm_probability > 0`.
        mlm_probability (`float`, defaults to 0.15): Share of text tokens masked (BERT's 80/10/10, never special or
            padding tokens, at least one per caption); 0 disables MLM.
        mim_ratio (`float`, defaults to 0.0): Share of patches (or regions) masked for masked image (region)
            modeling; 0 disables MIM.
        patch_size (`int`, *optional*): The model's patch size, needed for patch MIM: `mim_mask` covers the patch
            grid of the padded `pixel_values`, and never masks patches that only hold padding (`pixel_mask`).
        mim_block_masking (`bool`, defaults to `False`): BEiT's blockwise patch masking instead of uniform.
        visual_input (`str`, defaults to `"patches"`): `"patches"` reads images from `image_column`; `"regions"`
            reads precomputed region features (no images) from the columns below.
        visual_feats_column, visual_pos_column (`str`): Row keys of the `(N_i, D)` features and `(N_i, 4|5)`
            normalized boxes (or of `.npy` files under `<column>_file`).
        region_class_scores_column, region_labels_column (`str`): Row keys of the detector's `(N_i, C)` class
            scores and `(N_i,)` labels, the targets of masked region classification; used when every row has them.
        collator_kwargs: Every `VLPCollator` argument (`image_column`, `caption_column`, `captions_column`,
            `sample_captions`, `max_length`, `padding`, `passthrough_columns`, `seed`).

    Returns (per call):
        The `VLPCollator` batch (`input_ids`, `attention_mask`, `pixel_values` (+ `pixel_mask`) or `visual_feats`,
        `visual_pos`, `visual_attention_mask` (+ `region_class_scores`, `region_labels`), `image_id`), plus with MLM
        `input_ids` masked and `mlm_labels` `(B, T)` (-100 on unmasked tokens), and with MIM `mim_mask` `(B, P)` bool
        over the `P = (H // patch_size) * (W // patch_size)` patches or the `P = N` regions.
    """

    def __init__(
        self,
        processor,
        mlm_probability: float = 0.15,
        mim_ratio: float = 0.0,
        patch_size: int | None = None,
        mim_block_masking: bool = False,
        visual_input: str = "patches",
        visual_feats_column: str = "visual_feats",
        visual_pos_column: str = "visual_pos",
        region_class_scores_column: str = "region_class_scores",
        region_labels_column: str = "region_labels",
        **collator_kwargs,
    ):
        super().__init__(processor, **collator_kwargs)
        _check_visual_input(visual_input)
        for name, value in (("mlm_probability", mlm_probability), ("mim_ratio", mim_ratio)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1] (0 disables it), got {value}.")
        if mim_ratio > 0 and visual_input == "patches" and (patch_size is None or patch_size < 1):
            raise ValueError(
                f"patch_size={patch_size!r}: masked image modeling on patches (mim_ratio={mim_ratio}) needs the "
                "model's patch size (a positive int) to lay the mask over the patch grid."
            )
        tokenizer = getattr(processor, "tokenizer", None)
        if mlm_probability > 0 and getattr(tokenizer, "mask_token_id", None) is None:
            raise ValueError(
                f"mlm_probability={mlm_probability} needs a tokenizer with a mask token, but "
                f"{type(tokenizer).__name__} has none; add one (tokenizer.add_special_tokens({{'mask_token': "
                "'[MASK]'}}) and resize the model's embeddings) or pass mlm_probability=0."
            )
        self.mlm_probability = mlm_probability
        self.mim_ratio = mim_ratio
        self.patch_size = patch_size
        self.mim_block_masking = mim_block_masking
        self.visual_input = visual_input
        self.region_columns = {"visual_feats": visual_feats_column, "visual_pos": visual_pos_column}
        self.region_target_columns = {
            "region_class_scores": region_class_scores_column,
            "region_labels": region_labels_column,
        }

    def _visual_inputs(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        if self.visual_input == "regions":
            return collate_region_columns(rows, self.region_columns, self.region_target_columns)
        return super()._visual_inputs(rows)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = super().__call__(rows)
        if self.mlm_probability > 0:
            tokenizer = self.processor.tokenizer
            special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=batch["input_ids"].dtype)
            batch["input_ids"], batch["mlm_labels"] = mask_tokens_for_mlm(
                batch["input_ids"],
                torch.isin(batch["input_ids"], special_ids),
                mask_token_id=tokenizer.mask_token_id,
                vocab_size=len(tokenizer),
                probability=self.mlm_probability,
                generator=self._generator,
                attention_mask=batch.get("attention_mask"),
            )
        if self.mim_ratio > 0:
            if self.visual_input == "regions":
                batch["mim_mask"] = random_region_mask(batch["visual_attention_mask"], self.mim_ratio, self._generator)
            else:
                batch["mim_mask"] = self._patch_mask(batch)
        return batch

    def _patch_mask(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        batch_size, _, height, width = batch["pixel_values"].shape
        grid_height, grid_width = height // self.patch_size, width // self.patch_size
        if grid_height == 0 or grid_width == 0:
            raise ValueError(
                f"pixel_values of {height}x{width} pixels hold no whole patch of patch_size={self.patch_size}."
            )
        valid = patch_valid_mask(batch["pixel_mask"], self.patch_size) if "pixel_mask" in batch else None
        return random_patch_mask(
            batch_size,
            grid_height,
            grid_width,
            self.mim_ratio,
            generator=self._generator,
            valid_mask=valid,
            block_masking=self.mim_block_masking,
        )


class VLPQuestionAnsweringCollator(VLPCollator):
    """Collate VQA rows (image, question, annotator answers) into a batch with soft answer scores.

    `labels[b, label2id[a]] = min(number of annotators who answered a / 3, 1)`, the VQA training target; answers are
    compared after `normalize_vqa_answer` and those outside `label2id` are dropped. Only tensors are returned: keep
    the answers in the dataset for evaluation (`evaluate_vqa`).

    Args:
        processor: A `VLPProcessor`.
        label2id (`dict[str, int]`): Answer -> class index, indices 0..num_labels-1 (see `vqa_answer_vocabulary`).
        image_column, question_column, answers_column (`str`): Row keys. A row's answers are a list of strings (or
            one string).
        max_length (`int`, *optional*): Truncate questions to this many tokens.
        visual_input (`str`, defaults to `"patches"`): `"regions"` reads `visual_feats_column` / `visual_pos_column`
            (or their `<column>_file` `.npy` files) instead of images.

    Returns (per call):
        `pixel_values` (+ `pixel_mask`) or `visual_feats`, `visual_pos`, `visual_attention_mask`; `input_ids`,
        `attention_mask` (+ `token_type_ids`); `labels` `(B, num_labels)` float32.
    """

    def __init__(
        self,
        processor,
        label2id: dict[str, int],
        image_column: str = "image",
        question_column: str = "question",
        answers_column: str = "answers",
        max_length: int | None = None,
        visual_input: str = "patches",
        visual_feats_column: str = "visual_feats",
        visual_pos_column: str = "visual_pos",
        padding: bool | str = True,
    ):
        super().__init__(
            processor,
            image_column=image_column,
            text_column=question_column,
            max_length=max_length,
            padding=padding,
            passthrough_columns=(),
        )
        _check_visual_input(visual_input)
        if not isinstance(label2id, dict) or not label2id:
            raise ValueError(f"label2id must be a non-empty dict {{answer: index}}, got {type(label2id).__name__}.")
        if sorted(label2id.values()) != list(range(len(label2id))):
            raise ValueError(
                f"label2id must map its {len(label2id)} answers to the indices 0..{len(label2id) - 1}, each once."
            )
        self.label2id = dict(label2id)
        self.num_labels = len(label2id)
        self._normalized_label2id = {}
        for answer, index in label2id.items():
            self._normalized_label2id.setdefault(normalize_vqa_answer(answer), index)
        self.answers_column = answers_column
        self.visual_input = visual_input
        self.region_columns = {"visual_feats": visual_feats_column, "visual_pos": visual_pos_column}

    def _visual_inputs(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        if self.visual_input == "regions":
            return collate_region_columns(rows, self.region_columns)
        return super()._visual_inputs(rows)

    def answer_scores(self, answers: Sequence[str] | str) -> torch.Tensor:
        """`(num_labels,)` soft scores of one question's annotator answers."""
        if isinstance(answers, str):
            answers = [answers]
        counts = Counter(self._normalized_label2id.get(normalize_vqa_answer(answer)) for answer in answers)
        counts.pop(None, None)
        scores = torch.zeros(self.num_labels)
        for index, count in counts.items():
            scores[index] = min(count / 3, 1.0)
        return scores

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        missing = [index for index, row in enumerate(rows) if row.get(self.answers_column) is None]
        if missing:
            raise KeyError(
                f"Rows {missing[:5]} of the batch have no {self.answers_column!r} column (answers_column); "
                f"row {missing[0]} has {sorted(rows[missing[0]])}."
            )
        batch = super().__call__(rows)
        batch["labels"] = torch.stack([self.answer_scores(row[self.answers_column]) for row in rows])
        return batch


__all__ = ["VLPCollator", "VLPPretrainingCollator", "VLPQuestionAnsweringCollator", "collate_region_columns"]
