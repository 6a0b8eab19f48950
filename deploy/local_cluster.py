"""A production-shaped cluster on loopback, from Debian packages, for fault tests and trials.

    python -m deploy.local_cluster up [--web-workers 2] [--job-workers 1] [--database postgres|sqlite]

starts, in a work directory: a private PostgreSQL (initdb, own port, run as the `postgres` user
when we are root) or a SQLite file; a private redis-server (own port, append-only file, so a
restart keeps conversations); ONE gunicorn master with `-w N` for `runtime.wsgi:app`, configured
by deploy/gunicorn.conf.py exactly as the systemd unit runs it; M `python -m assistant worker`
processes; and, if asked, the loopback fakes of Twilio's REST API and media host from the tests
(tests/fixtures/twilio_world.py), so every outbound SMS is counted.

Why one gunicorn master and not N lone processes: that is the production shape
(deploy/systemd/assistant-web.service), and it makes "kill -9 a web worker" mean what it means
in production: the request on that worker is cut, the other workers keep answering on the same
socket, and the master forks a replacement. `kill_web_worker()` does exactly that.

As a library (tests/test_faults.py):

    with LocalCluster(tmp_path) as cluster:
        cluster.wait_ready(60)
        cluster.kill_web_worker(); cluster.restart_redis(); cluster.restart_postgres()
        cluster.twilio_api.sent  # what the workers sent through the fake Twilio API

The private servers are in deploy/local_servers.py; the Postgres one is throw-away (fsync off,
its data directory deleted by stop()).
"""
from __future__ import annotations

import argparse
import atexit
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal

from deploy.local_servers import (  # noqa: F401  (names tests and benches import from here)
    ClusterError,
    PrivatePostgres,
    PrivateRedis,
    ServerMissing,
    StopMode,
    free_port,
    missing_servers,
    postgres_bin,
)
from deploy.local_servers import children as _children
from deploy.local_servers import process_state as _state
from deploy.local_servers import signal_and_wait as _signal_and_wait
from deploy.local_servers import tail as _tail

ROOT = Path(__file__).resolve().parent.parent
GUNICORN_CONF = ROOT / "deploy" / "gunicorn.conf.py"
_READY_LINE = re.compile(r"worker ready \(pid (\d+)\)")


