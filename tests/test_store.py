"""StoreBackend on SQLite and Postgres: cases, idempotency, status events, the audit chain,
encryption at rest, progress lookups and the Alembic schema."""
from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, func, inspect, select, text
from sqlalchemy.orm import Session, sessionmaker

from assistant.ports import CaseRequest, HandoffRequest, Person
from backend import affairs as services
from backend.affairs import StoreBackend
from backend.affairs.references import (
    is_valid_reference,
    luhn_check_digit,
    new_reference,
    reference_kind,
)
from backend.infra import schema
from backend.infra.audit_chain import AuditEntry, verify_audit_chain
from backend.infra.crypto import FieldCipher, KeyRing
from backend.infra.db import make_engine, session_factory, upgrade
from backend.infra.models import Application, Base, Booking, Handoff, Resident, StatusEvent, Ticket

ID_NUMBER = "110101194503020012"
PHONE = "13800138000"
NAME = "张三华"
ADDRESS = "幸福路8号3单元502"
SECRETS = [ID_NUMBER, PHONE, NAME, ADDRESS, "13912345678", "李四娘", "11010119500101002X"]


class StepClock:
    """Each call is one second later, so 'newest first' is well defined on every database."""

    def __init__(self) -> None:
        self._now = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            self._now += timedelta(seconds=1)
            return self._now


@dataclass
class Env:
    url: str
    engine: Engine
    sessions: sessionmaker[Session]
    backend: StoreBackend

    def count(self, model: type[Base]) -> int:
        with self.sessions() as s:
            return int(s.scalar(select(func.count()).select_from(model)) or 0)

    def verify(self) -> int | None:
        with self.sessions() as s, s.begin():
            return verify_audit_chain(s)


@pytest.fixture
def cipher() -> FieldCipher:
    return FieldCipher(KeyRing({1: bytes(range(16))}, 1, bytes(range(32))))


def _open(url: str, cipher: FieldCipher) -> Env:
    upgrade(url)
    engine = make_engine(url)
    sessions = session_factory(engine)
    return Env(url, engine, sessions, StoreBackend(sessions, cipher, StepClock()))


@pytest.fixture
def env(db_url: str, cipher: FieldCipher) -> Iterator[Env]:
    opened = _open(db_url, cipher)
    yield opened
    opened.engine.dispose()


@pytest.fixture
def sqlite_env(tmp_path: Path, cipher: FieldCipher) -> Iterator[Env]:
    opened = _open(f"sqlite:///{tmp_path / 'store.db'}", cipher)
    yield opened
    opened.engine.dispose()


_keys = itertools.count()


def case(kind: str = "application", category: str = "apply_senior_card", *,
         name: str | None = NAME, id_number: str | None = ID_NUMBER, phone: str | None = PHONE,
         fields: dict | None = None, key: str | None = None,
         submitted_by_phone: str | None = None) -> CaseRequest:
    return CaseRequest(
        kind=kind,
        category=category,
        subject=Person(name=name, id_number=id_number, phone=phone),
        fields={"address": ADDRESS} if fields is None else fields,
        channel="sms",
        sender_id=phone or "kiosk-1",
        idempotency_key=key or f"msg-{next(_keys)}",
        submitted_by_phone=submitted_by_phone,
    )


def handoff(key: str = "call-1", **kw: object) -> HandoffRequest:
    base: dict = dict(
        sender_id="CA123", channel="voice", phone=PHONE, reason="emergency", urgent=True,
        transcript=(("user", f"我摔倒了 我电话{PHONE}"), ("bot", "马上为您转接工作人员")),
        form_name="report_issue", form_slots={"location": ADDRESS}, idempotency_key=key,
    )
    base.update(kw)
    return HandoffRequest(**base)


