"""The unified single-stream family: presets, patch and region embeddings (padding, interpolation, sampling, MIM
masking), the pretraining losses against hand-written references, VQA / retrieval heads, save/load, gradients and
input errors. Tiny seeded models; CPU."""

import re

import pytest
import torch
import torch.nn.functional as F
from transformers import ViltConfig, ViltModel, VisualBertConfig, VisualBertModel

from modeling_vlp.configuration_unified import VLPUnifiedConfig
from modeling_vlp.modeling_unified import (
    VLPUnifiedForImageTextRetrieval,
    VLPUnifiedForPreTraining,
    VLPUnifiedForQuestionAnswering,
    VLPUnifiedModel,
)
from modeling_vlp.presets import PRESETS, get_preset_config

pytestmark = pytest.mark.usefixtures("one_thread")

PATCH = 8
# A UNITER-shaped region variant of unified-tiny: post-norm, 7-d box features, LayerNorms on features, boxes and the
# visual sum, region classification.
REGIONS = dict(
    visual_input="regions", visual_feat_dim=12, box_embedding="uniter", visual_feat_layernorm=True,
    visual_pos_layernorm=True, embedding_norm="separate", max_regions=8, num_object_labels=6, pre_norm=False,
)  # fmt: skip
# VisualBERT-shaped: no boxes, one LayerNorm over [text; visual], VQA on the last text token with the KL loss.
VISUALBERT = dict(
    visual_input="regions", visual_feat_dim=12, box_embedding="none", embedding_norm="joint", max_regions=8,
    pre_norm=False, vqa_head="text_token", vqa_loss="kl",
)  # fmt: skip


def tiny_config(**overrides) -> VLPUnifiedConfig:
    config_class, fields = PRESETS["unified-tiny"]
    return config_class(**{**fields, "num_labels": 5, **overrides})


