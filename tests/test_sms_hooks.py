"""SMS replies that belong to other loops than the conversation: a senior's consent to a family
proxy ("1"), and a grid worker's acknowledgement of a care alert ("收到")."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

from backend.alerts.households import load_households

CHILD, PARENT = "+8613900005555", "+8613700006666"
GRID_WORKER = "+8613800000001"
HOUSEHOLDS = Path(__file__).resolve().parent / "fixtures" / "alerts" / "households.yml"


def test_parent_consents_by_sms_to_a_childs_proxy_request(sms):
    assert "什么人" in "".join(sms.send("我想绑定亲情号，帮我妈办事", sender=CHILD))
    sms.send("我是她女儿", sender=CHILD)
    sms.send("13700006666", sender=CHILD)
    assert "同意" in "".join(sms.send("对", sender=CHILD))
    sms.run_jobs()
    asked = " ".join(sms.texts_to(PARENT))
    assert "女儿" in asked and "同意回复1" in asked  # who, and how to agree, in plain words
    reply = "".join(sms.send("1", sender=PARENT))
    assert "代办" in reply or "同意" in reply or reply == ""
    sms.run_jobs()
    grants = sms.runtime.proxies.grants_of_senior("13700006666")
    assert [g.status for g in grants] == ["active"]


def test_grid_worker_acknowledges_a_care_alert_by_sms(sms, clock):
    desk = sms.runtime.alerts
    desk.register_households(load_households(HOUSEHOLDS))
    clock.now = datetime(2026, 11, 25, 9, 30, tzinfo=clock.now.tzinfo)
    result = desk.ingest("token-H002-gateway", [  # the household gateway reports for every device
        {"household": "H002", "device": "G-H002", "kind": "gas", "value": 3, "ts": clock.now.isoformat()}])
    assert result.alerts
    sms.run_jobs()
    assert any("燃气" in text for text in sms.texts_to(GRID_WORKER))
    reply = "".join(sms.send("收到", sender=GRID_WORKER))
    assert "确认" in reply or "收到" in reply
    assert "已有人确认" in "".join(sms.send("1", sender=GRID_WORKER))

