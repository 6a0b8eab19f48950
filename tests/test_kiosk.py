"""Kiosk channel: JSON API contract and the page itself in a real headless Chromium."""
from __future__ import annotations

import io
import re
import shutil
import time
import wave
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from browser import ARTIFACTS, chromium, contrast, serving, set_viewport, wait
from flask import Flask

from assistant.dialogue.domain import Domain
from assistant.types import ConversationStatus, Reply
from assistant.voice.recognizer import Transcript, VoiceConfig
from channels import kiosk as kiosk_channel
from channels.app import create_app

SESSION = "ab" * 12


@pytest.fixture
def kiosk(runtime):
    yield create_app(runtime).test_client()
    runtime.voice.close()  # replies still queued for synthesis would slow the next test down


@pytest.fixture
def quick_voice(runtime):
    """espeak-ng (real, and instant) where the test is about the channel, not the voice."""
    if shutil.which("espeak-ng") is None:
        from conftest import _unavailable

        _unavailable("espeak-ng not installed")
    voice = runtime.voice
    tts = {k: v for k, v in voice.config.tts.items() if k != "voice"}
    voice.config = replace(voice.config, tts={**tts, "engine": "espeak"})  # before the voices are built
    return runtime


def test_page_is_served_without_caching_and_meets_size_rules(kiosk):
    page = kiosk.get("/kiosk")
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    html = page.get_data(as_text=True)
    assert 'lang="zh-CN"' in html and "一键呼叫" in html and "重听" in html
    css = kiosk.get("/kiosk/static/kiosk.css").get_data(as_text=True)
    assert int(re.search(r"html \{ font-size: (\d+)px", css).group(1)) >= 18
    assert int(re.search(r"button\.big \{ min-height: (\d+)px", css).group(1)) >= 60
    assert kiosk.get("/kiosk/static/../README.md").status_code == 404


def test_touch_turns_follow_the_conversation(kiosk):
    body = kiosk.post("/kiosk/api/turn", json={"session": SESSION, "text": "/book_meal"}).get_json()
    assert body["expects"] == "date" and "哪一天" in body["replies"][-1]["text"]
    body = kiosk.post("/kiosk/api/turn", json={"session": SESSION, "text": "/request_human"}).get_json()
    assert body["handoff"] is True


def test_reset_forgets_the_conversation(kiosk):
    kiosk.post("/kiosk/api/turn", json={"session": SESSION, "text": "办老年证"})
    assert kiosk.post("/kiosk/api/reset", json={"session": SESSION}).get_json() == {"ok": True}
    body = kiosk.post("/kiosk/api/turn", json={"session": SESSION, "text": "你好"}).get_json()
    assert body["expects"] == "menu"


@pytest.mark.parametrize(
    ("path", "kwargs", "error"),
    [
        ("/kiosk/api/turn", {"json": {"session": "nothex!", "text": "你好"}}, "invalid_session"),
        ("/kiosk/api/turn", {"json": {"session": SESSION, "text": 5}}, "invalid_text"),
        ("/kiosk/api/turn", {"data": "x", "content_type": "text/plain"}, "invalid_json"),
        ("/kiosk/api/reset", {"json": {}}, "invalid_session"),
        ("/kiosk/api/speech?session=zz", {"data": b"RIFF"}, "invalid_session"),
    ],
)
def test_bad_requests_get_clear_errors(kiosk, path, kwargs, error):
    response = kiosk.post(path, **kwargs)
    assert response.status_code == 400 and response.get_json()["error"] == error


def test_reply_is_spoken_sentence_by_sentence(quick_voice, kiosk):
    body = kiosk.post("/kiosk/api/turn", json={"session": SESSION, "text": "/book_meal"}).get_json()
    urls = body["audio_urls"]
    assert len(urls) >= 2 and body["audio_url"] == urls[0]  # 要哪一天？ 比如明天、后天、下周三。
    assert len(set(urls)) == len(urls)
    assert all(re.fullmatch(r"/kiosk/api/tts/[0-9a-f]{32}\.wav", url) for url in urls)
    for url in urls:  # each GET waits for its sentence if it is still being made
        audio = kiosk.get(url)
        assert audio.status_code == 200 and audio.data[:4] == b"RIFF"


