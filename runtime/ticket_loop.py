"""Composition of the ticket loop: job queue, SMS outbox + Twilio sender, ticket desk, worker.

Built from Settings like the rest of the runtime; channels reach it as `runtime.ticket_loop`
(runtime/container.py builds it on first use).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from assistant.config import Settings
from assistant.ports import Clock
from backend.infra.crypto import FieldCipher
from backend.infra.jobs import DbJobQueue, Worker
from backend.messaging.outbox import Outbox, SmsSender
from backend.messaging.sms_texts import texts_from_config
from backend.tickets import LoopSettings, Taxonomy, TicketDesk, media_policy_from_config
from backend.tickets.deadlines import OVERDUE_JOB
from backend.tickets.gazetteer import Gazetteer
from backend.tickets.media import MediaStore
from backend.tickets.ocr import NoTextReader, RapidTextReader, TextReader
from channels.twilio_signature import TwilioConfig

log = logging.getLogger(__name__)


@dataclass
class TicketLoop:
    desk: TicketDesk
    outbox: Outbox
    queue: DbJobQueue
    twilio: TwilioConfig
    cipher: FieldCipher
    clock: Clock

    def worker(self, worker_id: str | None = None, extra_handlers: Mapping[str, Any] | None = None) -> Worker:
        """One worker drains every queue: tickets, their deadlines, the SMS outbox and (extra)
        care-alert jobs."""
        self.desk.arm_overdue_scan()
        handlers = {"ticket.process": lambda payload: self.desk.process(int(payload["ticket_id"])),
                    OVERDUE_JOB: self.desk.escalate_overdue, **(extra_handlers or {})}
        return Worker(self.queue, handlers, tasks=(self.outbox.drain,), worker_id=worker_id)


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
    # Leases: how long a claimed job / SMS is left alone before another worker may take it again
    # (a worker killed mid-way). Tunable for deployments, and short in the kill -9 tests.
    outbox = Outbox(sessions, cipher, clock, sender,
                    lease=timedelta(seconds=float(env.get("OUTBOX_LEASE_SECONDS", 120))))
    desk = TicketDesk(sessions, cipher, clock, outbox, LoopSettings.from_config(config, texts, env),
                      Taxonomy.from_config(config.get("tickets")),
                      Gazetteer.from_config(config.get("gazetteer")), media, reader)
    queue = DbJobQueue(sessions, clock, lease=timedelta(seconds=float(env.get("JOB_LEASE_SECONDS", 300))))
    return TicketLoop(desk, outbox, queue, twilio, cipher, clock)


PURGE_JOB, PURGE_KEY = "retention.purge", "retention.purge:daily"


def retention_handlers(settings: Settings, sessions: Any, clock: Clock) -> dict[str, Any]:
    """The daily retention purge as a recurring job: the first worker schedules it; each run
    purges, then re-arms itself for the same time tomorrow (so exactly one run a day, whichever
    worker takes it, and a missed day runs as soon as a worker is back)."""
    from backend.infra.jobs import enqueue_in, schedule_if_absent
    from backend.infra.retention import RetentionPolicy, purge

    hour = int((settings.config.get("retention") or {}).get("purge_hour", 3))  # local time, quiet hours
    tz = settings.timezone

    def next_run(after: datetime) -> datetime:
        local = after.astimezone(tz).replace(hour=hour, minute=0, second=0, microsecond=0)
        return local if local > after else local + timedelta(days=1)

    def run(_payload: Mapping[str, Any]) -> None:
        now = clock()
        report = purge(sessions, Path(settings.data_dir), RetentionPolicy.from_config(settings.config), now)
        log.info("retention purge: %s", report.summary())
        with sessions() as session, session.begin():
            enqueue_in(session, PURGE_JOB, {}, next_run(now), PURGE_KEY, now)

    schedule_if_absent(sessions, PURGE_JOB, PURGE_KEY, next_run(clock()))
    return {PURGE_JOB: run}


def worker_handlers(settings: Settings, sessions: Any, clock: Clock,
                    alert_handlers: Mapping[str, Any]) -> dict[str, Any]:
    """Every job a worker runs besides the loop's own: care alerts and retention."""
    return {**alert_handlers, **retention_handlers(settings, sessions, clock)}


def background_worker(runtime: Any, worker_id: str | None = None) -> Worker:
    """The worker for a runtime with every job handler (tickets, outbox, care alerts, outreach,
    retention)."""
    runtime.outreach.arm()
    handlers = worker_handlers(runtime.settings, runtime.db_sessions, runtime.clock,
                               {**runtime.alerts.job_handlers(), **runtime.outreach.job_handlers()})
    return runtime.ticket_loop.worker(worker_id, extra_handlers=handlers)
