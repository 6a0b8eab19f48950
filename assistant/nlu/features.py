"""Feature analyzers for the intent classifier.

Three views of one normalised utterance, each a bag of n-grams for TF-IDF:
- characters (robust to unseen words and segmentation errors),
- fuzzy toneless pinyin syllables (robust to ASR homophones such as 老年正/老年证 and to the
  n/l, z/zh, in/ing confusions of southern and dialect speakers),
- jieba words with the domain dictionary (whole domain terms).
Functions are module level so a trained model pickles and loads in another process.
"""
from __future__ import annotations

import logging
import re
from functools import lru_cache
from pathlib import Path

import jieba
from pypinyin import Style, lazy_pinyin

jieba.setLogLevel(logging.WARNING)

_HAN = re.compile(r"[\u4e00-\u9fff]")
# Initials and finals that many speakers (and recognisers) do not distinguish.
_FUZZY_INITIALS = (("zh", "z"), ("ch", "c"), ("sh", "s"), ("l", "n"), ("r", "n"), ("f", "h"))
_FUZZY_FINALS = (("ing", "in"), ("eng", "en"), ("ang", "an"), ("uan", "uan"))
_loaded_dictionaries: set[str] = set()


def load_dictionary(path: Path | None) -> None:
    """Adds the domain dictionary to jieba once per process."""
    if path is None or not path.exists() or str(path) in _loaded_dictionaries:
        return
    jieba.load_userdict(str(path))
    _loaded_dictionaries.add(str(path))


@lru_cache(maxsize=8192)
def fuzzy_syllable(syllable: str) -> str:
    for full, fuzzy in _FUZZY_INITIALS:
        if syllable.startswith(full):
            syllable = fuzzy + syllable[len(full):]
            break
    for full, fuzzy in _FUZZY_FINALS:
        if syllable.endswith(full):
            syllable = syllable[: -len(full)] + fuzzy
            break
    return syllable


def pinyin_syllables(text: str) -> list[str]:
    out: list[str] = []
    # Non-Han chunks come back through `errors` marked, so Latin/digits are not "fuzzed".
    for token in lazy_pinyin(text, style=Style.NORMAL, errors=lambda s: ["\0" + t for t in s.split()]):
        token = token.strip()
        if token.startswith("\0"):
            out.append(token[1:])
        elif token:
            out.append(fuzzy_syllable(token))
    return out


def ngrams(tokens: list[str], low: int, high: int) -> list[str]:
    grams: list[str] = []
    for n in range(low, high + 1):
        grams.extend(" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return grams


def pinyin_analyzer(text: str) -> list[str]:
    return ngrams(pinyin_syllables(text), 1, 3)


def word_analyzer(text: str) -> list[str]:
    return [w for w in jieba.lcut(text) if w.strip()]
