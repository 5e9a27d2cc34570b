"""Convert a transformers `CLIPModel` folder (saved with `save_pretrained`) into a `VLPDualEncoderModel`.

    python -m modeling_vlp.conversion.convert_clip --source CLIP_DIR --output OUT_DIR [--tolerance 1e-4]

The weights already carry our names (the "clip-vit-b-32" preset is CLIP's architecture). The folder's tokenizer is
reused and its image processor translated; a folder without them gets OpenAI's BPE tokenizer (built from
open_clip's vocabulary) and CLIP's default preprocessing at the model's image size.
"""

import sys

from transformers import CLIPModel

from ..presets import get_preset_config
from . import common


def convert_config(source: CLIPModel, tokenizer=None):
    config = source.config
    text = common.copy_fields(config.text_config, common.TEXT_FIELDS)
    eos_token_id = common.single_token_id(config.text_config.eos_token_id, "text_config.eos_token_id")
    text.update(
        pad_token_id=config.text_config.pad_token_id,
        bos_token_id=config.text_config.bos_token_id,
        eos_token_id=eos_token_id,
        # transformers keeps argmax pooling for configs written before eos_token_id was fixed (it was 2 then).
        pooling="argmax" if eos_token_id == 2 else "eos",
    )
    logit_scale = source.logit_scale.detach()
    return get_preset_config(
        "clip-vit-b-32",
        vision_config=common.copy_fields(config.vision_config, common.VIT_FIELDS),
        text_config=text,
        projection_dim=config.projection_dim,
        logit_scale_init_value=float(logit_scale),
        logit_scale_max=common.logit_scale_max_for(logit_scale, 100.0),
    )


def convert_state_dict(state_dict):
    return dict(state_dict)


def default_tokenizer(config):
    return common.clip_bpe_tokenizer(model_max_length=config.text_config.max_position_embeddings)


def default_image_processor(config):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    size = common.square(config.vision_config.image_size, "image_size")
    return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def load_source(source_dir: str) -> common.SourceCheckpoint:
    return common.from_transformers_folder(
        source_dir, CLIPModel, convert_config, convert_state_dict, default_tokenizer, default_image_processor
    )


def main(argv=None) -> int:
    parser = common.build_parser(__doc__)
    parser.add_argument("--source", required=True, help="A CLIPModel folder (config.json + weights).")
    args = parser.parse_args(argv)
    common.setup_logging()
    return common.convert(load_source(args.source), args)


if __name__ == "__main__":
    sys.exit(main())
