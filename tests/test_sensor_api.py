"""POST /api/sensors/readings and the alert-call webhook, as a table of requests and answers."""
from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from flask import Flask
from sqlalchemy import func, select
from twilio.request_validator import RequestValidator

from assistant.config import load_settings
from backend.alerts.desk import AlertDesk
from backend.alerts.households import load_households
from backend.alerts.rules import AlertRules
from backend.alerts.store import Alert, CareContact, CareHousehold, SensorReading, UnknownReading
from backend.infra import db
from backend.infra.crypto import FieldCipher, KeyRing
from backend.messaging.outbox import Outbox
from channels import sensors
from core_fixtures import TZ, FakeClock

FIXTURES = Path(__file__).parent / "fixtures" / "alerts"
AUTH_TOKEN = "a" * 32
PUBLIC = "https://care.example.org"
T0 = datetime(2026, 11, 25, 9, 30, tzinfo=TZ)


class FakePlacer:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def place(self, to: str, twiml: str, status_callback: str | None = None):
        from backend.alerts.dispatch import CallResult

        self.calls.append((to, twiml))
        return CallResult("CA" + "0" * 32, "queued")


@pytest.fixture
def api(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'api.db'}"
    db.upgrade(url)
    sessions = db.session_factory(db.make_engine(url))
    cipher = FieldCipher(KeyRing({1: bytes(16)}, 1, bytes(32)))
    clock = FakeClock(T0)
    settings = load_settings({"DATA_DIR": str(tmp_path), "DATABASE_URL": url, "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
                              "PUBLIC_BASE_URL": PUBLIC})
    desk = AlertDesk(sessions, cipher, clock, Outbox(sessions, cipher, clock, None),
                     AlertRules.from_config(settings.config["alerts"]), call_placer=FakePlacer(),
                     public_base_url=PUBLIC)
    desk.register_households(load_households(FIXTURES / "households.yml"))
    app = Flask(__name__)
    app.register_blueprint(sensors.make_blueprint(SimpleNamespace(settings=settings, alerts=desk)))
    return SimpleNamespace(client=app.test_client(), desk=desk, sessions=sessions, clock=clock)


def reading(device: str = "G-H002", kind: str = "gas", value: object = 0, ts: object = None, **extra: object):
    return {"device": device, "kind": kind, "value": value, "ts": ts or T0.isoformat(), **extra}


GOOD = {"Authorization": "Bearer token-H002-gateway"}
CASES = [
    # (name, headers, body (JSON-able or raw bytes), status, expected subset of the JSON answer)
    ("accepted batch", GOOD, {"readings": [reading(), reading(kind="water", device="W-H002", value=5)]}, 202,
     {"accepted": 2, "duplicates": 0, "kept_aside": 0, "alerts": 0}),
    ("bare list", GOOD, [reading(value=0, ts=(T0 + timedelta(minutes=1)).isoformat())], 202, {"accepted": 1}),
    ("gas leak raises", GOOD, [reading(value=3)], 202, {"accepted": 1, "alerts": 1}),
    ("unknown device kept aside", GOOD, [reading(device="NEW-1")], 202, {"accepted": 0, "kept_aside": 1}),
    ("other home's device kept aside", GOOD, [reading(device="W-H001", kind="water")], 202, {"kept_aside": 1}),
    ("household mismatch kept aside", GOOD, [reading(household="H001")], 202, {"kept_aside": 1}),
    ("no token", {}, [reading()], 401, {"error": "invalid_token"}),
    ("wrong token", {"Authorization": "Bearer nope"}, [reading()], 401, {"error": "invalid_token"}),
    ("device token header", {"X-Device-Token": "token-H002-gateway"}, [reading()], 202, {"accepted": 1}),
    ("not JSON", GOOD, b"device=G-H002", 415, {"error": "unsupported_media_type"}),
    ("broken JSON", GOOD, b'{"readings": [', 400, {"error": "invalid_json"}),
    ("empty batch", GOOD, {"readings": []}, 400, {"error": "invalid_reading", "field": "readings"}),
    ("not a list", GOOD, {"readings": {"device": "x"}}, 400, {"error": "invalid_reading"}),
    ("unknown kind", GOOD, [reading(), reading(kind="smoke")], 400,
     {"error": "invalid_reading", "index": 1, "field": "kind"}),
    ("value as text", GOOD, [reading(value="3")], 400, {"index": 0, "field": "value"}),
    ("naive time", GOOD, [reading(ts="2026-11-25T09:30:00")], 400, {"index": 0, "field": "ts"}),
    ("too many", GOOD, [reading()] * 501, 413, {"error": "too_many_readings"}),
]


