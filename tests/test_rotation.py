"""SM4 key rotation: old rows stay readable, the re-encryption job converts every `*_enc`
value (resumable, idempotent, never overwriting a concurrent write), the key file and env
commands, and the production key policy. The last test scans this module's SQLite files."""
from __future__ import annotations

import argparse
import itertools
import json
import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import sqlite_files_in_one_folder
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session, sessionmaker

from assistant.ports import CaseRequest, HandoffRequest, Person
from backend.affairs import StoreBackend
from backend.infra.audit_chain import AuditEntry, verify_audit_chain
from backend.infra.crypto import FieldCipher, KeyRing, load_keys
from backend.infra.db import make_engine, session_factory, upgrade
from backend.infra.keys_policy import KeyPolicyError, assert_keys_allowed, load_allowed_keys
from backend.infra.models import Resident
from backend.infra.rotation import (
    activate_in_file,
    add_key_to_file,
    encrypted_tables,
    reencrypt,
)
from backend.people.proxy import ProxyService, RecordingNotifier
from core_fixtures import FakeClock
from runtime.cli_privacy import register

K1, K2 = bytes.fromhex("5f1c2a9be0d34f8e91a7c6b2d4e8f013"), bytes.fromhex("a3e19c07b5d2486f9e1b0c7d3a5f6e29")
INDEX = bytes.fromhex("7c3e9a1f5b2d8e4c6a0f9b3d7e1c5a2f8b4d0e6c2a9f7b1d3e5c8a0f6b2d4e9c")
V1 = KeyRing({1: K1}, 1, INDEX)
V2 = KeyRing({1: K1, 2: K2}, 2, INDEX)
ONLY_V2 = KeyRing({2: K2}, 2, INDEX)
IDS = ["110101194503020012", "11010119470807002X", "110101195001010015"]
PHONES = ["13800138000", "13700002222", "13912345678"]
NAMES = ["张三华", "李四娘", "王秀兰"]
SECRETS = IDS + PHONES + NAMES


# conftest's db_url, with SQLite files kept in one folder for the final scan.
scan_dir, db_url = sqlite_files_in_one_folder("rotation-sqlite")


@dataclass
class Db:
    url: str
    engine: Engine
    sessions: sessionmaker[Session]
    clock: FakeClock

    def store(self, keys: KeyRing) -> StoreBackend:
        return StoreBackend(self.sessions, FieldCipher(keys), self.clock)

    def snapshot(self, keys: KeyRing) -> dict[tuple[str, int, str], str]:
        """Every encrypted value in the database, decrypted."""
        cipher, out = FieldCipher(keys), {}
        with self.sessions() as s:
            for name, (table, columns) in encrypted_tables(self.engine).items():
                pk = next(iter(table.primary_key.columns))
                for row in s.execute(select(pk, *columns)):
                    for column, token in zip(columns, row[1:], strict=True):
                        if token is not None:
                            out[(name, row[0], column.name)] = cipher.decrypt(token)
        return out

    def key_versions(self) -> list[int]:
        cipher = FieldCipher(V2)
        found: list[int] = []
        with self.sessions() as s:
            for _table, columns in encrypted_tables(self.engine).values():
                for row in s.execute(select(*columns)):
                    found += [cipher.key_version(t) for t in row if t is not None]
        return found

    def versions(self) -> set[int]:
        return set(self.key_versions())

    def count_version(self, version: int) -> int:
        return self.key_versions().count(version)


@pytest.fixture
def db(db_url: str) -> Iterator[Db]:
    upgrade(db_url)
    engine = make_engine(db_url)
    yield Db(db_url, engine, session_factory(engine), FakeClock())
    engine.dispose()


_keys = itertools.count()


def application(i: int) -> CaseRequest:
    # Distinct categories: a second open application of the same kind would be answered
    # with the first one's reference (the duplicate rule), not filed.
    return CaseRequest(kind="application", category="apply_senior_card" if i < 3 else "apply_elderly_allowance",
                       subject=Person(name=NAMES[i % 3], id_number=IDS[i % 3], phone=PHONES[i % 3]),
                       fields={"address": f"幸福路{i}号"}, channel="sms", sender_id=PHONES[i % 3],
                       verified_phone=PHONES[i % 3], idempotency_key=f"app-{next(_keys)}")


def fill(db: Db, keys: KeyRing) -> list[str]:
    """Residents, applications, a handoff and a proxy grant under `keys`; their references."""
    store = db.store(keys)
    refs = [store.submit_case(application(i)).reference for i in range(3)]
    refs.append(store.create_handoff(HandoffRequest(
        sender_id="CA1", channel="voice", phone=PHONES[0], reason="user_request", urgent=False,
        transcript=(("user", f"我是{NAMES[0]}"),), form_name=None, form_slots={},
        idempotency_key=f"h-{next(_keys)}")).reference)
    ProxyService(db.sessions, FieldCipher(keys), RecordingNotifier(), db.clock).request(
        senior_phone=PHONES[1], proxy_phone=PHONES[2], relation="son")
    return refs


