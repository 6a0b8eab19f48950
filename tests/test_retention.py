"""Retention purge: expired recordings, photos and handoff transcripts go, newer ones stay,
and the audit log records how many (never what)."""
from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from assistant.ports import HandoffRequest
from backend.affairs import StoreBackend
from backend.infra.audit_chain import AuditEntry, verify_audit_chain
from backend.infra.crypto import FieldCipher, KeyRing
from backend.infra.db import make_engine, session_factory, upgrade
from backend.infra.retention import RetentionPolicy, purge
from core_fixtures import FakeClock
from runtime.cli_privacy import register

POLICY = RetentionPolicy(audio_days=30, photo_days=180, transcript_days=90, handoff_transcript_days=180)
DAY = 86_400


@dataclass
class Site:
    data_dir: Path
    sessions: sessionmaker[Session]
    store: StoreBackend
    clock: FakeClock

    def file(self, relative: str, age_days: float, size: int = 10) -> Path:
        path = self.data_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
        moment = self.clock().timestamp() - age_days * DAY
        os.utime(path, (moment, moment))
        return path

    def handoff(self, key: str) -> str:
        return self.store.create_handoff(HandoffRequest(
            sender_id="CA1", channel="voice", phone="13800138000", reason="user_request", urgent=False,
            transcript=(("user", "我要找人"), ("bot", "马上转接")), form_name="book_meal",
            form_slots={"quantity": 2}, idempotency_key=key)).reference


@pytest.fixture
def site(db_url: str, tmp_path: Path) -> Iterator[Site]:
    upgrade(db_url)
    engine = make_engine(db_url)
    sessions = session_factory(engine)
    clock = FakeClock()
    cipher = FieldCipher(KeyRing({1: bytes(range(16))}, 1, bytes(range(32))))
    yield Site(tmp_path / "var", sessions, StoreBackend(sessions, cipher, clock), clock)
    engine.dispose()


def _seed(site: Site) -> dict[str, Path]:
    files = {
        "old_audio": site.file("audio/2026/05/CA1.wav", 31),
        "new_audio": site.file("audio/2026/11/CA2.wav", 29),
        "old_photo": site.file("media/ab/abcdef.jpg", 181, size=100),
        "new_photo": site.file("media/cd/cdef01.jpg", 179),
        "old_transcript": site.file("transcripts/CA1.json", 91),
        "old_tts": site.file("tts/0123abcd.wav", 31),  # cached speech may say a phone number
        "new_tts": site.file("tts/4567ef01.wav", 29),
        "elsewhere": site.file("keys.json", 1000),  # outside the purged folders: never touched
    }
    os.symlink(site.data_dir / "keys.json", site.data_dir / "media" / "link.jpg")
    os.utime(site.data_dir / "media" / "link.jpg", (0, 0), follow_symlinks=False)
    return files


def test_purge_removes_only_what_is_past_retention(site: Site) -> None:
    files = _seed(site)
    site.clock.advance(days=-181)
    old_handoff = site.handoff("old")
    site.clock.advance(days=181)
    new_handoff = site.handoff("new")

    dry = purge(site.sessions, site.data_dir, POLICY, site.clock(), dry_run=True)
    assert dry.files == {"audio": 1, "media": 1, "transcripts": 1, "tts": 1} and dry.handoff_transcripts == 1
    assert dry.bytes == 130 and dry.audit_id is None
    assert all(p.exists() for p in files.values())  # a dry run deletes nothing
    with site.sessions() as s:
        assert s.scalar(select(AuditEntry).where(AuditEntry.entity_type == "retention")) is None

    report = purge(site.sessions, site.data_dir, POLICY, site.clock())
    assert report.summary() == {"dry_run": False, "handoff_transcripts": 1, "rows": {"sensor_readings": 0, "jobs": 0},
                                "files": {"audio": 1, "media": 1, "transcripts": 1, "tts": 1}, "bytes": 130}
    gone = {"old_audio", "old_photo", "old_transcript", "old_tts"}
    assert {name for name, p in files.items() if not p.exists()} == gone
    assert not (site.data_dir / "audio" / "2026" / "05").exists()  # emptied folders go too
    assert (site.data_dir / "media" / "link.jpg").is_symlink()  # links are not followed or removed

    detail = site.store.get_case(old_handoff)
    assert detail is not None and detail.fields["transcript"] == []
    assert detail.fields["form_slots"] == {"quantity": 2}  # the case itself stays
    assert site.store.get_case(new_handoff).fields["transcript"] == [("user", "我要找人"), ("bot", "马上转接")]

    with site.sessions() as s, s.begin():
        entry = s.get(AuditEntry, report.audit_id)
        assert entry is not None and (entry.action, entry.actor) == ("purge", "retention")
        detail_json = json.loads(entry.detail)
        assert detail_json["files"] == {"audio": 1, "media": 1, "transcripts": 1, "tts": 1}
        assert detail_json["handoff_transcripts"] == 1
        assert "abcdef" not in entry.detail and "我要找人" not in entry.detail  # counts, not content
        assert verify_audit_chain(s) is None

    again = purge(site.sessions, site.data_dir, POLICY, site.clock())
    assert not again.removed_anything and again.audit_id is None  # nothing new: no entry


