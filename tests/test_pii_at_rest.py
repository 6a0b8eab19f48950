"""No personal value at rest in the clear (PIPL, issue 17): a realistic session through the real
app — an application and a photo report by SMS from a mobile number, an application typed into
the REST channel with the ID number and phone grouped, a hand-over, a staff read — with the
application's own log handlers writing to files at DEBUG; then the raw bytes of the SQLite file,
its -wal and -shm, every file under DATA_DIR and the logs must not contain any of the ID numbers,
phone numbers or names used, in any grouping."""
from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from fixtures.twilio_world import RESIDENT, jpeg
from sms_fixtures import reference_in
from sqlalchemy import inspect, text

from backend.infra.observability import make_handler
from core_fixtures import make_id

STAFF = {"Authorization": "Bearer staff-token-for-tests", "X-Staff-Name": "wang"}
ID_BY_SMS = make_id("19450302", region="110101", seq="001")
ID_BY_REST = make_id("19400101", region="310104", seq="123")
PHONE_IN_REPORT = "13712345678"
PHONE_BY_REST = "13655501234"
NAME_BY_SMS, NAME_BY_REST = "王建国", "李秀英"
SECRETS = {
    "SMS sender phone": RESIDENT.removeprefix("+86"),
    "phone in an SMS report": PHONE_IN_REPORT,
    "phone typed in REST": PHONE_BY_REST,
    "ID number by SMS": ID_BY_SMS,
    "ID number typed in REST": ID_BY_REST,
    "name by SMS": NAME_BY_SMS,
    "name typed in REST": NAME_BY_REST,
}
# Between any two digits: nothing, a space, a dash, a dot or an ideographic space (UTF-8), so
# "13800138000", "138 0013 8000", "+86-138-0013-8000" and "110101 19450302 0010" all match.
_SEP = rb"(?:[ \-.]|\xe3\x80\x80)?"


def _pattern(value: str) -> re.Pattern[bytes]:
    if value.isascii():
        return re.compile(_SEP.join(re.escape(ch.encode()) for ch in value), re.IGNORECASE)
    return re.compile(re.escape(value.encode("utf-8")))


PATTERNS = {label: _pattern(value) for label, value in SECRETS.items()}


def _find(data: bytes) -> list[tuple[str, str]]:
    found = []
    for label, pattern in PATTERNS.items():
        for match in pattern.finditer(data):
            context = data[max(0, match.start() - 60):match.end() + 60]
            found.append((label, context.decode("utf-8", "replace").replace("\n", " ")))
    return found


def _locate_in_tables(engine) -> list[str]:
    """Which table.column holds a value in the clear (to say where a raw-byte hit comes from)."""
    places = []
    with engine.connect() as conn:
        for table in inspect(conn).get_table_names():
            for row in conn.execute(text(f'SELECT * FROM "{table}"')).mappings():
                for column, value in row.items():
                    if value is None:
                        continue
                    raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
                    places += [f"{table}.{column}: {label}" for label, _ in _find(raw)]
    return sorted(set(places))


@pytest.fixture
def debug_logs(tmp_path: Path):
    """The production handlers (text and JSON, with their masking) writing to files at DEBUG."""
    root = logging.getLogger()
    old_level = root.level
    files = [tmp_path / "logs" / "assistant.log", tmp_path / "logs" / "assistant.jsonl"]
    files[0].parent.mkdir()
    streams = [f.open("w", encoding="utf-8") for f in files]
    handlers = [make_handler("text", streams[0]), make_handler("json", streams[1])]
    for handler in handlers:
        handler.setLevel(logging.DEBUG)
        root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield files
    finally:
        for handler in handlers:
            root.removeHandler(handler)
        root.setLevel(old_level)
        for stream in streams:
            stream.close()


def _rest(client, sender: str, message: str) -> str:
    response = client.post("/webhooks/rest/webhook", json={"sender": sender, "message": message})
    assert response.status_code == 200, response.get_data(as_text=True)
    return "".join(item["text"] for item in response.get_json())


def _grouped(value: str, sizes: tuple[int, ...]) -> str:
    parts, start = [], 0
    for size in sizes:
        parts.append(value[start:start + size])
        start += size
    return " ".join(parts)


