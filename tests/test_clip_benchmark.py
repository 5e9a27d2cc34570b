"""CLIP_benchmark's own retrieval evaluation on our model, through our registry loader, against `vlp evaluate`'s
dual-encoder retrieval (`evaluate_dual_encoder`): the same tiny model and data give the same recalls."""

import sys

import pytest
import torch
from transformers import AutoProcessor

pytest.importorskip("clip_benchmark")

import clip_benchmark.models as registry  # noqa: E402
from clip_benchmark.datasets.builder import image_captions_collate_fn  # noqa: E402
from clip_benchmark.metrics import zeroshot_retrieval  # noqa: E402

from modeling_vlp.data.scenes import make_scenes_dataset  # noqa: E402
from modeling_vlp.evaluation import evaluate_dual_encoder  # noqa: E402
from modeling_vlp.evaluation import clip_benchmark as ours  # noqa: E402

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from vlp_testing import perturb, save_tiny_checkpoint  # noqa: E402

KS = (1, 2, 5)


class CaptionedImages(torch.utils.data.Dataset):
    """(transformed image, its list of captions): what CLIP_benchmark's retrieval datasets yield."""

    def __init__(self, dataset, transform):
        self.dataset, self.transform = dataset, transform

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        row = self.dataset[index]
        return self.transform(row["image"]), list(row["captions"])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dual")
    model = save_tiny_checkpoint(folder, "dual")
    perturb(model).save_pretrained(folder)  # spread the random embeddings: recalls away from 0 and 100
    return str(folder)


def test_registration_and_loader(checkpoint):
    ours.register()
    ours.register()  # idempotent
    assert registry.MODEL_TYPES.count("modeling_vlp") == 1 and registry.TYPE2FUNC["modeling_vlp"] is ours.load_modeling_vlp
    model, transform, tokenizer = registry.load_clip("modeling_vlp", "ignored", checkpoint, cache_dir=None, device="cpu")
    tokens = tokenizer(["a red circle", "a small blue square above a large green triangle"]).to("cpu")
    assert tokens["input_ids"].shape == tokens["attention_mask"].shape and not tokens["attention_mask"].all()
    assert model.encode_text(tokens).shape[0] == 2


def test_retrieval_recalls_agree_with_vlp_evaluate(checkpoint):
    split = make_scenes_dataset(4, 24, image_size=32, seed=3)["validation"]
    model, transform, tokenizer = ours.load_modeling_vlp("ignored", checkpoint)
    dataloader = torch.utils.data.DataLoader(
        CaptionedImages(split, transform), batch_size=7, collate_fn=image_captions_collate_fn
    )
    theirs = zeroshot_retrieval.evaluate(model, dataloader, tokenizer, "cpu", amp=False, recall_k_list=list(KS))

    metrics = evaluate_dual_encoder(
        model.model, AutoProcessor.from_pretrained(checkpoint), split, batch_size=5, ks=KS, show_progress=False
    )
    # No tie decided a rank here, so the two tie conventions cannot differ (README: tie handling).
    assert metrics["i2t_tied_queries"] == 0 and metrics["t2i_tied_queries"] == 0
    translated = ours.to_clip_benchmark_metrics(metrics, KS)
    print(f"CLIP_benchmark {theirs}\nours (translated) {translated}")
    assert set(translated) == set(theirs)
    num_texts, num_images = int(metrics["num_texts"]), int(metrics["num_images"])
    for k in KS:
        # the same hit counts: image_retrieval (a text query) over texts, text_retrieval over images
        assert round(theirs[f"image_retrieval_recall@{k}"] * num_texts) == round(metrics[f"t2i_r@{k}"] * num_texts / 100)
        assert round(theirs[f"text_retrieval_recall@{k}"] * num_images) == round(metrics[f"i2t_r@{k}"] * num_images / 100)
        assert abs(theirs[f"image_retrieval_recall@{k}"] - translated[f"image_retrieval_recall@{k}"]) < 1e-6
        assert abs(theirs[f"text_retrieval_recall@{k}"] - translated[f"text_retrieval_recall@{k}"]) < 1e-6
    # not trivially 0 or 1 everywhere
    assert 0 < theirs["image_retrieval_recall@1"] < 1 or 0 < theirs["text_retrieval_recall@1"] < 1
