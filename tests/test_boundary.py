"""The one input boundary of the HTTP app (channels/boundary.py): every hostile or broken input is a
4xx with a clear JSON error or a kind Chinese reply, never a 500, and nothing valid is lost.

The cases of the issue-17 probe first (lone surrogates, 50k-deep JSON, a 5000-character TTS name,
an over-long message), then hypothesis posting arbitrary JSON, forms and query strings to every
JSON and form endpoint of the real app (real SQLite, real NLU)."""
from __future__ import annotations

import json
import unicodedata
from pathlib import Path
from urllib.parse import urlencode

import pytest
from fixtures.twilio_world import AUTH_TOKEN, inbound_params, sign
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from assistant.config import load_settings
from assistant.dialogue.domain import Domain
from backend.alerts.households import load_households
from channels import rest
from channels.app import create_app
from channels.boundary import MAX_JSON_DEPTH, json_depth
from core_fixtures import FakeClock
from runtime.container import build_runtime

STAFF_TOKEN = "staff-integration-token"
OPEN311_KEY = "city-tool-key"
DEVICE = {"Authorization": "Bearer token-H002-gateway"}
STAFF = {"Authorization": f"Bearer {STAFF_TOKEN}"}
SESSION = "cd" * 12
HOUSEHOLDS = Path(__file__).parent / "fixtures" / "alerts" / "households.yml"
# The sentence for a message over the limit, as domain.yml words it (kiosk and REST say it).
TOO_LONG_TEXT = Domain.load(Path(__file__).parent.parent / "domain.yml").render("utter_message_too_long").text
JSON_ENDPOINTS = ["/webhooks/rest/webhook", "/model/parse", "/kiosk/api/turn", "/kiosk/api/reset",
                  "/staff/api/login", "/staff/api/tickets/31234567/accept", "/api/sensors/readings"]
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                derandomize=True)


def public_app(tmp_path_factory, model_dir, nlu, name: str):
    """The real app over a fresh SQLite store, with the staff token, an Open311 key and the
    households' device tokens (shared with test_schemathesis); yields it, then closes it."""
    data = tmp_path_factory.mktemp(name)
    env = {"DATA_DIR": str(data / "var"), "MODEL_DIR": str(model_dir),
           "DATABASE_URL": f"sqlite:///{data / 'var' / f'{name}.db'}",
           "STAFF_API_TOKEN": STAFF_TOKEN, "OPEN311_API_KEYS": OPEN311_KEY, "TWILIO_AUTH_TOKEN": AUTH_TOKEN}
    (data / "var").mkdir()
    runtime = build_runtime(load_settings(env), clock=FakeClock(), nlu=nlu)
    runtime.alerts.register_households(load_households(HOUSEHOLDS))
    yield create_app(runtime)
    runtime.voice.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory, model_dir, nlu):
    """One app for the module: hypothesis runs many examples against the same real store."""
    for app in public_app(tmp_path_factory, model_dir, nlu, "boundary"):
        yield app.test_client()


def post_json(client, path: str, body, headers=None):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(path, data=raw, content_type="application/json", headers=headers or {})


def headers_for(path: str) -> dict[str, str]:
    return DEVICE if path.startswith("/api/sensors") else STAFF if "/tickets/" in path else {}


def assert_kind_refusal(response, status: int, error: str) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert body["error"] == error and body["detail"]
    return body


# -- the probe's cases ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "answer"), [("\ud800", "人工"), ("办\udfff老年证", "老年证"),
                                             ("\udc00\ud800", "人工"), ("e\u0301\x00", "人工")])
