"""`pipeline("image-text-retrieval")` on every family: the rankings equal the ones computed with the model directly
(embeddings, `rerank_retrieval`, ITM logits of each pair), whatever the batch size; pretraining checkpoints load
with their ITM head; a checkpoint pushed to the (local) Hub loads by its repo id; bad input is refused."""

import json
import shutil

import numpy as np
import pytest
import torch
from huggingface_hub import HfApi
from transformers import pipeline

import modeling_vlp  # noqa: F401  (registers the pipelines)
from modeling_vlp import (
    AutoModelForImageTextRetrieval,
    VLPDualEncoderModel,
    VLPFusionForImageTextRetrieval,
    VLPFusionForPreTraining,
    VLPImageTextRetrievalPipeline,
    VLPUnifiedForImageTextRetrieval,
    VLPUnifiedForPreTraining,
    VLPUnifiedForQuestionAnswering,
    get_preset_config,
    rerank_retrieval,
)
from modeling_vlp.processors import VLPProcessor

from hub_server import DEFAULT_TOKEN
from vlp_testing import make_image, perturb, tiny_processor


pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    # huggingface_hub's own LFS upload passes a file as `data=` to httpx2.
    pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning"),
]

COLOURS = ["red", "green", "blue", "black"]
SHAPES = ["circle", "square", "star"]
CAPTIONS = [f"a {c} {s}" for c in COLOURS for s in SHAPES]
TEXTS = ["a red circle", "a blue star on a square", "green", "a black square", "a red star", "blue"]
NUM_IMAGES = 5
TASK = "image-text-retrieval"



IMAGES = [make_image(seed) for seed in range(NUM_IMAGES)]



@pytest.fixture(scope="module")
def processor():
    return tiny_processor(CAPTIONS)


def build(processor, kind: str):
    tokenizer = processor.tokenizer
    vocab = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    if kind in ("dual", "dual-sigmoid"):
        text = dict(vocab, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        head = {}
        if kind == "dual-sigmoid":
            text.update(causal=False, pooling="last")
            head = dict(loss_type="sigmoid", logit_scale_init_value=2.0, logit_bias_init_value=-1.0)
        return perturb(VLPDualEncoderModel(get_preset_config("dual-tiny", text_config=text, **head)))
    if kind == "fusion":
        return perturb(VLPFusionForPreTraining(get_preset_config("fusion-tiny", text_config=vocab)))
    if kind == "fusion-no-itc":
        config = get_preset_config("fusion-tiny", text_config=vocab, projection_dim=None)
        return perturb(VLPFusionForPreTraining(config))
    if kind == "unified":
        return perturb(VLPUnifiedForPreTraining(get_preset_config("unified-tiny", **vocab)))
    raise AssertionError(kind)


KINDS = ["dual", "dual-sigmoid", "fusion", "fusion-no-itc", "unified"]


@pytest.fixture(scope="module")
def saved(processor, tmp_path_factory):
    """Each kind saved (pretraining checkpoints for fusion and unified) with the processor: {kind: (folder, model)}."""
    folders = {}
    for kind in KINDS:
        folder = tmp_path_factory.mktemp(kind.replace("-", "_"))
        model = build(processor, kind)
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        folders[kind] = (folder, model)
    return folders


@pytest.fixture(scope="module")
def retrievers(saved):
    return {kind: pipeline(TASK, model=str(folder)) for kind, (folder, _) in saved.items()}


def inputs(processor, texts=TEXTS, images=IMAGES, **text_kwargs):
    text_kwargs = {"padding": True, "truncation": True, "max_length": 16, **text_kwargs}
    image_inputs = dict(processor(images=images, return_tensors="pt"))
    return image_inputs, dict(processor(text=texts, return_tensors="pt", **text_kwargs))


def assert_ranking(got: list[dict], indices: list[int], scores: list[float]):
    assert [entry["index"] for entry in got] == indices
    assert [entry["score"] for entry in got] == pytest.approx(scores, abs=1e-5)


def ranking_of(scores: torch.Tensor, top_k: int | None = None) -> tuple[list[int], list[float]]:
    order = scores.argsort(descending=True)[:top_k]
    return order.tolist(), scores[order].tolist()


# --------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, retrieval_class",
    [("dual", VLPDualEncoderModel), ("fusion", VLPFusionForImageTextRetrieval),
     ("unified", VLPUnifiedForImageTextRetrieval)],
)  # fmt: skip
def test_pretraining_checkpoints_load_with_their_itm_head(kind, retrieval_class, saved, retrievers):
    folder, pretrained = saved[kind]
    model, info = AutoModelForImageTextRetrieval.from_pretrained(folder, output_loading_info=True)
    assert type(model) is retrieval_class
    assert not info["missing_keys"] and not info["mismatched_keys"]  # nothing newly initialised
    retriever = retrievers[kind]
    assert type(retriever) is VLPImageTextRetrievalPipeline and type(retriever.model) is retrieval_class
    expected = pretrained.state_dict()
    for name, value in retriever.model.state_dict().items():
        assert torch.equal(value, expected[name]), name
    if kind != "dual":
        assert torch.equal(retriever.model.itm_head.weight, pretrained.itm_head.weight)


