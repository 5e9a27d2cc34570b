"""A run never dies on one bad row, never trains on nothing while saying it finished, and resumes exactly.

The matrix: one bad row of each kind among 40 good images in an imagefolder, through `vlp pretrain` (skipped, logged
with its row and file, counted; the run finishes) and `vlp evaluate` (skipped, counted, never ranked); the cases that
used to train on nothing (a clear error); and a run interrupted after a checkpoint that resumes to the very losses of
an uninterrupted run, for every family."""

import json
import logging
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from modeling_vlp.commands import main
from modeling_vlp.training.trainer import VLPTrainer

BAD_KINDS = ["truncated", "zero_bytes", "not_image", "bomb", "missing", "empty", "whitespace", "null", "number",
             "broken_line"]  # fmt: skip
RUN = ["--family", "dual", "--preset", "dual-tiny", "--max-steps", "3", "--per-device-train-batch-size", "8",
       "--vocab-size", "100", "--dataloader-num-workers", "0", "--logging-steps", "1", "--save-steps", "100",
       "--per-device-eval-batch-size", "16"]  # fmt: skip


def make_imagefolder(root, kind: str | None, count: int = 40, bad_line: int = 13) -> None:
    """`count` good 24x24 JPEGs with captions in metadata.jsonl, and (unless `kind` is None) one bad row at line
    `bad_line + 1`."""
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    rng = np.random.default_rng(0)
    lines = []
    for index in range(count):
        name = f"img{index:03d}.jpg"
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(os.path.join(root, name))
        lines.append(json.dumps({"file_name": name, "caption": f"picture number {index}"}))
    if kind is None:
        open(os.path.join(root, "metadata.jsonl"), "w").write("\n".join(lines) + "\n")
        return
    bad, caption, line = os.path.join(root, "bad.jpg"), "a bad one", None
    if kind == "truncated":
        data = open(os.path.join(root, "img000.jpg"), "rb").read()
        open(bad, "wb").write(data[: len(data) // 2])
    elif kind == "zero_bytes":
        open(bad, "wb").close()
    elif kind == "not_image":
        open(bad, "w").write("not an image")
    elif kind == "bomb":
        Image.new("L", (12000, 12000)).save(bad, format="PNG")  # 144 Mpx, over PIL's 89 Mpx limit
    elif kind != "missing":
        shutil.copy(os.path.join(root, "img001.jpg"), bad)
        caption = {"empty": "", "whitespace": "  \t ", "null": None, "number": 17}.get(kind, caption)
        if kind == "broken_line":
            line = '{"file_name": "bad.jpg", "caption": "unterminated'
    lines.insert(bad_line, line if line is not None else json.dumps({"file_name": "bad.jpg", "caption": caption}))
    open(os.path.join(root, "metadata.jsonl"), "w").write("\n".join(lines) + "\n")


EXPECTED_REASON = {
    "truncated": "image could not be decoded", "zero_bytes": "image is zero bytes",
    "not_image": "image could not be decoded", "bomb": "decompression-bomb limit", "missing": "does not exist",
    "empty": "caption is empty", "whitespace": "caption is only whitespace", "null": "caption is null",
    "number": "caption is a number", "broken_line": "not a JSON object",
}  # fmt: skip


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_pretrain_skips_and_counts_one_bad_row(tmp_path, caplog, kind):
    make_imagefolder(tmp_path / "data", kind)
    output = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        assert main(["pretrain", *RUN, "--dataset", str(tmp_path / "data"), "--output-dir", str(output)]) == 0
    warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    named = [message for message in warnings if EXPECTED_REASON[kind] in message]
    assert named, warnings
    # The file (or metadata line) is named, not a position in a batch.
    assert any("bad.jpg" in message or "metadata.jsonl:14" in message for message in named), named
    state = json.load(open(output / "trainer_state.json"))
    assert state["global_step"] == 3
    assert os.path.isfile(output / "eval_results.json")


@pytest.mark.parametrize("kind", ["truncated", "bomb", "missing", "empty", "null", "number"])
def test_evaluate_skips_counts_and_never_ranks_a_bad_row(tmp_path, kind):
    make_imagefolder(tmp_path / "good", None, count=24)
    model = tmp_path / "model"
    assert main(["pretrain", *RUN, "--max-steps", "1", "--dataset", str(tmp_path / "good"), "--output-dir",
                 str(model)]) == 0  # fmt: skip
    make_imagefolder(tmp_path / "data", kind, count=12, bad_line=5)
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(model), "--dataset", str(tmp_path / "data"), "--split", "train", "--task",
                 "retrieval", "--output-dir", str(out)]) == 0  # fmt: skip
    result = json.load(open(out / "eval_retrieval.json"))
    assert result["num_texts"] == 12 and result["num_images"] == 12
    assert result["skipped_rows"] == 1


