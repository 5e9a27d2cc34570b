"""Gradients of the ITC loss through `VLPTrainer.compute_loss`, distributed or not; used by tests/test_trainer.py.

    torchrun --nproc_per_node 2 tests/dist_itc_grad.py OUT.safetensors   # each rank: its slice of the batch, DDP
    python tests/dist_itc_grad.py OUT.safetensors                         # one process: the whole batch

Both write (rank 0 only) the DDP-averaged parameter gradients of every case in `CASES` as `"<case>/<param>"` and the
loss as `"<case>/loss"`. With global negatives the two files must agree; with `gather=False` they must not.
"""

import os
import sys
import tempfile

import torch
from safetensors.torch import save_file
from transformers import TrainingArguments

from modeling_vlp import VLPDualEncoderModel, get_preset_config
from modeling_vlp.training.family_objectives import VLPObjectiveArguments
from modeling_vlp.training.trainer import VLPTrainer


GLOBAL_BATCH = 8
SEQUENCE_LENGTH = 10
# case name -> (loss_type, objective arguments)
CASES = {
    "softmax": ("softmax", dict(local_loss=False, gather_with_grad=True)),
    "softmax_local_loss": ("softmax", dict(local_loss=True, gather_with_grad=True)),
    "sigmoid": ("sigmoid", dict(gather_with_grad=True)),
    "softmax_no_gather": ("softmax", dict(gather=False)),
    "sigmoid_no_gather": ("sigmoid", dict(gather=False)),
}


def make_batch(config, batch_size: int = GLOBAL_BATCH, seed: int = 1234, dtype=torch.float64) -> dict[str, torch.Tensor]:
    """Seeded image-caption rows for a dual encoder's `config`: bos ... eos captions of random lengths, padded."""
    generator = torch.Generator().manual_seed(seed)
    text = config.text_config
    image_size = config.vision_config.image_size
    input_ids = torch.randint(5, text.vocab_size, (batch_size, SEQUENCE_LENGTH), generator=generator)
    input_ids[:, 0] = text.bos_token_id
    lengths = torch.randint(4, SEQUENCE_LENGTH + 1, (batch_size,), generator=generator)
    attention_mask = (torch.arange(SEQUENCE_LENGTH)[None] < lengths[:, None]).long()
    input_ids[torch.arange(batch_size), lengths - 1] = text.eos_token_id
    input_ids = input_ids.masked_fill(attention_mask == 0, text.pad_token_id)
    return {
        "pixel_values": torch.randn(batch_size, 3, image_size, image_size, generator=generator, dtype=dtype),
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "image_id": torch.arange(batch_size),
    }


def main(out_path: str) -> None:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    results = {}
    with tempfile.TemporaryDirectory() as output_dir:
        backend = "gloo" if world_size > 1 else None
        args = TrainingArguments(output_dir=output_dir, use_cpu=True, ddp_backend=backend, report_to=[])
        for case, (loss_type, objective_kwargs) in CASES.items():
            overrides = dict(loss_type=loss_type, logit_bias_init_value=-2.0) if loss_type == "sigmoid" else {}
            config = get_preset_config("dual-tiny", **overrides)
            torch.manual_seed(0)
            # float64: the comparison then measures the maths, not float32 summation order (1e-5 would be tight).
            model = VLPDualEncoderModel(config).double()
            trainer = VLPTrainer(model=model, args=args, objective_args=VLPObjectiveArguments(**objective_kwargs))
            wrapped = trainer.accelerator.prepare_model(model)
            if world_size > 1 and not isinstance(wrapped, torch.nn.parallel.DistributedDataParallel):
                raise RuntimeError(f"expected a DDP-wrapped model under torchrun, got {type(wrapped).__name__}")
            batch = make_batch(config)
            per_rank = GLOBAL_BATCH // world_size
            inputs = {key: value[rank * per_rank : (rank + 1) * per_rank] for key, value in batch.items()}
            wrapped.train()
            loss = trainer.compute_loss(wrapped, inputs)
            loss.backward()
            for name, parameter in model.named_parameters():
                if parameter.grad is not None:
                    results[f"{case}/{name}"] = parameter.grad.detach().clone().contiguous()
            results[f"{case}/loss"] = loss.detach().reshape(1)
    if rank == 0:
        save_file(results, out_path)


if __name__ == "__main__":
    main(sys.argv[1])