# --------------------------------------------------------------------------------------------------------------
# Rankings against the model
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dual", "dual-sigmoid"])
def test_dual_encoder_scores_are_those_of_the_model(kind, saved, retrievers, processor):
    model = saved[kind][1]
    padding = {"padding": "max_length"} if kind == "dual-sigmoid" else {}
    image_inputs, text_inputs = inputs(processor, **padding)
    with torch.no_grad():
        logits = model(**image_inputs, **text_inputs).logits_per_image  # (images, texts)
    if kind == "dual-sigmoid":
        i2t = t2i = torch.sigmoid(logits)
    else:
        i2t, t2i = logits.softmax(dim=1), logits.t().softmax(dim=1).t()
    result = retrievers[kind](IMAGES, texts=TEXTS)
    for image, ranked in enumerate(result["image_to_text"]):
        assert_ranking(ranked, *ranking_of(i2t[image]))
        assert [entry["text"] for entry in ranked] == [TEXTS[entry["index"]] for entry in ranked]
    for text, ranked in enumerate(result["text_to_image"]):
        assert_ranking(ranked, *ranking_of(t2i[:, text]))
    # one image: its ranked texts, with the zero-shot pipeline's scores
    single = retrievers[kind](IMAGES[1], texts=TEXTS, top_k=3)
    assert_ranking(single, *ranking_of(i2t[1], top_k=3))
    zero_shot = pipeline("zero-shot-image-classification", model=str(saved[kind][0]))
    labels = zero_shot(IMAGES[1], candidate_labels=TEXTS, hypothesis_template="{}")
    assert {entry["label"]: entry["score"] for entry in labels} == pytest.approx(
        {entry["text"]: entry["score"] for entry in retrievers[kind](IMAGES[1], texts=TEXTS)}, abs=1e-5
    )


def test_fusion_reranks_the_itc_shortlist_as_rerank_retrieval(saved, retrievers, processor):
    model = saved["fusion"][1]
    image_inputs, text_inputs = inputs(processor)
    image_ids = torch.zeros(len(TEXTS), dtype=torch.long)  # for the metrics only
    reference = rerank_retrieval(model, image_inputs, text_inputs, k=3, image_ids=image_ids)
    result = retrievers["fusion"](IMAGES, texts=TEXTS, rerank_k=3)
    for image, ranked in enumerate(result["image_to_text"]):
        shortlist = reference.topk_i2t[image]
        assert sorted(entry["index"] for entry in ranked) == sorted(shortlist.tolist())  # only the shortlist
        scores = reference.scores_i2t[image, shortlist]
        order = scores.argsort(descending=True)
        assert_ranking(ranked, shortlist[order].tolist(), scores[order].tolist())
    for text, ranked in enumerate(result["text_to_image"]):
        shortlist = reference.topk_t2i[text]
        scores = reference.scores_t2i[text, shortlist]
        order = scores.argsort(descending=True)
        assert_ranking(ranked, shortlist[order].tolist(), scores[order].tolist())
    # the re-ranking changed something: ITC alone would order these differently
    itc_first = [reference.similarity[image].argmax().item() for image in range(NUM_IMAGES)]
    assert itc_first != [ranked[0]["index"] for ranked in result["image_to_text"]]


def pair_log_odds(model, image_inputs, text_inputs) -> torch.Tensor:
    """(images, texts) ITM log-odds, one forward per pair."""
    scores = torch.empty(NUM_IMAGES, len(TEXTS))
    with torch.no_grad():
        for image in range(NUM_IMAGES):
            for text in range(len(TEXTS)):
                itm_logits = model(
                    **{name: value[image : image + 1] for name, value in image_inputs.items()},
                    **{name: value[text : text + 1] for name, value in text_inputs.items()},
                ).itm_logits
                scores[image, text] = itm_logits[0, 1] - itm_logits[0, 0]
    return scores


