"""External components (XEP-0114, Jabber Component Protocol, the ``jabber:component:accept`` method).

A trusted service (a gateway, a bot, a MUC service) connects to the ``[listen] component`` port and
serves a domain of its own, configured in ``[components]`` with a shared secret. The flow (s3):

1. the component opens a stream whose ``to`` is its own domain, not the server's;
2. the server answers with a header carrying ``from`` = that domain and a fresh stream id, without
   ``version`` and so without stream features;
3. the component sends ``<handshake>hex(SHA1(stream id + secret))</handshake>``;
4. the server answers ``<handshake/>``, or closes with ``<not-authorized/>``.

Then the component's domain is routed to the stream (``server.routes``), and every stanza it sends must
carry a ``from`` at that domain (s3; ``<invalid-from/>`` otherwise) and a ``to``; the router delivers it
like any stanza from a trusted source. While connected, a component whose domain is below a served
domain (``gateway.example.org`` under ``example.org``) is listed in that domain's disco#items.

Decisions where XEP-0114 leaves a choice:

* A second connection for a component that is already connected is refused with ``<conflict/>`` and
  the first one stays (Prosody's default, ``kick_new``): a misconfigured duplicate cannot take over a
  working gateway. The check is made at the stream header (s3 lists ``<conflict/>`` among the header
  errors) and again after the handshake, for two connections racing. A component whose old TCP
  connection died unnoticed is refused until the server notices (the OS keepalive or a write error).
* The digest is computed over the stream id and the secret as they are (UTF-8), as Twisted, wokkel,
  Prosody and ejabberd do; a hex digest in upper case is accepted too.
* While a configured component is not connected, its domain still routes here: messages and iqs to it
  bounce with ``service-unavailable`` (type ``wait``) and presence is dropped, so its traffic never
  leaks to federation (:func:`install_component_routes`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import TYPE_CHECKING

from lxml import etree
from twisted.internet.protocol import Factory

from xmppd.jid import JIDError, parse_jid, prep_domain
from xmppd.log import logger
from xmppd.stream.base import XMLStream, admit, cancel
from xmppd.xml.parser import StreamError, StreamParser
from xmppd.xml.stanza import IQ_TYPES, MESSAGE_TYPES, PRESENCE_TYPES, STANZA_KINDS, make_error
from xmppd.xml.writer import STREAM_END, serialize, stream_error, stream_header

if TYPE_CHECKING:
    from xmppd.server import XMPPServer

NS_COMPONENT_ACCEPT = "jabber:component:accept"

#: Bytes a component may leave unread in our output buffer before it is disconnected. Larger than a
#: client's: a gateway carries the traffic of many users.
MAX_OUTPUT_BACKLOG = 16 * 1024 * 1024

#: The owner recorded on the disco#items entries of connected components (``Host.items``).
DISCO_OWNER = "component"

log = logger("xmppd.component")


def handshake_digest(stream_id: str, secret: str) -> str:
    """XEP-0114 s3: the lower-case hex SHA-1 of the stream id followed by the secret."""
    return hashlib.sha1((stream_id + secret).encode("utf-8")).hexdigest()


def connected_component(server: XMPPServer, domain: str) -> ComponentStream | None:
    """The authenticated stream serving ``domain`` now, or None."""
    owner = getattr(server.routes.get(domain), "__self__", None)
    return owner if isinstance(owner, ComponentStream) else None


def install_component_routes(server: XMPPServer) -> None:
    """Route every configured component domain to an :class:`OfflineComponent` until it connects."""
    for domain in server.config.components:
        server.routes.setdefault(domain, OfflineComponent(server, domain))


class OfflineComponent:
    """The route of a configured component that is not connected: stanzas to it bounce (messages and
    iq requests, RFC 6120 s8.3) with ``service-unavailable``, presence is dropped."""

    def __init__(self, server: XMPPServer, domain: str) -> None:
        self.server = server
        self.domain = domain

    def __call__(self, stanza: etree._Element) -> None:
        type_ = stanza.get("type")
        if stanza.tag == "presence" or type_ == "error" or (stanza.tag == "iq" and type_ == "result"):
            return
        if not stanza.get("from"):
            return
        reply = make_error(stanza, "service-unavailable", "wait", text=f"{self.domain} is not connected")
        self.server.router.route(reply)

    def __repr__(self) -> str:
        return f"<OfflineComponent {self.domain}>"


class ComponentStream(XMLStream):
    """One component connection (the accepting side of ``jabber:component:accept``)."""

    max_backlog = MAX_OUTPUT_BACKLOG  # components carry whole services' traffic

    kind = "component"

    def __init__(self, server: XMPPServer) -> None:
        self.server = server
        self.id = secrets.token_hex(16)  # the stream id the handshake digest covers (s3)
        self.domain: str | None = None  # the component domain asked for in the header
        self.authenticated = False
        self.peer = ""
        self.created = time.time()
        self.closed = False
        self._header_sent = False
        self._auth_timer = None
        self._disco_entry: tuple[str, str | None, str] | None = None
        self._disco_host: str | None = None
        # server.stats counters of components (xmppd.stats), kind -> count
        self._stanzas_in, self._stanzas_out = server.stats.stanza_counters(self.kind)
        self._parser = StreamParser(
            self._stream_start,
            self._element,
            self._stream_end,
            content_ns=NS_COMPONENT_ACCEPT,
            max_stanza_size=server.config.get("server", "max_stanza_size"),
        )

    # -- connection ----------------------------------------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.peer = f"{getattr(peer, 'host', peer)}"
        timeout = self.server.config.get("server", "auth_timeout")
        self._auth_timer = self.server.clock.callLater(timeout, self._auth_timeout)
        self.server.streams.add(self)

    def log_prefix(self) -> str:
        return f"component {self.id} ({self.domain}) from {self.peer}"

    def connectionLost(self, reason: object = None) -> None:
        super().connectionLost(reason)
        self.server.streams.discard(self)
        cancel(self._auth_timer)
        self._auth_timer = None
        self._unregister()

    def _auth_timeout(self) -> None:
        self._auth_timer = None
        if not self.authenticated:
            self.close("connection-timeout", "send the handshake within the time allowed")

    # -- output --------------------------------------------------------------------------------------------

    def send(self, el: etree._Element) -> None:
        """Write a stanza or stream-level element to the component."""
        counts, tag = self._stanzas_out, el.tag
        if tag in counts:  # a stanza, not a stream-level element (the handshake)
            counts[tag] += 1
        self._write(serialize(el))

    def deliver(self, stanza: etree._Element) -> None:
        """The route of this component's domain (``server.routes``): the router calls it for every
        stanza addressed to the domain or a JID at it."""
        self.send(stanza)

    def close(self, condition: str | None = None, text: str | None = None) -> None:
        """Close the stream, with a stream error first if ``condition`` is given (RFC 6120 s4.9; for
        errors about the header, the header comes first, XEP-0114 s3)."""
        if self.closed:
            return
        self._unregister()  # from now on the domain's stanzas bounce instead of being lost
        self._ensure_header(self.server.default_domain)
        data = stream_error(condition, text) if condition else b""
        self.transport.write(data + STREAM_END)
        self.closed = True
        if self.authenticated:
            self.transport.unregisterProducer()
        self.transport.loseConnection()

    # -- stream header (XEP-0114 s3) -----------------------------------------------------------------------

    def _ensure_header(self, from_: str) -> None:
        if self._header_sent:
            return
        self._header_sent = True
        # s3: no 'version', so no stream features (RFC 6120 s4.7.5); the component's own domain as 'from'.
        self.transport.write(
            stream_header(content_ns=NS_COMPONENT_ACCEPT, from_=from_, to=None, id_=self.id, version=None)
        )

    def _stream_start(self, attrs: dict[str, str]) -> None:
        requested = attrs.get("to") or ""
        try:
            domain = prep_domain(requested)
        except JIDError:
            domain = None
        if domain is None or domain not in self.server.config.components:
            self._ensure_header(self.server.default_domain)
            raise StreamError(
                "host-unknown", f"no component {requested!r} is configured" if requested else "no 'to'"
            )
        self._ensure_header(domain)
        self.domain = domain
        if connected_component(self.server, domain) is not None:
            raise StreamError("conflict", f"{domain} is already connected")  # s3; see the module docstring

    # -- elements ------------------------------------------------------------------------------------------

    def _element(self, el: etree._Element) -> None:
        if not self.authenticated:
            if el.tag != "handshake":
                raise StreamError("not-authorized", "send the handshake first (XEP-0114 s3)")
            self._handshake(el)
        elif el.tag in STANZA_KINDS:
            self._stanzas_in[el.tag] += 1
            self._stanza(el)
        else:
            raise StreamError("unsupported-stanza-type", f"<{etree.QName(el).localname}/> is not a stanza")

    def _handshake(self, el: etree._Element) -> None:
        assert self.domain is not None
        given = (el.text or "").strip().lower().encode("utf-8", "replace")
        expected = handshake_digest(self.id, self.server.config.components[self.domain]).encode()
        if not hmac.compare_digest(given, expected):
            log.warn(
                "component {id} from {peer}: wrong handshake for {domain}",
                id=self.id,
                peer=self.peer,
                domain=self.domain,
            )
            raise StreamError("not-authorized", "wrong handshake")  # s3: SHOULD be <not-authorized/>
        if connected_component(self.server, self.domain) is not None:
            raise StreamError("conflict", f"{self.domain} is already connected")
        self.authenticated = True
        cancel(self._auth_timer)
        self._auth_timer = None
        self.send(etree.Element("handshake"))  # s3: an empty <handshake/> acknowledges success
        self.transport.registerProducer(self, True)
        self._register()
        log.info(
            "component {id} from {peer}: {domain} connected", id=self.id, peer=self.peer, domain=self.domain
        )

    def _stanza(self, el: etree._Element) -> None:
        """s3: every stanza carries a 'from' at the component's domain and a 'to'."""
        from_ = el.get("from")
        try:
            sender = parse_jid(from_) if from_ else None
        except JIDError:
            sender = None
        if sender is None or sender.domain != self.domain:
            raise StreamError("invalid-from", f"stanzas from this stream must come from {self.domain}")
        problem = _stanza_problem(el)
        if problem is not None:
            self._reject(el, *problem)
            return
        self.server.router.route(el)

    def _reject(self, el: etree._Element, condition: str, text: str) -> None:
        """Answer a stanza the server will not route with a stanza error from the server itself."""
        if el.get("type") == "error" or (el.tag == "iq" and el.get("type") == "result"):
            return  # RFC 6120 s8.3.1: never an error for an error
        el.attrib.pop("to", None)
        reply = make_error(el, condition, text=text)
        reply.set("from", self.server.default_domain)
        self.send(reply)

    def _stream_end(self) -> None:
        self.close()

    # -- routing and service discovery ---------------------------------------------------------------------

    def _register(self) -> None:
        domain = self.domain
        assert domain is not None
        self.server.routes[domain] = self.deliver
        parent = _parent_host(self.server, domain)
        if parent is not None:
            self._disco_entry = (domain, None, DISCO_OWNER)
            self._disco_host = parent
            self.server.hosts[parent].items.append(self._disco_entry)

    def _unregister(self) -> None:
        """Undo :meth:`_register` (idempotent): the domain goes back to its offline route, the disco item
        goes, and iqs the server sent to the component fail at once."""
        domain = self.domain
        if not self.authenticated or domain is None or self.server.routes.get(domain) != self.deliver:
            return
        self.server.routes[domain] = OfflineComponent(self.server, domain)
        if self._disco_entry is not None and self._disco_host is not None:
            items = self.server.hosts[self._disco_host].items
            if self._disco_entry in items:
                items.remove(self._disco_entry)
            self._disco_entry = None
        self.server.router.cancel_pending(lambda to: to.domain == domain)
        log.info("component {id}: {domain} disconnected", id=self.id, domain=domain)

    def __repr__(self) -> str:
        return f"<ComponentStream {self.id} {self.domain or self.peer}>"


