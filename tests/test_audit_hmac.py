"""The keyed audit chain against someone who can write to the database but has no audit key:
edited rows re-chained with plain SM3 or a wrong key, a deleted tail with audit_head moved back,
an edited checkpoint file. `audit verify` runs as an operator runs it (a separate process with
DATABASE_URL and DATA_DIR); key rotation keeps old entries verifiable."""
from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Connection, select, text
from sqlalchemy.orm import Session

from assistant.ports import CaseRequest, Person
from backend.affairs import StoreBackend
from backend.infra import audit
from backend.infra.audit_chain import AuditEntry, append_audit, canonical_json, verify_audit_chain
from backend.infra.crypto import FieldCipher, load_keys, sm3_hex
from backend.infra.db import make_engine, session_factory, upgrade
from backend.infra.models import ZERO_HASH

ROOT = Path(__file__).resolve().parent.parent


def _data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "var"
    path.mkdir(exist_ok=True)
    return path


def _populate(url: str, data_dir: Path, cases: int = 3, *, start: int = 0, interval: float = 0.0) -> None:
    """Each case appends two entries, linked with the deployment's audit key; with interval 0
    every commit also signs a checkpoint."""
    upgrade(url)
    engine = make_engine(url)
    keyring = load_keys({}, data_dir / "keys.json")
    audit.bind(engine, keyring, data_dir, audit.AuditSettings(checkpoint_interval_seconds=interval))
    store = StoreBackend(session_factory(engine), FieldCipher(keyring))
    for i in range(start, start + cases):
        store.submit_case(CaseRequest(
            kind="application", category="apply_senior_card",
            subject=Person(name="张三", phone=f"1380013800{i}"), fields={}, channel="sms",
            sender_id=f"s{i}", idempotency_key=f"k{i}"))
    engine.dispose()


