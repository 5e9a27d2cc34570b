"""The Python training API: what `modeling_vlp` exports at top level, `VLPTrainer` keeping the raw columns the
collator reads, and the collator's `caption_column`."""

import pytest
import torch
from datasets import Dataset
from transformers import AutoModel, AutoProcessor, TrainingArguments

import modeling_vlp
from vlp_testing import make_image, save_tiny_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_training_api_is_exported_at_top_level():
    from modeling_vlp.families import FAMILIES
    from modeling_vlp.training import collators, trainer

    assert modeling_vlp.VLPTrainer is trainer.VLPTrainer
    assert modeling_vlp.VLPReportingTrainer is trainer.VLPReportingTrainer
    assert modeling_vlp.VLPObjectiveArguments is trainer.VLPObjectiveArguments
    assert modeling_vlp.VLPCollator is collators.VLPCollator
    assert modeling_vlp.VLPPretrainingCollator is collators.VLPPretrainingCollator
    assert modeling_vlp.FAMILIES is FAMILIES
    assert {"VLPTrainer", "VLPObjectiveArguments", "VLPCollator", "VLPPretrainingCollator", "FAMILIES"} <= set(
        modeling_vlp.__all__
    )


@pytest.fixture(scope="module")
def saved_dual(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dual")
    save_tiny_checkpoint(folder, "dual")
    return folder


def test_collator_takes_a_caption_column_of_any_name(saved_dual):
    processor = AutoProcessor.from_pretrained(saved_dual)
    rows = [{"image": make_image(index, (24, 24)), "text": "a red square"} for index in range(2)]
    batch = modeling_vlp.VLPCollator(processor, caption_column="text")(rows)
    assert batch["input_ids"].shape[0] == 2 and batch["pixel_values"].shape[0] == 2
    with pytest.raises(KeyError, match=r"no 'caption' column \(the caption_column\); it has \['image', 'text'\]"):
        modeling_vlp.VLPCollator(processor)(rows)
    with pytest.raises(ValueError, match="name two caption columns"):
        modeling_vlp.VLPCollator(processor, text_column="title", caption_column="text")


def test_vlp_trainer_keeps_the_columns_its_collator_reads(saved_dual, tmp_path, caplog):
    """With the Trainer's default remove_unused_columns=True the image and text columns would be dropped before the
    collator (the model's forward takes neither): VLPTrainer turns it off and says so."""
    model = AutoModel.from_pretrained(saved_dual)
    processor = AutoProcessor.from_pretrained(saved_dual)
    images = [make_image(index, (24, 24)) for index in range(8)]
    dataset = Dataset.from_dict({"image": images, "text": ["a red square"] * 8})
    args = TrainingArguments(str(tmp_path / "run"), max_steps=1, per_device_train_batch_size=4, report_to="none")
    assert args.remove_unused_columns
    with caplog.at_level("INFO"):
        trainer = modeling_vlp.VLPTrainer(
            model=model, args=args, train_dataset=dataset,
            data_collator=modeling_vlp.VLPCollator(processor, caption_column="text"),
        )  # fmt: skip
    assert not trainer.args.remove_unused_columns and "remove_unused_columns=False" in caplog.text
    before = model.text_projection.weight.detach().clone()
    trainer.train()
    assert trainer.state.global_step == 1 and not torch.equal(before, model.text_projection.weight)
