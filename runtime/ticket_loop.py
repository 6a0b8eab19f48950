"""Composition of the ticket loop: job queue, SMS outbox + Twilio sender, ticket desk, worker.

Built from Settings like the rest of the runtime (runtime/container.py). Channels reach it as
`runtime.ticket_loop`; `ticket_loop_for(runtime)` builds it on first use for runtimes made
before the container knew about it.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from assistant.config import Settings
from assistant.ports import Clock
from backend.crypto import FieldCipher
from backend.gazetteer import Gazetteer
from backend.jobs import DbJobQueue, Worker
from backend.media import MediaStore
from backend.ocr import NoTextReader, RapidTextReader, TextReader
from backend.outbox import Outbox, SmsSender
from backend.sms_texts import texts_from_config
from backend.tickets import LoopSettings, Taxonomy, TicketDesk, media_policy_from_config

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


@dataclass
class TicketLoop:
    desk: TicketDesk
    outbox: Outbox
    queue: DbJobQueue
    twilio: TwilioConfig
    cipher: FieldCipher
    clock: Clock

    def worker(self, worker_id: str | None = None) -> Worker:
        return Worker(self.queue, {"ticket.process": lambda payload: self.desk.process(int(payload["ticket_id"]))},
                      tasks=(self.outbox.drain,), worker_id=worker_id)


def build_ticket_loop(settings: Settings, sessions: Any, cipher: FieldCipher, clock: Clock, *,
                      sender: SmsSender | None = None, reader: TextReader | None = None) -> TicketLoop:
    from channels.twilio_sms import make_sender  # the send half lives with the receive half

    config, env = settings.config, settings.env
    twilio = TwilioConfig.from_env(env)
    policy = media_policy_from_config(config, env)
    texts = texts_from_config((config.get("sms") or {}).get("texts"))
    auth = (twilio.account_sid, twilio.auth_token) if twilio.account_sid and twilio.auth_token else None
    media = MediaStore(Path(settings.data_dir) / "media", policy, auth)
    if reader is None:
        reader = RapidTextReader() if (config.get("media") or {}).get("ocr", True) else NoTextReader()
    if sender is None:
        sender = make_sender(twilio)
    outbox = Outbox(sessions, cipher, clock, sender)
    desk = TicketDesk(sessions, cipher, clock, outbox, LoopSettings.from_config(config, texts),
                      Taxonomy.from_config((config.get("tickets") or {}).get("taxonomy")),
                      Gazetteer.from_config(config.get("gazetteer")), media, reader)
    queue = DbJobQueue(sessions, clock, lease=timedelta(minutes=5))
    return TicketLoop(desk, outbox, queue, twilio, cipher, clock)


def ticket_loop_for(runtime: Any) -> TicketLoop:
    loop = getattr(runtime, "ticket_loop", None)
    if loop is None:
        backend = runtime.backend
        loop = build_ticket_loop(runtime.settings, backend.session_factory, backend.cipher, runtime.clock)
        runtime.ticket_loop = loop
    return loop
