"""A channel's own short-lived state per conversation — the menu step of a call waiting for a
spoken "对", what the last SMS offered as digits, where a Media Stream hands the call next — kept
apart from the core's conversation (which no channel reads) under `scratch:<channel>:` keys, and
typed by a dataclass so that what is kept is written down in one place."""
from __future__ import annotations

import dataclasses
from typing import Any, Generic, TypeVar

from assistant.ports import SessionStore

T = TypeVar("T")


class Scratch(Generic[T]):
    def __init__(self, store: SessionStore, channel: str, kind: type[T], ttl_seconds: int) -> None:
        if not dataclasses.is_dataclass(kind):
            raise TypeError("scratch state is a dataclass")
        self._store, self._prefix, self._kind, self._ttl = store, f"scratch:{channel}:", kind, ttl_seconds
        self._fields = {f.name for f in dataclasses.fields(kind)}

    def load(self, key: str) -> T | None:
        raw = self._store.load(self._prefix + key)
        if not raw:
            return None
        return self._kind(**{k: v for k, v in raw.items() if k in self._fields})

    def save(self, key: str, value: T) -> None:
        data: dict[str, Any] = dataclasses.asdict(value)  # type: ignore[call-overload]
        self._store.save(self._prefix + key, data, self._ttl)

    def delete(self, key: str) -> None:
        self._store.delete(self._prefix + key)
