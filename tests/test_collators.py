"""Tests for the masking functions (MLM, patch and region MIM) and the pretraining / VQA collators: statistics on
large batches, what is never masked, determinism under a seed, shapes and errors. Offline, seeded, tiny."""

import numpy as np
import pytest
import torch
from transformers import BertTokenizer

from modeling_vlp.training.collators import VLPCollator, VLPPretrainingCollator, VLPQuestionAnsweringCollator
from modeling_vlp.data.scenes import make_scenes_dataset, make_scenes_vqa_dataset, vqa_answer_vocabulary
from modeling_vlp.training.masking import mask_tokens_for_mlm, patch_valid_mask, random_patch_mask, random_region_mask
from modeling_vlp.processors import VLPImageProcessor, VLPProcessor, VLPTokenizer


pytestmark = pytest.mark.usefixtures("one_thread")

MASK_ID, VOCAB = 4, 50


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def token_batch(batch_size=2000, length=24, seed=0):
    """Rows of <s> tokens </s> <pad>...: ids 5..49, specials at 2 / 3, padding 0 after a random length."""
    rng = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, VOCAB, (batch_size, length), generator=rng)
    lengths = torch.randint(3, length + 1, (batch_size,), generator=rng)
    positions = torch.arange(length)[None]
    attention_mask = (positions < lengths[:, None]).long()
    input_ids[:, 0] = 2
    input_ids[torch.arange(batch_size), lengths - 1] = 3
    input_ids[attention_mask == 0] = 0
    special = (input_ids == 2) | (input_ids == 3) | (input_ids == 0)
    return input_ids, special, attention_mask


# ----------------------------------------------------------------------------------------------------------------
# MLM


def test_mlm_statistics_and_what_is_never_masked():
    input_ids, special, attention_mask = token_batch()
    masked, labels = mask_tokens_for_mlm(input_ids, special, MASK_ID, VOCAB, 0.15, seeded(), attention_mask)
    selected = labels != -100
    maskable = ~special & attention_mask.bool()
    assert not (selected & ~maskable).any()  # never special tokens nor padding
    assert torch.equal(labels[selected], input_ids[selected])
    assert torch.equal(masked[~selected], input_ids[~selected])
    rate = selected.sum() / maskable.sum()
    assert 0.15 <= rate <= 0.18  # 15%, a little more from the one-per-row guarantee
    replaced = masked[selected]
    as_mask = (replaced == MASK_ID).float().mean()
    unchanged = (replaced == input_ids[selected]).float().mean()
    assert abs(as_mask - 0.8) < 0.02 and abs(unchanged - 0.1 - 1 / VOCAB * 0.1) < 0.02
    randomised = replaced[(replaced != MASK_ID) & (replaced != input_ids[selected])]
    assert randomised.min() >= 0 and randomised.max() < VOCAB and len(randomised.unique()) > VOCAB // 2


def test_mlm_masks_at_least_one_token_per_row():
    input_ids, special, attention_mask = token_batch(batch_size=500, length=5, seed=1)
    _, labels = mask_tokens_for_mlm(input_ids, special, MASK_ID, VOCAB, 0.01, seeded(), attention_mask)
    has_maskable = (~special & attention_mask.bool()).any(dim=1)
    assert ((labels != -100).sum(dim=1) >= 1)[has_maskable].all()
    # a row with nothing maskable stays untouched
    only_special = torch.tensor([[2, 3, 0, 0]])
    masked, labels = mask_tokens_for_mlm(only_special, only_special < 4, MASK_ID, VOCAB, 0.5, seeded())
    assert torch.equal(masked, only_special) and (labels == -100).all()


def test_mlm_is_deterministic_under_a_seed_and_probability_zero_disables():
    input_ids, special, attention_mask = token_batch(batch_size=64)
    first = mask_tokens_for_mlm(input_ids, special, MASK_ID, VOCAB, 0.15, seeded(3), attention_mask)
    again = mask_tokens_for_mlm(input_ids, special, MASK_ID, VOCAB, 0.15, seeded(3), attention_mask)
    other = mask_tokens_for_mlm(input_ids, special, MASK_ID, VOCAB, 0.15, seeded(4), attention_mask)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[1], other[1])
    masked, labels = mask_tokens_for_mlm(input_ids, special, MASK_ID, VOCAB, 0.0, seeded(), attention_mask)
    assert torch.equal(masked, input_ids) and (labels == -100).all()