# --- references ----------------------------------------------------------------------------------
def test_references_shape_and_check_digit() -> None:
    for kind, digit in [("application", "1"), ("booking", "2"), ("ticket", "3"),
                        ("handoff", "4"), ("proxy_request", "5")]:
        ref = new_reference(kind)
        assert len(ref) == 8 and ref.isdigit() and ref[0] == digit
        assert is_valid_reference(ref) and reference_kind(ref) == kind
    assert luhn_check_digit("7992739871") == "3"  # the textbook Luhn example
    for bad in ["", "1234567", "123456789", "6" + "0" * 7, "abcdefgh", "１２３４５６７８"]:
        assert not is_valid_reference(bad)
    with pytest.raises(ValueError):
        new_reference("parcel")


@given(st.sampled_from(["application", "booking", "ticket", "handoff", "proxy_request"]),
       st.integers(0, 7), st.integers(1, 9))
def test_reference_check_digit_catches_any_single_digit_error(kind: str, pos: int, delta: int) -> None:
    ref = new_reference(kind)
    typo = ref[:pos] + str((int(ref[pos]) + delta) % 10) + ref[pos + 1:]
    assert not is_valid_reference(typo)


# --- schema --------------------------------------------------------------------------------------
def test_alembic_upgrade_matches_models(db_url: str) -> None:
    upgrade(db_url)
    upgrade(db_url)  # running again at the next start is a no-op
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
            assert tables == set(schema.metadata.tables) | {"alembic_version"}
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(ctx, schema.metadata) == []
            assert conn.execute(text("SELECT last_id FROM audit_head WHERE id = 1")).scalar() == 0
    finally:
        engine.dispose()


def test_sqlite_pragmas(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'sub' / 'a.db'}")  # creates the folder
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
    engine.dispose()


# --- submit_case ---------------------------------------------------------------------------------
def test_submit_application(env: Env) -> None:
    receipt = env.backend.submit_case(case())
    assert is_valid_reference(receipt.reference) and receipt.reference[0] == "1"
    assert (receipt.kind, receipt.category, receipt.status) == (
        "application", "apply_senior_card", "submitted")
    assert receipt.created_at.tzinfo is not None
    with env.sessions() as s:
        row = s.scalars(select(Application)).one()
        resident = s.get(Resident, row.resident_id)
        assert resident is not None
        assert resident.birth_date.isoformat() == "1945-03-02" and resident.gender == "M"
        assert row.created_at == receipt.created_at and row.created_at.tzinfo == UTC


def test_kinds_go_to_their_tables(env: Env) -> None:
    b = env.backend
    booking = b.submit_case(case("booking", "book_meal", fields={"date": "2025-03-02"}))
    ticket = b.submit_case(case("ticket", "report_issue", fields={
        "description": "楼道灯坏了", "location": "3号楼2单元", "kind": "lighting"}))
    proxy = b.submit_case(case("proxy_request", "family_proxy", submitted_by_phone="13912345678"))
    assert (booking.reference[0], booking.status, booking.kind) == ("2", "booked", "booking")
    assert (ticket.reference[0], ticket.status) == ("3", "received")
    assert (proxy.reference[0], proxy.status, proxy.kind) == ("5", "submitted", "proxy_request")
    assert env.count(Booking) == env.count(Ticket) == 1
    assert env.count(Application) == 1  # the proxy request is an application
    detail = b.get_case(ticket.reference)
    assert detail is not None
    assert detail.fields == {"description": "楼道灯坏了", "location": "3号楼2单元", "kind": "lighting"}
    assert detail.subject == Person(name=NAME, id_number=ID_NUMBER, phone=PHONE)
    with env.sessions() as s:
        assert s.scalars(select(Application)).one().submitted_by_hash is not None
    with pytest.raises(ValueError):
        b.submit_case(case("parcel"))


