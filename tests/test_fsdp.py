"""FSDP on 2 CPU processes (gloo): every family trains through the Trainer's `--fsdp` options with the losses of DDP,
ITC still gathers the global batch, checkpoints resume, and `accelerate launch` with an FSDP config does the same.
The runs themselves are tests/dist_fsdp.py (see its docstring)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO_ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("dual", "fusion", "unified", "captioning")
# `accelerate config` as a user writes it for FSDP2 on CPU processes; accelerate passes it to the processes as
# ACCELERATE_USE_FSDP / FSDP_* variables, which modeling_vlp.training.distributed.enable_fsdp_on_cpu reads.
ACCELERATE_FSDP_CONFIG = """\
compute_environment: LOCAL_MACHINE
distributed_type: FSDP
num_machines: 1
num_processes: 2
machine_rank: 0
mixed_precision: 'no'
use_cpu: true
fsdp_config:
  fsdp_version: 2
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_transformer_layer_cls_to_wrap: VLPTransformerLayer
  fsdp_reshard_after_forward: true
  fsdp_state_dict_type: FULL_STATE_DICT
  fsdp_cpu_ram_efficient_loading: false
"""


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _launch(mode: str, out_dir: Path) -> dict:
    result = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
            "--master_addr", "127.0.0.1", "--master_port", str(_port()),
            str(REPO_ROOT / "tests" / "dist_fsdp.py"), mode, str(out_dir),
        ],
        env=_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]
    return json.loads((out_dir / f"{mode}.json").read_text())


@pytest.mark.slow  # runs torchrun twice
def test_fsdp_trains_every_family_as_ddp_does(tmp_path):
    ddp = _launch("ddp", tmp_path)
    fsdp = _launch("fsdp", tmp_path)
    global_batch = fsdp["world_size"] * fsdp["per_device_batch"]
    assert global_batch == 8
    for family in FAMILIES:
        expected, got = ddp[family], fsdp[family]
        assert len(got["losses"]) == len(expected["losses"]) == 3, family
        difference = max(abs(a - b) for a, b in zip(got["losses"], expected["losses"]))
        print(f"[fsdp] {family}: losses {got['losses']}, max |FSDP - DDP| = {difference:.2e}")
        assert difference <= 1e-5, family
        assert expected["model_class"] == "DistributedDataParallel", family
        assert got["model_class"].startswith("FSDP"), family  # the steps ran a fully_shard-ed model
        # Every feature matrix the objectives gathered spans the global batch, under both.
        assert got["gathered_rows"] and set(got["gathered_rows"]) == {global_batch}, family
        assert set(expected["gathered_rows"]) == {global_batch}, family
        # The FSDP checkpoint holds the full model, the sharded optimizer and every rank's data position, and
        # resuming it gives the very losses of the uninterrupted run.
        assert {"pytorch_model_fsdp.bin", "optimizer.bin", "data_state_rank0.pt", "data_state_rank1.pt"} <= set(
            got["checkpoint_files"]
        ), family
        assert got["resumed_losses"][-1] == pytest.approx(got["losses"][-1], abs=1e-6), family
        # The saved model is the model's own class (no generated FSDP module), loadable, with DDP's weights.
        assert not [name for name in got["saved_files"] if "fsdp" in name.lower()], family
        saved = load_file(tmp_path / f"fsdp-{family}" / "model.safetensors")
        reference = load_file(tmp_path / f"ddp-{family}" / "model.safetensors")
        assert saved.keys() == reference.keys(), family
        weights = max((saved[name].float() - reference[name].float()).abs().max().item() for name in saved)
        assert weights <= 1e-4, family
    from transformers import AutoModel

    import modeling_vlp  # noqa: F401  (registers the Auto classes)

    model = AutoModel.from_pretrained(tmp_path / "fsdp-dual")
    assert type(model).__name__ == "VLPDualEncoderModel"
    assert torch.equal(model.logit_scale.detach(), load_file(tmp_path / "fsdp-dual" / "model.safetensors")["logit_scale"])


@pytest.mark.slow  # runs accelerate launch twice
def test_accelerate_launch_with_an_fsdp_config_trains_as_torchrun_ddp(tmp_path):
    """The `accelerate launch --config_file` path (no --fsdp options): FSDP2 on the CPU processes, DDP's losses."""
    from dist_fsdp import PER_DEVICE_BATCH, RUN, _losses

    config = tmp_path / "fsdp.yaml"
    config.write_text(ACCELERATE_FSDP_CONFIG)
    run = ["pretrain", "--family", "dual", "--preset", "dual-tiny", *RUN, "--max-steps", "3"]
    assert PER_DEVICE_BATCH == 4
    outputs = {}
    for name, launcher in {
        "fsdp": ["-m", "accelerate.commands.launch", "--config_file", str(config)],
        "ddp": ["-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2"],
    }.items():
        outputs[name] = tmp_path / name
        port = ["--main_process_port" if name == "fsdp" else "--master_port", str(_port())]
        result = subprocess.run(
            [sys.executable, *launcher, *port, "-m", "modeling_vlp.commands", *run, "--output-dir", str(outputs[name])],
            env=_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]
    fsdp, ddp = _losses(outputs["fsdp"]), _losses(outputs["ddp"])
    print(f"[fsdp] accelerate launch (FSDP2): {fsdp}; torchrun DDP: {ddp}")
    assert len(fsdp) == len(ddp) == 3
    assert max(abs(a - b) for a, b in zip(fsdp, ddp)) <= 1e-5
    # FSDP really ran: its checkpoint is accelerate's FSDP layout, not DDP's model.safetensors + optimizer.pt.
    assert (outputs["fsdp"] / "checkpoint-2" / "pytorch_model_fsdp.bin").is_file()
    assert not (outputs["ddp"] / "checkpoint-2" / "pytorch_model_fsdp.bin").exists()


def test_a_gathered_state_dict_saves_each_tied_weight_once(tmp_path):
    """FSDP's full state dict holds separate copies of tied weights: saved once, and reloaded tied."""
    import modeling_vlp  # noqa: F401
    from modeling_vlp import VLPFusionForPreTraining, get_preset_config
    from modeling_vlp.training.distributed import drop_tied_copies

    torch.manual_seed(0)
    model = VLPFusionForPreTraining(get_preset_config("fusion-tiny"))
    gathered = {name: tensor.clone() for name, tensor in model.state_dict().items()}  # no shared storage
    kept = drop_tied_copies(gathered, model)
    assert set(gathered) - set(kept) == {"mlm_head.decoder.weight"}
    model.save_pretrained(tmp_path, state_dict=kept)
    assert "mlm_head.decoder.weight" not in load_file(tmp_path / "model.safetensors")
    reloaded = VLPFusionForPreTraining.from_pretrained(tmp_path)
    assert reloaded.mlm_head.decoder.weight is reloaded.vlp.text_embeddings.token_embedding.weight
    assert torch.equal(reloaded.mlm_head.decoder.weight, model.mlm_head.decoder.weight)
    untied = dict(gathered, **{"mlm_head.decoder.weight": gathered["mlm_head.decoder.weight"] + 1})
    assert "mlm_head.decoder.weight" in drop_tied_copies(untied, model)  # a copy that differs is not dropped
