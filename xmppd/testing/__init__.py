"""Test helpers for xmppd and for plugin authors.

Two kinds of server:

* ``MemoryServer``: the whole server in the test process on a ``MemoryReactorClock`` and memory storage,
  with clients on in-memory transports. Clients negotiate for real (stream header, SCRAM-SHA-256, resource
  binding); only TLS is left out. Fast and deterministic: time moves with ``advance()``.
* ``ServerProcess`` (xmppd.testing.process): ``twistd xmppd`` in a subprocess on loopback ports, for real
  clients such as slixmpp.

The pytest plugin (xmppd.testing.pytest_plugin, registered on install) provides the fixtures ``xmpp``
(a MemoryServer) and ``xmpp_process`` (a ServerProcess factory).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

from lxml import etree
from twisted.internet.address import IPv4Address
from twisted.internet.defer import maybeDeferred
from twisted.internet.testing import MemoryReactorClock, StringTransport

from xmppd import config as config_module
from xmppd.accounts import Accounts
from xmppd.jid import parse_jid
from xmppd.plugin import Plugin
from xmppd.sasl.scram import derive_credentials
from xmppd.server import XMPPServer
from xmppd.storage.memory import MemoryStorage
from xmppd.stream.c2s import C2SFactory
from xmppd.testing.scram import ScramClient
from xmppd.xml.parser import StreamParser
from xmppd.xml.writer import serialize

NS_CLIENT = "jabber:client"
HEADER = (
    "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
    " to='{domain}' version='1.0'>"
)
ANY = "{any}"


class ExpectationError(AssertionError):
    """A client did not receive what the test expected."""


class MemoryServer:
    """A server on a memory reactor. ``plugins`` are Plugin classes made available besides the installed
    ones (tests define plugins inline this way); ``enabled`` is the [plugins] enabled list. ``storage``
    holds what an earlier server (or an older version) stored, seen by plugins when they load."""

    def __init__(
        self,
        *,
        domains: Iterable[str] = ("localhost",),
        enabled: Iterable[str] | None = None,
        plugins: Iterable[type[Plugin]] = (),
        options: dict[str, dict[str, Any]] | None = None,
        config: dict[str, Any] | None = None,
        storage: MemoryStorage | None = None,
    ) -> None:
        data: dict[str, Any] = {
            "server": {"domains": list(domains)},
            "tls": {"required": False},
            "storage": {"backend": "memory"},
            "s2s": {"enabled": False},  # no federation on a memory reactor,
        }
        plugins_table: dict[str, Any] = {}
        if enabled is not None:
            plugins_table["enabled"] = list(enabled)
        plugins_table.update(options or {})
        if plugins_table:
            data["plugins"] = plugins_table
        for section, values in (config or {}).items():
            data.setdefault(section, {}).update(values)
        self.clock = MemoryReactorClock()
        self.config = config_module.parse(data, "(test)")
        self.server = XMPPServer(
            self.config, reactor=self.clock, storage=storage or MemoryStorage(), plugin_classes=tuple(plugins)
        )
        # A memory reactor runs no thread pool: derive credentials inline (and cheaply, as adduser does)
        # so accounts created through the server (in-band registration, password changes) work here.
        self.server.accounts = Accounts(self.server.storage, iterations=16, defer_to_thread=maybeDeferred)
        self.server.startService()
        self.clients: list[TestClient] = []

    def adduser(self, jid: str, password: str = "password") -> None:
        """Create an account at once (credentials derived here, synchronously, with few iterations)."""
        account = parse_jid(jid)
        creds = {
            name: derive_credentials(password, name, iterations=16).to_dict() for name in ("SHA-1", "SHA-256")
        }
        self.server.storage.set(account.domain, "accounts", account.local, {"scram": creds})

    def connect(self) -> TestClient:
        """A client connection that has not negotiated anything yet."""
        client = TestClient(self)
        self.clients.append(client)
        return client

    def login(
        self, jid: str, password: str = "password", *, create: bool = True, available: bool = False
    ) -> TestClient:
        """A client logged in as ``jid`` (user@domain/resource; the account is created unless
        ``create=False``). With ``available=True`` it sends initial presence and reads its echo."""
        full = parse_jid(jid)
        if create:
            self.adduser(str(full.bare), password)
        client = self.connect()
        client.authenticate(full.local, full.domain, password, full.resource)
        if available:
            client.send("<presence/>")
            client.expect("<presence/>")
        return client

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def stop(self) -> None:
        for client in self.clients:
            client.disconnect()
        self.server.stopService()


class StreamRecorder:
    """The peer's side of a stream in tests: the stream header it got (``header``), the elements in order
    (``inbox``), the stream error conditions (``stream_errors``), and ``_ended()`` at the stream's end."""

    header: dict[str, str] | None = None

    def _recording_parser(self, content_ns: str) -> StreamParser:
        if not hasattr(self, "inbox"):
            self.inbox: list[etree._Element] = []
            self.stream_errors: list[str] = []
        return StreamParser(
            self._started,
            self._received,
            self._ended,
            content_ns=content_ns,
            max_stanza_size=10 * 1024 * 1024,
        )

    def _started(self, attrs: dict[str, str]) -> None:
        self.header = attrs

    def _received(self, el: etree._Element) -> None:
        if el.tag == "{http://etherx.jabber.org/streams}error":
            self.stream_errors.extend(
                etree.QName(c).localname for c in el if etree.QName(c).localname != "text"
            )
        self.inbox.append(el)

    def _ended(self) -> None:
        """The peer saw the end of the stream."""


