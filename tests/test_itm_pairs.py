"""ITM pairing for single-stream models: random negatives from the global batch, never of the same image."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from modeling_vlp.training.objectives import sample_itm_negatives
from modeling_vlp.training.family_objectives import prepare_itm_pairs, VLPObjectiveArguments


REPO_ROOT = Path(__file__).resolve().parents[1]


def test_negatives_never_show_the_same_image_and_follow_the_ratio():
    generator = torch.Generator().manual_seed(0)
    image_ids = torch.arange(1000) // 2  # two captions per image, next to each other
    choice, labels = sample_itm_negatives(image_ids, image_ids, torch.arange(1000), 0.3, generator=generator)
    negative = labels == 0
    assert 0.25 < negative.float().mean() < 0.35
    assert torch.equal(choice[~negative], torch.arange(1000)[~negative])
    assert (image_ids[choice[negative]] != image_ids[negative]).all()


def test_a_row_without_another_image_stays_positive():
    image_ids = torch.tensor([7, 7, 7])
    choice, labels = sample_itm_negatives(image_ids, image_ids, torch.arange(3), 1.0)
    assert labels.tolist() == [1, 1, 1] and choice.tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match=r"ratio.*\[0, 1\]"):
        sample_itm_negatives(image_ids, image_ids, torch.arange(3), -0.1)


def test_prepare_itm_pairs_moves_whole_caption_rows():
    torch.manual_seed(0)
    input_ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0], [10, 11, 12, 13], [14, 0, 0, 0]])
    inputs = {
        "input_ids": input_ids,
        "attention_mask": (input_ids != 0).long(),
        "mlm_labels": torch.where(input_ids == 6, 6, -100),
        "image_id": torch.tensor([0, 0, 1, 2]),
        "pixel_values": torch.randn(4, 3, 8, 8),
    }
    model = SimpleNamespace(config=SimpleNamespace(pad_token_id=0))
    paired = prepare_itm_pairs(model, inputs, VLPObjectiveArguments(objectives=["itm"], itm_negative_ratio=1.0))
    assert paired["itm_labels"].tolist() == [0, 0, 0, 0]
    assert torch.equal(paired["pixel_values"], inputs["pixel_values"])
    rows = {tuple(row.tolist()): index for index, row in enumerate(input_ids)}
    for index, row in enumerate(paired["input_ids"]):
        source = rows[tuple(row.tolist())]
        assert inputs["image_id"][source] != inputs["image_id"][index]
        assert torch.equal(paired["attention_mask"][index], inputs["attention_mask"][source])
        assert torch.equal(paired["mlm_labels"][index], inputs["mlm_labels"][source])
    positives = prepare_itm_pairs(model, inputs, VLPObjectiveArguments(objectives=["itm"], itm_negative_ratio=0.0))
    assert positives["itm_labels"].tolist() == [1, 1, 1, 1]
    assert torch.equal(positives["input_ids"], input_ids)


@pytest.mark.slow  # runs a subprocess
def test_distributed_negatives_come_from_the_other_rank(tmp_path, free_port):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
            "--master_addr", "127.0.0.1", "--master_port", str(free_port),
            str(REPO_ROOT / "tests" / "dist_itm_pairs.py"), str(tmp_path),
        ],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    # caption end token -> (rank, image id) of its image
    image_of = {1000 + i: i for i in range(4)} | {1100 + i: 100 + i for i in range(4)} | {1100: 1}
    for rank in (0, 1):
        draws = json.loads((tmp_path / f"rank{rank}.json").read_text())
        ends = [end for draw in draws for end in draw["caption_end"]]
        from_other_rank = [end for end in ends if (end >= 1100) != (rank == 1)]
        assert from_other_rank, f"rank {rank} never drew a caption of the other rank"
        # Captions are padded to the longest drawn: 7 tokens whenever one of rank 1 is in the batch.
        assert max(draw["width"] for draw in draws) == 7
        for draw in draws:
            assert draw["pixel_values_unchanged"] and set(draw["itm_labels"]) == {0}
            for image_id, end in zip(draw["image_id"], draw["caption_end"]):
                assert image_of[end] != image_id, f"rank {rank}: image {image_id} got a caption of its own image"
