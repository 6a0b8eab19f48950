"""Ticket loop: categorise, state machine, staff API, rating by SMS, and the whole loop end to end
(signed MMS → ticket routed → status SMS at each public step → rating)."""
from __future__ import annotations

import io

import pytest
import yaml
from fixtures.twilio_world import RESIDENT, RESIDENT_2, jpeg
from PIL import Image
from sms_fixtures import reference_in
from sqlalchemy import select

from backend.infra.audit_chain import verify_audit_chain
from backend.infra.models import StatusEvent, Ticket
from backend.tickets import TRANSITIONS, Taxonomy, TransitionError

STAFF = {"Authorization": "Bearer staff-token-for-tests", "X-Staff-Name": "wang"}
TAXONOMY = Taxonomy.from_config(yaml.safe_load(open("config.yml", encoding="utf-8"))["tickets"]["taxonomy"])


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("阳光小区3号楼旁边路灯坏了", "municipal"),
        ("井盖松了 很危险", "municipal"),
        ("楼道灯不亮", "property"),
        ("三楼漏水了", "property"),
        ("门口垃圾堆放好几天了 很臭", "sanitation"),
        ("消防通道堵了 电动车充电飞线", "fire"),
        ("楼上装修声太吵", "noise"),
        ("你好", "other"),
        ("🙂🙂🙂", "other"),
    ],
)
def test_categorise_from_text(text, code):
    assert TAXONOMY.categorise(text).code == code


def test_state_machine_has_no_way_out_of_final_states():
    assert TRANSITIONS["closed"] == frozenset() and TRANSITIONS["cancelled"] == frozenset()
    assert "resolved" not in TRANSITIONS["received"]  # no skipping the department


def _report(sms, text="阳光小区3号楼路灯坏了", sender=RESIDENT, name="r.jpg") -> str:
    reference = reference_in(sms.send(text, sender=sender, media=[(sms.media.add(name, jpeg()), "image/jpeg")])[0])
    sms.run_jobs(after_seconds=121)
    return reference


