"""Convert an ALBEF checkpoint into the fusion family's `VLPFusionForPreTraining` (ITC projections, ITM and MLM
heads), with parity against torchmultimodal's ALBEF.

    python -m modeling_vlp.conversion.convert_albef --checkpoint ALBEF.pth --output OUT_DIR [--tokenizer BERT_DIR]

Two state-dict layouts are read (detected from the keys):

* torchmultimodal's `ALBEFModelWithSimilarity` (or `ALBEFModel`): `albef_model.vision_encoder.*` (torchvision's
  ViT), `albef_model.text_encoder.*`, `albef_model.multimodal_encoder.*`, `vision_proj`, `text_proj`, `temp`;
  torchmultimodal has no ITM / MLM head, so `itm_head.*` and BERT's `cls.predictions.*` are read when present and
  freshly initialised (the log names them) otherwise.
* the original ALBEF / LAVIS layout (`ALBEF.pth`, `model_base_retrieval_coco.pth`, ...): `visual_encoder.*` (timm-style
  ViT, fused qkv), `text_encoder.bert.*` (ALBEF's xbert: the layers from `fusion_layer` on cross-attend to the
  image; LAVIS's retrieval models drop the `bert.`), `text_encoder.cls.predictions.*`, `vision_proj`, `text_proj`,
  `itm_head`, `temp`.

The momentum copies (`*_m`) and queues are dropped. The architecture is read off the weights' shapes; the head
counts, which no weight shows, are `--vision-heads` / `--text-heads` (default width / 64, ALBEF's 12 at width 768).
Parity: the weights are also loaded into torchmultimodal's ALBEF (vision encoder, BERT text encoder, multimodal
encoder; the original layout is mapped onto it) with transformers' `BertOnlyMLMHead` (xbert's is a copy of it) and a
Linear ITM head; both run on one seeded batch of images and padded text and the folder is written only when the
unimodal and fused states, the ITC embeddings and similarities, the ITM and the MLM logits agree within the
tolerance (fp32). ALBEF's temperature `temp` becomes `logit_scale = log(1 / temp)` (clamped to 1000, ALBEF's
`temp >= 0.001`). ALBEF's image preprocessing (a bicubic resize to the square input size, CLIP's mean and std) is
saved as the image processor, with the BERT tokenizer of `--tokenizer` when given (ALBEF's is bert-base-uncased).
Needs torchmultimodal (`pip install -c constraints.txt --no-deps torchmultimodal-nightly iopath portalocker`).
"""

import math
import re
import sys

import torch
from torch import nn
from transformers.models.bert.modeling_bert import BertConfig, BertOnlyMLMHead

from ..configuration_fusion import VLPFusionConfig
from ..hub.push import push_after_conversion
from ..modeling_fusion import VLPFusionForPreTraining
from ..presets import get_preset_config
from ..processors import VLPImageProcessor, VLPProcessor
from . import common

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
NUM_PAIRS = 4
# Heads the torchmultimodal layout may lack: kept freshly initialised (and named in the log) when absent.
OPTIONAL_HEADS = ("itm_head.", "mlm_head.")
# Ours that ALBEF has no counterpart of: the masked-patch head and its mask token (not ALBEF objectives).
NEW_PREFIXES = ("patch_head.", "vlp.mask_token")

