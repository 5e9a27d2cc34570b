"""Loaders of local corpora into `DatasetDict`s with `image` / `caption` columns (imagefolder, parquet, webdataset
shards, `save_to_disk` folders) or `caption` and region-feature columns, offline; used by the `vlp` commands, and
`read_region_column` by the collators and the ITM evaluation."""

from __future__ import annotations

import contextlib
import json
import logging
import os

import datasets
import numpy as np

from .rows import NOT_TEXT

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Local image-text corpora
# ---------------------------------------------------------------------------------------------

TEXT_COLUMN_CANDIDATES: tuple[str, ...] = ("caption", "text", "txt", "captions", "sentence")
IMAGE_COLUMN_CANDIDATES: tuple[str, ...] = ("image", "img", "jpg", "jpeg", "png", "webp")
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
    "testing": "test",
}
# Captions of an imagefolder, not data files of their own.
_METADATA_FILES = ("metadata.parquet", "metadata.jsonl", "metadata.csv")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def _split_of(name: str) -> str | None:
    """Split named by a file or folder name: "train", "val-00001.tar", "test_0.parquet" ..."""
    stem = os.path.basename(name).split(".")[0].lower()
    for separator in ("-", "_"):
        stem = stem.split(separator)[0]
    return _SPLIT_ALIASES.get(stem)


def _files_by_split(directory: str, suffix: str) -> dict[str, list[str]]:
    """Files ending in `suffix` under `directory`, grouped by the split their name or folder says.

    Files whose path names no split all go to "train", unless no file names a split, in which
    case everything is "train" as well.
    """
    grouped: dict[str, list[str]] = {}
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files):
            if not name.lower().endswith(suffix) or name in _METADATA_FILES:
                continue
            path = os.path.join(root, name)
            relative = os.path.relpath(path, directory).split(os.sep)
            split = next((s for s in map(_split_of, relative) if s is not None), "train")
            grouped.setdefault(split, []).append(path)
    return grouped


def _has_files(directory: str, suffixes: tuple[str, ...]) -> bool:
    for _, _, files in os.walk(directory):
        if any(name.lower().endswith(suffixes) for name in files):
            return True
    return False


@contextlib.contextmanager
def _without_load_count_ping():
    # Unless offline, datasets sends a HEAD request to S3 to count every use of a packaged builder
    # (up to a 3 s timeout when there is no network). Reading local files needs no network at all.
    previous = datasets.config.HF_UPDATE_DOWNLOAD_COUNTS
    datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False
    try:
        yield
    finally:
        datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = previous


def _build(builder: str, path: str, cache_dir: str | None, **kwargs) -> datasets.DatasetDict:
    try:
        with _without_load_count_ping():
            return datasets.load_dataset(builder, cache_dir=cache_dir, **kwargs)
    except datasets.exceptions.DatasetGenerationError as error:
        # The builder's message is generic; the cause (a corrupt or zero-row file) is the news.
        cause = error.__cause__ or error
        raise ValueError(f"Could not read {path!r} with the {builder!r} builder: {cause!r}") from error


def _load_raw(path: str, cache_dir: str | None) -> datasets.DatasetDict:
    if os.path.isfile(path):
        lower = path.lower()
        if lower.endswith(".parquet"):
            return _build("parquet", path, cache_dir, data_files={"train": [path]})
        if lower.endswith(".tar"):
            return _build("webdataset", path, cache_dir, data_files={"train": [path]})
        raise ValueError(
            f"Cannot load {path!r}: a single file must be a .parquet file or a webdataset .tar shard."
        )
    entries = set(os.listdir(path))
    if "dataset_dict.json" in entries or "state.json" in entries:
        try:
            loaded = datasets.load_from_disk(path)
        except IndexError as error:
            # datasets 5.x saves a zero-row split but fails to concatenate its zero tables on load.
            raise ValueError(
                f"Could not read {path!r} with datasets.load_from_disk ({error!r}); this happens when one of "
                "its splits is empty"
            ) from error
        return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({"train": loaded})
    parquet_files = _files_by_split(path, ".parquet")
    if parquet_files:
        return _build("parquet", path, cache_dir, data_files=parquet_files)
    tar_files = _files_by_split(path, ".tar")
    if tar_files:
        return _build("webdataset", path, cache_dir, data_files=tar_files)
    if _has_files(path, _IMAGE_SUFFIXES):
        jsonl = {split: files for split, files in _metadata_files(path).items()
                 if all(file.endswith("metadata.jsonl") for file in files)}  # fmt: skip
        if jsonl:
            return _read_imagefolder_jsonl(jsonl)
        return _build("imagefolder", path, cache_dir, data_dir=path)
    raise ValueError(
        f"Cannot load {path!r}: expected an imagefolder (images + metadata.jsonl/metadata.csv), "
        f".parquet files, webdataset .tar shards or a save_to_disk directory; found {sorted(entries)[:20]}."
    )


