"""The named presets: the single source of truth for a known architecture. Converting a published checkpoint
means translating its config into a preset-shaped config, renaming its weights and proving parity.

Not model code: no model file imports it, so checkpoints do not carry the table."""

import copy
import math

from transformers import PreTrainedConfig

from .configuration_captioning import _BLIP_TEXT, _BLIP_VISION, VLPCaptioningConfig
from .configuration_fusion import VLPFusionConfig
from .configuration_unified import VLPUnifiedConfig
from .configuration_vlp import _FUSION_BERT_BASE, _VIT_B_16, VLPDualEncoderConfig

_CLIP_TEXT = dict(
    vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
    max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, causal=True, pooling="eos",
    pad_token_id=1, bos_token_id=49406, eos_token_id=49407, initializer_style="clip",
)  # fmt: skip
_CLIP_VISION = dict(
    image_size=224, patch_size=32, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, hidden_act="quick_gelu", layer_norm_eps=1e-5, class_token=True, patch_bias=False,
    pre_layernorm=True, final_norm="pooled", pooling="cls", initializer_style="clip",
)  # fmt: skip
_SIGLIP_VISION = dict(
    image_size=224, patch_size=16, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, class_token=False, patch_bias=True,
    pre_layernorm=False, final_norm="all", pooling="attention",
)  # fmt: skip
_SIGLIP_TEXT = dict(
    vocab_size=32000, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=64, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, causal=False, pooling="last",
    pad_token_id=1, bos_token_id=None, eos_token_id=1,
)  # fmt: skip
_SIGLIP_HEAD = dict(
    projection_dim=768, vision_projection="none", text_projection="linear", projection_bias=True,
    loss_type="sigmoid", logit_scale_init_value=math.log(10.0), logit_bias_init_value=-10.0, logit_scale_max=None,
)  # fmt: skip

_BERT_BASE = dict(
    vocab_size=30522, max_position_embeddings=512, type_vocab_size=2, hidden_size=768, intermediate_size=3072,
    num_hidden_layers=12, num_attention_heads=12, hidden_act="gelu", layer_norm_eps=1e-12, hidden_dropout=0.1,
    attention_dropout=0.1, pre_norm=False, pad_token_id=0,
)  # fmt: skip
_SMALL = dict(
    vocab_size=1000, max_position_embeddings=32, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
    num_attention_heads=4, layer_norm_eps=1e-12, pre_norm=True, embedding_norm="text", pad_token_id=0,
)  # fmt: skip

# The sizes of the CPU presets ("small": trains in minutes) and of the test presets ("tiny": every code path, seconds
# to build), on top of each family's architecture. The text vocabulary of the small ones is set by the tokenizer.
def _scale(width: int, intermediate: int, layers: int, image_size: int, vocab: int, positions: int, bos: int):
    """(vision, text) tower sizes: 4 heads, 8-pixel patches, pad 0, bos `bos` and eos `bos + 1`."""
    stack = dict(hidden_size=width, intermediate_size=intermediate, num_hidden_layers=layers, num_attention_heads=4)
    vision = dict(stack, image_size=image_size, patch_size=8)
    text = dict(stack, vocab_size=vocab, max_position_embeddings=positions, pad_token_id=0, bos_token_id=bos,
                eos_token_id=bos + 1)  # fmt: skip
    return vision, text


_SMALL_VISION, _SMALL_TEXT = _scale(128, 512, layers=4, image_size=64, vocab=1000, positions=32, bos=2)
_TINY_VISION, _TINY_TEXT = _scale(32, 64, layers=2, image_size=32, vocab=99, positions=16, bos=1)

_LXMERT_TEXT = dict(_FUSION_BERT_BASE, num_hidden_layers=9, hidden_dropout=0.1, attention_dropout=0.1)
# LXMERT's region stream: BERT layers on region embeddings (image fields unused).
_LXMERT_REGIONS = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=5, num_attention_heads=12, hidden_act="gelu",
    layer_norm_eps=1e-12, hidden_dropout=0.1, attention_dropout=0.1, pre_norm=False, pre_layernorm=False,
    final_norm="none",
)  # fmt: skip
_CLIP_VIT_B_16 = dict(
    _VIT_B_16, hidden_act="quick_gelu", layer_norm_eps=1e-5, patch_bias=False, pre_layernorm=True
)
_ROBERTA_BASE = dict(
    _FUSION_BERT_BASE, vocab_size=50265, num_hidden_layers=12, max_position_embeddings=514, type_vocab_size=1,
    layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2,
)  # fmt: skip

