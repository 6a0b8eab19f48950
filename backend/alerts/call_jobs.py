"""Ways out other than SMS, run as jobs: the automated voice call to a contact (job `alert.call`,
at most once per alert and contact) and integration points such as 119 (job `alert.integration`,
at most once per alert and name). Each job prepares in one transaction, calls out, and records
the result in another, so a failed call or post is retried by the queue and never recorded twice."""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select

from backend.alerts.dispatch import CallPlacer, Integration, call_twiml
from backend.alerts.records import AlertRecords
from backend.alerts.store import Alert, AlertEvent, CareContact, CareHousehold
from backend.alerts.unit import AlertUnit
from backend.infra import jobs
from backend.infra.tx import TransactionRunner


class Calls:
    def __init__(self, records: AlertRecords, runner: TransactionRunner, integrations: Mapping[str, Integration],
                 call_placer: CallPlacer | None, public_base_url: str | None) -> None:
        self.records = records
        self.rules = records.rules
        self.runner = runner
        self.integrations = integrations
        self.call_placer = call_placer
        self.public_base_url = public_base_url

    def place_call(self, alert_id: int, contact_id: int) -> None:
        """Job alert.call. Raises so the queue retries; a call already placed is not placed again."""
        placer = self.call_placer
        if placer is None:
            raise jobs.PermanentJobError("voice calls are not configured (TWILIO_* settings)")
        r = self.records

        def prepare(unit: AlertUnit) -> tuple[str, str] | None:
            found = r.locked_alert(unit, alert_id)
            contact = unit.session.get(CareContact, contact_id)
            if found is None or contact is None or found[0].state == "closed" or not contact.phone_enc:
                return None
            alert, household = found
            done = unit.session.scalars(select(AlertEvent.note).where(
                AlertEvent.alert_id == alert.id, AlertEvent.event == "call_placed")).all()
            if any(json.loads(note or "{}").get("contact") == contact.id for note in done):
                return None
            # What the callee hears is the rule's (`call_text`: gas says what to do now).
            key = str(self.rules.policy(alert.rule).param("call_text", "checkin_call"))
            title = {"F": "阿姨", "M": "叔叔"}.get(household.senior_gender or "", "老人家")
            action = (f"{self.public_base_url}/webhooks/twilio/voice/alert?alert={alert.id}&contact={contact.id}"
                      if self.public_base_url else None)
            unit.audit("system:alerts", "read", contact.id, entity_type="care_contact", purpose="alert_call")
            return r.cipher.decrypt(contact.phone_enc), call_twiml(r.text(key, title=title), action)

        prepared = self.runner.run(prepare)
        if prepared is None:
            return
        phone, twiml = prepared
        result = placer.place(phone, twiml)

        def record(unit: AlertUnit) -> None:
            alert = unit.session.get(Alert, alert_id)
            if alert is not None:
                r.event(unit, alert, "call_placed", alert.state, alert.state, "system:alerts",
                        {"contact": contact_id, "call_sid": result.call_sid})

        self.runner.run(record)

    def integration_body(self, unit: AlertUnit, alert: Alert, household: CareHousehold, name: str) -> dict[str, Any]:
        r = self.records
        people = r.people(unit, household)
        senior = next((p for p in people if p.role == "senior"), None)
        staff = next((p for p in people if p.role in self.rules.policy(alert.rule).escalation[:1]), None)
        return {
            "type": "care_alert", "version": 1, "idempotency_key": f"care-alert-{alert.id}-{name}",
            "alert_id": alert.id, "rule": alert.rule, "level": alert.level,
            "detected_at": alert.raised_at.astimezone(self.rules.timezone).isoformat(),
            "household": household.code, "grid": household.grid_id,
            "address": r.address(household),
            "senior": {"name": senior.name, "phone": senior.phone} if senior else None,
            "contact": {"role": staff.role, "name": staff.name, "phone": staff.phone} if staff else None,
            "detail": json.loads(alert.detail or "{}"),
        }

    def send_integration(self, alert_id: int, name: str) -> None:
        integration = self.integrations.get(name)
        if integration is None:
            raise jobs.PermanentJobError(f"integration {name} is not configured")

        def prepare(unit: AlertUnit) -> dict[str, Any] | None:
            alert = unit.session.get(Alert, alert_id)
            if alert is None:
                return None
            done = unit.session.scalar(select(AlertEvent.id).where(
                AlertEvent.alert_id == alert.id, AlertEvent.event == f"sent_{name}"))
            if done is not None:
                return None
            household = unit.session.get(CareHousehold, alert.household_id)
            assert household is not None
            return self.integration_body(unit, alert, household, name)

        body = self.runner.run(prepare)
        if body is None:
            return
        integration.send(body)

        def record(unit: AlertUnit) -> None:
            alert = unit.session.get(Alert, alert_id)
            if alert is not None:
                self.records.event(unit, alert, f"sent_{name}", alert.state, alert.state, "system:alerts")
                unit.audit("system:alerts", "create", alert.id, entity_type="care_alert", sent_to=name)

        self.runner.run(record)
