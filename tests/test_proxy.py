"""Family proxy grants (backend/people/proxy/) on SQLite and Postgres: consent by SMS, keypad or
staff, scopes, expiry, revocation by either side, enforcement around the case store and the
parent's notification. The last test scans every SQLite file this module wrote for numbers."""
from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import schema_drift, sqlite_files_in_one_folder
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from assistant.ports import CaseRequest, Person
from backend.affairs import StoreBackend
from backend.infra.audit_chain import AuditEntry, verify_audit_chain
from backend.infra.crypto import FieldCipher, KeyRing
from backend.infra.db import make_engine, session_factory, upgrade
from backend.infra.models import Application, Booking, StatusEvent
from backend.people.proxy import (
    ProxyAwareBackend,
    ProxyError,
    ProxyGrant,
    ProxyNotAllowed,
    ProxyNotification,
    ProxyPolicy,
    ProxyService,
    RecordingNotifier,
)
from core_fixtures import FakeClock

SENIOR = "13700002222"
CHILD = "13912345678"
OTHER_CHILD = "13600001111"
FATHER_ID = "110101194503020012"
MOTHER_ID = "11010119470807002X"
NAMES = ["王秀兰", "王建国"]
SECRETS = [SENIOR, CHILD, OTHER_CHILD, FATHER_ID, MOTHER_ID, *NAMES]
PROXY_TABLES = {"proxy_grants", "proxy_notifications"}


# conftest's db_url, with SQLite files kept in one folder for the final scan.
scan_dir, db_url = sqlite_files_in_one_folder("proxy-sqlite")


@dataclass
class World:
    engine: Engine
    sessions: sessionmaker[Session]
    store: StoreBackend
    proxies: ProxyService
    backend: ProxyAwareBackend
    notifier: RecordingNotifier
    clock: FakeClock

    def grant(self, grant_id: int) -> ProxyGrant:
        with self.sessions() as s:
            grant = s.get(ProxyGrant, grant_id)
            assert grant is not None
            return grant

    def count(self, model: type) -> int:
        with self.sessions() as s:
            return int(s.scalar(select(func.count()).select_from(model)) or 0)

    def chain_ok(self) -> bool:
        with self.sessions() as s, s.begin():
            return verify_audit_chain(s) is None


@pytest.fixture
def world(db_url: str) -> Iterator[World]:
    upgrade(db_url)
    engine = make_engine(db_url)
    sessions = session_factory(engine)
    cipher = FieldCipher(KeyRing({1: bytes(range(16))}, 1, bytes(range(32))))
    clock = FakeClock()
    notifier = RecordingNotifier()
    store = StoreBackend(sessions, cipher, clock)
    proxies = ProxyService(sessions, cipher, notifier, clock, ProxyPolicy())
    labels = {"apply_senior_card": "老年证申请", "book_meal": "助餐预约"}
    yield World(engine, sessions, store, proxies, ProxyAwareBackend(store, proxies, labels.__getitem__),
                notifier, clock)
    engine.dispose()


_keys = itertools.count()


def proxy_case(parent_phone: str = SENIOR, child_phone: str = CHILD, relation: str = "son",
               key: str | None = None) -> CaseRequest:
    """What the engine submits for the family_proxy form."""
    return CaseRequest(kind="proxy_request", category="family_proxy", subject=Person(phone=parent_phone),
                       fields={"relation": relation, "slot_sources": {}}, channel="rest",
                       sender_id="child-1", idempotency_key=key or f"proxy-{next(_keys)}",
                       submitted_by_phone=child_phone)


def meal_for(senior: Person, by: str | None = CHILD, key: str | None = None) -> CaseRequest:
    return CaseRequest(kind="booking", category="book_meal", subject=senior,
                       fields={"date": "2026-11-26", "meal_time": "lunch", "quantity": 1},
                       channel="rest", sender_id="child-1", idempotency_key=key or f"meal-{next(_keys)}",
                       submitted_by_phone=by)


