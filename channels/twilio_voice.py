"""Phone channel (Twilio Voice): the community hotline.

POST /webhooks/twilio/voice                 incoming call → greeting + first menu
POST /webhooks/twilio/voice/gather          keys (Digits) or speech (SpeechResult, Confidence);
                                            ?step=<menu step>|conv|confirm, &expects=, &tries=
POST /webhooks/twilio/voice/dial-done       after <Dial>: nobody answered → promise a call back
POST /webhooks/twilio/voice/whisper         what the agent hears before being connected
POST /webhooks/twilio/voice/status          call status callback → call record closed
GET  /voice/tts/<name>.wav                  prompt audio for <Play>; waits while a sentence is made

Stateless: the conversation lives in the session store under the CallSid, what the call waits
for travels in the action URL, so any worker takes the next webhook. Every answer is valid TwiML:
an error says sorry and offers a person — never an HTTP 500 to the carrier. When config.yml asks
for our own recogniser (voice.phone_recognizer: local), the call is handed to a Media Stream
(twilio_media.py) instead of <Gather>.

Routes are named handlers of `VoiceWebhooks`, listed once in `ROUTES`.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import wraps
from typing import Any, Protocol
from urllib.parse import urlencode

from flask import Blueprint, Response, request, send_file
from twilio.twiml.voice_response import Connect, Dial, Gather, VoiceResponse

from assistant.ivr import CallInput, IvrFlow
from assistant.privacy import mask_phone
from assistant.voice.tts import Speech, TwilioSay
from backend.messaging.sms_format import mainland_mobile
from channels.phone_call import CallStep, PhoneCall, StreamExit, stream_exits
from channels.runtime_port import ChannelRuntime
from channels.twilio_signature import TwilioConfig, TwilioSignature

log = logging.getLogger(__name__)

NAME = "twilio_voice"
BASE = "/webhooks/twilio/voice"
TTS_PATH = "/voice/tts"  # prompt audio; names are content hashes, fetched by Twilio
GATHER_LANGUAGES = {"yue": "yue-Hant-HK"}  # Twilio's recogniser for a Cantonese call
PROMPT_WAIT_SECONDS = 10.0  # a sentence takes Kokoro a few seconds; far longer means it is stuck


class PromptVoice(Protocol):
    """What the renderer needs from runtime.voice (VoiceServices)."""

    @property
    def local_voice(self) -> bool: ...

    def pieces(self, text: str) -> list[str]: ...

    def prepare(self, text: str, language: str = "zh") -> str | None: ...

    def carrier_speech(self, text: str, language: str = "zh") -> Speech: ...


class TwimlRenderer:
    """Prompts are our own voice (<Play>, one per sentence or clause group) or the carrier's (<Say>).

    The webhook answers at once: each sentence's URL names its WAV, and those not cached yet are
    made in the background while Twilio plays the first ones (the GET waits for its file)."""

    def __init__(self, flow: IvrFlow, agent_number: str | None, stream_url: str | None = None,
                 voice: PromptVoice | None = None, play: bool = False) -> None:
        self.flow = flow
        self.agent_number = agent_number
        self.stream_url = stream_url
        self.voice = voice
        self.play = play and voice is not None  # PHONE_PROMPTS / say.mode "play"

    def say(self, parent: Any, text: str, language: str = "zh") -> None:
        if not text:
            return
        if not (self.play and self.voice is not None and self._local()):
            self._carrier_say(parent, text, language)
            return
        for piece in self.voice.pieces(text):  # sentences; a long one cut between clauses
            name = self._prepared(piece, language)
            if name is not None:
                parent.play(f"{TTS_PATH}/{name}")
            else:  # no local voice for it: the call must never go silent
                self._carrier_say(parent, piece, language)

    def _local(self) -> bool:
        try:
            return bool(self.voice and self.voice.local_voice)
        except Exception:  # a voice that cannot even load: every prompt through <Say>
            log.warning("local TTS unavailable; using <Say>", exc_info=True)
            return False

    def _prepared(self, sentence: str, language: str) -> str | None:
        try:
            return self.voice.prepare(sentence, language) if self.voice else None
        except Exception:
            log.warning("local TTS failed; using <Say>", exc_info=True)
            return None

    def _carrier_say(self, parent: Any, text: str, language: str) -> None:
        speech = self.voice.carrier_speech(text, language) if self.voice else TwilioSay().speak(text, language)
        say = parent.say("", language=speech.say_language, voice=speech.say_voice)
        say.prosody(speech.text, rate=self.flow.say.get("rate", "85%"))

    def _gather(self, response: VoiceResponse, step: CallStep, language: str) -> None:
        settings = self.flow.gather
        long_answer = step.expects in self.flow.digit_slots
        query = {"step": step.step, "expects": step.expects, "tries": step.tries}
        gather = Gather(
            input="dtmf speech",
            language=GATHER_LANGUAGES.get(language) or settings.get("language", "zh-CN"),
            timeout=int(settings.get("first_input_seconds", 8)),
            speech_timeout=str(settings.get("speech_timeout", "auto")),
            action=f"{BASE}/gather?{urlencode({k: v for k, v in query.items() if v is not None})}",
            method="POST",
            action_on_empty_result=True,
            **({"finish_on_key": settings.get("digits_finish_key", "#")} if long_answer else {"num_digits": 1}),
        )
        for sentence in step.say:
            self.say(gather, sentence, language)
        response.append(gather)

    def dial(self, response: VoiceResponse, reference: str | None, no_agent: str, language: str = "zh") -> None:
        if not self.agent_number:
            self.say(response, no_agent, language)
            response.hangup()
            return
        dial = Dial(action=f"{BASE}/dial-done?{urlencode({'ref': reference or ''})}", method="POST", timeout=30)
        dial.number(self.agent_number, url=f"{BASE}/whisper?{urlencode({'ref': reference or ''})}", method="POST")
        response.append(dial)

    def render(self, step: CallStep, no_agent: str, language: str = "zh") -> VoiceResponse:
        """`language`: the call's ("zh" Mandarin, "yue" Cantonese), for the voice that says it."""
        response = VoiceResponse()
        if step.next == "listen":
            self._gather(response, step, language)
            return response
        for sentence in step.say:
            self.say(response, sentence, language)
        if step.next == "person":
            self.dial(response, step.reference, no_agent, language)
        else:
            response.hangup()
        return response

    def stream(self, call_sid: str, caller: str | None) -> VoiceResponse:
        """Hand the call to our own recogniser; when the stream ends, ask what to do next."""
        response = VoiceResponse()
        connect = Connect()
        stream = connect.stream(url=self.stream_url)
        stream.parameter(name="caller", value=caller or "")
        response.append(connect)
        response.redirect(f"{BASE}/after-stream", method="POST")
        return response


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


