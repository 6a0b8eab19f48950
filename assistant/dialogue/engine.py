"""The dialogue policy: global intents, form filling, read-back confirmation, submission, handoff.

Rules, not a learned policy: a street office must be able to predict and explain every answer.
One turn = one call to `DialogueEngine.handle`, which mutates the ConversationState it is given.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Any

from assistant.dialogue.domain import Domain, FormSpec
from assistant.dialogue.render import date_words, group_phone, spell_digits, spell_phone, time_words
from assistant.dialogue.slots import EXTRACTORS, SlotContext, SlotOutcome
from assistant.dialogue.state import ConversationState
from assistant.nlu.idcard import age_on
from assistant.ports import ActingForRefused, CaseRequest, Clock, HandoffRequest, Person, ServiceBackend
from assistant.privacy import mask_text
from assistant.types import ParseResult, Reply, UserMessage

log = logging.getLogger(__name__)

GLOBAL_INTENTS = {"request_human", "cancel", "repeat", "check_progress", "goodbye"}
STRONG_INTENTS = {"request_human", "cancel", "repeat"}
FREE_TEXT_TYPES = {"text", "name", "address", "place"}
# Words by which a family member shows they act for someone else ("帮我妈办").
PROXY_MARKERS = ("我妈", "我爸", "我母亲", "我父亲", "我老娘", "我老爹", "我爷爷", "我奶奶", "我外婆", "我外公",
                 "我姥姥", "我姥爷", "我家老人", "我家老头", "我家老太", "老人家", "我婆婆", "我公公", "替我", "帮我家")


@dataclass(frozen=True)
class OfficeHours:
    weekdays: frozenset[int] = frozenset({1, 2, 3, 4, 5})  # ISO weekday numbers
    start: time = time(8, 30)
    end: time = time(17, 30)

    def open_at(self, moment: datetime) -> bool:
        return moment.isoweekday() in self.weekdays and self.start <= moment.time() < self.end


@dataclass(frozen=True)
class DialogueSettings:
    max_misunderstandings: int = 2
    transcript_turns: int = 30
    eligibility: Mapping[str, int] = field(default_factory=dict)
    office_hours: OfficeHours = OfficeHours()
    hotline: str = "12345"
    booking_days_ahead: int = 14
    meal_max_portions: int = 5
    # A free-text answer ("路灯坏了") is taken as the answer unless the classifier is at least
    # this sure it is a command such as "转人工".
    interrupt_confidence: float = 0.6
    switch_form_confidence: float = 0.8


class _Turn:
    """Collects the replies of one turn and what is needed to say them again, slower."""

    def __init__(self, domain: Domain) -> None:
        self.domain = domain
        self.replies: list[Reply] = []
        self.said: list[list[Any]] = []

    def say(self, name: str, text_values: Mapping[str, Any] | None = None,
            speech_values: Mapping[str, Any] | None = None, *, slow: bool = False, **flags: Any) -> None:
        rendered = self.domain.render(name, text_values, speech_values, slow=slow)
        self.replies.append(Reply(rendered.text, rendered.buttons, rendered.speech, name=name, **flags))
        self.said.append([name, dict(text_values or {}), dict(speech_values or text_values or {})])

    def mark_last(self, **flags: Any) -> None:
        last = self.replies[-1]
        self.replies[-1] = Reply(**{**last.__dict__, **flags})


class DialogueEngine:
    def __init__(self, domain: Domain, backend: ServiceBackend, settings: DialogueSettings, clock: Clock) -> None:
        domain.require(required_responses(domain))
        self.domain = domain
        self.backend = backend
        self.settings = settings
        self.clock = clock

    # -- entry point -----------------------------------------------------------------------------
    def handle(self, state: ConversationState, parse: ParseResult, message: UserMessage) -> list[Reply]:
        turn = _Turn(self.domain)
        if message.phone and not state.phone:
            state.phone = message.phone
        state.remember("user", message.text, self.settings.transcript_turns)
        self._dispatch(state, parse, message, turn)
        if not turn.replies:  # every path must answer; this is the safety net
            turn.say("utter_default")
        for reply in turn.replies:
            state.remember("bot", reply.text, self.settings.transcript_turns)
        if turn.said and turn.said[0][0] != "utter_repeat_prefix":
            state.last_replies = [{"said": s} for s in turn.said]
        return turn.replies

    def _dispatch(self, state: ConversationState, parse: ParseResult, message: UserMessage, turn: _Turn) -> None:
        if not parse.normalized.strip():
            return self._misunderstood(state, turn, "utter_no_input")
        emergency = self._emergency_kind(parse)
        if emergency:
            return self._handoff(state, turn, reason="emergency", urgent=True, emergency=emergency)
        intent = parse.intent.name
        if state.offer == "handoff":
            state.offer = None
            if intent == "affirm" or intent == "request_human":
                return self._handoff(state, turn, reason="misunderstood", urgent=False)
            if intent == "deny":
                state.misses = 0
                turn.say("utter_continue")
                return self._ask_next_or_help(state, turn)
        if state.form:
            return self._in_form(state, parse, turn)
        return self._top_level(state, parse, intent, turn)

    # -- outside a form --------------------------------------------------------------------------
    def _top_level(self, state: ConversationState, parse: ParseResult, intent: str, turn: _Turn) -> None:
        if intent in self.domain.forms:
            state.misses = 0
            return self._start_form(state, intent, parse, turn)
        if intent == "request_human":
            return self._handoff(state, turn, reason="user_request", urgent=False)
        if intent == "repeat":
            return self._repeat(state, turn)
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
            return self._misunderstood(state, turn, "utter_out_of_scope")
        return self._misunderstood(state, turn, "utter_default")

    def _misunderstood(self, state: ConversationState, turn: _Turn, response: str) -> None:
        state.misses += 1
        if state.misses >= self.settings.max_misunderstandings:
            state.misses = 0
            state.offer = "handoff"
            turn.say("utter_offer_human", expects="yes_no")
            return
        turn.say(response, expects="menu" if not state.form else state.requested_slot)
        if state.form:
            self._ask(state, turn, state.requested_slot)

    def _repeat(self, state: ConversationState, turn: _Turn) -> None:
        if not state.last_replies:
            turn.say("utter_nothing_to_repeat", expects="menu")
            return
        turn.say("utter_repeat_prefix")
        for item in state.last_replies:
            name, text_values, speech_values = item["said"]
            turn.say(name, text_values, speech_values, slow=True)
        turn.mark_last(expects=state.requested_slot if state.form else "menu")

    # -- forms -----------------------------------------------------------------------------------
    def _start_form(self, state: ConversationState, form_name: str, parse: ParseResult, turn: _Turn) -> None:
        previous = state.form
        state.start_form(form_name)
        # The family-proxy form is always operated by the child for themselves.
        state.on_behalf = self.domain.forms[form_name].kind != "proxy_request" and any(
            marker in parse.normalized for marker in PROXY_MARKERS
        )
        if state.on_behalf and state.phone:
            decision = self.backend.precheck(state.phone, self.domain.forms[form_name].kind)
            if decision is not None and not decision.allowed:
                return self._refuse_proxy(state, decision.how_to_ask or "", turn)
        title = self.domain.label("category", form_name)
        if previous and previous != form_name:
            turn.say("utter_switch_form", {"old": self.domain.label("category", previous), "title": title})
        elif form_name != "check_progress":
            turn.say("utter_start_form", {"title": title})
        form = self.domain.forms[form_name]
        for slot, entity in form.start_fills.items():
            if parse.first(entity) is not None:
                state.slots[slot] = parse.normalized[:200]
                state.slot_sources[slot] = "user"
        for slot in form.required_slots:
            if slot in state.slots:
                continue
            outcome = self._extract(slot, parse, requested=False)
            if outcome.found:
                if not self._accept(state, form, slot, outcome, turn):
                    return None
        self._next(state, turn)

    def _in_form(self, state: ConversationState, parse: ParseResult, turn: _Turn) -> None:
        form = self.domain.forms[state.form or ""]
        if state.confirming:
            return self._confirming(state, form, parse, turn)
        if state.correcting:
            return self._correcting(state, form, parse, turn)
        requested = state.requested_slot
        intent = parse.intent
        slot_type = self.domain.slots[requested].type if requested else None
        outcome = self._extract(requested, parse, requested=True) if requested else SlotOutcome()
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
            if self._accept(state, form, requested or "", outcome, turn):
                if self._fill_others(state, form, parse, turn, skip=requested) is not False:
                    self._next(state, turn)
            return None
        if interrupting:
            return self._global_in_form(state, intent.name, parse, turn)
        if (
            intent.name in self.domain.forms
            and self.domain.forms[intent.name].kind != "query"
            and intent.name != state.form
            and intent.confidence >= self.settings.switch_form_confidence
            and not outcome.error
        ):
            return self._start_form(state, intent.name, parse, turn)
        volunteered = self._fill_others(state, form, parse, turn, skip=requested)
        if volunteered is False:
            return None
        if volunteered:
            return self._next(state, turn)
        if outcome.error is not None:
            return self._invalid(state, requested or "", outcome, turn)
        self._misunderstood(state, turn, "utter_ask_again_prefix")

    def _global_in_form(self, state: ConversationState, intent: str, parse: ParseResult, turn: _Turn) -> None:
        if intent == "request_human":
            return self._handoff(state, turn, reason="user_request", urgent=False)
        if intent == "cancel" or intent == "goodbye":
            state.end_form()
            turn.say("utter_cancelled")
            if intent == "goodbye":
                turn.say("utter_goodbye", end_session=True)
            else:
                turn.say("utter_anything_else", expects="menu")
            return None
        if intent == "repeat":
            return self._repeat(state, turn)
        if intent == "check_progress":
            self._answer_progress(state, self._progress_key(state, parse), turn)
            turn.say("utter_continue")
            return self._ask_next_or_help(state, turn)
        return None

    def _extract(self, slot: str | None, parse: ParseResult, *, requested: bool) -> SlotOutcome:
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

    def _fill_others(self, state: ConversationState, form: FormSpec, parse: ParseResult, turn: _Turn,
                     skip: str | None) -> bool | None:
        """Takes values the resident volunteered for other slots ("明天中午两份送到3栋").
        True when something was filled, False when the form ended, None when nothing was."""
        filled: bool | None = None
        for slot in form.required_slots:
            if slot == skip or slot in state.slots or self._shares_type(form, slot):
                continue  # two slots of one type (two phones): only the asked one may take it
            outcome = self._extract(slot, parse, requested=False)
            if outcome.found:
                if not self._accept(state, form, slot, outcome, turn):
                    return False
                filled = True
        return filled

    def _shares_type(self, form: FormSpec, slot: str) -> bool:
        """Another slot of the form takes the same kind of value (a phone and a parent's phone):
        a value said in passing cannot tell which one it is meant for."""
        kind = self.domain.slots[slot].type
        return sum(self.domain.slots[other].type == kind for other in form.required_slots) > 1

    def _accept(self, state: ConversationState, form: FormSpec, slot: str, outcome: SlotOutcome,
                turn: _Turn) -> bool:
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

    def _check_age(self, state: ConversationState, form: FormSpec, turn: _Turn) -> bool:
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

    def _invalid(self, state: ConversationState, slot: str, outcome: SlotOutcome, turn: _Turn) -> None:
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

    def _next(self, state: ConversationState, turn: _Turn) -> None:
        form = self.domain.forms[state.form or ""]
        for slot in form.required_slots:
            if slot in state.slots or self._skip(state, form, slot):
                continue
            if self._derive(state, slot):
                continue
            return self._ask(state, turn, slot)
        state.requested_slot = None
        if form.kind == "query":
            self._answer_progress(state, state.slots.get("progress_key"), turn)
            state.end_form()
            turn.say("utter_anything_else", expects="menu")
            return None
        return self._confirm(state, form, turn)

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

    def _ask(self, state: ConversationState, turn: _Turn, slot: str | None) -> None:
        if slot is None:
            return
        state.requested_slot = slot
        names = [f"utter_ask_{state.form}_{slot}", f"utter_ask_{slot}"]
        if slot == "name" and state.on_behalf:
            names.insert(0, "utter_ask_proxy_name")
        name = next(n for n in names if self.domain.has(n))
        turn.say(name, expects=slot)

    def _ask_next_or_help(self, state: ConversationState, turn: _Turn) -> None:
        if state.form and state.confirming:
            return self._confirm(state, self.domain.forms[state.form], turn)
        if state.form:
            return self._next(state, turn)
        turn.say("utter_help", expects="menu")
        return None

    # -- confirmation and correction -------------------------------------------------------------
    def _confirm(self, state: ConversationState, form: FormSpec, turn: _Turn) -> None:
        state.confirming, state.correcting = True, False
        text_values, speech_values = self._display(state)
        turn.say(f"utter_confirm_{form.name}", text_values, speech_values)
        turn.say("utter_confirm_buttons", expects="confirm")

    def _confirming(self, state: ConversationState, form: FormSpec, parse: ParseResult, turn: _Turn) -> None:
        intent = parse.intent.name
        corrected = self._apply_correction(state, form, parse, turn)
        if corrected is False:
            return None  # the form ended (e.g. a corrected ID makes the resident ineligible)
        if corrected:
            return self._next(state, turn)
        if intent == "affirm":
            return self._submit(state, form, turn)
        mentioned = self._mentioned_slot(form, parse)
        if intent == "deny" or mentioned:
            if mentioned:
                return self._reopen(state, mentioned, turn)
            state.confirming, state.correcting = False, True
            turn.say("utter_which_slot", {"choices": "、".join(self._labels(state, form))}, expects="slot_name")
            return None
        if intent in GLOBAL_INTENTS:
            return self._global_in_form(state, intent, parse, turn)
        state.misses += 1
        if state.misses >= self.settings.max_misunderstandings:
            return self._misunderstood(state, turn, "utter_default")
        turn.say("utter_confirm_buttons", expects="confirm")
        return None

    def _correcting(self, state: ConversationState, form: FormSpec, parse: ParseResult, turn: _Turn) -> None:
        corrected = self._apply_correction(state, form, parse, turn)
        if corrected is False:
            return None
        if corrected:
            return self._next(state, turn)
        mentioned = self._mentioned_slot(form, parse)
        if mentioned:
            return self._reopen(state, mentioned, turn)
        intent = parse.intent.name
        if intent == "affirm":  # "都对" after all
            return self._confirm(state, form, turn)
        if intent in GLOBAL_INTENTS:
            return self._global_in_form(state, intent, parse, turn)
        state.misses += 1
        if state.misses >= self.settings.max_misunderstandings:
            return self._misunderstood(state, turn, "utter_default")
        turn.say("utter_which_slot", {"choices": "、".join(self._labels(state, form))}, expects="slot_name")
        return None

    def _apply_correction(self, state: ConversationState, form: FormSpec, parse: ParseResult,
                          turn: _Turn) -> bool | None:
        """A new value said while confirming ("不对，是两份") replaces the old one directly.
        Returns True when applied, False when the form ended, None when nothing matched."""
        mentioned = self._mentioned_slot(form, parse)
        candidates = [mentioned] if mentioned else list(form.required_slots)
        for slot in candidates:
            if slot != mentioned and (self.domain.slots[slot].type in FREE_TEXT_TYPES
                                      or self._shares_type(form, slot)):
                continue
            outcome = self._extract(slot, parse, requested=False)
            if outcome.found and outcome.value != state.slots.get(slot):
                state.confirming = state.correcting = False
                return True if self._accept(state, form, slot, outcome, turn) else False
        return None

    def _mentioned_slot(self, form: FormSpec, parse: ParseResult) -> str | None:
        best: tuple[int, str] | None = None
        for slot in form.required_slots:
            for alias in (self.domain.slots[slot].label, *self.domain.slots[slot].aliases):
                if alias and alias in parse.normalized and (best is None or len(alias) > best[0]):
                    best = (len(alias), slot)
        return best[1] if best else None

    def _reopen(self, state: ConversationState, slot: str, turn: _Turn) -> None:
        state.slots.pop(slot, None)
        state.slot_sources[slot] = "user"
        state.confirming = state.correcting = False
        if slot == "phone":
            state.on_behalf = True  # the resident gave another number: never re-derive it
        self._ask(state, turn, slot)

    def _labels(self, state: ConversationState, form: FormSpec) -> list[str]:
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
            elif kind in {"meal_time", "meal_mode", "service_type", "relation", "disability_level"}:
                shown = spoken = self.domain.label(kind, value)
            text[slot], speech[slot] = shown, spoken
        if state.slots.get("meal_mode") == "dine_in":
            text["address"] = speech["address"] = ""
        elif "address" in state.slots:
            text["address"] = speech["address"] = f"，送到{state.slots['address']}"
        return text, speech

    # -- actions ---------------------------------------------------------------------------------
    def _submit(self, state: ConversationState, form: FormSpec, turn: _Turn) -> None:
        slots = dict(state.slots)
        if form.kind == "proxy_request":
            subject = Person(phone=slots.pop("parent_phone", None))
            submitted_by = slots.pop("phone", None)
        else:
            subject = Person(name=slots.pop("name", None), id_number=slots.pop("id_number", None),
                             phone=slots.pop("phone", None))
            submitted_by = state.phone if state.on_behalf else None
        fields = {**slots, "slot_sources": dict(state.slot_sources)}
        if "age" in state.derived:
            fields["age"] = state.derived["age"]
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
            return self._refuse_proxy(state, refused.how_to_ask, turn)
        except Exception:
            # Nothing is lost: the form stays filled and confirmed; "对" again resubmits with the
            # same idempotency key, so a half-done first attempt cannot create a second case.
            log.exception("submit failed for form %s", form.name)
            turn.say("utter_submit_failed", expects="confirm")
            return
        values = {"reference": receipt.reference}
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

    def _refuse_proxy(self, state: ConversationState, how_to_ask: str, turn: _Turn) -> None:
        """A family member without the needed grant: say why and how to get one; file nothing."""
        state.end_form()
        turn.say("utter_proxy_refused", {"how_to_ask": how_to_ask})
        turn.say("utter_anything_else", expects="menu")

    def _handoff(self, state: ConversationState, turn: _Turn, *, reason: str, urgent: bool,
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

    def _emergency_kind(self, parse: ParseResult) -> str | None:
        text = parse.normalized
        for kind, words in self.domain.emergency_keywords.items():
            if any(word in text for word in words):
                return kind
        if parse.intent.name == "emergency":
            return "medical"
        return None

    def _progress_key(self, state: ConversationState, parse: ParseResult) -> dict[str, str] | None:
        reference = parse.first("reference")
        if reference is not None:
            return {"reference": str(reference.value)}
        return {"phone": state.phone} if state.phone else None

    def _answer_progress(self, state: ConversationState, key: Mapping[str, str] | None, turn: _Turn) -> None:
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



# Responses the engine says by fixed name (each sentence a resident hears lives in domain.yml).
FIXED_RESPONSES = (
    "utter_already_applied", "utter_already_applied_elsewhere", "utter_anything_else", "utter_ask_again_prefix",
    "utter_busy", "utter_cancelled", "utter_confirm_buttons", "utter_continue", "utter_default",
    "utter_emergency_medical", "utter_emergency_unsaved", "utter_goodbye", "utter_greet",
    "utter_handoff_after_hours", "utter_handoff_office_hours", "utter_help", "utter_invalid_text", "utter_no_input",
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
