"""Kiosk channel: the touch-screen page in the service centre (kiosk/), and its JSON API.

GET  /kiosk                         the page (big type, big buttons, hold-to-talk, 一键呼叫)
POST /kiosk/api/turn    {"session", "text"}        → {"replies": [...], "expects", "handoff", …}
POST /kiosk/api/speech?session=…   body: WAV       → the same, plus "heard" (what was recognised)
POST /kiosk/api/reset   {"session"}                → the conversation is forgotten (shared device)
GET  /kiosk/api/tts/<name>.wav                     spoken replies, when a local voice is configured

The page records 16 kHz mono WAV itself, so the server never needs a browser codec. A reply is
spoken sentence by sentence (`audio_urls`): the answer does not wait for Kokoro; the sentences not
cached yet are made in the background, in order, and the GET for each waits for its file.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, jsonify, request, send_from_directory

from assistant.types import Button, Reply, UserMessage
from assistant.voice.audio import AudioError, load_for_asr
from assistant.voice.phrases import answer_expectation, heard_answer
from channels.boundary import HUMAN_BUTTON, TOO_LONG_TEXT
from channels.runtime_port import ChannelRuntime

log = logging.getLogger(__name__)

NAME = "kiosk"
CHANNEL = "kiosk"
PAGE_DIR = Path(__file__).resolve().parent.parent / "kiosk"
SESSION = re.compile(r"^[0-9a-f]{16,64}$")
# What runtime.voice names a sentence: a hex digest and ".wav". Anything else cannot exist, and a
# 5000-character name was an OSError (file name too long) while looking for it.
TTS_NAME = re.compile(r"^[0-9a-zA-Z_-]{1,128}\.wav$")
MAX_TEXT = 500
MAX_AUDIO_BYTES = 4 * 1024 * 1024  # ~2 minutes of 16 kHz PCM: longer is not one utterance
TTS_URL = "/kiosk/api/tts/"
TTS_WAIT_SECONDS = 10.0  # a sentence takes Kokoro a few seconds; far longer means it is stuck


def _error(code: str, detail: str, status: int = 400):
    return jsonify({"error": code, "detail": detail}), status


def make_blueprint(runtime: ChannelRuntime) -> Blueprint:
    bp = Blueprint(NAME, __name__)
    assistant = runtime.assistant

    def session_id(value: Any) -> str | None:
        return value if isinstance(value, str) and SESSION.match(value) else None

    def render(replies: list[Reply], heard: str | None = None) -> dict[str, Any]:
        last = replies[-1]
        urls = spoken_urls("".join(r.speech or r.text for r in replies))
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

    def spoken_urls(text: str) -> list[str]:
        """One URL per sentence (a long one cut between clauses), named before the audio exists:
        the text is shown at once and the page speaks as soon as the first is made."""
        names: list[str] = []
        try:
            for piece in runtime.voice.pieces(text):  # sentences; a long one cut between clauses
                name = runtime.voice.prepare(piece)
                if name is None:
                    break  # no local voice: the text on screen is the reply
                names.append(name)
        except Exception:  # the text is on screen anyway; a silent reply beats a failed one
            log.warning("kiosk TTS failed; replying with what could be said", exc_info=True)
        return [f"{TTS_URL}{name}" for name in names]

    def turn(session: str, text: str, heard: str | None = None):
        replies = assistant.handle(UserMessage(sender_id=session, text=text, channel=CHANNEL))
        return jsonify(render(replies, heard))

    @bp.get("/kiosk")
    def page() -> Response:
        response = send_from_directory(PAGE_DIR, "index.html")
        response.headers["Cache-Control"] = "no-store"  # a shared screen keeps nothing
        return response

    @bp.get("/kiosk/static/<path:name>")
    def static(name: str) -> Response:
        if name not in {"kiosk.js", "kiosk.css"}:
            return _error("not_found", "no such file", 404)
        return send_from_directory(PAGE_DIR, name)

    @bp.post("/kiosk/api/turn")
    def text_turn():
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return _error("invalid_json", "body must be a JSON object")
        session, text = session_id(body.get("session")), body.get("text")
        if session is None:
            return _error("invalid_session", "'session' must be 16–64 hex characters")
        if not isinstance(text, str):
            return _error("invalid_text", f"'text' must be a string of at most {MAX_TEXT} characters")
        if len(text) > MAX_TEXT:
            # The page shows `detail` of a refused request; API clients get the usual reply shape.
            too_long = Reply(TOO_LONG_TEXT, buttons=(Button(HUMAN_BUTTON["title"], HUMAN_BUTTON["payload"]),))
            return jsonify({"error": "message_too_long", "detail": TOO_LONG_TEXT, **render([too_long])}), 413
        return turn(session, text)

    @bp.post("/kiosk/api/speech")
    def speech_turn():
        session = session_id(request.args.get("session"))
        if session is None:
            return _error("invalid_session", "'session' must be 16–64 hex characters")
        voice = runtime.voice
        if voice.pool is None:
            return _error("asr_unavailable", "现在听不了说话，请按屏幕上的按钮办理。", 503)
        data = request.get_data(cache=False)
        if not data or len(data) > MAX_AUDIO_BYTES:
            return _error("invalid_audio", "请按住按钮说话，说完再松开。", 413 if data else 400)
        try:
            audio = load_for_asr(data)
        except AudioError:
            return _error("invalid_audio", "这段声音打不开，请再说一次。")
        expects = assistant.status(CHANNEL, session).answer_kind
        try:
            transcript = voice.pool.transcribe(audio, answer_expectation(expects),
                                               timeout=voice.config.decode_timeout_seconds)
        except TimeoutError:
            return _error("asr_timeout", "系统有点忙，请再说一次，或按按钮办理。", 503)
        log.info("kiosk heard %.1f s audio, confidence %.2f, rtf %.2f", transcript.audio_seconds,
                 transcript.confidence, transcript.real_time_factor)
        if transcript.no_speech or not transcript.core_text.strip():
            replies = [Reply("我没听到您说话。请按住按钮，靠近话筒再说一次。")]
            return jsonify(render(replies, heard=""))
        text, confidence = heard_answer(transcript, voice.config.closed_set_min_confidence)
        if confidence < voice.config.min_confidence:
            question = Reply(f"您是说“{transcript.text}”吗？",
                             buttons=(Button("是的", text), Button("不是，重说", "/repeat")))
            return jsonify(render([question], heard=transcript.text))
        return turn(session, text, heard=transcript.text)

    @bp.post("/kiosk/api/reset")
    def reset():
        body = request.get_json(silent=True) or {}
        session = session_id(body.get("session")) if isinstance(body, dict) else None
        if session is None:
            return _error("invalid_session", "'session' must be 16–64 hex characters")
        assistant.reset(CHANNEL, session)
        return jsonify({"ok": True})

    @bp.get(f"{TTS_URL}<name>")
    def tts(name: str):
        # Only a sentence being made is waited for; any other name is 404 at once.
        if not TTS_NAME.match(name):
            return _error("not_found", "no such audio", 404)
        path = runtime.voice.await_file(name, TTS_WAIT_SECONDS)
        if path is None:
            return _error("not_found", "no such audio", 404)
        return send_from_directory(path.parent, path.name, mimetype="audio/wav")

    return bp

