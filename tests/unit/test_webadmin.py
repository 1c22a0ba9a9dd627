"""The web admin (plugins/webadmin) on a memory server: real HTTP requests through the site's twisted.web
stack (an HTTPChannel on an in-memory transport), time moved with the memory clock.

What an administrator (or an attacker) sees: sign-in required everywhere, wrong passwords and forged
forms refused, sessions that expire, and each page and action doing what it says.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlencode

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.web.server import Site

from xmppd.http.site import RootResource
from xmppd.jid import parse_jid

ADMIN, ADMIN_PW = "admin@localhost", "admin-secret"
LOOPBACK = "127.0.0.1"


@dataclass
class Response:
    status: int
    headers: dict[str, list[str]]
    body: str

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    @property
    def location(self) -> str | None:
        return self.header("location")

    def cookie(self, name: str) -> str | None:
        """The Set-Cookie line for ``name``."""
        return next((c for c in self.headers.get("set-cookie", []) if c.startswith(name + "=")), None)

    def csrf(self) -> str:
        match = re.search(r'name="csrf" value="([^"]+)"', self.body)
        assert match, f"no CSRF field in the page:\n{self.body}"
        return match.group(1)


@dataclass
class Browser:
    """A browser on the web admin: keeps the cookies the server sets, as a browser would."""

    site: Site
    ip: str = LOOPBACK
    cookies: dict[str, str] = field(default_factory=dict)

    def request(self, method: str, path: str, form: dict[str, str] | None = None, **headers: str) -> Response:
        transport = StringTransport(peerAddress=IPv4Address("TCP", self.ip, 40000))
        channel = self.site.buildProtocol(transport.getPeer())
        channel.makeConnection(transport)
        body = urlencode(form or {}).encode()
        lines = [f"{method} {path} HTTP/1.0", "Host: localhost"]
        if self.cookies:
            lines.append("Cookie: " + "; ".join(f"{k}={v}" for k, v in self.cookies.items()))
        if method == "POST":
            lines += ["Content-Type: application/x-www-form-urlencoded", f"Content-Length: {len(body)}"]
        lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
        channel.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        raw = transport.value()
        head, _, content = raw.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parsed: dict[str, list[str]] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            parsed.setdefault(name.strip().lower(), []).append(value.strip())
        response = Response(int(status_line.split()[1]), parsed, content.decode("utf-8"))
        for line in parsed.get("set-cookie", []):
            name, _, rest = line.partition("=")
            value = rest.split(";", 1)[0]
            if "max-age=0" in rest.lower():
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return response

    def get(self, path: str, **headers: str) -> Response:
        return self.request("GET", path, **headers)

    def post(self, path: str, form: dict[str, str], **headers: str) -> Response:
        return self.request("POST", path, form, **headers)

    def sign_in(self, jid: str = ADMIN, password: str = ADMIN_PW) -> Response:
        token = self.get("/admin/login").csrf()
        return self.post("/admin/login", {"csrf": token, "jid": jid, "password": password})

    def act(self, page: str, action: str, **form: str) -> Response:
        """Press a button: read the page's CSRF token, post the form, follow the redirect back."""
        token = self.get(f"/admin/{page}").csrf()
        answer = self.post(f"/admin/{page}/{action}", {"csrf": token, **form})
        assert answer.status == 303, answer
        return self.get(answer.location)


@pytest.fixture
def admin_server(make_xmpp):
    def make(options: dict | None = None, config: dict | None = None, admins=(ADMIN,)):
        xmpp = make_xmpp(
            options={"webadmin": options or {}}, config={"server": {"admins": list(admins)}, **(config or {})}
        )
        xmpp.adduser(ADMIN, ADMIN_PW)
        return xmpp

    return make


@pytest.fixture
def xmpp_admin(admin_server):
    return admin_server()


def browser(xmpp, ip: str = LOOPBACK) -> Browser:
    return Browser(Site(RootResource(xmpp.server), reactor=xmpp.clock), ip)


def signed_in(xmpp, ip: str = LOOPBACK) -> Browser:
    b = browser(xmpp, ip)
    answer = b.sign_in()
    assert answer.status == 303 and answer.location == "/admin/", answer
    return b


def exists(xmpp, jid: str) -> bool:
    found = []
    xmpp.server.accounts.exists(parse_jid(jid)).addBoth(found.append)
    return found[0]