def test_lone_surrogates_get_an_answer_not_a_crash(world, text, answer):
    sender = f"sur-{ord(text[0])}"
    raw = json.dumps({"sender": sender, "message": text, "text": text, "session": SESSION}).encode()
    webhook = post_json(world, "/webhooks/rest/webhook", raw)
    assert webhook.status_code == 200 and webhook.get_json()[0]["recipient_id"] == sender
    assert answer in "".join(r["text"] for r in webhook.get_json())  # understood, or a next step
    parsed = post_json(world, "/model/parse", raw)
    assert parsed.status_code == 200
    seen = parsed.get_json()["text"]  # what the core was given: valid, NFC
    assert not any(0xD800 <= ord(c) <= 0xDFFF or c == "\x00" for c in seen)
    assert seen == unicodedata.normalize("NFC", seen) and "\ufffd" in seen
    kiosk = post_json(world, "/kiosk/api/turn", raw)
    assert kiosk.status_code == 200 and kiosk.get_json()["replies"]


def test_text_is_nfc_normalised_once_at_the_boundary(world):
    decomposed = "Zoe\u0301 办老年证"
    body = post_json(world, "/model/parse", {"text": decomposed}).get_json()
    assert body["text"] == unicodedata.normalize("NFC", decomposed) == "Zoé 办老年证"
    assert body["intent"]["name"] == "apply_senior_card"


@pytest.mark.parametrize("path", JSON_ENDPOINTS)
def test_deep_json_is_refused_before_parsing_everywhere(world, path):
    deep = b"[" * 50_000 + b"]" * 50_000
    body = assert_kind_refusal(post_json(world, path, deep, headers_for(path)), 400, "invalid_json")
    assert str(MAX_JSON_DEPTH) in body["detail"]
    nested = {"sender": "deep", "message": "你好"}
    for _ in range(MAX_JSON_DEPTH + 1):
        nested = {"x": nested}
    assert_kind_refusal(post_json(world, path, nested, headers_for(path)), 400, "invalid_json")


def test_sensor_endpoint_refuses_deep_json_even_with_a_wrong_token(world):
    response = post_json(world, "/api/sensors/readings", b"{\"readings\":" + b"[" * 50_000,
                         {"Authorization": "Bearer nope"})
    assert_kind_refusal(response, 400, "invalid_json")


def test_json_depth_scan_ignores_brackets_inside_strings():
    assert json_depth('{"a": "[[[[{{{", "b": [[1], {"c": "\\"]"}]}') == 3
    assert json_depth('"unterminated [[[') == 0
    assert json_depth("[" * 100_000) == 100_000


def test_tts_name_that_cannot_exist_is_404(world):
    for name in ["x" * 5000 + ".wav", "..%2F..%2Fetc%2Fpasswd.wav", "%00.wav", "中文.wav"]:
        response = world.get(f"/kiosk/api/tts/{name}")
        assert response.status_code == 404, name
        assert response.get_json()["error"] == "not_found"


def test_too_long_rest_message_gets_a_chinese_reply_in_rasa_format(world):
    response = post_json(world, "/webhooks/rest/webhook",
                         {"sender": "long", "message": "长" * (rest.MAX_MESSAGE_CHARS + 1)})
    assert response.status_code == 413
    [reply] = response.get_json()
    assert reply["recipient_id"] == "long" and reply["text"] == TOO_LONG_TEXT
    assert "分几次" in reply["text"] and "人工" in reply["text"]
    assert reply["buttons"] == [{"title": "找人工", "payload": "/request_human"}]
    at_limit = post_json(world, "/webhooks/rest/webhook", {"sender": "long", "message": "长" * rest.MAX_MESSAGE_CHARS})
    assert at_limit.status_code == 200


def test_too_long_kiosk_text_gets_a_chinese_reply_the_page_shows(world):
    response = post_json(world, "/kiosk/api/turn", {"session": SESSION, "text": "长" * 501})
    assert response.status_code == 413
    body = response.get_json()
    assert body["detail"] == TOO_LONG_TEXT  # what kiosk.js shows for a refused request
    assert body["replies"][0]["text"] == TOO_LONG_TEXT and body["replies"][0]["buttons"][0]["payload"] == "/request_human"


def test_model_parse_too_long_is_413_with_chinese_detail(world):
    body = assert_kind_refusal(post_json(world, "/model/parse", {"text": "长" * 2001}), 413, "message_too_long")
    assert TOO_LONG_TEXT in body["detail"]


