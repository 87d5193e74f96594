"""The web pages in a real Chromium (Debian's chromium and chromium-driver, through Selenium),
served by the real `crtool web` process (waitress): a stranger's held message is confirmed from
the link in its captured challenge, and the owner logs in with a link from `crtool web
login-link` and releases a held message with a click. The screenshots in docs/screenshots are
taken here (on the SQLite leg), at desktop and at phone width."""

from __future__ import annotations

import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import REPO, Mailbox, crtool_executable, message
from tests.web.conftest import held

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SHOTS = REPO / "docs" / "screenshots"
DESKTOP = (1200, 900)
PHONE = (390, 844)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def site(mailbox: Mailbox, request: pytest.FixtureRequest) -> Iterator[str]:
    """`crtool web` on a free loopback port, with web_url pointing at it (and the settings
    of an indirect parameter)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = mailbox.home / "config.toml"
    text = config.read_text().replace('web_url = ""', f'web_url = "{url}"')
    for key, value in getattr(request, "param", {}).items():
        text = re.sub(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
    config.write_text(text)
    env = mailbox.base_env()
    log = open(mailbox.user_home / "web.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen([crtool_executable(), "--home", str(mailbox.home), "web",
                               "--listen", f"127.0.0.1:{port}"], env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/hello", timeout=5) as answer:  # noqa: S310
                    assert answer.read() == b"hello"
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log.close()
                    raise AssertionError((mailbox.user_home / "web.log").read_text()) from None
                time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.fixture
def browser() -> Iterator[Any]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--hide-scrollbars",
                     f"--window-size={DESKTOP[0]},{DESKTOP[1]}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: Any, css: str, text: str = "", timeout: float = 30) -> Any:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, timeout)
    if text:
        wait.until(expected_conditions.text_to_be_present_in_element((By.CSS_SELECTOR, css),
                                                                     text))
    return wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css)))


def screenshot(driver: Any, database_url: str, name: str) -> None:
    """docs/screenshots/NAME.png at desktop width and NAME-phone.png at phone width, whole
    page; only on the SQLite leg, so parallel legs never write the same file."""
    if not database_url.startswith("sqlite"):
        return
    SHOTS.mkdir(parents=True, exist_ok=True)
    for suffix, (width, height) in (("", DESKTOP), ("-phone", PHONE)):
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1,
                   "mobile": suffix == "-phone"}
        browser_cdp(driver, metrics)
        whole = int(driver.execute_script("return document.documentElement.scrollHeight"))
        browser_cdp(driver, {**metrics, "height": min(max(whole, 400), 3000)})
        driver.save_screenshot(str(SHOTS / f"{name}{suffix}.png"))
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def browser_cdp(driver: Any, metrics: dict[str, Any]) -> None:
    """The page's viewport set exactly (a phone's is `mobile`, so its meta viewport counts)."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)