def test_mlm_errors():
    input_ids, special, _ = token_batch(batch_size=2)
    with pytest.raises(ValueError, match="special_tokens_mask has shape"):
        mask_tokens_for_mlm(input_ids, special[:, :-1], MASK_ID, VOCAB)
    with pytest.raises(ValueError, match="attention_mask has shape"):
        mask_tokens_for_mlm(input_ids, special, MASK_ID, VOCAB, attention_mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="mask_token_id must be in"):
        mask_tokens_for_mlm(input_ids, special, 60, VOCAB)
    with pytest.raises(ValueError, match="probability must be in"):
        mask_tokens_for_mlm(input_ids, special, MASK_ID, VOCAB, probability=1.5)
    with pytest.raises(ValueError, match="input_ids must have shape"):
        mask_tokens_for_mlm(input_ids[0], special[0], MASK_ID, VOCAB)


# ----------------------------------------------------------------------------------------------------------------
# Patch and region masks


def test_random_patch_mask_counts_uniformity_and_padding():
    mask = random_patch_mask(4000, 4, 6, 0.4, seeded())
    assert mask.shape == (4000, 24) and mask.dtype == torch.bool
    assert (mask.sum(dim=1) == round(0.4 * 24)).all()
    frequency = mask.float().mean(dim=0)
    assert (frequency - 0.4).abs().max() < 0.04  # every position equally likely
    valid = torch.ones(4000, 24, dtype=torch.bool)
    valid[:, 12:] = False  # the lower half of the grid is padding
    valid[0] = False  # an all-padding row
    mask = random_patch_mask(4000, 4, 6, 0.5, seeded(), valid_mask=valid)
    assert not (mask & ~valid).any()
    assert (mask[1:].sum(dim=1) == 6).all() and mask[0].sum() == 0
    tiny = random_patch_mask(3, 2, 2, 0.05, seeded())
    assert (tiny.sum(dim=1) == 1).all()  # round(0.2) = 0, but a positive ratio masks at least one
    assert random_patch_mask(3, 2, 2, 0.0, seeded()).sum() == 0


def test_block_patch_mask_makes_blocks_of_the_exact_count():
    mask = random_patch_mask(200, 8, 8, 0.4, seeded(), block_masking=True, min_block_patches=4)
    assert (mask.sum(dim=1) == round(0.4 * 64)).all()
    grid = mask.view(200, 8, 8).float()
    # blocks: a masked patch's right and lower neighbours are masked far more often than under uniform masking
    neighbours = ((grid[:, :, 1:] * grid[:, :, :-1]).sum() + (grid[:, 1:] * grid[:, :-1]).sum()) / grid.sum()
    uniform = random_patch_mask(200, 8, 8, 0.4, seeded()).view(200, 8, 8).float()
    uniform_neighbours = ((uniform[:, :, 1:] * uniform[:, :, :-1]).sum() + (uniform[:, 1:] * uniform[:, :-1]).sum())
    assert neighbours > 1.5 * uniform_neighbours / uniform.sum()
    valid = torch.ones(10, 64, dtype=torch.bool)
    valid[:, 32:] = False
    padded = random_patch_mask(10, 8, 8, 0.5, seeded(), valid_mask=valid, block_masking=True)
    assert not (padded & ~valid).any() and (padded.sum(dim=1) == 16).all()
    again = random_patch_mask(10, 8, 8, 0.5, seeded(), valid_mask=valid, block_masking=True)
    assert torch.equal(padded, again)


