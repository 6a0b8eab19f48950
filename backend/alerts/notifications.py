"""Raising, telling and clearing alert rows: what the engine's changes become in the database —
the alert and its events, the SMS to each role in the outbox (held to the end of quiet hours when
the rule allows), the calls and 119 posts as jobs, and the SLA deadlines of the first notification."""
from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC
from typing import Any

from sqlalchemy import select

from backend.alerts.records import ROLE_LABELS, STAFF_ROLES, AlertRecords, n
from backend.alerts.rules import RulePolicy
from backend.alerts.store import ACTIVE_STATES, Alert, CareHousehold
from backend.alerts.unit import AlertUnit
from backend.alerts.values import AlertChange
from backend.infra import jobs
from backend.infra.tx import TransactionRunner


class Notifications:
    def __init__(self, records: AlertRecords, runner: TransactionRunner) -> None:
        self.records = records
        self.rules = records.rules
        self.runner = runner

    def apply(self, unit: AlertUnit, household: CareHousehold, changes: Sequence[AlertChange]) -> list[int]:
        """The engine's changes for one household, in order; the ids of the alerts raised."""
        raised = []
        for change in changes:
            if change.event == "raised":
                alert = self._raise(unit, household, change)
                if alert is not None:
                    raised.append(alert.id)
            elif change.event == "cleared":
                self._cleared(unit, household, change)
        return raised

    def raise_external(self, unit: AlertUnit, household: CareHousehold, rule: str, key: str,
                       detail: dict[str, Any], actor: str) -> int | None:
        """An alert another service raises (a missed check-in call): the rule's SMS, calls and SLA
        timers as for a sensor's. One per `key` (the same key twice raises nothing new)."""
        policy = self.rules.policy(rule)
        change = AlertChange(household.code, key, rule, policy.level, unit.now, "raised", detail=detail)
        alert = self._raise(unit, household, change, actor=actor, dedupe=f"{household.id}:{key}")
        return None if alert is None else alert.id

    def notify_due(self, alert_id: int) -> None:
        """Job alert.notify: quiet hours are over; tell people unless it cleared meanwhile."""

        def work(unit: AlertUnit) -> None:
            found = self.records.locked_alert(unit, alert_id)
            if found is None or found[0].state != "open":
                return
            self._notify_initial(unit, *found)

        self.runner.run(work)

    def _raise(self, unit: AlertUnit, household: CareHousehold, change: AlertChange, *, actor: str = "sensor",
               dedupe: str | None = None) -> Alert | None:
        s, r = unit.session, self.records
        dedupe = dedupe or f"{household.id}:{change.key}:{change.at.astimezone(UTC).isoformat()}"
        if s.scalar(select(Alert.id).where(Alert.dedupe_key == dedupe)) is not None:
            return None
        policy = self.rules.policy(change.rule)
        notify_at = max(self.rules.notify_at(policy, unit.now), unit.now)
        alert = Alert(household_id=household.id, rule=change.rule, alert_key=change.key, level=change.level,
                      state="open", dedupe_key=dedupe, detail=json.dumps(dict(change.detail), ensure_ascii=False),
                      raised_at=change.at, notify_at=notify_at, notified_roles="[]", escalation_step=0,
                      created_at=unit.now, updated_at=unit.now)
        s.add(alert)
        s.flush()
        r.event(unit, alert, "raised", None, "open", actor, {"detail": dict(change.detail)})
        unit.audit("system:alerts", "create", alert.id, entity_type="care_alert", rule=change.rule,
                   level=change.level)
        for name in policy.integrations:  # 119 never waits
            jobs.enqueue_in(s, "alert.integration", {"alert_id": alert.id, "name": name}, unit.now,
                            f"alert.integration:{alert.id}:{name}", unit.now)
        if notify_at <= unit.now:
            self._notify_initial(unit, alert, household)
        else:
            jobs.enqueue_in(s, "alert.notify", {"alert_id": alert.id}, notify_at, f"alert.notify:{alert.id}",
                            unit.now)
        return alert

    def _cleared(self, unit: AlertUnit, household: CareHousehold, change: AlertChange) -> None:
        r = self.records
        alert = unit.session.scalar(select(Alert).where(
            Alert.household_id == household.id, Alert.alert_key == change.key, Alert.state.in_(ACTIVE_STATES))
            .order_by(Alert.id.desc()).limit(1).with_for_update())
        if alert is None:
            return
        alert.cleared_at = change.at
        closes = self.rules.policy(alert.rule).clear_closes
        if alert.notified_at is not None:
            what = r.what(alert)
            for person in r.people(unit, household):
                if person.role not in json.loads(alert.notified_roles) or not person.phone or person.role == "senior":
                    continue
                key = "family_cleared" if person.role == "family" else "staff_cleared"
                r.sms(unit, alert, person, r.text(key, senior=r.senior(household), what=what, alert=alert.id),
                      "cleared")
        r.event(unit, alert, "cleared", alert.state, "closed" if closes else alert.state, "sensor",
                {"at": change.at.isoformat()})
        if closes:
            alert.state, alert.closed_at = "closed", unit.now
        alert.updated_at = unit.now

    def _notify_initial(self, unit: AlertUnit, alert: Alert, household: CareHousehold) -> None:
        r = self.records
        policy = self.rules.policy(alert.rule)
        people = r.people(unit, household)
        what = r.what(alert)
        staff = [p for p in people if p.role in policy.notify and p.role in STAFF_ROLES]
        who = "、".join(f"{ROLE_LABELS[p.role]}{p.name}" for p in staff) or r.text("who_default")
        told = []
        for person in people:
            if person.role not in policy.notify or not person.phone or person.role == "senior":
                continue  # the senior is never texted: at most the check-in call
            if person.role == "family":
                body = r.text("family_severe" if alert.level == "severe" else "family_raised",
                              senior=r.senior(household), what=what, who=who)
            else:
                body = self._staff_text(alert, household, policy, what)
            r.sms(unit, alert, person, body, "raised")
            told.append(person.id)
        for person in people:
            if person.role in policy.call and person.phone:
                jobs.enqueue_in(unit.session, "alert.call", {"alert_id": alert.id, "contact_id": person.id},
                                unit.now, f"alert.call:{alert.id}:{person.id}", unit.now)
        alert.notified_at = unit.now
        alert.notified_roles = json.dumps([*policy.notify, *policy.call])
        alert.ack_due_at = policy.ack_deadline(unit.now, 0)
        alert.visit_due_at = policy.visit_deadline(unit.now)
        r.move(unit, alert, "notified", "notified", "system:alerts", {"contacts": told})
        r.schedule_sla(unit, alert)

    def _staff_text(self, alert: Alert, household: CareHousehold, policy: RulePolicy, what: str) -> str:
        r = self.records
        if policy.sla.ack_minutes is not None:
            visit = r.text("staff_todo_visit", visit=n(policy.sla.visit_minutes)) \
                if policy.sla.visit_minutes is not None else ""
            todo = r.text("staff_todo_sla", ack=n(policy.sla.ack_minutes), visit=visit)
        else:
            todo = r.text("staff_todo_none")
        return r.text("staff_raised", alert=alert.id, grid=household.grid_id, senior=r.senior(household),
                      address=r.address(household), what=what, todo=todo)
