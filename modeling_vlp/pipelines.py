"""Pipelines that know our models.

transformers' zero-shot image classification pipeline picks sigmoid scores (and SigLIP's max-length padding) only
when "siglip" is in the model type, so a `VLPDualEncoderModel` trained with the sigmoid loss would get softmax
scores. `VLPZeroShotImageClassificationPipeline` reads `config.loss_type` instead; `import modeling_vlp` installs it
as the "zero-shot-image-classification" task, and for every other model it behaves exactly as the stock pipeline.

Two tasks transformers does not have (any more) are ours: "image-text-retrieval" (`VLPImageTextRetrievalPipeline`,
every family) and "visual-question-answering" (`VLPVisualQuestionAnsweringPipeline`, answer classifiers of the
unified and fusion families; transformers 5 removed the task).

The stock "image-text-to-text" pipeline is built for chat models: it requires a text prompt and feeds it through the
processor, whose tokenizer would end the caption with its eos token. `VLPImageTextToTextPipeline` writes captions
for our captioning models (optional prompt) and is the stock pipeline for every other model; "image-to-text", which
transformers 5 redirects to "image-text-to-text", reaches it too.
"""

import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
from transformers import (
    AutoModelForImageTextToText,
    AutoModelForVisualQuestionAnswering,
    AutoModelForZeroShotImageClassification,
    GenerationConfig,
)
from transformers.image_utils import load_image
from transformers.pipelines import PIPELINE_REGISTRY, ImageTextToTextPipeline, ZeroShotImageClassificationPipeline
from transformers.pipelines.base import Pipeline
from transformers.pipelines.pt_utils import PipelineDataset, PipelineIterator
from torch.utils.data import DataLoader

from .evaluation import _text_max_length, caption_token_budget, image_text_match_scores
from .modeling_dual_encoder import VLPDualEncoderModel
from .modeling_fusion import (
    VLPFusionForImageTextRetrieval,
    VLPFusionForPreTraining,
    VLPFusionForQuestionAnswering,
    rerank_retrieval,
)
from .modeling_unified import VLPUnifiedForImageTextRetrieval, VLPUnifiedForPreTraining, VLPUnifiedForQuestionAnswering
from .objectives import contrastive_logits, itm_log_odds
from .processors.processing_vlp import VLPProcessor
from .registration import AutoModelForImageTextRetrieval


TASK = "zero-shot-image-classification"
# Used when neither the tokenizer nor the text tower states a length; SigLIP's value.
DEFAULT_TEXT_MAX_LENGTH = 64
# Tokenizers without a stated limit report a huge `model_max_length` (transformers' VERY_LARGE_INTEGER).
_UNSET_MAX_LENGTH = 10**12


class VLPZeroShotImageClassificationPipeline(ZeroShotImageClassificationPipeline):
    """The stock zero-shot image classification pipeline, which it stays for every model that is not ours.

    For modeling_vlp models (`model_type` "vlp_*"), prompts are truncated to the text length the model accepts
    (the tokenizer's `model_max_length`, capped by the text tower's `max_position_embeddings`), and a model with
    `config.loss_type == "sigmoid"` gets SigLIP's treatment: prompts padded to that fixed length, as in training,
    and each label scored independently by `sigmoid(logit)` (scores do not sum to 1) instead of a softmax over the
    labels. A `VLPProcessor`'s saved `text_kwargs` override these defaults, and `tokenizer_kwargs` given to the
    call (e.g. `{"max_length": 32}`) override both.
    """

    def check_model_type(self, supported_models: list[str] | dict) -> None:
        # The parent checks against transformers' own classes only and would log an error for ours, which
        # `register_auto_classes` registered for this task.
        if not self.is_vlp_model:
            super().check_model_type(supported_models)

    @property
    def is_vlp_model(self) -> bool:
        return self.model.config.model_type.startswith("vlp_")

    @property
    def uses_sigmoid(self) -> bool:
        """True for our models trained with the pairwise sigmoid loss (the parent only recognises SigLIP's)."""
        return self.is_vlp_model and getattr(self.model.config, "loss_type", None) == "sigmoid"

    def text_max_length(self) -> int:
        """The tokenizer's `model_max_length`, capped by the text tower's `max_position_embeddings`."""
        lengths = []
        tokenizer_length = getattr(self.tokenizer, "model_max_length", None)
        if tokenizer_length is not None and tokenizer_length < _UNSET_MAX_LENGTH:
            lengths.append(int(tokenizer_length))
        text_config = getattr(self.model.config, "text_config", None)
        model_length = getattr(text_config, "max_position_embeddings", None)
        if model_length is not None:
            lengths.append(int(model_length))
        return min(lengths) if lengths else DEFAULT_TEXT_MAX_LENGTH

    def saved_text_kwargs(self) -> dict:
        """The text defaults of the model's `VLPProcessor` (`text_kwargs`: how the model saw text in training, e.g.
        a converted checkpoint's fixed-length padding): the processor given to the pipeline, else the one saved
        in the model's local folder."""
        processor = getattr(self, "processor", None)
        if processor is not None:
            return dict(getattr(processor, "text_kwargs", None) or {})
        path = os.path.join(str(getattr(self.model, "name_or_path", "") or ""), "processor_config.json")
        if not os.path.isfile(path):
            return {}
        with open(path, encoding="utf-8") as handle:
            return dict(json.load(handle).get("text_kwargs") or {})

    def _sanitize_parameters(self, tokenizer_kwargs=None, **kwargs):
        preprocess_params, forward_params, postprocess_params = super()._sanitize_parameters(**kwargs)
        # The parent accepts `tokenizer_kwargs` but drops it; its `preprocess` does take them.
        if tokenizer_kwargs is not None:
            preprocess_params["tokenizer_kwargs"] = tokenizer_kwargs
        return preprocess_params, forward_params, postprocess_params

    def preprocess(
        self,
        image,
        candidate_labels=None,
        hypothesis_template="This is a photo of {}.",
        timeout=None,
        tokenizer_kwargs=None,
    ):
        if self.is_vlp_model:
            # Our text towers have a hard position limit: longer prompts are truncated rather than rejected.
            defaults = {"padding": True, "max_length": self.text_max_length(), "truncation": True}
            if self.uses_sigmoid:
                defaults["padding"] = "max_length"
            tokenizer_kwargs = {**defaults, **self.saved_text_kwargs(), **(tokenizer_kwargs or {})}
        return super().preprocess(
            image,
            candidate_labels=candidate_labels,
            hypothesis_template=hypothesis_template,
            timeout=timeout,
            tokenizer_kwargs=tokenizer_kwargs,
        )

    def postprocess(self, model_outputs) -> list[dict[str, Any]]:
        if not self.uses_sigmoid:
            return super().postprocess(model_outputs)
        candidate_labels = model_outputs.pop("candidate_labels")
        scores = torch.sigmoid(model_outputs["logits"][0].float()).reshape(-1).tolist()
        ranked = sorted(zip(scores, candidate_labels), key=lambda pair: -pair[0])
        return [{"score": score, "label": label} for score, label in ranked]


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


