"""Exports for staff: tickets and care alerts as CSV or Excel, filtered by date, grid and
category, in the staff member's scope (the same SQL predicates as their lists).

Personal data leaves masked (contact 138****0000, descriptions with digits masked) unless the role
may take it in clear (`CLEAR_ROLES`); every export is an audit entry saying who took what, with
which filters, how many rows, and whether anything was in clear."""
from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from assistant.privacy import mask_phone, mask_text
from assistant.work_orders import Taxonomy
from backend.alerts.store import Alert, CareHousehold
from backend.infra.crypto import FieldCipher
from backend.infra.models import STATUS_LABELS_ZH, Ticket
from backend.infra.tx import TransactionRunner, UnitOfWork
from backend.outreach.store import CheckinDay, Notice, NoticeDelivery
from backend.people.staff import Staff
from backend.people.staff_queries import StaffQueries

CLEAR_ROLES = frozenset({"admin"})  # who may export contact numbers and descriptions in clear
MAX_ROWS = 50_000
# export kind → the console section it needs
KINDS = {"tickets": "tickets", "alerts": "alerts", "checkins": "outreach", "notices": "outreach"}
CHECKIN_STATES_ZH = {"ok": "平安", "help": "要帮助", "missed": "未接通", "skipped": "免打", "planned": "待拨打",
                     "calling": "拨打中", "retrying": "待重拨", "waiting_sms": "等短信回复"}
ALERT_STATES_ZH = {"open": "待通知", "notified": "已通知", "escalated": "已升级", "acknowledged": "已响应",
                   "visited": "已上门", "closed": "已处理"}


@dataclass(frozen=True)
class ExportFilter:
    since: datetime
    until: datetime
    grid: str | None = None
    category: str | None = None  # a ticket category or area code

    def describe(self) -> dict[str, Any]:
        return {"since": self.since.isoformat(), "until": self.until.isoformat(), "grid": self.grid,
                "category": self.category}


@dataclass(frozen=True)
class Table:
    title: str
    headers: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    clear: bool  # personal data in clear (audited as such)

    def csv(self) -> bytes:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(self.headers)
        writer.writerows(self.rows)
        return out.getvalue().encode("utf-8-sig")  # the BOM makes Excel read UTF-8 Chinese correctly

    def xlsx(self) -> bytes:
        return workbook([self])


def workbook(tables: Sequence[Table]) -> bytes:
    """One sheet per table, bold large headers (read by older staff), columns wide enough."""
    from openpyxl import Workbook
    from openpyxl.styles import Font

    book = Workbook()
    book.remove(book.active)
    for table in tables:
        sheet = book.create_sheet(table.title[:31])
        sheet.append(list(table.headers))
        for cell in sheet[1]:
            cell.font = Font(bold=True, size=14)
        for row in table.rows:
            sheet.append(list(row))
        for column, header in zip(sheet.columns, table.headers, strict=False):
            sheet.column_dimensions[column[0].column_letter].width = max(12, len(header) * 3)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


