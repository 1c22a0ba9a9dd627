"""Server-to-server streams (xmppd.stream.s2s) on memory transports: the dialback key of XEP-0185, the
stream header, what an incoming stream accepts before and after authentication (RFC 6120 s4.9.3, XEP-0220
s2.4), and outgoing links that cannot be set up (queue, bounce, timeout)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lxml import etree
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from xmppd.stream.s2s import (
    NS_DIALBACK,
    NS_DIALBACK_FEATURE,
    NS_SASL,
    NS_SERVER,
    NS_TLS,
    IncomingS2SFactory,
    dialback_key,
    s2s_header,
)
from xmppd.testing import MemoryServer, StreamRecorder
from xmppd.tls import context_factory, ensure_self_signed
from xmppd.xml.parser import NS_STREAMS, StreamParser
from xmppd.xml.stanza import error_condition

REMOTE = "remote.test"
REMOTE_ROUTE = "tcp:host=127.0.0.1:port=5999"


# -- dialback keys and headers -----------------------------------------------------------------------------


def test_dialback_key_matches_the_xep_0185_example() -> None:
    # XEP-0185 s4: secret s3cr3tf0rd14lb4ck, receiving xmpp.example.com, originating example.org
    key = dialback_key("s3cr3tf0rd14lb4ck", "xmpp.example.com", "example.org", "D60000229F")
    assert key == "37c69b1cf07a3f67c04a5ef5902fa5114f2c76fe4a2686482ba5b89323075643"


def test_dialback_key_depends_on_every_input() -> None:
    base = ("secret", "receiving.test", "originating.test", "stream-id")
    key = dialback_key(*base)
    assert key == dialback_key(*base)
    for i in range(4):
        changed = list(base)
        changed[i] += "x"
        assert dialback_key(*changed) != key, f"input {i} ignored"
    # the space delimiter keeps the domains apart (XEP-0185 s2, note 5)
    assert dialback_key("s", "example.in", "form.example.org", "1") != dialback_key(
        "s", "example.info", "rm.example.org", "1"
    )


def parse_header(header: bytes) -> dict[str, str]:
    attrs: list[dict[str, str]] = []
    parser = StreamParser(attrs.append, lambda el: None, lambda: None, content_ns=NS_SERVER)
    parser.feed(header)
    return attrs[0]


def test_s2s_header_declares_the_server_and_dialback_namespaces() -> None:
    header = s2s_header(from_="a.test", to="b.test", id_="abc")
    assert header.startswith(b"<?xml version='1.0'?><stream:stream ")
    assert f"xmlns='{NS_SERVER}'".encode() in header
    assert f"xmlns:db='{NS_DIALBACK}'".encode() in header
    assert parse_header(header) == {"from": "a.test", "to": "b.test", "id": "abc", "version": "1.0"}


def test_s2s_header_leaves_out_missing_attributes() -> None:
    header = s2s_header(from_="a.test", to=None, id_=None)
    assert b" to=" not in header and b" id=" not in header
    assert parse_header(header) == {"from": "a.test", "version": "1.0"}


def test_s2s_header_escapes_attribute_values() -> None:
    nasty = "a'b<c&d\"e>"
    header = s2s_header(from_=nasty, to="b.test", id_="x' evil='1")
    attrs = parse_header(header)
    assert attrs["from"] == nasty
    assert attrs["id"] == "x' evil='1"
    assert "evil" not in attrs


# -- incoming streams --------------------------------------------------------------------------------------


def s2s_server(*, tls_dir: Path | None = None, **s2s: Any) -> MemoryServer:
    """A MemoryServer for 'localhost' with federation on (a route to remote.test on the memory reactor);
    with ``tls_dir``, a self-signed certificate so that STARTTLS is offered."""
    memory = MemoryServer(config={"s2s": {"enabled": True, "routes": {REMOTE: REMOTE_ROUTE}, **s2s}})
    if tls_dir is not None:
        cert, key = ensure_self_signed(tls_dir, ["localhost"])
        memory.server.tls_context = context_factory(cert, key)
        manager = memory.server.s2s
        manager.server_tls, manager._client_context = manager._tls_contexts()
    return memory


@pytest.fixture
def server() -> Any:
    memory = s2s_server()
    yield memory
    memory.stop()


class Peer(StreamRecorder):
    """The other server's side of an incoming server stream, on a StringTransport."""

    def __init__(self, memory: MemoryServer) -> None:
        self.memory = memory
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 50000))
        self.stream = IncomingS2SFactory(memory.server.s2s).buildProtocol(None)
        self.stream.makeConnection(self.transport)
        self.header: dict[str, str] | None = None
        self.ended = False
        self._parser = self._recording_parser(NS_SERVER)

    def _ended(self) -> None:
        self.ended = True

    def send(self, data: str) -> None:
        self.stream.dataReceived(data.encode())
        self.pump()

    def pump(self) -> None:
        data = self.transport.value()
        self.transport.clear()
        if data:
            self._parser.feed(data)

    def open(
        self, to: str | None = "localhost", from_: str | None = REMOTE, version: str | None = "1.0"
    ) -> None:
        self._parser = self._recording_parser(NS_SERVER)
        self.header = None
        attrs = "".join(
            f" {name}='{value}'"
            for name, value in (("to", to), ("from", from_), ("version", version))
            if value
        )
        self.send(
            f"<?xml version='1.0'?><stream:stream xmlns='{NS_SERVER}' xmlns:stream='{NS_STREAMS}'"
            f" xmlns:db='{NS_DIALBACK}'{attrs}>"
        )

    def next(self) -> etree._Element:
        self.pump()
        assert self.inbox, "nothing received"
        return self.inbox.pop(0)

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)


