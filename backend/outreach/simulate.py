"""A check-in day under a fake clock, on a real store (`python -m assistant checkin simulate`):
N households enrolled, the day's plan at 06:00, every call, retry, fallback SMS, care alert, SLA
escalation and handoff as JSON lines, then a closing summary line.

Everything is the production code path (jobs, outbox, alert desk, handoffs) except the edge of
the world: Twilio's Calls API is `ScriptedDialer`, and each senior's behaviour on the phone
(answers and presses 1, never answers, presses 0) is played by calling the same service methods
the webhooks call. Grid workers answer help alerts by SMS ("1" after 10 min, "2" after 25 min);
nobody answers the missed-call alerts, so those escalate along the chain.
"""
from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse
from zoneinfo import ZoneInfo

from sqlalchemy import func, select

from backend.affairs import StoreBackend
from backend.alerts.desk import AlertDesk
from backend.alerts.dispatch import CallResult
from backend.alerts.households import parse_households
from backend.alerts.rules import AlertRules
from backend.alerts.store import Alert, AlertEvent, CareHousehold
from backend.infra import db
from backend.infra.crypto import FieldCipher, KeyRing
from backend.infra.jobs import DbJobQueue, Worker
from backend.infra.models import Job
from backend.messaging.outbox import Outbox, SendResult
from backend.outreach.calls import Pace
from backend.outreach.checkins import Enrolment
from backend.outreach.service import Outreach
from backend.outreach.store import CheckinDay, OutboundCall

BEHAVIOURS = ("ok", "no_answer", "press_0", "busy_then_ok")


@dataclass
class ScriptedDialer:
    """Twilio's Calls API at the edge: records each call and hands back a sid."""

    dialled: list[tuple[str, int]] = field(default_factory=list)  # (to, our call id)

    def dial(self, to: str, url: str, status_callback: str, *, machine_detection: bool = False) -> CallResult:
        call_id = int(parse_qs(urlparse(url).query)["call"][0])
        self.dialled.append((to, call_id))
        return CallResult(f"CA{len(self.dialled):032x}", "queued")

    def find(self, to: str, since: datetime) -> str | None:
        return None


@dataclass
class RecordingSms:
    sent: list[tuple[str, str]] = field(default_factory=list)

    def send(self, to: str, body: str) -> SendResult:
        self.sent.append((to, body))
        return SendResult(f"SM{len(self.sent):032x}", "queued")


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def households_doc(n: int, grids: int = 5) -> dict[str, Any]:
    """N made-up households (phones 137 0000 xxxx), a grid worker and family for each."""
    doc: dict[str, Any] = {"grids": {}, "households": []}
    for g in range(1, grids + 1):
        doc["grids"][f"G{g:02d}"] = {"backup_grid_worker": {"name": f"备岗{g}", "phone": f"1380000{g:02d}02"},
                                     "community_leader": {"name": "赵主任", "phone": "13800000909"}}
    for i in range(1, n + 1):
        g = (i - 1) % grids + 1
        doc["households"].append({
            "id": f"H{i:03d}", "grid": f"G{g:02d}", "address": f"阳光小区{i}栋",
            "senior": {"name": f"老人{i}", "phone": f"1370000{i:04d}", "gender": "F" if i % 2 else "M"},
            "family": [{"name": f"子女{i}", "relation": "子女", "phone": f"1390000{i:04d}"}],
            "grid_worker": {"name": f"网格员{g}", "phone": f"1380000{g:02d}01"}})
    return doc


