"""What a member of staff may see, decided in SQL: every console query takes the acting Staff and
adds its role's predicate, so a guessed URL or id finds nothing outside the person's scope.

    admin               everything
    grid_worker         residents, tickets and care alerts of their own grid; proxy grants of
                        those residents
    social_worker       residents, care alerts and proxy grants of their grids (or all, with
                        `staff.social_workers_see_all`)
    department_handler  tickets routed to their department
    agent               the handoff queue

Reads of personal data in clear (a revealed resident, a handoff transcript) are audit entries
with the staff member as actor; lists show masked values only.
"""
from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, false, select, true
from sqlalchemy.orm import Session

from assistant.ports import Clock
from assistant.privacy import mask_id, mask_name, mask_phone
from backend.alerts.store import ACTIVE_STATES, Alert, CareHousehold
from backend.infra.crypto import FieldCipher
from backend.infra.models import Handoff, Resident, Ticket
from backend.infra.tx import TransactionRunner, UnitOfWork
from backend.people.proxy.model import ProxyGrant
from backend.people.staff import Staff, StaffPolicy

T = TypeVar("T")

# Which console sections each role has at all (the navigation, and a 403 before any query).
SECTIONS: dict[str, frozenset[str]] = {
    "admin": frozenset({"dashboard", "map", "handoffs", "tickets", "alerts", "outreach", "residents", "grants"}),
    "grid_worker": frozenset({"dashboard", "map", "tickets", "alerts", "outreach", "residents", "grants"}),
    "social_worker": frozenset({"dashboard", "alerts", "outreach", "residents", "grants"}),
    "department_handler": frozenset({"dashboard", "map", "tickets"}),
    "agent": frozenset({"dashboard", "handoffs"}),
}
REVEAL_FIELDS = ("name", "phone", "id_number")


@dataclass(frozen=True)
class ResidentRow:
    id: int
    grid_id: str | None
    name: str  # masked unless revealed
    phone: str
    id_number: str
    age: int | None
    address: str | None = None  # only when revealed
    revealed: bool = False


@dataclass(frozen=True)
class HandoffRow:
    reference: str
    status: str
    reason: str
    urgent: bool
    channel: str
    form_name: str | None
    taken_by: str | None
    created_at: datetime
    silent: bool = False  # the caller never answered: handed over after silence, not on request


@dataclass(frozen=True)
class AlertRow:
    id: int
    household: str
    grid_id: str
    rule: str
    level: str
    state: str
    raised_at: datetime
    due_at: datetime | None  # the next SLA deadline (acknowledge, then visit)
    due_kind: str | None  # ack / visit


@dataclass(frozen=True)
class GrantRow:
    id: int
    senior_resident_id: int | None
    senior_name: str  # masked
    relation: str
    scopes: tuple[str, ...]
    status: str
    expires_at: datetime
    proxy_phone: str  # masked


def _age(born: Any, today: datetime) -> int | None:
    if born is None:
        return None
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