@pytest.mark.parametrize("kind", ["fusion", "fusion-no-itc", "unified"])
def test_itm_scores_of_every_pair(kind, saved, retrievers, processor):
    """Unified models and fusion models without ITC head (or with `rerank_k` covering every image) score every pair
    with the ITM head: probabilities, or ALBEF's log-odds + cosine with an ITC head."""
    model = saved[kind][1]
    image_inputs, text_inputs = inputs(processor)
    log_odds = pair_log_odds(model, image_inputs, text_inputs)
    if kind == "fusion":  # rerank_k (16) >= the 5 images: every pair is fused
        with torch.no_grad():
            image_embeds = model.vlp.get_image_features(**image_inputs)
            text_embeds = model.vlp.get_text_features(**text_inputs)
        expected = log_odds + image_embeds @ text_embeds.t()
    else:
        expected = torch.sigmoid(log_odds)
    result = retrievers[kind](IMAGES, texts=TEXTS)
    for image, ranked in enumerate(result["image_to_text"]):
        assert_ranking(ranked, *ranking_of(expected[image]))
    for text, ranked in enumerate(result["text_to_image"]):
        assert_ranking(ranked, *ranking_of(expected[:, text]))
    top = retrievers[kind](IMAGES, texts=TEXTS, top_k=2)
    assert top["image_to_text"] == [ranked[:2] for ranked in result["image_to_text"]]


def test_unified_with_a_dual_encoder_shortlist(saved, processor):
    dual_folder = str(saved["dual"][0])
    retriever = pipeline(TASK, model=str(saved["unified"][0]), shortlist_model=dual_folder)
    assert retriever.shortlister.family == "dual"
    image_inputs, text_inputs = inputs(processor)
    with torch.no_grad():
        similarity = saved["dual"][1](**image_inputs, **text_inputs).logits_per_image
    itm = torch.sigmoid(pair_log_odds(saved["unified"][1], image_inputs, text_inputs))
    result = retriever(IMAGES, texts=TEXTS, rerank_k=2)
    for image, ranked in enumerate(result["image_to_text"]):
        shortlist = similarity[image].topk(2).indices
        scores = itm[image, shortlist]
        order = scores.argsort(descending=True)
        assert_ranking(ranked, shortlist[order].tolist(), scores[order].tolist())
    for text, ranked in enumerate(result["text_to_image"]):
        shortlist = similarity[:, text].topk(2).indices
        scores = itm[shortlist, text]
        order = scores.argsort(descending=True)
        assert_ranking(ranked, shortlist[order].tolist(), scores[order].tolist())


@pytest.mark.parametrize("kind", ["dual-sigmoid", "fusion", "unified"])
def test_batch_size_does_not_change_the_result(kind, retrievers):
    retriever = retrievers[kind]
    one = retriever(IMAGES, texts=TEXTS, batch_size=1, rerank_k=3)
    four = retriever(IMAGES, texts=TEXTS, batch_size=4, rerank_k=3)
    for direction in ("image_to_text", "text_to_image"):
        for a, b in zip(one[direction], four[direction]):
            assert [entry["index"] for entry in a] == [entry["index"] for entry in b]
            assert [entry["score"] for entry in a] == pytest.approx([entry["score"] for entry in b], abs=1e-6)


def test_region_input_models(processor):
    """A unified model on detector regions takes {"visual_feats", "visual_pos"} dicts instead of images."""
    tokenizer = processor.tokenizer
    config = get_preset_config(
        "unified-tiny", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, visual_input="regions",
        visual_feat_dim=8, box_embedding="linear", visual_pos_dim=4, embedding_norm="separate",
    )  # fmt: skip
    torch.manual_seed(0)
    model = perturb(VLPUnifiedForImageTextRetrieval(config))
    region_processor = VLPProcessor(image_processor=None, tokenizer=tokenizer)
    rng = np.random.default_rng(0)
    regions = []
    for count in (3, 5):
        corners = np.sort(rng.random((count, 2, 2)), axis=1)
        boxes = np.concatenate([corners[:, 0], corners[:, 1]], axis=1).astype(np.float32)  # x1 y1 <= x2 y2
        regions.append({"visual_feats": rng.standard_normal((count, 8)).astype(np.float32), "visual_pos": boxes})
    retriever = pipeline(TASK, model=model, processor=region_processor)
    result = retriever(regions, texts=TEXTS[:3])
    visual = dict(region_processor(visual_feats=[r["visual_feats"] for r in regions],
                                   visual_pos=[r["visual_pos"] for r in regions], return_tensors="pt"))  # fmt: skip
    text = dict(region_processor(text=TEXTS[:3], padding=True, truncation=True, max_length=16, return_tensors="pt"))
    with torch.no_grad():
        for image, ranked in enumerate(result["image_to_text"]):
            count = 3
            expected = torch.sigmoid(model(
                **{name: value[image : image + 1].expand(count, *value.shape[1:]) for name, value in visual.items()},
                **text,
            ).logits)  # fmt: skip
            assert_ranking(ranked, *ranking_of(expected))
    with pytest.raises(ValueError, match="visual_feats"):
        retriever(IMAGES[:2], texts=TEXTS)


