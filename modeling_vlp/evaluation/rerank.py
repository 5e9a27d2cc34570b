"""Shortlist and re-score: a cheap score ranks every (image, text) pair, an expensive pair scorer (an ITM head)
re-scores each query's top k, in both directions, each pair once.

`shortlist_and_rescore` is the routine; `rerank_retrieval` is ALBEF's use of it for fusion models (ITC shortlist,
ITM log-odds + cosine), which `evaluate_fusion_retrieval` and the retrieval pipeline call; the pipeline also
shortlists unified models with a dual encoder through `shortlist_and_rescore`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..losses import itm_log_odds
from .ranking import _ranks, _recall

IMAGE_INPUT_NAMES = ("pixel_values", "pixel_mask", "visual_feats", "visual_pos", "visual_attention_mask")
TEXT_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
RECALL_KS = (1, 5, 10)


@dataclass
class VLPRerankedRetrieval:
    r"""What `rerank_retrieval` returns.

    scores_i2t (`(num_images, num_texts)`) / scores_t2i (`(num_texts, num_images)`): the final ranking scores. For
        each query its top k candidates by ITC score `itm_log_odds + cosine_similarity` (ALBEF adds the two the
        same way); the other candidates keep their ITC order, shifted by one constant below every re-scored one
        (the matrices stay finite, so `evaluation.retrieval_metrics` can read them).
    similarity (`(num_images, num_texts)`): ITC cosine similarities of all pairs.
    topk_i2t (`(num_images, k)`) / topk_t2i (`(num_texts, k)`): the re-scored candidates of each query.
    num_itm_pairs: pairs scored by the ITM head (the two directions' top k, each pair once).
    metrics: R@1/5/10 (%) of the re-ranked (`i2t_r@1`, ...) and ITC-only (`itc_i2t_r@1`, ...) rankings, with the
        conventions of `evaluation.retrieval_metrics` (ties count against; an image's best caption counts).
    """

    scores_i2t: torch.Tensor
    scores_t2i: torch.Tensor
    similarity: torch.Tensor
    topk_i2t: torch.Tensor
    topk_t2i: torch.Tensor
    num_itm_pairs: int
    metrics: dict[str, float]


@dataclass
class Shortlist:
    """What `shortlist_and_rescore` returns: each query's candidates and their new scores, in shortlist order."""

    topk_i2t: torch.Tensor  # (num_images, k_i2t) text indices
    scores_i2t: torch.Tensor  # (num_images, k_i2t)
    topk_t2i: torch.Tensor  # (num_texts, k_t2i) image indices
    scores_t2i: torch.Tensor  # (num_texts, k_t2i)
    num_pairs: int  # pairs given to the scorer


def _top(similarity: torch.Tensor, k: int) -> torch.Tensor:
    """Each row's top k columns; every column in order when k covers them all (ties keep the column order)."""
    if k >= similarity.shape[1]:
        return torch.arange(similarity.shape[1], device=similarity.device).expand(similarity.shape[0], -1)
    return similarity.topk(k, dim=1).indices


def shortlist_and_rescore(
    similarity: torch.Tensor,
    k_i2t: int,
    k_t2i: int,
    score_pairs: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batch_size: int,
    show_progress: bool = False,
) -> Shortlist:
    """Shortlist each image's `k_i2t` best texts and each text's `k_t2i` best images by `similarity` `(num_images,
    num_texts)`, and re-score them with `score_pairs(image_indices, text_indices) -> (n,) scores`, called on batches
    of `batch_size` pairs. A pair in both directions' shortlists is scored once. `k` covering a side scores every
    pair of that side, in index order."""
    num_images, num_texts = similarity.shape
    device = similarity.device
    topk_i2t = _top(similarity, k_i2t)  # (num_images, k) texts
    topk_t2i = _top(similarity.t(), k_t2i)  # (num_texts, k) images
    # Pairs as image * num_texts + text: the two directions' candidates, each pair scored once.
    keys_i2t = torch.arange(num_images, device=device)[:, None] * num_texts + topk_i2t
    keys_t2i = topk_t2i * num_texts + torch.arange(num_texts, device=device)[:, None]
    pairs = torch.unique(torch.cat([keys_i2t.flatten(), keys_t2i.flatten()]))  # sorted
    scores = torch.empty(pairs.shape[0], device=device)
    for start in tqdm(range(0, pairs.shape[0], batch_size), desc="pairs", disable=not show_progress):
        chunk = pairs[start : start + batch_size]
        scores[start : start + batch_size] = score_pairs(chunk // num_texts, chunk % num_texts).float()
    return Shortlist(
        topk_i2t=topk_i2t,
        scores_i2t=scores[torch.searchsorted(pairs, keys_i2t)],
        topk_t2i=topk_t2i,
        scores_t2i=scores[torch.searchsorted(pairs, keys_t2i)],
        num_pairs=int(pairs.shape[0]),
    )


def _batch_rows(inputs: dict, argument: str, names: tuple[str, ...]) -> int:
    if not isinstance(inputs, dict) or not inputs:
        raise ValueError(
            f"`{argument}` must be a non-empty dict of tensors (keys among {names}), got {type(inputs).__name__}."
        )
    unknown = sorted(set(inputs) - set(names))
    if unknown:
        raise ValueError(f"`{argument}` has unknown keys {unknown}; expected keys among {names}.")
    sizes = {name: value.shape[0] for name, value in inputs.items() if value is not None}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"The tensors of `{argument}` must have the same batch size, got {sizes}.")
    return next(iter(sizes.values()))


def _text_to_image(image_ids, num_images: int, num_texts: int, device) -> torch.Tensor:
    if image_ids is None:
        if num_images != num_texts:
            raise ValueError(
                f"Got {num_images} images and {num_texts} texts: when several captions share an image, pass "
                "`image_ids` (num_texts,), the index among the images of the image each text describes."
            )
        return torch.arange(num_texts, device=device)
    image_ids = torch.as_tensor(image_ids, device=device)
    if image_ids.shape != (num_texts,) or image_ids.is_floating_point():
        raise ValueError(
            f"`image_ids` must hold one integer image index per text, shape ({num_texts},), got shape "
            f"{tuple(image_ids.shape)} ({image_ids.dtype})."
        )
    if num_texts and (int(image_ids.min()) < 0 or int(image_ids.max()) >= num_images):
        raise ValueError(
            f"`image_ids` must index the {num_images} images, got values in [{int(image_ids.min())}, "
            f"{int(image_ids.max())}]."
        )
    return image_ids.long()


@dataclass
class FusionCandidates:
    """Unimodal states of every image and text, encoded once, for the pairs a fusion model will fuse."""

    image_states: torch.Tensor
    image_masks: torch.Tensor
    text_states: torch.Tensor
    text_masks: torch.Tensor
    similarity: torch.Tensor | None  # (num_images, num_texts) ITC cosine, None without an ITC head

    def itm_log_odds(self, model: nn.Module, images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        logits = model.itm_logits_for_pairs(
            self.text_states[texts], self.text_masks[texts], self.image_states[images], self.image_masks[images]
        )
        return itm_log_odds(logits).float()


def encode_fusion_candidates(
    model: nn.Module, image_inputs: dict, text_inputs: dict, batch_size: int, show_progress: bool = False
) -> FusionCandidates:
    """Encodes each image and text once (batches of `batch_size`), with their ITC similarity when the model has an
    ITC head."""
    vlp = model.vlp
    device = vlp.device
    has_itc = vlp.text_projection is not None

    def batches(inputs, description):
        present = {name: value for name, value in inputs.items() if value is not None}
        count = next(iter(present.values())).shape[0]
        for start in tqdm(range(0, count, batch_size), desc=description, disable=not show_progress):
            yield {name: value[start : start + batch_size].to(device) for name, value in present.items()}

    image_states, image_masks, image_embeds = [], [], []
    for chunk in batches(image_inputs, "images"):
        image = vlp.encode_image(**chunk)
        image_states.append(image.last_hidden_state)
        image_masks.append(image.attention_mask)
        if has_itc:
            image_embeds.append(vlp.project_image(image.last_hidden_state, image.attention_mask))
    text_states, text_masks, text_embeds = [], [], []
    for chunk in batches(text_inputs, "texts"):
        states = vlp.encode_text(**chunk).last_hidden_state
        text_states.append(states)
        text_masks.append(chunk.get("attention_mask", torch.ones(states.shape[:2], dtype=torch.long, device=device)))
        if has_itc:
            text_embeds.append(vlp.project_text(states, chunk.get("attention_mask")))
    similarity = (torch.cat(image_embeds) @ torch.cat(text_embeds).t()).float() if has_itc else None
    return FusionCandidates(
        torch.cat(image_states), torch.cat(image_masks), torch.cat(text_states), torch.cat(text_masks), similarity
    )


@torch.no_grad()
def rerank_retrieval(
    model: nn.Module,
    image_inputs: dict[str, torch.Tensor],
    text_inputs: dict[str, torch.Tensor],
    k: int = 16,
    batch_size: int = 64,
    image_ids: torch.Tensor | None = None,
    show_progress: bool = False,
) -> VLPRerankedRetrieval:
    """Rank every text for every image and every image for every text, the ALBEF way.

    Every image and text is encoded once (in batches of `batch_size`); the ITC cosine similarity ranks all pairs;
    then for each query, in both directions, the ITM head re-scores its top `k` candidates: final score = ITM
    log-odds + cosine similarity. A pair in both directions' top k is fused once. Fusion runs in batches of
    `batch_size` pairs, so the number of candidates is bounded by memory for the unimodal states only.

    Args:
        model: a fusion model with an ITM head (`VLPFusionForImageTextRetrieval`, `VLPFusionForPreTraining`).
        image_inputs: `pixel_values` (+ `pixel_mask`) or `visual_feats`, `visual_pos` (+ `visual_attention_mask`)
            of the `num_images` images.
        text_inputs: `input_ids` (+ `attention_mask`, `token_type_ids`) of the `num_texts` texts.
        k: candidates re-scored per query; at most the number of images and of texts.
        image_ids: `(num_texts,)` index of the image each text describes; required when the numbers of images and
            texts differ (several captions per image), else text i describes image i. Used for `metrics`.
    """
    if not hasattr(model, "vlp") or not hasattr(model, "itm_head"):
        raise ValueError(f"`model` must be a fusion model with an ITM head, got {type(model).__name__}.")
    model.vlp._require_itc_head()
    num_images = _batch_rows(image_inputs, "image_inputs", IMAGE_INPUT_NAMES)
    num_texts = _batch_rows(text_inputs, "text_inputs", TEXT_INPUT_NAMES)
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"`k` must be a positive int, got {k!r}.")
    if k > min(num_images, num_texts):
        side, count = ("texts", num_texts) if num_texts < num_images else ("images", num_images)
        raise ValueError(f"`k` ({k}) is larger than the number of candidate {side} ({count}).")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}.")
    device = model.vlp.device
    text_to_image = _text_to_image(image_ids, num_images, num_texts, device)

    candidates = encode_fusion_candidates(model, image_inputs, text_inputs, batch_size, show_progress)
    similarity = candidates.similarity
    shortlist = shortlist_and_rescore(
        similarity, k, k, lambda images, texts: candidates.itm_log_odds(model, images, texts), batch_size, show_progress
    )
    topk_i2t, topk_t2i = shortlist.topk_i2t, shortlist.topk_t2i
    rescored_i2t = shortlist.scores_i2t + similarity.gather(1, topk_i2t)
    rescored_t2i = shortlist.scores_t2i + similarity.t().gather(1, topk_t2i)
    # Candidates outside the top k keep their ITC order, all below the lowest re-scored candidate.
    lowest = torch.minimum(rescored_i2t.min(), rescored_t2i.min())
    below = similarity - (similarity.max() - lowest + 1.0)
    scores_i2t = below.scatter(1, topk_i2t, rescored_i2t)
    scores_t2i = below.t().scatter(1, topk_t2i, rescored_t2i)

    is_pair = text_to_image[None, :] == torch.arange(num_images, device=device)[:, None]  # (images, texts)
    metrics = {}
    for prefix, i2t, t2i in (("", scores_i2t, scores_t2i), ("itc_", similarity, similarity.t())):
        for direction, scores, targets in (("i2t", i2t, is_pair), ("t2i", t2i, is_pair.t())):
            ranks = _ranks(scores, targets)
            for cutoff in RECALL_KS:
                metrics[f"{prefix}{direction}_r@{cutoff}"] = _recall(ranks, cutoff)
    return VLPRerankedRetrieval(scores_i2t, scores_t2i, similarity, topk_i2t, topk_t2i, shortlist.num_pairs, metrics)
