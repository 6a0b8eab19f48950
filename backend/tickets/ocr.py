"""Text in photos (shop signs, building numbers, meter numbers) with RapidOCR: offline, its
Chinese detection/recognition models ship inside the PyPI package, nothing is downloaded.

The model is loaded once per process on first use (about 0.5 s) and shared under a lock:
onnxruntime sessions are not guaranteed to be re-entrant, and a worker runs one job at a time.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)


class TextReader(Protocol):
    def read(self, path: Path) -> str: ...


class RapidTextReader:
    def __init__(self, min_confidence: float = 0.6) -> None:
        self.min_confidence = min_confidence
        self._engine = None
        self._lock = threading.Lock()

    def read(self, path: Path) -> str:
        with self._lock:
            if self._engine is None:
                from rapidocr_onnxruntime import RapidOCR

                self._engine = RapidOCR()
            result, _elapsed = self._engine(str(path))
        lines = [text for _box, text, score in (result or []) if float(score) >= self.min_confidence]
        return " ".join(lines)


class NoTextReader:
    """OCR switched off in config.yml (media.ocr: false)."""

    def read(self, path: Path) -> str:
        return ""