def test_body_over_the_size_limit_is_413_in_chinese(world):
    huge = json.dumps({"sender": "big", "message": "x" * (2 * 1024 * 1024)}).encode()
    body = assert_kind_refusal(post_json(world, "/webhooks/rest/webhook", huge), 413, "request_entity_too_large")
    assert "分几次" in body["detail"]


@pytest.mark.parametrize("raw", [b'{"sender": "n", "message": NaN}', b'{"sender": "n", "message": 1e999}',
                                 b'{"sender": "n", "message": ' + b"9" * 5000 + b"}",
                                 '{"sender": "n", "message": "你好"}'.encode("gbk"), b"\xff\xfe\x00"])
def test_non_json_numbers_and_bytes_are_invalid_json(world, raw):
    assert_kind_refusal(post_json(world, "/webhooks/rest/webhook", raw), 400, "invalid_json")
    response = post_json(world, "/api/sensors/readings", raw, DEVICE)
    assert_kind_refusal(response, 400, "invalid_json")


def test_utf16_json_is_understood(world):
    raw = json.dumps({"sender": "u16", "message": "你好"}, ensure_ascii=False).encode("utf-16")
    assert post_json(world, "/webhooks/rest/webhook", raw).status_code == 200


def test_sensor_huge_values_are_refused_and_nothing_is_kept(world):
    reading = {"device": "G-H002", "kind": "gas", "value": 10**30, "ts": "2026-11-25T10:00:00+08:00"}
    assert_kind_refusal(post_json(world, "/api/sensors/readings", [reading], DEVICE), 400, "invalid_json")


# -- query parameters -------------------------------------------------------------------------------
@pytest.mark.parametrize(("url", "status"), [
    ("/staff/api/tickets?limit=abc", 400), ("/staff/api/tickets?limit=" + "9" * 5000, 400),
    ("/staff/api/tickets?limit=%EF%BC%91", 400), ("/staff/api/tickets?limit=-3", 200),
    ("/staff/api/tickets?status=%ED%A0%80&department=%FF", 200),
    ("/open311/v2/requests.json?start_date=yesterday", 400), ("/open311/v2/requests.json?status=maybe", 400),
    ("/open311/v2/requests.json?start_date=2026-11-25T10:00:00", 400),
    ("/open311/v2/requests.json?service_request_id=" + ",".join(["x" * 300] * 80), 200),
])
def test_query_parameters_answer_clear_400s(world, url, status):
    response = world.get(url, headers=STAFF)
    assert response.status_code == status, response.get_data(as_text=True)
    if status == 400:
        assert response.get_json()  # a JSON error (Open311: its list of {code, description})


def test_raw_non_utf8_query_bytes_do_not_crash(world):
    for path in ["/staff/api/tickets", "/open311/v2/requests.json"]:
        response = world.get(path, headers=STAFF, environ_overrides={"QUERY_STRING": "status=\xff\xfe&limit=\xff"})
        assert response.status_code in (200, 400), response.get_data(as_text=True)
    speech = world.post("/kiosk/api/speech", data=b"RIFF", environ_overrides={"QUERY_STRING": "session=\xff"})
    assert_kind_refusal(speech, 400, "invalid_session")


# -- forms -------------------------------------------------------------------------------------------
def test_non_utf8_form_keeps_what_was_sent(world):
    body = ("api_key=" + OPEN311_KEY + "&service_code=other&address_string=%E5%B9%B8%E7%A6%8F%E9%87%8C"
            "&description=").encode() + b"\xff\xfe bad bytes"
    response = world.post("/open311/v2/requests.json", data=body,
                          content_type="application/x-www-form-urlencoded")
    assert response.status_code == 201, response.get_data(as_text=True)
    [created] = response.get_json()
    [item] = world.get(f"/open311/v2/requests/{created['service_request_id']}.json").get_json()
    assert item["description"] == "\ufffd\ufffd bad bytes"


