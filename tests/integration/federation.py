"""Helpers for federation tests: xmppd servers on loopback that reach each other through ``[s2s.routes]``,
slixmpp clients that trust a given certificate, fake s2s peers that misbehave on purpose, and a raw s2s
connection for stream-level tests.

``server_pair`` (two xmppd servers) and ``xmppd_and_prosody`` (xmppd and Prosody 0.12) start two servers
federating in a given mode (dialback, or certificates from one TestCA) with their users; ``Pool`` logs
clients in to either (``login`` of what those yield picks the server by the JID's domain), and
``logs_shown`` prints what the servers logged during a test, for its failure report.

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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from lxml import etree
from slixclient import TIMEOUT, Client, ClientGroup, Clients, start_session
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from xmppd.testing.ca import TestCA
from xmppd.testing.process import ServerProcess
from xmppd.testing.prosody import ProsodyServer

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


C = TypeVar("C", bound=FedClient)


class Pool(ClientGroup, Generic[C]):
    """Logs clients (``client_class``: FedClient or a subclass) in to any server on loopback, given its c2s
    port and the certificate (or CA) to trust; every one is disconnected when the ``async with`` ends."""

    def __init__(self, client_class: type[C]) -> None:
        super().__init__()
        self.client_class = client_class

    async def login(
        self,
        jid: str,
        password: str,
        port: int,
        trusted: Path,
        *,
        authorize: bool | None = None,
        subscribe: bool = False,
        roster: bool = True,
    ) -> C:
        """A client with a started session (STARTTLS trusting ``trusted``, initial presence sent), its
        roster's automatic answers set (slixmpp's roster approves and asks back by default), and its roster
        requested unless ``roster`` is False."""
        client = self.client_class(jid, password, trusted)
        self.clients.append(client)
        client.auto_authorize = authorize
        client.auto_subscribe = subscribe
        await start_session(client, port)
        if roster:
            await client.get_roster(timeout=TIMEOUT)
        return client


# -- two servers federating on loopback --------------------------------------------------------------------


class Federated:
    """Running servers and their users: ``login`` logs a user in to the server of their domain."""

    passwords: dict[str, str]  # bare JID -> password, users of any of the servers

    def c2s(self, domain: str) -> tuple[int, Path]:
        """The c2s port of the server of ``domain`` and what its clients trust."""
        raise NotImplementedError

    async def login(self, pool: Pool[C], jid: str, **kwargs: Any) -> C:
        """Log ``jid`` (a full JID) in through ``pool`` (keywords: see Pool.login)."""
        bare = jid.split("/")[0]
        port, trusted = self.c2s(bare.partition("@")[2])
        return await pool.login(jid, self.passwords[bare], port, trusted, **kwargs)


def trust_for(server: ServerProcess, ca: TestCA | None) -> Path:
    """What a client of ``server`` trusts: the test CA if its certificate comes from one, else the
    self-signed certificate the server makes."""
    return ca.ca_path if ca is not None else server.data_dir / "selfsigned.crt"


@dataclass
class ServerPair(Federated):
    """Two xmppd servers federating on loopback, running, with their users (see ``server_pair``)."""

    mode: str  # "dialback" or "external"
    a: ServerProcess
    b: ServerProcess
    domain_b: str
    trust_a: Path
    trust_b: Path
    passwords: dict[str, str]

    def c2s(self, domain: str) -> tuple[int, Path]:
        if domain == self.domain_b:
            return self.b.port(), self.trust_b
        return self.a.port(), self.trust_a


@contextmanager
def server_pair(
    base: Path,
    mode: str,
    domain_a: str,
    domain_b: str,
    passwords: dict[str, str],
    *,
    services_a: tuple[str, ...] = (),
    connect_timeout: float = 5,
) -> Iterator[ServerPair]:
    """Two xmppd servers (in ``base``/a and ``base``/b) serving ``domain_a`` and ``domain_b``, each routing
    the other's domain to its s2s listener, started, with the users of ``passwords`` (bare JID -> password)
    added to the server of their domain; both are stopped on leaving. ``mode`` says how server streams are
    authenticated:

    * ``dialback``: each server has its generated self-signed certificate, which the other cannot verify,
      so Server Dialback (XEP-0220);
    * ``external``: certificates from one TestCA that both trust, ``require_valid_certificates``, so SASL
      EXTERNAL (XEP-0178).

    ``services_a`` are further domains of a (its MUC service) that b reaches over a's s2s listener too;
    a's certificate names them as well."""
    port_a, port_b = free_port(), free_port()
    options: dict[str, Any] = {"connect_timeout": connect_timeout}
    ca = tls_a = tls_b = None
    if mode == "external":
        ca = TestCA(base / "ca")
        tls_a, tls_b = ca.issue(domain_a, extra_dns=services_a), ca.issue(domain_b)
        options.update(ca_file=str(ca.ca_path), require_valid_certificates=True)
    routes_b = dict.fromkeys((domain_a, *services_a), port_a)
    a = make_server(base / "a", server_config(domain_a, port_a, {domain_b: port_b}, s2s=options, tls=tls_a))
    b = make_server(base / "b", server_config(domain_b, port_b, routes_b, s2s=options, tls=tls_b))
    try:
        start_all(a.start, b.start)
        for jid, password in passwords.items():
            (b if jid.endswith("@" + domain_b) else a).adduser(jid, password)
        yield ServerPair(mode, a, b, domain_b, trust_for(a, ca), trust_for(b, ca), passwords)
    finally:
        a.stop()
        b.stop()