def test_unknown_or_forged_audio_names_answer_404_at_once(kiosk, runtime):
    assert runtime.voice.tts.local  # the voices are loaded: only the lookup is timed below
    for name in ("0" * 32 + ".wav", "A" * 32 + ".wav", "a" * 32 + ".pending", "a" * 4000 + ".wav", "x.wav",
                 "..%2F..%2Fetc%2Fpasswd", "../../etc/passwd"):
        started = time.monotonic()
        response = kiosk.get(f"/kiosk/api/tts/{name}")
        assert response.status_code == 404, name
        assert time.monotonic() - started < 1.0, name  # only a sentence being made is waited for


# -- the page in a real browser -------------------------------------------------------------------


@pytest.fixture
def live_kiosk(runtime):
    with serving(create_app(runtime)) as base:
        yield base
    runtime.voice.close()


def test_kiosk_page_by_touch_inchromium(live_kiosk):
    from selenium.webdriver.common.by import By

    browser = chromium()
    try:
        browser.get(f"{live_kiosk}/kiosk")
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "kiosk-start.png"))
        for button in browser.find_elements(By.CSS_SELECTOR, "button"):
            if button.is_displayed():
                size = button.size
                assert size["height"] >= 60 and size["width"] >= 60, button.text
                fg = button.value_of_css_property("color")
                bg = button.value_of_css_property("background-color")
                assert contrast(fg, bg) >= 4.5, (button.text, fg, bg)
        body_px = float(browser.find_element(By.CSS_SELECTOR, ".reply").value_of_css_property("font-size")[:-2])
        assert body_px >= 18
        browser.find_element(By.XPATH, "//button[text()='助餐订饭']").click()
        wait(browser, 10, lambda b: "哪一天" in b.find_element(By.ID, "replies").text)
        # 要哪一天？ / 比如明天、后天、下周三。: played one after the other, the second made meanwhile
        wait(browser, 60, lambda b: b.execute_script(
            "const a = document.getElementById('voice');"
            "return lastAudio.length >= 2 && a.src.endsWith(lastAudio[1]) && (a.currentTime > 0 || a.ended);"))
        browser.find_element(By.XPATH, "//button[text()='办老年证']").click()
        wait(browser, 10, lambda b: b.find_element(By.ID, "keypad").is_displayed())
        browser.save_screenshot(str(ARTIFACTS / "kiosk-keypad.png"))
        browser.find_element(By.ID, "call-human").click()
        wait(browser, 10, lambda b: "工作人员" in b.find_element(By.ID, "replies").text)
        # the inactivity dialog can always be extended, and clearing removes what was shown
        browser.execute_script("askStillThere()")
        assert browser.find_element(By.ID, "still-there").is_displayed()
        browser.find_element(By.ID, "keep").click()
        assert not browser.find_element(By.ID, "still-there").is_displayed()
        browser.execute_script("clearScreen()")
        assert "工作人员" not in browser.find_element(By.ID, "replies").text
        assert browser.execute_script(  # a cleared screen says nothing more
            "return speaking.length === 0 && !document.getElementById('voice').getAttribute('src');")
    finally:
        browser.quit()


def test_kiosk_hold_to_talk_reaches_the_real_recogniser(live_kiosk, runtime):
    """Chromium's fake microphone plays a real recording; the page records it while the talk
    button is held, the server's faster-whisper hears it, and the reply is shown and played."""
    from pathlib import Path

    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    clip = Path(__file__).resolve().parent / "audio" / "aishell1_BAC009S0002W0123.wav"  # 也成为地方政府的眼中钉
    browser = chromium(fake_audio=str(clip))
    try:
        browser.get(f"{live_kiosk}/kiosk")
        talk = browser.find_element(By.ID, "talk")
        ActionChains(browser).click_and_hold(talk).pause(4.5).release().perform()
        wait(browser, 120, lambda b: b.find_element(By.ID, "heard").text.strip())
        heard = browser.find_element(By.ID, "heard").text
        assert any(word in heard for word in ("政府", "地方", "眼中")), heard
        assert browser.find_element(By.ID, "replies").text.strip()
        wait(browser, 30,
            lambda b: b.execute_script("const a = document.getElementById('voice');"
                                       "return a.src && (a.currentTime > 0 || a.ended);"))
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "kiosk-heard.png"))
    finally:
        browser.quit()


