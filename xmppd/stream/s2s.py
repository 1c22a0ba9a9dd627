"""Server-to-server streams (RFC 6120): federation with other XMPP servers.

One outgoing stream per (local domain, remote domain) pair carries every stanza from that local domain to
that remote domain (RFC 6120 s4.2); the remote server connects back for its own traffic. Each stream is
secured with STARTTLS (required by default, s5) and authenticated in one of two ways:

* SASL EXTERNAL (XEP-0178) when the peer's certificate verifies for its domain (RFC 6120 s13.7.2:
  DNS-ID, SRV-ID or XmppAddr against the trust store, see xmppd.s2s_identity);
* Server Dialback (XEP-0220) otherwise, unless ``[s2s] require_valid_certificates`` forbids it: the
  receiving server checks a key with the originating server's authoritative server over a stream of its
  own (keys per XEP-0185).

Stanzas wait in a bounded queue while a stream is set up; if it cannot be set up they are bounced to their
senders with ``remote-server-not-found`` or ``remote-server-timeout``. A stanza on an incoming stream is
accepted only from a domain that stream authenticated (else ``<invalid-from/>``) and only for a domain served
here (else ``<host-unknown/>``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections import deque
from typing import TYPE_CHECKING, Any

from lxml import etree
from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, clientFromString, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Factory
from zope.interface import implementer

from xmppd.jid import JIDError, parse_jid, prep_domain
from xmppd.log import logger
from xmppd.stream.base import XMLStream, admit, cancel
from xmppd.tls import alpn_selector
from xmppd.xml.parser import NS_STREAMS, StreamError, StreamParser
from xmppd.xml.stanza import STANZA_KINDS, add_child
from xmppd.xml.writer import STREAM_END, serialize, stream_error

if TYPE_CHECKING:
    from xmppd.server import XMPPServer

NS_SERVER = "jabber:server"
NS_DIALBACK = "jabber:server:dialback"
NS_DIALBACK_FEATURE = "urn:xmpp:features:dialback"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"

MAX_PENDING_VERIFIES = 1000

log = logger("xmppd.s2s")


def dialback_key(secret: str, receiving: str, originating: str, stream_id: str) -> str:
    """XEP-0185 s3: HMAC-SHA256 keyed with the hex SHA-256 of the secret over "receiving originating id"."""
    key = hashlib.sha256(secret.encode()).hexdigest().encode()
    return hmac.new(key, f"{receiving} {originating} {stream_id}".encode(), hashlib.sha256).hexdigest()


def s2s_header(*, from_: str | None, to: str | None, id_: str | None) -> bytes:
    """The opening tag of a server stream, declaring the dialback namespace (XEP-0220 s2.1)."""
    attrs = "".join(
        f" {name}='{_escape(value)}'" for name, value in (("from", from_), ("to", to), ("id", id_)) if value
    )
    return (
        f"<?xml version='1.0'?><stream:stream xmlns='{NS_SERVER}' xmlns:stream='{NS_STREAMS}'"
        f" xmlns:db='{NS_DIALBACK}'{attrs} version='1.0'>"
    ).encode()


def _escape(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace("'", "&apos;")


def _db(name: str, **attrs: str) -> etree._Element:
    el = etree.Element(f"{{{NS_DIALBACK}}}{name}", nsmap={"db": NS_DIALBACK})
    for key, value in attrs.items():
        el.set(key.rstrip("_"), value)
    return el


class S2SStream(XMLStream):
    """What incoming and outgoing server streams share: parsing, writing, stream errors, closing."""

    direction = ""

    def __init__(self, manager: S2SManager) -> None:
        self.manager = manager
        self.server = manager.server
        self.tls = False
        self.closed = False
        self.stream_id: str | None = None
        self.peer = ""
        self._parser = self._new_parser()
        self._idle_timer: Any = None
        # server.stats counters of s2s streams (xmppd.stats), kind -> count
        self._stanzas_in, self._stanzas_out = self.server.stats.stanza_counters("s2s")

    def _new_parser(self) -> StreamParser:
        return StreamParser(
            self._stream_start,
            self._element,
            self._stream_end,
            content_ns=NS_SERVER,
            max_stanza_size=self.server.config.get("s2s", "max_stanza_size"),
        )

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.peer = f"{getattr(peer, 'host', peer)}"
        self.touch()

    def log_prefix(self) -> str:
        return f"s2s {self.direction} {self.peer}"

    def data_arrived(self) -> None:
        self.touch()

    def connectionLost(self, reason: object = None) -> None:
        super().connectionLost(reason)
        cancel(self._idle_timer)

    @property
    def ready(self) -> bool:
        """Whether the stream is set up (authenticated); until then the setup timeouts apply, not idling."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def touch(self) -> None:
        """Restart the idle timer: a set-up stream nobody used for ``[s2s] idle_timeout`` is closed."""
        if not self.ready or self.closed:
            return
        timeout = self.server.config.get("s2s", "idle_timeout")
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.reset(timeout)
        else:
            self._idle_timer = self.server.clock.callLater(timeout, self._idle)

    def _idle(self) -> None:
        log.info("s2s {stream}: idle, closing", stream=self.describe())
        self.close()

    def send(self, el: etree._Element) -> None:
        if not self.closed:
            counts, tag = self._stanzas_out, el.tag
            if tag in counts:  # a stanza, not a stream-level element
                counts[tag] += 1
            self.touch()
            self.transport.write(serialize(el))

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    def close(self, condition: str | None = None, text: str | None = None) -> None:
        if self.closed:
            return
        self._ensure_header()
        self.transport.write((stream_error(condition, text) if condition else b"") + STREAM_END)
        self.closed = True
        self.transport.loseConnection()

    def _ensure_header(self) -> None:
        """Only an incoming stream may need to send its header before an error (RFC 6120 s4.9.1.3)."""

    def _restart(self) -> None:
        self._parser.reset()

    def _stream_start(self, attrs: dict[str, str]) -> None:
        raise NotImplementedError

    def _element(self, el: etree._Element) -> None:
        raise NotImplementedError

    def _stream_end(self) -> None:
        self.close()