@dataclass
class XmppdAndProsody(Federated):
    """An xmppd server and a Prosody server federating on loopback, running, with their users (see
    ``xmppd_and_prosody``); ``exit_codes`` ("xmppd", "prosody") once they are stopped."""

    mode: str  # "dialback" or "certificates"
    xmppd: ServerProcess
    prosody: ProsodyServer
    xmppd_trust: Path  # what a client of xmppd trusts: its self-signed certificate, or the CA
    prosody_trust: Path
    passwords: dict[str, str]
    exit_codes: dict[str, int | None] = field(default_factory=dict)

    def c2s(self, domain: str) -> tuple[int, Path]:
        if domain == self.prosody.domain:
            return self.prosody.c2s_port, self.prosody_trust
        return self.xmppd.port(), self.xmppd_trust


@contextmanager
def xmppd_and_prosody(
    base: Path,
    mode: str,
    xmppd_domain: str,
    prosody_domain: str,
    passwords: dict[str, str],
    *,
    services: tuple[str, ...] = (),
) -> Iterator[XmppdAndProsody]:
    """xmppd serving ``xmppd_domain`` (in ``base``/xmppd) and Prosody 0.12 serving ``prosody_domain`` (in
    ``base``/prosody), each routing the other's domain to its s2s listener, started, with the users of
    ``passwords`` (bare JID -> password) registered on the server of their domain. ``mode``:

    * ``dialback``: each server has a self-signed certificate (xmppd's generated one, the harness's for
      Prosody), which the other cannot verify; xmppd has ``require_valid_certificates = false`` and
      Prosody ``s2s_secure_auth = false``, so both directions authenticate with Server Dialback
      (XEP-0220);
    * ``certificates``: both have DNS-ID certificates from one TestCA that both trust, xmppd with
      ``require_valid_certificates = true`` and Prosody with ``s2s_secure_auth = true``, so both
      directions authenticate with SASL EXTERNAL (XEP-0178).

    ``services`` are further domains of xmppd (its MUC service) that Prosody reaches over xmppd's s2s
    listener too (and, for dialback, connects back to); xmppd's certificate names them as well. Both
    servers are stopped on leaving, their exit codes then in ``exit_codes``."""
    s2s_port = free_port()  # Prosody's routes must name it before xmppd starts
    routes = {domain: ("127.0.0.1", s2s_port) for domain in (xmppd_domain, *services)}
    s2s: dict[str, Any] = {"connect_timeout": 10}
    ca = tls = None
    if mode == "certificates":
        ca = TestCA(base / "ca")
        # DNS-ID: Prosody 0.12.3 rejects XmppAddr-only certificates for s2s
        tls = ca.issue(xmppd_domain, extra_dns=services)
        s2s.update(ca_file=str(ca.ca_path), require_valid_certificates=True)
        prosody = ProsodyServer(
            base / "prosody",
            prosody_domain,
            cert=ca.issue(prosody_domain),
            ca_file=ca.ca_path,
            secure_auth=True,
            routes=routes,
        )
    else:
        s2s.update(require_valid_certificates=False)
        prosody = ProsodyServer(base / "prosody", prosody_domain, secure_auth=False, routes=routes)
    config = server_config(xmppd_domain, s2s_port, {prosody_domain: prosody.s2s_port}, s2s=s2s, tls=tls)
    xmppd = make_server(base / "xmppd", config)
    prosody_trust = ca.ca_path if ca is not None else prosody.cert_path
    fed = XmppdAndProsody(mode, xmppd, prosody, trust_for(xmppd, ca), prosody_trust, passwords)
    local = {jid: password for jid, password in passwords.items() if not jid.endswith("@" + prosody_domain)}
    try:
        for jid, password in passwords.items():
            if jid not in local:
                prosody.register(jid.split("@")[0], password)  # prosodyctl works before Prosody runs
        start_all(xmppd.start, prosody.start)
        for jid, password in local.items():
            xmppd.adduser(jid, password)
        yield fed
    finally:
        fed.exit_codes.update(xmppd=xmppd.stop(), prosody=prosody.stop())


@contextmanager
def logs_shown(keep: tuple[str, ...], **servers: ServerProcess | ProsodyServer) -> Iterator[None]:
    """On leaving, print the lines each of ``servers`` (name=server) logged inside the block that contain
    any of ``keep`` (the last 15,000 characters of them). Around a fixture's ``yield``: pytest shows what a
    test printed when it fails."""
    starts = {name: len(server.log()) for name, server in servers.items()}
    try:
        yield
    finally:
        for name, server in servers.items():
            text = server.log()[starts[name] :]
            lines = [line for line in text.splitlines() if any(k in line for k in keep)]
            print(f"--- {name} ({server.log_path}), lines with {' / '.join(keep)}:")
            print("\n".join(lines)[-15000:])


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
