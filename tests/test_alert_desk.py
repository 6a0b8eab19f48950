"""AlertDesk on SQLite and Postgres with a fake clock: ingest → alerts, events, outbox SMS, jobs
(time rules, quiet hours, SLA escalation), voice calls through a loopback Twilio `Calls.json`,
119 through a loopback webhook, acknowledgement by SMS / DTMF / staff, all-clear."""
from __future__ import annotations

import copy
import json
import threading
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import schema_drift
from fixtures.twilio_world import JsonHandler
from sqlalchemy import func, select

from assistant.config import load_settings
from backend.alerts.desk import AlertDesk, BatchError, TokenError
from backend.alerts.dispatch import TwilioCallConfig, TwilioCallPlacer, WebhookIntegration
from backend.alerts.households import load_households
from backend.alerts.rules import AlertRules
from backend.alerts.store import Alert, AlertEvent, SensorReading, UnknownReading
from backend.infra import db
from backend.infra.audit_chain import AuditEntry, verify_audit_chain
from backend.infra.crypto import FieldCipher, KeyRing
from backend.infra.jobs import DbJobQueue, Worker
from backend.infra.models import Job
from backend.messaging.outbox import Outbox, SendResult
from core_fixtures import TZ, FakeClock

FIXTURES = Path(__file__).parent / "fixtures" / "alerts"
ACCOUNT_SID = "AC" + "ab" * 16
AUTH_TOKEN = "t" * 32
VOICE_FROM = "+8610690001"
GRID_WORKER, BACKUP, LEADER, PROPERTY = "13800000001", "13800000002", "13800000009", "13800000008"
SOCIAL, DOCTOR = "13800000003", "13800000004"
SENIOR_1, SON_1, SENIOR_2, DAUGHTER_2 = "13700002222", "13900001111", "13700003333", "13900002222"
TOKEN_1, TOKEN_2 = "token-H001-gateway", "token-H002-gateway"
CARE_TABLES = {"care_households", "care_contacts", "care_devices", "sensor_readings", "unknown_readings",
               "care_alerts", "care_alert_events"}


# --- the edge of the world: Twilio's Calls API and a 119 receiver on loopback ----------------------
@dataclass
class Loopback:
    requests: list[dict[str, Any]] = field(default_factory=list)
    fail_next: int = 0
    server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def calls(self) -> list[dict[str, str]]:
        return [r["form"] for r in self.requests if r["path"].endswith("/Calls.json")]

    def fire(self) -> list[dict[str, Any]]:
        return [r["json"] for r in self.requests if r["path"] == "/fire119"]


class _Handler(JsonHandler):

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        world: Loopback = self.server.world  # type: ignore[attr-defined]
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if world.fail_next > 0:
            world.fail_next -= 1
            self._json(503, {"code": 20503, "message": "Service Unavailable", "status": 503})
            return
        if self.path == "/fire119":
            world.requests.append({"path": self.path, "json": json.loads(raw.decode("utf-8")),
                                   "content_type": self.headers.get("Content-Type")})
            self._json(200, {"received": True})
            return
        form = dict(urllib.parse.parse_qsl(raw.decode()))
        world.requests.append({"path": self.path, "form": form, "auth": self.headers.get("Authorization")})
        if self.path != f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls.json":
            self._json(404, {"code": 20404, "message": "The requested resource was not found", "status": 404})
            return
        sid = "CA" + f"{len(world.requests):032x}"
        # Twilio's recorded answer to a create-call request.
        self._json(201, {
            "account_sid": ACCOUNT_SID, "annotation": None, "answered_by": None, "api_version": "2010-04-01",
            "caller_name": None, "date_created": None, "date_updated": None, "direction": "outbound-api",
            "duration": None, "end_time": None, "forwarded_from": None, "from": form.get("From"),
            "from_formatted": form.get("From"), "group_sid": None, "parent_call_sid": None,
            "phone_number_sid": None, "price": None, "price_unit": "USD", "sid": sid, "start_time": None,
            "status": "queued", "subresource_uris": {}, "to": form.get("To"), "to_formatted": form.get("To"),
            "trunk_sid": None, "uri": f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls/{sid}.json", "queue_time": "0",
        })


