"""Picks and loads the recogniser that config.yml names, once per process.

    rec = shared_recognizer(VoiceConfig.from_config(config))   # None → keys / Twilio <Gather>

Kept apart from recognizer.py so the interface imports no implementation: each implementation
imports the interface, and only this module knows them all.
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path

from assistant.voice.recognizer import Recognizer, RecognizerUnavailable, VoiceConfig

log = logging.getLogger(__name__)


def default_cache_dir(env: Mapping[str, str], model_dir: Path | None = None) -> Path:
    """Where the assembled Whisper model lives: MODEL_DIR/asr (next to the cached NLU models)."""
    base = Path(env.get("MODEL_DIR") or model_dir or Path(__file__).resolve().parents[2] / "models")
    return base / "asr"


def build_recognizer(config: VoiceConfig, env: Mapping[str, str] | None = None,
                     model_dir: Path | None = None) -> Recognizer:
    """The configured recogniser, loaded now; RecognizerUnavailable with a plain reason otherwise."""
    env = os.environ if env is None else env
    kind = config.recognizer
    if kind == "none":
        raise RecognizerUnavailable("voice.recognizer is 'none' in config.yml")
    if kind == "faster_whisper":
        from assistant.voice.whisper_asr import WhisperRecognizer

        return WhisperRecognizer.from_env(config, env, default_cache_dir(env, model_dir))
    if kind == "vosk":
        from assistant.voice.vosk_asr import VoskRecognizer

        return VoskRecognizer.from_env(config, env)
    if kind == "remote":
        from assistant.voice.remote_asr import RemoteRecognizer

        return RemoteRecognizer.from_env(config, env)
    raise RecognizerUnavailable(f"unknown voice.recognizer {kind!r} (faster_whisper, vosk, remote or none)")


_shared: dict[str, Recognizer | None] = {}
_shared_errors: dict[str, str] = {}
_shared_lock = threading.Lock()


def shared_recognizer(config: VoiceConfig, env: Mapping[str, str] | None = None,
                      model_dir: Path | None = None) -> Recognizer | None:
    """One recogniser per process (the model is big): built on first use, then reused.

    Returns None when none can be built; the reason is logged once and kept in `unavailable_reason`.
    Callers then fall back to keypad, touch and Twilio's own speech recognition.
    """
    key = _shared_key(config)
    with _shared_lock:
        if key not in _shared:
            try:
                _shared[key] = build_recognizer(config, env, model_dir)
            except RecognizerUnavailable as exc:
                _shared[key], _shared_errors[key] = None, str(exc)
                log.warning("speech recognition unavailable: %s — using keys and Twilio's recogniser", exc)
        return _shared[key]


def unavailable_reason(config: VoiceConfig) -> str | None:
    return _shared_errors.get(_shared_key(config))


def _shared_key(config: VoiceConfig) -> str:
    return (f"{config.recognizer}:{config.beam_size}:{config.cpu_threads}:{config.compute_type}:{config.decode_workers}"
            f":{config.fast_decoder}")
