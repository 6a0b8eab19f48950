"""OpenAPI 3 description of the public HTTP API, served at /openapi.json.

Covers what integrators call: the REST channel (Rasa's contract, /model/parse), Open311
GeoReport v2, the staff ticket API and the sensor readings endpoint. Twilio webhooks, the kiosk
page and the consoles are for Twilio and browsers, not integrators, and are left out.
tests/test_schemathesis.py fuzzes the app from this description, so keep it true to the code."""
from __future__ import annotations

from typing import Any

from backend.alerts.desk import MAX_BATCH
from channels import rest, staff_api
from channels.boundary import MAX_JSON_DEPTH

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _open311_error(description: str) -> dict[str, Any]:
    return _json({"type": "array", "items": _ref("Open311Error")}, description)


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {JSON: {"schema": schema}}}


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema or {"type": "string"}}


def _path(name: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema or {"type": "string"}}


SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object", "required": ["error", "detail"],
        "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
    },
    "Button": {
        "type": "object", "required": ["title", "payload"],
        "properties": {"title": {"type": "string"}, "payload": {"type": "string"}},
    },
    "RestReply": {
        "type": "object", "required": ["recipient_id", "text"],
        "properties": {
            "recipient_id": {"type": "string"}, "text": {"type": "string"},
            "buttons": {"type": "array", "items": _ref("Button")},
            "custom": {"type": "object", "description": "handoff, urgent, end_session, expects"},
        },
    },
    "ParseResult": {
        "type": "object", "required": ["text", "intent", "entities", "intent_ranking"],
        "properties": {
            "text": {"type": "string"},
            "intent": {"type": "object", "properties": {"name": {"type": "string"},
                                                         "confidence": {"type": "number"}}},
            "entities": {"type": "array", "items": {"type": "object"}},
            "intent_ranking": {"type": "array", "items": {"type": "object"}},
        },
    },
    "Open311Error": {
        "type": "object", "required": ["code", "description"],
        "properties": {"code": {"type": "integer"}, "description": {"type": "string"}},
    },
    "Open311Service": {
        "type": "object",
        "properties": {k: {"type": t} for k, t in (("service_code", "string"), ("service_name", "string"),
                                                    ("description", "string"), ("metadata", "boolean"),
                                                    ("type", "string"), ("keywords", "string"),
                                                    ("group", "string"))},
    },
    "Open311Request": {
        "type": "object", "required": ["service_request_id", "status"],
        "properties": {
            "service_request_id": {"type": "string"}, "status": {"type": "string", "enum": ["open", "closed"]},
            "status_notes": {"type": ["string", "null"]}, "service_name": {"type": ["string", "null"]},
            "service_code": {"type": ["string", "null"]}, "description": {"type": ["string", "null"]},
            "agency_responsible": {"type": ["string", "null"]}, "requested_datetime": {"type": "string"},
            "updated_datetime": {"type": "string"}, "address": {"type": ["string", "null"]},
            "lat": {"type": ["number", "null"]}, "long": {"type": ["number", "null"]},
            "media_url": {"type": ["string", "null"]},
        },
    },
    "Ticket": {
        "type": "object", "required": ["reference", "status"],
        "properties": {
            "reference": {"type": "string"}, "status": {"type": "string"}, "status_label": {"type": "string"},
            "service_code": {"type": ["string", "null"]}, "category": {"type": ["string", "null"]},
            "department": {"type": ["string", "null"]}, "place": {"type": ["string", "null"]},
            "channel": {"type": ["string", "null"]}, "created_at": {"type": "string"},
            "updated_at": {"type": "string"}, "media": {"type": "array", "items": {"type": "object"}},
            "private": {"type": "object", "description": "only on GET /staff/api/tickets/{reference}"},
            "events": {"type": "array", "items": {"type": "object"}},
        },
    },
    "Reading": {
        "type": "object", "required": ["device", "kind", "value", "ts"],
        "properties": {
            "device": {"type": "string"}, "kind": {"type": "string"}, "value": {"type": "number"},
            "ts": {"type": "string", "format": "date-time"}, "household": {"type": "string"},
        },
    },
}

_STAFF_AUTH = [{"staffToken": []}]


