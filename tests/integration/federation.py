"""Helpers for federation tests: xmppd servers on loopback that reach each other through ``[s2s.routes]``,
slixmpp clients that trust a given certificate, fake s2s peers that misbehave on purpose, and a raw s2s
connection for stream-level tests.

Each server listens for s2s on a port chosen before it starts (the peers' routes must name it), and for
c2s on a port the OS picks. ``FakePeer`` is a loopback TCP server run in a thread: it accepts connections
and then closes them at once (``"close"``), answers with bytes that are not XML (``"garbage"``) or never
answers (``"silent"``), and records what the server sent it. ``RawS2S`` opens a server stream with the
exact bytes a test writes (STARTTLS through the ssl module) and parses what comes back.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lxml import etree
from slixclient import TIMEOUT, Client, Clients
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from xmppd.testing.process import ServerProcess

NS_CLIENT = "jabber:client"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (at the time of asking)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def route(port: int) -> str:
    """An ``[s2s.routes]`` endpoint for a port on loopback."""
    return f"tcp:host=127.0.0.1:port={port}"


def server_config(
    domain: str,
    s2s_port: int,
    routes: dict[str, int],
    *,
    s2s: dict[str, Any] | None = None,
    tls: tuple[Path, Path] | None = None,
) -> dict[str, Any]:
    """A ServerProcess configuration serving ``domain`` with its s2s listener on ``s2s_port`` and the
    given routes (remote domain -> s2s port on loopback); ``tls`` is a (certificate, key) pair, else the
    server makes a self-signed certificate."""
    config: dict[str, Any] = {
        "server": {"domains": [domain]},
        "listen": {"s2s": [f"tcp:{s2s_port}:interface=127.0.0.1"]},
        "s2s": {"routes": {d: route(p) for d, p in routes.items()}, **(s2s or {})},
    }
    if tls is not None:
        config["tls"] = {"certificate": str(tls[0]), "key": str(tls[1])}
    return config


def make_server(directory: Path, config: dict[str, Any]) -> ServerProcess:
    """A ServerProcess (not started) in ``directory``, created if needed."""
    directory.mkdir(parents=True, exist_ok=True)
    return ServerProcess(directory, config)


def start_all(*starts: Callable[[], Any]) -> None:
    """Run several start functions concurrently (ServerProcess.start, ProsodyServer.start: each waits for
    its listeners); the first error is raised here, in the test's thread."""
    errors: list[BaseException] = []

    def call(start: Callable[[], Any]) -> None:
        try:
            start()
        except BaseException as e:  # re-raised below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=call, args=(start,)) for start in starts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def log_lines(process: ServerProcess, *words: str) -> list[str]:
    """The lines of the server's log that contain every one of ``words``."""
    return [line for line in process.log().splitlines() if all(w in line for w in words)]


# -- clients -----------------------------------------------------------------------------------------------


class FedClient(Client):
    """A slixclient Client that also keeps every message stanza it receives, errors included, once each
    (``inbox``), and every presence (``presences``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()
        self.presences: list[Any] = []
        self.register_handler(
            Callback("all messages", MatchXPath(f"{{{NS_CLIENT}}}message"), self.inbox.put_nowait)
        )
        self.add_event_handler("presence", self.presences.append)

    async def next_stanza(self, timeout: float = TIMEOUT) -> Any:
        return await asyncio.wait_for(self.inbox.get(), timeout)

    async def nothing_more(self, seconds: float = 0.5) -> None:
        """Assert no further message arrives within ``seconds``."""
        try:
            extra = await asyncio.wait_for(self.inbox.get(), seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected message: {extra}")


class FedClients(Clients):
    """Clients for one server, trusting ``cafile`` (the server's self-signed certificate or a test CA)."""

    def __init__(self, proc: ServerProcess, cafile: Path | None = None) -> None:
        super().__init__(proc)
        self.cafile = cafile or proc.data_dir / "selfsigned.crt"

    def client(self, jid: str, password: str, **kwargs: Any) -> FedClient:
        client = FedClient(jid, password, self.cafile, **kwargs)
        self.clients.append(client)
        return client


def error_condition(stanza: Any) -> str | None:
    """The defined condition of an error stanza received by slixmpp, or None if it is no error."""
    if stanza["type"] != "error":
        return None
    return stanza["error"]["condition"]


# -- fake peers --------------------------------------------------------------------------------------------


class FakePeer:
    """A TCP server on loopback that plays a broken XMPP server: ``behaviour`` is ``"close"`` (accept, then
    close at once), ``"garbage"`` (send bytes that are not XML, then read until the other side closes) or
    ``"silent"`` (read until the other side closes, never write). ``received`` holds, per connection,
    everything the server under test sent; ``ended`` counts connections the other side closed."""

    GARBAGE = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"

    def __init__(self, behaviour: str) -> None:
        assert behaviour in ("close", "garbage", "silent")
        self.behaviour = behaviour
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.ended = 0
        self._lock = threading.Lock()
        self._stopped = False
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def connections(self) -> int:
        return len(self.received)

    def _accept(self) -> None:
        while not self._stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                index = len(self.received)
                self.received.append(b"")
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn, index), daemon=True).start()

    def _serve(self, conn: socket.socket, index: int) -> None:
        try:
            if self.behaviour == "close":
                conn.close()
                return
            if self.behaviour == "garbage":
                conn.sendall(self.GARBAGE)
            conn.settimeout(30)
            while True:
                data = conn.recv(65536)
                if not data:
                    with self._lock:
                        self.ended += 1
                    return
                with self._lock:
                    self.received[index] += data
        except OSError:
            return
        finally:
            conn.close()

    def close(self) -> None:
        self._stopped = True
        self.sock.close()
        with self._lock:
            for conn in self._conns:
                try:
                    conn.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv
                except OSError:
                    pass


