"""The console dashboard against a seeded store under a fake clock: exact figures per role, in
Python and in a real Chromium (large type, contrast, a screenshot per page), and the 72-hour
demand chart drawn server-side as SVG."""
from __future__ import annotations

from contextlib import contextmanager
from datetime import timedelta

import pytest
from browser import ARTIFACTS, chromium, serving, wait
from staff_world import PASSWORD, build_world
from test_staff_console import _check_sizes, _login

from assistant.ports import HandoffRequest
from backend.affairs.references import new_reference
from backend.alerts.store import Alert, CareHousehold
from backend.infra.models import StatusEvent, Ticket
from channels.app import create_app


def _ticket(session, now, grid: str, status: str, created_h: float, *, due_h: float | None = None,
            rating: int | None = None, duplicate_of: int | None = None, department: str = "物业") -> Ticket:
    created = now - timedelta(hours=created_h)
    ticket = Ticket(reference=new_reference("ticket"), status=status, channel="sms", sender_hash="s" * 64,
                    idempotency_key=f"seed-{grid}-{status}-{created_h}", category="report_issue", grid_id=grid,
                    department=department, created_at=created, updated_at=created, rating=rating,
                    due_at=None if due_h is None else now + timedelta(hours=due_h), duplicate_of_id=duplicate_of)
    session.add(ticket)
    session.flush()
    return ticket


def _event(session, ticket: Ticket, to: str, at) -> None:
    session.add(StatusEvent(entity_type="ticket", entity_id=ticket.id, from_status=None, to_status=to,
                            actor="staff:seed", at=at))


@pytest.fixture
def seeded(runtime, clock):
    """On top of the staff world (one routed ticket, one alert, one handoff per grid, all 'now'):
    G01 gets five more tickets and a handled alert; a second handoff has waited 20 minutes."""
    world = build_world(runtime)
    now = clock()
    with runtime.db_sessions() as session, session.begin():
        t1 = _ticket(session, now, "G01", "resolved", 3, due_h=-1)
        _event(session, t1, "resolved", now - timedelta(hours=2))  # on time
        t2 = _ticket(session, now, "G01", "rated", 5, due_h=-4, rating=5)
        _event(session, t2, "resolved", now - timedelta(hours=3))  # an hour late
        _ticket(session, now, "G01", "routed", 24, due_h=-1)  # yesterday, overdue now
        _ticket(session, now, "G01", "duplicate", 1, duplicate_of=t1.id)
        t5 = _ticket(session, now, "G01", "reopened", 2, due_h=1, rating=2)  # due within 2 h
        _event(session, t5, "resolved", now - timedelta(minutes=90))
        _event(session, t5, "reopened", now - timedelta(minutes=30))
        household = session.query(CareHousehold).filter_by(code="H-G01").one()
        raised = now - timedelta(hours=2)
        session.add(Alert(household_id=household.id, rule="no_water", alert_key="no_water", level="urgent",
                          state="closed", dedupe_key="seed-a2", detail="{}", raised_at=raised, notify_at=raised,
                          notified_at=raised, notified_roles='["grid_worker"]', escalation_step=0,
                          ack_due_at=raised + timedelta(minutes=15), visit_due_at=raised + timedelta(minutes=30),
                          acknowledged_at=raised + timedelta(minutes=10), visited_at=raised + timedelta(minutes=40),
                          closed_at=raised + timedelta(minutes=50), created_at=raised, updated_at=raised))
    clock.advance(minutes=-20)
    runtime.backend.create_handoff(HandoffRequest(
        sender_id="caller-2", channel="sms", phone=None, reason="user_request", urgent=False, transcript=(),
        form_name=None, form_slots={}, idempotency_key="h-seed"))
    clock.advance(minutes=20)
    return world


@contextmanager
def _console_as(runtime, username: str, lands_on: str):
    """A real Chromium logged in to a served console as `username` (landing on `lands_on`)."""
    ARTIFACTS.mkdir(exist_ok=True)
    with serving(create_app(runtime)) as base:
        browser = chromium()
        try:
            _login(browser, base, username)
            wait(browser, 10, lambda b: lands_on in b.current_url)
            yield browser, base
        finally:
            browser.quit()


def _board(runtime, username: str):
    staff = runtime.staff.directory.authenticate(username, PASSWORD, "127.0.0.1").staff
    return runtime.staff.dashboard.build(staff)


def test_grid_worker_figures_are_exact_and_only_their_grid(runtime, seeded):
    board = _board(runtime, "grida")
    today, week = board.windows
    t = today.tickets
    assert (t.new, t.done, t.done_on_time, t.rated, t.satisfied, t.reopened, t.repeat) == (5, 2, 1, 2, 1, 1, 1)
    assert (t.done_rate, t.on_time_rate, t.satisfaction) == (0.4, 0.5, 0.5)
    assert (week.tickets.new, week.tickets.done) == (6, 2)  # yesterday's ticket counts this week only
    a = today.alerts
    assert (a.raised, a.handled, a.median_call_minutes, a.calls_in_time) == (2, 1, 10.0, 1.0)
    assert (a.median_visit_minutes, a.visits_in_time) == (40.0, 0.0)
    assert (board.overdue, board.due_soon) == (1, 1)
    assert board.handoffs_waiting is None  # not a grid worker's section
    assert len(board.demand) == 72 and sum(n for _, n in board.demand) == 6


