"""The NLU pipeline: normalise → entities → intent → fallback. Returns Rasa-shaped parse results."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import joblib
import sklearn

from assistant.nlu.classifier import ClassifierOptions, IntentClassifier
from assistant.nlu.data import TrainingData, load_training_data, nlu_files
from assistant.nlu.entities import extract_entities
from assistant.nlu.features import load_dictionary
from assistant.nlu.normalize import Lexicon, Normalizer
from assistant.types import Entity, IntentScore, ParseResult

log = logging.getLogger(__name__)

FALLBACK_INTENT = "nlu_fallback"
MODEL_FORMAT = 1  # bump when features change in a way old model files cannot serve
_PAYLOAD = re.compile(r"^/(\w+)(\{.*\})?$", re.S)


@dataclass(frozen=True)
class NLUSettings:
    data_path: Path
    lexicon_path: Path | None
    dictionary_path: Path | None
    model_dir: Path
    threshold: float = 0.4
    ambiguity_threshold: float = 0.08
    classifier: ClassifierOptions = ClassifierOptions()

    @classmethod
    def from_config(cls, config: dict[str, Any], root: Path, model_dir: Path) -> NLUSettings:
        pipeline = config.get("pipeline") or []
        by_name = {c.get("name"): c for c in pipeline}
        fallback = by_name.get("FallbackClassifier", {})
        lexicon = by_name.get("ChineseNormalizer", {}).get("lexicon")
        dictionary = by_name.get("JiebaTokenizer", {}).get("dictionary_path")
        return cls(
            data_path=root / "nlu_data",
            lexicon_path=root / lexicon if lexicon else None,
            dictionary_path=root / dictionary if dictionary else None,
            model_dir=model_dir,
            threshold=float(fallback.get("threshold", 0.4)),
            ambiguity_threshold=float(fallback.get("ambiguity_threshold", 0.08)),
            classifier=ClassifierOptions.from_pipeline(pipeline),
        )

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        files = nlu_files(self.data_path) + [p for p in (self.lexicon_path, self.dictionary_path) if p]
        for path in sorted(set(files)):
            digest.update(path.name.encode())
            digest.update(path.read_bytes() if path.exists() else b"")
        digest.update(json.dumps([MODEL_FORMAT, sklearn.__version__, repr(self.classifier)]).encode())
        return digest.hexdigest()[:16]


class LookupExtractor:
    """Rasa's RegexEntityExtractor (lookup tables) + EntitySynonymMapper, longest match first."""

    def __init__(self, lookups: dict[str, list[str]], synonyms: dict[str, str], normalizer: Normalizer) -> None:
        self.synonyms = {normalizer(k): v for k, v in synonyms.items()}
        self.entity_of: dict[str, str] = {}
        for entity, words in lookups.items():
            for word in words:
                self.entity_of.setdefault(normalizer(word), entity)
        words = sorted((w for w in self.entity_of if w), key=len, reverse=True)
        self.pattern = re.compile("|".join(map(re.escape, words))) if words else None

    def extract(self, text: str, taken: list[tuple[int, int]]) -> list[Entity]:
        if self.pattern is None:
            return []
        found = []
        for m in self.pattern.finditer(text):
            if any(m.start() < end and start < m.end() for start, end in taken):
                continue
            word = m.group(0)
            found.append(
                Entity(self.entity_of[word], self.synonyms.get(word, word), m.start(), m.end(), word, "lookup")
            )
        return found


class NLU:
    def __init__(self, settings: NLUSettings, classifier: IntentClassifier, data: TrainingData) -> None:
        self.settings = settings
        self.normalizer = Normalizer(Lexicon.load(settings.lexicon_path, settings.dictionary_path))
        self.classifier = classifier
        self.lookups = LookupExtractor(data.lookups, data.synonyms, self.normalizer)
        self.intents = sorted(set(classifier.labels))

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def train(cls, settings: NLUSettings) -> NLU:
        load_dictionary(settings.dictionary_path)
        data = load_training_data(settings.data_path)
        if not data.examples:
            raise ValueError(f"no training examples under {settings.data_path}")
        normalizer = Normalizer(Lexicon.load(settings.lexicon_path, settings.dictionary_path))
        texts = [normalizer(text) for text, _ in data.examples]
        classifier = IntentClassifier.train(texts, [intent for _, intent in data.examples], settings.classifier)
        return cls(settings, classifier, data)

    def model_path(self) -> Path:
        return self.settings.model_dir / f"nlu-{self.settings.fingerprint()}.joblib"

    def save(self) -> Path:
        path = self.model_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        # Atomic: another worker starting at the same time never reads half a file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        joblib.dump(self.classifier.model, tmp)
        os.replace(tmp, path)
        return path

    @classmethod
    def load_or_train(cls, settings: NLUSettings) -> NLU:
        """Loads the model trained on exactly this data and config; trains and saves it if missing."""
        load_dictionary(settings.dictionary_path)
        path = settings.model_dir / f"nlu-{settings.fingerprint()}.joblib"
        data = load_training_data(settings.data_path)
        if path.exists():
            try:
                return cls(settings, IntentClassifier(joblib.load(path)), data)
            except Exception:  # a corrupt or incompatible file is rebuilt, not fatal
                log.warning("model file %s unreadable; retraining", path, exc_info=True)
        log.info("training NLU model (%d examples)…", len(data.examples))
        nlu = cls.train(settings)
        saved = nlu.save()
        log.info("NLU model saved to %s", saved)
        return nlu

    # -- parsing ------------------------------------------------------------------------------
    def parse(self, text: str, now: datetime) -> ParseResult:
        payload = _PAYLOAD.match(text.strip())
        if payload:
            return self._parse_payload(text, payload)
        normalized = self.normalizer(text)
        entities = extract_entities(normalized, now)
        taken = [(e.start, e.end) for e in entities]
        entities = sorted([*entities, *self.lookups.extract(normalized, taken)], key=lambda e: e.start)
        ranking = self.classifier.rank(normalized) if normalized else []
        intent = self._with_fallback(ranking)
        return ParseResult(text, normalized, intent, tuple(ranking), tuple(entities))

    def _with_fallback(self, ranking: list[IntentScore]) -> IntentScore:
        if not ranking:
            return IntentScore(FALLBACK_INTENT, 1.0)
        top = ranking[0]
        second = ranking[1].confidence if len(ranking) > 1 else 0.0
        if top.confidence < self.settings.threshold or top.confidence - second < self.settings.ambiguity_threshold:
            return IntentScore(FALLBACK_INTENT, self.settings.threshold)
        return top

    def _parse_payload(self, text: str, match: re.Match[str]) -> ParseResult:
        """Rasa button payloads: `/intent` or `/intent{"entity": "value"}` bypass the classifier."""
        name = match.group(1)
        entities: list[Entity] = []
        if match.group(2):
            try:
                values = json.loads(match.group(2))
            except json.JSONDecodeError:
                values = {}
            if isinstance(values, dict):
                entities = [Entity(str(k), v, 0, 0, "", "payload") for k, v in values.items()]
        known = name in self.intents or name == FALLBACK_INTENT
        intent = IntentScore(name if known else FALLBACK_INTENT, 1.0)
        return ParseResult(text, text, intent, (intent,), tuple(entities))
