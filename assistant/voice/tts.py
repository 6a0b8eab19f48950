"""Text-to-speech behind one small interface, with the fixed prompts rendered ahead of time.

    tts = build_tts(VoiceConfig.from_config(config), data_dir)   # tts_select.py
    speech = tts.speak(reply.speech or reply.text)     # Speech(path=…wav) → <Play>, kiosk audio
    for chunk in tts.stream(text): send(chunk.samples)  # Media Streams: audio before the reply is done
    speech = tts.speak(text, language="yue")           # per call: Mandarin "zh" or Cantonese "yue"

Engines (config.yml `voice.tts.engine`):
- `kokoro` (default): Kokoro-82M int8, offline neural voice, misaki's Mandarin G2P (kokoro_tts.py).
- `espeak`: the espeak-ng program, voice `cmn-latn-pinyin` (`cmn` reads tone digits aloud). Also the
  fallback when Kokoro is missing or fails, phrase by phrase: a call never goes silent.
- `pyttsx3`: espeak-ng in-process through pyttsx3 (kept for completeness; see espeak_tts.py).
- `twilio_say`: no local audio; the phone says the text with Twilio <Say> and a neural cloud voice
  (the text leaves the premises: README "Voice").

Every local engine speaks the same phrases (speakable.py: numbers digit by digit, pauses) and
caches two things, both keyed by text + voice + speed: phrases (a fixed prompt's clauses are
rendered once, at first start, so a read-back only synthesises its names and numbers) and whole
replies (the WAV a URL points at). The cache can hold read-backs of phone numbers: retention
purges DATA_DIR/tts with the recordings.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from assistant.voice.audio import Audio, read_wav, resample, write_wav
from assistant.voice.recognizer import VoiceConfig
from assistant.voice.speakable import Pauses, Phrase, for_the_ear, spoken_text

log = logging.getLogger(__name__)

LANGUAGES = ("zh", "yue")  # Mandarin, Cantonese


def for_listening(text: str) -> str:
    """The text as it is said (digits spelled, symbols gone), on one line: for <Say> and logs."""
    return spoken_text(for_the_ear(text))


@dataclass(frozen=True)
class SayVoice:
    """A Twilio <Say> voice: the `language` and `voice` attributes."""

    language: str
    voice: str | None = None


DEFAULT_SAY = {"zh": SayVoice("cmn-CN", "Polly.Zhiyu-Neural"), "yue": SayVoice("yue-HK", "Google.yue-HK-Standard-A")}


@dataclass(frozen=True)
class TtsSettings:
    """config.yml `voice.tts`."""

    engine: str = "kokoro"  # kokoro | espeak | pyttsx3 | twilio_say
    voice: str = "jm_kumo+jf_gongitsune"  # Kokoro style, or a mix "a+b" / "a:0.7+b:0.3"
    speed: float = 0.85  # Kokoro speed (1.0 = its natural pace)
    max_pace: float = 150  # 字/min inside a phrase (pauses not counted); a faster phrase is said again slower
    # … but never below this Kokoro speed. Below ≈0.7 Kokoro puts a vowel before a phrase ("而请说…")
    # and loses tones; 0.75 with longer pauses was clearer to Whisper at the same overall pace, but
    # says each phrase at ≈200 字/min (bench/RESULTS.md): not the default until seniors have listened.
    min_speed: float = 0.5
    threads: int = 2  # onnxruntime threads per synthesis
    concurrency: int = 1  # syntheses at once
    espeak_voice: str = "cmn-latn-pinyin"
    cantonese_voice: str = "yue"  # espeak-ng, the only offline Cantonese voice on any registry
    rate: int = 130  # espeak-ng pace, 字/min
    fallback: str = "espeak"  # espeak | none
    pauses: Pauses = field(default_factory=Pauses)
    say: Mapping[str, SayVoice] = field(default_factory=lambda: dict(DEFAULT_SAY))
    # Secret that keys the cache's file names (set by the deployment, not config.yml): a read-back
    # holds a phone or ID number, and a plain hash of it could be reversed by trying numbers.
    cache_key: bytes = field(default=b"", repr=False)

    @classmethod
    def from_config(cls, config: VoiceConfig) -> TtsSettings:
        section = dict(config.tts or {})
        values: dict[str, Any] = {}
        for name in ("engine", "voice", "espeak_voice", "cantonese_voice", "fallback"):
            if section.get(name) not in (None, ""):
                values[name] = str(section[name])
        for name, kind in (("speed", float), ("max_pace", float), ("min_speed", float), ("threads", int),
                           ("concurrency", int), ("rate", int)):
            if section.get(name) not in (None, ""):
                values[name] = kind(section[name])
        if values.get("engine") in ("espeak", "pyttsx3") and "voice" in values:
            values["espeak_voice"] = values.pop("voice")  # `voice:` names the espeak voice for those engines
        values["pauses"] = Pauses.from_config(section.get("pauses"))
        say = dict(DEFAULT_SAY)
        for language, spec in (section.get("twilio") or {}).items():
            if isinstance(spec, Mapping) and spec.get("language"):
                say[str(language)] = SayVoice(str(spec["language"]), spec.get("voice") or None)
        values["say"] = say
        return cls(**values)


@dataclass(frozen=True)
class Speech:
    """A spoken reply: a WAV file to play, or (path None) text for Twilio <Say>."""

    text: str  # what is said (digits spelled)
    path: Path | None
    seconds: float = 0.0
    cached: bool = False
    say_language: str = "cmn-CN"
    say_voice: str | None = None

    @property
    def key(self) -> str:
        return self.path.stem if self.path else ""


@dataclass(frozen=True)
class SpeechChunk:
    """A piece of a reply as it becomes ready: one phrase and the pause after it."""

    samples: np.ndarray  # float32, mono
    rate: int
    text: str


class TextToSpeech(Protocol):
    name: str

    def speak(self, text: str, language: str = "zh") -> Speech: ...

    def stream(self, text: str, language: str = "zh") -> Iterator[SpeechChunk]: ...

    def warm(self, texts: Iterable[str], progress: Callable[[int, int], None] | None = None,
             stop: threading.Event | None = None) -> int: ...


class TtsUnavailable(RuntimeError):
    pass


class TwilioSay:
    """No local synthesis: channels render <Say> with a cloud voice for the call's language."""

    name = "twilio_say"

    def __init__(self, settings: TtsSettings | None = None) -> None:
        self.settings = settings or TtsSettings(engine="twilio_say")

    def speak(self, text: str, language: str = "zh") -> Speech:
        say = self.settings.say.get(language) or self.settings.say["zh"]
        return Speech(for_listening(text), None, say_language=say.language, say_voice=say.voice)

    def stream(self, text: str, language: str = "zh") -> Iterator[SpeechChunk]:
        return iter(())

    def warm(self, texts: Iterable[str], progress: Callable[[int, int], None] | None = None,
             stop: threading.Event | None = None) -> int:
        return 0


