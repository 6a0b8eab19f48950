"""Job queue (SQLite + Postgres), SMS outbox against Twilio's API format, delivery callbacks, and
a worker process killed with kill -9 mid-drain losing nothing."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fixtures.twilio_world import RESIDENT
from sqlalchemy import func, select

from backend.infra import db
from backend.infra.crypto import FieldCipher, KeyRing
from backend.infra.jobs import DbJobQueue, JobAdmin, PermanentJobError, Worker
from backend.infra.models import Job, SmsOutbox
from backend.messaging.outbox import Outbox
from channels.twilio_signature import TwilioConfig
from channels.twilio_sms import TwilioSmsSender
from core_fixtures import FakeClock

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def store(db_url: str):
    db.upgrade(db_url)
    engine = db.make_engine(db_url)
    yield db.session_factory(engine)
    engine.dispose()


def _jobs(sessions, *where) -> list[Job]:
    with sessions() as session:
        return list(session.scalars(select(Job).where(*where).order_by(Job.id)))


# --- jobs ------------------------------------------------------------------------------------------------
def test_jobs_run_once_and_failures_back_off_then_fail_for_good(store):
    clock = FakeClock()
    queue = DbJobQueue(store, clock, max_attempts=3)
    seen: list[int] = []

    def flaky(payload):
        seen.append(payload["n"])
        if payload["n"] == 2:
            raise RuntimeError("upstream down")
        if payload["n"] == 3:
            raise PermanentJobError("row is gone")

    worker = Worker(queue, {"work": flaky}, worker_id="w1")
    for n in (1, 2, 3):
        queue.enqueue("work", {"n": n})
    queue.enqueue("nobody-handles-this", {})
    assert worker.run_once() == 4
    assert sorted(seen) == [1, 2, 3]
    assert worker.run_once() == 0  # n=2 waits for its back-off
    clock.advance(seconds=5)
    worker.run_once()
    clock.advance(seconds=10)
    worker.run_once()
    assert seen.count(2) == 3 and seen.count(1) == 1 and seen.count(3) == 1
    states = {j.payload: (j.state, j.attempts) for j in _jobs(store)}
    assert states['{"n": 1}'] == ("done", 1)
    assert states['{"n": 2}'] == ("failed", 3)
    assert states['{"n": 3}'] == ("failed", 1)
    assert states["{}"] == ("failed", 1)


def test_a_dead_workers_job_is_taken_again_after_its_lease(store):
    clock = FakeClock()
    queue = DbJobQueue(store, clock, lease=timedelta(minutes=5))
    queue.enqueue("work", {"n": 1})
    [job] = queue.claim("crashed-worker")
    assert queue.claim("other") == []  # leased
    clock.advance(minutes=6)
    [again] = queue.claim("other")
    assert again.id == job.id and again.attempts == 2
    queue.finish(job, "crashed-worker")  # the late original cannot mark it done
    assert _jobs(store)[0].state == "running"
    queue.finish(again, "other")
    assert _jobs(store)[0].state == "done"


def test_dedupe_key_rearms_instead_of_duplicating(store):
    clock = FakeClock()
    queue = DbJobQueue(store, clock)
    later = clock() + timedelta(minutes=2)
    queue.enqueue("ticket.process", {"ticket_id": 7}, run_at=clock(), dedupe_key="ticket.process:7")
    queue.enqueue("ticket.process", {"ticket_id": 7}, run_at=later, dedupe_key="ticket.process:7")
    [job] = _jobs(store)
    assert job.state == "queued" and job.run_at == later.astimezone(UTC)
    assert queue.claim("w") == []
    clock.advance(minutes=2)
    [claimed] = queue.claim("w")
    queue.enqueue("ticket.process", {"ticket_id": 7}, run_at=clock(), dedupe_key="ticket.process:7")
    queue.finish(claimed, "w")  # re-armed while running: the new run still happens
    assert _jobs(store)[0].state == "queued"


def test_concurrent_workers_run_each_job_exactly_once(store):
    clock = FakeClock()
    queue = DbJobQueue(store, clock)
    for n in range(120):
        queue.enqueue("work", {"n": n})
    seen: list[int] = []
    lock = threading.Lock()

    def record(payload):
        with lock:
            seen.append(payload["n"])

    workers = [Worker(queue, {"work": record}, worker_id=f"w{i}", batch=5) for i in range(4)]
    threads = [threading.Thread(target=w.run_until_idle, kwargs={"max_ticks": 200}) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(seen) == list(range(120))
    assert {j.state for j in _jobs(store)} == {"done"}


def test_dead_letter_list_replay_and_prune(store):
    clock = FakeClock()
    queue = DbJobQueue(store, clock, max_attempts=2)
    admin = JobAdmin(store, clock)
    fixed = {"upstream": False}

    def needs_upstream(payload):
        if not fixed["upstream"]:
            raise RuntimeError("upstream down")

    worker = Worker(queue, {"work": needs_upstream, "ok": lambda payload: None}, worker_id="w1")
    queue.enqueue("work", {"n": 1})
    queue.enqueue("ok", {"n": 2})
    worker.run_once()
    clock.advance(seconds=5)
    worker.run_once()  # second and last attempt: dead
    [dead] = admin.list("failed")
    assert dead.name == "work" and dead.attempts == 2 and "upstream down" in (dead.last_error or "")
    assert admin.counts() == {"work": {"failed": 1}, "ok": {"done": 1}}
    assert admin.replay([]) == 0  # nothing named, nothing moves
    fixed["upstream"] = True
    assert admin.replay([dead.id]) == 1
    assert admin.replay([dead.id]) == 0  # already queued: replaying twice does nothing
    assert worker.run_once() == 1
    assert admin.list("failed") == [] and admin.counts() == {"work": {"done": 1}, "ok": {"done": 1}}
    clock.advance(days=8)
    queue.enqueue("ok", {"n": 3})
    assert admin.prune(timedelta(days=7)) == 2  # only finished rows older than a week
    assert [j.state for j in _jobs(store)] == ["queued"]


def test_operator_sees_and_replays_dead_jobs_from_the_command_line(tmp_path, model_dir):
    data_dir = tmp_path / "var"
    url = f"sqlite:///{data_dir / 'ops.db'}"
    data_dir.mkdir()
    db.upgrade(url)
    engine = db.make_engine(url)
    sessions = db.session_factory(engine)
    queue = DbJobQueue(sessions, lambda: datetime.now(UTC), max_attempts=1)
    queue.enqueue("ticket.process", {"ticket_id": 41})
    [job] = queue.claim("w")
    queue.fail(job, "w", "OCR model missing")
    env = {**os.environ, "DATA_DIR": str(data_dir), "DATABASE_URL": url, "MODEL_DIR": str(model_dir)}

    def cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "assistant", "jobs", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    listing = cli("dead")
    assert f"#{job.id} ticket.process" in listing and "OCR model missing" in listing
    assert "ticket.process" in cli("stats") and "failed=1" in cli("stats")
    assert "queued again: 1" in cli("replay", "--all")
    assert "dead-letter list is empty" in cli("dead")
    assert _jobs(sessions)[0].state == "queued"
    engine.dispose()


# --- outbox ----------------------------------------------------------------------------------------------
@pytest.fixture
def outbox(tmp_path, twilio_api):
    from fixtures.twilio_world import ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER

    twilio_api.sent.clear()
    twilio_api.fail_next = 0
    url = f"sqlite:///{tmp_path / 'outbox.db'}"
    db.upgrade(url)
    engine = db.make_engine(url)
    clock = FakeClock()
    cipher = FieldCipher(KeyRing({1: bytes(range(16))}, 1, bytes(range(32))))
    config = TwilioConfig(ACCOUNT_SID, AUTH_TOKEN, "https://sms.example.org", False, FROM_NUMBER, None,
                          twilio_api.base_url)
    box = Outbox(db.session_factory(engine), cipher, clock, TwilioSmsSender(config), max_attempts=3)
    yield box, clock
    engine.dispose()


def _rows(box: Outbox) -> list[SmsOutbox]:
    with box._sessions() as session:
        return list(session.scalars(select(SmsOutbox).order_by(SmsOutbox.id)))


def test_outbox_sends_in_twilio_format_and_is_idempotent_on_its_key(outbox, twilio_api):
    box, _clock = outbox
    box.enqueue(RESIDENT, "报修31234567已由物业公司接单。", "ticket:1:accepted:2")
    box.enqueue(RESIDENT, "报修31234567已由物业公司接单。", "ticket:1:accepted:2")  # a re-run job
    assert box.drain() == 1 and box.drain() == 0
    [sent] = twilio_api.sent
    assert sent.to == RESIDENT and sent.from_ == "+8610690000" and sent.auth_ok
    assert sent.status_callback == "https://sms.example.org/webhooks/twilio/sms/status"
    [row] = _rows(box)
    assert row.send_state == "sent" and row.provider_sid == sent.sid and row.delivery_status == "queued"


def test_outbox_retries_outages_with_back_off_and_gives_up_on_bad_numbers(outbox, twilio_api):
    box, clock = outbox
    twilio_api.fail_next = 1
    box.enqueue(RESIDENT, "第一条", "k1")
    box.enqueue("not-a-number", "第二条", "k2")
    box.drain()
    first, second = _rows(box)
    assert (first.send_state, first.attempts, first.last_error[:10]) == ("pending", 1, "twilio 500")
    assert first.next_attempt_at > clock().astimezone(UTC)
    assert (second.send_state, second.attempts) == ("failed", 1) and "21211" in second.last_error
    assert box.drain() == 0  # not due yet
    clock.advance(seconds=6)
    assert box.drain() == 1
    assert _rows(box)[0].send_state == "sent" and [m.body for m in twilio_api.sent] == ["第一条"]


def test_delivery_failures_are_sent_again_or_given_up_by_error_code(outbox, twilio_api):
    box, clock = outbox
    box.enqueue(RESIDENT, "会送达", "d1")
    box.enqueue(RESIDENT, "手机关机", "d2")
    box.enqueue(RESIDENT, "已退订", "d3")
    box.drain()
    sids = {m.body: m.sid for m in twilio_api.sent}
    assert box.on_status(sids["会送达"], "delivered")
    assert box.on_status(sids["手机关机"], "undelivered", "30003")  # unreachable: try again later
    assert box.on_status(sids["已退订"], "failed", "21610")  # unsubscribed at the carrier: stop
    assert not box.on_status("SM" + "0" * 32, "delivered")
    states = {box._cipher.decrypt(r.body_enc): (r.send_state, r.delivery_status) for r in _rows(box)}
    assert states == {"会送达": ("sent", "delivered"), "手机关机": ("pending", "undelivered"),
                      "已退订": ("failed", "failed")}
    clock.advance(minutes=2)
    box.drain()
    assert [m.body for m in twilio_api.sent].count("手机关机") == 2


# --- kill -9 ----------------------------------------------------------------------------------------------
def _count_outbox(url: str, state: str | None = None) -> int:
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            query = select(func.count()).select_from(SmsOutbox)
            if state:
                query = query.where(SmsOutbox.send_state == state)
            return int(conn.execute(query).scalar() or 0)
    finally:
        engine.dispose()


def test_worker_killed_mid_drain_loses_no_message(tmp_path, twilio_api, model_dir):
    from fixtures.twilio_world import ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER

    twilio_api.sent.clear()
    data_dir = tmp_path / "var"
    url = f"sqlite:///{data_dir / 'k9.db'}"
    env = {**os.environ, "DATA_DIR": str(data_dir), "DATABASE_URL": url, "MODEL_DIR": str(model_dir),
           "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "TWILIO_FROM_NUMBER": FROM_NUMBER,
           "TWILIO_API_BASE_URL": twilio_api.base_url, "OUTBOX_LEASE_SECONDS": "1", "JOB_LEASE_SECONDS": "1"}
    data_dir.mkdir(parents=True)
    from assistant.config import load_settings
    from runtime.container import make_cipher

    db.upgrade(url)
    engine = db.make_engine(url)
    cipher = make_cipher(load_settings({"DATA_DIR": str(data_dir)}))  # the key file the worker will load
    box = Outbox(db.session_factory(engine), cipher, lambda: datetime.now(UTC), None)
    total = 120
    for i in range(total):
        box.enqueue(RESIDENT, f"消息{i:03d}", f"k9:{i}")
    engine.dispose()

    twilio_api.delay_seconds = 0.02
    command = [sys.executable, "-m", "runtime.cli_worker", "--idle-sleep", "0.1"]
    try:
        worker = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while len(twilio_api.sent) < total // 3 and time.time() < deadline:
            time.sleep(0.02)
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        sent_before = len(twilio_api.sent)
        assert 0 < sent_before < total, "the kill must land mid-drain"
        assert _count_outbox(url, "sending") > 0 or _count_outbox(url, "pending") > 0
        time.sleep(1.2)  # the dead worker's leases run out
        again = subprocess.run([*command, "--once"], cwd=ROOT, env=env, capture_output=True, timeout=120)
        assert again.returncode == 0, again.stderr.decode()[-2000:]
    finally:
        twilio_api.delay_seconds = 0.0
    bodies = [m.body for m in twilio_api.sent]
    assert set(bodies) == {f"消息{i:03d}" for i in range(total)}  # none lost
    # At-least-once: only what was in flight at the kill (one claimed batch) may go out twice.
    assert len(bodies) - total <= 20
    assert _count_outbox(url, "sent") == total
