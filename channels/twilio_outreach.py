"""Outbound calls' webhooks (Twilio Voice): 平安电话 check-ins and notices (backend/outreach).

POST /webhooks/twilio/outreach/answer?call=<id>&step=<step>&tries=<n>
                                     answered call → what to say, then one key or a few words
POST /webhooks/twilio/outreach/status?call=<id>
                                     status callback (queued … completed / no-answer / busy / failed)
POST /webhooks/twilio/outreach/dial-done?call=<id>&ref=<handoff>
                                     after <Dial> to the agent line: answered, or a call back later

Signed like every Twilio webhook. The call's id and step travel in the URL, so any worker takes the
next request. Every answer is valid TwiML: a failure apologises and ends politely (the call then
counts as unanswered and is tried again), never an HTTP 500 to the carrier.
"""
from __future__ import annotations

import logging
from urllib.parse import urlencode

from flask import Blueprint, Response, request
from twilio.twiml.voice_response import Dial, Gather, VoiceResponse

from backend.outreach.script import CallScript
from channels.routes import register
from channels.runtime_port import ChannelRuntime
from channels.twilio_signature import TwilioConfig, TwilioSignature
from channels.twilio_voice import BASE as VOICE_BASE
from channels.twilio_voice import GATHER_LANGUAGES, TwimlRenderer

log = logging.getLogger(__name__)

NAME = "twilio_outreach"
BASE = "/webhooks/twilio/outreach"
ANSWER_SECONDS = 8  # time to start answering: generous for seniors


class OutreachHooks:
    def __init__(self, runtime: ChannelRuntime) -> None:
        settings = runtime.settings
        self.runtime = runtime
        flow = runtime.ivr_flow
        prompts = settings.env.get("PHONE_PROMPTS") or flow.say.get("mode", "play")
        self.twiml = TwimlRenderer(flow, settings.env.get("AGENT_NUMBER") or None, None, runtime.voice,
                                   play=prompts == "play")
        self.signature = TwilioSignature(TwilioConfig.from_env(settings.env), NAME)

    def check_signature(self) -> Response | None:
        if not self.signature.ok(request):
            return self.signature.refuse(request)
        return None

    @staticmethod
    def _call_id() -> int | None:
        try:
            return int(request.args.get("call", ""))
        except ValueError:
            return None

    def render(self, call_id: int, script: CallScript) -> Response:
        response = VoiceResponse()
        lang = script.language
        if script.next == "listen":
            query = urlencode({"call": call_id, "step": script.step, "tries": script.tries})
            gather = Gather(input="dtmf speech", num_digits=1, timeout=ANSWER_SECONDS, speech_timeout="auto",
                            language=GATHER_LANGUAGES.get(lang, "zh-CN"), action=f"{BASE}/answer?{query}",
                            method="POST", action_on_empty_result=True)
            for sentence in script.say:
                self.twiml.say(gather, sentence, lang)
            response.append(gather)
            return _xml(response)
        for sentence in script.say:
            self.twiml.say(response, sentence, lang)
        if script.next == "person":
            self._dial(response, call_id, script)
        else:
            response.hangup()
        return _xml(response)

    def _dial(self, response: VoiceResponse, call_id: int, script: CallScript) -> None:
        """To the agent line, with the case's whisper; nobody there: said so, and called back."""
        agent = self.runtime.settings.env.get("AGENT_NUMBER") or None
        if not agent:
            self.twiml.say(response, self.runtime.outreach.texts.get("checkin_help_no_agent", script.language),
                           script.language)
            response.hangup()
            return
        query = urlencode({"call": call_id, "ref": script.reference or ""})
        dial = Dial(action=f"{BASE}/dial-done?{query}", method="POST", timeout=30)
        dial.number(agent, url=f"{VOICE_BASE}/whisper?{urlencode({'ref': script.reference or ''})}", method="POST")
        response.append(dial)

    def dial_done(self) -> Response:
        """The agent line answered (done) or not: a call-back tries again later; a check-in or
        notice caller who asked for a person gets a call-back for their handoff."""
        call_id = self._call_id()
        response = VoiceResponse()
        answered = (request.form.get("DialCallStatus") or "").lower() in {"completed", "answered"}
        if call_id is not None and not answered:
            outreach = self.runtime.outreach
            facts = outreach.calls.facts(call_id)
            language = facts.language if facts else "zh"
            if facts is not None and facts.purpose == "callback":
                outreach.callbacks.agent_answered(call_id, False)
                self.twiml.say(response, outreach.texts.get("callback_no_agent", language), language)
            else:
                if facts is not None:
                    outreach.promise_callback(facts, request.args.get("ref") or "")
                self.twiml.say(response, outreach.texts.get("call_transfer_later", language), language)
        elif call_id is not None:
            self.runtime.outreach.callbacks.agent_answered(call_id, True)
        response.hangup()
        return _xml(response)

    def answer(self) -> Response:
        call_id = self._call_id()
        if call_id is None:
            return Response("call missing", status=400, mimetype="text/plain")
        step = (request.args.get("step") or "start")[:16]
        try:
            tries = max(0, min(int(request.args.get("tries", 0)), 5))
        except ValueError:
            tries = 0
        try:
            script = self.runtime.outreach.answer(call_id, step, (request.form.get("Digits") or "").strip(),
                                                  (request.form.get("SpeechResult") or "").strip(), tries)
        except Exception:
            log.exception("outreach answer failed")
            script = CallScript((self.runtime.outreach.texts.get("checkin_goodbye"),), "end")
        return self.render(call_id, script)

    def status(self) -> Response:
        call_id = self._call_id()
        sid = (request.form.get("CallSid") or "").strip()
        state = (request.form.get("CallStatus") or "").strip()
        if call_id is None or not sid or not state:
            return Response("call, CallSid and CallStatus are required", status=400, mimetype="text/plain")
        known = self.runtime.outreach.calls.on_status(call_id, sid, state, request.form.get("AnsweredBy") or None)
        return Response(status=204 if known else 404)


def _xml(response: VoiceResponse) -> Response:
    return Response(str(response), mimetype="application/xml")


def make_blueprint(runtime: ChannelRuntime) -> Blueprint:
    hooks = OutreachHooks(runtime)
    bp = Blueprint(NAME, __name__)
    bp.before_request(hooks.check_signature)
    return register(bp, (("POST", f"{BASE}/answer", hooks.answer), ("POST", f"{BASE}/status", hooks.status),
                         ("POST", f"{BASE}/dial-done", hooks.dial_done)), hooks)
