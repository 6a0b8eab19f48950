"""Audit chain: keys, signed checkpoints outside the database, and the check for operators (the
first broken link and, in words, what is wrong with it).

Why both: entries are linked with HMAC-SM3 under the audit key (audit_chain.entry_hash), so someone
who can write to the database but has no key cannot edit a row and recompute the chain. A
truncated tail (rows deleted from the end, audit_head moved back) leaves a valid shorter chain;
the signed checkpoints, appended to a file under DATA_DIR (and optionally syslog) by the
processes that write the chain, still vouch for the entries that were there.

Checkpoint line (tab-separated): time, last id, head hash, audit key version, HMAC-SM3 signature.

audit_chain.verify_audit_chain finds the link; this module only explains it, by looking at the
broken row and its neighbour again, then compares the chain with the checkpoints.
"""
from __future__ import annotations

import logging
import logging.handlers
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from backend.infra.audit_chain import (
    AuditBinding,
    AuditEntry,
    AuditHead,
    audit_binding,
    bind_audit_keys,
    verify_audit_chain,
)
from backend.infra.crypto import KeyRing, hmac_sm3_hex
from backend.infra.models import ZERO_HASH

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT_FILE = "audit-checkpoints.log"
DEFAULT_INTERVAL_SECONDS = 300.0


@dataclass(frozen=True)
class AuditSettings:
    checkpoint_file: str = DEFAULT_CHECKPOINT_FILE  # relative to DATA_DIR unless absolute
    checkpoint_interval_seconds: float = DEFAULT_INTERVAL_SECONDS
    checkpoint_syslog: bool = False  # also send each checkpoint to the local syslog (/dev/log)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> AuditSettings:
        section = config.get("audit") or {}
        values = {name: type(getattr(cls, name))(section[name]) for name in cls.__dataclass_fields__
                  if name in section}
        return cls(**values)

    def path(self, data_dir: Path) -> Path:
        return Path(data_dir) / self.checkpoint_file


# --- checkpoints -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Checkpoint:
    line_no: int
    at: str
    last_id: int
    head_hash: str
    key_version: int


def _signed_text(at: str, last_id: int, head_hash: str, version: int) -> str:
    return f"{at}\t{last_id}\t{head_hash}\t{version}"


def _signature(key: bytes, text: str) -> str:
    return hmac_sm3_hex(key, ("audit-checkpoint\0" + text).encode("utf-8"))


