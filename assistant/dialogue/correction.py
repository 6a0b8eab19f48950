"""The turn after the read-back: 对 submits, 不对 asks which value is wrong, a new value said
there ("不对，是两份") replaces the old one directly, naming a slot re-asks it."""
from __future__ import annotations

from assistant.dialogue.actions import Actions
from assistant.dialogue.confirm import ReadBack
from assistant.dialogue.domain import FormSpec
from assistant.dialogue.forms import FormFiller
from assistant.dialogue.global_intents import GlobalIntents
from assistant.dialogue.policy import FREE_TEXT_TYPES, GLOBAL_INTENTS, DialogueContext
from assistant.dialogue.responses import TurnReplies
from assistant.dialogue.state import ConversationState
from assistant.types import ParseResult


class Correction:
    """Confirming and correcting a read-back form."""

    def __init__(self, context: DialogueContext, forms: FormFiller, readback: ReadBack, actions: Actions, global_intents: GlobalIntents) -> None:
        self.domain = context.domain
        self.backend = context.backend
        self.settings = context.settings
        self.clock = context.clock
        self.forms = forms
        self.readback = readback
        self.actions = actions
        self.global_intents = global_intents

    def confirming(self, state: ConversationState, form: FormSpec, parse: ParseResult, turn: TurnReplies) -> None:
        intent = parse.intent.name
        corrected = self._apply_correction(state, form, parse, turn)
        if corrected is False:
            return None  # the form ended (e.g. a corrected ID makes the resident ineligible)
        if corrected:
            return self.forms.advance(state, turn)
        if intent == "affirm":
            return self.actions.submit(state, form, turn)
        mentioned = self.readback.mentioned_slot(form, parse)
        if intent == "deny" or mentioned:
            if mentioned:
                return self._reopen(state, mentioned, turn)
            state.confirming, state.correcting = False, True
            turn.say("utter_which_slot", {"choices": "、".join(self.readback.labels(state, form))}, expects="slot_name")
            return None
        if intent in GLOBAL_INTENTS:
            return self.global_intents.in_form(state, intent, parse, turn)
        state.misses += 1
        if state.misses >= self.settings.max_misunderstandings:
            return self.forms.misunderstood(state, turn, "utter_default")
        turn.say("utter_confirm_buttons", expects="confirm")
        return None

    def correcting(self, state: ConversationState, form: FormSpec, parse: ParseResult, turn: TurnReplies) -> None:
        corrected = self._apply_correction(state, form, parse, turn)
        if corrected is False:
            return None
        if corrected:
            return self.forms.advance(state, turn)
        mentioned = self.readback.mentioned_slot(form, parse)
        if mentioned:
            return self._reopen(state, mentioned, turn)
        intent = parse.intent.name
        if intent == "affirm":  # "都对" after all
            return self.readback.confirm(state, form, turn)
        if intent in GLOBAL_INTENTS:
            return self.global_intents.in_form(state, intent, parse, turn)
        state.misses += 1
        if state.misses >= self.settings.max_misunderstandings:
            return self.forms.misunderstood(state, turn, "utter_default")
        turn.say("utter_which_slot", {"choices": "、".join(self.readback.labels(state, form))}, expects="slot_name")
        return None

    def _apply_correction(self, state: ConversationState, form: FormSpec, parse: ParseResult,
                          turn: TurnReplies) -> bool | None:
        """A new value said while confirming ("不对，是两份") replaces the old one directly.
        Returns True when applied, False when the form ended, None when nothing matched."""
        mentioned = self.readback.mentioned_slot(form, parse)
        candidates = [mentioned] if mentioned else list(form.required_slots)
        for slot in candidates:
            if slot != mentioned and (self.domain.slots[slot].type in FREE_TEXT_TYPES
                                      or self.forms.shares_type(form, slot)):
                continue
            outcome = self.forms.extract(slot, parse, requested=False)
            if outcome.found and outcome.value != state.slots.get(slot):
                state.confirming = state.correcting = False
                return True if self.forms.accept(state, form, slot, outcome, turn) else False
        return None

    def _reopen(self, state: ConversationState, slot: str, turn: TurnReplies) -> None:
        state.slots.pop(slot, None)
        state.slot_sources[slot] = "user"
        state.confirming = state.correcting = False
        if slot == "phone":
            state.on_behalf = True  # the resident gave another number: never re-derive it
        self.forms.ask(state, turn, slot)