class TestClient(StreamRecorder):
    """A client on an in-memory transport: ``send`` XML, ``expect`` what comes back."""

    __test__ = False  # not a pytest test class

    def __init__(self, server: MemoryServer) -> None:
        self.memory = server
        self.transport = StringTransport(
            peerAddress=IPv4Address("TCP", "127.0.0.1", 40000 + len(server.clients))
        )
        self.stream = C2SFactory(server.server).buildProtocol(None)
        self.stream.makeConnection(self.transport)
        self.jid: str | None = None
        self.closed_by_server = False
        self._lost = False
        self._parser = self._recording_parser(NS_CLIENT)

    def _ended(self) -> None:
        self.closed_by_server = True

    # -- raw I/O -----------------------------------------------------------------------------------------

    def send_raw(self, data: bytes | str) -> None:
        self.stream.dataReceived(data.encode() if isinstance(data, str) else data)
        self._pump()

    def send(self, stanza: str | etree._Element) -> None:
        """Send a stanza (XML text in the jabber:client namespace, or an element)."""
        self.send_raw(stanza if isinstance(stanza, str) else serialize(stanza))

    def _pump(self) -> None:
        data = self.transport.value()
        self.transport.clear()
        if data:
            self._parser.feed(data)
        if self.transport.disconnecting and not self._lost:
            self._lost = True  # the server closed the connection: deliver connectionLost as a reactor would
            self.stream.connectionLost(None)

    @property
    def connected(self) -> bool:
        return not self.transport.disconnecting

    def disconnect(self) -> None:
        """Drop the connection without closing the stream (like a lost TCP connection)."""
        if not self._lost:
            self._lost = True
            self.stream.connectionLost(None)

    # -- negotiation -------------------------------------------------------------------------------------

    def open_stream(self, domain: str) -> etree._Element:
        """Send a stream header; returns the <stream:features/>."""
        self._parser = self._recording_parser(NS_CLIENT)
        self.send_raw(HEADER.format(domain=domain))
        return self.next()

    def sasl_login(self, user: str, domain: str, password: str) -> etree._Element:
        """Open a stream, authenticate with SCRAM-SHA-256 (RFC 7677) and restart the stream (RFC 6120
        s6.4.6); returns the stream features offered after authentication."""
        self.open_stream(domain)
        scram = ScramClient(user, password, "SHA-256")
        self.send(_sasl("auth", scram.first(), mechanism="SCRAM-SHA-256"))
        challenge = self.next()
        if etree.QName(challenge).localname != "challenge":
            raise ExpectationError(f"authentication failed: {serialize(challenge).decode()}")
        self.send(_sasl("response", scram.final(base64.b64decode(challenge.text))))
        outcome = self.next()
        if etree.QName(outcome).localname != "success":
            raise ExpectationError(f"authentication failed: {serialize(outcome).decode()}")
        return self.open_stream(domain)

    def authenticate(self, user: str, domain: str, password: str, resource: str | None) -> None:
        """SCRAM-SHA-256 and resource binding (RFC 6120 s7), as a real client does."""
        self.sasl_login(user, domain, password)
        resource_xml = f"<resource>{resource}</resource>" if resource else ""
        self.send(
            f"<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>{resource_xml}"
            "</bind></iq>"
        )
        bound = self.next()
        if bound.get("type") != "result":
            raise ExpectationError(f"bind failed: {serialize(bound).decode()}")
        self.jid = bound.findtext(".//{urn:ietf:params:xml:ns:xmpp-bind}jid")

    # -- expectations ------------------------------------------------------------------------------------

    def next(self) -> etree._Element:
        """The next element received; ExpectationError if there is none."""
        self._pump()
        if not self.inbox:
            raise ExpectationError("nothing received")
        return self.inbox.pop(0)

    def expect(self, pattern: str | etree._Element) -> etree._Element:
        """The next stanza must match ``pattern``: same name, every attribute of the pattern present with
        the same value (``{any}`` accepts any value), the pattern's text if it has some, and the pattern's
        children matched in order among the stanza's children (extra children and attributes are fine)."""
        expected = parse_pattern(pattern) if isinstance(pattern, str) else pattern
        received = self.next()
        if not matches(expected, received):
            raise ExpectationError(
                f"expected {serialize(expected).decode()}\n     got {serialize(received).decode()}"
            )
        return received

    def drain(self) -> list[etree._Element]:
        """Everything received and not read yet (possibly nothing), in order."""
        self._pump()
        received, self.inbox = self.inbox, []
        return received

    def expect_nothing(self) -> None:
        self._pump()
        if self.inbox:
            raise ExpectationError(f"expected nothing, got {serialize(self.inbox[0]).decode()}")

    def request(self, stanza: str) -> etree._Element:
        """Send an iq and return the next stanza received (its answer, in a quiet test)."""
        self.send(stanza)
        return self.next()


