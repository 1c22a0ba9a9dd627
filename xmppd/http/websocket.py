"""XMPP over WebSocket (RFC 7395), mounted at ``/xmpp-websocket`` on the HTTP site.

A :class:`WebSocketSession` is a :class:`~xmppd.stream.c2s.C2SStream` (same negotiation, SASL, binding,
routing, plugins) whose framing hooks speak RFC 7395 instead of one long XML document:

* in: ``<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to=... version='1.0'/>`` resets the stream
  parser and feeds it a synthesized ``<stream:stream>`` header; ``<close/>`` ends the stream; every other
  WebSocket text message must be exactly one complete element, fed to the parser as it is (s3.3.3);
* out: the header becomes ``<open/>``, every element is a standalone document (stanzas qualified by
  ``jabber:client``, ``<stream:features>`` declaring the stream prefix), the end a ``<close/>`` after the
  stream error, if any (s3.6). Each write is one WebSocket text message.

The subprotocol ``xmpp`` is required; a handshake without it is refused with HTTP 400 (s3.1). STARTTLS is
never offered (s3.8): the connection counts as TLS-protected, so SASL is offered, when it is HTTPS, when
``[http] consider_secure`` is set (a TLS-terminating proxy in front), or when it comes from a loopback
address without an ``X-Forwarded-Proto`` other than ``https`` (a local client or a local proxy that
terminates TLS; a local proxy forwarding plain HTTP is recognised by ``X-Forwarded-Proto: http``). Otherwise,
with ``[tls] required`` (the default), no mechanism is offered and nobody can log in over it.

Keepalive: WebSocket pings every ``PING_INTERVAL`` seconds; a peer that does not answer within
``PING_TIMEOUT`` is disconnected (autobahn's autoPing options).
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from lxml import etree
from twisted.internet.interfaces import ISSLTransport

from xmppd.log import logger
from xmppd.stream.c2s import NS_CLIENT, NS_TLS, C2SStream
from xmppd.stream.sasl import NS_SASL
from xmppd.xml.parser import NS_STREAMS, NS_XML, StreamError
from xmppd.xml.stanza import add_child
from xmppd.xml.writer import qualify, serialize, stream_error, stream_header

if TYPE_CHECKING:
    from xmppd.server import Host, XMPPServer

NS_FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
SUBPROTOCOL = "xmpp"
PING_INTERVAL = 30
PING_TIMEOUT = 30
CLOSE = f"<close xmlns='{NS_FRAMING}'/>".encode()

log = logger("xmppd.websocket")

_FRAMING_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


# -- framing (sans-IO) ---------------------------------------------------------------------------------------


def open_element(*, from_: str | None, id_: str | None, lang: str | None = "en") -> bytes:
    """The server's ``<open/>`` (RFC 7395 s3.4)."""
    el = etree.Element(f"{{{NS_FRAMING}}}open", nsmap={None: NS_FRAMING})
    for name, value in (("from", from_), ("id", id_), ("version", "1.0"), (f"{{{NS_XML}}}lang", lang)):
        if value is not None:
            el.set(name, value)
    return serialize(el)


def frame(el: etree._Element) -> bytes:
    """One element as a standalone document: a namespace-neutral stanza is qualified by jabber:client,
    stream-level elements (``<stream:features/>``) declare the stream prefix themselves (s3.3.3)."""
    if el.tag[0] != "{":
        el = qualify(el, NS_CLIENT)
    return serialize(el)


def framed_stream_error(condition: str, text: str | None = None) -> bytes:
    """``<stream:error>`` declaring the ``stream`` prefix, as its own message (s3.6.1)."""
    return stream_error(condition, text).replace(
        b"<stream:error>", f"<stream:error xmlns:stream='{NS_STREAMS}'>".encode(), 1
    )