def test_submit_is_idempotent(env: Env) -> None:
    first = env.backend.submit_case(case(key="SM-dup"))
    audits = env.count(AuditEntry)
    again = env.backend.submit_case(case(key="SM-dup", name="王五"))  # a retried webhook
    assert again == first
    assert env.count(Application) == env.count(Resident) == 1
    assert env.count(StatusEvent) == 1 and env.count(AuditEntry) == audits
    assert env.backend.find_resident(id_number=ID_NUMBER).name == NAME  # replay changed nothing


def test_concurrent_duplicate_submissions_make_one_case(env: Env) -> None:
    receipts, errors = [], []

    def submit() -> None:
        try:
            receipts.append(env.backend.submit_case(case(key="SM-race")))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({r.reference for r in receipts}) == 1 and env.count(Application) == 1


def test_resident_upsert_and_merge(env: Env) -> None:
    b = env.backend
    b.submit_case(case(id_number=None, fields={}))  # phone + name only
    b.submit_case(case())  # same person, now with ID: merged, not duplicated
    b.submit_case(case("booking", "book_meal", phone=None, fields={}))  # by ID alone
    assert env.count(Resident) == 1
    # a spouse sharing the phone is a different resident
    b.submit_case(case(name="李四娘", id_number="11010119500101002X"))
    assert env.count(Resident) == 2
    assert b.find_resident(phone=PHONE) is None  # ambiguous: never guess between two people
    spouse = b.find_resident(id_number="11010119500101002x")
    assert spouse is not None and spouse.name == "李四娘" and spouse.extra["gender"] == "F"


