"""Convert a transformers LXMERT folder (saved with `save_pretrained`) into the fusion family, heads included.

    python -m modeling_vlp.conversion.convert_lxmert --source LXMERT_DIR --output OUT_DIR [--tolerance 1e-4]

The folder's `architectures` picks the class: `LxmertModel` -> `VLPFusionModel`, `LxmertForPreTraining` ->
`VLPFusionForPreTraining` (MLM, ITM, region and answer heads), `LxmertForQuestionAnswering` ->
`VLPFusionForQuestionAnswering`. The config becomes the "lxmert-base" preset with the source's sizes. Both models
then run on one seeded batch of padded text and padded detector regions; the converted folder is written only when
every output (language, vision and pooled outputs, each head's logits) agrees within the tolerance. A tokenizer in
the source folder is saved with the model as a `VLPProcessor` without image processor (LXMERT reads region
features), or alone when that processor cannot be built.
"""

import os
import sys

import torch
from transformers import (
    AutoTokenizer,
    LxmertConfig,
    LxmertForPreTraining,
    LxmertForQuestionAnswering,
    LxmertModel,
)

from ..configuration_fusion import VLPFusionConfig
from ..hub.push import push_after_conversion
from ..modeling_fusion import (
    VLPFusionForPreTraining,
    VLPFusionForQuestionAnswering,
    VLPFusionModel,
)
from ..presets import get_preset_config
from ..processors import VLPProcessor
from . import common

ARCHITECTURES = {
    "LxmertModel": (LxmertModel, VLPFusionModel),
    "LxmertForPreTraining": (LxmertForPreTraining, VLPFusionForPreTraining),
    "LxmertForQuestionAnswering": (LxmertForQuestionAnswering, VLPFusionForQuestionAnswering),
}
PARITY_CAPTIONS = common.PARITY_CAPTIONS
NUM_REGIONS = 7
TOKENIZER_FILES = (*common.TOKENIZER_FILES, "vocab.txt")

# (our output, LXMERT's output) for each class; "obj" / "attr" / "feat" come from LXMERT's `obj_predict_head`, which
# its forward only runs inside the loss.
OUTPUT_NAMES = {
    "LxmertModel": (
        ("text_last_hidden_state", "language_output"),
        ("image_last_hidden_state", "vision_output"),
        ("pooler_output", "pooled_output"),
    ),
    "LxmertForPreTraining": (
        ("mlm_logits", "prediction_logits"),
        ("itm_logits", "cross_relationship_score"),
        ("answer_logits", "question_answering_score"),
        ("obj_logits", "obj"),
        ("attr_logits", "attr"),
        ("mim_predictions", "feat"),
    ),
    "LxmertForQuestionAnswering": (("logits", "question_answering_score"),),
}

