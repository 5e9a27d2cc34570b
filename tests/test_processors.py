"""Tests for VLPImageProcessor, VLPTokenizer and VLPProcessor: parity with reference pipelines, every input form and
mode, every error, save/load (plain, Auto classes, Hub remote code). Offline, seeded, small images."""

import ast
import importlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoImageProcessor,
    AutoProcessor,
    AutoTokenizer,
    BertTokenizer,
    CLIPImageProcessor,
    PreTrainedConfig,
    SiglipImageProcessor,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from modeling_vlp.processors import VLPImageProcessor, VLPProcessor, VLPTokenizer
from modeling_vlp.processors.image_processing_vlp import convert_to_rgb


PROCESSORS_DIR = Path(__file__).resolve().parents[1] / "processors"
CAPTIONS = [
    "A photo of a cat sitting on a red sofa.",
    "A dog running on the beach at sunset",
    "Two people riding bikes in the city",
    "a red car parked near a tall tree",
    "The quick brown fox jumps over the lazy dog",
    "A bowl of fruit on a wooden table",
] * 5


def noise_image(height, width, seed=0):
    """Worst case for resampling differences: every pixel independent."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def smooth_image(height, width, seed=0):
    """Photo-like low-frequency content."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    channels = []
    for _ in range(3):
        fx, fy = rng.uniform(1, 4, 2)
        px, py = rng.uniform(0, 6, 2)
        channels.append(127.5 + 120 * np.sin(2 * np.pi * fx * x + px) * np.cos(2 * np.pi * fy * y + py))
    return Image.fromarray(np.stack(channels, -1).round().astype(np.uint8))


def pixels(processor, image, **kwargs):
    return np.asarray(processor(image, return_tensors="np", **kwargs)["pixel_values"][0])


def png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def tokenizer():
    return VLPTokenizer.train_from_iterator(CAPTIONS, vocab_size=80)


@pytest.fixture(scope="module")
def bert_tokenizer(tmp_path_factory):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "cat", "dog", "the", "##s"]
    path = tmp_path_factory.mktemp("bert") / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    return BertTokenizer(str(path))


class _ProcessorsTestConfig(PreTrainedConfig):
    model_type = "vlp-processors-test"


@pytest.fixture(scope="module")
def registered():
    """What modeling_vlp/__init__.py does for its real configs: make the Auto classes resolve our class names."""
    AutoTokenizer.register(_ProcessorsTestConfig, tokenizer_class=VLPTokenizer, exist_ok=True)
    AutoImageProcessor.register(
        _ProcessorsTestConfig,
        image_processor_classes={"pil": VLPImageProcessor, "torchvision": VLPImageProcessor},
        exist_ok=True,
    )
    AutoProcessor.register(_ProcessorsTestConfig, VLPProcessor, exist_ok=True)


@pytest.fixture
def remote_code():
    """Mark the three classes for the Hub's auto_map for one test, then restore them."""
    classes = {
        VLPImageProcessor: "AutoImageProcessor",
        VLPTokenizer: "AutoTokenizer",
        VLPProcessor: "AutoProcessor",
    }
    previous = {cls: cls.__dict__.get("_auto_class") for cls in classes}
    for cls, auto_class in classes.items():
        cls.register_for_auto_class(auto_class)
    yield
    for cls, value in previous.items():
        if value is None:
            cls._auto_class = None
            del cls._auto_class  # back to the inherited value
        else:
            cls._auto_class = value


# ----------------------------------------------------------------------------------------------------------------
# VLPImageProcessor: parity with reference pipelines


@pytest.mark.parametrize("height,width", [(300, 400), (97, 131), (640, 300), (231, 224), (224, 224)])
def test_matches_clip_image_processor_pil_backend(height, width):
    image = noise_image(height, width)
    expected = pixels(CLIPImageProcessorPil(), image)
    np.testing.assert_allclose(pixels(VLPImageProcessor(), image), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("height,width", [(300, 400), (97, 131), (640, 300), (480, 333)])
def test_matches_clip_image_processor_torchvision_backend(height, width):
    # transformers' default CLIPImageProcessor resamples a uint8 tensor with torchvision: the "torchvision" backend
    # reproduces it exactly; the PIL backend stays within 2 of 255 levels on photo-like images.
    image = noise_image(height, width)
    expected = pixels(CLIPImageProcessor(), image)
    ours = pixels(VLPImageProcessor(resize_backend="torchvision"), image)
    np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=0)
    smooth = smooth_image(height, width)
    ours, theirs = pixels(VLPImageProcessor(), smooth), pixels(CLIPImageProcessor(), smooth)
    assert np.abs(ours - theirs).max() <= 2 / 255 / min(VLPImageProcessor().image_std) + 1e-4


def siglip_like(reference, resize_backend="pil"):
    return VLPImageProcessor(
        resize_backend=resize_backend,
        size={"height": 224, "width": 224},
        resample=reference.resample,
        do_center_crop=False,
        image_mean=list(reference.image_mean),
        image_std=list(reference.image_std),
    )


@pytest.mark.parametrize("height,width", [(300, 400), (97, 131), (640, 300)])
def test_matches_siglip_image_processor(height, width):
    for reference in (SiglipImageProcessorPil(), SiglipImageProcessorPil(resample=Image.Resampling.BILINEAR)):
        image = noise_image(height, width)
        np.testing.assert_allclose(pixels(siglip_like(reference), image), pixels(reference, image), atol=1e-5, rtol=0)
    reference = SiglipImageProcessor()  # the torchvision backend
    image = noise_image(height, width)
    np.testing.assert_allclose(
        pixels(siglip_like(reference, "torchvision"), image), pixels(reference, image), atol=1e-5, rtol=0
    )