# -- incoming streams ----------------------------------------------------------------------------------------


class IncomingS2S(S2SStream):
    """A stream another server opened to us (the receiving server of RFC 6120, XEP-0220)."""

    direction = "in"

    def __init__(self, manager: S2SManager) -> None:
        super().__init__(manager)
        self.local: str | None = None  # our domain the peer addressed
        self.remote: str | None = None  # the domain the peer said it is (header 'from')
        self.authenticated: set[str] = set()  # remote domains this stream may send from
        self._header_sent = False
        self._external_ok = False

    def connectionMade(self) -> None:
        super().connectionMade()
        self.manager.incoming.add(self)
        self._auth_timer = self.server.clock.callLater(
            self.server.config.get("s2s", "connect_timeout"), self._auth_timeout
        )

    def connectionLost(self, reason: object = None) -> None:
        if not self.authenticated and reason is not None and hasattr(reason, "getErrorMessage"):
            # A stream that ends before it authenticated (a failed TLS handshake, a peer that gave up)
            # would otherwise leave no trace.
            log.info(
                "s2s in {peer}: connection lost before authentication: {reason}",
                peer=self.peer,
                reason=reason.getErrorMessage(),
            )
        super().connectionLost(reason)
        self.manager.incoming.discard(self)
        if self._auth_timer.active():
            self._auth_timer.cancel()

    @property
    def ready(self) -> bool:
        return bool(self.authenticated)

    def describe(self) -> str:
        return f"in {self.remote or '?'} -> {self.local or '?'} ({self.peer})"

    def _auth_timeout(self) -> None:
        if self.authenticated or self.closed:
            return
        if self._verified_only:
            self.close()  # a stream the peer used only to check dialback keys: done, not an error
        else:
            self.close("connection-timeout", "authenticate in time")

    _verified_only = False

    def _ensure_header(self) -> None:
        if not self._header_sent:
            self._header_sent = True
            self.write(
                s2s_header(
                    from_=self.local or self.server.default_domain,
                    to=self.remote,
                    id_=self.stream_id or secrets.token_urlsafe(12),
                )
            )

    def _stream_start(self, attrs: dict[str, str]) -> None:
        self._header_sent = False
        self.stream_id = secrets.token_urlsafe(16)
        try:
            to = prep_domain(attrs.get("to") or "")
        except JIDError:
            to = attrs.get("to") or ""
        if not self.server.serves(to):
            self._ensure_header()
            raise StreamError("host-unknown", f"{to!r} is not served here" if to else "no 'to'")
        self.local = to
        sender = attrs.get("from")
        if sender:
            try:
                self.remote = prep_domain(sender)
            except JIDError:
                self._ensure_header()
                raise StreamError("invalid-from", "the 'from' is not a domain") from None
        self._ensure_header()
        if not attrs.get("version", "").startswith("1."):
            return  # a pre-XMPP 1.0 peer: no features, dialback straight away (XEP-0220 s2.1)
        self.send(self._features())

    def _features(self) -> etree._Element:
        features = etree.Element(f"{{{NS_STREAMS}}}features", nsmap={"stream": NS_STREAMS})
        config = self.server.config
        if self.authenticated:
            return features
        if not self.tls and self.manager.tls_available:
            starttls = add_child(features, NS_TLS, "starttls")
            if config.get("s2s", "tls_required"):
                add_child(starttls, NS_TLS, "required")
            return features
        self._external_ok = False
        if self.tls and self.remote:
            ok, reason = self.manager.verify_certificate(self.transport.getHandle(), self.remote)
            self._external_ok = ok
            if not ok:
                log.info(
                    "s2s in {peer}: certificate for {remote} does not verify: {reason}",
                    peer=self.peer,
                    remote=self.remote,
                    reason=reason,
                )
        if self._external_ok:
            mechanisms = add_child(features, NS_SASL, "mechanisms")
            add_child(mechanisms, NS_SASL, "mechanism", "EXTERNAL")
        if self.manager.dialback_allowed(self._external_ok):
            add_child(add_child(features, NS_DIALBACK_FEATURE, "dialback"), NS_DIALBACK_FEATURE, "errors")
        return features

    def _element(self, el: etree._Element) -> None:
        ns = etree.QName(el).namespace
        if (
            ns != NS_TLS
            and not self.tls
            and self.manager.tls_available
            and self.server.config.get("s2s", "tls_required")
        ):
            # RFC 6120 s5.3.1: with TLS mandatory, nothing but STARTTLS is accepted before it.
            raise StreamError("policy-violation", "STARTTLS is required")
        counts, tag = self._stanzas_in, el.tag
        if tag in counts:  # keyed by the stanza kinds
            counts[tag] += 1
            self._stanza(el)
            return
        if ns == NS_TLS:
            self._starttls()
        elif ns == NS_SASL:
            self._sasl(el)
        elif ns == NS_DIALBACK:
            name = etree.QName(el).localname
            if name == "result":
                self._db_result(el)
            elif name == "verify":
                self._db_verify(el)
        else:
            raise StreamError("unsupported-stanza-type", f"unexpected <{etree.QName(el).localname}/>")

    def _starttls(self) -> None:
        if self.tls or self.manager.server_tls is None:
            self.send(etree.Element(f"{{{NS_TLS}}}failure", nsmap={None: NS_TLS}))
            self.close()
            return
        self.send(etree.Element(f"{{{NS_TLS}}}proceed", nsmap={None: NS_TLS}))
        self.transport.startTLS(self.manager.server_tls)
        self.tls = True
        self._restart()

    def _sasl(self, el: etree._Element) -> None:
        """XEP-0178: SASL EXTERNAL, for a peer whose certificate verified for its domain."""
        if etree.QName(el).localname != "auth" or el.get("mechanism") != "EXTERNAL" or not self._external_ok:
            self._sasl_failure("invalid-mechanism")
            return
        text = (el.text or "").strip()
        try:
            authzid = base64.b64decode(text, validate=True).decode() if text not in ("", "=") else ""
        except (ValueError, UnicodeDecodeError):
            self._sasl_failure("incorrect-encoding")
            return
        if authzid and authzid != self.remote:
            self._sasl_failure("invalid-authzid")
            return
        self.send(etree.Element(f"{{{NS_SASL}}}success", nsmap={None: NS_SASL}))
        self.authenticated.add(self.remote)
        self.touch()
        log.info(
            "s2s in {peer}: {remote} authenticated with SASL EXTERNAL", peer=self.peer, remote=self.remote
        )
        self._restart()

    def _sasl_failure(self, condition: str) -> None:
        self.server.stats.auth_failed("EXTERNAL", condition)
        failure = etree.Element(f"{{{NS_SASL}}}failure", nsmap={None: NS_SASL})
        add_child(failure, NS_SASL, condition)
        self.send(failure)
        self.close()

    def _db_result(self, el: etree._Element) -> None:
        """XEP-0220 s2.2: the originating server asks to be accepted; check the key with its authority."""
        local, remote, key = el.get("to") or "", el.get("from") or "", (el.text or "").strip()
        try:
            remote = prep_domain(remote)
        except JIDError:
            raise StreamError("invalid-from", "dialback from an invalid domain") from None
        if not self.server.serves(local):
            raise StreamError("host-unknown", f"{local!r} is not served here")
        if not self.manager.dialback_allowed(self._external_ok and remote == self.remote):
            self.send(_db_error("result", local, remote, "not-acceptable"))
            return
        if not key:
            raise StreamError("bad-format", "empty dialback key")
        d = self.manager.verify(local, remote, self.stream_id or "", key)

        def answer(valid: bool) -> None:
            if self.closed:
                return
            self.send(_db("result", from_=local, to=remote, type_="valid" if valid else "invalid"))
            if valid:
                self.authenticated.add(remote)
                self.touch()
                log.info("s2s in {peer}: {remote} authenticated with dialback", peer=self.peer, remote=remote)
            else:
                log.info("s2s in {peer}: dialback key of {remote} is invalid", peer=self.peer, remote=remote)
                self.server.stats.auth_failed("dialback", "not-authorized")
                self.close("not-authorized", "dialback failed")

        def failed(failure: Any) -> None:
            if not self.closed:
                self.send(_db_error("result", local, remote, "remote-server-not-found"))

        d.addCallbacks(answer, failed)

    def _db_verify(self, el: etree._Element) -> None:
        """XEP-0220 s2.4: as the authoritative server, say whether a key we issued is right."""
        receiving, originating = el.get("from") or "", el.get("to") or ""
        stream_id, key = el.get("id") or "", (el.text or "").strip()
        if not self.server.serves(originating):
            raise StreamError("host-unknown", f"{originating!r} is not served here")
        expected = dialback_key(self.manager.secret, receiving, originating, stream_id)
        valid = hmac.compare_digest(expected, key)
        self.send(
            _db(
                "verify", from_=originating, to=receiving, id=stream_id, type_="valid" if valid else "invalid"
            )
        )
        self._verified_only = True

    def _stanza(self, el: etree._Element) -> None:
        if not self.authenticated:
            raise StreamError("not-authorized", "authenticate the stream first")
        try:
            sender, to = parse_jid(el.get("from") or ""), parse_jid(el.get("to") or "")
        except JIDError:
            raise StreamError("improper-addressing", "stanzas need a valid 'from' and 'to'") from None
        if sender.domain not in self.authenticated:
            raise StreamError("invalid-from", f"this stream is not authenticated for {sender.domain}")
        if not self.server.serves(to.domain):
            raise StreamError("host-unknown", f"{to.domain} is not served here")
        self.server.router.route(el)


