"""What the dialogue does in the world through the backend port: submit a confirmed form as a
case, refuse a family member without a grant, hand the conversation to a person (or an
emergency line), and read a resident's progress out."""
from __future__ import annotations

import logging
from collections.abc import Mapping

from assistant.dialogue.domain import FormSpec
from assistant.dialogue.policy import DialogueContext
from assistant.dialogue.render import spell_digits
from assistant.dialogue.responses import TurnReplies
from assistant.dialogue.state import ConversationState
from assistant.ports import ActingForRefused, CaseRequest, HandoffRequest, Person
from assistant.privacy import mask_text
from assistant.types import ParseResult
from assistant.work_orders import summarise

log = logging.getLogger("assistant.dialogue.engine")  # one logger name for the whole policy


class Actions:
    """Submission, handoff and progress: the engine's calls to the backend."""

    def __init__(self, context: DialogueContext) -> None:
        self.domain = context.domain
        self.backend = context.backend
        self.settings = context.settings
        self.clock = context.clock

    def submit(self, state: ConversationState, form: FormSpec, turn: TurnReplies) -> None:
        slots = dict(state.slots)
        if form.kind == "proxy_request":
            subject = Person(phone=slots.pop("parent_phone", None))
            submitted_by = slots.pop("phone", None)
        else:
            subject = Person(name=slots.pop("name", None), id_number=slots.pop("id_number", None),
                             phone=slots.pop("phone", None))
            submitted_by = state.phone if state.on_behalf else None
        fields = {**slots, "slot_sources": dict(state.slot_sources)}
        for key in ("age", "work_order"):
            if key in state.derived:
                fields[key] = state.derived[key]
        request = CaseRequest(
            kind=form.kind,
            category=form.name,
            subject=subject,
            fields=fields,
            channel=state.channel,
            sender_id=state.sender_id,
            # The backend stores only a keyed hash of it (an SMS sender id is a phone number).
            idempotency_key=f"{state.channel}:{state.sender_id}:{state.form_instance}",
            submitted_by_phone=submitted_by,
            verified_phone=state.phone,
        )
        try:
            receipt = self.backend.submit_case(request)
        except ActingForRefused as refused:
            return self.refuse_proxy(state, refused.how_to_ask, turn)
        except Exception:
            # Nothing is lost: the form stays filled and confirmed; "对" again resubmits with the
            # same idempotency key, so a half-done first attempt cannot create a second case.
            log.exception("submit failed for form %s", form.name)
            turn.say("utter_submit_failed", expects="confirm")
            return
        values = {"reference": receipt.reference}
        if form.kind == "ticket":  # the acknowledgement says what was filed, in one SMS segment at most
            values["summary"] = summarise(str(state.slots.get("description") or "")) or "报修"
        if receipt.duplicate and receipt.reference:
            turn.say("utter_already_applied", {**values, "title": self.domain.label("category", form.name)},
                     {"reference_spoken": spell_digits(receipt.reference),
                      "title": self.domain.label("category", form.name)}, reference=receipt.reference)
        elif receipt.duplicate:
            turn.say("utter_already_applied_elsewhere", {"title": self.domain.label("category", form.name)})
        else:
            turn.say(f"utter_submitted_{form.kind}", values, {"reference_spoken": spell_digits(receipt.reference)},
                     reference=receipt.reference)
        state.end_form()
        state.misses = 0
        turn.say("utter_anything_else", expects="menu")

    def refuse_proxy(self, state: ConversationState, how_to_ask: str, turn: TurnReplies) -> None:
        """A family member without the needed grant: say why and how to get one; file nothing."""
        state.end_form()
        turn.say("utter_proxy_refused", {"how_to_ask": how_to_ask})
        turn.say("utter_anything_else", expects="menu")

    def handoff(self, state: ConversationState, turn: TurnReplies, *, reason: str, urgent: bool,
                 emergency: str | None = None) -> None:
        request = HandoffRequest(
            sender_id=state.sender_id,
            channel=state.channel,
            phone=state.phone,
            reason=reason,
            urgent=urgent,
            transcript=tuple((role, text) for role, text in state.transcript),
            form_name=state.form,
            form_slots=dict(state.slots),
            idempotency_key=f"{state.channel}:{state.sender_id}:handoff:{len(state.transcript)}:{reason}",
        )
        try:
            receipt = self.backend.create_handoff(request)
        except Exception:
            log.exception("handoff failed")
            turn.say("utter_emergency_unsaved", {"hotline": self.settings.hotline}, handoff=True, urgent=urgent)
            return
        values = {"reference": receipt.reference}
        speech = {"reference_spoken": spell_digits(receipt.reference)}
        flags = {"handoff": True, "reference": receipt.reference}
        if emergency:
            turn.say(f"utter_emergency_{emergency}", values, speech, urgent=True, live_agent=True, **flags)
        elif self.settings.office_hours.open_at(self.clock()):
            turn.say("utter_handoff_office_hours", values, speech, live_agent=True, **flags)
        else:
            turn.say("utter_handoff_after_hours", values, speech, **flags)
        log.info("handoff %s (%s) for %s", receipt.reference, reason, mask_text(state.sender_id))
        state.end_form()
        state.misses = 0

    def emergency_kind(self, parse: ParseResult) -> str | None:
        text = parse.normalized
        for kind, words in self.domain.emergency_keywords.items():
            if any(word in text for word in words):
                return kind
        if parse.intent.name == "emergency":
            return "medical"
        return None

    def progress_key(self, state: ConversationState, parse: ParseResult) -> dict[str, str] | None:
        reference = parse.first("reference")
        if reference is not None:
            return {"reference": str(reference.value)}
        return {"phone": state.phone} if state.phone else None

    def answer_progress(self, state: ConversationState, key: Mapping[str, str] | None, turn: TurnReplies) -> None:
        items = []
        if key and key.get("phone") and key.get("phone") != state.phone:
            # A typed number proves nothing about who is asking: only the verified caller ID
            # (or a reference number, which the resident was given) opens the list.
            turn.say("utter_progress_phone_unverified")
            return
        if not key and not state.phone:
            # No reference and no caller ID: say how to ask instead of "nothing found".
            turn.say("utter_progress_how_without_caller_id")
            return
        if key:
            try:
                items = self.backend.progress(phone=key.get("phone"), reference=key.get("reference"))
            except Exception:
                log.exception("progress lookup failed")
        if not items:
            turn.say("utter_progress_none")
            return
        for item in items[:3]:
            turn.say(
                "utter_progress_item",
                {"category": self.domain.label("category", item.category), "reference": item.reference,
                 "status": self.domain.label("status", item.status)},
                {"category": self.domain.label("category", item.category),
                 "reference_spoken": spell_digits(item.reference), "status": self.domain.label("status", item.status)},
            )
        if len(items) > 3:
            turn.say("utter_progress_more", {"count": len(items) - 3})
