"""The care-alert rule engine: pure, no database, no clock of its own.

Per household it keeps a small `HouseholdState` (backend.alerts.state) that round-trips through
JSON, so the DB-backed desk persists it next to the household and the replay CLI keeps it in
memory. Each configured rule is watched by an instance of its kind (backend.alerts.detectors);
the engine feeds them readings and times and keeps the open alerts. Every call gets the time it
should act at; time rules report the exact moment a condition was met (`at` = last water use +
2 h), even when they are evaluated late, so a worker that was down for a while still raises what
it missed with the right time.

`observe(state, reading, now)` first evaluates the time rules at the reading's timestamp (what
was true just before it), then applies the reading. `tick(state, now)` evaluates the time rules
at `now`; `next_due(state)` says when a tick next matters, so callers wake up exactly then.

With `track_dispatch=True` (the replay CLI) the engine also releases notifications held by quiet
hours and escalates unacknowledged alerts along the chain; the desk instead keeps those timers in
the database (state survives restarts) and uses the same `RulePolicy` deadlines.
"""
from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from backend.alerts.detectors import RULE_KINDS, RuleKind
from backend.alerts.rules import AlertRules
from backend.alerts.state import DeviceSeen, HouseholdState, OpenAlert
from backend.alerts.values import AlertChange, Reading, ReadingError

__all__ = ["AlertChange", "AlertEngine", "HouseholdState", "Reading", "ReadingError"]

METER_EPSILON = 1e-6  # a cumulative meter that moved by less than this did not move
METER_RESET = 1.0  # a meter that fell by more than this was replaced or reset: a new baseline


class AlertEngine:
    def __init__(self, rules: AlertRules, *, track_dispatch: bool = False) -> None:
        self.rules = rules
        self.track_dispatch = track_dispatch
        self.detectors: list[RuleKind] = [RULE_KINDS[p.kind](p) for p in rules.rules.values()]
        # Time rules in the order they were always judged (silences, offline, clock all-clears).
        self._timed = sorted(self.detectors, key=lambda d: d.time_order)
        self._activity_kinds = set().union(*(d.activity_kinds() for d in self.detectors))

    @property
    def offline_hours(self) -> Mapping[str, float]:
        return self.rules.offline_hours

    def local(self, at: datetime) -> datetime:
        return self.rules.local(at)

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
        for detector in self.detectors:  # rules over every kind (a device back online) first
            if detector.sensor is None:
                changes.extend(detector.on_reading(self, state, reading, False))
        active = self._track_activity(state, reading)
        for detector in self.detectors:
            if detector.sensor == reading.kind:
                changes.extend(detector.on_reading(self, state, reading, active))
        if self.track_dispatch:
            changes.extend(self._dispatch(state, now))
        return changes

    def tick(self, state: HouseholdState, now: datetime) -> list[AlertChange]:
        changes = self._time_rules(state, now)
        if self.track_dispatch:
            changes.extend(self._dispatch(state, now))
        return changes

    def next_due(self, state: HouseholdState) -> datetime | None:
        candidates = [due for d in self.detectors if (due := d.next_due(self, state)) is not None]
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

    # --- raising and clearing (what rule kinds call) ---------------------------------------------
    def raise_alert(self, state: HouseholdState, key: str, rule: str, at: datetime,
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

    def clear_alert(self, state: HouseholdState, key: str, at: datetime, detail: dict[str, Any]) -> AlertChange:
        alert = state.open.pop(key)
        return AlertChange(state.household, key, alert.rule, alert.level, at, "cleared",
                           notify=tuple(alert.notified_roles) if alert.notified else (),
                           detail={**alert.detail, **detail})

    # --- readings and time ---------------------------------------------------------------------------
    def _time_rules(self, state: HouseholdState, at: datetime) -> list[AlertChange]:
        changes: list[AlertChange] = []
        for detector in self._timed:
            changes.extend(detector.at_time(self, state, at))
        return changes

    def _track_activity(self, state: HouseholdState, reading: Reading) -> bool:
        """Whether the reading is activity (a meter moved, a door opened); keeps the last one."""
        kind, value = reading.kind, reading.value
        if kind not in self._activity_kinds:
            return False
        if kind in self.rules.meters:
            previous = state.meters.get(kind)
            if previous is not None and value < previous - METER_RESET:
                state.meters[kind] = value  # meter replaced or reset: a new baseline, not a use
                return False
            state.meters[kind] = value if previous is None else max(previous, value)
            active = previous is not None and value > previous + METER_EPSILON
        else:
            active = value >= 1  # below: a heartbeat / closed report: alive, nothing happened
        last = state.last_active.get(kind)
        if active and (last is None or reading.ts > last):
            state.last_active[kind] = reading.ts
        return active

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
