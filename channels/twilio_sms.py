"""SMS/MMS channel (Twilio Messaging): receive half (webhooks) and send half (REST API).

POST /webhooks/twilio/sms          Twilio's inbound message webhook (MessageSid, From, To, Body,
                                   NumMedia, MediaUrl{i}, MediaContentType{i}, FromCity …)
                                   → TwiML <Response><Message>…</Message></Response>
POST /webhooks/twilio/sms/status   delivery status callbacks for our outbound messages → 204

Every request must carry a valid X-Twilio-Signature (403 otherwise, logged); turning the check
off is the explicit development setting TWILIO_SKIP_SIGNATURE=1. The webhook does no slow
work: it records the message, creates or extends the report and enqueues the job in one
transaction, and answers with the reference at once. A redelivered MessageSid gets the stored
answer and creates nothing (each path looks up the MessageSid first, inside its transaction).

What a message is, in this order: TD/退订 and 开通 (always honoured); photos (a 拍一拍 report);
keywords (进度/查询 + ref, 评价 1–5, 取消, 0/人工); the answer to "在哪个小区哪栋楼？"; words
for the photos just sent; else a turn of the conversation with the assistant core.
"""
from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, request
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client
from twilio.twiml.messaging_response import MessagingResponse

from assistant.types import Reply, UserMessage
from backend.outbox import SendError, SendResult, SmsSender
from backend.sms_format import e164, mainland_mobile, segments
from backend.sms_inbox import SmsInbox
from backend.tickets import IncomingMedia, IntakeResult, TicketDesk, UnitOfWork
from channels.runtime_port import ChannelRuntime
from channels.twilio_signature import TwilioConfig, TwilioSignature

log = logging.getLogger(__name__)

NAME = "twilio_sms"
CHANNEL = "sms"
SID_RE = re.compile(r"^(SM|MM|SS)[0-9a-fA-F]{32}$")
MAX_MEDIA = 10  # Twilio's own limit per MMS
_INVISIBLE_RE = re.compile(r"[\u0000-\u0008\u000b-\u001f\u007f\u200b-\u200f\u2060\ufeff]")
_OPT_OUT = {"TD", "T", "退订", "退订短信", "取消订阅", "STOP", "UNSUBSCRIBE"}
_OPT_IN = {"开通", "订阅", "恢复短信", "START", "UNSTOP"}
_PROGRESS_RE = re.compile(r"^(?:进度|查询|查进度)[:：]?(\d{8})?$")
_RATE_RE = re.compile(r"^评价[:：]?([1-5一二三四五])分?(\d{8})?$")
_CANCEL_RE = re.compile(r"^取消(\d{8})?$")
_CN_DIGITS = {"一": 1, "二": 2, "三": 3, "四": 4, "五": 5}
# What the core expected → how digit replies map to words it understands.
_DIGIT_WORDS = {"confirm": {"1": "对", "2": "不对"}, "yes_no": {"1": "要", "2": "不要"}}
REPORT_CATEGORIES = {"photo_report": "报修", "report_issue": "报修", "open311": "报修"}


