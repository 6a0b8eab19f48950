"""Deadlines (办理时限): a ticket is due its category's SLA after it came in (config.yml
tickets.sla_hours); staff lists sort and mark what is due soon and what is overdue; an overdue
ticket is escalated once to the department head, by SMS through the outbox, under a fake clock."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sms_fixtures import SmsClient, make_sms_runtime, reference_in
from sqlalchemy import select

from backend.infra.audit_chain import AuditEntry
from backend.infra.models import Ticket

HEAD = "+8613900000001"


@pytest.fixture
def sms_heads(sms_env, nlu, clock, twilio_api, media_server) -> SmsClient:
    env = {**sms_env, "DEPARTMENT_HEADS": json.dumps({"街道城管科": HEAD, "街道劳动保障所": "+8613900000002"})}
    return SmsClient(make_sms_runtime(env, nlu, clock), twilio_api, media_server, clock)


def _file(sms: SmsClient, text: str) -> str:
    """Files a conversation report and lets the routing job run."""
    replies = "".join(sms.send(text))
    if "在哪" in replies:
        sms.send("阳光小区3号楼")
    reference = reference_in("".join(sms.send("1")))
    sms.run_jobs()
    return reference


def _ticket(sms: SmsClient, reference: str) -> Ticket:
    with sms.loop.desk._sessions() as session:
        return session.scalar(select(Ticket).where(Ticket.reference == reference))


def test_a_routed_ticket_is_due_its_categorys_hours_after_it_came_in(sms_heads):
    sms = sms_heads
    reference = _file(sms, "阳光小区3号楼门口的路灯坏了好几天了")
    ticket = _ticket(sms, reference)
    assert ticket.service_code == "municipal"
    assert ticket.due_at - ticket.created_at == timedelta(hours=48)  # config.yml sla_hours.municipal
    wages = _ticket(sms, _file(sms, "华兴装饰公司拖欠我们十二个工人四万多元工资，老板电话也不接了，请政府帮帮我们。"))
    assert wages.due_at - wages.created_at == timedelta(hours=120)


def test_lists_mark_due_soon_and_overdue_and_put_them_first(sms_heads, clock):
    sms = sms_heads
    light = _file(sms, "阳光小区3号楼门口的路灯坏了好几天了")
    clock.advance(seconds=3600)
    rubbish = _file(sms, "阳光小区3号楼下垃圾堆了一个星期没人清，臭得不行")  # 24 h
    desk = sms.loop.desk
    states = {v.reference: v.due_state for v in desk.search(by_deadline=True)}
    assert states == {light: None, rubbish: None}
    clock.advance(seconds=24 * 3600 - 60)  # the rubbish (filed an hour later) is due in a minute
    views = desk.search(by_deadline=True)
    assert [v.reference for v in views] == [rubbish, light] and views[0].due_state == "due_soon"
    clock.advance(seconds=120)
    assert desk.search(by_deadline=True)[0].due_state == "overdue"
    # Newest first is still the default order.
    assert [v.reference for v in desk.search()] == [rubbish, light]


def test_an_overdue_ticket_is_escalated_once_to_its_department_head(sms_heads, clock):
    sms = sms_heads
    reference = _file(sms, "阳光小区3号楼门口的路灯坏了好几天了")
    clock.advance(seconds=47 * 3600)
    sms.run_jobs(after_seconds=600)
    assert sms.texts_to(HEAD) == []  # not yet due
    clock.advance(seconds=3600 + 1)
    sms.run_jobs(after_seconds=600)
    told = sms.texts_to(HEAD)
    assert len(told) == 1 and reference in told[0] and "超期" in told[0] and len(told[0]) <= 70
    ticket = _ticket(sms, reference)
    assert ticket.escalated_at is not None and ticket.status == "routed"
    view = sms.loop.desk.search(by_deadline=True)[0]
    assert view.due_state == "overdue" and view.escalated
    for _ in range(3):  # later scans, and a second worker, escalate nothing twice
        sms.run_jobs(after_seconds=600)
    sms.loop.worker("second-worker").run_until_idle()
    assert len(sms.texts_to(HEAD)) == 1
    with sms.loop.desk._sessions() as session:
        audits = session.scalars(select(AuditEntry).where(AuditEntry.actor == "system:deadlines")).all()
    assert len(audits) == 1 and "街道城管科" in audits[0].detail


def test_a_resolved_ticket_is_never_overdue(sms_heads, clock):
    sms = sms_heads
    reference = _file(sms, "阳光小区3号楼门口的路灯坏了好几天了")
    desk = sms.loop.desk
    desk.staff_action(reference, "accept", "staff:test")
    desk.staff_action(reference, "resolve", "staff:test", note="已修好")
    clock.advance(seconds=72 * 3600)
    sms.run_jobs(after_seconds=600)
    assert sms.texts_to(HEAD) == [] and desk.search(by_deadline=True)[0].due_state is None


def test_department_heads_must_be_a_json_object():
    from backend.tickets import LoopSettings

    with pytest.raises(ValueError, match="DEPARTMENT_HEADS"):
        LoopSettings.from_config({}, {}, {"DEPARTMENT_HEADS": '["+8613900000001"]'})
