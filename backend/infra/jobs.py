"""Background jobs: a small JobQueue seam with a database-backed implementation.

Webhooks persist what they received and enqueue a job in the same transaction, then answer;
workers (a thread inside `serve` on the embedded default, `python -m assistant worker`
processes in production) claim due jobs and run them. Semantics are at-least-once: a worker
killed mid-job leaves a `running` row whose lease expires and another worker takes it again,
so every handler must be idempotent. A later Redis-backed queue only has to implement
`JobQueue` (enqueue + claim/finish) to slot in.

Claiming uses SELECT … FOR UPDATE SKIP LOCKED on Postgres (workers never wait on each other);
SQLite ignores FOR UPDATE, but there every transaction starts with BEGIN IMMEDIATE
(backend.infra.db), so claims are serialised by the database write lock.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from assistant.ports import Clock
from backend.infra.models import Job
from backend.infra.tx import TransactionRunner

log = logging.getLogger(__name__)

DEFAULT_LEASE = timedelta(minutes=5)
_INSERT_JOB = insert(Job.__table__)
DEFAULT_MAX_ATTEMPTS = 8


def backoff(attempts: int, base_seconds: float = 5.0, cap_seconds: float = 3600.0) -> timedelta:
    """5 s, 10 s, 20 s … capped at an hour."""
    return timedelta(seconds=min(cap_seconds, base_seconds * 2 ** max(0, attempts - 1)))


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    name: str
    payload: Mapping[str, Any]
    attempts: int  # including this one


class PermanentJobError(Exception):
    """The job can never succeed (bad payload, row gone): fail it at once, no retries."""


class JobQueue(Protocol):
    def enqueue(self, name: str, payload: Mapping[str, Any], run_at: datetime | None = None,
                dedupe_key: str | None = None) -> None: ...

    def claim(self, worker_id: str, limit: int = 10) -> list[ClaimedJob]: ...

    def finish(self, job: ClaimedJob, worker_id: str) -> None: ...

    def fail(self, job: ClaimedJob, worker_id: str, error: str, *, permanent: bool = False) -> None: ...


def enqueue_in(session: Session, name: str, payload: Mapping[str, Any], run_at: datetime,
               dedupe_key: str | None = None, now: datetime | None = None, *, new: bool = False) -> None:
    """Adds a job inside the caller's transaction, so the job exists iff the data it works on
    was committed. With a dedupe_key an existing job is re-armed (queued again for `run_at`)
    rather than duplicated: "process this report once the photo window has closed"."""
    now = now or datetime.now(UTC)
    body = json.dumps(dict(payload), ensure_ascii=False, sort_keys=True)
    if dedupe_key is not None and not new:  # new=True: the key cannot exist yet (a fresh row's id)
        existing = session.scalar(select(Job).where(Job.dedupe_key == dedupe_key).with_for_update())
        if existing is not None:
            # A running worker's finish() matches on locked_by, so re-arming wins over it.
            existing.state, existing.run_at, existing.payload = "queued", run_at, body
            existing.locked_by, existing.locked_until, existing.attempts = None, None, 0
            existing.updated_at = now
            return
    session.connection().execute(_INSERT_JOB, {
        "name": name, "payload": body, "state": "queued", "run_at": run_at, "attempts": 0, "locked_until": None,
        "locked_by": None, "last_error": None, "dedupe_key": dedupe_key, "created_at": now, "updated_at": now})


def schedule_if_absent(sessions: sessionmaker[Session], name: str, dedupe_key: str, run_at: datetime,
                       payload: Mapping[str, Any] | None = None) -> bool:
    """A recurring job's first run: every worker calls this at start, the first one creates it,
    the rest (and restarts) leave the existing schedule alone. True when it was created."""
    try:
        with sessions() as session, session.begin():
            if session.scalar(select(Job.id).where(Job.dedupe_key == dedupe_key)) is not None:
                return False
            enqueue_in(session, name, payload or {}, run_at, dedupe_key, new=True)
            return True
    except IntegrityError:  # another worker created it at the same moment
        return False


class DbJobQueue:
    """JobQueue on the `jobs` table (SQLite or Postgres)."""

    def __init__(self, sessions: sessionmaker[Session], clock: Clock, *, lease: timedelta = DEFAULT_LEASE,
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> None:
        self._sessions = sessions
        self._clock = clock
        self.lease = lease
        self.max_attempts = max_attempts
        self._tx = TransactionRunner(sessions, clock)

    def _now(self) -> datetime:
        return self._clock().astimezone(UTC)

    def enqueue(self, name: str, payload: Mapping[str, Any], run_at: datetime | None = None,
                dedupe_key: str | None = None) -> None:
        # Two enqueuers racing on one dedupe key clash on insert: the runner's retry re-arms.
        self._tx.run(lambda unit: enqueue_in(unit.session, name, payload, run_at or unit.now, dedupe_key, unit.now),
                     attempts=3)

    def claim(self, worker_id: str, limit: int = 10) -> list[ClaimedJob]:
        now = self._now()
        with self._sessions() as session, session.begin():
            rows = session.scalars(
                select(Job)
                .where(or_(
                    (Job.state == "queued") & (Job.run_at <= now),
                    (Job.state == "running") & (Job.locked_until < now),  # its worker died
                ))
                .order_by(Job.run_at, Job.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            claimed = []
            for row in rows:
                row.state, row.locked_by, row.locked_until = "running", worker_id, now + self.lease
                row.attempts += 1
                row.updated_at = now
                claimed.append(ClaimedJob(row.id, row.name, json.loads(row.payload), row.attempts))
            return claimed

    def finish(self, job: ClaimedJob, worker_id: str) -> None:
        with self._sessions() as session, session.begin():
            session.execute(
                update(Job)
                .where(Job.id == job.id, Job.locked_by == worker_id, Job.state == "running")
                .values(state="done", locked_by=None, locked_until=None, updated_at=self._now())
            )

    def fail(self, job: ClaimedJob, worker_id: str, error: str, *, permanent: bool = False) -> None:
        now = self._now()
        dead = permanent or job.attempts >= self.max_attempts
        if dead:  # operators find it with `python -m assistant jobs dead` and replay it
            log.error("job %s #%d moved to the dead-letter list after %d attempt(s): %s",
                      job.name, job.id, job.attempts, error[:200])
        with self._sessions() as session, session.begin():
            session.execute(
                update(Job)
                .where(Job.id == job.id, Job.locked_by == worker_id, Job.state == "running")
                .values(state="failed" if dead else "queued", locked_by=None, locked_until=None,
                        run_at=now if dead else now + backoff(job.attempts), last_error=error[:2000],
                        updated_at=now)
            )


Handler = Callable[[Mapping[str, Any]], None]


class Worker:
    """Runs claimed jobs by name, plus periodic `tasks` (the SMS outbox drain) every tick."""

    def __init__(self, queue: JobQueue, handlers: Mapping[str, Handler],
                 tasks: tuple[Callable[[], int], ...] = (), *, worker_id: str | None = None,
                 batch: int = 10) -> None:
        self.queue = queue
        self.handlers = dict(handlers)
        self.tasks = tasks
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"
        self.batch = batch

    def run_once(self) -> int:
        """One tick; returns how many things were done (0 = idle)."""
        done = 0
        for job in self.queue.claim(self.worker_id, self.batch):
            done += 1
            handler = self.handlers.get(job.name)
            if handler is None:
                self.queue.fail(job, self.worker_id, f"no handler for {job.name}", permanent=True)
                continue
            try:
                handler(job.payload)
            except PermanentJobError as exc:
                log.error("job %s #%d failed for good: %s", job.name, job.id, exc)
                self.queue.fail(job, self.worker_id, str(exc), permanent=True)
            except Exception as exc:
                log.exception("job %s #%d failed (attempt %d)", job.name, job.id, job.attempts)
                self.queue.fail(job, self.worker_id, f"{type(exc).__name__}: {exc}")
            else:
                self.queue.finish(job, self.worker_id)
        for task in self.tasks:
            try:
                done += task()
            except Exception:
                log.exception("worker task failed")
        return done

    def run_until_idle(self, max_ticks: int = 100) -> int:
        total = 0
        for _ in range(max_ticks):
            n = self.run_once()
            total += n
            if n == 0:
                break
        return total

    def run_forever(self, stop: threading.Event, idle_sleep: float = 0.5) -> None:
        log.info("worker %s started (%s)", self.worker_id, ", ".join(sorted(self.handlers)))
        while not stop.is_set():
            try:
                busy = self.run_once()
            except Exception:  # the database may be restarting: keep the loop alive
                log.exception("worker tick failed")
                busy = 0
            if not busy:
                stop.wait(idle_sleep)

    def start_thread(self) -> tuple[threading.Thread, threading.Event]:
        stop = threading.Event()
        thread = threading.Thread(target=self.run_forever, args=(stop,), name="job-worker", daemon=True)
        thread.start()
        return thread, stop


@dataclass(frozen=True)
class JobView:
    """What an operator sees of a job (payloads hold row ids only, never personal data)."""
    id: int
    name: str
    state: str
    attempts: int
    run_at: datetime
    updated_at: datetime
    last_error: str | None
    payload: str


class JobAdmin:
    """The operator's side of the queue: counts, the dead-letter list (state `failed`: out of
    attempts or failed for good), replay, and pruning of finished rows."""

    def __init__(self, sessions: sessionmaker[Session], clock: Clock) -> None:
        self._sessions = sessions
        self._clock = clock

    def counts(self) -> dict[str, dict[str, int]]:
        """{name: {state: n}}."""
        with self._sessions() as session:
            rows = session.execute(select(Job.name, Job.state, func.count()).group_by(Job.name, Job.state)).all()
        out: dict[str, dict[str, int]] = {}
        for name, state, n in rows:
            out.setdefault(name, {})[state] = int(n)
        return out

    def list(self, state: str | None = "failed", name: str | None = None, limit: int = 50) -> list[JobView]:
        query = select(Job).order_by(Job.updated_at.desc(), Job.id.desc()).limit(limit)
        if state:
            query = query.where(Job.state == state)
        if name:
            query = query.where(Job.name == name)
        with self._sessions() as session:
            return [JobView(j.id, j.name, j.state, j.attempts, j.run_at, j.updated_at, j.last_error, j.payload)
                    for j in session.scalars(query)]

    def replay(self, ids: Sequence[int] = (), *, all_failed: bool = False, name: str | None = None) -> int:
        """Queues dead jobs again with fresh attempts (after the cause is fixed). Only `failed`
        rows move, so replaying twice, or a job that already succeeded, does nothing."""
        if not ids and not all_failed:
            return 0
        now = self._clock().astimezone(UTC)
        query = update(Job).where(Job.state == "failed")
        if ids:
            query = query.where(Job.id.in_(list(ids)))
        if name:
            query = query.where(Job.name == name)
        with self._sessions() as session, session.begin():
            result = session.execute(query.values(state="queued", attempts=0, run_at=now, locked_by=None,
                                                  locked_until=None, updated_at=now)
                                     .execution_options(synchronize_session=False))
            return int(result.rowcount or 0)

    def prune(self, older_than: timedelta) -> int:
        """Deletes `done` rows last touched before now − older_than (dead ones stay until replayed
        or looked at: they are the evidence)."""
        cutoff = self._clock().astimezone(UTC) - older_than
        with self._sessions() as session, session.begin():
            result = session.execute(delete(Job).where(Job.state == "done", Job.updated_at < cutoff)
                                     .execution_options(synchronize_session=False))
            return int(result.rowcount or 0)
