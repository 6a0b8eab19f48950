"""The dialogue policy: global intents, form filling, read-back confirmation, submission, handoff.

Rules, not a learned policy: a street office must be able to predict and explain every answer.
One turn = one call to `DialogueEngine.handle`, which mutates the ConversationState it is given.

This module is the facade and the turn's first decisions (no input, emergency, an offer of a
person, in a form or not); the parts live beside it: forms.py (asking, filling, deriving,
skipping slots), confirm.py (the read-back), correction.py (the answer to it), actions.py
(submit, handoff, progress), global_intents.py (intents that work anywhere), policy.py
(settings and shared rules), responses.py (a turn's replies and the names the engine says).
"""
from __future__ import annotations

from assistant.dialogue import language
from assistant.dialogue.actions import Actions
from assistant.dialogue.confirm import ReadBack
from assistant.dialogue.correction import Correction
from assistant.dialogue.domain import Domain
from assistant.dialogue.forms import FormFiller
from assistant.dialogue.global_intents import GlobalIntents
from assistant.dialogue.policy import (
    FREE_TEXT_TYPES,
    GLOBAL_INTENTS,
    PROXY_MARKERS,
    STRONG_INTENTS,
    DialogueContext,
    DialogueSettings,
    OfficeHours,
)
from assistant.dialogue.responses import FIXED_RESPONSES, TurnReplies, required_responses
from assistant.dialogue.slots import SlotOutcome
from assistant.dialogue.state import ConversationState
from assistant.ports import Clock, ServiceBackend
from assistant.types import ParseResult, Reply, UserMessage

__all__ = ("FIXED_RESPONSES", "FREE_TEXT_TYPES", "GLOBAL_INTENTS", "PROXY_MARKERS", "STRONG_INTENTS",
           "DialogueEngine", "DialogueSettings", "OfficeHours", "required_responses")


