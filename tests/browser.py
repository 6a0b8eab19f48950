"""Real headless Chromium (Debian's chromium + chromedriver) for page tests, a loopback server for
the app, and the 适老化 contrast check shared by the kiosk and console tests."""
from __future__ import annotations

import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"  # screenshots (git-ignored)


def chromium(fake_audio: str | None = None, window: str = "1080,1600"):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver:
        from conftest import _unavailable

        _unavailable("chromium/chromedriver not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    # Without the networking flags Chromium keeps trying hosts this network refuses.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--window-size={window}", "--autoplay-policy=no-user-gesture-required",
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 f"--user-data-dir={tempfile.mkdtemp(prefix='test-chrome-')}"):
        options.add_argument(flag)
    if fake_audio:
        options.add_argument(f"--use-file-for-fake-audio-capture={fake_audio}")
    return webdriver.Chrome(options=options, service=Service(driver))


def set_viewport(browser, width: int, height: int) -> None:
    """The page's own viewport exactly width×height CSS px (a kiosk screen), as DevTools' device
    mode does: --window-size is the outer window, and headless Chromium keeps ~140 px of it for
    browser chrome it does not draw."""
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})


@contextmanager
def serving(app) -> Iterator[str]:
    """The app on a real HTTP server on loopback (pages need a real origin)."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


def contrast(fg: str, bg: str) -> float:
    """WCAG contrast ratio of two CSS rgb()/rgba() colours."""

    def luminance(rgb: str) -> float:
        values = [int(v) / 255 for v in re.findall(r"\d+", rgb)[:3]]
        lin = [v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4 for v in values]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

    a, b = sorted((luminance(fg), luminance(bg)), reverse=True)
    return (a + 0.05) / (b + 0.05)


def wait(browser, seconds: float, condition):
    """WebDriverWait that tolerates the page changing under it (a form post reloads the page, so
    an element found a moment ago goes stale): keep asking until `condition` holds or time is up."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, seconds, ignored_exceptions=(NoSuchElementException,
                                                                StaleElementReferenceException)).until(condition)
