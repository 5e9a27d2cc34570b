"""Honest baselines in every evaluation report (issue 17, item 7): the majority-class accuracy beside uniform chance
for zero-shot, class lists from the whole dataset, the queries a tie decided in retrieval, and a retrieval PNG that
shows a spread of queries with every character of their captions."""

import json

import datasets
import numpy as np
import pytest
import torch
from PIL import Image, ImageFont

from modeling_vlp.commands.evaluate import EvaluationRun, _retrieval_png, evaluate_command
from modeling_vlp.data.scenes import make_scenes_dataset
from modeling_vlp.evaluation import visualize
from modeling_vlp.evaluation.embeddings import evaluate_dual_encoder, zero_shot_class_labels
from modeling_vlp.evaluation.ranking import (
    image_to_text_ranks,
    majority_class_accuracy,
    retrieval_metrics,
    retrieval_tie_counts,
)
from modeling_vlp.evaluation.visualize import caption_grid, retrieval_grid, retrieval_report, spread_queries

from vlp_testing import save_tiny_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- zero-shot: majority class and the dataset's classes ---------------------------------------------------------


def test_majority_class_accuracy_is_the_largest_class_share():
    assert majority_class_accuracy([0, 0, 0, 1, 2]) == 60.0
    assert majority_class_accuracy(torch.tensor([3, 3, 1, 1]), num_classes=4) == 50.0
    assert majority_class_accuracy(np.array([2])) == 100.0
    for bad in ([], [0.5, 1.0], [-1, 0]):
        with pytest.raises(ValueError):
            majority_class_accuracy(bad)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        majority_class_accuracy([0, 2], num_classes=2)


def _string_label_splits():
    train = datasets.Dataset.from_dict({"kind": ["cat", "dog", "zebra", "ant"]})
    validation = datasets.Dataset.from_dict({"kind": ["dog", "cat", "dog"]})
    unlabelled = datasets.Dataset.from_dict({"caption": ["a thing"]})
    return datasets.DatasetDict({"train": train, "validation": validation, "extra": unlabelled})


def test_zero_shot_class_labels_come_from_every_split():
    splits = zero_shot_class_labels(_string_label_splits(), "kind")
    names = ["ant", "cat", "dog", "zebra"]
    assert splits["validation"].features["kind"].names == names  # zebra and ant are not in this split
    assert splits["train"].features["kind"].names == names
    assert list(splits["validation"]["kind"]) == [2, 1, 2]
    assert splits["extra"].column_names == ["caption"]
    # A ClassLabel column already names the dataset's classes: unchanged.
    labelled = datasets.DatasetDict({"test": splits["validation"]})
    assert zero_shot_class_labels(labelled, "kind")["test"].features["kind"].names == names
    assert zero_shot_class_labels(labelled, "missing") is labelled


@pytest.fixture(scope="module")
def dual_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dual")
    save_tiny_checkpoint(folder, "dual")
    return str(folder)


def _evaluate(argv, capsys) -> dict:
    status = evaluate_command(argv)
    captured = capsys.readouterr()
    assert status == 0, captured.err[-3000:]
    return json.loads(captured.out.strip().splitlines()[-1])


def test_vlp_evaluate_zero_shot_reports_majority_class_and_all_classes(dual_model, tmp_path, capsys):
    """Validation holds 2 of the dataset's 4 classes, 3 of its 4 images of one class: the classifier chooses among
    all 4 (chance 25%, not 50%) and the majority-class baseline is 75%."""
    image = Image.new("RGB", (32, 32), (200, 30, 30))
    rows = lambda kinds: {"image": [image] * len(kinds), "caption": [f"a {k}" for k in kinds], "kind": kinds}  # noqa: E731
    splits = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict(rows(["red circle", "blue square", "green triangle", "red square"])),
        "validation": datasets.Dataset.from_dict(rows(["red circle", "red circle", "red circle", "blue square"])),
    })  # fmt: skip
    splits = splits.cast_column("image", datasets.Image())
    splits.save_to_disk(str(tmp_path / "data"))
    result = _evaluate(
        ["--model", dual_model, "--task", "zero-shot", "--dataset", str(tmp_path / "data"), "--split", "validation",
         "--label-column", "kind", "--output-dir", str(tmp_path / "out")],
        capsys,
    )  # fmt: skip
    assert result["num_classes"] == 4
    assert result["chance_top1"] == 25.0
    assert result["majority_class_accuracy"] == 75.0