def test_no_personal_value_is_left_in_the_clear_on_disk(sms, debug_logs):
    # 1. An application by SMS: the channel knows the sender's number.
    assert "身份证" in "".join(sms.send("办老年证"))
    sms.send(ID_BY_SMS)
    sms.send(f"我叫{NAME_BY_SMS}")
    done = "".join(sms.send("1"))
    assert "受理编号" in done, done
    # 2. A photo report by MMS with another phone number in the text; the worker routes it.
    report = reference_in(sms.send(f"阳光小区3号楼路灯坏了 有事打我电话{_grouped(PHONE_IN_REPORT, (3, 4, 4))}",
                                   media=[(sms.media.add("pii.jpg", jpeg()), "image/jpeg")])[0])
    sms.run_jobs(after_seconds=121)
    assert "".join(sms.send("进度"))
    # 3. A hand-over to a person (asks for a call back to the sender's number).
    assert "工作人员" in "".join(sms.send("0"))
    # 4. An application typed into the REST channel, ID and phone grouped as people type them.
    client, sender = sms.client, "rest-pii-1"
    assert "身份证" in _rest(client, sender, "我想办高龄津贴")
    _rest(client, sender, f"身份证号{_grouped(ID_BY_REST, (6, 8, 4))}")
    _rest(client, sender, f"我叫{NAME_BY_REST}")
    _rest(client, sender, _grouped(PHONE_BY_REST, (3, 4, 4)))
    confirmed = _rest(client, sender, "对")
    assert "受理编号" in confirmed, confirmed
    # 5. A staff member reads the report with its private part (an audited read), and acts.
    read = client.get(f"/staff/api/tickets/{report}", headers=STAFF)
    assert read.status_code == 200 and read.get_json()["reference"] == report
    assert client.post(f"/staff/api/tickets/{report}/accept", json={}, headers=STAFF).status_code == 200
    sms.run_jobs(after_seconds=60)
    assert sms.texts_to(), "the resident got no SMS: the session did not run"

    for handler in logging.getLogger().handlers:
        handler.flush()
    settings = sms.runtime.settings
    database = Path(settings.database_url.removeprefix("sqlite:///"))
    data_dir = Path(settings.data_dir)
    assert database.exists() and Path(f"{database}-wal").exists()
    scanned = {database, Path(f"{database}-wal"), Path(f"{database}-shm"), *debug_logs}
    scanned |= {p for p in data_dir.rglob("*") if p.is_file() and not p.is_symlink()}
    assert any(p.suffix == ".jpg" for p in scanned)  # the stored photo is among them
    assert debug_logs[0].stat().st_size > 0  # the log did capture the session
    raw = {path: path.read_bytes() for path in sorted(scanned) if path.exists()}
    # The scan sees the session's writes: the public reference numbers are there in the clear.
    store = raw[database] + raw[Path(f"{database}-wal")]
    application = re.search(r"受理编号(\d{8})", done).group(1)
    assert report.encode() in store and application.encode() in store
    leaks = [f"{path.name}: {label}: …{context}…" for path, data in raw.items() for label, context in _find(data)]
    places = _locate_in_tables(sms.loop.desk._sessions.kw["bind"]) if leaks else []
    assert not leaks, "personal values in the clear on disk:\n" + "\n".join(places + leaks)


def test_an_upgraded_store_keeps_no_old_plaintext_keys_on_disk(tmp_path):
    """Keys stored before 0007 named the sender ("sms:+86…:form"); after the upgrade they must be
    gone from the file itself, not just from the rows (freed pages are zeroed: secure_delete)."""
    import sqlite3

    from backend.infra import db

    database = tmp_path / "old.db"
    url = f"sqlite:///{database}"
    db.upgrade(url, "0006")
    old = sqlite3.connect(database)
    with old:
        old.executemany(
            "INSERT INTO handoffs (reference, status, channel, sender_hash, idempotency_key, created_at, "
            "updated_at, reason, urgent) VALUES (?, 'open', 'sms', ?, ?, '2026-01-01', '2026-01-01', "
            "'user_request', 0)",
            [(f"4{i:07d}", "0" * 64, f"sms:{RESIDENT}:handoff:{i}") for i in range(40)])
    old.close()
    assert PATTERNS["SMS sender phone"].search(database.read_bytes())  # the old file does hold it
    db.upgrade(url)
    engine = db.make_engine(url)
    with engine.connect() as conn:
        keys = [k for (k,) in conn.execute(text("SELECT idempotency_key FROM handoffs"))]
    assert len(keys) == 40 and not any(RESIDENT in k for k in keys)
    files = [p for p in (database, Path(f"{database}-wal"), Path(f"{database}-shm")) if p.exists()]
    leaks = [(p.name, label) for p in files for label, _ in _find(p.read_bytes())]
    engine.dispose()
    assert not leaks, f"old keys still readable on disk after the upgrade: {leaks}"