def _rest_paths() -> dict[str, Any]:
    too_long = _json({"type": "array", "items": _ref("RestReply")},
                     f"message over {rest.MAX_MESSAGE_CHARS} characters: a Chinese reply asking to send it in parts")
    common = {"400": _error("body is not a JSON object, a field is missing or of the wrong type, or JSON nested "
                            f"deeper than {MAX_JSON_DEPTH} levels"),
              "415": _error("Content-Type is not application/json")}
    return {
        "/webhooks/rest/webhook": {"post": {
            "summary": "Send a resident's message (Rasa REST channel)", "tags": ["rest"],
            "requestBody": _json_body({
                "type": "object", "required": ["sender", "message"],
                "properties": {"sender": {"type": "string", "minLength": 1, "maxLength": rest.MAX_SENDER_CHARS},
                               "message": {"type": "string", "maxLength": rest.MAX_MESSAGE_CHARS}}}),
            "responses": {"200": _json({"type": "array", "items": _ref("RestReply")}, "the assistant's replies"),
                          "413": too_long, **common},
        }},
        "/model/parse": {"post": {
            "summary": "Parse a text (intent and entities), like Rasa's /model/parse", "tags": ["rest"],
            "requestBody": _json_body({"type": "object", "required": ["text"],
                                       "properties": {"text": {"type": "string",
                                                               "maxLength": rest.MAX_MESSAGE_CHARS}}}),
            "responses": {"200": _json(_ref("ParseResult"), "parse result"),
                          "413": _error("text too long"), **common},
        }},
    }


def _open311_paths() -> dict[str, Any]:
    return {
        "/open311/v2/services.json": {"get": {
            "summary": "Service list (the ticket taxonomy)", "tags": ["open311"],
            "responses": {"200": _json({"type": "array", "items": _ref("Open311Service")}, "services")},
        }},
        "/open311/v2/requests.json": {
            "get": {
                "summary": "Service requests, without personal data", "tags": ["open311"],
                "parameters": [
                    _query("service_request_id", "comma-separated ids (at most 50 are read)"),
                    _query("service_code", "one service code"),
                    _query("start_date", "W3C date-time with time zone", {"type": "string", "format": "date-time"}),
                    _query("end_date", "W3C date-time with time zone", {"type": "string", "format": "date-time"}),
                    _query("status", "open or closed", {"type": "string", "enum": ["open", "closed"]}),
                ],
                "responses": {"200": _json({"type": "array", "items": _ref("Open311Request")}, "requests"),
                              "400": _open311_error("bad date or status")},
            },
            "post": {
                "summary": "File a service request", "tags": ["open311"],
                "requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": {
                    "type": "object", "required": ["api_key", "service_code"],
                    "properties": {
                        "api_key": {"type": "string"}, "service_code": {"type": "string"},
                        "lat": {"type": "number", "minimum": -90, "maximum": 90},
                        "long": {"type": "number", "minimum": -180, "maximum": 180},
                        "address_string": {"type": "string"}, "description": {"type": "string", "maxLength": 2000},
                        "phone": {"type": "string"}, "media_url": {"type": "string", "description": "ignored"},
                    }}}}},
                "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                                "schema": {"type": "string"}}],
                "responses": {
                    "201": _json({"type": "array", "items": {"type": "object", "properties": {
                        "service_request_id": {"type": "string"}, "service_notice": {"type": "string"},
                        "account_id": {"type": "null"}}}}, "filed"),
                    "400": _open311_error("unknown service_code, no place, bad lat/long, description too long"),
                    "403": _open311_error("api_key missing or not valid"),
                },
            },
        },
        "/open311/v2/requests/{reference}.json": {"get": {
            "summary": "One service request", "tags": ["open311"],
            "parameters": [_path("reference")],
            "responses": {"200": _json({"type": "array", "items": _ref("Open311Request")}, "the request"),
                          "404": _open311_error("no such request")},
        }},
        "/open311/media/{name}": {"get": {
            "summary": "A stored photo (EXIF stripped) that media_url points to", "tags": ["open311"],
            "parameters": [_path("name")],
            "responses": {"200": {"description": "the photo", "content": {"image/*": {}}},
                          "404": _open311_error("no such photo")},
        }},
    }


