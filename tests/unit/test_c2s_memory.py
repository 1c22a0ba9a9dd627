"""Client streams (xmppd.stream.c2s) on the memory transport: features, SASL, timeouts, binding and
stream errors, as a client sees them (RFC 6120 s4-s7)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from lxml import etree

from xmppd.testing import HEADER
from xmppd.testing.scram import ScramClient
from xmppd.xml.stanza import error_condition

NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"
NS_STREAMS = "http://etherx.jabber.org/streams"


# -- helpers ---------------------------------------------------------------------------------------------


def sasl(name: str, data: bytes | None = None, mechanism: str | None = None) -> str:
    mech = f" mechanism='{mechanism}'" if mechanism else ""
    text = "" if data is None else (base64.b64encode(data).decode() or "=")
    return f"<{name} xmlns='{NS_SASL}'{mech}>{text}</{name}>"


def scram(client: Any, user: str, password: str) -> etree._Element:
    """A SCRAM-SHA-256 exchange (RFC 7677); returns the server's last element (<success/> or <failure/>)."""
    client_scram = ScramClient(user, password, "SHA-256")
    client.send(sasl("auth", client_scram.first(), "SCRAM-SHA-256"))
    challenge = client.next()
    if etree.QName(challenge).localname != "challenge":
        return challenge
    client.send(sasl("response", client_scram.final(base64.b64decode(challenge.text))))
    return client.next()


def authenticated(server: Any, jid: str = "alice@localhost", password: str = "password") -> tuple[Any, Any]:
    """A client past SASL and the stream restart, not yet bound; returns (client, features)."""
    server.adduser(jid, password)
    client = server.connect()
    client.open_stream(jid.split("@")[1])
    outcome = scram(client, jid.split("@")[0], password)
    assert etree.QName(outcome).localname == "success", etree.tostring(outcome)
    features = client.open_stream(jid.split("@")[1])
    return client, features


def bind(client: Any, resource: str | None = None, id_: str = "b1") -> etree._Element:
    inner = f"<resource>{resource}</resource>" if resource is not None else ""
    return client.request(f"<iq type='set' id='{id_}'><bind xmlns='{NS_BIND}'>{inner}</bind></iq>")


def children(features: etree._Element) -> set[str]:
    return {el.tag for el in features}


def mechanisms(features: etree._Element) -> list[str]:
    return [m.text for m in features.iter(f"{{{NS_SASL}}}mechanism")]


def assert_stream_error(client: Any, condition: str) -> None:
    client._pump()
    assert client.stream_errors == [condition], client.stream_errors
    assert client.closed_by_server
    assert not client.connected


# -- stream header and features --------------------------------------------------------------------------


def test_features_before_authentication(xmpp):
    client = xmpp.connect()
    features = client.open_stream("localhost")
    assert features.tag == f"{{{NS_STREAMS}}}features"
    mechs = mechanisms(features)
    assert "SCRAM-SHA-256" in mechs and "SCRAM-SHA-1" in mechs
    assert "PLAIN" not in mechs  # never on a plaintext stream
    assert not any(m.endswith("-PLUS") for m in mechs)  # no channel binding without TLS
    assert f"{{{NS_BIND}}}bind" not in children(features)
    assert f"{{{NS_SESSION}}}session" not in children(features)
    starttls = features.find(f"{{{NS_TLS}}}starttls")
    if starttls is not None:
        assert starttls.find(f"{{{NS_TLS}}}required") is None  # [tls] required = false here


def test_stream_header_answers_with_the_domain_and_an_id(xmpp):
    client = xmpp.connect()
    client.stream.dataReceived(HEADER.format(domain="localhost").encode())
    header = client.transport.value().decode()
    assert "<stream:stream" in header or "<stream " in header
    assert "from='localhost'" in header or 'from="localhost"' in header
    assert "version='1.0'" in header or 'version="1.0"' in header
    assert client.stream.id in header


def test_features_after_authentication_offer_bind_and_session(xmpp):
    client, features = authenticated(xmpp)
    assert f"{{{NS_BIND}}}bind" in children(features)
    session = features.find(f"{{{NS_SESSION}}}session")
    assert session is not None and session.find(f"{{{NS_SESSION}}}optional") is not None
    assert not mechanisms(features)
    assert features.find(f"{{{NS_TLS}}}starttls") is None


def test_unknown_domain_is_host_unknown(xmpp):
    client = xmpp.connect()
    client.send_raw(HEADER.format(domain="elsewhere.example"))
    assert_stream_error(client, "host-unknown")


