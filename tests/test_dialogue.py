"""Conversations through the real core (trained NLU, dialogue, SQLite store): every form path."""
from __future__ import annotations

import re

import pytest

from core_fixtures import make_id, wrong_check

REF = re.compile(r"编号[是：:\s]*(\d{8})")


def submit_senior_card(c, name: str = "王建国", birth: str = "19450302") -> str:
    """Runs a senior-card application on a channel that knows the caller's phone."""
    c.say("办老年证")
    c.say(make_id(birth))
    c.say(name)
    return reference_in(c.say("对"))


def reference_in(text: str) -> str:
    match = REF.search(text)
    assert match, f"no reference number in: {text}"
    return match.group(1)


def test_senior_card_happy_path_asks_one_thing_at_a_time_and_reads_back(talk, runtime):
    c = talk()
    assert "身份证" in c.say("我想办个老年证")
    assert c.last.expects == "id_number"
    id_number = make_id("19450302")
    assert "名字" in c.say(f"身份证号是{id_number}")
    assert "电话" in c.say("我叫王建国")
    confirm = c.say("13800138000")
    assert "王建国" in confirm and f"尾号{id_number[-4:]}" in confirm and "138 0013 8000" in confirm
    assert c.last.expects == "confirm"
    assert [b.payload for b in c.last.buttons][:2] == ["/affirm", "/deny"]
    done = c.say("对的")
    reference = reference_in(done)
    assert "受理编号" in done
    # the spoken version says the reference digit by digit
    assert any("，" in (r.speech or "") and "幺" in (r.speech or "") or "编号是" in (r.speech or "")
               for r in c.replies)
    case = runtime.backend.get_case(reference)
    assert case.category == "apply_senior_card" and case.status == "submitted"


def test_bad_id_checksum_is_explained_and_asked_again(talk):
    c = talk()
    c.say("办老年证")
    good = make_id("19400101")
    assert "最后一位对不上" in c.say(wrong_check(good))
    assert c.last.expects == "id_number"
    assert "名字" in c.say(good)


def test_id_number_too_short_says_how_many_digits_were_heard(talk):
    c = talk()
    c.say("我要申请高龄津贴")
    reply = c.say("身份证号是11010119400101")
    assert "18位" in reply


def test_spoken_id_digits_with_cha_for_x(talk):
    c = talk()
    c.say("办老年证")
    number = next(make_id("19480707", seq=f"{i:03d}") for i in range(1000) if make_id("19480707", seq=f"{i:03d}").endswith("X"))
    spoken = "".join("零幺二三四五六七八九"[int(ch)] if ch.isdigit() else "叉" for ch in number)
    assert "名字" in c.say(spoken)


def test_too_young_for_elderly_allowance_is_told_kindly_what_to_do(talk, runtime):
    c = talk()
    c.say("我想申请高龄津贴")
    reply = c.say(make_id("19560101"))
    assert "80" in reply and "70岁" in reply
    assert c.last.expects == "menu"
    # the form ended: the next sentence is understood fresh
    assert "身份证" in c.say("那我办个老年证吧")


def test_deny_then_name_the_slot_then_correct_it(talk, runtime):
    c = talk()
    c.say("办老年证")
    c.say(make_id("19450302"))
    c.say("王建国")
    c.say("13800138000")
    assert "哪一项" in c.say("不对")
    assert "电话" in c.say("电话")
    confirm = c.say("13912345678")
    assert "139 1234 5678" in confirm and "王建国" in confirm
    reference = reference_in(c.say("对"))
    assert runtime.backend.get_case(reference) is not None


def test_correction_with_value_in_the_same_sentence(talk):
    c = talk(phone="13800138000")
    c.say("明天中午订两份饭，送到幸福小区3栋2单元501")
    assert "2份" in c.text and "幸福小区3栋2单元501" in c.text and c.last.expects == "confirm"
    confirm = c.say("不对，要三份")
    assert "3份" in confirm and "2份" not in confirm
    assert "预约编号" in c.say("对")


def test_meal_booking_asks_for_missing_pieces_and_skips_address_for_dine_in(talk):
    c = talk(phone="13800138000")
    assert "哪一天" in c.say("我想订饭")
    assert "午餐还是晚餐" in c.say("后天")
    assert "几份" in c.say("中午")
    assert "送到家里" in c.say("一份")
    confirm = c.say("去食堂吃")
    assert "到食堂吃" in confirm and "送到" not in confirm and "138 0013 8000" in confirm