class StaffQueries:
    def __init__(self, sessions: Callable[[], Session], cipher: FieldCipher, clock: Clock,
                 policy: StaffPolicy | None = None) -> None:
        self._sessions = sessions
        self._cipher = cipher
        self._clock = clock
        self.policy = policy or StaffPolicy()
        self._tx = TransactionRunner(sessions, clock)

    def now(self) -> datetime:
        return self._clock().astimezone(UTC)

    @staticmethod
    def allows(staff: Staff, section: str) -> bool:
        return section in SECTIONS.get(staff.role, frozenset())

    # --- scopes (SQL predicates) -------------------------------------------------------------------
    def _grid_scope(self, staff: Staff, column: Any) -> ColumnElement[bool]:
        if staff.role == "admin" or (staff.role == "social_worker" and self.policy.social_workers_see_all):
            return true()
        if staff.role in ("grid_worker", "social_worker") and staff.grids:
            return column.in_(staff.grids)
        return false()

    def resident_scope(self, staff: Staff) -> ColumnElement[bool]:
        return self._grid_scope(staff, Resident.grid_id)

    def ticket_scope(self, staff: Staff) -> ColumnElement[bool]:
        if staff.role == "admin":
            return true()
        if staff.role == "grid_worker" and staff.grids:
            return Ticket.grid_id.in_(staff.grids)
        if staff.role == "department_handler" and staff.department:
            return Ticket.department == staff.department
        return false()

    def alert_scope(self, staff: Staff) -> ColumnElement[bool]:
        if staff.role not in ("admin", "grid_worker", "social_worker"):
            return false()
        return self._grid_scope(staff, CareHousehold.grid_id)

    def handoff_scope(self, staff: Staff) -> ColumnElement[bool]:
        return true() if staff.role in ("admin", "agent") else false()

    def _run(self, work: Callable[[UnitOfWork], T]) -> T:
        return self._tx.run(work)

    # --- residents ---------------------------------------------------------------------------------
    def residents(self, staff: Staff, query: str | None = None, limit: int = 100) -> list[ResidentRow]:
        """Residents in scope, masked. `query`: a phone or ID number (exact, by blind index)."""
        stmt = select(Resident).where(self.resident_scope(staff))
        text = re.sub(r"\s+", "", unicodedata.normalize("NFKC", query or ""))
        if text:
            purpose = "id_number" if len(text) == 18 else "phone"
            column = Resident.id_hash if purpose == "id_number" else Resident.phone_hash
            stmt = stmt.where(column == self._cipher.blind_index(text, purpose))

        def work(unit: UnitOfWork) -> list[ResidentRow]:
            session = unit.session
            rows = session.scalars(stmt.order_by(Resident.id).limit(limit)).all()
            if text:  # looking a person up by their number is itself a use of it
                unit.audits.append(dict(actor=staff.actor, action="read", entity_type="resident",
                                        entity_id=rows[0].id if len(rows) == 1 else None,
                                        detail={"view": "search", "by": purpose, "found": len(rows)}))
            return [self._resident_row(r, revealed=False) for r in rows]

        return self._run(work)

    def resident(self, staff: Staff, resident_id: int) -> ResidentRow | None:
        def work(unit: UnitOfWork) -> ResidentRow | None:
            session = unit.session
            row = session.scalar(select(Resident).where(Resident.id == resident_id, self.resident_scope(staff)))
            return None if row is None else self._resident_row(row, revealed=False)

        return self._run(work)

    def reveal_resident(self, staff: Staff, resident_id: int, reason: str) -> ResidentRow | None:
        """Name, phone, ID number and address in clear: an audited read (who, when, why)."""

        def work(unit: UnitOfWork) -> ResidentRow | None:
            session = unit.session
            row = session.scalar(select(Resident).where(Resident.id == resident_id, self.resident_scope(staff)))
            if row is None:
                return None
            unit.audits.append(dict(actor=staff.actor, action="read", entity_type="resident",
                                    entity_id=row.id, detail={"view": "reveal", "fields": [*REVEAL_FIELDS, "address"],
                                                              "reason": reason[:100]}))
            return self._resident_row(row, revealed=True)

        return self._run(work)

    def _resident_row(self, row: Resident, *, revealed: bool) -> ResidentRow:
        name = self._cipher.decrypt(row.name_enc) or ""
        phone = self._cipher.decrypt(row.phone_enc) or ""
        id_number = self._cipher.decrypt(row.id_enc) or ""
        if not revealed:
            name, phone, id_number = mask_name(name), mask_phone(phone), mask_id(id_number)
        return ResidentRow(row.id, row.grid_id, name, phone, id_number, _age(row.birth_date, self.now()),
                           self._cipher.decrypt(row.address_enc) if revealed else None, revealed)

    # --- tickets -----------------------------------------------------------------------------------
    def can_see_ticket(self, staff: Staff, reference: str) -> bool:
        with self._sessions() as session:
            return session.scalar(select(Ticket.id).where(Ticket.reference == reference,
                                                          self.ticket_scope(staff))) is not None

    # --- handoffs ----------------------------------------------------------------------------------
    def handoffs(self, staff: Staff, *, include_closed: bool = False, limit: int = 100) -> list[HandoffRow]:
        stmt = select(Handoff).where(self.handoff_scope(staff))
        if not include_closed:
            stmt = stmt.where(Handoff.status != "closed")
        with self._sessions() as session:
            rows = session.scalars(stmt.order_by(Handoff.urgent.desc(), Handoff.created_at).limit(limit)).all()
            # The transcript is decrypted only to tell silence from a request; it is not shown here.
            return [HandoffRow(h.reference, h.status, h.reason, h.urgent, h.channel, h.form_name, h.taken_by,
                               h.created_at, handed_over_in_silence(
                                   h.reason, self._cipher.decrypt_json(h.transcript_enc) or []))
                    for h in rows]

    def can_see_handoff(self, staff: Staff, reference: str) -> bool:
        with self._sessions() as session:
            return session.scalar(select(Handoff.id).where(Handoff.reference == reference,
                                                           self.handoff_scope(staff))) is not None

    # --- care alerts -------------------------------------------------------------------------------
    def alerts(self, staff: Staff, *, active_only: bool = True, limit: int = 200) -> list[AlertRow]:
        stmt = (select(Alert, CareHousehold).join(CareHousehold, CareHousehold.id == Alert.household_id)
                .where(self.alert_scope(staff)))
        if active_only:
            stmt = stmt.where(Alert.state.in_(ACTIVE_STATES))
        with self._sessions() as session:
            rows = session.execute(stmt.order_by(Alert.raised_at.desc()).limit(limit)).all()
            out = []
            for alert, household in rows:
                due_kind = "ack" if alert.ack_due_at else "visit" if alert.visit_due_at else None
                out.append(AlertRow(alert.id, household.code, household.grid_id, alert.rule, alert.level,
                                    alert.state, alert.raised_at, alert.ack_due_at or alert.visit_due_at,
                                    due_kind))
            return out

    def can_see_alert(self, staff: Staff, alert_id: int) -> bool:
        with self._sessions() as session:
            return session.scalar(select(Alert.id).join(CareHousehold, CareHousehold.id == Alert.household_id)
                                  .where(Alert.id == alert_id, self.alert_scope(staff))) is not None

    # --- proxy grants ------------------------------------------------------------------------------
    def _grant_stmt(self, staff: Staff) -> Any:
        stmt = select(ProxyGrant, Resident).outerjoin(Resident, Resident.id == ProxyGrant.senior_resident_id)
        if staff.role == "admin":
            return stmt
        if staff.role not in ("grid_worker", "social_worker"):
            return stmt.where(false())
        # Grants not linked to a resident have no grid: only an admin sees them.
        return stmt.where(ProxyGrant.senior_resident_id.is_not(None), self.resident_scope(staff))

    def grants(self, staff: Staff, *, senior_resident_id: int | None = None, limit: int = 200) -> list[GrantRow]:
        stmt = self._grant_stmt(staff)
        if senior_resident_id is not None:
            stmt = stmt.where(ProxyGrant.senior_resident_id == senior_resident_id)
        with self._sessions() as session:
            rows = session.execute(stmt.order_by(ProxyGrant.senior_resident_id, ProxyGrant.id.desc())
                                   .limit(limit)).all()
            return [GrantRow(g.id, g.senior_resident_id,
                             mask_name(self._cipher.decrypt(r.name_enc) or "") if r is not None else "—",
                             g.relation, tuple(sorted(g.scope_set)), g.status, g.expires_at,
                             mask_phone(self._cipher.decrypt(g.proxy_phone_enc) or "")) for g, r in rows]

    def can_see_grant(self, staff: Staff, grant_id: int) -> bool:
        with self._sessions() as session:
            return session.execute(self._grant_stmt(staff).where(ProxyGrant.id == grant_id)).first() is not None


