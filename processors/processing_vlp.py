"""Processor pairing an image processor with any transformers tokenizer.

This file is copied verbatim next to saved checkpoints as Hub remote code: it imports no `modeling_vlp` module.
"""

from collections.abc import Sequence
from typing import Any

from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .image_processing_vlp import VLPImageProcessor  # noqa: F401  (copied with this file as remote code)
from .tokenization_vlp import VLPTokenizer  # noqa: F401  (copied with this file as remote code)


class VLPProcessor(ProcessorMixin):
    r"""
    Prepares `pixel_values` with an image processor (usually [`VLPImageProcessor`]) and `input_ids`,
    `attention_mask` (and `token_type_ids` when the tokenizer makes them) with any transformers tokenizer
    ([`VLPTokenizer`], `CLIPTokenizer`, `BertTokenizer`, ...).

    Args:
        image_processor: An image processor (`BaseImageProcessor`).
        tokenizer: A tokenizer (`PreTrainedTokenizerBase`).
        text_kwargs (`dict`, *optional*): Default tokenizer arguments, saved with the processor, that a call's own
            arguments override: e.g. `{"padding": "max_length", "max_length": 64, "truncation": True}` for models
            trained on fixed-length text without an attention mask (SigLIP, open_clip).
    """

    def __init__(self, image_processor=None, tokenizer=None, text_kwargs: dict | None = None, **kwargs):
        self.text_kwargs = dict(text_kwargs or {})
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(
        self,
        images: Any = None,
        text: str | list[str] | None = None,
        paired: bool = False,
        return_tensors: str | None = None,
        **tokenizer_kwargs,
    ) -> BatchFeature:
        """
        Args:
            images: One image or a batch, in any form the image processor accepts.
            text (`str` or `list[str]`): One caption or a batch; each must contain non-whitespace characters.
            paired (`bool`, defaults to `False`): The i-th caption describes the i-th image; the batch sizes must
                match.
            return_tensors (`str`, *optional*): `"pt"` or `"np"` for stacked tensors; lists otherwise.
            tokenizer_kwargs: Passed to the tokenizer (`padding`, `truncation`, `max_length`, ...), over the
                processor's `text_kwargs`.

        Returns:
            `BatchFeature` with `input_ids` `(B_text, L)`, `attention_mask` `(B_text, L)` (+ `token_type_ids`) when
            `text` is given and `pixel_values` `(B_images, 3, H, W)` when `images` is given.
        """
        if images is None and text is None:
            raise ValueError(f"{type(self).__name__} needs images, text or both; got neither.")
        if text is not None:
            _check_text(text)
            text = text if isinstance(text, str) else list(text)
        if paired:
            if images is None or text is None:
                missing = "images" if images is None else "text"
                raise ValueError(f"paired=True needs both images and text, but {missing} is None.")
            num_images, num_texts = _count_images(images), 1 if isinstance(text, str) else len(text)
            if num_images != num_texts:
                raise ValueError(
                    f"images has {num_images} items but text has {num_texts}; "
                    "paired inputs need one caption per image."
                )

        data = {}
        if text is not None:
            data.update(self.tokenizer(text, return_tensors=return_tensors, **{**self.text_kwargs, **tokenizer_kwargs}))
        if images is not None:
            data.update(self.image_processor(images, return_tensors=return_tensors))
        return BatchFeature(data=data, tensor_type=return_tensors)


def _check_text(text: Any) -> None:
    if isinstance(text, str):
        if not text.strip():
            raise ValueError(f"text is {'empty' if not text else 'whitespace only'} ({text!r}); expected a caption.")
        return
    if not isinstance(text, Sequence):  # lists, tuples, a datasets `Column`...
        raise TypeError(f"text has type {type(text).__name__}; expected a str or a list of str.")
    if len(text) == 0:
        raise ValueError("text is an empty list; expected at least one caption.")
    for index, item in enumerate(text):
        if not isinstance(item, str):
            raise TypeError(f"text[{index}] has type {type(item).__name__}; expected str.")
        if not item.strip():
            raise ValueError(
                f"text[{index}] is {'empty' if not item else 'whitespace only'} ({item!r}); expected a caption."
            )


def _count_images(images: Any) -> int:
    if isinstance(images, (list, tuple)):
        return len(images)
    if getattr(images, "ndim", None) == 4 and hasattr(images, "shape"):  # a batched numpy array or torch tensor
        return int(images.shape[0])
    return 1


__all__ = ["VLPProcessor"]