def tiny_model(model_class=VLPUnifiedModel, seed: int = 0, attn: str = "sdpa", **overrides):
    """Seeded, with every parameter perturbed so that LayerNorms, biases and zero-initialised tokens matter."""
    torch.manual_seed(seed)
    config = tiny_config(**overrides)
    config._attn_implementation = attn
    model = model_class(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    return model


def text_inputs(batch_size: int = 2, length: int = 7, seed: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, 99, (batch_size, length), generator=generator)
    attention_mask = torch.ones(batch_size, length, dtype=torch.long)
    attention_mask[-1, length - 2 :] = 0
    return dict(input_ids=input_ids * attention_mask, attention_mask=attention_mask)


def patch_inputs(seed: int = 2) -> dict:
    """Two images padded into one 40x48 batch: the first fills it, the second is 24x32 (3x4 of the 5x6 patches)."""
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(2, 3, 40, 48, generator=generator)
    pixel_mask = torch.ones(2, 40, 48, dtype=torch.long)
    pixel_mask[1, 24:] = 0
    pixel_mask[1, :, 32:] = 0
    pixel_values[1] *= pixel_mask[1]
    return {**text_inputs(), "pixel_values": pixel_values, "pixel_mask": pixel_mask}


def region_inputs(num_regions: int = 5, seed: int = 3, feat_dim: int = 12, boxes: bool = True) -> dict:
    generator = torch.Generator().manual_seed(seed)
    corners = torch.rand(2, num_regions, 2, 2, generator=generator).sort(dim=2).values  # x1 < x2, y1 < y2
    visual_attention_mask = torch.ones(2, num_regions, dtype=torch.long)
    visual_attention_mask[1, -2:] = 0
    inputs = dict(
        **text_inputs(),
        visual_feats=torch.rand(2, num_regions, feat_dim, generator=generator),
        visual_attention_mask=visual_attention_mask,
    )
    if boxes:
        inputs["visual_pos"] = corners.reshape(2, num_regions, 4)  # (min x, min y, max x, max y)
    return inputs


def max_diff(a, b) -> float:
    return (a.detach().double() - b.detach().double()).abs().max().item()


# --------------------------------------------------------------------------------------------------------------
# Config and presets
# --------------------------------------------------------------------------------------------------------------


def test_presets_build_and_match_the_transformers_architectures():
    for name in ("vilt-b-32", "visualbert-base", "uniter-base", "unified-small", "unified-small-regions", "unified-tiny"):
        config = get_preset_config(name)
        assert config.model_type == "vlp_unified", name
    small = VLPUnifiedModel(PRESETS["unified-small"][0](**PRESETS["unified-small"][1]))
    assert small.config.hidden_size == 128 and len(small.encoder.layers) == 4

    def count(model):
        return sum(parameter.numel() for parameter in model.parameters())

    with torch.device("meta"):
        vilt = VLPUnifiedModel(VLPUnifiedConfig(**PRESETS["vilt-b-32"][1]))
        visualbert = VLPUnifiedModel(VLPUnifiedConfig(**PRESETS["visualbert-base"][1]))
        uniter = VLPUnifiedForPreTraining(VLPUnifiedConfig(**PRESETS["uniter-base"][1]))
        reference_vilt = ViltModel(ViltConfig())
        reference_visualbert = VisualBertModel(VisualBertConfig(visual_embedding_dim=2048))
    # ViLT-B/32 plus our MIM mask token.
    assert count(vilt) == count(reference_vilt) + 768
    # VisualBERT's visual position (512) and token-type (2) tables become the 2 modality-type rows.
    assert count(visualbert) == count(reference_visualbert) - 512 * 768
    assert uniter.vlp.embeddings.visual_embeddings.box_projection.in_features == 7
    assert uniter.mim_head.classifier.out_features == 1601


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(visual_input="grid"), "visual_input"),
        (dict(embedding_norm="post"), "embedding_norm"),
        (dict(box_embedding="linear", visual_pos_dim=6), "visual_pos_dim"),
        (dict(max_image_length=0), "max_image_length"),
        (dict(image_size=36), "image_size"),
        (dict(vqa_loss="mse"), "vqa_loss"),
        (dict(hidden_size=30), "hidden_size"),
    ],
)
def test_config_rejects_bad_fields(overrides, message):
    # huggingface_hub's strict dataclasses wrap the ValueError in their own validation error.
    with pytest.raises(Exception, match=message):
        tiny_config(**overrides)


# --------------------------------------------------------------------------------------------------------------
# Embeddings and the base model
# --------------------------------------------------------------------------------------------------------------


def test_patch_model_outputs():
    model = tiny_model()
    inputs = patch_inputs()
    outputs = model(**inputs)
    assert outputs.text_length == 7
    assert outputs.last_hidden_state.shape == (2, 7 + 1 + 30, 32)
    assert outputs.pooler_output.shape == (2, 32)
    assert outputs.visual_token_index[:, 0].tolist() == [-1, -1]
    assert outputs.visual_token_index[0, 1:].tolist() == list(range(30))
    expected = torch.zeros(5, 6, dtype=torch.long)
    expected[:3, :4] = 1
    assert outputs.visual_attention_mask[1, 1:].tolist() == expected.flatten().tolist()
    assert outputs.visual_attention_mask[0].tolist() == [1] * 31


def test_a_padded_image_is_seen_as_the_same_image_alone():
    """Padding, and resizing the position grid to the image's own 3x4 patches, do not depend on the batch."""
    model = tiny_model()
    inputs = patch_inputs()
    batched = model(**inputs)
    alone = model(
        input_ids=inputs["input_ids"][1:], attention_mask=inputs["attention_mask"][1:],
        pixel_values=inputs["pixel_values"][1:, :, :24, :32],
    )  # fmt: skip
    assert alone.last_hidden_state.shape[1] == 7 + 1 + 12
    assert max_diff(batched.last_hidden_state[1, :5], alone.last_hidden_state[0, :5]) < 1e-5
    assert max_diff(batched.pooler_output[1], alone.pooler_output[0]) < 1e-5
    valid = batched.visual_attention_mask[1].bool()
    assert max_diff(batched.last_hidden_state[1, 7:][valid], alone.last_hidden_state[0, 7:]) < 1e-5


