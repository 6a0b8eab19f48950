"""Rule-based entity extraction for normalised user text (simplified, NFKC half-width).

Every extractor proposes candidates; overlaps are settled by a fixed priority (an ID beats a
phone beats an address beats a date …), then by length. All functions are pure: "today" comes
from the `now` argument, never from the clock.

The extractors live by subject: digit_entities.py (IDs, phones, references, counts),
when_entities.py (dates, times, meals), place_entities.py (addresses); names.py reads a name.
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from assistant.nlu.digit_entities import digit_run_candidates, disability_candidates, quantity_candidates
from assistant.nlu.entity_base import EXTRACTOR, Candidate
from assistant.nlu.names import extract_name
from assistant.nlu.place_entities import address_candidates
from assistant.nlu.when_entities import date_candidates, meal_candidates, time_candidates
from assistant.types import Entity

__all__ = ("CHINA_TZ", "EXTRACTOR", "extract_entities", "extract_name")

# China has no DST, so a fixed offset is exact and needs no tz database.
CHINA_TZ = timezone(timedelta(hours=8), "Asia/Shanghai")

_EXTRACTORS: tuple[Callable[[str], list[Candidate]], ...] = (
    time_candidates,
    meal_candidates,
    quantity_candidates,
    disability_candidates,
    address_candidates,
)


def extract_entities(text: str, now: datetime) -> list[Entity]:
    """All rule-based entities in `text`, non-overlapping, sorted by start."""
    today = now.astimezone(CHINA_TZ).date() if now.tzinfo else now.date()
    candidates = digit_run_candidates(text, today) + date_candidates(text, today)
    for extractor in _EXTRACTORS:
        candidates += extractor(text)
    candidates.sort(key=lambda c: (-c[0], -(c[1].end - c[1].start), c[1].start))
    taken: list[Entity] = []
    for _, ent in candidates:
        if all(ent.end <= t.start or ent.start >= t.end for t in taken):
            taken.append(ent)
    return sorted(taken, key=lambda e: e.start)