def test_domain_in_header_is_case_insensitive(xmpp):
    client = xmpp.connect()
    features = client.open_stream("LocalHost")
    assert "SCRAM-SHA-256" in mechanisms(features)


def test_old_stream_version_is_refused(xmpp):
    client = xmpp.connect()
    client.send_raw(HEADER.format(domain="localhost").replace("version='1.0'", "version='0.9'"))
    assert_stream_error(client, "unsupported-version")


def test_domain_cannot_change_on_restart(make_xmpp):
    server = make_xmpp(domains=("a.example", "b.example"), enabled=[])
    server.adduser("alice@a.example")
    client = server.connect()
    client.open_stream("a.example")
    assert etree.QName(scram(client, "alice", "password")).localname == "success"
    client.open_stream("b.example")
    assert_stream_error(client, "host-unknown")


# -- SASL ------------------------------------------------------------------------------------------------


def test_scram_success_then_bind(xmpp):
    client, _ = authenticated(xmpp)
    reply = bind(client, "phone")
    assert reply.get("type") == "result" and reply.get("id") == "b1"
    assert reply.findtext(f".//{{{NS_BIND}}}jid") == "alice@localhost/phone"
    ping = client.request("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert ping.get("type") == "result"


def test_wrong_password_is_not_authorized(xmpp):
    xmpp.adduser("alice@localhost", "secret")
    client = xmpp.connect()
    client.open_stream("localhost")
    outcome = scram(client, "alice", "wrong")
    assert outcome.tag == f"{{{NS_SASL}}}failure"
    assert outcome.find(f"{{{NS_SASL}}}not-authorized") is not None
    assert client.connected


def test_unknown_user_fails_like_a_wrong_password(xmpp):
    client = xmpp.connect()
    client.open_stream("localhost")
    outcome = scram(client, "nobody", "whatever")
    assert outcome.tag == f"{{{NS_SASL}}}failure"
    assert outcome.find(f"{{{NS_SASL}}}not-authorized") is not None


def test_plain_is_refused_on_a_plaintext_stream(xmpp):
    xmpp.adduser("alice@localhost")
    client = xmpp.connect()
    client.open_stream("localhost")
    client.send(sasl("auth", b"\x00alice\x00password", "PLAIN"))
    outcome = client.next()
    assert outcome.find(f"{{{NS_SASL}}}invalid-mechanism") is not None


def test_retry_after_a_failure_succeeds(xmpp):
    xmpp.adduser("alice@localhost")
    client = xmpp.connect()
    client.open_stream("localhost")
    assert scram(client, "alice", "wrong").tag == f"{{{NS_SASL}}}failure"
    assert scram(client, "alice", "password").tag == f"{{{NS_SASL}}}success"


def test_abort_is_a_failure(xmpp):
    client = xmpp.connect()
    client.open_stream("localhost")
    client.send(sasl("auth", b"n,,n=alice,r=abc", "SCRAM-SHA-256"))
    assert etree.QName(client.next()).localname == "challenge"
    client.send(f"<abort xmlns='{NS_SASL}'/>")
    assert client.next().find(f"{{{NS_SASL}}}aborted") is not None


@pytest.mark.parametrize("limit", [1, 2, 3])
def test_failed_authentication_attempts_close_the_stream_at_the_limit(make_xmpp, limit):
    server = make_xmpp(enabled=[], config={"server": {"max_failed_auth": limit}})
    server.adduser("alice@localhost")
    client = server.connect()
    client.open_stream("localhost")
    for _ in range(limit - 1):
        assert scram(client, "alice", "wrong").tag == f"{{{NS_SASL}}}failure"
        assert client.connected and not client.stream_errors
    client.send(sasl("auth", b"", "NOT-A-MECHANISM"))
    assert client.next().tag == f"{{{NS_SASL}}}failure"
    assert_stream_error(client, "policy-violation")


def test_default_limit_is_three_failures(xmpp):
    client = xmpp.connect()
    client.open_stream("localhost")
    for attempt in range(3):
        assert client.connected, attempt
        client.send(sasl("auth", b"", "PLAIN"))
        assert client.next().tag == f"{{{NS_SASL}}}failure"
    assert_stream_error(client, "policy-violation")


def test_sasl_after_authentication_is_a_policy_violation(xmpp):
    client, _ = authenticated(xmpp)
    client.send(sasl("auth", b"n,,n=alice,r=abc", "SCRAM-SHA-256"))
    assert_stream_error(client, "policy-violation")


# -- authentication timeout ------------------------------------------------------------------------------


def test_auth_timeout_closes_an_idle_connection(make_xmpp):
    server = make_xmpp(enabled=[], config={"server": {"auth_timeout": 5}})
    client = server.connect()
    client.open_stream("localhost")
    server.advance(4.9)
    client._pump()
    assert client.connected and not client.stream_errors
    server.advance(0.1)
    assert_stream_error(client, "connection-timeout")


def test_auth_timeout_also_applies_before_binding(make_xmpp):
    server = make_xmpp(enabled=[], config={"server": {"auth_timeout": 5}})
    client, _ = authenticated(server)
    server.advance(5)
    assert_stream_error(client, "connection-timeout")


def test_auth_timeout_without_any_data(make_xmpp):
    server = make_xmpp(enabled=[], config={"server": {"auth_timeout": 5}})
    client = server.connect()
    server.advance(5)
    assert_stream_error(client, "connection-timeout")


def test_no_timeout_once_bound(make_xmpp):
    server = make_xmpp(enabled=["ping"], config={"server": {"auth_timeout": 5}})
    client = server.login("alice@localhost/phone")
    server.advance(60)
    client.expect_nothing()
    assert client.connected
    assert (
        client.request("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").get("type")
        == "result"
    )


# -- resource binding (RFC 6120 s7) ----------------------------------------------------------------------


@pytest.mark.parametrize("resource", [None, "", "   "])
def test_bind_with_a_server_generated_resource(xmpp, resource):
    client, _ = authenticated(xmpp)
    reply = bind(client, resource)
    assert reply.get("type") == "result"
    jid = reply.findtext(f".//{{{NS_BIND}}}jid")
    bare, _, generated = jid.partition("/")
    assert bare == "alice@localhost" and generated
    assert [str(s.jid) for s in xmpp.server.sessions] == [jid]
    other, _ = authenticated(xmpp, "alice@localhost")
    assert bind(other).findtext(f".//{{{NS_BIND}}}jid") != jid  # generated resources differ


def test_bind_prepares_the_resource(xmpp):
    client, _ = authenticated(xmpp)
    reply = bind(client, "\u2000phone")  # a space character mapped to ASCII space (RFC 7622 s3.4)
    assert reply.findtext(f".//{{{NS_BIND}}}jid") == "alice@localhost/ phone"


@pytest.mark.parametrize("resource", ["\ue000", "x" * 1024])
def test_bind_with_an_invalid_resource_is_bad_request(xmpp, resource):
    client, _ = authenticated(xmpp)
    reply = bind(client, resource, "bad")
    assert reply.get("type") == "error" and reply.get("id") == "bad"
    assert error_condition(reply) == "bad-request"
    assert client.connected
    good = bind(client, "phone", "good")  # the client may try again
    assert good.get("type") == "result"


def test_max_sessions_per_user_is_a_resource_constraint(make_xmpp):
    server = make_xmpp(enabled=[], config={"server": {"max_sessions_per_user": 2}})
    server.login("alice@localhost/one")
    server.login("alice@localhost/two", create=False)
    third, _ = authenticated(server)
    reply = bind(third, "three")
    assert reply.get("type") == "error"
    assert error_condition(reply) == "resource-constraint"
    assert reply.find("error").get("type") == "wait"
    # replacing an existing resource is not a new session
    again, _ = authenticated(server)
    assert bind(again, "two").get("type") == "result"
    # another account is not affected
    assert server.login("bob@localhost/one").jid == "bob@localhost/one"


@pytest.mark.parametrize("to", ["", " to='localhost'"])
def test_legacy_session_iq_is_answered(xmpp, to):
    client, _ = authenticated(xmpp)
    bind(client, "phone")
    reply = client.request(f"<iq type='set' id='sess'{to}><session xmlns='{NS_SESSION}'/></iq>")
    assert reply.get("type") == "result" and reply.get("id") == "sess"
    assert client.connected


def test_legacy_session_iq_before_bind_is_answered(xmpp):
    client, _ = authenticated(xmpp)
    reply = client.request(f"<iq type='set' id='sess'><session xmlns='{NS_SESSION}'/></iq>")
    assert reply.get("type") == "result" and reply.get("id") == "sess"
    assert bind(client, "phone").get("type") == "result"


# -- framing ---------------------------------------------------------------------------------------------


def test_stanza_split_one_byte_at_a_time(xmpp):
    alice = xmpp.login("alice@localhost/phone", available=True)
    bob = xmpp.login("bob@localhost/pc", available=True)
    body = "h\u00e9llo \u2603 \U0001f600"
    data = f"<message to='bob@localhost' type='chat' id='split'><body>{body}</body></message>"
    for byte in data.encode():
        alice.send_raw(bytes([byte]))
    received = bob.expect("<message from='alice@localhost/phone' id='split'/>")
    assert received.findtext("body") == body
    alice.expect_nothing()


def test_whole_negotiation_one_byte_at_a_time(xmpp):
    xmpp.adduser("alice@localhost")
    client = xmpp.connect()
    for byte in HEADER.format(domain="localhost").encode():
        client.send_raw(bytes([byte]))
    assert client.next().tag == f"{{{NS_STREAMS}}}features"
    request = "<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
    for byte in request.encode():
        client.send_raw(bytes([byte]))
    assert_stream_error(client, "not-authorized")  # still not authenticated, but parsed correctly


def test_several_stanzas_in_one_read(xmpp):
    alice = xmpp.login("alice@localhost/phone", available=True)
    bob = xmpp.login("bob@localhost/pc", available=True)
    alice.send_raw(
        "".join(f"<message to='bob@localhost' id='m{i}'><body>{i}</body></message>" for i in range(5))
    )
    assert [bob.next().get("id") for _ in range(5)] == [f"m{i}" for i in range(5)]


# -- stream errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "element", ["<foo xmlns='urn:example:unknown'/>", "<foo/>", "<query xmlns='jabber:iq:roster'/>"]
)
def test_unknown_top_level_element_after_bind(xmpp, element):
    alice = xmpp.login("alice@localhost/phone")
    alice.send(element)
    assert_stream_error(alice, "unsupported-stanza-type")
    assert len(xmpp.server.sessions) == 0


