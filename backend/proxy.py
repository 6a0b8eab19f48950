"""Family proxy grants: a child may act for an elderly parent only after the parent agreed.

Life of a grant: the child fills the `family_proxy` form (a proxy_request case) → `request`
creates a grant in `pending_consent` and texts the parent → the parent replies "1"/"同意" from
their own phone, presses 1 on a call, or confirms in person with staff → `active` until
`expires_at` → `expired`, or earlier `revoked` ("取消代办", by either side or staff) or
`declined`. Every transition is a StatusEvent row and an audit entry; every case a proxy
submits in the parent's name is recorded and texted to the parent.

Phones are stored as blind indexes (for matching) plus SM4 text (to send SMS); never in clear.
"""
from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import ForeignKey, String, Text, or_, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Mapped, Session, mapped_column

from assistant.ports import (
    ActingForRefused,
    CaseReceipt,
    CaseRequest,
    Clock,
    HandoffRequest,
    Person,
    ProgressItem,
    ResidentRecord,
    ServiceBackend,
)
from backend.crypto import FieldCipher
from backend.models import Application, Base, Resident, StatusEvent, Timestamps, append_audit

log = logging.getLogger(__name__)

SCOPES: tuple[str, ...] = ("apply", "book", "view", "alert_calls")
SCOPE_LABELS_ZH: dict[str, str] = {
    "apply": "办事",
    "book": "预约服务",
    "view": "查进度",
    "alert_calls": "接紧急电话",
}
# Which scope a case kind needs when a proxy submits it. Reports (报修) count as 办事.
SCOPE_BY_KIND: dict[str, str] = {"application": "apply", "ticket": "apply", "booking": "book"}
RELATION_LABELS_ZH: dict[str, str] = {
    "son": "儿子", "daughter": "女儿", "spouse": "老伴", "grandchild": "孙辈", "child": "子女", "other": "亲属",
}
STATUSES: tuple[str, ...] = ("pending_consent", "active", "revoked", "expired", "declined")
OPEN_STATUSES = ("pending_consent", "active")
CONSENT_CHANNELS = ("sms", "dtmf", "staff")
ENTITY_TYPE = "proxy_grant"


class ProxyGrant(Timestamps, Base):
    """One parent's permission for one family member (by phone) to act in some scopes."""

    __tablename__ = "proxy_grants"

    id: Mapped[int] = mapped_column(primary_key=True)
    # The proxy_request case this grant came from; one grant per case (idempotent request).
    request_reference: Mapped[str | None] = mapped_column(String(8), unique=True)
    senior_resident_id: Mapped[int | None] = mapped_column(
        ForeignKey("residents.id", ondelete="SET NULL"), index=True
    )
    # Consent is only accepted from this phone (or in person), so it is kept apart from the
    # resident record, which may change later.
    senior_phone_hash: Mapped[str] = mapped_column(String(64), index=True)
    senior_phone_enc: Mapped[str] = mapped_column(Text)
    proxy_resident_id: Mapped[int | None] = mapped_column(
        ForeignKey("residents.id", ondelete="SET NULL"), index=True
    )
    proxy_phone_hash: Mapped[str] = mapped_column(String(64), index=True)
    proxy_phone_enc: Mapped[str] = mapped_column(Text)
    relation: Mapped[str] = mapped_column(String(16))
    scopes: Mapped[str] = mapped_column(String(64))  # comma-separated, sorted, from SCOPES
    status: Mapped[str] = mapped_column(String(16), index=True)
    # pending_consent: the consent deadline; active: the end of the grant.
    expires_at: Mapped[datetime]
    consent_channel: Mapped[str | None] = mapped_column(String(16))
    consented_at: Mapped[datetime | None]
    consented_by: Mapped[str | None] = mapped_column(String(64))  # "senior" or "staff:<id>"
    ended_at: Mapped[datetime | None]  # revoked / declined / expired at
    revoked_by: Mapped[str | None] = mapped_column(String(64))  # senior / proxy / staff:<id> / superseded

    @property
    def scope_set(self) -> frozenset[str]:
        return frozenset(filter(None, self.scopes.split(",")))


class ProxyNotification(Base):
    """A message sent because of a grant (consent request, outcome, a case a proxy filed).
    Holds no text: the outbox has it; `dedupe_key` makes each message happen once."""

    __tablename__ = "proxy_notifications"

    id: Mapped[int] = mapped_column(primary_key=True)
    grant_id: Mapped[int] = mapped_column(ForeignKey("proxy_grants.id", ondelete="CASCADE"), index=True)
    event: Mapped[str] = mapped_column(String(32))
    recipient: Mapped[str] = mapped_column(String(16))  # senior / proxy
    case_reference: Mapped[str | None] = mapped_column(String(8))
    dedupe_key: Mapped[str] = mapped_column(String(120), unique=True)
    created_at: Mapped[datetime]


