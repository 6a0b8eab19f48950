"""NLU benchmark: parse latency (p50/p95/p99) and accuracy on the held-out set.

    python bench/bench_nlu.py [tests/nlu_heldout/heldout.yml] [--repeat 5] [--half all|tune|confirm]

Prints one JSON line. The held-out file is never used for training (see tests/nlu_heldout/README.md).
A file of labelled resident messages (`complaints:`) is timed the same way and reports the share
filed as work orders and the area accuracy instead of intent accuracy.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from assistant.config import load_settings  # noqa: E402
from assistant.nlu.data import parse_nlu_yaml  # noqa: E402
from assistant.nlu.evaluate import (  # noqa: E402
    in_half,
    is_report_file,
    predict_file,
    predict_reports,
    summarise,
    summarise_reports,
)
from assistant.nlu.pipeline import REPORT_INTENTS  # noqa: E402
from runtime.container import load_nlu, make_clock  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("file", nargs="?", default="tests/nlu_heldout/heldout.yml")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--half", choices=["all", "tune", "confirm"], default="all")
    args = parser.parse_args()
    settings = load_settings()
    started = time.perf_counter()
    nlu = load_nlu(settings)
    load_seconds = time.perf_counter() - started
    clock = make_clock(settings)
    path = Path(args.file)
    if is_report_file(path):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        texts = [str(c["text"]).strip() for c in doc["complaints"]]
    else:
        texts = [t for t, _ in parse_nlu_yaml(path.read_text(encoding="utf-8")).examples]
    texts = [t for t in texts if in_half(t, args.half)]
    for text in texts[:50]:  # warm caches (jieba, pinyin)
        nlu.parse(text, clock())
    latencies = []
    for _ in range(args.repeat):
        for text in texts:
            t0 = time.perf_counter()
            nlu.parse(text, clock())
            latencies.append((time.perf_counter() - t0) * 1000)
    if is_report_file(path):
        reports = summarise_reports(predict_reports(nlu, path, clock(), args.half), REPORT_INTENTS)
        scores = {k: reports[k] for k in ("filed_as_report", "area_accuracy", "kind_accuracy")}
    else:
        summary = summarise(predict_file(nlu, path, clock(), args.half))
        scores = {k: summary[k] for k in ("accuracy", "macro_f1", "fallback_rate", "out_of_scope_rejection")}
    print(json.dumps({
        "bench": "nlu_parse",
        "file": args.file,
        "half": args.half,
        "mean_chars": round(statistics.mean(len(t) for t in texts), 1),
        "n_utterances": len(texts),
        "n_parses": len(latencies),
        "p50_ms": round(statistics.median(latencies), 3),
        "p95_ms": round(percentile(latencies, 95), 3),
        "p99_ms": round(percentile(latencies, 99), 3),
        **scores,
        "model_load_or_train_s": round(load_seconds, 2),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
    }, ensure_ascii=False))


if __name__ == "__main__":
    main()
