"""Rule kinds: what watches the readings for one configured rule, registered in one table.

Two generic kinds cover most rules, so a new rule over a new sensor kind is config only:
  threshold  a reading of `sensor` out of range — `above` / `at_least` / `below` / `at_most`
             (both a lower and an upper bound = outside a band) — for `minutes` (0: at once); it
             clears after `clear_after_minutes` back in range, judged on the next readings
             (`clear_by: readings`, a band that reports all the time) or by the clock
             (`clear_by: clock`, a detector that only reports changes: silence means normal)
  silence    no activity of `sensor` for `minutes` / `hours`, counting only time inside the daily
             `day` window if one is given; `restarted_by` lists other kinds whose activity
             restarts the count (a door opening: she went out or came in)
Rules that need code of their own are named kinds: `electricity_drop` (a day's use against the
household's own baseline) and `sensor_offline` (any device silent for its kind's offline hours).

Activity of a sensor kind: for a cumulative meter (`alerts.meters`: water) the meter moved; for
any other kind a reading ≥ 1 (0 is a heartbeat: the sensor is alive, nothing happened).
"""
from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, timedelta
from typing import Any, ClassVar, Protocol

from backend.alerts.policy import RulePolicy, TimeWindow
from backend.alerts.state import HouseholdState
from backend.alerts.values import AlertChange, Reading, num


class Alerting(Protocol):
    """What a rule kind may do to a household's alerts (the engine)."""

    offline_hours: Mapping[str, float]

    def raise_alert(self, state: HouseholdState, key: str, rule: str, at: datetime,
                    detail: dict[str, Any]) -> AlertChange: ...

    def clear_alert(self, state: HouseholdState, key: str, at: datetime, detail: dict[str, Any]) -> AlertChange: ...

    def local(self, at: datetime) -> datetime: ...


class RuleKind:
    """Watches for one configured rule. `required`: keys the rule must have; `one_of`: at least one
    of these. `time_order`: when several rules come due in one tick, silences are judged first,
    then offline devices, then clock all-clears."""

    required: ClassVar[tuple[str, ...]] = ()
    one_of: ClassVar[tuple[str, ...]] = ()
    numbers: ClassVar[tuple[str, ...]] = ()
    time_order: ClassVar[int] = 0

    def __init__(self, policy: RulePolicy) -> None:
        self.policy = policy
        self.name = policy.name

    @classmethod
    def check(cls, name: str, spec: Mapping[str, Any]) -> None:
        missing = [key for key in cls.required if spec.get(key) in (None, "")]
        if missing:
            raise ValueError(f"alerts.rules.{name}: missing required key {missing[0]!r}")
        if cls.one_of and not any(spec.get(key) is not None for key in cls.one_of):
            raise ValueError(f"alerts.rules.{name}: needs one of {', '.join(cls.one_of)}")
        for key in cls.numbers:
            try:
                float(spec.get(key) or 0)
            except (TypeError, ValueError):
                raise ValueError(f"alerts.rules.{name}.{key}: must be a number, not {spec[key]!r}") from None

    @property
    def sensor(self) -> str | None:
        """The sensor kind whose readings this rule judges (None: every kind)."""
        value = self.policy.param("sensor")
        return str(value) if value else None

    def activity_kinds(self) -> set[str]:
        return set()

    def on_reading(self, alerting: Alerting, state: HouseholdState, reading: Reading,
                   active: bool) -> list[AlertChange]:
        return []

    def at_time(self, alerting: Alerting, state: HouseholdState, at: datetime) -> list[AlertChange]:
        return []

    def next_due(self, alerting: Alerting, state: HouseholdState) -> datetime | None:
        return None

    def _float(self, key: str, default: float) -> float:
        return float(self.policy.param(key, default))


