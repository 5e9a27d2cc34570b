"""The conversion scripts: transformers CLIP / SigLIP folders and open_clip state dicts -> VLPDualEncoderModel.

Every source is built here from a config with seeded random weights (nothing is downloaded): the full
`CLIPConfig()` (clip-vit-base-patch32's architecture) once, tiny configs for the rest. Tokenizers are built offline:
OpenAI's BPE from open_clip's bundled vocabulary, and a SentencePiece model trained here for SigLIP.
"""

import contextlib
import io
import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import open_clip
import pytest
import sentencepiece as spm
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image
from transformers import (
    AutoModel,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    SiglipConfig,
    SiglipImageProcessor,
    SiglipModel,
    SiglipProcessor,
    SiglipTokenizer,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

import modeling_vlp  # noqa: F401  (registers the Auto classes)
from modeling_vlp import VLPDualEncoderModel, get_preset_config
from modeling_vlp.conversion import common, convert_clip, convert_open_clip, convert_siglip
from modeling_vlp.processors import VLPProcessor


TOLERANCE = 1e-4
PIXEL_TOLERANCE = 2e-2
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAPTIONS = [
    "a photo of a cat",
    "A DOG running on the beach!!  ",
    "two   people, 3 bikes & a car's wheel",
    "naïve café: déjà vu 123",
    "hello <|endoftext|> world !",
    " ".join(["a very long caption that goes on"] * 20),  # longer than any context: truncated
]
TINY_TOWER = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)


def test_images() -> list[Image.Image]:
    """Random-ish RGB images of several sizes and aspect ratios (down- and up-scaled by the processors)."""
    # (500, 226) at 224 and (115, 100) at 48 leave a crop margin of 3 modulo 4, where rounding the offset down
    # (transformers) and half to even (torchvision, open_clip) land one pixel apart.
    sizes = ((320, 240), (200, 300), (256, 256), (98, 60), (500, 230), (500, 226), (115, 100))
    return common.parity_images(seed=123, sizes=sizes)


test_images.__test__ = False  # a helper, not a test


def run_main(main, argv) -> tuple[int, str]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = main(argv)
    return status, stdout.getvalue()


def max_diff(a, b) -> float:
    return (a.detach().double() - b.detach().double()).abs().max().item()


def assert_outputs_close(reference, converted, tolerance=TOLERANCE):
    for name in ("logits_per_image", "image_embeds", "text_embeds"):
        assert max_diff(reference[name], converted[name]) <= tolerance, name


@pytest.fixture(scope="module")
def bpe_tokenizer():
    return common.clip_bpe_tokenizer()


# --------------------------------------------------------------------------------------------------------------
# CLIP
# --------------------------------------------------------------------------------------------------------------


def convert_clip_source(folder, config: CLIPConfig, tokenizer, logit_scale: float, small_batch=None) -> SimpleNamespace:
    """Save a seeded CLIPModel + CLIPProcessor in `folder/source`, convert it in-process into `folder/converted`,
    and keep the source model's outputs on its own processor's inputs (`small_batch`: other images, captions)."""
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    with torch.no_grad():
        model.logit_scale.fill_(logit_scale)
    source, output = str(folder / "source"), str(folder / "converted")
    model.save_pretrained(source)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer)
    processor.save_pretrained(source)
    status, report = run_main(convert_clip.main, ["--source", source, "--output", output])
    images, captions = (test_images(), CAPTIONS) if small_batch is None else small_batch
    inputs = processor(images=images, text=captions, return_tensors="pt", padding="max_length", truncation=True)
    with torch.no_grad():
        outputs = model(**inputs)
    return SimpleNamespace(source=source, output=output, status=status, report=report, inputs=inputs, outputs=outputs)


@pytest.fixture(scope="module")
def clip_full(tmp_path_factory, bpe_tokenizer):
    # OpenAI's trained temperature, float32(log(100)): exactly at the preset's clamp, which must then stay.
    # A smaller check batch than the tiny models': a full-size forward pass costs seconds on a small CPU.
    small_batch = (test_images()[:2], CAPTIONS[1:4])
    return convert_clip_source(
        tmp_path_factory.mktemp("clip-full"), CLIPConfig(), bpe_tokenizer, math.log(100.0), small_batch
    )


