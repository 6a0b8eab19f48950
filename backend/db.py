"""Engines, sessions and schema upgrades for SQLite (one machine) and Postgres (a city)."""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

DEFAULT_URL = "sqlite:///var/assistant.db"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
ALEMBIC_INI = PROJECT_ROOT / "alembic.ini"
SQLITE_BUSY_TIMEOUT_MS = 15_000
_UPGRADE_LOCK = threading.Lock()


def database_url(url: str | None = None) -> str:
    """The explicit URL, else DATABASE_URL, else the local SQLite file; plain postgres URLs
    (as hosting panels print them) are pointed at the psycopg 3 driver."""
    url = url or os.environ.get("DATABASE_URL") or DEFAULT_URL
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


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
    finally:
        cur.close()


def _sqlite_on_begin(conn: Any) -> None:
    # BEGIN IMMEDIATE takes the write lock up front (waiting up to busy_timeout). A deferred
    # transaction that reads and then writes can instead fail at once with SQLITE_BUSY when
    # another process wrote in between; it also serialises audit-chain appends.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str | None = None, **kwargs: Any) -> Engine:
    url = database_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    kwargs.setdefault("pool_pre_ping", True)  # survive Postgres restarts / idle disconnects
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
