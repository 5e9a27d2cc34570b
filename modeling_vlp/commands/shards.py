"""`vlp shards --dataset DIR --output DIR --shard-size N`: write a local image-text corpus as webdataset shards in
img2dataset's layout, for streaming training (`vlp pretrain --dataset 'DIR/train-{00000..00009}.tar'`, open_clip's
`--train-data`).

The input is anything `load_image_text_dataset` reads (imagefolder, parquet, webdataset shards, a `save_to_disk`
folder). Each split becomes its own shards, `{split}-00000.tar`, `{split}-00001.tar`, ... (img2dataset names them
`00000.tar`; the split prefix lets `load_image_text_dataset(DIR)` read the splits back apart). Per sample:

    KEY.jpg    the image: the source's own bytes when they are a JPEG, otherwise re-encoded as JPEG
               (`--jpeg-quality`, 95 as img2dataset; `--keep-png` keeps PNG bytes as KEY.png instead)
    KEY.txt    the caption
    KEY.json   {"key", "caption", "width", "height", and the row's other columns}

KEY is the row's index in its split, zero-padded to 9 digits (`000000042`), so a skipped row leaves a gap, as a
failed download does in img2dataset. Next to each shard, `{split}-00000_stats.json` counts its rows (img2dataset's
`00000_stats.json`: count, successes, failures by reason); `stats.json` sums them per split. Rows whose image does
not decode or whose caption is empty are skipped and counted, never fatal.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import datasets
import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from ..data import load_image_text_dataset

KEY_DIGITS = 9  # img2dataset: 5 digits of shard + 4 of sample (10,000 per shard)
SHARD_DIGITS = 5
STATS_NAME = "stats.json"
_SKIPPED_COLUMNS = ("image", "caption", "__url__")  # written as the image / caption members, or meaningless here


@dataclass
class ShardStats:
    """What went into one shard (img2dataset's `*_stats.json` fields where they apply)."""

    count: int = 0  # rows read while this shard was being filled
    successes: int = 0  # samples written
    failures: Counter = field(default_factory=Counter)  # skipped rows by reason
    start_time: float = field(default_factory=time.time)

    def as_json(self, shard: str) -> dict:
        end = time.time()
        return {
            "shard": shard, "count": self.count, "successes": self.successes,
            "failed": sum(self.failures.values()), "failures": dict(self.failures),
            "start_time": self.start_time, "end_time": end, "duration": end - self.start_time,
        }  # fmt: skip


class SkippedRow(ValueError):
    """A row that cannot become a sample; the message is the reason counted in the stats."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlp shards",
        description="Write an image-text corpus (imagefolder, parquet, webdataset shards, save_to_disk folder) as "
        "webdataset shards in img2dataset's layout: KEY.jpg (or .png with --keep-png), KEY.txt, KEY.json per "
        "sample, {split}-00000.tar ... with a {split}-00000_stats.json each and a stats.json summary. Rows with an "
        "undecodable image or an empty caption are skipped and counted.",
    )
    parser.add_argument("--dataset", required=True, help="The corpus to convert (what vlp pretrain --dataset reads).")
    parser.add_argument("--output", required=True, help="Folder for the shards (created; must hold no .tar yet).")
    parser.add_argument("--shard-size", type=int, default=10000, help="Samples per shard. Default: 10000.")
    parser.add_argument("--image-column", default=None, help="Image column of --dataset (default: detected).")
    parser.add_argument("--text-column", default=None, help="Caption column of --dataset (default: detected).")
    parser.add_argument("--jpeg-quality", type=int, default=95, help="Quality of re-encoded JPEGs. Default: 95.")
    parser.add_argument(
        "--keep-png", action="store_true",
        help="Store PNG sources as KEY.png (lossless) instead of re-encoding them as KEY.jpg.",
    )  # fmt: skip
    parser.add_argument("--cache-dir", default=None, help="datasets cache for reading --dataset (default: HF's).")
    parser.add_argument("--no-progress", action="store_true", help="No progress bar.")
    return parser


def _image_bytes(value) -> bytes:
    """The encoded bytes of an undecoded `datasets.Image` value ({"bytes", "path"})."""
    if value is None:
        raise SkippedRow("no image")
    data = value.get("bytes")
    if data is None and value.get("path"):
        try:
            with open(value["path"], "rb") as handle:
                data = handle.read()
        except OSError:
            raise SkippedRow("unreadable image file") from None
    if not data:
        raise SkippedRow("no image")
    return data


def encode_image(data: bytes, keep_png: bool = False, quality: int = 95) -> tuple[str, bytes, tuple[int, int]]:
    """(extension, bytes, (width, height)) of a sample's image: JPEG bytes as they are, PNG as they are with
    `keep_png`, anything else decoded and re-encoded as an RGB JPEG. Raises `SkippedRow` when it does not decode."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # the whole image: a truncated file fails here, not in a training worker
            size, kind = image.size, image.format
            if kind == "JPEG" and image.mode in ("RGB", "L"):
                return "jpg", data, size
            if kind == "PNG" and keep_png:
                return "png", data, size
            rgb = image.convert("RGBA").convert("RGB") if image.mode in ("P", "LA", "PA") else image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise SkippedRow("undecodable image") from None
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=quality)
    return "jpg", buffer.getvalue(), size


