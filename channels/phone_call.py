"""What a phone call does next, whatever carries it: Twilio <Gather> webhooks (twilio_voice.py)
or a Media Streams WebSocket with our own recogniser (twilio_media.py). Keys and speech go in;
a `CallStep` comes out: what to say, and whether to listen again, reach a person, or hang up.

What a call keeps between webhooks besides the core's conversation (which no channel reads) is
written down here, once: `PendingSpeech` (speech heard with low confidence, waiting for 对) and
`StreamExit` (where a closed Media Stream hands the call), each in a typed `Scratch`.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from assistant.ivr import CallInput, IvrFlow, IvrNavigator, IvrOutcome
from assistant.ports import SessionStore, StoreUnavailable
from assistant.types import Turn, UserMessage
from channels.runtime_port import ChannelRuntime
from channels.scratch import Scratch

log = logging.getLogger(__name__)

CHANNEL = "voice"
LANGUAGES = ("zh", "yue")  # Mandarin (default), Cantonese
SCRATCH_SECONDS = 600  # a call's side state outlives any pause on the line, not the call
Next = Literal["listen", "person", "end"]


@dataclass(frozen=True)
class CallStep:
    say: tuple[str, ...]
    next: Next
    step: str | None = None  # listen: a menu step, "conv" (the core asked) or "confirm"
    expects: str | None = None  # what the core waits for (maps keys, chooses digit entry)
    tries: int = 0
    reference: str | None = None  # handoff case for the agent's whisper


@dataclass
class PendingSpeech:
    """Speech heard with low confidence, read back ("您是说……对吗？") and waiting for 1/对."""

    text: str = ""
    expects: str | None = None  # what the core waited for when it was heard
    step: str | None = None  # the menu step it was heard at (else: in the conversation)


@dataclass
class StreamExit:
    """What a Media Stream leaves for the <Redirect> after it closes: a person, or the end."""

    next: str = "end"
    reference: str | None = None  # the handoff case, for the agent's whisper


def pending_speech(store: SessionStore) -> Scratch[PendingSpeech]:
    return Scratch(store, "voice-readback", PendingSpeech, SCRATCH_SECONDS)


def stream_exits(store: SessionStore) -> Scratch[StreamExit]:
    return Scratch(store, "voice-stream", StreamExit, SCRATCH_SECONDS)


class PhoneCall:
    def __init__(self, runtime: ChannelRuntime, flow: IvrFlow) -> None:
        self.runtime = runtime
        self.flow = flow
        self.nav = IvrNavigator(flow)
        # Each spoken language's wording of the flow (ivr_flows/main.yue.yml …): same keys, steps.
        self.navs = {"zh": self.nav, **{lang: IvrNavigator(flow.spoken(lang)) for lang in flow.translations}}
        self.calls = runtime.calls
        self.pending = pending_speech(runtime.sessions)

    def language(self, call_sid: str) -> str:
        """The language the call is spoken in, as the conversation last left it ("zh" until then)."""
        try:
            language = self.runtime.assistant.status(CHANNEL, call_sid).language
        except StoreUnavailable:
            return "zh"  # the prompt still gets said, in the default voice
        return language if language in LANGUAGES else "zh"

    def spoken(self, call_sid: str) -> IvrNavigator:
        """The flow's navigator in the call's language."""
        return self.navs.get(self.language(call_sid), self.nav)

    def greet(self, call_sid: str, caller: str | None, language: str | None = None) -> CallStep:
        self.calls.start(call_sid, caller)
        try:  # a caller who asked for Cantonese before is greeted in it
            language = self.runtime.assistant.begin(CHANNEL, call_sid, caller, language)
        except StoreUnavailable:
            language = "zh"
        nav = self.navs.get(language, self.nav)
        if self.calls.direct_to_human(caller):
            return self.person(call_sid, caller, (nav.flow.greeting,))
        return self.menu(self.flow.start, (nav.flow.greeting,), nav=nav)

    def menu(self, step: str, say: Sequence[str] = (), tries: int = 0, nav: IvrNavigator | None = None) -> CallStep:
        """A menu's prompt, in the language of `nav` (the call's, read once per webhook)."""
        return CallStep((*say, (nav or self.nav).flow.steps[step].prompt), "listen", step=step, tries=tries)

    def heard(self, call_sid: str, caller: str | None, step: str, expects: str | None, tries: int,
              value: CallInput, message_id: str | None = None) -> CallStep:
        """One answer from the caller at `step` (keys, or speech with its confidence)."""
        if step == "confirm":
            return self._confirmed(call_sid, caller, value, message_id)
        nav = self.spoken(call_sid)
        outcome = nav.in_conversation(expects, value, tries) if step == "conv" else nav.at_menu(step, value, tries)
        return self.follow(outcome, call_sid, caller, expects, step, message_id, nav)

    def _confirmed(self, call_sid: str, caller: str | None, value: CallInput, message_id: str | None) -> CallStep:
        pending = self.pending.load(call_sid) or PendingSpeech()
        self.pending.delete(call_sid)
        said_yes = bool(value.speech) and self.runtime.assistant.parse(value.speech).intent.name == "affirm"
        if value.digits == "1" or said_yes:
            return self.converse(call_sid, caller, pending.text, message_id=message_id)
        nav = self.spoken(call_sid)
        again = nav.message("say_again")
        if pending.step in self.flow.steps:
            return self.menu(pending.step, (again,), nav=nav)
        return CallStep((again,), "listen", step="conv", expects=pending.expects)

    def follow(self, outcome: IvrOutcome, call_sid: str, caller: str | None, expects: str | None,
               step: str | None, message_id: str | None = None, nav: IvrNavigator | None = None) -> CallStep:
        self.calls.step(call_sid, outcome.kind if outcome.kind != "menu" else f"menu:{outcome.step}")
        nav = nav or self.spoken(call_sid)
        if outcome.kind == "human":
            return self.person(call_sid, caller, outcome.say)
        if outcome.kind == "end":
            return CallStep((*outcome.say, nav.message("goodbye")), "end")
        if outcome.kind == "menu":
            return self.menu(outcome.step or self.flow.start, outcome.say, outcome.tries, nav=nav)
        if outcome.kind == "confirm_speech":
            self.pending.save(call_sid, PendingSpeech(outcome.text or "", expects, step))
            return CallStep(outcome.say, "listen", step="confirm", expects=expects)
        if outcome.meta.get("silence"):
            return self.converse(call_sid, caller, "/repeat", (nav.message("no_input"),), outcome.tries,
                                 message_id)
        if outcome.meta.get("then") == "menu":  # * inside a form: drop it, back to the menu
            first = self._core(call_sid, caller, outcome.text or "/cancel", message_id).replies[0]
            return self.menu(self.flow.start, (first.speech or first.text,), nav=nav)
        return self.converse(call_sid, caller, outcome.text or "", outcome.say, message_id=message_id)

    def person(self, call_sid: str, caller: str | None, say: Sequence[str] = ()) -> CallStep:
        """Keys (0, retries) bypass the core; a handoff record is still left for staff."""
        turn = self._core(call_sid, caller, "/request_human")
        reference = _reference(turn)
        self.calls.step(call_sid, "human", outcome="handoff", handoff_reference=reference)
        return self._handed_over(turn, (*say, *_spoken(turn)), reference, caller, call_sid)

    def _handed_over(self, turn: Turn, spoken: Sequence[str], reference: str | None, caller: str | None,
                     call_sid: str) -> CallStep:
        after = _after_handoff(turn)
        if after == "end":  # nobody now (after hours): the promised call back is scheduled
            self.promise_callback(reference or "", caller, call_sid)
        return CallStep(tuple(spoken), after, reference=reference)

    def promise_callback(self, reference: str, caller: str | None, call_sid: str) -> None:
        """Best effort: the handoff is in the staff queue whatever happens here."""
        if not reference or not caller:
            return
        try:
            self.runtime.outreach.callbacks.schedule(reference, caller, self.language(call_sid))
        except Exception:
            log.exception("call-back for handoff %s not scheduled (it stays in the staff queue)", reference)

    def forget(self, call_sid: str) -> None:
        """The call ended: drop what it kept aside."""
        self.pending.delete(call_sid)

    def _core(self, call_sid: str, caller: str | None, text: str, message_id: str | None = None) -> Turn:
        turn = self.runtime.assistant.turn(
            UserMessage(sender_id=call_sid, text=text, channel=CHANNEL, phone=caller, message_id=message_id)
        )
        self.calls.step(call_sid, "core", said=[("caller", text), *[("assistant", r.text) for r in turn.replies]])
        return turn

    def converse(self, call_sid: str, caller: str | None, text: str, say: Sequence[str] = (), tries: int = 0,
                 message_id: str | None = None) -> CallStep:
        turn = self._core(call_sid, caller, text, message_id)
        spoken = (*say, *_spoken(turn))
        if turn.handoff:
            reference = _reference(turn)
            self.calls.step(call_sid, "handoff", outcome="handoff", handoff_reference=reference)
            return self._handed_over(turn, spoken, reference, caller, call_sid)
        nav = self.navs.get(turn.status.language, self.nav)
        if turn.ended:
            return CallStep((*spoken, nav.message("goodbye")), "end")
        if turn.expects in {None, "menu"}:
            return CallStep((*spoken, nav.message("more")), "listen", step=self.flow.start)
        return CallStep(spoken, "listen", step="conv", expects=turn.expects, tries=tries)


def _spoken(turn: Turn) -> tuple[str, ...]:
    return tuple(r.speech or r.text for r in turn.replies)


def _reference(turn: Turn) -> str | None:
    return next((r.reference for r in turn.replies if r.reference), None)


def _after_handoff(turn: Turn) -> Next:
    """A person takes the call now (office hours, an emergency), or calls back later."""
    return "person" if any(r.live_agent for r in turn.replies) else "end"
