"""The captioning family: shapes, the LM loss and its padding, the KV cache (step-by-step logits, cached vs uncached
generation for greedy, beam search and sampling), input errors, save/load, and the `lm` / `itc` objectives in
`VLPTrainer`."""

import pytest
import torch
from transformers import TrainingArguments
from vlp_testing import RowsDataset

from modeling_vlp.configuration_captioning import VLPCaptioningConfig
from modeling_vlp.modeling_captioning import (
    VLPCaptioningModel,
    VLPForConditionalGeneration,
)
from modeling_vlp.presets import get_preset_config
from modeling_vlp.training.family_objectives import compute_objective_losses, VLPObjectiveArguments
from modeling_vlp.training.trainer import VLPTrainer

pytestmark = pytest.mark.usefixtures("one_thread")

BOS, EOS, PAD = 1, 2, 0


def tiny_model(seed: int = 0, scale: float = 0.3, **overrides) -> VLPForConditionalGeneration:
    """captioning-tiny with weights spread wider than the init (scale), so that greedy captions are not one repeated
    token and a wrong cache shows."""
    torch.manual_seed(seed)
    model = VLPForConditionalGeneration(get_preset_config("captioning-tiny", **overrides))
    generator = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)
    return model.eval()


def coca_overrides(**extra) -> dict:
    """Three decoder layers: one unimodal, then cross-attention in every other multimodal layer; a contrastive head
    and the BERT prediction head."""
    return dict(
        text_config={"num_hidden_layers": 3}, num_unimodal_layers=1, cross_attention_every=2, projection_dim=16,
        lm_head_transform=True, **extra,
    )  # fmt: skip


