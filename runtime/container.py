"""Composition root: builds the store, session store, NLU, dialogue and assistant from Settings.

The only place that knows every layer; assistant/ never imports backend/ or channels/, and
channels/ get every service from the Runtime they are handed (never by importing runtime/).
"""
from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from sqlalchemy.orm import Session

from assistant.config import Settings
from assistant.core import Assistant
from assistant.dialogue.domain import Domain
from assistant.dialogue.engine import DialogueEngine
from assistant.nlu.pipeline import NLU, BackgroundNLU, NLUSettings
from assistant.ports import Clock, SessionStore
from assistant.work_orders import Taxonomy
from backend.affairs import StoreBackend
from backend.infra import audit, db
from backend.infra.crypto import FieldCipher
from backend.infra.keys_policy import load_allowed_keys
from backend.infra.private_files import secure_data_dir
from backend.infra.sessions import make_session_store
from backend.messaging.calls import CallLog
from backend.messaging.outbox import Outbox
from backend.outreach.prefs import LanguageStore
from backend.people.dashboard import DashboardQueries
from backend.people.exports import Exports
from backend.people.proxy import OutboxNotifier, ProxyAwareBackend, ProxyPolicy, ProxyService
from backend.people.staff import StaffDirectory, StaffPolicy
from backend.people.staff_queries import StaffQueries
from backend.tickets.model import due_soon_from_config

if TYPE_CHECKING:
    from assistant.ivr import IvrFlow
    from backend.alerts.desk import AlertDesk
    from backend.alerts.rules import AlertRules
    from backend.outreach.service import Outreach
    from runtime.ticket_loop import TicketLoop
    from runtime.voice_services import VoiceServices

log = logging.getLogger(__name__)
T = TypeVar("T")


class built_once(Generic[T]):  # lower case: used like functools.cached_property
    """A cached property that holds a lock while it builds (functools' lost its lock in 3.12): two
    first requests at once must not build two ticket loops or load the recogniser twice. The value
    can be assigned instead (tests hand in a loop with a fake Twilio)."""

    _lock = threading.RLock()  # re-entrant: the alert desk builds the ticket loop it shares

    def __init__(self, build: Callable[[Any], T]) -> None:
        self.build, self.__doc__ = build, build.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, runtime: Any, owner: type | None = None) -> T:
        if runtime is None:
            return self  # type: ignore[return-value]
        with self._lock:
            if self.name not in runtime.__dict__:
                runtime.__dict__[self.name] = self.build(runtime)
        return runtime.__dict__[self.name]


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

    @property
    def domain(self) -> Domain:
        """domain.yml as the dialogue engine loaded (and checked) it: labels for staff pages too."""
        return self.assistant.engine.domain

    @built_once
    def ivr_flow(self) -> IvrFlow:
        """The phone menu (config.yml `voice.ivr_flow`, default ivr_flows/main.yml), checked once."""
        from assistant.ivr import IvrFlow

        path = (self.settings.config.get("voice") or {}).get("ivr_flow") or "ivr_flows/main.yml"
        return IvrFlow.load(self.settings.root / path)

    def loading(self) -> dict[str, str]:
        """What a turn needs and is still being loaded in the background (a web worker loads the
        NLU model after it starts): name → "loading" or "failed". Empty when ready; /readyz is
        503 until it is."""
        state = getattr(self.assistant.nlu, "state", "ok")
        return {} if state == "ok" else {"nlu": state}

    # Services a process may never need, built on first use: a touch-only kiosk never loads the
    # recogniser, a CLI command never opens the OCR models.
    @built_once
    def ticket_loop(self) -> TicketLoop:
        """Job queue, SMS outbox with its Twilio sender, and the ticket desk."""
        from runtime.ticket_loop import build_ticket_loop

        return build_ticket_loop(self.settings, self.db_sessions, self.cipher, self.clock)

    @built_once
    def alerts(self) -> AlertDesk:
        """The care-alert desk; it sends through the ticket loop's outbox (one worker drains both)."""
        return build_alert_desk(self.settings, self.db_sessions, self.cipher, self.clock, self.ticket_loop.outbox)

    @built_once
    def outreach(self) -> Outreach:
        """Check-in calls, notices and their outbound calls; alerts and SMS through the desks above."""
        return build_outreach(self.settings, self.db_sessions, self.clock, self.alerts, self.ticket_loop.outbox,
                              self.backend.create_handoff)

    @built_once
    def staff(self) -> StaffServices:
        """Staff directory (logins) and role-scoped queries for the console and department API."""
        return build_staff_services(self.settings, self.db_sessions, self.cipher, self.clock)

    @built_once
    def voice(self) -> VoiceServices:
        """Recogniser behind a decode pool, and the TTS engine with its cache."""
        from assistant.voice.recognizer import VoiceConfig
        from runtime.voice_services import VoiceServices

        settings = self.settings
        return VoiceServices(VoiceConfig.from_config(settings.config), settings.env, Path(settings.model_dir),
                             Path(settings.data_dir), cache_key=tts_cache_key(self.cipher))