@pytest.fixture(scope="module")
def loopback():
    world = Loopback()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.world = world  # type: ignore[attr-defined]
    world.server = server
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield world
    server.shutdown()
    server.server_close()


# --- the desk ---------------------------------------------------------------------------------------
class RecordingSender:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def send(self, to: str, body: str) -> SendResult:
        self.sent.append((to, body))
        return SendResult(f"SM{len(self.sent):032x}", "queued")


def shipped_rules(**alerts_overrides: Any) -> AlertRules:
    config = copy.deepcopy(load_settings({}).config["alerts"])
    config.update(alerts_overrides)
    return AlertRules.from_config(config)


class World:
    def __init__(self, url: str, clock: FakeClock, loopback: Loopback, rules: AlertRules | None = None) -> None:
        self.url, self.clock, self.loopback = url, clock, loopback
        self.cipher = FieldCipher(KeyRing({1: bytes(range(16))}, 1, bytes(range(32))))
        self.sender = RecordingSender()
        self.rules = rules or shipped_rules()
        self.engine = db.make_engine(url)
        self.sessions = db.session_factory(self.engine)
        self.restart()

    def restart(self) -> None:
        """A new process: new desk, queue and worker over the same database (timers are in it)."""
        self.outbox = Outbox(self.sessions, self.cipher, self.clock, self.sender)
        placer = TwilioCallPlacer(TwilioCallConfig(ACCOUNT_SID, AUTH_TOKEN, VOICE_FROM, self.loopback.base_url))
        fire = WebhookIntegration("fire_119", self.loopback.base_url + "/fire119")
        self.desk = AlertDesk(self.sessions, self.cipher, self.clock, self.outbox, self.rules,
                              integrations={"fire_119": fire}, call_placer=placer,
                              public_base_url="https://care.example.org")
        self.worker = Worker(DbJobQueue(self.sessions, self.clock), self.desk.job_handlers(),
                             tasks=(self.outbox.drain,), worker_id="test-worker")

    def at(self, hours: float, day: int = 0) -> datetime:
        return datetime(2026, 11, 25, tzinfo=TZ) + timedelta(days=day, hours=hours)

    def move_to(self, when: datetime) -> int:
        """Moves the clock and runs every job that is due by then."""
        self.clock.now = when
        return self.worker.run_until_idle()

    def post(self, token: str, *readings: tuple[str, str, float, datetime]):
        return self.desk.ingest(token, [{"device": d, "kind": k, "value": v, "ts": ts.isoformat()}
                                        for d, k, v, ts in readings])

    def texts(self, phone: str) -> list[str]:
        while self.outbox.drain(100):  # what is queued now goes out now
            pass
        return [body for to, body in self.sender.sent if to == phone]

    def alerts(self) -> list[Alert]:
        with self.sessions() as s:
            return list(s.scalars(select(Alert).order_by(Alert.id)))

    def events(self, alert_id: int) -> list[tuple[str, str, str]]:
        with self.sessions() as s:
            return [(e.event, e.to_state, e.actor) for e in s.scalars(
                select(AlertEvent).where(AlertEvent.alert_id == alert_id).order_by(AlertEvent.id))]

    def close(self) -> None:
        self.engine.dispose()


@pytest.fixture
def world(db_url: str, loopback: Loopback):
    db.upgrade(db_url)
    loopback.requests.clear()
    loopback.fail_next = 0
    clock = FakeClock(datetime(2026, 11, 25, 7, 0, tzinfo=TZ))
    w = World(db_url, clock, loopback)
    w.desk.register_households(load_households(FIXTURES / "households.yml"))
    yield w
    with w.sessions() as s:
        assert verify_audit_chain(s) is None
    w.close()


