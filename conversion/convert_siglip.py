"""Convert a transformers `SiglipModel` folder (saved with `save_pretrained`) into a `VLPDualEncoderModel`.

    python -m modeling_vlp.conversion.convert_siglip --source SIGLIP_DIR --output OUT_DIR [--tolerance 1e-4]

Architecture: the "siglip-b-16" preset (no class token, biased patch embedding, LayerNorm on every token, attention
pooling, bidirectional text tower pooled at the last position, sigmoid loss with a learned bias). Renamed weights:
the text `head` is our `text_projection`, the pooling head's fused `in_proj` is split into q/k/v. The folder's
tokenizer is reused (SigLIP was trained on `padding="max_length"` text; keep padding that way); its image
processor is translated.
"""

import sys

from transformers import SiglipModel

from ..presets import get_preset_config
from . import common

STATE_DICT_RULES = (
    (r"^text_model\.head\.", "text_projection."),
    (r"^vision_model\.head\.layernorm\.", "vision_model.head.layer_norm."),
)


def convert_config(source: SiglipModel, tokenizer=None):
    config = source.config
    if not config.vision_config.vision_use_head:
        raise ValueError("A SigLIP vision tower without its attention-pooling head (`vision_use_head=False`) has no "
                         "image embedding to convert.")  # fmt: skip
    text = common.copy_fields(config.text_config, common.TEXT_FIELDS)
    ids_from = tokenizer if tokenizer is not None else config.text_config
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        text[name] = common.single_token_id(getattr(ids_from, name, None), name)
    return get_preset_config(
        "siglip-b-16",
        vision_config=common.copy_fields(config.vision_config, common.VIT_FIELDS),
        text_config=text,
        projection_dim=config.text_config.projection_size,
        logit_scale_init_value=float(source.logit_scale.detach().reshape(())),
        logit_bias_init_value=float(source.logit_bias.detach().reshape(())),
    )


def convert_state_dict(state_dict):
    state_dict = common.split_fused_qkv(common.rename_keys(state_dict, STATE_DICT_RULES))
    for name in ("logit_scale", "logit_bias"):  # (1,) in transformers, scalars here
        state_dict[name] = state_dict[name].reshape(())
    return state_dict


def default_image_processor(config):
    from transformers.models.siglip.image_processing_pil_siglip import (
        SiglipImageProcessorPil,
    )

    size = common.square(config.vision_config.image_size, "image_size")
    return SiglipImageProcessorPil(size={"height": size, "width": size})


def load_source(source_dir: str) -> common.SourceCheckpoint:
    return common.from_transformers_folder(
        source_dir, SiglipModel, convert_config, convert_state_dict, default_image_processor=default_image_processor
    )


def main(argv=None) -> int:
    parser = common.build_parser(__doc__)
    parser.add_argument("--source", required=True, help="A SiglipModel folder (config.json + weights + tokenizer).")
    args = parser.parse_args(argv)
    common.setup_logging()
    return common.convert(load_source(args.source), args)


if __name__ == "__main__":
    sys.exit(main())
