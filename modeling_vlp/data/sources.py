"""What `vlp pretrain --dataset` names, as training and evaluation data: a training `ImageTextStream` (never a copy of
the corpus) and a small materialized evaluation split.

- webdataset URL patterns (`DIR/{00000..00099}.tar`, `::`-joined, `pipe:`), a `.tar` shard or a folder of them: the
  shards stream; evaluation uses the shards named `val*` / `test*` when there are some, else the last shard is held
  out (or, with one shard, its first rows), read into memory up to `num_validation` usable rows;
- `--streaming` with parquet / imagefolder: `datasets` streaming, shard by shard; evaluation as above with its
  validation split, else the first rows of the first shard are held out;
- anything else (imagefolder, parquet, `save_to_disk`, the embedded scenes): loaded as a `datasets.Dataset` (memory
  mapped) and streamed from it in a permuted order each pass.
"""

from __future__ import annotations

import itertools
import logging
import os

import datasets

from .local import _SPLIT_ALIASES, _find_image_column, _find_text_column, _split_of
from .rows import UnusableRow
from .streaming import ImageTextStream, IndexedSource, ShardSource, expand_shard_urls, is_url_pattern

logger = logging.getLogger(__name__)


def _shard_split(url: str) -> str:
    """The split a shard's name or folder says ("train" when it says none)."""
    parts = url.replace("\\", "/").split("/")[-2:]
    return next((split for split in map(_split_of, parts) if split is not None), "train")


def shard_urls(spec: str) -> list[str] | None:
    """The shard URLs `spec` names (a URL pattern, a .tar file, a folder holding .tar files only), else None."""
    if is_url_pattern(spec):
        return expand_shard_urls(spec)
    if os.path.isfile(spec) and spec.lower().endswith(".tar"):
        return [spec]
    if os.path.isdir(spec):
        files = sorted(
            os.path.join(root, name) for root, _, names in os.walk(spec) for name in names
            if not name.startswith(".")
        )  # fmt: skip
        tars = [name for name in files if name.lower().endswith(".tar")]
        data = [name for name in files if not name.lower().endswith((".json", ".txt", ".md", ".parquet_stats"))]
        if tars and len(tars) == len(data):
            return tars
    return None


def _usable_rows(stream: ImageTextStream, limit: int) -> datasets.Dataset:
    """Up to `limit` usable rows of a one-pass, unshuffled stream, as an in-memory dataset (evaluation)."""
    rows, skipped = [], 0
    for row in stream:
        skipped += len(row.get("__skipped__", ()))
        rows.append(row)
        if len(rows) >= limit:
            break
    if skipped:
        logger.warning("Evaluation data: %d unusable rows skipped.", skipped)
    if not rows:
        raise ValueError("the evaluation data has no usable row")
    return _evaluation_dataset(rows)


def _evaluation_dataset(rows: list[dict]) -> datasets.Dataset:
    """Checked rows (PIL `image`, `caption`) as an in-memory evaluation dataset."""
    return datasets.Dataset.from_dict(
        {"image": [row["image"] for row in rows], "caption": [row["caption"] for row in rows]},
        features=datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")}),
    )


def _one_pass(sources, shuffle=False) -> ImageTextStream:
    return ImageTextStream(sources, shuffle=shuffle, one_pass=True)


def _parse_weights(weights: str | None, count: int) -> list[float] | None:
    if weights is None:
        return None
    items = [item for part in weights.split("::") for item in part.split(",") if item.strip()]
    try:
        values = [float(item) for item in items]
    except ValueError:
        raise ValueError(f"--dataset-weights {weights!r}: expected numbers separated by '::' or ','") from None
    if len(values) != count:
        raise ValueError(f"--dataset-weights {weights!r} gives {len(values)} weights for {count} '::'-separated sources")
    return values


class _Excluding(ShardSource):
    """A shard source without the samples held out for evaluation (their `__where__`)."""

    def __init__(self, source: ShardSource, held_out: set[str]):
        super().__init__(source.names, source.dataset)
        self.held_out = held_out

    def read(self, index, errors):
        for sample in super().read(index, errors):
            if sample.get("__where__") not in self.held_out:
                yield sample


