"""Export a CLIP-shaped dual encoder of ours to open_clip: a model config JSON + a state dict.

    vlp convert to_open_clip --source MODEL_DIR --output OUT_DIR [--name NAME]
    python -m modeling_vlp.conversion.convert_to_open_clip --source MODEL_DIR --output OUT_DIR

writes `OUT_DIR/NAME.json` (an open_clip model config; NAME defaults to the folder's name),
`OUT_DIR/open_clip_model.safetensors` and `OUT_DIR/open_clip_config.json` (the same config with the image
preprocessing, open_clip's `local-dir:` form), which open_clip loads with

    open_clip.add_model_config("OUT_DIR/NAME.json")
    model = open_clip.create_model("NAME", pretrained="OUT_DIR/open_clip_model.safetensors")
    # or, with the eval transform: open_clip.create_model_and_transforms("local-dir:OUT_DIR")

The file is written only after that load and a parity check (both models' normalised image and text embeddings on
one seeded batch, fp32, within `--tolerance`, default 1e-5) pass.

What open_clip can express: our own ViT and causal text towers (the "clip-*" and "dual-*" presets) with pre-norm
blocks with q/k/v biases, a class token and a bias-free patch embedding, the same activation in both towers (GELU,
its tanh form, or QuickGELU), a final vision LayerNorm ("all", or "pooled" as `final_ln_after_pool`), "cls" / "mean"
vision pooling, "eos" / "argmax" / "first" / "last" text pooling, and projections without bias (a tower without a
projection gets the identity matrix). Anything else is refused in one line naming the field. The model config has
no tokenizer of its own: a model trained with another vocabulary than open_clip's BPE (`vocab_size` 49408) is fed
ids from its own tokenizer (saved with it). `preprocess_cfg` (mean, std, interpolation, resize mode) comes from the
folder's image processor when it has one.
"""

import json
import os
import sys

import torch
from PIL import Image

from ..modeling_dual_encoder import VLPDualEncoderModel
from ..processors import VLPImageProcessor, VLPProcessor
from . import common

CHECKPOINT_NAME = "open_clip_model.safetensors"
OWN_TOWERS = {"vision_config": "vlp_vision", "text_config": "vlp_text"}
ACTIVATIONS = {"gelu": (False, None), "gelu_pytorch_tanh": (False, {"approximate": "tanh"}), "quick_gelu": (True, None)}
VISION_POOLING = {"cls": "tok", "mean": "avg"}
TEXT_POOLING = ("eos", "argmax", "first", "last")
INTERPOLATIONS = {Image.Resampling.BICUBIC: "bicubic", Image.Resampling.BILINEAR: "bilinear"}
OPEN_CLIP_LN_EPS = 1e-5

BLOCK_RULES = (
    (r"\.layer_norm1\.", ".ln_1."),
    (r"\.layer_norm2\.", ".ln_2."),
    (r"\.self_attn\.out_proj\.", ".attn.out_proj."),
    (r"\.mlp\.fc1\.", ".mlp.c_fc."),
    (r"\.mlp\.fc2\.", ".mlp.c_proj."),
)
STATE_DICT_RULES = (
    (r"^vision_model\.embeddings\.patch_embedding\.", "visual.conv1."),
    (r"^vision_model\.embeddings\.class_embedding$", "visual.class_embedding"),
    (r"^vision_model\.embeddings\.position_embedding\.weight$", "visual.positional_embedding"),
    (r"^vision_model\.pre_layrnorm\.", "visual.ln_pre."),
    (r"^vision_model\.encoder\.layers\.", "visual.transformer.resblocks."),
    (r"^vision_model\.post_layernorm\.", "visual.ln_post."),
    (r"^text_model\.embeddings\.token_embedding\.", "token_embedding."),
    (r"^text_model\.embeddings\.position_embedding\.weight$", "positional_embedding"),
    (r"^text_model\.encoder\.layers\.", "transformer.resblocks."),
    (r"^text_model\.final_layer_norm\.", "ln_final."),
) + BLOCK_RULES


