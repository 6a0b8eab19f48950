"""Login limits that cannot lock staff out: failures on other or made-up accounts never keep a
correct password out; an account's own failures lock it, with a Chinese answer that says how to
get unlocked (`staff unlock`); X-Forwarded-For counts only behind TRUSTED_PROXIES."""
from __future__ import annotations

import re
from dataclasses import replace

import pytest
from flask import request
from sqlalchemy import select
from staff_world import PASSWORD, build_world

from backend.infra.audit_chain import AuditEntry
from channels.app import create_app
from channels.proxies import apply_trusted_proxies, trusted_proxy_hops
from channels.staff_console import make_blueprint
from runtime import cli_staff


@pytest.fixture
def world(runtime):
    return build_world(runtime)


def make_app(world, hops: int = 0):
    app = create_app(world.runtime)
    if "console" not in app.blueprints:  # until channels/app.py lists the console
        app.register_blueprint(make_blueprint(world.runtime))
    apply_trusted_proxies(app, hops)

    @app.get("/_test/addr")
    def addr():
        return request.remote_addr or ""

    return app


def form_login(client, username: str, password: str = PASSWORD, **headers: str):
    """Through the real form: GET sets the login CSRF cookie, the POST carries the same token."""
    page = client.get("/console/login", headers=headers)
    assert page.status_code == 200
    cookie = client.get_cookie("console_login_csrf", path="/console/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True)).group(1)
    assert cookie is not None and cookie.value == token
    return client.post("/console/login", data={"username": username, "password": password, "csrf_token": token},
                       headers=headers)


def test_failures_on_other_accounts_never_lock_out_a_correct_login(world):
    app = make_app(world)
    client = app.test_client()
    limit = world.directory.policy.max_failed_logins
    # 25 failures from one address: made-up names, and real colleagues' accounts (one of them
    # gets itself locked), but none on admin
    attempts = [f"nobody{i}" for i in range(17)] + ["grida"] * (limit - 1) + ["gridb"] * limit
    assert len(attempts) >= 25
    statuses = [form_login(client, name, "wrong-password-1").status_code for name in attempts]
    assert statuses[:20] == [401] * 20  # up to the per-source limit: plain "wrong password"
    assert set(statuses[20:]) <= {429, 423}  # then throttled (or the account's own lockout)
    assert form_login(client, "gridb").status_code == 423  # gridb failed on its own account
    response = form_login(client, "admin")
    assert response.status_code == 303 and response.headers["Location"].endswith("/console/")
    assert client.get("/console/handoffs").status_code == 200
    assert form_login(app.test_client(), "grida").status_code == 303  # 4 failures: not locked


def test_account_lockout_says_how_to_unlock(world, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]):
    app = make_app(world)
    client = app.test_client()
    limit = world.directory.policy.max_failed_logins
    for _ in range(limit - 1):
        assert form_login(client, "grida", "wrong-password-1").status_code == 401
    response = form_login(client, "grida", "wrong-password-1")
    assert response.status_code == 423
    text = response.get_data(as_text=True)
    assert "账号已暂时锁定" in text and "15分钟后再试" in text
    assert "python -m assistant staff unlock grida" in text
    assert form_login(client, "grida").status_code == 423  # the right password waits too
    assert form_login(client, "admin").status_code == 303  # another account is untouched

    settings = world.runtime.settings
    monkeypatch.setenv("DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    assert cli_staff.main(["unlock", "grida"]) == 0
    assert "已解锁" in capsys.readouterr().out
    assert cli_staff.main(["unlock", "nosuchuser"]) == 2
    assert form_login(app.test_client(), "grida").status_code == 303
    with world.runtime.db_sessions() as session:
        details = session.scalars(select(AuditEntry.detail).where(AuditEntry.actor == "cli:staff-unlock")).all()
    assert len(details) == 1 and '"unlocked":true' in details[0]  # (the CLI runs on the real clock)


def test_forwarded_for_counts_only_behind_trusted_proxies(world):
    world.directory.policy = replace(world.directory.policy, source_max_failures=3)
    assert trusted_proxy_hops({}) == 0 and trusted_proxy_hops({"TRUSTED_PROXIES": "1"}) == 1
    with pytest.raises(ValueError):
        trusted_proxy_hops({"TRUSTED_PROXIES": "yes"})

    # no trusted proxy: the header is the client's word, ignored; all tries come from 127.0.0.1
    plain = make_app(world, trusted_proxy_hops({})).test_client()
    assert plain.get("/_test/addr", headers={"X-Forwarded-For": "10.0.0.9"}).get_data(as_text=True) == "127.0.0.1"
    for i in range(3):
        assert form_login(plain, f"nobody{i}", "wrong-password-1",
                          **{"X-Forwarded-For": f"10.0.0.{i}"}).status_code == 401
    assert form_login(plain, "nobody9", "wrong-password-1",
                      **{"X-Forwarded-For": "10.0.0.99"}).status_code == 429

    # one trusted proxy: the address it appended is the source
    world.runtime.clock.advance(minutes=world.directory.policy.source_window_minutes + 1)
    proxied = make_app(world, trusted_proxy_hops({"TRUSTED_PROXIES": "1"})).test_client()
    spoofed = {"X-Forwarded-For": "1.2.3.4, 10.1.0.1"}  # the client's fake entry, then the proxy's
    assert proxied.get("/_test/addr", headers=spoofed).get_data(as_text=True) == "10.1.0.1"
    for i in range(3):
        assert form_login(proxied, f"nobody{i}", "wrong-password-1", **spoofed).status_code == 401
    assert form_login(proxied, "nobody9", "wrong-password-1", **spoofed).status_code == 429
    other = {"X-Forwarded-For": "10.1.0.2"}
    assert form_login(proxied, "nobody9", "wrong-password-1", **other).status_code == 401
