"""Flask application factory: one blueprint per channel, registered from one table."""
from __future__ import annotations

import logging
from collections.abc import Callable

from flask import Blueprint, Flask, jsonify
from werkzeug.exceptions import HTTPException

from channels import console, kiosk, open311, ops, rest, sensors, staff_api, staff_console, twilio_sms, twilio_voice

log = logging.getLogger(__name__)

# Add a channel: write channels/<name>.py with make_blueprint(runtime), list it here.
CHANNELS: list[Callable[..., Blueprint]] = [
    rest.make_blueprint, twilio_voice.make_blueprint, kiosk.make_blueprint,
    twilio_sms.make_blueprint, staff_api.make_blueprint, staff_console.make_blueprint, open311.make_blueprint,
    sensors.make_blueprint, console.make_blueprint,
]


def create_app(runtime) -> Flask:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = 1 * 1024 * 1024  # webhooks are small; media is fetched, not posted
    app.json.ensure_ascii = False
    app.extensions["runtime"] = runtime
    # First, so its request hooks (request id, timing) run before any channel's: /healthz, /readyz, /metrics.
    app.register_blueprint(ops.make_blueprint(runtime))
    for make in CHANNELS:
        app.register_blueprint(make(runtime))

    @app.get("/")
    def index():
        return jsonify({"service": "community-assistant",
                        "channels": [name for name in app.blueprints if name != ops.NAME]})

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return jsonify({"error": exc.name.lower().replace(" ", "_"), "detail": exc.description}), exc.code

    @app.errorhandler(Exception)
    def crash(exc: Exception):
        log.exception("unhandled error")
        return jsonify({"error": "internal_error", "detail": "系统出了点问题，请稍后再试，或拨打社区电话。"}), 500

    return app
