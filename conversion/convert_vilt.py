"""Convert a transformers ViLT folder (saved with `save_pretrained`) into the unified family.

    python -m modeling_vlp.conversion.convert_vilt --source VILT_DIR --output OUT_DIR [--tolerance 1e-4]

The class is read from the folder's `architectures`:
  ViltModel                    -> VLPUnifiedModel
  ViltForMaskedLM              -> VLPUnifiedForPreTraining (MLM head converted; the ITM and MIM heads are new)
  ViltForQuestionAnswering     -> VLPUnifiedForQuestionAnswering (ViLT's MLP head, BCE loss, id2label kept)
  ViltForImageAndTextRetrieval -> VLPUnifiedForImageTextRetrieval (`rank_output` w, b -> ITM rows [0; w], [0; b],
                                  so that `logits` equal ViLT's)
The MIM mask token is always new (ViLT has none). The converted folder gets a `VLPProcessor`: our image processor set
up as the source's ViltImageProcessor (shortest edge, longest edge 1333/800 of it, size divisor, padding with
`pixel_mask`) and the source's tokenizer.

ViLT samples `max_image_length` patches at random even in evaluation; our model samples only in training and uses
every valid patch in evaluation, so parity is checked with the source's `max_image_length` set to -1 (every patch).
ViLT also orders its visual tokens at random: they are matched to ours by the patch each one comes from.
"""

import json
import os
import sys
from dataclasses import dataclass

import torch
from transformers import (
    ViltForImageAndTextRetrieval,
    ViltForMaskedLM,
    ViltForQuestionAnswering,
    ViltModel,
)
from transformers.image_processing_backends import TorchvisionBackend

from ..configuration_unified import VLPUnifiedConfig
from ..hub.push import push_after_conversion
from ..modeling_unified import (
    VLPUnifiedForImageTextRetrieval,
    VLPUnifiedForPreTraining,
    VLPUnifiedForQuestionAnswering,
    VLPUnifiedModel,
)
from ..presets import get_preset_config
from ..processors import VLPImageProcessor, VLPProcessor
from . import common

logger = common.logger

# source architecture -> (source class, our class, the head weights ours has and the source lacks)
ARCHITECTURES = {
    "ViltModel": (ViltModel, VLPUnifiedModel, ()),
    "ViltForMaskedLM": (ViltForMaskedLM, VLPUnifiedForPreTraining, ("itm_head.", "mim_head.")),
    "ViltForQuestionAnswering": (ViltForQuestionAnswering, VLPUnifiedForQuestionAnswering, ()),
    "ViltForImageAndTextRetrieval": (ViltForImageAndTextRetrieval, VLPUnifiedForImageTextRetrieval, ()),
}
MASK_TOKEN = "embeddings.visual_embeddings.mask_token"
# ViLT's processor resizes the shorter side to `shortest_edge` and caps the longer one at 1333/800 of it.
MAX_LONGER_EDGE, MAX_SHORTER_EDGE = 1333, 800


# --------------------------------------------------------------------------------------------------------------
# Shared by the unified converters (ViLT, VisualBERT)
# --------------------------------------------------------------------------------------------------------------


def read_architecture(source_dir: str, known: dict, default: str) -> str:
    """The source class named by the folder's `config.json` (`architectures[0]`); `default` when it names none."""
    path = os.path.join(source_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"`--source` {source_dir!r} has no config.json; expected a save_pretrained folder.")
    with open(path, encoding="utf-8") as handle:
        architectures = json.load(handle).get("architectures") or [default]
    if architectures[0] not in known:
        raise ValueError(
            f"{source_dir!r} holds a {architectures[0]}; this converter handles {', '.join(known)}."
        )
    return architectures[0]


def save(model, processor, tokenizer, output_dir: str) -> None:
    """Model + processor, or model + tokenizer when there is no processor (region models)."""
    os.makedirs(output_dir, exist_ok=True)
    model.save_pretrained(output_dir)
    if processor is not None:
        processor.save_pretrained(output_dir)
    elif tokenizer is not None:
        tokenizer.save_pretrained(output_dir)
    logger.info(f"Saved to {output_dir}")


