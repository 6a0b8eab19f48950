"""Form filling: start a form, take values (the asked one and any volunteered), derive what need
not be asked (caller ID, the record on file), skip what does not apply, check eligibility,
explain an invalid value, and ask the next slot — or hand over to the read-back."""
from __future__ import annotations

import logging
from datetime import date
from typing import Any

from assistant.dialogue.actions import Actions
from assistant.dialogue.confirm import ReadBack
from assistant.dialogue.domain import FormSpec
from assistant.dialogue.policy import PROXY_MARKERS, DialogueContext
from assistant.dialogue.responses import TurnReplies
from assistant.dialogue.slots import EXTRACTORS, SlotContext, SlotOutcome
from assistant.dialogue.state import ConversationState
from assistant.nlu.idcard import age_on
from assistant.types import ParseResult

DESCRIPTION_CHARS = 500  # config.yml sms.max_text_chars: a whole long SMS is the description

log = logging.getLogger("assistant.dialogue.engine")  # one logger name for the whole policy


class FormFiller:
    """Asks, fills, derives and skips the slots of the form in progress."""

    def __init__(self, context: DialogueContext, readback: ReadBack, actions: Actions) -> None:
        self.domain = context.domain
        self.backend = context.backend
        self.settings = context.settings
        self.clock = context.clock
        self.readback = readback
        self.actions = actions

    def start(self, state: ConversationState, form_name: str, parse: ParseResult, turn: TurnReplies) -> None:
        previous = state.form
        state.start_form(form_name)
        # The family-proxy form is always operated by the child for themselves.
        state.on_behalf = self.domain.forms[form_name].kind != "proxy_request" and any(
            marker in parse.normalized for marker in PROXY_MARKERS
        )
        if state.on_behalf and state.phone:
            decision = self.backend.precheck(state.phone, self.domain.forms[form_name].kind)
            if decision is not None and not decision.allowed:
                return self.actions.refuse_proxy(state, decision.how_to_ask or "", turn)
        title = self.domain.label("category", form_name)
        report = parse.report
        if previous and previous != form_name:
            turn.say("utter_switch_form", {"old": self.domain.label("category", previous), "title": title})
        elif report is not None and report.substantive and not report.asks_place:
            turn.say("utter_start_work_order")  # not a repair: "I'll put this on record"
        elif form_name != "check_progress":
            turn.say("utter_start_form", {"title": title})
        form = self.domain.forms[form_name]
        for slot, entity in form.start_fills.items():
            if parse.first(entity) is not None or (report is not None and report.substantive):
                # Kept as the resident put it, whole (up to an SMS's limit): it is the work order.
                state.slots[slot] = (parse.text.strip() or parse.normalized)[:DESCRIPTION_CHARS]
                state.slot_sources[slot] = "user"
        if report is not None:
            state.derived["work_order"] = report.to_dict()
        for slot in form.required_slots:
            if slot in state.slots:
                continue
            outcome = self.extract(slot, parse, requested=False)
            if outcome.found:
                if not self.accept(state, form, slot, outcome, turn):
                    return None
        self.advance(state, turn)

    def extract(self, slot: str | None, parse: ParseResult, *, requested: bool) -> SlotOutcome:
        if slot is None:
            return SlotOutcome()
        spec = self.domain.slots[slot]
        ctx = SlotContext(
            now=self.clock(),
            booking_days_ahead=self.settings.booking_days_ahead,
            meal_max_portions=self.settings.meal_max_portions,
            requested=requested,
            entity=spec.entity,
        )
        return EXTRACTORS[spec.type](parse, ctx)

    def fill_others(self, state: ConversationState, form: FormSpec, parse: ParseResult, turn: TurnReplies,
                     skip: str | None) -> bool | None:
        """Takes values the resident volunteered for other slots ("明天中午两份送到3栋").
        True when something was filled, False when the form ended, None when nothing was."""
        filled: bool | None = None
        for slot in form.required_slots:
            if slot == skip or slot in state.slots or self.shares_type(form, slot):
                continue  # two slots of one type (two phones): only the asked one may take it
            outcome = self.extract(slot, parse, requested=False)
            if outcome.found:
                if not self.accept(state, form, slot, outcome, turn):
                    return False
                filled = True
        return filled

    def shares_type(self, form: FormSpec, slot: str) -> bool:
        """Another slot of the form takes the same kind of value (a phone and a parent's phone):
        a value said in passing cannot tell which one it is meant for."""
        kind = self.domain.slots[slot].type
        return sum(self.domain.slots[other].type == kind for other in form.required_slots) > 1

    def accept(self, state: ConversationState, form: FormSpec, slot: str, outcome: SlotOutcome,
                turn: TurnReplies) -> bool:
        """Stores a value and its derived facts; False when the form ended (not eligible)."""
        state.slots[slot] = outcome.value
        state.slot_sources[slot] = "user"
        state.slot_failures = 0
        state.misses = 0
        for key, value in outcome.derived.items():
            if key in form.required_slots and key not in state.slots:
                state.slots[key] = value
                state.slot_sources[key] = "user"
            else:
                state.derived[key] = value
        if slot == "id_number":
            return self._check_age(state, form, turn)
        return True

    def _check_age(self, state: ConversationState, form: FormSpec, turn: TurnReplies) -> bool:
        birth = state.derived.get("birth_date")
        if not birth:
            return True
        age = age_on(date.fromisoformat(str(birth)), self.clock().date())
        state.derived["age"] = age
        if form.min_age is None:
            return True
        minimum = int(self.settings.eligibility.get(form.min_age, 0))
        if age >= minimum:
            return True
        turn.say(f"utter_ineligible_{form.name}", {"age": age, "min_age": minimum})
        state.end_form()
        turn.say("utter_anything_else", expects="menu")
        return False

    def invalid(self, state: ConversationState, slot: str, outcome: SlotOutcome, turn: TurnReplies) -> None:
        state.slot_failures += 1
        if state.slot_failures > self.settings.max_misunderstandings:
            state.slot_failures = 0
            state.offer = "handoff"
            turn.say("utter_offer_human", expects="yes_no")
            return
        kind = self.domain.slots[slot].type
        specific = f"utter_invalid_{kind}_{outcome.error}" if outcome.error else ""
        name = specific if specific and self.domain.has(specific) else f"utter_invalid_{kind}"
        if not self.domain.has(name):
            name = "utter_invalid_text"
        turn.say(name, dict(outcome.params), expects=slot)

    def _skip(self, state: ConversationState, form: FormSpec, slot: str) -> bool:
        conditions = form.skip_when.get(slot) or {}
        return any(state.slots.get(other) == value for other, value in conditions.items())

    def advance(self, state: ConversationState, turn: TurnReplies) -> None:
        form = self.domain.forms[state.form or ""]
        for slot in form.required_slots:
            if slot in state.slots or self._skip(state, form, slot):
                continue
            if self._derive(state, slot):
                continue
            return self.ask(state, turn, slot)
        state.requested_slot = None
        if form.kind == "query":
            self.actions.answer_progress(state, state.slots.get("progress_key"), turn)
            state.end_form()
            turn.say("utter_anything_else", expects="menu")
            return None
        return self.readback.confirm(state, form, turn)

    def _derive(self, state: ConversationState, slot: str) -> bool:
        """Fills what the resident need not be asked: caller's phone, name/address on record."""
        value: Any = None
        source = ""
        if slot == "phone" and state.phone and not state.on_behalf:
            value, source = state.phone, "channel"
        elif slot == "progress_key" and state.phone:
            value, source = {"phone": state.phone}, "channel"
        elif slot in {"name", "address"}:
            record = self._resident_record(state)
            value, source = record.get(slot), "record"
        if value:
            state.slots[slot] = value
            state.slot_sources[slot] = source
            return True
        return False

    def _resident_record(self, state: ConversationState) -> dict[str, Any]:
        if "record" not in state.derived:
            record = None
            try:
                if state.slots.get("id_number"):
                    # A typed ID proves nothing about who is typing: the record opens only for
                    # the resident's own registered phone (caller ID), else nothing is read out.
                    if state.phone:
                        record = self.backend.identify(id_number=state.slots["id_number"], phone=state.phone)
                elif state.phone and not state.on_behalf:
                    record = self.backend.find_resident(phone=state.phone)
            except Exception:  # the record only saves a question; never fail the turn for it
                log.warning("resident lookup failed", exc_info=True)
            state.derived["record"] = {"name": record.name, "address": record.address} if record else {}
        return state.derived["record"]

    def ask(self, state: ConversationState, turn: TurnReplies, slot: str | None) -> None:
        if slot is None:
            return
        state.requested_slot = slot
        names = [f"utter_ask_{state.form}_{slot}", f"utter_ask_{slot}"]
        if slot == "name" and state.on_behalf:
            names.insert(0, "utter_ask_proxy_name")
        if slot == "location" and not state.derived.get("work_order", {}).get("asks_place", True):
            names.insert(0, "utter_ask_work_order_location")  # wages, a hospital: a unit or an address
        name = next(n for n in names if self.domain.has(n))
        turn.say(name, expects=slot)

    def ask_next_or_help(self, state: ConversationState, turn: TurnReplies) -> None:
        if state.form and state.confirming:
            return self.readback.confirm(state, self.domain.forms[state.form], turn)
        if state.form:
            return self.advance(state, turn)
        turn.say("utter_help", expects="menu")
        return None

    def misunderstood(self, state: ConversationState, turn: TurnReplies, response: str) -> None:
        state.misses += 1
        if state.misses >= self.settings.max_misunderstandings:
            state.misses = 0
            state.offer = "handoff"
            turn.say("utter_offer_human", expects="yes_no")
            return
        turn.say(response, expects="menu" if not state.form else state.requested_slot)
        if state.form:
            self.ask(state, turn, state.requested_slot)
