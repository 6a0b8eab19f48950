"""The console dashboard's figures, in the acting staff member's scope (the same SQL predicates as
their lists): work orders as 12345 platforms report them (受理, 办结率, 按时办结率, 满意率, reopened,
repeat reports, overdue), care alerts against each one's own SLA deadlines (no water: 15/30
minutes), the handoff queue, and the demand of the last 72 hours by hour (for 潮汐排班).

Definitions, for a window [start, now] in local time ("today", "this week" from Monday):
- 受理 new: tickets created in the window; 办结 done: of those, resolved, rated or closed;
  办结率 = done / new; 按时办结率 = done on or before their deadline / done (tickets without a
  deadline count as on time); 满意率 = ratings of 4–5 / ratings given (tickets created in the window).
- reopened: tickets that went to 重新处理 in the window; repeat: tickets in the window linked to an
  earlier one (duplicate_of); overdue: open tickets past their deadline now, whenever created.
- alerts: raised in the window; handled: of those, closed; first call: acknowledged_at − raised_at,
  visit: visited_at − raised_at, medians in minutes and the share within ack_due_at / visit_due_at.
- handoffs: waiting now and the median wait of those waiting.
"""
from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from backend.alerts.store import Alert, CareHousehold
from backend.infra.models import Handoff, StatusEvent, Ticket
from backend.people.staff import Staff
from backend.people.staff_queries import StaffQueries
from backend.tickets.model import OPEN_STATUSES

DONE = frozenset({"resolved", "rated", "closed"})
DEMAND_HOURS = 72


@dataclass(frozen=True)
class TicketFigures:
    new: int
    done: int
    done_on_time: int
    rated: int
    satisfied: int
    reopened: int
    repeat: int

    @property
    def done_rate(self) -> float | None:
        return self.done / self.new if self.new else None

    @property
    def on_time_rate(self) -> float | None:
        return self.done_on_time / self.done if self.done else None

    @property
    def satisfaction(self) -> float | None:
        return self.satisfied / self.rated if self.rated else None


@dataclass(frozen=True)
class AlertFigures:
    raised: int
    handled: int
    median_call_minutes: float | None
    calls_in_time: float | None  # share acknowledged within ack_due_at
    median_visit_minutes: float | None
    visits_in_time: float | None


@dataclass(frozen=True)
class Window:
    name: str  # "today" / "week"
    label: str  # 今天 / 本周
    tickets: TicketFigures | None  # None: not in this role's sections
    alerts: AlertFigures | None


@dataclass(frozen=True)
class Dashboard:
    now: datetime
    windows: tuple[Window, ...]
    overdue: int | None
    due_soon: int | None
    handoffs_waiting: int | None
    median_wait_minutes: float | None
    demand: tuple[tuple[datetime, int], ...]  # (hour start, tickets + handoffs created), oldest first


