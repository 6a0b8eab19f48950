"""Staff roles: every boundary enforced by the query layer (SQLite and Postgres) and by the
console's URLs; login lockout and rate limiting, CSRF, audited reveals, session expiry."""
from __future__ import annotations

import io
import re
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import select
from staff_world import PASSWORD, PEOPLE, build_world, csrf_of, login

from assistant.config import load_settings
from backend.alerts.store import Alert
from backend.infra.audit_chain import AuditEntry, verify_audit_chain
from backend.infra.models import Handoff, Ticket
from backend.people.proxy import ProxyGrant
from backend.people.staff import StaffSession, StaffUser
from channels.app import create_app
from channels.staff_console import make_blueprint
from runtime.container import build_runtime


@pytest.fixture
def world(runtime):
    return build_world(runtime)


@pytest.fixture
def app(world):
    flask_app = create_app(world.runtime)
    if "console" not in flask_app.blueprints:  # until channels/app.py lists the console
        flask_app.register_blueprint(make_blueprint(world.runtime))
    return flask_app


def client_for(app, username: str):
    client = app.test_client()
    assert login(client, username).status_code == 303
    return client


def staff(world, username: str):
    with world.runtime.db_sessions() as session:
        user = session.scalar(select(StaffUser).where(StaffUser.username == username))
    from backend.people.staff import to_staff

    return to_staff(user)


def audits(runtime, **where) -> list[AuditEntry]:
    with runtime.db_sessions() as session:
        rows = session.scalars(select(AuditEntry).order_by(AuditEntry.id)).all()
    return [r for r in rows if all(getattr(r, k) == v for k, v in where.items())]


# --- the query layer, on both databases ------------------------------------------------------------
@pytest.fixture
def any_db_world(db_url, settings_env, nlu, clock):
    Path(settings_env["DATA_DIR"]).mkdir(parents=True, exist_ok=True)
    runtime = build_runtime(load_settings({**settings_env, "DATABASE_URL": db_url}), clock=clock, nlu=nlu)
    return build_world(runtime)


def tickets_seen(world, member) -> list[str]:
    """References of the tickets a member of staff may see, newest first: the desk's query with
    the role's SQL scope, as the console and the department API run it."""
    scope = world.runtime.staff.queries.ticket_scope(member)
    return [v.reference for v in world.runtime.ticket_loop.desk.search(scope=scope, limit=200)]


def test_query_layer_keeps_every_role_in_its_scope(any_db_world):
    world = any_db_world
    queries = world.runtime.staff.queries
    a, b = world.residents["G01"], world.residents["G02"]
    grida, gridb, socia, water, agent, admin = (staff(world, u) for u in
                                                ("grida", "gridb", "socia", "water", "agent", "admin"))
    # residents: own grid only, also by id and by an exact phone lookup
    assert [r.id for r in queries.residents(grida)] == [a]
    assert [r.id for r in queries.residents(gridb)] == [b]
    assert queries.resident(grida, b) is None and queries.reveal_resident(grida, b, "x") is None
    assert queries.residents(grida, PEOPLE["G02"][1]) == []
    assert [r.id for r in queries.residents(gridb, PEOPLE["G02"][1])] == [b]
    searches = audits(world.runtime, action="read", entity_type="resident")
    assert [(e.actor, e.entity_id) for e in searches] == [("staff:grida", None), ("staff:gridb", b)]
    assert queries.residents(water) == [] and queries.residents(agent) == []
    assert [r.id for r in queries.residents(socia)] == [a]
    assert {r.id for r in queries.residents(admin)} == {a, b}
    # tickets: grid workers by grid, department handlers by department, nobody else
    assert tickets_seen(world, grida) == [world.tickets["G01"]]
    assert tickets_seen(world, water) == [world.tickets["G02"]]  # G02's ticket went to 水务
    assert not queries.can_see_ticket(grida, world.tickets["G02"])
    assert not queries.can_see_ticket(water, world.tickets["G01"])
    assert tickets_seen(world, socia) == [] == tickets_seen(world, agent)
    assert set(tickets_seen(world, admin)) == set(world.tickets.values())
    # care alerts: by the household's grid
    assert [x.id for x in queries.alerts(grida)] == [world.alerts["G01"]]
    assert [x.id for x in queries.alerts(socia)] == [world.alerts["G01"]]
    assert not queries.can_see_alert(gridb, world.alerts["G01"])
    assert queries.alerts(water) == [] == queries.alerts(agent)
    # handoffs: agents and admins
    assert [h.reference for h in queries.handoffs(agent)] == [world.handoff]
    assert queries.handoffs(admin) and not queries.can_see_handoff(admin, "00000000")
    for other in (grida, socia, water):
        assert queries.handoffs(other) == [] and not queries.can_see_handoff(other, world.handoff)
    # proxy grants: those of seniors in scope
    assert [x.id for x in queries.grants(grida)] == [world.grants["G01"]]
    assert not queries.can_see_grant(grida, world.grants["G02"])
    assert queries.grants(water) == [] == queries.grants(agent)
    assert {x.id for x in queries.grants(admin)} == set(world.grants.values())


