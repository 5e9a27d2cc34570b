"""Convert an open_clip ViT CLIP state dict into a `VLPDualEncoderModel`.

    python -m modeling_vlp.conversion.convert_open_clip --model-name ViT-B-32 --checkpoint FILE --output OUT_DIR
    python -m modeling_vlp.conversion.convert_open_clip --model-config my-vit.json --checkpoint FILE --output OUT_DIR

`--model-name` is a config open_clip knows (`open_clip.list_models()`, or `local-dir:PATH` with an
`open_clip_config.json`); `--model-config` registers a JSON model config first (its file name is the model name).
The model is built with `open_clip.create_model(name, pretrained=None)` and the checkpoint (safetensors or a
`torch.save`d state dict) loaded into it strictly; nothing is downloaded.

Supported: open_clip's `CLIP` class with ViT towers of standard blocks (no layer scale, attentional pooler,
timm or Hugging Face towers). Translation: the "clip-vit-b-32" preset with open_clip's activation (GELU unless
`quick_gelu`), `ln_post` on every token ("all", or "pooled" with `final_ln_after_pool`), text pooled at the
highest token id ("argmax"), `nn.MultiheadAttention`'s fused `in_proj` split into q/k/v, and the `(in, out)`
projection matrices transposed into linear weights. The tokenizer is a `CLIPTokenizer` giving the ids of
`open_clip.tokenize` (pad id 0) when called with `padding="max_length", truncation=True`; the image processor
reproduces open_clip's eval transform.
"""

import json
import os
import sys

import torch
from PIL import Image
from torch import nn

from ..presets import get_preset_config
from ..processors import VLPImageProcessor
from . import common

BLOCK_RULES = (
    (r"(layers\.\d+)\.ln_1\.", r"\1.layer_norm1."),
    (r"(layers\.\d+)\.attn\.", r"\1.self_attn."),
    (r"(layers\.\d+)\.ln_2\.", r"\1.layer_norm2."),
    (r"(layers\.\d+)\.mlp\.c_fc\.", r"\1.mlp.fc1."),
    (r"(layers\.\d+)\.mlp\.c_proj\.", r"\1.mlp.fc2."),
)
STATE_DICT_RULES = (
    (r"^visual\.conv1\.", "vision_model.embeddings.patch_embedding."),
    (r"^visual\.class_embedding$", "vision_model.embeddings.class_embedding"),
    (r"^visual\.positional_embedding$", "vision_model.embeddings.position_embedding.weight"),
    (r"^visual\.ln_pre\.", "vision_model.pre_layrnorm."),
    (r"^visual\.transformer\.resblocks\.", "vision_model.encoder.layers."),
    (r"^visual\.ln_post\.", "vision_model.post_layernorm."),
    (r"^visual\.proj$", "visual_projection.weight"),
    (r"^token_embedding\.", "text_model.embeddings.token_embedding."),
    (r"^positional_embedding$", "text_model.embeddings.position_embedding.weight"),
    (r"^transformer\.resblocks\.", "text_model.encoder.layers."),
    (r"^ln_final\.", "text_model.final_layer_norm."),
    (r"^text_projection$", "text_projection.weight"),
) + BLOCK_RULES
# open_clip multiplies by (in, out) matrices; nn.Linear stores (out, in).
TRANSPOSED = ("visual_projection.weight", "text_projection.weight")
VISION_POOLING = {"tok": "cls", "avg": "mean"}
TEXT_POOLING = {"argmax": "argmax", "eos": "eos", "first": "first", "last": "last"}
RESAMPLING = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def check_model_config(model_name: str) -> None:
    """Refuse, before building anything, what would need a download or is not a plain ViT CLIP."""
    import open_clip

    config = open_clip.get_model_config(model_name)
    if config is None:
        raise ValueError(f"open_clip has no model config {model_name!r}; pass `--model-config FILE.json` or one of "
                         f"open_clip.list_models().")  # fmt: skip
    vision, text = config.get("vision_cfg", {}), config.get("text_cfg", {})
    unsupported = [
        name
        for name, present in (
            ("a timm vision tower (vision_cfg.timm_model_name)", vision.get("timm_model_name")),
            ("a ResNet vision tower (vision_cfg.layers is a list)", isinstance(vision.get("layers"), (list, tuple))),
            ("a Hugging Face text tower (text_cfg.hf_model_name)", text.get("hf_model_name")),
            ("a Hugging Face tokenizer (text_cfg.hf_tokenizer_name)", text.get("hf_tokenizer_name")),
            ("a multimodal decoder (CoCa)", config.get("multimodal_cfg")),
        )
        if present
    ]
    if unsupported:
        raise ValueError(f"open_clip model {model_name!r} has {', '.join(unsupported)}; only ViT CLIP models with "
                         "open_clip's own tokenizer convert.")  # fmt: skip


