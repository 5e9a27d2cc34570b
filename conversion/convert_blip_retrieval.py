"""Convert a transformers `BlipForImageTextRetrieval` folder (saved with `save_pretrained`) into the fusion family's
`VLPFusionForImageTextRetrieval`.

    python -m modeling_vlp.conversion.convert_blip_retrieval --source BLIP_ITM_DIR --output OUT_DIR [--tolerance 1e-4]

BLIP's text encoder runs its layers without the image for ITC and with cross-attention to every image token for ITM,
the same weights: the config is the "albef-base" preset with `share_text_layers=True` (the text encoder's own layers
cross-attend, no separate fusion layers) and the source's sizes: BLIP's ViT (fused qkv split into q/k/v, LayerNorm on
every output token), its BERT text encoder (no token types), the ITC projections and the ITM head. transformers'
model returns ITC scores as plain cosine similarities (`use_itm_head=False`, no temperature): the converted
`logit_scale` is 0 (a scale of 1), so `logits_per_image` are those scores; set it to `log(1 / 0.07)` (BLIP's
initial temperature) before training ITC further. Both models then run on one seeded batch of images and padded
texts; the folder is written only when the image states, the ITC embeddings and scores (`use_itm_head=False`), the
fused text states and the ITM logits (`use_itm_head=True`) agree within the tolerance. The source folder's processor
(BLIP's image processor + BERT tokenizer), when it has one, is saved as ours.
"""

import os
import sys

import torch
from transformers import AutoProcessor, BlipConfig, BlipForImageTextRetrieval

from ..configuration_fusion import VLPFusionConfig
from ..hub.push import push_after_conversion
from ..modeling_fusion_retrieval import VLPFusionForImageTextRetrieval
from ..presets import get_preset_config
from . import common
from .convert_blip import _BERT_LAYER, NUM_CAPTIONS, TOKENIZER_FILES

STATE_DICT_RULES = (
    (r"^vision_model\.embeddings\.class_embedding$", "vlp.image_embeddings.class_embedding"),
    (r"^vision_model\.embeddings\.patch_embedding\.", "vlp.image_embeddings.patch_embedding."),
    (r"^vision_model\.embeddings\.position_embedding$", "vlp.image_embeddings.position_embedding.weight"),
    (r"^vision_model\.encoder\.layers\.", "vlp.image_encoder.layers."),
    (r"\.self_attn\.qkv\.(weight|bias)$", r".self_attn.in_proj_\1"),
    (r"\.self_attn\.projection\.", ".self_attn.out_proj."),
    (r"^vision_model\.post_layernorm\.", "vlp.image_post_layernorm."),
    (r"^text_encoder\.embeddings\.word_embeddings\.", "vlp.text_embeddings.token_embedding."),
    (r"^text_encoder\.embeddings\.position_embeddings\.", "vlp.text_embeddings.position_embedding."),
    (r"^text_encoder\.embeddings\.LayerNorm\.", "vlp.text_embeddings.layer_norm."),
    (r"^text_encoder\.encoder\.layer\.", "vlp.text_encoder.layers."),
    *_BERT_LAYER,
    (r"^vision_proj\.", "vlp.image_projection."),
    (r"^text_proj\.", "vlp.text_projection."),
)
# Ours without a BLIP counterpart: the masked-patch token (not a retrieval weight).
NEW_PREFIXES = ("vlp.mask_token",)