def _db_error(name: str, local: str, remote: str, condition: str) -> etree._Element:
    el = _db(name, from_=local, to=remote, type_="error")
    error = etree.SubElement(el, "error", type="cancel")
    add_child(error, NS_STANZAS, condition)
    return el


# -- outgoing streams ----------------------------------------------------------------------------------------


class OutgoingS2S(S2SStream):
    """Our stream to another server for one (local, remote) domain pair: negotiates TLS and authenticates
    (SASL EXTERNAL or dialback), then carries stanzas; also carries dialback verify requests."""

    direction = "out"

    @property
    def ready(self) -> bool:
        return self.link.is_authenticated and self.link.stream is self

    def describe(self) -> str:
        return f"out {self.local} -> {self.remote}"

    def __init__(self, manager: S2SManager, link: Link) -> None:
        super().__init__(manager)
        self.link = link
        self.local, self.remote = link.local, link.remote
        self.features_seen = False
        self.peer_verified = False
        self._tried_external = False

    def connectionMade(self) -> None:
        super().connectionMade()
        self.link.stream = self
        self._open()

    def connectionLost(self, reason: object = None) -> None:
        super().connectionLost(reason)
        self.link.stream_lost(self)

    def _open(self) -> None:
        self.write(s2s_header(from_=self.local, to=self.remote, id_=None))

    def _stream_start(self, attrs: dict[str, str]) -> None:
        self.stream_id = attrs.get("id")
        if not attrs.get("version", "").startswith("1."):
            self._start_dialback()  # a pre-1.0 peer offers no features

    def _element(self, el: etree._Element) -> None:
        tag = el.tag
        if tag == f"{{{NS_STREAMS}}}features":
            self._features(el)
        elif tag == f"{{{NS_TLS}}}proceed":
            self.transport.startTLS(self.manager.client_tls(self.remote))
            self.tls = True
            self._restart()
            self._open()
        elif tag == f"{{{NS_TLS}}}failure":
            self.link.fail("remote-server-not-found", "the peer refused STARTTLS")
        elif tag == f"{{{NS_SASL}}}success":
            self._restart()
            self._open()
            self.link.authenticated("SASL EXTERNAL")
        elif tag == f"{{{NS_SASL}}}failure":
            if self.manager.dialback_allowed(self.peer_verified) and self._dialback_offered:
                self._start_dialback()
            else:
                self.link.fail("remote-server-not-found", "the peer refused SASL EXTERNAL")
        elif tag == f"{{{NS_DIALBACK}}}result":
            self._db_result(el)
        elif tag == f"{{{NS_DIALBACK}}}verify":
            self.manager.verify_answered(el)
        elif tag == f"{{{NS_STREAMS}}}error":
            condition = next((etree.QName(c).localname for c in el if etree.QName(c).localname != "text"), "")
            log.info("s2s out {remote}: stream error {condition}", remote=self.remote, condition=condition)
        elif tag in STANZA_KINDS:
            raise StreamError("unsupported-stanza-type", "this stream only carries our stanzas")

    _dialback_offered = False

    def _features(self, features: etree._Element) -> None:
        starttls = features.find(f"{{{NS_TLS}}}starttls")
        if not self.tls:
            if starttls is not None and self.manager.client_tls_available:
                self.send(etree.Element(f"{{{NS_TLS}}}starttls", nsmap={None: NS_TLS}))
                return
            if self.server.config.get("s2s", "tls_required"):
                self.link.fail("remote-server-not-found", "the peer does not offer TLS")
                return
        else:
            ok, reason = self.manager.verify_certificate(self.transport.getHandle(), self.remote)
            self.peer_verified = ok
            if not ok:
                log.info(
                    "s2s out {remote}: certificate does not verify: {reason}",
                    remote=self.remote,
                    reason=reason,
                )
                if self.server.config.get("s2s", "require_valid_certificates"):
                    self.link.fail("remote-server-not-found", f"invalid certificate: {reason}")
                    return
        self.features_seen = True
        self.manager.flush_verifies(self)
        if self.link.is_authenticated:
            return  # the features after SASL success
        mechanisms = [m.text for m in features.iter(f"{{{NS_SASL}}}mechanism")]
        self._dialback_offered = features.find(f"{{{NS_DIALBACK_FEATURE}}}dialback") is not None
        if "EXTERNAL" in mechanisms and not self._tried_external:
            self._tried_external = True
            auth = etree.Element(f"{{{NS_SASL}}}auth", nsmap={None: NS_SASL}, mechanism="EXTERNAL")
            auth.text = base64.b64encode(self.local.encode()).decode()
            self.send(auth)
        elif self._dialback_offered and self.manager.dialback_allowed(self.peer_verified):
            self._start_dialback()
        else:
            self.link.fail("remote-server-not-found", "no usable authentication (EXTERNAL or dialback)")

    def _start_dialback(self) -> None:
        """XEP-0220 s2.1.1: send our key; the peer checks it with our authoritative server (us)."""
        key = dialback_key(self.manager.secret, self.remote, self.local, self.stream_id or "")
        result = _db("result", from_=self.local, to=self.remote)
        result.text = key
        self.send(result)

    def _db_result(self, el: etree._Element) -> None:
        kind = el.get("type")
        if kind == "valid":
            self.link.authenticated("dialback")
        elif kind == "invalid":
            self.link.fail("remote-server-not-found", "the peer rejected our dialback key")
        else:
            self.link.fail("remote-server-not-found", "dialback error from the peer")


