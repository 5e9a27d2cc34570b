"""Convert a transformers `BlipForConditionalGeneration` folder (saved with `save_pretrained`) into the captioning
family's `VLPForConditionalGeneration`.

    python -m modeling_vlp.conversion.convert_blip --source BLIP_DIR --output OUT_DIR [--tolerance 1e-4]

The config becomes the "blip-base" preset with the source's sizes: BLIP's ViT (fused qkv split into q/k/v, LayerNorm
on every output token) and its BERT decoder (post-norm layers with cross-attention to every image token, BERT's
prediction head tied to the word embeddings). A caption starts with BLIP's `[DEC]` (`text_config.bos_token_id`,
our `decoder_start_token_id`) and ends with `[SEP]` (`sep_token_id`, our `text_config.eos_token_id`), as BLIP's
`generate` does. Both models then run on one seeded batch of images and right-padded captions; the converted folder
is written only when the logits and the LM loss agree within the tolerance and greedy `generate()` writes the same
tokens. The source folder's processor (BLIP's image processor + BERT tokenizer), when it has one, is saved along.
Note that BLIP's processor starts a text with `[CLS]`: BLIP's `generate` replaces that first token by `[DEC]` and
drops the final `[SEP]` of a prompt; pass prompts to ours already in that form.
"""

import os
import sys

import torch
from transformers import AutoProcessor, BlipConfig, BlipForConditionalGeneration

from ..configuration_captioning import VLPCaptioningConfig
from ..hub.push import push_after_conversion
from ..modeling_captioning import VLPForConditionalGeneration
from ..presets import get_preset_config
from . import common

TOKENIZER_FILES = (*common.TOKENIZER_FILES, "vocab.txt")
NUM_CAPTIONS = 4
GENERATED_TOKENS = 8

# BLIP's decoder layers: BERT's, plus a cross-attention block (renamed first: its names contain BERT's).
_BERT_LAYER = (
    (r"\.crossattention\.self\.query\.", ".cross_attn.q_proj."),
    (r"\.crossattention\.self\.key\.", ".cross_attn.k_proj."),
    (r"\.crossattention\.self\.value\.", ".cross_attn.v_proj."),
    (r"\.crossattention\.output\.dense\.", ".cross_attn.out_proj."),
    (r"\.crossattention\.output\.LayerNorm\.", ".layer_norm_cross."),
    *common.BERT_LAYER_RULES,
)
STATE_DICT_RULES = (
    (r"^vision_model\.embeddings\.position_embedding$", "vlp.vision_model.embeddings.position_embedding.weight"),
    (r"^vision_model\.", "vlp.vision_model."),
    (r"\.self_attn\.projection\.", ".self_attn.out_proj."),
    (r"^text_decoder\.bert\.embeddings\.word_embeddings\.", "vlp.decoder.embeddings.token_embedding."),
    (r"^text_decoder\.bert\.embeddings\.position_embeddings\.", "vlp.decoder.embeddings.position_embedding."),
    (r"^text_decoder\.bert\.embeddings\.LayerNorm\.", "vlp.decoder.embeddings.layer_norm."),
    (r"^text_decoder\.bert\.encoder\.layer\.", "vlp.decoder.layers."),
    *_BERT_LAYER,
    (r"^text_decoder\.cls\.predictions\.transform\.LayerNorm\.", "lm_head.transform.layer_norm."),
    (r"^text_decoder\.cls\.predictions\.transform\.dense\.", "lm_head.transform.dense."),
    (r"^text_decoder\.cls\.predictions\.decoder\.", "lm_head.decoder."),
)