_MEMORY_PHRASES = 512  # recent dynamic phrases (names, addresses) kept in memory only


class LocalVoice:
    """A voice that makes audio here. Subclasses implement `render` (one phrase → samples)."""

    name = "local"
    rate = 22_050

    def __init__(self, cache_dir: Path, settings: TtsSettings, backup: LocalVoice | None = None) -> None:
        self.settings = settings
        self.cache_dir = cache_dir
        self.phrase_dir = cache_dir / "phrases"
        self.phrase_dir.mkdir(parents=True, exist_ok=True)
        self.backup = backup  # says a phrase this voice fails on
        self._memory: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    # --- what subclasses provide -------------------------------------------------------------
    @property
    def identity(self) -> str:
        """Engine, voice and speed: part of every cache key."""
        return self.name

    def render(self, text: str) -> np.ndarray:
        raise NotImplementedError

    # --- phrases -----------------------------------------------------------------------------
    def phrases(self, text: str) -> list[Phrase]:
        return for_the_ear(text, self.settings.pauses)

    def _phrase_key(self, phrase: Phrase) -> str:
        return self._file_name(f"{self.identity}|{int(phrase.digits)}|{phrase.text}")

    def _file_name(self, what: str) -> str:
        message = what.encode("utf-8", "surrogatepass")
        return hmac.new(self.settings.cache_key, message, hashlib.sha256).hexdigest()[:32]

    def phrase_audio(self, phrase: Phrase, keep: bool = False) -> np.ndarray:
        """Samples for one phrase (no pause); from memory, the phrase cache, or synthesised now.
        `keep` writes it to the phrase cache (fixed prompts: rendered once, reused by every call)."""
        key = self._phrase_key(phrase)
        with self._lock:
            if key in self._memory:
                self._memory.move_to_end(key)
                return self._memory[key]
        path = self.phrase_dir / f"{key}.wav"
        audio = _read_samples(path, self.rate) if path.exists() else None
        if audio is None:
            audio = self._synthesise(phrase)
            if keep and audio.size:
                _write_atomic(path, Audio(audio, self.rate))
        with self._lock:
            self._memory[key] = audio
            while len(self._memory) > _MEMORY_PHRASES:
                self._memory.popitem(last=False)
        return audio

    def _synthesise(self, phrase: Phrase) -> np.ndarray:
        text = " ".join(phrase.text) if phrase.digits else phrase.text  # one syllable each
        try:
            audio = trim_silence(self.render(text), self.rate)
            if audio.size:
                return audio
            raise TtsUnavailable(f"{self.name} made no audio for {text[:12]!r}")
        except Exception as exc:
            if self.backup is None:
                raise TtsUnavailable(f"{self.name} failed: {exc}") from exc
            log.warning("%s failed on a phrase (%s); %s says it", self.name, exc, self.backup.name)
            other = self.backup.phrase_audio(phrase)
            return resample(other, self.backup.rate, self.rate) if self.backup.rate != self.rate else other

    # --- replies -----------------------------------------------------------------------------
    def reply_path(self, text: str) -> Path:
        return self.cache_dir / f"{self._file_name(f'{self.identity}|{text}')}.wav"

    def chunks(self, text: str, keep: bool = False) -> Iterator[SpeechChunk]:
        for phrase in self.phrases(text):
            audio = self.phrase_audio(phrase, keep=keep)
            gap = np.zeros(int(phrase.pause * self.rate), np.float32)
            yield SpeechChunk(np.concatenate([audio, gap]) if gap.size else audio, self.rate, phrase.text)

    def speak(self, text: str, language: str = "zh") -> Speech:
        path = self.reply_path(text)
        said = for_listening(text)
        if path.exists():
            return Speech(said, path, _wav_seconds(path), cached=True)
        pieces = [c.samples for c in self.chunks(text)]
        samples = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
        if not samples.size:
            samples = np.zeros(int(0.3 * self.rate), np.float32)  # nothing sayable: a short silence, not an error
        _write_atomic(path, Audio(samples, self.rate))
        return Speech(said, path, samples.size / self.rate, cached=False)

    def stream(self, text: str, language: str = "zh") -> Iterator[SpeechChunk]:
        """Phrase by phrase as each is ready; the whole reply is cached once it has been said."""
        path = self.reply_path(text)
        if path.exists():
            audio = read_wav(path)
            yield SpeechChunk(audio.samples, audio.rate, for_listening(text))
            return
        said = []
        for chunk in self.chunks(text):
            said.append(chunk.samples)
            yield chunk
        if said:
            _write_atomic(path, Audio(np.concatenate(said), self.rate))

    def warm(self, texts: Iterable[str], progress: Callable[[int, int], None] | None = None,
             stop: threading.Event | None = None) -> int:
        """Render fixed prompts ahead of the first call; returns how many phrases were new. `stop`
        ends it between phrases (a server shutting down must not exit mid-synthesis)."""
        todo = list(dict.fromkeys(texts))
        made = 0
        for i, text in enumerate(todo, 1):
            if stop is not None and stop.is_set():
                break
            for phrase in self.phrases(text):
                if not (self.phrase_dir / f"{self._phrase_key(phrase)}.wav").exists():
                    self.phrase_audio(phrase, keep=True)
                    made += 1
            if progress:
                progress(i, len(todo))
        return made