def test_social_workers_may_see_all_grids_when_configured(world):
    queries = world.runtime.staff.queries
    socia = staff(world, "socia")
    queries.policy = replace(queries.policy, social_workers_see_all=True)
    assert {r.id for r in queries.residents(socia)} == set(world.residents.values())
    assert {x.id for x in queries.alerts(socia)} == set(world.alerts.values())
    assert tickets_seen(world, socia) == []  # still no tickets


# --- the same boundaries by URL ----------------------------------------------------------------------
def test_grid_worker_cannot_reach_another_grid_by_any_url(app, world):
    client = client_for(app, "grida")
    csrf = csrf_of(client)
    b_resident, b_ticket = world.residents["G02"], world.tickets["G02"]
    b_alert, b_grant = world.alerts["G02"], world.grants["G02"]
    assert client.get(f"/console/residents/{world.residents['G01']}").status_code == 200
    assert client.get(f"/console/residents/{b_resident}").status_code == 404
    assert client.post(f"/console/residents/{b_resident}/reveal", data={"csrf_token": csrf}).status_code == 404
    assert client.get(f"/console/tickets/{world.tickets['G01']}").status_code == 200
    assert client.get(f"/console/tickets/{b_ticket}").status_code == 404
    assert client.post(f"/console/tickets/{b_ticket}/act",
                       data={"csrf_token": csrf, "action": "accept"}).status_code == 404
    assert client.post(f"/console/alerts/{b_alert}/acknowledge", data={"csrf_token": csrf}).status_code == 404
    assert client.post(f"/console/grants/{b_grant}/revoke", data={"csrf_token": csrf}).status_code == 404
    assert client.get(f"/console/handoffs/{world.handoff}").status_code == 403
    assert client.post(f"/console/handoffs/{world.handoff}/take", data={"csrf_token": csrf}).status_code == 403
    # lists show nothing of grid B either
    pages = "".join(client.get(p).get_data(as_text=True)
                    for p in ("/console/residents", "/console/tickets", "/console/alerts", "/console/grants"))
    assert world.tickets["G01"] in pages and "H-G01" in pages and "张*兰" in pages
    assert b_ticket not in pages and "H-G02" not in pages and "李*国" not in pages
    with world.runtime.db_sessions() as session:
        assert session.scalar(select(Ticket.status).where(Ticket.reference == b_ticket)) == "routed"
        assert session.get(Alert, b_alert).state == "notified"
        assert session.get(ProxyGrant, b_grant).status == "active"
    # nothing of grid B was read: no audit entry names its resident or ticket
    assert not audits(world.runtime, actor="staff:grida", entity_type="resident", entity_id=b_resident)


