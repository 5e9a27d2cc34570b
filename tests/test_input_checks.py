"""Inputs that cannot be right (boxes out of order or range, NaN pixels or features, token ids outside the vocabulary)
are refused by the shared embeddings with the same one-line ValueError in every family."""

import re

import pytest
import torch

import modeling_vlp  # noqa: F401  (registers the Auto classes)
from modeling_vlp.families import FAMILIES
from modeling_vlp.presets import get_preset_config

BATCH, LENGTH, REGIONS, FEAT_DIM = 2, 6, 4, 12

# (name, family, preset overrides): every family, and the region variants of the two that read regions.
MODELS = [
    ("dual", "dual", {}),
    ("fusion", "fusion", {}),
    ("fusion-regions", "fusion", dict(visual_input="regions", visual_feat_dim=FEAT_DIM, visual_pos_dim=4)),
    ("fusion-regions-5d", "fusion", dict(visual_input="regions", visual_feat_dim=FEAT_DIM, visual_pos_dim=5)),
    ("unified", "unified", {}),
    ("unified-regions", "unified", dict(visual_input="regions", visual_feat_dim=FEAT_DIM, max_regions=8)),
    ("unified-uniter", "unified", dict(visual_input="regions", visual_feat_dim=FEAT_DIM, max_regions=8,
                                       box_embedding="uniter")),
    ("captioning", "captioning", {}),
]  # fmt: skip
REGION_MODELS = [entry for entry in MODELS if "regions" in entry[0] or "uniter" in entry[0]]
PATCH_MODELS = [entry for entry in MODELS if entry not in REGION_MODELS]


def build(family: str, overrides: dict):
    torch.manual_seed(0)
    config = get_preset_config(f"{family}-tiny", **overrides)
    return FAMILIES[family].classes["base"](config).eval(), config


def vocab_size(model) -> int:
    return model.get_input_embeddings().num_embeddings


def good_inputs(model, config, family: str) -> dict:
    generator = torch.Generator().manual_seed(1)
    inputs = {"input_ids": torch.randint(3, vocab_size(model), (BATCH, LENGTH), generator=generator)}
    if getattr(config, "visual_input", "patches") == "regions":
        width = 4 if getattr(config, "box_embedding", "linear") == "uniter" else config.visual_pos_dim
        corners = torch.rand(BATCH, REGIONS, 2, 2, generator=generator).sort(dim=2).values.flatten(2)
        boxes = torch.cat([corners, torch.rand(BATCH, REGIONS, width - 4, generator=generator)], dim=-1)
        inputs.update(visual_feats=torch.randn(BATCH, REGIONS, FEAT_DIM, generator=generator), visual_pos=boxes)
    else:
        size = FAMILIES[family].image_size(config)
        inputs["pixel_values"] = torch.randn(BATCH, 3, size, size, generator=generator)
    return inputs


def refuses(model, inputs: dict, message: str) -> str:
    with torch.no_grad(), pytest.raises(ValueError) as error:
        model(**inputs)
    text = str(error.value)
    assert "\n" not in text
    assert re.fullmatch(message, text), text
    return text


@pytest.mark.parametrize("name, family, overrides", MODELS, ids=[entry[0] for entry in MODELS])
def test_good_inputs_pass_and_out_of_vocabulary_ids_are_named(name, family, overrides):
    model, config = build(family, overrides)
    inputs = good_inputs(model, config, family)
    with torch.no_grad():
        model(**inputs)  # the checks pass valid inputs
    size = vocab_size(model)
    inputs["input_ids"][1, 4] = size + 7
    refuses(model, inputs, re.escape(
        f"`input_ids` has {size + 7} at index [1, 4]; expected ids in [0, {size}) (`vocab_size` = {size}): were the "
        "texts tokenized with this model's tokenizer?"
    ))  # fmt: skip
    inputs["input_ids"][1, 4] = -1
    refuses(model, inputs, r"`input_ids` has -1 at index \[1, 4\]; expected ids in \[0, \d+\) .*")


@pytest.mark.parametrize("name, family, overrides", PATCH_MODELS, ids=[entry[0] for entry in PATCH_MODELS])
def test_non_finite_pixels_are_named_unless_the_check_is_off(name, family, overrides):
    model, config = build(family, overrides)
    inputs = good_inputs(model, config, family)
    inputs["pixel_values"][1, 2, 3, 5] = float("nan")
    message = (
        r"`pixel_values` has nan at index [1, 2, 3, 5]; expected finite values (set `model.config.check_inputs = "
        r"False` to skip this check)."
    )
    refuses(model, inputs, re.escape(message))
    inputs["pixel_values"][1, 2, 3, 5] = float("inf")
    refuses(model, inputs, re.escape(message.replace("nan", "inf")))
    model.config.check_inputs = False  # read at every forward, from the model's own config (not its towers')
    with torch.no_grad():
        model(**inputs)