def test_patch_mask_errors_and_determinism():
    assert torch.equal(random_patch_mask(8, 3, 3, 0.3, seeded(5)), random_patch_mask(8, 3, 3, 0.3, seeded(5)))
    assert not torch.equal(random_patch_mask(8, 3, 3, 0.3, seeded(5)), random_patch_mask(8, 3, 3, 0.3, seeded(6)))
    with pytest.raises(ValueError, match="ratio must be in"):
        random_patch_mask(2, 3, 3, -0.1)
    with pytest.raises(ValueError, match=r"valid_mask has shape \(2, 8\); expected .* \(2, 9\)"):
        random_patch_mask(2, 3, 3, 0.5, valid_mask=torch.ones(2, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="must be positive"):
        random_patch_mask(2, 0, 3, 0.5)


def test_random_region_mask():
    counts = torch.randint(0, 11, (3000,), generator=seeded())
    attention_mask = (torch.arange(10)[None] < counts[:, None]).long()
    mask = random_region_mask(attention_mask, 0.15, seeded())
    assert not (mask & ~attention_mask.bool()).any()
    expected = torch.clamp(torch.round(counts * 0.15), min=1) * (counts > 0)
    assert torch.equal(mask.sum(dim=1), expected.long())
    full = counts == 10
    assert (mask[full].float().mean(dim=0) - 0.2).abs().max() < 0.05  # round(1.5) = 2 of 10, uniformly
    assert torch.equal(mask, random_region_mask(attention_mask, 0.15, seeded()))
    with pytest.raises(ValueError, match="visual_attention_mask must have shape"):
        random_region_mask(attention_mask[0], 0.15)


def test_patch_valid_mask_follows_nearest_downsampling():
    pixel_mask = torch.zeros(2, 64, 96, dtype=torch.long)
    pixel_mask[0, :32, :64] = 1
    pixel_mask[1] = 1
    valid = patch_valid_mask(pixel_mask, 32)
    assert valid.tolist() == [[True, True, False, False, False, False], [True] * 6]
    with pytest.raises(ValueError, match="pixel_mask must have shape"):
        patch_valid_mask(pixel_mask[0], 32)


# ----------------------------------------------------------------------------------------------------------------
# Collators


@pytest.fixture(scope="module")
def scenes():
    return make_scenes_dataset(12, 0, image_size=32, region_features=8)


@pytest.fixture(scope="module")
def tokenizer(scenes):
    return VLPTokenizer.train_from_iterator([c for cs in scenes["train"]["captions"] for c in cs], vocab_size=120)


def vilt_processor(tokenizer):
    image_processor = VLPImageProcessor(
        size={"shortest_edge": 32, "longest_edge": 64}, size_divisor=16, do_pad=True, do_center_crop=False,
        image_mean=0.5, image_std=0.5,
    )  # fmt: skip
    return VLPProcessor(image_processor, tokenizer)


def rows_of(dataset, count):
    return [dataset[index] for index in range(count)]


def test_pretraining_collator_patches(scenes, tokenizer):
    from PIL import Image

    rows = rows_of(scenes["train"], 6)
    rows[1] = {**rows[1], "image": Image.new("RGB", (64, 32), (255, 0, 0))}  # landscape: padded in the batch
    collator = VLPPretrainingCollator(vilt_processor(tokenizer), mim_ratio=0.5, patch_size=16, max_length=20)
    batch = collator(rows)
    plain = VLPCollator(vilt_processor(tokenizer), max_length=20)(rows)
    assert set(batch) == set(plain) | {"mlm_labels", "mim_mask"}
    assert set(plain) == {"input_ids", "attention_mask", "pixel_values", "pixel_mask", "image_id"}
    assert batch["pixel_values"].shape == (6, 3, 32, 64) and torch.equal(batch["pixel_values"], plain["pixel_values"])
    # MLM: only real, non-special tokens change, at least one per caption, labels hold the originals
    selected = batch["mlm_labels"] != -100
    assert (selected.sum(dim=1) >= 1).all()
    assert torch.equal(batch["mlm_labels"][selected], plain["input_ids"][selected])
    assert torch.equal(batch["input_ids"][~selected], plain["input_ids"][~selected])
    special = torch.isin(plain["input_ids"], torch.tensor(tokenizer.all_special_ids))
    assert not (selected & (special | (plain["attention_mask"] == 0))).any()
    # MIM over the 2 x 4 patch grid: square images fill 2 x 2 of it, and only those patches are masked
    assert batch["mim_mask"].shape == (6, 8) and batch["mim_mask"].dtype == torch.bool
    square = torch.tensor([True, True, False, False, True, True, False, False])
    for row in (0, 2, 3, 4, 5):
        assert not (batch["mim_mask"][row] & ~square).any() and batch["mim_mask"][row].sum() == 2
    assert batch["mim_mask"][1].sum() == 4
    assert torch.equal(batch["image_id"], torch.tensor([row["image_id"] for row in rows]))


def test_pretraining_collator_is_seeded_and_options_disable(scenes, tokenizer):
    rows = rows_of(scenes["train"], 8)

    def collate(seed, **kwargs):
        options = dict(mim_ratio=0.3, patch_size=16, sample_captions=True, seed=seed)
        return VLPPretrainingCollator(vilt_processor(tokenizer), **{**options, **kwargs})(rows)

    first, again, other = collate(1), collate(1), collate(2)
    for name in ("input_ids", "mlm_labels", "mim_mask"):
        assert torch.equal(first[name], again[name])
    assert not torch.equal(first["mlm_labels"], other["mlm_labels"]) or not torch.equal(
        first["mim_mask"], other["mim_mask"]
    )
    nothing = collate(1, mlm_probability=0.0, mim_ratio=0.0, sample_captions=False)
    assert "mlm_labels" not in nothing and "mim_mask" not in nothing
    plain = VLPCollator(vilt_processor(tokenizer))(rows)
    assert torch.equal(nothing["input_ids"], plain["input_ids"])
    blocks = collate(1, mim_block_masking=True, mim_ratio=0.5)
    assert (blocks["mim_mask"].sum(dim=1) == 2).all()


def test_pretraining_collator_regions(scenes, tokenizer):
    rows = rows_of(scenes["train"], 5)
    collator = VLPPretrainingCollator(VLPProcessor(None, tokenizer), mim_ratio=0.4, visual_input="regions")
    batch = collator(rows)
    expected = {"input_ids", "attention_mask", "visual_feats", "visual_pos", "visual_attention_mask"}
    assert set(batch) == expected | {"region_class_scores", "region_labels", "image_id", "mlm_labels", "mim_mask"}
    counts = [len(row["visual_feats"]) for row in rows]
    assert batch["visual_feats"].shape == (5, max(counts), 8)
    assert batch["visual_attention_mask"].sum(dim=1).tolist() == counts
    assert batch["region_labels"][0, : counts[0]].tolist() == rows[0]["region_labels"]
    assert batch["mim_mask"].shape == batch["visual_attention_mask"].shape
    assert not (batch["mim_mask"] & (batch["visual_attention_mask"] == 0)).any()
    assert (batch["mim_mask"].sum(dim=1) == 1).all()  # round(0.4 * 2 or 3) = 1
    # regions without detector targets, from renamed columns
    renamed = [{"caption": row["caption"], "feats": row["visual_feats"], "boxes": row["visual_pos"]} for row in rows]
    collator = VLPPretrainingCollator(
        VLPProcessor(None, tokenizer), visual_input="regions", visual_feats_column="feats", visual_pos_column="boxes"
    )
    batch = collator(renamed)
    assert "region_labels" not in batch and batch["visual_feats"].shape == (5, max(counts), 8)
    with pytest.raises(KeyError, match="neither a 'feats' nor a 'feats_file' column"):
        collator([{"caption": "a cat", "boxes": rows[0]["visual_pos"]}])


def test_pretraining_collator_errors(tokenizer, tmp_path):
    processor = vilt_processor(tokenizer)
    with pytest.raises(ValueError, match="patch_size=None: masked image modeling on patches"):
        VLPPretrainingCollator(processor, mim_ratio=0.5)
    with pytest.raises(ValueError, match="mlm_probability must be in"):
        VLPPretrainingCollator(processor, mlm_probability=2)
    with pytest.raises(ValueError, match="visual_input must be one of"):
        VLPPretrainingCollator(processor, visual_input="pixels")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "cat"]) + "\n")
    no_mask = VLPProcessor(VLPImageProcessor(), BertTokenizer(str(vocab), mask_token=None))
    with pytest.raises(ValueError, match="needs a tokenizer with a mask token.*BertTokenizer"):
        VLPPretrainingCollator(no_mask)
    VLPPretrainingCollator(no_mask, mlm_probability=0.0)  # fine without MLM
    with pytest.raises(TypeError):
        VLPPretrainingCollator(processor, captions="captions")


