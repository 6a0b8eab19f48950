"""Remote/cloud recogniser slot (disabled by default: audio of residents leaves the machine).

Enable with `voice.recognizer: remote` and `voice.remote_url` (or ASR_REMOTE_URL); optional bearer
token in ASR_REMOTE_TOKEN. The HTTP contract an adapter service must implement:

    POST {url}
    Content-Type: audio/wav            body: 16 kHz mono 16-bit PCM WAV
    X-Asr-Language: zh
    X-Asr-Phrases: <JSON list of expected phrases, UTF-8, percent-encoded>   (may be absent)
    X-Asr-Closed: 1 | 0
    Authorization: Bearer <token>      (when ASR_REMOTE_TOKEN is set)

    200 application/json  {"text": "…", "confidence": 0.0-1.0}
    any other status, a bad body or a timeout → RemoteAsrError; the voice pipeline turns that into
    `asr-unavailable` (keypad fallback) for the turn, never a crash.
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping

from assistant.voice.audio import Audio, write_wav
from assistant.voice.closed_set import Hypothesis, choose
from assistant.voice.postprocess import core_form, spoken_form
from assistant.voice.recognizer import Expectation, RecognizerUnavailable, Transcript, VoiceConfig


class RemoteAsrError(RuntimeError):
    pass


class RemoteRecognizer:
    name = "remote"

    def __init__(self, url: str, token: str | None = None, timeout: float = 8.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise RecognizerUnavailable(f"remote recogniser URL {url!r} is not http(s)")
        self.url, self.token, self.timeout = url, token, timeout

    @classmethod
    def from_env(cls, config: VoiceConfig, env: Mapping[str, str]) -> RemoteRecognizer:
        url = env.get("ASR_REMOTE_URL") or config.remote_url
        if not url:
            raise RecognizerUnavailable("voice.recognizer is 'remote' but no voice.remote_url / ASR_REMOTE_URL")
        return cls(url, env.get("ASR_REMOTE_TOKEN"), timeout=min(config.decode_timeout_seconds, 12.0))

    def transcribe(self, audio: Audio, expect: Expectation | None = None) -> Transcript:
        started = time.perf_counter()
        expect = expect or Expectation()
        audio16 = audio.to_16k()
        headers = {"Content-Type": "audio/wav", "X-Asr-Language": "zh", "X-Asr-Closed": "1" if expect.closed else "0"}
        if expect.phrases:
            headers["X-Asr-Phrases"] = urllib.parse.quote(json.dumps(list(expect.phrases), ensure_ascii=False))
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url, data=write_wav(audio16.samples, 16000), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 (configured URL)
                body = json.loads(response.read().decode("utf-8"))
            raw, confidence = str(body.get("text", "")), float(body.get("confidence", 0.0))
        except (urllib.error.URLError, TimeoutError, ValueError, OSError) as exc:
            raise RemoteAsrError(f"remote recogniser failed: {exc}") from exc
        text = spoken_form(raw)
        ranking = tuple(choose([Hypothesis(raw, 0.0, 1)], expect.phrases)) if expect.closed and expect.phrases else ()
        return Transcript(text, core_form(raw), confidence, 0.0, audio16.seconds, audio16.seconds,
                          time.perf_counter() - started, self.name, no_speech=not text,
                          choice=ranking[0] if ranking else None, ranking=ranking)
