import json
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import BertTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

from modeling_vlp.data.scenes import ZERO_SHOT_TEMPLATES, make_scenes_dataset, scene_class_names
from modeling_vlp.evaluation.embeddings import build_zero_shot_classifier, encode_images, encode_texts, evaluate_dual_encoder
from modeling_vlp.evaluation.vqa import evaluate_vqa, vqa_accuracy, vqa_score
from modeling_vlp.data.answers import normalize_vqa_answer
from modeling_vlp.evaluation.ranking import retrieval_chance_levels, retrieval_metrics, zero_shot_accuracy
from modeling_vlp.processors import VLPImageProcessor, VLPProcessor, VLPTokenizer


def approx(value):
    return pytest.approx(value, rel=1e-12, abs=1e-12)


# --- retrieval_metrics on hand-made similarities ----------------------------------------------


def test_perfect_diagonal_is_100_percent():
    metrics = retrieval_metrics(torch.eye(12) + 0.01 * torch.arange(12.0), list(range(12)))
    for key in ("i2t_r@1", "i2t_r@5", "i2t_r@10", "t2i_r@1", "t2i_r@5", "t2i_r@10"):
        assert metrics[key] == 100.0
    assert metrics["i2t_mean_rank"] == metrics["t2i_mean_rank"] == 1.0
    assert metrics["i2t_median_rank"] == metrics["t2i_median_rank"] == 1.0
    assert metrics["rsum"] == 600.0


def test_reversed_scores_rank_the_truth_last():
    metrics = retrieval_metrics(-torch.eye(12), np.arange(12))
    for key in ("i2t_r@1", "i2t_r@5", "i2t_r@10", "t2i_r@1", "t2i_r@5", "t2i_r@10", "rsum"):
        assert metrics[key] == 0.0
    assert metrics["i2t_mean_rank"] == metrics["t2i_mean_rank"] == 12.0


def test_several_captions_per_image_and_ties():
    # 3 images, 5 captions: image 0 -> captions 0, 1; image 1 -> caption 2; image 2 -> captions 3, 4.
    similarity = np.array(
        [
            [0.9, 0.1, 0.5, 0.2, 0.3],
            [0.8, 0.7, 0.6, 0.1, 0.0],
            [0.4, 0.9, 0.2, 0.1, 0.3],
        ]
    )
    text_to_image = [0, 0, 1, 2, 2]
    metrics = retrieval_metrics(similarity, text_to_image, ks=(1, 2, 5))
    # Image->text ranks of the best ground truth: [1, 3, 3].
    assert metrics["i2t_r@1"] == approx(100 / 3)
    assert metrics["i2t_r@2"] == approx(100 / 3)
    assert metrics["i2t_r@5"] == 100.0
    assert metrics["i2t_mean_rank"] == approx(7 / 3)
    assert metrics["i2t_median_rank"] == 3.0
    # Text->image ranks: [1, 3, 1, 3 (0.1 ties with 0.1), 2 (0.3 ties with 0.3)].
    assert metrics["t2i_r@1"] == approx(40.0)
    assert metrics["t2i_r@2"] == approx(60.0)
    assert metrics["t2i_r@5"] == 100.0
    assert metrics["t2i_mean_rank"] == approx(2.0)
    assert metrics["t2i_median_rank"] == 2.0
    assert metrics["rsum"] == approx(100 / 3 + 100 / 3 + 100 + 40 + 60 + 100)
    assert set(metrics) == {
        "i2t_r@1", "i2t_r@2", "i2t_r@5", "t2i_r@1", "t2i_r@2", "t2i_r@5",
        "i2t_mean_rank", "t2i_mean_rank", "i2t_median_rank", "t2i_median_rank", "rsum",
    }  # fmt: skip
    assert retrieval_metrics(torch.tensor(similarity), torch.tensor(text_to_image), ks=(1, 2, 5)) == metrics


