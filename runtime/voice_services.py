"""Speech services shared by the voice channels (kiosk, phone Media Streams): one recogniser per
process behind a decode pool, and the TTS engine with its cache. Each is built on first use, so
a touch-only kiosk never loads the recogniser, and a server whose recogniser cannot load still
serves every other channel (and says why in `doctor`)."""
from __future__ import annotations

import logging
import threading
from functools import cached_property
from pathlib import Path
from typing import Any

from assistant.voice.engines import shared_recognizer, unavailable_reason
from assistant.voice.recognizer import DecodePool, VoiceConfig
from assistant.voice.tts import TextToSpeech, build_tts

log = logging.getLogger(__name__)


class VoiceServices:
    def __init__(self, config: VoiceConfig, env: Any, model_dir: Path, data_dir: Path) -> None:
        self.config = config
        self._env, self._model_dir = env, model_dir
        self.tts_dir = data_dir / "tts"
        self._data_dir = data_dir
        self._build = threading.Lock()

    @cached_property
    def pool(self) -> DecodePool | None:
        with self._build:
            recognizer = shared_recognizer(self.config, self._env, self._model_dir)
            return DecodePool(recognizer, self.config.decode_workers) if recognizer is not None else None

    @property
    def unavailable(self) -> str | None:
        return unavailable_reason(self.config)

    @cached_property
    def tts(self) -> TextToSpeech:
        with self._build:
            return build_tts(self.config, self._data_dir)

    @property
    def local_voice(self) -> bool:
        """A local engine makes audio files (the kiosk, Media Streams); `twilio_say` does not."""
        return self.tts.name != "twilio_say"

    def speech_file(self, text: str) -> Path | None:
        if not text or not self.local_voice:
            return None
        return self.tts.speak(text).path

    def tts_url(self, text: str, prefix: str) -> str | None:
        path = self.speech_file(text)
        return f"{prefix}{path.name}" if path else None

    def tts_file(self, name: str) -> Path | None:
        if not name.endswith(".wav") or "/" in name or name.startswith("."):
            return None
        path = self.tts_dir / name
        return path if path.is_file() else None
