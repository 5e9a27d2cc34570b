"""ALBEF conversion: torchmultimodal's ALBEF (and the original ALBEF / LAVIS state-dict layout) -> the fusion family,
with parity of the unimodal and fused states, the ITC embeddings and similarities, the ITM and the MLM logits.

The reference is built here from tiny sizes with seeded random weights, every parameter perturbed (biases and
LayerNorms included) so that a wrong mapping shows; nothing is downloaded. torchmultimodal's ALBEF has no ITM or MLM
head: ALBEF's (a Linear on the fused [CLS], and xbert's `BertOnlyMLMHead`, the same as transformers', tied to the
word embeddings) are added. The original layout is built from the same weights with this file's own key map (ALBEF's
`models/vit.py` and `models/xbert.py` names). ALBEF's own code runs in the last test, when `ALBEF_REPO` names a
checkout of github.com/salesforce/ALBEF (it is not on PyPI); it is skipped otherwise.
"""

import contextlib
import importlib.util
import io
import math
import os
from functools import partial

import pytest
import torch
from torch import nn
from PIL import Image
from transformers import BertTokenizer
from transformers.models.bert.modeling_bert import BertConfig, BertOnlyMLMHead

from modeling_vlp.commands.convert import CONVERTERS
from modeling_vlp.conversion import convert_albef
from modeling_vlp.modeling_fusion import VLPFusionForPreTraining
from modeling_vlp.processors import VLPProcessor

pytest.importorskip("torchmultimodal")  # pip install -c constraints.txt --no-deps torchmultimodal-nightly ...
from torchmultimodal.models.albef.image_encoder import ALBEFVisionEncoder  # noqa: E402
from torchmultimodal.models.albef.model import ALBEFModel, ALBEFModelWithSimilarity  # noqa: E402
from torchmultimodal.models.albef.multimodal_encoder import ALBEFMultimodalEncoder  # noqa: E402
from torchmultimodal.modules.encoders.bert_text_encoder import bert_text_encoder  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

TOLERANCE = 1e-4
WIDTH, HEADS, VOCAB, IMAGE, PATCH, EMBED = 32, 4, 50, 32, 8, 16
TEMP = 0.05


def perturb(module: nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)


def build_reference(seed: int = 0):
    """torchmultimodal's `ALBEFModelWithSimilarity` (momentum copies equal to the model, so that its similarities
    against the momentum features are those of the model's own) and ALBEF's ITM and MLM heads."""
    torch.manual_seed(seed)
    vision = ALBEFVisionEncoder(image_size=IMAGE, patch_size=PATCH, num_hidden_layers=2, num_attention_heads=HEADS,
                                hidden_size=WIDTH, mlp_dim=48)  # fmt: skip
    text = bert_text_encoder(hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=HEADS, intermediate_size=40,
                             dropout=0.0, vocab_size=VOCAB, max_position_embeddings=20)  # fmt: skip
    fusion = ALBEFMultimodalEncoder(
        hidden_size=WIDTH, num_hidden_layers=3, num_attention_heads=HEADS, intermediate_size=40
    )
    model = ALBEFModelWithSimilarity(ALBEFModel(vision, text, fusion), nn.Linear(WIDTH, EMBED), nn.Linear(WIDTH, EMBED),
                                     embed_size=EMBED, queue_size=8, temp=TEMP)  # fmt: skip
    perturb(model, seed)
    albef = model.albef_model
    for online, momentum in ((albef.vision_encoder, albef.vision_encoder_m), (albef.text_encoder, albef.text_encoder_m),
                             (albef.multimodal_encoder, albef.multimodal_encoder_m),
                             (model.vision_proj, model.vision_proj_m), (model.text_proj, model.text_proj_m)):  # fmt: skip
        momentum.load_state_dict(online.state_dict())
    itm_head = nn.Linear(WIDTH, 2)
    mlm_head = BertOnlyMLMHead(BertConfig(hidden_size=WIDTH, vocab_size=VOCAB, hidden_act="gelu", layer_norm_eps=1e-12))
    perturb(itm_head, seed + 1)
    perturb(mlm_head, seed + 2)
    mlm_head.predictions.decoder.weight = albef.text_encoder.embeddings.word_embeddings.weight  # tied, as ALBEF
    return model.eval(), itm_head.eval(), mlm_head.eval()


def make_inputs(seed: int = 3) -> dict:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, VOCAB, (4, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:], attention_mask[3, 4:] = 0, 0
    input_ids[attention_mask == 0] = 0
    return dict(pixel_values=torch.randn(4, 3, IMAGE, IMAGE, generator=generator), input_ids=input_ids,
                attention_mask=attention_mask)  # fmt: skip


