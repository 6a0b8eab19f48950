"""`python -m assistant alerts replay|simulate`, and the composition of the care-alert desk.

replay   READINGS.jsonl --households HOUSEHOLDS.yml [--until ISO]   backfill / drill, in memory:
         every alert raised, notified (after quiet hours), escalated or cleared → one JSON line
         on stdout; a summary line on stderr. Readings need not be sorted.
import   HOUSEHOLDS.yml   registers (or updates) households, contacts and devices in the database
         (DATABASE_URL, keys as for `serve`); device tokens come from the file.
simulate [--households 800] [--days 7] [--seed 7] [--incident-rate 0.03]   a week of synthetic
         homes with injected incidents → detections, false alarms, time to dispatch (JSON).

Also runnable as `python -m runtime.cli_alerts …` until runtime/cli.py lists it. Exit codes:
0 done, 2 bad input (file missing, malformed households file or config).
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

from assistant.config import load_settings


def cmd_replay(args: argparse.Namespace) -> int:
    from backend.alerts.engine import AlertEngine
    from backend.alerts.households import HouseholdsFileError, load_households
    from backend.alerts.rules import RulesConfigError
    from backend.alerts.simulate import ReplayStats, read_jsonl, replay, sorted_readings

    path = Path(args.readings)
    if not path.exists():
        print(f"no such file: {path}", file=sys.stderr)
        return 2
    from runtime.container import alert_rules

    try:
        rules = alert_rules(load_settings())
        households = load_households(args.households, rules.kinds) if args.households else None
    except (HouseholdsFileError, RulesConfigError, OSError) as exc:
        print(str(exc), file=sys.stderr)
        return 2
    parse_stats = ReplayStats()

    def bad_line(number: int, error: str) -> None:
        print(f"{path}:{number}: skipped malformed reading: {error}", file=sys.stderr)

    with path.open(encoding="utf-8") as fh:
        readings = sorted_readings(read_jsonl(fh, parse_stats, bad_line, rules.kinds))
    until = datetime.fromisoformat(args.until) if args.until else (readings[-1].ts if readings else None)
    changes, replayer = replay(readings, AlertEngine(rules, track_dispatch=True), households, until)
    for change in changes:
        print(json.dumps(change.to_json(), ensure_ascii=False), flush=False)
    sys.stdout.flush()
    stats = replayer.stats
    print(json.dumps({"readings": stats.readings, "kept_aside": stats.unknown, "malformed": parse_stats.malformed,
                      "households": len(replayer.states), "events": stats.by_event}, ensure_ascii=False),
          file=sys.stderr)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from backend.alerts.households import HouseholdsFileError, load_households
    from backend.messaging.outbox import Outbox
    from runtime.container import alert_rules, build_alert_desk, make_cipher, make_clock, open_database

    settings = load_settings()
    try:  # sensor kinds are those the configured rules name (a new kind needs config only)
        households = load_households(args.households, alert_rules(settings).kinds)
    except (HouseholdsFileError, OSError) as exc:
        print(str(exc), file=sys.stderr)
        return 2
    sessions, cipher, clock = open_database(settings), make_cipher(settings), make_clock(settings)
    desk = build_alert_desk(settings, sessions, cipher, clock, Outbox(sessions, cipher, clock, None))
    count = desk.register_households(households, actor="cli:alerts-import")
    devices = sum(len(h.devices) for h in households.values())
    print(json.dumps({"households": count, "devices": devices}, ensure_ascii=False))
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from backend.alerts.engine import AlertEngine
    from backend.alerts.simulate import simulate
    from runtime.container import alert_rules

    rules = alert_rules(load_settings())
    report = simulate(AlertEngine(rules, track_dispatch=True), households=args.households, days=args.days,
                      seed=args.seed, incident_rate=args.incident_rate)
    print(json.dumps(report.to_json(), ensure_ascii=False))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    alerts = subparsers.add_parser("alerts", help="care alerts: replay readings, simulate a pilot")
    sub = alerts.add_subparsers(dest="alerts_command", required=True)
    rep = sub.add_parser("replay", help="run the rules over READINGS.jsonl, one JSON line per alert event")
    rep.add_argument("readings")
    rep.add_argument("--households", help="households file (YAML); readings of others are kept aside")
    rep.add_argument("--until", help="ISO time to run the clock to (default: the last reading)")
    rep.set_defaults(func=cmd_replay)
    imp = sub.add_parser("import", help="register households, contacts and devices from a households file")
    imp.add_argument("households")
    imp.set_defaults(func=cmd_import)
    sim = sub.add_parser("simulate", help="a week of synthetic homes with injected incidents")
    sim.add_argument("--households", type=int, default=800)
    sim.add_argument("--days", type=int, default=7)
    sim.add_argument("--seed", type=int, default=7)
    sim.add_argument("--incident-rate", type=float, default=0.03, help="per home and incident kind")
    sim.set_defaults(func=cmd_simulate)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.cli_alerts")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["alerts", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
