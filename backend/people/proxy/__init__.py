"""Family proxy grants: a child may act for an elderly parent only after the parent agreed.

Life of a grant: the child fills the `family_proxy` form (a proxy_request case) → `request`
creates a grant in `pending_consent` and texts the parent → the parent replies "1"/"同意" from
their own phone, presses 1 on a call, or confirms in person with staff → `active` until
`expires_at` → `expired`, or earlier `revoked` ("取消代办", by either side or staff) or
`declined`. Every transition is a StatusEvent row and an audit entry; every case a proxy
submits in the parent's name is recorded and texted to the parent.

Phones are stored as blind indexes (for matching) plus SM4 text (to send SMS); never in clear.

This package's entry point; the parts live in model (tables, values, texts),
notify (SMS ports), core (plumbing), grants (lifecycle), checks
(what a grant allows) and backend (the case store wrapper).
"""
from __future__ import annotations

from backend.people.proxy.backend import ProxyAwareBackend, ProxyNotAllowed
from backend.people.proxy.model import (
    CONSENT_CHANNELS,
    ENTITY_TYPE,
    OPEN_STATUSES,
    REFUSALS,
    RELATION_LABELS_ZH,
    SCOPE_BY_KIND,
    SCOPE_LABELS_ZH,
    SCOPES,
    STATUSES,
    TEXTS,
    Decision,
    GrantView,
    ProxyError,
    ProxyGrant,
    ProxyNotification,
    ProxyPolicy,
    SmsOutcome,
    duration_text,
    scopes_text,
)
from backend.people.proxy.notify import Notifier, OutboxNotifier, ProxyUnit, RecordingNotifier, TransactionalNotifier
from backend.people.proxy.service import ProxyService

__all__ = [
    "CONSENT_CHANNELS", "ENTITY_TYPE", "OPEN_STATUSES", "REFUSALS", "RELATION_LABELS_ZH", "SCOPES",
    "SCOPE_BY_KIND", "SCOPE_LABELS_ZH", "STATUSES", "TEXTS", "Decision", "GrantView", "Notifier",
    "OutboxNotifier", "ProxyAwareBackend", "ProxyError", "ProxyGrant", "ProxyNotAllowed", "ProxyNotification",
    "ProxyPolicy", "ProxyService", "ProxyUnit", "RecordingNotifier", "SmsOutcome", "TransactionalNotifier",
    "duration_text", "scopes_text",
]