def alert_rules(settings: Settings) -> AlertRules:
    from backend.alerts.rules import AlertRules

    tz = (settings.config.get("dialogue") or {}).get("timezone", "Asia/Shanghai")
    return AlertRules.from_config(settings.config.get("alerts"), tz)


def build_alert_desk(settings: Settings, sessions: Any, cipher: Any, clock: Any, outbox: Outbox, *,
                     call_placer: Any = None, integrations: Any = None) -> AlertDesk:
    """The desk for a runtime: same outbox as the ticket loop (one worker drains both)."""
    from backend.alerts.desk import AlertDesk
    from backend.alerts.dispatch import call_placer_from_env, integrations_from_config

    rules = alert_rules(settings)
    if integrations is None:
        integrations = integrations_from_config(rules.integrations, settings.env)
    if call_placer is None:
        call_placer = call_placer_from_env(settings.env)
    public = (settings.env.get("PUBLIC_BASE_URL") or "").rstrip("/") or None
    return AlertDesk(sessions, cipher, clock, outbox, rules, integrations=integrations,
                     call_placer=call_placer, public_base_url=public)


def build_outreach(settings: Settings, sessions: Any, clock: Any, alerts: AlertDesk, outbox: Outbox,
                   handoffs: Any = None, *, dialer: Any = None) -> Outreach:
    from backend.alerts.dispatch import call_placer_from_env
    from backend.outreach.service import Outreach

    tz = (settings.config.get("dialogue") or {}).get("timezone", "Asia/Shanghai")
    dialer = dialer if dialer is not None else call_placer_from_env(settings.env)
    return Outreach(sessions, clock, alerts, outbox, dialer, settings.config.get("outreach") or {}, settings.env,
                    handoffs, tz, settings.config.get("handoff") or {})


@dataclass
class StaffServices:
    """Staff logins and the role-scoped queries behind the console and the department API."""

    directory: StaffDirectory
    queries: StaffQueries
    dashboard: DashboardQueries
    exports: Exports


def build_staff_services(settings: Settings, sessions: Any, cipher: Any, clock: Any) -> StaffServices:
    policy = StaffPolicy.from_config(settings.config)
    queries = StaffQueries(sessions, cipher, clock, policy)
    return StaffServices(StaffDirectory(sessions, cipher, clock, policy), queries,
                         DashboardQueries(queries, sessions, settings.timezone, due_soon_from_config(settings.config)),
                         Exports(queries, sessions, cipher, Taxonomy.from_config(settings.config.get("tickets")),
                                 settings.timezone, clock))


def make_clock(settings: Settings) -> Callable[[], datetime]:
    tz = settings.timezone
    return lambda: datetime.now(tz)


