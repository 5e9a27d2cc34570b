"""A damaged newest checkpoint (truncated model, optimizer, scheduler or RNG file, an empty trainer_state.json) is
skipped with one log line and the run resumes from the previous complete one; trainer_state.json is written
atomically; the Hub token, in any spelling, reaches the push and nothing else (training_args.bin, logs, card)."""

import json
import logging
import os
import shutil

import pytest
import torch
from huggingface_hub import constants
from transformers import TrainerState

import modeling_vlp  # noqa: F401  (registers the Auto classes)
from modeling_vlp.commands import main
from modeling_vlp.commands.common import checkpoint_problem, find_resume_checkpoint
from modeling_vlp.training.trainer import AtomicTrainerState

from hub_server import DEFAULT_TOKEN, LocalHub

pytestmark = pytest.mark.usefixtures("one_thread")

RUN = [
    "pretrain", "--family", "dual", "--preset", "dual-tiny", "--num-train", "32", "--num-validation", "8",
    "--per-device-train-batch-size", "8", "--per-device-eval-batch-size", "8", "--vocab-size", "100",
    "--max-text-length", "16", "--save-steps", "1", "--save-total-limit", "3", "--logging-steps", "1",
    "--dataloader-num-workers", "0", "--report-to", "none",
]  # fmt: skip
CORRUPTIONS = {  # file of the newest checkpoint -> how it is damaged
    "model.safetensors": "truncated",
    "optimizer.pt": "truncated",
    "scheduler.pt": "truncated",
    "rng_state.pth": "truncated",
    "trainer_state.json": "empty",
}


@pytest.fixture(scope="module")
def logs():
    """Every record of modeling_vlp, transformers and huggingface_hub, at DEBUG."""
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler, names = Keep(level=logging.DEBUG), ("modeling_vlp", "transformers", "huggingface_hub", "")
    levels = {name: logging.getLogger(name).level for name in names}
    receivers = ("", "transformers")  # transformers' logger does not propagate to the root logger
    for name in names:
        logging.getLogger(name).setLevel(logging.DEBUG)
    for name in receivers:
        logging.getLogger(name).addHandler(handler)
    yield records
    for name in receivers:
        logging.getLogger(name).removeHandler(handler)
    for name in names:
        logging.getLogger(name).setLevel(levels[name])


def skipped_lines(records, start: int = 0) -> list[str]:
    return [r.getMessage() for r in records[start:] if r.getMessage().startswith("Skipping ")]


@pytest.fixture(scope="module")
def run(tmp_path_factory, logs):
    """A 3-step run saving a checkpoint at every step, pushed with the token given as --hub_token."""
    hub_dir = tmp_path_factory.mktemp("hub_home")
    with pytest.MonkeyPatch.context() as patch:
        for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
            patch.delenv(name, raising=False)
        patch.setattr(constants, "HF_HUB_OFFLINE", False)
        patch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        patch.setattr(constants, "HF_TOKEN_PATH", str(hub_dir / "token"))
        patch.setattr(constants, "HF_STORED_TOKENS_PATH", str(hub_dir / "stored_tokens"))
        (hub_dir / "harnesses.json").write_text(json.dumps({"standardEnvVars": [], "harnesses": {}}))
        patch.setattr(constants, "AGENT_HARNESSES_PATH", str(hub_dir / "harnesses.json"), raising=False)
        output_dir = tmp_path_factory.mktemp("run") / "out"
        with LocalHub() as server:
            status = main([
                *RUN, "--max-steps", "3", "--output-dir", str(output_dir), "--push-to-hub", "tester/run",
                "--hub_endpoint", server.url, "--hub_token", DEFAULT_TOKEN,
            ])  # fmt: skip
            commits = server.commits("tester/run")
            card = server.file("tester/run", "README.md")
    assert status == 0
    return {"output_dir": output_dir, "commits": commits, "card": card, "records": list(logs)}


def test_the_underscore_token_option_reaches_the_push_only(run):
    # The strict Hub refuses a write without the token: a commit means the push used it.
    assert run["commits"] and "model.safetensors" in run["commits"][-1].files
    assert DEFAULT_TOKEN.encode() not in run["card"]
    output_dir = run["output_dir"]
    pickles = sorted(output_dir.rglob("training_args.bin"))
    assert len(pickles) == 4  # the output folder and its three checkpoints
    for path in pickles:
        assert torch.load(path, weights_only=False).hub_token is None, path
    for path in output_dir.rglob("*"):
        if path.is_file():
            assert DEFAULT_TOKEN.encode() not in path.read_bytes(), path
    assert not any(DEFAULT_TOKEN in record.getMessage() for record in run["records"])