def test_positions_follow_vilt_bilinear_resizing():
    model = tiny_model()
    embeddings = model.embeddings.visual_embeddings
    grid = embeddings.position_embedding.weight[1:].reshape(4, 4, 32).permute(2, 0, 1)[None]
    positions = embeddings.grid_positions(torch.tensor([3, 4]), torch.tensor([4, 4]), 5, 6)
    expected = F.interpolate(grid, size=(3, 4), mode="bilinear", align_corners=True)
    assert max_diff(positions[0].reshape(5, 6, 32)[:3, :4], expected[0].permute(1, 2, 0)) == 0  # image 0: 3x4
    first, second = positions.reshape(2, 5, 6, 32)
    assert first[3:].abs().max() == 0 and first[:, 4:].abs().max() == 0  # padding
    assert max_diff(second[:4, :4], grid[0].permute(1, 2, 0)) == 0  # the model's own 4x4 grid: unchanged


def test_patch_sampling_in_training_only():
    model = tiny_model(max_image_length=5)
    inputs = patch_inputs()
    model.train()
    torch.manual_seed(0)
    outputs = model(**inputs)
    assert outputs.last_hidden_state.shape[1] == 7 + 1 + 5
    index = outputs.visual_token_index[:, 1:]
    assert torch.equal(index, index.sort(dim=1).values)
    valid_patches = [set(range(30)), {row * 6 + col for row in range(3) for col in range(4)}]
    for image in range(2):
        assert set(index[image].tolist()) <= valid_patches[image]
    assert outputs.visual_attention_mask.all()
    model.eval()
    assert model(**inputs).last_hidden_state.shape[1] == 7 + 1 + 30


def test_masked_patches_and_regions_lose_their_content():
    model = tiny_model()
    inputs = patch_inputs()
    mim_mask = torch.zeros(2, 30, dtype=torch.bool)
    mim_mask[:, [0, 7, 13]] = True
    changed = dict(inputs, pixel_values=inputs["pixel_values"].clone())
    changed["pixel_values"][:, :, 8:16, 8:16] += 3.0  # patch 7 (row 1, column 1)
    masked, masked_changed = model(**inputs, mim_mask=mim_mask), model(**changed, mim_mask=mim_mask)
    assert max_diff(masked.last_hidden_state, masked_changed.last_hidden_state) < 1e-6
    assert max_diff(model(**inputs).last_hidden_state, model(**changed).last_hidden_state) > 1e-3

    regions = tiny_model(**REGIONS)
    inputs = region_inputs()
    mim_mask = torch.zeros(2, 5, dtype=torch.bool)
    mim_mask[:, 1] = True
    changed = dict(inputs, visual_feats=inputs["visual_feats"].clone())
    changed["visual_feats"][:, 1] += 1.0
    masked, masked_changed = regions(**inputs, mim_mask=mim_mask), regions(**changed, mim_mask=mim_mask)
    assert max_diff(masked.last_hidden_state, masked_changed.last_hidden_state) < 1e-6
    assert max_diff(regions(**inputs).last_hidden_state, regions(**changed).last_hidden_state) > 1e-3


@pytest.mark.parametrize("variant", [REGIONS, VISUALBERT, dict(REGIONS, box_embedding="linear", visual_pos_dim=4)])
def test_padded_regions_change_nothing(variant):
    model = tiny_model(**variant)
    inputs = region_inputs(boxes=variant["box_embedding"] != "none")
    outputs = model(**inputs)
    assert outputs.last_hidden_state.shape == (2, 7 + 5, 32) and outputs.visual_token_index is None
    changed = dict(inputs, visual_feats=inputs["visual_feats"].clone())
    changed["visual_feats"][1, -2:] = 5.0
    other = model(**changed)
    keep = torch.cat([inputs["attention_mask"][1], inputs["visual_attention_mask"][1]]).bool()
    assert max_diff(outputs.last_hidden_state[1][keep], other.last_hidden_state[1][keep]) < 1e-5
    assert max_diff(outputs.pooler_output, other.pooler_output) < 1e-5


