"""BLIP captioning conversion: transformers `BlipForConditionalGeneration` -> `VLPForConditionalGeneration`, with
parity of the logits and the LM loss (fp32, eval) and identical generated tokens (greedy and beam search).

The source is built here from a tiny `BlipConfig` with seeded random weights, every parameter perturbed (biases and
LayerNorms included) so that a wrong mapping shows; nothing is downloaded."""

import contextlib
import io

import pytest
import torch
from transformers import BlipConfig, BlipForConditionalGeneration

from modeling_vlp.conversion import convert_blip
from modeling_vlp.modeling_captioning import VLPForConditionalGeneration


pytestmark = pytest.mark.usefixtures("one_thread")

TOLERANCE = 1e-4
BOS, SEP, PAD = 99, 3, 0


def tiny_blip(label_smoothing: float = 0.0, seed: int = 0) -> BlipForConditionalGeneration:
    config = BlipConfig(
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                           num_attention_heads=4),
        text_config=dict(vocab_size=100, hidden_size=32, encoder_hidden_size=32, intermediate_size=37,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=24, bos_token_id=BOS,
                         sep_token_id=SEP, pad_token_id=PAD, eos_token_id=2, label_smoothing=label_smoothing),
    )  # fmt: skip
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model.eval()


def run_main(argv) -> tuple[int, str]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = convert_blip.main(argv)
    return status, stdout.getvalue()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    source = tiny_blip(label_smoothing=0.1)
    source_dir = tmp_path_factory.mktemp("blip")
    source.save_pretrained(source_dir)
    output_dir = source_dir / "converted"
    status, printed = run_main(["--source", str(source_dir), "--output", str(output_dir)])
    assert status == 0, printed
    assert "PASSED" in printed and "same tokens" in printed
    return source, VLPForConditionalGeneration.from_pretrained(output_dir).eval()


def test_converted_config_is_the_blip_preset_with_the_source_sizes(converted):
    source, model = converted
    config = model.config
    assert config.decoder_start_token_id == BOS and config.text_config.eos_token_id == SEP
    assert config.label_smoothing == pytest.approx(0.1) and config.lm_head_transform
    assert not config.text_config.pre_norm and config.vision_config.final_norm == "all"
    assert model.lm_head.decoder.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


@torch.no_grad()
def test_logits_and_loss_match_blip(converted):
    source, model = converted
    inputs = convert_blip.parity_inputs(source.config, seed=3)
    assert not inputs["attention_mask"].all()
    reference = source(**inputs)
    ours = model(**inputs)
    real = inputs["attention_mask"].bool()
    logits_diff = (reference.logits[real] - ours.logits[real]).abs().max().item()
    assert logits_diff <= TOLERANCE, logits_diff
    assert abs(reference.loss.item() - ours.loss_lm.item()) <= TOLERANCE
    assert (reference.image_embeds - ours.captioning_output.image_hidden_states).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("strategy", [dict(num_beams=1), dict(num_beams=3)])
@torch.no_grad()
def test_generated_tokens_match_blip(converted, strategy):
    source, model = converted
    pixel_values = convert_blip.parity_inputs(source.config, seed=4)["pixel_values"]
    kwargs = dict(max_new_tokens=10, do_sample=False, **strategy)
    theirs = source.generate(pixel_values=pixel_values, **kwargs)
    for use_cache in (True, False):
        ours = model.generate(pixel_values=pixel_values, use_cache=use_cache, **kwargs)
        assert torch.equal(ours, theirs), (use_cache, ours, theirs)
    assert len(set(theirs[:, 1:].flatten().tolist())) > 3  # varied captions, not one repeated token


def test_a_wrong_weight_fails_parity_and_writes_nothing(tmp_path, monkeypatch):
    source = tiny_blip(seed=5)
    source.save_pretrained(tmp_path / "blip")
    convert_state_dict = convert_blip.convert_state_dict

    def swapped(state_dict):
        # The self-attention key and value of the first decoder layer exchanged: a plausible mapping bug.
        converted = convert_state_dict(state_dict)
        prefix = "vlp.decoder.layers.0.self_attn."
        for kind in ("weight", "bias"):
            key, value = f"{prefix}k_proj.{kind}", f"{prefix}v_proj.{kind}"
            converted[key], converted[value] = converted[value], converted[key]
        return converted

    monkeypatch.setattr(convert_blip, "convert_state_dict", swapped)
    status, printed = run_main(["--source", str(tmp_path / "blip"), "--output", str(tmp_path / "out")])
    assert status == 1 and "FAILED" in printed
    assert not (tmp_path / "out").exists()
