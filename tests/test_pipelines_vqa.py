"""`pipeline("visual-question-answering")` (a task transformers 5 removed) on our VQA classifiers: answers are the
argmax of the model's logits through `config.id2label`, scored by the sigmoid (BCE heads) or softmax (KL heads),
whatever the batch size; a pushed checkpoint loads by its repo id; bad input is refused."""

import shutil

import numpy as np
import pytest
import torch
from huggingface_hub import HfApi
from transformers import pipeline

import modeling_vlp  # noqa: F401  (registers the pipelines)
from modeling_vlp import (
    VLPDualEncoderModel,
    VLPFusionForQuestionAnswering,
    VLPUnifiedForPreTraining,
    VLPUnifiedForQuestionAnswering,
    VLPVisualQuestionAnsweringPipeline,
    get_preset_config,
)
from modeling_vlp.processors import VLPImageProcessor, VLPProcessor

from hub_server import DEFAULT_TOKEN
from vlp_testing import make_image, perturb, tiny_processor


pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    # huggingface_hub's own LFS upload passes a file as `data=` to httpx2.
    pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning"),
]

TASK = "visual-question-answering"
CAPTIONS = [f"what {w} is the {s}" for w in ("colour", "shape", "size") for s in ("circle", "square", "star")]
QUESTIONS = ["what colour is the circle", "what shape", "what size is the star", "what colour"]
ANSWERS = ["red", "green", "blue", "yes", "no"]
ID2LABEL = dict(enumerate(ANSWERS))



IMAGES = [make_image(seed) for seed in range(len(QUESTIONS))]



@pytest.fixture(scope="module")
def processor():
    return tiny_processor(CAPTIONS)


def build(processor, kind: str):
    tokenizer = processor.tokenizer
    vocab = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    labels = dict(id2label=ID2LABEL, label2id={answer: index for index, answer in ID2LABEL.items()})
    torch.manual_seed(0)
    if kind == "unified-bce":
        return perturb(VLPUnifiedForQuestionAnswering(get_preset_config("unified-tiny", **vocab, **labels)))
    if kind == "unified-kl":
        config = get_preset_config("unified-tiny", **vocab, **labels, vqa_head="text_token", vqa_loss="kl")
        return perturb(VLPUnifiedForQuestionAnswering(config))
    if kind == "fusion":
        return perturb(VLPFusionForQuestionAnswering(get_preset_config("fusion-tiny", text_config=vocab, **labels)))
    raise AssertionError(kind)


KINDS = ["unified-bce", "unified-kl", "fusion"]


@pytest.fixture(scope="module")
def saved(processor, tmp_path_factory):
    folders = {}
    for kind in KINDS:
        folder = tmp_path_factory.mktemp(kind.replace("-", "_"))
        model = build(processor, kind)
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        folders[kind] = (folder, model)
    return folders


@pytest.fixture(scope="module")
def answerers(saved):
    return {kind: pipeline(TASK, model=str(folder)) for kind, (folder, _) in saved.items()}


def model_scores(model, processor, images, questions) -> torch.Tensor:
    """(questions, answers) probabilities of the model, one question per forward."""
    rows = []
    with torch.no_grad():
        for image, question in zip(images, questions):
            inputs = processor(images=[image], text=[question], padding=True, truncation=True, max_length=16,
                               return_tensors="pt")  # fmt: skip
            logits = model(**inputs).logits[0]
            kl = getattr(model.config, "vqa_loss", "bce") == "kl"  # fusion: BCE on soft scores
            rows.append(logits.softmax(-1) if kl else torch.sigmoid(logits))
    return torch.stack(rows)


def assert_same(results, expected):
    assert len(results) == len(expected)
    for got, want in zip(results, expected):
        assert [entry["answer"] for entry in got] == [entry["answer"] for entry in want]
        assert [entry["score"] for entry in got] == pytest.approx([entry["score"] for entry in want], abs=1e-6)