PRESETS: dict[str, tuple[type, dict]] = {
    "clip-vit-b-32": (VLPDualEncoderConfig, dict(vision_config=_CLIP_VISION, text_config=_CLIP_TEXT)),
    "clip-vit-b-16": (
        VLPDualEncoderConfig,
        dict(vision_config={**_CLIP_VISION, "patch_size": 16}, text_config=_CLIP_TEXT),
    ),
    "clip-vit-l-14": (
        VLPDualEncoderConfig,
        dict(
            vision_config={**_CLIP_VISION, "patch_size": 14, "hidden_size": 1024, "intermediate_size": 4096,
                           "num_hidden_layers": 24, "num_attention_heads": 16},
            text_config={**_CLIP_TEXT, "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12},
            projection_dim=768,
        ),
    ),  # fmt: skip
    "siglip-b-16": (VLPDualEncoderConfig, dict(vision_config=_SIGLIP_VISION, text_config=_SIGLIP_TEXT, **_SIGLIP_HEAD)),
    # Trains in minutes on a laptop CPU: the default of `vlp pretrain`. The text vocabulary is set by the tokenizer.
    # Width 128 rather than 192: on 2 CPU cores twice the steps in the same time retrieve better (R@1 40 vs 34).
    "dual-small": (
        VLPDualEncoderConfig,
        dict(
            vision_config={**_CLIP_VISION, **_SMALL_VISION, "hidden_act": "gelu"},
            text_config={**_CLIP_TEXT, **_SMALL_TEXT, "hidden_act": "gelu"},
            projection_dim=128,
        ),
    ),  # fmt: skip
    # For tests: every code path, seconds to build.
    "dual-tiny": (
        VLPDualEncoderConfig,
        dict(
            vision_config={**_CLIP_VISION, **_TINY_VISION}, text_config={**_CLIP_TEXT, **_TINY_TEXT}, projection_dim=16,
        ),
    ),  # fmt: skip
    # dandelin/vilt-b32-mlm: BERT's vocabulary and 40 text positions, ViT-B/32 blocks over 384px patch grids.
    "vilt-b-32": (
        VLPUnifiedConfig,
        dict(
            vocab_size=30522, max_position_embeddings=40, type_vocab_size=2, visual_input="patches", image_size=384,
            patch_size=32, patch_bias=True, max_image_length=200, embedding_norm="text", hidden_size=768,
            intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, hidden_act="gelu",
            layer_norm_eps=1e-12, pre_norm=True, vqa_head="pooled_mlp", vqa_loss="bce", pad_token_id=0,
        ),
    ),  # fmt: skip
    # uclanlp/visualbert-vqa-coco-pre: BERT-base over 2048-d detector features, no box input.
    "visualbert-base": (
        VLPUnifiedConfig,
        dict(
            **_BERT_BASE, visual_input="regions", visual_feat_dim=2048, box_embedding="none", max_regions=100,
            embedding_norm="joint", vqa_head="text_token", vqa_loss="kl",
        ),
    ),  # fmt: skip
    # UNITER-base: BERT-base, 2048-d features, 7-d box features, LayerNorms on features, boxes and the visual sum;
    # region classification over Visual Genome's 1600 classes + background.
    "uniter-base": (
        VLPUnifiedConfig,
        dict(
            **_BERT_BASE, visual_input="regions", visual_feat_dim=2048, box_embedding="uniter",
            visual_feat_layernorm=True, visual_pos_layernorm=True, max_regions=100, embedding_norm="separate",
            num_object_labels=1601, vqa_head="pooled_mlp", vqa_loss="bce",
        ),
    ),  # fmt: skip
    # CPU default of `vlp pretrain --family unified`; the vocabulary size is set by the tokenizer.
    "unified-small": (
        VLPUnifiedConfig,
        dict(**_SMALL, visual_input="patches", image_size=64, patch_size=8, max_image_length=-1),
    ),
    "unified-small-regions": (
        VLPUnifiedConfig,
        dict(
            **{**_SMALL, "embedding_norm": "separate"}, visual_input="regions", visual_feat_dim=64,
            box_embedding="linear", visual_pos_dim=4, visual_feat_layernorm=True, visual_pos_layernorm=True,
            max_regions=36, num_object_labels=5,  # the 5 shape classes of the embedded scenes' regions
        ),
    ),  # fmt: skip
    # For tests: every code path, seconds to build.
    "unified-tiny": (
        VLPUnifiedConfig,
        dict(
            vocab_size=99, max_position_embeddings=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, visual_input="patches", image_size=32, patch_size=8, max_image_length=-1,
            pre_norm=True, embedding_norm="text", pad_token_id=0,
        ),
    ),  # fmt: skip
    # unc-nlp/lxmert-base-uncased: 9 language, 5 relation and 5 cross-modality layers; one cross-attention shared
    # by both directions; no ITC head (projection_dim=None), as the checkpoint has none.
    "lxmert-base": (
        VLPFusionConfig,
        dict(
            text_config=_LXMERT_TEXT, vision_config=_LXMERT_REGIONS, visual_input="regions", visual_feat_dim=2048,
            visual_pos_dim=4, fusion_type="co_attention", num_fusion_layers=5, co_attention_order="cross_first",
            share_cross_attention=True, fused_pooling="pooler", projection_dim=None, image_embed_pooling="mean",
            num_object_labels=1600, num_attribute_labels=400, num_labels=9500, pretraining_answer_head=True,
        ),
    ),  # fmt: skip
    # ViLBERT (config/bert_base_6layer_6conect.json): BERT-base text (6 text-only layers, then 6 fusion layers), a
    # 1024-wide region stream on 2048-d features + 5-d boxes (x1, y1, x2, y2, area), embedded as LayerNorm(features +
    # boxes). Each fusion layer is ViLBERT's co-attention block (cross-attention at 1024 wide, 8 heads, + FFN) then
    # a plain layer per stream; the pooled output multiplies both streams' ReLU poolers (1024 wide).
    "vilbert-base": (
        VLPFusionConfig,
        dict(
            text_config=dict(_FUSION_BERT_BASE, num_hidden_layers=6, hidden_dropout=0.1, attention_dropout=0.1),
            vision_config=dict(_LXMERT_REGIONS, hidden_size=1024, intermediate_size=1024, num_hidden_layers=0,
                               num_attention_heads=8),
            visual_input="regions", visual_feat_dim=2048, visual_pos_dim=5, fusion_type="co_attention",
            num_fusion_layers=6, co_attention_order="cross_ffn_first", co_attention_hidden_size=1024,
            co_attention_num_heads=8, fused_pooling="text_image_product", region_embedding_norm="sum",
            projection_dim=None, image_embed_pooling="first", num_object_labels=1601, region_losses=["obj"],
            num_labels=3129,
        ),
    ),  # fmt: skip
    # ALBEF: ViT-B/16, 6 BERT text layers + 6 merge layers (text self-attention + cross-attention to the image), ITC
    # on 256-d projections with a learned temperature initialised at 0.07 (clamped to [0.001, 0.5] in ALBEF; here
    # exp(logit_scale) <= 1000). ALBEF's computation exactly: `vlp convert albef` matches torchmultimodal's and
    # ALBEF's own code within 1e-5 (ALBEF pretrains at 256 px; the converter reads the size off the weights).
    "albef-base": (
        VLPFusionConfig,
        dict(
            text_config=_FUSION_BERT_BASE, vision_config=_VIT_B_16, visual_input="patches", fusion_type="merge",
            num_fusion_layers=6, fused_pooling="first", projection_dim=256, logit_scale_init_value=math.log(1 / 0.07),
            logit_scale_max=1000.0,
        ),
    ),  # fmt: skip
    # METER (CLIP-ViT-B/16 + RoBERTa-base): each stream mapped by a Linear and given a token type embedding, then 6
    # post-norm co-attention layers, self-attention first, on both 768-d streams, BERT-configured (gelu, LayerNorm eps
    # 1e-12, dropout 0.1) in both; ITM and VQA read the concatenated poolers of both streams' first tokens (1536
    # wide), the VQA head as METER's vqa_classifier (Linear(1536, 1536), LayerNorm, GELU, Linear).
    "meter-base": (
        VLPFusionConfig,
        dict(
            text_config=_ROBERTA_BASE, vision_config=_CLIP_VIT_B_16, visual_input="patches",
            fusion_type="co_attention", num_fusion_layers=6, co_attention_order="self_first", fusion_pre_norm=False,
            fusion_hidden_act="gelu", fusion_layer_norm_eps=1e-12, fusion_dropout=0.1, cross_modal_transform=True,
            fusion_token_type_embeddings=True, fused_pooling="text_image_concat", projection_dim=None,
            num_labels=3129, answer_head_size=1536, answer_head_norm_first=True,
        ),
    ),  # fmt: skip
    # The CPU default of `vlp pretrain --family fusion`; the text vocabulary is set by the tokenizer.
    "fusion-small": (
        VLPFusionConfig,
        dict(
            text_config={**_FUSION_BERT_BASE, **_SMALL_TEXT, "num_hidden_layers": 2},
            vision_config={**_VIT_B_16, **_SMALL_VISION, "num_hidden_layers": 2},
            visual_input="patches", fusion_type="merge", num_fusion_layers=2, fused_pooling="first",
            projection_dim=128,
        ),
    ),  # fmt: skip
    # For tests: every code path, milliseconds to run.
    "fusion-tiny": (
        VLPFusionConfig,
        dict(
            text_config={**_FUSION_BERT_BASE, **_TINY_TEXT}, vision_config={**_VIT_B_16, **_TINY_VISION},
            visual_input="patches", visual_feat_dim=24, visual_pos_dim=4, fusion_type="merge", num_fusion_layers=2,
            fused_pooling="first", projection_dim=16, num_object_labels=11, num_attribute_labels=7, num_labels=5,
        ),
    ),  # fmt: skip
    # Salesforce/blip-image-captioning-base: ViT-B/16 at 384px and a 12-layer BERT decoder cross-attending in every
    # layer, BERT's prediction head tied to the word embeddings; no contrastive head in the captioning checkpoint.
    "blip-base": (
        VLPCaptioningConfig,
        dict(vision_config=_BLIP_VISION, text_config=_BLIP_TEXT, lm_head_transform=True, projection_dim=None),
    ),
    # The CPU default for captioning: dual-small's shapes with a 4-layer pre-norm decoder; the vocabulary is set by
    # the tokenizer (bos 2 starts a caption, eos 3 ends it, pad 0).
    "captioning-small": (
        VLPCaptioningConfig,
        dict(
            vision_config={**_VIT_B_16, **_SMALL_VISION},
            text_config={**_CLIP_TEXT, **_SMALL_TEXT, "hidden_act": "gelu"},
            lm_head_transform=False,
        ),
    ),  # fmt: skip
    # CoCa at CPU scale: 2 unimodal text layers (their eos state is the contrastive text embedding) then 2 layers
    # cross-attending to the image, one checkpoint for ITC and captioning.
    "coca-small": (
        VLPCaptioningConfig,
        dict(
            vision_config={**_VIT_B_16, **_SMALL_VISION},
            text_config={**_CLIP_TEXT, **_SMALL_TEXT, "hidden_act": "gelu"},
            num_unimodal_layers=2, lm_head_transform=False, projection_dim=128,
        ),
    ),  # fmt: skip
    # For tests: every code path, milliseconds to run.
    "captioning-tiny": (
        VLPCaptioningConfig,
        dict(
            vision_config={**_VIT_B_16, **_TINY_VISION}, text_config={**_CLIP_TEXT, **_TINY_TEXT},
            lm_head_transform=False,
        ),
    ),  # fmt: skip
}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def get_preset_config(name: str, **overrides) -> PreTrainedConfig:
    """The config of a named preset. `overrides` replace top-level fields; `vision_config` / `text_config`
    overrides given as dicts are merged into the preset's tower instead of replacing it."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; known presets: {', '.join(preset_names())}.")
    config_class, fields = PRESETS[name]
    fields = copy.deepcopy(fields)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(fields.get(key), dict):
            fields[key].update(value)
        else:
            fields[key] = value
    return config_class(**fields)


__all__ = ["PRESETS", "get_preset_config", "preset_names"]
