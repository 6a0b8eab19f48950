"""Replay and simulation, fully in memory: the rule engine on a clock driven by readings' timestamps.

`replay` is the backfill/drill runner behind `python -m assistant alerts replay`: readings in
time order, and between two readings every household whose rules come due is ticked at exactly
the due moment (a heap of `next_due`), so "2 h without water" fires at 2 h, not at the next
reading. `simulate` makes a week of synthetic homes with injected incidents, replays them and
scores detections, false alarms and time to dispatch.
"""
from __future__ import annotations

import heapq
import json
import math
import random
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from backend.alerts.engine import AlertChange, AlertEngine, HouseholdState, Reading, ReadingError
from backend.alerts.households import Household
from backend.alerts.values import KINDS


@dataclass
class ReplayStats:
    readings: int = 0
    unknown: int = 0  # household or device not in the households file: kept aside, not judged
    malformed: int = 0
    changes: int = 0
    by_event: dict[str, int] = field(default_factory=dict)


def read_jsonl(stream: TextIO, stats: ReplayStats, on_error: Callable[[int, str], None],
               kinds: Collection[str] = KINDS) -> Iterator[Reading]:
    """`kinds`: the sensor kinds readings may have (`AlertRules.kinds` when config adds some)."""
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            yield Reading.from_json(json.loads(line), kinds=kinds)
        except (json.JSONDecodeError, ReadingError) as exc:
            stats.malformed += 1
            on_error(number, str(exc))


class Replayer:
    """Holds every household's state and a heap of when each next needs a tick."""

    def __init__(self, engine: AlertEngine, households: Mapping[str, Household] | None = None) -> None:
        self.engine = engine
        self.households = households
        self.states: dict[str, HouseholdState] = {}
        self._heap: list[tuple[datetime, int, str]] = []
        self._due: dict[str, datetime | None] = {}
        self._seq = 0
        self.stats = ReplayStats()
        self.unknown: list[Reading] = []

    def known(self, reading: Reading) -> bool:
        if self.households is None:
            return True
        household = self.households.get(reading.household)
        if household is None:
            return False
        return not household.devices or any(d.device == reading.device for d in household.devices)

    def _schedule(self, household: str) -> None:
        due = self.engine.next_due(self.states[household])
        if due is not None and due != self._due.get(household):
            self._seq += 1
            heapq.heappush(self._heap, (due, self._seq, household))
        self._due[household] = due

    def advance(self, now: datetime) -> list[AlertChange]:
        """Ticks every household due at or before `now`, each at its own due time."""
        out: list[AlertChange] = []
        while self._heap and self._heap[0][0] <= now:
            due, _, household = heapq.heappop(self._heap)
            if self._due.get(household) != due:
                continue  # superseded by a later reading
            self._due[household] = None
            out.extend(self._count(self.engine.tick(self.states[household], due)))
            self._schedule(household)
        return out

    def feed(self, reading: Reading) -> list[AlertChange]:
        out = self.advance(reading.ts)
        self.stats.readings += 1
        if not self.known(reading):
            self.stats.unknown += 1
            if len(self.unknown) < 1000:
                self.unknown.append(reading)
            return out
        state = self.states.get(reading.household)
        if state is None:
            state = self.states[reading.household] = HouseholdState(reading.household)
        out.extend(self._count(self.engine.observe(state, reading, reading.ts)))
        self._schedule(reading.household)
        return out

    def _count(self, changes: list[AlertChange]) -> list[AlertChange]:
        for change in changes:
            self.stats.changes += 1
            self.stats.by_event[change.event] = self.stats.by_event.get(change.event, 0) + 1
        return changes


def replay(readings: Iterable[Reading], engine: AlertEngine, households: Mapping[str, Household] | None = None,
           until: datetime | None = None) -> tuple[Iterator[AlertChange], Replayer]:
    """Readings must come in time order (sort a backfill first; `sorted_readings` does)."""
    replayer = Replayer(engine, households)

    def run() -> Iterator[AlertChange]:
        last: datetime | None = None
        for reading in readings:
            if last is not None and reading.ts < last:
                raise ValueError(f"readings out of order at {reading.ts.isoformat()} (sort them first)")
            last = reading.ts
            yield from replayer.feed(reading)
        if until is not None:
            yield from replayer.advance(until)

    return run(), replayer


def sorted_readings(readings: Iterable[Reading]) -> list[Reading]:
    return sorted(readings, key=lambda r: r.ts)


# --- simulation --------------------------------------------------------------------------------
INCIDENT_RULES = {
    "fall": {"no_water", "heart_rate", "no_door", "electricity_drop"},
    "gas": {"gas_leak"},
    "heart": {"heart_rate"},
    "sensor_fault": {"sensor_offline"},
}
INCIDENT_WINDOW = {"fall": timedelta(hours=24), "gas": timedelta(hours=1), "heart": timedelta(hours=1),
                   "sensor_fault": timedelta(days=8)}


@dataclass(frozen=True)
class Incident:
    household: str
    kind: str  # fall | gas | heart | sensor_fault
    start: datetime
    minutes: float
    device: str | None = None


