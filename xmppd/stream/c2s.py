"""Client-to-server streams (RFC 6120): negotiation, then a bound session that the router delivers to.

States, in order: stream header -> STARTTLS (required by default, s5) -> SASL (s6) -> stream restart ->
resource binding (s7; the legacy session iq of RFC 3921 is accepted) -> bound. Each restart resets the
parser, so nothing sent in the clear before ``<proceed/>`` survives into the TLS stream (s5.3.3).

Every problem on the stream is a stream error sent before closing (s4.9): parser problems
(``not-well-formed``, ``restricted-xml``, ``policy-violation``...), stanzas before authentication
(``not-authorized``), an unknown domain (``host-unknown``), an idle unauthenticated connection
(``connection-timeout``), a client that does not read its data (``policy-violation``).
"""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING

from lxml import etree
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory

from xmppd.jid import JID, JIDError, prep_domain, prep_resource
from xmppd.log import logger
from xmppd.sessions import ResourceLimit
from xmppd.stream.base import XMLStream, admit, cancel
from xmppd.stream.sasl import NS_SASL, SASLNegotiation
from xmppd.xml.parser import NS_STREAMS, NS_XML, StreamError, StreamParser
from xmppd.xml.stanza import STANZA_KINDS, add_child, make_error, make_result
from xmppd.xml.writer import STREAM_END, serialize, stream_error, stream_header

if TYPE_CHECKING:
    from xmppd.server import Host, XMPPServer

NS_CLIENT = "jabber:client"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"
XML_LANG = f"{{{NS_XML}}}lang"

# Bytes a client may leave unread in our output buffer before it is disconnected.
MAX_OUTPUT_BACKLOG = 2 * 1024 * 1024

log = logger("xmppd.c2s")