def images(batch_size: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch_size, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def captions(batch_size: int = 3, length: int = 7, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """bos + words + eos, right-padded: row i is `i` tokens shorter than the longest."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, 99, (batch_size, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    input_ids[:, 0] = BOS
    for row in range(batch_size):
        real = length - row
        input_ids[row, real - 1] = EOS
        input_ids[row, real:] = PAD
        attention_mask[row, real:] = 0
    return input_ids, attention_mask


def test_forward_shapes_and_outputs():
    model = tiny_model()
    input_ids, attention_mask = captions()
    outputs = model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=images(3), labels=input_ids)
    assert outputs.logits.shape == (3, 7, 99)
    assert outputs.captioning_output.image_hidden_states.shape == (3, 17, 32)  # 16 patches + class token
    assert outputs.loss.ndim == 0 and torch.equal(outputs.loss, outputs.loss_lm)
    assert outputs.loss_itc is None and outputs.captioning_output.image_embeds is None
    assert outputs.past_key_values is None  # no cache with labels

    base = VLPCaptioningModel(model.config)
    hidden = base(input_ids=input_ids, pixel_values=images(3), output_hidden_states=True, output_attentions=True)
    assert hidden.last_hidden_state.shape == (3, 7, 32)
    assert len(hidden.hidden_states) == 3 and len(hidden.cross_attentions) == 2

    coca = tiny_model(**coca_overrides())
    layers = coca.vlp.decoder.layers
    assert [layer.cross_attn is not None for layer in layers] == [False, True, False]
    outputs = coca(input_ids=input_ids, attention_mask=attention_mask, pixel_values=images(3), labels=input_ids,
                   return_loss=True)  # fmt: skip
    embeds = outputs.captioning_output
    assert embeds.image_embeds.shape == embeds.text_embeds.shape == (3, 16)
    assert torch.allclose(embeds.text_embeds.norm(dim=-1), torch.ones(3))
    expected = outputs.loss_lm + outputs.loss_itc
    assert torch.allclose(outputs.loss, expected)


def test_loss_ignores_padding_and_matches_a_hand_computed_shifted_cross_entropy():
    model = tiny_model()
    input_ids, attention_mask = captions()
    pixel_values = images(3)
    padded = model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, labels=input_ids)
    total, count = 0.0, 0
    for row in range(3):
        real = int(attention_mask[row].sum())
        ids = input_ids[row : row + 1, :real]
        alone = model(input_ids=ids, pixel_values=pixel_values[row : row + 1], labels=ids)
        torch.testing.assert_close(alone.logits[0], padded.logits[row, :real], atol=1e-5, rtol=0)
        log_probs = alone.logits[0, :-1].log_softmax(-1)
        by_hand = -log_probs[torch.arange(real - 1), ids[0, 1:]].mean()
        torch.testing.assert_close(alone.loss_lm, by_hand, atol=1e-5, rtol=0)
        total, count = total + alone.loss_lm * (real - 1), count + real - 1
    torch.testing.assert_close(padded.loss_lm, total / count, atol=1e-5, rtol=0)
    # -100 labels and the pad token are ignored alike.
    masked = input_ids.masked_fill(attention_mask == 0, -100)
    again = model(input_ids=input_ids, pixel_values=pixel_values, labels=masked)
    torch.testing.assert_close(again.loss_lm, padded.loss_lm, atol=1e-6, rtol=0)
    smoothed = tiny_model(label_smoothing=0.1)(input_ids=input_ids, pixel_values=pixel_values, labels=input_ids)
    assert smoothed.loss_lm > padded.loss_lm


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_step_by_step_decoding_with_the_cache_equals_a_full_forward(attn_implementation):
    model = tiny_model(**coca_overrides())
    model.set_attn_implementation(attn_implementation)
    input_ids, _ = captions(batch_size=2, length=8)
    input_ids[:, -1] = 7  # no padding in this check
    pixel_values = images(2)
    full = model(input_ids=input_ids, pixel_values=pixel_values)
    step = model(input_ids=input_ids[:, :3], pixel_values=pixel_values, use_cache=True)  # a 3-token prefill
    logits, cache = [step.logits], step.past_key_values
    assert cache.get_seq_length() == 3 and cache.cross_attention_cache.get_seq_length(1) == 17
    image_tokens = step.captioning_output.image_hidden_states
    step = model(input_ids=input_ids[:, 3:5], image_hidden_states=image_tokens, past_key_values=cache)
    logits.append(step.logits)  # a 2-token chunk after the cache: the causal mask is offset
    for position in range(5, 8):
        step = model(
            input_ids=input_ids[:, position : position + 1], image_hidden_states=image_tokens,
            past_key_values=step.past_key_values, use_cache=True,
        )  # fmt: skip
        logits.append(step.logits)
    diff = (torch.cat(logits, dim=1) - full.logits).abs().max().item()
    assert diff < 1e-5, diff


def _generate(model, use_cache, seed=0, **kwargs):
    torch.manual_seed(seed)
    return model.generate(pixel_values=images(3, seed=4), max_new_tokens=10, use_cache=use_cache, **kwargs)


@pytest.mark.parametrize(
    "strategy", [dict(), dict(num_beams=3), dict(num_beams=2, num_return_sequences=2), dict(do_sample=True, top_k=0)]
)
def test_cached_and_uncached_generation_give_the_same_tokens(strategy):
    model = tiny_model(seed=3, **coca_overrides())  # a seed whose greedy and beam captions vary (checked below)
    cached = _generate(model, True, **strategy)
    uncached = _generate(model, False, **strategy)
    assert torch.equal(cached, uncached)
    rows = 3 * strategy.get("num_return_sequences", 1)
    assert cached.shape[0] == rows and (cached[:, 0] == BOS).all()
    assert len(set(cached[0, 1:].tolist())) > 2  # a varied caption, so that a broken cache would show


def test_generation_encodes_the_image_once_and_follows_the_full_forward(monkeypatch):
    model = tiny_model()
    calls = []
    forward = model.vlp.vision_model.forward
    monkeypatch.setattr(model.vlp.vision_model, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    sequences = _generate(model, True, num_beams=2)
    assert len(calls) == 1
    # Greedy tokens are the argmax of a full forward over the generated prefix.
    greedy = _generate(model, True)
    logits = model(input_ids=greedy[:, :-1], pixel_values=images(3, seed=4)).logits
    finished = (greedy[:, :-1] == EOS).cumsum(dim=1) > 0
    expected = torch.where(finished, PAD, logits.argmax(-1))
    assert torch.equal(greedy[:, 1:], expected)
    assert sequences.shape[0] == 3


def test_left_padded_prompts_generate_what_each_prompt_generates_alone():
    model = tiny_model()
    pixel_values = images(2, seed=4)
    prompts = [[BOS, 11, 12, 13], [BOS, 21]]
    input_ids = torch.tensor([prompts[0], [PAD, PAD, *prompts[1]]])
    attention_mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    together = model.generate(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask,
                              max_new_tokens=5, min_new_tokens=5)  # fmt: skip
    for row, prompt in enumerate(prompts):
        alone = model.generate(pixel_values=pixel_values[row : row + 1], input_ids=torch.tensor([prompt]),
                               max_new_tokens=5, min_new_tokens=5)  # fmt: skip
        assert torch.equal(together[row, -5:], alone[0, -5:]), row


def test_bad_inputs_name_the_argument():
    model = tiny_model()
    input_ids, _ = captions()
    with pytest.raises(ValueError, match="pixel_values"):
        model(input_ids=input_ids)
    with pytest.raises(ValueError, match="pixel_values"):
        model.generate(max_new_tokens=3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(pixel_values=images(2), max_new_tokens=0)
    with pytest.raises(ValueError, match=r"max_new_tokens=10.*16"):
        model.generate(pixel_values=images(2), input_ids=torch.ones(2, 8, dtype=torch.long), max_new_tokens=10)
    with pytest.raises(ValueError, match=r"`input_ids` has 16 prompt tokens.*16 positions"):
        model.generate(pixel_values=images(2), input_ids=torch.ones(2, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="`input_ids` has 3 prompts but there are 2 images"):
        model.generate(pixel_values=images(2), input_ids=torch.ones(3, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="`input_ids` has 3 rows"):
        model(input_ids=input_ids, pixel_values=images(2))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(input_ids=torch.ones(2, 17, dtype=torch.long), pixel_values=images(2))
    # Config errors come wrapped by the strict dataclass validation (an Exception naming the ValueError).
    with pytest.raises(Exception, match="text_config.causal"):
        get_preset_config("captioning-tiny", text_config={"causal": False})
    with pytest.raises(Exception, match="num_unimodal_layers"):
        get_preset_config("captioning-tiny", projection_dim=8)


def test_save_and_load_round_trip(tmp_path):
    model = tiny_model(**coca_overrides())
    model.save_pretrained(tmp_path)
    loaded = VLPForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert isinstance(loaded.config, VLPCaptioningConfig) and loaded.config.num_unimodal_layers == 1
    assert loaded.lm_head.decoder.weight.data_ptr() == loaded.get_input_embeddings().weight.data_ptr()
    input_ids, attention_mask = captions()
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, pixel_values=images(3))
    torch.testing.assert_close(loaded(**kwargs).logits, model(**kwargs).logits, atol=0, rtol=0)
    assert torch.equal(_generate(loaded, True), _generate(model, True))
    base = VLPCaptioningModel.from_pretrained(tmp_path)  # the base model reads the same checkpoint
    torch.testing.assert_close(base.decoder.embeddings.token_embedding.weight, model.get_input_embeddings().weight)


def test_lm_and_itc_objectives_train_and_log_separately(tmp_path):
    model = tiny_model(scale=0.0, **coca_overrides())
    model.train()
    input_ids, attention_mask = captions(batch_size=4, length=6)
    batch = dict(input_ids=input_ids, attention_mask=attention_mask, pixel_values=images(4))
    objective_args = VLPObjectiveArguments(objectives={"itc": 1.0, "lm": 1.0})
    _, before, _ = compute_objective_losses(model, batch, objective_args)
    arguments = dict(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=8, learning_rate=3e-3, report_to="none",
        use_cpu=True, remove_unused_columns=False, logging_steps=1, save_strategy="no",
    )  # fmt: skip
    trainer = VLPTrainer(model=model, args=TrainingArguments(**arguments), train_dataset=RowsDataset(batch),
                         objective_args=objective_args)  # fmt: skip
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss_lm" in entry]
    assert len(logged) == 8 and all("loss_itc" in entry for entry in logged)
    _, after, _ = compute_objective_losses(model.eval(), batch, objective_args)
    assert after["lm"] < before["lm"] - 0.5, (before, after)
    # Padding is masked from the labels the objective builds.
    lm_only = VLPObjectiveArguments(objectives=["lm"])
    _, losses, outputs = compute_objective_losses(model, batch, lm_only)
    direct = model(**batch, labels=input_ids.masked_fill(attention_mask == 0, -100))
    torch.testing.assert_close(losses["lm"], direct.loss_lm)
    with pytest.raises(ValueError, match="projection_dim=None"):
        compute_objective_losses(tiny_model(), batch, VLPObjectiveArguments(objectives=["itc"]))
