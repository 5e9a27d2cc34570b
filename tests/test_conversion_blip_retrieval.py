"""BLIP retrieval conversion: transformers `BlipForImageTextRetrieval` -> the fusion family with `share_text_layers`
(BLIP's text encoder, run without and with cross-attention to the image), with parity of the ITC embeddings and
scores and of the ITM logits (fp32, eval); the "image-text-retrieval" pipeline then re-ranks with the converted
model exactly as BLIP's own ITC and ITM scores say.

The source is built here from a tiny `BlipConfig` with seeded random weights, every parameter perturbed (biases and
LayerNorms included) so that a wrong mapping shows, and saved with a BLIP processor (BERT tokenizer built from a
word list); nothing is downloaded."""

import contextlib
import io

import pytest
import torch
from modeling_vlp.conversion import convert_blip_retrieval
from modeling_vlp.processors import VLPProcessor
from transformers import (
    BertTokenizer,
    BlipConfig,
    BlipForImageTextRetrieval,
    BlipImageProcessor,
    BlipProcessor,
    pipeline,
)
from vlp_testing import make_image

import modeling_vlp  # noqa: F401  (registers the pipelines)
from modeling_vlp.commands.convert import CONVERTERS
from modeling_vlp.modeling_fusion_retrieval import VLPFusionForImageTextRetrieval

pytestmark = pytest.mark.usefixtures("one_thread")

TOLERANCE = 1e-4
TEXTS = ["a red circle", "a blue star on a square", "green", "a black square", "a red star", "blue"]
WORDS = sorted({word for text in TEXTS for word in text.split()})
IMAGES = [make_image(seed) for seed in range(5)]


def build_tokenizer() -> BertTokenizer:
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    return BertTokenizer(vocab={token: index for index, token in enumerate(tokens)})


def tiny_blip(vocab_size: int, seed: int = 0) -> BlipForImageTextRetrieval:
    config = BlipConfig(
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                           num_attention_heads=4),
        text_config=dict(vocab_size=vocab_size, hidden_size=32, encoder_hidden_size=32, intermediate_size=37,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=24, bos_token_id=2,
                         sep_token_id=3, pad_token_id=0, eos_token_id=3),
        image_text_hidden_size=16,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = BlipForImageTextRetrieval(config)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model.eval()


def run_main(argv) -> tuple[int, str]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = convert_blip_retrieval.main(argv)
    return status, stdout.getvalue()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tokenizer = build_tokenizer()
    source = tiny_blip(len(tokenizer))
    source_dir = tmp_path_factory.mktemp("blip_itm")
    source.save_pretrained(source_dir)
    image_processor = BlipImageProcessor(size={"height": 32, "width": 32})
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(source_dir)
    output = source_dir / "converted"
    status, printed = run_main(["--source", str(source_dir), "--output", str(output)])
    assert status == 0, printed
    model = VLPFusionForImageTextRetrieval.from_pretrained(output, attn_implementation="eager").eval()
    return dict(source=source, source_dir=source_dir, output=output, printed=printed, model=model)


def batch(processor, images, texts) -> dict:
    inputs = processor(images=images, text=texts, padding=True, return_tensors="pt")
    assert not inputs["attention_mask"].all()  # padded texts
    return {name: inputs[name] for name in ("pixel_values", "input_ids", "attention_mask")}


@torch.no_grad()
def blip_scores(source, images, texts, processor) -> tuple[torch.Tensor, torch.Tensor]:
    """BLIP's own (images, texts) ITC cosine (`use_itm_head=False`) and ITM log-odds (`use_itm_head=True`), one
    forward per pair, on the inputs of our processor (what the pipeline feeds the converted model)."""
    cosine, log_odds = torch.empty(len(images), len(texts)), torch.empty(len(images), len(texts))
    for i, image in enumerate(images):
        for j, text in enumerate(texts):
            inputs = processor(images=[image], text=[text], return_tensors="pt")
            inputs = {name: inputs[name] for name in ("pixel_values", "input_ids", "attention_mask")}
            cosine[i, j] = source(**inputs, use_itm_head=False).itm_score[0, 0]
            itm = source(**inputs, use_itm_head=True).itm_score[0]
            log_odds[i, j] = itm[1] - itm[0]
    return cosine, log_odds


def test_itc_and_itm_match_blip(converted):
    assert "PASSED" in converted["printed"]
    for name in ("image_embeds", "text_embeds", "itc_scores", "fused_text_states", "itm_logits"):
        assert name in converted["printed"], name
    source, model = converted["source"], converted["model"]
    config = model.config
    assert config.share_text_layers and config.num_fusion_layers == 0 and config.text_config.num_hidden_layers == 2
    processor = VLPProcessor.from_pretrained(converted["output"])
    inputs = batch(processor, IMAGES[:4], TEXTS[:4])
    with torch.no_grad():
        itc = source(**inputs, use_itm_head=False)
        itm = source(**inputs, use_itm_head=True)
        ours = model(**inputs)
    real = inputs["attention_mask"].bool()
    figures = {
        "itc_scores": (itc.itm_score, ours.fusion_output.logits_per_image),
        "itm_logits": (itm.itm_score, ours.itm_logits),
        "image_states": (itc.last_hidden_state, ours.fusion_output.image_unimodal_state),
        "fused_text_states": (itm.question_embeds[real], ours.fusion_output.text_last_hidden_state[real]),
    }
    diffs = {}
    for name, (theirs, mine) in figures.items():
        diffs[name] = (theirs.double() - mine.double()).abs().max().item()
        assert diffs[name] <= TOLERANCE, (name, diffs[name])
        assert theirs.abs().max() > 1e-2, name
    # The ITC text embedding is the text layers without the image (BLIP's text encoder without encoder states).
    with torch.no_grad():
        text_feat = torch.nn.functional.normalize(source.text_proj(itc.question_embeds[:, 0]), dim=-1)
        assert (
            text_feat - model.vlp.get_text_features(inputs["input_ids"], inputs["attention_mask"])
        ).abs().max() < TOLERANCE
    print("BLIP retrieval parity, max |diff|:", {name: f"{diff:.1e}" for name, diff in diffs.items()})


