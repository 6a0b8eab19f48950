"""Care-alert rules as data: what `config.yml` `alerts:` declares, parsed into frozen dataclasses.

Thresholds, windows, quiet hours, SLA minutes, escalation chains and the rules themselves live in
the config, so a community can tune them — or add a threshold rule over a new sensor kind —
without a code change. Each rule names its `kind` (backend.alerts.detectors.RULE_KINDS); an
unknown kind, a missing required key or a rule without its `what_<rule>` text is refused at
start-up with a message naming it. Nothing here reads a clock: every time question
(`in_quiet_hours`, `quiet_end`) is asked with an explicit `at`.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from backend.alerts.detectors import RULE_KINDS
from backend.alerts.policy import LEVELS, ROLES, RulePolicy, Sla, TimeWindow
from backend.alerts.texts import DEFAULT_TEXTS
from backend.alerts.values import KINDS

__all__ = ["KINDS", "LEVELS", "ROLES", "AlertRules", "RulePolicy", "RulesConfigError", "Sla", "TimeWindow"]

DEFAULT_OFFLINE_HOURS = {"water": 6.0, "electricity": 6.0, "gas": 2.0, "door": 24.0,
                         "heart_rate": 2.0, "bed": 12.0}
DEFAULT_METERS = ("water", "electricity")  # cumulative meters: activity = the meter moved
# Keys every rule may have; everything else is the kind's own parameters.
POLICY_KEYS = {"kind", "level", "notify", "call", "integrations", "escalation", "sla", "quiet_hours",
               "clear_closes", "enabled"}


class RulesConfigError(ValueError):
    """config.yml `alerts:` is malformed: refuse to start rather than watch nobody."""


@dataclass(frozen=True)
class AlertRules:
    timezone: ZoneInfo
    quiet_hours: TimeWindow | None
    offline_hours: Mapping[str, float]
    rules: Mapping[str, RulePolicy]
    ack_roles: frozenset[str]
    integrations: Mapping[str, Mapping[str, Any]]
    texts: Mapping[str, str]
    kinds: tuple[str, ...] = KINDS  # sensor kinds a reading may have (shipped + named by config)
    meters: frozenset[str] = frozenset(DEFAULT_METERS)

    def policy(self, rule: str) -> RulePolicy:
        return self.rules[rule]

    def enabled(self, rule: str) -> bool:
        return rule in self.rules

    def local(self, at: datetime) -> datetime:
        return at.astimezone(self.timezone)

    def notify_at(self, policy: RulePolicy, at: datetime) -> datetime:
        """When people may be told: now, or at the end of quiet hours for what can wait."""
        if self.quiet_hours is None or not policy.respect_quiet_hours or policy.level == "severe":
            return at
        local = self.local(at)
        if not self.quiet_hours.contains(local):
            return at
        return self.quiet_hours.next_end(local)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None, default_tz: str = "Asia/Shanghai") -> AlertRules:
        data = dict(config or {})
        texts = {**DEFAULT_TEXTS, **(data.get("texts") or {})}
        try:
            tz = ZoneInfo(str(data.get("timezone") or default_tz))
            quiet = data.get("quiet_hours")
            quiet_window = _window(quiet) if quiet else None
            offline = {**DEFAULT_OFFLINE_HOURS, **{k: float(v) for k, v in (data.get("offline_hours") or {}).items()}}
            chain = tuple(data.get("escalation_chain") or ("grid_worker", "backup_grid_worker", "community_leader"))
            rules = {name: _policy(name, spec or {}, chain, texts)
                     for name, spec in (data.get("rules") or {}).items() if (spec or {}).get("enabled", True)}
        except (TypeError, ValueError, KeyError) as exc:
            raise RulesConfigError(f"alerts config: {exc}") from None
        for policy in rules.values():
            bad = {r for r in (*policy.notify, *policy.call, *policy.escalation) if r not in ROLES}
            if bad:
                raise RulesConfigError(f"alerts.rules.{policy.name}: unknown roles {sorted(bad)}")
        ack_roles = frozenset(data.get("ack_roles") or
                              ("grid_worker", "backup_grid_worker", "community_leader", "social_worker",
                               "doctor", "property"))
        named = [str(p.param("sensor")) for p in rules.values() if p.param("sensor")]
        kinds = tuple(dict.fromkeys([*KINDS, *offline, *named]))
        return cls(tz, quiet_window, offline, rules, ack_roles,
                   {k: dict(v or {}) for k, v in (data.get("integrations") or {}).items()},
                   texts, kinds, frozenset(str(k) for k in data.get("meters") or DEFAULT_METERS))


def _window(spec: Mapping[str, Any]) -> TimeWindow:
    return TimeWindow(time.fromisoformat(str(spec["start"])), time.fromisoformat(str(spec["end"])))


def _policy(name: str, spec: Mapping[str, Any], chain: tuple[str, ...], texts: Mapping[str, str]) -> RulePolicy:
    # A rule named like a kind (sensor_offline, electricity_drop) may leave `kind` out.
    kind = str(spec.get("kind") or (name if name in RULE_KINDS else ""))
    if not kind:
        raise ValueError(f"alerts.rules.{name}: missing required key 'kind' (one of {', '.join(RULE_KINDS)})")
    if kind not in RULE_KINDS:
        raise ValueError(f"alerts.rules.{name}: unknown kind {kind!r} (one of {', '.join(RULE_KINDS)})")
    RULE_KINDS[kind].check(name, spec)
    if f"what_{name}" not in texts:
        raise ValueError(f"alerts.rules.{name}: missing alerts.texts.what_{name} (what the SMS says happened)")
    level = str(spec.get("level", "medium"))
    if level not in LEVELS:
        raise ValueError(f"rule {name}: level must be one of {LEVELS}")
    sla = spec.get("sla") or {}
    params = {k: v for k, v in spec.items() if k not in POLICY_KEYS}
    if "day" in params:
        params["day"] = _window(params["day"])
    return RulePolicy(
        name=name, level=level,
        notify=tuple(spec.get("notify") or ()), call=tuple(spec.get("call") or ()),
        integrations=tuple(spec.get("integrations") or ()),
        escalation=tuple(spec.get("escalation") or chain),
        sla=Sla(_minutes(sla.get("ack_minutes")), _minutes(sla.get("visit_minutes"))),
        respect_quiet_hours=str(spec.get("quiet_hours", "hold")) != "ignore",
        clear_closes=bool(spec.get("clear_closes", True)),
        params=params, kind=kind,
    )


def _minutes(value: Any) -> float | None:
    return None if value is None else float(value)