def convert_config(source: BlipConfig) -> VLPCaptioningConfig:
    """The "blip-base" preset with the source's sizes, token ids, dropouts and label smoothing."""
    vision, text = source.vision_config, source.text_config
    if text.encoder_hidden_size != vision.hidden_size:
        raise ValueError(
            f"BLIP's text_config.encoder_hidden_size ({text.encoder_hidden_size}) differs from the vision width "
            f"({vision.hidden_size}); the decoder cross-attends to the vision tokens as they are."
        )
    vision_fields = dict(
        image_size=common.square(vision.image_size, "vision_config.image_size"),
        patch_size=common.square(vision.patch_size, "vision_config.patch_size"),
        hidden_size=vision.hidden_size, intermediate_size=vision.intermediate_size,
        num_hidden_layers=vision.num_hidden_layers, num_attention_heads=vision.num_attention_heads,
        hidden_act=vision.hidden_act, layer_norm_eps=vision.layer_norm_eps, attention_dropout=vision.attention_dropout,
    )  # fmt: skip
    text_fields = dict(
        vocab_size=text.vocab_size, hidden_size=text.hidden_size, intermediate_size=text.intermediate_size,
        num_hidden_layers=text.num_hidden_layers, num_attention_heads=text.num_attention_heads,
        max_position_embeddings=text.max_position_embeddings, hidden_act=text.hidden_act,
        layer_norm_eps=text.layer_norm_eps, hidden_dropout=text.hidden_dropout_prob,
        attention_dropout=text.attention_probs_dropout_prob, pad_token_id=text.pad_token_id,
        bos_token_id=text.bos_token_id, eos_token_id=text.sep_token_id,
    )  # fmt: skip
    return get_preset_config(
        "blip-base", vision_config=vision_fields, text_config=text_fields, decoder_start_token_id=text.bos_token_id,
        label_smoothing=float(text.label_smoothing), tie_word_embeddings=bool(getattr(text, "tie_word_embeddings", True)),
    )  # fmt: skip


def convert_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BLIP's weights under our names: the class token and positions lose their leading singleton dimensions, the
    fused `qkv` splits into q/k/v, and the prediction head's bias (kept twice by BLIP, tied) appears once."""
    state_dict = dict(state_dict)
    if "text_decoder.cls.predictions.decoder.bias" in state_dict:
        state_dict.pop("text_decoder.cls.predictions.bias", None)
    elif "text_decoder.cls.predictions.bias" in state_dict:
        state_dict["text_decoder.cls.predictions.decoder.bias"] = state_dict.pop("text_decoder.cls.predictions.bias")
    state_dict = common.rename_keys(state_dict, STATE_DICT_RULES)
    for key in ("vlp.vision_model.embeddings.class_embedding", "vlp.vision_model.embeddings.position_embedding.weight"):
        state_dict[key] = state_dict[key].reshape(-1, state_dict[key].shape[-1]).squeeze(0)
    split = {}
    for key, value in state_dict.items():
        prefix, found, kind = key.rpartition(".self_attn.qkv.")
        if not found:
            split[key] = value
            continue
        for part, chunk in zip(("q", "k", "v"), value.chunk(3, dim=0)):
            split[f"{prefix}.self_attn.{part}_proj.{kind}"] = chunk.contiguous()
    return split


