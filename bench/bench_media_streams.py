"""Concurrent phone calls over Twilio Media Streams, with the real recogniser and TTS in the loop.

    python bench/bench_media_streams.py [--calls 1,5,10,20] [--stagger 0] [--clip tests/audio/….wav]
    python bench/bench_media_streams.py --lines 20 --duration 120     # busy lines, many turns each

Busy lines (`--lines`): N phone lines stay busy for `--duration` seconds. Like Twilio, each line
sends a 20 ms frame every 20 ms for the whole call (silence when nobody talks). A caller listens
to each prompt (up to `--listen` seconds, then talks over it), echoes its mark like Twilio does
when playback ends, thinks 1–3 s, says the next real recording (the 16 kHz clips in tests/audio,
1.4–3.9 s), and so on; a call the assistant ends or hands over is redialled as a new call. Every
turn is measured from the caller's last speech frame to the first reply frame.

Each simulated call connects to our Media Streams server on loopback, waits for the greeting,
then streams a real recording as 8 kHz μ-law in real time (20 ms frames every 20 ms) followed by
silence, and measures the turn: from the last speech frame sent to the first reply audio frame
received (so it includes end-of-utterance detection, queueing for the recogniser, decoding, NLU,
dialogue and TTS). Prints one JSON line per concurrency level. Bounded: each call sends one
utterance; everything stops by itself.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from assistant.config import load_settings  # noqa: E402
from assistant.voice.audio import mulaw_encode, read_wav, resample  # noqa: E402
from channels.twilio_media import FRAME_BYTES, MediaStreamServer  # noqa: E402
from runtime.cli_voice import warm_prompts  # noqa: E402
from runtime.container import build_runtime  # noqa: E402

SILENCE = bytes([0xFF]) * FRAME_BYTES


def frames(path: Path) -> list[bytes]:
    audio = read_wav(path)
    data = mulaw_encode(resample(audio.samples, audio.rate, 8000))
    return [data[i : i + FRAME_BYTES] for i in range(0, len(data), FRAME_BYTES)]


def start_event(stream_sid: str, call_sid: str, caller: str) -> dict:
    return {"event": "start", "streamSid": stream_sid,
            "start": {"streamSid": stream_sid, "callSid": call_sid, "customParameters": {"caller": caller}}}


def media_event(stream_sid: str, frame: bytes) -> dict:
    return {"event": "media", "streamSid": stream_sid,
            "media": {"track": "inbound", "payload": base64.b64encode(frame).decode()}}


async def one_call(port: int, index: int, speech: list[bytes], delay: float = 0.0) -> float:
    import websockets

    await asyncio.sleep(delay)
    stream_sid = f"MZ{index:032x}"
    async with websockets.connect(f"ws://127.0.0.1:{port}/media-stream") as socket:
        async def send(event: dict) -> None:
            await socket.send(json.dumps(event))

        async def until(kind: str) -> dict:
            while True:
                event = json.loads(await asyncio.wait_for(socket.recv(), 300))
                if event["event"] == kind:
                    return event

        await send(start_event(stream_sid, f"CA{index:032x}", "+8613800138000"))
        mark = await until("mark")
        await send({"event": "mark", "streamSid": stream_sid, "mark": mark["mark"]})
        for frame in speech:
            await send(media_event(stream_sid, frame))
            await asyncio.sleep(0.02)
        spoke_at = time.perf_counter()
        silence = asyncio.create_task(_silence(send, stream_sid))
        await until("media")
        turn = time.perf_counter() - spoke_at
        silence.cancel()
        return turn


async def _silence(send, stream_sid: str) -> None:
    while True:
        await send(media_event(stream_sid, SILENCE))
        await asyncio.sleep(0.02)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def level(port: int, calls: int, speech: list[bytes], stagger: float) -> list[float]:
    """All calls at once (stagger 0: everyone stops talking at the same moment, the worst case), or
    spread evenly over `stagger` seconds (callers talk at different times, as on a real line)."""
    delays = [stagger * i / calls for i in range(calls)]
    return list(await asyncio.gather(*(one_call(port, 1000 * calls + i, speech, delays[i]) for i in range(calls))))


class BusyLine:
    """One phone line for the whole run: a sender paced at 50 frames/s and a reader of our replies."""

    def __init__(self, port: int, index: int, clips: list[list[bytes]], listen: float, seed: int) -> None:
        import random

        self.port, self.index, self.clips, self.listen = port, index, clips, listen
        self.rng = random.Random(seed)
        self.turns: list[float] = []
        self.calls = 0
        self.errors = 0

    async def run(self, until: float, delay: float) -> None:
        await asyncio.sleep(delay)
        while time.perf_counter() < until:
            self.calls += 1
            try:
                await self.call(until)
            except Exception:  # noqa: BLE001 — a failed call counts, the line redials
                self.errors += 1
                await asyncio.sleep(1)

    async def call(self, until: float) -> None:
        import websockets

        stream_sid = f"MZ{self.index:08x}{self.calls:024x}"
        async with websockets.connect(f"ws://127.0.0.1:{self.port}/media-stream") as socket:
            pending: list[bytes] = []  # speech frames still to send
            spoke_at: list[float | None] = [None]

            async def send(event: dict) -> None:
                await socket.send(json.dumps(event))

            async def pace() -> None:  # Twilio's side: a frame every 20 ms, speech or silence
                tick = time.perf_counter()
                while True:
                    frame = pending.pop(0) if pending else SILENCE
                    await send(media_event(stream_sid, frame))
                    if frame is not SILENCE and not pending:
                        spoke_at[0] = time.perf_counter()
                    tick += 0.02
                    await asyncio.sleep(max(0.0, tick - time.perf_counter()))

            await send(start_event(stream_sid, f"CA{self.index:08x}{self.calls:024x}", f"+86138{self.index:08d}"))
            sender = asyncio.create_task(pace())
            try:
                prompt_frames, first_frame_at = 0, None
                async for raw in socket:
                    event = json.loads(raw)
                    if event["event"] == "media":
                        if spoke_at[0] is not None:
                            self.turns.append(time.perf_counter() - spoke_at[0])
                            spoke_at[0] = None
                        first_frame_at = first_frame_at or time.perf_counter()
                        prompt_frames += 1
                    elif event["event"] == "mark":
                        # Playback would end after the prompt's length; seniors often wait for all of
                        # it, but past `listen` seconds this caller talks over it (barge-in).
                        playing = min(prompt_frames * 0.02, self.listen)
                        await asyncio.sleep(max(0.0, playing - (time.perf_counter() - (first_frame_at or 0))))
                        await send({"event": "mark", "streamSid": stream_sid, "mark": event["mark"]})
                        prompt_frames, first_frame_at = 0, None
                        if time.perf_counter() >= until:
                            return
                        await asyncio.sleep(self.rng.uniform(1.0, 3.0))
                        pending.extend(self.rng.choice(self.clips))
            finally:
                sender.cancel()


async def busy(port: int, lines: int, duration: float, clips: list[list[bytes]], listen: float) -> list[BusyLine]:
    until = time.perf_counter() + duration
    workers = [BusyLine(port, i, clips, listen, seed=i) for i in range(lines)]
    # Lines pick up over the first 10 s, as calls do, not in one instant.
    await asyncio.gather(*(w.run(until, 10.0 * i / lines) for i, w in enumerate(workers)))
    return workers


def run_busy(port: int, args: argparse.Namespace, services) -> None:
    from assistant.voice.recognizer import add_decode_observer

    decodes: list[float] = []
    add_decode_observer(lambda t: decodes.append(t.decode_seconds))
    clip_dir = Path(args.clips)
    clips = [frames(p) for p in sorted(clip_dir.glob("*.wav")) if "_8k" not in p.name]
    load_before = os.getloadavg()[0]
    cpu_before = time.process_time()
    started = time.perf_counter()
    lines = asyncio.run(busy(port, args.lines, args.duration, clips, args.listen))
    elapsed = time.perf_counter() - started
    turns = [t for line in lines for t in line.turns]
    print(json.dumps({
        "bench": "media_stream_busy_lines", "lines": args.lines, "duration_s": round(elapsed, 1),
        "turns": len(turns), "utterances_per_s": round(len(turns) / elapsed, 2),
        "turn_p50_s": round(statistics.median(turns), 3), "turn_p95_s": round(pct(turns, 95), 3),
        "turn_p99_s": round(pct(turns, 99), 3), "turn_max_s": round(max(turns), 3),
        "decodes": len(decodes), "decode_p50_s": round(statistics.median(decodes), 3),
        "decode_p95_s": round(pct(decodes, 95), 3), "calls": sum(line.calls for line in lines),
        "failed_calls": sum(line.errors for line in lines),
        "process_cpu_s_per_s_incl_callers": round((time.process_time() - cpu_before) / elapsed, 2),
        "decode_workers": services.config.decode_workers, "cpu_threads": services.config.cpu_threads,
        "fast_decoder": services.config.fast_decoder, "hurried_decodes": services.pool.hurried,
        "load_before": round(load_before, 2), "machine": f"{platform.machine()} {os.cpu_count()} cores",
    }), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", default="1,5,10,20")
    parser.add_argument("--stagger", type=float, default=0.0, help="spread call starts over this many seconds")
    parser.add_argument("--clip", default=str(ROOT / "tests" / "audio" / "aishell1_BAC009S0002W0123.wav"))
    parser.add_argument("--lines", type=int, default=0, help="busy-lines mode: this many lines, many turns each")
    parser.add_argument("--duration", type=float, default=120.0, help="busy-lines mode: seconds")
    parser.add_argument("--listen", type=float, default=4.0, help="busy-lines mode: longest a caller listens")
    parser.add_argument("--clips", default=str(ROOT / "tests" / "audio"), help="busy-lines mode: WAV folder")
    parser.add_argument("--workers", help="decode workers (voice.workers), e.g. 1 to compare")
    parser.add_argument("--threads", help="threads per decode (voice.cpu_threads)")
    parser.add_argument("--decoder", choices=("never", "always", "when_busy"),
                        help="voice.fast_decoder (default: config.yml's); always = window cut for every decode")
    parser.add_argument("--fast-decoder", action="store_true", help="same as --decoder always")
    parser.add_argument("--tts-cache", help="keep the rendered prompts here between runs (DATA_DIR/tts)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-media-"))
    if args.tts_cache:
        Path(args.tts_cache).mkdir(parents=True, exist_ok=True)
        (tmp / "tts").symlink_to(Path(args.tts_cache).resolve())
        # The cache's file names are keyed by the index key (runtime.container.tts_cache_key): keep
        # the development keys with the cache, or every run would name (and render) everything anew.
        kept_keys = Path(args.tts_cache) / "bench-keys.json"
        if kept_keys.exists():
            shutil.copyfile(kept_keys, tmp / "keys.json")
    env = {**os.environ, "DATA_DIR": str(tmp), "DATABASE_URL": f"sqlite:///{tmp / 'bench.db'}"}
    settings = load_settings(env)
    voice = settings.config.setdefault("voice", {})
    if args.workers:
        voice["workers"] = int(args.workers)
    if args.threads:
        voice["cpu_threads"] = int(args.threads)
    if args.decoder or args.fast_decoder:
        voice["fast_decoder"] = "always" if args.fast_decoder else args.decoder
    runtime = build_runtime(settings)
    if args.tts_cache and not kept_keys.exists() and (tmp / "keys.json").exists():
        shutil.copyfile(tmp / "keys.json", kept_keys)
    services = runtime.voice
    assert services.pool is not None, services.unavailable
    # As a started server: the fixed prompts rendered before the first call (serve does it at start).
    started = time.perf_counter()
    made = warm_prompts(settings, services.tts, None)
    print(json.dumps({"tts": services.tts.name, "warm_new_phrases": made,
                      "warm_s": round(time.perf_counter() - started, 1)}), flush=True)
    server = MediaStreamServer(runtime, "127.0.0.1", 0)
    server.start_in_thread()
    speech = frames(Path(args.clip))
    try:
        if args.lines:
            run_busy(server.port, args, services)
            return
        for calls in (int(c) for c in args.calls.split(",")):
            turns = asyncio.run(level(server.port, calls, speech, args.stagger))
            print(json.dumps({
                "bench": "media_stream_turn", "concurrent_calls": calls, "utterance_s": round(len(speech) * 0.02, 2), "stagger_s": args.stagger,
                "p50_s": round(statistics.median(turns), 3), "p95_s": round(pct(turns, 95), 3),
                "max_s": round(max(turns), 3), "decode_workers": services.config.decode_workers,
                "machine": f"{platform.machine()} {os.cpu_count()} cores",
            }), flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
