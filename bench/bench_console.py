"""Console pages with a city's worth of work orders: 100,000 tickets (plus status events, care
alerts and handoffs) in a private PostgreSQL, then each page rendered by the real app, logged in as
each role, and timed (p50/p95 over N requests per page and role).

    python bench/bench_console.py [--tickets 100000] [--requests 30] [--database-url URL]

Without --database-url it starts a throw-away PostgreSQL (Debian's, as the tests do). Prints one
JSON line per page and role, then a summary line. Server-side time: Flask's test client, no network.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import insert, select  # noqa: E402

from assistant.config import load_settings  # noqa: E402
from backend.alerts.store import Alert, CareHousehold  # noqa: E402
from backend.infra.models import Handoff, StatusEvent, Ticket  # noqa: E402
from deploy.local_servers import PrivatePostgres  # noqa: E402

GRIDS = ("G01", "G02", "G03")
CODES = [("municipal", "街道城管科"), ("property", "物业公司"), ("sanitation", "街道环卫所"), ("noise", "街道综治办"),
         ("labour", "街道劳动保障所"), ("education", "街道文教科"), ("other", None)]
STATUSES = ["routed"] * 3 + ["accepted", "in_progress", "resolved", "rated", "rated", "closed", "duplicate"]
PLACES = {"G01": (39.9151, 116.4039), "G02": (39.9202, 116.4101), "G03": (39.9087, 116.3975)}
PAGES = ["/console/dashboard", "/console/tickets", "/console/map",
         "/console/export?kind=tickets&format=xlsx", "/console/export?kind=tickets&format=csv"]
ROLES = {"admin": ("admin", None, None), "grida": ("grid_worker", "G01", None),
         "water": ("department_handler", None, "街道城管科"), "agent": ("agent", None, None)}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def seed(runtime: Any, n: int, now: datetime) -> dict[str, float]:
    rng = random.Random(7)
    cipher = runtime.cipher
    description, contact = cipher.encrypt("楼道灯坏了，晚上看不见"), cipher.encrypt("13800138000")
    started = time.perf_counter()
    with runtime.db_sessions() as session, session.begin():
        batch: list[dict[str, Any]] = []
        for i in range(n):
            grid = rng.choice(GRIDS)
            code, department = rng.choice(CODES)
            created = now - timedelta(minutes=rng.randint(0, 90 * 24 * 60))
            status = rng.choice(STATUSES)
            lat, lon = PLACES[grid]
            batch.append({
                "reference": f"3{i:07d}", "status": status, "channel": "sms", "sender_hash": "s" * 64,
                "idempotency_key": f"bench-{i}", "category": "report_issue", "grid_id": grid, "department": department,
                "service_code": code, "description_enc": description, "contact_enc": contact,
                "created_at": created, "updated_at": created, "due_at": created + timedelta(hours=48),
                "rating": rng.randint(1, 5) if status in {"rated", "closed"} else None,
                "latitude": lat + rng.uniform(-0.002, 0.002) if rng.random() < 0.3 else None,
                "longitude": lon + rng.uniform(-0.002, 0.002),
                "place": f"{grid}小区",
            })
            if len(batch) == 5000:
                session.execute(insert(Ticket), batch)
                batch = []
        if batch:
            session.execute(insert(Ticket), batch)
        ids = session.execute(select(Ticket.id, Ticket.status, Ticket.created_at)).all()
        events = [{"entity_type": "ticket", "entity_id": tid, "from_status": "routed", "to_status": "resolved",
                   "actor": "staff:bench", "at": created + timedelta(hours=rng.randint(1, 72))}
                  for tid, status, created in ids if status in {"resolved", "rated", "closed"}]
        for start in range(0, len(events), 5000):
            session.execute(insert(StatusEvent), events[start:start + 5000])
        households = []
        for i, grid in enumerate(GRIDS * 100):
            households.append({"code": f"H-{i}", "grid_id": grid, "senior_name_enc": cipher.encrypt("张秀兰"),
                               "created_at": now, "updated_at": now})
        session.execute(insert(CareHousehold), households)
        hids = session.scalars(select(CareHousehold.id)).all()
        alerts = []
        for i in range(2000):
            raised = now - timedelta(minutes=rng.randint(0, 30 * 24 * 60))
            alerts.append({"household_id": rng.choice(hids), "rule": "no_water", "alert_key": "no_water",
                           "level": "urgent", "state": "closed", "dedupe_key": f"bench-a{i}", "detail": "{}",
                           "raised_at": raised, "notify_at": raised, "notified_at": raised,
                           "notified_roles": "[]", "escalation_step": 0, "ack_due_at": raised + timedelta(minutes=15),
                           "visit_due_at": raised + timedelta(minutes=30),
                           "acknowledged_at": raised + timedelta(minutes=rng.randint(2, 25)),
                           "visited_at": raised + timedelta(minutes=rng.randint(10, 60)),
                           "created_at": raised, "updated_at": raised})
        session.execute(insert(Alert), alerts)
        session.execute(insert(Handoff), [
            {"reference": f"9{i:07d}", "status": "waiting", "channel": "sms", "sender_hash": "s" * 64,
             "idempotency_key": f"bench-h{i}", "category": "handoff", "reason": "user_request", "urgent": False,
             "created_at": now - timedelta(minutes=rng.randint(0, 120)), "updated_at": now} for i in range(200)])
    return {"seed_s": round(time.perf_counter() - started, 1), "status_events": len(events)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tickets", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-console-"))
    postgres = None
    url = args.database_url
    if url is None:
        postgres = PrivatePostgres(work, work, lambda name: open(work / name, "ab"))
        postgres.create()
        url = postgres.url
    try:
        from argon2 import PasswordHasher

        from runtime.container import build_runtime

        env = {"DATABASE_URL": url, "DATA_DIR": str(work / "var"), "MODEL_DIR": os.environ.get("MODEL_DIR", "models")}
        (work / "var").mkdir()
        settings = load_settings(env)
        now = datetime.now(UTC)
        runtime = build_runtime(settings, clock=lambda: now, nlu=None)
        seeded = seed(runtime, args.tickets, now)
        runtime.staff.directory._hasher = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
        for username, (role, grid, department) in ROLES.items():
            runtime.staff.directory.create_user(username, PASSWORD, role, grid=grid, department=department)
        from channels.app import create_app

        app = create_app(runtime)
        rows = []
        for username, (role, _, _) in ROLES.items():
            client = app.test_client()
            login(client, username)
            for page in PAGES:
                status = client.get(page).status_code
                if status != 200:
                    continue  # not this role's page
                times = []
                for _ in range(args.requests):
                    t0 = time.perf_counter()
                    response = client.get(page)
                    times.append((time.perf_counter() - t0) * 1000)
                    assert response.status_code == 200
                row = {"bench": "console_page", "role": role, "page": page, "n": len(times),
                       "p50_ms": round(statistics.median(times), 1), "p95_ms": round(percentile(times, 95), 1),
                       "bytes": len(response.get_data())}
                rows.append(row)
                print(json.dumps(row, ensure_ascii=False), flush=True)
        pages = [r for r in rows if "/export" not in r["page"]]  # exports are downloads, timed apart
        downloads = [r for r in rows if "/export" in r["page"]]
        print(json.dumps({"bench": "console_pages", "tickets": args.tickets, **seeded,
                          "worst_page_p95_ms": max(r["p95_ms"] for r in pages),
                          "worst_page": max(pages, key=lambda r: r["p95_ms"])["page"],
                          "worst_download_p95_ms": max((r["p95_ms"] for r in downloads), default=None),
                          "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"},
                         ensure_ascii=False))
    finally:
        if postgres is not None:
            postgres.remove()


def login(client: Any, username: str) -> None:
    import re

    page = client.get("/console/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    response = client.post("/console/login", data={"username": username, "password": PASSWORD, "csrf_token": token})
    assert response.status_code in (302, 303), response.status_code


PASSWORD = "bench-password-42"

if __name__ == "__main__":
    main()
