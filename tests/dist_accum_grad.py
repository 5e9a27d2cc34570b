"""Gradients of the ITC loss with `--accum-freq`, distributed or not; used by tests/test_accumulation.py.

    torchrun --nproc_per_node 2 tests/dist_accum_grad.py OUT.safetensors   # each rank: its slice, accum_freq=2, DDP
    python tests/dist_accum_grad.py OUT.safetensors                         # one process: the whole batch, no accum

Both write (rank 0 only) the parameter gradients of every case in `CASES` as `"<case>/<param>"`; they must agree.
The CoCa case (itc + lm, the LM loss averaged over micro-batches of 2) runs in one process with accum_freq=4, the
same 4 micro-batches of 2 rows as 2 ranks with accum_freq=2.
"""

import os
import sys
import tempfile

import torch
from safetensors.torch import save_file
from transformers import TrainingArguments

from modeling_vlp import VLPDualEncoderModel, VLPForConditionalGeneration, get_preset_config
from modeling_vlp.training.family_objectives import VLPObjectiveArguments
from modeling_vlp.training.trainer import VLPTrainer
from dist_itc_grad import GLOBAL_BATCH, make_batch

ACCUM_FREQ = 2
# case name -> (loss_type, objective arguments)
CASES = {
    "softmax": ("softmax", dict(local_loss=False)),
    "softmax_local_loss": ("softmax", dict(local_loss=True)),
    "sigmoid": ("sigmoid", {}),
    "coca_itc_lm": ("coca", {"objectives": {"itc": 1.0, "lm": 0.5}}),
}


def main(out_path: str) -> None:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    results = {}
    with tempfile.TemporaryDirectory() as output_dir:
        backend = "gloo" if world_size > 1 else None
        args = TrainingArguments(output_dir=output_dir, use_cpu=True, ddp_backend=backend, report_to=[])
        for case, (loss_type, objective_kwargs) in CASES.items():
            torch.manual_seed(0)
            if loss_type == "coca":
                config = get_preset_config("captioning-tiny", projection_dim=16, num_unimodal_layers=1)
                model = VLPForConditionalGeneration(config).double()
                accum_freq = ACCUM_FREQ if world_size > 1 else ACCUM_FREQ * 2
            else:
                overrides = dict(loss_type=loss_type, logit_bias_init_value=-2.0) if loss_type == "sigmoid" else {}
                config = get_preset_config("dual-tiny", **overrides)
                model = VLPDualEncoderModel(config)
                accum_freq = ACCUM_FREQ if world_size > 1 else 1
            model = model.double()  # float64: measure the maths, not summation order
            objective_args = VLPObjectiveArguments(accum_freq=accum_freq, **objective_kwargs)
            trainer = VLPTrainer(model=model, args=args, objective_args=objective_args)
            wrapped = trainer.accelerator.prepare_model(model)
            if world_size > 1 and not isinstance(wrapped, torch.nn.parallel.DistributedDataParallel):
                raise RuntimeError(f"expected a DDP-wrapped model under torchrun, got {type(wrapped).__name__}")
            batch = make_batch(config)
            per_rank = GLOBAL_BATCH // world_size
            inputs = {key: value[rank * per_rank : (rank + 1) * per_rank] for key, value in batch.items()}
            wrapped.train()
            if accum_freq > 1:
                trainer.training_step(wrapped, inputs)
            else:
                trainer.compute_loss(wrapped, inputs).backward()
            for name, parameter in model.named_parameters():
                if parameter.grad is not None:
                    results[f"{case}/{name}"] = parameter.grad.detach().clone().contiguous()
    if rank == 0:
        save_file(results, out_path)


if __name__ == "__main__":
    main(sys.argv[1])
