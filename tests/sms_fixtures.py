"""Fixtures for the SMS channel and the ticket loop: a runtime whose Twilio settings point at
loopback fakes of Twilio's API and media host, and a client that posts signed webhooks."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures.twilio_world import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    FROM_NUMBER,
    RESIDENT,
    FakeTwilioApi,
    MediaServer,
    inbound_params,
    sign,
    start_media_server,
    start_twilio_api,
    status_params,
)
from flask import Flask

from assistant.config import load_settings
from backend.tickets.ocr import NoTextReader
from channels import twilio_sms
from channels.app import create_app
from runtime.container import build_runtime
from runtime.ticket_loop import build_ticket_loop

PUBLIC_BASE_URL = "https://sms.example.org"


@pytest.fixture(scope="session")
def twilio_api() -> Iterator[FakeTwilioApi]:
    api = start_twilio_api()
    yield api
    api.close()


@pytest.fixture(scope="session")
def media_server() -> Iterator[MediaServer]:
    server = start_media_server()
    yield server
    server.close()


@pytest.fixture
def sms_env(settings_env: dict[str, str], twilio_api: FakeTwilioApi, media_server: MediaServer) -> dict[str, str]:
    twilio_api.sent.clear()
    twilio_api.fail_next = 0
    return {**settings_env, "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
            "TWILIO_FROM_NUMBER": FROM_NUMBER, "TWILIO_API_BASE_URL": twilio_api.base_url,
            "PUBLIC_BASE_URL": PUBLIC_BASE_URL, "MEDIA_ALLOWED_HOSTS": media_server.host,
            "STAFF_API_TOKEN": "staff-token-for-tests", "OPEN311_API_KEYS": "city-tool-key"}


def make_sms_runtime(env: dict[str, str], nlu, clock, *, ocr: bool = False):
    Path(env["DATA_DIR"]).mkdir(parents=True, exist_ok=True)
    runtime = build_runtime(load_settings(env), clock=clock, nlu=nlu)
    backend = runtime.backend
    runtime.ticket_loop = build_ticket_loop(runtime.settings, backend.session_factory, backend.cipher, clock,
                                            reader=None if ocr else NoTextReader())
    return runtime


@pytest.fixture
def sms_runtime(sms_env: dict[str, str], nlu, clock):
    return make_sms_runtime(sms_env, nlu, clock)


def build_app(runtime) -> Flask:
    app = create_app(runtime)
    if "twilio_sms" not in app.blueprints:  # until channels/app.py lists the channel
        app.register_blueprint(twilio_sms.make_blueprint(runtime))
    for module_name in ("staff_api", "staff_console", "open311"):
        module = __import__(f"channels.{module_name}", fromlist=["make_blueprint"])
        if module.NAME not in app.blueprints:
            app.register_blueprint(module.make_blueprint(runtime))
    return app


class SmsClient:
    """Posts signed Twilio webhooks to the app and reads the TwiML answers."""

    def __init__(self, runtime, twilio_api: FakeTwilioApi, media_server: MediaServer, clock) -> None:
        self.runtime = runtime
        self.app = build_app(runtime)
        self.client = self.app.test_client()
        self.api = twilio_api
        self.media = media_server
        self.clock = clock
        self.loop = runtime.ticket_loop
        self.worker = self.loop.worker("test-worker")

    def post(self, path: str, params: dict[str, str], *, signature: str | None = None):
        signature = sign(PUBLIC_BASE_URL + path, params) if signature is None else signature
        return self.client.post(path, data=params, headers={"X-Twilio-Signature": signature})

    def send(self, body: str = "", *, sender: str = RESIDENT, media: list[tuple[str, str]] | None = None,
             sid: str | None = None, **extra: str) -> list[str]:
        response = self.post("/webhooks/twilio/sms", inbound_params(body, sid=sid, sender=sender, media=media,
                                                                     **extra))
        assert response.status_code == 200, response.get_data(as_text=True)
        assert response.mimetype == "application/xml"
        return twiml_messages(response.get_data(as_text=True))

    def status(self, sid: str, status: str, error_code: str | None = None):
        return self.post("/webhooks/twilio/sms/status", status_params(sid, status, error_code))

    def run_jobs(self, *, after_seconds: float = 0) -> int:
        if after_seconds:
            self.clock.advance(seconds=after_seconds)
        return self.worker.run_until_idle()

    def texts_to(self, number: str = RESIDENT) -> list[str]:
        return [m.body for m in self.api.sent if m.to == number]


def twiml_messages(xml: str) -> list[str]:
    root = ET.fromstring(xml)
    assert root.tag == "Response"
    return [el.text or "" for el in root.findall("Message")]


def reference_in(text: str) -> str:
    match = re.search(r"(?<!\d)(3\d{7})(?!\d)", text)
    assert match, f"no ticket reference in {text!r}"
    return match.group(1)


@pytest.fixture
def sms(sms_runtime, twilio_api, media_server, clock) -> SmsClient:
    return SmsClient(sms_runtime, twilio_api, media_server, clock)


__all__ = ["SmsClient", "inbound_params", "status_params", "reference_in", "twiml_messages", "make_sms_runtime"]