def convert_config(source: BlipConfig) -> VLPFusionConfig:
    """ "albef-base" with BLIP's sizes and `share_text_layers` (BLIP's text encoder is its fusion encoder)."""
    vision, text = source.vision_config, source.text_config
    if text.encoder_hidden_size != vision.hidden_size:
        raise ValueError(
            f"BLIP's text_config.encoder_hidden_size ({text.encoder_hidden_size}) differs from the vision width "
            f"({vision.hidden_size}); its cross-attention reads the vision tokens as they are."
        )
    preset = get_preset_config("albef-base")
    vision_fields = dict(
        preset.vision_config.to_dict(), image_size=common.square(vision.image_size, "vision_config.image_size"),
        patch_size=common.square(vision.patch_size, "vision_config.patch_size"), hidden_size=vision.hidden_size,
        intermediate_size=vision.intermediate_size, num_hidden_layers=vision.num_hidden_layers,
        num_attention_heads=vision.num_attention_heads, hidden_act=vision.hidden_act,
        layer_norm_eps=float(vision.layer_norm_eps), attention_dropout=float(vision.attention_dropout),
    )  # fmt: skip
    text_fields = dict(
        preset.text_config.to_dict(), vocab_size=text.vocab_size, hidden_size=text.hidden_size,
        intermediate_size=text.intermediate_size, num_hidden_layers=text.num_hidden_layers,
        num_attention_heads=text.num_attention_heads, max_position_embeddings=text.max_position_embeddings,
        type_vocab_size=0, hidden_act=text.hidden_act, layer_norm_eps=float(text.layer_norm_eps),
        hidden_dropout=float(text.hidden_dropout_prob), attention_dropout=float(text.attention_probs_dropout_prob),
        pad_token_id=text.pad_token_id, bos_token_id=None, eos_token_id=text.sep_token_id,
    )  # fmt: skip
    return get_preset_config(
        "albef-base", vision_config=vision_fields, text_config=text_fields, num_fusion_layers=0,
        share_text_layers=True, projection_dim=source.image_text_hidden_size, logit_scale_init_value=0.0,
    )  # fmt: skip