def test_channel_phone_is_not_asked_but_is_read_back(talk):
    c = talk(phone="13800138000")
    c.say("办老年证")
    c.say(make_id("19450302"))
    confirm = c.say("李秀英")
    assert c.last.expects == "confirm" and "138 0013 8000" in confirm


def test_a_phone_number_said_with_the_word_电话_fills_the_slot_not_a_handoff(talk):
    c = talk()
    c.say("办老年证")
    c.say(make_id("19450302"))
    c.say("王建国")
    confirm = c.say("电话136 5550 1234")
    assert not c.last.handoff and c.last.expects == "confirm" and "136 5550 1234" in confirm
    c = talk(sender="u2")  # a clear request for a person still wins, number or not
    c.say("办老年证")
    c.say(make_id("19450302"))
    c.say("王建国")
    c.say("我要转人工，我电话13655501234")
    assert c.last.handoff


def test_cancel_inside_form_submits_nothing(talk, runtime):
    c = talk()
    c.say("我要开居住证明")
    c.say(make_id("19500505"))
    assert "取消" in c.say("算了不办了")
    assert c.last.expects == "menu"
    assert runtime.backend.progress(reference="10000000") == []


def test_human_mid_form_creates_handoff_with_form_so_far(talk, runtime):
    c = talk()
    c.say("申请残疾人补贴")
    c.say(make_id("19520303"))
    reply = c.say("转人工")
    assert c.last.handoff and not c.last.urgent
    reference = reference_in(reply)
    case = runtime.backend.get_case(reference)
    assert case.kind == "handoff"
    assert case.fields.get("form_name") == "apply_disability_subsidy" or "apply_disability_subsidy" in str(case.fields)


def test_emergency_mid_form_is_urgent_and_advises_120(talk, runtime):
    c = talk()
    c.say("订饭")
    reply = c.say("哎呀我老伴摔倒了起不来了")
    assert c.last.handoff and c.last.urgent
    assert "120" in reply


@pytest.mark.parametrize(
    ("text", "advice"),
    [("家里一股煤气味", "阀门"), ("楼下着火了", "119"), ("我胸口疼喘不上气", "120")],
)
def test_emergency_advice_depends_on_the_emergency(talk, text, advice):
    c = talk()
    assert advice in c.say(text)
    assert c.last.urgent


def test_repeat_says_the_last_prompt_again_in_slower_words(talk):
    c = talk()
    first = c.say("办老年证")
    again = c.say("你说啥，再说一遍")
    assert "再说一遍" in again
    assert "身份证" in again and again != first
    assert c.last.expects == "id_number"


def test_two_misunderstandings_offer_a_human_and_yes_hands_over(talk):
    c = talk()
    c.say("呜哩哇啦咕噜咕噜")
    assert "人工" in c.text
    offer = c.say("叽里咕噜")
    assert "转工作人员" in offer and c.last.expects == "yes_no"
    c.say("要")
    assert c.last.handoff


def test_misunderstood_slot_answers_never_loop_forever(talk):
    c = talk()
    c.say("办老年证")
    c.say("12345")
    c.say("6789")
    assert c.last.expects == "yes_no"
    c.say("不要")
    assert c.last.expects == "id_number"


def test_check_progress_by_reference_and_by_caller_phone(talk):
    reference = submit_senior_card(talk(phone="13800138000"))
    other = talk(sender="someone-else")
    status = other.say(f"查一下受理编号{reference}")
    assert reference in status and "已受理" in status
    same_phone = talk(sender="u2", phone="13800138000")
    assert reference in same_phone.say("我办的事到哪一步了")


def test_progress_by_a_typed_phone_does_not_reveal_someone_elses_cases(talk):
    reference = submit_senior_card(talk(phone="13800138000"))
    stranger = talk(sender="stranger")
    stranger.say("查进度")
    assert reference not in stranger.say("13800138000")


def test_check_progress_inside_a_form_then_continue(talk):
    c = talk()
    c.say("办老年证")
    c.say(make_id("19450302"))
    reply = c.say("我上次的申请进度怎么样了")
    assert "接着" in reply and c.last.expects == "name"