def _refuse(field: str, value, expected: str) -> None:
    raise ValueError(f"open_clip cannot express {field}={value!r} (it needs {expected}).")


def _check(config, field: str, expected, description: str | None = None) -> None:
    value = config
    for part in field.split("."):
        value = getattr(value, part)
    if value != expected:
        _refuse(field, value, description or repr(expected))


def _mlp_ratio(tower, name: str) -> float:
    ratio = tower.intermediate_size / tower.hidden_size
    if int(tower.hidden_size * ratio) != tower.intermediate_size:
        _refuse(f"{name}.intermediate_size", tower.intermediate_size, "a width open_clip's int(width * mlp_ratio) gives back")
    return ratio


def check_expressible(config) -> None:
    """Raise a one-line ValueError naming the first field of `config` that open_clip's CLIP cannot express."""
    if config.model_type != "vlp_dual_encoder":
        _refuse("model_type", config.model_type, "'vlp_dual_encoder' (a CLIP-shaped dual encoder)")
    for name, model_type in OWN_TOWERS.items():
        _check(config, f"{name}.model_type", model_type, f"our own tower ({model_type!r})")
    vision, text = config.vision_config, config.text_config
    for name in OWN_TOWERS:
        for field, expected in (("pre_norm", True), ("qkv_bias", True)):
            _check(config, f"{name}.{field}", expected)
        if getattr(config, name).hidden_act not in ACTIVATIONS:
            _refuse(f"{name}.hidden_act", getattr(config, name).hidden_act, f"one of {sorted(ACTIVATIONS)}")
        _mlp_ratio(getattr(config, name), name)
    _check(config, "text_config.hidden_act", vision.hidden_act, f"the vision tower's activation {vision.hidden_act!r}")
    _check(config, "text_config.layer_norm_eps", vision.layer_norm_eps, "the vision tower's LayerNorm eps")
    for field, expected in (("class_token", True), ("patch_bias", False)):
        _check(config, f"vision_config.{field}", expected)
    if vision.final_norm == "none":
        _refuse("vision_config.final_norm", "none", "'all' or 'pooled' (open_clip always has ln_post)")
    if vision.pooling not in VISION_POOLING:
        _refuse("vision_config.pooling", vision.pooling, f"one of {sorted(VISION_POOLING)}")
    for field, expected in (("causal", True), ("type_vocab_size", 0), ("embedding_layernorm", False),
                            ("final_layernorm", True)):  # fmt: skip
        _check(config, f"text_config.{field}", expected)
    if text.pooling not in TEXT_POOLING:
        _refuse("text_config.pooling", text.pooling, f"one of {TEXT_POOLING}")
    _check(config, "projection_bias", False, "projections without bias")


def open_clip_config(config) -> dict:
    """The open_clip model config (the JSON `open_clip.add_model_config` reads) of an expressible dual encoder."""
    check_expressible(config)
    vision, text = config.vision_config, config.text_config
    quick_gelu, act_kwargs = ACTIVATIONS[vision.hidden_act]
    extra = dict(act_kwargs=act_kwargs) if act_kwargs else {}
    if vision.layer_norm_eps != OPEN_CLIP_LN_EPS:
        extra["norm_kwargs"] = {"eps": vision.layer_norm_eps}
    vision_cfg = dict(
        image_size=vision.image_size, patch_size=vision.patch_size, width=vision.hidden_size,
        layers=vision.num_hidden_layers, head_width=vision.hidden_size // vision.num_attention_heads,
        mlp_ratio=_mlp_ratio(vision, "vision_config"), no_ln_pre=not vision.pre_layernorm,
        pool_type=VISION_POOLING[vision.pooling], final_ln_after_pool=vision.final_norm == "pooled",
        patch_dropout=vision.patch_dropout, **extra,
    )  # fmt: skip
    text_cfg = dict(
        context_length=text.max_position_embeddings, vocab_size=text.vocab_size, width=text.hidden_size,
        heads=text.num_attention_heads, layers=text.num_hidden_layers, mlp_ratio=_mlp_ratio(text, "text_config"),
        pool_type=text.pooling, **extra,
    )  # fmt: skip
    if text.pooling == "eos":
        text_cfg["eos_id"] = text.eos_token_id
    if text.pad_token_id is not None:
        text_cfg["pad_id"] = text.pad_token_id
    model_config = dict(embed_dim=config.projection_dim, quick_gelu=quick_gelu, vision_cfg=vision_cfg, text_cfg=text_cfg)
    if config.loss_type == "sigmoid":
        model_config["init_logit_bias"] = float(config.logit_bias_init_value or 0.0)
    return model_config


