"""Evaluation of the models that read an image and a text together: ITM scores of every pair for single-stream
models (`image_text_match_scores`, `evaluate_image_text_matching`, with MLM accuracy) and ALBEF-style re-ranked
retrieval for fusion models (`evaluate_fusion_retrieval`, through `rerank.rerank_retrieval`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from ..data.local import read_region_column
from ..losses import itm_log_odds
from ..training.masking import mask_tokens_for_mlm
from .embeddings import _eval_mode, _model_device, _text_max_length, retrieval_texts
from .ranking import retrieval_chance_levels, retrieval_metrics
from .rerank import rerank_retrieval

# --------------------------------------------------------------------------------------------------------------
# Image-text matching models (single-stream): every pair goes through the model
# --------------------------------------------------------------------------------------------------------------

VISUAL_INPUT_NAMES = ("pixel_values", "pixel_mask", "visual_feats", "visual_pos", "visual_attention_mask")


def _match_scores(outputs) -> torch.Tensor:
    """Log-odds of a match from an ITM head's two logits, or a retrieval model's single score."""
    itm_logits = outputs.get("itm_logits") if hasattr(outputs, "get") else None
    if itm_logits is not None:
        return itm_log_odds(itm_logits).float()
    return outputs.logits.reshape(-1).float()


@torch.no_grad()
def image_text_match_scores(
    model,
    visual_inputs: dict[str, torch.Tensor],
    text_inputs: dict[str, torch.Tensor],
    batch_size: int = 64,
    show_progress: bool = True,
) -> torch.Tensor:
    """(num_images, num_texts) ITM scores of every image with every text, for models that read the pair jointly.

    `visual_inputs` holds per-image tensors (`pixel_values` (+ `pixel_mask`) or `visual_feats`, `visual_pos`,
    `visual_attention_mask`), `text_inputs` per-text ones (`input_ids`, `attention_mask`, ...). Each image is paired
    with `batch_size` texts per forward; scores are the ITM log-odds (or a retrieval model's `logits`)."""
    visual_inputs = {key: value for key, value in visual_inputs.items() if key in VISUAL_INPUT_NAMES and value is not None}
    if not visual_inputs:
        raise ValueError(f"visual_inputs needs one of {VISUAL_INPUT_NAMES}; got {sorted(visual_inputs)}.")
    if "input_ids" not in text_inputs:
        raise ValueError(f"text_inputs needs `input_ids`; got {sorted(text_inputs)}.")
    device = _model_device(model)
    num_images = next(iter(visual_inputs.values())).shape[0]
    num_texts = text_inputs["input_ids"].shape[0]
    scores = torch.empty(num_images, num_texts)
    with _eval_mode(model):
        for image in tqdm(range(num_images), desc="ITM scores", disable=not show_progress):
            for start in range(0, num_texts, batch_size):
                texts = {key: value[start : start + batch_size].to(device) for key, value in text_inputs.items()}
                count = texts["input_ids"].shape[0]
                visual = {
                    key: value[image : image + 1].to(device).expand(count, *value.shape[1:])
                    for key, value in visual_inputs.items()
                }
                scores[image, start : start + count] = _match_scores(model(**visual, **texts, return_dict=True)).cpu()
    return scores


def _visual_batch(processor, eval_dataset) -> dict[str, torch.Tensor]:

    columns = eval_dataset.column_names
    if "visual_feats" in columns or "visual_feats_file" in columns:
        # Region features, held in the rows or in the .npy files they name.
        rows = eval_dataset.select_columns([c for c in columns if c.startswith(("visual_feats", "visual_pos"))])
        feats = [read_region_column(row, "visual_feats") for row in rows]
        boxes = [read_region_column(row, "visual_pos") for row in rows]
        return dict(processor(visual_feats=feats, visual_pos=boxes, return_tensors="pt"))
    if "image" not in columns:
        raise ValueError(f"eval_dataset needs an 'image' column or 'visual_feats'/'visual_pos' columns; it has {columns}.")
    return dict(processor(images=list(eval_dataset["image"]), return_tensors="pt"))


def _split_inputs(model, processor, eval_dataset) -> tuple[list[str], list[int], dict, dict]:
    """(texts, text_to_image, tokenized texts, visual inputs) of an image-caption split, every caption once."""
    if len(eval_dataset) == 0:
        raise ValueError("eval_dataset is empty.")
    if "caption" not in eval_dataset.column_names:
        raise ValueError(f"eval_dataset needs a 'caption' column; it has {eval_dataset.column_names}.")
    tokenizer = processor.tokenizer
    texts, text_to_image = retrieval_texts(eval_dataset)
    text_inputs = dict(
        tokenizer(texts, padding=True, truncation=True, max_length=_text_max_length(model, tokenizer), return_tensors="pt")
    )
    return texts, text_to_image, text_inputs, _visual_batch(processor, eval_dataset)


def image_text_match_matrix(model, processor, eval_dataset, batch_size: int = 64, show_progress: bool = True):
    """(scores `(num_images, num_texts)`, texts, text_to_image, visual inputs) of a single-stream model on an
    image-caption split: the ITM score of every image with every caption (`image_text_match_scores`)."""
    texts, text_to_image, text_inputs, visual_inputs = _split_inputs(model, processor, eval_dataset)
    scores = image_text_match_scores(model, visual_inputs, text_inputs, batch_size, show_progress)
    return scores, texts, text_to_image, visual_inputs


def evaluate_image_text_matching(
    model,
    processor,
    eval_dataset,
    num_images: int = 100,
    batch_size: int = 64,
    ks: Sequence[int] = (1, 5, 10),
    mlm_probability: float = 0.15,
    seed: int = 0,
    show_progress: bool = True,
) -> dict[str, float]:
    """Retrieval, ITM and MLM metrics of a single-stream (unified) model on an image-text split.

    Retrieval scores every pair of the first `num_images` images with all their captions through the ITM head
    (num_images x num_texts forward rows, hence the subset), under the multi-caption protocol of
    `retrieval_metrics`. `itm_accuracy` is the share of pairs classified right (match when log-odds > 0) among the
    positive pairs and as many negatives (each caption with the next image's). `mlm_accuracy` is the share of masked
    caption tokens (seeded, BERT 80/10/10) predicted right when the model has an MLM head.
    """

    subset = eval_dataset.select(range(min(num_images, len(eval_dataset))))
    scores, texts, text_to_image, visual_inputs = image_text_match_matrix(model, processor, subset, batch_size, show_progress)
    tokenizer = processor.tokenizer
    metrics = retrieval_metrics(scores, text_to_image, ks)
    metrics.update(retrieval_chance_levels(text_to_image, len(subset), ks))
    metrics["num_images"] = float(len(subset))
    metrics["num_texts"] = float(len(texts))

    image_index = torch.as_tensor(text_to_image)
    positives = scores[image_index, torch.arange(len(texts))]
    negatives = scores[(image_index + 1) % len(subset), torch.arange(len(texts))] if len(subset) > 1 else None
    correct = (positives > 0).float().sum() + (0 if negatives is None else (negatives <= 0).float().sum())
    metrics["itm_accuracy"] = float(100 * correct / (len(texts) * (1 if negatives is None else 2)))

    mask_token_id = getattr(tokenizer, "mask_token_id", None)
    if mlm_probability > 0 and mask_token_id is not None and hasattr(model, "mlm_head"):
        generator = torch.Generator().manual_seed(seed)
        captions = dict(
            tokenizer(list(subset["caption"]), padding=True, truncation=True,
                      max_length=_text_max_length(model, tokenizer), return_tensors="pt", return_special_tokens_mask=True)
        )  # fmt: skip
        special = captions.pop("special_tokens_mask").bool()
        captions["input_ids"], labels = mask_tokens_for_mlm(
            captions["input_ids"], special, mask_token_id, len(tokenizer), mlm_probability, generator,
            captions["attention_mask"],
        )  # fmt: skip
        device, hits, total = _model_device(model), 0, 0
        with torch.no_grad(), _eval_mode(model):
            for start in range(0, len(subset), batch_size):
                batch = {key: value[start : start + batch_size].to(device) for key, value in captions.items()}
                batch.update({key: value[start : start + batch_size].to(device) for key, value in visual_inputs.items()})
                logits = model(**batch, return_dict=True).mlm_logits
                chunk = labels[start : start + batch_size].to(device)
                masked = chunk != -100
                hits += int((logits.argmax(-1)[masked] == chunk[masked]).sum())
                total += int(masked.sum())
        metrics["mlm_accuracy"] = float(100 * hits / max(total, 1))
    return metrics


def fusion_rerank_scores(
    model, processor, eval_dataset, k: int = 16, batch_size: int = 64, show_progress: bool = True
):
    """(`VLPRerankedRetrieval`, texts, text_to_image) of a fusion model on an image-caption split: ITC similarity of
    every pair, ITM re-scoring of each query's top `k` (capped at the numbers of images and texts) in both
    directions (`rerank.rerank_retrieval`)."""
    texts, text_to_image, text_inputs, image_inputs = _split_inputs(model, processor, eval_dataset)
    k = min(k, len(eval_dataset), len(texts))
    with _eval_mode(model):
        result = rerank_retrieval(
            model, image_inputs, text_inputs, k=k, batch_size=batch_size,
            image_ids=torch.as_tensor(text_to_image), show_progress=show_progress,
        )  # fmt: skip
    return result, texts, text_to_image


def evaluate_fusion_retrieval(
    model,
    processor,
    eval_dataset,
    k: int = 16,
    batch_size: int = 64,
    ks: Sequence[int] = (1, 5, 10),
    show_progress: bool = True,
) -> dict[str, float]:
    """Retrieval metrics of a fusion model the ALBEF way: ITC similarity for every pair, then the ITM head re-scores
    the top `k` candidates of each query (`rerank.rerank_retrieval`). Reports the re-ranked metrics
    (`i2t_r@1`, ...), the ITC-only ones (`itc_i2t_r@1`, ...), chance levels and the number of ITM forward pairs."""
    result, texts, text_to_image = fusion_rerank_scores(model, processor, eval_dataset, k, batch_size, show_progress)
    k = min(k, len(eval_dataset), len(texts))
    # Each direction re-scores its own shortlist: text->image ranks come from `scores_t2i`, not `scores_i2t.T`.
    metrics = retrieval_metrics(result.scores_i2t, text_to_image, ks, text_to_image_scores=result.scores_t2i)
    itc = retrieval_metrics(result.similarity, text_to_image, ks)
    metrics.update({f"itc_{name}": value for name, value in itc.items()})
    metrics.update(retrieval_chance_levels(text_to_image, len(eval_dataset), ks))
    metrics.update(num_images=float(len(eval_dataset)), num_texts=float(len(texts)), rerank_k=float(k),
                   num_itm_pairs=float(result.num_itm_pairs))  # fmt: skip
    return metrics




# ---------------------------------------------------------------------------------------------
# Captioning
# ---------------------------------------------------------------------------------------------