def test_siglip_layout_from_init_arguments():
    processor = VLPImageProcessor(
        size={"height": 224, "width": 224}, resample="bilinear", do_center_crop=False, image_mean=0.5, image_std=0.5
    )
    image = noise_image(120, 90)
    expected = pixels(SiglipImageProcessorPil(resample=Image.Resampling.BILINEAR), image)
    np.testing.assert_allclose(pixels(processor, image), expected, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def open_clip_transform():
    open_clip = pytest.importorskip("open_clip")
    return open_clip.image_transform(224, is_train=False)


@pytest.mark.parametrize("height,width", [(300, 400), (97, 131), (640, 300), (500, 500)])
def test_matches_open_clip_transform(open_clip_transform, height, width):
    image = noise_image(height, width)
    expected = open_clip_transform(image).numpy()
    np.testing.assert_allclose(pixels(VLPImageProcessor(), image), expected, atol=1e-5, rtol=0)


def test_crop_offset_follows_transformers_not_torchvision(open_clip_transform):
    # 231 - 224 = 7: transformers crops from (7 // 2) = 3, torchvision from round(3.5) = 4 (round half to even).
    image = noise_image(224, 231)
    ours, theirs = pixels(VLPImageProcessor(), image), open_clip_transform(image).numpy()
    np.testing.assert_allclose(ours, pixels(CLIPImageProcessorPil(), image), atol=1e-5, rtol=0)
    np.testing.assert_allclose(ours[:, :, 1:], theirs[:, :, :-1], atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------------------------
# VLPImageProcessor: inputs, modes, options


def test_every_input_form_gives_the_same_pixels(tmp_path):
    image = smooth_image(30, 40)
    array = np.asarray(image)
    path = tmp_path / "image.png"
    image.save(path)
    inputs = [
        image,
        array,
        array.astype(np.float32) / 255,
        array.astype(np.float64),
        np.ascontiguousarray(array.transpose(2, 0, 1)),
        torch.tensor(array).permute(2, 0, 1),
        torch.tensor(array).permute(2, 0, 1).float() / 255,
        png_bytes(image),
        bytearray(png_bytes(image)),
        str(path),
        path,
    ]
    processor = VLPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    expected = pixels(processor, image)
    for index, value in enumerate(inputs):
        np.testing.assert_allclose(pixels(processor, value), expected, atol=1e-6, rtol=0, err_msg=f"input {index}")


def test_batches_and_return_types():
    processor = VLPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    images = [noise_image(20, 30, seed) for seed in range(3)]
    as_pt = processor(images, return_tensors="pt")["pixel_values"]
    as_np = processor(images, return_tensors="np")["pixel_values"]
    as_list = processor(images)["pixel_values"]
    assert isinstance(as_pt, torch.Tensor) and as_pt.shape == (3, 3, 16, 16) and as_pt.dtype == torch.float32
    assert isinstance(as_np, np.ndarray) and as_np.shape == (3, 3, 16, 16)
    assert isinstance(as_list, list) and len(as_list) == 3 and as_list[0].shape == (3, 16, 16)
    np.testing.assert_array_equal(as_pt.numpy(), as_np)
    batched = torch.from_numpy(np.stack([np.asarray(image) for image in images])).permute(0, 3, 1, 2)
    np.testing.assert_allclose(processor(batched, return_tensors="np")["pixel_values"], as_np, atol=1e-6)
    assert processor.model_input_names == ["pixel_values"]


def test_grayscale_array_and_tensor_inputs():
    gray = np.random.default_rng(0).integers(0, 256, (20, 24), dtype=np.uint8)
    processor = VLPImageProcessor(do_resize=False, do_center_crop=False, do_normalize=False)
    out = pixels(processor, gray)
    assert out.shape == (3, 20, 24)
    np.testing.assert_allclose(out, np.repeat(gray[None] / 255, 3, 0), atol=1e-6)
    np.testing.assert_allclose(pixels(processor, torch.from_numpy(gray)), out, atol=1e-6)
    np.testing.assert_allclose(pixels(processor, gray[..., None]), out, atol=1e-6)
    np.testing.assert_allclose(pixels(processor, gray.astype(np.uint16) * 257), out, atol=1e-6)


def rgb_values(image):
    return np.asarray(convert_to_rgb(image)).reshape(-1, 3).tolist()


def test_mode_conversions_to_rgb():
    gray = Image.fromarray(np.array([[0, 100, 255]], dtype=np.uint8))
    assert gray.mode == "L" and rgb_values(gray) == [[0, 0, 0], [100, 100, 100], [255, 255, 255]]

    transparent_gray = Image.new("LA", (2, 1), (100, 255))
    transparent_gray.putpixel((1, 0), (100, 0))
    assert rgb_values(transparent_gray) == [[100, 100, 100], [255, 255, 255]]

    rgba = Image.new("RGBA", (3, 1), (255, 0, 0, 255))
    rgba.putpixel((1, 0), (255, 0, 0, 0))
    rgba.putpixel((2, 0), (255, 0, 0, 128))
    opaque, clear, half = rgb_values(rgba)
    assert opaque == [255, 0, 0] and clear == [255, 255, 255]
    assert half[0] == 255 and abs(half[1] - 127) <= 1 and half[1] == half[2]

    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0, 0, 0] * 254)
    palette.putpixel((1, 0), 1)
    assert rgb_values(palette) == [[255, 0, 0], [0, 0, 255]]
    palette.info["transparency"] = 0  # palette index 0 is transparent
    assert rgb_values(palette) == [[255, 255, 255], [0, 0, 255]]

    cmyk = Image.new("CMYK", (1, 1), (0, 255, 255, 0))
    assert rgb_values(cmyk) == [[255, 0, 0]]

    sixteen_bit = Image.fromarray(np.array([[0, 257 * 128, 65535]], dtype=np.uint16))
    assert sixteen_bit.mode.startswith("I;16")
    assert rgb_values(sixteen_bit) == [[0, 0, 0], [128, 128, 128], [255, 255, 255]]  # scaled, not clipped

    wide_int = Image.fromarray(np.array([[0, 257 * 64, 65535]], dtype=np.int32))
    assert wide_int.mode == "I" and rgb_values(wide_int) == [[0, 0, 0], [64, 64, 64], [255, 255, 255]]
    eight_bit_int = gray.convert("I")
    assert rgb_values(eight_bit_int) == rgb_values(gray)

    binary = Image.new("1", (2, 1))
    binary.putpixel((1, 0), 1)
    assert rgb_values(binary) == [[0, 0, 0], [255, 255, 255]]

    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert floats.mode == "F" and rgb_values(floats) == [[0, 0, 0], [128, 128, 128], [255, 255, 255]]

    rgb = Image.new("RGB", (1, 1), (1, 2, 3))
    assert convert_to_rgb(rgb) is rgb


