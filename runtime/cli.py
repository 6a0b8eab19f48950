"""Command line: python -m assistant serve | chat | train | parse | nlu-eval FILE | db upgrade."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from pathlib import Path

from assistant.config import load_settings


def _logging(verbose: bool = False) -> None:
    # Text for a terminal; LOG_FORMAT=json (production) gives one masked JSON object per line.
    from backend.observability import configure_logging

    configure_logging(verbose)


def cmd_serve(args: argparse.Namespace) -> int:
    import waitress

    from channels.app import create_app
    from runtime.container import build_runtime

    settings = load_settings()
    runtime = build_runtime(settings)
    app = create_app(runtime)
    host, port = args.host or settings.host, args.port or settings.port
    logging.getLogger(__name__).info("serving on http://%s:%d (database %s, sessions %s)", host, port,
                                     settings.database_url.split("@")[-1],
                                     "redis" if settings.redis_url else "in-process")
    stream_port = settings.env.get("MEDIA_STREAM_PORT")
    if stream_port or (settings.config.get("voice") or {}).get("phone_recognizer") == "local":
        from channels.twilio_media import MediaStreamServer

        media = MediaStreamServer(runtime, host, int(stream_port or port + 1))
        media.start_in_thread()
        logging.getLogger(__name__).info("Twilio Media Streams on ws://%s:%d/media-stream", host, media.port)
    if not args.no_worker:  # embedded default: ticket jobs and the SMS outbox in this process
        from runtime.ticket_loop import background_worker

        background_worker(runtime).start_thread()
    # Load (on a fresh clone: assemble, with progress in the log) the recogniser now, and render the
    # fixed prompts, in the background, so the first caller does not wait; text channels serve meanwhile.
    threading.Thread(target=lambda: runtime.voice.pool, name="asr-warmup", daemon=True).start()
    warmup = _VoiceWarmup(runtime)
    try:
        waitress.serve(app, host=host, port=port, threads=args.threads, ident="community-assistant")
    finally:
        warmup.stop()
    return 0


class _VoiceWarmup:
    """Every fixed prompt rendered once in the background (a few minutes on a first start with
    Kokoro, a second later), with a progress bar when a person is watching the terminal. `stop()`
    at shutdown: native synthesis still running while the interpreter exits aborts the process."""

    def __init__(self, runtime) -> None:
        self.runtime = runtime
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._warm, name="tts-warmup", daemon=True)
        self.thread.start()

    def _warm(self) -> None:
        from runtime.cli_voice import warm_prompts

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
    from backend.observability import bind_runtime
    from channels.twilio_media import MediaStreamServer
    from runtime.container import build_runtime

    settings = load_settings()
    runtime = build_runtime(settings)
    bind_runtime(runtime)  # conversation ids in logs match the web workers'; ASR metrics
    if runtime.voice.pool is None:  # load the recogniser before taking calls
        logging.getLogger(__name__).warning("no local recogniser: calls will be handed back to <Gather>")
    warmup = _VoiceWarmup(runtime)
    server = MediaStreamServer(runtime, args.host or settings.host, args.port)
    logging.getLogger(__name__).info("Twilio Media Streams on ws://%s:%d/media-stream", server.host, server.port)
    try:
        server.run_forever()
    finally:
        warmup.stop()
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from channels.terminal import run_chat
    from runtime.container import build_runtime

    runtime = build_runtime(load_settings())
    run_chat(runtime, sys.stdin, sys.stdout, sender=args.sender, phone=args.phone)
    return 0


def cmd_call(args: argparse.Namespace) -> int:
    from channels.terminal import run_call
    from runtime.container import build_runtime

    runtime = build_runtime(load_settings())
    run_call(runtime, sys.stdin, sys.stdout, caller=args.caller)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from assistant.nlu.pipeline import NLU, NLUSettings

    settings = load_settings()
    nlu_settings = NLUSettings.from_config(settings.config, settings.root, settings.model_dir)
    started = time.perf_counter()
    nlu = NLU.train(nlu_settings)
    path = nlu.save()
    print(json.dumps({"model": str(path), "intents": len(nlu.intents),
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
    from assistant.nlu.evaluate import predict_file, print_report, summarise
    from runtime.container import load_nlu, make_clock

    settings = load_settings()
    path = Path(args.file)
    if not path.exists():
        print(f"no such file: {path}", file=sys.stderr)
        return 2
    predictions = predict_file(load_nlu(settings), path, make_clock(settings)())
    print_report(summarise(predictions), predictions, sys.stdout, errors=args.errors)
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    from backend import db

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
    call.set_defaults(func=cmd_call)
    sub.add_parser("train", help="train the NLU model now").set_defaults(func=cmd_train)
    sub.add_parser("parse", help="stdin utterances → JSON lines").set_defaults(func=cmd_parse)
    evaluate = sub.add_parser("nlu-eval", help="evaluate on a Rasa-format test file")
    evaluate.add_argument("file")
    evaluate.add_argument("--errors", type=int, default=0, help="also list the first N errors")
    evaluate.set_defaults(func=cmd_nlu_eval)
    database = sub.add_parser("db", help="database maintenance")
    database.add_argument("action", choices=["upgrade"])
    database.set_defaults(func=cmd_db)
    # Command groups of the other subsystems, each in its own module with register(subparsers).
    from runtime import cli_alerts, cli_jobs, cli_privacy, cli_staff, cli_voice, cli_worker

    for group in (cli_worker, cli_jobs, cli_privacy, cli_alerts, cli_staff, cli_voice):
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _logging(args.verbose)
    return int(args.func(args) or 0)