# One database is enough for a browser: the pages' database work is tested on both in
# test_sender_page.py and test_owner_pages.py.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_stranger_confirms_from_the_link_in_the_challenge(
        mailbox: Mailbox, site: str, browser: Any, database_url: str) -> None:
    from selenium.webdriver.common.keys import Keys

    result = mailbox.deliver(message("bob@remote.test", "Lunch on Friday?"), "bob@remote.test")
    assert result.returncode == 99, result.stderr
    [(_, challenge)] = mailbox.outbox.drain(1)
    [link] = re.findall(re.escape(site) + r"/c/[a-z2-7]{24}", challenge.get_content())

    browser.get(link)
    heading = wait_for(browser, "h1")
    assert heading.text == "Confirm your message"
    summary = browser.find_element("css selector", "dl.summary").text
    assert "bob@remote.test" in summary and "Lunch on Friday?" in summary
    assert mailbox.maildir_messages() == []  # looking changed nothing
    screenshot(browser, database_url, "confirm")

    # By keyboard, as someone without a mouse would: Tab to the button, Enter.
    body = browser.find_element("css selector", "body")
    for _ in range(10):
        if browser.switch_to.active_element.text == "Confirm":
            break
        body.send_keys(Keys.TAB)
    assert browser.switch_to.active_element.text == "Confirm"
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    wait_for(browser, "h1", "Thank you: confirmed")
    screenshot(browser, database_url, "confirmed")

    [delivered] = mailbox.maildir_messages()
    assert b"Subject: Lunch on Friday?" in delivered
    assert held(mailbox) == {}
    assert mailbox.run("whitelist", "check", "bob@remote.test").returncode == 0
    mailbox.outbox.drain(0)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_owner_logs_in_and_releases_a_message_with_a_click(
        mailbox: Mailbox, site: str, browser: Any, database_url: str) -> None:
    from selenium.webdriver.common.by import By

    for sender, subject, extra in (
            ("bob@remote.test", "Lunch on Friday?", {}),
            ("carol@partner.test", "<script>alert('x')</script> Quarterly figures", {}),
            ("noreply@shop.test", "Your receipt #4711", {}),
            ("news@lists.test", "Weekly digest", {"List-Id": "<weekly.lists.test>"})):
        headers = "".join(f"{k}: {v}\n" for k, v in extra.items())
        raw = message(sender, subject).replace(b"\n\n", f"\n{headers}\n".encode(), 1)
        assert mailbox.deliver(raw, sender).returncode == 99
    mailbox.outbox.drain(2)
    mailbox.ok("whitelist", "add", "friend@example.org", "@family.test", "--note", "family")
    mailbox.ok("blacklist", "add", "spam@junk.test")
    bob = next(m["id"] for m in held(mailbox).values() if m["sender"] == "bob@remote.test")

    link = mailbox.ok("web", "login-link").strip()
    assert link.startswith(site + "/login/")
    browser.get(link)
    wait_for(browser, "h1", "Held mail")
    assert browser.current_url == site + "/"
    page = browser.page_source
    assert "<script>alert" not in page
    assert "Quarterly figures" in browser.find_element(By.CSS_SELECTOR, "main").text
    screenshot(browser, database_url, "queue")

    browser.find_element(By.CSS_SELECTOR, f'button[value="release:{bob}"]').click()
    wait_for(browser, "p.flash", "Released 1 message")
    assert not browser.find_elements(By.ID, f"m-{bob}")
    [delivered] = mailbox.maildir_messages()
    assert b"Subject: Lunch on Friday?" in delivered
    assert bob not in held(mailbox)

    browser.find_element(By.LINK_TEXT, "Whitelist").click()
    field = wait_for(browser, "#patterns")
    field.send_keys("dave@example.net")
    browser.find_element(By.CSS_SELECTOR, "form.add button").click()
    wait_for(browser, "p.flash", "Added to the whitelist: dave@example.net")
    assert mailbox.run("whitelist", "check", "dave@example.net").returncode == 0
    screenshot(browser, database_url, "whitelist")

    # Logged out, the pages are closed again.
    browser.find_element(By.CSS_SELECTOR, "form.logout button").click()
    wait_for(browser, "h1", "Log in")
    browser.get(site + "/")
    assert wait_for(browser, "h1").text == "Log in"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("site", [{"web_rate_limit": 2}], indirect=True)
def test_the_real_server_passes_the_proxys_headers_on(mailbox: Mailbox, site: str) -> None:
    """waitress strips X-Forwarded-* unless told otherwise; `crtool web` leaves them to
    ProxyFix, which reads them from web_trusted_proxies (1) proxy: the rate limit counts the
    address nginx names, and the page's links carry the prefix nginx strips."""

    def status(client: str) -> tuple[int, str]:
        request = urllib.request.Request(f"{site}/c/{'a' * 24}", headers={  # noqa: S310
            "X-Forwarded-Prefix": "/crtool", "X-Forwarded-Proto": "https",
            "X-Forwarded-For": client})
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    assert status("203.0.113.9")[0] == 404
    assert status("203.0.113.9")[0] == 404
    assert status("203.0.113.9")[0] == 429
    code, page = status("198.51.100.4")
    assert code == 404
    assert 'href="/crtool/static/crtool.css"' in page