def parity_inputs(config: BlipConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded images and captions `[DEC] words [SEP]`, right-padded (row i is 2 i tokens shorter)."""
    generator = torch.Generator().manual_seed(seed)
    vision, text = config.vision_config, config.text_config
    size = common.square(vision.image_size, "vision_config.image_size")
    length = min(12, text.max_position_embeddings)
    special = {text.pad_token_id, text.bos_token_id, text.sep_token_id}
    words = torch.tensor([token for token in range(text.vocab_size) if token not in special])
    input_ids = words[torch.randint(len(words), (NUM_CAPTIONS, length), generator=generator)]
    attention_mask = torch.ones_like(input_ids)
    input_ids[:, 0] = text.bos_token_id
    for row in range(NUM_CAPTIONS):
        real = max(length - 2 * row, 3)
        input_ids[row, real - 1] = text.sep_token_id
        input_ids[row, real:], attention_mask[row, real:] = text.pad_token_id, 0
    return dict(
        pixel_values=torch.randn(NUM_CAPTIONS, 3, size, size, generator=generator),
        input_ids=input_ids,
        attention_mask=attention_mask,
        labels=input_ids.masked_fill(attention_mask == 0, -100),
    )


@torch.no_grad()
def compare(source_model, model, inputs: dict[str, torch.Tensor]) -> tuple[dict[str, float], bool]:
    """Max abs differences of the logits (real positions), the image tokens and the LM loss, and whether greedy
    `generate()` writes the same tokens."""
    reference = source_model(**inputs, return_dict=True)
    ours = model(**inputs, return_dict=True)
    real = inputs["attention_mask"].bool()
    diffs = {
        "logits": common.max_abs_diff(reference.logits[real], ours.logits[real]),
        "image_embeds": common.max_abs_diff(
            reference.image_embeds, ours.captioning_output.image_hidden_states
        ),
        "loss": common.max_abs_diff(reference.loss, ours.loss_lm),
    }
    generate_kwargs = dict(max_new_tokens=GENERATED_TOKENS, min_new_tokens=GENERATED_TOKENS, num_beams=1, do_sample=False)
    theirs = source_model.generate(pixel_values=inputs["pixel_values"], **generate_kwargs)
    mine = model.generate(pixel_values=inputs["pixel_values"], **generate_kwargs)
    same_tokens = theirs.shape == mine.shape and bool((theirs == mine).all())
    return diffs, same_tokens


def load_processor(source_dir: str):
    """The folder's processor (BLIP's), or None when it has no tokenizer files."""
    if not any(os.path.isfile(os.path.join(source_dir, name)) for name in TOKENIZER_FILES):
        return None
    return AutoProcessor.from_pretrained(source_dir)


def convert(source_dir: str, output_dir: str, tolerance: float = 1e-4, seed: int = 0, args=None) -> int:
    """Load, check parity, save, and push when `args` (the command line) has --push-to-hub. Returns 0 when saved
    (and pushed), 1 when parity failed (nothing written) or the push failed."""
    if not os.path.isdir(source_dir):
        raise FileNotFoundError(f"`--source` {source_dir!r} is not a folder.")
    source_config = BlipConfig.from_pretrained(source_dir)
    architectures = source_config.architectures or ["BlipForConditionalGeneration"]
    if "BlipForConditionalGeneration" not in architectures:
        raise ValueError(
            f"{source_dir} holds {architectures}; this converter reads BlipForConditionalGeneration (captioning)."
        )
    source_model = BlipForConditionalGeneration.from_pretrained(source_dir, dtype=torch.float32).eval()
    config = convert_config(source_model.config)
    common.logger.info(f"Converting BlipForConditionalGeneration from {source_dir} into VLPForConditionalGeneration")
    model = common.load_converted(config, convert_state_dict(source_model.state_dict()), VLPForConditionalGeneration)

    diffs, same_tokens = compare(source_model, model, parity_inputs(source_model.config, seed))
    ok = max(diffs.values()) <= tolerance and same_tokens
    print("Parity, both models on the same images and padded captions (fp32):")
    for name, diff in diffs.items():
        print(f"  {name:<14} max |diff| = {diff:.3e}")
    print(f"  greedy generate(): {'same tokens' if same_tokens else 'DIFFERENT tokens'}")
    print(f"  (tolerance {tolerance:g})")
    print("PASSED" if ok else "FAILED")
    if not ok:
        common.logger.error("Parity failed: nothing written.")
        return 1
    os.makedirs(output_dir, exist_ok=True)
    model.save_pretrained(output_dir)
    processor = load_processor(source_dir)
    if processor is None:
        common.logger.info(f"Saved the model to {output_dir} (the source folder has no processor).")
    else:
        processor.save_pretrained(output_dir)
        common.logger.info(f"Saved the model and its {type(processor).__name__} to {output_dir}")
    if args is None:
        return 0
    return push_after_conversion(
        args, output_dir, source=f"BlipForConditionalGeneration from {source_dir}", parity=diffs,
        tolerance=tolerance, source_path=source_dir,
    )  # fmt: skip


def main(argv=None) -> int:
    parser = common.build_parser(__doc__)
    parser.add_argument("--source", required=True, help="A BlipForConditionalGeneration folder.")
    args = parser.parse_args(argv)
    common.setup_logging()
    return convert(args.source, args.output, args.tolerance, args.seed, args=args)


if __name__ == "__main__":
    sys.exit(main())
