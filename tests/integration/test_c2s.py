"""Client-to-server streams end to end: a real ``twistd xmppd`` process, slixmpp clients and raw sockets.

What is asserted is what a user or a client developer sees on the wire: the SASL mechanism used, the
``from`` the server stamps, stanza errors, stream errors followed by ``</stream:stream>`` and a closed
connection. One server serves most tests of this module (each test uses its own accounts); tests that
need other settings start their own.
"""

from __future__ import annotations

import asyncio
import os
import time
import xml.etree.ElementTree as ET

import pytest
from rawclient import (
    NS_BIND,
    NS_CLIENT,
    NS_SASL,
    NS_SASL_CB,
    NS_STREAM_ERRORS,
    NS_STREAMS,
    NS_TLS,
    RawClient,
    StreamClosed,
    condition_of,
    stanza_error,
    stream_header,
)
from slixmpp.exceptions import IqError
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

# Each test uses its own accounts or resources, so tests do not see each other's sessions. "raw" is
# shared by raw-socket tests, each with its own resource.
PASSWORDS = {
    name: f"{name}-secret-{i}"
    for i, name in enumerate(["alice", "bob", "carol", "dave", "erin", "mallory", "raw"])
}


def creds(name: str) -> tuple[str, str]:
    return f"{name}@localhost", PASSWORDS[name]


@pytest.fixture(scope="module")
def server(module_xmpp_process):
    return module_xmpp_process(
        # The core's own c2s and routing rules, without the IM plugins (no offline storage: messages to
        # unavailable accounts bounce, RFC 6121 s8.5.2.2.1).
        config={
            "listen": {"c2s_direct_tls": ["tcp:0:interface=127.0.0.1"]},
            "plugins": {"enabled": ["disco", "ping", "version", "time", "last", "contact_info"]},
        },
        users={f"{name}@localhost": pw for name, pw in PASSWORDS.items()},
    )


async def login(pool, name: str, resource: str, **options):
    jid, password = creds(name)
    return await pool.login(f"{jid}/{resource}", password, **options)


def error_condition(stanza) -> str:
    return stanza["error"]["condition"]


# -- slixmpp: login, messages, iq -----------------------------------------------------------------------


def test_scram_sha_256_login_and_messages_both_ways(server, xmpp_run):
    async def body(pool):
        alice = await login(pool, "alice", "phone", mech="SCRAM-SHA-256")
        bob = await login(pool, "bob", "pc", mech="SCRAM-SHA-256")
        assert alice.mechanism == bob.mechanism == "SCRAM-SHA-256"
        assert alice.boundjid.full == "alice@localhost/phone"
        assert bob.boundjid.full == "bob@localhost/pc"
        assert alice.socket.version() in ("TLSv1.2", "TLSv1.3")  # STARTTLS happened

        for sender, receiver, to in (
            (alice, bob, "bob@localhost"),
            (bob, alice, "alice@localhost"),
            (alice, bob, "bob@localhost/pc"),
            (bob, alice, "alice@localhost/phone"),
        ):
            text = f"{sender.boundjid.user} to {to}"
            sender.send_message(mto=to, mbody=text, mtype="chat")
            msg = await receiver.next_message()
            assert msg["body"] == text
            assert msg["type"] == "chat"
            assert msg["from"].full == sender.boundjid.full  # stamped by the server: the full JID
            assert msg["to"].full == to

    xmpp_run(server, body)


def test_plain_over_tls(server, xmpp_run):
    async def body(pool):
        carol = await login(pool, "carol", "plain", mech="PLAIN")
        assert carol.mechanism == "PLAIN"
        bob = await login(pool, "bob", "plain-peer")
        carol.send_message(mto="bob@localhost/plain-peer", mbody="via PLAIN")
        msg = await bob.next_message()
        assert (msg["body"], msg["from"].full) == ("via PLAIN", "carol@localhost/plain")

    xmpp_run(server, body)


@pytest.mark.parametrize("mech", ["SCRAM-SHA-256", "PLAIN"])
def test_wrong_password_and_unknown_user_fail_auth(server, xmpp_run, mech):
    async def body(pool):
        jid, password = creds("alice")
        for who, pw in ((jid, password + "x"), ("nosuchuser@localhost", password)):
            client, failure = await pool.attempt(f"{who}/r", pw, mech=mech)
            assert failure is not None and failure.reason == "failed_auth", failure
            assert client.auth_failures == ["not-authorized"]
            assert not client.started.is_set()

    xmpp_run(server, body)


