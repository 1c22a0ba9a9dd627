"""BOSH: XMPP over HTTP long polling (XEP-0124 v1.11, with XEP-0206 for XMPP).

``BOSHResource(server)`` is a twisted.web resource (mounted at ``/http-bind`` by xmppd.http.site). Each
BOSH session is a :class:`BOSHSession`, a :class:`~xmppd.stream.c2s.C2SStream` on a fake transport: the
children of each request ``<body/>`` are fed to the ordinary c2s parser (after a synthesized stream header
at creation and on ``xmpp:restart``, XEP-0206 s5), so negotiation, SASL, binding, routing and plugins are
exactly those of a TCP client. What the stream writes is queued and delivered in response bodies.

Transport security: the stream counts as secure (SASL offered, STARTTLS not, PLAIN allowed) when the
request came over HTTPS, when the peer is loopback (a reverse proxy terminating TLS in front of us), or
when ``[http] consider_secure`` is set. Otherwise, with ``[tls] required`` on, the client is offered
STARTTLS, which it cannot do over BOSH: deploy BOSH behind HTTPS.

Limits: request bodies of at most ``MAX_BODY`` bytes (HTTP 413 beyond), ``MAX_SESSIONS`` sessions (new
ones refused with ``remote-connection-failed``), ``MAX_QUEUE`` bytes queued for a client that does not
poll (the session is terminated with ``policy-violation``), ``wait`` at most ``MAX_WAIT`` seconds,
``hold`` at most ``MAX_HOLD``.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from lxml import etree
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from xmppd.log import logger
from xmppd.stream.base import cancel
from xmppd.stream.c2s import NS_CLIENT, C2SStream
from xmppd.stream.sasl import NS_SASL
from xmppd.xml.parser import NS_STREAMS
from xmppd.xml.stanza import add_child
from xmppd.xml.writer import qualify, serialize, stream_error

if TYPE_CHECKING:
    from xmppd.server import XMPPServer

NS_HTTPBIND = "http://jabber.org/protocol/httpbind"
NS_XBOSH = "urn:xmpp:xbosh"
XBOSH = f"{{{NS_XBOSH}}}"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"

MAX_BODY = 1024 * 1024
MAX_SESSIONS = 10000
MAX_QUEUE = 2 * 1024 * 1024
MAX_WAIT = 60
MAX_HOLD = 2
INACTIVITY = 60
MAXPAUSE = 120
POLLING = 2
MAX_RID = 2**53 - 1  # s14.1
BOSH_VERSION = "1.11"

# Stream error conditions that are also BOSH terminal binding conditions (XEP-0124 s17.2); any other
# stream error is reported as remote-stream-error with the <stream:error/> inside the body.
_SAME_CONDITIONS = {"host-unknown", "system-shutdown", "policy-violation", "improper-addressing"}

log = logger("xmppd.bosh")

_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False, remove_blank_text=False
)


# xmlns:stream on the body, as in XEP-0206's examples: features and stream errors use the prefix.
_BODY_NSMAP = {None: NS_HTTPBIND, "xmpp": NS_XBOSH, "stream": NS_STREAMS}


class BadBody(Exception):
    pass


def parse_body(data: bytes) -> etree._Element:
    """The request's <body/>: well-formed, no DOCTYPE (so no entity declarations), right name."""
    try:
        root = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as e:
        raise BadBody(str(e)) from None
    if root.getroottree().docinfo.doctype:
        raise BadBody("DOCTYPE not allowed")
    if root.tag != f"{{{NS_HTTPBIND}}}body":
        raise BadBody("not a BOSH <body/>")
    return root


def body_bytes(attrs: dict[str, str] | None = None, payload: bytes = b"") -> bytes:
    el = etree.Element(f"{{{NS_HTTPBIND}}}body", nsmap=_BODY_NSMAP)
    for key, value in (attrs or {}).items():
        el.set(key, value)
    head = serialize(el)
    if not payload:
        return head
    return head[:-2] + b">" + payload + b"</body>"


def with_ack(data: bytes, ack: int) -> bytes:
    """A response body with an ``ack`` attribute added (XEP-0124 s9.1)."""
    return data.replace(b"<body ", f"<body ack='{ack}' ".encode(), 1)


