"""通知广播: community notices by SMS and voice call.

Staff (console) or the CLI write a notice with an audience (a grid, a building, a list of
phones, everyone) and a channel (sms, voice, or each resident's preference); `preview` shows the
recipients, SMS segments and cost before anything is sent. At `send_at` (moved out of quiet
hours) job `notice.send` creates one delivery per resident phone (unique per notice: a job run
twice creates nothing twice), then queues each one: SMS through the outbox, calls through
outbound calls spaced at the configured calls per second and never within `min_gap_hours` of
another call to that person. On the call: 9 / "再听一遍" repeats, 0 reaches a person, 8 / "不要再打"
stops notice calls for good; hearing it to the end is recorded. Unanswered calls are tried again
(`notices.call_attempts`); TD/退订 and "不要再打" are honoured before every send.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select

from assistant.ports import HandoffRequest
from backend.alerts.unit import AlertUnit
from backend.infra import jobs
from backend.infra.models import Resident, SmsOptOut, SmsOutbox
from backend.infra.tx import TransactionRunner
from backend.messaging.outbox import Outbox
from backend.outreach.calls import OutboundCalls
from backend.outreach.checkins import Handoffs
from backend.outreach.policy import OutreachPolicy
from backend.outreach.prefs import Preferences
from backend.outreach.script import CallScript
from backend.outreach.store import DELIVERY_FINAL, Notice, NoticeDelivery, OutboundCall
from backend.outreach.texts import OutreachTexts, spoken_answer

SEND_JOB = "notice.send"
AUDIENCES = ("all", "grid", "building", "list")
CHANNELS = ("sms", "voice", "preference")
MAX_BODY = 500
GSM7 = set("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
           "¿abcdefghijklmnopqrstuvwxyzäöñüà")


def sms_segments(text: str) -> int:
    """How many SMS a text is billed as: 70 Chinese characters in one, 67 per part when longer
    (UCS-2); 160 / 153 for plain Latin text (GSM-7)."""
    if all(ch in GSM7 for ch in text):
        return 1 if len(text) <= 160 else math.ceil(len(text) / 153)
    return 1 if len(text) <= 70 else math.ceil(len(text) / 67)


@dataclass(frozen=True)
class Audience:
    kind: str = "all"
    grids: tuple[str, ...] = ()
    building: str | None = None  # part of an address: "阳光小区3栋"
    phones: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in AUDIENCES:
            raise ValueError(f"audience must be one of {AUDIENCES}")
        if self.kind == "grid" and not self.grids or self.kind == "building" and not self.building \
                or self.kind == "list" and not self.phones:
            raise ValueError(f"audience {self.kind} needs its grids / building / phones")

    def to_json(self) -> str:  # phones of a list are kept as blind indexes only (see `create`)
        return json.dumps({"kind": self.kind, "grids": list(self.grids), "building": self.building},
                          ensure_ascii=False)


@dataclass(frozen=True)
class NoticePreview:
    recipients: int
    by_channel: Mapping[str, int]
    segments: int
    sms_text: str
    cost_yuan: float
    opted_out: int


@dataclass
class NoticeReport:
    id: int
    title: str
    state: str
    channel: str
    send_at: datetime
    segments: int
    recipients: int
    states: dict[str, int] = field(default_factory=dict)  # delivered / listened / failed / opted_out / pending …
    repeats: int = 0
    asked_person: int = 0

    @property
    def done(self) -> bool:
        return self.recipients > 0 and sum(self.states.get(s, 0) for s in DELIVERY_FINAL) == self.recipients


class Notices:
    def __init__(self, runner: TransactionRunner, calls: OutboundCalls, outbox: Outbox, prefs: Preferences,
                 texts: OutreachTexts, policy: OutreachPolicy, handoffs: Handoffs | None = None) -> None:
        self.runner = runner
        self.calls = calls
        self.outbox = outbox
        self.prefs = prefs
        self.texts = texts
        self.policy = policy
        self.handoffs = handoffs
        self.cipher = calls.cipher
        calls.purposes["notice"] = self

    # --- writing and sending -------------------------------------------------------------------
    def sms_text(self, title: str, body: str) -> str:
        return self.texts.get("notice_sms", title=title, body=body)

    def preview(self, title: str, body: str, audience: Audience, channel: str) -> NoticePreview:
        self._check(title, body, channel)

        def work(unit: AlertUnit) -> NoticePreview:
            people = self._recipients(unit, audience)
            by: dict[str, int] = {}
            opted = 0
            for phone_hash, _ in people:
                ch = self._channel(unit, phone_hash, channel)
                by[ch] = by.get(ch, 0) + 1
                opted += self._opted_out(unit, phone_hash, ch)
            text = self.sms_text(title, body)
            segments = sms_segments(text)
            minutes = max(1, math.ceil(len(body) / 130 + 0.5))  # read at ~130 字/min, plus the menu
            cost = segments * by.get("sms", 0) * self.policy.sms_cost_per_segment \
                + minutes * by.get("voice", 0) * self.policy.call_cost_per_minute
            return NoticePreview(len(people), by, segments, text, round(cost, 2), opted)

        return self.runner.run(work)

    def create(self, title: str, body: str, audience: Audience, channel: str, actor: str,
               send_at: datetime | None = None, *, urgent: bool = False) -> int:
        """Schedules a notice; its deliveries are made when it is sent (an audience is who lives
        there then). A list audience is fixed now: its phones become deliveries at once. An urgent
        notice (a flood warning) is not held by quiet hours nor by the gap between calls."""
        self._check(title, body, channel)

        def work(unit: AlertUnit) -> int:
            at = max(send_at or unit.now, unit.now)
            notice = Notice(title=title, body=body, audience=audience.to_json(), channel=channel, state="scheduled",
                            send_at=at if urgent else self.policy.allowed(at), urgent=urgent,
                            segments=sms_segments(self.sms_text(title, body)), created_by=actor[:64],
                            created_at=unit.now, updated_at=unit.now)
            unit.session.add(notice)
            unit.session.flush()
            for phone in audience.phones:
                self._delivery(unit, notice, phone)
            jobs.enqueue_in(unit.session, SEND_JOB, {"notice_id": notice.id}, at, f"{SEND_JOB}:{notice.id}",
                            unit.now, new=True)
            unit.audit(actor, "create", notice.id, entity_type="notice", audience=audience.kind, channel=channel,
                       listed=len(audience.phones), urgent=urgent)
            return notice.id

        return self.runner.run(work)

    def send(self, notice_id: int) -> int:
        """Job notice.send: deliveries for the audience (once), each queued on its channel."""

        def work(unit: AlertUnit) -> int:
            notice = unit.session.get(Notice, notice_id, with_for_update=True)
            if notice is None or notice.state in ("cancelled", "sent"):
                return 0
            audience = json.loads(notice.audience)
            if audience["kind"] != "list":
                for _, phone in self._recipients(unit, Audience(audience["kind"], tuple(audience.get("grids") or ()),
                                                                audience.get("building"))):
                    self._delivery(unit, notice, phone)
            pending = unit.session.scalars(select(NoticeDelivery).where(
                NoticeDelivery.notice_id == notice.id, NoticeDelivery.state == "pending")
                .order_by(NoticeDelivery.id)).all()
            gap = timedelta(seconds=1.0 / max(self.calls.settings.calls_per_second, 0.01))
            start = self._when(notice, unit.now)
            for i, d in enumerate(pending):
                self._queue(unit, notice, d, start + gap * i)
            notice.state, notice.updated_at = "sending", unit.now
            return len(pending)

        return self.runner.run(work)

    def _queue(self, unit: AlertUnit, notice: Notice, d: NoticeDelivery, at: datetime) -> None:
        if self._opted_out(unit, d.phone_hash, d.channel):
            d.state, d.note = "opted_out", "before sending"
            return
        phone = self.cipher.decrypt(d.phone_enc)
        d.attempts += 1
        d.state, d.updated_at = "sending", unit.now
        if d.channel == "sms":
            row = self.outbox.enqueue_in(unit.session, phone, self.sms_text(notice.title, notice.body),
                                         f"notice:{notice.id}:{d.id}")
            d.sms_id = row.id if row is not None else None
            return
        # No more than one call in any `min_gap` to a person (this delivery's own retries aside).
        last = None if notice.urgent else unit.session.scalar(
            select(func.max(func.coalesce(OutboundCall.placing_at, OutboundCall.created_at))).where(
                OutboundCall.to_hash == d.phone_hash,
                ~((OutboundCall.purpose == "notice") & (OutboundCall.ref_id == d.id))))
        if last is not None and at < last + self.policy.min_gap:
            at = self.policy.allowed(last + self.policy.min_gap)
        language = self.prefs.language(unit, d.phone_hash)
        self.calls.queue_in(unit, "notice", d.id, d.attempts, phone, language, at)

    # CallPurpose
    def wanted(self, unit: AlertUnit, call: OutboundCall) -> bool:
        d = unit.session.get(NoticeDelivery, call.ref_id, with_for_update=True)
        if d is None or d.state in DELIVERY_FINAL:
            return False
        if self._opted_out(unit, d.phone_hash, "voice"):
            d.state, d.note, d.updated_at = "opted_out", "before the call", unit.now
            return False
        return True

    def ended(self, unit: AlertUnit, call: OutboundCall) -> None:
        d = unit.session.get(NoticeDelivery, call.ref_id, with_for_update=True)
        if d is not None and d.state == "listened" and self.calls.answered_by_machine(call):
            d.state, d.note = "delivered", "answering machine"  # it heard the menu's silence, not a person
            return
        if d is None or d.state in DELIVERY_FINAL or call.attempt != d.attempts:
            return
        answered = call.status == "completed" and not self.calls.answered_by_machine(call)
        if answered:
            d.state = "delivered"  # answered, hung up before the end
        elif d.attempts < self.policy.notice_call_attempts:
            notice = unit.session.get(Notice, d.notice_id)
            assert notice is not None
            self._queue(unit, notice, d, self._when(notice, unit.now + timedelta(
                minutes=self.policy.notice_retry_minutes)))
            return
        else:
            d.state, d.note = "failed", (call.status or "")[:200]
        d.updated_at = unit.now

    def answer(self, call_id: int, step: str, digits: str = "", speech: str = "", tries: int = 0) -> CallScript:
        def work(unit: AlertUnit) -> tuple[CallScript, int | None]:
            call = self.calls.get(unit, call_id)
            d = unit.session.get(NoticeDelivery, call.ref_id, with_for_update=True) if call else None
            notice = unit.session.get(Notice, d.notice_id) if d else None
            if call is None or d is None or notice is None:
                return CallScript((self.texts.get("notice_bye"),), "end"), None
            lang, t = call.language, self.texts
            body = (f"{notice.title}。{notice.body}",)
            if step == "start":
                return CallScript((t.get("notice_intro", lang), *body, t.get("notice_menu", lang)), "listen", lang,
                                  "menu"), None
            said = spoken_answer(digits, speech)
            if said == "repeat":
                d.repeats += 1
                return CallScript((*body, t.get("notice_menu", lang)), "listen", lang, "menu"), None
            if said == "stop":
                self.prefs.update(unit, d.phone_hash, "resident:voice", no_notice_calls=True)
                d.state, d.note, call.outcome = "opted_out", "during the call", "opted_out"
                return CallScript((t.get("notice_opted_out", lang),), "end", lang), None
            d.state, call.outcome, d.updated_at = "listened", "listened", unit.now
            if said == "person":
                d.asked_person, call.outcome = True, "person"
                return CallScript((t.get("call_transfer_later", lang),), "person", lang), d.id
            return CallScript((t.get("notice_bye", lang),), "end", lang), None

        script, person_for = self.runner.run(work)
        if person_for is not None and self.handoffs is not None:
            facts = self.calls.facts(call_id)
            receipt = self.handoffs(HandoffRequest(
                sender_id=f"notice:{person_for}", channel="voice", phone=facts.phone if facts else None, reason="user_request", urgent=False,
                transcript=(("bot", "社区通知电话"), ("user", "听完通知后按0找工作人员")), form_name=None,
                form_slots={"notice_delivery": person_for}, idempotency_key=f"notice-person:{person_for}"))
            return CallScript(script.say, "person", script.language, reference=receipt.reference)
        return script

    def stop_calls(self, phone: str, actor: str = "resident:sms") -> None:
        """"不要再打" by SMS: no more notice calls to this phone."""
        self.runner.run(lambda unit: self.prefs.update(unit, self.prefs.phone_hash(phone), actor,
                                                       no_notice_calls=True))

    # --- reports ---------------------------------------------------------------------------------
    def reports(self, notice_ids: Sequence[int] | None = None, limit: int = 50) -> list[NoticeReport]:
        def work(unit: AlertUnit) -> list[NoticeReport]:
            query = select(Notice).order_by(Notice.id.desc()).limit(limit)
            if notice_ids is not None:
                query = select(Notice).where(Notice.id.in_(list(notice_ids))).order_by(Notice.id)
            reports = {n.id: NoticeReport(n.id, n.title, n.state, n.channel, n.send_at, n.segments, 0)
                       for n in unit.session.scalars(query)}
            if not reports:
                return []
            # One grouped query for every notice on the page (a notice can have thousands of rows).
            grouped = (NoticeDelivery.notice_id, NoticeDelivery.state, NoticeDelivery.channel,
                       SmsOutbox.send_state, SmsOutbox.delivery_status)
            rows = unit.session.execute(
                select(*grouped, func.count(), func.sum(NoticeDelivery.repeats),
                       func.sum(case((NoticeDelivery.asked_person, 1), else_=0)))
                .outerjoin(SmsOutbox, SmsOutbox.id == NoticeDelivery.sms_id)
                .where(NoticeDelivery.notice_id.in_(list(reports)))
                .group_by(*grouped)).all()
            for notice_id, state, channel, send_state, delivery_status, count, repeats, person in rows:
                report = reports[notice_id]
                if channel == "sms" and state == "sending":
                    state = _sms_state(send_state, delivery_status)
                report.states[state] = report.states.get(state, 0) + count
                report.repeats += int(repeats or 0)
                report.asked_person += int(person or 0)
                report.recipients += count
            return list(reports.values())

        return self.runner.run(work)

    # --- helpers ---------------------------------------------------------------------------------
    def _when(self, notice: Notice, at: datetime) -> datetime:
        return at if notice.urgent else self.policy.allowed(at)

    def _check(self, title: str, body: str, channel: str) -> None:
        if not title.strip() or not body.strip():
            raise ValueError("a notice needs a title and a text")
        if len(title) > 40 or len(body) > MAX_BODY:
            raise ValueError(f"title ≤ 40 and text ≤ {MAX_BODY} characters")
        if channel not in CHANNELS:
            raise ValueError(f"channel must be one of {CHANNELS}")

    def _recipients(self, unit: AlertUnit, audience: Audience) -> list[tuple[str, str]]:
        """(phone hash, phone) of each resident in the audience, one per phone."""
        if audience.kind == "list":
            phones = audience.phones
        else:
            query = select(Resident.phone_enc, Resident.address_enc).where(Resident.phone_enc.is_not(None))
            if audience.kind == "grid":
                query = query.where(Resident.grid_id.in_(audience.grids))
            rows = unit.session.execute(query.order_by(Resident.id)).all()
            phones = tuple(self.cipher.decrypt(p) for p, address in rows if audience.kind != "building"
                           or (address and audience.building and audience.building in self.cipher.decrypt(address)))
            unit.audit("system:notices", "read", None, entity_type="resident", fields=["phone"], count=len(phones))
        seen: dict[str, str] = {}
        for phone in phones:
            seen.setdefault(self.prefs.phone_hash(phone), phone)
        return list(seen.items())

    def _delivery(self, unit: AlertUnit, notice: Notice, phone: str) -> None:
        phone_hash = self.prefs.phone_hash(phone)
        exists = unit.session.scalar(select(NoticeDelivery.id).where(
            NoticeDelivery.notice_id == notice.id, NoticeDelivery.phone_hash == phone_hash))
        if exists is None:
            unit.session.add(NoticeDelivery(notice_id=notice.id, phone_hash=phone_hash,
                                            phone_enc=self.cipher.encrypt(phone),
                                            channel=self._channel(unit, phone_hash, notice.channel), state="pending",
                                            attempts=0, repeats=0, asked_person=False, created_at=unit.now,
                                            updated_at=unit.now))
            unit.session.flush()

    def _channel(self, unit: AlertUnit, phone_hash: str, channel: str) -> str:
        if channel != "preference":
            return channel
        pref = self.prefs.find(unit, phone_hash)
        return pref.notice_channel if pref is not None and pref.notice_channel in ("sms", "voice") else "sms"

    def _opted_out(self, unit: AlertUnit, phone_hash: str, channel: str) -> bool:
        if channel == "sms":
            return bool(unit.session.scalar(select(SmsOptOut.opted_out).where(SmsOptOut.phone_hash == phone_hash)))
        pref = self.prefs.find(unit, phone_hash)
        return bool(pref is not None and pref.no_notice_calls)


def _sms_state(send_state: str | None, delivery_status: str | None) -> str:
    if send_state == "suppressed":
        return "opted_out"
    if send_state == "failed":
        return "failed"
    if delivery_status == "delivered":
        return "delivered"
    return "sending"


def audience_from(spec: Mapping[str, Any]) -> Audience:
    """An audience from a CLI file or a form: {"kind": "grid", "grids": [...]} …"""
    return Audience(str(spec.get("kind") or "all"), tuple(str(g) for g in spec.get("grids") or ()),
                    spec.get("building") or None, tuple(str(p) for p in spec.get("phones") or ()))