def test_staff_api_needs_the_token(sms):
    client = sms.client
    assert client.get("/staff/api/tickets").status_code == 403
    assert client.get("/staff/api/tickets", headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert client.get("/staff/api/tickets", headers=STAFF).status_code == 200


def test_end_to_end_signed_mms_to_rating(sms):
    # 1. A resident sends a photo with a few words; the webhook answers at once with a reference.
    ack = sms.send("阳光小区3号楼门口路灯坏了", media=[(sms.media.add("e2e.jpg", jpeg(gps=(39.9152, 116.4040))),
                                                   "image/jpeg")])
    reference = reference_in(ack[0])
    assert sms.texts_to() == []  # nothing slow happened in the webhook
    # 2. The job routes it and the resident hears where it went.
    sms.run_jobs(after_seconds=121)
    routed = sms.texts_to()[-1]
    assert reference in routed and "市政设施" in routed and "街道城管科" in routed
    # 3. The department works it through the API; the resident gets an SMS per public step.
    client = sms.client
    listed = client.get("/staff/api/tickets?status=routed&department=街道城管科", headers=STAFF).get_json()
    assert [t["reference"] for t in listed] == [reference]
    assert "private" not in listed[0] and "13800138000" not in str(listed)
    detail = client.get(f"/staff/api/tickets/{reference}", headers=STAFF).get_json()
    assert detail["private"]["description"] == "阳光小区3号楼门口路灯坏了"
    assert detail["private"]["contact"] == RESIDENT and detail["lat"] == pytest.approx(39.9152, abs=1e-4)
    assert client.post(f"/staff/api/tickets/{reference}/accept", json={}, headers=STAFF).status_code == 200
    assert client.post(f"/staff/api/tickets/{reference}/start", json={"note": "已派电工"},
                       headers=STAFF).status_code == 200
    fixed = jpeg("yellow", gps=(39.9152, 116.4040))
    response = client.post(f"/staff/api/tickets/{reference}/resolve", headers=STAFF,
                           data={"note": "已更换灯泡，联系人13912345678", "photo": (io.BytesIO(fixed), "fixed.jpg")},
                           content_type="multipart/form-data")
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["status"] == "resolved" and body["status_note"] == "已更换灯泡，联系人139****5678"
    resolution = [m for m in body["media"] if m["role"] == "resolution"]
    assert len(resolution) == 1
    stored = sms.loop.desk.media.find(resolution[0]["sha256"])
    assert stored is not None and not Image.open(stored).getexif()
    photo = client.get(resolution[0]["url"])  # the API's link is signed: staff tools can show it
    assert photo.status_code == 200 and photo.data == stored.read_bytes()
    sms.run_jobs()
    texts = sms.texts_to()
    assert any("接单" in t for t in texts) and any("正在处理" in t for t in texts)
    assert "已处理好" in texts[-1] and "评价5" in texts[-1] and reference in texts[-1]
    assert all(len(t) <= 70 for t in texts)
    # 4. The resident rates it by SMS; the ticket is closed.
    thanks = "".join(sms.send("评价 5"))
    assert "5分" in thanks and reference in thanks
    with sms.loop.desk._sessions() as session:
        ticket = session.scalar(select(Ticket).where(Ticket.reference == reference))
        assert ticket.rating == 5 and ticket.status == "closed"
        steps = session.execute(select(StatusEvent.to_status, StatusEvent.actor)
                                .where(StatusEvent.entity_type == "ticket", StatusEvent.entity_id == ticket.id)
                                .order_by(StatusEvent.id)).all()
        assert [s for s, _ in steps] == ["received", "categorised", "routed", "accepted", "in_progress",
                                         "resolved", "rated", "closed"]
        assert ("accepted", "staff:wang") in [tuple(s) for s in steps]
        assert verify_audit_chain(session) is None


def test_low_rating_reopens_the_ticket(sms):
    reference = _report(sms)
    desk = sms.loop.desk
    desk.staff_action(reference, "accept", "staff:li")
    desk.staff_action(reference, "resolve", "staff:li", note="已修")
    answer = "".join(sms.send(f"评价1{reference}"))
    assert "重新派单" in answer
    assert desk.view(reference).status == "reopened"
    assert desk.staff_action(reference, "accept", "staff:li").status == "accepted"


def test_invalid_transitions_and_bad_requests_are_4xx(sms):
    reference = _report(sms)
    client = sms.client
    assert client.post(f"/staff/api/tickets/{reference}/resolve", json={"note": "x"},
                       headers=STAFF).status_code == 409  # not accepted yet
    assert client.post(f"/staff/api/tickets/{reference}/fly", json={}, headers=STAFF).status_code == 404
    assert client.post("/staff/api/tickets/31234567/accept", json={}, headers=STAFF).status_code == 404
    client.post(f"/staff/api/tickets/{reference}/accept", json={}, headers=STAFF)
    assert client.post(f"/staff/api/tickets/{reference}/resolve", json={}, headers=STAFF).status_code == 400
    response = client.post(f"/staff/api/tickets/{reference}/resolve", headers=STAFF,
                           data={"note": "好了", "photo": (io.BytesIO(b"MZ not a photo"), "x.jpg")},
                           content_type="multipart/form-data")
    assert response.status_code == 415
    assert client.post(f"/staff/api/tickets/{reference}/reject", json={"note": 5}, headers=STAFF).status_code == 400


def test_triage_ticket_is_routed_by_staff(sms):
    reference = _report(sms, "阳光小区3号楼 有个东西")
    client = sms.client
    queue = client.get("/staff/api/tickets?triage=1", headers=STAFF).get_json()
    assert [t["reference"] for t in queue] == [reference]
    response = client.post(f"/staff/api/tickets/{reference}/route", json={"department": "街道城管科"}, headers=STAFF)
    assert response.get_json()["status"] == "routed"
    sms.run_jobs()
    assert "街道城管科" in sms.texts_to()[-1]


def test_reject_tells_the_resident_why(sms):
    reference = _report(sms)
    sms.loop.desk.staff_action(reference, "reject", "staff:li", note="不属于社区管辖")
    sms.run_jobs()
    assert "不能受理" in sms.texts_to()[-1] and "不属于社区管辖" in sms.texts_to()[-1]
    with pytest.raises(TransitionError):
        sms.loop.desk.staff_action(reference, "accept", "staff:li")


def test_resolving_the_original_tells_those_merged_into_it(sms):
    first = _report(sms, "阳光小区3号楼路灯坏了", RESIDENT, "d1.jpg")
    second = _report(sms, "阳光小区3号楼的路灯不亮", RESIDENT_2, "d2.jpg")
    desk = sms.loop.desk
    assert desk.view(second).status == "duplicate" and desk.view(second).duplicate_of == first
    assert first in sms.texts_to(RESIDENT_2)[-1]
    desk.staff_action(first, "accept", "staff:li")
    desk.staff_action(first, "resolve", "staff:li", note="已修好")
    sms.run_jobs()
    assert "已处理好" in sms.texts_to(RESIDENT_2)[-1] and second in sms.texts_to(RESIDENT_2)[-1]


def test_a_rerun_job_sends_nothing_twice(sms):
    reference = _report(sms)
    before = len(sms.texts_to())
    with sms.loop.desk._sessions() as session:
        ticket_id = session.scalar(select(Ticket.id).where(Ticket.reference == reference))
    sms.loop.desk.process(ticket_id)  # at-least-once: the same job again
    sms.run_jobs()
    assert len(sms.texts_to()) == before


def test_staff_console_page_serves_in_chinese_without_data(sms):
    page = sms.client.get("/staff/console")
    assert page.status_code == 200 and "部门工作台" in page.get_data(as_text=True)
    assert "街道消防科" in page.get_data(as_text=True)  # departments to route to come from config.yml


def test_every_sms_sentence_fits_one_feature_phone_message():
    from backend.messaging.sms_texts import DEFAULT_TEXTS

    values = dict(ref="31234567", count=3, max=3, category="物业维修", place="幸福里小区12号楼3单元",
                  department="幸福里物业服务中心", original="31234568", reason="照片太大", note="已更换灯泡请放心使用" * 2,
                  score=5, status="处理中", hotline="02112345678", hours=120)
    values["note"] = values["note"][:24]  # what TicketDesk.move passes (_short(note, 24))
    too_long = {k: len(v.format(**values)) for k, v in DEFAULT_TEXTS.items() if len(v.format(**values)) > 70}
    assert too_long == {}
    assert all("{ref}" in v for k, v in DEFAULT_TEXTS.items()
               if k not in {"opted_out", "opted_in", "progress_none_phone", "rate_none", "rate_usage", "empty",
                            "too_long", "busy", "ack_media_refused"})


def test_the_loop_on_sqlite_and_postgres(db_url, sms_env, nlu, clock, twilio_api, media_server):
    """The same loop on both databases: duplicate webhook, window, routing, staff steps, rating."""
    from sms_fixtures import SmsClient, make_sms_runtime

    runtime = make_sms_runtime({**sms_env, "DATABASE_URL": db_url}, nlu, clock)
    sms = SmsClient(runtime, twilio_api, media_server, clock)
    params_photo = [(media_server.add("pg1.jpg", jpeg()), "image/jpeg")]
    first = sms.send("阳光小区3号楼井盖松了", media=params_photo, sid="MM" + "a1" * 16)
    assert sms.send("阳光小区3号楼井盖松了", media=params_photo, sid="MM" + "a1" * 16) == first
    reference = reference_in(first[0])
    assert "第2张" in sms.send("", media=[(media_server.add("pg2.jpg", jpeg("red")), "image/jpeg")])[0]
    sms.run_jobs(after_seconds=121)
    desk = sms.loop.desk
    view = desk.view(reference)
    assert view.status == "routed" and view.department == "街道城管科" and len(view.media) == 2
    desk.staff_action(reference, "accept", "staff:li")
    desk.staff_action(reference, "resolve", "staff:li", note="已固定井盖")
    sms.run_jobs()
    assert "评价5" in sms.texts_to()[-1]
    assert "4分" in "".join(sms.send("评价四"))
    assert desk.view(reference).status == "closed" and desk.view(reference).rating == 4
    with desk._sessions() as session:
        assert verify_audit_chain(session) is None


def test_staff_console_in_chromium_accepts_a_ticket(sms):
    """A person at the department: logs in with the token, opens the ticket, presses 接单; the
    resident is texted and the event row names the person."""
    import shutil
    import tempfile
    import threading
    from pathlib import Path

    from werkzeug.serving import make_server

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver:
        from conftest import _unavailable

        _unavailable("chromium/chromedriver not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    reference = _report(sms)
    server = make_server("127.0.0.1", 0, sms.app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,900", f"--user-data-dir={tempfile.mkdtemp(prefix='console-chrome-')}"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=Service(driver))
    try:
        browser.get(f"http://127.0.0.1:{server.server_port}/staff/console")
        wait = WebDriverWait(browser, 20)
        wait.until(lambda b: b.find_element(By.ID, "login").is_displayed())
        browser.find_element(By.ID, "token").send_keys("staff-token-for-tests")
        browser.find_element(By.ID, "name").send_keys("zhang")
        browser.find_element(By.ID, "enter").click()
        wait.until(lambda b: b.find_element(By.ID, "app").is_displayed())
        Select(browser.find_element(By.ID, "filter")).select_by_value("routed,reopened")
        row = wait.until(lambda b: next((r for r in b.find_elements(By.CSS_SELECTOR, "tr.ticket")
                                         if reference in r.text), None))
        row.click()
        wait.until(lambda b: "阳光小区3号楼路灯坏了" in b.find_element(By.ID, "detail").text)
        browser.find_element(By.CSS_SELECTOR, "button[data-action=accept]").click()
        wait.until(lambda b: "已受理" in b.find_element(By.ID, "detail").text)
        artifacts = Path(__file__).resolve().parent / "artifacts"
        artifacts.mkdir(exist_ok=True)
        browser.save_screenshot(str(artifacts / "staff_console.png"))
        assert browser.find_element(By.ID, "error").text == ""
    finally:
        browser.quit()
        server.shutdown()
    view = sms.loop.desk.view(reference, actor="staff:test")
    assert view.status == "accepted" and ("routed", "accepted", "staff:zhang") in [e[:3] for e in view.events]
    sms.run_jobs()
    assert "接单" in sms.texts_to()[-1]