def _hold_out(source: ShardSource, num_validation: int) -> tuple[ShardSource, datasets.Dataset]:
    """(training source, evaluation rows): the last webdataset shard when there are several, else the first rows."""
    if len(source) > 1 and source.dataset is None:
        logger.warning("No validation shards: holding out the last shard, %s, for evaluation.", source.names[-1])
        last = ShardSource(source.names[-1:])
        return ShardSource(source.names[:-1]), _usable_rows(_one_pass([last]), num_validation)
    held = list(itertools.islice(source.read(0, []), num_validation))
    logger.warning("No validation split: holding out the first %d rows of %s for evaluation.", len(held), source.names[0])
    checker, rows = ImageTextStream([source], shuffle=False), []
    for sample in held:
        try:
            rows.append(checker._example(sample))
        except UnusableRow:
            continue
    return _Excluding(source, {sample["__where__"] for sample in held}), _evaluation_dataset(rows)


def _streaming_dataset(path: str, image_column, text_column) -> dict[str, datasets.IterableDataset]:
    """`datasets` streaming splits of a local parquet / imagefolder corpus, with `image` (undecoded) and `caption`."""
    if os.path.isfile(path):
        builder, kwargs = "parquet", {"data_files": {"train": [path]}}
    elif any(name.endswith(".parquet") for _, _, names in os.walk(path) for name in names):
        builder, kwargs = "parquet", {"data_dir": path}
    else:
        builder, kwargs = "imagefolder", {"data_dir": path}
    splits = datasets.load_dataset(builder, streaming=True, **kwargs)
    result = {}
    for split, stream in splits.items():
        features = stream.features
        image, text = _find_image_column(features, image_column, path), _find_text_column(features, text_column, path)
        if image != "image":
            stream = stream.rename_column(image, "image")
        if text != "caption":
            stream = stream.rename_column(text, "caption")
        stream = stream.cast_column("image", datasets.Image(decode=False))
        result[_SPLIT_ALIASES.get(split, split)] = stream
    return result


def load_training_data(
    spec: str,
    num_validation: int,
    seed: int,
    streaming: bool = False,
    resampled: bool = False,
    samples_per_epoch: int | None = None,
    weights: str | None = None,
    shuffle_buffer: int = 1000,
    image_column: str | None = None,
    text_column: str | None = None,
) -> tuple[ImageTextStream, datasets.Dataset]:
    """(training stream, evaluation rows) of `--dataset spec`; see the module docstring."""
    options = dict(seed=seed, resampled=resampled, samples_per_epoch=samples_per_epoch, shuffle_buffer=shuffle_buffer)
    sources_spec = spec.split("::") if weights is not None else [spec]
    urls = [shard_urls(item) for item in sources_spec]
    if all(found is not None for found in urls):
        train_sources, eval_urls = [], []
        for found in urls:
            train_urls = [url for url in found if _shard_split(url) == "train"]
            eval_urls += [url for url in found if _shard_split(url) in ("validation", "test")]
            if not train_urls:
                raise ValueError(f"--dataset {spec!r}: no training shard (all are named validation or test)")
            train_sources.append(ShardSource.webdataset(train_urls))
        if eval_urls:
            evaluation = _usable_rows(_one_pass([ShardSource.webdataset(eval_urls)], shuffle=False), num_validation)
        else:
            train_sources[-1], evaluation = _hold_out(train_sources[-1], num_validation)
        stream = ImageTextStream(train_sources, weights=_parse_weights(weights, len(train_sources)), **options)
        logger.info("Streaming %s training shards.", sum(len(source) for source in train_sources))
        return stream, evaluation
    if weights is not None:
        raise ValueError(f"--dataset-weights mixes webdataset sources; {spec!r} is not one ('::'-separated shards)")
    if streaming:
        splits = _streaming_dataset(spec, image_column, text_column)
        if "train" not in splits:
            raise ValueError(f"--dataset {spec!r} has no train split; found {list(splits)}")
        source = ShardSource.streaming(splits["train"], os.path.basename(os.path.normpath(spec)))
        eval_split = next((splits[name] for name in ("validation", "test") if name in splits), None)
        if eval_split is not None:
            evaluation = _usable_rows(_one_pass([ShardSource.streaming(eval_split, "eval")], shuffle=False), num_validation)
        else:
            source, evaluation = _hold_out(source, num_validation)
        return ImageTextStream([source], **options), evaluation
    raise LookupError("materialized")  # the caller loads it as a datasets.Dataset


def materialized_stream(train: datasets.Dataset, seed: int, name: str = "dataset") -> ImageTextStream:
    """The training stream of a materialized dataset: its rows in a new seeded order each pass."""
    return ImageTextStream([IndexedSource(train, name)], seed=seed)