def test_evaluate_dual_encoder_reports_majority_class_and_ties(dual_model):
    from modeling_vlp import VLPDualEncoderModel
    from modeling_vlp.commands.common import load_saved_processor

    model = VLPDualEncoderModel.from_pretrained(dual_model).eval()
    split = make_scenes_dataset(0, 6, image_size=32, seed=3)["validation"]
    metrics = evaluate_dual_encoder(model, load_saved_processor(dual_model), split, batch_size=4, show_progress=False)
    labels = list(split["label"])
    expected = 100 * max(labels.count(label) for label in set(labels)) / len(labels)
    assert metrics["zero_shot_majority_class_accuracy"] == pytest.approx(expected)
    assert {"i2t_tied_queries", "t2i_tied_queries"} <= set(metrics)


# ---- retrieval: the queries a tie decided -------------------------------------------------------------------------


def test_tie_counts_name_the_queries_whose_rank_a_tie_decided():
    # Image 0: own caption 0.5 ties caption 2 (image 1's) -> tied. Image 1: own caption 2 (0.9) beats all -> not.
    # Texts: 0 -> image 0 at 0.5, image 1 at 0.5 -> tied; 1 (image 0's second caption) 0.1 vs 0.3 -> not tied;
    # 2 -> image 1 at 0.9 vs 0.5 -> not.
    similarity = torch.tensor([[0.5, 0.1, 0.5], [0.5, 0.3, 0.9]])
    text_to_image = [0, 0, 1]
    assert retrieval_tie_counts(similarity, text_to_image) == {"i2t_tied_queries": 1.0, "t2i_tied_queries": 1.0}
    # The tie is a miss: image 0 is not retrieved at R@1 and text 0 is not either.
    metrics = retrieval_metrics(similarity, text_to_image, ks=(1,))
    assert metrics["i2t_r@1"] == 50.0 and metrics["t2i_r@1"] == pytest.approx(100 / 3)
    # A constant similarity ties every query; a tie between two of an image's own captions is no ambiguity.
    assert retrieval_tie_counts(torch.zeros(4, 4), range(4)) == {"i2t_tied_queries": 4.0, "t2i_tied_queries": 4.0}
    own = retrieval_tie_counts(torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), [0, 0, 1])
    assert own == {"i2t_tied_queries": 0.0, "t2i_tied_queries": 0.0}
    # Re-ranked text->image scores are counted from their own matrix.
    t2i = torch.tensor([[1.0, 0.0], [0.2, 0.2], [0.0, 1.0]])
    assert retrieval_tie_counts(similarity, text_to_image, text_to_image_scores=t2i)["t2i_tied_queries"] == 1.0


def test_vlp_evaluate_retrieval_reports_tied_queries(dual_model, tmp_path, capsys):
    result = _evaluate(
        ["--model", dual_model, "--task", "retrieval", "--max-examples", "6", "--output-dir", str(tmp_path)], capsys
    )
    for key in ("i2t_tied_queries", "t2i_tied_queries"):
        assert 0 <= result[key] <= (result["num_images"] if key.startswith("i2t") else result["num_texts"])


# ---- the retrieval PNG --------------------------------------------------------------------------------------------


def test_spread_queries_covers_best_worst_and_between():
    ranks = [1] * 10 + [5, 7, 20, 50, 90]  # the first rows all hit
    chosen = spread_queries(ranks, 8)
    assert len(chosen) == 8 and chosen[0] == 0 and chosen[-1] == 14
    assert sum(ranks[i] > 1 for i in chosen) >= 2  # misses are shown, not only the first (hit) rows
    assert spread_queries([3, 1, 2], 8) == [1, 2, 0]


def _scores_with_hits_first(num_images=20):
    """Image i's own caption is caption i; the first 10 images rank it first, the others 11th or worse."""
    generator = torch.Generator().manual_seed(0)
    scores = torch.rand(num_images, num_images, generator=generator)
    for image in range(num_images):
        scores[image, image] = 2.0 if image < 10 else scores[image].sort(descending=True).values[image - 9] - 1e-3
    return scores