def _median(values: Sequence[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def _share(hits: int, total: int) -> float | None:
    return hits / total if total else None


class DashboardQueries:
    def __init__(self, queries: StaffQueries, sessions: Callable[[], Session], tz: tzinfo,
                 due_soon: timedelta = timedelta(hours=2)) -> None:
        self.queries = queries
        self._sessions = sessions
        self.tz = tz
        self.due_soon = due_soon

    def windows(self, now: datetime) -> list[tuple[str, str, datetime, datetime]]:
        local = now.astimezone(self.tz)
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        monday = midnight - timedelta(days=local.weekday())
        return [("today", "今天", midnight.astimezone(UTC), now), ("week", "本周", monday.astimezone(UTC), now)]

    def build(self, staff: Staff) -> Dashboard:
        now = self.queries.now()
        sees_tickets = self.queries.allows(staff, "tickets")
        sees_alerts = self.queries.allows(staff, "alerts")
        sees_handoffs = self.queries.allows(staff, "handoffs")
        with self._sessions() as session:
            windows = tuple(
                Window(name, label,
                       self._tickets(session, staff, start, end) if sees_tickets else None,
                       self._alerts(session, staff, start, end) if sees_alerts else None)
                for name, label, start, end in self.windows(now))
            overdue = due_soon = None
            if sees_tickets:
                late = Ticket.due_at <= now
                overdue, due_soon = session.execute(select(
                    func.coalesce(func.sum(case((late, 1), else_=0)), 0),
                    func.coalesce(func.sum(case((late, 0), else_=1)), 0),
                ).where(self.queries.ticket_scope(staff), Ticket.status.in_(list(OPEN_STATUSES)),
                        Ticket.due_at.is_not(None), Ticket.due_at <= now + self.due_soon)).one()
            waiting = median_wait = None
            if sees_handoffs:
                since = session.scalars(select(Handoff.created_at).where(
                    self.queries.handoff_scope(staff), Handoff.status == "waiting")).all()
                waiting = len(since)
                median_wait = _median([(now - t).total_seconds() / 60 for t in since])
            demand = self._demand(session, staff, now, sees_tickets, sees_handoffs)
        return Dashboard(now, windows, overdue, due_soon, waiting, median_wait, demand)

    def _tickets(self, session: Session, staff: Staff, start: datetime, end: datetime) -> TicketFigures:
        """Aggregates in SQL: a week of a city's tickets is thousands of rows."""
        in_window = (self.queries.ticket_scope(staff), Ticket.created_at >= start, Ticket.created_at <= end)
        done = Ticket.status.in_(list(DONE))
        new, done_count, rated, satisfied, repeat = session.execute(select(
            func.count(), func.coalesce(func.sum(case((done, 1), else_=0)), 0), func.count(Ticket.rating),
            func.coalesce(func.sum(case((Ticket.rating >= 4, 1), else_=0)), 0), func.count(Ticket.duplicate_of_id),
        ).where(*in_window)).one()
        # Done after the deadline: the first "resolved" event later than due_at.
        done_ids = select(Ticket.id).where(*in_window, done, Ticket.due_at.is_not(None))
        first_resolved = (select(StatusEvent.entity_id.label("ticket_id"), func.min(StatusEvent.at).label("at"))
                          .where(StatusEvent.entity_type == "ticket", StatusEvent.to_status == "resolved",
                                 StatusEvent.entity_id.in_(done_ids))
                          .group_by(StatusEvent.entity_id).subquery())
        late = session.scalar(select(func.count()).select_from(Ticket)
                              .join(first_resolved, first_resolved.c.ticket_id == Ticket.id)
                              .where(first_resolved.c.at > Ticket.due_at)) or 0
        reopened = session.scalar(select(func.count(StatusEvent.entity_id.distinct())).where(
            StatusEvent.entity_type == "ticket", StatusEvent.to_status == "reopened",
            StatusEvent.at >= start, StatusEvent.at <= end,
            StatusEvent.entity_id.in_(select(Ticket.id).where(self.queries.ticket_scope(staff))))) or 0
        return TicketFigures(new=new, done=done_count, done_on_time=done_count - late, rated=rated,
                             satisfied=satisfied, reopened=reopened, repeat=repeat)

    def _alerts(self, session: Session, staff: Staff, start: datetime, end: datetime) -> AlertFigures:
        rows = session.execute(select(Alert.state, Alert.raised_at, Alert.acknowledged_at, Alert.ack_due_at,
                                      Alert.visited_at, Alert.visit_due_at)
                               .join(CareHousehold, CareHousehold.id == Alert.household_id)
                               .where(self.queries.alert_scope(staff), Alert.raised_at >= start,
                                      Alert.raised_at <= end)).all()
        called = [r for r in rows if r.acknowledged_at is not None]
        visited = [r for r in rows if r.visited_at is not None]
        return AlertFigures(
            raised=len(rows), handled=sum(1 for r in rows if r.state == "closed"),
            median_call_minutes=_median([(r.acknowledged_at - r.raised_at).total_seconds() / 60 for r in called]),
            calls_in_time=_share(sum(1 for r in called if r.ack_due_at is None or r.acknowledged_at <= r.ack_due_at),
                                 len(called)),
            median_visit_minutes=_median([(r.visited_at - r.raised_at).total_seconds() / 60 for r in visited]),
            visits_in_time=_share(sum(1 for r in visited if r.visit_due_at is None or r.visited_at <= r.visit_due_at),
                                  len(visited)),
        )

    def _demand(self, session: Session, staff: Staff, now: datetime, tickets: bool,
                handoffs: bool) -> tuple[tuple[datetime, int], ...]:
        end = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        start = end - timedelta(hours=DEMAND_HOURS)
        times: list[datetime] = []
        if tickets:
            times += session.scalars(select(Ticket.created_at).where(
                self.queries.ticket_scope(staff), Ticket.created_at >= start, Ticket.created_at < end)).all()
        if handoffs:
            times += session.scalars(select(Handoff.created_at).where(
                self.queries.handoff_scope(staff), Handoff.created_at >= start, Handoff.created_at < end)).all()
        counts = [0] * DEMAND_HOURS
        for t in times:
            counts[int((t - start).total_seconds() // 3600)] += 1
        return tuple((start + timedelta(hours=i), counts[i]) for i in range(DEMAND_HOURS))
