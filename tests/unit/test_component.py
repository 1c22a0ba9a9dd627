"""External components (XEP-0114) on the memory transport: the handshake (s3), its failures, routing
both ways, the 'from' rule (s3), disco#items listing while connected, and the auth timeout."""

from __future__ import annotations

import hashlib

import pytest
from lxml import etree
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from xmppd.stream.component import ComponentFactory, connected_component, handshake_digest
from xmppd.testing import ExpectationError, MemoryServer, StreamRecorder
from xmppd.xml.stanza import error_condition
from xmppd.xml.writer import serialize

NS_ACCEPT = "jabber:component:accept"
NS_ITEMS = "http://jabber.org/protocol/disco#items"
NS_INFO = "http://jabber.org/protocol/disco#info"
SECRET = "s3cret"
HEADER = (
    "<?xml version='1.0'?><stream:stream xmlns='{ns}' xmlns:stream='http://etherx.jabber.org/streams'"
    " to='{to}'>"
)


class ComponentClient(StreamRecorder):
    """The component's side of a component stream, on a StringTransport."""

    def __init__(self, memory: MemoryServer) -> None:
        self.memory = memory
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 50000))
        self.stream = ComponentFactory(memory.server).buildProtocol(None)
        self.stream.makeConnection(self.transport)
        self.closed_by_server = False
        self._lost = False
        self._parser = self._recording_parser(NS_ACCEPT)

    def _ended(self) -> None:
        self.closed_by_server = True

    def pump(self) -> None:
        data = self.transport.value()
        self.transport.clear()
        if data:
            self._parser.feed(data)
        if self.transport.disconnecting and not self._lost:
            self._lost = True
            self.stream.connectionLost(None)

    def send(self, xml: str) -> None:
        self.stream.dataReceived(xml.encode())
        self.pump()

    def open(self, to: str = "gateway.localhost", ns: str = NS_ACCEPT) -> dict[str, str] | None:
        self.send(HEADER.format(ns=ns, to=to))
        return self.header

    def handshake(self, secret: str = SECRET) -> None:
        assert self.header is not None, "no stream header from the server"
        self.send(f"<handshake>{handshake_digest(self.header['id'], secret)}</handshake>")

    def next(self) -> etree._Element:
        self.pump()
        if not self.inbox:
            raise ExpectationError("nothing received")
        return self.inbox.pop(0)

    def expect_nothing(self) -> None:
        self.pump()
        assert not self.inbox, serialize(self.inbox[0])

    def disconnect(self) -> None:
        if not self._lost:
            self._lost = True
            self.stream.connectionLost(None)

    @property
    def connected(self) -> bool:
        return not self.transport.disconnecting


def assert_stream_error(component: ComponentClient, condition: str) -> None:
    component.pump()
    assert component.stream_errors == [condition], component.stream_errors
    assert component.closed_by_server
    assert not component.connected


@pytest.fixture
def server(make_xmpp):
    return make_xmpp(
        enabled=["disco"],
        config={
            "components": {
                "gateway.localhost": {"secret": SECRET},
                "other.localhost": {"secret": "other"},
                "gw.example.net": {"secret": "far"},
            }
        },
    )


@pytest.fixture
def connect(server):
    components: list[ComponentClient] = []

    def make() -> ComponentClient:
        component = ComponentClient(server)
        components.append(component)
        return component

    yield make
    for component in components:
        component.disconnect()


@pytest.fixture
def gateway(connect):
    """A component authenticated as gateway.localhost."""
    component = connect()
    component.open()
    component.handshake()
    assert component.next().tag == "handshake"
    return component


# -- handshake (XEP-0114 s3) -----------------------------------------------------------------------------


def test_digest_is_lowercase_hex_sha1_of_stream_id_and_secret():
    assert handshake_digest("3BF96D32", "secret") == hashlib.sha1(b"3BF96D32secret").hexdigest()


