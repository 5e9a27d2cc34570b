"""Training rows as a stream: webdataset shards read where they lie (open_clip's `--train-data` URL patterns), `datasets`
streaming shards (parquet, imagefolder) and materialized datasets, through one resumable `IterableDataset`.

`ImageTextStream` yields decoded, checked rows (`image` as a PIL image, `caption`), and

- walks its sources in a seeded order that changes every pass: shards are shuffled (or drawn with replacement,
  `resampled=True`, open_clip's `--dataset-resampled`) and samples are shuffled in blocks of `shuffle_buffer` inside
  each shard; rows of a materialized dataset are permuted;
- splits the work across ranks and `DataLoader` workers: whole shards when there are at least as many shards as
  workers in all, else every worker reads every shard and keeps every G-th sample; rows of a materialized dataset go
  round robin. No sample is yielded twice per pass;
- decodes images and checks captions in the worker, skips the rows that cannot become examples and reports them
  (`__skipped__` on the next yielded row: where and why) so that the trainer counts and logs them; batches stay full;
- keeps, per worker, where it is (pass, shard, offset in the shard, rows yielded) in `state_dict()`; torchdata's
  `StatefulDataLoader` collects these from its workers, so a checkpoint resumes at the next unseen sample, re-reading
  only the start of the shard it was in (a tar stream cannot seek);
- mixes several sources by weight (`weights`, open_clip's `--train-data-upsampling-factors` spirit), each walked on
  its own;
- never ends when `samples_per_epoch` is given (open_clip's `--train-num-samples`: the length of an epoch); without
  it, it also runs on pass after pass (training is bounded by `max_steps`).

Each yielded row also carries `__seed__`, a number that depends only on the seed and on the row's place in the walk,
so the collator's random choices (caption sampling, crops, masks) are the same in a resumed run and with any number
of workers.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import datasets
import numpy as np
import webdataset
from torch.utils.data import IterableDataset, get_worker_info

from .rows import UnusableRow, check_caption, check_captions, decode_image, encoded_image, webdataset_caption

logger = logging.getLogger(__name__)

URL_SCHEMES = ("pipe:", "http://", "https://", "s3://", "gs://", "hf://")


def stable_seed(*parts: Any) -> int:
    """A 63-bit seed from `parts`, the same in every process (Python's `hash` of a string is salted per process)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def is_url_pattern(spec: str) -> bool:
    """Whether `--dataset` is a webdataset URL pattern (braces, `::`, a `pipe:` command or a remote URL) rather than a
    local path."""
    return "{" in spec or "::" in spec or spec.startswith(URL_SCHEMES)


def expand_shard_urls(spec: str) -> list[str]:
    """open_clip's `--train-data` syntax: `::`-joined patterns with brace ranges (`DIR/{00000..00999}.tar`) and `pipe:`
    commands -> the list of shard URLs; local ones must exist."""
    urls = webdataset.shardlists.expand_urls(spec)
    if not urls:
        raise ValueError(f"--dataset {spec!r} expands to no shard")
    missing = [url for url in urls if not url.startswith(URL_SCHEMES) and not os.path.isfile(url)]
    if missing:
        raise ValueError(
            f"--dataset {spec!r}: {len(missing)} of its {len(urls)} shards do not exist (first: {missing[0]!r})"
        )
    return urls


# ---------------------------------------------------------------------------------------------------------------
# Sources: what a walk reads
# ---------------------------------------------------------------------------------------------------------------


class ShardSource:
    """Shards read one after another: webdataset tars by URL, or the shards of a `datasets` streaming dataset."""

    def __init__(self, names: Sequence[str], dataset: datasets.IterableDataset | None = None):
        self.names = list(names)
        self.dataset = dataset  # None: the names are webdataset URLs

    @classmethod
    def webdataset(cls, urls: Sequence[str]) -> ShardSource:
        return cls(urls)

    @classmethod
    def streaming(cls, dataset: datasets.IterableDataset, name: str) -> ShardSource:
        return cls([f"{name}[shard {index}]" for index in range(dataset.n_shards)], dataset)

    def __len__(self) -> int:
        return len(self.names)

    def read(self, index: int, errors: list) -> Iterator[dict[str, Any]]:
        """The raw samples of shard `index`; a corrupt tar member or an unreadable shard ends the shard and is
        appended to `errors` as (where, reason)."""
        name = self.names[index]
        if self.dataset is not None:
            yield from self._read_streaming(index, name, errors)
            return

        def handler(error: Exception) -> bool:
            errors.append((name, f"unreadable tar data: {type(error).__name__}: {str(error.args[0] if error.args else error)[:120]}"))
            return True

        samples = webdataset.tariterators.tarfile_samples([{"url": name}], handler=handler)
        for sample in samples:
            sample["__where__"] = f"{name} {sample.get('__key__')}"
            yield sample

    def _read_streaming(self, index: int, name: str, errors: list) -> Iterator[dict[str, Any]]:
        shard = self.dataset.shard(num_shards=len(self.names), index=index)
        rows = iter(shard)
        for offset in itertools.count():
            try:
                row = next(rows)
            except StopIteration:
                return
            except Exception as error:  # a broken file of the shard: the rest of it cannot be read
                errors.append((name, f"unreadable: {type(error).__name__}: {str(error)[:120]}"))
                return
            row["__where__"] = f"{name} row {offset}"
            yield row


class IndexedSource:
    """A materialized dataset (random access), its images left encoded (`datasets.Image(decode=False)`) so that
    decoding happens in the stream, where a bad file is a skipped row."""

    def __init__(self, dataset: datasets.Dataset, name: str = "dataset"):
        if isinstance(dataset, datasets.Dataset) and "image" in dataset.column_names:
            feature = dataset.features["image"]
            if isinstance(feature, datasets.Image) and feature.decode:
                dataset = dataset.cast_column("image", datasets.Image(decode=False))
        self.dataset = dataset
        self.name = name

    def __len__(self) -> int:
        return len(self.dataset)

    def row(self, index: int) -> dict[str, Any]:
        row = dict(self.dataset[index])
        image = row.get("image")
        path = image.get("path") if isinstance(image, dict) else None
        row["__where__"] = f"{self.name} row {index}" + (f" ({path})" if path else "")
        return row


# ---------------------------------------------------------------------------------------------------------------
# Walks: a source in seeded order, pass after pass, for one worker slot, with a state
# ---------------------------------------------------------------------------------------------------------------


class _Walk:
    """Walks one source for worker slot `slot` of `slots`; `next()` gives the next raw sample, None at the end of a
    pass. Its state is (pass, unit, offset): the pass number, the shard (or row block) within this slot's share of
    the pass, and how many samples of it were already emitted."""

    def __init__(self, source, seed: int, slot: int, slots: int, shuffle: bool, shuffle_buffer: int,
                 resampled: bool, errors: list):  # fmt: skip
        self.source, self.seed, self.slot, self.slots = source, seed, slot, slots
        self.shuffle, self.shuffle_buffer, self.resampled, self.errors = shuffle, shuffle_buffer, resampled, errors
        self.state = {"pass": 0, "unit": 0, "offset": 0}
        self._samples: Iterator | None = None

    def load_state(self, state: dict) -> None:
        self.state = dict(state)
        self._samples = None

    # -- the order of a pass --
    def _units(self, pass_index: int) -> list[int]:
        """This slot's shard indices for a pass (IndexedSource: its row indices)."""
        count = len(self.source)
        rng = np.random.default_rng(stable_seed(self.seed, "order", pass_index))
        if isinstance(self.source, IndexedSource):
            order = rng.permutation(count) if self.shuffle else np.arange(count)
            return order[self.slot :: self.slots].tolist()
        if self.resampled:
            order = rng.integers(0, count, size=count)
        else:
            order = rng.permutation(count) if self.shuffle else np.arange(count)
        if count >= self.slots:
            return order[self.slot :: self.slots].tolist()
        return order.tolist()  # fewer shards than slots: every slot reads all and keeps every slots-th sample

    def _shard_samples(self, pass_index: int, unit: int, shard: int) -> Iterator[dict]:
        """Samples of one shard in block-shuffled order, with the sample-level split when shards are few."""
        split = len(self.source) < self.slots
        raw = self.source.read(shard, self.errors)
        if split:
            raw = (sample for position, sample in enumerate(raw) if position % self.slots == self.slot)
        if not self.shuffle or self.shuffle_buffer <= 1:
            yield from raw
            return
        for block_index in itertools.count():
            block = list(itertools.islice(raw, self.shuffle_buffer))
            if not block:
                return
            rng = np.random.default_rng(stable_seed(self.seed, "block", pass_index, unit, shard, block_index))
            for position in rng.permutation(len(block)):
                yield block[position]

    def next(self) -> dict[str, Any] | None:
        state = self.state
        if isinstance(self.source, IndexedSource):
            units = self._units_cached(state["pass"])
            if state["offset"] >= len(units):
                self.state = {"pass": state["pass"] + 1, "unit": 0, "offset": 0}
                return None
            row = self.source.row(units[state["offset"]])
            state["offset"] += 1
            return row
        units = self._units_cached(state["pass"])
        while True:
            if state["unit"] >= len(units):
                self.state = {"pass": state["pass"] + 1, "unit": 0, "offset": 0}
                self._samples = None
                return None
            if self._samples is None:
                shard = units[state["unit"]]
                self._samples = self._shard_samples(state["pass"], state["unit"], shard)
                # Resuming inside a shard: re-read its start (a tar stream cannot seek), decoding nothing.
                for _ in itertools.islice(self._samples, state["offset"]):
                    pass
            sample = next(self._samples, None)
            if sample is not None:
                state["offset"] += 1
                return sample
            self._samples = None
            state["unit"] += 1
            state["offset"] = 0

    def _units_cached(self, pass_index: int) -> list[int]:
        if getattr(self, "_units_pass", None) != pass_index:
            self._units_pass, self._units_list = pass_index, self._units(pass_index)
        return self._units_list


# ---------------------------------------------------------------------------------------------------------------
# The stream
# ---------------------------------------------------------------------------------------------------------------


class ImageTextStream(IterableDataset):
    """Decoded, checked image-caption rows from one or more sources, resumable (see the module docstring).

    Args:
        sources: `ShardSource`s and/or `IndexedSource`s.
        weights (*optional*): One weight per source: each row comes from a source drawn with these odds (needs
            `samples_per_epoch`, as a mix has no natural end).
        seed: Seeds the order, the block shuffles, the source draws and each row's `__seed__`.
        shuffle: Shuffle shards / rows each pass, and samples within blocks of `shuffle_buffer`.
        resampled: Draw the shards of each pass with replacement (open_clip's `--dataset-resampled`).
        samples_per_epoch: Rows of one epoch over all ranks and workers (open_clip's `--train-num-samples`); it only
            names the epochs in the logs, as the stream runs until the trainer stops.
        passthrough_columns: Columns of a materialized row kept as they are (e.g. `image_id`, `captions`).
    """

    def __init__(
        self,
        sources: Sequence[ShardSource | IndexedSource],
        weights: Sequence[float] | None = None,
        seed: int = 0,
        shuffle: bool = True,
        shuffle_buffer: int = 1000,
        resampled: bool = False,
        samples_per_epoch: int | None = None,
        passthrough_columns: Sequence[str] = ("image_id", "captions"),
        one_pass: bool = False,
    ):
        if not sources:
            raise ValueError("ImageTextStream needs at least one source")
        if weights is not None:
            if len(weights) != len(sources):
                raise ValueError(f"weights has {len(weights)} entries for {len(sources)} sources")
            if any(weight < 0 for weight in weights) or sum(weights) <= 0:
                raise ValueError(f"weights must be >= 0 with a positive sum, got {list(weights)}")
        self.sources = list(sources)
        self.weights = None if weights is None else [float(weight) / sum(weights) for weight in weights]
        self.seed, self.shuffle, self.shuffle_buffer = seed, shuffle, shuffle_buffer
        self.resampled, self.samples_per_epoch = resampled, samples_per_epoch
        self.passthrough_columns = tuple(passthrough_columns)
        self.one_pass = one_pass  # stop at the end of the first pass (evaluation rows) instead of running on
        self.rank, self.world_size = 0, 1
        self._state: dict | None = None  # loaded by load_state_dict, taken up by the next __iter__
        self._live: dict | None = None

    def distribute(self, rank: int, world_size: int) -> ImageTextStream:
        """Set this process's rank and the number of processes (the trainer does, before building its loader)."""
        self.rank, self.world_size = rank, world_size
        return self

    def materialized_rows(self) -> int | None:
        """Rows of one pass when every source is a materialized dataset; None for shards (unknown until read)."""
        if any(not isinstance(source, IndexedSource) for source in self.sources):
            return None
        return sum(len(source) for source in self.sources)

    # -- torchdata Stateful protocol (called in each worker by StatefulDataLoader) --
    def state_dict(self) -> dict:
        if self._live is None:
            return dict(self._state) if self._state is not None else {}
        return {
            "walks": [dict(walk.state) for walk in self._live["walks"]],
            "yielded": self._live["yielded"],
            "draws": self._live["draws"],
            "skipped": list(self._live["skipped"]),
        }

    def load_state_dict(self, state: dict) -> None:
        self._state = dict(state) if state else None
        self._live = None

    # -- iteration --
    def _slot(self) -> tuple[int, int]:
        worker = get_worker_info()
        workers, worker_id = (worker.num_workers, worker.id) if worker is not None else (1, 0)
        return self.rank * workers + worker_id, self.world_size * workers

    def __iter__(self) -> Iterator[dict[str, Any]]:
        slot, slots = self._slot()
        errors: list = []
        walks = [
            _Walk(source, stable_seed(self.seed, "source", index), slot, slots, self.shuffle, self.shuffle_buffer,
                  self.resampled, errors)
            for index, source in enumerate(self.sources)
        ]  # fmt: skip
        state = self._state or {}
        for walk, walk_state in zip(walks, state.get("walks", [])):
            walk.load_state(walk_state)
        live = {"walks": walks, "yielded": state.get("yielded", 0), "draws": state.get("draws", 0),
                "skipped": list(state.get("skipped", []))}  # fmt: skip
        self._live = live
        draw_rng = np.random.default_rng(stable_seed(self.seed, "draws", slot))
        if self.weights is not None:
            draw_rng.choice(len(walks), size=live["draws"], p=self.weights)  # replay the draws already made
        ended = [False] * len(walks)
        yielded_at_pass_start = None  # rows yielded when the first whole pass of this iteration began
        while True:
            if self.weights is None:
                source_index = live["draws"] % len(walks) if len(walks) > 1 else 0
            else:
                source_index = int(draw_rng.choice(len(walks), p=self.weights))
            live["draws"] += 1
            walk = walks[source_index]
            position = dict(walk.state)
            raw = walk.next()
            live["skipped"].extend(errors)
            errors.clear()
            if raw is None:
                ended[source_index] = True
                if all(ended):
                    if self.one_pass:
                        return
                    if yielded_at_pass_start is not None and live["yielded"] == yielded_at_pass_start:
                        reasons = "; ".join(f"{where}: {reason}" for where, reason in live["skipped"][:3])
                        raise ValueError(
                            f"a whole pass over the data of worker slot {slot} of {slots} gave no usable row"
                            + (f" ({len(live['skipped'])} skipped, e.g. {reasons})" if reasons else "")
                        )
                    ended, yielded_at_pass_start = [False] * len(walks), live["yielded"]
                continue
            try:
                row = self._example(raw)
            except UnusableRow as problem:
                live["skipped"].append((raw.get("__where__", "?"), problem.reason))
                continue
            row["__seed__"] = stable_seed(self.seed, "row", source_index, position["pass"], position["unit"],
                                          position["offset"], slot)  # fmt: skip
            if live["skipped"]:
                row["__skipped__"] = live["skipped"]
                live["skipped"] = []
            live["yielded"] += 1
            yield row

    def _example(self, raw: dict[str, Any]) -> dict[str, Any]:
        """A raw sample or row -> {"image": PIL image, "caption": str, passthrough columns}; `UnusableRow` if it
        cannot be one."""
        if raw.get("visual_feats") is not None or raw.get("visual_feats_file") is not None:  # region features
            row = {key: value for key, value in raw.items() if not key.startswith("__") or key == "__where__"}
            if isinstance(raw.get("captions"), list) and raw["captions"]:
                row["captions"] = check_captions(raw["captions"])
            else:
                row["caption"] = check_caption(raw.get("caption"))
            return row
        if "image" in raw and ("caption" in raw or "captions" in raw):  # materialized or streamed datasets row
            image, caption = raw["image"], raw.get("caption")
        else:  # a webdataset sample
            image, caption = encoded_image(raw)[1], webdataset_caption(raw)
        row = {"__where__": raw.get("__where__")}
        if isinstance(raw.get("captions"), list) and raw["captions"]:
            row["captions"] = check_captions(raw["captions"])
            row["caption"] = row["captions"][0] if caption is None or not str(caption).strip() else check_caption(caption)
        else:
            row["caption"] = check_caption(caption)
        row["image"] = decode_image(image)
        for column in self.passthrough_columns:
            if column in raw and column not in row:
                row[column] = raw[column]
        return row


def stream_captions(stream: ImageTextStream, limit: int = 20000) -> list[str]:
    """Up to `limit` usable captions from the start of `stream`'s sources, read without decoding images (to train a
    tokenizer on)."""
    captions: list[str] = []
    errors: list = []
    for index, source in enumerate(stream.sources):
        walk = _Walk(source, stable_seed(stream.seed, "source", index), 0, 1, False, 1, False, errors)
        while len(captions) < limit * (index + 1) / len(stream.sources):
            raw = walk.next()
            if raw is None:
                break
            values = raw.get("captions") if isinstance(raw.get("captions"), list) else None
            if values is None:
                try:
                    values = [raw["caption"] if "caption" in raw else webdataset_caption(raw)]
                except UnusableRow:
                    continue
            for value in values:
                try:
                    captions.append(check_caption(value))
                except UnusableRow:
                    continue
    return captions


def stream_image_text(
    spec: str | Sequence[str],
    seed: int = 0,
    resampled: bool = False,
    samples_per_epoch: int | None = None,
    weights: Sequence[float] | None = None,
    shuffle: bool = True,
    shuffle_buffer: int = 1000,
) -> ImageTextStream:
    """An `ImageTextStream` over webdataset shards: `spec` is open_clip's `--train-data` syntax (one string with
    `::`-joined patterns), or one such string per source when mixing with `weights`."""
    specs = [spec] if isinstance(spec, str) else list(spec)
    if weights is not None and len(specs) == 1 and "::" in specs[0]:
        specs = specs[0].split("::")  # open_clip: one weight per `::`-separated source
    sources = [ShardSource.webdataset(expand_shard_urls(item)) for item in specs]
    if weights is None and len(sources) > 1:
        sources = [ShardSource.webdataset([url for source in sources for url in source.names])]
    return ImageTextStream(sources, weights=weights, seed=seed, resampled=resampled,
                           samples_per_epoch=samples_per_epoch, shuffle=shuffle, shuffle_buffer=shuffle_buffer)  # fmt: skip
