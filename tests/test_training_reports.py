"""What a training run reports while it trains: the family's own metrics at each evaluation (`eval_rsum`, ...),
usable as `--metric-for-best-model`, and the throughput / data-wait share of each training log."""

import json

import pytest
import torch
from safetensors.torch import load_file

import modeling_vlp  # noqa: F401  (registers the Auto classes)
from modeling_vlp.commands import main

pytestmark = pytest.mark.usefixtures("one_thread")

RUN = [
    "--num-train", "32", "--num-validation", "8", "--per-device-train-batch-size", "8",
    "--per-device-eval-batch-size", "8", "--vocab-size", "200", "--logging-steps", "1",
    "--dataloader-num-workers", "0",
]  # fmt: skip


def test_best_checkpoint_by_the_family_metric(tmp_path, capsys):
    output = tmp_path / "run"
    assert main([
        "pretrain", "--family", "dual", "--preset", "dual-tiny", *RUN, "--max-steps", "6", "--eval-strategy", "steps",
        "--eval-steps", "2", "--save-steps", "2", "--save-total-limit", "5", "--load-best-model-at-end",
        "--metric-for-best-model", "eval_rsum", "--output-dir", str(output),
    ]) == 0  # fmt: skip
    capsys.readouterr()
    state = json.loads((output / "trainer_state.json").read_text())
    evaluations = [entry for entry in state["log_history"] if "eval_loss" in entry]
    assert [entry["step"] for entry in evaluations] == [2, 4, 6]
    expected = {"eval_loss", "eval_loss_itc", "eval_rsum", "eval_i2t_r@1", "eval_t2i_r@5", "eval_zero_shot_top1"}
    for entry in evaluations:
        assert expected <= set(entry), sorted(entry)
    best = max(evaluations, key=lambda entry: entry["eval_rsum"])
    assert state["best_metric"] == best["eval_rsum"]
    assert state["best_model_checkpoint"].endswith(f"checkpoint-{best['step']}")
    final = load_file(str(output / "model.safetensors"))
    chosen = load_file(str(output / f"checkpoint-{best['step']}" / "model.safetensors"))
    assert all(torch.equal(final[key], chosen[key]) for key in chosen)  # the saved model is the best checkpoint

    training_logs = [entry for entry in state["log_history"] if "loss" in entry]
    assert len(training_logs) == 6
    for entry in training_logs:
        assert entry["samples_per_second"] > 0 and 0.0 <= entry["data_wait_share"] < 1.0, entry
    assert state["log_history"][-1]["train_samples_per_second"] > 0


def test_finetune_reports_vqa_accuracy_through_the_same_hook(tmp_path, capsys):
    pretrained = tmp_path / "unified"
    assert main(["pretrain", "--family", "unified", "--preset", "unified-tiny", *RUN, "--max-steps", "1",
                 "--save-steps", "100", "--output-dir", str(pretrained)]) == 0  # fmt: skip
    capsys.readouterr()
    finetuned = tmp_path / "vqa"
    assert main([
        "finetune", "--model", str(pretrained), "--output-dir", str(finetuned), "--num-train", "8",
        "--num-validation", "8", "--max-steps", "2", "--eval-steps", "1", "--per-device-train-batch-size", "8",
        "--per-device-eval-batch-size", "8", "--logging-steps", "1",
    ]) == 0  # fmt: skip
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"vqa_accuracy", "eval_vqa_accuracy", "num_questions", "eval_loss"} <= set(metrics)
    assert metrics["vqa_accuracy"] == metrics["eval_vqa_accuracy"]
    state = json.loads((finetuned / "trainer_state.json").read_text())
    assert [entry["step"] for entry in state["log_history"] if "eval_vqa_accuracy" in entry] == [1, 2]
    assert all("samples_per_second" in entry for entry in state["log_history"] if "loss" in entry)