def load_open_clip(model_name: str, checkpoint: str):
    import open_clip

    check_model_config(model_name)
    model = open_clip.create_model(model_name, pretrained=None)
    state_dict = common.load_state_dict_file(checkpoint)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def _activation(block: nn.Module) -> str:
    import open_clip.transformer as oc

    act = block.mlp.gelu
    if isinstance(act, oc.QuickGELU):
        return "quick_gelu"
    if type(act) is nn.GELU:
        return {"none": "gelu", "tanh": "gelu_pytorch_tanh"}[act.approximate]
    raise ValueError(f"Unsupported open_clip activation {act!r}.")


def _tower(transformer: nn.Module, what: str) -> dict:
    """Width, depth, heads, MLP width, activation and LayerNorm eps of an open_clip `Transformer`."""
    import open_clip.transformer as oc

    blocks = list(transformer.resblocks)
    for index, block in enumerate(blocks):
        if type(block) is not oc.ResidualAttentionBlock or not isinstance(block.attn, nn.MultiheadAttention):
            raise ValueError(f"{what} block {index} is a {type(block).__name__}; only the default "
                             "ResidualAttentionBlock (nn.MultiheadAttention) converts.")  # fmt: skip
        if not (isinstance(block.ls_1, nn.Identity) and isinstance(block.ls_2, nn.Identity)):
            raise ValueError(f"{what} block {index} uses layer scale (ls_init_value), which our layers lack.")
        if block.attn.in_proj_bias is None:
            raise ValueError(f"{what} block {index} has attention without biases.")
    first = blocks[0]
    return dict(
        hidden_size=first.attn.embed_dim,
        num_hidden_layers=len(blocks),
        num_attention_heads=first.attn.num_heads,
        intermediate_size=first.mlp.c_fc.out_features,
        hidden_act=_activation(first),
        layer_norm_eps=float(first.ln_1.eps),
    )


def convert_config(model, tokenizer):
    import open_clip
    import open_clip.transformer as oc

    if type(model) is not open_clip.CLIP:
        raise ValueError(f"Only open_clip's CLIP class converts, got {type(model).__name__}.")
    visual = model.visual
    if not isinstance(visual, oc.VisionTransformer) or visual.attn_pool is not None:
        raise ValueError("Only ViT image towers without an attentional pooler convert.")
    if visual.pool_type not in VISION_POOLING:
        raise ValueError(f"Unsupported vision pool_type {visual.pool_type!r}; expected one of {list(VISION_POOLING)}.")
    if model.text_pool_type not in TEXT_POOLING:
        raise ValueError(f"Unsupported text pool_type {model.text_pool_type!r}.")
    if isinstance(model.text_projection, nn.Linear):
        raise ValueError("A text projection with a bias (text_cfg.proj_bias) is not supported.")
    vision = dict(
        _tower(visual.transformer, "vision"),
        image_size=common.square(visual.image_size, "image_size"),
        patch_size=common.square(visual.patch_size, "patch_size"),
        pre_layernorm=not isinstance(visual.ln_pre, nn.Identity),
        final_norm="pooled" if visual.final_ln_after_pool else "all",
        pooling=VISION_POOLING[visual.pool_type],
    )
    text = dict(
        _tower(model.transformer, "text"),
        vocab_size=model.vocab_size,
        max_position_embeddings=model.positional_embedding.shape[0],
        causal=model.attn_mask is not None,
        pooling=TEXT_POOLING[model.text_pool_type],
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=model.text_eos_id if model.text_pool_type == "eos" else tokenizer.eos_token_id,
    )
    logit_scale = model.logit_scale.detach()
    extra = {}
    if model.logit_bias is not None:
        extra = dict(loss_type="sigmoid", logit_bias_init_value=float(model.logit_bias.detach().reshape(())))
    return get_preset_config(
        "clip-vit-b-32",
        vision_config=vision,
        text_config=text,
        projection_dim=visual.output_dim,
        text_projection="none" if model.text_projection is None else "linear",
        logit_scale_init_value=float(logit_scale.reshape(())),
        logit_scale_max=common.logit_scale_max_for(logit_scale, 100.0),
        **extra,
    )