def test_vlp_evaluate_png_shows_hits_and_misses(tmp_path):
    scores = _scores_with_hits_first()
    ranks = image_to_text_ranks(scores, range(20)).tolist()
    assert ranks[:10] == [1] * 10 and min(ranks[10:]) > 1
    images = [Image.new("RGB", (16, 16), (10 * i, 0, 0)) for i in range(20)]
    dataset = datasets.Dataset.from_dict({"image": images, "caption": [f"caption {i}" for i in range(20)]})
    run = EvaluationRun(None, None, dataset, None, str(tmp_path / "eval_retrieval.png"))
    _retrieval_png(run, scores, [f"caption {i}" for i in range(20)], list(range(20)), title="retrieval")
    info = Image.open(run.png_path).info
    markers = json.loads(info["vlp_markers"])
    first_of_each_row = markers[::3]
    assert any(correct for *_, correct in first_of_each_row) and not all(correct for *_, correct in first_of_each_row)
    notes = [row[-1] for row in json.loads(info["vlp_lines"])]
    assert any("ranked 1 of" in note for note in notes) and any("ranked 1 of" not in note for note in notes)


def test_default_font_cannot_draw_accents_so_another_is_used():
    assert visualize._uncovered(visualize._font(), "é—Ж") == set("é—Ж")  # why a fallback is needed at all
    ascii_font, missing = visualize._font_for(["a plain caption"])
    assert ascii_font is visualize._font() and missing == ""
    if not visualize._font_files():
        pytest.skip("no font file covering more than ASCII on this machine")
    font, missing = visualize._font_for(["café — Жук λ"])
    assert font is not visualize._font() and missing == ""


def test_retrieval_png_draws_every_character_of_long_captions(tmp_path):
    if not visualize._font_files():
        pytest.skip("no font file covering more than ASCII on this machine")
    long_word = "x" * 150
    captions = [
        "un café crème — «très» bon, Жук и λ-calcul",
        "a very long caption " * 12 + long_word,
        "short",
    ]
    text_width = 420
    image = retrieval_grid(
        [Image.new("RGB", (8, 8))], [[(caption, 0.5) for caption in captions]], [[True, False, False]],
        path=tmp_path / "grid.png", text_width=text_width,
    )  # fmt: skip
    info = Image.open(tmp_path / "grid.png").info
    assert json.loads(info["vlp_missing_glyphs"]) == ""
    lines = json.loads(info["vlp_lines"])[0]
    drawn = "".join(lines).replace(" ", "")
    expected = "".join(f"{rank}.{caption}(0.500)" for rank, caption in enumerate(captions, start=1)).replace(" ", "")
    assert drawn == expected  # every character, in order
    font, _ = visualize._font_for(lines)
    width = text_width - visualize._MARKER - 3 * visualize._PAD
    assert all(font.getlength(line) <= width for line in lines)
    assert len(lines) > 6 and image.width == visualize._PAD * 2 + visualize._THUMBNAIL + text_width


def test_caption_grid_wraps_and_keeps_every_character():
    caption = "ünïcödé " * 20 + "y" * 120
    image = caption_grid([Image.new("RGB", (8, 8))], [caption], [["réf — one"]], text_width=300)
    lines = json.loads(image.info["vlp_lines"])[0]
    assert "".join(lines).replace(" ", "") == ("generated:" + caption + "-réf—one").replace(" ", "")
    font, _ = visualize._font_for(lines)
    assert all(font.getlength(line) <= 300 - 2 * visualize._PAD for line in lines)


def test_retrieval_report_rows_follow_the_spread(tmp_path):
    scores = _scores_with_hits_first()
    report = retrieval_report(
        lambda index: Image.new("RGB", (8, 8)), scores.numpy(), [f"c{i}" for i in range(20)], list(range(20)),
        count=4,
    )  # fmt: skip
    notes = [row[-1] for row in json.loads(report.info["vlp_lines"])]
    ranks = image_to_text_ranks(scores, range(20)).tolist()
    chosen = spread_queries(ranks, 4)
    assert notes == [f"query {i}: its own caption ranked {ranks[i]} of 20" for i in chosen]


def test_wrap_breaks_inside_words_longer_than_a_line():
    font = ImageFont.load_default(size=12)
    lines = visualize._wrap("ab " + "z" * 80 + " cd", font, 60)
    assert "".join(lines).replace(" ", "") == "ab" + "z" * 80 + "cd"
    assert all(font.getlength(line) <= 60 for line in lines) and len(lines) >= 4
    assert visualize._wrap("", font, 60) == [""]


def test_baselines_stay_out_of_the_model_card_results():
    """A model card's model-index lists what the model measured; the baselines are bookkeeping, as chance is."""
    from modeling_vlp.hub.card import _is_measurement

    for name in ("eval_zero_shot_majority_class_accuracy", "majority_class_accuracy", "eval_i2t_tied_queries"):
        assert not _is_measurement(name, 75.0), name
    assert _is_measurement("eval_zero_shot_top1", 30.0)
