"""The web admin (/admin) in headless Chromium against ``twistd xmppd``: an administrator signs in, looks
at every page (a screenshot of each in test-artifacts/webadmin-*.png), adds an account, sets its password,
kicks a user who is online with slixmpp, and signs out. Outside the browser: a page requested without a
session redirects to the sign-in page, and a forged POST that carries the session cookie but not the
form's CSRF token is refused and changes nothing.

Skips only when the machine lacks Chromium, chromedriver or selenium (see tests/web/driver.py).
"""

from __future__ import annotations

import asyncio
import http.client
import sys
from pathlib import Path
from urllib.parse import urlencode

import pytest
from slixclient import Clients, run, within

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "web"))

import driver  # noqa: E402  (tests/web is not a package)


def _missing() -> str | None:
    """driver.missing(), except that these pages need no Strophe.js (checked last, so all else is there)."""
    reason = driver.missing()
    return None if reason is not None and reason.startswith("Strophe.js") else reason


REASON = _missing()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"browser tests: {REASON}")

ADMIN, ADMIN_PW = "admin@localhost", "admin-pw"
USERS = {ADMIN: ADMIN_PW, "alice@localhost": "alice-pw", "bob@localhost": "bob-pw"}
CONFIG = {"listen": {"http": ["tcp:0:interface=127.0.0.1"]}, "server": {"admins": [ADMIN]}}
ROOM = "lobby@conference.localhost"


