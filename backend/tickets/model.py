"""Ticket vocabulary shared by intake, routing and the staff workflow: the state machine's
transitions, the category taxonomy, the loop's settings from config.yml, and the typed values
handed to channels (IncomingMedia, IntakeResult, TicketView)."""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from assistant.privacy import mask_text
from assistant.work_orders import Category as Category  # the ticket loop routes by the work-order taxonomy
from assistant.work_orders import Taxonomy as Taxonomy
from backend.infra.models import STATUS_LABELS_ZH
from backend.messaging.sms_texts import DEFAULT_TEXTS
from backend.tickets.gazetteer import ServiceArea
from backend.tickets.media import MediaPolicy

TRANSITIONS: dict[str, frozenset[str]] = {
    "received": frozenset({"categorised", "rejected", "duplicate", "cancelled"}),
    "categorised": frozenset({"routed", "rejected", "duplicate", "cancelled"}),
    "routed": frozenset({"routed", "accepted", "rejected", "cancelled"}),
    "accepted": frozenset({"in_progress", "resolved", "rejected"}),
    "in_progress": frozenset({"resolved", "rejected"}),
    "resolved": frozenset({"rated", "closed", "reopened"}),
    "rated": frozenset({"closed", "reopened"}),
    "reopened": frozenset({"routed", "accepted", "in_progress", "resolved", "rejected"}),
    "rejected": frozenset({"reopened"}),
    "duplicate": frozenset({"reopened"}),
    "closed": frozenset(),
    "cancelled": frozenset(),
}
# Still being worked on: duplicates link to these, residents can cancel them.
OPEN_STATUSES = frozenset({"received", "categorised", "routed", "accepted", "in_progress", "reopened"})
# Steps the resident is told about by SMS when they happen (routed/duplicate come from `process`).
PUBLIC_STEPS = {"accepted": "accepted", "in_progress": "in_progress", "resolved": "resolved",
                "rejected": "rejected", "reopened": "reopened", "cancelled": "cancelled"}
MEDIA_ERROR_WORDS = {"host_not_allowed": "链接不可信", "too_large": "照片太大", "bad_type": "格式不支持",
                     "not_image": "不是照片", "fetch_failed": "下载失败"}


class TransitionError(ValueError):
    """The ticket cannot go there from where it is (e.g. resolve a closed ticket)."""


def due_soon_from_config(config: Mapping[str, Any]) -> timedelta:
    """How long before its deadline a ticket counts as due soon (config.yml tickets.due_soon_hours):
    the ticket list's mark and the dashboard's count read the same setting."""
    return timedelta(hours=float((config.get("tickets") or {}).get("due_soon_hours", 2)))


@dataclass(frozen=True)
class LoopSettings:
    report_window: timedelta = timedelta(seconds=120)
    location_answer: timedelta = timedelta(hours=24)
    max_text_chars: int = 500
    service_area: ServiceArea | None = None
    duplicate_radius_m: float = 100.0
    duplicate_window: timedelta = timedelta(hours=48)
    triage_queue: str = "人工分拣"
    grid_departments: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    texts: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_TEXTS))
    # Deadlines (时限): hours by category or area code, else the default; "due soon" before that.
    sla_hours: Mapping[str, float] = field(default_factory=dict)
    sla_default_hours: float = 72.0
    due_soon: timedelta = timedelta(hours=2)
    # Who hears of an overdue ticket by SMS: department → phone (env DEPARTMENT_HEADS, JSON).
    department_heads: Mapping[str, str] = field(default_factory=dict)

    def deadline(self, category: Category) -> timedelta:
        hours = self.sla_hours.get(category.code, self.sla_hours.get(category.area, self.sla_default_hours))
        return timedelta(hours=float(hours))

    @classmethod
    def from_config(cls, config: Mapping[str, Any], texts: Mapping[str, str],
                    env: Mapping[str, str] | None = None) -> LoopSettings:
        sms = config.get("sms") or {}
        tickets = config.get("tickets") or {}
        sla = dict(tickets.get("sla_hours") or {})
        heads = json.loads((env or {}).get("DEPARTMENT_HEADS") or "{}")
        if not isinstance(heads, dict):
            raise ValueError("DEPARTMENT_HEADS must be a JSON object: department → phone")
        return cls(
            sla_hours={str(k): float(v) for k, v in sla.items() if k != "default"},
            sla_default_hours=float(sla.get("default", 72)),
            due_soon=due_soon_from_config(config),
            department_heads={str(k): str(v) for k, v in heads.items()},
            report_window=timedelta(seconds=float(sms.get("report_window_seconds", 120))),
            location_answer=timedelta(hours=float(sms.get("location_answer_hours", 24))),
            max_text_chars=int(sms.get("max_text_chars", 500)),
            service_area=ServiceArea.from_config(sms.get("service_area")),
            duplicate_radius_m=float(tickets.get("duplicate_radius_m", 100)),
            duplicate_window=timedelta(hours=float(tickets.get("duplicate_hours", 48))),
            triage_queue=str(tickets.get("triage_queue", "人工分拣")),
            grid_departments={str(g): dict(m) for g, m in (tickets.get("grid_departments") or {}).items()},
            texts=texts,
        )


def media_policy_from_config(config: Mapping[str, Any], env: Mapping[str, str]) -> MediaPolicy:
    from backend.tickets.media import parse_hosts

    media = config.get("media") or {}
    default = MediaPolicy()
    return MediaPolicy(
        allowed_hosts=parse_hosts(env.get("MEDIA_ALLOWED_HOSTS"), default.allowed_hosts),
        allowed_types=tuple(media.get("allowed_types") or default.allowed_types),
        max_bytes=int(media.get("max_bytes", default.max_bytes)),
        max_per_report=int(media.get("max_per_report", default.max_per_report)),
    )


@dataclass(frozen=True)
class IncomingMedia:
    url: str
    content_type: str


@dataclass(frozen=True)
class IntakeResult:
    ticket_id: int
    reference: str
    reply: str


@dataclass(frozen=True)
class TicketView:
    """A ticket for staff and for Open311 (public fields only unless `private` is filled)."""

    reference: str
    status: str
    service_code: str | None
    category_name: str | None
    department: str | None
    place: str | None
    latitude: float | None
    longitude: float | None
    channel: str
    created_at: datetime
    updated_at: datetime
    status_note: str | None
    rating: int | None
    duplicate_of: str | None
    media: tuple[tuple[str, str], ...]  # (sha256, role) of stored photos
    private: Mapping[str, Any] = field(default_factory=dict)  # description, location, contact …
    events: tuple[tuple[str | None, str, str, datetime], ...] = ()
    due_at: datetime | None = None
    due_state: str | None = None  # "overdue" / "due_soon" while open, else None
    escalated: bool = False


def status_label(status: str) -> str:
    return STATUS_LABELS_ZH.get(status, status)


def shorten(text: str, limit: int) -> str:
    text = re.sub(r"\s+", " ", text or "").strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def public_place(text: str) -> str:
    """A resident's own words made fit for a public field: no room, phone or ID numbers."""
    text = mask_text(text or "")
    text = re.sub(r"\d{3,4}\s*(室|号房|房)?", "", text)
    return shorten(text, 40)
