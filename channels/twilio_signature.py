"""X-Twilio-Signature checking shared by every Twilio webhook (SMS, voice).

On by default; TWILIO_SKIP_SIGNATURE=1 turns it off explicitly for local development. Behind a
proxy, PUBLIC_BASE_URL names the URL Twilio signed.
"""
from __future__ import annotations

import logging

from flask import Request, Response
from twilio.request_validator import RequestValidator

from runtime.ticket_loop import TwilioConfig

log = logging.getLogger(__name__)


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
