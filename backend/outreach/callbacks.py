"""Call-backs (回电): a phone caller who asked for a person and reached nobody — after hours, or the
agent line did not answer — is called back through the outbound path.

`schedule` (the phone channel calls it when it promises a call back) queues a call to the caller
for `handoff.callback_minutes` later, moved into office hours and out of quiet hours. When it is
due it is placed only if the handoff is still waiting (an agent who took it in the console has
called already). The answered call says who is calling and puts the caller through to the agent
line, with the case's whisper. Unanswered, or no agent free: tried again after `retry_minutes`,
up to `attempts`; every attempt is an `outbound_calls` row, which the console's queue shows.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from assistant.dialogue.policy import OfficeHours
from backend.alerts.unit import AlertUnit
from backend.infra.models import Handoff
from backend.infra.tx import TransactionRunner
from backend.outreach.calls import OutboundCalls
from backend.outreach.policy import OutreachPolicy
from backend.outreach.script import CallScript
from backend.outreach.store import OutboundCall
from backend.outreach.texts import OutreachTexts

PURPOSE = "callback"
# What the console's queue says of a handoff's call-back (by the latest attempt).
CALLBACK_LABELS = {"queued": "待回电", "placing": "回电中", "placed": "回电中", "connected": "已回电接通",
                   "retrying": "回电未接通，稍后再打", "failed": "回电未接通"}


@dataclass(frozen=True)
class CallbackSettings:
    delay: timedelta = timedelta(minutes=10)
    retry: timedelta = timedelta(minutes=15)
    attempts: int = 3
    office_hours: OfficeHours = OfficeHours()  # the dialogue's: when a person answers the line

    @classmethod
    def from_config(cls, handoff: Mapping[str, Any]) -> CallbackSettings:
        return cls(timedelta(minutes=float(handoff.get("callback_minutes", 10))),
                   timedelta(minutes=float(handoff.get("callback_retry_minutes", 15))),
                   int(handoff.get("callback_attempts", 3)), OfficeHours.from_config(handoff.get("office_hours")))


class Callbacks:
    def __init__(self, runner: TransactionRunner, calls: OutboundCalls, texts: OutreachTexts, policy: OutreachPolicy,
                 settings: CallbackSettings, agent_line: bool) -> None:
        self.runner = runner
        self.calls = calls
        self.texts = texts
        self.policy = policy
        self.settings = settings
        self.agent_line = agent_line  # without one, a call-back would reach nobody: staff call back
        calls.purposes[PURPOSE] = self

    def when(self, at: datetime) -> datetime:
        """`at`, or the next moment in office hours and outside quiet hours."""
        hours, tz = self.settings.office_hours, self.policy.timezone
        local = at.astimezone(tz)
        for _ in range(15):
            if hours.open_at(local) and self.policy.allowed(local) == local:
                return local
            opening = local.replace(hour=hours.start.hour, minute=hours.start.minute, second=0, microsecond=0)
            if not (local.isoweekday() in hours.weekdays and local < opening):
                opening += timedelta(days=1)
            local = self.policy.allowed(opening).astimezone(tz)
        return local

    def schedule(self, reference: str, phone: str, language: str = "zh") -> bool:
        """A call back to `phone` for handoff `reference`; False when none is needed or possible.
        Asking twice (a webhook delivered twice) schedules one."""
        if not self.agent_line or not phone:
            return False

        def work(unit: AlertUnit) -> bool:
            handoff = unit.session.scalar(select(Handoff).where(Handoff.reference == reference))
            if handoff is None or handoff.status != "waiting":
                return False
            self.calls.queue_in(unit, PURPOSE, handoff.id, 1, phone, language,
                                self.when(unit.now + self.settings.delay))
            unit.audit("system:callback", "create", handoff.id, entity_type="handoff", callback=1)
            return True

        return self.runner.run(work)

    # CallPurpose
    def wanted(self, unit: AlertUnit, call: OutboundCall) -> bool:
        handoff = unit.session.get(Handoff, call.ref_id)
        return handoff is not None and handoff.status == "waiting"

    def ended(self, unit: AlertUnit, call: OutboundCall) -> None:
        if call.outcome == "connected" or call.attempt >= self.settings.attempts:
            return
        handoff = unit.session.get(Handoff, call.ref_id)
        if handoff is None or handoff.status != "waiting":
            return
        self.calls.queue_in(unit, PURPOSE, call.ref_id, call.attempt + 1, self.calls.phone(call), call.language,
                            self.when(unit.now + self.settings.retry))

    def answer(self, call_id: int, step: str, digits: str = "", speech: str = "", tries: int = 0) -> CallScript:
        def work(unit: AlertUnit) -> CallScript:
            call = self.calls.get(unit, call_id)
            handoff = unit.session.get(Handoff, call.ref_id) if call else None
            if call is None or handoff is None:
                return CallScript((self.texts.get("checkin_goodbye"),), "end")
            call.outcome = "connecting"
            return CallScript((self.texts.get("callback_intro", call.language),), "person", call.language,
                              reference=handoff.reference)

        return self.runner.run(work)

    def agent_answered(self, call_id: int, answered: bool) -> None:
        """The <Dial> to the agent line ended: talked (the call-back is done) or not (try again)."""

        def work(unit: AlertUnit) -> None:
            call = self.calls.get(unit, call_id)
            if call is not None:
                call.outcome = "connected" if answered else "no_agent"

        self.runner.run(work)

    def states(self, references: Sequence[str]) -> dict[str, str]:
        """Handoff reference → its latest call-back's state (a key of CALLBACK_LABELS)."""

        def work(unit: AlertUnit) -> dict[str, str]:
            rows = unit.session.execute(select(OutboundCall, Handoff.reference)
                                        .join(Handoff, Handoff.id == OutboundCall.ref_id)
                                        .where(OutboundCall.purpose == PURPOSE, Handoff.reference.in_(list(references)))
                                        .order_by(OutboundCall.attempt)).all()
            out: dict[str, str] = {}
            for call, reference in rows:
                if call.outcome == "not_needed":  # someone took the case before it was due
                    out.pop(reference, None)
                elif call.outcome == "connected":
                    out[reference] = "connected"
                elif call.state in ("queued", "placing", "placed"):
                    out[reference] = call.state
                else:
                    out[reference] = "failed" if call.attempt >= self.settings.attempts else "retrying"
            return out

        return self.runner.run(work)