# -- the digit keypad at the kiosk's two screen shapes ----------------------------------------------

KEYPAD_GEOMETRY = """
const viewport = {w: window.innerWidth, h: window.innerHeight};
const footer = document.querySelector('footer.controls').getBoundingClientRect();
const boxes = [...document.querySelectorAll('#keypad .keys button, footer.controls button')].map((b) => {
  const r = b.getBoundingClientRect();
  const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
  return {text: b.textContent, left: r.left, top: r.top, right: r.right, bottom: r.bottom,
          width: r.width, height: r.height, inFooter: !!b.closest('footer'),
          onTop: hit === b || b.contains(hit)};
});
return {viewport, footerTop: footer.top, boxes};
"""


def _press(browser, label: str) -> None:
    from selenium.webdriver.common.by import By

    browser.find_element(By.XPATH, f"//section[@id='keypad']//button[text()='{label}']").click()


def _keyed(browser) -> str:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.ID, "keyed").text


def _reply_text(browser) -> str:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.ID, "replies").text


@pytest.mark.parametrize("window", ["1280,900", "800,1280"])
def test_keypad_fits_the_screen_and_clears_between_questions_in_chromium(live_kiosk, window):
    from selenium.webdriver.common.by import By

    from assistant.nlu.idcard import check_digit

    width, height = (int(v) for v in window.split(","))
    browser = chromium(window=window)
    try:
        set_viewport(browser, width, height)
        browser.get(f"{live_kiosk}/kiosk")
        browser.find_element(By.XPATH, "//button[text()='办老年证']").click()
        wait(browser, 10, lambda b: b.find_element(By.ID, "keypad").is_displayed())
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / f"kiosk-keypad-{width}x{height}.png"))

        # Every key and the bottom bar: on screen, ≥ 60×60, not covered by anything (the bottom bar
        # above all), without scrolling.
        geometry = browser.execute_script(KEYPAD_GEOMETRY)
        viewport = geometry["viewport"]
        assert (viewport["w"], viewport["h"]) == (width, height), viewport  # really this screen
        labels = [box["text"] for box in geometry["boxes"] if not box["inFooter"]]
        assert sorted(labels) == sorted([*"0123456789", "X", "删除", "清空", "确定"]), labels
        for box in geometry["boxes"]:
            assert box["width"] >= 60 and box["height"] >= 60, box
            assert box["left"] >= 0 and box["top"] >= 0, box
            assert box["right"] <= viewport["w"] and box["bottom"] <= viewport["h"], (box, viewport)
            assert box["onTop"], box
            if not box["inFooter"]:
                assert box["bottom"] <= geometry["footerTop"], (box, geometry["footerTop"])
        # 清空 sits next to 删除, right under it in the edit column
        by_label = {box["text"]: box for box in geometry["boxes"]}
        assert abs(by_label["清空"]["top"] - by_label["删除"]["top"]) > 30  # stacked in the edit column
        assert abs(by_label["清空"]["left"] - by_label["删除"]["left"]) < 2

        # 删除 takes one digit back, 清空 takes them all
        for digit in "123":
            _press(browser, digit)
        _press(browser, "删除")
        assert _keyed(browser) == "12"
        _press(browser, "清空")
        assert _keyed(browser) == ""

        # A wrong ID is asked for again: the display starts empty, typing does not append to it
        for digit in "123":
            _press(browser, digit)
        before = _reply_text(browser)
        _press(browser, "确定")
        wait(browser, 10, lambda b: _reply_text(b) != before)
        assert "身份证" in _reply_text(browser) and browser.find_element(By.ID, "keypad").is_displayed()
        assert _keyed(browser) == ""

        # A right ID, then the name (spoken), then the phone question: its display starts empty
        first17 = "11010119450302001"
        for digit in first17 + check_digit(first17):
            _press(browser, digit)
        _press(browser, "确定")
        wait(browser, 10, lambda b: "名字" in _reply_text(b))
        browser.execute_script("say('我叫王建国')")
        wait(browser, 10, lambda b: "电话" in _reply_text(b) and b.find_element(By.ID, "keypad").is_displayed())
        assert _keyed(browser) == ""
        for digit in "13800138000":
            _press(browser, digit)
        assert _keyed(browser) == "13800138000"
        _press(browser, "确定")
        wait(browser, 10, lambda b: "王建国" in _reply_text(b))
        assert _keyed(browser) == ""
    finally:
        browser.quit()


