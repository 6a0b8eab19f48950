"""Retention: personal recordings, photos and transcripts are deleted once their time is up.

Periods come from config.yml `retention:`. Files are judged by their modification time (when
they were written; the media store never rewrites a file), handoff transcripts by the handoff's
creation time. Each run that removes something leaves one audit entry with counts, never
content or file names (content-addressed names are hashes of residents' photos).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from backend.infra.audit_chain import append_audit
from backend.infra.models import Handoff, Job

# Folder under DATA_DIR → the retention setting that governs it.
# DATA_DIR/tts holds cached speech of what the assistant said, read-backs of phone numbers
# included: it is personal audio like a recording (a purged prompt is re-made on demand in ~30 ms).
FILE_AREAS: dict[str, str] = {"audio": "audio_days", "media": "photo_days", "transcripts": "transcript_days",
                              "tts": "audio_days"}


POLICY_FIELDS = ("audio_days", "photo_days", "transcript_days", "handoff_transcript_days", "sensor_reading_days",
                 "finished_job_days")
ROW_BATCH = 20_000  # rows per delete: short transactions, inside the store's statement time-out


@dataclass(frozen=True)
class RetentionPolicy:
    """Days to keep each kind of data; None keeps it indefinitely."""

    audio_days: int | None = 30
    photo_days: int | None = 180
    transcript_days: int | None = 90
    handoff_transcript_days: int | None = 180
    sensor_reading_days: int | None = 30  # home sensor readings: a senior's daily routine
    finished_job_days: int | None = 7  # background jobs that are done (payloads are row ids only)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> RetentionPolicy:
        section = config.get("retention") or {}
        values: dict[str, int | None] = {}
        for name in POLICY_FIELDS:
            raw = section.get(name, getattr(cls, name))
            if raw is not None and (isinstance(raw, bool) or not isinstance(raw, int) or raw < 1):
                raise ValueError(f"retention.{name} must be a whole number of days (at least 1) or null")
            values[name] = raw
        return cls(**values)

    def cutoff(self, setting: str, now: datetime) -> datetime | None:
        days = getattr(self, setting)
        return None if days is None else now - timedelta(days=days)


@dataclass
class PurgeReport:
    dry_run: bool
    handoff_transcripts: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    audit_id: int | None = None

    @property
    def removed_anything(self) -> bool:
        return bool(self.handoff_transcripts or any(self.files.values()) or any(self.rows.values()))

    def summary(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "handoff_transcripts": self.handoff_transcripts,
                "rows": dict(self.rows), "files": dict(self.files), "bytes": self.bytes}


def _expired_files(root: Path, cutoff: datetime) -> list[tuple[Path, int]]:
    """Regular files under root written before cutoff; symlinks are never followed or removed."""
    found: list[tuple[Path, int]] = []
    limit = cutoff.timestamp()
    for folder, _dirs, names in os.walk(root, followlinks=False):
        for name in names:
            path = Path(folder) / name
            st = path.lstat()
            if path.is_symlink() or not path.is_file():
                continue
            if st.st_mtime < limit:
                found.append((path, st.st_size))
    return found


def _remove_empty_dirs(root: Path) -> None:
    for folder, dirs, names in os.walk(root, topdown=False):
        if Path(folder) != root and not dirs and not names:
            try:
                os.rmdir(folder)
            except OSError:  # something was written meanwhile: keep it
                pass


def _row_areas() -> list[tuple[Any, ...]]:
    """Tables whose old rows go: (table, time column, setting, extra conditions…)."""
    from backend.alerts.store import SensorReading  # the alerts package imports this module's users

    readings, jobs = SensorReading.__table__, Job.__table__
    return [(readings, readings.c.ts, "sensor_reading_days"),
            (jobs, jobs.c.updated_at, "finished_job_days", jobs.c.state == "done")]


def _delete_rows(session_factory: Callable[[], Session], table: Any, where: list[Any], dry_run: bool) -> int:
    if dry_run:
        with session_factory() as session:
            return int(session.scalar(select(func.count()).select_from(table).where(*where)) or 0)
    total = 0
    while True:  # in batches, each its own transaction, so writers are never held up for long
        with session_factory() as session, session.begin():
            ids = select(table.c.id).where(*where).limit(ROW_BATCH).scalar_subquery()
            removed = int(session.execute(delete(table).where(table.c.id.in_(ids))).rowcount or 0)
        total += removed
        if removed < ROW_BATCH:
            return total


def purge(
    session_factory: Callable[[], Session],
    data_dir: Path,
    policy: RetentionPolicy,
    now: datetime,
    *,
    dry_run: bool = False,
    actor: str = "retention",
) -> PurgeReport:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    now = now.astimezone(UTC)
    report = PurgeReport(dry_run)
    for area, setting in FILE_AREAS.items():
        cutoff = policy.cutoff(setting, now)
        root = data_dir / area
        if cutoff is None or not root.is_dir():
            report.files[area] = 0
            continue
        expired = _expired_files(root, cutoff)
        removed = 0
        for path, size in expired:
            if not dry_run:
                try:
                    path.unlink()
                except FileNotFoundError:  # another purge got there first
                    continue
            removed += 1
            report.bytes += size
        report.files[area] = removed
        if not dry_run:
            _remove_empty_dirs(root)

    for table, column, setting, *where in _row_areas():
        cutoff = policy.cutoff(setting, now)
        report.rows[table.name] = 0 if cutoff is None else _delete_rows(
            session_factory, table, [column < cutoff, *where], dry_run)

    cutoff = policy.cutoff("handoff_transcript_days", now)
    with session_factory() as session, session.begin():
        if cutoff is not None:
            stale = (Handoff.created_at < cutoff, Handoff.transcript_enc.is_not(None))
            if dry_run:
                report.handoff_transcripts = int(
                    session.scalar(select(func.count()).select_from(Handoff).where(*stale)) or 0)
            else:
                # updated_at is left alone: it is the case's last activity, not ours.
                result = session.execute(update(Handoff).where(*stale).values(transcript_enc=None)
                                         .execution_options(synchronize_session=False))
                report.handoff_transcripts = int(result.rowcount or 0)
        if not dry_run and report.removed_anything:
            entry = append_audit(
                session, at=now, actor=actor, action="purge", entity_type="retention", entity_id=None,
                detail={**report.summary(), "policy_days": {name: getattr(policy, name) for name in POLICY_FIELDS}},
            )
            report.audit_id = entry.id
    return report