class AdminPages:
    """The web admin as an administrator's browser uses it (selenium calls: they block)."""

    def __init__(self, browser: driver.Browser, base: str) -> None:
        self.browser = browser
        self.driver = browser.driver
        self.base = base

    def find(self, css: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def path(self) -> str:
        return "/" + self.driver.current_url.split("/", 3)[3]

    def open(self, page: str, shot: str | None = None) -> str:
        self.driver.get(f"{self.base}/{page}")
        if shot:
            self.browser.screenshot(f"webadmin-{shot}")
        return self.driver.page_source

    def submit(self, form_css: str, **fields: str) -> str:
        """Fill in the form's fields and press its button; the flash message shown afterwards."""
        form = self.find(form_css)
        for name, value in fields.items():
            box = form.find_element("css selector", f"input[name='{name}']")
            box.clear()
            box.send_keys(value)
        self.press(form.find_element("css selector", "button"))
        return self.find(".flash").text

    def press(self, button) -> None:
        """Click a form's button and wait until the answer's page has replaced this one."""
        from selenium.webdriver.support import expected_conditions
        from selenium.webdriver.support.wait import WebDriverWait

        button.click()
        WebDriverWait(self.driver, driver.TIMEOUT).until(expected_conditions.staleness_of(button))

    def sign_in(self, jid: str, password: str) -> None:
        form = self.find("form[action$='/login']")
        for name, value in (("jid", jid), ("password", password)):
            box = form.find_element("css selector", f"input[name='{name}']")
            box.clear()
            box.send_keys(value)
        self.press(form.find_element("css selector", "button"))


def http_request(port: int, method: str, path: str, body: dict | None = None, cookie: str | None = None):
    """(status, Location, body) of one request, redirects not followed."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": "application/x-www-form-urlencoded"} if body is not None else {}
    if cookie:
        headers["Cookie"] = cookie
    connection.request(method, path, urlencode(body) if body is not None else None, headers)
    response = connection.getresponse()
    result = response.status, response.getheader("location"), response.read().decode()
    connection.close()
    return result


def test_web_admin_in_a_browser(xmpp_process) -> None:
    proc = xmpp_process(config=CONFIG, users=USERS)
    port = proc.port("http")
    base = f"http://127.0.0.1:{port}/admin"

    # Nothing without signing in: every page redirects to the sign-in page.
    for page in ("", "/status", "/users", "/sessions", "/rooms", "/plugins"):
        status, location, _ = http_request(port, "GET", f"/admin{page}")
        assert (status, location) == (303, "/admin/login"), page

    with driver.Browser() as browser:
        pages = AdminPages(browser, base)

        async def main() -> None:
            async with Clients(proc) as clients:
                alice = await clients.login("alice@localhost/phone", "alice-pw")
                bob = await clients.login("bob@localhost/desk", "bob-pw", plugins=("xep_0030", "xep_0045"))
                muc = bob.plugin["xep_0045"]
                await muc.join_muc_wait(ROOM, "Bob", maxstanzas=0, timeout=15)
                await muc.set_room_config(
                    ROOM, muc.xmpp.plugin["xep_0004"].make_form(ftype="submit"), timeout=15
                )

                await asyncio.to_thread(_browse, pages, port)

                # kicked from the sessions page: alice's client sees the stream end
                await within(alice.ended.wait(), 10)
                assert alice.stream_errors and alice.stream_errors[0][0] == "policy-violation"
                assert bob.connected

                # the account made in the browser, with the password set there, logs in
                carol = await clients.login("carol@localhost/pc", "carol-new-pw")
                assert carol.connected

        try:
            run(main(), timeout=120)
        finally:
            browser.screenshot("webadmin-last")

    users = proc.ctl("users", "localhost").stdout
    assert "carol@localhost" in users and "mallory@localhost" not in users


def _browse(pages: AdminPages, port: int) -> None:
    # The browser, sent to a page without a session, lands on the sign-in page.
    pages.open("sessions")
    assert pages.path() == "/admin/login", pages.path()
    pages.browser.screenshot("webadmin-login")
    pages.sign_in(ADMIN, "wrong password")
    assert "Wrong JID or password" in pages.find(".flash").text
    pages.sign_in(ADMIN, ADMIN_PW)
    assert pages.path() == "/admin/", pages.path()
    assert ADMIN in pages.find("header .who").text

    source = pages.open("status", "status")
    assert "Online sessions" in source and "xmppd" in source
    source = pages.open("users", "users")
    assert "alice@localhost" in source and "bob@localhost" in source
    source = pages.open("sessions", "sessions")
    assert "alice@localhost/phone" in source and "bob@localhost/desk" in source
    source = pages.open("rooms", "rooms")
    assert ROOM in source and "conference.localhost (1 rooms)" in source
    source = pages.open("plugins", "plugins")
    assert "webadmin" in source and "muc" in source

    # Add an account, then set its password.
    pages.open("users")
    flash = pages.submit("form[action$='/users/add']", jid="carol@localhost", password="carol-pw")
    assert flash == "created carol@localhost", flash
    pages.browser.screenshot("webadmin-user-added")
    flash = pages.submit(
        "tr:has(input[name='jid'][value='carol@localhost']) form[action$='/users/password']",
        password="carol-new-pw",
    )
    assert flash == "password changed for carol@localhost", flash

    # Kick alice.
    pages.open("sessions")
    flash = pages.submit("form[action$='/sessions/kick']:has(input[value='alice@localhost/phone'])")
    assert flash == "kicked 1 session(s) of alice@localhost/phone", flash
    pages.browser.screenshot("webadmin-kicked")

    # A forged POST carrying the session cookie (as a cross-site request would, were the cookie not
    # SameSite=Strict) but not the form's CSRF token is refused, and creates nothing.
    cookie = pages.driver.get_cookie("xmppd_admin")
    assert cookie and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    session = f"xmppd_admin={cookie['value']}"
    for form in (
        {"jid": "mallory@localhost", "password": "x"},
        {"jid": "mallory@localhost", "password": "x", "csrf": "forged"},
    ):
        status, _, body = http_request(port, "POST", "/admin/users/add", form, cookie=session)
        assert status == 403 and "CSRF" in body, (status, body)
    status, _, body = http_request(port, "GET", "/admin/users", cookie=session)
    assert status == 200 and "mallory@localhost" not in body  # the cookie itself is good

    # Sign out: the pages are gone again.
    pages.open("status")
    pages.press(pages.find("header form[action$='/logout'] button"))
    assert pages.path() == "/admin/login", pages.path()
    pages.open("plugins")
    assert pages.path() == "/admin/login", pages.path()
    status, location, _ = http_request(port, "GET", "/admin/users", cookie=session)
    assert (status, location) == (303, "/admin/login")