def test_ties_count_against_the_model():
    constant = retrieval_metrics(torch.zeros(5, 5), range(5), ks=(1, 4, 5))
    assert constant["i2t_r@1"] == constant["t2i_r@1"] == 0.0
    assert constant["i2t_r@4"] == constant["t2i_r@4"] == 0.0
    assert constant["i2t_r@5"] == constant["t2i_r@5"] == 100.0
    assert constant["i2t_mean_rank"] == constant["t2i_mean_rank"] == 5.0
    # Two ground-truth captions tied at the top is still a first place.
    metrics = retrieval_metrics(torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), [0, 0, 1], ks=(1,))
    assert metrics["i2t_r@1"] == 100.0 and metrics["t2i_r@1"] == 100.0


def test_retrieval_metrics_rejects_bad_inputs():
    with pytest.raises(ValueError, match="images without one include \\[1\\]"):
        retrieval_metrics(torch.eye(3), [0, 2, 2])
    with pytest.raises(ValueError, match="shape \\(3,\\), got \\(2,\\)"):
        retrieval_metrics(torch.eye(3), [0, 1])
    with pytest.raises(ValueError, match="indices in \\[0, 3\\), got values in \\[0, 3\\]"):
        retrieval_metrics(torch.eye(3), [0, 1, 3])
    with pytest.raises(ValueError, match="integer indices"):
        retrieval_metrics(torch.eye(3), [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(torch.tensor([[float("nan"), 0.0], [0.0, 1.0]]), [0, 1])
    with pytest.raises(ValueError, match="shape \\(num_images, num_texts\\), got \\(3,\\)"):
        retrieval_metrics(torch.ones(3), [0, 1, 2])
    with pytest.raises(ValueError, match="ks must be positive"):
        retrieval_metrics(torch.eye(2), [0, 1], ks=(0,))


def test_chance_levels():
    levels = retrieval_chance_levels(list(range(10)), 10, ks=(1, 5, 10))
    assert levels == {
        "chance_i2t_r@1": 10.0, "chance_i2t_r@5": 50.0, "chance_i2t_r@10": 100.0,
        "chance_t2i_r@1": 10.0, "chance_t2i_r@5": 50.0, "chance_t2i_r@10": 100.0,
    }  # fmt: skip
    # Two captions per image among 4 texts: a random top-1 text hits with probability 2 / 4.
    levels = retrieval_chance_levels([0, 0, 1, 1], 2, ks=(1, 2))
    assert levels["chance_i2t_r@1"] == 50.0
    assert levels["chance_i2t_r@2"] == approx(100 * (1 - 1 / 6))  # both picks wrong: C(2,2) / C(4,2)
    assert levels["chance_t2i_r@1"] == 50.0 and levels["chance_t2i_r@2"] == 100.0


def test_chance_levels_match_random_scores_on_average():
    generator = torch.Generator().manual_seed(0)
    text_to_image = torch.arange(50).repeat_interleave(3)
    runs = [retrieval_metrics(torch.rand(50, 150, generator=generator), text_to_image, ks=(5,)) for _ in range(40)]
    levels = retrieval_chance_levels(text_to_image, 50, ks=(5,))
    assert np.mean([run["i2t_r@5"] for run in runs]) == pytest.approx(levels["chance_i2t_r@5"], abs=3)
    assert np.mean([run["t2i_r@5"] for run in runs]) == pytest.approx(levels["chance_t2i_r@5"], abs=2)


# --- zero_shot_accuracy -----------------------------------------------------------------------


def test_zero_shot_accuracy_exact_values():
    classes = torch.eye(3)
    images = torch.tensor(
        [
            [0.9, 0.1, 0.0],  # class 0 first
            [0.1, 0.8, 0.5],  # class 1 first, class 2 second
            [0.1, 0.8, 0.5],  # true class 2 is second
            [0.0, 0.5, 0.5],  # true class 2 ties with class 1: a miss at top-1, a hit at top-2
            [0.3, 0.2, 0.1],  # true class 2 is last
        ]
    )
    accuracy = zero_shot_accuracy(images, classes, [0, 1, 2, 2, 2], ks=(1, 2, 3))
    assert accuracy == {"top1": 40.0, "top2": 80.0, "top3": 100.0}
    assert zero_shot_accuracy(images.numpy(), classes.numpy(), np.array([0, 1, 2, 2, 2]), ks=(1,)) == {"top1": 40.0}
    with pytest.raises(ValueError, match="must share D"):
        zero_shot_accuracy(images, torch.eye(4), [0, 1, 2, 2, 2])
    with pytest.raises(ValueError, match="labels must hold indices in \\[0, 3\\)"):
        zero_shot_accuracy(images, classes, [0, 1, 2, 2, 3])


# --- encoders on a tiny random CLIP -----------------------------------------------------------

_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(scope="module")
def scenes():
    return make_scenes_dataset(num_train=0, num_validation=12, image_size=32, seed=1)["validation"]


@pytest.fixture(scope="module")
def clip(scenes):
    texts = [c for captions in scenes["captions"] for c in captions] + scene_class_names() + list(ZERO_SHOT_TEMPLATES)
    spaced = [text.replace("{}", " ").replace(",", " , ").replace(".", " . ") for text in texts]
    words = sorted({word for text in spaced for word in text.split()})
    tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(_SPECIAL + words)})
    assert tokenizer.convert_tokens_to_ids(tokenizer.tokenize("a large red circle")) != [1, 1, 1, 1]
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=40, pad_token_id=0, bos_token_id=2, eos_token_id=3,
        ),
        vision_config=dict(
            image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
            num_attention_heads=2,
        ),
        projection_dim=16,
    )  # fmt: skip
    torch.manual_seed(0)
    model = CLIPModel(config)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return model, CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def test_encoders_return_normalised_batch_invariant_embeddings(clip, scenes):
    model, processor = clip
    model.train()
    images = scenes["image"]
    texts = scenes["caption"]
    image_embeds = encode_images(model, processor.image_processor, images, batch_size=5, show_progress=False)
    text_embeds = encode_texts(model, processor.tokenizer, texts, batch_size=5, show_progress=False)
    assert model.training  # eval mode only while encoding
    assert image_embeds.shape == (12, 16) and text_embeds.shape == (12, 16)
    assert image_embeds.dtype == text_embeds.dtype == torch.float32
    torch.testing.assert_close(image_embeds.norm(dim=-1), torch.ones(12))
    torch.testing.assert_close(text_embeds.norm(dim=-1), torch.ones(12))
    # Processors are accepted in place of their parts; batching and padding change nothing.
    torch.testing.assert_close(
        encode_images(model, processor, list(images), batch_size=64, show_progress=False), image_embeds,
        atol=1e-5, rtol=1e-5,
    )  # fmt: skip
    torch.testing.assert_close(
        encode_texts(model, processor, texts, batch_size=64, show_progress=False), text_embeds, atol=1e-5, rtol=1e-5
    )
    model.eval()
    with torch.no_grad():
        pixel_values = processor.image_processor(images=list(images[:3]), return_tensors="pt")["pixel_values"]
        direct = model.get_image_features(pixel_values=pixel_values).pooler_output
        tokens = processor.tokenizer(texts[:3], padding=True, return_tensors="pt")
        direct_text = model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
    torch.testing.assert_close(image_embeds[:3], torch.nn.functional.normalize(direct, dim=-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        text_embeds[:3], torch.nn.functional.normalize(direct_text.pooler_output, dim=-1), atol=1e-5, rtol=1e-5
    )


def test_zero_shot_classifier_is_the_renormalised_template_mean(clip):
    model, processor = clip
    names = ["red circle", "blue square", "green star"]
    templates = ["a {}.", "a drawing of a {}."]
    classifier = build_zero_shot_classifier(model, processor, names, templates, batch_size=4)
    assert classifier.shape == (3, 16)
    for row, name in zip(classifier, names):
        prompts = [template.format(name) for template in templates]
        per_template = encode_texts(model, processor.tokenizer, prompts, show_progress=False)
        expected = torch.nn.functional.normalize(per_template.mean(dim=0), dim=-1)
        torch.testing.assert_close(row, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="placeholder"):
        build_zero_shot_classifier(model, processor, names, ["a photo"])


def test_evaluate_dual_encoder_on_tiny_clip(clip, scenes):
    model, processor = clip
    templates = ZERO_SHOT_TEMPLATES[:2]
    metrics = evaluate_dual_encoder(model, processor, scenes, templates=templates, batch_size=5, show_progress=False)
    assert json.loads(json.dumps(metrics)) == metrics
    assert all(isinstance(value, float) for value in metrics.values())
    assert metrics["num_images"] == 12.0 and metrics["num_texts"] == 36.0 and metrics["num_classes"] == 35.0
    assert metrics["chance_t2i_r@1"] == approx(100 / 12)
    assert metrics["chance_i2t_r@1"] == approx(100 * 3 / 36)
    assert metrics["zero_shot_chance_top1"] == approx(100 / 35)
    assert metrics["zero_shot_chance_top5"] == approx(500 / 35)
    # The same numbers as the metric functions applied to the encoders' outputs.
    image_embeds = encode_images(model, processor, scenes["image"], show_progress=False)
    texts = [c for captions in scenes["captions"] for c in captions]
    text_embeds = encode_texts(model, processor, texts, show_progress=False)
    expected = retrieval_metrics(image_embeds @ text_embeds.T, np.repeat(np.arange(12), 3))
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-9), key
    classifier = build_zero_shot_classifier(model, processor, scene_class_names(), templates)
    accuracy = zero_shot_accuracy(image_embeds, classifier, scenes["label"])
    assert metrics["zero_shot_top1"] == accuracy["top1"] and metrics["zero_shot_top5"] == accuracy["top5"]

    single = evaluate_dual_encoder(model, processor, scenes.remove_columns(["captions", "label"]), show_progress=False)
    assert single["num_texts"] == 12.0 and "zero_shot_top1" not in single
    assert single["chance_i2t_r@1"] == approx(100 / 12)


