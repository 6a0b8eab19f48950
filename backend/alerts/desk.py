"""AlertDesk: the DB-backed care-alert service.

Ingest runs the pure engine (backend.alerts.engine) on each household's persisted state inside
one transaction that also stores the readings, writes alerts and their events, queues the SMS in
the outbox and the calls / 119 posts / SLA checks as jobs. A crash before commit loses nothing
(the sender retries the batch; stored readings are skipped as duplicates), a crash after commit
loses nothing either (the jobs and outbox rows are durable). Deadlines are columns on the alert
and `alert.sla` jobs with run_at, so they survive restarts; the clock is injected.

Jobs (register `AlertDesk.job_handlers()` with the worker):
  alert.check        {household_id}      time rules (no water, no door, offline) at their due time
  alert.notify       {alert_id}          tell people at the end of quiet hours
  alert.sla          {alert_id}          escalate when nobody acknowledged / visited in time
  alert.call         {alert_id, contact_id}   automated voice call (CallPlacer)
  alert.integration  {alert_id, name}    119 and other integration points
"""
from __future__ import annotations

import json
import logging
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from assistant.ports import Clock
from backend import jobs
from backend.alerts.dispatch import CallPlacer, Integration, call_twiml
from backend.alerts.engine import AlertChange, AlertEngine, HouseholdState, Reading, ReadingError
from backend.alerts.households import Household
from backend.alerts.rules import AlertRules, RulePolicy
from backend.alerts.store import (
    ACTIVE_STATES,
    Alert,
    AlertEvent,
    CareContact,
    CareDevice,
    CareHousehold,
    SensorReading,
    UnknownReading,
)
from backend.crypto import FieldCipher
from backend.models import append_audit
from backend.outbox import Outbox

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_BATCH = 500
ROLE_LABELS = {"grid_worker": "网格员", "backup_grid_worker": "网格员", "community_leader": "社区负责人",
               "social_worker": "社工", "doctor": "家庭医生", "property": "物业", "family": "家属", "senior": "老人"}
DEVICE_LABELS = {"water": "水表", "electricity": "电表", "gas": "燃气报警器", "door": "门磁",
                 "heart_rate": "手环", "bed": "床垫"}
ACK_WORDS = {"1", "收到", "已收到", "好", "好的", "确认", "收到了", "ok"}
VISIT_WORDS = {"2", "已到", "到了", "已上门", "到"}
STAFF_ROLES = frozenset({"grid_worker", "backup_grid_worker", "community_leader", "social_worker", "doctor",
                         "property"})
_PUNCT_RE = re.compile(r"[\s。，,.!！?？~～【】\[\]]+")
_REPLY_RE = re.compile(r"([^\d\s#:：,，]+|\d)(?:[\s#:：,，]*(\d{1,9}))?[\s。.!！~～]*")


class BatchError(ValueError):
    """A malformed batch: `index` is the reading at fault (None: the batch itself)."""

    def __init__(self, index: int | None, field_name: str, message: str) -> None:
        super().__init__(message)
        self.index, self.field = index, field_name


class TokenError(PermissionError):
    pass


@dataclass(frozen=True)
class IngestResult:
    accepted: int
    duplicates: int
    kept_aside: int
    alerts: tuple[int, ...]


@dataclass(frozen=True)
class AckResult:
    alert_id: int
    action: str  # acknowledged / already / visited / senior_ok / senior_transfer / family_reply
    reply: str  # what to answer (SMS text or what the call says)


@dataclass(frozen=True)
class AlertView:
    id: int
    household: str
    rule: str
    level: str
    state: str
    raised_at: datetime
    escalation_step: int
    ack_due_at: datetime | None
    visit_due_at: datetime | None
    events: tuple[tuple[str, str | None, str, str, datetime], ...]  # event, from, to, actor, at


@dataclass
class _Tx:
    session: Session
    now: datetime
    audits: list[dict[str, Any]] = field(default_factory=list)
    contacts: dict[int, list[_Person]] = field(default_factory=dict)

    def audit(self, actor: str, action: str, entity_type: str, entity_id: int | None, **detail: Any) -> None:
        self.audits.append({"actor": actor[:64], "action": action, "entity_type": entity_type,
                            "entity_id": entity_id, "detail": detail})


@dataclass(frozen=True)
class _Person:
    id: int
    role: str
    name: str
    phone: str | None


def parse_reply(reply: str) -> tuple[str, int | None] | None:
    """"收到" / "1" / "收到 17" / "已到#17" → (word, alert number or None). A grid worker may
    look after several homes with alerts open at once; the number picks one (else the latest)."""
    text = unicodedata.normalize("NFKC", reply or "").strip().lower()
    match = _REPLY_RE.fullmatch(text)
    if match is None:
        return None
    return _PUNCT_RE.sub("", match.group(1)), int(match.group(2)) if match.group(2) else None