@pytest.fixture(scope="module")
def clip_tiny(tmp_path_factory, bpe_tokenizer):
    config = CLIPConfig(
        text_config=dict(TINY_TOWER, vocab_size=49408, max_position_embeddings=77),
        vision_config=dict(TINY_TOWER, image_size=224, patch_size=32),
        projection_dim=16,
    )
    # A temperature above the preset's clamp (exp = 148): the converted config must not clamp it.
    return convert_clip_source(tmp_path_factory.mktemp("clip-tiny"), config, bpe_tokenizer, 5.0)


def test_clip_full_size_converts_with_parity(clip_full):
    assert clip_full.status == 0, clip_full.report
    assert "PASSED" in clip_full.report and "logits_per_image" in clip_full.report
    model = VLPDualEncoderModel.from_pretrained(clip_full.output).eval()
    assert model.config.logit_scale_max == 100.0
    assert model.config.vision_config.hidden_size == 768 and model.config.text_config.num_hidden_layers == 12
    with torch.no_grad():
        assert_outputs_close(clip_full.outputs, model(**clip_full.inputs))


def test_clip_tiny_reloads_with_auto_model(clip_tiny):
    assert clip_tiny.status == 0, clip_tiny.report
    auto_model = AutoModel.from_pretrained(clip_tiny.output).eval()
    assert isinstance(auto_model, VLPDualEncoderModel)
    assert auto_model.config.logit_scale_max is None  # exp(5) is above the preset's clamp of 100
    with torch.no_grad():
        assert_outputs_close(clip_tiny.outputs, auto_model(**clip_tiny.inputs))
        logits = auto_model(**clip_tiny.inputs).logits_per_image
    assert logits.abs().max() > 1.0  # the temperature really is in the logits, not a near-zero coincidence


def test_clip_processor_matches_source(clip_tiny, bpe_tokenizer):
    processor = VLPProcessor.from_pretrained(clip_tiny.output)
    for kwargs in (dict(padding="max_length", truncation=True), dict(padding=True, truncation=True)):
        ours = processor(text=CAPTIONS, return_tensors="pt", **kwargs)
        reference = bpe_tokenizer(CAPTIONS, return_tensors="pt", **kwargs)
        assert torch.equal(ours["input_ids"], reference["input_ids"])
        assert torch.equal(ours["attention_mask"], reference["attention_mask"])

    images = test_images()
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (len(images), 3, 224, 224)
    # The source folder's processor is transformers' default, torchvision-backed CLIPImageProcessor: ours resizes
    # the same way; the PIL backend resamples up to 2 levels of 255 differently.
    reference = CLIPImageProcessor()(images, return_tensors="pt")["pixel_values"]
    assert max_diff(pixels, reference) <= 1e-5
    pil_reference = CLIPImageProcessorPil()(images, return_tensors="pt")["pixel_values"]
    assert max_diff(pixels, pil_reference) <= 2.5 / 255 / min(CLIPImageProcessor().image_std)


@pytest.mark.slow  # runs a subprocess
def test_clip_command_line(clip_tiny, tmp_path):
    output = tmp_path / "cli"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run(
        [sys.executable, "-m", "modeling_vlp.conversion.convert_clip", "--source", clip_tiny.source,
         "--output", str(output)],
        capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASSED" in result.stdout and "logits_per_image" in result.stdout
    assert (output / "config.json").is_file() and (output / "model.safetensors").is_file()


def test_clip_folder_without_processor_gets_defaults(clip_tiny, tmp_path):
    source = tmp_path / "weights-only"
    model = CLIPModel.from_pretrained(clip_tiny.source)
    model.save_pretrained(source)
    status, report = run_main(convert_clip.main, ["--source", str(source), "--output", str(tmp_path / "out")])
    assert status == 0, report
    processor = VLPProcessor.from_pretrained(tmp_path / "out")
    assert processor.tokenizer("a photo of a cat")["input_ids"][0] == 49406
    assert processor.image_processor.crop_size == {"height": 224, "width": 224}


def test_clip_legacy_eos_token_id_pools_at_argmax(bpe_tokenizer):
    config = CLIPConfig(
        text_config=dict(TINY_TOWER, eos_token_id=2), vision_config=dict(TINY_TOWER, image_size=32, patch_size=16)
    )
    converted = convert_clip.convert_config(CLIPModel(config), bpe_tokenizer)
    assert converted.text_config.pooling == "argmax"


# --------------------------------------------------------------------------------------------------------------
# SigLIP
# --------------------------------------------------------------------------------------------------------------

SIGLIP_SENTENCES = [
    "a photo of a cat", "a dog running on the beach", "two people riding bikes next to a red car",
    "an empty room with three chairs", "a bowl of fruit on a wooden table", "the sky at night over the city",
]  # fmt: skip


def make_siglip_tokenizer(folder) -> SiglipTokenizer:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SIGLIP_SENTENCES * 4), model_writer=model, vocab_size=60, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, character_coverage=1.0, minloglevel=2,
    )  # fmt: skip
    path = folder / "spiece.model"
    path.write_bytes(model.getvalue())
    return SiglipTokenizer(vocab_file=str(path), model_max_length=16)


