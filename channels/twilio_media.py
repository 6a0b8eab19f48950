"""Twilio Media Streams: the phone call heard by our own recogniser (bidirectional WebSocket).

Twilio opens `wss://…/media-stream` after <Connect><Stream> and sends JSON events: `connected`,
`start` (streamSid, callSid, customParameters), `media` (20 ms of 8 kHz μ-law, base64), `dtmf`,
`mark` (our playback reached a mark), `stop`. We answer with `media` (our speech, same format),
`mark` and `clear` (stop playback at once: barge-in when the caller starts talking).

The call logic is the same as for <Gather> (channels/phone_call.py). When the call must reach a
person or end, we leave that in a `StreamExit` (phone_call.py) and close the socket; Twilio then follows the
<Redirect> after <Connect> to /webhooks/twilio/voice/after-stream, which dials or hangs up.
Recognition runs on the decode pool's thread, never on the event loop. A prompt is said phrase
by phrase as the voice makes it (the first words go out while the rest is synthesised), by its
own task, so a caller who talks over it stops the rest at once.
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from assistant.ivr import CallInput
from assistant.voice.audio import TELEPHONE_RATE, load_for_asr, mulaw_encode, resample
from assistant.voice.phrases import answer_expectation, heard_answer
from assistant.voice.tts import SpeechChunk
from assistant.voice.vad import EndpointDetector, NoInput, SpeechStarted, UtteranceEnded
from backend.messaging.sms_format import mainland_mobile
from channels.phone_call import CallStep, PhoneCall, StreamExit, stream_exits
from channels.runtime_port import ChannelRuntime, VoicePort

log = logging.getLogger(__name__)

FRAME_BYTES = 160  # 20 ms of 8 kHz μ-law
MULAW_SILENCE = b"\xff"
PATH = "/media-stream"


class MulawFramer:
    """Speech as it is synthesised (float chunks at the voice's rate) → exact 20 ms μ-law frames.
    What does not fill a frame waits for the next chunk; only the very last frame is padded."""

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, samples: np.ndarray, rate: int) -> list[bytes]:
        if rate != TELEPHONE_RATE:
            samples = resample(samples, rate, TELEPHONE_RATE)
        data = self._rest + mulaw_encode(np.clip(samples, -1.0, 1.0))
        whole = len(data) - len(data) % FRAME_BYTES
        self._rest = data[whole:]
        return [data[i : i + FRAME_BYTES] for i in range(0, whole, FRAME_BYTES)]

    def flush(self) -> list[bytes]:
        rest, self._rest = self._rest, b""
        return [rest.ljust(FRAME_BYTES, MULAW_SILENCE)] if rest else []


def speech_frames(wav: bytes) -> list[bytes]:
    """TTS output (any rate WAV) → 20 ms μ-law frames for the phone line."""
    audio = load_for_asr(wav)
    framer = MulawFramer()
    return framer.feed(audio.samples, audio.rate) + framer.flush()


@dataclass
class StreamCall:
    """One call on one socket."""

    phone: PhoneCall
    services: VoicePort  # runtime.voice: recogniser pool, streaming voice, config
    send: Callable[[dict[str, Any]], Awaitable[None]]  # one JSON event to Twilio
    call_sid: str = ""
    stream_sid: str = ""
    caller: str | None = None
    step: CallStep | None = None
    playing: bool = False
    keyed: str = ""
    marks: int = 0
    closing: bool = False
    hangup: Callable[[], Awaitable[Any]] | None = None  # close the socket (a prompt that cannot be said)
    speaking: asyncio.Task[None] | None = None
    detector: EndpointDetector = field(init=False)

    def __post_init__(self) -> None:
        # The flow's time to start answering (counted from the end of each prompt, see `mark`).
        self.detector = EndpointDetector(TELEPHONE_RATE, min_silence_ms=self.services.config.vad_min_silence_ms,
                                         no_input_seconds=float(self.phone.flow.gather.get("first_input_seconds", 8)))

    async def start(self, event: dict[str, Any]) -> None:
        start = event.get("start") or {}
        self.stream_sid = start.get("streamSid", event.get("streamSid", ""))
        self.call_sid = start.get("callSid", "")
        self.caller = mainland_mobile((start.get("customParameters") or {}).get("caller") or "") or None
        await self.act(await asyncio.to_thread(self.phone.greet, self.call_sid, self.caller))

    async def act(self, step: CallStep) -> None:
        self.step = step
        if step.next != "listen":
            stream_exits(self.phone.runtime.sessions).save(self.call_sid, StreamExit(step.next, step.reference))
            self.closing = True  # close once the last words have been played (mark echoed)
            if not "".join(step.say):
                raise ConnectionAbortedError
        self.detector.reset()
        await self.speak(step.say)

    async def speak(self, sentences: tuple[str, ...]) -> None:
        """Start saying a prompt. It is spoken by its own task, so the socket keeps being read
        while later phrases are still being synthesised: the caller can talk over it."""
        text = "".join(sentences)
        if not text:
            return
        self.marks += 1
        self.playing = True
        self.speaking = asyncio.create_task(self._say(text, self.marks))

    def _current(self, prompt: int) -> bool:
        """Still the prompt to say: not talked over (barge-in), not replaced by a newer one."""
        return self.playing and self.marks == prompt

    async def _say(self, text: str, prompt: int) -> None:
        """Each phrase's frames go out as soon as it is ready, then one mark after the last."""
        try:
            chunks = await asyncio.to_thread(self._chunks, text)  # reads the store: off the loop
            framer = MulawFramer()
            while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
                if not await self._send_frames(framer.feed(chunk.samples, chunk.rate), prompt):
                    return  # the rest of this prompt is not wanted any more
            if await self._send_frames(framer.flush(), prompt):
                await self.send({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": f"prompt-{prompt}"}})
        except Exception as exc:
            if not _closed(exc):
                log.exception("stream %s could not speak", self.call_sid)
                stream_exits(self.phone.runtime.sessions).save(self.call_sid, StreamExit("person"))
                if self.hangup is not None:
                    await self.hangup()  # Twilio follows <Redirect> to after-stream: a person

    def _chunks(self, text: str) -> Iterator[SpeechChunk]:
        return self.services.stream(text, self.phone.language(self.call_sid))

    async def _send_frames(self, frames: list[bytes], prompt: int) -> bool:
        for frame in frames:
            if not self._current(prompt):
                return False
            payload = base64.b64encode(frame).decode("ascii")
            await self.send({"event": "media", "streamSid": self.stream_sid, "media": {"payload": payload}})
        return self._current(prompt)

    def stop(self) -> None:
        if self.speaking is not None:
            self.speaking.cancel()

    async def media(self, event: dict[str, Any]) -> None:
        media = event.get("media") or {}
        if media.get("track", "inbound") != "inbound" or self.closing:
            return
        for happened in self.detector.feed_mulaw(base64.b64decode(media.get("payload", ""))):
            if isinstance(happened, SpeechStarted) and self.playing:
                self.playing = False  # barge-in: the caller talks over the prompt
                await self.send({"event": "clear", "streamSid": self.stream_sid})
            elif isinstance(happened, UtteranceEnded):
                await self.heard_speech(happened)
            elif isinstance(happened, NoInput) and not self.playing:
                await self.answer(CallInput())

    async def heard_speech(self, ended: UtteranceEnded) -> None:
        step = self.step
        # The read-back question ("您是说……对吗？") waits for 对/不对 whatever the core waits for.
        expects = None if step is None else "confirm" if step.step == "confirm" else step.expects
        transcript = await asyncio.wrap_future(self.services.pool.submit(ended.audio, answer_expectation(expects)))
        log.info("stream %s heard %.1f s, confidence %.2f, rtf %.2f", self.call_sid, transcript.audio_seconds,
                 transcript.confidence, transcript.real_time_factor)
        if transcript.no_speech:
            return
        text, confidence = heard_answer(transcript, self.services.config.closed_set_min_confidence)
        await self.answer(CallInput(speech=text, confidence=confidence))

    async def dtmf(self, event: dict[str, Any]) -> None:
        digit = str((event.get("dtmf") or {}).get("digit", ""))
        step = self.step
        if not digit or step is None:
            return
        if step.expects in self.phone.flow.digit_slots and (self.keyed or digit not in self.phone.flow.keys):
            self.keyed += digit  # a long number: collect until #
            if digit != "#":
                return
            digit, self.keyed = self.keyed, ""
        await self.answer(CallInput(digits=digit))

    async def answer(self, value: CallInput) -> None:
        step = self.step
        if step is None or step.next != "listen":
            return
        if self.playing:
            self.playing = False
            await self.send({"event": "clear", "streamSid": self.stream_sid})
        next_step = await asyncio.to_thread(self.phone.heard, self.call_sid, self.caller, step.step or "main",
                                            step.expects, step.tries, value)
        await self.act(next_step)

    async def mark(self, event: dict[str, Any]) -> None:
        if (event.get("mark") or {}).get("name") == f"prompt-{self.marks}":
            self.playing = False
            if self.closing:
                raise ConnectionAbortedError
            self.detector.restart_no_input_clock()


def _closed(error: Exception) -> bool:
    """The caller hung up while we were speaking: nothing to report."""
    from websockets.exceptions import ConnectionClosed

    return isinstance(error, ConnectionClosed)


class MediaStreamServer:
    """A `websockets` server on its own event loop thread, started by `serve` next to the WSGI app."""

    def __init__(self, runtime: ChannelRuntime, host: str, port: int) -> None:
        self.runtime = runtime
        self.host, self.port = host, port
        self.flow = runtime.ivr_flow
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Future[None] | None = None

    async def handle(self, socket: Any) -> None:
        if getattr(socket, "request", None) is not None and socket.request.path.split("?")[0] != PATH:
            await socket.close(code=1008, reason="unknown path")
            return
        services = self.runtime.voice
        if services.pool is None or not services.local_voice:
            # Without a local recogniser or voice we cannot run the call here: hand it back to
            # <Gather> and Twilio's recogniser (after-stream picks it up).
            log.warning("media stream refused: %s", services.unavailable or "no TTS configured")
            await socket.close(code=1011, reason="local speech unavailable")
            return

        async def send(message: dict[str, Any]) -> None:
            await socket.send(json.dumps(message))

        call = StreamCall(PhoneCall(self.runtime, self.flow), services, send, hangup=socket.close)
        try:
            async for raw in socket:
                event = json.loads(raw)
                kind = event.get("event")
                if kind == "start":
                    await call.start(event)
                elif kind == "media":
                    await call.media(event)
                elif kind == "dtmf":
                    await call.dtmf(event)
                elif kind == "mark":
                    await call.mark(event)
                elif kind == "stop":
                    break
        except ConnectionAbortedError:
            pass
        except Exception:
            log.exception("media stream %s failed", call.call_sid)
            stream_exits(self.runtime.sessions).save(call.call_sid, StreamExit("person"))
        finally:
            call.stop()
            await socket.close()

    async def _serve(self) -> None:
        import websockets

        self._stop = asyncio.get_running_loop().create_future()
        async with websockets.serve(self.handle, self.host, self.port, max_size=1 << 20) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop

    def run_forever(self) -> None:
        """Foreground mode (`python -m assistant streams`): one asyncio process per host (its decode
        pool uses every core) behind a WebSocket-aware load balancer; a call's socket stays on one
        process, its state in Redis."""
        loop = asyncio.new_event_loop()
        self._loop = loop
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.run_until_complete(self._serve())

    def start_in_thread(self) -> threading.Thread:
        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self._serve())

        thread = threading.Thread(target=run, name="media-streams", daemon=True)
        thread.start()
        self._ready.wait(10)
        return thread

    def stop(self) -> None:
        if self._loop and self._stop and not self._stop.done():
            self._loop.call_soon_threadsafe(self._stop.set_result, None)