# --------------------------------------------------------------------------------------------------------------
# Config and weights
# --------------------------------------------------------------------------------------------------------------


def convert_config(source) -> VLPUnifiedConfig:
    if source.modality_type_vocab_size != 2:
        raise ValueError(
            f"`modality_type_vocab_size` is {source.modality_type_vocab_size}; only 2 (text, image) converts (the "
            "third type of NLVR2's second image has no counterpart here)."
        )
    fields = dict(
        vocab_size=source.vocab_size,
        max_position_embeddings=source.max_position_embeddings,
        type_vocab_size=source.type_vocab_size,
        image_size=common.square(source.image_size, "image_size"),
        patch_size=common.square(source.patch_size, "patch_size"),
        num_channels=source.num_channels,
        max_image_length=int(source.max_image_length) if (source.max_image_length or -1) > 0 else -1,
        hidden_size=source.hidden_size,
        intermediate_size=source.intermediate_size,
        num_hidden_layers=source.num_hidden_layers,
        num_attention_heads=source.num_attention_heads,
        hidden_act=source.hidden_act,
        layer_norm_eps=float(source.layer_norm_eps),
        hidden_dropout=float(source.hidden_dropout_prob),
        attention_dropout=float(source.attention_probs_dropout_prob),
        qkv_bias=source.qkv_bias,
        pad_token_id=0 if source.pad_token_id is None else source.pad_token_id,
    )
    config = get_preset_config("vilt-b-32", **fields)
    if getattr(source, "id2label", None):
        config.id2label = dict(source.id2label)
        config.label2id = dict(source.label2id)
    return config


_LAYER_RULES = [
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.query\.", r"encoder.layers.\1.self_attn.q_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.key\.", r"encoder.layers.\1.self_attn.k_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.value\.", r"encoder.layers.\1.self_attn.v_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"encoder.layers.\1.self_attn.out_proj."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"encoder.layers.\1.mlp.fc1."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"encoder.layers.\1.mlp.fc2."),
    (r"^encoder\.layer\.(\d+)\.layernorm_before\.", r"encoder.layers.\1.layer_norm1."),
    (r"^encoder\.layer\.(\d+)\.layernorm_after\.", r"encoder.layers.\1.layer_norm2."),
    (r"^layernorm\.", "final_layer_norm."),
    (r"^embeddings\.text_embeddings\.word_embeddings\.", "embeddings.text_embeddings.token_embedding."),
    (r"^embeddings\.text_embeddings\.position_embeddings\.", "embeddings.text_embeddings.position_embedding."),
    (r"^embeddings\.text_embeddings\.token_type_embeddings\.", "embeddings.text_embeddings.token_type_embedding."),
    (r"^embeddings\.text_embeddings\.LayerNorm\.", "embeddings.text_embeddings.layer_norm."),
    (r"^embeddings\.patch_embeddings\.projection\.", "embeddings.visual_embeddings.patch_embedding."),
    (r"^embeddings\.token_type_embeddings\.", "embeddings.modality_type_embedding."),
]
_HEAD_RULES = [
    (r"^mlm_score\.transform\.dense\.", "mlm_head.transform.dense."),
    (r"^mlm_score\.transform\.LayerNorm\.", "mlm_head.transform.layer_norm."),
    (r"^mlm_score\.decoder\.", "mlm_head.decoder."),
    (r"^classifier\.0\.", "classifier.dense."),
    (r"^classifier\.1\.", "classifier.layer_norm."),
    (r"^classifier\.3\.", "classifier.decoder."),
]