def test_stream_to_a_domain_not_served_here(server: MemoryServer) -> None:
    peer = Peer(server)
    peer.open(to="elsewhere.test")
    assert peer.header is not None and peer.header["from"] == "localhost"  # a header before the error
    assert peer.stream_errors == ["host-unknown"]
    assert peer.ended and peer.closed


def test_stream_without_to(server: MemoryServer) -> None:
    peer = Peer(server)
    peer.open(to=None)
    assert peer.stream_errors == ["host-unknown"]
    assert peer.closed


def test_stream_with_an_invalid_from(server: MemoryServer) -> None:
    peer = Peer(server)
    peer.open(from_="not a domain@@")
    assert peer.stream_errors == ["invalid-from"]
    assert peer.closed


def test_features_require_starttls_first(tmp_path: Path) -> None:
    memory = s2s_server(tls_dir=tmp_path)
    try:
        peer = Peer(memory)
        peer.open()
        assert peer.header is not None and peer.header["from"] == "localhost" and peer.header["id"]
        assert peer.header["to"] == REMOTE
        features = peer.next()
        assert features.tag == f"{{{NS_STREAMS}}}features"
        assert [child.tag for child in features] == [f"{{{NS_TLS}}}starttls"]
        assert features.find(f"{{{NS_TLS}}}starttls/{{{NS_TLS}}}required") is not None
        # RFC 6120 s5.3.1: with TLS required, nothing but STARTTLS before it
        peer.send(f"<db:result from='{REMOTE}' to='localhost'>key</db:result>")
        assert peer.stream_errors == ["policy-violation"]
        assert peer.closed
    finally:
        memory.stop()


def test_features_without_tls_offer_dialback_only(server: MemoryServer) -> None:
    peer = Peer(server)  # no certificate configured: no STARTTLS, no SASL EXTERNAL
    peer.open()
    features = peer.next()
    assert features.find(f"{{{NS_TLS}}}starttls") is None
    assert features.find(f"{{{NS_SASL}}}mechanisms") is None
    assert features.find(f"{{{NS_DIALBACK_FEATURE}}}dialback/{{{NS_DIALBACK_FEATURE}}}errors") is not None


def test_pre_xmpp_1_peer_gets_no_features(server: MemoryServer) -> None:
    peer = Peer(server)
    peer.open(version=None)
    assert peer.header is not None
    peer.pump()
    assert peer.inbox == []