_BASE = r"^((?:vlp\.)?)"  # the backbone's keys, with the head classes' prefix
STATE_DICT_RULES = (
    (r"^lxmert\.", "vlp."),
    (_BASE + r"embeddings\.word_embeddings\.", r"\1text_embeddings.token_embedding."),
    (_BASE + r"embeddings\.position_embeddings\.", r"\1text_embeddings.position_embedding."),
    (_BASE + r"embeddings\.token_type_embeddings\.", r"\1text_embeddings.token_type_embedding."),
    (_BASE + r"embeddings\.LayerNorm\.", r"\1text_embeddings.layer_norm."),
    (_BASE + r"encoder\.visn_fc\.visn_fc\.", r"\1image_embeddings.feat_proj."),
    (_BASE + r"encoder\.visn_fc\.visn_layer_norm\.", r"\1image_embeddings.feat_layer_norm."),
    (_BASE + r"encoder\.visn_fc\.box_fc\.", r"\1image_embeddings.box_proj."),
    (_BASE + r"encoder\.visn_fc\.box_layer_norm\.", r"\1image_embeddings.box_layer_norm."),
    (_BASE + r"encoder\.layer\.(\d+)\.", r"\1text_encoder.layers.\2."),
    (_BASE + r"encoder\.r_layers\.(\d+)\.", r"\1image_encoder.layers.\2."),
    # The cross-modality layer: one cross-attention shared by both streams, then per-stream BERT sublayers.
    (_BASE + r"encoder\.x_layers\.(\d+)\.visual_attention\.att\.", r"\1fusion.layers.\2.cross_attn."),
    (_BASE + r"encoder\.x_layers\.(\d+)\.visual_attention\.output\.", r"\1fusion.layers.\2.cross_attn.output."),
    (_BASE + r"encoder\.x_layers\.(\d+)\.lang_self_att\.", r"\1fusion.layers.\2.text_layer.attention."),
    (_BASE + r"encoder\.x_layers\.(\d+)\.visn_self_att\.", r"\1fusion.layers.\2.image_layer.attention."),
    (_BASE + r"encoder\.x_layers\.(\d+)\.lang_inter\.", r"\1fusion.layers.\2.text_layer.intermediate."),
    (_BASE + r"encoder\.x_layers\.(\d+)\.visn_inter\.", r"\1fusion.layers.\2.image_layer.intermediate."),
    (_BASE + r"encoder\.x_layers\.(\d+)\.lang_output\.", r"\1fusion.layers.\2.text_layer.output."),
    (_BASE + r"encoder\.x_layers\.(\d+)\.visn_output\.", r"\1fusion.layers.\2.image_layer.output."),
    (r"\.cross_attn\.query\.", ".cross_attn.q_proj."),
    (r"\.cross_attn\.key\.", ".cross_attn.k_proj."),
    (r"\.cross_attn\.value\.", ".cross_attn.v_proj."),
    (r"\.cross_attn\.output\.dense\.", ".cross_attn.out_proj."),
    (r"\.cross_attn\.output\.LayerNorm\.", ".layer_norm_cross."),
    *common.BERT_LAYER_RULES,
    (r"^cls\.predictions\.transform\.dense\.", "mlm_head.transform.dense."),
    (r"^cls\.predictions\.transform\.LayerNorm\.", "mlm_head.transform.layer_norm."),
    (r"^cls\.predictions\.decoder\.weight$", "mlm_head.decoder.weight"),
    (r"^cls\.predictions\.bias$", "mlm_head.decoder.bias"),
    (r"^cls\.seq_relationship\.", "itm_head."),
    (r"^obj_predict_head\.transform\.dense\.", "region_head.transform.dense."),
    (r"^obj_predict_head\.transform\.LayerNorm\.", "region_head.transform.layer_norm."),
    (r"^obj_predict_head\.decoder_dict\.", "region_head.decoders."),
    (r"^answer_head\.logit_fc\.0\.", "answer_head.dense."),
    (r"^answer_head\.logit_fc\.2\.", "answer_head.layer_norm."),
    (r"^answer_head\.logit_fc\.3\.", "answer_head.classifier."),
)


def detect_architecture(config: LxmertConfig) -> str:
    architectures = getattr(config, "architectures", None) or ["LxmertModel"]
    for name in architectures:
        if name in ARCHITECTURES:
            return name
    raise ValueError(f"`architectures` is {architectures}; expected one of {sorted(ARCHITECTURES)}.")