# --- the kiosk's own sentences: domain.yml responses picked by name ----------------------------------
def _domain_doc():
    return yaml.safe_load((Path(__file__).resolve().parent.parent / "domain.yml").read_text(encoding="utf-8"))


class _FakePool:
    """Stands in for the recogniser pool: answers with the transcript the case names."""

    def __init__(self, transcript=None, error: Exception | None = None) -> None:
        self.transcript, self.error = transcript, error

    def transcribe(self, audio, expect=None, timeout: float = 10.0):
        if self.error is not None:
            raise self.error
        return self.transcript


def _heard(text: str, confidence: float, no_speech: bool = False):
    return Transcript(text, text, confidence, 0, 1, 1, 0.01, "fake", no_speech=no_speech)


def _wav(seconds: float = 0.5) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(b"\0\0" * int(16000 * seconds))
    return out.getvalue()


def _speech_kiosk(pool):
    assistant = SimpleNamespace(status=lambda channel, sender: ConversationStatus(),
                                handle=lambda message: [Reply(f"收到：{message.text}")])
    voice = SimpleNamespace(pool=pool, config=VoiceConfig(), pieces=lambda text: [], prepare=lambda piece: None)
    runtime = SimpleNamespace(domain=Domain(_domain_doc()), assistant=assistant, voice=voice)
    app = Flask(__name__)
    app.register_blueprint(kiosk_channel.make_blueprint(runtime))
    return app.test_client(), runtime.domain


@pytest.mark.parametrize("pool, body, status, error, response", [
    (None, _wav(), 503, "asr_unavailable", "utter_kiosk_asr_unavailable"),
    (_FakePool(), b"", 400, "invalid_audio", "utter_kiosk_audio_missing"),
    (_FakePool(), b"not a wav", 400, "invalid_audio", "utter_kiosk_audio_unreadable"),
    (_FakePool(error=TimeoutError()), _wav(), 503, "asr_timeout", "utter_kiosk_asr_timeout"),
])
def test_speech_refusals_say_the_domain_sentence(pool, body, status, error, response):
    client, domain = _speech_kiosk(pool)
    answer = client.post(f"/kiosk/api/speech?session={SESSION}", data=body)
    assert answer.status_code == status
    assert answer.get_json() == {"error": error, "detail": domain.render(response).text}


def test_speech_that_was_not_heard_or_not_sure_is_asked_again_in_domain_words():
    client, domain = _speech_kiosk(_FakePool(_heard("", 0.0, no_speech=True)))
    quiet = client.post(f"/kiosk/api/speech?session={SESSION}", data=_wav()).get_json()
    assert quiet["heard"] == "" and quiet["replies"][0]["text"] == domain.render("utter_kiosk_no_speech").text

    client, domain = _speech_kiosk(_FakePool(_heard("我要订饭", 0.2)))
    unsure = client.post(f"/kiosk/api/speech?session={SESSION}", data=_wav()).get_json()
    [question] = unsure["replies"]
    assert question["text"] == domain.render("utter_kiosk_did_you_say", {"heard": "我要订饭"}).text
    assert "我要订饭" in question["text"]
    # "是的" sends what was heard as the resident's answer; the other button asks again.
    assert [b["payload"] for b in question["buttons"]] == ["我要订饭", "/repeat"]

    client, _ = _speech_kiosk(_FakePool(_heard("我要订饭", 0.9)))
    sure = client.post(f"/kiosk/api/speech?session={SESSION}", data=_wav()).get_json()
    assert sure["heard"] == "我要订饭" and sure["replies"][0]["text"] == "收到：我要订饭"


def test_kiosk_refuses_to_start_without_its_sentences():
    doc = _domain_doc()
    del doc["responses"]["utter_kiosk_asr_timeout"]
    with pytest.raises(ValueError, match="utter_kiosk_asr_timeout"):
        kiosk_channel.make_blueprint(SimpleNamespace(domain=Domain(doc)))