@pytest.mark.parametrize(
    "stanza",
    [
        "<message to='bob@localhost'><body>hi</body></message>",
        "<presence/>",
        "<iq type='get' id='r' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
    ],
)
def test_stanza_before_authentication_is_not_authorized(xmpp, stanza):
    client = xmpp.connect()
    client.open_stream("localhost")
    client.send(stanza)
    assert_stream_error(client, "not-authorized")


@pytest.mark.parametrize(
    "stanza",
    [
        "<message to='bob@localhost'><body>hi</body></message>",
        "<presence/>",
        "<iq type='get' id='r'><query xmlns='jabber:iq:roster'/></iq>",
    ],
)
def test_stanza_after_authentication_before_bind_is_not_authorized(xmpp, stanza):
    client, _ = authenticated(xmpp)
    client.send(stanza)
    assert_stream_error(client, "not-authorized")
    assert len(xmpp.server.sessions) == 0


def test_unknown_element_during_negotiation(xmpp):
    client = xmpp.connect()
    client.open_stream("localhost")
    client.send("<foo xmlns='urn:example:unknown'/>")
    assert_stream_error(client, "unsupported-stanza-type")


def test_client_closing_the_stream_gets_the_closing_tag(xmpp):
    alice = xmpp.login("alice@localhost/phone")
    alice.send_raw("</stream:stream>")
    alice._pump()
    assert alice.closed_by_server and not alice.stream_errors
    assert len(xmpp.server.sessions) == 0


