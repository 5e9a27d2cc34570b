"""Image processor for vision-language models: any image input -> normalized `pixel_values` `(B, 3, H, W)`
(+ `pixel_mask` `(B, H, W)` when variable-size images are padded into one batch, as ViLT does).

Resizing is done by PIL on 8-bit RGB images, exactly as OpenAI CLIP, open_clip and transformers' PIL backend
(`CLIPImageProcessorPil`, `SiglipImageProcessorPil`) do, so checkpoints trained with those pipelines see the same
pixels. transformers' default torchvision backend resamples slightly differently (up to 2 levels of 255).

This file is copied verbatim next to saved checkpoints as Hub remote code: it imports no `modeling_vlp` module.
"""

import io
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature


OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

_EXPECTED_IMAGE = (
    "a PIL.Image.Image, a numpy array (H, W) or (H, W, C), a torch tensor (C, H, W), encoded image bytes, "
    "or a path to an image file"
)
_CHANNEL_COUNTS = (1, 2, 3, 4)
_RESAMPLING_NAMES = {member.name.lower(): int(member) for member in Image.Resampling}


class VLPImageProcessor(BaseImageProcessor):
    r"""
    Converts images to RGB, resizes them (shortest side or fixed size), center-crops, rescales and normalizes.

    Args:
        do_convert_rgb (`bool`, defaults to `True`):
            Convert every input to 8-bit RGB first. Transparent images (RGBA, LA, P with transparency) are composited
            on white, 16-bit images (I;16, I) are scaled to 8 bits, float images (F) are read in [0, 1] or [0, 255].
            With `False`, inputs must already be 3-channel RGB.
        do_resize (`bool`, defaults to `True`): Whether to resize.
        size (`dict[str, int]`, defaults to `{"shortest_edge": 224}`):
            `{"shortest_edge": N}` resizes the shorter side to N keeping the aspect ratio, the longer side truncated
            (CLIP, open_clip); `{"shortest_edge": N, "longest_edge": M}` does the same, then scales both sides down
            so that the longer one is at most M, rounding each side to the nearest integer (ViLT, DETR: ViLT uses
            `M = int(1333 / 800 * N)`); `{"height": H, "width": W}` resizes to exactly H x W (SigLIP). An int means
            `{"shortest_edge": int}`.
        size_divisor (`int`, *optional*): When resizing, floor both output sides to a multiple of it (ViLT: 32, the
            patch size), so that variable-size images tile into whole patches.
        resample (`int` or `PIL.Image.Resampling` or `str`, defaults to `PIL.Image.Resampling.BICUBIC`):
            PIL resampling filter.
        do_center_crop (`bool`, defaults to `True`): Whether to center-crop after resizing.
        crop_size (`dict[str, int]`, defaults to `{"height": 224, "width": 224}`):
            Crop size; images smaller than it are padded with zeros.
        do_rescale (`bool`, defaults to `True`): Whether to multiply pixel values by `rescale_factor`.
        rescale_factor (`float`, defaults to `1/255`): Rescale factor.
        do_normalize (`bool`, defaults to `True`): Whether to normalize with `image_mean` and `image_std`.
        image_mean (`float` or `list[float]`, defaults to the OpenAI CLIP mean): Per-channel mean.
        image_std (`float` or `list[float]`, defaults to the OpenAI CLIP std): Per-channel standard deviation.
        resize_backend (`str`, defaults to `"pil"`): `"pil"` resizes with PIL (transformers' `*ImageProcessorPil`,
            open_clip); `"torchvision"` resizes a uint8 tensor with antialiasing as transformers' default
            torchvision image processors do. The two differ by a level or two of 255.
        crop_offset_rounding (`str`, defaults to `"floor"`): the crop offset is `(resized - crop) // 2` with
            `"floor"` (transformers) or rounded half to even with `"round"` (torchvision's CenterCrop, so open_clip
            and OpenAI CLIP): one pixel apart when `resized - crop` is 3 modulo 4.
        do_pad (`bool`, defaults to `False`): Pad every image of a batch with zeros at the bottom and right to the
            largest height and width of the batch (after normalization, as ViLT), and return `pixel_mask`
            `(B, H, W)` int64 with 1 on real pixels and 0 on padding.

    transformers' `ViltImageProcessor(size={"shortest_edge": N})` is reproduced by
    `VLPImageProcessor(size={"shortest_edge": N, "longest_edge": int(1333 / 800 * N)}, size_divisor=32, do_pad=True,
    do_center_crop=False, resample="bicubic", image_mean=0.5, image_std=0.5, resize_backend="torchvision")`.
    """

    def __init__(
        self,
        do_convert_rgb: bool = True,
        do_resize: bool = True,
        size: dict[str, int] | int | None = None,
        resample: int | Image.Resampling | str = Image.Resampling.BICUBIC,
        do_center_crop: bool = True,
        crop_size: dict[str, int] | int | None = None,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: float | Sequence[float] | None = None,
        image_std: float | Sequence[float] | None = None,
        resize_backend: str = "pil",
        crop_offset_rounding: str = "floor",
        size_divisor: int | None = None,
        do_pad: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if crop_offset_rounding not in ("floor", "round"):
            raise ValueError(f"crop_offset_rounding must be 'floor' or 'round', got {crop_offset_rounding!r}.")
        self.crop_offset_rounding = crop_offset_rounding
        if resize_backend not in ("pil", "torchvision"):
            raise ValueError(f"resize_backend must be 'pil' or 'torchvision', got {resize_backend!r}.")
        self.resize_backend = resize_backend
        self.do_convert_rgb = do_convert_rgb
        self.do_resize = do_resize
        self.size = _size_dict({"shortest_edge": 224} if size is None else size, "size")
        self.resample = _resampling(resample)
        self.do_center_crop = do_center_crop
        self.crop_size = _size_dict({"height": 224, "width": 224} if crop_size is None else crop_size, "crop_size")
        self.do_rescale = do_rescale
        self.rescale_factor = float(rescale_factor)
        self.do_normalize = do_normalize
        self.image_mean = _channel_values(OPENAI_CLIP_MEAN if image_mean is None else image_mean, "image_mean")
        self.image_std = _channel_values(OPENAI_CLIP_STD if image_std is None else image_std, "image_std")
        if any(value == 0 for value in self.image_std):
            raise ValueError(f"image_std must not contain zeros, got {self.image_std}.")
        self.size_divisor = _size_divisor(size_divisor)
        self.do_pad = bool(do_pad)

    @property
    def model_input_names(self) -> list[str]:
        return ["pixel_values", "pixel_mask"] if self.do_pad else ["pixel_values"]

    def preprocess(
        self,
        images: Any,
        do_convert_rgb: bool | None = None,
        do_resize: bool | None = None,
        size: dict[str, int] | int | None = None,
        resample: int | Image.Resampling | str | None = None,
        do_center_crop: bool | None = None,
        crop_size: dict[str, int] | int | None = None,
        do_rescale: bool | None = None,
        rescale_factor: float | None = None,
        do_normalize: bool | None = None,
        image_mean: float | Sequence[float] | None = None,
        image_std: float | Sequence[float] | None = None,
        size_divisor: int | None = None,
        do_pad: bool | None = None,
        return_tensors: str | None = None,
        **kwargs,
    ) -> BatchFeature:
        """
        Preprocess one image or a batch (a list/tuple, or a 4-D array/tensor). Arguments left as `None` take the
        processor's own values.

        Returns:
            `BatchFeature` with `pixel_values`: `(B, 3, H, W)` float32 with `return_tensors="np"` or `"pt"`; a list
            of `(3, H, W)` arrays when `return_tensors=None` (sizes may differ without a crop, a fixed size or
            padding). With `do_pad`, also `pixel_mask`: `(B, H, W)` int64, 1 on real pixels (a list of `(H, W)`
            arrays when `return_tensors=None`).
        """
        if kwargs:
            raise TypeError(f"{type(self).__name__}.preprocess got unexpected keyword arguments {sorted(kwargs)}.")
        do_convert_rgb = self.do_convert_rgb if do_convert_rgb is None else do_convert_rgb
        do_resize = self.do_resize if do_resize is None else do_resize
        size = self.size if size is None else _size_dict(size, "size")
        resample = self.resample if resample is None else _resampling(resample)
        do_center_crop = self.do_center_crop if do_center_crop is None else do_center_crop
        crop_size = self.crop_size if crop_size is None else _size_dict(crop_size, "crop_size")
        do_rescale = self.do_rescale if do_rescale is None else do_rescale
        rescale_factor = self.rescale_factor if rescale_factor is None else float(rescale_factor)
        do_normalize = self.do_normalize if do_normalize is None else do_normalize
        mean = np.float32(self.image_mean if image_mean is None else _channel_values(image_mean, "image_mean"))
        std = np.float32(self.image_std if image_std is None else _channel_values(image_std, "image_std"))
        size_divisor = self.size_divisor if size_divisor is None else _size_divisor(size_divisor)
        do_pad = self.do_pad if do_pad is None else do_pad

        pixel_values = []
        for index, image in enumerate(_as_image_list(images)):
            image = load_image(image, index)
            if do_convert_rgb:
                try:
                    image = convert_to_rgb(image)
                except ValueError as error:
                    raise ValueError(f"images[{index}]: {error}") from error
            elif image.mode != "RGB":
                raise ValueError(
                    f"images[{index}] has PIL mode {image.mode!r}; with do_convert_rgb=False every image must "
                    "already be RGB."
                )
            if do_resize:
                output_size = _output_size(image, size, size_divisor, index)
            if do_resize and self.resize_backend == "torchvision":
                array = _torchvision_resize(image, output_size, resample)
            else:
                if do_resize:
                    image = image.resize(output_size, resample=resample)
                array = np.asarray(image)
            if do_center_crop:
                array = _center_crop(array, crop_size["height"], crop_size["width"], self.crop_offset_rounding)
            array = array.astype(np.float32)
            if do_rescale:
                array = array * np.float32(rescale_factor)
            if do_normalize:
                array = (array - mean) / std
            pixel_values.append(np.ascontiguousarray(array.transpose(2, 0, 1)))

        if do_pad:
            pixel_values, pixel_mask = _pad_to_largest(pixel_values)
            data = {"pixel_values": pixel_values, "pixel_mask": pixel_mask}
            if return_tensors is None:
                return BatchFeature(data=data)
            stacked = {name: np.stack(arrays) for name, arrays in data.items()}
            return BatchFeature(data=stacked, tensor_type=return_tensors)
        if return_tensors is None:
            return BatchFeature(data={"pixel_values": pixel_values})
        shapes = {array.shape for array in pixel_values}
        if len(shapes) > 1:
            raise ValueError(
                f"images produce pixel arrays of different shapes {sorted(shapes)} that cannot be stacked into one "
                f"tensor; use do_center_crop=True, a fixed size {{'height': H, 'width': W}}, do_pad=True (with a "
                "pixel_mask), or return_tensors=None."
            )
        return BatchFeature(data={"pixel_values": np.stack(pixel_values)}, tensor_type=return_tensors)


def _torchvision_resize(image: Image.Image, output_size: tuple[int, int], resample: int) -> np.ndarray:
    """Resize as transformers' torchvision image processors do (transforms.v2, uint8 tensor, antialiased), unlike PIL's
    resampling by a level or two: converted checkpoints use the backend their source used."""
    import torch
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as tvF

    modes = {
        Image.Resampling.NEAREST: InterpolationMode.NEAREST_EXACT,
        Image.Resampling.BILINEAR: InterpolationMode.BILINEAR,
        Image.Resampling.BICUBIC: InterpolationMode.BICUBIC,
        Image.Resampling.LANCZOS: InterpolationMode.LANCZOS,
        Image.Resampling.BOX: InterpolationMode.BOX,
        Image.Resampling.HAMMING: InterpolationMode.HAMMING,
    }
    width, height = output_size
    tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()  # layout changes the uint8 kernel
    tensor = tvF.resize(tensor, [height, width], interpolation=modes[Image.Resampling(resample)], antialias=True)
    return tensor.permute(1, 2, 0).numpy()


def load_image(image: Any, index: int = 0) -> Image.Image:
    """Turn one image input into a PIL image (any mode). `index` is the position in the batch, used in errors."""
    if isinstance(image, Image.Image):
        _check_not_empty(image.width, image.height, index)
        return image
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _decode(io.BytesIO(bytes(image)), f"images[{index}] ({len(image)} bytes)", index)
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.isfile(path):
            is_url = path.startswith(("http://", "https://"))
            hint = " (URLs are not downloaded; fetch the image first)" if is_url else ""
            raise ValueError(f"images[{index}] is the path {path!r}, which is not an existing file{hint}.")
        with open(path, "rb") as handle:
            return _decode(io.BytesIO(handle.read()), f"images[{index}] (file {path!r})", index)
    if _is_torch_tensor(image):
        return _array_to_pil(_tensor_to_numpy(image), index, channels_first=True)
    if isinstance(image, np.ndarray):
        return _array_to_pil(image, index, channels_first=False)
    raise TypeError(f"images[{index}] has type {type(image).__name__}; expected {_EXPECTED_IMAGE}.")


def convert_to_rgb(image: Image.Image) -> Image.Image:
    """Convert a PIL image of any mode to 8-bit RGB; transparency is composited on white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.asarray(image)
        # 16-bit data must be scaled, not clipped, to 8 bits. Mode "I" also holds 8-bit data (e.g. convert("I")),
        # so it is only treated as 16-bit when some value exceeds 255.
        if image.mode.startswith("I;16") or values.max(initial=0) > 255:
            values = np.clip(values, 0, 65535).astype(np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode == "F":
        return Image.fromarray(_float_to_uint8(np.asarray(image), "the F-mode image")).convert("RGB")
    has_alpha = image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise ValueError(f"Cannot convert PIL mode {image.mode!r} to RGB: {error}") from error


def _as_image_list(images: Any) -> list:
    if images is None:
        raise ValueError(f"images is None; expected {_EXPECTED_IMAGE}, or a list of them.")
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError("images is an empty list; expected at least one image.")
        return list(images)
    if (isinstance(images, np.ndarray) or _is_torch_tensor(images)) and images.ndim == 4:
        return list(images)
    return [images]


def _decode(buffer: io.BytesIO, description: str, index: int) -> Image.Image:
    try:
        image = Image.open(buffer)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"{description} could not be decoded as an image: {error}") from error
    image = ImageOps.exif_transpose(image)
    _check_not_empty(image.width, image.height, index)
    return image


def _check_not_empty(width: int, height: int, index: int) -> None:
    if width == 0 or height == 0:
        raise ValueError(f"images[{index}] is empty (width={width}, height={height}); expected a non-empty image.")


def _is_torch_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _tensor_to_numpy(tensor) -> np.ndarray:
    tensor = tensor.detach().cpu()
    if tensor.is_floating_point():
        tensor = tensor.float()
    return tensor.numpy()


def _array_to_pil(array: np.ndarray, index: int, channels_first: bool) -> Image.Image:
    """Arrays are HW or HWC (numpy), CHW or HW (torch); the other channel layout is accepted when unambiguous."""
    expected = "(C, H, W) or (H, W)" if channels_first else "(H, W) or (H, W, C)"
    if array.ndim == 3:
        first, last = array.shape[0] in _CHANNEL_COUNTS, array.shape[-1] in _CHANNEL_COUNTS
        if first and (channels_first or not last):
            array = np.moveaxis(array, 0, -1)
        elif not last:
            raise ValueError(
                f"images[{index}] is an array of shape {tuple(array.shape)}; expected {expected} with C in 1-4."
            )
    elif array.ndim != 2:
        raise ValueError(f"images[{index}] is an array of shape {tuple(array.shape)}; expected {expected}.")
    _check_not_empty(array.shape[1], array.shape[0], index)
    array = _to_uint8(array, index)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return Image.fromarray(np.ascontiguousarray(array))  # uint8 (H, W[, 2|3|4]) -> mode L, LA, RGB or RGBA


def _to_uint8(array: np.ndarray, index: int) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:
        return np.rint(array / 257.0).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise ValueError(
                f"images[{index}] is an {array.dtype} array with values in [{low}, {high}]; expected values in "
                "[0, 255] (or a uint16 array for 16-bit images)."
            )
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        return _float_to_uint8(array, f"images[{index}]")
    raise ValueError(f"images[{index}] is an array of dtype {array.dtype}; expected an integer, bool or float dtype.")


def _float_to_uint8(array: np.ndarray, description: str) -> np.ndarray:
    """Float images are read in [0, 1] (scaled by 255) or, when some value exceeds 1, in [0, 255]."""
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{description} contains NaN or infinite values.")
    low, high = float(array.min(initial=0.0)), float(array.max(initial=0.0))
    if low < 0 or high > 255:
        raise ValueError(
            f"{description} has float values in [{low:g}, {high:g}]; expected [0, 1] or [0, 255] (pass raw images, "
            "not normalized ones)."
        )
    scaled = array * 255.0 if high <= 1.0 else array
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _pad_to_largest(pixel_values: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Zero-pad `(3, h, w)` arrays at the bottom and right to the largest h and w; masks are 1 on real pixels."""
    height = max(array.shape[1] for array in pixel_values)
    width = max(array.shape[2] for array in pixel_values)
    padded, masks = [], []
    for array in pixel_values:
        _, h, w = array.shape
        padded.append(np.pad(array, ((0, 0), (0, height - h), (0, width - w))))
        mask = np.zeros((height, width), dtype=np.int64)
        mask[:h, :w] = 1
        masks.append(mask)
    return padded, masks


def _output_size(
    image: Image.Image, size: dict[str, int], size_divisor: int | None = None, index: int = 0
) -> tuple[int, int]:
    """(width, height) for PIL. With only `shortest_edge` the long side is truncated (transformers' CLIP, torchvision);
    with `longest_edge` too, both sides are computed in floats and rounded half up, in ViLT's order of operations."""
    width, height = image.size
    if "shortest_edge" not in size:
        output_width, output_height = size["width"], size["height"]
    elif "longest_edge" not in size:
        target = size["shortest_edge"]
        if width <= height:
            output_width, output_height = target, int(target * height / width)
        else:
            output_width, output_height = int(target * width / height), target
    else:
        shorter, longer = size["shortest_edge"], size["longest_edge"]
        if height < width:
            new_height, new_width = shorter, width * (shorter / height)
        else:
            new_height, new_width = height * (shorter / width), shorter
        if max(new_height, new_width) > longer:
            scale = longer / max(new_height, new_width)
            new_height, new_width = new_height * scale, new_width * scale
        output_width, output_height = int(new_width + 0.5), int(new_height + 0.5)
    if size_divisor is not None:
        output_width = output_width // size_divisor * size_divisor
        output_height = output_height // size_divisor * size_divisor
    if output_width == 0 or output_height == 0:
        raise ValueError(
            f"images[{index}] of size {width}x{height} (width x height) resizes to {output_width}x{output_height} "
            f"with size={size} and size_divisor={size_divisor}; its aspect ratio is too extreme for these settings "
            "(crop it, or use a larger size or a smaller size_divisor)."
        )
    return output_width, output_height


def _center_crop(array: np.ndarray, crop_height: int, crop_width: int, rounding: str = "floor") -> np.ndarray:
    height, width = array.shape[:2]
    if crop_height > height or crop_width > width:
        pad_height, pad_width = max(crop_height - height, 0), max(crop_width - width, 0)
        padding = ((pad_height // 2, pad_height - pad_height // 2), (pad_width // 2, pad_width - pad_width // 2))
        array = np.pad(array, padding + ((0, 0),) * (array.ndim - 2))
        height, width = array.shape[:2]
    if rounding == "round":  # torchvision's CenterCrop: round half to even
        top, left = int(round((height - crop_height) / 2.0)), int(round((width - crop_width) / 2.0))
    else:
        top, left = (height - crop_height) // 2, (width - crop_width) // 2
    return array[top : top + crop_height, left : left + crop_width]


def _size_dict(size: Any, name: str) -> dict[str, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        size = {"shortest_edge": size} if name == "size" else {"height": size, "width": size}
    elif isinstance(size, (list, tuple)) and len(size) == 2:
        size = {"height": size[0], "width": size[1]}
    if name == "size":
        allowed = ({"height", "width"}, {"shortest_edge"}, {"shortest_edge", "longest_edge"})
    else:
        allowed = ({"height", "width"},)
    if not isinstance(size, dict) or set(size) not in allowed:
        expected = " or ".join(str(sorted(keys)) for keys in allowed)
        raise ValueError(f"{name} must be a dict with keys {expected}; got {size!r}.")
    if not all(isinstance(value, int) and not isinstance(value, bool) and value > 0 for value in size.values()):
        raise ValueError(f"{name} values must be positive integers; got {size!r}.")
    if size.get("longest_edge", math.inf) < size.get("shortest_edge", 0):
        raise ValueError(f"{name}['longest_edge'] must be >= {name}['shortest_edge']; got {size!r}.")
    return dict(size)


def _size_divisor(size_divisor: Any) -> int | None:
    if size_divisor is None:
        return None
    if not isinstance(size_divisor, int) or isinstance(size_divisor, bool) or size_divisor < 1:
        raise ValueError(f"size_divisor must be None or a positive integer; got {size_divisor!r}.")
    return size_divisor


def _resampling(resample: Any) -> int:
    if isinstance(resample, str) and resample.lower() in _RESAMPLING_NAMES:
        return _RESAMPLING_NAMES[resample.lower()]
    if isinstance(resample, int) and not isinstance(resample, bool) and resample in _RESAMPLING_NAMES.values():
        return int(resample)
    raise ValueError(
        f"resample must be a PIL.Image.Resampling value or one of {sorted(_RESAMPLING_NAMES)}; got {resample!r}."
    )


def _channel_values(values: Any, name: str) -> list[float]:
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        return [float(values)] * 3
    if not isinstance(values, (list, tuple, np.ndarray)) or len(values) != 3:
        raise ValueError(f"{name} must be a float or 3 floats (one per RGB channel); got {values!r}.")
    return [float(value) for value in values]


__all__ = ["VLPImageProcessor", "convert_to_rgb", "load_image"]