def test_uniter_box_features_from_corners_or_given():
    model = tiny_model(**REGIONS)
    inputs = region_inputs()
    boxes = inputs["visual_pos"]
    width, height = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    seven = torch.cat([boxes, width[..., None], height[..., None], (width * height)[..., None]], dim=-1)
    assert max_diff(model(**inputs).last_hidden_state, model(**dict(inputs, visual_pos=seven)).last_hidden_state) < 1e-6


def test_inputs_embeds_equal_input_ids():
    model = tiny_model()
    inputs = patch_inputs()
    inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    from_ids = model(**inputs)
    from_embeds = model(**{**inputs, "input_ids": None}, inputs_embeds=embeds)
    assert max_diff(from_ids.last_hidden_state, from_embeds.last_hidden_state) < 1e-6


def test_fresh_weights_are_initialised():
    torch.manual_seed(0)
    model = VLPUnifiedForPreTraining(tiny_config())
    embeddings = model.vlp.embeddings.visual_embeddings
    assert 0.005 < embeddings.mask_token.std() < 0.05
    assert embeddings.class_embedding.abs().sum() > 0
    assert torch.equal(model.vlp.final_layer_norm.weight, torch.ones(32))
    assert model.mlm_head.decoder.bias.abs().sum() == 0
    assert model.mlm_head.decoder.weight is model.vlp.get_input_embeddings().weight


# --------------------------------------------------------------------------------------------------------------
# Pretraining losses
# --------------------------------------------------------------------------------------------------------------


def reference_patch_target(pixel_values, image, patch, width_patches):
    """One patch's pixels, (row, column, channel) order, normalised by its own mean and unbiased variance."""
    row, col = divmod(patch, width_patches)
    pixels = pixel_values[image, :, row * PATCH : (row + 1) * PATCH, col * PATCH : (col + 1) * PATCH]
    pixels = pixels.permute(1, 2, 0).flatten()
    return (pixels - pixels.mean()) / (pixels.var() + 1e-6).sqrt()


def test_pretraining_losses_on_patches():
    model = tiny_model(VLPUnifiedForPreTraining, itm_loss_weight=0.5, mlm_loss_weight=2.0, mim_loss_weight=3.0)
    inputs = patch_inputs()
    mlm_labels = torch.full((2, 7), -100)
    mlm_labels[0, 1], mlm_labels[1, 2], mlm_labels[1, 4] = 11, 12, 13
    itm_labels = torch.tensor([0, 1])
    mim_mask = torch.zeros(2, 30, dtype=torch.bool)
    mim_mask[0, [0, 5, 29]] = True
    mim_mask[1, [1, 6, 20, 29]] = True  # 20 and 29 are padding in image 1
    outputs = model(**inputs, mlm_labels=mlm_labels, itm_labels=itm_labels, mim_mask=mim_mask)

    assert torch.allclose(outputs.loss_itm, F.cross_entropy(outputs.itm_logits, itm_labels))
    # Row 0 is a mismatched pair: its masked tokens are not an MLM example.
    logits = outputs.mlm_logits[1]
    expected_mlm = F.cross_entropy(logits[[2, 4]], torch.tensor([12, 13]))
    assert torch.allclose(outputs.loss_mlm, expected_mlm)

    predictions = outputs.mim_predictions  # one row per visual token, class token first; here token j+1 = patch j
    errors = [
        (predictions[image, patch + 1] - reference_patch_target(inputs["pixel_values"], image, patch, 6)).pow(2).mean()
        for image, patch in [(0, 0), (0, 5), (0, 29), (1, 1), (1, 6)]
    ]
    assert torch.allclose(outputs.loss_mim, torch.stack(errors).mean(), atol=1e-6)
    expected = 0.5 * outputs.loss_itm + 2.0 * outputs.loss_mlm + 3.0 * outputs.loss_mim
    assert torch.allclose(outputs.loss, expected)
    assert outputs.loss_mim_regression is None and outputs.loss_mim_classification is None


