"""The SMS inbox: decides what an inbound SMS is and answers each MessageSid exactly once.

What a message is, from its text alone (`classify`): TD/退订 or 开通 (always honoured); photos
(a 拍一拍 report); empty or too long; 进度/查询 [+ref]; 评价 1–5 [+ref]; 取消 [+ref]; else an
open message. Keywords, photos and refusals are answered in the claim's own transaction
(`IN_CLAIM`). An open message — and a 取消 with nothing to cancel, or sent inside a form —
goes down `AFTER_CLAIM` in order: a proxy consent (同意/不同意/取消代办, "1" to a pending
request); a care-alert acknowledgement ("1"/"收到" from someone told, unless a form is being
filled); 0/人工; a photo report's continuation (the answer to "在哪个小区哪栋楼？", or words
for the photos just sent); else a turn of the conversation.

One idempotency mechanism (backend/messaging/sms_inbox.py InboundLedger): the first transaction claims
the MessageSid, the answer is written to the claim once. A redelivery finds the row: answered →
the stored answer and nothing runs again; still being answered → it waits a few seconds for
that answer; a claim left by a worker that died is taken over after CLAIM_STALE. A failure
releases the claim, so the carrier's retry runs the message afresh.

Transactions per SMS (each one TicketDesk.run, so ticket rows share them):
- keyword (评价/取消/TD), photo report, refusal: ONE — claim, act and answer commit together.
- an ordinary message, i.e. a conversation turn: TWO — the claim, then the answer. The turn
  in between is `Assistant.turn`, which takes its own session lock and writes the session
  store (and a submitted form's case through the service backend's own transaction), so it
  cannot share a DB transaction with the claim or the answer. The claim's transaction also
  looks whether the sender has a photo report the text may continue (two indexed reads), so
  an ordinary message pays no third transaction to find it has none.
- a report continuation: TWO (the claim; the continuation with its answer). 进度, a proxy
  consent or an alert acknowledgement: our TWO, plus the transaction the part runs itself
  (StoreBackend.progress audits the read; ProxyService.handle_sms and AlertDesk.acknowledge
  own theirs) — they are other services' public methods and take no unit of work.
"""
from backend.messaging.inbox.message import Classified, InboundSms, InboxAnswer, Kind, classify, keyword
from backend.messaging.inbox.ports import Conversation, InboxParts, Wording
from backend.messaging.inbox.service import SmsInbox

__all__ = ["Classified", "Conversation", "InboundSms", "InboxAnswer", "InboxParts", "Kind", "SmsInbox", "Wording",
           "classify", "keyword"]