def password_ok(xmpp, jid: str, password: str) -> bool:
    found = []
    account = parse_jid(jid)
    xmpp.server.accounts.check_password(account.domain, account.local, password).addBoth(found.append)
    return found[0]


# -- signing in ---------------------------------------------------------------------------------------------


def test_nothing_is_served_without_signing_in(xmpp_admin):
    b = browser(xmpp_admin)
    for path in (
        "/admin",
        "/admin/",
        "/admin/users",
        "/admin/sessions",
        "/admin/rooms",
        "/admin/plugins",
        "/admin/nowhere",
    ):
        answer = b.get(path)
        assert (answer.status, answer.location) == (303, "/admin/login"), path
        assert ADMIN not in answer.body
    answer = b.post("/admin/users/add", {"jid": "mallory@localhost", "password": "x"})
    assert (answer.status, answer.location) == (303, "/admin/login")
    assert not exists(xmpp_admin, "mallory@localhost")


def test_login_page_and_its_headers(xmpp_admin):
    answer = browser(xmpp_admin).get("/admin/login")
    assert answer.status == 200
    assert 'name="password"' in answer.body and answer.csrf()
    cookie = answer.cookie("xmppd_admin_login")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/admin" in cookie
    assert "Secure" not in cookie  # plain HTTP on loopback
    assert "script-src" not in answer.header("content-security-policy")
    assert answer.header("content-security-policy").startswith("default-src 'none'")
    assert answer.header("x-frame-options") == "DENY"
    assert answer.header("cache-control") == "no-store"


def test_sign_in_then_out(xmpp_admin):
    b = browser(xmpp_admin)
    answer = b.sign_in()
    assert (answer.status, answer.location) == (303, "/admin/")
    cookie = answer.cookie("xmppd_admin")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/admin" in cookie
    sid = b.cookies["xmppd_admin"]
    status = b.get("/admin/")
    assert status.status == 200 and ADMIN in status.body and "Online sessions" in status.body
    assert b.get("/admin/login").location == "/admin/"  # signed in already

    answer = b.post("/admin/logout", {"csrf": status.csrf()})
    assert (answer.status, answer.location) == (303, "/admin/login")
    assert "xmppd_admin" not in b.cookies
    b.cookies["xmppd_admin"] = sid  # the old cookie, replayed, is worth nothing
    assert b.get("/admin/status").location == "/admin/login"


@pytest.mark.parametrize(
    "jid, password",
    [
        (ADMIN, "wrong"),
        ("bob@localhost", "bob-pw"),  # a real account, but no admin
        ("nobody@localhost", ADMIN_PW),
        ("not a jid@", ADMIN_PW),
        (ADMIN + "/resource", ADMIN_PW),
    ],
)
def test_wrong_credentials_are_refused(xmpp_admin, jid, password):
    xmpp_admin.adduser("bob@localhost", "bob-pw")
    b = browser(xmpp_admin)
    answer = b.sign_in(jid, password)
    assert answer.status == 403 and "Wrong JID or password" in answer.body
    assert "xmppd_admin" not in b.cookies
    assert b.get("/admin/status").location == "/admin/login"


def test_sign_in_form_needs_its_csrf_token(xmpp_admin):
    b = browser(xmpp_admin)
    b.get("/admin/login")
    answer = b.post("/admin/login", {"jid": ADMIN, "password": ADMIN_PW})
    assert answer.status == 403 and "xmppd_admin" not in b.cookies
    answer = b.post("/admin/login", {"csrf": "0" * 64, "jid": ADMIN, "password": ADMIN_PW})
    assert answer.status == 403 and "xmppd_admin" not in b.cookies
    # a token from another browser (another nonce cookie) does not fit either
    other = browser(xmpp_admin).get("/admin/login").csrf()
    assert b.post("/admin/login", {"csrf": other, "jid": ADMIN, "password": ADMIN_PW}).status == 403


def test_sign_in_attempts_are_rate_limited_per_ip(admin_server):
    xmpp = admin_server(options={"login_attempts": 3, "login_window": 60.0})
    b = browser(xmpp, "127.0.0.2")
    for _ in range(3):
        assert b.sign_in(password="wrong").status == 403
    answer = b.sign_in()  # even the right password, until the window has passed
    assert answer.status == 429 and "Too many failed sign-ins" in answer.body
    assert "xmppd_admin" not in b.cookies
    assert signed_in(xmpp, "127.0.0.3")  # another address is not affected
    xmpp.advance(61)
    assert b.sign_in().status == 303


