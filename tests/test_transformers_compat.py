"""One test per use of transformers' private or moving parts (`modeling_vlp/transformers_compat.py`) and of the
supported-version check: when transformers renames something again, the test that fails names what moved."""

import configparser
import functools
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, DynamicCache, EncoderDecoderCache

from modeling_vlp import transformers_compat
from modeling_vlp.modeling_captioning import (
    VLPCaptioningModelOutput,
    VLPForConditionalGeneration,
)
from modeling_vlp.modeling_dual_encoder import VLPDualEncoderModel
from modeling_vlp.presets import get_preset_config
from modeling_vlp.registration import AutoModelForImageTextRetrieval
from modeling_vlp.version_check import (
    SUPPORTED_TRANSFORMERS,
    check_transformers_version,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_the_supported_range_is_setup_cfgs():
    parser = configparser.ConfigParser()
    parser.read(REPO_ROOT / "setup.cfg")
    requirements = [line.strip() for line in parser["options"]["install_requires"].splitlines() if line.strip()]
    assert f"transformers{SUPPORTED_TRANSFORMERS}" in requirements


@pytest.mark.parametrize("found", ["4.57.1", "5.25.0", "6.0.0"])
def test_an_unsupported_transformers_is_one_line_naming_both_versions(found):
    with pytest.raises(ImportError) as error:
        check_transformers_version(found)
    message = str(error.value)
    assert "\n" not in message and found in message and SUPPORTED_TRANSFORMERS in message


@pytest.mark.parametrize("found", ["5.0.0", "5.23.0", "5.24.0", "5.24.1"])
def test_a_supported_transformers_passes(found):
    check_transformers_version(found)


def test_import_modeling_vlp_refuses_an_unsupported_transformers_before_touching_it():
    # Fakes the installed version seen by the check; nothing of transformers may be imported before it refuses.
    script = (
        "import sys, importlib.metadata as m\n"
        "real = m.version\n"
        "m.version = lambda name: '4.57.1' if name == 'transformers' else real(name)\n"
        "try:\n"
        "    import modeling_vlp\n"
        "except ImportError as error:\n"
        "    print(error)\n"
        "    print('transformers imported:', 'transformers' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    lines = result.stdout.strip().splitlines()
    assert lines == [
        f"modeling_vlp supports transformers{SUPPORTED_TRANSFORMERS}, found transformers 4.57.1: "
        f"install a supported release (pip install 'transformers{SUPPORTED_TRANSFORMERS}').",
        "transformers imported: False",
    ], result.stdout + result.stderr


def test_outputs_carry_the_cache_under_both_names():
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    output = VLPCaptioningModelOutput(cache=cache)
    # `generate` (transformers >= 5.24) looks the cache up by key; users of older code read `past_key_values`.
    assert "cache" in output and output["cache"] is cache
    assert output.cache is cache and output.past_key_values is cache


def test_forward_takes_the_cache_under_both_names():
    legacy = DynamicCache()
    kwargs = {"past_key_values": legacy}
    assert transformers_compat.cache_argument(None, kwargs) is legacy and kwargs == {}
    current = DynamicCache()
    assert transformers_compat.cache_argument(current, {}) is current
    with pytest.raises(ValueError, match="`cache` or as `past_key_values`, not both"):
        transformers_compat.cache_argument(current, {"past_key_values": legacy})


def test_generate_hands_the_cache_to_forward_and_the_image_is_projected_once(monkeypatch):
    torch.manual_seed(0)
    model = VLPForConditionalGeneration(get_preset_config("captioning-tiny")).eval()
    cross_attentions = [layer.cross_attn for layer in model.vlp.decoder.layers if getattr(layer, "cross_attn", None)]
    assert cross_attentions
    calls = {"k_proj": 0, "forward_caches": []}
    for attention in cross_attentions:

        def counted(hidden, original=attention.k_proj.forward):
            calls["k_proj"] += 1
            return original(hidden)

        monkeypatch.setattr(attention.k_proj, "forward", counted)
    forward = model.forward

    @functools.wraps(forward)  # generate reads forward's signature
    def spy(*args, **kwargs):
        calls["forward_caches"].append(kwargs.get("cache", kwargs.get("past_key_values")))
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", spy)
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    model.generate(pixel_values=pixel_values, max_new_tokens=5, min_new_tokens=5, use_cache=True)
    steps = len(calls["forward_caches"])
    assert steps == 5
    # Every step after the first is given the cache the model returned, whatever name this transformers uses.
    assert all(cache is not None for cache in calls["forward_caches"][1:])
    # With the cache kept between steps, each cross-attention layer projects the image tokens at the first step only.
    assert calls["k_proj"] == len(cross_attentions), (calls["k_proj"], len(cross_attentions))


def test_a_new_auto_class_from_the_private_factory_registers_and_loads(tmp_path):
    config = get_preset_config("dual-tiny")
    torch.manual_seed(0)
    model = VLPDualEncoderModel(config)
    model.save_pretrained(tmp_path)
    AutoConfig.from_pretrained(tmp_path)
    loaded = AutoModelForImageTextRetrieval.from_pretrained(tmp_path)
    assert type(loaded) is VLPDualEncoderModel
    for name, parameter in model.state_dict().items():
        assert torch.equal(parameter, loaded.state_dict()[name]), name
    assert issubclass(AutoModelForImageTextRetrieval, transformers_compat.AutoModelFactoryBase)
