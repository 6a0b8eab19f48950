"""The pure care-alert engine with the shipped config.yml rules, on explicit times (no clock)."""
from __future__ import annotations

import copy
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from assistant.config import load_settings
from backend.alerts.engine import AlertChange, AlertEngine, HouseholdState, Reading, ReadingError
from backend.alerts.households import HouseholdsFileError, parse_households
from backend.alerts.rules import AlertRules, RulesConfigError
from backend.alerts.simulate import replay

TZ = ZoneInfo("Asia/Shanghai")
DAY = datetime(2026, 11, 25, tzinfo=TZ)  # a Wednesday
CONFIG = load_settings({}).config["alerts"]


def rules(**overrides) -> AlertRules:
    config = copy.deepcopy(CONFIG)
    for path, value in overrides.items():
        node = config
        *parents, last = path.split("__")
        for key in parents:
            node = node[key]
        node[last] = value
    return AlertRules.from_config(config)


def at(hours: float, day: int = 0) -> datetime:
    return DAY + timedelta(days=day, hours=hours)


def reading(kind: str, value: float, ts: datetime, device: str | None = None) -> Reading:
    return Reading("H1", device or f"{kind}-1", kind, value, ts)


class Home:
    """One household driven through the engine the way the replay CLI drives it."""

    def __init__(self, engine_rules: AlertRules | None = None, *, dispatch: bool = True) -> None:
        # Offline checks are off unless a test is about them: these homes report sparsely.
        self.engine = AlertEngine(engine_rules or rules(rules__sensor_offline__enabled=False),
                                  track_dispatch=dispatch)
        self.state = HouseholdState("H1")
        self.changes: list[AlertChange] = []

    def feed(self, kind: str, value: float, ts: datetime, device: str | None = None) -> list[AlertChange]:
        new = self.engine.observe(self.state, reading(kind, value, ts, device), ts)
        self.changes += new
        return new

    def tick(self, now: datetime) -> list[AlertChange]:
        new = self.engine.tick(self.state, now)
        self.changes += new
        return new

    def events(self) -> list[tuple[str, str, str]]:
        return [(c.rule, c.event, c.at.astimezone(TZ).strftime("%d %H:%M")) for c in self.changes]


# --- no water in the day -------------------------------------------------------------------------
def test_no_water_fires_exactly_two_hours_after_the_last_use_and_clears_on_use() -> None:
    home = Home()
    home.feed("water", 100.0, at(7))
    home.feed("water", 100.02, at(8))  # used
    assert home.engine.next_due(home.state) == at(10)
    assert home.tick(at(10) - timedelta(seconds=1)) == []
    raised = home.tick(at(10))
    assert [(c.event, c.at, c.notify, c.level) for c in raised] == [
        ("raised", at(10), ("grid_worker", "family"), "medium")]
    later = home.feed("water", 100.05, at(10 + 20 / 60))
    assert [(c.event, c.at) for c in later] == [("escalated", at(10.25)), ("cleared", at(10 + 20 / 60))]
    assert later[1].notify == ("grid_worker", "family", "backup_grid_worker")  # everyone who was told


def test_no_water_counts_only_daytime_and_a_door_opening_restarts_the_count() -> None:
    home = Home()
    home.feed("water", 10.0, at(19.5))
    home.feed("water", 10.1, at(20))  # last use at 20:00: 21:00 ends the window, no night alarm
    home.tick(at(6, day=1))
    assert home.changes == []
    assert home.engine.next_due(home.state) == at(9, day=1)  # 07:00 + 2 h the next morning
    home.feed("door", 1, at(8, day=1))  # she went out (or came in) at 08:00
    assert home.engine.next_due(home.state) == at(10, day=1)
    home.tick(at(10, day=1))
    assert home.events() == [("no_water", "raised", "26 10:00")]


def test_a_late_check_still_reports_the_exact_moment_and_a_late_reading_cannot_hide_it() -> None:
    home = Home(dispatch=False)
    home.feed("water", 1.0, at(8))
    home.feed("water", 1.5, at(8.2))
    # The worker was down: the next thing seen is a use at 10:40, after the 2 h mark at 10:12.
    changes = home.feed("water", 2.0, at(10 + 40 / 60))
    assert [(c.event, c.at) for c in changes] == [("raised", at(8.2) + timedelta(hours=2)),
                                                   ("cleared", at(10 + 40 / 60))]


