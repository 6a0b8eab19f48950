"""Choosing among the answers a step expects (menu words, 是/不是/对/不对, digits), with a confidence.

The decoder's N-best hypotheses are weighted by their posterior (softmax of total log-prob) and
each candidate phrase is scored by how closely it sounds like each hypothesis: edit distance over
fuzzy toneless pinyin syllables (so 是/事/市, 对/队, 老年证/老年正 match) with a bonus when the
phrase appears inside a longer answer ("对的对的" → 对), unless it is negated there ("不对" ≠ 对).

confidence = score(best) × sqrt(1 − score(second)/score(best)): high only when the best phrase both
matches what was heard and clearly beats the runner-up.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from assistant.nlu.features import fuzzy_syllable
from assistant.voice.postprocess import spoken_form
from assistant.voice.recognizer import Choice

_NEGATIONS = "不没别"


@dataclass(frozen=True)
class Hypothesis:
    """One decoder hypothesis: raw text, mean token log-prob, token count."""

    text: str
    logprob_per_token: float
    tokens: int

    @property
    def total_logprob(self) -> float:
        return self.logprob_per_token * self.tokens


@dataclass(frozen=True)
class Candidate:
    phrase: str
    score: float
    confidence: float


@lru_cache(maxsize=4096)
def syllables(text: str) -> tuple[str, ...]:
    """Fuzzy toneless pinyin per spoken character; numbers spelled out, 幺 read as 一."""
    from pypinyin import Style, lazy_pinyin

    said = spoken_form(text).replace("幺", "一").replace("两", "二")
    out = []
    for syl in lazy_pinyin(said, style=Style.NORMAL, errors="ignore"):
        out.append(fuzzy_syllable(syl.lower()))
    return tuple(out)


def _edit_similarity(a: tuple[str, ...], b: tuple[str, ...]) -> float:
    if not a or not b:
        return 0.0
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (0 if x == y else 1)))
        prev = cur
    return 1.0 - prev[-1] / max(len(a), len(b))


def _contained(hyp: tuple[str, ...], cand: tuple[str, ...], phrase: str) -> float:
    """Similarity when the phrase occurs inside a longer answer; 0 if absent or negated there."""
    n = len(cand)
    if n == 0 or n >= len(hyp):
        return 0.0
    negations = {syllables(ch)[0] for ch in _NEGATIONS}
    for i in range(len(hyp) - n + 1):
        if hyp[i : i + n] == cand:
            if i > 0 and hyp[i - 1] in negations and not phrase.startswith(tuple(_NEGATIONS)):
                continue
            return 0.75 + 0.25 * n / len(hyp)
    return 0.0


def similarity(hyp_text: str, phrase: str) -> float:
    hyp, cand = syllables(hyp_text), syllables(phrase)
    return max(_edit_similarity(hyp, cand), _contained(hyp, cand, phrase))


def choose(hypotheses: Sequence[Hypothesis], phrases: Sequence[str], temperature: float = 1.0) -> list[Choice]:
    """Candidates ranked best first, as recognizer.Choice objects (phrase, confidence)."""
    ranked = rank(hypotheses, phrases, temperature)
    return [Choice(c.phrase, c.confidence) for c in ranked]


def rank(hypotheses: Sequence[Hypothesis], phrases: Sequence[str], temperature: float = 1.0) -> list[Candidate]:
    hyps = [h for h in hypotheses if h.text.strip()]
    unique = list(dict.fromkeys(p for p in phrases if p.strip()))
    if not unique:
        return []
    if not hyps:
        return [Candidate(p, 0.0, 0.0) for p in unique]
    top = max(h.total_logprob for h in hyps)
    weights = [math.exp((h.total_logprob - top) / temperature) for h in hyps]
    total = sum(weights)
    scores = {p: sum(w * similarity(h.text, p) for w, h in zip(weights, hyps, strict=True)) / total for p in unique}
    ordered = sorted(unique, key=lambda p: -scores[p])
    best = scores[ordered[0]]
    second = scores[ordered[1]] if len(ordered) > 1 else 0.0
    margin = math.sqrt(max(0.0, 1.0 - second / best)) if best > 0 else 0.0
    out = [Candidate(ordered[0], best, best * margin)]
    out += [Candidate(p, scores[p], scores[p] * (1 - margin)) for p in ordered[1:]]
    return out