def test_the_retrieval_pipeline_reranks_with_blips_scores(converted):
    """An ITC shortlist of 3 texts per image (BLIP's cosine), re-scored by ITM log-odds + cosine (the fusion
    family's score): both equal what BLIP's own model computes pair by pair."""
    processor = VLPProcessor.from_pretrained(converted["output"])
    cosine, log_odds = blip_scores(converted["source"], IMAGES, TEXTS, processor)
    retriever = pipeline("image-text-retrieval", model=str(converted["output"]))
    result = retriever(IMAGES, texts=TEXTS, rerank_k=3)
    for image, ranked in enumerate(result["image_to_text"]):
        shortlist = cosine[image].topk(3).indices.tolist()
        assert sorted(entry["index"] for entry in ranked) == sorted(shortlist)
        expected = (log_odds + cosine)[image]
        assert [entry["index"] for entry in ranked] == sorted(shortlist, key=lambda text: -float(expected[text]))
        for entry in ranked:
            assert abs(entry["score"] - float(expected[entry["index"]])) < 1e-3
    for text, ranked in enumerate(result["text_to_image"]):
        shortlist = cosine[:, text].topk(3).indices.tolist()
        assert sorted(entry["index"] for entry in ranked) == sorted(shortlist)
        expected = (log_odds + cosine)[:, text]
        assert [entry["index"] for entry in ranked] == sorted(shortlist, key=lambda image: -float(expected[image]))
    # ITM re-ranking changes BLIP's ITC order somewhere, so the test tells re-ranking from ITC alone.
    itc_first = [int(cosine[image].argmax()) for image in range(len(IMAGES))]
    assert itc_first != [ranked[0]["index"] for ranked in result["image_to_text"]]


def test_a_wrong_weight_fails_parity_and_writes_nothing(converted, tmp_path, monkeypatch):
    original = convert_blip_retrieval.convert_state_dict

    def swapped(state_dict):
        renamed = original(state_dict)
        # The text layer's cross-attention LayerNorm swapped with its self-attention one: ITC is unchanged, ITM not.
        a, b = "vlp.text_encoder.layers.1.layer_norm_cross.weight", "vlp.text_encoder.layers.1.layer_norm1.weight"
        renamed[a], renamed[b] = renamed[b], renamed[a]
        return renamed

    monkeypatch.setattr(convert_blip_retrieval, "convert_state_dict", swapped)
    status, printed = run_main(["--source", str(converted["source_dir"]), "--output", str(tmp_path / "out")])
    assert status == 1 and "FAILED" in printed
    assert not (tmp_path / "out").exists()
    assert "blip_retrieval" in CONVERTERS


def test_share_text_layers_needs_merge_fusion_without_fusion_layers():
    from modeling_vlp import get_preset_config

    with pytest.raises(Exception, match="share_text_layers"):
        get_preset_config("fusion-tiny", share_text_layers=True)  # 2 fusion layers


def test_a_shared_layer_model_trains_with_the_fusion_objectives():
    """`share_text_layers` through ALBEF's objectives (ITC, hard-negative ITM, MLM): finite losses, gradients into
    the text layers' self- and cross-attention alike."""
    from modeling_vlp import VLPFusionForPreTraining, get_preset_config
    from modeling_vlp.training.family_objectives import VLPObjectiveArguments, compute_objective_losses

    torch.manual_seed(0)
    model = VLPFusionForPreTraining(get_preset_config("fusion-tiny", share_text_layers=True, num_fusion_layers=0))
    generator = torch.Generator().manual_seed(0)
    vocab, size = model.config.text_config.vocab_size, model.config.vision_config.image_size
    input_ids = torch.randint(5, vocab, (4, 6), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 4:] = 0
    mlm_labels = torch.full_like(input_ids, -100)
    mlm_labels[:, 2] = input_ids[:, 2]
    batch = dict(input_ids=input_ids, attention_mask=attention_mask, mlm_labels=mlm_labels,
                 pixel_values=torch.randn(4, 3, size, size, generator=generator), image_id=torch.arange(4))  # fmt: skip
    total, losses, _ = compute_objective_losses(model, batch, VLPObjectiveArguments(objectives=["itc", "itm", "mlm"]))
    assert set(losses) == {"itc", "itm", "mlm"} and all(torch.isfinite(loss) for loss in losses.values())
    total.backward()
    layer = model.vlp.text_encoder.layers[0]
    assert layer.self_attn.q_proj.weight.grad.abs().sum() > 0 and layer.cross_attn.q_proj.weight.grad.abs().sum() > 0