# --- evaluate_dual_encoder wiring, with an oracle model ---------------------------------------

_PALETTE = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0)}
_NAMES = list(_PALETTE)


class _OracleProcessor:
    """Mean colour as "pixel values"; the index of the first colour word as the only token."""

    class _ImageProcessor:
        def __call__(self, images, return_tensors):
            means = [np.asarray(image).reshape(-1, 3).mean(0) for image in images]
            return {"pixel_values": torch.tensor(np.array(means))}

    class _Tokenizer:
        def __call__(self, texts, padding, truncation, max_length=None, return_tensors=None):
            words = [text.replace(".", " ").split() for text in texts]
            ids = [[next(i for i, name in enumerate(_NAMES) if name in text)] for text in words]
            return {"input_ids": torch.tensor(ids), "attention_mask": torch.ones(len(ids), 1, dtype=torch.long)}

    image_processor = _ImageProcessor()
    tokenizer = _Tokenizer()


class _OracleModel(torch.nn.Module):
    """Returns plain tensors: one-hot of the colour seen, or of the colour named."""

    def __init__(self):
        super().__init__()
        palette = torch.tensor(list(_PALETTE.values()), dtype=torch.float32)
        self.palette = torch.nn.Parameter(palette, requires_grad=False)

    def get_image_features(self, pixel_values):
        nearest = torch.cdist(pixel_values.float(), self.palette).argmin(dim=1)
        return torch.nn.functional.one_hot(nearest, len(_NAMES)).float() * 3.0

    def get_text_features(self, input_ids, attention_mask):
        return torch.nn.functional.one_hot(input_ids[:, 0], len(_NAMES)).float()


