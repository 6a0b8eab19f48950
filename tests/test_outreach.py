"""Outreach (issue 20): 平安电话 check-in calls and community notices, on the real store, jobs,
outbox and alert desk, with Twilio's Calls and Messages APIs as loopback fakes and the webhooks
signed as Twilio signs them. Clocks are fake; the kill -9 test runs a real worker process."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from datetime import date, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from fixtures.twilio_world import ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER, FakeTwilioApi, sign
from sms_fixtures import PUBLIC_BASE_URL, SmsClient, build_app
from sqlalchemy import func, select

from assistant.config import load_settings
from backend.affairs.core import Handoff
from backend.alerts.dispatch import TwilioCallConfig, TwilioCallPlacer
from backend.alerts.households import parse_households
from backend.alerts.store import Alert, AlertEvent, CareHousehold
from backend.infra import db
from backend.infra.jobs import DbJobQueue, Worker
from backend.infra.models import Job, Resident
from backend.outreach.calls import Pace
from backend.outreach.checkins import Enrolment
from backend.outreach.notices import Audience, sms_segments
from backend.outreach.simulate import CheckinDaySimulation, households_doc, scenario
from backend.outreach.store import CheckinDay, ContactPreference, NoticeDelivery, OutboundCall
from core_fixtures import TZ, FakeClock
from runtime import cli

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*argv: str) -> int:
    """A CLI command as `python -m assistant` runs it, without its logging set-up (which would hold
    on to pytest's captured stderr after the test)."""
    args = cli.build_parser().parse_args(list(argv))
    return int(args.func(args) or 0)
SHIPPED = load_settings({}).config
WED = date(2026, 11, 25)


# --- the acceptance day ----------------------------------------------------------------------------
def test_a_check_in_day_of_50_residents_gives_exactly_the_expected_retries_alerts_and_handoffs(db_url: str):
    behaviours = scenario(50, no_answer=5, press_0=2)
    sim = CheckinDaySimulation(SHIPPED, behaviours, day=WED, database_url=db_url)
    try:
        lines = list(sim.run())
        summary = lines[-1]
        attempts = SHIPPED["outreach"]["checkin"]["attempts"]
        silent = sorted(code for code, b in behaviours.items() if b == "no_answer")
        helped = sorted(code for code, b in behaviours.items() if b == "press_0")
        assert len(silent) == 5 and len(helped) == 2
        # Every senior is called once; the silent ones `attempts` times, never more.
        assert summary["calls"] == 45 + 5 * attempts
        assert summary["retries"] == 5 * (attempts - 1)
        assert summary["checkins"] == {"ok": 43, "missed": 5, "help": 2}
        assert summary["alerts"] == {"checkin_missed": 5, "checkin_help": 2}
        assert summary["handoffs"] == 2
        with sim.sessions() as s:
            # Retries are `retry_minutes` apart, and the fallback SMS waits before the alert.
            for code in silent:
                placed = s.scalars(select(OutboundCall.created_at).join(CheckinDay, CheckinDay.id == OutboundCall.ref_id)
                                   .join(CareHousehold, CareHousehold.id == CheckinDay.household_id)
                                   .where(CareHousehold.code == code).order_by(OutboundCall.id)).all()
                gaps = {round((b - a).total_seconds() / 60) for a, b in zip(placed, placed[1:], strict=False)}
                assert gaps == {SHIPPED["outreach"]["checkin"]["retry_minutes"]}
            alerts = s.execute(select(Alert, CareHousehold.code).join(CareHousehold)).all()
            assert sorted(code for a, code in alerts if a.rule == "checkin_missed") == silent
            assert sorted(code for a, code in alerts if a.rule == "checkin_help") == helped
            escalated = s.execute(select(Alert.rule, func.count()).join(AlertEvent, AlertEvent.alert_id == Alert.id)
                                  .where(AlertEvent.event == "escalated").group_by(Alert.rule)).all()
            # Nobody answers the missed-call alerts: ack at 15 min, again at 30 (end of the chain), and
            # the 30-minute visit deadline. The help alerts are acknowledged and visited in time.
            assert dict(escalated) == {"checkin_missed": 5 * 3}
            assert summary["escalations"] == 15
            handoffs = s.scalars(select(Handoff)).all()
            assert len(handoffs) == 2 and all(h.status == "waiting" and h.urgent for h in handoffs)
        texts = sim.sms.sent
        for code in silent:
            n = int(code[1:])
            assert sum("平安电话没打通" in body for to, body in texts if to == f"1370000{n:04d}") == 1
            assert any("平安电话打了3次没人接" in body for to, body in texts if to == f"1390000{n:04d}")  # family
        for code in helped:
            n = int(code[1:])
            assert not any(to == f"1370000{n:04d}" for to, _ in texts)  # the senior is never texted here
        events = [line["event"] for line in lines]
        assert events.count("alert_escalated") == 15 and events.count("no_answer") == 15
    finally:
        sim.close()


def test_checkin_simulate_prints_json_lines(capsys):
    assert run_cli("checkin", "simulate", "--households", "6", "--no-answer", "1", "--press-0", "1") == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[-1]["event"] == "summary"
    assert lines[-1]["checkins"] == {"ok": 4, "missed": 1, "help": 1}
    assert {"call", "answered", "no_answer", "alert_raised", "alert_escalated"} <= {line["event"] for line in lines}


def test_a_busy_senior_is_called_again_and_counts_as_well():
    sim = CheckinDaySimulation(SHIPPED, {"H001": "busy_then_ok", "H002": "ok"}, day=WED)
    try:
        summary = list(sim.run())[-1]
        assert summary["checkins"] == {"ok": 2} and summary["calls"] == 3 and summary["alerts"] == {}
    finally:
        sim.close()


# --- through Twilio: REST calls out, signed webhooks in -------------------------------------------
class Line:
    """The runtime with households enrolled, and Twilio's side of outbound calls."""

    def __init__(self, sms: SmsClient) -> None:
        self.sms = sms
        self.runtime = sms.runtime
        self.outreach = self.runtime.outreach
        self.api: FakeTwilioApi = sms.api
        self.api.calls.clear()
        self.runtime.alerts.register_households(parse_households(households_doc(4, grids=1)))

    def post(self, url: str, params: dict[str, str], signature: str | None = None):
        path = url.removeprefix(PUBLIC_BASE_URL)
        signature = sign(PUBLIC_BASE_URL + path, params) if signature is None else signature
        return self.sms.client.post(path, data=params, headers={"X-Twilio-Signature": signature})

    def answer(self, call, **form: str) -> ET.Element:
        response = self.post(call.url, {"CallSid": call.sid, "AccountSid": ACCOUNT_SID, "CallStatus": "in-progress",
                                        "Direction": "outbound-api", "To": call.to, "From": FROM_NUMBER, **form})
        assert response.status_code == 200, response.get_data(as_text=True)
        return ET.fromstring(response.get_data(as_text=True))

    def status(self, call, status: str, **extra: str) -> int:
        params = {"CallSid": call.sid, "AccountSid": ACCOUNT_SID, "CallStatus": status, "To": call.to,
                  "From": FROM_NUMBER, "Direction": "outbound-api", "ApiVersion": "2010-04-01", **extra}
        return self.post(call.status_callback, params).status_code

    def day(self, code: str) -> CheckinDay:
        with self.runtime.db_sessions() as s:
            return s.scalar(select(CheckinDay).join(CareHousehold).where(CareHousehold.code == code))

    def move(self, when: datetime) -> int:
        self.sms.clock.now = when
        return self.sms.worker.run_until_idle()


@pytest.fixture
def line(sms: SmsClient, monkeypatch) -> Line:
    sms.runtime.settings.env["PHONE_PROMPTS"] = "say"  # <Say>, so the test reads what is said
    sms.app = build_app(sms.runtime)
    sms.client = sms.app.test_client()
    sms.worker.handlers.update(sms.runtime.outreach.job_handlers())
    sms.runtime.outreach.calls.pace = Pace(0)  # real-time pacing under a fake clock would only wait
    sms.clock.now = datetime(2026, 11, 25, 6, 0, tzinfo=TZ)
    return Line(sms)


def said(twiml: ET.Element) -> str:
    return "".join(el.text or "" for el in twiml.iter() if el.tag in ("Say", "prosody"))


def test_a_check_in_call_goes_out_through_twilio_and_1_means_all_well(line: Line):
    line.outreach.checkins.enrol(Enrolment("H001", question="今天吃药了吗？"), "staff:test")
    assert line.outreach.checkins.plan(WED) == 1
    line.move(datetime(2026, 11, 25, 9, 0, tzinfo=TZ))
    (call,) = line.api.calls
    form = dict(call.form)
    assert call.to == "+8613700000001" and form["From"] == FROM_NUMBER
    assert "MachineDetection" not in form  # answering-machine detection off by default
    assert [v for k, v in call.form if k == "StatusCallbackEvent"] == ["initiated", "ringing", "answered", "completed"]
    first = line.answer(call)
    gather = first.find("Gather")
    assert gather is not None and gather.get("numDigits") == "1" and "dtmf" in gather.get("input", "")
    assert "阿姨您好" in said(first) and "按一" in said(first) and "按零" in said(first)
    question = line.answer(type(call)(call.sid, call.to, PUBLIC_BASE_URL + gather.get("action"), call.status_callback,
                                      call.form, call.created), Digits="1")
    assert "今天吃药了吗" in said(question)
    assert line.day("H001").state == "ok"  # safe even if they hang up now
    action = PUBLIC_BASE_URL + question.find("Gather").get("action")
    bye = line.answer(type(call)(call.sid, call.to, action, call.status_callback, call.form, call.created),
                      SpeechResult="吃了")
    assert "放心" in said(bye) and bye.find("Hangup") is not None
    assert line.status(call, "completed", CallDuration="40") == 204
    day = line.day("H001")
    assert (day.state, day.answer, day.attempts) == ("ok", "question:yes", 1)
    # Forged and unsigned webhooks are refused; an unknown call id is not ours.
    assert line.post(call.status_callback, {"CallSid": call.sid, "CallStatus": "completed"}, "bad").status_code == 403
    assert line.status(type(call)(call.sid, call.to, call.url, call.status_callback.replace("call=", "call=9"),
                                  call.form, call.created), "completed") == 404


def test_pressing_0_reaches_a_person_with_context_and_alerts_the_grid_worker(line: Line):
    line.outreach.checkins.enrol(Enrolment("H002"), "staff:test")
    line.outreach.checkins.plan(WED)
    line.move(datetime(2026, 11, 25, 9, 0, tzinfo=TZ))
    (call,) = line.api.calls
    first = line.answer(call)
    action = PUBLIC_BASE_URL + first.find("Gather").get("action")
    reply = line.answer(type(call)(call.sid, call.to, action, call.status_callback, call.form, call.created),
                        SpeechResult="不好，头晕")
    assert "工作人员" in said(reply)
    day = line.day("H002")
    assert day.state == "help" and day.handoff_reference and day.alert_id
    with line.runtime.db_sessions() as s:
        handoff = s.scalar(select(Handoff).where(Handoff.reference == day.handoff_reference))
        assert handoff is not None and handoff.urgent and handoff.channel == "voice"
        assert s.get(Alert, day.alert_id).rule == "checkin_help"
    line.sms.worker.run_until_idle()
    worker_texts = line.sms.texts_to("+8613800000101")
    assert any("需要帮助" in t and "15分钟内电话联系" in t for t in worker_texts)
    assert line.status(call, "completed") == 204
    assert line.day("H002").state == "help"  # the call's end changes nothing


def test_no_answer_retries_then_sms_then_a_reply_by_sms_ends_the_day_well(line: Line):
    line.outreach.checkins.enrol(Enrolment("H003"), "staff:test")
    line.outreach.checkins.plan(WED)
    retry = SHIPPED["outreach"]["checkin"]["retry_minutes"]
    for attempt in range(SHIPPED["outreach"]["checkin"]["attempts"]):
        line.move(datetime(2026, 11, 25, 9, 0, tzinfo=TZ) + timedelta(minutes=retry * attempt))
        call = line.api.calls[-1]
        assert len(line.api.calls) == attempt + 1
        assert line.status(call, "ringing") == 204 and line.status(call, "no-answer") == 204
        line.sms.worker.run_until_idle()
    assert line.day("H003").state == "waiting_sms"
    (text,) = line.sms.texts_to("+8613700000003")
    assert "回复1" in text
    assert line.sms.send("1", sender="+8613700000003") == [line.outreach.texts.get("checkin_sms_ok")]
    day = line.day("H003")
    assert (day.state, day.answer, day.alert_id) == ("ok", "ok:sms", None)
    line.move(datetime(2026, 11, 25, 11, 0, tzinfo=TZ))  # the wait's end finds the day done
    assert line.day("H003").state == "ok"


def test_a_number_twilio_refuses_ends_the_day_missed_with_an_alert(line: Line):
    line.api.refuse_numbers.add("+8613700000004")
    try:
        line.outreach.checkins.enrol(Enrolment("H004", sms_fallback=False), "staff:test")
        line.outreach.checkins.plan(WED)
        for minutes in (0, 20, 40):
            line.move(datetime(2026, 11, 25, 9, minutes, tzinfo=TZ))
        day = line.day("H004")
        assert (day.state, day.attempts) == ("missed", 3) and day.alert_id
        with line.runtime.db_sessions() as s:
            calls = s.scalars(select(OutboundCall).where(OutboundCall.ref_id == day.id)).all()
            assert [c.state for c in calls] == ["failed"] * 3
    finally:
        line.api.refuse_numbers.clear()


def test_quiet_hours_move_the_first_call_and_sensor_activity_skips_it(line: Line):
    line.outreach.checkins.enrol(Enrolment("H001", window_start="07:00", window_end="08:00"), "staff:test")
    line.outreach.checkins.enrol(Enrolment("H002", skip_if_active=True), "staff:test")
    with line.runtime.db_sessions() as s, s.begin():
        home = s.scalar(select(CareHousehold).where(CareHousehold.code == "H002"))
        home.engine_state = json.dumps({"household": "H002", "last_active": {
            "water": datetime(2026, 11, 25, 7, 12, tzinfo=TZ).isoformat()}})
    line.outreach.checkins.plan(WED)
    with line.runtime.db_sessions() as s:
        first = s.scalar(select(CheckinDay.next_at).join(CareHousehold).where(CareHousehold.code == "H001"))
    assert first.astimezone(TZ).strftime("%H:%M") == "08:30"  # quiet hours end (config.yml)
    line.move(datetime(2026, 11, 25, 9, 5, tzinfo=TZ))
    assert [c.to for c in line.api.calls] == ["+8613700000001"]
    skipped = line.day("H002")
    assert (skipped.state, skipped.attempts) == ("skipped", 0) and "activity" in skipped.note


def test_a_call_placed_before_a_crash_is_found_at_twilio_not_placed_again(line: Line):
    calls = line.outreach.calls
    real = TwilioCallPlacer(TwilioCallConfig(ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER, line.api.base_url))

    class DiesAfterDialling:
        def dial(self, *args, **kwargs):
            real.dial(*args, **kwargs)
            raise KeyboardInterrupt  # kill -9 between Twilio's answer and our record of it

        def find(self, to, since):
            return real.find(to, since)

    line.outreach.checkins.enrol(Enrolment("H001"), "staff:test")
    line.outreach.checkins.plan(WED)
    line.sms.clock.now = datetime(2026, 11, 25, 9, 0, tzinfo=TZ)
    line.outreach.checkins.attempt(line.day("H001").id)
    with line.runtime.db_sessions() as s:
        call_id = s.scalar(select(OutboundCall.id))
    calls.dialer = DiesAfterDialling()
    with pytest.raises(KeyboardInterrupt):
        calls.place(call_id)
    calls.dialer = real
    calls.place(call_id)  # the job again, after its lease
    assert len(line.api.calls) == 1
    with line.runtime.db_sessions() as s:
        row = s.get(OutboundCall, call_id)
        assert (row.state, row.call_sid) == ("placed", line.api.calls[0].sid)


# --- notices ----------------------------------------------------------------------------------------
def add_residents(runtime, n: int, grid: str = "G01", start: int = 0) -> list[str]:
    cipher = runtime.cipher
    phones = [f"1350000{start + i:04d}" for i in range(n)]
    with runtime.db_sessions() as s, s.begin():
        for i, phone in enumerate(phones):
            s.add(Resident(phone_hash=cipher.blind_index(phone, "phone"), phone_enc=cipher.encrypt(phone),
                           grid_id=grid, address_enc=cipher.encrypt(f"阳光小区{(start + i) % 3 + 1}栋")))
    return phones


def test_sms_segments_and_the_preview_staff_see_before_sending(line: Line):
    assert sms_segments("停水通知") == 1 and sms_segments("水" * 70) == 1 and sms_segments("水" * 71) == 2
    assert sms_segments("水" * 134) == 2 and sms_segments("水" * 135) == 3 and sms_segments("a" * 160) == 1
    add_residents(line.runtime, 6)
    add_residents(line.runtime, 2, grid="G02", start=100)
    notices = line.outreach.notices
    preview = notices.preview("停水", "12月8日9点到17点停水，请提前储水。", Audience("grid", ("G01",)), "sms")
    assert (preview.recipients, preview.by_channel, preview.segments) == (6, {"sms": 6}, 1)
    assert preview.cost_yuan == pytest.approx(6 * SHIPPED["outreach"]["notices"]["sms_cost_per_segment"])
    long_body = "社区将于下周开展免费体检" * 10
    assert notices.preview("体检", long_body, Audience("all"), "sms").segments == sms_segments(
        notices.sms_text("体检", long_body)) > 1
    building = notices.preview("电梯", "3栋电梯检修。", Audience("building", building="阳光小区1栋"), "sms")
    assert building.recipients == 2  # residents 0 and 3 of G01 live in 1栋
    with pytest.raises(ValueError):
        notices.preview("", "x", Audience("all"), "sms")
    with pytest.raises(ValueError):
        Audience("grid")


def test_an_sms_notice_skips_td_and_reports_each_resident(line: Line):
    phones = add_residents(line.runtime, 4)
    line.sms.clock.now = datetime(2026, 11, 25, 10, 0, tzinfo=TZ)  # outside quiet hours
    line.sms.send("TD", sender="+86" + phones[1])
    notices = line.outreach.notices
    notice_id = notices.create("停水", "12月8日停水。", Audience("grid", ("G01",)), "sms", "staff:test")
    line.sms.worker.run_until_idle()
    got = {m.to for m in line.api.sent if "【社区通知】停水" in m.body}
    assert got == {"+86" + p for i, p in enumerate(phones) if i != 1}
    sent = [m for m in line.api.sent if "【社区通知】停水" in m.body]
    line.sms.status(sent[0].sid, "delivered")
    line.sms.status(sent[1].sid, "undelivered", "30006")  # landline: never retried
    (report,) = notices.reports([notice_id])
    assert report.recipients == 4 and report.states == {"opted_out": 1, "delivered": 1, "failed": 1, "sending": 1}
    assert notices.create("停水", "12月8日停水。", Audience("grid", ("G01",)), "sms", "staff:test") != notice_id


def test_a_voice_notice_repeats_on_9_stops_on_8_and_counts_listen_through(line: Line):
    phones = add_residents(line.runtime, 3)
    notices = line.outreach.notices
    line.sms.clock.now = datetime(2026, 11, 25, 10, 0, tzinfo=TZ)
    notice_id = notices.create("防诈骗", "不要把验证码告诉任何人。", Audience("list", phones=tuple(phones)), "voice",
                               "staff:test")
    line.move(datetime(2026, 11, 25, 10, 0, tzinfo=TZ))  # the send job: calls one second apart from now
    assert len(line.api.calls) == 1
    line.move(datetime(2026, 11, 25, 10, 0, 2, tzinfo=TZ))
    assert len(line.api.calls) == 3
    a, b, c = line.api.calls
    first = line.answer(a)
    assert "验证码" in said(first) and "按九" in said(first)
    menu = PUBLIC_BASE_URL + first.find("Gather").get("action")
    again = line.answer(type(a)(a.sid, a.to, menu, a.status_callback, a.form, a.created), SpeechResult="再听一遍")
    assert "验证码" in said(again)
    done = line.answer(type(a)(a.sid, a.to, menu, a.status_callback, a.form, a.created))  # silence after it
    assert done.find("Hangup") is not None
    line.status(a, "completed")
    line.answer(b)
    stop = line.answer(type(b)(b.sid, b.to, PUBLIC_BASE_URL + first.find("Gather").get("action").replace(
        f"call={parse_qs(urlparse(menu).query)['call'][0]}", f"call={parse_qs(urlparse(b.url).query)['call'][0]}"),
        b.status_callback, b.form, b.created), Digits="8")
    assert "不再" in said(stop)
    line.status(b, "completed")
    line.status(c, "no-answer")
    line.move(datetime(2026, 11, 25, 11, 5, tzinfo=TZ))  # the retry, an hour later
    assert len(line.api.calls) == 4 and line.api.calls[3].to == c.to
    line.status(line.api.calls[3], "busy")
    (report,) = notices.reports([notice_id])
    assert report.states == {"listened": 1, "opted_out": 1, "failed": 1} and report.repeats == 1 and report.done
    with line.runtime.db_sessions() as s:
        pref = s.scalar(select(ContactPreference).where(ContactPreference.phone_hash == line.runtime.cipher.blind_index(
            phones[1], "phone")))
        assert pref.no_notice_calls
    # The next voice notice does not call who said 不要再打, nor anyone within min_gap_hours of a call.
    notices.create("停电", "明天停电。", Audience("list", phones=tuple(phones)), "voice", "staff:test")
    line.move(datetime(2026, 11, 25, 11, 10, tzinfo=TZ))
    line.move(datetime(2026, 11, 25, 13, 59, tzinfo=TZ))
    assert len(line.api.calls) == 4
    line.move(datetime(2026, 11, 25, 14, 0, 5, tzinfo=TZ))  # 4 h after the 10:00 call
    assert [call.to for call in line.api.calls[4:]] == ["+86" + phones[0]]
    line.move(datetime(2026, 11, 25, 15, 6, tzinfo=TZ))  # 4 h after the 11:05 retry
    assert [call.to for call in line.api.calls[4:]] == ["+86" + phones[0], "+86" + phones[2]]


def test_buxiang_zai_da_by_sms_stops_notice_calls(line: Line):
    (phone,) = add_residents(line.runtime, 1)
    assert line.sms.send("不要再打了", sender="+86" + phone) == [line.outreach.texts.get("no_calls_sms")]
    with line.runtime.db_sessions() as s:
        assert s.scalar(select(ContactPreference.no_notice_calls))


# --- 1,000 residents, and a worker killed mid-broadcast -----------------------------------------------
def test_a_1000_resident_notice_survives_kill_9_with_nobody_called_twice(tmp_path, twilio_api: FakeTwilioApi,
                                                                          model_dir):
    from runtime.container import build_runtime

    twilio_api.calls.clear()
    data_dir = tmp_path / "var"
    data_dir.mkdir(parents=True)
    url = f"sqlite:///{data_dir / 'k9.db'}"
    env = {**os.environ, "DATA_DIR": str(data_dir), "DATABASE_URL": url, "MODEL_DIR": str(model_dir),
           "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "TWILIO_FROM_NUMBER": FROM_NUMBER,
           "TWILIO_API_BASE_URL": twilio_api.base_url, "PUBLIC_BASE_URL": PUBLIC_BASE_URL,
           "OUTREACH_CALLS_PER_SECOND": "200", "JOB_LEASE_SECONDS": "1"}
    runtime = build_runtime(load_settings({k: env[k] for k in env if k.isupper()}), nlu=object())
    total = 1000
    phones = add_residents(runtime, total)
    # Urgent (a flood warning): sent now whatever the hour, so the test does not depend on the time it runs.
    notice_id = runtime.outreach.notices.create("防汛", "今晚有暴雨，请关好门窗。", Audience("all"), "voice", "staff:test",
                                                urgent=True)
    twilio_api.delay_seconds = 0.004
    command = [sys.executable, "-m", "runtime.cli_worker", "--idle-sleep", "0.05"]
    try:
        worker = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while len(twilio_api.calls) < total // 3 and time.time() < deadline:
            time.sleep(0.01)
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        before = len(twilio_api.calls)
        assert 0 < before < total, "the kill must land mid-broadcast"
        time.sleep(1.2)  # the dead worker's job leases run out
        again = subprocess.run([*command, "--once", "--max-ticks", "5000"], cwd=ROOT, env=env, capture_output=True,
                               timeout=300)
        assert again.returncode == 0, again.stderr.decode()[-2000:]
    finally:
        twilio_api.delay_seconds = 0.0
    placed = [parse_qs(urlparse(c.url).query)["call"][0] for c in twilio_api.calls]
    assert len(placed) == len(set(placed)) == total  # each call asked of Twilio once
    assert sorted(c.to for c in twilio_api.calls) == sorted("+86" + p for p in phones)  # nobody twice, nobody lost
    # Twilio's side: everyone answers and listens, but 50 never pick up (tried again, then failed).
    outreach = runtime.outreach
    by_call = {int(parse_qs(urlparse(c.url).query)["call"][0]): c for c in twilio_api.calls}
    for i, (call_id, call) in enumerate(sorted(by_call.items())):
        if i % 20 == 0:
            outreach.calls.on_status(call_id, call.sid, "no-answer")
        else:
            outreach.answer(call_id, "start")
            outreach.answer(call_id, "menu")
            outreach.calls.on_status(call_id, call.sid, "completed")
    with runtime.db_sessions() as s:
        retries = s.scalar(select(func.count()).select_from(Job).where(Job.name == "outreach.call",
                                                                        Job.state == "queued"))
        assert retries == total // 20
    (report,) = outreach.notices.reports([notice_id])
    assert report.recipients == total and report.states == {"listened": total - total // 20, "sending": total // 20}
    # An hour later (notices.retry_minutes) the 50 are called once more, and again nobody answers.
    later = FakeClock(datetime.now(TZ) + timedelta(minutes=SHIPPED["outreach"]["notices"]["retry_minutes"] + 1))
    Worker(DbJobQueue(runtime.db_sessions, later), outreach.job_handlers(), worker_id="later").run_until_idle(2000)
    retried = twilio_api.calls[total:]
    assert len(retried) == total // 20 and len({c.to for c in retried}) == total // 20
    for call in retried:
        outreach.calls.on_status(int(parse_qs(urlparse(call.url).query)["call"][0]), call.sid, "no-answer")
    (report,) = outreach.notices.reports([notice_id])
    assert report.done and report.states == {"listened": total - total // 20, "failed": total // 20}
    with runtime.db_sessions() as s:
        assert s.scalar(select(func.count()).select_from(NoticeDelivery)) == total
    db.make_engine(url).dispose()


def test_a_check_in_call_to_a_cantonese_speaker_is_in_cantonese(line: Line):
    line.outreach.checkins.enrol(Enrolment("H001", language="yue"), "staff:test")
    line.outreach.checkins.plan(WED)
    line.move(datetime(2026, 11, 25, 9, 0, tzinfo=TZ))
    (call,) = line.api.calls
    first = line.answer(call)
    assert said(first).startswith("阿姨你好，呢度系社区平安电话")
    gather = first.find("Gather")
    assert gather.get("language") == "yue-Hant-HK"
    for say in first.iter("Say"):
        assert say.get("language") == "yue-HK"  # Twilio's Cantonese voice on the phone path
    ok = line.answer(type(call)(call.sid, call.to, PUBLIC_BASE_URL + gather.get("action"), call.status_callback,
                                call.form, call.created), SpeechResult="几好，冇事")
    assert "放心" in said(ok) and line.day("H001").state == "ok"


@pytest.mark.parametrize(("digits", "speech", "meaning"), [
    ("1", "", "yes"), ("0", "", "person"), ("9", "", "repeat"), ("8", "", "stop"), ("", "好的", "yes"),
    ("", "几好，冇事", "yes"), ("", "没事儿", "yes"), ("", "不好，头晕", "person"), ("", "唔舒服", "person"),
    ("", "不要再打了", "stop"), ("", "再听一遍", "repeat"), ("", "没吃", "no"), ("", "嗯嗯嗯", None),
])
def test_what_a_senior_says_on_an_outreach_call(digits, speech, meaning):
    from backend.outreach.texts import spoken_answer

    assert spoken_answer(digits, speech) == meaning


def test_a_call_that_never_gets_its_end_is_ended_as_unanswered_and_the_day_moves_on(line: Line):
    line.outreach.checkins.enrol(Enrolment("H001"), "staff:test")
    line.outreach.checkins.plan(WED)
    line.api.fail_next = 100  # Twilio answers 500 all morning: the call job keeps failing
    try:
        line.move(datetime(2026, 11, 25, 9, 0, tzinfo=TZ))
        assert line.api.calls == [] and line.day("H001").state == "calling"
        line.move(datetime(2026, 11, 25, 9, 31, tzinfo=TZ))  # no end after 30 minutes
        day = line.day("H001")
        assert (day.state, day.note) == ("retrying", "no-callback")
    finally:
        line.api.fail_next = 0
    line.move(datetime(2026, 11, 25, 9, 52, tzinfo=TZ))
    assert len(line.api.calls) == 1  # the second attempt goes out once Twilio is back


def test_call_checkin_plays_todays_call_in_the_terminal(line: Line):
    import io

    from channels.terminal import run_checkin_call

    line.sms.clock.now = datetime(2026, 11, 25, 9, 30, tzinfo=TZ)
    out = io.StringIO()
    run_checkin_call(line.runtime, "H002", io.StringIO("嗯？\n1\n"), out, language="yue")
    said = out.getvalue()
    assert "叔叔你好，呢度系社区平安电话" in said and "听唔清楚" in said and "放心" in said
    assert (line.day("H002").state, line.day("H002").answer) == ("ok", "ok")
    with pytest.raises(ValueError, match="already done"):
        run_checkin_call(line.runtime, "H002", io.StringIO("1\n"), io.StringIO())
    with pytest.raises(ValueError, match="unknown household"):
        run_checkin_call(line.runtime, "H404", io.StringIO("1\n"), io.StringIO())


def test_notices_send_previews_a_file_and_sends_only_with_yes(tmp_path, monkeypatch, capsys, model_dir):
    data = tmp_path / "var"
    for key, value in {"DATA_DIR": str(data), "DATABASE_URL": f"sqlite:///{tmp_path / 'n.db'}",
                       "MODEL_DIR": str(model_dir)}.items():
        monkeypatch.setenv(key, value)
    data.mkdir()
    notice = tmp_path / "notice.yml"
    notice.write_text("title: 停水通知\nbody: 12月8日停水。\nchannel: sms\naudience: {kind: all}\n", encoding="utf-8")
    assert run_cli("notices", "send", str(notice)) == 0
    (preview,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert preview["preview"]["recipients"] == 0 and preview["preview"]["segments"] == 1
    assert run_cli("notices", "send", str(notice), "--yes") == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {"notice": 1}
    assert run_cli("notices", "report") == 0
    (report,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert report["title"] == "停水通知" and report["recipients"] == 0
    notice.write_text("title: ''\nbody: x\n", encoding="utf-8")
    assert run_cli("notices", "send", str(notice)) == 2


# --- call-backs: a caller who reached nobody is called back ---------------------------------------
AGENT = "+8610012345"


def test_an_after_hours_caller_is_called_back_in_office_hours_and_put_through(line: Line):
    from backend.affairs.core import Handoff as HandoffRow
    from channels.phone_call import PhoneCall

    line.runtime.settings.env["AGENT_NUMBER"] = AGENT
    line.outreach.callbacks.agent_line = True
    line.sms.clock.now = datetime(2026, 11, 25, 20, 0, tzinfo=TZ)  # Wednesday evening: after office hours
    step = PhoneCall(line.runtime, line.runtime.ivr_flow).person("CA" + "e" * 32, "13800138000")
    assert step.next == "end" and step.reference
    line.move(datetime(2026, 11, 26, 8, 29, tzinfo=TZ))
    assert line.api.calls == []  # not before office hours
    line.move(datetime(2026, 11, 26, 8, 30, tzinfo=TZ))
    (call,) = line.api.calls
    assert call.to == "+8613800138000"
    twiml = line.answer(call)
    assert "现在给您回电话" in said(twiml)
    dial = twiml.find("Dial")
    number = dial.find("Number")
    assert number.text == AGENT and f"ref={step.reference}" in number.get("url")
    done = PUBLIC_BASE_URL + dial.get("action")
    nobody = line.answer(type(call)(call.sid, call.to, done, call.status_callback, call.form, call.created),
                         DialCallStatus="no-answer")
    assert "过一会儿再给您打过来" in said(nobody)
    assert line.status(call, "completed") == 204
    assert line.outreach.callbacks.states([step.reference]) == {step.reference: "queued"}
    line.move(datetime(2026, 11, 26, 8, 46, tzinfo=TZ))  # callback_retry_minutes later
    again = line.api.calls[1]
    twiml = line.answer(again)
    done = PUBLIC_BASE_URL + twiml.find("Dial").get("action")
    line.answer(type(again)(again.sid, again.to, done, again.status_callback, again.form, again.created),
                DialCallStatus="completed")
    line.status(again, "completed")
    assert line.outreach.callbacks.states([step.reference]) == {step.reference: "connected"}
    line.move(datetime(2026, 11, 26, 12, 0, tzinfo=TZ))
    assert len(line.api.calls) == 2  # done: nobody is called a third time
    with line.runtime.db_sessions() as s:
        assert s.scalar(select(HandoffRow.status).where(HandoffRow.reference == step.reference)) == "waiting"


def test_the_agent_line_not_answering_schedules_a_call_back_unless_someone_takes_the_case(line: Line):
    from assistant.ports import HandoffRequest

    line.runtime.settings.env["AGENT_NUMBER"] = AGENT
    line.outreach.callbacks.agent_line = True
    line.sms.app = build_app(line.runtime)  # the voice channel reads AGENT_NUMBER when it is built
    line.sms.client = line.sms.app.test_client()
    line.sms.clock.now = datetime(2026, 11, 25, 10, 0, tzinfo=TZ)
    receipts = [line.runtime.backend.create_handoff(HandoffRequest(
        sender_id=f"CA{i:032d}", channel="voice", phone="13800138000", reason="user_request", urgent=False,
        transcript=(), form_name=None, form_slots={}, idempotency_key=f"cb-{i}")) for i in (1, 2)]
    for receipt in receipts:
        params = {"CallSid": "CA" + "f" * 32, "AccountSid": ACCOUNT_SID, "From": "+8613800138000",
                  "To": FROM_NUMBER, "DialCallStatus": "no-answer", "CallStatus": "in-progress"}
        url = f"/webhooks/twilio/voice/dial-done?ref={receipt.reference}"
        response = line.sms.client.post(url, data=params, headers={"X-Twilio-Signature": sign(PUBLIC_BASE_URL + url,
                                                                                              params)})
        assert response.status_code == 200 and "回电话" in response.get_data(as_text=True)
    line.runtime.backend.set_status("handoff", receipts[1].reference, "taken", "staff:agent", None)
    line.move(datetime(2026, 11, 25, 10, 11, tzinfo=TZ))
    assert [c.to for c in line.api.calls] == ["+8613800138000"]  # the taken one is not called back
    states = line.outreach.callbacks.states([r.reference for r in receipts])
    assert states == {receipts[0].reference: "placed"}


def test_check_ins_and_notices_export_in_the_staff_members_scope(line: Line):
    from backend.people.exports import ExportFilter
    from backend.people.staff import Staff

    line.runtime.alerts.register_households(parse_households({"households": [
        {"id": "H900", "grid": "G09", "address": "x", "senior": {"name": "甲", "phone": "13700009000"}}]}))
    for code in ("H001", "H900"):
        line.outreach.checkins.enrol(Enrolment(code), "staff:test")
    line.outreach.checkins.plan(WED)
    line.sms.clock.now = datetime(2026, 11, 25, 10, 0, tzinfo=TZ)
    add_residents(line.runtime, 2)
    line.outreach.notices.create("停水", "12月8日停水。", Audience("all"), "sms", "staff:test")
    line.sms.worker.run_until_idle()
    exports = line.runtime.staff.exports
    day = ExportFilter(datetime(2026, 11, 25, tzinfo=TZ), datetime(2026, 11, 25, 23, 59, tzinfo=TZ))
    worker = Staff(1, "grida", "grid_worker", ("G01",), None)
    table = exports.build(worker, "checkins", day)
    assert [row[:3] for row in table.rows] == [("H001", "G01", "2026-11-25")]
    assert "13700000001" not in table.csv().decode("utf-8-sig")
    admin = Staff(2, "admin", "admin", (), None)
    assert {row[0] for row in exports.build(admin, "checkins", day).rows} == {"H001", "H900"}
    (notice,) = exports.build(admin, "notices", day).rows
    assert notice[1:3] == ("停水", "sms") and notice[5] == 2


def test_a_grids_weekly_report_is_one_workbook(line: Line):
    import io as _io

    from openpyxl import load_workbook

    from backend.people.staff import Staff

    line.outreach.checkins.enrol(Enrolment("H001"), "staff:test")
    line.outreach.checkins.plan(WED)
    with line.runtime.db_sessions() as s, s.begin():
        s.execute(CheckinDay.__table__.update().values(state="ok"))
    book = load_workbook(_io.BytesIO(line.runtime.staff.exports.weekly(
        Staff(1, "grida", "grid_worker", ("G01",), None), "G01", date(2026, 11, 23))))
    assert book.sheetnames == ["周报", "工单", "关爱告警", "平安电话"]
    figures = {row[0]: row[1] for row in book["周报"].iter_rows(min_row=2, values_only=True)}
    assert figures["网格"] == "G01" and figures["周"] == "2026-11-23 至 2026-11-29" and figures["平安电话：平安"] == 1


def test_pace_keeps_calls_per_second_at_the_configured_rate():
    slept: list[float] = []
    pace = Pace(4, sleep=slept.append)
    for _ in range(5):
        pace.wait()
    assert len(slept) == 4 and all(0.2 < s <= 1.0 for s in slept) and slept == sorted(slept)
    assert slept[-1] == pytest.approx(1.0, abs=0.05)  # the fifth call 4 × 0.25 s after the first


def test_a_retry_that_quiet_hours_would_push_to_tomorrow_ends_the_day_now(line: Line):
    line.outreach.checkins.enrol(Enrolment("H001", window_start="20:10", window_end="20:25", sms_fallback=False),
                                 "staff:test")
    line.outreach.checkins.plan(WED)
    line.move(datetime(2026, 11, 25, 20, 10, tzinfo=TZ))
    (call,) = line.api.calls
    line.status(call, "no-answer")  # the retry at 20:30 would fall in quiet hours (20:30–08:30)
    day = line.day("H001")
    assert (day.state, day.attempts) == ("missed", 1) and day.alert_id


def test_pressing_0_after_a_notice_reaches_a_person_and_is_counted(line: Line):
    phones = add_residents(line.runtime, 2)
    line.sms.clock.now = datetime(2026, 11, 25, 10, 0, tzinfo=TZ)
    notice_id = line.outreach.notices.create("停水", "明天停水。", Audience("list", phones=tuple(phones)), "voice",
                                             "staff:test")
    line.move(datetime(2026, 11, 25, 10, 0, tzinfo=TZ))  # the send job: calls one second apart from now
    line.move(datetime(2026, 11, 25, 10, 0, 2, tzinfo=TZ))
    first_call, second_call = line.api.calls
    for call, digits in ((first_call, "0"), (second_call, "9")):
        menu = line.answer(call)
        reply = line.answer(type(call)(call.sid, call.to, PUBLIC_BASE_URL + menu.find("Gather").get("action"),
                                       call.status_callback, call.form, call.created), Digits=digits)
        if digits == "0":
            assert "工作人员" in said(reply)
    with line.runtime.db_sessions() as s:
        (handoff,) = s.scalars(select(Handoff)).all()
        assert handoff.channel == "voice" and handoff.status == "waiting"
    (report,) = line.outreach.notices.reports([notice_id])
    assert (report.recipients, report.asked_person, report.repeats) == (2, 1, 1)
    assert report.states == {"listened": 1, "sending": 1}  # the second is still on the line, listening again


def test_an_answering_machine_is_not_counted_as_listening(line: Line):
    phones = add_residents(line.runtime, 1)
    line.sms.clock.now = datetime(2026, 11, 25, 10, 0, tzinfo=TZ)
    notice_id = line.outreach.notices.create("停水", "明天停水。", Audience("list", phones=tuple(phones)), "voice",
                                             "staff:test")
    line.move(datetime(2026, 11, 25, 10, 0, tzinfo=TZ))
    (call,) = line.api.calls
    menu = line.answer(call)
    line.answer(type(call)(call.sid, call.to, PUBLIC_BASE_URL + menu.find("Gather").get("action"),
                           call.status_callback, call.form, call.created))
    line.status(call, "completed", AnsweredBy="machine_end_beep")
    (report,) = line.outreach.notices.reports([notice_id])
    assert report.states == {"delivered": 1}


def test_an_urgent_notice_goes_out_in_quiet_hours_and_a_normal_one_waits(line: Line):
    phones = add_residents(line.runtime, 2)
    line.sms.clock.now = datetime(2026, 11, 25, 22, 0, tzinfo=TZ)
    notices = line.outreach.notices
    normal = notices.create("体检", "下周免费体检。", Audience("list", phones=(phones[0],)), "voice", "staff:test")
    notices.create("防汛", "今晚暴雨，请不要出门。", Audience("list", phones=(phones[1],)), "voice", "staff:test",
                   urgent=True)
    line.move(datetime(2026, 11, 25, 22, 0, 1, tzinfo=TZ))
    assert [c.to for c in line.api.calls] == ["+86" + phones[1]]
    (report,) = notices.reports([normal])
    assert report.send_at.astimezone(TZ).strftime("%m-%d %H:%M") == "11-26 08:30"
