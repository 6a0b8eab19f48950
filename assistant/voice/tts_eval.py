"""How well a voice is understood: speak each prompt, transcribe it with the offline recogniser,
and score the transcript against what was meant to be said (`python -m assistant tts-eval`).

Whisper is a stand-in listener, not an older person on a bad line, but a voice Whisper cannot
follow is one a senior will not follow either (espeak-ng `cmn` scored CER > 1 here).
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from assistant.voice.audio import TELEPHONE_RATE, Audio, mulaw_decode, mulaw_encode, read_wav, resample
from assistant.voice.evaluate import edit_distance
from assistant.voice.postprocess import simplified, spoken_form, strip_non_speech
from assistant.voice.prompts import Prompt
from assistant.voice.recognizer import Recognizer
from assistant.voice.tts import TextToSpeech, for_listening

_ASCII_DIGIT = str.maketrans("0123456789", "零一二三四五六七八九")
# Readings that are the same syllables for a listener: 幺 is "one" on a phone, 两 is "two".
_SAME_SOUND = str.maketrans({"幺": "一", "两": "二", "〇": "零", "叉": "x", "乂": "x"})


def _score_form(text: str) -> str:
    text = strip_non_speech(simplified(text)).lower().translate(_SAME_SOUND)
    return "".join("一" if ch in _YAO else ch for ch in text)


def _yao_characters() -> frozenset[str]:
    """Characters read "yao" in any tone. Whisper has no idea that 幺 is how "1" is said on the
    phone and writes 要/腰/遥/咬 for it; a caller hears "yao" and writes 1. Merged on both sides, so
    要 ("want") in a prompt is scored the same way."""
    from pypinyin import Style, lazy_pinyin

    common = "幺要腰邀妖遥摇谣瑶窑姚尧咬舀药耀曜夭吆杳"
    return frozenset(ch for ch in common if lazy_pinyin(ch, style=Style.NORMAL)[0] == "yao")


_YAO = _yao_characters()


def score(meant: str, heard: str) -> tuple[int, int]:
    """(character errors, reference characters). Whisper writes a number as digits or as words at
    random ("幺三七" → "137"): the hypothesis is read both ways and the closer reading counts."""
    ref = _score_form(meant)
    readings = {_score_form(spoken_form(heard)), _score_form(simplified(heard).translate(_ASCII_DIGIT))}
    return min(edit_distance(ref, h) for h in readings), len(ref)


def telephone_line(audio: Audio) -> Audio:
    """What a caller hears: 8 kHz G.711 μ-law."""
    samples = audio.samples if audio.rate == TELEPHONE_RATE else resample(audio.samples, audio.rate, TELEPHONE_RATE)
    return Audio(mulaw_decode(mulaw_encode(np.clip(samples, -1.0, 1.0))), TELEPHONE_RATE, telephone=True)


def half_of(prompt: Prompt) -> str:
    """'tune' or 'confirm', fixed by the prompt's source: voices are chosen on one half and the
    choice is checked on the other (house rule 8)."""
    return "tune" if hashlib.sha256(prompt.source.encode()).digest()[0] % 2 == 0 else "confirm"


@dataclass(frozen=True)
class EvalLine:
    source: str
    said: str  # what the voice was asked to say (digits spelled)
    heard: str
    errors: int
    ref_chars: int
    audio_seconds: float
    synth_seconds: float
    chars_per_minute: float  # speaking pace, Chinese characters per minute of audio

    @property
    def cer(self) -> float:
        return self.errors / self.ref_chars if self.ref_chars else 0.0


def evaluate(tts: TextToSpeech, recognizer: Recognizer, prompts: Iterable[Prompt], *,
             telephone: bool = False) -> Iterator[EvalLine]:
    for prompt in prompts:
        said = for_listening(prompt.text)
        started = time.perf_counter()
        speech = tts.speak(prompt.text)
        synth = time.perf_counter() - started
        if speech.path is None:
            raise ValueError(f"{tts.name} makes no local audio to evaluate")
        audio = read_wav(speech.path)
        heard_audio = telephone_line(audio) if telephone else audio
        heard = recognizer.transcribe(heard_audio).text
        errors, chars = score(said, heard)
        hanzi = sum(1 for ch in said if "\u4e00" <= ch <= "\u9fff")
        yield EvalLine(prompt.source, said, heard, errors, chars, audio.seconds, synth,
                       hanzi / audio.seconds * 60 if audio.seconds else 0.0)


def summarise(lines: list[EvalLine]) -> dict[str, float | int]:
    errors, chars = sum(x.errors for x in lines), sum(x.ref_chars for x in lines)
    audio = sum(x.audio_seconds for x in lines)
    hanzi = sum(x.chars_per_minute * x.audio_seconds / 60 for x in lines)
    return {"prompts": len(lines), "cer": round(errors / chars, 4) if chars else 0.0, "errors": errors,
            "ref_chars": chars, "audio_seconds": round(audio, 1),
            "chars_per_minute": round(hanzi / audio * 60, 1) if audio else 0.0,
            "worst_cer": round(max((x.cer for x in lines), default=0.0), 3)}