def _oracle_dataset(captions_per_image):
    return datasets.Dataset.from_dict(
        {
            "image": [Image.new("RGB", (8, 8), colour) for colour in _PALETTE.values()],
            "caption": [f"a {name} tile" for name in _NAMES],
            "captions": captions_per_image,
            "label": list(range(4)),
        },
        features=datasets.Features(
            {
                "image": datasets.Image(),
                "caption": datasets.Value("string"),
                "captions": datasets.List(datasets.Value("string")),
                "label": datasets.ClassLabel(names=_NAMES),
            }
        ),
    )


def test_evaluate_dual_encoder_oracle_is_perfect():
    captions = [[f"a {name} tile", f"the colour {name}"] for name in _NAMES]
    metrics = evaluate_dual_encoder(_OracleModel(), _OracleProcessor(), _oracle_dataset(captions), batch_size=3,
                                    ks=(1, 2), show_progress=False)  # fmt: skip
    assert metrics["i2t_r@1"] == metrics["t2i_r@1"] == 100.0
    assert metrics["i2t_mean_rank"] == metrics["t2i_mean_rank"] == 1.0
    assert metrics["zero_shot_top1"] == metrics["zero_shot_top5"] == 100.0
    assert metrics["num_texts"] == 8.0 and metrics["num_classes"] == 4.0
    assert metrics["chance_i2t_r@1"] == 25.0 and metrics["chance_t2i_r@2"] == 50.0


