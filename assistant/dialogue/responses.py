"""The replies of one turn (`TurnReplies`: rendered by name from domain.yml, remembered so that
"再说一遍" can say them again, slower) and the response names the engine may say, so that
`Domain` refuses at start-up a domain.yml that lacks one."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from assistant.dialogue.domain import Domain
from assistant.types import Reply


class TurnReplies:
    """Collects the replies of one turn and what is needed to say them again, slower."""

    def __init__(self, domain: Domain, language: str = "zh") -> None:
        self.domain = domain
        self.language = language
        self.replies: list[Reply] = []
        self.said: list[list[Any]] = []

    def say(self, name: str, text_values: Mapping[str, Any] | None = None,
            speech_values: Mapping[str, Any] | None = None, *, slow: bool = False, **flags: Any) -> None:
        rendered = self.domain.render(name, text_values, speech_values, slow=slow, language=self.language)
        self.replies.append(Reply(rendered.text, rendered.buttons, rendered.speech, name=name, **flags))
        self.said.append([name, dict(text_values or {}), dict(speech_values or text_values or {})])

    def mark_last(self, **flags: Any) -> None:
        last = self.replies[-1]
        self.replies[-1] = Reply(**{**last.__dict__, **flags})


# Responses the engine says by fixed name (each sentence a resident hears lives in domain.yml).
FIXED_RESPONSES = (
    "utter_already_applied", "utter_already_applied_elsewhere", "utter_anything_else", "utter_ask_again_prefix",
    "utter_busy", "utter_cancelled", "utter_confirm_buttons", "utter_continue", "utter_default",
    "utter_emergency_medical", "utter_emergency_unsaved", "utter_goodbye", "utter_greet",
    "utter_handoff_after_hours", "utter_handoff_office_hours", "utter_help", "utter_invalid_text",
    "utter_language_yue", "utter_language_zh", "utter_no_input", "utter_offer_cantonese",
    "utter_nothing_to_cancel", "utter_nothing_to_repeat", "utter_offer_human", "utter_out_of_scope",
    "utter_progress_how_without_caller_id", "utter_progress_item", "utter_progress_more", "utter_progress_none",
    "utter_progress_phone_unverified", "utter_proxy_refused", "utter_repeat_prefix", "utter_start_form",
    "utter_submit_failed", "utter_switch_form", "utter_unavailable", "utter_which_slot",
)


def required_responses(domain: Domain) -> dict[str, str]:
    """Every response name the engine may say with this domain's forms, slots and emergencies."""
    needed = {name: "said by the dialogue engine" for name in FIXED_RESPONSES}
    for kind in domain.emergency_keywords:
        needed[f"utter_emergency_{kind}"] = f"emergency keywords {kind!r}"
    for form in domain.forms.values():
        for slot in form.required_slots:
            needed[f"utter_ask_{form.name}_{slot}|utter_ask_{slot}"] = f"form {form.name} asks for {slot}"
        if form.min_age is not None:
            needed[f"utter_ineligible_{form.name}"] = f"form {form.name} has min_age"
        if form.kind != "query":
            needed[f"utter_confirm_{form.name}"] = f"form {form.name} is read back before submitting"
            needed[f"utter_submitted_{form.kind}"] = f"form {form.name} is submitted as a {form.kind}"
    return needed
