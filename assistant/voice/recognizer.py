"""The recogniser interface every channel uses: what a step expects, what comes back, the
`voice:` settings, and `DecodePool`, which runs decoding off the request thread with a deadline.

    t = rec.transcribe(load_for_asr(wav), Expectation(phrases=("是", "不是"), closed=True))
    t.text, t.core_text, t.confidence, t.choice

Implementations: whisper_asr.WhisperRecognizer (default), vosk_asr.VoskRecognizer,
remote_asr.RemoteRecognizer; engines.py picks one from config.yml.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Protocol

from assistant.voice.audio import Audio

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Expectation:
    """What the dialogue step expects, to bias the recogniser.

    `phrases`: words likely in the answer (menu options, lookup-table entries) → prompt/hotwords.
    `closed`: the answer must be one of `phrases` (menu words, 是/不是, digits): the recogniser
    then also returns a `choice` among them with its own confidence.
    """

    phrases: tuple[str, ...] = ()
    closed: bool = False


@dataclass(frozen=True)
class Choice:
    phrase: str
    confidence: float  # 0..1, comparable across steps; below ~0.5 ask again


@dataclass(frozen=True)
class Transcript:
    text: str  # simplified, no punctuation, numbers as said ("设定二十九度")
    core_text: str  # for the NLU: digit strings as Arabic digits ("电话13800138000")
    confidence: float  # 0..1 from the decoder's token log-probs
    speech_start: float  # seconds into the audio where speech starts (VAD), 0 if unknown
    speech_end: float
    audio_seconds: float
    decode_seconds: float  # wall time spent recognising
    recognizer: str
    no_speech: bool = False
    choice: Choice | None = None  # only for Expectation(closed=True)
    ranking: tuple[Choice, ...] = ()  # all candidates, best first (closed sets)
    alternatives: tuple[str, ...] = ()  # other hypotheses the decoder considered

    @property
    def real_time_factor(self) -> float:
        return self.decode_seconds / self.audio_seconds if self.audio_seconds else 0.0


class Recognizer(Protocol):
    name: str

    def transcribe(self, audio: Audio, expect: Expectation | None = None) -> Transcript:
        """Recognise one utterance (any rate; mono). Must be safe to call from several threads.
        A recogniser with a cheaper mode also takes `hurry=True` (see `Hurried`)."""
        ...


class Hurried(Protocol):
    """A recogniser that can trade the last words for time when decodes queue up (Whisper: the
    encoder window cut to the speech). `DecodePool(hurry_when_busy=True)` asks for it."""

    def transcribe(self, audio: Audio, expect: Expectation | None = None, *, hurry: bool = False) -> Transcript:
        ...


class RecognizerUnavailable(RuntimeError):
    """No recogniser could be built; the message says why in words an operator can act on."""


@dataclass(frozen=True)
class VoiceConfig:
    """The `voice:` section of config.yml, with defaults so a fresh clone needs no setting."""

    recognizer: str = "faster_whisper"  # faster_whisper | vosk | remote | none
    beam_size: int = 5
    # One thread per decode and one decode per core: Whisper base's matrices are too small for two
    # threads to share one decode well (bench/RESULTS.md: 4.1 → 8.2 utterances/s on 2 cores).
    cpu_threads: int = 1
    compute_type: str = "int8"
    workers: int | str = "auto"  # parallel decodes; "auto" = the CPU cores this process may use
    decode_timeout_seconds: float = 10.0  # Twilio gives a webhook 15 s
    min_confidence: float = 0.45  # below: asr-low-confidence
    closed_set_min_confidence: float = 0.5
    vad_threshold: float = 0.5
    vad_min_silence_ms: int = 700  # end of utterance on streamed audio
    vad_speech_pad_ms: int = 400
    max_utterance_seconds: float = 30.0
    tts_engine: str = "kokoro"  # kokoro | espeak | pyttsx3 | twilio_say (details: tts.TtsSettings)
    tts_rate: int = 130  # 字/min for seniors
    tts_voice: str = "jm_kumo+jf_gongitsune"
    tts: Mapping[str, Any] = field(default_factory=dict)  # the whole `voice.tts` section
    remote_url: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> VoiceConfig:
        section = dict((config or {}).get("voice") or {})
        vad = section.pop("vad", {}) or {}
        tts = section.pop("tts", {}) or {}
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        values = {k: v for k, v in section.items() if k in known}
        for key, name in (("threshold", "vad_threshold"), ("min_silence_ms", "vad_min_silence_ms"),
                          ("speech_pad_ms", "vad_speech_pad_ms")):
            if key in vad:
                values[name] = vad[key]
        for key, name in (("engine", "tts_engine"), ("rate", "tts_rate"), ("voice", "tts_voice")):
            if key in tts:
                values[name] = tts[key]
        values["tts"] = dict(tts)
        extra = {k: v for k, v in section.items() if k not in known}
        return cls(**values, extra=extra)

    @property
    def fast_decoder(self) -> str:
        """`voice.fast_decoder`: "never" (false), "always" (true) or "when_busy" (the default)."""
        value = self.extra.get("fast_decoder", "when_busy")
        if isinstance(value, bool):
            return "always" if value else "never"
        value = str(value).strip().lower()
        return value if value in ("always", "never", "when_busy") else "when_busy"

    @property
    def busy_utilisation(self) -> float:
        return float(self.extra.get("busy_utilisation", 0.6))

    @property
    def decode_workers(self) -> int:
        """How many utterances are decoded at once: `workers`, or one per usable core for "auto"."""
        value = str(self.workers).strip()  # 3, "3" or "auto" (YAML gives either type)
        return int(value) if value.isdigit() and int(value) > 0 else usable_cores()


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))  # honours taskset / cgroup cpusets
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# Observers of every finished decode (the runtime's ASR real-time-factor histogram). A registry
# here, rather than a metrics import, keeps the core free of any monitoring library.
DecodeObserver = Callable[[Transcript], None]
_decode_observers: list[DecodeObserver] = []


def add_decode_observer(observer: DecodeObserver) -> None:
    """Calls `observer(transcript)` after each decode; adding the same callable twice is one."""
    if observer not in _decode_observers:
        _decode_observers.append(observer)


def remove_decode_observer(observer: DecodeObserver) -> None:
    if observer in _decode_observers:
        _decode_observers.remove(observer)


def notify_decoded(transcript: Transcript) -> None:
    for observer in tuple(_decode_observers):
        try:
            observer(transcript)
        except Exception:  # monitoring must never cost a caller their turn
            log.debug("decode observer failed", exc_info=True)


class DecodePool:
    """Runs recognition on worker threads so a webhook thread only waits with a deadline.

    CTranslate2 releases the GIL while decoding, so a request thread stays responsive. One worker
    per core (each a single-threaded decode on its own model replica) gives the most utterances a
    second; more workers than cores only queue for the same cores.

    `hurry_when_busy` (a `Hurried` recogniser): a decode is hurried when others wait behind it, or
    when the recent arrival rate × the time an unhurried decode takes would keep the workers more
    than `busy_utilisation` busy — so a quiet kiosk gets Whisper's full window and 20 busy phone lines
    get answers in time instead of a growing queue (bench/RESULTS.md, issue 16).
    """

    RATE_WINDOW_SECONDS = 30.0

    def __init__(self, recognizer: Recognizer, workers: int = 1, *, hurry_when_busy: bool = False,
                 busy_utilisation: float = 0.6, clock: Callable[[], float] = time.monotonic) -> None:
        self.recognizer = recognizer
        self.workers = max(1, workers)
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="asr")
        self.hurry_when_busy, self.busy_utilisation, self._clock = hurry_when_busy, busy_utilisation, clock
        self._lock = threading.Lock()
        self._queued = 0  # submitted, not yet started
        self._arrivals: deque[float] = deque()
        self._first_arrival: float | None = None
        self._unhurried_seconds: float | None = None  # running mean of an unhurried decode's wall time
        self.hurried = 0

    def submit(self, audio: Audio, expect: Expectation | None = None) -> Future[Transcript]:
        with self._lock:
            now = self._clock()
            self._queued += 1
            self._arrivals.append(now)
            self._forget_arrivals_before(now - self.RATE_WINDOW_SECONDS)  # bounded, whether or not it hurries
            self._first_arrival = now if self._first_arrival is None else self._first_arrival
        return self._executor.submit(self._decode, audio, expect)

    def utilisation(self) -> float:
        """How busy the workers would be if every recent arrival were decoded unhurried (0 = unknown)."""
        with self._lock:
            return self._utilisation(self._clock())

    def _forget_arrivals_before(self, moment: float) -> None:
        while self._arrivals and self._arrivals[0] < moment:
            self._arrivals.popleft()

    def _utilisation(self, now: float) -> float:
        self._forget_arrivals_before(now - self.RATE_WINDOW_SECONDS)
        if self._unhurried_seconds is None or self._first_arrival is None:
            return 0.0
        # Over at least 5 s, so the first two utterances of a day do not read as a flood.
        span = min(self.RATE_WINDOW_SECONDS, max(5.0, now - self._first_arrival))
        return len(self._arrivals) / span * self._unhurried_seconds / self.workers

    def _should_hurry(self) -> bool:
        with self._lock:
            self._queued -= 1
            if not self.hurry_when_busy:
                return False
            hurry = self._queued > 0 or self._utilisation(self._clock()) > self.busy_utilisation
            self.hurried += hurry
            return hurry

    def _decode(self, audio: Audio, expect: Expectation | None) -> Transcript:
        hurry = self._should_hurry()
        started = self._clock()
        if hurry:
            transcript = self.recognizer.transcribe(audio, expect, hurry=True)  # type: ignore[call-arg]
        else:
            transcript = self.recognizer.transcribe(audio, expect)
            took = self._clock() - started
            with self._lock:
                last = self._unhurried_seconds
                self._unhurried_seconds = took if last is None else 0.8 * last + 0.2 * took
        notify_decoded(transcript)
        return transcript

    def transcribe(self, audio: Audio, expect: Expectation | None = None, timeout: float = 10.0) -> Transcript:
        """Result within `timeout` seconds, else TimeoutError (the caller answers with a re-prompt)."""
        future = self.submit(audio, expect)
        try:
            return future.result(timeout=timeout)
        except FutureTimeout as exc:
            future.cancel()
            raise TimeoutError(f"recognition took longer than {timeout:.1f} s") from exc

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