def _sasl(name: str, data: bytes, **attrs: str) -> etree._Element:
    ns = "urn:ietf:params:xml:ns:xmpp-sasl"
    el = etree.Element(f"{{{ns}}}{name}", nsmap={None: ns}, **attrs)
    el.text = base64.b64encode(data).decode() or "="
    return el


def parse_pattern(xml: str) -> etree._Element:
    """Parse a stanza written in a test as it would appear on a c2s stream (jabber:client default)."""
    parser = StreamParser(lambda a: None, lambda el: result.append(el), lambda: None, content_ns=NS_CLIENT)
    result: list[etree._Element] = []
    parser.feed(HEADER.format(domain="x").encode() + xml.encode())
    if len(result) != 1:
        raise ValueError(f"a pattern is one element, got {len(result)}: {xml}")
    return result[0]


def matches(expected: etree._Element, actual: etree._Element) -> bool:
    if expected.tag != actual.tag:
        return False
    for key, value in expected.attrib.items():
        got = actual.get(key)
        if got is None or (value != ANY and got != value):
            return False
    if expected.text and expected.text.strip() and (actual.text or "").strip() != expected.text.strip():
        return False
    children = [c for c in actual if isinstance(c.tag, str)]
    position = 0
    for want in (c for c in expected if isinstance(c.tag, str)):
        while position < len(children) and not matches(want, children[position]):
            position += 1
        if position == len(children):
            return False
        position += 1
    return True
