"""ITM pairs drawn from the global batch under torch.distributed; used by tests/test_itm_pairs.py.

    torchrun --nproc_per_node 2 tests/dist_itm_pairs.py OUT_DIR

Rank r holds images 100r..100r+3 with captions made of token 10+r (rank 0 pads to 5 tokens, rank 1 to 7). Every
rank pairs all its rows with negatives (ratio 1) for 20 draws and writes OUT_DIR/rank<r>.json: for each draw, each
row's image id and the tokens of the caption it got.
"""

import json
import os
import sys
from types import SimpleNamespace

import torch
import torch.distributed as dist

from modeling_vlp.training.family_objectives import prepare_itm_pairs, VLPObjectiveArguments


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(rank)
    length = 5 + 2 * rank
    batch_size = 4
    input_ids = torch.full((batch_size, length), 10 + rank)
    # Caption i of rank r ends with token 1000 + 100 r + i, so the receiver can tell which caption it got.
    input_ids[:, -1] = 1000 + 100 * rank + torch.arange(batch_size)
    inputs = {
        "input_ids": input_ids,
        "attention_mask": torch.ones(batch_size, length, dtype=torch.long),
        "pixel_values": torch.randn(batch_size, 3, 8, 8),
        "image_id": 100 * rank + torch.arange(batch_size),
    }
    # Two captions of one image on different ranks: image 1 on rank 0 also has caption 0 of rank 1.
    if rank == 1:
        inputs["image_id"][0] = 1
    model = SimpleNamespace(config=SimpleNamespace(pad_token_id=0))
    args = VLPObjectiveArguments(objectives=["itm"], itm_negative_ratio=1.0)
    draws = []
    for _ in range(20):
        paired = prepare_itm_pairs(model, inputs, args)
        captions = paired["input_ids"]
        lengths = paired["attention_mask"].sum(dim=1)
        last = captions[torch.arange(batch_size), lengths - 1]
        draws.append(
            {
                "image_id": paired["image_id"].tolist(),
                "caption_end": last.tolist(),
                "itm_labels": paired["itm_labels"].tolist(),
                "pixel_values_unchanged": bool(torch.equal(paired["pixel_values"], inputs["pixel_values"])),
                "width": captions.shape[1],
            }
        )
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
        json.dump(draws, handle)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