def test_evaluate_dual_encoder_maps_each_caption_to_its_image():
    # Image i also lists the caption of image i + 1: that caption is retrieved by the wrong image.
    captions = [[f"a {name} tile", f"a {_NAMES[(i + 1) % 4]} tile"] for i, name in enumerate(_NAMES)]
    metrics = evaluate_dual_encoder(_OracleModel(), _OracleProcessor(), _oracle_dataset(captions), ks=(1, 2, 4),
                                    class_names=["yellow", "blue", "green", "red"], show_progress=False)  # fmt: skip
    # Text->image: right captions rank 1; misplaced ones score 1 on another image, 0 on their own
    # and tie with the other two images at 0, so they rank 4.
    assert metrics["t2i_r@1"] == 50.0 and metrics["t2i_r@2"] == 50.0 and metrics["t2i_r@4"] == 100.0
    assert metrics["t2i_mean_rank"] == 2.5
    # Image->text: the right caption ties with a misplaced copy of itself, so every image ranks 2.
    assert metrics["i2t_r@1"] == 0.0 and metrics["i2t_r@2"] == 100.0
    assert metrics["i2t_mean_rank"] == 2.0
    # class_names given explicitly replace the feature's names: label i now means reversed colour.
    assert metrics["zero_shot_top1"] == 0.0


def test_evaluate_dual_encoder_requires_columns():
    ds = datasets.Dataset.from_dict({"image": [Image.new("RGB", (8, 8))], "text": ["a red tile"]})
    with pytest.raises(ValueError, match="needs a 'caption' column, found \\['image', 'text'\\]"):
        evaluate_dual_encoder(_OracleModel(), _OracleProcessor(), ds, show_progress=False)


# --- VQA --------------------------------------------------------------------------------------


def test_normalize_vqa_answer():
    cases = {
        "Two": "2",
        "the Red circle.": "red circle",
        "A dog": "dog",
        "black-and-white": "black and white",
        "yes!": "yes",
        "2.5": "2.5",
        "1,000": "1000",
        "dont know": "don't know",
        "  None\t": "0",
        "ten apples": "10 apples",
        "fire hydrant ?": "fire hydrant",
    }
    for text, expected in cases.items():
        assert normalize_vqa_answer(text) == expected, text
    with pytest.raises(TypeError, match="answer has type int"):
        normalize_vqa_answer(3)


def test_vqa_score_leave_one_out_values():
    # 10 annotators, n of them agreeing with the prediction: mean over the 10 subsets of 9 of min(matches / 3, 1).
    # n = 2: the 2 subsets leaving out a match see 1 match (1/3), the 8 others see 2 (2/3): (2/3 + 16/3) / 10 = 0.6
    expected = {0: 0.0, 1: 0.3, 2: 0.6, 3: 0.9, 4: 1.0, 10: 1.0}
    for matches, score in expected.items():
        answers = ["cat"] * matches + ["dog"] * (10 - matches)
        assert vqa_score("cat", answers) == pytest.approx(score, abs=1e-12), matches
    assert vqa_score("Two", ["2", "two", "2 ", "3", "3", "3", "3", "3", "3", "3"]) == pytest.approx(0.9)
    assert vqa_score("2", ["two"] * 2 + ["3"] * 8, normalize=False) == 0.0
    # other numbers of answers: the same leave-one-out. 3 answers, 2 matches: (2 * 1/3 + 1 * 2/3) / 3 = 4/9
    assert vqa_score("yes", ["yes", "yes", "no"]) == pytest.approx(4 / 9)
    assert vqa_score("yes", ["yes"]) == 1.0 and vqa_score("no", ["yes"]) == 0.0
    with pytest.raises(ValueError, match="non-empty list"):
        vqa_score("yes", [])
    with pytest.raises(ValueError, match="non-empty list"):
        vqa_score("yes", "yes")


