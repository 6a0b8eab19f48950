"""Traffic and checks for tests against a deploy.local_cluster.LocalCluster (real processes).

- `Traffic`: threads sending signed Twilio MMS webhooks (a photo report each, unique MessageSid
  and sender) and REST conversations (a 老年证 application, five turns, state in Redis),
  recording every attempt with its timing and outcome.
- `redeliver`: what Twilio does with a webhook that got no usable answer (connection cut,
  time-out, 5xx, or our "busy, send again" TwiML): the same MessageSid again.
- `Store`: counts in the cluster's database (tickets per MessageSid, applications per reference,
  the outbox) and decrypts outbox rows to match them with what the fake Twilio API received.
"""
from __future__ import annotations

import http.client
import itertools
import json
import random
import re
import secrets
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import yaml
from fixtures.twilio_world import inbound_params, sign

from core_fixtures import make_id

ROOT = Path(__file__).resolve().parent.parent
SMS_PATH = "/webhooks/twilio/sms"
REST_PATH = "/webhooks/rest/webhook"
TWILIO_TIMEOUT = 15.0  # Twilio gives a webhook 15 s
REPORT_BODY = "阳光小区3号楼门口路灯坏了"
_REF_RE = re.compile(r"编号(\d{8})")
_numbers = itertools.count(random.randrange(10_000_000, 80_000_000))  # distinct senders across runs


def unique_mobile(prefix: str = "139") -> str:
    return f"+86{prefix}{next(_numbers) % 100_000_000:08d}"


# --- one request ------------------------------------------------------------------------------------
@dataclass
class Attempt:
    kind: str  # "sms" | "rest"
    started: float
    ended: float
    status: int | None  # None: no answer (connection cut, time-out)
    ok: bool  # the answer a client can use (SMS: 200 with a reference; REST: 200)
    text: str = ""


def _post(base_url: str, path: str, body: bytes, headers: dict[str, str],
          timeout: float = TWILIO_TIMEOUT) -> tuple[int | None, str]:
    parts = urllib.parse.urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("POST", path, body, headers)
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        return None, ""
    finally:
        conn.close()


def post_sms(base_url: str, params: dict[str, str]) -> Attempt:
    body = urllib.parse.urlencode(params).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded",
               "X-Twilio-Signature": sign(base_url + SMS_PATH, params)}
    started = time.monotonic()
    status, text = _post(base_url, SMS_PATH, body, headers)
    ok = status == 200 and _REF_RE.search(text) is not None
    return Attempt("sms", started, time.monotonic(), status, ok, text)


def reference(text: str) -> str | None:
    match = _REF_RE.search(text)
    return match.group(1) if match else None


def _not_taken_markers() -> tuple[str, ...]:
    """The assistant's polite answers for a turn it did not take (session store down, turn still
    running, submission failed): the text before any placeholder, from domain.yml."""
    domain = yaml.safe_load((ROOT / "domain.yml").read_text(encoding="utf-8"))
    markers = []
    for key in ("utter_unavailable", "utter_busy", "utter_submit_failed"):
        for variant in domain["responses"].get(key) or []:
            markers.append(variant["text"].split("{")[0].strip())
    return tuple(m for m in markers if m)


NOT_TAKEN = _not_taken_markers()


def rest_turn(base_url: str, sender: str, message: str) -> Attempt:
    """One REST turn. ok: answered 200 and taken; a 200 that says it was not taken ("系统有点忙…")
    is a polite failure the resident answers by saying it again."""
    body = json.dumps({"sender": sender, "message": message}).encode()
    started = time.monotonic()
    status, text = _post(base_url, REST_PATH, body, {"Content-Type": "application/json"})
    if status == 200:
        try:
            text = "".join(item.get("text") or "" for item in json.loads(text))
        except ValueError:
            status = None
    ok = status == 200 and not any(marker in text for marker in NOT_TAKEN)
    return Attempt("rest", started, time.monotonic(), status, ok, text)


# --- a 老年证 conversation ---------------------------------------------------------------------------
_ids = itertools.count(random.randrange(0, 5000))


def application_script() -> list[str]:
    """Five turns ending in 受理编号; a distinct eligible resident (ID, phone) each time."""
    n = next(_ids)
    birth = date(1935, 1, 1) + timedelta(days=n % 7000)  # all 60+
    return ["办老年证", make_id(birth.strftime("%Y%m%d"), seq=f"{n % 1000:03d}"), "王建国",
            unique_mobile("137")[3:], "对"]