class ThresholdRule(RuleKind):
    required = ("sensor",)
    one_of = ("above", "at_least", "below", "at_most")
    numbers = (*one_of, "minutes", "clear_after_minutes")
    time_order = 2

    @classmethod
    def check(cls, name: str, spec: Mapping[str, Any]) -> None:
        super().check(name, spec)
        if str(spec.get("clear_by", "readings")) not in ("readings", "clock"):
            raise ValueError(f"alerts.rules.{name}: clear_by must be readings or clock")

    def out_of_range(self, value: float) -> bool:
        p = self.policy.param
        return ((p("above") is not None and value > float(p("above")))
                or (p("at_least") is not None and value >= float(p("at_least")))
                or (p("below") is not None and value < float(p("below")))
                or (p("at_most") is not None and value <= float(p("at_most"))))

    @property
    def by_clock(self) -> bool:
        return str(self.policy.param("clear_by", "readings")) == "clock"

    def on_reading(self, alerting: Alerting, state: HouseholdState, reading: Reading,
                   active: bool) -> list[AlertChange]:
        run = state.run(self.name)
        if self.out_of_range(reading.value):
            run.in_since = None
            run.out_since = run.out_since or reading.ts
            minutes = self._float("minutes", 0)
            if self.name not in state.open and reading.ts - run.out_since >= timedelta(minutes=minutes):
                detail: dict[str, Any] = {"value": num(reading.value)}
                if minutes:
                    detail["minutes"] = num(minutes)
                return [alerting.raise_alert(state, self.name, self.name, reading.ts, detail)]
            return []
        run.out_since = None
        run.in_since = run.in_since or reading.ts
        if not self.by_clock and self.name in state.open and reading.ts - run.in_since >= self._clear_after():
            return [alerting.clear_alert(state, self.name, reading.ts, {"value": num(reading.value)})]
        return []

    def at_time(self, alerting: Alerting, state: HouseholdState, at: datetime) -> list[AlertChange]:
        due = self.next_due(alerting, state)
        if due is None or at < due:
            return []
        state.run(self.name).in_since = None
        return [alerting.clear_alert(state, self.name, due, {})]

    def next_due(self, alerting: Alerting, state: HouseholdState) -> datetime | None:
        run = state.runs.get(self.name)
        if not self.by_clock or self.name not in state.open or run is None or run.in_since is None:
            return None
        return run.in_since + self._clear_after()

    def _clear_after(self) -> timedelta:
        return timedelta(minutes=self._float("clear_after_minutes", 0))


class SilenceRule(RuleKind):
    required = ("sensor",)
    one_of = ("minutes", "hours")
    numbers = ("minutes", "hours")

    def activity_kinds(self) -> set[str]:
        return {str(self.sensor), *self._restarted_by()}

    def on_reading(self, alerting: Alerting, state: HouseholdState, reading: Reading,
                   active: bool) -> list[AlertChange]:
        if active and self.name in state.open:
            return [alerting.clear_alert(state, self.name, reading.ts, {})]
        return []

    def at_time(self, alerting: Alerting, state: HouseholdState, at: datetime) -> list[AlertChange]:
        due = self.next_due(alerting, state)
        if due is None or at < due:
            return []
        return [alerting.raise_alert(state, self.name, self.name, due, {"hours": self._hours()})]

    def next_due(self, alerting: Alerting, state: HouseholdState) -> datetime | None:
        device = state.device_of_kind(str(self.sensor))
        if device is None or self.name in state.open:
            return None
        since = state.last_active.get(str(self.sensor)) or device.first
        for kind in self._restarted_by():
            if kind in state.last_active:
                since = max(since, state.last_active[kind])
        window = self.policy.param("day")
        if window is None:
            return since + self._quiet()
        return self._due_in_window(alerting.local(since), window)

    def _restarted_by(self) -> tuple[str, ...]:
        return tuple(str(k) for k in self.policy.param("restarted_by") or ())

    def _quiet(self) -> timedelta:
        if self.policy.param("hours") is not None:
            return timedelta(hours=self._float("hours", 0))
        return timedelta(minutes=self._float("minutes", 0))

    def _hours(self) -> float | int:
        if self.policy.param("hours") is not None:
            return num(self._float("hours", 0))
        return num(round(self._float("minutes", 0) / 60, 1))

    def _due_in_window(self, local: datetime, window: TimeWindow) -> datetime:
        """When "no activity for N minutes inside the day window" comes true, counting only time
        inside the window (a night's sleep is not a silence)."""
        quiet = self._quiet()
        for _ in range(3):
            start = local.replace(hour=window.start.hour, minute=window.start.minute, second=0, microsecond=0)
            end = local.replace(hour=window.end.hour, minute=window.end.minute, second=0, microsecond=0)
            begin = max(local, start)
            if begin + quiet <= end:
                return begin + quiet
            local = (start.replace(tzinfo=None) + timedelta(days=1)).replace(tzinfo=start.tzinfo)
        raise ValueError(f"{self.name}: quiet time longer than the day window")


