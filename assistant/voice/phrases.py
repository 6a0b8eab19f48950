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

from assistant.voice.recognizer import Expectation

YES_NO = ("是", "不是", "对", "不对")
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