def convert_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BLIP's weights under our names: the class token and positions lose their leading singleton dimensions, the
    fused `qkv` splits into q/k/v; `logit_scale` 0 (transformers' ITC scores have no temperature)."""
    state_dict = {key: value for key, value in state_dict.items() if not key.endswith("position_ids")}
    state_dict = common.split_fused_qkv(common.rename_keys(state_dict, STATE_DICT_RULES))
    for key in ("vlp.image_embeddings.class_embedding", "vlp.image_embeddings.position_embedding.weight"):
        state_dict[key] = state_dict[key].reshape(-1, state_dict[key].shape[-1]).squeeze(0)
    state_dict["vlp.logit_scale"] = torch.zeros((), dtype=state_dict["itm_head.weight"].dtype)
    return state_dict


def parity_inputs(config: BlipConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded images and `[CLS] words [SEP]` texts, right-padded (row i is 2 i tokens shorter)."""
    generator = torch.Generator().manual_seed(seed)
    vision, text = config.vision_config, config.text_config
    size = common.square(vision.image_size, "vision_config.image_size")
    length = min(12, text.max_position_embeddings)
    special = {text.pad_token_id, text.bos_token_id, text.sep_token_id}
    words = torch.tensor([token for token in range(text.vocab_size) if token not in special])
    input_ids = words[torch.randint(len(words), (NUM_CAPTIONS, length), generator=generator)]
    attention_mask = torch.ones_like(input_ids)
    for row in range(NUM_CAPTIONS):
        real = max(length - 2 * row, 3)
        input_ids[row, real - 1] = text.sep_token_id
        input_ids[row, real:], attention_mask[row, real:] = text.pad_token_id, 0
    return dict(
        pixel_values=torch.randn(NUM_CAPTIONS, 3, size, size, generator=generator),
        input_ids=input_ids,
        attention_mask=attention_mask,
    )


@torch.no_grad()
def compare(source_model, model, inputs: dict[str, torch.Tensor]) -> dict[str, float]:
    """Max abs differences of BLIP's ITC pass (`use_itm_head=False`) and ITM pass (`use_itm_head=True`) against
    ours (per-token states at real positions only)."""
    itc = source_model(**inputs, use_itm_head=False)
    itm = source_model(**inputs, use_itm_head=True)
    ours = model(**inputs, return_dict=True)
    base = ours.fusion_output
    normalize = torch.nn.functional.normalize
    image_embeds = normalize(source_model.vision_proj(itc.last_hidden_state[:, 0]), dim=-1)
    text_embeds = normalize(source_model.text_proj(itc.question_embeds[:, 0]), dim=-1)
    real = inputs["attention_mask"].bool()
    return {
        "image_states": common.max_abs_diff(itc.last_hidden_state, base.image_unimodal_state),
        "image_embeds": common.max_abs_diff(image_embeds, base.image_embeds),
        "text_embeds": common.max_abs_diff(text_embeds, base.text_embeds),
        "itc_scores": common.max_abs_diff(itc.itm_score, base.logits_per_image),
        "fused_text_states": common.max_abs_diff(itm.question_embeds[real], base.text_last_hidden_state[real]),
        "itm_logits": common.max_abs_diff(itm.itm_score, ours.itm_logits),
    }


def load_processor(source_dir: str, config: VLPFusionConfig):
    """The folder's BLIP processor as ours (its image processor translated, its tokenizer as is), or None when the
    folder has no tokenizer."""
    if not any(os.path.isfile(os.path.join(source_dir, name)) for name in TOKENIZER_FILES):
        return None
    source = AutoProcessor.from_pretrained(source_dir)
    image_processor = common.image_processor_from_transformers(source.image_processor)
    text_kwargs = dict(padding="longest", truncation=True, max_length=config.text_config.max_position_embeddings)
    return common.make_processor(image_processor, source.tokenizer, text_kwargs)


def convert(source_dir: str, output_dir: str, tolerance: float = 1e-4, seed: int = 0, args=None) -> int:
    """Load, check parity, save, and push when `args` (the command line) has --push-to-hub. Returns 0 when saved
    (and pushed), 1 when parity failed (nothing written) or the push failed."""
    if not os.path.isdir(source_dir):
        raise FileNotFoundError(f"`--source` {source_dir!r} is not a folder.")
    source_config = BlipConfig.from_pretrained(source_dir)
    architectures = source_config.architectures or ["BlipForImageTextRetrieval"]
    if "BlipForImageTextRetrieval" not in architectures:
        raise ValueError(f"{source_dir} holds {architectures}; this converter reads BlipForImageTextRetrieval.")
    source_model = BlipForImageTextRetrieval.from_pretrained(source_dir, dtype=torch.float32).eval()
    config = convert_config(source_model.config)
    common.logger.info(f"Converting BlipForImageTextRetrieval from {source_dir} into VLPFusionForImageTextRetrieval")
    model = common.load_converted(
        config, convert_state_dict(source_model.state_dict()), VLPFusionForImageTextRetrieval, NEW_PREFIXES
    )
    model.config.architectures = ["VLPFusionForImageTextRetrieval"]
    diffs = compare(source_model, model, parity_inputs(source_model.config, seed))
    ok = max(diffs.values()) <= tolerance
    print("Parity, both models on the same images and padded texts (fp32):")
    for name, diff in diffs.items():
        print(f"  {name:<17} max |diff| = {diff:.3e}")
    print(f"  (tolerance {tolerance:g})")
    print("PASSED" if ok else "FAILED")
    if not ok:
        common.logger.error("Parity failed: nothing written.")
        return 1
    os.makedirs(output_dir, exist_ok=True)
    model.save_pretrained(output_dir)
    processor = load_processor(source_dir, config)
    if processor is None:
        common.logger.info(f"Saved the model to {output_dir} (the source folder has no processor).")
    else:
        processor.save_pretrained(output_dir)
        common.logger.info(f"Saved the model and its {type(processor).__name__} to {output_dir}")
    if args is None:
        return 0
    return push_after_conversion(
        args, output_dir, source=f"BlipForImageTextRetrieval from {source_dir}", parity=diffs, tolerance=tolerance,
        source_path=source_dir,
    )  # fmt: skip


def main(argv=None) -> int:
    parser = common.build_parser(__doc__)
    parser.add_argument("--source", required=True, help="A BlipForImageTextRetrieval folder.")
    args = parser.parse_args(argv)
    common.setup_logging()
    return convert(args.source, args.output, args.tolerance, args.seed, args=args)


if __name__ == "__main__":
    sys.exit(main())
