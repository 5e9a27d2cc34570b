"""PNG reports of evaluations, drawn with PIL only: retrieval results, confusion matrices, VQA answers, captions.

Every function returns the PIL image and, given a `path`, saves it as PNG. The layout of what tests and tools may
want to find again is kept in `image.info` (and in the PNG's text chunks): `"vlp_markers"` (retrieval / VQA: one
`[x0, y0, x1, y1, correct]` box per marker) and `"vlp_grid"` (confusion matrix: `[x0, y0, cell]`), as JSON.
"""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

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


def _font(size: int = _FONT_SIZE):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


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
) -> Image.Image:
    """One row per query image: its thumbnail on the left, its top retrieved captions on the right, best first,
    each behind a green tick (correct) or a red cross (wrong) and with its score.

    Args:
        images: the query images (PIL images or HWC uint8 arrays).
        ranked_captions: per image, its retrieved captions best first, each a str or a `(caption, score)` pair.
        correct: per image, whether each retrieved caption is one of the image's own.
        path: where to save the PNG (not saved when None).
        title: a line above the grid.
        text_width: pixels for the caption column; long captions wrap.
        numbered: prefix each caption with its rank.
    """
    _check_rows("query image", images=images, ranked_captions=ranked_captions, correct=correct)
    font = _font()
    chars = max(10, (text_width - _MARKER - 3 * _PAD) // 7)
    rows = []
    for captions, verdicts in zip(ranked_captions, correct):
        if len(captions) != len(verdicts):
            raise ValueError(f"each row of correct needs one flag per caption, got {len(verdicts)} for {len(captions)}")
        lines = []
        for rank, (entry, verdict) in enumerate(zip(captions, verdicts), start=1):
            text, score = _split_entry(entry)
            label = (f"{rank}. " if numbered else "") + text + ("" if score is None else f"  ({score:.3f})")
            lines.append((textwrap.wrap(label, chars) or [""], bool(verdict)))
        rows.append(lines)

    heights = [max(_THUMBNAIL, sum(len(wrapped) * _LINE + 4 for wrapped, _ in lines)) + 2 * _PAD for lines in rows]
    canvas, draw, top = _thumbnail_rows_canvas(font, title, heights, text_width)
    markers, y = [], top
    for image, lines, height in zip(images, rows, heights):
        canvas.paste(_thumbnail(image), (_PAD, y + _PAD))
        line_y = y + _PAD
        text_x = 2 * _PAD + _THUMBNAIL
        for wrapped, verdict in lines:
            markers.append(_draw_marker(draw, text_x, line_y + 1, verdict))
            for line in wrapped:
                draw.text((text_x + _MARKER + _PAD, line_y), line, fill=CORRECT if verdict else WRONG, font=font)
                line_y += _LINE
            line_y += 4
        y += height
        draw.line([(0, y - 1), (canvas.width, y - 1)], fill=(225, 225, 225))
    return _save(canvas, path, {"vlp_markers": markers})


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
    font = _font(max(8, min(_FONT_SIZE, cell - 4)))
    name_limit = 24 if num_classes <= 30 else 14
    names = [_short(str(name), name_limit) for name in class_names]
    name_px = max(int(font.getlength(name)) for name in names) + _PAD
    heading = f"{title + ' - ' if title else ''}accuracy {accuracy:.1f}% ({total} examples, {num_classes} classes)"
    heading_font = _font()
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
    font = _font()
    chars = max(10, (text_width - 2 * _PAD) // 7)
    rows = []
    for prediction, refs in zip(predictions, references):
        refs = [refs] if isinstance(refs, str) else list(refs)
        lines = [(line, TEXT) for line in textwrap.wrap(f"generated: {prediction}", chars) or ["generated:"]]
        for ref in refs:
            lines += [(line, MUTED) for line in textwrap.wrap(f"- {ref}", chars, subsequent_indent="  ")]
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
    return _save(canvas, path, {"vlp_rows": spans})


__all__ = ["retrieval_grid", "confusion_matrix", "confusion_matrix_image", "vqa_grid", "caption_grid"]