def senior_card_for(senior: Person, by: str | None = CHILD) -> CaseRequest:
    return CaseRequest(kind="application", category="apply_senior_card", subject=senior,
                       fields={}, channel="rest", sender_id="child-1",
                       idempotency_key=f"card-{next(_keys)}", submitted_by_phone=by)


def requested(world: World, **kw: str) -> int:
    receipt = world.backend.submit_case(proxy_case(**kw))
    with world.sessions() as s:
        grant = s.scalar(select(ProxyGrant).where(ProxyGrant.request_reference == receipt.reference))
        assert grant is not None
        return grant.id


def active_grant(world: World, **kw: str) -> int:
    grant_id = requested(world, **kw)
    assert world.proxies.handle_sms(kw.get("parent_phone", SENIOR), "1").grant_ids == (grant_id,)
    return grant_id


# --- request -----------------------------------------------------------------------------------
def test_family_proxy_case_opens_a_pending_grant_and_asks_the_parent(world: World) -> None:
    case = proxy_case()
    receipt = world.backend.submit_case(case)
    assert receipt.kind == "proxy_request"  # the case itself is stored as before
    with world.sessions() as s:
        grant = s.scalars(select(ProxyGrant)).one()
        assert grant.request_reference == receipt.reference
        assert grant.status == "pending_consent"
        assert grant.relation == "son" and grant.scope_set == {"apply", "book", "view"}
        assert grant.expires_at == world.clock() + timedelta(days=7)  # the consent window
        assert grant.senior_resident_id is not None  # the case made a resident of the parent
        assert SENIOR not in grant.senior_phone_enc and CHILD not in grant.proxy_phone_enc
        events = s.scalars(select(StatusEvent).where(StatusEvent.entity_type == "proxy_grant")).all()
        assert [(e.from_status, e.to_status) for e in events] == [(None, "pending_consent")]

    [text] = world.notifier.to(SENIOR)
    assert "儿子" in text and "尾号5678" in text  # who
    assert "办事、预约服务、查进度" in text  # what
    assert "有效1年" in text  # for how long
    assert "同意回复1" in text and "不同意回复2" in text
    assert len(text) <= 70  # one SMS segment
    assert world.notifier.to(CHILD) == []

    world.backend.submit_case(case)  # a retried turn: same case, no second grant or SMS
    world.backend.submit_case(proxy_case())  # asked again while pending: the same grant
    assert world.count(ProxyGrant) == 1 and len(world.notifier.sent) == 1
    assert world.chain_ok()


def test_a_phone_cannot_ask_for_itself(world: World) -> None:
    world.backend.submit_case(proxy_case(parent_phone=CHILD, child_phone=CHILD))
    assert world.count(ProxyGrant) == 0 and world.notifier.sent == []
    with pytest.raises(ProxyError):
        world.proxies.request(senior_phone=SENIOR, proxy_phone="+86 137 0000 2222", relation="son")


def test_pending_requests_per_parent_are_capped(world: World) -> None:
    for i in range(3):
        world.proxies.request(senior_phone=SENIOR, proxy_phone=f"1380000000{i}", relation="other")
    with pytest.raises(ProxyError):
        world.proxies.request(senior_phone=SENIOR, proxy_phone="13800000009", relation="other")
    assert len(world.notifier.to(SENIOR)) == 3