# --- send half -------------------------------------------------------------------------------------
class _BaseUrlHttpClient(TwilioHttpClient):
    """Sends the SDK's requests to another API base (a regional edge or a test server)."""

    def __init__(self, base_url: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base_url = base_url.rstrip("/")

    def request(self, method: str, url: str, *args: Any, **kwargs: Any):  # type: ignore[override]
        url = re.sub(r"^https://[^/]+", self.base_url, url)
        return super().request(method, url, *args, **kwargs)


class TwilioSmsSender:
    def __init__(self, config: TwilioConfig, timeout: float = 10.0) -> None:
        http = _BaseUrlHttpClient(config.api_base_url, timeout=timeout) if config.api_base_url \
            else TwilioHttpClient(timeout=timeout)
        self.client = Client(config.account_sid, config.auth_token, http_client=http)
        self.config = config

    def send(self, to: str, body: str) -> SendResult:
        kwargs: dict[str, Any] = {"to": e164(to), "body": body}
        if self.config.messaging_service_sid:
            kwargs["messaging_service_sid"] = self.config.messaging_service_sid
        else:
            kwargs["from_"] = self.config.from_number
        callback = self.config.status_callback()
        if callback:
            kwargs["status_callback"] = callback
        try:
            message = self.client.messages.create(**kwargs)
        except TwilioRestException as exc:
            # 4xx are our fault or the number's (21211 invalid, 21610 unsubscribed): no retry;
            # 429 and 5xx pass.
            retryable = exc.status == 429 or exc.status >= 500
            raise SendError(f"twilio {exc.status} {exc.code}: {exc.msg}", retryable=retryable,
                            code=str(exc.code) if exc.code else None) from exc
        except TwilioException as exc:
            raise SendError(f"twilio: {exc}", retryable=True) from exc
        return SendResult(str(message.sid), str(message.status or "queued"))


def make_sender(config: TwilioConfig) -> SmsSender | None:
    """None when Twilio is not configured: messages wait in the outbox until it is."""
    if not (config.account_sid and config.auth_token and (config.from_number or config.messaging_service_sid)):
        log.info("Twilio sending not configured: outbound SMS stay queued in the outbox")
        return None
    return TwilioSmsSender(config)


# --- receive half -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class InboundSms:
    message_sid: str
    sender: str  # as Twilio gives it (E.164)
    phone: str | None  # 11-digit mainland mobile, when it is one
    body: str
    media: tuple[IncomingMedia, ...]
    num_media: int
    from_hash: str  # blind index of the sender, computed once (HMAC-SM3 is the dearest step here)


def clean_body(text: str) -> str:
    text = unicodedata.normalize("NFKC", text or "")
    return _INVISIBLE_RE.sub("", text).strip()


def _keyword(body: str) -> str:
    return re.sub(r"\s+", "", body).upper()


def render_sms(replies: Sequence[Reply]) -> tuple[str, str | None]:
    """The core's replies as one SMS text (no buttons on feature phones) and what it expects."""
    expects = replies[-1].expects if replies else None
    parts = []
    for reply in replies:
        text = reply.text
        if expects in _DIGIT_WORDS and reply.name == "utter_confirm_buttons":
            continue  # replaced by the digit hint below
        parts.append(text)
    text = "".join(parts)
    if expects == "confirm":
        text += "回复1确认/2不对/0人工"
    elif expects == "yes_no":
        text += "回复1要/2不要"
    return text, expects


class SmsHandler:
    """Decides what an inbound message is and answers it (see the module docstring)."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self.loop = runtime.ticket_loop
        self.desk: TicketDesk = self.loop.desk
        self.inbox = SmsInbox(self.loop.cipher)
        self.assistant = runtime.assistant
        self.max_text = self.desk.settings.max_text_chars

    # -- entry -------------------------------------------------------------------------------------
    def stored_reply(self, message_sid: str) -> list[str] | None:
        return self.desk.run(lambda unit: self.inbox.answered(unit, message_sid))

    def handle(self, msg: InboundSms) -> list[str]:
        word = _keyword(msg.body)
        if word in _OPT_OUT or word in _OPT_IN:
            return self._opt(msg, opted_out=word in _OPT_OUT)
        if msg.num_media > 0:
            return self._report(msg)
        if not msg.body:
            return self._answer(msg, "rejected", self.desk.text("empty"))
        if len(msg.body) > self.max_text:
            return self._answer(msg, "rejected", self.desk.text("too_long"))
        if match := _PROGRESS_RE.match(word):
            return self._answer(msg, "keyword", self._progress(msg, match.group(1)))
        if word.startswith("评价"):
            return self._rate(msg, _RATE_RE.match(word))
        if (match := _CANCEL_RE.match(word)) and not self._in_conversation_form(msg):
            result = self._in_unit(msg, "keyword", lambda u: self.desk.cancel_recent(
                u, msg.from_hash, match.group(1)))
            if result is not None:
                return result
        proxies = self.runtime.proxies
        if proxies is not None:  # 同意/不同意/取消代办 from a senior or family member
            outcome = proxies.handle_sms(msg.sender, msg.body)
            if outcome.handled:
                return self._answer(msg, "keyword", outcome.reply or "")
        if not self._in_conversation_form(msg):  # "1"/"收到" from someone told about a care alert
            ack = self.runtime.alerts.acknowledge(msg.sender, msg.body, "sms")
            if ack is not None:
                return self._answer(msg, "alert", ack.reply)
        if word in {"0", "人工"}:
            return self._conversation(msg, "人工")
        routed = self._in_unit(msg, "location", lambda u: self._report_followup(u, msg))
        if routed is not None:
            return routed
        return self._conversation(msg, msg.body)

    # -- paths ---------------------------------------------------------------------------------------
    def _record(self, unit: UnitOfWork, msg: InboundSms, route: str, reply: list[str], ticket_id: int | None) -> None:
        self.inbox.record(unit, message_sid=msg.message_sid, from_hash=msg.from_hash, body=msg.body,
                          num_media=msg.num_media, route=route, reply=reply, ticket_id=ticket_id)

    def _existing(self, unit: UnitOfWork, msg: InboundSms) -> list[str] | None:
        return self.inbox.answered(unit, msg.message_sid)

    def _in_unit(self, msg: InboundSms, route: str,
                 action: Callable[[UnitOfWork], IntakeResult | None]) -> list[str] | None:
        """Runs a ticket action and records the message with its answer in one transaction."""

        def work(unit: UnitOfWork) -> list[str] | None:
            existing = self._existing(unit, msg)
            if existing is not None:
                return existing
            result = action(unit)
            if result is None:
                return None
            reply = segments(result.reply)
            self._record(unit, msg, route, reply, result.ticket_id)
            return reply

        return self.desk.run(work)

    def _answer(self, msg: InboundSms, route: str, text: str) -> list[str]:
        def work(unit: UnitOfWork) -> list[str]:
            existing = self._existing(unit, msg)
            if existing is not None:
                return existing
            reply = segments(text)
            self._record(unit, msg, route, reply, None)
            return reply

        return self.desk.run(work)

    def _opt(self, msg: InboundSms, *, opted_out: bool) -> list[str]:
        def work(unit: UnitOfWork) -> list[str]:
            existing = self._existing(unit, msg)
            if existing is not None:
                return existing
            self.inbox.set_opt_out(unit, from_hash=msg.from_hash, message_sid=msg.message_sid, opted_out=opted_out)
            reply = segments(self.desk.text("opted_out" if opted_out else "opted_in"))
            self._record(unit, msg, "keyword", reply, None)
            return reply

        return self.desk.run(work)

    def _report(self, msg: InboundSms) -> list[str]:
        media = list(msg.media)
        if not media:  # NumMedia said photos but no URL came with it
            return self._answer(msg, "rejected", self.desk.text("ack_media_refused"))
        policy = self.desk.media.policy
        if not any(policy.type_allowed(m.content_type) and policy.host_allowed(m.url) for m in media):
            # Nothing usable: do not open a report for it (a vCard, a video, a foreign link).
            for m in media:
                log.info("refused media %s from %s", m.content_type, "allow-list" if policy.type_allowed(
                    m.content_type) else "type")
            return self._answer(msg, "rejected", self.desk.text("ack_media_refused"))
        body = msg.body[: self.max_text]
        result = self._in_unit(msg, "report", lambda u: self.desk.intake_photos(
            u, msg.sender, msg.message_sid, body, media, phone_hash=msg.from_hash))
        return result or []

    def _report_followup(self, unit: UnitOfWork, msg: InboundSms) -> IntakeResult | None:
        phone_hash = msg.from_hash
        waiting = self.desk.awaiting_location(unit, phone_hash)
        if waiting is not None and self._looks_like_place(msg.body):
            return self.desk.answer_location(unit, waiting, msg.body)
        open_report = self.desk.open_report(unit, phone_hash)
        if open_report is not None:
            return self.desk.add_text(unit, open_report, msg.body)
        return None

    def _looks_like_place(self, text: str) -> bool:
        """A reply to "在哪个小区哪栋楼？" unless it is clearly something else ("我要订饭")."""
        if self.desk.gazetteer.parse(text) is not None:
            return True
        parse = self.assistant.parse(text)
        return not (parse.intent.name not in {"nlu_fallback", "report_issue", "out_of_scope", "affirm", "deny"}
                    and parse.intent.confidence >= 0.6)

    def _in_conversation_form(self, msg: InboundSms) -> bool:
        return self.assistant.status(CHANNEL, msg.sender).in_form

    def _progress(self, msg: InboundSms, reference: str | None) -> str:
        try:
            items = self.runtime.backend.progress(reference=reference) if reference else \
                self.runtime.backend.progress(phone=msg.phone or msg.sender)
        except ValueError:
            items = []
        if not items:
            return self.desk.text("progress_none", ref=reference) if reference else self.desk.text("progress_none_phone")
        domain = self.assistant.engine.domain
        lines = [self.desk.text("progress_item", ref=i.reference,
                                category=REPORT_CATEGORIES.get(i.category) or domain.label("category", i.category),
                                status=domain.label("status", i.status)) for i in items[:3]]
        return "".join(lines)

    def _rate(self, msg: InboundSms, match: re.Match[str] | None) -> list[str]:
        if match is None:
            return self._answer(msg, "keyword", self.desk.text("rate_usage"))
        raw = match.group(1)
        score = int(raw) if raw.isdigit() else _CN_DIGITS[raw]

        def work(unit: UnitOfWork) -> list[str]:
            existing = self._existing(unit, msg)
            if existing is not None:
                return existing
            text = self.desk.rate(unit, msg.from_hash, score, match.group(2))
            reply = segments(text)
            self._record(unit, msg, "keyword", reply, None)
            return reply

        return self.desk.run(work)

    def _conversation(self, msg: InboundSms, text: str) -> list[str]:
        stored = self.stored_reply(msg.message_sid)
        if stored is not None:  # an older turn redelivered: the core must not take it again
            return stored
        key = f"sms-channel:{msg.sender}"
        state = self.runtime.sessions.load(key) or {}
        expects = state.get("expects")
        word = _keyword(text)
        if expects in _DIGIT_WORDS and word in _DIGIT_WORDS[expects]:
            text = _DIGIT_WORDS[expects][word]
        replies = self.assistant.handle(UserMessage(
            sender_id=msg.sender, text=text, channel=CHANNEL, phone=msg.phone, message_id=msg.message_sid,
            metadata={"num_media": msg.num_media},
        ))
        rendered, expects = render_sms(replies)
        self.runtime.sessions.save(key, {"expects": expects}, self.runtime.settings.session_ttl_seconds)
        return self._answer(msg, "conversation", rendered)


def twiml(reply: Sequence[str]) -> Response:
    response = MessagingResponse()
    for segment in reply:
        response.message(segment)
    return Response(str(response), mimetype="application/xml")


def make_blueprint(runtime: ChannelRuntime) -> Blueprint:
    bp = Blueprint(NAME, __name__)
    handler = SmsHandler(runtime)
    signature = TwilioSignature(handler.loop.twilio, NAME)

    def signed() -> bool:
        return signature.ok(request)

    def refuse() -> Response:
        return signature.refuse(request)

    def bad(detail: str) -> Response:
        return Response(detail, status=400, mimetype="text/plain")

    @bp.post("/webhooks/twilio/sms")
    def inbound() -> Response:
        if not signed():
            return refuse()
        form = request.form
        sid = form.get("MessageSid") or form.get("SmsSid") or ""
        sender = (form.get("From") or "").strip()
        if not SID_RE.match(sid):
            return bad("MessageSid missing or malformed")
        if not sender or len(sender) > 64:
            return bad("From missing or malformed")
        try:
            num_media = int(form.get("NumMedia") or 0)
        except ValueError:
            return bad("NumMedia is not a number")
        if not 0 <= num_media <= MAX_MEDIA:
            return bad("NumMedia out of range")
        media = tuple(
            IncomingMedia(url, (form.get(f"MediaContentType{i}") or "").strip())
            for i in range(num_media) if (url := (form.get(f"MediaUrl{i}") or "").strip())
        )
        message = InboundSms(sid, sender, mainland_mobile(sender), clean_body(form.get("Body") or ""),
                             media, num_media, handler.desk.phone_hash(sender))
        try:
            return twiml(handler.handle(message))
        except Exception:
            # Nothing was committed for this message (one transaction per path), so asking the
            # resident to send again loses nothing; the carrier still gets valid TwiML.
            log.exception("sms webhook failed")
            return twiml([handler.desk.text("busy", hotline=runtime.settings.dialogue_settings().hotline)])

    @bp.post("/webhooks/twilio/sms/status")
    def status() -> Response:
        if not signed():
            return refuse()
        sid = request.form.get("MessageSid") or request.form.get("SmsSid") or ""
        state = (request.form.get("MessageStatus") or request.form.get("SmsStatus") or "").strip().lower()
        if not SID_RE.match(sid) or not state:
            return bad("MessageSid/MessageStatus missing")
        if not handler.loop.outbox.on_status(sid, state, request.form.get("ErrorCode") or None):
            log.info("status callback for a message we do not know (%s)", state)
        return Response(status=204)

    return bp
