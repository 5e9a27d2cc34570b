"""The "zero-shot-image-classification" pipeline for every model (`VLPZeroShotImageClassificationPipeline`): the stock
one, which picks sigmoid scores and SigLIP's max-length padding only for "siglip" model types, reading
`config.loss_type` of our dual encoders instead; `import modeling_vlp` installs it for the task
(`modeling_vlp.pipelines`)."""

import json
import os
from typing import Any

import torch
from transformers.pipelines import ZeroShotImageClassificationPipeline

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
