"""Twilio settings from the environment, and the X-Twilio-Signature check shared by every Twilio
webhook (SMS, voice, sensors' call status).

On by default; TWILIO_SKIP_SIGNATURE=1 turns it off explicitly for local development. Behind a
proxy, PUBLIC_BASE_URL names the URL Twilio signed.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from flask import Request, Response
from twilio.request_validator import RequestValidator

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TwilioConfig:
    account_sid: str | None
    auth_token: str | None
    public_base_url: str | None  # the URL Twilio signs, when we sit behind a proxy
    skip_signature: bool  # explicit, for local development only
    from_number: str | None
    messaging_service_sid: str | None
    api_base_url: str | None  # another Twilio API host (a regional edge, or a test server)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TwilioConfig:
        return cls(
            account_sid=env.get("TWILIO_ACCOUNT_SID") or None,
            auth_token=env.get("TWILIO_AUTH_TOKEN") or None,
            public_base_url=(env.get("PUBLIC_BASE_URL") or "").rstrip("/") or None,
            skip_signature=env.get("TWILIO_SKIP_SIGNATURE") == "1",
            from_number=env.get("TWILIO_FROM_NUMBER") or None,
            messaging_service_sid=env.get("TWILIO_MESSAGING_SERVICE_SID") or None,
            api_base_url=(env.get("TWILIO_API_BASE_URL") or "").rstrip("/") or None,
        )

    def status_callback(self) -> str | None:
        return f"{self.public_base_url}/webhooks/twilio/sms/status" if self.public_base_url else None


class TwilioSignature:
    def __init__(self, config: TwilioConfig, channel: str) -> None:
        self.config = config
        self.validator = RequestValidator(config.auth_token) if config.auth_token else None
        if config.skip_signature:
            log.warning("%s: TWILIO_SKIP_SIGNATURE=1, webhook signatures are NOT checked (development only)",
                        channel)
        elif self.validator is None:
            log.warning("%s: TWILIO_AUTH_TOKEN is not set, every Twilio webhook will be refused (403)", channel)

    def signed_url(self, request: Request) -> str:
        if not self.config.public_base_url:
            return request.url
        query = request.query_string.decode("latin-1")
        return self.config.public_base_url + request.path + (f"?{query}" if query else "")

    def ok(self, request: Request) -> bool:
        if self.config.skip_signature:
            return True
        signature = request.headers.get("X-Twilio-Signature", "")
        if self.validator is None or not signature:
            return False
        return bool(self.validator.validate(self.signed_url(request), request.form, signature))

    @staticmethod
    def refuse(request: Request) -> Response:
        log.warning("refused Twilio webhook %s: bad or missing X-Twilio-Signature (from %s)",
                    request.path, request.remote_addr)
        return Response("invalid signature", status=403, mimetype="text/plain")