def test_losses_only_for_what_is_given():
    model = tiny_model(VLPUnifiedForPreTraining)
    outputs = model(**patch_inputs())
    assert outputs.loss is None and outputs.loss_itm is None and outputs.loss_mlm is None and outputs.loss_mim is None
    assert outputs.mlm_logits.shape == (2, 7, 99) and outputs.itm_logits.shape == (2, 2)
    outputs = model(**patch_inputs(), itm_labels=torch.tensor([1, 1]))
    assert torch.allclose(outputs.loss, outputs.loss_itm)
    # Nothing to predict (every label ignored, or no masked patch) is a zero loss, not NaN.
    nothing = dict(mlm_labels=torch.full((2, 7), -100), mim_mask=torch.zeros(2, 30, dtype=torch.bool))
    outputs = model(**patch_inputs(), **nothing)
    assert outputs.loss_mlm == 0 and outputs.loss_mim == 0


def test_pretraining_losses_on_regions():
    model = tiny_model(VLPUnifiedForPreTraining, **REGIONS)
    inputs = region_inputs()
    mim_mask = torch.zeros(2, 5, dtype=torch.bool)
    mim_mask[0, [0, 3]] = True
    mim_mask[1, [1, 4]] = True  # region 4 of image 1 is padding
    scores = torch.softmax(torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(0)), dim=-1)
    outputs = model(**inputs, mim_mask=mim_mask, region_class_scores=scores)
    selected = [(0, 0), (0, 3), (1, 1)]
    regression = torch.stack(
        [(outputs.mim_predictions[i, j] - inputs["visual_feats"][i, j]).pow(2).mean() for i, j in selected]
    ).mean()
    log_probs = outputs.mim_class_logits.log_softmax(-1)
    kl = torch.stack([(scores[i, j] * (scores[i, j].log() - log_probs[i, j])).sum() for i, j in selected]).mean()
    assert torch.allclose(outputs.loss_mim_regression, regression, atol=1e-6)
    assert torch.allclose(outputs.loss_mim_classification, kl, atol=1e-6)
    assert torch.allclose(outputs.loss_mim, regression + kl, atol=1e-6)

    region_labels = torch.tensor([[2, 0, 0, -100, 0], [0, 5, 0, 0, 1]])
    outputs = model(**inputs, mim_mask=mim_mask, region_labels=region_labels)
    logits = outputs.mim_class_logits
    expected = F.cross_entropy(torch.stack([logits[0, 0], logits[1, 1]]), torch.tensor([2, 5]))  # region 3: -100
    assert torch.allclose(outputs.loss_mim_classification, expected, atol=1e-6)


@pytest.mark.parametrize("variant", [{}, REGIONS])
def test_every_parameter_is_trained(variant):
    model = tiny_model(VLPUnifiedForPreTraining, **variant)
    model.train()
    if variant:
        inputs = region_inputs()
        mim_mask = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 0, 0, 0]]).bool()
        extra = dict(mim_mask=mim_mask, region_labels=torch.ones(2, 5).long())
    else:
        inputs = patch_inputs()
        extra = dict(mim_mask=torch.rand(2, 30, generator=torch.Generator().manual_seed(0)) < 0.5)
    mlm_labels = torch.where(inputs["attention_mask"].bool(), inputs["input_ids"], -100)
    model(**inputs, **extra, mlm_labels=mlm_labels, itm_labels=torch.tensor([1, 1])).loss.backward()
    untrained = [
        name for name, parameter in model.named_parameters() if parameter.grad is None or not parameter.grad.any()
    ]
    assert untrained == []


# --------------------------------------------------------------------------------------------------------------
# Task heads
# --------------------------------------------------------------------------------------------------------------


