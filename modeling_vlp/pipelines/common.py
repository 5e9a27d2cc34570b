"""What the pipelines share: task names and defaults, loading and processing images or region features, text
arguments, argument checks and ranking a score matrix."""

from collections.abc import Sequence

import torch
from transformers.image_utils import load_image
from transformers.pipelines.base import Pipeline

from ..evaluation.embeddings import _text_max_length
from ..processors.processing_vlp import VLPProcessor

# --------------------------------------------------------------------------------------------------------------
# Helpers shared by the retrieval and question answering pipelines
# --------------------------------------------------------------------------------------------------------------

RETRIEVAL_TASK = "image-text-retrieval"
VQA_TASK = "visual-question-answering"
DEFAULT_RERANK_K = 16
DEFAULT_ENCODE_BATCH_SIZE = 32
REGION_KEYS = ("visual_feats", "visual_pos")
TEXT_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
SCORE_FUNCTIONS = ("sigmoid", "softmax", "none")


def _reads_regions(model) -> bool:
    return getattr(model.config, "visual_input", "patches") == "regions"


def _require_processor(pipe: Pipeline) -> VLPProcessor:
    """The pipeline's processor: the one given or saved with the model, else one made of the tokenizer and image
    processor given to `pipeline(...)`."""
    if pipe.processor is not None:
        return pipe.processor
    if pipe.tokenizer is None:
        raise ValueError(
            f"The {pipe.task or type(pipe).__name__} pipeline needs a processor (images / regions and text): pass "
            "`processor=` (a VLPProcessor), or `tokenizer=` and `image_processor=`, or a model folder that has "
            "processor_config.json."
        )
    return VLPProcessor(image_processor=pipe.image_processor, tokenizer=pipe.tokenizer)


def _load_visual(item, argument: str, regions: bool, timeout: float | None):
    """One image (PIL image, local path or URL) -> an RGB PIL image; one region set, a dict with `visual_feats`
    `(num_regions, feature_dim)` and `visual_pos` `(num_regions, 4 or 5)`, is kept as it is."""
    if regions:
        if not isinstance(item, dict) or any(key not in item for key in REGION_KEYS):
            got = f"a dict with keys {sorted(item)}" if isinstance(item, dict) else type(item).__name__
            raise ValueError(
                f"`{argument}` must be a dict with 'visual_feats' (num_regions, feature_dim) and 'visual_pos' "
                f"(num_regions, 4) for this model, which reads detector regions (config.visual_input='regions'); "
                f"got {got}. Images are not supported: extract the regions with a detector first."
            )
        return item
    if item is None:
        raise ValueError(f"`{argument}` is None; expected a PIL image, a local path or a URL.")
    if isinstance(item, dict):
        raise ValueError(
            f"`{argument}` is a dict with keys {sorted(item)}, but this model reads images "
            "(config.visual_input='patches'); pass a PIL image, a local path or a URL."
        )
    return load_image(item, timeout=timeout)


def _process_visuals(processor: VLPProcessor, visuals: list, regions: bool, dtype) -> dict[str, torch.Tensor]:
    if regions:
        inputs = processor(
            visual_feats=[item["visual_feats"] for item in visuals],
            visual_pos=[item["visual_pos"] for item in visuals],
            return_tensors="pt",
        )
    else:
        if processor.image_processor is None:
            raise ValueError(
                "The processor has no image processor (a region-feature processor) but the model reads images "
                "(config.visual_input='patches'); pass a processor with an image processor."
            )
        inputs = processor(images=visuals, return_tensors="pt")
    return {
        name: value.to(dtype) if value.is_floating_point() and dtype is not None else value
        for name, value in inputs.items()
    }


def _text_kwargs(model, processor: VLPProcessor, fixed_length: bool = False, overrides: dict | None = None) -> dict:
    """Tokenizer arguments: padding and truncation to the length the model accepts (fixed-length padding for
    sigmoid-loss dual encoders, as the zero-shot pipeline), then the processor's saved `text_kwargs`, then the
    call's `tokenizer_kwargs`."""
    defaults = {"padding": "max_length" if fixed_length else True, "truncation": True}
    max_length = _text_max_length(model, processor.tokenizer)
    if max_length is not None:
        defaults["max_length"] = max_length
    return {**defaults, **(getattr(processor, "text_kwargs", None) or {}), **(overrides or {})}


def _check_texts(value, argument: str) -> list[str]:
    """A non-empty list of non-blank strings (a single str is a list of one)."""
    if value is None:
        raise ValueError(f"`{argument}` is missing; expected a non-empty list of str.")
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, Sequence):
        raise ValueError(f"`{argument}` has type {type(value).__name__}; expected a str or a list of str.")
    if len(items) == 0:
        raise ValueError(f"`{argument}` is an empty list; expected at least one str.")
    for index, item in enumerate(items):
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"`{argument}[{index}]` is {item!r}; expected a non-empty str.")
    return list(items)


def _check_positive_int(value, argument: str, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{argument}` must be a positive int{' or None' if allow_none else ''}, got {value!r}.")


def _call_parameters(task: str, expected: str, timeout, tokenizer_kwargs, top_k, unknown: dict) -> tuple[dict, dict]:
    """The preprocess and postprocess parameters every pipeline of ours takes (`timeout`, `tokenizer_kwargs`,
    `top_k`), checked; unknown call arguments are an error naming the `expected` ones."""
    if unknown:
        raise ValueError(f"Unknown arguments {sorted(unknown)} for the {task} pipeline; expected among {expected}.")
    preprocess_params = {name: value for name, value in (("timeout", timeout), ("tokenizer_kwargs", tokenizer_kwargs))
                         if value is not None}  # fmt: skip
    postprocess_params = {}
    if top_k is not None:
        _check_positive_int(top_k, "top_k")
        postprocess_params["top_k"] = top_k
    return preprocess_params, postprocess_params


def _batches(inputs: dict[str, torch.Tensor], batch_size: int):
    count = next(iter(inputs.values())).shape[0]
    for start in range(0, count, batch_size):
        yield {name: value[start : start + batch_size] for name, value in inputs.items()}


def _ranked(scores: torch.Tensor, candidates: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores `(Q, K)` of the candidates `(Q, K)` of each query (None: candidate j is column j) -> candidates and
    scores, best first (ties keep the candidate order)."""
    order = scores.argsort(dim=1, descending=True, stable=True)
    candidates = order if candidates is None else candidates.gather(1, order)
    return candidates, scores.gather(1, order)
