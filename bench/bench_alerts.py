"""Care-alert benchmarks.

latency   800 homes × one reading per 15 s through the real HTTP API (waitress) → AlertDesk →
          outbox → worker thread → a loopback Twilio Messages API. Injected gas leaks measure
          sensor event (request sent) → first SMS accepted by "Twilio"; target p99 ≤ 1 s.
kill      a DB-backed replay of synthetic homes in a child process, killed with SIGKILL part-way
          and started again; the alerts in the database must equal the in-memory engine's
          (same household, rule and time: nothing lost, nothing doubled).

    python bench/bench_alerts.py latency [--households 800] [--seconds 120] [--database-url …]
    python bench/bench_alerts.py kill [--households 40] [--days 3]

Prints one JSON line per benchmark. Uses a temporary SQLite file unless --database-url is given.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from assistant.config import load_settings  # noqa: E402
from backend.alerts.desk import AlertDesk  # noqa: E402
from backend.alerts.dispatch import CallResult  # noqa: E402
from backend.alerts.engine import AlertEngine  # noqa: E402
from backend.alerts.households import Contact, DeviceSpec, Household  # noqa: E402
from backend.alerts.rules import AlertRules  # noqa: E402
from backend.alerts.simulate import replay, synthetic_week  # noqa: E402
from backend.infra import db  # noqa: E402
from backend.infra.crypto import FieldCipher, KeyRing  # noqa: E402
from backend.infra.jobs import DbJobQueue, Worker  # noqa: E402
from backend.messaging.outbox import Outbox, SendResult  # noqa: E402

TZ = ZoneInfo("Asia/Shanghai")
KINDS = ("water", "electricity", "gas", "door", "heart_rate")


class NoCalls:
    def place(self, to: str, twiml: str, status_callback: str | None = None) -> CallResult:
        return CallResult("CA" + "0" * 32, "queued")


class NoIntegration:
    def send(self, body: Any) -> None:
        pass


def homes(n: int, prefix: str = "S") -> dict[str, Household]:
    out = {}
    for i in range(n):
        hid = f"{prefix}{i:04d}"
        staff = (Contact("grid_worker", "网格员", f"138{i:08d}"), Contact("family", "家属", f"139{i:08d}"),
                 Contact("doctor", "医生", f"137{i:08d}"), Contact("backup_grid_worker", "网格员乙", f"136{i:08d}"),
                 Contact("community_leader", "主任", "13500000000"), Contact("social_worker", "社工", f"134{i:08d}"),
                 Contact("property", "物业", "13300000000"))
        devices = tuple(DeviceSpec(f"{hid}-{k}", k, f"token-{hid}" if k == "water" else None) for k in KINDS)
        out[hid] = Household(hid, "G01", f"测试小区{i}号楼", Contact("senior", "老人", f"131{i:08d}"), "F", staff, devices)
    return out


def make_desk(url: str, clock, sender=None) -> tuple[AlertDesk, Worker, Any]:
    db.upgrade(url)
    sessions = db.session_factory(db.make_engine(url, pool_size=20) if not url.startswith("sqlite")
                                  else db.make_engine(url))
    cipher = FieldCipher(KeyRing({1: bytes(range(16))}, 1, bytes(range(32))))
    outbox = Outbox(sessions, cipher, clock, sender)
    rules = AlertRules.from_config(load_settings({}).config["alerts"])
    desk = AlertDesk(sessions, cipher, clock, outbox, rules, integrations={"fire_119": NoIntegration()},
                     call_placer=NoCalls())
    worker = Worker(DbJobQueue(sessions, clock), desk.job_handlers(), tasks=(outbox.drain,), worker_id="bench")
    return desk, worker, sessions


# --- latency ---------------------------------------------------------------------------------------
class TimedSender:
    """Wraps the real Twilio sender; notes when the first SMS about each home was accepted by the
    (fake) API. `watch` maps a home to text only its messages contain (its address)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.watch: dict[str, str] = {}
        self.first_at: dict[str, float] = {}
        self.lock = threading.Lock()

    def send(self, to: str, body: str) -> SendResult:
        result = self.inner.send(to, body)
        now = time.perf_counter()
        with self.lock:
            for hid, key in self.watch.items():
                if key in body and hid not in self.first_at:
                    self.first_at[hid] = now
        return result


