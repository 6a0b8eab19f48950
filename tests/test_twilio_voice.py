"""Phone channel: recorded Twilio Voice requests (real field names, real signatures) → TwiML."""
from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from twilio.request_validator import RequestValidator

from assistant.config import ROOT, load_settings
from assistant.ivr import CallInput, IvrFlow, IvrNavigator
from assistant.voice.tts import for_listening
from channels.app import create_app
from channels.twilio_voice import make_blueprint
from core_fixtures import TZ, make_id
from runtime.container import build_runtime
from runtime.voice_services import PIECE_CHARS, VoiceServices

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

    def says(self, written: str) -> bool:
        """`written` is in what <Say> says, as it is said (numbers spelled: 按0 → 按零, 120 → 幺二零)."""
        return for_listening(written) in self.spoken

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
    assert phone.says("社区服务热线") and phone.says("按0") and phone.says("重听")
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
    assert phone.says("办老年证，请按1") and phone.query["step"] == "affairs"
    phone.answer("*")
    assert phone.query["step"] == "main"
    phone.answer("9")
    assert phone.says("办证和补贴")
    phone.answer("#")
    assert phone.xml.find("Hangup") is not None and phone.says("再见")


def test_silence_is_retried_then_a_person(phone):
    phone.call()
    phone.answer()
    assert phone.says("没听到") and phone.query["tries"] == "1"
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
    assert phone.says(f"服务编号{reference}")
    assert phone.runtime.backend.get_case(reference).kind == "handoff"


def test_whisper_names_the_form_the_caller_was_filling_in_words(phone):
    phone.call()
    phone.answer(speech="我想办老年证")
    phone.answer(speech="转人工")
    whisper = phone.xml.find("Dial").find("Number").get("url")
    phone.post(whisper)
    assert phone.says("正在办老年证申请") and "apply_senior_card" not in phone.spoken


def test_whisper_for_an_unknown_reference_says_there_is_no_record(phone):
    phone.call()
    phone.post("/webhooks/twilio/voice/whisper?ref=99999999")
    assert phone.says("社区热线转接。没有记录。")
    phone.post("/webhooks/twilio/voice/whisper?ref=not-a-number")
    assert phone.says("没有记录。")


def test_a_flow_without_the_whisper_summary_is_refused_at_load(tmp_path):
    import yaml

    doc = yaml.safe_load((ROOT / "ivr_flows" / "main.yml").read_text(encoding="utf-8"))
    del doc["messages"]["whisper_case"]
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ValueError, match="lacks messages: whisper_case"):
        IvrFlow.load(bad)


def test_after_hours_a_person_is_promised_a_call_back(phone, clock):
    clock.now = datetime(2026, 11, 25, 22, 0, tzinfo=TZ)
    phone.call()
    phone.answer("0")
    assert phone.xml.find("Dial") is None and phone.xml.find("Hangup") is not None
    assert phone.says("下班")


def test_full_call_by_speech_and_keys_to_a_submitted_application(phone):
    phone.call()
    phone.answer(speech="我想办老年证")
    assert phone.says("身份证")
    assert phone.query == {"step": "conv", "expects": "id_number", "tries": "0"}
    assert phone.gather.get("finishOnKey") == "#"
    phone.answer(make_id("19450302") + "#")
    assert phone.says("名字")
    phone.answer(speech="王建国")
    assert phone.query["expects"] == "confirm"
    assert phone.says("幺三八")  # the caller's number read back digit by digit
    assert phone.gather.get("numDigits") == "1"
    phone.answer("1")
    assert phone.says("受理编号") and phone.query["step"] == "main"
    record = phone.runtime.calls.get(phone.call_sid)
    assert any("王建国" in text for _, text in record["transcript"])


def test_id_ending_in_x_is_keyed_with_star(phone):
    number = next(n for i in range(1000) if (n := make_id("19480707", seq=f"{i:03d}")).endswith("X"))
    phone.call()
    phone.answer("1")
    phone.answer("1")
    phone.answer(number[:-1] + "*#")
    assert phone.says("名字")


def test_low_confidence_speech_is_read_back_first(phone):
    phone.call()
    phone.answer(speech="我要订饭", confidence="0.2")
    assert phone.says("您是说：我要订饭") and phone.query["step"] == "confirm"
    phone.answer("1")
    assert phone.says("哪一天")
    phone.answer(speech="后天", confidence="0.1")
    phone.answer("2")
    assert phone.says("再说一遍") and phone.query["expects"] == "date"


def test_emergency_speech_goes_straight_to_a_person(phone):
    phone.call()
    phone.answer(speech="我老伴摔倒了起不来")
    assert phone.says("120")
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
        assert phone.says(question) or (keys == ("4",) and phone.says("编号")), (keys, phone.spoken)


