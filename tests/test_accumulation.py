"""`--accum-freq` (training/accumulation.py): one contrastive loss over K micro-batches, one graph at a time."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerState, TrainingArguments

import modeling_vlp  # noqa: F401  (registers the Auto classes)
from modeling_vlp import VLPDualEncoderModel, VLPForConditionalGeneration, VLPFusionForPreTraining, get_preset_config
from modeling_vlp.commands import main
from modeling_vlp.training.accumulation import split_batch
from modeling_vlp.training.objectives import contrastive_loss
from modeling_vlp.training.family_objectives import compute_objective_losses, VLPObjectiveArguments
from modeling_vlp.training.trainer import VLPTrainer
from dist_itc_grad import make_batch
from vlp_testing import RowsDataset

pytestmark = pytest.mark.usefixtures("one_thread")
REPO_ROOT = Path(__file__).resolve().parents[1]


def tiny_model(loss_type: str = "softmax", dropout: float = 0.0, dtype=torch.float32) -> VLPDualEncoderModel:
    overrides = dict(loss_type=loss_type, logit_bias_init_value=-2.0) if loss_type == "sigmoid" else {}
    tower = dict(hidden_dropout=dropout, attention_dropout=dropout)
    config = get_preset_config("dual-tiny", vision_config=tower, text_config=tower, **overrides)
    torch.manual_seed(0)
    return VLPDualEncoderModel(config).to(dtype)


def training_args(tmp_path, **overrides) -> TrainingArguments:
    defaults = dict(
        output_dir=str(tmp_path), per_device_train_batch_size=4, learning_rate=3e-3, max_steps=4, warmup_steps=0,
        logging_steps=1, save_strategy="no", report_to="none", remove_unused_columns=False, use_cpu=True,
        disable_tqdm=True, seed=0, dataloader_pin_memory=False,
    )  # fmt: skip
    defaults.update(overrides)
    return TrainingArguments(**defaults)


def gradients(model) -> dict[str, torch.Tensor]:
    grads = {name: value.grad.detach().clone() for name, value in model.named_parameters() if value.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys() and len(a) > 50
    return max((a[name] - b[name]).abs().max().item() for name in a)


def test_split_batch_cuts_every_batched_tensor():
    batch = {
        "pixel_values": torch.zeros(7, 3, 2, 2), "input_ids": torch.arange(7)[:, None], "scale": torch.tensor(2.0),
        "tag": "x",
    }  # fmt: skip
    pieces = split_batch(batch, 3)
    assert [piece["input_ids"].flatten().tolist() for piece in pieces] == [[0, 1, 2], [3, 4], [5, 6]]
    assert all(piece["pixel_values"].shape[0] == piece["input_ids"].shape[0] for piece in pieces)
    assert all(piece["scale"] is batch["scale"] and piece["tag"] == "x" for piece in pieces)
    assert len(split_batch(batch, 10)) == 7  # fewer rows than micro-batches: one row each


@pytest.mark.parametrize("loss_type", ["softmax", "sigmoid"])
@pytest.mark.parametrize("accum_freq", [2, 4])
def test_accumulated_gradient_equals_the_whole_batch_gradient(tmp_path, loss_type, accum_freq):
    """accum_freq=K on a K x B batch: the gradient (and loss) of one K x B batch without accumulation, to 1e-5.
    float64, as tests/dist_itc_grad.py: the comparison measures the maths, not float32 summation order."""
    model = tiny_model(loss_type, dtype=torch.float64)
    batch = make_batch(model.config, 8, dtype=torch.float64)
    model.train()
    loss, _, _ = compute_objective_losses(model, batch, VLPObjectiveArguments())
    loss.backward()
    expected = gradients(model)

    trainer = VLPTrainer(
        model=model, args=training_args(tmp_path), objective_args=VLPObjectiveArguments(accum_freq=accum_freq)
    )
    accumulated_loss = trainer.training_step(model, batch)
    accumulated = gradients(model)
    assert max_difference(expected, accumulated) <= 1e-5  # measured: 2e-15 to 4e-14
    torch.testing.assert_close(accumulated_loss, loss.detach(), rtol=1e-10, atol=1e-10)
    # The temperature is differentiated once, not once per micro-batch (open_clip's K-fold count).
    torch.testing.assert_close(accumulated["logit_scale"], expected["logit_scale"], rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize(
    "preset, model_class, overrides",
    [
        ("fusion-tiny", VLPFusionForPreTraining, {}),
        ("captioning-tiny", VLPForConditionalGeneration, {"projection_dim": 16, "num_unimodal_layers": 1}),  # CoCa
    ],
    ids=["fusion", "coca"],
)
def test_accumulation_of_heads_that_nest_the_embeddings(tmp_path, preset, model_class, overrides):
    """ITC alone on a fusion model (embeddings in `fusion_output`) and on CoCa (`captioning_output`)."""
    config = get_preset_config(preset, **overrides)
    torch.manual_seed(0)
    model = model_class(config).double().train()
    batch = make_batch(config, 8, dtype=torch.float64)
    loss, _, _ = compute_objective_losses(model, batch, VLPObjectiveArguments())
    loss.backward()
    expected = gradients(model)
    trainer = VLPTrainer(model=model, args=training_args(tmp_path), objective_args=VLPObjectiveArguments(accum_freq=2))
    torch.testing.assert_close(trainer.training_step(model, batch), loss.detach(), rtol=1e-10, atol=1e-10)
    assert max_difference(expected, gradients(model)) <= 1e-5  # measured: 4e-15


@pytest.mark.parametrize("family", ["coca", "fusion"])
def test_per_micro_batch_objectives_are_averaged(tmp_path, family):
    """CoCa's itc + lm, a fusion model's itc + mlm: ITC over the whole batch plus the mean of the other loss over the
    micro-batches, each weighted."""
    accum_freq, weights = 2, {"itc": 1.0, "lm" if family == "coca" else "mlm": 0.5}
    if family == "coca":
        config = get_preset_config("captioning-tiny", projection_dim=16, num_unimodal_layers=1)
        torch.manual_seed(0)
        model = VLPForConditionalGeneration(config).double().train()
    else:
        config = get_preset_config("fusion-tiny")
        torch.manual_seed(0)
        model = VLPFusionForPreTraining(config).double().train()
    batch = make_batch(config, 8, dtype=torch.float64)
    if family == "fusion":
        masked = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
        masked[:, 1:3] = True
        batch["mlm_labels"] = batch["input_ids"].masked_fill(~masked, -100)
    other = next(name for name in weights if name != "itc")
    itc, _, _ = compute_objective_losses(model, batch, VLPObjectiveArguments(objectives=["itc"]))
    itc.backward()
    others = []
    for piece in split_batch(batch, accum_freq):
        value, _, _ = compute_objective_losses(model, piece, VLPObjectiveArguments(objectives=[other]))
        (weights[other] * value / accum_freq).backward()
        others.append(value.detach())
    expected = gradients(model)
    expected_loss = itc.detach() + weights[other] * torch.stack(others).mean()

    objective_args = VLPObjectiveArguments(objectives=weights, accum_freq=accum_freq)
    trainer = VLPTrainer(model=model, args=training_args(tmp_path), objective_args=objective_args)
    torch.testing.assert_close(trainer.training_step(model, batch), expected_loss, rtol=1e-10, atol=1e-10)
    assert max_difference(expected, gradients(model)) <= 1e-5
    logged = trainer._train_losses.pop_means(trainer.accelerator)
    assert logged == pytest.approx({"itc": itc.item(), other: torch.stack(others).mean().item()}, rel=1e-6)  # float32


def test_micro_batches_see_the_randomness_of_their_cached_pass(tmp_path):
    """With dropout, each re-run with graph draws the masks of its cached pass: the gradient is that of the K
    micro-batches run once in order from the same generator state, and the generator ends where that leaves it."""
    accum_freq = 2
    model = tiny_model(dropout=0.3, dtype=torch.float64)
    batch = make_batch(model.config, 8, dtype=torch.float64)
    model.train()
    torch.manual_seed(7)
    outputs = [model(**{k: v for k, v in piece.items() if k != "image_id"}) for piece in split_batch(batch, accum_freq)]
    loss = contrastive_loss(
        torch.cat([output.image_embeds for output in outputs]), torch.cat([output.text_embeds for output in outputs]),
        outputs[0].logit_scale, None,
    )  # fmt: skip
    loss.backward()
    expected, expected_next = gradients(model), torch.rand(3)

    trainer = VLPTrainer(
        model=model, args=training_args(tmp_path), objective_args=VLPObjectiveArguments(accum_freq=accum_freq)
    )
    torch.manual_seed(7)
    trainer.training_step(model, batch)
    assert max_difference(expected, gradients(model)) <= 1e-5
    torch.testing.assert_close(torch.rand(3), expected_next)


def test_training_with_accum_freq_follows_the_whole_batch_run(tmp_path):
    """Trainer runs: --accum-freq 2 with per-device batch 4 draws batches of 8 and ends with the weights of the
    run with per-device batch 8 (same data order, no dropout; float64, or Adam's first steps magnify the float32
    rounding of gradients near zero)."""
    batch = make_batch(tiny_model().config, 32, dtype=torch.float64)
    runs = {}
    for name, batch_size, accum_freq in (("whole", 8, 1), ("accumulated", 4, 2)):
        trainer = VLPTrainer(
            model=tiny_model(dtype=torch.float64),
            args=training_args(tmp_path / name, per_device_train_batch_size=batch_size),
            train_dataset=RowsDataset(batch), objective_args=VLPObjectiveArguments(accum_freq=accum_freq),
        )  # fmt: skip
        assert next(iter(trainer.get_train_dataloader()))["input_ids"].shape[0] == 8
        assert trainer.get_total_train_batch_size(trainer.args) == 8
        trainer.train()
        logs = [entry for entry in trainer.state.log_history if "loss" in entry]
        assert len(logs) == 4 and all(entry["loss"] == pytest.approx(entry["loss_itc"], rel=1e-5) for entry in logs)
        runs[name] = (trainer.model.state_dict(), [entry["loss"] for entry in logs])
    whole, accumulated = runs["whole"], runs["accumulated"]
    assert accumulated[1] == pytest.approx(whole[1], rel=1e-8)
    assert max((whole[0][key] - accumulated[0][key]).abs().max().item() for key in whole[0]) <= 1e-8


def test_accum_freq_is_checked():
    assert VLPObjectiveArguments(accum_freq=4).accum_freq == 4
    with pytest.raises(ValueError, match=r"`--accum-freq` must be >= 1, got 0"):
        VLPObjectiveArguments(accum_freq=0)
    assert VLPObjectiveArguments(objectives=["itc", "lm"], accum_freq=2).accum_freq == 2
    message = r"`--accum-freq 2` with a non-contrastive objective: got objectives \['itc', 'itm', 'mlm'\]; "
    accepted = r"--accum-freq > 1 accepts 'itc', alone or with \['lm', 'mim', 'mlm'\]"
    with pytest.raises(ValueError, match=message + accepted):
        VLPObjectiveArguments(objectives=["itc", "itm", "mlm"], accum_freq=2)
    with pytest.raises(ValueError, match=r"with a non-contrastive objective: got objectives \['mlm'\]"):
        VLPObjectiveArguments(objectives=["mlm"], accum_freq=2)
    with pytest.raises(ValueError, match="--momentum-distill"):
        VLPObjectiveArguments(accum_freq=2, momentum_distill=True)


def test_gradient_accumulation_with_itc_warns(tmp_path, caplog):
    model = tiny_model()
    with caplog.at_level(logging.WARNING, logger="modeling_vlp"):
        VLPTrainer(model=model, args=training_args(tmp_path, gradient_accumulation_steps=4))
    warnings = [record.getMessage() for record in caplog.records]
    warnings = [message for message in warnings if "--gradient-accumulation-steps" in message]
    assert len(warnings) == 1 and "--accum-freq 4" in warnings[0] and "own negatives" in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="modeling_vlp"):
        VLPTrainer(model=model, args=training_args(tmp_path))
    assert not [record for record in caplog.records if "--gradient-accumulation-steps" in record.getMessage()]


@pytest.mark.slow  # runs a subprocess
def test_distributed_accumulated_gradients_match_the_global_batch(tmp_path, free_port):
    """2 gloo processes, each accumulating 2 micro-batches of 2 rows: the DDP gradient is that of the global batch
    of 8 in one process without accumulation (softmax, local loss, sigmoid), and for CoCa's itc + lm that of one
    process accumulating the same 4 micro-batches."""
    script = str(REPO_ROOT / "tests" / "dist_accum_grad.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    distributed = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
            "--master_addr", "127.0.0.1", "--master_port", str(free_port),
            script, str(tmp_path / "dist.safetensors"),
        ],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert distributed.returncode == 0, distributed.stdout + distributed.stderr
    single = subprocess.run(
        [sys.executable, script, str(tmp_path / "single.safetensors")],
        env={key: value for key, value in env.items() if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")},
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert single.returncode == 0, single.stdout + single.stderr
    single_grads = load_file(tmp_path / "single.safetensors")
    dist_grads = load_file(tmp_path / "dist.safetensors")
    cases = {key.split("/")[0] for key in single_grads}
    assert cases == {"softmax", "softmax_local_loss", "sigmoid", "coca_itc_lm"}
    for case in cases:
        names = [key for key in single_grads if key.startswith(f"{case}/")]
        assert len(names) > 50 and all(key in dist_grads for key in names)
        difference = max((single_grads[key] - dist_grads[key]).abs().max().item() for key in names)
        print(f"[accum] distributed {case}: max |grad diff| = {difference:.3e}")
        assert difference <= 1e-5, case


# ---- vlp pretrain --accum-freq ------------------------------------------------------------------------------------


def test_pretrain_with_accum_freq(tmp_path, monkeypatch):
    """`vlp pretrain --accum-freq 2`: each step draws 2 x --per-device-train-batch-size rows; a non-contrastive
    objective is refused in one line."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    with pytest.raises(ValueError, match=r"^`--accum-freq 2` with a non-contrastive objective: got objectives \["):
        main(["pretrain", "--family", "fusion", "--accum-freq", "2", "--output-dir", str(tmp_path / "fusion")])
    output_dir = tmp_path / "dual"
    status = main([
        "pretrain", "--family", "dual", "--preset", "dual-tiny", "--num-train", "32", "--num-validation", "8",
        "--per-device-train-batch-size", "4", "--accum-freq", "2", "--per-device-eval-batch-size", "8",
        "--vocab-size", "200", "--max-steps", "2", "--logging-steps", "1", "--save-steps", "2",
        "--output-dir", str(output_dir),
    ])  # fmt: skip
    assert status == 0
    state = TrainerState.load_from_json(str(output_dir / "checkpoint-2" / "trainer_state.json"))
    assert state.train_batch_size == 8
    logs = [entry for entry in state.log_history if "loss" in entry]
    assert len(logs) == 2 and all(entry["loss"] == pytest.approx(entry["loss_itc"]) for entry in logs)