@pytest.mark.parametrize("name, family, overrides", REGION_MODELS, ids=[entry[0] for entry in REGION_MODELS])
def test_region_boxes_and_features_are_checked_alike(name, family, overrides):
    model, config = build(family, overrides)
    inputs = good_inputs(model, config, family)
    good = inputs["visual_pos"].clone()

    inputs["visual_pos"] = good.clone()
    inputs["visual_pos"][0, 2, [0, 2]] = torch.tensor([0.75, 0.25])  # x2 < x1
    y1, y2 = inputs["visual_pos"][0, 2, 1].item(), inputs["visual_pos"][0, 2, 3].item()
    box = [0.75, round(y1, 4), 0.25, round(y2, 4)]
    refuses(model, inputs, re.escape(
        f"`visual_pos` has the box {box} at index [0, 2], with x2 < x1 or y2 < y1; expected corners (x1, y1, x2, y2) "
        "with x1 <= x2, y1 <= y2 (not x, y, width, height)."
    ))  # fmt: skip

    inputs["visual_pos"] = good.clone()
    inputs["visual_pos"][1, 3, 1] = -0.5
    refuses(model, inputs, r"`visual_pos` has -0\.5 at index \[1, 3, 1\] \(largest 0\.\d+\); expected boxes "
            r"normalised to \[0, 1\] by the image size\.")  # fmt: skip

    inputs["visual_pos"] = good.clone()
    inputs["visual_pos"][..., :4] *= torch.tensor([640.0, 480.0, 640.0, 480.0])  # pixels, not fractions
    refuses(model, inputs, r"`visual_pos` has [\d.]+ at index \[0, 0, \d\] \(largest [\d.]+\); expected boxes "
            r"normalised to \[0, 1\] by the image size: they look like pixels, divide x by the image width and y by "
            r"its height\.")  # fmt: skip

    inputs["visual_pos"] = good.clone()
    inputs["visual_feats"][1, 0, 7] = float("nan")
    refuses(model, inputs, re.escape(
        "`visual_feats` has nan at index [1, 0, 7]; expected finite values (set `model.config.check_inputs = False` "
        "to skip this check)."
    ))  # fmt: skip
    inputs["visual_feats"][1, 0, 7] = 0.0
    inputs["visual_pos"][0, 1, 3] = float("nan")
    refuses(model, inputs, re.escape("`visual_pos` has nan at index [0, 1, 3]; expected finite values") + ".*")

    model.config.check_inputs = False  # the finite checks off: a NaN box is still out of range
    refuses(model, inputs, re.escape("`visual_pos` has nan at index [0, 1, 3] (largest ") + ".*")
    inputs["visual_pos"] = good
    inputs["visual_feats"][1, 0, 7] = float("nan")
    with torch.no_grad():
        model(**inputs)


def test_token_type_ids_and_padded_regions():
    model, config = build("unified", dict(visual_input="regions", visual_feat_dim=FEAT_DIM, max_regions=8))
    inputs = good_inputs(model, config, "unified")
    inputs["visual_pos"][1, -1] = 0.0  # a padded region: zeros pass
    inputs["visual_attention_mask"] = torch.ones(BATCH, REGIONS, dtype=torch.long)
    inputs["visual_attention_mask"][1, -1] = 0
    with torch.no_grad():
        model(**inputs)
    types = config.type_vocab_size
    inputs["token_type_ids"] = torch.zeros(BATCH, LENGTH, dtype=torch.long)
    inputs["token_type_ids"][0, 1] = types
    refuses(model, inputs, re.escape(
        f"`token_type_ids` has {types} at index [0, 1]; expected ids in [0, {types}) (`type_vocab_size` = {types})"
    ) + ".*")  # fmt: skip


def test_the_unified_family_can_still_take_unnormalised_boxes():
    model, config = build("unified", dict(visual_input="regions", visual_feat_dim=FEAT_DIM, max_regions=8,
                                          normalized_boxes=False))  # fmt: skip
    inputs = good_inputs(model, config, "unified")
    inputs["visual_pos"] = inputs["visual_pos"] * 100  # pixels, as this config says
    with torch.no_grad():
        model(**inputs)
    inputs["visual_pos"][0, 0, [0, 2]] = torch.tensor([50.0, 10.0])
    refuses(model, inputs, r"`visual_pos` has the box \[50\.0, .*\] at index \[0, 0\], with x2 < x1 or y2 < y1.*")


def test_a_checkpoint_reloaded_keeps_the_checks_switch(tmp_path):
    model, config = build("dual", {})
    model.config.check_inputs = False
    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path)
    inputs = good_inputs(reloaded, reloaded.config, "dual")
    inputs["pixel_values"][0, 0, 0, 0] = float("nan")
    with torch.no_grad():
        reloaded(**inputs)
    reloaded.config.check_inputs = True
    refuses(reloaded, inputs, re.escape("`pixel_values` has nan at index [0, 0, 0, 0]") + ".*")