# --------------------------------------------------------------------------------------------------------------
# image-text-retrieval
# --------------------------------------------------------------------------------------------------------------


class VLPImageTextRetrievalPipeline(Pipeline):
    """Ranks texts for images and images for texts with any modeling_vlp family.

    ```python
    >>> import modeling_vlp
    >>> from transformers import pipeline
    >>> retriever = pipeline("image-text-retrieval", model="user/vlp-model")
    >>> retriever(images=[image_a, "b.jpg", "https://.../c.png"], texts=["a dog", "a cat"], top_k=1)
    {"image_to_text": [[{"text": "a dog", "index": 0, "score": 0.93}], ...],   # one list per image
     "text_to_image": [[{"index": 2, "score": 0.88}], ...]}                     # one list per text
    >>> retriever(image_a, texts=["a dog", "a cat"])  # one image: its ranked texts, as zero-shot classification
    [{"text": "a dog", "index": 0, "score": 0.93}, {"text": "a cat", "index": 1, "score": 0.07}]
    ```

    Call arguments:
        images: a PIL image, local path or URL, or a list of them. Region-input models
            (`config.visual_input="regions"`) take `{"visual_feats": (num_regions, feature_dim), "visual_pos":
            (num_regions, 4)}` dicts instead (normalised boxes; through `VLPProcessor`).
        texts (`str` or `list[str]`): the candidate texts, each non-empty.
        top_k (`int`, *optional*): keep the best `top_k` candidates of each query (default: all ranked ones).
        rerank_k (`int`, defaults to 16): shortlist length of the re-ranking families (below).
        batch_size (`int`, defaults to 32, or the pipeline's `batch_size`): images / texts / pairs per forward.
        tokenizer_kwargs (`dict`, *optional*): over the defaults (padding, truncation to the model's text length)
            and the processor's saved `text_kwargs`.
        timeout (`float`, *optional*): for fetching images from URLs.

    Every image and text is processed once (texts padded together), then encoded in batches of `batch_size`, so
    results do not depend on it. How each family ranks, and what `score` is:

    - `VLPDualEncoderModel`, softmax loss: ranked by cosine x logit scale; `score` is the softmax over the query's
      candidates (as the zero-shot pipeline).
    - `VLPDualEncoderModel`, sigmoid loss: cosine x logit scale + bias; `score` is `sigmoid(logit)`, pair by pair.
    - fusion with an ITC head: ITC shortlist of `rerank_k` per query, re-scored by the ITM head (ALBEF, through
      `rerank_retrieval`); `score` is ITM log-odds + cosine, and only the shortlist is returned.
    - fusion without ITC head (LXMERT): ITM on every pair; `score` is the ITM match probability.
    - unified: ITM on every pair (chunked); `score` is the ITM match probability.
    - unified + `shortlist_model`: the dual encoder's shortlist of `rerank_k`, then ITM; `score` is the ITM match
      probability, and only the shortlist is returned.

    A fusion model whose `rerank_k` covers one side entirely (`rerank_k >= min(num_images, num_texts)`, e.g. one
    image) fuses every pair: each pair would be re-scored in one of the two directions anyway.

    Pipeline arguments (`pipeline("image-text-retrieval", model=..., shortlist_model=...)`):
        shortlist_model: for unified models only, a `VLPDualEncoderModel` (or its folder / Hub id, or a retrieval
            pipeline of one) whose embeddings shortlist `rerank_k` candidates per query before the ITM head.
        shortlist_processor: the dual encoder's processor when `shortlist_model` is a model instance (default:
            this pipeline's processor).
    """

    _load_processor = None
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False

    def __init__(self, *args, shortlist_model=None, shortlist_processor=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.family = self._family(self.model)
        self.processor = _require_processor(self)
        self.shortlister = None
        if shortlist_model is not None:
            self.shortlister = self._build_shortlister(shortlist_model, shortlist_processor)

    @staticmethod
    def _family(model) -> str:
        if isinstance(model, VLPDualEncoderModel):
            return "dual"
        if isinstance(model, (VLPFusionForImageTextRetrieval, VLPFusionForPreTraining)):
            return "fusion"
        if isinstance(model, (VLPUnifiedForImageTextRetrieval, VLPUnifiedForPreTraining)):
            return "unified"
        raise ValueError(
            f"The {RETRIEVAL_TASK} pipeline needs a VLPDualEncoderModel, VLPFusionForImageTextRetrieval or "
            f"VLPUnifiedForImageTextRetrieval (a ForPreTraining model with its ITM head also works), got "
            f"{type(model).__name__}; `pipeline('{RETRIEVAL_TASK}', model=folder_or_repo)` loads the right class."
        )

    def _build_shortlister(self, shortlist_model, shortlist_processor) -> "VLPImageTextRetrievalPipeline":
        if self.family != "unified":
            raise ValueError(
                f"`shortlist_model` is for unified models, which otherwise score every pair with ITM; this is a "
                f"{self.family} model ({type(self.model).__name__}), which ranks without one."
            )
        if _reads_regions(self.model):
            raise ValueError(
                "`shortlist_model` (a dual encoder, which reads images) cannot shortlist for a region-input model "
                "(config.visual_input='regions')."
            )
        if isinstance(shortlist_model, VLPImageTextRetrievalPipeline):
            shortlister = shortlist_model
        else:
            from transformers import pipeline

            if not isinstance(shortlist_model, (str, os.PathLike)) and shortlist_processor is None:
                shortlist_processor = self.processor
            shortlister = pipeline(
                RETRIEVAL_TASK, model=shortlist_model, processor=shortlist_processor, device=self.device
            )
        if shortlister.family != "dual":
            raise ValueError(
                f"`shortlist_model` must be a VLPDualEncoderModel (or its folder), got a {shortlister.family} model "
                f"({type(shortlister.model).__name__})."
            )
        return shortlister

    @property
    def uses_sigmoid(self) -> bool:
        return self.family == "dual" and self.model.config.loss_type == "sigmoid"

    def __call__(self, images=None, texts=None, **kwargs):
        single = images is not None and not isinstance(images, (list, tuple))
        if images is None or (not single and len(images) == 0):
            raise ValueError(f"`images` is {'missing' if images is None else 'empty'}; expected an image or a list.")
        batch_size = kwargs.pop("batch_size", None) or self._batch_size or DEFAULT_ENCODE_BATCH_SIZE
        _check_positive_int(batch_size, "batch_size", allow_none=False)
        kwargs.pop("num_workers", None)  # one retrieval problem: nothing for a DataLoader to spread
        preprocess_params, forward_params, postprocess_params = self._sanitize_parameters(**kwargs)
        preprocess_params = {**self._preprocess_params, **preprocess_params}
        forward_params = {**self._forward_params, **forward_params, "batch_size": batch_size}
        postprocess_params = {**self._postprocess_params, **postprocess_params}
        inputs = {"images": [images] if single else list(images), "texts": texts}
        result = self.run_single(inputs, preprocess_params, forward_params, postprocess_params)
        return result["image_to_text"][0] if single else result

    def _sanitize_parameters(self, top_k=None, rerank_k=None, timeout=None, tokenizer_kwargs=None, **kwargs):
        if kwargs:
            raise ValueError(
                f"Unknown arguments {sorted(kwargs)} for the {RETRIEVAL_TASK} pipeline; expected among top_k, "
                "rerank_k, batch_size, tokenizer_kwargs, timeout."
            )
        preprocess_params, forward_params, postprocess_params = {}, {}, {}
        if timeout is not None:
            preprocess_params["timeout"] = timeout
        if tokenizer_kwargs is not None:
            preprocess_params["tokenizer_kwargs"] = tokenizer_kwargs
        if rerank_k is not None:
            _check_positive_int(rerank_k, "rerank_k")
            forward_params["rerank_k"] = rerank_k
        if top_k is not None:
            _check_positive_int(top_k, "top_k")
            postprocess_params["top_k"] = top_k
        return preprocess_params, forward_params, postprocess_params

    def preprocess(self, inputs, timeout=None, tokenizer_kwargs=None):
        regions = _reads_regions(self.model)
        visuals = [
            _load_visual(item, f"images[{index}]", regions, timeout) for index, item in enumerate(inputs["images"])
        ]
        texts = _check_texts(inputs["texts"], "texts")
        text_kwargs = _text_kwargs(self.model, self.processor, self.uses_sigmoid, tokenizer_kwargs)
        text_inputs = self.processor(text=texts, return_tensors="pt", **text_kwargs)
        model_inputs = {
            "visual_inputs": _process_visuals(self.processor, visuals, regions, self.dtype),
            "text_inputs": {name: text_inputs[name] for name in TEXT_INPUT_NAMES if name in text_inputs},
            "texts": texts,
        }
        if self.shortlister is not None:
            model_inputs["shortlist_inputs"] = self.shortlister.preprocess({"images": visuals, "texts": texts})
        return model_inputs

    # ----------------------------------------------------------------------------------------------------------
    # Scoring, one method per family
    # ----------------------------------------------------------------------------------------------------------

    def dual_logits(self, model_inputs, batch_size: int) -> torch.Tensor:
        """`(num_images, num_texts)` logits of a dual encoder: cosine x logit scale (+ bias)."""
        from .evaluation import _embeddings

        model = self.model
        image_embeds = torch.cat([
            _embeddings(model.get_image_features(**chunk), "get_image_features")
            for chunk in _batches(model_inputs["visual_inputs"], batch_size)
        ])  # fmt: skip
        text_embeds = torch.cat([
            _embeddings(model.get_text_features(**chunk), "get_text_features")
            for chunk in _batches(model_inputs["text_inputs"], batch_size)
        ])  # fmt: skip
        image_embeds = torch.nn.functional.normalize(image_embeds, dim=-1)
        text_embeds = torch.nn.functional.normalize(text_embeds, dim=-1)
        logits_per_image, _ = contrastive_logits(image_embeds, text_embeds, model.get_logit_scale(), model.logit_bias)
        return logits_per_image.float()

    def _rank_dual(self, model_inputs, batch_size: int, rerank_k: int):
        logits = self.dual_logits(model_inputs, batch_size)
        if self.uses_sigmoid:
            scores_i2t = scores_t2i = torch.sigmoid(logits)
            return (*_ranked(scores_i2t), *_ranked(scores_t2i.t()))
        return (*_ranked(logits.softmax(dim=1)), *_ranked(logits.t().softmax(dim=1)))

    def _rank_fusion(self, model_inputs, batch_size: int, rerank_k: int):
        model, vlp = self.model, self.model.vlp
        visual_inputs, text_inputs = model_inputs["visual_inputs"], model_inputs["text_inputs"]
        num_images = next(iter(visual_inputs.values())).shape[0]
        num_texts = text_inputs["input_ids"].shape[0]
        has_itc = vlp.text_projection is not None
        if has_itc and rerank_k < min(num_images, num_texts):
            # `image_ids` only feeds `rank`'s recall metrics, which mean nothing here.
            image_ids = torch.zeros(num_texts, dtype=torch.long)
            result = rerank_retrieval(model, visual_inputs, text_inputs, rerank_k, batch_size, image_ids=image_ids)
            return (
                *_ranked(result.scores_i2t.gather(1, result.topk_i2t), result.topk_i2t),
                *_ranked(result.scores_t2i.gather(1, result.topk_t2i), result.topk_t2i),
            )
        # Every pair: with no ITC head nothing shortlists, and with `rerank_k` covering one side every pair would be
        # re-scored in that direction anyway.
        image_states, image_masks, image_embeds = [], [], []
        for chunk in _batches(visual_inputs, batch_size):
            image = vlp.encode_image(**chunk)
            image_states.append(image.last_hidden_state)
            image_masks.append(image.attention_mask)
            if has_itc:
                image_embeds.append(vlp.project_image(image.last_hidden_state, image.attention_mask))
        text_states, text_masks, text_embeds = [], [], []
        for chunk in _batches(text_inputs, batch_size):
            states = vlp.encode_text(**chunk).last_hidden_state
            text_states.append(states)
            mask = chunk.get("attention_mask")
            text_masks.append(
                mask if mask is not None else torch.ones(states.shape[:2], dtype=torch.long, device=states.device)
            )
            if has_itc:
                text_embeds.append(vlp.project_text(states))
        image_states, image_masks = torch.cat(image_states), torch.cat(image_masks)
        text_states, text_masks = torch.cat(text_states), torch.cat(text_masks)
        log_odds = torch.empty(num_images * num_texts, device=text_states.device)
        pairs = torch.arange(num_images * num_texts, device=text_states.device)
        for start in range(0, pairs.shape[0], batch_size):
            chunk = pairs[start : start + batch_size]
            images, texts = chunk // num_texts, chunk % num_texts
            itm_logits = model.itm_logits_for_pairs(
                text_states[texts], text_masks[texts], image_states[images], image_masks[images]
            )
            log_odds[start : start + batch_size] = itm_log_odds(itm_logits).float()
        log_odds = log_odds.view(num_images, num_texts)
        if has_itc:  # ALBEF's score, as `rerank_retrieval`
            scores = log_odds + (torch.cat(image_embeds) @ torch.cat(text_embeds).t()).float()
        else:
            scores = torch.sigmoid(log_odds)
        return (*_ranked(scores), *_ranked(scores.t()))

    def _rank_unified(self, model_inputs, batch_size: int, rerank_k: int):
        visual_inputs, text_inputs = model_inputs["visual_inputs"], model_inputs["text_inputs"]
        if self.shortlister is None:
            log_odds = image_text_match_scores(self.model, visual_inputs, text_inputs, batch_size, show_progress=False)
            scores = torch.sigmoid(log_odds)
            return (*_ranked(scores), *_ranked(scores.t()))
        shortlist_inputs = self.shortlister._ensure_tensor_on_device(
            model_inputs["shortlist_inputs"], device=self.shortlister.device
        )
        similarity = self.shortlister.dual_logits(shortlist_inputs, batch_size).to(self.device)
        num_images, num_texts = similarity.shape
        topk_i2t = similarity.topk(min(rerank_k, num_texts), dim=1).indices  # (num_images, k) texts
        topk_t2i = similarity.t().topk(min(rerank_k, num_images), dim=1).indices  # (num_texts, k) images
        # Pairs as image * num_texts + text: both directions' candidates, each pair scored once.
        keys_i2t = torch.arange(num_images, device=self.device)[:, None] * num_texts + topk_i2t
        keys_t2i = topk_t2i * num_texts + torch.arange(num_texts, device=self.device)[:, None]
        pairs = torch.unique(torch.cat([keys_i2t.flatten(), keys_t2i.flatten()]))  # sorted
        log_odds = torch.empty(pairs.shape[0], device=self.device)
        for start in range(0, pairs.shape[0], batch_size):
            chunk = pairs[start : start + batch_size]
            images, texts = chunk // num_texts, chunk % num_texts
            outputs = self.model(
                **{name: value[images] for name, value in visual_inputs.items()},
                **{name: value[texts] for name, value in text_inputs.items()},
                return_dict=True,
            )
            log_odds[start : start + batch_size] = itm_log_odds(outputs.itm_logits).float()
        scores = torch.sigmoid(log_odds)
        return (
            *_ranked(scores[torch.searchsorted(pairs, keys_i2t)], topk_i2t),
            *_ranked(scores[torch.searchsorted(pairs, keys_t2i)], topk_t2i),
        )

    def _forward(self, model_inputs, batch_size: int = DEFAULT_ENCODE_BATCH_SIZE, rerank_k: int = DEFAULT_RERANK_K):
        rank = {"dual": self._rank_dual, "fusion": self._rank_fusion, "unified": self._rank_unified}[self.family]
        i2t_index, i2t_score, t2i_index, t2i_score = rank(model_inputs, batch_size, rerank_k)
        return {
            "texts": model_inputs["texts"],
            "i2t_index": i2t_index,
            "i2t_score": i2t_score,
            "t2i_index": t2i_index,
            "t2i_score": t2i_score,
        }

    def postprocess(self, model_outputs, top_k: int | None = None) -> dict[str, list[list[dict[str, Any]]]]:
        texts = model_outputs["texts"]

        def lists(index, score, with_text: bool):
            rows = []
            for indices, scores in zip(index[:, :top_k].tolist(), score[:, :top_k].float().tolist()):
                rows.append([
                    {"text": texts[i], "index": i, "score": s} if with_text else {"index": i, "score": s}
                    for i, s in zip(indices, scores)
                ])  # fmt: skip
            return rows

        return {
            "image_to_text": lists(model_outputs["i2t_index"], model_outputs["i2t_score"], True),
            "text_to_image": lists(model_outputs["t2i_index"], model_outputs["t2i_score"], False),
        }


# --------------------------------------------------------------------------------------------------------------
# visual-question-answering
# --------------------------------------------------------------------------------------------------------------


def _answer_labels(config) -> list[str]:
    id2label = getattr(config, "id2label", None) or {}
    labels = {int(index): label for index, label in id2label.items()}
    default = all(label == f"LABEL_{index}" for index, label in labels.items())
    if not labels or default or sorted(labels) != list(range(config.num_labels)):
        shown = dict(list(labels.items())[:3])
        raise ValueError(
            f"The model has no answer vocabulary: config.id2label is {shown}{'...' if len(labels) > 3 else ''} for "
            f"num_labels={config.num_labels}; expected {{index: answer}} for every answer index, as set when "
            "fine-tuning for VQA (a pretraining checkpoint has no answer head)."
        )
    return [labels[index] for index in range(len(labels))]


def _is_pair(item) -> bool:
    return isinstance(item, dict) and "question" in item


def _vqa_inputs(image, question):
    """The call's arguments -> one `{"image", "question"}` dict or a list of them."""
    if _is_pair(image) or (isinstance(image, (list, tuple)) and image and all(_is_pair(item) for item in image)):
        if question is not None:
            raise ValueError("`question` was given with `image` dicts that hold their own 'question'; give one.")
        return dict(image) if isinstance(image, dict) else [dict(item) for item in image]
    if image is None:
        raise ValueError("`image` is missing; expected an image (PIL, path, URL) or a list of them.")
    if question is None:
        raise ValueError("`question` is missing; expected a str or a list of str.")
    images_list, questions_list = isinstance(image, (list, tuple)), isinstance(question, (list, tuple))
    if images_list and len(image) == 0:
        raise ValueError("`image` is an empty list; expected at least one image.")
    if questions_list and len(question) == 0:
        raise ValueError("`question` is an empty list; expected at least one str.")
    if images_list and questions_list:
        if len(image) != len(question):
            raise ValueError(
                f"`image` has {len(image)} items but `question` has {len(question)}; expected one question per "
                "image (or a single image, or a single question, for all)."
            )
        return [{"image": i, "question": q} for i, q in zip(image, question)]
    if images_list:
        return [{"image": i, "question": question} for i in image]
    if questions_list:
        return [{"image": image, "question": q} for q in question]
    return {"image": image, "question": question}


class VLPVisualQuestionAnsweringPipeline(Pipeline):
    """Answers questions about images with a VQA classifier (`VLPUnifiedForQuestionAnswering`,
    `VLPFusionForQuestionAnswering`): the answers are `config.id2label`.

    ```python
    >>> vqa = pipeline("visual-question-answering", model="user/vlp-vqa")
    >>> vqa(image=image, question="what colour is the car?", top_k=2)
    [{"answer": "red", "score": 0.91}, {"answer": "blue", "score": 0.04}]
    >>> vqa(image=[image_a, image_b], question=["how many dogs?", "is it raining?"], batch_size=8)
    [[{"answer": "2", "score": 0.8}], [{"answer": "no", "score": 0.97}]]
    ```

    Call arguments:
        image: a PIL image, local path or URL (region-input models: a `{"visual_feats", "visual_pos"}` dict), or a
            list of them; or `{"image": ..., "question": ...}` dicts (then no `question`).
        question (`str` or `list[str]`): one per image; a single question is asked of every image, and a single
            image answers every question. Two lists must have the same length.
        top_k (`int`, defaults to 1): answers returned per question, best first.
        function_to_apply (`str`, *optional*): "sigmoid", "softmax" or "none" (raw logits). Default from how the
            head was trained: sigmoid for `config.vqa_loss == "bce"` (ViLT's soft-score BCE; fusion models, whose
            VQA fine-tuning is also BCE on soft scores), softmax for "kl" (VisualBERT).
        batch_size (`int`): questions per forward; each batch goes through the processor together (text padded to
            its longest, images padded when the image processor pads).
        tokenizer_kwargs, timeout: as the retrieval pipeline.
    """

    _load_processor = None
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.model, (VLPUnifiedForQuestionAnswering, VLPFusionForQuestionAnswering)):
            raise ValueError(
                f"The {VQA_TASK} pipeline needs a VLPUnifiedForQuestionAnswering or VLPFusionForQuestionAnswering "
                f"model, got {type(self.model).__name__}."
            )
        self.processor = _require_processor(self)
        self.answers = _answer_labels(self.model.config)

    @property
    def score_function(self) -> str:
        return "softmax" if getattr(self.model.config, "vqa_loss", "bce") == "kl" else "sigmoid"

    def __call__(self, image=None, question=None, **kwargs):
        return super().__call__(_vqa_inputs(image, question), **kwargs)

    def _sanitize_parameters(self, top_k=None, function_to_apply=None, timeout=None, tokenizer_kwargs=None, **kwargs):
        if kwargs:
            raise ValueError(
                f"Unknown arguments {sorted(kwargs)} for the {VQA_TASK} pipeline; expected among top_k, "
                "function_to_apply, batch_size, tokenizer_kwargs, timeout."
            )
        preprocess_params, postprocess_params = {}, {}
        if timeout is not None:
            preprocess_params["timeout"] = timeout
        if tokenizer_kwargs is not None:
            preprocess_params["tokenizer_kwargs"] = tokenizer_kwargs
        if top_k is not None:
            _check_positive_int(top_k, "top_k")
            postprocess_params["top_k"] = top_k
        if function_to_apply is not None:
            if function_to_apply not in SCORE_FUNCTIONS:
                raise ValueError(f"`function_to_apply` must be one of {SCORE_FUNCTIONS}, got {function_to_apply!r}.")
            postprocess_params["function_to_apply"] = function_to_apply
        return preprocess_params, {}, postprocess_params

    def preprocess(self, inputs, timeout=None, tokenizer_kwargs=None):
        if not _is_pair(inputs) or "image" not in inputs:
            raise ValueError(f"Each input must be a dict with 'image' and 'question', got {inputs!r}.")
        question = inputs["question"]
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"`question` is {question!r}; expected a non-empty str.")
        return {
            "visual": _load_visual(inputs["image"], "image", _reads_regions(self.model), timeout),
            "question": question,
            "tokenizer_kwargs": tokenizer_kwargs,
        }

    def collate(self, items: list[dict]) -> dict[str, torch.Tensor]:
        """Preprocessed questions -> one batch, through the processor (which pads text, images and regions)."""
        text_kwargs = _text_kwargs(self.model, self.processor, overrides=items[0]["tokenizer_kwargs"])
        inputs = _process_visuals(
            self.processor, [item["visual"] for item in items], _reads_regions(self.model), self.dtype
        )
        text = self.processor(text=[item["question"] for item in items], return_tensors="pt", **text_kwargs)
        inputs.update({name: text[name] for name in TEXT_INPUT_NAMES if name in text})
        return inputs

    def run_single(self, inputs, preprocess_params, forward_params, postprocess_params):
        model_inputs = self.collate([self.preprocess(inputs, **preprocess_params)])
        return self.postprocess(self.forward(model_inputs, **forward_params), **postprocess_params)

    def get_iterator(self, inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params):
        # The stock collate stacks each example's tensors, which breaks on images of different sizes and pads
        # regions with zeros but no mask: batches go through the processor instead.
        dataset = PipelineDataset(inputs, self.preprocess, preprocess_params)
        loader = DataLoader(dataset, num_workers=num_workers, batch_size=batch_size, collate_fn=self.collate)
        model_iterator = PipelineIterator(loader, self.forward, forward_params, loader_batch_size=batch_size)
        return PipelineIterator(model_iterator, self.postprocess, postprocess_params)

    def _forward(self, model_inputs):
        return {"logits": self.model(**model_inputs, return_dict=True).logits}

    def postprocess(self, model_outputs, top_k: int = 1, function_to_apply: str | None = None) -> list[dict]:
        logits = model_outputs["logits"][0].float()
        function = function_to_apply or self.score_function
        if function == "sigmoid":
            scores = torch.sigmoid(logits)
        elif function == "softmax":
            scores = logits.softmax(dim=-1)
        else:
            scores = logits
        values, indices = scores.topk(min(top_k, scores.shape[-1]))
        return [{"answer": self.answers[i], "score": v} for v, i in zip(values.tolist(), indices.tolist())]