def convert_state_dict(state_dict: dict[str, torch.Tensor], base_prefix: str) -> dict[str, torch.Tensor]:
    """ViLT names -> ours. `base_prefix` is "vilt." for the head classes, "" for ViltModel."""
    base, heads = {}, {}
    for key, value in state_dict.items():
        if key.startswith(base_prefix):
            base[key[len(base_prefix) :]] = value
        else:
            heads[key] = value
    hidden_size = base["embeddings.cls_token"].shape[-1]
    base["embeddings.visual_embeddings.class_embedding"] = base.pop("embeddings.cls_token").reshape(hidden_size)
    base["embeddings.visual_embeddings.position_embedding.weight"] = base.pop("embeddings.position_embeddings")[0]
    base = common.rename_keys(base, _LAYER_RULES)
    if "rank_output.weight" in heads:
        # One retrieval score s = w.x + b; ITM logits [0, s] give the same log-odds s.
        weight, bias = heads.pop("rank_output.weight"), heads.pop("rank_output.bias")
        heads["itm_head.weight"] = torch.cat([torch.zeros_like(weight), weight])
        heads["itm_head.bias"] = torch.cat([torch.zeros_like(bias), bias])
    heads = common.rename_keys(heads, _HEAD_RULES)
    prefix = "vlp." if base_prefix else ""
    return {**{prefix + key: value for key, value in base.items()}, **heads}


# --------------------------------------------------------------------------------------------------------------
# Processor
# --------------------------------------------------------------------------------------------------------------


def convert_image_processor(source) -> VLPImageProcessor | None:
    """Our image processor set up as the source's ViltImageProcessor; None when ours cannot express it yet."""
    settings = source.to_dict()
    shortest = (settings.get("size") or {}).get("shortest_edge")
    if shortest is None:
        raise ValueError(f"Cannot convert ViLT image processor `size` {settings.get('size')}; expected shortest_edge.")
    kwargs = dict(
        size={"shortest_edge": shortest, "longest_edge": int(MAX_LONGER_EDGE / MAX_SHORTER_EDGE * shortest)},
        size_divisor=settings.get("size_divisor"),
        do_pad=bool(settings.get("do_pad", True)),
        do_center_crop=False,
        resample=int(3 if settings.get("resample") is None else settings["resample"]),
        do_rescale=bool(settings.get("do_rescale", True)),
        rescale_factor=float(settings.get("rescale_factor", 1 / 255)),
        do_normalize=bool(settings.get("do_normalize", True)),
        image_mean=list(settings["image_mean"]),
        image_std=list(settings["image_std"]),
        # PIL and torchvision resampling differ by a level or two of 255: resize the way the source does.
        resize_backend="torchvision" if isinstance(source, TorchvisionBackend) else "pil",
    )
    try:
        return VLPImageProcessor(**kwargs)
    except TypeError as error:
        logger.warning(f"VLPImageProcessor cannot reproduce ViLT's resizing and padding ({error}); no processor saved.")
        return None


# --------------------------------------------------------------------------------------------------------------
# Parity
# --------------------------------------------------------------------------------------------------------------


@dataclass
class ViltParityReport(common.ParityReport):
    pixel_mask_equal: bool = True

    @property
    def ok(self) -> bool:
        return super().ok and self.pixel_mask_equal

    def lines(self) -> list[str]:
        lines = super().lines()
        at = next(i for i, line in enumerate(lines) if "pixel_values max" in line) + 1
        lines.insert(at, f"  pixel_mask identical to the source's: {'yes' if self.pixel_mask_equal else 'NO'}")
        return lines


def _base(model):
    if isinstance(model, (ViltModel, VLPUnifiedModel)):
        return model
    return model.vilt if hasattr(model, "vilt") else model.vlp


