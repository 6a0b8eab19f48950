"""`python -m assistant jobs …`: the operator's view of the background queue.

    jobs stats                      counts by job name and state
    jobs dead [--name N]            the dead-letter list (failed for good or out of attempts)
    jobs replay ID… | --all [--name N]   queue dead jobs again once the cause is fixed
    jobs prune [--days 7]           delete finished jobs older than that
"""
from __future__ import annotations

import argparse
from datetime import timedelta


def _admin():
    from assistant.config import load_settings
    from backend.infra.jobs import JobAdmin
    from runtime.container import build_backend, make_cipher, make_clock

    settings = load_settings()
    clock = make_clock(settings)
    backend = build_backend(settings, clock, make_cipher(settings))
    return JobAdmin(backend.session_factory, clock)


def cmd_stats(args: argparse.Namespace) -> int:
    counts = _admin().counts()
    if not counts:
        print("no jobs")
    for name in sorted(counts):
        states = "  ".join(f"{state}={n}" for state, n in sorted(counts[name].items()))
        print(f"{name:<28} {states}")
    return 0


def cmd_dead(args: argparse.Namespace) -> int:
    jobs = _admin().list("failed", args.name, args.limit)
    if not jobs:
        print("dead-letter list is empty")
    for job in jobs:
        print(f"#{job.id} {job.name} attempts={job.attempts} failed_at={job.updated_at:%Y-%m-%d %H:%M:%S} "
              f"payload={job.payload}\n    {(job.last_error or '').splitlines()[0][:300] if job.last_error else ''}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    if not args.ids and not args.all:
        print("name job ids, or --all to replay every dead job")
        return 2
    n = _admin().replay(args.ids, all_failed=args.all, name=args.name)
    print(f"queued again: {n}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    print(f"deleted finished jobs: {_admin().prune(timedelta(days=args.days))}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    jobs = subparsers.add_parser("jobs", help="background queue: stats, dead-letter list, replay, prune")
    sub = jobs.add_subparsers(dest="jobs_command", required=True)
    sub.add_parser("stats", help="counts by job name and state").set_defaults(func=cmd_stats)
    dead = sub.add_parser("dead", help="list dead jobs (failed for good or out of attempts)")
    dead.add_argument("--name")
    dead.add_argument("--limit", type=int, default=50)
    dead.set_defaults(func=cmd_dead)
    replay = sub.add_parser("replay", help="queue dead jobs again")
    replay.add_argument("ids", nargs="*", type=int)
    replay.add_argument("--all", action="store_true")
    replay.add_argument("--name")
    replay.set_defaults(func=cmd_replay)
    prune = sub.add_parser("prune", help="delete finished jobs older than --days")
    prune.add_argument("--days", type=float, default=7.0)
    prune.set_defaults(func=cmd_prune)