def test_rgba_array_is_composited_on_white():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)  # fully transparent black
    processor = VLPImageProcessor(do_resize=False, do_center_crop=False, do_normalize=False)
    np.testing.assert_allclose(pixels(processor, rgba), np.ones((3, 4, 4)), atol=1e-6)


def test_sixteen_bit_image_is_not_clipped():
    image = Image.fromarray(np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    processor = VLPImageProcessor(do_resize=False, do_center_crop=False, do_normalize=False)
    out = pixels(processor, image)
    assert out.max() == pytest.approx(63000 / 257 / 255, abs=1 / 255)
    assert len(np.unique(out)) > 50  # clipping to 255 would collapse almost every value


def test_options_and_call_overrides():
    image = noise_image(50, 80)
    processor = VLPImageProcessor(size={"shortest_edge": 20}, crop_size={"height": 12, "width": 16})
    assert pixels(processor, image).shape == (3, 12, 16)
    assert pixels(processor, image, do_center_crop=False).shape == (3, 20, 32)
    assert pixels(processor, image, size={"height": 10, "width": 7}, do_center_crop=False).shape == (3, 10, 7)
    assert pixels(processor, image, crop_size=100).shape == (3, 100, 100)  # smaller images are zero-padded
    raw = pixels(processor, image, do_resize=False, do_center_crop=False, do_rescale=False, do_normalize=False)
    np.testing.assert_array_equal(raw, np.asarray(image).transpose(2, 0, 1))
    scaled = pixels(processor, image, do_resize=False, do_center_crop=False, do_normalize=False)
    np.testing.assert_allclose(scaled, raw / 255, atol=1e-6)
    assert VLPImageProcessor(size=224, crop_size=224).size == {"shortest_edge": 224}
    assert VLPImageProcessor(size=224, crop_size=224).crop_size == {"height": 224, "width": 224}


def test_save_and_load_round_trip(tmp_path):
    processor = VLPImageProcessor(
        size={"height": 48, "width": 40}, resample="bilinear", do_center_crop=False, image_mean=0.5, image_std=0.25
    )
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "VLPImageProcessor" and saved["resample"] == 2
    loaded = VLPImageProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict()
    image = noise_image(30, 60)
    np.testing.assert_array_equal(pixels(loaded, image), pixels(processor, image))


def test_loads_a_clip_image_processor_config():
    processor = VLPImageProcessor.from_dict(CLIPImageProcessorPil().to_dict())
    image = noise_image(70, 90)
    np.testing.assert_allclose(pixels(processor, image), pixels(CLIPImageProcessorPil(), image), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------------------------
# VLPImageProcessor: errors name `images`, the index and what was expected


def image_error(images, error=ValueError, **kwargs):
    with pytest.raises(error) as info:
        VLPImageProcessor()(images, return_tensors="np", **kwargs)
    return str(info.value)


def test_error_not_an_image():
    message = image_error([noise_image(8, 8), 3], TypeError)
    assert "images[1]" in message and "int" in message and "PIL.Image.Image" in message
    assert "images[0]" in image_error({"pixels": 1}, TypeError)
    assert "images[2]" in image_error([noise_image(8, 8), noise_image(8, 8), [noise_image(8, 8)]], TypeError)


def test_error_undecodable_bytes_and_files(tmp_path):
    message = image_error([noise_image(8, 8), b"definitely not an image"])
    assert "images[1]" in message and "could not be decoded" in message
    truncated = png_bytes(noise_image(32, 32))[:60]
    assert "images[0]" in image_error(truncated) and "could not be decoded" in image_error(truncated)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff garbage")
    message = image_error([str(corrupt)])
    assert "images[0]" in message and "corrupt.jpg" in message and "could not be decoded" in message
    message = image_error([noise_image(8, 8), tmp_path / "missing.png"])
    assert "images[1]" in message and "not an existing file" in message


def test_error_zero_size():
    message = image_error([noise_image(8, 8), Image.new("RGB", (0, 5))])
    assert "images[1]" in message and "width=0" in message
    message = image_error(np.zeros((4, 0, 3), dtype=np.uint8))
    assert "images[0]" in message and "width=0" in message
    assert "height=0" in image_error(torch.zeros(3, 0, 4))


def test_error_wrong_array_shape():
    message = image_error([noise_image(8, 8), np.zeros((8, 8, 5), dtype=np.uint8)])
    assert "images[1]" in message and "(8, 8, 5)" in message and "(H, W, C)" in message
    message = image_error(np.zeros(10, dtype=np.uint8))
    assert "images[0]" in message and "(10,)" in message
    message = image_error([np.zeros((2, 8, 8, 3), dtype=np.uint8)])
    assert "images[0]" in message and "(2, 8, 8, 3)" in message
    message = image_error(torch.zeros(7, 8, 9))
    assert "images[0]" in message and "(C, H, W)" in message


def test_error_bad_values():
    message = image_error([np.full((4, 4, 3), -0.5, dtype=np.float32)])
    assert "images[0]" in message and "[0, 1] or [0, 255]" in message
    assert "images[0]" in image_error(np.full((4, 4), 300, dtype=np.int64))
    assert "NaN" in image_error(np.full((4, 4), np.nan, dtype=np.float32))
    assert "images[0]" in image_error(Image.fromarray(np.full((2, 2), -3.0, dtype=np.float32)))


def test_error_batch_and_arguments():
    assert "empty list" in image_error([])
    assert "images is None" in image_error(None)
    message = image_error([noise_image(10, 20), noise_image(20, 20)], do_center_crop=False)
    assert "cannot be stacked" in message
    assert "do_resise" in image_error(noise_image(8, 8), TypeError, do_resise=False)
    with pytest.raises(ValueError, match="size"):
        VLPImageProcessor(size={"longest_edge": 3})
    with pytest.raises(ValueError, match="crop_size"):
        VLPImageProcessor(crop_size={"shortest_edge": 3})
    with pytest.raises(ValueError, match="resample"):
        VLPImageProcessor(resample="fancy")
    with pytest.raises(ValueError, match="image_mean"):
        VLPImageProcessor(image_mean=[0.5, 0.5])
    with pytest.raises(ValueError, match="RGB"):
        VLPImageProcessor(do_convert_rgb=False)(Image.new("L", (4, 4)))


# ----------------------------------------------------------------------------------------------------------------
# VLPTokenizer


def test_tokenizer_special_tokens_and_layout(tokenizer):
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<pad>", 0)
    assert (tokenizer.unk_token, tokenizer.unk_token_id) == ("<unk>", 1)
    assert (tokenizer.bos_token, tokenizer.bos_token_id) == ("<s>", 2)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("</s>", 3)
    assert (tokenizer.mask_token, tokenizer.mask_token_id) == ("<mask>", 4)
    assert len(tokenizer) == tokenizer.vocab_size <= 80
    assert tokenizer.model_max_length == 64
    ids = tokenizer("a photo of a cat")["input_ids"]
    assert ids[0] == 2 and ids[-1] == 3 and 0 not in ids[1:-1]
    assert tokenizer("A PHOTO of a Cat")["input_ids"] == ids  # lowercased by the SentencePiece normalizer
    masked = tokenizer("a photo of a <mask>")["input_ids"]
    assert masked.count(tokenizer.mask_token_id) == 1
    assert tokenizer("a cat", add_special_tokens=False)["input_ids"] == tokenizer("a cat")["input_ids"][1:-1]


def test_tokenizer_padding_truncation_and_tensors(tokenizer):
    batch = tokenizer(["a cat", "a dog running on the beach at sunset"], padding=True, return_tensors="pt")
    assert set(batch) == {"input_ids", "attention_mask"}
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    assert input_ids.shape == attention_mask.shape and input_ids.dtype == torch.int64
    short_length = int(attention_mask[0].sum())
    assert (input_ids[0, short_length:] == 0).all() and (attention_mask[0, short_length:] == 0).all()
    assert input_ids[0, short_length - 1] == tokenizer.eos_token_id
    fixed = tokenizer(["a cat"], padding="max_length", max_length=12, return_tensors="np")
    assert fixed["input_ids"].shape == (1, 12)
    truncated = tokenizer(["a dog running on the beach " * 20], truncation=True, max_length=10)["input_ids"][0]
    assert len(truncated) == 10 and truncated[0] == 2 and truncated[-1] == 3  # EOS survives truncation
    assert len(tokenizer("a cat " * 100, truncation=True)["input_ids"]) == 64


def test_tokenizer_decode(tokenizer):
    captions = ["a dog running on the beach", "two people riding bikes"]
    ids = tokenizer(captions, padding=True)["input_ids"]
    assert tokenizer.batch_decode(ids, skip_special_tokens=True) == captions
    assert tokenizer.decode(ids[0]).startswith("<s>")


def test_tokenizer_save_and_load(tokenizer, tmp_path, registered):
    tokenizer.save_pretrained(tmp_path)
    assert {"spiece.model", "tokenizer_config.json"} <= set(os.listdir(tmp_path))
    captions = ["A cat on a red sofa", "the quick brown fox, jumping!", "a <mask> on the beach"]
    expected = tokenizer(captions, padding=True)["input_ids"]
    loaded = VLPTokenizer.from_pretrained(tmp_path)
    assert loaded(captions, padding=True)["input_ids"] == expected
    assert loaded.model_max_length == 64 and loaded.mask_token_id == 4
    auto = AutoTokenizer.from_pretrained(tmp_path)
    assert type(auto) is VLPTokenizer and auto(captions, padding=True)["input_ids"] == expected
    loaded.save_pretrained(tmp_path / "again")  # a tokenizer loaded from a file saves too
    assert VLPTokenizer.from_pretrained(tmp_path / "again")(captions, padding=True)["input_ids"] == expected


def test_tokenizer_bpe_and_existing_model_file(tmp_path):
    bpe = VLPTokenizer.train_from_iterator(CAPTIONS, vocab_size=70, model_type="bpe", lowercase=False)
    assert bpe.mask_token_id == 4 and bpe("A cat")["input_ids"] != bpe("a cat")["input_ids"]
    path = tmp_path / "spiece.model"
    path.write_bytes(bpe.sp_model.serialized_model_proto())
    assert VLPTokenizer(vocab_file=str(path))("A cat")["input_ids"] == bpe("A cat")["input_ids"]


def test_tokenizer_training_errors():
    with pytest.raises(TypeError, match=r"texts\[1\] has type int"):
        VLPTokenizer.train_from_iterator(["a cat", 3, "a dog"], vocab_size=40)
    with pytest.raises(TypeError, match="not a single str|iterable"):
        VLPTokenizer.train_from_iterator("a cat", vocab_size=40)
    with pytest.raises(ValueError, match="no non-empty caption"):
        VLPTokenizer.train_from_iterator(["", "   "], vocab_size=40)
    with pytest.raises(ValueError, match="pad_id"):
        VLPTokenizer.train_from_iterator(CAPTIONS, vocab_size=40, pad_id=5)
    with pytest.raises(ValueError, match="model_type"):
        VLPTokenizer.train_from_iterator(CAPTIONS, vocab_size=40, model_type="word-piece")


# ----------------------------------------------------------------------------------------------------------------
# VLPProcessor


def test_processor_outputs(tokenizer, bert_tokenizer):
    processor = VLPProcessor(VLPImageProcessor(), tokenizer)
    images = [noise_image(40, 30, 0), noise_image(30, 50, 1)]
    captions = ["a cat", "a dog on the beach"]
    both = processor(images=images, text=captions, paired=True, padding=True, return_tensors="pt")
    assert set(both) == {"input_ids", "attention_mask", "pixel_values"}
    assert both["pixel_values"].shape == (2, 3, 224, 224) and both["input_ids"].shape[0] == 2
    assert both["input_ids"].shape == both["attention_mask"].shape
    assert set(processor(images=images[0], return_tensors="np")) == {"pixel_values"}
    assert set(processor(text="a cat")) == {"input_ids", "attention_mask"}
    assert processor(text="a cat")["input_ids"] == tokenizer("a cat")["input_ids"]
    # more captions than images is fine when not paired (e.g. zero-shot class prompts)
    unpaired = processor(images=images[0], text=["a cat", "a dog", "a car"], padding=True, return_tensors="np")
    assert unpaired["pixel_values"].shape[0] == 1 and unpaired["input_ids"].shape[0] == 3
    assert processor.model_input_names == ["pixel_values", "input_ids", "attention_mask"]

    bert = VLPProcessor(VLPImageProcessor(), bert_tokenizer)
    out = bert(images=images, text=["a photo of cats", "the dog"], padding=True, return_tensors="pt")
    assert set(out) == {"input_ids", "token_type_ids", "attention_mask", "pixel_values"}
    assert "token_type_ids" in bert.model_input_names


def test_processor_decode(tokenizer):
    processor = VLPProcessor(VLPImageProcessor(), tokenizer)
    ids = processor(text=["a red car", "the quick brown fox"], padding=True)["input_ids"]
    assert processor.batch_decode(ids, skip_special_tokens=True) == ["a red car", "the quick brown fox"]
    assert processor.decode(ids[0], skip_special_tokens=True) == "a red car"


def processor_error(error=ValueError, **kwargs):
    processor = VLPProcessor(VLPImageProcessor(), VLPTokenizer.train_from_iterator(CAPTIONS[:6], vocab_size=40))
    with pytest.raises(error) as info:
        processor(**kwargs)
    return str(info.value)


def test_processor_errors():
    image = noise_image(16, 16)
    assert "got neither" in processor_error()
    assert "text is empty" in processor_error(text="")
    assert "whitespace only" in processor_error(text=" \t")
    message = processor_error(text=["a cat", "  ", "a dog"])
    assert "text[1]" in message and "whitespace only" in message
    assert "text[0] is empty" in processor_error(text=[""], images=image)
    message = processor_error(TypeError, text=["a cat", None])
    assert "text[1]" in message and "NoneType" in message
    assert "text has type int" in processor_error(TypeError, text=5)
    assert "empty list" in processor_error(text=[])
    message = processor_error(images=[image, image, image], text=["a cat", "a dog"], paired=True)
    assert message == "images has 3 items but text has 2; paired inputs need one caption per image."
    batched = torch.zeros(3, 3, 8, 8, dtype=torch.uint8)
    assert "images has 3 items but text has 1" in processor_error(images=batched, text="a cat", paired=True)
    assert "text is None" in processor_error(images=[image], paired=True)
    assert "images[1]" in processor_error(TypeError, images=[image, 7], text="a cat")


def test_processor_save_and_load_with_vlp_tokenizer(tokenizer, tmp_path, registered):
    processor = VLPProcessor(VLPImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False), tokenizer)
    processor.save_pretrained(tmp_path)
    assert {"processor_config.json", "tokenizer_config.json", "spiece.model"} <= set(os.listdir(tmp_path))
    images, captions = [noise_image(20, 28)], ["a cat on a sofa"]
    expected = processor(images=images, text=captions, return_tensors="np")
    for loaded in (VLPProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)):
        assert type(loaded) is VLPProcessor and type(loaded.tokenizer) is VLPTokenizer
        assert loaded.image_processor.to_dict() == processor.image_processor.to_dict()
        out = loaded(images=images, text=captions, return_tensors="np")
        np.testing.assert_array_equal(out["input_ids"], expected["input_ids"])
        np.testing.assert_array_equal(out["pixel_values"], expected["pixel_values"])