def test_department_handler_works_only_on_its_departments_tickets(app, world):
    client = client_for(app, "water")
    csrf = csrf_of(client)
    own, other = world.tickets["G02"], world.tickets["G01"]
    assert client.get("/console/residents").status_code == 403
    assert client.get("/console/alerts").status_code == 403
    assert client.get("/console/grants").status_code == 403
    assert client.get(f"/console/tickets/{other}").status_code == 404
    assert client.post(f"/console/tickets/{other}/act", data={"csrf_token": csrf, "action": "accept"}).status_code == 404
    detail = client.get(f"/console/tickets/{own}").get_data(as_text=True)
    assert "G02 楼道漏水" in detail  # the private description, after an audited read
    assert audits(world.runtime, actor="staff:water", action="read", entity_type="ticket")
    assert client.post(f"/console/tickets/{own}/act", data={"csrf_token": csrf, "action": "accept"}).status_code == 303
    # resolving needs a note; with one, the ticket loop moves it and records who did it
    assert client.post(f"/console/tickets/{own}/act", data={"csrf_token": csrf, "action": "resolve"}).status_code == 400
    assert client.post(f"/console/tickets/{own}/act",
                       data={"csrf_token": csrf, "action": "resolve", "note": "已更换水管"}).status_code == 303
    with world.runtime.db_sessions() as session:
        ticket = session.scalar(select(Ticket).where(Ticket.reference == own))
        assert ticket.status == "resolved"
    assert "staff:water" in client.get(f"/console/tickets/{own}").get_data(as_text=True)
    # an impossible transition is refused, not applied
    assert client.post(f"/console/tickets/{own}/act", data={"csrf_token": csrf, "action": "start"}).status_code == 409


def test_only_agents_and_admins_reach_handoffs_and_reading_one_is_audited(app, world):
    for username in ("grida", "socia", "water"):
        client = client_for(app, username)
        assert client.get("/console/handoffs").status_code == 403
        assert client.get(f"/console/handoffs/{world.handoff}").status_code == 403
    agent = client_for(app, "agent")
    assert agent.get("/console/residents").status_code == 403
    assert agent.get("/console/tickets").status_code == 403
    queue = agent.get("/console/handoffs").get_data(as_text=True)
    assert world.handoff in queue and "紧急" in queue and "我想办老年证" not in queue  # no transcript in the list
    assert agent.post(f"/console/handoffs/{world.handoff}/take",
                      data={"csrf_token": csrf_of(agent)}).status_code == 303
    page = agent.get(f"/console/handoffs/{world.handoff}").get_data(as_text=True)
    assert "我想办老年证" in page and "张秀兰" in page and "staff:agent" in page
    read = audits(world.runtime, actor="staff:agent", action="read", entity_type="handoff")
    assert len(read) == 1 and f'"reference":"{world.handoff}"' in read[0].detail
    assert agent.post(f"/console/handoffs/{world.handoff}/close", data={"csrf_token": csrf_of(agent)}).status_code == 303
    with world.runtime.db_sessions() as session:
        handoff = session.scalar(select(Handoff).where(Handoff.reference == world.handoff))
        assert handoff.status == "closed" and handoff.taken_by == "staff:agent"
        assert verify_audit_chain(session) is None


def test_residents_are_masked_and_reveal_is_an_audited_post(app, world):
    client = client_for(app, "grida")
    resident = world.residents["G01"]
    name, phone, _ = PEOPLE["G01"]
    masked = client.get(f"/console/residents/{resident}").get_data(as_text=True)
    assert "张*兰" in masked and "137****1111" in masked and name not in masked and phone not in masked
    assert client.get(f"/console/residents/{resident}/reveal").status_code == 405  # never by a link
    assert client.post(f"/console/residents/{resident}/reveal").status_code == 403  # no CSRF token
    assert not audits(world.runtime, actor="staff:grida", entity_type="resident")
    shown = client.post(f"/console/residents/{resident}/reveal",
                        data={"csrf_token": csrf_of(client), "reason": "上门回访"}).get_data(as_text=True)
    assert name in shown and phone in shown and "G01小区1号楼101室" in shown
    [entry] = audits(world.runtime, actor="staff:grida", action="read", entity_type="resident")
    assert entry.entity_id == resident and '"view":"reveal"' in entry.detail and "上门回访" in entry.detail
    assert phone not in entry.detail and name not in entry.detail
    with world.runtime.db_sessions() as session:
        assert verify_audit_chain(session) is None