# --- consent -----------------------------------------------------------------------------------
@pytest.mark.parametrize("reply", ["1", "同意", "１", " 同意。", "同意代办"])
def test_parent_consents_by_sms_from_own_phone(world: World, reply: str) -> None:
    grant_id = requested(world)
    outcome = world.proxies.handle_sms("+86 137 0000 2222", reply)
    assert outcome.handled and outcome.grant_ids == (grant_id,)
    grant = world.grant(grant_id)
    assert grant.status == "active" and grant.consent_channel == "sms"
    assert grant.consented_by == "senior" and grant.consented_at == world.clock()
    assert grant.expires_at == world.clock() + timedelta(days=365)
    senior_texts, child_texts = world.notifier.to(SENIOR), world.notifier.to(CHILD)
    assert "已同意儿子（尾号5678）代办，到2027年11月25日" in senior_texts[-1]
    assert "取消代办" in senior_texts[-1]
    assert child_texts == ["社区助手：老人已同意您代办：办事、预约服务、查进度，到2027年11月25日。"]
    assert all(len(t) <= 70 for t in senior_texts + child_texts)
    # A second "1" changes nothing and is not taken as a consent reply any more.
    assert not world.proxies.handle_sms(SENIOR, "1").handled
    assert world.chain_ok()


def test_consent_from_any_other_phone_is_refused(world: World) -> None:
    grant_id = requested(world)
    assert not world.proxies.handle_sms(CHILD, "1").handled  # the child cannot answer for the parent
    with pytest.raises(ProxyError):
        world.proxies.consent(grant_id, channel="sms", from_phone=CHILD)
    with pytest.raises(ProxyError):
        world.proxies.consent(grant_id, channel="dtmf", from_phone=None)
    with pytest.raises(ProxyError):
        world.proxies.consent(grant_id, channel="staff")  # staff must say who they are
    assert world.grant(grant_id).status == "pending_consent"


def test_consent_by_keypad_and_in_person(world: World) -> None:
    by_call = requested(world)
    view = world.proxies.consent(by_call, channel="dtmf", from_phone=SENIOR)
    assert (view.status, view.consent_channel) == ("active", "dtmf")
    in_person = requested(world, child_phone=OTHER_CHILD, relation="daughter")
    view = world.proxies.consent(in_person, channel="staff", staff_id="w017")
    assert (view.status, view.consent_channel) == ("active", "staff")
    assert world.grant(in_person).consented_by == "staff:w017"
    with world.sessions() as s:
        actors = {e.actor for e in s.scalars(select(AuditEntry).where(AuditEntry.entity_type == "proxy_grant"))}
    assert "staff:w017" in actors


def test_parent_declines(world: World) -> None:
    grant_id = requested(world)
    assert world.proxies.handle_sms(SENIOR, "不同意").grant_ids == (grant_id,)
    grant = world.grant(grant_id)
    assert grant.status == "declined" and grant.ended_at == world.clock()
    assert "没有同意" in world.notifier.to(CHILD)[-1]
    decision = world.proxies.check(CHILD, Person(phone=SENIOR), "apply")
    assert (decision.allowed, decision.reason) == (False, "declined")
    with pytest.raises(ProxyError):
        world.proxies.consent(grant_id, channel="sms", from_phone=SENIOR)  # too late to change by SMS


def test_two_children_waiting_the_parent_names_one(world: World) -> None:
    son = requested(world)
    daughter = requested(world, child_phone=OTHER_CHILD, relation="daughter")
    outcome = world.proxies.handle_sms(SENIOR, "1")
    assert outcome.handled and outcome.grant_ids == () and "后4位" in (outcome.reply or "")
    assert world.proxies.handle_sms(SENIOR, "同意1111").grant_ids == (daughter,)
    assert world.grant(daughter).status == "active" and world.grant(son).status == "pending_consent"
    assert world.proxies.handle_sms(SENIOR, "2 5678").grant_ids == (son,)
    assert world.grant(son).status == "declined"


def test_other_texts_are_not_ours(world: World) -> None:
    requested(world)
    for body in ["我想订饭", "1号楼路灯坏了", "", "11", "好的", "可以"]:
        assert not world.proxies.handle_sms(SENIOR, body).handled


