"""Which voice speaks: the configured engine, with Kokoro → espeak-ng → Twilio <Say> as each one
is missing. Kept apart from tts.py, which the engines themselves build on."""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from assistant.voice.espeak_tts import EspeakNg, Pyttsx3Espeak
from assistant.voice.recognizer import VoiceConfig
from assistant.voice.tts import LocalVoice, TextToSpeech, TtsSettings, TtsUnavailable, TwilioSay, Voices

log = logging.getLogger(__name__)


def _local_engine(kind: str, cache_dir: Path, settings: TtsSettings, backup: LocalVoice | None = None) -> LocalVoice:
    if kind == "kokoro":
        from assistant.voice.kokoro_tts import KokoroVoice

        voice: LocalVoice = KokoroVoice(cache_dir / "kokoro", settings)
        voice.backup = backup
        return voice
    engine = Pyttsx3Espeak if kind == "pyttsx3" else EspeakNg
    return engine(cache_dir / kind, settings)


def build_tts(config: VoiceConfig, data_dir: Path, cache_key: bytes = b"") -> Voices:
    """The configured voice; Kokoro → espeak-ng → Twilio <Say> as each one is missing (logged, and
    shown by `doctor` as `fallback_reason`). `cache_key` keys the cache's file names."""
    settings = replace(TtsSettings.from_config(config), cache_key=cache_key)
    cache_dir = data_dir / "tts"
    if settings.engine == "twilio_say":
        return Voices(TwilioSay(settings), None, settings)

    espeak: LocalVoice | None = None
    espeak_missing = None
    if settings.fallback == "espeak" or settings.engine in ("espeak", "pyttsx3"):
        try:
            espeak = _local_engine("pyttsx3" if settings.engine == "pyttsx3" else "espeak", cache_dir, settings)
        except TtsUnavailable as exc:
            espeak_missing = str(exc)
    try:
        cantonese: TextToSpeech = EspeakNg(cache_dir / "espeak-yue", settings, voice=settings.cantonese_voice)
    except TtsUnavailable:
        cantonese = TwilioSay(settings)
    mandarin: TextToSpeech | None = None
    reason = None
    if settings.engine == "kokoro":
        try:
            mandarin = _local_engine("kokoro", cache_dir, settings, backup=espeak)
        except TtsUnavailable as exc:
            reason, mandarin = f"Kokoro unavailable: {exc}", espeak
    elif settings.engine in ("espeak", "pyttsx3"):
        mandarin = espeak
    else:
        reason = f"unknown voice.tts.engine {settings.engine!r} (kokoro, espeak, pyttsx3, twilio_say)"
        mandarin = espeak
    if mandarin is None:
        reason = "; ".join(r for r in (reason, espeak_missing) if r) + " — prompts use Twilio <Say>"
        mandarin = TwilioSay(settings)
    if reason:
        log.warning("TTS: %s — speaking with %s", reason, mandarin.name)
    voices = Voices(mandarin, cantonese, settings, reason)
    voices.backup_missing = espeak_missing if settings.fallback == "espeak" else None
    return voices
