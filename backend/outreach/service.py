"""Outreach: the facade the runtime builds once (check-ins, notices, their outbound calls, and
residents' contact preferences) and the jobs a worker runs for it:

  outreach.call     {call_id}   place one outbound call (backend.outreach.calls)
  outreach.call_timeout {call_id}  end a call that never got its final status, as unanswered
  checkin.plan      {}          today's check-ins, daily at outreach.checkin.plan_at
  checkin.attempt   {day_id}    the next call / SMS of one check-in, or the end of its wait
  notice.send       {notice_id} deliveries for a notice's audience, queued on their channels
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from assistant.ports import Clock
from backend.alerts.desk import AlertDesk
from backend.alerts.unit import AlertUnit
from backend.infra import jobs
from backend.infra.tx import TransactionRunner
from backend.messaging.outbox import Outbox
from backend.outreach.callbacks import Callbacks, CallbackSettings
from backend.outreach.calls import CALL_JOB, TIMEOUT_JOB, CallDialer, CallFacts, CallSettings, OutboundCalls
from backend.outreach.checkins import ATTEMPT_JOB, PLAN_JOB, PLAN_KEY, Checkins, Handoffs
from backend.outreach.notices import SEND_JOB, Notices
from backend.outreach.policy import OutreachPolicy
from backend.outreach.prefs import Preferences
from backend.outreach.script import CallScript
from backend.outreach.texts import STOP_WORDS, OutreachTexts, heard


class Outreach:
    def __init__(self, sessions: Callable[[], Any], clock: Clock, alerts: AlertDesk, outbox: Outbox,
                 dialer: CallDialer | None, config: Mapping[str, Any], env: Mapping[str, str],
                 handoffs: Handoffs | None = None, tz: str = "Asia/Shanghai",
                 handoff_config: Mapping[str, Any] | None = None) -> None:
        self.runner = TransactionRunner(sessions, clock, make_unit=AlertUnit)
        self.sessions = sessions
        self.policy = OutreachPolicy.from_config(config, tz)
        self.texts = OutreachTexts(config)
        self.prefs = Preferences(alerts.records.cipher)
        self.calls = OutboundCalls(self.runner, alerts.records.cipher, dialer, CallSettings.from_config(config, env))
        self.checkins = Checkins(self.runner, self.calls, outbox, alerts, self.prefs, self.texts, self.policy,
                                 handoffs)
        self.notices = Notices(self.runner, self.calls, outbox, self.prefs, self.texts, self.policy, handoffs)
        self.callbacks = Callbacks(self.runner, self.calls, self.texts, self.policy,
                                   CallbackSettings.from_config(handoff_config or {}), bool(env.get("AGENT_NUMBER")))

    def job_handlers(self) -> dict[str, Callable[[Mapping[str, Any]], None]]:
        def plan(_: Mapping[str, Any]) -> None:
            self.checkins.plan_daily()

        def send(payload: Mapping[str, Any]) -> None:
            self.notices.send(int(payload["notice_id"]))

        return {
            CALL_JOB: lambda p: self.calls.place(int(p["call_id"])),
            TIMEOUT_JOB: lambda p: self.calls.timeout(int(p["call_id"])),
            PLAN_JOB: plan,
            ATTEMPT_JOB: lambda p: self.checkins.attempt(int(p["day_id"])),
            SEND_JOB: send,
        }

    def arm(self) -> None:
        """Every worker calls this at start; the first creates the daily plan job."""
        jobs.schedule_if_absent(self.sessions, PLAN_JOB, PLAN_KEY, self.checkins.next_plan(self.runner.now()))

    def answer(self, call_id: int, step: str, digits: str = "", speech: str = "", tries: int = 0) -> CallScript:
        """The answered call's next turn, by the purpose that placed it."""
        facts = self.calls.facts(call_id)
        handler = {"checkin": self.checkins, "notice": self.notices,
                   "callback": self.callbacks}.get(facts.purpose if facts else "")
        if handler is None:
            return CallScript((self.texts.get("checkin_goodbye"),), "end")
        return handler.answer(call_id, step, digits, speech, tries)

    def promise_callback(self, facts: CallFacts, reference: str) -> bool:
        """The person asked for on an outbound call did not answer: call back for `reference`."""
        return bool(reference) and self.callbacks.schedule(reference, facts.phone, facts.language)

    def sms_reply(self, phone: str, body: str) -> str | None:
        """An SMS meant for outreach: a check-in answer, or "不要再打". None: not for us."""
        reply = self.checkins.sms_reply(phone, body)
        if reply is not None:
            return reply
        if len(body) <= 12 and heard(body, STOP_WORDS) and "退订" not in body:
            self.notices.stop_calls(phone)
            return self.texts.get("no_calls_sms")
        return None