class Exports:
    def __init__(self, queries: StaffQueries, sessions: Callable[[], Session], cipher: FieldCipher,
                 taxonomy: Taxonomy, tz: tzinfo, clock: Callable[[], datetime]) -> None:
        self.queries = queries
        self.cipher = cipher
        self.taxonomy = taxonomy
        self.tz = tz
        self._tx = TransactionRunner(sessions, clock)

    def build(self, staff: Staff, kind: str, filters: ExportFilter) -> Table:
        if kind not in KINDS:
            raise ValueError(f"unknown export {kind!r}")
        clear = staff.role in CLEAR_ROLES

        def work(unit: UnitOfWork) -> Table:
            build = {"tickets": self._tickets, "alerts": self._alerts, "checkins": self._checkins,
                     "notices": self._notices}[kind]
            table = build(unit.session, staff, filters, clear)
            unit.audit(staff.actor, "export", None, entity_type=kind, rows=len(table.rows), clear=clear,
                       **filters.describe())
            return table

        return self._tx.run(work)

    def weekly(self, staff: Staff, grid: str, monday: date) -> bytes:
        """The week's report of one grid as an Excel workbook: a summary sheet, then the week's
        tickets, care alerts and check-ins of that grid (each as its own export, audited)."""
        since = datetime.combine(monday, time.min, self.tz)
        week = ExportFilter(since, since + timedelta(days=7) - timedelta(microseconds=1), grid)
        tables = [self.build(staff, kind, week) for kind in ("tickets", "alerts", "checkins")
                  if self.queries.allows(staff, KINDS[kind])]
        done = {STATUS_LABELS_ZH[s] for s in ("resolved", "rated", "closed")}
        figures: list[tuple[str, Any]] = [("网格", grid), ("周", f"{monday} 至 {monday + timedelta(days=6)}")]
        for table in tables:
            if table.title == "工单":
                figures += [("新受理工单", len(table.rows)), ("已办结", sum(r[7] in done for r in table.rows))]
            elif table.title == "关爱告警":
                figures += [("关爱告警", len(table.rows)), ("已上门", sum(bool(r[7]) for r in table.rows))]
            else:
                for state in ("平安", "未接通", "要帮助", "免打"):
                    figures.append((f"平安电话：{state}", sum(r[3] == state for r in table.rows)))
        summary = Table("周报", ("项目", "数字"), tuple(figures), False)
        return workbook([summary, *tables])

    def _time(self, moment: datetime | None) -> str:
        return "" if moment is None else moment.astimezone(self.tz).strftime("%Y-%m-%d %H:%M")

    def _codes(self, code: str | None) -> Sequence[str] | None:
        """A category code, or an area code with every category under it."""
        if not code:
            return None
        return [c.code for c in self.taxonomy.categories if c.code == code or c.area == code] or [code]

    def _tickets(self, session: Session, staff: Staff, f: ExportFilter, clear: bool) -> Table:
        query = select(Ticket).where(self.queries.ticket_scope(staff), Ticket.created_at >= f.since,
                                     Ticket.created_at <= f.until)
        if f.grid:
            query = query.where(Ticket.grid_id == f.grid)
        if (codes := self._codes(f.category)) is not None:
            query = query.where(Ticket.service_code.in_(codes))
        rows = []
        for t in session.scalars(query.order_by(Ticket.created_at, Ticket.id).limit(MAX_ROWS)):
            category = self.taxonomy.get(t.service_code)
            area = self.taxonomy.area_of(category) if category else None
            contact = self.cipher.decrypt(t.contact_enc) or ""
            description = self.cipher.decrypt(t.description_enc) or ""
            rows.append((t.reference, self._time(t.created_at), area.name if area else "",
                         category.name if category else "", t.place or "", t.grid_id or "", t.department or "",
                         STATUS_LABELS_ZH.get(t.status, t.status), self._time(t.due_at),
                         t.rating if t.rating is not None else "",
                         contact if clear else mask_phone(contact) if contact else "",
                         description if clear else mask_text(description)))
        headers = ("编号", "受理时间", "一级分类", "类别", "地点", "网格", "部门", "状态", "办理时限", "评价",
                   "联系电话", "问题描述")
        return Table("工单", headers, tuple(rows), clear)

    def _alerts(self, session: Session, staff: Staff, f: ExportFilter, clear: bool) -> Table:
        query = (select(Alert, CareHousehold.code, CareHousehold.grid_id)
                 .join(CareHousehold, CareHousehold.id == Alert.household_id)
                 .where(self.queries.alert_scope(staff), Alert.raised_at >= f.since, Alert.raised_at <= f.until))
        if f.grid:
            query = query.where(CareHousehold.grid_id == f.grid)
        rows = tuple(
            (code, grid or "", a.rule, a.level, ALERT_STATES_ZH.get(a.state, a.state), self._time(a.raised_at),
             self._time(a.acknowledged_at), self._time(a.visited_at), self._time(a.closed_at))
            for a, code, grid in session.execute(query.order_by(Alert.raised_at, Alert.id).limit(MAX_ROWS)))
        headers = ("户编号", "网格", "规则", "级别", "状态", "发生时间", "首次响应", "上门", "结束")
        return Table("关爱告警", headers, rows, clear)  # no personal data: a household code, not a name

    def _checkins(self, session: Session, staff: Staff, f: ExportFilter, clear: bool) -> Table:
        query = (select(CheckinDay, CareHousehold.code, CareHousehold.grid_id)
                 .join(CareHousehold, CareHousehold.id == CheckinDay.household_id)
                 .where(self.queries.alert_scope(staff), CheckinDay.day >= f.since.astimezone(self.tz).date(),
                        CheckinDay.day <= f.until.astimezone(self.tz).date()))
        if f.grid:
            query = query.where(CareHousehold.grid_id == f.grid)
        rows = tuple(
            (code, grid or "", d.day.isoformat(), CHECKIN_STATES_ZH.get(d.state, d.state), d.attempts, d.answer or "",
             d.alert_id or "", d.handoff_reference or "", self._time(d.finished_at), d.note or "")
            for d, code, grid in session.execute(query.order_by(CheckinDay.day, CareHousehold.code).limit(MAX_ROWS)))
        headers = ("户编号", "网格", "日期", "结果", "拨打次数", "回答", "告警编号", "人工编号", "结束时间", "说明")
        return Table("平安电话", headers, rows, clear)  # household codes, no names or numbers

    def _notices(self, session: Session, staff: Staff, f: ExportFilter, clear: bool) -> Table:
        notices = session.scalars(select(Notice).where(Notice.send_at >= f.since, Notice.send_at <= f.until)
                                  .order_by(Notice.send_at, Notice.id).limit(MAX_ROWS)).all()
        counts: dict[int, dict[str, int]] = {}
        for notice_id, state, n in session.execute(
                select(NoticeDelivery.notice_id, NoticeDelivery.state, func.count())
                .where(NoticeDelivery.notice_id.in_([n.id for n in notices]))
                .group_by(NoticeDelivery.notice_id, NoticeDelivery.state)):
            counts.setdefault(notice_id, {})[state] = int(n)
        rows = tuple(
            (n.id, n.title, n.channel, self._time(n.send_at), n.segments, sum(counts.get(n.id, {}).values()),
             *(counts.get(n.id, {}).get(state, 0) for state in ("listened", "delivered", "failed", "opted_out")),
             n.created_by)
            for n in notices)
        headers = ("编号", "标题", "方式", "发送时间", "短信条数", "人数", "已听完", "已送达", "失败", "已退订", "发布人")
        return Table("通知", headers, rows, clear)
