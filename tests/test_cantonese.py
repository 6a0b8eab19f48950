"""Replies in Cantonese (issue 20): the wording exists for every sentence, a conversation and a
phone call run end to end in Cantonese in the terminal simulator, a stored preference is used on
the next call, and SMS stay standard written Chinese unless the resident asks by SMS."""
from __future__ import annotations

import io
import string
from pathlib import Path

import pytest
import yaml

from assistant.dialogue import language
from assistant.dialogue.domain import Domain
from assistant.ivr import IvrFlow
from assistant.types import UserMessage
from channels.terminal import run_call, run_chat

ROOT = Path(__file__).resolve().parents[1]


def placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_every_response_has_cantonese_wording_with_the_same_placeholders():
    zh = yaml.safe_load((ROOT / "domain.yml").read_text(encoding="utf-8"))["responses"]
    yue = yaml.safe_load((ROOT / "domain.yue.yml").read_text(encoding="utf-8"))["responses"]
    assert set(yue) == set(zh)
    for name, variants in zh.items():
        assert len(yue[name]) == len(variants), name
        for mandarin, cantonese in zip(variants, yue[name], strict=True):
            for part in ("text", "slow", "speech"):
                assert (part in mandarin) == (part in cantonese), (name, part)
                if part in mandarin:
                    assert placeholders(mandarin[part]) == placeholders(cantonese[part]), (name, part)
                    assert cantonese[part] != mandarin[part] or not language.sounds_cantonese(cantonese[part]), name
    # Written as Cantonese speakers say it: Cantonese words in most sentences, not swapped characters.
    spoken = sum(language.sounds_cantonese(v["text"]) for vs in yue.values() for v in vs)
    assert spoken / sum(len(vs) for vs in yue.values()) > 0.6
    for name in ("utter_greet", "utter_default", "utter_out_of_scope"):
        assert "人工" in yue[name][0]["text"], name  # the way to a person survives translation


def test_every_ivr_sentence_has_cantonese_wording():
    flow = IvrFlow.load(ROOT / "ivr_flows" / "main.yml")
    yue = flow.spoken("yue")
    assert yue is not flow and yue.keys == flow.keys and set(yue.steps) == set(flow.steps)
    assert yue.greeting != flow.greeting and yue.hint != flow.hint
    for name, step in flow.steps.items():
        assert yue.steps[name].prompt != step.prompt and "撳" in yue.steps[name].prompt
    doc = yaml.safe_load((ROOT / "ivr_flows" / "main.yue.yml").read_text(encoding="utf-8"))
    assert set(doc["messages"]) == set(flow.messages)
    for key, text in flow.messages.items():
        assert placeholders(yue.messages[key]) == placeholders(text), key


@pytest.mark.parametrize(("text", "wanted"), [
    ("讲广东话", "yue"), ("我想讲粤语", "yue"), ("讲普通话", "zh"), ("办老年证", None),
    ("我想问下普通话培训班几时开始报名同埋要交几多钱", None),  # long: a question about something else
])
def test_an_explicit_switch_is_recognised(text, wanted):
    assert language.requested(text) == wanted


def test_cantonese_heard_is_confirmed_then_the_request_goes_on_in_cantonese(runtime):
    domain: Domain = runtime.domain
    out = io.StringIO()
    run_chat(runtime, io.StringIO("我屋企楼下盏街灯坏咗好耐喇\n係\n阳光小区3栋门口\n啱\n/quit\n"), out,
             sender="yue-1", phone="13800138005")
    said = out.getvalue()
    assert domain.render("utter_offer_cantonese").text in said  # asked once, in Mandarin
    assert domain.render("utter_language_yue", language="yue").text in said
    assert domain.render("utter_confirm_buttons", language="yue").text in said  # the read-back, in Cantonese
    assert "受理编号" in said and "请你记低" in said  # the acknowledgement, in Cantonese
    assert said.count(domain.render("utter_offer_cantonese").text) == 1
    # The next conversation from that phone starts in Cantonese without asking.
    turn = runtime.assistant.turn(UserMessage("yue-2", "你好", "rest", phone="13800138005"))
    assert turn.replies[0].text == domain.render("utter_greet", language="yue").text
    assert turn.status.language == "yue"


