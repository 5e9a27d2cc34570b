"""Processor pairing an image processor with any transformers tokenizer.

This file is copied verbatim next to saved checkpoints as Hub remote code: it imports no `modeling_vlp` module.
"""

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from transformers import AutoTokenizer
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .image_processing_vlp import VLPImageProcessor  # noqa: F401  (copied with this file as remote code)
from .tokenization_vlp import VLPTokenizer  # noqa: F401  (copied with this file as remote code)


class VLPProcessor(ProcessorMixin):
    r"""
    Prepares `pixel_values` with an image processor (usually [`VLPImageProcessor`]), or pads precomputed detector
    region features, and `input_ids`, `attention_mask` (and `token_type_ids` when the tokenizer makes them) with any
    transformers tokenizer ([`VLPTokenizer`], `CLIPTokenizer`, `BertTokenizer`, ...).

    Args:
        image_processor: An image processor (`BaseImageProcessor`), or `None` for models that only read region
            features (VisualBERT, UNITER, LXMERT style): such a processor saves and loads without one.
        tokenizer: A tokenizer (`PreTrainedTokenizerBase`).
        text_kwargs (`dict`, *optional*): Default tokenizer arguments, saved with the processor, that a call's own
            arguments override: e.g. `{"padding": "max_length", "max_length": 64, "truncation": True}` for models
            trained on fixed-length text without an attention mask (SigLIP, open_clip).
    """

    def __init__(self, image_processor=None, tokenizer=None, text_kwargs: dict | None = None, **kwargs):
        self.text_kwargs = dict(text_kwargs or {})
        if image_processor is None:
            # ProcessorMixin checks, saves and loads every sub-processor named in __init__. This instance lists only
            # its tokenizer (the class still lists both, so processor_config.json records "image_processor": null,
            # which from_pretrained reads back as None).
            self.get_attributes = _tokenizer_only
            super().__init__(tokenizer=tokenizer, **kwargs)
            self.image_processor = None
        else:
            super().__init__(image_processor, tokenizer, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        # A region-feature processor was saved without an image processor ("image_processor": null), which the
        # parent would try to load: build it from its tokenizer alone.
        processor_dict, instantiation_kwargs = cls.get_processor_dict(pretrained_model_name_or_path, **kwargs)
        if "image_processor" not in processor_dict or processor_dict["image_processor"]:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path, **kwargs)
        return cls.from_args_and_dict([None, tokenizer], processor_dict, **instantiation_kwargs)

    @property
    def model_input_names(self) -> list[str]:
        names = super().model_input_names
        if self.image_processor is None:
            names = names + ["visual_feats", "visual_pos", "visual_attention_mask"]
        return names

    def __call__(
        self,
        images: Any = None,
        text: str | list[str] | None = None,
        visual_feats: Any = None,
        visual_pos: Any = None,
        region_class_scores: Any = None,
        region_labels: Any = None,
        paired: bool = False,
        return_tensors: str | None = None,
        **tokenizer_kwargs,
    ) -> BatchFeature:
        """
        Args:
            images: One image or a batch, in any form the image processor accepts.
            text (`str` or `list[str]`): One caption or a batch; each must contain non-whitespace characters.
            visual_feats: Detector region features instead of images: a batch (list) of `(N_i, D)` arrays, tensors
                or nested lists, one per image, or a `(B, N, D)` array; a single `(N, D)` array is a batch of one.
            visual_pos: The matching boxes, a batch of `(N_i, 4)` `(x1, y1, x2, y2)` normalized to [0, 1] (or
                `(N_i, 5)` with the normalized area last).
            region_class_scores (*optional*): The detector's class distribution per region, a batch of `(N_i, C)`
                (targets of masked region classification).
            region_labels (*optional*): A class index per region, a batch of `(N_i,)` integers.
            paired (`bool`, defaults to `False`): The i-th caption describes the i-th image (or region set); the
                batch sizes must match.
            return_tensors (`str`, *optional*): `"pt"` or `"np"` for stacked tensors; lists otherwise (region
                inputs are always padded and come back as numpy arrays then).
            tokenizer_kwargs: Passed to the tokenizer (`padding`, `truncation`, `max_length`, ...), over the
                processor's `text_kwargs`.

        Returns:
            `BatchFeature` with `input_ids` `(B_text, L)`, `attention_mask` `(B_text, L)` (+ `token_type_ids`) when
            `text` is given; `pixel_values` `(B_images, 3, H, W)` (+ `pixel_mask` `(B_images, H, W)` when the image
            processor pads) when `images` is given; when `visual_feats` is given, regions padded to the largest
            `N_i`: `visual_feats` `(B, N, D)` float32, `visual_pos` `(B, N, 4 or 5)` float32 (zeros on padding),
            `visual_attention_mask` `(B, N)` int64 (1 = real region), and `region_class_scores` `(B, N, C)`
            float32 (zeros on padding) / `region_labels` `(B, N)` int64 (-100 on padding) when given.
        """
        if images is not None and visual_feats is not None:
            raise ValueError(
                "images and visual_feats were both given; a batch is either images (pixel_values) or precomputed "
                "region features (visual_feats + visual_pos), not both."
            )
        if images is None and text is None and visual_feats is None:
            raise ValueError(f"{type(self).__name__} needs images (or visual_feats), text or both; got neither.")
        if images is not None and self.image_processor is None:
            raise ValueError(
                f"images were given but this {type(self).__name__} has no image processor (image_processor=None, "
                "for region-feature models); pass visual_feats and visual_pos instead."
            )
        if visual_feats is None:
            for name, value in (
                ("visual_pos", visual_pos),
                ("region_class_scores", region_class_scores),
                ("region_labels", region_labels),
            ):
                if value is not None:
                    raise ValueError(f"{name} was given without visual_feats; it describes regions of visual_feats.")
        if text is not None:
            _check_text(text)
            text = text if isinstance(text, str) else list(text)

        regions = None
        if visual_feats is not None:
            regions = pad_regions(visual_feats, visual_pos, region_class_scores, region_labels)
        if paired:
            visual_name = "images" if visual_feats is None else "visual_feats"
            if (images is None and regions is None) or text is None:
                missing = "text" if text is None else "images (or visual_feats)"
                raise ValueError(f"paired=True needs both images (or visual_feats) and text, but {missing} is None.")
            num_visual = _count_images(images) if regions is None else len(regions["visual_feats"])
            num_texts = 1 if isinstance(text, str) else len(text)
            if num_visual != num_texts:
                raise ValueError(
                    f"{visual_name} has {num_visual} items but text has {num_texts}; "
                    f"paired inputs need one caption per {'image' if visual_feats is None else 'region set'}."
                )

        data = {}
        if text is not None:
            data.update(self.tokenizer(text, return_tensors=return_tensors, **{**self.text_kwargs, **tokenizer_kwargs}))
        if images is not None:
            data.update(self.image_processor(images, return_tensors=return_tensors))
        if regions is not None:
            data.update(regions)
        return BatchFeature(data=data, tensor_type=return_tensors)


