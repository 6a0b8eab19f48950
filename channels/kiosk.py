"""Kiosk channel: the touch-screen page in the service centre (kiosk/), and its JSON API.

GET  /kiosk                         the page (big type, big buttons, hold-to-talk, 一键呼叫)
POST /kiosk/api/turn    {"session", "text"}        → {"replies": [...], "expects", "handoff", …}
POST /kiosk/api/speech?session=…   body: WAV       → the same, plus "heard" (what was recognised)
POST /kiosk/api/reset   {"session"}                → the conversation is forgotten (shared device)
GET  /kiosk/api/tts/<name>.wav                     spoken replies, when a local voice is configured

The page records 16 kHz mono WAV itself, so the server never needs a browser codec. A reply is
spoken sentence by sentence (`audio_urls`): the answer does not wait for Kokoro; the sentences not
cached yet are made in the background, in order, and the GET for each waits for its file.
Every sentence the page shows comes from domain.yml, picked by response name (RESPONSES).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, jsonify, request, send_from_directory

from assistant.dialogue.domain import fill
from assistant.types import Button, Reply, UserMessage
from assistant.voice.audio import AudioError, load_for_asr
from assistant.voice.phrases import answer_expectation, heard_answer
from channels.routes import Route, register
from channels.runtime_port import ChannelRuntime

log = logging.getLogger(__name__)

NAME = "kiosk"
CHANNEL = "kiosk"
PAGE_DIR = Path(__file__).resolve().parent.parent / "kiosk"
PAGE_FILES = {"kiosk.js", "kiosk.css"}
SESSION = re.compile(r"^[0-9a-f]{16,64}$")
# What runtime.voice names a sentence: a hex digest and ".wav". Anything else cannot exist, and a
# 5000-character name was an OSError (file name too long) while looking for it.
TTS_NAME = re.compile(r"^[0-9a-zA-Z_-]{1,128}\.wav$")
MAX_TEXT = 500
MAX_AUDIO_BYTES = 4 * 1024 * 1024  # ~2 minutes of 16 kHz PCM: longer is not one utterance
TTS_URL = "/kiosk/api/tts/"
TTS_WAIT_SECONDS = 10.0  # a sentence takes Kokoro a few seconds; far longer means it is stuck
SESSION_DETAIL = "'session' must be 16–64 hex characters"

# The domain.yml responses this channel says itself (checked at start-up: a missing one refuses
# to start instead of answering 500 to a resident).
RESPONSES = {
    "utter_kiosk_no_speech": "the recogniser heard nothing",
    "utter_kiosk_did_you_say": "a low-confidence hearing is read back",
    "utter_kiosk_asr_unavailable": "no recogniser is configured",
    "utter_kiosk_audio_missing": "an empty or oversized recording",
    "utter_kiosk_audio_unreadable": "a recording that is not WAV",
    "utter_kiosk_asr_timeout": "the recogniser is too busy",
    "utter_message_too_long": "a text over MAX_TEXT characters",
}


def _error(code: str, detail: str, status: int = 400):
    return jsonify({"error": code, "detail": detail}), status


def session_id(value: Any) -> str | None:
    return value if isinstance(value, str) and SESSION.match(value) else None


class Kiosk:
    """The kiosk's handlers over the runtime: wire format in, a turn, wire format out."""

    def __init__(self, runtime: ChannelRuntime) -> None:
        self.runtime = runtime
        self.assistant = runtime.assistant

    # --- sentences and rendering ----------------------------------------------------------------
    def sentence(self, name: str, **values: Any) -> Reply:
        """A domain.yml response as a reply; its button payloads are filled from the same values."""
        rendered = self.runtime.domain.render(name, values)
        buttons = tuple(Button(b.title, fill(b.payload, values)) for b in rendered.buttons)
        return Reply(rendered.text, buttons=buttons, speech=rendered.speech, name=name)

    def refusal(self, code: str, name: str, status: int):
        return _error(code, self.sentence(name).text, status)

    def render(self, replies: list[Reply] | tuple[Reply, ...], heard: str | None = None) -> dict[str, Any]:
        last = replies[-1]
        urls = self.spoken_urls("".join(r.speech or r.text for r in replies))
        return {
            "replies": [{"text": r.text, "buttons": [{"title": b.title, "payload": b.payload} for b in r.buttons]}
                        for r in replies],
            "expects": last.expects,
            "handoff": any(r.handoff for r in replies),
            "urgent": any(r.urgent for r in replies),
            "end_session": last.end_session,
            "heard": heard,
            "audio_urls": urls,
            "audio_url": urls[0] if urls else None,  # the first sentence: pages before audio_urls
        }

    def spoken_urls(self, text: str) -> list[str]:
        """One URL per sentence (a long one cut between clauses), named before the audio exists:
        the text is shown at once and the page speaks as soon as the first is made."""
        names: list[str] = []
        try:
            for piece in self.runtime.voice.pieces(text):  # sentences; a long one cut between clauses
                name = self.runtime.voice.prepare(piece)
                if name is None:
                    break  # no local voice: the text on screen is the reply
                names.append(name)
        except Exception:  # the text is on screen anyway; a silent reply beats a failed one
            log.warning("kiosk TTS failed; replying with what could be said", exc_info=True)
        return [f"{TTS_URL}{name}" for name in names]

    def turn(self, session: str, text: str, heard: str | None = None):
        replies = self.assistant.handle(UserMessage(sender_id=session, text=text, channel=CHANNEL))
        return jsonify(self.render(replies, heard))

    # --- routes ---------------------------------------------------------------------------------
    def page(self) -> Response:
        response = send_from_directory(PAGE_DIR, "index.html")
        response.headers["Cache-Control"] = "no-store"  # a shared screen keeps nothing
        return response

    def static(self, name: str) -> Response:
        if name not in PAGE_FILES:
            return _error("not_found", "no such file", 404)
        return send_from_directory(PAGE_DIR, name)

    def text_turn(self):
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return _error("invalid_json", "body must be a JSON object")
        session, text = session_id(body.get("session")), body.get("text")
        if session is None:
            return _error("invalid_session", SESSION_DETAIL)
        if not isinstance(text, str):
            return _error("invalid_text", f"'text' must be a string of at most {MAX_TEXT} characters")
        if len(text) > MAX_TEXT:
            # The page shows `detail` of a refused request; API clients get the usual reply shape.
            too_long = self.sentence("utter_message_too_long")
            return jsonify({"error": "message_too_long", "detail": too_long.text, **self.render([too_long])}), 413
        return self.turn(session, text)

    def speech_turn(self):
        session = session_id(request.args.get("session"))
        if session is None:
            return _error("invalid_session", SESSION_DETAIL)
        voice = self.runtime.voice
        if voice.pool is None:
            return self.refusal("asr_unavailable", "utter_kiosk_asr_unavailable", 503)
        data = request.get_data(cache=False)
        if not data or len(data) > MAX_AUDIO_BYTES:
            return self.refusal("invalid_audio", "utter_kiosk_audio_missing", 413 if data else 400)
        try:
            audio = load_for_asr(data)
        except AudioError:
            return self.refusal("invalid_audio", "utter_kiosk_audio_unreadable", 400)
        expects = self.assistant.status(CHANNEL, session).answer_kind
        try:
            transcript = voice.pool.transcribe(audio, answer_expectation(expects),
                                               timeout=voice.config.decode_timeout_seconds)
        except TimeoutError:
            return self.refusal("asr_timeout", "utter_kiosk_asr_timeout", 503)
        log.info("kiosk heard %.1f s audio, confidence %.2f, rtf %.2f", transcript.audio_seconds,
                 transcript.confidence, transcript.real_time_factor)
        if transcript.no_speech or not transcript.core_text.strip():
            return jsonify(self.render([self.sentence("utter_kiosk_no_speech")], heard=""))
        text, confidence = heard_answer(transcript, voice.config.closed_set_min_confidence)
        if confidence < voice.config.min_confidence:
            question = self.sentence("utter_kiosk_did_you_say", heard=transcript.text, answer=text)
            return jsonify(self.render([question], heard=transcript.text))
        return self.turn(session, text, heard=transcript.text)

    def reset(self):
        body = request.get_json(silent=True) or {}
        session = session_id(body.get("session")) if isinstance(body, dict) else None
        if session is None:
            return _error("invalid_session", SESSION_DETAIL)
        self.assistant.reset(CHANNEL, session)
        return jsonify({"ok": True})

    def tts(self, name: str):
        # Only a sentence being made is waited for; any other name is 404 at once.
        if not TTS_NAME.match(name):
            return _error("not_found", "no such audio", 404)
        path = self.runtime.voice.await_file(name, TTS_WAIT_SECONDS)
        if path is None:
            return _error("not_found", "no such audio", 404)
        return send_from_directory(path.parent, path.name, mimetype="audio/wav")


ROUTES: list[Route] = [
    ("GET", "/kiosk", Kiosk.page),
    ("GET", "/kiosk/static/<path:name>", Kiosk.static),
    ("POST", "/kiosk/api/turn", Kiosk.text_turn),
    ("POST", "/kiosk/api/speech", Kiosk.speech_turn),
    ("POST", "/kiosk/api/reset", Kiosk.reset),
    ("GET", f"{TTS_URL}<name>", Kiosk.tts),
]


def make_blueprint(runtime: ChannelRuntime) -> Blueprint:
    runtime.domain.require(RESPONSES)
    return register(Blueprint(NAME, __name__), ROUTES, Kiosk(runtime))
