"""A long resident message by SMS (several segments, as Twilio joins them) becomes one routed
work order: area and category from the NLU, the department from config.yml's taxonomy, and an
acknowledgement that says what was filed in one segment."""
from __future__ import annotations

from sms_fixtures import SmsClient, reference_in
from sqlalchemy import select

from backend.infra.models import Ticket

WAGES = (
    "尊敬的领导您好！我是阳光小区的居民，在附近的华兴装饰公司做了八个月的油漆工，"
    "公司从今年五月份开始就拖欠我们十二个工人的工资，一共四万六千多元，老板一直说等甲方结款，"
    "现在干脆电话也不接了，公司办公室也关了门。我们都是外地来的，家里有老人孩子要养，"
    "快过年了，房租都交不起了。我们去劳动监察大队反映过两次，每次都让我们回去等消息，"
    "到现在一点进展都没有。我们手里有考勤记录、工友签字的工资条，还有老板在微信里承认欠钱的聊天记录，"
    "也愿意配合调查，随时可以把材料送过来。有两个工友已经回老家了，走之前连回家的车票钱都是借的。"
    "请政府帮帮我们这些打工的人，督促老板尽快把血汗钱发给我们，"
    "实在没办法了才发这条短信，谢谢领导！"
)


def _ticket(sms: SmsClient, reference: str) -> Ticket:
    with sms.loop.desk._sessions() as session:
        ticket = session.scalar(select(Ticket).where(Ticket.reference == reference))
        assert ticket is not None
        return ticket


def test_a_long_complaint_becomes_one_routed_work_order(sms):
    assert len(WAGES) >= 300  # five SMS segments on the resident's phone, one message here
    confirm = "".join(sms.send(WAGES))
    # Read back in short: the summary, not the whole letter; then the usual 1/2/0 choice.
    assert "回复1确认/2不对/0人工" in confirm and WAGES not in confirm
    assert "拖欠" in confirm
    done = sms.send("1")
    reference = reference_in("".join(done))
    acknowledgement = "".join(done)
    summary = acknowledgement.split("已收到您反映的问题：", 1)[1].split("。受理编号", 1)[0]
    assert 0 < len(summary) <= 70 and "拖欠" in summary
    sms.run_jobs()
    ticket = _ticket(sms, reference)
    assert ticket.status == "routed"
    assert ticket.service_code == "wages" and ticket.department == "街道劳动保障所"
    assert reference in sms.texts_to()[-1] and "街道劳动保障所" in sms.texts_to()[-1]
    stored = sms.loop.desk._cipher.decrypt(ticket.description_enc)
    assert stored is not None and len(stored) > 200  # the whole message is the work order


def test_an_area_without_a_keyword_category_goes_to_the_areas_department(sms):
    text = ("我家住在和平小区，孩子今年九月该上小学了，户口和房子都在这个片区，"
            "可是划片的学校说名额满了，让我们去三公里外的学校报名，每天接送老人根本跑不动。"
            "请问按政策我们的孩子到底应该在哪个学校入学？")
    sms.send(text)
    reference = reference_in("".join(sms.send("1")))
    sms.run_jobs()
    ticket = _ticket(sms, reference)
    assert ticket.service_code == "education" and ticket.department == "街道文教科"


def test_a_complaint_not_about_a_place_asks_for_a_unit_and_takes_no_for_an_answer(sms):
    """Unpaid wages happen at an employer, not at "小区几栋": the question says so, and a resident
    who cannot say still gets the work order filed and routed."""
    started = "".join(sms.send("我在华兴装饰公司干了八个月，老板拖欠我们十二个工人四万六千多元工资，"
                               "现在电话也不接了，快过年了房租都交不起，请政府帮帮我们。"))
    assert "登记" in started and "单位" in started and "小区和几栋" not in started
    confirm = "".join(sms.send("不清楚"))
    assert "回复1确认/2不对/0人工" in confirm and "。，" not in confirm
    reference = reference_in("".join(sms.send("1")))
    sms.run_jobs()
    ticket = _ticket(sms, reference)
    assert ticket.status == "routed" and ticket.department == "街道劳动保障所"