class ElectricityDrop(RuleKind):
    """A finished day's use (a cumulative meter, summed per local day) at least `drop_ratio` below
    the average of the household's own last `baseline_days` normal days."""

    numbers = ("drop_ratio", "baseline_days", "min_baseline_days", "min_daily_kwh")

    @property
    def sensor(self) -> str | None:
        return str(self.policy.param("sensor", "electricity"))

    def on_reading(self, alerting: Alerting, state: HouseholdState, reading: Reading,
                   active: bool) -> list[AlertChange]:
        day = alerting.local(reading.ts).date().isoformat()
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
            changes.extend(self._judge_day(alerting, state, used, reading.ts))
        # The finished day's end is the next day's start; after a gap we start over.
        state.elec_prev_last = state.elec_day_last if consecutive else None
        state.elec_day, state.elec_day_last = day, reading.value
        return changes

    def _judge_day(self, alerting: Alerting, state: HouseholdState, used: float, at: datetime) -> list[AlertChange]:
        if used < 0:
            return []
        days = int(self._float("baseline_days", 7))
        history = state.elec_history[-days:]
        ratio = self._float("drop_ratio", 0.3)
        changes: list[AlertChange] = []
        dropped = False
        if len(history) >= int(self._float("min_baseline_days", 3)):
            baseline = sum(history) / len(history)
            if baseline >= self._float("min_daily_kwh", 0.5):
                dropped = used <= baseline * (1 - ratio)
                detail = {"percent": round(100 * (1 - used / baseline)), "used": round(used, 2),
                          "baseline": round(baseline, 2)}
                if dropped and self.name not in state.open:
                    changes.append(alerting.raise_alert(state, self.name, self.name, at, detail))
                elif not dropped and self.name in state.open:
                    changes.append(alerting.clear_alert(state, self.name, at, {"used": round(used, 2)}))
        if not dropped:  # a low day would drag the baseline down towards itself
            state.elec_history = [*history, used][-days:]
        return changes


class SensorOffline(RuleKind):
    """Any device silent for its kind's `alerts.offline_hours`: one alert per device, cleared by
    its next reading (silence is never "all fine")."""

    time_order = 1

    @property
    def sensor(self) -> str | None:
        return None

    def on_reading(self, alerting: Alerting, state: HouseholdState, reading: Reading,
                   active: bool) -> list[AlertChange]:
        key = f"{self.name}:{reading.device}"
        if key in state.open:
            return [alerting.clear_alert(state, key, reading.ts, {"device": reading.device})]
        return []

    def at_time(self, alerting: Alerting, state: HouseholdState, at: datetime) -> list[AlertChange]:
        changes: list[AlertChange] = []
        for device, seen in sorted(state.devices.items()):
            key = f"{self.name}:{device}"
            after = self._after(alerting, seen.kind)
            if key not in state.open and at >= seen.last + after:
                changes.append(alerting.raise_alert(state, key, self.name, seen.last + after, {
                    "device": device, "kind": seen.kind, "hours": num(after.total_seconds() / 3600)}))
        return changes

    def next_due(self, alerting: Alerting, state: HouseholdState) -> datetime | None:
        due = [seen.last + self._after(alerting, seen.kind) for device, seen in state.devices.items()
               if f"{self.name}:{device}" not in state.open]
        return min(due) if due else None

    @staticmethod
    def _after(alerting: Alerting, kind: str) -> timedelta:
        return timedelta(hours=float(alerting.offline_hours.get(kind, 6)))


class ExternalRule(RuleKind):
    """Raised by another service, never by readings: the daily check-in call nobody answered
    (backend.outreach). It has the rules' levels, SMS, SLA timers and escalation all the same."""


# The one table of rule kinds: config.yml `alerts.rules.<name>.kind` picks one.
RULE_KINDS: dict[str, type[RuleKind]] = {
    "external": ExternalRule,
    "threshold": ThresholdRule,
    "silence": SilenceRule,
    "electricity_drop": ElectricityDrop,
    "sensor_offline": SensorOffline,
}
