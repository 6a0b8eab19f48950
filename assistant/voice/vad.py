"""Voice activity: Silero VAD (the ONNX model faster-whisper ships) for whole clips and for streams.

- `speech_span(audio)`: where speech is in a recorded utterance (trim silence before decoding;
  no speech at all → `asr-no-speech` without running the recogniser).
- `EndpointDetector`: fed live frames (Twilio Media Streams: 20 ms of 8 kHz μ-law; kiosk: 16 kHz
  PCM), it reports `SpeechStarted` (barge-in: stop the prompt that is playing), `UtteranceEnded`
  with the utterance audio after `min_silence_ms` of silence, or `NoInput` if nobody speaks.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy.signal import firwin, lfilter, lfilter_zi

from assistant.voice.audio import TARGET_RATE, Audio, mulaw_decode

WINDOW = 512  # Silero v5/v6 at 16 kHz: 32 ms windows …
CONTEXT = 64  # … each preceded by the last 64 samples of the previous one
WINDOW_SECONDS = WINDOW / TARGET_RATE
# Narrow-band (8 kHz) speech gets lower Silero probabilities: onsets were missed at 0.5 on phone copies.
TELEPHONE_VAD_OFFSET = 0.15


def silero_model_path() -> Path | None:
    try:
        from faster_whisper.utils import get_assets_path
    except ImportError:
        return None
    path = Path(get_assets_path()) / "silero_vad_v6.onnx"
    return path if path.exists() else None


class SileroVad:
    """One ONNX session per process; `state()` gives each stream its own recurrent state."""

    def __init__(self, path: Path) -> None:
        import onnxruntime

        opts = onnxruntime.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = 1  # 32 ms windows: threading costs more than it saves
        opts.log_severity_level = 4
        self._session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"], sess_options=opts)
        self._lock = threading.Lock()

    def probabilities(self, samples_16k: np.ndarray) -> np.ndarray:
        """Speech probability per 32 ms window of a whole clip (zero-padded to whole windows)."""
        stream = VadState()
        return np.array([self.window(stream, w) for w in _windows(samples_16k)], dtype=np.float32)

    def window(self, state: VadState, window: np.ndarray) -> float:
        frame = np.concatenate([state.context, window.astype(np.float32)])[None, :]
        with self._lock:  # sessions are thread-safe, but serialising keeps the cores for decoding
            out, state.h, state.c = self._session.run(None, {"input": frame, "h": state.h, "c": state.c})
        state.context = window[-CONTEXT:].astype(np.float32)
        return float(np.asarray(out).reshape(-1)[0])


@dataclass
class VadState:
    h: np.ndarray = None  # type: ignore[assignment]
    c: np.ndarray = None  # type: ignore[assignment]
    context: np.ndarray = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.h = np.zeros((1, 1, 128), dtype=np.float32)
        self.c = np.zeros((1, 1, 128), dtype=np.float32)
        self.context = np.zeros(CONTEXT, dtype=np.float32)


def _windows(samples: np.ndarray) -> list[np.ndarray]:
    n = -(-len(samples) // WINDOW) * WINDOW
    padded = np.zeros(n, dtype=np.float32)
    padded[: len(samples)] = samples
    return list(padded.reshape(-1, WINDOW))


@lru_cache(maxsize=1)
def shared_vad() -> SileroVad | None:
    path = silero_model_path()
    return SileroVad(path) if path else None


@dataclass(frozen=True)
class SpeechSpan:
    start: float  # seconds
    end: float
    speech_seconds: float  # windows above threshold, in seconds

    @property
    def found(self) -> bool:
        return self.end > self.start


def speech_span(audio: Audio, threshold: float = 0.5, pad_ms: int = 200, min_speech_ms: int = 120,
                vad: SileroVad | None = None) -> SpeechSpan:
    """From the first to the last speech window (padded); empty span when there is no speech.

    Runs of speech shorter than `min_speech_ms` (a click, a breath) are ignored.
    """
    vad = vad or shared_vad()
    audio = audio.to_16k()
    if vad is None:  # no VAD model: treat the whole clip as speech
        return SpeechSpan(0.0, audio.seconds, audio.seconds)
    probs = vad.probabilities(audio.samples)
    speech = probs >= threshold
    min_windows = max(1, int(np.ceil(min_speech_ms / 1000 / WINDOW_SECONDS)))
    runs: list[tuple[int, int]] = []
    i = 0
    while i < len(speech):
        if speech[i]:
            j = i
            while j < len(speech) and speech[j]:
                j += 1
            if j - i >= min_windows:
                runs.append((i, j))
            i = j
        else:
            i += 1
    if not runs:
        return SpeechSpan(0.0, 0.0, 0.0)
    pad = pad_ms / 1000
    start = max(0.0, runs[0][0] * WINDOW_SECONDS - pad)
    end = min(audio.seconds, runs[-1][1] * WINDOW_SECONDS + pad)
    return SpeechSpan(start, end, sum(b - a for a, b in runs) * WINDOW_SECONDS)


# --- streaming -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SpeechStarted:
    """Speech has gone on for `barge_in_ms`: stop any prompt being played (barge-in)."""

    at: float  # seconds since the stream began


@dataclass(frozen=True)
class UtteranceEnded:
    audio: Audio  # the utterance at the stream's own rate, with a little lead-in
    reason: str  # "silence" | "max_length"
    at: float


@dataclass(frozen=True)
class NoInput:
    at: float


StreamEvent = SpeechStarted | UtteranceEnded | NoInput


class _Upsampler2x:
    """Stateful 8 → 16 kHz for the VAD (frame by frame without clicks at frame edges)."""

    def __init__(self) -> None:
        self._taps = firwin(31, 0.5) * 2.0
        self._zi = lfilter_zi(self._taps, [1.0]) * 0.0

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        stuffed = np.zeros(len(samples) * 2, dtype=np.float64)
        stuffed[::2] = samples
        out, self._zi = lfilter(self._taps, [1.0], stuffed, zi=self._zi)
        return out.astype(np.float32)


class EndpointDetector:
    """End-of-utterance detection on a live stream, one detector per call or kiosk session.

    Feed frames in order with `feed_mulaw` (8 kHz G.711 bytes) or `feed` (float samples at the
    detector's rate). Each call returns the events it caused. After `UtteranceEnded` or `NoInput`
    the detector is ready for the next turn (call `reset()` when a new prompt starts playing).
    """

    def __init__(self, rate: int = 8000, *, vad: SileroVad | None = None, threshold: float | None = None,
                 min_silence_ms: int = 700, barge_in_ms: int = 250, pre_roll_ms: int = 300,
                 max_seconds: float = 30.0, no_input_seconds: float = 6.0) -> None:
        if rate not in (8000, TARGET_RATE):
            raise ValueError("EndpointDetector takes 8 kHz or 16 kHz audio")
        found = vad or shared_vad()
        if found is None:
            raise RuntimeError("Silero VAD model not found (faster-whisper is not installed)")
        self.vad = found
        self.rate = rate
        self.threshold = threshold if threshold is not None else 0.5 - (TELEPHONE_VAD_OFFSET if rate == 8000 else 0.0)
        self.neg_threshold = max(self.threshold - 0.15, 0.01)
        self.min_silence_windows = max(1, round(min_silence_ms / 1000 / WINDOW_SECONDS))
        self.barge_in_windows = max(1, round(barge_in_ms / 1000 / WINDOW_SECONDS))
        self.pre_roll = int(pre_roll_ms / 1000 * rate)
        self.max_samples = int(max_seconds * rate)
        self.no_input_samples = int(no_input_seconds * rate)
        self.reset()

    def reset(self) -> None:
        self._state = VadState()
        self._up = _Upsampler2x() if self.rate == 8000 else None
        self._pending16 = np.zeros(0, dtype=np.float32)
        self._raw: list[np.ndarray] = []  # native-rate audio of this turn
        self._raw_len = 0
        self._turn_start = 0  # native samples before this turn (for `at`)
        self._speech_windows = 0  # consecutive speech windows
        self._silence_windows = 0
        self._in_speech = False
        self._started_at: int | None = None  # native sample index where speech began
        self._announced = False
        self._window_index = 0
        self._quiet_from = 0  # native index within the turn where the no-input clock started

    def _reset_turn(self) -> None:
        consumed = self._turn_start + self._raw_len
        self.reset()
        self._turn_start = consumed

    def restart_no_input_clock(self) -> None:
        """The prompt has finished playing: the caller's time to answer starts now, not when the
        prompt started (a 15 s menu must not eat the 8 s a senior gets to begin)."""
        self._quiet_from = int(self._window_index * WINDOW * self.rate / TARGET_RATE)

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    def feed_mulaw(self, frame: bytes) -> list[StreamEvent]:
        if self.rate != 8000:
            raise ValueError("μ-law frames are 8 kHz; this detector is 16 kHz")
        return self.feed(mulaw_decode(frame))

    def feed(self, samples: np.ndarray) -> list[StreamEvent]:
        samples = np.asarray(samples, dtype=np.float32)
        self._raw.append(samples)
        self._raw_len += len(samples)
        up = self._up(samples) if self._up else samples
        self._pending16 = np.concatenate([self._pending16, up])
        events: list[StreamEvent] = []
        while len(self._pending16) >= WINDOW:
            window, self._pending16 = self._pending16[:WINDOW], self._pending16[WINDOW:]
            event = self._step(self.vad.window(self._state, window))
            if event is not None:
                events.append(event)
                if not isinstance(event, SpeechStarted):
                    self._reset_turn()
                    break
        return events

    def _now(self, native_index: int) -> float:
        return (self._turn_start + native_index) / self.rate

    def _step(self, prob: float) -> StreamEvent | None:
        self._window_index += 1
        native_end = int(self._window_index * WINDOW * self.rate / TARGET_RATE)
        if prob >= self.threshold:
            self._speech_windows += 1
            self._silence_windows = 0
            if not self._in_speech:
                self._in_speech = True
                self._started_at = max(0, native_end - int(WINDOW * self.rate / TARGET_RATE))
        elif prob < self.neg_threshold or not self._in_speech:
            self._silence_windows += 1
            if self._silence_windows >= 2:
                self._speech_windows = 0  # a cough or a click is not barge-in
        if self._in_speech and not self._announced and self._speech_windows >= self.barge_in_windows:
            self._announced = True
            return SpeechStarted(self._now(self._started_at or 0))
        if self._announced and self._silence_windows >= self.min_silence_windows:
            return self._utterance("silence", native_end)
        if self._announced and native_end - (self._started_at or 0) >= self.max_samples:
            return self._utterance("max_length", native_end)
        if not self._announced and native_end - self._quiet_from >= self.no_input_samples:
            if not self._in_speech or self._silence_windows >= self.min_silence_windows:
                return NoInput(self._now(native_end))
        if self._in_speech and not self._announced and self._silence_windows >= self.min_silence_windows:
            self._in_speech = False  # a short noise, not an utterance
        return None

    def _utterance(self, reason: str, native_end: int) -> UtteranceEnded:
        everything = np.concatenate(self._raw) if self._raw else np.zeros(0, dtype=np.float32)
        start = max(0, (self._started_at or 0) - self.pre_roll)
        audio = Audio(everything[start:native_end].copy(), self.rate, telephone=self.rate == 8000)
        return UtteranceEnded(audio, reason, self._now(native_end))