# --- SLA and escalation ------------------------------------------------------------------------
def test_unacknowledged_alert_escalates_at_15_and_30_minutes_along_the_chain() -> None:
    home = Home()
    home.feed("water", 1.0, at(8))
    home.tick(at(10))
    home.tick(at(10.25) - timedelta(seconds=1))
    assert [c.event for c in home.changes] == ["raised"]
    first = home.tick(at(10.25))
    assert [(c.event, c.notify, c.step, c.at) for c in first] == [
        ("escalated", ("backup_grid_worker",), 1, at(10.25))]
    second = home.tick(at(11))
    assert [(c.notify, c.at) for c in second] == [(("community_leader",), at(10.5))]
    assert home.tick(at(15)) == []  # the chain is exhausted: no more texts
    assert home.engine.next_due(home.state) != at(10.75)


def test_acknowledged_alert_escalates_only_when_the_visit_is_late() -> None:
    home = Home()
    home.feed("water", 1.0, at(8))
    home.tick(at(10))
    assert home.engine.acknowledge(home.state, "no_water")
    assert home.tick(at(10.25)) == []  # acknowledged in time: no ack escalation
    late = home.tick(at(10.5))
    assert [(c.event, c.detail["why"], c.at) for c in late] == [("escalated", "visit", at(10.5))]


# --- quiet hours -----------------------------------------------------------------------------------
def test_quiet_hours_hold_light_alerts_until_seven_but_never_a_gas_leak() -> None:
    home = Home()
    home.feed("electricity", 0.0, at(12))
    for day in range(1, 5):  # 5 kWh a day: the baseline
        home.feed("electricity", 5.0 * day, at(12, day=day))
    home.feed("electricity", 22.0, at(12, day=5))  # a 2 kWh day (-60 %)
    held = home.feed("electricity", 22.0, at(0.1, day=6))  # judged at the first reading after midnight
    assert [(c.event, c.notify, c.call) for c in held] == [("raised", (), ())]
    assert held[0].notify_at == at(7, day=6) and held[0].detail["percent"] == 60
    assert held[0].to_json()["held_until"] == at(7, day=6).isoformat()
    told = home.tick(at(7, day=6))
    assert [(c.event, c.notify, c.call, c.at) for c in told] == [
        ("notified", ("social_worker",), ("senior",), at(7, day=6))]
    # Escalation counts from when people were told (07:00 + 4 h), not from 00:06.
    assert home.engine.next_due(home.state) == at(11, day=6)
    gas = home.feed("gas", 3, at(2, day=7))
    assert [(c.event, c.notify, c.call, c.integrations) for c in gas if c.rule == "gas_leak"] == [
        ("raised", ("family", "doctor", "grid_worker"), ("senior",), ("fire_119",))]


def test_an_alert_that_clears_during_quiet_hours_was_never_told() -> None:
    home = Home()
    home.feed("door", 1, at(23))
    home.tick(at(23, day=2))  # 48 h later, in quiet hours
    home.feed("door", 1, at(23.5, day=2))
    assert [(c.event, c.notify) for c in home.changes] == [("raised", ()), ("cleared", ())]


# --- electricity ------------------------------------------------------------------------------------
def test_electricity_drop_needs_30_percent_against_the_own_baseline() -> None:
    home = Home(dispatch=False)
    meter = 0.0
    home.feed("electricity", meter, at(12))
    for day, used in enumerate([6, 6, 6, 4.3], start=1):  # 4.3 is a 28 % drop: not enough
        meter += used
        home.feed("electricity", meter, at(12, day=day))
        home.feed("electricity", meter, at(0.01, day=day + 1))
    assert home.changes == []
    meter += 4.0  # baseline is now (6+6+6+4.3)/4 = 5.575; 4.0 is 28 % below — still fine
    home.feed("electricity", meter, at(12, day=5))
    home.feed("electricity", meter, at(0.01, day=6))
    assert home.changes == []
    meter += 3.0  # 46 % below
    home.feed("electricity", meter, at(12, day=6))
    raised = home.feed("electricity", meter, at(0.01, day=7))
    assert [(c.rule, c.event, c.level) for c in raised] == [("electricity_drop", "raised", "light")]
    meter += 5.5
    home.feed("electricity", meter, at(12, day=7))
    cleared = home.feed("electricity", meter, at(0.01, day=8))
    assert [c.event for c in cleared] == ["cleared"]


def test_no_electricity_judgement_without_enough_baseline_days() -> None:
    home = Home(dispatch=False)
    home.feed("electricity", 0.0, at(0.01))
    home.feed("electricity", 6.0, at(0.01, day=1))
    home.feed("electricity", 12.0, at(0.01, day=2))
    home.feed("electricity", 12.5, at(0.01, day=3))  # -92 % but only two days of baseline
    assert home.changes == []


