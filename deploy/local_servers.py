"""The private servers of a local cluster (deploy/local_cluster.py), from Debian packages: a
throw-away PostgreSQL (initdb, own port and socket directory, run as the `postgres` user when we
are root) and a redis-server (own port, append-only file so a restart keeps conversations), each
started, stopped like a crash or a clean shutdown, and started again on the same port and data;
and the process helpers the cluster uses (children of a pid, its state, signal and wait).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Literal

PG_USER = "app"
StopMode = Literal["smart", "fast", "immediate"]


class ClusterError(RuntimeError):
    """A component did not start or stop; the message carries the end of its log."""


class ServerMissing(ClusterError):
    """A server binary (redis-server, PostgreSQL) is not installed here."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def postgres_bin() -> Path | None:
    """The PostgreSQL server binaries: $PG_BIN, the newest /usr/lib/postgresql/*/bin, or PATH."""
    candidates = [os.environ.get("PG_BIN", "")]
    candidates += sorted((str(p) for p in Path("/usr/lib/postgresql").glob("*/bin")), reverse=True)
    if initdb := shutil.which("initdb"):
        candidates.append(str(Path(initdb).parent))
    for c in filter(None, candidates):
        if (Path(c) / "initdb").exists() and (Path(c) / "postgres").exists():
            return Path(c)
    return None


def missing_servers(database: str = "postgres", redis: bool = True) -> list[str]:
    """What this machine lacks for such a cluster (empty: it can run)."""
    missing = []
    if database == "postgres":
        if postgres_bin() is None:
            missing.append("PostgreSQL server binaries (apt-get install postgresql)")
        elif os.geteuid() == 0 and not _user_exists("postgres"):
            missing.append("a `postgres` user to run the server as (we are root)")
    if redis and not shutil.which("redis-server"):
        missing.append("redis-server (apt-get install redis-server)")
    return missing


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def signal_and_wait(proc: subprocess.Popen[bytes], sig: int, timeout: float, *, group: bool = False) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL) if group else proc.kill()
        proc.wait(10)
    except ProcessLookupError:
        proc.wait(10)


# --- processes ------------------------------------------------------------------------------
def children(pid: int) -> list[int]:
    """Live child processes of pid (zombies excluded), from /proc."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return sorted(out)


def process_state(pid: int) -> str:
    """R running, S sleeping, Z zombie … ('' when gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


OpenLog = Callable[[str], IO[bytes]]  # a log file by name, opened for appending (restarts add to it)


class PrivatePostgres:
    """Throw-away data: fsync is off (safe against killed processes, which is what the tests do,
    not against a power cut) and its data directory is deleted by `remove()`."""

    def __init__(self, workdir: Path, logs_dir: Path, open_log: OpenLog) -> None:
        self.workdir, self.logs_dir, self._open_log = workdir, logs_dir, open_log
        self.port = 0
        self._dir: Path | None = None  # under /tmp, owned by the postgres user
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{PG_USER}@127.0.0.1:{self.port}/postgres"

    @property
    def running(self) -> bool:
        return self._proc is not None

    @staticmethod
    def _as_pg_user() -> dict[str, Any]:
        # The server refuses to run as root. Popen(user=…) keeps the postmaster our direct child
        # (unlike `su -c`), so signals reach it and its pid is Popen.pid.
        if os.geteuid() != 0:
            return {}
        return {"user": "postgres", "group": "postgres", "extra_groups": []}

    def create(self) -> None:
        """initdb into a new directory, then start."""
        bindir = postgres_bin()
        assert bindir is not None
        # Its own directory under /tmp: the work directory may sit below a 0700 directory
        # (pytest's tmp_path) that the postgres user cannot enter.
        self._dir = Path(tempfile.mkdtemp(prefix="cluster-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self._dir, user="postgres", group="postgres")
        link = self.workdir / "postgres"
        if link.is_symlink():
            link.unlink()
        link.symlink_to(self._dir)
        self.port = free_port()
        result = subprocess.run(
            [str(bindir / "initdb"), "-D", str(self._dir / "data"), "-A", "trust", "-U", PG_USER,
             "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"],
            cwd=self._dir, capture_output=True, timeout=120, check=False, **self._as_pg_user())
        if result.returncode != 0:
            raise ClusterError(f"initdb failed:\n{result.stdout.decode()}{result.stderr.decode()}")
        self.start()

    def start(self) -> None:
        """Starts the postmaster on the port and data made by `create`."""
        bindir = postgres_bin()
        assert bindir is not None and self._dir is not None
        self._proc = subprocess.Popen(
            [str(bindir / "postgres"), "-D", str(self._dir / "data"), "-p", str(self.port),
             "-k", str(self._dir), "-c", "listen_addresses=127.0.0.1",
             # Throw-away data: no fsync (a killed process loses nothing, only a power cut would).
             # synchronous_commit stays on, so "committed" still means "in the WAL" across a crash
             # restart (stop("immediate")).
             "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "max_connections=200"],
            cwd=self._dir, stdout=self._open_log("postgres.log"), stderr=subprocess.STDOUT,
            **self._as_pg_user())
        self._wait(60)

    def _wait(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(host="127.0.0.1", port=self.port, user=PG_USER, dbname="postgres",
                                     connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if (self._proc is not None and self._proc.poll() is not None) or time.monotonic() > deadline:
                    raise ClusterError("postgres did not start:\n" + tail(self.logs_dir / "postgres.log")) from None
                time.sleep(0.1)

    def stop(self, mode: StopMode = "fast") -> None:
        """fast disconnects clients cleanly; immediate is like a crash (WAL recovery at the next
        start); smart waits for clients to leave."""
        if self._proc is None:
            raise ClusterError("this cluster has no running PostgreSQL")
        sig = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}[mode]
        signal_and_wait(self._proc, sig, 60)
        self._proc = None

    def remove(self) -> None:
        """Stops it if it runs and deletes its data."""
        if self._proc is not None:
            signal_and_wait(self._proc, signal.SIGINT, 30)  # fast shutdown
            self._proc = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


class PrivateRedis:
    def __init__(self, workdir: Path, logs_dir: Path, open_log: OpenLog) -> None:
        self.workdir, self.logs_dir, self._open_log = workdir, logs_dir, open_log
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None

    def start(self) -> None:
        """Starts redis-server (on a new port the first time, then on the same port and files)."""
        server = shutil.which("redis-server")
        assert server is not None
        self.port = self.port or free_port()
        self._proc = subprocess.Popen(
            [server, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir / "redis"),
             # Persistence: the append-only file, fsynced every second (Debian's production
             # choice); a clean restart (SIGTERM) writes everything, so conversations survive.
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--daemonize", "no"],
            stdout=self._open_log("redis.log"), stderr=subprocess.STDOUT)
        import redis

        deadline = time.monotonic() + 30
        while True:
            try:
                if redis.Redis(port=self.port, socket_timeout=1).ping():
                    return
            except redis.RedisError:  # refused, or still loading the append-only file
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    raise ClusterError("redis-server did not start:\n" + tail(self.logs_dir / "redis.log")) from None
                time.sleep(0.05)

    def stop(self, *, hard: bool = False) -> None:
        """SIGTERM (flushes the append-only file) or, hard, SIGKILL (may lose the last second)."""
        if self._proc is None:
            raise ClusterError("this cluster has no running Redis")
        signal_and_wait(self._proc, signal.SIGKILL if hard else signal.SIGTERM, 30)
        self._proc = None

    def stop_quietly(self) -> None:
        if self._proc is not None:
            signal_and_wait(self._proc, signal.SIGTERM, 15)
            self._proc = None
