"""The captioning family end to end: `vlp pretrain --family captioning` (metrics, saved model, objective errors),
`pipeline("image-text-to-text" / "image-to-text")` against `model.generate` + decode (greedy, beams, prompts,
batches, a pushed checkpoint), and `vlp evaluate --task captioning` (JSON + PNG, the numbers of
`evaluate_captioning`, references grouped by image_id)."""

import json
import shutil

import datasets
import numpy as np
import pytest
import torch
from hub_server import DEFAULT_TOKEN
from huggingface_hub import HfApi
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

import modeling_vlp  # noqa: F401  (registers the Auto classes and pipelines)
from modeling_vlp.commands import main
from modeling_vlp.commands.arguments import PretrainArguments
from modeling_vlp.commands.common import build_config, build_processor
from modeling_vlp.commands.evaluate import evaluate_command, images_with_references
from modeling_vlp.data.scenes import make_scenes_dataset
from modeling_vlp.evaluation.captioning import (
    caption_references,
    evaluate_captioning,
    generate_captions,
)
from modeling_vlp.families import FAMILIES
from modeling_vlp.modeling_captioning import VLPForConditionalGeneration
from modeling_vlp.pipelines import VLPImageTextToTextPipeline
from modeling_vlp.presets import get_preset_config

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning"),
]

EXAMPLES = 4
TINY_PRETRAIN = [
    "pretrain", "--family", "captioning", "--preset", "captioning-tiny", "--num-train", "32", "--num-validation", "6",
    "--per-device-train-batch-size", "8", "--per-device-eval-batch-size", "8", "--vocab-size", "150",
    "--logging-steps", "1", "--save-steps", "2", "--dataloader-num-workers", "0", "--report-to", "none",
]  # fmt: skip


@pytest.fixture(autouse=True)
def no_java(monkeypatch):
    """METEOR (a Java program started per call) is left out: seconds per call, and pycocoevalcap's tests cover it."""
    which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: None if name == "java" else which(name, *args, **kwargs))


def scenes_validation(count: int = EXAMPLES):
    return make_scenes_dataset(num_train=0, num_validation=count, image_size=32, seed=0)["validation"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """captioning-tiny with a tokenizer trained on scene captions and weights spread wider than the init, so that
    greedy and beam captions differ from image to image; saved with its processor."""
    scenes = make_scenes_dataset(num_train=48, num_validation=0, image_size=32, seed=0)
    processor = build_processor(PretrainArguments(vocab_size=150), scenes["train"], image_size=32, max_text_length=16)
    config = build_config(PretrainArguments(family="captioning"), "captioning-tiny", processor.tokenizer)
    torch.manual_seed(0)
    model = VLPForConditionalGeneration(config)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.3)
    folder = tmp_path_factory.mktemp("captioner")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder), model.eval(), processor


@pytest.fixture(scope="module")
def captioner(saved):
    return pipeline("image-text-to-text", model=saved[0])


def reference_captions(model, processor, images, prompt=None, **generate_kwargs) -> list[list[str]]:
    """model.generate on one image at a time (no padding), decoded without special tokens."""
    results = []
    for image in images:
        pixel_values = processor(images=[image], return_tensors="pt")["pixel_values"]
        input_ids = None
        if prompt is not None:
            ids = processor.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            input_ids = torch.tensor([[model.config.decoder_start_id, *ids]])
        sequences = model.generate(pixel_values=pixel_values, input_ids=input_ids, **generate_kwargs)
        results.append([text.strip() for text in processor.tokenizer.batch_decode(sequences, skip_special_tokens=True)])
    return results


# ---- vlp pretrain --------------------------------------------------------------------------------------------------


