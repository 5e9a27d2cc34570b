"""Auto classes: after `import modeling_vlp` they resolve our config, model and processors from a saved folder, and a
saved folder loads with `trust_remote_code=True` in a Python where `modeling_vlp` cannot be imported."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
    AutoTokenizer,
)

import modeling_vlp
from modeling_vlp import (
    VLPDualEncoderConfig,
    VLPDualEncoderModel,
    VLPTextModel,
    VLPVisionModel,
    get_preset_config,
)
from modeling_vlp.processors import VLPImageProcessor, VLPProcessor, VLPTokenizer


COLOURS = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple"]
SHAPES = ["circle", "square", "triangle", "star", "cross", "heart"]
CAPTIONS = [f"a {c} {s} on a {b} background" for c in COLOURS for s in SHAPES for b in ("plain", "dark")]
TEXTS = ["a red circle", "a blue star on a dark background", "green"]


pytestmark = pytest.mark.usefixtures("one_thread")


def build_processor() -> VLPProcessor:
    tokenizer = VLPTokenizer.train_from_iterator(CAPTIONS, vocab_size=120, model_type="bpe", model_max_length=16)
    image_processor = VLPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return VLPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_model(tokenizer, **overrides) -> VLPDualEncoderModel:
    torch.manual_seed(0)
    text_config = {
        "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }  # fmt: skip
    return VLPDualEncoderModel(get_preset_config("dual-tiny", text_config=text_config, **overrides)).eval()


def make_images(count: int = 2, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (40 + 8 * i, 36, 3), dtype=np.uint8)) for i in range(count)]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved model + processor, the inputs the processor made and the logits the model gave."""
    folder = tmp_path_factory.mktemp("vlp_dual")
    processor = build_processor()
    model = build_model(processor.tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    images = make_images()
    inputs = processor(images=images, text=TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits_per_image.contiguous()
    return {"folder": folder, "inputs": inputs, "logits": logits, "images": images, "processor": processor}


def test_saved_folder_carries_auto_map_and_code(saved):
    folder = saved["folder"]
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "vlp_dual_encoder"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_vlp.VLPDualEncoderConfig",
        "AutoModel": "modeling_dual_encoder.VLPDualEncoderModel",
        "AutoModelForZeroShotImageClassification": "modeling_dual_encoder.VLPDualEncoderModel",
    }
    processor_config = json.loads((folder / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_vlp.VLPProcessor"
    assert processor_config["image_processor"]["auto_map"]["AutoImageProcessor"] == (
        "image_processing_vlp.VLPImageProcessor"
    )
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "VLPTokenizer"
    assert "tokenization_vlp.VLPTokenizer" in tokenizer_config["auto_map"]["AutoTokenizer"]
    code = {path.name for path in folder.glob("*.py")}
    assert {"configuration_vlp.py", "modeling_dual_encoder.py", "modeling_layers.py", "losses.py",
            "processing_vlp.py", "image_processing_vlp.py", "tokenization_vlp.py"} <= code  # fmt: skip
    for name in code:  # remote code must stand alone: siblings by relative import only
        for line in (folder / name).read_text().splitlines():
            assert not line.lstrip().startswith(("import modeling_vlp", "from modeling_vlp")), (name, line)
    assert (folder / "model.safetensors").is_file() and (folder / "spiece.model").is_file()


def test_auto_classes_resolve_our_classes(saved):
    folder = saved["folder"]
    assert type(AutoConfig.from_pretrained(folder)) is VLPDualEncoderConfig
    assert type(AutoImageProcessor.from_pretrained(folder)) is VLPImageProcessor
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert type(tokenizer) is VLPTokenizer
    assert tokenizer(TEXTS)["input_ids"] == saved["processor"].tokenizer(TEXTS)["input_ids"]
    processor = AutoProcessor.from_pretrained(folder)
    assert type(processor) is VLPProcessor
    assert type(processor.tokenizer) is VLPTokenizer and type(processor.image_processor) is VLPImageProcessor
    inputs = processor(images=saved["images"], text=TEXTS, padding=True, return_tensors="pt")
    for key, value in saved["inputs"].items():
        assert torch.equal(inputs[key], value), key
    for auto_class in (AutoModel, AutoModelForZeroShotImageClassification):
        model = auto_class.from_pretrained(folder).eval()
        assert type(model) is VLPDualEncoderModel
        with torch.no_grad():
            assert torch.equal(model(**inputs).logits_per_image, saved["logits"])


def test_auto_model_resolves_single_towers(tmp_path):
    model = build_model(build_processor().tokenizer)
    model.vision_model.save_pretrained(tmp_path / "vision")
    model.text_model.save_pretrained(tmp_path / "text")
    assert type(AutoModel.from_pretrained(tmp_path / "vision")) is VLPVisionModel
    assert type(AutoModel.from_pretrained(tmp_path / "text")) is VLPTextModel
    assert json.loads((tmp_path / "text" / "config.json").read_text())["auto_map"]["AutoModel"] == (
        "modeling_dual_encoder.VLPTextModel"
    )


def test_registration_is_idempotent():
    modeling_vlp.register_auto_classes()
    modeling_vlp.registration._registered = False
    try:
        modeling_vlp.register_auto_classes()  # again, as after a reload: exist_ok everywhere
    finally:
        modeling_vlp.registration._registered = True


REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys; sys.modules["modeling_vlp"] = None  # as on a machine without the package
    import json, torch
    from PIL import Image
    from safetensors.torch import load_file, save_file
    from transformers import AutoModel, AutoProcessor

    folder, work = sys.argv[1], sys.argv[2]
    try:
        import modeling_vlp  # noqa: F401
        raise SystemExit("modeling_vlp should not be importable here")
    except ImportError:
        pass
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    inputs = load_file(f"{work}/inputs.safetensors")
    with torch.no_grad():
        logits = model(**inputs).logits_per_image.contiguous()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    texts = json.load(open(f"{work}/texts.json"))
    images = [Image.open(f"{work}/image_{i}.png") for i in range(len(inputs["pixel_values"]))]
    processed = processor(images=images, text=texts, padding=True, return_tensors="pt")
    save_file({"logits": logits, **{k: v.contiguous() for k, v in processed.items()}}, f"{work}/outputs.safetensors")
    from transformers import pipeline

    classifier = pipeline("zero-shot-image-classification", model=folder, trust_remote_code=True)
    # The stock pipeline does not truncate: keep the prompts inside the tiny model's 16 positions.
    result = classifier(images[0], candidate_labels=texts, hypothesis_template="{}")
    json.dump(result, open(f"{work}/zero_shot.json", "w"))
    classes = [type(model), type(processor), type(processor.tokenizer), type(processor.image_processor)]
    classes.append(type(classifier.model))
    json.dump([f"{c.__module__}.{c.__name__}" for c in classes], open(f"{work}/classes.json", "w"))
    """
)


@pytest.mark.slow  # runs a subprocess
def test_trust_remote_code_without_the_package(saved, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    save_file({k: v.contiguous() for k, v in saved["inputs"].items()}, work / "inputs.safetensors")
    (work / "texts.json").write_text(json.dumps(TEXTS))
    for index, image in enumerate(saved["images"]):
        image.save(work / f"image_{index}.png")
    env = {
        key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "HF_MODULES_CACHE")
    }
    env.update(
        HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), TRANSFORMERS_VERBOSITY="error",
        OMP_NUM_THREADS="1",
    )  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_SCRIPT, str(saved["folder"]), str(work)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    classes = json.loads((work / "classes.json").read_text())
    assert [name.rsplit(".", 1)[1] for name in classes] == [
        "VLPDualEncoderModel", "VLPProcessor", "VLPTokenizer", "VLPImageProcessor", "VLPDualEncoderModel",
    ]  # fmt: skip
    zero_shot = json.loads((work / "zero_shot.json").read_text())
    assert sorted(item["label"] for item in zero_shot) == sorted(TEXTS)
    assert sum(item["score"] for item in zero_shot) == pytest.approx(1.0, abs=1e-5)
    assert all(name.startswith("transformers_modules.") for name in classes), classes
    outputs = load_file(work / "outputs.safetensors")
    assert torch.equal(outputs["logits"], saved["logits"])
    for key, value in saved["inputs"].items():
        assert torch.equal(outputs[key], value), key


HEADS_SCRIPT = textwrap.dedent(
    """
    import sys; sys.modules["modeling_vlp"] = None  # as on a machine without the package
    import json, torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModel, AutoModelForPreTraining, AutoModelForVisualQuestionAnswering

    folder, work = sys.argv[1], sys.argv[2]
    inputs = load_file(f"{work}/inputs.safetensors")
    pretraining = AutoModelForPreTraining.from_pretrained(folder, trust_remote_code=True).eval()
    base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    vqa = AutoModelForVisualQuestionAnswering.from_pretrained(folder, trust_remote_code=True, num_labels=3).eval()
    with torch.no_grad():
        itm_logits = pretraining(**inputs).itm_logits.contiguous()
        vqa_logits = vqa(**inputs).logits.contiguous()
    save_file({"itm_logits": itm_logits, "vqa_logits": vqa_logits}, f"{work}/outputs.safetensors")
    json.dump([type(m).__name__ for m in (pretraining, base, vqa)], open(f"{work}/classes.json", "w"))
    json.dump([type(m).__module__.startswith("transformers_modules.") for m in (pretraining, base, vqa)],
              open(f"{work}/remote.json", "w"))
    """
)


@pytest.mark.parametrize(
    "preset, prefix", [("unified-tiny", "VLPUnified"), ("fusion-tiny", "VLPFusion")], ids=["unified", "fusion"]
)
@pytest.mark.slow  # runs a subprocess
def test_trust_remote_code_loads_every_head_of_a_family(preset, prefix, tmp_path):
    """A pretraining checkpoint saved by the package loads, without it, into the base model, the pretraining model
    and the VQA model through their Auto classes (`family_auto_map`)."""
    from transformers import AutoModelForPreTraining

    torch.manual_seed(0)
    config = get_preset_config(preset)
    model = AutoModelForPreTraining.from_config(config).eval()
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert {"AutoConfig", "AutoModel", "AutoModelForPreTraining", "AutoModelForVisualQuestionAnswering"} <= set(auto_map)
    generator = torch.Generator().manual_seed(0)
    image_size = getattr(config, "image_size", None) or config.vision_config.image_size
    inputs = {
        "input_ids": torch.randint(5, 90, (2, 7), generator=generator),
        "attention_mask": torch.tensor([[1] * 7, [1] * 5 + [0] * 2]),
        "pixel_values": torch.randn(2, 3, image_size, image_size, generator=generator),
    }
    with torch.no_grad():
        expected = model(**inputs).itm_logits
    work = tmp_path / "work"
    work.mkdir()
    save_file(inputs, work / "inputs.safetensors")
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "HF_MODULES_CACHE")}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), TRANSFORMERS_VERBOSITY="error",
               OMP_NUM_THREADS="1")  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", HEADS_SCRIPT, str(folder), str(work)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert json.loads((work / "classes.json").read_text()) == [
        f"{prefix}ForPreTraining", f"{prefix}Model", f"{prefix}ForQuestionAnswering",
    ]  # fmt: skip
    assert all(json.loads((work / "remote.json").read_text()))
    outputs = load_file(work / "outputs.safetensors")
    assert torch.equal(outputs["itm_logits"], expected)
    assert outputs["vqa_logits"].shape == (2, 3)