# --- ports -------------------------------------------------------------------------------------
class Notifier(Protocol):
    """Outbound SMS. The real one queues into the outbox; `dedupe_key` repeated = sent once."""

    def send_sms(self, phone: str, text: str, dedupe_key: str) -> None: ...


@runtime_checkable
class TransactionalNotifier(Notifier, Protocol):
    """A notifier that can queue inside the caller's transaction (the outbox can)."""

    def send_sms_in(self, session: Session, phone: str, text: str, dedupe_key: str) -> None: ...


class OutboxNotifier:
    """Adapter for backend.outbox.Outbox (duck-typed: enqueue / enqueue_in)."""

    def __init__(self, outbox: Any) -> None:
        self.outbox = outbox

    def send_sms(self, phone: str, text: str, dedupe_key: str) -> None:
        self.outbox.enqueue(phone, text, dedupe_key)

    def send_sms_in(self, session: Session, phone: str, text: str, dedupe_key: str) -> None:
        self.outbox.enqueue_in(session, phone, text, dedupe_key)


@dataclass
class RecordingNotifier:
    """For tests and dry runs: keeps what would have been sent, once per dedupe key."""

    sent: list[tuple[str, str, str]] = field(default_factory=list)

    def send_sms(self, phone: str, text: str, dedupe_key: str) -> None:
        if all(key != dedupe_key for _, _, key in self.sent):
            self.sent.append((phone, text, dedupe_key))

    def to(self, phone: str) -> list[str]:
        return [text for p, text, _ in self.sent if p == phone]


# --- values ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProxyPolicy:
    grant_days: int = 365
    consent_days: int = 7
    default_scopes: tuple[str, ...] = ("apply", "book", "view")
    max_pending_per_senior: int = 3  # a stranger cannot flood a parent with consent texts

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ProxyPolicy:
        section = config.get("proxy") or {}
        scopes = tuple(section.get("default_scopes", cls.default_scopes))
        _check_scopes(scopes)
        return cls(
            grant_days=int(section.get("grant_days", cls.grant_days)),
            consent_days=int(section.get("consent_days", cls.consent_days)),
            default_scopes=scopes,
            max_pending_per_senior=int(section.get("max_pending_per_senior", cls.max_pending_per_senior)),
        )


@dataclass(frozen=True)
class GrantView:
    """A grant as callers see it: no phones."""

    id: int
    status: str
    relation: str
    scopes: tuple[str, ...]
    expires_at: datetime
    request_reference: str | None
    consent_channel: str | None
    consented_at: datetime | None
    revoked_by: str | None


@dataclass(frozen=True)
class Decision:
    """Whether a phone may act for a resident in a scope. `reason` is a code (see REFUSALS),
    `how_to_ask` the sentence that tells a refused family member how to get permission."""

    allowed: bool
    reason: str
    how_to_ask: str | None = None
    grant_id: int | None = None


@dataclass(frozen=True)
class SmsOutcome:
    """What an incoming SMS did to grants. handled=False: not about grants, give it to the
    assistant as a normal message."""

    handled: bool
    reply: str | None = None
    grant_ids: tuple[int, ...] = ()


class ProxyError(Exception):
    """A grant operation that is not allowed (wrong phone, wrong state)."""


# --- texts residents read (plain Chinese, one SMS segment each where possible) -------------------
REFUSALS: dict[str, str] = {
    "no_grant": "您还没有老人的代办授权。请说“家属代办”，留下老人电话，老人短信回复1同意后就能办。",
    "pending_consent": "老人还没有同意代办。请让老人回复短信1，或带老人到社区服务站当面确认。",
    "scope_missing": "老人的授权里没有{scope}。请说“家属代办”重新申请，老人同意后就能办。",
    "expired": "您的代办授权已经过期。请说“家属代办”重新申请，老人同意后就能办。",
    "revoked": "老人已经取消了您的代办授权。需要的话请说“家属代办”重新申请。",
    "declined": "老人没有同意代办。需要的话请和老人商量后，说“家属代办”重新申请。",
    "unknown_senior": "请先告诉我老人的身份证号或电话，我来查代办授权。",
}
TEXTS: dict[str, str] = {
    "consent_request": "社区助手：您的{relation}（尾号{tail}）想帮您{scopes}，有效{duration}。同意回复1，不同意回复2。",
    "consented_senior": "社区助手：已同意{relation}（尾号{tail}）代办，到{until}。要取消请回复“取消代办”。",
    "consented_proxy": "社区助手：老人已同意您代办：{scopes}，到{until}。",
    "declined_proxy": "社区助手：老人没有同意您代办。有需要请和老人商量，或到社区服务站办理。",
    "declined_senior": "社区助手：好的，没有给{relation}（尾号{tail}）代办授权。",
    "revoked_senior": "社区助手：{relation}（尾号{tail}）的代办授权已取消。",
    "revoked_proxy": "社区助手：您给老人代办的授权已取消，以后不能再代办。",
    "expired_proxy": "社区助手：您给老人代办的授权已到期。需要的话请说“家属代办”重新申请。",
    "proxy_submitted": "社区助手：您的{relation}（尾号{tail}）刚帮您办了{what}，编号{reference}。不是您让办的请回复“取消代办”。",
    "which_grant": "社区助手：有几位家属申请代办。请回复“同意”加家属电话后4位，比如“同意1234”；不同意回复“不同意”加后4位。",
    "nothing_pending": "社区助手：现在没有等您同意的代办申请。",
    "nothing_to_revoke": "社区助手：您现在没有代办授权，不用取消。",
}