@pytest.fixture(scope="module")
def siglip_tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("siglip-tiny")
    tokenizer = make_siglip_tokenizer(folder)
    config = SiglipConfig(
        text_config=dict(TINY_TOWER, vocab_size=len(tokenizer), max_position_embeddings=16,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None, eos_token_id=tokenizer.eos_token_id),
        vision_config=dict(TINY_TOWER, image_size=224, patch_size=32),
    )  # fmt: skip
    torch.manual_seed(0)
    model = SiglipModel(config).eval()
    with torch.no_grad():  # transformers initialises both to 0; make them matter
        model.logit_scale.fill_(2.3)
        model.logit_bias.fill_(-3.0)
    source, output = str(folder / "source"), str(folder / "converted")
    model.save_pretrained(source)
    processor = SiglipProcessor(image_processor=SiglipImageProcessor(), tokenizer=tokenizer)
    processor.save_pretrained(source)
    status, report = run_main(convert_siglip.main, ["--source", source, "--output", output])
    inputs = processor(images=test_images(), text=CAPTIONS, return_tensors="pt", padding="max_length", truncation=True)
    with torch.no_grad():
        outputs = model(**inputs)
    return SimpleNamespace(
        source=source, output=output, status=status, report=report, inputs=inputs, outputs=outputs,
        model=model, tokenizer=tokenizer,
    )  # fmt: skip


def test_siglip_converts_with_parity_and_reloads(siglip_tiny):
    assert siglip_tiny.status == 0, siglip_tiny.report
    model = VLPDualEncoderModel.from_pretrained(siglip_tiny.output).eval()
    auto_model = AutoModel.from_pretrained(siglip_tiny.output).eval()
    config = model.config
    assert config.loss_type == "sigmoid" and config.vision_projection == "none"
    assert config.vision_config.pooling == "attention" and config.text_config.pooling == "last"
    assert not config.text_config.causal and not config.vision_config.class_token
    with torch.no_grad():
        assert_outputs_close(siglip_tiny.outputs, model(**siglip_tiny.inputs))
        assert_outputs_close(siglip_tiny.outputs, auto_model(**siglip_tiny.inputs))
    assert model.logit_bias.item() == pytest.approx(-3.0)
    # The bias is in the logits: without it they would be centred near 0, not near -3.
    assert siglip_tiny.outputs.logits_per_image.mean().item() < -1.0


def test_siglip_processor_matches_source(siglip_tiny):
    processor = VLPProcessor.from_pretrained(siglip_tiny.output)
    kwargs = dict(padding="max_length", truncation=True, max_length=16)
    ours = processor(text=CAPTIONS, return_tensors="pt", **kwargs)["input_ids"]
    assert torch.equal(ours, siglip_tiny.tokenizer(CAPTIONS, return_tensors="pt", **kwargs)["input_ids"])
    images = test_images()
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    reference = SiglipImageProcessor()(images, return_tensors="pt")["pixel_values"]  # the folder's (torchvision)
    assert pixels.shape == reference.shape == (len(images), 3, 224, 224)
    assert max_diff(pixels, reference) <= 1e-5
    assert max_diff(pixels, SiglipImageProcessorPil()(images, return_tensors="pt")["pixel_values"]) > 1e-3
    # The source's fixed-length padding is the saved default.
    assert torch.equal(processor(text=CAPTIONS, return_tensors="pt")["input_ids"], ours)
    assert SiglipImageProcessor().image_mean == tuple(processor.image_processor.image_mean)


