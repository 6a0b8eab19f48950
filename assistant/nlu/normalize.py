"""Text normalisation for elderly, dialect, ASR-noisy and SMS input.

Order matters: width and script first (so the lexicon only needs simplified half-width keys),
then whole-token pinyin abbreviations, punctuation, fillers, and last dialect phrases and known
homophone errors (longest match first, one pass).
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import opencc
import yaml
from pypinyin import Style, lazy_pinyin

# Emoji, symbols and punctuation carry no intent; they become spaces.
_NOISE = re.compile(r"[^\w\s.+\-:/]|_", re.UNICODE)
_SPACES = re.compile(r"\s+")
_LATIN_TOKEN = re.compile(r"[a-z]+")
# 喂喂喂喂 → 喂喂, but never digits: "0000" in a phone number is data.
_REPEATED_CHAR = re.compile(r"([^\d零〇一二三四五六七八九幺两洞])\1{2,}")
# A lone surrogate (JSON "\ud800", a bad terminal byte) cannot be encoded: OpenCC raised on it.
# NUL is refused by Postgres text columns.
_INVALID = re.compile("[\ud800-\udfff\x00]")


def valid_text(text: str) -> str:
    """The text with every lone surrogate and NUL replaced by U+FFFD, so any encoder accepts it."""
    return _INVALID.sub("\ufffd", text)


@dataclass(frozen=True)
class Lexicon:
    fillers: tuple[str, ...] = ()
    replacements: dict[str, str] = field(default_factory=dict)  # dialect + homophones
    abbreviations: dict[str, str] = field(default_factory=dict)  # pinyin tokens

    @classmethod
    def load(cls, path: Path | None, dictionary: Path | None = None) -> Lexicon:
        derived = derived_abbreviations(dictionary)
        if path is None or not path.exists():
            return cls(abbreviations=derived)
        doc = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("normalization", {})
        converter = _converter()
        # Keys are stored simplified; converting again guards against a traditional key slipping in.
        replacements = {
            converter.convert(valid_text(str(k))): str(v)
            for section in ("dialect", "homophones")
            for k, v in (doc.get(section) or {}).items()
            if str(k) != str(v)
        }
        abbreviations = {**derived, **{str(k).lower(): str(v) for k, v in (doc.get("pinyin_abbreviations") or {}).items()}}
        fillers = tuple(sorted({str(f) for f in doc.get("fillers") or []}, key=len, reverse=True))
        return cls(fillers=fillers, replacements=replacements, abbreviations=abbreviations)


def derived_abbreviations(dictionary: Path | None) -> dict[str, str]:
    """Pinyin spellings and initials of the domain terms (老年证 → laonianzheng, lnz), so an SMS
    typed without a Chinese IME still reaches the term. Initials shorter than 3 letters or shared
    by two terms are too ambiguous to use."""
    if dictionary is None or not dictionary.exists():
        return {}
    full: dict[str, str] = {}
    initials: dict[str, set[str]] = {}
    for line in dictionary.read_text(encoding="utf-8").splitlines():
        word = line.split(" ")[0].strip()
        if not (2 <= len(word) <= 6) or not all("\u4e00" <= ch <= "\u9fff" for ch in word):
            continue
        syllables = lazy_pinyin(word, style=Style.NORMAL)
        full.setdefault("".join(syllables), word)
        initials.setdefault("".join(s[0] for s in syllables), set()).add(word)
    short = {k: next(iter(v)) for k, v in initials.items() if len(k) >= 3 and len(v) == 1}
    return {**short, **full}


@lru_cache(maxsize=1)
def _converter() -> opencc.OpenCC:
    return opencc.OpenCC("t2s")


class Normalizer:
    def __init__(self, lexicon: Lexicon) -> None:
        self.lexicon = lexicon
        keys = sorted(lexicon.replacements, key=len, reverse=True)
        self._replace = re.compile("|".join(map(re.escape, keys))) if keys else None
        fillers = "|".join(map(re.escape, lexicon.fillers))
        # A filler is dropped only as a whole token between pauses. Glued to a word it may carry
        # meaning: Cantonese 唔系 is "不是", not "嗯 是"; 那个证 names a thing.
        self._fillers = (
            re.compile(rf"(?:^|(?<=\s))(?:{fillers})(?=\s|$)") if fillers else None
        )

    def __call__(self, text: str) -> str:
        text = valid_text(text)  # every entry point (terminal, tests, HTTP) passes through here
        s = unicodedata.normalize("NFKC", text).lower()
        s = _converter().convert(s)
        if self.lexicon.abbreviations:
            s = _LATIN_TOKEN.sub(lambda m: self.lexicon.abbreviations.get(m.group(0), m.group(0)), s)
        s = _NOISE.sub(" ", s)
        s = _REPEATED_CHAR.sub(r"\1\1", s)
        if self._fillers is not None:
            # Before the dialect pass, so dialect fillers (你晓得伐) match as said. A lone filler
            # is kept: "嗯" on its own is an answer (yes), not noise.
            without = _SPACES.sub(" ", self._fillers.sub(" ", s)).strip()
            s = without or s
        if self._replace is not None:
            s = self._replace.sub(lambda m: self.lexicon.replacements[m.group(0)], s)
        s = _SPACES.sub(" ", s).strip()
        return s or _SPACES.sub(" ", unicodedata.normalize("NFKC", text)).strip()
