"""Department side of the ticket loop: a JSON API to list, accept, start, resolve (with a photo
and a note), reject, route and reopen tickets. The resident gets an SMS at each public step.

Who may call it: a staff member, with the session token from `POST /staff/api/login` (the console
accounts, lockout and rate limits); every ticket they list, read or act on is filtered by their
role in SQL (a department handler: their department's tickets; a grid worker: their grid's; admin:
all). An integration with the whole city's tickets may instead use the one bearer token in env
STAFF_API_TOKEN, which acts as admin (`X-Staff-Name` then names the person for the event rows).

POST /staff/api/login   {"username", "password"}                → {"token", "expires_in_hours"}

GET  /staff/api/tickets?status=routed&department=…&triage=1   list (no personal data)
GET  /staff/api/tickets/<ref>                                 one ticket with description,
                                                              place, contact, history (audited read)
POST /staff/api/tickets/<ref>/<action>                        action ∈ route accept start
     JSON {"note": "…", "department": "…"} or multipart        resolve reject reopen close
     (note, department, photo=<file>)

Error details are API strings for staff tools and integrators, in English.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Blueprint, g, jsonify, request

from backend.tickets import TicketView, TransitionError, status_label
from backend.tickets.media import MediaError
from channels.boundary import int_arg, safe_equal
from channels.open311 import media_links
from channels.routes import Route, register
from channels.runtime_port import ChannelRuntime

NAME = "staff_api"
ACTIONS = {"route", "accept", "start", "resolve", "reject", "reopen", "close"}
_NAME_RE = re.compile(r"^[\w\u4e00-\u9fff.-]{1,40}$")


def _error(code: str, detail: str, status: int):
    return jsonify({"error": code, "detail": detail}), status


def ticket_json(view: TicketView, media_path: Callable[[str], Path | None], media_link: Callable[[str], str],
                *, private: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "reference": view.reference, "status": view.status, "status_label": status_label(view.status),
        "service_code": view.service_code, "category": view.category_name, "department": view.department,
        "place": view.place, "lat": view.latitude, "long": view.longitude, "channel": view.channel,
        "created_at": view.created_at.isoformat(), "updated_at": view.updated_at.isoformat(),
        "status_note": view.status_note, "rating": view.rating, "duplicate_of": view.duplicate_of,
        "media": [{"sha256": sha, "role": role, "url": media_link(path.name)}
                  for sha, role in view.media if (path := media_path(sha)) is not None],
    }
    if private:
        out["private"] = dict(view.private)
        out["events"] = [{"from": f, "to": t, "actor": a, "at": at.isoformat()} for f, t, a, at in view.events]
    return out


class StaffApi:
    """The department ticket API: a bearer token in, the ticket desk's answers out as JSON."""

    def __init__(self, runtime: ChannelRuntime) -> None:
        self.desk = runtime.ticket_loop.desk
        self.staff = runtime.staff
        self.links = media_links(runtime)  # photos are served only through signed, expiring links
        self.token = runtime.settings.env.get("STAFF_API_TOKEN") or ""
        self.photo_limit = self.desk.media.policy.max_bytes + 64 * 1024

    def authorise(self):
        request.max_content_length = self.photo_limit  # a fix photo is bigger than the app's 1 MB webhook cap
        if request.endpoint == f"{NAME}.login":
            return None
        given = request.headers.get("Authorization", "")
        bearer = given[7:] if given.startswith("Bearer ") else ""
        if self.token and bearer and safe_equal(bearer, self.token):
            g.staff = None  # the integration token: admin, unscoped
            return None
        active = self.staff.directory.session(bearer) if bearer else None
        if active is None or not self.staff.queries.allows(active.staff, "tickets"):
            return _error("forbidden", "staff token missing, expired or without access to tickets", 403)
        g.staff = active.staff
        return None

    def actor(self) -> str:
        if g.staff is not None:
            return g.staff.actor
        name = request.headers.get("X-Staff-Name", "").strip()
        return f"staff:{name}" if _NAME_RE.match(name) else "staff:api"

    def visible(self, reference: str) -> bool:
        return g.staff is None or self.staff.queries.can_see_ticket(g.staff, reference)

    def json(self, view: TicketView, *, private: bool = False) -> dict[str, Any]:
        return ticket_json(view, self.desk.media.find, self.links.path, private=private)

    def login(self):
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not all(isinstance(body.get(k), str) for k in ("username", "password")):
            return _error("invalid_json", "body must be {\"username\": …, \"password\": …}", 400)
        directory = self.staff.directory
        result = directory.authenticate(body["username"], body["password"], request.remote_addr or "")
        if result.outcome != "ok":
            status = {"locked": 423, "throttled": 429}.get(result.outcome, 403)
            return _error(result.outcome, "login refused", status)
        return jsonify({"token": result.session_token, "expires_in_hours": directory.policy.session_max_hours})

    def list_tickets(self):
        status = [s for s in request.args.get("status", "").split(",") if s]
        # The role's scope is the same SQL predicate the console uses, inside the one query.
        scope = self.staff.queries.ticket_scope(g.staff) if g.staff is not None else None
        views = self.desk.search(status=status or None, department=request.args.get("department") or None,
                                 triage=request.args.get("triage") == "1",
                                 limit=int_arg(request.args, "limit", 100, 1, 500), scope=scope)
        return jsonify([self.json(v) for v in views])

    def get_ticket(self, reference: str):
        if not self.visible(reference):  # outside the role's scope: as if it did not exist
            return _error("not_found", f"no ticket {reference}", 404)
        view = self.desk.view(reference, actor=self.actor())
        if view is None:
            return _error("not_found", f"no ticket {reference}", 404)
        return jsonify(self.json(view, private=True))

    def act(self, reference: str, action: str):
        if action not in ACTIONS:
            return _error("unknown_action", f"action must be one of {sorted(ACTIONS)}", 404)
        if not self.visible(reference):
            return _error("not_found", f"no ticket {reference}", 404)
        if request.is_json:
            body = request.get_json(silent=True)
            if not isinstance(body, dict):
                return _error("invalid_json", "body must be a JSON object", 400)
            photo = None
        else:
            body = request.form.to_dict()
            upload = request.files.get("photo")
            photo = upload.read() if upload else None
        note = body.get("note")
        department = body.get("department")
        if note is not None and (not isinstance(note, str) or len(note) > 500):
            return _error("invalid_note", "note must be text of at most 500 characters", 400)
        if department is not None and (not isinstance(department, str) or not 0 < len(department) <= 64):
            return _error("invalid_department", "department must be 1–64 characters", 400)
        try:
            view = self.desk.staff_action(reference, action, self.actor(), note=note, department=department,
                                          photo=photo)
        except LookupError:
            return _error("not_found", f"no ticket {reference}", 404)
        except TransitionError as exc:
            return _error("invalid_transition", str(exc), 409)
        except MediaError as exc:
            return _error("invalid_photo", exc.code, 413 if exc.code == "too_large" else 415)
        except ValueError as exc:
            return _error("invalid_request", str(exc), 400)
        return jsonify(self.json(view))


ROUTES: list[Route] = [
    ("POST", "/login", StaffApi.login),
    ("GET", "/tickets", StaffApi.list_tickets),
    ("GET", "/tickets/<reference>", StaffApi.get_ticket),
    ("POST", "/tickets/<reference>/<action>", StaffApi.act),
]


def make_blueprint(runtime: ChannelRuntime) -> Blueprint:
    api = StaffApi(runtime)
    bp = Blueprint(NAME, __name__, url_prefix="/staff/api")
    bp.before_request(api.authorise)  # every route but login needs a staff token
    return register(bp, ROUTES, api)
