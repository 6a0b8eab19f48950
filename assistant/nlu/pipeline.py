"""The NLU pipeline: normalise → entities → intent → fallback. Returns Rasa-shaped parse results."""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jieba
import joblib
import sklearn

from assistant.nlu.classifier import ClassifierOptions, IntentClassifier
from assistant.nlu.data import TrainingData, load_training_data, nlu_files
from assistant.nlu.encoder import embed
from assistant.nlu.entities import extract_entities
from assistant.nlu.features import load_dictionary
from assistant.nlu.normalize import Lexicon, Normalizer
from assistant.types import Entity, IntentScore, ParseResult
from assistant.work_orders import Taxonomy, describe

log = logging.getLogger(__name__)

FALLBACK_INTENT = "nlu_fallback"
MODEL_FORMAT = 2  # bump when features change in a way old model files cannot serve
REPORT_INTENTS = frozenset({"report_issue"})
AREA_C = 10.0  # the area model: fewer, longer examples than the intents; a softer fit
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
    taxonomy: Taxonomy | None = None  # work orders (config.yml `tickets`): areas, categories, departments

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
            taxonomy=Taxonomy.from_config(config.get("tickets")) if config.get("tickets") else None,
        )

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        files = nlu_files(self.data_path) + [p for p in (self.lexicon_path, self.dictionary_path) if p]
        for path in sorted(set(files)):
            digest.update(path.name.encode())
            digest.update(path.read_bytes() if path.exists() else b"")
        digest.update(json.dumps([MODEL_FORMAT, sklearn.__version__, repr(self.classifier)]).encode())
        if self.taxonomy is not None:  # short reports are labelled with their keyword category's area
            digest.update(repr((self.taxonomy.areas, self.taxonomy.categories)).encode())
        return digest.hexdigest()[:16]


def _jieba_cache_in(model_dir: Path) -> None:
    """jieba caches its prefix dictionary in /tmp, which systemd's PrivateTmp empties at every
    restart (rebuilding it costs a worker ~1.5 s): keep it with the models instead."""
    if jieba.dt.initialized or jieba.dt.tmp_dir is not None:
        return
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only model directory: /tmp it is
        return
    if os.access(model_dir, os.W_OK):
        jieba.dt.tmp_dir = str(model_dir)