def convert_state_dict(state_dict):
    state_dict = common.split_fused_qkv(common.rename_keys(state_dict, STATE_DICT_RULES))
    for name in TRANSPOSED:
        if name in state_dict:
            state_dict[name] = state_dict[name].t().contiguous()
    for name in ("logit_scale", "logit_bias"):
        if name in state_dict:
            state_dict[name] = state_dict[name].reshape(())
    return state_dict


def image_processor_from_open_clip(preprocess_cfg: dict) -> VLPImageProcessor:
    """Our image processor doing what `open_clip.image_transform_v2(cfg, is_train=False)` does."""
    size = preprocess_cfg.get("size", 224)
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    interpolation = preprocess_cfg.get("interpolation", "bicubic")
    if interpolation not in RESAMPLING:
        raise ValueError(f"Unsupported interpolation {interpolation!r}; expected one of {list(RESAMPLING)}.")
    resize_mode = preprocess_cfg.get("resize_mode", "shortest")
    if resize_mode == "shortest" and height == width:
        crop_size = {"height": height, "width": width}
        geometry = dict(size={"shortest_edge": height}, do_center_crop=True, crop_size=crop_size)
    elif resize_mode == "squash":
        geometry = dict(size={"height": height, "width": width}, do_center_crop=False)
    else:
        raise ValueError(f"Unsupported open_clip resize_mode {resize_mode!r} for size {size}; 'shortest' (square) "
                         "and 'squash' convert.")  # fmt: skip
    return VLPImageProcessor(
        resample=RESAMPLING[interpolation],
        crop_offset_rounding="round",  # torchvision's CenterCrop
        image_mean=list(preprocess_cfg["mean"]),
        image_std=list(preprocess_cfg["std"]),
        **geometry,
    )


def load_source(model_name: str, checkpoint: str) -> common.SourceCheckpoint:
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    model = load_open_clip(model_name, checkpoint)
    context_length = model.context_length
    tokenizer = common.clip_bpe_tokenizer(pad_token="!", model_max_length=context_length)
    reference_tokenizer = open_clip.get_tokenizer(model_name, context_length=context_length)
    preprocess_cfg = open_clip.get_model_preprocess_cfg(model)
    preprocess = image_transform_v2(PreprocessCfg(**preprocess_cfg), is_train=False)
    text_kwargs = dict(padding="max_length", max_length=context_length, truncation=True)

    def reference_inputs(images, texts):
        return {
            "pixel_values": torch.stack([preprocess(image) for image in images]),
            "input_ids": reference_tokenizer(texts),
        }

    def reference_outputs(inputs):
        image_embeds = model.encode_image(inputs["pixel_values"], normalize=True)
        text_embeds = model.encode_text(inputs["input_ids"], normalize=True)
        logits_per_image = model.logit_scale.exp() * image_embeds @ text_embeds.T
        if model.logit_bias is not None:
            logits_per_image = logits_per_image + model.logit_bias
        return dict(logits_per_image=logits_per_image, image_embeds=image_embeds, text_embeds=text_embeds)

    return common.SourceCheckpoint(
        name=f"open_clip {model_name} from {checkpoint}",
        config=convert_config(model, tokenizer),
        state_dict=convert_state_dict(model.state_dict()),
        processor=common.make_processor(image_processor_from_open_clip(preprocess_cfg), tokenizer, text_kwargs),
        reference_inputs=reference_inputs,
        reference_outputs=reference_outputs,
        text_kwargs=text_kwargs,
    )


def main(argv=None) -> int:
    import open_clip

    parser = common.build_parser(__doc__)
    parser.add_argument("--model-name", help="An open_clip model config name (default: the --model-config stem).")
    parser.add_argument("--model-config", help="A JSON open_clip model config to register first.")
    parser.add_argument("--checkpoint", required=True, help="The state dict: .safetensors, .bin, .pt or .pth.")
    args = parser.parse_args(argv)
    if args.model_config:
        with open(args.model_config) as handle:
            json.load(handle)  # fail here, with the file's name, on a malformed config
        open_clip.add_model_config(args.model_config)
        args.model_name = args.model_name or os.path.splitext(os.path.basename(args.model_config))[0]
    if not args.model_name:
        parser.error("one of --model-name or --model-config is required")
    common.setup_logging()
    return common.convert(load_source(args.model_name, args.checkpoint), args)


if __name__ == "__main__":
    sys.exit(main())