class Conversation:
    """A REST conversation driven one turn at a time (its state lives in the session store)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.sender = "fault-" + secrets.token_hex(6)
        self.script = application_script()
        self.turn = 0
        self.replies: list[str] = []

    def next(self) -> Attempt:
        """Says the next line; after a "not taken" answer the same line is said again next time."""
        attempt = rest_turn(self.base_url, self.sender, self.script[self.turn])
        if attempt.ok:
            self.turn += 1
            self.replies.append(attempt.text)
        return attempt

    def finish(self, tries: int = 20, pause: float = 0.5) -> None:
        """The remaining turns, saying a line again while the assistant answers it did not take it."""
        failed = 0
        while not self.done:
            attempt = self.next()
            if not attempt.ok:
                assert attempt.status == 200, (attempt.status, attempt.text)  # no 5xx, no cut answers
                failed += 1
                assert failed < tries, attempt.text
                time.sleep(pause)
        assert self.reference, self.replies

    @property
    def done(self) -> bool:
        return self.turn == len(self.script)

    @property
    def reference(self) -> str | None:
        return reference(self.replies[-1]) if self.done else None


# --- traffic ----------------------------------------------------------------------------------------
@dataclass
class SmsRecord:
    params: dict[str, str]
    first: Attempt
    final: Attempt | None = None  # after redeliveries (None until redelivered)

    @property
    def sid(self) -> str:
        return self.params["MessageSid"]

    @property
    def answered(self) -> Attempt:
        return self.final or self.first


@dataclass
class Traffic:
    """MMS webhooks and REST conversations from a few threads until stop()."""

    base_url: str
    media_url: str
    sms_threads: int = 3
    rest_threads: int = 2
    pause: float = 0.06  # per thread between requests: enough load, few enough tickets to process
    sms: list[SmsRecord] = field(default_factory=list)
    rest: list[Attempt] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)  # references of completed conversations
    abandoned: int = 0
    abandoned_replies: list[str] = field(default_factory=list)  # the last reply each of those got
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Traffic:
        for _ in range(self.sms_threads):
            self._threads.append(threading.Thread(target=self._sms_loop, daemon=True))
        for _ in range(self.rest_threads):
            self._threads.append(threading.Thread(target=self._rest_loop, daemon=True))
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> Traffic:
        self._stop.set()
        for t in self._threads:
            t.join(TWILIO_TIMEOUT + 5)
        return self

    def _sms_loop(self) -> None:
        while not self._stop.is_set():
            params = inbound_params(REPORT_BODY, sender=unique_mobile(), media=[(self.media_url, "image/jpeg")])
            attempt = post_sms(self.base_url, params)
            with self._lock:
                self.sms.append(SmsRecord(params, attempt))
            self._stop.wait(self.pause if attempt.ok else 0.2)

    def _rest_loop(self) -> None:
        conversation = Conversation(self.base_url)
        while not self._stop.is_set():
            attempt = conversation.next()
            # No answer or an error status: a REST turn carries no message id, so resending it could
            # be taken twice; the client (and this test) starts over instead of guessing. A polite
            # "not taken" answer is followed by saying the same line again (Conversation.next).
            cut = not attempt.ok and attempt.status != 200
            with self._lock:
                self.rest.append(attempt)
                if conversation.done and conversation.reference:
                    self.finished.append(conversation.reference)
                elif cut or conversation.done:
                    self.abandoned += 1
                    self.abandoned_replies.append(attempt.text if attempt.ok else f"HTTP {attempt.status}")
            if conversation.done or cut:
                conversation = Conversation(self.base_url)
            self._stop.wait(self.pause if attempt.ok else 0.2)

    # -- figures -------------------------------------------------------------------------------
    def attempts(self, kind: str) -> list[Attempt]:
        with self._lock:
            return [r.first for r in self.sms] if kind == "sms" else list(self.rest)

    def recovery(self, kind: str, fault_at: float) -> float | None:
        """Seconds from the fault to the first good answer to a request sent after it."""
        ends = [a.ended for a in self.attempts(kind) if a.ok and a.started >= fault_at]
        return round(min(ends) - fault_at, 3) if ends else None

    def failures(self, kind: str) -> int:
        return sum(1 for a in self.attempts(kind) if not a.ok)

    def last_failure(self, kind: str, fault_at: float) -> float | None:
        """Seconds from the fault to the end of the last failed request (None: none failed)."""
        ends = [a.ended for a in self.attempts(kind) if not a.ok and a.ended >= fault_at]
        return round(max(ends) - fault_at, 3) if ends else None

    def slowest(self, kind: str) -> float:
        return round(max((a.ended - a.started for a in self.attempts(kind)), default=0.0), 3)

    def wait_recovered(self, fault_at: float, timeout: float, kinds: Iterable[str] = ("sms", "rest")) -> None:
        deadline = time.monotonic() + timeout
        while any(self.recovery(k, fault_at) is None for k in kinds) and time.monotonic() < deadline:
            time.sleep(0.05)


def redeliver(base_url: str, records: Iterable[SmsRecord], *, tries: int = 30, pause: float = 0.5) -> list[SmsRecord]:
    """Twilio's redelivery of every webhook that got no usable answer: the same MessageSid and
    body until it is answered with a reference. Returns those that never were."""
    stuck = []
    for record in records:
        if record.first.ok:
            continue
        for _ in range(tries):
            record.final = post_sms(base_url, record.params)
            if record.final.ok:
                break
            time.sleep(pause)
        else:
            stuck.append(record)
    return stuck


# --- the store ------------------------------------------------------------------------------------
class Store:
    """Read-only queries on the cluster's database (its own small engine)."""

    def __init__(self, env: dict[str, str]) -> None:
        from sqlalchemy import create_engine

        from assistant.config import load_settings
        from runtime.container import make_cipher

        settings = load_settings(env)
        self.cipher = make_cipher(settings)
        url = settings.database_url
        self.engine = create_engine(url, pool_pre_ping=True, pool_size=2)

    def close(self) -> None:
        self.engine.dispose()

    def rows(self, sql: str, **params: Any) -> list[Any]:
        from sqlalchemy import bindparam, text

        if any(isinstance(v, (list, tuple, set)) and not v for v in params.values()):
            return []  # `IN ()` is not SQL; nothing can match an empty list anyway
        statement = text(sql)
        for name, value in params.items():
            if isinstance(value, (list, tuple, set)):
                statement = statement.bindparams(bindparam(name, expanding=True))
        with self.engine.connect() as conn:
            return list(conn.execute(statement, {k: list(v) if isinstance(v, (set, tuple)) else v
                                                 for k, v in params.items()}))

    def tickets_by_sid(self, sids: Iterable[str]) -> dict[str, list[tuple[int, str]]]:
        """MessageSid → [(ticket id, reference)] of the tickets created for it."""
        from backend.infra.models import idempotency_digest

        # The column holds a keyed hash of "sms:<sid>", never the sid itself.
        keys = {idempotency_digest(self.cipher, f"sms:{sid}"): sid for sid in sids}
        out: dict[str, list[tuple[int, str]]] = {}
        for key, ticket_id, ref in self.rows(
                "SELECT idempotency_key, id, reference FROM tickets WHERE idempotency_key IN :keys", keys=list(keys)):
            out.setdefault(keys[key], []).append((int(ticket_id), ref))
        return out

    def inbound_counts(self, sids: Iterable[str]) -> Counter[str]:
        return Counter(sid for (sid,) in self.rows(
            "SELECT message_sid FROM sms_inbound WHERE message_sid IN :sids", sids=list(sids)))

    def applications(self, references: Iterable[str]) -> Counter[str]:
        return Counter(ref for (ref,) in self.rows(
            "SELECT reference FROM applications WHERE reference IN :refs", refs=list(references)))

    def outbox(self, ticket_ids: Iterable[int]) -> list[dict[str, Any]]:
        return [{"id": r[0], "ticket_id": r[1], "state": r[2], "attempts": r[3],
                 "to": self.cipher.decrypt(r[4]), "body": self.cipher.decrypt(r[5])}
                for r in self.rows("SELECT id, ticket_id, send_state, attempts, to_enc, body_enc FROM sms_outbox "
                                   "WHERE ticket_id IN :ids", ids=list(ticket_ids))]

    def job(self, dedupe_key: str) -> dict[str, Any] | None:
        rows = self.rows("SELECT id, state, attempts, locked_by FROM jobs WHERE dedupe_key = :k", k=dedupe_key)
        if not rows:
            return None
        r = rows[0]
        return {"id": r[0], "state": r[1], "attempts": r[2], "locked_by": r[3]}

    def ticket_id(self, reference: str) -> int:
        return int(self.rows("SELECT id FROM tickets WHERE reference = :r", r=reference)[0][0])


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