class DialogueEngine:
    def __init__(self, domain: Domain, backend: ServiceBackend, settings: DialogueSettings, clock: Clock) -> None:
        domain.require(required_responses(domain))
        self.domain = domain
        self.backend = backend
        self.settings = settings
        self.clock = clock
        context = DialogueContext(domain, backend, settings, clock)
        # The parts call one another in one direction only: actions and the read-back need no
        # other part; forms need both; global intents need forms; corrections need all.
        self.actions = Actions(context)
        readback = ReadBack(context)
        self.forms = FormFiller(context, readback, self.actions)
        self.global_intents = GlobalIntents(context, self.forms, self.actions)
        self.correction = Correction(context, self.forms, readback, self.actions, self.global_intents)

    # -- entry point -----------------------------------------------------------------------------
    def handle(self, state: ConversationState, parse: ParseResult, message: UserMessage) -> list[Reply]:
        turn = TurnReplies(self.domain, state.language)
        if message.phone and not state.phone:
            state.phone = message.phone
        if not message.metadata.get("replay"):  # a message kept through "您想用广东话吗？" is in already
            state.remember("user", message.text, self.settings.transcript_turns)
        if not self._language(state, parse, message, turn):
            self._dispatch(state, parse, message, turn)
        if not turn.replies:  # every path must answer; this is the safety net
            turn.say("utter_default")
        for reply in turn.replies:
            state.remember("bot", reply.text, self.settings.transcript_turns)
        if turn.said and turn.said[0][0] != "utter_repeat_prefix":
            state.last_replies = [{"said": s} for s in turn.said]
        return turn.replies

    def _language(self, state: ConversationState, parse: ParseResult, message: UserMessage,
                  turn: TurnReplies) -> bool:
        """讲广东话 / 讲普通话, the answer to "您想用广东话吗？", or Cantonese heard for the first time
        (the question is asked and the message kept to handle after the answer). True: answered."""
        wanted = language.requested(message.text)
        if wanted:
            if state.offer == "language":
                state.offer, state.replay = None, None
            self._speak(state, turn, wanted)
            if state.form:
                self.forms.ask_next_or_help(state, turn)  # the same question, in the new language
            else:
                turn.say("utter_anything_else", expects="menu")
            return True
        if state.offer == "language":
            state.offer = None
            said = language.answer(message.text, parse.intent.name)
            if said is None:  # something else: handled as usual, in Mandarin
                state.replay, state.language_settled = None, True
                return False
            self._speak(state, turn, "yue" if said else "zh")  # `replay` is handled next (core.py)
            return True
        if (not state.language_settled and state.language == "zh" and message.channel != "sms" and not state.form
                and language.sounds_cantonese(message.text) and not self.actions.emergency_kind(parse)):
            state.offer, state.replay = "language", message.text
            turn.say("utter_offer_cantonese", expects="yes_no")
            return True
        return False

    @staticmethod
    def _speak(state: ConversationState, turn: TurnReplies, lang: str) -> None:
        state.language, state.language_settled, turn.language = lang, True, lang
        turn.say(f"utter_language_{lang}")

    def _dispatch(self, state: ConversationState, parse: ParseResult, message: UserMessage, turn: TurnReplies) -> None:
        if not parse.normalized.strip():
            return self.forms.misunderstood(state, turn, "utter_no_input")
        emergency = self.actions.emergency_kind(parse)
        if emergency:
            return self.actions.handoff(state, turn, reason="emergency", urgent=True, emergency=emergency)
        intent = parse.intent.name
        if state.offer == "handoff":
            state.offer = None
            if intent == "affirm" or intent == "request_human":
                return self.actions.handoff(state, turn, reason="misunderstood", urgent=False)
            if intent == "deny":
                state.misses = 0
                turn.say("utter_continue")
                return self.forms.ask_next_or_help(state, turn)
        if state.form:
            return self._in_form(state, parse, turn)
        return self.global_intents.top_level(state, parse, intent, turn)

    # -- inside a form ----------------------------------------------------------------------------
    def _in_form(self, state: ConversationState, parse: ParseResult, turn: TurnReplies) -> None:
        form = self.domain.forms[state.form or ""]
        if state.confirming:
            return self.correction.confirming(state, form, parse, turn)
        if state.correcting:
            return self.correction.correcting(state, form, parse, turn)
        requested = state.requested_slot
        intent = parse.intent
        slot_type = self.domain.slots[requested].type if requested else None
        outcome = self.forms.extract(requested, parse, requested=True) if requested else SlotOutcome()
        if outcome.error or (outcome.found and slot_type not in FREE_TEXT_TYPES):
            # A value was heard (right or wrong): taking or explaining it beats a guess at a
            # command ("电话136…" is a phone number, not a request for the 电话 of a person),
            # unless the resident clearly wants out.
            interrupting = intent.name in STRONG_INTENTS and intent.confidence >= self.settings.interrupt_confidence
        else:
            interrupting = intent.name in GLOBAL_INTENTS and (
                slot_type not in FREE_TEXT_TYPES or intent.confidence >= self.settings.interrupt_confidence
            )
        if outcome.found and not interrupting:
            if self.forms.accept(state, form, requested or "", outcome, turn):
                if self.forms.fill_others(state, form, parse, turn, skip=requested) is not False:
                    self.forms.advance(state, turn)
            return None
        if interrupting:
            return self.global_intents.in_form(state, intent.name, parse, turn)
        if (
            intent.name in self.domain.forms
            and self.domain.forms[intent.name].kind != "query"
            and intent.name != state.form
            and intent.confidence >= self.settings.switch_form_confidence
            and not outcome.error
        ):
            return self.forms.start(state, intent.name, parse, turn)
        volunteered = self.forms.fill_others(state, form, parse, turn, skip=requested)
        if volunteered is False:
            return None
        if volunteered:
            return self.forms.advance(state, turn)
        if outcome.error is not None:
            return self.forms.invalid(state, requested or "", outcome, turn)
        self.forms.misunderstood(state, turn, "utter_ask_again_prefix")