def _read_imagefolder_jsonl(files_by_split: dict[str, list[str]], log_first: int = 10) -> datasets.DatasetDict:
    """An imagefolder's `metadata.jsonl` files read line by line, so that a broken line is a skipped row (logged with
    its file and line) and a caption that is not text, or a file that is missing, a row the row checks skip (with a
    reason), instead of a failed load."""
    result = {}
    for split, files in files_by_split.items():
        rows, skipped = [], []
        for metadata in files:
            folder = os.path.dirname(metadata)
            with open(metadata, encoding="utf-8", errors="replace") as handle:
                for number, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    where = f"{metadata}:{number}"
                    try:
                        row = json.loads(line)
                    except ValueError as error:
                        skipped.append((where, f"not a JSON object ({error})"))
                        continue
                    name = row.get("file_name") if isinstance(row, dict) else None
                    if not isinstance(name, str) or not name:
                        skipped.append((where, "no file_name"))
                        continue
                    # A missing file stays a row: the training stream and the evaluation skip and count it.
                    image = os.path.normpath(os.path.join(folder, name))
                    row = {key: value for key, value in row.items() if key != "file_name"}
                    row["image"] = image
                    rows.append(row)
        for where, reason in skipped[:log_first]:
            logger.warning("Skipped %s: %s.", where, reason)
        if skipped:
            logger.warning("%s split: %d metadata rows skipped, %d kept.", split, len(skipped), len(rows))
        result[split] = _rows_dataset(rows)
    return datasets.DatasetDict(result)


def _rows_dataset(rows: list[dict]) -> datasets.Dataset:
    """Metadata rows (with an `image` path) as a dataset; a column whose values Arrow cannot hold in one type (a
    caption that is sometimes a number) is kept as text or None, so the row checks can name the bad rows."""
    columns = sorted({key for row in rows for key in row})
    data = {column: [row.get(column) for row in rows] for column in columns}
    for column in columns:
        kinds = {type(value) for value in data[column] if value is not None}
        if len(kinds) > 1 and str in kinds:  # e.g. a numeric caption among strings: keep it visible as invalid
            data[column] = [value if isinstance(value, (str, type(None))) else NOT_TEXT for value in data[column]]
        elif len(kinds) > 1:
            data[column] = [None if value is None else json.dumps(value) for value in data[column]]
    features = datasets.Dataset.from_dict({k: v for k, v in data.items() if k != "image"}).features if rows else {}
    features = datasets.Features({**features, "image": datasets.Image()})
    return datasets.Dataset.from_dict(data, features=features)


def _is_image_like(feature) -> bool:
    if isinstance(feature, datasets.Image):
        return True
    if isinstance(feature, datasets.Value) and feature.dtype in ("binary", "large_binary"):
        return True
    return isinstance(feature, dict) and set(feature) == {"bytes", "path"}


def _given_column(features: datasets.Features, argument: str, column: str, path: str) -> str:
    """The column a caller named (`argument=column`), checked to exist."""
    if column not in features:
        raise ValueError(f"{argument}={column!r} is not a column of {path!r}; columns found: {list(features)}")
    return column


