"""Character error rate over a directory of WAV files + transcripts.tsv (used by `asr-eval` and bench)."""
from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from assistant.voice.audio import Audio, read_wav, telephone_copy
from assistant.voice.audio import mulaw_decode as _mulaw_decode
from assistant.voice.postprocess import spoken_form
from assistant.voice.recognizer import Expectation, Recognizer


def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def scoring_form(text: str) -> str:
    """Both sides are compared simplified, without punctuation, numbers as said (二十九, 二零一一)."""
    return spoken_form(text).lower()


def char_errors(ref: str, hyp: str) -> tuple[int, int]:
    """(edits, reference characters) in the scoring form: sum both over a set for a corpus CER."""
    r, h = scoring_form(ref), scoring_form(hyp)
    return edit_distance(r, h), len(r)


def cer(ref: str, hyp: str) -> float:
    errors, chars = char_errors(ref, hyp)
    if not chars:
        return 0.0 if not errors else 1.0
    return errors / chars


def read_transcripts(directory: Path) -> list[tuple[str, str]]:
    """`file<TAB>text` lines (extra columns ignored; blank lines, # comments and a header skipped)."""
    path = directory / "transcripts.tsv"
    rows = []
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        cols = line.split("\t")
        if len(cols) < 2:
            continue
        name, text = cols[0].strip(), cols[1].strip()
        if name.lower() in ("file", "filename", "path") and text.lower() in ("text", "transcript", "sentence"):
            continue
        rows.append((name, text))
    return rows


@dataclass(frozen=True)
class EvalRow:
    file: str
    ref: str
    hyp: str
    cer: float
    seconds: float  # decode wall time
    audio_seconds: float
    errors: int
    ref_chars: int
    error: str | None = None


def as_telephone(audio: Audio) -> Audio:
    """What the same recording sounds like through a phone line: 8 kHz μ-law."""
    return Audio(_mulaw_decode(telephone_copy(audio.to_16k().samples)), 8000, telephone=True)


def evaluate_dir(recognizer: Recognizer, directory: Path, *, telephone: bool = False,
                 expect: Expectation | None = None) -> Iterator[EvalRow]:
    for name, ref in read_transcripts(directory):
        path = directory / name
        try:
            audio = read_wav(path)
        except (OSError, ValueError) as exc:
            yield EvalRow(name, ref, "", 1.0, 0.0, 0.0, len(scoring_form(ref)), len(scoring_form(ref)), str(exc))
            continue
        if telephone:
            audio = as_telephone(audio)
        started = time.perf_counter()
        result = recognizer.transcribe(audio, expect)
        seconds = time.perf_counter() - started
        r, h = scoring_form(ref), scoring_form(result.text)
        errors = edit_distance(r, h)
        yield EvalRow(name, ref, result.text, errors / max(1, len(r)), seconds, audio.seconds, errors, len(r))


def summary(rows: list[EvalRow]) -> dict[str, float | int]:
    """Corpus CER (total errors / total reference characters) and RTF (decode time / audio time)."""
    chars = sum(r.ref_chars for r in rows)
    audio = sum(r.audio_seconds for r in rows)
    return {
        "cer": round(sum(r.errors for r in rows) / chars, 4) if chars else 0.0,
        "rtf": round(sum(r.seconds for r in rows) / audio, 4) if audio else 0.0,
        "n": len(rows),
        "failed": sum(1 for r in rows if r.error),
        "audio_seconds": round(audio, 2),
    }
