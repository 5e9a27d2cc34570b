"""The fusion-encoder family: shapes for both fusion types and both visual inputs, encode-once / fuse-many, attention
backends, save/load, gradient checkpointing, the pretraining losses, bad inputs and re-ranked retrieval. Tiny seeded
models; CPU."""

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from modeling_vlp.configuration_fusion import VLPFusionConfig
from modeling_vlp.evaluation.ranking import retrieval_metrics
from modeling_vlp.evaluation.rerank import rerank_retrieval
from modeling_vlp.losses import patchify
from modeling_vlp.modeling_fusion import (
    VLPFusionForPreTraining,
    VLPFusionForQuestionAnswering,
    VLPFusionModel,
)
from modeling_vlp.modeling_fusion_retrieval import VLPFusionForImageTextRetrieval
from modeling_vlp.presets import PRESETS

pytestmark = pytest.mark.usefixtures("one_thread")

BATCH, TEXT_LENGTH, NUM_REGIONS, FEAT_DIM = 3, 9, 5, 24
# fusion-tiny is merge fusion on patches; the others cover co-attention (both orders, shared or not, equal or
# different stream widths) and region inputs.
VARIANTS = {
    "merge-patches": {},
    "coattention-patches": dict(
        fusion_type="co_attention", co_attention_order="self_first", fusion_pre_norm=False, fused_pooling="pooler"
    ),
    "merge-regions": dict(visual_input="regions", image_embed_pooling="mean"),
    "lxmert-regions": dict(
        visual_input="regions", fusion_type="co_attention", co_attention_order="cross_first",
        share_cross_attention=True, fused_pooling="pooler", image_embed_pooling="mean", pretraining_answer_head=True,
        vision_config={"pre_norm": False, "final_norm": "none"},
    ),  # fmt: skip
    "vilbert-regions": dict(
        visual_input="regions", fusion_type="co_attention", co_attention_order="self_first", fused_pooling="pooler",
        vision_config={"hidden_size": 48, "intermediate_size": 48, "num_hidden_layers": 0},
    ),  # fmt: skip
}


def tiny_config(variant: str = "merge-patches", **overrides) -> VLPFusionConfig:
    config_class, fields = PRESETS["fusion-tiny"]
    fields = copy.deepcopy(fields)
    for key, value in {**copy.deepcopy(VARIANTS[variant]), **overrides}.items():
        if isinstance(value, dict) and isinstance(fields.get(key), dict):
            fields[key].update(value)
        else:
            fields[key] = value
    return config_class(**fields)


def tiny_model(variant="merge-patches", model_class=VLPFusionModel, attn="sdpa", seed=0, **overrides):
    torch.manual_seed(seed)
    config = tiny_config(variant, **overrides)
    config._attn_implementation = attn
    return model_class(config).eval()


