"""espeak-ng voices: the fallback for Kokoro, and the only offline Cantonese voice (`yue`).

Mandarin uses `cmn-latn-pinyin`: the plain `cmn` voice reads pinyin tone numbers aloud ("nin two
hao three"), which Whisper base transcribes at CER > 1; `cmn-latn-pinyin` reads the tones (CER ≈ 0.85
in bench/RESULTS.md). Robotic, but every syllable is there and it starts in milliseconds.
- `EspeakNg`: the espeak-ng program, one short process per phrase: a crash cannot take the server
  down, and the rate is exact.
- `Pyttsx3Espeak`: the same library in-process through pyttsx3 2.99. Its espeak driver lost files
  on the first synthesis of a process and crashed at interpreter exit now and then in our tests —
  hence not the default.
"""
from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

from assistant.voice.audio import read_wav
from assistant.voice.tts import LocalVoice, TtsSettings, TtsUnavailable

# espeak-ng's Mandarin voices say about 0.86 字 per "word" of its rate setting.
_CHARS_PER_ESPEAK_WORD = 0.86
ESPEAK_RATE = 22_050


class EspeakNg(LocalVoice):
    name = "espeak"
    rate = ESPEAK_RATE

    def __init__(self, cache_dir: Path, settings: TtsSettings, voice: str | None = None) -> None:
        self.binary = shutil.which("espeak-ng")
        if self.binary is None:
            raise TtsUnavailable("espeak-ng is not installed (apt-get install espeak-ng)")
        self.voice = (voice or settings.espeak_voice).split("/")[-1]
        self.words_per_minute = max(60, round(settings.rate / _CHARS_PER_ESPEAK_WORD))
        super().__init__(cache_dir, settings)

    @property
    def identity(self) -> str:
        return f"espeak-ng|{self.voice}|{self.words_per_minute}"

    def render(self, text: str) -> np.ndarray:
        try:
            done = subprocess.run([self.binary, "-v", self.voice, "-s", str(self.words_per_minute), "--stdout"],
                                  input=text.encode("utf-8"), capture_output=True, timeout=30, check=True)
        except (subprocess.SubprocessError, OSError) as exc:
            raise TtsUnavailable(f"espeak-ng failed: {exc}") from exc
        audio = read_wav(done.stdout)
        return audio.samples.astype(np.float32)


class Pyttsx3Espeak(LocalVoice):
    name = "pyttsx3"
    rate = ESPEAK_RATE
    _lock = threading.Lock()  # espeak-ng is a process-wide C library with one output buffer
    _shared_engine = None

    def __init__(self, cache_dir: Path, settings: TtsSettings) -> None:
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
        voice = settings.espeak_voice
        self.voice = voice if "/" in voice else f"sit/{voice}"
        self.words_per_minute = max(60, round(settings.rate / _CHARS_PER_ESPEAK_WORD))
        super().__init__(cache_dir, settings)

    @property
    def identity(self) -> str:
        return f"pyttsx3|{self.voice}|{self.words_per_minute}"

    def render(self, text: str) -> np.ndarray:
        with tempfile.TemporaryDirectory(prefix="tts-") as tmp:
            path = Path(tmp) / "phrase.wav"
            with self._lock, _quiet():
                # pyttsx3 2.99 sometimes ends the very first loop of a process before espeak-ng has
                # delivered the audio (no file written); a second attempt always had it.
                for _ in range(3):
                    _apply_settings(self._engine, self.voice, self.words_per_minute)
                    self._engine.save_to_file(text, str(path))
                    self._engine.runAndWait()
                    _forget_pending_text(self._engine)
                    if path.exists() and path.stat().st_size > 44:
                        break
            if not path.exists():
                raise TtsUnavailable("pyttsx3 wrote no audio")
            return read_wav(path).samples.astype(np.float32)


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
