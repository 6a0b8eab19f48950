"""Twilio Media Streams: a real recording streamed as 8 kHz μ-law over a real WebSocket, heard by
the real default recogniser (faster-whisper), answered with real espeak-ng audio."""
from __future__ import annotations

import asyncio
import base64
import json
import shutil
from pathlib import Path

import pytest

from assistant.voice.audio import mulaw_encode, read_wav, resample
from channels.twilio_media import FRAME_BYTES, MediaStreamServer, speech_frames

AUDIO = Path(__file__).resolve().parent / "audio"
CLIP = AUDIO / "aishell1_BAC009S0002W0123.wav"  # 也成为地方政府的眼中钉 (AISHELL-1, Apache-2.0)
CALL = "CA" + "c" * 32
SILENCE = bytes([0xFF]) * FRAME_BYTES  # μ-law digital silence


def _phone_frames(path: Path) -> list[bytes]:
    audio = read_wav(path)
    data = mulaw_encode(resample(audio.samples, audio.rate, 8000))
    return [data[i : i + FRAME_BYTES] for i in range(0, len(data), FRAME_BYTES)]


@pytest.fixture
def stream_server(runtime):
    if shutil.which("espeak-ng") is None:
        from conftest import _unavailable

        _unavailable("espeak-ng not installed (apt-get install espeak-ng)")
    server = MediaStreamServer(runtime, "127.0.0.1", 0)
    server.start_in_thread()
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
    assert frames and all(len(f) == FRAME_BYTES for f in frames[:-1])


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
    assert runtime.sessions.load(f"stream:{CALL}")["next"] == "person"


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
                await stream.until("mark")  # the greeting was spoken (audio, then its mark)
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
