"""Hard-negative ITM of the fusion family under torch.distributed; used by tests/test_fusion_training.py.

    torchrun --nproc_per_node 2 tests/dist_fusion_itm.py OUT_DIR

Both ranks hold the same fusion-tiny model; rank r holds images 10r..10r+3. Every rank computes the ITM objective
10 times and writes OUT_DIR/rank<r>.json with the candidate indices (into the gathered batch, rank 0's rows first)
drawn as hard negatives, the image ids of the queries and of the candidates, and the losses.
"""

import json
import os
import sys

import torch
import torch.distributed as dist

from modeling_vlp import VLPFusionForPreTraining, get_preset_config
from modeling_vlp.training import family_objectives as trainer_module
from modeling_vlp.training.family_objectives import compute_objective_losses, VLPObjectiveArguments


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = VLPFusionForPreTraining(get_preset_config("fusion-tiny")).eval()
    config = model.config
    generator = torch.Generator().manual_seed(100 + rank)
    batch_size, image_size = 4, config.vision_config.image_size
    length = 6 + rank  # ranks pad their captions differently
    inputs = {
        "input_ids": torch.randint(5, config.text_config.vocab_size, (batch_size, length), generator=generator),
        "attention_mask": torch.ones(batch_size, length, dtype=torch.long),
        "pixel_values": torch.randn(batch_size, 3, image_size, image_size, generator=generator),
        "image_id": 10 * rank + torch.arange(batch_size),
    }
    draws = []
    original = trainer_module.sample_hard_negatives

    def recording(similarity, image_ids, candidate_image_ids):
        index, has_negative = original(similarity, image_ids, candidate_image_ids)
        draws.append(
            {
                "index": index.tolist(),
                "has_negative": has_negative.tolist(),
                "query_ids": image_ids.tolist(),
                "candidate_ids": candidate_image_ids.tolist(),
            }
        )
        return index, has_negative

    trainer_module.sample_hard_negatives = recording
    args = VLPObjectiveArguments(objectives=["itm"])
    losses = []
    for _ in range(10):
        total, parts, _ = compute_objective_losses(model, inputs, args)
        total.backward()
        losses.append(float(parts["itm"]))
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
        json.dump({"draws": draws, "losses": losses, "world_size": dist.get_world_size()}, handle)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
