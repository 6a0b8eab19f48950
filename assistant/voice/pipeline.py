"""One voice turn as typed stages: audio → ASR → (core: NLU + dialogue) → TTS, with coded errors.

Channels (Twilio webhooks, Media Streams, kiosk) build a `VoiceTurnRequest` and call
`run_voice_turn`; they only render the result (<Play> the WAV or <Say> the text, keep listening).
Each error code has its own recovery prompt, so a resident hears *why* we ask again:

  asr-no-speech       nothing was said (silence, line noise)
  asr-low-confidence  something was said but we are not sure what
  asr-unavailable     no recogniser / it failed or took too long → offer the keypad
  nlu-unknown         heard clearly, but not understood (only when the caller asks us to check)
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from assistant.types import Reply
from assistant.voice.audio import Audio
from assistant.voice.recognizer import DecodePool, Expectation, Recognizer, Transcript, VoiceConfig, notify_decoded
from assistant.voice.tts import Speech, TextToSpeech

log = logging.getLogger(__name__)


class VoiceErrorCode(StrEnum):
    NO_SPEECH = "asr-no-speech"
    LOW_CONFIDENCE = "asr-low-confidence"
    UNAVAILABLE = "asr-unavailable"
    NLU_UNKNOWN = "nlu-unknown"


RECOVERY_PROMPTS: Mapping[VoiceErrorCode, str] = {
    VoiceErrorCode.NO_SPEECH: "我没有听到您说话。请在提示音后慢慢说，或者按电话上的数字键。",
    VoiceErrorCode.LOW_CONFIDENCE: "不好意思，我没听清楚。请您再说一遍，说慢一点。",
    VoiceErrorCode.UNAVAILABLE: "现在语音识别有点问题。请按电话上的数字键选择，按零转人工。",
    VoiceErrorCode.NLU_UNKNOWN: "我听到了，但是没明白您要办什么。您可以说“办老年证”“订餐”“报修”，或者说“人工”。",
}


@dataclass(frozen=True)
class VoiceError:
    code: VoiceErrorCode
    prompt: str
    detail: str = ""


@dataclass(frozen=True)
class VoiceTurnRequest:
    audio: Audio
    expect: Expectation = Expectation()


@dataclass(frozen=True)
class VoiceTurnResult:
    transcript: Transcript | None
    user_text: str | None  # what was handed to the core (closed-set choice or core_text)
    reply: Reply  # the core's reply, or the recovery prompt for `error`
    speech: Speech
    error: VoiceError | None = None
    timings: Mapping[str, float] = field(default_factory=dict)  # seconds per stage


def check_transcript(t: Transcript, config: VoiceConfig) -> tuple[str | None, VoiceError | None]:
    """The text to hand to the core, or the coded error to recover from."""
    if t.no_speech or not t.text:
        return None, _error(VoiceErrorCode.NO_SPEECH)
    if t.choice is not None:
        if t.choice.confidence >= config.closed_set_min_confidence:
            return t.choice.phrase, None
        # Not clearly one of the options: free text may still carry something else ("人工").
        if t.confidence < config.min_confidence:
            return None, _error(VoiceErrorCode.LOW_CONFIDENCE, f"choice {t.choice.phrase} {t.choice.confidence:.2f}")
    if t.confidence < config.min_confidence:
        return None, _error(VoiceErrorCode.LOW_CONFIDENCE, f"confidence {t.confidence:.2f}")
    return t.core_text, None


def _error(code: VoiceErrorCode, detail: str = "") -> VoiceError:
    return VoiceError(code, RECOVERY_PROMPTS[code], detail)


def run_voice_turn(request: VoiceTurnRequest, recognizer: Recognizer | DecodePool | None,
                   respond: Callable[[str], Reply], tts: TextToSpeech, config: VoiceConfig,
                   intent_of: Callable[[str], str] | None = None) -> VoiceTurnResult:
    """Recognise, hand the text to the core (`respond`), synthesise the reply. Never raises for
    recogniser trouble: that becomes a coded error with its recovery prompt.

    `intent_of` (optional) lets a step reject text the NLU cannot place (`nlu_fallback`) with the
    nlu-unknown prompt instead of passing it to the dialogue.
    """
    timings: dict[str, float] = {}
    started = time.perf_counter()
    transcript: Transcript | None = None
    error: VoiceError | None = None
    text: str | None = None
    if recognizer is None:
        error = _error(VoiceErrorCode.UNAVAILABLE, "no recogniser configured")
    else:
        try:
            if isinstance(recognizer, DecodePool):
                transcript = recognizer.transcribe(request.audio, request.expect, timeout=config.decode_timeout_seconds)
            else:
                transcript = recognizer.transcribe(request.audio, request.expect)
                notify_decoded(transcript)  # a pool notifies by itself
        except Exception as exc:  # timeouts, remote failures, a broken model: degrade, never crash
            log.warning("recognition failed: %s", exc)
            error = _error(VoiceErrorCode.UNAVAILABLE, str(exc))
        timings["asr"] = time.perf_counter() - started
        if transcript is not None:
            text, error = check_transcript(transcript, config)
    if text is not None and intent_of is not None and intent_of(text) == "nlu_fallback":
        error, text = _error(VoiceErrorCode.NLU_UNKNOWN, text), None
    mark = time.perf_counter()
    if error is not None:
        reply = Reply(text=error.prompt)
    else:
        reply = respond(text or "")
    timings["core"] = time.perf_counter() - mark
    mark = time.perf_counter()
    speech = tts.speak(reply.speech or reply.text)
    timings["tts"] = time.perf_counter() - mark
    timings["total"] = time.perf_counter() - started
    return VoiceTurnResult(transcript, text, reply, speech, error, timings)
