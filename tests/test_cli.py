"""`vlp pretrain` end to end on the tiny preset: metrics, a reloadable output folder, resuming, local datasets."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import modeling_vlp  # noqa: F401  (registers the Auto classes)
from modeling_vlp.commands.common import find_resume_checkpoint
from modeling_vlp.commands import main
from modeling_vlp.commands.pretrain import parse_objective_weights


VLP = shutil.which("vlp", path=str(Path(sys.executable).parent)) or shutil.which("vlp")
TINY_RUN = [
    "pretrain", "--family", "dual", "--preset", "dual-tiny", "--num-train", "64", "--num-validation", "16",
    "--per-device-train-batch-size", "16", "--per-device-eval-batch-size", "32", "--max-text-length", "32",
    "--vocab-size", "200", "--save-steps", "10", "--logging-steps", "5", "--dataloader-num-workers", "0",
]  # fmt: skip
RETRIEVAL_KEYS = {"i2t_r@1", "i2t_r@5", "t2i_r@1", "t2i_r@5", "chance_i2t_r@1", "chance_t2i_r@1", "global_step"}


def run_vlp(args: list[str], tmp_path: Path, command=None, threads: int = 2) -> subprocess.CompletedProcess:
    env = {
        **os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": str(threads),
        "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache"), "TOKENIZERS_PARALLELISM": "false",
    }  # fmt: skip
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    result = subprocess.run([*(command or [VLP]), *args], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-5000:]}"
    return result


def last_json_line(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def read_state(output_dir: Path) -> dict:
    return json.loads((output_dir / "trainer_state.json").read_text())


@pytest.mark.skipif(VLP is None, reason="the `vlp` console script is not installed")
@pytest.mark.slow  # runs a subprocess
def test_pretrain_evaluates_saves_and_resumes(tmp_path):
    from transformers import AutoModel, AutoProcessor

    from modeling_vlp.data.scenes import make_scenes_dataset
    from modeling_vlp.evaluation.embeddings import evaluate_dual_encoder

    output_dir = tmp_path / "run"
    first = run_vlp([*TINY_RUN, "--output-dir", str(output_dir), "--max-steps", "10"], tmp_path)
    metrics = last_json_line(first.stdout)
    assert RETRIEVAL_KEYS | {"zero_shot_top1", "zero_shot_chance_top1"} <= set(metrics)
    assert all(isinstance(value, float) for value in metrics.values())
    assert metrics["global_step"] == 10 and metrics["num_images"] == 16
    assert json.loads((output_dir / "eval_results.json").read_text()) == metrics
    assert (output_dir / "checkpoint-10" / "trainer_state.json").is_file()
    first_state = read_state(output_dir)

    # The output folder is the final model with its processor, loadable through the Auto classes.
    model = AutoModel.from_pretrained(output_dir)
    processor = AutoProcessor.from_pretrained(output_dir)
    assert type(model).__name__ == "VLPDualEncoderModel"
    assert model.config.text_config.vocab_size == len(processor.tokenizer)
    assert model.config.text_config.eos_token_id == processor.tokenizer.eos_token_id
    validation = make_scenes_dataset(64, 16, image_size=32, seed=0)["validation"]
    reloaded = evaluate_dual_encoder(model, processor, validation, batch_size=32, show_progress=False)
    for key in ("i2t_r@1", "t2i_r@1", "i2t_r@5", "zero_shot_top1"):
        assert reloaded[key] == pytest.approx(metrics[key]), key

    # The same command with more steps continues from checkpoint-10 instead of starting over.
    second = run_vlp([*TINY_RUN, "--output-dir", str(output_dir), "--max-steps", "15"], tmp_path)
    assert "Resuming from" in second.stderr and "checkpoint-10" in second.stderr
    assert last_json_line(second.stdout)["global_step"] == 15
    state = read_state(output_dir)
    assert state["global_step"] == 15
    # A restart would have re-logged steps 5 and 10 under a 15-step learning-rate schedule.
    old_logs = [entry for entry in first_state["log_history"] if "loss" in entry]
    new_logs = [entry for entry in state["log_history"] if "loss" in entry]
    assert [entry["step"] for entry in new_logs] == [5, 10, 15]
    assert new_logs[:2] == old_logs
    assert all("loss_itc" in entry for entry in new_logs)

    # Once max_steps is reached a rerun only evaluates (the Trainer alone would take a 16th step).
    third = run_vlp([*TINY_RUN, "--output-dir", str(output_dir), "--max-steps", "15"], tmp_path)
    assert "already reached --max-steps 15" in third.stderr
    assert last_json_line(third.stdout) == last_json_line(second.stdout)
    assert read_state(output_dir)["global_step"] == 15
    assert not (output_dir / "checkpoint-16").exists()


def _write_imagefolder(root: Path, num_images: int = 24) -> None:
    colours = {"red": (220, 30, 30), "green": (30, 160, 50), "blue": (30, 70, 220), "yellow": (240, 200, 20)}
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    with open(root / "metadata.jsonl", "w") as handle:
        for index in range(num_images):
            name = list(colours)[index % len(colours)]
            pixels = np.full((40, 40, 3), colours[name], dtype=np.int16) + rng.integers(-8, 9, (40, 40, 3))
            file_name = f"img_{index:03d}.png"
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / file_name)
            handle.write(json.dumps({"file_name": file_name, "caption": f"a {name} square number {index}"}) + "\n")


@pytest.mark.skipif(VLP is None, reason="the `vlp` console script is not installed")
@pytest.mark.slow  # runs a subprocess
def test_pretrain_on_an_imagefolder(tmp_path):
    data_dir = tmp_path / "folder"
    _write_imagefolder(data_dir)
    output_dir = tmp_path / "run"
    args = [
        *TINY_RUN, "--dataset", str(data_dir), "--output-dir", str(output_dir), "--max-steps", "4",
        "--loss-type", "sigmoid", "--objective-weights", "itc=0.5", "--logging-steps", "2",
    ]  # fmt: skip
    args[args.index("--num-validation") + 1] = "4"  # no validation split: hold out 4 training rows
    metrics = last_json_line(run_vlp(args, tmp_path).stdout)
    assert RETRIEVAL_KEYS <= set(metrics)
    assert metrics["num_images"] == 4
    assert "zero_shot_top1" not in metrics  # no class labels in a plain imagefolder
    assert (output_dir / "model.safetensors").is_file()
    config = json.loads((output_dir / "config.json").read_text())
    assert config["loss_type"] == "sigmoid" and config["logit_bias_init_value"] == -10.0
    logs = [entry for entry in read_state(output_dir)["log_history"] if "loss" in entry]
    assert logs and all(entry["loss"] == pytest.approx(0.5 * entry["loss_itc"], rel=1e-5) for entry in logs)


@pytest.mark.skipif(VLP is None, reason="the `vlp` console script is not installed")
@pytest.mark.slow  # runs a subprocess
def test_pretrain_under_torchrun_trains_one_global_batch(tmp_path, free_port):
    """2 CPU processes share the work: 64 rows / (2 x 8) = 4 steps per epoch, not 8 for independent processes."""
    output_dir = tmp_path / "run"
    args = [*TINY_RUN, "--output-dir", str(output_dir), "--max-steps", "4", "--per-device-train-batch-size", "8"]
    launcher = [
        "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port), "-m", "modeling_vlp.commands",
    ]  # fmt: skip
    result = run_vlp(args, tmp_path, command=[sys.executable, *launcher], threads=1)
    json_lines = [line for line in result.stdout.splitlines() if line.startswith("{\"")]
    assert len(json_lines) == 1  # only rank 0 evaluates
    assert read_state(output_dir)["epoch"] == pytest.approx(1.0)


def test_parse_objective_weights():
    assert parse_objective_weights(["itc"], []) == {"itc": 1.0}
    assert parse_objective_weights(["itc", "itm"], ["itm=0.5"]) == {"itc": 1.0, "itm": 0.5}
    with pytest.raises(ValueError, match="NAME=WEIGHT"):
        parse_objective_weights(["itc"], ["itc"])
    with pytest.raises(ValueError, match="not in --objectives"):
        parse_objective_weights(["itc"], ["mlm=1"])
    with pytest.raises(ValueError, match="not a number"):
        parse_objective_weights(["itc"], ["itc=high"])


def test_resume_skips_checkpoints_interrupted_while_saving(tmp_path):
    assert find_resume_checkpoint(str(tmp_path / "missing")) is None
    for step in (5, 10, 20):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-5" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-10" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-final").mkdir()
    assert find_resume_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-10")


def test_usage_and_unknown_command(capsys):
    assert main([]) == 2
    assert "pretrain" in capsys.readouterr().out
    assert main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "--output_dir" in help_text and "--objective_weights" in help_text and "--local_loss" in help_text


# ---- the unified and fusion families, VQA fine-tuning -----------------------------------------------------------

FAMILY_RUN = [
    "--num-train", "48", "--num-validation", "12", "--per-device-train-batch-size", "8",
    "--per-device-eval-batch-size", "16", "--vocab-size", "200", "--logging-steps", "2", "--max-steps", "4",
    "--save-steps", "2",
]  # fmt: skip


def logged_losses(output_dir: Path) -> set[str]:
    return {key for entry in read_state(output_dir)["log_history"] for key in entry if key.startswith("loss_")}


@pytest.mark.skipif(VLP is None, reason="the `vlp` console script is not installed")
@pytest.mark.slow  # runs a subprocess
def test_unified_pretraining_then_vqa_finetuning(tmp_path):
    from transformers import AutoModelForVisualQuestionAnswering

    pretrained = tmp_path / "unified"
    result = run_vlp(
        ["pretrain", "--family", "unified", "--preset", "unified-tiny", "--objectives", "itm,mlm,mim",
         "--objective-weights", "mlm=0.5", *FAMILY_RUN, "--output-dir", str(pretrained)],
        tmp_path,
    )  # fmt: skip
    metrics = last_json_line(result.stdout)
    assert {"i2t_r@1", "t2i_r@1", "chance_i2t_r@1", "itm_accuracy", "mlm_accuracy", "global_step"} <= set(metrics)
    assert logged_losses(pretrained) == {"loss_itm", "loss_mlm", "loss_mim"}
    config = json.loads((pretrained / "config.json").read_text())
    assert config["architectures"] == ["VLPUnifiedForPreTraining"] and config["model_type"] == "vlp_unified"

    finetuned = tmp_path / "vqa"
    result = run_vlp(
        ["finetune", "--task", "vqa", "--model", str(pretrained), "--output-dir", str(finetuned),
         "--num-train", "24", "--num-validation", "8", "--max-steps", "4", "--eval-steps", "2",
         "--per-device-train-batch-size", "8", "--per-device-eval-batch-size", "16", "--logging-steps", "2"],
        tmp_path,
    )  # fmt: skip
    metrics = last_json_line(result.stdout)
    assert {"vqa_accuracy", "eval_vqa_accuracy", "num_questions", "vqa_accuracy_colour"} <= set(metrics)
    assert 0.0 <= metrics["vqa_accuracy"] <= 100.0
    # The Trainer reported VQA accuracy at each evaluation during training too.
    assert any("eval_vqa_accuracy" in entry for entry in read_state(finetuned)["log_history"])
    model = AutoModelForVisualQuestionAnswering.from_pretrained(finetuned)
    assert type(model).__name__ == "VLPUnifiedForQuestionAnswering"
    assert model.config.num_labels == len(model.config.id2label) > 5


@pytest.mark.skipif(VLP is None, reason="the `vlp` console script is not installed")
@pytest.mark.slow  # runs a subprocess
def test_unified_pretraining_on_region_features(tmp_path):
    output_dir = tmp_path / "regions"
    result = run_vlp(
        ["pretrain", "--family", "unified", "--preset", "unified-small-regions", "--layers", "1", "--width", "32",
         "--heads", "2", "--objectives", "itm,mlm,mim", *FAMILY_RUN, "--output-dir", str(output_dir)],
        tmp_path,
    )  # fmt: skip
    assert {"itm_accuracy", "i2t_r@1"} <= set(last_json_line(result.stdout))
    assert logged_losses(output_dir) == {"loss_itm", "loss_mlm", "loss_mim"}
    processor_config = json.loads((output_dir / "processor_config.json").read_text())
    assert processor_config.get("image_processor") is None


@pytest.mark.skipif(VLP is None, reason="the `vlp` console script is not installed")
@pytest.mark.slow  # runs a subprocess
def test_fusion_pretraining_with_momentum_distillation(tmp_path):
    output_dir = tmp_path / "fusion"
    result = run_vlp(
        ["pretrain", "--family", "fusion", "--preset", "fusion-tiny", "--momentum-distill", "--queue-size", "16",
         *FAMILY_RUN, "--output-dir", str(output_dir)],
        tmp_path,
    )  # fmt: skip
    metrics = last_json_line(result.stdout)
    assert {"i2t_r@1", "itc_i2t_r@1", "num_itm_pairs", "rerank_k", "chance_t2i_r@1"} <= set(metrics)
    assert logged_losses(output_dir) == {"loss_itc", "loss_itm", "loss_mlm"}
    assert (output_dir / "checkpoint-2" / "momentum_state.safetensors").is_file()


def test_options_of_another_family_are_refused(tmp_path):
    with pytest.raises(ValueError, match="--vision-layers do not apply to the 'unified' family"):
        main(["pretrain", "--family", "unified", "--vision-layers", "2", "--output-dir", str(tmp_path)])
    with pytest.raises(ValueError, match=r"\[.itc.\] are not available for VLPUnifiedForPreTraining"):
        main(["pretrain", "--family", "unified", "--preset", "unified-tiny", "--objectives", "itc", *FAMILY_RUN,
              "--output-dir", str(tmp_path / "x")])  # fmt: skip
    with pytest.raises(ValueError, match="exactly one of --model"):
        main(["finetune", "--task", "vqa", "--output-dir", str(tmp_path / "y")])


def test_unified_pretraining_on_a_folder_of_npy_region_features(tmp_path):
    """`--dataset` for a region model: captions in metadata.csv, features and boxes in .npy files."""
    rng = np.random.default_rng(0)
    directory = tmp_path / "regions"
    (directory / "features").mkdir(parents=True)
    lines = ["caption,visual_feats_file,visual_pos_file"]
    for index in range(20):
        count = 3 + index % 4
        corners = rng.uniform(0.0, 0.5, (count, 2))
        boxes = np.concatenate([corners, corners + rng.uniform(0.1, 0.5, (count, 2))], axis=1)
        np.save(directory / "features" / f"{index}_feats.npy", rng.normal(size=(count, 64)).astype(np.float32))
        np.save(directory / "features" / f"{index}_boxes.npy", boxes.astype(np.float32))
        colour = ("red", "green", "blue", "white")[index % 4]
        lines.append(f"a {colour} thing number {index},features/{index}_feats.npy,features/{index}_boxes.npy")
    (directory / "metadata.csv").write_text("\n".join(lines) + "\n")
    output_dir = tmp_path / "run"
    status = main([
        "pretrain", "--family", "unified", "--preset", "unified-small-regions", "--layers", "1", "--width", "32",
        "--heads", "2", "--dataset", str(directory), "--num-validation", "4", "--objectives", "itm,mlm,mim",
        "--per-device-train-batch-size", "4", "--per-device-eval-batch-size", "4", "--max-steps", "2",
        "--vocab-size", "60", "--save-steps", "2", "--logging-steps", "1", "--output-dir", str(output_dir),
    ])  # fmt: skip
    assert status == 0
    metrics = json.loads((output_dir / "eval_results.json").read_text())
    assert metrics["num_images"] == 4 and "itm_accuracy" in metrics
    assert logged_losses(output_dir) == {"loss_itm", "loss_mlm", "loss_mim"}


@pytest.mark.slow  # runs a subprocess
def test_fusion_pretraining_under_torchrun_with_unused_heads(tmp_path, free_port):
    """2 DDP processes train a fusion model whose MIM head and mask token get no gradient (no mim objective):
    the command asks DDP to find unused parameters for the families with heads, and the momentum state is saved."""
    output_dir = tmp_path / "run"
    args = [
        "pretrain", "--family", "fusion", "--preset", "fusion-tiny", *FAMILY_RUN, "--momentum-distill",
        "--queue-size", "32", "--output-dir", str(output_dir),
    ]  # fmt: skip
    launcher = [
        "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port), "-m", "modeling_vlp.commands",
    ]  # fmt: skip
    result = run_vlp(args, tmp_path, command=[sys.executable, *launcher], threads=1)
    assert len([line for line in result.stdout.splitlines() if line.startswith("{\"")]) == 1
    assert logged_losses(output_dir) == {"loss_itc", "loss_itm", "loss_mlm"}
    assert (output_dir / "checkpoint-4" / "momentum_state.safetensors").is_file()


def test_each_family_names_the_model_type_of_its_presets():
    from modeling_vlp import get_preset_config
    from modeling_vlp.families import FAMILIES

    for name, family in FAMILIES.items():
        assert get_preset_config(family.default_preset).model_type == family.model_type, name
