"""Image-text datasets: an embedded synthetic default and a loader for local corpora.

`make_scenes_dataset` draws captioned scenes of coloured shapes with PIL, so that every example,
test and smoke run has a real image-text corpus without downloading anything. The scenes are
simple on purpose (light background, large shapes, few well separated colours) so that a tiny
dual encoder trained for minutes on a CPU learns retrieval well above chance.

`make_scenes_vqa_dataset` asks questions about the same scenes (colour, shape, count, relation)
with ten VQA-style annotator answers each, and `make_scenes_dataset(region_features=D)` adds the
regions a precomputed object detector would give (synthetic ones) for region-input models.

`load_image_text_dataset` turns the usual local formats (imagefolder with metadata, parquet,
webdataset shards, `save_to_disk` output) into a `DatasetDict` with an `image` and a `caption`
column; `load_region_text_dataset` does the same for captions with precomputed region features.
They only use datasets' packaged builders on local files, so they work offline.
"""

from __future__ import annotations

import collections
import contextlib
import functools
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


def _draw_scene(seed: int, split: str, index: int, image_size: int) -> tuple[list[dict], str, bytes]:
    # One generator per (seed, split, index): an example does not depend on how many others are drawn, the splits
    # come from disjoint seed streams, and every dataset built on the scenes sees the same image for an index.
    rng = np.random.default_rng([seed, _SPLIT_STREAMS[split], index])
    objects, relation = _sample_scene(rng)
    return objects, relation, _render_scene(objects, rng, image_size)


def _make_scenes_split(
    num_examples: int, split: str, seed: int, image_size: int, first_image_id: int, region_features: int = 0
):
    class_index = {name: i for i, name in enumerate(scene_class_names())}
    features = _scene_features()
    if region_features:
        features.update(_region_features_schema())
    columns = {name: [] for name in features}
    for index in range(num_examples):
        objects, relation, png = _draw_scene(seed, split, index, image_size)
        captions = _scene_captions(objects, relation)
        columns["image"].append({"bytes": png, "path": None})
        columns["caption"].append(captions[0])
        columns["captions"].append(captions)
        columns["image_id"].append(first_image_id + index)
        columns["label"].append(class_index[f"{objects[0]['colour']} {objects[0]['shape']}"])
        columns["relation"].append(relation)
        columns["objects"].append(objects)
        if region_features:
            rng = np.random.default_rng([seed, _SPLIT_STREAMS[split], index, _REGION_STREAM])
            for name, value in scene_region_features(objects, region_features, rng).items():
                columns[name].append(value)
    return datasets.Dataset.from_dict(columns, features=features, split=split)


