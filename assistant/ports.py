"""Interfaces the core needs from the outside world. Implementations live in backend/ (and tests)."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Protocol

Clock = Callable[[], datetime]  # returns a timezone-aware "now"


class SessionStore(Protocol):
    """Conversation state by key (sender id, CallSid …). Values are JSON-serialisable dicts."""

    def load(self, key: str) -> dict[str, Any] | None: ...

    def save(self, key: str, state: dict[str, Any], ttl_seconds: int) -> None: ...

    def delete(self, key: str) -> None: ...

    def lock(self, key: str, timeout_seconds: float = 10.0) -> AbstractContextManager[None]:
        """Serialises turns of one conversation across threads/processes."""
        ...


@dataclass(frozen=True)
class Person:
    """The resident a case is about. Personal fields are encrypted by the backend, never logged."""

    name: str | None = None
    id_number: str | None = None
    phone: str | None = None


@dataclass(frozen=True)
class CaseRequest:
    kind: str  # "application" | "booking" | "ticket" | "proxy_request"
    category: str  # form name: apply_senior_card, book_meal, report_issue, family_proxy …
    subject: Person
    fields: Mapping[str, Any]  # other slots, JSON-serialisable (dates as ISO strings)
    channel: str
    sender_id: str
    # Same key → same case: a resubmitted turn (retry, duplicate webhook) creates nothing new.
    idempotency_key: str
    # The phone of whoever operated the conversation when it is not the subject (family proxy).
    submitted_by_phone: str | None = None
    # A phone the channel proved belongs to the caller (caller ID on SMS/voice). Only when it is
    # the subject's registered phone may the case change the stored resident; otherwise what
    # differs is kept on the case as a correction for staff to confirm.
    verified_phone: str | None = None


@dataclass(frozen=True)
class CaseReceipt:
    reference: str  # digits only, said digit by digit
    kind: str
    category: str
    status: str
    created_at: datetime
    # True: the same application was already open, this is that case (nothing new was filed).
    # Its reference is then "" when the caller may not learn it (not verified, not the filer).
    duplicate: bool = False


@dataclass(frozen=True)
class HandoffRequest:
    sender_id: str
    channel: str
    phone: str | None
    reason: str  # "user_request" | "emergency" | "misunderstood"
    urgent: bool
    transcript: tuple[tuple[str, str], ...]  # ("user"|"bot", text)
    form_name: str | None
    form_slots: Mapping[str, Any]
    idempotency_key: str


@dataclass(frozen=True)
class ProgressItem:
    reference: str
    kind: str
    category: str
    status: str
    updated_at: datetime


@dataclass(frozen=True)
class ResidentRecord:
    name: str | None = None
    birth_date: date | None = None
    address: str | None = None
    grid_id: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


class LanguagePreferences(Protocol):
    """Residents' language, by phone: Mandarin "zh" or Cantonese "yue". On SMS, Cantonese only
    when the resident asked for written Cantonese."""

    def language_for(self, phone: str, channel: str) -> str | None: ...

    def remember(self, phone: str, language: str, channel: str) -> None: ...


class StoreUnavailable(Exception):
    """The session store cannot be reached (Redis down, restarting or saturated); adapters raise
    this instead of their driver's errors so the core can answer kindly."""


class ActingForRefused(Exception):
    """Raised by a backend when a family member files for a senior without a grant that covers
    it. `how_to_ask` tells them, in words a resident reads, how to get one."""

    reason: str = ""
    how_to_ask: str = ""


class ProxyCheck(Protocol):
    """Whether a family member may start a form for a senior (the backend's grant decision)."""

    allowed: bool
    how_to_ask: str | None


class ServiceBackend(Protocol):
    def submit_case(self, request: CaseRequest) -> CaseReceipt: ...

    def create_handoff(self, request: HandoffRequest) -> CaseReceipt: ...

    def progress(self, *, phone: str | None = None, reference: str | None = None) -> list[ProgressItem]: ...

    def find_resident(self, *, id_number: str | None = None, phone: str | None = None) -> ResidentRecord | None: ...

    def identify(self, *, id_number: str, phone: str | None) -> ResidentRecord | None:
        """The record for this ID number only when `phone` is that resident's registered phone;
        None for an unknown ID and for another phone alike (an ID alone reveals nothing)."""
        ...

    def precheck(self, proxy_phone: str | None, kind: str) -> ProxyCheck | None:
        """At the start of a form filled for someone else: None when no grant is needed (or
        this backend keeps no grants), else whether `proxy_phone` may go on."""
        ...