def test_question_answering_heads_and_losses():
    labels = torch.tensor([[0.0, 1.0, 0.3, 0.0, 0.0], [0.6, 0.0, 0.0, 0.0, 1.0]])
    vilt_like = tiny_model(VLPUnifiedForQuestionAnswering)
    inputs = patch_inputs()
    outputs = vilt_like(**inputs, labels=labels)
    pooled = vilt_like.vlp(**inputs).pooler_output
    head = vilt_like.classifier
    normalized = F.layer_norm(head.dense(pooled), (64,), head.layer_norm.weight, head.layer_norm.bias, eps=1e-5)
    expected = head.decoder(F.gelu(normalized))
    assert max_diff(outputs.logits, expected) < 1e-6
    assert torch.allclose(outputs.loss, F.binary_cross_entropy_with_logits(outputs.logits, labels) * 5)

    visualbert_like = tiny_model(VLPUnifiedForQuestionAnswering, **VISUALBERT)
    inputs = region_inputs(boxes=False)
    outputs = visualbert_like(**inputs, labels=labels)
    states = visualbert_like.vlp(**inputs).last_hidden_state
    # The token before [SEP]: positions 5 and 3 of the two captions (lengths 7 and 5).
    expected = visualbert_like.classifier.decoder(torch.stack([states[0, 5], states[1, 3]]))
    assert max_diff(outputs.logits, expected) < 1e-6
    expected_loss = F.kl_div(outputs.logits.log_softmax(-1), labels, reduction="batchmean")
    assert torch.allclose(outputs.loss, expected_loss)


def test_retrieval_scores_are_itm_log_odds_and_load_from_pretraining(tmp_path):
    pretraining = tiny_model(VLPUnifiedForPreTraining)
    pretraining.save_pretrained(tmp_path)
    retrieval = VLPUnifiedForImageTextRetrieval.from_pretrained(tmp_path).eval()
    inputs = patch_inputs()
    itm_logits = pretraining(**inputs).itm_logits
    outputs = retrieval(**inputs, labels=torch.tensor([1, 0]))
    assert max_diff(outputs.itm_logits, itm_logits) < 1e-6
    assert max_diff(outputs.logits, itm_logits[:, 1] - itm_logits[:, 0]) < 1e-6
    assert torch.allclose(outputs.loss, F.cross_entropy(itm_logits, torch.tensor([1, 0])), atol=1e-6)


@pytest.mark.parametrize(
    "model_class, variant",
    [
        (VLPUnifiedModel, {}),
        (VLPUnifiedForPreTraining, {}),
        (VLPUnifiedForPreTraining, REGIONS),
        (VLPUnifiedForQuestionAnswering, VISUALBERT),
        (VLPUnifiedForImageTextRetrieval, {}),
    ],
)
def test_save_and_load(tmp_path, model_class, variant):
    model = tiny_model(model_class, **variant)
    model.save_pretrained(tmp_path)
    loaded = model_class.from_pretrained(tmp_path).eval()
    inputs = patch_inputs() if not variant else region_inputs(boxes=variant["box_embedding"] != "none")
    first, second = model(**inputs), loaded(**inputs)
    name = {VLPUnifiedModel: "last_hidden_state", VLPUnifiedForPreTraining: "mlm_logits"}.get(model_class, "logits")
    assert max_diff(first[name], second[name]) == 0
    if model_class is VLPUnifiedForPreTraining:
        assert loaded.mlm_head.decoder.weight is loaded.vlp.get_input_embeddings().weight


# --------------------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------------------


def _patches(**changes):
    return {**patch_inputs(), **changes}


def _regions(**changes):
    return {**region_inputs(), **changes}