def test_server_answers_with_the_component_domain_a_stream_id_and_no_version(connect):
    component = connect()
    header = component.open()
    assert header["from"] == "gateway.localhost"
    assert len(header["id"]) >= 16
    assert "version" not in header
    component.expect_nothing()  # no <stream:features/> on a pre-1.0 stream


def test_each_stream_gets_its_own_id(connect):
    first, second = connect(), connect()
    assert first.open()["id"] != second.open()["id"]


def test_handshake_success_answers_an_empty_handshake_and_routes_the_domain(server, connect):
    component = connect()
    component.open()
    component.handshake()
    reply = component.next()
    assert reply.tag == "handshake" and not reply.text and len(reply) == 0
    assert connected_component(server.server, "gateway.localhost") is component.stream
    assert component.connected


def test_handshake_digest_in_upper_case_is_accepted(connect):
    component = connect()
    component.open()
    digest = handshake_digest(component.header["id"], SECRET).upper()
    component.send(f"<handshake>{digest}</handshake>")
    assert component.next().tag == "handshake"


def test_wrong_secret_is_not_authorized(server, connect):
    component = connect()
    component.open()
    component.handshake("wrong")
    assert_stream_error(component, "not-authorized")
    assert connected_component(server.server, "gateway.localhost") is None


def test_digest_for_another_stream_id_is_not_authorized(connect):
    component = connect()
    component.open()
    component.send(f"<handshake>{handshake_digest('some-other-id', SECRET)}</handshake>")
    assert_stream_error(component, "not-authorized")


def test_unknown_component_domain_is_host_unknown(connect):
    component = connect()
    header = component.open("stranger.localhost")
    assert header is not None  # s3: the header comes before the stream error
    assert_stream_error(component, "host-unknown")


def test_served_domain_is_not_a_component(connect):
    component = connect()
    component.open("localhost")
    assert_stream_error(component, "host-unknown")


def test_client_namespace_is_invalid_namespace(connect):
    component = connect()
    component.open(ns="jabber:client")
    assert_stream_error(component, "invalid-namespace")


def test_stanza_before_handshake_is_not_authorized(connect):
    component = connect()
    component.open()
    component.send("<message from='gateway.localhost' to='alice@localhost'><body>hi</body></message>")
    assert_stream_error(component, "not-authorized")


def test_second_connection_for_a_connected_component_is_refused_with_conflict(server, gateway, connect):
    intruder = connect()
    intruder.open()
    assert_stream_error(intruder, "conflict")
    assert connected_component(server.server, "gateway.localhost") is gateway.stream
    assert gateway.connected


def test_conflict_also_when_two_connections_race_through_the_header(server, connect):
    first, second = connect(), connect()
    first.open()
    second.open()
    first.handshake()
    assert first.next().tag == "handshake"
    second.handshake()
    assert_stream_error(second, "conflict")
    assert connected_component(server.server, "gateway.localhost") is first.stream


def test_component_may_reconnect_after_disconnecting(server, gateway, connect):
    gateway.disconnect()
    again = connect()
    again.open()
    again.handshake()
    assert again.next().tag == "handshake"
    assert connected_component(server.server, "gateway.localhost") is again.stream


def test_auth_timeout_closes_a_component_that_does_not_handshake(make_xmpp):
    memory = make_xmpp(
        enabled=[],
        config={"server": {"auth_timeout": 5}, "components": {"gateway.localhost": {"secret": SECRET}}},
    )
    component = ComponentClient(memory)
    component.open()
    memory.advance(4.9)
    assert component.connected
    memory.advance(0.1)
    assert_stream_error(component, "connection-timeout")


def test_auth_timeout_does_not_close_an_authenticated_component(make_xmpp):
    memory = make_xmpp(
        enabled=[],
        config={"server": {"auth_timeout": 5}, "components": {"gateway.localhost": {"secret": SECRET}}},
    )
    component = ComponentClient(memory)
    component.open()
    component.handshake()
    assert component.next().tag == "handshake"
    memory.advance(60)
    assert component.connected


