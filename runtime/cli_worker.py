"""`python -m assistant worker`: the background job loop as its own process.

Runs the same loop as the thread `serve` starts on the embedded default: ticket jobs (photos,
OCR, categorise, route) and the SMS outbox drain. Several can run at once against one
database; a killed one loses nothing (leases expire and another worker takes its work again).
Also runnable as `python -m runtime.cli_worker` until the CLI lists it.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

log = logging.getLogger(__name__)


def cmd_worker(args: argparse.Namespace) -> int:
    from assistant.config import load_settings
    from runtime.container import build_alert_desk, build_backend, build_outreach, make_cipher, make_clock
    from runtime.ticket_loop import build_ticket_loop, worker_handlers

    settings = load_settings()
    clock = make_clock(settings)
    cipher = make_cipher(settings)
    backend = build_backend(settings, clock, cipher)  # also runs migrations to head
    loop = build_ticket_loop(settings, backend.session_factory, cipher, clock)
    alerts = build_alert_desk(settings, backend.session_factory, cipher, clock, loop.outbox)
    outreach = build_outreach(settings, backend.session_factory, clock, alerts, loop.outbox, backend.create_handoff)
    outreach.arm()
    handlers = worker_handlers(settings, backend.session_factory, clock,
                               {**alerts.job_handlers(), **outreach.job_handlers()})
    worker = loop.worker(extra_handlers=handlers)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if args.once:
        done = worker.run_until_idle(max_ticks=args.max_ticks)
        print(f"worked on {done} items")
        return 0
    log.info("worker running (Ctrl-C to stop)")
    worker.run_forever(stop, idle_sleep=args.idle_sleep)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    worker = subparsers.add_parser("worker", help="run background jobs (photos, routing, SMS outbox)")
    worker.add_argument("--once", action="store_true", help="work until idle, then exit")
    worker.add_argument("--max-ticks", type=int, default=1000)
    worker.add_argument("--idle-sleep", type=float, default=0.5, help="seconds to wait when idle")
    worker.set_defaults(func=cmd_worker)


def main(argv: list[str] | None = None) -> int:
    from backend.infra.observability import configure_logging

    parser = argparse.ArgumentParser(prog="python -m runtime.cli_worker")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["worker", *(sys.argv[1:] if argv is None else argv)])
    configure_logging()
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