def make_text(batch=BATCH, length=TEXT_LENGTH, seed=1):
    """Right-padded text: `[CLS] ... [SEP]` then padding, lengths differ."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.zeros(batch, length, dtype=torch.long)
    attention_mask = torch.zeros(batch, length, dtype=torch.long)
    for row in range(batch):
        real = length - 3 * (row % 3)
        input_ids[row, :real] = torch.randint(3, 99, (real,), generator=generator)
        input_ids[row, 0], input_ids[row, real - 1] = 1, 2
        attention_mask[row, :real] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def make_images(config, batch=BATCH, seed=2):
    generator = torch.Generator().manual_seed(seed)
    if config.visual_input == "patches":
        return {"pixel_values": torch.randn(batch, 3, 32, 32, generator=generator)}
    mask = torch.ones(batch, NUM_REGIONS, dtype=torch.long)
    mask[1::2, -2:] = 0  # every other image has two padded regions
    return {
        "visual_feats": torch.randn(batch, NUM_REGIONS, FEAT_DIM, generator=generator),
        "visual_pos": torch.rand(batch, NUM_REGIONS, 2, 2, generator=generator).sort(dim=2).values.flatten(2),  # x1<x2
        "visual_attention_mask": mask,
    }


def make_inputs(config, batch=BATCH):
    return {**make_text(batch), **make_images(config, batch)}


def select(inputs: dict, rows) -> dict:
    return {name: value[rows] for name, value in inputs.items()}


def num_image_tokens(config):
    return NUM_REGIONS if config.visual_input == "regions" else 17


# --------------------------------------------------------------------------------------------------------------
# Config and presets
# --------------------------------------------------------------------------------------------------------------


def test_presets_build_and_validate():
    expected = {
        "lxmert-base": ("regions", "co_attention", 9, 5, 5, None),
        "vilbert-base": ("regions", "co_attention", 6, 0, 6, None),
        "albef-base": ("patches", "merge", 6, 12, 6, 256),
        "meter-base": ("patches", "co_attention", 12, 12, 6, None),
        "fusion-small": ("patches", "merge", 2, 2, 2, 128),
        "fusion-tiny": ("patches", "merge", 2, 2, 2, 16),
    }
    assert {name for name, (cls, _) in PRESETS.items() if cls is VLPFusionConfig} == set(expected)
    for name, (visual_input, fusion_type, text_layers, vision_layers, fusion_layers, projection) in expected.items():
        config_class, fields = PRESETS[name]
        config = config_class(**copy.deepcopy(fields))
        assert (config.visual_input, config.fusion_type) == (visual_input, fusion_type), name
        assert config.projection_dim == projection, name
        assert config.text_config.num_hidden_layers == text_layers, name
        assert config.vision_config.num_hidden_layers == vision_layers, name
        assert config.num_fusion_layers == fusion_layers, name
    lxmert = PRESETS["lxmert-base"][0](**copy.deepcopy(PRESETS["lxmert-base"][1]))
    assert (lxmert.visual_feat_dim, lxmert.visual_pos_dim, lxmert.num_labels) == (2048, 4, 9500)
    assert (lxmert.num_object_labels, lxmert.num_attribute_labels, lxmert.share_cross_attention) == (1600, 400, True)
    vilbert = PRESETS["vilbert-base"][0](**copy.deepcopy(PRESETS["vilbert-base"][1]))
    assert (vilbert.vision_config.hidden_size, vilbert.visual_pos_dim) == (1024, 5)
    config_class, fields = PRESETS["fusion-small"]
    small = VLPFusionForPreTraining(config_class(**copy.deepcopy(fields)))
    assert 1e6 < small.num_parameters() < 4e6


def test_config_errors():
    with pytest.raises(Exception, match="fusion_type"):
        tiny_config(fusion_type="late")
    with pytest.raises(Exception, match="share_cross_attention"):
        tiny_config("vilbert-regions", share_cross_attention=True)  # 32 vs 48 wide
    with pytest.raises(Exception, match="final_norm"):
        tiny_config(vision_config={"final_norm": "pooled"})
    with pytest.raises(Exception, match="causal"):
        tiny_config(text_config={"causal": True})
    with pytest.raises(Exception, match="loss_weights"):
        tiny_config(loss_weights={"itc": 1.0, "lm": 2.0})
    weights = tiny_config(loss_weights={"itm": 2.0}).loss_weights
    assert weights == {"itc": 1.0, "itm": 2.0, "mlm": 1.0, "mim": 1.0, "vqa": 1.0}


# --------------------------------------------------------------------------------------------------------------
# Forward, encode once / fuse many, attention backends
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_forward_shapes(variant):
    model = tiny_model(variant, attn="eager")
    config = model.config
    inputs = make_inputs(config)
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True, output_attentions=True)
    tokens, text_width, image_width = num_image_tokens(config), 32, config.vision_config.hidden_size
    assert out.text_last_hidden_state.shape == (BATCH, TEXT_LENGTH, text_width)
    assert out.image_last_hidden_state.shape == (BATCH, tokens, image_width)
    assert out.pooler_output.shape == (BATCH, text_width)
    assert out.image_attention_mask.shape == (BATCH, tokens)
    assert out.text_embeds.shape == out.image_embeds.shape == (BATCH, 16)
    torch.testing.assert_close(out.text_embeds.norm(dim=-1), torch.ones(BATCH))
    torch.testing.assert_close(out.logit_scale, torch.tensor(1 / 0.07))
    torch.testing.assert_close(out.logits_per_image, out.logit_scale * out.image_embeds @ out.text_embeds.t())
    torch.testing.assert_close(out.logits_per_text, out.logits_per_image.t())
    fusion_layers, co_attention = 2, config.fusion_type == "co_attention"
    assert len(out.text_hidden_states) == 1 + 2 + fusion_layers
    image_layers = config.vision_config.num_hidden_layers
    assert len(out.image_hidden_states) == 1 + image_layers + (fusion_layers if co_attention else 0)
    assert out.image_hidden_states[-1].shape == (BATCH, tokens, image_width)
    assert len(out.cross_attentions) == fusion_layers
    for weights in out.cross_attentions:  # text -> image; no text token attends to a padded region
        assert weights.shape == (BATCH, 4, TEXT_LENGTH, tokens)
        assert (weights * (1 - out.image_attention_mask)[:, None, None, :]).abs().sum() == 0
    for weights in out.text_attentions:
        assert (weights * (1 - inputs["attention_mask"])[:, None, None, :]).abs().sum() == 0
    if not co_attention:  # merge fusion leaves the image stream as the image encoder made it
        image = model.encode_image(**make_images(config))
        torch.testing.assert_close(out.image_last_hidden_state, image.last_hidden_state)
    with torch.no_grad():
        plain = model(**inputs)
    assert plain.text_hidden_states is None and plain.cross_attentions is None and plain.loss is None
    assert isinstance(model(**inputs, return_dict=False), tuple)


@pytest.mark.parametrize("variant", ["merge-patches", "lxmert-regions", "vilbert-regions"])
def test_fuse_on_many_pairings_equals_forward_on_the_paired_batch(variant):
    model = tiny_model(variant)
    config = model.config
    text, images = make_text(), make_images(config)
    with torch.no_grad():
        text_states = model.encode_text(**text).last_hidden_state
        image = model.encode_image(**images)
        texts_index = torch.tensor([0, 1, 2, 0, 2, 1, 1])
        images_index = torch.tensor([0, 0, 0, 1, 1, 2, 1])
        fused = model.fuse(
            text_states[texts_index], text["attention_mask"][texts_index],
            image.last_hidden_state[images_index], image.attention_mask[images_index],
        )  # fmt: skip
        paired = model(**select(text, texts_index), **select(images, images_index))
        itc_text = model.project_text(text_states)
        itc_image = model.project_image(image.last_hidden_state, image.attention_mask)
        out = model(**text, **images)
    # The forward pass hands the unimodal states on, for objectives that fuse other pairings (hard negatives).
    torch.testing.assert_close(out.text_unimodal_state, text_states)
    torch.testing.assert_close(out.image_unimodal_state, image.last_hidden_state)
    assert torch.equal(out.text_attention_mask, text["attention_mask"])
    assert torch.equal(out.image_attention_mask, image.attention_mask)
    torch.testing.assert_close(fused.pooler_output, paired.pooler_output, atol=1e-5, rtol=0)
    torch.testing.assert_close(fused.text_last_hidden_state, paired.text_last_hidden_state, atol=1e-5, rtol=0)
    if config.fusion_type == "co_attention":
        torch.testing.assert_close(fused.image_last_hidden_state, paired.image_last_hidden_state, atol=1e-5, rtol=0)
    else:
        assert fused.image_last_hidden_state is None
    torch.testing.assert_close(itc_text[texts_index], paired.text_embeds, atol=1e-6, rtol=0)
    torch.testing.assert_close(itc_image[images_index], paired.image_embeds, atol=1e-6, rtol=0)
    torch.testing.assert_close(model.get_text_features(**text), itc_text)
    torch.testing.assert_close(model.get_image_features(**images), itc_image)
    # Different pairings really give different fused states (the image is not ignored).
    assert (fused.pooler_output[0] - fused.pooler_output[3]).abs().max() > 1e-4


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_eager_and_sdpa_agree_with_padding(variant):
    sdpa = tiny_model(variant, attn="sdpa")
    eager = tiny_model(variant, attn="eager")
    assert eager.config.text_config._attn_implementation == "eager"
    assert sdpa.config.vision_config._attn_implementation == "sdpa"
    inputs = make_inputs(sdpa.config)
    with torch.no_grad():
        a, b = sdpa(**inputs), eager(**inputs)
    for name in ("text_last_hidden_state", "image_last_hidden_state", "pooler_output", "text_embeds", "image_embeds"):
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=0, msg=name)


def test_padding_does_not_change_the_fused_output():
    model = tiny_model("lxmert-regions", attn="eager")
    config = model.config
    text, images = make_text(), make_images(config)
    real_text, real_regions = int(text["attention_mask"][1].sum()), int(images["visual_attention_mask"][1].sum())
    with torch.no_grad():
        padded = model(**select(text, [1]), **select(images, [1]))
        alone = model(
            input_ids=text["input_ids"][1:2, :real_text],
            visual_feats=images["visual_feats"][1:2, :real_regions],
            visual_pos=images["visual_pos"][1:2, :real_regions],
        )
    torch.testing.assert_close(padded.pooler_output, alone.pooler_output, atol=1e-5, rtol=0)
    torch.testing.assert_close(padded.image_embeds, alone.image_embeds, atol=1e-5, rtol=0)


def test_pixel_mask_masks_padded_patches():
    model = tiny_model("coattention-patches")
    images = make_images(model.config)
    pixel_mask = torch.ones(BATCH, 32, 32, dtype=torch.long)
    pixel_mask[0, :, 16:] = 0  # the right half of image 0 is padding
    with torch.no_grad():
        image = model.encode_image(pixel_values=images["pixel_values"], pixel_mask=pixel_mask)
        changed = images["pixel_values"].clone()
        changed[0, :, :, 16:] = 5.0
        image_changed = model.encode_image(pixel_values=changed, pixel_mask=pixel_mask)
    grid = image.attention_mask[0, 1:].view(4, 4)
    assert image.attention_mask[0, 0] == 1 and grid[:, :2].all() and not grid[:, 2:].any()
    assert image.attention_mask[1:].all()
    real = image.attention_mask[0].bool()
    torch.testing.assert_close(image.last_hidden_state[0, real], image_changed.last_hidden_state[0, real])


# --------------------------------------------------------------------------------------------------------------
# Save / load, gradient checkpointing
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["merge-patches", "lxmert-regions"])
def test_save_load_round_trip(tmp_path, variant):
    model = tiny_model(variant, VLPFusionForPreTraining)
    embeddings = model.vlp.text_embeddings.token_embedding.weight
    assert model.mlm_head.decoder.weight is embeddings  # tied
    inputs = make_inputs(model.config)
    model.save_pretrained(tmp_path)
    loaded = VLPFusionForPreTraining.from_pretrained(tmp_path).eval()
    def settings(config):  # the architecture, without where it was loaded from or its (loading) dtype
        fields = {k: v for k, v in config.to_dict().items() if k not in ("_name_or_path", "dtype")}
        for tower in ("text_config", "vision_config"):
            fields[tower] = {k: v for k, v in fields[tower].items() if k != "dtype"}
        return fields

    assert settings(loaded.config) == settings(model.config)
    assert loaded.mlm_head.decoder.weight is loaded.vlp.text_embeddings.token_embedding.weight
    with torch.no_grad():
        a, b = model(**inputs), loaded(**inputs)
        backbone = VLPFusionModel.from_pretrained(tmp_path).eval()(**inputs)
    for name in ("mlm_logits", "itm_logits", "mim_predictions"):
        torch.testing.assert_close(a[name], b[name], msg=name)
    for name in ("pooler_output", "image_embeds"):
        torch.testing.assert_close(a.fusion_output[name], b.fusion_output[name], msg=name)
    torch.testing.assert_close(a.fusion_output.pooler_output, backbone.pooler_output)


@pytest.mark.parametrize("variant", ["merge-patches", "lxmert-regions"])
def test_gradient_checkpointing_gives_the_same_gradients(variant):
    model = tiny_model(variant, VLPFusionForPreTraining).train()
    checkpointed = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        checkpointed.gradient_checkpointing_enable()
    layers = [m for m in checkpointed.modules() if type(m).__name__ == "VLPTransformerLayer"]
    assert len(layers) == 2 + 2 + 2 * (2 if model.config.fusion_type == "co_attention" else 1)
    assert all(layer.gradient_checkpointing for layer in layers)
    calls = []
    fusion_layer = checkpointed.vlp.fusion.layers[0]
    fusion_layer = getattr(fusion_layer, "text_layer", fusion_layer)
    hook = fusion_layer.mlp.register_forward_pre_hook(lambda *args: calls.append(1))
    inputs = make_inputs(model.config)
    labels = dict(mlm_labels=inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100),
                  itm_labels=torch.tensor([1, 0, 1]), return_loss=True)  # fmt: skip
    model(**inputs, **labels).loss.backward()
    checkpointed(**inputs, **labels).loss.backward()
    hook.remove()
    assert len(calls) == 2, "a checkpointed layer runs its forward again during backward"
    for (name, p), q in zip(model.named_parameters(), checkpointed.parameters()):
        if p.grad is None:
            assert q.grad is None, name
            continue
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=0, msg=name)
    if model.config.share_cross_attention:  # one module, gradients from both streams
        assert model.vlp.fusion.layers[0].cross_attn.q_proj.weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------------------------
# Pretraining losses
# --------------------------------------------------------------------------------------------------------------


def region_labels(config, seed=3):
    generator = torch.Generator().manual_seed(seed)
    mim_mask = torch.zeros(BATCH, NUM_REGIONS, dtype=torch.bool)
    mim_mask[:, 1] = mim_mask[0, 3] = True
    obj = torch.randint(0, config.num_object_labels, (BATCH, NUM_REGIONS), generator=generator)
    attr = torch.randint(0, config.num_attribute_labels, (BATCH, NUM_REGIONS), generator=generator)
    return mim_mask, obj, attr


def test_each_loss_only_with_its_labels():
    model = tiny_model("lxmert-regions", VLPFusionForPreTraining)
    config = model.config
    inputs = make_inputs(config)
    mim_mask, obj, attr = region_labels(config)
    mlm_labels = inputs["input_ids"].masked_fill(torch.rand(BATCH, TEXT_LENGTH) < 0.5, -100)
    mlm_labels[:, 0] = inputs["input_ids"][:, 0]
    labels = {
        "itc": dict(return_loss=True),
        "itm": dict(itm_labels=torch.tensor([1, 0, 1])),
        "mlm": dict(mlm_labels=mlm_labels),
        "mim": dict(mim_mask=mim_mask, obj_labels=obj, attr_labels=attr),
        "vqa": dict(answer_labels=torch.tensor([0, 4, 2])),
    }
    with torch.no_grad():
        none = model(**inputs)
        assert none.loss is None and all(getattr(none, f"loss_{name}") is None for name in labels)
        assert none.mlm_logits.shape == (BATCH, TEXT_LENGTH, 99) and none.itm_logits.shape == (BATCH, 2)
        assert none.obj_logits.shape == (BATCH, NUM_REGIONS, 11) and none.attr_logits.shape == (BATCH, NUM_REGIONS, 7)
        assert none.mim_predictions.shape == (BATCH, NUM_REGIONS, FEAT_DIM) and none.answer_logits.shape == (BATCH, 5)
        for name, kwargs in labels.items():
            out = model(**inputs, **kwargs)
            computed = {other for other in labels if getattr(out, f"loss_{other}") is not None}
            assert computed == {name}, name
            torch.testing.assert_close(out.loss, out[f"loss_{name}"])
        everything = {key: value for kwargs in labels.values() for key, value in kwargs.items()}
        out = model(**inputs, **everything)
        torch.testing.assert_close(out.loss, sum(out[f"loss_{name}"] for name in labels))
        weights = {"itc": 0.5, "itm": 2.0, "mlm": 3.0, "mim": 0.0, "vqa": 1.5}
        model.config.loss_weights = weights
        weighted = model(**inputs, **everything)
    torch.testing.assert_close(weighted.loss, sum(weights[name] * out[f"loss_{name}"] for name in labels))
    torch.testing.assert_close(out.loss_itm, F.cross_entropy(out.itm_logits, everything["itm_labels"]))
    torch.testing.assert_close(out.loss_vqa, F.cross_entropy(out.answer_logits, everything["answer_labels"]))
    torch.testing.assert_close(
        out.loss_itc, F.cross_entropy(out.fusion_output.logits_per_image, torch.arange(BATCH)) / 2
        + F.cross_entropy(out.fusion_output.logits_per_text, torch.arange(BATCH)) / 2,
    )  # fmt: skip


def test_mlm_ignores_rows_of_mismatched_pairs():
    model = tiny_model("merge-patches", VLPFusionForPreTraining)
    inputs = make_inputs(model.config)
    mlm_labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    itm_labels = torch.tensor([1, 0, 1])
    with torch.no_grad():
        out = model(**inputs, mlm_labels=mlm_labels, itm_labels=itm_labels)
        all_negative = model(**inputs, mlm_labels=mlm_labels, itm_labels=torch.zeros(BATCH, dtype=torch.long))
    kept = mlm_labels.clone()
    kept[1] = -100
    expected = F.cross_entropy(out.mlm_logits.flatten(0, 1), kept.flatten())
    torch.testing.assert_close(out.loss_mlm, expected)
    assert not torch.allclose(expected, F.cross_entropy(out.mlm_logits.flatten(0, 1), mlm_labels.flatten()))
    assert all_negative.loss_mlm == 0


def test_region_losses_lxmert_dict_and_separate_labels_agree():
    model = tiny_model("lxmert-regions", VLPFusionForPreTraining)
    config = model.config
    inputs = make_inputs(config)
    mim_mask, obj, attr = region_labels(config)
    weights = mim_mask.float()
    with torch.no_grad():
        separate = model(**inputs, mim_mask=mim_mask, obj_labels=obj, attr_labels=attr)
        # LXMERT's form: the data pipeline already zeroed the masked features; the targets are the originals.
        masked_feats = inputs["visual_feats"].masked_fill(mim_mask[..., None], 0.0)
        lxmert = model(
            **{**inputs, "visual_feats": masked_feats},
            obj_labels={"obj": (obj, weights), "attr": (attr, weights), "feat": (inputs["visual_feats"], weights)},
        )
        # Detector class distributions as soft targets: one-hot distributions give the hard-label loss.
        soft = model(
            **inputs, mim_mask=mim_mask, region_class_scores=F.one_hot(obj, config.num_object_labels).float(),
            attr_labels=attr,
        )  # fmt: skip
    torch.testing.assert_close(separate.loss_mim, lxmert.loss_mim)
    torch.testing.assert_close(separate.loss_mim, soft.loss_mim)
    # By hand: each term is (loss * weight).mean() * visual_loss_normalizer.
    n = config.visual_loss_normalizer

    def classes(logits, labels):
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view(labels.shape)

    feat = F.smooth_l1_loss(separate.mim_predictions, inputs["visual_feats"], reduction="none").mean(-1)
    terms = [classes(separate.obj_logits, obj), classes(separate.attr_logits, attr), feat]
    torch.testing.assert_close(separate.loss_mim, sum((term * weights).mean() * n for term in terms))
    # Masked regions really are hidden from the model: their features do not change the output.
    changed = inputs["visual_feats"].clone()
    changed[mim_mask] = 7.0
    with torch.no_grad():
        again = model(**{**inputs, "visual_feats": changed}, mim_mask=mim_mask)
    torch.testing.assert_close(again.fusion_output.pooler_output, separate.fusion_output.pooler_output)


def test_patch_regression_targets_and_mask_token():
    model = tiny_model("merge-patches", VLPFusionForPreTraining)
    pixel_values = make_images(model.config)["pixel_values"]
    # The targets' patch order is the patch embeddings' order: a conv is a linear map of the patchified pixels.
    conv = model.vlp.image_embeddings.patch_embedding
    as_linear = conv.weight.permute(0, 2, 3, 1).flatten(1)  # (D, p, p, C)
    expected = conv(pixel_values).flatten(2).transpose(1, 2)
    torch.testing.assert_close(patchify(pixel_values, 8) @ as_linear.t() + conv.bias, expected, atol=1e-5, rtol=0)

    mim_mask = torch.zeros(BATCH, 16, dtype=torch.bool)
    mim_mask[:, ::3] = True
    inputs = {**make_text(), "pixel_values": pixel_values}
    with torch.no_grad():
        out = model(**inputs, mim_mask=mim_mask)
        unmasked = model(**inputs, mim_mask=torch.zeros_like(mim_mask))
        plain = model(**inputs)
        changed = pixel_values.clone()
        changed[:, :, :8, :8] = 9.0  # patch 0, masked
        masked_change = model(**{**inputs, "pixel_values": changed}, mim_mask=mim_mask)
    torch.testing.assert_close(unmasked.fusion_output.pooler_output, plain.fusion_output.pooler_output)
    assert unmasked.loss_mim is not None and plain.loss_mim is None
    torch.testing.assert_close(masked_change.fusion_output.pooler_output, out.fusion_output.pooler_output)
    target = patchify(pixel_values, 8)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    per_patch = ((out.mim_predictions - target) ** 2).mean(-1)
    torch.testing.assert_close(out.loss_mim, per_patch[mim_mask].mean())


def test_question_answering_losses():
    model = tiny_model("lxmert-regions", VLPFusionForQuestionAnswering)
    inputs = make_inputs(model.config)
    scores = torch.zeros(BATCH, 5)
    scores[0, 1], scores[1, 3], scores[2, 0] = 1.0, 0.6, 0.3
    with torch.no_grad():
        soft = model(**inputs, labels=scores)
        hard = model(**inputs, labels=torch.tensor([1, 3, 0]))
    assert soft.logits.shape == (BATCH, 5)
    torch.testing.assert_close(soft.loss, F.binary_cross_entropy_with_logits(soft.logits, scores) * 5)
    torch.testing.assert_close(hard.loss, F.cross_entropy(hard.logits, torch.tensor([1, 3, 0])))
    with pytest.raises(ValueError, match="Answer labels"):
        model(**inputs, labels=torch.zeros(BATCH, 4))


def test_retrieval_model_scores_pairs_with_itm_log_odds():
    model = tiny_model("merge-patches", VLPFusionForImageTextRetrieval)
    inputs = make_inputs(model.config)
    with torch.no_grad():
        out = model(**inputs, itm_labels=torch.tensor([1, 0, 1]), return_loss=True)
        text = model.vlp.encode_text(**make_text()).last_hidden_state
        image = model.vlp.encode_image(**make_images(model.config))
        pair_logits = model.itm_logits_for_pairs(text, inputs["attention_mask"], image.last_hidden_state, None)
    torch.testing.assert_close(out.logits, out.itm_logits[:, 1] - out.itm_logits[:, 0])
    torch.testing.assert_close(pair_logits, out.itm_logits, atol=1e-5, rtol=0)
    assert out.fusion_output.logits_per_image.shape == (BATCH, BATCH) and out.loss.ndim == 0


# --------------------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    patches = tiny_model("merge-patches", VLPFusionForPreTraining)
    regions = tiny_model("merge-regions", VLPFusionForPreTraining)
    text, pixels, feats = make_text(), make_images(patches.config), make_images(regions.config)
    with pytest.raises(ValueError, match=r"`input_ids` has 3 texts but `pixel_values` has 2 images"):
        patches(**text, pixel_values=pixels["pixel_values"][:2])
    with pytest.raises(ValueError, match=r"`input_ids` has 3 texts but `visual_feats` has 2"):
        regions(**text, **select(feats, slice(0, 2)))
    with pytest.raises(ValueError, match="pairs text i with image i, but got 3 texts and 2 images"):
        patches.vlp.fuse(torch.zeros(3, 4, 32), None, torch.zeros(2, 17, 32), None)
    with pytest.raises(ValueError, match=r"visual_input='patches'.*not region features"):
        patches(**text, **feats)
    with pytest.raises(ValueError, match=r"visual_input='regions'.*not `pixel_values`"):
        regions(**text, **pixels)
    with pytest.raises(ValueError, match="`visual_pos` is required"):
        regions(**text, visual_feats=feats["visual_feats"])
    with pytest.raises(ValueError, match=r"`visual_feats` must have shape \(batch_size, num_regions, 24\)"):
        regions(**text, visual_feats=torch.zeros(3, 5, 10), visual_pos=feats["visual_pos"])
    with pytest.raises(ValueError, match=r"`visual_pos` must have shape \(3, 5, 4\)"):
        regions(**text, visual_feats=feats["visual_feats"], visual_pos=torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match=r"`mim_mask` must have shape \(3, 16\)"):
        patches(**text, **pixels, mim_mask=torch.zeros(3, 17, dtype=torch.bool))
    with pytest.raises(ValueError, match="need `mim_mask`"):
        regions(**text, **feats, obj_labels=torch.zeros(3, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="pretraining_answer_head"):
        regions(**text, **feats, answer_labels=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="`mlm_labels` must have the shape of `input_ids`"):
        patches(**text, **pixels, mlm_labels=torch.zeros(3, 4, dtype=torch.long))
    no_itc = tiny_model("merge-patches", projection_dim=None)
    with pytest.raises(ValueError, match="no ITC head"):
        no_itc(**text, **pixels, return_loss=True)
    assert no_itc(**text, **pixels).text_embeds is None


def test_rerank_argument_errors():
    model = tiny_model("merge-patches", VLPFusionForImageTextRetrieval)
    text, images = make_text(), make_images(model.config)
    with pytest.raises(ValueError, match=r"`k` \(4\) is larger than the number of candidate images \(3\)"):
        rerank_retrieval(model, images, text, k=4)
    with pytest.raises(ValueError, match=r"`k` \(4\) is larger than the number of candidate texts \(3\)"):
        rerank_retrieval(model, make_images(model.config, batch=5), text, k=4, image_ids=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="several captions share an image, pass `image_ids`"):
        rerank_retrieval(model, make_images(model.config, batch=2), text, k=1)
    with pytest.raises(ValueError, match=r"`image_ids` must index the 2 images"):
        rerank_retrieval(model, make_images(model.config, batch=2), text, k=1, image_ids=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"`image_ids` must hold one integer image index per text"):
        rerank_retrieval(model, images, text, k=1, image_ids=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="same batch size"):
        rerank_retrieval(model, images, {**text, "attention_mask": text["attention_mask"][:2]}, k=1)
    with pytest.raises(ValueError, match="unknown keys"):
        rerank_retrieval(model, {**images, "pixels": images["pixel_values"]}, text, k=1)


# --------------------------------------------------------------------------------------------------------------
# Re-ranked retrieval
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["merge-patches", "lxmert-regions"])
def test_rerank_equals_brute_force_itm_on_the_top_k(variant):
    num_images, num_texts, k = 5, 8, 3
    model = tiny_model(variant, VLPFusionForImageTextRetrieval)
    image_ids = torch.tensor([0, 0, 1, 2, 2, 3, 4, 4])  # several captions per image
    images, text = make_images(model.config, batch=num_images), make_text(batch=num_texts)
    ranking = rerank_retrieval(model, images, text, k=k, batch_size=4, image_ids=image_ids)  # more pairs than one batch
    # Brute force: the ITM head on every (image, text) pair, each through the full forward pass.
    pairs_image = torch.arange(num_images).repeat_interleave(num_texts)
    pairs_text = torch.arange(num_texts).repeat(num_images)
    with torch.no_grad():
        log_odds = model(**select(text, pairs_text), **select(images, pairs_image)).logits.view(num_images, num_texts)
        similarity = model.vlp.get_image_features(**images) @ model.vlp.get_text_features(**text).t()
    torch.testing.assert_close(ranking.similarity, similarity, atol=1e-6, rtol=0)
    assert torch.equal(ranking.topk_i2t, similarity.topk(k, dim=1).indices)
    assert torch.equal(ranking.topk_t2i, similarity.t().topk(k, dim=1).indices)
    expected = log_odds + similarity
    directions = (
        (ranking.scores_i2t, ranking.topk_i2t, expected),
        (ranking.scores_t2i, ranking.topk_t2i, expected.t()),
    )
    for scores, topk, full in directions:
        torch.testing.assert_close(scores.gather(1, topk), full.gather(1, topk), atol=1e-5, rtol=0)
        outside = torch.ones_like(scores, dtype=torch.bool).scatter(1, topk, False)
        assert scores[outside].max() < scores.gather(1, topk).min()  # re-scored candidates rank first
        assert torch.isfinite(scores).all()
    # Outside the top k the ITC order is kept.
    outside = torch.ones(num_images, num_texts, dtype=torch.bool).scatter(1, ranking.topk_i2t, False)
    shift = ranking.scores_i2t[outside] - similarity[outside]
    torch.testing.assert_close(shift, shift[:1].expand_as(shift))
    # Each pair is fused once even when it is in both directions' top k.
    union = torch.zeros(num_images, num_texts, dtype=torch.bool).scatter(1, ranking.topk_i2t, True)
    union |= torch.zeros(num_texts, num_images, dtype=torch.bool).scatter(1, ranking.topk_t2i, True).t()
    assert ranking.num_itm_pairs == int(union.sum()) < num_images * k + num_texts * k
    # Rank quality fields: the conventions of evaluation.retrieval_metrics.
    reranked = retrieval_metrics(ranking.scores_i2t, image_ids)
    reranked_t2i = retrieval_metrics(ranking.scores_t2i.t(), image_ids)
    both = retrieval_metrics(ranking.scores_i2t, image_ids, text_to_image_scores=ranking.scores_t2i)
    assert {k: v for k, v in both.items() if k.startswith("i2t_")} == {
        k: v for k, v in reranked.items() if k.startswith("i2t_")
    }
    assert {k: v for k, v in both.items() if k.startswith("t2i_")} == {
        k: v for k, v in reranked_t2i.items() if k.startswith("t2i_")
    }
    itc = retrieval_metrics(similarity, image_ids)
    for cutoff in (1, 5, 10):
        assert ranking.metrics[f"i2t_r@{cutoff}"] == pytest.approx(reranked[f"i2t_r@{cutoff}"])
        assert ranking.metrics[f"t2i_r@{cutoff}"] == pytest.approx(reranked_t2i[f"t2i_r@{cutoff}"])
        assert ranking.metrics[f"itc_i2t_r@{cutoff}"] == pytest.approx(itc[f"i2t_r@{cutoff}"])
        assert ranking.metrics[f"itc_t2i_r@{cutoff}"] == pytest.approx(itc[f"t2i_r@{cutoff}"])
    # The batch size only changes how the work is chunked.
    again = rerank_retrieval(model, images, text, k=k, batch_size=64, image_ids=image_ids)
    torch.testing.assert_close(again.scores_i2t, ranking.scores_i2t, atol=1e-5, rtol=0)


def test_rerank_with_a_pretraining_model_and_one_caption_per_image():
    model = tiny_model("merge-patches", VLPFusionForPreTraining)
    ranking = rerank_retrieval(model, make_images(model.config, batch=4), make_text(batch=4), k=2, batch_size=3)
    assert ranking.scores_i2t.shape == ranking.scores_t2i.shape == (4, 4)
    names = {f"{direction}_r@{cutoff}" for direction in ("i2t", "t2i") for cutoff in (1, 5, 10)}
    assert set(ranking.metrics) == names | {f"itc_{name}" for name in names}
    assert all(0 <= value <= 100 for value in ranking.metrics.values())
    assert math.isclose(ranking.metrics["i2t_r@5"], 100.0)  # 4 candidates: always within the top 5
