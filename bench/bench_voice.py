"""Speech benchmarks: CER/RTF ablation, closed-set choice accuracy, voice-turn latency.
(Text-to-speech: bench/bench_tts.py.)

    python bench/bench_voice.py [--dir /work/shared/speech_dev/mandarin] [--parts cer,closed,latency]

Audio: a folder of WAV + transcripts.tsv (as for `asr-eval`). The 8 kHz figures pass each file
through an 8 kHz G.711 μ-law phone line (assistant.voice.evaluate.as_telephone). Prints one JSON
line per measurement. Loopback only, bounded in count.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from assistant.config import load_settings  # noqa: E402
from assistant.voice.audio import read_wav  # noqa: E402
from assistant.voice.evaluate import as_telephone, edit_distance, read_transcripts, scoring_form  # noqa: E402
from assistant.voice.postprocess import strip_non_speech  # noqa: E402
from assistant.voice.recognizer import Expectation, VoiceConfig  # noqa: E402
from assistant.voice.whisper_asr import DecodeOptions, WhisperRecognizer, assemble_default_model  # noqa: E402

MACHINE = f"{platform.machine()} {os.cpu_count()} cores"
DOMAIN_MENU = ("办老年证", "订餐", "报修", "查进度", "人工服务")


def emit(**data) -> None:
    print(json.dumps({**data, "machine": MACHINE}, ensure_ascii=False), flush=True)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def load_set(directory: Path) -> list[tuple[str, str, object]]:
    return [(name, ref, read_wav(directory / name)) for name, ref in read_transcripts(directory)]


def variant(base: WhisperRecognizer, **options) -> WhisperRecognizer:
    clone = WhisperRecognizer.__new__(WhisperRecognizer)
    clone.__dict__.update(base.__dict__)
    clone.options = DecodeOptions(**options)
    return clone


def plain_transcribe(base: WhisperRecognizer, audio) -> str:
    """The plain model: faster-whisper's own transcribe, language forced, beam 5, nothing else."""
    segments, _ = base.model.transcribe(audio.to_16k().samples, language="zh", beam_size=5)
    return "".join(s.text for s in segments)


def corpus_cer(pairs: list[tuple[str, str]], raw: bool = False) -> float:
    errors = chars = 0
    for ref, hyp in pairs:
        r = strip_non_speech(ref) if raw else scoring_form(ref)
        h = strip_non_speech(hyp) if raw else scoring_form(hyp)
        errors += edit_distance(r, h)
        chars += len(r)
    return round(errors / max(1, chars), 4)


def bench_cer(base: WhisperRecognizer, data, directory: Path) -> None:
    steps = [
        ("own decoder, full 30 s window", dict(vad=False, telephone_level=False, min_window_seconds=30,
                                                full_window_above_seconds=0)),
        ("+ Silero VAD trim", dict(telephone_level=False, min_window_seconds=30, full_window_above_seconds=0)),
        ("+ encoder window cut to speech (≤8 s)", dict(telephone_level=False)),
        ("+ telephone level normalisation (= default)", dict()),
    ]
    for telephone in (False, True):
        clips = [(name, ref, as_telephone(a) if telephone else a) for name, ref, a in data]
        seconds = sum(a.seconds for _, _, a in clips)
        started = time.perf_counter()
        plain = [(ref, plain_transcribe(base, a)) for _, ref, a in clips]
        rtf = (time.perf_counter() - started) / seconds
        tag = "8k_mulaw" if telephone else "16k"
        emit(bench="asr_cer", audio=tag, step="plain faster-whisper (raw text)", cer=corpus_cer(plain, raw=True),
             rtf=round(rtf, 3), n=len(clips), dir=str(directory))
        emit(bench="asr_cer", audio=tag, step="+ OpenCC t2s, numbers as said", cer=corpus_cer(plain), rtf=round(rtf, 3),
             n=len(clips))
        for label, options in steps:
            rec = variant(base, **options)
            started = time.perf_counter()
            pairs = [(ref, rec.transcribe(a).text) for _, ref, a in clips]
            rtf = (time.perf_counter() - started) / seconds
            emit(bench="asr_cer", audio=tag, step=label, cer=corpus_cer(pairs), rtf=round(rtf, 3), n=len(clips))


def closed_sets(data) -> list[tuple[str, tuple[str, ...], list]]:
    """Menus built from the set itself: smart-home commands, place names, and the rest of the
    sentences with the domain menu as extra distractors."""
    temps = [d for d in data if d[1].startswith("设定") or d[1] == "调高温度"]
    temp_set = {d[0] for d in temps}
    places = [d for d in data if d[0].startswith("aishell1sample_") and d[0] not in temp_set]
    rest = [d for d in data if d not in temps and d not in places]
    out = []
    for name, group, extra in (("commands", temps, ()), ("places", places, ()), ("sentences", rest, DOMAIN_MENU)):
        if group:
            out.append((name, tuple(d[1] for d in group) + extra, group))
    return out


