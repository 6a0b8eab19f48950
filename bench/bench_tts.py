"""Text-to-speech benchmarks (issue 16): intelligibility of every prompt, and time to first audio.

    python bench/bench_tts.py intelligibility [--half all|tune|confirm] [--voices SPEC …]
    python bench/bench_tts.py latency [--readbacks 60]

intelligibility: every sentence the assistant can say (domain.yml + ivr_flows, read-backs filled
with typical values) spoken by each voice, transcribed by the offline recogniser (Whisper base) at
16 kHz and through an 8 kHz μ-law line; character error rate against what was meant to be said.
A voice SPEC is engine[:voice[@speed]], e.g. kokoro:jm_kumo+jf_gongitsune@0.85, espeak:cmn-latn-pinyin.

latency: after the fixed prompts are rendered (as at first start), dynamic read-backs with random
names, phones, ID tails and references are streamed; we time the first audio chunk and the whole
reply. Two cases: a read-back as the dialogue says it (its first clause is a fixed prompt), and the
worst case of a reply that starts with a name nobody said before.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from assistant.config import load_settings  # noqa: E402
from assistant.dialogue.render import spell_digits, spell_phone  # noqa: E402
from assistant.voice.engines import build_recognizer  # noqa: E402
from assistant.voice.prompts import fixed_phrases, load_prompts, sample_prompts  # noqa: E402
from assistant.voice.recognizer import VoiceConfig  # noqa: E402
from assistant.voice.tts_eval import evaluate, half_of, summarise  # noqa: E402
from assistant.voice.tts_select import build_tts  # noqa: E402

DEFAULT_VOICES = ("kokoro", "espeak:cmn-latn-pinyin", "espeak:cmn")
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢"
GIVEN = "秀兰桂英建国淑芬玉珍志强明华凤英海燕德福永胜丽娟春梅金凤国平文彬红霞少华秋菊立新爱民树林"


def voice_config(base: VoiceConfig, spec: str) -> VoiceConfig:
    """'kokoro' (as configured) | 'kokoro:jm_kumo+jf_gongitsune@0.85' | 'espeak:cmn-latn-pinyin';
    '/key=value' at the end sets any other voice.tts option ('kokoro/tone_sandhi=true')."""
    spec, *options = spec.split("/")
    engine, _, rest = spec.partition(":")
    voice, _, speed = rest.partition("@")
    tts = dict(base.tts)
    tts["engine"] = engine
    if engine != "kokoro":
        tts.pop("voice", None)  # the configured voice is Kokoro's
    if voice:
        tts["voice"] = voice  # for espeak engines `voice` names the espeak voice (TtsSettings)
    if speed:
        tts["speed"] = float(speed)
    for option in options:
        key, _, value = option.partition("=")
        tts[key] = yaml.safe_load(value)
    return replace(base, tts=tts)


def cmd_intelligibility(args: argparse.Namespace) -> None:
    settings = load_settings()
    base = VoiceConfig.from_config(settings.config)
    recognizer = build_recognizer(base, settings.env, settings.model_dir)
    prompts = sample_prompts(*load_prompts(settings.root))
    if args.half != "all":
        prompts = [p for p in prompts if half_of(p) == args.half]
    if args.limit:
        prompts = prompts[: args.limit]
    lines_to_test = [(k, t) for k, t in (("16k", False), ("8k_mulaw", True)) if args.line in ("both", k)]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-tts-") as tmp:
        for spec in args.voices:
            voices = build_tts(voice_config(base, spec), Path(tmp))
            if voices.fallback_reason:
                print(f"{spec}: {voices.fallback_reason}", file=sys.stderr)
            row: dict[str, object] = {"voice": spec, "identity": getattr(voices.mandarin, "identity", voices.name),
                                      "half": args.half}
            for line_kind, telephone in lines_to_test:
                started = time.perf_counter()
                lines = list(evaluate(voices, recognizer, prompts, telephone=telephone))
                summary = summarise(lines)
                row[line_kind] = summary["cer"]
                row[f"{line_kind}_worst"] = summary["worst_cer"]
                row["chars_per_minute"] = summary["chars_per_minute"]
                row["prompts"] = summary["prompts"]
                row[f"{line_kind}_wall_s"] = round(time.perf_counter() - started, 1)
                if args.details:
                    for x in lines:
                        print(json.dumps({"voice": spec, "line": line_kind, "source": x.source, "said": x.said,
                                          "heard": x.heard, "cer": round(x.cer, 3)}, ensure_ascii=False))
            print(json.dumps(row, ensure_ascii=False), flush=True)
            results.append(row)
    print(json.dumps({"bench": "tts_intelligibility", "results": results}, ensure_ascii=False))


def random_readbacks(rng: random.Random, n: int) -> list[str]:
    """Read-backs and submissions as the dialogue speaks them (engine.py's speech renderings)."""
    out = []
    for _ in range(n):
        name = rng.choice(SURNAMES) + "".join(rng.sample(GIVEN, rng.choice((1, 2))))
        phone = "1" + rng.choice("3589") + "".join(rng.choice("0123456789") for _ in range(9))
        reference = "".join(rng.choice("0123456789") for _ in range(8))
        tail = "".join(rng.choice("0123456789") for _ in range(3)) + rng.choice("0123456789X")
        out.append(rng.choice((
            f"我核对一下：办老年证，{name}，身份证尾号{spell_digits(tail)}，电话{spell_phone(phone)}。对吗？",
            f"我核对一下：申请高龄津贴，{name}，身份证尾号{spell_digits(tail)}，电话{spell_phone(phone)}。对吗？",
            f"已经提交了。受理编号是，{spell_digits(reference)}。请记下来。工作人员5个工作日内打电话给您。",
            f"预约好了。预约编号是，{spell_digits(reference)}。请记下来。服务人员会提前打电话给您。",
        )))
    return out


def cmd_latency(args: argparse.Namespace) -> None:
    settings = load_settings()
    config = VoiceConfig.from_config(settings.config)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="bench-tts-") as tmp:
        voices = build_tts(config, Path(tmp))
        started = time.perf_counter()
        phrases = voices.warm(fixed_phrases(*load_prompts(settings.root)))
        warm_seconds = time.perf_counter() - started
        cases = {"readback": random_readbacks(rng, args.readbacks),
                 "name_first": [rng.choice(SURNAMES) + "".join(rng.sample(GIVEN, 2)) + "，您好。"
                                for _ in range(args.readbacks)]}
        report: dict[str, object] = {"bench": "tts_latency", "engine": voices.name,
                                     "identity": getattr(voices.mandarin, "identity", voices.name),
                                     "warm_phrases": phrases, "warm_seconds": round(warm_seconds, 1)}
        for case, texts in cases.items():
            first, total, audio = [], [], []
            for text in texts:
                t0 = time.perf_counter()
                seconds = 0.0
                for i, chunk in enumerate(voices.stream(text)):
                    if i == 0:
                        first.append(time.perf_counter() - t0)
                    seconds += len(chunk.samples) / chunk.rate
                total.append(time.perf_counter() - t0)
                audio.append(seconds)
            report[case] = {"n": len(texts), "first_audio_p50_ms": _ms(statistics.median(first)),
                            "first_audio_p95_ms": _ms(_p95(first)), "whole_reply_p50_ms": _ms(statistics.median(total)),
                            "whole_reply_p95_ms": _ms(_p95(total)),
                            "audio_seconds_p50": round(statistics.median(audio), 2),
                            "synthesis_per_audio_second": round(sum(total) / sum(audio), 3)}
        print(json.dumps(report, ensure_ascii=False))


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    intel = sub.add_parser("intelligibility")
    intel.add_argument("--half", choices=["all", "tune", "confirm"], default="all")
    intel.add_argument("--voices", nargs="+", default=list(DEFAULT_VOICES))
    intel.add_argument("--details", action="store_true", help="one line per prompt as well")
    intel.add_argument("--limit", type=int, default=0, help="only the first N prompts of the half")
    intel.add_argument("--line", choices=["both", "16k", "8k_mulaw"], default="both")
    intel.set_defaults(func=cmd_intelligibility)
    lat = sub.add_parser("latency")
    lat.add_argument("--readbacks", type=int, default=60)
    lat.add_argument("--seed", type=int, default=16)
    lat.set_defaults(func=cmd_latency)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
