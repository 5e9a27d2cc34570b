"""`vlp pretrain --model PATH_OR_REPO_ID`: every family starts from a saved checkpoint and its processor (proved by a
run at learning rate 0 that saves the very weights it started from), a base model gets fresh heads, and the options
that would contradict the checkpoint, or a checkpoint that is not one, fail in one line naming the option."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

import modeling_vlp  # noqa: F401  (registers the Auto classes)
from modeling_vlp.commands import main
from modeling_vlp.evaluation import captioning
from modeling_vlp.families import FAMILIES
from vlp_testing import save_tiny_checkpoint, tiny_clip_config

pytestmark = pytest.mark.usefixtures("one_thread")

RUN = [
    "--num-train", "16", "--num-validation", "8", "--per-device-train-batch-size", "8",
    "--per-device-eval-batch-size", "8", "--max-steps", "2", "--logging-steps", "1", "--save-steps", "100",
    "--dataloader-num-workers", "0",
]  # fmt: skip
FROZEN = ["--learning-rate", "0", "--weight-decay", "0", "--warmup-steps", "0"]


@pytest.fixture(autouse=True)
def no_meteor(monkeypatch):
    """The captioning runs' METEOR starts a JVM (seconds a run) where java is installed: the other metrics stay."""
    metrics = captioning.caption_metrics
    without_meteor = lambda *args, meteor=None, **kwargs: metrics(*args, **kwargs, meteor=False)  # noqa: E731
    monkeypatch.setattr(captioning, "caption_metrics", without_meteor)


def saved_weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def assert_same_weights(start: dict, saved: dict, prefix: str = "") -> None:
    """Every starting weight is in the saved model unchanged (under `prefix.` when a head class wraps the base)."""
    for key, value in start.items():
        found = saved.get(key, saved.get(f"{prefix}.{key}"))
        assert found is not None, f"{key} is not in the saved model"
        assert torch.equal(found, value), f"{key} changed"


