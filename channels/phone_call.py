"""What a phone call does next, whatever carries it: Twilio <Gather> webhooks (twilio_voice.py)
or a Media Streams WebSocket with our own recogniser (twilio_media.py). Keys and speech go in;
a `CallStep` comes out: what to say, and whether to listen again, reach a person, or hang up.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from assistant.ivr import CallInput, IvrFlow, IvrNavigator, IvrOutcome
from assistant.ports import StoreUnavailable
from assistant.types import Reply, UserMessage
from channels.runtime_port import ChannelRuntime

CHANNEL = "voice"
LANGUAGES = ("zh", "yue")  # Mandarin (default), Cantonese
Next = Literal["listen", "person", "end"]


@dataclass(frozen=True)
class CallStep:
    say: tuple[str, ...]
    next: Next
    step: str | None = None  # listen: a menu step, "conv" (the core asked) or "confirm"
    expects: str | None = None  # what the core waits for (maps keys, chooses digit entry)
    tries: int = 0
    reference: str | None = None  # handoff case for the agent's whisper


class PhoneCall:
    def __init__(self, runtime: ChannelRuntime, flow: IvrFlow) -> None:
        self.runtime = runtime
        self.flow = flow
        self.nav = IvrNavigator(flow)
        self.calls = runtime.calls

    def language(self, call_sid: str) -> str:
        """The language the call is spoken in, as the conversation last left it ("zh" until then)."""
        try:
            language = self.runtime.assistant.status(CHANNEL, call_sid).language
        except StoreUnavailable:
            return "zh"  # the prompt still gets said, in the default voice
        return language if language in LANGUAGES else "zh"

    def greet(self, call_sid: str, caller: str | None) -> CallStep:
        self.calls.start(call_sid, caller)
        if self.calls.direct_to_human(caller):
            return self.person(call_sid, caller, (self.flow.greeting,))
        return self.menu(self.flow.start, (self.flow.greeting,))

    def menu(self, step: str, say: Sequence[str] = (), tries: int = 0) -> CallStep:
        return CallStep((*say, self.flow.steps[step].prompt), "listen", step=step, tries=tries)

    def heard(self, call_sid: str, caller: str | None, step: str, expects: str | None, tries: int,
              value: CallInput, message_id: str | None = None) -> CallStep:
        """One answer from the caller at `step` (keys, or speech with its confidence)."""
        if step == "confirm":
            return self._confirmed(call_sid, caller, value, message_id)
        outcome = self.nav.in_conversation(expects, value, tries) if step == "conv" \
            else self.nav.at_menu(step, value, tries)
        return self.follow(outcome, call_sid, caller, expects, step, message_id)

    def _confirmed(self, call_sid: str, caller: str | None, value: CallInput, message_id: str | None) -> CallStep:
        pending = self.runtime.sessions.load(f"ivr:{call_sid}") or {}
        self.runtime.sessions.delete(f"ivr:{call_sid}")
        said_yes = bool(value.speech) and self.runtime.assistant.parse(value.speech).intent.name == "affirm"
        if value.digits == "1" or said_yes:
            return self.converse(call_sid, caller, pending.get("pending") or "", message_id=message_id)
        if pending.get("step") in self.flow.steps:
            return self.menu(pending["step"], (self.nav.message("say_again"),))
        return CallStep((self.nav.message("say_again"),), "listen", step="conv", expects=pending.get("expects"))

    def follow(self, outcome: IvrOutcome, call_sid: str, caller: str | None, expects: str | None,
               step: str | None, message_id: str | None = None) -> CallStep:
        self.calls.step(call_sid, outcome.kind if outcome.kind != "menu" else f"menu:{outcome.step}")
        if outcome.kind == "human":
            return self.person(call_sid, caller, outcome.say)
        if outcome.kind == "end":
            return CallStep((*outcome.say, self.nav.message("goodbye")), "end")
        if outcome.kind == "menu":
            return self.menu(outcome.step or self.flow.start, outcome.say, outcome.tries)
        if outcome.kind == "confirm_speech":
            self.runtime.sessions.save(f"ivr:{call_sid}", {"pending": outcome.text, "expects": expects,
                                                           "step": step}, 600)
            return CallStep(outcome.say, "listen", step="confirm", expects=expects)
        if outcome.meta.get("silence"):
            return self.converse(call_sid, caller, "/repeat", (self.nav.message("no_input"),), outcome.tries,
                                 message_id)
        if outcome.meta.get("then") == "menu":  # * inside a form: drop it, back to the menu
            replies = self._core(call_sid, caller, outcome.text or "/cancel", message_id)
            return self.menu(self.flow.start, (replies[0].speech or replies[0].text,))
        return self.converse(call_sid, caller, outcome.text or "", outcome.say, message_id=message_id)

    def person(self, call_sid: str, caller: str | None, say: Sequence[str] = ()) -> CallStep:
        """Keys (0, retries) bypass the core; a handoff record is still left for staff."""
        replies = self._core(call_sid, caller, "/request_human")
        reference = next((r.reference for r in replies if r.reference), None)
        self.calls.step(call_sid, "human", outcome="handoff", handoff_reference=reference)
        spoken = (*say, *[r.speech or r.text for r in replies])
        return CallStep(spoken, "person" if any(r.live_agent for r in replies) else "end", reference=reference)

    def _core(self, call_sid: str, caller: str | None, text: str, message_id: str | None = None) -> list[Reply]:
        replies = self.runtime.assistant.handle(
            UserMessage(sender_id=call_sid, text=text, channel=CHANNEL, phone=caller, message_id=message_id)
        )
        self.calls.step(call_sid, "core", said=[("caller", text), *[("assistant", r.text) for r in replies]])
        return replies

    def converse(self, call_sid: str, caller: str | None, text: str, say: Sequence[str] = (), tries: int = 0,
                 message_id: str | None = None) -> CallStep:
        replies = self._core(call_sid, caller, text, message_id)
        last = replies[-1]
        spoken = (*say, *[r.speech or r.text for r in replies])
        if any(r.handoff for r in replies):
            reference = next((r.reference for r in replies if r.reference), None)
            self.calls.step(call_sid, "handoff", outcome="handoff", handoff_reference=reference)
            live = any(r.live_agent for r in replies)
            return CallStep(spoken, "person" if live else "end", reference=reference)
        if last.end_session:
            return CallStep((*spoken, self.nav.message("goodbye")), "end")
        if last.expects in {None, "menu"}:
            return CallStep((*spoken, self.nav.message("more")), "listen", step=self.flow.start)
        return CallStep(spoken, "listen", step="conv", expects=last.expects, tries=tries)
