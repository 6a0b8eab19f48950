"""`nlu-eval`: per-intent precision/recall/F1 and top confusions on a Rasa-format test file."""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from assistant.nlu.data import parse_nlu_yaml
from assistant.nlu.pipeline import NLU


@dataclass(frozen=True)
class Prediction:
    text: str
    expected: str
    predicted: str
    confidence: float


def predict_file(nlu: NLU, path: Path, now: datetime) -> list[Prediction]:
    data = parse_nlu_yaml(path.read_text(encoding="utf-8"))
    out = []
    for text, expected in data.examples:
        result = nlu.parse(text, now)
        out.append(Prediction(text, expected, result.intent.name, result.intent.confidence))
    return out


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
    correct = sum(1 for p in predictions if p.expected == p.predicted)
    supported = [v for v in per_intent.values() if v["support"]]
    return {
        "accuracy": round(correct / n, 4) if n else 0.0,
        "n": n,
        "macro_f1": round(sum(v["f1"] for v in supported) / len(supported), 4) if supported else 0.0,
        "fallback_rate": round(sum(p.predicted == "nlu_fallback" for p in predictions) / n, 4) if n else 0.0,
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
    if errors:
        out.write(f"first {errors} errors:\n")
        for p in [p for p in predictions if p.expected != p.predicted][:errors]:
            out.write(f"  [{p.expected} → {p.predicted} {p.confidence:.2f}] {p.text}\n")
    out.write(json.dumps(summary, ensure_ascii=False) + "\n")