def srv_targets(domain: str, xmpps: list[Any], xmpp: list[Any]) -> list[tuple[str, int, bool]]:
    """Where to connect for ``domain``: (host, port, direct TLS) in order. SRV records of
    ``_xmpps-server._tcp`` (XEP-0368) then ``_xmpp-server._tcp`` (RFC 6120 s3.2.1), each by priority and
    then weight (RFC 2782, highest weight first instead of a weighted draw); a "." target means the service
    is not offered. With no usable record: the domain itself on port 5269 (s3.2.2)."""
    from twisted.names import dns

    targets: list[tuple[str, int, bool]] = []
    for answers, direct_tls in ((xmpps, True), (xmpp, False)):
        records = [a.payload for a in answers if a.type == dns.SRV]
        for record in sorted(records, key=lambda r: (r.priority, -r.weight)):
            target = str(record.target).rstrip(".")
            if target:
                targets.append((target, record.port, direct_tls))
    return targets or [(domain, 5269, False)]


class Link:
    """The state of one (local, remote) pair: the queue, the stream, and what happens when it fails."""

    def __init__(self, manager: S2SManager, local: str, remote: str) -> None:
        self.manager = manager
        self.local = local
        self.remote = remote
        self.queue: deque[etree._Element] = deque()
        self.stream: OutgoingS2S | None = None
        self.is_authenticated = False
        self.connecting = False
        self._timeout: Any = None
        self._attempt: defer.Deferred | None = None  # the connection being made

    def send(self, stanza: etree._Element) -> None:
        if self.is_authenticated and self.stream is not None and not self.stream.closed:
            self.stream.send(stanza)
            return
        if len(self.queue) >= self.manager.server.config.get("s2s", "queue_size"):
            self.manager.server.router.bounce(stanza, "resource-constraint", "too many stanzas waiting")
            return
        self.queue.append(stanza)
        self.connect()

    def connect(self) -> None:
        if self.connecting or (self.stream is not None and not self.stream.closed):
            return
        # A stream we closed (idle) may still be waiting for its connectionLost: forget it now, or its
        # loss would be taken for the failure of the new attempt and bounce what is queued.
        self.stream = None
        self.connecting = True
        self.is_authenticated = False
        clock = self.manager.server.clock
        self._timeout = clock.callLater(
            self.manager.server.config.get("s2s", "connect_timeout"), self._timed_out
        )
        self._attempt = self.manager.open(self)
        self._attempt.addErrback(self._connect_failed)

    def _connect_failed(self, failure: Any) -> None:
        if not self.connecting:
            return  # the link failed already (timed out): this attempt was cancelled or ended late
        self.fail("remote-server-not-found", f"cannot connect: {failure.getErrorMessage()}")

    def _timed_out(self) -> None:
        self._timeout = None
        if not self.is_authenticated:
            self.fail("remote-server-timeout", "the stream was not ready in time")

    def authenticated(self, how: str) -> None:
        self.is_authenticated = True
        self.connecting = False
        cancel(self._timeout)
        if self.stream is not None:
            self.stream.touch()  # idling counts from now on
        log.info(
            "s2s out {local} -> {remote}: authenticated with {how}",
            local=self.local,
            remote=self.remote,
            how=how,
        )
        while self.queue and self.stream is not None and not self.stream.closed:
            self.stream.send(self.queue.popleft())

    def fail(self, condition: str, reason: str) -> None:
        """The stream could not be set up: bounce everything waiting (RFC 6120 s10.4.3)."""
        log.info(
            "s2s out {local} -> {remote} failed: {reason}",
            local=self.local,
            remote=self.remote,
            reason=reason,
        )
        self.connecting = False
        cancel(self._timeout)
        attempt, self._attempt = self._attempt, None
        if attempt is not None and not attempt.called:
            attempt.cancel()  # still connecting when the timeout fired: stop trying
        stream, self.stream = self.stream, None
        if stream is not None and not stream.closed:
            stream.close()
        while self.queue:
            self.manager.server.router.bounce(self.queue.popleft(), condition)
        self.manager.link_failed(self, condition)

    def stream_lost(self, stream: OutgoingS2S) -> None:
        if stream is not self.stream:
            return
        self.stream = None
        if not self.is_authenticated and self.connecting:
            self.fail("remote-server-not-found", "the peer closed the connection")
        self.is_authenticated = False
        self.manager.verify_stream_lost(self)