class C2SStream(XMLStream):
    """One client connection. Once bound, it is also the Session the router delivers to."""

    kind = "c2s"
    max_backlog = MAX_OUTPUT_BACKLOG

    def __init__(self, server: XMPPServer, *, direct_tls: bool = False) -> None:
        self.server = server
        self.id = secrets.token_urlsafe(12)
        self.tls = direct_tls
        self.host: str | None = None
        self.lang = "en"
        self.user: str | None = None  # authenticated localpart
        self.jid: JID | None = None  # bound full JID
        self.bound = False
        self.priority: int | None = None
        self.presence: etree._Element | None = None
        self.peer = ""
        self.created = time.time()
        self.closed = False
        self.last_received = server.clock.seconds()  # for keepalive pings
        self.last_presence: etree._Element | None = None  # the unavailable presence it left with
        self.data: dict[str, object] = {}  # per-session state of plugins, under their names
        self._header_sent = False
        self._sasl: SASLNegotiation | None = None
        self._auth_failures = 0
        self._auth_timer = None
        # server.stats counters of this transport (xmppd.stats), kind -> count
        self._stanzas_in, self._stanzas_out = server.stats.stanza_counters(self.kind)
        self._parser = self._new_parser()

    # -- connection ----------------------------------------------------------------------------------------

    def _new_parser(self) -> StreamParser:
        return StreamParser(
            self._stream_start,
            self._element,
            self._stream_end,
            content_ns=NS_CLIENT,
            max_stanza_size=self.server.config.get("server", "max_stanza_size"),
        )

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.peer = f"{getattr(peer, 'host', peer)}"
        timeout = self.server.config.get("server", "auth_timeout")
        self._auth_timer = self.server.clock.callLater(timeout, self._auth_timeout)
        self.server.streams.add(self)

    def log_prefix(self) -> str:
        return f"{self.kind} {self.id} from {self.peer}"

    def data_arrived(self) -> None:
        self.last_received = self.server.clock.seconds()

    def connectionLost(self, reason: object = None) -> None:
        super().connectionLost(reason)
        self.server.streams.discard(self)
        cancel(self._auth_timer)
        if self.bound:
            self.bound = False
            self.server.session_ended(self)

    def _auth_timeout(self) -> None:
        self._auth_timer = None
        if not self.bound:
            self.close("connection-timeout", "authenticate within the time allowed")

    # -- output --------------------------------------------------------------------------------------------

    def send(self, stanza: etree._Element) -> None:
        """Deliver a stanza or stream-level element to the client."""
        counts, tag = self._stanzas_out, stanza.tag
        if tag in counts:  # a stanza, not a stream-level element
            counts[tag] += 1
        self._write(self.frame_element(stanza))

    # Framing: how the stream looks on the wire. A TCP stream is one XML document (RFC 6120 s4); web
    # transports (RFC 7395 WebSocket, XEP-0206 BOSH) override these three and reuse everything else.
    def frame_header(self, from_: str) -> bytes:
        """The opening of the stream (s4.7)."""
        return stream_header(content_ns=NS_CLIENT, from_=from_, to=None, id_=self.id, lang=self.lang)

    def frame_element(self, el: etree._Element) -> bytes:
        """One top-level element (a stanza, or a stream-level element such as features)."""
        return serialize(el)

    def frame_close(self, condition: str | None, text: str | None) -> bytes:
        """The end of the stream, with a stream error first when ``condition`` is given (s4.4, s4.9)."""
        return (stream_error(condition, text) if condition else b"") + STREAM_END

    def close(self, condition: str | None = None, text: str | None = None) -> None:
        """Close the stream, with a stream error first if ``condition`` is given (RFC 6120 s4.4, s4.9)."""
        if self.closed:
            return
        self._ensure_header()
        self.transport.write(self.frame_close(condition, text))
        self.closed = True
        if self.bound:
            # Twisted's TLS layer holds back loseConnection while a producer is registered.
            self.transport.unregisterProducer()
        self.transport.loseConnection()

    # -- stream header and features ------------------------------------------------------------------------

    def _ensure_header(self, domain: str | None = None) -> None:
        if self._header_sent:
            return
        self._header_sent = True
        self.transport.write(self.frame_header(domain or self.host or self.server.default_domain))

    def _stream_start(self, attrs: dict[str, str]) -> None:
        self._header_sent = False
        try:
            to = prep_domain(attrs.get("to") or "")
        except JIDError:
            to = attrs.get("to") or ""
        self.lang = attrs.get(XML_LANG, self.lang) or "en"
        host = self.server.hosts.get(to)
        if host is None:
            self.host = None
            self._ensure_header(self.server.default_domain)
            raise StreamError("host-unknown", f"this server does not serve {to!r}" if to else "no 'to'")
        if self.host is not None and host.name != self.host:
            raise StreamError("host-unknown", "the domain may not change on a restart")
        self.host = host.name
        self._ensure_header()
        version = attrs.get("version", "0.9")
        if not version.startswith("1."):
            raise StreamError("unsupported-version", "version 1.0 is required")
        self.send(self._features(host))

    def _features(self, host: Host) -> etree._Element:
        """The stream features for the current state (RFC 6120 s4.3.2)."""
        features = etree.Element(f"{{{NS_STREAMS}}}features", nsmap={"stream": NS_STREAMS})
        if self.user is None:
            if not self.tls:
                starttls = add_child(features, NS_TLS, "starttls")
                if self._tls_required():
                    add_child(starttls, NS_TLS, "required")
            if self.tls or not self._tls_required():
                self._sasl = SASLNegotiation(
                    self.server.accounts,
                    host.name,
                    tls_connection=self.transport.getHandle() if self.tls else None,
                    send=self.send,
                    on_success=self._authenticated,
                    on_failure=self._auth_failed,
                )
                self._sasl.add_features(features)
        elif not self.bound:
            add_child(features, NS_BIND, "bind")
            add_child(add_child(features, NS_SESSION, "session"), NS_SESSION, "optional")
        host.bus.fire("stream-features", StreamFeaturesEvent(self, features))
        return features

    def _tls_required(self) -> bool:
        return bool(self.server.config.get("tls", "required"))

    # -- elements ------------------------------------------------------------------------------------------

    def _element(self, el: etree._Element) -> None:
        if self.bound:
            counts, tag = self._stanzas_in, el.tag
            if tag not in counts:  # keyed by the stanza kinds
                raise StreamError(
                    "unsupported-stanza-type", f"<{etree.QName(el).localname}/> is not a stanza"
                )
            counts[tag] += 1
            if tag == "iq" and _is_session_iq(el, self.host):
                self.send(make_result(el))  # RFC 3921 s3: legacy clients send it after binding
            else:
                self.server.router.process(self, el)
            return
        ns = etree.QName(el).namespace
        if ns == NS_TLS:
            self._starttls(el)
        elif ns == NS_SASL:
            self._sasl_element(el)
        elif el.tag == "iq" and self.user is not None:
            self._bind_phase_iq(el)
        elif el.tag == "iq" and self._sasl is not None and self._unauthenticated_iq(el):
            pass
        elif el.tag in STANZA_KINDS:
            raise StreamError("not-authorized", "authenticate and bind a resource first")
        else:
            raise StreamError("unsupported-stanza-type", "unexpected element during negotiation")

    def _unauthenticated_iq(self, iq: etree._Element) -> bool:
        """Offer an iq sent before authentication to plugins (``unauthenticated-iq``; in-band
        registration, XEP-0077 s3). Only once SASL is on offer, so never before a required STARTTLS."""
        host = self.server.hosts[self.host]
        result = host.bus.fire("unauthenticated-iq", UnauthenticatedIQEvent(self, iq))
        if result is None:
            return False
        if isinstance(result, Deferred):
            result.addCallback(self._send_if_element)
            result.addErrback(lambda f: log.failure("unauthenticated iq handler failed", f))
        else:
            self._send_if_element(result)
        return True

    def _send_if_element(self, result: object) -> None:
        if isinstance(result, etree._Element) and not self.closed:
            self.send(result)

    def _starttls(self, el: etree._Element) -> None:
        """RFC 6120 s5.4.2: <starttls/> -> <proceed/>, then TLS and a new stream."""
        if self.tls or self.user is not None or etree.QName(el).localname != "starttls":
            self.send(etree.Element(f"{{{NS_TLS}}}failure", nsmap={None: NS_TLS}))
            self.close()
            return
        self.send(etree.Element(f"{{{NS_TLS}}}proceed", nsmap={None: NS_TLS}))
        self.transport.startTLS(self.server.tls_context)
        self.tls = True
        self._restart()

    def _sasl_element(self, el: etree._Element) -> None:
        if self.user is not None:
            raise StreamError("policy-violation", "already authenticated")
        if self._sasl is None:
            # s5.3.1: TLS is mandatory here and the client skipped it.
            fail = etree.Element(f"{{{NS_SASL}}}failure", nsmap={None: NS_SASL})
            add_child(fail, NS_SASL, "encryption-required")
            self.send(fail)
            return
        if self._sasl.busy:
            raise StreamError("policy-violation", "wait for the server's SASL answer")
        self._sasl.handle(el)

    def _authenticated(self, user: str) -> None:
        self.user = user
        log.info(
            "c2s {id} from {peer}: authenticated as {user}@{host}",
            id=self.id,
            peer=self.peer,
            user=user,
            host=self.host,
        )
        self._restart()  # RFC 6120 s6.4.6: the client restarts the stream after <success/>

    def _auth_failed(self, condition: str) -> None:
        self._auth_failures += 1
        self.server.stats.auth_failed(self._sasl.mechanism if self._sasl else None, condition)
        self.server.fire_global("authentication-failed", self)
        if self._auth_failures >= self.server.config.get("server", "max_failed_auth"):
            # RFC 6120 s6.4.5: a configurable number of retries, then close.
            self.close("policy-violation", "too many failed authentication attempts")

    def _restart(self) -> None:
        self._header_sent = False
        self._parser.reset()

    # -- resource binding (RFC 6120 s7) --------------------------------------------------------------------

    def _bind_phase_iq(self, iq: etree._Element) -> None:
        child = next((c for c in iq if isinstance(c.tag, str)), None)
        if iq.get("type") == "set" and child is not None and child.tag == f"{{{NS_BIND}}}bind":
            self._bind(iq, child)
        elif iq.get("type") == "set" and child is not None and child.tag == f"{{{NS_SESSION}}}session":
            self.send(make_result(iq))  # RFC 3921 s3 session establishment: a no-op since RFC 6121
        else:
            raise StreamError("not-authorized", "bind a resource first")

    def _bind(self, iq: etree._Element, bind: etree._Element) -> None:
        requested = bind.findtext(f"{{{NS_BIND}}}resource")
        resource = None
        if requested is not None and requested.strip():
            try:
                resource = prep_resource(requested)
            except JIDError:
                self.send(make_error(iq, "bad-request", text="invalid resource"))  # s7.7.2.1
                return
        bare = JID(self.user, self.host)
        try:
            full, replaced = self.server.sessions.bind(self, bare, resource)
        except ResourceLimit:
            self.send(make_error(iq, "resource-constraint", text="too many sessions"))  # s7.6.2.1
            return
        if replaced is not None:
            replaced.close("conflict", "replaced by a new session")  # s7.7.2.2
        self.bound = True
        cancel(self._auth_timer)
        self._auth_timer = None
        result = make_result(iq)
        result.attrib.pop("from", None)
        add_child(add_child(result, NS_BIND, "bind"), NS_BIND, "jid", str(full))
        self.send(result)
        self.transport.registerProducer(self, True)
        log.info("c2s {id} from {peer}: session {jid} started", id=self.id, peer=self.peer, jid=full)
        self.server.session_started(self)

    def _stream_end(self) -> None:
        """The client closed the stream (RFC 6120 s4.4): answer with our closing tag and disconnect."""
        self.close()

    def __repr__(self) -> str:
        return f"<C2SStream {self.id} {self.jid or self.peer}>"


