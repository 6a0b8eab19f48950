"""Logs, metrics and readiness plumbing for the server processes.

Logging: `configure_logging()` — human text on a terminal by default; `LOG_FORMAT=json` (what
production sets) writes one JSON object per line with the request id and conversation id of
assistant.logcontext, ID and phone numbers masked.

Metrics (prometheus_client): request counters/histograms per channel, in-flight requests and the
ASR real-time factor are recorded by each process; the database figures (outbox, jobs, care-alert
SLA breaches) are read by `DatabaseCollector` once per scrape, in the process that answers it.
Under gunicorn with several workers set PROMETHEUS_MULTIPROC_DIR (an empty, writable directory)
before starting it, and load this module as its config so the hooks below run:

    PROMETHEUS_MULTIPROC_DIR=/run/assistant-metrics \\
        gunicorn -c deploy/gunicorn.conf.py runtime.wsgi:app

Gunicorn reads only names that are its settings from a config module (here `on_starting` and
`child_exit`), so nothing else in this module may be named like one (`workers`, `timeout` …).
"""
from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select, text
from sqlalchemy.orm import Session

from assistant import logcontext
from assistant.privacy import MaskingFilter, mask_text

if TYPE_CHECKING:  # the speech stack pulls in scipy: not for every CLI command or the gunicorn master
    from assistant.voice.recognizer import Transcript

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
T = TypeVar("T")


