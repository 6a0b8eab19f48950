"""Alembic environment: one code path for SQLite and Postgres, engines made by backend.infra.db."""
from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, text
from sqlalchemy.pool import NullPool

from backend.infra.db import database_url, make_engine
from backend.infra.schema import metadata

config = context.config
target_metadata = metadata
# Any constant: workers starting together on Postgres run the upgrade one after the other.
MIGRATION_LOCK_KEY = 7_210_431_001


def _url() -> str:
    return database_url(config.attributes.get("url") or config.get_main_option("sqlalchemy.url"))


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite DDL is transactional too once backend.infra.db issues the BEGIN itself, so a failed
        # upgrade leaves the previous schema intact on both databases.
        transactional_ddl=True,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    # Schema changes may rewrite big tables: no statement/lock time-outs here (those bound webhooks).
    engine = make_engine(_url(), poolclass=NullPool, long_running=True)
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
