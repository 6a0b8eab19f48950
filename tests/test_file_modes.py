"""Personal data at rest is owner-only on disk: folders 0700, files 0600, on a fresh install and
on one an older version left readable (issue 17). Real SQLite files, real photos, the real CLI."""
from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures.twilio_world import jpeg
from sqlalchemy import text

from assistant.config import load_settings
from backend.infra import db
from backend.tickets.media import MediaPolicy, MediaStore
from runtime.container import build_runtime

ROOT = Path(__file__).resolve().parent.parent


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def shell_umask() -> Iterator[None]:
    """The usual login umask (022): what made var/ 0755 and the store 0644 before."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _write_something(runtime) -> None:
    with runtime.db_sessions() as session, session.begin():
        session.execute(text("CREATE TABLE IF NOT EXISTS mode_probe (x TEXT)"))
        session.execute(text("INSERT INTO mode_probe VALUES ('x')"))


def test_a_fresh_install_is_owner_only(settings_env, nlu, clock, shell_umask):
    data_dir = Path(settings_env["DATA_DIR"])
    assert not data_dir.exists()
    runtime = build_runtime(load_settings(settings_env), clock=clock, nlu=nlu)
    _write_something(runtime)
    database = Path(settings_env["DATABASE_URL"].removeprefix("sqlite:///"))
    assert mode(data_dir) == 0o700
    assert mode(database) == 0o600
    wal, shm = Path(f"{database}-wal"), Path(f"{database}-shm")
    assert wal.exists() and shm.exists()  # WAL mode: both exist while a connection is open
    assert mode(wal) == 0o600 and mode(shm) == 0o600
    assert mode(data_dir / "keys.json") == 0o600
    stored = MediaStore(data_dir / "media", MediaPolicy()).ingest(jpeg("blue"), "image/jpeg")  # as the loop does
    assert mode(stored.path) == 0o600
    assert mode(stored.path.parent) == 0o700 and mode(stored.path.parent.parent) == 0o700
    others = [p for p in data_dir.rglob("*") if mode(p) & 0o077]
    assert others == [], f"readable by other users: {others}"


def test_a_database_outside_data_dir_gets_private_folders_but_shared_parents_stay(tmp_path, shell_umask):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    database = shared / "new" / "deeper" / "store.db"
    engine = db.make_engine(f"sqlite:///{database}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x TEXT)"))
    assert mode(shared) == 0o755  # existed before: not ours to change
    assert mode(shared / "new") == 0o700 and mode(shared / "new" / "deeper") == 0o700
    assert mode(database) == 0o600 and mode(Path(f"{database}-wal")) == 0o600
    engine.dispose()


def test_an_old_readable_install_is_tightened_at_start_and_logged(settings_env, nlu, clock, shell_umask,
                                                                  tmp_path, caplog):
    data_dir = Path(settings_env["DATA_DIR"])
    (data_dir / "media" / "ab").mkdir(parents=True, mode=0o755)
    (data_dir / "tts" / "espeak").mkdir(parents=True, mode=0o755)
    database = Path(settings_env["DATABASE_URL"].removeprefix("sqlite:///"))
    first = build_runtime(load_settings(settings_env), clock=clock, nlu=nlu)
    _write_something(first)
    # What an older version (and a 022 umask) left behind.
    outside = tmp_path / "outside.txt"
    outside.write_text("not ours")
    outside.chmod(0o644)
    for path in (data_dir, data_dir / "media", data_dir / "media" / "ab", data_dir / "tts",
                 data_dir / "tts" / "espeak"):
        path.chmod(0o755)
    photo = data_dir / "media" / "ab" / ("ab" * 32 + ".jpg")
    photo.write_bytes(jpeg())
    speech = data_dir / "tts" / "espeak" / "readback.wav"
    speech.write_bytes(b"RIFF")
    for path in (photo, speech, data_dir / "keys.json", database, Path(f"{database}-wal"),
                 Path(f"{database}-shm")):
        path.chmod(0o644)
    tool = data_dir / "tts" / "run.sh"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    (data_dir / "link-out").symlink_to(outside)
    caplog.set_level(logging.WARNING)
    runtime = build_runtime(load_settings(settings_env), clock=clock, nlu=nlu)
    _write_something(runtime)
    assert [p for p in data_dir.rglob("*") if not p.is_symlink() and mode(p) & 0o077] == []
    assert mode(data_dir) == 0o700 and mode(data_dir / "media" / "ab") == 0o700
    assert mode(photo) == 0o600 and mode(speech) == 0o600 and mode(database) == 0o600
    assert mode(tool) == 0o700  # owner's execute bit is kept, only group/other go
    assert mode(outside) == 0o644  # a symlink's target outside DATA_DIR is left alone
    assert "owner-only" in caplog.text and str(data_dir) in caplog.text
    caplog.clear()
    build_runtime(load_settings(settings_env), clock=clock, nlu=nlu)
    assert "owner-only" not in caplog.text  # nothing left to fix: no warning at every start


def test_photos_are_stored_owner_only(tmp_path, shell_umask):
    store = MediaStore(tmp_path / "media", MediaPolicy())
    stored = store.ingest(jpeg("green"), "image/jpeg")
    assert mode(stored.path) == 0o600
    assert mode(tmp_path / "media") == 0o700 and mode(stored.path.parent) == 0o700


def test_the_cli_runs_with_an_owner_only_umask(tmp_path, model_dir):
    """`python -m assistant …` from a shell with umask 022: what it creates is owner-only, also
    files no module sets a mode for."""
    data_dir = tmp_path / "var"
    env = {**os.environ, "DATA_DIR": str(data_dir), "MODEL_DIR": str(model_dir),
           "DATABASE_URL": f"sqlite:///{data_dir / 'cli.db'}"}
    env.pop("LOG_FILE", None)
    done = subprocess.run([sys.executable, "-m", "assistant", "db", "upgrade"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, preexec_fn=lambda: os.umask(0o022))
    assert done.returncode == 0, done.stderr[-2000:]
    assert mode(data_dir) == 0o700 and mode(data_dir / "cli.db") == 0o600
    probe = (
        "import os, sys; sys.argv = ['assistant', 'db', 'upgrade']\n"
        "from runtime import cli\n"
        "cli.main(sys.argv[1:])\n"
        "open(os.path.join(os.environ['DATA_DIR'], 'made-later.log'), 'w').close()\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120, preexec_fn=lambda: os.umask(0o022))
    assert done.returncode == 0, done.stderr[-2000:]
    assert mode(data_dir / "made-later.log") == 0o600
