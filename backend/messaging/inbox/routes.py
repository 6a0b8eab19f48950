"""The inbox's routes, as named functions in two tables: `IN_CLAIM`, answered inside the
claim's transaction (by the message's kind), and `AFTER_CLAIM`, tried in priority order once
the claim has committed, each answering or passing the message on (None)."""
from __future__ import annotations

import logging
from collections.abc import Callable

from backend.infra.tx import UnitOfWork
from backend.messaging.inbox.message import Claimed, Classified, Decision, InboundSms, InboxAnswer, Kind
from backend.messaging.inbox.ports import RouteContext

log = logging.getLogger(__name__)

_HUMAN = {"0", "人工"}
_HUMAN_WORD = "人工"  # what the core understands as "a person, please"


# --- routes answered inside the claim's transaction ------------------------------------------------
def opt_out(inbox: RouteContext, unit: UnitOfWork, sms: InboundSms, what: Classified) -> Decision:
    opted_out = what.kind is Kind.OPT_OUT
    inbox.ledger.set_opt_out(unit, from_hash=sms.from_hash, message_sid=sms.message_sid, opted_out=opted_out)
    return Decision(inbox.desk.text("opted_out" if opted_out else "opted_in"), "keyword")


def photo_report(inbox: RouteContext, unit: UnitOfWork, sms: InboundSms, what: Classified) -> Decision:
    refused = Decision(inbox.desk.text("ack_media_refused"), "rejected")
    if not sms.media:  # NumMedia said photos but no URL came with it
        return refused
    policy = inbox.desk.media.policy
    if not any(policy.type_allowed(m.content_type) and policy.host_allowed(m.url) for m in sms.media):
        # Nothing usable: do not open a report for it (a vCard, a video, a foreign link).
        for m in sms.media:
            log.info("refused media %s from %s", m.content_type,
                     "allow-list" if policy.type_allowed(m.content_type) else "type")
        return refused
    result = inbox.desk.intake_photos(unit, sms.sender, sms.message_sid, sms.body[: inbox.max_text],
                                      list(sms.media), phone_hash=sms.from_hash)
    return Decision(result.reply, "report", result.ticket_id)


def refusal(inbox: RouteContext, unit: UnitOfWork, sms: InboundSms, what: Classified) -> Decision:
    return Decision(inbox.desk.text("empty" if what.kind is Kind.EMPTY else "too_long"), "rejected")


def rating(inbox: RouteContext, unit: UnitOfWork, sms: InboundSms, what: Classified) -> Decision:
    if what.score is None:
        return Decision(inbox.desk.text("rate_usage"), "keyword")
    return Decision(inbox.desk.rate(unit, sms.from_hash, what.score, what.reference), "keyword")


def cancel_report(inbox: RouteContext, unit: UnitOfWork, sms: InboundSms, what: Classified) -> Decision | None:
    """取消 withdraws the latest open report, unless a form is being filled (then the core's 取消)."""
    if inbox.conversation.in_form(sms.sender):
        return None
    result = inbox.desk.cancel_recent(unit, sms.from_hash, what.reference)
    return None if result is None else Decision(result.reply, "keyword", result.ticket_id)


InClaimRoute = Callable[[RouteContext, UnitOfWork, InboundSms, Classified], "Decision | None"]
IN_CLAIM: dict[Kind, InClaimRoute] = {
    Kind.OPT_OUT: opt_out, Kind.OPT_IN: opt_out, Kind.PHOTOS: photo_report, Kind.EMPTY: refusal,
    Kind.TOO_LONG: refusal, Kind.RATE: rating, Kind.CANCEL: cancel_report,
}


# --- routes after the claim, in priority order ------------------------------------------------------
def progress(inbox: RouteContext, claimed: Claimed) -> Decision | None:
    if claimed.what.kind is not Kind.PROGRESS:
        return None
    return Decision(inbox.progress_text(claimed.sms, claimed.what.reference), "keyword")


def proxy_consent(inbox: RouteContext, claimed: Claimed) -> Decision | None:
    """同意/不同意/取消代办 from a senior or a family member."""
    proxies = inbox.parts.proxies
    if proxies is None:
        return None
    outcome = proxies.handle_sms(claimed.sms.sender, claimed.sms.body)
    return Decision(outcome.reply or "", "keyword") if outcome.handled else None


def alert_acknowledgement(inbox: RouteContext, claimed: Claimed) -> Decision | None:
    """"1"/"收到" from someone told about a care alert — unless they are filling in a form."""
    sms = claimed.sms
    if inbox.conversation.in_form(sms.sender):
        return None
    ack = inbox.parts.alerts.acknowledge(sms.sender, sms.body, "sms")
    return None if ack is None else Decision(ack.reply, "alert")


def outreach_reply(inbox: RouteContext, claimed: Claimed) -> Decision | None:
    """An answer to today's 平安 SMS ("1"/"好", "0"/"不好"), or "不要再打" — unless in a form."""
    sms = claimed.sms
    if inbox.conversation.in_form(sms.sender):
        return None
    reply = inbox.parts.outreach.sms_reply(sms.sender, sms.body)
    return None if reply is None else Decision(reply, "outreach")


def human(inbox: RouteContext, claimed: Claimed) -> Decision | None:
    if claimed.what.word not in _HUMAN:
        return None
    return Decision(inbox.conversation.reply(claimed.sms, _HUMAN_WORD), "conversation")


def report_continuation(inbox: RouteContext, claimed: Claimed) -> InboxAnswer | None:
    """The place a report waits for, or words for the photos just sent: one transaction that
    continues the report and records the answer (locks taken again, the claim only looked)."""
    if not claimed.continues_report:
        return None
    sms, desk = claimed.sms, inbox.desk

    def work(unit: UnitOfWork) -> InboxAnswer | None:
        waiting = desk.awaiting_location(unit, sms.from_hash)
        if waiting is not None and inbox.looks_like_place(sms.body):
            result = desk.answer_location(unit, waiting, sms.body)
        elif (open_report := desk.open_report(unit, sms.from_hash)) is not None:
            result = desk.add_text(unit, open_report, sms.body)
        else:
            return None
        return inbox.record(unit, sms, Decision(result.reply, "location", result.ticket_id))

    return desk.run(work)


def conversation(inbox: RouteContext, claimed: Claimed) -> Decision:
    return Decision(inbox.conversation.reply(claimed.sms, claimed.sms.body), "conversation")


AfterClaimRoute = Callable[[RouteContext, Claimed], "Decision | InboxAnswer | None"]
AFTER_CLAIM: tuple[AfterClaimRoute, ...] = (
    progress, proxy_consent, alert_acknowledgement, outreach_reply, human, report_continuation, conversation,
)
