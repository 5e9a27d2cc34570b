"""`vlp pretrain` of every family on 2 CPU processes, as DDP or as FSDP; used by tests/test_fsdp.py.

    torchrun --nproc_per_node 2 tests/dist_fsdp.py ddp OUT_DIR    # the Trainer's DDP
    torchrun --nproc_per_node 2 tests/dist_fsdp.py fsdp OUT_DIR   # --fsdp full_shard auto_wrap, FSDP2 (fsdp_config)

Each family trains a few steps from the same seed on the same data and global batch (2 x 4 rows), saving a
checkpoint at step 2; under FSDP a second run resumes from that checkpoint into another folder. Rank 0 writes
`OUT_DIR/<mode>.json`: per family the logged losses (and those of the resumed run), the class of the model the
training steps ran (FSDP2 gives it a generated `FSDP<Name>` class), the files of the checkpoint and of the saved
model, and the rows of every feature matrix the objectives gathered (each must span the global batch).
"""

import json
import os
import sys

import torch
import torch.distributed as dist

from modeling_vlp.commands.pretrain import pretrain
from modeling_vlp.training import family_objectives, objectives
from modeling_vlp.training.trainer import VLPTrainer

PER_DEVICE_BATCH = 4
STEPS = 3
RUN = [
    "--num-train", "32", "--num-validation", "8", "--per-device-train-batch-size", str(PER_DEVICE_BATCH),
    "--per-device-eval-batch-size", "8", "--vocab-size", "200", "--logging-steps", "1", "--save-steps", "2",
    "--learning-rate", "3e-3", "--warmup-steps", "0", "--dataloader-num-workers", "0", "--disable-tqdm", "true",
]  # fmt: skip
# family -> its options: each family's default objectives; fusion with ALBEF's momentum teacher and queue.
FAMILIES = {
    "dual": [],
    "fusion": ["--momentum-distill", "--queue-size", "16"],
    "unified": [],
    "captioning": [
        "--vision-layers",
        "2",
        "--vision-width",
        "32",
        "--vision-heads",
        "2",
        "--text-layers",
        "3",
        "--text-width",
        "32",
        "--text-heads",
        "2",
        "--image-size",
        "32",
        "--projection-dim",
        "16",
    ],
}
# family -> preset: the tiny test presets; captioning as CoCa (itc + lm), coca-small cut to tiny sizes.
PRESETS = {
    "dual": "dual-tiny",
    "fusion": "fusion-tiny",
    "unified": "unified-tiny",
    "captioning": "coca-small",
}
FSDP = [
    "--fsdp", "full_shard auto_wrap",
    "--fsdp_config", json.dumps({"version": 2, "transformer_layer_cls_to_wrap": ["VLPTransformerLayer"]}),
]  # fmt: skip


def _record_gathers(rows: list[int]):
    """Wrap the all-gather of the contrastive loss (`objectives`) and of the family objectives (ALBEF's ITC with the
    teacher's features, ITM's hard negatives) so that it records how many rows each call returns."""
    gather = objectives.all_gather_features

    def recording(features, gather_with_grad=True):
        gathered = gather(features, gather_with_grad)
        rows.append(gathered.shape[0])
        return gathered

    objectives.all_gather_features = family_objectives.all_gather_features = recording


def _record_wrapping(wrapped: list[str]):
    """Record the class of the model each training step runs (FSDP2 gives it a generated `FSDP<Name>` class)."""
    training_step = VLPTrainer.training_step

    def recording(self, model, inputs, num_items_in_batch=None):
        if not wrapped:
            wrapped.append(type(model).__name__)
        return training_step(self, model, inputs, num_items_in_batch)

    VLPTrainer.training_step = recording


def _losses(folder: str) -> list[float]:
    with open(os.path.join(folder, "trainer_state.json")) as handle:
        history = json.load(handle)["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def _run(argv: list[str]) -> int:
    """`vlp pretrain` without `vlp`'s closing of the process group, so that the runs share one; every rank waits
    for the main process's evaluation."""
    status = pretrain(argv)
    dist.barrier()
    return status


def main_(mode: str, out_dir: str) -> None:
    rank = int(os.environ["RANK"])
    gathered, wrapped = [], []
    _record_gathers(gathered)
    _record_wrapping(wrapped)
    results = {}
    for family, options in FAMILIES.items():
        gathered.clear()
        wrapped.clear()
        first = os.path.join(out_dir, f"{mode}-{family}")
        common = ["--family", family, "--preset", PRESETS[family], *RUN, *options]
        common += FSDP if mode == "fsdp" else []
        status = _run([*common, "--max-steps", str(STEPS), "--output-dir", first])
        assert status == 0, f"{family}: exit status {status}"
        checkpoint = os.path.join(first, "checkpoint-2")
        result = {
            "losses": _losses(first), "model_class": wrapped[0], "gathered_rows": list(gathered),
            "checkpoint_files": sorted(os.listdir(checkpoint)), "saved_files": sorted(os.listdir(first)),
        }  # fmt: skip
        if mode == "fsdp":  # resume the FSDP checkpoint of step 2 (sharded optimizer state, momentum teacher)
            resumed = os.path.join(out_dir, f"{mode}-{family}-resumed")
            argv = [
                *common,
                "--max-steps",
                str(STEPS),
                "--output-dir",
                resumed,
                "--resume-from-checkpoint",
                checkpoint,
            ]
            status = _run(argv)
            assert status == 0, f"{family} resumed: exit status {status}"
            result["resumed_losses"] = _losses(resumed)
        results[family] = result
    if rank == 0:
        with open(os.path.join(out_dir, f"{mode}.json"), "w") as handle:
            json.dump(
                {
                    "world_size": int(os.environ["WORLD_SIZE"]),
                    "per_device_batch": PER_DEVICE_BATCH,
                    **results,
                },
                handle,
            )


if __name__ == "__main__":
    torch.set_num_threads(1)
    try:
        main_(sys.argv[1], sys.argv[2])
    finally:
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
