"""SLA deadlines and escalation: job `alert.sla` escalates along the rule's chain for each deadline
that passed unanswered (acknowledge, then visit); a senior pressing 0 on the check-in call
escalates at once. Each step texts the next link and records an `escalated` event."""
from __future__ import annotations

import json

from backend.alerts.records import AlertRecords, n
from backend.alerts.rules import RulePolicy
from backend.alerts.store import Alert, CareHousehold
from backend.alerts.unit import AlertUnit
from backend.infra.tx import TransactionRunner


class Escalation:
    def __init__(self, records: AlertRecords, runner: TransactionRunner) -> None:
        self.records = records
        self.rules = records.rules
        self.runner = runner

    def check_sla(self, alert_id: int) -> None:
        """Job alert.sla: escalate along the chain for each deadline that passed unanswered."""

        def work(unit: AlertUnit) -> None:
            r = self.records
            found = r.locked_alert(unit, alert_id)
            if found is None:
                return
            alert, household = found
            if alert.state in ("closed", "visited", "open"):
                return
            policy = self.rules.policy(alert.rule)
            if alert.acknowledged_at is None and alert.ack_due_at is not None and alert.ack_due_at <= unit.now:
                self.escalate(unit, alert, household, policy, r.text("why_ack", minutes=n(
                    (alert.ack_due_at - (alert.notified_at or alert.ack_due_at)).total_seconds() / 60)), "ack")
                assert alert.notified_at is not None
                alert.ack_due_at = policy.ack_deadline(alert.notified_at, alert.escalation_step) \
                    if alert.escalation_step < policy.max_step else None
            elif alert.visited_at is None and alert.visit_due_at is not None and alert.visit_due_at <= unit.now:
                self.escalate(unit, alert, household, policy,
                              r.text("why_visit", minutes=n(policy.sla.visit_minutes or 0)), "visit")
                alert.visit_due_at = None
            r.schedule_sla(unit, alert)

        self.runner.run(work)

    def escalate(self, unit: AlertUnit, alert: Alert, household: CareHousehold, policy: RulePolicy, why: str,
                 reason: str) -> None:
        r = self.records
        alert.escalation_step += 1
        roles = policy.escalation_roles(alert.escalation_step)
        what = r.what(alert)
        told = []
        for person in r.people(unit, household):
            if person.role in roles and person.phone:
                body = r.text("staff_escalated", alert=alert.id, grid=household.grid_id,
                              senior=r.senior(household), what=what, why=why, address=r.address(household))
                r.sms(unit, alert, person, body, f"escalated{alert.escalation_step}")
                told.append(person.id)
        alert.notified_roles = json.dumps(list(dict.fromkeys([*json.loads(alert.notified_roles), *roles])))
        r.move(unit, alert, "escalated", "escalated", "system:sla",
               {"step": alert.escalation_step, "why": reason, "roles": list(roles), "contacts": told})
        unit.audit("system:sla", "update", alert.id, entity_type="care_alert", step=alert.escalation_step,
                   why=reason)