# --- scopes and check --------------------------------------------------------------------------
def test_check_follows_the_grant_and_tells_how_to_ask(world: World) -> None:
    parent = Person(phone=SENIOR)
    decision = world.proxies.check(CHILD, parent, "apply")
    assert (decision.allowed, decision.reason) == (False, "no_grant")
    assert "家属代办" in (decision.how_to_ask or "")

    grant_id = requested(world)
    decision = world.proxies.check(CHILD, parent, "apply")
    assert (decision.allowed, decision.reason, decision.grant_id) == (False, "pending_consent", grant_id)
    assert "回复短信1" in (decision.how_to_ask or "")

    world.proxies.handle_sms(SENIOR, "1")
    for scope in ("apply", "book", "view"):
        assert world.proxies.check(CHILD, parent, scope).allowed
    decision = world.proxies.check(CHILD, parent, "alert_calls")
    assert (decision.allowed, decision.reason) == (False, "scope_missing")
    assert world.proxies.alert_contacts(SENIOR) == []  # not asked for by default
    assert "接紧急电话" in (decision.how_to_ask or "")
    assert not world.proxies.check(OTHER_CHILD, parent, "apply").allowed  # a grant is per family member
    assert world.proxies.check(SENIOR, parent, "apply").reason == "self"
    assert world.proxies.check(CHILD, Person(), "apply").reason == "unknown_senior"
    with pytest.raises(ValueError):
        world.proxies.check(CHILD, parent, "withdraw_pension")


def test_narrow_grant_allows_only_its_scopes(world: World) -> None:
    view = world.proxies.request(senior_phone=SENIOR, proxy_phone=CHILD, relation="daughter", scopes=["book"])
    assert "想帮您预约服务，" in world.notifier.to(SENIOR)[-1]
    world.proxies.consent(view.id, channel="sms", from_phone=SENIOR)
    assert world.proxies.check(CHILD, Person(phone=SENIOR), "book").allowed
    assert world.proxies.check(CHILD, Person(phone=SENIOR), "apply").reason == "scope_missing"


def test_an_id_number_decides_between_people_sharing_a_phone(world: World) -> None:
    active_grant(world)  # the parent's phone answered "1"
    father = Person(name=NAMES[1], id_number=FATHER_ID, phone=SENIOR)
    world.store.submit_case(senior_card_for(father, by=None))  # the father registers with his ID
    mother = Person(name=NAMES[0], id_number=MOTHER_ID, phone=SENIOR)
    world.store.submit_case(senior_card_for(mother, by=None))  # the mother, same phone
    assert world.proxies.check(CHILD, father, "apply").allowed
    decision = world.proxies.check(CHILD, mother, "apply")
    assert (decision.allowed, decision.reason) == (False, "no_grant")


# --- expiry and revocation ---------------------------------------------------------------------
def test_grant_expires_by_the_clock(world: World) -> None:
    grant_id = active_grant(world)
    world.clock.advance(days=364)
    assert world.proxies.check(CHILD, Person(phone=SENIOR), "apply").allowed
    world.clock.advance(days=1, seconds=1)
    decision = world.proxies.check(CHILD, Person(phone=SENIOR), "apply")
    assert (decision.allowed, decision.reason) == (False, "expired")  # before any sweep
    assert "过期" in (decision.how_to_ask or "")
    assert world.proxies.expire_due() == 1
    assert world.proxies.expire_due() == 0
    assert world.grant(grant_id).status == "expired"
    assert "到期" in world.notifier.to(CHILD)[-1]
    assert world.chain_ok()


def test_unanswered_request_lapses(world: World) -> None:
    grant_id = requested(world)
    world.clock.advance(days=7, seconds=1)
    assert not world.proxies.handle_sms(SENIOR, "1").handled  # nothing pending any more
    with pytest.raises(ProxyError):
        world.proxies.consent(grant_id, channel="dtmf", from_phone=SENIOR)
    assert world.grant(grant_id).status == "expired"  # recorded although the consent failed
    assert world.proxies.check(CHILD, Person(phone=SENIOR), "apply").reason == "expired"


