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


def build_app():
    # Collection off until the libraries are imported and the model is loaded (StartupGC): the
    # imports below are most of a worker's start.
    gc.disable()
    from backend.infra.private_files import private_umask

    private_umask()  # the database, its -wal/-shm files, photos and caches are owner-only
    from sqlalchemy.exc import OperationalError

    from assistant.config import load_settings
    from backend.infra import db
    from backend.infra.observability import configure_logging
    from channels.app import create_app
    from runtime.container import StartupGC, build_runtime, load_nlu_in_background
    from runtime.ticket_loop import background_worker

    startup = StartupGC(parts=2)  # this thread building the app, and the NLU model loading
    # Gunicorn configures only its own loggers; the application's go through this masked handler.
    configure_logging()
    settings = load_settings()
    # The NLU model loads in a background thread: the worker answers at once, /readyz is 503 until
    # the model is in memory (about a second with it on disk: deploys run `python -m assistant
    # train --if-missing` once at build time, so no worker ever trains it).
    nlu = load_nlu_in_background(settings, when_done=startup.done)
    # A worker (re)forked while the database is down must still boot, or gunicorn halts the whole
    # web tier ("Worker failed to boot"): it then answers "busy" until the database is back, and
    # /readyz says so. Schema upgrades belong to deployment (the unit's ExecStartPre).
    try:
        db.upgrade(settings.database_url)
    except (OperationalError, OSError) as exc:
        logging.getLogger(__name__).warning("database unreachable at start (%s); serving anyway",
                                            type(exc).__name__)
    runtime = build_runtime(settings, migrate=False, nlu=nlu)
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
    startup.done()
    return app


app = build_app()