@torch.no_grad()
def reference_outputs(model, itm_head, mlm_head, inputs) -> dict:
    """What torchmultimodal's own forward passes return (`ALBEFModelWithSimilarity.forward`), and ALBEF's heads."""
    out = model(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"], idx=torch.arange(4))
    batch = inputs["input_ids"].shape[0]
    fused = out.multimodal_embeddings
    image_feat = nn.functional.normalize(model.vision_proj(out.image_embeddings[:, 0]), dim=-1)
    text_feat = nn.functional.normalize(model.text_proj(out.text_embeddings[:, 0]), dim=-1)
    return {
        "image_unimodal_state": out.image_embeddings, "text_unimodal_state": out.text_embeddings,
        "text_last_hidden_state": fused, "image_embeds": image_feat, "text_embeds": text_feat,
        # sim_i2t against the momentum features (equal to the model's) of this batch, then the queue.
        "logits_per_image": out.similarity.sim_i2t[:, :batch], "logits_per_text": out.similarity.sim_t2i[:, :batch],
        "itm_logits": itm_head(fused[:, 0]), "mlm_logits": mlm_head(fused),
    }  # fmt: skip


def ours_outputs(model: VLPFusionForPreTraining, inputs) -> dict:
    with torch.no_grad():
        out = model(**inputs)
    base = out.fusion_output
    names = ("image_unimodal_state", "text_unimodal_state", "text_last_hidden_state", "image_embeds", "text_embeds",
             "logits_per_image", "logits_per_text")  # fmt: skip
    return {**{name: base[name] for name in names}, "itm_logits": out.itm_logits, "mlm_logits": out.mlm_logits}


def assert_parity(reference: dict, ours: dict, mask: torch.Tensor) -> dict:
    diffs = {}
    for name, theirs in reference.items():
        mine = ours[name]
        if name in ("text_unimodal_state", "text_last_hidden_state", "mlm_logits"):
            theirs, mine = theirs[mask.bool()], mine[mask.bool()]  # padded positions are never read
        diffs[name] = (theirs.double() - mine.double()).abs().max().item()
        assert diffs[name] <= TOLERANCE, (name, diffs[name])
        assert theirs.abs().max() > 1e-2, name  # not a vacuous comparison of near-zero outputs
    return diffs


def torchmultimodal_state_dict(model, itm_head, mlm_head) -> dict:
    state = dict(model.state_dict())
    state.update({f"itm_head.{key}": value for key, value in itm_head.state_dict().items()})
    state.update({f"cls.{key}": value for key, value in mlm_head.state_dict().items()})
    return state


def original_state_dict(model, itm_head, mlm_head) -> dict:
    """The same weights in ALBEF's own layout (`model_pretrain.py`: timm ViT `visual_encoder`, xbert
    `text_encoder.bert` whose layers 2.. cross-attend, `text_encoder.cls`), momentum copies and queues included."""
    albef, state = model.albef_model, {}
    vit = albef.vision_encoder.encoder
    state["visual_encoder.cls_token"] = vit.class_token
    state["visual_encoder.pos_embed"] = vit.encoder.pos_embedding
    state["visual_encoder.patch_embed.proj.weight"] = vit.conv_proj.weight
    state["visual_encoder.patch_embed.proj.bias"] = vit.conv_proj.bias
    for index in range(2):  # a feature-extractor GraphModule: submodules by name
        block = vit.get_submodule(f"encoder.layers.encoder_layer_{index}")
        prefix = f"visual_encoder.blocks.{index}."
        pairs = {"norm1": block.ln_1, "norm2": block.ln_2, "attn.proj": block.self_attention.out_proj,
                 "mlp.fc1": block.get_submodule("mlp.0"), "mlp.fc2": block.get_submodule("mlp.3")}  # fmt: skip
        for name, module in pairs.items():
            state[prefix + name + ".weight"], state[prefix + name + ".bias"] = module.weight, module.bias
        state[prefix + "attn.qkv.weight"] = block.self_attention.in_proj_weight
        state[prefix + "attn.qkv.bias"] = block.self_attention.in_proj_bias
    state["visual_encoder.norm.weight"], state["visual_encoder.norm.bias"] = vit.encoder.ln.weight, vit.encoder.ln.bias
    embeddings = albef.text_encoder.embeddings
    bert = "text_encoder.bert."
    for ours, module in (("word_embeddings", embeddings.word_embeddings), ("position_embeddings", embeddings.position_embeddings),
                         ("token_type_embeddings", embeddings.token_type_embeddings)):  # fmt: skip
        state[f"{bert}embeddings.{ours}.weight"] = module.weight
    state[f"{bert}embeddings.LayerNorm.weight"] = embeddings.layer_norm.weight
    state[f"{bert}embeddings.LayerNorm.bias"] = embeddings.layer_norm.bias
    state[f"{bert}embeddings.position_ids"] = torch.arange(20)[None]
    layers = [*albef.text_encoder.encoder.layer, *albef.multimodal_encoder.layer]
    for index, layer in enumerate(layers):
        prefix = f"{bert}encoder.layer.{index}."
        pairs = {
            "attention.self.query": layer.attention.query, "attention.self.key": layer.attention.key,
            "attention.self.value": layer.attention.value, "attention.output.dense": layer.attention.output,
            "attention.output.LayerNorm": layer.attention_layernorm, "intermediate.dense": layer.feedforward.model[0],
            "output.dense": layer.feedforward.model[-1], "output.LayerNorm": layer.feedforward_layernorm,
        }  # fmt: skip
        if hasattr(layer, "cross_attention"):
            pairs.update({
                "crossattention.self.query": layer.cross_attention.query,
                "crossattention.self.key": layer.cross_attention.key,
                "crossattention.self.value": layer.cross_attention.value,
                "crossattention.output.dense": layer.cross_attention.output,
                "crossattention.output.LayerNorm": layer.cross_attention_layernorm,
            })  # fmt: skip
        for name, module in pairs.items():
            state[prefix + name + ".weight"], state[prefix + name + ".bias"] = module.weight, module.bias
    for name, value in mlm_head.predictions.state_dict().items():
        state[f"text_encoder.cls.predictions.{name}"] = value  # `bias` and `decoder.bias`, as xbert's state dict
    for name, module in (("vision_proj", model.vision_proj), ("text_proj", model.text_proj), ("itm_head", itm_head)):
        state[f"{name}.weight"], state[f"{name}.bias"] = module.weight, module.bias
    state["temp"] = model.temp
    # What ALBEF.pth also holds: the momentum models and the queues (dropped by the converter).
    for key, value in list(state.items()):
        head, _, rest = key.partition(".")
        if head in ("visual_encoder", "text_encoder", "vision_proj", "text_proj"):
            state[f"{head}_m.{rest}"] = value + 1.0
    state.update(image_queue=torch.randn(EMBED, 8), text_queue=torch.randn(EMBED, 8), queue_ptr=torch.zeros(1).long())
    return {key: value.detach().clone() for key, value in state.items()}


def run_main(argv) -> tuple[int, str]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = convert_albef.main(argv)
    return status, stdout.getvalue()


@pytest.fixture(scope="module")
def reference():
    model, itm_head, mlm_head = build_reference()
    inputs = make_inputs()
    return dict(model=model, itm_head=itm_head, mlm_head=mlm_head, inputs=inputs,
                outputs=reference_outputs(model, itm_head, mlm_head, inputs))  # fmt: skip


def test_torchmultimodal_albef_converts_with_parity_of_every_output(reference):
    state = torchmultimodal_state_dict(reference["model"], reference["itm_head"], reference["mlm_head"])
    model, diffs = convert_albef.convert_albef(state, vision_heads=HEADS, text_heads=HEADS)
    assert model is not None, diffs
    assert max(diffs.values()) <= TOLERANCE and len(diffs) == 8
    config = model.config
    assert (config.vision_config.image_size, config.vision_config.patch_size, config.num_fusion_layers) == (
        IMAGE,
        PATCH,
        3,
    )
    assert (
        config.text_config.num_hidden_layers == 2 and config.fusion_type == "merge" and config.fused_pooling == "first"
    )
    assert math.isclose(float(model.vlp.get_logit_scale().detach()), 1 / float(reference["model"].temp), rel_tol=1e-6)
    assert model.mlm_head.decoder.weight is model.vlp.text_embeddings.token_embedding.weight
    figures = assert_parity(
        reference["outputs"], ours_outputs(model, reference["inputs"]), reference["inputs"]["attention_mask"]
    )
    print("ALBEF (torchmultimodal) parity, max |diff|:", {name: f"{diff:.1e}" for name, diff in figures.items()})


def test_original_albef_layout_converts_from_the_command_line(reference, tmp_path):
    state = original_state_dict(reference["model"], reference["itm_head"], reference["mlm_head"])
    checkpoint = tmp_path / "ALBEF.pth"
    torch.save({"model": state, "epoch": 3}, checkpoint)  # ALBEF's training checkpoint format
    output = tmp_path / "converted"
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"w{index}" for index in range(VOCAB - 5))]
    BertTokenizer(vocab={word: index for index, word in enumerate(words)}).save_pretrained(tmp_path / "bert")
    status, report = run_main(["--checkpoint", str(checkpoint), "--output", str(output), "--tokenizer",
                               str(tmp_path / "bert"), "--vision-heads", str(HEADS), "--text-heads", str(HEADS)])  # fmt: skip
    assert status == 0, report
    assert "PASSED" in report and "mlm_logits" in report and "logits_per_image" in report
    ours = VLPFusionForPreTraining.from_pretrained(output, attn_implementation="eager").eval()
    figures = assert_parity(
        reference["outputs"], ours_outputs(ours, reference["inputs"]), reference["inputs"]["attention_mask"]
    )
    print("ALBEF (original layout) parity, max |diff|:", {name: f"{diff:.1e}" for name, diff in figures.items()})
    processor = VLPProcessor.from_pretrained(output)  # ALBEF's preprocessing and the BERT tokenizer
    encoded = processor(images=[Image.new("RGB", (50, 40))], text=["w3 w7"], return_tensors="pt")
    assert encoded["pixel_values"].shape == (1, 3, IMAGE, IMAGE) and encoded["input_ids"].tolist() == [[2, 8, 12, 3]]
    # LAVIS's retrieval models name the text encoder without `bert.`: the same weights convert the same.
    lavis = {key.replace("text_encoder.bert.", "text_encoder."): value for key, value in state.items()}
    model, diffs = convert_albef.convert_albef(lavis, vision_heads=HEADS, text_heads=HEADS)
    assert model is not None and max(diffs.values()) <= TOLERANCE