@dataclass
class SimHome:
    id: str
    band: bool
    water: float
    power: float
    power_rate: float  # kWh per awake hour
    offset: int  # seconds: homes do not all report on the same tick
    broken: set[str] = field(default_factory=set)


def synthetic_week(households: int, days: int, start: datetime, seed: int = 7,
                   incident_rate: float = 0.03) -> tuple[Iterator[Reading], list[Incident]]:
    """Readings day by day (sorted), and the incidents hidden in them.

    Each home: a water meter every 10 min, electricity and gas every 30 min, door heartbeats every 6 h and an event
    per opening, a smart band (40 % of homes) every 10 min (every minute while abnormal). Daily
    life: up 06:00–07:30, water used every ~20 min while up, an outing on most days, a
    three-day visit to the children in a few homes (the alerts it raises count as false alarms).
    """
    rng = random.Random(seed)
    homes = [SimHome(f"S{i:04d}", rng.random() < 0.4, rng.uniform(10, 900), rng.uniform(100, 5000),
                     rng.uniform(0.10, 0.25), rng.randrange(0, 1800)) for i in range(households)]
    incidents: list[Incident] = []
    trips: dict[str, tuple[int, int]] = {}
    for home in homes:
        for kind in ("fall", "gas", "heart", "sensor_fault"):
            if kind == "heart" and not home.band:
                continue
            if rng.random() < incident_rate:
                # A sensor fault needs a day left to be noticed (a door sensor counts as offline after 24 h).
                day = rng.randrange(1, days) if kind != "sensor_fault" else rng.randrange(0, max(1, days - 1))
                at = start + timedelta(days=day, hours=rng.uniform(8, 18))
                device = f"{home.id}-{rng.choice(['water', 'electricity', 'door'])}" \
                    if kind == "sensor_fault" else None
                incidents.append(Incident(home.id, kind, at.replace(microsecond=0),
                                          {"fall": 24 * 60, "gas": 20, "heart": 25, "sensor_fault": 0}[kind], device))
        if rng.random() < 0.03:
            first = rng.randrange(2, max(3, days - 2))
            trips[home.id] = (first, first + 2)

    def day_readings(day: int) -> list[Reading]:
        out: list[Reading] = []
        day_start = start + timedelta(days=day)
        for home in homes:
            out.extend(_home_day(rng, home, day, day_start, trips.get(home.id), incidents))
        out.sort(key=lambda r: r.ts)
        return out

    def stream() -> Iterator[Reading]:
        for day in range(days):
            yield from day_readings(day)

    return stream(), incidents


def _home_day(rng: random.Random, home: SimHome, day: int, day_start: datetime,
              trip: tuple[int, int] | None, incidents: list[Incident]) -> list[Reading]:
    mine = [i for i in incidents if i.household == home.id]
    away = trip is not None and trip[0] <= day <= trip[1]
    day_end = day_start + timedelta(days=1)
    fall = next((i for i in mine if i.kind == "fall" and i.start < day_end
                 and i.start + timedelta(minutes=i.minutes) > day_start), None)
    wake = day_start + timedelta(hours=rng.uniform(6, 7.5))
    sleep = day_start + timedelta(hours=rng.uniform(21, 22.5))

    def down(at: datetime) -> bool:  # lying on the floor: nothing used
        return fall is not None and fall.start <= at < fall.start + timedelta(minutes=fall.minutes)

    uses: list[datetime] = []
    doors: list[datetime] = []
    if not away:
        t = wake
        outing = None
        if rng.random() < 0.7:  # most days: shopping, the park
            leave = day_start + timedelta(hours=rng.uniform(9, 16))
            outing = (leave, leave + timedelta(minutes=rng.uniform(60, 110)))
            doors += [outing[0], outing[1]]
        while t < sleep:
            t += timedelta(minutes=rng.expovariate(1 / 20))
            if t < sleep and not down(t) and not (outing and outing[0] <= t < outing[1]):
                uses.append(t)
        doors = [d for d in doors if not down(d)]
    if trip is not None and day == trip[0]:
        doors.append(day_start + timedelta(hours=9))
    if trip is not None and day == trip[1] + 1:
        doors.append(day_start + timedelta(hours=15))
    readings: list[Reading] = []

    def add(kind: str, value: float, at: datetime) -> None:
        device = f"{home.id}-{kind}"
        broken = next((i for i in mine if i.kind == "sensor_fault" and i.device == device and at >= i.start), None)
        if broken is None:
            readings.append(Reading(home.id, device, kind, round(value, 4), at))

    use_iter = iter(sorted(uses))
    pending = next(use_iter, None)
    awake_hours_factor = 0.3 if away else rng.uniform(0.9, 1.1)
    for slot in range(144):  # water every 10 min; electricity and gas every 30 min
        at = day_start + timedelta(seconds=slot * 600 + home.offset % 600)
        while pending is not None and pending <= at:
            home.water += rng.uniform(0.005, 0.03)
            pending = next(use_iter, None)
        add("water", home.water, at)
        if slot % 3 == 0:
            up = wake <= at < sleep and not down(at)
            home.power += 0.04 + (home.power_rate * awake_hours_factor / 2 if up else 0.0)
            add("electricity", home.power, at)
            add("gas", 0, at)
    for hb in range(4):
        add("door", 0, day_start + timedelta(hours=6 * hb, seconds=home.offset))
    for d in doors:
        add("door", 1, d.replace(microsecond=0))
    for inc in mine:
        if inc.kind == "gas" and day_start <= inc.start < day_start + timedelta(days=1):
            add("gas", 3, inc.start)
            add("gas", 0, inc.start + timedelta(minutes=inc.minutes))
    if home.band:
        heart = next((i for i in mine if i.kind == "heart" and day_start <= i.start < day_start + timedelta(days=1)),
                     None)
        t = day_start + timedelta(seconds=home.offset % 600)
        while t < day_start + timedelta(days=1):
            if heart and heart.start <= t < heart.start + timedelta(minutes=heart.minutes):
                add("heart_rate", rng.uniform(145, 165), t)
                t += timedelta(minutes=1)
                continue
            add("heart_rate", rng.uniform(58, 88) if not down(t) else rng.uniform(55, 75), t)
            t += timedelta(minutes=10)
    readings.sort(key=lambda r: r.ts)
    return readings


