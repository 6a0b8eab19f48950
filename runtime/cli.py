"""Command line: python -m assistant serve | chat | train | parse | nlu-eval FILE [--half] | db upgrade."""
from __future__ import annotations

import argparse
import errno
import gc
import json
import logging
import socket
import sys
import threading
import time
from pathlib import Path

from assistant.config import load_settings

# Commands a person talks to in the terminal: their log lines (to stderr) would interleave with the
# conversation, so only warnings and errors are shown unless --verbose.
INTERACTIVE_COMMANDS = frozenset({"chat", "call", "staff"})


def _logging(verbose: bool = False, interactive: bool = False) -> None:
    # Text for a terminal; LOG_FORMAT=json (production) gives one masked JSON object per line.
    from backend.infra.observability import configure_logging

    configure_logging(verbose)
    if not verbose:
        # Alembic says 7–9 INFO lines at every start (plugins, "Context impl", each revision).
        logging.getLogger("alembic").setLevel(logging.WARNING)
        if interactive:
            logging.getLogger().setLevel(logging.WARNING)


def _free_port_near(host: str, port: int) -> int | None:
    for candidate in range(port + 10, port + 110):  # "8000 busy → try 8010", as people pick ports
        if candidate < 65536 and _bind_error(host, candidate) is None:
            return candidate
    return None