# Consent must be explicit: "1" or "同意" as the consent SMS asks, never a loose "好的".
_CONSENT_RE = re.compile(r"^(?:1|同意|同意代办)(\d{4})?$")
_DECLINE_RE = re.compile(r"^(?:2|不同意|不同意代办)(\d{4})?$")
_REVOKE_RE = re.compile(r"^(?:取消代办|取消授权|撤销代办|撤销授权|取消代办授权)$")
_PUNCT_RE = re.compile(r"[\s，。,.!！?？、\"“”'‘’（）()]+")


def _check_scopes(scopes: Iterable[str]) -> None:
    unknown = set(scopes) - set(SCOPES)
    if unknown:
        raise ValueError(f"unknown proxy scopes {sorted(unknown)}")


def scopes_text(scopes: Iterable[str]) -> str:
    return "、".join(SCOPE_LABELS_ZH[s] for s in SCOPES if s in set(scopes))


def duration_text(days: int) -> str:
    if days % 365 == 0:
        return f"{days // 365}年"
    if days % 30 == 0:
        return f"{days // 30}个月"
    return f"{days}天"


def _date_text(moment: datetime) -> str:
    return f"{moment.year}年{moment.month}月{moment.day}日"


def _tail(phone: str) -> str:
    digits = re.sub(r"\D", "", phone)
    return digits[-4:]


def _normalise_sms(text: str) -> str:
    return _PUNCT_RE.sub("", unicodedata.normalize("NFKC", text))


def _system_clock() -> datetime:
    return datetime.now(UTC)


# --- service -----------------------------------------------------------------------------------
@dataclass
class _Outgoing:
    phone: str
    text: str
    dedupe_key: str


@dataclass
class _Effects:
    """What a unit of work leaves for the end of its transaction (audits) and after (SMS)."""

    messages: list[_Outgoing] = field(default_factory=list)
    audits: list[dict[str, Any]] = field(default_factory=list)


def _retryable(exc: IntegrityError | OperationalError) -> bool:
    """Unique clashes (a concurrent duplicate) and Postgres deadlock/serialization failures."""
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate is not None:
        return sqlstate in {"23505", "40001", "40P01"}
    return isinstance(exc, IntegrityError) and "UNIQUE constraint failed" in str(exc.orig)