def token_hash(cipher: FieldCipher, token: str) -> str:
    return cipher.blind_index(token, "device_token")


class AlertDesk:
    def __init__(self, sessions: Callable[[], Session], cipher: FieldCipher, clock: Clock, outbox: Outbox,
                 rules: AlertRules, *, integrations: Mapping[str, Integration] | None = None,
                 call_placer: CallPlacer | None = None, public_base_url: str | None = None) -> None:
        self._sessions = sessions
        self._cipher = cipher
        self._clock = clock
        self.outbox = outbox
        self.rules = rules
        self.engine = AlertEngine(rules)
        self.integrations = dict(integrations or {})
        self.call_placer = call_placer
        self.public_base_url = (public_base_url or "").rstrip("/") or None

    # --- plumbing ----------------------------------------------------------------------------------
    def now(self) -> datetime:
        return self._clock().astimezone(UTC)

    def run(self, work: Callable[[_Tx], T], attempts: int = 5) -> T:
        """`work` in one transaction, audit entries appended last (lock order data → audit head);
        unique clashes and Postgres deadlocks/serialisation failures run it again."""
        for attempt in range(attempts):
            try:
                with self._sessions() as session, session.begin():
                    tx = _Tx(session, self.now())
                    result = work(tx)
                    for entry in tx.audits:
                        append_audit(session, at=tx.now, **entry)
                    return result
            except (IntegrityError, OperationalError) as exc:
                sqlstate = getattr(exc.orig, "sqlstate", None)
                if not (isinstance(exc, IntegrityError) or sqlstate in {"40001", "40P01"}) or attempt + 1 == attempts:
                    raise
        raise AssertionError("unreachable")

    def text(self, key: str, **values: Any) -> str:
        return self.rules.texts[key].format(**values)

    def job_handlers(self) -> dict[str, Callable[[Mapping[str, Any]], None]]:
        return {
            "alert.check": lambda p: self.run_check(int(p["household_id"])),
            "alert.notify": lambda p: self.notify_due(int(p["alert_id"])),
            "alert.sla": lambda p: self.check_sla(int(p["alert_id"])),
            "alert.call": lambda p: self.place_call(int(p["alert_id"]), int(p["contact_id"])),
            "alert.integration": lambda p: self.send_integration(int(p["alert_id"]), str(p["name"])),
        }

    # --- registration ------------------------------------------------------------------------------
    def register_households(self, households: Mapping[str, Household], actor: str = "system:import") -> int:
        def work(tx: _Tx) -> int:
            for household in households.values():
                self._upsert_household(tx, household, actor)
            return len(households)

        return self.run(work)

    def _upsert_household(self, tx: _Tx, household: Household, actor: str) -> CareHousehold:
        s, c = tx.session, self._cipher
        row = s.scalar(select(CareHousehold).where(CareHousehold.code == household.id))
        created = row is None
        if row is None:
            row = CareHousehold(code=household.id, created_at=tx.now)
            s.add(row)
        row.grid_id, row.senior_gender = household.grid, household.gender
        row.address_enc = c.encrypt(household.address or None)
        row.senior_name_enc = c.encrypt(household.senior.name)
        row.updated_at = tx.now
        s.flush()
        existing = {(p.role, p.position): p for p in s.scalars(select(CareContact).where(
            CareContact.household_id == row.id))}
        wanted: dict[tuple[str, int], Any] = {}
        positions: dict[str, int] = {}
        for contact in (household.senior, *household.contacts):
            position = positions.get(contact.role, 0)
            positions[contact.role] = position + 1
            wanted[(contact.role, position)] = contact
        for key, contact in wanted.items():
            person = existing.pop(key, None) or CareContact(household_id=row.id, role=key[0], position=key[1])
            person.name_enc = c.encrypt(contact.name)
            person.phone_enc = c.encrypt(contact.phone) if contact.phone else None
            person.phone_hash = c.blind_index(contact.phone, "phone") if contact.phone else None
            person.relation = contact.relation
            s.add(person)
        for stale in existing.values():
            s.delete(stale)
        for device in household.devices:
            self._upsert_device(tx, row, device.device, device.kind, device.token)
        s.flush()
        tx.audit(actor, "create" if created else "update", "care_household", row.id,
                 contacts=len(wanted), devices=len(household.devices))
        return row

    def register_device(self, household_code: str, device_uid: str, kind: str, token: str | None = None,
                        actor: str = "system:import") -> None:
        def work(tx: _Tx) -> None:
            row = tx.session.scalar(select(CareHousehold).where(CareHousehold.code == household_code))
            if row is None:
                raise KeyError(household_code)
            device = self._upsert_device(tx, row, device_uid, kind, token)
            tx.audit(actor, "update", "care_device", device.id, household=household_code, kind=kind)

        self.run(work)

    def _upsert_device(self, tx: _Tx, household: CareHousehold, uid: str, kind: str, token: str | None) -> CareDevice:
        device = tx.session.scalar(select(CareDevice).where(CareDevice.device_uid == uid))
        if device is None:
            device = CareDevice(device_uid=uid, created_at=tx.now)
            tx.session.add(device)
        device.household_id, device.kind = household.id, kind
        if token:
            device.token_hash = token_hash(self._cipher, token)
        tx.session.flush()
        return device

    # --- ingest ------------------------------------------------------------------------------------
    def ingest(self, token: str, items: Sequence[Any]) -> IngestResult:
        """Validates the whole batch first (a malformed reading refuses the batch with its index),
        then stores and judges it in one transaction."""
        if not isinstance(items, list | tuple) or not items:
            raise BatchError(None, "readings", "must be a non-empty list")
        if len(items) > MAX_BATCH:
            raise BatchError(None, "readings", f"at most {MAX_BATCH} readings per request")
        readings = []
        for index, item in enumerate(items):
            try:
                readings.append(Reading.from_json(item, household_required=False))
            except ReadingError as exc:
                raise BatchError(index, exc.field, str(exc)) from None
        hashed = token_hash(self._cipher, token) if token else None

        def work(tx: _Tx) -> IngestResult:
            owner = tx.session.scalar(select(CareDevice).where(CareDevice.token_hash == hashed)) if hashed else None
            if owner is None:
                raise TokenError("unknown device token")
            return self._ingest_in(tx, owner, readings)

        return self.run(work)

    def _ingest_in(self, tx: _Tx, owner: CareDevice, readings: list[Reading]) -> IngestResult:
        s = tx.session
        household = s.scalar(select(CareHousehold).where(CareHousehold.id == owner.household_id).with_for_update())
        assert household is not None
        devices = {d.device_uid: d for d in s.scalars(select(CareDevice).where(
            CareDevice.device_uid.in_({r.device for r in readings})))}
        mine: list[tuple[CareDevice, Reading]] = []
        aside = 0
        for r in readings:
            device = devices.get(r.device)
            reason = None
            if device is None:
                reason = "unknown_device"
            elif device.household_id != household.id or (r.household and r.household != household.code):
                reason = "other_household"
            elif device.kind != r.kind:
                reason = "kind_mismatch"
            if reason:
                aside += 1
                s.add(UnknownReading(token_device_id=owner.id, device_uid=r.device, household_code=r.household or None,
                                     kind=r.kind, value=r.value, ts=r.ts, reason=reason, received_at=tx.now))
                continue
            assert device is not None
            mine.append((device, r))
        stored = set()
        if mine:
            ids = {d.id for d, _ in mine}
            stamps = {r.ts for _, r in mine}
            stored = {(d, ts.astimezone(UTC)) for d, ts in s.execute(select(SensorReading.device_id, SensorReading.ts)
                      .where(SensorReading.device_id.in_(ids), SensorReading.ts.in_(stamps)))}
        fresh: list[tuple[CareDevice, Reading]] = []
        for device, r in sorted(mine, key=lambda pair: pair[1].ts):
            key = (device.id, r.ts.astimezone(UTC))
            if key in stored:
                continue
            stored.add(key)
            fresh.append((device, r))
            s.add(SensorReading(household_id=household.id, device_id=device.id, kind=r.kind, value=r.value,
                                ts=r.ts, received_at=tx.now))
            if device.last_seen_at is None or r.ts > device.last_seen_at:
                device.last_seen_at = r.ts
        raised: list[int] = []
        if fresh:
            state = self._state(household)
            changes: list[AlertChange] = []
            for _, r in fresh:
                changes.extend(self.engine.observe(state, Reading(household.code, r.device, r.kind, r.value, r.ts),
                                                   tx.now))
            self._save_state(tx, household, state)
            raised = self._apply(tx, household, changes)
        tx.audit(f"device:{owner.device_uid}", "create", "sensor_readings", household.id,
                 accepted=len(fresh), duplicates=len(mine) - len(fresh), kept_aside=aside)
        return IngestResult(len(fresh), len(mine) - len(fresh), aside, tuple(raised))

    def _state(self, household: CareHousehold) -> HouseholdState:
        if household.engine_state:
            return HouseholdState.from_json(household.engine_state)
        return HouseholdState(household.code)

    def _save_state(self, tx: _Tx, household: CareHousehold, state: HouseholdState) -> None:
        household.engine_state = state.to_json()
        household.updated_at = tx.now
        due = self.engine.next_due(state)
        if due is not None and due <= tx.now:
            due = tx.now + timedelta(seconds=1)
        if due is not None and due != household.next_check_at:
            jobs.enqueue_in(tx.session, "alert.check", {"household_id": household.id}, due,
                            f"alert.check:{household.id}", tx.now)
        household.next_check_at = due

    def run_check(self, household_id: int) -> None:
        """Job alert.check: the time rules at now (the clock, not the readings)."""

        def work(tx: _Tx) -> None:
            household = tx.session.scalar(select(CareHousehold).where(CareHousehold.id == household_id)
                                          .with_for_update())
            if household is None:
                return
            state = self._state(household)
            changes = self.engine.tick(state, tx.now)
            household.next_check_at = None  # this job is done with; re-armed below if still due
            self._save_state(tx, household, state)
            self._apply(tx, household, changes)

        self.run(work)

    # --- alerts ------------------------------------------------------------------------------------
    def _apply(self, tx: _Tx, household: CareHousehold, changes: list[AlertChange]) -> list[int]:
        raised = []
        for change in changes:
            if change.event == "raised":
                alert = self._raise(tx, household, change)
                if alert is not None:
                    raised.append(alert.id)
            elif change.event == "cleared":
                self._cleared(tx, household, change)
        return raised

    def _raise(self, tx: _Tx, household: CareHousehold, change: AlertChange) -> Alert | None:
        s = tx.session
        dedupe = f"{household.id}:{change.key}:{change.at.astimezone(UTC).isoformat()}"
        if s.scalar(select(Alert.id).where(Alert.dedupe_key == dedupe)) is not None:
            return None
        policy = self.rules.policy(change.rule)
        notify_at = max(self.rules.notify_at(policy, tx.now), tx.now)
        alert = Alert(household_id=household.id, rule=change.rule, alert_key=change.key, level=change.level,
                      state="open", dedupe_key=dedupe, detail=json.dumps(dict(change.detail), ensure_ascii=False),
                      raised_at=change.at, notify_at=notify_at, notified_roles="[]", escalation_step=0,
                      created_at=tx.now, updated_at=tx.now)
        s.add(alert)
        s.flush()
        self._event(tx, alert, "raised", None, "open", "sensor", {"detail": dict(change.detail)})
        tx.audit("system:alerts", "create", "care_alert", alert.id, rule=change.rule, level=change.level)
        for name in policy.integrations:  # 119 never waits
            jobs.enqueue_in(s, "alert.integration", {"alert_id": alert.id, "name": name}, tx.now,
                            f"alert.integration:{alert.id}:{name}", tx.now)
        if notify_at <= tx.now:
            self._notify_initial(tx, alert, household)
        else:
            jobs.enqueue_in(s, "alert.notify", {"alert_id": alert.id}, notify_at, f"alert.notify:{alert.id}", tx.now)
        return alert

    def _cleared(self, tx: _Tx, household: CareHousehold, change: AlertChange) -> None:
        alert = tx.session.scalar(select(Alert).where(
            Alert.household_id == household.id, Alert.alert_key == change.key, Alert.state.in_(ACTIVE_STATES))
            .order_by(Alert.id.desc()).limit(1).with_for_update())
        if alert is None:
            return
        alert.cleared_at = change.at
        policy = self.rules.policy(alert.rule)
        closes = policy.clear_closes
        if alert.notified_at is not None:
            what = self._what(alert, household)
            people = self._people(tx, household)
            for person in people:
                if person.role not in json.loads(alert.notified_roles) or not person.phone or person.role == "senior":
                    continue
                key = "family_cleared" if person.role == "family" else "staff_cleared"
                self._sms(tx, alert, person, self.text(key, senior=self._senior(household), what=what,
                                                       alert=alert.id), "cleared")
        self._event(tx, alert, "cleared", alert.state, "closed" if closes else alert.state, "sensor",
                    {"at": change.at.isoformat()})
        if closes:
            alert.state, alert.closed_at = "closed", tx.now
        alert.updated_at = tx.now

    def _notify_initial(self, tx: _Tx, alert: Alert, household: CareHousehold) -> None:
        policy = self.rules.policy(alert.rule)
        people = self._people(tx, household)
        what = self._what(alert, household)
        staff = [p for p in people if p.role in policy.notify and p.role in STAFF_ROLES]
        who = "、".join(f"{ROLE_LABELS[p.role]}{p.name}" for p in staff) or self.text("who_default")
        told = []
        for person in people:
            if person.role not in policy.notify or not person.phone or person.role == "senior":
                continue  # the senior is never texted: at most the check-in call
            if person.role == "family":
                body = self.text("family_severe" if alert.level == "severe" else "family_raised",
                                 senior=self._senior(household), what=what, who=who)
            else:
                body = self._staff_text(alert, household, policy, what)
            self._sms(tx, alert, person, body, "raised")
            told.append(person.id)
        for person in people:
            if person.role in policy.call and person.phone:
                jobs.enqueue_in(tx.session, "alert.call", {"alert_id": alert.id, "contact_id": person.id}, tx.now,
                                f"alert.call:{alert.id}:{person.id}", tx.now)
        alert.notified_at = tx.now
        alert.notified_roles = json.dumps([*policy.notify, *policy.call])
        alert.ack_due_at = policy.ack_deadline(tx.now, 0)
        alert.visit_due_at = policy.visit_deadline(tx.now)
        self._move(tx, alert, "notified", "notified", "system:alerts", {"contacts": told})
        self._schedule_sla(tx, alert)

    def _staff_text(self, alert: Alert, household: CareHousehold, policy: RulePolicy, what: str) -> str:
        if policy.sla.ack_minutes is not None:
            visit = self.text("staff_todo_visit", visit=_n(policy.sla.visit_minutes)) \
                if policy.sla.visit_minutes is not None else ""
            todo = self.text("staff_todo_sla", ack=_n(policy.sla.ack_minutes), visit=visit)
        else:
            todo = self.text("staff_todo_none")
        return self.text("staff_raised", alert=alert.id, grid=household.grid_id, senior=self._senior(household),
                         address=self._cipher.decrypt(household.address_enc) or "", what=what, todo=todo)

    def _what(self, alert: Alert, household: CareHousehold) -> str:
        detail = json.loads(alert.detail or "{}")
        values = {"hours": "", "percent": "", "value": "", "minutes": "", **detail}
        values["device_label"] = DEVICE_LABELS.get(detail.get("kind", ""), "设备")
        return self.text(f"what_{alert.rule}", **values)

    def _senior(self, household: CareHousehold) -> str:
        return self._cipher.decrypt(household.senior_name_enc)

    def _people(self, tx: _Tx, household: CareHousehold) -> list[_Person]:
        cached = tx.contacts.get(household.id)
        if cached is not None:
            return cached
        rows = tx.session.scalars(select(CareContact).where(CareContact.household_id == household.id)
                                  .order_by(CareContact.role, CareContact.position)).all()
        people = [_Person(r.id, r.role, self._cipher.decrypt(r.name_enc), self._cipher.decrypt(r.phone_enc))
                  for r in rows]
        tx.contacts[household.id] = people
        tx.audit("system:alerts", "read", "care_household", household.id, purpose="alert_notification")
        return people

    def _sms(self, tx: _Tx, alert: Alert, person: _Person, body: str, what: str) -> None:
        assert person.phone
        self.outbox.enqueue_in(tx.session, person.phone, body, f"care-alert:{alert.id}:{what}:{person.id}")

    def _event(self, tx: _Tx, alert: Alert, event: str, from_state: str | None, to_state: str, actor: str,
               note: Mapping[str, Any] | None = None) -> None:
        tx.session.add(AlertEvent(alert_id=alert.id, event=event, from_state=from_state, to_state=to_state,
                                  actor=actor[:64], note=json.dumps(dict(note), ensure_ascii=False) if note else None,
                                  at=tx.now))

    def _move(self, tx: _Tx, alert: Alert, to: str, event: str, actor: str,
              note: Mapping[str, Any] | None = None) -> None:
        self._event(tx, alert, event, alert.state, to, actor, note)
        alert.state, alert.updated_at = to, tx.now

    def _schedule_sla(self, tx: _Tx, alert: Alert) -> None:
        due = min((d for d in (alert.ack_due_at, alert.visit_due_at) if d is not None), default=None)
        if due is not None:
            jobs.enqueue_in(tx.session, "alert.sla", {"alert_id": alert.id}, due, f"alert.sla:{alert.id}", tx.now)

    def _locked_alert(self, tx: _Tx, alert_id: int) -> tuple[Alert, CareHousehold] | None:
        alert = tx.session.scalar(select(Alert).where(Alert.id == alert_id).with_for_update())
        if alert is None:
            return None
        household = tx.session.get(CareHousehold, alert.household_id)
        assert household is not None
        return alert, household

    def notify_due(self, alert_id: int) -> None:
        """Job alert.notify: quiet hours are over; tell people unless it cleared meanwhile."""

        def work(tx: _Tx) -> None:
            found = self._locked_alert(tx, alert_id)
            if found is None or found[0].state != "open":
                return
            self._notify_initial(tx, *found)

        self.run(work)

    def check_sla(self, alert_id: int) -> None:
        """Job alert.sla: escalate along the chain for each deadline that passed unanswered."""

        def work(tx: _Tx) -> None:
            found = self._locked_alert(tx, alert_id)
            if found is None:
                return
            alert, household = found
            if alert.state in ("closed", "visited", "open"):
                return
            policy = self.rules.policy(alert.rule)
            if alert.acknowledged_at is None and alert.ack_due_at is not None and alert.ack_due_at <= tx.now:
                self._escalate(tx, alert, household, policy, self.text("why_ack", minutes=_n(
                    (alert.ack_due_at - (alert.notified_at or alert.ack_due_at)).total_seconds() / 60)), "ack")
                assert alert.notified_at is not None
                alert.ack_due_at = policy.ack_deadline(alert.notified_at, alert.escalation_step) \
                    if alert.escalation_step < policy.max_step else None
            elif alert.visited_at is None and alert.visit_due_at is not None and alert.visit_due_at <= tx.now:
                self._escalate(tx, alert, household, policy,
                               self.text("why_visit", minutes=_n(policy.sla.visit_minutes or 0)), "visit")
                alert.visit_due_at = None
            self._schedule_sla(tx, alert)

        self.run(work)

    def _escalate(self, tx: _Tx, alert: Alert, household: CareHousehold, policy: RulePolicy, why: str,
                  reason: str) -> None:
        alert.escalation_step += 1
        roles = policy.escalation_roles(alert.escalation_step)
        what = self._what(alert, household)
        told = []
        for person in self._people(tx, household):
            if person.role in roles and person.phone:
                body = self.text("staff_escalated", alert=alert.id, grid=household.grid_id,
                                 senior=self._senior(household), what=what, why=why,
                                 address=self._cipher.decrypt(household.address_enc) or "")
                self._sms(tx, alert, person, body, f"escalated{alert.escalation_step}")
                told.append(person.id)
        alert.notified_roles = json.dumps(list(dict.fromkeys([*json.loads(alert.notified_roles), *roles])))
        self._move(tx, alert, "escalated", "escalated", "system:sla",
                   {"step": alert.escalation_step, "why": reason, "roles": list(roles), "contacts": told})
        tx.audit("system:sla", "update", "care_alert", alert.id, step=alert.escalation_step, why=reason)

    # --- acknowledgement -------------------------------------------------------------------------
    def acknowledge(self, phone: str, reply: str, channel: str, *, alert_id: int | None = None) -> AckResult | None:
        """An SMS reply ("1"/"收到", "2"/"已到"), or a key pressed on an alert call, from someone
        we told. None when it is not an answer to an alert (the channel goes on as usual)."""
        parsed = parse_reply(reply)
        if parsed is None:
            return None
        word, named = parsed
        if word not in ACK_WORDS and word not in VISIT_WORDS and not (channel == "voice" and word in {"0", "none"}):
            return None
        if named is not None:
            if alert_id is not None and named != alert_id:
                return None
            alert_id = named
        phone_hash = self._cipher.blind_index(phone, "phone") if phone else None
        if phone_hash is None:
            return None

        def work(tx: _Tx) -> AckResult | None:
            contacts = tx.session.scalars(select(CareContact).where(CareContact.phone_hash == phone_hash)).all()
            return self._answer(tx, contacts, word, channel, alert_id)

        return self.run(work)

    def acknowledge_contact(self, contact_id: int, reply: str, channel: str, alert_id: int) -> AckResult | None:
        """The alert call's key press: the call URL names the contact (signed by Twilio)."""
        word = _PUNCT_RE.sub("", unicodedata.normalize("NFKC", reply or "")).lower() or "none"

        def work(tx: _Tx) -> AckResult | None:
            contact = tx.session.get(CareContact, contact_id)
            return self._answer(tx, [contact] if contact else [], word, channel, alert_id)

        return self.run(work)

    def _answer(self, tx: _Tx, contacts: Sequence[CareContact], word: str, channel: str,
                alert_id: int | None) -> AckResult | None:
        if not contacts:
            return None
        by_household: dict[int, list[CareContact]] = {}
        for c in contacts:
            by_household.setdefault(c.household_id, []).append(c)
        query = select(Alert).where(Alert.household_id.in_(by_household), Alert.state.in_(
            ("notified", "escalated", "acknowledged"))).order_by(Alert.notified_at.desc(), Alert.id.desc())
        if alert_id is not None:
            query = query.where(Alert.id == alert_id)
        for alert in tx.session.scalars(query.with_for_update()).all():
            told = set(json.loads(alert.notified_roles))
            contact = next((c for c in by_household[alert.household_id] if c.role in told), None)
            if contact is None:
                continue
            household = tx.session.get(CareHousehold, alert.household_id)
            assert household is not None
            actor = f"{channel}:{contact.role}:{contact.id}"
            result = self._act(tx, alert, household, contact, word, actor)
            tx.audit(actor, "update", "care_alert", alert.id, outcome=result.action)
            return result
        return None

    def _act(self, tx: _Tx, alert: Alert, household: CareHousehold, contact: CareContact, word: str,
             actor: str) -> AckResult:
        if contact.role == "senior":
            if word == "1":
                self._event(tx, alert, "senior_ok", alert.state, alert.state, actor)
                if alert.level == "light":  # the check-in call answered "all is well"
                    self._move(tx, alert, "closed", "closed", actor, {"by": "senior_ok"})
                    alert.closed_at, alert.ack_due_at, alert.visit_due_at = tx.now, None, None
                return AckResult(alert.id, "senior_ok", self.text("call_thanks"))
            if word == "0":
                policy = self.rules.policy(alert.rule)
                self._escalate(tx, alert, household, policy, self.text("why_senior"), "senior")
                return AckResult(alert.id, "senior_transfer", self.text("call_transfer"))
            self._event(tx, alert, "senior_no_answer", alert.state, alert.state, actor)
            return AckResult(alert.id, "senior_no_answer", self.text("call_no_input"))
        if word not in ACK_WORDS and word not in VISIT_WORDS:  # no key pressed, or 0 from staff
            self._event(tx, alert, "no_answer", alert.state, alert.state, actor)
            return AckResult(alert.id, "no_answer", self.text("call_no_input"))
        if contact.role not in self.rules.ack_roles:
            self._event(tx, alert, "family_reply", alert.state, alert.state, actor)
            return AckResult(alert.id, "family_reply", self.text("family_reply"))
        name = self._cipher.decrypt(contact.name_enc)
        who = f"{ROLE_LABELS.get(contact.role, '')}{name}"
        if word in VISIT_WORDS:
            if alert.acknowledged_at is None:
                alert.acknowledged_at, alert.acknowledged_by = tx.now, actor
            alert.visited_at, alert.ack_due_at, alert.visit_due_at = tx.now, None, None
            self._move(tx, alert, "visited", "visited", actor)
            self._tell_family(tx, alert, household, "family_visited", who)
            return AckResult(alert.id, "visited", self.text("visit_ok", alert=alert.id))
        if alert.acknowledged_at is not None:
            return AckResult(alert.id, "already", self.text("ack_already", alert=alert.id))
        alert.acknowledged_at, alert.acknowledged_by, alert.ack_due_at = tx.now, actor, None
        self._move(tx, alert, "acknowledged", "acknowledged", actor)
        self._tell_family(tx, alert, household, "family_acknowledged", who)
        self._schedule_sla(tx, alert)
        return AckResult(alert.id, "acknowledged", self.text("ack_ok", alert=alert.id))

    def _tell_family(self, tx: _Tx, alert: Alert, household: CareHousehold, key: str, who: str) -> None:
        if "family" not in json.loads(alert.notified_roles):
            return
        for person in self._people(tx, household):
            if person.role == "family" and person.phone:
                self._sms(tx, alert, person, self.text(key, who=who, senior=self._senior(household)), key)

    def staff_action(self, alert_id: int, action: str, staff: str, note: str | None = None) -> str:
        """The staff console: acknowledge / visited / close, by a named member of staff."""
        if action not in {"acknowledge", "visited", "close"}:
            raise ValueError(f"unknown action {action}")
        actor = f"staff:{staff}"[:64]

        def work(tx: _Tx) -> str:
            found = self._locked_alert(tx, alert_id)
            if found is None:
                raise KeyError(alert_id)
            alert, household = found
            if alert.state == "closed":
                return alert.state
            who = f"工作人员{staff}"
            if action == "close":
                self._move(tx, alert, "closed", "closed", actor, {"note": note} if note else None)
                alert.closed_at, alert.ack_due_at, alert.visit_due_at = tx.now, None, None
            elif action == "visited":
                alert.acknowledged_at = alert.acknowledged_at or tx.now
                alert.acknowledged_by = alert.acknowledged_by or actor
                alert.visited_at, alert.ack_due_at, alert.visit_due_at = tx.now, None, None
                self._move(tx, alert, "visited", "visited", actor)
                self._tell_family(tx, alert, household, "family_visited", who)
            elif alert.acknowledged_at is None:
                alert.acknowledged_at, alert.acknowledged_by, alert.ack_due_at = tx.now, actor, None
                self._move(tx, alert, "acknowledged", "acknowledged", actor)
                self._tell_family(tx, alert, household, "family_acknowledged", who)
                self._schedule_sla(tx, alert)
            tx.audit(actor, "update", "care_alert", alert.id, outcome=action)
            return alert.state

        return self.run(work)

    def view(self, alert_id: int, actor: str) -> AlertView | None:
        def work(tx: _Tx) -> AlertView | None:
            alert = tx.session.get(Alert, alert_id)
            if alert is None:
                return None
            household = tx.session.get(CareHousehold, alert.household_id)
            assert household is not None
            events = tx.session.scalars(select(AlertEvent).where(AlertEvent.alert_id == alert.id)
                                        .order_by(AlertEvent.id)).all()
            tx.audit(actor, "read", "care_alert", alert.id)
            return AlertView(alert.id, household.code, alert.rule, alert.level, alert.state, alert.raised_at,
                             alert.escalation_step, alert.ack_due_at, alert.visit_due_at,
                             tuple((e.event, e.from_state, e.to_state, e.actor, e.at) for e in events))

        return self.run(work)

    # --- calls and integrations (jobs) ------------------------------------------------------------
    def place_call(self, alert_id: int, contact_id: int) -> None:
        """Job alert.call. Raises so the queue retries; a call already placed is not placed again."""
        if self.call_placer is None:
            raise jobs.PermanentJobError("voice calls are not configured (TWILIO_* settings)")

        def prepare(tx: _Tx) -> tuple[str, str] | None:
            found = self._locked_alert(tx, alert_id)
            contact = tx.session.get(CareContact, contact_id)
            if found is None or contact is None or found[0].state == "closed" or not contact.phone_enc:
                return None
            alert, household = found
            done = tx.session.scalars(select(AlertEvent.note).where(
                AlertEvent.alert_id == alert.id, AlertEvent.event == "call_placed")).all()
            if any(json.loads(n or "{}").get("contact") == contact.id for n in done):
                return None
            key = "gas_call" if alert.rule == "gas_leak" else "checkin_call"
            title = {"F": "阿姨", "M": "叔叔"}.get(household.senior_gender or "", "老人家")
            action = (f"{self.public_base_url}/webhooks/twilio/voice/alert?alert={alert.id}&contact={contact.id}"
                      if self.public_base_url else None)
            tx.audit("system:alerts", "read", "care_contact", contact.id, purpose="alert_call")
            return self._cipher.decrypt(contact.phone_enc), call_twiml(self.text(key, title=title), action)

        prepared = self.run(prepare)
        if prepared is None:
            return
        phone, twiml = prepared
        result = self.call_placer.place(phone, twiml)

        def record(tx: _Tx) -> None:
            alert = tx.session.get(Alert, alert_id)
            if alert is not None:
                self._event(tx, alert, "call_placed", alert.state, alert.state, "system:alerts",
                            {"contact": contact_id, "call_sid": result.call_sid})

        self.run(record)

    def integration_body(self, tx: _Tx, alert: Alert, household: CareHousehold, name: str) -> dict[str, Any]:
        people = self._people(tx, household)
        senior = next((p for p in people if p.role == "senior"), None)
        staff = next((p for p in people if p.role in self.rules.policy(alert.rule).escalation[:1]), None)
        return {
            "type": "care_alert", "version": 1, "idempotency_key": f"care-alert-{alert.id}-{name}",
            "alert_id": alert.id, "rule": alert.rule, "level": alert.level,
            "detected_at": alert.raised_at.astimezone(self.rules.timezone).isoformat(),
            "household": household.code, "grid": household.grid_id,
            "address": self._cipher.decrypt(household.address_enc) or "",
            "senior": {"name": senior.name, "phone": senior.phone} if senior else None,
            "contact": {"role": staff.role, "name": staff.name, "phone": staff.phone} if staff else None,
            "detail": json.loads(alert.detail or "{}"),
        }

    def send_integration(self, alert_id: int, name: str) -> None:
        integration = self.integrations.get(name)
        if integration is None:
            raise jobs.PermanentJobError(f"integration {name} is not configured")

        def prepare(tx: _Tx) -> dict[str, Any] | None:
            alert = tx.session.get(Alert, alert_id)
            if alert is None:
                return None
            done = tx.session.scalar(select(AlertEvent.id).where(
                AlertEvent.alert_id == alert.id, AlertEvent.event == f"sent_{name}"))
            if done is not None:
                return None
            household = tx.session.get(CareHousehold, alert.household_id)
            assert household is not None
            return self.integration_body(tx, alert, household, name)

        body = self.run(prepare)
        if body is None:
            return
        integration.send(body)

        def record(tx: _Tx) -> None:
            alert = tx.session.get(Alert, alert_id)
            if alert is not None:
                self._event(tx, alert, f"sent_{name}", alert.state, alert.state, "system:alerts")
                tx.audit("system:alerts", "create", "care_alert", alert.id, sent_to=name)

        self.run(record)


def _n(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def new_device_token() -> str:
    """A device token to print once for the installer; only its keyed hash is stored."""
    import secrets

    return secrets.token_urlsafe(24)
