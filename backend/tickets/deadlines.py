"""Deadlines (办理时限): each ticket is due `sla_hours` of its category (or area) after it came in.
Staff lists mark what is due within `due_soon_hours` and what is overdue (TicketCore.due_state).
With DEPARTMENT_HEADS configured, a recurring job escalates each overdue ticket once: an SMS to its
department's head through the outbox (a department without a head: the console and the audit log
only), escalated_at set (shown as 已上报), and an audit entry."""
from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import select

from backend.infra.jobs import enqueue_in, schedule_if_absent
from backend.infra.models import Ticket
from backend.infra.tx import UnitOfWork
from backend.tickets.core import TicketCore
from backend.tickets.model import OPEN_STATUSES

log = logging.getLogger(__name__)

OVERDUE_JOB, OVERDUE_KEY = "tickets.overdue", "tickets.overdue:scan"
SCAN_EVERY = timedelta(minutes=10)
BATCH = 200


class TicketDeadlines(TicketCore):
    def arm_overdue_scan(self) -> None:
        """The first worker schedules the scan; each run re-arms it (see escalate_overdue). Only
        with DEPARTMENT_HEADS configured: without anyone to tell, lists still mark what is late."""
        if self.settings.department_heads:
            schedule_if_absent(self._sessions, OVERDUE_JOB, OVERDUE_KEY, self.now())

    def escalate_overdue(self, payload: dict | None = None) -> int:
        """Job tickets.overdue: escalates every open ticket past its deadline not escalated yet.
        Idempotent: escalated_at is set in the same transaction as the SMS is queued (dedupe key
        per ticket), so a re-run or a second worker escalates nothing twice."""

        def work(unit: UnitOfWork) -> int:
            rows = unit.session.scalars(
                select(Ticket).where(Ticket.status.in_(list(OPEN_STATUSES)), Ticket.due_at.is_not(None),
                                     Ticket.due_at <= unit.now, Ticket.escalated_at.is_(None))
                .order_by(Ticket.due_at).limit(BATCH).with_for_update()).all()
            for ticket in rows:
                ticket.escalated_at = unit.now
                department = self._department_label(ticket)
                head = self.settings.department_heads.get(department)
                hours = round((ticket.due_at - ticket.created_at).total_seconds() / 3600)
                if head:
                    body = self.text("overdue_head", ref=ticket.reference, category=self._category_name(ticket),
                                     hours=hours)
                    self.outbox.enqueue_in(unit.session, head, body, f"ticket:{ticket.id}:overdue", ticket.id)
                unit.audit("system:deadlines", "update", ticket.id, reference=ticket.reference,
                           escalated_to=department, by_sms=bool(head))
            # Run again in SCAN_EVERY (the same dedupe key: one scan job at any time).
            enqueue_in(unit.session, OVERDUE_JOB, {}, unit.now + SCAN_EVERY, OVERDUE_KEY, unit.now)
            return len(rows)

        count = self.run(work)
        if count:
            log.info("escalated %d overdue tickets", count)
        return count