def test_family_member_without_consent_is_told_how_to_get_it(talk, runtime):
    c = talk(phone="13900001111")
    reply = c.say("我想帮我妈办老年证")
    assert c.last.expects == "menu" and "/family_proxy" in [b.payload for r in c.replies for b in r.buttons]
    assert "代办" in reply or "同意" in reply


def test_family_member_with_the_parents_consent_files_in_her_name(talk, runtime):
    child = talk(phone="13900001111")
    child.say("我想绑定亲情号，帮我妈办事")
    child.say("我是她女儿")
    child.say("13700002222")
    child.say("对")
    outcome = runtime.proxies.handle_sms("13700002222", "1")  # the mother agrees from her own phone
    assert outcome.handled
    c = talk(sender="u-proxy", phone="13900001111")
    c.say("我想帮我妈办老年证")
    c.say(make_id("19440808"))
    assert "老人叫什么" in c.text
    c.say("张秀兰")
    assert "电话" in c.text and c.last.expects == "phone"  # the child's number is not the mother's
    c.say("13700002222")
    reference = reference_in(c.say("对"))
    case = runtime.backend.get_case(reference)
    assert case.category == "apply_senior_card"


def test_family_proxy_request(talk):
    c = talk(phone="13900001111")
    c.say("我想绑定亲情号，帮我爸办事")
    assert c.last.expects == "relation"
    c.say("我是他儿子")
    c.say("13700002222")
    confirm = c.text
    assert "儿子" in confirm and "137 0000 2222" in confirm
    assert "同意" in c.say("对")


def test_report_issue_by_text(talk, runtime):
    c = talk(phone="13800138000")
    c.say("我要报修")
    c.say("路灯坏了，晚上黑漆漆的")
    confirm = c.say("幸福小区3栋门口")
    assert "路灯" in confirm and "3栋" in confirm
    reference = reference_in(c.say("对"))
    assert runtime.backend.get_case(reference).kind == "ticket"


def test_home_service_and_escort_bookings(talk):
    c = talk(phone="13800138000")
    c.say("想请人上门打扫卫生")
    c.say("下周三")
    confirm = c.say("幸福小区5栋1单元302")
    assert "保洁" in confirm and c.last.expects == "confirm"
    assert "预约编号" in c.say("好的")
    e = talk(sender="u3", phone="13800138000")
    e.say("我要预约陪诊")
    e.say("市第一人民医院")
    e.say("明天")
    confirm = e.say("上午八点")
    assert "人民医院" in confirm and "上午8点" in confirm


def test_booking_date_in_the_past_is_refused(talk):
    c = talk(phone="13800138000")
    c.say("订饭")
    assert "过去" in c.say("昨天")
    assert c.last.expects == "date"


def test_duplicate_delivery_gets_the_same_answer_and_creates_nothing_new(talk, runtime):
    c = talk(phone="13800138000")
    c.say("办老年证")
    c.say(make_id("19450302"))
    c.say("王建国")
    first = c.say("对", message_id="SM1")
    again = c.say("对", message_id="SM1")
    assert first == again
    assert len(runtime.backend.progress(phone="13800138000")) == 1


def test_submit_failure_keeps_the_form_and_a_retry_submits_once(talk, runtime, monkeypatch):
    c = talk(phone="13800138000")
    c.say("办老年证")
    c.say(make_id("19450302"))
    c.say("王建国")
    original = runtime.backend.submit_case

    def broken(request):
        raise RuntimeError("database is down")

    monkeypatch.setattr(runtime.backend, "submit_case", broken)
    reply = c.say("对")
    assert "都还在" in reply and c.last.expects == "confirm"
    monkeypatch.setattr(runtime.backend, "submit_case", original)
    reference = reference_in(c.say("对"))
    assert runtime.backend.get_case(reference) is not None


def test_greet_goodbye_and_out_of_scope(talk):
    c = talk()
    assert "您好" in c.say("你好")
    assert c.last.buttons
    assert "帮不上" in c.say("明天天气怎么样")
    c.say("好了没事了，再见")
    assert c.last.end_session


def test_button_payloads_bypass_the_classifier(talk):
    c = talk(phone="13800138000")
    c.say("/book_meal")
    assert c.last.expects == "date"
    c.say("明天")
    c.say("中午")
    c.say("1")
    c.say('/book_meal{"meal_mode": "dine_in"}')
    assert "到食堂吃" in c.text


def test_empty_message_is_answered_kindly(talk):
    c = talk()
    assert "没听到" in c.say("   ")
    assert "人工" in c.text