def test_parent_revokes_by_sms(world: World) -> None:
    grant_id = active_grant(world)
    outcome = world.proxies.handle_sms(SENIOR, "取消代办")
    assert outcome.handled and outcome.grant_ids == (grant_id,)
    grant = world.grant(grant_id)
    assert (grant.status, grant.revoked_by) == ("revoked", "senior")
    assert "已取消" in world.notifier.to(SENIOR)[-1] and "已取消" in world.notifier.to(CHILD)[-1]
    decision = world.proxies.check(CHILD, Person(phone=SENIOR), "apply")
    assert (decision.allowed, decision.reason) == (False, "revoked")
    again = world.proxies.handle_sms(SENIOR, "取消代办")
    assert again.handled and "不用取消" in (again.reply or "")


def test_child_or_staff_revokes(world: World) -> None:
    by_child = active_grant(world)
    assert world.proxies.handle_sms(CHILD, "撤销代办").grant_ids == (by_child,)
    assert world.grant(by_child).revoked_by == "proxy"
    by_staff = active_grant(world, child_phone=OTHER_CHILD)
    world.proxies.revoke(by_staff, by="staff:w017")
    assert world.grant(by_staff).revoked_by == "staff:w017"
    with pytest.raises(ValueError):
        world.proxies.revoke(by_staff, by="somebody")


def test_new_consent_replaces_the_old_grant(world: World) -> None:
    old = active_grant(world)
    new = world.proxies.request(senior_phone=SENIOR, proxy_phone=CHILD, relation="son",
                                scopes=["apply", "book", "view", "alert_calls"])
    world.proxies.consent(new.id, channel="staff", staff_id="w017")
    assert world.grant(old).status == "revoked" and world.grant(old).revoked_by == "superseded"
    assert world.proxies.check(CHILD, Person(phone=SENIOR), "alert_calls").grant_id == new.id
    assert world.proxies.alert_contacts(SENIOR) == [(CHILD, "儿子")]
    assert world.proxies.alert_contacts(CHILD) == []


# --- enforcement and notification --------------------------------------------------------------
def test_proxy_without_grant_is_refused_before_anything_is_stored(world: World) -> None:
    with pytest.raises(ProxyNotAllowed) as refused:
        world.backend.submit_case(meal_for(Person(phone=SENIOR)))
    assert refused.value.reason == "no_grant"
    assert "家属代办" in refused.value.how_to_ask
    assert world.backend.precheck(CHILD, "booking").reason == "no_grant"
    assert world.backend.precheck(CHILD, "handoff") is None and world.backend.precheck(None, "booking") is None
    assert world.count(Booking) == 0
    # Not a proxy, or acting for oneself: untouched.
    world.backend.submit_case(meal_for(Person(phone=SENIOR), by=None))
    world.backend.submit_case(meal_for(Person(phone=SENIOR), by=SENIOR))
    assert world.count(Booking) == 2


def test_proxy_submission_is_recorded_and_texted_to_the_parent(world: World) -> None:
    grant_id = active_grant(world)
    before = len(world.notifier.to(SENIOR))
    request = meal_for(Person(name=NAMES[0], phone=SENIOR))
    receipt = world.backend.submit_case(request)
    world.backend.submit_case(request)  # a redelivered turn: no second text
    texts = world.notifier.to(SENIOR)[before:]
    assert texts == [f"社区助手：您的儿子（尾号5678）刚帮您办了助餐预约，编号{receipt.reference}。"
                     "不是您让办的请回复“取消代办”。"]
    assert len(texts[0]) <= 70
    with world.sessions() as s:
        note = s.scalars(select(ProxyNotification).where(ProxyNotification.event == "proxy_submitted")).one()
        assert (note.grant_id, note.case_reference, note.recipient) == (grant_id, receipt.reference, "senior")
        audit = s.scalars(select(AuditEntry).where(AuditEntry.entity_type == "proxy_grant")
                          .order_by(AuditEntry.id.desc())).first()
        assert audit is not None and receipt.reference in audit.detail and "proxy_submitted" in audit.detail
        assert s.scalar(select(Booking.submitted_by_hash)) is not None
    card = world.backend.submit_case(senior_card_for(Person(name=NAMES[0], phone=SENIOR)))
    assert f"刚帮您办了老年证申请，编号{card.reference}" in world.notifier.to(SENIOR)[-1]
    assert world.count(Application) == 2  # the proxy request and the card
    assert world.chain_ok()