def test_stanza_before_authentication_is_not_authorized(server: MemoryServer) -> None:
    alice = server.login("alice@localhost/phone", available=True)
    peer = Peer(server)
    peer.open()
    peer.next()  # features
    peer.send(f"<message from='bob@{REMOTE}' to='alice@localhost' type='chat'><body>hi</body></message>")
    assert peer.stream_errors == ["not-authorized"]
    assert peer.closed
    alice.expect_nothing()


def test_db_verify_for_a_key_we_issued(server: MemoryServer) -> None:
    """XEP-0220 s2.4: we are the authoritative server for localhost; remote.test asks about a key."""
    secret = server.server.s2s.secret
    key = dialback_key(secret, REMOTE, "localhost", "stream-1")
    peer = Peer(server)
    peer.open()
    peer.next()
    peer.send(f"<db:verify from='{REMOTE}' to='localhost' id='stream-1'>{key}</db:verify>")
    answer = peer.next()
    assert answer.tag == f"{{{NS_DIALBACK}}}verify"
    assert dict(answer.attrib) == {"from": "localhost", "to": REMOTE, "id": "stream-1", "type": "valid"}

    for wrong in (
        f"<db:verify from='{REMOTE}' to='localhost' id='stream-2'>{key}</db:verify>",  # another stream
        f"<db:verify from='other.test' to='localhost' id='stream-1'>{key}</db:verify>",  # another receiver
        f"<db:verify from='{REMOTE}' to='localhost' id='stream-1'>{'0' * 64}</db:verify>",
    ):
        peer.send(wrong)
        assert peer.next().get("type") == "invalid", wrong
    assert not peer.closed  # verify requests need no authentication


def test_db_verify_for_a_domain_not_served_here(server: MemoryServer) -> None:
    peer = Peer(server)
    peer.open()
    peer.next()
    peer.send(f"<db:verify from='{REMOTE}' to='elsewhere.test' id='s'>abc</db:verify>")
    assert peer.stream_errors == ["host-unknown"]


def dialback_in(server: MemoryServer, peer: Peer, valid: bool) -> etree._Element:
    """remote.test asks to be accepted with a key; our check with its authoritative server (over our own
    outgoing stream, not set up on the memory reactor) is answered ``valid``; returns our db:result."""
    peer.open()
    peer.next()
    peer.send(f"<db:result from='{REMOTE}' to='localhost'>some-key</db:result>")
    peer.pump()
    assert peer.inbox == [], "no answer before the authoritative server's"
    stream_id = peer.header["id"]
    answer = etree.Element(f"{{{NS_DIALBACK}}}verify", nsmap={"db": NS_DIALBACK})
    for name, value in (("from", REMOTE), ("to", "localhost"), ("id", stream_id)):
        answer.set(name, value)
    answer.set("type", "valid" if valid else "invalid")
    server.server.s2s.verify_answered(answer)
    return peer.next()


def test_dialback_accepted_then_stanzas_flow(server: MemoryServer) -> None:
    alice = server.login("alice@localhost/phone", available=True)
    peer = Peer(server)
    result = dialback_in(server, peer, valid=True)
    assert dict(result.attrib) == {"from": "localhost", "to": REMOTE, "type": "valid"}
    peer.send(f"<message from='bob@{REMOTE}/pc' to='alice@localhost' type='chat'><body>hi</body></message>")
    alice.expect(f"<message from='bob@{REMOTE}/pc' type='chat'><body>hi</body></message>")
    assert not peer.closed


def test_dialback_rejected_closes_the_stream(server: MemoryServer) -> None:
    peer = Peer(server)
    result = dialback_in(server, peer, valid=False)
    assert result.get("type") == "invalid"
    assert peer.stream_errors == ["not-authorized"]
    assert peer.closed


def test_stanza_from_a_domain_the_stream_did_not_authenticate(server: MemoryServer) -> None:
    alice = server.login("alice@localhost/phone", available=True)
    peer = Peer(server)
    dialback_in(server, peer, valid=True)
    peer.send("<message from='mallory@evil.test' to='alice@localhost' type='chat'><body>hi</body></message>")
    assert peer.stream_errors == ["invalid-from"]
    assert peer.closed
    alice.expect_nothing()


