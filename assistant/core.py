"""The assistant as the channels see it: one call per user turn, state in the session store."""
from __future__ import annotations

import logging
from dataclasses import asdict, replace

from assistant import logcontext
from assistant.dialogue.engine import DialogueEngine
from assistant.dialogue.state import ConversationState
from assistant.nlu.pipeline import NLU
from assistant.ports import Clock, LanguagePreferences, SessionStore, StoreUnavailable
from assistant.types import Button, ConversationStatus, ParseResult, Reply, Turn, UserMessage

log = logging.getLogger(__name__)


class Assistant:
    def __init__(self, nlu: NLU, engine: DialogueEngine, sessions: SessionStore, clock: Clock,
                 session_ttl_seconds: int, lock_timeout_seconds: float = 3.0,
                 languages: LanguagePreferences | None = None) -> None:
        self.nlu = nlu
        self.languages = languages
        self.engine = engine
        self.sessions = sessions
        self.clock = clock
        self.session_ttl_seconds = session_ttl_seconds
        self.lock_timeout_seconds = lock_timeout_seconds

    @staticmethod
    def session_key(channel: str, sender_id: str) -> str:
        return f"{channel}:{sender_id}"

    def parse(self, text: str) -> ParseResult:
        return self.nlu.parse(text, self.clock())

    def handle(self, message: UserMessage) -> list[Reply]:
        return list(self.turn(message).replies)

    def turn(self, message: UserMessage) -> Turn:
        """One user turn: the replies, and the conversation's status after it."""
        # The lock wait is short: a turn takes milliseconds, so a held lock means a double tap or
        # a turn cut by a crash (its lease then runs out); a sync web worker must not sit waiting.
        try:
            return self._turn(message)
        except TimeoutError:
            # Another turn of this conversation is still running (a double tap, a retried
            # webhook); answering kindly beats queueing the resident behind it.
            rendered = self.engine.domain.render("utter_busy")
            return Turn((Reply(rendered.text, speech=rendered.speech, name="utter_busy"),), ConversationStatus(active=True))
        except StoreUnavailable:
            # Nothing of this turn was kept: say so, and give a way to a person that works now.
            log.warning("session store unavailable: answered 'try again later'", exc_info=True)
            hotline = {"hotline": self.engine.settings.hotline}
            rendered = self.engine.domain.render("utter_unavailable", hotline, hotline)
            return Turn((Reply(rendered.text, speech=rendered.speech, name="utter_unavailable"),), ConversationStatus())

    def status(self, channel: str, sender_id: str) -> ConversationStatus:
        """Where this sender's conversation stands (no lock: a read between turns).
        Raises StoreUnavailable when the session store cannot be read."""
        raw = self.sessions.load(self.session_key(channel, sender_id))
        return _status(ConversationState.from_dict(raw)) if raw else ConversationStatus()

    def _turn(self, message: UserMessage) -> Turn:
        key = self.session_key(message.channel, message.sender_id)
        # Log lines of this turn carry a non-personal id of the conversation, the same in any worker.
        with logcontext.conversation(key), self.sessions.lock(key, self.lock_timeout_seconds):
            raw = self.sessions.load(key)
            state = (
                ConversationState.from_dict(raw)
                if raw
                else ConversationState(sender_id=message.sender_id, channel=message.channel, phone=message.phone)
            )
            if message.message_id and message.message_id == state.last_message_id:
                # A redelivered webhook gets the same answer and changes nothing.
                return Turn(tuple(_reply_from_dict(r) for r in state.last_turn_replies), _status(state))
            if not raw:
                self._preferred_language(state, message)
            spoken = state.language
            parse = self.nlu.parse(message.text, self.clock())
            replies = self.engine.handle(state, parse, message)
            if state.replay and state.offer is None:  # "您想用广东话吗？" answered: now the request itself
                text, state.replay = state.replay, None
                replies += self.engine.handle(state, self.nlu.parse(text, self.clock()),
                                              replace(message, text=text, message_id=None,
                                                      metadata={**message.metadata, "replay": True}))
            if state.language != spoken and self.languages is not None and message.phone:
                self.languages.remember(message.phone, state.language, message.channel)
            state.last_message_id = message.message_id
            state.last_turn_replies = [asdict(r) for r in replies]
            if replies and replies[-1].end_session:
                self.sessions.delete(key)
                return Turn(tuple(replies), ConversationStatus())
            self.sessions.save(key, state.to_dict(), self.session_ttl_seconds)
        return Turn(tuple(replies), _status(state))

    def _preferred_language(self, state: ConversationState, message: UserMessage) -> None:
        if self.languages is None or not message.phone:
            return
        chosen = self.languages.language_for(message.phone, message.channel)
        if chosen:
            state.language, state.language_settled = chosen, True

    def begin(self, channel: str, sender_id: str, phone: str | None, language: str | None = None) -> str:
        """Before the first turn (a call's greeting): the caller's language (`language`, or their
        stored preference), with a conversation stored in it when it is not Mandarin, so the menus
        that follow speak it too."""
        state = ConversationState(sender_id=sender_id, channel=channel, phone=phone)
        if language:
            state.language, state.language_settled = language, True
        else:
            self._preferred_language(state, UserMessage(sender_id=sender_id, text="", channel=channel, phone=phone))
        if state.language != "zh":
            key = self.session_key(channel, sender_id)
            with self.sessions.lock(key, self.lock_timeout_seconds):
                if not self.sessions.load(key):
                    self.sessions.save(key, state.to_dict(), self.session_ttl_seconds)
        return state.language

    def reset(self, channel: str, sender_id: str) -> None:
        self.sessions.delete(self.session_key(channel, sender_id))


def _status(state: ConversationState) -> ConversationStatus:
    last = state.last_turn_replies[-1] if state.last_turn_replies else {}
    return ConversationStatus(active=True, in_form=state.form is not None, confirming=state.confirming,
                              offer=state.offer is not None, expects=last.get("expects"),
                              language=state.language)


def _reply_from_dict(data: dict) -> Reply:
    buttons = tuple(Button(**b) for b in data.get("buttons") or ())
    return Reply(**{**data, "buttons": buttons})