def test_grid_worker_acts_on_own_alerts_and_grants(app, world):
    client = client_for(app, "grida")
    csrf = csrf_of(client)
    page = client.get("/console/alerts").get_data(as_text=True)
    assert "剩余 30 分钟" in page  # the SLA countdown, from the injected clock
    world.runtime.clock.advance(minutes=25)
    assert "剩余 5 分钟" in client.get("/console/alerts").get_data(as_text=True)
    world.runtime.clock.advance(minutes=20)
    assert "已超时 15 分钟" in client.get("/console/alerts").get_data(as_text=True)
    assert client.post(f"/console/alerts/{world.alerts['G01']}/acknowledge", data={"csrf_token": csrf}).status_code == 303
    assert client.post(f"/console/grants/{world.grants['G01']}/revoke", data={"csrf_token": csrf}).status_code == 303
    with world.runtime.db_sessions() as session:
        alert = session.get(Alert, world.alerts["G01"])
        assert alert.state == "acknowledged" and alert.acknowledged_by == "staff:grida"
        grant = session.get(ProxyGrant, world.grants["G01"])
        assert grant.status == "revoked" and grant.revoked_by == "staff:grida"


# --- login, CSRF, sessions ---------------------------------------------------------------------------
def test_csrf_token_is_required_on_every_post(app, world):
    client = client_for(app, "agent")
    for data in ({}, {"csrf_token": "forged"}):
        assert client.post(f"/console/handoffs/{world.handoff}/take", data=data).status_code == 403
    with world.runtime.db_sessions() as session:
        assert session.scalar(select(Handoff.status).where(Handoff.reference == world.handoff)) == "waiting"
    fresh = app.test_client()
    response = fresh.post("/console/login", data={"username": "agent", "password": PASSWORD})
    assert response.status_code == 403  # the login form's own token is missing
    other = client_for(app, "admin")  # another session's token does not work here
    assert client.post("/console/logout", data={"csrf_token": csrf_of(other)}).status_code == 403


def test_login_cookie_is_httponly_strict_and_only_its_hash_is_stored(app, world):
    client = app.test_client()
    response = login(client, "agent")
    cookie = next(h for h in response.headers.getlist("Set-Cookie") if h.startswith("console_session="))
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console" in cookie
    token = cookie.split(";")[0].split("=", 1)[1]
    with world.runtime.db_sessions() as session:
        stored = session.scalars(select(StaffSession.token_hash)).all()
        user = session.scalar(select(StaffUser).where(StaffUser.username == "agent"))
    assert token not in stored and len(stored) == 1
    assert user.password_hash.startswith("$argon2id$") and PASSWORD not in user.password_hash
    assert app.test_client().get("/console/handoffs").status_code == 303  # no cookie: to the login page


def test_account_locks_after_repeated_failures_and_unlocks_later(app, world):
    client = app.test_client()
    limit = world.directory.policy.max_failed_logins
    for attempt in range(limit):
        response = login(client, "grida", "wrong-password")
        assert response.status_code == (423 if attempt == limit - 1 else 401)
    assert "锁定" in response.get_data(as_text=True)
    assert login(client, "grida").status_code == 423  # even the right password, while locked
    world.runtime.clock.advance(minutes=world.directory.policy.lockout_minutes + 1)
    assert login(client, "grida").status_code == 303
    outcomes = [e.detail for e in audits(world.runtime, action="login")]
    assert sum("failed" in d for d in outcomes) == limit and all("wrong-password" not in d for d in outcomes)