def test_stanza_for_a_domain_not_served_here(server: MemoryServer) -> None:
    peer = Peer(server)
    dialback_in(server, peer, valid=True)
    peer.send(f"<message from='bob@{REMOTE}' to='carol@third.test'><body>relay?</body></message>")
    assert peer.stream_errors == ["host-unknown"]


def test_dialback_refused_when_disabled() -> None:
    memory = s2s_server(dialback=False)
    try:
        peer = Peer(memory)
        peer.open()
        features = peer.next()
        assert features.find(f"{{{NS_DIALBACK_FEATURE}}}dialback") is None
        peer.send(f"<db:result from='{REMOTE}' to='localhost'>some-key</db:result>")
        result = peer.next()
        assert result.get("type") == "error"
        assert result.find("error/{urn:ietf:params:xml:ns:xmpp-stanzas}not-acceptable") is not None
    finally:
        memory.stop()


def test_sasl_external_without_a_verified_certificate_fails(server: MemoryServer) -> None:
    peer = Peer(server)
    peer.open()
    peer.next()
    peer.send(f"<auth xmlns='{NS_SASL}' mechanism='EXTERNAL'>=</auth>")
    failure = peer.next()
    assert failure.tag == f"{{{NS_SASL}}}failure"
    assert failure.find(f"{{{NS_SASL}}}invalid-mechanism") is not None
    assert peer.closed


def test_unauthenticated_stream_times_out(server: MemoryServer) -> None:
    peer = Peer(server)
    peer.open()
    peer.next()
    server.advance(server.server.config.get("s2s", "connect_timeout") + 0.1)
    peer.pump()
    assert peer.stream_errors == ["connection-timeout"]
    assert peer.closed


def test_idle_incoming_stream_is_closed() -> None:
    memory = s2s_server(idle_timeout=5, connect_timeout=30)
    try:
        peer = Peer(memory)
        dialback_in(memory, peer, valid=True)
        memory.advance(4)
        peer.send("<presence from='bob@remote.test/pc' to='alice@localhost' type='unavailable'/>")
        memory.advance(4)  # 4 s since the last traffic: still open
        assert not peer.closed
        memory.advance(1.5)
        peer.pump()
        assert peer.ended and peer.closed
        assert peer.stream_errors == []  # a plain close, no error
    finally:
        memory.stop()


# -- outgoing links that cannot be set up ------------------------------------------------------------------


def connection_attempts(memory: MemoryServer) -> list[tuple]:
    return [c for c in memory.clock.tcpClients if (c[0], c[1]) == ("127.0.0.1", 5999)]


def errors_received(client: Any) -> list[tuple[str | None, str | None]]:
    return [(el.get("id"), error_condition(el)) for el in client.drain() if el.get("type") == "error"]


def test_stanzas_wait_for_the_stream_and_bounce_on_timeout(server: MemoryServer) -> None:
    alice = server.login("alice@localhost/phone")
    for i in (1, 2):
        alice.send(f"<message to='bob@{REMOTE}' id='m{i}' type='chat'><body>hi</body></message>")
    assert len(connection_attempts(server)) == 1, "one connection for both stanzas"
    alice.expect_nothing()
    server.advance(server.server.config.get("s2s", "connect_timeout") - 0.5)
    alice.expect_nothing()
    server.advance(1)
    assert errors_received(alice) == [("m1", "remote-server-timeout"), ("m2", "remote-server-timeout")]
    server.advance(60)
    alice.expect_nothing()  # bounced once


def test_queue_limit_bounces_with_resource_constraint() -> None:
    memory = s2s_server(queue_size=2)
    try:
        alice = memory.login("alice@localhost/phone")
        for i in (1, 2, 3):
            alice.send(f"<message to='bob@{REMOTE}' id='m{i}' type='chat'><body>hi</body></message>")
        assert errors_received(alice) == [("m3", "resource-constraint")]
    finally:
        memory.stop()