def test_processor_save_and_load_with_bert_tokenizer(bert_tokenizer, tmp_path, registered):
    processor = VLPProcessor(VLPImageProcessor(), bert_tokenizer)
    processor.save_pretrained(tmp_path)
    loaded = VLPProcessor.from_pretrained(tmp_path)
    assert type(loaded.tokenizer).__name__ == type(bert_tokenizer).__name__
    captions = ["a photo of cats", "the dog"]
    assert loaded(text=captions, padding=True)["input_ids"] == processor(text=captions, padding=True)["input_ids"]


def test_processor_files_import_only_relatively():
    for name in ("image_processing_vlp.py", "tokenization_vlp.py", "processing_vlp.py"):
        tree = ast.parse((PROCESSORS_DIR / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                assert not (node.module or "").startswith(("modeling_vlp", "processors")), (name, node.module)
            if isinstance(node, ast.Import):
                assert not any(alias.name.startswith("modeling_vlp") for alias in node.names), name


def test_save_pretrained_writes_remote_code(tokenizer, tmp_path, remote_code):
    VLPProcessor(VLPImageProcessor(), tokenizer).save_pretrained(tmp_path)
    for name in ("image_processing_vlp.py", "tokenization_vlp.py", "processing_vlp.py"):
        assert (tmp_path / name).read_text() == (PROCESSORS_DIR / name).read_text()
    processor_config = json.loads((tmp_path / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_vlp.VLPProcessor"
    image_auto_map = processor_config["image_processor"]["auto_map"]
    assert image_auto_map["AutoImageProcessor"] == "image_processing_vlp.VLPImageProcessor"
    tokenizer_config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert tokenizer_config["auto_map"]["AutoTokenizer"] == ["tokenization_vlp.VLPTokenizer", None]


def test_saved_code_runs_without_modeling_vlp(tokenizer, tmp_path, remote_code, monkeypatch):
    # Import the three copied files as a standalone package while `modeling_vlp` cannot be imported.
    checkpoint = tmp_path / "checkpoint"
    original = VLPProcessor(VLPImageProcessor(), tokenizer)
    original.save_pretrained(checkpoint)
    package = tmp_path / "hub_code" / "vlp_saved_code"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for name in ("image_processing_vlp.py", "tokenization_vlp.py", "processing_vlp.py"):
        shutil.copy(checkpoint / name, package / name)
    monkeypatch.syspath_prepend(str(package.parent))
    monkeypatch.setitem(sys.modules, "modeling_vlp", None)  # any `import modeling_vlp...` now raises ImportError
    try:
        processing = importlib.import_module("vlp_saved_code.processing_vlp")
        image_processor = processing.VLPImageProcessor.from_pretrained(checkpoint)
        restored = processing.VLPProcessor(image_processor, processing.VLPTokenizer.from_pretrained(checkpoint))
        inputs = {"images": [noise_image(30, 20)], "text": ["a cat", "a red car"], "padding": True}
        expected, out = original(**inputs, return_tensors="np"), restored(**inputs, return_tensors="np")
        for name in ("input_ids", "attention_mask", "pixel_values"):
            np.testing.assert_array_equal(out[name], expected[name])
    finally:
        for name in [name for name in sys.modules if name.startswith("vlp_saved_code")]:
            del sys.modules[name]


@pytest.mark.slow  # runs a subprocess: a fresh Python (~10-20 s)
def test_auto_processor_trust_remote_code_without_modeling_vlp(tokenizer, tmp_path, remote_code):
    VLPProcessor(VLPImageProcessor(), tokenizer).save_pretrained(tmp_path / "checkpoint")
    script = f"""
import sys
sys.modules["modeling_vlp"] = None  # as on a machine where modeling_vlp is not installed
from transformers import AutoProcessor
processor = AutoProcessor.from_pretrained({str(tmp_path / "checkpoint")!r}, trust_remote_code=True)
assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
assert type(processor.tokenizer).__module__.startswith("transformers_modules"), type(processor.tokenizer).__module__
print(processor(text=["a cat"])["input_ids"][0])
"""
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == str(tokenizer("a cat")["input_ids"])


def test_processor_accepts_a_datasets_column():
    import datasets

    captions = datasets.Dataset.from_dict({"caption": ["a red circle", "a blue square"]})["caption"]
    processor = VLPProcessor(VLPImageProcessor(), VLPTokenizer.train_from_iterator(CAPTIONS, vocab_size=80))
    expected = processor(text=["a red circle", "a blue square"], padding=True, return_tensors="pt")["input_ids"]
    assert torch.equal(processor(text=captions, padding=True, return_tensors="pt")["input_ids"], expected)


# ----------------------------------------------------------------------------------------------------------------
# ViLT-style resizing and padding


def vilt_like(resize_backend="torchvision", shortest_edge=64):
    return VLPImageProcessor(
        size={"shortest_edge": shortest_edge, "longest_edge": int(1333 / 800 * shortest_edge)},
        size_divisor=32,
        do_pad=True,
        do_center_crop=False,
        resample=3,
        resize_backend=resize_backend,
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )


# portrait, landscape, tiny, larger than longest_edge, square, odd sizes
VILT_SIZES = [(300, 200), (100, 250), (10, 13), (640, 900), (64, 64), (97, 131), (1000, 700)]


def test_matches_vilt_image_processor():
    from transformers import ViltImageProcessor

    reference = ViltImageProcessor(size={"shortest_edge": 64})
    images = [noise_image(height, width, seed) for seed, (height, width) in enumerate(VILT_SIZES)]
    expected = reference(images, return_tensors="pt")
    ours = vilt_like()(images, return_tensors="pt")
    assert set(ours) == {"pixel_values", "pixel_mask"}
    assert ours["pixel_values"].shape == expected["pixel_values"].shape == (7, 3, 96, 96)
    assert ours["pixel_mask"].dtype == torch.int64
    assert torch.equal(ours["pixel_mask"], expected["pixel_mask"])
    assert (ours["pixel_values"] - expected["pixel_values"]).abs().max() <= 1e-5
    # each image alone: resized sizes (a multiple of 32, longer side within 106) and pixels
    for image in images:
        alone, reference_alone = vilt_like()(image, return_tensors="pt"), reference(image, return_tensors="pt")
        assert alone["pixel_values"].shape == reference_alone["pixel_values"].shape
        assert (alone["pixel_values"] - reference_alone["pixel_values"]).abs().max() <= 1e-5
        assert alone["pixel_mask"].all()


def test_vilt_layout_pil_backend_and_padding():
    images = [smooth_image(height, width, seed) for seed, (height, width) in enumerate(VILT_SIZES)]
    torchvision_out = vilt_like()(images, return_tensors="np")
    pil_out = vilt_like("pil")(images, return_tensors="np")
    np.testing.assert_array_equal(pil_out["pixel_mask"], torchvision_out["pixel_mask"])
    assert np.abs(pil_out["pixel_values"] - torchvision_out["pixel_values"]).max() <= 4 / 255 / 0.5 + 1e-4
    # zeros outside the mask; the real pixels are the image processed alone
    mask = pil_out["pixel_mask"].astype(bool)
    assert (pil_out["pixel_values"].transpose(1, 0, 2, 3)[:, ~mask] == 0).all()
    first = vilt_like("pil")(images[0], return_tensors="np")["pixel_values"][0]  # 300x200 -> 96x64
    assert first.shape == (3, 96, 64)
    np.testing.assert_array_equal(pil_out["pixel_values"][0, :, :96, :64], first)
    assert mask[0, :96, :64].all() and not mask[0, :, 64:].any()
    # return_tensors=None: per-image padded arrays and masks
    listed = vilt_like("pil")(images[:2])
    assert [a.shape for a in listed["pixel_values"]] == [(3, 96, 96), (3, 96, 96)]
    assert [m.shape for m in listed["pixel_mask"]] == [(96, 96), (96, 96)]
    assert listed["pixel_mask"][0].dtype == np.int64


def test_padding_size_divisor_options_and_model_input_names():
    processor = VLPImageProcessor(size={"shortest_edge": 20}, do_center_crop=False, do_pad=True)
    assert processor.model_input_names == ["pixel_values", "pixel_mask"]
    assert VLPImageProcessor().model_input_names == ["pixel_values"]
    out = processor([noise_image(40, 20), noise_image(20, 50)], return_tensors="pt")
    assert out["pixel_values"].shape == (2, 3, 40, 50) and out["pixel_mask"].shape == (2, 40, 50)
    assert out["pixel_mask"][0].sum() == 40 * 20 and out["pixel_mask"][1].sum() == 20 * 50
    assert set(processor(noise_image(30, 30), do_pad=False, return_tensors="np")) == {"pixel_values"}
    # shortest_edge alone keeps truncating the long side (CLIP); size_divisor floors both sides
    divided = VLPImageProcessor(size={"shortest_edge": 20}, size_divisor=8, do_center_crop=False)
    assert pixels(divided, noise_image(30, 45)).shape == (3, 16, 24)  # 20x30 floored to 16x24
    assert pixels(divided, noise_image(30, 45), size_divisor=1).shape == (3, 20, 30)
    # with longest_edge, sides are rounded as ViLT does: 3x5 -> 64 x 106.67 -> 107 (truncated: 106)
    rounded = VLPImageProcessor(size={"shortest_edge": 64, "longest_edge": 200}, do_center_crop=False)
    assert pixels(rounded, noise_image(3, 5)).shape == (3, 64, 107)
    assert pixels(VLPImageProcessor(size=64, do_center_crop=False), noise_image(3, 5)).shape == (3, 64, 106)
    capped = VLPImageProcessor(size={"shortest_edge": 64, "longest_edge": 100}, do_center_crop=False)
    assert pixels(capped, noise_image(50, 200)).shape == (3, 25, 100)


def test_vilt_options_save_and_load(tmp_path):
    processor = vilt_like("pil")
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["size"] == {"shortest_edge": 64, "longest_edge": 106}
    assert saved["size_divisor"] == 32 and saved["do_pad"] is True and "model_input_names" not in saved
    loaded = VLPImageProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict() and loaded.model_input_names == ["pixel_values", "pixel_mask"]
    images = [noise_image(50, 70), noise_image(90, 40, 1)]
    expected, out = processor(images, return_tensors="np"), loaded(images, return_tensors="np")
    for name in ("pixel_values", "pixel_mask"):
        np.testing.assert_array_equal(out[name], expected[name])


def test_vilt_options_errors():
    with pytest.raises(ValueError, match="longest_edge.*>= .*shortest_edge"):
        VLPImageProcessor(size={"shortest_edge": 64, "longest_edge": 32})
    with pytest.raises(ValueError, match="size_divisor"):
        VLPImageProcessor(size_divisor=0)
    with pytest.raises(ValueError, match="size_divisor"):
        VLPImageProcessor(size_divisor=2.5)
    # 4x400 at shortest_edge 64 / longest 106 is 1 pixel high, floored to 0 by the divisor
    message = image_error([noise_image(8, 8), noise_image(4, 400)], size={"shortest_edge": 64, "longest_edge": 106},
                          size_divisor=32, do_center_crop=False, do_pad=True)  # fmt: skip
    assert "images[1]" in message and "400x4" in message and "size_divisor=32" in message
    message = image_error([noise_image(10, 20), noise_image(20, 20)], do_center_crop=False)
    assert "do_pad=True" in message


# ----------------------------------------------------------------------------------------------------------------
# VLPProcessor: region features


def regions(counts, dim=6, seed=0, box_width=4):
    rng = np.random.default_rng(seed)
    feats = [rng.standard_normal((count, dim)).astype(np.float32) for count in counts]
    low = rng.uniform(0, 0.5, (sum(counts), 2))
    boxes = np.concatenate([low, low + rng.uniform(0, 0.5, low.shape)], axis=1)
    if box_width == 5:
        boxes = np.concatenate([boxes, (boxes[:, 2:3] - boxes[:, 0:1]) * (boxes[:, 3:4] - boxes[:, 1:2])], axis=1)
    splits = np.cumsum(counts)[:-1]
    return feats, np.split(boxes.astype(np.float32), splits)


def test_processor_pads_region_features(tokenizer):
    processor = VLPProcessor(None, tokenizer)
    feats, boxes = regions([2, 4, 1])
    scores = [np.full((count, 3), 1 / 3, dtype=np.float32) for count in (2, 4, 1)]
    labels = [[0, 1], [2, 2, 1, 0], [1]]
    out = processor(
        text=["a cat", "a dog", "a red car"], visual_feats=feats, visual_pos=boxes, region_class_scores=scores,
        region_labels=labels, paired=True, padding=True, return_tensors="pt",
    )  # fmt: skip
    expected_keys = {"input_ids", "attention_mask", "visual_feats", "visual_pos", "visual_attention_mask"}
    assert set(out) == expected_keys | {"region_class_scores", "region_labels"}
    assert out["visual_feats"].shape == (3, 4, 6) and out["visual_feats"].dtype == torch.float32
    assert out["visual_pos"].shape == (3, 4, 4) and out["visual_attention_mask"].dtype == torch.int64
    assert out["visual_attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    for index, (feat, box) in enumerate(zip(feats, boxes)):
        count = len(feat)
        np.testing.assert_array_equal(out["visual_feats"][index, :count].numpy(), feat)
        np.testing.assert_array_equal(out["visual_pos"][index, :count].numpy(), box)
        assert (out["visual_feats"][index, count:] == 0).all() and (out["visual_pos"][index, count:] == 0).all()
    assert out["region_labels"].tolist() == [[0, 1, -100, -100], [2, 2, 1, 0], [1, -100, -100, -100]]
    assert out["region_class_scores"].shape == (3, 4, 3) and out["region_class_scores"][2, 1:].abs().sum() == 0
    # other input forms: torch tensors, nested lists, a batched (B, N, D) array, 5-wide boxes, a single item
    as_tensors = processor(visual_feats=[torch.from_numpy(f) for f in feats], visual_pos=[b.tolist() for b in boxes])
    np.testing.assert_array_equal(as_tensors["visual_feats"], out["visual_feats"].numpy())
    batched_feats, batched_boxes = regions([3, 3], box_width=5)
    batched = processor(visual_feats=np.stack(batched_feats), visual_pos=np.stack(batched_boxes), return_tensors="np")
    assert batched["visual_pos"].shape == (2, 3, 5) and batched["visual_attention_mask"].all()
    single = processor(visual_feats=feats[1], visual_pos=boxes[1], return_tensors="pt")
    assert single["visual_feats"].shape == (1, 4, 6)
    assert processor.model_input_names == [
        "input_ids", "attention_mask", "visual_feats", "visual_pos", "visual_attention_mask"
    ]  # fmt: skip


def region_error(processor, error=ValueError, **kwargs):
    with pytest.raises(error) as info:
        processor(**kwargs)
    return str(info.value)


def test_processor_region_errors(tokenizer):
    processor = VLPProcessor(VLPImageProcessor(), tokenizer)
    region_only = VLPProcessor(None, tokenizer)
    feats, boxes = regions([2, 3])
    message = region_error(processor, images=[noise_image(8, 8)], visual_feats=feats, visual_pos=boxes)
    assert "images and visual_feats were both given" in message
    assert "has no image processor" in region_error(region_only, images=[noise_image(8, 8)], text="a cat")
    assert "without visual_pos" in region_error(region_only, visual_feats=feats)
    assert "visual_pos was given without visual_feats" in region_error(region_only, visual_pos=boxes, text="a cat")
    message = region_error(region_only, visual_feats=feats, visual_pos=[boxes[0], boxes[0]])
    assert "visual_pos[1] has 2 boxes but visual_feats[1] has 3 regions" in message
    message = region_error(region_only, visual_feats=feats, visual_pos=[boxes[0]])
    assert "visual_feats has 2 items but visual_pos has 1" in message
    message = region_error(region_only, visual_feats=feats, visual_pos=[boxes[0], boxes[1][:, :3]])
    assert "visual_pos[1] has shape (3, 3)" in message and "(3, 4)" in message
    outside = [boxes[0], boxes[1] * 2 + 0.1]
    message = region_error(region_only, visual_feats=feats, visual_pos=outside)
    assert "visual_pos[1]" in message and "normalized to [0, 1]" in message
    flipped = [boxes[0], boxes[1][:, [2, 3, 0, 1]]]
    assert "x2 < x1" in region_error(region_only, visual_feats=feats, visual_pos=flipped)
    empty_item = dict(visual_feats=[feats[0], np.zeros((0, 6))], visual_pos=[boxes[0], np.zeros((0, 4))])
    message = region_error(region_only, **empty_item)
    assert "visual_feats[1] has no regions" in message
    message = region_error(region_only, visual_feats=[feats[0], feats[1][:, :5]], visual_pos=boxes)
    assert "visual_feats[1] has feature dim 5 but visual_feats[0] has 6" in message
    message = region_error(region_only, visual_feats=[feats[0], [[1.0, 2.0], [3.0]]], visual_pos=boxes)
    assert "visual_feats[1]" in message
    message = region_error(region_only, visual_feats=feats, visual_pos=boxes, text=["a cat"], paired=True)
    assert message == "visual_feats has 2 items but text has 1; paired inputs need one caption per region set."
    message = region_error(region_only, visual_feats=feats, visual_pos=boxes, region_labels=[[0, 1], [0, 1]])
    assert "region_labels[1] has shape (2,)" in message and "(3,)" in message
    message = region_error(region_only, visual_feats=feats, visual_pos=boxes, region_labels=[[0, 1], [0.5, 1, 1]])
    assert "region_labels[1]" in message and "integers" in message
    scores = [np.ones((2, 3)), np.ones((3, 4))]
    assert "region_class_scores[1] has 4 classes" in region_error(
        region_only, visual_feats=feats, visual_pos=boxes, region_class_scores=scores
    )
    assert "visual_feats is an empty list" in region_error(region_only, visual_feats=[], visual_pos=[])
    assert "got neither" in region_error(region_only)


def test_region_only_processor_save_and_load(tokenizer, tmp_path, registered):
    text_kwargs = {"max_length": 12, "truncation": True}
    processor = VLPProcessor(image_processor=None, tokenizer=tokenizer, text_kwargs=text_kwargs)
    processor.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "processor_config.json").read_text())["image_processor"] is None
    assert "preprocessor_config.json" not in os.listdir(tmp_path)
    feats, boxes = regions([2, 3])
    inputs = dict(text=["a cat on a sofa " * 5, "a dog"], visual_feats=feats, visual_pos=boxes, padding=True)
    expected = processor(**inputs, return_tensors="np")
    assert expected["input_ids"].shape[1] == 12
    for loaded in (VLPProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)):
        assert type(loaded) is VLPProcessor and loaded.image_processor is None
        assert type(loaded.tokenizer) is VLPTokenizer and loaded.text_kwargs == processor.text_kwargs
        out = loaded(**inputs, return_tensors="np")
        for name in expected:
            np.testing.assert_array_equal(out[name], expected[name])
    # the image-processor case still round-trips, and region inputs work with it too
    full = VLPProcessor(vilt_like("pil"), tokenizer)
    full.save_pretrained(tmp_path / "full")
    loaded = VLPProcessor.from_pretrained(tmp_path / "full")
    assert loaded.image_processor.to_dict() == full.image_processor.to_dict()
    assert loaded.model_input_names == ["pixel_values", "pixel_mask", "input_ids", "attention_mask"]
    assert loaded(visual_feats=feats, visual_pos=boxes)["visual_feats"].shape == (2, 3, 6)


def test_region_only_processor_pickles(tokenizer):
    import copy
    import pickle

    processor = VLPProcessor(None, tokenizer)
    for clone in (pickle.loads(pickle.dumps(processor)), copy.deepcopy(processor)):
        assert clone.image_processor is None
        assert clone(text="a cat")["input_ids"] == processor(text="a cat")["input_ids"]