def cmd_latency(args: argparse.Namespace) -> dict[str, Any]:
    import requests
    import waitress
    from fixtures.twilio_world import ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER, start_twilio_api
    from flask import Flask

    from channels import sensors
    from channels.twilio_signature import TwilioConfig
    from channels.twilio_sms import TwilioSmsSender

    tmp = Path(tempfile.mkdtemp(prefix="bench-alerts-"))
    url = args.database_url or f"sqlite:///{tmp / 'bench.db'}"
    api = start_twilio_api()
    twilio = TwilioConfig(ACCOUNT_SID, AUTH_TOKEN, None, False, FROM_NUMBER, None, api.base_url)
    sender = TimedSender(TwilioSmsSender(twilio))
    clock = lambda: datetime.now(UTC)  # noqa: E731 (real time: this measures wall-clock latency)
    desk, worker, _ = make_desk(url, clock, sender)
    households = homes(args.households)
    desk.register_households(households)
    # Addresses are unique per home, so the staff SMS names which leak it reports.
    sender.watch = {hid: f"（{h.address}）" for hid, h in households.items()}
    stop = threading.Event()
    workers = [worker] + [Worker(worker.queue, worker.handlers, tasks=worker.tasks, worker_id=f"bench-{i}")
                          for i in range(args.workers - 1)]
    threads = [threading.Thread(target=w.run_forever, args=(stop, args.idle_sleep), daemon=True) for w in workers]
    for t in threads:
        t.start()
    app = Flask(__name__)
    app.register_blueprint(sensors.make_blueprint(type("R", (), {"settings": load_settings({}), "alerts": desk})()))
    port = _free_port()
    server = waitress.create_server(app, host="127.0.0.1", port=port, threads=16)
    threading.Thread(target=server.run, daemon=True).start()
    time.sleep(0.3)
    base = f"http://127.0.0.1:{port}/api/sensors/readings"
    http = threading.local()
    rng = random.Random(5)
    ids = list(households)
    leak_homes = set(rng.sample(ids, min(len(ids), args.leaks)))
    sent_at: dict[str, float] = {}
    request_ms: list[float] = []
    errors = 0
    meters: dict[str, float] = defaultdict(float)

    def post(hid: str, kind: str, value: float) -> None:
        nonlocal errors
        session = getattr(http, "s", None) or requests.Session()
        http.s = session
        body = [{"device": f"{hid}-{kind}", "kind": kind, "value": value, "ts": datetime.now(TZ).isoformat()}]
        started = time.perf_counter()
        if kind == "gas" and value > 0:
            sent_at[hid] = started
        response = session.post(base, json=body, headers={"Authorization": f"Bearer token-{hid}"}, timeout=30)
        request_ms.append((time.perf_counter() - started) * 1000)
        if response.status_code != 202:
            errors += 1

    period = 15.0 / len(ids)  # every home once per 15 s, spread evenly
    started = time.perf_counter()
    n = 0
    leak_after = args.seconds * 0.2
    with ThreadPoolExecutor(max_workers=args.clients) as pool:
        while (elapsed := time.perf_counter() - started) < args.seconds:
            hid = ids[n % len(ids)]
            kind = KINDS[(n // len(ids)) % len(KINDS)]
            value = 0.0
            if kind in ("water", "electricity"):
                meters[hid, kind] += 0.01
                value = meters[hid, kind]
            elif kind == "heart_rate":
                value = 72.0
            if hid in leak_homes and hid not in sent_at and elapsed > leak_after:
                kind, value = "gas", 3.0
            pool.submit(post, hid, kind, value)
            n += 1
            target = started + n * period
            pause = target - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
        time.sleep(3)  # let the last leaks go out
    stop.set()
    server.close()
    latencies = sorted((sender.first_at[h] - sent_at[h]) * 1000 for h in sent_at if h in sender.first_at)
    api.close()
    return {"benchmark": "alerts_latency", "database": url.split("://")[0],
            "households": len(ids), "seconds": args.seconds, "readings": n,
            "readings_per_second": round(n / args.seconds, 1), "http_errors": errors,
            "leaks": len(sent_at), "leaks_notified": len(latencies),
            "event_to_first_sms_ms": _pct(latencies), "request_ms": _pct(sorted(request_ms)),
            "workers": args.workers, "idle_sleep": args.idle_sleep}


def _pct(values: list[float]) -> dict[str, float]:
    if not values:
        return {}

    def q(p: float) -> float:
        return round(values[min(len(values) - 1, int(p * len(values)))], 1)

    return {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": round(values[-1], 1)}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- kill -9 ---------------------------------------------------------------------------------------
def _kill_readings(households: int, days: int):
    start = datetime(2026, 11, 2, tzinfo=TZ)
    readings, _ = synthetic_week(households, days, start, seed=11, incident_rate=0.2)
    return list(readings), start + timedelta(days=days)


def _batches(readings) -> list[tuple[datetime, str, list]]:
    """What home gateways would upload: one batch per home per 30 minutes, delivered (clock
    set) at its first reading, so the database run ticks exactly where the in-memory one does.
    (Delivering at the batch's end would judge time rules before data already measured arrived:
    a real effect of batching, but not the thing this benchmark compares.)"""
    grouped: dict[tuple[int, str], list] = defaultdict(list)
    for r in readings:
        grouped[int(r.ts.timestamp()) // 1800, r.household].append(r)
    return sorted(((min(r.ts for r in rs), hid, rs) for (_, hid), rs in grouped.items()), key=lambda b: (b[0], b[1]))


class _Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 2, tzinfo=TZ)

    def __call__(self) -> datetime:
        return self.now


def child_replay(url: str, households: int, days: int) -> None:
    clock = _Clock()
    desk, worker, _ = make_desk(url, clock)
    desk.register_households(homes(households))
    readings, end = _kill_readings(households, days)
    for at, hid, batch in _batches(readings):
        clock.now = at
        worker.run_until_idle(max_ticks=1000)
        desk.ingest(f"token-{hid}", [{"device": r.device, "kind": r.kind, "value": r.value, "ts": r.ts.isoformat()}
                                     for r in batch])
    clock.now = end
    worker.run_until_idle(max_ticks=10000)
    print("child done", flush=True)


def cmd_kill(args: argparse.Namespace) -> dict[str, Any]:
    from sqlalchemy import select

    from backend.alerts.store import Alert, CareHousehold

    tmp = Path(tempfile.mkdtemp(prefix="bench-kill-"))
    url = args.database_url or f"sqlite:///{tmp / 'kill.db'}"
    readings, end = _kill_readings(args.households, args.days)
    rules = AlertRules.from_config(load_settings({}).config["alerts"])
    changes, _ = replay(readings, AlertEngine(rules), None, end)
    expected = {(c.household, c.key, c.at.astimezone(UTC).isoformat()) for c in changes if c.event == "raised"}
    cmd = [sys.executable, __file__, "child", url, str(args.households), str(args.days)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed_after = []
    started = time.perf_counter()
    for delay in args.kill_after:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed_after.append(delay)
        proc.wait()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600, check=False)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    sessions = db.session_factory(db.make_engine(url))
    with sessions() as s:
        codes = dict(s.execute(select(CareHousehold.id, CareHousehold.code)).all())
        stored = [(codes[a.household_id], a.alert_key, a.raised_at.astimezone(UTC).isoformat())
                  for a in s.scalars(select(Alert))]
    return {"benchmark": "alerts_kill9", "database": url.split("://")[0], "households": args.households,
            "days": args.days, "readings": len(readings), "kills": len(killed_after), "killed_after_s": killed_after,
            "alerts_expected": len(expected), "alerts_in_db": len(stored), "duplicates": len(stored) - len(set(stored)),
            "missing": len(expected - set(stored)), "unexpected": len(set(stored) - expected),
            "seconds": round(time.perf_counter() - started, 1)}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        child_replay(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="which", required=True)
    lat = sub.add_parser("latency")
    lat.add_argument("--households", type=int, default=800)
    lat.add_argument("--seconds", type=float, default=120)
    lat.add_argument("--leaks", type=int, default=100, help="homes that report a gas leak once")
    lat.add_argument("--clients", type=int, default=16)
    lat.add_argument("--workers", type=int, default=1)
    lat.add_argument("--idle-sleep", type=float, default=0.05)
    lat.add_argument("--database-url")
    kill = sub.add_parser("kill")
    kill.add_argument("--households", type=int, default=40)
    kill.add_argument("--days", type=int, default=3)
    kill.add_argument("--kill-after", type=float, nargs="*", default=[4.0, 6.0])
    kill.add_argument("--database-url")
    args = parser.parse_args()
    result = cmd_latency(args) if args.which == "latency" else cmd_kill(args)
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
