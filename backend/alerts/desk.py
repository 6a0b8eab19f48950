"""AlertDesk: the DB-backed care-alert service, a facade over collaborating parts.

Ingest runs the pure engine (backend.alerts.engine) on each household's persisted state inside
one transaction that also stores the readings, writes alerts and their events, queues the SMS in
the outbox and the calls / 119 posts / SLA checks as jobs. A crash before commit loses nothing
(the sender retries the batch; stored readings are skipped as duplicates), a crash after commit
loses nothing either (the jobs and outbox rows are durable). Deadlines are columns on the alert
and `alert.sla` jobs with run_at, so they survive restarts; the clock is injected. Every
transaction goes through backend.infra.tx's TransactionRunner with the desk's `AlertUnit`.

The parts: registration (households, devices), intake (readings, time checks), notifications
(raise, tell, clear), escalation (SLA), acknowledgement (replies, key presses, staff console),
calls (voice calls and 119), records (what they all write the same way).

Jobs (register `AlertDesk.job_handlers()` with the worker):
  alert.check        {household_id}      time rules (no water, no door, offline) at their due time
  alert.notify       {alert_id}          tell people at the end of quiet hours
  alert.sla          {alert_id}          escalate when nobody acknowledged / visited in time
  alert.call         {alert_id, contact_id}   automated voice call (CallPlacer)
  alert.integration  {alert_id, name}    119 and other integration points
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from assistant.ports import Clock
from backend.alerts.acknowledgement import ACK_WORDS, VISIT_WORDS, Acknowledgement, AckResult, parse_reply
from backend.alerts.call_jobs import Calls
from backend.alerts.dispatch import CallPlacer, Integration
from backend.alerts.engine import AlertEngine
from backend.alerts.escalation import Escalation
from backend.alerts.households import Household
from backend.alerts.intake import MAX_BATCH, BatchError, IngestResult, Intake, TokenError
from backend.alerts.notifications import Notifications
from backend.alerts.records import AlertRecords
from backend.alerts.registration import Registration, new_device_token, token_hash
from backend.alerts.rules import AlertRules
from backend.alerts.store import Alert, AlertEvent, CareHousehold
from backend.alerts.unit import AlertUnit
from backend.infra.crypto import FieldCipher
from backend.infra.tx import TransactionRunner
from backend.messaging.outbox import Outbox

__all__ = ["ACK_WORDS", "MAX_BATCH", "VISIT_WORDS", "AckResult", "AlertDesk", "AlertView", "BatchError",
           "IngestResult", "TokenError", "new_device_token", "parse_reply", "token_hash"]

T = TypeVar("T")


@dataclass(frozen=True)
class AlertView:
    id: int
    household: str
    rule: str
    level: str
    state: str
    raised_at: datetime
    escalation_step: int
    ack_due_at: datetime | None
    visit_due_at: datetime | None
    events: tuple[tuple[str, str | None, str, str, datetime], ...]  # event, from, to, actor, at


class AlertDesk:
    def __init__(self, sessions: Callable[[], Session], cipher: FieldCipher, clock: Clock, outbox: Outbox,
                 rules: AlertRules, *, integrations: Mapping[str, Integration] | None = None,
                 call_placer: CallPlacer | None = None, public_base_url: str | None = None) -> None:
        self._clock = clock
        self.outbox = outbox
        self.rules = rules
        self.engine = AlertEngine(rules)
        self.runner = TransactionRunner(sessions, clock, make_unit=AlertUnit)
        self.records = AlertRecords(cipher, rules, outbox)
        notifications = Notifications(self.records, self.runner)
        escalation = Escalation(self.records, self.runner)
        self.registration = Registration(cipher, self.runner)
        self.intake = Intake(cipher, self.engine, self.runner, notifications)
        self.notifications = notifications
        self.escalation = escalation
        self.acknowledgement = Acknowledgement(self.records, self.runner, escalation)
        self.calls = Calls(self.records, self.runner, dict(integrations or {}), call_placer,
                           (public_base_url or "").rstrip("/") or None)

    # --- plumbing ----------------------------------------------------------------------------------
    def now(self) -> datetime:
        return self._clock().astimezone(UTC)

    def run(self, work: Callable[[AlertUnit], T], attempts: int = 5) -> T:
        """`work` in one transaction (backend.infra.tx: audit entries appended last, retried on a unique
        clash, a deadlock or serialisation failure; a busy SQLite is not retried but answered)."""
        return self.runner.run(work, attempts)

    def text(self, key: str, **values: Any) -> str:
        return self.records.text(key, **values)

    @property
    def integrations(self) -> Mapping[str, Integration]:
        return self.calls.integrations

    @property
    def call_placer(self) -> CallPlacer | None:
        return self.calls.call_placer

    @call_placer.setter
    def call_placer(self, placer: CallPlacer | None) -> None:
        self.calls.call_placer = placer

    @property
    def public_base_url(self) -> str | None:
        return self.calls.public_base_url

    def job_handlers(self) -> dict[str, Callable[[Mapping[str, Any]], None]]:
        return {
            "alert.check": lambda p: self.run_check(int(p["household_id"])),
            "alert.notify": lambda p: self.notify_due(int(p["alert_id"])),
            "alert.sla": lambda p: self.check_sla(int(p["alert_id"])),
            "alert.call": lambda p: self.place_call(int(p["alert_id"]), int(p["contact_id"])),
            "alert.integration": lambda p: self.send_integration(int(p["alert_id"]), str(p["name"])),
        }

    # --- registration and readings -------------------------------------------------------------------
    def register_households(self, households: Mapping[str, Household], actor: str = "system:import") -> int:
        return self.registration.register_households(households, actor)

    def register_device(self, household_code: str, device_uid: str, kind: str, token: str | None = None,
                        actor: str = "system:import") -> None:
        self.registration.register_device(household_code, device_uid, kind, token, actor)

    def ingest(self, token: str, items: Sequence[Any]) -> IngestResult:
        """Validates the whole batch first (a malformed reading refuses the batch with its index),
        then stores and judges it in one transaction."""
        return self.intake.ingest(token, items)

    # --- jobs ---------------------------------------------------------------------------------------
    def run_check(self, household_id: int) -> None:
        self.intake.run_check(household_id)

    def notify_due(self, alert_id: int) -> None:
        self.notifications.notify_due(alert_id)

    def check_sla(self, alert_id: int) -> None:
        self.escalation.check_sla(alert_id)

    def place_call(self, alert_id: int, contact_id: int) -> None:
        self.calls.place_call(alert_id, contact_id)

    def send_integration(self, alert_id: int, name: str) -> None:
        self.calls.send_integration(alert_id, name)

    def integration_body(self, unit: AlertUnit, alert: Alert, household: CareHousehold, name: str) -> dict[str, Any]:
        return self.calls.integration_body(unit, alert, household, name)

    # --- answers and staff ----------------------------------------------------------------------------
    def acknowledge(self, phone: str, reply: str, channel: str, *, alert_id: int | None = None) -> AckResult | None:
        """An SMS reply ("1"/"收到", "2"/"已到"), or a key pressed on an alert call, from someone
        we told. None when it is not an answer to an alert (the channel goes on as usual)."""
        return self.acknowledgement.acknowledge(phone, reply, channel, alert_id=alert_id)

    def acknowledge_contact(self, contact_id: int, reply: str, channel: str, alert_id: int) -> AckResult | None:
        """The alert call's key press: the call URL names the contact (signed by Twilio)."""
        return self.acknowledgement.acknowledge_contact(contact_id, reply, channel, alert_id)

    def call_answer(self, contact_id: int, alert_id: int, digits: str) -> str:
        """What the alert call says after the contact's key press (or none): their answer's reply,
        else the no-input sentence."""
        result = self.acknowledge_contact(contact_id, digits or "none", "voice", alert_id)
        return result.reply if result is not None else self.rules.texts["call_no_input"]

    def staff_action(self, alert_id: int, action: str, staff: str, note: str | None = None) -> str:
        """The staff console: acknowledge / visited / close, by a named member of staff."""
        return self.acknowledgement.staff_action(alert_id, action, staff, note)

    def view(self, alert_id: int, actor: str) -> AlertView | None:
        def work(unit: AlertUnit) -> AlertView | None:
            alert = unit.session.get(Alert, alert_id)
            if alert is None:
                return None
            household = unit.session.get(CareHousehold, alert.household_id)
            assert household is not None
            events = unit.session.scalars(select(AlertEvent).where(AlertEvent.alert_id == alert.id)
                                          .order_by(AlertEvent.id)).all()
            unit.audit(actor, "read", alert.id, entity_type="care_alert")
            return AlertView(alert.id, household.code, alert.rule, alert.level, alert.state, alert.raised_at,
                             alert.escalation_step, alert.ack_due_at, alert.visit_due_at,
                             tuple((e.event, e.from_state, e.to_state, e.actor, e.at) for e in events))

        return self.run(work)
