"""The "image-text-to-text" pipeline (`VLPImageTextToTextPipeline`, also reached by "image-to-text"): captions, with
an optional prompt, for our captioning models, and the stock chat-model pipeline for every other model; registered
by `modeling_vlp.pipelines`."""

import torch
from torch.utils.data import DataLoader
from transformers import GenerationConfig
from transformers.pipelines import ImageTextToTextPipeline
from transformers.pipelines.base import Pipeline
from transformers.pipelines.pt_utils import PipelineDataset, PipelineIterator

from ..evaluation.captioning import caption_token_budget
from .common import _load_visual, _process_visuals, _require_processor

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