def test_vqa_accuracy():
    answers = [["cat"] * 10, ["cat"] * 2 + ["dog"] * 8, ["dog"] * 10]
    assert vqa_accuracy(["cat", "cat", "cat"], answers) == pytest.approx(100 * (1 + 0.6 + 0) / 3)
    with pytest.raises(ValueError, match="predictions has 2 items but answers_lists has 3"):
        vqa_accuracy(["cat", "dog"], answers)
    with pytest.raises(ValueError, match="predictions is empty"):
        vqa_accuracy([], [])


_VQA_PALETTE = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0)}


class _ColourAnswerer(torch.nn.Module):
    """Answers the colour of the image (mean of the unnormalised pixels), or the region index set in visual_feats."""

    def __init__(self, num_labels=4):
        super().__init__()
        self.palette = torch.nn.Parameter(torch.tensor(list(_VQA_PALETTE.values())) / 255.0, requires_grad=False)
        self.num_labels = num_labels
        self.calls = []

    def forward(self, input_ids, attention_mask, pixel_values=None, visual_feats=None, visual_pos=None,
                visual_attention_mask=None):  # fmt: skip
        self.calls.append(input_ids.shape[0])
        if pixel_values is not None:
            means = pixel_values.mean(dim=(2, 3))
            answer = torch.cdist(means, self.palette).argmin(dim=1)
        else:
            answer = visual_feats[:, 0].argmax(dim=-1)
        return SimpleNamespace(logits=torch.nn.functional.one_hot(answer, self.num_labels).float())


def _vqa_rows():
    return {
        "question": ["what colour is it?"] * 4,
        "answers": [["red"] * 10, ["blue"] * 2 + ["green"] * 8, ["Green."] * 10, ["red"] * 10],
        "question_type": ["colour", "colour", "other", "other"],
    }


def test_evaluate_vqa_scores_the_argmax_answers():
    colours = ["red", "blue", "green", "yellow"]
    dataset = datasets.Dataset.from_dict(
        {"image": [Image.new("RGB", (8, 8), _VQA_PALETTE[c]) for c in colours], **_vqa_rows()},
        features=datasets.Features({
            "image": datasets.Image(), "question": datasets.Value("string"),
            "answers": datasets.List(datasets.Value("string")), "question_type": datasets.Value("string"),
        }),
    )  # fmt: skip
    tokenizer = VLPTokenizer.train_from_iterator(["what colour is it?"] * 4, vocab_size=30)
    image_processor = VLPImageProcessor(size={"height": 4, "width": 4}, do_center_crop=False, do_normalize=False)
    processor = VLPProcessor(image_processor, tokenizer)
    model = _ColourAnswerer()
    id2label = {str(index): name for index, name in enumerate(_VQA_PALETTE)}  # as in a saved config
    metrics = evaluate_vqa(model, processor, dataset, id2label, batch_size=3, show_progress=False)
    # red: 10/10 -> 1, blue: 2/10 -> 0.6, green: "Green." normalised -> 1, yellow: 0/10 -> 0
    assert metrics["vqa_accuracy"] == pytest.approx(100 * 2.6 / 4)
    assert metrics["vqa_accuracy_colour"] == pytest.approx(80.0)
    assert metrics["vqa_accuracy_other"] == pytest.approx(50.0)
    assert metrics["num_questions"] == 4.0 and model.calls == [3, 1] and model.training
    without_types = evaluate_vqa(model, processor, dataset.remove_columns("question_type"), list(_VQA_PALETTE),
                                 show_progress=False)  # fmt: skip
    assert set(without_types) == {"vqa_accuracy", "num_questions"}
    with pytest.raises(ValueError, match="model logits have 4 classes but id2label has 3"):
        evaluate_vqa(model, processor, dataset, ["red", "green", "blue"], show_progress=False)
    with pytest.raises(ValueError, match="needs a 'answers' column"):
        evaluate_vqa(model, processor, dataset.remove_columns("answers"), id2label, show_progress=False)


