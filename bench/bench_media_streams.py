"""Concurrent phone calls over Twilio Media Streams, with the real recogniser and TTS in the loop.

    python bench/bench_media_streams.py [--calls 1,5,10,20] [--stagger 0] [--clip tests/audio/….wav]

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
from runtime.container import build_runtime  # noqa: E402
from runtime.voice_services import voice_services  # noqa: E402

SILENCE = bytes([0xFF]) * FRAME_BYTES


def frames(path: Path) -> list[bytes]:
    audio = read_wav(path)
    data = mulaw_encode(resample(audio.samples, audio.rate, 8000))
    return [data[i : i + FRAME_BYTES] for i in range(0, len(data), FRAME_BYTES)]


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

        await send({"event": "start", "streamSid": stream_sid,
                    "start": {"streamSid": stream_sid, "callSid": f"CA{index:032x}",
                              "customParameters": {"caller": "+8613800138000"}}})
        mark = await until("mark")
        await send({"event": "mark", "streamSid": stream_sid, "mark": mark["mark"]})
        for frame in speech:
            await send({"event": "media", "streamSid": stream_sid,
                        "media": {"track": "inbound", "payload": base64.b64encode(frame).decode()}})
            await asyncio.sleep(0.02)
        spoke_at = time.perf_counter()
        silence = asyncio.create_task(_silence(send, stream_sid))
        await until("media")
        turn = time.perf_counter() - spoke_at
        silence.cancel()
        return turn


async def _silence(send, stream_sid: str) -> None:
    while True:
        await send({"event": "media", "streamSid": stream_sid,
                    "media": {"track": "inbound", "payload": base64.b64encode(SILENCE).decode()}})
        await asyncio.sleep(0.02)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def level(port: int, calls: int, speech: list[bytes], stagger: float) -> list[float]:
    """All calls at once (stagger 0: everyone stops talking at the same moment, the worst case), or
    spread evenly over `stagger` seconds (callers talk at different times, as on a real line)."""
    delays = [stagger * i / calls for i in range(calls)]
    return list(await asyncio.gather(*(one_call(port, 1000 * calls + i, speech, delays[i]) for i in range(calls))))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", default="1,5,10,20")
    parser.add_argument("--stagger", type=float, default=0.0, help="spread call starts over this many seconds")
    parser.add_argument("--clip", default=str(ROOT / "tests" / "audio" / "aishell1_BAC009S0002W0123.wav"))
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-media-"))
    env = {**os.environ, "DATA_DIR": str(tmp), "DATABASE_URL": f"sqlite:///{tmp / 'bench.db'}"}
    runtime = build_runtime(load_settings(env))
    services = voice_services(runtime)
    assert services.pool is not None, services.unavailable
    services.speech_file("您好，这里是社区服务热线。")  # load the engines before timing
    server = MediaStreamServer(runtime, "127.0.0.1", 0)
    server.start_in_thread()
    speech = frames(Path(args.clip))
    try:
        for calls in (int(c) for c in args.calls.split(",")):
            turns = asyncio.run(level(server.port, calls, speech, args.stagger))
            print(json.dumps({
                "bench": "media_stream_turn", "concurrent_calls": calls, "utterance_s": round(len(speech) * 0.02, 2), "stagger_s": args.stagger,
                "p50_s": round(statistics.median(turns), 3), "p95_s": round(pct(turns, 95), 3),
                "max_s": round(max(turns), 3), "decode_workers": services.config.workers,
                "machine": f"{platform.machine()} {os.cpu_count()} cores",
            }), flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