def _is_session_iq(iq: etree._Element, host: str | None) -> bool:
    """An RFC 3921 session establishment request (a no-op since RFC 6121, answered with a result)."""
    payload = [c for c in iq if isinstance(c.tag, str)]
    return (
        iq.get("type") == "set"
        and len(payload) == 1
        and payload[0].tag == f"{{{NS_SESSION}}}session"
        and iq.get("to") in (None, host)
    )


class UnauthenticatedIQEvent:
    """Fired as ``unauthenticated-iq`` for an iq sent before authentication. A handler returns the answer
    (or a Deferred of it); when none answers, the stream ends with ``<not-authorized/>``."""

    def __init__(self, stream: C2SStream, stanza: etree._Element) -> None:
        self.stream = stream
        self.stanza = stanza
        self.peer = stream.peer
        self.domain = stream.host


class StreamFeaturesEvent:
    """Fired as ``stream-features`` while features are offered; plugins may add children to ``features``."""

    def __init__(self, stream: C2SStream, features: etree._Element) -> None:
        self.stream = stream
        self.features = features


class C2SFactory(Factory):
    """Makes a C2SStream per accepted connection."""

    noisy = False

    def __init__(self, server: XMPPServer, *, direct_tls: bool = False) -> None:
        self.server = server
        self.direct_tls = direct_tls

    def buildProtocol(self, addr: object) -> C2SStream | None:
        stream = C2SStream(self.server, direct_tls=self.direct_tls)
        stream.factory = self
        return admit(self.server, addr, stream)
