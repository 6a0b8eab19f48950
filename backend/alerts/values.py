"""The frozen values the care-alert stages pass along: a sensor `Reading` (validated from JSON) and
an `AlertChange` (what the rule engine decided happened to an alert)."""
from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

KINDS = ("water", "electricity", "gas", "door", "heart_rate", "bed")  # the shipped sensor kinds


class ReadingError(ValueError):
    """A malformed reading; `field` names what is wrong (for a clear 4xx)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


@dataclass(frozen=True)
class Reading:
    household: str
    device: str
    kind: str
    value: float
    ts: datetime

    @classmethod
    def from_json(cls, obj: Any, *, household_required: bool = True, kinds: Collection[str] = KINDS) -> Reading:
        """`kinds`: the sensor kinds the rules know (`AlertRules.kinds`; config can add new ones)."""
        if not isinstance(obj, Mapping):
            raise ReadingError("reading", "must be a JSON object")
        household = obj.get("household")
        if household_required and (not isinstance(household, str) or not 0 < len(household) <= 64):
            raise ReadingError("household", "must be a non-empty string (≤64 characters)")
        device = obj.get("device")
        if not isinstance(device, str) or not 0 < len(device) <= 64:
            raise ReadingError("device", "must be a non-empty string (≤64 characters)")
        kind = obj.get("kind")
        if kind not in kinds:
            raise ReadingError("kind", f"must be one of {', '.join(kinds)}")
        value = obj.get("value")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ReadingError("value", "must be a finite number")
        raw_ts = obj.get("ts")
        try:
            ts = datetime.fromisoformat(raw_ts) if isinstance(raw_ts, str) else None
        except ValueError:
            ts = None
        if ts is None or ts.tzinfo is None:
            raise ReadingError("ts", "must be an ISO-8601 time with a UTC offset")
        return cls(str(household or ""), device, str(kind), float(value), ts)


@dataclass(frozen=True)
class AlertChange:
    """One thing that happened to an alert: raised, notified (held by quiet hours until now),
    escalated, cleared."""

    household: str
    key: str  # the rule, or "sensor_offline:<device>": one open alert per key
    rule: str
    level: str
    at: datetime
    event: str
    notify: tuple[str, ...] = ()  # roles told by SMS now
    call: tuple[str, ...] = ()  # roles called now
    integrations: tuple[str, ...] = ()  # fire_119 …
    detail: Mapping[str, Any] = field(default_factory=dict)
    notify_at: datetime | None = None  # raised: when people are told (later in quiet hours)
    step: int = 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "household": self.household, "rule": self.rule, "level": self.level,
            "at": self.at.isoformat(), "event": self.event,
            "notify": [*self.integrations, *self.notify, *self.call],
        }
        if self.notify_at is not None and self.notify_at != self.at:
            out["held_until"] = self.notify_at.isoformat()
        if self.step:
            out["step"] = self.step
        if self.detail:
            out["detail"] = dict(self.detail)
        return out


def num(value: float) -> float | int:
    """3.0 → 3 in details and texts ("3小时", not "3.0小时")."""
    return int(value) if float(value).is_integer() else value