@dataclass
class SimulationReport:
    households: int
    days: int
    readings: int
    incidents: dict[str, int]
    detected: dict[str, int]
    missed: list[dict[str, Any]]
    false_alarms: dict[str, int]
    alerts_raised: int
    dispatch_minutes: dict[str, dict[str, float]]  # per incident kind: p50 / p90 / max
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "households": self.households, "days": self.days, "readings": self.readings,
            "incidents": self.incidents, "detected": self.detected, "missed": self.missed[:20],
            "false_alarms": self.false_alarms, "false_alarms_total": sum(self.false_alarms.values()),
            "alerts_raised": self.alerts_raised, "time_to_dispatch_minutes": self.dispatch_minutes,
            "seconds": round(self.seconds, 1),
        }


def score(incidents: list[Incident], raised: list[AlertChange], households: int, days: int,
          readings: int) -> SimulationReport:
    by_home: dict[str, list[Incident]] = {}
    for inc in incidents:
        by_home.setdefault(inc.household, []).append(inc)
    first_dispatch: dict[int, float] = {}
    false_alarms: dict[str, int] = {}
    for change in raised:
        told = change.notify_at or change.at
        match = None
        for inc in by_home.get(change.household, []):
            if change.rule in INCIDENT_RULES[inc.kind] and inc.start - timedelta(hours=2) <= change.at \
                    <= inc.start + INCIDENT_WINDOW[inc.kind]:
                if inc.kind == "sensor_fault" and change.detail.get("device") != inc.device:
                    continue
                match = inc
                break
        if match is None:
            false_alarms[change.rule] = false_alarms.get(change.rule, 0) + 1
            continue
        minutes = max(0.0, (told - match.start).total_seconds() / 60)
        key = id(match)
        first_dispatch[key] = min(first_dispatch.get(key, math.inf), minutes)
    counts: dict[str, int] = {}
    detected: dict[str, int] = {}
    dispatch: dict[str, list[float]] = {}
    missed = []
    for inc in incidents:
        counts[inc.kind] = counts.get(inc.kind, 0) + 1
        if id(inc) in first_dispatch:
            detected[inc.kind] = detected.get(inc.kind, 0) + 1
            dispatch.setdefault(inc.kind, []).append(first_dispatch[id(inc)])
        else:
            missed.append({"household": inc.household, "kind": inc.kind, "start": inc.start.isoformat()})
    return SimulationReport(households, days, readings, counts, detected, missed, false_alarms, len(raised),
                            {k: _percentiles(v) for k, v in dispatch.items()})


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {"p50": pick(0.5), "p90": pick(0.9), "max": round(ordered[-1], 1)}


def simulate(engine: AlertEngine, households: int = 800, days: int = 7, start: datetime | None = None,
             seed: int = 7, incident_rate: float = 0.03,
             on_change: Callable[[AlertChange], None] | None = None) -> SimulationReport:
    import time

    started = time.perf_counter()
    tz = engine.rules.timezone
    start = start or datetime(2026, 11, 2, tzinfo=tz)  # a Monday, local midnight
    readings, incidents = synthetic_week(households, days, start, seed, incident_rate)
    changes, replayer = replay(readings, engine, until=start + timedelta(days=days))
    raised = []
    for change in changes:
        if on_change is not None:
            on_change(change)
        if change.event == "raised":
            raised.append(change)
    report = score(incidents, raised, households, days, replayer.stats.readings)
    report.seconds = time.perf_counter() - started
    return report


def write_fixture(path: Path, readings: Iterable[Reading]) -> int:
    n = 0
    with path.open("w", encoding="utf-8") as fh:
        for r in readings:
            fh.write(json.dumps({"household": r.household, "device": r.device, "kind": r.kind, "value": r.value,
                                 "ts": r.ts.isoformat()}, ensure_ascii=False) + "\n")
            n += 1
    return n