def test_each_role_sees_its_own_scope(runtime, seeded):
    water = _board(runtime, "water")  # department handler of 水务: the G02 ticket only
    assert water.windows[0].tickets.new == 1 and water.windows[0].alerts is None
    agent = _board(runtime, "agent")
    assert agent.windows[0].tickets is None and agent.windows[0].alerts is None
    assert agent.handoffs_waiting == 2 and agent.median_wait_minutes == 10.0
    assert sum(n for _, n in agent.demand) == 2
    admin = _board(runtime, "admin")
    assert admin.windows[0].tickets.new == 6 and admin.windows[0].alerts.raised == 3
    assert admin.handoffs_waiting == 2 and (admin.overdue, admin.due_soon) == (1, 1)


def test_dashboard_page_in_chromium(runtime, seeded):
    from selenium.webdriver.common.by import By

    with _console_as(runtime, "grida", "/console/tickets") as (browser, base):
        browser.get(f"{base}/console/dashboard")
        text = {key: browser.find_element(By.ID, key).text for key in
                ("today-new", "today-done", "today-done-rate", "today-on-time", "today-satisfaction",
                 "today-reopened", "week-new", "overdue", "due-soon", "today-alerts", "today-call")}
        assert text["today-new"] == "5" and text["today-done"] == "2" and text["week-new"] == "6"
        assert text["today-done-rate"].startswith("40%") and text["today-on-time"].startswith("50%")
        assert text["today-satisfaction"].startswith("50%") and text["today-reopened"] == "1 / 1"
        assert (text["overdue"], text["due-soon"]) == ("1", "1")
        assert text["today-alerts"] == "2 起，已处理 1 起" and "中位 10.0 分钟" in text["today-call"]
        chart = browser.find_element(By.CSS_SELECTOR, "#demand svg.chart")
        assert chart.get_attribute("role") == "img" and len(chart.find_elements(By.TAG_NAME, "rect")) >= 72
        assert not browser.find_elements(By.ID, "handoff-figures")
        _check_sizes(browser)
        browser.save_screenshot(str(ARTIFACTS / "console-dashboard-grid.png"))
        browser.find_element(By.XPATH, "//button[text()='退出登录']").click()
        wait(browser, 10, lambda b: b.current_url.endswith("/console/login"))
        _login(browser, base, "agent")
        wait(browser, 10, lambda b: b.current_url.endswith("/console/handoffs"))
        browser.get(f"{base}/console/dashboard")
        assert browser.find_element(By.ID, "handoffs-waiting").text == "2"
        assert browser.find_element(By.ID, "median-wait").text == "10.0"
        assert not browser.find_elements(By.ID, "today-new")
        _check_sizes(browser)
        browser.save_screenshot(str(ARTIFACTS / "console-dashboard-agent.png"))


# --- exports ---------------------------------------------------------------------------------------
def _export(client, **args) -> tuple[int, bytes, str]:
    response = client.get("/console/export", query_string=args)
    return response.status_code, response.get_data(), response.headers.get("Content-Type", "")


def _rows(body: bytes) -> list[list[str]]:
    import csv
    import io

    assert body.startswith(b"\xef\xbb\xbf")  # BOM: Excel opens UTF-8 Chinese correctly
    return list(csv.reader(io.StringIO(body.decode("utf-8-sig"))))


def test_exports_are_scoped_masked_and_audited(runtime, seeded):
    from sqlalchemy import select
    from staff_world import login

    from backend.infra.audit_chain import AuditEntry

    app = create_app(runtime)
    grid = app.test_client()
    login(grid, "grida")
    status, body, kind = _export(grid, kind="tickets", format="csv", since="2026-11-23", until="2026-11-25")
    rows = _rows(body)
    assert status == 200 and kind.startswith("text/csv")
    assert rows[0][:3] == ["编号", "受理时间", "一级分类"] and len(rows) == 1 + 6  # G01's six tickets this week
    world_row = next(r for r in rows if r[0] == seeded.tickets["G01"])
    assert world_row[10] == "137****1111" and "13700001111" not in body.decode("utf-8-sig")
    today_only = _rows(_export(grid, kind="tickets", format="csv", since="2026-11-25", until="2026-11-25")[1])
    assert len(today_only) == 1 + 5
    assert _export(grid, kind="tickets", format="csv", grid="G02")[0] == 200
    assert len(_rows(_export(grid, kind="tickets", format="csv", grid="G02")[1])) == 1  # not their grid: no rows

    admin = app.test_client()
    login(admin, "admin")
    status, body, kind = _export(admin, kind="tickets", format="xlsx", since="2026-11-25", until="2026-11-25")
    from io import BytesIO

    from openpyxl import load_workbook

    sheet = load_workbook(BytesIO(body)).active
    values = [[c.value for c in row] for row in sheet.iter_rows()]
    assert status == 200 and "spreadsheetml" in kind and len(values) == 1 + 6
    assert "13700001111" in [v[10] for v in values]  # the admin takes contacts in clear
    alerts = _rows(_export(admin, kind="alerts", format="csv", since="2026-11-25", until="2026-11-25")[1])
    assert len(alerts) == 1 + 3 and {r[0] for r in alerts[1:]} == {"H-G01", "H-G02"}

    with runtime.db_sessions() as session:
        entries = session.scalars(select(AuditEntry).where(AuditEntry.action == "export")).all()
    by_actor = [(e.actor, e.entity_type, '"clear":true' in e.detail) for e in entries]
    assert by_actor.count(("staff:grida", "tickets", False)) == 4
    assert ("staff:admin", "tickets", True) in by_actor and ("staff:admin", "alerts", True) in by_actor