def _tokenizer_only() -> list[str]:
    return ["tokenizer"]


def pad_regions(visual_feats, visual_pos, region_class_scores=None, region_labels=None) -> dict[str, np.ndarray]:
    """Check a batch of per-image region features and boxes and pad it to the largest region count.

    See [`VLPProcessor.__call__`] for the accepted forms and the returned arrays.
    """
    if visual_pos is None:
        raise ValueError("visual_feats was given without visual_pos; every region needs its box (N_i, 4) or (N_i, 5).")
    feats = _region_items(visual_feats, "visual_feats", np.float32)
    boxes = _region_items(visual_pos, "visual_pos", np.float32)
    batch = len(feats)
    if len(boxes) != batch:
        raise ValueError(f"visual_feats has {batch} items but visual_pos has {len(boxes)}; expected one per image.")
    feature_dim = box_width = None
    for index, (feat, box) in enumerate(zip(feats, boxes)):
        if feat.ndim != 2:
            raise ValueError(f"visual_feats[{index}] has shape {feat.shape}; expected (num_regions, feature_dim).")
        if feat.shape[0] == 0:
            raise ValueError(f"visual_feats[{index}] has no regions (shape {feat.shape}); expected at least one.")
        if feature_dim is None:
            feature_dim = feat.shape[1]
        elif feat.shape[1] != feature_dim:
            raise ValueError(
                f"visual_feats[{index}] has feature dim {feat.shape[1]} but visual_feats[0] has {feature_dim}; "
                "every region of a batch needs the same feature dim."
            )
        if not np.isfinite(feat).all():
            raise ValueError(f"visual_feats[{index}] contains NaN or infinite values.")
        if box.ndim != 2 or box.shape[1] not in (4, 5):
            raise ValueError(
                f"visual_pos[{index}] has shape {box.shape}; expected ({feat.shape[0]}, 4) normalized (x1, y1, x2, "
                "y2) boxes, or (num_regions, 5) with the normalized area last."
            )
        if box.shape[0] != feat.shape[0]:
            raise ValueError(
                f"visual_pos[{index}] has {box.shape[0]} boxes but visual_feats[{index}] has {feat.shape[0]} regions; "
                "expected one box per region."
            )
        if box_width is None:
            box_width = box.shape[1]
        elif box.shape[1] != box_width:
            raise ValueError(
                f"visual_pos[{index}] has {box.shape[1]} columns but visual_pos[0] has {box_width}; expected the same "
                "box layout for the whole batch."
            )
        if not np.isfinite(box).all() or box.min() < 0 or box.max() > 1:
            raise ValueError(
                f"visual_pos[{index}] has values in [{box.min():g}, {box.max():g}]; expected boxes normalized to "
                "[0, 1] by the image width and height."
            )
        if (box[:, 2] < box[:, 0]).any() or (box[:, 3] < box[:, 1]).any():
            raise ValueError(f"visual_pos[{index}] has a box with x2 < x1 or y2 < y1; expected (x1, y1, x2, y2).")

    counts = [feat.shape[0] for feat in feats]
    num_regions = max(counts)
    out = {
        "visual_feats": np.zeros((batch, num_regions, feature_dim), dtype=np.float32),
        "visual_pos": np.zeros((batch, num_regions, box_width), dtype=np.float32),
        "visual_attention_mask": np.zeros((batch, num_regions), dtype=np.int64),
    }
    for index, (feat, box, count) in enumerate(zip(feats, boxes, counts)):
        out["visual_feats"][index, :count] = feat
        out["visual_pos"][index, :count] = box
        out["visual_attention_mask"][index, :count] = 1
    if region_class_scores is not None:
        scores = _region_items(region_class_scores, "region_class_scores", np.float32)
        _check_batch(scores, batch, "region_class_scores")
        num_classes = None
        for index, (score, count) in enumerate(zip(scores, counts)):
            if score.ndim != 2 or score.shape[0] != count:
                raise ValueError(
                    f"region_class_scores[{index}] has shape {score.shape}; expected ({count}, num_classes), one row "
                    f"per region of visual_feats[{index}]."
                )
            if num_classes is None:
                num_classes = score.shape[1]
            elif score.shape[1] != num_classes:
                raise ValueError(
                    f"region_class_scores[{index}] has {score.shape[1]} classes but region_class_scores[0] has "
                    f"{num_classes}."
                )
        out["region_class_scores"] = np.zeros((batch, num_regions, num_classes), dtype=np.float32)
        for index, (score, count) in enumerate(zip(scores, counts)):
            out["region_class_scores"][index, :count] = score
    if region_labels is not None:
        labels = _region_items(region_labels, "region_labels", None)
        _check_batch(labels, batch, "region_labels")
        out["region_labels"] = np.full((batch, num_regions), -100, dtype=np.int64)
        for index, (label, count) in enumerate(zip(labels, counts)):
            if label.shape != (count,) or not np.issubdtype(label.dtype, np.integer):
                raise ValueError(
                    f"region_labels[{index}] has shape {label.shape} and dtype {label.dtype}; expected ({count},) "
                    f"integers, one class index per region of visual_feats[{index}]."
                )
            out["region_labels"][index, :count] = label
    return out