@pytest.mark.parametrize(("name", "headers", "body", "status", "expected"), CASES, ids=[c[0] for c in CASES])
def test_readings_api(api, name, headers, body, status, expected) -> None:
    if isinstance(body, bytes):
        content_type = "application/json" if body.startswith(b"{") else "application/x-www-form-urlencoded"
        response = api.client.post("/api/sensors/readings", data=body, headers={**headers,
                                                                                "Content-Type": content_type})
    else:
        response = api.client.post("/api/sensors/readings", json=body, headers=headers)
    assert response.status_code == status, response.get_data(as_text=True)
    answer = response.get_json()
    assert {k: answer.get(k) for k in expected} == expected
    if status >= 400:
        with api.sessions() as s:  # a refused batch keeps nothing
            assert s.scalar(select(func.count()).select_from(SensorReading)) == 0
            assert s.scalar(select(func.count()).select_from(UnknownReading)) == 0


def test_redelivered_batch_is_idempotent(api) -> None:
    batch = {"readings": [reading(value=3), reading(kind="water", device="W-H002", value=5)]}
    first = api.client.post("/api/sensors/readings", json=batch, headers=GOOD).get_json()
    again = api.client.post("/api/sensors/readings", json=batch, headers=GOOD).get_json()
    assert (first["accepted"], first["alerts"]) == (2, 1)
    assert (again["accepted"], again["duplicates"], again["alerts"]) == (0, 2, 0)
    with api.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Alert)) == 1


def _signed_post(api, path: str, params: dict[str, str], signature: str | None = None):
    sig = signature if signature is not None else RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC + path, params)
    return api.client.post(path, data=params, headers={"X-Twilio-Signature": sig})


def _call_params(digits: str) -> dict[str, str]:
    return {"AccountSid": "AC" + "1" * 32, "CallSid": "CA" + "2" * 32, "CallStatus": "in-progress",
            "Direction": "outbound-api", "Digits": digits, "From": "+8610690001", "To": "+8613700003333",
            "ApiVersion": "2010-04-01"}


def test_alert_call_keypress_is_signed_and_answers_twiml(api) -> None:
    answer = api.client.post("/api/sensors/readings", json=[reading(value=3)], headers=GOOD).get_json()
    assert answer["alerts"] == 1
    with api.sessions() as s:
        alert_id = s.scalar(select(Alert.id))
    with api.sessions() as s:  # the call itself is placed by a job (test_alert_desk); here: the key press
        senior = s.scalar(select(CareContact.id).join(CareHousehold, CareHousehold.id == CareContact.household_id)
                          .where(CareContact.role == "senior", CareHousehold.code == "H002"))
    path = f"/webhooks/twilio/voice/alert?alert={alert_id}&contact={senior}"
    refused = _signed_post(api, path, _call_params("1"), signature="bad")
    assert refused.status_code == 403
    response = _signed_post(api, path, _call_params("1"))
    assert response.status_code == 200 and response.mimetype == "application/xml"
    text = response.get_data(as_text=True)
    assert "谢谢您" in text and "<Hangup" in text
    view = api.desk.view(alert_id, "test")
    assert view is not None and "senior_ok" in [e[0] for e in view.events]
    junk = _signed_post(api, "/webhooks/twilio/voice/alert?alert=x", _call_params("1"))
    assert junk.status_code == 200 and "<Say" in junk.get_data(as_text=True)


def test_error_detail_names_the_field(api) -> None:
    response = api.client.post("/api/sensors/readings", json=[reading(kind="smoke")], headers=GOOD)
    body = json.loads(response.get_data(as_text=True))
    assert body["error"] == "invalid_reading" and "kind" in body["detail"]