# -- torchmultimodal -> ours ---------------------------------------------------------------------------------------
_TMM_VISION = r"^albef_model\.vision_encoder\.encoder\."
_TMM_ATTENTION = (
    (r"\.attention\.query\.", ".self_attn.q_proj."),
    (r"\.attention\.key\.", ".self_attn.k_proj."),
    (r"\.attention\.value\.", ".self_attn.v_proj."),
    (r"\.attention\.output\.", ".self_attn.out_proj."),
    (r"\.cross_attention\.query\.", ".cross_attn.q_proj."),
    (r"\.cross_attention\.key\.", ".cross_attn.k_proj."),
    (r"\.cross_attention\.value\.", ".cross_attn.v_proj."),
    (r"\.cross_attention\.output\.", ".cross_attn.out_proj."),
    (r"\.attention_layernorm\.", ".layer_norm1."),
    (r"\.cross_attention_layernorm\.", ".layer_norm_cross."),
    (r"\.feedforward_layernorm\.", ".layer_norm2."),
)
TMM_RULES = (
    (_TMM_VISION + r"conv_proj\.", "vlp.image_embeddings.patch_embedding."),
    (_TMM_VISION + r"class_token$", "vlp.image_embeddings.class_embedding"),
    (_TMM_VISION + r"encoder\.pos_embedding$", "vlp.image_embeddings.position_embedding.weight"),
    (_TMM_VISION + r"encoder\.ln\.", "vlp.image_post_layernorm."),
    (_TMM_VISION + r"encoder\.layers\.encoder_layer_(\d+)\.ln_1\.", r"vlp.image_encoder.layers.\1.layer_norm1."),
    (_TMM_VISION + r"encoder\.layers\.encoder_layer_(\d+)\.ln_2\.", r"vlp.image_encoder.layers.\1.layer_norm2."),
    (
        _TMM_VISION + r"encoder\.layers\.encoder_layer_(\d+)\.self_attention\.",
        r"vlp.image_encoder.layers.\1.self_attn.",
    ),
    (_TMM_VISION + r"encoder\.layers\.encoder_layer_(\d+)\.mlp\.0\.", r"vlp.image_encoder.layers.\1.mlp.fc1."),
    (_TMM_VISION + r"encoder\.layers\.encoder_layer_(\d+)\.mlp\.3\.", r"vlp.image_encoder.layers.\1.mlp.fc2."),
    (r"^albef_model\.text_encoder\.embeddings\.word_embeddings\.", "vlp.text_embeddings.token_embedding."),
    (r"^albef_model\.text_encoder\.embeddings\.position_embeddings\.", "vlp.text_embeddings.position_embedding."),
    (r"^albef_model\.text_encoder\.embeddings\.token_type_embeddings\.", "vlp.text_embeddings.token_type_embedding."),
    (r"^albef_model\.text_encoder\.embeddings\.layer_norm\.", "vlp.text_embeddings.layer_norm."),
    (r"^albef_model\.text_encoder\.encoder\.layer\.(\d+)\.", r"vlp.text_encoder.layers.\1."),
    (r"^albef_model\.multimodal_encoder\.layer\.(\d+)\.", r"vlp.fusion.layers.\1."),
    *_TMM_ATTENTION,
    # The FFN: the first and the last Linear of torchmultimodal's MLP (a dropout in between when it has one).
    (r"\.feedforward\.model\.0\.", ".mlp.fc1."),
    (r"\.feedforward\.model\.[23]\.", ".mlp.fc2."),
    (r"^vision_proj\.", "vlp.image_projection."),
    (r"^text_proj\.", "vlp.text_projection."),
)

