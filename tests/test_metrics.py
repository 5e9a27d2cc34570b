"""The `evaluate` modules of modeling_vlp.evaluation.metrics give exactly the numbers of modeling_vlp.evaluation, and known
hand-computed values; caption metrics agree with pycocoevalcap called directly."""

import contextlib
import io
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")

from modeling_vlp.evaluation.metrics import METRICS, load_metric, metric_path  # noqa: E402
from modeling_vlp.evaluation.captioning import caption_metrics, coco_tokenize
from modeling_vlp.evaluation.ranking import retrieval_metrics, zero_shot_accuracy
from modeling_vlp.evaluation.vqa import vqa_accuracy, vqa_compute_metrics, vqa_soft_score_accuracy


pytestmark = pytest.mark.usefixtures("one_thread")


def test_metric_names_and_paths():
    assert METRICS == ("vlp_retrieval", "vlp_zero_shot", "vlp_vqa_accuracy", "vlp_caption")
    for name in METRICS:
        assert os.path.isfile(metric_path(name))
    with pytest.raises(ValueError, match="vlp_retrieval, vlp_zero_shot"):
        metric_path("bleu")


def test_retrieval_module_matches_retrieval_metrics_in_batches():
    rng = np.random.default_rng(0)
    similarity = rng.normal(size=(7, 16))
    text_to_image = np.r_[np.arange(7), rng.integers(0, 7, 9)]  # every image has a text, some have several
    metric = load_metric("vlp_retrieval")
    for start in (0, 5, 11):  # rows are texts: stream them in uneven batches
        stop = {0: 5, 5: 11, 11: 16}[start]
        metric.add_batch(scores=similarity.T[start:stop], image_index=text_to_image[start:stop])
    assert metric.compute() == retrieval_metrics(similarity, text_to_image)
    # Two-way scores (a re-ranker): rows rank images per text, the matrix ranks texts per image.
    other = rng.normal(size=(16, 7))
    result = load_metric("vlp_retrieval").compute(scores=other, image_index=text_to_image, image_to_text_scores=similarity)
    assert result == retrieval_metrics(similarity, text_to_image, text_to_image_scores=other)


def test_retrieval_module_known_values():
    # 2 images, 3 texts: image 0 -> texts 0, 1; image 1 -> text 2. Rows are texts.
    scores = [[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]]
    result = load_metric("vlp_retrieval").compute(scores=scores, image_index=[0, 0, 1], ks=(1,))
    # t2i ranks [1, 2, 2]; i2t: image 0 best own text ranks 1; image 1's text 2 (0.3) is beaten by text 1 (0.8).
    assert result["t2i_r@1"] == pytest.approx(100 / 3)
    assert result["i2t_r@1"] == 50.0 and result["i2t_mean_rank"] == 1.5


def test_zero_shot_module_matches_zero_shot_accuracy():
    generator = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(40, 8, generator=generator), dim=-1)
    classes = torch.nn.functional.normalize(torch.randn(9, 8, generator=generator), dim=-1)
    labels = torch.randint(0, 9, (40,), generator=generator)
    metric = load_metric("vlp_zero_shot")
    logits = (images.double() @ classes.double().T).numpy()
    metric.add_batch(predictions=logits[:25], references=labels[:25].numpy())
    metric.add_batch(predictions=logits[25:], references=labels[25:].numpy())
    assert metric.compute() == zero_shot_accuracy(images, classes, labels)
    known = load_metric("vlp_zero_shot").compute(predictions=[[0.1, 0.9, 0.0], [0.5, 0.5, 0.1]], references=[1, 0])
    assert known["top1"] == 50.0 and known["top5"] == 100.0  # the tie at 0.5 counts as a miss


def test_vqa_module_official_accuracy():
    metric = load_metric("vlp_vqa_accuracy")
    # 3 annotators of 10 say "2": 0.9; all say "red": 1; one says "yes": 0.3; none: 0.
    predictions = ["two", "Red.", "yes", "cat"]
    references = [["2"] * 3 + ["3"] * 7, ["red"] * 10, ["yes"] + ["no"] * 9, ["dog"] * 10]
    result = metric.compute(predictions=predictions, references=references)
    assert result["vqa_accuracy"] == pytest.approx(100 * (0.9 + 1 + 0.3 + 0) / 4)
    rng = np.random.default_rng(1)
    vocabulary = ["red", "blue", "2", "two", "yes", "no"]
    predictions = [str(rng.choice(vocabulary)) for _ in range(30)]
    references = [[str(a) for a in rng.choice(vocabulary, size=int(rng.integers(1, 11)))] for _ in range(30)]
    metric.add_batch(predictions=predictions[:10], references=references[:10])
    metric.add_batch(predictions=predictions[10:], references=references[10:])
    assert metric.compute()["vqa_accuracy"] == vqa_accuracy(predictions, references)


