"""`nlu-eval`: per-intent precision/recall/F1 and top confusions on a Rasa-format test file, or
report rate, area and kind accuracy on a file of labelled resident messages (`complaints:`).

`half` splits any file the same way every time (by a hash of each text), so a set can be tuned
on one half and confirmed on the other, untouched one (bench/RESULTS.md says which was used)."""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import yaml

from assistant.nlu.data import parse_nlu_yaml
from assistant.nlu.pipeline import NLU

REJECTED = frozenset({"out_of_scope", "nlu_fallback"})


@dataclass(frozen=True)
class Prediction:
    text: str
    expected: str
    predicted: str
    confidence: float


@dataclass(frozen=True)
class ReportPrediction:
    text: str
    area: str
    kind: str
    predicted: str  # the intent
    predicted_area: str | None  # None when not filed as a report
    predicted_kind: str | None


def in_half(text: str, half: str) -> bool:
    """'tune' / 'confirm' halves by the first byte of the text's SHA-1; 'all' keeps everything."""
    if half == "all":
        return True
    return (hashlib.sha1(text.encode("utf-8")).digest()[0] % 2 == 0) == (half == "tune")


def is_report_file(path: Path) -> bool:
    doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return isinstance(doc, dict) and "complaints" in doc


def predict_file(nlu: NLU, path: Path, now: datetime, half: str = "all") -> list[Prediction]:
    data = parse_nlu_yaml(path.read_text(encoding="utf-8"))
    out = []
    for text, expected in [(t, i) for t, i in data.examples if in_half(t, half)]:
        result = nlu.parse(text, now)
        out.append(Prediction(text, expected, result.intent.name, result.intent.confidence))
    return out


def predict_reports(nlu: NLU, path: Path, now: datetime, half: str = "all") -> list[ReportPrediction]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    out = []
    for item in doc.get("complaints") or []:
        text = str(item["text"]).strip()
        if not in_half(text, half):
            continue
        result = nlu.parse(text, now)
        report = result.report
        out.append(ReportPrediction(text, str(item["area"]), str(item.get("kind", "")), result.intent.name,
                                    report.area if report is not None else None,
                                    report.kind if report is not None else None))
    return out


def summarise_reports(predictions: Iterable[ReportPrediction], report_intents: frozenset[str]) -> dict[str, Any]:
    predictions = list(predictions)
    n = len(predictions)
    filed = [p for p in predictions if p.predicted in report_intents]
    areas = sorted({p.area for p in predictions})
    per_area = {a: {"n": sum(p.area == a for p in predictions),
                    "filed": sum(p.area == a for p in filed),
                    "area_right": sum(p.area == a == p.predicted_area for p in filed)} for a in areas}
    wrong = Counter((p.area, p.predicted_area) for p in filed if p.predicted_area != p.area)
    missed = Counter(p.predicted for p in predictions if p.predicted not in report_intents)
    return {
        "n": n,
        "filed_as_report": round(len(filed) / n, 4) if n else 0.0,
        # Area accuracy among the messages filed as reports (the others never get an area).
        "area_accuracy": round(sum(p.predicted_area == p.area for p in filed) / len(filed), 4) if filed else 0.0,
        "kind_accuracy": round(sum(p.predicted_kind == p.kind for p in filed) / len(filed), 4) if filed else 0.0,
        "per_area": per_area,
        "not_filed_as": dict(missed.most_common()),
        "area_confusions": [{"expected": e, "predicted": p, "count": c} for (e, p), c in wrong.most_common(10)],
    }


def print_report_summary(summary: dict[str, Any], predictions: list[ReportPrediction], out: TextIO,
                         errors: int = 0) -> None:
    out.write(f"{'area':16} {'n':>4} {'filed':>6} {'area ok':>8}\n")
    for area, row in summary["per_area"].items():
        out.write(f"{area:16} {row['n']:4d} {row['filed']:6d} {row['area_right']:8d}\n")
    _finish(out, summary, [f"[{p.area} → {p.predicted}/{p.predicted_area}] {p.text[:80]}"
                           for p in predictions if p.predicted_area != p.area], errors)


def _finish(out: TextIO, summary: dict[str, Any], error_lines: list[str], errors: int) -> None:
    """The first `errors` errors, then the summary as the closing JSON line."""
    if errors:
        out.write(f"first {errors} errors:\n")
        for line in error_lines[:errors]:
            out.write(f"  {line}\n")
    out.write(json.dumps(summary, ensure_ascii=False) + "\n")


def summarise(predictions: Iterable[Prediction]) -> dict[str, Any]:
    predictions = list(predictions)
    labels = sorted({p.expected for p in predictions} | {p.predicted for p in predictions})
    per_intent: dict[str, dict[str, float]] = {}
    for label in labels:
        tp = sum(1 for p in predictions if p.expected == label and p.predicted == label)
        predicted = sum(1 for p in predictions if p.predicted == label)
        support = sum(1 for p in predictions if p.expected == label)
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_intent[label] = {"precision": round(precision, 4), "recall": round(recall, 4),
                             "f1": round(f1, 4), "support": support}
    confusions = Counter((p.expected, p.predicted) for p in predictions if p.expected != p.predicted)
    n = len(predictions)
    oos = [p for p in predictions if p.expected == "out_of_scope"]
    correct = sum(1 for p in predictions if p.expected == p.predicted)
    supported = [v for v in per_intent.values() if v["support"]]
    return {
        "accuracy": round(correct / n, 4) if n else 0.0,
        "n": n,
        "macro_f1": round(sum(v["f1"] for v in supported) / len(supported), 4) if supported else 0.0,
        "fallback_rate": round(sum(p.predicted == "nlu_fallback" for p in predictions) / n, 4) if n else 0.0,
        # Out-of-scope requests turned away, whether as out_of_scope or as "not understood".
        "out_of_scope_rejection": round(sum(p.predicted in REJECTED for p in oos) / len(oos), 4) if oos else None,
        "per_intent": per_intent,
        "confusions": [{"expected": e, "predicted": p, "count": c} for (e, p), c in confusions.most_common(10)],
    }


def print_report(summary: dict[str, Any], predictions: list[Prediction], out: TextIO, errors: int = 0) -> None:
    out.write(f"{'intent':32} {'prec':>6} {'rec':>6} {'f1':>6} {'n':>5}\n")
    for label, row in summary["per_intent"].items():
        out.write(f"{label:32} {row['precision']:6.3f} {row['recall']:6.3f} {row['f1']:6.3f} {row['support']:5d}\n")
    out.write("top confusions (expected → predicted):\n")
    for c in summary["confusions"]:
        out.write(f"  {c['expected']} → {c['predicted']}: {c['count']}\n")
    _finish(out, summary, [f"[{p.expected} → {p.predicted} {p.confidence:.2f}] {p.text}"
                           for p in predictions if p.expected != p.predicted], errors)
