"""What a channel may use of the running service: the typed port between the channels and the
composition root (runtime/container.py `Runtime` is the one implementation; tests hand in the
same). Channels translate wire formats to turns and back through these parts only."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # types only: channels do not import the composition root at run time
    from sqlalchemy.orm import Session

    from assistant.config import Settings
    from assistant.core import Assistant
    from assistant.dialogue.domain import Domain
    from assistant.ivr import IvrFlow
    from assistant.ports import Clock, SessionStore
    from assistant.voice.recognizer import DecodePool, VoiceConfig
    from assistant.voice.tts import Speech, SpeechChunk
    from backend.affairs import StoreBackend
    from backend.alerts.desk import AlertDesk
    from backend.infra.crypto import FieldCipher
    from backend.messaging.calls import CallLog
    from backend.outreach.service import Outreach
    from backend.people.dashboard import DashboardQueries
    from backend.people.exports import Exports
    from backend.people.proxy import ProxyService
    from backend.people.staff import StaffDirectory
    from backend.people.staff_queries import StaffQueries
    from backend.tickets import TicketDesk
    from channels.twilio_signature import TwilioConfig


class VoicePort(Protocol):
    """What the voice channels use of runtime.voice_services.VoiceServices."""

    config: VoiceConfig

    @property
    def pool(self) -> DecodePool | None: ...  # the local recogniser, None without one

    @property
    def unavailable(self) -> str | None: ...  # why there is no recogniser, in words

    @property
    def local_voice(self) -> bool: ...  # audio made here (<Play>, kiosk, streams) or <Say>

    def carrier_speech(self, text: str, language: str = "zh") -> Speech: ...

    def stream(self, text: str, language: str = "zh") -> Iterator[SpeechChunk]: ...

    def pieces(self, text: str) -> list[str]: ...

    def prepare(self, text: str, language: str = "zh") -> str | None: ...

    def await_file(self, name: str, timeout: float) -> Path | None: ...


class TicketLoopPort(Protocol):
    """What channels use of runtime.ticket_loop.TicketLoop."""

    desk: TicketDesk
    twilio: TwilioConfig


class StaffPort(Protocol):
    """What channels use of runtime.container.StaffServices."""

    directory: StaffDirectory
    queries: StaffQueries
    dashboard: DashboardQueries
    exports: Exports


class ChannelRuntime(Protocol):
    settings: Settings
    assistant: Assistant  # one call per user turn: `turn()`, `status()`
    backend: StoreBackend  # cases and progress for staff-side channel steps (whisper, Open311)
    sessions: SessionStore  # the channels' own short-lived call state (menus, streams)
    clock: Clock
    cipher: FieldCipher
    db_sessions: Callable[[], Session]
    calls: CallLog
    proxies: ProxyService | None

    @property
    def domain(self) -> Domain: ...

    @property
    def ivr_flow(self) -> IvrFlow: ...

    # Assembled in runtime/ (which imports the channels): named here by the small ports above.
    @property
    def ticket_loop(self) -> TicketLoopPort: ...

    @property
    def alerts(self) -> AlertDesk: ...

    @property
    def outreach(self) -> Outreach: ...

    @property
    def staff(self) -> StaffPort: ...

    @property
    def voice(self) -> VoicePort: ...

    def loading(self) -> dict[str, str]: ...
