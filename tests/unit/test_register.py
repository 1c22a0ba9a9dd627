"""In-band registration (plugins/register.py, XEP-0077) on a memory server: the stream feature, the form,
account creation then login on the same stream, errors, the per-IP rate limit, password change and
account removal."""

from __future__ import annotations

import base64

import pytest
from lxml import etree
from xmppd.plugins.register import RateLimiter

from xmppd.config import DEFAULT_PLUGINS
from xmppd.jid import JID
from xmppd.plugin import Context, Plugin
from xmppd.testing import ExpectationError, TestClient
from xmppd.testing.scram import ScramClient

NS_REGISTER = "jabber:iq:register"
NS_FEATURE = "http://jabber.org/features/iq-register"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_INFO = "http://jabber.org/protocol/disco#info"

GET_FORM = "<iq type='get' id='reg1'><query xmlns='jabber:iq:register'/></iq>"
REGISTER = (
    "<iq type='set' id='{id}'><query xmlns='jabber:iq:register'><username>{user}</username>"
    "<password>{password}</password></query></iq>"
)


class RecordAccountEvents(Plugin):
    """Records user-created and user-deleted as plugins see them."""

    name = "record_accounts"
    seen: list[tuple[str, str]] = []

    def setup(self, ctx: Context) -> None:
        ctx.hook("user-created", lambda jid: self.seen.append(("created", str(jid))))
        ctx.hook("user-deleted", lambda jid: self.seen.append(("deleted", str(jid))))


@pytest.fixture
def server(make_xmpp):
    RecordAccountEvents.seen = []
    return make_xmpp(plugins=[RecordAccountEvents], enabled=[*DEFAULT_PLUGINS, "register", "record_accounts"])


def error_of(stanza: etree._Element) -> str | None:
    error = stanza.find("error")
    if error is None:
        return None
    return next(etree.QName(c).localname for c in error if etree.QName(c).localname != "text")


def sasl(name: str, data: bytes, **attrs: str) -> str:
    text = base64.b64encode(data).decode() or "="
    extra = "".join(f" {k}='{v}'" for k, v in attrs.items())
    return f"<{name} xmlns='{NS_SASL}'{extra}>{text}</{name}>"


def login_on_stream(client: TestClient, user: str, password: str, resource: str = "r") -> str:
    """SCRAM-SHA-256 and binding on a stream already opened (as after registering on it)."""
    scram = ScramClient(user, password, "SHA-256")
    client.send(sasl("auth", scram.first(), mechanism="SCRAM-SHA-256"))
    challenge = client.next()
    if etree.QName(challenge).localname != "challenge":
        raise ExpectationError(f"no challenge: {etree.tostring(challenge)!r}")
    client.send(sasl("response", scram.final(base64.b64decode(challenge.text))))
    outcome = client.next()
    if etree.QName(outcome).localname != "success":
        raise ExpectationError(f"authentication failed: {etree.tostring(outcome)!r}")
    client.open_stream("localhost")
    client.send(f"<iq type='set' id='b'><bind xmlns='{NS_BIND}'><resource>{resource}</resource></bind></iq>")
    bound = client.expect("<iq type='result' id='b'/>")
    return bound.findtext(f".//{{{NS_BIND}}}jid")


def register(xmpp, user: str, password: str = "secret") -> etree._Element:
    """Register on a new connection; the answer to the set."""
    client = xmpp.connect()
    client.open_stream("localhost")
    return client.request(REGISTER.format(id="r", user=user, password=password))


def can_login(xmpp, user: str, password: str) -> bool:
    try:
        xmpp.login(f"{user}@localhost/check", password, create=False)
    except ExpectationError:
        return False
    return True


# -- before authentication -----------------------------------------------------------------------------


def test_feature_offered_before_authentication_only_when_enabled(server, xmpp):
    features = server.connect().open_stream("localhost")
    assert features.find(f"{{{NS_SASL}}}mechanisms") is not None
    assert features.find(f"{{{NS_FEATURE}}}register") is not None
    assert xmpp.connect().open_stream("localhost").find(f"{{{NS_FEATURE}}}register") is None  # defaults


def test_feature_not_offered_after_authentication(server):
    server.adduser("alice@localhost", "pw")
    client = server.connect()
    client.open_stream("localhost")
    scram = ScramClient("alice", "pw", "SHA-256")
    client.send(sasl("auth", scram.first(), mechanism="SCRAM-SHA-256"))
    client.send(sasl("response", scram.final(base64.b64decode(client.next().text))))
    client.next()  # success
    features = client.open_stream("localhost")
    assert features.find(f"{{{NS_BIND}}}bind") is not None
    assert features.find(f"{{{NS_FEATURE}}}register") is None


