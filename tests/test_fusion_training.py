"""Training the fusion family: hard-negative ITM over the global batch, momentum distillation, its checkpoints."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import TrainingArguments

from modeling_vlp import VLPFusionForPreTraining, get_preset_config
from modeling_vlp.training.momentum import MOMENTUM_STATE_NAME, MomentumDistiller
from modeling_vlp.training.objectives import sample_hard_negatives
from modeling_vlp.training.family_objectives import compute_objective_losses, VLPObjectiveArguments
from modeling_vlp.training.trainer import VLPTrainer

from vlp_testing import RowsDataset


pytestmark = pytest.mark.usefixtures("one_thread")
REPO_ROOT = Path(__file__).resolve().parents[1]


def tiny_model(seed: int = 0) -> VLPFusionForPreTraining:
    torch.manual_seed(seed)
    return VLPFusionForPreTraining(get_preset_config("fusion-tiny"))


def make_batch(model, batch_size: int = 6, length: int = 7, seed: int = 0, image_ids=None) -> dict:
    generator = torch.Generator().manual_seed(seed)
    config = model.config
    image_size = config.vision_config.image_size
    input_ids = torch.randint(5, config.text_config.vocab_size, (batch_size, length), generator=generator)
    mlm_labels = torch.full_like(input_ids, -100)
    mlm_labels[:, 2] = input_ids[:, 2]
    input_ids[:, 2] = 4
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones(batch_size, length, dtype=torch.long),
        "pixel_values": torch.randn(batch_size, 3, image_size, image_size, generator=generator),
        "mlm_labels": mlm_labels,
        "image_id": torch.arange(batch_size) if image_ids is None else torch.tensor(image_ids),
    }


# ---- hard negatives ---------------------------------------------------------------------------------------------


def test_hard_negatives_follow_the_similarity_and_skip_the_same_image():
    torch.manual_seed(0)
    image_ids = torch.tensor([0, 0, 1, 2])  # two captions of image 0
    similarity = torch.tensor(
        [[9.0, 9.0, 5.0, -5.0], [9.0, 9.0, 5.0, -5.0], [0.0, 0.0, 9.0, 0.0], [0.0, 0.0, 0.0, 9.0]]
    )
    counts = torch.zeros(4, 4)
    for _ in range(300):
        index, has_negative = sample_hard_negatives(similarity, image_ids, image_ids)
        counts[torch.arange(4), index] += 1
        assert has_negative.all()
    # Never the query's own image (both captions of image 0 are excluded for rows 0 and 1).
    assert counts[0, :2].sum() == 0 and counts[1, :2].sum() == 0 and counts[2, 2] == 0 and counts[3, 3] == 0
    # The most similar other image dominates: row 0 picks image 1 (logit 5) over image 2 (-5).
    assert counts[0, 2] > 290
    with pytest.raises(ValueError, match="similarity"):
        sample_hard_negatives(similarity[:, :3], image_ids, image_ids)


def test_a_batch_of_one_image_has_no_negatives():
    index, has_negative = sample_hard_negatives(torch.zeros(2, 2), torch.tensor([3, 3]), torch.tensor([3, 3]))
    assert not has_negative.any()


def test_itm_objective_fuses_positives_and_negatives_and_trains_every_part():
    model = tiny_model()
    batch = make_batch(model, image_ids=[0, 0, 1, 2, 3, 4])
    args = VLPObjectiveArguments(objectives={"itc": 1.0, "itm": 1.0, "mlm": 1.0})
    total, losses, _ = compute_objective_losses(model, batch, args)
    assert set(losses) == {"itc", "itm", "mlm"} and all(torch.isfinite(value) for value in losses.values())
    # At initialisation the ITM head guesses: 1 positive for 2 negatives per query gives about H(1/3, 2/3).
    assert abs(losses["itm"].item() - (math.log(3) - 2 / 3 * math.log(2))) < 0.2
    total.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert any(name.startswith("itm_head") for name in grads)
    assert any(".fusion." in name for name in grads) and any(".image_encoder." in name for name in grads)


def test_itm_objective_needs_the_unimodal_states():
    model = tiny_model()
    args = VLPObjectiveArguments(objectives=["itm"])
    from modeling_vlp.training.family_objectives import fusion_itm_objective

    outputs = model(**{k: v for k, v in make_batch(model).items() if k != "image_id"})
    outputs.fusion_output["text_unimodal_state"] = None
    with pytest.raises(ValueError, match="text_unimodal_state"):
        fusion_itm_objective(model, outputs, {}, args)


@pytest.mark.slow  # runs a subprocess
def test_distributed_hard_negatives_come_from_the_other_rank(tmp_path, free_port):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
            "--master_addr", "127.0.0.1", "--master_port", str(free_port),
            str(REPO_ROOT / "tests" / "dist_fusion_itm.py"), str(tmp_path),
        ],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for rank in (0, 1):
        record = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert record["world_size"] == 2
        assert all(math.isfinite(loss) for loss in record["losses"])
        from_other_rank = 0
        for draw in record["draws"]:
            # The candidates are the gathered batch: 4 images of rank 0 then 4 of rank 1.
            assert draw["candidate_ids"] == [0, 1, 2, 3, 10, 11, 12, 13]
            for query, index in zip(draw["query_ids"], draw["index"]):
                assert draw["candidate_ids"][index] != query
                from_other_rank += (index >= 4) != (rank == 1)
        assert from_other_rank > 0, f"rank {rank} never drew a negative of the other rank"


# ---- momentum distillation --------------------------------------------------------------------------------------


def test_momentum_teacher_is_an_exponential_moving_average():
    model = tiny_model()
    distiller = MomentumDistiller(model, momentum=0.9, queue_size=8, alpha=0.4)
    before = {name: p.detach().clone() for name, p in distiller.teacher.named_parameters()}
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    distiller.update(model)
    for name, parameter in distiller.teacher.named_parameters():
        expected = 0.9 * before[name] + 0.1 * dict(model.named_parameters())[name]
        assert torch.allclose(parameter, expected, atol=1e-6), name
    assert not any(p.requires_grad for p in distiller.teacher.parameters())


def test_queue_is_first_in_first_out_and_wraps():
    distiller = MomentumDistiller(tiny_model(), queue_size=5)
    dim = distiller.image_queue.shape[1]
    for step in range(3):
        feats = torch.full((2, dim), float(step))
        distiller.enqueue(feats, feats, torch.tensor([2 * step, 2 * step + 1]))
    assert distiller.id_queue.tolist() == [5, 1, 2, 3, 4]
    assert distiller.queue_pointer == 1
    assert distiller.image_queue[:, 0].tolist() == [2.0, 0.0, 1.0, 1.0, 2.0]


def test_distillation_changes_itc_and_mlm_and_the_alpha_zero_case_matches_hard_targets():
    model = tiny_model()
    batch = make_batch(model)
    plain = VLPObjectiveArguments(objectives=["itc", "mlm"])
    _, plain_losses, _ = compute_objective_losses(model, batch, plain)
    distill = VLPObjectiveArguments(objectives=["itc", "mlm"], momentum_distill=True)
    distill.distiller = MomentumDistiller(model, queue_size=0, alpha=0.0)
    _, hard_losses, _ = compute_objective_losses(model, batch, distill)
    # alpha = 0 and an empty queue: the soft targets are the ground truth and the candidates the batch.
    for name in ("itc", "mlm"):
        assert torch.allclose(hard_losses[name], plain_losses[name], atol=1e-5), name
    distill.distiller = MomentumDistiller(model, queue_size=16, alpha=0.4)
    _, soft_losses, _ = compute_objective_losses(model, batch, distill)
    assert not torch.allclose(soft_losses["itc"], plain_losses["itc"], atol=1e-3)
    assert not torch.allclose(soft_losses["mlm"], plain_losses["mlm"], atol=1e-3)


def test_momentum_state_is_checkpointed_and_restored_on_resume(tmp_path):
    model = tiny_model()
    dataset = RowsDataset(make_batch(model, batch_size=8))
    arguments = dict(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=4, save_steps=2, learning_rate=1e-3,
        report_to="none", use_cpu=True, remove_unused_columns=False, logging_steps=1, save_strategy="steps",
        dataloader_drop_last=True,
    )  # fmt: skip
    objective_args = VLPObjectiveArguments(objectives=["itc", "itm", "mlm"], momentum_distill=True, queue_size=8)
    trainer = VLPTrainer(model=model, args=TrainingArguments(**arguments), train_dataset=dataset,
                         objective_args=objective_args)  # fmt: skip
    trainer.train()
    checkpoint = tmp_path / "checkpoint-2"
    assert (checkpoint / MOMENTUM_STATE_NAME).is_file()
    final = objective_args.distiller.state_dict()
    assert int(final["queue_pointer"]) == 0  # 4 steps x 4 rows through a queue of 8

    resumed_model = tiny_model(seed=1)
    resumed_args = VLPObjectiveArguments(objectives=["itc", "itm", "mlm"], momentum_distill=True, queue_size=8)
    resumed = VLPTrainer(model=resumed_model, args=TrainingArguments(**arguments), train_dataset=dataset,
                         objective_args=resumed_args)  # fmt: skip
    assert resumed_args.distiller.id_queue.eq(-1).all()  # a fresh queue, before the checkpoint is read
    resumed.load_momentum_state(str(checkpoint))  # what train(resume_from_checkpoint=...) calls first
    saved = MomentumDistiller(tiny_model(), queue_size=8)
    saved.load(str(checkpoint / MOMENTUM_STATE_NAME))
    state = resumed_args.distiller.state_dict()
    for name, value in saved.state_dict().items():
        assert torch.equal(state[name], value), name
    assert int(state["queue_pointer"]) == 0 and state["id_queue"].ge(0).all()
    # The teacher is the checkpoint's, not the new model's copy.
    fresh = MomentumDistiller(tiny_model(seed=1), queue_size=8).state_dict()
    assert any(not torch.equal(state[name], fresh[name]) for name in state if name.startswith("teacher."))


def test_region_fusion_model_trains_on_collated_region_features():
    """LXMERT-shaped (tiny) on the scenes' region features through VLPPretrainingCollator: every objective, with
    the collator's `region_labels` / `region_class_scores` as the object targets."""
    from modeling_vlp.training.collators import VLPPretrainingCollator
    from modeling_vlp.data.scenes import make_scenes_dataset
    from modeling_vlp.processors import VLPProcessor, VLPTokenizer

    small = dict(num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=2)
    config = get_preset_config(
        "lxmert-base", text_config=dict(small, vocab_size=120), vision_config=small, num_fusion_layers=1,
        visual_feat_dim=16, num_object_labels=5, num_attribute_labels=3, region_losses=["obj", "feat"],
        projection_dim=16, num_labels=4,
    )  # fmt: skip
    rows = make_scenes_dataset(8, 2, image_size=32, region_features=16)["train"]
    tokenizer = VLPTokenizer.train_from_iterator([c for row in rows["captions"] for c in row], vocab_size=100)
    collator = VLPPretrainingCollator(
        VLPProcessor(None, tokenizer), mlm_probability=0.15, mim_ratio=0.3, visual_input="regions"
    )
    batch = collator([rows[index] for index in range(8)])
    torch.manual_seed(0)
    model = VLPFusionForPreTraining(config)
    args = VLPObjectiveArguments(objectives=["itc", "itm", "mlm", "mim"])
    total, losses, _ = compute_objective_losses(model, batch, args)
    assert all(torch.isfinite(loss) for loss in losses.values())
    total.backward()
    assert model.region_head.decoders["obj"].weight.grad is not None
    # Class scores take precedence over class indices; without them the indices are the target.
    without_scores = {key: value for key, value in batch.items() if key != "region_class_scores"}
    _, hard, _ = compute_objective_losses(model, without_scores, VLPObjectiveArguments(objectives=["mim"]))
    assert not torch.allclose(hard["mim"], losses["mim"])
