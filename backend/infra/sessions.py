"""Conversation state stores (assistant.ports.SessionStore).

MemorySessionStore serves one process (the street office); RedisSessionStore lets many
stateless web workers share conversations, surviving a worker restart.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.exceptions import LockError
from redis.retry import Retry

from assistant.ports import StoreUnavailable
from backend.infra.crypto import FieldCipher

log = logging.getLogger(__name__)


def _dumps(state: dict[str, Any]) -> str:
    # Stored as JSON in both stores, so a value that works in tests works on Redis too.
    return json.dumps(state, ensure_ascii=False, separators=(",", ":"))


class MemorySessionStore:
    """Thread-safe in-process store with TTL expiry and per-key re-entrant locks."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._data: dict[str, tuple[float, str]] = {}  # key -> (expires_at, json)
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.RLock, int]] = {}  # key -> (lock, users)
        self._writes = 0

    def load(self, key: str) -> dict[str, Any] | None:
        with self._guard:
            item = self._data.get(key)
            if item is None:
                return None
            if item[0] <= self._clock():
                del self._data[key]
                return None
            raw = item[1]
        state: dict[str, Any] = json.loads(raw)
        return state

    def save(self, key: str, state: dict[str, Any], ttl_seconds: int) -> None:
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        raw = _dumps(state)
        with self._guard:
            now = self._clock()
            self._data[key] = (now + ttl_seconds, raw)
            self._writes += 1
            if self._writes % 1000 == 0:  # sweep now and then so abandoned chats do not pile up
                self._data = {k: v for k, v in self._data.items() if v[0] > now}

    def delete(self, key: str) -> None:
        with self._guard:
            self._data.pop(key, None)

    @contextmanager
    def lock(self, key: str, timeout_seconds: float = 10.0) -> Iterator[None]:
        """Raises TimeoutError when another thread holds the key longer than timeout_seconds."""
        with self._guard:
            lock, users = self._locks.get(key, (threading.RLock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            if not lock.acquire(timeout=timeout_seconds):
                raise TimeoutError("conversation is busy (session lock not acquired)")
            try:
                yield
            finally:
                lock.release()
        finally:
            with self._guard:  # drop the lock object once nobody holds or waits for it
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


_UNREACHABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


@contextmanager
def _reachable() -> Iterator[None]:
    try:
        yield
    except _UNREACHABLE as exc:
        raise StoreUnavailable(str(exc)) from exc


class RedisSessionStore:
    """State as JSON under `prefix + key` with EX ttl; locks are redis-py Locks with a lease,
    so a worker that dies mid-turn blocks its conversation for at most `lock_lease_seconds`."""

    def __init__(
        self,
        redis_client: redis.Redis,
        prefix: str = "asst:sess:",
        *,
        lock_prefix: str = "asst:lock:",
        lock_lease_seconds: float = 15.0,
    ) -> None:
        self._redis = redis_client
        self._prefix = prefix
        self._lock_prefix = lock_prefix
        self._lease = lock_lease_seconds

    def load(self, key: str) -> dict[str, Any] | None:
        with _reachable():
            raw = self._redis.get(self._prefix + key)
        if raw is None:
            return None
        state: dict[str, Any] = json.loads(raw)  # type: ignore[arg-type]
        return state

    def save(self, key: str, state: dict[str, Any], ttl_seconds: int) -> None:
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        with _reachable():
            self._redis.set(self._prefix + key, _dumps(state), ex=ttl_seconds)

    def delete(self, key: str) -> None:
        with _reachable():
            self._redis.delete(self._prefix + key)

    def ping(self) -> bool:
        with _reachable():
            return bool(self._redis.ping())

    @contextmanager
    def lock(self, key: str, timeout_seconds: float = 10.0) -> Iterator[None]:
        """Waits up to timeout_seconds, then raises TimeoutError. Not re-entrant."""
        lock = self._redis.lock(
            self._lock_prefix + key,
            timeout=max(self._lease, timeout_seconds),
            blocking_timeout=timeout_seconds,
            thread_local=False,  # the token is checked on release; one lock object per turn
        )
        with _reachable():
            acquired = lock.acquire()
        if not acquired:
            raise TimeoutError("conversation is busy (session lock not acquired)")
        try:
            yield
        finally:
            try:
                lock.release()
            except LockError:  # lease ran out during a slow turn; someone else may hold it now
                log.warning("session lock lease expired before release")
            except _UNREACHABLE:
                log.warning("session lock not released (Redis unreachable); its lease will expire")


class EncryptedSessionStore:
    """Wraps a store so that what leaves the process is SM4-encrypted: conversation state holds
    ID numbers, phones and transcripts, and Redis (or its dump files) must not see them."""

    def __init__(self, inner: MemorySessionStore | RedisSessionStore, cipher: FieldCipher) -> None:
        self.inner = inner
        self.cipher = cipher

    def _key(self, key: str) -> str:
        # Keys carry phone numbers ("sms:+86137…"); Redis sees only their keyed hash.
        return "h:" + self.cipher.blind_index(key, "session_key")

    def load(self, key: str) -> dict[str, Any] | None:
        stored = self.inner.load(self._key(key))
        if stored is None:
            return None
        try:
            return self.cipher.decrypt_json(stored["sealed"])
        except Exception:  # unreadable (key removed, tampered): start the conversation afresh
            log.warning("session state for a conversation could not be decrypted; starting afresh")
            return None

    def save(self, key: str, state: dict[str, Any], ttl_seconds: int) -> None:
        self.inner.save(self._key(key), {"sealed": self.cipher.encrypt_json(state)}, ttl_seconds)

    def delete(self, key: str) -> None:
        self.inner.delete(self._key(key))

    def lock(self, key: str, timeout_seconds: float = 10.0) -> AbstractContextManager[None]:
        return self.inner.lock(self._key(key), timeout_seconds)


def make_session_store(
    redis_url: str | None, cipher: FieldCipher | None = None
) -> MemorySessionStore | RedisSessionStore | EncryptedSessionStore:
    """Redis when a URL is configured (several workers; encrypted when a cipher is given),
    else in-process memory."""
    if not redis_url:
        return MemorySessionStore()
    # Short socket time-outs: a Redis that hangs or restarts must turn into a polite "busy" answer
    # well inside Twilio's 15 s, not a worker stuck on a socket (redis-py retries a few times).
    client = redis.Redis.from_url(redis_url, socket_timeout=2.0, socket_connect_timeout=1.0,
                                  health_check_interval=30, retry=Retry(NoBackoff(), 1))
    store = RedisSessionStore(client)
    return EncryptedSessionStore(store, cipher) if cipher is not None else store
