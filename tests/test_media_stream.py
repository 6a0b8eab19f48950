"""Twilio Media Streams: a real recording streamed as 8 kHz μ-law over a real WebSocket, heard by
the real default recogniser (faster-whisper), answered with real synthesised audio: espeak-ng where
the test is about the call (it speaks in milliseconds, so timings measure the call, not the voice),
Kokoro (the configured voice) where it is about speaking while synthesising."""
from __future__ import annotations

import asyncio
import base64
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from assistant.voice.audio import mulaw_encode, read_wav, resample
from channels.twilio_media import FRAME_BYTES, MediaStreamServer, MulawFramer, speech_frames

AUDIO = Path(__file__).resolve().parent / "audio"
CLIP = AUDIO / "aishell1_BAC009S0002W0123.wav"  # 也成为地方政府的眼中钉 (AISHELL-1, Apache-2.0)
CALL = "CA" + "c" * 32
SILENCE = bytes([0xFF]) * FRAME_BYTES  # μ-law digital silence


def _phone_frames(path: Path) -> list[bytes]:
    audio = read_wav(path)
    data = mulaw_encode(resample(audio.samples, audio.rate, 8000))
    return [data[i : i + FRAME_BYTES] for i in range(0, len(data), FRAME_BYTES)]


def _serve(runtime, engine: str):
    if shutil.which("espeak-ng") is None:
        from conftest import _unavailable

        _unavailable("espeak-ng not installed (apt-get install espeak-ng)")
    voice = runtime.voice
    tts = {k: v for k, v in voice.config.tts.items() if k != "voice" or engine == "kokoro"}
    voice.config = replace(voice.config, tts={**tts, "engine": engine})  # before the voices are built
    if engine == "kokoro" and voice.tts.name != "kokoro":
        from conftest import _unavailable

        _unavailable(f"Kokoro unavailable: {voice.tts.fallback_reason}")
    server = MediaStreamServer(runtime, "127.0.0.1", 0)
    server.start_in_thread()
    return server


@pytest.fixture
def stream_server(runtime):
    server = _serve(runtime, "espeak")
    yield server
    server.stop()


@pytest.fixture
def kokoro_server(runtime):
    server = _serve(runtime, "kokoro")
    yield server
    server.stop()


