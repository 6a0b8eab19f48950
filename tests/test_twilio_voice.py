"""Phone channel: recorded Twilio Voice requests (real field names, real signatures) → TwiML."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import datetime
from urllib.parse import parse_qs, urlparse

import pytest
from twilio.request_validator import RequestValidator

from assistant.config import ROOT, load_settings
from assistant.ivr import CallInput, IvrFlow, IvrNavigator
from channels.app import create_app
from channels.twilio_voice import make_blueprint
from core_fixtures import TZ, make_id
from runtime.container import build_runtime

TOKEN = "voice-test-auth-token"
PUBLIC = "https://hotline.example.org"
AGENT = "+8657188880000"
CALLER = "+8613800138000"


@pytest.fixture
def voice_env(settings_env):
    return {**settings_env, "TWILIO_AUTH_TOKEN": TOKEN, "TWILIO_ACCOUNT_SID": "AC" + "1" * 32,
            "PUBLIC_BASE_URL": PUBLIC, "AGENT_NUMBER": AGENT, "PHONE_PROMPTS": "say"}


@pytest.fixture
def phone(voice_env, nlu, clock):
    runtime = build_runtime(load_settings(voice_env), clock=clock, nlu=nlu)
    app = create_app(runtime)
    if "twilio_voice" not in app.blueprints:
        app.register_blueprint(make_blueprint(runtime))
    return Phone(app.test_client(), runtime)


class Phone:
    """Plays Twilio: posts signed webhooks and follows the action URLs of the TwiML it gets."""

    def __init__(self, client, runtime, call_sid: str = "CA" + "a" * 32) -> None:
        self.client, self.runtime, self.call_sid = client, runtime, call_sid
        self.xml: ET.Element | None = None

    def post(self, path: str, signed: bool = True, **fields: str):
        params = {"CallSid": self.call_sid, "AccountSid": "AC" + "1" * 32, "From": CALLER, "To": "+8657112345",
                  "Direction": "inbound", "CallStatus": "in-progress", "ApiVersion": "2010-04-01", **fields}
        signature = RequestValidator(TOKEN).compute_signature(PUBLIC + path, params) if signed else "forged"
        response = self.client.post(path, data=params, headers={"X-Twilio-Signature": signature})
        if response.status_code == 200:
            self.xml = ET.fromstring(response.data)
        return response

    def call(self):
        return self.post("/webhooks/twilio/voice", CallStatus="ringing")

    @property
    def gather(self) -> ET.Element | None:
        return self.xml.find("Gather")

    @property
    def spoken(self) -> str:
        return "".join(p.text or "" for p in self.xml.iter("prosody"))

    def answer(self, digits: str = "", speech: str = "", confidence: str = "0.9"):
        action = self.gather.get("action")
        fields = {"Digits": digits} if digits else {}
        if speech:
            fields |= {"SpeechResult": speech, "Confidence": confidence}
        return self.post(action, **fields)

    @property
    def query(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(urlparse(self.gather.get("action")).query).items()}


def test_incoming_call_greets_and_offers_the_menu_with_elderly_timeouts(phone):
    assert phone.call().status_code == 200
    gather = phone.gather
    assert gather.get("input") == "dtmf speech" and gather.get("language") == "zh-CN"
    assert int(gather.get("timeout")) >= 8 and gather.get("speechTimeout") == "auto"
    assert "社区服务热线" in phone.spoken and "按0" in phone.spoken and "重听" in phone.spoken
    assert phone.query["step"] == "main"
    say = next(phone.xml.iter("Say"))
    assert say.get("language") == "cmn-CN"


@pytest.mark.parametrize(
    ("path", "fields", "signed", "status"),
    [
        ("/webhooks/twilio/voice", {}, False, 403),
        ("/webhooks/twilio/voice/gather?step=main", {"Digits": "1"}, False, 403),
        ("/webhooks/twilio/voice/status", {"CallStatus": "completed"}, False, 403),
        ("/webhooks/twilio/voice", {"CallSid": "not-a-call"}, True, 400),
    ],
)
def test_forged_or_malformed_webhooks_are_refused(phone, path, fields, signed, status):
    assert phone.post(path, signed=signed, **fields).status_code == status


def test_menu_keys_submenu_back_repeat_and_end(phone):
    phone.call()
    phone.answer("1")
    assert "办老年证，请按1" in phone.spoken and phone.query["step"] == "affairs"
    phone.answer("*")
    assert phone.query["step"] == "main"
    phone.answer("9")
    assert "办证和补贴" in phone.spoken
    phone.answer("#")
    assert phone.xml.find("Hangup") is not None and "再见" in phone.spoken


def test_silence_is_retried_then_a_person(phone):
    phone.call()
    phone.answer()
    assert "没听到" in phone.spoken and phone.query["tries"] == "1"
    phone.answer()
    assert phone.query["tries"] == "2"
    phone.answer()
    dial = phone.xml.find("Dial")
    assert dial is not None and dial.find("Number").text == AGENT


def test_zero_reaches_a_person_with_a_whisper_for_the_agent(phone):
    phone.call()
    phone.answer("0")
    number = phone.xml.find("Dial").find("Number")
    assert number.text == AGENT
    whisper = number.get("url")
    reference = parse_qs(urlparse(whisper).query)["ref"][0]
    assert re.fullmatch(r"\d{8}", reference)
    phone.post(whisper)
    assert f"服务编号{reference}" in phone.spoken
    assert phone.runtime.backend.get_case(reference).kind == "handoff"


def test_after_hours_a_person_is_promised_a_call_back(phone, clock):
    clock.now = datetime(2026, 11, 25, 22, 0, tzinfo=TZ)
    phone.call()
    phone.answer("0")
    assert phone.xml.find("Dial") is None and phone.xml.find("Hangup") is not None
    assert "下班" in phone.spoken


def test_full_call_by_speech_and_keys_to_a_submitted_application(phone):
    phone.call()
    phone.answer(speech="我想办老年证")
    assert "身份证" in phone.spoken
    assert phone.query == {"step": "conv", "expects": "id_number", "tries": "0"}
    assert phone.gather.get("finishOnKey") == "#"
    phone.answer(make_id("19450302") + "#")
    assert "名字" in phone.spoken
    phone.answer(speech="王建国")
    assert phone.query["expects"] == "confirm"
    assert "幺三八" in phone.spoken  # the caller's number read back digit by digit
    assert phone.gather.get("numDigits") == "1"
    phone.answer("1")
    assert "受理编号" in phone.spoken and phone.query["step"] == "main"
    record = phone.runtime.calls.get(phone.call_sid)
    assert any("王建国" in text for _, text in record["transcript"])


def test_id_ending_in_x_is_keyed_with_star(phone):
    number = next(n for i in range(1000) if (n := make_id("19480707", seq=f"{i:03d}")).endswith("X"))
    phone.call()
    phone.answer("1")
    phone.answer("1")
    phone.answer(number[:-1] + "*#")
    assert "名字" in phone.spoken


def test_low_confidence_speech_is_read_back_first(phone):
    phone.call()
    phone.answer(speech="我要订饭", confidence="0.2")
    assert "您是说：我要订饭" in phone.spoken and phone.query["step"] == "confirm"
    phone.answer("1")
    assert "哪一天" in phone.spoken
    phone.answer(speech="后天", confidence="0.1")
    phone.answer("2")
    assert "再说一遍" in phone.spoken and phone.query["expects"] == "date"


def test_emergency_speech_goes_straight_to_a_person(phone):
    phone.call()
    phone.answer(speech="我老伴摔倒了起不来")
    assert "120" in phone.spoken
    assert phone.xml.find("Dial") is not None


def test_every_menu_branch_reaches_its_first_question(phone):
    branches = {("1", "1"): "身份证", ("1", "2"): "身份证", ("1", "3"): "身份证", ("1", "4"): "身份证",
                ("2", "1"): "哪一天", ("2", "2"): "什么服务", ("2", "3"): "医院", ("3",): "什么问题",
                ("4",): "进度"}
    for i, (keys, question) in enumerate(branches.items()):
        phone.call_sid = f"CA{i:032x}"
        phone.call()
        for key in keys:
            phone.answer(key)
        assert question in phone.spoken or (keys == ("4",) and "编号" in phone.spoken), (keys, phone.spoken)


def test_star_inside_a_form_cancels_back_to_the_menu(phone):
    phone.call()
    phone.answer("2")
    phone.answer("1")
    phone.answer("*")
    assert "取消" in phone.spoken and phone.query["step"] == "main"


def test_errors_still_answer_twiml_with_a_person(phone, monkeypatch):
    phone.call()

    def broken(message):
        raise RuntimeError("boom")

    monkeypatch.setattr(phone.runtime.assistant, "handle", broken)
    response = phone.answer(speech="我想办老年证")
    assert response.status_code == 200
    assert "系统出了点问题" in phone.spoken and phone.xml.find("Dial") is not None


def test_status_callback_closes_the_call_record_and_dial_done(phone):
    phone.call()
    phone.answer("3")
    assert phone.post("/webhooks/twilio/voice/status", CallStatus="completed", CallDuration="42").status_code == 204
    record = phone.runtime.calls.get(phone.call_sid)
    assert record["ended_at"] is not None and record["status"] == "completed"
    assert record["path"][0].startswith("menu") or "core" in record["path"]
    phone.post("/webhooks/twilio/voice/dial-done", DialCallStatus="no-answer")
    assert "回电话" in phone.spoken and phone.xml.find("Hangup") is not None


def test_resident_marked_for_a_person_skips_the_menu(phone):
    phone.runtime.calls.set_direct_to_human("13800138000", True)
    phone.call()
    assert phone.xml.find("Dial") is not None and phone.gather is None


def test_flow_file_is_checked_at_load(tmp_path):
    flow = (ROOT / "ivr_flows" / "main.yml").read_text(encoding="utf-8")
    bad = tmp_path / "bad.yml"
    bad.write_text(flow.replace('"4": {intent: check_progress}',
                                '"4": {intent: check_progress}\n      "5": {intent: book_meal}'), encoding="utf-8")
    with pytest.raises(ValueError, match="at most 4"):
        IvrFlow.load(bad)


def test_navigator_maps_keys_by_what_the_core_expects():
    nav = IvrNavigator(IvrFlow.load(ROOT / "ivr_flows" / "main.yml"))
    assert nav.in_conversation("confirm", CallInput(digits="1")).text == "/affirm"
    assert nav.in_conversation("confirm", CallInput(digits="2")).text == "/deny"
    assert nav.in_conversation("phone", CallInput(digits="13800138000#")).text == "13800138000"
    assert nav.in_conversation("quantity", CallInput(digits="2")).text == "2"
    assert nav.in_conversation("confirm", CallInput(digits="0")).kind == "human"
    assert nav.in_conversation("date", CallInput(digits="9")).text == "/repeat"
    assert nav.in_conversation("date", CallInput()).meta["silence"]


def test_terminal_call_simulator(model_dir, nlu, tmp_path):
    import os
    import subprocess
    import sys

    keys = f"1\n1\n{make_id('19450302')}#\n王建国\n1\n#\n"
    run = subprocess.run([sys.executable, "-m", "assistant", "call"], input=keys, capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "MODEL_DIR": str(model_dir), "DATA_DIR": str(tmp_path)},
                         timeout=300)
    assert run.returncode == 0, run.stderr
    assert "办老年证，请按1" in run.stdout and "受理编号是" in run.stdout and "再见" in run.stdout


def test_prompts_are_played_from_cached_local_speech(voice_env, nlu, clock):
    import shutil

    if shutil.which("espeak-ng") is None:
        from conftest import _unavailable

        _unavailable("espeak-ng not installed")
    runtime = build_runtime(load_settings({**voice_env, "PHONE_PROMPTS": "play"}), clock=clock, nlu=nlu)
    phone = Phone(create_app(runtime).test_client(), runtime)
    phone.call()
    urls = [play.text for play in phone.xml.iter("Play")]
    assert len(urls) == 2 and not list(phone.xml.iter("Say"))  # greeting + menu prompt
    audio = phone.client.get(urls[1])
    assert audio.status_code == 200 and audio.data[:4] == b"RIFF" and len(audio.data) > 16000
    phone.call_sid = "CA" + "b" * 32
    phone.call()
    assert [play.text for play in phone.xml.iter("Play")] == urls  # cached: same files, by text hash
    assert phone.client.get("/voice/tts/../../etc/passwd").status_code == 404