def test_reference_clash_is_retried(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    taken = env.backend.submit_case(case()).reference
    fresh = new_reference("application")
    while fresh == taken:
        fresh = new_reference("application")
    issued = iter([taken, taken, fresh])
    monkeypatch.setattr(services, "new_reference", lambda kind: next(issued))
    # another form: the same one again would be answered with the open case (no new reference)
    assert env.backend.submit_case(case(category="apply_elderly_allowance")).reference == fresh
    assert env.count(Application) == 2 and env.verify() is None


# --- handoffs, status ----------------------------------------------------------------------------
def test_handoff(env: Env) -> None:
    b = env.backend
    b.submit_case(case())
    receipt = b.create_handoff(handoff())
    assert receipt.reference[0] == "4" and receipt.status == "waiting"
    assert (receipt.kind, receipt.category) == ("handoff", "emergency")
    assert b.create_handoff(handoff()) == receipt
    assert env.count(Handoff) == 1
    with env.sessions() as s:
        row = s.scalars(select(Handoff)).one()
        assert row.urgent and row.resident_id is not None  # linked by the caller's phone
    item = b.set_status("handoff", receipt.reference, "taken", "staff:wang")
    assert item.status == "taken"
    detail = b.get_case(receipt.reference)
    assert detail is not None and detail.fields["taken_by"] == "staff:wang"
    assert detail.fields["transcript"][1] == ("bot", "马上为您转接工作人员")
    assert detail.fields["form_slots"] == {"location": ADDRESS}
    assert [(e.from_status, e.to_status) for e in detail.events] == [
        (None, "waiting"), ("waiting", "taken")]


def test_status_events(env: Env) -> None:
    b = env.backend
    ref = b.submit_case(case()).reference
    b.set_status("application", ref, "accepted", "staff:li", "已电话联系 13912345678")
    b.set_status("application", ref, "accepted", "staff:li")  # no change: no event
    b.set_status("application", ref, "approved", "staff:zhao")
    detail = b.get_case(ref)
    assert detail is not None and detail.status == "approved"
    assert [(e.from_status, e.to_status, e.actor) for e in detail.events] == [
        (None, "submitted", "resident:sms"),
        ("submitted", "accepted", "staff:li"),
        ("accepted", "approved", "staff:zhao"),
    ]
    assert detail.events[1].note == "已电话联系 139****5678"  # staff notes are masked
    assert detail.updated_at > detail.created_at
    with pytest.raises(ValueError):
        b.set_status("application", ref, "booked", "staff:li")
    with pytest.raises(LookupError):
        b.set_status("booking", ref, "confirmed", "staff:li")
    with pytest.raises(LookupError):
        b.set_status("application", new_reference("application"), "accepted", "staff:li")


# --- progress / find_resident --------------------------------------------------------------------
def test_progress_by_phone(env: Env) -> None:
    b = env.backend
    refs = [b.submit_case(case()).reference for _ in range(3)]
    refs += [b.submit_case(case("booking", "book_meal")).reference for _ in range(2)]
    refs += [b.submit_case(case("ticket", "report_issue")).reference for _ in range(2)]
    b.submit_case(case(name="王五", id_number=None, phone="13700001111"))
    proxy = b.submit_case(case("proxy_request", "family_proxy", name="李四娘",
                               id_number="11010119500101002X", phone=None,
                               submitted_by_phone="13912345678"))
    items = b.progress(phone="+86 138 0013 8000")
    assert [i.reference for i in items] == refs[::-1][:5]  # newest first, at most 5
    assert {i.kind for i in items} == {"ticket", "booking", "application"}
    b.set_status("application", refs[0], "accepted", "staff:li")  # activity moves it to the top
    items = b.progress(phone=PHONE)
    assert items[0].reference == refs[0] and items[0].status == "accepted"
    assert [i.reference for i in b.progress(phone="13912345678")] == [proxy.reference]
    assert b.progress(phone="13600000000") == []
    with pytest.raises(ValueError):
        b.progress()


def test_progress_by_reference(env: Env) -> None:
    b = env.backend
    ref = b.submit_case(case("booking", "book_meal")).reference
    handoff_ref = b.create_handoff(handoff()).reference
    [item] = b.progress(reference=ref)
    assert (item.reference, item.kind, item.category, item.status) == (
        ref, "booking", "book_meal", "booked")
    assert item.updated_at.tzinfo is not None
    assert b.progress(reference=f" {ref[:4]} {ref[4:]} ")[0].reference == ref
    assert b.progress(reference=handoff_ref)[0].status == "waiting"
    typo = ref[:-1] + str((int(ref[-1]) + 1) % 10)
    assert b.progress(reference=typo) == []
    unknown = new_reference("booking")
    assert unknown == ref or b.progress(reference=unknown) == []  # valid but never issued
    assert b.progress(reference="abc") == []


def test_find_resident(env: Env) -> None:
    b = env.backend
    assert b.find_resident(id_number=ID_NUMBER) is None
    b.submit_case(case())
    record = b.find_resident(id_number=ID_NUMBER)
    assert record is not None
    assert (record.name, record.address, str(record.birth_date)) == (NAME, ADDRESS, "1945-03-02")
    assert record.extra == {"gender": "M", "phone_masked": "138****8000"}
    assert b.find_resident(phone="8613800138000") == record
    with pytest.raises(ValueError):
        b.find_resident()
    with env.sessions() as s:
        reads = s.scalars(select(AuditEntry).where(AuditEntry.action == "read")).all()
        assert [r.entity_type for r in reads] == ["resident"] * 3
        assert all(NAME not in r.detail and ID_NUMBER not in r.detail for r in reads)


# --- audit chain ---------------------------------------------------------------------------------
def _populate(env: Env) -> None:
    b = env.backend
    ref = b.submit_case(case()).reference  # resident create + case create
    b.submit_case(case("booking", "book_meal"))
    b.set_status("application", ref, "accepted", "staff:li")
    b.progress(phone=PHONE)
    b.find_resident(id_number=ID_NUMBER)
    b.create_handoff(handoff())


def test_audit_chain_covers_writes_and_reads(env: Env) -> None:
    _populate(env)
    assert env.verify() is None
    with env.sessions() as s:
        rows = s.scalars(select(AuditEntry).order_by(AuditEntry.id)).all()
    assert [(r.action, r.entity_type) for r in rows] == [
        ("create", "resident"), ("create", "application"), ("create", "booking"),
        ("update", "application"), ("read", "case"), ("read", "resident"), ("create", "handoff"),
    ]
    assert rows[0].prev_hash == "0" * 64
    assert all(r.prev_hash == p.hash for p, r in itertools.pairwise(rows))


TAMPERING = {
    "edited": (["UPDATE audit_entries SET detail = '{\"by\":\"nobody\"}' WHERE id = 3"], 3),
    "actor_edited": (["UPDATE audit_entries SET actor = 'staff:x' WHERE id = 5"], 5),
    "deleted": (["DELETE FROM audit_entries WHERE id = 4"], 4),
    "reordered": ([  # rows 2 and 3 swap places
        "UPDATE audit_entries SET id = -1 WHERE id = 2",
        "UPDATE audit_entries SET id = 2 WHERE id = 3",
        "UPDATE audit_entries SET id = 3 WHERE id = -1",
    ], 2),
    "tail_deleted": (["DELETE FROM audit_entries WHERE id = 7"], 7),
    "rehashed_row": ([  # an edit with a recomputed own hash still breaks the next link
        "UPDATE audit_entries SET detail = '{}' WHERE id = 2",
    ], 2),
}


@pytest.mark.parametrize("kind", sorted(TAMPERING))
def test_audit_chain_detects_tampering(env: Env, kind: str) -> None:
    _populate(env)
    statements, broken = TAMPERING[kind]
    with env.engine.begin() as conn:
        for sql in statements:
            conn.execute(text(sql))
    if kind == "rehashed_row":
        with env.sessions() as s, s.begin():
            row = s.get(AuditEntry, 2)
            assert row is not None
            row.hash = row.compute_hash()
        broken = 3
    assert env.verify() == broken


def test_audit_chain_under_concurrent_writers(env: Env) -> None:
    errors: list[Exception] = []

    def worker(n: int) -> None:
        try:
            for i in range(6):
                env.backend.submit_case(case("booking", "book_meal", key=f"w{n}-{i}",
                                             phone=f"1390000{n:04d}", id_number=None))
                env.backend.progress(phone=f"1390000{n:04d}")
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert env.count(Booking) == 24
    # per worker: 1 resident create + 6 case creates + 6 reads
    assert env.count(AuditEntry) == 4 * 13
    assert env.verify() is None


# --- encryption at rest --------------------------------------------------------------------------
def _write_everything(env: Env) -> None:
    b = env.backend
    ref = b.submit_case(case())
    b.submit_case(case("ticket", "report_issue", fields={"description": f"{NAME}家门口积水",
                                                         "location": ADDRESS}))
    b.submit_case(case("proxy_request", "family_proxy", name="李四娘",
                       id_number="11010119500101002X", phone=None,
                       submitted_by_phone="13912345678",
                       fields={"relation": "女儿", "address": ADDRESS}))
    b.create_handoff(handoff())
    b.set_status("application", ref.reference, "accepted", "staff:li",
                 f"已联系 {PHONE} 身份证 {ID_NUMBER}")
    b.find_resident(id_number=ID_NUMBER)
    b.get_case(ref.reference)


def _text_columns(env: Env) -> list[tuple[str, str]]:
    insp = inspect(env.engine)
    return [
        (table, col["name"])
        for table in insp.get_table_names()
        for col in insp.get_columns(table)
        if col["type"].python_type is str
    ]


def test_no_plaintext_personal_data_in_database(env: Env) -> None:
    _write_everything(env)
    columns = _text_columns(env)
    assert ("residents", "name_enc") in columns and ("audit_entries", "detail") in columns
    with env.engine.connect() as conn:
        for table, column in columns:
            for (value,) in conn.execute(text(f'SELECT "{column}" FROM "{table}"')):
                for secret in SECRETS:
                    assert secret not in (value or ""), f"{secret!r} in clear in {table}.{column}"


def test_no_plaintext_personal_data_in_sqlite_file(sqlite_env: Env) -> None:
    env = sqlite_env
    _write_everything(env)
    db_file = Path(env.url.removeprefix("sqlite:///"))
    # scan with the data still in the WAL, then after closing (checkpointed into the main file)
    for checkpoint in (False, True):
        if checkpoint:
            env.engine.dispose()
        files = [p for p in db_file.parent.iterdir() if p.name.startswith(db_file.name)]
        assert sum(p.stat().st_size for p in files) > 0
        blob = b"".join(p.read_bytes() for p in files)
        for secret in SECRETS:
            for encoded in {secret.encode("utf-8"), secret.encode("utf-16-le")}:
                assert encoded not in blob, f"{secret!r} in clear in the SQLite files"


# --- several processes / workers -----------------------------------------------------------------
def _head_revision() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).resolve().parent.parent / "backend" / "migrations"))
    return str(ScriptDirectory.from_config(config).get_current_head())


