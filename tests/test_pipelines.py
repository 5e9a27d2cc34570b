"""`pipeline("zero-shot-image-classification")` on our dual encoders (softmax and sigmoid) and, unchanged, on
transformers' own models."""

import json
from unittest import mock

import numpy as np
import pytest
import torch
import transformers.pipelines.base as pipelines_base
from PIL import Image
from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel, pipeline
from transformers.pipelines import ZeroShotImageClassificationPipeline

import modeling_vlp  # noqa: F401  (registers the pipeline)
from modeling_vlp import VLPDualEncoderModel, get_preset_config
from modeling_vlp.pipelines import VLPZeroShotImageClassificationPipeline
from modeling_vlp.processors import VLPImageProcessor, VLPProcessor, VLPTokenizer


COLOURS = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple"]
SHAPES = ["circle", "square", "triangle", "star", "cross", "heart"]
CAPTIONS = [f"a {c} {s} on a {b} background" for c in COLOURS for s in SHAPES for b in ("plain", "dark")]
LABELS = ["red circle", "blue star", "green square on a dark background"]
TEMPLATE = "a {}"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def processor():
    tokenizer = VLPTokenizer.train_from_iterator(CAPTIONS, vocab_size=120, model_type="bpe", model_max_length=12)
    image_processor = VLPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return VLPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_model(tokenizer, loss_type: str, **text_overrides) -> VLPDualEncoderModel:
    torch.manual_seed(0)
    text_config = {
        "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id, **text_overrides,
    }  # fmt: skip
    head = {}
    if loss_type == "sigmoid":
        text_config.update(causal=False, pooling="last")
        head = dict(loss_type="sigmoid", logit_scale_init_value=2.0, logit_bias_init_value=-1.0, logit_scale_max=None)
    model = VLPDualEncoderModel(get_preset_config("dual-tiny", text_config=text_config, **head)).eval()
    with torch.no_grad():  # spread the logits so that scores differ visibly between labels
        model.logit_scale.fill_(3.0)
    return model


@pytest.fixture(scope="module")
def saved(processor, tmp_path_factory):
    folders = {}
    for loss_type in ("softmax", "sigmoid"):
        folder = tmp_path_factory.mktemp(f"vlp_{loss_type}")
        build_model(processor.tokenizer, loss_type).save_pretrained(folder)
        processor.save_pretrained(folder)
        folders[loss_type] = folder
    return folders


def make_image(seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8))


def hand_logits(folder, processor, image, labels, template=TEMPLATE, **tokenizer_kwargs):
    model = VLPDualEncoderModel.from_pretrained(folder).eval()
    inputs = processor(images=[image], text=[template.format(label) for label in labels], return_tensors="pt",
                       **tokenizer_kwargs)  # fmt: skip
    with torch.no_grad():
        return model(**inputs).logits_per_image[0]


def scores_by_label(result) -> dict[str, float]:
    return {entry["label"]: entry["score"] for entry in result}


def test_pipeline_loads_our_classes_from_the_folder(saved):
    with mock.patch.object(pipelines_base.logger, "error") as logged_error:
        classifier = pipeline("zero-shot-image-classification", model=str(saved["softmax"]))
    logged_error.assert_not_called()  # no "model not supported" complaint for a registered model
    assert type(classifier) is VLPZeroShotImageClassificationPipeline
    assert type(classifier.model) is VLPDualEncoderModel
    assert type(classifier.tokenizer) is VLPTokenizer and type(classifier.image_processor) is VLPImageProcessor
    assert classifier.tokenizer.model_max_length == 12
    assert classifier.image_processor.crop_size == {"height": 32, "width": 32}


def test_softmax_model_scores_are_a_softmax(saved, processor):
    classifier = pipeline("zero-shot-image-classification", model=str(saved["softmax"]))
    image = make_image()
    result = classifier(image, candidate_labels=LABELS, hypothesis_template=TEMPLATE)
    assert [entry["score"] for entry in result] == sorted((entry["score"] for entry in result), reverse=True)
    assert sum(entry["score"] for entry in result) == pytest.approx(1.0, abs=1e-6)
    expected = hand_logits(saved["softmax"], processor, image, LABELS, padding=True).softmax(-1)
    got = scores_by_label(result)
    for label, score in zip(LABELS, expected.tolist()):
        assert got[label] == pytest.approx(score, abs=1e-6)
    # a softmax couples the labels: dropping one changes the others' scores
    fewer = scores_by_label(classifier(image, candidate_labels=LABELS[:2], hypothesis_template=TEMPLATE))
    assert fewer[LABELS[0]] != pytest.approx(got[LABELS[0]], abs=1e-4)


