"""Evening-peak replay: REST turns, signed Twilio SMS/MMS and Voice webhooks and sensor readings,
mixed at the 18:00–21:00 shape, against a running server (loopback only, bounded in time).

In community surveys 73 % of seniors' requests arrive between 18:00 and 21:00. This compresses
those three hours into `--duration` seconds of wall time: a ramp-up (18:00–18:45 by default),
a plateau at `--peak-rps` (18:45–20:15) and a ramp-down (20:15–21:00); the phase lengths and the
rates at both ends are options. One process, asyncio + aiohttp, a fixed number of coroutines
(`--concurrency`), each playing whole sessions one request at a time:

  rest     multi-turn conversations on the Rasa REST channel (老年证, 助餐, 陪诊, 报修, 进度, 人工)
  sms      Twilio Messaging webhooks, pre-signed: text reports and bookings over several messages,
           MMS photo reports (when a media host exists), 进度 keywords, 人工; 5 % delivered twice
           with the same MessageSid (half after the first answer, half racing it, as when Twilio
           retries a slow webhook): both answers must be the same and only one ticket stored
  voice    Twilio Voice webhooks (the <Gather> path, Twilio's own recogniser): an incoming call,
           2–4 Gather posts with SpeechResult/Confidence or Digits following each answer's action
           URL, then the status callback; the <Play> audio each answer names is fetched once per
           URL as Twilio would (reported as voice_audio)
  sensors  batches of readings from home gateways (Bearer device token), households registered
           first with `python -m runtime.cli_alerts import`

Every request waits for a permit from one global pacer that follows the peak shape, so the
offered rate is the shape whatever the server does; when the server cannot keep up, requests go
out late and the lateness is reported (a sign of saturation; latency is measured from send), and
what is still due when the duration is over is reported as not sent (the run never stretches).

    python bench/bench_peak.py --start [--web-workers 2] [--database sqlite|postgres] [--duration 90]
    python bench/bench_peak.py --base-url http://127.0.0.1:5005      # a server already running
    python bench/bench_peak.py --compare [--duration 40]             # 1 vs 2 workers × SQLite vs Postgres

`--base-url` reads TWILIO_AUTH_TOKEN, PUBLIC_BASE_URL (default: the base URL) and, for the
sensor households and the checks after the run, DATABASE_URL and the keys (DATA_DIR or SM4_KEYS
/ INDEX_KEY) from the environment: export what the operator printed for the server.
`--start` uses deploy/local_cluster.py's LocalCluster when it exists, else starts gunicorn
(+ redis-server, + a throw-away PostgreSQL with --database postgres, + `assistant worker`
processes) itself. Prints one JSON line per kind, one overall, one with the checks, then a
Markdown table.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import json
import os
import platform
import random
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent

KINDS = ("rest", "sms", "voice", "sensors")
DEFAULT_MIX = "rest=0.3,sms=0.25,voice=0.25,sensors=0.2"
ACCOUNT_SID = "AC" + "5e" * 16
DEFAULT_TOKEN = "d" * 32
SMS_TO = "+8610690000"
VOICE_TO = "+8610690001"
CST = timezone(timedelta(hours=8))
REF_RE = re.compile(r"编号是?(\d{8})")  # 受理编号12345678 / 服务编号是12345678
MESSAGE_RE = re.compile(r"<Message>(.*?)</Message>", re.S)
GATHER_RE = re.compile(r'<Gather[^>]*\baction="([^"]+)"')
PLAY_RE = re.compile(r"<Play>([^<]+)</Play>")
SAY_RE = re.compile(r"<Say[^>]*>(?:<[^>]+>)*\s*[^<\s]")
# What the server answers when it caught an error or a turn timed out: still 200, still a failure.
BUSY_TEXTS = ("系统有点忙", "我还在处理您上一句话", "系统出了点问题")


# --- the peak shape ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class PeakShape:
    duration: float
    peak_rps: float
    start_rps: float
    end_rps: float
    fractions: tuple[float, float, float]  # ramp-up, plateau, ramp-down (of the duration)

    def phase(self, t: float) -> str:
        up, flat, _ = (f * self.duration for f in self.fractions)
        return "ramp_up" if t < up else "plateau" if t < up + flat else "ramp_down"

    def rate(self, t: float) -> float:
        up, flat, down = (f * self.duration for f in self.fractions)
        if t < up:
            return self.start_rps + (self.peak_rps - self.start_rps) * t / up
        if t < up + flat:
            return self.peak_rps
        return self.peak_rps + (self.end_rps - self.peak_rps) * min(1.0, (t - up - flat) / max(down, 1e-9))

    def offered(self) -> float:
        up, flat, down = (f * self.duration for f in self.fractions)
        return up * (self.start_rps + self.peak_rps) / 2 + flat * self.peak_rps + down * (self.peak_rps + self.end_rps) / 2

    def evening_clock(self, t: float) -> str:
        """Wall-clock second → the evening hour it stands for (18:00–21:00)."""
        minutes = 180 * t / self.duration
        return f"{18 + int(minutes // 60)}:{int(minutes % 60):02d}"


class Pacer:
    """Hands out request permits at the shape's instantaneous rate (slot k+1 = slot k + 1/rate).
    Single-threaded asyncio: taking a slot needs no lock. Within the duration there is no
    catch-up limit: a stalled server gets the requests it was due, late, and the lateness is
    what the report shows."""

    def __init__(self, shape: PeakShape) -> None:
        self.shape = shape
        self.next_slot = 0.0
        self.t0 = 0.0

    def start(self) -> None:
        self.t0 = time.perf_counter()
        self.next_slot = 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    async def permit(self) -> tuple[float, float] | None:
        """(slot, lateness in s), or None when the run is over: at the last slot, or at the end of
        the wall-clock duration whatever is still due (a saturated server does not stretch the run;
        what was offered and never sent is reported as unsent)."""
        slot = self.next_slot
        if slot >= self.shape.duration or self.elapsed() >= self.shape.duration:
            return None
        self.next_slot = slot + 1.0 / max(self.shape.rate(slot), 0.01)
        delay = self.t0 + slot - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        return slot, max(0.0, time.perf_counter() - self.t0 - slot)


# --- what residents say -----------------------------------------------------------------------------
SURNAMES = "张王李刘陈杨赵黄周吴徐孙马朱胡郭何林罗高"
GIVEN = ["秀兰", "桂英", "淑珍", "玉兰", "建国", "德明", "凤英", "志强", "桂芳", "秀英", "国华", "玉珍",
         "春生", "丽华", "建华", "淑英", "振华", "美玲", "秀琴", "文斌"]
PLACES = ["阳光小区3号楼", "幸福里小区8号楼", "和平新村12栋", "锦绣花园5号楼", "滨江苑2栋", "建设路社区7号楼"]
REGIONS = ["110101", "310104", "440305", "510104", "420102", "320106"]
GREETINGS = ["你好", "喂", "在吗", "您好"]
YES = ["对", "对的", "没错", "是的"]


def id_number(rng: random.Random, *, born_before: int = 1960) -> str:
    """A valid 18-digit resident ID (GB 11643 check digit) of someone born 1936…born_before."""
    year = rng.randint(1936, born_before)
    first17 = f"{rng.choice(REGIONS)}{year}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}{rng.randint(0, 999):03d}"
    weights = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
    return first17 + "10X98765432"[sum(int(d) * w for d, w in zip(first17, weights, strict=True)) % 11]


def senior_name(rng: random.Random) -> str:
    return rng.choice(SURNAMES) + rng.choice(GIVEN)


# A step's expectation: ("expects", "slot|slot") — REST custom.expects of the last reply; ("text", regex)
# — the reply text; ("ref", None) — a reference number; ("handoff", None); ("listen"/"end", None)
# for voice. Checked on every answer: a lost session shows at the turn it happens.
Expect = tuple[str, str | None]


@dataclass
class RestTurn:
    text: str  # "{ref}" is replaced at send time by a reference seen earlier in the run
    expect: Expect


@dataclass
class SmsMessage:
    params: dict[str, str]
    signature: str
    body: bytes
    expect: Expect
    report: bool  # answered with a reference that must be a ticket
    redeliver: bool
    concurrent: bool  # the redelivery races the first delivery instead of following its answer
    dynamic: bool = False  # the body names a reference seen at run time: signed at send time


@dataclass
class VoiceInput:
    fields: dict[str, str]  # Digits or SpeechResult + Confidence
    expect: Expect


@dataclass
class Session:
    kind: str
    script: str
    sender: str
    steps: list[Any]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        """Paced requests the session sends (the mix is of these)."""
        if self.kind == "voice":
            return len(self.steps) + 1  # incoming call + gathers (the status callback is not paced)
        if self.kind == "sms":
            return sum(2 if s.redeliver else 1 for s in self.steps)
        return len(self.steps)


class Planner:
    """Deterministic sessions per kind from the seed. SMS bodies are signed here, before the clock
    starts, so the load loop only sends bytes."""

    def __init__(self, seed: int, signer: Callable[[str, dict[str, str]], str], *, mms_media: list[str],
                 redelivery: float, households: list[tuple[str, str]], tag: str) -> None:
        self.seed = seed
        self.sign = signer  # (path, params) → X-Twilio-Signature over PUBLIC_BASE_URL + path
        self.mms_media = mms_media
        self.redelivery = redelivery
        self.households = households
        self.tag = tag  # keeps sender ids and SIDs of different runs (and the warm-up) apart
        self.counters: Counter[str] = Counter()
        self.rngs = {k: random.Random(f"{seed}-{k}-{tag}") for k in KINDS}

    def _n(self, kind: str) -> int:
        self.counters[kind] += 1
        return self.counters[kind]

    def phone(self, prefix: str, n: int) -> str:
        return f"{prefix}{(int(self.tag, 16) * 7919 + n) % 100_000_000:08d}"

    # REST ------------------------------------------------------------------------------------------
    def rest(self) -> Session:
        rng, n = self.rngs["rest"], self._n("rest")
        sender = f"peak-{self.tag}-r{n}"
        phone = self.phone("137", n)
        turns: list[RestTurn] = []
        if rng.random() < 0.3:  # many start with a greeting, as on the phone
            turns.append(RestTurn(rng.choice(GREETINGS), ("expects", "menu")))
        script = rng.choices(["senior_card", "meal", "meal_delivery", "escort", "report", "progress", "human"],
                             [25, 15, 10, 10, 15, 15, 10])[0]
        yes = rng.choice(YES)
        if script == "senior_card":
            turns += [RestTurn(rng.choice(["我想给我妈办个老年证", "帮我办一下老年卡", "我要申请老年证", "老年证怎么办"]),
                               ("expects", "id_number")),
                      RestTurn(id_number(rng), ("expects", "name")),
                      RestTurn(senior_name(rng), ("expects", "phone")),
                      RestTurn(phone, ("expects", "confirm")),
                      RestTurn(yes, ("ref", None))]
        elif script == "meal":
            turns += [RestTurn(rng.choice(["我要订饭", "我想订个饭", "助餐怎么订"]), ("expects", "date")),
                      RestTurn(rng.choice(["明天中午", "后天中午", "明天午饭"]), ("expects", "quantity")),
                      RestTurn(rng.choice(["两份", "一份", "三份"]), ("expects", "meal_mode")),
                      RestTurn(rng.choice(["去食堂吃", "到食堂吃"]), ("expects", "phone")),
                      RestTurn(phone, ("expects", "confirm")),
                      RestTurn(yes, ("ref", None))]
        elif script == "meal_delivery":
            turns += [RestTurn(rng.choice(["订两份明天的午饭", "帮我订一份明天的午饭"]), ("expects", "meal_mode")),
                      RestTurn(rng.choice(["送到家里", "送上门"]), ("expects", "address")),
                      RestTurn(f"{rng.choice(PLACES)}{rng.randint(1, 4)}单元{rng.randint(1, 6)}0{rng.randint(1, 4)}",
                               ("expects", "phone")),
                      RestTurn(phone, ("expects", "confirm")),
                      RestTurn(yes, ("ref", None))]
        elif script == "escort":
            turns += [RestTurn(rng.choice(["陪我去医院", "我想约个人陪我去医院看病"]), ("expects", "hospital")),
                      RestTurn(rng.choice(["市第一人民医院", "区中医院", "社区卫生服务中心"]), ("expects", "date")),
                      RestTurn(rng.choice(["下周二", "明天", "后天"]), ("expects", "time")),
                      RestTurn(rng.choice(["上午八点", "早上九点"]), ("expects", "phone")),
                      RestTurn(phone, ("expects", "confirm")),
                      RestTurn(yes, ("ref", None))]
        elif script == "report":
            turns += [RestTurn(rng.choice(["楼道的灯坏了", "有个东西坏了要报修", "家门口的路灯不亮了"]),
                               ("expects", "description|location")),
                      RestTurn(f"{rng.choice(PLACES)}{rng.choice(['楼道灯不亮', '门口路灯坏了', '电梯按钮坏了'])}",
                               ("expects", "phone")),
                      RestTurn(phone, ("expects", "confirm")),
                      RestTurn(yes, ("ref", None))]
        elif script == "progress":
            turns += [RestTurn(rng.choice(["我上次办的事到哪一步了", "我的老年证办得怎么样了", "查一下进度"]),
                               ("expects", "progress_key")),
                      RestTurn("{ref}", ("expects", "menu"))]
        else:
            turns.append(RestTurn(rng.choice(["人工", "我要找工作人员", "帮我转人工", "我听不懂，找个人跟我说"]),
                                  ("handoff", None)))
        return Session("rest", script, sender, turns)

    # SMS -------------------------------------------------------------------------------------------
    def _sms(self, sender: str, text: str, expect: Expect, *, media: list[str] = (), report: bool = False,
             dynamic: bool = False) -> SmsMessage:
        rng = self.rngs["sms"]
        n = self._n("sms_sid")
        sid = ("MM" if media else "SM") + f"{int(self.tag, 16):08x}{n:024x}"
        params = {"ToCountry": "CN", "ToState": "", "SmsMessageSid": sid, "NumMedia": str(len(media)),
                  "ToCity": "", "FromZip": "", "SmsSid": sid, "FromState": "", "SmsStatus": "received",
                  "FromCity": rng.choice(["BEIJING", "SHANGHAI", ""]), "Body": text, "FromCountry": "CN",
                  "To": SMS_TO, "MessagingServiceSid": "", "ToZip": "", "NumSegments": "1", "MessageSid": sid,
                  "AccountSid": ACCOUNT_SID, "From": sender, "ApiVersion": "2010-04-01"}
        for i, url in enumerate(media):
            params[f"MediaUrl{i}"] = url
            params[f"MediaContentType{i}"] = "image/jpeg"
        signature = "" if dynamic else self.sign("/webhooks/twilio/sms", params)
        body = b"" if dynamic else urllib.parse.urlencode(params).encode()
        redeliver = rng.random() < self.redelivery
        return SmsMessage(params, signature, body, expect, report, redeliver, redeliver and rng.random() < 0.5, dynamic)

    def sms(self) -> Session:
        rng, n = self.rngs["sms"], self._n("sms")
        sender = "+86" + self.phone("139", n)
        weights = {"mms_report": 30 if self.mms_media else 0, "text_report": 25 if self.mms_media else 45,
                   "meal": 20, "progress": 15, "human": 10}
        script = rng.choices(list(weights), list(weights.values()))[0]
        place = rng.choice(PLACES)
        if script == "mms_report":
            photos = rng.sample(self.mms_media, k=min(len(self.mms_media), rng.choice([1, 1, 2])))
            steps = [self._sms(sender, rng.choice(["小区门口路灯坏了", "楼道里堆了好多杂物", "", "这里井盖松了"]),
                               ("ref", None), media=photos, report=True)]
            if rng.random() < 0.4:
                steps.append(self._sms(sender, f"在{place}门口", ("text", r"补充")))
        elif script == "text_report":
            steps = [self._sms(sender, rng.choice(["楼道的灯坏了", "有个东西坏了要报修", "楼道里的灯坏了好几天了"]),
                               ("text", r"什么问题|在哪里")),
                     self._sms(sender, f"{place}{rng.choice(['楼道灯坏了', '水管漏水', '门禁坏了'])}", ("text", r"回复1确认")),
                     self._sms(sender, "1", ("ref", None), report=True)]
        elif script == "meal":
            steps = [self._sms(sender, rng.choice(["我要订饭", "订饭"]), ("text", r"哪一天")),
                     self._sms(sender, rng.choice(["明天中午", "后天中午"]), ("text", r"几份")),
                     self._sms(sender, rng.choice(["2", "1", "两份"]), ("text", r"食堂")),
                     self._sms(sender, "到食堂吃", ("text", r"回复1确认")),
                     self._sms(sender, "1", ("ref", None))]
        elif script == "progress":
            steps = [self._sms(sender, "进度{ref}", ("text", r"编号|没查到"), dynamic=True)]
        else:
            steps = [self._sms(sender, rng.choice(["0", "人工"]), ("ref", None))]
        return Session("sms", script, sender, steps)

    # Voice -----------------------------------------------------------------------------------------
    def voice(self) -> Session:
        rng, n = self.rngs["voice"], self._n("voice")
        caller = "+86" + self.phone("136", n)
        call_sid = "CA" + f"{int(self.tag, 16):08x}{n:024x}"

        def said(text: str, low: float = 0.7, high: float = 0.95) -> dict[str, str]:
            return {"SpeechResult": text, "Confidence": f"{rng.uniform(low, high):.6f}"}

        script = rng.choices(["meal", "senior_card", "human", "progress", "low_confidence"], [25, 25, 20, 15, 15])[0]
        if script == "meal":
            steps = [VoiceInput(said(rng.choice(["订两份明天的午饭", "我想订一份明天的午饭"])), ("listen", None)),
                     VoiceInput(said("到食堂吃"), ("listen", None)),
                     VoiceInput({"Digits": "1"}, ("listen", None))]
        elif script == "senior_card":
            steps = [VoiceInput(said(rng.choice(["我想办老年证", "办老年证"])), ("listen", None)),
                     VoiceInput({"Digits": id_number(rng) + "#"}, ("listen", None)),
                     VoiceInput(said(senior_name(rng), 0.6, 0.9), ("listen", None)),
                     VoiceInput({"Digits": "1"}, ("listen", None))]
        elif script == "human":
            steps = [VoiceInput({"Digits": "9"}, ("listen", None)), VoiceInput({"Digits": "0"}, ("end", None))]
        elif script == "progress":
            steps = [VoiceInput(said(rng.choice(["我想查一下我办的事到哪一步了", "查进度"])), ("listen", None)),
                     VoiceInput({"Digits": "#"}, ("end", None))]
        else:  # ASR unsure: read back, confirmed with 1, then the place
            steps = [VoiceInput(said(rng.choice(["楼下路灯坏了", "我家楼道灯坏了"]), 0.2, 0.4), ("listen", None)),
                     VoiceInput({"Digits": "1"}, ("listen", None)),
                     VoiceInput(said(f"{rng.choice(PLACES)}门口"), ("listen", None))]
        # Calls whose last answer files a case (a booking, an application, a handoff): the store
        # must then hold one voice case per such call (the check that sees a lost call state).
        creates_case = script in {"meal", "senior_card", "human"}
        return Session("voice", script, caller, steps, {"call_sid": call_sid, "duration": rng.randint(25, 180),
                                                       "creates_case": creates_case})

    # Sensors ---------------------------------------------------------------------------------------
    def sensors(self) -> Session:
        n = self._n("sensors")
        household, token = self.households[(n - 1) % len(self.households)]
        return Session("sensors", "gateway_batch", household, [None], {"token": token, "n": n})

    def make(self, kind: str) -> Session:
        return getattr(self, kind)()


def households_yaml(households: list[tuple[str, str]]) -> str:
    lines = ["grids:", "  PK: {community_leader: {name: 主任, phone: \"13500000000\"}}", "households:"]
    for i, (hid, token) in enumerate(households):
        lines += [f"  - id: {hid}", "    grid: PK", f"    address: 压测小区{i // 40 + 1}栋{i % 40 + 1}号",
                  f"    senior: {{name: 老人{i}, phone: \"131{i:08d}\", gender: {'F' if i % 2 else 'M'}}}",
                  f"    family: [{{name: 家属{i}, relation: 女儿, phone: \"139{i:08d}\"}}]",
                  f"    grid_worker: {{name: 网格员, phone: \"138{i % 50:08d}\"}}",
                  "    devices:",
                  f"      - {{id: {hid}-water, kind: water, token: {token}}}",
                  *(f"      - {{id: {hid}-{k}, kind: {k}}}" for k in ("electricity", "gas", "door", "heart_rate"))]
    return "\n".join(lines) + "\n"


# --- measuring ---------------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))], 1)


@dataclass(frozen=True)
class Answer:
    status: int
    text: str


@dataclass
class KindStats:
    latencies: list[float] = field(default_factory=list)
    lateness: list[float] = field(default_factory=list)
    sent: int = 0
    answered: int = 0  # any HTTP answer (2xx or not)
    errors: Counter[str] = field(default_factory=Counter)
    by_phase: Counter[str] = field(default_factory=Counter)
    samples: list[dict[str, Any]] = field(default_factory=list)

    def fail(self, reason: str, **detail: Any) -> None:
        self.errors[reason] += 1
        if len(self.samples) < 4 or (reason not in {s["reason"] for s in self.samples} and len(self.samples) < 8):
            self.samples.append({"reason": reason, **{k: str(v)[:240] for k, v in detail.items()}})


@dataclass
class Collected:
    """What the checks after the run compare with the database."""

    sms_report_refs: set[str] = field(default_factory=set)
    sms_other_refs: set[str] = field(default_factory=set)
    rest_refs: set[str] = field(default_factory=set)
    refs_pool: list[str] = field(default_factory=list)
    redeliveries: int = 0
    redelivery_mismatch: int = 0
    calls_started: int = 0
    voice_cases_expected: int = 0
    calls_status_sent: int = 0
    readings_sent: int = 0
    readings_accepted: int = 0
    sessions: Counter[str] = field(default_factory=Counter)  # kind:outcome


class Driver:
    def __init__(self, base_url: str, public_base: str, token: str, planner: Planner, shape: PeakShape,
                 mix: dict[str, float], concurrency: int, timeout: float, fetch_audio: bool) -> None:
        from twilio.request_validator import RequestValidator

        self.base_url = base_url.rstrip("/")
        self.public_base = public_base.rstrip("/")
        self.validator = RequestValidator(token)
        self.planner = planner
        self.shape = shape
        self.pacer = Pacer(shape)
        self.mix = mix
        self.concurrency = concurrency
        self.timeout = timeout
        self.fetch_audio = fetch_audio
        self.stats = {k: KindStats() for k in (*KINDS, "voice_audio")}
        self.trace: list[tuple[float, str, str, int, float]] | None = None
        self.collected = Collected()
        self.session_weights: dict[str, float] = {}  # share of requests / requests per session
        self.queues: dict[str, deque[Session]] = {k: deque() for k in KINDS}
        self.audio_seen: set[str] = set()
        self.meters: dict[str, list[float]] = {}
        self.last_ts: dict[str, datetime] = {}
        self.rng = random.Random(planner.seed)  # run-time choices (references to ask about)
        self.http: Any = None

    def prepare(self, offered: float) -> None:
        """Plans (and signs) the sessions the offered load needs, plus a margin, before the clock."""
        for kind, share in self.mix.items():
            if share <= 0:
                continue
            probe = [self.planner.make(kind) for _ in range(50)]
            per_session = sum(s.requests for s in probe) / len(probe)
            self.session_weights[kind] = share / per_session
            self.queues[kind].extend(probe)
            need = int(offered * share / per_session * 1.3) + self.concurrency
            self.queues[kind].extend(self.planner.make(kind) for _ in range(max(0, need - len(probe))))

    def next_session(self, *, first: bool = False) -> Session:
        # A coroutine's next session is drawn with weights share / requests-per-session, so the
        # request mix follows --mix although sessions differ in length. Its first one is drawn by
        # share alone: that is how the coroutines are spread over kinds once the run is steady,
        # and drawing the start any other way puts a burst of one kind's first requests up front
        # (one-request sensor batches, with hundreds of coroutines starting at once).
        kinds = list(self.session_weights)
        weights = [self.mix[k] if first else self.session_weights[k] for k in kinds]
        kind = self.rng.choices(kinds, weights)[0]
        queue = self.queues[kind]
        return queue.popleft() if queue else self.planner.make(kind)  # margin exhausted: plan on the fly

    # one HTTP exchange --------------------------------------------------------------------------------
    async def exchange(self, kind: str, method: str, path: str, *, body: bytes | None = None,
                       headers: dict[str, str] | None = None, paced: bool = True) -> Answer | str:
        """Sends one request (after a permit when paced): the answer, or "cut" when the run is
        over, or "failed" (already counted: transport error, timeout, non-2xx)."""
        stats = self.stats[kind]
        if paced:
            permit = await self.pacer.permit()
            if permit is None:
                return "cut"
            slot, late = permit
            stats.lateness.append(late * 1000)
            stats.by_phase[self.shape.phase(slot)] += 1
        stats.sent += 1
        started = time.perf_counter()
        try:
            async with self.http.request(method, self.base_url + path, data=body, headers=headers) as response:
                raw = await response.read()
                # Audio is only checked for arriving; decoding 100 kB WAVs would be the generator's
                # biggest cost.
                text = "" if kind == "voice_audio" else raw.decode("utf-8", errors="replace")
                status = response.status
        except TimeoutError:
            stats.fail("timeout", path=path)
            return "failed"
        except aiohttp.ClientError as exc:
            stats.fail("connection", path=path, error=type(exc).__name__)
            return "failed"
        stats.latencies.append((time.perf_counter() - started) * 1000)
        if self.trace is not None:  # for finding where a latency mode comes from (--trace FILE)
            self.trace.append((round(started - self.pacer.t0, 4), kind, path.split("?")[0], status,
                               round(stats.latencies[-1], 2)))
        stats.answered += 1
        if not 200 <= status < 300:
            stats.fail(f"http_{status}", path=path, body=text)
            return "failed"
        return Answer(status, text)

    def twilio_headers(self, path: str, params: dict[str, str], signature: str | None = None) -> dict[str, str]:
        return {"Content-Type": "application/x-www-form-urlencoded",
                "X-Twilio-Signature": signature or self.validator.compute_signature(self.public_base + path, params),
                "I-Twilio-Idempotency-Token": f"{self.rng.getrandbits(64):016x}"}

    def pooled_ref(self) -> str:
        pool = self.collected.refs_pool
        return self.rng.choice(pool) if pool else "31852047"

    # sessions ------------------------------------------------------------------------------------------
    async def run_rest(self, session: Session) -> str:
        stats = self.stats["rest"]
        for i, turn in enumerate(session.steps):
            text = turn.text.replace("{ref}", self.pooled_ref())
            body = json.dumps({"sender": session.sender, "message": text}, ensure_ascii=False).encode()
            got = await self.exchange("rest", "POST", "/webhooks/rest/webhook", body=body,
                                      headers={"Content-Type": "application/json"})
            if isinstance(got, str):
                return got
            try:
                replies = json.loads(got.text)
                texts = "".join(r.get("text") or "" for r in replies)
                last = replies[-1]
            except (ValueError, AttributeError, IndexError, TypeError):
                stats.fail("bad_json", script=session.script, turn=i, body=got.text)
                return "failed"
            if any(b in texts for b in BUSY_TEXTS):
                stats.fail("busy_reply", script=session.script, turn=i, said=text, reply=texts)
                return "failed"
            what, value = turn.expect
            if what == "expects":
                ok = (last.get("custom") or {}).get("expects") in (value or "").split("|")
            elif what == "ref":
                ok = bool(REF_RE.search(texts))
            else:  # handoff
                ok = any((r.get("custom") or {}).get("handoff") for r in replies)
            if not ok:
                stats.fail("unexpected_reply", script=session.script, turn=i, said=text, wanted=f"{what}={value}",
                           reply=texts, expects=(last.get("custom") or {}).get("expects"))
                return "failed"
            if what in {"ref", "handoff"} and (m := REF_RE.search(texts)):
                self.collected.rest_refs.add(m.group(1))
                self.collected.refs_pool.append(m.group(1))
        return "completed"

    async def run_sms(self, session: Session) -> str:
        stats, path = self.stats["sms"], "/webhooks/twilio/sms"
        for i, msg in enumerate(session.steps):
            if msg.dynamic:
                params = {k: v.replace("{ref}", self.pooled_ref()) for k, v in msg.params.items()}
                headers, body = self.twilio_headers(path, params), urllib.parse.urlencode(params).encode()
            else:
                headers, body = self.twilio_headers(path, msg.params, msg.signature), msg.body
            together = msg.redeliver and msg.concurrent
            # A concurrent redelivery is Twilio retrying while the first delivery is still being
            # processed (it took over 15 s): both race for the same MessageSid.
            results = await asyncio.gather(*(self.exchange("sms", "POST", path, body=body, headers=headers)
                                             for _ in range(2 if together else 1)))
            answers = [r for r in results if isinstance(r, Answer)]
            if not answers:
                return results[0]  # type: ignore[return-value]  # "cut" or "failed"
            texts = [self.sms_text(a.text) for a in answers]
            usable = [t for t in texts if t and not any(b in t for b in BUSY_TEXTS)]
            if together and len(answers) == 2:
                self.collected.redeliveries += 1
                if len(usable) == 1:  # one copy told to "send again later": the resident resends
                    stats.fail("redelivery_busy", script=session.script, said=msg.params["Body"], replies=texts)
                elif len(usable) == 2 and usable[0] != usable[1]:
                    self.collected.redelivery_mismatch += 1
                    stats.fail("redelivery_mismatch", script=session.script, first=usable[0], again=usable[1])
            if not usable:
                if texts[0] is None:
                    stats.fail("empty_twiml", script=session.script, turn=i, body=answers[0].text)
                else:
                    stats.fail("busy_reply", script=session.script, turn=i, said=msg.params["Body"], reply=texts[0])
                return "failed"
            answer = usable[0]
            what, value = msg.expect
            ref = REF_RE.search(answer)
            if (what == "ref" and not ref) or (what == "text" and not re.search(value or "", answer)):
                stats.fail("unexpected_reply", script=session.script, turn=i, said=msg.params["Body"],
                           wanted=f"{what}={value}", reply=answer)
                return "failed"
            if what == "ref" and ref:
                (self.collected.sms_report_refs if msg.report else self.collected.sms_other_refs).add(ref.group(1))
                self.collected.refs_pool.append(ref.group(1))
            if msg.redeliver and not together:  # Twilio retrying later: same MessageSid, same signed body
                again = await self.exchange("sms", "POST", path, body=body, headers=headers)
                if isinstance(again, Answer):
                    self.collected.redeliveries += 1
                    if self.sms_text(again.text) != answer:
                        self.collected.redelivery_mismatch += 1
                        stats.fail("redelivery_mismatch", script=session.script, first=answer, again=again.text)
        return "completed"

    @staticmethod
    def sms_text(twiml: str) -> str | None:
        parts = [html.unescape(m) for m in MESSAGE_RE.findall(twiml)]
        text = "".join(parts).strip()
        return text or None

    async def run_voice(self, session: Session) -> str:
        stats = self.stats["voice"]
        base = {"CallSid": session.extra["call_sid"], "AccountSid": ACCOUNT_SID, "From": session.sender,
                "To": VOICE_TO, "Direction": "inbound", "ApiVersion": "2010-04-01", "CallerCountry": "CN",
                "CalledCountry": "CN"}
        path, outcome = "/webhooks/twilio/voice", "completed"
        params = {**base, "CallStatus": "ringing"}
        got = await self.exchange("voice", "POST", path, body=urllib.parse.urlencode(params).encode(),
                                  headers=self.twilio_headers(path, params))
        if isinstance(got, str):
            return got
        self.collected.calls_started += 1
        twiml = got.text
        for i, step in enumerate([None, *session.steps]):
            expect = ("listen", None) if step is None else step.expect
            problem = await self.check_twiml(twiml, expect[0])
            if problem:
                stats.fail(problem, script=session.script, turn=i, twiml=twiml)
                outcome = "failed"
                break
            if i == len(session.steps):
                break
            action = html.unescape(GATHER_RE.search(twiml).group(1))  # type: ignore[union-attr]
            params = {**base, "CallStatus": "in-progress", **session.steps[i].fields}
            got = await self.exchange("voice", "POST", action, body=urllib.parse.urlencode(params).encode(),
                                      headers=self.twilio_headers(action, params))
            if isinstance(got, str):
                outcome = got
                break
            twiml = got.text
            if i + 1 == len(session.steps) and session.extra["creates_case"]:
                self.collected.voice_cases_expected += 1
        # The caller hangs up (or the run ends): Twilio always sends the status callback, so it is
        # not paced and goes out even after the run's end.
        params = {**base, "CallStatus": "completed", "CallDuration": str(session.extra["duration"])}
        path = "/webhooks/twilio/voice/status"
        if await self.exchange("voice", "POST", path, body=urllib.parse.urlencode(params).encode(),
                               headers=self.twilio_headers(path, params), paced=False) != "failed":
            self.collected.calls_status_sent += 1
        return outcome

    async def check_twiml(self, twiml: str, expected: str) -> str | None:
        """None when the answer is TwiML that says something and does what the step expects."""
        plays = PLAY_RE.findall(twiml)
        if "<Response" not in twiml or not (plays or SAY_RE.search(twiml)):
            return "empty_twiml"
        gather = GATHER_RE.search(twiml)
        if expected == "listen" and not gather:
            return "unexpected_hangup"
        if expected == "end" and gather:
            return "unexpected_gather"
        if expected == "end" and "<Hangup" not in twiml and "<Dial" not in twiml:
            return "no_hangup_or_dial"
        if self.fetch_audio:
            for url in plays:
                url = html.unescape(url)
                if url in self.audio_seen:
                    continue  # Twilio caches <Play> audio (the server says max-age one day)
                self.audio_seen.add(url)
                path = url[len(self.public_base):] if url.startswith("http") else url
                if await self.exchange("voice_audio", "GET", path, paced=False) == "failed":
                    return "prompt_audio_missing"
        return None

    async def run_sensors(self, session: Session) -> str:
        stats, n = self.stats["sensors"], session.extra["n"]
        hid = session.sender
        meters = self.meters.setdefault(hid, [1000.0 + n % 97, 500.0 + n % 89])
        rng = random.Random(n)
        meters[0] += rng.uniform(0, 0.05)  # evening: cooking and washing
        meters[1] += rng.uniform(0.01, 0.2)
        now = datetime.now(CST).replace(microsecond=0)
        readings = [{"device": f"{hid}-water", "kind": "water", "value": round(meters[0], 3)},
                    {"device": f"{hid}-electricity", "kind": "electricity", "value": round(meters[1], 3)},
                    {"device": f"{hid}-gas", "kind": "gas", "value": 0},
                    {"device": f"{hid}-heart_rate", "kind": "heart_rate", "value": rng.randint(58, 88)}]
        if rng.random() < 0.2:
            readings.append({"device": f"{hid}-door", "kind": "door", "value": 1})
        # (device, ts) is unique in the store: a gateway's batches carry increasing times, also
        # when two of its batches go out close together (a late session meeting the next one).
        at = now - timedelta(seconds=rng.randint(0, 5))
        previous = self.last_ts.get(hid)
        if previous is not None and at <= previous:
            at = previous + timedelta(seconds=1)
        self.last_ts[hid] = at
        stamp = at.isoformat()
        for r in readings:
            r["ts"] = stamp
        body = json.dumps({"readings": readings}).encode()
        got = await self.exchange("sensors", "POST", "/api/sensors/readings", body=body,
                                  headers={"Content-Type": "application/json",
                                           "Authorization": f"Bearer {session.extra['token']}"})
        if isinstance(got, str):
            return got
        self.collected.readings_sent += len(readings)
        try:
            accepted = int(json.loads(got.text).get("accepted", -1))
        except (ValueError, AttributeError, TypeError):
            stats.fail("bad_json", body=got.text)
            return "failed"
        self.collected.readings_accepted += max(accepted, 0)
        if accepted != len(readings):
            stats.fail("readings_not_accepted", sent=len(readings), answer=got.text)
            return "failed"
        return "completed"

    # the run -------------------------------------------------------------------------------------------
    async def worker(self) -> None:
        runners = {"rest": self.run_rest, "sms": self.run_sms, "voice": self.run_voice, "sensors": self.run_sensors}
        first = True
        while self.pacer.next_slot < self.shape.duration and self.pacer.elapsed() < self.shape.duration:
            session = self.next_session(first=first)
            first = False
            outcome = await runners[session.kind](session)
            self.collected.sessions[f"{session.kind}:{outcome}"] += 1

    async def run(self) -> float:
        connector = aiohttp.TCPConnector(limit=self.concurrency, limit_per_host=self.concurrency,
                                         enable_cleanup_closed=True)
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as http:
            self.http = http
            self.pacer.start()
            await asyncio.gather(*(self.worker() for _ in range(self.concurrency)))
            return self.pacer.elapsed()


# --- servers ------------------------------------------------------------------------------------------
@dataclass
class Target:
    base_url: str
    public_base_url: str
    auth_token: str
    env: dict[str, str]  # what the server processes got (keys, DATABASE_URL) for import and checks
    database_url: str | None
    media_urls: list[str]
    description: str
    children_cpu: Callable[[], dict[str, float]] | None = None  # CPU of the processes we started
    log_dir: Path | None = None  # server logs we can read (tracebacks are evidence)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def descendants_cpu(root_pid: int | None = None) -> dict[str, float]:
    """CPU seconds (user+system, with reaped children) of every live process below `root_pid`
    (default: this one), by component: the servers we started, whoever started them (gunicorn,
    job worker, redis, postgres). Differences of two calls are exact as long as no process we
    count exits unreaped."""
    root_pid = root_pid or os.getpid()
    parent: dict[int, int] = {}
    info: dict[int, tuple[str, float]] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            raw = stat.read_text()
        except OSError:
            continue
        name = raw[raw.index("(") + 1: raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2:].split()
        pid = int(stat.parent.name)
        parent[pid] = int(fields[1])
        # Own user+system time plus that of reaped children (cutime, cstime): the espeak-ng runs
        # a web worker waits for when it synthesises a prompt live only a few milliseconds.
        info[pid] = (name, sum(int(x) for x in fields[11:15]) / tick)
    out: Counter[str] = Counter()
    for pid, (name, cpu) in info.items():
        p, seen = parent.get(pid), 0
        while p and p != root_pid and seen < 64:
            p, seen = parent.get(p), seen + 1
        if p == root_pid and pid != root_pid:
            out[_component(pid, name)] += cpu
    return dict(out)


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all cores since boot, from /proc/stat."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]  # guest is in user
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _component(pid: int, name: str) -> str:
    """gunicorn / job worker / redis / postgres: comm alone says "python" for most of them."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        cmdline = name
    if "gunicorn" in cmdline or "assistant-web" in cmdline:
        return "web (gunicorn)"
    if "assistant worker" in cmdline:
        return "job worker"
    if name.startswith("postgres") or "postgres" in cmdline:
        return "postgres"
    return name


