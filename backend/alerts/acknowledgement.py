"""Answers to an alert: an SMS reply ("1"/"收到", "2"/"已到", optionally with the alert number), a
key pressed on the alert call (the senior's 1 = all well / 0 = put me through; staff 1 / 2), and
the staff console's acknowledge / visited / close. Family replies are recorded but do not stop
the clock; every answer is an event on the alert and an audit entry."""
from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select

from backend.alerts.escalation import Escalation
from backend.alerts.records import ROLE_LABELS, AlertRecords
from backend.alerts.store import Alert, CareContact, CareHousehold
from backend.alerts.unit import AlertUnit
from backend.infra.tx import TransactionRunner

ACK_WORDS = {"1", "收到", "已收到", "好", "好的", "确认", "收到了", "ok"}
VISIT_WORDS = {"2", "已到", "到了", "已上门", "到"}
STAFF_ACTIONS = ("acknowledge", "visited", "close")
_PUNCT_RE = re.compile(r"[\s。，,.!！?？~～【】\[\]]+")
_REPLY_RE = re.compile(r"([^\d\s#:：,，]+|\d)(?:[\s#:：,，]*(\d{1,9}))?[\s。.!！~～]*")


@dataclass(frozen=True)
class AckResult:
    alert_id: int
    action: str  # acknowledged / already / visited / senior_ok / senior_transfer / family_reply
    reply: str  # what to answer (SMS text or what the call says)


def parse_reply(reply: str) -> tuple[str, int | None] | None:
    """"收到" / "1" / "收到 17" / "已到#17" → (word, alert number or None). A grid worker may
    look after several homes with alerts open at once; the number picks one (else the latest)."""
    text = unicodedata.normalize("NFKC", reply or "").strip().lower()
    match = _REPLY_RE.fullmatch(text)
    if match is None:
        return None
    return _PUNCT_RE.sub("", match.group(1)), int(match.group(2)) if match.group(2) else None