def bench_closed(base: WhisperRecognizer, data) -> None:
    methods = {
        "free text == phrase (plain model)": None,
        "similarity to 1-best (default)": dict(),
        "similarity to 5-best": dict(n_best=5),
        "biasing prompt + 5-best similarity": dict(bias_prompt=True, n_best=5),
    }
    for telephone in (False, True):
        tag = "8k_mulaw" if telephone else "16k"
        for label, options in methods.items():
            right = total = false_accepts = out_of_set = 0
            for _, phrases, group in closed_sets(data):
                for _, ref, audio in group:
                    audio = as_telephone(audio) if telephone else audio
                    total += 1
                    out_of_set += 1
                    others = tuple(p for p in phrases if p != ref)
                    if options is None:
                        said = scoring_form(plain_transcribe(base, audio))
                        right += said == scoring_form(ref)
                        continue
                    rec = variant(base, **options)
                    chosen = rec.transcribe(audio, Expectation(phrases, closed=True)).choice
                    right += chosen is not None and chosen.phrase == ref and chosen.confidence >= 0.5
                    # Same audio, its true phrase removed from the menu: must not be accepted.
                    wrong = rec.transcribe(audio, Expectation(others, closed=True)).choice
                    false_accepts += wrong is not None and wrong.confidence >= 0.5
            emit(bench="closed_set", audio=tag, method=label, accuracy=round(right / total, 3), n=total,
                 out_of_set_false_accept=None if options is None else round(false_accepts / out_of_set, 3))


def bench_latency(data, turns: int) -> None:
    """3 s utterance → reply audio ready: VAD + ASR + NLU + dialogue (real core, SQLite) + TTS."""
    from assistant.types import UserMessage
    from assistant.voice.engines import build_recognizer
    from assistant.voice.phrases import heard_answer
    from assistant.voice.recognizer import notify_decoded
    from assistant.voice.tts_select import build_tts
    from runtime.container import build_runtime

    tmp = Path(tempfile.mkdtemp(prefix="bench-voice-"))
    settings = load_settings({**os.environ, "DATA_DIR": str(tmp), "DATABASE_URL": f"sqlite:///{tmp / 'b.db'}"})
    runtime = build_runtime(settings)
    config = VoiceConfig.from_config(settings.config)
    recognizer = build_recognizer(config, settings.env, settings.model_dir)
    if recognizer is None:
        raise SystemExit("latency bench: no recogniser configured (config.yml voice.recognizer)")
    clips = [a for _, _, a in data if 2.0 <= a.seconds <= 4.0]
    for telephone in (False, True):
        for cache in ("cold", "warm"):
            tts = build_tts(config, tmp / f"tts-{telephone}-{cache}")
            totals, asr = [], []
            for i in range(turns):
                audio = clips[i % len(clips)]
                audio = as_telephone(audio) if telephone else audio
                if cache == "cold":
                    shutil.rmtree(tts.mandarin.cache_dir, ignore_errors=True)
                    tts.mandarin.phrase_dir.mkdir(parents=True)
                    tts.mandarin._memory.clear()  # cold: nothing said before

                # What a voice channel does per turn: recognise, hand the text to the core, speak the reply.
                started = time.perf_counter()
                transcript = recognizer.transcribe(audio)
                notify_decoded(transcript)
                heard = time.perf_counter()
                text, _ = heard_answer(transcript, config.closed_set_min_confidence)
                turn = runtime.assistant.turn(UserMessage(sender_id=f"v{i}", text=text, channel="voice"))
                reply = turn.replies[-1]
                tts.speak(reply.speech or reply.text)
                totals.append((time.perf_counter() - started) * 1000)
                asr.append((heard - started) * 1000)
            emit(bench="voice_turn", audio="8k_mulaw" if telephone else "16k", tts_cache=cache, turns=turns,
                 utterance_seconds=f"{min(a.seconds for a in clips):.1f}-{max(a.seconds for a in clips):.1f}",
                 p50_ms=round(statistics.median(totals)), p95_ms=round(pct(totals, 95)),
                 asr_p50_ms=round(statistics.median(asr)), asr_p95_ms=round(pct(asr, 95)))
    shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", default="/work/shared/speech_dev/mandarin")
    parser.add_argument("--parts", default="cer,closed,latency")
    parser.add_argument("--turns", type=int, default=20)
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    directory = Path(args.dir)
    settings = load_settings()
    config = VoiceConfig.from_config(settings.config)
    data = load_set(directory)
    if parts & {"cer", "closed"}:
        cache = Path(os.environ.get("MODEL_DIR", ROOT / "models")) / "asr"
        base = WhisperRecognizer(assemble_default_model(cache), replace(DecodeOptions(), beam_size=config.beam_size))
        if "cer" in parts:
            bench_cer(base, data, directory)
        if "closed" in parts:
            bench_closed(base, data)
    if "latency" in parts:
        bench_latency(data, args.turns)


if __name__ == "__main__":
    main()