def test_same_resource_replaces_the_first_session(server, xmpp_run):
    async def body(pool):
        first = await login(pool, "dave", "same")
        second = await login(pool, "dave", "same")
        await first.wait_gone()
        assert first.stream_error_conditions == ["conflict"]
        assert second.boundjid.full == "dave@localhost/same"
        alice = await login(pool, "alice", "conflict-test")
        alice.send_message(mto="dave@localhost/same", mbody="to the new session")
        msg = await second.next_message()
        assert msg["body"] == "to the new session"
        # the replacement session still sends too
        second.send_message(mto="alice@localhost/conflict-test", mbody="still here")
        assert (await alice.next_message())["body"] == "still here"

    xmpp_run(server, body)


def test_messages_to_unavailable_or_unknown_accounts_bounce(server, xmpp_run):
    async def body(pool):
        alice = await login(pool, "alice", "bounce")
        # erin exists but has no session; no offline storage is enabled by default
        for to in ("erin@localhost", "erin@localhost/gone", "nobody@localhost", "nobody@localhost/x"):
            alice.send_message(mto=to, mbody="anyone?", mtype="chat")
            reply = await alice.next_message()
            assert reply["type"] == "error", reply
            assert error_condition(reply) == "service-unavailable", reply
            assert reply["from"].full == to

    xmpp_run(server, body)


def test_iq_to_server_with_unknown_namespace(server, xmpp_run):
    async def body(pool):
        alice = await login(pool, "alice", "iq")
        iq = alice.make_iq_get(ito="localhost")
        iq.xml.append(ET.Element("{urn:example:unknown}query"))
        with pytest.raises(IqError) as info:
            await iq.send(timeout=5)
        assert info.value.iq["type"] == "error"
        assert info.value.condition == "service-unavailable"
        assert info.value.iq["from"].full == "localhost"

    xmpp_run(server, body)


def test_iq_to_full_jid_is_delivered_and_answered(server, xmpp_run):
    async def body(pool):
        alice = await login(pool, "alice", "asker")
        bob = await login(pool, "bob", "answerer")
        seen = []

        def answer(iq):
            seen.append(iq["from"].full)
            reply = iq.reply()
            reply.xml.append(ET.Element("{urn:example:echo}query", {"answer": "42"}))
            reply.send()

        bob.register_handler(
            Callback("echo", MatchXPath(f"{{{NS_CLIENT}}}iq/{{urn:example:echo}}query"), answer)
        )
        iq = alice.make_iq_get(ito="bob@localhost/answerer")
        iq.xml.append(ET.Element("{urn:example:echo}query"))
        result = await iq.send(timeout=5)
        assert result["type"] == "result"
        assert result["from"].full == "bob@localhost/answerer"
        assert result.xml.find("{urn:example:echo}query").get("answer") == "42"
        assert seen == ["alice@localhost/asker"]

        # the same request to a resource that is not online: service-unavailable from the server
        iq = alice.make_iq_get(ito="bob@localhost/offline")
        iq.xml.append(ET.Element("{urn:example:echo}query"))
        with pytest.raises(IqError) as info:
            await iq.send(timeout=5)
        assert info.value.condition == "service-unavailable"

    xmpp_run(server, body)


def test_spoofed_from_is_overwritten(server, xmpp_run):
    async def body(pool):
        alice = await login(pool, "alice", "spoof")
        bob = await login(pool, "bob", "spoof-target")
        alice.send_message(mto="bob@localhost/spoof-target", mbody="it's carol", mfrom="carol@localhost/x")
        msg = await bob.next_message()
        assert msg["body"] == "it's carol"
        assert msg["from"].full == "alice@localhost/spoof"

    xmpp_run(server, body)


def test_direct_tls_login_and_message(server, xmpp_run):
    async def body(pool):
        port = server.port("c2s_direct_tls")
        carol = await login(pool, "carol", "direct", port=port, direct_tls=True, mech="SCRAM-SHA-256")
        assert carol.mechanism == "SCRAM-SHA-256"
        assert carol.socket.version() in ("TLSv1.2", "TLSv1.3")
        bob = await login(pool, "bob", "starttls-peer")
        carol.send_message(mto="bob@localhost/starttls-peer", mbody="over direct TLS")
        msg = await bob.next_message()
        assert (msg["body"], msg["from"].full) == ("over direct TLS", "carol@localhost/direct")
        bob.send_message(mto="carol@localhost/direct", mbody="back", mtype="chat")
        assert (await carol.next_message())["body"] == "back"

    xmpp_run(server, body)


