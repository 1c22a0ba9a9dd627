"""A raw-socket XMPP client for tests that need to send exactly the bytes they choose.

It speaks plain TCP, upgrades with STARTTLS (or starts with direct TLS) through pyOpenSSL in memory-BIO
mode, so the test can read TLS details a real client would use (tls-exporter keying material, the server
certificate for tls-server-end-point), and parses what the server sends with an lxml pull parser into
first-level elements. It knows just enough XMPP to log in (SCRAM-SHA-256[-PLUS], PLAIN) and bind.

Every read has a timeout; :meth:`RawClient.close` closes the socket without a stream end (an abrupt
disconnect), :meth:`RawClient.end_stream` sends ``</stream:stream>`` first.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import time
from typing import Any

from lxml import etree
from OpenSSL import SSL

from xmppd.testing.scram import ScramClient

NS_STREAMS = "http://etherx.jabber.org/streams"
NS_CLIENT = "jabber:client"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_STREAM_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_SASL_CB = "urn:xmpp:sasl-cb:0"

EXPORTER_LABEL = b"EXPORTER-Channel-Binding"


def stream_header(to: str = "localhost", ns: str = NS_CLIENT, version: str = "1.0") -> bytes:
    return (
        f"<?xml version='1.0'?><stream:stream to='{to}' xmlns='{ns}' "
        f"xmlns:stream='{NS_STREAMS}' version='{version}' xml:lang='en'>"
    ).encode()


def local_name(el: etree._Element) -> str:
    return etree.QName(el).localname


def condition_of(el: etree._Element, ns: str) -> str | None:
    """The first child of ``el`` in namespace ``ns`` (a stream, stanza or SASL error condition)."""
    for child in el.iter(f"{{{ns}}}*"):
        if child is not el and local_name(child) != "text":
            return local_name(child)
    return None


def stanza_error(el: etree._Element) -> str | None:
    """The defined condition of a stanza error (``<message type='error'>`` etc.), or None."""
    error = el.find(f"{{{NS_CLIENT}}}error")
    return None if error is None else condition_of(error, NS_STANZAS)


class StreamClosed(Exception):
    """The server ended the stream (``</stream:stream>``) or closed the connection."""


class RawClient:
    """One client connection; ``port`` on ``host``. ``cafile`` is the certificate to trust for TLS."""

    def __init__(
        self,
        port: int,
        host: str = "127.0.0.1",
        *,
        cafile: str | None = None,
        direct_tls: bool = False,
        timeout: float = 5.0,
    ) -> None:
        self.timeout = timeout
        self.cafile = cafile
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.tls: SSL.Connection | None = None
        self.eof = False  # the server closed the connection
        self.stream_ended = False  # the server sent </stream:stream>
        self.header: dict[str, str] | None = None
        self.received = b""  # every byte received (after TLS decryption), for assertions
        self._elements: list[etree._Element] = []
        self._reset_parser()
        if direct_tls:
            self._handshake()

    # -- transport ----------------------------------------------------------------------------------

    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        if self.tls is None:
            self.sock.sendall(data)
        else:
            self.tls.sendall(data)
            self._flush_tls()

    def _flush_tls(self) -> None:
        assert self.tls is not None
        while True:
            try:
                out = self.tls.bio_read(65536)
            except SSL.WantReadError:
                return
            self.sock.sendall(out)

    def _recv_raw(self, deadline: float) -> bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no data from the server in time")
        self.sock.settimeout(remaining)
        try:
            return self.sock.recv(65536)
        except TimeoutError:
            raise TimeoutError("no data from the server in time") from None
        except ConnectionResetError:
            return b""

    def recv(self, timeout: float | None = None) -> bytes:
        """Some bytes from the server (decrypted), b"" at end of connection; TimeoutError if none come."""
        if self.eof:
            return b""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        if self.tls is None:
            data = self._recv_raw(deadline)
        else:
            while True:
                try:
                    data = self.tls.recv(65536)
                    break
                except SSL.WantReadError:
                    self._flush_tls()
                    raw = self._recv_raw(deadline)
                    if not raw:
                        data = b""
                        break
                    self.tls.bio_write(raw)
                except (SSL.ZeroReturnError, SSL.SysCallError):
                    data = b""
                    break
        if not data:
            self.eof = True
        self.received += data
        return data

    def _handshake(self) -> None:
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        if self.cafile:
            ctx.load_verify_locations(self.cafile)
            ctx.set_verify(SSL.VERIFY_PEER, lambda conn, cert, errno, depth, ok: bool(ok))
        conn = SSL.Connection(ctx, None)
        conn.set_tlsext_host_name(b"localhost")
        conn.set_connect_state()
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                conn.do_handshake()
                break
            except SSL.WantReadError:
                while True:
                    try:
                        out = conn.bio_read(65536)
                    except SSL.WantReadError:
                        break
                    self.sock.sendall(out)
                raw = self._recv_raw(deadline)
                if not raw:
                    raise StreamClosed("connection closed during the TLS handshake") from None
                conn.bio_write(raw)
        self.tls = conn
        self._flush_tls()

    def close(self) -> None:
        """Close the socket at once, without ``</stream:stream>`` (an abrupt disconnect)."""
        try:
            self.sock.close()
        except OSError:
            pass

    # -- XML ----------------------------------------------------------------------------------------

    def _reset_parser(self) -> None:
        self._parser = etree.XMLPullParser(events=("start", "end"), resolve_entities=False, no_network=True)
        self._depth = 0

    def _feed(self, data: bytes) -> None:
        self._parser.feed(data)
        for event, el in self._parser.read_events():
            if event == "start":
                self._depth += 1
                if self._depth == 1:
                    self.header = dict(el.attrib)
            else:
                self._depth -= 1
                if self._depth == 1:
                    el.getparent().remove(el)
                    self._elements.append(el)
                elif self._depth == 0:
                    self.stream_ended = True

    def read_header(self, timeout: float | None = None) -> dict[str, str]:
        """Wait for the server's stream header and return its attributes."""
        self.header = None
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while self.header is None:
            if self.eof:
                raise StreamClosed("connection closed before the stream header")
            self._feed(self.recv(max(0.0, deadline - time.monotonic())))
        return self.header

    def next_element(self, timeout: float | None = None) -> etree._Element:
        """The next first-level element the server sends; StreamClosed once the stream is over."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self._elements:
            if self.stream_ended or self.eof:
                raise StreamClosed("the server ended the stream")
            data = self.recv(max(0.0, deadline - time.monotonic()))
            if data:
                self._feed(data)
        return self._elements.pop(0)

    def expect(self, tag: str, timeout: float | None = None) -> etree._Element:
        """The next element, which must have the (Clark-notation) ``tag``."""
        el = self.next_element(timeout)
        assert el.tag == tag, f"expected {tag}, got {etree.tostring(el).decode()}"
        return el

    def wait_for(self, tag: str, timeout: float | None = None) -> etree._Element:
        """The next element with the (Clark-notation) ``tag``, skipping others (presence, ...)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            el = self.next_element(max(0.0, deadline - time.monotonic()))
            if el.tag == tag:
                return el

    def expect_stream_error(self, timeout: float | None = None) -> str:
        """Read until ``<stream:error/>``, check the stream is then closed, return the condition."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            el = self.next_element(max(0.0, deadline - time.monotonic()))
            if el.tag == f"{{{NS_STREAMS}}}error":
                break
        condition = condition_of(el, NS_STREAM_ERRORS)
        self.wait_closed(max(0.5, deadline - time.monotonic()))
        assert self.stream_ended, f"no </stream:stream> after the stream error; got {self.received[-300:]!r}"
        return condition

    def wait_closed(self, timeout: float | None = None) -> None:
        """Read (and parse what is parseable) until the server closes the connection."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self.eof:
            data = self.recv(max(0.0, deadline - time.monotonic()))
            if data and not self.stream_ended:
                try:
                    self._feed(data)
                except etree.XMLSyntaxError:
                    pass

    def silent_for(self, seconds: float) -> bool:
        """True if the server sends nothing (and keeps the connection open) for ``seconds``."""
        try:
            data = self.recv(seconds)
        except TimeoutError:
            return True
        if data:
            self._feed(data)
        return False

    # -- negotiation ----------------------------------------------------------------------------------

    def open_stream(self, to: str = "localhost") -> etree._Element:
        """Send a stream header; return the features the server offers."""
        self._reset_parser()
        self.send(stream_header(to))
        self.read_header()
        return self.expect(f"{{{NS_STREAMS}}}features")

    def starttls(self) -> etree._Element:
        """STARTTLS (RFC 6120 s5) on a fresh stream; returns the features of the new stream."""
        self.open_stream()
        self.send(f"<starttls xmlns='{NS_TLS}'/>")
        self.expect(f"{{{NS_TLS}}}proceed")
        self._handshake()
        return self.open_stream()

    def exporter(self) -> bytes:
        """RFC 9266 tls-exporter channel binding data of this connection."""
        assert self.tls is not None
        return self.tls.export_keying_material(EXPORTER_LABEL, 32)

    def server_end_point(self) -> bytes:
        """RFC 5929 tls-server-end-point data (SHA-256 of the server certificate, signed with SHA-256)."""
        assert self.tls is not None
        cert = self.tls.get_peer_certificate().to_cryptography()
        from cryptography.hazmat.primitives import serialization

        return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()

    def auth_plain(self, user: str, password: str) -> tuple[bool, str | None]:
        """SASL PLAIN; returns (success, failure condition)."""
        payload = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        self.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{payload}</auth>")
        return self._sasl_outcome(self.next_element())

    def auth_scram(
        self,
        user: str,
        password: str,
        *,
        mechanism: str = "SCRAM-SHA-256",
        cb_type: str | None = None,
        cb_data: bytes = b"",
        gs2_header: str | None = None,
    ) -> tuple[bool, str | None]:
        """A SCRAM exchange (RFC 5802); with ``cb_type`` the client asks for channel binding ("p=").

        ``gs2_header`` overrides the GS2 header (e.g. "y,," for a client that supports channel binding
        but believes the server does not).
        """
        hash_name = mechanism.removesuffix("-PLUS").removeprefix("SCRAM-")
        gs2 = gs2_header or (f"p={cb_type},," if cb_type else "n,,")
        scram = ScramClient(user, password, hash_name, gs2_header=gs2, cb_data=cb_data)
        auth = base64.b64encode(scram.first()).decode()
        self.send(f"<auth xmlns='{NS_SASL}' mechanism='{mechanism}'>{auth}</auth>")
        el = self.next_element()
        if local_name(el) != "challenge":
            return self._sasl_outcome(el)
        final = base64.b64encode(scram.final(base64.b64decode(el.text))).decode()
        self.send(f"<response xmlns='{NS_SASL}'>{final}</response>")
        ok, condition = self._sasl_outcome(self.next_element())
        if ok:
            assert scram.verify(self._success_data.encode()), "the server's signature does not verify"
        return ok, condition

    _success_data = ""

    def _sasl_outcome(self, el: etree._Element) -> tuple[bool, str | None]:
        if el.tag == f"{{{NS_SASL}}}success":
            self._success_data = base64.b64decode(el.text or "").decode()
            return True, None
        assert el.tag == f"{{{NS_SASL}}}failure", etree.tostring(el)
        return False, condition_of(el, NS_SASL)

    def bind(self, resource: str | None = None) -> str:
        """Restart the stream after SASL success and bind a resource; returns the full JID."""
        features = self.open_stream()
        assert features.find(f"{{{NS_BIND}}}bind") is not None, etree.tostring(features)
        res = f"<resource>{resource}</resource>" if resource else ""
        self.send(f"<iq type='set' id='bind1'><bind xmlns='{NS_BIND}'>{res}</bind></iq>")
        result = self.expect(f"{{{NS_CLIENT}}}iq")
        assert result.get("type") == "result", etree.tostring(result)
        return result.findtext(f".//{{{NS_BIND}}}jid")

    def login(self, user: str, password: str, resource: str | None = None) -> str:
        """STARTTLS, SCRAM-SHA-256, bind and initial presence; returns the full JID."""
        self.starttls()
        ok, condition = self.auth_scram(user, password)
        assert ok, condition
        jid = self.bind(resource)
        self.send("<presence/>")
        return jid

    def end_stream(self) -> None:
        self.send("</stream:stream>")

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