class VoiceWebhooks:
    """The hotline's webhooks, one named handler per route (see ROUTES): each reads the request,
    asks `PhoneCall` what the call does next, and answers TwiML."""

    def __init__(self, runtime: ChannelRuntime) -> None:
        settings = runtime.settings
        self.runtime = runtime
        self.flow = runtime.ivr_flow
        self.phone = PhoneCall(runtime, self.flow)
        self.exits = stream_exits(runtime.sessions)
        voice_config = settings.config.get("voice") or {}
        stream_url = settings.env.get("MEDIA_STREAM_URL") or None
        self.use_stream = bool(voice_config.get("phone_recognizer") == "local" and stream_url)
        prompts = settings.env.get("PHONE_PROMPTS") or self.flow.say.get("mode", "play")
        self.twiml = TwimlRenderer(self.flow, settings.env.get("AGENT_NUMBER") or None, stream_url, runtime.voice,
                                   play=prompts == "play")
        self.signature = TwilioSignature(TwilioConfig.from_env(settings.env), NAME)
        self.no_agent = self.phone.nav.message("no_agent")

    # -- request parts and the answer ------------------------------------------------------------
    @staticmethod
    def _caller() -> str | None:
        return mainland_mobile(request.form.get("From") or "") or None

    @staticmethod
    def _call_sid() -> str:
        return (request.form.get("CallSid") or "").strip()

    def _render(self, step: CallStep) -> Response:
        return _twiml(self.twiml.render(step, self.no_agent, self.phone.language(self._call_sid())))

    def safe(self, view: Callable[..., Response]) -> Callable[..., Response]:
        """Any failure still answers valid TwiML: an apology and a person (or a promised call back)."""

        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Response:
            try:
                return view(*args, **kwargs)
            except Exception:
                log.exception("voice webhook failed")
                return _twiml(self.twiml.render(CallStep((self.phone.nav.message("error"),), "person"),
                                                self.no_agent))

        return wrapper

    # -- handlers --------------------------------------------------------------------------------
    def check_signature(self) -> Response | None:
        if request.path.startswith(TTS_PATH + "/"):
            return None  # Twilio fetches <Play> audio with a plain GET
        if not self.signature.ok(request):
            return self.signature.refuse(request)
        sid = self._call_sid()
        if not (sid.startswith("CA") and 10 < len(sid) <= 64):
            return Response("CallSid missing or malformed", status=400, mimetype="text/plain")
        return None

    def incoming(self) -> Response:
        sid, number = self._call_sid(), self._caller()
        log.info("call %s from %s", sid, mask_phone(number) if number else "unknown")
        if self.use_stream:
            self.phone.calls.start(sid, number)
            return _twiml(self.twiml.stream(sid, number))
        return self._render(self.phone.greet(sid, number))

    def gather(self) -> Response:
        try:
            tries = max(0, min(int(request.args.get("tries", 0)), 10))
        except ValueError:
            tries = 0
        step = request.args.get("step", self.flow.start)
        message_id = request.headers.get("I-Twilio-Idempotency-Token") or None
        return self._render(self.phone.heard(self._call_sid(), self._caller(), step,
                                             request.args.get("expects") or None, tries, _input(), message_id))

    def after_stream(self) -> Response:
        """The Media Stream closed: it left what comes next (a person, or the end) in a StreamExit."""
        exit_ = self.exits.load(self._call_sid()) or StreamExit()
        self.exits.delete(self._call_sid())
        if exit_.next == "person":
            return self._render(CallStep((), "person", reference=exit_.reference))
        return self._render(CallStep((self.phone.nav.message("goodbye"),), "end"))

    def dial_done(self) -> Response:
        status = (request.form.get("DialCallStatus") or "").lower()
        if status in {"completed", "answered"}:
            response = VoiceResponse()
            response.hangup()
            return _twiml(response)
        self.phone.promise_callback(request.args.get("ref") or "", self._caller(), self._call_sid())
        return self._render(CallStep((self.no_agent, self.phone.nav.message("goodbye")), "end"))

    def whisper(self) -> Response:
        response = VoiceResponse()
        summary = self._case_summary(request.args.get("ref", ""))
        self.twiml.say(response, self.phone.nav.message("whisper", summary=summary))
        return _twiml(response)

    def _case_summary(self, reference: str) -> str:
        """What the agent hears of the case before being connected (sentences from the flow)."""
        case = None
        if reference.isascii() and reference.isdigit():
            case = self.runtime.backend.get_case(reference, actor="agent")
        if case is None:
            return self.phone.nav.message("whisper_unknown")
        fields = case.fields or {}
        form = fields.get("form_name")
        return self.phone.nav.message(
            "whisper_case", reference=reference,
            urgent=self.phone.nav.message("whisper_urgent") if fields.get("urgent") else "",
            form=self.phone.nav.message("whisper_form", form=self.runtime.domain.label("category", form)) if form else "",
        )

    def prompt_audio(self, name: str) -> Response:
        # A sentence named by the last webhook may still be being made: wait for it (only names
        # with a pending file are waited for; anything else is 404 at once).
        path = self.runtime.voice.await_file(name, PROMPT_WAIT_SECONDS)
        if path is None:
            return Response("no such audio", status=404, mimetype="text/plain")
        return send_file(path, mimetype="audio/wav", max_age=86400)

    def status(self) -> Response:
        state = (request.form.get("CallStatus") or "").lower()
        if state in {"completed", "busy", "no-answer", "failed", "canceled"}:
            self.phone.calls.end(self._call_sid(), state)
            self.phone.forget(self._call_sid())
        return Response(status=204)


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: str  # a VoiceWebhooks method; also the endpoint name
    safe: bool = True  # a failure answers apologetic TwiML (not for audio files and status pings)


ROUTES: tuple[Route, ...] = (
    Route("POST", BASE, "incoming"),
    Route("POST", f"{BASE}/gather", "gather"),
    Route("POST", f"{BASE}/after-stream", "after_stream"),
    Route("POST", f"{BASE}/dial-done", "dial_done"),
    Route("POST", f"{BASE}/whisper", "whisper"),
    Route("GET", f"{TTS_PATH}/<name>", "prompt_audio", safe=False),
    Route("POST", f"{BASE}/status", "status", safe=False),
)


def make_blueprint(runtime: ChannelRuntime) -> Blueprint:
    hooks = VoiceWebhooks(runtime)
    bp = Blueprint(NAME, __name__)
    bp.before_request(hooks.check_signature)
    for route in ROUTES:
        view = getattr(hooks, route.handler)
        bp.add_url_rule(route.path, endpoint=route.handler, view_func=hooks.safe(view) if route.safe else view,
                        methods=[route.method])
    return bp


__all__: Sequence[str] = ("make_blueprint", "TwimlRenderer", "VoiceWebhooks", "ROUTES")