# -- raw sockets: negotiation -----------------------------------------------------------------------------


def mechanisms(features) -> list[str]:
    return [m.text for m in features.iter(f"{{{NS_SASL}}}mechanism")]


def test_features_before_and_after_starttls(server, raw_client):
    client = raw_client(server)
    features = client.open_stream()
    starttls = features.find(f"{{{NS_TLS}}}starttls")
    assert starttls is not None and starttls.find(f"{{{NS_TLS}}}required") is not None
    assert "PLAIN" not in mechanisms(features)
    assert client.header["from"] == "localhost" and client.header.get("id")

    client.send(f"<starttls xmlns='{NS_TLS}'/>")
    client.expect(f"{{{NS_TLS}}}proceed")
    client._handshake()
    features = client.open_stream()
    assert features.find(f"{{{NS_TLS}}}starttls") is None
    offered = mechanisms(features)
    for mech in ("SCRAM-SHA-256", "SCRAM-SHA-256-PLUS", "PLAIN"):
        assert mech in offered, offered
    bindings = {cb.get("type") for cb in features.iter(f"{{{NS_SASL_CB}}}channel-binding")}
    assert "tls-exporter" in bindings, bindings


def test_sasl_before_starttls_is_refused(server, raw_client):
    client = raw_client(server)
    client.open_stream()
    client.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>AGFsaWNlAHB3</auth>")
    failure = client.expect(f"{{{NS_SASL}}}failure")
    assert failure.find(f"{{{NS_SASL}}}encryption-required") is not None


def test_malformed_xml_closes_only_that_stream(server, raw_client, xmpp_run):
    async def body(pool):
        alice = await login(pool, "alice", "bystander")
        bob = await login(pool, "bob", "bystander")
        client = raw_client(server)
        client.open_stream()
        client.send("<message><body>unclosed</message>")
        condition = await asyncio.to_thread(client.expect_stream_error)
        assert condition == "not-well-formed"
        assert client.eof
        alice.send_message(mto="bob@localhost/bystander", mbody="unaffected")
        assert (await bob.next_message())["body"] == "unaffected"
        bob.send_message(mto="alice@localhost/bystander", mbody="me neither")
        assert (await alice.next_message())["body"] == "me neither"

    xmpp_run(server, body)


@pytest.mark.parametrize(
    "prolog, after_header",
    [
        ("<?xml version='1.0'?><!DOCTYPE stream:stream [<!ENTITY x 'y'>]>", ""),
        ("", "<!-- a comment -->"),
        ("", "<?processing instruction?>"),
        ("<!-- before the root -->", ""),
    ],
    ids=["doctype", "comment", "pi", "prolog-comment"],
)
def test_restricted_xml(server, raw_client, prolog, after_header):
    client = raw_client(server)
    header = stream_header().decode().split("?>", 1)[1]
    client.send(prolog + header + after_header)
    assert client.expect_stream_error() == "restricted-xml"
    assert client.eof


@pytest.mark.parametrize(
    "header",
    [
        "<stream:stream to='localhost' xmlns='jabber:client' xmlns:stream='urn:example:wrong' version='1.0'>",
        f"<stream:stream to='localhost' xmlns='jabber:server' xmlns:stream='{NS_STREAMS}' version='1.0'>",
    ],
    ids=["stream-namespace", "content-namespace"],
)
def test_wrong_namespace(server, raw_client, header):
    client = raw_client(server)
    client.send(header)
    assert client.expect_stream_error() == "invalid-namespace"
    assert client.eof


def test_unknown_domain(server, raw_client):
    client = raw_client(server)
    client.send(stream_header(to="example.net"))
    assert client.expect_stream_error() == "host-unknown"
    assert client.eof


def test_stanza_before_authentication(server, raw_client):
    client = raw_client(server)
    client.open_stream()
    client.send("<message to='bob@localhost'><body>hi</body></message>")
    assert client.expect_stream_error() == "not-authorized"

    client = raw_client(server)
    client.starttls()
    client.send("<iq type='get' id='1' to='localhost'><query xmlns='jabber:iq:version'/></iq>")
    assert client.expect_stream_error() == "not-authorized"
    assert client.eof


