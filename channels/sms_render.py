"""How a conversation with the assistant core reads over SMS: the core's turn as one text for a
feature phone (no buttons: a digit hint from domain.yml instead), and digit answers ("1", "2")
turned back into the words the core understands. What the last SMS offered as digits is the
channel's own scratch state (`scratch:sms:<sender>`), never the core's session."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from assistant.types import Turn, UserMessage
from backend.messaging.inbox import InboundSms, keyword
from channels.scratch import Scratch

if TYPE_CHECKING:
    from assistant.core import Assistant
    from assistant.dialogue.domain import Domain
    from assistant.types import ParseResult

CHANNEL = "sms"
# What the core expected → the domain.yml hint appended instead of its buttons.
HINTS = {"confirm": "utter_sms_confirm_hint", "yes_no": "utter_sms_yes_no_hint"}
# What the core expected → how digit replies map to the words it understands (its NLU input).
DIGIT_WORDS = {"confirm": {"1": "对", "2": "不对"}, "yes_no": {"1": "要", "2": "不要"}}
# Responses the SMS channel says by name: refused at start-up when domain.yml lacks one.
RESPONSES = {
    "utter_sms_confirm_hint": "the digits that answer a read-back over SMS",
    "utter_sms_yes_no_hint": "the digits that answer a yes/no offer over SMS",
    "utter_sms_report_category": "what a progress SMS calls a photo report",
}


@dataclass
class SmsScratch:
    expects: str | None = None  # what the last SMS offered as digits: "confirm", "yes_no" or None


def require_responses(domain: Domain) -> None:
    domain.require(RESPONSES)


def render_sms(turn: Turn, domain: Domain) -> str:
    """The core's turn as one SMS text (no buttons on feature phones: a digit hint instead)."""
    expects = turn.expects
    parts = [reply.text for reply in turn.replies
             if not (expects in HINTS and reply.name == "utter_confirm_buttons")]  # the hint replaces it
    if expects in HINTS:
        parts.append(domain.render(HINTS[expects]).text)
    return "".join(parts)


def answer_word(text: str, expects: str | None, words: Mapping[str, Mapping[str, str]] = DIGIT_WORDS) -> str:
    """ "1"/"2" as the answer the last SMS asked for; any other text unchanged."""
    return words.get(expects or "", {}).get(keyword(text), text)


class SmsConversation:
    """backend.messaging.inbox.Conversation over the assistant core, rendered for SMS."""

    def __init__(self, assistant: Assistant, domain: Domain, scratch: Scratch[SmsScratch]) -> None:
        self.assistant = assistant
        self.domain = domain
        self.scratch = scratch

    def in_form(self, sender: str) -> bool:
        return self.assistant.status(CHANNEL, sender).in_form

    def parse(self, text: str) -> ParseResult:
        return self.assistant.parse(text)

    def reply(self, sms: InboundSms, text: str) -> str:
        state = self.scratch.load(sms.sender) or SmsScratch()
        turn = self.assistant.turn(UserMessage(
            sender_id=sms.sender, text=answer_word(text, state.expects), channel=CHANNEL, phone=sms.phone,
            message_id=sms.message_sid, metadata={"num_media": sms.num_media},
        ))
        rendered = render_sms(turn, self.domain)
        self.scratch.save(sms.sender, SmsScratch(turn.expects))
        return rendered
