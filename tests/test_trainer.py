"""VLPTrainer, VLPCollator and the gathered contrastive objectives, on tiny seeded models and synthetic data."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import TrainingArguments

import modeling_vlp  # noqa: F401  (registers the Auto classes)
from modeling_vlp import VLPDualEncoderModel, get_preset_config
from modeling_vlp.training.collators import VLPCollator
from modeling_vlp.processors import VLPImageProcessor, VLPProcessor, VLPTokenizer
from modeling_vlp.training.family_objectives import OBJECTIVES, compute_objective_losses, VLPObjectiveArguments
from modeling_vlp.training.trainer import VLPTrainer


REPO_ROOT = Path(__file__).resolve().parents[1]
COLOURS = {
    "red": (220, 30, 30), "green": (30, 160, 50), "blue": (30, 70, 220), "yellow": (240, 200, 20),
    "purple": (140, 50, 180), "orange": (250, 130, 20), "black": (30, 30, 30), "white": (245, 245, 245),
}  # fmt: skip
SIDES = ("left", "right")


def make_rows(num_rows: int = 16, image_size: int = 32, seed: int = 0) -> list[dict]:
    """Images split in a coloured half and a grey half; captions say the colour and the side."""
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(num_rows):
        colour = list(COLOURS)[index % len(COLOURS)]
        side = SIDES[(index // len(COLOURS)) % len(SIDES)]
        pixels = np.full((image_size, image_size, 3), 128, dtype=np.int16)
        half = slice(0, image_size // 2) if side == "left" else slice(image_size // 2, image_size)
        pixels[:, half] = COLOURS[colour]
        pixels += rng.integers(-10, 11, pixels.shape)
        captions = [f"a {colour} half on the {side}", f"the {side} side is {colour}"]
        rows.append(
            {
                "image": Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)),
                "caption": captions[0],
                "captions": captions,
                "image_id": 100 + index,
            }
        )
    return rows


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        return self.rows[index]


@pytest.fixture(scope="module")
def processor():
    rows = make_rows()
    texts = [caption for row in rows for caption in row["captions"]]
    tokenizer = VLPTokenizer.train_from_iterator(texts, vocab_size=64, model_type="bpe", model_max_length=16)
    image_processor = VLPImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False)
    return VLPProcessor(image_processor, tokenizer)


def tiny_model(processor, **overrides) -> VLPDualEncoderModel:
    tokenizer = processor.tokenizer
    text_config = dict(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    # Mean pooling: a class token is identical for every image at init, which stalls the first steps of a tiny run.
    config = get_preset_config("dual-tiny", vision_config={"pooling": "mean"}, text_config=text_config, **overrides)
    torch.manual_seed(0)
    return VLPDualEncoderModel(config)


def training_args(tmp_path, **overrides) -> TrainingArguments:
    defaults = dict(
        output_dir=str(tmp_path), per_device_train_batch_size=8, per_device_eval_batch_size=8, learning_rate=3e-3,
        max_steps=30, warmup_steps=3, logging_steps=5, save_strategy="no", report_to="none",
        remove_unused_columns=False, use_cpu=True, disable_tqdm=True, seed=0, dataloader_pin_memory=False,
    )  # fmt: skip
    defaults.update(overrides)
    return TrainingArguments(**defaults)


# ---- collator --------------------------------------------------------------------------------------------------


def test_collator_batches_rows(processor):
    rows = make_rows(4)
    batch = VLPCollator(processor, max_length=16)(rows)
    assert batch["pixel_values"].shape == (4, 3, 32, 32)
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["input_ids"].shape[0] == 4
    assert batch["image_id"].tolist() == [100, 101, 102, 103]
    expected = processor.tokenizer([row["caption"] for row in rows], padding=True, return_tensors="pt")["input_ids"]
    torch.testing.assert_close(batch["input_ids"], expected)


def test_collator_samples_captions_reproducibly(processor):
    rows = make_rows(8)

    def draws(seed):
        collator = VLPCollator(processor, sample_captions=True, seed=seed)
        return [collator(rows)["input_ids"].tolist() for _ in range(3)]

    assert draws(0) == draws(0)
    assert draws(0) != draws(1)
    # Without sampling the main caption is always used.
    fixed = VLPCollator(processor, sample_captions=False)
    assert fixed(rows)["input_ids"].tolist() == fixed(rows)["input_ids"].tolist()


def test_collator_names_missing_columns(processor):
    rows = [{"caption": "a red half on the left"}]
    with pytest.raises(KeyError, match="'image'"):
        VLPCollator(processor)(rows)
    rows = make_rows(2)
    with pytest.raises(KeyError, match="'text'"):
        VLPCollator(processor, text_column="text")(rows)


def test_collator_without_image_id(processor):
    rows = [{key: value for key, value in row.items() if key != "image_id"} for row in make_rows(2)]
    assert "image_id" not in VLPCollator(processor)(rows)


# ---- objectives arguments --------------------------------------------------------------------------------------


def test_objective_arguments_are_checked():
    assert "itc" in OBJECTIVES["vlp_dual_encoder"]
    assert VLPObjectiveArguments(objectives=["itc"]).objectives == {"itc": 1.0}
    with pytest.raises(ValueError, match="Unknown objectives"):
        VLPObjectiveArguments(objectives={"itc": 1.0, "nope": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        VLPObjectiveArguments(objectives={"itc": -1.0})
    with pytest.raises(ValueError, match="at least one"):
        VLPObjectiveArguments(objectives={})
    with pytest.raises(ValueError, match="itm_negative_ratio"):
        VLPObjectiveArguments(objectives=["itm"], itm_negative_ratio=1.5)


def test_objectives_are_checked_against_the_model_family(processor):
    model = tiny_model(processor)
    batch = VLPCollator(processor)(make_rows(4))
    with pytest.raises(ValueError, match=r"\['mlm'\] are not available for VLPDualEncoderModel"):
        compute_objective_losses(model, batch, VLPObjectiveArguments(objectives=["itc", "mlm"]))


def test_no_weight_decay_on_temperature_norms_and_biases(processor, tmp_path):
    model = tiny_model(processor, loss_type="sigmoid")
    trainer = VLPTrainer(model=model, args=training_args(tmp_path), data_collator=VLPCollator(processor))
    decayed = set(trainer.get_decay_parameter_names(model))
    assert "visual_projection.weight" in decayed and "text_model.embeddings.token_embedding.weight" in decayed
    undecayed = {"logit_scale", "logit_bias", "vision_model.embeddings.class_embedding", "text_model.final_layer_norm.bias"}
    assert not decayed & undecayed


# ---- training --------------------------------------------------------------------------------------------------


def test_training_lowers_the_loss_and_logs_each_objective(processor, tmp_path):
    rows = make_rows()
    weight = 2.0
    trainer = VLPTrainer(
        model=tiny_model(processor),
        args=training_args(tmp_path),
        train_dataset=ListDataset(rows),
        eval_dataset=ListDataset(rows),
        data_collator=VLPCollator(processor, sample_captions=True, max_length=16),
        objective_args=VLPObjectiveArguments(objectives={"itc": weight}),
    )
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()

    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 30 // 5
    for entry in logs:
        # The logged total is the weighted sum of the per-objective means over the same interval.
        assert entry["loss"] == pytest.approx(weight * entry["loss_itc"], rel=1e-5)
    assert logs[-1]["loss_itc"] < 0.6 * logs[0]["loss_itc"]
    assert after["eval_loss_itc"] < 0.6 * before["eval_loss_itc"]
    assert after["eval_loss"] == pytest.approx(weight * after["eval_loss_itc"], rel=1e-5)


def test_predict_returns_embeddings_and_image_ids(processor, tmp_path):
    rows = make_rows(12)
    trainer = VLPTrainer(
        model=tiny_model(processor),
        args=training_args(tmp_path, per_device_eval_batch_size=5),
        data_collator=VLPCollator(processor, max_length=16),
    )
    output = trainer.predict(ListDataset(rows))
    image_embeds, text_embeds = output.predictions
    assert image_embeds.shape == text_embeds.shape == (12, 16)
    np.testing.assert_allclose(np.linalg.norm(image_embeds, axis=-1), 1.0, rtol=1e-5)
    assert output.label_ids.tolist() == [row["image_id"] for row in rows]
    assert "test_loss_itc" in output.metrics


def test_sigmoid_loss_type_is_used(processor, tmp_path):
    model = tiny_model(processor, loss_type="sigmoid", logit_bias_init_value=-5.0)
    trainer = VLPTrainer(model=model, args=training_args(tmp_path), data_collator=VLPCollator(processor))
    batch = trainer.data_collator(make_rows(6))
    loss = trainer.compute_loss(model, batch)
    outputs = model(**{k: v for k, v in batch.items() if k != "image_id"})
    logits = outputs.logits_per_image
    labels = 2 * torch.eye(6) - 1
    expected = -torch.nn.functional.logsigmoid(labels * logits).sum() / 6
    torch.testing.assert_close(loss, expected)


# ---- distributed: gathered features give the global-batch gradient ----------------------------------------------


@pytest.mark.slow  # runs a subprocess
def test_distributed_itc_gradients_match_the_global_batch(tmp_path, free_port):
    """2 gloo processes with batch B each, DDP-averaged gradients == one process with the 2B batch."""
    script = str(REPO_ROOT / "tests" / "dist_itc_grad.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    distributed = subprocess.Popen(
        [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
            "--master_addr", "127.0.0.1", "--master_port", str(free_port),
            script, str(tmp_path / "dist.safetensors"),
        ],
        env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    single = subprocess.run(
        [sys.executable, script, str(tmp_path / "single.safetensors")],
        env={key: value for key, value in env.items() if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")},
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    distributed_log, _ = distributed.communicate(timeout=300)
    assert single.returncode == 0, single.stdout + single.stderr
    assert distributed.returncode == 0, distributed_log

    single_grads = load_file(tmp_path / "single.safetensors")
    dist_grads = load_file(tmp_path / "dist.safetensors")
    cases = {key.split("/")[0] for key in single_grads}
    assert cases == {"softmax", "softmax_local_loss", "sigmoid", "softmax_no_gather", "sigmoid_no_gather"}

    def max_diff(case):
        names = [key for key in single_grads if key.startswith(f"{case}/") and not key.endswith("/loss")]
        assert len(names) > 50 and all(key in dist_grads for key in names)
        return max((single_grads[key] - dist_grads[key]).abs().max().item() for key in names)

    for case in ("softmax", "softmax_local_loss", "sigmoid"):
        assert max_diff(case) <= 1e-5, case
    # Local negatives only is a different loss: the comparison above is able to fail.
    for case in ("softmax_no_gather", "sigmoid_no_gather"):
        assert max_diff(case) > 1e-2, case
    # Full-matrix softmax computes the global loss on every rank.
    torch.testing.assert_close(dist_grads["softmax/loss"], single_grads["softmax/loss"])