def test_rotation_keeps_old_rows_readable_and_reencrypt_converts_them_all(db: Db) -> None:
    refs = fill(db, V1)
    assert {t for t, _, _ in db.snapshot(V1)} >= {"residents", "applications", "handoffs", "proxy_grants"}

    new_store = db.store(V2)  # restarted with version 2 active
    assert new_store.get_case(refs[0]).subject.id_number == IDS[0]  # a version-1 row
    refs.append(new_store.submit_case(application(3)).reference)  # also rewrites resident 1's address
    assert db.versions() == {1, 2}
    before, stale = db.snapshot(V2), db.count_version(1)

    cipher = FieldCipher(V2)
    first = reencrypt(db.engine, cipher, now=db.clock, batch_size=1, max_batches=2)
    assert not first.complete and first.remaining > 0
    assert db.versions() == {1, 2}
    assert all(new_store.get_case(r) is not None for r in refs)  # readable mid-way

    second = reencrypt(db.engine, cipher, now=db.clock, batch_size=2)  # carries on
    assert second.complete and second.remaining == 0
    assert db.versions() == {2}
    converted = sum(t.values for t in first.tables.values()) + sum(t.values for t in second.tables.values())
    assert converted == stale  # each old value rewritten exactly once
    assert all(t.failed == 0 and t.conflicts == 0 for t in second.tables.values())

    third = reencrypt(db.engine, cipher, now=db.clock)
    assert sum(t.values for t in third.tables.values()) == 0  # idempotent

    after = db.snapshot(ONLY_V2)  # version 1 could now be retired
    assert {k: v for k, v in after.items() if k in before} == before
    detail = db.store(ONLY_V2).get_case(refs[0])
    assert detail is not None and (detail.subject.name, detail.subject.phone) == (NAMES[0], PHONES[0])
    with db.sessions() as s, s.begin():
        assert verify_audit_chain(s) is None
        runs = s.scalars(select(AuditEntry).where(AuditEntry.entity_type == "keyring")).all()
    assert len(runs) == 3 and all(IDS[0] not in r.detail and PHONES[0] not in r.detail for r in runs)


def test_undecryptable_values_are_reported_and_left_alone(db: Db) -> None:
    fill(db, V1)
    with db.sessions() as s, s.begin():
        s.execute(update(Resident).where(Resident.id == 1).values(name_enc="9:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="))
    report = reencrypt(db.engine, FieldCipher(V2), now=db.clock)
    assert report.tables["residents"].failed == 1 and report.remaining == 1
    with db.sessions() as s:
        assert s.get(Resident, 1).name_enc.startswith("9:")


def test_a_value_changed_during_the_job_is_not_overwritten(db: Db, db_url: str, monkeypatch) -> None:
    if db_url.startswith("sqlite"):
        pytest.skip("SQLite serialises writers (BEGIN IMMEDIATE): nothing can interleave")
    fill(db, V1)
    old_worker = FieldCipher(V1)  # a worker not restarted yet writes with version 1
    cipher = FieldCipher(V2)
    real = cipher.reencrypt
    changed: list[bool] = []

    with db.sessions() as s:
        target = s.get(Resident, 1).name_enc

    def interleaved(token: str) -> str:
        if token == target and not changed:
            changed.append(True)
            with db.engine.begin() as conn:  # another connection commits between read and write
                conn.execute(update(Resident).where(Resident.id == 1).values(
                    name_enc=old_worker.encrypt("李四娘改")))
        return real(token)

    monkeypatch.setattr(cipher, "reencrypt", interleaved)
    report = reencrypt(db.engine, cipher, now=db.clock, batch_size=50)
    assert report.tables["residents"].conflicts == 1
    monkeypatch.undo()
    assert reencrypt(db.engine, cipher, now=db.clock).remaining == 0
    with db.sessions() as s:
        assert cipher.decrypt(s.get(Resident, 1).name_enc) == "李四娘改"


def test_reencrypt_while_the_server_writes(db: Db) -> None:
    fill(db, V1)
    store = db.store(V2)
    errors: list[BaseException] = []
    refs: list[str] = []

    def server() -> None:
        try:
            for i in range(15):
                refs.append(store.submit_case(application(i)).reference)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=server)
    thread.start()
    reencrypt(db.engine, FieldCipher(V2), now=db.clock, batch_size=1)
    thread.join(timeout=120)
    assert not errors and len(refs) == 15
    assert reencrypt(db.engine, FieldCipher(V2), now=db.clock).remaining == 0
    assert db.versions() == {2}
    assert all(db.store(ONLY_V2).get_case(r) is not None for r in refs)


