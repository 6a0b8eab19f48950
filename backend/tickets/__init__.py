"""The ticket loop: report → categorise → route → handle → feedback.

State machine (every transition a StatusEvent row with actor and time, and an audit entry):

    received → categorised → routed → accepted → in_progress → resolved → rated → closed
    (+ rejected, duplicate, cancelled; reopened from resolved/rated/rejected; low ratings reopen)

Categories and departments come from config.yml (`tickets.taxonomy`, `grid_departments`);
places from the gazetteer, EXIF GPS or one question back. The resident gets an SMS (through
the durable outbox, in the same transaction as the change) at each public step.

`process` is the background job for a new ticket: fetch and check photos, read their GPS and
text, categorise, locate, link duplicates, route. It is idempotent (at-least-once jobs): each
step looks at what is already stored and every SMS has a dedupe key.

This package's entry point (TicketDesk and the names callers import); the parts live in
model (vocabulary and typed values), core (plumbing, `move`), intake,
routing, staff and deadlines.
"""
from __future__ import annotations

from backend.infra.tx import UnitOfWork, WriteGate  # still imported from here by channels and tests
from backend.tickets.core import TicketCore
from backend.tickets.deadlines import TicketDeadlines
from backend.tickets.intake import TicketIntake
from backend.tickets.model import (
    MEDIA_ERROR_WORDS,
    OPEN_STATUSES,
    PUBLIC_STEPS,
    TRANSITIONS,
    Category,
    IncomingMedia,
    IntakeResult,
    LoopSettings,
    Taxonomy,
    TicketView,
    TransitionError,
    media_policy_from_config,
    status_label,
)
from backend.tickets.routing import TicketRouting
from backend.tickets.staff import TicketStaffWorkflow

__all__ = [
    "MEDIA_ERROR_WORDS", "OPEN_STATUSES", "PUBLIC_STEPS", "TRANSITIONS", "Category", "IncomingMedia",
    "IntakeResult", "LoopSettings", "Taxonomy", "TicketCore", "TicketDesk", "TicketView", "TransitionError",
    "UnitOfWork", "WriteGate", "media_policy_from_config", "status_label",
]


class TicketDesk(TicketIntake, TicketRouting, TicketStaffWorkflow, TicketDeadlines):
    """The ticket loop's one entry point, composed of its intake (intake), background
    routing job (routing), staff workflow (staff) and deadlines (deadlines) over shared
    plumbing (core): one store, one clock, one outbox, one transaction runner."""
