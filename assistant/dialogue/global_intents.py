"""Intents that work anywhere: outside a form (start one, greet, a person, repeat, goodbye) and
inside one (a person, cancel, repeat, progress), as Rasa's global intents do."""
from __future__ import annotations

from assistant.dialogue.actions import Actions
from assistant.dialogue.forms import FormFiller
from assistant.dialogue.policy import DialogueContext
from assistant.dialogue.responses import TurnReplies
from assistant.dialogue.state import ConversationState
from assistant.types import ParseResult


class GlobalIntents:
    """Answers the intents that are not slot values."""

    def __init__(self, context: DialogueContext, forms: FormFiller, actions: Actions) -> None:
        self.domain = context.domain
        self.backend = context.backend
        self.settings = context.settings
        self.clock = context.clock
        self.forms = forms
        self.actions = actions

    def top_level(self, state: ConversationState, parse: ParseResult, intent: str, turn: TurnReplies) -> None:
        if intent in self.domain.forms:
            state.misses = 0
            return self.forms.start(state, intent, parse, turn)
        if intent == "request_human":
            return self.actions.handoff(state, turn, reason="user_request", urgent=False)
        if intent == "repeat":
            return self.repeat(state, turn)
        if intent == "goodbye":
            turn.say("utter_goodbye", end_session=True)
            return None
        if intent == "greet":
            state.misses = 0
            turn.say("utter_greet", expects="menu")
            return None
        if intent == "cancel":
            turn.say("utter_nothing_to_cancel")
            turn.say("utter_anything_else", expects="menu")
            return None
        if intent in {"affirm", "deny"}:
            turn.say("utter_help", expects="menu")
            return None
        if intent == "out_of_scope":
            return self.forms.misunderstood(state, turn, "utter_out_of_scope")
        return self.forms.misunderstood(state, turn, "utter_default")

    def in_form(self, state: ConversationState, intent: str, parse: ParseResult, turn: TurnReplies) -> None:
        if intent == "request_human":
            return self.actions.handoff(state, turn, reason="user_request", urgent=False)
        if intent == "cancel" or intent == "goodbye":
            state.end_form()
            turn.say("utter_cancelled")
            if intent == "goodbye":
                turn.say("utter_goodbye", end_session=True)
            else:
                turn.say("utter_anything_else", expects="menu")
            return None
        if intent == "repeat":
            return self.repeat(state, turn)
        if intent == "check_progress":
            self.actions.answer_progress(state, self.actions.progress_key(state, parse), turn)
            turn.say("utter_continue")
            return self.forms.ask_next_or_help(state, turn)
        return None

    def repeat(self, state: ConversationState, turn: TurnReplies) -> None:
        if not state.last_replies:
            turn.say("utter_nothing_to_repeat", expects="menu")
            return
        turn.say("utter_repeat_prefix")
        for item in state.last_replies:
            name, text_values, speech_values = item["said"]
            turn.say(name, text_values, speech_values, slow=True)
        turn.mark_last(expects=state.requested_slot if state.form else "menu")