def _bind_error(host: str, port: int) -> OSError | None:
    """Whether this process could listen on host:port now (bound and closed again at once)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        return exc
    for family, kind, proto, _name, address in infos[:1]:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as waitress binds
            try:
                probe.bind(address)
            except OSError as exc:
                return exc
    return None


def _port_problem(host: str, port: int, exc: OSError, option: str = "--port") -> str:
    """One line, Chinese then English, with what to do instead of a traceback. `option` is what
    chooses the port (`--port`, or the MEDIA_STREAM_PORT variable)."""
    other = _free_port_near(host, port) if port else None
    hint = f"try {option}{' ' if option.startswith('-') else '='}{other}" if other else f"try another {option}"
    if exc.errno == errno.EADDRINUSE:
        return f"端口 {port} 已被占用 (port {port} in use on {host}): {hint}"
    if exc.errno == errno.EACCES:
        return f"没有权限使用端口 {port} (permission denied for port {port}): {hint}"
    if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
        return f"无法在地址 {host} 上监听 (cannot listen on {host}): try --host 127.0.0.1"
    return f"无法监听 {host}:{port} (cannot listen: {exc.strerror or exc}): {hint}"


def cmd_serve(args: argparse.Namespace) -> int:
    settings = load_settings()
    host, port = args.host or settings.host, args.port or settings.port
    problem = _bind_error(host, port)  # before anything is loaded: a busy port is said at once
    if problem is not None:
        print(_port_problem(host, port, problem), file=sys.stderr)
        return 2
    stream_port = _media_stream_port(settings, port)
    problem = _bind_error(host, stream_port) if stream_port else None
    if stream_port and problem is not None:
        print(_port_problem(host, stream_port, problem, "MEDIA_STREAM_PORT"), file=sys.stderr)
        return 2
    gc.disable()  # until the libraries are imported and the model loaded (StartupGC)
    from runtime.container import StartupGC, build_runtime, load_nlu_in_background

    startup = StartupGC(parts=2)
    # The NLU model loads in the background, from now on, while the web layer is imported: the
    # port answers as soon as it can, /readyz is 503 until the model is in memory, and a turn that
    # comes meanwhile waits for it.
    nlu = load_nlu_in_background(settings, when_done=startup.done)
    import waitress

    from channels.app import create_app

    runtime = build_runtime(settings, nlu=nlu)
    app = create_app(runtime)
    try:
        server = waitress.create_server(app, host=host, port=port, threads=args.threads,
                                        ident="community-assistant")
    except OSError as exc:  # taken between the check and now
        print(_port_problem(host, port, exc), file=sys.stderr)
        return 2
    finally:
        startup.done()
    logging.getLogger(__name__).info("serving on http://%s:%d (database %s, sessions %s)", host, port,
                                     settings.database_url.split("@")[-1],
                                     "redis" if settings.redis_url else "in-process")
    if stream_port:
        from channels.twilio_media import MediaStreamServer

        media = MediaStreamServer(runtime, host, stream_port)
        media.start_in_thread()
        logging.getLogger(__name__).info("Twilio Media Streams on ws://%s:%d/media-stream", host, media.port)
    if not args.no_worker:  # embedded default: ticket jobs and the SMS outbox in this process
        from runtime.ticket_loop import background_worker

        background_worker(runtime).start_thread()
    # Load (on a fresh clone: assemble, with progress in the log) the recogniser now, and render the
    # fixed prompts, in the background, so the first caller does not wait; text channels serve meanwhile.
    # Both start once the NLU model is in memory: every turn needs that first, and loading the
    # voices at the same time would hold it back for seconds (the GIL, two cores).
    threading.Thread(target=lambda: (_nlu_loaded(nlu), runtime.voice.pool), name="asr-warmup", daemon=True).start()
    warmup = _VoiceWarmup(runtime, after=lambda: _nlu_loaded(nlu))
    try:
        server.print_listen("Serving on http://{}:{}")
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        warmup.stop()
    return 0


def _media_stream_port(settings, port: int) -> int | None:
    """Where `serve` runs Media Streams beside the web port, or None when calls do not use them."""
    configured = settings.env.get("MEDIA_STREAM_PORT")
    if configured:
        return int(configured)
    return port + 1 if (settings.config.get("voice") or {}).get("phone_recognizer") == "local" else None


def _nlu_loaded(nlu, timeout: float = 120.0) -> None:
    """Waits until the background NLU load is over (loaded or failed: the voices load either way)."""
    try:
        nlu.wait(timeout)
    except Exception:  # reported by the loader and /readyz
        pass


class _VoiceWarmup:
    """Every fixed prompt rendered once in the background (a few minutes on a first start with
    Kokoro, a second later), with a progress bar when a person is watching the terminal. `stop()`
    at shutdown: native synthesis still running while the interpreter exits aborts the process."""

    def __init__(self, runtime, after=None) -> None:
        self.runtime = runtime
        self.after = after  # waited for first (serve: the NLU model being loaded)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._warm, name="tts-warmup", daemon=True)
        self.thread.start()

    def _warm(self) -> None:
        from runtime.cli_voice import warm_prompts

        if self.after is not None:
            self.after()
        if self.stopping.is_set():
            return
        try:
            voices = self.runtime.voice.tts
            if voices.local:
                warm_prompts(self.runtime.settings, voices, sys.stderr if sys.stderr.isatty() else None,
                             self.stopping)
        except Exception:  # prompts are then made on first use: slower, never silent
            logging.getLogger(__name__).warning("could not render the prompts ahead of time", exc_info=True)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(30)
        self.runtime.voice.close()


def cmd_streams(args: argparse.Namespace) -> int:
    """Twilio Media Streams (local speech recognition on calls) as their own asyncio process."""
    from backend.infra.observability import bind_runtime
    from channels.twilio_media import MediaStreamServer
    from runtime.container import build_runtime

    settings = load_settings()
    host = args.host or settings.host
    problem = _bind_error(host, args.port)  # one line, not a traceback after the model has loaded
    if problem is not None:
        print(_port_problem(host, args.port, problem), file=sys.stderr)
        return 2
    runtime = build_runtime(settings)
    bind_runtime(runtime)  # conversation ids in logs match the web workers'; ASR metrics
    if runtime.voice.pool is None:  # load the recogniser before taking calls
        logging.getLogger(__name__).warning("no local recogniser: calls will be handed back to <Gather>")
    warmup = _VoiceWarmup(runtime)
    server = MediaStreamServer(runtime, host, args.port)
    logging.getLogger(__name__).info("Twilio Media Streams on ws://%s:%d/media-stream", server.host, server.port)
    try:
        server.run_forever()
    finally:
        warmup.stop()
    return 0


def _say_if_training(settings) -> None:
    """Interactive commands show no INFO lines: on a fresh clone say why the first start waits."""
    from assistant.nlu.pipeline import NLU, NLUSettings

    if NLU.cached_model(NLUSettings.from_config(settings.config, settings.root, settings.model_dir)) is None:
        print("第一次使用，正在训练语言模型，约需15秒…… (training the NLU model once, ~15 s)", file=sys.stderr,
              flush=True)


def cmd_chat(args: argparse.Namespace) -> int:
    from channels.terminal import run_chat
    from runtime.container import build_runtime

    settings = load_settings()
    _say_if_training(settings)
    runtime = build_runtime(settings)
    run_chat(runtime, sys.stdin, sys.stdout, sender=args.sender, phone=args.phone)
    return 0


def cmd_call(args: argparse.Namespace) -> int:
    from channels.terminal import run_call, run_checkin_call
    from runtime.container import build_runtime

    settings = load_settings()
    _say_if_training(settings)
    runtime = build_runtime(settings)
    if args.checkin:
        try:
            run_checkin_call(runtime, args.checkin, sys.stdin, sys.stdout, language=args.language)
        except ValueError as exc:
            print(f"call --checkin: {exc}", file=sys.stderr)
            return 2
        return 0
    run_call(runtime, sys.stdin, sys.stdout, caller=args.caller, language=args.language)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Deploys run this once at build time (`train --if-missing`): web workers then only load the
    model, in about a second, and never train it (each would take ~15 s, all at once)."""
    from assistant.nlu.pipeline import NLU, NLUSettings

    settings = load_settings()
    nlu_settings = NLUSettings.from_config(settings.config, settings.root, settings.model_dir)
    cached = NLU.cached_model(nlu_settings)
    if args.if_missing and cached is not None:
        print(json.dumps({"model": str(cached), "trained": False}, ensure_ascii=False))
        return 0
    started = time.perf_counter()
    nlu = NLU.train(nlu_settings)
    path = nlu.save()
    print(json.dumps({"model": str(path), "trained": True, "intents": len(nlu.intents),
                      "seconds": round(time.perf_counter() - started, 2)}, ensure_ascii=False))
    return 0