def preprocess_cfg(image_processor: VLPImageProcessor, image_size: int) -> dict:
    """open_clip's `preprocess_cfg` doing what our image processor does (resize + center crop, or squash)."""
    resample = image_processor.resample
    interpolation = INTERPOLATIONS.get(Image.Resampling(resample) if resample is not None else None, "bicubic")
    size = image_processor.size or {}
    resize_mode = "shortest" if image_processor.do_center_crop and "shortest_edge" in size else "squash"
    return dict(size=image_size, mode="RGB", mean=list(image_processor.image_mean), std=list(image_processor.image_std),
                interpolation=interpolation, resize_mode=resize_mode)  # fmt: skip


def open_clip_state_dict(model: VLPDualEncoderModel) -> dict[str, torch.Tensor]:
    """Our weights under open_clip's names: q/k/v fused into `in_proj_*`, linear projections as `(in, out)` matrices
    (the identity where a tower has none), the temperature (and bias) as scalars."""
    state_dict = common.rename_keys(
        {key: value.detach().float() for key, value in model.state_dict().items()}, STATE_DICT_RULES
    )
    fused = {}
    for key in list(state_dict):
        prefix, found, rest = key.rpartition(".self_attn.q_proj.")
        if found:
            parts = [state_dict.pop(f"{prefix}.self_attn.{part}_proj.{rest}") for part in "qkv"]
            fused[f"{prefix}.attn.in_proj_{rest}"] = torch.cat(parts, dim=0).contiguous()
    state_dict.update(fused)
    for ours, theirs, width in (("visual_projection", "visual.proj", model.vision_embed_dim),
                                ("text_projection", "text_projection", model.text_embed_dim)):  # fmt: skip
        weight = state_dict.pop(f"{ours}.weight", None)
        state_dict[theirs] = torch.eye(width) if weight is None else weight.t().contiguous()
    return state_dict


def register(model_config: dict, name: str, folder: str, preprocess: dict | None = None) -> str:
    """Write `folder/name.json` (registered with open_clip) and `folder/open_clip_config.json` (the `local-dir:`
    form: model config + `preprocess_cfg`, when known); returns the first path."""
    import open_clip

    path = os.path.join(folder, f"{name}.json")
    with open(path, "w") as handle:
        json.dump(model_config, handle, indent=2)
    with open(os.path.join(folder, "open_clip_config.json"), "w") as handle:
        json.dump(dict(model_cfg=model_config, **({"preprocess_cfg": preprocess} if preprocess else {})), handle, indent=2)
    open_clip.add_model_config(path)
    return path