def test_not_well_formed_xml_closes_the_stream(xmpp):
    alice = xmpp.login("alice@localhost/phone")
    alice.send_raw("<message><body></message>")
    assert_stream_error(alice, "not-well-formed")
    assert len(xmpp.server.sessions) == 0


def test_server_shutdown_sends_system_shutdown(make_xmpp):
    server = make_xmpp(enabled=[])
    alice = server.login("alice@localhost/phone")
    server.server.stopService()
    assert_stream_error(alice, "system-shutdown")


@pytest.mark.parametrize("chunk", [None, 1000])
def test_stanza_larger_than_max_stanza_size_is_a_policy_violation(make_xmpp, chunk):
    server = make_xmpp(enabled=[], config={"server": {"max_stanza_size": 10000}})
    alice = server.login("alice@localhost/phone", available=True)
    bob = server.login("bob@localhost/pc", available=True)
    alice.send(f"<message to='bob@localhost' id='fits'><body>{'a' * 9000}</body></message>")
    bob.expect("<message id='fits'/>")
    data = f"<message to='bob@localhost' id='big'><body>{'a' * 100000}</body></message>".encode()
    step = chunk or len(data)
    for start in range(0, len(data), step):
        alice.send_raw(data[start : start + step])
        if not alice.connected:
            break
    assert_stream_error(alice, "policy-violation")
    bob.expect_nothing()