class ProxyService:
    """Grants on the store, one transaction per call. A TransactionalNotifier (the outbox)
    queues SMS inside that transaction; a plain Notifier gets them after commit (a crash in
    between loses the SMS, not the ProxyNotification row saying it was due; dedupe keys make
    a resend harmless)."""

    def __init__(
        self,
        session_factory: Callable[[], Session],
        cipher: FieldCipher,
        notifier: Notifier,
        clock: Clock = _system_clock,
        policy: ProxyPolicy | None = None,
    ) -> None:
        self._sessions = session_factory
        self._cipher = cipher
        self._notifier = notifier
        self._clock = clock
        self.policy = policy or ProxyPolicy()

    # -- plumbing ---------------------------------------------------------------------------------
    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("clock must return a timezone-aware datetime")
        return now

    def _local(self, moment: datetime) -> datetime:
        return moment.astimezone(self._now().tzinfo)

    def _hash(self, phone: str | None) -> str | None:
        if phone is None:
            return None
        phone = unicodedata.normalize("NFKC", phone).strip()
        return self._cipher.blind_index(phone, "phone") if phone else None

    def _run(self, work: Callable[[Session, _Effects], Any]) -> Any:
        for attempt in range(3):
            effects = _Effects()
            try:
                with self._sessions() as session, session.begin():
                    result = work(session, effects)
                    if isinstance(self._notifier, TransactionalNotifier):
                        # The SMS row commits (or rolls back) together with the grant change.
                        for message in effects.messages:
                            self._notifier.send_sms_in(session, message.phone, message.text, message.dedupe_key)
                        effects.messages.clear()
                    session.flush()
                    # Audit last, as in backend.services: lock order is always data → head.
                    for audit in effects.audits:
                        append_audit(session, **audit)
            except (IntegrityError, OperationalError) as exc:
                if attempt == 2 or not _retryable(exc):
                    raise
                continue  # a concurrent duplicate committed first: the retry finds it
            for message in effects.messages:
                self._notifier.send_sms(message.phone, message.text, message.dedupe_key)
            return result
        raise AssertionError("unreachable")

    def _notify(
        self, session: Session, effects: _Effects, grant: ProxyGrant, event: str,
        recipient: str, text: str, now: datetime, reference: str | None = None,
    ) -> None:
        dedupe_key = f"proxy:{grant.id}:{event}:{reference or recipient}"
        exists = session.scalar(select(ProxyNotification.id).where(ProxyNotification.dedupe_key == dedupe_key))
        if exists is not None:
            return
        session.add(ProxyNotification(grant_id=grant.id, event=event, recipient=recipient,
                                      case_reference=reference, dedupe_key=dedupe_key, created_at=now))
        phone_enc = grant.senior_phone_enc if recipient == "senior" else grant.proxy_phone_enc
        effects.messages.append(_Outgoing(self._cipher.decrypt(phone_enc), text, dedupe_key))

    def _transition(
        self, session: Session, effects: _Effects, grant: ProxyGrant, to_status: str, actor: str, now: datetime,
        **detail: Any,
    ) -> None:
        from_status = grant.status
        grant.status, grant.updated_at = to_status, now
        if to_status in ("revoked", "expired", "declined"):
            grant.ended_at = now
        session.add(StatusEvent(entity_type=ENTITY_TYPE, entity_id=grant.id, from_status=from_status,
                                to_status=to_status, actor=actor[:64], at=now))
        effects.audits.append(dict(at=now, actor=actor[:64], action="update", entity_type=ENTITY_TYPE,
                                   entity_id=grant.id, detail={"from": from_status, "to": to_status, **detail}))

    def _view(self, grant: ProxyGrant) -> GrantView:
        return GrantView(
            id=grant.id, status=grant.status, relation=grant.relation,
            scopes=tuple(s for s in SCOPES if s in grant.scope_set), expires_at=grant.expires_at,
            request_reference=grant.request_reference, consent_channel=grant.consent_channel,
            consented_at=grant.consented_at, revoked_by=grant.revoked_by,
        )

    def _values(self, grant: ProxyGrant) -> dict[str, str]:
        return {
            "relation": RELATION_LABELS_ZH.get(grant.relation, "家属"),
            "tail": _tail(self._cipher.decrypt(grant.proxy_phone_enc)),
            "scopes": scopes_text(grant.scope_set),
            "until": _date_text(self._local(grant.expires_at)),
            "duration": duration_text(self.policy.grant_days),
        }

    @staticmethod
    def _lock(session: Session, grant_id: int) -> ProxyGrant:
        grant = session.execute(
            select(ProxyGrant).where(ProxyGrant.id == grant_id).with_for_update()
            .execution_options(populate_existing=True)
        ).scalar_one_or_none()
        if grant is None:
            raise LookupError(f"no proxy grant {grant_id}")
        return grant

    # -- request ----------------------------------------------------------------------------------
    def request(
        self,
        *,
        senior_phone: str,
        proxy_phone: str,
        relation: str,
        scopes: Sequence[str] | None = None,
        request_reference: str | None = None,
        actor: str = "resident",
    ) -> GrantView:
        """A pending grant and one consent SMS to the senior. Idempotent per request reference,
        and a second request from the same family member while one is pending returns that one."""
        scopes = tuple(scopes or self.policy.default_scopes)
        _check_scopes(scopes)
        senior_hash, proxy_hash = self._hash(senior_phone), self._hash(proxy_phone)
        if not senior_hash or not proxy_hash:
            raise ValueError("both the senior's and the proxy's phone are needed")
        if senior_hash == proxy_hash:
            # The parent's consent must come from a phone other than the requester's.
            raise ProxyError("the proxy's phone is the senior's phone")

        def work(session: Session, effects: _Effects) -> GrantView:
            now = self._now()
            if request_reference:
                existing = session.scalar(select(ProxyGrant).where(ProxyGrant.request_reference == request_reference))
                if existing is not None:
                    return self._view(existing)
            pending = session.scalars(
                select(ProxyGrant).where(ProxyGrant.senior_phone_hash == senior_hash,
                                         ProxyGrant.status == "pending_consent",
                                         ProxyGrant.expires_at > now)
            ).all()
            same = [g for g in pending if g.proxy_phone_hash == proxy_hash and g.scope_set == set(scopes)]
            if same:
                return self._view(same[0])
            if len(pending) >= self.policy.max_pending_per_senior:
                raise ProxyError("too many pending proxy requests for this senior")
            senior = session.scalars(select(Resident).where(Resident.phone_hash == senior_hash).limit(2)).all()
            proxy = session.scalars(select(Resident).where(Resident.phone_hash == proxy_hash).limit(2)).all()
            grant = ProxyGrant(
                request_reference=request_reference,
                senior_resident_id=senior[0].id if len(senior) == 1 else None,  # shared phone: no guess
                senior_phone_hash=senior_hash,
                senior_phone_enc=self._cipher.encrypt(senior_phone.strip()),
                proxy_resident_id=proxy[0].id if len(proxy) == 1 else None,
                proxy_phone_hash=proxy_hash,
                proxy_phone_enc=self._cipher.encrypt(proxy_phone.strip()),
                relation=relation if relation in RELATION_LABELS_ZH else "other",
                scopes=",".join(sorted(scopes)),
                status="pending_consent",
                expires_at=now + timedelta(days=self.policy.consent_days),
                created_at=now,
                updated_at=now,
            )
            session.add(grant)
            session.flush()  # a concurrent same-reference insert fails here → retried
            session.add(StatusEvent(entity_type=ENTITY_TYPE, entity_id=grant.id, from_status=None,
                                    to_status="pending_consent", actor=actor[:64], at=now))
            self._notify(session, effects, grant, "consent_request", "senior",
                         TEXTS["consent_request"].format(**self._values(grant)), now)
            effects.audits.append(dict(at=now, actor=actor[:64], action="create", entity_type=ENTITY_TYPE,
                                       entity_id=grant.id, detail={"reference": request_reference,
                                                                   "scopes": sorted(scopes),
                                                                   "relation": grant.relation}))
            return self._view(grant)

        return self._run(work)

    def request_from_case(self, reference: str, senior_phone: str, proxy_phone: str) -> GrantView:
        """From a submitted family_proxy case (its relation slot); the phones come from the
        CaseRequest because the case row keeps only their hashes."""
        with self._sessions() as session:
            row = session.scalar(select(Application).where(Application.reference == reference))
            if row is None:
                raise LookupError(f"no proxy request {reference}")
            fields = self._cipher.decrypt_json(row.fields_enc) or {}
        return self.request(senior_phone=senior_phone, proxy_phone=proxy_phone,
                            relation=str(fields.get("relation") or "other"), request_reference=reference,
                            actor=f"resident:{row.channel}")

    # -- consent ----------------------------------------------------------------------------------
    def consent(self, grant_id: int, *, channel: str, from_phone: str | None = None,
                staff_id: str | None = None) -> GrantView:
        """The senior agrees: by SMS or keypad from the phone the request named, or in person
        before staff (who checked the senior's ID card)."""
        actor = self._consent_actor(channel, from_phone, staff_id)

        def work(session: Session, effects: _Effects) -> GrantView:
            now = self._now()
            grant = self._lock(session, grant_id)
            self._check_consenter(grant, channel, from_phone)
            if grant.status == "active":
                return self._view(grant)  # a repeated "1" changes nothing
            if grant.status != "pending_consent":
                raise ProxyError(f"grant {grant_id} is {grant.status}")
            if grant.expires_at <= now:
                self._transition(session, effects, grant, "expired", "system", now)
                return self._view(grant)  # committed as expired, then refused below
            # An older grant for the same pair is replaced, so there is one answer to check().
            for old in session.scalars(select(ProxyGrant).where(
                    ProxyGrant.senior_phone_hash == grant.senior_phone_hash,
                    ProxyGrant.proxy_phone_hash == grant.proxy_phone_hash,
                    ProxyGrant.status == "active", ProxyGrant.id != grant.id)).all():
                old.revoked_by = "superseded"
                self._transition(session, effects, old, "revoked", actor, now, superseded_by=grant.id)
            grant.consent_channel, grant.consented_at, grant.consented_by = channel, now, actor[:64]
            grant.expires_at = now + timedelta(days=self.policy.grant_days)
            self._transition(session, effects, grant, "active", actor, now, channel=channel)
            values = self._values(grant)
            self._notify(session, effects, grant, "consented", "senior", TEXTS["consented_senior"].format(**values), now)
            self._notify(session, effects, grant, "consented", "proxy", TEXTS["consented_proxy"].format(**values), now)
            return self._view(grant)

        view: GrantView = self._run(work)
        if view.status != "active":
            raise ProxyError(f"grant {grant_id} consent window has passed")
        return view

    def decline(self, grant_id: int, *, channel: str, from_phone: str | None = None,
                staff_id: str | None = None) -> GrantView:
        actor = self._consent_actor(channel, from_phone, staff_id)

        def work(session: Session, effects: _Effects) -> GrantView:
            now = self._now()
            grant = self._lock(session, grant_id)
            self._check_consenter(grant, channel, from_phone)
            if grant.status == "declined":
                return self._view(grant)
            if grant.status != "pending_consent":
                raise ProxyError(f"grant {grant_id} is {grant.status}")
            self._transition(session, effects, grant, "declined", actor, now, channel=channel)
            values = self._values(grant)
            self._notify(session, effects, grant, "declined", "senior", TEXTS["declined_senior"].format(**values), now)
            self._notify(session, effects, grant, "declined", "proxy", TEXTS["declined_proxy"], now)
            return self._view(grant)

        return self._run(work)

    @staticmethod
    def _consent_actor(channel: str, from_phone: str | None, staff_id: str | None) -> str:
        if channel not in CONSENT_CHANNELS:
            raise ValueError(f"unknown consent channel {channel!r}")
        if channel == "staff":
            if not staff_id:
                raise ProxyError("in-person consent needs the staff member's id")
            return f"staff:{staff_id}"
        if not from_phone:
            raise ProxyError("SMS and keypad consent need the caller's phone")
        return "senior"

    def _check_consenter(self, grant: ProxyGrant, channel: str, from_phone: str | None) -> None:
        if channel != "staff" and self._hash(from_phone) != grant.senior_phone_hash:
            raise ProxyError("consent must come from the senior's own phone")

    # -- revoke / expire --------------------------------------------------------------------------
    def revoke(self, grant_id: int, *, by: str) -> GrantView:
        """`by`: "senior", "proxy" or "staff:<id>"."""
        if by not in ("senior", "proxy") and not by.startswith("staff:"):
            raise ValueError("revoked by senior, proxy or staff:<id>")

        def work(session: Session, effects: _Effects) -> GrantView:
            grant = self._lock(session, grant_id)
            self._revoke(session, effects, grant, by, self._now())
            return self._view(grant)

        return self._run(work)

    def _revoke(self, session: Session, effects: _Effects, grant: ProxyGrant, by: str,
                now: datetime) -> None:
        if grant.status not in OPEN_STATUSES:
            return
        grant.revoked_by = by[:64]
        self._transition(session, effects, grant, "revoked", by, now)
        values = self._values(grant)
        # Both sides learn of it; the one who asked gets the same text as confirmation.
        self._notify(session, effects, grant, "revoked", "senior", TEXTS["revoked_senior"].format(**values), now)
        self._notify(session, effects, grant, "revoked", "proxy", TEXTS["revoked_proxy"], now)

    def expire_due(self) -> int:
        """Marks grants past `expires_at` as expired (active ones tell the proxy). check()
        already treats them as expired, so this sweep is bookkeeping, run from a scheduler."""

        def work(session: Session, effects: _Effects) -> int:
            now = self._now()
            due = session.scalars(
                select(ProxyGrant).where(ProxyGrant.status.in_(OPEN_STATUSES), ProxyGrant.expires_at <= now)
                .order_by(ProxyGrant.id).with_for_update()
            ).all()
            for grant in due:
                was_active = grant.status == "active"
                self._transition(session, effects, grant, "expired", "system", now)
                if was_active:
                    self._notify(session, effects, grant, "expired", "proxy", TEXTS["expired_proxy"], now)
            return len(due)

        return self._run(work)

    # -- incoming SMS -----------------------------------------------------------------------------
    def handle_sms(self, from_phone: str, body: str) -> SmsOutcome:
        """Replies to consent texts and "取消代办". Anything else is not ours (handled=False)."""
        text = _normalise_sms(body)
        phone_hash = self._hash(from_phone)
        if not phone_hash or not text:
            return SmsOutcome(False)
        if _REVOKE_RE.match(text):
            return self._sms_revoke(phone_hash)
        consent, decline = _CONSENT_RE.match(text), _DECLINE_RE.match(text)
        match = consent or decline
        if match is None:
            return SmsOutcome(False)
        with self._sessions() as session:
            pending = session.scalars(
                select(ProxyGrant).where(ProxyGrant.senior_phone_hash == phone_hash,
                                         ProxyGrant.status == "pending_consent",
                                         ProxyGrant.expires_at > self._now())
                .order_by(ProxyGrant.id)
            ).all()
            tails = {g.id: _tail(self._cipher.decrypt(g.proxy_phone_enc)) for g in pending}
        if not pending:
            # "1" from someone with nothing pending is probably a menu choice: not ours.
            return SmsOutcome(False)
        tail = match.group(1)
        chosen = [g for g in pending if tails[g.id] == tail] if tail else list(pending)
        if len(chosen) != 1:
            return SmsOutcome(True, TEXTS["which_grant"])
        act = self.consent if consent else self.decline
        view = act(chosen[0].id, channel="sms", from_phone=from_phone)
        return SmsOutcome(True, None, (view.id,))  # the confirmation SMS went out already

    def _sms_revoke(self, phone_hash: str) -> SmsOutcome:
        def work(session: Session, effects: _Effects) -> tuple[int, ...]:
            now = self._now()
            grants = session.scalars(
                select(ProxyGrant).where(
                    or_(ProxyGrant.senior_phone_hash == phone_hash, ProxyGrant.proxy_phone_hash == phone_hash),
                    ProxyGrant.status.in_(OPEN_STATUSES),
                ).order_by(ProxyGrant.id).with_for_update()
            ).all()
            for grant in grants:
                by = "senior" if grant.senior_phone_hash == phone_hash else "proxy"
                self._revoke(session, effects, grant, by, now)
            return tuple(g.id for g in grants)

        ids = self._run(work)
        return SmsOutcome(True, None if ids else TEXTS["nothing_to_revoke"], ids)

    # -- check and notify -------------------------------------------------------------------------
    def _grants_for(self, session: Session, proxy_hash: str, senior: Person) -> list[ProxyGrant] | None:
        """Grants of this proxy for this senior; None when the senior cannot be identified.
        An ID number that names a known resident decides alone (a shared phone must not
        extend a father's consent to the mother); otherwise the senior's phone decides."""
        id_number = (senior.id_number or "").strip()
        candidates = session.scalars(
            select(ProxyGrant).where(ProxyGrant.proxy_phone_hash == proxy_hash).order_by(ProxyGrant.id.desc())
        ).all()
        if id_number:
            resident_id = session.scalar(
                select(Resident.id).where(Resident.id_hash == self._cipher.blind_index(id_number, "id_number"))
            )
            if resident_id is not None:
                return [g for g in candidates if g.senior_resident_id == resident_id]
        senior_hash = self._hash(senior.phone)
        if senior_hash is None:
            return None
        return [g for g in candidates if g.senior_phone_hash == senior_hash]

    def check(self, proxy_phone: str, senior: Person, scope: str) -> Decision:
        """May `proxy_phone` act for `senior` in `scope` now? Read-only."""
        _check_scopes([scope])
        proxy_hash = self._hash(proxy_phone)
        if proxy_hash is None:
            return Decision(False, "no_grant", REFUSALS["no_grant"])
        if proxy_hash == self._hash(senior.phone):
            return Decision(True, "self")
        now = self._now()
        with self._sessions() as session:
            grants = self._grants_for(session, proxy_hash, senior)
        if grants is None:
            return Decision(False, "unknown_senior", REFUSALS["unknown_senior"])
        live = [g for g in grants if g.status in OPEN_STATUSES and g.expires_at > now]
        for grant in live:
            if grant.status == "active" and scope in grant.scope_set:
                return Decision(True, "active", None, grant.id)
        if any(g.status == "active" for g in live):
            reason = "scope_missing"
        elif live:
            reason = "pending_consent"
        elif grants:
            latest = grants[0]
            reason = "expired" if latest.status in OPEN_STATUSES else latest.status
        else:
            reason = "no_grant"
        grant_id = (live or grants)[0].id if (live or grants) else None
        return Decision(False, reason, REFUSALS[reason].format(scope=SCOPE_LABELS_ZH[scope]), grant_id)

    def check_any(self, proxy_phone: str, scope: str) -> Decision:
        """Has this phone an active grant in `scope` for anybody? Lets the dialogue refuse at
        the start of a form, before the family member has said the senior's details."""
        _check_scopes([scope])
        proxy_hash = self._hash(proxy_phone)
        now = self._now()
        with self._sessions() as session:
            grants = session.scalars(select(ProxyGrant).where(ProxyGrant.proxy_phone_hash == proxy_hash)
                                     .order_by(ProxyGrant.id.desc())).all() if proxy_hash else []
        live = [g for g in grants if g.status in OPEN_STATUSES and g.expires_at > now]
        for grant in live:
            if grant.status == "active" and scope in grant.scope_set:
                return Decision(True, "active", None, grant.id)
        reason = ("scope_missing" if any(g.status == "active" for g in live)
                  else "pending_consent" if live else "no_grant")
        return Decision(False, reason, REFUSALS[reason].format(scope=SCOPE_LABELS_ZH[scope]),
                        live[0].id if live else None)

    def seniors_viewable_by(self, proxy_phone: str) -> list[str]:
        """Phones of the seniors whose cases this phone may follow (active "view" grants)."""
        proxy_hash = self._hash(proxy_phone)
        if proxy_hash is None:
            return []
        now = self._now()
        with self._sessions() as session:
            grants = session.scalars(select(ProxyGrant).where(ProxyGrant.proxy_phone_hash == proxy_hash,
                                                              ProxyGrant.status == "active",
                                                              ProxyGrant.expires_at > now)
                                     .order_by(ProxyGrant.id)).all()
            phones = [self._cipher.decrypt(g.senior_phone_enc) for g in grants if "view" in g.scope_set]
        return list(dict.fromkeys(phones))

    def alert_contacts(self, senior_phone: str) -> list[tuple[str, str]]:
        """(phone, relation label) of family members this senior allowed to get alert calls,
        for the care-alert dispatcher (next to the households file's contacts)."""
        senior_hash = self._hash(senior_phone)
        if senior_hash is None:
            return []
        now = self._now()
        with self._sessions() as session:
            grants = session.scalars(select(ProxyGrant).where(ProxyGrant.senior_phone_hash == senior_hash,
                                                              ProxyGrant.status == "active",
                                                              ProxyGrant.expires_at > now)
                                     .order_by(ProxyGrant.id)).all()
            return [(self._cipher.decrypt(g.proxy_phone_enc), RELATION_LABELS_ZH.get(g.relation, "家属"))
                    for g in grants if "alert_calls" in g.scope_set]

    def record_submission(self, proxy_phone: str, senior: Person, *, scope: str, reference: str,
                          what: str) -> int | None:
        """After a proxy filed case `reference` for `senior`: a notification row, an audit
        entry and an SMS to the senior. Idempotent per reference. Returns the grant id, or
        None when no active grant covers it (nothing is recorded then)."""
        decision = self.check(proxy_phone, senior, scope)
        if not decision.allowed or decision.grant_id is None:
            return None

        def work(session: Session, effects: _Effects) -> int:
            now = self._now()
            grant = self._lock(session, decision.grant_id or 0)
            key = f"proxy:{grant.id}:proxy_submitted:{reference}"
            if session.scalar(select(ProxyNotification.id).where(ProxyNotification.dedupe_key == key)) is None:
                text = TEXTS["proxy_submitted"].format(**self._values(grant), what=what, reference=reference)
                self._notify(session, effects, grant, "proxy_submitted", "senior", text, now, reference)
                effects.audits.append(dict(at=now, actor="proxy", action="create", entity_type=ENTITY_TYPE,
                                           entity_id=grant.id, detail={"event": "proxy_submitted",
                                                                       "reference": reference, "scope": scope}))
            return grant.id

        return self._run(work)

    # -- reads ------------------------------------------------------------------------------------
    def get(self, grant_id: int) -> GrantView | None:
        with self._sessions() as session:
            grant = session.get(ProxyGrant, grant_id)
            return self._view(grant) if grant else None

    def grants_of_senior(self, senior_phone: str) -> list[GrantView]:
        senior_hash = self._hash(senior_phone)
        with self._sessions() as session:
            rows = session.scalars(select(ProxyGrant).where(ProxyGrant.senior_phone_hash == senior_hash)
                                   .order_by(ProxyGrant.id)).all()
            return [self._view(g) for g in rows]


