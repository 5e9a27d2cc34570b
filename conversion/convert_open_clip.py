"""Convert an open_clip ViT CLIP state dict into a `VLPDualEncoderModel`.

    python -m modeling_vlp.conversion.convert_open_clip --model-name ViT-B-32 --checkpoint FILE --output OUT_DIR
    python -m modeling_vlp.conversion.convert_open_clip --model-config my-vit.json --checkpoint FILE --output OUT_DIR

`--model-name` is a config open_clip knows (`open_clip.list_models()`, or `local-dir:PATH` with an
`open_clip_config.json`); `--model-config` registers a JSON model config first (its file name is the model name).
The model is built with `open_clip.create_model(name, pretrained=None)` and the checkpoint (safetensors or a
`torch.save`d state dict) loaded into it strictly; nothing is downloaded.

An open_clip CoCa (a config with `multimodal_cfg`) converts into the captioning family's
`VLPForConditionalGeneration` instead (`convert_coca`, which documents its translation).

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
import re
import sys
from types import SimpleNamespace

import torch
from PIL import Image
from torch import nn

from ..hub.push import push_after_conversion
from ..modeling_captioning import VLPForConditionalGeneration
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


def check_model_config(model_name: str, kind: str = "clip") -> None:
    """Refuse, before building anything, what would need a download or is not a plain ViT CLIP (`kind="clip"`, the
    dual encoder) or a ViT CoCa (`kind="coca"`, the captioning family)."""
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
            ("a multimodal decoder (CoCa: it converts into the captioning family)",
             kind == "clip" and config.get("multimodal_cfg")),
        )
        if present
    ]
    if unsupported:
        raise ValueError(f"open_clip model {model_name!r} has {', '.join(unsupported)}; only ViT CLIP models (and ViT "
                         "CoCa models, into the captioning family) with open_clip's own tokenizer convert.")  # fmt: skip


def model_kind(model_name: str) -> str:
    """"coca" for an open_clip config with a multimodal decoder (-> the captioning family), else "clip"."""
    import open_clip

    config = open_clip.get_model_config(model_name) or {}
    return "coca" if config.get("multimodal_cfg") else "clip"


def load_open_clip(model_name: str, checkpoint: str, kind: str = "clip"):
    import open_clip

    check_model_config(model_name, kind)
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


# --------------------------------------------------------------------------------------------------------------
# CoCa -> the captioning family
# --------------------------------------------------------------------------------------------------------------

COCA_VISION_RULES = (
    (r"^visual\.attn_pool\.ln_q\.", "vlp.attentional_pool.layer_norm_query."),
    (r"^visual\.attn_pool\.ln_k\.", "vlp.attentional_pool.layer_norm_kv."),
    (r"^visual\.attn_pool\.attn\.", "vlp.attentional_pool.attention."),
    (r"^visual\.attn_pool\.query$", "vlp.attentional_pool.query"),
    (r"^visual\.ln_post\.", "vlp.attentional_pool.post_layernorm."),
    (r"^visual\.proj$", "vlp.visual_projection.weight"),
    (r"\.([qkv])_proj_weight$", r".\1_proj.weight"),  # nn.MultiheadAttention with kdim != embed_dim
)
COCA_TEXT_RULES = (
    (r"^text\.token_embedding\.", "vlp.decoder.embeddings.token_embedding."),
    (r"^text\.positional_embedding$", "vlp.decoder.embeddings.position_embedding.weight"),
    (r"^text\.cls_emb$", "vlp.decoder.cls_embedding"),
    (r"^text\.ln_final\.", "vlp.unimodal_layer_norm."),
    (r"^text\.text_projection$", "vlp.text_projection.weight"),
    (r"^text_decoder\.ln_final\.", "vlp.decoder.final_layer_norm."),
    (r"^text_decoder\.text_projection$", "lm_head.decoder.weight"),
    (r"^logit_scale$", "vlp.logit_scale"),
)
# open_clip's cross-attention block -> `VLPCrossAttentionLayer` (renamed before the shared block rules).
CROSS_BLOCK_RULES = (
    (r"(layers\.\d+)\.ln_1_kv\.", r"\1.layer_norm_kv."),
    (r"(layers\.\d+)\.ln_1\.", r"\1.layer_norm_cross."),
    (r"(layers\.\d+)\.attn\.", r"\1.cross_attn."),
)
COCA_TRANSPOSED = ("vlp.visual_projection.weight", "vlp.text_projection.weight", "lm_head.decoder.weight")


def convert_coca_config(model, tokenizer):
    """The "coca-small" preset with the CoCa's sizes and open_clip's switches: the attentional pooler, the CLS token
    (open_clip's legacy mask unless `correct_cls_mask`), the text tower's layers as the unimodal ones, the
    multimodal decoder's self- / cross-attention blocks as pairs of layers, an untied LM head without bias."""
    import open_clip.transformer as oc

    visual, text, decoder = model.visual, model.text, model.text_decoder
    refuse = [
        (not isinstance(visual, oc.VisionTransformer), "a ViT image tower (vision_cfg.layers is a list or timm)"),
        (getattr(visual, "attn_pool", None) is None or getattr(visual, "attn_pool_contrastive", None) is not None,
         "open_clip's original attentional pooler (vision_cfg.attentional_pool: true, not 'parallel'/'cascade')"),
        (not isinstance(text, oc.TextTransformer) or text.cls_emb is None, "a CLS token (text_cfg.embed_cls: true)"),
        (isinstance(text, oc.TextTransformer) and text.attn_mask is None, "a causal text tower (text_cfg.no_causal_mask)"),
        (isinstance(getattr(text, "text_projection", None), nn.Linear), "no text projection bias (text_cfg.proj_bias)"),
        (model.logit_bias is not None, "no logit bias (init_logit_bias)"),
        (getattr(visual, "pool_type", "tok") != "tok", "vision_cfg.pool_type 'tok'"),
    ]  # fmt: skip
    missing = [what for failed, what in refuse if failed]
    if missing:
        raise ValueError(f"This open_clip CoCa does not convert; it needs {'; '.join(missing)}.")
    text_tower = _tower(text.transformer, "text")
    decoder_tower = _tower(decoder, "multimodal self-attention")
    cross_tower = _tower(SimpleNamespace(resblocks=decoder.cross_attn), "multimodal cross-attention")
    for name in ("hidden_size", "num_attention_heads", "intermediate_size", "hidden_act", "layer_norm_eps"):
        if not text_tower[name] == decoder_tower[name] == cross_tower[name]:
            raise ValueError(f"The CoCa text tower and multimodal decoder differ in {name} ({text_tower[name]}, "
                             f"{decoder_tower[name]}, {cross_tower[name]}); our decoder is one stack of one width.")  # fmt: skip
    width = visual.attn_pool.query.shape[-1]
    if width != text_tower["hidden_size"] or visual.proj.shape != (width, width):
        raise ValueError(f"The attentional pooler's width {width} (embed_dim) must be the text width "
                         f"{text_tower['hidden_size']} and the image projection square.")  # fmt: skip
    vision = dict(
        _tower(visual.transformer, "vision"),
        image_size=common.square(visual.image_size, "image_size"),
        patch_size=common.square(visual.patch_size, "patch_size"),
        pre_layernorm=not isinstance(visual.ln_pre, nn.Identity),
        final_norm="none",  # open_clip's CoCa applies ln_post after the pooler
        pooling="cls",
        patch_bias=False,
        class_token=True,
        initializer_style="clip",
    )
    num_unimodal = text_tower["num_hidden_layers"]
    text_config = dict(
        text_tower,
        num_hidden_layers=num_unimodal + 2 * decoder_tower["num_hidden_layers"],
        vocab_size=text.vocab_size,
        max_position_embeddings=text.positional_embedding.shape[0],
        causal=True,
        final_layernorm=True,
        pooling="eos",
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    logit_scale = model.logit_scale.detach()
    return get_preset_config(
        "coca-small",
        vision_config=vision,
        text_config=text_config,
        num_unimodal_layers=num_unimodal,
        separate_cross_attention=True,
        cross_attention_every=1,
        attentional_pool_queries=visual.attn_pool.query.shape[0],
        attentional_pool_heads=visual.attn_pool.attn.num_heads,
        text_cls_token="correct" if text.correct_cls_mask else "legacy",
        projection_dim=visual.output_dim,
        projection_bias=False,
        lm_head_transform=False,
        tie_word_embeddings=False,
        logit_scale_init_value=float(logit_scale.reshape(())),
        logit_scale_max=common.logit_scale_max_for(logit_scale, 100.0),
        decoder_start_token_id=tokenizer.bos_token_id,
    )


def convert_coca_state_dict(state_dict, num_unimodal_layers: int):
    """open_clip CoCa weights under our names: the text tower's blocks are decoder layers 0..U-1, multimodal block i
    is layer U + 2i (self-attention) and U + 2i + 1 (`cross_attn[i]`); fused q/k/v split, projections transposed."""
    renamed = {}
    for key, value in state_dict.items():
        key = re.sub(r"^text\.transformer\.resblocks\.", "vlp.decoder.layers.", key)
        key = re.sub(r"^text_decoder\.resblocks\.(\d+)\.",
                     lambda m: f"vlp.decoder.layers.{num_unimodal_layers + 2 * int(m[1])}.", key)  # fmt: skip
        cross = re.match(r"^text_decoder\.cross_attn\.(\d+)\.", key)
        if cross:
            key = f"vlp.decoder.layers.{num_unimodal_layers + 2 * int(cross[1]) + 1}.{key[cross.end():]}"
            key = common.rename_keys({key: None}, CROSS_BLOCK_RULES).popitem()[0]
        key = common.rename_keys({key: None}, COCA_VISION_RULES + COCA_TEXT_RULES + STATE_DICT_RULES).popitem()[0]
        renamed[re.sub(r"^vision_model\.", "vlp.vision_model.", key)] = value
    state_dict = common.split_fused_qkv(renamed)
    for name in COCA_TRANSPOSED:
        state_dict[name] = state_dict[name].t().contiguous()
    state_dict["vlp.logit_scale"] = state_dict["vlp.logit_scale"].reshape(())
    return state_dict


@torch.no_grad()
def open_clip_greedy(model, pixel_values: torch.Tensor, steps: int, eos_token_id: int, sot_token_id: int):
    """open_clip's `CoCa.generate` loop with `generation_type="top_k", top_k=1` (greedy; no forced final eos, no
    minimum length): the whole prefix through `model(...)` each step. (`CoCa.generate` itself needs transformers'
    `BeamSearchScorer`, gone from transformers 5.) A row ends at eos or pad and is padded with `model.pad_id`."""
    image_latent, image_embs = model._encode_image(pixel_values)
    out = torch.full((pixel_values.shape[0], 1), sot_token_id, dtype=torch.long)
    for _ in range(steps):
        done = (out[:, -1] == eos_token_id) | (out[:, -1] == model.pad_id)
        if bool(done.all()):
            break
        logits = model(pixel_values, out, image_latent=image_latent, image_embs=image_embs, output_labels=False)["logits"]
        sample = logits[:, -1].argmax(dim=-1).masked_fill(done, model.pad_id)
        out = torch.cat([out, sample[:, None]], dim=1)
    return out


@torch.no_grad()
def compare_coca(source, model, inputs: dict, generate_tokens: int, tokenizer) -> tuple[dict[str, float], bool]:
    """Max abs differences of the contrastive embeddings, the captioning logits (real positions), open_clip's
    `CoCaLoss` terms, and whether greedy generation writes the same tokens."""
    import open_clip

    pixel_values, input_ids = inputs["pixel_values"], inputs["input_ids"]
    reference = source(pixel_values, input_ids)  # teacher forcing: logits of text[:, :-1], labels text[:, 1:]
    full_logits = source(pixel_values, input_ids, output_labels=False)["logits"]
    clip_loss, caption_loss = open_clip.loss.CoCaLoss(caption_loss_weight=1.0, clip_loss_weight=1.0, pad_id=source.pad_id)(
        reference["image_features"], reference["text_features"], reference["logits"], reference["labels"],
        reference["logit_scale"],
    )  # fmt: skip
    ours = model(**inputs, labels=input_ids, return_loss=True, return_dict=True)
    real = inputs["attention_mask"].bool()
    diffs = {
        "image_embeds": common.max_abs_diff(source.encode_image(pixel_values), ours.captioning_output.image_embeds),
        "text_embeds": common.max_abs_diff(source.encode_text(input_ids), ours.captioning_output.text_embeds),
        "logits": common.max_abs_diff(full_logits[real], ours.logits[real]),
        "loss_lm": common.max_abs_diff(caption_loss, ours.loss_lm),
        "loss_itc": common.max_abs_diff(clip_loss, ours.loss_itc),
    }
    eos, sot = tokenizer.eos_token_id, tokenizer.bos_token_id
    theirs = open_clip_greedy(source, pixel_values, generate_tokens, eos, sot)
    mine = model.generate(
        pixel_values=pixel_values, max_new_tokens=generate_tokens, do_sample=False, num_beams=1,
        eos_token_id=eos, pad_token_id=source.pad_id,
    )  # fmt: skip
    return diffs, theirs.shape == mine.shape and torch.equal(theirs, mine)


def load_coca_source(model_name: str, checkpoint: str):
    """The open_clip CoCa, our converted model, our processor and open_clip's preprocessing of the parity batch."""
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    source = load_open_clip(model_name, checkpoint, kind="coca")
    if not isinstance(source, open_clip.CoCa):
        raise ValueError(f"open_clip model {model_name!r} is a {type(source).__name__}, not a CoCa.")
    context_length = source.text.context_length
    tokenizer = common.clip_bpe_tokenizer(pad_token="!", model_max_length=context_length)
    config = convert_coca_config(source, tokenizer)
    state_dict = convert_coca_state_dict(source.state_dict(), config.num_unimodal_layers)
    model = common.load_converted(config, state_dict, VLPForConditionalGeneration)
    preprocess_cfg = open_clip.get_model_preprocess_cfg(source)
    text_kwargs = dict(padding="max_length", max_length=context_length, truncation=True)
    processor = common.make_processor(image_processor_from_open_clip(preprocess_cfg), tokenizer, text_kwargs)
    preprocess = image_transform_v2(PreprocessCfg(**preprocess_cfg), is_train=False)
    reference_tokenizer = open_clip.get_tokenizer(model_name, context_length=context_length)

    def reference_inputs(images, texts):
        input_ids = reference_tokenizer(texts)
        pixel_values = torch.stack([preprocess(image) for image in images])
        return dict(pixel_values=pixel_values, input_ids=input_ids, attention_mask=(input_ids != source.pad_id).long())

    return source, model, processor, tokenizer, reference_inputs


def convert_coca(model_name: str, checkpoint: str, args) -> int:
    """Load, check parity (embeddings, logits, losses, greedy tokens; our processor against open_clip's), save, and
    push with --push-to-hub. Returns 0 when saved (and pushed), 1 when parity failed or the push failed."""
    common.logger.info(f"Converting open_clip CoCa {model_name} from {checkpoint} into VLPForConditionalGeneration")
    source, model, processor, tokenizer, reference_inputs = load_coca_source(model_name, checkpoint)
    images, texts = common.parity_images(args.seed), list(common.PARITY_CAPTIONS)
    inputs = reference_inputs(images, texts)
    diffs, same_tokens = compare_coca(source, model, inputs, args.generate_tokens, tokenizer)
    ours = processor(images=images, text=texts, return_tensors="pt")
    input_ids_equal = torch.equal(ours["input_ids"], inputs["input_ids"])
    pixel_diff = common.max_abs_diff(ours["pixel_values"], inputs["pixel_values"])
    ok = max(diffs.values()) <= args.tolerance and same_tokens and input_ids_equal and pixel_diff <= args.pixel_tolerance
    print("Parity, both models on open_clip's inputs (fp32):")
    for name, diff in diffs.items():
        print(f"  {name:<13} max |diff| = {diff:.3e}")
    print(f"  greedy generation ({args.generate_tokens} tokens): {'same tokens' if same_tokens else 'DIFFERENT tokens'}")
    print(f"  (tolerance {args.tolerance:g})")
    print(f"Processor: input_ids identical: {'yes' if input_ids_equal else 'NO'}; pixel_values max |diff| = "
          f"{pixel_diff:.3e} (tolerance {args.pixel_tolerance:g})")  # fmt: skip
    print("PASSED" if ok else "FAILED")
    if not ok:
        common.logger.error("Parity failed: nothing written.")
        return 1
    common.save(model, processor, args.output)
    return push_after_conversion(
        args, args.output, source=f"open_clip CoCa {model_name} from {checkpoint}", parity=diffs,
        tolerance=args.tolerance, source_path=checkpoint,
    )  # fmt: skip


def main(argv=None) -> int:
    import open_clip

    parser = common.build_parser(__doc__)
    parser.add_argument("--model-name", help="An open_clip model config name (default: the --model-config stem).")
    parser.add_argument("--model-config", help="A JSON open_clip model config to register first.")
    parser.add_argument("--checkpoint", required=True, help="The state dict: .safetensors, .bin, .pt or .pth.")
    parser.add_argument(
        "--generate-tokens", type=int, default=6,
        help="CoCa only: greedy tokens both models generate in the parity check. Default: 6.",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.model_config:
        with open(args.model_config) as handle:
            json.load(handle)  # fail here, with the file's name, on a malformed config
        open_clip.add_model_config(args.model_config)
        args.model_name = args.model_name or os.path.splitext(os.path.basename(args.model_config))[0]
    if not args.model_name:
        parser.error("one of --model-name or --model-config is required")
    common.setup_logging()
    if model_kind(args.model_name) == "coca":
        return convert_coca(args.model_name, args.checkpoint, args)
    return common.convert(load_source(args.model_name, args.checkpoint), args)


if __name__ == "__main__":
    sys.exit(main())