def test_successful_sign_ins_do_not_count_against_the_limit(admin_server):
    xmpp = admin_server(options={"login_attempts": 2})
    for _ in range(5):
        signed_in(xmpp)


def test_no_sign_in_over_plain_http_from_the_network(xmpp_admin):
    b = browser(xmpp_admin, "192.0.2.7")
    page = b.get("/admin/login")
    assert "Signing in needs HTTPS" in page.body and 'name="password"' not in page.body
    local = browser(xmpp_admin)
    token = local.get("/admin/login").csrf()
    b.cookies.update(local.cookies)  # a valid sign-in form, sent from the network
    answer = b.post("/admin/login", {"csrf": token, "jid": ADMIN, "password": ADMIN_PW})
    assert answer.status == 403 and "xmppd_admin" not in b.cookies
    # a loopback proxy that says the browser used plain HTTP does not count as secure either
    assert "needs HTTPS" in local.get("/admin/login", X_Forwarded_Proto="http").body


def test_behind_a_tls_proxy_cookies_are_secure(admin_server):
    xmpp = admin_server(config={"http": {"consider_secure": True}})
    b = browser(xmpp, "192.0.2.7")
    answer = b.sign_in()
    assert answer.status == 303 and "; Secure" in answer.cookie("xmppd_admin")


def test_without_admins_nobody_signs_in(admin_server):
    xmpp = admin_server(admins=())
    b = browser(xmpp)
    assert "No administrators are configured" in b.get("/admin/login").body
    tokens = xmpp.server.plugins.instance("localhost", "webadmin").resource.tokens
    token = tokens.token(b.cookies["xmppd_admin_login"])  # as if the form had been shown
    answer = b.post("/admin/login", {"csrf": token, "jid": ADMIN, "password": ADMIN_PW})
    assert answer.status == 403 and "xmppd_admin" not in b.cookies


def test_a_removed_admin_is_signed_out(xmpp_admin):
    b = signed_in(xmpp_admin)
    xmpp_admin.server.config.sections["server"]["admins"] = ["someone@localhost"]
    assert b.get("/admin/status").location == "/admin/login"


def test_passwords_never_reach_the_log(xmpp_admin):
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        browser(xmpp_admin).sign_in(password="wrong-Pa55")
        b = signed_in(xmpp_admin)
        b.act("users", "add", jid="carol@localhost", password="carol-Pa55")
        b.act("users", "password", jid="carol@localhost", password="new-Pa55")
    finally:
        globalLogPublisher.removeObserver(events.append)
    text = repr(events)
    assert "web admin" in text  # the actions are logged...
    for secret in ("wrong-Pa55", "carol-Pa55", "new-Pa55", ADMIN_PW):
        assert secret not in text  # ...without their passwords


# -- sessions ------------------------------------------------------------------------------------------------


def test_sessions_end_after_the_idle_timeout(admin_server):
    xmpp = admin_server(options={"idle_timeout": 600.0})
    b = signed_in(xmpp)
    xmpp.advance(599)
    assert b.get("/admin/status").status == 200  # activity restarts the idle time
    xmpp.advance(599)
    assert b.get("/admin/status").status == 200
    xmpp.advance(600)
    assert b.get("/admin/status").location == "/admin/login"


def test_sessions_end_after_max_age_however_busy(admin_server):
    xmpp = admin_server(options={"idle_timeout": 600.0, "max_age": 3600.0})
    b = signed_in(xmpp)
    for _ in range(5):
        xmpp.advance(500)
        assert b.get("/admin/status").status == 200
    xmpp.advance(1100)
    assert b.get("/admin/status").location == "/admin/login"


def test_session_count_is_bounded(admin_server):
    xmpp = admin_server(options={"max_sessions": 2})
    first, second = signed_in(xmpp), signed_in(xmpp)
    first.get("/admin/status")  # used more recently than the second
    third = signed_in(xmpp)
    plugin = xmpp.server.plugins.instance("localhost", "webadmin")
    assert len(plugin.sessions) == 2
    assert second.get("/admin/status").location == "/admin/login"
    assert first.get("/admin/status").status == third.get("/admin/status").status == 200


def test_expired_sessions_are_swept_from_memory(admin_server):
    xmpp = admin_server(options={"idle_timeout": 60.0})
    signed_in(xmpp)
    plugin = xmpp.server.plugins.instance("localhost", "webadmin")
    assert len(plugin.sessions) == 1
    xmpp.advance(121)
    assert len(plugin.sessions) == 0


