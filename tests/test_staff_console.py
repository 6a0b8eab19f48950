"""The staff console in a real headless Chromium (Debian's chromium + chromedriver): login, the
handoff queue and a transcript, a masked resident revealed, the alert countdowns. Screenshots
go to tests/artifacts/console-*.png."""
from __future__ import annotations

from datetime import timedelta

import pytest
from browser import ARTIFACTS, chromium, contrast, serving, wait
from sqlalchemy import select
from staff_world import PASSWORD, PEOPLE, build_world

from backend.infra.audit_chain import AuditEntry
from backend.infra.models import Ticket
from channels.app import create_app
from channels.staff_console import make_blueprint


@pytest.fixture
def live_console(runtime):
    world = build_world(runtime)
    app = create_app(runtime)
    if "console" not in app.blueprints:  # until channels/app.py lists the console
        app.register_blueprint(make_blueprint(runtime))
    with serving(app) as base:
        yield base, world


def _check_sizes(browser) -> None:
    """适老化 figures: body text ≥ 18px, every control ≥ 60×60 with contrast ≥ 4.5:1."""
    from selenium.webdriver.common.by import By

    assert float(browser.find_element(By.TAG_NAME, "body").value_of_css_property("font-size")[:-2]) >= 18
    for control in browser.find_elements(By.CSS_SELECTOR, "button, a.btn, a.tab, input:not([type=hidden])"):
        if control.is_displayed():
            assert control.size["height"] >= 60 and control.size["width"] >= 60, control.text
            fg, bg = control.value_of_css_property("color"), control.value_of_css_property("background-color")
            assert contrast(fg, bg) >= 4.5, (control.text, fg, bg)


def _login(browser, base: str, username: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{base}/console/login")
    browser.find_element(By.ID, "username").send_keys(username)
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "login-button").click()


def test_console_inchromium(live_console, runtime):
    from selenium.webdriver.common.by import By

    base, world = live_console
    ARTIFACTS.mkdir(exist_ok=True)
    browser = chromium()
    try:
        # a wrong password is refused on the page itself
        browser.get(f"{base}/console/login")
        _check_sizes(browser)
        browser.save_screenshot(str(ARTIFACTS / "console-login.png"))
        browser.find_element(By.ID, "username").send_keys("agent")
        browser.find_element(By.ID, "password").send_keys("not-the-password")
        browser.find_element(By.ID, "login-button").click()
        # the refusal is a new page (401): wait for it rather than read the old one mid-reload
        wait(browser, 10, lambda b: any("不对" in e.text for e in b.find_elements(By.ID, "login-message")))

        # the agent: handoff queue → take → transcript and form so far
        _login(browser, base, "agent")
        wait(browser, 10, lambda b: b.current_url.endswith("/console/handoffs"))
        queue = browser.find_element(By.ID, "handoff-queue").text
        assert world.handoff in queue and "紧急" in queue
        _check_sizes(browser)
        browser.save_screenshot(str(ARTIFACTS / "console-handoffs.png"))
        browser.find_element(By.XPATH, "//button[text()='接入']").click()
        wait(browser, 10, lambda b: b.find_elements(By.ID, "transcript"))
        assert "我想办老年证" in browser.find_element(By.ID, "transcript").text
        assert "张秀兰" in browser.find_element(By.ID, "form-slots").text
        _check_sizes(browser)
        browser.save_screenshot(str(ARTIFACTS / "console-handoff.png"))
        browser.find_element(By.XPATH, "//button[text()='退出登录']").click()
        wait(browser, 10, lambda b: b.current_url.endswith("/console/login"))

        # a grid worker: the resident is masked until 显示, which is audited
        _login(browser, base, "grida")
        wait(browser, 10, lambda b: "/console/tickets" in b.current_url)
        browser.get(f"{base}/console/residents/{world.residents['G01']}")
        name, phone, _ = PEOPLE["G01"]
        assert browser.find_element(By.ID, "r-name").text == "张*兰"
        assert browser.find_element(By.ID, "r-phone").text == "137****1111"
        _check_sizes(browser)
        browser.save_screenshot(str(ARTIFACTS / "console-resident-masked.png"))
        browser.find_element(By.ID, "reveal").click()
        wait(browser, 10, lambda b: b.find_element(By.ID, "r-name").text == name)
        assert browser.find_element(By.ID, "r-phone").text == phone
        browser.save_screenshot(str(ARTIFACTS / "console-resident-revealed.png"))
        with runtime.db_sessions() as session:
            reveal = session.scalars(select(AuditEntry).where(AuditEntry.actor == "staff:grida",
                                                              AuditEntry.entity_type == "resident")).all()
        assert len(reveal) == 1 and '"view":"reveal"' in reveal[0].detail
        # another grid's resident is simply not there
        browser.get(f"{base}/console/residents/{world.residents['G02']}")
        assert "不在您负责的范围" in browser.find_element(By.TAG_NAME, "body").text

        # alerts with their SLA countdown
        browser.get(f"{base}/console/alerts")
        table = browser.find_element(By.ID, "alerts").text
        assert "H-G01" in table and "H-G02" not in table and "剩余 30 分钟" in table
        _check_sizes(browser)
        browser.save_screenshot(str(ARTIFACTS / "console-alerts.png"))
        # tickets past their deadline are marked and come first (the world's ticket, made overdue)
        with runtime.db_sessions() as session, session.begin():
            ticket = session.scalar(select(Ticket).where(Ticket.reference == world.tickets["G01"]))
            ticket.due_at = runtime.clock() - timedelta(hours=1)
        browser.get(f"{base}/console/tickets")
        first = browser.find_element(By.CSS_SELECTOR, "#tickets tbody tr")
        assert world.tickets["G01"] in first.text and "已超期" in first.text
        assert first.get_attribute("data-due-state") == "overdue"
        late = browser.find_element(By.CSS_SELECTOR, ".tag.danger")
        assert contrast(late.value_of_css_property("color"), late.value_of_css_property("background-color")) >= 4.5
        _check_sizes(browser)
        browser.save_screenshot(str(ARTIFACTS / "console-tickets.png"))
    finally:
        browser.quit()