def _region_items(values: Any, name: str, dtype) -> list[np.ndarray]:
    """A batch of per-image arrays: a list/tuple of items, or one array/tensor whose first axis is the batch."""
    if values is None:
        raise ValueError(f"{name} is None.")
    if _is_tensor(values) or isinstance(values, np.ndarray):
        array = _to_numpy(values)
        expected_rank = 2 if name == "region_labels" else 3
        # One image's regions (a single (N, D) array) is a batch of one.
        items = [array] if array.ndim == expected_rank - 1 else list(array)
    elif isinstance(values, Sequence) and not isinstance(values, str):
        # lists, tuples, and sequences such as a datasets `Column`
        items = list(values)
    else:
        raise TypeError(f"{name} has type {type(values).__name__}; expected a list with one array per image.")
    if not items:
        raise ValueError(f"{name} is an empty list; expected one entry per image.")
    arrays = []
    for index, item in enumerate(items):
        try:
            array = _to_numpy(item) if _is_tensor(item) else np.asarray(item)
        except ValueError as error:  # ragged nested lists
            raise ValueError(f"{name}[{index}] is not a rectangular array: {error}") from error
        if dtype is not None:
            if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
                raise ValueError(f"{name}[{index}] has dtype {array.dtype}; expected numbers.")
            array = array.astype(dtype)
        arrays.append(array)
    return arrays


def _check_batch(items: list, batch: int, name: str) -> None:
    if len(items) != batch:
        raise ValueError(f"{name} has {len(items)} items but visual_feats has {batch}; expected one per image.")


def _is_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _to_numpy(value: Any) -> np.ndarray:
    if _is_tensor(value):
        value = value.detach().cpu()
        if value.dtype.is_floating_point:
            value = value.float()
        return value.numpy()
    return np.asarray(value)


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


__all__ = ["VLPProcessor", "pad_regions"]
