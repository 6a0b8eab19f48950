"""Reads Rasa 3.x NLU training data (YAML): intents, synonyms, lookup tables, regexes.

Files are merged the way Rasa merges a data directory. Entity annotations inside examples
(`[3栋](building)`, `[明天]{"entity": "date"}`) are stripped to plain text for intent training.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

_ANNOTATION = re.compile(r"\[([^\]]+)\](?:\([^)]*\)|\{[^}]*\})")


@dataclass
class TrainingData:
    examples: list[tuple[str, str]] = field(default_factory=list)  # (text, intent)
    synonyms: dict[str, str] = field(default_factory=dict)  # variant → canonical value
    lookups: dict[str, list[str]] = field(default_factory=dict)  # entity → words
    regexes: dict[str, list[str]] = field(default_factory=dict)
    # (text, area) from intent blocks with Rasa `metadata: {area: …}` (nlu_data/work_orders.yml)
    areas: list[tuple[str, str]] = field(default_factory=list)

    @property
    def intents(self) -> list[str]:
        return sorted({intent for _, intent in self.examples})

    def merge(self, other: TrainingData) -> None:
        self.examples.extend(other.examples)
        self.areas.extend(other.areas)
        self.synonyms.update(other.synonyms)
        for name, words in other.lookups.items():
            self.lookups.setdefault(name, []).extend(words)
        for name, patterns in other.regexes.items():
            self.regexes.setdefault(name, []).extend(patterns)


def _example_lines(block: str | list | None) -> list[str]:
    if block is None:
        return []
    if isinstance(block, list):  # Rasa also allows a list of {text: ...} mappings
        lines = [item["text"] if isinstance(item, dict) else str(item) for item in block]
    else:
        lines = [line.strip()[2:] for line in block.splitlines() if line.strip().startswith("- ")]
    return [_ANNOTATION.sub(r"\1", line).strip() for line in lines if line.strip()]


def parse_nlu_yaml(text: str) -> TrainingData:
    doc = yaml.safe_load(text) or {}
    data = TrainingData()
    for item in doc.get("nlu") or []:
        if "intent" in item:
            examples = _example_lines(item.get("examples"))
            data.examples.extend((ex, item["intent"]) for ex in examples)
            area = (item.get("metadata") or {}).get("area") if isinstance(item.get("metadata"), dict) else None
            if area:
                data.areas.extend((ex, str(area)) for ex in examples)
        elif "synonym" in item:
            for variant in _example_lines(item.get("examples")):
                data.synonyms[variant] = str(item["synonym"])
        elif "lookup" in item:
            data.lookups.setdefault(item["lookup"], []).extend(_example_lines(item.get("examples")))
        elif "regex" in item:
            data.regexes.setdefault(item["regex"], []).extend(_example_lines(item.get("examples")))
    return data


def nlu_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.suffix in {".yml", ".yaml"})


def load_training_data(path: Path) -> TrainingData:
    data = TrainingData()
    for file in nlu_files(path):
        data.merge(parse_nlu_yaml(file.read_text(encoding="utf-8")))
    return data
