"""Our CLIP-shaped dual encoders -> open_clip (`vlp convert to_open_clip`): the written model config + state dict load
with `open_clip.create_model(name, pretrained=path)` and give our image and text embeddings (fp32, 1e-5)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
from PIL import Image

import modeling_vlp  # noqa: F401  (registers the Auto classes)
from modeling_vlp import VLPDualEncoderModel, get_preset_config
from modeling_vlp.commands.convert import convert_command
from modeling_vlp.conversion import convert_to_open_clip as export

TOLERANCE = 1e-5
VLP = shutil.which("vlp", path=str(Path(sys.executable).parent)) or shutil.which("vlp")
# dual-tiny (the CLIP presets' QuickGELU, cls pooling, LayerNorm on the pooled token, eos pooling) and
# the other switches open_clip has: mean pooling + LayerNorm on every token, GELU (tanh), argmax pooling, no ln_pre,
# a tower without projection, the sigmoid loss's bias, another LayerNorm eps.
VARIANTS = {
    "tiny": {},
    "switches": dict(
        vision_config=dict(pooling="mean", final_norm="all", hidden_act="gelu_pytorch_tanh", pre_layernorm=False,
                           layer_norm_eps=1e-6, hidden_size=16, num_attention_heads=2),
        text_config=dict(pooling="argmax", hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6),
        vision_projection="none", loss_type="sigmoid", logit_bias_init_value=-3.0,
    ),
}  # fmt: skip


def tiny_model(seed: int = 0, **overrides) -> VLPDualEncoderModel:
    torch.manual_seed(seed)
    model = VLPDualEncoderModel(get_preset_config("dual-tiny", **overrides)).eval()
    with torch.no_grad():  # non-trivial LayerNorms and biases, so that a mix-up of them shows
        for name, parameter in model.named_parameters():
            if "layer_norm" in name or "layrnorm" in name or name.endswith("bias"):
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def check_round_trip(model: VLPDualEncoderModel, name: str, folder: Path) -> dict[str, float]:
    """Load the export with open_clip's own API and compare embeddings on new inputs (not the exporter's batch)."""
    config_path = folder / f"{name}.json"
    open_clip.add_model_config(str(config_path))
    loaded = open_clip.create_model(name, pretrained=str(folder / export.CHECKPOINT_NAME)).eval()
    config = model.config
    generator = torch.Generator().manual_seed(11)
    size = config.vision_config.image_size
    pixel_values = torch.randn(3, 3, size, size, generator=generator)
    text = config.text_config
    input_ids = torch.randint(3, text.vocab_size, (3, text.max_position_embeddings), generator=generator)
    input_ids[:, 0], input_ids[:, -1] = text.bos_token_id, text.eos_token_id
    with torch.no_grad():
        ours = model(pixel_values=pixel_values, input_ids=input_ids)
        diffs = {
            "image_embeds": (loaded.encode_image(pixel_values, normalize=True) - ours.image_embeds).abs().max().item(),
            "text_embeds": (loaded.encode_text(input_ids, normalize=True) - ours.text_embeds).abs().max().item(),
            "logit_scale": (loaded.logit_scale - model.logit_scale).abs().item(),
        }
        if model.logit_bias is not None:
            diffs["logit_bias"] = (loaded.logit_bias - model.logit_bias).abs().item()
        # not trivially equal: other images give other embeddings
        assert (ours.image_embeds[0] - ours.image_embeds[1]).abs().max() > 1e-3
    print(f"export to open_clip {name}: {diffs}")
    assert max(diffs.values()) <= TOLERANCE, diffs
    return diffs


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_random_tiny_model_round_trips(variant, tmp_path):
    model = tiny_model(**VARIANTS[variant])
    name = f"vlp-export-{variant}"
    config_path, checkpoint, diffs = export.convert_to_open_clip(model, str(tmp_path), name)
    assert max(diffs.values()) <= TOLERANCE and os.path.isfile(checkpoint)
    written = json.loads(Path(config_path).read_text())
    if variant == "switches":
        assert written["vision_cfg"]["pool_type"] == "avg" and written["text_cfg"]["pool_type"] == "argmax"
        assert written["init_logit_bias"] == -3.0 and written["vision_cfg"]["norm_kwargs"] == {"eps": 1e-6}
    else:
        assert written["quick_gelu"] and written["vision_cfg"]["final_ln_after_pool"]
    check_round_trip(model, name, tmp_path)


def test_saved_folder_exports_through_vlp_convert(tmp_path, capsys):
    model = tiny_model(seed=1)
    model.save_pretrained(tmp_path / "ours")
    status = convert_command(["to_open_clip", "--source", str(tmp_path / "ours"), "--output", str(tmp_path / "oc")])
    assert status == 0, capsys.readouterr()
    check_round_trip(model, "ours", tmp_path / "oc")


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(vision_config=dict(pooling="attention")), "vision_config.pooling"),
        (dict(vision_config=dict(final_norm="none")), "vision_config.final_norm"),
        (dict(text_config=dict(causal=False)), "text_config.causal"),
        (dict(text_config=dict(pooling="mean")), "text_config.pooling"),
        (dict(text_config=dict(hidden_act="gelu")), "text_config.hidden_act"),
        (dict(vision_config=dict(pre_norm=False)), "vision_config.pre_norm"),
        (dict(projection_bias=True), "projection_bias"),
    ],
)
def test_inexpressible_models_are_refused_in_one_line(overrides, field, tmp_path):
    model = VLPDualEncoderModel(get_preset_config("dual-tiny", **overrides))
    with pytest.raises(ValueError, match=f"^open_clip cannot express {field}=") as error:
        export.convert_to_open_clip(model, str(tmp_path), "refused")
    assert "\n" not in str(error.value)
    assert not (tmp_path / export.CHECKPOINT_NAME).exists()


@pytest.mark.skipif(VLP is None, reason="the `vlp` console script is not installed")
@pytest.mark.slow  # runs a subprocess
def test_pretrained_for_two_steps_exports(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "2",
           "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache"), "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    run = [
        "pretrain", "--family", "dual", "--preset", "dual-tiny", "--num-train", "32", "--num-validation", "8",
        "--per-device-train-batch-size", "16", "--per-device-eval-batch-size", "8", "--max-text-length", "16",
        "--vocab-size", "200", "--max-steps", "2", "--dataloader-num-workers", "0", "--output-dir", str(tmp_path / "run"),
    ]  # fmt: skip
    result = subprocess.run([VLP, *run], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    status = convert_command(["to_open_clip", "--source", str(tmp_path / "run"), "--output", str(tmp_path / "oc"),
                              "--name", "vlp-pretrained"])  # fmt: skip
    assert status == 0
    written = json.loads((tmp_path / "oc" / "open_clip_config.json").read_text())
    assert written["preprocess_cfg"]["size"] == 32  # from the saved image processor
    model = VLPDualEncoderModel.from_pretrained(tmp_path / "run").eval()
    check_round_trip(model, "vlp-pretrained", tmp_path / "oc")
    # open_clip's local-dir form, with the eval transform of our image processor
    loaded, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'oc'}")
    pixel_values = preprocess(Image.new("RGB", (40, 30), (200, 30, 90)))[None]
    with torch.no_grad():
        diff = (loaded.eval().encode_image(pixel_values, normalize=True) - model.get_image_features(pixel_values)
                .pooler_output.div(model.get_image_features(pixel_values).pooler_output.norm(dim=-1, keepdim=True)))
    assert diff.abs().max() <= TOLERANCE