def test_sigmoid_model_scores_are_independent_sigmoids(saved, processor):
    classifier = pipeline("zero-shot-image-classification", model=str(saved["sigmoid"]))
    assert classifier.uses_sigmoid and classifier.text_max_length() == 12
    image = make_image()
    result = classifier(image, candidate_labels=LABELS, hypothesis_template=TEMPLATE)
    got = scores_by_label(result)
    # texts padded to the tokenizer's model_max_length, as SigLIP
    logits = hand_logits(saved["sigmoid"], processor, image, LABELS, padding="max_length", max_length=12)
    for label, logit in zip(LABELS, logits.tolist()):
        assert got[label] == pytest.approx(1 / (1 + np.exp(-logit)), abs=1e-6)
    assert sum(got.values()) != pytest.approx(1.0, abs=1e-3)
    # each label is scored on its own: the same score with or without the other labels
    for subset in (LABELS[:1], LABELS[1:]):
        alone = scores_by_label(classifier(image, candidate_labels=subset, hypothesis_template=TEMPLATE))
        for label in subset:
            assert alone[label] == pytest.approx(got[label], abs=1e-6)
    # padding is part of the input: with the shortest padding the scores would differ
    shortest = hand_logits(saved["sigmoid"], processor, image, LABELS, padding=True)
    assert not torch.allclose(shortest, logits, atol=1e-4)


def test_tokenizer_kwargs_and_truncation(saved, processor):
    classifier = pipeline("zero-shot-image-classification", model=str(saved["sigmoid"]))
    image = make_image(1)
    result = classifier(
        image, candidate_labels=LABELS, hypothesis_template=TEMPLATE, tokenizer_kwargs={"max_length": 10}
    )
    logits = hand_logits(saved["sigmoid"], processor, image, LABELS, padding="max_length", max_length=10)
    got = scores_by_label(result)
    for label, logit in zip(LABELS, logits.tolist()):
        assert got[label] == pytest.approx(torch.sigmoid(torch.tensor(logit)).item(), abs=1e-6)
    # the default template makes prompts longer than the model's positions: they are truncated, not rejected
    for loss_type in ("softmax", "sigmoid"):
        classifier = pipeline("zero-shot-image-classification", model=str(saved[loss_type]))
        long_label = "green square on a dark background " * 4
        result = classifier(image, candidate_labels=[long_label, "red circle"])
        assert len(result) == 2


def test_batch_of_images(saved):
    classifier = pipeline("zero-shot-image-classification", model=str(saved["sigmoid"]))
    images = [make_image(0), make_image(1)]
    results = classifier(images, candidate_labels=LABELS, hypothesis_template=TEMPLATE)
    assert len(results) == 2 and all(len(result) == len(LABELS) for result in results)
    single = classifier(images[1], candidate_labels=LABELS, hypothesis_template=TEMPLATE)
    assert scores_by_label(results[1]) == pytest.approx(scores_by_label(single), abs=1e-6)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_transformers_models_behave_as_with_the_stock_pipeline(family, processor):
    """Our pipeline is installed for every model; on transformers' own models it must give what the stock one
    gives (softmax for CLIP, the stock SigLIP handling for SigLIP)."""
    torch.manual_seed(0)
    tiny = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)
    text = dict(tiny, vocab_size=len(processor.tokenizer), max_position_embeddings=64)
    vision = dict(tiny, image_size=32, patch_size=8)
    if family == "clip":
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    else:
        model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
    model.eval()
    components = dict(model=model, tokenizer=processor.tokenizer, image_processor=processor.image_processor)
    ours = pipeline("zero-shot-image-classification", **components)
    stock = ZeroShotImageClassificationPipeline(**components)
    assert type(ours) is VLPZeroShotImageClassificationPipeline and not ours.is_vlp_model
    image = make_image()
    got = ours(image, candidate_labels=LABELS)
    assert got == stock(image, candidate_labels=LABELS)
    total = sum(entry["score"] for entry in got)
    if family == "clip":
        assert total == pytest.approx(1.0, abs=1e-6)
    else:
        assert total != pytest.approx(1.0, abs=1e-3)


def test_saved_pipeline_reloads_without_custom_code(saved, tmp_path):
    """Our class replaces a built-in task; saving a pipeline must not mark the model as needing custom code."""
    classifier = pipeline("zero-shot-image-classification", model=str(saved["sigmoid"]))
    classifier.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert "custom_pipelines" not in config
    reloaded = pipeline("zero-shot-image-classification", model=str(tmp_path))
    image = make_image()
    assert reloaded(image, candidate_labels=LABELS) == classifier(image, candidate_labels=LABELS)


def test_processor_text_kwargs_are_the_text_defaults(processor, tmp_path):
    """A processor saved with `text_kwargs` (how the model saw text in training) sets the pipeline's padding."""
    # read at the last position, so that the padding shows in the scores
    build_model(processor.tokenizer, "softmax", pooling="last").save_pretrained(tmp_path)
    text_kwargs = {"padding": "max_length", "max_length": 10, "truncation": True}
    saved_processor = VLPProcessor(processor.image_processor, processor.tokenizer, text_kwargs=text_kwargs)
    saved_processor.save_pretrained(tmp_path)
    classifier = pipeline("zero-shot-image-classification", model=str(tmp_path))
    assert classifier.saved_text_kwargs() == text_kwargs
    image = make_image()
    got = scores_by_label(classifier(image, candidate_labels=LABELS, hypothesis_template=TEMPLATE))
    expected = hand_logits(tmp_path, processor, image, LABELS, **text_kwargs).softmax(-1)
    for label, score in zip(LABELS, expected.tolist()):
        assert got[label] == pytest.approx(score, abs=1e-6)
    shortest = hand_logits(tmp_path, processor, image, LABELS, padding=True).softmax(-1)
    assert not torch.allclose(shortest, expected, atol=1e-4)
