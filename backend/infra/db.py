"""Engines, sessions and schema upgrades for SQLite (one machine) and Postgres (a city)."""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from backend.infra.private_files import create_private_file, ensure_private_dir, tighten

DEFAULT_URL = "sqlite:///var/assistant.db"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
ALEMBIC_INI = PROJECT_ROOT / "alembic.ini"
# Every wait on the database is bounded well inside Twilio's 15 s webhook limit, so a saturated or
# restarting store turns into a polite "busy, try again" answer instead of a timeout or a 500.
SQLITE_BUSY_TIMEOUT_MS = 8_000
PG_CONNECT_TIMEOUT_S = 3
POOL_TIMEOUT_S = 5
_UPGRADE_LOCK = threading.Lock()
log = logging.getLogger(__name__)


def database_url(url: str | None = None) -> str:
    """The explicit URL, else DATABASE_URL, else the local SQLite file; plain postgres URLs
    (as hosting panels print them) are pointed at the psycopg 3 driver."""
    url = url or os.environ.get("DATABASE_URL") or DEFAULT_URL
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def secure_sqlite_file(database: str) -> None:
    """The store file is personal data: created 0600 before SQLite opens it (SQLite gives the
    -wal and -shm files the database file's mode), its folder 0700 when we create it, and an
    older install's readable files tightened."""
    path = Path(database)
    ensure_private_dir(path.parent)
    loose = [p.name for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal"))
             if tighten(p)]
    create_private_file(path)
    if loose:
        log.warning("database files %s were readable by other users; now owner-only (0600)", ", ".join(loose))


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Driver-level autocommit, so the "begin" hook below decides how transactions start.
    dbapi_connection.isolation_level = None
    cur = dbapi_connection.cursor()
    try:
        # First, so every later step (and each BEGIN) waits for other writers.
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
        cur.execute("PRAGMA synchronous=NORMAL")  # durable enough with WAL, much faster
        cur.execute("PRAGMA foreign_keys=ON")
        # Deleted rows (purged cases, replaced keys) are zeroed on disk, not left in free pages;
        # Debian's SQLite does this by default, other builds do not.
        cur.execute("PRAGMA secure_delete=ON")
    finally:
        cur.close()


def _sqlite_on_begin(conn: Any) -> None:
    # BEGIN IMMEDIATE takes the write lock up front (waiting up to busy_timeout). A deferred
    # transaction that reads and then writes can instead fail at once with SQLITE_BUSY when
    # another process wrote in between; it also serialises audit-chain appends.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str | None = None, *, long_running: bool = False, **kwargs: Any) -> Engine:
    url = database_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            secure_sqlite_file(database)
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    kwargs.setdefault("pool_pre_ping", True)  # survive Postgres restarts / idle disconnects
    if "poolclass" not in kwargs:  # NullPool (migrations, tests) takes no pool settings
        kwargs.setdefault("pool_timeout", POOL_TIMEOUT_S)
    lock_ms = 0 if long_running else int(os.environ.get("DB_LOCK_TIMEOUT_MS", 5000))
    statement_ms = 0 if long_running else int(os.environ.get("DB_STATEMENT_TIMEOUT_MS", 12000))
    connect_args = {"connect_timeout": PG_CONNECT_TIMEOUT_S,
                    "options": f"-c lock_timeout={lock_ms} -c statement_timeout={statement_ms}"}
    kwargs["connect_args"] = {**connect_args, **kwargs.get("connect_args", {})}
    return create_engine(url, **kwargs)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    # Loaded objects stay usable after commit (services return values built from them).
    return sessionmaker(engine, expire_on_commit=False)


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Runs the Alembic migrations to `revision`. Safe to call at every server start and from
    several workers at once (the migration environment takes a lock)."""
    from alembic import command
    from alembic.config import Config

    config = Config(str(ALEMBIC_INI))
    config.set_main_option("script_location", str(PROJECT_ROOT / "backend" / "migrations"))
    config.attributes["url"] = database_url(url)
    with _UPGRADE_LOCK:  # Alembic keeps its running context in module globals
        command.upgrade(config, revision)
