"""The inbox service: claims a MessageSid, runs the routes (backend/messaging/inbox/routes.py) and
records the answer once (the mechanism and the transaction count: backend/messaging/inbox/__init__.py)."""
from __future__ import annotations

import dataclasses
import logging
import time
from datetime import timedelta
from functools import partial

from backend.infra.tx import UnitOfWork
from backend.messaging.inbox.message import Claimed, Classified, Decision, InboundSms, InboxAnswer, classify
from backend.messaging.inbox.ports import Conversation, InboxParts, ProgressLookup, Wording
from backend.messaging.inbox.routes import AFTER_CLAIM, IN_CLAIM
from backend.messaging.sms_format import segments
from backend.messaging.sms_inbox import ClaimState, InboundLedger
from backend.tickets import TicketDesk

log = logging.getLogger(__name__)

CLAIM_STALE = timedelta(seconds=60)  # Twilio gives up on a webhook after 15 s: older claims are orphans
PENDING_WAIT_SECONDS = 8.0  # a redelivery waits this long for the first delivery's answer
_PLACE_INTENTS = {"nlu_fallback", "report_issue", "out_of_scope", "affirm", "deny"}
# Ticket categories a progress line calls by the one word for a report.
_REPORT_CATEGORIES = frozenset({"photo_report", "report_issue", "open311"})


class SmsInbox:
    def __init__(self, desk: TicketDesk, ledger: InboundLedger, parts: InboxParts, progress: ProgressLookup,
                 wording: Wording, conversation: Conversation, hotline: str) -> None:
        self.desk = desk
        self.ledger = ledger
        self.parts = parts
        self.progress = progress
        self.wording = wording
        self.conversation = conversation
        self.hotline = hotline
        self.max_text = desk.settings.max_text_chars
        self.pending_wait = PENDING_WAIT_SECONDS

    def receive(self, sms: InboundSms) -> InboxAnswer:
        """Answers `sms`, or gives the stored answer of an earlier delivery of its MessageSid."""
        sms = dataclasses.replace(sms, from_hash=sms.from_hash or self.desk.phone_hash(sms.sender))
        what = classify(sms, self.max_text)
        opened = self.desk.run(lambda unit: self._claim(unit, sms, what))
        if isinstance(opened, InboxAnswer):
            return opened
        if opened is None:
            return self._await_answer(sms)
        try:
            return self._after_claim(opened)
        except BaseException:
            self._release(sms)
            raise

    def busy(self) -> list[str]:
        """The answer when the message could not be taken (nothing of it was kept)."""
        return segments(self.desk.text("busy", hotline=self.hotline))

    # -- the claim's transaction ------------------------------------------------------------------
    def _claim(self, unit: UnitOfWork, sms: InboundSms, what: Classified) -> InboxAnswer | Claimed | None:
        claim = self.ledger.claim(unit, message_sid=sms.message_sid, from_hash=sms.from_hash, body=sms.body,
                                  num_media=sms.num_media, stale_after=CLAIM_STALE)
        if claim.state is ClaimState.ANSWERED:
            return InboxAnswer(claim.reply, claim.route, replayed=True)
        if claim.state is ClaimState.PENDING:
            return None
        route = IN_CLAIM.get(what.kind)
        decision = route(self, unit, sms, what) if route is not None else None
        if decision is not None:
            return self.record(unit, sms, decision)
        return Claimed(sms, what, self._has_report(unit, sms.from_hash))

    def _has_report(self, unit: UnitOfWork, from_hash: str) -> bool:
        return self.desk.awaiting_location(unit, from_hash) is not None or \
            self.desk.open_report(unit, from_hash) is not None

    def record(self, unit: UnitOfWork, sms: InboundSms, decision: Decision) -> InboxAnswer:
        """Writes the answer to the message's claim."""
        reply = segments(decision.text)
        self.ledger.answer(unit, sms.message_sid, route=decision.route, reply=reply, ticket_id=decision.ticket_id)
        return InboxAnswer(tuple(reply), decision.route)

    # -- after the claim ----------------------------------------------------------------------------
    def _after_claim(self, claimed: Claimed) -> InboxAnswer:
        for route in AFTER_CLAIM:
            outcome = route(self, claimed)
            if isinstance(outcome, InboxAnswer):
                return outcome
            if outcome is not None:
                return self.desk.run(partial(self.record, sms=claimed.sms, decision=outcome))
        raise AssertionError("the conversation answers every message")

    def _await_answer(self, sms: InboundSms) -> InboxAnswer:
        deadline = time.monotonic() + self.pending_wait
        while time.monotonic() < deadline:
            time.sleep(0.05)
            stored = self.desk.run(lambda unit: self.ledger.answered(unit, sms.message_sid))
            if stored is not None:
                return InboxAnswer(stored.reply, stored.route, replayed=True)
        log.warning("sms still being answered by another delivery: answered busy")
        return InboxAnswer(tuple(self.busy()), "busy", replayed=True)

    def _release(self, sms: InboundSms) -> None:
        try:
            self.desk.run(lambda unit: self.ledger.release(unit, sms.message_sid))
        except Exception:  # the claim then goes stale and a redelivery takes it over
            log.exception("could not release the claim of a failed sms")

    def looks_like_place(self, text: str) -> bool:
        """A reply to "在哪个小区哪栋楼？" unless it is clearly something else ("我要订饭")."""
        if self.desk.gazetteer.parse(text) is not None:
            return True
        parse = self.conversation.parse(text)
        return not (parse.intent.name not in _PLACE_INTENTS and parse.intent.confidence >= 0.6)

    def progress_text(self, sms: InboundSms, reference: str | None) -> str:
        try:
            items = self.progress(reference=reference) if reference else \
                self.progress(phone=sms.phone or sms.sender)
        except ValueError:
            items = []
        if not items:
            return self.desk.text("progress_none", ref=reference) if reference else \
                self.desk.text("progress_none_phone")
        report = self.wording.render("utter_sms_report_category").text
        return "".join(self.desk.text(
            "progress_item", ref=i.reference, status=self.wording.label("status", i.status),
            category=report if i.category in _REPORT_CATEGORIES else self.wording.label("category", i.category))
            for i in items[:3])