def test_star_inside_a_form_cancels_back_to_the_menu(phone):
    phone.call()
    phone.answer("2")
    phone.answer("1")
    phone.answer("*")
    assert phone.says("取消") and phone.query["step"] == "main"


def test_errors_still_answer_twiml_with_a_person(phone, monkeypatch):
    phone.call()

    def broken(message):
        raise RuntimeError("boom")

    monkeypatch.setattr(phone.runtime.assistant, "turn", broken)  # the one call a channel makes per turn
    response = phone.answer(speech="我想办老年证")
    assert response.status_code == 200
    assert phone.says("系统出了点问题") and phone.xml.find("Dial") is not None


def test_status_callback_closes_the_call_record_and_dial_done(phone):
    phone.call()
    phone.answer("3")
    assert phone.post("/webhooks/twilio/voice/status", CallStatus="completed", CallDuration="42").status_code == 204
    record = phone.runtime.calls.get(phone.call_sid)
    assert record["ended_at"] is not None and record["status"] == "completed"
    assert record["path"][0].startswith("menu") or "core" in record["path"]
    phone.post("/webhooks/twilio/voice/dial-done", DialCallStatus="no-answer")
    assert phone.says("回电话") and phone.xml.find("Hangup") is not None


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


def test_a_flow_without_a_message_the_phone_says_is_refused_at_load(tmp_path):
    import yaml

    doc = yaml.safe_load((ROOT / "ivr_flows" / "main.yml").read_text(encoding="utf-8"))
    del doc["messages"]["no_agent"]
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ValueError, match="lacks messages: no_agent"):
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


# -- prompts in our own voice ------------------------------------------------------------------


def use_engine(runtime, engine: str):
    """Set voice.tts.engine before the voices are built (espeak-ng where a test is about the
    channel, not the voice: it is a real engine that speaks in milliseconds)."""
    if engine in ("espeak", "kokoro") and shutil.which("espeak-ng") is None:
        from conftest import _unavailable

        _unavailable("espeak-ng not installed")
    voice = runtime.voice
    tts = {k: v for k, v in voice.config.tts.items() if k != "voice" or engine == "kokoro"}
    voice.config = replace(voice.config, tts={**tts, "engine": engine})
    return runtime


def _phone(voice_env, nlu, clock, engine: str | None = None, prompts: str = "play") -> Phone:
    runtime = build_runtime(load_settings({**voice_env, "PHONE_PROMPTS": prompts}), clock=clock, nlu=nlu)
    if engine:
        use_engine(runtime, engine)
    return Phone(create_app(runtime).test_client(), runtime)


def _plays(phone: Phone) -> list[str]:
    return [play.text for play in phone.xml.iter("Play")]


def test_prompts_are_played_sentence_by_sentence_from_our_own_voice(voice_env, nlu, clock):
    phone = _phone(voice_env, nlu, clock, engine="espeak")
    phone.call()
    flow = IvrFlow.load(ROOT / "ivr_flows" / "main.yml")
    sentences = VoiceServices.pieces(flow.greeting) + VoiceServices.pieces(flow.steps["main"].prompt)
    urls = _plays(phone)
    assert len(urls) == len(sentences) > 2 and not list(phone.xml.iter("Say"))
    assert all(re.fullmatch(r"/voice/tts/[0-9a-f]{32}\.wav", url) for url in urls)
    for url in urls:  # each GET waits for its sentence if it is still being made
        audio = phone.client.get(url)
        assert audio.status_code == 200 and audio.data[:4] == b"RIFF" and len(audio.data) > 4000
    tts_dir = Path(phone.runtime.settings.data_dir) / "tts"
    assert not list(tts_dir.rglob("*.pending"))  # made: nothing left waiting
    phone.call_sid = "CA" + "b" * 32
    phone.call()
    assert _plays(phone) == urls  # cached: same files, by text hash


@pytest.mark.parametrize(
    ("text", "pieces"),
    [
        ("要哪一天？比如明天、后天、下周三。", ["要哪一天？", "比如明天、后天、下周三。"]),
        ("好的。受理编号31852047，请记下来。", ["好的。", "受理编号31852047，", "请记下来。"]),
        ("我可以帮您：办老年证、居住证明、高龄津贴、残疾人补贴，订助餐，约家政和陪诊，报修，查进度。",
         ["我可以帮您：", "办老年证、居住证明、高龄津贴、残疾人补贴，", "订助餐，约家政和陪诊，报修，", "查进度。"]),
        ("明天上午8:30到社区食堂，午饭12元一份，一共1,000份，先到先得。",
         ["明天上午8:30到社区食堂，", "午饭12元一份，", "一共1,000份，先到先得。"]),
    ],
)
def test_a_reply_is_played_in_short_pieces_the_first_soon_ready(text, pieces):
    """Kokoro takes seconds per sentence: a long one is cut between clauses so the first piece is
    short, never inside a time or a number."""
    assert VoiceServices.pieces(text) == pieces
    assert all(len(p) <= PIECE_CHARS or not re.search("[，；：]", p[:-1]) for p in pieces)