def terminate_bytes(condition: str | None = None, payload: bytes = b"") -> bytes:
    attrs = {"type": "terminate"}
    if condition:
        attrs["condition"] = condition
    return body_bytes(attrs, payload)


def _int(value: str | None, default: int | None = None) -> int | None:
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        return None
    return number if 0 <= number <= MAX_RID else None


class _Transport:
    """What a BOSHSession's C2SStream writes to: the session's queue."""

    def __init__(self, session: BOSHSession, peer: Any) -> None:
        self.session = session
        self.peer = peer
        self.disconnecting = False

    def write(self, data: bytes) -> None:
        if data:
            self.session._queue(data)

    def writeSequence(self, seq: list[bytes]) -> None:
        for data in seq:
            self.write(data)

    def loseConnection(self) -> None:
        if not self.disconnecting:
            self.disconnecting = True
            self.session._stream_closed()

    abortConnection = loseConnection

    def getPeer(self) -> Any:
        return self.peer

    def getHost(self) -> Any:
        return self.peer

    def getHandle(self) -> None:
        return None  # no TLS connection of our own: no channel binding

    def registerProducer(self, producer: object, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def startTLS(self, ctx: object) -> None:
        raise RuntimeError("STARTTLS is not possible over BOSH")


class BOSHSession(C2SStream):
    """One BOSH session (XEP-0124 s7) carrying one XMPP c2s stream (XEP-0206)."""

    kind = "bosh"

    def __init__(
        self,
        resource: BOSHResource,
        *,
        to: str,
        wait: int,
        hold: int,
        lang: str,
        secure: bool,
        rid: int,
        peer: Any,
    ) -> None:
        super().__init__(resource.server, direct_tls=secure)
        self.resource = resource
        self.sid = secrets.token_hex(16)  # 128 random bits
        self.to = to
        self.wait = wait
        self.hold = hold
        self.requests = hold + 1
        self.inactivity = INACTIVITY
        self.lang = lang or "en"
        self.rid = rid - 1  # the last rid processed in order
        self.terminated = False
        self._held: list[tuple[int, Any, Any]] = []  # (rid, request, wait timer), oldest first
        self._buffered: dict[int, tuple[Any, etree._Element]] = {}  # out-of-order requests (s14.2)
        self._responses: OrderedDict[int, bytes] = OrderedDict()  # sent responses, for s14.3
        self.acks = False  # s9: the client asked for acknowledgements (ack='1' at creation)
        self._out: list[bytes] = []
        self._out_size = 0
        self._end: bytes | None = None  # the terminate body, once the stream ended
        self._inactivity_timer = None
        self._processing = False
        self.makeConnection(_Transport(self, peer))

    # -- framing (C2SStream hooks) ------------------------------------------------------------------------

    def frame_header(self, from_: str) -> bytes:
        return b""  # the body's attributes carry the stream header (XEP-0206 s5)

    def frame_element(self, el: etree._Element) -> bytes:
        if isinstance(el.tag, str) and el.tag[0] != "{":
            return serialize(qualify(el, NS_CLIENT))  # stanzas are qualified by jabber:client (XEP-0206 s6)
        return serialize(el)

    def frame_close(self, condition: str | None, text: str | None) -> bytes:
        if condition is None:
            self._end = terminate_bytes()
        elif condition in _SAME_CONDITIONS:
            self._end = terminate_bytes(condition)
        else:
            self._end = terminate_bytes("remote-stream-error", stream_error(condition, text))
        return b""

    def _features(self, host: Any) -> etree._Element:
        features = super()._features(host)
        # The transport gives SASL no TLS connection (no channel binding); PLAIN is still fine when secure.
        if self.tls and self._sasl is not None and not self._sasl.tls:
            self._sasl.tls = True
            mechs = features.find(f"{{{NS_SASL}}}mechanisms")
            if mechs is not None:
                add_child(mechs, NS_SASL, "mechanism", "PLAIN")
        return features

    # -- output queue -------------------------------------------------------------------------------------

    def _queue(self, data: bytes) -> None:
        if self.terminated or self._end is not None:
            return
        self._out.append(data)
        self._out_size += len(data)
        if self._out_size > MAX_QUEUE:
            log.info("bosh {sid} ({jid}) does not poll; terminating", sid=self.sid, jid=self.jid)
            self._out, self._out_size = [], 0
            self._end = terminate_bytes("policy-violation")
            self.server.clock.callLater(0, self.terminate)  # not from inside the parser's callbacks
            return
        self._flush()

    def _flush(self) -> None:
        """Answer held requests: the oldest with what is queued; any beyond ``hold`` with an empty body."""
        if self._end is not None:
            return
        if self._out and self._held:
            payload = b"".join(self._out)
            self._out, self._out_size = [], 0
            self._answer_oldest(body_bytes(payload=payload))
        while len(self._held) > self.hold:
            self._answer_oldest(body_bytes())

    def _answer_oldest(self, data: bytes) -> None:
        rid, request, timer = self._held.pop(0)
        cancel(timer)
        self._respond(rid, request, data)
        if not self._held:
            self._start_inactivity(self.inactivity)

    def _respond(self, rid: int | None, request: Any, data: bytes) -> None:
        if self.acks and rid is not None and rid < self.rid:
            # s9.1: answering a request older than the newest one received: say how far we got.
            data = with_ack(data, self.rid)
        if rid is not None:
            self._responses[rid] = data
            while len(self._responses) > self.requests + 1:
                self._responses.popitem(last=False)
        self.resource.finish(request, data)

    # -- requests ------------------------------------------------------------------------------------------

    def handle(self, request: Any, body: etree._Element, rid: int) -> bytes | int:
        """A request for this session (XEP-0124 s8); returns the response or NOT_DONE_YET."""
        if self.terminated:
            return terminate_bytes("item-not-found")
        if rid <= self.rid:
            # s14.3: a repeated request (its response was lost) gets the same response again.
            cached = self._responses.get(rid)
            if cached is not None:
                return cached
            for i, (held_rid, _old, timer) in enumerate(self._held):
                if held_rid == rid:  # the client gave up on the held request and resent it
                    self._held[i] = (rid, request, timer)
                    return NOT_DONE_YET
            return self._fail("item-not-found")
        if rid in self._buffered:
            self._buffered[rid] = (request, body)  # resent while waiting for an earlier rid
            return NOT_DONE_YET
        if rid > self.rid + self.requests:
            return self._fail("item-not-found")  # s14.2: outside the window
        if rid > self.rid + 1:
            # s14.2: out of order within the window; processed once the missing ones arrive.
            if len(self._held) + len(self._buffered) + 1 > self.requests:
                return self._fail("policy-violation")  # s11: overactive
            self._buffered[rid] = (request, body)
            self._stop_inactivity()
            return NOT_DONE_YET
        if len(self._held) + len(self._buffered) + 1 > self.requests:
            return self._fail("policy-violation")  # s11: more simultaneous requests than 'requests'
        self._process(rid, request, body)
        while self.rid + 1 in self._buffered and not self.terminated:
            next_request, next_body = self._buffered.pop(self.rid + 1)
            self._process(self.rid + 1, next_request, next_body)
        return NOT_DONE_YET

    def _process(self, rid: int, request: Any, body: etree._Element) -> None:
        self.rid = rid
        acked = _int(body.get("ack"))
        if self.acks and acked is not None:
            # s9.2: the client has every response up to 'ack'; they need not be kept for resending.
            for old in [r for r in self._responses if r <= acked]:
                del self._responses[old]
        self._stop_inactivity()
        if body.get(f"{XBOSH}restart") == "true":
            self._restart()  # XEP-0206 s5: a new stream, announced by the client
            self._feed_header()
        self._processing = True
        try:
            for child in body:
                if self._end is not None:
                    break
                if isinstance(child.tag, str):
                    self.dataReceived(serialize(child))
        finally:
            self._processing = False
        if self._end is not None:
            self._respond(rid, request, self._end)
            self.terminate()
            return
        if body.get("type") == "terminate":
            # s13: answer every request, end the session; the stream's end makes the client unavailable.
            self._respond(rid, request, terminate_bytes())
            self.terminate()
            return
        timer = self.server.clock.callLater(self.wait, self._wait_expired, rid)
        self._held.append((rid, request, timer))
        pause = _int(body.get("pause"))
        if pause is not None and pause > 0:
            # s10: answer everything now; the session may sleep up to maxpause.
            while self._held:
                self._answer_oldest(body_bytes(payload=self._take_output()))
            self._start_inactivity(min(pause, MAXPAUSE))
            return
        self._flush()

    def _take_output(self) -> bytes:
        payload = b"".join(self._out)
        self._out, self._out_size = [], 0
        return payload

    def _wait_expired(self, rid: int) -> None:
        for i, (held_rid, request, _timer) in enumerate(self._held):
            if held_rid == rid:
                del self._held[i]
                self._respond(rid, request, body_bytes())
                break
        if not self._held:
            self._start_inactivity(self.inactivity)

    def request_gone(self, request: Any) -> None:
        """The HTTP connection of a held request was lost."""
        for i, (_rid, held, timer) in enumerate(self._held):
            if held is request:
                cancel(timer)
                del self._held[i]
                break
        if not self._held and not self.terminated:
            self._start_inactivity(self.inactivity)

    def _feed_header(self) -> None:
        self.dataReceived(
            (
                "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
                f" to='{_escape(self.to)}' version='1.0' xml:lang='{_escape(self.lang)}'>"
            ).encode()
        )

    def start(self, request: Any) -> bytes | int:
        """The session creation response (s7.2, XEP-0206 s5) is sent with the first features."""
        self._feed_header()
        attrs = {
            "sid": self.sid,
            "wait": str(self.wait),
            "hold": str(self.hold),
            "requests": str(self.requests),
            "inactivity": str(self.inactivity),
            "polling": str(POLLING),
            "maxpause": str(MAXPAUSE),
            "ver": BOSH_VERSION,
            "from": self.host or self.to,
            "authid": self.id,
            f"{XBOSH}version": "1.0",
            f"{XBOSH}restartlogic": "true",
        }
        if self.acks:
            attrs["ack"] = str(self.rid + 1)  # s9.1: acknowledgements are on; this is the creation rid
        if self._end is not None:
            data = self._end
            self.terminate()
            return data
        data = body_bytes(attrs, self._take_output())
        self._responses[self.rid + 1] = data
        self.rid += 1
        self._start_inactivity(self.inactivity)
        return data

    # -- ending --------------------------------------------------------------------------------------------

    def _fail(self, condition: str) -> bytes:
        data = terminate_bytes(condition)
        self.terminate(condition)
        return data

    def _stream_closed(self) -> None:
        """The c2s stream closed itself (stream error, </stream:stream>): end the session."""
        if self._end is None:
            self._end = terminate_bytes()
        if not self._processing:
            self.terminate()  # else _process answers its request with the end, then terminates

    def terminate(self, condition: str | None = None) -> None:
        """End the session: answer every pending request, end the c2s session (unavailable presence)."""
        if self.terminated:
            return
        self.terminated = True
        end = self._end or terminate_bytes(condition)
        self._end = end
        self._stop_inactivity()
        held, self._held = self._held, []
        for rid, request, timer in held:
            cancel(timer)
            self._respond(rid, request, end)
        buffered, self._buffered = self._buffered, {}
        for rid, (request, _body) in buffered.items():
            self._respond(rid, request, end)
        self.resource.sessions.pop(self.sid, None)
        if not self.closed:
            self.closed = True
        self.connectionLost(None)

    def _start_inactivity(self, seconds: float) -> None:
        self._stop_inactivity()
        if not self.terminated:
            self._inactivity_timer = self.server.clock.callLater(seconds, self._inactive)

    def _stop_inactivity(self) -> None:
        cancel(self._inactivity_timer)
        self._inactivity_timer = None

    def _inactive(self) -> None:
        self._inactivity_timer = None
        log.info("bosh {sid} ({jid}) inactive; terminating", sid=self.sid, jid=self.jid)
        self.terminate()

    def __repr__(self) -> str:
        return f"<BOSHSession {self.sid} {self.jid or self.peer}>"


def _escape(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace("'", "&apos;").replace('"', "&quot;")


class BOSHResource(Resource):
    """The BOSH connection manager endpoint (XEP-0124), usually at /http-bind."""

    isLeaf = True

    def __init__(self, server: XMPPServer) -> None:
        super().__init__()
        self.server = server
        self.sessions: dict[str, BOSHSession] = {}

    def _http_config(self) -> dict[str, Any]:
        sections = getattr(self.server.config, "sections", {}) or {}
        return sections.get("http", {}) or {}

    # -- HTTP ----------------------------------------------------------------------------------------------

    def _cors(self, request: Any) -> None:
        origin = request.getHeader(b"origin")
        if origin is None:
            return
        allowed = self._http_config().get("cors_origins", []) or []
        text = origin.decode("latin-1")
        if "*" in allowed:
            value = b"*"
        elif text in allowed:
            value = origin
            request.setHeader(b"vary", b"Origin")
        else:
            return
        request.setHeader(b"access-control-allow-origin", value)
        request.setHeader(b"access-control-allow-methods", b"POST, OPTIONS")
        request.setHeader(b"access-control-allow-headers", b"Content-Type")
        request.setHeader(b"access-control-max-age", b"86400")

    def render_OPTIONS(self, request: Any) -> bytes:
        self._cors(request)
        request.setResponseCode(204)
        return b""

    def render_GET(self, request: Any) -> bytes:
        request.setResponseCode(405)
        request.setHeader(b"allow", b"POST, OPTIONS")
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"xmppd BOSH endpoint (XEP-0124, XEP-0206): POST <body/> elements here.\n"

    def render_POST(self, request: Any) -> bytes | int:
        self._cors(request)
        request.setHeader(b"content-type", b"text/xml; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        data = request.content.read(MAX_BODY + 1)
        if len(data) > MAX_BODY:
            request.setResponseCode(413)
            return terminate_bytes("policy-violation")
        try:
            body = parse_body(data)
        except BadBody as e:
            log.debug("bosh: bad request: {error}", error=str(e))
            return terminate_bytes("bad-request")
        rid = _int(body.get("rid"))
        if rid is None or rid == 0:
            return terminate_bytes("bad-request")
        sid = body.get("sid")
        if sid is None:
            return self._create(request, body, rid)
        session = self.sessions.get(sid)
        if session is None:
            return terminate_bytes("item-not-found")  # s17.2: unknown sid
        # Registered first: the request may be answered (finished) before handle() returns.
        request.notifyFinish().addErrback(lambda _f: session.request_gone(request))
        return session.handle(request, body, rid)

    def finish(self, request: Any, data: bytes) -> None:
        """Answer a held request (unless its connection is gone)."""
        if getattr(request, "_disconnected", False) or getattr(request, "finished", False):
            return
        request.write(data)
        request.finish()

    # -- sessions ------------------------------------------------------------------------------------------

    def _secure(self, request: Any) -> bool:
        if self._http_config().get("consider_secure", False):
            return True
        is_secure = getattr(request, "isSecure", None)
        if is_secure is not None and is_secure():
            return True
        host = getattr(request.getClientAddress(), "host", None)
        try:
            return host is not None and ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def _create(self, request: Any, body: etree._Element, rid: int) -> bytes | int:
        """Session creation (XEP-0124 s7.1, XEP-0206 s5)."""
        if len(self.sessions) >= MAX_SESSIONS:
            return terminate_bytes("remote-connection-failed")
        to = body.get("to")
        if not to:
            return terminate_bytes("improper-addressing")
        wait = _int(body.get("wait"), MAX_WAIT)
        hold = _int(body.get("hold"), 1)
        if wait is None or hold is None:
            return terminate_bytes("bad-request")
        version = body.get(f"{XBOSH}version")
        if version is not None and not version.startswith("1."):
            return terminate_bytes("undefined-condition")
        session = BOSHSession(
            self,
            to=to,
            wait=min(wait, MAX_WAIT),
            hold=min(hold, MAX_HOLD),
            lang=body.get(XML_LANG) or "en",
            secure=self._secure(request),
            rid=rid,
            peer=request.getClientAddress(),
        )
        session.acks = body.get("ack") == "1"
        self.sessions[session.sid] = session
        return session.start(request)