class LocalCluster:
    """See the module docstring. Not thread-safe: drive it from one thread."""

    def __init__(self, workdir: Path, *, web_workers: int = 2, job_workers: int = 1,
                 database: Literal["postgres", "sqlite"] = "postgres", redis: bool = True,
                 fake_twilio: bool = True, extra_env: Mapping[str, str] | None = None) -> None:
        if database not in ("postgres", "sqlite"):
            raise ValueError("database must be 'postgres' or 'sqlite'")
        self.workdir = Path(workdir).resolve()
        self.web_workers = web_workers
        self.job_workers = job_workers
        self.database = database
        self.use_redis = redis
        self.fake_twilio = fake_twilio
        self.extra_env = dict(extra_env or {})
        self.logs_dir = self.workdir / "logs"
        self.env: dict[str, str] = {}
        self.twilio_api: Any = None  # fixtures.twilio_world.FakeTwilioApi when fake_twilio
        self.media_server: Any = None  # fixtures.twilio_world.MediaServer when fake_twilio
        self.web_port = 0
        self.postgres = PrivatePostgres(self.workdir, self.logs_dir, self._log)
        self.redis = PrivateRedis(self.workdir, self.logs_dir, self._log)
        self._web: subprocess.Popen[bytes] | None = None
        self._jobs: dict[int, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []
        self._ready_path = "/readyz"
        self._web_log_offset = 0
        self._ready_pids: set[int] = set()
        self.last_outage: tuple[float, float] | None = None  # (stopped, answering again) of the last restart
        self._started = False

    # --- addresses --------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    @property
    def database_url(self) -> str:
        if self.database == "sqlite":
            return f"sqlite:///{self.workdir / 'data' / 'assistant.db'}"
        return self.postgres.url

    @property
    def redis_url(self) -> str | None:
        return self.redis.url if self.use_redis else None

    # --- lifecycle --------------------------------------------------------------------------------
    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> LocalCluster:
        missing = missing_servers(self.database, self.use_redis)
        if missing:
            raise ServerMissing("cannot start a local cluster: missing " + "; ".join(missing))
        self._started = True
        atexit.register(self.stop)  # an interrupted test run must not leave servers behind
        try:
            for sub in ("logs", "data", "redis", "prometheus"):
                (self.workdir / sub).mkdir(parents=True, exist_ok=True)
            for stale in (self.workdir / "prometheus").glob("*.db"):
                stale.unlink()
            if self.fake_twilio:
                self._start_fakes()
            if self.database == "postgres":
                self.postgres.create()
            if self.use_redis:
                self.redis.start()
            self.web_port = free_port()
            self.env = self._make_env()
            self._prepare()
            self._start_web()
            for i in range(self.job_workers):
                self.start_job_worker(i, wait=False)
            self.wait_ready(120, all_web_workers=True)
            for i in range(self.job_workers):
                self._wait_job_worker(i, 60)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stops everything that runs (idempotent); the work directory and its logs stay."""
        if not self._started:
            return
        self._started = False
        for i in list(self._jobs):
            _signal_and_wait(self._jobs.pop(i), signal.SIGTERM, 15)
        if self._web is not None:
            _signal_and_wait(self._web, signal.SIGTERM, 30, group=True)
            self._web = None
        self.redis.stop_quietly()
        self.postgres.remove()
        for fake in (self.twilio_api, self.media_server):
            if fake is not None:
                fake.close()
        for log in self._logs:
            log.close()
        self._logs.clear()
        atexit.unregister(self.stop)

    # --- pieces -----------------------------------------------------------------------------------
    def _log(self, name: str) -> IO[bytes]:
        handle = (self.logs_dir / name).open("ab")  # append: restarts add to the same file
        self._logs.append(handle)
        return handle

    def _start_fakes(self) -> None:
        # The doubles live with the tests; as threads of this process their records are readable here.
        tests = str(ROOT / "tests")
        if tests not in sys.path:
            sys.path.append(tests)
        from fixtures.twilio_world import start_media_server, start_twilio_api

        self.twilio_api = start_twilio_api()
        self.media_server = start_media_server()

    def _make_env(self) -> dict[str, str]:
        if self.fake_twilio:
            from fixtures.twilio_world import ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER
        else:  # nothing can reach loopback from Twilio anyway; outbound SMS stay in the outbox
            ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER = "AC" + secrets.token_hex(16), secrets.token_hex(16), ""  # noqa: N806
        env = {
            "DATABASE_URL": self.database_url,
            "DATA_DIR": str(self.workdir / "data"),
            "MODEL_DIR": str(ROOT / "models"),  # the NLU model cache `serve` uses (trained once)
            # Real random keys from the environment, as production takes them from a secret store.
            "SM4_KEYS": f"1:{secrets.token_hex(16)}",
            "SM4_ACTIVE_KEY": "1",
            "INDEX_KEY": secrets.token_hex(32),
            "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
            "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
            "PUBLIC_BASE_URL": self.base_url,  # what the webhooks' signatures are computed over
            "PROMETHEUS_MULTIPROC_DIR": str(self.workdir / "prometheus"),
            "LOG_FORMAT": "json",
            "RUN_WORKER_THREAD": "0",  # jobs run in the separate worker processes
            "GUNICORN_BIND": f"127.0.0.1:{self.web_port}",
            "WEB_CONCURRENCY": str(self.web_workers),
            # `gunicornc -s …` reaches this master (a Unix socket path must stay short).
            "GUNICORN_CONTROL_SOCKET": ctl if len(ctl := str(self.workdir / "gunicorn.ctl")) < 100 else "",
            "PYTHONUNBUFFERED": "1",
        }
        if FROM_NUMBER:
            env["TWILIO_FROM_NUMBER"] = FROM_NUMBER
        if self.redis_url:
            env["REDIS_URL"] = self.redis_url
        if self.fake_twilio:
            env["TWILIO_API_BASE_URL"] = self.twilio_api.base_url
            env["MEDIA_ALLOWED_HOSTS"] = self.media_server.host
        env.update(self.extra_env)
        return env

    def _process_env(self, *, web: bool) -> dict[str, str]:
        env = {**os.environ, **self.env}
        if not web:
            # As in deploy/systemd: only the web tier exports metrics; a job worker writing into
            # the same directory would have its files wiped by gunicorn's on_starting.
            env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        return env

    def _prepare(self) -> None:
        """The unit's ExecStartPre: migrations once, and the NLU model cached before N workers
        would each train it at the same time."""
        log = self._log("prepare.log")
        result = subprocess.run([sys.executable, "-m", "deploy.local_cluster", "prepare"], cwd=ROOT,
                                env=self._process_env(web=False), stdout=log, stderr=subprocess.STDOUT,
                                timeout=600, check=False)
        if result.returncode != 0:
            raise ClusterError("prepare (migrations, NLU model) failed:\n" + _tail(self.logs_dir / "prepare.log"))

    def _start_web(self) -> None:
        log = self.logs_dir / "web.log"
        self._web_log_offset = log.stat().st_size if log.exists() else 0  # a reused workdir's old lines
        self._web = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), "runtime.wsgi:app"],
            cwd=ROOT, env=self._process_env(web=True), stdout=self._log("web.log"), stderr=subprocess.STDOUT,
            start_new_session=True)  # its own process group: stop() signals master and workers

    # --- web workers ------------------------------------------------------------------------------
    @property
    def web_master_pid(self) -> int | None:
        return self._web.pid if self._web is not None and self._web.poll() is None else None

    def web_worker_pids(self) -> list[int]:
        master = self.web_master_pid
        return _children(master) if master else []

    def ready_web_worker_pids(self) -> list[int]:
        """Workers alive that have finished loading the app (gunicorn.conf.py's post_worker_init)."""
        try:
            with (self.logs_dir / "web.log").open("rb") as log:  # only what was added since last time
                log.seek(self._web_log_offset)
                new = log.read()
        except OSError:
            new = b""
        cut = new.rfind(b"\n") + 1  # a line still being written is read next time
        self._web_log_offset += cut
        self._ready_pids.update(int(p) for p in _READY_LINE.findall(new[:cut].decode("utf-8", "replace")))
        return [p for p in self.web_worker_pids() if p in self._ready_pids]

    def kill_web_worker(self, pid: int | None = None, *, busy: bool = False) -> int:
        """SIGKILL one gunicorn worker (a serving one unless pid is given); returns its pid. The
        master forks a replacement; wait_ready(all_web_workers=True) waits for it to serve.
        busy=True prefers, for up to 2 s, a worker on the CPU (state R): one answering a request
        rather than idle in accept(), so the kill cuts a request as a crash would."""
        if pid is None:
            candidates = self.ready_web_worker_pids() or self.web_worker_pids()
            if not candidates:
                raise ClusterError("no gunicorn worker to kill")
            pid = candidates[0]
            deadline = time.monotonic() + (2.0 if busy else 0.0)
            while busy and time.monotonic() < deadline:
                running = [p for p in candidates if _state(p) == "R"]
                if running:
                    pid = running[0]
                    break
                time.sleep(0.002)
        os.kill(pid, signal.SIGKILL)
        # Returns once it is gone, so that wait_ready(all_web_workers=True) cannot count it.
        deadline = time.monotonic() + 10
        while pid in self.web_worker_pids() and time.monotonic() < deadline:
            time.sleep(0.01)
        return pid

    # --- job workers ------------------------------------------------------------------------------
    def start_job_worker(self, i: int = 0, *, wait: bool = True, timeout: float = 60) -> int:
        """Starts `python -m assistant worker` number i (again); returns its pid."""
        old = self._jobs.get(i)
        if old is not None and old.poll() is None:
            raise ClusterError(f"job worker {i} is running (pid {old.pid})")
        self._jobs[i] = subprocess.Popen([sys.executable, "-m", "assistant", "worker"], cwd=ROOT,
                                         env=self._process_env(web=False), stdout=self._log(f"worker-{i}.log"),
                                         stderr=subprocess.STDOUT)
        if wait:
            self._wait_job_worker(i, timeout)
        return self._jobs[i].pid

    def _wait_job_worker(self, i: int, timeout: float) -> None:
        proc = self._jobs[i]
        started = re.compile(rf"worker \S*:{proc.pid}:\S* started")
        path = self.logs_dir / f"worker-{i}.log"
        deadline = time.monotonic() + timeout
        while not started.search(_tail(path, 10**6)):
            if proc.poll() is not None:
                raise ClusterError(f"job worker {i} exited ({proc.returncode}):\n" + _tail(path))
            if time.monotonic() > deadline:
                raise ClusterError(f"job worker {i} did not report it started:\n" + _tail(path))
            time.sleep(0.1)

    def job_worker_pid(self, i: int = 0) -> int | None:
        proc = self._jobs.get(i)
        return proc.pid if proc is not None and proc.poll() is None else None

    def job_worker_index(self, pid: int) -> int | None:
        return next((i for i, p in self._jobs.items() if p.pid == pid and p.poll() is None), None)

    def kill_job_worker(self, i: int = 0) -> int:
        """SIGKILL job worker i (mid-job or not); returns its pid. start_job_worker(i) restarts it."""
        proc = self._jobs.get(i)
        if proc is None or proc.poll() is not None:
            raise ClusterError(f"job worker {i} is not running")
        proc.kill()
        proc.wait(10)
        return proc.pid

    def stop_job_worker(self, i: int = 0) -> None:
        """The graceful stop systemd does (SIGTERM: the current tick finishes)."""
        proc = self._jobs.pop(i, None)
        if proc is not None:
            _signal_and_wait(proc, signal.SIGTERM, 30)

    # --- servers ----------------------------------------------------------------------------------
    def stop_redis(self, *, hard: bool = False) -> None:
        """SIGTERM (flushes the append-only file) or, hard, SIGKILL (may lose the last second)."""
        self.redis.stop(hard=hard)

    def start_redis(self) -> None:
        """Starts redis-server again on the same port and files."""
        if not self.use_redis or self.redis.running:
            raise ClusterError("this cluster has no Redis, or it is running")
        self.redis.start()

    def restart_redis(self, *, downtime: float = 0.0, hard: bool = False) -> float:
        """stop_redis, `downtime` seconds, start_redis. Returns how long it was down;
        `last_outage` holds when (time.monotonic())."""
        return self._outage(lambda: self.stop_redis(hard=hard), self.start_redis, downtime)

    def stop_postgres(self, mode: StopMode = "fast") -> None:
        """Stops the postmaster: fast disconnects clients cleanly; immediate is like a crash (WAL
        recovery at the next start)."""
        self.postgres.stop(mode)

    def start_postgres(self) -> None:
        """Starts PostgreSQL again on the same port and data."""
        if self.database != "postgres" or self.postgres.running:
            raise ClusterError("this cluster has no PostgreSQL, or it is running")
        self.postgres.start()

    def restart_postgres(self, *, downtime: float = 0.0, mode: StopMode = "fast") -> float:
        """stop_postgres(mode), `downtime` seconds, start_postgres. Returns how long it was down;
        `last_outage` holds when (time.monotonic())."""
        return self._outage(lambda: self.stop_postgres(mode), self.start_postgres, downtime)

    def _outage(self, stop: Callable[[], None], start: Callable[[], None], downtime: float) -> float:
        stop()
        down_at = time.monotonic()
        time.sleep(downtime)
        start()
        self.last_outage = (down_at, time.monotonic())
        return self.last_outage[1] - down_at

    def restart_web(self, timeout: float = 120) -> None:
        """Stops the gunicorn master (if it still runs) and starts it again, as systemd's
        Restart=always does after the master died."""
        if self._web is not None:
            _signal_and_wait(self._web, signal.SIGTERM, 30, group=True)
        self._start_web()
        self.wait_ready(timeout, all_web_workers=True)

    # --- readiness --------------------------------------------------------------------------------
    def probe(self, timeout: float = 2.0) -> int | None:
        """Status of GET /readyz (or /healthz where /readyz does not exist); None: no answer."""
        for _ in range(2):
            try:
                with urllib.request.urlopen(self.base_url + self._ready_path, timeout=timeout) as response:
                    return int(response.status)
            except urllib.error.HTTPError as exc:
                if exc.code == 404 and self._ready_path == "/readyz":
                    self._ready_path = "/healthz"  # an app without the readiness probe
                    continue
                return int(exc.code)
            except (OSError, ValueError):
                return None
        return None

    def wait_ready(self, timeout: float = 60, *, all_web_workers: bool = False) -> float:
        """Polls /readyz (503 while the database or Redis is down) until 200; with
        all_web_workers, also until the master runs N workers that finished loading the app.
        Returns the seconds it took."""
        started = time.monotonic()
        deadline = started + timeout
        while True:
            if self._web is None or self._web.poll() is not None:
                raise ClusterError("gunicorn master is not running:\n" + _tail(self.logs_dir / "web.log"))
            ok = self.probe() == 200
            if ok and all_web_workers:
                ok = len(self.ready_web_worker_pids()) >= self.web_workers
            if ok:
                return time.monotonic() - started
            if time.monotonic() > deadline:
                raise ClusterError(f"cluster not ready after {timeout:.0f} s (last {self._ready_path} "
                                   f"status {self.probe()}):\n" + _tail(self.logs_dir / "web.log"))
            time.sleep(0.1)


# --- command line -----------------------------------------------------------------------------------
def _prepare_here() -> int:
    """Runs inside the cluster's environment: migrations to head, NLU model loaded or trained."""
    from assistant.config import load_settings
    from backend.infra import db
    from runtime.container import load_nlu

    settings = load_settings()
    db.upgrade(settings.database_url)
    load_nlu(settings)
    print("prepared: database at head, NLU model cached", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.local_cluster",
                                     description="A local production-shaped cluster from Debian packages.")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the cluster and keep it running until Ctrl-C")
    up.add_argument("--web-workers", type=int, default=2)
    up.add_argument("--job-workers", type=int, default=1)
    up.add_argument("--database", choices=["postgres", "sqlite"], default="postgres")
    up.add_argument("--no-redis", action="store_true", help="in-process sessions (each worker its own)")
    up.add_argument("--no-fake-twilio", action="store_true", help="no loopback Twilio API/media host")
    up.add_argument("--workdir", type=Path, help="default: a new directory under /tmp")
    sub.add_parser("prepare", help=argparse.SUPPRESS)  # the cluster's own pre-start step
    args = parser.parse_args(argv)
    if args.command == "prepare":
        return _prepare_here()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="assistant-cluster-"))
    cluster = LocalCluster(workdir, web_workers=args.web_workers, job_workers=args.job_workers,
                           database=args.database, redis=not args.no_redis, fake_twilio=not args.no_fake_twilio)
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    try:
        started = time.monotonic()
        cluster.start()
        print(f"cluster up in {time.monotonic() - started:.1f} s: {cluster.web_workers} web worker(s) "
              f"(gunicorn master pid {cluster.web_master_pid}), {cluster.job_workers} job worker(s)")
        print(f"  web        {cluster.base_url}   (try {cluster.base_url}/healthz)")
        print(f"  database   {cluster.database_url}")
        print(f"  redis      {cluster.redis_url or '(none: in-process sessions)'}")
        if cluster.twilio_api is not None:
            print(f"  twilio API {cluster.twilio_api.base_url} (fake; sent SMS are counted in this process)")
            print(f"  media host http://{cluster.media_server.host}/media/<name>")
        print(f"  logs       {cluster.logs_dir}")
        print("environment (for `python -m assistant …` against this cluster):")
        for key, value in sorted(cluster.env.items()):
            print(f"  export {key}={value}")
        print("Ctrl-C stops it.", flush=True)
        while not stop:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    except ServerMissing as exc:
        print(exc, file=sys.stderr)
        return 2
    finally:
        cluster.stop()
        if cluster.twilio_api is not None:
            print(f"fake Twilio API received {len(cluster.twilio_api.sent)} SMS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