def test_feature_not_offered_before_required_starttls(make_xmpp):
    xmpp = make_xmpp(enabled=["register"], config={"tls": {"required": True}})
    features = xmpp.connect().open_stream("localhost")
    assert features.find(f"{{{NS_SASL}}}mechanisms") is None
    assert features.find(f"{{{NS_FEATURE}}}register") is None


def test_registration_without_plugin_ends_the_stream(xmpp):
    client = xmpp.connect()
    client.open_stream("localhost")
    client.send(GET_FORM)
    assert client.stream_errors == ["not-authorized"]


def test_form_lists_the_fields(server):
    client = server.connect()
    client.open_stream("localhost")
    client.send(GET_FORM)
    answer = client.expect(
        "<iq type='result' id='reg1'><query xmlns='jabber:iq:register'>"
        "<instructions/><username/><password/></query></iq>"
    )
    assert answer.get("to") is None
    assert answer.find(f"{{{NS_REGISTER}}}query/{{{NS_REGISTER}}}registered") is None


def test_register_then_log_in_on_the_same_stream(server):
    client = server.connect()
    client.open_stream("localhost")
    client.send(GET_FORM)
    client.next()
    client.send(REGISTER.format(id="reg2", user="Bill", password="Calliope"))
    client.expect("<iq type='result' id='reg2'/>")
    assert login_on_stream(client, "bill", "Calliope", "globe") == "bill@localhost/globe"
    client.send("<iq type='get' id='q'><query xmlns='jabber:iq:register'/></iq>")
    client.expect(
        "<iq type='result' id='q'><query xmlns='jabber:iq:register'><registered/>"
        "<username>bill</username></query></iq>"
    )
    assert RecordAccountEvents.seen == [("created", "bill@localhost")]
    assert can_login(server, "bill", "Calliope")  # and from another connection


def test_registration_errors(server):
    server.adduser("taken@localhost")
    cases = [
        (REGISTER.format(id="x", user="taken", password="pw"), "conflict"),
        (REGISTER.format(id="x", user="TAKEN", password="pw"), "conflict"),  # the same localpart
        (REGISTER.format(id="x", user="new", password=""), "not-acceptable"),  # s3.1 MUST
        (REGISTER.format(id="x", user="", password="pw"), "not-acceptable"),
        (
            "<iq type='set' id='x'><query xmlns='jabber:iq:register'><username>u</username></query></iq>",
            "not-acceptable",
        ),
        (REGISTER.format(id="x", user="a@b", password="pw"), "jid-malformed"),
        (REGISTER.format(id="x", user="a b", password="pw"), "jid-malformed"),
        (
            "<iq type='set' id='x'><query xmlns='jabber:iq:register'><remove/></query></iq>",
            "unexpected-request",
        ),
    ]
    for request, condition in cases:
        client = server.connect()
        client.open_stream("localhost")
        answer = client.request(request)
        assert answer.get("type") == "error" and answer.get("id") == "x", request
        assert answer.get("to") is None and answer.get("from") is None
        assert error_of(answer) == condition, request
        assert client.connected  # a stanza error; the client may try again
    assert RecordAccountEvents.seen == []


def test_one_registration_per_stream(server):
    client = server.connect()
    client.open_stream("localhost")
    client.send(REGISTER.format(id="r1", user="one", password="pw"))
    client.expect("<iq type='result' id='r1'/>")
    answer = client.request(REGISTER.format(id="r2", user="two", password="pw"))
    assert error_of(answer) == "not-acceptable"  # XEP-0077 s3.1.1


def test_failed_registration_does_not_count_against_the_stream(server):
    server.adduser("taken@localhost")
    client = server.connect()
    client.open_stream("localhost")
    assert error_of(client.request(REGISTER.format(id="r1", user="taken", password="pw"))) == "conflict"
    client.send(REGISTER.format(id="r2", user="free", password="pw"))
    client.expect("<iq type='result' id='r2'/>")


def test_rate_limit_per_ip(make_xmpp):
    xmpp = make_xmpp(enabled=["register"], options={"register": {"max_per_ip": 2, "window": 600}})
    assert register(xmpp, "u1").get("type") == "result"
    assert register(xmpp, "u2").get("type") == "result"
    answer = register(xmpp, "u3")
    assert error_of(answer) == "resource-constraint"
    assert answer.find("error").get("type") == "wait"
    assert not can_login(xmpp, "u3", "secret")
    xmpp.advance(601)
    assert register(xmpp, "u3").get("type") == "result"


def test_failed_registrations_do_not_use_up_the_limit(make_xmpp):
    xmpp = make_xmpp(enabled=["register"], options={"register": {"max_per_ip": 1}})
    xmpp.adduser("taken@localhost")
    for _ in range(3):
        assert error_of(register(xmpp, "taken")) == "conflict"
    assert register(xmpp, "fresh").get("type") == "result"
    assert error_of(register(xmpp, "another")) == "resource-constraint"


