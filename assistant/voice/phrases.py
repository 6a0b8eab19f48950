"""Expected phrases for a dialogue step: the flow's own options plus `nlu_data` lookup tables.

    expect = step_expectation(["是", "不是", "对", "不对"], closed=True)
    expect = step_expectation(lookups=["hospital"], lookup_tables=load_lookup_tables(root / "nlu_data"))

Closed sets (menus, yes/no, digits) give `Transcript.choice`; open steps pass phrases as context
for recognisers that can use them (Vosk grammars, a remote service, Whisper's prompt when
`bias_prompt` is on — off by default for Whisper base, see bench/RESULTS.md).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path

from assistant.voice.recognizer import Expectation, Transcript

YES_NO = ("是", "不是", "对", "不对")
# What a caller may answer when the core waits for a confirmation or a yes/no (the core's
# `expects`). A closed set: a hypothesis like "事的" is taken as "是的" when the match is sure.
STEP_ANSWERS: Mapping[str, tuple[str, ...]] = {
    "confirm": ("对", "不对", "是的", "不是", "人工"),
    "yes_no": ("要", "不要", "是的", "不用", "人工"),
}
DIGITS = tuple("0123456789")
MAX_PHRASES = 60  # Whisper's prompt holds ~220 tokens; Vosk grammars get slow beyond a few hundred


@lru_cache(maxsize=4)
def load_lookup_tables(nlu_dir: Path) -> Mapping[str, tuple[str, ...]]:
    from assistant.nlu.data import load_training_data

    data = load_training_data(nlu_dir)
    return {name: tuple(dict.fromkeys(w.strip() for w in words if w.strip())) for name, words in data.lookups.items()}


def step_expectation(options: Iterable[str] = (), *, closed: bool = False, lookups: Sequence[str] = (),
                     lookup_tables: Mapping[str, Sequence[str]] | None = None) -> Expectation:
    phrases: list[str] = [o for o in options if o and o.strip()]
    for name in lookups:
        phrases.extend((lookup_tables or {}).get(name, ()))
    return Expectation(tuple(dict.fromkeys(phrases))[:MAX_PHRASES], closed=closed)


def answer_expectation(expects: str | None) -> Expectation | None:
    """The closed set for a step that waits for 对/不对 or 要/不要; None for open steps."""
    phrases = STEP_ANSWERS.get(expects or "")
    return Expectation(phrases, closed=True) if phrases else None


def heard_answer(transcript: Transcript, min_choice_confidence: float) -> tuple[str, float]:
    """(text for the core, confidence): the closed-set choice when it is sure, else the free text.

    A choice below `min_choice_confidence` is not trusted: the free text goes on, and the channel's
    low-confidence read-back ("您是说……吗？") still applies to it.
    """
    choice = transcript.choice
    if choice is not None and choice.confidence >= min_choice_confidence:
        return choice.phrase, max(choice.confidence, transcript.confidence)
    return transcript.core_text, transcript.confidence
