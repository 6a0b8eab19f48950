"""Outbound calls as durable jobs: a row in `outbound_calls` and job `outreach.call`, created in
the transaction that decided to call, so a call exists iff that decision committed.

Placing is two transactions around one REST request: `placing` (with its time) is committed
first, then Twilio is asked, then the sid is recorded. A worker killed between the two leaves a
`placing` row; the job runs again after its lease and first asks Twilio for a call to that number
created since then (`CallDialer.find`), adopting it if there is one, so nobody is called twice.

What the callee hears is fetched by Twilio from our answer webhook when the call is answered
(channels/twilio_outreach.py), and status callbacks end the call here; the purpose that asked
(check-in, notice) is then told how it ended (`CallPurpose.ended`).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import select

from backend.alerts.dispatch import CallError, CallResult
from backend.alerts.unit import AlertUnit
from backend.infra import jobs
from backend.infra.crypto import FieldCipher
from backend.infra.tx import TransactionRunner
from backend.outreach.store import OutboundCall

log = logging.getLogger(__name__)

CALL_JOB = "outreach.call"
TIMEOUT_JOB = "outreach.call_timeout"
# A call with no final status this long after it was due (the job dead-lettered while Twilio was
# down, a status callback lost) is ended here as unanswered, so its check-in or notice moves on.
CALL_TIMEOUT = timedelta(minutes=30)
FINAL_STATUSES = frozenset({"completed", "busy", "no-answer", "failed", "canceled"})


class CallDialer(Protocol):
    """Twilio's Calls API (backend.alerts.dispatch.TwilioCallPlacer), or a recorded fake."""

    def dial(self, to: str, url: str, status_callback: str, *, machine_detection: bool = False) -> CallResult: ...

    def find(self, to: str, since: datetime) -> str | None: ...


@dataclass(frozen=True)
class CallFacts:
    """What the webhooks and handoffs need to know of one outbound call, read in one transaction."""

    purpose: str
    ref_id: int
    language: str
    phone: str


class CallPurpose(Protocol):
    """Who asked for a call: told when it ends, asked whether it is still wanted."""

    def wanted(self, unit: AlertUnit, call: OutboundCall) -> bool: ...

    def ended(self, unit: AlertUnit, call: OutboundCall) -> None: ...


@dataclass(frozen=True)
class CallSettings:
    public_base_url: str | None
    machine_detection: bool = False  # answering-machine detection costs time on every answer
    calls_per_second: float = 1.0

    @classmethod
    def from_config(cls, config: Mapping[str, Any], env: Mapping[str, str]) -> CallSettings:
        rate = env.get("OUTREACH_CALLS_PER_SECOND") or config.get("calls_per_second", 1.0)
        return cls((env.get("PUBLIC_BASE_URL") or "").rstrip("/") or None,
                   bool(config.get("machine_detection", False)), float(rate))


class Pace:
    """At most `per_second` calls from this process (Twilio queues the rest at its own CPS, but a
    worker that was down must not fire a backlog at once)."""

    def __init__(self, per_second: float, sleep: Callable[[float], None] = time.sleep) -> None:
        self.gap = 1.0 / per_second if per_second > 0 else 0.0
        self.sleep = sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.gap
        if start > now:
            self.sleep(start - now)