# --- door, gas, heart rate --------------------------------------------------------------------
def test_no_door_opening_for_48_hours_is_a_medium_visit_task() -> None:
    home = Home(dispatch=False)
    home.feed("door", 1, at(9))
    home.feed("door", 0, at(15))  # heartbeat: alive, not an opening
    assert home.tick(at(9, day=2) - timedelta(seconds=1)) == []
    raised = home.tick(at(9, day=2))
    assert [(c.rule, c.level, c.notify) for c in raised] == [("no_door", "medium", ("property", "grid_worker"))]
    assert [c.event for c in home.feed("door", 1, at(10, day=2))] == ["cleared"]


def test_gas_leak_is_severe_at_once_suppresses_repeats_and_clears_after_ten_quiet_minutes() -> None:
    home = Home(dispatch=False)
    home.feed("gas", 0, at(9))
    raised = home.feed("gas", 2.5, at(9.5))
    assert [(c.event, c.level, c.at) for c in raised] == [("raised", "severe", at(9.5))]
    for minute in range(1, 5):  # still leaking: one alert, not five
        assert home.feed("gas", 3, at(9.5) + timedelta(minutes=minute)) == []
    home.feed("gas", 0, at(9.6))
    assert home.tick(at(9.6) + timedelta(minutes=9)) == []
    cleared = home.tick(at(9.6) + timedelta(minutes=10))
    assert [(c.event, c.at) for c in cleared] == [("cleared", at(9.6) + timedelta(minutes=10))]


def test_heart_rate_out_of_band_for_ten_minutes_tells_family_and_doctor() -> None:
    home = Home(dispatch=False)
    start = at(3)  # night: heart rate ignores quiet hours
    for minute in range(0, 10):  # 9 minutes out of band, then back: nothing
        home.feed("heart_rate", 150, start + timedelta(minutes=minute))
    home.feed("heart_rate", 80, start + timedelta(minutes=10))
    assert home.changes == []
    later = at(4)
    for minute in range(0, 11):
        home.feed("heart_rate", 38, later + timedelta(minutes=minute))
    assert [(c.event, c.notify, c.at, c.notify_at) for c in home.changes] == [
        ("raised", ("family", "doctor"), later + timedelta(minutes=10), later + timedelta(minutes=10))]
    for minute in range(11, 16):
        home.feed("heart_rate", 72, later + timedelta(minutes=minute))
    assert [c.event for c in home.changes] == ["raised"]  # 4 minutes back in band: not yet
    home.feed("heart_rate", 72, later + timedelta(minutes=16))
    assert [c.event for c in home.changes] == ["raised", "cleared"]


# --- offline ------------------------------------------------------------------------------------------
def test_a_silent_sensor_is_its_own_alert_and_never_an_all_clear() -> None:
    home = Home(rules(), dispatch=False)
    start = at(10)
    for minute in range(0, 11):
        home.feed("heart_rate", 150, start + timedelta(minutes=minute), device="band")
    assert [c.rule for c in home.changes] == ["heart_rate"]
    # The band goes quiet: after 2 h that is reported, and the heart-rate alert stays open.
    assert home.tick(start + timedelta(minutes=10, hours=2) - timedelta(seconds=1)) == []
    offline = home.tick(start + timedelta(minutes=10, hours=2))
    assert [(c.rule, c.event, c.detail["device"], c.detail["hours"]) for c in offline] == [
        ("sensor_offline", "raised", "band", 2)]
    assert set(home.state.open) == {"heart_rate", "sensor_offline:band"}
    back = home.feed("heart_rate", 75, start + timedelta(hours=3), device="band")
    assert [(c.rule, c.event) for c in back] == [("sensor_offline", "cleared")]
    assert "heart_rate" in home.state.open


# --- state, input, config -------------------------------------------------------------------------------
def test_state_round_trips_through_json_mid_scenario() -> None:
    straight, resumed = Home(), Home()
    steps = [("water", 1.0, at(7)), ("water", 1.2, at(8)), ("door", 1, at(8.5)), ("gas", 0, at(9)),
             ("heart_rate", 150, at(9.1))]
    for kind, value, ts in steps:
        straight.feed(kind, value, ts)
        resumed.feed(kind, value, ts)
        resumed.state = HouseholdState.from_json(resumed.state.to_json())
    for hour in (10.5, 10.76, 11.1):
        straight.tick(at(hour))
        resumed.tick(at(hour))
        resumed.state = HouseholdState.from_json(resumed.state.to_json())
    assert resumed.events() == straight.events()
    assert resumed.state.to_json() == straight.state.to_json()


