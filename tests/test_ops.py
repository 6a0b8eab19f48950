"""Operations: /healthz, /readyz, /metrics (single and multiprocess), JSON logs with request and
conversation ids, the ASR real-time-factor hook."""
from __future__ import annotations

import io
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import _free_port
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.exc import OperationalError

from assistant import logcontext
from assistant.config import load_settings
from assistant.nlu.pipeline import BackgroundNLU, NLUNotReady
from assistant.voice.audio import Audio
from assistant.voice.recognizer import DecodePool, Transcript
from backend.alerts.store import Alert, AlertEvent, CareHousehold
from backend.infra import observability as obs
from backend.infra.jobs import DbJobQueue
from backend.messaging.outbox import Outbox
from channels.app import create_app
from runtime.container import build_runtime, make_cipher

ROOT = Path(__file__).resolve().parent.parent



def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in a Prometheus exposition, or None when absent."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


@pytest.fixture
def client(runtime):
    return create_app(runtime).test_client()


def _runtime_with(settings_env, nlu, clock, **extra):
    Path(settings_env["DATA_DIR"]).mkdir(parents=True, exist_ok=True)
    return build_runtime(load_settings({**settings_env, **extra}), clock=clock, nlu=nlu)


# --- health and readiness ----------------------------------------------------------------------------
def test_healthz_and_readyz_on_sqlite(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ready",
                                   "checks": {"nlu": "ok", "database": "ok", "redis": "not_configured"}}
    assert "ops" not in client.get("/").get_json()["channels"]  # the index lists channels only


def test_readyz_is_503_naming_redis_when_it_is_unreachable(settings_env, nlu, clock):
    url = f"redis://:s3cret-pw@127.0.0.1:{_free_port()}/0"  # nothing listens there
    client = create_app(_runtime_with(settings_env, nlu, clock, REDIS_URL=url)).test_client()
    started = time.monotonic()
    response = client.get("/readyz")
    assert time.monotonic() - started < 3
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "unavailable"
    assert body["checks"] == {"nlu": "ok", "database": "ok", "redis": "down"}
    assert body["reasons"]["redis"] == "ConnectionError"
    assert "s3cret" not in response.get_data(as_text=True) and "127.0.0.1" not in response.get_data(as_text=True)


def test_readyz_answers_within_seconds_when_redis_hangs(settings_env, nlu, clock):
    # A socket that completes the TCP handshake (kernel backlog) but never answers: a hung Redis.
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)
    try:
        url = f"redis://127.0.0.1:{hung.getsockname()[1]}/0"
        client = create_app(_runtime_with(settings_env, nlu, clock, REDIS_URL=url)).test_client()
        started = time.monotonic()
        response = client.get("/readyz")
        assert time.monotonic() - started < 3
        assert response.status_code == 503
        assert response.get_json()["checks"]["redis"] == "down"
        assert response.get_json()["reasons"]["redis"] in {"TimeoutError", "timeout"}
    finally:
        hung.close()


def test_readyz_answers_within_seconds_when_the_database_hangs(runtime):
    client = create_app(runtime).test_client()
    release = threading.Event()

    def hanging_sessions():
        release.wait(20)
        raise OperationalError("SELECT 1", {}, Exception("server gone"))

    healthy, runtime.db_sessions = runtime.db_sessions, hanging_sessions
    try:
        started = time.monotonic()
        response = client.get("/readyz")
        assert time.monotonic() - started < 3
        assert response.status_code == 503
        body = response.get_json()
        assert body["checks"]["database"] == "down" and body["reasons"]["database"] == "timeout"
    finally:
        release.set()
        runtime.db_sessions = healthy
    time.sleep(0.1)  # the lane thread finishes the released probe
    assert client.get("/readyz").status_code == 200


def test_readyz_with_a_real_redis(settings_env, nlu, clock, redis_server):
    client = create_app(_runtime_with(settings_env, nlu, clock, REDIS_URL=redis_server.url)).test_client()
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json()["checks"] == {"nlu": "ok", "database": "ok", "redis": "ok"}