def test_concurrent_upgrade_at_start(db_url: str) -> None:
    """Several workers (processes) start at once and each runs the upgrade."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=upgrade, args=(db_url,)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    upgrade(db_url)
    engine = make_engine(db_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [
            _head_revision()]
    engine.dispose()


def _process_worker(url: str, n: int) -> None:
    engine = make_engine(url)
    cipher = FieldCipher(KeyRing({1: bytes(range(16))}, 1, bytes(range(32))))
    backend = StoreBackend(session_factory(engine), cipher)
    for i in range(8):
        backend.submit_case(case("booking", "book_meal", key=f"p{n}-{i}", id_number=None,
                                 phone=f"1370000{n:04d}"))
        backend.progress(phone=f"1370000{n:04d}")
    engine.dispose()


def test_sqlite_several_processes_share_one_file(sqlite_env: Env) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_process_worker, args=(sqlite_env.url, n)) for n in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert sqlite_env.count(Booking) == 24
    assert sqlite_env.count(AuditEntry) == 3 * (1 + 8 + 8)
    assert sqlite_env.verify() is None


# --- derived columns and identity (issue 17 B) ---------------------------------------------------
def test_idempotency_keys_are_stored_as_keyed_hashes(env: Env) -> None:
    b = env.backend
    raw = f"sms:+86{PHONE}:form-1"
    first = b.submit_case(case(key=raw))
    assert b.submit_case(case(key=raw)).reference == first.reference  # still dedupes
    b.create_handoff(handoff(key=f"sms:+86{PHONE}:handoff:3:user_request"))
    with env.sessions() as s:
        keys = s.scalars(select(Application.idempotency_key)).all() + s.scalars(
            select(Handoff.idempotency_key)).all()
    assert len(keys) == 2
    for key in keys:
        assert key.startswith("k1:") and PHONE not in key and "sms" not in key
    # keyed: another key gives other hashes for the same raw key
    other = FieldCipher(KeyRing({1: bytes(range(16))}, 1, bytes(range(1, 33))))
    assert services.idempotency_digest(other, raw) not in keys


def test_migration_0007_replaces_raw_idempotency_keys(db_url: str) -> None:
    upgrade(db_url, "0006")
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            for table, extra in (("applications", ", category"), ("handoffs", ", reason, urgent")):
                values = ", 'apply_senior_card'" if table == "applications" else ", 'user_request', false"
                conn.execute(text(
                    f"INSERT INTO {table} (reference, status, channel, sender_hash, idempotency_key, "
                    f"created_at, updated_at{extra}) VALUES (:ref, 'submitted', 'sms', 'x', :key, "
                    f"'2025-01-01 00:00:00', '2025-01-01 00:00:00'{values})"),
                    {"ref": "10000001" if table == "applications" else "40000001",
                     "key": f"sms:+86{PHONE}:abc"})
            conn.execute(text(
                "INSERT INTO bookings (reference, status, channel, sender_hash, idempotency_key, created_at, "
                "updated_at, category) VALUES ('20000001', 'booked', 'rest', 'x', 'k1:already-hashed', "
                "'2025-01-01 00:00:00', '2025-01-01 00:00:00', 'book_meal')"))
        upgrade(db_url)
        with engine.connect() as conn:
            app_key = conn.execute(text("SELECT id, idempotency_key FROM applications")).one()
            handoff_key = conn.execute(text("SELECT id, idempotency_key FROM handoffs")).one()
            booking_key = conn.execute(text("SELECT idempotency_key FROM bookings")).scalar_one()
        assert app_key[1] == f"legacy:{app_key[0]}" and handoff_key[1] == f"legacy:{handoff_key[0]}"
        assert booking_key == "k1:already-hashed"  # new-style keys are left alone
    finally:
        engine.dispose()


def test_open_application_is_answered_with_the_existing_case(env: Env) -> None:
    b = env.backend
    first = b.submit_case(case())
    again = b.submit_case(case())  # same sender (the SMS phone), same ID, same form, still open
    assert again.duplicate and again.reference == first.reference
    stranger = b.submit_case(CaseRequest(
        kind="application", category="apply_senior_card", subject=Person(name="某人", id_number=ID_NUMBER),
        fields={}, channel="rest", sender_id="someone", idempotency_key="rest:someone:1"))
    assert stranger.duplicate and stranger.reference == ""  # exists, but whose reference is not told
    assert env.count(Application) == 1
    b.set_status("application", first.reference, "completed", "staff:li")
    renewed = b.submit_case(case())  # finished: a new application is a new case
    assert not renewed.duplicate and renewed.reference != first.reference
    assert env.count(Application) == 2 and env.verify() is None


def test_only_the_verified_resident_changes_the_record(env: Env) -> None:
    b = env.backend
    b.submit_case(case())  # 张三华 with her phone
    open_channel = CaseRequest(
        kind="booking", category="book_meal", subject=Person(name="李桂芳", id_number=ID_NUMBER, phone="13900001111"),
        fields={"address": "别处1号"}, channel="kiosk", sender_id="kiosk-9", idempotency_key="kiosk:9:1")
    receipt = b.submit_case(open_channel)
    record = b.find_resident(id_number=ID_NUMBER)
    assert record.name == NAME and record.address == ADDRESS and record.extra["phone_masked"] == "138****8000"
    assert b.get_case(receipt.reference).fields["pending_correction"] == {
        "name": "李桂芳", "phone": "13900001111", "address": "别处1号"}
    # her own phone, proven by the channel, may change it
    own = CaseRequest(
        kind="booking", category="book_meal", subject=Person(name="张三华", id_number=ID_NUMBER, phone=PHONE),
        fields={"address": "新家2号"}, channel="voice", sender_id="CA9", idempotency_key="voice:CA9:1",
        verified_phone=PHONE)
    assert "pending_correction" not in b.get_case(b.submit_case(own).reference).fields
    assert b.find_resident(id_number=ID_NUMBER).address == "新家2号"
    assert b.confirm_correction(receipt.reference, "staff:li") == ["phone", "name", "address"]
    assert b.find_resident(id_number=ID_NUMBER).name == "李桂芳"
    assert env.verify() is None


def test_identify_needs_the_registered_phone(env: Env) -> None:
    b = env.backend
    b.submit_case(case())
    assert b.identify(id_number=ID_NUMBER, phone=f"+86{PHONE}").name == NAME
    assert b.identify(id_number=ID_NUMBER, phone="13900001111") is None
    assert b.identify(id_number=ID_NUMBER, phone=None) is None
    assert b.identify(id_number="11010119500101002X", phone=PHONE) is None  # unknown ID: the same answer
    with env.sessions() as s:
        details = s.scalars(select(AuditEntry.detail).where(AuditEntry.action == "read")).all()
    assert sum('"by":"id_number+phone"' in d for d in details) == 3  # each lookup with a phone is audited