def test_client_stream_end_is_answered(server, raw_client):
    client = raw_client(server)
    client.open_stream()
    client.end_stream()
    client.wait_closed()
    assert client.stream_ended
    assert b"stream:error" not in client.received

    client = raw_client(server)
    name, password = "raw", PASSWORDS["raw"]
    assert client.login(name, password, "closing") == "raw@localhost/closing"
    client.end_stream()
    client.wait_closed()
    assert client.stream_ended
    assert b"stream:error" not in client.received


def test_starttls_command_injection_is_ignored(server, raw_client):
    """Plaintext sent in the same packet as <starttls/> must not reach the encrypted stream."""
    client = raw_client(server)
    client.open_stream()
    client.send(
        f"<starttls xmlns='{NS_TLS}'/>"
        + stream_header().decode()
        + "<iq type='set' id='x'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>"
    )
    client.expect(f"{{{NS_TLS}}}proceed")
    client._handshake()
    # If the injected header had been processed, the server would now send a header and features.
    assert client.silent_for(0.3)
    features = client.open_stream()
    assert "SCRAM-SHA-256" in mechanisms(features)
    name, password = "raw", PASSWORDS["raw"]
    assert client.auth_scram(name, password) == (True, None)
    assert client.bind("after-injection") == "raw@localhost/after-injection"


# -- raw sockets: SCRAM-SHA-256-PLUS (RFC 9266 tls-exporter, RFC 5929 tls-server-end-point) --------------


@pytest.mark.parametrize("cb_type", ["tls-exporter", "tls-server-end-point"])
def test_scram_plus_channel_binding(server, raw_client, cb_type):
    name, password = "raw", PASSWORDS["raw"]

    def data(client: RawClient) -> bytes:
        return client.exporter() if cb_type == "tls-exporter" else client.server_end_point()

    client = raw_client(server)
    client.starttls()
    ok = client.auth_scram(
        name, password, mechanism="SCRAM-SHA-256-PLUS", cb_type=cb_type, cb_data=data(client)
    )
    assert ok == (True, None)
    assert client.bind("plus") == "raw@localhost/plus"

    if cb_type == "tls-exporter":
        # the binding data of another TLS connection (a man in the middle's) is refused
        other = raw_client(server)
        other.starttls()
        client = raw_client(server)
        client.starttls()
        ok = client.auth_scram(
            name, password, mechanism="SCRAM-SHA-256-PLUS", cb_type=cb_type, cb_data=data(other)
        )
        assert ok == (False, "not-authorized")

    client = raw_client(server)
    client.starttls()
    ok = client.auth_scram(
        name, password, mechanism="SCRAM-SHA-256-PLUS", cb_type=cb_type, cb_data=os.urandom(32)
    )
    assert ok == (False, "not-authorized")


def test_scram_downgrade_is_detected(server, raw_client):
    """gs2 flag "y" (client supports channel binding, thinks the server does not) while the server
    advertised -PLUS: a downgrade, refused (RFC 5802 s6)."""
    name, password = "raw", PASSWORDS["raw"]
    client = raw_client(server)
    client.starttls()
    assert client.auth_scram(name, password, gs2_header="y,,") == (False, "not-authorized")
    # the same client without the flag logs in (so the refusal was about the flag)
    client = raw_client(server)
    client.starttls()
    assert client.auth_scram(name, password) == (True, None)


# -- raw sockets: limits, timeouts, abrupt disconnects ----------------------------------------------------


def send_big_message(client: RawClient, size: int) -> None:
    head = "<message to='bob@localhost/nowhere' type='chat'><body>"
    tail = "</body></message>"
    body = "x" * (size - len(head) - len(tail))
    try:
        client.send(head + body + tail)
    except OSError:
        pass  # the server may close while we are still sending


def assert_policy_violation(client: RawClient, size: int, limit: int) -> None:
    """The stream ends with policy-violation; fail at once if the stanza was routed instead."""
    while True:
        try:
            el = client.next_element()
        except StreamClosed:
            raise AssertionError(
                f"stream closed without a stream error: {client.received[-300:]!r}"
            ) from None
        if el.tag == f"{{{NS_STREAMS}}}error":
            assert condition_of(el, NS_STREAM_ERRORS) == "policy-violation"
            client.wait_closed()
            assert client.stream_ended and client.eof
            return
        if el.tag == f"{{{NS_CLIENT}}}message":
            raise AssertionError(
                f"a {size}-byte stanza (limit {limit}) was accepted and routed "
                f"(it bounced with {stanza_error(el)}) instead of ending the stream with policy-violation"
            )