def _find_image_column(features: datasets.Features, image_column: str | None, path: str) -> str:
    if image_column is not None:
        return _given_column(features, "image_column", image_column, path)
    for name in IMAGE_COLUMN_CANDIDATES:
        if name in features and _is_image_like(features[name]):
            return name
    for name, feature in features.items():
        if isinstance(feature, datasets.Image):
            return name
    raise ValueError(
        f"No image column found in {path!r}: looked for an Image feature or one of "
        f"{IMAGE_COLUMN_CANDIDATES}; columns found: {dict(features)}. Pass image_column=..."
    )


def _is_string_list(feature) -> bool:
    return isinstance(feature, (datasets.List, datasets.LargeList, datasets.Sequence)) and (
        isinstance(feature.feature, datasets.Value) and feature.feature.dtype in ("string", "large_string")
    )


def _find_text_column(features: datasets.Features, text_column: str | None, path: str) -> str:
    """`text_column` (which may not stand beside a `caption` column that renaming it would overwrite), else the
    first of `TEXT_COLUMN_CANDIDATES` present, else a webdataset `json` sidecar with a caption."""
    if text_column is not None:
        _given_column(features, "text_column", text_column, path)
        if "caption" in features and text_column not in ("caption", "captions"):
            raise ValueError(
                f"text_column={text_column!r} was chosen but {path!r} already has a 'caption' column; "
                "drop or rename it first"
            )
        return text_column
    for name in TEXT_COLUMN_CANDIDATES:
        if name in features:
            return name
    # webdataset shards often carry the caption inside a .json sidecar.
    if isinstance(features.get("json"), dict) and "caption" in features["json"]:
        return "json"
    raise ValueError(
        f"No text column found in {path!r}: looked for {TEXT_COLUMN_CANDIDATES} or json['caption']; "
        f"columns found: {list(features)}. Pass text_column=..."
    )


def _normalise_text(ds: datasets.Dataset, text_column: str) -> datasets.Dataset:
    text_feature = ds.features[text_column]
    if text_column == "json":
        texts = ds.select_columns(["json"])["json"]
        ds = ds.add_column("caption", [None if item is None else item.get("caption") for item in texts])
    elif _is_string_list(text_feature):
        # A list of reference captions: keep them all as `captions`, the first is the main one.
        texts = ds.select_columns([text_column])[text_column]
        ds = ds.add_column("caption", [items[0] if items else "" for items in texts])
        if text_column != "captions":
            ds = ds.rename_column(text_column, "captions")
    elif text_column != "caption":
        ds = ds.rename_column(text_column, "caption")
    if not isinstance(ds.features["caption"], datasets.Value) or ds.features["caption"].dtype not in (
        "string",
        "large_string",
    ):
        raise ValueError(
            f"text column {text_column!r} must hold strings or lists of strings, got {text_feature}"
        )
    return ds


def _normalise_split(ds: datasets.Dataset, image_column: str, text_column: str) -> datasets.Dataset:
    ds = _normalise_text(ds, text_column)
    if image_column != "image":
        ds = ds.rename_column(image_column, "image")
    if not isinstance(ds.features["image"], datasets.Image):
        ds = ds.cast_column("image", datasets.Image())
    return ds