# -- the manager ---------------------------------------------------------------------------------------------


class S2SManager:
    """Federation for the whole server: outgoing links, incoming streams, dialback verification."""

    def __init__(self, server: XMPPServer) -> None:
        self.server = server
        config = server.config
        self.secret = config.get("s2s", "dialback_secret") or secrets.token_hex(32)
        self.links: dict[tuple[str, str], Link] = {}
        self.incoming: set[IncomingS2S] = set()
        self._verifies: dict[tuple[str, str, str], defer.Deferred] = {}
        self._verify_queue: dict[tuple[str, str], list[etree._Element]] = {}
        self.server_tls, self._client_context = self._tls_contexts()
        from xmppd.s2s_identity import load_trust_roots

        # Loaded at start so that a bad [s2s] ca_file stops start-up with a ConfigError.
        self._trust_roots = (
            load_trust_roots(config.get("s2s", "ca_file") or None, config_path=config.path) or []
        )

    # TLS ----------------------------------------

    @property
    def tls_available(self) -> bool:
        return self.server_tls is not None

    @property
    def client_tls_available(self) -> bool:
        return self._client_context is not None

    def _tls_contexts(self) -> tuple[Any, Any]:
        """A server context that asks peers for their certificate (for SASL EXTERNAL, XEP-0178) without
        rejecting unverifiable ones (dialback may still apply), and a client context presenting ours."""
        options = self.server.tls_context
        if options is None:
            return None, None
        from twisted.internet import ssl

        def accept_any(conn: Any, cert: Any, errno: int, depth: int, ok: int) -> bool:
            return True  # verification happens afterwards, in verify_certificate

        server_options = ssl.CertificateOptions(
            privateKey=options.privateKey,
            certificate=options.certificate,
            extraCertChain=options.extraCertChain,
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        )
        context = server_options.getContext()
        context.set_verify(SSL.VERIFY_PEER, accept_any)
        context.set_session_id(b"xmppd-s2s")
        context.set_alpn_select_callback(alpn_selector(b"xmpp-server"))
        client_options = ssl.CertificateOptions(
            privateKey=options.privateKey,
            certificate=options.certificate,
            extraCertChain=options.extraCertChain,
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        )
        client_context = client_options.getContext()
        client_context.set_verify(SSL.VERIFY_PEER, accept_any)
        return server_options, client_context

    def client_tls(self, remote: str) -> _ClientTLS:
        return _ClientTLS(self._client_context, remote)

    def verify_certificate(self, connection: Any, domain: str) -> tuple[bool, str]:
        """Whether the peer's certificate chain verifies for ``domain`` (RFC 6120 s13.7.2)."""
        from xmppd.s2s_identity import peer_chain, verify_peer

        try:
            chain = peer_chain(connection)
        except Exception as e:  # a connection without a peer certificate
            return False, f"no certificate ({e})"
        if not chain:
            return False, "no certificate"
        return verify_peer(chain, domain, self._trust_roots)

    def dialback_allowed(self, certificate_verified: bool) -> bool:
        config = self.server.config
        if not config.get("s2s", "dialback"):
            return False
        return certificate_verified or not config.get("s2s", "require_valid_certificates")

    # routing ----------------------------------------

    def install(self, bus: Any) -> None:
        from xmppd.delivery import CORE_PRIORITY

        bus.hook("route/remote", self.on_route_remote, CORE_PRIORITY, owner="s2s")

    def on_route_remote(self, event: Any) -> bool:
        """A stanza for a domain served neither here nor by a component: send it over s2s."""
        local = event.from_.domain
        self.link(local, event.to.domain).send(event.stanza)
        return True

    def link(self, local: str, remote: str) -> Link:
        link = self.links.get((local, remote))
        if link is None:
            link = self.links[(local, remote)] = Link(self, local, remote)
        return link

    def link_failed(self, link: Link, condition: str) -> None:
        if self.links.get((link.local, link.remote)) is not link:
            return  # an old link: its pair has a new one, with verifications of its own
        del self.links[(link.local, link.remote)]
        for key in [k for k in self._verifies if k[0] == link.local and k[1] == link.remote]:
            self._verifies.pop(key).errback(ConnectionError(condition))
        self._verify_queue.pop((link.local, link.remote), None)

    def verify_stream_lost(self, link: Link) -> None:
        if not link.queue and self.links.get((link.local, link.remote)) is link:
            del self.links[(link.local, link.remote)]

    # connecting ----------------------------------------

    def open(self, link: Link) -> defer.Deferred:
        """Connect to the remote server: ``[s2s.routes]`` first, else DNS SRV (RFC 6120 s3.2)."""
        route = self.server.config.s2s_routes.get(link.remote)
        if route is not None:
            endpoint = clientFromString(self.server.reactor, route)
            return connectProtocol(endpoint, OutgoingS2S(self, link))
        return defer.ensureDeferred(self._connect_by_dns(link))

    async def _connect_by_dns(self, link: Link) -> Any:
        from twisted.names import client as dns_client

        found: dict[bool, list[Any]] = {}
        for service, direct_tls in (("_xmpps-server._tcp.", True), ("_xmpp-server._tcp.", False)):
            try:
                answers, _, _ = await dns_client.lookupService(service + link.remote)
            except Exception:
                answers = []
            found[direct_tls] = answers
        targets = srv_targets(link.remote, found[True], found[False])
        last: Exception | None = None
        for host, port, direct_tls in targets:
            endpoint = HostnameEndpoint(self.server.reactor, host, port, timeout=10)
            if direct_tls:
                if not self.client_tls_available:
                    continue
                endpoint = wrapClientTLS(self.client_tls(link.remote), endpoint)
            stream = OutgoingS2S(self, link)
            stream.tls = direct_tls
            try:
                return await connectProtocol(endpoint, stream)
            except Exception as e:
                last = e
        raise ConnectionError(f"no server of {link.remote} answered ({last})")

    # dialback verification ----------------------------------------

    def verify(self, local: str, remote: str, stream_id: str, key: str) -> defer.Deferred:
        """Ask ``remote``'s authoritative server whether ``key`` is right (XEP-0220 s2.3), over our
        outgoing stream to it; fires with True or False."""
        if len(self._verifies) >= MAX_PENDING_VERIFIES:
            return defer.fail(ConnectionError("too many dialback verifications pending"))
        d: defer.Deferred = defer.Deferred()
        self._verifies[(local, remote, stream_id)] = d
        request = _db("verify", from_=local, to=remote, id=stream_id)
        request.text = key
        link = self.link(local, remote)
        if link.stream is not None and link.stream.features_seen and not link.stream.closed:
            link.stream.send(request)
        else:
            self._verify_queue.setdefault((local, remote), []).append(request)
            link.connect()
        return d

    def flush_verifies(self, stream: OutgoingS2S) -> None:
        for request in self._verify_queue.pop((stream.local, stream.remote), []):
            stream.send(request)

    def verify_answered(self, el: etree._Element) -> None:
        key = (el.get("to") or "", el.get("from") or "", el.get("id") or "")
        d = self._verifies.pop(key, None)
        if d is not None:
            d.callback(el.get("type") == "valid")

    # lifecycle ----------------------------------------

    def close_all(self) -> None:
        for link in list(self.links.values()):
            if link.stream is not None:
                link.stream.close("system-shutdown")
        for stream in list(self.incoming):
            stream.close("system-shutdown")


@implementer(IOpenSSLClientConnectionCreator)
class _ClientTLS:
    """TLS for an outgoing server stream: SNI for the remote domain, our certificate presented, and the
    peer's certificate checked after the handshake by verify_certificate (so dialback can still run)."""

    def __init__(self, context: SSL.Context, server_name: str) -> None:
        self.context = context
        self.server_name = server_name

    def clientConnectionForTLS(self, tls_protocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        connection.set_app_data(tls_protocol)
        connection.set_tlsext_host_name(self.server_name.encode("idna"))
        connection.set_connect_state()
        return connection


class IncomingS2SFactory(Factory):
    noisy = False

    def __init__(self, manager: S2SManager) -> None:
        self.manager = manager

    def buildProtocol(self, addr: Any) -> IncomingS2S | None:
        return admit(self.manager.server, addr, IncomingS2S(self.manager))
