"""SentencePiece caption tokenizer, trainable offline from an iterator of captions.

Every encoded sequence is `<s> ... </s>` so that text encoders can pool the EOS position; `<mask>` exists for masked
language modeling. Lowercasing (NFKC + case folding) is part of the trained SentencePiece model, so it travels with
the saved `spiece.model`.

This file is copied verbatim next to saved checkpoints as Hub remote code: it imports no `modeling_vlp` module.
"""

import io
import os
import tempfile
from collections.abc import Iterable, Iterator

import sentencepiece as spm
from transformers.tokenization_utils_sentencepiece import SentencePieceBackend


SPECIAL_PIECES = {"pad": "<pad>", "unk": "<unk>", "bos": "<s>", "eos": "</s>", "mask": "<mask>"}
# The trainer options that fix the special-token layout; train_from_iterator refuses to let them be overridden.
_RESERVED_TRAINER_OPTIONS = {
    "sentence_iterator", "model_writer", "input", "model_prefix", "vocab_size", "model_type",
    "pad_id", "unk_id", "bos_id", "eos_id", "pad_piece", "unk_piece", "bos_piece", "eos_piece", "control_symbols",
}  # fmt: skip


class VLPTokenizer(SentencePieceBackend):
    r"""
    SentencePiece (unigram or BPE) tokenizer for captions: `<pad>` = 0, `<unk>` = 1, `<s>` = 2, `</s>` = 3,
    `<mask>` = 4. Encoding returns `<s> tokens </s>`; truncation keeps the final `</s>`.

    Build one with [`VLPTokenizer.train_from_iterator`], load one with `from_pretrained`, or wrap an existing
    SentencePiece model file with `VLPTokenizer(vocab_file=...)`.

    Args:
        vocab_file (`str`): Path to a SentencePiece model (`spiece.model`).
        model_max_length (`int`, defaults to 64): Longest sequence, special tokens included.
        sp_model_kwargs (`dict`, *optional*): Passed to `sentencepiece.SentencePieceProcessor`.
    """

    vocab_files_names = {"vocab_file": "spiece.model"}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        vocab_file: str,
        unk_token: str = SPECIAL_PIECES["unk"],
        bos_token: str = SPECIAL_PIECES["bos"],
        eos_token: str = SPECIAL_PIECES["eos"],
        pad_token: str = SPECIAL_PIECES["pad"],
        mask_token: str = SPECIAL_PIECES["mask"],
        model_max_length: int = 64,
        sp_model_kwargs: dict | None = None,
        **kwargs,
    ):
        kwargs.pop("special_tokens_pattern", None)
        super().__init__(
            vocab_file=vocab_file,
            unk_token=unk_token,
            bos_token=bos_token,
            eos_token=eos_token,
            pad_token=pad_token,
            mask_token=mask_token,
            model_max_length=model_max_length,
            sp_model_kwargs=sp_model_kwargs or {},
            special_tokens_pattern="bos_eos",
            token_type_ids_pattern="all_zeros",
            **kwargs,
        )

    @classmethod
    def from_model_proto(cls, model_proto: bytes, **kwargs) -> "VLPTokenizer":
        """Build a tokenizer from a serialized SentencePiece model held in memory."""
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, cls.vocab_files_names["vocab_file"])
            with open(path, "wb") as handle:
                handle.write(model_proto)
            tokenizer = cls(vocab_file=path, **kwargs)
        # The temporary file is gone; the model lives in memory and save_vocabulary writes it from there.
        tokenizer.vocab_file = None
        tokenizer.init_kwargs.pop("vocab_file", None)
        return tokenizer

    @classmethod
    def train_from_iterator(
        cls,
        texts: Iterable[str],
        vocab_size: int = 8000,
        model_type: str = "bpe",
        lowercase: bool = True,
        character_coverage: float = 1.0,
        model_max_length: int = 64,
        **trainer_kwargs,
    ) -> "VLPTokenizer":
        """
        Train a SentencePiece model on captions, in memory, and return a tokenizer using it.

        Args:
            texts (`Iterable[str]`): Captions; empty or whitespace-only ones are skipped.
            vocab_size (`int`, defaults to 8000): Target vocabulary size, special tokens included. It is a soft
                limit (`hard_vocab_limit=False`): a small corpus yields a smaller vocabulary instead of an error.
            model_type (`str`, defaults to `"bpe"`): `"bpe"` or `"unigram"`. BPE by default: on small caption
                corpora SentencePiece's unigram trainer ends with a few dozen near-character pieces whatever
                `vocab_size` asks (e.g. "y e ll o w"), which makes captions long and harder to learn.
            lowercase (`bool`, defaults to `True`): Case-fold text (SentencePiece `nmt_nfkc_cf` normalization);
                `False` keeps case (`nmt_nfkc`).
            character_coverage (`float`, defaults to 1.0): Share of characters the model covers.
            model_max_length (`int`, defaults to 64): `model_max_length` of the returned tokenizer.
            trainer_kwargs: Any other `sentencepiece.SentencePieceTrainer` option (e.g. `num_threads`,
                `input_sentence_size`, `user_defined_symbols`).
        """
        if isinstance(texts, str) or not isinstance(texts, Iterable):
            raise TypeError(f"texts must be an iterable of caption strings; got {type(texts).__name__}.")
        if model_type not in ("unigram", "bpe"):
            raise ValueError(f"model_type must be 'unigram' or 'bpe'; got {model_type!r}.")
        reserved = sorted(_RESERVED_TRAINER_OPTIONS & set(trainer_kwargs))
        if reserved:
            raise ValueError(f"train_from_iterator sets {reserved} itself; they cannot be passed as trainer options.")
        options = {
            "normalization_rule_name": "nmt_nfkc_cf" if lowercase else "nmt_nfkc",
            "character_coverage": character_coverage,
            "hard_vocab_limit": False,
            "minloglevel": 2,
            **trainer_kwargs,
        }
        state = {"captions": 0, "error": None}
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=_checked_captions(texts, state),
                model_writer=model,
                vocab_size=vocab_size,
                model_type=model_type,
                pad_id=0,
                unk_id=1,
                bos_id=2,
                eos_id=3,
                pad_piece=SPECIAL_PIECES["pad"],
                unk_piece=SPECIAL_PIECES["unk"],
                bos_piece=SPECIAL_PIECES["bos"],
                eos_piece=SPECIAL_PIECES["eos"],
                control_symbols=[SPECIAL_PIECES["mask"]],
                **options,
            )
        except RuntimeError as error:
            if state["error"] is not None:  # raised by our iterator, wrapped by SentencePiece
                raise state["error"] from None
            if state["captions"] == 0:
                raise ValueError("texts contains no non-empty caption to train a tokenizer on.") from error
            raise ValueError(f"SentencePiece training failed (vocab_size={vocab_size}): {error}") from error
        return cls.from_model_proto(model.getvalue(), model_max_length=model_max_length)

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        if not os.path.isdir(save_directory):
            raise ValueError(f"save_directory {save_directory!r} is not a directory.")
        name = (filename_prefix + "-" if filename_prefix else "") + self.vocab_files_names["vocab_file"]
        path = os.path.join(save_directory, name)
        # Written from the loaded model rather than copied, so tokenizers built in memory save the same way.
        with open(path, "wb") as handle:
            handle.write(self.sp_model.serialized_model_proto())
        return (path,)


def _checked_captions(texts: Iterable[str], state: dict) -> Iterator[str]:
    """Yields the non-empty captions; counts them and keeps the first error in `state`."""
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            state["error"] = TypeError(f"texts[{index}] has type {type(text).__name__}; expected str.")
            raise state["error"]
        if text.strip():
            state["captions"] += 1
            yield text


__all__ = ["VLPTokenizer"]