def test_the_message_kept_through_the_language_question_is_in_the_transcript_once(runtime):
    core = runtime.assistant
    first = "我屋企楼下盏街灯坏咗好耐喇"
    core.turn(UserMessage("yue-3", first, "rest"))
    core.turn(UserMessage("yue-3", "係", "rest"))
    transcript = core.sessions.load(core.session_key("rest", "yue-3"))["transcript"]
    users = [text for role, text in transcript if role == "user"]
    assert users == [first, "係"]


def test_a_phone_call_runs_in_cantonese_and_the_next_call_is_greeted_in_it(runtime):
    flow = runtime.ivr_flow
    out = io.StringIO()
    run_call(runtime, io.StringIO("讲广东话\n3\n阳光小区5栋楼梯灯唔着\n1\n/hangup\n"), out, caller="13800138006",
             sender="CAyue0001")
    said = out.getvalue()
    assert flow.greeting in said  # before the switch
    assert flow.spoken("yue").messages["more"] in said
    assert "啱唔啱？啱，请撳1" in said and "受理编号係" in said
    out = io.StringIO()
    run_call(runtime, io.StringIO("/hangup\n"), out, caller="13800138006", sender="CAyue0002")
    assert flow.spoken("yue").greeting in out.getvalue()
    assert flow.spoken("yue").steps[flow.start].prompt in out.getvalue()


def test_sms_stay_standard_chinese_unless_asked_by_sms(runtime):
    domain: Domain = runtime.domain
    store = runtime.assistant.languages
    voice = runtime.assistant.turn(UserMessage("CAyue0003", "讲广东话", "voice", phone="13800138007"))
    assert voice.status.language == "yue"
    assert store.language_for("13800138007", "voice") == "yue" and store.language_for("13800138007", "sms") is None
    sms = runtime.assistant.turn(UserMessage("13800138007", "你好", "sms", phone="13800138007"))
    assert sms.replies[0].text == domain.render("utter_greet").text  # standard written Chinese
    sms = runtime.assistant.turn(UserMessage("13800138007", "佢哋几时嚟？", "sms", phone="13800138007"))
    assert sms.replies[0].name != "utter_offer_cantonese"  # never detected on SMS
    asked = runtime.assistant.turn(UserMessage("13800138007", "讲广东话", "sms", phone="13800138007"))
    assert asked.status.language == "yue" and store.language_for("13800138007", "sms") == "yue"


def test_no_question_inside_a_form_and_never_before_an_emergency(runtime):
    turn = runtime.assistant.turn(UserMessage("yue-3", "办老年证", "rest"))
    assert turn.status.in_form
    turn = runtime.assistant.turn(UserMessage("yue-3", "我唔记得身份证号", "rest"))
    assert all(r.name != "utter_offer_cantonese" for r in turn.replies)
    urgent = runtime.assistant.turn(UserMessage("yue-4", "我阿妈跌倒咗，佢起唔到身", "rest"))
    assert urgent.handoff and all(r.name != "utter_offer_cantonese" for r in urgent.replies)


def test_something_else_instead_of_an_answer_keeps_mandarin_and_is_handled(runtime):
    first = runtime.assistant.turn(UserMessage("yue-5", "佢哋几时嚟？", "rest"))
    assert first.replies[0].name == "utter_offer_cantonese"
    turn = runtime.assistant.turn(UserMessage("yue-5", "我要订饭", "rest"))
    assert turn.status.language == "zh" and turn.status.in_form
    again = runtime.assistant.turn(UserMessage("yue-6", "唔该", "rest"))
    assert again.replies[0].name == "utter_offer_cantonese"
    no = runtime.assistant.turn(UserMessage("yue-6", "不用", "rest"))
    assert no.status.language == "zh" and no.replies[0].name == "utter_language_zh"