def _jsonable(value):
    """A JSON-serialisable form of a column value (numpy arrays and scalars, dates); None when there is none."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return None  # bytes, images: not metadata


def sample_metadata(row: dict, key: str, caption: str, size: tuple[int, int]) -> dict:
    """KEY.json: the row's other columns (a source shard's own json merged in, its `__key__` as `source_key`), then
    `key`, `caption`, `width`, `height`."""
    meta = {}
    for name, value in row.items():
        if name in _SKIPPED_COLUMNS:
            continue
        if name == "json" and isinstance(value, dict):
            meta.update({k: v for k, v in _jsonable(value).items() if k not in ("key", "caption")})
        elif name == "__key__":
            meta["source_key"] = value
        elif (converted := _jsonable(value)) is not None or value is None:
            meta[name] = converted
    meta.update(key=key, caption=caption, width=size[0], height=size[1])
    return meta


def make_sample(row: dict, index: int, keep_png: bool = False, quality: int = 95) -> dict:
    """The webdataset sample of row `index` of a split; raises `SkippedRow` when the row cannot be one."""
    caption = row.get("caption")
    if not isinstance(caption, str) or not caption.strip():
        raise SkippedRow("empty caption")
    extension, data, size = encode_image(_image_bytes(row.get("image")), keep_png, quality)
    key = f"{index:0{KEY_DIGITS}d}"
    meta = sample_metadata(row, key, caption, size)
    return {"__key__": key, extension: data, "txt": caption, "json": json.dumps(meta, indent=4).encode()}


def _rows(ds: datasets.Dataset) -> Iterable[dict]:
    """The split's rows, with the image column undecoded ({"bytes", "path"}) so JPEG bytes pass through."""
    return ds.cast_column("image", datasets.Image(decode=False))


def write_split(
    ds: datasets.Dataset,
    output: str,
    split: str,
    shard_size: int,
    keep_png: bool = False,
    quality: int = 95,
    progress: bool = True,
) -> dict:
    """Write one split as `{split}-NNNNN.tar` shards of at most `shard_size` samples; returns its summary."""
    try:
        import webdataset as wds  # optional dependency (the `dev` extra)
    except ImportError as error:
        raise ValueError("vlp shards needs the webdataset package: pip install webdataset") from error

    pattern = os.path.join(output, f"{split}-%0{SHARD_DIGITS}d.tar")
    shards: list[dict] = []
    current = ShardStats()
    writer = None

    def shard_done(fname: str) -> None:
        nonlocal current
        stats = current.as_json(os.path.basename(fname))
        with open(fname[: -len(".tar")] + "_stats.json", "w") as handle:
            json.dump(stats, handle, indent=4)
        shards.append(stats)
        current = ShardStats()

    bar = tqdm(total=len(ds), unit=" samples", desc=f"vlp shards {split}", disable=not progress, file=sys.stderr)
    skipped = 0
    for index, row in enumerate(_rows(ds)):
        try:
            sample = make_sample(row, index, keep_png, quality)
        except SkippedRow as reason:
            current.count += 1
            current.failures[str(reason)] += 1
            skipped += 1
            bar.set_postfix(skipped=skipped, refresh=False)
        else:
            if writer is None:
                writer = wds.ShardWriter(pattern, maxcount=shard_size, maxsize=math.inf, post=shard_done, verbose=0)
            elif writer.count >= shard_size:
                writer.next_stream()  # closes the full shard (its stats) before this row is counted
            current.count += 1
            writer.write(sample)
            current.successes += 1
        bar.update(1)
    bar.close()
    if writer is not None:
        writer.close()
    elif current.count:
        shards.append(current.as_json(None))  # every row skipped: no shard, but the failures are counted
    failures = Counter()
    for stats in shards:
        failures.update(stats["failures"])
    written = [stats["shard"] for stats in shards if stats["shard"] is not None]
    return {
        "rows": sum(stats["count"] for stats in shards),
        "samples": sum(stats["successes"] for stats in shards),
        "skipped": sum(failures.values()),
        "skipped_by_reason": dict(failures),
        "shards": written,
        "url_pattern": _url_pattern(output, split, len(written)),
    }