# --- severe: gas ------------------------------------------------------------------------------------
def test_gas_leak_notifies_119_family_doctor_worker_and_calls_the_senior_at_once(world: World) -> None:
    world.clock.now = world.at(9.5)
    result = world.post(TOKEN_2, ("G-H002", "gas", 3, world.at(9.5)))
    assert result.accepted == 1 and len(result.alerts) == 1
    world.move_to(world.at(9.5))
    (alert,) = world.alerts()
    assert (alert.rule, alert.level, alert.state) == ("gas_leak", "severe", "notified")
    assert "燃气泄漏" in world.texts(DAUGHTER_2)[0] and "119" in world.texts(DAUGHTER_2)[0]
    assert "网格员王芳" in world.texts(DAUGHTER_2)[0]
    staff = world.texts(GRID_WORKER)[0]
    assert "王建国" in staff and "阳光小区5栋1单元302" in staff and "5分钟内电话联系" in staff
    assert world.texts(DOCTOR) and world.texts(SENIOR_2) == []  # the senior gets a call, not texts
    (fire,) = world.loopback.fire()
    assert fire["type"] == "care_alert" and fire["rule"] == "gas_leak" and fire["household"] == "H002"
    assert fire["address"] == "阳光小区5栋1单元302" and fire["senior"] == {"name": "王建国", "phone": SENIOR_2}
    assert fire["idempotency_key"] == f"care-alert-{alert.id}-fire_119"
    (call,) = world.loopback.calls()
    assert call["To"] == "+86" + SENIOR_2 and call["From"] == VOICE_FROM
    assert "燃气阀门" in call["Twiml"] and "叔叔您好" in call["Twiml"]
    assert f"https://care.example.org/webhooks/twilio/voice/alert?alert={alert.id}&amp;contact=" in call["Twiml"]
    events = [e for e, _, _ in world.events(alert.id)]
    assert events[:2] == ["raised", "notified"] and "sent_fire_119" in events and "call_placed" in events
    # Still leaking for minutes: one alert, one call, one 119 post.
    world.post(TOKEN_2, ("G-H002", "gas", 3, world.at(9.51)), ("G-H002", "gas", 4, world.at(9.52)))
    world.move_to(world.at(9.53))
    assert len(world.alerts()) == 1 and len(world.loopback.calls()) == 1 and len(world.loopback.fire()) == 1


def test_119_outage_is_retried_by_the_job_queue(world: World) -> None:
    world.loopback.fail_next = 1
    world.clock.now = world.at(9.5)
    world.post(TOKEN_2, ("G-H002", "gas", 3, world.at(9.5)))
    world.move_to(world.at(9.5))
    assert world.loopback.fire() == []
    world.move_to(world.at(9.5) + timedelta(seconds=6))  # back-off 5 s
    assert len(world.loopback.fire()) == 1


def test_gas_all_clear_tells_people_but_a_person_closes_the_alert(world: World) -> None:
    world.clock.now = world.at(9.5)
    world.post(TOKEN_2, ("G-H002", "gas", 3, world.at(9.5)))
    world.move_to(world.at(9.5))
    world.desk.acknowledge(GRID_WORKER, "收到", "sms")
    world.clock.now = world.at(9.6)
    world.post(TOKEN_2, ("G-H002", "gas", 0, world.at(9.6)))
    world.move_to(world.at(9.6) + timedelta(minutes=10))
    (alert,) = world.alerts()
    assert alert.state == "acknowledged" and alert.cleared_at is not None
    assert any("恢复正常" in t for t in world.texts(DAUGHTER_2))
    assert world.desk.staff_action(alert.id, "close", "赵主任", "已上门，阀门已关") == "closed"