def _wait_http(url: str, deadline: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    import urllib.request

    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} not ready")


def _as_postgres_user(cmd: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root (same approach as tests/conftest.py).
    return ["su", "postgres", "-s", "/bin/bash", "-c", shlex.join(cmd)] if os.geteuid() == 0 else cmd


@contextlib.contextmanager
def temp_postgres() -> Iterator[str]:
    """A throw-away PostgreSQL cluster, durable settings left at their defaults (fsync on)."""
    bindir = next((Path(p) for p in [os.environ.get("PG_BIN", ""), *sorted(
        (str(p) for p in Path("/usr/lib/postgresql").glob("*/bin")), reverse=True),
        str(Path(shutil.which("initdb") or "/nonexistent").parent)] if p and (Path(p) / "pg_ctl").exists()), None)
    if bindir is None:
        raise SystemExit("PostgreSQL server binaries not found (apt-get install postgresql)")
    # Its own directory: the postgres user cannot enter our 0700 work directory.
    pgdir = Path(tempfile.mkdtemp(prefix="bench-peak-pg-"))
    if os.geteuid() == 0:
        shutil.chown(pgdir, user="postgres", group="postgres")
    data, port = pgdir / "data", _free_port()
    subprocess.run(_as_postgres_user([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "app", "-E",
                                      "UTF8", "--locale=C.UTF-8"]), check=True, capture_output=True, timeout=120)
    options = f"-p {port} -k {pgdir} -c listen_addresses=127.0.0.1 -c max_connections=200"
    subprocess.run(_as_postgres_user([str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l",
                                      str(pgdir / "log"), "-w", "start"]), check=True, capture_output=True, timeout=120)
    try:
        yield f"postgresql+psycopg://app@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_postgres_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                       capture_output=True, timeout=60, check=False)
        shutil.rmtree(pgdir, ignore_errors=True)


@contextlib.contextmanager
def process_group(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


@contextlib.contextmanager
def media_host() -> Iterator[tuple[str, list[str]]]:
    """Twilio's media host on loopback (tests/fixtures/twilio_world.py): two small JPEGs, so a
    job worker fetching the photos gets real images."""
    sys.path.insert(0, str(ROOT / "tests"))
    from fixtures.twilio_world import jpeg, start_media_server

    server = start_media_server()
    try:
        urls = [server.add(f"peak-{i}.jpg", jpeg(color, gps=gps)) for i, (color, gps) in
                enumerate([("gray", None), ("white", (39.9042, 116.4074))])]
        yield server.host, urls
    finally:
        server.close()


@contextlib.contextmanager
def own_cluster(args: argparse.Namespace, workdir: Path, web_workers: int, database: str) -> Iterator[Target]:
    """gunicorn -w N 'runtime.wsgi:app' (+ redis-server, + PostgreSQL, + job workers, + fake
    Twilio API and media host on loopback): the stand-in until deploy/local_cluster.py exists."""
    sys.path.insert(0, str(ROOT / "tests"))
    from fixtures.twilio_world import FROM_NUMBER, start_twilio_api

    with contextlib.ExitStack() as stack:
        data_dir = workdir / "data"
        data_dir.mkdir()
        url = args.database_url or (stack.enter_context(temp_postgres()) if database == "postgres"
                                    else f"sqlite:///{data_dir / 'peak.db'}")
        port = _free_port()
        env = {**os.environ, "DATA_DIR": str(data_dir), "DATABASE_URL": url, "MODEL_DIR": str(ROOT / "models"),
               "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": DEFAULT_TOKEN,
               "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}", "PORT": str(port), "RUN_WORKER_THREAD": "0",
               **server_env(args)}
        env.pop("REDIS_URL", None)
        if not args.no_redis:
            redis_port = _free_port()
            stack.enter_context(process_group(
                [shutil.which("redis-server") or "redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--dir", str(workdir)], env, workdir / "redis.log"))
            env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
        api = start_twilio_api()
        stack.callback(api.close)
        env.update({"TWILIO_FROM_NUMBER": FROM_NUMBER, "TWILIO_API_BASE_URL": api.base_url})
        media_urls: list[str] = []
        if not args.no_mms:
            host, media_urls = stack.enter_context(media_host())
            env["MEDIA_ALLOWED_HOSTS"] = host
        # Keys and schema once, in a child, before the workers race for the key file; keeps the
        # generator process free of the application's imports.
        subprocess.run([sys.executable, "-c", "from assistant.config import load_settings; "
                        "from runtime.container import make_cipher; from backend.infra import db; import os; "
                        "make_cipher(load_settings(dict(os.environ))); db.upgrade(os.environ['DATABASE_URL'])"],
                       cwd=ROOT, env=env, check=True)
        if not args.no_redis:
            _wait_redis(int(env["REDIS_URL"].split(":")[2].split("/")[0]))
        gunicorn = stack.enter_context(process_group(
            [shutil.which("gunicorn") or "gunicorn", "-w", str(web_workers), "-b", f"127.0.0.1:{port}",
             "--backlog", "2048", "--timeout", "60", "--log-level", "warning", "runtime.wsgi:app"],
            env, workdir / "gunicorn.log"))
        for i in range(args.job_workers):
            stack.enter_context(process_group([sys.executable, "-m", "assistant", "worker"], env,
                                              workdir / f"worker-{i}.log"))
        _wait_http(f"http://127.0.0.1:{port}/healthz", time.time() + 240, gunicorn)
        for _ in range(4 * web_workers):  # every worker has loaded the app
            _wait_http(f"http://127.0.0.1:{port}/healthz", time.time() + 60, gunicorn)
        yield Target(f"http://127.0.0.1:{port}", env["PUBLIC_BASE_URL"], DEFAULT_TOKEN, env, url, media_urls,
                     f"own: gunicorn -w {web_workers}, {url.split(':')[0]}"
                     f"{' (fsync on)' if database == 'postgres' and not args.database_url else ''}, "
                     f"{'redis' if not args.no_redis else 'in-process sessions'}, {args.job_workers} job worker(s)",
                     descendants_cpu, workdir)


def _wait_redis(port: int) -> None:
    deadline = time.time() + 15
    while time.time() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                return
        time.sleep(0.1)
    raise RuntimeError("redis-server did not start")


@contextlib.contextmanager
def local_cluster(args: argparse.Namespace, workdir: Path, web_workers: int, database: str) -> Iterator[Target]:
    from deploy.local_cluster import LocalCluster  # lazy: deploy/ is another engineer's module

    with LocalCluster(workdir, web_workers=web_workers, job_workers=args.job_workers, database=database,  # type: ignore[arg-type]
                      redis=not args.no_redis, fake_twilio=True, extra_env=server_env(args)) as cluster:
        cluster.wait_ready(240)
        media_urls: list[str] = []
        if not args.no_mms and getattr(cluster, "media_server", None) is not None:
            sys.path.insert(0, str(ROOT / "tests"))
            from fixtures.twilio_world import jpeg

            media_urls = [cluster.media_server.add(f"peak-{i}.jpg", jpeg(color, gps=gps)) for i, (color, gps) in
                          enumerate([("gray", None), ("white", (39.9042, 116.4074))])]
        env = {**os.environ, **cluster.env}
        yield Target(cluster.base_url, cluster.env.get("PUBLIC_BASE_URL") or cluster.base_url,
                     cluster.env.get("TWILIO_AUTH_TOKEN", ""), env, cluster.database_url, media_urls,
                     f"LocalCluster: gunicorn -w {web_workers} (deploy/gunicorn.conf.py), {database}"
                     f"{' (fsync off)' if database == 'postgres' else ''}, "
                     f"{'redis' if not args.no_redis else 'in-process sessions'}, {args.job_workers} job worker(s)",
                     descendants_cpu, Path(getattr(cluster, "logs_dir", workdir)))


def server_env(args: argparse.Namespace) -> dict[str, str]:
    """--server-env KEY=VALUE settings for the servers we start (e.g. PHONE_PROMPTS=say)."""
    pairs = [item.partition("=") for item in args.server_env or []]
    return {key: value for key, _, value in pairs if key}


def have_local_cluster() -> bool:
    sys.path.insert(0, str(ROOT))
    try:
        from deploy.local_cluster import LocalCluster  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def started_target(args: argparse.Namespace, web_workers: int, database: str) -> Iterator[Target]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-peak-"))
    try:
        use_cluster = have_local_cluster() and not args.own_server
        starter = local_cluster if use_cluster else own_cluster
        with starter(args, workdir, web_workers, database) as target:
            yield target
    finally:
        if args.keep_logs:
            dest = Path(args.keep_logs) / f"{web_workers}w-{database}-{workdir.name}"
            dest.mkdir(parents=True, exist_ok=True)
            for log in workdir.rglob("*.log"):
                shutil.copy(log, dest / log.name)
        shutil.rmtree(workdir, ignore_errors=True)


def scan_logs(log_dir: Path | None, since_offsets: dict[Path, int]) -> dict[str, Any]:
    """Tracebacks and error lines the servers logged during the run (text or JSON logs)."""
    if log_dir is None:
        return {}
    tracebacks, errors = 0, 0
    last_lines: Counter[str] = Counter()
    for log in sorted(log_dir.rglob("*.log")):
        try:
            with log.open("rb") as fh:
                fh.seek(since_offsets.get(log, 0))
                text = fh.read().decode("utf-8", errors="replace").replace("\\n", "\n")
        except OSError:
            continue
        errors += len(re.findall(r"\bERROR\b|\"level\": ?\"error\"", text, re.I))
        for match in re.finditer(r"Traceback \(most recent call last\):\n((?:[ \t].*\n)+)(.*)", text):
            tracebacks += 1
            last_lines[f"{log.name}: {match.group(2).strip()[:160]}"] += 1
    return {"server_log_tracebacks": tracebacks, "server_log_error_lines": errors,
            "server_log_exceptions": dict(last_lines.most_common(6))}


def log_offsets(log_dir: Path | None) -> dict[Path, int]:
    if log_dir is None:
        return {}
    return {log: log.stat().st_size for log in log_dir.rglob("*.log")}


def existing_target(args: argparse.Namespace) -> Target:
    env = dict(os.environ)
    token = env.get("TWILIO_AUTH_TOKEN")
    if not token:
        raise SystemExit("--base-url needs TWILIO_AUTH_TOKEN (the server's) in the environment to sign webhooks")
    media = [u for u in (args.media_url or [])]
    return Target(args.base_url.rstrip("/"), env.get("PUBLIC_BASE_URL") or args.base_url.rstrip("/"), token, env,
                  env.get("DATABASE_URL"), media, f"existing server at {args.base_url}", None)


# --- before and after the run ----------------------------------------------------------------------
def register_households(target: Target, households: list[tuple[str, str]]) -> None:
    """Through the operators' own command, in the server's environment (its keys hash the tokens)."""
    with tempfile.TemporaryDirectory(prefix="bench-peak-households-") as tmp:
        path = Path(tmp) / "households.yml"
        path.write_text(households_yaml(households), encoding="utf-8")
        result = subprocess.run([sys.executable, "-m", "runtime.cli_alerts", "import", str(path)], cwd=ROOT,
                                env={**target.env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                                timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"household import failed: {result.stderr[-2000:]}")


def db_checks(target: Target, driver: Driver, since: datetime) -> dict[str, Any]:
    """Cheap correctness after the run, from the database the server wrote (rows since the run
    started; the warm-up finished before that)."""
    if not target.database_url:
        return {"skipped": "no DATABASE_URL"}
    sys.path.insert(0, str(ROOT))
    from sqlalchemy import func, select

    from backend.alerts.store import SensorReading
    from backend.infra import db
    from backend.infra.models import CASE_MODELS, Ticket
    from backend.messaging.calls import CallRecord

    c = driver.collected
    engine = db.make_engine(target.database_url)
    try:
        with db.session_factory(engine)() as s:
            sms_tickets = set(s.scalars(select(Ticket.reference).where(Ticket.channel == "sms",
                                                                       Ticket.created_at >= since)))
            sms_keys = s.scalar(select(func.count(func.distinct(Ticket.idempotency_key))).where(
                Ticket.channel == "sms", Ticket.created_at >= since)) or 0
            stored_refs: dict[str, set[str]] = {"rest": set(), "sms": set(), "voice": set()}
            for model in CASE_MODELS.values():
                for ref, channel in s.execute(select(model.reference, model.channel).where(model.created_at >= since)):
                    stored_refs.setdefault(channel, set()).add(ref)
            calls = s.scalar(select(func.count()).select_from(CallRecord).where(CallRecord.started_at >= since)) or 0
            calls_ended = s.scalar(select(func.count()).select_from(CallRecord).where(
                CallRecord.started_at >= since, CallRecord.ended_at.is_not(None))) or 0
            readings = s.scalar(select(func.count()).select_from(SensorReading).where(
                SensorReading.received_at >= since)) or 0
    finally:
        engine.dispose()
    answered = c.sms_report_refs
    rest_missing = c.rest_refs - stored_refs.get("rest", set())
    return {
        # The brief's invariant: SMS reports answered with a reference == distinct SMS tickets.
        "sms_reports_answered_with_ref": len(answered), "sms_tickets_in_db": len(sms_tickets),
        "sms_reports_answered_not_stored": len(answered - sms_tickets),
        "sms_tickets_not_answered": len(sms_tickets - answered),  # committed, answer lost (timeout) or cut
        "sms_tickets_duplicated": len(sms_tickets) - sms_keys,
        "sms_redeliveries": c.redeliveries, "sms_redelivery_mismatch": c.redelivery_mismatch,
        "sms_other_refs_answered": len(c.sms_other_refs),
        "sms_other_refs_not_stored": len(c.sms_other_refs - stored_refs.get("sms", set())),
        "rest_refs_answered": len(c.rest_refs), "rest_refs_not_stored": len(rest_missing),
        "voice_cases_expected": c.voice_cases_expected, "voice_cases_in_db": len(stored_refs.get("voice", set())),
        "calls_started": c.calls_started, "call_records": calls,
        "status_callbacks_sent": c.calls_status_sent, "call_records_ended": calls_ended,
        "readings_sent": c.readings_sent, "readings_accepted": c.readings_accepted, "sensor_rows": readings,
        "ok": (answered == sms_tickets and not rest_missing and c.redelivery_mismatch == 0
               and calls == c.calls_started and calls_ended == c.calls_status_sent
               and len(stored_refs.get("voice", set())) == c.voice_cases_expected
               and readings == c.readings_accepted and len(sms_tickets) == sms_keys),
    }


# --- one run ----------------------------------------------------------------------------------------
def parse_mix(text: str) -> dict[str, float]:
    mix = {k: 0.0 for k in KINDS}
    for part in text.split(","):
        name, _, value = part.partition("=")
        if name.strip() not in mix:
            raise SystemExit(f"--mix: unknown kind {name!r} (kinds: {', '.join(KINDS)})")
        mix[name.strip()] = float(value)
    total = sum(mix.values())
    return {k: v / total for k, v in mix.items()}


def summarize(kind: str, stats: KindStats, seconds: float) -> dict[str, Any]:
    return {"kind": kind, "requests": stats.sent, "answered": stats.answered,
            "rps": round(stats.answered / seconds, 2) if seconds else None,
            "p50_ms": pct(stats.latencies, 50), "p95_ms": pct(stats.latencies, 95), "p99_ms": pct(stats.latencies, 99),
            "max_ms": round(max(stats.latencies), 1) if stats.latencies else None,
            "errors": sum(stats.errors.values()), "errors_by_kind": dict(stats.errors),
            "late_p50_ms": pct(stats.lateness, 50), "late_p99_ms": pct(stats.lateness, 99),
            "by_phase": dict(stats.by_phase), "error_samples": stats.samples}


def run_once(args: argparse.Namespace, target: Target, label: str) -> dict[str, Any]:
    from twilio.request_validator import RequestValidator

    mix = parse_mix(args.mix)
    shape = PeakShape(args.duration, args.peak_rps, args.start_rps if args.start_rps is not None else 0.3 * args.peak_rps,
                      args.end_rps if args.end_rps is not None else 0.3 * args.peak_rps,
                      tuple(float(x) for x in args.shape.split(",")))  # type: ignore[arg-type]
    if abs(sum(shape.fractions) - 1) > 1e-6 or len(shape.fractions) != 3:
        raise SystemExit("--shape: three fractions (ramp-up, plateau, ramp-down) adding up to 1")
    households = [(f"PK{args.seed}-{i:04d}", f"peak-{args.seed}-{i:04d}-{random.Random(i).getrandbits(64):016x}")
                  for i in range(args.households)]
    if mix["sensors"] > 0:
        if target.database_url:
            register_households(target, households)
        else:
            print("no DATABASE_URL: sensors left out (households cannot be registered)", file=sys.stderr)
            mix = parse_mix(",".join(f"{k}={v}" for k, v in mix.items() if k != "sensors"))
    validator = RequestValidator(target.auth_token)

    def signer(path: str, params: dict[str, str]) -> str:
        return validator.compute_signature(target.public_base_url + path, params)

    def driver_for(tag: str, shape_: PeakShape) -> Driver:
        planner = Planner(args.seed, signer, mms_media=target.media_urls,
                          redelivery=args.redelivery, households=households, tag=tag)
        return Driver(target.base_url, target.public_base_url, target.auth_token, planner, shape_, mix,
                      args.concurrency, args.timeout, not args.no_audio)

    if args.warmup > 0:  # first NLU parses, TTS of the fixed prompts, DB connections: not the peak
        warm = PeakShape(args.warmup, max(2.0, args.peak_rps * 0.2), max(2.0, args.peak_rps * 0.2),
                         max(2.0, args.peak_rps * 0.2), (0.0, 1.0, 0.0))
        warm_driver = driver_for(f"{args.seed % 0xFFFF:04x}ffff", warm)
        warm_driver.prepare(warm.offered())
        asyncio.run(warm_driver.run())
    tag = f"{args.seed % 0xFFFF:04x}{zlib.crc32(label.encode()) % 0xFFFF:04x}"
    driver = driver_for(tag, shape)
    driver.prepare(shape.offered())
    if args.trace:
        driver.trace = []
    time.sleep(0.5)
    since = datetime.now(UTC)
    offsets = log_offsets(target.log_dir)
    load_before = os.getloadavg()[0]
    cpu_servers_before = target.children_cpu() if target.children_cpu else None
    usage = resource.getrusage(resource.RUSAGE_SELF)
    machine_before = machine_cpu()
    seconds = asyncio.run(driver.run())
    machine_after = machine_cpu()
    usage_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_servers_after = target.children_cpu() if target.children_cpu else None
    generator_cpu = (usage_after.ru_utime - usage.ru_utime) + (usage_after.ru_stime - usage.ru_stime)
    time.sleep(0.5)
    checks = db_checks(target, driver, since) if not args.no_checks else {"skipped": "--no-checks"}
    server_logs = scan_logs(target.log_dir, offsets)
    if args.trace and driver.trace is not None:
        with open(f"{args.trace}.{label}.tsv", "w", encoding="utf-8") as out:
            out.write("t_s\tkind\tpath\tstatus\tms\n")
            out.writelines("\t".join(map(str, row)) + "\n" for row in driver.trace)

    lines = [summarize(k, driver.stats[k], seconds) for k in (*KINDS, "voice_audio") if driver.stats[k].sent]
    everything = KindStats()
    for k in KINDS:  # overall: the paced kinds and the status callbacks; the audio GETs are apart
        s = driver.stats[k]
        everything.latencies += s.latencies
        everything.lateness += s.lateness
        everything.sent += s.sent
        everything.answered += s.answered
        everything.errors.update(s.errors)
        everything.by_phase.update(s.by_phase)
    overall = summarize("overall", everything, seconds)
    overall["error_samples"] = []
    server_cpu = None
    if cpu_servers_before is not None and cpu_servers_after is not None:
        server_cpu = {k: round(cpu_servers_after.get(k, 0) - cpu_servers_before.get(k, 0), 2) for k in cpu_servers_after}
    total_server_cpu = sum(server_cpu.values()) if server_cpu else None
    answered_all = everything.answered + driver.stats["voice_audio"].answered
    meta = {
        "bench": "evening_peak", "label": label, "server": target.description, "base_url": target.base_url,
        "seconds": round(seconds, 1), "offered_requests": round(shape.offered()),
        "unsent_requests": max(0, round(shape.offered()) - sum(s.by_phase.total() for s in driver.stats.values())),
        "peak_rps": shape.peak_rps,
        "start_rps": shape.start_rps, "end_rps": shape.end_rps, "shape": list(shape.fractions),
        "evening": {p: f"{shape.evening_clock(a)}–{shape.evening_clock(b)}" for p, a, b in (
            ("ramp_up", 0, shape.fractions[0] * shape.duration),
            ("plateau", shape.fractions[0] * shape.duration, sum(shape.fractions[:2]) * shape.duration),
            ("ramp_down", sum(shape.fractions[:2]) * shape.duration, shape.duration))},
        "server_env": server_env(args) if target.children_cpu else None,
        "mix": {k: round(v, 3) for k, v in mix.items()}, "concurrency": args.concurrency, "seed": args.seed,
        "timeout_s": args.timeout, "households": args.households if mix.get("sensors") else 0,
        "mms": bool(target.media_urls), "sessions": dict(driver.collected.sessions),
        "generator_cpu_s": round(generator_cpu, 2),
        "generator_cpu_ms_per_request": round(generator_cpu * 1000 / max(answered_all, 1), 3),
        "server_cpu_s": server_cpu,
        "server_cpu_ms_per_request": round(total_server_cpu * 1000 / max(answered_all, 1), 2)
        if total_server_cpu else None,
        "load_average_before": round(load_before, 2), "load_average_after": round(os.getloadavg()[0], 2),
        # How busy the whole machine was (all processes, ours and others'): near 100 % means the
        # latencies are CPU contention, and other engineers' work counts in it.
        "machine_cpu_busy_pct": round(100 * (machine_after[0] - machine_before[0])
                                      / max(machine_after[1] - machine_before[1], 1), 1),
        "ours_cpu_share_of_machine_pct": round(100 * (generator_cpu + (total_server_cpu or 0))
                                               / max((os.cpu_count() or 1) * seconds, 1e-9), 1),
        **server_logs,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (nproc), kernel {platform.release()}, "
                   f"Python {platform.python_version()}",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    return {"meta": meta, "kinds": lines, "overall": overall, "checks": checks}


def markdown(result: dict[str, Any]) -> str:
    rows = ["| kind | requests | req/s | p50 ms | p95 ms | p99 ms | errors | error kinds | late p99 ms |",
            "|---|---|---|---|---|---|---|---|---|"]
    for line in [*result["kinds"], result["overall"]]:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(line["errors_by_kind"].items())) or "—"
        name = f"**{line['kind']}**" if line["kind"] == "overall" else line["kind"]
        rows.append(f"| {name} | {line['requests']} | {line['rps']} | {line['p50_ms']} | {line['p95_ms']} | "
                    f"{line['p99_ms']} | {line['errors']} | {kinds} | {line['late_p99_ms'] if line['late_p99_ms'] is not None else '—'} |")
    m, c = result["meta"], result["checks"]
    rows.append("")
    rows.append(f"{m['server']}; {m['seconds']} s, offered {m['offered_requests']} paced requests "
                f"(peak {m['peak_rps']}/s), {m['unsent_requests']} not sent in time; machine CPU busy "
                f"{m['machine_cpu_busy_pct']} % (ours {m['ours_cpu_share_of_machine_pct']} %); generator CPU {m['generator_cpu_s']} s "
                f"({m['generator_cpu_ms_per_request']} ms/request); server CPU "
                f"{m['server_cpu_ms_per_request']} ms/request; sessions {m['sessions']}")
    if "ok" in c:
        rows.append(f"checks: SMS reports answered with a reference {c['sms_reports_answered_with_ref']}, SMS tickets "
                    f"in DB {c['sms_tickets_in_db']} (answered not stored {c['sms_reports_answered_not_stored']}, "
                    f"stored not answered {c['sms_tickets_not_answered']}), redeliveries {c['sms_redeliveries']} "
                    f"(mismatch {c['sms_redelivery_mismatch']}), REST refs not stored {c['rest_refs_not_stored']}, "
                    f"calls {c['calls_started']}/{c['call_records']} records, ended {c['call_records_ended']}/"
                    f"{c['status_callbacks_sent']}, voice cases {c['voice_cases_expected']}/{c['voice_cases_in_db']}, readings {c['readings_accepted']}/{c['sensor_rows']} rows → "
                    f"**{'ok' if c['ok'] else 'MISMATCH'}**")
    return "\n".join(rows)


def emit(result: dict[str, Any]) -> None:
    label = result["meta"]["label"]
    print(json.dumps(result["meta"], ensure_ascii=False), flush=True)
    for line in [*result["kinds"], result["overall"]]:
        print(json.dumps({"bench": "evening_peak", "label": label, **line}, ensure_ascii=False), flush=True)
    print(json.dumps({"bench": "evening_peak", "label": label, "checks": result["checks"]}, ensure_ascii=False),
          flush=True)


def compare_table(results: list[dict[str, Any]]) -> str:
    rows = ["| web workers | database | requests | req/s | p50 ms | p95 ms | p99 ms | rest p95 | sms p95 | voice p95 | "
            "sensors p95 | errors | late p99 ms | server CPU ms/req | checks |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        m, o, c = r["meta"], r["overall"], r["checks"]
        by = {k["kind"]: k for k in r["kinds"]}
        rows.append(f"| {m['web_workers']} | {m['database']} | {o['requests']} | {o['rps']} | {o['p50_ms']} | "
                    f"{o['p95_ms']} | {o['p99_ms']} | " + " | ".join(str(by.get(k, {}).get("p95_ms", "—"))
                                                                      for k in KINDS) +
                    f" | {o['errors']} | {o['late_p99_ms']} | {m['server_cpu_ms_per_request']} | "
                    f"{'ok' if c.get('ok') else 'MISMATCH' if 'ok' in c else '—'} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--base-url", help="a server already running (env: TWILIO_AUTH_TOKEN, PUBLIC_BASE_URL, "
                                          "DATABASE_URL and keys for households and checks)")
    where.add_argument("--start", action="store_true", help="start the cluster (LocalCluster, else own gunicorn)")
    where.add_argument("--compare", action="store_true", help="1 vs 2 web workers × SQLite vs Postgres, one table")
    parser.add_argument("--web-workers", type=int, choices=(1, 2), default=2)
    parser.add_argument("--job-workers", type=int, default=1, help="`assistant worker` processes (--start)")
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--database-url", help="own server: use this database instead of a fresh one")
    parser.add_argument("--server-env", action="append", metavar="KEY=VALUE",
                        help="--start/--compare: extra environment for the servers (repeatable)")
    parser.add_argument("--no-redis", action="store_true", help="in-process sessions (breaks multi-turn with 2 workers)")
    parser.add_argument("--own-server", action="store_true", help="ignore deploy/local_cluster.py")
    parser.add_argument("--no-mms", action="store_true", help="no media host: SMS reports are text only")
    parser.add_argument("--media-url", action="append", help="--base-url: photo URLs for MMS (allowed by the server)")
    parser.add_argument("--duration", type=float, default=None, help="seconds of wall time for 18:00–21:00 "
                                                                    "(default 90; 40 per run with --compare)")
    parser.add_argument("--peak-rps", type=float, default=40.0, help="paced requests/s on the plateau")
    parser.add_argument("--start-rps", type=float, help="rate at 18:00 (default 0.3 × peak)")
    parser.add_argument("--end-rps", type=float, help="rate at 21:00 (default 0.3 × peak)")
    parser.add_argument("--shape", default="0.25,0.5,0.25", help="ramp-up,plateau,ramp-down fractions")
    parser.add_argument("--mix", default=DEFAULT_MIX, help=f"share of requests per kind (default {DEFAULT_MIX})")
    parser.add_argument("--concurrency", type=int, default=32, help="coroutines = connections at most")
    parser.add_argument("--timeout", type=float, default=15.0, help="per request (Twilio's webhook timeout: 15 s)")
    parser.add_argument("--households", type=int, default=300)
    parser.add_argument("--redelivery", type=float, default=0.05, help="share of SMS webhooks delivered twice")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds at low rate first, not counted")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-audio", action="store_true", help="do not fetch <Play> audio")
    parser.add_argument("--no-checks", action="store_true")
    parser.add_argument("--trace", help="write every request (start, kind, path, status, ms) to TRACE.<label>.tsv")
    parser.add_argument("--keep-logs", help="--start/--compare: copy the servers' logs here")
    args = parser.parse_args()
    args.duration = args.duration or (40.0 if args.compare else 90.0)
    sys.path.insert(0, str(ROOT))

    if args.base_url:
        result = run_once(args, existing_target(args), "existing")
        emit(result)
        print(markdown(result))
        return 0 if result["checks"].get("ok", True) else 1
    configs = [(args.web_workers, args.database)] if args.start else \
        [(w, d) for d in ("sqlite", "postgres") for w in (1, 2)]
    results = []
    for web_workers, database in configs:
        label = f"{web_workers}w-{database}"
        with started_target(args, web_workers, database) as target:
            result = run_once(args, target, label)
        result["meta"].update({"web_workers": web_workers, "database": database})
        emit(result)
        print(markdown(result), flush=True)
        results.append(result)
    if args.compare:
        print()
        print(compare_table(results))
    return 0 if all(r["checks"].get("ok", True) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
