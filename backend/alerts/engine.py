"""The care-alert rule engine: pure, no database, no clock of its own.

Per household it keeps a small `HouseholdState` (last water use, daily electricity, last door
opening, heart-rate runs, open alerts …) that round-trips through JSON, so the DB-backed desk
persists it next to the household and the replay CLI keeps it in memory. Every call gets the
time it should act at; time rules report the exact moment a condition was met (`at` = last
water use + 2 h), even when they are evaluated late, so a worker that was down for a while still
raises what it missed with the right time.

`observe(state, reading, now)` first evaluates the time rules at the reading's timestamp (what
was true just before it), then applies the reading. `tick(state, now)` evaluates the time rules
at `now`; `next_due(state)` says when a tick next matters, so callers wake up exactly then.

With `track_dispatch=True` (the replay CLI) the engine also releases notifications held by quiet
hours and escalates unacknowledged alerts along the chain; the desk instead keeps those timers in
the database (state survives restarts) and uses the same `RulePolicy` deadlines.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from backend.alerts.rules import KINDS, AlertRules, RulePolicy

METER_EPSILON = 1e-6  # a cumulative meter that moved by less than this did not move


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
    def from_json(cls, obj: Any, *, household_required: bool = True) -> Reading:
        if not isinstance(obj, Mapping):
            raise ReadingError("reading", "must be a JSON object")
        household = obj.get("household")
        if household_required and (not isinstance(household, str) or not 0 < len(household) <= 64):
            raise ReadingError("household", "must be a non-empty string (≤64 characters)")
        device = obj.get("device")
        if not isinstance(device, str) or not 0 < len(device) <= 64:
            raise ReadingError("device", "must be a non-empty string (≤64 characters)")
        kind = obj.get("kind")
        if kind not in KINDS:
            raise ReadingError("kind", f"must be one of {', '.join(KINDS)}")
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
        return cls(str(household or ""), device, kind, float(value), ts)


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
class HouseholdState:
    household: str
    first_seen: datetime | None = None
    devices: dict[str, DeviceSeen] = field(default_factory=dict)
    water_value: float | None = None
    water_last_use: datetime | None = None
    elec_day: str | None = None  # local date of the readings being summed
    elec_day_last: float | None = None
    elec_prev_last: float | None = None  # meter at the end of the day before elec_day
    elec_history: list[float] = field(default_factory=list)  # full days' use, oldest first
    door_last_open: datetime | None = None
    hr_out_since: datetime | None = None
    hr_in_since: datetime | None = None
    gas_normal_since: datetime | None = None
    open: dict[str, OpenAlert] = field(default_factory=dict)

    # --- JSON round trip (datetimes as ISO strings) ---------------------------------------------
    def to_json(self) -> str:
        return json.dumps(asdict(self), default=_encode, ensure_ascii=False, sort_keys=True,
                          separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> HouseholdState:
        raw = json.loads(text)
        state = cls(raw["household"])
        for name in ("first_seen", "water_last_use", "door_last_open", "hr_out_since", "hr_in_since",
                     "gas_normal_since"):
            setattr(state, name, _dt(raw.get(name)))
        for name in ("water_value", "elec_day", "elec_day_last", "elec_prev_last"):
            setattr(state, name, raw.get(name))
        state.elec_history = [float(x) for x in raw.get("elec_history") or []]
        state.devices = {k: DeviceSeen(v["kind"], _dt(v["first"]), _dt(v["last"]))  # type: ignore[arg-type]
                         for k, v in (raw.get("devices") or {}).items()}
        state.open = {k: OpenAlert(**{**v, "raised_at": _dt(v["raised_at"]), "notify_at": _dt(v["notify_at"])})
                      for k, v in (raw.get("open") or {}).items()}
        return state

    def device_of_kind(self, kind: str) -> DeviceSeen | None:
        seen = [d for d in self.devices.values() if d.kind == kind]
        return min(seen, key=lambda d: d.first) if seen else None


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot encode {type(value).__name__}")


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


class AlertEngine:
    def __init__(self, rules: AlertRules, *, track_dispatch: bool = False) -> None:
        self.rules = rules
        self.track_dispatch = track_dispatch

    # --- entry points -----------------------------------------------------------------------------
    def observe(self, state: HouseholdState, reading: Reading, now: datetime) -> list[AlertChange]:
        changes = self._time_rules(state, reading.ts)
        if self.track_dispatch:  # deadlines that passed before this reading come first
            changes.extend(self._dispatch(state, min(reading.ts, now)))
        ts = reading.ts
        if state.first_seen is None or ts < state.first_seen:
            state.first_seen = ts
        seen = state.devices.get(reading.device)
        if seen is None:
            state.devices[reading.device] = DeviceSeen(reading.kind, ts, ts)
        else:
            seen.last = max(seen.last, ts)
        offline_key = f"sensor_offline:{reading.device}"
        if offline_key in state.open:
            changes.append(self._clear(state, offline_key, ts, {"device": reading.device}))
        handler = getattr(self, f"_on_{reading.kind}")
        changes.extend(handler(state, reading))
        if self.track_dispatch:
            changes.extend(self._dispatch(state, now))
        return changes

    def tick(self, state: HouseholdState, now: datetime) -> list[AlertChange]:
        changes = self._time_rules(state, now)
        if self.track_dispatch:
            changes.extend(self._dispatch(state, now))
        return changes

    def next_due(self, state: HouseholdState) -> datetime | None:
        candidates: list[datetime] = []
        water = state.device_of_kind("water")
        if water and self.rules.enabled("no_water") and "no_water" not in state.open:
            candidates.append(self._water_due(self.rules.policy("no_water"), self._water_since(state, water)))
        door = state.device_of_kind("door")
        if door and self.rules.enabled("no_door") and "no_door" not in state.open:
            candidates.append(self._door_due(state, door))
        if self.rules.enabled("sensor_offline"):
            for device, seen in state.devices.items():
                if f"sensor_offline:{device}" not in state.open:
                    candidates.append(seen.last + self._offline_after(seen.kind))
        if "gas_leak" in state.open and state.gas_normal_since is not None:
            candidates.append(state.gas_normal_since + self._minutes("gas_leak", "clear_after_minutes", 10))
        if self.track_dispatch:
            for alert in state.open.values():
                due = self._dispatch_due(alert)
                if due is not None:
                    candidates.append(due)
        return min(candidates) if candidates else None

    def acknowledge(self, state: HouseholdState, key: str) -> bool:
        """Replay/drills only: marks an open alert acknowledged, which stops its escalation."""
        alert = state.open.get(key)
        if alert is None:
            return False
        alert.acknowledged = True
        return True

    # --- raising and clearing ---------------------------------------------------------------------
    def _raise(self, state: HouseholdState, key: str, rule: str, at: datetime,
               detail: dict[str, Any]) -> AlertChange:
        policy = self.rules.policy(rule)
        notify_at = self.rules.notify_at(policy, at)
        now_told = notify_at <= at
        alert = OpenAlert(rule, policy.level, at, notify_at, detail, notified=now_told,
                          notified_roles=list(policy.notify) if now_told else [])
        state.open[key] = alert
        return AlertChange(state.household, key, rule, policy.level, at, "raised",
                           notify=policy.notify if now_told else (),
                           call=policy.call if now_told else (),
                           # 119 and other integrations never wait for quiet hours
                           integrations=policy.integrations, detail=detail, notify_at=notify_at)

    def _clear(self, state: HouseholdState, key: str, at: datetime, detail: dict[str, Any]) -> AlertChange:
        alert = state.open.pop(key)
        return AlertChange(state.household, key, alert.rule, alert.level, at, "cleared",
                           notify=tuple(alert.notified_roles) if alert.notified else (),
                           detail={**alert.detail, **detail})

    # --- time rules --------------------------------------------------------------------------------
    def _time_rules(self, state: HouseholdState, at: datetime) -> list[AlertChange]:
        changes: list[AlertChange] = []
        water = state.device_of_kind("water")
        if water and self.rules.enabled("no_water") and "no_water" not in state.open:
            policy = self.rules.policy("no_water")
            due = self._water_due(policy, self._water_since(state, water))
            if at >= due:
                hours = round(float(policy.param("quiet_minutes", 120)) / 60, 1)
                changes.append(self._raise(state, "no_water", "no_water", due, {"hours": _num(hours)}))
        door = state.device_of_kind("door")
        if door and self.rules.enabled("no_door") and "no_door" not in state.open:
            due = self._door_due(state, door)
            if at >= due:
                hours = float(self.rules.policy("no_door").param("hours", 48))
                changes.append(self._raise(state, "no_door", "no_door", due, {"hours": _num(hours)}))
        if self.rules.enabled("sensor_offline"):
            for device, seen in sorted(state.devices.items()):
                key = f"sensor_offline:{device}"
                after = self._offline_after(seen.kind)
                if key not in state.open and at >= seen.last + after:
                    changes.append(self._raise(state, key, "sensor_offline", seen.last + after, {
                        "device": device, "kind": seen.kind, "hours": _num(after.total_seconds() / 3600)}))
        if "gas_leak" in state.open and state.gas_normal_since is not None:
            clear_at = state.gas_normal_since + self._minutes("gas_leak", "clear_after_minutes", 10)
            if at >= clear_at:
                changes.append(self._clear(state, "gas_leak", clear_at, {}))
                state.gas_normal_since = None
        return changes

    def _water_since(self, state: HouseholdState, water: DeviceSeen) -> datetime:
        since = state.water_last_use or water.first
        # Someone going out or coming in is a sign of life too (config: door_counts_as_activity).
        if self.rules.policy("no_water").param("door_counts_as_activity", False) and state.door_last_open:
            since = max(since, state.door_last_open)
        return since

    def _water_due(self, policy: RulePolicy, since: datetime) -> datetime:
        """When "no water for N minutes inside the day window" comes true, counting only time
        inside the window (a night's sleep is not a silence)."""
        window = policy.param("day")
        quiet = timedelta(minutes=float(policy.param("quiet_minutes", 120)))
        local = self.rules.local(since)
        for _ in range(3):
            start = local.replace(hour=window.start.hour, minute=window.start.minute, second=0, microsecond=0)
            end = local.replace(hour=window.end.hour, minute=window.end.minute, second=0, microsecond=0)
            begin = max(local, start)
            if begin + quiet <= end:
                return begin + quiet
            local = (start.replace(tzinfo=None) + timedelta(days=1)).replace(tzinfo=start.tzinfo)
        raise ValueError("no_water: quiet_minutes longer than the day window")

    def _door_due(self, state: HouseholdState, door: DeviceSeen) -> datetime:
        hours = float(self.rules.policy("no_door").param("hours", 48))
        return (state.door_last_open or door.first) + timedelta(hours=hours)

    def _offline_after(self, kind: str) -> timedelta:
        return timedelta(hours=float(self.rules.offline_hours.get(kind, 6)))

    def _minutes(self, rule: str, key: str, default: float) -> timedelta:
        return timedelta(minutes=float(self.rules.policy(rule).param(key, default)))

    # --- readings ---------------------------------------------------------------------------------
    def _on_water(self, state: HouseholdState, reading: Reading) -> list[AlertChange]:
        previous = state.water_value
        if previous is not None and reading.value < previous - 1.0:
            state.water_value = reading.value  # meter replaced or reset: a new baseline, not a use
            return []
        state.water_value = reading.value if previous is None else max(previous, reading.value)
        if previous is None or reading.value <= previous + METER_EPSILON:
            return []
        if state.water_last_use is None or reading.ts > state.water_last_use:
            state.water_last_use = reading.ts
        if "no_water" in state.open:
            return [self._clear(state, "no_water", reading.ts, {})]
        return []

    def _on_electricity(self, state: HouseholdState, reading: Reading) -> list[AlertChange]:
        day = self.rules.local(reading.ts).date().isoformat()
        if state.elec_day is None:
            state.elec_day, state.elec_day_last = day, reading.value
            return []
        if day < state.elec_day:
            return []  # a late reading for a finished day: already summed
        if day == state.elec_day:
            state.elec_day_last = max(state.elec_day_last or reading.value, reading.value)
            return []
        changes: list[AlertChange] = []
        consecutive = date.fromisoformat(day) - date.fromisoformat(state.elec_day) == timedelta(days=1)
        if state.elec_prev_last is not None and state.elec_day_last is not None:
            used = state.elec_day_last - state.elec_prev_last
            changes.extend(self._judge_day(state, used, reading.ts))
        # The finished day's end is the next day's start; after a gap we start over.
        state.elec_prev_last = state.elec_day_last if consecutive else None
        state.elec_day, state.elec_day_last = day, reading.value
        return changes

    def _judge_day(self, state: HouseholdState, used: float, at: datetime) -> list[AlertChange]:
        if not self.rules.enabled("electricity_drop") or used < 0:
            return []
        policy = self.rules.policy("electricity_drop")
        days = int(policy.param("baseline_days", 7))
        history = state.elec_history[-days:]
        ratio = float(policy.param("drop_ratio", 0.3))
        changes: list[AlertChange] = []
        dropped = False
        if len(history) >= int(policy.param("min_baseline_days", 3)):
            baseline = sum(history) / len(history)
            if baseline >= float(policy.param("min_daily_kwh", 0.5)):
                dropped = used <= baseline * (1 - ratio)
                detail = {"percent": round(100 * (1 - used / baseline)), "used": round(used, 2),
                          "baseline": round(baseline, 2)}
                if dropped and "electricity_drop" not in state.open:
                    changes.append(self._raise(state, "electricity_drop", "electricity_drop", at, detail))
                elif not dropped and "electricity_drop" in state.open:
                    changes.append(self._clear(state, "electricity_drop", at, {"used": round(used, 2)}))
        if not dropped:  # a low day would drag the baseline down towards itself
            state.elec_history = [*history, used][-days:]
        return changes

    def _on_gas(self, state: HouseholdState, reading: Reading) -> list[AlertChange]:
        if not self.rules.enabled("gas_leak"):
            return []
        threshold = float(self.rules.policy("gas_leak").param("threshold", 1))
        if reading.value >= threshold:
            state.gas_normal_since = None
            if "gas_leak" not in state.open:
                return [self._raise(state, "gas_leak", "gas_leak", reading.ts, {"value": _num(reading.value)})]
        elif "gas_leak" in state.open and state.gas_normal_since is None:
            state.gas_normal_since = reading.ts
        return []

    def _on_door(self, state: HouseholdState, reading: Reading) -> list[AlertChange]:
        if reading.value < 1:
            return []  # a heartbeat / closed report: the sensor is alive, nobody went out
        if state.door_last_open is None or reading.ts > state.door_last_open:
            state.door_last_open = reading.ts
        if "no_door" in state.open:
            return [self._clear(state, "no_door", reading.ts, {})]
        return []

    def _on_heart_rate(self, state: HouseholdState, reading: Reading) -> list[AlertChange]:
        if not self.rules.enabled("heart_rate"):
            return []
        policy = self.rules.policy("heart_rate")
        low, high = float(policy.param("low", 45)), float(policy.param("high", 130))
        if reading.value < low or reading.value > high:
            state.hr_in_since = None
            state.hr_out_since = state.hr_out_since or reading.ts
            minutes = float(policy.param("minutes", 10))
            if "heart_rate" not in state.open and reading.ts - state.hr_out_since >= timedelta(minutes=minutes):
                return [self._raise(state, "heart_rate", "heart_rate", reading.ts,
                                    {"value": _num(reading.value), "minutes": _num(minutes)})]
            return []
        state.hr_out_since = None
        state.hr_in_since = state.hr_in_since or reading.ts
        clear_after = timedelta(minutes=float(policy.param("clear_after_minutes", 5)))
        if "heart_rate" in state.open and reading.ts - state.hr_in_since >= clear_after:
            return [self._clear(state, "heart_rate", reading.ts, {"value": _num(reading.value)})]
        return []

    def _on_bed(self, state: HouseholdState, reading: Reading) -> list[AlertChange]:
        return []  # kept and watched for going offline; no rule of its own yet

    # --- dispatch tracking (replay only) ---------------------------------------------------------
    def _dispatch_due(self, alert: OpenAlert) -> datetime | None:
        if not alert.notified:
            return alert.notify_at
        policy = self.rules.policy(alert.rule)
        if not alert.acknowledged:
            return policy.ack_deadline(alert.notify_at, alert.step) if alert.step < policy.max_step else None
        if not alert.visit_escalated:
            return policy.visit_deadline(alert.notify_at)
        return None

    def _dispatch(self, state: HouseholdState, now: datetime) -> list[AlertChange]:
        changes: list[AlertChange] = []
        for key, alert in sorted(state.open.items()):
            policy = self.rules.policy(alert.rule)
            while (due := self._dispatch_due(alert)) is not None and due <= now:
                if not alert.notified:
                    alert.notified, alert.notified_roles = True, list(policy.notify)
                    changes.append(AlertChange(state.household, key, alert.rule, alert.level, due, "notified",
                                               notify=policy.notify, call=policy.call, detail=alert.detail))
                    continue
                alert.step += 1
                why = "ack" if not alert.acknowledged else "visit"
                alert.visit_escalated = alert.visit_escalated or why == "visit"
                roles = policy.escalation_roles(alert.step)
                alert.notified_roles = list(dict.fromkeys([*alert.notified_roles, *roles]))
                changes.append(AlertChange(state.household, key, alert.rule, alert.level, due, "escalated",
                                           notify=roles, detail={**alert.detail, "why": why}, step=alert.step))
        return changes


def _num(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value
