"""LXMERT conversion: transformers `LxmertModel`, `LxmertForPreTraining` and `LxmertForQuestionAnswering` folders ->
the fusion family, with parity of every output and head (and of the pretraining loss).

Every source is built here from a tiny `LxmertConfig` with seeded random weights, each parameter perturbed (biases
and LayerNorms included) so that a wrong mapping shows; nothing is downloaded. Inputs have padded text and padded
regions.
"""

import contextlib
import copy
import io
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from modeling_vlp.conversion import convert_lxmert
from transformers import (
    AutoTokenizer,
    BertTokenizer,
    LxmertConfig,
    LxmertForPreTraining,
    LxmertForQuestionAnswering,
    LxmertModel,
)

from modeling_vlp.modeling_fusion import (
    VLPFusionForPreTraining,
    VLPFusionForQuestionAnswering,
    VLPFusionModel,
)
from modeling_vlp.presets import PRESETS

pytestmark = pytest.mark.usefixtures("one_thread")

TOLERANCE = 1e-4
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAPTIONS = ["a photo of a cat", "two people riding bikes next to a red car", "an empty room", "a dog on the beach"]
WORDS = sorted({word for caption in CAPTIONS for word in caption.split()})
TINY = dict(
    vocab_size=40, hidden_size=32, num_attention_heads=4, intermediate_size=37, l_layers=2, x_layers=2, r_layers=2,
    visual_feat_dim=24, visual_pos_dim=4, num_qa_labels=7, num_object_labels=11, num_attr_labels=5,
    max_position_embeddings=40,
)  # fmt: skip
SOURCE_CLASSES = {"base": LxmertModel, "pretraining": LxmertForPreTraining, "qa": LxmertForQuestionAnswering}
OUR_CLASSES = {"base": VLPFusionModel, "pretraining": VLPFusionForPreTraining, "qa": VLPFusionForQuestionAnswering}


def build_tokenizer() -> BertTokenizer:
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    return BertTokenizer(vocab={token: index for index, token in enumerate(tokens)})


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02)
    return model.eval()


def run_main(argv) -> tuple[int, str]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = convert_lxmert.main(argv)
    return status, stdout.getvalue()


def max_diff(a, b) -> float:
    return (a.detach().double() - b.detach().double()).abs().max().item()


