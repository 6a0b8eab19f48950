"""Flask application factory: one blueprint per channel, registered from one table."""
from __future__ import annotations

import logging
from collections.abc import Callable

from flask import Blueprint, Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from channels import (
    boundary,
    department_page,
    kiosk,
    open311,
    openapi,
    ops,
    rest,
    sensors,
    staff_api,
    staff_console,
    twilio_outreach,
    twilio_sms,
    twilio_voice,
)
from channels.proxies import apply_trusted_proxies, trusted_proxy_hops
from channels.runtime_port import ChannelRuntime

log = logging.getLogger(__name__)

# Add a channel: write channels/<name>.py with make_blueprint(runtime), list it here.
CHANNELS: list[Callable[..., Blueprint]] = [
    rest.make_blueprint, twilio_voice.make_blueprint, kiosk.make_blueprint,
    twilio_sms.make_blueprint, staff_api.make_blueprint, department_page.make_blueprint, open311.make_blueprint,
    sensors.make_blueprint, staff_console.make_blueprint, twilio_outreach.make_blueprint,
]

# The page a person sees who opens the server's address in a browser: where to go next.
INDEX_HTML = """<!doctype html>
<html lang="zh-CN">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>社区服务助手</title>
<style>
  body { font-family: "Noto Sans CJK SC", sans-serif; font-size: 28px; line-height: 1.6;
         max-width: 40em; margin: 2em auto; padding: 0 1em; color: #111; background: #fff; }
  h1 { font-size: 40px; }
  a { display: block; margin: 0.6em 0; padding: 0.6em 1em; border: 3px solid #0b57d0;
      border-radius: 12px; color: #0b57d0; text-decoration: none; font-size: 32px; }
  a:focus, a:hover { background: #0b57d0; color: #fff; }
</style>
</head>
<body>
<h1>社区服务助手</h1>
<p>您好！请选择要去的地方：</p>
<a href="/kiosk">居民服务：办证、订饭、报修、查进度</a>
<a href="/console">工作人员后台</a>
<p>需要帮助，请找服务中心的工作人员。</p>
</body>
</html>
"""

# Bilingual details for the refusals a person or integrator meets most; others keep werkzeug's text.
DETAILS = {
    RequestEntityTooLarge.code: "内容太大了，请分几次发送。 / request body too large",
}


def create_app(runtime: ChannelRuntime) -> Flask:
    app = Flask(__name__)
    boundary.install(app)  # the one input boundary, before any channel sees a request
    app.config["MAX_CONTENT_LENGTH"] = 1 * 1024 * 1024  # webhooks are small; media is fetched, not posted
    app.json.ensure_ascii = False
    app.extensions["runtime"] = runtime
    # First, so its request hooks (request id, timing) run before any channel's: /healthz, /readyz, /metrics.
    app.register_blueprint(ops.make_blueprint(runtime))
    for make in CHANNELS:
        app.register_blueprint(make(runtime))

    @app.get("/")
    def index():
        # A browser gets the page; API clients (curl's */*, Accept: application/json) get JSON.
        if request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html":
            return Response(INDEX_HTML, mimetype="text/html")
        return jsonify({"service": "community-assistant", "openapi": "/openapi.json",
                        "channels": [name for name in app.blueprints if name != ops.NAME]})

    @app.get("/openapi.json")
    def openapi_json():
        return jsonify(openapi.describe())

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        error = getattr(exc, "error", None) or (exc.name or "error").lower().replace(" ", "_")
        return jsonify({"error": error, "detail": DETAILS.get(exc.code, exc.description)}), exc.code

    @app.errorhandler(Exception)
    def crash(exc: Exception):
        log.exception("unhandled error")
        return jsonify({"error": "internal_error", "detail": "系统出了点问题，请稍后再试，或拨打社区电话。"}), 500

    # Behind the README's reverse proxy, the throttle must count the caller, not the proxy.
    return apply_trusted_proxies(app, trusted_proxy_hops(runtime.settings.env))
