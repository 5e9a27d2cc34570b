"""What the conversion scripts share: the command line, config and weight translation helpers, the CLIP BPE
tokenizer, and the parity check that decides whether a converted checkpoint is written.

A converter turns its source into a `SourceCheckpoint`: our config (a preset with the source's sizes), the source
weights renamed to our names, our processor, and the source's own preprocessing and forward pass. `convert()` then
loads the weights strictly, runs both models on one fixed batch, prints the differences and saves model + processor
only when they agree.
"""

import argparse
import gzip
import logging
import math
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from transformers.image_processing_backends import TorchvisionBackend

from ..configuration_vlp import VLPDualEncoderConfig
from ..hub.push import add_push_arguments, push_after_conversion
from ..modeling_dual_encoder import VLPDualEncoderModel
from ..processors import VLPImageProcessor, VLPProcessor

logger = logging.getLogger("modeling_vlp.conversion")

PARITY_CAPTIONS = (
    "a photo of a cat",
    "A dog running on the BEACH!",
    "two people riding bikes, next to a red car.",
    "an empty room with 3 chairs",
)
# (width, height): square, 2:1, 1:2 and 4:3, down- and up-scaled. These aspect ratios put the center crop on a whole
# pixel offset for the usual crop sizes, where transformers' floor and torchvision's round-half-even agree.
PARITY_IMAGE_SIZES = ((256, 256), (320, 160), (48, 96), (400, 300))
OUTPUT_NAMES = ("logits_per_image", "image_embeds", "text_embeds")


# --------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------


def build_parser(description: str | None) -> argparse.ArgumentParser:
    """A parser with the options every converter has; each script adds how to find its source."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="Folder to write the converted model and processor to.")
    parser.add_argument(
        "--tolerance", type=float, default=1e-4,
        help="Largest max-abs difference of logits_per_image / embeddings accepted (fp32). Default: 1e-4.",
    )  # fmt: skip
    parser.add_argument(
        "--pixel-tolerance", type=float, default=2e-2,
        help="Largest max-abs difference of pixel_values between our image processor and the source's. "
        "Default: 2e-2.",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="Seed of the parity images. Default: 0.")
    add_push_arguments(parser)
    return parser


def setup_logging() -> None:
    """Progress of the conversion loggers on stderr, whatever the root logger's configuration."""
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


# --------------------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------------------


# Fields that transformers' CLIP / SigLIP tower configs and ours name and mean alike.
VIT_FIELDS = (
    "image_size", "patch_size", "num_channels", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "hidden_act", "layer_norm_eps", "attention_dropout",
)  # fmt: skip
TEXT_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "max_position_embeddings", "hidden_act", "layer_norm_eps", "attention_dropout",
)  # fmt: skip
_FLOAT_FIELDS = ("layer_norm_eps", "attention_dropout")


def copy_fields(source, names: Iterable[str]) -> dict:
    """`{name: source.name}` for fields both configs name alike; square sizes given as pairs become ints."""
    fields = {}
    for name in names:
        value = getattr(source, name)
        if name in ("image_size", "patch_size"):
            value = square(value, name)
        elif name in _FLOAT_FIELDS:
            value = float(value)
        fields[name] = value
    return fields


def square(value, name: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"`{name}` must be square to convert, got {value}.")
        value = value[0]
    return int(value)


def single_token_id(value, name: str) -> int | None:
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise ValueError(f"`{name}` must be one token id to convert, got {value}.")
        value = value[0]
    return value


def logit_scale_max_for(logit_scale: torch.Tensor, default: float | None) -> float | None:
    """Keep the preset's clamp unless the source's learned temperature lies above it (the clamp would change it)."""
    # Compared in the weight's dtype, as the model clamps it: float32(log(100)), OpenAI's value, is not clamped.
    limit = torch.tensor(math.log(default), dtype=logit_scale.dtype) if default is not None else None
    if limit is not None and bool(logit_scale.reshape(()) > limit):
        logger.info(f"exp(logit_scale) = {float(logit_scale.exp()):.4g} exceeds {default}: not clamping it.")
        return None
    return default


# --------------------------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------------------------