def test_oversized_stanza_is_a_policy_violation(make_xmpp):
    memory = make_xmpp(
        enabled=[],
        config={
            "server": {"max_stanza_size": 10000},
            "components": {"gateway.localhost": {"secret": SECRET}},
        },
    )
    component = ComponentClient(memory)
    component.open()
    component.handshake()
    component.next()
    body = "x" * 20000
    component.send(f"<message from='gateway.localhost' to='a@localhost'><body>{body}</body></message>")
    assert_stream_error(component, "policy-violation")


def test_restricted_xml_is_refused(gateway):
    gateway.send("<!-- a comment -->")
    assert_stream_error(gateway, "restricted-xml")


# -- routing --------------------------------------------------------------------------------------------


def test_client_message_to_the_component_domain_reaches_the_component(server, gateway):
    alice = server.login("alice@localhost/phone")
    alice.send("<message to='x@gateway.localhost' id='m1' type='chat'><body>hello</body></message>")
    msg = gateway.next()
    assert msg.tag == "message"
    assert msg.get("from") == "alice@localhost/phone"
    assert msg.get("to") == "x@gateway.localhost"
    assert msg.findtext("body") == "hello"


def test_component_message_reaches_a_local_client(server, gateway):
    alice = server.login("alice@localhost/phone")
    gateway.send(
        "<message from='x@gateway.localhost/bot' to='alice@localhost/phone' type='chat'>"
        "<body>hi alice</body></message>"
    )
    alice.expect("<message from='x@gateway.localhost/bot' type='chat'><body>hi alice</body></message>")


def test_component_may_send_from_its_bare_domain(server, gateway):
    alice = server.login("alice@localhost/phone")
    gateway.send("<message from='gateway.localhost' to='alice@localhost/phone'><body>notice</body></message>")
    alice.expect("<message from='gateway.localhost'><body>notice</body></message>")


def test_iq_from_the_component_to_the_server_is_answered_on_the_component_stream(gateway):
    gateway.send(
        f"<iq type='get' id='i1' from='gateway.localhost' to='localhost'><query xmlns='{NS_INFO}'/></iq>"
    )
    reply = gateway.next()
    assert reply.get("type") == "result" and reply.get("id") == "i1"
    assert reply.get("to") == "gateway.localhost"
    assert reply.find(f"{{{NS_INFO}}}query") is not None


def test_components_reach_each_other(server, gateway, connect):
    other = connect()
    other.open("other.localhost")
    other.handshake("other")
    assert other.next().tag == "handshake"
    gateway.send("<message from='a@gateway.localhost' to='b@other.localhost'><body>x</body></message>")
    msg = other.next()
    assert msg.get("from") == "a@gateway.localhost" and msg.findtext("body") == "x"


def test_disco_info_to_the_component_domain_goes_to_the_component(server, gateway):
    alice = server.login("alice@localhost/phone")
    alice.send(f"<iq type='get' id='d1' to='gateway.localhost'><query xmlns='{NS_INFO}'/></iq>")
    iq = gateway.next()
    assert iq.get("id") == "d1" and iq.get("from") == "alice@localhost/phone"
    gateway.send(
        f"<iq type='result' id='d1' from='gateway.localhost' to='alice@localhost/phone'>"
        f"<query xmlns='{NS_INFO}'><identity category='gateway' type='irc'/></query></iq>"
    )
    alice.expect(
        f"<iq type='result' id='d1' from='gateway.localhost'><query xmlns='{NS_INFO}'>"
        "<identity category='gateway' type='irc'/></query></iq>"
    )


def test_stanzas_to_a_disconnected_component_bounce(server, gateway):
    gateway.disconnect()
    alice = server.login("alice@localhost/phone")
    alice.send("<message to='x@gateway.localhost' id='m2'><body>anyone?</body></message>")
    error = alice.next()
    assert error.get("type") == "error" and error.get("from") == "x@gateway.localhost"
    assert error_condition(error) == "service-unavailable"


