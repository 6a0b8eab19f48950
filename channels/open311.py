"""Open311 GeoReport v2, so existing city tools can read and file tickets.

GET  /open311/v2/services.json              the taxonomy (config.yml tickets.taxonomy)
GET  /open311/v2/requests.json              service_request_id, service_code, start_date,
                                            end_date, status (open|closed) filters
GET  /open311/v2/requests/<id>.json
POST /open311/v2/requests.json              api_key (env OPEN311_API_KEYS, comma-separated),
                                            service_code, lat + long or address_string,
                                            description, phone, media_url (ignored: we fetch
                                            photos only from the SMS provider)
GET  /open311/media/<sha256>.<ext>?expires=…&sig=…
                                            a stored photo (EXIF stripped), only through the signed
                                            link that media_url carries (15 minutes)

Public answers carry no personal data: `description` is given only for requests filed through
Open311 itself (residents' SMS texts stay private), `address` is the coarse public place. A photo
can still show a face, a door number or a car plate, so it is never a public, permanent file:
media_url is signed with a key from the key store (HMAC-SM3, separate purpose) and expires;
a link without a valid signature, or expired, is refused (403) and says nothing about the photo.
Errors follow the spec: a list of {"code", "description"} with the HTTP status; their
descriptions are API strings for city tools, in English.
"""
from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from flask import Blueprint, jsonify, request, send_file

from backend.infra.crypto import hmac_sm3_hex
from backend.infra.models import STATUSES
from backend.tickets import OPEN_STATUSES, TicketView
from channels.boundary import safe_equal
from channels.routes import Route, register
from channels.runtime_port import ChannelRuntime

NAME = "open311"
# Open311 knows two states; the ticket desk's states map onto them.
# Open311 knows two states: the ticket loop's own open statuses, and the rest.
OPEN = OPEN_STATUSES
CLOSED = frozenset(STATUSES["ticket"]) - OPEN_STATUSES
MAX_DESCRIPTION = 2000
MEDIA_LINK_SECONDS = 15 * 60
_MEDIA_PURPOSE = b"open311_media_url"  # domain separation from the blind indexes on the same key


class MediaLinks:
    """Signed, expiring paths to stored photos: `/open311/media/<name>?expires=<unix>&sig=<hex>`.
    The signature covers the file name and the expiry, so neither can be changed."""

    def __init__(self, key: bytes, clock: Callable[[], datetime], seconds: int = MEDIA_LINK_SECONDS) -> None:
        self._key, self._clock, self.seconds = key, clock, seconds

    def _now(self) -> int:
        return int(self._clock().timestamp())

    def _sign(self, name: str, expires: int) -> str:
        message = _MEDIA_PURPOSE + b"\0" + name.encode("utf-8", "surrogatepass") + b"\0" + str(expires).encode()
        return hmac_sm3_hex(self._key, message)

    def path(self, name: str) -> str:
        expires = self._now() + self.seconds
        return f"/open311/media/{name}?expires={expires}&sig={self._sign(name, expires)}"

    def seconds_left(self, name: str, expires: str | None, sig: str | None) -> int:
        """Seconds the link is still good for; 0 when unsigned, forged, altered or expired."""
        if not expires or not expires.isdigit() or len(expires) > 12 or not sig:
            return 0
        left = int(expires) - self._now()
        if left <= 0 or left > self.seconds:  # also refuses links signed for longer than we sign
            return 0
        return left if safe_equal(sig, self._sign(name, int(expires))) else 0


def media_links(runtime: ChannelRuntime) -> MediaLinks:
    """The signer for a runtime; the staff API links photos the same way."""
    return MediaLinks(runtime.cipher.keys.index_key, runtime.clock)


def _errors(status: int, description: str):
    return jsonify([{"code": status, "description": description}]), status


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError("dates need a time zone (W3C format)")
    return parsed