def test_refused_connection_bounces_with_remote_server_not_found(server: MemoryServer) -> None:
    alice = server.login("alice@localhost/phone")
    alice.send(f"<message to='bob@{REMOTE}' id='m1' type='chat'><body>hi</body></message>")
    _, _, factory, _, _ = connection_attempts(server)[0]
    factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
    assert errors_received(alice) == [("m1", "remote-server-not-found")]
    server.advance(60)
    alice.expect_nothing()


def test_a_late_failure_of_a_timed_out_attempt_leaves_the_next_link_alone(server: MemoryServer) -> None:
    """A connection attempt that outlives connect_timeout (a peer that never answers the SYN) and fails
    afterwards must not disturb the link made for later stanzas."""
    alice = server.login("alice@localhost/phone")
    alice.send(f"<message to='bob@{REMOTE}' id='m1' type='chat'><body>hi</body></message>")
    server.advance(server.server.config.get("s2s", "connect_timeout") + 0.1)
    assert errors_received(alice) == [("m1", "remote-server-timeout")]
    alice.send(f"<message to='bob@{REMOTE}' id='m2' type='chat'><body>hi</body></message>")
    assert server.clock.connectors[0].stoppedConnecting, "the timed-out attempt was not cancelled"
    first, second = connection_attempts(server)[:2]
    link = server.server.s2s.links[("localhost", REMOTE)]
    first[2].clientConnectionFailed(None, Failure(ConnectionRefusedError()))  # the old attempt ends
    assert server.server.s2s.links.get(("localhost", REMOTE)) is link, "the new link was dropped"
    alice.send(f"<message to='bob@{REMOTE}' id='m3' type='chat'><body>hi</body></message>")
    assert len(connection_attempts(server)) == 2, "no third connection"
    alice.expect_nothing()


# -- an outgoing stream authenticated with dialback --------------------------------------------------------


class RemoteEnd(StreamRecorder):
    """The remote server's end of our outgoing connection attempt, on a StringTransport."""

    def __init__(self, memory: MemoryServer, attempt: tuple) -> None:
        _, _, factory, _, _ = attempt
        self.protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5999))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5999))
        self.protocol.makeConnection(self.transport)
        self._lost = False
        self._parser = self._recording_parser(NS_SERVER)

    def send(self, data: str) -> None:
        self.protocol.dataReceived(data.encode())
        self.settle()

    def settle(self) -> None:
        """If our side closed the connection, deliver connectionLost as the reactor would."""
        if self.transport.disconnecting and not self._lost:
            self._lost = True
            self.protocol.connectionLost(Failure(ConnectionDone()))

    def received(self) -> list[etree._Element]:
        data = self.transport.value()
        self.transport.clear()
        if data:
            self._parser.feed(data)
        received, self.inbox = self.inbox, []
        return received


def test_queued_stanzas_go_out_in_order_after_dialback() -> None:
    memory = s2s_server(tls_required=False)  # no certificate here: dialback over a plain stream
    try:
        alice = memory.login("alice@localhost/phone")
        for i in (1, 2):
            alice.send(f"<message to='bob@{REMOTE}' id='m{i}' type='chat'><body>{i}</body></message>")
        remote = RemoteEnd(memory, connection_attempts(memory)[0])
        remote.received()
        assert remote.header == {"from": "localhost", "to": REMOTE, "version": "1.0"}
        remote.send(
            f"<?xml version='1.0'?><stream:stream xmlns='{NS_SERVER}' xmlns:stream='{NS_STREAMS}'"
            f" xmlns:db='{NS_DIALBACK}' from='{REMOTE}' to='localhost' id='D60000229F' version='1.0'>"
            f"<stream:features><dialback xmlns='{NS_DIALBACK_FEATURE}'><errors/></dialback></stream:features>"
        )
        (result,) = remote.received()
        assert result.tag == f"{{{NS_DIALBACK}}}result"
        assert (result.get("from"), result.get("to")) == ("localhost", REMOTE)
        secret = memory.server.s2s.secret  # the key of XEP-0185: receiving, originating, stream id
        assert result.text == dialback_key(secret, REMOTE, "localhost", "D60000229F")
        remote.send(f"<db:result from='{REMOTE}' to='localhost' type='valid'/>")
        sent = remote.received()
        assert [(el.tag, el.get("id"), el.get("from")) for el in sent] == [
            ("message", "m1", "alice@localhost/phone"),
            ("message", "m2", "alice@localhost/phone"),
        ]
        alice.send(f"<message to='bob@{REMOTE}' id='m3' type='chat'><body>3</body></message>")
        assert [el.get("id") for el in remote.received()] == ["m3"]  # straight onto the stream
        memory.advance(60)
        alice.expect_nothing()  # no bounce: the timeout was cancelled
        assert len(connection_attempts(memory)) == 1
    finally:
        memory.stop()


