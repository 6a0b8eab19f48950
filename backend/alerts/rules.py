"""Care-alert rules as data: what `config.yml` `alerts:` declares, parsed into frozen dataclasses.

Thresholds, windows, quiet hours, SLA minutes and escalation chains all live in the config, so a
community can tune them without a code change. Nothing here reads a clock: every time question
(`in_quiet_hours`, `quiet_end`) is asked with an explicit `at`.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

LEVELS = ("light", "medium", "severe")
KINDS = ("water", "electricity", "gas", "door", "heart_rate", "bed")
RULES = ("no_water", "electricity_drop", "no_door", "gas_leak", "heart_rate", "sensor_offline")
# Roles a household (or its grid) names; "fire_119" is an integration, not a person.
ROLES = ("senior", "family", "grid_worker", "backup_grid_worker", "community_leader",
         "social_worker", "doctor", "property")
DEFAULT_OFFLINE_HOURS = {"water": 6.0, "electricity": 6.0, "gas": 2.0, "door": 24.0,
                         "heart_rate": 2.0, "bed": 12.0}


class RulesConfigError(ValueError):
    """config.yml `alerts:` is malformed: refuse to start rather than watch nobody."""


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


@dataclass(frozen=True)
class AlertRules:
    timezone: ZoneInfo
    quiet_hours: TimeWindow | None
    offline_hours: Mapping[str, float]
    rules: Mapping[str, RulePolicy]
    ack_roles: frozenset[str]
    integrations: Mapping[str, Mapping[str, Any]]
    texts: Mapping[str, str]

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
        try:
            tz = ZoneInfo(str(data.get("timezone") or default_tz))
            quiet = data.get("quiet_hours")
            quiet_window = _window(quiet) if quiet else None
            offline = {**DEFAULT_OFFLINE_HOURS, **{k: float(v) for k, v in (data.get("offline_hours") or {}).items()}}
            chain = tuple(data.get("escalation_chain") or ("grid_worker", "backup_grid_worker", "community_leader"))
            rules = {name: _policy(name, spec or {}, chain)
                     for name, spec in (data.get("rules") or {}).items() if (spec or {}).get("enabled", True)}
        except (TypeError, ValueError, KeyError) as exc:
            raise RulesConfigError(f"alerts config: {exc}") from None
        unknown = set(rules) - set(RULES)
        if unknown:
            raise RulesConfigError(f"alerts config: unknown rules {sorted(unknown)}")
        for policy in rules.values():
            bad = {r for r in (*policy.notify, *policy.call, *policy.escalation) if r not in ROLES}
            if bad:
                raise RulesConfigError(f"alerts.rules.{policy.name}: unknown roles {sorted(bad)}")
        ack_roles = frozenset(data.get("ack_roles") or
                              ("grid_worker", "backup_grid_worker", "community_leader", "social_worker",
                               "doctor", "property"))
        return cls(tz, quiet_window, offline, rules, ack_roles,
                   {k: dict(v or {}) for k, v in (data.get("integrations") or {}).items()},
                   {**DEFAULT_TEXTS, **(data.get("texts") or {})})


def _window(spec: Mapping[str, Any]) -> TimeWindow:
    return TimeWindow(time.fromisoformat(str(spec["start"])), time.fromisoformat(str(spec["end"])))


def _policy(name: str, spec: Mapping[str, Any], chain: tuple[str, ...]) -> RulePolicy:
    level = str(spec.get("level", "medium"))
    if level not in LEVELS:
        raise ValueError(f"rule {name}: level must be one of {LEVELS}")
    sla = spec.get("sla") or {}
    reserved = {"level", "notify", "call", "integrations", "escalation", "sla", "quiet_hours",
                "clear_closes", "enabled"}
    params = {k: v for k, v in spec.items() if k not in reserved}
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
        params=params,
    )


def _minutes(value: Any) -> float | None:
    return None if value is None else float(value)


# What staff, families and seniors read or hear. Override any of them in `alerts.texts`.
# Staff get the address and what to do; family get what happened and who is on the way; the
# senior only ever hears the check-in question (or, for gas, what to do right now).
DEFAULT_TEXTS: dict[str, str] = {
    "what_no_water": "白天{hours}小时未用水",
    "what_electricity_drop": "用电量比平时下降{percent}%",
    "what_no_door": "{hours}小时未开门",
    "what_gas_leak": "燃气泄漏报警",
    "what_heart_rate": "心率异常（{value}次/分）持续{minutes}分钟",
    "what_sensor_offline": "{device_label}已{hours}小时无数据",
    "staff_raised": "【关爱提醒{alert}】{grid}网格{senior}（{address}）：{what}。{todo}回复1或“收到”确认，上门后回复2（同时有几条提醒时加编号，如“1 {alert}”）。",
    "staff_todo_sla": "请{ack}分钟内电话联系{visit}。",
    "staff_todo_visit": "，{visit}分钟内上门",
    "staff_todo_none": "请尽快联系。",
    "staff_escalated": "【升级{alert}】{grid}网格{senior}（{address}）：{what}，{why}。请立即处理，回复1或“收到”确认。",
    "why_ack": "{minutes}分钟内无人确认",
    "why_visit": "{minutes}分钟内未上门",
    "why_senior": "老人电话中按0要求社区联系",
    "family_raised": "【社区关爱】您的家人{senior}家中{what}。已通知{who}，会尽快电话联系或上门。",
    "family_severe": "【社区紧急】您的家人{senior}家中{what}，已通知119和{who}，请尽快联系老人。",
    "family_acknowledged": "【社区关爱】{who}已确认，正在处理{senior}家的情况。",
    "family_visited": "【社区关爱】{who}已上门看望{senior}。",
    "family_cleared": "【社区关爱】{senior}家中情况已恢复正常（{what}）。",
    "staff_cleared": "【关爱提醒{alert}】{senior}家已恢复正常：{what}。",
    "ack_ok": "已确认关爱提醒{alert}，谢谢。上门后请回复2。",
    "ack_already": "关爱提醒{alert}已有人确认，谢谢。",
    "visit_ok": "已记录上门（关爱提醒{alert}），谢谢。",
    "family_reply": "已收到您的回复，社区工作人员正在处理，有情况会再短信告诉您。",
    "who_default": "社区工作人员",
    "checkin_call": "{title}您好，这里是社区。按1表示一切平安，按0转社区。",
    "gas_call": "{title}您好，这里是社区。家里燃气报警了，请马上关掉燃气阀门，打开窗户，到门外去。消防和家人已经通知了。按1表示听到了。",
    "call_thanks": "好的，谢谢您，祝您平安。",
    "call_transfer": "好的，马上请社区工作人员联系您。",
    "call_no_input": "没有听到按键，社区工作人员会再联系您。",
}
