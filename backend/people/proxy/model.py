"""Family proxy grants as stored and as callers see them: the ProxyGrant and ProxyNotification
tables, scopes and statuses, the policy from config.yml, the typed answers (GrantView,
Decision, SmsOutcome), and the sentences a senior or family member reads."""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from backend.infra.models import Base, Timestamps

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
        check_scopes(scopes)
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
CONSENT_RE = re.compile(r"^(?:1|同意|同意代办)(\d{4})?$")
DECLINE_RE = re.compile(r"^(?:2|不同意|不同意代办)(\d{4})?$")
REVOKE_RE = re.compile(r"^(?:取消代办|取消授权|撤销代办|撤销授权|取消代办授权)$")
_PUNCT_RE = re.compile(r"[\s，。,.!！?？、\"“”'‘’（）()]+")


def check_scopes(scopes: Iterable[str]) -> None:
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


def date_text(moment: datetime) -> str:
    return f"{moment.year}年{moment.month}月{moment.day}日"


def phone_tail(phone: str) -> str:
    digits = re.sub(r"\D", "", phone)
    return digits[-4:]


def normalise_sms(text: str) -> str:
    return _PUNCT_RE.sub("", unicodedata.normalize("NFKC", text))


def system_clock() -> datetime:
    return datetime.now(UTC)

