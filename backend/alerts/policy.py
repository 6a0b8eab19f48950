"""One alert rule's policy as data: its level, who is told, called and escalated to, its SLA
deadlines and its kind-specific parameters (parsed from config.yml `alerts.rules` by
backend.alerts.rules). Nothing here reads a clock: every deadline is asked with an explicit time."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Any

LEVELS = ("light", "medium", "severe")
# Roles a household (or its grid) names; "fire_119" is an integration, not a person.
ROLES = ("senior", "family", "grid_worker", "backup_grid_worker", "community_leader",
         "social_worker", "doctor", "property")


@dataclass(frozen=True)
class TimeWindow:
    """A daily window in local time; start > end wraps midnight (22:00–07:00)."""

    start: time
    end: time

    def contains(self, local: datetime) -> bool:
        t = local.timetz().replace(tzinfo=None)
        if self.start <= self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end

    def next_end(self, local: datetime) -> datetime:
        """The first end boundary strictly after `local` (same tz as `local`)."""
        candidate = local.replace(hour=self.end.hour, minute=self.end.minute, second=0, microsecond=0)
        return candidate if candidate > local else _next_day(candidate)


def _next_day(local: datetime) -> datetime:
    # Wall-clock arithmetic in the zone (no DST in China, but stay correct elsewhere).
    naive = local.replace(tzinfo=None) + timedelta(days=1)
    return naive.replace(tzinfo=local.tzinfo)


@dataclass(frozen=True)
class Sla:
    ack_minutes: float | None = None  # someone responsible answers ("收到", DTMF, console)
    visit_minutes: float | None = None  # someone is at the door, from the first notification


@dataclass(frozen=True)
class RulePolicy:
    name: str
    level: str
    notify: tuple[str, ...]  # SMS at raise
    call: tuple[str, ...] = ()  # automated voice call at raise (the senior's check-in)
    integrations: tuple[str, ...] = ()  # fire_119 …
    escalation: tuple[str, ...] = ()  # step k ≥ 1 notifies escalation[k]; [0] is the primary
    sla: Sla = field(default_factory=Sla)
    respect_quiet_hours: bool = True
    clear_closes: bool = True  # all-clear closes the alert (False: a person must close it)
    params: Mapping[str, Any] = field(default_factory=dict)
    kind: str = ""  # the rule kind (backend.alerts.detectors.RULE_KINDS) that watches for it

    def param(self, key: str, default: Any = None) -> Any:
        return self.params.get(key, default)

    @property
    def max_step(self) -> int:
        return max(0, len(self.escalation) - 1)

    def escalation_roles(self, step: int) -> tuple[str, ...]:
        """Who is added at escalation `step` (1-based); the last link is repeated if the chain
        is shorter than the steps taken (a leader keeps being reminded)."""
        if not self.escalation or step < 1:
            return ()
        return (self.escalation[min(step, len(self.escalation) - 1)],)

    def ack_deadline(self, notified_at: datetime, step: int) -> datetime | None:
        if self.sla.ack_minutes is None:
            return None
        return notified_at + timedelta(minutes=self.sla.ack_minutes * (step + 1))

    def visit_deadline(self, notified_at: datetime) -> datetime | None:
        if self.sla.visit_minutes is None:
            return None
        return notified_at + timedelta(minutes=self.sla.visit_minutes)