BAD_INPUTS = [
    ("patches", dict(visual_feats=torch.rand(2, 5, 12)), "not both"),
    ("patches", dict(pixel_values=None), "No visual input"),
    ("regions", dict(visual_feats=None), "No visual input"),
    ("regions", dict(visual_feats=None, pixel_values=torch.rand(2, 3, 32, 32)), "not `pixel_values`"),
    ("patches", dict(pixel_values=None, pixel_mask=None, visual_feats=torch.rand(2, 5, 12)), "not `visual_feats`"),
    ("patches", dict(visual_attention_mask=torch.ones(2, 30)), "`visual_attention_mask` is for region inputs"),
    ("patches", dict(pixel_values=torch.rand(3, 3, 40, 48), pixel_mask=None), "one image per text"),
    ("patches", dict(pixel_values=torch.rand(2, 3, 40, 44), pixel_mask=None), "multiples of the patch size"),
    ("patches", dict(pixel_mask=torch.ones(2, 40, 40)), "`pixel_mask` must have shape"),
    ("patches", dict(input_ids=torch.ones(2, 17).long(), attention_mask=None), "max_position_embeddings"),
    ("patches", dict(attention_mask=torch.ones(2, 6)), "`attention_mask` must have the shape of the text"),
    ("patches", dict(mim_mask=torch.zeros(2, 16).bool()), "`mim_mask` must have shape"),
    ("patches", dict(mlm_labels=torch.zeros(2, 6).long()), "`mlm_labels` must have shape"),
    ("patches", dict(itm_labels=torch.zeros(3).long()), "`itm_labels` must have shape"),
    ("patches", dict(itm_labels=torch.tensor([0, 2])), "`itm_labels` must be 0"),
    ("patches", dict(region_labels=torch.zeros(2, 30).long()), "`region_labels` needs a region model"),
    ("regions", dict(visual_pos=torch.rand(2, 5, 3)), "`visual_pos` must have shape"),
    ("regions", dict(visual_pos=None), "`visual_pos` (batch_size, num_regions, 4 or 7) is required"),
    ("regions", dict(visual_pos=torch.rand(2, 5, 4) * 2), "normalised to [0, 1]"),
    ("regions", dict(visual_feats=torch.rand(2, 9, 12), visual_pos=torch.rand(2, 9, 4), visual_attention_mask=None), "max_regions"),
    ("regions", dict(visual_feats=torch.rand(2, 5, 10)), "`visual_feats` must have shape"),
    ("regions", dict(visual_feats=torch.rand(3, 5, 12)), "one image per text"),
    ("regions", dict(visual_attention_mask=torch.ones(2, 4)), "`visual_attention_mask` must have shape"),
    ("regions", dict(mim_mask=torch.zeros(2, 4).bool()), "number of regions"),
    ("regions", dict(region_labels=torch.zeros(2, 5).long()), "pass `mim_mask` too"),
    ("regions", dict(region_class_scores=torch.zeros(2, 5, 5), mim_mask=torch.zeros(2, 5).bool()), "`region_class_scores` must have shape"),
]  # fmt: skip


@pytest.mark.parametrize("kind, changes, message", BAD_INPUTS)
def test_bad_input_is_named(kind, changes, message):
    model = tiny_model(VLPUnifiedForPreTraining, **(REGIONS if kind == "regions" else {}))
    inputs = _patches(**changes) if kind == "patches" else _regions(**changes)
    with pytest.raises(ValueError, match=re.escape(message)):
        model(**inputs)


def test_more_bad_input():
    with pytest.raises(ValueError, match=re.escape("drop `visual_pos`")):
        tiny_model(**VISUALBERT)(**region_inputs())
    with pytest.raises(ValueError, match="more patches per side"):
        tiny_model(interpolate_pos_encoding=False)(**patch_inputs())
    with pytest.raises(ValueError, match=re.escape("`labels` must have shape")):
        tiny_model(VLPUnifiedForQuestionAnswering)(**patch_inputs(), labels=torch.zeros(2, 4))
    with pytest.raises(ValueError, match=re.escape("`labels` must have shape")):
        tiny_model(VLPUnifiedForImageTextRetrieval)(**patch_inputs(), labels=torch.zeros(3).long())
    pixel_mask = patch_inputs()["pixel_mask"]
    pixel_mask[1, :4] = 0  # the valid region of image 1 no longer starts at the top-left corner
    with pytest.raises(ValueError, match=re.escape("`pixel_mask` of image(s) [1] covers no whole patch")):
        tiny_model()(**{**patch_inputs(), "pixel_mask": pixel_mask})