def scenario(n: int, no_answer: int, press_0: int, busy_then_ok: int = 0) -> dict[str, str]:
    """Household code → behaviour, spread over the list (not the first ones only)."""
    codes = [f"H{i:03d}" for i in range(1, n + 1)]
    out = dict.fromkeys(codes, "ok")
    step = max(1, n // max(1, no_answer + press_0 + busy_then_ok))
    picks = iter(codes[::step])
    for behaviour, count in (("no_answer", no_answer), ("press_0", press_0), ("busy_then_ok", busy_then_ok)):
        for _ in range(count):
            out[next(picks)] = behaviour
    return out


class CheckinDaySimulation:
    def __init__(self, config: Mapping[str, Any], behaviours: Mapping[str, str], *, day: date,
                 tz: str = "Asia/Shanghai", database_url: str | None = None) -> None:
        self.tz = ZoneInfo(tz)
        self.day = day
        self.behaviours = dict(behaviours)
        self._tmp = None
        if database_url is None:
            self._tmp = tempfile.TemporaryDirectory()
            database_url = f"sqlite:///{Path(self._tmp.name) / 'checkin-sim.db'}"
        db.upgrade(database_url)
        self.engine = db.make_engine(database_url)
        self.sessions = db.session_factory(self.engine)
        self.clock = Clock(datetime.combine(day, datetime.min.time(), self.tz).replace(hour=5, minute=59))
        self.cipher = FieldCipher(KeyRing({1: bytes(range(16))}, 1, bytes(range(32))))
        self.sms = RecordingSms()
        self.dialer = ScriptedDialer()
        outbox = Outbox(self.sessions, self.cipher, self.clock, self.sms)
        self.desk = AlertDesk(self.sessions, self.cipher, self.clock, outbox,
                              AlertRules.from_config(config.get("alerts"), tz))
        backend = StoreBackend(self.sessions, self.cipher, self.clock)
        self.outreach = Outreach(self.sessions, self.clock, self.desk, outbox, self.dialer,
                                 config.get("outreach") or {}, {"PUBLIC_BASE_URL": "https://sim.invalid"},
                                 backend.create_handoff, tz)
        # Pacing is real time (bench_outreach.py measures it); the simulated day runs on a fake
        # clock, where the calls are already spread by their jobs' run_at.
        self.outreach.calls.pace = Pace(0)
        self.worker = Worker(DbJobQueue(self.sessions, self.clock),
                             {**self.desk.job_handlers(), **self.outreach.job_handlers()}, tasks=(outbox.drain,),
                             worker_id="sim")
        doc = households_doc(len(self.behaviours))
        self.desk.register_households(parse_households(doc))
        self.staff_phones = {c["grid_worker"]["phone"] for c in doc["households"]}
        for code in sorted(self.behaviours):
            self.outreach.checkins.enrol(Enrolment(code), "staff:sim")
        self._seen_calls = 0
        self._seen_sms = 0
        self._seen_events = 0
        self._acks: list[tuple[datetime, str, str]] = []  # (when, phone, reply)
        self._tries: dict[str, int] = {}

    def close(self) -> None:
        self.engine.dispose()
        if self._tmp is not None:
            self._tmp.cleanup()

    # --- the run -----------------------------------------------------------------------------------
    def run(self, until_hour: int = 14) -> Iterator[dict[str, Any]]:
        self.outreach.arm()
        end = datetime.combine(self.day, datetime.min.time(), self.tz).replace(hour=until_hour)
        while True:
            due = self._next_due()
            if due is None or due > end:
                break
            self.clock.now = max(self.clock.now, due)
            self.worker.run_until_idle(max_ticks=1000)
            yield from self._observe()
        self.clock.now = end
        yield self.summary()

    def _next_due(self) -> datetime | None:
        with self.sessions() as s:
            job = s.scalar(select(func.min(Job.run_at)).where(Job.state == "queued"))
        acks = [at for at, _, _ in self._acks]
        times = [t for t in (job, *acks) if t is not None]
        return min(times) if times else None

    def _observe(self) -> Iterator[dict[str, Any]]:
        while self._seen_calls < len(self.dialer.dialled) or self._due_acks():
            for reply in self._due_acks():
                at, phone, body = reply
                self._acks.remove(reply)
                answer = self.desk.acknowledge(phone, body, "sms")
                yield self._line("staff_reply", who=phone[-4:], reply=body, ok=answer is not None)
            while self._seen_calls < len(self.dialer.dialled):
                to, call_id = self.dialer.dialled[self._seen_calls]
                self._seen_calls += 1
                yield from self._play(call_id)
            self.worker.run_until_idle(max_ticks=1000)
        yield from self._new_sms()
        yield from self._new_alert_events()

    def _due_acks(self) -> list[tuple[datetime, str, str]]:
        return [a for a in self._acks if a[0] <= self.clock.now]

    def _play(self, call_id: int) -> Iterator[dict[str, Any]]:
        with self.sessions() as s:
            call = s.get(OutboundCall, call_id)
            assert call is not None
            day = s.get(CheckinDay, call.ref_id)
            household = s.get(CareHousehold, day.household_id) if day else None
            code, sid, attempt = (household.code if household else "?"), call.call_sid or "", call.attempt
        behaviour = self.behaviours.get(code, "ok")
        yield self._line("call", household=code, attempt=attempt)
        calls = self.outreach.calls
        if behaviour == "no_answer" or (behaviour == "busy_then_ok" and attempt == 1):
            status = "no-answer" if behaviour == "no_answer" else "busy"
            calls.on_status(call_id, sid, "ringing")
            calls.on_status(call_id, sid, status)
            yield self._line(status.replace("-", "_"), household=code, attempt=attempt)
            return
        calls.on_status(call_id, sid, "in-progress")
        self.outreach.answer(call_id, "start")
        key = "0" if behaviour == "press_0" else "1"
        script = self.outreach.answer(call_id, "ask", digits=key)
        calls.on_status(call_id, sid, "completed")
        line = self._line("answered", household=code, key=key, next=script.next)
        if script.reference:
            line["handoff"] = script.reference
            with self.sessions() as s:
                day = s.get(CheckinDay, call.ref_id)
                alert = day.alert_id if day else None
            # The grid worker told by SMS answers, naming the alert (they may have several open):
            # 收到 after 10 min, 已上门 after 25 min.
            worker = next(p for p in self.staff_phones if p.endswith(f"{(int(code[1:]) - 1) % 5 + 1:02d}01"))
            self._acks += [(self.clock.now + timedelta(minutes=10), worker, f"1 {alert}"),
                           (self.clock.now + timedelta(minutes=25), worker, f"2 {alert}")]
        yield line

    def _new_sms(self) -> Iterator[dict[str, Any]]:
        for to, body in self.sms.sent[self._seen_sms:]:
            kind = body[1:body.index("】")] if body.startswith("【") else "sms"
            yield self._line("sms", to=f"*{to[-4:]}", kind=kind)
        self._seen_sms = len(self.sms.sent)

    def _new_alert_events(self) -> Iterator[dict[str, Any]]:
        with self.sessions() as s:
            rows = s.execute(select(AlertEvent, Alert.rule, CareHousehold.code).join(Alert, Alert.id == AlertEvent.alert_id)
                             .join(CareHousehold, CareHousehold.id == Alert.household_id)
                             .where(AlertEvent.id > self._seen_events).order_by(AlertEvent.id)).all()
        for event, rule, code in rows:
            self._seen_events = event.id
            note = json.loads(event.note or "{}")
            yield self._line(f"alert_{event.event}", household=code, alert=event.alert_id, rule=rule,
                             **({"step": note["step"], "why": note.get("why")} if event.event == "escalated" else {}))

    def _line(self, event: str, **values: Any) -> dict[str, Any]:
        return {"at": self.clock.now.astimezone(self.tz).strftime("%H:%M:%S"), "event": event, **values}

    def summary(self) -> dict[str, Any]:
        with self.sessions() as s:
            states = dict(s.execute(select(CheckinDay.state, func.count()).group_by(CheckinDay.state)).all())
            alerts = dict(s.execute(select(Alert.rule, func.count()).group_by(Alert.rule)).all())
            escalations = s.scalar(select(func.count()).select_from(AlertEvent)
                                   .where(AlertEvent.event == "escalated")) or 0
            handoffs = s.scalar(select(func.count()).select_from(CheckinDay)
                                .where(CheckinDay.handoff_reference.is_not(None))) or 0
            calls = s.scalar(select(func.count()).select_from(OutboundCall)) or 0
            retries = s.scalar(select(func.count()).select_from(OutboundCall).where(OutboundCall.attempt > 1)) or 0
        return {"event": "summary", "households": len(self.behaviours), "calls": calls, "retries": retries,
                "checkins": {k: int(v) for k, v in states.items()}, "alerts": {k: int(v) for k, v in alerts.items()},
                "escalations": int(escalations), "handoffs": int(handoffs),
                "sms": len(self.sms.sent)}


def simulate(config: Mapping[str, Any], households: int, no_answer: int, press_0: int, day: date,
             emit: Callable[[dict[str, Any]], None], busy_then_ok: int = 0) -> dict[str, Any]:
    sim = CheckinDaySimulation(config, scenario(households, no_answer, press_0, busy_then_ok), day=day)
    try:
        last: dict[str, Any] = {}
        for line in sim.run():
            emit(line)
            last = line
        return last
    finally:
        sim.close()