def test_form_values_are_nfc(world):
    response = world.post("/open311/v2/requests.json", data={
        "api_key": OPEN311_KEY, "service_code": "other", "address_string": "幸福里",
        "description": "Cafe\u0301 门口路灯坏了"})
    [created] = response.get_json()
    [item] = world.get(f"/open311/v2/requests/{created['service_request_id']}.json").get_json()
    assert item["description"] == "Café 门口路灯坏了"


# -- the front page and the API description ------------------------------------------------------------
def test_front_page_is_chinese_html_for_browsers_and_json_for_clients(world):
    browser = world.get("/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    html = browser.get_data(as_text=True)
    assert browser.status_code == 200 and browser.mimetype == "text/html"
    assert 'lang="zh-CN"' in html and 'href="/kiosk"' in html and 'href="/console"' in html
    assert "font-size: 28px" in html  # large type
    api = world.get("/", headers={"Accept": "application/json"})
    assert api.mimetype == "application/json" and "rest" in api.get_json()["channels"]


def test_openapi_describes_only_routes_that_exist(world):
    spec = world.get("/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    app = world.application
    routes = {(rule.rule, method) for rule in app.url_map.iter_rules() for method in rule.methods}
    for path, operations in spec["paths"].items():
        flask_path = path.replace("{", "<").replace("}", ">")
        for method in operations:
            assert (flask_path, method.upper()) in routes, (path, method)
    assert {"/webhooks/rest/webhook", "/model/parse", "/open311/v2/requests.json", "/staff/api/tickets",
            "/api/sensors/readings"} <= set(spec["paths"])


# -- fuzzing -----------------------------------------------------------------------------------------
CHARS = st.one_of(st.characters(), st.integers(0xD800, 0xDFFF).map(chr),
                  st.sampled_from(["\x00", "\u0301", "\ufeff", "\u202e", "[", "{", '"', "\\"]))
TEXT = st.text(CHARS, max_size=60)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), TEXT)
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
                           max_leaves=12)
# Shaped like each endpoint's body, so the fuzz reaches past the first "must be an object" check.
SHAPED = st.fixed_dictionaries({}, optional={
    "sender": st.one_of(TEXT, SCALARS), "message": st.one_of(TEXT, SCALARS), "text": st.one_of(TEXT, SCALARS),
    "session": st.one_of(st.just(SESSION), TEXT), "username": TEXT, "password": TEXT,
    "note": st.one_of(TEXT, SCALARS), "department": st.one_of(TEXT, SCALARS),
    "readings": st.lists(st.fixed_dictionaries({}, optional={
        "device": st.sampled_from(["G-H002", "W-H002"]) | TEXT, "kind": st.sampled_from(["gas", "water"]) | TEXT,
        "value": SCALARS, "ts": st.sampled_from(["2026-11-25T10:00:00+08:00"]) | TEXT,
        "household": TEXT}), max_size=3),
})
RAW_BODIES = st.one_of(
    st.binary(max_size=200),
    st.integers(1, 200_000).map(lambda n: b"[" * n),
    st.integers(1, 5000).map(lambda n: b'{"message": ' + b"9" * n + b"}"),
    st.integers(MAX_JSON_DEPTH - 2, MAX_JSON_DEPTH + 2).map(lambda n: b"[" * n + b"]" * n),
)


def json_bodies():
    # ensure_ascii escapes surrogates as "\udXXX", exactly what the probe sent.
    return st.one_of(SHAPED, JSON_VALUES).map(lambda v: json.dumps(v).encode()) | RAW_BODIES