# --------------------------------------------------------------------------------------------------------------
# image-text-to-text (and image-to-text): captioning
# --------------------------------------------------------------------------------------------------------------

CAPTIONING_TASK = "image-text-to-text"
CAPTIONING_MODEL_TYPE = "vlp_captioning"
# The generation options a call may pass by name (`max_new_tokens`, `num_beams`, `do_sample`, ...).
_GENERATION_KEYS = frozenset(key for key in vars(GenerationConfig()) if not key.startswith("_"))


def _caption_inputs(images, prompt) -> list[dict] | dict:
    """The call's arguments -> one `{"image", "prompt"}` dict or a list of them (a single prompt for every image)."""
    if images is None:
        raise ValueError("`images` is missing; expected an image (PIL, local path or URL) or a list of them.")
    images_list = isinstance(images, (list, tuple))
    if images_list and len(images) == 0:
        raise ValueError("`images` is an empty list; expected at least one image.")
    if isinstance(prompt, (list, tuple)):
        if not images_list or len(prompt) != len(images):
            count = len(images) if images_list else "a single image"
            raise ValueError(
                f"`prompt` is a list of {len(prompt)} prompts for {count}; expected one str for every image, or "
                "one prompt per image."
            )
        prompts = list(prompt)
    else:
        prompts = [prompt] * (len(images) if images_list else 1)
    for index, item in enumerate(prompts):
        if item is not None and not isinstance(item, str):
            raise ValueError(f"`prompt` {'[' + str(index) + '] ' if len(prompts) > 1 else ''}is {item!r}; expected a str or None.")
    if images_list:
        return [{"image": image, "prompt": text} for image, text in zip(images, prompts)]
    return {"image": images, "prompt": prompts[0]}