@dataclass
class Notifications:
    """Outbox rows of some tickets matched with the messages the fake Twilio API received."""

    tickets: int
    tickets_without_sms: int
    rows: int
    unsent_rows: int
    lost: int  # rows never received by "Twilio"
    duplicated: int  # extra copies received
    duplicated_rows: list[int]


def notifications(store: Store, sent: list[Any], ticket_ids: set[int], timeout: float = 60) -> Notifications:
    """Waits until every ticket has its SMS rows and they are sent, then counts per row how many
    times the fake Twilio API got it (to + body: each body carries the ticket's reference)."""

    def settled() -> list[dict[str, Any]] | None:
        rows = store.outbox(ticket_ids)
        with_rows = {r["ticket_id"] for r in rows}
        if with_rows != ticket_ids or any(r["state"] in ("pending", "sending") for r in rows):
            return None
        return rows

    rows = wait_until(settled, timeout) or store.outbox(ticket_ids)
    received = Counter((m.to, m.body) for m in list(sent))
    counts = {r["id"]: received[(r["to"], r["body"])] for r in rows}
    return Notifications(
        tickets=len(ticket_ids),
        tickets_without_sms=len(ticket_ids - {r["ticket_id"] for r in rows}),
        rows=len(rows),
        unsent_rows=sum(1 for r in rows if r["state"] != "sent"),
        lost=sum(1 for n in counts.values() if n == 0),
        duplicated=sum(n - 1 for n in counts.values() if n > 1),
        duplicated_rows=sorted(i for i, n in counts.items() if n > 1),
    )
