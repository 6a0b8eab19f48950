"""The read-back before submitting: the form's values as a resident should hear them (an ID by
its last four digits, a phone in groups, a date in words), and which slot a correction names."""
from __future__ import annotations

from datetime import date
from typing import Any

from assistant.dialogue.domain import FormSpec
from assistant.dialogue.policy import DialogueContext
from assistant.dialogue.render import date_words, group_phone, spell_digits, spell_phone, time_words
from assistant.dialogue.responses import TurnReplies
from assistant.dialogue.state import ConversationState
from assistant.types import ParseResult
from assistant.work_orders import summarise


class ReadBack:
    """Says the filled form back and finds which slot a resident means."""

    def __init__(self, context: DialogueContext) -> None:
        self.domain = context.domain
        self.backend = context.backend
        self.settings = context.settings
        self.clock = context.clock

    def confirm(self, state: ConversationState, form: FormSpec, turn: TurnReplies) -> None:
        state.confirming, state.correcting = True, False
        text_values, speech_values = self._display(state)
        turn.say(f"utter_confirm_{form.name}", text_values, speech_values)
        turn.say("utter_confirm_buttons", expects="confirm")

    def labels(self, state: ConversationState, form: FormSpec) -> list[str]:
        return [self.domain.slots[s].label for s in form.required_slots if s in state.slots]

    def _display(self, state: ConversationState) -> tuple[dict[str, Any], dict[str, Any]]:
        today = self.clock().date()
        text: dict[str, Any] = {}
        speech: dict[str, Any] = {}
        for slot, value in state.slots.items():
            kind = self.domain.slots[slot].type
            shown = spoken = str(value)
            if kind == "id_number":
                shown = f"尾号{value[-4:]}"
                spoken = f"尾号{spell_digits(value[-4:])}"
            elif kind == "phone":
                shown, spoken = group_phone(value), spell_phone(value)
            elif kind == "date":
                shown = spoken = date_words(date.fromisoformat(value), today)
            elif kind == "time":
                shown = spoken = time_words(value)
            elif kind == "text":
                shown = spoken = summarise(shown)  # a long complaint: what it is about, in one breath
            elif kind in {"meal_time", "meal_mode", "service_type", "relation", "disability_level"}:
                shown = spoken = self.domain.label(kind, value)
            text[slot], speech[slot] = shown, spoken
        if state.slots.get("meal_mode") == "dine_in":
            text["address"] = speech["address"] = ""
        elif "address" in state.slots:
            text["address"] = speech["address"] = f"，送到{state.slots['address']}"
        return text, speech

    def mentioned_slot(self, form: FormSpec, parse: ParseResult) -> str | None:
        best: tuple[int, str] | None = None
        for slot in form.required_slots:
            for alias in (self.domain.slots[slot].label, *self.domain.slots[slot].aliases):
                if alias and alias in parse.normalized and (best is None or len(alias) > best[0]):
                    best = (len(alias), slot)
        return best[1] if best else None
