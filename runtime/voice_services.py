"""Speech services shared by the voice channels (phone, kiosk, Media Streams): one recogniser per
process behind a decode pool, and the voices (TTS) with their cache. Each is built on first use,
so a touch-only kiosk never loads the recogniser, and a server whose recogniser cannot load still
serves every other channel (and says why in `doctor`).

A webhook must answer at once, but a reply takes Kokoro seconds to say. So channels name the WAV
of each sentence right away (`prepare`) and let a small pool make the ones not cached yet, in
order; the GET for an audio URL waits for its file (`await_file`), in whichever worker process it
lands.
"""
from __future__ import annotations

import fcntl
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from inspect import signature
from pathlib import Path
from typing import Any

from assistant.voice.engines import shared_recognizer, unavailable_reason
from assistant.voice.recognizer import DecodePool, VoiceConfig
from assistant.voice.speakable import split_sentences
from assistant.voice.tts import LocalVoice, Speech, SpeechChunk, TtsSettings, TwilioSay, Voices
from assistant.voice.tts_select import build_tts

log = logging.getLogger(__name__)

REPLY_NAME = re.compile(r"[0-9a-f]{32}\.wav")  # URLs carry only the content hash
# A piece of a reply played as one file. Kokoro needs ~0.4 s per second of speech (1.5 s on a busy
# 2-core box): a 40-字 sentence would keep the caller waiting 5–25 s, a 16-字 piece 1–5 s.
PIECE_CHARS = 16
_CLAUSE_END = re.compile(r"(?<=[，；;：])")  # not ASCII , or : (1,000 and 8:30 stay whole)
PENDING = ".pending"
MAX_SYNTHESIS_THREADS = 2
_POLL_SECONDS = 0.05


class VoiceServices:
    def __init__(self, config: VoiceConfig, env: Any, model_dir: Path, data_dir: Path,
                 cache_key: bytes = b"") -> None:
        self.config = config
        self._cache_key = cache_key
        self._env, self._model_dir = env, model_dir
        self.tts_dir = data_dir / "tts"
        self._data_dir = data_dir
        self._build = threading.Lock()

    @cached_property
    def pool(self) -> DecodePool | None:
        with self._build:
            recognizer = shared_recognizer(self.config, self._env, self._model_dir)
            if recognizer is None:
                return None
            # Only a recogniser with a cheaper mode can hurry (Whisper; not Vosk or a remote one).
            hurry = self.config.fast_decoder == "when_busy" and "hurry" in signature(recognizer.transcribe).parameters
            return DecodePool(recognizer, self.config.decode_workers, hurry_when_busy=hurry,
                              busy_utilisation=self.config.busy_utilisation)

    @property
    def unavailable(self) -> str | None:
        return unavailable_reason(self.config)

    # --- voices ------------------------------------------------------------------------------
    @cached_property
    def tts(self) -> Voices:
        with self._build:
            return build_tts(self.config, self._data_dir, self._cache_key)

    @cached_property
    def tts_settings(self) -> TtsSettings:
        """config.yml voice.tts, read without loading any engine (a <Say>-only phone needs no model)."""
        return TtsSettings.from_config(self.config)

    @property
    def local_voice(self) -> bool:
        """A local engine makes audio files (<Play>, the kiosk, Media Streams); `twilio_say` does not."""
        return self.tts.local

    def speech_file(self, text: str, language: str = "zh") -> Path | None:
        """The reply's WAV, synthesised now unless cached; None without a local voice for `language`."""
        if not text or self.tts.reply_path(text, language) is None:
            return None
        return self.tts.speak(text, language).path

    def carrier_speech(self, text: str, language: str = "zh") -> Speech:
        """What Twilio <Say> needs: the text as it is said and the cloud voice for the language."""
        return TwilioSay(self.tts_settings).speak(text, language)

    def stream(self, text: str, language: str = "zh") -> Iterator[SpeechChunk]:
        """Phrase by phrase as each is ready. A language without a local voice (no espeak-ng for
        Cantonese) is said by the Mandarin voice rather than not at all."""
        spoken = language if self.tts.reply_path(text, language) is not None else "zh"
        return self.tts.stream(text, spoken)

    def tts_file(self, name: str) -> Path | None:
        return self.tts.file(name) if REPLY_NAME.fullmatch(name) else None

    # --- replies made in the background ------------------------------------------------------
    @staticmethod
    def pieces(text: str) -> list[str]:
        """The files a reply is played as, one after another: its sentences, a long one cut
        between clauses (split_sentences, then at ，；： up to PIECE_CHARS)."""
        return [piece for sentence in split_sentences(text) for piece in _clauses(sentence)]

    @cached_property
    def background(self) -> BackgroundSynthesis:
        # As many threads as syntheses may run at once (voice.tts.concurrency, 1 by default): more
        # would interleave a reply's sentences phrase by phrase and delay the first one.
        threads = max(1, min(MAX_SYNTHESIS_THREADS, self.tts.settings.concurrency))
        return BackgroundSynthesis(self.tts, threads)

    def prepare(self, text: str, language: str = "zh") -> str | None:
        """The WAV file name the reply will have; made in the background unless cached. None when
        there is no local voice for the language (the channel says it with <Say>)."""
        return self.background.prepare(text, language) if text else None

    def close(self) -> None:
        """Stop making queued replies (shutdown; a test's runtime going away). Their pending
        files go, so a GET elsewhere answers 404 rather than waiting."""
        if "background" in self.__dict__:
            self.background.close()

    def await_file(self, name: str, timeout: float) -> Path | None:
        """The WAV once it exists (waiting up to `timeout` while it is being made); None at once
        for a name nobody is making."""
        if not REPLY_NAME.fullmatch(name):
            return None
        return self.background.await_file(name, timeout)


