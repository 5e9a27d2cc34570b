"""ALBEF's distillation warm-up: the teacher's weight `alpha` ramps linearly from 0 over `distill_warmup_steps`
optimizer steps (ALBEF: `alpha * min(1, step / steps_per_epoch)` in the first epoch)."""

import sys

import pytest
import torch

from modeling_vlp import VLPFusionForPreTraining, get_preset_config
from modeling_vlp.commands.arguments import PretrainArguments
from modeling_vlp.commands.pretrain import OBJECTIVE_OPTIONS
from modeling_vlp.training.family_objectives import (
    VLPObjectiveArguments,
    compute_objective_losses,
)
from modeling_vlp.training.momentum import MomentumDistiller, ramped_alpha

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(seed: int = 0) -> VLPFusionForPreTraining:
    torch.manual_seed(seed)
    return VLPFusionForPreTraining(get_preset_config("fusion-tiny")).eval()


def make_batch(model, batch_size: int = 6, length: int = 7, seed: int = 0) -> dict:
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
        "image_id": torch.arange(batch_size),
    }


def test_ramped_alpha_is_albefs_linear_warm_up():
    assert [ramped_alpha(0.4, step, 10) for step in (0, 1, 5, 10, 11, 1000)] == pytest.approx(
        [0.0, 0.04, 0.2, 0.4, 0.4, 0.4]
    )
    assert ramped_alpha(0.4, 0, None) == ramped_alpha(0.4, 0, 0) == 0.4  # no warm-up
    with pytest.raises(ValueError, match="distill_warmup_steps"):
        ramped_alpha(0.4, 3, -1)
    with pytest.raises(ValueError, match="distill_warmup_steps"):
        VLPObjectiveArguments(momentum_distill=True, distill_warmup_steps=-5)


def test_distillation_weight_ramps_with_the_teachers_updates():
    """The ITC and MLM losses are linear in the distillation weight: with a 10-step warm-up they are the hard-target
    losses (alpha 0) at step 0, move halfway by step 5, reach the full-alpha losses at step 10 and stay there."""
    model = tiny_model()
    batch = make_batch(model)

    def losses_with(alpha: float, warmup_steps: int | None) -> dict:
        args = VLPObjectiveArguments(
            objectives=["itc", "mlm"], momentum_distill=True, distill_warmup_steps=warmup_steps
        )
        args.distiller = MomentumDistiller(tiny_model(seed=1), queue_size=0, alpha=alpha)
        return compute_objective_losses(model, batch, args)[1]

    # The candidates are the teacher's features either way; only the targets' mix changes.
    plain, full = losses_with(0.0, None), losses_with(0.4, None)
    args = VLPObjectiveArguments(objectives=["itc", "mlm"], momentum_distill=True, distill_warmup_steps=10)
    # A teacher that differs from the model, so that its soft targets differ from the hard ones.
    args.distiller = MomentumDistiller(tiny_model(seed=1), queue_size=0, alpha=0.4)
    teacher = tiny_model(seed=1)

    losses = {}
    for step in range(21):
        if step in (0, 5, 10, 20):
            losses[step] = compute_objective_losses(model, batch, args)[1]
        args.distiller.update(teacher)  # one optimizer step; the teacher stays the seed-1 model
    assert args.distiller.steps == 21
    for name in ("itc", "mlm"):
        assert torch.allclose(losses[0][name], plain[name], atol=1e-5), name
        assert not torch.allclose(full[name], plain[name], atol=1e-3), name
        assert torch.allclose(losses[5][name], (plain[name] + full[name]) / 2, atol=1e-5), name
        assert torch.allclose(losses[10][name], full[name], atol=1e-5), name
        assert torch.allclose(losses[20][name], full[name], atol=1e-5), name


def test_the_step_count_is_saved_with_the_teacher():
    distiller = MomentumDistiller(tiny_model(), queue_size=4)
    for _ in range(3):
        distiller.update(tiny_model())
    state = distiller.state_dict()
    assert int(state["steps"]) == 3
    restored = MomentumDistiller(tiny_model(), queue_size=4)
    restored.load_state_dict(state)
    assert restored.steps == 3 and restored.alpha_at(6) == pytest.approx(0.2)
    # A state saved before the count was kept comes from a run past its warm-up.
    old = {name: value for name, value in state.items() if name != "steps"}
    restored.load_state_dict(old)
    assert restored.alpha_at(6) == pytest.approx(0.4)


def test_the_command_line_option_reaches_the_objective_arguments():
    assert "distill_warmup_steps" in OBJECTIVE_OPTIONS
    assert PretrainArguments.__dataclass_fields__["distill_warmup_steps"].default is None
    assert VLPObjectiveArguments.__dataclass_fields__["distill_warmup_steps"].default is None


@pytest.mark.parametrize(("option", "expected"), [([], 6), (["--distill-warmup-steps", "3"], 3)])
def test_vlp_pretrain_warms_up_over_the_first_epoch_by_default(tmp_path, monkeypatch, option, expected):
    """48 training rows in batches of 8: one epoch is 6 optimizer steps, ALBEF's default warm-up."""
    from modeling_vlp.commands import main

    pretrain = sys.modules["modeling_vlp.commands.pretrain"]  # the package's `pretrain` is the command function
    seen = {}

    class Recording(pretrain.VLPTrainer):
        def __init__(self, *args, objective_args=None, **kwargs):
            seen["warmup"] = objective_args.distill_warmup_steps
            super().__init__(*args, objective_args=objective_args, **kwargs)

    monkeypatch.setattr(pretrain, "VLPTrainer", Recording)
    main(["pretrain", "--family", "fusion", "--preset", "fusion-tiny", "--momentum-distill", "--queue-size", "16",
          "--num-train", "48", "--num-validation", "8", "--per-device-train-batch-size", "8", "--vocab-size", "200",
          "--max-steps", "2", "--save-strategy", "no", "--output-dir", str(tmp_path), *option])  # fmt: skip
    assert seen["warmup"] == expected