def test_rejected_dialback_bounces_the_queue() -> None:
    memory = s2s_server(tls_required=False)
    try:
        alice = memory.login("alice@localhost/phone")
        alice.send(f"<message to='bob@{REMOTE}' id='m1' type='chat'><body>1</body></message>")
        remote = RemoteEnd(memory, connection_attempts(memory)[0])
        remote.send(
            f"<?xml version='1.0'?><stream:stream xmlns='{NS_SERVER}' xmlns:stream='{NS_STREAMS}'"
            f" xmlns:db='{NS_DIALBACK}' from='{REMOTE}' to='localhost' id='s1' version='1.0'>"
            f"<stream:features><dialback xmlns='{NS_DIALBACK_FEATURE}'/></stream:features>"
        )
        remote.send(f"<db:result from='{REMOTE}' to='localhost' type='invalid'/>")
        assert errors_received(alice) == [("m1", "remote-server-not-found")]
        assert remote.transport.disconnecting
        memory.advance(60)
        alice.expect_nothing()
    finally:
        memory.stop()


def remote_header(id_: str = "s1", version: str | None = "1.0") -> str:
    return (
        f"<?xml version='1.0'?><stream:stream xmlns='{NS_SERVER}' xmlns:stream='{NS_STREAMS}'"
        f" xmlns:db='{NS_DIALBACK}' from='{REMOTE}' to='localhost' id='{id_}'"
        + (f" version='{version}'>" if version else ">")
    )


def test_peer_without_tls_when_tls_is_required(server: MemoryServer) -> None:
    alice = server.login("alice@localhost/phone")
    alice.send(f"<message to='bob@{REMOTE}' id='m1' type='chat'><body>1</body></message>")
    remote = RemoteEnd(server, connection_attempts(server)[0])
    remote.send(
        remote_header() + f"<stream:features><dialback xmlns='{NS_DIALBACK_FEATURE}'/></stream:features>"
    )
    remote.received()
    assert errors_received(alice) == [("m1", "remote-server-not-found")]
    assert remote.transport.disconnecting
    assert not [el for el in remote.received() if el.tag == f"{{{NS_DIALBACK}}}result"], "no key on plain TCP"


def test_pre_xmpp_1_peer_gets_dialback_at_once() -> None:
    memory = s2s_server(tls_required=False)
    try:
        alice = memory.login("alice@localhost/phone")
        alice.send(f"<message to='bob@{REMOTE}' id='m1' type='chat'><body>1</body></message>")
        remote = RemoteEnd(memory, connection_attempts(memory)[0])
        remote.send(remote_header("old-1", version=None))  # no features will come (XEP-0220 s2.1)
        (result,) = remote.received()
        assert result.text == dialback_key(memory.server.s2s.secret, REMOTE, "localhost", "old-1")
        remote.send(f"<db:result from='{REMOTE}' to='localhost' type='valid'/>")
        assert [el.get("id") for el in remote.received()] == ["m1"]
    finally:
        memory.stop()


def test_stream_error_from_the_peer_during_setup_bounces_once() -> None:
    memory = s2s_server(tls_required=False)
    try:
        alice = memory.login("alice@localhost/phone")
        for i in (1, 2):
            alice.send(f"<message to='bob@{REMOTE}' id='m{i}' type='chat'><body>{i}</body></message>")
        remote = RemoteEnd(memory, connection_attempts(memory)[0])
        remote.send(
            remote_header()
            + "<stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"
            + "</stream:stream>"
        )
        assert errors_received(alice) == [
            ("m1", "remote-server-not-found"),
            ("m2", "remote-server-not-found"),
        ]
        memory.advance(60)
        alice.expect_nothing()
    finally:
        memory.stop()