def cmd_parse(args: argparse.Namespace) -> int:
    from runtime.container import load_nlu, make_clock

    settings = load_settings()
    nlu, clock = load_nlu(settings), make_clock(settings)
    for line in sys.stdin:
        text = line.rstrip("\n")
        if not text.strip():
            continue
        print(json.dumps(nlu.parse(text, clock()).to_rasa(), ensure_ascii=False), flush=True)
    return 0


def cmd_nlu_eval(args: argparse.Namespace) -> int:
    from assistant.nlu.evaluate import (
        is_report_file,
        predict_file,
        predict_reports,
        print_report,
        print_report_summary,
        summarise,
        summarise_reports,
    )
    from assistant.nlu.pipeline import REPORT_INTENTS
    from runtime.container import load_nlu, make_clock

    settings = load_settings()
    path = Path(args.file)
    if not path.exists():
        print(f"no such file: {path}", file=sys.stderr)
        return 2
    nlu, now = load_nlu(settings), make_clock(settings)()
    if is_report_file(path):
        reports = predict_reports(nlu, path, now, args.half)
        print_report_summary(summarise_reports(reports, REPORT_INTENTS), reports, sys.stdout, errors=args.errors)
        return 0
    predictions = predict_file(nlu, path, now, args.half)
    print_report(summarise(predictions), predictions, sys.stdout, errors=args.errors)
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    from backend.infra import db

    settings = load_settings()
    db.upgrade(settings.database_url)
    print(f"database at head: {settings.database_url.split('@')[-1]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m assistant", description="社区适老化语音短信助手")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP server with all channels")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--threads", type=int, default=8)
    serve.add_argument("--no-worker", action="store_true",
                       help="do not run background jobs here (production: `worker` processes)")
    serve.set_defaults(func=cmd_serve)
    streams = sub.add_parser("streams", help="run the Twilio Media Streams server alone (production)")
    streams.add_argument("--host")
    streams.add_argument("--port", type=int, default=8001)
    streams.set_defaults(func=cmd_streams)
    chat = sub.add_parser("chat", help="talk to the assistant in the terminal")
    chat.add_argument("--sender", default="terminal")
    chat.add_argument("--phone", help="pretend the channel knows this caller number")
    chat.set_defaults(func=cmd_chat)
    call = sub.add_parser("call", help="simulate a phone call in the terminal (staff training)")
    call.add_argument("--caller", default="13800138000", help="caller ID the line would see")
    call.add_argument("--checkin", metavar="HOUSEHOLD", help="play today's outbound 平安电话 to this household")
    call.add_argument("--language", choices=["zh", "yue"], help="speak Mandarin (zh) or Cantonese (yue)")
    call.set_defaults(func=cmd_call)
    train = sub.add_parser("train", help="train the NLU model now (deploys: once at build time)")
    train.add_argument("--if-missing", action="store_true",
                       help="keep the model already trained on exactly this data and config")
    train.set_defaults(func=cmd_train)
    sub.add_parser("parse", help="stdin utterances → JSON lines").set_defaults(func=cmd_parse)
    evaluate = sub.add_parser("nlu-eval", help="evaluate on a Rasa-format test file")
    evaluate.add_argument("file")
    evaluate.add_argument("--errors", type=int, default=0, help="also list the first N errors")
    evaluate.add_argument("--half", choices=["all", "tune", "confirm"], default="all",
                          help="evaluate one fixed half of the file (tune on one, confirm on the other)")
    evaluate.set_defaults(func=cmd_nlu_eval)
    database = sub.add_parser("db", help="database maintenance")
    database.add_argument("action", choices=["upgrade"])
    database.set_defaults(func=cmd_db)
    # Command groups of the other subsystems, each in its own module with register(subparsers).
    from runtime import cli_alerts, cli_jobs, cli_outreach, cli_privacy, cli_staff, cli_voice, cli_worker

    for group in (cli_worker, cli_jobs, cli_privacy, cli_alerts, cli_staff, cli_voice, cli_outreach):
        group.register(sub)
    return parser


def _private_files() -> None:
    # Everything this process creates (store, -wal/-shm, photos, caches, logs) is owner-only,
    # whatever the shell's umask: personal data at rest must not be readable by other accounts.
    from backend.infra.private_files import private_umask

    private_umask()


def main(argv: list[str] | None = None) -> int:
    _private_files()
    args = build_parser().parse_args(argv)
    _logging(args.verbose, interactive=args.command in INTERACTIVE_COMMANDS)
    return int(args.func(args) or 0)