def test_broken_conversion_fails_and_writes_nothing(siglip_tiny, tmp_path, monkeypatch):
    """The parity check can fail: swapping the pooling head's query and key weights is caught."""
    convert_state_dict = convert_siglip.convert_state_dict

    def swap_query_and_key(state_dict):
        state_dict = convert_state_dict(state_dict)
        prefix = "vision_model.head.attention."
        state_dict[prefix + "q_proj.weight"], state_dict[prefix + "k_proj.weight"] = (
            state_dict[prefix + "k_proj.weight"], state_dict[prefix + "q_proj.weight"],
        )  # fmt: skip
        return state_dict

    monkeypatch.setattr(convert_siglip, "convert_state_dict", swap_query_and_key)
    output = tmp_path / "broken"
    status, report = run_main(convert_siglip.main, ["--source", siglip_tiny.source, "--output", str(output)])
    assert status == 1 and "FAILED" in report
    assert not output.exists()


def test_strict_loading_names_missing_and_unexpected_weights():
    config = get_preset_config("dual-tiny")
    state_dict = VLPDualEncoderModel(config).state_dict()
    state_dict["text_model.extra.weight"] = torch.zeros(1)
    del state_dict["text_projection.weight"]
    with pytest.raises(ValueError, match=r"missing \(1\): \['text_projection.weight'\][\s\S]*text_model.extra"):
        common.load_converted(config, state_dict)
    state_dict = VLPDualEncoderModel(config).state_dict()
    state_dict["logit_scale"] = torch.zeros(1)
    with pytest.raises(ValueError, match="logit_scale: source \\(1,\\) vs ours \\(\\)"):
        common.load_converted(config, state_dict)


# --------------------------------------------------------------------------------------------------------------
# open_clip
# --------------------------------------------------------------------------------------------------------------

OPEN_CLIP_TINY = {
    # OpenAI-style: QuickGELU, class token, ln_post on all tokens, argmax pooling; short context (truncation).
    "vlp-test-tiny-vit": {
        "embed_dim": 16, "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 8, "patch_size": 8},
        "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
    },
    # The other switches: mean pooling with the final LayerNorm after it, no ln_pre, eos pooling, a sigmoid bias.
    "vlp-test-tiny-vit-avg": {
        "embed_dim": 16, "init_logit_bias": -4.0,
        "vision_cfg": {"image_size": 48, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16,
                       "pool_type": "avg", "final_ln_after_pool": True, "no_ln_pre": True},
        "text_cfg": {"context_length": 20, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
                     "pool_type": "eos", "eos_id": 49407},
    },
}  # fmt: skip


def open_clip_reference(model, name, images, texts):
    """What open_clip computes: its eval transform, its tokenizer, normalised features, scaled (+ bias)."""
    preprocess = image_transform_v2(PreprocessCfg(**open_clip.get_model_preprocess_cfg(model)), is_train=False)
    pixel_values = torch.stack([preprocess(image) for image in images])
    input_ids = open_clip.get_tokenizer(name)(texts)
    with torch.no_grad():
        image = model.encode_image(pixel_values, normalize=True)
        text = model.encode_text(input_ids, normalize=True)
        logits = model.logit_scale.exp() * image @ text.T
        if model.logit_bias is not None:
            logits = logits + model.logit_bias
    outputs = dict(logits_per_image=logits, image_embeds=image, text_embeds=text)
    return SimpleNamespace(pixel_values=pixel_values, input_ids=input_ids, outputs=outputs)


def convert_open_clip_source(folder, name, argv_model, suffix=".pt", small_batch=False) -> SimpleNamespace:
    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None).eval()
    checkpoint = str(folder / f"open_clip{suffix}")
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(model.state_dict(), checkpoint)
    else:
        torch.save(model.state_dict(), checkpoint)
    output = str(folder / "converted")
    status, report = run_main(convert_open_clip.main, [*argv_model, "--checkpoint", checkpoint, "--output", output])
    images, captions = (test_images()[:2], CAPTIONS[1:4]) if small_batch else (test_images(), CAPTIONS)
    reference = open_clip_reference(model, name, images, captions)
    return SimpleNamespace(
        name=name, model=model, output=output, status=status, report=report, reference=reference,
        images=images, captions=captions,
    )  # fmt: skip