# -- original ALBEF / LAVIS -> ours --------------------------------------------------------------------------------
_TEXT = r"^text_encoder\.(?:bert\.)?"
ORIGINAL_RULES = (
    (r"^visual_encoder\.patch_embed\.proj\.", "vlp.image_embeddings.patch_embedding."),
    (r"^visual_encoder\.cls_token$", "vlp.image_embeddings.class_embedding"),
    (r"^visual_encoder\.pos_embed$", "vlp.image_embeddings.position_embedding.weight"),
    (r"^visual_encoder\.norm\.", "vlp.image_post_layernorm."),
    (r"^visual_encoder\.blocks\.(\d+)\.norm1\.", r"vlp.image_encoder.layers.\1.layer_norm1."),
    (r"^visual_encoder\.blocks\.(\d+)\.norm2\.", r"vlp.image_encoder.layers.\1.layer_norm2."),
    (r"^visual_encoder\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)$", r"vlp.image_encoder.layers.\1.self_attn.in_proj_\2"),
    (r"^visual_encoder\.blocks\.(\d+)\.attn\.proj\.", r"vlp.image_encoder.layers.\1.self_attn.out_proj."),
    (r"^visual_encoder\.blocks\.(\d+)\.mlp\.", r"vlp.image_encoder.layers.\1.mlp."),
    (_TEXT + r"embeddings\.word_embeddings\.", "vlp.text_embeddings.token_embedding."),
    (_TEXT + r"embeddings\.position_embeddings\.", "vlp.text_embeddings.position_embedding."),
    (_TEXT + r"embeddings\.token_type_embeddings\.", "vlp.text_embeddings.token_type_embedding."),
    (_TEXT + r"embeddings\.LayerNorm\.", "vlp.text_embeddings.layer_norm."),
    # Layer numbers are split into text / fusion layers afterwards (`_split_text_layers`).
    (_TEXT + r"encoder\.layer\.(\d+)\.", r"vlp.bert_layers.\1."),
    (r"\.crossattention\.self\.query\.", ".cross_attn.q_proj."),
    (r"\.crossattention\.self\.key\.", ".cross_attn.k_proj."),
    (r"\.crossattention\.self\.value\.", ".cross_attn.v_proj."),
    (r"\.crossattention\.output\.dense\.", ".cross_attn.out_proj."),
    (r"\.crossattention\.output\.LayerNorm\.", ".layer_norm_cross."),
    *common.BERT_LAYER_RULES,
    (r"^text_encoder\.cls\.predictions\.transform\.dense\.", "mlm_head.transform.dense."),
    (r"^text_encoder\.cls\.predictions\.transform\.LayerNorm\.", "mlm_head.transform.layer_norm."),
    (r"^text_encoder\.cls\.predictions\.decoder\.", "mlm_head.decoder."),
    (r"^vision_proj\.", "vlp.image_projection."),
    (r"^text_proj\.", "vlp.text_projection."),
)
# BERT's MLM head under transformers' names (`BertOnlyMLMHead`), for the torchmultimodal layout.
MLM_RULES = (
    (r"^cls\.predictions\.transform\.dense\.", "mlm_head.transform.dense."),
    (r"^cls\.predictions\.transform\.LayerNorm\.", "mlm_head.transform.layer_norm."),
    (r"^cls\.predictions\.decoder\.", "mlm_head.decoder."),
)
_DROPPED = re.compile(
    r"(_m\.|^(image_queue|text_queue|idx_queue|queue_ptr)$|\.position_ids$|^text_encoder\.(bert\.)?pooler\.)"
)


def detect_layout(state_dict: dict[str, torch.Tensor]) -> str:
    """ "torchmultimodal" or "original" (ALBEF / LAVIS), from the keys."""
    if any(key.startswith("albef_model.vision_encoder.") for key in state_dict):
        return "torchmultimodal"
    if any(key.startswith("visual_encoder.") for key in state_dict):
        return "original"
    sample = sorted(state_dict)[:5]
    raise ValueError(
        "Not an ALBEF state dict: expected torchmultimodal's `albef_model.vision_encoder.*` or ALBEF's "
        f"`visual_encoder.*` keys, got {sample}..."
    )