# --- request ids -------------------------------------------------------------------------------------
def test_readyz_is_503_while_the_nlu_model_loads_and_200_after(settings_env, nlu, clock):
    """A web worker answers at once and loads the model in the background: not ready until then,
    and a turn that comes meanwhile waits for the model instead of failing."""
    release = threading.Event()

    def slow_load():
        assert release.wait(30)
        return nlu

    loading = BackgroundNLU(slow_load)
    client = create_app(_runtime_with(settings_env, loading, clock)).test_client()
    assert client.get("/healthz").status_code == 200  # alive meanwhile
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["checks"]["nlu"] == "loading" and body["reasons"] == {"nlu": "loading"}
    assert body["checks"]["database"] == "ok"

    turn: dict[str, object] = {}
    sender = threading.Thread(target=lambda: turn.update(client.post(
        "/webhooks/rest/webhook", json={"sender": "early", "message": "我想办老年证"}).get_json()[-1]))
    sender.start()
    time.sleep(0.3)
    assert sender.is_alive()  # waiting for the model, not answered with a guess
    release.set()
    sender.join(10)
    assert "身份证" in str(turn.get("text"))
    assert loading.wait(5) is nlu
    response = client.get("/readyz")
    assert response.status_code == 200 and response.get_json()["checks"]["nlu"] == "ok"


def test_readyz_stays_503_when_the_model_cannot_load_and_turns_get_the_busy_answer(settings_env, clock):
    def broken_load():
        raise OSError("model directory unreadable")

    loading = BackgroundNLU(broken_load, wait_seconds=0.5)
    client = create_app(_runtime_with(settings_env, loading, clock)).test_client()
    with pytest.raises(NLUNotReady):
        loading.wait(5)
    response = client.get("/readyz")
    assert response.status_code == 503 and response.get_json()["checks"]["nlu"] == "failed"
    reply = client.post("/webhooks/rest/webhook", json={"sender": "x", "message": "你好"})
    assert reply.status_code == 200 and "稍等" in reply.get_json()[0]["text"]  # utter_busy, not a 500


def test_request_id_is_echoed_when_well_formed_and_replaced_otherwise(client):
    assert client.get("/healthz", headers={"X-Request-Id": "req-0123abcd"}).headers["X-Request-Id"] == "req-0123abcd"
    for bad in ["short", "x" * 200, "evil\"} {forged", "13800138000-phone"]:
        rid = client.get("/healthz", headers={"X-Request-Id": bad}).headers["X-Request-Id"]
        assert rid != bad and len(rid) == 32
    first, second = (client.get("/healthz").headers["X-Request-Id"] for _ in range(2))
    assert first != second
    assert logcontext.request_id.get() is None  # nothing leaks into the next request on this thread


# --- metrics -----------------------------------------------------------------------------------------
def test_metrics_count_and_time_a_rest_turn_under_its_channel(client):
    before = client.get("/metrics").get_data(as_text=True)
    response = client.post("/webhooks/rest/webhook", json={"sender": "m1", "message": "你好"})
    assert response.status_code == 200
    client.get("/no-such-page")  # not a channel: counted under "none", never under its path
    after = client.get("/metrics")
    assert after.status_code == 200 and after.headers["Content-Type"].startswith("text/plain")
    text = after.get_data(as_text=True)

    def delta(name: str, **labels: str) -> float:
        return (sample(text, name, **labels) or 0) - (sample(before, name, **labels) or 0)

    assert delta("assistant_http_request_duration_seconds_count", channel="rest") == 1
    assert delta("assistant_http_requests_total", channel="rest", status="2xx") == 1
    assert delta("assistant_http_requests_total", channel="none", status="4xx") == 1
    assert "no-such-page" not in text
    assert sample(text, "assistant_http_requests_in_flight") == 1  # the scrape itself
    assert sample(text, "assistant_metrics_database_up") == 1