# --------------------------------------------------------------------------------------------------------------
# Hub
# --------------------------------------------------------------------------------------------------------------


def test_pushed_checkpoint_loads_by_repo_id(saved, retrievers, hub, tmp_path):
    api = HfApi(endpoint=hub.url, token=DEFAULT_TOKEN)
    folder = shutil.copytree(saved["unified"][0], tmp_path / "push")
    api.create_repo("tester/unified-retrieval")
    api.upload_folder(folder_path=str(folder), repo_id="tester/unified-retrieval")
    retriever = pipeline(TASK, model="tester/unified-retrieval")
    assert type(retriever.model) is VLPUnifiedForImageTextRetrieval
    assert retriever(IMAGES, texts=TEXTS) == retrievers["unified"](IMAGES, texts=TEXTS)


# --------------------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------------------


def test_bad_input_is_refused(retrievers, saved, processor):
    retriever = retrievers["dual"]
    for texts, message in ((None, "`texts` is missing"), ([], "`texts` is an empty list"),
                           (["a red star", ""], r"`texts\[1\]` is ''"), (["  "], r"`texts\[0\]`")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            retriever(IMAGES, texts=texts)
    for images in (None, []):
        with pytest.raises(ValueError, match="`images` is"):
            retriever(images, texts=TEXTS)
    for top_k in (0, -1, 1.5):
        with pytest.raises(ValueError, match="`top_k` must be a positive int"):
            retriever(IMAGES, texts=TEXTS, top_k=top_k)
    with pytest.raises(ValueError, match="`rerank_k` must be a positive int"):
        retrievers["fusion"](IMAGES, texts=TEXTS, rerank_k=0)
    with pytest.raises(ValueError, match="this model reads images"):
        retriever([{"visual_feats": np.zeros((2, 8)), "visual_pos": np.zeros((2, 4))}], texts=TEXTS)
    # a model of another task
    tokenizer = processor.tokenizer
    vqa_model = VLPUnifiedForQuestionAnswering(get_preset_config("unified-tiny", vocab_size=len(tokenizer)))
    with pytest.raises(ValueError, match="needs a VLPDualEncoderModel.*got VLPUnifiedForQuestionAnswering"):
        pipeline(TASK, model=vqa_model, processor=processor)
    with pytest.raises(ValueError, match="`shortlist_model` is for unified models"):
        pipeline(TASK, model=str(saved["fusion"][0]), shortlist_model=str(saved["dual"][0]))
    with pytest.raises(ValueError, match="`shortlist_model` must be a VLPDualEncoderModel"):
        pipeline(TASK, model=str(saved["unified"][0]), shortlist_model=str(saved["fusion"][0]))


def test_registration_is_idempotent_and_not_custom_code(retrievers, tmp_path):
    from transformers.pipelines import PIPELINE_REGISTRY

    from modeling_vlp.pipelines import VLPVisualQuestionAnsweringPipeline, register_pipelines

    register_pipelines()
    register_pipelines()
    for task, impl in ((TASK, VLPImageTextRetrievalPipeline), ("visual-question-answering",
                                                                VLPVisualQuestionAnsweringPipeline)):  # fmt: skip
        entry = PIPELINE_REGISTRY.supported_tasks[task]
        assert entry["impl"] is impl and entry["type"] == "multimodal"
        assert not hasattr(impl, "_registered_impl")
    retrievers["dual"].save_pretrained(tmp_path)
    assert "custom_pipelines" not in json.loads((tmp_path / "config.json").read_text())
    reloaded = pipeline(TASK, model=str(tmp_path))
    assert reloaded(IMAGES, texts=TEXTS) == retrievers["dual"](IMAGES, texts=TEXTS)
