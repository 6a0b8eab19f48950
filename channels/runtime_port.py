"""What a channel may use of the running service: the typed port between the channels and the
composition root (runtime/container.py `Runtime` is the one implementation; tests hand in the
same). Channels translate wire formats to turns and back through these parts only."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # types only: channels do not import the composition root at run time
    from sqlalchemy.orm import Session

    from assistant.config import Settings
    from assistant.core import Assistant
    from assistant.dialogue.domain import Domain
    from assistant.ivr import IvrFlow
    from assistant.ports import Clock, SessionStore
    from backend.affairs import StoreBackend
    from backend.alerts.desk import AlertDesk
    from backend.infra.crypto import FieldCipher
    from backend.messaging.calls import CallLog
    from backend.people.proxy import ProxyService


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

    # The three below are assembled in runtime/ (which imports the channels), so naming their
    # types here would tie a circle: Any until they move into the backend's domain packages.
    @property
    def ticket_loop(self) -> Any: ...  # runtime.ticket_loop.TicketLoop: .desk, .outbox, .jobs

    @property
    def alerts(self) -> AlertDesk: ...

    @property
    def staff(self) -> Any: ...  # runtime.container.StaffServices: .directory, .queries

    @property
    def voice(self) -> Any: ...  # runtime.voice_services.VoiceServices: recogniser pool, voices

    def loading(self) -> dict[str, str]: ...
