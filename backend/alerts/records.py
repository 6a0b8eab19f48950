"""What every part of the alert desk writes and reads the same way: alert events and state moves,
SLA timers, the outbox SMS, the household's contacts and the sentences (`what` happened, who)."""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select

from backend.alerts.rules import AlertRules
from backend.alerts.store import Alert, AlertEvent, CareContact, CareHousehold
from backend.alerts.unit import AlertUnit, Person
from backend.infra import jobs
from backend.infra.crypto import FieldCipher
from backend.messaging.outbox import Outbox

ROLE_LABELS = {"grid_worker": "网格员", "backup_grid_worker": "网格员", "community_leader": "社区负责人",
               "social_worker": "社工", "doctor": "家庭医生", "property": "物业", "family": "家属", "senior": "老人"}
STAFF_ROLES = frozenset({"grid_worker", "backup_grid_worker", "community_leader", "social_worker", "doctor",
                         "property"})


class AlertRecords:
    def __init__(self, cipher: FieldCipher, rules: AlertRules, outbox: Outbox) -> None:
        self.cipher = cipher
        self.rules = rules
        self.outbox = outbox

    # --- sentences -------------------------------------------------------------------------------
    def text(self, key: str, **values: Any) -> str:
        return self.rules.texts[key].format(**values)

    def what(self, alert: Alert) -> str:
        detail = json.loads(alert.detail or "{}")
        values = {"hours": "", "percent": "", "value": "", "minutes": "", **detail}
        texts = self.rules.texts
        values["device_label"] = texts.get(f"device_{detail.get('kind', '')}") or texts["device_other"]
        return self.text(f"what_{alert.rule}", **values)

    def senior(self, household: CareHousehold) -> str:
        return self.cipher.decrypt(household.senior_name_enc)

    def address(self, household: CareHousehold) -> str:
        return self.cipher.decrypt(household.address_enc) or ""

    # --- contacts and SMS --------------------------------------------------------------------------
    def people(self, unit: AlertUnit, household: CareHousehold) -> list[Person]:
        cached = unit.contacts.get(household.id)
        if cached is not None:
            return cached
        rows = unit.session.scalars(select(CareContact).where(CareContact.household_id == household.id)
                                    .order_by(CareContact.role, CareContact.position)).all()
        people = [Person(r.id, r.role, self.cipher.decrypt(r.name_enc), self.cipher.decrypt(r.phone_enc))
                  for r in rows]
        unit.contacts[household.id] = people
        unit.audit("system:alerts", "read", household.id, entity_type="care_household",
                   purpose="alert_notification")
        return people

    def sms(self, unit: AlertUnit, alert: Alert, person: Person, body: str, what: str) -> None:
        assert person.phone
        self.outbox.enqueue_in(unit.session, person.phone, body, f"care-alert:{alert.id}:{what}:{person.id}")

    # --- alert rows ---------------------------------------------------------------------------------
    def event(self, unit: AlertUnit, alert: Alert, event: str, from_state: str | None, to_state: str, actor: str,
              note: Mapping[str, Any] | None = None) -> None:
        unit.session.add(AlertEvent(alert_id=alert.id, event=event, from_state=from_state, to_state=to_state,
                                    actor=actor[:64],
                                    note=json.dumps(dict(note), ensure_ascii=False) if note else None, at=unit.now))

    def move(self, unit: AlertUnit, alert: Alert, to: str, event: str, actor: str,
             note: Mapping[str, Any] | None = None) -> None:
        self.event(unit, alert, event, alert.state, to, actor, note)
        alert.state, alert.updated_at = to, unit.now

    def schedule_sla(self, unit: AlertUnit, alert: Alert) -> None:
        due = min((d for d in (alert.ack_due_at, alert.visit_due_at) if d is not None), default=None)
        if due is not None:
            jobs.enqueue_in(unit.session, "alert.sla", {"alert_id": alert.id}, due, f"alert.sla:{alert.id}", unit.now)

    def locked_alert(self, unit: AlertUnit, alert_id: int) -> tuple[Alert, CareHousehold] | None:
        alert = unit.session.scalar(select(Alert).where(Alert.id == alert_id).with_for_update())
        if alert is None:
            return None
        household = unit.session.get(CareHousehold, alert.household_id)
        assert household is not None
        return alert, household

    def tell_family(self, unit: AlertUnit, alert: Alert, household: CareHousehold, key: str, who: str) -> None:
        if "family" not in json.loads(alert.notified_roles):
            return
        for person in self.people(unit, household):
            if person.role == "family" and person.phone:
                self.sms(unit, alert, person, self.text(key, who=who, senior=self.senior(household)), key)


def n(value: float | None) -> str:
    """Minutes in a sentence: 15, 2.5 ("" for none)."""
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