def test_every_spelling_of_the_token_option_is_taken_from_training_arguments():
    from modeling_vlp.commands.common import split_push_arguments

    for spelling in (["--hub_token", "T"], ["--hub-token=T"], ["--hub_token=T"], ["--hub_tok", "T"], ["--hub-to", "T"]):
        push, rest = split_push_arguments([*spelling, "--push-to-hub", "a/b", "--output_dir", "x"])
        assert push.hub_token == "T" and rest == ["--output_dir", "x"], spelling
    push, rest = split_push_arguments(["--hub_model_id", "m", "--push_to_hub", "a/b", "--hub_endpoint", "http://h"])
    assert (push.push_to_hub, push.hub_endpoint, rest) == ("a/b", "http://h", ["--hub_model_id", "m"])


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(run, tmp_path, name, caplog):
    output_dir = tmp_path / "out"
    shutil.copytree(run["output_dir"], output_dir)
    newest = output_dir / "checkpoint-3"
    assert find_resume_checkpoint(str(output_dir)) == str(newest) and checkpoint_problem(str(newest)) is None
    data = (newest / name).read_bytes()
    (newest / name).write_bytes(b"" if CORRUPTIONS[name] == "empty" else data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="modeling_vlp.cli"):
        assert find_resume_checkpoint(str(output_dir)) == str(output_dir / "checkpoint-2")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Skipping ")]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert lines[0].startswith(f"Skipping {newest}: {name} cannot be read ("), lines[0]
    # Both newest damaged: the one before.
    (output_dir / "checkpoint-2" / name).write_bytes(b"")
    assert find_resume_checkpoint(str(output_dir)) == str(output_dir / "checkpoint-1")


def test_the_run_resumes_from_the_previous_checkpoint(run, tmp_path, logs):
    output_dir = tmp_path / "out"
    shutil.copytree(run["output_dir"], output_dir)
    optimizer = output_dir / "checkpoint-3" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    start = len(logs)
    assert main([*RUN, "--max-steps", "4", "--output-dir", str(output_dir)]) == 0
    messages = [r.getMessage() for r in logs[start:]]
    assert skipped_lines(logs, start) == [
        f"Skipping {output_dir / 'checkpoint-3'}: optimizer.pt cannot be read (100 bytes: PytorchStreamReader failed "
        "reading zip archive: failed finding central directory)."
    ]
    assert f"Resuming from {output_dir / 'checkpoint-2'}" in messages
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    # Steps 3 and 4 were trained again from checkpoint-2: checkpoint-3 was written anew, whole.
    assert checkpoint_problem(str(output_dir / "checkpoint-3")) is None
    assert checkpoint_problem(str(output_dir / "checkpoint-4")) is None


def test_an_explicit_damaged_checkpoint_is_a_one_line_error(run, tmp_path):
    output_dir = tmp_path / "out"
    shutil.copytree(run["output_dir"], output_dir)
    (output_dir / "checkpoint-3" / "trainer_state.json").write_text("")
    with pytest.raises(ValueError, match=r"^--resume-from-checkpoint '.*checkpoint-3' cannot be resumed from: "
                                         r"trainer_state.json cannot be read \(0 bytes: Expecting value"):  # fmt: skip
        main([*RUN, "--max-steps", "4", "--output-dir", str(output_dir),
              "--resume-from-checkpoint", str(output_dir / "checkpoint-3")])  # fmt: skip


def test_trainer_state_is_written_atomically(tmp_path, monkeypatch):
    """A process killed while writing trainer_state.json leaves the Trainer's own file half-written, ours whole."""
    real_open = open

    class Killed(Exception):
        pass

    class HalfWritten:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            self.handle.close()

        def write(self, text):
            self.handle.write(text[: len(text) // 2])
            self.handle.flush()
            raise Killed

    def killed_while_writing(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        return HalfWritten(handle) if "w" in mode else handle

    for state_class, survives in ((TrainerState, False), (AtomicTrainerState, True)):
        path = tmp_path / state_class.__name__ / "trainer_state.json"
        path.parent.mkdir()
        state_class(global_step=2).save_to_json(str(path))
        monkeypatch.setattr("builtins.open", killed_while_writing)
        with pytest.raises(Killed):
            state_class(global_step=3).save_to_json(str(path))
        monkeypatch.undo()
        if survives:
            assert TrainerState.load_from_json(str(path)).global_step == 2
            assert checkpoint_problem(str(path.parent)) is None
        else:  # what made an interrupted save block the next run
            assert "cannot be read" in checkpoint_problem(str(path.parent))


def test_the_trainer_saves_its_state_through_the_atomic_writer(run):
    from modeling_vlp.training.trainer import VLPTrainer

    trainer = VLPTrainer.__new__(VLPTrainer)
    trainer.state = TrainerState.load_from_json(str(run["output_dir"] / "checkpoint-2" / "trainer_state.json"))
    assert type(trainer.state) is AtomicTrainerState and trainer.state.global_step == 2
