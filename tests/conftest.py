"""Shared fixtures: throw-away Redis and Postgres servers, and `db_url` over SQLite + Postgres.

The servers are real (Debian's redis-server and PostgreSQL), started once per test session on
free loopback ports and stopped at the end. Without the binaries the tests that need them are
skipped, unless REQUIRE_SERVERS=1 (CI), where a missing server is a failure.
"""
from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Plain `pytest` (not `python -m pytest`) does not put the repo root on sys.path.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

REQUIRE_SERVERS = os.environ.get("REQUIRE_SERVERS") == "1"

# Core fixtures (trained NLU, fixed clock, runtime on SQLite, conversation driver).
# SMS fixtures: fake Twilio API + media host on loopback, signed webhooks, the ticket loop.
pytest_plugins = ["core_fixtures", "sms_fixtures"]


def _unavailable(reason: str) -> None:
    if REQUIRE_SERVERS:
        pytest.fail(f"{reason} (REQUIRE_SERVERS=1)", pytrace=False)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- Redis -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RedisServer:
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if not server or not cli:
        _unavailable("redis-server/redis-cli not installed (apt-get install redis-server)")
    import redis

    workdir = Path(tempfile.mkdtemp(prefix="test-redis-"))
    port = _free_port()
    log = (workdir / "redis.log").open("wb")
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                redis.Redis(port=port, socket_timeout=1).ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    text = (workdir / "redis.log").read_text(errors="replace")
                    pytest.fail(f"redis-server did not start:\n{text}", pytrace=False)
                time.sleep(0.05)
        yield RedisServer(port)
    finally:
        subprocess.run([cli, "-p", str(port), "shutdown", "nosave"],
                       capture_output=True, timeout=15, check=False)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


# --- Postgres ----------------------------------------------------------------------------------
def _postgres_bin() -> Path | None:
    candidates = [os.environ.get("PG_BIN", "")]
    candidates += sorted((str(p) for p in Path("/usr/lib/postgresql").glob("*/bin")), reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(initdb).parent))
    for c in filter(None, candidates):
        if (Path(c) / "initdb").exists() and (Path(c) / "pg_ctl").exists():
            return Path(c)
    return None


def _as_postgres_user(cmd: list[str]) -> list[str]:
    # The server refuses to run as root; as a normal user it runs as that user.
    if os.geteuid() != 0:
        return cmd
    return ["su", "postgres", "-s", "/bin/bash", "-c", shlex.join(cmd)]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a fresh Postgres cluster (user `app`, trust auth) for this test session."""
    bindir = _postgres_bin()
    if bindir is None:
        _unavailable("PostgreSQL server binaries not found (apt-get install postgresql)")
    if os.geteuid() == 0 and shutil.which("su") is None:
        _unavailable("running as root without `su` to switch to the postgres user")
    workdir = Path(tempfile.mkdtemp(prefix="test-pg-"))
    if os.geteuid() == 0:
        shutil.chown(workdir, user="postgres")
    data, port = workdir / "data", _free_port()
    pg_ctl = str(bindir / "pg_ctl")
    started = False

    def run(cmd: list[str]) -> None:
        res = subprocess.run(_as_postgres_user(cmd), capture_output=True, text=True, timeout=120,
                             check=False)
        if res.returncode != 0:
            log = workdir / "log"
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            pytest.fail(f"{shlex.join(cmd)} failed:\n{res.stdout}{res.stderr}{tail}",
                        pytrace=False)

    try:
        run([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "app",
             "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"])
        # Durability off: a throw-away cluster, and much faster on a small CI machine.
        options = (f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off")
        run([pg_ctl, "-D", str(data), "-o", options, "-l", str(workdir / "log"), "-w", "start"])
        started = True
        yield f"postgresql+psycopg://app@127.0.0.1:{port}/postgres"
    finally:
        if started:
            subprocess.run(_as_postgres_user([pg_ctl, "-D", str(data), "-m", "immediate", "-w",
                                              "stop"]), capture_output=True, timeout=60,
                           check=False)
        shutil.rmtree(workdir, ignore_errors=True)


def _libpq_url(sqlalchemy_url: str) -> str:
    return sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://", 1)


def schema_drift(conn, tables: set[str]) -> list:
    """compare_metadata's differences between the migrated database and the models that touch
    `tables` (an empty list: the migrations create those tables exactly as modelled)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from backend.infra.models import Base

    ctx = MigrationContext.configure(conn, opts={"compare_type": True})
    return [d for d in compare_metadata(ctx, Base.metadata) if tables & _tables_in(d)]


def _tables_in(diff: object) -> set[str]:
    """Table names mentioned anywhere in one compare_metadata diff entry (nested tuples/lists)."""
    found: set[str] = set()
    stack = [diff]
    while stack:
        item = stack.pop()
        if isinstance(item, tuple | list):
            stack.extend(item)
        elif isinstance(item, str):
            found.add(item)
        else:
            table = getattr(item, "table", None)
            name = getattr(table, "name", None) or getattr(item, "name", None)
            if isinstance(name, str):
                found.add(name)
    return found


def sqlite_files_in_one_folder(folder: str):
    """Overrides `db_url` for a module so that its SQLite files land in one folder, which the
    module's final test scans for personal data in clear. Use: `scan_dir, db_url = sqlite_files_in_one_folder("x")`."""

    @pytest.fixture(scope="module", name="scan_dir")
    def _scan_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
        return tmp_path_factory.mktemp(folder)

    @pytest.fixture(name="db_url")
    def _db_url(db_url: str, scan_dir: Path) -> str:
        if db_url.startswith("sqlite"):
            return f"sqlite:///{scan_dir / (uuid.uuid4().hex + '.db')}"
        return db_url

    return _scan_dir, _db_url


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a temp SQLite file, or a fresh database in the session's cluster."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    base = request.getfixturevalue("postgres_url")
    import psycopg

    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(_libpq_url(base), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield base.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(_libpq_url(base), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