def test_metrics_read_outbox_jobs_and_care_alert_breaches_from_the_database(runtime, client, clock):
    Outbox(runtime.db_sessions, runtime.cipher, runtime.clock, None).enqueue("13800138000", "测试短信", "ops:1")
    queue = DbJobQueue(runtime.db_sessions, runtime.clock, max_attempts=3)
    queue.enqueue("ops.a", {"n": 1})
    queue.enqueue("ops.b", {"n": 2})
    dead, retrying = queue.claim("w1", 10)
    queue.fail(dead, "w1", "broken for good", permanent=True)
    queue.fail(retrying, "w1", "try again later")
    now = clock()
    with runtime.db_sessions() as session, session.begin():
        household = CareHousehold(code="H-ops", grid_id="G01", senior_name_enc=runtime.cipher.encrypt("张秀兰"))
        session.add(household)
        session.flush()
        alert = Alert(household_id=household.id, rule="no_water", alert_key="no_water", level="concern",
                      state="escalated", dedupe_key="ops-alert", raised_at=now, notify_at=now, notified_at=now,
                      ack_due_at=now - timedelta(minutes=5))  # past due and not escalated yet: overdue
        session.add(alert)
        session.flush()
        for why in ("ack", "ack", "visit"):  # as backend.alerts.desk records an SLA escalation
            session.add(AlertEvent(alert_id=alert.id, event="escalated", from_state="notified",
                                   to_state="escalated", actor="system:sla", at=now,
                                   note=json.dumps({"step": 1, "why": why, "roles": [], "contacts": []})))
        session.add(AlertEvent(alert_id=alert.id, event="escalated", from_state="notified", to_state="escalated",
                               actor="staff:1", at=now, note=json.dumps({"why": "ack"})))  # not an SLA breach

    text = client.get("/metrics").get_data(as_text=True)
    assert sample(text, "assistant_outbox_messages", state="pending") == 1
    assert sample(text, "assistant_outbox_messages", state="failed") == 0
    assert sample(text, "assistant_jobs", state="failed") == 1
    assert sample(text, "assistant_jobs", state="queued") == 1
    assert sample(text, "assistant_jobs_dead_letter") == 1
    assert sample(text, "assistant_job_failures", state="failed") == 1
    assert sample(text, "assistant_job_failures", state="queued") == 1
    assert sample(text, "assistant_care_alert_sla_breaches_total", deadline="ack") == 2
    assert sample(text, "assistant_care_alert_sla_breaches_total", deadline="visit") == 1
    assert sample(text, "assistant_care_alerts_overdue") == 1
    assert "13800138000" not in text


def test_metrics_fail_soft_when_the_database_is_down(clock):
    def broken():
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    registry = obs.scrape_registry(obs.DatabaseCollector(broken, clock))
    text = generate_latest(registry).decode()
    assert sample(text, "assistant_metrics_database_up") == 0
    assert sample(text, "assistant_jobs", state="failed") is None
    assert "assistant_http_requests_in_flight" in text  # the process metrics are still there


def test_asr_real_time_factor_is_observed_where_speech_is_decoded(runtime):
    create_app(runtime)  # binds the observer, as at server start

    class Fake:
        name = "faster_whisper"

        def transcribe(self, audio, expect=None):
            return Transcript("你好", "你好", 0.9, 0.0, 2.0, audio_seconds=2.0, decode_seconds=0.4,
                              recognizer=self.name)

    def rtf() -> tuple[float, float]:
        text = generate_latest(obs.scrape_registry()).decode()
        return (sample(text, "assistant_asr_real_time_factor_count", recognizer="faster_whisper") or 0,
                sample(text, "assistant_asr_real_time_factor_sum", recognizer="faster_whisper") or 0)

    count, total = rtf()
    pool = DecodePool(Fake())
    try:
        pool.transcribe(Audio(np.zeros(32000, dtype=np.float32), 16000), timeout=5)
    finally:
        pool.close()
    new_count, new_total = rtf()
    assert new_count == count + 1
    assert new_total - total == pytest.approx(0.2)


