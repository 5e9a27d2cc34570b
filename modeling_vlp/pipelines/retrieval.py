"""The "image-text-retrieval" pipeline: ranks texts for images and images for texts with any family that ranks
(`Family.retrieval_ranking`: dual-encoder embeddings, ALBEF re-ranking, ITM matching)."""

import os
from typing import Any

import torch
from transformers.pipelines.base import Pipeline

from ..evaluation.embeddings import _embeddings
from ..evaluation.matching import image_text_match_scores
from ..evaluation.rerank import (
    encode_fusion_candidates,
    rerank_retrieval,
    shortlist_and_rescore,
)
from ..losses import contrastive_logits, itm_log_odds
from ..families import FAMILIES, Family, family_of
from .common import (
    DEFAULT_ENCODE_BATCH_SIZE,
    DEFAULT_RERANK_K,
    RETRIEVAL_TASK,
    TEXT_INPUT_NAMES,
    _batches,
    _call_parameters,
    _check_positive_int,
    _check_texts,
    _load_visual,
    _process_visuals,
    _ranked,
    _reads_regions,
    _require_processor,
    _text_kwargs,
)

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
        family = self._family(self.model)
        self.family, self.ranking = family.name, family.retrieval_ranking  # `families.FAMILIES`
        self.processor = _require_processor(self)
        self.shortlister = None
        if shortlist_model is not None:
            self.shortlister = self._build_shortlister(shortlist_model, shortlist_processor)

    @staticmethod
    def _family(model) -> Family:
        """The model's family, when it ranks (`Family.retrieval_ranking`) and the model is one of its ranking
        classes (`Family.retrieval_roles`)."""
        family = family_of(model)
        if family is None or not set(family.roles_of(type(model).__name__)) & set(family.retrieval_roles):
            ranking = [known.classes[role].__name__ for known in FAMILIES.values() for role in known.retrieval_roles]
            raise ValueError(
                f"The {RETRIEVAL_TASK} pipeline needs a {', '.join(dict.fromkeys(ranking))}, got "
                f"{type(model).__name__}; `pipeline('{RETRIEVAL_TASK}', model=folder_or_repo)` loads the right class."
            )
        return family

    def _build_shortlister(self, shortlist_model, shortlist_processor) -> "VLPImageTextRetrievalPipeline":
        if self.ranking != "match":
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
        if shortlister.ranking != "embeddings":
            raise ValueError(
                f"`shortlist_model` must be a VLPDualEncoderModel (or its folder), got a {shortlister.family} model "
                f"({type(shortlister.model).__name__})."
            )
        return shortlister

    @property
    def uses_sigmoid(self) -> bool:
        return self.ranking == "embeddings" and self.model.config.loss_type == "sigmoid"

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
        expected = "top_k, rerank_k, batch_size, tokenizer_kwargs, timeout"
        preprocess_params, postprocess_params = _call_parameters(
            RETRIEVAL_TASK, expected, timeout, tokenizer_kwargs, top_k, kwargs
        )
        forward_params = {}
        if rerank_k is not None:
            _check_positive_int(rerank_k, "rerank_k")
            forward_params["rerank_k"] = rerank_k
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
    # Scoring, one method per ranking (`Family.retrieval_ranking`)
    # ----------------------------------------------------------------------------------------------------------

    def dual_logits(self, model_inputs, batch_size: int) -> torch.Tensor:
        """`(num_images, num_texts)` logits of a dual encoder: cosine x logit scale (+ bias)."""

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

    def _rank_embeddings(self, model_inputs, batch_size: int, rerank_k: int):
        logits = self.dual_logits(model_inputs, batch_size)
        if self.uses_sigmoid:
            scores_i2t = scores_t2i = torch.sigmoid(logits)
            return (*_ranked(scores_i2t), *_ranked(scores_t2i.t()))
        return (*_ranked(logits.softmax(dim=1)), *_ranked(logits.t().softmax(dim=1)))

    def _rank_rerank(self, model_inputs, batch_size: int, rerank_k: int):
        model = self.model
        visual_inputs, text_inputs = model_inputs["visual_inputs"], model_inputs["text_inputs"]
        num_images = next(iter(visual_inputs.values())).shape[0]
        num_texts = text_inputs["input_ids"].shape[0]
        has_itc = model.vlp.text_projection is not None
        if has_itc and rerank_k < min(num_images, num_texts):
            # `image_ids` only feeds `rerank_retrieval`'s recall metrics, which mean nothing here.
            image_ids = torch.zeros(num_texts, dtype=torch.long)
            result = rerank_retrieval(model, visual_inputs, text_inputs, rerank_k, batch_size, image_ids=image_ids)
            return (
                *_ranked(result.scores_i2t.gather(1, result.topk_i2t), result.topk_i2t),
                *_ranked(result.scores_t2i.gather(1, result.topk_t2i), result.topk_t2i),
            )
        # Every pair: with no ITC head nothing shortlists, and with `rerank_k` covering one side every pair would be
        # re-scored in that direction anyway.
        candidates = encode_fusion_candidates(model, visual_inputs, text_inputs, batch_size)
        similarity = candidates.similarity
        every = shortlist_and_rescore(
            torch.zeros(num_images, num_texts, device=candidates.text_states.device), num_texts, num_images,
            lambda images, texts: candidates.itm_log_odds(model, images, texts), batch_size,
        )  # fmt: skip
        if has_itc:  # ALBEF's score, as `rerank_retrieval`
            scores_i2t, scores_t2i = every.scores_i2t + similarity, every.scores_t2i + similarity.t()
        else:
            scores_i2t, scores_t2i = torch.sigmoid(every.scores_i2t), torch.sigmoid(every.scores_t2i)
        return (*_ranked(scores_i2t), *_ranked(scores_t2i))

    def _rank_match(self, model_inputs, batch_size: int, rerank_k: int):
        visual_inputs, text_inputs = model_inputs["visual_inputs"], model_inputs["text_inputs"]
        if self.shortlister is None:
            log_odds = image_text_match_scores(self.model, visual_inputs, text_inputs, batch_size, show_progress=False)
            scores = torch.sigmoid(log_odds)
            return (*_ranked(scores), *_ranked(scores.t()))
        shortlist_inputs = self.shortlister._ensure_tensor_on_device(
            model_inputs["shortlist_inputs"], device=self.shortlister.device
        )
        similarity = self.shortlister.dual_logits(shortlist_inputs, batch_size).to(self.device)

        def match_probability(images, texts):
            outputs = self.model(
                **{name: value[images] for name, value in visual_inputs.items()},
                **{name: value[texts] for name, value in text_inputs.items()},
                return_dict=True,
            )
            return torch.sigmoid(itm_log_odds(outputs.itm_logits).float())

        shortlist = shortlist_and_rescore(similarity, rerank_k, rerank_k, match_probability, batch_size)
        return (
            *_ranked(shortlist.scores_i2t, shortlist.topk_i2t),
            *_ranked(shortlist.scores_t2i, shortlist.topk_t2i),
        )

    def _forward(self, model_inputs, batch_size: int = DEFAULT_ENCODE_BATCH_SIZE, rerank_k: int = DEFAULT_RERANK_K):
        rank = {"embeddings": self._rank_embeddings, "rerank": self._rank_rerank, "match": self._rank_match}
        i2t_index, i2t_score, t2i_index, t2i_score = rank[self.ranking](model_inputs, batch_size, rerank_k)
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