# --- enforcement around the case store ---------------------------------------------------------
class ProxyNotAllowed(ActingForRefused):
    """A family member tried to file a case for a senior without a grant covering it."""

    def __init__(self, decision: Decision) -> None:
        super().__init__(decision.reason)
        self.decision = decision
        self.reason = decision.reason
        self.how_to_ask = decision.how_to_ask or REFUSALS["no_grant"]


class ProxyAwareBackend:
    """ServiceBackend decorator: a family_proxy case also opens a grant (consent SMS to the
    parent); a case filed with `submitted_by_phone` needs a grant covering its scope (else
    ProxyNotAllowed, before anything is stored) and the parent is told about it afterwards.
    Other attributes (staff helpers) pass through to the wrapped backend."""

    def __init__(self, inner: ServiceBackend, proxies: ProxyService,
                 describe: Callable[[str], str] = lambda category: "一件事", *, progress_limit: int = 5) -> None:
        self.inner = inner
        self.proxies = proxies
        self.describe = describe  # category → what the parent reads ("老年证申请")
        self.progress_limit = progress_limit

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def precheck(self, proxy_phone: str | None, kind: str) -> Decision | None:
        """For the start of a form filled for someone else: None when no grant is needed."""
        scope = SCOPE_BY_KIND.get(kind)
        if not proxy_phone or scope is None:
            return None
        return self.proxies.check_any(proxy_phone, scope)

    def submit_case(self, request: CaseRequest) -> CaseReceipt:
        proxy_phone, senior = request.submitted_by_phone, request.subject
        if request.kind == "proxy_request":
            receipt = self.inner.submit_case(request)
            if proxy_phone and senior.phone:
                try:
                    self.proxies.request_from_case(receipt.reference, senior.phone, proxy_phone)
                except ProxyError as exc:  # own phone, or too many open requests: staff follow up
                    log.warning("proxy request %s not opened: %s", receipt.reference, exc)
            return receipt
        scope = SCOPE_BY_KIND.get(request.kind)
        if not proxy_phone or scope is None:
            return self.inner.submit_case(request)
        decision = self.proxies.check(proxy_phone, senior, scope)
        if not decision.allowed:
            raise ProxyNotAllowed(decision)
        receipt = self.inner.submit_case(request)
        if decision.reason == "active" and not receipt.duplicate:  # a duplicate filed nothing new
            self.proxies.record_submission(proxy_phone, senior, scope=scope, reference=receipt.reference,
                                           what=self.describe(request.category))
        return receipt

    def create_handoff(self, request: HandoffRequest) -> CaseReceipt:
        return self.inner.create_handoff(request)

    def progress(self, *, phone: str | None = None, reference: str | None = None) -> list[ProgressItem]:
        """By phone, a family member with a "view" grant also sees the parent's cases."""
        items = self.inner.progress(phone=phone, reference=reference)
        if phone is None or reference is not None:
            return items
        seniors = self.proxies.seniors_viewable_by(phone)
        if not seniors:
            return items
        for senior_phone in seniors:
            items += self.inner.progress(phone=senior_phone)
        unique = {item.reference: item for item in items}.values()
        return sorted(unique, key=lambda item: item.updated_at, reverse=True)[:self.progress_limit]

    def find_resident(self, *, id_number: str | None = None, phone: str | None = None) -> ResidentRecord | None:
        return self.inner.find_resident(id_number=id_number, phone=phone)
