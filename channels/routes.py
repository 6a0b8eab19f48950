"""How a channel module lists its routes: one table of (methods, rule, handler) rows, registered
by `register` on the module's blueprint. Handlers are methods of a small class holding what the
channel needs of the runtime; the method's name is the endpoint (what `url_for` and the request
hooks see), so a route is found by reading one table."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from flask import Blueprint

# ("GET" | "POST" | "GET,POST", "/rule/<param>", Handlers.method)
Route = tuple[str, str, Callable[..., Any]]


def register(bp: Blueprint, routes: Iterable[Route], handlers: object) -> Blueprint:
    for methods, rule, handler in routes:
        name = handler.__name__
        bp.add_url_rule(rule, endpoint=name, view_func=getattr(handlers, name), methods=methods.split(","))
    return bp