class OutboundCalls:
    def __init__(self, runner: TransactionRunner, cipher: FieldCipher, dialer: CallDialer | None,
                 settings: CallSettings) -> None:
        self.runner = runner
        self.cipher = cipher
        self.dialer = dialer
        self.settings = settings
        self.purposes: dict[str, CallPurpose] = {}
        self.pace = Pace(settings.calls_per_second)

    def queue_in(self, unit: AlertUnit, purpose: str, ref_id: int, attempt: int, phone: str, language: str,
                 run_at: datetime) -> OutboundCall:
        """A call to place at `run_at`, inside the caller's transaction; the same purpose, ref and
        attempt twice is one call."""
        key = f"{purpose}:{ref_id}:{attempt}"
        existing = unit.session.scalar(select(OutboundCall).where(OutboundCall.dedupe_key == key))
        if existing is not None:
            return existing
        call = OutboundCall(purpose=purpose, ref_id=ref_id, attempt=attempt, dedupe_key=key,
                            to_hash=self.cipher.blind_index(phone, "phone"), to_enc=self.cipher.encrypt(phone),
                            language=language, state="queued", created_at=unit.now, updated_at=unit.now)
        unit.session.add(call)
        unit.session.flush()
        jobs.enqueue_in(unit.session, CALL_JOB, {"call_id": call.id}, run_at, f"{CALL_JOB}:{call.id}", unit.now,
                        new=True)
        jobs.enqueue_in(unit.session, TIMEOUT_JOB, {"call_id": call.id}, run_at + CALL_TIMEOUT,
                        f"{TIMEOUT_JOB}:{call.id}", unit.now, new=True)
        return call

    def timeout(self, call_id: int) -> None:
        """Job outreach.call_timeout: a call still without its end is ended as unanswered."""

        def work(unit: AlertUnit) -> None:
            call = unit.session.get(OutboundCall, call_id, with_for_update=True)
            if call is None or call.state in ("ended", "failed"):
                return
            log.warning("outbound call %d had no final status after %s: ended as unanswered", call_id, CALL_TIMEOUT)
            call.state, call.ended_at, call.updated_at = "ended", unit.now, unit.now
            call.status = "no-callback"
            self._tell(unit, call)

        self.runner.run(work)

    def record_local(self, unit: AlertUnit, purpose: str, ref_id: int, attempt: int, phone: str,
                     language: str) -> OutboundCall:
        """A call carried by the terminal simulator (`call --checkin`): answered at once, no job."""
        call = OutboundCall(purpose=purpose, ref_id=ref_id, attempt=attempt,
                            dedupe_key=f"{purpose}:{ref_id}:{attempt}:terminal",
                            to_hash=self.cipher.blind_index(phone, "phone"), to_enc=self.cipher.encrypt(phone),
                            language=language, state="placed", status="in-progress",
                            created_at=unit.now, updated_at=unit.now)
        unit.session.add(call)
        unit.session.flush()
        call.call_sid = f"CAterminal{call.id:022d}"
        return call

    def urls(self, call_id: int) -> tuple[str, str]:
        base = self.settings.public_base_url
        return (f"{base}/webhooks/twilio/outreach/answer?call={call_id}",
                f"{base}/webhooks/twilio/outreach/status?call={call_id}")

    def place(self, call_id: int) -> None:
        """Job outreach.call. Raises so the queue retries a transient failure."""
        dialer = self.dialer
        if dialer is None or not self.settings.public_base_url:
            # Not configured: the call fails at once, so its purpose moves on (an SMS, an alert)
            # rather than waiting for a call that never comes.
            why = "outbound calls are not configured (TWILIO_* settings and PUBLIC_BASE_URL)"
            log.error("outbound call %d: %s", call_id, why)
            self.runner.run(lambda unit: self._failed(unit, call_id, why))
            return

        def prepare(unit: AlertUnit) -> tuple[str, datetime | None] | None:
            call = unit.session.get(OutboundCall, call_id, with_for_update=True)
            if call is None or call.state not in ("queued", "placing"):
                return None
            # `placing` here: the job's last holder died after asking Twilio, or before (its lease
            # ran out, so it is not still running): ask Twilio before asking for a call again.
            purpose = self.purposes.get(call.purpose)
            if purpose is not None and not purpose.wanted(unit, call):
                call.state, call.outcome, call.updated_at = "ended", "not_needed", unit.now
                return None
            before = call.placing_at if call.state == "placing" else None
            call.state, call.placing_at, call.updated_at = "placing", unit.now, unit.now
            return self.cipher.decrypt(call.to_enc), before

        prepared = self.runner.run(prepare)
        if prepared is None:
            return
        phone, crashed_at = prepared
        sid = dialer.find(phone, crashed_at) if crashed_at is not None else None
        if sid is None:
            answer, status = self.urls(call_id)
            self.pace.wait()
            try:
                sid = dialer.dial(phone, answer, status, machine_detection=self.settings.machine_detection).call_sid
            except CallError as exc:
                if exc.retryable:
                    raise
                error = str(exc)
                self.runner.run(lambda unit: self._failed(unit, call_id, error))
                return
        else:
            log.info("outbound call %d was placed before a crash; adopting %s", call_id, sid[:10])
        self.runner.run(lambda unit: self._placed(unit, call_id, sid))

    def _placed(self, unit: AlertUnit, call_id: int, sid: str) -> None:
        call = unit.session.get(OutboundCall, call_id, with_for_update=True)
        if call is not None and call.state == "placing":
            call.state, call.call_sid, call.status, call.updated_at = "placed", sid, "queued", unit.now

    def _failed(self, unit: AlertUnit, call_id: int, error: str) -> None:
        """Twilio refused the call for good (a wrong or unreachable number): it ended, unanswered."""
        call = unit.session.get(OutboundCall, call_id, with_for_update=True)
        if call is None or call.state not in ("queued", "placing"):
            return
        call.state, call.status, call.updated_at, call.ended_at = "failed", "failed", unit.now, unit.now
        log.warning("outbound call %d refused: %s", call_id, error[:120])
        self._tell(unit, call)

    def on_status(self, call_id: int, call_sid: str, status: str, answered_by: str | None = None) -> bool:
        """A status callback (signed). False when it is not ours. A final status ends the call once."""
        status = status.lower()

        def work(unit: AlertUnit) -> bool:
            call = unit.session.get(OutboundCall, call_id, with_for_update=True)
            if call is None or (call.call_sid and call.call_sid != call_sid):
                return False
            if call.call_sid is None and call.state in ("placing", "queued"):
                call.call_sid = call_sid  # the callback beat our own record of the sid
                call.state = "placed"
            if call.state in ("ended", "failed"):
                return True  # a repeated or late callback
            call.status, call.updated_at = status[:16], unit.now
            if answered_by:
                call.answered_by = answered_by[:24]
            if status in FINAL_STATUSES:
                call.state, call.ended_at = "ended", unit.now
                self._tell(unit, call)
            return True

        return self.runner.run(work)

    def _tell(self, unit: AlertUnit, call: OutboundCall) -> None:
        purpose = self.purposes.get(call.purpose)
        if purpose is not None:
            purpose.ended(unit, call)

    def answered_by_machine(self, call: OutboundCall) -> bool:
        return bool(call.answered_by and call.answered_by.startswith(("machine", "fax")))

    def facts(self, call_id: int) -> CallFacts | None:
        def work(unit: AlertUnit) -> CallFacts | None:
            call = unit.session.get(OutboundCall, call_id)
            return None if call is None else CallFacts(call.purpose, call.ref_id, call.language, self.phone(call))

        return self.runner.run(work)

    def get(self, unit: AlertUnit, call_id: int) -> OutboundCall | None:
        return unit.session.get(OutboundCall, call_id, with_for_update=True)

    def phone(self, call: OutboundCall) -> str:
        return self.cipher.decrypt(call.to_enc)
