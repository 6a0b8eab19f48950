"""Identity on open channels (issue 17 B), through the real app: REST and the kiosk have no
verified caller, so an ID number typed there reveals nothing and changes no resident record;
the same open application is not filed twice; progress is never asked by a phone it would
refuse. And after an SMS application and a hand-over, the SQLite files hold no phone or ID
digits in the clear (idempotency keys included)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from fixtures.twilio_world import RESIDENT
from sqlalchemy import func, select

from assistant.dialogue.render import spell_digits
from backend.infra.audit_chain import AuditEntry
from backend.infra.models import Application, Handoff
from channels.app import create_app
from core_fixtures import make_id

SENIOR_ID = make_id("19440808", seq="016")
SENIOR_NAME = "张秀兰"
SENIOR_PHONE = "13700002222"
KIOSK = "cd" * 12
REF = re.compile(r"编号[是：:\s]*(\d{8})")


@pytest.fixture
def app(runtime):
    client = create_app(runtime).test_client()
    yield client
    runtime.voice.close()  # kiosk replies queued for synthesis


def rest(client, sender: str, message: str) -> tuple[str, list[dict]]:
    body = client.post("/webhooks/rest/webhook", json={"sender": sender, "message": message}).get_json()
    return "".join(item["text"] for item in body), body


def kiosk(client, text_: str, session: str = KIOSK) -> tuple[str, dict]:
    body = client.post("/kiosk/api/turn", json={"session": session, "text": text_}).get_json()
    return "".join(r["text"] for r in body["replies"]), body


def expects(body: list[dict]) -> str | None:
    return body[-1].get("custom", {}).get("expects")


@pytest.fixture
def registered(talk):
    """张秀兰 is on record: she applied for a residence certificate by SMS from her own phone."""
    c = talk(sender=SENIOR_PHONE, channel="sms", phone=SENIOR_PHONE)
    c.say("我要开居住证明")
    c.say(SENIOR_ID)
    c.say(SENIOR_NAME)
    c.say("幸福小区3栋2单元501")
    c.say("办养老金用")
    assert REF.search(c.say("对"))


def assert_reveals_nothing(reply: str) -> None:
    for secret in (SENIOR_NAME, "秀兰", SENIOR_PHONE, "137 0000 2222", "2222", "幸福小区"):
        assert secret not in reply, f"{secret!r} revealed: {reply}"


def test_rest_id_number_reveals_nothing_and_corrections_wait_for_staff(app, runtime, registered):
    reply, body = rest(app, "anon", "我想办老年证")
    reply, body = rest(app, "anon", f"身份证号是{SENIOR_ID}")
    assert_reveals_nothing(reply)
    assert expects(body) == "name" and "名字" in reply  # asked, not read out from the record
    rest(app, "anon", SENIOR_NAME)  # whoever it is may know her name: still nothing is read out
    confirm, body = rest(app, "anon", "13900001111")
    assert expects(body) == "confirm" and "137 0000 2222" not in confirm
    reply, body = rest(app, "anon", "名字不对")
    assert expects(body) == "name"
    confirm, _ = rest(app, "anon", "李桂芳")
    assert "李桂芳" in confirm
    done, _ = rest(app, "anon", "对")
    reference = REF.search(done).group(1)

    # the resident record is untouched; the case carries the correction for staff
    record = runtime.backend.find_resident(id_number=SENIOR_ID)
    assert record.name == SENIOR_NAME and record.extra["phone_masked"] == "137****2222"
    case = runtime.backend.get_case(reference)
    assert case.fields["pending_correction"] == {"name": "李桂芳", "phone": "13900001111"}
    with runtime.db_sessions() as session:
        details = session.scalars(select(AuditEntry.detail).where(AuditEntry.entity_type == "application")).all()
    assert any('"pending_correction":["name","phone"]' in d for d in details)
    assert not any("李桂芳" in d or "13900001111" in d for d in details)  # field names only

    # staff confirm: only now does the record change
    assert runtime.backend.confirm_correction(reference, "staff:wang") == ["phone", "name"]
    assert runtime.backend.find_resident(id_number=SENIOR_ID).name == "李桂芳"
    assert "pending_correction" not in runtime.backend.get_case(reference).fields


def test_kiosk_id_number_reveals_nothing(app, runtime, registered):
    kiosk(app, "/apply_elderly_allowance")
    reply, body = kiosk(app, SENIOR_ID)
    assert_reveals_nothing(reply)
    assert body["expects"] == "name"


def test_caller_id_of_the_registered_phone_verifies_and_another_phone_does_not(talk, registered):
    own = talk(sender="call-1", channel="voice", phone=SENIOR_PHONE)
    own.say("办高龄津贴")
    confirm = own.say(SENIOR_ID)
    assert own.last.expects == "confirm" and SENIOR_NAME in confirm  # her own phone: prefilled
    other = talk(sender="+8613900001111", channel="sms", phone="13900001111")
    other.say("办高龄津贴")
    reply = other.say(SENIOR_ID)
    assert other.last.expects == "name"
    assert_reveals_nothing(reply)


def test_same_open_application_is_answered_with_its_reference_not_filed_again(app, runtime):
    new_id = make_id("19450302", seq="031")

    def apply(sender: str) -> tuple[str, list[dict]]:
        rest(app, sender, "办老年证")
        rest(app, sender, new_id)
        rest(app, sender, "王建国")
        rest(app, sender, "13800138000")
        return rest(app, sender, "对")

    first, _ = apply("same-sender")
    reference = REF.search(first).group(1)
    for _ in range(2):
        again, body = apply("same-sender")
        assert "您已经申请过了" in again and reference in again
        assert expects(body) == "menu"

    # on the kiosk, someone else typing the same ID learns that it exists, not its reference
    kiosk(app, "办老年证")
    kiosk(app, new_id)
    kiosk(app, "王建国")
    kiosk(app, "13800138000")
    reply, body = kiosk(app, "对")
    assert "已经有一份老年证申请在办理中" in reply and reference not in reply
    assert not re.search(r"\d{8}", reply)
    with runtime.db_sessions() as session:
        count = session.scalar(select(func.count()).select_from(Application)
                               .where(Application.category == "apply_senior_card"))
    assert count == 1


def test_duplicate_reference_is_spoken_digit_by_digit(talk):
    c = talk(sender="call-7", channel="voice", phone="13800138000")
    for _ in range(2):
        c.say("办老年证")
        c.say(make_id("19450302", seq="047"))
        c.say("王建国")
        c.say("对")
    assert "您已经申请过了" in c.text
    reference = REF.search(c.text).group(1)
    speech = "".join(r.speech or "" for r in c.replies)
    assert spell_digits(reference) in speech and reference not in speech


@pytest.mark.parametrize("channel", ["rest", "kiosk"])
def test_progress_on_an_open_channel_asks_for_the_reference_only(app, runtime, talk, channel):
    c = talk(sender="call-9", channel="voice", phone="13800138000")
    c.say("办老年证")
    c.say(make_id("19450302", seq="055"))
    c.say("王建国")
    reference = REF.search(c.say("对")).group(1)

    def say(message: str) -> tuple[str, str | None]:
        if channel == "rest":
            reply, body = rest(app, "progress-anon", message)
            return reply, expects(body)
        reply, body = kiosk(app, message, session="ef" * 12)
        return reply, body["expects"]

    reply, expected = say("查进度")
    assert expected == "progress_key"
    assert "受理编号" in reply and "登记的手机" in reply
    assert "说您登记的手机号" not in reply and "或者说您的手机号" not in reply  # not asked, then refused
    reply, _ = say(reference)
    assert reference in reply and "已受理" in reply
    # inside a form, the same question gets the same honest answer
    say("办高龄津贴")
    reply, expected = say("我上次的申请进度怎么样了")
    assert "受理编号" in reply and expected == "id_number"


def test_sms_application_and_handoff_leave_no_phone_or_id_in_the_sqlite_files(sms, settings_env):
    id_number = make_id("19450302", seq="063")
    sms.send("办老年证")
    sms.send(id_number)
    sms.send("王建国")
    assert any(REF.search(m) for m in sms.send("对"))
    sms.send("我要找人工")
    runtime = sms.runtime
    with runtime.db_sessions() as session:
        keys = session.scalars(select(Application.idempotency_key)).all()
        keys += session.scalars(select(Handoff.idempotency_key)).all()
        assert len(keys) == 2 and all(k.startswith("k1:") for k in keys)
    db_file = Path(settings_env["DATABASE_URL"].removeprefix("sqlite:///"))
    files = [p for p in db_file.parent.iterdir() if p.name.startswith(db_file.name)]
    assert any(p.name.endswith("-wal") for p in files)
    blob = b"".join(p.read_bytes() for p in files)
    phone = RESIDENT.removeprefix("+86")
    for secret in (phone, RESIDENT, id_number, id_number[-8:], phone[3:]):
        for encoded in {secret.encode("utf-8"), secret.encode("utf-16-le")}:
            assert encoded not in blob, f"{secret!r} in clear in the SQLite files"
