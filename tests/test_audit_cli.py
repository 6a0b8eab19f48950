"""`audit verify` as an operator runs it: a separate process against the database, printing
"ok" or the first broken entry and what is wrong with it."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Connection, text
from sqlalchemy.orm import Session

from assistant.ports import CaseRequest, Person
from backend.affairs import StoreBackend
from backend.infra.audit_chain import AuditEntry
from backend.infra.crypto import FieldCipher, KeyRing
from backend.infra.db import make_engine, session_factory, upgrade
from runtime.cli_privacy import register

ROOT = Path(__file__).resolve().parent.parent


def _populate(url: str, cases: int = 3) -> None:
    """Each case appends two entries (resident created, application created): ids 1..6."""
    upgrade(url)
    engine = make_engine(url)
    cipher = FieldCipher(KeyRing({1: bytes(range(16))}, 1, bytes(range(32))))
    store = StoreBackend(session_factory(engine), cipher)
    for i in range(cases):
        store.submit_case(CaseRequest(
            kind="application", category="apply_senior_card",
            subject=Person(name="张三", phone=f"1380013800{i}"), fields={}, channel="sms",
            sender_id=f"s{i}", idempotency_key=f"k{i}"))
    engine.dispose()


def _tamper(url: str, change: Callable[[Connection], None]) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        change(conn)
    engine.dispose()


def _verify(url: str, tmp_path: Path) -> tuple[int, str]:
    env = {**os.environ, "DATABASE_URL": url, "DATA_DIR": str(tmp_path / "var")}
    res = subprocess.run([sys.executable, "-m", "runtime.cli_privacy", "audit", "verify"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.stderr == "", res.stderr
    return res.returncode, res.stdout.strip()


def _edit(conn: Connection) -> None:
    conn.execute(text("UPDATE audit_entries SET detail = :d WHERE id = 3"), {"d": '{"found":false}'})


def _edit_and_rehash(conn: Connection) -> None:
    # A careful forger recomputes the edited row's own hash: the next row still gives it away.
    with Session(conn) as session:
        entry = session.get(AuditEntry, 3)
        assert entry is not None
        entry.detail = '{"found":false}'
        entry.hash = entry.compute_hash()
        session.flush()


def _delete(conn: Connection) -> None:
    conn.execute(text("DELETE FROM audit_entries WHERE id = 3"))


def _reorder(conn: Connection) -> None:
    conn.execute(text("UPDATE audit_entries SET id = -1 WHERE id = 3"))
    conn.execute(text("UPDATE audit_entries SET id = 3 WHERE id = 4"))
    conn.execute(text("UPDATE audit_entries SET id = 4 WHERE id = -1"))


def _truncate_tail(conn: Connection) -> None:
    conn.execute(text("DELETE FROM audit_entries WHERE id = 6"))


@pytest.mark.parametrize(("change", "expected"), [
    (_edit, "broken at entry 3: stored hash does not match the entry's content"),
    (_edit_and_rehash, "broken at entry 4: prev_hash does not match entry 3"),
    (_delete, "broken at entry 3: entry is missing (deleted); the chain jumps to entry 4"),
    (_reorder, "broken at entry 3: stored hash does not match the entry's content"),
    (_truncate_tail, "broken at entry 6: entry is missing (deleted from the end)"),
], ids=["edited", "edited-rehashed", "deleted", "reordered", "tail-deleted"])
def test_verify_names_the_first_broken_entry(db_url: str, tmp_path: Path, change, expected: str) -> None:
    _populate(db_url)
    assert _verify(db_url, tmp_path) == (0, "ok")
    _tamper(db_url, change)
    code, out = _verify(db_url, tmp_path)
    assert code == 1
    assert out.startswith(expected), out


def test_empty_chain_is_ok_and_register_adds_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    upgrade(url)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "var"))
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["audit", "verify"])
    assert args.func(args) == 0
    assert capsys.readouterr().out.strip() == "ok"
