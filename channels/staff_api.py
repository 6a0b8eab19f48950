"""Department side of the ticket loop: a JSON API to list, accept, start, resolve (with a photo
and a note), reject, route and reopen tickets. The resident gets an SMS at each public step.

Protected for now by one bearer token (env STAFF_API_TOKEN; unset → the API is off, 403); a
later issue brings staff roles and login. `X-Staff-Name` names the person for the event rows.

GET  /staff/api/tickets?status=routed&department=…&triage=1   list (no personal data)
GET  /staff/api/tickets/<ref>                                 one ticket with description,
                                                              place, contact, history (audited read)
POST /staff/api/tickets/<ref>/<action>                        action ∈ route accept start
     JSON {"note": "…", "department": "…"} or multipart        resolve reject reopen close
     (note, department, photo=<file>)
"""
from __future__ import annotations

import hmac
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Blueprint, jsonify, request

from backend.media import MediaError
from backend.tickets import TicketView, TransitionError, status_label
from runtime.ticket_loop import ticket_loop_for

NAME = "staff_api"
ACTIONS = {"route", "accept", "start", "resolve", "reject", "reopen", "close"}
_NAME_RE = re.compile(r"^[\w\u4e00-\u9fff.-]{1,40}$")


def _error(code: str, detail: str, status: int):
    return jsonify({"error": code, "detail": detail}), status


def ticket_json(view: TicketView, media_path: Callable[[str], Path | None], *, private: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "reference": view.reference, "status": view.status, "status_label": status_label(view.status),
        "service_code": view.service_code, "category": view.category_name, "department": view.department,
        "place": view.place, "lat": view.latitude, "long": view.longitude, "channel": view.channel,
        "created_at": view.created_at.isoformat(), "updated_at": view.updated_at.isoformat(),
        "status_note": view.status_note, "rating": view.rating, "duplicate_of": view.duplicate_of,
        "media": [{"sha256": sha, "role": role, "url": f"/open311/media/{path.name}"}
                  for sha, role in view.media if (path := media_path(sha)) is not None],
    }
    if private:
        out["private"] = dict(view.private)
        out["events"] = [{"from": f, "to": t, "actor": a, "at": at.isoformat()} for f, t, a, at in view.events]
    return out


def make_blueprint(runtime: Any) -> Blueprint:
    bp = Blueprint(NAME, __name__, url_prefix="/staff/api")
    desk = ticket_loop_for(runtime).desk
    token = runtime.settings.env.get("STAFF_API_TOKEN") or ""

    photo_limit = desk.media.policy.max_bytes + 64 * 1024

    @bp.before_request
    def authorise():
        request.max_content_length = photo_limit  # a fix photo is bigger than the app's 1 MB webhook cap
        given = request.headers.get("Authorization", "")
        if not token or not given.startswith("Bearer ") or not hmac.compare_digest(given[7:], token):
            return _error("forbidden", "staff token missing or wrong", 403)
        return None

    def actor() -> str:
        name = request.headers.get("X-Staff-Name", "").strip()
        return f"staff:{name}" if _NAME_RE.match(name) else "staff:api"

    @bp.get("/tickets")
    def list_tickets():
        status = [s for s in request.args.get("status", "").split(",") if s]
        views = desk.search(status=status or None, department=request.args.get("department") or None,
                          triage=request.args.get("triage") == "1",
                          limit=min(500, int(request.args.get("limit", "100") or 100)))
        return jsonify([ticket_json(v, desk.media.find) for v in views])

    @bp.get("/tickets/<reference>")
    def get_ticket(reference: str):
        view = desk.view(reference, actor=actor())
        if view is None:
            return _error("not_found", f"no ticket {reference}", 404)
        return jsonify(ticket_json(view, desk.media.find, private=True))

    @bp.post("/tickets/<reference>/<action>")
    def act(reference: str, action: str):
        if action not in ACTIONS:
            return _error("unknown_action", f"action must be one of {sorted(ACTIONS)}", 404)
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
            view = desk.staff_action(reference, action, actor(), note=note, department=department, photo=photo)
        except LookupError:
            return _error("not_found", f"no ticket {reference}", 404)
        except TransitionError as exc:
            return _error("invalid_transition", str(exc), 409)
        except MediaError as exc:
            return _error("invalid_photo", exc.code, 413 if exc.code == "too_large" else 415)
        except ValueError as exc:
            return _error("invalid_request", str(exc), 400)
        return jsonify(ticket_json(view, desk.media.find))

    return bp