def _parent_host(server: XMPPServer, domain: str) -> str | None:
    """The served domain ``domain`` is a subdomain of (the longest if several), or None."""
    parents = [d for d in server.hosts if domain.endswith("." + d)]
    return max(parents, key=len) if parents else None


def _stanza_problem(el: etree._Element) -> tuple[str, str] | None:
    """(condition, text) of a stanza error when a component's stanza cannot be routed (RFC 6120 s8)."""
    to = el.get("to")
    if not to:
        return "bad-request", "stanzas from a component need a 'to' (XEP-0114 s3)"
    try:
        parse_jid(to)
    except JIDError as e:
        return "jid-malformed", f"'to' is not a valid JID: {e}"
    kind, type_ = el.tag, el.get("type")
    if kind == "iq":
        if type_ not in IQ_TYPES:
            return "bad-request", "iq type must be get, set, result or error"
        if not el.get("id"):
            return "bad-request", "iq needs an id"
        if type_ in ("get", "set") and sum(1 for c in el if isinstance(c.tag, str)) != 1:
            return "bad-request", "an iq get or set carries exactly one payload"
    elif kind == "message":
        if type_ is not None and type_ not in MESSAGE_TYPES:
            return "bad-request", f"unknown message type {type_!r}"
    elif type_ is not None and type_ not in PRESENCE_TYPES:
        return "bad-request", f"unknown presence type {type_!r}"
    return None


class ComponentFactory(Factory):
    """Makes a ComponentStream per accepted connection (the ``component`` listener)."""

    noisy = False

    def __init__(self, server: XMPPServer) -> None:
        self.server = server

    def buildProtocol(self, addr: object) -> ComponentStream | None:
        stream = ComponentStream(self.server)
        stream.factory = self
        return admit(self.server, addr, stream)
