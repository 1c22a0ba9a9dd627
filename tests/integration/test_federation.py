"""Federation as users see it: two ``twistd xmppd`` servers on loopback (a.localhost and b.localhost, each
reaching the other through ``[s2s.routes]``) and slixmpp clients on each.

Both ways of authenticating a server stream are exercised, each with its own pair of servers:

* ``dialback``: each server has its generated self-signed certificate, which the other cannot verify, so
  streams are authenticated with Server Dialback (XEP-0220, keys per XEP-0185);
* ``external``: certificates from one TestCA that both servers trust, ``require_valid_certificates``, so
  streams are authenticated with SASL EXTERNAL (XEP-0178).

Across the pair: a subscription handshake ends in 'both' on each side, presence and messages flow both
ways, iqs are answered by the other server, a message for an unknown account bounces, and after a restart
of one server the link is set up again. Failures (unreachable and broken peers, queue limits, certificate
policy, stream errors on the s2s listener, idle streams) are tested against another server, f.localhost,
whose users see the bounces while still chatting with each other.

slixmpp's roster answers subscription requests by itself (``auto_authorize``, ``auto_subscribe``); every
client here sets both explicitly.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from federation import (
    NS_SASL,
    NS_TLS,
    FakePeer,
    FedClient,
    FedClients,
    RawS2S,
    error_condition,
    free_port,
    log_lines,
    make_server,
    server_config,
    start_all,
)
from lxml import etree
from slixclient import TIMEOUT, run, until, within

from xmppd.testing.ca import TestCA
from xmppd.testing.process import ServerProcess

A, B = "a.localhost", "b.localhost"
ALICE, BOB = f"alice@{A}", f"bob@{B}"
PASSWORDS = {ALICE: "alice-pw", BOB: "bob-pw"}
NS_ROSTER = "jabber:iq:roster"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_VERSION = "jabber:iq:version"
NS_PING = "urn:xmpp:ping"
NS_VCARD = "vcard-temp"
MODES = {"dialback": "dialback", "external": "SASL EXTERNAL"}  # mode -> what the logs name


@dataclass
class Pair:
    mode: str
    a: ServerProcess
    b: ServerProcess
    cafile_a: Path
    cafile_b: Path

    def clients(self, server: ServerProcess) -> FedClients:
        return FedClients(server, self.cafile_a if server is self.a else self.cafile_b)


@pytest.fixture(scope="module", params=list(MODES))
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    mode = request.param
    base = tmp_path_factory.mktemp(f"federation-{mode}")
    port_a, port_b = free_port(), free_port()
    options: dict[str, Any] = {"connect_timeout": 5}
    tls_a = tls_b = None
    if mode == "external":
        ca = TestCA(base / "ca")
        tls_a, tls_b = ca.issue(A), ca.issue(B)
        options.update(ca_file=str(ca.ca_path), require_valid_certificates=True)
    a = make_server(base / "a", server_config(A, port_a, {B: port_b}, s2s=options, tls=tls_a))
    b = make_server(base / "b", server_config(B, port_b, {A: port_a}, s2s=options, tls=tls_b))
    try:
        start_all(a.start, b.start)
        a.adduser(ALICE, PASSWORDS[ALICE])
        b.adduser(BOB, PASSWORDS[BOB])
        if mode == "external":
            cafile_a = cafile_b = ca.ca_path
        else:
            cafile_a, cafile_b = a.data_dir / "selfsigned.crt", b.data_dir / "selfsigned.crt"
        yield Pair(mode, a, b, cafile_a, cafile_b)
    finally:
        a.stop()
        b.stop()


async def login(
    clients: FedClients, jid: str, *, authorize: bool | None, subscribe: bool, roster: bool = True
) -> FedClient:
    client = await clients.login(jid, PASSWORDS[jid.split("/")[0]])
    client.auto_authorize = authorize
    client.auto_subscribe = subscribe
    if roster:
        await client.get_roster(timeout=TIMEOUT)
    return client


async def server_roster(client: FedClient) -> dict[str, tuple[str, str | None]]:
    """The roster as the server has it: {jid: (subscription, ask)}."""
    answer = await client.iq_get(client.boundjid.bare, f"<query xmlns='{NS_ROSTER}'/>")
    query = answer.find(f"{{{NS_ROSTER}}}query")
    return {
        item.get("jid"): (item.get("subscription", "none"), item.get("ask"))
        for item in query.findall(f"{{{NS_ROSTER}}}item")
    }


def sees(client: FedClient, contact: str, resource: str) -> bool:
    return resource in client.client_roster[contact].resources


async def chat(sender: FedClient, receiver: FedClient, to: str, body: str) -> Any:
    """Send a chat message and return it as received (the next message ``receiver`` gets)."""
    sender.send_message(mto=to, mbody=body, mtype="chat")
    message = await receiver.next_stanza()
    assert (message["type"], message["body"]) == ("chat", body), message
    assert str(message["from"]) == str(sender.boundjid)
    return message


# -- the tests ---------------------------------------------------------------------------------------------
# They run in order on one pair of servers per mode: the first makes alice and bob contacts.


def test_subscription_presence_and_messages(pair: Pair) -> None:
    async def main() -> None:
        async with pair.clients(pair.a) as on_a, pair.clients(pair.b) as on_b:
            alice = await login(on_a, f"{ALICE}/phone", authorize=True, subscribe=False)
            bob = await login(on_b, f"{BOB}/pc", authorize=True, subscribe=True)
            requests: list[Any] = []
            bob.add_event_handler("presence_subscribe", requests.append)

            # alice asks; bob's client approves and asks back; alice's client approves
            alice.send_presence(pto=BOB, ptype="subscribe")
            await until(lambda: alice.client_roster[BOB]["subscription"] == "both", "alice: both")
            await until(lambda: bob.client_roster[ALICE]["subscription"] == "both", "bob: both")
            assert (await server_roster(alice))[BOB] == ("both", None)
            assert (await server_roster(bob))[ALICE] == ("both", None)
            assert [str(r["from"]) for r in requests] == [ALICE]

            # presence both ways
            await until(lambda: sees(alice, BOB, "pc"), "alice sees bob online")
            await until(lambda: sees(bob, ALICE, "phone"), "bob sees alice online")
            alice.send_presence(pshow="away", pstatus="lunch")
            await until(lambda: bob.client_roster[ALICE].resources["phone"]["show"] == "away", "away")
            assert bob.client_roster[ALICE].resources["phone"]["status"] == "lunch"

            # messages both ways, to bare and full JIDs
            await chat(alice, bob, BOB, "hello bob (bare)")
            await chat(alice, bob, f"{BOB}/pc", "hello bob (full)")
            await chat(bob, alice, ALICE, "hi alice (bare)")
            await chat(bob, alice, f"{ALICE}/phone", "hi alice (full)")

            # logging out is seen across, both ways
            gone_a: asyncio.Queue[Any] = asyncio.Queue()
            alice.add_event_handler("presence_unavailable", gone_a.put_nowait)
            await bob.stop()
            presence = await within(gone_a.get())
            assert str(presence["from"]) == f"{BOB}/pc"
            assert not sees(alice, BOB, "pc")

            bob = await login(on_b, f"{BOB}/tablet", authorize=None, subscribe=False, roster=True)
            await until(lambda: sees(alice, BOB, "tablet"), "alice sees bob back")
            await until(lambda: sees(bob, ALICE, "phone"), "bob's probe is answered across")
            gone_b: asyncio.Queue[Any] = asyncio.Queue()
            bob.add_event_handler("presence_unavailable", gone_b.put_nowait)
            await alice.stop()
            presence = await within(gone_b.get())
            assert str(presence["from"]) == f"{ALICE}/phone"

    run(main())


def test_streams_use_the_expected_authentication(pair: Pair) -> None:
    how = MODES[pair.mode]
    assert log_lines(pair.a, f"s2s out {A} -> {B}: authenticated with {how}")
    assert log_lines(pair.b, f"s2s out {B} -> {A}: authenticated with {how}")
    assert log_lines(pair.a, f"{B} authenticated with {how}")  # the incoming stream from b
    assert log_lines(pair.b, f"{A} authenticated with {how}")
    other = MODES["external" if pair.mode == "dialback" else "dialback"]
    assert not log_lines(pair.a, "authenticated with " + other)
    assert not log_lines(pair.b, "authenticated with " + other)


def test_iqs_across(pair: Pair) -> None:
    async def main() -> None:
        async with pair.clients(pair.a) as on_a, pair.clients(pair.b) as on_b:
            alice = await login(on_a, f"{ALICE}/phone", authorize=True, subscribe=False)
            bob = await login(on_b, f"{BOB}/pc", authorize=True, subscribe=True)
            if (await server_roster(alice)).get(BOB, ("none",))[0] != "both":  # this test run alone
                alice.send_presence(pto=BOB, ptype="subscribe")
                await until(lambda: alice.client_roster[BOB]["subscription"] == "both", "alice: both")
            vcard = ET.fromstring(f"<vCard xmlns='{NS_VCARD}'><FN>Bob Builder</FN></vCard>")
            iq = bob.make_iq_set()
            iq.append(vcard)
            await iq.send(timeout=TIMEOUT)

            # to bob's account: answered by b.localhost for him (disco#info: as alice is his contact)
            answer = await alice.iq_get(BOB, f"<vCard xmlns='{NS_VCARD}'/>")
            assert answer.get("from") == BOB and answer.get("type") == "result"
            assert answer.findtext(f"{{{NS_VCARD}}}vCard/{{{NS_VCARD}}}FN") == "Bob Builder"
            answer = await alice.iq_get(BOB, f"<query xmlns='{NS_DISCO_INFO}'/>")
            identity = answer.find(f"{{{NS_DISCO_INFO}}}query/{{{NS_DISCO_INFO}}}identity")
            assert (identity.get("category"), identity.get("type")) == ("account", "registered")
            answer = await alice.iq_get(BOB, f"<ping xmlns='{NS_PING}'/>")
            assert answer.get("type") == "result" and answer.get("from") == BOB

            # to the remote server itself, both ways
            answer = await alice.iq_get(B, f"<query xmlns='{NS_VERSION}'/>")
            assert answer.get("from") == B
            assert answer.findtext(f"{{{NS_VERSION}}}query/{{{NS_VERSION}}}name")
            answer = await bob.iq_get(A, f"<query xmlns='{NS_VERSION}'/>")
            assert answer.get("from") == A

    run(main())


def test_message_to_an_unknown_remote_user_bounces(pair: Pair) -> None:
    async def main() -> None:
        async with pair.clients(pair.a) as on_a:
            alice = await login(on_a, f"{ALICE}/phone", authorize=None, subscribe=False, roster=False)
            message = alice.make_message(mto=f"nobody@{B}", mbody="anyone?", mtype="chat")
            message["id"] = "to-nobody"
            message.send()
            error = await alice.next_stanza()
            assert error_condition(error) == "service-unavailable", error
            assert (str(error["from"]), error["id"]) == (f"nobody@{B}", "to-nobody")
            await alice.nothing_more()

    run(main())


def test_restarted_server_is_reached_again(pair: Pair) -> None:
    async def main() -> None:
        async with pair.clients(pair.a) as on_a:
            alice = await login(on_a, f"{ALICE}/phone", authorize=None, subscribe=False, roster=False)
            async with pair.clients(pair.b) as on_b:
                bob = await login(on_b, f"{BOB}/pc", authorize=None, subscribe=False, roster=False)
                await chat(alice, bob, f"{BOB}/pc", "before the restart")
                await chat(bob, alice, f"{ALICE}/phone", "ack before")
                await asyncio.to_thread(pair.b.stop)
                await within(bob.ended.wait())
            await asyncio.to_thread(pair.b.start)  # the same s2s port, a new c2s port
            async with pair.clients(pair.b) as on_b:
                bob = await login(on_b, f"{BOB}/pc", authorize=None, subscribe=False, roster=False)
                await chat(alice, bob, f"{BOB}/pc", "after the restart")
                await chat(bob, alice, f"{ALICE}/phone", "ack after")

    run(main())
    how = MODES[pair.mode]
    assert len(log_lines(pair.a, f"s2s out {A} -> {B}: authenticated with {how}")) >= 2


# -- failures ----------------------------------------------------------------------------------------------
# One server, f.localhost, routes to peers that fail in different ways; its users alice and bob keep
# chatting with each other meanwhile. p.localhost is an xmppd with a self-signed certificate; h.localhost
# one with dialback disabled; g.localhost one with a TestCA certificate and a one-second idle timeout.

F, G, P, H = "f.localhost", "g.localhost", "p.localhost", "h.localhost"
F_USERS = {f"alice@{F}": "alice-pw", f"bob@{F}": "bob-pw"}
CONNECT_TIMEOUT = 2


@dataclass
class Lab:
    f: ServerProcess
    g: ServerProcess
    p: ServerProcess
    h: ServerProcess
    peers: dict[str, FakePeer]
    ca: TestCA
    s2s_port_f: int

    def clients(self, server: ServerProcess) -> FedClients:
        return FedClients(server, self.ca.ca_path if server in (self.f, self.g) else None)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    base = tmp_path_factory.mktemp("federation-failures")
    ca = TestCA(base / "ca")
    peers = {name: FakePeer(name) for name in ("close", "garbage", "silent")}
    ports = {d: free_port() for d in (F, G, P, H)}
    verified = {"ca_file": str(ca.ca_path), "require_valid_certificates": True}
    f_routes = {G: ports[G], P: ports[P], "nothing.localhost": free_port()}
    f_routes.update({f"{name}.localhost": peer.port for name, peer in peers.items()})
    f = make_server(
        base / "f",
        server_config(
            F,
            ports[F],
            f_routes,
            s2s={"connect_timeout": CONNECT_TIMEOUT, "queue_size": 2, **verified},
            tls=ca.issue(F),
        ),
    )
    g = make_server(
        base / "g",
        server_config(G, ports[G], {F: ports[F]}, s2s={"idle_timeout": 1, **verified}, tls=ca.issue(G)),
    )
    p = make_server(base / "p", server_config(P, ports[P], {F: ports[F], H: ports[H]}))
    h = make_server(
        base / "h",
        server_config(
            H, ports[H], {P: ports[P]}, s2s={"dialback": False, "connect_timeout": CONNECT_TIMEOUT}
        ),
    )
    try:
        start_all(f.start, g.start, p.start, h.start)
        for jid, password in F_USERS.items():
            f.adduser(jid, password)
        g.adduser(f"carol@{G}", "carol-pw")
        h.adduser(f"hank@{H}", "hank-pw")
        p.adduser(f"pat@{P}", "pat-pw")
        yield Lab(f, g, p, h, peers, ca, ports[F])
    finally:
        for server in (f, g, p, h):
            server.stop()
        for peer in peers.values():
            peer.close()


async def f_users(lab: Lab, clients: FedClients) -> tuple[FedClient, FedClient]:
    alice = await clients.login(f"alice@{F}/phone", F_USERS[f"alice@{F}"])
    bob = await clients.login(f"bob@{F}/pc", F_USERS[f"bob@{F}"])
    return alice, bob


async def local_chat_works(alice: FedClient, bob: FedClient, body: str = "still here?") -> None:
    """The server still serves its own users: a message from alice to bob and back."""
    await chat(alice, bob, f"bob@{F}/pc", body)
    await chat(bob, alice, f"alice@{F}/phone", body + " yes")


def send(client: FedClient, to: str, id_: str, body: str = "hello?") -> None:
    message = client.make_message(mto=to, mbody=body, mtype="chat")
    message["id"] = id_
    message.send()


async def bounces(client: FedClient, count: int, timeout: float = TIMEOUT) -> dict[str, str]:
    """The next ``count`` messages ``client`` receives, all errors: {id: condition}; then nothing more
    (each message bounces exactly once)."""
    result: dict[str, str] = {}
    for _ in range(count):
        error = await client.next_stanza(timeout)
        condition = error_condition(error)
        assert condition is not None, f"not an error: {error}"
        assert error["id"] not in result, f"bounced twice: {error}"
        result[error["id"]] = condition
    await client.nothing_more()
    return result


def test_route_to_a_closed_port_bounces_at_once(lab: Lab) -> None:
    async def main() -> None:
        async with lab.clients(lab.f) as clients:
            alice, bob = await f_users(lab, clients)
            started = time.monotonic()
            send(alice, "someone@nothing.localhost", "n1")
            assert await bounces(alice, 1) == {"n1": "remote-server-not-found"}
            assert time.monotonic() - started < CONNECT_TIMEOUT, "not a timeout: the connection is refused"
            await local_chat_works(alice, bob)

    run(main())


def test_peer_that_closes_at_once(lab: Lab) -> None:
    async def main() -> None:
        async with lab.clients(lab.f) as clients:
            alice, bob = await f_users(lab, clients)
            send(alice, "someone@close.localhost", "c1")
            send(alice, "someone@close.localhost", "c2")
            errors = await bounces(alice, 2)
            assert errors == {"c1": "remote-server-not-found", "c2": "remote-server-not-found"}
            await local_chat_works(alice, bob)

    run(main())
    assert lab.peers["close"].connections >= 1


def test_peer_that_answers_garbage(lab: Lab) -> None:
    async def main() -> None:
        async with lab.clients(lab.f) as clients:
            alice, bob = await f_users(lab, clients)
            send(alice, "someone@garbage.localhost", "g1")
            assert await bounces(alice, 1) == {"g1": "remote-server-not-found"}
            await local_chat_works(alice, bob)

    run(main())
    peer = lab.peers["garbage"]
    assert peer.connections == 1
    sent = peer.received[0].decode()
    assert sent.startswith("<?xml version='1.0'?><stream:stream") and "to='garbage.localhost'" in sent
    assert "<stream:error><not-well-formed" in sent and sent.endswith("</stream:stream>"), sent


def test_silent_peer_times_out_and_the_queue_is_bounded(lab: Lab) -> None:
    async def main() -> None:
        async with lab.clients(lab.f) as clients:
            alice, bob = await f_users(lab, clients)
            started = time.monotonic()
            for id_ in ("s1", "s2", "s3"):  # queue_size = 2: the third does not fit
                send(alice, "someone@silent.localhost", id_)
            error = await alice.next_stanza()
            assert (error["id"], error_condition(error)) == ("s3", "resource-constraint")
            assert time.monotonic() - started < 1
            await local_chat_works(alice, bob, "while f.localhost waits for silent.localhost")
            errors = await bounces(alice, 2)
            assert errors == {"s1": "remote-server-timeout", "s2": "remote-server-timeout"}
            elapsed = time.monotonic() - started
            assert CONNECT_TIMEOUT - 0.2 < elapsed < CONNECT_TIMEOUT + 2, elapsed
            await local_chat_works(alice, bob)

    run(main())
    peer = lab.peers["silent"]
    assert peer.connections == 1
    assert b"to='silent.localhost'" in peer.received[0]
    assert lab.peers["silent"].ended == 1  # f.localhost gave up and closed the connection


def test_required_valid_certificate_rejects_a_self_signed_peer(lab: Lab) -> None:
    async def main() -> None:
        async with lab.clients(lab.f) as clients:
            alice, bob = await f_users(lab, clients)
            send(alice, f"pat@{P}", "p1")
            assert await bounces(alice, 1) == {"p1": "remote-server-not-found"}
            await local_chat_works(alice, bob)

    run(main())
    assert log_lines(lab.f, f"s2s out {P}: certificate does not verify")
    assert log_lines(lab.f, f"s2s out {F} -> {P} failed: invalid certificate")


def test_without_dialback_a_self_signed_peer_is_unreachable(lab: Lab) -> None:
    async def main() -> None:
        async with lab.clients(lab.h) as clients:
            hank = await clients.login(f"hank@{H}/desk", "hank-pw")
            send(hank, f"pat@{P}", "h1")
            assert await bounces(hank, 1) == {"h1": "remote-server-not-found"}

    run(main())
    assert log_lines(lab.h, f"s2s out {H} -> {P} failed: no usable authentication")


def test_idle_outgoing_stream_closes_and_reopens(lab: Lab) -> None:
    authenticated = f"s2s out {G} -> {F}: authenticated with SASL EXTERNAL"

    async def main() -> None:
        async with lab.clients(lab.f) as on_f, lab.clients(lab.g) as on_g:
            alice, _ = await f_users(lab, on_f)
            carol = await on_g.login(f"carol@{G}/laptop", "carol-pw")
            await chat(carol, alice, f"alice@{F}/phone", "first")
            assert len(log_lines(lab.g, authenticated)) == 1
            await until(lambda: bool(log_lines(lab.g, "s2s out", "idle, closing")), "the idle close", 5)
            await chat(carol, alice, f"alice@{F}/phone", "second, on a new stream")
            assert len(log_lines(lab.g, authenticated)) == 2

    run(main())


# -- the s2s listener, from a raw socket -------------------------------------------------------------------


def test_stream_to_a_domain_not_served_here(lab: Lab) -> None:
    raw = RawS2S(lab.s2s_port_f)
    try:
        header = raw.open(to="elsewhere.localhost", from_=P)
        assert header.get("from") == F  # a header first, then the error (RFC 6120 s4.9.1.3)
        assert raw.stream_error() == "host-unknown"
        assert raw.ended
    finally:
        raw.close()


def test_stanza_on_an_unauthenticated_stream(lab: Lab) -> None:
    """Before TLS only STARTTLS is accepted (policy-violation, RFC 6120 s5.3.1); after TLS without any
    authentication a stanza gets not-authorized. Either way nothing is delivered."""
    context = ssl.create_default_context(cafile=str(lab.ca.ca_path))  # no client certificate
    stanza = f"<message from='pat@{P}' to='alice@{F}' type='chat'><body>sneaky</body></message>"

    def before_tls() -> str | None:
        raw = RawS2S(lab.s2s_port_f)
        try:
            raw.open(to=F, from_=P)
            features = raw.next()
            starttls = features.find(f"{{{NS_TLS}}}starttls")
            assert starttls is not None and starttls.find(f"{{{NS_TLS}}}required") is not None
            assert len(features) == 1, etree.tostring(features)  # nothing else before TLS
            raw.send(stanza)
            return raw.stream_error()
        finally:
            raw.close()

    def after_tls() -> str | None:
        raw = RawS2S(lab.s2s_port_f)
        try:
            raw.open(to=F, from_=P)
            raw.next()
            raw.starttls(context, F)
            raw.open(to=F, from_=P)
            features = raw.next()
            assert features.find(f"{{{NS_SASL}}}mechanisms") is None, "no certificate: no EXTERNAL"
            raw.send(stanza)
            return raw.stream_error()
        finally:
            raw.close()

    async def main() -> None:
        async with lab.clients(lab.f) as clients:
            alice, bob = await f_users(lab, clients)
            assert await asyncio.to_thread(before_tls) == "policy-violation"
            assert await asyncio.to_thread(after_tls) == "not-authorized"
            await alice.nothing_more()  # nothing was delivered
            await local_chat_works(alice, bob)

    run(main())


def test_stanza_from_a_domain_the_stream_did_not_authenticate(lab: Lab) -> None:
    """A peer authenticated as raw.localhost (SASL EXTERNAL with a TestCA certificate) may send from
    raw.localhost only."""
    cert, key = lab.ca.issue("raw.localhost")
    context = ssl.create_default_context(cafile=str(lab.ca.ca_path))
    context.load_cert_chain(str(cert), str(key))

    async def main() -> None:
        async with lab.clients(lab.f) as clients:
            alice, _ = await f_users(lab, clients)

            def attempt() -> str | None:
                raw = RawS2S(lab.s2s_port_f)
                try:
                    raw.open(to=F, from_="raw.localhost")
                    raw.next()  # features: STARTTLS
                    raw.starttls(context, F)
                    raw.open(to=F, from_="raw.localhost")
                    features = raw.next()
                    mechanisms = [m.text for m in features.iter(f"{{{NS_SASL}}}mechanism")]
                    assert mechanisms == ["EXTERNAL"], etree.tostring(features)
                    raw.send(f"<auth xmlns='{NS_SASL}' mechanism='EXTERNAL'>=</auth>")
                    assert raw.next().tag == f"{{{NS_SASL}}}success"
                    raw.open(to=F, from_="raw.localhost")
                    raw.next()  # features, empty
                    raw.send(
                        f"<message from='ron@raw.localhost' to='alice@{F}' type='chat' id='ok'>"
                        "<body>from where I said</body></message>"
                        f"<message from='mallory@evil.localhost' to='alice@{F}' type='chat' id='spoof'>"
                        "<body>spoofed</body></message>"
                    )
                    return raw.stream_error()
                finally:
                    raw.close()

            assert await asyncio.to_thread(attempt) == "invalid-from"
            message = await alice.next_stanza()
            assert (str(message["from"]), message["body"]) == ("ron@raw.localhost", "from where I said")
            await alice.nothing_more()

    run(main())
