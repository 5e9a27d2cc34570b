"""The README's "Training from Python" example, run as written on a tiny saved dual encoder and a 16-image folder."""

import json
import re
from pathlib import Path

import datasets
import pytest

from vlp_testing import make_image, save_tiny_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example(heading: str) -> str:
    """The first ```python block after `heading` in the README."""
    text = README.read_text()
    match = re.search(re.escape(heading) + r".*?```python\n(.*?)```", text, flags=re.S)
    assert match, f"no python block after {heading!r} in README.md"
    return match.group(1)


def test_the_python_training_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    save_tiny_checkpoint(tmp_path / "out" / "clip", "dual")
    folder = tmp_path / "my_folder"
    folder.mkdir()
    colours = ["red", "green", "blue", "yellow"]
    with open(folder / "metadata.jsonl", "w") as handle:
        for index in range(16):
            make_image(index, size=(24, 24)).save(folder / f"{index}.png")
            handle.write(json.dumps({"file_name": f"{index}.png", "text": f"a {colours[index % 4]} square"}) + "\n")
    code = readme_example("### Training from Python")
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    trainer = namespace["trainer"]
    assert trainer.state.global_step == 1
    assert float(capsys.readouterr().out.strip().splitlines()[-1]) >= 0.0  # the printed eval_rsum
    assert any("eval_rsum" in entry for entry in trainer.state.log_history)
    saved = tmp_path / "runs" / "clip-python"
    assert (saved / "model.safetensors").is_file() and (saved / "processor_config.json").is_file()