class Acknowledgement:
    def __init__(self, records: AlertRecords, runner: TransactionRunner, escalation: Escalation) -> None:
        self.records = records
        self.rules = records.rules
        self.runner = runner
        self.escalation = escalation

    def acknowledge(self, phone: str, reply: str, channel: str, *, alert_id: int | None = None) -> AckResult | None:
        parsed = parse_reply(reply)
        if parsed is None:
            return None
        word, named = parsed
        if word not in ACK_WORDS and word not in VISIT_WORDS and not (channel == "voice" and word in {"0", "none"}):
            return None
        if named is not None:
            if alert_id is not None and named != alert_id:
                return None
            alert_id = named
        phone_hash = self.records.cipher.blind_index(phone, "phone") if phone else None
        if phone_hash is None:
            return None

        def work(unit: AlertUnit) -> AckResult | None:
            contacts = unit.session.scalars(select(CareContact).where(CareContact.phone_hash == phone_hash)).all()
            return self._answer(unit, contacts, word, channel, alert_id)

        return self.runner.run(work)

    def acknowledge_contact(self, contact_id: int, reply: str, channel: str, alert_id: int) -> AckResult | None:
        word = _PUNCT_RE.sub("", unicodedata.normalize("NFKC", reply or "")).lower() or "none"

        def work(unit: AlertUnit) -> AckResult | None:
            contact = unit.session.get(CareContact, contact_id)
            return self._answer(unit, [contact] if contact else [], word, channel, alert_id)

        return self.runner.run(work)

    def staff_action(self, alert_id: int, action: str, staff: str, note: str | None = None) -> str:
        if action not in STAFF_ACTIONS:
            raise ValueError(f"unknown action {action}")
        actor = f"staff:{staff}"[:64]
        r = self.records

        def work(unit: AlertUnit) -> str:
            found = r.locked_alert(unit, alert_id)
            if found is None:
                raise KeyError(alert_id)
            alert, household = found
            if alert.state == "closed":
                return alert.state
            who = f"工作人员{staff}"
            if action == "close":
                r.move(unit, alert, "closed", "closed", actor, {"note": note} if note else None)
                alert.closed_at, alert.ack_due_at, alert.visit_due_at = unit.now, None, None
            elif action == "visited":
                alert.acknowledged_at = alert.acknowledged_at or unit.now
                alert.acknowledged_by = alert.acknowledged_by or actor
                alert.visited_at, alert.ack_due_at, alert.visit_due_at = unit.now, None, None
                r.move(unit, alert, "visited", "visited", actor)
                r.tell_family(unit, alert, household, "family_visited", who)
            elif alert.acknowledged_at is None:
                alert.acknowledged_at, alert.acknowledged_by, alert.ack_due_at = unit.now, actor, None
                r.move(unit, alert, "acknowledged", "acknowledged", actor)
                r.tell_family(unit, alert, household, "family_acknowledged", who)
                r.schedule_sla(unit, alert)
            unit.audit(actor, "update", alert.id, entity_type="care_alert", outcome=action)
            return alert.state

        return self.runner.run(work)

    def _answer(self, unit: AlertUnit, contacts: Sequence[CareContact], word: str, channel: str,
                alert_id: int | None) -> AckResult | None:
        if not contacts:
            return None
        by_household: dict[int, list[CareContact]] = {}
        for c in contacts:
            by_household.setdefault(c.household_id, []).append(c)
        query = select(Alert).where(Alert.household_id.in_(by_household), Alert.state.in_(
            ("notified", "escalated", "acknowledged"))).order_by(Alert.notified_at.desc(), Alert.id.desc())
        if alert_id is not None:
            query = query.where(Alert.id == alert_id)
        for alert in unit.session.scalars(query.with_for_update()).all():
            told = set(json.loads(alert.notified_roles))
            contact = next((c for c in by_household[alert.household_id] if c.role in told), None)
            if contact is None:
                continue
            household = unit.session.get(CareHousehold, alert.household_id)
            assert household is not None
            actor = f"{channel}:{contact.role}:{contact.id}"
            result = self._act(unit, alert, household, contact, word, actor)
            unit.audit(actor, "update", alert.id, entity_type="care_alert", outcome=result.action)
            return result
        return None

    def _act(self, unit: AlertUnit, alert: Alert, household: CareHousehold, contact: CareContact, word: str,
             actor: str) -> AckResult:
        r = self.records
        if contact.role == "senior":
            return self._senior_key(unit, alert, household, word, actor)
        if word not in ACK_WORDS and word not in VISIT_WORDS:  # no key pressed, or 0 from staff
            r.event(unit, alert, "no_answer", alert.state, alert.state, actor)
            return AckResult(alert.id, "no_answer", r.text("call_no_input"))
        if contact.role not in self.rules.ack_roles:
            r.event(unit, alert, "family_reply", alert.state, alert.state, actor)
            return AckResult(alert.id, "family_reply", r.text("family_reply"))
        who = f"{ROLE_LABELS.get(contact.role, '')}{r.cipher.decrypt(contact.name_enc)}"
        if word in VISIT_WORDS:
            if alert.acknowledged_at is None:
                alert.acknowledged_at, alert.acknowledged_by = unit.now, actor
            alert.visited_at, alert.ack_due_at, alert.visit_due_at = unit.now, None, None
            r.move(unit, alert, "visited", "visited", actor)
            r.tell_family(unit, alert, household, "family_visited", who)
            return AckResult(alert.id, "visited", r.text("visit_ok", alert=alert.id))
        if alert.acknowledged_at is not None:
            return AckResult(alert.id, "already", r.text("ack_already", alert=alert.id))
        alert.acknowledged_at, alert.acknowledged_by, alert.ack_due_at = unit.now, actor, None
        r.move(unit, alert, "acknowledged", "acknowledged", actor)
        r.tell_family(unit, alert, household, "family_acknowledged", who)
        r.schedule_sla(unit, alert)
        return AckResult(alert.id, "acknowledged", r.text("ack_ok", alert=alert.id))

    def _senior_key(self, unit: AlertUnit, alert: Alert, household: CareHousehold, word: str,
                    actor: str) -> AckResult:
        r = self.records
        if word == "1":
            r.event(unit, alert, "senior_ok", alert.state, alert.state, actor)
            if alert.level == "light":  # the check-in call answered "all is well"
                r.move(unit, alert, "closed", "closed", actor, {"by": "senior_ok"})
                alert.closed_at, alert.ack_due_at, alert.visit_due_at = unit.now, None, None
            return AckResult(alert.id, "senior_ok", r.text("call_thanks"))
        if word == "0":
            policy = self.rules.policy(alert.rule)
            self.escalation.escalate(unit, alert, household, policy, r.text("why_senior"), "senior")
            return AckResult(alert.id, "senior_transfer", r.text("call_transfer"))
        r.event(unit, alert, "senior_no_answer", alert.state, alert.state, actor)
        return AckResult(alert.id, "senior_no_answer", r.text("call_no_input"))