def _old_cli_vqa_compute_metrics(eval_prediction):
    """The Trainer metric `cli.vqa_compute_metrics` computed before it went through `evaluate` (copied verbatim)."""
    logits, labels = eval_prediction.predictions, eval_prediction.label_ids
    logits = logits[0] if isinstance(logits, tuple) else logits
    chosen = logits.argmax(axis=-1)
    return {"vqa_accuracy": float(100 * labels[range(len(chosen)), chosen].mean())}


def test_trainer_vqa_compute_metrics_gives_the_numbers_of_the_soft_score_path():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(37, 11)).astype(np.float32)
    labels = np.minimum(rng.integers(0, 5, size=(37, 11)) / 3, 1).astype(np.float32)
    for predictions in (logits, (logits, np.zeros(3, np.float32))):  # models may return extra outputs
        prediction = SimpleNamespace(predictions=predictions, label_ids=labels)
        expected = _old_cli_vqa_compute_metrics(prediction)
        assert vqa_compute_metrics(prediction) == expected
    assert vqa_soft_score_accuracy(logits, labels) == expected["vqa_accuracy"]
    one_hot = SimpleNamespace(predictions=np.eye(4, dtype=np.float32), label_ids=np.eye(4, dtype=np.float32) * 0.6)
    assert vqa_compute_metrics(one_hot)["vqa_accuracy"] == pytest.approx(60.0)
    with pytest.raises(ValueError, match="soft_scores"):
        vqa_soft_score_accuracy(np.zeros((2, 3)), np.zeros((2, 4)))


def test_coco_tokenize():
    assert coco_tokenize('A Dog\'s ball, "red" (big)!\nDon\'t 2.5 black-and-white...') == (
        "a dog 's ball red big do n't 2.5 black-and-white"
    )


def _pycocoevalcap(gts, res):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    with contextlib.redirect_stdout(io.StringIO()):
        bleu, _ = Bleu(4).compute_score(gts, res)
        cider, _ = Cider().compute_score(gts, res)
    return bleu, cider


def test_caption_module_matches_pycocoevalcap(capsys):
    predictions = ["A red circle left of a square.", "two blue triangles", "a big green star above a dot"]
    references = [
        ["a red circle to the left of a blue square", "a circle left of a square"],
        ["two blue triangles side by side", "blue triangles", "a pair of triangles"],
        ["a small green star", "a green star above a red dot"],
    ]
    result = load_metric("vlp_caption").compute(predictions=predictions, references=references, meteor=False)
    assert capsys.readouterr().out == ""  # pycocoevalcap's prints do not reach stdout
    gts = {i: [coco_tokenize(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [coco_tokenize(p)] for i, p in enumerate(predictions)}
    bleu, cider = _pycocoevalcap(gts, res)
    assert result == pytest.approx({**{f"bleu_{n + 1}": 100 * b for n, b in enumerate(bleu)}, "cider": 100 * cider})
    assert "meteor" not in result
    assert result == caption_metrics(predictions, references, meteor=False)
    assert 0 < result["bleu_4"] < result["bleu_1"] < 100


def test_identical_captions_score_bleu_100():
    captions = ["a red circle above a blue square", "two green triangles next to each other", "one small yellow star"]
    result = caption_metrics(captions, [[c] for c in captions], meteor=False)
    for n in range(1, 5):
        assert result[f"bleu_{n}"] == pytest.approx(100.0, abs=1e-6)
    assert result["cider"] > 500  # CIDEr-D of exact matches is 10 x (similarity 1) minus nothing, x100
    with pytest.raises(ValueError, match="one list of reference captions per prediction"):
        caption_metrics(captions, [[c] for c in captions[:2]])


@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR runs a Java program")
@pytest.mark.skipif(not os.environ.get("VLP_TEST_METEOR"), reason="starts a JVM (10-20 s); set VLP_TEST_METEOR=1")
def test_meteor_when_java_is_found():
    result = caption_metrics(["a red circle", "a dog"], [["a red circle", "a circle"], ["a blue square"]])
    assert 20 < result["meteor"] < 90  # one exact match (METEOR ~100 alone), one miss
    assert set(result) == {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "cider", "meteor"}
