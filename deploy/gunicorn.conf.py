"""Gunicorn settings for the web tier: `gunicorn -c deploy/gunicorn.conf.py runtime.wsgi:app`.

Every value comes from the environment (the systemd unit's EnvironmentFile, or
deploy/local_cluster.py), so production and the local fault-test cluster run the same file.

Choices, and why:
- preload_app = False. Each worker imports the app after the fork and builds its own runtime:
  no database or Redis socket, lock or thread is ever inherited from the master (SQLAlchemy's
  pool is not fork-safe, and RUN_WORKER_THREAD's job thread would silently not exist in a
  preloaded, forked worker). The price is measured: a respawned worker loads the NLU model
  itself (about 3-4 s on 2 cores) and each worker holds its own copy of the model; meanwhile the
  other workers keep answering, so a killed worker costs capacity, not availability.
- timeout = 20 s. Twilio gives a webhook 15 s. A sync worker silent for longer than that has
  failed the request anyway (Twilio has given up or redelivers), so the master kills and
  replaces it; killing sooner than 15 s could cut an answer Twilio still waits for. The
  application's own limits (DB statement/lock time-outs, Redis socket time-outs) sit inside 15 s.
- graceful_timeout = 15 s: on stop/reload an in-flight webhook may finish within Twilio's window.
- sync workers (threads = 1) by default, as measured in bench/bench_sms.py; set GUNICORN_THREADS
  to use gthread. Production sits behind a reverse proxy (TLS for Twilio) that buffers slow clients.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any


def _int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


wsgi_app = "runtime.wsgi:app"
bind = [b.strip() for b in os.environ.get("GUNICORN_BIND", "127.0.0.1:5005").split(",") if b.strip()]
workers = _int("WEB_CONCURRENCY", 2)
threads = _int("GUNICORN_THREADS", 1)
timeout = _int("GUNICORN_TIMEOUT", 20)
graceful_timeout = _int("GUNICORN_GRACEFUL_TIMEOUT", 15)
keepalive = 5
backlog = 2048
preload_app = False
# Recycling bounds slow leaks; off by default (a respawn costs a model load). Jitter staggers it.
max_requests = _int("GUNICORN_MAX_REQUESTS", 0)
max_requests_jitter = max(0, max_requests // 10)
# The heartbeat file on tmpfs: a busy or slow disk must not make the master think a worker hangs.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
# The reverse proxy's address; PUBLIC_BASE_URL (not these headers) is what Twilio signatures use.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
accesslog = os.environ.get("GUNICORN_ACCESSLOG") or None  # "-" for stdout; paths only, no bodies
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "info")
proc_name = "assistant-web"
# gunicorn ≥ 25's control socket (`gunicornc`) defaults to one path per user ($HOME/.gunicorn/
# gunicorn.ctl): a second instance on the host would take it over. Only where we are told.
control_socket = os.environ.get("GUNICORN_CONTROL_SOCKET") or "gunicorn.ctl"
control_socket_disable = not os.environ.get("GUNICORN_CONTROL_SOCKET")


# Prometheus multi-process hooks (clear stale metric files at start; a dead worker's gauges stop
# counting): one copy, in backend/infra/observability.py. The master reads this file before it puts the
# project on sys.path, whatever directory gunicorn was started from.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from backend.infra.observability import child_exit, on_starting  # noqa: E402,F401


def post_worker_init(worker: Any) -> None:
    # The app is imported: this worker now takes requests. deploy/local_cluster.py waits for this
    # line to know a respawned worker is serving again (the fault tests measure it).
    worker.log.info("worker ready (pid %s)", worker.pid)
