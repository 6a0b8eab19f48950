"""Session stores: in-memory and a real Redis server (see conftest.redis_server)."""
from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from backend.infra.sessions import MemorySessionStore, RedisSessionStore, make_session_store

Store = MemorySessionStore | RedisSessionStore


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    if request.param == "memory":
        yield MemorySessionStore()
        return
    server = request.getfixturevalue("redis_server")
    client = redis.Redis.from_url(server.url)
    yield RedisSessionStore(client, lock_lease_seconds=5)
    client.close()


def _key() -> str:
    return f"sms:{uuid.uuid4().hex}"


def test_save_load_delete(store: Store) -> None:
    key, state = _key(), {"form": "apply_senior_card", "slots": {"name": "张三"}, "turn": 3}
    assert store.load(key) is None
    store.save(key, state, ttl_seconds=60)
    assert store.load(key) == state
    state["turn"] = 4  # the store keeps a copy, not a reference
    assert store.load(key)["turn"] == 3
    store.delete(key)
    assert store.load(key) is None
    store.delete(key)  # deleting twice is fine


def test_rejects_non_json_and_bad_ttl(store: Store) -> None:
    with pytest.raises(TypeError):
        store.save(_key(), {"x": object()}, ttl_seconds=60)
    with pytest.raises(ValueError):
        store.save(_key(), {}, ttl_seconds=0)


def test_ttl_expiry(store: Store) -> None:
    key = _key()
    store.save(key, {"a": 1}, ttl_seconds=1)
    assert store.load(key) == {"a": 1}
    time.sleep(1.3)
    assert store.load(key) is None


def test_memory_ttl_with_fake_clock() -> None:
    now = [1000.0]
    store = MemorySessionStore(clock=lambda: now[0])
    store.save("k", {"a": 1}, ttl_seconds=600)
    now[0] += 599
    assert store.load("k") == {"a": 1}
    store.save("k", {"a": 2}, ttl_seconds=600)  # each turn extends the conversation
    now[0] += 599
    assert store.load("k") == {"a": 2}
    now[0] += 2
    assert store.load("k") is None


def _hold(store: Store, key: str, entered: threading.Event, release: threading.Event) -> None:
    with store.lock(key, timeout_seconds=5):
        entered.set()
        release.wait(10)


def test_lock_excludes_a_second_holder(store: Store) -> None:
    key, entered, release = _key(), threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold, args=(store, key, entered, release))
    holder.start()
    try:
        assert entered.wait(5)
        with pytest.raises(TimeoutError), store.lock(key, timeout_seconds=0.3):
            pass
        with store.lock(_key(), timeout_seconds=0.3):  # other conversations are not blocked
            pass
    finally:
        release.set()
        holder.join()
    with store.lock(key, timeout_seconds=1):  # free again once released
        pass


def test_lock_serialises_turns(store: Store) -> None:
    key, counter, seen = _key(), {"n": 0}, []

    def turn() -> None:
        for _ in range(20):
            with store.lock(key, timeout_seconds=10):
                n = counter["n"]
                time.sleep(0.001)
                counter["n"] = n + 1
                seen.append(n)

    threads = [threading.Thread(target=turn) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counter["n"] == 80 and sorted(seen) == list(range(80))


def test_memory_lock_is_reentrant_and_cleaned_up() -> None:
    store = MemorySessionStore()
    with store.lock("k"), store.lock("k", timeout_seconds=0.1):
        pass
    assert store._locks == {}


def test_redis_layout_and_new_client_sees_state(redis_server) -> None:
    key = _key()
    first = redis.Redis.from_url(redis_server.url)
    RedisSessionStore(first).save(key, {"slots": {"name": "李四"}}, ttl_seconds=120)
    assert 0 < first.ttl(f"asst:sess:{key}") <= 120
    first.close()
    # A new worker (or a restarted one) with its own connection picks the conversation up.
    second = make_session_store(redis_server.url)
    assert isinstance(second, RedisSessionStore)
    assert second.load(key) == {"slots": {"name": "李四"}}


def test_redis_lock_of_crashed_worker_expires(redis_server) -> None:
    key = _key()
    crashed = RedisSessionStore(redis.Redis.from_url(redis_server.url), lock_lease_seconds=1)
    ctx = crashed.lock(key, timeout_seconds=1)
    ctx.__enter__()  # acquired, then the worker "dies" without releasing
    survivor = RedisSessionStore(redis.Redis.from_url(redis_server.url))
    with pytest.raises(TimeoutError), survivor.lock(key, timeout_seconds=0.2):
        pass
    started = time.monotonic()
    with survivor.lock(key, timeout_seconds=5):
        assert time.monotonic() - started < 2
    ctx.__exit__(None, None, None)  # a late release of an expired lease must not raise


def test_make_session_store_defaults_to_memory() -> None:
    assert isinstance(make_session_store(None), MemorySessionStore)
    assert isinstance(make_session_store(""), MemorySessionStore)