@pytest.fixture(scope="module", params=sorted(OPEN_CLIP_TINY))
def open_clip_tiny(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    config_path = folder / f"{request.param}.json"
    config_path.write_text(json.dumps(OPEN_CLIP_TINY[request.param]))
    open_clip.add_model_config(str(config_path))  # to build the source here; the script registers it again
    suffix = ".safetensors" if request.param.endswith("avg") else ".pt"
    return convert_open_clip_source(folder, request.param, ["--model-config", str(config_path)], suffix)


def check_open_clip_conversion(converted):
    assert converted.status == 0, converted.report
    model = VLPDualEncoderModel.from_pretrained(converted.output).eval()
    processor = VLPProcessor.from_pretrained(converted.output)
    reference = converted.reference
    context_length = converted.model.context_length

    # Same inputs through both models.
    with torch.no_grad():
        outputs = model(pixel_values=reference.pixel_values, input_ids=reference.input_ids)
    assert_outputs_close(reference.outputs, outputs)

    # Our processor reproduces open_clip's tokenizer and transform, with the source's padding saved as its default...
    inputs = processor(images=converted.images, text=converted.captions, return_tensors="pt")
    assert torch.equal(inputs["input_ids"], reference.input_ids)
    assert torch.equal(inputs["input_ids"], open_clip.tokenize(converted.captions, context_length=context_length))
    assert max_diff(inputs["pixel_values"], reference.pixel_values) <= PIXEL_TOLERANCE
    # ...so that end to end, with the attention mask the processor adds, the logits agree too.
    with torch.no_grad():
        assert_outputs_close(reference.outputs, model(**inputs))


def test_open_clip_tiny_converts_with_parity(open_clip_tiny):
    check_open_clip_conversion(open_clip_tiny)
    config = VLPDualEncoderModel.config_class.from_pretrained(open_clip_tiny.output)
    if open_clip_tiny.name.endswith("avg"):
        assert (config.vision_config.pooling, config.vision_config.final_norm) == ("mean", "pooled")
        assert not config.vision_config.pre_layernorm and config.text_config.pooling == "eos"
        assert config.loss_type == "sigmoid" and config.vision_config.hidden_act == "gelu"
    else:
        assert (config.vision_config.pooling, config.vision_config.final_norm) == ("cls", "all")
        assert config.text_config.pooling == "argmax" and config.vision_config.hidden_act == "quick_gelu"
        assert config.text_config.pad_token_id == 0


@pytest.mark.skipif(
    not os.environ.get("VLP_SLOW_TESTS"),
    reason="150M-parameter open_clip ViT-B-32 (~30 s on 2 CPU cores; the tiny configs cover the same code); "
    "set VLP_SLOW_TESTS=1 to run it",
)
def test_open_clip_vit_b_32(tmp_path):
    converted = convert_open_clip_source(tmp_path, "ViT-B-32", ["--model-name", "ViT-B-32"], small_batch=True)
    check_open_clip_conversion(converted)
    config = VLPDualEncoderModel.config_class.from_pretrained(converted.output)
    assert config.vision_config.hidden_act == "gelu" and config.vision_config.final_norm == "all"
    assert config.text_config.pooling == "argmax" and config.projection_dim == 512


@pytest.mark.parametrize("name", ["RN50", "ViT-B-16-SigLIP", "coca_ViT-B-32"])
def test_open_clip_unsupported_models_are_refused_before_building(name):
    with pytest.raises(ValueError, match="only ViT CLIP models"):
        convert_open_clip.check_model_config(name)


def test_bpe_tokenizer_ids_equal_open_clip():
    tokenizer = common.clip_bpe_tokenizer(pad_token="!")
    ids = tokenizer(CAPTIONS, padding="max_length", truncation=True, max_length=77, return_tensors="pt")["input_ids"]
    assert torch.equal(ids, open_clip.tokenize(CAPTIONS))
    assert tokenizer.pad_token_id == 0 and tokenizer.bos_token_id == 49406 and tokenizer.eos_token_id == 49407


def test_parity_images_are_seeded():
    first, second = common.parity_images(seed=3), common.parity_images(seed=3)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, second))
    assert not np.array_equal(np.asarray(first[0]), np.asarray(common.parity_images(seed=4)[0]))
