"""Composition root: builds the store, session store, NLU, dialogue and assistant from Settings.

The only place that knows every layer; assistant/ never imports backend/ or channels/.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from assistant.config import Settings
from assistant.core import Assistant
from assistant.dialogue.domain import Domain
from assistant.dialogue.engine import DialogueEngine
from assistant.nlu.pipeline import NLU, NLUSettings
from assistant.ports import Clock, SessionStore
from backend import db
from backend.calls import CallLog
from backend.crypto import FieldCipher
from backend.keys_policy import load_allowed_keys
from backend.outbox import Outbox
from backend.proxy import OutboxNotifier, ProxyAwareBackend, ProxyPolicy, ProxyService
from backend.services import StoreBackend
from backend.sessions import make_session_store

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    assistant: Assistant
    backend: StoreBackend
    sessions: SessionStore
    clock: Clock
    cipher: FieldCipher
    db_sessions: Callable[[], Session]  # SQLAlchemy session factory for other backend services
    calls: CallLog
    proxies: ProxyService | None = None
    voice: Any = None  # runtime.voice_services.VoiceServices, built on first use
    alerts: Any = None  # backend.alerts.desk.AlertDesk, built on first use (runtime.cli_alerts)
    ticket_loop: Any = None  # runtime.ticket_loop.TicketLoop (jobs, SMS outbox, tickets), built on first use


def make_clock(settings: Settings) -> Callable[[], datetime]:
    tz = settings.timezone
    return lambda: datetime.now(tz)


def load_nlu(settings: Settings) -> NLU:
    return NLU.load_or_train(NLUSettings.from_config(settings.config, settings.root, settings.model_dir))


def make_cipher(settings: Settings) -> FieldCipher:
    # Refuses APP_ENV=production with development or placeholder keys, before any are generated.
    return FieldCipher(load_allowed_keys(settings.env, settings.data_dir / "keys.json"))


def open_database(settings: Settings, migrate: bool = True) -> Callable[[], Session]:
    if migrate:
        db.upgrade(settings.database_url)
    return db.session_factory(db.make_engine(settings.database_url))


def build_backend(settings: Settings, clock: Clock, cipher: FieldCipher, migrate: bool = True) -> StoreBackend:
    return StoreBackend(open_database(settings, migrate), cipher, clock)


def build_runtime(
    settings: Settings,
    *,
    clock: Clock | None = None,
    sessions: SessionStore | None = None,
    nlu: NLU | None = None,
    migrate: bool = True,
) -> Runtime:
    clock = clock or make_clock(settings)
    cipher = make_cipher(settings)
    db_sessions = open_database(settings, migrate)
    backend = StoreBackend(db_sessions, cipher, clock)
    sessions = sessions or make_session_store(settings.redis_url, cipher)
    nlu = nlu or load_nlu(settings)
    domain = Domain.load(settings.root / "domain.yml")
    # Family proxies: a case filed for someone else needs the senior's grant (backend/proxy.py).
    proxies = ProxyService(db_sessions, cipher, OutboxNotifier(Outbox(db_sessions, cipher, clock, None)),
                           clock, ProxyPolicy.from_config(settings.config))
    guarded = ProxyAwareBackend(backend, proxies, lambda category: domain.label("category", category))
    engine = DialogueEngine(domain, guarded, settings.dialogue_settings(), clock)
    assistant = Assistant(nlu, engine, sessions, clock, settings.session_ttl_seconds)
    return Runtime(settings, assistant, backend, sessions, clock, cipher, db_sessions,
                   CallLog(db_sessions, cipher, clock), proxies)