def load_image_text_dataset(
    path: str | os.PathLike,
    image_column: str | None = None,
    text_column: str | None = None,
    cache_dir: str | None = None,
) -> datasets.DatasetDict:
    """Load a local image-text corpus as a `DatasetDict` with columns `image` and `caption`.

    `path` may be:
      - an imagefolder: images with a `metadata.jsonl` / `metadata.csv` (`file_name` + caption),
        optionally in `train/`, `validation/` (or `val/`, `dev/`) and `test/` folders;
      - a `.parquet` file, or a folder of them (split from file or folder names, e.g.
        `train-0000.parquet`, `validation/part-0.parquet`; unnamed files go to `train`);
      - a webdataset `.tar` shard or a folder of shards (image under jpg/jpeg/png/webp, caption under
        txt or json["caption"]), split from names as for parquet;
      - a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`.

    The image column is `image_column` or detected (an `Image` feature, or one of
    `IMAGE_COLUMN_CANDIDATES`); the text column is `text_column` or the first of
    `TEXT_COLUMN_CANDIDATES`. They are renamed to `image` and `caption`; a text column holding
    lists of captions is kept as `captions` and its first entry becomes `caption`. Other columns
    are kept. Only local files are read, so this works with `HF_DATASETS_OFFLINE=1`.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"Dataset path {path!r} does not exist")
    raw = _load_raw(path, cache_dir)
    result = {}
    for split, ds in raw.items():
        split = _SPLIT_ALIASES.get(split, split)
        if split in result:
            raise ValueError(f"{path!r} has two splits that both mean {split!r}: {list(raw)}")
        if len(ds) == 0:
            raise ValueError(f"Split {split!r} of {path!r} is empty (columns: {ds.column_names})")
        found_image = _find_image_column(ds.features, image_column, path)
        found_text = _find_text_column(ds.features, text_column, path)
        result[split] = _normalise_split(ds, found_image, found_text)
    return datasets.DatasetDict(result)


# ---------------------------------------------------------------------------------------------
# Local corpora of captions with precomputed region features
# ---------------------------------------------------------------------------------------------

REGION_COLUMNS: tuple[str, ...] = ("visual_feats", "visual_pos", "region_class_scores", "region_labels")
_REQUIRED_REGION_COLUMNS = ("visual_feats", "visual_pos")
_METADATA_BUILDERS = {"metadata.jsonl": "json", "metadata.csv": "csv", "metadata.parquet": "parquet"}


def read_region_column(row: dict, column: str) -> np.ndarray | list | None:
    """The region array of `column` in a row: the value itself (a nested list or array), or the `.npy` file named by
    `<column>_file` (read with `allow_pickle=False`); None when the row has neither."""
    value = row.get(column)
    if value is not None:
        return value
    path = row.get(column + "_file")
    if path is None:
        return None
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"Could not read {column + '_file'}={path!r} as a .npy array: {error}") from error


def _metadata_files(path: str) -> dict[str, list[str]]:
    """metadata.jsonl / .csv / .parquet files under `path`, grouped by the split their folder names."""
    grouped: dict[str, list[str]] = {}
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            if name in _METADATA_BUILDERS:
                relative = os.path.relpath(root, path)
                parts = [] if relative == "." else relative.split(os.sep)
                split = next((s for s in map(_split_of, parts) if s is not None), "train")
                grouped.setdefault(split, []).append(os.path.join(root, name))
    return grouped


def _resolve_region_files(ds: datasets.Dataset, directory: str, metadata: str) -> datasets.Dataset:
    """`<column>_file` paths relative to the metadata file's folder -> absolute paths, checked to exist."""
    for column in REGION_COLUMNS:
        file_column = column + "_file"
        if file_column not in ds.column_names or column in ds.column_names:
            continue
        paths = []
        for index, name in enumerate(ds[file_column]):
            if not isinstance(name, str) or not name:
                raise ValueError(f"Row {index} of {metadata!r} has {file_column}={name!r}; expected a .npy path")
            paths.append(name if os.path.isabs(name) else os.path.normpath(os.path.join(directory, name)))
        missing = [(index, p) for index, p in enumerate(paths) if not os.path.isfile(p)]
        if missing:
            examples = ", ".join(f"row {index}: {p!r}" for index, p in missing[:3])
            raise ValueError(
                f"{len(missing)} {file_column} file(s) of {metadata!r} do not exist ({examples}); paths are relative "
                "to the folder of the metadata file"
            )
        ds = ds.remove_columns(file_column).add_column(file_column, paths)
    return ds


def _check_region_row(row: dict, where: str) -> None:
    """Fail at load time, not mid-training, when the first row's regions are not (N, D) features and (N, 4 or 5)
    boxes."""
    feats = np.asarray(read_region_column(row, "visual_feats"))
    boxes = np.asarray(read_region_column(row, "visual_pos"))
    if feats.ndim != 2 or feats.shape[0] == 0:
        raise ValueError(f"visual_feats of the first row of {where} has shape {feats.shape}; expected (N, D), N > 0")
    if boxes.shape != (feats.shape[0], 4) and boxes.shape != (feats.shape[0], 5):
        raise ValueError(
            f"visual_pos of the first row of {where} has shape {boxes.shape}; expected ({feats.shape[0]}, 4) boxes "
            "(x1, y1, x2, y2) normalised to [0, 1], or 5 columns with the area"
        )