@torch.no_grad()
def reference_outputs(model, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The source's outputs on `inputs` with every patch (max_image_length -1), and the grid position (row, column)
    of each of its visual tokens: the same seed replays ViLT's random token order in `visual_embed` and forward."""
    base = _base(model)
    saved = base.config.max_image_length
    base.config.max_image_length = -1
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            _, token_mask, (patch_index, _) = base.embeddings.visual_embed(
                inputs["pixel_values"], inputs["pixel_mask"], max_image_length=-1
            )
            torch.manual_seed(0)
            base_outputs = base(**inputs)
            torch.manual_seed(0)
            head_outputs = model(**inputs) if model is not base else None
    finally:
        base.config.max_image_length = saved
    outputs = dict(
        last_hidden_state=base_outputs.last_hidden_state,
        pooler_output=base_outputs.pooler_output,
        patch_index=patch_index,
        visual_mask=token_mask,
    )
    if isinstance(model, ViltForMaskedLM):
        outputs["mlm_logits"] = head_outputs.logits
    elif isinstance(model, ViltForQuestionAnswering):
        outputs["vqa_logits"] = head_outputs.logits
    elif isinstance(model, ViltForImageAndTextRetrieval):
        outputs["retrieval_logits"] = head_outputs.logits[:, 0]
    return outputs


@torch.no_grad()
def our_outputs(model, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    base_outputs = _base(model)(**inputs)
    outputs = dict(
        last_hidden_state=base_outputs.last_hidden_state,
        pooler_output=base_outputs.pooler_output,
        text_length=base_outputs.text_length,
        visual_token_index=base_outputs.visual_token_index,
        visual_mask=base_outputs.visual_attention_mask,
    )
    if isinstance(model, VLPUnifiedForPreTraining):
        outputs["mlm_logits"] = model(**inputs).mlm_logits
    elif isinstance(model, VLPUnifiedForQuestionAnswering):
        outputs["vqa_logits"] = model(**inputs).logits
    elif isinstance(model, VLPUnifiedForImageTextRetrieval):
        outputs["retrieval_logits"] = model(**inputs).logits
    return outputs


def aligned_visual_states(reference: dict, ours: dict, grid_width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The valid visual tokens of both models (class token first), matched by the patch they come from:
    (num_valid, D) each. ViLT orders its tokens at random, ours by patch."""
    text_length = ours["text_length"]
    ref_states = reference["last_hidden_state"][:, text_length:]
    our_states = ours["last_hidden_state"][:, text_length:]
    batch_size, hidden_size = our_states.shape[0], our_states.shape[-1]
    ref_index = reference["patch_index"][..., 0] * grid_width + reference["patch_index"][..., 1]
    ref_index = torch.cat([ref_index.new_full((batch_size, 1), -1), ref_index], dim=1)
    ref_valid, our_valid = reference["visual_mask"].bool(), ours["visual_mask"].bool()
    if not torch.equal(ref_valid.sum(dim=1), our_valid.sum(dim=1)):
        raise ValueError(
            f"The models see different numbers of valid patches per image: source {ref_valid.sum(dim=1).tolist()}, "
            f"ours {our_valid.sum(dim=1).tolist()}."
        )
    # Slot of every valid token in the image's grid (the class token last, padding tokens in a dump slot).
    num_slots = int(max(ref_index.max(), ours["visual_token_index"].max())) + 3
    class_slot, dump_slot = num_slots - 2, num_slots - 1

    def by_patch(states, index, valid):
        slot = torch.where(index < 0, class_slot, index)
        slot = torch.where(valid, slot, dump_slot)
        table = states.new_zeros(batch_size, num_slots, hidden_size)
        return table.scatter(1, slot.unsqueeze(-1).expand(-1, -1, hidden_size), states), slot

    ours_table, _ = by_patch(our_states, ours["visual_token_index"], our_valid)
    _, ref_slot = by_patch(ref_states, ref_index, ref_valid)
    matched = ours_table.gather(1, ref_slot.unsqueeze(-1).expand(-1, -1, hidden_size))
    return ref_states[ref_valid], matched[ref_valid]


def compare(reference: dict, ours: dict, grid_width: int) -> dict[str, float]:
    text_length = ours["text_length"]
    ref_visual, our_visual = aligned_visual_states(reference, ours, grid_width)
    diffs = {
        "text_hidden":  common.max_abs_diff(
            reference["last_hidden_state"][:, :text_length], ours["last_hidden_state"][:, :text_length]
        ),
        "visual_hidden": common.max_abs_diff(ref_visual, our_visual),
        "pooler_output": common.max_abs_diff(reference["pooler_output"], ours["pooler_output"]),
    }  # fmt: skip
    for name in ("mlm_logits", "vqa_logits", "retrieval_logits"):
        if name in reference:
            diffs[name] = common.max_abs_diff(reference[name], ours[name])
    return diffs


@torch.no_grad()
def check_parity(source_model, model, tokenizer, image_processor, processor, text_kwargs, args) -> ViltParityReport:
    images, texts = common.parity_images(args.seed), list(common.PARITY_CAPTIONS)
    inputs = dict(tokenizer(texts, return_tensors="pt", **text_kwargs))
    inputs.update(image_processor(images, return_tensors="pt"))
    grid_width = inputs["pixel_values"].shape[-1] // model.config.patch_size
    reference = reference_outputs(source_model, inputs)
    model_diffs = compare(reference, our_outputs(model, inputs), grid_width)

    pixel_diff, input_ids_equal, pixel_mask_equal, end_to_end = 0.0, True, True, {}
    if processor is not None:
        converted = processor(images=images, text=texts, return_tensors="pt")
        input_ids_equal = torch.equal(converted["input_ids"], inputs["input_ids"])
        same_shape = converted["pixel_values"].shape == inputs["pixel_values"].shape
        pixel_mask_equal = same_shape and torch.equal(converted["pixel_mask"], inputs["pixel_mask"])
        pixel_diff = (
            common.max_abs_diff(converted["pixel_values"], inputs["pixel_values"]) if same_shape else float("inf")
        )
        if same_shape and input_ids_equal:
            end_to_end = compare(reference, our_outputs(model, dict(converted)), grid_width)
    return ViltParityReport(
        model_diffs, end_to_end, pixel_diff, input_ids_equal, args.tolerance, args.pixel_tolerance, pixel_mask_equal
    )


# --------------------------------------------------------------------------------------------------------------
# The conversion
# --------------------------------------------------------------------------------------------------------------


def convert(source_dir: str, args) -> int:
    """Load, check parity, save, push with --push-to-hub. Returns the exit status: 0 when saved (and pushed), 1
    when parity failed (nothing saved) or the push failed."""
    architecture = read_architecture(source_dir, ARCHITECTURES, "ViltModel")
    source_class, our_class, new_heads = ARCHITECTURES[architecture]
    source_model = source_class.from_pretrained(source_dir, dtype=torch.float32).eval()
    config = convert_config(source_model.config)
    base_prefix = "" if source_class is ViltModel else "vilt."
    state_dict = convert_state_dict(source_model.state_dict(), base_prefix)
    mask_token = ("vlp." if base_prefix else "") + MASK_TOKEN
    logger.info(f"Converting {architecture} from {source_dir} into {our_class.__name__}")
    if new_heads:
        logger.info(f"The source has no {', '.join(h.rstrip('.') for h in new_heads)}: they start untrained.")
    model = common.load_converted(config, state_dict, our_class, (*new_heads, mask_token))

    tokenizer = common._load_tokenizer(source_dir)
    if tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    source_image_processor = common.load_image_processor(source_dir)
    text_kwargs = dict(padding="longest", truncation=True, max_length=config.max_position_embeddings)
    image_processor = convert_image_processor(source_image_processor)
    processor = None
    if image_processor is not None:
        processor = VLPProcessor(image_processor=image_processor, tokenizer=tokenizer, text_kwargs=text_kwargs)

    report = check_parity(source_model, model, tokenizer, source_image_processor, processor, text_kwargs, args)
    for line in report.lines():
        print(line)
    if not report.ok:
        logger.error("Parity failed: nothing written.")
        return 1
    save(model, processor, tokenizer, args.output)
    return push_after_conversion(
        args, args.output, source=f"{architecture} from {source_dir}", parity=report.model_diffs,
        tolerance=args.tolerance, source_path=source_dir,
    )  # fmt: skip


def main(argv=None) -> int:
    parser = common.build_parser(__doc__)
    parser.add_argument(
        "--source", required=True, help="A ViLT folder (config.json, weights, tokenizer, image processor)."
    )
    args = parser.parse_args(argv)
    common.setup_logging()
    return convert(args.source, args)


if __name__ == "__main__":
    sys.exit(main())