def test_old_sensor_readings_and_finished_jobs_go_in_batches(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import timedelta

    from backend.alerts.store import CareDevice, CareHousehold, SensorReading
    from backend.infra import retention
    from backend.infra.jobs import DbJobQueue
    from backend.infra.models import Job

    monkeypatch.setattr(retention, "ROW_BATCH", 7)  # several batches, the last one partial
    now = site.clock()
    with site.sessions() as s, s.begin():
        home = CareHousehold(code="H1", grid_id="G1", senior_name_enc="x")
        s.add(home)
        s.flush()
        device = CareDevice(household_id=home.id, device_uid="water-1", kind="water")
        s.add(device)
        s.flush()
        for minutes in range(0, 40 * 24 * 60, 24 * 60):  # one reading a day for 40 days
            s.add(SensorReading(household_id=home.id, device_id=device.id, kind="water", value=1.0,
                                ts=now - timedelta(minutes=minutes), received_at=now))
    queue = DbJobQueue(site.sessions, site.clock)
    for n in range(3):
        queue.enqueue("work", {"n": n})
    [first, second, _third] = queue.claim("w", 3)
    queue.finish(first, "w")
    queue.fail(second, "w", "broken", permanent=True)
    site.clock.advance(days=8)

    policy = RetentionPolicy(sensor_reading_days=30, finished_job_days=7)
    assert purge(site.sessions, site.data_dir, policy, site.clock(), dry_run=True).rows == \
        {"sensor_readings": 17, "jobs": 1}  # ages 31–47 days
    report = purge(site.sessions, site.data_dir, policy, site.clock())
    assert report.rows == {"sensor_readings": 17, "jobs": 1} and report.audit_id is not None
    with site.sessions() as s:
        assert s.scalar(select(func.count()).select_from(SensorReading)) == 23  # 30 days and younger stay
        assert sorted(j.state for j in s.scalars(select(Job))) == ["failed", "running"]  # dead + live stay


def test_null_keeps_forever_and_bad_values_are_refused(site: Site) -> None:
    old = site.file("audio/a.wav", 10_000)
    keep = RetentionPolicy(audio_days=None, photo_days=None, transcript_days=None, handoff_transcript_days=None,
                           sensor_reading_days=None, finished_job_days=None)
    assert not purge(site.sessions, site.data_dir, keep, site.clock()).removed_anything
    assert old.exists()
    assert RetentionPolicy.from_config({"retention": {"audio_days": None}}).audio_days is None
    assert RetentionPolicy.from_config({}).photo_days == 180
    for bad in (0, -1, "30", 1.5, True):
        with pytest.raises(ValueError):
            RetentionPolicy.from_config({"retention": {"photo_days": bad}})
    with pytest.raises(ValueError):
        purge(site.sessions, site.data_dir, keep, site.clock().replace(tzinfo=None))


def test_purge_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = tmp_path / "var"
    url = f"sqlite:///{data_dir / 'assistant.db'}"
    upgrade(url)
    monkeypatch.setenv("DATA_DIR", str(data_dir))
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.delenv("ASSISTANT_CONFIG", raising=False)  # the repository's config.yml
    old = data_dir / "audio" / "old.wav"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"RIFF")
    os.utime(old, (0, 0))
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))

    args = parser.parse_args(["purge", "--dry-run"])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["files"]["audio"] == 1 and old.exists()
    args = parser.parse_args(["purge"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["files"]["audio"] == 1 and out["audit_id"] == 1 and not old.exists()


def test_the_purge_runs_daily_as_one_recurring_job(tmp_path: Path) -> None:
    from datetime import timedelta

    from assistant.config import load_settings
    from backend.infra.models import Job
    from runtime.ticket_loop import PURGE_JOB, retention_handlers

    data_dir = tmp_path / "var"
    url = f"sqlite:///{data_dir / 'r.db'}"
    data_dir.mkdir()
    upgrade(url)
    engine = make_engine(url)
    sessions = session_factory(engine)
    clock = FakeClock()  # 2026-11-25 10:00 Asia/Shanghai (see core_fixtures)
    settings = load_settings({"DATA_DIR": str(data_dir), "DATABASE_URL": url})
    handlers = retention_handlers(settings, sessions, clock)
    retention_handlers(settings, sessions, clock)  # a second worker starting: no second schedule

    def purge_jobs() -> list[Job]:
        with sessions() as s:
            return list(s.scalars(select(Job).where(Job.name == PURGE_JOB)))

    [job] = purge_jobs()
    local_run = job.run_at.astimezone(settings.timezone)
    assert (local_run.hour, local_run.minute) == (3, 0) and job.run_at > clock()
    old = Site(data_dir, sessions, None, clock).file("audio/old.wav", 40)  # type: ignore[arg-type]
    clock.advance(days=1)
    handlers[PURGE_JOB]({})
    assert not old.exists()
    [job] = purge_jobs()
    assert job.state == "queued" and job.run_at - clock() < timedelta(days=1) and job.run_at > clock()
    engine.dispose()