# -- a raw s2s connection ----------------------------------------------------------------------------------

NS_STREAMS = "http://etherx.jabber.org/streams"
NS_SERVER = "jabber:server"
NS_DIALBACK = "jabber:server:dialback"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_STREAM_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"


class StreamClosed(Exception):
    """The server ended the stream or closed the connection."""


class RawS2S:
    """A server-to-server connection that sends exactly the bytes a test chooses and parses what comes
    back into the stream header and first-level elements. Every read has a timeout."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self.sock: socket.socket = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.header: dict[str, str] | None = None
        self.ended = False  # the server sent </stream:stream>
        self._reset()

    def _reset(self) -> None:
        self._parser = etree.XMLPullParser(events=("start", "end"))
        self._depth = 0
        self._elements: list[etree._Element] = []
        self.header = None

    def send(self, data: str | bytes) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def open(self, to: str, from_: str | None = None, version: str | None = "1.0") -> dict[str, str]:
        """Send a stream header (a fresh stream: after TLS or SASL too); returns the server's header."""
        self._reset()
        attrs = f" to='{to}'" + (f" from='{from_}'" if from_ else "")
        attrs += f" version='{version}'" if version else ""
        self.send(
            f"<?xml version='1.0'?><stream:stream xmlns='{NS_SERVER}' xmlns:stream='{NS_STREAMS}'"
            f" xmlns:db='{NS_DIALBACK}'{attrs}>"
        )
        while self.header is None:
            self._read()
        return self.header

    def next(self) -> etree._Element:
        """The next first-level element the server sent; StreamClosed if the stream ended first."""
        while not self._elements:
            if self.ended:
                raise StreamClosed("the stream ended")
            self._read()
        return self._elements.pop(0)

    def _read(self) -> None:
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise AssertionError("the server sent nothing in time") from None
        except OSError as e:
            raise StreamClosed(str(e)) from None
        if not data:
            self.ended = True
            raise StreamClosed("connection closed")
        self._parser.feed(data)
        for event, el in self._parser.read_events():
            if event == "start":
                if self._depth == 0:
                    self.header = dict(el.attrib)
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth == 1:
                    self._elements.append(el)
                elif self._depth == 0:
                    self.ended = True

    def stream_error(self) -> str | None:
        """Read until the stream ends; the condition of the stream error received on the way, if any."""
        condition = None
        try:
            while True:
                el = self.next()
                if el.tag == f"{{{NS_STREAMS}}}error":
                    condition = next(
                        (etree.QName(c).localname for c in el if etree.QName(c).localname != "text"), None
                    )
        except StreamClosed:
            return condition

    def starttls(self, context: ssl.SSLContext, server_name: str) -> None:
        """Ask for STARTTLS and do the TLS handshake (the stream then has to be opened again)."""
        self.send(f"<starttls xmlns='{NS_TLS}'/>")
        answer = self.next()
        assert answer.tag == f"{{{NS_TLS}}}proceed", etree.tostring(answer)
        self.sock = context.wrap_socket(self.sock, server_hostname=server_name)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