class Open311:
    """GeoReport v2 over the ticket desk: form fields and query strings in, the spec's JSON out."""

    def __init__(self, runtime: ChannelRuntime) -> None:
        self.loop = runtime.ticket_loop
        self.desk = self.loop.desk
        self.tz = runtime.settings.timezone
        self.keys = [k.strip() for k in (runtime.settings.env.get("OPEN311_API_KEYS") or "").split(",")
                     if k.strip()]
        self.links = media_links(runtime)

    def base_url(self) -> str:
        return self.loop.twilio.public_base_url or request.host_url.rstrip("/")

    def request_json(self, view: TicketView) -> dict[str, Any]:
        desk = self.desk
        photo = next((sha for sha, role in view.media if role == "report"), None)
        path = desk.media.find(photo) if photo else None
        return {
            "service_request_id": view.reference,
            "status": "closed" if view.status in CLOSED else "open",
            "status_notes": view.status_note,
            "service_name": view.category_name,
            "service_code": view.service_code,
            "description": desk.description(view.reference) if view.channel == "open311" else None,
            "agency_responsible": view.department,
            "service_notice": None,
            "requested_datetime": view.created_at.astimezone(self.tz).isoformat(timespec="seconds"),
            "updated_datetime": view.updated_at.astimezone(self.tz).isoformat(timespec="seconds"),
            "expected_datetime": None,
            "address": view.place,
            "address_id": None,
            "zipcode": None,
            "lat": view.latitude,
            "long": view.longitude,
            "media_url": self.base_url() + self.links.path(path.name) if path else None,
        }

    def services(self):
        return jsonify([
            {"service_code": c.code, "service_name": c.name, "description": c.name, "metadata": False,
             "type": "realtime", "keywords": ",".join(c.keywords), "group": c.department or "人工分拣"}
            for c in self.desk.taxonomy.categories
        ])

    def list_requests(self):
        args = request.args
        try:
            since, until = _parse_time(args.get("start_date")), _parse_time(args.get("end_date"))
        except ValueError as exc:
            return _errors(400, f"bad date: {exc}")
        ids = [i for i in (args.get("service_request_id") or "").split(",") if i]
        if ids:
            views = [v for v in (self.desk.view(i) for i in ids[:50]) if v is not None]
        else:
            status = args.get("status")
            if status not in (None, "", "open", "closed"):
                return _errors(400, "status must be open or closed")
            wanted = {"closed": sorted(CLOSED), "open": sorted(OPEN)}.get(status or "")
            views = self.desk.search(status=wanted, service_code=args.get("service_code") or None, since=since,
                                     until=until, limit=1000)
        return jsonify([self.request_json(v) for v in views])

    def one_request(self, reference: str):
        view = self.desk.view(reference)
        if view is None:
            return _errors(404, f"service_request_id {reference} not found")
        return jsonify([self.request_json(view)])

    def create_request(self):
        form = request.form
        key = form.get("api_key") or ""
        if not any(safe_equal(key, k) for k in self.keys):
            return _errors(403, "api_key missing or not valid")
        code = form.get("service_code") or ""
        if self.desk.taxonomy.get(code) is None:
            return _errors(400, "service_code not found")
        try:
            lat = float(form["lat"]) if form.get("lat") else None
            lon = float(form["long"]) if form.get("long") else None
        except ValueError:
            return _errors(400, "lat/long must be numbers")
        address = (form.get("address_string") or "").strip() or None
        if (lat is None or lon is None) and not address:
            return _errors(400, "lat and long, or address_string, is required")
        if lat is not None and lon is not None and not (-90 <= lat <= 90 and -180 <= lon <= 180):
            return _errors(400, "lat/long out of range")
        description = (form.get("description") or "").strip()
        if len(description) > MAX_DESCRIPTION:
            return _errors(400, f"description is longer than {MAX_DESCRIPTION} characters")
        idempotency = request.headers.get("Idempotency-Key") or uuid.uuid4().hex
        reference = self.desk.create_open311(service_code=code, description=description or None, lat=lat,
                                             lon=lon, address=address,
                                             phone=(form.get("phone") or "").strip() or None,
                                             idempotency_key=f"open311:{key[:16]}:{idempotency[:100]}")
        return jsonify([{"service_request_id": reference, "service_notice": "已受理", "account_id": None}]), 201

    def media(self, name: str):
        # Signature first: without one, the answer must not tell whether such a photo exists.
        left = self.links.seconds_left(name, request.args.get("expires"), request.args.get("sig"))
        if not left:
            return _errors(403, "photo links are signed and expire; read the request again for a new media_url")
        sha = name.split(".", 1)[0]
        path = self.desk.media.find(sha)
        if path is None or path.name != name:
            return _errors(404, "no such photo")
        response = send_file(path, max_age=left)
        response.cache_control.public = False
        response.cache_control.private = True  # no shared cache keeps it past the link
        return response


ROUTES: list[Route] = [
    ("GET", "/open311/v2/services.json", Open311.services),
    ("GET", "/open311/v2/requests.json", Open311.list_requests),
    ("GET", "/open311/v2/requests/<reference>.json", Open311.one_request),
    ("POST", "/open311/v2/requests.json", Open311.create_request),
    ("GET", "/open311/media/<name>", Open311.media),
]


def make_blueprint(runtime: ChannelRuntime) -> Blueprint:
    return register(Blueprint(NAME, __name__), ROUTES, Open311(runtime))
