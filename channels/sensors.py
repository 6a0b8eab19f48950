"""Care-alert channel: home sensors in, alert-call key presses in.

POST /api/sensors/readings          a batch of readings from a home gateway or device
     Authorization: Bearer <device token>   (X-Device-Token works too)
     {"readings": [{"device": "W-H001", "kind": "water", "value": 1234.5,
                    "ts": "2026-11-25T10:00:00+08:00", "household": "H001"?}, …]}  (or a bare list)
     → 202 {"accepted", "duplicates", "kept_aside", "alerts"}
     4xx {"error", "detail", "index"?, "field"?}: unsupported_media_type 415, invalid_json 400,
     invalid_reading 400 (the first bad reading's index and field; nothing of the batch is kept),
     too_many_readings 413, invalid_token 401.
     Readings of devices we do not know (or of another home) are kept aside, not judged.

POST /webhooks/twilio/voice/alert?alert=<id>&contact=<id>
     the <Gather> action of an alert call (backend/alerts/desk.py): Digits 1 = 平安 / 收到,
     0 = 转社区. Signed by Twilio like every voice webhook; always answers TwiML.

Error details are API strings for gateways, in English; what a contact hears on an alert call
is the alert desk's texts (alert rules config), not this module's.
"""
from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, jsonify, request
from twilio.twiml.voice_response import VoiceResponse

from backend.alerts.desk import MAX_BATCH, BatchError, TokenError
from channels.routes import Route, register
from channels.runtime_port import ChannelRuntime
from channels.twilio_signature import TwilioConfig, TwilioSignature

log = logging.getLogger(__name__)

NAME = "sensors"
MAX_BODY = 256 * 1024


def _error(code: str, detail: str, status: int, **extra: Any):
    return jsonify({"error": code, "detail": detail, **extra}), status


def _device_token() -> str:
    auth = request.headers.get("Authorization", "")
    return auth[7:].strip() if auth.startswith("Bearer ") else request.headers.get("X-Device-Token", "")


class Sensors:
    """Readings in to the alert desk; an alert call's key press in, its answer out as TwiML."""

    def __init__(self, runtime: ChannelRuntime) -> None:
        self.desk = runtime.alerts
        self.signature = TwilioSignature(TwilioConfig.from_env(runtime.settings.env), "alert calls")

    def readings(self):
        token = _device_token()
        if not token:
            return _error("invalid_token", "device token missing (Authorization: Bearer …)", 401)
        if not request.is_json:
            return _error("unsupported_media_type", "send application/json", 415)
        if (request.content_length or 0) > MAX_BODY:
            return _error("too_many_readings", f"body over {MAX_BODY} bytes", 413)
        body = request.get_json(silent=True)
        if body is None:
            return _error("invalid_json", "body is not valid JSON", 400)
        items = body.get("readings") if isinstance(body, dict) else body
        if isinstance(items, list) and len(items) > MAX_BATCH:
            return _error("too_many_readings", f"at most {MAX_BATCH} readings per request", 413)
        try:
            result = self.desk.ingest(token, items)
        except TokenError:
            log.warning("sensor readings refused: unknown device token (from %s)", request.remote_addr)
            return _error("invalid_token", "unknown device token", 401)
        except BatchError as exc:
            extra = {"index": exc.index, "field": exc.field} if exc.index is not None else {"field": exc.field}
            return _error("invalid_reading", str(exc), 400, **extra)
        return jsonify({"accepted": result.accepted, "duplicates": result.duplicates,
                        "kept_aside": result.kept_aside, "alerts": len(result.alerts)}), 202

    def alert_call(self) -> Response:
        if not self.signature.ok(request):
            return TwilioSignature.refuse(request)
        response = VoiceResponse()
        response.say(self.alert_call_answer(), language="cmn-CN")
        response.hangup()
        return Response(str(response), mimetype="application/xml")

    def alert_call_answer(self) -> str:
        texts = self.desk.rules.texts
        try:
            alert_id, contact_id = int(request.args["alert"]), int(request.args["contact"])
            digits = (request.form.get("Digits") or request.args.get("Digits") or "").strip()
            return self.desk.call_answer(contact_id, alert_id, digits)
        except (KeyError, ValueError):
            return texts["call_no_input"]
        except Exception:  # never a 500 to the carrier
            log.exception("alert call webhook failed")
            return texts["call_transfer"]


ROUTES: list[Route] = [
    ("POST", "/api/sensors/readings", Sensors.readings),
    ("POST", "/webhooks/twilio/voice/alert", Sensors.alert_call),
]


def make_blueprint(runtime: ChannelRuntime) -> Blueprint:
    return register(Blueprint(NAME, __name__), ROUTES, Sensors(runtime))