def test_torchmultimodal_without_heads_gets_fresh_ones(reference):
    model, diffs = convert_albef.convert_albef(
        dict(reference["model"].state_dict()), vision_heads=HEADS, text_heads=HEADS
    )
    assert model is not None and max(diffs.values()) <= TOLERANCE
    ours = ours_outputs(model, reference["inputs"])
    for name in ("image_embeds", "text_embeds", "logits_per_image", "text_last_hidden_state"):
        assert torch.allclose(ours[name], reference["outputs"][name], atol=TOLERANCE), name
    assert model.mlm_head.decoder.weight is model.vlp.text_embeddings.token_embedding.weight


def test_a_wrong_mapping_fails_parity_and_writes_nothing(reference, tmp_path, monkeypatch):
    original = convert_albef.convert_state_dict

    def swapped(state_dict):
        converted = original(state_dict)
        a, b = "vlp.fusion.layers.1.cross_attn.q_proj.weight", "vlp.fusion.layers.1.cross_attn.k_proj.weight"
        converted[a], converted[b] = converted[b], converted[a]
        return converted

    monkeypatch.setattr(convert_albef, "convert_state_dict", swapped)
    checkpoint = tmp_path / "albef.pt"
    torch.save(torchmultimodal_state_dict(reference["model"], reference["itm_head"], reference["mlm_head"]), checkpoint)
    status, report = run_main(["--checkpoint", str(checkpoint), "--output", str(tmp_path / "out"),
                               "--vision-heads", str(HEADS), "--text-heads", str(HEADS)])  # fmt: skip
    assert status == 1 and "FAILED" in report
    assert not (tmp_path / "out").exists()