# --- logging -------------------------------------------------------------------------------------
class ContextFilter(logging.Filter):
    """Stamps the request and conversation ids on each record when it is handled, so any
    formatter (or a queue handler in another thread) sees the ids of the emitting context."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = logcontext.request_id.get()
        if getattr(record, "conversation_id", None) is None:
            record.conversation_id = logcontext.conversation_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line. Masks message and traceback itself as well, so a handler
    configured without MaskingFilter still never writes an ID or phone number in clear."""

    def format(self, record: logging.LogRecord) -> str:
        try:
            message = record.getMessage()
        except (TypeError, ValueError, KeyError):
            message = str(record.msg)
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": mask_text(message),
            "request_id": getattr(record, "request_id", None) or logcontext.request_id.get(),
            "conversation_id": getattr(record, "conversation_id", None) or logcontext.conversation_id.get(),
            "pid": record.process,
        }
        if record.exc_info:
            entry["exc_info"] = mask_text(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exc_info"] = mask_text(record.exc_text)
        if record.stack_info:
            entry["stack_info"] = mask_text(self.formatStack(record.stack_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


def log_format(env: Mapping[str, str] | None = None) -> str:
    value = ((os.environ if env is None else env).get("LOG_FORMAT") or "text").strip().lower()
    return "json" if value == "json" else "text"


def make_handler(fmt: str = "text", stream: IO[str] | None = None) -> logging.Handler:
    """A stream handler that masks ID and phone numbers and knows the request/conversation ids."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(MaskingFilter())
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    return handler


def configure_logging(verbose: bool = False, *, env: Mapping[str, str] | None = None,
                      stream: IO[str] | None = None) -> logging.Handler:
    """Replaces the root handlers with one handler on stderr, text or JSON by LOG_FORMAT."""
    handler = make_handler(log_format(env), stream)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True)
    if not verbose:  # the Twilio SDK logs every request and response header at INFO (11 lines per SMS)
        logging.getLogger("twilio").setLevel(logging.WARNING)
    return handler


# --- timeouts ------------------------------------------------------------------------------------
_executors: dict[str, ThreadPoolExecutor] = {}
_executors_lock = threading.Lock()


def run_in_lane(lane: str, fn: Callable[[], T]) -> Future[T]:
    """Runs fn on the single thread of `lane`. A hung database or Redis then costs one stuck
    thread per lane, not one per probe: later calls queue behind it and time out."""
    with _executors_lock:
        executor = _executors.get(lane)
        if executor is None:  # created lazily: after a gunicorn fork, never in the master
            executor = _executors[lane] = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ops-{lane}")
    return executor.submit(fn)


def wait_for(future: Future[T], timeout: float) -> T:
    """The result within `timeout` seconds, else TimeoutError (the call is dropped if it never started)."""
    try:
        return future.result(timeout=max(0.0, timeout))
    finally:
        future.cancel()  # no-op when done or running; removes a queued call


def call_with_timeout(lane: str, fn: Callable[[], T], timeout: float) -> T:
    return wait_for(run_in_lane(lane, fn), timeout)


def short_reason(exc: BaseException) -> str:
    """What a probe answer may say about a failure: the kind, never a message (messages can
    carry host names, user names or a URL with its password)."""
    if isinstance(exc, TimeoutError):  # concurrent.futures.TimeoutError is TimeoutError on 3.11
        return "timeout"
    return type(exc).__name__


def limit_statements(session: Session, timeout_ms: int) -> None:
    """On Postgres the server gives up too, not only our wait (SQLite has no such setting)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"SET LOCAL statement_timeout = {int(timeout_ms)}"))


def ping_database(session_factory: Callable[[], Session], statement_timeout_ms: int = 2000) -> None:
    with session_factory() as session:
        limit_statements(session, statement_timeout_ms)
        session.execute(text("SELECT 1")).scalar_one()


# --- metrics recorded by each process ------------------------------------------------------------
class ProcessMetrics:
    """Created on first use, never at import: gunicorn's master imports this module for its hooks
    and must not create metric files of its own (nor need the directory before `on_starting`).

    Label values come from fixed sets (registered blueprint names, status classes, recogniser
    implementation names), never from request data, so a caller cannot blow up the series count."""

    def __init__(self) -> None:
        self.requests = Counter("assistant_http_requests", "HTTP requests (turns) by channel and status class",
                                ["channel", "status"])
        self.request_seconds = Histogram(
            "assistant_http_request_duration_seconds", "Time to answer a request, by channel", ["channel"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.8, 1, 2, 5, 10, 15))
        self.in_flight = Gauge("assistant_http_requests_in_flight", "Requests being answered now",
                               multiprocess_mode="livesum")
        self.asr_rtf = Histogram(
            "assistant_asr_real_time_factor", "Decode time / audio duration per recognised utterance",
            ["recognizer"], buckets=(0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 5))


_process_metrics: ProcessMetrics | None = None
_process_metrics_lock = threading.Lock()
_ASR_NAMES = frozenset({"faster_whisper", "vosk", "remote"})  # Recognizer.name of each implementation


def metrics() -> ProcessMetrics:
    global _process_metrics
    with _process_metrics_lock:  # registering twice would raise (duplicate names)
        if _process_metrics is None:
            _process_metrics = ProcessMetrics()
        return _process_metrics


def status_class(code: int) -> str:
    return f"{code // 100}xx" if 100 <= code < 600 else "other"


def observe_request(channel: str, code: int, seconds: float) -> None:
    m = metrics()
    m.requests.labels(channel, status_class(code)).inc()
    m.request_seconds.labels(channel).observe(seconds)


def observe_decode(transcript: Transcript) -> None:
    if transcript.audio_seconds <= 0:  # nothing to divide by (empty audio)
        return
    name = transcript.recognizer if transcript.recognizer in _ASR_NAMES else "other"
    metrics().asr_rtf.labels(name).observe(transcript.real_time_factor)


def bind_runtime(runtime: Any) -> None:
    """Per-process wiring from the composition root: the shared conversation-id key (derived
    from the index key, so every worker derives the same one) and the ASR observer."""
    derived = runtime.cipher.blind_index("conversation id for logs", "log_conversation")
    logcontext.configure_conversation_key(bytes.fromhex(derived))
    from assistant.voice.recognizer import add_decode_observer

    add_decode_observer(observe_decode)


# --- metrics read from the database at scrape time -----------------------------------------------
OUTBOX_STATES = ("pending", "sending", "failed")  # waiting or given up; sent/suppressed are history
JOB_STATES = ("queued", "running", "done", "failed")
SLA_ESCALATION_ACTOR = "system:sla"  # backend.alerts.desk records each breach as an `escalated` event


class DatabaseCollector(Collector):
    """A few COUNT queries per scrape. Fails soft: an unreachable or slow database gives
    `assistant_metrics_database_up 0` instead of an error page, within `timeout` seconds."""

    def __init__(self, session_factory: Callable[[], Session], clock: Callable[[], datetime],
                 timeout: float = 2.0) -> None:
        self._sessions = session_factory
        self._clock = clock
        self._timeout = timeout

    def describe(self) -> Iterable[Metric]:
        return []  # registering must not query the database

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        try:
            counts = call_with_timeout("metrics-db", self._query, self._timeout)
        except Exception as exc:
            log.warning("metrics: database figures unavailable (%s)", short_reason(exc))
            counts = None
        up = GaugeMetricFamily("assistant_metrics_database_up", "1 when the database figures below could be read")
        up.add_metric([], 0 if counts is None else 1)
        yield up
        took = GaugeMetricFamily("assistant_metrics_database_seconds", "Time spent reading them")
        took.add_metric([], time.perf_counter() - started)
        yield took
        if counts is None:
            return
        outbox = GaugeMetricFamily("assistant_outbox_messages", "Outbound SMS waiting to send (or given up), by state",
                                   labels=["state"])
        for state in OUTBOX_STATES:
            outbox.add_metric([state], counts["outbox"].get(state, 0))
        yield outbox
        jobs = GaugeMetricFamily("assistant_jobs", "Background jobs by state (failed = dead letter)", labels=["state"])
        for state in JOB_STATES:
            jobs.add_metric([state], counts["jobs"].get(state, 0))
        yield jobs
        dead = GaugeMetricFamily("assistant_jobs_dead_letter", "Jobs that failed for good (state failed)")
        dead.add_metric([], counts["jobs"].get("failed", 0))
        yield dead
        # A gauge, not a *_total counter: pruning finished rows (`jobs prune`) lowers it.
        failures = GaugeMetricFamily("assistant_job_failures", "Jobs whose last error is recorded, by state "
                                     "(queued = retrying, failed = dead letter, done = recovered)", labels=["state"])
        for state in JOB_STATES:
            failures.add_metric([state], counts["job_failures"].get(state, 0))
        yield failures
        breaches = CounterMetricFamily("assistant_care_alert_sla_breaches",
                                       "Care-alert deadlines missed (escalations by the SLA check), by deadline",
                                       labels=["deadline"])
        breaches.add_metric(["ack"], counts["sla_ack"])
        breaches.add_metric(["visit"], counts["sla_visit"])
        yield breaches
        overdue = GaugeMetricFamily("assistant_care_alerts_overdue",
                                    "Active alerts past a deadline not yet escalated (the worker is behind)")
        overdue.add_metric([], counts["overdue"])
        yield overdue

    def _query(self) -> dict[str, Any]:
        from backend.alerts.store import Alert, AlertEvent
        from backend.infra.models import Job, SmsOutbox

        now = self._clock().astimezone(UTC)
        # Read-only, but on SQLite every transaction is BEGIN IMMEDIATE (backend.infra.db): the write
        # lock is held for these few milliseconds; a long writer makes the scrape time out instead.
        with self._sessions() as session:
            limit_statements(session, int(self._timeout * 1000))
            outbox = dict(session.execute(
                select(SmsOutbox.send_state, func.count()).where(SmsOutbox.send_state.in_(OUTBOX_STATES))
                .group_by(SmsOutbox.send_state)).all())
            jobs = dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all())
            job_failures = dict(session.execute(select(Job.state, func.count()).where(Job.last_error.is_not(None))
                                                .group_by(Job.state)).all())
            # The desk writes the event note with json.dumps defaults: {"step": 1, "why": "visit", …}.
            visit = case((AlertEvent.note.like('%"why": "visit"%'), 1), else_=0)
            total, visits = session.execute(
                select(func.count(), func.coalesce(func.sum(visit), 0))
                .where(AlertEvent.event == "escalated", AlertEvent.actor == SLA_ESCALATION_ACTOR)).one()
            overdue = session.scalar(select(func.count()).where(
                Alert.state.not_in(("open", "visited", "closed")),
                ((Alert.acknowledged_at.is_(None) & (Alert.ack_due_at <= now))
                 | (Alert.visited_at.is_(None) & (Alert.visit_due_at <= now)))))
        return {"outbox": outbox, "jobs": jobs, "job_failures": job_failures,
                "sla_ack": int(total) - int(visits), "sla_visit": int(visits), "overdue": int(overdue or 0)}


