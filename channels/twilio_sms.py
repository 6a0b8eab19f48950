"""SMS/MMS channel (Twilio Messaging): receive half (webhooks) and send half (REST API).

POST /webhooks/twilio/sms          Twilio's inbound message webhook (MessageSid, From, To, Body,
                                   NumMedia, MediaUrl{i}, MediaContentType{i}, FromCity …)
                                   → TwiML <Response><Message>…</Message></Response>
POST /webhooks/twilio/sms/status   delivery status callbacks for our outbound messages → 204

A thin translator: it checks X-Twilio-Signature (403 otherwise, logged; turning the check off
is the explicit development setting TWILIO_SKIP_SIGNATURE=1), parses Twilio's form into a typed
`InboundSms` (400 when malformed), hands it to the inbox (backend/messaging/inbox/ decides what the
message is and answers each MessageSid once) and renders the answer as TwiML. The conversation's
SMS rendering is channels/sms_render.py. Any failure still answers valid TwiML.
"""
from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from flask import Blueprint, Response, request
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client
from twilio.twiml.messaging_response import MessagingResponse

from backend.messaging.inbox import InboundSms, SmsInbox
from backend.messaging.outbox import Outbox, SendError, SendResult, SmsSender
from backend.messaging.sms_format import e164, mainland_mobile
from backend.messaging.sms_inbox import InboundLedger
from backend.tickets import IncomingMedia
from channels.runtime_port import ChannelRuntime
from channels.scratch import Scratch
from channels.sms_render import SmsConversation, SmsScratch, require_responses
from channels.twilio_signature import TwilioConfig, TwilioSignature

log = logging.getLogger(__name__)

NAME = "twilio_sms"
SID_RE = re.compile(r"^(SM|MM|SS)[0-9a-fA-F]{32}$")
MAX_MEDIA = 10  # Twilio's own limit per MMS
_INVISIBLE_RE = re.compile(r"[\u0000-\u0008\u000b-\u001f\u007f\u200b-\u200f\u2060\ufeff]")


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
class MalformedWebhook(ValueError):
    """A field Twilio always sends is missing or out of range: 400, and nothing is stored."""


def clean_body(text: str) -> str:
    text = unicodedata.normalize("NFKC", text or "")
    return _INVISIBLE_RE.sub("", text).strip()


def parse_inbound(form: Mapping[str, str]) -> InboundSms:
    """Twilio's inbound-message form as a typed message."""
    sid = form.get("MessageSid") or form.get("SmsSid") or ""
    sender = (form.get("From") or "").strip()
    if not SID_RE.match(sid):
        raise MalformedWebhook("MessageSid missing or malformed")
    if not sender or len(sender) > 64:
        raise MalformedWebhook("From missing or malformed")
    try:
        num_media = int(form.get("NumMedia") or 0)
    except ValueError:
        raise MalformedWebhook("NumMedia is not a number") from None
    if not 0 <= num_media <= MAX_MEDIA:
        raise MalformedWebhook("NumMedia out of range")
    media = tuple(
        IncomingMedia(url, (form.get(f"MediaContentType{i}") or "").strip())
        for i in range(num_media) if (url := (form.get(f"MediaUrl{i}") or "").strip())
    )
    return InboundSms(sid, sender, mainland_mobile(sender), clean_body(form.get("Body") or ""), media, num_media)


def twiml(reply: Sequence[str]) -> Response:
    response = MessagingResponse()
    for segment in reply:
        response.message(segment)
    return Response(str(response), mimetype="application/xml")


def _bad(detail: str) -> Response:
    return Response(detail, status=400, mimetype="text/plain")


@dataclass(frozen=True)
class SmsEndpoints:
    """What the webhook handlers share."""

    inbox: SmsInbox
    signature: TwilioSignature
    outbox: Outbox


def receive_message(endpoints: SmsEndpoints) -> Response:
    if not endpoints.signature.ok(request):
        return endpoints.signature.refuse(request)
    try:
        message = parse_inbound(request.form)
    except MalformedWebhook as exc:
        return _bad(str(exc))
    try:
        return twiml(endpoints.inbox.receive(message).segments)
    except Exception:
        # The inbox released the message's claim, so asking the resident to send again loses
        # nothing; the carrier still gets valid TwiML.
        log.exception("sms webhook failed")
        return twiml(endpoints.inbox.busy())


def receive_status(endpoints: SmsEndpoints) -> Response:
    if not endpoints.signature.ok(request):
        return endpoints.signature.refuse(request)
    sid = request.form.get("MessageSid") or request.form.get("SmsSid") or ""
    state = (request.form.get("MessageStatus") or request.form.get("SmsStatus") or "").strip().lower()
    if not SID_RE.match(sid) or not state:
        return _bad("MessageSid/MessageStatus missing")
    if not endpoints.outbox.on_status(sid, state, request.form.get("ErrorCode") or None):
        log.info("status callback for a message we do not know (%s)", state)
    return Response(status=204)


# path, endpoint name, handler
ROUTES: tuple[tuple[str, str, Callable[[SmsEndpoints], Response]], ...] = (
    ("/webhooks/twilio/sms", "inbound", receive_message),
    ("/webhooks/twilio/sms/status", "status", receive_status),
)


def build_endpoints(runtime: ChannelRuntime) -> SmsEndpoints:
    require_responses(runtime.domain)  # refuse to start without the SMS sentences
    loop = runtime.ticket_loop
    scratch = Scratch(runtime.sessions, "sms", SmsScratch, runtime.settings.session_ttl_seconds)
    inbox = SmsInbox(loop.desk, InboundLedger(loop.cipher), runtime, runtime.backend.progress, runtime.domain,
                     SmsConversation(runtime.assistant, runtime.domain, scratch),
                     hotline=runtime.settings.dialogue_settings().hotline)
    return SmsEndpoints(inbox, TwilioSignature(loop.twilio, NAME), loop.outbox)


def make_blueprint(runtime: ChannelRuntime) -> Blueprint:
    bp = Blueprint(NAME, __name__)
    endpoints = build_endpoints(runtime)
    for path, endpoint, handler in ROUTES:
        bp.add_url_rule(path, endpoint, partial(handler, endpoints), methods=["POST"])
    return bp
