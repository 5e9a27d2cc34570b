"""`vlp evaluate` in-process on tiny saved models: each task of each family prints one JSON object and writes its
PNG, the numbers are those of the evaluation functions, and bad input is a one-line error with exit status 2."""

import json
import os

import datasets
import pytest
import torch
from PIL import Image

import modeling_vlp  # noqa: F401  (registers the Auto classes)
from modeling_vlp.commands.arguments import PretrainArguments
from modeling_vlp.commands.common import build_config, build_processor
from modeling_vlp.data.scenes import make_scenes_dataset, make_scenes_vqa_dataset, vqa_answer_vocabulary
from modeling_vlp.commands.evaluate import TASKS, evaluate_command, tasks_by_family
from modeling_vlp.evaluation.embeddings import evaluate_dual_encoder
from modeling_vlp.evaluation.matching import evaluate_fusion_retrieval


pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLES = 6
RETRIEVAL_KEYS = {
    "i2t_r@1", "i2t_r@5", "i2t_r@10", "t2i_r@1", "t2i_r@5", "t2i_r@10", "i2t_mean_rank", "t2i_mean_rank", "rsum",
    "chance_i2t_r@1", "chance_t2i_r@1",
}  # fmt: skip
COMMON_KEYS = {"task", "model", "dataset", "num_images", "num_texts", "png"}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Tiny random models of every family, saved with one processor (a tokenizer trained on scene captions)."""
    from modeling_vlp import (
        VLPDualEncoderModel,
        VLPFusionForPreTraining,
        VLPUnifiedForPreTraining,
        VLPUnifiedForQuestionAnswering,
    )

    root = tmp_path_factory.mktemp("models")
    os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
    scenes = make_scenes_dataset(num_train=48, num_validation=0, image_size=32, seed=0)
    processor = build_processor(PretrainArguments(vocab_size=200), scenes["train"], image_size=32, max_text_length=16)
    id2label, label2id = vqa_answer_vocabulary(make_scenes_vqa_dataset(16, 0, image_size=32))
    models = {
        "dual": (VLPDualEncoderModel, "dual-tiny", {}),
        "unified": (VLPUnifiedForPreTraining, "unified-tiny", {}),
        "fusion": (VLPFusionForPreTraining, "fusion-tiny", {}),
        "unified-vqa": (
            VLPUnifiedForQuestionAnswering, "unified-tiny",
            dict(num_labels=len(id2label), id2label=id2label, label2id=label2id),
        ),
    }  # fmt: skip
    paths = {}
    for name, (model_class, preset, extra) in models.items():
        family = name.split("-")[0]
        config = build_config(PretrainArguments(family=family), preset, processor.tokenizer, family=family)
        config.update(extra)
        torch.manual_seed(0)
        model = model_class(config).eval()
        paths[name] = str(root / name)
        model.save_pretrained(paths[name])
        processor.save_pretrained(paths[name])
    paths["processor"] = processor
    return paths


def run(argv, capsys) -> tuple[int, str, str]:
    status = evaluate_command(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def evaluate_ok(argv, capsys) -> dict:
    status, out, err = run(argv, capsys)
    assert status == 0, err[-3000:]
    lines = out.strip().splitlines()
    assert len(lines) == 1, out  # one JSON object, nothing else on stdout
    return json.loads(lines[0])


@pytest.mark.parametrize(
    "model, task, keys",
    [
        ("dual", "retrieval", RETRIEVAL_KEYS),
        ("dual", "zero-shot", {"top1", "top5", "chance_top1", "num_classes"}),
        ("unified", "retrieval", RETRIEVAL_KEYS),
        ("fusion", "retrieval", RETRIEVAL_KEYS | {"itc_i2t_r@1", "rerank_k", "num_itm_pairs"}),
        ("fusion", "zero-shot", {"top1", "top5"}),
        ("unified-vqa", "vqa", {"vqa_accuracy", "num_questions", "vqa_accuracy_colour"}),
    ],
)
def test_each_task_of_each_family_prints_json_and_writes_a_png(saved, tmp_path, capsys, model, task, keys):
    output_dir = tmp_path / "eval"
    result = evaluate_ok(
        ["--model", saved[model], "--task", task, "--max-examples", str(EXAMPLES), "--output-dir", str(output_dir),
         "--batch-size", "4"],
        capsys,
    )  # fmt: skip
    assert keys | COMMON_KEYS <= set(result)
    assert result["task"] == task and result["model"] == saved[model]
    assert result["dataset"] == "scenes/validation"
    if task == "vqa":
        assert result["num_texts"] == EXAMPLES and 1 <= result["num_images"] <= EXAMPLES
        assert 0.0 <= result["vqa_accuracy"] <= 100.0
    else:
        assert result["num_images"] == EXAMPLES
    assert json.loads((output_dir / f"eval_{task}.json").read_text()) == result
    assert result["png"] == str(output_dir / f"eval_{task}.png")
    with Image.open(result["png"]) as image:
        assert image.format == "PNG" and image.width > 200 and image.height > 100


def _scenes_validation(image_size=32):
    return make_scenes_dataset(num_train=0, num_validation=EXAMPLES, image_size=image_size, seed=0)["validation"]


def test_retrieval_numbers_are_those_of_the_evaluation_functions(saved, tmp_path, capsys):
    from modeling_vlp import VLPDualEncoderModel, VLPFusionForPreTraining

    processor = saved["processor"]
    split = _scenes_validation()
    args = ["--task", "retrieval", "--max-examples", str(EXAMPLES), "--output-dir", str(tmp_path), "--rerank-k", "4"]
    dual = evaluate_ok(["--model", saved["dual"], *args], capsys)
    reference = evaluate_dual_encoder(
        VLPDualEncoderModel.from_pretrained(saved["dual"]), processor, split.remove_columns("label"), show_progress=False
    )
    for key, value in reference.items():
        assert dual[key] == pytest.approx(value, abs=1e-9), key
    fusion = evaluate_ok(["--model", saved["fusion"], *args], capsys)
    reference = evaluate_fusion_retrieval(
        VLPFusionForPreTraining.from_pretrained(saved["fusion"]), processor, split, k=4, show_progress=False
    )
    for key, value in reference.items():
        assert fusion[key] == pytest.approx(value, abs=1e-9), key
    # A retrieval of 6 images from 18 captions is no better than chance on random weights, but not degenerate.
    assert fusion["num_texts"] == 3 * EXAMPLES


def test_zero_shot_on_a_local_dataset_with_string_labels(saved, tmp_path, capsys):
    split = _scenes_validation()
    names = split.features["label"].names
    local = split.map(lambda row: {"kind": names[row["label"]]}).remove_columns(["label", "objects"])
    datasets.DatasetDict({"test": local}).save_to_disk(str(tmp_path / "data"))
    result = evaluate_ok(
        ["--model", saved["dual"], "--task", "zero-shot", "--dataset", str(tmp_path / "data"), "--label-column", "kind",
         "--output-dir", str(tmp_path / "out")],
        capsys,
    )  # fmt: skip
    assert result["dataset"] == f"{tmp_path / 'data'}/test"
    assert result["num_classes"] == len(set(local["kind"])) and result["num_images"] == EXAMPLES


# ---- bad input ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_data(tmp_path_factory):
    """An image-caption dataset without labels or answers, with an empty validation split next to a test split."""
    root = tmp_path_factory.mktemp("data")
    split = _scenes_validation().select_columns(["image", "caption"])
    datasets.DatasetDict({"test": split}).save_to_disk(str(root / "captions"))
    (root / "empty").mkdir()
    split.to_parquet(str(root / "empty" / "train-0.parquet"))
    split.select([]).to_parquet(str(root / "empty" / "validation-0.parquet"))
    return root


def assert_error(argv, capsys, *fragments):
    status, out, err = run(argv, capsys)
    assert status == 2 and out == ""
    message = err.strip().splitlines()[-1]
    assert message.startswith("vlp evaluate: error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in message, message


def test_bad_input_is_a_one_line_error(saved, local_data, tmp_path, capsys):
    out = ["--output-dir", str(tmp_path)]
    captions = str(local_data / "captions")
    assert_error(["--model", saved["dual"], "--task", "caption", *out], capsys, "unknown --task 'caption'", "retrieval")
    assert_error(["--model", saved["dual"], "--task", "vqa", *out], capsys, "vlp_dual_encoder", "dual: retrieval, zero-shot")
    assert_error(["--model", saved["unified"], "--task", "zero-shot", *out], capsys, "unified: retrieval, vqa")
    assert_error(["--model", saved["unified"], "--task", "vqa", *out], capsys, "VLPUnifiedForPreTraining", "VQA head")
    assert_error(["--model", saved["unified-vqa"], "--task", "retrieval", *out], capsys, "ITM head")
    assert_error(["--model", str(tmp_path / "nothing"), "--task", "retrieval", *out], capsys, "could not be loaded")
    # Columns: the missing one named, the ones found listed.
    assert_error(["--model", saved["dual"], "--task", "zero-shot", "--dataset", captions, *out], capsys,
                 "'label'", "missing", "['image', 'caption']")  # fmt: skip
    assert_error(["--model", saved["unified-vqa"], "--task", "vqa", "--dataset", captions, "--question-column",
                  "caption", *out], capsys, "'answers'", "columns found")  # fmt: skip
    # Splits: a missing one lists those that exist; an empty one is named.
    assert_error(["--model", saved["dual"], "--task", "retrieval", "--dataset", captions, "--split", "validation", *out],
                 capsys, "'validation'", "['test']")  # fmt: skip
    # (datasets refuses an empty parquet split itself: "Instruction "validation" corresponds to no data!")
    assert_error(["--model", saved["dual"], "--task", "retrieval", "--dataset", str(local_data / "empty"), *out],
                 capsys, str(local_data / "empty"), "validation")  # fmt: skip
    assert_error(["--model", saved["dual"], "--task", "retrieval", "--split", "dev", *out], capsys, "'dev'", "validation")
    assert_error(["--model", saved["dual"], "--task", "retrieval", "--max-examples", "0", *out], capsys, "--max-examples")


def test_the_task_table_names_each_family():
    assert set(TASKS) == {"retrieval", "zero-shot", "vqa", "captioning"}
    assert tasks_by_family() == (
        "dual: retrieval, zero-shot; unified: retrieval, vqa; fusion: retrieval, zero-shot, vqa; captioning: captioning"
    )


def test_an_empty_split_is_named(saved, tmp_path, capsys, monkeypatch):
    import modeling_vlp.commands.evaluate as command

    empty = _scenes_validation().select([])
    monkeypatch.setattr(command, "_local_split", lambda args, task, config: (empty, "somewhere/validation"))
    assert_error(["--model", saved["dual"], "--task", "retrieval", "--dataset", "somewhere", "--output-dir",
                  str(tmp_path)], capsys, "'somewhere/validation'", "empty")  # fmt: skip
