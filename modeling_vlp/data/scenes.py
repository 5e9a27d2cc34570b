"""The embedded synthetic data: captioned scenes of coloured shapes drawn with PIL (`make_scenes_dataset`), their
synthetic detector regions (`scene_region_features`) and VQA questions with ten annotator answers
(`make_scenes_vqa_dataset`); no download, deterministic by seed. The default data of `vlp pretrain`, `vlp finetune`,
`vlp evaluate` and the tests."""

from __future__ import annotations

import collections
import functools
import io
import math
from collections.abc import Sequence

import datasets
import numpy as np
from PIL import Image, ImageDraw

from .answers import normalize_vqa_answer

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
    counts = _split_counts(num_train, num_validation, num_test)
    _check_image_size(image_size)
    if region_features < 0:
        raise ValueError(f"region_features must be 0 (none) or a feature dim > 0, got {region_features}")
    splits = {}
    for split, count, first_image_id in counts:
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
