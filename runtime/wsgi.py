"""WSGI entry for production servers: `gunicorn -w 2 'runtime.wsgi:app'`.

Each server process builds its own runtime from the environment (state lives in the database
and Redis, never in a worker). Background jobs run in `python -m assistant worker` processes;
set RUN_WORKER_THREAD=1 to also run a job thread inside each server process.
"""
from __future__ import annotations

import gc
import logging

from assistant.config import load_settings
from channels.app import create_app
from runtime.container import build_runtime
from runtime.ticket_loop import background_worker


def build_app():
    from channels import open311, staff_api, staff_console, twilio_sms

    settings = load_settings()
    runtime = build_runtime(settings)
    app = create_app(runtime)
    for module in (twilio_sms, staff_api, staff_console, open311):  # until channels/app.py lists them
        if module.NAME not in app.blueprints:
            app.register_blueprint(module.make_blueprint(runtime))
    if settings.env.get("RUN_WORKER_THREAD") == "1":
        background_worker(runtime).start_thread()
        logging.getLogger(__name__).info("job worker thread started")
    return app


app = build_app()
# The NLU model and jieba's dictionary are millions of long-lived objects; without this every
# full garbage collection walks them all (100+ ms pauses, seen as p99 spikes under load).
gc.collect()
gc.freeze()