def test_many_failures_from_one_address_are_throttled(app, world):
    world.directory.policy = replace(world.directory.policy, source_max_failures=3)
    client = app.test_client()
    for name in ("nobody1", "nobody2", "nobody3"):  # unknown users, so no account locks
        assert login(client, name, "guess-guess-1").status_code == 401
    before = len(audits(world.runtime, action="login"))
    assert login(client, "nobody4", "guess-guess-1").status_code == 429  # further failures: throttled ...
    assert login(client, "admin", "guess-guess-1").status_code == 429
    assert len(audits(world.runtime, action="login")) == before  # ... and not audited one by one
    assert login(client, "admin").status_code == 303  # the right password still gets in
    world.runtime.clock.advance(minutes=world.directory.policy.source_window_minutes + 1)
    assert login(app.test_client(), "nobody5", "guess-guess-1").status_code == 401


def test_sessions_expire_when_idle_at_their_age_and_on_logout(app, world):
    clock, policy = world.runtime.clock, world.directory.policy
    client = client_for(app, "admin")
    assert client.get("/console/tickets").status_code == 200
    clock.advance(minutes=policy.session_idle_minutes + 1)
    response = client.get("/console/tickets")
    assert response.status_code == 303 and response.headers["Location"].endswith("/console/login")
    client = client_for(app, "admin")
    for _ in range(policy.session_max_hours * 60 // 20 - 1):  # busy all day, yet the session ends
        clock.advance(minutes=20)
        assert client.get("/console/tickets").status_code == 200
    clock.advance(minutes=20)
    assert client.get("/console/tickets").status_code == 303
    client = client_for(app, "admin")
    cookie = client.get_cookie("console_session", path="/console").value
    assert client.post("/console/logout", data={"csrf_token": csrf_of(client)}).status_code == 303
    replay = app.test_client()
    replay.set_cookie("console_session", cookie, path="/console")
    assert replay.get("/console/tickets").status_code == 303  # the old cookie is dead


def test_accounts_are_validated(world):
    directory = world.directory
    with pytest.raises(ValueError):
        directory.create_user("someone", PASSWORD, "resident")  # residents use their phone, not the console
    with pytest.raises(ValueError):
        directory.create_user("someone", PASSWORD, "grid_worker")  # a grid worker needs a grid
    with pytest.raises(ValueError):
        directory.create_user("someone", PASSWORD, "department_handler")
    with pytest.raises(ValueError):
        directory.create_user("someone", "short", "admin")
    with pytest.raises(ValueError):
        directory.create_user("grida", PASSWORD, "admin")  # exists
    grida = staff(world, "grida")
    assert not directory.change_password(grida, "wrong", "another-long-one")
    assert directory.change_password(grida, PASSWORD, "another-long-one")
    assert directory.authenticate("grida", PASSWORD, "127.0.0.1").outcome == "invalid"
    assert directory.authenticate("grida", "another-long-one", "127.0.0.1").outcome == "ok"


def test_cli_adds_a_user_with_the_password_from_stdin(runtime, settings_env, monkeypatch, capsys):
    from runtime import cli_staff

    for key, value in settings_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr("sys.stdin", io.StringIO("a-long-password-1\n"))
    assert cli_staff.main(["add", "Wang.Li", "--role", "grid_worker", "--grid", "G03"]) == 0
    assert '"grids": ["G03"]' in capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert cli_staff.main(["add", "other", "--role", "admin"]) == 2
    result = runtime.staff.directory.authenticate("wang.li", "a-long-password-1", "127.0.0.1")
    assert result.outcome == "ok" and result.staff.grids == ("G03",)
    assert re.fullmatch(r"[\w-]{40,}", result.session_token)


# --- the department JSON API: the same scopes as the console ---------------------------------------
def test_staff_api_scopes_tickets_by_role(runtime):
    from channels.app import create_app

    world = build_world(runtime)
    client = create_app(runtime).test_client()

    def api_login(username: str) -> dict[str, str]:
        answer = client.post("/staff/api/login", json={"username": username, "password": PASSWORD})
        assert answer.status_code == 200, answer.get_json()
        return {"Authorization": f"Bearer {answer.get_json()['token']}"}

    a_ref, b_ref = world.tickets["G01"], world.tickets["G02"]
    grid_a = api_login("grida")
    listed = {t["reference"] for t in client.get("/staff/api/tickets", headers=grid_a).get_json()}
    assert a_ref in listed and b_ref not in listed
    assert client.get(f"/staff/api/tickets/{a_ref}", headers=grid_a).status_code == 200
    assert client.get(f"/staff/api/tickets/{b_ref}", headers=grid_a).status_code == 404
    assert client.post(f"/staff/api/tickets/{b_ref}/accept", headers=grid_a, json={}).status_code == 404
    water = api_login("water")  # department handler of 水务: the G02 ticket only
    listed = {t["reference"] for t in client.get("/staff/api/tickets", headers=water).get_json()}
    assert b_ref in listed and a_ref not in listed
    # The scope is part of the query: a small page is filled with their own tickets, not with
    # the newest of everyone's filtered down to nothing.
    for who, mine in ((grid_a, a_ref), (water, b_ref)):
        page = client.get("/staff/api/tickets?limit=1", headers=who).get_json()
        assert [t["reference"] for t in page] == [mine]
    assert client.get("/staff/api/tickets").status_code == 403  # no token
    assert client.get("/staff/api/tickets", headers={"Authorization": "Bearer forged"}).status_code == 403
    wrong = client.post("/staff/api/login", json={"username": "grida", "password": "not-it"})
    assert wrong.status_code == 403 and "token" not in wrong.get_json()


# --- transcripts as staff read them ------------------------------------------------------------
def test_transcript_shows_words_keys_and_silence_not_payloads(app, world):
    from assistant.ports import HandoffRequest

    runtime = world.runtime
    keyed = runtime.backend.create_handoff(HandoffRequest(
        sender_id="caller-2", channel="twilio_voice", phone=PEOPLE["G01"][1], reason="user_request", urgent=False,
        transcript=(("user", "我想办老年证"), ("bot", "我核对一下，对吗？"), ("user", "/affirm"),
                    ("bot", "请说电话"), ("user", "对"), ("user", '/book_meal{"meal_mode": "delivery"}'),
                    ("user", ""), ("bot", "我没听到您说话。"), ("user", "/request_human")),
        form_name=None, form_slots={}, idempotency_key="h-keys")).reference
    asked = runtime.backend.create_handoff(HandoffRequest(
        sender_id="caller-3", channel="kiosk", phone=None, reason="user_request", urgent=False,
        transcript=(("user", "/affirm"), ("user", "/request_human")), form_name=None, form_slots={},
        idempotency_key="h-asked")).reference
    agent = client_for(app, "agent")

    page = agent.get(f"/console/handoffs/{keyed}").get_data(as_text=True)
    transcript = page[page.index('id="transcript"'):page.index("</ol>")]
    assert "/affirm" not in transcript and "/request_human" not in transcript and "/book_meal" not in transcript
    assert "（按键：确认）" in transcript and "（按键：转人工）" in transcript
    assert "（按键：助餐预约 · 送餐上门）" in transcript
    assert "我想办老年证" in transcript and "<span class=\"speaker\">居民</span>对</li>" in transcript
    assert "（没有说话）" in transcript
    meta = page[page.index('class="meta"'):page.index("</p>", page.index('class="meta"'))]
    assert "（没有说话）" in meta and "居民要求" not in meta  # handed over after silence, not asked

    page = agent.get(f"/console/handoffs/{asked}").get_data(as_text=True)
    assert "（按钮：确认）" in page and "居民要求" in page  # a kiosk button, and a real request

    queue = agent.get("/console/handoffs").get_data(as_text=True)
    row = re.search(rf"<tr[^>]*>\s*<td>{keyed}</td>(.*?)</tr>", queue, re.S).group(1)
    assert "（没有说话）" in row and "居民要求" not in row
    row = re.search(rf"<tr[^>]*>\s*<td>{asked}</td>(.*?)</tr>", queue, re.S).group(1)
    assert "居民要求" in row
