"""Operations endpoints and per-request plumbing, for every blueprint of the app.

GET /healthz  liveness: the process answers (no dependency is checked; restarting it would not help)
GET /readyz   readiness: what a turn needs is loaded (the NLU model loads in the background after a
              web worker starts: "nlu": "loading" until then), database `SELECT 1` and, when
              sessions live in Redis, PING — each with a short timeout, so the answer comes within
              ~2 s even when a server hangs. 503 until every check is "ok".
GET /metrics  Prometheus exposition (backend.infra.observability)

Each request gets a request id (a well-formed incoming X-Request-Id, else a new one) that is in
every log line of the request and in the response's X-Request-Id header, and is counted and
timed under its channel (the blueprint that served it).
"""
from __future__ import annotations

import logging
import re
import time
import uuid
from concurrent.futures import Future
from typing import Any

import redis
from flask import Blueprint, Response, current_app, g, jsonify, request
from prometheus_client.exposition import choose_encoder
from redis.backoff import NoBackoff
from redis.retry import Retry

from assistant import logcontext
from assistant.privacy import mask_text
from backend.infra import observability as obs
from backend.infra.sessions import RedisSessionStore
from channels.routes import Route, register
from channels.runtime_port import ChannelRuntime

NAME = "ops"
log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-Id"
# Proxies and load balancers send UUIDs or similar tokens; anything else (too long, odd
# characters that could forge log lines, a number that looks like a phone) is replaced.
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{7,127}")
DATABASE_TIMEOUT = 2.0
REDIS_TIMEOUT = 1.0


def request_id_from(header: str | None) -> str:
    if header and _REQUEST_ID_RE.fullmatch(header) and mask_text(header) == header:
        return header
    return uuid.uuid4().hex


def _redis_client(runtime: ChannelRuntime) -> redis.Redis | None:
    """A probe client for the session store's Redis (short time-outs, no retries: the store's
    own client is tuned for turns), or None when sessions are not in Redis."""
    if runtime.settings.redis_url:
        # No retries: redis-py's default retries would stretch a hung server's 1 s to ~15 s.
        return redis.Redis.from_url(runtime.settings.redis_url, socket_timeout=REDIS_TIMEOUT,
                                    socket_connect_timeout=REDIS_TIMEOUT, retry=Retry(NoBackoff(), 0))
    store = getattr(runtime.sessions, "inner", runtime.sessions)  # EncryptedSessionStore wraps it
    if isinstance(store, RedisSessionStore):  # handed in ready-made (embedding, tests): its client
        client: redis.Redis = store._redis
        return client
    return None


def start_request() -> None:
    rid = request_id_from(request.headers.get(REQUEST_ID_HEADER))
    g.ops_request_id, g.ops_token = rid, logcontext.request_id.set(rid)
    # Only names of registered blueprints reach a label: never anything the caller chose.
    g.ops_channel = request.blueprint if request.blueprint in current_app.blueprints else "none"
    g.ops_started = time.perf_counter()
    obs.metrics().in_flight.inc()


def finish_request(response: Response) -> Response:
    if "ops_started" in g:
        response.headers[REQUEST_ID_HEADER] = g.ops_request_id
        obs.observe_request(g.ops_channel, response.status_code, time.perf_counter() - g.ops_started)
    return response


def end_request(_exc: BaseException | None) -> None:
    if "ops_started" not in g:
        return
    obs.metrics().in_flight.dec()
    try:
        logcontext.request_id.reset(g.ops_token)
    except ValueError:  # torn down in another context: at least do not leak the id
        logcontext.request_id.set(None)


class Ops:
    """Liveness, readiness and metrics over the runtime's database, Redis and loading state."""

    def __init__(self, runtime: ChannelRuntime) -> None:
        self.runtime = runtime
        self.redis_client = _redis_client(runtime)
        self.database = obs.DatabaseCollector(runtime.db_sessions, runtime.clock)

    def healthz(self):
        return jsonify({"status": "ok"})

    def readyz(self):
        started = time.monotonic()
        db_sessions, redis_client = self.runtime.db_sessions, self.redis_client
        pending: dict[str, tuple[Future[Any], float]] = {
            "database": (obs.run_in_lane("ready-db", lambda: obs.ping_database(db_sessions)), DATABASE_TIMEOUT)}
        if redis_client is not None:
            pending["redis"] = (obs.run_in_lane("ready-redis", redis_client.ping), REDIS_TIMEOUT + 0.5)
        checks: dict[str, str] = {"nlu": "ok", "database": "ok",
                                  "redis": "ok" if redis_client is not None else "not_configured"}
        reasons: dict[str, str] = {}
        for name, (future, timeout) in pending.items():  # run side by side: the waits overlap
            try:
                obs.wait_for(future, timeout - (time.monotonic() - started))
            except Exception as exc:
                checks[name], reasons[name] = "down", obs.short_reason(exc)
                log.warning("readiness: %s is down (%s)", name, reasons[name])
        for name, state in self.runtime.loading().items():  # NLU model still loading, or failed to
            checks[name], reasons[name] = state, state
        if reasons:
            return jsonify({"status": "unavailable", "checks": checks, "reasons": reasons}), 503
        return jsonify({"status": "ready", "checks": checks})

    def metrics(self):
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return Response(encoder(obs.scrape_registry(self.database)), headers={"Content-Type": content_type})


ROUTES: list[Route] = [
    ("GET", "/healthz", Ops.healthz),
    ("GET", "/readyz", Ops.readyz),
    ("GET", "/metrics", Ops.metrics),
]


def make_blueprint(runtime: ChannelRuntime) -> Blueprint:
    obs.bind_runtime(runtime)
    bp = Blueprint(NAME, __name__)
    # Every request of the app, whichever blueprint serves it: request id, timing, in-flight gauge.
    bp.before_app_request(start_request)
    bp.after_app_request(finish_request)
    bp.teardown_app_request(end_request)
    return register(bp, ROUTES, Ops(runtime))