# --- medium: no water, the 15/30-minute chain --------------------------------------------------
def test_no_water_sla_chain_exact_times_survives_a_restart(world: World) -> None:
    world.clock.now = world.at(8)
    world.post(TOKEN_1, ("W-H001", "water", 100.0, world.at(7.5)), ("W-H001", "water", 100.02, world.at(8)))
    world.move_to(world.at(10) - timedelta(seconds=1))
    assert world.alerts() == []
    world.move_to(world.at(10))
    (alert,) = world.alerts()
    assert (alert.rule, alert.state, alert.raised_at) == ("no_water", "notified", world.at(10))
    assert alert.ack_due_at == world.at(10.25) and alert.visit_due_at == world.at(10.5)
    assert "白天2小时未用水" in world.texts(GRID_WORKER)[0] and "15分钟内电话联系，30分钟内上门" in world.texts(
        GRID_WORKER)[0]
    assert "网格员王芳" in world.texts(SON_1)[0] and world.texts(SENIOR_1) == []
    world.restart()  # the server restarts: the deadlines are in the database
    world.move_to(world.at(10.25) - timedelta(seconds=1))
    assert world.texts(BACKUP) == []
    world.move_to(world.at(10.25))
    assert "15分钟内无人确认" in world.texts(BACKUP)[0]
    assert world.alerts()[0].state == "escalated"
    ack = world.desk.acknowledge("+86" + GRID_WORKER, "收到。", "sms")
    assert ack is not None and ack.action == "acknowledged" and str(alert.id) in ack.reply
    assert "网格员王芳已确认" in world.texts(SON_1)[-1]
    world.move_to(world.at(10.45))
    assert world.texts(LEADER) == []  # acknowledged: no ack escalation …
    world.move_to(world.at(10.5))
    assert "30分钟内未上门" in world.texts(LEADER)[0]  # … but the visit is late
    visit = world.desk.acknowledge(GRID_WORKER, "2", "sms")
    assert visit is not None and visit.action == "visited"
    assert "已上门看望张秀兰" in world.texts(SON_1)[-1]
    assert [e for e, _, _ in world.events(alert.id)] == [
        "raised", "notified", "escalated", "acknowledged", "escalated", "visited"]
    assert world.events(alert.id)[3][2].startswith("sms:grid_worker:")


def test_all_clear_closes_the_alert_and_stops_the_clock(world: World) -> None:
    world.clock.now = world.at(8)
    world.post(TOKEN_1, ("W-H001", "water", 100.0, world.at(7.5)), ("W-H001", "water", 100.02, world.at(8)))
    world.move_to(world.at(10))
    world.clock.now = world.at(10.1)
    world.post(TOKEN_1, ("W-H001", "water", 100.5, world.at(10.1)))
    (alert,) = world.alerts()
    assert alert.state == "closed" and alert.cleared_at == world.at(10.1)
    world.move_to(world.at(11))
    assert world.texts(BACKUP) == [] and world.texts(LEADER) == []
    assert "恢复正常" in world.texts(SON_1)[-1] and "恢复正常" in world.texts(GRID_WORKER)[-1]


def test_replies_that_are_not_for_an_alert_fall_through(world: World) -> None:
    assert world.desk.acknowledge(GRID_WORKER, "收到", "sms") is None  # nothing open
    assert world.desk.acknowledge("13100000000", "1", "sms") is None  # a stranger
    world.clock.now = world.at(8)
    world.post(TOKEN_1, ("W-H001", "water", 100.0, world.at(7.5)), ("W-H001", "water", 100.02, world.at(8)))
    world.move_to(world.at(10))
    assert world.desk.acknowledge(GRID_WORKER, "我想办老年证", "sms") is None
    family = world.desk.acknowledge(SON_1, "收到", "sms")
    assert family is not None and family.action == "family_reply"
    assert world.alerts()[0].acknowledged_at is None  # family replies do not stop the clock
    assert world.desk.acknowledge(GRID_WORKER, "1", "sms").action == "acknowledged"
    assert world.desk.acknowledge(GRID_WORKER, "1", "sms").action == "already"


