"""Phone channel (Twilio Voice): the community hotline.

POST /webhooks/twilio/voice                 incoming call → greeting + first menu
POST /webhooks/twilio/voice/gather          keys (Digits) or speech (SpeechResult, Confidence);
                                            ?step=<menu step>|conv|confirm, &expects=, &tries=
POST /webhooks/twilio/voice/dial-done       after <Dial>: nobody answered → promise a call back
POST /webhooks/twilio/voice/whisper         what the agent hears before being connected
POST /webhooks/twilio/voice/status          call status callback → call record closed

Stateless: the conversation lives in the session store under the CallSid, what the call waits
for travels in the action URL, so any worker takes the next webhook. Every answer is valid TwiML:
an error says sorry and offers a person — never an HTTP 500 to the carrier.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import wraps
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, request
from twilio.twiml.voice_response import Dial, Gather, VoiceResponse

from assistant.config import Settings
from assistant.ivr import CallInput, IvrFlow, IvrNavigator, IvrOutcome
from assistant.privacy import mask_phone
from assistant.types import Reply, UserMessage
from backend.sms_format import mainland_mobile
from channels.twilio_signature import TwilioSignature
from runtime.ticket_loop import TwilioConfig

log = logging.getLogger(__name__)

NAME = "twilio_voice"
CHANNEL = "voice"
BASE = "/webhooks/twilio/voice"
PENDING_TTL = 600


class VoiceCall:
    """Turns navigator outcomes and core replies into TwiML for one webhook."""

    def __init__(self, runtime: Any, flow: IvrFlow, agent_number: str | None) -> None:
        self.runtime = runtime
        self.flow = flow
        self.nav = IvrNavigator(flow)
        self.agent_number = agent_number
        self.calls = runtime.calls

    # -- TwiML pieces -------------------------------------------------------------------------
    def _say(self, parent: Any, text: str) -> None:
        if not text:
            return
        say = parent.say("", language=self.flow.say.get("language", "cmn-CN"), voice=self.flow.say.get("voice"))
        say.prosody(text, rate=self.flow.say.get("rate", "85%"))

    def _gather(self, response: VoiceResponse, sentences: Sequence[str], **query: Any) -> None:
        long_answer = query.get("expects") in self.flow.digit_slots
        settings = self.flow.gather
        gather = Gather(
            input="dtmf speech",
            language=settings.get("language", "zh-CN"),
            timeout=int(settings.get("first_input_seconds", 8)),
            speech_timeout=str(settings.get("speech_timeout", "auto")),
            action=f"{BASE}/gather?{urlencode({k: v for k, v in query.items() if v is not None})}",
            method="POST",
            action_on_empty_result=True,
            **({"finish_on_key": settings.get("digits_finish_key", "#")} if long_answer else {"num_digits": 1}),
        )
        if query.get("step") in self.flow.steps:
            hints = [option.get("intent", "") for option in self.flow.steps[query["step"]].options.values()]
            gather.hints = ",".join(h for h in hints if h) or None
        for sentence in sentences:
            self._say(gather, sentence)
        response.append(gather)

    def menu(self, step: str, say: Sequence[str] = (), tries: int = 0) -> VoiceResponse:
        response = VoiceResponse()
        self._gather(response, [*say, self.flow.steps[step].prompt], step=step, tries=tries)
        return response

    def human(self, call_sid: str, caller: str | None, say: Sequence[str] = (), reason: str = "user_request",
              reference: str | None = None) -> VoiceResponse:
        response = VoiceResponse()
        for sentence in say:
            self._say(response, sentence)
        if reference is None:  # keys (0) bypass the core: still leave a handoff record for staff
            replies = self._core(call_sid, caller, "/request_human")
            reference = next((r.reference for r in replies if r.reference), None)
            if not any(r.live_agent for r in replies):
                for reply in replies:
                    self._say(response, reply.speech or reply.text)
                response.hangup()
                return response
        self.calls.step(call_sid, "human", outcome="handoff", handoff_reference=reference)
        return self._dial(response, reference)

    def _dial(self, response: VoiceResponse, reference: str | None) -> VoiceResponse:
        if not self.agent_number:
            self._say(response, self.nav.message("no_agent"))
            response.hangup()
            return response
        self._say(response, self.nav.message("to_human"))
        dial = Dial(action=f"{BASE}/dial-done", method="POST", timeout=30)
        dial.number(self.agent_number, url=f"{BASE}/whisper?{urlencode({'ref': reference or ''})}", method="POST")
        response.append(dial)
        return response

    def end(self, say: Sequence[str] = ()) -> VoiceResponse:
        response = VoiceResponse()
        for sentence in [*say, self.nav.message("goodbye")]:
            self._say(response, sentence)
        response.hangup()
        return response

    # -- the conversational core ----------------------------------------------------------------
    def _core(self, call_sid: str, caller: str | None, text: str) -> list[Reply]:
        message_id = request.headers.get("I-Twilio-Idempotency-Token") or None
        replies = self.runtime.assistant.handle(
            UserMessage(sender_id=call_sid, text=text, channel=CHANNEL, phone=caller, message_id=message_id)
        )
        self.calls.step(call_sid, "core", said=[("caller", text), *[("assistant", r.text) for r in replies]])
        return replies

    def converse(self, call_sid: str, caller: str | None, text: str, say: Sequence[str] = (),
                 tries: int = 0) -> VoiceResponse:
        replies = self._core(call_sid, caller, text)
        last = replies[-1]
        spoken = [*say, *[r.speech or r.text for r in replies]]
        if any(r.handoff for r in replies):
            reference = next((r.reference for r in replies if r.reference), None)
            self.calls.step(call_sid, "handoff", outcome="handoff", handoff_reference=reference)
            if any(r.live_agent for r in replies):
                response = VoiceResponse()
                for sentence in spoken:
                    self._say(response, sentence)
                return self._dial(response, reference)
            return self.end(spoken)
        if last.end_session:
            return self.end(spoken)
        response = VoiceResponse()
        if last.expects in {None, "menu"}:
            self._gather(response, [*spoken, self.nav.message("more")], step=self.flow.start)
            return response
        self._gather(response, spoken, step="conv", expects=last.expects, tries=tries)
        return response

    def follow(self, outcome: IvrOutcome, call_sid: str, caller: str | None, expects: str | None,
               step: str | None) -> VoiceResponse:
        self.calls.step(call_sid, outcome.kind if outcome.kind != "menu" else f"menu:{outcome.step}")
        if outcome.kind == "human":
            return self.human(call_sid, caller, outcome.say, reason=outcome.meta.get("reason", "user_request"))
        if outcome.kind == "end":
            return self.end(outcome.say)
        if outcome.kind == "menu":
            return self.menu(outcome.step or self.flow.start, outcome.say, outcome.tries)
        if outcome.kind == "confirm_speech":
            self.runtime.sessions.save(f"ivr:{call_sid}", {"pending": outcome.text, "expects": expects,
                                                           "step": step}, PENDING_TTL)
            response = VoiceResponse()
            self._gather(response, outcome.say, step="confirm", expects=expects)
            return response
        if outcome.meta.get("silence"):
            return self.converse(call_sid, caller, "/repeat", [self.nav.message("no_input")], outcome.tries)
        if outcome.meta.get("then") == "menu":  # * inside a form: drop it, back to the menu
            replies = self._core(call_sid, caller, outcome.text or "/cancel")
            return self.menu(self.flow.start, [replies[0].speech or replies[0].text])
        return self.converse(call_sid, caller, outcome.text or "", outcome.say)


def _safe(call: VoiceCall) -> Callable[[Callable[..., Response]], Callable[..., Response]]:
    """Any failure still answers valid TwiML: an apology and a person (or a promised call back)."""

    def decorate(view: Callable[..., Response]) -> Callable[..., Response]:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Response:
            try:
                return view(*args, **kwargs)
            except Exception:
                log.exception("voice webhook failed")
                response = VoiceResponse()
                call._say(response, call.nav.message("error"))
                if call.agent_number:
                    response.dial(call.agent_number, timeout=30)
                else:
                    call._say(response, call.nav.message("no_agent"))
                    response.hangup()
                return _twiml(response)

        return wrapper

    return decorate


def _twiml(response: VoiceResponse) -> Response:
    return Response(str(response), mimetype="application/xml")


def _input() -> CallInput:
    confidence = request.form.get("Confidence")
    try:
        value = float(confidence) if confidence not in (None, "") else None
    except ValueError:
        value = None
    return CallInput(digits=(request.form.get("Digits") or "").strip(),
                     speech=(request.form.get("SpeechResult") or "").strip(), confidence=value)


def make_blueprint(runtime: Any) -> Blueprint:
    settings: Settings = runtime.settings
    flow = IvrFlow.load(settings.root / "ivr_flows" / "main.yml")
    call = VoiceCall(runtime, flow, settings.env.get("AGENT_NUMBER") or None)
    signature = TwilioSignature(TwilioConfig.from_env(settings.env), NAME)
    bp = Blueprint(NAME, __name__)
    safe = _safe(call)

    def caller() -> str | None:
        return mainland_mobile(request.form.get("From") or "") or None

    def call_sid() -> str | None:
        sid = (request.form.get("CallSid") or "").strip()
        return sid if sid.startswith("CA") and 10 < len(sid) <= 64 else None

    @bp.before_request
    def check_signature() -> Response | None:
        if not signature.ok(request):
            return signature.refuse(request)
        if call_sid() is None:
            return Response("CallSid missing or malformed", status=400, mimetype="text/plain")
        return None

    @bp.post(BASE)
    @safe
    def incoming() -> Response:
        sid, phone = call_sid(), caller()
        call.calls.start(sid, phone)
        log.info("call %s from %s", sid, mask_phone(phone) if phone else "unknown")
        if call.calls.direct_to_human(phone):
            return _twiml(call.human(sid, phone, [flow.greeting]))
        return _twiml(call.menu(flow.start, [flow.greeting]))

    @bp.post(f"{BASE}/gather")
    @safe
    def gather() -> Response:
        sid, phone = call_sid(), caller()
        step = request.args.get("step", flow.start)
        expects = request.args.get("expects") or None
        try:
            tries = max(0, min(int(request.args.get("tries", 0)), 10))
        except ValueError:
            tries = 0
        value = _input()
        if step == "confirm":
            pending = runtime.sessions.load(f"ivr:{sid}") or {}
            runtime.sessions.delete(f"ivr:{sid}")
            said_yes = bool(value.speech) and runtime.assistant.parse(value.speech).intent.name == "affirm"
            if value.digits == "1" or said_yes:
                return _twiml(call.converse(sid, phone, pending.get("pending") or "", tries=0))
            if pending.get("step") in flow.steps:
                return _twiml(call.menu(pending["step"], [call.nav.message("say_again")]))
            response = VoiceResponse()
            call._gather(response, [call.nav.message("say_again")], step="conv", expects=pending.get("expects"))
            return _twiml(response)
        if step == "conv":
            outcome = call.nav.in_conversation(expects, value, tries)
        else:
            outcome = call.nav.at_menu(step, value, tries)
        return _twiml(call.follow(outcome, sid, phone, expects, step))

    @bp.post(f"{BASE}/dial-done")
    @safe
    def dial_done() -> Response:
        status = (request.form.get("DialCallStatus") or "").lower()
        if status in {"completed", "answered"}:
            response = VoiceResponse()
            response.hangup()
            return _twiml(response)
        return _twiml(call.end([call.nav.message("no_agent")]))

    @bp.post(f"{BASE}/whisper")
    @safe
    def whisper() -> Response:
        reference = request.args.get("ref", "")
        case = runtime.backend.get_case(reference, actor="agent") if reference.isdigit() else None
        summary = "没有记录。"
        if case is not None:
            form = (case.fields or {}).get("form_name")
            summary = "，".join(x for x in [
                "紧急" if (case.fields or {}).get("urgent") else "",
                f"服务编号{reference}",
                f"正在办{form}" if form else "",
            ] if x) + "。"
        response = VoiceResponse()
        call._say(response, call.nav.message("whisper", summary=summary))
        return _twiml(response)

    @bp.post(f"{BASE}/status")
    def status() -> Response:
        sid = call_sid()
        state = (request.form.get("CallStatus") or "").lower()
        if state in {"completed", "busy", "no-answer", "failed", "canceled"}:
            call.calls.end(sid, state)
            runtime.sessions.delete(f"ivr:{sid}")
        return Response(status=204)

    return bp