def test_fewer_rows_than_one_batch_is_an_error_not_a_finished_run(tmp_path):
    make_imagefolder(tmp_path / "data", None, count=40)
    with pytest.raises(ValueError, match=r"32 training rows are fewer than one batch of 64"):
        main(["pretrain", *RUN, "--per-device-train-batch-size", "64", "--dataset", str(tmp_path / "data"),
              "--output-dir", str(tmp_path / "run")])  # fmt: skip
    assert not os.path.isfile(tmp_path / "run" / "eval_results.json")


def test_mostly_broken_data_stops_with_the_counts(tmp_path):
    make_imagefolder(tmp_path / "data", None, count=40)
    for name in sorted(os.listdir(tmp_path / "data"))[1:39]:  # all but two images are unreadable
        if name.endswith(".jpg"):
            open(tmp_path / "data" / name, "wb").close()
    with pytest.raises(ValueError, match=r"could not be used .*--max-bad-fraction 0.05.*image is zero bytes"):
        main(["pretrain", *RUN, "--dataset", str(tmp_path / "data"), "--output-dir", str(tmp_path / "run")])


FAMILY_RUN = ["--num-train", "48", "--num-validation", "8", "--per-device-train-batch-size", "8", "--vocab-size",
              "200", "--max-steps", "6", "--logging-steps", "1", "--save-steps", "3", "--dataloader-num-workers", "0",
              "--per-device-eval-batch-size", "8"]  # fmt: skip


def _losses(folder) -> dict[int, float]:
    history = json.load(open(os.path.join(folder, "trainer_state.json")))["log_history"]
    return {entry["step"]: entry["loss"] for entry in history if "loss" in entry}


@pytest.mark.parametrize("family", ["dual", "fusion", "unified", "captioning"])
def test_an_interrupted_run_resumes_to_the_same_losses(tmp_path, monkeypatch, family):
    run = ["pretrain", "--family", family, "--preset", f"{family}-tiny", *FAMILY_RUN, "--output-dir"]
    assert main([*run, str(tmp_path / "whole")]) == 0
    whole = _losses(tmp_path / "whole")

    original = VLPTrainer.training_step

    def crash_after_checkpoint_3(self, *args, **kwargs):
        if self.state.global_step == 4:  # checkpoint-3 is on disk; step 4 is half done
            raise KeyboardInterrupt("killed")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(VLPTrainer, "training_step", crash_after_checkpoint_3)
    with pytest.raises(KeyboardInterrupt):
        main([*run, str(tmp_path / "resumed")])
    monkeypatch.setattr(VLPTrainer, "training_step", original)
    assert os.path.isfile(tmp_path / "resumed" / "checkpoint-3" / "data_state_rank0.pt")
    assert main([*run, str(tmp_path / "resumed")]) == 0
    resumed = _losses(tmp_path / "resumed")
    assert sorted(resumed) == sorted(whole) == [1, 2, 3, 4, 5, 6]
    assert {step: resumed[step] for step in (4, 5, 6)} == {step: whole[step] for step in (4, 5, 6)}