def test_the_core_imports_no_web_framework_and_no_metrics_library():
    code = ("import sys, assistant.core, assistant.logcontext, assistant.voice.recognizer, assistant.voice.tts; "
            "bad = [m for m in ('flask', 'werkzeug', 'prometheus_client') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


# --- multiprocess mode -------------------------------------------------------------------------------
_WRITER = """
import os
from backend.infra import observability as obs
obs.observe_request("rest", 200, 0.05)
obs.observe_request("rest", 503, 0.5)
obs.metrics().in_flight.inc()  # still "in flight" when the process ends: only child_exit clears it
print(os.getpid())
"""


def test_multiprocess_mode_sums_the_workers_and_child_exit_drops_a_dead_ones_gauge(tmp_path, monkeypatch):
    directory = tmp_path / "prom"
    directory.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    pids = [int(subprocess.run([sys.executable, "-c", _WRITER], cwd=ROOT, env=env, capture_output=True,
                               text=True, timeout=120, check=True).stdout.strip()) for _ in range(2)]
    assert pids[0] != pids[1]

    def scrape() -> str:
        return generate_latest(obs.scrape_registry(multiproc_dir=str(directory))).decode()

    text = scrape()
    assert sample(text, "assistant_http_requests_total", channel="rest", status="2xx") == 2
    assert sample(text, "assistant_http_requests_total", channel="rest", status="5xx") == 2
    assert sample(text, "assistant_http_request_duration_seconds_count", channel="rest") == 4
    assert sample(text, "assistant_http_request_duration_seconds_sum", channel="rest") == pytest.approx(1.1)
    assert sample(text, "assistant_http_requests_in_flight") == 2

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    obs.child_exit(None, SimpleNamespace(pid=pids[0]))  # what gunicorn's master calls
    text = scrape()
    assert sample(text, "assistant_http_requests_in_flight") == 1
    assert sample(text, "assistant_http_requests_total", channel="rest", status="2xx") == 2  # counts stay


def test_gunicorn_workers_share_one_exposition_and_log_json(tmp_path, model_dir, nlu):
    pytest.importorskip("gunicorn")
    port = _free_port()
    env = {**os.environ, "DATA_DIR": str(tmp_path / "var"), "MODEL_DIR": str(model_dir),
           "DATABASE_URL": f"sqlite:///{tmp_path / 'var' / 'g.db'}", "LOG_FORMAT": "json",
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")}
    env.pop("REDIS_URL", None)
    log_path = tmp_path / "gunicorn.log"
    with log_path.open("wb") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "python:backend.infra.observability", "-w", "2",
             "-b", f"127.0.0.1:{port}", "runtime.wsgi:app"],
            cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while True:
                try:
                    urllib.request.urlopen(base + "/readyz", timeout=5)
                    break
                except OSError:  # refused, or accepted by the master while the workers still load
                    assert server.poll() is None, log_path.read_text(errors="replace")[-3000:]
                    assert time.monotonic() < deadline, "gunicorn did not start"
                    time.sleep(0.2)

            def miss() -> int:
                try:
                    urllib.request.urlopen(base + "/no-such-page", timeout=10)
                except urllib.error.HTTPError as exc:
                    return exc.code
                return 200

            # A sync worker that took a half-sent request waits for the rest, so the other worker
            # answers the next twelve: each worker then holds some of the counts.
            with socket.create_connection(("127.0.0.1", port), timeout=10) as partial:
                partial.sendall(b"GET /no-such-page HTTP/1.1\r\nHost: test\r\n")
                time.sleep(0.3)
                assert [miss() for _ in range(12)] == [404] * 12
                partial.sendall(b"Connection: close\r\n\r\n")
                assert partial.recv(64).startswith(b"HTTP/1.1 404")
            # Whichever worker answers the scrape, it reports both workers' requests (alone: 12 or 1).
            for _ in range(3):
                text = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
                assert sample(text, "assistant_http_requests_total", channel="none", status="4xx") == 13
            assert sample(text, "assistant_metrics_database_up") == 1
        finally:
            server.terminate()
            server.wait(timeout=30)
    records = []
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    assert records, "the application logged no JSON lines"
    assert all({"time", "level", "logger", "message", "request_id", "conversation_id"} <= set(r) for r in records)


# --- structured logs ---------------------------------------------------------------------------------
@pytest.fixture
def json_log():
    stream = io.StringIO()
    handler = obs.make_handler("json", stream)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_json_log_lines_carry_ids_and_never_a_phone_in_clear(runtime, json_log):
    app = create_app(runtime)

    def crash():  # a page that logs personal data and fails with it in the exception
        logging.getLogger("tests.ops").info("resident 13912345678 id 110101194503020012 asked")
        raise RuntimeError("lookup failed for 13912345678")

    app.add_url_rule("/ops-test-crash", view_func=crash)
    client = app.test_client()
    response = client.post("/webhooks/rest/webhook", json={"sender": "13800138000", "message": "我要找人工"},
                           headers={"X-Request-Id": "req-handoff-0001"})
    assert response.status_code == 200 and response.headers["X-Request-Id"] == "req-handoff-0001"
    assert client.get("/ops-test-crash", headers={"X-Request-Id": "req-crash-0002"}).status_code == 500

    output = json_log.getvalue()
    records = [json.loads(line) for line in output.splitlines()]
    assert records and all(set(r) >= {"time", "level", "logger", "message", "request_id", "conversation_id"}
                           for r in records)
    assert all(r["time"].endswith("Z") for r in records)
    for number in ("13800138000", "13912345678", "110101194503020012"):
        assert number not in output
    handoff = [r for r in records if r["request_id"] == "req-handoff-0001" and r["message"].startswith("handoff")]
    assert handoff, records
    expected = logcontext.conversation_id_for("rest:13800138000")
    assert handoff[0]["conversation_id"] == expected and len(expected) == 12
    crash_lines = [r for r in records if r["request_id"] == "req-crash-0002"]
    assert any("139****5678" in r["message"] and r["conversation_id"] is None for r in crash_lines)
    failed = [r for r in crash_lines if r.get("exc_info")]
    assert failed and "RuntimeError: lookup failed for 139****5678" in failed[0]["exc_info"]


def test_conversation_ids_agree_across_workers_and_hide_the_key(settings_env, tmp_path):
    settings = load_settings(settings_env)
    Path(settings_env["DATA_DIR"]).mkdir(parents=True, exist_ok=True)
    # Two processes with the same keys (two gunicorn workers) derive the same id.
    obs.bind_runtime(SimpleNamespace(cipher=make_cipher(settings)))
    first = logcontext.conversation_id_for("sms:+8613800138000")
    obs.bind_runtime(SimpleNamespace(cipher=make_cipher(settings)))
    assert logcontext.conversation_id_for("sms:+8613800138000") == first
    assert logcontext.conversation_id_for("sms:+8613900139000") != first
    other = load_settings({**settings_env, "DATA_DIR": str(tmp_path / "elsewhere")})
    (tmp_path / "elsewhere").mkdir()
    obs.bind_runtime(SimpleNamespace(cipher=make_cipher(other)))
    assert logcontext.conversation_id_for("sms:+8613800138000") != first  # keyed: not a plain hash


def test_log_format_defaults_to_text_for_the_terminal():
    stream = io.StringIO()
    handler = obs.make_handler(obs.log_format({}), stream)
    handler.handle(logging.makeLogRecord({"name": "t", "levelno": logging.INFO, "levelname": "INFO",
                                          "msg": "call from %s", "args": ("13800138000",)}))
    assert obs.log_format({"LOG_FORMAT": "JSON"}) == "json"
    line = stream.getvalue()
    assert "INFO t: call from 138****8000" in line and not line.startswith("{")