def make_scenes_dataset(
    num_train: int = 2000,
    num_validation: int = 500,
    image_size: int = 64,
    seed: int = 0,
    num_test: int = 0,
    region_features: int = 0,
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

    With `region_features=D > 0`, also the regions a precomputed object detector would give
    (see `scene_region_features`; synthetic, not from a detector), one whole-image region first,
    then one per object:
        visual_feats: `(N_i, D)` float32 features.
        visual_pos: `(N_i, 4)` boxes `(x1, y1, x2, y2)` normalised to [0, 1].
        region_class_scores: `(N_i, len(SCENE_SHAPES))` the "detector's" class distribution.
        region_labels: `(N_i,)` shape index of each object, -100 for the whole-image region.

    The same `seed` gives byte-identical images and captions (with or without region features);
    train, validation and test draw from disjoint seed streams. A `test` split is added only
    when `num_test > 0`.
    """
    for name, value in (("num_train", num_train), ("num_validation", num_validation), ("num_test", num_test)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    _check_image_size(image_size)
    if region_features < 0:
        raise ValueError(f"region_features must be 0 (none) or a feature dim > 0, got {region_features}")
    splits = {}
    for split, count, first_image_id in _split_counts(num_train, num_validation, num_test):
        splits[split] = _make_scenes_split(count, split, seed, image_size, first_image_id, region_features)
    return datasets.DatasetDict(splits)


def _check_image_size(image_size: int) -> None:
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16 pixels for the shapes to be recognisable, got {image_size}")


def _split_counts(num_train: int, num_validation: int, num_test: int) -> list[tuple[str, int, int]]:
    """(split, number of images, first image id): image ids are unique across the splits of one call."""
    for name, value in (("num_train", num_train), ("num_validation", num_validation), ("num_test", num_test)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    counts = [("train", num_train), ("validation", num_validation)] + ([("test", num_test)] if num_test else [])
    result, first_image_id = [], 0
    for split, count in counts:
        result.append((split, count, first_image_id))
        first_image_id += count
    return result


# ---------------------------------------------------------------------------------------------
# Synthetic detector regions for the scenes
# ---------------------------------------------------------------------------------------------

# Third keys of the per-example seed streams: region noise and questions never change the images or captions.
_REGION_STREAM = 1
_VQA_STREAM = 2
_PROJECTION_SEED = 20240501
_REGION_FEATURE_NOISE = 0.1
_CLASS_SCORE_SHARPNESS = 4.0
IGNORE_REGION_LABEL = -100


def _region_features_schema() -> dict:
    matrix = datasets.List(datasets.List(datasets.Value("float32")))
    return {
        "visual_feats": matrix,
        "visual_pos": matrix,
        "region_class_scores": matrix,
        "region_labels": datasets.List(datasets.Value("int64")),
    }


@functools.lru_cache(maxsize=8)
def _region_projection(feature_dim: int) -> np.ndarray:
    # Fixed for a feature dim whatever the dataset seed: one "detector" for every split and every call.
    inputs = len(SCENE_SHAPES) + len(SCENE_COLOURS) + 1
    rng = np.random.default_rng([_PROJECTION_SEED, feature_dim])
    return (rng.standard_normal((inputs, feature_dim)) / math.sqrt(inputs)).astype(np.float32)


def _object_attributes(obj: dict) -> np.ndarray:
    """[one-hot shape, one-hot colour, size (0 small, 1 large)]"""
    shape = np.eye(len(SCENE_SHAPES), dtype=np.float32)[SCENE_SHAPES.index(obj["shape"])]
    colour = np.eye(len(SCENE_COLOURS), dtype=np.float32)[list(SCENE_COLOURS).index(obj["colour"])]
    return np.concatenate([shape, colour, np.float32([SCENE_SIZES.index(obj["size"])])])


def scene_region_features(objects: list[dict], feature_dim: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Synthetic "detector" regions of a scene: these are NOT produced by an object detector.

    They stand in for the precomputed Faster R-CNN features that VisualBERT / UNITER / LXMERT read, so that the
    region-input code paths train and test on data with the same structure: one whole-image region, then one
    region per object. An object's feature is a fixed seeded random projection (the same for every call with this
    `feature_dim`) of [one-hot shape, one-hot colour, size], plus gaussian noise; the whole-image region projects
    the mean of the objects' attributes. Boxes are the objects' bounding boxes; class scores are a noisy softmax
    peaked on the object's shape (flat for the whole-image region, whose label is -100).

    Returns:
        `visual_feats` `(N, feature_dim)`, `visual_pos` `(N, 4)`, `region_class_scores` `(N, len(SCENE_SHAPES))`
        (float32) and `region_labels` `(N,)` (int64), with `N = len(objects) + 1`.
    """
    attributes = np.stack([_object_attributes(obj) for obj in objects])
    attributes = np.concatenate([attributes.mean(axis=0, keepdims=True), attributes])
    num_regions = attributes.shape[0]
    feats = attributes @ _region_projection(feature_dim)
    feats += rng.normal(0.0, _REGION_FEATURE_NOISE, feats.shape).astype(np.float32)
    boxes = [[0.0, 0.0, 1.0, 1.0]]
    for obj in objects:
        r = _RADIUS[obj["size"]]
        boxes.append([obj["x"] - r, obj["y"] - r, obj["x"] + r, obj["y"] + r])
    labels = np.array([IGNORE_REGION_LABEL] + [SCENE_SHAPES.index(obj["shape"]) for obj in objects], dtype=np.int64)
    logits = rng.normal(0.0, 1.0, (num_regions, len(SCENE_SHAPES)))
    logits[np.arange(1, num_regions), labels[1:]] += _CLASS_SCORE_SHARPNESS
    scores = np.exp(logits - logits.max(axis=1, keepdims=True))
    return {
        "visual_feats": feats.astype(np.float32),
        "visual_pos": np.clip(np.array(boxes, dtype=np.float32), 0.0, 1.0),
        "region_class_scores": (scores / scores.sum(axis=1, keepdims=True)).astype(np.float32),
        "region_labels": labels,
    }


# ---------------------------------------------------------------------------------------------
# Visual question answering on the scenes
# ---------------------------------------------------------------------------------------------

VQA_QUESTION_TYPES: tuple[str, ...] = ("colour", "shape", "count", "relation")
VQA_NUM_ANNOTATORS = 10
# Answers written differently by some annotators; the VQA answer normalisation maps the number words back.
_ANSWER_SYNONYMS = {
    "purple": "violet",
    "circle": "round",
    "square": "box",
    "cross": "plus",
    "0": "zero",
    "1": "one",
    "2": "two",
    "yes": "yeah",
}
# Chance that an annotator answers something else; at most 2 of 10 do, so a wrong answer scores at most 0.67.
_ANSWER_NOISE = 0.12
_MAX_NOISY_ANNOTATORS = 2
_QUESTION_RELATIONS = {"to the left of": "left of", "to the right of": "right of", "above": "above", "below": "below"}


def _vqa_features() -> datasets.Features:
    return datasets.Features(
        {
            "image": datasets.Image(),
            "question": datasets.Value("string"),
            "answers": datasets.List(datasets.Value("string")),
            "answer": datasets.Value("string"),
            "question_type": datasets.Value("string"),
            "image_id": datasets.Value("int64"),
            "question_id": datasets.Value("int64"),
        }
    )


def _unique_objects(objects: list[dict], key: str) -> list[dict]:
    """Objects whose `key` (shape or colour) no other object of the scene shares: "the circle" must be one."""
    return [obj for obj in objects if sum(o[key] == obj[key] for o in objects) == 1]


def _scene_questions(objects: list[dict], relation: str, rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """(question, answer, question type) for one scene: one per type that the scene allows unambiguously."""
    questions = []
    candidates = _unique_objects(objects, "shape")
    if candidates:
        obj = _pick(rng, candidates)
        template = _pick(rng, ("what colour is the {}?", "what is the colour of the {}?"))
        questions.append((template.format(obj["shape"]), obj["colour"], "colour"))
    candidates = _unique_objects(objects, "colour")
    if candidates:
        obj = _pick(rng, candidates)
        template = _pick(rng, ("what shape is the {} object?", "which shape is {}?"))
        questions.append((template.format(obj["colour"]), obj["shape"], "shape"))
    kind = _pick(rng, ("objects", "colour", "shape"))
    if kind == "objects":
        questions.append(("how many objects are there?", str(len(objects)), "count"))
    elif kind == "colour":
        colour = _pick(rng, [obj["colour"] for obj in objects] + [_pick(rng, list(SCENE_COLOURS))])
        count = sum(obj["colour"] == colour for obj in objects)
        questions.append((f"how many {colour} objects are there?", str(count), "count"))
    else:
        shape = _pick(rng, [obj["shape"] for obj in objects] + [_pick(rng, SCENE_SHAPES)])
        count = sum(obj["shape"] == shape for obj in objects)
        plural = shape + ("es" if shape.endswith("s") else "s")
        questions.append((f"how many {plural} are there?", str(count), "count"))
    if len(objects) == 2:
        first, second = objects
        truth = relation
        if rng.random() < 0.5:  # ask about the pair in either order
            first, second, truth = second, first, _INVERSE_RELATION[relation]
        answer = _pick(rng, ("yes", "no"))  # balanced: a "no" asks the inverse relation, which is false
        asked = truth if answer == "yes" else _INVERSE_RELATION[truth]
        question = (
            f"is the {first['colour']} {first['shape']} {_QUESTION_RELATIONS[asked]} "
            f"the {second['colour']} {second['shape']}?"
        )
        questions.append((question, answer, "relation"))
    return questions


def _wrong_answers(answer: str, question_type: str) -> list[str]:
    pools = {
        "colour": list(SCENE_COLOURS),
        "shape": list(SCENE_SHAPES),
        "count": ["0", "1", "2", "3"],
        "relation": ["yes", "no"],
    }
    return [option for option in pools[question_type] if option != answer]


def _annotator_answers(answer: str, question_type: str, rng: np.random.Generator) -> list[str]:
    """Ten annotators: most give `answer`; a few (seeded, at most 2) a synonym or a wrong answer."""
    answers = [answer] * VQA_NUM_ANNOTATORS
    noisy = np.flatnonzero(rng.random(VQA_NUM_ANNOTATORS) < _ANSWER_NOISE)[:_MAX_NOISY_ANNOTATORS]
    for index in noisy:
        if answer in _ANSWER_SYNONYMS and rng.random() < 0.5:
            answers[index] = _ANSWER_SYNONYMS[answer]
        else:
            answers[index] = _pick(rng, _wrong_answers(answer, question_type))
    return answers


def make_scenes_vqa_dataset(
    num_train: int = 2000,
    num_validation: int = 500,
    image_size: int = 64,
    seed: int = 0,
    num_test: int = 0,
) -> datasets.DatasetDict:
    """Visual question answering on the scenes of `make_scenes_dataset`; no download, deterministic by seed.

    `num_train`, `num_validation`, `num_test` count images; each image gets one question per type its scene
    allows without ambiguity (colour, shape and count always, relation when there are two objects), so a split has
    3 to 4 rows per image. Image `i` of a split is the same image as in `make_scenes_dataset` with the same seed.

    Columns:
        image: `datasets.Image`, RGB PNG of side `image_size`.
        question: e.g. "what colour is the circle?", "what shape is the red object?", "how many objects are
            there?", "how many red objects are there?", "is the red circle left of the blue square?".
        answers: `VQA_NUM_ANNOTATORS` (10) answers, like VQA's annotators: the right answer at least 8 times, with
            a seeded few synonyms ("two", "violet") or mistakes, so that VQA soft scores are not all 1.
        answer: the right (majority) answer: a colour, a shape, a count "0" to "2", or "yes" / "no".
        question_type: one of `VQA_QUESTION_TYPES` ("colour", "shape", "count", "relation"); relation
            questions are balanced between "yes" and "no".
        image_id: int, unique per image across the splits of one call (shared by the image's questions).
        question_id: int, unique across the splits of one call.
    """
    _check_image_size(image_size)
    splits, question_id = {}, 0
    for split, count, first_image_id in _split_counts(num_train, num_validation, num_test):
        columns = {name: [] for name in _vqa_features()}
        for index in range(count):
            objects, relation, png = _draw_scene(seed, split, index, image_size)
            rng = np.random.default_rng([seed, _SPLIT_STREAMS[split], index, _VQA_STREAM])
            for question, answer, question_type in _scene_questions(objects, relation, rng):
                columns["image"].append({"bytes": png, "path": None})
                columns["question"].append(question)
                columns["answers"].append(_annotator_answers(answer, question_type, rng))
                columns["answer"].append(answer)
                columns["question_type"].append(question_type)
                columns["image_id"].append(first_image_id + index)
                columns["question_id"].append(question_id)
                question_id += 1
        splits[split] = datasets.Dataset.from_dict(columns, features=_vqa_features(), split=split)
    return datasets.DatasetDict(splits)



def vqa_answer_vocabulary(
    dataset: datasets.DatasetDict | datasets.Dataset,
    min_count: int = 1,
    answers_column: str = "answers",
    split: str = "train",
) -> tuple[dict[int, str], dict[str, int]]:
    """The answer classes of a VQA classifier: every normalised annotator answer of the train split seen at least
    `min_count` times (ViLT keeps answers given 9+ times in VQA v2), sorted alphabetically.

    Returns:
        `(id2label, label2id)`, for `config.id2label` / `config.label2id` and `VLPQuestionAnsweringCollator`.
    """
    from .evaluation import normalize_vqa_answer  # evaluation imports this module

    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise ValueError(f"split={split!r} is not a split of the dataset; splits found: {list(dataset)}")
        dataset = dataset[split]
    if answers_column not in dataset.column_names:
        raise ValueError(
            f"answers_column={answers_column!r} is not a column of the dataset; columns found: {dataset.column_names}"
        )
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    counts = collections.Counter()
    for answers in dataset[answers_column]:
        if isinstance(answers, str):
            answers = [answers]
        counts.update(normalize_vqa_answer(answer) for answer in answers)
    labels = sorted(answer for answer, count in counts.items() if count >= min_count and answer)
    if not labels:
        raise ValueError(f"No answer of {answers_column!r} is given at least min_count={min_count} times")
    return dict(enumerate(labels)), {label: index for index, label in enumerate(labels)}


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
        if "caption" in ds.features and found_text not in ("caption", "captions"):
            raise ValueError(
                f"text_column={found_text!r} was chosen but {path!r} already has a 'caption' column; "
                "drop or rename it first"
            )
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
            if "caption" in ds.features and found_text not in ("caption", "captions"):
                raise ValueError(
                    f"text_column={found_text!r} was chosen but {where!r} already has a 'caption' column; "
                    "drop or rename it first"
                )
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