# --- quiet hours, duplicates, unknown devices ---------------------------------------------------
def test_quiet_hours_hold_a_medium_alert_until_seven(world: World) -> None:
    world.rules = shipped_rules(offline_hours={"door": 72})  # this door sensor sends no heartbeats
    world.restart()
    world.clock.now = world.at(23)
    world.post(TOKEN_1, ("D-H001", "door", 1, world.at(23)))
    world.move_to(world.at(23, day=2))  # 48 h without opening, at 23:00
    (alert,) = world.alerts()
    assert (alert.rule, alert.state, alert.notify_at) == ("no_door", "open", world.at(7, day=3))
    assert world.texts(PROPERTY) == [] and world.texts(GRID_WORKER) == []
    world.move_to(world.at(7, day=3) - timedelta(seconds=1))
    assert world.texts(PROPERTY) == []
    world.move_to(world.at(7, day=3))
    assert "48小时未开门" in world.texts(PROPERTY)[0] and world.texts(GRID_WORKER)
    assert world.alerts()[0].ack_due_at == world.at(8, day=3)


def test_duplicates_and_unknown_devices(world: World) -> None:
    world.clock.now = world.at(8)
    batch = [("W-H001", "water", 100.0, world.at(7.5)), ("W-H001", "water", 100.02, world.at(8))]
    assert world.post(TOKEN_1, *batch).accepted == 2
    again = world.post(TOKEN_1, *batch, ("X-9", "water", 1.0, world.at(8)), ("W-H002", "water", 5.0, world.at(8)),
                       ("E-H001", "gas", 0, world.at(8)))
    assert (again.accepted, again.duplicates, again.kept_aside) == (0, 2, 3)
    with world.sessions() as s:
        assert s.scalar(select(func.count()).select_from(SensorReading)) == 2
        reasons = sorted(s.scalars(select(UnknownReading.reason)))
        assert reasons == ["kind_mismatch", "other_household", "unknown_device"]
        assert s.scalar(select(func.count()).select_from(AuditEntry).where(
            AuditEntry.entity_type == "sensor_readings")) == 2
    with pytest.raises(TokenError):
        world.post("wrong-token", *batch)
    with pytest.raises(BatchError) as err:
        world.desk.ingest(TOKEN_1, [{"device": "W-H001", "kind": "water", "value": 1, "ts": "2026-11-25T08:00:00"}])
    assert (err.value.index, err.value.field) == (0, "ts")


def test_offline_sensor_is_reported_to_the_grid_worker(world: World) -> None:
    world.clock.now = world.at(8)
    world.post(TOKEN_2, ("G-H002", "gas", 0, world.at(8)))
    world.move_to(world.at(10) - timedelta(seconds=1))
    assert world.alerts() == []
    world.move_to(world.at(10))
    (alert,) = world.alerts()
    assert (alert.rule, alert.alert_key, alert.level) == ("sensor_offline", "sensor_offline:G-H002", "light")
    assert "燃气报警器已2小时无数据" in world.texts(GRID_WORKER)[0]


# --- light: electricity check-in call answered by DTMF -------------------------------------------
def test_electricity_drop_check_in_call_and_dtmf_answers(world: World) -> None:
    world.rules = shipped_rules(offline_hours={"electricity": 72})
    world.restart()
    meter = 0.0
    for day in range(5):
        meter += 5.0 if day < 4 else 2.0
        world.clock.now = world.at(12, day=day)
        world.post(TOKEN_1, ("E-H001", "electricity", meter, world.at(12, day=day)))
    world.clock.now = world.at(0.1, day=5)
    result = world.post(TOKEN_1, ("E-H001", "electricity", meter, world.at(0.1, day=5)))
    (alert_id,) = result.alerts
    world.move_to(world.at(6.9, day=5))
    assert world.texts(SOCIAL) == [] and world.loopback.calls() == []  # quiet hours
    world.move_to(world.at(7, day=5))
    assert "用电量比平时下降60%" in world.texts(SOCIAL)[0]
    (call,) = world.loopback.calls()
    assert "阿姨您好，这里是社区。按1表示一切平安，按0转社区。" in call["Twiml"]
    contact_id = int(call["Twiml"].split("contact=")[1].split('"')[0])
    transfer = world.desk.acknowledge_contact(contact_id, "0", "voice", alert_id)
    assert transfer is not None and transfer.action == "senior_transfer"
    assert "老人电话中按0要求社区联系" in world.texts(GRID_WORKER)[-1]  # next in the chain
    ok = world.desk.acknowledge_contact(contact_id, "1", "voice", alert_id)
    assert ok is not None and ok.action == "senior_ok"
    assert world.alerts()[0].state == "closed"