@pytest.fixture(scope="module")
def vqa():
    return make_scenes_vqa_dataset(6, 0, image_size=32)


def test_question_answering_collator_soft_scores(vqa, tokenizer):
    _, label2id = vqa_answer_vocabulary(vqa)
    rows = [
        {**rows_of(vqa["train"], 1)[0], "answers": ["red"] * 8 + ["blue", "violet"]},
        {**rows_of(vqa["train"], 1)[0], "answers": ["two"] * 2 + ["2", "1", "1"] + ["unknown"] * 5},
        {**rows_of(vqa["train"], 1)[0], "answers": "yes"},
    ]
    label2id = {**label2id, "violet": len(label2id)} if "violet" not in label2id else label2id
    collator = VLPQuestionAnsweringCollator(vilt_processor(tokenizer), label2id, max_length=16)
    batch = collator(rows)
    assert set(batch) == {"input_ids", "attention_mask", "pixel_values", "pixel_mask", "labels"}
    labels = batch["labels"]
    assert labels.shape == (3, len(label2id)) and labels.dtype == torch.float32
    expected = torch.zeros(3, len(label2id))
    expected[0, label2id["red"]], expected[0, label2id["blue"]], expected[0, label2id["violet"]] = 1, 1 / 3, 1 / 3
    expected[1, label2id["2"]], expected[1, label2id["1"]] = 1, 2 / 3  # "two" is normalised to "2"; "unknown" dropped
    expected[2, label2id["yes"]] = 1 / 3
    torch.testing.assert_close(labels, expected)
    texts = [row["question"] for row in rows]
    questions = tokenizer(texts, padding=True, truncation=True, max_length=16, return_tensors="pt")["input_ids"]
    assert torch.equal(batch["input_ids"], questions)