def test_rate_limit_zero_means_unlimited(make_xmpp):
    xmpp = make_xmpp(enabled=["register"], options={"register": {"max_per_ip": 0}})
    for i in range(8):
        assert register(xmpp, f"user{i}").get("type") == "result"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def seconds(self) -> float:
        return self.now


def test_rate_limiter_is_bounded_and_slides():
    clock = FakeClock()
    limiter = RateLimiter(2, 10, clock, max_keys=3)
    assert limiter.acquire("a") is not None
    clock.now = 5
    assert limiter.acquire("a") is not None
    assert limiter.acquire("a") is None
    clock.now = 10.5  # the first one left the window
    assert limiter.acquire("a") is not None
    assert limiter.acquire("a") is None
    for ip in ("b", "c", "d", "e"):
        limiter.acquire(ip)
    assert len(limiter) == 3  # "a" was the least recently used
    assert limiter.acquire("a") is not None


# -- after authentication ------------------------------------------------------------------------------


def test_disco_announces_the_namespace(server):
    alice = server.login("alice@localhost/phone")
    answer = alice.request(f"<iq type='get' id='d' to='localhost'><query xmlns='{NS_INFO}'/></iq>")
    assert NS_REGISTER in {f.get("var") for f in answer.iter(f"{{{NS_INFO}}}feature")}


def test_password_change(server):
    alice = server.login("alice@localhost/phone", "old-pw")
    alice.send(
        "<iq type='set' id='c1' to='localhost'><query xmlns='jabber:iq:register'><username>alice</username>"
        "<password>new-pw</password></query></iq>"
    )
    alice.expect("<iq type='result' id='c1'/>")
    assert not can_login(server, "alice", "old-pw")
    assert can_login(server, "alice", "new-pw")
    assert alice.connected


def test_password_change_errors(server):
    server.adduser("bob@localhost", "bob-pw")
    alice = server.login("alice@localhost/phone", "pw")
    cases = [
        ("<username>bob</username><password>hijack</password>", "not-allowed"),
        ("<username>alice</username><password/>", "bad-request"),  # s3.3: keep the password
        ("<username>alice</username>", "bad-request"),
        ("<remove/><username>alice</username>", "bad-request"),  # s3.2: remove alone
    ]
    for inner, condition in cases:
        answer = alice.request(
            f"<iq type='set' id='e'><query xmlns='jabber:iq:register'>{inner}</query></iq>"
        )
        assert error_of(answer) == condition, inner
    assert can_login(server, "bob", "bob-pw")
    assert can_login(server, "alice", "pw")


def test_password_change_without_username(server):
    alice = server.login("alice@localhost/phone", "pw")
    alice.send(
        "<iq type='set' id='c'><query xmlns='jabber:iq:register'><password>pw2</password></query></iq>"
    )
    alice.expect("<iq type='result' id='c'/>")
    assert can_login(server, "alice", "pw2")


def test_remove_account_closes_sessions_and_login_fails(server):
    alice = server.login("alice@localhost/phone", "pw")
    other = server.login("alice@localhost/laptop", "pw", create=False)
    bob = server.login("bob@localhost/pc")
    alice.send("<iq type='set' id='unreg1'><query xmlns='jabber:iq:register'><remove/></query></iq>")
    alice.expect("<iq type='result' id='unreg1'/>")  # first the result, then the stream error
    assert alice.stream_errors == ["not-authorized"]
    other.next()  # reads the stream error
    assert other.stream_errors == ["not-authorized"]
    assert not alice.connected and not other.connected
    assert bob.connected and bob.stream_errors == []
    assert not server.server.sessions.sessions_of(JID("alice", "localhost"))
    assert ("deleted", "alice@localhost") in RecordAccountEvents.seen
    assert not can_login(server, "alice", "pw")
    assert register(server, "alice").get("type") == "result"  # the name is free again


def test_remove_deletes_stored_data(make_xmpp):
    xmpp = make_xmpp(enabled=["register", "vcard"])
    alice = xmpp.login("alice@localhost/phone")
    alice.send("<iq type='set' id='v'><vCard xmlns='vcard-temp'><FN>Alice</FN></vCard></iq>")
    alice.expect("<iq type='result' id='v'/>")
    alice.send("<iq type='set' id='u'><query xmlns='jabber:iq:register'><remove/></query></iq>")
    alice.expect("<iq type='result' id='u'/>")
    assert xmpp.server.storage.get("localhost", "vcard", "alice").result is None


def test_register_iq_to_another_account_is_not_answered_by_the_plugin(server):
    server.adduser("bob@localhost")
    alice = server.login("alice@localhost/phone")
    answer = alice.request(
        "<iq type='set' id='x' to='bob@localhost'><query xmlns='jabber:iq:register'><remove/></query></iq>"
    )
    assert answer.get("type") == "error"
    assert can_login(server, "bob", "password")
