"""Captioning evaluation: COCO-style tokenisation and metrics (BLEU, CIDEr-D, METEOR by `pycocoevalcap`), caption
generation in batches and `evaluate_captioning` over a split; used by `vlp pretrain` and `vlp evaluate` for the
captioning family, the `vlp_caption` metric and the captioning pipeline (`caption_token_budget`)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from .embeddings import _check_one_per_prediction, _eval_mode, _model_device, _model_dtype

_COCO_TOKEN = re.compile(
    r"[^\W_]+(?=n't\b)"  # "don't" -> "do" "n't", as PTB splits clitics
    r"|n't\b|'(?:s|re|ve|ll|d|m)\b"
    r"|\d+(?:[.,]\d+)+"  # "2.5", "1,000" stay one token
    r"|[^\W_]+(?:-[^\W_]+)*"  # words, hyphenated ones whole ("black-and-white")
    r"|\S"
)


def coco_tokenize(text: str) -> str:
    """A caption as the COCO caption evaluation compares it: lowercased, PTB-style tokens joined by spaces, with
    punctuation removed ("A dog's ball, red." -> "a dog 's ball red"). Plain Python; the toolkit runs Stanford's
    PTBTokenizer in Java, which this follows for English captions."""
    if not isinstance(text, str):
        raise TypeError(f"caption has type {type(text).__name__}; expected str.")
    tokens = _COCO_TOKEN.findall(text.replace("\n", " ").lower())
    return " ".join(token for token in tokens if token not in _COCO_PUNCTUATION)


def caption_metrics(
    predictions: Sequence[str], references: Sequence[Sequence[str]], meteor: bool | None = None
) -> dict[str, float]:
    """COCO captioning metrics (all as percents, x100, as captioning papers report them) of one generated caption
    per image against its reference captions, computed by `pycocoevalcap` on `coco_tokenize`d text.

    Returns:
        `bleu_1` ... `bleu_4`: corpus BLEU (pycocoevalcap's `Bleu(4)`, closest reference length).
        `cider`: CIDEr-D (pycocoevalcap's `Cider`: sigma 6, clipped counts, x10 inside), whose document frequencies
            come from the references of this very corpus: one image alone scores 0, and the figure is meaningful
            over a whole split only.
        `meteor`: METEOR 1.5 (pycocoevalcap's `Meteor`, a Java program), only when `meteor` is True, or None (the
            default) and a `java` executable is on the PATH; the key is left out otherwise.
    """
    import contextlib
    import io
    import shutil

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    if isinstance(predictions, str) or isinstance(references, str):
        raise ValueError("predictions and references must be lists (one item per image), got a str")
    _check_one_per_prediction(
        predictions, references, "references", "; expected one list of reference captions per prediction."
    )
    for index, refs in enumerate(references):
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(f"references[{index}] must be a non-empty list of captions, got {refs!r}")
    gts = {index: [coco_tokenize(ref) for ref in refs] for index, refs in enumerate(references)}
    res = {index: [coco_tokenize(prediction)] for index, prediction in enumerate(predictions)}
    # pycocoevalcap prints its BLEU statistics to stdout, which belongs to the caller (`vlp evaluate` prints JSON).
    with contextlib.redirect_stdout(io.StringIO()):
        bleu, _ = Bleu(4).compute_score(gts, res)
        cider, _ = Cider().compute_score(gts, res)
    metrics = {f"bleu_{n + 1}": 100.0 * float(score) for n, score in enumerate(bleu)}
    metrics["cider"] = 100.0 * float(cider)
    if meteor is None:
        meteor = shutil.which("java") is not None
    if meteor:
        from pycocoevalcap.meteor.meteor import Meteor

        scorer = Meteor()
        try:
            score, _ = scorer.compute_score(gts, res)
        finally:
            del scorer  # stops the Java process
        metrics["meteor"] = 100.0 * float(score)
    return metrics


def caption_token_budget(model, max_new_tokens: int | None = None, prompt_length: int = 1) -> int:
    """`max_new_tokens`, or the default: `DEFAULT_CAPTION_TOKENS` capped by the decoder positions left after a
    `prompt_length`-token prompt (the start token alone: 1)."""
    if max_new_tokens is not None:
        return max_new_tokens
    positions = model.config.text_config.max_position_embeddings
    return max(1, min(DEFAULT_CAPTION_TOKENS, positions - prompt_length))


def generate_captions(
    model,
    processor,
    images: Sequence,
    batch_size: int = 64,
    max_new_tokens: int | None = None,
    num_beams: int = 1,
    show_progress: bool = True,
    **generate_kwargs,
) -> list[str]:
    """One caption per image by `model.generate` (greedy with `num_beams=1`), decoded without special tokens.

    `images` is any sliceable sequence of PIL images (a list, or a `datasets` image column, decoded one batch at a
    time); `processor` holds the image processor and the tokenizer (a `VLPProcessor`). `max_new_tokens` defaults to
    `caption_token_budget(model)`; `generate_kwargs` go to `generate` (`do_sample`, `repetition_penalty`, ...).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    image_processor = getattr(processor, "image_processor", processor)
    tokenizer = getattr(processor, "tokenizer", processor)
    device, dtype = _model_device(model), _model_dtype(model)
    max_new_tokens = caption_token_budget(model, max_new_tokens)
    captions = []
    with _eval_mode(model), torch.no_grad():
        for start in tqdm(range(0, len(images), batch_size), desc="Writing captions", disable=not show_progress):
            batch = [image.convert("RGB") for image in images[start : start + batch_size]]
            pixel_values = image_processor(images=batch, return_tensors="pt")["pixel_values"]
            sequences = model.generate(
                pixel_values=pixel_values.to(device=device, dtype=dtype), max_new_tokens=max_new_tokens,
                num_beams=num_beams, **generate_kwargs,
            )  # fmt: skip
            captions.extend(text.strip() for text in tokenizer.batch_decode(sequences, skip_special_tokens=True))
    if not captions:
        raise ValueError("images is empty")
    return captions


def caption_references(eval_dataset) -> list[list[str]]:
    """The reference captions of each row: its `captions` list when the dataset has one (empty lists fall back to
    `caption`), else its `caption`."""
    columns = eval_dataset.column_names
    if "captions" not in columns and "caption" not in columns:
        raise ValueError(f"eval_dataset needs a 'captions' (list) or 'caption' column, found {columns}")
    if "captions" in columns:
        singles = eval_dataset["caption"] if "caption" in columns else [None] * len(eval_dataset)
        references = []
        for index, (captions, caption) in enumerate(zip(eval_dataset["captions"], singles)):
            refs = [text for text in (captions or []) if isinstance(text, str) and text.strip()] or (
                [caption] if caption else []
            )
            if not refs:
                raise ValueError(f"row {index} of eval_dataset has no reference caption (captions={captions!r})")
            references.append(refs)
        return references
    return [[caption] for caption in eval_dataset["caption"]]


def evaluate_captioning(
    model,
    processor,
    eval_dataset,
    batch_size: int = 64,
    max_new_tokens: int | None = None,
    num_beams: int = 1,
    show_progress: bool = True,
    meteor: bool | None = None,
    return_predictions: bool = False,
):
    """COCO caption metrics (`caption_metrics`: `bleu_1` ... `bleu_4`, `cider`, and `meteor` with Java) of the
    captions `generate_captions` writes for the `image` column of `eval_dataset`, against each row's references
    (`caption_references`: its `captions` list, else its `caption`), plus `num_images`. With `return_predictions`,
    `(metrics, predictions, references)`."""
    if "image" not in eval_dataset.column_names:
        raise ValueError(f"eval_dataset needs an 'image' column, found {eval_dataset.column_names}")
    if len(eval_dataset) == 0:
        raise ValueError("eval_dataset is empty")
    references = caption_references(eval_dataset)
    predictions = generate_captions(
        model, processor, eval_dataset["image"], batch_size, max_new_tokens, num_beams, show_progress
    )
    metrics = caption_metrics(predictions, references, meteor=meteor)
    metrics["num_images"] = float(len(predictions))
    return (metrics, predictions, references) if return_predictions else metrics


# What the COCO caption toolkit's PTBTokenizer (a Java program) drops after tokenising: quotes, brackets (its
# -LRB- ... tokens) and sentence punctuation. Other symbols ("&", "%", "$") stay tokens.
_COCO_PUNCTUATION = frozenset(["''", "'", "``", "`", '"', "(", ")", "[", "]", "{", "}", ".", "?", "!", ",", ":",
                               "-", "--", "...", ";"])  # fmt: skip

# New tokens of a caption when the caller names no limit: scene and COCO captions fit with room to spare.
DEFAULT_CAPTION_TOKENS = 40
