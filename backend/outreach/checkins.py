"""平安电话: daily check-in calls to seniors who opted in or whom staff enrolled.

A day's plan (job `checkin.plan`, daily at `outreach.checkin.plan_at`) creates one `checkin_days`
row per enrolled household and arms job `checkin.attempt` at the window's start, spread at the
configured calls per second. An attempt calls (or, for SMS schedules, texts) the senior. On the
call: 1 / "好" = all well (plus one optional question); 0 / "不好" = a person: a handoff case with
the context, a `checkin_help` care alert for the grid worker, and the call put through to the
agent line when one is configured. No answer, busy, a machine or no clear reply: another attempt
after `retry_minutes`, up to `attempts`; then an SMS (when `sms_fallback`) with time to answer;
then a `checkin_missed` care alert with its SLA timers and the family told. A household whose
sensors show activity today may be skipped (`skip_if_active`). Nobody is called in quiet hours.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import func, select

from assistant.ports import CaseReceipt, HandoffRequest
from backend.alerts.desk import AlertDesk
from backend.alerts.state import HouseholdState
from backend.alerts.store import CareContact, CareHousehold
from backend.alerts.unit import AlertUnit
from backend.infra import jobs
from backend.infra.tx import TransactionRunner
from backend.messaging.outbox import Outbox
from backend.outreach.calls import OutboundCalls
from backend.outreach.policy import OutreachPolicy
from backend.outreach.prefs import Preferences
from backend.outreach.script import MAX_TRIES, CallScript
from backend.outreach.store import CHECKIN_FINAL, CheckinDay, CheckinSchedule, OutboundCall
from backend.outreach.texts import OutreachTexts, spoken_answer

PLAN_JOB, ATTEMPT_JOB = "checkin.plan", "checkin.attempt"
PLAN_KEY = "checkin.plan:daily"
MISSED_RULE, HELP_RULE = "checkin_missed", "checkin_help"
Handoffs = Callable[[HandoffRequest], CaseReceipt]


@dataclass(frozen=True)
class Enrolment:
    household: str  # the household's code (H001)
    window_start: str | None = None
    window_end: str | None = None
    days: str | None = None
    channel: str = "voice"
    question: str | None = None
    skip_if_active: bool = False
    sms_fallback: bool = True
    language: str | None = None  # sets the senior's preference too


@dataclass(frozen=True)
class CheckinSummary:
    household: str
    grid: str
    streak: int  # days in a row, up to the last one planned, that ended well (ok, or skipped: active)
    missed_30: int
    help_30: int
    last_day: date | None
    last_state: str | None


class Checkins:
    def __init__(self, runner: TransactionRunner, calls: OutboundCalls, outbox: Outbox, alerts: AlertDesk,
                 prefs: Preferences, texts: OutreachTexts, policy: OutreachPolicy,
                 handoffs: Handoffs | None = None) -> None:
        self.runner = runner
        self.calls = calls
        self.outbox = outbox
        self.alerts = alerts
        self.prefs = prefs
        self.texts = texts
        self.policy = policy
        self.handoffs = handoffs
        self.cipher = calls.cipher
        calls.purposes["checkin"] = self

    # --- enrolment -------------------------------------------------------------------------------
    def enrol(self, e: Enrolment, actor: str) -> int:
        d = self.policy.checkin
        if e.channel not in ("voice", "sms"):
            raise ValueError("channel must be voice or sms")
        days = e.days or d.days
        if not days or any(ch not in "1234567" for ch in days):
            raise ValueError("days are ISO weekdays, e.g. 12345")

        def work(unit: AlertUnit) -> int:
            household = unit.session.scalar(select(CareHousehold).where(CareHousehold.code == e.household))
            if household is None:
                raise ValueError(f"unknown household {e.household}")
            row = unit.session.scalar(select(CheckinSchedule).where(CheckinSchedule.household_id == household.id))
            if row is None:
                row = CheckinSchedule(household_id=household.id, created_at=unit.now)
                unit.session.add(row)
            row.window_start, row.window_end = e.window_start or d.window_start, e.window_end or d.window_end
            row.days, row.channel, row.question = days, e.channel, (e.question or None)
            row.retry_minutes, row.attempts = d.retry_minutes, d.attempts
            row.skip_if_active, row.sms_fallback, row.enabled = e.skip_if_active, e.sms_fallback, True
            row.enrolled_by, row.updated_at = actor[:64], unit.now
            unit.session.flush()
            if e.language:
                phone = self._senior_phone(unit, household)
                if phone:
                    self.prefs.update(unit, self.prefs.phone_hash(phone), actor, language=e.language)
            unit.audit(actor, "update", row.id, entity_type="checkin_schedule", household=household.code)
            return row.id

        return self.runner.run(work)

    # --- the day's plan ------------------------------------------------------------------------
    def plan(self, day: date | None = None) -> int:
        """Creates today's check-ins (once per household and day) and arms their first attempts."""

        def work(unit: AlertUnit) -> int:
            today = day or self.policy.today(unit.now)
            weekday = str(today.isoweekday())
            rows = unit.session.scalars(select(CheckinSchedule).where(CheckinSchedule.enabled.is_(True))
                                        .order_by(CheckinSchedule.window_start, CheckinSchedule.id)).all()
            gap = timedelta(seconds=1.0 / max(self.calls.settings.calls_per_second, 0.01))
            made = 0
            for i, sched in enumerate(r for r in rows if weekday in r.days):
                exists = unit.session.scalar(select(CheckinDay.id).where(
                    CheckinDay.household_id == sched.household_id, CheckinDay.day == today))
                if exists is not None:
                    continue
                start = max(self.policy.at_local(today, sched.window_start), unit.now) + gap * i
                start = self.policy.allowed(start)
                row = CheckinDay(household_id=sched.household_id, day=today, state="planned", attempts=0,
                                 channel=sched.channel, next_at=start, created_at=unit.now, updated_at=unit.now)
                unit.session.add(row)
                unit.session.flush()
                jobs.enqueue_in(unit.session, ATTEMPT_JOB, {"day_id": row.id}, start, f"{ATTEMPT_JOB}:{row.id}",
                                unit.now, new=True)
                made += 1
            return made

        return self.runner.run(work)

    def plan_daily(self) -> int:
        """Job checkin.plan: today's plan, then the same time tomorrow."""
        made = self.plan()

        def rearm(unit: AlertUnit) -> None:
            jobs.enqueue_in(unit.session, PLAN_JOB, {}, self.next_plan(unit.now), PLAN_KEY, unit.now)

        self.runner.run(rearm)
        return made

    def next_plan(self, after: datetime) -> datetime:
        at = self.policy.at_local(self.policy.today(after), self.policy.checkin.plan_at)
        return at if at > after else at + timedelta(days=1)

    # --- attempts --------------------------------------------------------------------------------
    def attempt(self, day_id: int) -> None:
        """Job checkin.attempt: the next call or SMS, or the end of the wait for an SMS answer."""

        def work(unit: AlertUnit) -> None:
            day = unit.session.get(CheckinDay, day_id, with_for_update=True)
            if day is None or day.state in CHECKIN_FINAL or day.state == "calling":
                return
            household = unit.session.get(CareHousehold, day.household_id)
            sched = unit.session.scalar(select(CheckinSchedule).where(CheckinSchedule.household_id == day.household_id))
            assert household is not None
            if sched is None or not sched.enabled:
                return self._finish(unit, day, "skipped", note="not enrolled any more")
            if day.state == "waiting_sms":  # nobody answered the SMS in time
                return self._missed(unit, day, household)
            if day.attempts == 0 and sched.skip_if_active and self._active_today(household, day.day):
                return self._finish(unit, day, "skipped", note="sensors show activity today")
            allowed = self.policy.allowed(unit.now)
            if allowed > unit.now:
                return self._arm(unit, day, allowed)
            phone = self._senior_phone(unit, household)
            if not phone:
                return self._missed(unit, day, household, note="no phone for the senior")
            day.attempts += 1
            day.updated_at = unit.now
            if day.channel == "sms":
                return self._send_sms(unit, day, household, phone)
            day.state, day.next_at = "calling", None
            language = self.prefs.language(unit, self.prefs.phone_hash(phone))
            self.calls.queue_in(unit, "checkin", day.id, day.attempts, phone, language, unit.now)

        self.runner.run(work)

    def terminal_call(self, household_code: str, language: str | None = None) -> tuple[int, str]:
        """Today's check-in of one household, as a call in the terminal (`call --checkin`):
        (call id, its sid). The answers count like a real call's."""

        def work(unit: AlertUnit) -> tuple[int, str]:
            household = unit.session.scalar(select(CareHousehold).where(CareHousehold.code == household_code))
            if household is None:
                raise ValueError(f"unknown household {household_code}")
            phone = self._senior_phone(unit, household)
            if not phone:
                raise ValueError(f"household {household_code} has no phone for the senior")
            today = self.policy.today(unit.now)
            day = unit.session.scalar(select(CheckinDay).where(CheckinDay.household_id == household.id,
                                                               CheckinDay.day == today).with_for_update())
            if day is None:
                day = CheckinDay(household_id=household.id, day=today, state="planned", attempts=0, channel="voice",
                                 created_at=unit.now, updated_at=unit.now)
                unit.session.add(day)
                unit.session.flush()
            if day.state in CHECKIN_FINAL:
                raise ValueError(f"today's check-in of {household_code} is already done ({day.state})")
            day.attempts += 1
            day.state, day.next_at = "calling", None
            lang = language or self.prefs.language(unit, self.prefs.phone_hash(phone))
            call = self.calls.record_local(unit, "checkin", day.id, day.attempts, phone, lang)
            return call.id, call.call_sid or ""

        return self.runner.run(work)

    # CallPurpose
    def wanted(self, unit: AlertUnit, call: OutboundCall) -> bool:
        day = unit.session.get(CheckinDay, call.ref_id)
        return day is not None and day.state not in CHECKIN_FINAL

    def ended(self, unit: AlertUnit, call: OutboundCall) -> None:
        """The call ended: unless it ended the day (all well, a person), try again or give up."""
        day = unit.session.get(CheckinDay, call.ref_id, with_for_update=True)
        if day is None or day.state in CHECKIN_FINAL or call.attempt != day.attempts:
            return
        sched = unit.session.scalar(select(CheckinSchedule).where(CheckinSchedule.household_id == day.household_id))
        household = unit.session.get(CareHousehold, day.household_id)
        assert household is not None
        day.note = (call.outcome or ("machine" if self.calls.answered_by_machine(call) else call.status) or "")[:200]
        again = self.policy.allowed(unit.now + timedelta(minutes=sched.retry_minutes)) if sched else None
        # Another call the same day only: a retry pushed past quiet hours into tomorrow is no check-in
        # of today, so the day goes on to its SMS and its alert now.
        if sched is not None and again is not None and day.attempts < sched.attempts \
                and self.policy.today(again) == day.day:
            day.state = "retrying"
            return self._arm(unit, day, again)
        if sched is not None and sched.sms_fallback:
            phone = self._senior_phone(unit, household)
            if phone:
                day.channel = "sms"
                return self._send_sms(unit, day, household, phone)
        self._missed(unit, day, household)

    # --- the call's turns ------------------------------------------------------------------------
    def answer(self, call_id: int, step: str, digits: str = "", speech: str = "", tries: int = 0) -> CallScript:
        """What the senior hears next. Steps: start → ask → (question) → end."""

        def work(unit: AlertUnit) -> tuple[CallScript, bool]:
            call = self.calls.get(unit, call_id)
            day = unit.session.get(CheckinDay, call.ref_id, with_for_update=True) if call else None
            if call is None or day is None:
                return CallScript((self.texts.get("checkin_goodbye"),), "end"), False
            household = unit.session.get(CareHousehold, day.household_id)
            assert household is not None
            lang = call.language
            t = self.texts
            if step == "start":
                greeting = t.get("checkin_greeting", lang, title=_title(household))
                return CallScript((greeting, t.get("checkin_ask", lang)), "listen", lang, "ask"), False
            said = spoken_answer(digits, speech)
            sched = unit.session.scalar(select(CheckinSchedule).where(
                CheckinSchedule.household_id == day.household_id))
            question = sched.question if sched is not None else None
            if said == "person" or (step == "ask" and said == "no"):
                self._help(unit, day, household, call)
                return CallScript((t.get("checkin_help", lang),), "person", lang), True
            if step == "ask" and said == "yes":
                self._finish(unit, day, "ok", answer="ok")
                call.outcome = "ok"
                if question:
                    return CallScript((t.get("checkin_question", lang, question=question),), "listen", lang,
                                      "question"), False
                return CallScript((t.get("checkin_ok", lang),), "end", lang), False
            if step == "question" and said in ("yes", "no"):
                day.answer = f"question:{said}"
                return CallScript((t.get("checkin_ok", lang),), "end", lang), False
            again = t.get("checkin_ask", lang) if step == "ask" else t.get("checkin_question", lang,
                                                                              question=question or "")
            if said == "repeat":
                return CallScript((again,), "listen", lang, step, tries), False
            if tries + 1 >= MAX_TRIES:
                if step == "question":  # the day is already well; only the question went unanswered
                    return CallScript((t.get("checkin_ok", lang),), "end", lang), False
                call.outcome = "unclear"
                return CallScript((t.get("checkin_goodbye", lang),), "end", lang), False
            return CallScript((t.get("checkin_unclear", lang), again), "listen", lang, step, tries + 1), False

        script, needs_person = self.runner.run(work)
        if needs_person:
            reference = self._handoff(call_id)
            return CallScript(script.say, "person", script.language, reference=reference)
        return script

    def sms_reply(self, phone: str, body: str) -> str | None:
        """An SMS answer ("1"/"好", "0"/"不好") to today's check-in SMS; None when none waits."""
        phone_hash = self.prefs.phone_hash(phone)

        def work(unit: AlertUnit) -> tuple[str | None, int | None]:
            day = unit.session.scalar(
                select(CheckinDay).join(CareContact, CareContact.household_id == CheckinDay.household_id)
                .where(CareContact.role == "senior", CareContact.phone_hash == phone_hash,
                       CheckinDay.state == "waiting_sms").order_by(CheckinDay.id.desc()).limit(1)
                .with_for_update(of=CheckinDay))
            if day is None:
                return None, None
            said = spoken_answer(body.strip()[:1] if body.strip()[:1].isdigit() else "", body)
            lang = self.prefs.sms_language(unit, phone_hash)
            household = unit.session.get(CareHousehold, day.household_id)
            assert household is not None
            if said == "yes":
                self._finish(unit, day, "ok", answer="ok:sms")
                return self.texts.get("checkin_sms_ok", lang), None
            if said in ("no", "person"):
                self._help(unit, day, household, None)
                return self.texts.get("checkin_sms_help", lang), day.id
            return None, None

        reply, help_day = self.runner.run(work)
        if help_day is not None:
            self._handoff_for_day(help_day, phone, "sms")
        return reply

    # --- outcomes --------------------------------------------------------------------------------
    def _help(self, unit: AlertUnit, day: CheckinDay, household: CareHousehold, call: OutboundCall | None) -> None:
        self._finish(unit, day, "help", answer="help")
        if call is not None:
            call.outcome = "help"
        day.alert_id = self.alerts.notifications.raise_external(
            unit, household, HELP_RULE, f"{HELP_RULE}:{day.day.isoformat()}",
            {"day": day.day.isoformat(), "channel": day.channel}, "system:checkin")

    def _handoff(self, call_id: int) -> str | None:
        facts = self.calls.facts(call_id)
        return self._handoff_for_day(facts.ref_id, facts.phone, "voice") if facts else None

    def _handoff_for_day(self, day_id: int, phone: str, channel: str) -> str | None:
        if self.handoffs is None:
            return None
        receipt = self.handoffs(HandoffRequest(
            sender_id=f"checkin:{day_id}", channel=channel, phone=phone, reason="user_request", urgent=True,
            transcript=(("bot", self.texts.get("checkin_ask")), ("user", "平安电话：老人表示需要帮助")),
            form_name=None, form_slots={"checkin_day": day_id}, idempotency_key=f"checkin-help:{day_id}"))

        def record(unit: AlertUnit) -> None:
            day = unit.session.get(CheckinDay, day_id, with_for_update=True)
            if day is not None:
                day.handoff_reference = receipt.reference

        self.runner.run(record)
        return receipt.reference

    def _missed(self, unit: AlertUnit, day: CheckinDay, household: CareHousehold, note: str | None = None) -> None:
        self._finish(unit, day, "missed", note=note or day.note)
        day.alert_id = self.alerts.notifications.raise_external(
            unit, household, MISSED_RULE, f"{MISSED_RULE}:{day.day.isoformat()}",
            {"day": day.day.isoformat(), "attempts": day.attempts}, "system:checkin")

    def _finish(self, unit: AlertUnit, day: CheckinDay, state: str, *, answer: str | None = None,
                note: str | None = None) -> None:
        day.state, day.finished_at, day.updated_at, day.next_at = state, unit.now, unit.now, None
        if answer:
            day.answer = answer
        if note:
            day.note = note[:200]

    def _arm(self, unit: AlertUnit, day: CheckinDay, at: datetime) -> None:
        day.next_at, day.updated_at = at, unit.now
        jobs.enqueue_in(unit.session, ATTEMPT_JOB, {"day_id": day.id}, at, f"{ATTEMPT_JOB}:{day.id}", unit.now)

    def _send_sms(self, unit: AlertUnit, day: CheckinDay, household: CareHousehold, phone: str) -> None:
        lang = self.prefs.sms_language(unit, self.prefs.phone_hash(phone))
        self.outbox.enqueue_in(unit.session, phone, self.texts.get("checkin_sms", lang, title=_title(household)),
                               f"checkin-sms:{day.id}")
        day.state = "waiting_sms"
        self._arm(unit, day, unit.now + timedelta(minutes=self.policy.checkin.sms_wait_minutes))

    def _senior_phone(self, unit: AlertUnit, household: CareHousehold) -> str | None:
        senior = next((p for p in self.alerts.records.people(unit, household) if p.role == "senior"), None)
        return senior.phone if senior else None

    def _active_today(self, household: CareHousehold, day: date) -> bool:
        if not household.engine_state:
            return False
        midnight = self.policy.at_local(day, "00:00")
        return any(at >= midnight for at in HouseholdState.from_json(household.engine_state).last_active.values())

    # --- console ---------------------------------------------------------------------------------
    def summaries(self, today: date, grids: tuple[str, ...] | None = None) -> list[CheckinSummary]:
        """Per enrolled household: the streak of good days, and missed / help days in 30."""

        def work(unit: AlertUnit) -> list[CheckinSummary]:
            query = select(CareHousehold).join(CheckinSchedule, CheckinSchedule.household_id == CareHousehold.id)
            if grids is not None:
                query = query.where(CareHousehold.grid_id.in_(grids))
            households = unit.session.scalars(query.order_by(CareHousehold.code)).all()
            since = today - timedelta(days=30)
            by_home: dict[int, list[tuple[date, str]]] = {h.id: [] for h in households}
            for home, day, state in unit.session.execute(  # one query for every household on the page
                    select(CheckinDay.household_id, CheckinDay.day, CheckinDay.state).where(
                        CheckinDay.household_id.in_(list(by_home)), CheckinDay.day > since, CheckinDay.day <= today)
                    .order_by(CheckinDay.day.desc())):
                by_home[home].append((day, state))
            out = []
            for h in households:
                days = by_home[h.id]
                streak = 0
                for _, state in days:
                    if state not in CHECKIN_FINAL:
                        if streak == 0:
                            continue  # today's call may still be under way
                        break
                    if state not in ("ok", "skipped"):
                        break
                    streak += 1
                out.append(CheckinSummary(h.code, h.grid_id, streak, sum(s == "missed" for _, s in days),
                                          sum(s == "help" for _, s in days), days[0][0] if days else None,
                                          days[0][1] if days else None))
            return out

        return self.runner.run(work)

    def counts(self, day: date, grids: tuple[str, ...] | None = None) -> dict[str, int]:
        """Check-ins of `day` by state (within `grids` when given): the dashboard's figures."""

        def work(unit: AlertUnit) -> dict[str, int]:
            query = select(CheckinDay.state, func.count()).where(CheckinDay.day == day)
            if grids is not None:
                query = query.join(CareHousehold, CareHousehold.id == CheckinDay.household_id).where(
                    CareHousehold.grid_id.in_(grids))
            rows = unit.session.execute(query.group_by(CheckinDay.state)).all()
            return {state: int(n) for state, n in rows}

        return self.runner.run(work)


def _title(household: CareHousehold) -> str:
    return {"F": "阿姨", "M": "叔叔"}.get(household.senior_gender or "", "老人家")

