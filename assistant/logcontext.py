"""Per-request and per-conversation identifiers for log lines. Standard library only.

`request_id` is set by the web layer for one HTTP request; `conversation_id` by the core for one
turn. A log formatter (backend.infra.observability) reads both, so every line of a request says which
request and which conversation it belongs to without any code passing them around.

The conversation id is a keyed hash of the session key ("sms:<sender>", "voice:<CallSid>" …): the
same conversation gets the same id in every worker (all share the key, derived from the index
key by the runtime), and nobody can recover a phone number from it (unlike a plain hash of an
11-digit number, which is brute-forced in seconds).
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
conversation_id: ContextVar[str | None] = ContextVar("conversation_id", default=None)

# Until the runtime configures the shared key, ids are stable within this process only; a random
# key (rather than a fixed one) keeps them unlinkable to phone numbers even then.
_key: bytes = secrets.token_bytes(32)


def configure_conversation_key(key: bytes) -> None:
    """Sets the secret the conversation ids are keyed with (the same in every worker)."""
    global _key
    if len(key) < 16:
        raise ValueError("conversation id key must be at least 16 bytes")
    _key = key


def conversation_id_for(session_key: str) -> str:
    """12 hex characters: short enough to read in a log, enough to keep conversations apart."""
    return hmac.new(_key, session_key.encode("utf-8"), hashlib.sha256).hexdigest()[:12]


@contextmanager
def conversation(session_key: str) -> Iterator[str]:
    """Binds the conversation id for the duration of one turn (restored afterwards, because
    server threads are reused and the next request must not inherit it)."""
    cid = conversation_id_for(session_key)
    token = conversation_id.set(cid)
    try:
        yield cid
    finally:
        conversation_id.reset(token)
