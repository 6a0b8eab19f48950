"""The typed stages of an inbound SMS in the inbox: the message as the channel parsed it,
what it is from its text alone (`classify`), a route's decision, and the recorded answer."""
from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from backend.tickets import IncomingMedia

_OPT_OUT = {"TD", "T", "退订", "退订短信", "取消订阅", "STOP", "UNSUBSCRIBE"}
_OPT_IN = {"开通", "订阅", "恢复短信", "START", "UNSTOP"}
_PROGRESS_RE = re.compile(r"^(?:进度|查询|查进度)[:：]?(\d{8})?$")
_RATE_RE = re.compile(r"^评价[:：]?([1-5一二三四五])分?(\d{8})?$")
_CANCEL_RE = re.compile(r"^取消(\d{8})?$")
_CN_DIGITS = {"一": 1, "二": 2, "三": 3, "四": 4, "五": 5}


@dataclass(frozen=True)
class InboundSms:
    """One inbound SMS/MMS as the channel parsed it from the provider's form."""

    message_sid: str
    sender: str  # as the provider gives it (E.164)
    phone: str | None  # 11-digit mainland mobile, when it is one
    body: str
    media: tuple[IncomingMedia, ...] = ()
    num_media: int = 0
    from_hash: str = ""  # blind index of the sender: the inbox fills it in once (HMAC-SM3 is dear)


class Kind(StrEnum):
    OPT_OUT = "opt_out"
    OPT_IN = "opt_in"
    PHOTOS = "photos"
    EMPTY = "empty"
    TOO_LONG = "too_long"
    PROGRESS = "progress"
    RATE = "rate"
    CANCEL = "cancel"
    OPEN = "open"  # anything else: decided by who sends it and what waits for them


@dataclass(frozen=True)
class Classified:
    kind: Kind
    word: str  # the body without spaces, upper-case: how keywords are matched
    reference: str | None = None  # the 8-digit reference a keyword named
    score: int | None = None  # 评价's score; None when 评价 came without a valid one


def keyword(body: str) -> str:
    return re.sub(r"\s+", "", body).upper()


def classify(sms: InboundSms, max_text: int) -> Classified:
    word = keyword(sms.body)
    if word in _OPT_OUT or word in _OPT_IN:
        return Classified(Kind.OPT_OUT if word in _OPT_OUT else Kind.OPT_IN, word)
    if sms.num_media > 0:
        return Classified(Kind.PHOTOS, word)
    if not sms.body:
        return Classified(Kind.EMPTY, word)
    if len(sms.body) > max_text:
        return Classified(Kind.TOO_LONG, word)
    if match := _PROGRESS_RE.match(word):
        return Classified(Kind.PROGRESS, word, match.group(1))
    if word.startswith("评价"):
        if (match := _RATE_RE.match(word)) is None:
            return Classified(Kind.RATE, word)
        raw = match.group(1)
        return Classified(Kind.RATE, word, match.group(2), int(raw) if raw.isdigit() else _CN_DIGITS[raw])
    if match := _CANCEL_RE.match(word):
        return Classified(Kind.CANCEL, word, match.group(1))
    return Classified(Kind.OPEN, word)


@dataclass(frozen=True)
class InboxAnswer:
    segments: tuple[str, ...]  # the SMS segments to answer with
    route: str  # how it was answered: report / keyword / location / alert / conversation / rejected
    replayed: bool = False  # the stored answer of a redelivered MessageSid


@dataclass(frozen=True)
class Decision:  # a route's answer before it is recorded
    text: str
    route: str
    ticket_id: int | None = None


@dataclass(frozen=True)
class Claimed:  # what the claim's transaction found out, for the routes after it
    sms: InboundSms
    what: Classified
    continues_report: bool  # the sender has a report awaiting its place, or photos still coming