class TwilioStream:
    """Plays Twilio's side of the socket: start, media frames, marks echoed when playback ends."""

    def __init__(self, socket) -> None:
        self.socket = socket
        self.received: list[dict] = []

    async def send(self, event: dict) -> None:
        await self.socket.send(json.dumps(event))

    async def start(self) -> None:
        await self.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await self.send({"event": "start", "sequenceNumber": "1", "streamSid": "MZ" + "d" * 32,
                         "start": {"streamSid": "MZ" + "d" * 32, "callSid": CALL, "accountSid": "AC" + "1" * 32,
                                   "tracks": ["inbound"], "customParameters": {"caller": "+8613800138000"},
                                   "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})

    async def until(self, kind: str, timeout: float = 60.0) -> dict:
        while True:
            event = json.loads(await asyncio.wait_for(self.socket.recv(), timeout))
            self.received.append(event)
            if event["event"] == kind:
                return event

    async def media(self, frames: list[bytes]) -> None:
        for i, frame in enumerate(frames):
            await self.send({"event": "media", "streamSid": "MZ" + "d" * 32,
                             "media": {"track": "inbound", "chunk": str(i), "payload": base64.b64encode(frame).decode()}})

    def audio_bytes(self) -> int:
        return sum(len(base64.b64decode(e["media"]["payload"])) for e in self.received if e["event"] == "media")


def _run(coroutine):
    return asyncio.run(coroutine)


def test_speech_frames_are_20ms_mulaw(runtime):
    path = runtime.voice.speech_file("您好")
    frames = speech_frames(path.read_bytes())
    assert frames and all(len(f) == FRAME_BYTES for f in frames)


def test_frames_are_exact_across_chunks_and_only_the_last_is_padded():
    rng = np.random.default_rng(7)
    chunks = [rng.uniform(-0.5, 0.5, n).astype(np.float32) for n in (1, 159, 161, 333, 800, 97)]
    framer = MulawFramer()
    frames = [f for chunk in chunks for f in framer.feed(chunk, 8000)] + framer.flush()
    whole = mulaw_encode(np.concatenate(chunks))
    assert all(len(f) == FRAME_BYTES for f in frames)
    assert b"".join(frames) == whole + SILENCE[: -len(whole) % FRAME_BYTES]  # nothing lost or moved
    assert MulawFramer().flush() == []


def test_real_recording_is_heard_and_answered_with_audio(stream_server, runtime):
    import websockets

    async def call() -> TwilioStream:
        async with websockets.connect(f"ws://127.0.0.1:{stream_server.port}/media-stream") as socket:
            twilio = TwilioStream(socket)
            await twilio.start()
            mark = await twilio.until("mark")  # the greeting and menu were played
            assert twilio.audio_bytes() > 8000  # more than a second of speech
            await twilio.send({"event": "mark", "streamSid": "MZ" + "d" * 32, "mark": mark["mark"]})
            before = twilio.audio_bytes()
            await twilio.media(_phone_frames(CLIP) + [SILENCE] * 75)  # the caller speaks, then 1.5 s quiet
            await twilio.until("mark", timeout=120)
            assert twilio.audio_bytes() > before  # the assistant answered with speech
            return twilio

    _run(call())
    record = runtime.calls.get(CALL)
    heard = [text for role, text in record["transcript"] if role == "caller"]
    assert any("政府" in text or "地方" in text for text in heard), heard


def test_caller_talking_over_a_prompt_stops_it(stream_server):
    import websockets

    async def call() -> None:
        async with websockets.connect(f"ws://127.0.0.1:{stream_server.port}/media-stream") as socket:
            twilio = TwilioStream(socket)
            await twilio.start()
            await twilio.until("mark")  # prompt sent; we do not echo the mark: it is still playing
            await twilio.media(_phone_frames(CLIP)[:60])
            await twilio.until("clear", timeout=30)

    _run(call())


def test_zero_key_leaves_the_stream_for_a_person(stream_server, runtime):
    import websockets

    async def call() -> None:
        async with websockets.connect(f"ws://127.0.0.1:{stream_server.port}/media-stream") as socket:
            twilio = TwilioStream(socket)
            await twilio.start()
            mark = await twilio.until("mark")
            await twilio.send({"event": "mark", "streamSid": "MZ" + "d" * 32, "mark": mark["mark"]})
            await twilio.send({"event": "dtmf", "streamSid": "MZ" + "d" * 32, "dtmf": {"track": "inbound_track",
                                                                                      "digit": "0"}})
            last = await twilio.until("mark")
            await twilio.send({"event": "mark", "streamSid": "MZ" + "d" * 32, "mark": last["mark"]})
            with pytest.raises(websockets.ConnectionClosed):
                await twilio.until("never", timeout=10)

    _run(call())
    from channels.phone_call import stream_exits

    assert stream_exits(runtime.sessions).load(CALL).next == "person"


def test_streams_command_serves_calls_as_its_own_process_and_stops_cleanly(settings_env, tmp_path):
    """`python -m assistant streams`: the production shape (one asyncio process per core)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import websockets
    from conftest import _free_port

    port = _free_port()
    Path(settings_env["DATA_DIR"]).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **settings_env}
    process = subprocess.Popen([sys.executable, "-m", "assistant", "streams", "--host", "127.0.0.1",
                                "--port", str(port)], cwd=Path(__file__).resolve().parent.parent, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        async def call() -> TwilioStream:
            deadline = time.monotonic() + 120  # loads the recogniser before it listens
            while True:
                try:
                    socket = await websockets.connect(f"ws://127.0.0.1:{port}/media-stream")
                    break
                except OSError:
                    assert process.poll() is None, process.stderr.read().decode()[-2000:]
                    assert time.monotonic() < deadline, "streams server did not start"
                    await asyncio.sleep(0.3)
            async with socket:
                stream = TwilioStream(socket)
                await stream.start()
                while stream.audio_bytes() <= 8000:  # the greeting is being spoken (Kokoro, as configured)
                    await stream.until("media")
                return stream

        stream = _run(call())
        assert stream.audio_bytes() > 8000  # more than a second of μ-law speech
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_a_senior_gets_eight_seconds_after_the_prompt_ends_not_after_it_starts(stream_server):
    """The line is quiet while the greeting plays (10 s here) and then for 7 s: no "我没听到" yet.
    Only after 8 s of quiet from the end of the prompt (first_input_seconds) does the call ask again."""
    import websockets

    async def call() -> int:
        async with websockets.connect(f"ws://127.0.0.1:{stream_server.port}/media-stream") as socket:
            twilio = TwilioStream(socket)
            await twilio.start()
            mark = await twilio.until("mark")
            await twilio.media([SILENCE] * 500)  # the greeting is still playing: 10 s of a quiet line
            await twilio.send({"event": "mark", "streamSid": "MZ" + "d" * 32, "mark": mark["mark"]})
            heard_before = len(twilio.received)
            replies: list[int] = []  # frames sent after the mark when a new prompt arrived

            async def listen() -> None:
                while True:
                    event = json.loads(await socket.recv())
                    twilio.received.append(event)
                    if event["event"] == "media" and not replies:
                        replies.append(sent[0])

            sent = [0]
            reader = asyncio.create_task(listen())
            for _ in range(600):  # 12 s of quiet after the prompt, a little faster than real time
                await twilio.media([SILENCE])
                sent[0] += 1
                await asyncio.sleep(0.002)
            await asyncio.sleep(2)
            reader.cancel()
            assert len(twilio.received) > heard_before, "the call never asked again"
            return replies[0]

    frames_after_prompt = _run(call())
    assert 400 <= frames_after_prompt <= 520  # 8 s (+ the time to say the reply) after the prompt


class ObservedVoices:
    """The real voices; only watched: when each chunk of a streamed reply was ready."""

    def __init__(self, voices) -> None:
        self.voices = voices
        self.ready: list[float] = []

    def __getattr__(self, name: str):
        return getattr(self.voices, name)

    def stream(self, text: str, language: str = "zh"):
        for chunk in self.voices.stream(text, language):
            self.ready.append(time.monotonic())
            yield chunk


def _greeting_and_menu(runtime) -> str:
    from assistant.ivr import IvrFlow

    flow = IvrFlow.load(runtime.settings.root / "ivr_flows" / "main.yml")
    return flow.greeting + flow.steps["main"].prompt


def test_first_audio_goes_out_before_the_prompt_is_synthesised(kokoro_server, runtime, monkeypatch):
    import websockets

    observed = ObservedVoices(runtime.voice.tts)
    monkeypatch.setattr(runtime.voice, "tts", observed)
    phrases = len(observed.mandarin.phrases(_greeting_and_menu(runtime)))

    async def call() -> float:
        async with websockets.connect(f"ws://127.0.0.1:{kokoro_server.port}/media-stream") as socket:
            twilio = TwilioStream(socket)
            await twilio.start()
            await twilio.until("media")
            return time.monotonic()

    first_media = _run(call())
    ready_before = sum(t <= first_media for t in observed.ready)
    assert phrases > 5 and 1 <= ready_before < phrases, (ready_before, phrases)


def test_talking_over_a_prompt_still_being_synthesised_stops_the_rest(kokoro_server):
    import websockets

    async def call() -> list[dict]:
        async with websockets.connect(f"ws://127.0.0.1:{kokoro_server.port}/media-stream") as socket:
            twilio = TwilioStream(socket)
            await twilio.start()
            await twilio.until("media")  # the greeting has begun; most of the menu is not made yet
            await twilio.media(_phone_frames(CLIP)[:60])  # the caller talks over it
            await twilio.until("clear", timeout=30)
            after: list[dict] = []
            try:
                while True:  # Kokoro makes a phrase in ~1 s: the next ones would have come by now
                    after.append(json.loads(await asyncio.wait_for(socket.recv(), 3.0)))
            except TimeoutError:
                return after

    after = _run(call())
    assert not [e for e in after if e["event"] in ("media", "mark")], after[:3]
