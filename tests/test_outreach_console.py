"""The console's 平安电话和通知 page in a real headless Chromium: check-in streaks of the staff
member's grids, a notice written, previewed (recipients, SMS segments, cost) and sent, and its
report. Screenshot: tests/artifacts/console-outreach.png."""
from __future__ import annotations

from datetime import timedelta

from browser import ARTIFACTS, chromium, wait
from sqlalchemy import select
from staff_world import PEOPLE
from test_staff_console import _check_sizes, _login, live_console  # noqa: F401  (the fixture)

from backend.alerts.store import CareHousehold
from backend.outreach.checkins import Enrolment
from backend.outreach.store import CheckinDay, Notice, NoticeDelivery


def test_outreach_page_shows_streaks_and_sends_a_previewed_notice(live_console, runtime):  # noqa: F811
    from selenium.webdriver.common.by import By

    base, world = live_console
    outreach = runtime.outreach
    today = runtime.clock().date()
    for code in ("H-G01", "H-G02"):
        outreach.checkins.enrol(Enrolment(code), "staff:admin")
    # H-G01: well for three days, missed four days ago; H-G02 (another grid) is not shown to grida.
    states = {today - timedelta(days=d): s for d, s in ((0, "ok"), (1, "skipped"), (2, "ok"), (3, "missed"), (4, "ok"))}
    with runtime.db_sessions() as s, s.begin():
        home = s.scalar(select(CareHousehold).where(CareHousehold.code == "H-G01"))
        for day, state in states.items():
            s.add(CheckinDay(household_id=home.id, day=day, state=state, attempts=1, channel="voice"))
    ARTIFACTS.mkdir(exist_ok=True)
    browser = chromium()
    try:
        _login(browser, base, "grida")
        wait(browser, 10, lambda b: "/console/" in b.current_url and "/login" not in b.current_url)
        browser.get(f"{base}/console/dashboard")  # today's check-ins, in the grid worker's grids
        assert browser.find_element(By.ID, "checkins-ok").text == "1"
        browser.get(f"{base}/console/outreach")
        table = browser.find_element(By.ID, "checkins").text
        assert "H-G01" in table and "H-G02" not in table
        row = browser.find_element(By.XPATH, "//td[text()='H-G01']/..")
        assert row.find_element(By.CLASS_NAME, "streak").text == "3 天"
        assert row.find_element(By.CLASS_NAME, "missed").text == "1"
        browser.find_element(By.NAME, "title").send_keys("停水通知")
        browser.find_element(By.NAME, "body").send_keys("12月8日9点到17点停水，请提前储水。")
        grids = browser.find_element(By.NAME, "grids")
        grids.clear()
        grids.send_keys("G02")  # not theirs: the notice still goes to their own grid only
        browser.find_element(By.XPATH, "//button[text()='预览人数和费用']").click()
        wait(browser, 10, lambda b: b.find_elements(By.ID, "preview"))
        assert browser.find_element(By.ID, "preview-recipients").text == "1"
        assert browser.find_element(By.ID, "preview-segments").text == "1"
        assert browser.find_element(By.ID, "preview-cost").text == "0.05"
        _check_sizes(browser)
        browser.save_screenshot(str(ARTIFACTS / "console-outreach.png"))
        browser.find_element(By.XPATH, "//button[text()='确认发送']").click()
        wait(browser, 10, lambda b: "停水通知" in b.find_element(By.ID, "notices").text)
    finally:
        browser.quit()
    with runtime.db_sessions() as s:
        notice = s.scalar(select(Notice))
        assert notice.created_by == "staff:grida" and '"grids": ["G01"]' in notice.audience
    runtime.outreach.notices.send(notice.id)
    with runtime.db_sessions() as s:
        (delivery,) = s.scalars(select(NoticeDelivery)).all()
        assert delivery.phone_hash == runtime.cipher.blind_index(PEOPLE["G01"][1], "phone")