def form_slots_text(slots: Any) -> list[tuple[str, str]]:
    """The form so far as (slot, value) lines for the handoff screen."""
    if not isinstance(slots, dict):
        return []
    return [(str(k), v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)) for k, v in slots.items()]


# --- transcripts as staff read them ---------------------------------------------------------------
SILENCE_ZH = "（没有说话）"
PHONE_CHANNELS = frozenset({"twilio_voice", "phone", "voice"})
# Payloads a key or a button sends instead of words ("/affirm" when 1 is pressed or 对 tapped).
PAYLOAD_LABELS_ZH = {"affirm": "确认", "deny": "不对", "request_human": "转人工", "repeat": "重听",
                     "cancel": "返回", "goodbye": "结束", "greet": "问候", "family_proxy": "家属代办",
                     "emergency": "紧急求助", "out_of_scope": "其他"}
_PAYLOAD_RE = re.compile(r"^/([A-Za-z_][A-Za-z0-9_]*)(\{.*\})?$", re.S)


@dataclass(frozen=True)
class TranscriptLine:
    role: str  # user / bot
    text: str
    label: bool = False  # text is our description (a key, a button, silence), not their words


def payload_label(text: str, channel: str, labels: Mapping[str, Mapping[Any, str]] | None = None) -> str | None:
    """"（按键：确认）" for a payload sent by a key or a button; None for words."""
    match = _PAYLOAD_RE.match(text.strip())
    if match is None:
        return None
    labels = labels or {}
    intent, entities = match.group(1), match.group(2)
    parts = [PAYLOAD_LABELS_ZH.get(intent) or labels.get("category", {}).get(intent) or intent]
    try:
        values = json.loads(entities) if entities else {}
    except ValueError:
        values = {}
    if isinstance(values, dict):
        parts += [str(labels.get(name, {}).get(value, value)) for name, value in values.items()]
    how = "按键" if channel in PHONE_CHANNELS else "按钮"
    return f"（{how}：{' · '.join(parts)}）"


def transcript_lines(transcript: Any, channel: str,
                     labels: Mapping[str, Mapping[Any, str]] | None = None) -> list[TranscriptLine]:
    """The conversation for the handoff screen: the person's words as said, a key or button as
    what it meant, a silent turn as "（没有说话）"."""
    lines = []
    for role, text in transcript or ():
        text = str(text or "")
        if role != "user":
            lines.append(TranscriptLine(role, text))
        elif not text.strip():
            lines.append(TranscriptLine(role, SILENCE_ZH, label=True))
        elif (described := payload_label(text, channel, labels)) is not None:
            lines.append(TranscriptLine(role, described, label=True))
        else:
            lines.append(TranscriptLine(role, text))
    return lines


def handed_over_in_silence(reason: str, transcript: Any) -> bool:
    """True when a "user_request" handoff came from the phone line giving up on a silent caller
    (no input → "/request_human"), not from the person asking: the turn before it was silence.
    (Silence at a phone menu never reaches the transcript; channels/phone_call.py would have to
    say so for that case.)"""
    if reason != "user_request":
        return False
    said = [str(text or "").strip() for role, text in transcript or () if role == "user"]
    if not said or said[-1] != "/request_human":
        return False
    before = said[:-1]
    return bool(before) and before[-1] == ""