class Voices:
    """The call's language picks the voice: Mandarin from the configured engine, Cantonese from
    espeak-ng's `yue` (offline) or Twilio <Say> in yue-HK."""

    def __init__(self, mandarin: TextToSpeech, cantonese: TextToSpeech | None, settings: TtsSettings,
                 fallback_reason: str | None = None) -> None:
        self.mandarin, self.cantonese, self.settings = mandarin, cantonese, settings
        self.name = mandarin.name
        self.fallback_reason = fallback_reason  # why the configured engine is not the one speaking
        self.backup_missing: str | None = None  # why there is no espeak-ng fallback behind it

    def _for(self, language: str) -> TextToSpeech:
        if language == "yue" and self.cantonese is not None:
            return self.cantonese
        return self.mandarin

    @property
    def local(self) -> bool:
        return isinstance(self.mandarin, LocalVoice)

    def speak(self, text: str, language: str = "zh") -> Speech:
        return self._for(language).speak(text, language)

    def stream(self, text: str, language: str = "zh") -> Iterator[SpeechChunk]:
        return self._for(language).stream(text, language)

    def warm(self, texts: Iterable[str], progress: Callable[[int, int], None] | None = None,
             stop: threading.Event | None = None) -> int:
        return self.mandarin.warm(texts, progress, stop) if isinstance(self.mandarin, LocalVoice) else 0

    def reply_path(self, text: str, language: str = "zh") -> Path | None:
        voice = self._for(language)
        return voice.reply_path(text) if isinstance(voice, LocalVoice) else None

    def file(self, name: str) -> Path | None:
        """A reply WAV by its file name (URLs carry only the content hash), or None."""
        if not re.fullmatch(r"[0-9a-f]{32}\.wav", name):
            return None
        for voice in (self.mandarin, self.cantonese):
            if isinstance(voice, LocalVoice) and (voice.cache_dir / name).is_file():
                return voice.cache_dir / name
        return None


def trim_silence(samples: np.ndarray, rate: int, floor: float = 0.01, pad_seconds: float = 0.03) -> np.ndarray:
    """Leading/trailing near-silence cut (our own pauses set the rhythm), a little padding kept."""
    samples = np.asarray(samples, np.float32).ravel()
    loud = np.flatnonzero(np.abs(samples) > floor)
    if not loud.size:
        return np.zeros(0, np.float32)
    pad = int(pad_seconds * rate)
    return samples[max(0, loud[0] - pad) : loud[-1] + pad]


def _read_samples(path: Path, rate: int) -> np.ndarray | None:
    try:
        audio = read_wav(path)
    except (OSError, ValueError):
        return None
    return audio.samples if audio.rate == rate else resample(audio.samples, audio.rate, rate)


def _write_atomic(path: Path, audio: Audio) -> None:
    """A concurrent reader never sees half a file."""
    fd, tmp_name = tempfile.mkstemp(suffix=".wav", dir=path.parent, prefix=".tts-")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(write_wav(audio.samples, audio.rate))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _wav_seconds(path: Path) -> float:
    try:
        return read_wav(path).seconds
    except (OSError, ValueError):
        return 0.0