def _url_pattern(output: str, split: str, num_shards: int) -> str | None:
    """The brace pattern naming a split's shards (open_clip's --train-data / our --dataset)."""
    if num_shards == 0:
        return None
    last = f"{num_shards - 1:0{SHARD_DIGITS}d}"
    if num_shards == 1:
        return os.path.join(output, f"{split}-{last}.tar")
    return os.path.join(output, f"{split}-{{{0:0{SHARD_DIGITS}d}..{last}}}.tar")


def write_shards(
    dataset: str,
    output: str,
    shard_size: int = 10000,
    image_column: str | None = None,
    text_column: str | None = None,
    keep_png: bool = False,
    quality: int = 95,
    progress: bool = True,
    cache_dir: str | None = None,
) -> dict:
    """Convert `dataset` into webdataset shards under `output`; returns (and writes as stats.json) the summary by
    split: rows read, samples written, rows skipped by reason, shard names, the URL pattern of the shards."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    if os.path.isdir(output) and any(name.endswith(".tar") for name in os.listdir(output)):
        raise ValueError(f"{output!r} already holds .tar shards; choose an empty folder")
    splits = load_image_text_dataset(dataset, image_column=image_column, text_column=text_column, cache_dir=cache_dir)
    os.makedirs(output, exist_ok=True)
    start = time.time()
    summary = {
        split: write_split(ds, output, split, shard_size, keep_png, quality, progress) for split, ds in splits.items()
    }
    seconds = time.time() - start
    summary = {"source": os.fspath(dataset), "shard_size": shard_size, "seconds": seconds, "splits": summary}
    with open(os.path.join(output, STATS_NAME), "w") as handle:
        json.dump(summary, handle, indent=4)
    return summary


def shards_command(argv: Sequence[str]) -> int:
    """`vlp shards --dataset DIR --output DIR [options]`: 0 when written, 1 when the input cannot be read."""
    args = _parser().parse_args(list(argv))
    try:
        summary = write_shards(
            args.dataset, args.output, args.shard_size, args.image_column, args.text_column, args.keep_png,
            args.jpeg_quality, progress=not args.no_progress, cache_dir=args.cache_dir,
        )  # fmt: skip
    except ValueError as error:
        print(f"vlp shards: error: {error}", file=sys.stderr)
        return 1
    seconds = max(summary["seconds"], 1e-9)
    for split, result in summary["splits"].items():
        reasons = ", ".join(f"{n} {why}" for why, n in result["skipped_by_reason"].items()) or "none"
        print(
            f"{split}: {result['samples']} samples in {len(result['shards'])} shard(s) from {result['rows']} rows; "
            f"skipped {result['skipped']} ({reasons})"
        )
        if result["url_pattern"]:
            print(f"  --dataset '{result['url_pattern']}'  (open_clip: --train-num-samples {result['samples']})")
    total = sum(result["rows"] for result in summary["splits"].values())
    print(f"{total} rows in {summary['seconds']:.1f} s ({total / seconds:.0f} samples/s); summary in "
          f"{os.path.join(args.output, STATS_NAME)}")  # fmt: skip
    return 0


__all__ = ["encode_image", "make_sample", "shards_command", "write_shards"]