def _normalise(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the momentum copies, queues and buffers; `ALBEFModel`'s keys get `ALBEFModelWithSimilarity`'s prefix;
    the MLM bias kept twice (tied) appears once."""
    if any(key.startswith("vision_encoder.") for key in state_dict):
        state_dict = {
            (f"albef_model.{key}" if key.split(".")[0].endswith("_encoder") else key): value
            for key, value in state_dict.items()
        }
    state_dict = {key: value for key, value in state_dict.items() if not _DROPPED.search(key)}
    for prefix in ("text_encoder.cls.predictions.", "cls.predictions."):
        if f"{prefix}bias" in state_dict:
            bias = state_dict.pop(f"{prefix}bias")
            state_dict.setdefault(f"{prefix}decoder.bias", bias)
    return state_dict


def _split_text_layers(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """xbert's one stack of BERT layers -> our text encoder (layers before `fusion_layer`, the first one that
    cross-attends) and fusion layers (the rest, renumbered from 0)."""
    layers = {int(match.group(1)) for key in state_dict if (match := re.match(r"^vlp\.bert_layers\.(\d+)\.", key))}
    crossing = sorted(
        int(match.group(1)) for key in state_dict if (match := re.match(r"^vlp\.bert_layers\.(\d+)\.cross_attn\.", key))
    )
    if not crossing:
        raise ValueError("No text layer cross-attends to the image (`crossattention`): not an ALBEF text encoder.")
    fusion_layer = crossing[0]
    if sorted(set(crossing)) != list(range(fusion_layer, max(layers) + 1)):
        raise ValueError(
            f"ALBEF cross-attends in every layer from `fusion_layer` on; got layers {sorted(set(crossing))}."
        )
    split = {}
    for key, value in state_dict.items():
        match = re.match(r"^vlp\.bert_layers\.(\d+)\.(.*)$", key)
        if match is None:
            split[key] = value
            continue
        index, rest = int(match.group(1)), match.group(2)
        where = (
            f"vlp.text_encoder.layers.{index}" if index < fusion_layer else f"vlp.fusion.layers.{index - fusion_layer}"
        )
        split[f"{where}.{rest}"] = value
    return split, fusion_layer


def convert_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An ALBEF state dict (either layout) under our `VLPFusionForPreTraining` names."""
    state_dict = _normalise(state_dict)
    layout = detect_layout(state_dict)
    temp = state_dict.pop("temp", None)
    if layout == "torchmultimodal":
        state_dict = common.rename_keys(state_dict, (*TMM_RULES, *MLM_RULES))
        state_dict = common.split_fused_qkv(state_dict)
    else:
        state_dict = common.rename_keys(state_dict, ORIGINAL_RULES)
        state_dict, _ = _split_text_layers(state_dict)
        state_dict = common.split_fused_qkv(state_dict)
    for key in ("vlp.image_embeddings.class_embedding", "vlp.image_embeddings.position_embedding.weight"):
        state_dict[key] = state_dict[key].reshape(-1, state_dict[key].shape[-1]).squeeze(0)
    if temp is not None:
        state_dict["vlp.logit_scale"] = torch.log(1.0 / temp.reshape(()).double()).to(temp.dtype)
    return state_dict