def convert_config(source: LxmertConfig, architecture: str, tokenizer=None) -> VLPFusionConfig:
    """The "lxmert-base" preset with the source's sizes and heads."""
    shared = dict(
        hidden_size=source.hidden_size, intermediate_size=source.intermediate_size,
        num_attention_heads=source.num_attention_heads, hidden_act=source.hidden_act,
        hidden_dropout=float(source.hidden_dropout_prob), attention_dropout=float(source.attention_probs_dropout_prob),
        layer_norm_eps=1e-12,  # LXMERT's LayerNorms are all built with eps=1e-12, whatever the config says
    )  # fmt: skip
    special = {
        "pad_token_id": source.pad_token_id if source.pad_token_id is not None else 0,
        "bos_token_id": getattr(tokenizer, "cls_token_id", None),
        "eos_token_id": getattr(tokenizer, "sep_token_id", None),
    }
    text = dict(
        shared, vocab_size=source.vocab_size, num_hidden_layers=source.l_layers,
        max_position_embeddings=source.max_position_embeddings, type_vocab_size=source.type_vocab_size, **special,
    )  # fmt: skip
    region_losses = []
    if architecture == "LxmertForPreTraining" and source.task_obj_predict:
        flags = (("obj", source.visual_obj_loss), ("attr", source.visual_attr_loss), ("feat", source.visual_feat_loss))
        region_losses = [name for name, on in flags if on]
    return get_preset_config(
        "lxmert-base",
        text_config=text,
        vision_config=dict(shared, num_hidden_layers=source.r_layers),
        visual_feat_dim=source.visual_feat_dim,
        visual_pos_dim=source.visual_pos_dim,
        num_fusion_layers=source.x_layers,
        num_object_labels=source.num_object_labels,
        num_attribute_labels=source.num_attr_labels,
        num_labels=source.num_qa_labels,
        region_losses=region_losses,
        visual_loss_normalizer=float(source.visual_loss_normalizer),
        pretraining_answer_head=architecture == "LxmertForPreTraining" and source.task_qa,
        tie_word_embeddings=source.tie_word_embeddings,
        initializer_range=source.initializer_range,
    )


def convert_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return common.rename_keys(state_dict, STATE_DICT_RULES)


def load_tokenizer(source_dir: str):
    """The folder's tokenizer, or None when it has none (AutoTokenizer would build an empty one from config.json)."""
    if not any(os.path.isfile(os.path.join(source_dir, name)) for name in TOKENIZER_FILES):
        return None
    return AutoTokenizer.from_pretrained(source_dir)


