"""REST channel with Rasa's contract.

POST /webhooks/rest/webhook  {"sender": "...", "message": "..."}
  → [{"recipient_id": "...", "text": "...", "buttons": [{"title", "payload"}]}, ...]
POST /model/parse  {"text": "..."} → Rasa's parse result (intent, entities, intent_ranking)
Bad bodies get a 400 with a JSON error that says what is wrong, never a stack trace. A message
over MAX_MESSAGE_CHARS is a person who typed or pasted too much: 413 with a reply in Rasa's format
that asks them, in Chinese, to send it in parts or ask for a person (domain.yml
`utter_message_too_long`). The other error details are API strings for integrators, in English.
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request

from assistant.types import Reply, UserMessage
from channels.routes import Route, register
from channels.runtime_port import ChannelRuntime

NAME = "rest"
MAX_MESSAGE_CHARS = 2000
MAX_SENDER_CHARS = 128
TOO_LONG = "utter_message_too_long"  # the domain.yml response for a message over the limit


def _error(code: str, detail: str, status: int = 400):
    return jsonify({"error": code, "detail": detail}), status


def _json_body() -> tuple[dict[str, Any] | None, Any]:
    if not request.is_json:
        return None, _error("unsupported_media_type", "Content-Type must be application/json", 415)
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return None, _error("invalid_json", "body must be a JSON object")
    return body, None


def render(reply: Reply, recipient_id: str) -> dict[str, Any]:
    out: dict[str, Any] = {"recipient_id": recipient_id, "text": reply.text}
    if reply.buttons:
        out["buttons"] = [{"title": b.title, "payload": b.payload} for b in reply.buttons]
    custom = {k: v for k, v in (("handoff", reply.handoff), ("urgent", reply.urgent),
                                ("end_session", reply.end_session)) if v}
    if reply.expects:
        custom["expects"] = reply.expects
    if custom:
        out["custom"] = custom
    return out


class Rest:
    """Rasa's REST contract over the assistant."""

    def __init__(self, runtime: ChannelRuntime) -> None:
        self.assistant, self.domain = runtime.assistant, runtime.domain

    def too_long(self) -> Reply:
        rendered = self.domain.render(TOO_LONG)
        return Reply(rendered.text, buttons=rendered.buttons, name=TOO_LONG)

    def webhook(self):
        body, error = _json_body()
        if error:
            return error
        sender, message = body.get("sender"), body.get("message")
        if not isinstance(sender, str) or not sender.strip():
            return _error("invalid_sender", "'sender' must be a non-empty string")
        if len(sender) > MAX_SENDER_CHARS:
            return _error("invalid_sender", f"'sender' is longer than {MAX_SENDER_CHARS} characters")
        if not isinstance(message, str):
            return _error("invalid_message", "'message' must be a string")
        if len(message) > MAX_MESSAGE_CHARS:
            return jsonify([render(self.too_long(), sender)]), 413
        replies = self.assistant.handle(UserMessage(sender_id=sender.strip(), text=message, channel=NAME))
        return jsonify([render(r, sender) for r in replies])

    def parse(self):
        body, error = _json_body()
        if error:
            return error
        text = body.get("text")
        if not isinstance(text, str):
            return _error("invalid_text", "'text' must be a string")
        if len(text) > MAX_MESSAGE_CHARS:
            return _error("message_too_long",
                          f"'text' is longer than {MAX_MESSAGE_CHARS} characters / {self.too_long().text}", 413)
        return jsonify(self.assistant.parse(text).to_rasa())


ROUTES: list[Route] = [
    ("POST", "/webhooks/rest/webhook", Rest.webhook),
    ("POST", "/model/parse", Rest.parse),
]


def make_blueprint(runtime: ChannelRuntime) -> Blueprint:
    runtime.domain.require({TOO_LONG: "a REST message over MAX_MESSAGE_CHARS"})
    return register(Blueprint(NAME, __name__), ROUTES, Rest(runtime))