def test_refusal_can_come_before_the_form_is_filled(world: World) -> None:
    decision = world.proxies.check_any(CHILD, "book")
    assert (decision.allowed, decision.reason) == (False, "no_grant")
    requested(world)
    assert world.proxies.check_any(CHILD, "book").reason == "pending_consent"
    world.proxies.handle_sms(SENIOR, "1")
    assert world.proxies.check_any(CHILD, "book").allowed
    assert world.proxies.check_any(CHILD, "alert_calls").reason == "scope_missing"
    assert world.proxies.check_any(OTHER_CHILD, "book").reason == "no_grant"


def test_view_scope_shows_the_parents_cases(world: World) -> None:
    own = world.backend.submit_case(meal_for(Person(phone=SENIOR), by=None))  # the parent's own booking
    assert [i.reference for i in world.backend.progress(phone=CHILD)] == []
    active_grant(world)
    world.clock.advance(minutes=1)
    by_child = world.backend.submit_case(meal_for(Person(phone=SENIOR)))
    refs = [i.reference for i in world.backend.progress(phone=CHILD)]
    assert refs[0] == by_child.reference and own.reference in refs
    assert len(refs) == len(set(refs))  # the child's own filing is listed once
    world.proxies.handle_sms(SENIOR, "取消代办")
    refs = [i.reference for i in world.backend.progress(phone=CHILD)]
    assert own.reference not in refs and by_child.reference in refs  # what they filed stays theirs


def test_outbox_notifier_queues_in_the_same_transaction(world: World) -> None:
    from backend.infra.models import SmsOutbox
    from backend.messaging.outbox import Outbox
    from backend.people.proxy import OutboxNotifier

    cipher = world.proxies._cipher
    outbox = Outbox(world.sessions, cipher, world.clock, None)
    proxies = ProxyService(world.sessions, cipher, OutboxNotifier(outbox), world.clock)
    view = proxies.request(senior_phone=SENIOR, proxy_phone=CHILD, relation="son")
    with world.sessions() as s:
        row = s.scalars(select(SmsOutbox)).one()
        assert row.dedupe_key == f"proxy:{view.id}:consent_request:senior"
        assert cipher.decrypt(row.to_enc) == SENIOR and "同意回复1" in cipher.decrypt(row.body_enc)


# --- schema ------------------------------------------------------------------------------------
def test_migration_creates_the_proxy_tables_as_modelled(db_url: str) -> None:

    upgrade(db_url, "heads")
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            assert schema_drift(conn, PROXY_TABLES) == []
            assert PROXY_TABLES <= set(conn.dialect.get_table_names(conn))
    finally:
        engine.dispose()


# --- must stay last: everything above wrote its SQLite files into scan_dir ----------------------
def test_zz_no_plaintext_phone_id_or_name_in_the_sqlite_files(scan_dir: Path) -> None:
    files = [p for p in scan_dir.iterdir() if p.is_file()]
    assert any(p.suffix == ".db" and p.stat().st_size > 0 for p in files)
    for path in files:  # the database, and any -wal / -shm left behind
        data = path.read_bytes()
        for secret in SECRETS:
            assert secret.encode("utf-8") not in data, f"{secret[:3]}… in clear in {path.name}"