@pytest.mark.parametrize(("reading", "field"), [
    ({"household": "H1", "device": "d", "kind": "smoke", "value": 1, "ts": "2026-11-25T10:00:00+08:00"}, "kind"),
    ({"household": "H1", "device": "d", "kind": "gas", "value": "1", "ts": "2026-11-25T10:00:00+08:00"}, "value"),
    ({"household": "H1", "device": "d", "kind": "gas", "value": True, "ts": "2026-11-25T10:00:00+08:00"}, "value"),
    ({"household": "H1", "device": "d", "kind": "gas", "value": 1, "ts": "2026-11-25T10:00:00"}, "ts"),
    ({"household": "H1", "device": "d", "kind": "gas", "value": 1, "ts": "yesterday"}, "ts"),
    ({"household": "H1", "device": "", "kind": "gas", "value": 1, "ts": "2026-11-25T10:00:00+08:00"}, "device"),
    ({"device": "d", "kind": "gas", "value": 1, "ts": "2026-11-25T10:00:00+08:00"}, "household"),
    ([1, 2], "reading"),
])
def test_malformed_readings_name_the_field(reading: object, field: str) -> None:
    with pytest.raises(ReadingError) as err:
        Reading.from_json(reading)
    assert err.value.field == field


def test_config_errors_are_refused() -> None:
    with pytest.raises(RulesConfigError):
        rules(rules__no_water__notify=["grid_worker", "neighbour"])
    with pytest.raises(RulesConfigError):
        rules(rules__gas_leak__level="catastrophic")
    with pytest.raises(HouseholdsFileError):
        parse_households({"households": [{"id": "H1", "grid": "G1"}]})  # no senior


def test_replay_ticks_between_readings_at_the_due_time() -> None:
    readings = [reading("water", 1.0, at(8)), reading("water", 1.0, at(12))]
    changes, replayer = replay(readings, AlertEngine(rules(), track_dispatch=True))
    out = [(c.event, c.at) for c in changes]
    assert out == [("raised", at(10)), ("escalated", at(10.25)), ("escalated", at(10.5))]
    assert replayer.stats.readings == 2


# --- rule kinds from config ------------------------------------------------------------------------
CO2_RULE = {"kind": "threshold", "sensor": "co2", "above": 2000, "minutes": 10, "clear_after_minutes": 5,
            "level": "medium", "notify": ["grid_worker", "family"], "sla": {"ack_minutes": 30}}
CO2_TEXT = "室内二氧化碳浓度过高（{value}ppm）持续{minutes}分钟"


def co2_rules() -> AlertRules:
    """A rule over a sensor kind no code knows, defined only here (config, not code)."""
    config = copy.deepcopy(CONFIG)
    config["rules"]["co2_high"] = dict(CO2_RULE)
    config["rules"]["sensor_offline"]["enabled"] = False
    config["texts"] = {"what_co2_high": CO2_TEXT, "device_co2": "二氧化碳传感器"}
    config["offline_hours"] = {**config["offline_hours"], "co2": 1}
    return AlertRules.from_config(config)


def test_a_new_threshold_rule_over_a_new_sensor_kind_needs_only_config() -> None:
    engine_rules = co2_rules()
    assert "co2" in engine_rules.kinds and engine_rules.policy("co2_high").kind == "threshold"
    home = Home(engine_rules, dispatch=False)
    for minute in range(0, 10):  # 9 minutes above 2000 ppm, then fresh air: nothing
        home.feed("co2", 2600, at(9) + timedelta(minutes=minute))
    home.feed("co2", 800, at(9) + timedelta(minutes=10))
    assert home.changes == []
    start = at(14)
    for minute in range(0, 11):
        home.feed("co2", 2400 + minute, start + timedelta(minutes=minute))
    assert [(c.rule, c.event, c.level, c.at, c.notify, dict(c.detail)) for c in home.changes] == [
        ("co2_high", "raised", "medium", start + timedelta(minutes=10), ("grid_worker", "family"),
         {"value": 2410, "minutes": 10})]
    assert engine_rules.texts["what_co2_high"].format(**home.changes[0].detail) == "室内二氧化碳浓度过高（2410ppm）持续10分钟"
    home.feed("co2", 2000, start + timedelta(minutes=12))  # "above 2000": 2000 itself is back in range
    assert [c.event for c in home.feed("co2", 900, start + timedelta(minutes=17))] == ["cleared"]
    # Readings and households files accept the new kind once config names it, and not before.
    raw = {"household": "H1", "device": "c", "kind": "co2", "value": 2100, "ts": "2026-11-25T10:00:00+08:00"}
    assert Reading.from_json(raw, kinds=engine_rules.kinds).kind == "co2"
    with pytest.raises(ReadingError):
        Reading.from_json(raw)
    households = {"households": [{"id": "H1", "grid": "G1", "senior": {"name": "张"},
                                  "devices": [{"id": "C-1", "kind": "co2"}]}]}
    assert parse_households(households, engine_rules.kinds)["H1"].devices[0].kind == "co2"
    with pytest.raises(HouseholdsFileError):
        parse_households(households)