@FUZZ
@given(path=st.sampled_from(JSON_ENDPOINTS), body=json_bodies(),
       content_type=st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain"]))
def test_fuzz_json_endpoints_never_5xx(world, path, body, content_type):
    response = world.post(path, data=body, content_type=content_type, headers=headers_for(path))
    assert response.status_code < 500, (path, body[:200], response.get_data(as_text=True)[:300])
    assert response.is_json


FORM_ENDPOINTS = ["/open311/v2/requests.json", "/staff/api/tickets/31234567/resolve"]
FORM_FIELDS = st.dictionaries(
    st.sampled_from(["api_key", "service_code", "lat", "long", "address_string", "description", "phone",
                     "note", "department", "x"]) | TEXT,
    st.one_of(TEXT, st.sampled_from([OPEN311_KEY, "other", "fire", "nan", "inf", "1e999", "-91", "39.9"])),
    max_size=8)


@FUZZ
@given(path=st.sampled_from(FORM_ENDPOINTS), fields=FORM_FIELDS, raw=st.none() | st.binary(max_size=120),
       multipart=st.booleans())
def test_fuzz_form_endpoints_never_5xx(world, path, fields, raw, multipart):
    headers = headers_for(path)
    if raw is not None:
        response = world.post(path, data=raw, headers=headers, content_type="application/x-www-form-urlencoded")
    else:
        valid = {k.encode("utf-8", "replace").decode(): v.encode("utf-8", "replace").decode()
                 for k, v in fields.items()}
        response = world.post(path, data=valid, headers=headers,
                              content_type="multipart/form-data" if multipart else "application/x-www-form-urlencoded")
    assert response.status_code < 500, (path, fields, raw, response.get_data(as_text=True)[:300])


QUERY_PATHS = ["/open311/v2/requests.json", "/staff/api/tickets", "/open311/v2/services.json", "/"]


@FUZZ
@given(path=st.sampled_from(QUERY_PATHS),
       query=st.lists(st.tuples(st.sampled_from(["status", "limit", "start_date", "end_date", "service_code",
                                                 "service_request_id", "department", "triage"]) | TEXT,
                                TEXT | st.integers().map(str)), max_size=5),
       raw=st.none() | st.binary(max_size=60))
def test_fuzz_query_strings_never_5xx(world, path, query, raw):
    if raw is not None:  # what a real server puts in the environ: bytes as latin-1
        response = world.get(path, headers=STAFF, environ_overrides={"QUERY_STRING": raw.decode("latin-1")})
    else:
        pairs = [(k.encode("utf-8", "surrogatepass"), v.encode("utf-8", "surrogatepass")) for k, v in query]
        response = world.get(path, headers=STAFF, query_string=urlencode(pairs))
    assert response.status_code < 500, (path, query, raw, response.get_data(as_text=True)[:300])


TWILIO_FORMS = ["/webhooks/twilio/sms", "/webhooks/twilio/sms/status", "/webhooks/twilio/voice",
                "/webhooks/twilio/voice/gather", "/webhooks/twilio/voice/status", "/webhooks/twilio/voice/dial-done"]
TWILIO_FIELDS = st.dictionaries(
    st.sampled_from(["Body", "NumMedia", "MediaUrl0", "MediaContentType0", "From", "MessageSid", "MessageStatus",
                     "ErrorCode", "CallSid", "CallStatus", "Digits", "SpeechResult", "Confidence", "DialCallStatus",
                     "CallDuration", "Latitude", "Longitude"]) | TEXT,
    st.one_of(TEXT, st.sampled_from(["", "0", "3", "99", "-1", "abc", "1e999", "nan", "completed", "no-answer",
                                     "+8613800138000", "https://api.twilio.com/x.jpg", "image/jpeg", "#", "*0"])),
    max_size=6)


@FUZZ
@given(path=st.sampled_from(TWILIO_FORMS), fields=TWILIO_FIELDS)
def test_fuzz_signed_twilio_webhooks_never_5xx(world, path, fields):
    """Correctly signed (so the request reaches the channel), with odd field values."""
    params = {**inbound_params("你好"), "CallSid": "CA" + "0" * 32, **fields}
    params = {k.encode("utf-8", "replace").decode(): v.encode("utf-8", "replace").decode() for k, v in params.items()}
    signature = sign(f"http://localhost{path}", params)
    response = world.post(path, data=params, headers={"X-Twilio-Signature": signature})
    assert response.status_code < 500, (path, fields, response.get_data(as_text=True)[:300])
    assert response.status_code != 403, "the signature was valid"