def test_idle_timeout_may_not_exceed_max_age(make_xmpp):
    from xmppd.config import ConfigError

    with pytest.raises(ConfigError, match="idle_timeout must not exceed max_age"):
        make_xmpp(options={"webadmin": {"idle_timeout": 7200.0, "max_age": 3600.0}})


# -- CSRF ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "", "forged", "é" * 10])
def test_posts_without_the_csrf_token_change_nothing(xmpp_admin, token):
    alice = xmpp_admin.login("alice@localhost/phone")
    b = signed_in(xmpp_admin)
    forms = [
        ("/admin/users/add", {"jid": "mallory@localhost", "password": "x"}),
        ("/admin/users/delete", {"jid": "alice@localhost"}),
        ("/admin/users/password", {"jid": "alice@localhost", "password": "owned"}),
        ("/admin/sessions/kick", {"jid": "alice@localhost/phone"}),
        ("/admin/plugins/unload", {"name": "version", "domain": "localhost"}),
        ("/admin/logout", {}),
    ]
    for path, form in forms:
        if token is not None:
            form = {**form, "csrf": token}
        answer = b.post(path, form)
        assert answer.status == 403 and "CSRF" in answer.body, path
    assert not exists(xmpp_admin, "mallory@localhost")
    assert password_ok(xmpp_admin, "alice@localhost", "password")
    assert alice.connected and not alice.drain()
    assert "version" in xmpp_admin.server.plugins.loaded("localhost")
    assert b.get("/admin/status").status == 200  # still signed in


def test_csrf_token_belongs_to_its_session(xmpp_admin):
    b1, b2 = signed_in(xmpp_admin), signed_in(xmpp_admin)
    other = b2.get("/admin/users").csrf()
    answer = b1.post("/admin/users/add", {"csrf": other, "jid": "mallory@localhost", "password": "x"})
    assert answer.status == 403 and not exists(xmpp_admin, "mallory@localhost")


# -- pages and actions ---------------------------------------------------------------------------------------


def test_status_page(xmpp_admin):
    xmpp_admin.login("alice@localhost/phone")
    page = signed_in(xmpp_admin).get("/admin/status")
    assert "xmppd" in page.body and "localhost" in page.body
    assert re.search(r"<dt>Online sessions</dt><dd>1</dd>", page.body)
    assert "<td>localhost</td><td>2</td>" in page.body  # admin and alice


def test_add_list_reset_and_delete_users(xmpp_admin):
    b = signed_in(xmpp_admin)
    page = b.act("users", "add", jid="carol@localhost", password="carol-pw")
    assert "created carol@localhost" in page.body and "carol@localhost" in page.body
    assert password_ok(xmpp_admin, "carol@localhost", "carol-pw")

    page = b.act("users", "add", jid="carol@localhost", password="again")
    assert 'class="flash error"' in page.body and "exists already" in page.body

    page = b.act("users", "password", jid="carol@localhost", password="new-pw")
    assert "password changed for carol@localhost" in page.body
    assert password_ok(xmpp_admin, "carol@localhost", "new-pw")
    assert not password_ok(xmpp_admin, "carol@localhost", "carol-pw")

    filtered = b.get("/admin/users?q=car")
    assert "carol@localhost" in filtered.body and ADMIN not in filtered.body.split("Accounts of")[1]

    carol = xmpp_admin.login("carol@localhost/pc", "new-pw", create=False)
    page = b.act("users", "delete", jid="carol@localhost")
    assert "deleted carol@localhost" in page.body
    assert not exists(xmpp_admin, "carol@localhost")
    carol.drain()
    assert not carol.connected

    page = b.act("users", "add", jid="dave@elsewhere.example", password="pw")
    assert "is not served here" in page.body


def test_the_flash_message_shows_once(xmpp_admin):
    b = signed_in(xmpp_admin)
    assert "created carol@localhost" in b.act("users", "add", jid="carol@localhost", password="pw").body
    assert "created carol@localhost" not in b.get("/admin/users").body


