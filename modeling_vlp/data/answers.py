"""The official VQA answer normalisation (`normalize_vqa_answer`), shared by the VQA collator's answer targets, the
scenes' answer vocabulary and the VQA accuracy of `modeling_vlp.evaluation.vqa`."""

from __future__ import annotations

import re

# The official VQA evaluation's answer processing (vqaEval.py: processPunctuation, processDigitArticle), with its
# list of contractions shortened to the common ones.
_VQA_NUMBERS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_VQA_ARTICLES = {"a", "an", "the"}
_VQA_CONTRACTIONS = {
    "arent": "aren't", "cant": "can't", "couldnt": "couldn't", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hasnt": "hasn't", "havent": "haven't", "isnt": "isn't", "shouldnt": "shouldn't",
    "thats": "that's", "theres": "there's", "wasnt": "wasn't", "werent": "weren't", "whats": "what's",
    "wont": "won't", "wouldnt": "wouldn't", "youre": "you're", "im": "i'm", "ive": "i've", "lets": "let's",
}  # fmt: skip
_VQA_PUNCTUATION = ";/[]\"{}()=+\\_-><@`,?!"
_VQA_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_VQA_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def normalize_vqa_answer(text: str) -> str:
    """An answer as the official VQA evaluation compares it: lowercased, punctuation removed (or turned into spaces
    inside words, "black-and-white" -> "black and white"), periods dropped except in numbers ("2.5"), number words
    as digits ("two" -> "2"), articles removed, common contractions given their apostrophe ("dont" -> "don't")."""
    if not isinstance(text, str):
        raise TypeError(f"answer has type {type(text).__name__}; expected str.")
    text = text.replace("\n", " ").replace("\t", " ").strip().lower()
    for mark in _VQA_PUNCTUATION:
        if f"{mark} " in text or f" {mark}" in text or _VQA_COMMA_STRIP.search(text) is not None:
            text = text.replace(mark, "")
        else:
            text = text.replace(mark, " ")
    text = _VQA_PERIOD_STRIP.sub("", text)
    words = [_VQA_NUMBERS.get(word, word) for word in text.split()]
    return " ".join(_VQA_CONTRACTIONS.get(word, word) for word in words if word not in _VQA_ARTICLES)