def test_exports_refuse_what_the_role_may_not_see_and_bad_input(runtime, seeded):
    from staff_world import login

    app = create_app(runtime)
    agent = app.test_client()
    login(agent, "agent")
    assert _export(agent, kind="tickets", format="csv")[0] == 403
    water = app.test_client()
    login(water, "water")
    assert _export(water, kind="alerts", format="csv")[0] == 403
    assert _export(water, kind="tickets", format="pdf")[0] == 400
    assert _export(water, kind="tickets", format="csv", since="2026-13-01")[0] == 400
    assert _export(water, kind="tickets", format="csv", since="2026-11-25", until="2026-11-01")[0] == 400
    rows = _rows(_export(water, kind="tickets", format="csv", since="2026-11-25", until="2026-11-25")[1])
    assert len(rows) == 2 and rows[1][6] == "水务"


def test_weekly_report_of_a_grid_for_its_own_staff_only(runtime, seeded):
    import io

    from openpyxl import load_workbook
    from staff_world import login

    app = create_app(runtime)
    grida = app.test_client()
    login(grida, "grida")
    assert grida.get("/console/weekly?grid=G02&week=2026-11-25").status_code == 403
    assert grida.get("/console/weekly?week=2026-11-25").status_code == 400
    response = grida.get("/console/weekly?grid=G01&week=2026-11-25")  # a Wednesday: its Monday's week
    assert response.status_code == 200 and "weekly-G01-2026-11-23.xlsx" in response.headers["Content-Disposition"]
    book = load_workbook(io.BytesIO(response.data))
    assert book.sheetnames == ["周报", "工单", "关爱告警", "平安电话"]
    tickets = list(book["工单"].iter_rows(min_row=2, values_only=True))
    assert tickets and all(row[5] == "G01" for row in tickets)


# --- the map and photos ----------------------------------------------------------------------------
def test_map_pins_and_photo_thumbnails_in_chromium(runtime, seeded, clock):
    from fixtures.twilio_world import jpeg
    from selenium.webdriver.common.by import By
    from sqlalchemy import select

    from backend.infra.models import TicketMedia

    desk = runtime.ticket_loop.desk
    stored = desk.media.ingest(jpeg("red", gps=(39.9151, 116.4039)))
    with runtime.db_sessions() as session, session.begin():
        tickets = session.scalars(select(Ticket).where(Ticket.grid_id == "G01").order_by(Ticket.id)).all()
        world = next(t for t in tickets if t.reference == seeded.tickets["G01"])
        world.latitude, world.longitude, world.place = stored.gps[0], stored.gps[1], "阳光小区附近"
        world.due_at = clock() - timedelta(minutes=5)  # overdue: a red pin
        done = next(t for t in tickets if t.status == "resolved")
        done.latitude, done.longitude = 39.9202, 116.4101
        session.add(TicketMedia(ticket_id=world.id, position=0, role="report", state="stored", sha256=stored.sha256,
                                content_type=stored.content_type, size=stored.size, latitude=stored.gps[0],
                                longitude=stored.gps[1], created_at=clock(), updated_at=clock()))
    with _console_as(runtime, "grida", "/console/tickets") as (browser, base):
        browser.get(f"{base}/console/map")
        pins = {p.get_attribute("data-reference"): p.get_attribute("data-state")
                for p in browser.find_elements(By.CSS_SELECTOR, "#map a.pin")}
        assert pins == {world.reference: "overdue", done.reference: "done"}
        places = browser.find_element(By.ID, "map").text
        assert "阳光小区（G01）" in places and "建设路（G01）" in places
        assert "另有 4 件工单没有坐标" in browser.find_element(By.TAG_NAME, "body").text
        _check_sizes(browser)
        browser.save_screenshot(str(ARTIFACTS / "console-map.png"))
        # The pin opens the ticket, whose photo is shown through a signed, expiring link.
        browser.get(f"{base}/console/tickets/{world.reference}")
        image = browser.find_element(By.CSS_SELECTOR, "#photos img")
        wait(browser, 10, lambda b: b.execute_script("return arguments[0].naturalWidth", image) > 0)
        assert "/open311/media/" in image.get_attribute("src") and "sig=" in image.get_attribute("src")
        _check_sizes(browser)
        browser.save_screenshot(str(ARTIFACTS / "console-ticket-photo.png"))