@contextmanager
def _training_lock(model_dir: Path, name: str) -> Iterator[None]:
    model_dir.mkdir(parents=True, exist_ok=True)
    with open(model_dir / f"{name}.lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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


def area_examples(data: TrainingData, texts: dict[str, str], taxonomy: Taxonomy) -> tuple[list[str], list[str]]:
    """Training pairs for the area model: the labelled long messages (`metadata: {area: …}`),
    plus the short community reports labelled by the area of the category their keywords name."""
    pairs = {texts[text]: area for text, area in data.areas if area in taxonomy.area_by_name}
    for text, intent in data.examples:
        if intent in REPORT_INTENTS and texts[text] not in pairs:
            category = taxonomy.categorise(texts[text])
            area = taxonomy.area_of(category)
            if category.keywords and area is not None:
                pairs[texts[text]] = area.name
    return list(pairs), list(pairs.values())


class NLU:
    def __init__(self, settings: NLUSettings, classifier: IntentClassifier, data: TrainingData,
                 areas: IntentClassifier | None = None) -> None:
        self.settings = settings
        self.normalizer = Normalizer(Lexicon.load(settings.lexicon_path, settings.dictionary_path))
        self.classifier = classifier
        self.areas = areas
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
        normalized = {text: normalizer(text) for text, _ in data.examples}
        texts = [normalized[text] for text, _ in data.examples]
        classifier = IntentClassifier.train(texts, [intent for _, intent in data.examples], settings.classifier)
        areas = None
        if settings.taxonomy is not None:
            area_texts, area_labels = area_examples(data, normalized, settings.taxonomy)
            if len(set(area_labels)) > 1:
                options = dataclasses.replace(settings.classifier, C=AREA_C)
                areas = IntentClassifier.train(area_texts, area_labels, options)
        return cls(settings, classifier, data, areas)

    def model_path(self) -> Path:
        return self.settings.model_dir / f"nlu-{self.settings.fingerprint()}.joblib"

    def save(self) -> Path:
        path = self.model_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        # Atomic: another worker starting at the same time never reads half a file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        joblib.dump({"intent": self.classifier.model, "area": self.areas.model if self.areas else None}, tmp)
        os.replace(tmp, path)
        return path

    @staticmethod
    def cached_model(settings: NLUSettings) -> Path | None:
        """The model file trained on exactly this data and config, if there is one."""
        path = settings.model_dir / f"nlu-{settings.fingerprint()}.joblib"
        return path if path.exists() else None

    @classmethod
    def load_or_train(cls, settings: NLUSettings) -> NLU:
        """Loads the model trained on exactly this data and config; trains and saves it if missing.

        Trained once, not once per process: deploys run `python -m assistant train --if-missing`
        at build time, and processes that start together without a model (several web workers
        after the training data changed) take a file lock, so one trains and the others load
        what it saved."""
        _jieba_cache_in(settings.model_dir)
        load_dictionary(settings.dictionary_path)
        if settings.classifier.embedding_weight > 0:
            embed(["你好"])  # the encoder's weights load here (≈1 s), not in a caller's first turn
        path = settings.model_dir / f"nlu-{settings.fingerprint()}.joblib"
        data = load_training_data(settings.data_path)
        nlu = cls._load(settings, path, data)
        if nlu is not None:
            return nlu
        with _training_lock(settings.model_dir, path.stem):
            nlu = cls._load(settings, path, data)  # another process trained it while we waited
            if nlu is not None:
                return nlu
            log.info("training NLU model (%d examples)…", len(data.examples))
            nlu = cls.train(settings)
            saved = nlu.save()
        log.info("NLU model saved to %s", saved)
        return nlu

    @classmethod
    def _load(cls, settings: NLUSettings, path: Path, data: TrainingData) -> NLU | None:
        if not path.exists():
            return None
        try:
            models = joblib.load(path)
            area = models["area"]
            return cls(settings, IntentClassifier(models["intent"]), data,
                       IntentClassifier(area) if area is not None else None)
        except Exception:  # a corrupt or incompatible file is rebuilt, not fatal
            log.warning("model file %s unreadable; retraining", path, exc_info=True)
            return None

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
        report = None
        if intent.name in REPORT_INTENTS and self.settings.taxonomy is not None:
            area = self.areas.rank(normalized, top=1)[0].name if self.areas else None
            report = describe(text, normalized, area, self.settings.taxonomy)
        return ParseResult(text, normalized, intent, tuple(ranking), tuple(entities), report)

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


class NLUNotReady(TimeoutError):
    """The model is still loading (or failed to load) after the caller's wait. A TimeoutError, so
    the core answers the turn with its kind "busy, try again" reply instead of failing it."""


class BackgroundNLU:
    """An NLU that loads in a background thread, so a web worker answers /healthz at once and
    /readyz says "not ready" (503) until the model is in memory; then it serves like the NLU it
    wraps. A turn that arrives meanwhile waits for the load (a second or two with the model on
    disk), at most `wait_seconds`, then gets NLUNotReady.

    `when_done` runs in the loading thread once the load is over, with the NLU (None if it
    failed): web processes turn the garbage collector back on there."""

    def __init__(self, load: Callable[[], NLU], *, wait_seconds: float = 30.0,
                 when_done: Callable[[NLU | None], None] | None = None, name: str = "nlu-load") -> None:
        self._load, self._when_done = load, when_done
        self.wait_seconds = wait_seconds
        self._done = threading.Event()
        self._nlu: NLU | None = None
        self.error: BaseException | None = None
        self.started = time.monotonic()
        self.seconds: float | None = None  # how long the load took, once done
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        nlu: NLU | None = None
        try:
            nlu = self._load()
            self.seconds = time.monotonic() - self.started
            log.info("NLU model loaded in %.1f s", self.seconds)
        except BaseException as exc:  # noqa: BLE001 (reported by /readyz and at every parse)
            self.error = exc
            log.error("NLU model could not be loaded: the worker stays not ready", exc_info=True)
        if self._when_done is not None:
            try:
                self._when_done(nlu)
            except Exception:  # a tuning hook must never leave the worker unready
                log.warning("after-load hook failed", exc_info=True)
        self._nlu = nlu
        self._done.set()

    @property
    def ready(self) -> bool:
        return self._nlu is not None

    @property
    def state(self) -> str:
        """'ok', 'loading' or 'failed', for /readyz."""
        if self._nlu is not None:
            return "ok"
        return "failed" if self._done.is_set() else "loading"

    def wait(self, timeout: float | None = None) -> NLU:
        if not self._done.wait(self.wait_seconds if timeout is None else timeout) or self._nlu is None:
            raise NLUNotReady("NLU model failed to load" if self.error is not None else "NLU model still loading")
        return self._nlu

    # -- the NLU interface the core uses ------------------------------------------------------------
    def parse(self, text: str, now: datetime) -> ParseResult:
        return self.wait().parse(text, now)

    @property
    def intents(self) -> list[str]:
        return self.wait().intents

    def __getattr__(self, name: str) -> Any:  # settings, normalizer, classifier, …: the loaded NLU's
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.wait(), name)