def test_state_survives_a_new_assistant_on_the_same_session_store(talk, runtime, settings_env, nlu, clock):
    from assistant.config import load_settings
    from runtime.container import build_runtime

    c = talk()
    c.say("办老年证")
    c.say(make_id("19450302"))
    restarted = build_runtime(load_settings(settings_env), clock=clock, nlu=nlu, sessions=runtime.sessions)
    from core_fixtures import Conversation

    again = Conversation(restarted, sender="u1")
    assert "电话" in again.say("王建国")


def test_a_turn_waiting_for_a_busy_conversation_gets_a_kind_answer(talk, runtime):
    import threading

    runtime.assistant.lock_timeout_seconds = 0.2
    key = runtime.assistant.session_key("rest", "busy")
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with runtime.sessions.lock(key):
            held.set()
            release.wait(5)

    worker = threading.Thread(target=hold)
    worker.start()
    held.wait(5)
    try:
        assert "稍等" in talk(sender="busy").say("办老年证")
    finally:
        release.set()
        worker.join()
    assert "身份证" in talk(sender="busy").say("办老年证")  # nothing was lost or half-done


def test_whole_conversation_on_postgres(settings_env, nlu, clock, db_url):
    from assistant.config import load_settings
    from core_fixtures import Conversation
    from runtime.container import build_runtime

    runtime = build_runtime(load_settings({**settings_env, "DATABASE_URL": db_url}), clock=clock, nlu=nlu)
    reference = submit_senior_card(Conversation(runtime, phone="13800138000"))
    assert runtime.backend.get_case(reference).status == "submitted"
    again = Conversation(runtime, sender="u9", phone="13800138000")
    assert reference in again.say("查一下我的进度")


def test_terminal_chat_command(model_dir, nlu, tmp_path):
    import os
    import subprocess
    import sys

    from assistant.config import ROOT

    env = {**os.environ, "MODEL_DIR": str(model_dir), "DATA_DIR": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "assistant", "chat", "--phone", "13800138000"],
                         input="你好\n订饭\n/quit\n", capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert run.returncode == 0
    assert "助手：您好" in run.stdout and "哪一天" in run.stdout
    upgrade = subprocess.run([sys.executable, "-m", "assistant", "db", "upgrade"], capture_output=True, text=True,
                             cwd=ROOT, env=env, timeout=120)
    assert upgrade.returncode == 0 and "head" in upgrade.stdout


def test_known_residents_address_and_name_are_not_asked_again(talk):
    first = talk(phone="13800138000")
    first.say("我要开居住证明")
    first.say(make_id("19450302"))
    first.say("王建国")
    first.say("幸福小区3栋2单元501")
    first.say("孙子上学用")
    reference_in(first.say("对"))
    later = talk(sender="later", phone="13800138000")
    later.say("明天中午订一份饭送到家")
    assert later.last.expects == "confirm"  # address came from the resident record
    assert "幸福小区3栋2单元501" in later.text


def test_a_domain_missing_a_forms_read_back_is_refused_at_start_naming_it():
    from datetime import datetime

    import yaml

    from assistant.config import ROOT
    from assistant.dialogue.domain import Domain
    from assistant.dialogue.engine import DialogueEngine, DialogueSettings

    doc = yaml.safe_load((ROOT / "domain.yml").read_text(encoding="utf-8"))
    DialogueEngine(Domain(doc), None, DialogueSettings(), datetime.now)  # complete: starts
    del doc["responses"]["utter_confirm_apply_senior_card"]
    doc["forms"]["apply_senior_card"]["required_slots"].append("meal_time")
    for name in [n for n in doc["responses"] if n.endswith("_meal_time")]:
        del doc["responses"][name]
    with pytest.raises(ValueError) as refused:
        DialogueEngine(Domain(doc), None, DialogueSettings(), datetime.now)
    message = str(refused.value)
    assert "utter_confirm_apply_senior_card" in message and "read back" in message
    assert "utter_ask_meal_time" in message and "apply_senior_card asks for meal_time" in message


def test_terminal_refuses_a_domain_without_its_lines_naming_the_missing_one():
    from assistant.dialogue.domain import Domain
    from channels.terminal import TerminalLines

    with pytest.raises(ValueError, match="utter_terminal_chat_help"):
        TerminalLines(Domain({"responses": {"utter_terminal_you": [{"text": "您："}]}}))
