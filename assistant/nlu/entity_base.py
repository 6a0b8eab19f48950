"""What every rule-based entity extractor shares: the candidate type, the priority that settles
overlaps (an ID beats a phone beats an address beats a date …), the numeral reader, and the
spoken parts of the day (used by both dates and times)."""
from __future__ import annotations

from typing import Any

from assistant.nlu.numerals import chinese_to_int
from assistant.types import Entity

EXTRACTOR = "rules"

# Higher wins when two candidates overlap.
_PRIORITY = {
    "id_number": 90,
    "phone": 80,
    "address": 70,
    "community": 70,
    "date": 60,
    "time": 50,
    "reference": 40,
    "disability_level": 30,
    "quantity": 20,
    "meal_time": 10,
}

CN_NUMERALS = "零〇一二两三四五六七八九十"  # Chinese numeral characters that can start/continue a number
NOT_AFTER_NUMBER = rf"(?<![0-9{CN_NUMERALS}百千万幺洞])"  # left boundary: not inside a longer number

# ---------------------------------------------------------------- parts of the day
POD_PART = {
    "凌晨": "morning", "清晨": "morning", "早晨": "morning", "早上": "morning", "上午": "morning",
    "早": "morning", "中午": "noon", "晌午": "noon", "下午": "afternoon", "午后": "afternoon",
    "傍晚": "evening", "晚上": "evening", "夜里": "evening", "夜间": "evening", "半夜": "evening",
    "晚": "evening",
}  # fmt: skip
POD_WORDS = "|".join(w for w in POD_PART if len(w) > 1)

Candidate = tuple[int, Entity]  # (priority, entity)


def candidate(
    kind: str,
    value: Any,
    text: str,
    start: int,
    end: int,
    confidence: float = 1.0,
    meta: dict[str, Any] | None = None,
) -> Candidate:
    ent = Entity(kind, value, start, end, text[start:end], EXTRACTOR, confidence, meta or {})
    return _PRIORITY[kind], ent


def numeral(s: str) -> int:
    value = chinese_to_int(s)
    if value is None:  # the regexes only let well-formed numerals through
        raise ValueError(f"not a numeral: {s!r}")
    return value