class BackgroundSynthesis:
    """Replies made on a small thread pool while the webhook that named them has already answered.

    While a reply is being made, `<name>.pending` next to its WAV (under DATA_DIR/tts, purged by
    retention with the rest) holds the text, and its maker holds an flock on it. The kernel drops
    that lock when the maker's process dies, so a waiter in any process of this host that can take
    the lock knows nobody is making the reply and makes it itself: no heartbeat, no stale timeout.
    """

    def __init__(self, voices: Voices, threads: int = 1) -> None:
        self.voices = voices
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="tts-background")
        self._making: set[str] = set()
        self._lock = threading.Lock()
        self._closed = False

    def prepare(self, text: str, language: str) -> str | None:
        path = self.voices.reply_path(text, language)
        if path is None:
            return None
        if path.exists():
            return path.name
        with self._lock:
            if self._closed:
                return None
            if path.name in self._making:
                return path.name
            claim = _claim_new(path.with_suffix(PENDING), text)
            if claim is None:
                return path.name  # another process is making it
            self._making.add(path.name)
            self._executor.submit(self._make, path, claim, lambda: self.voices.speak(text, language))
        return path.name

    def close(self) -> None:
        with self._lock:
            self._closed = True  # queued jobs only release their claims; one already speaking ends
            self._executor.shutdown(wait=False)

    def _make(self, path: Path, claim: int, speak: Callable[[], Speech]) -> None:
        try:
            if not path.exists() and not self._closed:
                speak()
        except Exception:  # logged; the GET for it then answers 404 and the channel goes on
            log.warning("background TTS failed for %s", path.name, exc_info=True)
        finally:
            _release(path.with_suffix(PENDING), claim)
            with self._lock:
                self._making.discard(path.name)

    def await_file(self, name: str, timeout: float) -> Path | None:
        deadline = time.monotonic() + timeout
        while True:
            found = self.voices.file(name)
            if found is not None:
                return found
            pending = self._pending(name)
            if pending is None:
                return self.voices.file(name)  # made between the two looks, or never asked for
            voice, pending_path = pending
            claim = _claim_stale(pending_path)
            if claim is not None:
                return self._recover(voice, pending_path, name, *claim)
            if time.monotonic() >= deadline:
                log.warning("TTS %s still being made after %.0f s", name, timeout)
                return None
            time.sleep(_POLL_SECONDS)

    def _pending(self, name: str) -> tuple[LocalVoice, Path] | None:
        for voice in (self.voices.mandarin, self.voices.cantonese):
            if isinstance(voice, LocalVoice):
                path = voice.cache_dir / (name.removesuffix(".wav") + PENDING)
                if path.exists():
                    return voice, path
        return None

    def _recover(self, voice: LocalVoice, pending: Path, name: str, claim: int, text: str) -> Path | None:
        """Its maker died (a killed worker): make the reply here, holding its lock."""
        try:
            if voice.reply_path(text).name != name:
                log.warning("TTS pending file %s does not match its text; removed", pending.name)
                return None
            log.info("TTS %s was left unfinished; made on request", name)
            return voice.speak(text).path
        finally:
            _release(pending, claim)


def _clauses(sentence: str, limit: int = PIECE_CHARS) -> list[str]:
    if len(sentence) <= limit:
        return [sentence]
    pieces: list[str] = []
    for clause in (c for c in _CLAUSE_END.split(sentence) if c):
        if pieces and len(pieces[-1]) + len(clause) <= limit:
            pieces[-1] += clause
        else:
            pieces.append(clause)
    return pieces


def _claim_new(pending: Path, text: str) -> int | None:
    """Publish a locked pending file with the text (complete before anyone can see it). Returns
    its descriptor, or None when a live maker already has one."""
    fd, tmp = tempfile.mkstemp(dir=pending.parent, prefix=".pending-")
    published = False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, text.encode("utf-8"))
        os.link(tmp, pending)  # fails if a pending file is there already
        published = True
    except FileExistsError:
        pass
    finally:
        Path(tmp).unlink(missing_ok=True)
        if not published:
            os.close(fd)
    if published:
        return fd
    stale = _claim_stale(pending)  # a dead maker's: ours now
    return stale[0] if stale is not None else None


def _claim_stale(pending: Path) -> tuple[int, str] | None:
    """Lock a pending file nobody holds; (descriptor, text), or None if it is held or gone."""
    try:
        fd = os.open(pending, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.stat(pending).st_ino != os.fstat(fd).st_ino:
            raise FileNotFoundError(pending)  # its maker finished and removed it meanwhile
        with os.fdopen(os.dup(fd), "rb") as source:
            return fd, source.read().decode("utf-8", "replace")
    except (BlockingIOError, FileNotFoundError):
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise


def _release(pending: Path, claim: int) -> None:
    """The WAV exists (or cannot be made): the pending file goes, then the lock."""
    try:
        if os.stat(pending).st_ino == os.fstat(claim).st_ino:
            pending.unlink(missing_ok=True)
    except FileNotFoundError:
        pass  # purged by retention meanwhile
    finally:
        os.close(claim)
