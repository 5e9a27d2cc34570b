"""PNG reports: valid files whose marked cells have the expected colours."""

import json

import numpy as np
import pytest
from PIL import Image

from modeling_vlp.evaluation.visualize import CORRECT, WRONG, confusion_matrix, confusion_matrix_image, retrieval_grid, vqa_grid


pytestmark = pytest.mark.usefixtures("one_thread")


def _marker_colour(image, box):
    x0, y0, x1, y1 = box[:4]
    return image.getpixel((x0 + 1, y0 + 1))  # a corner inside the square, away from the tick / cross


def test_retrieval_grid_marks_correct_captions_green_and_wrong_ones_red(tmp_path):
    images = [Image.new("RGB", (64, 64), (255, 0, 0)), np.zeros((40, 30, 3), dtype=np.uint8)]
    long = "a large red circle to the left of a small blue square " * 4
    ranked = [[(long, 0.9), ("b", 0.5), ("c", 0.1)], ["x", "y", "z"]]
    correct = [[True, False, False], [False, False, True]]
    path = tmp_path / "sub" / "grid.png"
    image = retrieval_grid(images, ranked, correct, path, title="retrieval")
    with Image.open(path) as saved:
        assert saved.format == "PNG" and saved.size == image.size
        markers = json.loads(saved.text["vlp_markers"])
        saved = saved.convert("RGB")
        assert [_marker_colour(saved, box) for box in markers] == [CORRECT, WRONG, WRONG, WRONG, WRONG, CORRECT]
        assert [box[4] for box in markers] == [True, False, False, False, False, True]
        # The long caption wrapped: its next marker sits more than two lines lower.
        assert markers[1][1] - markers[0][1] > 2 * 15
        # The first thumbnail is drawn: a red pixel left of the captions.
        assert saved.getpixel((8 + 10, markers[0][1] + 10)) == (255, 0, 0)
    with pytest.raises(ValueError, match="one entry per query image"):
        retrieval_grid(images, ranked[:1], correct, None)


def test_confusion_matrix_counts():
    matrix = confusion_matrix([0, 0, 1, 2, 2], [0, 1, 1, 2, 0], 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    with pytest.raises(ValueError, match=r"predictions must lie in \[0, 3\)"):
        confusion_matrix([0], [3], 3)


def _cell(image, grid, row, column):
    x0, y0, cell = grid
    return image.getpixel((x0 + column * cell + 2, y0 + row * cell + 2))


@pytest.mark.parametrize("num_classes", [4, 60])
def test_a_perfect_diagonal_gives_dark_diagonal_cells(tmp_path, num_classes):
    names = [f"class with a rather long name number {i}" for i in range(num_classes)]
    labels = np.arange(3 * num_classes) % num_classes
    path = tmp_path / "confusion.png"
    image = confusion_matrix_image(labels, labels, names, path)
    with Image.open(path) as saved:
        grid = json.loads(saved.text["vlp_grid"])
        saved = saved.convert("RGB")
        assert saved.size == image.size
        x0, y0, cell = grid
        assert saved.width >= x0 + num_classes * cell and saved.height >= y0 + num_classes * cell
        for index in range(num_classes):
            assert sum(_cell(saved, grid, index, index)) < 200  # dark blue
            assert sum(_cell(saved, grid, index, (index + 1) % num_classes)) > 700  # near white


def test_confusion_matrix_rates_and_counts(tmp_path):
    labels, predictions = [0, 0, 0, 0, 1, 1], [0, 0, 0, 1, 1, 1]
    rates = confusion_matrix_image(labels, predictions, ["a", "b"], None, normalize=True)
    grid = json.loads(rates.info["vlp_grid"])
    # Row 0 is 3/4 right: its diagonal is darker than its off-diagonal, lighter than row 1's full diagonal.
    assert sum(_cell(rates, grid, 1, 1)) < sum(_cell(rates, grid, 0, 0)) < sum(_cell(rates, grid, 0, 1))
    counts = confusion_matrix_image(labels, predictions, ["a", "b"], None, normalize=False)
    grid = json.loads(counts.info["vlp_grid"])
    # By counts, 3 (row 0) outweighs 2 (row 1).
    assert sum(_cell(counts, grid, 0, 0)) < sum(_cell(counts, grid, 1, 1))


def test_vqa_grid(tmp_path):
    images = [Image.new("RGB", (32, 32), (0, 0, 255))] * 2
    image = vqa_grid(images, ["what colour?", "how many?"], ["blue", "3"], [["blue"] * 10, ["2"] * 10], [1.0, 0.0],
                     tmp_path / "vqa.png")  # fmt: skip
    markers = json.loads(image.info["vlp_markers"])
    assert [_marker_colour(image, box) for box in markers] == [CORRECT, WRONG]
    assert (tmp_path / "vqa.png").stat().st_size > 0