def test_idle_timeout_does_not_cut_short_the_setup() -> None:
    memory = s2s_server(tls_required=False, idle_timeout=1, connect_timeout=5)
    try:
        alice = memory.login("alice@localhost/phone")
        alice.send(f"<message to='bob@{REMOTE}' id='m1' type='chat'><body>1</body></message>")
        remote = RemoteEnd(memory, connection_attempts(memory)[0])  # connected; the peer says nothing
        memory.advance(1.5)
        remote.settle()
        assert errors_received(alice) == [], "bounced before connect_timeout"
        memory.advance(4)
        assert errors_received(alice) == [("m1", "remote-server-timeout")]
    finally:
        memory.stop()


def test_a_message_right_after_an_idle_close_is_not_lost() -> None:
    """The idle stream is closed by us, but its connectionLost comes later; a message sent in between
    starts a new stream and must not be bounced when the old one's loss arrives."""
    memory = s2s_server(tls_required=False, idle_timeout=1)
    try:
        alice = memory.login("alice@localhost/phone")
        alice.send(f"<message to='bob@{REMOTE}' id='m1' type='chat'><body>1</body></message>")
        first = RemoteEnd(memory, connection_attempts(memory)[0])
        first.send(
            remote_header("s1")
            + f"<stream:features><dialback xmlns='{NS_DIALBACK_FEATURE}'/></stream:features>"
        )
        first.received()
        first.send(f"<db:result from='{REMOTE}' to='localhost' type='valid'/>")
        assert [el.get("id") for el in first.received()] == ["m1"]
        memory.advance(1.5)  # idle: we close the stream, connectionLost not delivered yet
        assert first.transport.disconnecting
        alice.send(f"<message to='bob@{REMOTE}' id='m2' type='chat'><body>2</body></message>")
        first.settle()  # now the old stream's connectionLost arrives
        assert errors_received(alice) == [], "m2 must wait for the new stream, not bounce"
        second = RemoteEnd(memory, connection_attempts(memory)[1])
        second.send(
            remote_header("s2")
            + f"<stream:features><dialback xmlns='{NS_DIALBACK_FEATURE}'/></stream:features>"
        )
        second.received()
        second.send(f"<db:result from='{REMOTE}' to='localhost' type='valid'/>")
        assert [el.get("id") for el in second.received()] == ["m2"]
    finally:
        memory.stop()


def test_a_plugin_service_domain_is_served_over_s2s(server: MemoryServer) -> None:
    """Streams and dialback to a domain a plugin serves (``ctx.add_route``: the MUC service) are accepted,
    and stanzas from the remote server reach the service: a remote user enters a local room."""
    alice = server.login("alice@localhost/phone", available=True)
    alice.send("<presence to='room@conference.localhost/Alice'/>")  # groupchat 1.0: an instant room
    alice.drain()
    peer = Peer(server)
    peer.open(to="conference.localhost")
    assert peer.header is not None and peer.header["from"] == "conference.localhost"
    peer.next()  # features
    peer.send(f"<db:result from='{REMOTE}' to='conference.localhost'>some-key</db:result>")
    answer = etree.Element(f"{{{NS_DIALBACK}}}verify", nsmap={"db": NS_DIALBACK})
    for name, value in (("from", REMOTE), ("to", "conference.localhost"), ("id", peer.header["id"])):
        answer.set(name, value)
    answer.set("type", "valid")
    server.server.s2s.verify_answered(answer)
    assert dict(peer.next().attrib) == {"from": "conference.localhost", "to": REMOTE, "type": "valid"}
    peer.send(f"<presence from='bob@{REMOTE}/pc' to='room@conference.localhost/Bob'/>")
    alice.expect(
        "<presence from='room@conference.localhost/Bob'><x xmlns='http://jabber.org/protocol/muc#user'>"
        "<item affiliation='none' role='participant'/></x></presence>"
    )
    assert peer.stream_errors == [] and not peer.closed