def parse_framing(data: bytes) -> tuple[str, dict[str, str]] | None:
    """``("open", attrs)`` or ``("close", attrs)`` if ``data`` is a framing element, else None.

    StreamError for a malformed ``<open/>``/``<close/>`` or one in another namespace."""
    text = data.lstrip()
    if text.startswith(b"<?xml"):
        end = text.find(b"?>")
        text = text[end + 2 :].lstrip() if end >= 0 else text
    if not (text.startswith(b"<open") or text.startswith(b"<close")):
        return None
    if b"<!" in text:
        raise StreamError("restricted-xml", "no DTDs, comments or CDATA")
    try:
        el = etree.fromstring(text, _FRAMING_PARSER)
    except etree.XMLSyntaxError as e:
        raise StreamError("not-well-formed", str(e)) from None
    qname = etree.QName(el)
    if qname.localname not in ("open", "close"):
        return None
    if qname.namespace != NS_FRAMING:
        raise StreamError("invalid-namespace", f"<{qname.localname}/> must be qualified by {NS_FRAMING}")
    if len(el) or (el.text or "").strip():
        raise StreamError("invalid-xml", f"<{qname.localname}/> is empty")
    return qname.localname, dict(el.attrib)


def stream_header_for(attrs: dict[str, str]) -> bytes:
    """The ``<stream:stream>`` header equivalent to an ``<open/>``'s attributes, for the stream parser."""
    return stream_header(
        content_ns=NS_CLIENT,
        from_=attrs.get("from"),
        to=attrs.get("to"),
        id_=None,
        version=attrs.get("version"),
        lang=attrs.get(f"{{{NS_XML}}}lang"),
    )


# -- the session -----------------------------------------------------------------------------------------


class WebSocketSession(C2SStream):
    """A client stream over one WebSocket connection (driven by :class:`XMPPWebSocketProtocol`)."""

    kind = "websocket"

    def __init__(self, server: XMPPServer, *, secure: bool = False) -> None:
        super().__init__(server, direct_tls=secure)
        self._awaiting_open = True
        self._elements = 0  # complete top-level elements parsed so far

    # framing hooks
    def frame_header(self, from_: str) -> bytes:
        return open_element(from_=from_, id_=self.id, lang=self.lang)

    def frame_element(self, el: etree._Element) -> bytes:
        return frame(el)

    def frame_close(self, condition: str | None, text: str | None) -> bytes:
        if condition:  # its own message, before <close/>
            self.transport.write(framed_stream_error(condition, text))
        return CLOSE

    # input
    def message_received(self, data: bytes) -> None:
        """One WebSocket text message."""
        if self.closed:
            return
        self.last_received = self.server.clock.seconds()
        try:
            self._message(data)
        except StreamError as e:
            log.info(
                "websocket {id} from {peer}: stream error {condition}: {text}",
                id=self.id,
                peer=self.peer,
                condition=e.condition,
                text=e.text,
            )
            self.close(e.condition, e.text)

    def dataReceived(self, data: bytes) -> None:  # a transport-independent entry point for tests
        self.message_received(data)

    def _message(self, data: bytes) -> None:
        if not data.strip():
            return  # whitespace keepalive
        framing = parse_framing(data)
        if framing is not None:
            name, attrs = framing
            if name == "close":
                self._stream_end()
                return
            if not self._awaiting_open:
                raise StreamError("policy-violation", "<open/> only after the start or a stream restart")
            self._awaiting_open = False
            self._parser.reset()
            self._parser.feed(stream_header_for(attrs))
            return
        if self._awaiting_open:
            raise StreamError("not-well-formed", "open the stream with <open/> first")
        before = self._elements
        self._parser.feed(data)
        if not self.closed and self._elements - before != 1:
            raise StreamError("not-well-formed", "each WebSocket message must be one complete XML element")

    def _element(self, el: etree._Element) -> None:
        self._elements += 1
        super()._element(el)

    def _restart(self) -> None:
        super()._restart()
        self._awaiting_open = True  # the client sends a new <open/> (s3.5)

    # no STARTTLS over WebSocket (s3.8)
    def _features(self, host: Host) -> etree._Element:
        features = super()._features(host)
        for starttls in features.findall(f"{{{NS_TLS}}}starttls"):
            features.remove(starttls)
        if self.tls and self._sasl is not None and not self._sasl.tls:
            # Secure without a TLS handle of our own (a proxy terminates TLS): PLAIN is safe here too.
            self._sasl.tls = True
            mechanisms = features.find(f"{{{NS_SASL}}}mechanisms")
            if mechanisms is not None:
                add_child(mechanisms, NS_SASL, "mechanism", "PLAIN")
        return features

    def _starttls(self, el: etree._Element) -> None:
        self.send(etree.Element(f"{{{NS_TLS}}}failure", nsmap={None: NS_TLS}))
        self.close()

    def __repr__(self) -> str:
        return f"<WebSocketSession {self.id} {self.jid or self.peer}>"