# --- key material and commands -----------------------------------------------------------------
def test_key_file_rotate_stage_and_activate(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    first = load_keys({}, path)  # generated like a first start
    assert add_key_to_file(path, activate=True) == 2
    rotated = load_keys({}, path)
    assert rotated.active_version == 2 and rotated.sm4_keys[1] == first.sm4_keys[1]
    assert rotated.index_key == first.index_key and rotated.is_development
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert add_key_to_file(path, activate=False) == 3
    assert load_keys({}, path).active_version == 2
    activate_in_file(path, 3)
    assert load_keys({}, path).active_version == 3
    assert [p.name for p in tmp_path.iterdir()] == ["keys.json"]  # no temp files left


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_keys_commands_on_the_key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("SM4_KEYS", "SM4_ACTIVE_KEY", "INDEX_KEY", "APP_ENV"):
        monkeypatch.delenv(name, raising=False)
    data_dir = tmp_path / "var"
    url = f"sqlite:///{data_dir / 'assistant.db'}"
    monkeypatch.setenv("DATA_DIR", str(data_dir))
    monkeypatch.setenv("DATABASE_URL", url)
    upgrade(url)
    keys = load_keys({}, data_dir / "keys.json")
    engine = make_engine(url)
    StoreBackend(session_factory(engine), FieldCipher(keys)).submit_case(application(0))
    engine.dispose()

    assert _cli(["keys", "rotate"]) == 0
    assert "version 2" in capsys.readouterr().out
    assert _cli(["keys", "reencrypt", "--batch", "1", "--max-batches", "1"]) == 1  # more to do
    capsys.readouterr()
    assert _cli(["keys", "reencrypt"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["complete"] and summary["remaining"] == 0 and summary["active_version"] == 2
    assert _cli(["keys", "activate", "7"]) == 2  # not loaded


def test_keys_rotate_with_env_keys_prints_the_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("SM4_KEYS", f"1:{K1.hex()}")
    monkeypatch.setenv("INDEX_KEY", INDEX.hex())
    monkeypatch.delenv("SM4_ACTIVE_KEY", raising=False)
    assert _cli(["keys", "rotate"]) == 0
    keys_line, active_line = capsys.readouterr().out.strip().splitlines()
    assert keys_line.startswith(f"SM4_KEYS=1:{K1.hex()},2:") and active_line == "SM4_ACTIVE_KEY=2"
    parsed = load_keys({"SM4_KEYS": keys_line.split("=", 1)[1], "INDEX_KEY": INDEX.hex(),
                        "SM4_ACTIVE_KEY": "2"})
    assert parsed.active_version == 2 and len(parsed.sm4_keys[2]) == 16
    assert not (tmp_path / "var" / "keys.json").exists()  # nothing written
    assert _cli(["keys", "rotate", "--stage"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[1] == "SM4_ACTIVE_KEY=1"


# --- production policy -------------------------------------------------------------------------
def test_production_refuses_development_keys(tmp_path: Path) -> None:
    dev = load_keys({}, tmp_path / "keys.json")
    with pytest.raises(KeyPolicyError, match="development key file"):
        assert_keys_allowed({"APP_ENV": "production"}, dev)
    assert_keys_allowed({"APP_ENV": "development"}, dev)  # fine on one machine
    assert_keys_allowed({}, dev)
    real = load_keys({"SM4_KEYS": f"1:{K1.hex()},2:{K2.hex()}", "INDEX_KEY": INDEX.hex()})
    assert_keys_allowed({"APP_ENV": "production"}, real)


def test_production_start_never_generates_a_key_file(tmp_path: Path) -> None:
    path = tmp_path / "var" / "keys.json"
    with pytest.raises(KeyPolicyError, match="SM4_KEYS and INDEX_KEY are not set"):
        load_allowed_keys({"APP_ENV": "production"}, path)
    assert not path.exists()
    env = {"APP_ENV": "production", "SM4_KEYS": f"1:{K1.hex()}", "INDEX_KEY": INDEX.hex()}
    assert load_allowed_keys(env, path).active_version == 1
    assert load_allowed_keys({}, path).is_development  # development: generated as before
    with pytest.raises(KeyPolicyError):
        load_allowed_keys({**env, "SM4_KEYS": f"1:{bytes(16).hex()}"}, path)


@pytest.mark.parametrize("keys", [
    KeyRing({1: bytes(range(16))}, 1, INDEX),  # the counting key the tests use
    KeyRing({1: bytes(16)}, 1, INDEX),
    KeyRing({1: K1, 2: K1}, 2, INDEX),  # rotated to the same key
    KeyRing({1: K1}, 1, bytes(32)),
])
def test_production_refuses_placeholder_keys(keys: KeyRing) -> None:
    with pytest.raises(KeyPolicyError, match="refusing to start with APP_ENV=production"):
        assert_keys_allowed({"APP_ENV": "PRODUCTION"}, keys)


# --- must stay last ----------------------------------------------------------------------------
def test_zz_no_plaintext_in_the_sqlite_files(scan_dir: Path) -> None:
    files = [p for p in scan_dir.iterdir() if p.is_file()]
    assert any(p.suffix == ".db" and p.stat().st_size > 0 for p in files)
    for path in files:
        data = path.read_bytes()
        for secret in SECRETS:
            assert secret.encode("utf-8") not in data, f"{secret[:3]}… in clear in {path.name}"
    assert os.environ.get("APP_ENV", "") != "production"  # nothing above leaked into the process
