"""Convert a transformers VisualBERT folder (saved with `save_pretrained`) into the unified family.

    python -m modeling_vlp.conversion.convert_visualbert --source VISUALBERT_DIR --output OUT_DIR [--tolerance 1e-4]

The class is read from the folder's `architectures`:
  VisualBertModel                -> VLPUnifiedModel
  VisualBertForPreTraining       -> VLPUnifiedForPreTraining (MLM head; the sentence-image head becomes the ITM head,
                                    its two rows swapped: VisualBERT's class 0 is "matches", ours is 1; the MIM head
                                    is new)
  VisualBertForQuestionAnswering -> VLPUnifiedForQuestionAnswering (linear head on the last text token, KL loss)

VisualBERT has no box input: a visual token is Linear(feature) + the visual position embedding of id 0 + the visual
token-type embedding of id 1, both constant. The first is folded into the Linear's bias, the second becomes the
visual modality-type embedding (the text one is zero: VisualBERT's text token types already play that role).
Hence `visual_token_type_ids` other than 1 and `image_text_alignment` are not supported, nor `bypass_transformer`.
The converted folder keeps the source's tokenizer when it has one (region features come from a detector, so there is
no image processor).
"""

import sys

import torch
from transformers import (
    VisualBertForPreTraining,
    VisualBertForQuestionAnswering,
    VisualBertModel,
)

from ..configuration_unified import VLPUnifiedConfig
from ..hub.push import push_after_conversion
from ..modeling_unified import (
    VLPUnifiedForPreTraining,
    VLPUnifiedForQuestionAnswering,
    VLPUnifiedModel,
)
from ..presets import get_preset_config
from . import common
from .convert_vilt import read_architecture, save

logger = common.logger

ARCHITECTURES = {
    "VisualBertModel": (VisualBertModel, VLPUnifiedModel, ()),
    "VisualBertForPreTraining": (VisualBertForPreTraining, VLPUnifiedForPreTraining, ("mim_head.",)),
    "VisualBertForQuestionAnswering": (VisualBertForQuestionAnswering, VLPUnifiedForQuestionAnswering, ()),
}
PARITY_NUM_REGIONS = 10


def convert_config(source) -> VLPUnifiedConfig:
    if source.bypass_transformer:
        raise ValueError(
            "`bypass_transformer=True` (text-only layers, then one joint layer over text and regions) is not a "
            "single-stream model; it cannot be converted."
        )
    # `special_visual_initialize` only copies the text embeddings into the visual ones at initialisation: the
    # trained weights are converted as they are, whatever it says.
    fields = dict(
        vocab_size=source.vocab_size,
        max_position_embeddings=source.max_position_embeddings,
        type_vocab_size=source.type_vocab_size,
        visual_feat_dim=source.visual_embedding_dim,
        # VisualBERT imposes no limit on the number of regions: allow as many as there are text positions.
        max_regions=max(100, source.max_position_embeddings),
        hidden_size=source.hidden_size,
        intermediate_size=source.intermediate_size,
        num_hidden_layers=source.num_hidden_layers,
        num_attention_heads=source.num_attention_heads,
        hidden_act=source.hidden_act,
        layer_norm_eps=float(source.layer_norm_eps),
        hidden_dropout=float(source.hidden_dropout_prob),
        attention_dropout=float(source.attention_probs_dropout_prob),
        pad_token_id=0 if source.pad_token_id is None else source.pad_token_id,
    )
    config = get_preset_config("visualbert-base", **fields)
    if getattr(source, "id2label", None):
        config.id2label = dict(source.id2label)
        config.label2id = dict(source.label2id)
    return config


