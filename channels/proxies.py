"""Client addresses behind reverse proxies.

Without configuration X-Forwarded-For is ignored: anyone can send that header, and trusting it
would let one client pose as many (escaping the console's per-source login limit) or as another
(getting it throttled). With TRUSTED_PROXIES=N (the number of proxies in front of the app that
append to X-Forwarded-For, e.g. 1 for a single nginx) werkzeug's ProxyFix takes the client
address and scheme from the N-th entry from the right, the one the nearest trusted proxy wrote.
"""
from __future__ import annotations

from collections.abc import Mapping

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

ENV_NAME = "TRUSTED_PROXIES"


def trusted_proxy_hops(env: Mapping[str, str]) -> int:
    """TRUSTED_PROXIES as a number of hops; unset or empty is 0 (no proxy trusted)."""
    value = (env.get(ENV_NAME) or "").strip()
    if not value:
        return 0
    if not value.isdigit():
        raise ValueError(f"{ENV_NAME} must be the number of trusted proxy hops (0, 1, 2 …), not {value!r}")
    return int(value)


def apply_trusted_proxies(app: Flask, hops: int) -> Flask:
    """Wraps the WSGI app in ProxyFix for `hops` trusted proxies (X-Forwarded-For and
    X-Forwarded-Proto); hops 0 leaves the app as it is. Host and prefix headers are left alone:
    proxies pass Host through, and a forged one must not change signed webhook URLs."""
    if hops < 0:
        raise ValueError("trusted proxy hops cannot be negative")
    if hops:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=0, x_port=0, x_prefix=0)  # type: ignore[method-assign]
    return app