def parity_inputs(config: LxmertConfig, tokenizer=None, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch with padded text (the captions through the tokenizer, or random ids) and padded regions: random
    features, boxes `(x1, y1, x2, y2)` in [0, 1] (plus the area when `visual_pos_dim` is 5), the last regions of
    every other row padded."""
    generator = torch.Generator().manual_seed(seed)
    batch_size = len(PARITY_CAPTIONS)
    if tokenizer is not None:
        inputs = dict(tokenizer(list(PARITY_CAPTIONS), padding=True, return_tensors="pt"))
        inputs.setdefault("token_type_ids", torch.zeros_like(inputs["input_ids"]))
    else:
        length = 12
        input_ids = torch.randint(1, config.vocab_size, (batch_size, length), generator=generator)
        attention_mask = torch.ones(batch_size, length, dtype=torch.long)
        for row in range(batch_size):
            real = length - 3 * row
            input_ids[row, real:], attention_mask[row, real:] = 0, 0
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids))
    corners = torch.rand(batch_size, NUM_REGIONS, 2, 2, generator=generator).sort(dim=2).values
    boxes = corners.reshape(batch_size, NUM_REGIONS, 4)  # (min x, min y, max x, max y) = x1, y1, x2, y2
    if config.visual_pos_dim == 5:
        area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
        boxes = torch.cat([boxes, area[..., None]], dim=-1)
    elif config.visual_pos_dim != 4:
        boxes = torch.rand(batch_size, NUM_REGIONS, config.visual_pos_dim, generator=generator)
    visual_attention_mask = torch.ones(batch_size, NUM_REGIONS, dtype=torch.long)
    visual_attention_mask[1::2, NUM_REGIONS - 2 :] = 0
    inputs.update(
        visual_feats=torch.randn(batch_size, NUM_REGIONS, config.visual_feat_dim, generator=generator),
        visual_pos=boxes,
        visual_attention_mask=visual_attention_mask,
    )
    return inputs


@torch.no_grad()
def compare(source_model, model, architecture: str, inputs: dict[str, torch.Tensor]) -> dict[str, float]:
    """Max abs differences of every output of both models on `inputs`, named after LXMERT's outputs."""
    reference = dict(source_model(**inputs, return_dict=True))
    ours = model(**inputs, return_dict=True)
    backbone = source_model if architecture == "LxmertModel" else source_model.lxmert
    base_reference = backbone(**inputs, return_dict=True)
    base = ours if architecture == "LxmertModel" else model.vlp(**inputs, return_dict=True)
    pairs = [(ours_name, theirs, base_reference, base) for ours_name, theirs in OUTPUT_NAMES["LxmertModel"]]
    if architecture != "LxmertModel":
        if architecture == "LxmertForPreTraining" and hasattr(source_model, "obj_predict_head"):
            reference.update(source_model.obj_predict_head(base_reference.vision_output))
        has_answers = architecture == "LxmertForQuestionAnswering" or source_model.config.task_qa
        pairs += [
            (ours_name, theirs, reference, ours)
            for ours_name, theirs in OUTPUT_NAMES[architecture]
            if theirs in reference and (theirs != "question_answering_score" or has_answers)
        ]
    return {theirs: common.max_abs_diff(ref[theirs], out[ours_name]) for ours_name, theirs, ref, out in pairs}


def make_processor(tokenizer):
    """A `VLPProcessor` with the tokenizer and no image processor, or the tokenizer alone if that fails."""
    try:
        return VLPProcessor(image_processor=None, tokenizer=tokenizer)
    except (TypeError, ValueError, AttributeError) as error:
        common.logger.warning(
            f"VLPProcessor without an image processor is not supported ({error}); saving the tokenizer alone."
        )
        return tokenizer


def convert(source_dir: str, output_dir: str, tolerance: float = 1e-4, seed: int = 0, args=None) -> int:
    """Load, check parity, save, and push when `args` (the command line) has --push-to-hub. Returns 0 when saved
    (and pushed), 1 when parity failed (nothing written) or the push failed."""
    if not os.path.isdir(source_dir):
        raise FileNotFoundError(f"`--source` {source_dir!r} is not a folder.")
    source_config = LxmertConfig.from_pretrained(source_dir)
    architecture = detect_architecture(source_config)
    source_class, model_class = ARCHITECTURES[architecture]
    source_model = source_class.from_pretrained(source_dir, dtype=torch.float32).eval()
    tokenizer = load_tokenizer(source_dir)
    config = convert_config(source_model.config, architecture, tokenizer)
    common.logger.info(f"Converting {architecture} from {source_dir} into {model_class.__name__}")
    model = common.load_converted(config, convert_state_dict(source_model.state_dict()), model_class)

    diffs = compare(source_model, model, architecture, parity_inputs(source_model.config, tokenizer, seed))
    ok = max(diffs.values()) <= tolerance
    print("Parity, both models on the same padded text and regions (fp32):")
    for name, diff in diffs.items():
        print(f"  {name:<26} max |diff| = {diff:.3e}")
    print(f"  (tolerance {tolerance:g})")
    print("PASSED" if ok else "FAILED")
    if not ok:
        common.logger.error("Parity failed: nothing written.")
        return 1
    os.makedirs(output_dir, exist_ok=True)
    model.save_pretrained(output_dir)
    if tokenizer is None:
        common.logger.info(f"Saved the model to {output_dir} (the source folder has no tokenizer).")
    else:
        processor = make_processor(tokenizer)
        processor.save_pretrained(output_dir)
        common.logger.info(f"Saved the model and its {type(processor).__name__} to {output_dir}")
    if args is None:
        return 0
    return push_after_conversion(
        args, output_dir, source=f"{architecture} from {source_dir}", parity=diffs, tolerance=tolerance,
        source_path=source_dir,
    )  # fmt: skip


def main(argv=None) -> int:
    parser = common.build_parser(__doc__)
    parser.add_argument(
        "--source", required=True, help="An LxmertModel / LxmertForPreTraining / LxmertForQuestionAnswering folder."
    )
    args = parser.parse_args(argv)
    common.setup_logging()
    return convert(args.source, args.output, args.tolerance, args.seed, args=args)


if __name__ == "__main__":
    sys.exit(main())
