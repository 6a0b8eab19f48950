"""Text-to-speech behind a small interface, with a cache so each prompt is synthesised once.

    tts = build_tts(VoiceConfig.from_config(config), data_dir)
    speech = tts.speak(reply.speech or reply.text)   # Speech(path=…wav) → TwiML <Play>, or
                                                      # Speech(path=None, …) → <Say language="zh-CN">

Engines (config `voice.tts.engine`), all espeak-ng's Mandarin voice `cmn` (`apt-get install espeak-ng`):
- `espeak` (default): the espeak-ng program, one short process per new prompt. Same voice and
  output as pyttsx3, but isolated: a crash cannot take the server down, and rate is exact.
- `pyttsx3`: espeak-ng through pyttsx3 2.99 in-process. Works, but its espeak driver lost files on
  the first synthesis of a process, sometimes kept an old rate after a change, and crashed
  (SIGSEGV) at interpreter exit now and then in our tests — hence not the default.
- `twilio_say`: no local synthesis; channels render <Say language="zh-CN">.
A better offline voice plugs in by implementing `TextToSpeech.speak` (see `_CachedEngine`).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from assistant.dialogue.render import spell_digits
from assistant.voice.audio import read_wav
from assistant.voice.recognizer import VoiceConfig

log = logging.getLogger(__name__)

# espeak-ng's cmn voice says about 0.86 字 per "word" of its rate setting (measured with pauses at
# punctuation: rate 130 → 110 字/min, 160 → 137 字/min).
_CHARS_PER_ESPEAK_WORD = 0.86
_DIGIT_RUN = re.compile(r"\d{3,}[\dXx]*")


def for_listening(text: str) -> str:
    """Numbers of 3+ digits read digit by digit (幺 for 1) with pauses: a reference or phone number
    said as "三千一百八十五万…" cannot be written down. Shorter numbers stay quantities (3份, 12月)."""
    return _DIGIT_RUN.sub(lambda m: spell_digits(m.group()), text)


@dataclass(frozen=True)
class Speech:
    """A synthesised prompt: a WAV file to <Play>, or (engine 'twilio_say') text for <Say>."""

    text: str  # what is said (after digit spelling)
    path: Path | None  # cached WAV, None when the channel should use <Say>
    seconds: float = 0.0
    cached: bool = False
    say_language: str = "zh-CN"

    @property
    def key(self) -> str:
        return self.path.stem if self.path else ""


class TextToSpeech(Protocol):
    name: str

    def speak(self, text: str) -> Speech:
        """Speech for `text` (digits are spelled here); cached, safe from several threads."""
        ...


class TtsUnavailable(RuntimeError):
    pass


class TwilioSay:
    """No local synthesis: channels render <Say language="zh-CN"> with the (digit-spelled) text."""

    name = "twilio_say"

    def speak(self, text: str) -> Speech:
        return Speech(for_listening(text), None)


class _CachedEngine:
    """Cache by a hash of (engine, voice, rate, text) under cache_dir; subclasses write one WAV."""

    name = "cached"

    def __init__(self, cache_dir: Path, *, chars_per_minute: int = 130, voice: str = "cmn") -> None:
        self.voice = voice
        self.chars_per_minute = chars_per_minute
        self.rate = max(60, round(chars_per_minute / _CHARS_PER_ESPEAK_WORD))
        self.cache_dir = cache_dir
        self.cache_dir.mkdir(parents=True, exist_ok=True)

    def cache_path(self, text: str) -> Path:
        digest = hashlib.sha256(f"{self.name}|{self.voice}|{self.rate}|{text}".encode()).hexdigest()
        return self.cache_dir / f"{digest[:32]}.wav"

    def speak(self, text: str) -> Speech:
        said = for_listening(text)
        path = self.cache_path(said)
        if path.exists():
            return Speech(said, path, _wav_seconds(path), cached=True)
        fd, tmp_name = tempfile.mkstemp(suffix=".wav", dir=self.cache_dir, prefix=".tts-")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            self.synthesize(said, tmp)
            if not tmp.exists() or tmp.stat().st_size <= 44:
                raise TtsUnavailable(f"{self.name} produced no audio for {said[:20]!r}")
            os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
        finally:
            tmp.unlink(missing_ok=True)
        return Speech(said, path, _wav_seconds(path), cached=False)

    def synthesize(self, text: str, path: Path) -> None:
        raise NotImplementedError

    def warm(self, texts: list[str]) -> int:
        """Synthesise prompts ahead of the first call (e.g. every sentence of domain.yml)."""
        made = 0
        for text in texts:
            if not self.speak(text).cached:
                made += 1
        return made


class EspeakNg(_CachedEngine):
    """The espeak-ng program (default engine)."""

    name = "espeak"

    def __init__(self, cache_dir: Path, *, chars_per_minute: int = 130, voice: str = "cmn") -> None:
        self.binary = shutil.which("espeak-ng")
        if self.binary is None:
            raise TtsUnavailable("espeak-ng is not installed (apt-get install espeak-ng)")
        super().__init__(cache_dir, chars_per_minute=chars_per_minute, voice=voice.split("/")[-1])

    def synthesize(self, text: str, path: Path) -> None:
        try:
            subprocess.run([self.binary, "-v", self.voice, "-s", str(self.rate), "-w", str(path)],
                           input=text.encode("utf-8"), capture_output=True, timeout=30, check=True)
        except (subprocess.SubprocessError, OSError) as exc:
            raise TtsUnavailable(f"espeak-ng failed: {exc}") from exc


class Pyttsx3Espeak(_CachedEngine):
    """espeak-ng in-process through pyttsx3 (engine `pyttsx3`)."""

    name = "pyttsx3"
    _lock = threading.Lock()  # espeak-ng is a process-wide C library with one output buffer
    _shared_engine = None

    def __init__(self, cache_dir: Path, *, chars_per_minute: int = 130, voice: str = "cmn") -> None:
        try:
            import pyttsx3
        except ImportError as exc:
            raise TtsUnavailable("pyttsx3 is not installed (pip install -r requirements.txt)") from exc
        with self._lock:
            if Pyttsx3Espeak._shared_engine is None:
                try:
                    with _quiet():
                        # One engine for the process, never collected: a second pyttsx3 engine
                        # re-initialises the espeak-ng library under the first.
                        Pyttsx3Espeak._shared_engine = pyttsx3.init("espeak")
                except Exception as exc:  # missing libespeak-ng raises OSError/RuntimeError in pyttsx3
                    raise TtsUnavailable(f"espeak-ng is not available ({exc}); apt-get install espeak-ng") from exc
            self._engine = Pyttsx3Espeak._shared_engine
        super().__init__(cache_dir, chars_per_minute=chars_per_minute,
                         voice=voice if "/" in voice else f"sit/{voice}")

    def synthesize(self, text: str, path: Path) -> None:
        with self._lock, _quiet():
            # pyttsx3 2.99 sometimes ends the very first loop of a process before espeak-ng has
            # delivered the audio (no file written); a second attempt always had it.
            for _ in range(3):
                _apply_settings(self._engine, self.voice, self.rate)
                path.unlink(missing_ok=True)
                self._engine.save_to_file(text, str(path))
                self._engine.runAndWait()
                _forget_pending_text(self._engine)
                if path.exists() and path.stat().st_size > 44:
                    break


def _apply_settings(engine, voice: str, rate: int) -> None:
    """Set voice and rate now, through the espeak driver's synchronous setter. pyttsx3 2.99 queues
    Engine.setProperty: queued with a save_to_file the file is lost, and flushed in a loop of its
    own the loop never ends (it waits for an utterance that never comes)."""
    driver = engine.proxy._driver
    driver.setProperty("voice", voice)
    driver.setProperty("rate", rate)


def _forget_pending_text(engine) -> None:
    # pyttsx3 2.99's espeak driver keeps the last text and file name and synthesises them again at
    # the start of the next loop (e.g. a property flush), re-creating a file we already moved.
    driver = getattr(getattr(engine, "proxy", None), "_driver", None)
    if driver is not None:
        driver._text_to_say = None
        driver._save_file = None


@contextlib.contextmanager
def _quiet():
    # pyttsx3 prints "Audio saved to …" on stdout; our CLIs write JSON there.
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _wav_seconds(path: Path) -> float:
    try:
        return read_wav(path).seconds
    except (OSError, ValueError):
        return 0.0


def build_tts(config: VoiceConfig, data_dir: Path) -> TextToSpeech:
    """The configured engine; falls back to <Say> (and logs why) when espeak-ng is missing."""
    if config.tts_engine == "twilio_say":
        return TwilioSay()
    engine = Pyttsx3Espeak if config.tts_engine == "pyttsx3" else EspeakNg
    try:
        return engine(data_dir / "tts", chars_per_minute=config.tts_rate, voice=config.tts_voice)
    except TtsUnavailable as exc:
        log.warning("local TTS unavailable: %s — prompts use Twilio <Say language=\"zh-CN\">", exc)
        return TwilioSay()