def test_evaluate_vqa_with_region_features():
    feats = [np.eye(4, dtype=np.float32)[[index, 0]] for index in (0, 2, 1, 3)]  # region 0 names the answer index
    boxes = [np.array([[0, 0, 1, 1], [0, 0, 0.5, 0.5]], dtype=np.float32)] * 4
    dataset = datasets.Dataset.from_dict(
        {"visual_feats": [f.tolist() for f in feats], "visual_pos": [b.tolist() for b in boxes], **_vqa_rows()}
    )
    tokenizer = VLPTokenizer.train_from_iterator(["what colour is it?"] * 4, vocab_size=30)
    metrics = evaluate_vqa(_ColourAnswerer(), VLPProcessor(None, tokenizer), dataset, list(_VQA_PALETTE),
                           visual_input="regions", show_progress=False)  # fmt: skip
    assert metrics["vqa_accuracy"] == pytest.approx(100 * 2.6 / 4)


# ---- image-text matching models (every pair through the model) ---------------------------------------------------


class _MatchingModel(torch.nn.Module):
    """Scores a pair by whether the caption's image index (its second token) is the image's (its first pixel),
    with a bias towards image 0 on the wrong pairs so that the ranking, not only the sign, is tested."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.pairs = 0

    def forward(self, pixel_values, input_ids, attention_mask=None, return_dict=True, **kwargs):
        from transformers.utils import ModelOutput

        image = pixel_values[:, 0, 0, 0].round().long()
        text_image = input_ids[:, 1]
        match = torch.where(image == text_image, 5.0, -5.0 + (image == 0).float())
        self.pairs += len(image)
        return ModelOutput(itm_logits=torch.stack([torch.zeros_like(match), match], dim=1))


class _Processor:
    class tokenizer:  # noqa: N801  (a stand-in for a tokenizer object)
        model_max_length = 8
        mask_token_id = None

        def __call__(self, texts, **kwargs):
            ids = [[1, int(text.split()[-1]), 2] for text in texts]
            return {"input_ids": torch.tensor(ids), "attention_mask": torch.ones(len(ids), 3, dtype=torch.long)}

    tokenizer = tokenizer()

    def __call__(self, images=None, return_tensors=None, **kwargs):
        pixel_values = torch.zeros(len(images), 3, 4, 4)
        pixel_values[:, 0, 0, 0] = torch.tensor([float(image) for image in images])
        return {"pixel_values": pixel_values}


def test_image_text_matching_scores_every_pair_and_ranks_by_them():
    import datasets

    from modeling_vlp.evaluation.matching import evaluate_image_text_matching

    # 5 images with two captions each ("image i"); the "image" column carries the index the stub processor encodes.
    dataset = datasets.Dataset.from_dict({
        "image": [str(i) for i in range(5)],
        "caption": [f"image {i}" for i in range(5)],
        "captions": [[f"image {i}", f"again {i}"] for i in range(5)],
    })  # fmt: skip
    model = _MatchingModel()
    metrics = evaluate_image_text_matching(model, _Processor(), dataset, num_images=4, batch_size=3, show_progress=False)
    assert model.pairs == 4 * 8  # the first 4 images with their 8 captions, every pair once
    assert metrics["num_images"] == 4 and metrics["num_texts"] == 8
    assert metrics["i2t_r@1"] == 100.0 and metrics["t2i_r@1"] == 100.0 and metrics["itm_accuracy"] == 100.0
    # 2 of 8 captions per image, 1 of 4 images per caption.
    assert metrics["chance_i2t_r@1"] == pytest.approx(25.0) and metrics["chance_t2i_r@1"] == pytest.approx(25.0)
    assert "mlm_accuracy" not in metrics  # no MLM head, no mask token


def test_retrieval_metrics_can_rank_each_direction_with_its_own_scores():
    from modeling_vlp.evaluation.ranking import retrieval_metrics

    similarity = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # both directions right ...
    wrong_t2i = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # ... unless the text side is re-scored wrongly
    metrics = retrieval_metrics(similarity, [0, 1], ks=(1,), text_to_image_scores=wrong_t2i)
    assert metrics["i2t_r@1"] == 100.0 and metrics["t2i_r@1"] == 0.0
    assert metrics["rsum"] == 100.0
    with pytest.raises(ValueError, match="text_to_image_scores must have shape"):
        retrieval_metrics(similarity, [0, 1], text_to_image_scores=torch.zeros(3, 2))