@dataclass
class CheckpointLog:
    """Append-only file of signed heads. One write() per line with O_APPEND, so lines from
    several processes never interleave."""

    path: Path
    keys: Mapping[int, bytes]
    active: int
    syslog: bool = False
    _syslog_handler: logging.Handler | None = field(default=None, repr=False)

    def write(self, last_id: int, head_hash: str, at: datetime | None = None) -> str:
        stamp = (at or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds")
        text = _signed_text(stamp, last_id, head_hash, self.active)
        line = f"{text}\t{_signature(self.keys[self.active], text)}\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode("utf-8"))
        finally:
            os.close(fd)
        if self.syslog:
            self._send_syslog(line.strip())
        return line

    def _send_syslog(self, line: str) -> None:
        try:
            if self._syslog_handler is None:
                self._syslog_handler = logging.handlers.SysLogHandler(address="/dev/log")
            self._syslog_handler.emit(logging.makeLogRecord({"msg": f"audit-checkpoint {line}",
                                                             "levelno": logging.INFO, "levelname": "INFO"}))
        except OSError:
            log.warning("syslog is not reachable; the audit checkpoint is only in %s", self.path)

    def read(self) -> tuple[list[Checkpoint], list[str]]:
        """Valid checkpoints and, in words, every line that is not (edited, foreign key)."""
        if not self.path.exists():
            return [], []
        good: list[Checkpoint] = []
        problems: list[str] = []
        for number, raw in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            if not raw.strip():
                continue
            parts = raw.split("\t")
            if len(parts) != 5 or not parts[1].isdigit() or not parts[3].isdigit():
                problems.append(f"checkpoint file line {number} is malformed (the file was edited)")
                continue
            at, last_id, head_hash, version, signature = parts
            key = self.keys.get(int(version))
            if key is None:
                problems.append(f"checkpoint file line {number} is signed with audit key version {version}, "
                                "which is not loaded")
                continue
            if _signature(key, _signed_text(at, int(last_id), head_hash, int(version))) != signature:
                problems.append(f"checkpoint file line {number} has a wrong signature (the file was edited)")
                continue
            good.append(Checkpoint(number, at, int(last_id), head_hash, int(version)))
        return good, problems


# --- binding -----------------------------------------------------------------------------------
def bind(engine: Engine, keyring: KeyRing, data_dir: Path | None = None,
         settings: AuditSettings | None = None) -> AuditBinding:
    """Makes every session on `engine` link entries with the active audit key and (with a
    data_dir) sign the committed head into the checkpoint file every interval."""
    keys, active = keyring.audit_key_versions()
    settings = settings or AuditSettings()
    checkpoints = None if data_dir is None else CheckpointLog(settings.path(data_dir), keys, active,
                                                              settings.checkpoint_syslog)
    binding = AuditBinding(keys, active, checkpoints.write if checkpoints else None,
                           settings.checkpoint_interval_seconds)
    bind_audit_keys(engine, binding)
    return binding


def bind_from_settings(engine: Engine, settings: Any) -> AuditBinding:
    """bind() with the deployment's keys, DATA_DIR and config.yml `audit` section (the
    composition root calls it for every engine that writes the chain)."""
    from backend.infra.keys_policy import load_allowed_keys

    keyring = load_allowed_keys(settings.env, Path(settings.data_dir) / "keys.json")
    return bind(engine, keyring, Path(settings.data_dir), AuditSettings.from_config(settings.config))


def write_checkpoint(session_factory: Callable[[], Session], log_file: CheckpointLog) -> tuple[int, str]:
    """Signs the current head now (`audit checkpoint`; callers verify the chain first)."""
    with session_factory() as session:
        head = session.get(AuditHead, 1)
        last_id, last_hash = (head.last_id, head.last_hash) if head else (0, ZERO_HASH)
    log_file.write(last_id, last_hash)
    return last_id, last_hash


# --- verification ------------------------------------------------------------------------------
@dataclass(frozen=True)
class AuditReport:
    ok: bool
    entries: int
    broken_id: int | None = None
    problem: str | None = None
    note: str | None = None  # said after "ok" (e.g. no checkpoint yet)

    def line(self) -> str:
        if self.ok:
            return f"ok ({self.note})" if self.note else "ok"
        return f"broken at entry {self.broken_id}: {self.problem}"


def _explain(session: Session, broken_id: int, keys: Mapping[int, bytes]) -> str:
    entry = session.get(AuditEntry, broken_id, populate_existing=True)
    previous = session.scalar(
        select(AuditEntry).where(AuditEntry.id < broken_id).order_by(AuditEntry.id.desc()).limit(1)
    )
    head = session.get(AuditHead, 1, populate_existing=True)
    if entry is None:
        following = session.scalar(select(func.min(AuditEntry.id)).where(AuditEntry.id > broken_id))
        if following is not None:
            return f"entry is missing (deleted); the chain jumps to entry {following}"
        last = head.last_id if head else "?"
        return f"entry is missing (deleted from the end); the head says the last entry is {last}"
    if entry.key_version and entry.key_version not in keys:
        return (f"the entry is linked with audit key version {entry.key_version}, which is not loaded "
                "(set AUDIT_KEYS with every version ever used), or its key_version was edited")
    if not entry.key_version and previous is not None and previous.key_version:
        return (f"the entry has a plain SM3 link (key version 0) after keyed entry {previous.id}: "
                "the chain was re-chained without the audit key")
    if entry.hash != entry.compute_hash(keys):
        if entry.key_version:
            return ("stored hash does not match the entry's content under its audit key (edited, moved from "
                    "another position, or re-chained with a wrong key)")
        return "stored hash does not match the entry's content (edited, or moved from another position)"
    expected_prev = previous.hash if previous is not None else ZERO_HASH
    if entry.prev_hash != expected_prev:
        before = f"entry {previous.id}" if previous is not None else "the start of the chain"
        return f"prev_hash does not match {before} (an entry before it was deleted, edited or reordered)"
    if previous is not None and previous.id != broken_id - 1:
        return f"entry {broken_id - 1} is missing (deleted)"
    if head is None:
        return "the audit_head row is missing"
    if head.last_id != entry.id or head.last_hash != entry.hash:
        return (f"audit_head says the last entry is {head.last_id}, the table ends at {entry.id} "
                "(entries added or removed at the end outside the application)")
    return "inconsistent chain"


def _against_checkpoints(session: Session, checkpoints: list[Checkpoint], last_id: int) -> tuple[int, str] | None:
    """The first entry a valid checkpoint contradicts, in words; None when all agree."""
    latest = max(checkpoints, key=lambda c: c.last_id, default=None)
    if latest is not None and latest.last_id > last_id:
        gone = f"entry {last_id + 1} was" if latest.last_id == last_id + 1 else \
            f"entries {last_id + 1}–{latest.last_id} were"
        return (last_id + 1,
                f"the checkpoint signed at {latest.at} vouches for entries up to {latest.last_id}, the chain "
                f"ends at {last_id}: {gone} deleted from the end (and audit_head moved back)")
    ids = sorted({c.last_id for c in checkpoints if c.last_id > 0})
    stored: dict[int, str] = {}
    for start in range(0, len(ids), 500):  # a year of checkpoints is many lines: few queries
        chunk = ids[start:start + 500]
        rows = session.execute(select(AuditEntry.id, AuditEntry.hash).where(AuditEntry.id.in_(chunk)))
        stored.update((row_id, row_hash) for row_id, row_hash in rows)
    agreed = 0  # the highest id a checkpoint confirmed so far
    for point in sorted(checkpoints, key=lambda c: c.last_id):
        if point.last_id == 0:
            continue
        if stored.get(point.last_id) != point.head_hash:
            return (agreed + 1,
                    f"entry {point.last_id} differs from the checkpoint signed at {point.at}: entries "
                    f"{agreed + 1}–{point.last_id} were rewritten and the chain recomputed")
        agreed = point.last_id
    return None


def verify(session_factory: Callable[[], Session], keyring: KeyRing | None = None,
           checkpoints: CheckpointLog | None = None) -> AuditReport:
    """Reads the whole chain in one transaction (a consistent snapshot on Postgres), then
    compares it with the signed checkpoints. Keys default to the engine's binding."""
    with session_factory() as session, session.begin():
        if keyring is not None:
            keys = keyring.audit_key_versions()[0]
        else:
            binding = audit_binding(session)
            keys = dict(binding.keys) if binding is not None else {}
        count = int(session.scalar(select(func.count()).select_from(AuditEntry)) or 0)
        broken = verify_audit_chain(session, keys)
        if broken is not None:
            return AuditReport(False, count, broken, _explain(session, broken, keys))
        if checkpoints is None:
            return AuditReport(True, count)
        valid, problems = checkpoints.read()
        head = session.get(AuditHead, 1)
        last_id = head.last_id if head is not None else 0
        contradiction = _against_checkpoints(session, valid, last_id)
        if contradiction is not None:
            return AuditReport(False, count, contradiction[0], contradiction[1])
        if problems:
            return AuditReport(False, count, last_id, problems[0])
        keyed = session.scalar(select(func.count()).select_from(AuditEntry).where(AuditEntry.key_version > 0))
        if keyed and not valid:
            return AuditReport(True, count, note=f"no signed checkpoint in {checkpoints.path} yet: "
                               "a deleted tail cannot be detected until one is written")
        return AuditReport(True, count)