_RULES = [
    (r"^encoder\.layer\.(\d+)\.attention\.self\.query\.", r"encoder.layers.\1.self_attn.q_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.self\.key\.", r"encoder.layers.\1.self_attn.k_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.self\.value\.", r"encoder.layers.\1.self_attn.v_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"encoder.layers.\1.self_attn.out_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"encoder.layers.\1.layer_norm1."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"encoder.layers.\1.mlp.fc1."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"encoder.layers.\1.mlp.fc2."),
    (r"^encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"encoder.layers.\1.layer_norm2."),
    (r"^embeddings\.word_embeddings\.", "embeddings.text_embeddings.token_embedding."),
    (r"^embeddings\.position_embeddings\.", "embeddings.text_embeddings.position_embedding."),
    (r"^embeddings\.token_type_embeddings\.", "embeddings.text_embeddings.token_type_embedding."),
    (r"^embeddings\.LayerNorm\.", "embeddings.layer_norm."),
    (r"^pooler\.dense\.", "pooler.dense."),
]
_HEAD_RULES = [
    (r"^cls\.predictions\.transform\.dense\.", "mlm_head.transform.dense."),
    (r"^cls\.predictions\.transform\.LayerNorm\.", "mlm_head.transform.layer_norm."),
    (r"^cls\.predictions\.decoder\.weight$", "mlm_head.decoder.weight"),
    (r"^cls\.predictions\.bias$", "mlm_head.decoder.bias"),
]


def convert_state_dict(state_dict: dict[str, torch.Tensor], base_prefix: str) -> dict[str, torch.Tensor]:
    """VisualBERT names -> ours. `base_prefix` is "visual_bert." for the head classes, "" for VisualBertModel."""
    base, heads = {}, {}
    for key, value in state_dict.items():
        if key.startswith(base_prefix):
            base[key[len(base_prefix) :]] = value
        else:
            heads[key] = value
    weight = base.pop("embeddings.visual_projection.weight")
    bias = base.pop("embeddings.visual_projection.bias")
    visual_position = base.pop("embeddings.visual_position_embeddings.weight")[0]
    visual_token_type = base.pop("embeddings.visual_token_type_embeddings.weight")[1]
    base["embeddings.visual_embeddings.feat_projection.weight"] = weight
    base["embeddings.visual_embeddings.feat_projection.bias"] = bias + visual_position
    modality_types = torch.stack([torch.zeros_like(visual_token_type), visual_token_type])
    base["embeddings.modality_type_embedding.weight"] = modality_types
    base = common.rename_keys(base, _RULES)

    converted = {}
    if "cls.seq_relationship.weight" in heads:
        # VisualBERT: class 0 = the sentence matches the image; ours: class 1 = match.
        converted["itm_head.weight"] = heads.pop("cls.seq_relationship.weight").flip(0)
        converted["itm_head.bias"] = heads.pop("cls.seq_relationship.bias").flip(0)
    if "cls.weight" in heads:  # VisualBertForQuestionAnswering's linear head
        converted["classifier.decoder.weight"] = heads.pop("cls.weight")
        converted["classifier.decoder.bias"] = heads.pop("cls.bias")
    # `cls.predictions.decoder.bias` is tied to `cls.predictions.bias`: one of them is enough.
    if "cls.predictions.bias" in heads:
        heads.pop("cls.predictions.decoder.bias", None)
    if "cls.predictions.transform.dense.weight" in heads and "cls.predictions.decoder.weight" not in heads:
        heads["cls.predictions.decoder.weight"] = base["embeddings.text_embeddings.token_embedding.weight"]
    converted.update(common.rename_keys(heads, _HEAD_RULES))
    prefix = "vlp." if base_prefix else ""
    return {**{prefix + key: value for key, value in base.items()}, **converted}


# --------------------------------------------------------------------------------------------------------------
# Parity
# --------------------------------------------------------------------------------------------------------------


def parity_inputs(tokenizer, config: VLPUnifiedConfig, seed: int) -> dict[str, torch.Tensor]:
    """The parity captions (tokenised by the source's tokenizer, or random ids without one) with seeded random
    region features, some of them padding."""
    texts = list(common.PARITY_CAPTIONS)
    generator = torch.Generator().manual_seed(seed)
    if tokenizer is not None:
        inputs = dict(tokenizer(texts, return_tensors="pt", padding="longest", truncation=True,
                                max_length=config.max_position_embeddings))  # fmt: skip
    else:
        lengths = torch.tensor([9, 5, 12, 7])
        input_ids = torch.randint(1, config.vocab_size, (len(texts), int(lengths.max())), generator=generator)
        attention_mask = (torch.arange(int(lengths.max()))[None] < lengths[:, None]).long()
        inputs = dict(input_ids=input_ids * attention_mask, attention_mask=attention_mask)
        inputs["token_type_ids"] = torch.zeros_like(input_ids)
    batch_size = inputs["input_ids"].shape[0]
    visual_feats = torch.rand(batch_size, PARITY_NUM_REGIONS, config.visual_feat_dim, generator=generator)
    num_regions = torch.randint(3, PARITY_NUM_REGIONS + 1, (batch_size,), generator=generator)
    num_regions[0] = PARITY_NUM_REGIONS
    visual_attention_mask = (torch.arange(PARITY_NUM_REGIONS)[None] < num_regions[:, None]).long()
    return {**inputs, "visual_feats": visual_feats, "visual_attention_mask": visual_attention_mask}


def _source_inputs(inputs: dict) -> dict:
    renamed = dict(inputs)
    renamed["visual_embeds"] = renamed.pop("visual_feats")
    return renamed


@torch.no_grad()
def reference_outputs(model, inputs: dict) -> dict[str, torch.Tensor]:
    base = model if isinstance(model, VisualBertModel) else model.visual_bert
    source_inputs = _source_inputs(inputs)
    base_outputs = base(**source_inputs)
    outputs = dict(last_hidden_state=base_outputs.last_hidden_state, pooler_output=base_outputs.pooler_output)
    if isinstance(model, VisualBertForPreTraining):
        head_outputs = model(**source_inputs)
        outputs["mlm_logits"] = head_outputs.prediction_logits[:, : inputs["input_ids"].shape[1]]
        outputs["itm_logits"] = head_outputs.seq_relationship_logits.flip(-1)
    elif isinstance(model, VisualBertForQuestionAnswering):
        outputs["vqa_logits"] = model(**source_inputs).logits
    return outputs


@torch.no_grad()
def our_outputs(model, inputs: dict) -> dict[str, torch.Tensor]:
    base = model if isinstance(model, VLPUnifiedModel) else model.vlp
    base_outputs = base(**inputs)
    outputs = dict(last_hidden_state=base_outputs.last_hidden_state, pooler_output=base_outputs.pooler_output)
    if isinstance(model, VLPUnifiedForPreTraining):
        head_outputs = model(**inputs)
        outputs["mlm_logits"], outputs["itm_logits"] = head_outputs.mlm_logits, head_outputs.itm_logits
    elif isinstance(model, VLPUnifiedForQuestionAnswering):
        outputs["vqa_logits"] = model(**inputs).logits
    return outputs


def check_parity(source_model, model, tokenizer, args) -> common.ParityReport:
    inputs = parity_inputs(tokenizer, model.config, args.seed)
    reference, ours = reference_outputs(source_model, inputs), our_outputs(model, inputs)
    diffs = {name: common.max_abs_diff(reference[name], ours[name]) for name in reference}
    # No image processor to compare: the processor fields hold neutral values, and only the model lines print.
    return common.ParityReport(diffs, {}, 0.0, True, args.tolerance, args.pixel_tolerance)


# --------------------------------------------------------------------------------------------------------------
# The conversion
# --------------------------------------------------------------------------------------------------------------


def convert(source_dir: str, args) -> int:
    """Load, check parity, save. Returns the exit status: 0 when saved, 1 when parity failed (nothing saved)."""
    architecture = read_architecture(source_dir, ARCHITECTURES, "VisualBertModel")
    source_class, our_class, new_heads = ARCHITECTURES[architecture]
    source_model = source_class.from_pretrained(source_dir, dtype=torch.float32).eval()
    config = convert_config(source_model.config)
    base_prefix = "" if source_class is VisualBertModel else "visual_bert."
    state_dict = convert_state_dict(source_model.state_dict(), base_prefix)
    logger.info(f"Converting {architecture} from {source_dir} into {our_class.__name__}")
    if new_heads:
        logger.info(f"The source has no {', '.join(h.rstrip('.') for h in new_heads)}: it starts untrained.")
    model = common.load_converted(config, state_dict, our_class, new_heads)
    try:
        tokenizer = common._load_tokenizer(source_dir)
    except (OSError, ValueError) as error:
        logger.warning(f"No tokenizer in {source_dir!r} ({error}): parity on random token ids, none saved.")
        tokenizer = None
    if tokenizer is not None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id

    report = check_parity(source_model, model, tokenizer, args)
    lines = report.lines()
    for line in lines[: lines.index("Processor:")] + [lines[-1]]:
        print(line)
    if not report.ok:
        logger.error("Parity failed: nothing written.")
        return 1
    save(model, None, tokenizer, args.output)
    return push_after_conversion(
        args, args.output, source=f"{architecture} from {source_dir}", parity=report.model_diffs,
        tolerance=args.tolerance, source_path=source_dir,
    )  # fmt: skip


def main(argv=None) -> int:
    parser = common.build_parser(__doc__)
    parser.add_argument("--source", required=True, help="A VisualBERT folder (config.json, weights[, tokenizer]).")
    args = parser.parse_args(argv)
    common.setup_logging()
    return convert(args.source, args)


if __name__ == "__main__":
    sys.exit(main())