def load_region_text_dataset(
    path: str | os.PathLike,
    text_column: str | None = None,
    cache_dir: str | None = None,
) -> datasets.DatasetDict:
    """Load captions with precomputed region features (the input of VisualBERT / UNITER style models).

    `path` is a folder with a `metadata.jsonl`, `metadata.csv` or `metadata.parquet` (optionally one per
    `train/`, `validation/` (`val/`, `dev/`) and `test/` subfolder), or a `save_to_disk` folder. Each row has a
    caption (`text_column` or the first of `TEXT_COLUMN_CANDIDATES`; renamed `caption` as in
    `load_image_text_dataset`) and its regions, either as columns holding the arrays:
        visual_feats: `(N, D)` features; visual_pos: `(N, 4)` boxes `(x1, y1, x2, y2)` normalised to [0, 1]
        (or `(N, 5)` with the area); optionally region_class_scores `(N, C)` and region_labels `(N,)`,
    or as `visual_feats_file`, `visual_pos_file` (...) columns naming `.npy` files relative to the metadata
    file's folder. The file paths are made absolute and checked to exist; the arrays are read (with numpy,
    `allow_pickle=False`) by the collators when a batch is made (`read_region_column`), so features are not
    copied into the dataset cache. Other columns (`image_id`, ...) are kept.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ValueError(f"Region dataset path {path!r} is not an existing folder")
    entries = set(os.listdir(path))
    if "dataset_dict.json" in entries or "state.json" in entries:
        raw = {split: [(ds, path, path)] for split, ds in _load_raw(path, cache_dir).items()}
    else:
        metadata_files = _metadata_files(path)
        if not metadata_files:
            raise ValueError(
                f"Cannot load {path!r}: expected a metadata.jsonl, metadata.csv or metadata.parquet with a caption "
                f"and visual_feats / visual_pos (or visual_feats_file / visual_pos_file) per row, or a save_to_disk "
                f"folder; found {sorted(entries)[:20]}"
            )
        raw = {}
        for split, files in metadata_files.items():
            for file in files:
                builder = _METADATA_BUILDERS[os.path.basename(file)]
                ds = _build(builder, file, cache_dir, data_files={"train": [file]})["train"]
                raw.setdefault(_SPLIT_ALIASES.get(split, split), []).append((ds, file, os.path.dirname(file)))
    result = {}
    for split, parts in raw.items():
        split = _SPLIT_ALIASES.get(split, split)
        loaded = []
        for ds, where, directory in parts:
            if len(ds) == 0:
                raise ValueError(f"Split {split!r} of {path!r} is empty ({where!r}, columns: {ds.column_names})")
            missing = [
                column
                for column in _REQUIRED_REGION_COLUMNS
                if column not in ds.column_names and column + "_file" not in ds.column_names
            ]
            if missing:
                raise ValueError(
                    f"{where!r} has no {' / '.join(missing)} column (nor {missing[0]}_file naming .npy files); "
                    f"columns found: {ds.column_names}"
                )
            ds = _resolve_region_files(ds, directory, where)
            found_text = _find_text_column(ds.features, text_column, where)
            ds = _normalise_text(ds, found_text)
            _check_region_row(ds[0], repr(where))
            loaded.append(ds)
        result[split] = loaded[0] if len(loaded) == 1 else datasets.concatenate_datasets(loaded)
    return datasets.DatasetDict(result)


def pick_eval_split(dataset_dict: datasets.DatasetDict) -> str:
    """Name of the split to evaluate on: "validation" if present, else "test"."""
    for name in ("validation", "test", "valid", "val", "dev"):
        if name in dataset_dict:
            return name
    raise ValueError(
        f"No evaluation split: expected 'validation' or 'test', found splits {list(dataset_dict)}"
    )
