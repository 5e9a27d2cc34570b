"""Whether a raw image-caption row can become a training or evaluation example, and why not.

One place decides it for every data path (materialized datasets, streamed shards, `vlp evaluate`): a row is usable
when its caption is a non-blank string (or a list with one) and its image decodes completely. The image is decoded
here, once, where the row is read (in a `DataLoader` worker when there are workers), so a truncated JPEG, a zero-byte
file, a missing path or an image over PIL's decompression-bomb limit becomes a skipped row with a reason instead of an
exception in the middle of a run.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from typing import Any

import datasets
from PIL import Image

from ..processors.image_processing_vlp import load_image

# Encoded-image keys of a webdataset sample (img2dataset writes jpg), in the order they are tried.
IMAGE_KEYS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp", "image", "img")
CAPTION_KEYS: tuple[str, ...] = ("txt", "caption", "text")
logger = logging.getLogger(__name__)
# What an imagefolder's metadata reader puts in a text column for a value that is not text (`data.local`).
NOT_TEXT = "\x00not text"


class UnusableRow(ValueError):
    """A row that cannot become an example; `reason` says why in a few words."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def check_caption(value: Any, column: str = "caption") -> str:
    """The caption, stripped of nothing; an `UnusableRow` if it is missing, blank, or not a string."""
    if value is None:
        raise UnusableRow(f"{column} is null")
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise UnusableRow(f"{column} is not UTF-8 text") from None
    if not isinstance(value, str) or value == NOT_TEXT:
        shown = "a number or other non-text value" if value == NOT_TEXT else f"a {type(value).__name__} ({value!r:.40})"
        raise UnusableRow(f"{column} is {shown}, expected text")
    if not value.strip():
        raise UnusableRow(f"{column} is empty" if not value else f"{column} is only whitespace")
    return value


def check_captions(values: Any, column: str = "captions") -> list[str]:
    """The usable captions of a list column (blank ones dropped); an `UnusableRow` if none is left."""
    if not isinstance(values, (list, tuple)):
        raise UnusableRow(f"{column} is a {type(values).__name__}, expected a list of captions")
    usable = []
    for value in values:
        try:
            usable.append(check_caption(value, column))
        except UnusableRow:
            continue
    if not usable:
        raise UnusableRow(f"{column} has no non-blank caption ({len(values)} given)")
    return usable


def decode_image(value: Any) -> Image.Image:
    """A fully decoded PIL image from what a dataset row holds (PIL image, encoded bytes, a path, a datasets
    `{"bytes", "path"}` dict); an `UnusableRow` naming the file when it cannot be read."""
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            value = value["bytes"]
        elif value.get("path"):
            value = value["path"]
        else:
            raise UnusableRow("image is an empty {'bytes', 'path'} record")
    if value is None:
        raise UnusableRow("image is null")
    if isinstance(value, (str, os.PathLike)) and not os.path.isfile(value):
        raise UnusableRow(f"image file {os.fspath(value)!r} does not exist")
    if (isinstance(value, (bytes, bytearray)) and len(value) == 0) or (
        isinstance(value, (str, os.PathLike)) and os.path.getsize(value) == 0
    ):
        raise UnusableRow("image is zero bytes")
    try:
        with warnings.catch_warnings():
            # PIL warns (and only past twice the limit raises) for images over its decompression-bomb limit.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = load_image(value)
            image.load()
    except (ValueError, TypeError, OSError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        detail = str(error).split("could not be decoded as an image: ")[-1]
        if detail.startswith("cannot identify image file"):
            detail = "not in an image format PIL reads"
        if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
            detail = f"over PIL's decompression-bomb limit ({detail.split('could be')[0].strip()})"
        raise UnusableRow(f"image could not be decoded: {detail}") from None
    return image


def encoded_image(sample: dict[str, Any]) -> tuple[str, Any]:
    """(key, value) of the encoded image of a webdataset sample; an `UnusableRow` if it has none."""
    for key in IMAGE_KEYS:
        if sample.get(key) is not None:
            return key, sample[key]
    present = sorted(key for key in sample if not key.startswith("__"))
    raise UnusableRow(f"no image member (looked for {'/'.join(IMAGE_KEYS)}; the sample has {present})")


def webdataset_caption(sample: dict[str, Any]) -> Any:
    """The raw caption of a webdataset sample: a .txt member, else a caption in its .json sidecar."""
    for key in CAPTION_KEYS:
        if key in sample:
            return sample[key]
    if "json" in sample:
        try:
            meta = json.loads(sample["json"]) if isinstance(sample["json"], (bytes, str)) else sample["json"]
        except ValueError:
            raise UnusableRow("json member is not valid JSON") from None
        if isinstance(meta, dict) and "caption" in meta:
            return meta["caption"]
    raise UnusableRow("no caption member (.txt, or .json with 'caption')")



def usable_rows(dataset, name: str, caption_column: str = "caption", image_column: str | None = "image",
                log_first: int = 10):  # fmt: skip
    """`dataset` (a `datasets.Dataset`) without the rows that cannot be evaluated or trained on (a blank, null or
    non-text caption; an image that does not decode), each of the first `log_first` logged with its row number and
    reason, and the count; returns (dataset, skipped) with `skipped` the list of (row, reason)."""
    checked = dataset
    if image_column is not None and isinstance(dataset.features.get(image_column), datasets.Image):
        checked = dataset.cast_column(image_column, datasets.Image(decode=False))
    skipped = []
    for index, row in enumerate(checked):
        try:
            if isinstance(row.get("captions"), list):
                check_captions(row["captions"])
            else:
                check_caption(row.get(caption_column), caption_column)
            if image_column is not None:
                decode_image(row.get(image_column))
        except UnusableRow as problem:
            skipped.append((index, problem.reason))
            if len(skipped) <= log_first:
                path = row.get(image_column, {}).get("path") if isinstance(row.get(image_column), dict) else None
                logger.warning("Skipped %s row %d%s: %s.", name, index, f" ({path})" if path else "", problem.reason)
    if skipped:
        logger.warning("%s: %d of %d rows skipped as unusable.", name, len(skipped), len(dataset))
        bad = {index for index, _ in skipped}
        dataset = dataset.select([index for index in range(len(dataset)) if index not in bad])
    return dataset, skipped