def test_a_new_sensor_kind_goes_offline_like_any_other() -> None:
    config = copy.deepcopy(CONFIG)
    config["offline_hours"] = {**config["offline_hours"], "co2": 1}
    home = Home(AlertRules.from_config(config), dispatch=False)
    home.feed("co2", 500, at(9), device="C-1")
    offline = home.tick(at(10))
    assert [(c.rule, c.key, c.detail["hours"]) for c in offline] == [("sensor_offline", "sensor_offline:C-1", 1)]


@pytest.mark.parametrize(("rule", "spec", "texts", "message"), [
    ("no_water", {**CONFIG["rules"]["no_water"], "kind": "silense"}, {}, "alerts.rules.no_water: unknown kind 'silense'"),
    ("co2_high", {k: v for k, v in CO2_RULE.items() if k != "kind"}, {"what_co2_high": CO2_TEXT},
     "alerts.rules.co2_high: missing required key 'kind'"),
    ("co2_high", {k: v for k, v in CO2_RULE.items() if k != "sensor"}, {"what_co2_high": CO2_TEXT},
     "alerts.rules.co2_high: missing required key 'sensor'"),
    ("co2_high", {k: v for k, v in CO2_RULE.items() if k != "above"}, {"what_co2_high": CO2_TEXT},
     "alerts.rules.co2_high: needs one of above, at_least, below, at_most"),
    ("co2_high", {**CO2_RULE, "clear_by": "magic"}, {"what_co2_high": CO2_TEXT},
     "alerts.rules.co2_high: clear_by must be readings or clock"),
    ("co2_high", CO2_RULE, {}, "alerts.rules.co2_high: missing alerts.texts.what_co2_high"),
    ("no_door", {k: v for k, v in CONFIG["rules"]["no_door"].items() if k != "hours"}, {},
     "alerts.rules.no_door: needs one of minutes, hours"),
    ("no_door", {**CONFIG["rules"]["no_door"], "hours": "two days"}, {},
     "alerts.rules.no_door.hours: must be a number, not 'two days'"),
])
def test_a_rule_of_unknown_kind_or_missing_a_key_is_refused_at_start_naming_it(
        rule: str, spec: dict, texts: dict, message: str) -> None:
    config = copy.deepcopy(CONFIG)
    config["rules"][rule] = spec
    config["texts"] = texts
    with pytest.raises(RulesConfigError) as err:
        AlertRules.from_config(config)
    assert message in str(err.value)


def test_named_kinds_may_leave_kind_out_and_a_disabled_rule_is_not_checked() -> None:
    config = copy.deepcopy(CONFIG)
    del config["rules"]["sensor_offline"]["kind"]
    config["rules"]["co2_high"] = {"kind": "nonsense", "enabled": False}
    assert AlertRules.from_config(config).policy("sensor_offline").kind == "sensor_offline"


def test_state_stored_before_rule_kinds_came_from_config_still_loads() -> None:
    old = ('{"household":"H1","first_seen":"2026-11-25T07:00:00+08:00","devices":{"w":{"kind":"water",'
           '"first":"2026-11-25T07:00:00+08:00","last":"2026-11-25T08:00:00+08:00"}},"water_value":1.5,'
           '"water_last_use":"2026-11-25T08:00:00+08:00","door_last_open":null,"hr_out_since":null,'
           '"hr_in_since":null,"gas_normal_since":"2026-11-25T09:00:00+08:00","elec_day":null,'
           '"elec_day_last":null,"elec_prev_last":null,"elec_history":[],"open":{}}')
    state = HouseholdState.from_json(old)
    assert state.meters == {"water": 1.5} and state.last_active == {"water": at(8)}
    assert state.runs["gas_leak"].in_since == at(9)
    engine = AlertEngine(rules(rules__sensor_offline__enabled=False))
    assert engine.next_due(state) == at(10)  # two hours after the stored last use