def test_images_of_different_sizes_are_padded_together(processor, saved):
    """A ViLT-style image processor (no crop, padding with `pixel_mask`): a batch goes through the processor."""
    image_processor = VLPImageProcessor(size={"shortest_edge": 32, "longest_edge": 64}, size_divisor=8,
                                        do_center_crop=False, do_pad=True)  # fmt: skip
    padding = VLPProcessor(image_processor=image_processor, tokenizer=processor.tokenizer)
    vqa = pipeline(TASK, model=saved["unified-bce"][1], processor=padding)
    images = [make_image(7, (32, 64)), make_image(8, (48, 32)), make_image(9, (32, 32))]
    batched = vqa(image=images, question=QUESTIONS[:3], top_k=5, batch_size=3)
    assert_same(batched, vqa(image=images, question=QUESTIONS[:3], top_k=5, batch_size=1))


@pytest.mark.parametrize("kind", KINDS)
def test_answers_are_the_models_argmax(kind, saved, answerers, processor):
    vqa = answerers[kind]
    assert type(vqa) is VLPVisualQuestionAnsweringPipeline and type(vqa.model) is type(saved[kind][1])
    assert vqa.score_function == ("softmax" if kind == "unified-kl" else "sigmoid")
    expected = model_scores(saved[kind][1], processor, IMAGES, QUESTIONS)
    results = vqa(image=IMAGES, question=QUESTIONS, top_k=3)
    assert len(results) == len(QUESTIONS)
    for row, result in zip(expected, results):
        order = row.argsort(descending=True)[:3]
        assert [entry["answer"] for entry in result] == [ANSWERS[i] for i in order.tolist()]
        assert [entry["score"] for entry in result] == pytest.approx(row[order].tolist(), abs=1e-5)
    # one image, one question: a list of answers (top_k=1 by default)
    single = vqa(image=IMAGES[2], question=QUESTIONS[2])
    assert len(single) == 1 and single[0]["answer"] == ANSWERS[expected[2].argmax().item()]
    # the answers differ between questions, so a mix-up of rows would show
    assert len({result[0]["answer"] for result in results}) > 1 or kind == "unified-kl"


def test_batches_and_input_forms_give_the_same_answers(answerers):
    vqa = answerers["unified-bce"]
    one = vqa(image=IMAGES, question=QUESTIONS, top_k=5, batch_size=1)
    assert_same(vqa(image=IMAGES, question=QUESTIONS, top_k=5, batch_size=4), one)
    assert_same(vqa(image=IMAGES, question=QUESTIONS, top_k=5, batch_size=3), one)  # a last, shorter batch
    pairs = vqa([{"image": image, "question": question} for image, question in zip(IMAGES, QUESTIONS)], top_k=5)
    assert pairs == one
    # a single question is asked of every image, a single image answers every question
    broadcast = vqa(image=IMAGES[:2], question=QUESTIONS[0], top_k=5)
    assert broadcast[0] == one[0] and len(broadcast) == 2
    assert vqa(image=IMAGES[3], question=QUESTIONS, top_k=5)[3] == one[3]
    # function_to_apply overrides the head's default
    raw = vqa(image=IMAGES[0], question=QUESTIONS[0], top_k=5, function_to_apply="none")
    assert [entry["answer"] for entry in raw] == [entry["answer"] for entry in one[0]]
    assert [torch.sigmoid(torch.tensor(e["score"])).item() for e in raw] == pytest.approx(
        [entry["score"] for entry in one[0]], abs=1e-6
    )
    assert pipeline("vqa", model=vqa.model, processor=vqa.processor)(image=IMAGES[0], question=QUESTIONS[0]) == (
        one[0][:1]
    )


