"""Outreach settings from config.yml `outreach:`: quiet hours, the gap between calls to one
person, the check-in defaults and the notices' costs. Nothing here reads a clock."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from backend.outreach.script import QuietHours


def _time(value: Any) -> time:
    return time.fromisoformat(str(value))


@dataclass(frozen=True)
class CheckinDefaults:
    window_start: str = "09:00"
    window_end: str = "11:00"
    days: str = "1234567"
    retry_minutes: int = 20
    attempts: int = 3
    sms_wait_minutes: int = 30
    plan_at: str = "06:00"  # local time the day's calls are planned


@dataclass(frozen=True)
class OutreachPolicy:
    timezone: ZoneInfo
    quiet: QuietHours
    min_gap: timedelta  # notices: no second call to one person within this
    checkin: CheckinDefaults
    notice_call_attempts: int = 2
    notice_retry_minutes: int = 60
    sms_cost_per_segment: float = 0.05  # 元, what staff see before sending
    call_cost_per_minute: float = 0.10

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None, tz: str = "Asia/Shanghai") -> OutreachPolicy:
        data = dict(config or {})
        quiet = data.get("quiet_hours") or {"start": "20:30", "end": "08:30"}
        checkin = {k: v for k, v in (data.get("checkin") or {}).items() if k in CheckinDefaults.__dataclass_fields__}
        notices = data.get("notices") or {}
        return cls(ZoneInfo(str(data.get("timezone") or tz)), QuietHours(_time(quiet["start"]), _time(quiet["end"])),
                   timedelta(hours=float(data.get("min_gap_hours", 4))), CheckinDefaults(**checkin),
                   int(notices.get("call_attempts", 2)), int(notices.get("retry_minutes", 60)),
                   float(notices.get("sms_cost_per_segment", 0.05)), float(notices.get("call_cost_per_minute", 0.10)))

    def local(self, at: datetime) -> datetime:
        return at.astimezone(self.timezone)

    def allowed(self, at: datetime) -> datetime:
        """`at`, or the end of quiet hours when `at` falls inside them."""
        local = self.local(at)
        if not self.quiet.contains(local.timetz().replace(tzinfo=None)):
            return at
        end = local.replace(hour=self.quiet.end.hour, minute=self.quiet.end.minute, second=0, microsecond=0)
        return end if end > local else end + timedelta(days=1)

    def at_local(self, day: date, hhmm: str) -> datetime:
        return datetime.combine(day, _time(hhmm), self.timezone)

    def today(self, now: datetime) -> date:
        return self.local(now).date()