def test_not_an_albef_state_dict_is_refused():
    with pytest.raises(ValueError, match="Not an ALBEF state dict"):
        convert_albef.detect_layout({"encoder.weight": torch.zeros(1)})
    assert "albef" in CONVERTERS


ALBEF_REPO = os.environ.get("ALBEF_REPO")


def load_albef_modules(monkeypatch):
    """ALBEF's own `models/vit.py` and `models/xbert.py` from the checkout at $ALBEF_REPO. xbert was written for
    transformers 4: the helpers and docstring decorators it imports, gone from transformers 5, are shimmed (the
    pruning helpers are never called)."""
    import transformers.file_utils
    import transformers.modeling_utils
    import transformers.pytorch_utils

    monkeypatch.setattr(
        transformers.modeling_utils, "apply_chunking_to_forward", transformers.pytorch_utils.apply_chunking_to_forward,
        raising=False,
    )  # fmt: skip
    for name in ("find_pruneable_heads_and_indices", "prune_linear_layer"):
        monkeypatch.setattr(transformers.modeling_utils, name, lambda *args, **kwargs: None, raising=False)
    for name in ("add_code_sample_docstrings", "add_start_docstrings_to_model_forward", "replace_return_docstrings"):
        monkeypatch.setattr(transformers.file_utils, name, lambda *args, **kwargs: lambda function: function)
    modules = {}
    for name in ("vit", "xbert"):
        spec = importlib.util.spec_from_file_location(f"albef_{name}", os.path.join(ALBEF_REPO, "models", f"{name}.py"))
        modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(modules[name])
    return modules["vit"], modules["xbert"]