# --- schema, staff view ---------------------------------------------------------------------------
def test_staff_view_is_audited_and_the_migration_matches_the_models(world: World) -> None:
    world.clock.now = world.at(9.5)
    (alert_id,) = world.post(TOKEN_2, ("G-H002", "gas", 3, world.at(9.5))).alerts
    view = world.desk.view(alert_id, "staff:赵主任")
    assert view is not None and view.rule == "gas_leak" and view.events[0][0] == "raised"
    with world.sessions() as s:
        assert s.scalar(select(AuditEntry.id).where(AuditEntry.actor == "staff:赵主任",
                                                    AuditEntry.action == "read")) is not None
        jobs = set(s.scalars(select(Job.name)))
        assert {"alert.integration", "alert.call", "alert.sla", "alert.check"} <= jobs
    with world.engine.connect() as conn:
        assert schema_drift(conn, CARE_TABLES) == []
        assert CARE_TABLES <= set(conn.dialect.get_table_names(conn))


def test_a_worker_with_two_open_alerts_picks_one_by_its_number(world: World) -> None:
    world.clock.now = world.at(8)
    world.post(TOKEN_1, ("W-H001", "water", 100.0, world.at(7.5)), ("W-H001", "water", 100.02, world.at(8)))
    world.move_to(world.at(10))
    world.post(TOKEN_2, ("G-H002", "gas", 3, world.at(10)))
    water, gas = world.alerts()
    assert f"1 {water.id}" in world.texts(GRID_WORKER)[0]
    assert world.desk.acknowledge(GRID_WORKER, f"收到 {water.id}", "sms").alert_id == water.id
    assert world.desk.acknowledge(GRID_WORKER, "1", "sms").alert_id == gas.id  # else the latest
    assert world.desk.acknowledge(GRID_WORKER, "1 999", "sms") is None  # not an alert of theirs


# --- a rule defined only in config ------------------------------------------------------------------
def test_a_co2_threshold_rule_from_config_alone_texts_the_grid_worker(world: World) -> None:
    config = copy.deepcopy(load_settings({}).config["alerts"])
    config["rules"]["co2_high"] = {"kind": "threshold", "sensor": "co2", "above": 2000, "minutes": 10,
                                   "level": "medium", "notify": ["grid_worker"], "sla": {"ack_minutes": 30}}
    config["texts"] = {"what_co2_high": "室内二氧化碳浓度过高（{value}ppm）"}
    config["offline_hours"] = {**config["offline_hours"], "co2": 24}
    world.rules = AlertRules.from_config(config)
    world.restart()
    world.desk.register_device("H001", "C-H001", "co2")
    world.clock.now = world.at(9.2)
    result = world.post(TOKEN_1, *[("C-H001", "co2", 2500, world.at(9) + timedelta(minutes=m)) for m in range(11)])
    assert result.accepted == 11 and len(result.alerts) == 1
    (alert,) = world.alerts()
    assert (alert.rule, alert.level, alert.state, alert.raised_at) == (
        "co2_high", "medium", "notified", world.at(9) + timedelta(minutes=10))
    assert "室内二氧化碳浓度过高（2500ppm）" in world.texts(GRID_WORKER)[0]
    assert "30分钟内电话联系" in world.texts(GRID_WORKER)[0]