def test_sessions_page_lists_and_kicks(xmpp_admin):
    alice = xmpp_admin.login("alice@localhost/&lt;b&gt;phone&lt;/b&gt;")  # XML-escaped: <b>phone</b>
    bob = xmpp_admin.login("bob@localhost/pc")
    b = signed_in(xmpp_admin)
    page = b.get("/admin/sessions")
    assert "alice@localhost/&lt;b&gt;phone&lt;/b&gt;" in page.body and "<b>phone" not in page.body
    assert "bob@localhost/pc" in page.body and "<td>c2s</td>" in page.body
    assert "Online sessions (2)" in page.body

    page = b.act("sessions", "kick", jid="alice@localhost/<b>phone</b>")
    assert "kicked 1 session(s)" in page.body
    alice.drain()
    assert alice.stream_errors == ["policy-violation"] and not alice.connected
    assert bob.connected
    assert "Online sessions (1)" in b.get("/admin/sessions").body

    page = b.act("sessions", "kick", jid="alice@localhost/<b>phone</b>")
    assert 'class="flash error"' in page.body and "has no session" in page.body


def test_client_names_are_escaped(xmpp_admin):
    alice = xmpp_admin.login("alice@localhost/phone")
    session = next(iter(xmpp_admin.server.sessions))

    class Caps:
        node = "<script>alert(1)</script>"

    session.data["caps"] = Caps()
    page = signed_in(xmpp_admin).get("/admin/sessions")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.body and "<script>" not in page.body
    assert alice.connected


def test_rooms_page_lists_and_destroys(xmpp_admin):
    alice = xmpp_admin.login("alice@localhost/phone", available=True)
    alice.send(
        "<presence to='lobby@conference.localhost/alice'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
    )
    alice.drain()
    b = signed_in(xmpp_admin)
    page = b.get("/admin/rooms")
    assert "conference.localhost (1 rooms)" in page.body
    assert "<td>lobby@conference.localhost</td>" in page.body
    row = page.body.split("<td>lobby@conference.localhost</td>")[1].split("</tr>")[0]
    assert row.startswith("<td></td><td>1</td><td>no</td><td>yes</td>")  # name, occupants, persistent, public

    page = b.act("rooms", "destroy", service="conference.localhost", room="lobby")
    assert "destroyed lobby@conference.localhost" in page.body
    assert "No rooms." in page.body
    gone = alice.drain()
    assert any(
        el.get("type") == "unavailable" and "destroyed by an administrator" in "".join(el.itertext())
        for el in gone
    )
    page = b.act("rooms", "destroy", service="conference.localhost", room="lobby")
    assert "there is no room lobby@conference.localhost" in page.body


def test_plugins_page_loads_and_unloads(xmpp_admin):
    b = signed_in(xmpp_admin)
    page = b.get("/admin/plugins")
    assert "<td>version</td>" in page.body and "<td>register</td>" in page.body

    page = b.act("plugins", "unload", name="version", domain="localhost")
    assert "unloaded version" in page.body
    assert "version" not in xmpp_admin.server.plugins.loaded("localhost")

    page = b.act("plugins", "load", name="version", domain="localhost")
    assert "loaded version" in page.body
    assert "version" in xmpp_admin.server.plugins.loaded("localhost")

    page = b.act("plugins", "unload", name="disco", domain="localhost")
    assert 'class="flash error"' in page.body  # muc requires it
    assert "disco" in xmpp_admin.server.plugins.loaded("localhost")


def test_unknown_pages_and_methods(xmpp_admin):
    b = signed_in(xmpp_admin)
    assert b.get("/admin/nowhere").status == 404
    token = b.get("/admin/status").csrf()
    assert b.post("/admin/nowhere/else", {"csrf": token}).status == 404
    assert b.request("PUT", "/admin/status").status == 405


def test_cors_origins_do_not_reach_the_admin(admin_server):
    xmpp = admin_server(config={"http": {"cors_origins": ["*"]}})
    answer = signed_in(xmpp).get("/admin/status", Origin="https://evil.example")
    assert answer.header("access-control-allow-origin") is None


@pytest.mark.parametrize("jid", [ADMIN, "nobody@localhost", "bob@localhost"])
def test_passwords_are_checked_in_a_worker_thread(xmpp_admin, jid):
    """PBKDF2 goes through Accounts.defer_to_thread (a thread on the real reactor), for a JID that is no
    admin's as well, so that the time taken does not tell admins apart."""
    xmpp_admin.adduser("bob@localhost", "bob-pw")
    accounts = xmpp_admin.server.accounts
    calls = []
    inline = accounts.defer_to_thread

    def recording(fn, *args):
        calls.append(fn.__name__)
        return inline(fn, *args)

    accounts.defer_to_thread = recording
    browser(xmpp_admin).sign_in(jid, "wrong")
    assert calls == ["verify_password"]
