"""What the rule engine remembers per household, as plain dataclasses that round-trip through JSON
(the desk keeps it on the household row, the replay CLI in memory). No names or numbers in it.

The memory is generic: the last value of each cumulative meter, the last activity of each sensor
kind (a water use, a door opening), each threshold rule's current run (out of range since / back in
range since), the electricity day sums, and the open alerts."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any


@dataclass
class OpenAlert:
    rule: str
    level: str
    raised_at: datetime
    notify_at: datetime
    detail: dict[str, Any] = field(default_factory=dict)
    notified: bool = False
    notified_roles: list[str] = field(default_factory=list)
    step: int = 0
    acknowledged: bool = False
    visit_escalated: bool = False


@dataclass
class DeviceSeen:
    kind: str
    first: datetime
    last: datetime


@dataclass
class SensorRun:
    """A threshold rule's run: out of range since, back in range since."""

    out_since: datetime | None = None
    in_since: datetime | None = None


@dataclass
class HouseholdState:
    household: str
    first_seen: datetime | None = None
    devices: dict[str, DeviceSeen] = field(default_factory=dict)
    meters: dict[str, float] = field(default_factory=dict)  # cumulative meter readings, by kind
    last_active: dict[str, datetime] = field(default_factory=dict)  # last water use, door opening …
    runs: dict[str, SensorRun] = field(default_factory=dict)  # by threshold rule
    elec_day: str | None = None  # local date of the readings being summed
    elec_day_last: float | None = None
    elec_prev_last: float | None = None  # meter at the end of the day before elec_day
    elec_history: list[float] = field(default_factory=list)  # full days' use, oldest first
    open: dict[str, OpenAlert] = field(default_factory=dict)

    def run(self, rule: str) -> SensorRun:
        return self.runs.setdefault(rule, SensorRun())

    def device_of_kind(self, kind: str) -> DeviceSeen | None:
        seen = [d for d in self.devices.values() if d.kind == kind]
        return min(seen, key=lambda d: d.first) if seen else None

    # --- JSON round trip (datetimes as ISO strings) ---------------------------------------------
    def to_json(self) -> str:
        return json.dumps(asdict(self), default=_encode, ensure_ascii=False, sort_keys=True,
                          separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> HouseholdState:
        raw = _upgrade(json.loads(text))
        state = cls(raw["household"])
        state.first_seen = _dt(raw.get("first_seen"))
        for name in ("elec_day", "elec_day_last", "elec_prev_last"):
            setattr(state, name, raw.get(name))
        state.elec_history = [float(x) for x in raw.get("elec_history") or []]
        state.meters = {k: float(v) for k, v in (raw.get("meters") or {}).items()}
        state.last_active = {k: _dt(v) for k, v in (raw.get("last_active") or {}).items() if v}  # type: ignore[misc]
        state.runs = {k: SensorRun(_dt(v.get("out_since")), _dt(v.get("in_since")))
                      for k, v in (raw.get("runs") or {}).items()}
        state.devices = {k: DeviceSeen(v["kind"], _dt(v["first"]), _dt(v["last"]))  # type: ignore[arg-type]
                         for k, v in (raw.get("devices") or {}).items()}
        state.open = {k: OpenAlert(**{**v, "raised_at": _dt(v["raised_at"]), "notify_at": _dt(v["notify_at"])})
                      for k, v in (raw.get("open") or {}).items()}
        return state


def _upgrade(raw: dict[str, Any]) -> dict[str, Any]:
    """States stored before rule kinds came from config had one field per shipped rule."""
    meters, active, runs = raw.setdefault("meters", {}), raw.setdefault("last_active", {}), raw.setdefault("runs", {})
    if raw.get("water_value") is not None:
        meters.setdefault("water", raw["water_value"])
    for old, kind in (("water_last_use", "water"), ("door_last_open", "door")):
        if raw.get(old):
            active.setdefault(kind, raw[old])
    if raw.get("hr_out_since") or raw.get("hr_in_since"):
        runs.setdefault("heart_rate", {"out_since": raw.get("hr_out_since"), "in_since": raw.get("hr_in_since")})
    if raw.get("gas_normal_since"):
        runs.setdefault("gas_leak", {"out_since": None, "in_since": raw["gas_normal_since"]})
    return raw


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot encode {type(value).__name__}")


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None