@torch.no_grad()
def embedding_diffs(model: VLPDualEncoderModel, open_clip_model, seed: int = 0) -> dict[str, float]:
    """Max abs differences of the normalised embeddings of seeded images and token ids (eos-terminated, padded)."""
    config = model.config
    vision, text = config.vision_config, config.text_config
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(4, vision.num_channels, vision.image_size, vision.image_size, generator=generator)
    length = text.max_position_embeddings
    special = {text.pad_token_id, text.bos_token_id, text.eos_token_id}
    words = torch.tensor([token for token in range(min(text.vocab_size, 49406)) if token not in special])
    input_ids = words[torch.randint(len(words), (4, length), generator=generator)]
    attention_mask = torch.ones_like(input_ids)
    for row, real in enumerate((length, length - 1, length // 2, 3)):
        if text.bos_token_id is not None:
            input_ids[row, 0] = text.bos_token_id
        input_ids[row, real - 1] = text.eos_token_id if text.eos_token_id is not None else input_ids[row, real - 1]
        input_ids[row, real:] = text.pad_token_id if text.pad_token_id is not None else 0
        attention_mask[row, real:] = 0
    ours = model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
    return {
        "image_embeds": common.max_abs_diff(open_clip_model.encode_image(pixel_values, normalize=True), ours.image_embeds),
        "text_embeds": common.max_abs_diff(open_clip_model.encode_text(input_ids, normalize=True), ours.text_embeds),
    }


def convert_to_open_clip(
    model: VLPDualEncoderModel | str, output_dir: str, name: str | None = None, tolerance: float = 1e-5, seed: int = 0
) -> tuple[str, str, dict[str, float]]:
    """Export `model` (or a saved folder) to `output_dir`; returns (config path, checkpoint path, parity diffs).
    Raises ValueError when open_clip cannot express the model or the reloaded open_clip model disagrees."""
    import open_clip
    from safetensors.torch import save_file

    image_processor = None
    if isinstance(model, str):
        folder = model
        name = name or os.path.basename(os.path.normpath(folder))
        if any(os.path.isfile(os.path.join(folder, f)) for f in ("processor_config.json", "preprocessor_config.json")):
            image_processor = VLPProcessor.from_pretrained(folder).image_processor
        model = VLPDualEncoderModel.from_pretrained(folder, dtype=torch.float32)
    if not isinstance(model, VLPDualEncoderModel):
        raise ValueError(f"open_clip cannot express a {type(model).__name__}; export a VLPDualEncoderModel.")
    model = model.float().eval()
    name = name or "vlp-exported"
    model_config = open_clip_config(model.config)
    preprocess = None if image_processor is None else preprocess_cfg(image_processor, model.config.vision_config.image_size)
    os.makedirs(output_dir, exist_ok=True)
    config_path = register(model_config, name, output_dir, preprocess)
    checkpoint = os.path.join(output_dir, CHECKPOINT_NAME)
    save_file(open_clip_state_dict(model), checkpoint)
    open_clip_model = open_clip.create_model(name, pretrained=checkpoint).eval()  # a strict load
    diffs = embedding_diffs(model, open_clip_model, seed)
    if max(diffs.values()) > tolerance:
        os.remove(checkpoint)
        raise ValueError(f"The exported open_clip model disagrees (max |diff| {diffs}, tolerance {tolerance:g}).")
    return config_path, checkpoint, diffs


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, help="A saved VLPDualEncoderModel folder (ours).")
    parser.add_argument("--output", required=True, help="Folder to write NAME.json and the state dict to.")
    parser.add_argument("--name", help="The open_clip model name (default: the source folder's name).")
    parser.add_argument("--tolerance", type=float, default=1e-5, help="Largest embedding max |diff|. Default: 1e-5.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the parity batch. Default: 0.")
    args = parser.parse_args(argv)
    common.setup_logging()
    try:
        config_path, checkpoint, diffs = convert_to_open_clip(args.source, args.output, args.name, args.tolerance, args.seed)
    except ValueError as error:
        print(f"vlp convert to_open_clip: {error}", file=sys.stderr)
        return 1
    for key, diff in diffs.items():
        print(f"  {key:<13} max |diff| = {diff:.3e}")
    print(f"Wrote {config_path} and {checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
