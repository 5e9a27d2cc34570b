"""Our dual encoders in LAION's CLIP_benchmark (`pip install clip-benchmark`): a loader for its model registry and
the translation of its retrieval metric names into ours.

CLIP_benchmark picks a model loader by `--model_type` from `clip_benchmark.models.TYPE2FUNC` (its `MODEL_TYPES`
fix the command line's choices); a loader returns `(model, transform, tokenizer)`: a module with `encode_image` /
`encode_text`, a PIL image -> tensor transform and a list of texts -> tokens callable. `register()` adds ours as
"modeling_vlp", so either

    python -m modeling_vlp.evaluation.clip_benchmark eval --model_type modeling_vlp --pretrained MODEL_DIR \\
        --dataset flickr30k --dataset_root DATA --task zeroshot_retrieval

(CLIP_benchmark's own command line, after the registration), or in Python

    from modeling_vlp.evaluation.clip_benchmark import register
    register()  # then clip_benchmark.cli.main(), or clip_benchmark.models.load_clip("modeling_vlp", ...)

`--pretrained` (or `--model` when `--pretrained` is empty) is a saved model folder or Hub id with its processor
(what `vlp pretrain` / `vlp convert` write). The `clip_benchmark` console script itself cannot see the registration
(it imports its registry fresh); run it through this module.

Names and conventions: CLIP_benchmark's `image_retrieval_recall@k` is our text-to-image `t2i_r@k` (a text query
retrieves images), its `text_retrieval_recall@k` our image-to-text `i2t_r@k`; it reports fractions, we report
percentages (`to_clip_benchmark_metrics`). It ranks with `torch.topk`, which breaks a tie between equal scores by
position, where our `retrieval_metrics` counts a tie as a miss (`retrieval_tie_counts` says how many queries a tie
decided): without ties the recalls agree exactly; with them ours can be lower.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch
from torch import nn
from transformers import AutoModel, AutoProcessor

from .embeddings import _embeddings, _text_max_length

MODEL_TYPE = "modeling_vlp"


class CLIPBenchmarkModel(nn.Module):
    """A dual encoder with CLIP_benchmark's interface: `encode_image(pixel_values)` and `encode_text(tokens)` give the
    projected embeddings (CLIP_benchmark normalises them itself). `tokens` is what `CLIPBenchmarkTokenizer` returns
    (input ids and attention mask) or a plain tensor of input ids."""

    def __init__(self, model: nn.Module):
        super().__init__()
        for method in ("get_image_features", "get_text_features"):
            if not hasattr(model, method):
                raise ValueError(f"A {type(model).__name__} has no `{method}`: CLIP_benchmark needs a dual encoder.")
        self.model = model

    def encode_image(self, pixel_values: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        dtype = next(p.dtype for p in self.model.parameters() if p.is_floating_point())
        embeds = _embeddings(self.model.get_image_features(pixel_values=pixel_values.to(dtype)), "get_image_features")
        return nn.functional.normalize(embeds, dim=-1) if normalize else embeds

    def encode_text(self, tokens, normalize: bool = False) -> torch.Tensor:
        inputs = {"input_ids": tokens} if isinstance(tokens, torch.Tensor) else dict(tokens)
        embeds = _embeddings(self.model.get_text_features(**inputs), "get_text_features")
        return nn.functional.normalize(embeds, dim=-1) if normalize else embeds


class CLIPBenchmarkTransform:
    """PIL image -> `(channels, height, width)` pixel values, through our image processor."""

    def __init__(self, image_processor):
        self.image_processor = image_processor

    def __call__(self, image) -> torch.Tensor:
        return self.image_processor(images=[image.convert("RGB")], return_tensors="pt")["pixel_values"][0]


class CLIPBenchmarkTokenizer:
    """Texts -> a `BatchEncoding` of `input_ids` and `attention_mask` (padded, truncated to the text tower's
    positions), which CLIP_benchmark moves with `.to(device)` and hands to `encode_text`; tokenized as
    `encode_texts` does for `vlp evaluate`."""

    def __init__(self, tokenizer, max_length: int | None = None):
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, texts: str | Sequence[str]):
        texts = [texts] if isinstance(texts, str) else list(texts)
        encoded = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return encoded.__class__({name: encoded[name] for name in ("input_ids", "attention_mask") if name in encoded})


def load_modeling_vlp(
    model_name: str, pretrained: str | None = None, device: str | torch.device = "cpu", cache_dir: str | None = None,
    **kwargs,
):  # fmt: skip
    """CLIP_benchmark's loader contract: `(model, transform, tokenizer)` of the folder or Hub id `pretrained`
    (`model_name` when `pretrained` is empty), in eval mode on `device`. Extra keyword arguments go to
    `from_pretrained` (e.g. `dtype`, `trust_remote_code`)."""
    path = pretrained or model_name
    model = AutoModel.from_pretrained(path, cache_dir=cache_dir, **kwargs).to(device).eval()
    processor = AutoProcessor.from_pretrained(path, cache_dir=cache_dir)
    tokenizer = getattr(processor, "tokenizer", processor)
    return (
        CLIPBenchmarkModel(model).eval(),
        CLIPBenchmarkTransform(getattr(processor, "image_processor", processor)),
        CLIPBenchmarkTokenizer(tokenizer, _text_max_length(model, tokenizer)),
    )


def register(model_type: str = MODEL_TYPE) -> None:
    """Add `load_modeling_vlp` to CLIP_benchmark's registry as `model_type` (idempotent)."""
    import clip_benchmark.models as registry

    registry.TYPE2FUNC[model_type] = load_modeling_vlp
    if model_type not in registry.MODEL_TYPES:
        registry.MODEL_TYPES.append(model_type)  # the list object its command line reads its choices from


def to_clip_benchmark_metrics(metrics: dict[str, float], ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Our `retrieval_metrics` (percent) under CLIP_benchmark's names (fractions): `image_retrieval_recall@k` =
    `t2i_r@k` / 100, `text_retrieval_recall@k` = `i2t_r@k` / 100."""
    translated = {}
    for k in ks:
        translated[f"image_retrieval_recall@{k}"] = metrics[f"t2i_r@{k}"] / 100
        translated[f"text_retrieval_recall@{k}"] = metrics[f"i2t_r@{k}"] / 100
    return translated


def main(argv: Sequence[str] | None = None) -> int:
    """CLIP_benchmark's command line with "modeling_vlp" registered."""
    from clip_benchmark import cli

    register()
    sys.argv = [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
    cli.main()
    return 0


__all__ = [
    "CLIPBenchmarkModel",
    "CLIPBenchmarkTokenizer",
    "CLIPBenchmarkTransform",
    "load_modeling_vlp",
    "register",
    "to_clip_benchmark_metrics",
]


if __name__ == "__main__":
    sys.exit(main())
