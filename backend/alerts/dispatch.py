"""Ways out of the building for care alerts other than SMS: automated voice calls (Twilio's REST
API, `Calls.json`) and integration points such as 119 (a webhook).

Both are called from jobs (backend.infra.jobs), so a failure is retried with back-off and a crash
re-runs the job: the 119 body carries an `idempotency_key` the receiver can dedupe on.

119 webhook body (POST, `Content-Type: application/json; charset=utf-8`):

    {"type": "care_alert", "version": 1, "idempotency_key": "care-alert-17-fire_119",
     "alert_id": 17, "rule": "gas_leak", "level": "severe", "detected_at": "2026-11-25T10:00:00+08:00",
     "household": "H001", "grid": "G01", "address": "阳光小区3栋2单元501",
     "senior": {"name": "张秀兰", "phone": "13700002222"},
     "contact": {"role": "grid_worker", "name": "王芳", "phone": "13800000001"},
     "detail": {"value": 3}}

Any 2xx is success; other answers and network errors are retried by the job queue.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol
from urllib.parse import urlencode

import requests
from twilio.twiml.voice_response import VoiceResponse

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CallResult:
    call_sid: str
    status: str  # Twilio's first status: "queued"


class CallError(Exception):
    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class CallPlacer(Protocol):
    def place(self, to: str, twiml: str, status_callback: str | None = None) -> CallResult: ...


@dataclass(frozen=True)
class TwilioCallConfig:
    account_sid: str
    auth_token: str
    from_number: str
    api_base_url: str = "https://api.twilio.com"


class TwilioCallPlacer:
    """POST /2010-04-01/Accounts/{AccountSid}/Calls.json with inline TwiML (no second fetch)."""

    def __init__(self, config: TwilioCallConfig, timeout: float = 10.0) -> None:
        self.config = config
        self.timeout = timeout
        self.http = requests.Session()

    def place(self, to: str, twiml: str, status_callback: str | None = None) -> CallResult:
        form = [("To", e164(to)), ("From", self.config.from_number), ("Twiml", twiml)]
        if status_callback:
            form.append(("StatusCallback", status_callback))
        return self._create(form)

    def dial(self, to: str, url: str, status_callback: str, *, machine_detection: bool = False) -> CallResult:
        """An outbound call whose TwiML Twilio fetches from `url` when it is answered (signed like
        every webhook); every status change is posted to `status_callback`."""
        form: list[tuple[str, str]] = [("To", e164(to)), ("From", self.config.from_number), ("Url", url),
                                       ("Method", "POST"), ("StatusCallback", status_callback),
                                       ("StatusCallbackMethod", "POST"), ("Timeout", "30")]
        form += [("StatusCallbackEvent", event) for event in ("initiated", "ringing", "answered", "completed")]
        if machine_detection:
            form.append(("MachineDetection", "Enable"))
        return self._create(form)

    def find(self, to: str, since: datetime) -> str | None:
        """The sid of a call to `to` created at or after `since`, if Twilio has one: a worker killed
        between asking for a call and recording its sid asks this before asking again."""
        # The list filters by number only (StartTime is empty until a call is dialled); the newest
        # come first, and the creation time is compared here.
        url = f"{self._calls_url()}?" + urlencode({"To": e164(to), "PageSize": "20"})
        try:
            response = self.http.get(url, auth=(self.config.account_sid, self.config.auth_token),
                                     timeout=self.timeout)
        except requests.RequestException as exc:
            raise CallError(f"twilio calls list: {exc}", retryable=True) from exc
        if response.status_code >= 300:
            raise CallError(f"twilio calls list {response.status_code}", retryable=True)
        for call in response.json().get("calls") or []:
            created = parsedate_to_datetime(str(call.get("date_created") or ""))
            if created >= since.replace(microsecond=0):
                return str(call["sid"])
        return None

    def _calls_url(self) -> str:
        return f"{self.config.api_base_url.rstrip('/')}/2010-04-01/Accounts/{self.config.account_sid}/Calls.json"

    def _create(self, form: list[tuple[str, str]]) -> CallResult:
        try:
            response = self.http.post(self._calls_url(), data=form,
                                      auth=(self.config.account_sid, self.config.auth_token), timeout=self.timeout)
        except requests.RequestException as exc:
            raise CallError(f"twilio calls: {exc}", retryable=True) from exc
        if response.status_code >= 300:
            try:
                body = response.json()
            except ValueError:
                body = {}
            retryable = response.status_code == 429 or response.status_code >= 500
            raise CallError(f"twilio calls {response.status_code} {body.get('code')}: {body.get('message')}",
                            retryable=retryable)
        body = response.json()
        return CallResult(str(body["sid"]), str(body.get("status") or "queued"))


def e164(phone: str) -> str:
    digits = "".join(ch for ch in phone if ch.isdigit() or ch == "+")
    if digits.startswith("+"):
        return digits
    return "+86" + digits if len(digits) == 11 and digits.startswith("1") else digits


def call_twiml(text: str, action_url: str | None, *, language: str = "cmn-CN", goodbye: str = "") -> str:
    """What the callee hears: the sentence, said twice, waiting for one key."""
    response = VoiceResponse()
    if action_url:
        gather = response.gather(num_digits=1, action=action_url, method="POST", timeout=8)
        gather.say(text, language=language)
        gather.say(text, language=language)
        response.redirect(action_url + ("&" if "?" in action_url else "?") + "Digits=none", method="POST")
    else:
        response.say(text, language=language)
        if goodbye:
            response.say(goodbye, language=language)
    return str(response)


class Integration(Protocol):
    def send(self, body: Mapping[str, Any]) -> None: ...


class WebhookIntegration:
    def __init__(self, name: str, url: str, timeout: float = 5.0, token: str | None = None) -> None:
        self.name = name
        self.url = url
        self.timeout = timeout
        self.token = token

    def send(self, body: Mapping[str, Any]) -> None:
        headers = {"Content-Type": "application/json; charset=utf-8"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = json.dumps(dict(body), ensure_ascii=False).encode("utf-8")
        response = requests.post(self.url, data=data, headers=headers, timeout=self.timeout)
        if not 200 <= response.status_code < 300:
            raise RuntimeError(f"{self.name} webhook answered {response.status_code}")


def integrations_from_config(config: Mapping[str, Mapping[str, Any]], env: Mapping[str, str]) -> dict[str, Integration]:
    """`alerts.integrations` → senders; env ALERTS_<NAME>_URL / _TOKEN override (secrets stay out
    of config.yml). An integration without a URL is left out and logged: the alert still goes to
    people, and the job for it fails loudly so staff see that 119 was not reached."""
    out: dict[str, Integration] = {}
    for name, spec in config.items():
        kind = str(spec.get("kind", "webhook"))
        url = env.get(f"ALERTS_{name.upper()}_URL") or spec.get("url")
        if kind != "webhook":
            raise ValueError(f"alerts.integrations.{name}: unknown kind {kind}")
        if not url:
            log.warning("alerts integration %s has no URL: it cannot be reached", name)
            continue
        out[name] = WebhookIntegration(name, str(url), float(spec.get("timeout_seconds", 5)),
                                       env.get(f"ALERTS_{name.upper()}_TOKEN"))
    return out


def call_placer_from_env(env: Mapping[str, str]) -> CallPlacer | None:
    sid, token = env.get("TWILIO_ACCOUNT_SID"), env.get("TWILIO_AUTH_TOKEN")
    number = env.get("TWILIO_VOICE_FROM_NUMBER") or env.get("TWILIO_FROM_NUMBER")
    if not (sid and token and number):
        return None
    return TwilioCallPlacer(TwilioCallConfig(sid, token, number,
                                             env.get("TWILIO_API_BASE_URL") or "https://api.twilio.com"))
