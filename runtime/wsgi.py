"""WSGI entry for production servers: `gunicorn -w 2 'runtime.wsgi:app'`.

Each server process builds its own runtime from the environment (state lives in the database
and Redis, never in a worker). Background jobs run in `python -m assistant worker` processes;
set RUN_WORKER_THREAD=1 to also run a job thread inside each server process.

Production also sets LOG_FORMAT=json (one masked JSON object per log line) and, with several
workers, PROMETHEUS_MULTIPROC_DIR with the hooks that deploy/gunicorn.conf.py installs:
`gunicorn -c deploy/gunicorn.conf.py runtime.wsgi:app` (README, "Production shape").
"""
from __future__ import annotations

import gc
import logging

from sqlalchemy.exc import OperationalError

from assistant.config import load_settings
from backend import db
from backend.observability import configure_logging
from channels.app import create_app
from runtime.container import build_runtime
from runtime.ticket_loop import background_worker


def build_app():
    # Gunicorn configures only its own loggers; the application's go through this masked handler.
    configure_logging()
    settings = load_settings()
    # A worker (re)forked while the database is down must still boot, or gunicorn halts the whole
    # web tier ("Worker failed to boot"): it then answers "busy" until the database is back, and
    # /readyz says so. Schema upgrades belong to deployment (the unit's ExecStartPre).
    try:
        db.upgrade(settings.database_url)
    except (OperationalError, OSError) as exc:
        logging.getLogger(__name__).warning("database unreachable at start (%s); serving anyway",
                                            type(exc).__name__)
    runtime = build_runtime(settings, migrate=False)
    if not settings.redis_url and int(settings.env.get("WEB_CONCURRENCY") or 2) > 1:
        # Each worker would keep its own conversations: the next turn lands on another worker
        # and starts over. Photo reports and webhooks that finish in one request are unaffected.
        logging.getLogger(__name__).error(
            "REDIS_URL is not set: with several web workers, multi-turn conversations break "
            "(each worker keeps its own). Set REDIS_URL, or run one worker (WEB_CONCURRENCY=1).")
    app = create_app(runtime)
    if settings.env.get("RUN_WORKER_THREAD") == "1":
        background_worker(runtime).start_thread()
        logging.getLogger(__name__).info("job worker thread started")
    return app


app = build_app()
# The NLU model and jieba's dictionary are millions of long-lived objects; without this every
# full garbage collection walks them all (100+ ms pauses, seen as p99 spikes under load).
gc.collect()
gc.freeze()