def _verify(url: str, data_dir: Path, command: str = "verify") -> tuple[int, str]:
    env = {**os.environ, "DATABASE_URL": url, "DATA_DIR": str(data_dir)}
    for name in ("SM4_KEYS", "SM4_ACTIVE_KEY", "INDEX_KEY", "AUDIT_KEYS", "AUDIT_ACTIVE_KEY"):
        env.pop(name, None)
    res = subprocess.run([sys.executable, "-m", "runtime.cli_privacy", "audit", command], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.stderr == "", res.stderr
    return res.returncode, res.stdout.strip()


def _tamper(url: str, change) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        change(conn)
    engine.dispose()


def _plain_hash(entry: AuditEntry) -> str:
    entry.key_version = 0
    return entry.compute_hash()


def _rechain(conn: Connection, from_id: int, link) -> None:
    """What a forger with database access does: edit entry 3, then recompute every link from
    `from_id` on with `link(entry)` and move audit_head to the new tip."""
    with Session(conn) as session:
        rows = session.scalars(select(AuditEntry).order_by(AuditEntry.id)).all()
        prev = ZERO_HASH
        for entry in rows:
            if entry.id == 3:
                entry.detail = '{"found":false}'
            if entry.id >= from_id:
                entry.prev_hash = prev
                entry.hash = link(entry)
            prev = entry.hash
        session.flush()
        conn.execute(text("UPDATE audit_head SET last_id = :i, last_hash = :h WHERE id = 1"),
                     {"i": rows[-1].id, "h": prev})


def _wrong_key_hash(entry: AuditEntry) -> str:
    return entry.compute_hash({entry.key_version: os.urandom(32)})


def test_keyed_chain_verifies_and_checkpoints_are_written(db_url: str, tmp_path: Path) -> None:
    data_dir = _data_dir(tmp_path)
    _populate(db_url, data_dir)
    engine = make_engine(db_url)
    with Session(engine) as s:
        assert {e.key_version for e in s.scalars(select(AuditEntry))} == {1}
        assert verify_audit_chain(s) is not None  # without the key the links cannot be checked ...
        keys, _ = load_keys({}, data_dir / "keys.json").audit_key_versions()
        assert verify_audit_chain(s, keys) is None  # ... with it they hold
    engine.dispose()
    lines = (data_dir / audit.DEFAULT_CHECKPOINT_FILE).read_text().splitlines()
    assert [line.split("\t")[1] for line in lines] == ["2", "4", "6"]  # one per committed case
    assert _verify(db_url, data_dir) == (0, "ok")


@pytest.mark.parametrize(("from_id", "link", "expected"), [
    (3, _plain_hash, "broken at entry 3: the entry has a plain SM3 link (key version 0) after keyed entry 2"),
    (3, _wrong_key_hash, "broken at entry 3: stored hash does not match the entry's content under its audit key"),
    (1, _plain_hash, "broken at entry 1: entry 2 differs from the checkpoint signed at"),
], ids=["rechained-plain-sm3", "rechained-wrong-key", "whole-chain-rechained-plain"])
def test_rechained_table_fails(db_url: str, tmp_path: Path, from_id: int, link, expected: str) -> None:
    data_dir = _data_dir(tmp_path)
    _populate(db_url, data_dir)
    _tamper(db_url, lambda conn: _rechain(conn, from_id, link))
    code, out = _verify(db_url, data_dir)
    assert code == 1
    assert out.startswith(expected), out


def test_deleted_tail_is_caught_by_the_checkpoint(db_url: str, tmp_path: Path) -> None:
    data_dir = _data_dir(tmp_path)
    _populate(db_url, data_dir)

    def truncate(conn: Connection) -> None:
        kept = conn.execute(text("SELECT hash FROM audit_entries WHERE id = 3")).scalar_one()
        conn.execute(text("DELETE FROM audit_entries WHERE id > 3"))
        conn.execute(text("UPDATE audit_head SET last_id = 3, last_hash = :h WHERE id = 1"), {"h": kept})

    _tamper(db_url, truncate)
    code, out = _verify(db_url, data_dir)
    assert code == 1
    assert out.startswith("broken at entry 4: the checkpoint signed at "), out
    assert "vouches for entries up to 6, the chain ends at 3: entries 4–6 were deleted from the end" in out


def test_edited_checkpoint_file_fails(tmp_path: Path) -> None:
    url, data_dir = f"sqlite:///{tmp_path / 'a.db'}", _data_dir(tmp_path)
    _populate(url, data_dir)
    path = data_dir / audit.DEFAULT_CHECKPOINT_FILE
    lines = path.read_text().splitlines()
    forged = lines[-1].split("\t")
    forged[1] = "3"  # pretend the chain was shorter, keeping the old signature
    path.write_text("\n".join([*lines[:-1], "\t".join(forged)]) + "\n")
    code, out = _verify(url, data_dir)
    assert code == 1 and "checkpoint file line 3 has a wrong signature" in out, out


def test_checkpoint_only_after_commit_and_per_interval(tmp_path: Path) -> None:
    url, data_dir = f"sqlite:///{tmp_path / 'a.db'}", _data_dir(tmp_path)
    upgrade(url)
    engine = make_engine(url)
    audit.bind(engine, load_keys({}, data_dir / "keys.json"), data_dir,
               audit.AuditSettings(checkpoint_interval_seconds=3600))
    path = data_dir / audit.DEFAULT_CHECKPOINT_FILE
    sessions = session_factory(engine)

    def one(rollback: bool = False) -> None:
        with sessions() as s:
            s.begin()
            append_audit(s, at=datetime.now(UTC), actor="t", action="create", entity_type="x", entity_id=None,
                         detail={})
            s.rollback() if rollback else s.commit()

    one(rollback=True)
    assert not path.exists()  # a head that never committed is never signed
    one()
    one()  # within the interval: no second line
    assert [line.split("\t")[1] for line in path.read_text().splitlines()] == ["1"]
    engine.dispose()


def test_legacy_prefix_then_keyed_entries_and_rotation(tmp_path: Path) -> None:
    """Entries from before the upgrade (version 0, no binding) stay valid as the prefix; a key
    rotation adds version 2 and both versions verify, as do checkpoints signed with either."""
    url, data_dir = f"sqlite:///{tmp_path / 'a.db'}", _data_dir(tmp_path)
    upgrade(url)
    engine = make_engine(url)
    keyring = load_keys({}, data_dir / "keys.json")
    StoreBackend(session_factory(engine), FieldCipher(keyring)).submit_case(CaseRequest(
        kind="application", category="apply_senior_card", subject=Person(name="李四", phone="13800138999"),
        fields={}, channel="sms", sender_id="legacy", idempotency_key="legacy"))
    engine.dispose()
    _populate(url, data_dir, cases=1)
    env = {**os.environ, "DATABASE_URL": url, "DATA_DIR": str(data_dir)}
    res = subprocess.run([sys.executable, "-m", "runtime.cli_privacy", "keys", "rotate-audit"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0 and "audit key version 2" in res.stdout, res.stderr
    _populate(url, data_dir, cases=1, start=1)
    engine = make_engine(url)
    with Session(engine) as s:
        assert [e.key_version for e in s.scalars(select(AuditEntry).order_by(AuditEntry.id))] == [0, 0, 1, 1, 2, 2]
    engine.dispose()
    versions = {line.split("\t")[3] for line in (data_dir / audit.DEFAULT_CHECKPOINT_FILE).read_text().splitlines()}
    assert versions == {"1", "2"}
    assert _verify(url, data_dir) == (0, "ok")
    assert _verify(url, data_dir, "checkpoint")[0] == 0

    # a legacy link slipped in after the keyed ones is refused, even with the chain intact
    def downgrade_last(conn: Connection) -> None:
        with Session(conn) as session:
            last = session.scalars(select(AuditEntry).order_by(AuditEntry.id.desc())).first()
            last.key_version = 0
            last.hash = sm3_hex((last.prev_hash + canonical_json({
                "id": last.id, "at": last.at.astimezone(UTC).isoformat(timespec="microseconds"),
                "actor": last.actor, "action": last.action, "entity_type": last.entity_type,
                "entity_id": last.entity_id, "detail": last.detail})).encode())
            session.flush()
            conn.execute(text("UPDATE audit_head SET last_hash = :h WHERE id = 1"), {"h": last.hash})

    _tamper(url, downgrade_last)
    code, out = _verify(url, data_dir)
    assert code == 1 and out.startswith("broken at entry 6: the entry has a plain SM3 link"), out


def test_a_runtime_bound_from_settings_writes_a_keyed_chain(runtime) -> None:
    """What the composition root does for its engine (audit.bind_from_settings): entries keyed
    with the deployment's audit key, checkpoints under DATA_DIR, `audit verify` ok."""
    settings = runtime.settings
    binding = audit.bind_from_settings(runtime.db_sessions.kw["bind"], settings)
    runtime.calls.start("CA-bound", "13800138000")
    runtime.calls.start("CA-bound-2", None)
    with runtime.db_sessions() as s:
        assert {e.key_version for e in s.scalars(select(AuditEntry))} == {binding.active}
        assert verify_audit_chain(s) is None  # the session's engine binding supplies the keys
    # a process signs its first committed head at once, then at most every interval (300 s)
    lines = (settings.data_dir / audit.DEFAULT_CHECKPOINT_FILE).read_text().splitlines()
    assert [line.split("\t")[1] for line in lines] == ["1"]
    assert _verify(settings.database_url, settings.data_dir) == (0, "ok")
    code, out = _verify(settings.database_url, settings.data_dir, "checkpoint")
    assert code == 0 and out.startswith("checkpoint of entry 2 written"), out
    assert _verify(settings.database_url, settings.data_dir) == (0, "ok")
