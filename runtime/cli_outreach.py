"""`python -m assistant checkin …` and `python -m assistant notices …`: 平安电话 schedules, a
simulated check-in day, and community notices from a file (preview, send, report)."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from datetime import date, datetime
from pathlib import Path
from typing import Any

import yaml


def _runtime() -> Any:
    from assistant.config import load_settings
    from runtime.container import build_runtime

    return build_runtime(load_settings())


def _print(value: Any) -> None:
    print(json.dumps(value, ensure_ascii=False, default=str))


def cmd_simulate(args: argparse.Namespace) -> int:
    from assistant.config import load_settings
    from backend.outreach.simulate import simulate

    if args.no_answer + args.press_0 + args.busy > args.households:
        print("checkin simulate: more special cases than households", file=sys.stderr)
        return 2
    simulate(load_settings().config, args.households, args.no_answer, args.press_0,
             date.fromisoformat(args.day), _print, busy_then_ok=args.busy)
    return 0


def cmd_enrol(args: argparse.Namespace) -> int:
    from backend.outreach.checkins import Enrolment

    start, _, end = (args.window or "").partition("-")
    enrolment = Enrolment(args.household, start or None, end or None, args.days, args.channel, args.question,
                          args.skip_if_active, not args.no_sms_fallback, args.language)
    try:
        schedule = _runtime().outreach.checkins.enrol(enrolment, f"cli:{args.actor}")
    except ValueError as exc:
        print(f"checkin enrol: {exc}", file=sys.stderr)
        return 2
    _print({"household": args.household, "schedule": schedule})
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    runtime = _runtime()
    day = date.fromisoformat(args.day) if args.day else runtime.clock().date()
    for summary in runtime.outreach.checkins.summaries(day):
        _print(asdict(summary))
    return 0


def _notice_file(path: str) -> dict[str, Any]:
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError("a notice file is a mapping: title, body, audience, channel")
    return data


def cmd_notice_send(args: argparse.Namespace) -> int:
    from backend.outreach.notices import audience_from

    try:
        spec = _notice_file(args.file)
        audience = audience_from(spec.get("audience") or {"kind": "all"})
        notices = _runtime().outreach.notices
        title, body, channel = str(spec.get("title") or ""), str(spec.get("body") or ""), str(
            spec.get("channel") or "preference")
        preview = notices.preview(title, body, audience, channel)
        _print({"preview": asdict(preview)})
        if not args.yes:
            print("nothing sent: add --yes to send to these recipients", file=sys.stderr)
            return 0
        at = datetime.fromisoformat(args.at) if args.at else None
        _print({"notice": notices.create(title, body, audience, channel, f"cli:{args.actor}", at,
                                         urgent=bool(spec.get("urgent")))})
    except (OSError, ValueError, yaml.YAMLError) as exc:
        print(f"notices send: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_notice_report(args: argparse.Namespace) -> int:
    notices = _runtime().outreach.notices
    for report in notices.reports([args.id] if args.id else None):
        _print({**asdict(report), "done": report.done})
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    checkin = subparsers.add_parser("checkin", help="平安电话: enrol, report, simulate a day")
    sub = checkin.add_subparsers(dest="checkin_command", required=True)
    sim = sub.add_parser("simulate", help="a check-in day under a fake clock, as JSON lines")
    sim.add_argument("--households", type=int, default=50)
    sim.add_argument("--no-answer", type=int, default=5, help="seniors who never answer")
    sim.add_argument("--press-0", type=int, default=2, help="seniors who press 0 for a person")
    sim.add_argument("--busy", type=int, default=0, help="seniors busy at first, fine on the retry")
    sim.add_argument("--day", default="2026-11-25")
    sim.set_defaults(func=cmd_simulate)
    enrol = sub.add_parser("enrol", help="enrol a household (from the households file) for daily calls")
    enrol.add_argument("household")
    enrol.add_argument("--window", help="local call window, e.g. 09:00-11:00")
    enrol.add_argument("--days", help="ISO weekdays, e.g. 12345")
    enrol.add_argument("--channel", choices=["voice", "sms"], default="voice")
    enrol.add_argument("--question", help="one optional question, e.g. 今天吃药了吗？")
    enrol.add_argument("--skip-if-active", action="store_true", help="no call when sensors show activity today")
    enrol.add_argument("--no-sms-fallback", action="store_true")
    enrol.add_argument("--language", choices=["zh", "yue"])
    enrol.add_argument("--actor", default="staff")
    enrol.set_defaults(func=cmd_enrol)
    report = sub.add_parser("report", help="streaks and missed calls per household, as JSON lines")
    report.add_argument("--day")
    report.set_defaults(func=cmd_report)

    notices = subparsers.add_parser("notices", help="通知广播: send a notice from a file, see reports")
    nsub = notices.add_subparsers(dest="notices_command", required=True)
    send = nsub.add_parser("send", help="preview a notice file; with --yes, schedule it")
    send.add_argument("file", help="YAML: title, body, channel (sms|voice|preference), audience")
    send.add_argument("--yes", action="store_true", help="send after the preview")
    send.add_argument("--at", help="send at this ISO time (moved out of quiet hours)")
    send.add_argument("--actor", default="staff")
    send.set_defaults(func=cmd_notice_send)
    rep = nsub.add_parser("report", help="delivery and listen-through per notice, as JSON lines")
    rep.add_argument("id", nargs="?", type=int)
    rep.set_defaults(func=cmd_notice_report)