def test_unknown_or_forged_audio_names_answer_404_at_once(voice_env, nlu, clock):
    phone = _phone(voice_env, nlu, clock)
    assert phone.runtime.voice.tts.local  # the voices are loaded: only the lookup is timed below
    for name in ("0" * 32 + ".wav", "A" * 32 + ".wav", "a" * 32 + ".pending", "a" * 4000 + ".wav", "x.wav",
                 "..%2F..%2Fetc%2Fpasswd", "../../etc/passwd"):
        started = time.monotonic()
        response = phone.client.get(f"/voice/tts/{name}")
        assert response.status_code == 404, name
        assert time.monotonic() - started < 1.0, name  # only a sentence being made is waited for


def test_a_sentence_whose_maker_was_killed_is_made_by_the_request(voice_env, nlu, clock, tmp_path):
    """A worker that named a sentence is killed (SIGKILL) while making it: its pending file stays,
    its lock goes with it. The GET for the sentence, in another process, makes it itself."""
    phone = _phone(voice_env, nlu, clock)  # the configured voice (Kokoro)
    voice = phone.runtime.voice
    text = "好的。"
    path = voice.tts.reply_path(text, "zh")
    maker = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from runtime.voice_services import _claim_new; "
         "assert _claim_new(Path(sys.argv[1]), sys.argv[2]) is not None; print('making', flush=True); "
         "time.sleep(600)", str(path.with_suffix(".pending")), text],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert maker.stdout.readline().strip() == "making"
        assert voice.await_file(path.name, 0.3) is None  # a live maker is waited for, not raced
        maker.send_signal(signal.SIGKILL)
        maker.wait(10)
    finally:
        if maker.poll() is None:
            maker.kill()
    assert path.with_suffix(".pending").exists() and not path.exists()
    audio = phone.client.get(f"/voice/tts/{path.name}")
    assert audio.status_code == 200 and audio.data[:4] == b"RIFF"
    assert path.exists() and not path.with_suffix(".pending").exists()


def test_a_sentence_local_tts_cannot_make_is_said_with_say(voice_env, nlu, clock, monkeypatch):
    phone = _phone(voice_env, nlu, clock, engine="espeak")
    voice = phone.runtime.voice
    prepare = voice.prepare

    def broken_for_key_zero(text: str, language: str = "zh"):
        if "按0" in text:
            raise RuntimeError("voice broke")
        return prepare(text, language)

    monkeypatch.setattr(voice, "prepare", broken_for_key_zero)
    phone.call()
    said = [(child.tag, child) for child in phone.gather]
    says = [child for tag, child in said if tag == "Say"]
    assert len(says) == 1 and len(said) == len(_plays(phone)) + 1  # the call is never silent
    assert says[0].find("prosody").text == for_listening("找工作人员，请按0。")
    assert said[-3][0] == "Say"  # in its place, before 重听，请按9 and 也可以直接说


def test_say_voice_follows_the_calls_language(voice_env, nlu, clock):
    """engine twilio_say: <Say> in the call's language with its cloud voice (config.yml
    voice.tts.twilio), the text as it is said, at the flow's pace."""
    phone = _phone(voice_env, nlu, clock, engine="twilio_say")
    phone.call()
    say = next(phone.xml.iter("Say"))
    assert (say.get("language"), say.get("voice")) == ("cmn-CN", "Polly.Zhiyu-Neural")
    assert not _plays(phone) and not re.search(r"\d", phone.spoken)  # 按0 is said 按零
    # the conversation is now in Cantonese (the core keeps the call's language in its state)
    runtime = phone.runtime
    runtime.sessions.save(runtime.assistant.session_key("voice", phone.call_sid),
                          {"sender_id": phone.call_sid, "channel": "voice", "language": "yue"}, 600)
    phone.answer("1")
    says = list(phone.xml.iter("Say"))
    assert says and all(s.get("language") == "yue-HK" for s in says)
    assert all(s.get("voice") == "Google.yue-HK-Standard-A" for s in says)
    assert {p.get("rate") for p in phone.xml.iter("prosody")} == {"85%"}
    assert phone.says("办老年证，请撳1")  # the menu in its Cantonese wording (ivr_flows/main.yue.yml)
