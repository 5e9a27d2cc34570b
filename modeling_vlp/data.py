"""Image-text datasets: an embedded synthetic default and a loader for local corpora.

`make_scenes_dataset` draws captioned scenes of coloured shapes with PIL, so that every example,
test and smoke run has a real image-text corpus without downloading anything. The scenes are
simple on purpose (light background, large shapes, few well separated colours) so that a tiny
dual encoder trained for minutes on a CPU learns retrieval well above chance.

`load_image_text_dataset` turns the usual local formats (imagefolder with metadata, parquet,
webdataset shards, `save_to_disk` output) into a `DatasetDict` with an `image` and a `caption`
column. It only uses datasets' packaged builders on local files, so it works offline.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Sequence

import datasets
import numpy as np
from PIL import Image, ImageDraw


# ---------------------------------------------------------------------------------------------
# Synthetic captioned scenes
# ---------------------------------------------------------------------------------------------

SCENE_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 200, 20),
    "purple": (140, 50, 180),
    "orange": (250, 130, 20),
    "black": (30, 30, 30),
}
SCENE_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
SCENE_SIZES: tuple[str, ...] = ("small", "large")
SCENE_POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "center")
# Relation of the first object to the second one, as written in the main caption.
SCENE_RELATIONS: tuple[str, ...] = ("to the left of", "to the right of", "above", "below")

ZERO_SHOT_TEMPLATES: tuple[str, ...] = (
    "a {}.",
    "a picture of a {}.",
    "a drawing of a {}.",
    "a {} on a white background.",
    "a photo of a {}.",
    "an image showing a {}.",
)

# Radius of a shape as a fraction of the image side; the shape fits in a 2r x 2r box.
_RADIUS = {"small": 0.11, "large": 0.19}
# Centre of an object placed at a named position, as fractions of the image side.
_ANCHORS = {
    "left": (0.27, 0.5),
    "right": (0.73, 0.5),
    "top": (0.5, 0.27),
    "bottom": (0.5, 0.73),
    "center": (0.5, 0.5),
}
_JITTER = 0.04
_COLOUR_JITTER = 12
# Drawn at this multiple of the output size, then box-filtered down: cheap anti-aliasing.
_SUPERSAMPLE = 2
_SPLIT_STREAMS = {"train": 0, "validation": 1, "test": 2}

_WHERE = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
_WHERE_LONG = {
    "left": "on the left side of the image",
    "right": "on the right side of the image",
    "top": "at the top of the image",
    "bottom": "at the bottom of the image",
    "center": "in the middle of the image",
}
_SIZE_SYNONYM = {"small": "little", "large": "big"}
_INVERSE_RELATION = {
    "to the left of": "to the right of",
    "to the right of": "to the left of",
    "above": "below",
    "below": "above",
}
_SHORT_RELATION = {"to the left of": "left of", "to the right of": "right of", "above": "over", "below": "under"}
# Positions of (first, second) object for each relation of the first to the second.
_RELATION_POSITIONS = {
    "to the left of": ("left", "right"),
    "to the right of": ("right", "left"),
    "above": ("top", "bottom"),
    "below": ("bottom", "top"),
}


def scene_class_names() -> list[str]:
    """Zero-shot class names of the scenes dataset: "<colour> <shape>" of the main object."""
    return [f"{colour} {shape}" for colour in SCENE_COLOURS for shape in SCENE_SHAPES]


def _scene_features() -> datasets.Features:
    return datasets.Features(
        {
            "image": datasets.Image(),
            "caption": datasets.Value("string"),
            "captions": datasets.List(datasets.Value("string")),
            "image_id": datasets.Value("int64"),
            "label": datasets.ClassLabel(names=scene_class_names()),
            "relation": datasets.Value("string"),
            "objects": datasets.List(
                {
                    "shape": datasets.Value("string"),
                    "colour": datasets.Value("string"),
                    "size": datasets.Value("string"),
                    "position": datasets.Value("string"),
                    "x": datasets.Value("float32"),
                    "y": datasets.Value("float32"),
                }
            ),
        }
    )


def _shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        r *= 0.85  # a full-radius square looks much heavier than the other shapes
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        # Equilateral, pointing up, centred on its bounding box rather than its centroid.
        half = r * math.sqrt(3) / 2 * 1.1
        return [(cx, cy - r), (cx + half, cy + r * 0.75), (cx - half, cy + r * 0.75)]
    if shape == "star":
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * 0.45
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        return points
    if shape == "cross":
        w = r * 0.36
        return [
            (cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w),
            (cx + r, cy + w), (cx + w, cy + w), (cx + w, cy + r), (cx - w, cy + r),
            (cx - w, cy + w), (cx - r, cy + w), (cx - r, cy - w), (cx - w, cy - w),
        ]  # fmt: skip
    raise ValueError(f"shape={shape!r} is not one of {SCENE_SHAPES}")


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon(_shape_polygon(shape, cx, cy, r), fill=fill)


def _object_phrase(obj: dict, size_word: str | None = None) -> str:
    return f"{size_word or obj['size']} {obj['colour']} {obj['shape']}"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _scene_captions(objects: list[dict], relation: str) -> list[str]:
    first = objects[0]
    if len(objects) == 1:
        where = first["position"]
        return [
            f"a {_object_phrase(first)} {_WHERE[where]}",
            f"there is a {_object_phrase(first, _SIZE_SYNONYM[first['size']])} {_WHERE[where]}",
            f"{_article(first['colour'])} {first['colour']} {first['shape']}, {first['size']}, {_WHERE_LONG[where]}",
        ]
    second = objects[1]
    return [
        f"a {_object_phrase(first)} {relation} a {_object_phrase(second)}",
        f"a {_object_phrase(second)} {_INVERSE_RELATION[relation]} a {_object_phrase(first)}",
        f"there is a {_object_phrase(first, _SIZE_SYNONYM[first['size']])} {_SHORT_RELATION[relation]} "
        f"a {_object_phrase(second, _SIZE_SYNONYM[second['size']])}",
    ]


def _pick(rng: np.random.Generator, options: Sequence):
    return options[int(rng.integers(len(options)))]


def _sample_scene(rng: np.random.Generator) -> tuple[list[dict], str]:
    colours = list(SCENE_COLOURS)
    num_objects = 1 + int(rng.integers(2))
    objects = []
    while len(objects) < num_objects:
        obj = {"shape": _pick(rng, SCENE_SHAPES), "colour": _pick(rng, colours), "size": _pick(rng, SCENE_SIZES)}
        # Two identical-looking objects would make "the red circle" ambiguous in questions.
        if any(o["shape"] == obj["shape"] and o["colour"] == obj["colour"] for o in objects):
            continue
        objects.append(obj)
    if num_objects == 1:
        relation = ""
        positions = [_pick(rng, SCENE_POSITIONS)]
    else:
        relation = _pick(rng, SCENE_RELATIONS)
        positions = list(_RELATION_POSITIONS[relation])
    for obj, position in zip(objects, positions):
        ax, ay = _ANCHORS[position]
        # Objects of a pair may drift along the axis that does not carry the relation.
        wide = num_objects == 2
        x_jitter = 0.1 if wide and position in ("top", "bottom") else _JITTER
        y_jitter = 0.1 if wide and position in ("left", "right") else _JITTER
        obj["position"] = position
        obj["x"] = float(np.float32(ax + rng.uniform(-x_jitter, x_jitter)))
        obj["y"] = float(np.float32(ay + rng.uniform(-y_jitter, y_jitter)))
    return objects, relation


def _render_scene(objects: list[dict], rng: np.random.Generator, image_size: int) -> bytes:
    canvas = image_size * _SUPERSAMPLE
    background = tuple(int(v) for v in rng.integers(235, 256, size=3))
    image = Image.new("RGB", (canvas, canvas), background)
    draw = ImageDraw.Draw(image)
    for obj in objects:
        base = np.array(SCENE_COLOURS[obj["colour"]])
        fill = tuple(int(v) for v in np.clip(base + rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1, 3), 0, 255))
        _draw_shape(draw, obj["shape"], obj["x"] * canvas, obj["y"] * canvas, _RADIUS[obj["size"]] * canvas, fill)
    if _SUPERSAMPLE != 1:
        image = image.resize((image_size, image_size), Image.Resampling.BOX)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _make_scenes_split(num_examples: int, split: str, seed: int, image_size: int, first_image_id: int):
    class_index = {name: i for i, name in enumerate(scene_class_names())}
    columns = {name: [] for name in _scene_features()}
    stream = _SPLIT_STREAMS[split]
    for index in range(num_examples):
        # One generator per (seed, split, index): an example does not depend on how many others
        # are drawn, and the splits come from disjoint seed streams.
        rng = np.random.default_rng([seed, stream, index])
        objects, relation = _sample_scene(rng)
        captions = _scene_captions(objects, relation)
        columns["image"].append({"bytes": _render_scene(objects, rng, image_size), "path": None})
        columns["caption"].append(captions[0])
        columns["captions"].append(captions)
        columns["image_id"].append(first_image_id + index)
        columns["label"].append(class_index[f"{objects[0]['colour']} {objects[0]['shape']}"])
        columns["relation"].append(relation)
        columns["objects"].append(objects)
    return datasets.Dataset.from_dict(columns, features=_scene_features(), split=split)


def make_scenes_dataset(
    num_train: int = 2000,
    num_validation: int = 500,
    image_size: int = 64,
    seed: int = 0,
    num_test: int = 0,
) -> datasets.DatasetDict:
    """Generate captioned scenes of one or two coloured shapes; no download, deterministic by seed.

    Columns:
        image: `datasets.Image`, RGB PNG of side `image_size`.
        caption: the main caption, e.g. "a large red circle to the left of a small blue square".
        captions: three paraphrases of the same scene, `captions[0] == caption`.
        image_id: int, unique across the splits of one call.
        label: `ClassLabel` over `scene_class_names()`, "<colour> <shape>" of the first object.
        relation: relation of the first object to the second ("to the left of", "to the right of",
            "above", "below"), "" when the scene has one object.
        objects: list of {shape, colour, size, position, x, y}; x, y are the centre as fractions
            of the image side and position is one of left/right/top/bottom/center.

    The same `seed` gives byte-identical images and captions; train, validation and test draw
    from disjoint seed streams. A `test` split is added only when `num_test > 0`.
    """
    for name, value in (("num_train", num_train), ("num_validation", num_validation), ("num_test", num_test)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16 pixels for the shapes to be recognisable, got {image_size}")
    counts = {"train": num_train, "validation": num_validation}
    if num_test:
        counts["test"] = num_test
    splits, first_image_id = {}, 0
    for split, count in counts.items():
        splits[split] = _make_scenes_split(count, split, seed, image_size, first_image_id)
        first_image_id += count
    return datasets.DatasetDict(splits)


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
        return _build("imagefolder", path, cache_dir, data_dir=path)
    raise ValueError(
        f"Cannot load {path!r}: expected an imagefolder (images + metadata.jsonl/metadata.csv), "
        f".parquet files, webdataset .tar shards or a save_to_disk directory; found {sorted(entries)[:20]}."
    )


def _is_image_like(feature) -> bool:
    if isinstance(feature, datasets.Image):
        return True
    if isinstance(feature, datasets.Value) and feature.dtype in ("binary", "large_binary"):
        return True
    return isinstance(feature, dict) and set(feature) == {"bytes", "path"}


def _find_image_column(features: datasets.Features, image_column: str | None, path: str) -> str:
    if image_column is not None:
        if image_column not in features:
            raise ValueError(
                f"image_column={image_column!r} is not a column of {path!r}; columns found: {list(features)}"
            )
        return image_column
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
    if text_column is not None:
        if text_column not in features:
            raise ValueError(
                f"text_column={text_column!r} is not a column of {path!r}; columns found: {list(features)}"
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


def _normalise_split(ds: datasets.Dataset, image_column: str, text_column: str) -> datasets.Dataset:
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
        if "caption" in ds.features and found_text not in ("caption", "captions"):
            raise ValueError(
                f"text_column={found_text!r} was chosen but {path!r} already has a 'caption' column; "
                "drop or rename it first"
            )
        result[split] = _normalise_split(ds, found_image, found_text)
    return datasets.DatasetDict(result)


def pick_eval_split(dataset_dict: datasets.DatasetDict) -> str:
    """Name of the split to evaluate on: "validation" if present, else "test"."""
    for name in ("validation", "test", "valid", "val", "dev"):
        if name in dataset_dict:
            return name
    raise ValueError(
        f"No evaluation split: expected 'validation' or 'test', found splits {list(dataset_dict)}"
    )
