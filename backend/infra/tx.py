"""One way to run a transaction: a unit of work (session, its time, audit entries appended last,
hooks after commit) run by one runner that retries what a second try can fix — a unique clash
with a concurrent insert of the same key, a Postgres deadlock or serialisation failure — a
bounded number of times, with SQLite writers queued on a file lock
(WriteGate) so that a busy store answers "busy" inside Twilio's 15 s instead of sleeping."""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from backend.infra.audit_chain import append_audits

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

T = TypeVar("T")
RETRY_SQLSTATES = frozenset({"23505", "40001", "40P01"})  # unique clash, serialisation, deadlock


def retryable(exc: IntegrityError | OperationalError) -> bool:
    """Whether running the same work again can succeed. Other integrity errors (NOT NULL, a
    foreign key) are bugs and would fail the same way again."""
    sqlstate = getattr(exc.orig, "sqlstate", None)  # psycopg
    if sqlstate is not None:
        return sqlstate in RETRY_SQLSTATES
    # SQLite "database is locked" is not retried: each try has already waited the full busy
    # timeout, and a saturated store must answer "busy" inside Twilio's 15 s (tests/test_overload).
    return isinstance(exc, IntegrityError) and "UNIQUE constraint failed" in str(exc.orig)


class UnitOfWork:
    """One transaction's session and time, the audit entries to append at its end (audit last
    keeps the lock order data → audit head, see audit_chain.append_audit), and what to do once it has
    committed (an SMS handed to a notifier that is not transactional)."""

    def __init__(self, session: Session, now: datetime) -> None:
        self.session = session
        self.now = now
        self.audits: list[dict[str, Any]] = []
        self.after_commit: list[Callable[[], None]] = []

    def audit(self, actor: str, action: str, entity_id: int | None, *, entity_type: str = "ticket",
              **detail: Any) -> None:
        self.audits.append({"actor": actor[:64], "action": action, "entity_type": entity_type,
                            "entity_id": entity_id, "detail": detail})


class WriteGate:
    """Queues this process's SQLite writers on an OS file lock before BEGIN IMMEDIATE.

    SQLite's busy handler waits for the write lock by sleeping (1, 2, 5 … 100 ms), so two busy
    server processes spend most of a webhook's latency asleep; a waiter here retries the file lock
    within a millisecond of the holder letting go. Postgres needs none of this (row locks), so there it is a no-op.
    """

    timeout = 4.0  # seconds; then BEGIN IMMEDIATE may wait SQLite's busy_timeout (backend.infra.db)
    _shared: dict[str, WriteGate] = {}  # one gate (one fd, one thread lock) per database file
    _shared_lock = threading.Lock()

    def __init__(self, path: str | None) -> None:
        self._thread_lock = threading.Lock()  # flock does not exclude threads sharing the fd
        self._fd: int | None = None
        if path:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    @classmethod
    def for_sessions(cls, sessions: sessionmaker[Session]) -> WriteGate:
        bind = sessions.kw.get("bind")
        url = getattr(bind, "url", None)
        if url is None or url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:") \
                or fcntl is None:
            return cls(None)
        path = os.path.abspath(f"{url.database}.writelock")
        with cls._shared_lock:
            gate = cls._shared.get(path)
            if gate is None or not os.path.exists(path):  # a test's DATA_DIR may have been removed
                gate = cls._shared[path] = cls(path)
            return gate

    def __enter__(self) -> None:
        if self._fd is None:
            return
        deadline = time.monotonic() + self.timeout
        if not self._thread_lock.acquire(timeout=self.timeout):
            raise TimeoutError("database write lock busy")
        pause = 0.0001
        # Bounded, so a saturated store still lets the webhook answer "busy" inside Twilio's 15 s
        # (this wait + SQLite's busy_timeout stay under 13 s). Polling (0.1 → 1 ms; a poll is one
        # syscall) instead of a blocking flock, which cannot be given a deadline.
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    self._thread_lock.release()
                    raise TimeoutError("database write lock busy") from None
                time.sleep(pause)
                pause = min(pause * 1.5, 0.001)

    def __exit__(self, *exc: object) -> None:
        if self._fd is None:
            return
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._thread_lock.release()


class TransactionRunner:
    """Runs units of work on one store. `make_unit` lets a service use a UnitOfWork subclass
    carrying its own per-transaction scratch (the alert desk's contacts cache)."""

    def __init__(self, sessions: sessionmaker[Session] | Callable[[], Session], clock: Callable[[], datetime],
                 attempts: int = 5, make_unit: Callable[[Session, datetime], UnitOfWork] = UnitOfWork) -> None:
        self._sessions = sessions
        self._clock = clock
        self.attempts = attempts
        self._make_unit = make_unit
        self._gate = WriteGate.for_sessions(sessions) if isinstance(sessions, sessionmaker) else WriteGate(None)

    def now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("clock must return a timezone-aware datetime")
        return now.astimezone(UTC)

    def run(self, work: Callable[[Any], T], attempts: int | None = None) -> T:
        attempts = attempts or self.attempts
        for attempt in range(attempts):
            try:
                with self._gate, self._sessions() as session, session.begin():
                    unit = self._make_unit(session, self.now())
                    result = work(unit)
                    if unit.audits:
                        append_audits(session, unit.now, unit.audits)
            except (IntegrityError, OperationalError) as exc:
                if not retryable(exc) or attempt + 1 == attempts:
                    raise
                time.sleep(min(0.005 * 2 ** attempt, 0.1))  # bounded: five tries stay well under 1 s
                continue
            for hook in unit.after_commit:
                hook()
            return result
        raise AssertionError("unreachable")