class VLPImageTextToTextPipeline(ImageTextToTextPipeline):
    """Captions for images with our captioning models (`VLPForConditionalGeneration`); for every other model, the
    stock "image-text-to-text" pipeline.

    ```python
    >>> import modeling_vlp
    >>> from transformers import pipeline
    >>> captioner = pipeline("image-text-to-text", model="user/vlp-captioning")  # or "image-to-text"
    >>> captioner("scene.png")
    [{"generated_text": "a small red circle above a large blue square"}]
    >>> captioner(["a.png", image_b], prompt="a large", num_beams=3, max_new_tokens=20, batch_size=8)
    [[{"generated_text": "a large green star ..."}], [{"generated_text": "a large ..."}]]   # one list per image
    ```

    Call arguments (captioning models):
        images: a PIL image, local path or URL, or a list of them.
        prompt (`str` or `list[str]`, *optional*; `text` is the same argument): the caption starts with it (one for
            every image, or one per image); without it the caption starts from the model's start token.
        max_new_tokens (`int`, *optional*): new tokens at most; default: 40 capped by the decoder's positions.
        num_beams, do_sample, temperature, top_k, top_p, num_return_sequences, repetition_penalty, ...: any
            `GenerationConfig` field, by name or in `generate_kwargs` (a dict); also accepted by `pipeline(...)`.
        batch_size (`int`): images per `generate` call (rows with prompts of different lengths are left-padded).
        timeout (`float`, *optional*): seconds to wait for an image URL.
    Returns one list per image of `{"generated_text": str}`, one per returned sequence (`num_return_sequences`),
    decoded without special tokens. Errors of the model (`max_new_tokens <= 0`, a prompt longer than the decoder's
    positions) are raised as `ValueError`s.
    """

    @property
    def is_vlp_model(self) -> bool:
        return getattr(self.model.config, "model_type", None) == CAPTIONING_MODEL_TYPE

    def check_model_type(self, supported_models: list[str] | dict) -> None:
        if self.is_vlp_model:
            return  # registered through AutoModelForImageTextToText, which the parent's name list does not show
        super().check_model_type(supported_models)

    def __call__(self, images=None, text=None, prompt=None, **kwargs):
        if not self.is_vlp_model:
            if prompt is not None:
                raise ValueError("`prompt` is for modeling_vlp captioning models; pass `text` to this model.")
            return super().__call__(images, text, **kwargs)
        if text is not None and prompt is not None:
            raise ValueError("`text` and `prompt` are the same argument (the start of the caption); give one.")
        self.processor = _require_processor(self)
        return Pipeline.__call__(self, _caption_inputs(images, prompt if prompt is not None else text), **kwargs)

    def _sanitize_parameters(self, generate_kwargs=None, timeout=None, max_new_tokens=None, **kwargs):
        if not self.is_vlp_model:
            return super()._sanitize_parameters(
                generate_kwargs=generate_kwargs, timeout=timeout, max_new_tokens=max_new_tokens, **kwargs
            )
        unknown = sorted(set(kwargs) - _GENERATION_KEYS)
        if unknown:
            raise ValueError(
                f"Unknown arguments {unknown} for the captioning pipeline; expected prompt, batch_size, timeout, "
                "generate_kwargs or generation options (max_new_tokens, num_beams, do_sample, ...)."
            )
        if generate_kwargs is not None and not isinstance(generate_kwargs, dict):
            raise ValueError(f"`generate_kwargs` must be a dict, got {type(generate_kwargs).__name__}.")
        generate_kwargs = {**(generate_kwargs or {}), **kwargs}
        if max_new_tokens is not None:
            if "max_new_tokens" in generate_kwargs:
                raise ValueError("`max_new_tokens` was given twice, by name and in `generate_kwargs`; give one.")
            generate_kwargs["max_new_tokens"] = max_new_tokens
        preprocess_params = {} if timeout is None else {"timeout": timeout}
        forward_params = {"generate_kwargs": generate_kwargs} if generate_kwargs else {}
        return preprocess_params, forward_params, {}

    def preprocess(self, inputs=None, timeout=None, **kwargs):
        if not self.is_vlp_model:
            return super().preprocess(inputs, timeout=timeout, **kwargs)
        if not isinstance(inputs, dict) or "image" not in inputs:
            raise ValueError(f"Each input must be an image or a dict with 'image' (and 'prompt'), got {inputs!r}.")
        return {"image": _load_visual(inputs["image"], "images", False, timeout), "prompt": inputs.get("prompt")}

    def prompt_ids(self, prompt: str | None) -> list[int]:
        """The decoder's start token followed by the prompt's tokens (no end token: the caption goes on)."""
        start = [self.model.config.decoder_start_id]
        if not prompt:
            return start
        return start + list(self.processor.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def collate(self, items: list[dict]) -> dict[str, torch.Tensor]:
        """Images through the processor; prompts left-padded (generation appends on the right)."""
        inputs = _process_visuals(self.processor, [item["image"] for item in items], False, self.dtype)
        prompts = [self.prompt_ids(item["prompt"]) for item in items]
        length = max(len(ids) for ids in prompts)
        pad = self.processor.tokenizer.pad_token_id or 0
        inputs["input_ids"] = torch.tensor([[pad] * (length - len(ids)) + ids for ids in prompts])
        inputs["attention_mask"] = torch.tensor([[0] * (length - len(ids)) + [1] * len(ids) for ids in prompts])
        return inputs

    def run_single(self, inputs, preprocess_params, forward_params, postprocess_params):
        if not self.is_vlp_model:
            return super().run_single(inputs, preprocess_params, forward_params, postprocess_params)
        model_inputs = self.collate([self.preprocess(inputs, **preprocess_params)])
        return self.postprocess(self.forward(model_inputs, **forward_params), **postprocess_params)

    def get_iterator(self, inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params):
        if not self.is_vlp_model:
            return super().get_iterator(
                inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params
            )
        dataset = PipelineDataset(inputs, self.preprocess, preprocess_params)
        loader = DataLoader(dataset, num_workers=num_workers, batch_size=batch_size, collate_fn=self.collate)
        model_iterator = PipelineIterator(loader, self.forward, forward_params, loader_batch_size=batch_size)
        return PipelineIterator(model_iterator, self.postprocess, postprocess_params)

    def _forward(self, model_inputs, generate_kwargs=None):
        if not self.is_vlp_model:
            return super()._forward(model_inputs, generate_kwargs=generate_kwargs)
        generate_kwargs = dict(generate_kwargs or {})
        set_params = self._get_set_generation_params({**self._generate_kwargs, **generate_kwargs})
        if "max_new_tokens" not in set_params and "max_length" not in set_params:
            # The pipeline's default (256 new tokens) overflows a small decoder's positions.
            prompt_length = model_inputs["input_ids"].shape[1]
            generate_kwargs["max_new_tokens"] = caption_token_budget(self.model, None, prompt_length)
        generate_kwargs = self._prepare_generate_kwargs(generate_kwargs, return_dict_in_generate=False)
        sequences = self.model.generate(**model_inputs, **generate_kwargs)
        batch_size = model_inputs["input_ids"].shape[0]
        # (batch * num_return_sequences, length) -> (batch, num_return_sequences, length): one item per image.
        return {"sequences": sequences.reshape(batch_size, -1, sequences.shape[-1])}

    def postprocess(self, model_outputs, **kwargs):
        if not self.is_vlp_model:
            return super().postprocess(model_outputs, **kwargs)
        sequences = model_outputs["sequences"][0]
        texts = self.processor.tokenizer.batch_decode(sequences, skip_special_tokens=True)
        return [{"generated_text": text.strip()} for text in texts]


# --------------------------------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------------------------------


def _register(task: str, pipeline_class: type, pt_model: tuple, default=None, task_type: str = "multimodal") -> None:
    if PIPELINE_REGISTRY.supported_tasks.get(task, {}).get("impl") is pipeline_class:
        return
    # Overwriting a built-in task logs a warning on every import; it is intended here.
    registry_logger = logging.getLogger("transformers.pipelines.base")
    level = registry_logger.level
    registry_logger.setLevel(logging.ERROR)
    try:
        PIPELINE_REGISTRY.register_pipeline(
            task, pipeline_class=pipeline_class, pt_model=pt_model, default=default, type=task_type
        )
    finally:
        registry_logger.setLevel(level)
    # `register_pipeline` marks the class as custom code, which `Pipeline.save_pretrained` would then write into
    # every saved model's config (`custom_pipelines`) and require `trust_remote_code` to load; it is not custom code
    # for anyone who has `modeling_vlp`, and the model folders carry their own remote code.
    del pipeline_class._registered_impl


class _WarningCategoryArgumentFilter(logging.Filter):
    """transformers 5 logs its "image-to-text has been replaced by image-text-to-text" notice with `UserWarning` as a
    %-argument that the message has no placeholder for, so formatting the record fails and logging prints a traceback
    (or, under pytest, raises). The filter drops such an argument and keeps the message."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and args and all(isinstance(a, type) and issubclass(a, Warning) for a in args):
            record.args = ()
        return True


def register_pipelines() -> None:
    """Install `VLPZeroShotImageClassificationPipeline` as the "zero-shot-image-classification" task and
    `VLPImageTextToTextPipeline` as "image-text-to-text" (keeping the stock tasks' model classes and default models),
    and our "image-text-retrieval" and "visual-question-answering" (alias "vqa") tasks. Idempotent."""
    current = PIPELINE_REGISTRY.supported_tasks.get(TASK, {})
    _register(
        TASK,
        VLPZeroShotImageClassificationPipeline,
        tuple(current.get("pt") or (AutoModelForZeroShotImageClassification,)),
        default=current.get("default"),
        task_type=current.get("type", "multimodal"),
    )
    current = PIPELINE_REGISTRY.supported_tasks.get(CAPTIONING_TASK, {})
    _register(
        CAPTIONING_TASK,
        VLPImageTextToTextPipeline,
        tuple(current.get("pt") or (AutoModelForImageTextToText,)),
        default=current.get("default"),
        task_type=current.get("type", "multimodal"),
    )
    _register(RETRIEVAL_TASK, VLPImageTextRetrievalPipeline, (AutoModelForImageTextRetrieval,))
    _register(VQA_TASK, VLPVisualQuestionAnsweringPipeline, (AutoModelForVisualQuestionAnswering,))
    # transformers 5 removed the VQA task and `pipeline()` refuses the name before looking at the registry.
    from transformers.pipelines import REMOVED_TASKS

    for name in (VQA_TASK, "vqa"):
        REMOVED_TASKS.pop(name, None)
    pipelines_logger = logging.getLogger("transformers.pipelines")
    if not any(isinstance(item, _WarningCategoryArgumentFilter) for item in pipelines_logger.filters):
        pipelines_logger.addFilter(_WarningCategoryArgumentFilter())
    PIPELINE_REGISTRY.task_aliases["vqa"] = VQA_TASK


__all__ = [
    "VLPImageTextRetrievalPipeline",
    "VLPImageTextToTextPipeline",
    "VLPVisualQuestionAnsweringPipeline",
    "VLPZeroShotImageClassificationPipeline",
    "register_pipelines",
]
