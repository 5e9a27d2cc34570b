"""The "visual-question-answering" pipeline (`VLPVisualQuestionAnsweringPipeline`), a task transformers 5 removed:
answers from `config.id2label` for the VQA classifiers of the unified and fusion families; `import modeling_vlp`
registers it (`modeling_vlp.pipelines`)."""

import torch
from torch.utils.data import DataLoader
from transformers.pipelines.base import Pipeline
from transformers.pipelines.pt_utils import PipelineDataset, PipelineIterator

from ..modeling_fusion import VLPFusionForQuestionAnswering
from ..modeling_unified import VLPUnifiedForQuestionAnswering
from .common import (
    SCORE_FUNCTIONS,
    TEXT_INPUT_NAMES,
    VQA_TASK,
    _call_parameters,
    _load_visual,
    _process_visuals,
    _reads_regions,
    _require_processor,
    _text_kwargs,
)


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
        expected = "top_k, function_to_apply, batch_size, tokenizer_kwargs, timeout"
        preprocess_params, postprocess_params = _call_parameters(
            VQA_TASK, expected, timeout, tokenizer_kwargs, top_k, kwargs
        )
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
