"""Vosk recogniser: an operator-provided Kaldi model (e.g. vosk-model-small-cn-0.22) at VOSK_MODEL_PATH.

No registry ships a Chinese Vosk model and `Model(lang="cn")` would download one, so a model is
only ever loaded from the configured path. For closed sets Vosk gets a grammar (the expected
phrases plus "[unk]"), which makes its small model much more accurate on 是/不是 or digits.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from assistant.voice.audio import Audio
from assistant.voice.closed_set import Hypothesis, choose
from assistant.voice.postprocess import core_form, spoken_form
from assistant.voice.recognizer import Expectation, RecognizerUnavailable, Transcript, VoiceConfig
from assistant.voice.vad import speech_span


class VoskRecognizer:
    name = "vosk"

    def __init__(self, model_path: Path) -> None:
        try:
            import vosk
        except ImportError as exc:
            raise RecognizerUnavailable("vosk is not installed (pip install -r requirements.txt)") from exc
        if not (model_path / "am").is_dir() and not (model_path / "conf").is_dir():
            raise RecognizerUnavailable(f"VOSK_MODEL_PATH={model_path} does not look like a Vosk model directory")
        vosk.SetLogLevel(-1)
        self._vosk = vosk
        self.model_path = model_path
        self.model = vosk.Model(str(model_path))
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, config: VoiceConfig, env: Mapping[str, str]) -> VoskRecognizer:
        path = env.get("VOSK_MODEL_PATH")
        if not path:
            raise RecognizerUnavailable("voice.recognizer is 'vosk' but VOSK_MODEL_PATH is not set")
        return cls(Path(path))

    def transcribe(self, audio: Audio, expect: Expectation | None = None) -> Transcript:
        started = time.perf_counter()
        expect = expect or Expectation()
        audio16 = audio.to_16k()
        span = speech_span(audio16)
        if not span.found:
            return Transcript("", "", 0.0, 0.0, 0.0, audio16.seconds, time.perf_counter() - started,
                              self.name, no_speech=True)
        if expect.closed and expect.phrases:
            grammar = json.dumps([spoken_form(p) for p in expect.phrases] + ["[unk]"], ensure_ascii=False)
            rec = self._vosk.KaldiRecognizer(self.model, 16000, grammar)
        else:
            rec = self._vosk.KaldiRecognizer(self.model, 16000)
        rec.SetWords(True)
        rec.SetMaxAlternatives(0)
        pcm = (np.clip(audio16.samples, -1, 1) * 32767).astype("<i2").tobytes()
        with self._lock:
            rec.AcceptWaveform(pcm)
            result = json.loads(rec.FinalResult())
        raw = result.get("text", "").replace(" ", "").replace("[unk]", "")
        words = result.get("result") or []
        confidence = float(np.mean([w.get("conf", 0.0) for w in words])) if words else 0.0
        text = spoken_form(raw)
        choice, ranking = None, ()
        if expect.closed and expect.phrases:
            hyp = Hypothesis(raw, float(np.log(max(confidence, 1e-6))), max(1, len(words)))
            ranking = tuple(choose([hyp], expect.phrases))
            choice = ranking[0] if ranking else None
        return Transcript(text, core_form(raw), round(confidence, 4), span.start, span.end, audio16.seconds,
                          time.perf_counter() - started, self.name, no_speech=not text, choice=choice,
                          ranking=ranking)