def convert_config(state_dict: dict[str, torch.Tensor], vision_heads: int | None = None,
                   text_heads: int | None = None) -> VLPFusionConfig:  # fmt: skip
    """The "albef-base" preset with the sizes the converted weights (`convert_state_dict`) have."""
    width = state_dict["vlp.image_embeddings.class_embedding"].shape[0]
    patch = state_dict["vlp.image_embeddings.patch_embedding.weight"]
    num_patches = state_dict["vlp.image_embeddings.position_embedding.weight"].shape[0] - 1
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(f"The ViT's {num_patches} position embeddings (class token excluded) are not a square grid.")

    def count(prefix: str) -> int:
        pattern = re.compile(rf"^{re.escape(prefix)}(\d+)\.")
        return len({match.group(1) for key in state_dict if (match := pattern.match(key))})

    token = state_dict["vlp.text_embeddings.token_embedding.weight"]
    text_width = token.shape[1]
    vision = dict(
        image_size=side * patch.shape[-1], patch_size=patch.shape[-1], num_channels=patch.shape[1], hidden_size=width,
        intermediate_size=state_dict["vlp.image_encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=count("vlp.image_encoder.layers."), num_attention_heads=vision_heads or max(1, width // 64),
    )  # fmt: skip
    text = dict(
        vocab_size=token.shape[0], hidden_size=text_width,
        max_position_embeddings=state_dict["vlp.text_embeddings.position_embedding.weight"].shape[0],
        type_vocab_size=state_dict["vlp.text_embeddings.token_type_embedding.weight"].shape[0],
        intermediate_size=state_dict["vlp.fusion.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=count("vlp.text_encoder.layers."), num_attention_heads=text_heads or max(1, text_width // 64),
        hidden_dropout=0.1, attention_dropout=0.1,  # ALBEF's configs/config_bert.json (training only)
    )  # fmt: skip
    decoder = state_dict.get("mlm_head.decoder.weight")
    tied = decoder is None or torch.equal(decoder, token)
    logit_scale = state_dict.get("vlp.logit_scale")
    return get_preset_config(
        "albef-base", text_config={**get_preset_config("albef-base").text_config.to_dict(), **text},
        vision_config={**get_preset_config("albef-base").vision_config.to_dict(), **vision},
        num_fusion_layers=count("vlp.fusion.layers."), projection_dim=state_dict["vlp.text_projection.weight"].shape[0],
        tie_word_embeddings=tied,
        **({} if logit_scale is None else {"logit_scale_init_value": float(logit_scale)}),
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------------------
# The reference: torchmultimodal's ALBEF
# --------------------------------------------------------------------------------------------------------------


# Our BERT-layer names -> torchmultimodal's (`TransformerEncoderLayer`, `TransformerCrossAttentionLayer`, no dropout).
_TMM_BERT_LAYER_NAMES = (
    ("self_attn.q_proj.", "attention.query."), ("self_attn.k_proj.", "attention.key."),
    ("self_attn.v_proj.", "attention.value."), ("self_attn.out_proj.", "attention.output."),
    ("cross_attn.q_proj.", "cross_attention.query."), ("cross_attn.k_proj.", "cross_attention.key."),
    ("cross_attn.v_proj.", "cross_attention.value."), ("cross_attn.out_proj.", "cross_attention.output."),
    ("layer_norm1.", "attention_layernorm."), ("layer_norm_cross.", "cross_attention_layernorm."),
    ("layer_norm2.", "feedforward_layernorm."), ("mlp.fc1.", "feedforward.model.0."), ("mlp.fc2.", "feedforward.model.2."),
)  # fmt: skip


def to_torchmultimodal(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our converted weights under torchmultimodal's `ALBEFModelWithSimilarity` names (plus `itm_head.*` and
    transformers' `cls.predictions.*`): how an original-layout checkpoint is loaded into the reference."""
    inverse = {}
    for key, value in state_dict.items():
        new = key
        new = re.sub(r"^vlp\.image_embeddings\.patch_embedding\.", "albef_model.vision_encoder.encoder.conv_proj.", new)
        if key == "vlp.image_embeddings.class_embedding":
            new, value = "albef_model.vision_encoder.encoder.class_token", value.reshape(1, 1, -1)
        if key == "vlp.image_embeddings.position_embedding.weight":
            new, value = "albef_model.vision_encoder.encoder.encoder.pos_embedding", value[None]
        new = re.sub(r"^vlp\.image_post_layernorm\.", "albef_model.vision_encoder.encoder.encoder.ln.", new)
        vision = r"^vlp\.image_encoder\.layers\.(\d+)\."
        target = r"albef_model.vision_encoder.encoder.encoder.layers.encoder_layer_\1."
        for ours, theirs in (("layer_norm1.", "ln_1."), ("layer_norm2.", "ln_2."), ("mlp.fc1.", "mlp.0."),
                             ("mlp.fc2.", "mlp.3."), ("self_attn.out_proj.", "self_attention.out_proj.")):  # fmt: skip
            new = re.sub(vision + re.escape(ours), target + theirs, new)
        for ours, theirs in (("token_embedding", "word_embeddings"), ("position_embedding", "position_embeddings"),
                             ("token_type_embedding", "token_type_embeddings"), ("layer_norm", "layer_norm")):  # fmt: skip
            new = re.sub(rf"^vlp\.text_embeddings\.{ours}\.", f"albef_model.text_encoder.embeddings.{theirs}.", new)
        new = re.sub(r"^vlp\.text_encoder\.layers\.(\d+)\.", r"albef_model.text_encoder.encoder.layer.\1.", new)
        new = re.sub(r"^vlp\.fusion\.layers\.(\d+)\.", r"albef_model.multimodal_encoder.layer.\1.", new)
        if new.startswith(("albef_model.text_encoder.encoder.", "albef_model.multimodal_encoder.")):
            for ours, theirs in _TMM_BERT_LAYER_NAMES:
                new = new.replace(f".{ours}", f".{theirs}")
        new = re.sub(r"^vlp\.image_projection\.", "vision_proj.", new)
        new = re.sub(r"^vlp\.text_projection\.", "text_proj.", new)
        new = re.sub(r"^mlm_head\.transform\.dense\.", "cls.predictions.transform.dense.", new)
        new = re.sub(r"^mlm_head\.transform\.layer_norm\.", "cls.predictions.transform.LayerNorm.", new)
        new = re.sub(r"^mlm_head\.decoder\.", "cls.predictions.decoder.", new)
        if key == "vlp.logit_scale":
            new, value = "temp", torch.exp(-value.double()).to(value.dtype)
        inverse[new] = value
    # torchvision's ViT keeps q, k, v stacked (`nn.MultiheadAttention.in_proj_*`).
    for prefix in sorted({key.rpartition(".self_attn.")[0] for key in inverse if ".self_attn.q_proj." in key}):
        target = prefix.replace(
            "vlp.image_encoder.layers.", "albef_model.vision_encoder.encoder.encoder.layers.encoder_layer_"
        )
        for kind in ("weight", "bias"):
            parts = [inverse.pop(f"{prefix}.self_attn.{name}_proj.{kind}") for name in ("q", "k", "v")]
            inverse[f"{target}.self_attention.in_proj_{kind}"] = torch.cat(parts)
    return inverse


class ALBEFReference(nn.Module):
    """torchmultimodal's ALBEF encoders and projections (`ALBEFModelWithSimilarity`) with ALBEF's ITM head and
    BERT's MLM head (xbert's `BertOnlyMLMHead`, which is transformers'), computing what ALBEF's forward computes
    for one batch of pairs, without the momentum models and queues."""

    def __init__(self, config: VLPFusionConfig):
        super().__init__()
        try:
            from torchmultimodal.models.albef.image_encoder import ALBEFVisionEncoder
            from torchmultimodal.models.albef.model import (
                ALBEFModel,
                ALBEFModelWithSimilarity,
            )
            from torchmultimodal.models.albef.multimodal_encoder import (
                ALBEFMultimodalEncoder,
            )
            from torchmultimodal.modules.encoders.bert_text_encoder import (
                bert_text_encoder,
            )
        except ImportError as error:
            raise ImportError(
                "The ALBEF parity check runs torchmultimodal's ALBEF: `pip install -c constraints.txt --no-deps "
                f"torchmultimodal-nightly iopath portalocker` ({error})."
            ) from error

        vision, text = config.vision_config, config.text_config
        if vision.hidden_size != text.hidden_size:
            raise ValueError("torchmultimodal's ALBEF cross-attends between equal widths.")
        vision_encoder = ALBEFVisionEncoder(
            image_size=vision.image_size, patch_size=vision.patch_size, num_hidden_layers=vision.num_hidden_layers,
            num_attention_heads=vision.num_attention_heads, hidden_size=vision.hidden_size,
            mlp_dim=vision.intermediate_size, layer_norm_eps=vision.layer_norm_eps,
        )  # fmt: skip
        layer = dict(hidden_size=text.hidden_size, num_attention_heads=text.num_attention_heads,
                     intermediate_size=text.intermediate_size, layer_norm_eps=text.layer_norm_eps)  # fmt: skip
        text_encoder = bert_text_encoder(
            num_hidden_layers=text.num_hidden_layers, dropout=0.0, vocab_size=text.vocab_size,
            max_position_embeddings=text.max_position_embeddings, type_vocab_size=text.type_vocab_size,
            pad_token_id=text.pad_token_id or 0, **layer,
        )  # fmt: skip
        multimodal = ALBEFMultimodalEncoder(num_hidden_layers=config.num_fusion_layers, **layer)
        self.similarity = ALBEFModelWithSimilarity(
            ALBEFModel(vision_encoder, text_encoder, multimodal), nn.Linear(vision.hidden_size, config.projection_dim),
            nn.Linear(text.hidden_size, config.projection_dim), embed_size=config.projection_dim, queue_size=1,
        )  # fmt: skip
        self.itm_head = nn.Linear(text.hidden_size, 2)
        bert = BertConfig(hidden_size=text.hidden_size, vocab_size=text.vocab_size, hidden_act=text.hidden_act,
                          layer_norm_eps=text.layer_norm_eps)  # fmt: skip
        self.cls = BertOnlyMLMHead(bert)

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """torchmultimodal's names (`to_torchmultimodal`), ALBEF's `itm_head.*` and transformers' `cls.*`."""
        theirs = {key if key.startswith(("itm_head.", "cls.")) else f"similarity.{key}": value
                  for key, value in state_dict.items()}  # fmt: skip
        if "cls.predictions.decoder.bias" in theirs:  # transformers keeps the (tied) bias under both names
            theirs["cls.predictions.bias"] = theirs["cls.predictions.decoder.bias"]
        expected = {key for key in self.state_dict() if not re.search(r"_m\.|queue|_ptr", key)}
        missing, unexpected = expected - set(theirs), set(theirs) - expected
        if missing or unexpected:
            raise ValueError(f"Reference weights: missing {sorted(missing)}, unexpected {sorted(unexpected)}.")
        self.load_state_dict(theirs, strict=False)

    @torch.no_grad()
    def forward(self, pixel_values, input_ids, attention_mask) -> dict[str, torch.Tensor]:
        model = self.similarity.albef_model
        image = model.vision_encoder(pixel_values)
        text = model.text_encoder(input_ids, attention_mask).last_hidden_state
        fused = model.multimodal_encoder(hidden_states=text, attention_mask=attention_mask, encoder_hidden_states=image)
        image_feat = nn.functional.normalize(self.similarity.vision_proj(image[:, 0, :]), dim=-1)
        text_feat = nn.functional.normalize(self.similarity.text_proj(text[:, 0, :]), dim=-1)
        return {
            "image_unimodal_state": image,
            "text_unimodal_state": text,
            "text_last_hidden_state": fused,
            "image_embeds": image_feat,
            "text_embeds": text_feat,
            "logits_per_image": image_feat @ text_feat.t() / self.similarity.temp,  # ALBEF's sim_i2t
            "itm_logits": self.itm_head(fused[:, 0, :]),
            "mlm_logits": self.cls(fused),
        }


def parity_inputs(config: VLPFusionConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded images and `[CLS] words [SEP]` texts, right-padded (row i is 2 i tokens shorter)."""
    generator = torch.Generator().manual_seed(seed)
    vision, text = config.vision_config, config.text_config
    length = min(12, text.max_position_embeddings)
    input_ids = torch.randint(1, text.vocab_size, (NUM_PAIRS, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    for row in range(NUM_PAIRS):
        real = max(length - 2 * row, 3)
        input_ids[row, real:], attention_mask[row, real:] = text.pad_token_id or 0, 0
    size = vision.image_size
    return dict(
        pixel_values=torch.randn(NUM_PAIRS, vision.num_channels, size, size, generator=generator),
        input_ids=input_ids,
        attention_mask=attention_mask,
    )


@torch.no_grad()
def compare(reference: ALBEFReference, model: VLPFusionForPreTraining, inputs) -> dict[str, float]:
    """Max abs differences of every output (real text positions only for the per-token ones)."""
    theirs = reference(**inputs)
    ours = model(**inputs, return_dict=True)
    base = ours.fusion_output
    mine = {
        "image_unimodal_state": base.image_unimodal_state, "text_unimodal_state": base.text_unimodal_state,
        "text_last_hidden_state": base.text_last_hidden_state, "image_embeds": base.image_embeds,
        "text_embeds": base.text_embeds, "logits_per_image": base.logits_per_image, "itm_logits": ours.itm_logits,
        "mlm_logits": ours.mlm_logits,
    }  # fmt: skip
    real = inputs["attention_mask"].bool()
    per_token = ("text_unimodal_state", "text_last_hidden_state", "mlm_logits")
    return {
        name: common.max_abs_diff(theirs[name][real], mine[name][real])
        if name in per_token
        else common.max_abs_diff(theirs[name], mine[name])
        for name in mine
    }


def image_processor(config: VLPFusionConfig) -> VLPImageProcessor:
    """ALBEF's test transform: a bicubic resize to the square input, CLIP's mean and std."""
    size = config.vision_config.image_size
    return VLPImageProcessor(
        size={"height": size, "width": size}, do_center_crop=False, image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD), resize_backend="torchvision",
    )  # fmt: skip


def convert_albef(
    state_dict: dict[str, torch.Tensor], vision_heads: int | None = None, text_heads: int | None = None,
    tolerance: float = 1e-4, seed: int = 0,
) -> tuple[VLPFusionForPreTraining | None, dict[str, float]]:  # fmt: skip
    """An ALBEF state dict (either layout) -> our model and the parity figures against torchmultimodal's ALBEF
    (None instead of the model when one exceeds `tolerance`)."""
    layout = detect_layout(_normalise(state_dict))
    converted = convert_state_dict(state_dict)
    config = convert_config(converted, vision_heads, text_heads)
    absent = [prefix for prefix in OPTIONAL_HEADS if not any(key.startswith(prefix) for key in converted)]
    if layout == "original" and absent:
        raise ValueError(f"An ALBEF checkpoint has its ITM and MLM heads; this one lacks {absent}.")
    if "mlm_head." in absent:  # a fresh MLM head is tied to the word embeddings, as ALBEF's
        converted["mlm_head.decoder.weight"] = converted["vlp.text_embeddings.token_embedding.weight"]
    model = common.load_converted(config, converted, VLPFusionForPreTraining, new_prefixes=(*NEW_PREFIXES, *absent))
    model.config.architectures = ["VLPFusionForPreTraining"]
    reference = ALBEFReference(config).eval()
    if layout == "torchmultimodal":  # the source's own weights; heads it lacks are our fresh ones
        ours = {key: value for key, value in model.state_dict().items() if key.startswith(tuple(absent))}
        reference.load_weights({**_normalise(state_dict), **to_torchmultimodal(ours)})
    else:  # the original layout mapped onto torchmultimodal's
        reference.load_weights(to_torchmultimodal(converted))
    diffs = compare(reference, model, parity_inputs(config, seed))
    return (model if max(diffs.values()) <= tolerance else None), diffs


def load_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """A state dict file, or ALBEF's training checkpoint `{"model": state_dict, "optimizer": ..., "config": ...}`."""
    if path.endswith(".safetensors"):
        return common.load_state_dict_file(path)
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict) or not all(isinstance(value, torch.Tensor) for value in loaded.values()):
        raise ValueError(f"{path!r} holds no state dict (a mapping of names to tensors, or one under 'model').")
    if loaded and all(key.startswith("module.") for key in loaded):
        loaded = {key[len("module.") :]: value for key, value in loaded.items()}
    return loaded


def convert(checkpoint: str, output_dir: str, tolerance: float = 1e-4, seed: int = 0, args=None) -> int:
    """Load, check parity, save, and push when `args` has --push-to-hub. Returns 0 when saved (and pushed), 1 when
    parity failed (nothing written) or the push failed."""
    state_dict = load_checkpoint(checkpoint)
    layout = detect_layout(_normalise(state_dict))
    common.logger.info(f"Converting ALBEF ({layout} layout) from {checkpoint} into VLPFusionForPreTraining")
    heads = dict(vision_heads=getattr(args, "vision_heads", None), text_heads=getattr(args, "text_heads", None))
    model, diffs = convert_albef(state_dict, tolerance=tolerance, seed=seed, **heads)
    print("Parity against torchmultimodal's ALBEF, same images and padded text (fp32):")
    for name, diff in diffs.items():
        print(f"  {name:<23} max |diff| = {diff:.3e}")
    print(f"  (tolerance {tolerance:g})")
    print("PASSED" if model is not None else "FAILED")
    if model is None:
        common.logger.error("Parity failed: nothing written.")
        return 1
    model.save_pretrained(output_dir)
    processor = image_processor(model.config)
    tokenizer_dir = getattr(args, "tokenizer", None)
    if tokenizer_dir:
        from transformers import AutoTokenizer

        processor = VLPProcessor(image_processor=processor, tokenizer=AutoTokenizer.from_pretrained(tokenizer_dir))
    processor.save_pretrained(output_dir)
    common.logger.info(f"Saved the model and its {type(processor).__name__} to {output_dir}")
    if args is None:
        return 0
    return push_after_conversion(
        args, output_dir, source=f"ALBEF ({layout}) from {checkpoint}", parity=diffs, tolerance=tolerance,
        source_path=checkpoint,
    )  # fmt: skip


def main(argv=None) -> int:
    parser = common.build_parser(__doc__)
    parser.add_argument("--checkpoint", required=True, help="ALBEF state dict (.pth / .pt / .safetensors).")
    parser.add_argument("--vision-heads", type=int, default=None, help="ViT attention heads (default width / 64).")
    parser.add_argument("--text-heads", type=int, default=None, help="BERT attention heads (default width / 64).")
    parser.add_argument("--tokenizer", default=None, help="BERT tokenizer folder saved with the processor.")
    args = parser.parse_args(argv)
    common.setup_logging()
    return convert(args.checkpoint, args.output, args.tolerance, args.seed, args=args)


if __name__ == "__main__":
    sys.exit(main())
