"""SMS/MMS channel: recorded Twilio webhook requests → TwiML answer + rows in the store.

Each table row is one request as Twilio posts it (real field names, real signatures computed
with the SDK's RequestValidator) with the answer and the rows it must leave behind.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from fixtures.twilio_world import (
    AUTH_TOKEN,
    RESIDENT,
    RESIDENT_2,
    inbound_params,
    jpeg,
    message_sid,
    png,
    sign,
)
from PIL import Image
from sms_fixtures import PUBLIC_BASE_URL, SmsClient, reference_in, twiml_messages
from sqlalchemy import func, select

from backend.infra.models import SmsInbound, SmsOptOut, SmsOutbox, StatusEvent, Ticket, TicketMedia
from backend.messaging.sms_format import SEGMENT_CHARS, segments

WEBHOOK = "/webhooks/twilio/sms"


def _count(sms: SmsClient, model, *where) -> int:
    with sms.loop.desk._sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def _tickets(sms: SmsClient) -> list[Ticket]:
    with sms.loop.desk._sessions() as session:
        return list(session.scalars(select(Ticket).order_by(Ticket.id)))


# --- signatures ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("case", "make_signature"),
    [
        ("missing", lambda params: ""),
        ("forged with another token", lambda params: sign(PUBLIC_BASE_URL + WEBHOOK, params, "0" * 32)),
        ("signed for another URL", lambda params: sign("https://evil.example.org" + WEBHOOK, params)),
        ("body changed after signing", lambda params: sign(PUBLIC_BASE_URL + WEBHOOK, {**params, "Body": "别的"})),
    ],
)
def test_unsigned_or_forged_webhooks_are_refused_and_store_nothing(sms, case, make_signature, caplog):
    params = inbound_params("路灯坏了")
    response = sms.post(WEBHOOK, params, signature=make_signature(params))
    assert response.status_code == 403, case
    assert "signature" in caplog.text.lower()
    assert _count(sms, SmsInbound) == 0 and _count(sms, Ticket) == 0
    status = sms.post("/webhooks/twilio/sms/status", {"MessageSid": message_sid(), "MessageStatus": "failed"},
                      signature="bm90IGEgc2lnbmF0dXJl")
    assert status.status_code == 403


def test_signature_is_checked_on_the_public_url_behind_a_proxy(sms):
    params = inbound_params("你好")
    # The test client's own URL is http://localhost/…; only PUBLIC_BASE_URL's signature passes.
    assert sms.post(WEBHOOK, params, signature=sign("http://localhost" + WEBHOOK, params)).status_code == 403
    assert sms.post(WEBHOOK, params).status_code == 200


# --- the bad-input table ---------------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    params: Callable[[SmsClient], dict[str, str]]
    status: int = 200
    reply: str | None = None  # a piece of the TwiML answer
    tickets: int = 0
    media_rows: int = 0
    route: str | None = None  # the sms_inbound row's route
    followup: str | None = None  # a piece of the SMS sent after the job ran
    extra: dict = field(default_factory=dict)


def _media(sms: SmsClient, name: str, data: bytes, served_as: str = "image/jpeg") -> str:
    return sms.media.add(name, data, served_as)


CASES = [
    Case("0 media + empty body", lambda s: inbound_params(""), reply="没收到内容", route="rejected"),
    Case("whitespace and zero-width only", lambda s: inbound_params(" \u200b\u3000 "), reply="没收到内容",
         route="rejected"),
    Case("emoji only goes to the conversation", lambda s: inbound_params("🙂🙂🙂"), reply="人工",
         route="conversation"),
    Case("2,000-character text", lambda s: inbound_params("路灯" * 1000), reply="内容太长", route="rejected"),
    Case("10 media: first 3 kept", lambda s: inbound_params(
        "路灯坏了", media=[(_media(s, f"ten{i}.jpg", jpeg()), "image/jpeg") for i in range(10)]),
        reply="最多收3张", tickets=1, media_rows=3, route="report"),
    Case("wrong content type (video)", lambda s: inbound_params(
        "", media=[(_media(s, "clip.mp4", b"\x00\x00\x00\x18ftypmp42", "video/mp4"), "video/mp4")]),
        reply="只能收照片", route="rejected"),
    Case("vCard", lambda s: inbound_params(
        "", media=[(_media(s, "card.vcf", b"BEGIN:VCARD", "text/vcard"), "text/vcard")]),
        reply="只能收照片", route="rejected"),
    Case("URL outside the allow-list", lambda s: inbound_params(
        "井盖", media=[("https://198.51.100.7/x.jpg", "image/jpeg")]), reply="只能收照片", route="rejected"),
    Case("NumMedia without a MediaUrl", lambda s: inbound_params("", NumMedia="1"), reply="只能收照片",
         route="rejected"),
    Case("20 MB image", lambda s: inbound_params(
        "阳光小区3号楼路灯坏了", media=[(_media(s, "huge.jpg", b"\xff\xd8\xff\xe0" + b"\0" * (20 * 1024 * 1024)),
                                  "image/jpeg")]),
        reply="已收到您的照片报修", tickets=1, media_rows=1, route="report", followup="照片太大"),
    Case("non-image pretending to be JPEG", lambda s: inbound_params(
        "阳光小区3号楼路灯坏了", media=[(_media(s, "fake.jpg", b"<html>not a photo</html>"), "image/jpeg")]),
        reply="已收到您的照片报修", tickets=1, media_rows=1, route="report", followup="不是照片"),
    Case("redirect to a host outside the allow-list", lambda s: inbound_params(
        "阳光小区3号楼路灯坏了", media=[(s.media.url("redirect-1.jpg"), "image/jpeg")]),
        reply="已收到您的照片报修", tickets=1, media_rows=1, route="report", followup="链接不可信"),
    Case("GPS outside the service area", lambda s: inbound_params(
        "路灯坏了", media=[(_media(s, "shanghai.jpg", jpeg(gps=(31.2304, 121.4737))), "image/jpeg")]),
        reply="已收到您的照片报修", tickets=1, media_rows=1, route="report", followup="不在本社区范围"),
    Case("missing MessageSid", lambda s: {k: v for k, v in inbound_params("你好").items()
                                          if k not in {"MessageSid", "SmsSid", "SmsMessageSid"}}, status=400),
    Case("malformed MessageSid", lambda s: inbound_params("你好", sid="SM123"), status=400),
    Case("missing From", lambda s: {k: v for k, v in inbound_params("你好").items() if k != "From"}, status=400),
    Case("NumMedia not a number", lambda s: inbound_params("你好", NumMedia="many"), status=400),
    Case("NumMedia over Twilio's 10", lambda s: inbound_params("你好", NumMedia="11"), status=400),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_webhook_table(sms, case: Case):
    params = case.params(sms)
    response = sms.post(WEBHOOK, params)
    assert response.status_code == case.status, response.get_data(as_text=True)
    if case.status != 200:
        assert _count(sms, SmsInbound) == 0
        return
    messages = twiml_messages(response.get_data(as_text=True))
    assert messages and all(len(m) <= SEGMENT_CHARS for m in messages)
    assert case.reply in "".join(messages)
    assert _count(sms, Ticket) == case.tickets
    assert _count(sms, TicketMedia) == case.media_rows
    rows = _count(sms, SmsInbound, SmsInbound.route == case.route)
    assert rows == 1, f"expected one sms_inbound row routed {case.route}"
    if case.tickets:
        assert reference_in(messages[0]) == _tickets(sms)[0].reference  # the ack carries the reference
    sms.run_jobs(after_seconds=121)
    if case.followup:
        followups = "".join(sms.texts_to())
        assert case.followup in followups
        assert _tickets(sms)[0].reference in followups
    # Nothing crashed and nothing accepted was lost: the ticket is still there, in a known state.
    for ticket in _tickets(sms):
        assert ticket.status in {"routed", "categorised", "received"}


def test_redelivered_message_sid_gets_the_same_answer_and_creates_nothing(sms):
    url = sms.media.add("dup.jpg", jpeg())
    params = inbound_params("阳光小区3号楼路灯坏了", media=[(url, "image/jpeg")])
    first = sms.post(WEBHOOK, params).get_data(as_text=True)
    second = sms.post(WEBHOOK, params).get_data(as_text=True)
    assert first == second
    assert _count(sms, Ticket) == 1 and _count(sms, TicketMedia) == 1 and _count(sms, SmsInbound) == 1
    chat = inbound_params("你好")
    assert sms.post(WEBHOOK, chat).get_data(as_text=True) == sms.post(WEBHOOK, chat).get_data(as_text=True)
    assert _count(sms, SmsInbound) == 2


def test_concurrent_redeliveries_make_one_report(sms):
    url = sms.media.add("race.jpg", jpeg())
    params = inbound_params("阳光小区3号楼井盖松了", media=[(url, "image/jpeg")])
    answers: list[str] = []

    def deliver() -> None:
        client = sms.app.test_client()
        response = client.post(WEBHOOK, data=params,
                               headers={"X-Twilio-Signature": sign(PUBLIC_BASE_URL + WEBHOOK, params)})
        answers.append(response.get_data(as_text=True))

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(answers) == 4 and len(set(answers)) == 1
    assert _count(sms, Ticket) == 1 and _count(sms, TicketMedia) == 1


# --- photo reports -----------------------------------------------------------------------------------------
def test_photos_sent_one_by_one_are_one_report(sms):
    first = sms.send("", media=[(sms.media.add("w1.jpg", jpeg("red")), "image/jpeg")])
    reference = reference_in(first[0])
    second = sms.send("", media=[(sms.media.add("w2.jpg", jpeg("blue")), "image/jpeg")])
    assert "第2张" in second[0] and reference in second[0]
    words = sms.send("阳光小区3号楼 楼道灯不亮")  # the words for the photos, inside the window
    assert reference in words[0] and "补充" in words[0]
    assert _count(sms, Ticket) == 1 and _count(sms, TicketMedia) == 2
    assert sms.run_jobs(after_seconds=60) == 0  # window still open: the job waits
    sms.run_jobs(after_seconds=61)
    ticket = _tickets(sms)[0]
    assert ticket.status == "routed" and ticket.service_code == "property" and ticket.place == "阳光小区3号楼"
    assert ticket.department == "物业公司"
    texts = sms.texts_to()
    assert len(texts) == 1 and "物业维修" in texts[0] and reference in texts[0]
    # After the window, a new photo is a new report.
    later = sms.send("", media=[(sms.media.add("w3.jpg", jpeg("green")), "image/jpeg")])
    assert reference_in(later[0]) != reference and _count(sms, Ticket) == 2


def test_exif_gps_is_read_then_stripped_and_files_are_content_addressed(sms):
    photo = jpeg(gps=(39.9151, 116.4039))
    assert Image.open(__import__("io").BytesIO(photo)).getexif()  # the sent photo does carry EXIF
    sms.send("井盖松了", media=[(sms.media.add("gps.jpg", photo), "image/jpeg")])
    sms.send("井盖松了", sender=RESIDENT_2, media=[(sms.media.add("gps-copy.jpg", photo), "image/jpeg")])
    sms.run_jobs(after_seconds=121)
    with sms.loop.desk._sessions() as session:
        stored = list(session.scalars(select(TicketMedia).order_by(TicketMedia.id)))
    assert [m.state for m in stored] == ["stored", "stored"]
    assert stored[0].sha256 == stored[1].sha256  # same photo, one file
    assert abs(stored[0].latitude - 39.9151) < 1e-4 and abs(stored[0].longitude - 116.4039) < 1e-4
    path = sms.loop.desk.media.find(stored[0].sha256)
    assert path is not None and path.name == f"{stored[0].sha256}.jpg"
    import hashlib

    assert hashlib.sha256(path.read_bytes()).hexdigest() == stored[0].sha256
    assert not Image.open(path).getexif()  # no EXIF (GPS, camera make) in the stored copy
    first, second = _tickets(sms)
    assert first.location_source == "exif" and first.place == "阳光小区附近" and first.grid_id == "G01"
    assert second.status == "duplicate" and second.duplicate_of_id == first.id  # same spot, same day
    assert first.reference in "".join(sms.texts_to(RESIDENT_2))


def test_no_place_asks_one_question_and_the_answer_routes_by_grid(sms):
    reply = sms.send("电梯坏了", media=[(sms.media.add("lift.jpg", jpeg()), "image/jpeg")])
    reference = reference_in(reply[0])
    sms.run_jobs(after_seconds=121)
    asked = sms.texts_to()
    assert len(asked) == 1 and "在哪个小区哪栋楼" in asked[0] and reference in asked[0]
    assert _tickets(sms)[0].awaiting == "location"
    answer = sms.send("幸福里小区5栋")
    assert reference in answer[0]
    sms.run_jobs()
    ticket = _tickets(sms)[0]
    assert ticket.status == "routed" and ticket.place == "幸福里小区5号楼" and ticket.grid_id == "G02"
    assert ticket.department == "幸福里物业服务中心"  # the grid's own property company
    assert "幸福里物业服务中心" in sms.texts_to()[-1]


def test_unknown_category_goes_to_the_triage_queue(sms):
    sms.send("阳光小区3号楼 这个怎么办", media=[(sms.media.add("what.jpg", jpeg()), "image/jpeg")])
    sms.run_jobs(after_seconds=121)
    ticket = _tickets(sms)[0]
    assert ticket.status == "categorised" and ticket.service_code == "other" and ticket.department is None
    assert [v.reference for v in sms.loop.desk.search(triage=True)] == [ticket.reference]
    assert "尽快分派" in sms.texts_to()[0]


def test_ocr_reads_the_place_and_problem_from_the_photo(sms_env, nlu, clock, twilio_api, media_server):
    import os

    from fixtures.twilio_world import CJK_FONTS, text_photo
    from sms_fixtures import make_sms_runtime

    if not any(p.exists() for p in CJK_FONTS):
        message = "fonts-noto-cjk is not installed (apt-get install fonts-noto-cjk)"
        if os.environ.get("REQUIRE_SERVERS") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)

    runtime = make_sms_runtime(sms_env, nlu, clock, ocr=True)
    client = SmsClient(runtime, twilio_api, media_server, clock)
    reply = client.send("", media=[(media_server.add("sign.jpg", text_photo("和平小区7号楼 路灯坏了")), "image/jpeg")])
    reference = reference_in(reply[0])
    client.run_jobs(after_seconds=121)
    ticket = _tickets(client)[0]
    assert ticket.service_code == "municipal" and ticket.place == "和平小区7号楼" and ticket.location_source == "ocr"
    assert ticket.status == "routed" and ticket.department == "街道城管科"
    view = client.loop.desk.view(reference, actor="staff:test")
    assert "7号楼" in (view.private["ocr_text"] or "")


# --- keywords ------------------------------------------------------------------------------------------------
def test_opt_out_is_recorded_and_honoured_then_opt_in(sms):
    reference = reference_in(sms.send("阳光小区3号楼路灯坏了",
                                      media=[(sms.media.add("o.jpg", jpeg()), "image/jpeg")])[0])
    assert "已退订" in sms.send("TD")[0]
    with sms.loop.desk._sessions() as session:
        row = session.scalar(select(SmsOptOut))
        assert row is not None and row.opted_out is True
    sms.run_jobs(after_seconds=121)
    assert sms.texts_to() == []  # the routed SMS was not sent …
    assert _count(sms, SmsOutbox, SmsOutbox.send_state == "suppressed") == 1  # … and that is on record
    assert "已恢复" in sms.send("开通")[0]
    sms.loop.desk.staff_action(reference, "accept", "staff:li")
    sms.run_jobs()
    assert len(sms.texts_to()) == 1 and "接单" in sms.texts_to()[0]
    assert "已退订" in sms.send("退订")[0]


@pytest.mark.parametrize("keyword", ["进度{ref}", "查询 {ref}", "进度：{ref}"])
def test_progress_keyword_with_reference(sms, keyword):
    reference = reference_in(sms.send("阳光小区3号楼路灯坏了",
                                      media=[(sms.media.add("p.jpg", jpeg()), "image/jpeg")])[0])
    sms.run_jobs(after_seconds=121)
    answer = "".join(sms.send(keyword.format(ref=reference), sender=RESIDENT_2))
    assert reference in answer and "已派单" in answer
    assert "没查到" in "".join(sms.send("进度 30000000"))


def test_progress_without_reference_uses_the_sender_number(sms):
    reference = reference_in(sms.send("阳光小区3号楼路灯坏了",
                                      media=[(sms.media.add("q.jpg", jpeg()), "image/jpeg")])[0])
    assert reference in "".join(sms.send("进度"))
    assert reference not in "".join(sms.send("进度", sender=RESIDENT_2))


def test_cancel_keyword_withdraws_the_open_report(sms):
    reference = reference_in(sms.send("", media=[(sms.media.add("c.jpg", jpeg()), "image/jpeg")])[0])
    answer = sms.send("取消")
    assert "已取消" in answer[0] and reference in answer[0]
    assert _tickets(sms)[0].status == "cancelled"
    sms.run_jobs(after_seconds=121)
    assert _tickets(sms)[0].status == "cancelled" and sms.texts_to() == []


def test_zero_hands_over_to_a_person(sms):
    answer = "".join(sms.send("0"))
    assert "工作人员" in answer and any(ch.isdigit() for ch in answer)


@pytest.mark.parametrize(("text", "expected"), [("评价9", "1到5"), ("评价", "1到5"), ("评价5", "没找到要评价")])
def test_rating_keyword_answers_clearly(sms, text, expected):
    assert expected in "".join(sms.send(text))


# --- conversation over SMS ------------------------------------------------------------------------------------
def test_conversation_report_issue_confirms_with_digits_and_enters_the_loop(sms):
    assert "在哪" in "".join(sms.send("路灯坏了"))
    confirm = "".join(sms.send("阳光小区3号楼"))
    assert "回复1确认/2不对/0人工" in confirm and "请说“对”" not in confirm
    done = "".join(sms.send("1"))
    reference = reference_in(done)
    assert "受理编号" in done
    sms.run_jobs()
    with sms.loop.desk._sessions() as session:
        ticket = session.scalar(select(Ticket).where(Ticket.reference == reference))
        assert ticket.category == "report_issue" and ticket.status == "routed"
        assert ticket.service_code == "municipal" and ticket.place == "阳光小区3号楼"
    assert reference in sms.texts_to()[-1] and "街道城管科" in sms.texts_to()[-1]


def test_digit_two_means_no_only_when_confirming(sms):
    sms.send("我想订饭")
    answer = "".join(sms.send("2"))
    assert "不对" not in answer  # "2" answered a question, not a confirmation


def test_replies_are_segmented_for_feature_phones(sms):
    messages = sms.send("你能帮我做什么")
    assert all(len(m) <= SEGMENT_CHARS for m in messages)
    long_text = "我可以帮您：办老年证、居住证明、高龄津贴、残疾人补贴，订助餐，约家政和陪诊，报修，查进度。找工作人员请说“人工”。" * 2
    parts = segments(long_text)
    assert len(parts) > 1 and all(len(p) <= SEGMENT_CHARS for p in parts)
    assert parts[0].endswith(f"(1/{len(parts)})")
    rebuilt = "".join(p.rsplit("(", 1)[0] for p in parts)
    assert rebuilt.replace(" ", "") == long_text.replace(" ", "")


def test_reference_numbers_are_never_cut_across_segments():
    text = "您好" * 30 + "编号31852047，请记下来。"
    for part in segments(text):
        digits = "".join(ch for ch in part.rsplit("(", 1)[0] if ch.isdigit())
        assert digits in ("", "31852047")


def test_status_callbacks_update_delivery_and_unknown_sids_are_ignored(sms):
    sms.send("阳光小区3号楼路灯坏了", media=[(sms.media.add("s.jpg", jpeg()), "image/jpeg")])
    sms.run_jobs(after_seconds=121)
    sent = sms.api.sent[-1]
    assert sent.auth_ok and sent.status_callback == PUBLIC_BASE_URL + "/webhooks/twilio/sms/status"
    assert sms.status(sent.sid, "delivered").status_code == 204
    with sms.loop.desk._sessions() as session:
        assert session.scalar(select(SmsOutbox.delivery_status)) == "delivered"
    assert sms.status("SM" + "e" * 32, "delivered").status_code == 204
    assert sms.post("/webhooks/twilio/sms/status", {"MessageSid": "x"}).status_code == 400


def test_png_photos_are_accepted(sms):
    sms.send("阳光小区3号楼门口垃圾", media=[(sms.media.add("g.png", png(), "image/png"), "image/png")])
    sms.run_jobs(after_seconds=121)
    ticket = _tickets(sms)[0]
    assert ticket.service_code == "sanitation" and ticket.status == "routed"
    assert _count(sms, TicketMedia, TicketMedia.state == "stored", TicketMedia.content_type == "image/png") == 1


def test_every_transition_is_an_event_row(sms):
    sms.send("阳光小区3号楼路灯坏了", media=[(sms.media.add("e.jpg", jpeg()), "image/jpeg")])
    sms.run_jobs(after_seconds=121)
    ticket = _tickets(sms)[0]
    with sms.loop.desk._sessions() as session:
        events = session.execute(select(StatusEvent.from_status, StatusEvent.to_status, StatusEvent.actor)
                                 .where(StatusEvent.entity_type == "ticket", StatusEvent.entity_id == ticket.id)
                                 .order_by(StatusEvent.id)).all()
    assert [tuple(e) for e in events] == [(None, "received", "resident:sms"),
                                           ("received", "categorised", "system:categoriser"),
                                           ("categorised", "routed", "system:router")]


def test_no_personal_data_in_clear_in_new_tables(sms):
    sms.send("我家3栋2单元501漏水 电话13712345678", media=[(sms.media.add("x.jpg", jpeg()), "image/jpeg")])
    sms.send("进度")
    sms.run_jobs(after_seconds=121)
    from sqlalchemy import text

    engine = sms.loop.desk._sessions.kw["bind"]
    with engine.connect() as conn:
        for table in ("tickets", "ticket_media", "sms_inbound", "sms_outbox", "jobs", "status_events"):
            dump = " ".join(str(v) for row in conn.execute(text(f"SELECT * FROM {table}")) for v in row)
            # The flat as written ("2单元501"): a bare "501" turns up by chance inside hex digests.
            for secret in ("13800138000", "13712345678", "2单元501"):
                assert secret not in dump, f"{secret} in clear in {table}"
    assert AUTH_TOKEN  # (the token is config, never stored)


def test_serve_runs_the_worker_in_process_and_sends_the_follow_up(tmp_path, model_dir, nlu, twilio_api,
                                                                   media_server):
    """The embedded default: `python -m assistant serve` alone takes the MMS, runs the job in its
    worker thread and texts the resident, with no other process."""
    import json
    import os
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    import yaml
    from fixtures.twilio_world import ACCOUNT_SID, FROM_NUMBER
    from test_rest import _free_port

    root = Path(__file__).resolve().parent.parent
    config = yaml.safe_load((root / "config.yml").read_text(encoding="utf-8"))
    config["sms"]["report_window_seconds"] = 1
    config_path = tmp_path / "config.yml"
    config_path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "DATA_DIR": str(tmp_path / "var"), "MODEL_DIR": str(model_dir),
           "ASSISTANT_CONFIG": str(config_path), "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
           "TWILIO_FROM_NUMBER": FROM_NUMBER, "TWILIO_API_BASE_URL": twilio_api.base_url,
           "PUBLIC_BASE_URL": base, "MEDIA_ALLOWED_HOSTS": media_server.host}
    twilio_api.sent.clear()
    server = subprocess.Popen([sys.executable, "-m", "assistant", "serve", "--port", str(port)], cwd=root, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while True:
            assert server.poll() is None, server.stderr.read().decode()[-3000:]
            try:
                urllib.request.urlopen(base + "/healthz", timeout=1)
                break
            except OSError:
                assert time.time() < deadline, "server did not start"
                time.sleep(0.2)
        params = inbound_params("阳光小区3号楼路灯坏了", media=[(media_server.add("serve.jpg", jpeg()), "image/jpeg")])
        request = urllib.request.Request(base + WEBHOOK, urllib.parse.urlencode(params).encode(),
                                         {"X-Twilio-Signature": sign(base + WEBHOOK, params)})
        with urllib.request.urlopen(request, timeout=30) as response:
            reference = reference_in(twiml_messages(response.read().decode())[0])
        deadline = time.time() + 30
        while not any(reference in m.body for m in twilio_api.sent):
            assert time.time() < deadline, f"no follow-up SMS: {json.dumps([m.body for m in twilio_api.sent])}"
            time.sleep(0.2)
        assert "街道城管科" in next(m.body for m in twilio_api.sent if reference in m.body)
    finally:
        server.kill()
        server.wait(10)


# --- the inbox: what a message is, one claim per MessageSid, how many transactions --------------------------
def _inbox(sms: SmsClient):
    return sms.app.view_functions["twilio_sms.inbound"].args[0].inbox


def _count_transactions(sms: SmsClient, monkeypatch) -> list[int]:
    desk, calls = sms.loop.desk, []
    real_run = desk.run

    def counting_run(work, *args, **kwargs):
        calls.append(1)
        return real_run(work, *args, **kwargs)

    monkeypatch.setattr(desk, "run", counting_run)
    return calls


@pytest.mark.parametrize(("body", "media", "kind"), [
    ("TD", 0, "opt_out"), ("开 通", 0, "opt_in"), ("", 1, "photos"), ("", 0, "empty"), ("路灯" * 1000, 0, "too_long"),
    ("进度30000001", 0, "progress"), ("评价五", 0, "rate"), ("评价9", 0, "rate"), ("取消", 0, "cancel"),
    ("同意", 0, "open"), ("1", 0, "open"), ("阳光小区3号楼", 0, "open"),
])
def test_classify_reads_what_a_message_is_from_its_text(body, media, kind):
    from backend.messaging.inbox import InboundSms, classify

    assert classify(InboundSms(message_sid("SM"), RESIDENT_2, None, body, num_media=media), 500).kind == kind


def test_rating_classified_with_its_score_and_reference():
    from backend.messaging.inbox import InboundSms, classify

    what = classify(InboundSms(message_sid("SM"), RESIDENT_2, None, "评价：四分 31852047"), 500)
    assert (what.score, what.reference) == (4, "31852047")


@pytest.mark.parametrize(("send", "transactions"), [
    (lambda s: s.send("你好"), 2),  # the claim, then the answer: the turn runs between them
    (lambda s: s.send("评价5"), 1),  # claim, act and answer together
    (lambda s: s.send("", media=[(s.media.add("t.jpg", jpeg()), "image/jpeg")]), 1),
    (lambda s: s.send(""), 1),
])
def test_transactions_per_message(sms, monkeypatch, send, transactions):
    calls = _count_transactions(sms, monkeypatch)
    send(sms)
    assert len(calls) == transactions
    assert _count(sms, SmsInbound, SmsInbound.route == "claimed") == 0


def test_a_redelivered_conversation_turn_does_not_reach_the_core_again(sms, monkeypatch):
    params = inbound_params("你好")
    first = sms.post(WEBHOOK, params).get_data(as_text=True)
    calls = _count_transactions(sms, monkeypatch)
    turns: list[object] = []
    real_turn = sms.runtime.assistant.turn
    monkeypatch.setattr(sms.runtime.assistant, "turn", lambda message: turns.append(message) or real_turn(message))
    assert sms.post(WEBHOOK, params).get_data(as_text=True) == first
    assert turns == [] and len(calls) == 1  # one read of the claim, nothing else


def test_a_failed_message_releases_its_claim_and_the_retry_runs_afresh(sms, monkeypatch):
    conversation = _inbox(sms).conversation
    real_reply = conversation.reply

    def broken(message, text):
        raise RuntimeError("the core fell over")

    monkeypatch.setattr(conversation, "reply", broken)
    params = inbound_params("你好")
    assert "系统有点忙" in "".join(twiml_messages(sms.post(WEBHOOK, params).get_data(as_text=True)))
    assert _count(sms, SmsInbound) == 0
    monkeypatch.setattr(conversation, "reply", real_reply)
    assert "系统有点忙" not in "".join(twiml_messages(sms.post(WEBHOOK, params).get_data(as_text=True)))
    assert _count(sms, SmsInbound, SmsInbound.route == "conversation") == 1


def test_a_redelivery_while_the_first_is_answered_waits_and_an_orphan_claim_is_taken_over(sms):
    inbox = _inbox(sms)
    inbox.pending_wait = 0.2
    sid = message_sid("SM")
    inbox.desk.run(lambda unit: inbox.ledger.claim(unit, message_sid=sid, from_hash="h", body="你好", num_media=0,
                                                   stale_after=__import__("datetime").timedelta(seconds=60)))
    # Claimed a moment ago by a delivery still at work: not answered twice, "send again later".
    assert "系统有点忙" in "".join(sms.send("你好", sid=sid))
    assert _count(sms, SmsInbound, SmsInbound.route == "claimed") == 1
    # The worker that claimed it died: after a minute a redelivery answers it, once.
    sms.clock.advance(seconds=61)
    answer = sms.send("你好", sid=sid)
    assert "系统有点忙" not in "".join(answer)
    assert _count(sms, SmsInbound, SmsInbound.route == "conversation") == 1
    assert sms.send("你好", sid=sid) == answer


def test_the_digit_hint_is_the_channels_scratch_state_not_the_cores(sms):
    from channels.sms_render import SmsScratch

    sms.send("路灯坏了")
    sms.send("阳光小区3号楼")
    store = sms.runtime.sessions
    assert store.load(f"scratch:sms:{RESIDENT}") == {"expects": "confirm"}
    assert store.load(f"sms-channel:{RESIDENT}") is None
    assert SmsScratch(**store.load(f"scratch:sms:{RESIDENT}")).expects == "confirm"


def test_the_channel_refuses_to_start_without_its_sms_sentences():
    from assistant.dialogue.domain import Domain
    from channels.sms_render import require_responses

    with pytest.raises(ValueError, match="utter_sms_confirm_hint"):
        require_responses(Domain({"responses": {"utter_sms_yes_no_hint": [{"text": "x"}]}}))
