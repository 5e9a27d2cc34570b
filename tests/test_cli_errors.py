"""`vlp` prints a user error as one line (`vlp: error: ...`) and exits 2; a bug keeps its traceback, and so does
a user error with `vlp --debug`. Called from Python with an argv, `main` raises as before."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from modeling_vlp import commands
from modeling_vlp.commands import main
from modeling_vlp.hub.push import HubPushError

VLP = shutil.which("vlp", path=str(Path(sys.executable).parent)) or shutil.which("vlp")


def run_command(monkeypatch, capsys, *argv: str) -> tuple[int, list[str], str]:
    """`vlp ARGV` as the console script runs it (`main()` reading sys.argv): (status, stderr lines, stdout)."""
    monkeypatch.setattr(sys, "argv", ["vlp", *argv])
    status = main()
    captured = capsys.readouterr()
    return status, captured.err.splitlines(), captured.out


def error_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("vlp: error: ") or "Traceback" in line]


def test_a_bad_option_is_one_line_and_status_2(tmp_path, monkeypatch, capsys):
    status, err, out = run_command(
        monkeypatch, capsys, "pretrain", "--family", "unified", "--vision-layers", "2", "--output-dir", str(tmp_path)
    )
    assert status == 2 and out == ""
    assert error_lines(err) == ["vlp: error: --vision-layers do not apply to the 'unified' family."]


def test_a_missing_path_is_one_line_and_status_2(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "no-such-folder"
    status, err, _ = run_command(monkeypatch, capsys, "convert", "clip", "--source", str(missing), "--output",
                                 str(tmp_path / "out"))  # fmt: skip
    assert status == 2
    assert error_lines(err) == [f"vlp: error: FileNotFoundError: `--source` '{missing}' is not a folder."]


@pytest.mark.parametrize(
    "error, line",
    [
        (ValueError("--x must be positive,\n  got -1."), "vlp: error: --x must be positive, got -1."),
        (FileNotFoundError(2, "No such file or directory", "data.csv"),
         "vlp: error: FileNotFoundError: [Errno 2] No such file or directory: 'data.csv'"),
        (HubPushError("The Hub refused to write to me/x (HTTP 401)."),
         "vlp: error: HubPushError: The Hub refused to write to me/x (HTTP 401)."),
    ],
    ids=["ValueError", "FileNotFoundError", "HubPushError"],
)  # fmt: skip
def test_every_kind_of_user_error_is_one_line(error, line, monkeypatch, capsys):
    def command(argv):
        raise error

    monkeypatch.setitem(commands.COMMANDS, "fail", (command, "always fails"))
    status, err, out = run_command(monkeypatch, capsys, "fail")
    assert (status, err, out) == (2, [line], "")
    # --debug, before the command (TrainingArguments has a --debug of its own): the traceback.
    monkeypatch.setattr(sys, "argv", ["vlp", "--debug", "fail"])
    with pytest.raises(type(error)):
        main()
    # From Python with an argv: the exception, as before.
    with pytest.raises(type(error)):
        main(["fail"])


def test_a_bug_keeps_its_traceback(monkeypatch, capsys):
    def command(argv):
        return {}["missing"]

    monkeypatch.setitem(commands.COMMANDS, "buggy", (command, "has a bug"))
    monkeypatch.setattr(sys, "argv", ["vlp", "buggy"])
    with pytest.raises(KeyError):
        main()
    assert "vlp: error" not in capsys.readouterr().err


def test_usage_errors_keep_their_status(monkeypatch, capsys):
    status, err, _ = run_command(monkeypatch, capsys, "frobnicate")
    assert status == 2 and "unknown command" in err[0]
    with pytest.raises(SystemExit) as exit_info:  # argparse's own one-line error, status 2
        run_command(monkeypatch, capsys, "pretrain", "--no-such-option")
    assert exit_info.value.code == 2


@pytest.mark.skipif(VLP is None, reason="the `vlp` console script is not installed")
@pytest.mark.slow  # runs a subprocess
def test_the_console_script_prints_one_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    argv = [VLP, "pretrain", "--family", "unified", "--vision-layers", "2", "--output-dir", str(tmp_path)]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == "vlp: error: --vision-layers do not apply to the 'unified' family."
    debug = subprocess.run([VLP, "--debug", *argv[1:]], env=env, capture_output=True, text=True, timeout=300)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "ValueError: --vision-layers" in debug.stderr
