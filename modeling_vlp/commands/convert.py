"""`vlp convert SOURCE_KIND --source ... --output ...`: convert a published checkpoint, proving parity.

Each source kind is one converter of `modeling_vlp.conversion` (also runnable as `python -m
modeling_vlp.conversion.convert_<kind>`); its options follow the kind (`vlp convert clip --help`).
"""

from collections.abc import Callable, Sequence

from ..conversion import (
    convert_albef,
    convert_blip,
    convert_blip_retrieval,
    convert_clip,
    convert_lxmert,
    convert_open_clip,
    convert_siglip,
    convert_to_open_clip,
    convert_vilt,
    convert_visualbert,
)
from .arguments import run_subcommand


CONVERTERS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "clip": (convert_clip.main, "transformers CLIPModel folder -> dual encoder"),
    "siglip": (convert_siglip.main, "transformers SiglipModel folder -> dual encoder (sigmoid loss)"),
    "open_clip": (convert_open_clip.main, "open_clip model name + checkpoint -> dual encoder (CoCa: captioning)"),
    "vilt": (convert_vilt.main, "transformers ViLT folder -> unified single-stream (patches)"),
    "visualbert": (convert_visualbert.main, "transformers VisualBERT folder -> unified single-stream (regions)"),
    "lxmert": (convert_lxmert.main, "transformers LXMERT folder -> fusion encoder (co-attention, regions)"),
    "blip": (convert_blip.main, "transformers BlipForConditionalGeneration folder -> captioning"),
    "blip_retrieval": (
        convert_blip_retrieval.main, "transformers BlipForImageTextRetrieval folder -> fusion encoder (ITC + ITM)"
    ),
    "albef": (convert_albef.main, "ALBEF state dict (torchmultimodal / original / LAVIS) -> fusion encoder (merge)"),
    # The other direction: one of our dual encoders out to open_clip.
    "to_open_clip": (convert_to_open_clip.main, "our CLIP-shaped dual encoder folder -> open_clip config + weights"),
}


def _usage() -> str:
    lines = ["usage: vlp convert SOURCE_KIND --source ... --output ... [options]", "", "source kinds:"]
    lines += [f"  {name:<12} {summary}" for name, (_, summary) in CONVERTERS.items()]
    lines += ["", "`vlp convert SOURCE_KIND --help` lists the options of a converter."]
    return "\n".join(lines)


def convert_command(argv: Sequence[str]) -> int:
    def unknown(kind: str) -> str:
        return f"vlp convert: unknown source kind {kind!r}; expected one of {', '.join(CONVERTERS)}."

    return run_subcommand(argv, CONVERTERS, _usage(), unknown)


__all__ = ["CONVERTERS", "convert_command"]