def load_state_dict_file(path: str) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file or a `torch.save`d state dict (also `{"state_dict": ...}` training
    checkpoints, with a DistributedDataParallel "module." prefix stripped)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"`--checkpoint` {path!r} is not a file.")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state_dict = load_file(path)
    else:
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
        except RuntimeError as error:
            raise ValueError(
                f"{path!r} is not a plain state dict that `torch.load(weights_only=True)` reads (a TorchScript "
                f"archive, such as OpenAI's original .pt files, is not supported): {error}"
            ) from error
    if isinstance(state_dict, dict) and isinstance(state_dict.get("state_dict"), dict):
        state_dict = state_dict["state_dict"]
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"{path!r} does not hold a state dict (a mapping of names to tensors).")
    if state_dict and all(key.startswith("module.") for key in state_dict):
        state_dict = {key[len("module.") :]: value for key, value in state_dict.items()}
    return state_dict


# A transformers BERT layer's weights (anchored by the caller's prefix rules) -> a post-norm `VLPTransformerLayer`'s.
BERT_LAYER_RULES = (
    (r"\.attention\.self\.query\.", ".self_attn.q_proj."),
    (r"\.attention\.self\.key\.", ".self_attn.k_proj."),
    (r"\.attention\.self\.value\.", ".self_attn.v_proj."),
    (r"\.attention\.output\.dense\.", ".self_attn.out_proj."),
    (r"\.attention\.output\.LayerNorm\.", ".layer_norm1."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
    (r"\.output\.LayerNorm\.", ".layer_norm2."),
)


def rename_keys(state_dict: dict[str, torch.Tensor], rules: Iterable[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Apply every `(regex, replacement)` rule, in order, to every key. Keys no rule touches keep their name (the
    strict load reports them if they are not ours)."""
    rules = [(re.compile(pattern), replacement) for pattern, replacement in rules]
    renamed = {}
    for key, value in state_dict.items():
        new_key = key
        for pattern, replacement in rules:
            new_key = pattern.sub(replacement, new_key)
        if new_key in renamed:
            raise ValueError(f"Two source weights map to {new_key!r} (the second is {key!r}).")
        renamed[new_key] = value
    return renamed


def split_fused_qkv(state_dict: dict[str, torch.Tensor], fused: str = "in_proj_") -> dict[str, torch.Tensor]:
    """`nn.MultiheadAttention`'s stacked `<prefix>.in_proj_weight (3D, D)` / `in_proj_bias (3D,)` ->
    `<prefix>.{q,k,v}_proj.{weight,bias}` (chunks in q, k, v order)."""
    split = {}
    for key, value in state_dict.items():
        prefix, _, name = key.rpartition(".")
        if not name.startswith(fused):
            split[key] = value
            continue
        kind = name[len(fused) :]  # "weight" or "bias"
        if value.shape[0] % 3:
            raise ValueError(f"{key!r} has shape {tuple(value.shape)}; expected a first dimension divisible by 3.")
        for part, chunk in zip(("q", "k", "v"), value.chunk(3, dim=0)):
            split[f"{prefix}.{part}_proj.{kind}"] = chunk.contiguous()
    return split


def load_converted(
    config, state_dict: dict[str, torch.Tensor], model_class: type | None = None, new_prefixes: tuple[str, ...] = ()
) -> torch.nn.Module:
    """Our model (`model_class`, default `VLPDualEncoderModel`) with exactly the converted weights. Weights under
    `new_prefixes` (heads the source does not have) keep a seeded fresh initialisation; any other missing,
    unexpected or mis-shaped weight is an error."""
    from transformers.initialization import no_init_weights

    model_class = model_class or VLPDualEncoderModel
    if new_prefixes:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = model_class(config).eval()
    else:
        with no_init_weights():  # every weight is overwritten below; random initialisation would only cost time
            model = model_class(config).eval()
    expected = model.state_dict()
    new = sorted(key for key in set(expected) - set(state_dict) if key.startswith(tuple(new_prefixes)))
    missing = sorted(set(expected) - set(state_dict) - set(new))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{key}: source {tuple(state_dict[key].shape)} vs ours {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(state_dict))
        if state_dict[key].shape != expected[key].shape
    ]
    if missing or unexpected or mismatched:
        raise ValueError(
            "The converted weights do not fit the converted config:\n"
            f"  missing ({len(missing)}): {missing}\n  unexpected ({len(unexpected)}): {unexpected}\n"
            f"  shape mismatches ({len(mismatched)}): {mismatched}"
        )
    if new:
        logger.info(f"Not in the source, freshly initialised ({len(new)}): {', '.join(new)}")
    weights = {key: value.to(torch.float32) for key, value in state_dict.items()}
    model.load_state_dict({**{key: expected[key] for key in new}, **weights}, strict=True)
    return model


# --------------------------------------------------------------------------------------------------------------
# Processors
# --------------------------------------------------------------------------------------------------------------


def clip_bpe_tokenizer(
    pad_token: str = "<|endoftext|>", model_max_length: int = 77, bpe_path: str | None = None
):
    """A transformers `CLIPTokenizer` built offline from open_clip's `bpe_simple_vocab_16e6.txt.gz`, with the
    vocabulary open_clip's `SimpleTokenizer` builds (256 bytes, 256 bytes + "</w>", the 48,894 merges, then the two
    special tokens: ids 49406 and 49407, the same as OpenAI's `vocab.json`).

    `pad_token="!"` (id 0) reproduces `open_clip.tokenize`, which pads with zeros; the pad token is then not matched
    as a special token inside captions (`split_special_tokens=True`), so a "!" in text still tokenizes as text.
    """
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    with gzip.open(bpe_path or default_bpe()) as handle:
        lines = handle.read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    byte_tokens = list(bytes_to_unicode().values())
    tokens = byte_tokens + [token + "</w>" for token in byte_tokens] + ["".join(merge) for merge in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    is_vocab_token = pad_token in vocab and pad_token not in ("<|startoftext|>", "<|endoftext|>")
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        pad_token=pad_token,
        model_max_length=model_max_length,
        split_special_tokens=is_vocab_token,
    )


def image_processor_from_transformers(source) -> VLPImageProcessor:
    """Our image processor configured like a transformers image processor (CLIP / SigLIP style)."""
    settings = source.to_dict()
    size = {key: value for key, value in (settings.get("size") or {}).items() if value is not None}
    if set(size) not in ({"shortest_edge"}, {"height", "width"}):
        raise ValueError(f"Cannot convert image processor `size` {size}; expected shortest_edge or height/width.")
    crop_size = {key: value for key, value in (settings.get("crop_size") or {}).items() if value is not None}
    kwargs = dict(
        do_convert_rgb=settings.get("do_convert_rgb") is not False,
        do_resize=bool(settings.get("do_resize", True)),
        size=size,
        resample=int(Image.Resampling.BICUBIC if settings.get("resample") is None else settings["resample"]),
        do_center_crop=bool(settings.get("do_center_crop")),
        do_rescale=bool(settings.get("do_rescale", True)),
        rescale_factor=float(settings.get("rescale_factor", 1 / 255)),
        do_normalize=bool(settings.get("do_normalize", True)),
        image_mean=list(settings["image_mean"]),
        image_std=list(settings["image_std"]),
    )
    if crop_size:
        kwargs["crop_size"] = crop_size
    # PIL and torchvision resampling differ by a level or two of 255: resize the way the source does.
    kwargs["resize_backend"] = "torchvision" if isinstance(source, TorchvisionBackend) else "pil"
    return VLPImageProcessor(**kwargs)


def load_image_processor(source_dir: str):
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(source_dir)


def make_processor(image_processor: VLPImageProcessor, tokenizer, text_kwargs: dict) -> VLPProcessor:
    """The converted processor; `text_kwargs` (the source's padding / truncation) are saved as its defaults."""
    return VLPProcessor(image_processor=image_processor, tokenizer=tokenizer, text_kwargs=text_kwargs)


# --------------------------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------------------------


@dataclass
class SourceCheckpoint:
    """What a converter makes of its source.

    `reference_inputs(images, texts)` runs the source's own preprocessing (image processor and tokenizer, called
    with `text_kwargs`) and returns model inputs named as ours; `reference_outputs(inputs)` runs the source model on
    them and returns at least `OUTPUT_NAMES`.
    """

    name: str
    config: VLPDualEncoderConfig
    state_dict: dict[str, torch.Tensor]
    processor: VLPProcessor
    reference_inputs: Callable[[list, list[str]], dict[str, torch.Tensor]]
    reference_outputs: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]
    text_kwargs: dict = field(default_factory=dict)


def from_transformers_folder(
    source_dir: str,
    model_class: type,
    translate_config: Callable,
    translate_state_dict: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
    default_tokenizer: Callable | None = None,
    default_image_processor: Callable | None = None,
) -> SourceCheckpoint:
    """A `SourceCheckpoint` for a transformers dual encoder saved with `save_pretrained` (CLIP, SigLIP).

    `translate_config(source_model, tokenizer)` returns our config. The folder's tokenizer is reused as is; its
    image processor is translated into ours. `default_tokenizer(source_config)` /
    `default_image_processor(source_config)` stand in when the folder has none.
    """
    if not os.path.isdir(source_dir):
        raise FileNotFoundError(f"`--source` {source_dir!r} is not a folder.")
    model = model_class.from_pretrained(source_dir, dtype=torch.float32).eval()
    tokenizer = _load_or_default("tokenizer", source_dir, _load_tokenizer, default_tokenizer, model.config)
    image_processor = _load_or_default(
        "image processor", source_dir, load_image_processor, default_image_processor, model.config
    )
    config = translate_config(model, tokenizer)
    text_kwargs = dict(padding="max_length", max_length=config.text_config.max_position_embeddings, truncation=True)

    def reference_inputs(images, texts):
        inputs = dict(tokenizer(texts, return_tensors="pt", **text_kwargs))
        inputs["pixel_values"] = image_processor(images, return_tensors="pt")["pixel_values"]
        return inputs

    def reference_outputs(inputs):
        return model(**inputs)

    return SourceCheckpoint(
        name=f"{model_class.__name__} from {source_dir}",
        config=config,
        state_dict=translate_state_dict(model.state_dict()),
        processor=make_processor(image_processor_from_transformers(image_processor), tokenizer, text_kwargs),
        reference_inputs=reference_inputs,
        reference_outputs=reference_outputs,
        text_kwargs=text_kwargs,
    )


TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.json", "spiece.model", "tokenizer.model")


def _load_tokenizer(source_dir: str):
    from transformers import AutoTokenizer

    # Without tokenizer files AutoTokenizer still builds one, with an empty vocabulary, from config.json.
    if not any(os.path.isfile(os.path.join(source_dir, name)) for name in TOKENIZER_FILES):
        raise OSError(f"no tokenizer files ({', '.join(TOKENIZER_FILES)})")
    return AutoTokenizer.from_pretrained(source_dir)


def _load_or_default(what: str, source_dir: str, load: Callable, default: Callable | None, source_config):
    try:
        return load(source_dir)
    except (OSError, ValueError) as error:
        if default is None:
            raise ValueError(
                f"{source_dir!r} has no usable {what}, and this converter has no default: {error}"
            ) from error
        logger.warning(f"No usable {what} in {source_dir!r} ({error}); using the default one.")
        return default(source_config)


# --------------------------------------------------------------------------------------------------------------
# Parity
# --------------------------------------------------------------------------------------------------------------


def parity_images(seed: int = 0, sizes: Iterable[tuple[int, int]] = PARITY_IMAGE_SIZES) -> list[Image.Image]:
    """Seeded RGB images of different sizes: random colour blobs (a random low-resolution grid upsampled), plus
    some pixel noise, so that they are neither flat nor pure noise."""
    rng = np.random.RandomState(seed)
    images = []
    for width, height in sizes:
        grid = rng.randint(0, 256, size=(max(2, height // 16), max(2, width // 16), 3)).astype(np.uint8)
        blobs = np.asarray(Image.fromarray(grid).resize((width, height), Image.Resampling.BILINEAR), dtype=np.int16)
        noisy = np.clip(blobs + rng.randint(-12, 13, size=blobs.shape), 0, 255).astype(np.uint8)
        images.append(Image.fromarray(noisy, mode="RGB"))
    return images


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        raise ValueError(f"Cannot compare tensors of shapes {tuple(a.shape)} and {tuple(b.shape)}.")
    return (a.detach().double() - b.detach().double()).abs().max().item()


@dataclass
class ParityReport:
    model_diffs: dict[str, float]  # both models on the source's inputs
    end_to_end_diffs: dict[str, float]  # each model on its own processor's inputs
    pixel_diff: float
    input_ids_equal: bool
    tolerance: float
    pixel_tolerance: float

    @property
    def ok(self) -> bool:
        return (
            max(self.model_diffs.values()) <= self.tolerance
            and self.input_ids_equal
            and self.pixel_diff <= self.pixel_tolerance
        )

    def lines(self) -> list[str]:
        lines = ["Parity, both models on the source's inputs (fp32):"]
        lines += [f"  {name:<17} max |diff| = {diff:.3e}" for name, diff in self.model_diffs.items()]
        lines.append(f"  (tolerance {self.tolerance:g})")
        lines.append("Processor:")
        lines.append(f"  input_ids identical to the source tokenizer: {'yes' if self.input_ids_equal else 'NO'}")
        lines.append(f"  pixel_values max |diff| = {self.pixel_diff:.3e} (tolerance {self.pixel_tolerance:g})")
        lines.append("End to end, each model through its own processor:")
        lines += [f"  {name:<17} max |diff| = {diff:.3e}" for name, diff in self.end_to_end_diffs.items()]
        lines.append("PASSED" if self.ok else "FAILED")
        return lines


@torch.no_grad()
def check_parity(
    source: SourceCheckpoint,
    model: VLPDualEncoderModel,
    tolerance: float = 1e-4,
    pixel_tolerance: float = 2e-2,
    seed: int = 0,
    images: list | None = None,
    texts: Iterable[str] = PARITY_CAPTIONS,
) -> ParityReport:
    images = parity_images(seed) if images is None else images
    texts = list(texts)
    reference_inputs = source.reference_inputs(images, texts)
    reference = source.reference_outputs(reference_inputs)
    ours = model(**reference_inputs)
    model_diffs = {name: max_abs_diff(reference[name], ours[name]) for name in OUTPUT_NAMES}

    converted_inputs = source.processor(images=images, text=texts, return_tensors="pt", **source.text_kwargs)
    input_ids_equal = torch.equal(converted_inputs["input_ids"], reference_inputs["input_ids"])
    pixel_diff = max_abs_diff(converted_inputs["pixel_values"], reference_inputs["pixel_values"])
    end_to_end = model(**converted_inputs)
    end_to_end_diffs = {name: max_abs_diff(reference[name], end_to_end[name]) for name in OUTPUT_NAMES}
    return ParityReport(model_diffs, end_to_end_diffs, pixel_diff, input_ids_equal, tolerance, pixel_tolerance)


# --------------------------------------------------------------------------------------------------------------
# The conversion
# --------------------------------------------------------------------------------------------------------------


def convert(source: SourceCheckpoint, args: argparse.Namespace) -> int:
    """Load, check parity, save, and push with --push-to-hub. Returns the exit status: 0 when saved (and pushed),
    1 when parity failed (nothing saved) or the push failed (saved, not pushed)."""
    logger.info(f"Converting {source.name} into {type(source.config).__name__}")
    model = load_converted(source.config, source.state_dict)
    num_parameters = sum(parameter.numel() for parameter in model.parameters())
    logger.info(f"Loaded {len(source.state_dict)} tensors ({num_parameters / 1e6:.1f}M parameters), strict.")
    report = check_parity(source, model, args.tolerance, args.pixel_tolerance, args.seed)
    for line in report.lines():
        print(line)
    if not report.ok:
        logger.error("Parity failed: nothing written.")
        return 1
    save(model, source.processor, args.output)
    parity = {**report.model_diffs, **{f"{name} (end to end)": diff for name, diff in report.end_to_end_diffs.items()}}
    return push_after_conversion(
        args, args.output, source=source.name, parity=parity, tolerance=args.tolerance,
        source_path=getattr(args, "source", None),
    )  # fmt: skip


def save(model: VLPDualEncoderModel, processor: VLPProcessor, output_dir: str) -> None:
    os.makedirs(output_dir, exist_ok=True)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    logger.info(f"Saved model and processor to {output_dir}")