@pytest.mark.parametrize("name", list(FAMILIES))
def test_pretrain_starts_from_the_checkpoint(name, tmp_path, capsys):
    start = tmp_path / "start"
    save_tiny_checkpoint(start, name)
    output = tmp_path / "run"
    assert main(["pretrain", "--model", str(start), *RUN, *FROZEN, "--output-dir", str(output)]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["global_step"] == 2.0
    assert_same_weights(saved_weights(start), saved_weights(output))
    config = json.loads((output / "config.json").read_text())
    assert config["model_type"] == FAMILIES[name].model_type
    assert config["architectures"] == [FAMILIES[name].model_class.__name__]
    state = json.loads((output / "trainer_state.json").read_text())
    logged = {key[len("loss_"):] for entry in state["log_history"] for key in entry if key.startswith("loss_")}
    assert logged == set(FAMILIES[name].default_objectives)
    # The processor is the checkpoint's (same tokenizer files), not one trained anew.
    assert AutoTokenizer.from_pretrained(output).get_vocab() == AutoTokenizer.from_pretrained(start).get_vocab()


WITH_HEADS = [name for name, family in FAMILIES.items() if family.classes["base"] is not family.model_class]


@pytest.mark.parametrize("name", WITH_HEADS)
def test_a_base_model_gets_fresh_heads_and_keeps_its_weights(name, tmp_path, capsys, caplog):
    start = tmp_path / "base"
    base = save_tiny_checkpoint(start, name, role="base")
    output = tmp_path / "run"
    with caplog.at_level("INFO", logger="modeling_vlp.cli"):
        assert main(["pretrain", "--model", str(start), *RUN, *FROZEN, "--output-dir", str(output)]) == 0
    capsys.readouterr()
    model_class = FAMILIES[name].model_class
    if name == "captioning":  # the LM head is tied to the decoder's embeddings: nothing is missing
        assert f"Loaded every weight of {model_class.__name__}" in caplog.text
        assert f"(saved as {type(base).__name__})" in caplog.text
    else:
        assert f"was saved as {type(base).__name__}" in caplog.text and "freshly initialised" in caplog.text
    assert_same_weights(saved_weights(start), saved_weights(output), prefix=model_class.base_model_prefix)
    assert json.loads((output / "config.json").read_text())["architectures"] == [model_class.__name__]


def test_a_fusion_model_without_itc_head_trains_itm_and_mlm(tmp_path, capsys):
    """LXMERT's shape (no ITC head): ITM draws its negatives uniformly, evaluation scores every pair with ITM."""
    start = tmp_path / "lxmert"
    save_tiny_checkpoint(start, "fusion", projection_dim=None)
    output = tmp_path / "run"
    assert main(["pretrain", "--model", str(start), *RUN, *FROZEN, "--output-dir", str(output)]) == 0
    assert {"i2t_r@1", "itm_accuracy"} <= set(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    state = json.loads((output / "trainer_state.json").read_text())
    logged = {key for entry in state["log_history"] for key in entry if key.startswith("loss_")}
    assert logged == {"loss_itm", "loss_mlm"}
    assert_same_weights(saved_weights(start), saved_weights(output))
    with pytest.raises(ValueError, match="'itc' needs an ITC head, but this fusion config has projection_dim=None"):
        main(["pretrain", "--model", str(start), "--objectives", "itc,itm,mlm", *RUN,
              "--output-dir", str(tmp_path / "x")])  # fmt: skip


def test_pretrain_starts_from_a_converted_clip(tmp_path, capsys):
    """`vlp convert clip` then `vlp pretrain --model`: the converted weights, CLIP's tokenizer and image processing."""
    from transformers import CLIPImageProcessor, CLIPModel, CLIPProcessor

    from modeling_vlp.conversion import common

    config = tiny_clip_config()
    torch.manual_seed(0)
    source = tmp_path / "source"
    CLIPModel(config).save_pretrained(source)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=common.clip_bpe_tokenizer()).save_pretrained(source)
    converted = tmp_path / "out" / "clip"
    assert main(["convert", "clip", "--source", str(source), "--output", str(converted)]) == 0
    output = tmp_path / "run"
    assert main(["pretrain", "--model", str(converted), "--objectives", "itc", *RUN, *FROZEN,
                 "--output-dir", str(output)]) == 0  # fmt: skip
    assert {"i2t_r@1", "zero_shot_top1"} <= set(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    assert_same_weights(saved_weights(converted), saved_weights(output))
    assert AutoTokenizer.from_pretrained(output)("a photo")["input_ids"][0] == 49406  # CLIP's start token


def test_patch_dropout_applies_to_a_model_run(tmp_path, capsys):
    """A training-time option, not architecture: `--patch-dropout` with `--model` reaches the loaded model."""
    start = tmp_path / "start"
    save_tiny_checkpoint(start, "dual")
    output = tmp_path / "run"
    run = ["pretrain", "--model", str(start), "--patch-dropout", "0.5", *RUN, *FROZEN, "--output-dir", str(output)]
    assert main(run) == 0
    capsys.readouterr()
    assert json.loads((output / "config.json").read_text())["vision_config"]["patch_dropout"] == 0.5
    assert_same_weights(saved_weights(start), saved_weights(output))


def test_a_model_run_resumes(tmp_path, capsys, caplog):
    start = tmp_path / "start"
    save_tiny_checkpoint(start, "fusion")
    output = tmp_path / "run"
    run = ["pretrain", "--model", str(start), *RUN, *FROZEN, "--save-steps", "2", "--output-dir", str(output)]
    assert main(run) == 0
    with caplog.at_level("INFO", logger="modeling_vlp.cli"):
        assert main([*run, "--max-steps", "3"]) == 0
    assert f"Resuming from {output / 'checkpoint-2'}" in caplog.text
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["global_step"] == 3.0
    assert_same_weights(saved_weights(start), saved_weights(output))


def test_pretrain_starts_from_a_hub_repo(tmp_path, capsys, hub):
    from hub_server import DEFAULT_TOKEN
    from modeling_vlp.hub import push_folder

    start = tmp_path / "start"
    save_tiny_checkpoint(start, "dual")
    push_folder(start, "tester/dual-start", endpoint=hub.url, token=DEFAULT_TOKEN)
    output = tmp_path / "run"
    assert main(["pretrain", "--model", "tester/dual-start", *RUN, *FROZEN, "--output-dir", str(output)]) == 0
    capsys.readouterr()
    assert_same_weights(saved_weights(start), saved_weights(output))


def test_bad_model_options_fail_in_one_line(tmp_path):
    start = tmp_path / "start"
    save_tiny_checkpoint(start, "dual")
    out = ["--output-dir", str(tmp_path / "run")]
    cases = {
        ("--preset", "dual-small"): "--preset cannot be combined with --model",
        ("--vision-layers", "3", "--width", "64"): "--vision-layers, --width cannot be combined with --model",
        ("--vocab-size", "300"): "--vocab-size cannot be combined with --model",
        ("--image-size", "64"): "--model fixes the architecture",
        ("--family", "fusion"): "--family 'fusion' contradicts --model .*, a 'dual' checkpoint",
        ("--max-text-length", "500"): "--max-text-length 500 exceeds the 16 tokens --model",
    }
    for options, message in cases.items():
        with pytest.raises(ValueError, match=message) as error:
            main(["pretrain", "--model", str(start), *options, *RUN, *out])
        assert "\n" not in str(error.value), options
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"--model '.*empty': the folder has no config.json; --model takes a folder"):
        main(["pretrain", "--model", str(empty), *out])
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match=r"has model_type 'bert', which no family trains; --model accepts the model "
                       r"types vlp_dual_encoder \(dual\)") as error:  # fmt: skip
        main(["pretrain", "--model", str(other), *out])
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="no config.json could be read"):
        main(["pretrain", "--model", str(tmp_path / "missing"), *out])


def test_a_vqa_checkpoint_continues_pretraining_without_its_answer_head(tmp_path, capsys, caplog):
    start = tmp_path / "vqa"
    save_tiny_checkpoint(start, "unified", role="question_answering", num_labels=3)
    output = tmp_path / "run"
    with caplog.at_level("WARNING", logger="modeling_vlp.cli"):
        assert main(["pretrain", "--model", str(start), *RUN, *FROZEN, "--output-dir", str(output)]) == 0
    capsys.readouterr()
    assert "have no place in VLPUnifiedForPreTraining and are left out (classifier)" in caplog.text
    start_weights = {key: value for key, value in saved_weights(start).items() if not key.startswith("classifier")}
    assert_same_weights(start_weights, saved_weights(output), prefix="unified")