@pytest.mark.skipif(not ALBEF_REPO, reason="set ALBEF_REPO to a checkout of github.com/salesforce/ALBEF")
def test_albefs_own_code_converts_with_parity(monkeypatch, tmp_path):
    """ALBEF's `VisionTransformer` and xbert's BERT (embeddings, encoder in mode 'text' then 'fusion', MLM head) run
    as `ALBEF.forward` runs them; their state dict, under ALBEF's names, converts with parity of every output."""
    vit, xbert = load_albef_modules(monkeypatch)
    torch.manual_seed(0)
    visual = vit.VisionTransformer(img_size=IMAGE, patch_size=PATCH, embed_dim=WIDTH, depth=2, num_heads=HEADS,
                                   mlp_ratio=1.5, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6))  # fmt: skip
    bert_config = xbert.BertConfig(vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=5, num_attention_heads=HEADS,
                                   intermediate_size=40, max_position_embeddings=20, hidden_act="gelu",
                                   layer_norm_eps=1e-12, type_vocab_size=2, pad_token_id=0)  # fmt: skip
    bert_config.fusion_layer, bert_config.encoder_width = 2, WIDTH
    embeddings, encoder, cls = (
        xbert.BertEmbeddings(bert_config),
        xbert.BertEncoder(bert_config),
        xbert.BertOnlyMLMHead(bert_config),
    )
    vision_proj, text_proj, itm_head = nn.Linear(WIDTH, EMBED), nn.Linear(WIDTH, EMBED), nn.Linear(WIDTH, 2)
    temp = nn.Parameter(torch.tensor(0.07))
    parts = {"visual_encoder": visual, "text_encoder.bert.embeddings": embeddings, "text_encoder.bert.encoder": encoder,
             "text_encoder.cls": cls, "vision_proj": vision_proj, "text_proj": text_proj, "itm_head": itm_head}  # fmt: skip
    for seed, module in enumerate(parts.values()):
        module.eval()
        perturb(module, seed)
    cls.predictions.decoder.weight = embeddings.word_embeddings.weight  # BertForMaskedLM ties them
    state = {f"{prefix}.{key}": value for prefix, module in parts.items() for key, value in module.state_dict().items()}
    state["temp"] = temp.detach()

    inputs = make_inputs()
    mask = inputs["attention_mask"]
    with torch.no_grad():  # ALBEF.forward: image, text (mode 'text'), fusion (mode 'fusion'), heads
        image = visual(inputs["pixel_values"])
        extended = (1.0 - mask[:, None, None, :].float()) * -10000.0  # xbert's get_extended_attention_mask
        text = encoder(
            embeddings(input_ids=inputs["input_ids"]), attention_mask=extended, mode="text"
        ).last_hidden_state
        fused = encoder(text, attention_mask=extended, encoder_hidden_states=image,
                        encoder_attention_mask=torch.zeros(image.shape[0], 1, 1, image.shape[1]),
                        mode="fusion").last_hidden_state  # fmt: skip
        image_feat = nn.functional.normalize(vision_proj(image[:, 0]), dim=-1)
        text_feat = nn.functional.normalize(text_proj(text[:, 0]), dim=-1)
    reference = {
        "image_unimodal_state": image, "text_unimodal_state": text, "text_last_hidden_state": fused,
        "image_embeds": image_feat, "text_embeds": text_feat, "logits_per_image": image_feat @ text_feat.t() / temp,
        "logits_per_text": text_feat @ image_feat.t() / temp, "itm_logits": itm_head(fused[:, 0]), "mlm_logits": cls(fused),
    }  # fmt: skip
    model, diffs = convert_albef.convert_albef(state, vision_heads=HEADS, text_heads=HEADS)
    assert model is not None, diffs  # parity against torchmultimodal's ALBEF, on the converter's own batch
    assert model.config.text_config.num_hidden_layers == 2 and model.config.num_fusion_layers == 3
    figures = assert_parity({k: v.detach() for k, v in reference.items()}, ours_outputs(model, inputs), mask)
    print("ALBEF's own code parity, max |diff|:", {name: f"{diff:.1e}" for name, diff in figures.items()})