def _staff_paths() -> dict[str, Any]:
    forbidden = {"403": _error("staff token missing, expired or without access to tickets")}
    action_body = {"type": "object", "properties": {"note": {"type": "string", "maxLength": 500},
                                                    "department": {"type": "string", "minLength": 1,
                                                                   "maxLength": 64}}}
    return {
        "/staff/api/login": {"post": {
            "summary": "Staff login: a session token for the other staff calls", "tags": ["staff"],
            "requestBody": _json_body({"type": "object", "required": ["username", "password"],
                                       "properties": {"username": {"type": "string"},
                                                      "password": {"type": "string"}}}),
            "responses": {
                "200": _json({"type": "object", "properties": {"token": {"type": "string"},
                                                               "expires_in_hours": {"type": "number"}}}, "logged in"),
                "400": _error("body is not {username, password}"), "403": _error("login refused"),
                "423": _error("account locked"), "429": _error("too many attempts"),
            },
        }},
        "/staff/api/tickets": {"get": {
            "summary": "Tickets in the caller's scope (no personal data)", "tags": ["staff"],
            "security": _STAFF_AUTH,
            "parameters": [
                _query("status", "comma-separated statuses"), _query("department", "department name"),
                _query("triage", "1: only tickets waiting for triage", {"type": "string", "enum": ["0", "1"]}),
                _query("limit", "at most this many (1–500, default 100)",
                       {"type": "integer", "minimum": 1, "maximum": 500}),
            ],
            "responses": {"200": _json({"type": "array", "items": _ref("Ticket")}, "tickets"),
                          "400": _error("limit is not a whole number"), **forbidden},
        }},
        "/staff/api/tickets/{reference}": {"get": {
            "summary": "One ticket with description, place, contact and history (audited)", "tags": ["staff"],
            "security": _STAFF_AUTH, "parameters": [_path("reference")],
            "responses": {"200": _json(_ref("Ticket"), "the ticket"), "404": _error("no such ticket"), **forbidden},
        }},
        "/staff/api/tickets/{reference}/{action}": {"post": {
            "summary": "Act on a ticket; the resident gets an SMS at each public step", "tags": ["staff"],
            "security": _STAFF_AUTH,
            "parameters": [_path("reference"), _path("action", {"type": "string", "enum": sorted(staff_api.ACTIONS)})],
            "requestBody": {"required": False, "content": {
                JSON: {"schema": action_body},
                "multipart/form-data": {"schema": {**action_body, "properties": {
                    **action_body["properties"], "photo": {"type": "string", "format": "binary"}}}},
            }},
            "responses": {
                "200": _json(_ref("Ticket"), "the ticket after the action"),
                "400": _error("bad JSON, note or department"), "404": _error("no such ticket or action"),
                "409": _error("the action is not allowed in the ticket's status"),
                "413": _error("photo too large"), "415": _error("photo is not an image we accept"), **forbidden,
            },
        }},
    }


def _sensor_paths() -> dict[str, Any]:
    readings = {"type": "array", "minItems": 1, "maxItems": MAX_BATCH, "items": _ref("Reading")}
    return {"/api/sensors/readings": {"post": {
        "summary": "A batch of readings from a home gateway or device", "tags": ["sensors"],
        "security": [{"deviceToken": []}, {"deviceTokenHeader": []}],
        "requestBody": _json_body({"oneOf": [
            {"type": "object", "required": ["readings"], "properties": {"readings": readings}}, readings]}),
        "responses": {
            "202": _json({"type": "object", "properties": {k: {"type": "integer"} for k in
                                                           ("accepted", "duplicates", "kept_aside", "alerts")}},
                         "kept; readings of unknown devices are kept aside"),
            "400": _json({"allOf": [_ref("Error"), {"type": "object", "properties": {
                "index": {"type": "integer"}, "field": {"type": "string"}}}]},
                "invalid JSON or an invalid reading (nothing of the batch is kept)"),
            "401": _error("device token missing or unknown"),
            "413": _error(f"more than {MAX_BATCH} readings or body too large"),
            "415": _error("Content-Type is not application/json"),
        },
    }}}


def describe() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {"title": "Community assistant — 社区适老化语音短信助手", "version": "1",
                 "description": "Public HTTP API. Errors are JSON {error, detail} (Open311: a list of {code, "
                                "description}); no request gets a stack trace."},
        "paths": {**_rest_paths(), **_open311_paths(), **_staff_paths(), **_sensor_paths()},
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "staffToken": {"type": "http", "scheme": "bearer",
                               "description": "session token from /staff/api/login, or env STAFF_API_TOKEN"},
                "deviceToken": {"type": "http", "scheme": "bearer", "description": "a home gateway's token"},
                "deviceTokenHeader": {"type": "apiKey", "in": "header", "name": "X-Device-Token"},
            },
        },
    }