class _Forward(Collector):
    """The process's default registry (our metrics, process_* and python_* figures) inside a
    per-scrape registry."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def multiprocess_dir(env: Mapping[str, str] | None = None) -> str | None:
    return (os.environ if env is None else env).get(MULTIPROC_ENV) or None


def scrape_registry(*collectors: Collector, multiproc_dir: str | None = None) -> CollectorRegistry:
    """A fresh registry for one scrape: every worker's files summed in multiprocess mode, this
    process's metrics otherwise, plus `collectors` (the database figures), asked once."""
    metrics()  # so a scrape before the first request shows the series (in-flight 0)
    registry = CollectorRegistry()
    directory = multiproc_dir or multiprocess_dir()
    if directory:
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry, path=directory)
    else:
        registry.register(_Forward())
    for collector in collectors:
        registry.register(collector)
    return registry


# --- gunicorn hooks (`gunicorn -c python:backend.infra.observability …`) --------------------------------
def on_starting(server: Any) -> None:
    """Master start: drop the previous run's metric files (they would be summed into this run's)."""
    directory = multiprocess_dir()
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        for stale in Path(directory).glob("*.db"):
            stale.unlink(missing_ok=True)


def child_exit(server: Any, worker: Any) -> None:
    """A worker exited: its live gauges (in-flight requests) must stop counting."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