def test_region_input_model(processor):
    tokenizer = processor.tokenizer
    config = get_preset_config(
        "unified-tiny", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, visual_input="regions",
        visual_feat_dim=8, box_embedding="linear", visual_pos_dim=4, embedding_norm="separate", id2label=ID2LABEL,
    )  # fmt: skip
    torch.manual_seed(0)
    model = perturb(VLPUnifiedForQuestionAnswering(config))
    region_processor = VLPProcessor(image_processor=None, tokenizer=tokenizer)
    rng = np.random.default_rng(0)
    regions = []
    for count in (3, 5):
        corners = np.sort(rng.random((count, 2, 2)), axis=1)
        boxes = np.concatenate([corners[:, 0], corners[:, 1]], axis=1).astype(np.float32)
        regions.append({"visual_feats": rng.standard_normal((count, 8)).astype(np.float32), "visual_pos": boxes})
    vqa = pipeline(TASK, model=model, processor=region_processor)
    results = vqa(image=regions, question=QUESTIONS[:2], top_k=2, batch_size=2)
    with torch.no_grad():
        for region, question, result in zip(regions, QUESTIONS, results):
            inputs = region_processor(visual_feats=[region["visual_feats"]], visual_pos=[region["visual_pos"]],
                                      text=[question], return_tensors="pt")  # fmt: skip
            scores = torch.sigmoid(model(**inputs).logits[0])
            order = scores.argsort(descending=True)[:2]
            assert [entry["answer"] for entry in result] == [ANSWERS[i] for i in order.tolist()]
            assert [entry["score"] for entry in result] == pytest.approx(scores[order].tolist(), abs=1e-5)
    with pytest.raises(ValueError, match="reads detector regions"):
        vqa(image=IMAGES[0], question=QUESTIONS[0])


def test_pushed_checkpoint_loads_by_repo_id(saved, answerers, hub, tmp_path):
    api = HfApi(endpoint=hub.url, token=DEFAULT_TOKEN)
    folder = shutil.copytree(saved["fusion"][0], tmp_path / "push")
    api.create_repo("tester/fusion-vqa")
    api.upload_folder(folder_path=str(folder), repo_id="tester/fusion-vqa")
    vqa = pipeline(TASK, model="tester/fusion-vqa")
    assert type(vqa.model) is VLPFusionForQuestionAnswering
    expected = answerers["fusion"](image=IMAGES, question=QUESTIONS, top_k=2)
    assert vqa(image=IMAGES, question=QUESTIONS, top_k=2) == expected


def test_bad_input_is_refused(answerers, saved, processor, tmp_path):
    vqa = answerers["unified-bce"]
    with pytest.raises(ValueError, match="`image` has 3 items but `question` has 2"):
        vqa(image=IMAGES[:3], question=QUESTIONS[:2])
    for question, message in ((None, "`question` is missing"), ([], "`question` is an empty list"),
                              ("", "`question` is ''"), (["what", " "], r"`question` is ' '")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            vqa(image=IMAGES[:2] if isinstance(question, list) and question else IMAGES[0], question=question)
    with pytest.raises(ValueError, match="`image` is missing"):
        vqa(question=QUESTIONS[0])
    with pytest.raises(ValueError, match="`image` is an empty list"):
        vqa(image=[], question=QUESTIONS[0])
    for top_k in (0, -2):
        with pytest.raises(ValueError, match="`top_k` must be a positive int"):
            vqa(image=IMAGES[0], question=QUESTIONS[0], top_k=top_k)
    with pytest.raises(ValueError, match="function_to_apply"):
        vqa(image=IMAGES[0], question=QUESTIONS[0], function_to_apply="tanh")
    # a model of another family / task
    tokenizer = processor.tokenizer
    dual = VLPDualEncoderModel(get_preset_config("dual-tiny", text_config=dict(vocab_size=len(tokenizer))))
    with pytest.raises(ValueError, match="needs a VLPUnifiedForQuestionAnswering.*got VLPDualEncoderModel"):
        pipeline(TASK, model=dual, processor=processor)
    dual.save_pretrained(tmp_path / "dual")
    processor.save_pretrained(tmp_path / "dual")
    with pytest.raises(ValueError, match="VLPDualEncoderConfig"):
        pipeline(TASK, model=str(tmp_path / "dual"))
    # a pretraining checkpoint has no answer vocabulary (nor trained answer head)
    pretraining = VLPUnifiedForPreTraining(get_preset_config("unified-tiny", vocab_size=len(tokenizer)))
    pretraining.save_pretrained(tmp_path / "pretraining")
    processor.save_pretrained(tmp_path / "pretraining")
    with pytest.raises(ValueError, match="no answer vocabulary"):
        pipeline(TASK, model=str(tmp_path / "pretraining"))
