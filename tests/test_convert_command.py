"""`vlp convert SOURCE_KIND ...` dispatches to the converters (`python -m modeling_vlp.conversion.convert_*`): the same
options, the same output, and a usage line naming every source kind."""

import pytest
import torch
from transformers import AutoModel, CLIPModel

from modeling_vlp.commands import main
from modeling_vlp.commands.convert import CONVERTERS
from vlp_testing import tiny_clip_config


def test_vlp_convert_runs_the_converter_of_the_source_kind(tmp_path, capsys):
    config = tiny_clip_config()
    torch.manual_seed(0)
    source = CLIPModel(config).eval()
    source.save_pretrained(tmp_path / "source")
    assert main(["convert", "clip", "--source", str(tmp_path / "source"), "--output", str(tmp_path / "out")]) == 0
    assert "max |diff|" in capsys.readouterr().out
    converted = AutoModel.from_pretrained(tmp_path / "out").eval()
    assert type(converted).__name__ == "VLPDualEncoderModel"
    input_ids = torch.randint(0, 49406, (2, 7))
    input_ids[:, -1] = 49407  # CLIP pools its text at the end-of-text token, the highest id
    inputs = dict(input_ids=input_ids, pixel_values=torch.randn(2, 3, 32, 32))
    with torch.no_grad():
        expected, got = source(**inputs).logits_per_image, converted(**inputs).logits_per_image
    assert (expected - got).abs().max() <= 1e-4


def test_vlp_convert_lists_the_source_kinds_and_refuses_unknown_ones(capsys):
    assert main(["convert"]) == 2
    usage = capsys.readouterr().out
    assert all(kind in usage for kind in CONVERTERS) and "vlp convert SOURCE_KIND" in usage
    assert main(["convert", "--help"]) == 0
    assert main(["convert", "flava", "--source", "x"]) == 2
    assert "unknown source kind 'flava'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", "clip", "--help"])
    assert exit_info.value.code == 0 and "--source" in capsys.readouterr().out
