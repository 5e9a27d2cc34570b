"""open_clip CoCa -> the captioning family (`vlp convert open_clip` dispatches on the model kind).

A tiny CoCa config is registered the way tests/test_conversion.py registers its tiny CLIP configs and built with
seeded random weights (nothing is downloaded). The converter's parity check (contrastive embeddings, captioning
logits, open_clip's CoCaLoss terms, greedy tokens, processor) must pass, and the converted folder is checked here
again, independently, after a save / load round trip.
"""

import contextlib
import io
import json
import os

import open_clip
import pytest
import torch

import modeling_vlp  # noqa: F401  (registers the Auto classes)
from modeling_vlp import VLPForConditionalGeneration
from modeling_vlp.conversion import common, convert_open_clip
from modeling_vlp.processors import VLPProcessor

TOLERANCE = 1e-4
GENERATED = 6
# Widths differ where open_clip allows (vision 48, pooler / text / decoder 32), the pooler's kdim != embed_dim
# exercises nn.MultiheadAttention's separate q/k/v weights; an odd number of pooler queries; QuickGELU.
TINY_COCA = {
    "embed_dim": 32, "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 48, "head_width": 12, "patch_size": 8,
                   "attentional_pool": True, "attn_pooler_heads": 4, "attn_pooler_queries": 7, "output_tokens": True},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2,
                 "embed_cls": True, "output_tokens": True},
    "multimodal_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
    "custom_text": True,
}  # fmt: skip
NAME = "vlp-test-tiny-coca"


def run_main(argv) -> tuple[int, str]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = convert_open_clip.main(argv)
    return status, stdout.getvalue()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("coca")
    config_path = folder / f"{NAME}.json"
    config_path.write_text(json.dumps(TINY_COCA))
    open_clip.add_model_config(str(config_path))
    torch.manual_seed(0)
    source = open_clip.create_model(NAME, pretrained=None).eval()
    with torch.no_grad():
        # open_clip leaves the decoder's vocabulary projection as `torch.empty` (its init_parameters is never
        # called), and biases / LayerNorms at 0 / 1: give every weight a seeded non-trivial value.
        torch.nn.init.normal_(source.text_decoder.text_projection, std=32**-0.5)
        for name, parameter in source.named_parameters():
            if name.endswith("bias") or "ln_" in name:
                parameter.add_(0.1 * torch.randn_like(parameter))
    checkpoint = str(folder / "coca.pt")
    torch.save(source.state_dict(), checkpoint)
    output = str(folder / "converted")
    status, report = run_main(["--model-config", str(config_path), "--checkpoint", checkpoint, "--output", output,
                               "--generate-tokens", str(GENERATED)])  # fmt: skip
    print(report)
    return dict(source=source, output=output, status=status, report=report)


def test_kind_dispatch_and_refusals(converted):
    assert convert_open_clip.model_kind(NAME) == "coca"
    assert convert_open_clip.model_kind("ViT-B-32") == "clip"
    with pytest.raises(ValueError, match="not a CoCa|embed_cls"):
        model = open_clip.create_model(NAME, pretrained=None)
        model.text.cls_emb = None
        convert_open_clip.convert_coca_config(model, common.clip_bpe_tokenizer(pad_token="!", model_max_length=16))


def test_coca_converts_with_parity(converted):
    assert converted["status"] == 0, converted["report"]
    assert "PASSED" in converted["report"] and "same tokens" in converted["report"]
    config = VLPForConditionalGeneration.config_class.from_pretrained(converted["output"])
    assert (config.text_cls_token, config.separate_cross_attention, config.attentional_pool_queries) == ("legacy", True, 7)
    assert config.text_config.num_hidden_layers == 2 + 2 * 2 and config.num_unimodal_layers == 2


@torch.no_grad()
def test_converted_folder_matches_open_clip(converted):
    """After save / load: our processor's inputs, open_clip's embeddings, logits and greedy tokens."""
    source = converted["source"]
    model = VLPForConditionalGeneration.from_pretrained(converted["output"]).eval()
    processor = VLPProcessor.from_pretrained(converted["output"])
    images, texts = common.parity_images(seed=7), ["a cat", "two dogs on a red sofa", "a very long caption " * 8]
    inputs = processor(images=images[:3], text=texts, return_tensors="pt")
    tokenizer = open_clip.get_tokenizer(NAME)
    assert torch.equal(inputs["input_ids"], tokenizer(texts))  # 0-padded, truncated to the context
    pixel_values, input_ids = inputs["pixel_values"], inputs["input_ids"]
    ours = model(**inputs)
    diffs = {
        "image_embeds": common.max_abs_diff(source.encode_image(pixel_values), ours.captioning_output.image_embeds),
        "text_embeds": common.max_abs_diff(source.encode_text(input_ids), ours.captioning_output.text_embeds),
    }
    reference_logits = source(pixel_values, input_ids, output_labels=False)["logits"]
    real = inputs["attention_mask"].bool()
    diffs["logits"] = common.max_abs_diff(reference_logits[real], ours.logits[real])
    print(f"CoCa parity (fp32, max abs diff): {diffs}")
    assert max(diffs.values()) <= TOLERANCE, diffs
    # The logits are not trivially equal: another caption changes them.
    assert common.max_abs_diff(ours.logits[0, 0], ours.logits[1, 0]) > 1e-3
    # open_clip's legacy CLS mask is what the weights need: the "correct" mask gives other padded text embeddings.
    correct = VLPForConditionalGeneration.from_pretrained(converted["output"], text_cls_token="correct").eval()
    assert common.max_abs_diff(correct(**inputs).captioning_output.text_embeds, ours.captioning_output.text_embeds) > 1e-4
    theirs = convert_open_clip.open_clip_greedy(source, pixel_values, GENERATED, 49407, 49406)
    mine = model.generate(pixel_values=pixel_values, max_new_tokens=GENERATED, do_sample=False, pad_token_id=0)
    assert theirs.shape == (3, GENERATED + 1) and torch.equal(theirs, mine)


@pytest.mark.skipif(
    not os.environ.get("VLP_SLOW_TESTS"),
    reason="250M-parameter open_clip coca_ViT-B-32 (minutes on 2 CPU cores; the tiny config covers the same code); "
    "set VLP_SLOW_TESTS=1 to run it",
)
def test_coca_vit_b_32(tmp_path):
    torch.manual_seed(0)
    source = open_clip.create_model("coca_ViT-B-32", pretrained=None).eval()
    with torch.no_grad():
        torch.nn.init.normal_(source.text_decoder.text_projection, std=512**-0.5)  # torch.empty in open_clip
    checkpoint = str(tmp_path / "coca.pt")
    torch.save(source.state_dict(), checkpoint)
    status, report = run_main(["--model-name", "coca_ViT-B-32", "--checkpoint", checkpoint, "--output",
                               str(tmp_path / "converted"), "--generate-tokens", "3"])  # fmt: skip
    print(report)
    assert status == 0, report