class WebSocketTransport:
    """What a WebSocketSession writes to: each ``write`` is one text message."""

    def __init__(self, protocol: XMPPWebSocketProtocol, handle: Any = None) -> None:
        self.protocol = protocol
        self.handle = handle
        self.disconnecting = False

    def write(self, data: bytes) -> None:
        if not self.disconnecting:
            self.protocol.sendMessage(data, isBinary=False)

    def writeSequence(self, data: list[bytes]) -> None:
        for item in data:
            self.write(item)

    def loseConnection(self) -> None:
        if not self.disconnecting:
            self.disconnecting = True
            self.protocol.sendClose(code=1000)

    def abortConnection(self) -> None:
        """Drop the connection at once (a client that does not read its data: nothing would flush)."""
        self.disconnecting = True
        transport = self.protocol.transport
        if transport is not None:
            transport.abortConnection()

    def getPeer(self) -> Any:
        return self.protocol.transport.getPeer()

    def getHost(self) -> Any:
        return self.protocol.transport.getHost()

    def getHandle(self) -> Any:
        """The TLS connection of an HTTPS request (channel binding), else None."""
        return self.handle

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """Flow control from the connection: the session is paused when the client stops reading, so its
        output backlog stays bounded (xmppd.stream.c2s.MAX_OUTPUT_BACKLOG). twisted.web's HTTP channel,
        registered before the upgrade, no longer serves the connection and makes way."""
        transport = self.protocol.transport
        if transport is None:
            return
        try:
            transport.unregisterProducer()
        except Exception:
            pass  # nothing was registered
        transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        transport = self.protocol.transport
        if transport is not None:
            try:
                transport.unregisterProducer()
            except Exception:
                pass


def _is_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


class XMPPWebSocketProtocol(WebSocketServerProtocol):
    """Adapts one WebSocket connection to a :class:`WebSocketSession`."""

    session: WebSocketSession | None = None
    secure = False

    def onConnect(self, request: Any) -> str:
        if SUBPROTOCOL not in request.protocols:
            raise ConnectionDeny(ConnectionDeny.BAD_REQUEST, "the WebSocket subprotocol 'xmpp' is required")
        self.secure = self._secure(request.headers)
        return SUBPROTOCOL

    def _secure(self, headers: dict[str, str]) -> bool:
        if ISSLTransport.providedBy(self.transport):
            return True
        if self.factory.server.config.get("http", "consider_secure"):
            return True
        peer = self.transport.getPeer()
        if not _is_loopback(getattr(peer, "host", "")):
            return False
        forwarded = headers.get("x-forwarded-proto")
        return forwarded is None or forwarded.strip().lower() == "https"

    def onOpen(self) -> None:
        handle = self.transport.getHandle() if ISSLTransport.providedBy(self.transport) else None
        self.session = WebSocketSession(self.factory.server, secure=self.secure)
        self.session.makeConnection(WebSocketTransport(self, handle))

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.session is None:
            return
        if isBinary:
            self.session.close("unsupported-encoding", "XMPP over WebSocket uses text messages (RFC 7395)")
            return
        self.session.message_received(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        session, self.session = self.session, None
        if session is not None:
            session.transport.disconnecting = True
            session.connectionLost()


class XMPPWebSocketFactory(WebSocketServerFactory):
    protocol = XMPPWebSocketProtocol

    def __init__(self, server: XMPPServer) -> None:
        super().__init__(protocols=[SUBPROTOCOL])
        self.server = server
        limit = server.config.get("server", "max_stanza_size")
        self.setProtocolOptions(
            autoPingInterval=PING_INTERVAL,
            autoPingTimeout=PING_TIMEOUT,
            maxMessagePayloadSize=limit + 4096,  # the parser's policy-violation comes first
            openHandshakeTimeout=30,
        )


def websocket_resource(server: XMPPServer) -> WebSocketResource:
    """The twisted.web resource for ``/xmpp-websocket``."""
    return WebSocketResource(XMPPWebSocketFactory(server))
