"""ASR on held-out conditions (issue 16): the plain model vs the project pipeline vs its ablations.

    python bench/bench_asr_conditions.py [--halves tuning,confirmation] [--conditions clean,telephone,…]
                                         [--configs plain,pipeline,no_vad,…] [--probes 5] [--cache DIR]
                                         [--variant NAME:FIELD=VALUE/…] [--verbose]

For each half of /work/shared/speech_dev/mandarin (bench/asr_split.yml) × condition (bench/asr_conditions.py)
every clip is decoded by
  plain      faster_whisper.WhisperModel(dir, device="cpu", compute_type="int8").transcribe(samples,
             language="zh", beam_size=5): defaults, no prompt, no VAD filter
  pipeline   WhisperRecognizer.transcribe with the default DecodeOptions
  no_*       the pipeline with one of its steps turned off (ABLATIONS)
  with_*, fast, old   the pipeline with a dropped step turned back on (ADDITIONS); old = before issue 16
Both share one model loaded with cpu_threads=2. Where the pipeline's trace shows that the step a
configuration removes did not fire (or the step it adds cannot fire), its answer is the pipeline's and is
not decoded again ("reused"). The dialect folder is a row of its own; the probes (silence, pink noise, DTMF
keys, babble: no speech at all) count confident answers (not no_speech and confidence ≥ voice.min_confidence).
CER = total edits / total reference characters, both sides in the scoring form (simplified, numbers as
said; assistant.voice.evaluate). RTF = decode time / audio time. One JSON line per measurement, a
table, and a closing JSON line with everything.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import asr_conditions as conditions  # noqa: E402

from assistant.voice.audio import Audio, read_wav  # noqa: E402
from assistant.voice.evaluate import char_errors, read_transcripts  # noqa: E402
from assistant.voice.recognizer import VoiceConfig  # noqa: E402
from assistant.voice.whisper_asr import DecodeOptions, WhisperRecognizer, assemble_default_model  # noqa: E402

MANDARIN = Path("/work/shared/speech_dev/mandarin")
DIALECT = Path("/work/shared/speech_dev/dialect")
# Each step of WhisperRecognizer.transcribe that is on by default, turned off in turn (name: options, step).
ABLATIONS: dict[str, tuple[dict[str, object], str]] = {
    "no_vad": ({"vad": False}, "vad"),
    "no_trim": ({"vad_trim": "never"}, "vad_trim"),
    "no_tame": ({"tame_loops": False}, "tame_loops"),
    "no_guard": ({"hallucination_guard": False}, "hallucination_guard"),
}
# Each step that is off by default (dropped by this benchmark), turned on in turn; `old` is the pipeline
# as it was before issue 16 (fast decoder with the window cut, VAD trim of all audio, telephone level).
ADDITIONS: dict[str, dict[str, object]] = {
    "with_trim": {"vad_trim": "always"},
    "with_level": {"telephone_level": True},
    "with_fallback": {"temperature_fallback": True},
    "with_retries": {"retries": True},
    "fast": {"fast_decoder": True, "retries": True},
    "old": {"fast_decoder": True, "retries": True, "vad_trim": "always", "telephone_level": True},
}
MIN_CONFIDENCE = VoiceConfig().min_confidence


@dataclass(frozen=True)
class Result:
    text: str
    errors: int
    chars: int
    seconds: float
    audio_seconds: float
    reask: bool  # no_speech or confidence under the re-ask threshold (plain: empty text)
    confidence: float | None = None  # pipeline configurations only
    no_speech: bool = False
    reused: bool = False  # the configuration's step did not fire: the pipeline's result, not decoded again


def plain_decode(rec: WhisperRecognizer, audio: Audio) -> tuple[str, bool]:
    segments, _ = rec.model.transcribe(audio.to_16k().samples, language="zh", beam_size=5)
    text = "".join(s.text for s in segments)
    return text, not text.strip()


def variant(base: WhisperRecognizer, options: DecodeOptions) -> WhisperRecognizer:
    """The same loaded model with other decode options."""
    clone = WhisperRecognizer.__new__(WhisperRecognizer)
    clone.__dict__.update(base.__dict__)
    clone.options = options
    return clone


def decode(config: str, recognizers: dict[str, WhisperRecognizer], audio: Audio, ref: str,
           trace: set[str] | None = None) -> Result:
    started = time.perf_counter()
    if config == "plain":
        text, reask = plain_decode(recognizers["pipeline"], audio)
        confidence, no_speech = None, not text.strip()
    else:
        t = recognizers[config].transcribe(audio, trace=trace)
        text, reask, confidence, no_speech = t.text, t.no_speech or t.confidence < MIN_CONFIDENCE, t.confidence, t.no_speech
    seconds = time.perf_counter() - started
    errors, chars = char_errors(ref, text)
    return Result(text, errors, chars, seconds, audio.seconds, reask, confidence, no_speech)


def fires(config: str, audio: Audio, trace: set[str]) -> bool:
    """Would `config` give another answer than the pipeline did? Not if the step it removes did not
    fire, or the step it adds cannot (telephone level on wide-band audio)."""
    if config in ABLATIONS:
        return ABLATIONS[config][1] in trace
    if config == "with_level":
        return audio.telephone
    if config == "with_trim":  # the pipeline already trims phone audio
        return not audio.telephone
    if config == "with_fallback":
        return "unsure" in trace
    if config == "with_retries":
        return "looping" in trace
    return True


def summarise(results: list[Result]) -> dict[str, float | int]:
    chars = sum(r.chars for r in results)
    audio = sum(r.audio_seconds for r in results)
    return {"cer": round(sum(r.errors for r in results) / max(1, chars), 4),
            "rtf": round(sum(r.seconds for r in results) / max(audio, 1e-9), 4),
            "reask": round(sum(r.reask for r in results) / max(1, len(results)), 3),
            "no_speech": sum(r.no_speech for r in results), "reused": sum(r.reused for r in results),
            "n": len(results), "chars": chars, "audio_seconds": round(audio, 1)}


def emit(**data) -> None:
    print(json.dumps(data, ensure_ascii=False), flush=True)


def run_rows(rows: list[tuple[str, str, list[tuple[Path, str]]]], configs: list[str],
             recognizers: dict[str, WhisperRecognizer], verbose: bool) -> list[dict]:
    out = []
    for half, condition, clips in rows:
        per_config: dict[str, list[Result]] = {c: [] for c in configs}
        for path, ref in clips:
            audio = read_wav(path)
            trace: set[str] = set()
            for config in configs:
                if config == "pipeline":
                    result = decode(config, recognizers, audio, ref, trace)
                elif config != "plain" and not fires(config, audio, trace):
                    result = replace(per_config["pipeline"][-1], reused=True)
                else:
                    result = decode(config, recognizers, audio, ref)
                per_config[config].append(result)
                if verbose:
                    emit(half=half, condition=condition, config=config, file=path.name, ref=ref, hyp=result.text,
                         errors=result.errors, chars=result.chars, reask=result.reask, confidence=result.confidence,
                         seconds=round(result.seconds, 3), reused=result.reused,
                         steps=sorted(trace) if config == "pipeline" else None)
        for config, results in per_config.items():
            line = {"half": half, "condition": condition, "config": config, **summarise(results)}
            emit(**line)
            out.append(line)
    return out


def run_probes(per_kind: int, configs: list[str], recognizers: dict[str, WhisperRecognizer],
               pool: list[Path], cache: Path) -> list[dict]:
    """Audio without speech: any text that is not asked again counts as a confident answer."""
    out = []
    for kind in conditions.PROBES:
        for config in configs:
            confident, texts, seconds, audio_seconds = 0, [], 0.0, 0.0
            for index in range(per_kind):
                audio = read_wav(conditions.probe(kind, index, pool, cache))
                result = decode(config, recognizers, audio, "")
                confident += not result.reask
                texts.append(result.text if result.confidence is None else f"{result.text} ({result.confidence:.2f})")
                seconds += result.seconds
                audio_seconds += audio.seconds
            line = {"probe": kind, "config": config, "n": per_kind, "confident_answers": confident,
                    "texts": texts, "rtf": round(seconds / audio_seconds, 4)}
            emit(**line)
            out.append(line)
    return out


def table(lines: list[dict], configs: list[str]) -> str:
    head = "| half | condition | " + " | ".join(f"{c} CER" for c in configs) + " | plain RTF | pipeline RTF |"
    rows = [head, "|" + "---|" * (len(configs) + 4)]
    grouped: dict[tuple[str, str], dict[str, dict]] = {}
    for line in lines:
        grouped.setdefault((line["half"], line["condition"]), {})[line["config"]] = line
    for (half, condition), by_config in grouped.items():
        cers = " | ".join(f"{by_config[c]['cer']:.3f}" if c in by_config else "–" for c in configs)
        rtf = " | ".join(f"{by_config[c]['rtf']:.3f}" if c in by_config else "–" for c in ("plain", "pipeline"))
        rows.append(f"| {half} | {condition} | {cers} | {rtf} |")
    return "\n".join(rows)


def parse_variant(spec: str) -> tuple[str, dict[str, object]]:
    name, _, pairs = spec.partition(":")
    fields = DecodeOptions.__dataclass_fields__
    changes: dict[str, object] = {}
    for pair in filter(None, pairs.split("/")):
        key, _, raw = pair.partition("=")
        kind = type(getattr(DecodeOptions(), key)) if key in fields else None
        if kind is None:
            raise SystemExit(f"--variant {spec}: DecodeOptions has no field {key}")
        changes[key] = raw.lower() in ("1", "true", "yes") if kind is bool else kind(raw)
    return name, changes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--halves", default="tuning,confirmation")
    parser.add_argument("--conditions", default=",".join(conditions.CONDITIONS))
    parser.add_argument("--configs", default=",".join(["plain", "pipeline", *ABLATIONS, *ADDITIONS]))
    parser.add_argument("--dialect", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--probes", type=int, default=5, help="probes per kind (0: none)")
    parser.add_argument("--cache", type=Path, default=conditions.default_cache())
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--verbose", action="store_true", help="a line per clip")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE/KEY=VALUE",
                        help="an extra configuration: DecodeOptions fields changed from the default")
    args = parser.parse_args()
    configs = args.configs.split(",")
    # The pipeline runs first (its trace decides what the others must decode); plain uses its model.
    configs = ["pipeline", *(c for c in configs if c != "pipeline")]

    model_dir = assemble_default_model(Path(os.environ.get("MODEL_DIR", ROOT / "models")) / "asr")
    base = WhisperRecognizer(model_dir, DecodeOptions(), cpu_threads=args.threads)
    steps = {**{name: options for name, (options, _) in ABLATIONS.items()}, **ADDITIONS,
             **dict(parse_variant(v) for v in args.variant)}
    configs += [name for name in (parse_variant(v)[0] for v in args.variant) if name not in configs]
    recognizers = {"pipeline": base, **{name: variant(base, replace(base.options, **steps[name]))
                                        for name in configs if name in steps}}
    refs = dict(read_transcripts(MANDARIN))
    halves = conditions.load_split(ROOT / "bench" / "asr_split.yml", list(refs))
    rows = []
    for half in args.halves.split(","):
        pool = [MANDARIN / name for name in halves[half]]
        for condition in args.conditions.split(","):
            clips = [(conditions.build(condition, MANDARIN / n, pool, args.cache), refs[n]) for n in halves[half]]
            rows.append((half, condition, clips))
    if args.dialect:
        rows.append(("dialect", "clean", [(DIALECT / n, ref) for n, ref in read_transcripts(DIALECT)]))

    started = time.perf_counter()
    lines = run_rows(rows, configs, recognizers, args.verbose)
    probe_pool = [MANDARIN / name for name in halves[args.halves.split(",")[0]]]
    probes = run_probes(args.probes, [c for c in configs if c in ("plain", "pipeline")], recognizers, probe_pool,
                        args.cache) if args.probes else []
    wall = time.perf_counter() - started
    print(table(lines, configs))
    emit(bench="asr_conditions", rows=lines, probes=probes, wall_seconds=round(wall, 1), threads=args.threads,
         machine=f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