def test_stanzas_to_a_never_connected_component_bounce(server):
    alice = server.login("alice@localhost/phone")
    alice.send(f"<iq type='get' id='q1' to='gateway.localhost'><query xmlns='{NS_INFO}'/></iq>")
    assert error_condition(alice.next()) == "service-unavailable"
    alice.send("<presence to='gateway.localhost' type='subscribe'/>")
    alice.expect_nothing()  # presence to an absent component is dropped, not bounced


# -- what a component may send (XEP-0114 s3) -------------------------------------------------------------


@pytest.mark.parametrize(
    "from_",
    ["other.localhost", "x@localhost", "x@gateway.localhost.evil", "localhost", "@@bad"],
)
def test_from_outside_the_component_domain_is_invalid_from(server, gateway, from_):
    server.login("x@localhost/r")
    gateway.send(f"<message from='{from_}' to='x@localhost/r'><body>spoof</body></message>")
    assert_stream_error(gateway, "invalid-from")


def test_missing_from_is_invalid_from(gateway):
    gateway.send("<message to='alice@localhost'><body>who?</body></message>")
    assert_stream_error(gateway, "invalid-from")


def test_missing_to_is_a_bad_request(gateway):
    gateway.send("<iq type='get' id='n1' from='gateway.localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    error = gateway.next()
    assert error.get("type") == "error" and error.get("id") == "n1"
    assert error.get("to") == "gateway.localhost"
    assert error_condition(error) == "bad-request"
    assert gateway.connected


def test_malformed_to_is_jid_malformed(gateway):
    gateway.send("<message from='x@gateway.localhost' to='a@b@c' id='j1'><body>x</body></message>")
    error = gateway.next()
    assert error.get("id") == "j1" and error.get("to") == "x@gateway.localhost"
    assert error_condition(error) == "jid-malformed"
    assert gateway.connected


def test_error_stanza_with_a_bad_to_is_not_answered(gateway):
    gateway.send("<message from='x@gateway.localhost' to='a@b@c' type='error'/>")
    gateway.expect_nothing()


def test_iq_without_an_id_is_a_bad_request(gateway):
    gateway.send("<iq type='get' from='gateway.localhost' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert error_condition(gateway.next()) == "bad-request"


def test_non_stanza_after_handshake_is_unsupported_stanza_type(gateway):
    gateway.send("<foo/>")
    assert_stream_error(gateway, "unsupported-stanza-type")


def test_second_handshake_is_unsupported_stanza_type(gateway):
    gateway.handshake()
    assert_stream_error(gateway, "unsupported-stanza-type")


# -- service discovery ----------------------------------------------------------------------------------


def disco_items(client) -> list[str]:
    reply = client.request(f"<iq type='get' id='items' to='localhost'><query xmlns='{NS_ITEMS}'/></iq>")
    assert reply.get("type") == "result", serialize(reply)
    return [item.get("jid") for item in reply.iter(f"{{{NS_ITEMS}}}item")]


def test_connected_subdomain_component_is_listed_in_disco_items(server, connect):
    alice = server.login("alice@localhost/phone")
    assert "gateway.localhost" not in disco_items(alice)
    gateway = connect()
    gateway.open()
    gateway.handshake()
    gateway.next()
    assert disco_items(alice) == ["gateway.localhost"]
    gateway.send("</stream:stream>")
    assert gateway.closed_by_server
    assert "gateway.localhost" not in disco_items(alice)


def test_disconnected_component_leaves_disco_items(server, gateway):
    gateway.disconnect()
    alice = server.login("alice@localhost/phone")
    assert disco_items(alice) == []


def test_component_outside_the_served_domains_is_not_listed(server, connect):
    far = connect()
    far.open("gw.example.net")
    far.handshake("far")
    assert far.next().tag == "handshake"
    alice = server.login("alice@localhost/phone")
    assert disco_items(alice) == []


# -- shutdown -------------------------------------------------------------------------------------------


def test_server_shutdown_closes_component_streams(server, gateway):
    server.server.stopService()
    assert_stream_error(gateway, "system-shutdown")
