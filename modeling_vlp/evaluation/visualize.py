"""PNG reports of evaluations, drawn with PIL only: retrieval results, confusion matrices, VQA answers, captions.

Every function returns the PIL image and, given a `path`, saves it as PNG. The layout of what tests and tools may
want to find again is kept in `image.info` (and in the PNG's text chunks): `"vlp_markers"` (retrieval / VQA: one
`[x0, y0, x1, y1, correct]` box per marker), `"vlp_lines"` (retrieval / VQA / captions: the text lines drawn in
each row), `"vlp_missing_glyphs"` (characters no available font could draw) and `"vlp_grid"` (confusion matrix:
`[x0, y0, cell]`), as JSON.

Text is wrapped to the pixel width of its column and drawn whole. PIL's default font (Aileron) covers ASCII only
(no "é", "—" or "Ж"), so a text with other characters is drawn with the first font that covers all of them: the file
named by the `VLP_FONT` environment variable, matplotlib's DejaVu Sans when matplotlib is installed, then common
system fonts (DejaVu, Noto, Arial Unicode); failing all, the one that covers most, and the rest are listed in
`vlp_missing_glyphs`.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from .ranking import image_to_text_ranks

BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
CORRECT = (0, 150, 60)
WRONG = (200, 30, 30)
MUTED = (110, 110, 110)
# Light to dark blue, the heat-map scale of the confusion matrix.
HEAT_LOW = np.array([247, 251, 255], dtype=np.float64)
HEAT_HIGH = np.array([8, 48, 107], dtype=np.float64)

_THUMBNAIL = 96
_PAD = 8
_MARKER = 12
_FONT_SIZE = 12
_LINE = 15


# Fonts tried, in order, when PIL's default cannot draw a text's characters (VLP_FONT and matplotlib's come first).
FONT_FILES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/System/Library/Fonts/Supplemental/Arial Unicode.ttf",
    "/Library/Fonts/Arial Unicode.ttf",
    "C:/Windows/Fonts/arialuni.ttf",
    "C:/Windows/Fonts/segoeui.ttf",
    "C:/Windows/Fonts/arial.ttf",
)
_NOT_A_CHARACTER = "\U0010fffd"  # in no font: what a missing glyph looks like in a given font


def _font(size: int = _FONT_SIZE, path: str | None = None):
    return _load_font(size, path)


@functools.lru_cache(maxsize=None)
def _load_font(size: int, path: str | None):
    if path is not None:
        return ImageFont.truetype(path, size)
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _font_files() -> list[str]:
    files = [os.environ["VLP_FONT"]] if os.environ.get("VLP_FONT") else []
    spec = importlib.util.find_spec("matplotlib")  # located, not imported
    if spec is not None and spec.origin:
        files.append(os.path.join(os.path.dirname(spec.origin), "mpl-data", "fonts", "ttf", "DejaVuSans.ttf"))
    return [path for path in dict.fromkeys([*files, *FONT_FILES]) if os.path.isfile(path)]


@functools.lru_cache(maxsize=65536)
def _glyph(font, character: str) -> bytes:
    image = Image.new("L", (2 * _LINE + 8, 2 * _LINE + 8), 0)
    ImageDraw.Draw(image).text((4, 4), character, fill=255, font=font)
    return image.tobytes()


def _uncovered(font, characters) -> set[str]:
    """The characters `font` has no glyph for (drawn as its missing-glyph box)."""
    missing = _glyph(font, _NOT_A_CHARACTER)
    return {character for character in characters if _glyph(font, character) == missing}


def _font_for(texts: Sequence[str], size: int = _FONT_SIZE):
    """(font, characters none of the fonts can draw): PIL's default when it covers every character of `texts`, else
    the first font of `_font_files()` that does, else the one that covers most."""
    characters = {character for text in texts for character in str(text) if not character.isspace()}
    best = _font(size)
    best_missing = _uncovered(best, characters)
    for path in _font_files() if best_missing else ():
        try:
            font = _font(size, path)
        except OSError:  # not a font PIL can read
            continue
        missing = _uncovered(font, characters)
        if len(missing) < len(best_missing):
            best, best_missing = font, missing
        if not missing:
            break
    return best, "".join(sorted(best_missing))


def _wrap(text: str, font, width: float, indent: str = "") -> list[str]:
    """`text` in lines no wider than `width` pixels, broken at whitespace and, for a word longer than a line, inside
    it; lines after the first start with `indent`. Every non-space character of `text` is on a line, in order."""
    lines, line = [], ""
    for word in str(text).split():
        prefix = indent if lines else ""
        candidate = f"{line} {word}" if line else word
        if font.getlength(prefix + candidate) <= width:
            line = candidate
            continue
        if line:
            lines.append(prefix + line)
            prefix = indent
        while len(word) > 1 and font.getlength(prefix + word) > width:
            cut = 1
            while cut < len(word) - 1 and font.getlength(prefix + word[: cut + 1]) <= width:
                cut += 1
            lines.append(prefix + word[:cut])
            word, prefix = word[cut:], indent
        line = word
    if line:
        lines.append((indent if lines else "") + line)
    return lines or [""]


def _save(image: Image.Image, path, info: dict) -> Image.Image:
    image.info.update({key: json.dumps(value) for key, value in info.items()})
    if path is not None:
        path = os.fspath(path)
        if os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        metadata = PngImagePlugin.PngInfo()
        for key, value in info.items():
            metadata.add_text(key, json.dumps(value))
        image.save(path, format="PNG", pnginfo=metadata)
    return image


def _thumbnail(image, side: int = _THUMBNAIL) -> Image.Image:
    image = image.convert("RGB") if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image)).convert("RGB")
    scale = side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    # Small inputs (32-pixel scenes) are enlarged without blurring, large ones shrunk smoothly.
    return image.resize(size, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BICUBIC)


def _draw_marker(draw: ImageDraw.ImageDraw, x: int, y: int, correct: bool) -> list:
    """A filled square, green with a tick or red with a cross; returns its box and verdict."""
    box = [x, y, x + _MARKER - 1, y + _MARKER - 1]
    draw.rectangle(box, fill=CORRECT if correct else WRONG)
    if correct:
        draw.line([(x + 2, y + 6), (x + 5, y + 9), (x + 10, y + 2)], fill=BACKGROUND, width=2)
    else:
        draw.line([(x + 3, y + 3), (x + 8, y + 8)], fill=BACKGROUND, width=2)
        draw.line([(x + 3, y + 8), (x + 8, y + 3)], fill=BACKGROUND, width=2)
    return [*box, bool(correct)]


def _split_entry(entry) -> tuple[str, float | None]:
    if isinstance(entry, str):
        return entry, None
    text, score = entry
    return str(text), None if score is None else float(score)


def _listed(items) -> str:
    """The items as "a, b and c"."""
    items = [str(item) for item in items]
    return ", ".join(items[:-1]) + " and " + items[-1]


def _check_rows(row: str, **columns: Sequence) -> None:
    """Raise unless the `columns` (named as the caller's arguments, images first) have one entry per `row` and
    there are rows."""
    lengths = [len(values) for values in columns.values()]
    if len(set(lengths)) > 1:
        raise ValueError(f"{_listed(columns)} need one entry per {row}, got {_listed(lengths)}")
    if lengths[0] == 0:
        raise ValueError(f"{next(iter(columns))} is empty")


def _thumbnail_rows_canvas(font, title: str | None, heights: Sequence[int], text_width: int):
    """A blank canvas for rows of a thumbnail and text (`heights` each), under an optional title line; returns the
    canvas, its drawing context and the y of the first row."""
    top = _PAD + (_LINE + _PAD if title else 0)
    width = max(_PAD + _THUMBNAIL + _PAD + text_width, int(font.getlength(title or "")) + 2 * _PAD)
    canvas = Image.new("RGB", (width, top + sum(heights)), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((_PAD, _PAD), title, fill=TEXT, font=font)
    return canvas, draw, top


def retrieval_grid(
    images: Sequence,
    ranked_captions: Sequence[Sequence],
    correct: Sequence[Sequence[bool]],
    path: str | os.PathLike | None = None,
    title: str | None = None,
    text_width: int = 520,
    numbered: bool = True,
    notes: Sequence[str] | None = None,
) -> Image.Image:
    """One row per query image: its thumbnail on the left, its top retrieved captions on the right, best first,
    each behind a green tick (correct) or a red cross (wrong) and with its score, wrapped to the column and drawn in
    full (see the module docstring for the font).

    Args:
        images: the query images (PIL images or HWC uint8 arrays).
        ranked_captions: per image, its retrieved captions best first, each a str or a `(caption, score)` pair.
        correct: per image, whether each retrieved caption is one of the image's own.
        path: where to save the PNG (not saved when None).
        title: a line above the grid.
        text_width: pixels for the caption column; long captions wrap.
        numbered: prefix each caption with its rank.
        notes: per image, a grey line under its captions (the report says where its own caption ranked).
    """
    _check_rows("query image", images=images, ranked_captions=ranked_captions, correct=correct)
    if notes is not None and len(notes) != len(images):
        raise ValueError(f"notes need one entry per query image, got {len(notes)} for {len(images)}")
    labels = []
    for captions, verdicts in zip(ranked_captions, correct):
        if len(captions) != len(verdicts):
            raise ValueError(f"each row of correct needs one flag per caption, got {len(verdicts)} for {len(captions)}")
        row = []
        for rank, (entry, verdict) in enumerate(zip(captions, verdicts), start=1):
            text, score = _split_entry(entry)
            row.append(((f"{rank}. " if numbered else "") + text + ("" if score is None else f"  ({score:.3f})"), verdict))
        labels.append(row)
    notes = list(notes) if notes is not None else [None] * len(images)
    font, missing = _font_for([title or "", *(text for row in labels for text, _ in row), *filter(None, notes)])
    width = text_width - _MARKER - 3 * _PAD
    rows = [[(_wrap(text, font, width), bool(verdict)) for text, verdict in row] for row in labels]
    note_lines = [_wrap(note, font, width) if note else [] for note in notes]
    heights = [
        max(_THUMBNAIL, sum(len(wrapped) * _LINE + 4 for wrapped, _ in lines) + len(extra) * _LINE) + 2 * _PAD
        for lines, extra in zip(rows, note_lines)
    ]
    canvas, draw, top = _thumbnail_rows_canvas(font, title, heights, text_width)
    markers, drawn, y = [], [], top
    for image, lines, extra, height in zip(images, rows, note_lines, heights):
        canvas.paste(_thumbnail(image), (_PAD, y + _PAD))
        line_y = y + _PAD
        text_x = 2 * _PAD + _THUMBNAIL
        drawn.append([line for wrapped, _ in lines for line in wrapped] + extra)
        for wrapped, verdict in lines:
            markers.append(_draw_marker(draw, text_x, line_y + 1, verdict))
            for line in wrapped:
                draw.text((text_x + _MARKER + _PAD, line_y), line, fill=CORRECT if verdict else WRONG, font=font)
                line_y += _LINE
            line_y += 4
        for line in extra:
            draw.text((text_x + _MARKER + _PAD, line_y), line, fill=MUTED, font=font)
            line_y += _LINE
        y += height
        draw.line([(0, y - 1), (canvas.width, y - 1)], fill=(225, 225, 225))
    return _save(canvas, path, {"vlp_markers": markers, "vlp_lines": drawn, "vlp_missing_glyphs": missing})


def spread_queries(ranks: Sequence[int], count: int) -> list[int]:
    """`count` query indices spread over the queries sorted by `ranks` (best first, ties by index): the best, the
    worst and evenly between them, so that a report shows hits and misses in their proportions instead of the first
    rows of the split. All of them, best first, when there are no more than `count`."""
    order = np.argsort(np.asarray(ranks), kind="stable")
    if len(order) <= count:
        return order.tolist()
    positions = np.unique(np.round(np.linspace(0, len(order) - 1, count)).astype(int))
    return order[positions].tolist()


def retrieval_report(
    image_of: Callable[[int], object],
    image_text_scores,
    texts: Sequence[str],
    text_to_image: Sequence[int],
    path: str | os.PathLike | None = None,
    title: str | None = None,
    count: int = 8,
    top_k: int = 3,
) -> Image.Image:
    """The retrieval PNG of `vlp evaluate`: `count` query images chosen by `spread_queries` over the rank of each
    image's best own caption (as `retrieval_metrics` counts it, ties against the model), each with its top `top_k`
    captions by `image_text_scores` `(num_images, num_texts)` and that rank. `image_of(i)` returns image i."""
    scores = np.asarray(image_text_scores, dtype=np.float64)
    ranks = image_to_text_ranks(scores, text_to_image).tolist()
    chosen = spread_queries(ranks, count)
    ranked, correct, notes = [], [], []
    for image in chosen:
        top = np.argsort(-scores[image], kind="stable")[: min(top_k, len(texts))].tolist()
        ranked.append([(texts[j], float(scores[image, j])) for j in top])
        correct.append([int(text_to_image[j]) == image for j in top])
        notes.append(f"query {image}: its own caption ranked {ranks[image]} of {len(texts)}")
    return retrieval_grid([image_of(index) for index in chosen], ranked, correct, path, title=title, notes=notes)


def _short(name: str, limit: int) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _heat(value: float) -> tuple[int, int, int]:
    value = min(max(float(value), 0.0), 1.0)
    return tuple(int(round(c)) for c in HEAT_LOW + value * (HEAT_HIGH - HEAT_LOW))


def confusion_matrix(labels: Sequence[int], predictions: Sequence[int], num_classes: int) -> np.ndarray:
    """`(num_classes, num_classes)` counts, rows the true class, columns the predicted one."""
    labels, predictions = np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)
    if labels.shape != predictions.shape or labels.ndim != 1:
        raise ValueError(f"labels and predictions must be 1-d of one length, got {labels.shape} and {predictions.shape}")
    for name, values in (("labels", labels), ("predictions", predictions)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes}), got values in [{values.min()}, {values.max()}]")
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def confusion_matrix_image(
    labels: Sequence[int],
    predictions: Sequence[int],
    class_names: Sequence[str],
    path: str | os.PathLike | None = None,
    normalize: bool = True,
    title: str | None = None,
) -> Image.Image:
    """A heat map of the confusion matrix: true classes down the left, predicted classes across the top (names
    rotated, long ones shortened), each cell shaded by its row-normalised rate (`normalize`) or its count relative
    to the largest, with the value written in cells big enough; the overall accuracy in the title."""
    if len(class_names) == 0:
        raise ValueError("class_names is empty")
    matrix = confusion_matrix(labels, predictions, len(class_names))
    total = int(matrix.sum())
    if total == 0:
        raise ValueError("labels is empty")
    accuracy = 100.0 * np.trace(matrix) / total
    row_sums = matrix.sum(axis=1, keepdims=True)
    values = matrix / np.maximum(row_sums, 1) if normalize else matrix / max(int(matrix.max()), 1)

    num_classes = len(class_names)
    cell = int(min(40, max(12, 640 // num_classes)))
    name_limit = 24 if num_classes <= 30 else 14
    names = [_short(str(name), name_limit) for name in class_names]
    font, _ = _font_for(names, max(8, min(_FONT_SIZE, cell - 4)))
    name_px = max(int(font.getlength(name)) for name in names) + _PAD
    heading = f"{title + ' - ' if title else ''}accuracy {accuracy:.1f}% ({total} examples, {num_classes} classes)"
    heading_font, _ = _font_for([heading])
    x0 = _PAD + name_px
    y0 = _PAD + _LINE + _PAD + name_px
    width = max(x0 + num_classes * cell + _PAD, int(heading_font.getlength(heading)) + 2 * _PAD)
    height = y0 + num_classes * cell + _PAD + _LINE
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((_PAD, _PAD), heading, fill=TEXT, font=heading_font)

    for index, name in enumerate(names):
        # Row names right-aligned against the grid; column names written sideways so many classes fit.
        draw.text((x0 - _PAD // 2 - font.getlength(name), y0 + index * cell + (cell - _LINE) // 2 + 1), name,
                  fill=TEXT, font=font)  # fmt: skip
        label = Image.new("RGB", (int(font.getlength(name)) + 2, _LINE), BACKGROUND)
        ImageDraw.Draw(label).text((0, 0), name, fill=TEXT, font=font)
        label = label.rotate(90, expand=True)
        canvas.paste(label, (x0 + index * cell + (cell - label.width) // 2, y0 - _PAD // 2 - label.height))
    show_values = cell >= 28
    for row in range(num_classes):
        for column in range(num_classes):
            value = values[row, column]
            box = [x0 + column * cell, y0 + row * cell, x0 + (column + 1) * cell - 1, y0 + (row + 1) * cell - 1]
            draw.rectangle(box, fill=_heat(value), outline=(230, 230, 230))
            if show_values and matrix[row, column]:
                text = f"{value:.2f}".lstrip("0") if normalize else str(matrix[row, column])
                text_colour = BACKGROUND if value > 0.5 else TEXT
                draw.text((box[0] + (cell - font.getlength(text)) / 2, box[1] + (cell - _LINE) / 2 + 1), text,
                          fill=text_colour, font=font)  # fmt: skip
    draw.text((x0, y0 + num_classes * cell + 2), "columns: predicted class, rows: true class", fill=MUTED, font=font)
    return _save(canvas, path, {"vlp_grid": [x0, y0, cell]})


def vqa_grid(
    images: Sequence,
    questions: Sequence[str],
    predictions: Sequence[str],
    answers: Sequence[Sequence[str] | str],
    scores: Sequence[float],
    path: str | os.PathLike | None = None,
    title: str | None = None,
    text_width: int = 420,
) -> Image.Image:
    """One row per question: the image, the question, the predicted answer behind a green tick (VQA score > 0) or a
    red cross, and the ground truth (the most common annotator answer) with the score."""
    if not (len(images) == len(questions) == len(predictions) == len(answers) == len(scores)):
        raise ValueError("images, questions, predictions, answers and scores need one entry per question")
    captions, correct = [], []
    for question, prediction, truth, score in zip(questions, predictions, answers, scores):
        if not isinstance(truth, str):
            truth = max(set(truth), key=list(truth).count) if len(truth) else ""
        captions.append([f"Q: {question}  predicted: {prediction}  truth: {truth}  (score {float(score):.2f})"])
        correct.append([float(score) > 0])
    return retrieval_grid(images, captions, correct, path=path, title=title, text_width=text_width, numbered=False)


def caption_grid(
    images: Sequence,
    predictions: Sequence[str],
    references: Sequence[Sequence[str] | str],
    path: str | os.PathLike | None = None,
    title: str | None = None,
    text_width: int = 520,
) -> Image.Image:
    """One row per image: the thumbnail, the generated caption (dark, prefixed "generated:") and its reference
    captions below it (grey). `image.info["vlp_rows"]` holds `[y0, y1]` of each row."""
    _check_rows("image", images=images, predictions=predictions, references=references)
    references = [[refs] if isinstance(refs, str) else list(refs) for refs in references]
    font, missing = _font_for([title or "", *map(str, predictions), *(ref for refs in references for ref in refs)])
    width = text_width - 2 * _PAD
    rows = []
    for prediction, refs in zip(predictions, references):
        lines = [(line, TEXT) for line in _wrap(f"generated: {prediction}", font, width)]
        for ref in refs:
            lines += [(line, MUTED) for line in _wrap(f"- {ref}", font, width, indent="  ")]
        rows.append(lines)
    heights = [max(_THUMBNAIL, len(lines) * _LINE) + 2 * _PAD for lines in rows]
    canvas, draw, top = _thumbnail_rows_canvas(font, title, heights, text_width)
    spans, y = [], top
    for image, lines, height in zip(images, rows, heights):
        canvas.paste(_thumbnail(image), (_PAD, y + _PAD))
        for index, (line, colour) in enumerate(lines):
            draw.text((2 * _PAD + _THUMBNAIL, y + _PAD + index * _LINE), line, fill=colour, font=font)
        spans.append([y, y + height])
        y += height
        draw.line([(0, y - 1), (canvas.width, y - 1)], fill=(225, 225, 225))
    info = {"vlp_rows": spans, "vlp_lines": [[line for line, _ in lines] for lines in rows]}
    return _save(canvas, path, {**info, "vlp_missing_glyphs": missing})


__all__ = [
    "retrieval_grid",
    "retrieval_report",
    "spread_queries",
    "confusion_matrix",
    "confusion_matrix_image",
    "vqa_grid",
    "caption_grid",
]