@pytest.mark.parametrize("size", [262144 + 2000, 1024 * 1024], ids=["just-over", "1MiB"])
def test_oversized_stanza_is_a_policy_violation(server, raw_client, size):
    client = raw_client(server)
    name, password = "raw", PASSWORDS["raw"]
    client.login(name, password, f"big-{size}")
    send_big_message(client, size)
    assert_policy_violation(client, size, 262144)


def test_stanza_within_the_limit_is_delivered(server, raw_client):
    client = raw_client(server)
    name, password = "raw", PASSWORDS["raw"]
    client.login(name, password, "big-ok")
    send_big_message(client, 200000)
    # the message goes to an absent resource of bob's: the bounce proves it was processed
    el = client.wait_for(f"{{{NS_CLIENT}}}message")
    assert el.get("type") == "error" and stanza_error(el) == "service-unavailable"


def test_abrupt_disconnect_does_not_disturb_others(server, raw_client, xmpp_run):
    async def body(pool):
        alice = await login(pool, "alice", "witness")
        raw = raw_client(server)
        name, password = "mallory", PASSWORDS["mallory"]
        jid = await asyncio.to_thread(raw.login, name, password, "laptop")
        alice.send_message(mto=jid, mbody="are you there?", mtype="chat")
        got = await asyncio.to_thread(raw.wait_for, f"{{{NS_CLIENT}}}message")
        assert got.findtext(f"{{{NS_CLIENT}}}body") == "are you there?"

        raw.close()  # no </stream:stream>, no TLS close_notify
        deadline = time.monotonic() + 5
        while True:
            alice.send_message(mto=jid, mbody="gone?", mtype="chat")
            try:
                reply = await alice.next_message(0.5)
                break
            except TimeoutError:
                assert time.monotonic() < deadline, "no bounce after the session vanished"
        assert reply["type"] == "error" and error_condition(reply) == "service-unavailable"

        bob = await login(pool, "bob", "after-abort")
        alice.send_message(mto="bob@localhost", mbody="life goes on", mtype="chat")
        assert (await bob.next_message())["body"] == "life goes on"

    xmpp_run(server, body)


def test_unauthenticated_connection_times_out(xmpp_process, raw_client):
    server = xmpp_process(config={"server": {"auth_timeout": 1, "max_stanza_size": 10000}})
    client = raw_client(server)
    start = time.monotonic()
    client.open_stream()
    assert client.expect_stream_error(timeout=5) == "connection-timeout"
    elapsed = time.monotonic() - start
    assert 0.8 <= elapsed < 4, elapsed
    assert client.eof


def test_configured_stanza_size_limit(xmpp_process, raw_client):
    server = xmpp_process(
        config={"server": {"max_stanza_size": 10000}}, users={"raw@localhost": PASSWORDS["raw"]}
    )
    client = raw_client(server)
    client.login("raw", PASSWORDS["raw"], "small")
    send_big_message(client, 9000)  # under the limit: bounced normally
    el = client.wait_for(f"{{{NS_CLIENT}}}message")
    assert stanza_error(el) == "service-unavailable"
    send_big_message(client, 12000)
    assert_policy_violation(client, 12000, 10000)


def test_bind_result_and_unbound_features(server, raw_client):
    """After SASL the restarted stream offers bind; a bound client gets its full JID back."""
    client = raw_client(server)
    client.starttls()
    name, password = "raw", PASSWORDS["raw"]
    assert client.auth_scram(name, password) == (True, None)
    features = client.open_stream()
    assert features.find(f"{{{NS_BIND}}}bind") is not None
    assert not mechanisms(features)
    client.send(f"<iq type='set' id='b'><bind xmlns='{NS_BIND}'/></iq>")
    result = client.expect(f"{{{NS_CLIENT}}}iq")
    jid = result.findtext(f".//{{{NS_BIND}}}jid")
    assert jid.startswith("raw@localhost/") and len(jid) > len("raw@localhost/")  # server-generated
    client.end_stream()
    client.wait_closed()
    assert client.stream_ended and client.eof
    with pytest.raises(StreamClosed):
        client.next_element()