def test_question_answering_collator_on_the_scenes_and_errors(vqa, tokenizer):
    _, label2id = vqa_answer_vocabulary(vqa)
    rows = rows_of(vqa["train"], 8)
    batch = VLPQuestionAnsweringCollator(vilt_processor(tokenizer), label2id)(rows)
    for row, scores in zip(rows, batch["labels"]):
        assert scores[label2id[row["answer"]]] == 1 and scores.argmax() == label2id[row["answer"]]
    with pytest.raises(ValueError, match="label2id must map its 2 answers to the indices 0..1"):
        VLPQuestionAnsweringCollator(vilt_processor(tokenizer), {"yes": 0, "no": 2})
    with pytest.raises(ValueError, match="label2id must be a non-empty dict"):
        VLPQuestionAnsweringCollator(vilt_processor(tokenizer), {})
    collator = VLPQuestionAnsweringCollator(vilt_processor(tokenizer), label2id)
    with pytest.raises(KeyError, match="no 'answers' column"):
        collator([{"image": rows[0]["image"], "question": "what?"}])
    with pytest.raises(KeyError, match="no 'question' column"):
        collator([{"image": rows[0]["image"], "answers": ["yes"]}])


def test_question_answering_collator_regions(tokenizer):
    scenes = make_scenes_dataset(3, 0, image_size=32, region_features=8)["train"]
    rows = [{**row, "question": "how many objects are there?", "answers": [str(len(row["objects"]))] * 10}
            for row in scenes]  # fmt: skip
    collator = VLPQuestionAnsweringCollator(VLPProcessor(None, tokenizer), {"1": 0, "2": 1}, visual_input="regions")
    batch = collator(rows)
    regions = {"visual_feats", "visual_pos", "visual_attention_mask"}
    assert set(batch) == {"input_ids", "attention_mask", "labels"} | regions
    assert batch["labels"].tolist() == [[1.0, 0.0] if len(row["objects"]) == 1 else [0.0, 1.0] for row in rows]


def test_collators_read_region_npy_files(tmp_path, tokenizer):
    feats = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    boxes = np.array([[0, 0, 1, 1], [0.1, 0.1, 0.5, 0.5], [0.5, 0.2, 0.9, 0.8]], dtype=np.float32)
    np.save(tmp_path / "feats.npy", feats)
    np.save(tmp_path / "boxes.npy", boxes)
    row = {"caption": "a cat", "visual_feats_file": str(tmp_path / "feats.npy"),
           "visual_pos_file": str(tmp_path / "boxes.npy")}  # fmt: skip
    collator = VLPPretrainingCollator(VLPProcessor(None, tokenizer), visual_input="regions", mlm_probability=0)
    batch = collator([row])
    np.testing.assert_array_equal(batch["visual_feats"][0].numpy(), feats)
    np.testing.assert_array_equal(batch["visual_pos"][0].numpy(), boxes)
    with pytest.raises(ValueError, match="Could not read visual_feats_file=.*missing.npy"):
        collator([{**row, "visual_feats_file": str(tmp_path / "missing.npy")}])