def load_nlu(settings: Settings) -> NLU:
    return NLU.load_or_train(NLUSettings.from_config(settings.config, settings.root, settings.model_dir))


def load_nlu_in_background(settings: Settings, when_done: Callable[[NLU | None], None] | None = None
                           ) -> BackgroundNLU:
    """Web processes: the model (and jieba's dictionary) load in a thread while the server starts
    answering; /readyz is 503 until they are in memory. With the model on disk (`python -m
    assistant train --if-missing` at deploy time) that is about a second; without it, the first
    start trains (one process at a time: the others wait and load what it saved)."""
    return BackgroundNLU(lambda: load_nlu(settings), when_done=when_done)


class StartupGC:
    """Garbage collection off while a web process imports its libraries and loads the NLU model:
    pypinyin's and jieba's dictionaries and the model are millions of long-lived objects, and the
    collections their allocation triggers walk them again and again (about a quarter of the
    start-up CPU, measured). When every part is done: one collection, `gc.freeze()` (later full
    collections skip them: no 100+ ms pauses under load), collection back on."""

    def __init__(self, parts: int) -> None:
        gc.disable()
        self._left, self._lock = parts, threading.Lock()

    def done(self, *_: object) -> None:
        with self._lock:
            self._left -= 1
            if self._left != 0:
                return
        gc.collect()
        gc.freeze()
        gc.enable()


def make_cipher(settings: Settings) -> FieldCipher:
    # Refuses APP_ENV=production with development or placeholder keys, before any are generated.
    return FieldCipher(load_allowed_keys(settings.env, settings.data_dir / "keys.json"))


def tts_cache_key(cipher: FieldCipher) -> bytes:
    """Keys the TTS cache's file names (derived from the index key, so every process of the
    deployment names a sentence alike and nobody without the key can test a phone number)."""
    return bytes.fromhex(cipher.blind_index("tts-cache-names", "tts_cache"))


def open_database(settings: Settings, migrate: bool = True) -> Callable[[], Session]:
    if migrate:
        db.upgrade(settings.database_url)
    engine = db.make_engine(settings.database_url)
    audit.bind_from_settings(engine, settings)  # the chain is linked with the deployment's audit key
    return db.session_factory(engine)


def build_backend(settings: Settings, clock: Clock, cipher: FieldCipher, migrate: bool = True) -> StoreBackend:
    return StoreBackend(open_database(settings, migrate), cipher, clock)


def build_runtime(
    settings: Settings,
    *,
    clock: Clock | None = None,
    sessions: SessionStore | None = None,
    nlu: NLU | BackgroundNLU | None = None,
    migrate: bool = True,
) -> Runtime:
    clock = clock or make_clock(settings)
    # Before anything writes there (keys, store, photos, speech cache): owner-only, also on an
    # install that an older version left readable.
    secure_data_dir(settings.data_dir)
    cipher = make_cipher(settings)
    db_sessions = open_database(settings, migrate)
    backend = StoreBackend(db_sessions, cipher, clock)
    sessions = sessions or make_session_store(settings.redis_url, cipher)
    nlu = nlu or load_nlu(settings)
    domain = Domain.load(settings.root / "domain.yml")
    # Family proxies: a case filed for someone else needs the senior's grant (backend/people/proxy/).
    proxies = ProxyService(db_sessions, cipher, OutboxNotifier(Outbox(db_sessions, cipher, clock, None)),
                           clock, ProxyPolicy.from_config(settings.config))
    guarded = ProxyAwareBackend(backend, proxies, lambda category: domain.label("category", category))
    engine = DialogueEngine(domain, guarded, settings.dialogue_settings(), clock)
    assistant = Assistant(nlu, engine, sessions, clock, settings.session_ttl_seconds,
                          languages=LanguageStore(db_sessions, cipher, clock))
    return Runtime(settings, assistant, backend, sessions, clock, cipher, db_sessions,
                   CallLog(db_sessions, cipher, clock), proxies)