def make_inputs(tokenizer, seed: int = 5) -> dict:
    """The captions tokenized with padding; 6 regions, the last two padded in rows 0 and 2."""
    generator = torch.Generator().manual_seed(seed)
    inputs = dict(tokenizer(CAPTIONS, padding=True, return_tensors="pt"))
    assert not inputs["attention_mask"].all()
    batch = len(CAPTIONS)
    visual_attention_mask = torch.ones(batch, 6, dtype=torch.long)
    visual_attention_mask[::2, 4:] = 0
    inputs.update(
        visual_feats=torch.randn(batch, 6, TINY["visual_feat_dim"], generator=generator),
        visual_pos=torch.rand(batch, 6, 2, 2, generator=generator).sort(dim=2).values.flatten(2),  # x1 < x2, y1 < y2
        visual_attention_mask=visual_attention_mask,
    )
    return inputs


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Each source class saved (the pretraining one with a tokenizer) and converted in-process."""
    tokenizer = build_tokenizer()
    results = {}
    for seed, (kind, source_class) in enumerate(SOURCE_CLASSES.items()):
        folder = tmp_path_factory.mktemp(kind)
        torch.manual_seed(seed)
        source = perturbed(source_class(LxmertConfig(**TINY)), seed)
        source.save_pretrained(folder / "source")
        if kind == "pretraining":
            tokenizer.save_pretrained(folder / "source")
        status, report = run_main(["--source", str(folder / "source"), "--output", str(folder / "converted")])
        results[kind] = SimpleNamespace(
            source=source, source_dir=str(folder / "source"), output=str(folder / "converted"), status=status,
            report=report,
        )  # fmt: skip
    results["tokenizer"] = tokenizer
    return results


def load_ours(result, kind):
    return OUR_CLASSES[kind].from_pretrained(result.output, attn_implementation="eager").eval()


def assert_backbone_parity(reference, ours):
    """LXMERT's `LxmertModelOutput` against ours, hidden states and attentions included. LXMERT's hidden-state tuples
    leave out the embeddings, ours start with them."""
    pairs = [
        ("language_output", ours.text_last_hidden_state),
        ("vision_output", ours.image_last_hidden_state),
        ("pooled_output", ours.pooler_output),
    ]
    for name, value in pairs:
        assert max_diff(reference[name], value) <= TOLERANCE, name
    for theirs, mine in (
        (reference.language_hidden_states, ours.text_hidden_states[1:]),
        (reference.vision_hidden_states, ours.image_hidden_states[1:]),
        (reference.language_attentions, ours.text_attentions),
        (reference.vision_attentions, ours.image_attentions),
        (reference.cross_encoder_attentions, ours.cross_attentions),
    ):
        assert len(theirs) == len(mine) > 0
        for a, b in zip(theirs, mine):
            assert max_diff(a, b) <= TOLERANCE


def test_pretraining_model_converts_with_parity_of_every_head(converted):
    result = converted["pretraining"]
    assert result.status == 0, result.report
    for name in ("language_output", "vision_output", "pooled_output", "prediction_logits", "cross_relationship_score",
                 "question_answering_score", "obj", "attr", "feat", "PASSED"):  # fmt: skip
        assert name in result.report, name
    source, ours = result.source, load_ours(result, "pretraining")
    assert ours.mlm_head.decoder.weight is ours.vlp.text_embeddings.token_embedding.weight
    inputs = make_inputs(converted["tokenizer"])
    with torch.no_grad():
        reference = source(**inputs, output_hidden_states=True, output_attentions=True)
        base_reference = source.lxmert(**inputs, output_hidden_states=True, output_attentions=True)
        out = ours(**inputs, output_hidden_states=True, output_attentions=True)
        region = source.obj_predict_head(base_reference.vision_output)
    assert_backbone_parity(base_reference, out.fusion_output)
    heads = {
        "mlm_logits": reference.prediction_logits,
        "itm_logits": reference.cross_relationship_score,
        "answer_logits": reference.question_answering_score,
        "obj_logits": region["obj"],
        "attr_logits": region["attr"],
        "mim_predictions": region["feat"],
    }
    for name, value in heads.items():
        assert max_diff(value, out[name]) <= TOLERANCE, name
        assert value.abs().max() > 1e-3, name  # not a vacuous comparison of near-zero outputs


def test_pretraining_losses_match_lxmert(converted):
    result, tokenizer = converted["pretraining"], converted["tokenizer"]
    source, ours = result.source, load_ours(result, "pretraining")
    inputs = make_inputs(tokenizer)
    generator = torch.Generator().manual_seed(9)
    batch, regions = inputs["visual_feats"].shape[:2]
    dropped = torch.rand(inputs["input_ids"].shape, generator=generator) < 0.6
    mlm_labels = inputs["input_ids"].masked_fill(dropped, -100)
    mlm_labels[:, 1] = inputs["input_ids"][:, 1]
    weights = (torch.rand(batch, regions, generator=generator) < 0.4).float() * inputs["visual_attention_mask"]
    weights[0, 0] = 1.0
    obj_labels = {
        "obj": (torch.randint(0, TINY["num_object_labels"], (batch, regions), generator=generator), weights),
        "attr": (torch.randint(0, TINY["num_attr_labels"], (batch, regions), generator=generator), weights),
        "feat": (torch.randn(batch, regions, TINY["visual_feat_dim"], generator=generator), weights),
    }
    answers = torch.tensor([0, 3, 6, 1])
    matched = torch.ones(batch, dtype=torch.long)
    with torch.no_grad():
        reference = source(**inputs, labels=mlm_labels, matched_label=matched, obj_labels=obj_labels, ans=answers)
        out = ours(**inputs, mlm_labels=mlm_labels, itm_labels=matched, obj_labels=obj_labels, answer_labels=answers)
        # LXMERT's total with the visual losses alone, to compare ours separately.
        visual_only = source(**inputs, obj_labels=obj_labels)
    assert all(loss is not None for loss in (out.loss_mlm, out.loss_itm, out.loss_mim, out.loss_vqa))
    assert max_diff(reference.loss, out.loss) <= TOLERANCE
    assert max_diff(visual_only.loss, out.loss_mim) <= TOLERANCE
    assert out.loss_mim > 0.1


@pytest.mark.parametrize("kind", ["base", "qa"])
def test_base_and_question_answering_models_convert_with_parity(converted, kind):
    result = converted[kind]
    assert result.status == 0, result.report
    assert "PASSED" in result.report and "pooled_output" in result.report
    source, ours = result.source, load_ours(result, kind)
    inputs = make_inputs(converted["tokenizer"])
    with torch.no_grad():
        backbone = source if kind == "base" else source.lxmert
        base_reference = backbone(**inputs, output_hidden_states=True, output_attentions=True)
        base_ours = (ours if kind == "base" else ours.vlp)(**inputs, output_hidden_states=True, output_attentions=True)
    assert_backbone_parity(base_reference, base_ours)
    if kind == "qa":
        assert "question_answering_score" in result.report
        with torch.no_grad():
            reference, out = source(**inputs), ours(**inputs, labels=torch.tensor([1, 0, 6, 2]))
        assert max_diff(reference.question_answering_score, out.logits) <= TOLERANCE
        assert out.loss is not None
    assert not os.path.exists(os.path.join(result.output, "tokenizer_config.json"))  # the source had none


def test_converted_folder_keeps_the_tokenizer(converted):
    result, tokenizer = converted["pretraining"], converted["tokenizer"]
    if os.path.isfile(os.path.join(result.output, "processor_config.json")):
        from modeling_vlp.processors import VLPProcessor

        encode = VLPProcessor.from_pretrained(result.output)
        assert encode.image_processor is None
    else:  # VLPProcessor cannot go without an image processor: the tokenizer alone was saved
        encode = AutoTokenizer.from_pretrained(result.output)
    ours = encode(text=CAPTIONS, padding=True, return_tensors="pt")
    reference = tokenizer(CAPTIONS, padding=True, return_tensors="pt")
    assert torch.equal(ours["input_ids"], reference["input_ids"])
    assert not (reference["input_ids"] == tokenizer.unk_token_id).any()  # every word is in the vocabulary
    config = VLPFusionForPreTraining.config_class.from_pretrained(result.output)
    assert (config.text_config.bos_token_id, config.text_config.eos_token_id) == (2, 3)  # [CLS], [SEP]


def test_config_of_the_default_lxmert_is_the_preset():
    """The "lxmert-base" preset is unc-nlp/lxmert-base-uncased's architecture: converting `LxmertConfig()` (its
    defaults) gives the preset back."""
    bert_ids = SimpleNamespace(cls_token_id=101, sep_token_id=102)
    converted = convert_lxmert.convert_config(LxmertConfig(), "LxmertForPreTraining", bert_ids)
    config_class, fields = PRESETS["lxmert-base"]
    assert converted.to_dict() == config_class(**copy.deepcopy(fields)).to_dict()
    qa = convert_lxmert.convert_config(LxmertConfig(), "LxmertForQuestionAnswering", bert_ids)
    assert qa.region_losses == [] and not qa.pretraining_answer_head and qa.num_labels == 9500


def test_parity_failure_writes_nothing(converted, tmp_path, monkeypatch):
    original = convert_lxmert.convert_state_dict

    def wrong_mapping(state_dict):
        renamed = original(state_dict)
        # The shared cross-attention's LayerNorm swapped with the text FFN's: a plausible mapping mistake.
        a, b = "vlp.fusion.layers.0.layer_norm_cross.weight", "vlp.fusion.layers.0.text_layer.layer_norm2.weight"
        renamed[a], renamed[b] = renamed[b], renamed[a]
        return renamed

    monkeypatch.setattr(convert_lxmert, "convert_state_dict", wrong_mapping)
    status, report = run_main(["--source", converted["pretraining"].source_dir, "--output", str(tmp_path / "out")])
    assert status == 1 and "FAILED" in report
    assert not (tmp_path / "out").exists()


def test_unknown_architecture_is_an_error():
    with pytest.raises(ValueError, match=r"`architectures` is \['LxmertForSomethingElse'\]"):
        convert_lxmert.detect_architecture(LxmertConfig(architectures=["LxmertForSomethingElse"]))
    assert convert_lxmert.detect_architecture(LxmertConfig()) == "LxmertModel"


@pytest.mark.slow  # runs a subprocess
def test_command_line(converted, tmp_path):
    output = tmp_path / "cli"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "modeling_vlp.conversion.convert_lxmert", "--source", converted["qa"].source_dir,
         "--output", str(output)],
        capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASSED" in result.stdout and "question_answering_score" in result.stdout
    assert (output / "config.json").is_file() and (output / "model.safetensors").is_file()