def test_pretrain_writes_a_captioning_model_and_its_caption_metrics(tmp_path, capsys):
    output_dir = tmp_path / "run"
    assert main([*TINY_PRETRAIN, "--output-dir", str(output_dir), "--max-steps", "2"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"bleu_1", "bleu_4", "cider", "num_images", "global_step"} <= set(metrics)
    assert metrics["global_step"] == 2 and metrics["num_images"] == 6
    assert json.loads((output_dir / "eval_results.json").read_text()) == metrics
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert any("loss_lm" in entry for entry in state["log_history"])  # each objective logged on its own

    model = AutoModelForImageTextToText.from_pretrained(output_dir)
    assert type(model) is VLPForConditionalGeneration
    processor = AutoProcessor.from_pretrained(output_dir)
    assert model.config.text_config.vocab_size == len(processor.tokenizer)
    assert model.config.decoder_start_id == processor.tokenizer.bos_token_id
    assert model.config.text_config.eos_token_id == processor.tokenizer.eos_token_id
    validation = make_scenes_dataset(32, 6, image_size=32, seed=0)["validation"]
    again = evaluate_captioning(model, processor, validation, batch_size=8, show_progress=False)
    for key in ("bleu_1", "bleu_4", "cider"):
        assert again[key] == pytest.approx(metrics[key]), key


def test_objectives_the_model_cannot_train_fail_before_training(tmp_path):
    # The default objectives: captioning presets train lm; CoCa presets (a contrastive head) itc and lm.
    family = FAMILIES["captioning"]
    assert family.preset_objectives(get_preset_config("captioning-small")) == ("lm",)
    assert family.preset_objectives(get_preset_config("coca-small")) == ("itc", "lm")
    with pytest.raises(ValueError, match="projection_dim=None.*coca-small"):
        main([*TINY_PRETRAIN, "--objectives", "itc,lm", "--output-dir", str(tmp_path / "a")])
    with pytest.raises(ValueError, match="'lm'.*use --family captioning --preset coca-small"):
        main(["pretrain", "--family", "dual", "--objectives", "itc,lm", "--output-dir", str(tmp_path / "b")])
    with pytest.raises(ValueError, match="--mlm-probability do not apply to the 'captioning' family"):
        main([*TINY_PRETRAIN, "--mlm-probability", "0.3", "--output-dir", str(tmp_path / "c")])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ---- pipelines -----------------------------------------------------------------------------------------------------


def test_pipeline_returns_what_generate_and_decode_return(saved, captioner):
    _, model, processor = saved
    images = list(scenes_validation()["image"])
    assert type(captioner) is VLPImageTextToTextPipeline
    greedy = reference_captions(model, processor, images, max_new_tokens=8)
    assert len({tuple(caption) for caption in greedy}) > 1  # the images get different captions
    assert captioner(images[0], max_new_tokens=8) == [{"generated_text": greedy[0][0]}]
    expected = [[{"generated_text": text} for text in captions] for captions in greedy]
    assert captioner(images, max_new_tokens=8) == expected
    assert captioner(images, max_new_tokens=8, batch_size=3) == expected

    beams = reference_captions(model, processor, images, num_beams=3, num_return_sequences=2, max_new_tokens=6)
    got = captioner(images, generate_kwargs={"num_beams": 3, "num_return_sequences": 2}, max_new_tokens=6, batch_size=2)
    assert got == [[{"generated_text": text} for text in captions] for captions in beams]

    # A prompt starts every caption; prompts of different lengths are left-padded together.
    prompted = reference_captions(model, processor, images[:2], prompt="a large", max_new_tokens=5)
    assert all(text.startswith("a large") for (text,) in prompted)
    assert captioner(images[:2], prompt="a large", max_new_tokens=5) == [[{"generated_text": t}] for (t,) in prompted]
    mixed = [prompted[0][0], reference_captions(model, processor, images[1:2], prompt="there is a", max_new_tokens=5)[0][0]]
    got = captioner(images[:2], text=["a large", "there is a"], max_new_tokens=5, batch_size=2)
    assert got == [[{"generated_text": text}] for text in mixed]


def test_image_to_text_reaches_the_same_pipeline_and_a_pushed_checkpoint_loads(saved, captioner, hub, tmp_path):
    images = list(scenes_validation(2)["image"])
    expected = captioner(images, max_new_tokens=6)
    old_task = pipeline("image-to-text", model=saved[0])  # transformers 5 redirects it to image-text-to-text
    assert type(old_task) is VLPImageTextToTextPipeline and old_task(images, max_new_tokens=6) == expected

    api = HfApi(endpoint=hub.url, token=DEFAULT_TOKEN)
    api.create_repo("tester/captioner")
    api.upload_folder(folder_path=str(shutil.copytree(saved[0], tmp_path / "push")), repo_id="tester/captioner")
    pushed = pipeline("image-text-to-text", model="tester/captioner")
    assert type(pushed.model) is VLPForConditionalGeneration
    assert pushed(images, max_new_tokens=6) == expected


def test_pipeline_errors_are_value_errors(captioner):
    image = scenes_validation(1)["image"][0]
    with pytest.raises(ValueError, match="`max_new_tokens` must be a positive"):
        captioner(image, max_new_tokens=0)
    with pytest.raises(ValueError, match="prompt tokens, but the decoder has 16 positions"):
        captioner(image, prompt=" ".join(["red"] * 20))
    with pytest.raises(ValueError, match="`images` is missing"):
        captioner(None)
    with pytest.raises(ValueError, match="`images` is None"):
        captioner([image, None])
    with pytest.raises(ValueError, match="one prompt per image"):
        captioner([image, image], prompt=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"Unknown arguments \['top_kk'\]"):
        captioner(image, top_kk=3)
    with pytest.raises(ValueError, match="same argument"):
        captioner(image, text="a", prompt="a")


# ---- vlp evaluate --------------------------------------------------------------------------------------------------


def evaluate_json(argv, capsys) -> dict:
    status = evaluate_command(argv)
    captured = capsys.readouterr()
    assert status == 0, captured.err[-3000:]
    return json.loads(captured.out.strip())


def test_evaluate_prints_caption_metrics_and_draws_the_captions(saved, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    folder, model, processor = saved
    result = evaluate_json(
        ["--model", folder, "--task", "captioning", "--max-examples", str(EXAMPLES), "--output-dir", str(tmp_path),
         "--num-beams", "2", "--max-new-tokens", "8"],
        capsys,
    )  # fmt: skip
    expected = evaluate_captioning(
        model, processor, scenes_validation(), max_new_tokens=8, num_beams=2, show_progress=False
    )
    for key in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "cider"):
        assert result[key] == pytest.approx(expected[key], abs=1e-9), key
    assert result["num_images"] == EXAMPLES and result["num_texts"] == 3 * EXAMPLES
    assert result["task"] == "captioning" and result["dataset"] == "scenes/validation"
    predictions = generate_captions(model, processor, scenes_validation()["image"], max_new_tokens=8, num_beams=2,
                                    show_progress=False)  # fmt: skip
    assert [example["generated"] for example in result["examples"]] == predictions[:3]
    assert json.loads((tmp_path / "eval_captioning.json").read_text()) == result
    with Image.open(result["png"]) as image:
        assert image.format == "PNG" and image.width > 200
        assert len(json.loads(image.info["vlp_rows"])) == EXAMPLES


def test_evaluate_groups_one_caption_per_row_by_image_id(saved, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    split = scenes_validation(3)
    rows = {"image": [], "caption": [], "image_id": []}
    for image, captions, image_id in zip(split["image"], split["captions"], split["image_id"]):
        for caption in captions[:2]:
            rows["image"].append(image)
            rows["caption"].append(caption)
            rows["image_id"].append(image_id)
    local = datasets.Dataset.from_dict(rows, features=datasets.Features(
        {"image": datasets.Image(), "caption": datasets.Value("string"), "image_id": datasets.Value("int64")}
    ))  # fmt: skip
    grouped = images_with_references(local)
    assert len(grouped) == 3 and caption_references(grouped) == [list(c[:2]) for c in split["captions"]]
    datasets.DatasetDict({"validation": local}).save_to_disk(str(tmp_path / "data"))
    result = evaluate_json(
        ["--model", saved[0], "--task", "captioning", "--dataset", str(tmp_path / "data"), "--output-dir",
         str(tmp_path / "out"), "--max-new-tokens", "6"],
        capsys,
    )  # fmt: skip
    assert result["num_images"] == 3 and result["num_texts"] == 6
    references = [example["references"] for example in result["examples"]]
    assert references == [list(c[:2]) for c in split["captions"]]


def test_evaluate_errors(saved, tmp_path, capsys):
    out = ["--output-dir", str(tmp_path)]
    for argv, fragment in (
        (["--task", "vqa"], "--task vqa does not apply"),
        (["--task", "captioning", "--num-beams", "0"], "--num-beams must be >= 1"),
        (["--task", "captioning", "--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    ):
        status = evaluate_command(["--model", saved[0], *argv, *out])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert status == 2 and fragment in err, err


def test_references_and_inputs_are_checked(saved):
    _, model, processor = saved
    with pytest.raises(ValueError, match="'captions' \\(list\\) or 'caption' column"):
        caption_references(datasets.Dataset.from_dict({"text": ["a"]}))
    with pytest.raises(ValueError, match="num_beams must be >= 1"):
        generate_captions(model, processor, [Image.new("RGB", (8, 8))], num_beams=0)
    assert caption_references(datasets.Dataset.from_dict({"caption": ["a b", "c"]})) == [["a b"], ["c"]]
    rows = datasets.Dataset.from_dict({"caption": ["x", "y"], "captions": [["a", "b"], []]})
    assert caption_references(rows) == [["a", "b"], ["y"]]
    np.testing.assert_equal(len(generate_captions(model, processor, [Image.new("RGB", (40, 30))] * 3, batch_size=2,
                                                  max_new_tokens=3, show_progress=False)), 3)  # fmt: skip
