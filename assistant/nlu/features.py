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
from pypinyin.constants import PINYIN_DICT
from pypinyin.contrib.tone_convert import to_normal

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


@lru_cache(maxsize=1)
def _syllables() -> frozenset[str]:
    return frozenset(
        to_normal(reading)
        for readings in PINYIN_DICT.values()
        for reading in readings.split(",")
        if to_normal(reading).isascii() and to_normal(reading).isalpha()
    )


@lru_cache(maxsize=4096)
def segment_pinyin(token: str) -> tuple[str, ...] | None:
    """'zaishuoyibian' → ('zai', 'shuo', 'yi', 'bian'): SMS writers type pinyin for words they
    cannot find in the IME. Fewest syllables wins; None when the token is not pinyin."""
    token = token.lower()
    if not token.isascii() or not token.isalpha() or len(token) > 40:
        return None
    syllables = _syllables()
    best: list[tuple[str, ...] | None] = [()] + [None] * len(token)
    for end in range(1, len(token) + 1):
        for start in range(max(0, end - 6), end):
            head, piece = best[start], token[start:end]
            if head is not None and piece in syllables:
                candidate = (*head, piece)
                if best[end] is None or len(candidate) < len(best[end]):
                    best[end] = candidate
    return best[-1]


def _latin_chunks(chunk: str) -> list[str]:
    return re.findall(r"[a-z]+|[^a-z\s]+", chunk.lower())


def pinyin_syllables(text: str) -> list[str]:
    out: list[str] = []
    # Non-Han chunks come back through `errors` marked, so Latin/digits are not "fuzzed"
    # unless they are themselves pinyin.
    for token in lazy_pinyin(text, style=Style.NORMAL, errors=lambda s: ["\0" + t for t in s.split()]):
        token = token.strip()
        if token.startswith("\0"):
            for chunk in _latin_chunks(token[1:]):
                syllables = segment_pinyin(chunk) if len(chunk) > 1 or chunk in {"a", "e", "o"} else None
                out.extend(fuzzy_syllable(x) for x in syllables) if syllables else out.append(chunk)
        elif token:
            out.append(fuzzy_syllable(token))
    return out


def _initials(part: str) -> str:
    if not part.isascii():
        return "".join(p[0] for p in lazy_pinyin(part, style=Style.NORMAL) if p)
    syllables = segment_pinyin(part)
    if syllables and len(syllables) > 1:
        return "".join(x[0] for x in syllables)  # typed pinyin: gaoling → gl
    return "" if syllables else part.lower()  # one syllable is a word, not an abbreviation


def initials_analyzer(text: str) -> list[str]:
    """Initial-letter n-grams: 高龄补贴 → g l b t, so an SMS abbreviation 'glbt' meets it."""
    grams: list[str] = []
    for run in re.findall(r"[\u4e00-\u9fffa-zA-Z]+", text):
        letters = "".join(_initials(part) for part in re.findall(r"[\u4e00-\u9fff]+|[a-zA-Z]+", run))
        grams.extend(ngrams(list(letters), 2, 4))
    return grams


def ngrams(tokens: list[str], low: int, high: int) -> list[str]:
    grams: list[str] = []
    for n in range(low, high + 1):
        grams.extend(" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return grams


# Cached: the intent model and the area model analyse the same text one after the other.
@lru_cache(maxsize=256)
def pinyin_analyzer(text: str) -> tuple[str, ...]:
    return tuple(ngrams(pinyin_syllables(text), 1, 3))


@lru_cache(maxsize=256)
def word_analyzer(text: str) -> tuple[str, ...]:
    return tuple(w for w in jieba.lcut(text) if w.strip())
