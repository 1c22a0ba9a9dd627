"""The benchmark load generator: asyncio clients with raw sockets and minimal XMPP framing.

It speaks just enough XMPP for the scenarios of issue 10 and keeps its own cost low: incoming streams are
cut into top-level elements by byte scanning (one regular expression over the tags, no XML parser), the
few attributes it needs are read with regular expressions, SCRAM-SHA-1's PBKDF2 runs once per salt, and
stanzas are sent from preformatted bytes. Every scenario measures over a window, after a warm-up:

* the server's CPU time: ``utime + stime`` of the server's PID from ``/proc/PID/stat`` (all its threads);
* the server's RSS: ``VmRSS`` from ``/proc/PID/status``;
* the load generator's own CPU time (``time.process_time()``), so a run where the load generator and
  not the server was the bottleneck shows (``loadgen_cpu_share`` near 1.0 while ``server_cpu_share`` is
  well below it).

Scenarios (:data:`SCENARIOS`), each bounded in time by ``Params.duration`` plus setup:

``login`` / ``login_tls``
    ``Params.login_concurrency`` clients log in and out in a loop: stream, [STARTTLS,] SCRAM-SHA-1, bind,
    initial presence, a ping to the server, ``</stream:stream>``. Result: server CPU-ms per login.
``messages`` / ``messages_tls``
    ``Params.clients`` online clients; each has one 1:1 chat message (to the next client's full JID) in
    flight and sends the next when it has been delivered (closed loop). Result: server CPU-s per 1,000.
``latency``
    the same clients, messages sent at a fixed total rate (``Params.rate`` per second, round robin over
    the clients). Result: delivery latency p50 / p99 (from the write to the recipient's read).
``muc``
    ``Params.occupants`` clients join one room on ``conference.<domain>``; each has one groupchat message
    in flight and sends the next when its own copy comes back. Result: server CPU-s per 1,000 deliveries
    (a message to a room of N occupants is N deliveries, the sender's copy included).
``bosh``
    BOSH (XEP-0124/0206) logins over HTTP/1.1 keep-alive, one connection per session, in a loop: session
    creation, SCRAM-SHA-1, restart, bind, presence, ping, terminate. Result: server CPU-ms per login.
``idle``
    ``Params.idle_sessions`` clients log in (presence and ping included) and stay; the server's RSS
    growth divided by the sessions. Result: KiB per idle session.

Run against a server that is already running (accounts provisioned with bench/provision.py)::

    python bench/loadgen.py --pid PID --c2s-port 5222 --http-port 5280 login messages --quick

bench/compare.py starts xmppd and Prosody and runs the scenarios against both.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import dataclasses
import gc
import hashlib
import hmac
import json
import os
import re
import ssl
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from provision import DOMAIN, PASSWORD, username  # noqa: E402

MUC_DOMAIN = f"conference.{DOMAIN}"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# -- measurement -----------------------------------------------------------------------------------------


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) the process has used so far."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def machine_cpu() -> tuple[int, int, int]:
    """Jiffies of the whole machine so far: (busy, steal, total), from the ``cpu`` line of /proc/stat."""
    with open("/proc/stat", "rb") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = values
    return user + nice + system + irq + softirq, steal, sum(values)


class Window:
    """Server CPU, load generator CPU and wall time between ``start()`` and ``stop()``; also how busy
    the whole machine was (in CPUs: 2.0 is two cores fully used) and the hypervisor's steal time."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def start(self) -> None:
        self.wall0 = time.perf_counter()
        self.server0 = proc_cpu(self.pid)
        self.self0 = time.process_time()
        self.machine0 = machine_cpu()

    def stop(self) -> dict[str, float]:
        wall = time.perf_counter() - self.wall0
        server = proc_cpu(self.pid) - self.server0
        own = time.process_time() - self.self0
        busy, steal, total = (b - a for a, b in zip(self.machine0, machine_cpu(), strict=True))
        cpus = os.cpu_count() or 1
        return {
            "wall_s": wall,
            "server_cpu_s": server,
            "loadgen_cpu_s": own,
            "server_cpu_share": server / wall,
            "loadgen_cpu_share": own / wall,
            "machine_busy_cpus": cpus * busy / max(total, 1),
            "machine_steal_cpus": cpus * steal / max(total, 1),
        }


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- framing ---------------------------------------------------------------------------------------------

TAG = re.compile(rb"<(/?)([^\s>/]+)[^>]*?(/?)>")
ID_ATTR = re.compile(rb"""\sid=["']([^"']*)["']""")
FROM_ATTR = re.compile(rb"""\sfrom=["']([^"']*)["']""")
TYPE_ATTR = re.compile(rb"""\stype=["']([^"']*)["']""")
SID_ATTR = re.compile(rb"""\ssid=["']([^"']*)["']""")
JID_TEXT = re.compile(rb"<jid>([^<]*)</jid>")
STREAM_OPEN, STREAM_CLOSE, ROOT_EMPTY = b"<stream>", b"</stream>", b"<root/>"


class Splitter:
    """Cuts a stream (or a BOSH ``<body/>``) into top-level elements by scanning tags.

    :meth:`feed` returns ``(name, element_bytes)`` pairs: ``name`` is the tag as written (``message``,
    ``stream:features``); the root's start tag comes as ``(STREAM_OPEN, tag)``, its end as
    ``(STREAM_CLOSE, b"")`` and an empty root (``<body/>``) as ``(ROOT_EMPTY, tag)``. It relies on what
    servers send: ``>`` escaped in attribute values, no comments or CDATA.
    """

    __slots__ = ("buf", "depth")

    def __init__(self) -> None:
        self.buf = b""
        self.depth = 0

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        buf = self.buf + data if self.buf else data
        depth = self.depth
        out: list[tuple[bytes, bytes]] = []
        keep = 0
        start = 0
        name = b""
        for m in TAG.finditer(buf):
            close, tag, empty = m.groups()
            if close:
                depth -= 1
                if depth == 1:
                    keep = m.end()
                    out.append((name, buf[start:keep]))
                elif depth == 0:
                    keep = m.end()
                    out.append((STREAM_CLOSE, b""))
            elif tag[0] in b"?!":
                if depth <= 1:
                    keep = m.end()
            elif empty:
                if depth == 1:
                    keep = m.end()
                    out.append((tag, m.group()))
                elif depth == 0:
                    keep = m.end()
                    out.append((ROOT_EMPTY, m.group()))
            else:
                if depth == 0:
                    keep = m.end()
                    out.append((STREAM_OPEN, m.group()))
                elif depth == 1:
                    start = m.start()
                    name = tag
                depth += 1
        if depth > 1:  # an element not complete yet: scan it again with the next data
            keep = start
            depth = 1
        self.depth = depth
        self.buf = buf[keep:]
        return out


def local(name: bytes) -> bytes:
    return name.rpartition(b":")[2]


def start_tag(el: bytes) -> bytes:
    return el[: el.find(b">") + 1]


def attr(pattern: re.Pattern, el: bytes) -> bytes | None:
    m = pattern.search(start_tag(el))
    return m.group(1) if m else None


def is_error(head: bytes) -> bool:
    """Whether a stanza's start tag says ``type='error'``."""
    return b"error" in head and attr(TYPE_ATTR, head) == b"error"


def text_of(el: bytes) -> bytes:
    """The text of an element with text only (``<challenge>...</challenge>``)."""
    if el.endswith(b"/>") and el.count(b"<") == 1:
        return b""
    return el[el.find(b">") + 1 : el.rfind(b"<")]


class XMPPError(Exception):
    pass


# -- SCRAM-SHA-1 -----------------------------------------------------------------------------------------

_SALTED: dict[tuple[bytes, int], bytes] = {}


class Scram:
    """The client side of SCRAM-SHA-1 (RFC 5802), with SaltedPassword cached per (salt, iterations)."""

    def __init__(self, user: str, password: str = PASSWORD) -> None:
        self.password = password
        self.nonce = base64.b64encode(os.urandom(15)).decode()
        self.first_bare = f"n={user},r={self.nonce}"
        self.server_key = b""
        self.auth_message = b""

    def first(self) -> bytes:
        return base64.b64encode(("n,," + self.first_bare).encode())

    def final(self, challenge: bytes) -> bytes:
        server_first = base64.b64decode(challenge).decode()
        attrs = dict(item.split("=", 1) for item in server_first.split(","))
        if not attrs["r"].startswith(self.nonce):
            raise XMPPError("SCRAM: the server's nonce does not extend ours")
        key = (base64.b64decode(attrs["s"]), int(attrs["i"]))
        salted = _SALTED.get(key)
        if salted is None:
            salted = _SALTED[key] = hashlib.pbkdf2_hmac("sha1", self.password.encode(), *key)
        client_key = hmac.digest(salted, b"Client Key", "sha1")
        self.server_key = hmac.digest(salted, b"Server Key", "sha1")
        final_bare = f"c=biws,r={attrs['r']}"
        self.auth_message = f"{self.first_bare},{server_first},{final_bare}".encode()
        signature = hmac.digest(hashlib.sha1(client_key).digest(), self.auth_message, "sha1")
        proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature, strict=True)))
        return base64.b64encode(final_bare.encode() + b",p=" + proof)

    def verify(self, success: bytes) -> None:
        expected = base64.b64encode(hmac.digest(self.server_key, self.auth_message, "sha1"))
        if base64.b64decode(success) != b"v=" + expected:
            raise XMPPError("SCRAM: the server's signature does not verify")


# -- c2s -------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Target:
    """The server under test: its PID (for /proc) and loopback ports."""

    name: str
    pid: int
    c2s_port: int
    http_port: int | None = None
    host: str = "127.0.0.1"
    domain: str = DOMAIN


NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"


def stream_header(domain: str) -> bytes:
    return (
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
        f"xmlns:stream='http://etherx.jabber.org/streams' to='{domain}' version='1.0' xml:lang='en'>"
    ).encode()


def client_tls_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the servers' certificate is a test one; verifying costs only us
    return ctx


Handler = Callable[["Conn", bytes, bytes], None]


class Conn(asyncio.Protocol):
    """One client connection. Login steps ``await`` elements from :meth:`next`; load phases set
    ``handler``, called from ``data_received`` with each element instead."""

    def __init__(self) -> None:
        self.splitter = Splitter()
        self.inbox: collections.deque[tuple[bytes, bytes]] = collections.deque()
        self.waiter: asyncio.Future | None = None
        self.handler: Handler | None = None
        self.transport: Any = None
        self.lost = False
        self.jid = b""
        self.index = 0
        self.tag: Any = None  # for scenarios

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        items = self.splitter.feed(data)
        handler = self.handler
        if handler is not None:
            for name, el in items:
                handler(self, name, el)
        elif items:
            self.inbox.extend(items)
            self._wake()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def restart(self, domain: str) -> None:
        self.splitter = Splitter()
        self.inbox.clear()
        self.write(stream_header(domain))

    async def next(self) -> tuple[bytes, bytes]:
        while not self.inbox:
            if self.lost:
                raise XMPPError("the server closed the connection")
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
            self.waiter = None
        return self.inbox.popleft()

    async def expect(self, *names: bytes) -> bytes:
        """The next top-level element named one of ``names`` (local names); errors raise."""
        while True:
            name, el = await self.next()
            if local(name) in names:
                return el
            if name == STREAM_CLOSE or local(name) in (b"error", b"failure"):
                raise XMPPError(f"expected {b'/'.join(names).decode()}, got {el[:300]!r}")

    async def until(self, predicate: Callable[[bytes, bytes], bool]) -> bytes:
        while True:
            name, el = await self.next()
            if predicate(name, el):
                return el
            if name == STREAM_CLOSE or local(name) == b"error":
                raise XMPPError(f"stream ended: {el[:300]!r}")

    async def iq_result(self, iq_id: bytes) -> bytes:
        el = await self.until(lambda name, el: name == b"iq" and attr(ID_ATTR, el) == iq_id)
        if attr(TYPE_ATTR, el) != b"result":
            raise XMPPError(f"iq {iq_id.decode()} failed: {el[:300]!r}")
        return el


async def connect(target: Target) -> Conn:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(Conn, target.host, target.c2s_port)
    return conn


async def login(
    target: Target,
    index: int,
    *,
    tls: bool = False,
    resource: str = "bench",
    presence: bool = True,
    ping: bool = True,
    tls_context: ssl.SSLContext | None = None,
) -> Conn:
    """Log ``user<index>`` in: stream, [STARTTLS,] SCRAM-SHA-1, bind, presence, ping."""
    domain = target.domain
    conn = await connect(target)
    conn.index = index
    try:
        conn.write(stream_header(domain))
        await conn.expect(b"features")
        if tls:
            conn.write(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            await conn.expect(b"proceed")
            loop = asyncio.get_running_loop()
            conn.transport = await loop.start_tls(
                conn.transport, conn, tls_context or client_tls_context(), server_hostname=domain
            )
            conn.restart(domain)
            await conn.expect(b"features")
        scram = Scram(username(index))
        conn.write(f"<auth xmlns='{NS_SASL}' mechanism='SCRAM-SHA-1'>".encode() + scram.first() + b"</auth>")
        challenge = await conn.expect(b"challenge")
        conn.write(
            f"<response xmlns='{NS_SASL}'>".encode() + scram.final(text_of(challenge)) + b"</response>"
        )
        scram.verify(text_of(await conn.expect(b"success")))
        conn.restart(domain)
        await conn.expect(b"features")
        conn.write(
            b"<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>"
            + resource.encode()
            + b"</resource></bind></iq>"
        )
        bound = await conn.iq_result(b"bind")
        m = JID_TEXT.search(bound)
        conn.jid = m.group(1) if m else b""
        out = b"<presence/>" if presence else b""
        if ping:
            out += f"<iq type='get' id='ping' to='{domain}'><ping xmlns='urn:xmpp:ping'/></iq>".encode()
        if out:
            conn.write(out)
        if ping:
            await conn.iq_result(b"ping")
        conn.inbox.clear()
        return conn
    except BaseException:
        conn.transport.abort()
        raise


async def logout(conn: Conn, timeout: float = 10) -> None:
    """``</stream:stream>``, then wait for the server's end of the stream (or the connection's)."""
    conn.handler = None
    conn.inbox.clear()
    if not conn.lost:
        conn.write(b"</stream:stream>")
        try:
            await asyncio.wait_for(conn.until(lambda name, el: name == STREAM_CLOSE), timeout)
        except (XMPPError, TimeoutError):
            pass
    conn.transport.close()


async def gather_limited(count: int, concurrency: int, make: Callable[[int], Any]) -> list[Any]:
    """``make(i)`` for i in range(count), at most ``concurrency`` at a time, results in order."""
    semaphore = asyncio.Semaphore(concurrency)

    async def one(i: int) -> Any:
        async with semaphore:
            return await make(i)

    results = await asyncio.gather(*(one(i) for i in range(count)), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        for r in results:
            if isinstance(r, Conn):
                r.transport.abort()
        raise errors[0]
    return results


async def login_many(target: Target, count: int, params: Params, **kwargs: Any) -> list[Conn]:
    return await gather_limited(count, params.setup_concurrency, lambda i: login(target, i, **kwargs))


async def logout_all(conns: list[Conn], concurrency: int = 200) -> None:
    await gather_limited(len(conns), concurrency, lambda i: logout(conns[i]))


# -- parameters ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Params:
    accounts: int = 2000  # user0 .. user<accounts-1> exist on the server
    clients: int = 500  # online clients in the 1:1 message scenarios
    occupants: int = 50  # MUC room size
    idle_sessions: int = 2000
    rate: float = 1000.0  # messages per second in the fixed-rate scenario
    login_concurrency: int = 20  # logins in progress at once in the login scenarios
    bosh_concurrency: int = 20
    setup_concurrency: int = 50  # logins at once while setting a scenario up
    warmup: float = 2.0  # seconds of load before the measurement window
    duration: float = 8.0  # seconds of the measurement window
    idle_settle: float = 2.0  # seconds between the last idle login and reading the RSS

    @classmethod
    def quick(cls) -> Params:
        return cls(
            accounts=100,
            clients=20,
            occupants=10,
            idle_sessions=100,
            rate=200.0,
            login_concurrency=5,
            bosh_concurrency=5,
            warmup=0.3,
            duration=1.0,
            idle_settle=0.5,
        )


# -- scenarios -------------------------------------------------------------------------------------------


async def run_for(params: Params, window: Window, counter: Callable[[], int]) -> tuple[dict[str, float], int]:
    """Let the load run through the warm-up, then measure over ``params.duration``."""
    await asyncio.sleep(params.warmup)
    window.start()
    before = counter()
    await asyncio.sleep(params.duration)
    result = window.stop()
    return result, counter() - before


async def drain(pending: Callable[[], Any], timeout: float = 10) -> None:
    """After the window: wait (at most ``timeout`` s) until ``pending()`` says nothing is in flight."""
    deadline = time.monotonic() + timeout
    while pending() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


def per_thousand(measured: dict[str, float], count: int) -> dict[str, float]:
    """Server and load generator CPU seconds per 1,000 units of work (messages, deliveries)."""
    return {
        "server_cpu_s_per_1000": 1000 * measured["server_cpu_s"] / max(count, 1),
        "loadgen_cpu_s_per_1000": 1000 * measured["loadgen_cpu_s"] / max(count, 1),
    }


async def scenario_login(target: Target, params: Params, tls: bool = False) -> dict[str, Any]:
    done = 0
    running = True
    context = client_tls_context()
    concurrency = min(params.login_concurrency, params.accounts)
    tls_info: list[Any] = []

    async def worker(w: int) -> None:
        nonlocal done
        i = w
        while running:
            conn = await login(target, i % params.accounts, tls=tls, tls_context=context)
            if tls and not tls_info:
                ssl_object = conn.transport.get_extra_info("ssl_object")
                tls_info.extend([ssl_object.version(), ssl_object.cipher()[0]])
            await logout(conn)
            done += 1
            i += concurrency

    tasks = [asyncio.create_task(worker(w)) for w in range(concurrency)]
    try:
        window = Window(target.pid)
        measured, logins = await run_for(params, window, lambda: done)
    finally:
        running = False
        await _finish(tasks)
    result = {**measured, "logins": logins, "logins_per_s": logins / measured["wall_s"]}
    result["server_cpu_ms_per_login"] = 1000 * measured["server_cpu_s"] / max(logins, 1)
    result["loadgen_cpu_ms_per_login"] = 1000 * measured["loadgen_cpu_s"] / max(logins, 1)
    if tls_info:
        result["tls"] = " ".join(tls_info)
    return result


async def _finish(tasks: list[asyncio.Task], timeout: float = 30) -> None:
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    for task in done:
        if task.exception() is not None:
            raise task.exception()


async def scenario_login_tls(target: Target, params: Params) -> dict[str, Any]:
    return await scenario_login(target, params, tls=True)


def message_bytes(to: str, ident: str, body: str) -> tuple[bytes, bytes]:
    """A chat message in two parts, the id's variable end going between them."""
    return (
        f"<message to='{to}' type='chat' id='{ident}".encode(),
        f"'><body>{body}</body></message>".encode(),
    )


async def scenario_messages(target: Target, params: Params, tls: bool = False) -> dict[str, Any]:
    """Closed loop: each client keeps one message to the next client in flight."""
    n = max(2, min(params.clients, params.accounts))
    conns = await login_many(target, n, params, tls=tls, resource="msg")
    heads, tails = [], []
    for i in range(n):
        to = conns[(i + 1) % n].jid.decode()
        head, tail = message_bytes(to, f"{i}.", f"Hello, this is a benchmark message from user{i} to {to}")
        heads.append(head)
        tails.append(tail)
    sent_at = [0.0] * n
    seq = [0] * n
    latencies: list[float] = []
    delivered = errors = 0
    in_flight = 0
    running = True
    clock = time.perf_counter

    def send(i: int) -> None:
        nonlocal in_flight
        seq[i] += 1
        sent_at[i] = clock()
        in_flight += 1
        conns[i].transport.write(heads[i] + b"%d" % seq[i] + tails[i])

    def on_element(conn: Conn, name: bytes, el: bytes) -> None:
        nonlocal delivered, errors, in_flight
        if name != b"message":
            return
        head = start_tag(el)
        ident = ID_ATTR.search(head)
        if ident is None:
            return
        try:
            i = int(ident.group(1).partition(b".")[0])
        except ValueError:
            return  # not one of ours
        in_flight -= 1
        if is_error(head):
            errors += 1
        else:
            delivered += 1
            latencies.append(clock() - sent_at[i])
        if running:
            send(i)

    for conn in conns:
        conn.handler = on_element
    try:
        for i in range(n):
            send(i)
        window = Window(target.pid)
        await asyncio.sleep(params.warmup)
        latencies.clear()
        window.start()
        before = delivered
        await asyncio.sleep(params.duration)
        measured = window.stop()
        count = delivered - before
        window_latencies = list(latencies)
        running = False
        await drain(lambda: in_flight > 0)
    finally:
        running = False
        await logout_all(conns)
    return {
        **measured,
        "clients": n,
        "messages": count,
        "messages_per_s": count / measured["wall_s"],
        "errors": errors,
        **per_thousand(measured, count),
        "latency_p50_ms": 1000 * percentile(window_latencies, 0.50),
        "latency_p99_ms": 1000 * percentile(window_latencies, 0.99),
    }


async def scenario_messages_tls(target: Target, params: Params) -> dict[str, Any]:
    return await scenario_messages(target, params, tls=True)


async def scenario_latency(target: Target, params: Params) -> dict[str, Any]:
    """Open loop: messages at a fixed total rate, round robin over the clients; delivery latency."""
    n = max(2, min(params.clients, params.accounts))
    conns = await login_many(target, n, params, resource="rate")
    heads, tails = [], []
    for i in range(n):
        to = conns[(i + 1) % n].jid.decode()
        head, tail = message_bytes(to, "", f"Hello, this is a benchmark message from user{i} to {to}")
        heads.append(head)
        tails.append(tail)
    sent_at: dict[int, float] = {}
    samples: list[tuple[float, float]] = []  # (sent, latency)
    errors = 0
    clock = time.perf_counter

    def on_element(conn: Conn, name: bytes, el: bytes) -> None:
        nonlocal errors
        if name != b"message":
            return
        head = start_tag(el)
        ident = ID_ATTR.search(head)
        if ident is None:
            return
        try:
            t = sent_at.pop(int(ident.group(1)), None)
        except ValueError:
            return
        if t is None:
            return
        if is_error(head):
            errors += 1
        else:
            samples.append((t, clock() - t))

    for conn in conns:
        conn.handler = on_element
    window = Window(target.pid)
    k = 0
    try:
        t0 = clock()
        end = t0 + params.warmup + params.duration
        w0 = t0 + params.warmup
        started = False
        while True:
            now = clock()
            if not started and now >= w0:
                window.start()
                started = True
                first_k = k
            if now >= end:
                break
            due = int((now - t0) * params.rate)
            while k < due:
                i = k % n
                sent_at[k] = clock()
                conns[i].transport.write(heads[i] + b"%d" % k + tails[i])
                k += 1
            await asyncio.sleep(0.0005)
        measured = window.stop()
        w1 = clock()
        await drain(lambda: sent_at)
    finally:
        await logout_all(conns)
    in_window = [lat for t, lat in samples if w0 <= t < w1]
    count = k - first_k
    return {
        **measured,
        "clients": n,
        "rate": params.rate,
        "messages": count,
        "messages_per_s": count / measured["wall_s"],
        "lost": len(sent_at),
        "errors": errors,
        "server_cpu_s_per_1000": 1000 * measured["server_cpu_s"] / max(count, 1),
        "latency_p50_ms": 1000 * percentile(in_window, 0.50),
        "latency_p99_ms": 1000 * percentile(in_window, 0.99),
        "latency_max_ms": 1000 * max(in_window, default=float("nan")),
    }


_room_counter = 0


async def scenario_muc(target: Target, params: Params) -> dict[str, Any]:
    """One room, every occupant with one groupchat message in flight (closed loop)."""
    global _room_counter
    _room_counter += 1
    n = max(2, min(params.occupants, params.accounts))
    room = f"bench{os.getpid()}-{_room_counter}-{int(time.time())}@{MUC_DOMAIN}"
    conns = await login_many(target, n, params, resource="muc")
    try:
        await _join(conns[0], room, 0, owner=True)
        await gather_limited(n - 1, params.setup_concurrency, lambda i: _join(conns[i + 1], room, i + 1))
    except BaseException:
        await logout_all(conns)
        raise
    message = [
        (
            f"<message to='{room}' type='groupchat' id='g{i}.".encode(),
            f"'><body>Hello room, this is a benchmark message from occupant {i}</body></message>".encode(),
        )
        for i in range(n)
    ]
    seq = [0] * n
    deliveries = errors = 0
    in_flight = 0
    running = True

    def send(i: int) -> None:
        nonlocal in_flight
        seq[i] += 1
        in_flight += 1
        head, tail = message[i]
        conns[i].transport.write(head + b"%d" % seq[i] + tail)

    def on_element(conn: Conn, name: bytes, el: bytes) -> None:
        nonlocal deliveries, errors, in_flight
        if name != b"message":
            return
        head = start_tag(el)
        if is_error(head):
            errors += 1
            in_flight -= 1
            if running:
                send(conn.index)
            return
        if b"<body" not in el:
            return  # the subject
        deliveries += 1
        if attr(FROM_ATTR, head) == conn.tag:  # our own message, back from the room
            in_flight -= 1
            if running:
                send(conn.index)

    await asyncio.sleep(0.2)  # the last joins' presence broadcasts
    for conn in conns:
        conn.inbox.clear()
        conn.handler = on_element
    try:
        for i in range(n):
            send(i)
        window = Window(target.pid)
        measured, count = await run_for(params, window, lambda: deliveries)
        running = False
        await drain(lambda: in_flight > 0)
    finally:
        running = False
        await logout_all(conns)
    return {
        **measured,
        "occupants": n,
        "deliveries": count,
        "deliveries_per_s": count / measured["wall_s"],
        "errors": errors,
        **per_thousand(measured, count),
    }


async def _join(conn: Conn, room: str, index: int, owner: bool = False) -> None:
    nick = f"n{index}"
    conn.index = index
    conn.tag = f"{room}/{nick}".encode()
    conn.write(
        f"<presence to='{room}/{nick}'><x xmlns='http://jabber.org/protocol/muc'>"
        "<history maxstanzas='0'/></x></presence>".encode()
    )
    own = conn.tag
    el = await conn.until(lambda name, el: name == b"presence" and attr(FROM_ATTR, el) == own)
    if attr(TYPE_ATTR, el) == b"error":
        raise XMPPError(f"could not join {room}: {el[:300]!r}")
    if owner and re.search(rb"""code=["']201["']""", el):
        conn.write(
            f"<iq type='set' id='config' to='{room}'><query xmlns='http://jabber.org/protocol/muc#owner'>"
            "<x xmlns='jabber:x:data' type='submit'/></query></iq>".encode()
        )
        await conn.iq_result(b"config")


async def scenario_idle(target: Target, params: Params) -> dict[str, Any]:
    """RSS growth per idle authenticated session (logged in with presence, then silent)."""
    n = min(params.idle_sessions, params.accounts)
    await asyncio.sleep(0.5)
    rss0 = proc_rss_kib(target.pid)
    window = Window(target.pid)
    window.start()
    conns = await login_many(target, n, params, resource="idle")
    measured = window.stop()
    await asyncio.sleep(params.idle_settle)
    rss1 = proc_rss_kib(target.pid)
    await logout_all(conns)
    return {
        **measured,
        "sessions": n,
        "rss_before_kib": rss0,
        "rss_after_kib": rss1,
        "rss_kib_per_session": (rss1 - rss0) / n,
        "server_cpu_ms_per_login": 1000 * measured["server_cpu_s"] / n,
    }


# -- BOSH ------------------------------------------------------------------------------------------------

NS_BOSH = "http://jabber.org/protocol/httpbind"


class BoshClient:
    """One BOSH session over one HTTP/1.1 keep-alive connection, one request at a time."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.rid = int.from_bytes(os.urandom(4), "big") % 1_000_000_000 + 1000
        self.sid = ""
        self.pending: collections.deque[tuple[bytes, bytes]] = collections.deque()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.terminated = False

    async def open(self) -> None:
        assert self.target.http_port
        self.reader, self.writer = await asyncio.open_connection(self.target.host, self.target.http_port)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    async def post(self, body: bytes) -> None:
        assert self.reader is not None and self.writer is not None
        self.writer.write(
            b"POST /http-bind HTTP/1.1\r\nHost: %s\r\nContent-Type: text/xml; charset=utf-8\r\n"
            b"Content-Length: %d\r\n\r\n" % (self.target.domain.encode(), len(body)) + body
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = head.split(b" ", 2)[1]
        headers = {}
        for line in head.split(b"\r\n")[1:]:
            if b":" in line:
                key, _, value = line.partition(b":")
                headers[key.strip().lower()] = value.strip()
        if b"content-length" in headers:
            data = await self.reader.readexactly(int(headers[b"content-length"]))
        elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                parts.append(chunk[:-2])
            data = b"".join(parts)
        else:
            raise XMPPError(f"BOSH response without a length: {head!r}")
        if status != b"200":
            raise XMPPError(f"BOSH: HTTP {status.decode()}: {data[:300]!r}")
        for name, el in Splitter().feed(data):
            if name in (STREAM_OPEN, ROOT_EMPTY):
                if not self.sid:
                    sid = SID_ATTR.search(el)
                    if sid:
                        self.sid = sid.group(1).decode()
                if attr(TYPE_ATTR, el) == b"terminate":
                    self.terminated = True
            elif name != STREAM_CLOSE:
                self.pending.append((name, el))

    def body(self, payload: bytes = b"", extra: str = "") -> bytes:
        self.rid += 1
        head = f"<body rid='{self.rid}' sid='{self.sid}' xmlns='{NS_BOSH}'{extra}"
        return (head + ">").encode() + payload + b"</body>" if payload else (head + "/>").encode()

    async def expect(self, predicate: Callable[[bytes, bytes], bool]) -> bytes:
        """The first element satisfying ``predicate``, polling with empty requests until it comes."""
        while True:
            while self.pending:
                name, el = self.pending.popleft()
                if predicate(name, el):
                    return el
                if local(name) in (b"failure", b"error"):
                    raise XMPPError(f"BOSH: {el[:300]!r}")
            if self.terminated:
                raise XMPPError("BOSH: the session was terminated")
            await self.post(self.body())


async def bosh_login(target: Target, index: int) -> None:
    """A BOSH session: create, SCRAM-SHA-1, restart, bind, presence, ping, terminate."""
    domain = target.domain
    client = BoshClient(target)
    await client.open()
    try:
        await client.post(
            (
                f"<body content='text/xml; charset=utf-8' hold='1' rid='{client.rid}' to='{domain}' "
                f"ver='1.6' wait='30' xml:lang='en' xmpp:version='1.0' xmlns='{NS_BOSH}' "
                "xmlns:xmpp='urn:xmpp:xbosh'/>"
            ).encode()
        )
        if not client.sid:
            raise XMPPError("BOSH: no sid in the session creation response")
        await client.expect(lambda name, el: local(name) == b"features")
        scram = Scram(username(index))
        await client.post(
            client.body(
                f"<auth xmlns='{NS_SASL}' mechanism='SCRAM-SHA-1'>".encode() + scram.first() + b"</auth>"
            )
        )
        challenge = await client.expect(lambda name, el: name == b"challenge")
        await client.post(
            client.body(
                f"<response xmlns='{NS_SASL}'>".encode() + scram.final(text_of(challenge)) + b"</response>"
            )
        )
        scram.verify(text_of(await client.expect(lambda name, el: name == b"success")))
        client.pending.clear()
        await client.post(
            client.body(extra=f" to='{domain}' xml:lang='en' xmpp:restart='true' xmlns:xmpp='urn:xmpp:xbosh'")
        )
        await client.expect(lambda name, el: local(name) == b"features")
        await client.post(
            client.body(
                b"<iq type='set' id='bind' xmlns='jabber:client'>"
                b"<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>bosh</resource></bind></iq>"
            )
        )
        bound = await client.expect(lambda name, el: name == b"iq" and attr(ID_ATTR, el) == b"bind")
        if attr(TYPE_ATTR, bound) != b"result":
            raise XMPPError(f"BOSH bind failed: {bound[:300]!r}")
        await client.post(
            client.body(
                b"<presence xmlns='jabber:client'/><iq type='get' id='ping' to='%s' xmlns='jabber:client'>"
                b"<ping xmlns='urn:xmpp:ping'/></iq>" % domain.encode()
            )
        )
        pong = await client.expect(lambda name, el: name == b"iq" and attr(ID_ATTR, el) == b"ping")
        if attr(TYPE_ATTR, pong) != b"result":
            raise XMPPError(f"BOSH ping failed: {pong[:300]!r}")
        await client.post(
            client.body(b"<presence type='unavailable' xmlns='jabber:client'/>", extra=" type='terminate'")
        )
    finally:
        client.close()


async def scenario_bosh(target: Target, params: Params) -> dict[str, Any]:
    if not target.http_port:
        raise RuntimeError("BOSH needs the server's HTTP port")
    done = 0
    running = True
    concurrency = min(params.bosh_concurrency, params.accounts)

    async def worker(w: int) -> None:
        nonlocal done
        i = w
        while running:
            await bosh_login(target, i % params.accounts)
            done += 1
            i += concurrency

    tasks = [asyncio.create_task(worker(w)) for w in range(concurrency)]
    try:
        measured, logins = await run_for(params, Window(target.pid), lambda: done)
    finally:
        running = False
        await _finish(tasks)
    return {
        **measured,
        "logins": logins,
        "logins_per_s": logins / measured["wall_s"],
        "server_cpu_ms_per_login": 1000 * measured["server_cpu_s"] / max(logins, 1),
        "loadgen_cpu_ms_per_login": 1000 * measured["loadgen_cpu_s"] / max(logins, 1),
    }


# -- the scenarios as a table ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    run: Callable[[Target, Params], Any]
    metric: str  # the key of the headline result
    label: str  # the row of the table
    unit: str
    fmt: str = "{:.3f}"


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [  # in the order of issue 10's table
        Scenario(
            "login", scenario_login, "server_cpu_ms_per_login", "server CPU per c2s login", "ms", "{:.2f}"
        ),
        Scenario(
            "login_tls",
            scenario_login_tls,
            "server_cpu_ms_per_login",
            "the same with STARTTLS",
            "ms",
            "{:.2f}",
        ),
        Scenario(
            "messages", scenario_messages, "server_cpu_s_per_1000", "server CPU per 1,000 1:1 messages", "s"
        ),
        Scenario("messages_tls", scenario_messages_tls, "server_cpu_s_per_1000", "the same with TLS", "s"),
        Scenario("muc", scenario_muc, "server_cpu_s_per_1000", "server CPU per 1,000 MUC deliveries", "s"),
        Scenario(
            "bosh", scenario_bosh, "server_cpu_ms_per_login", "server CPU per BOSH login", "ms", "{:.2f}"
        ),
        Scenario(
            "idle",
            scenario_idle,
            "rss_kib_per_session",
            "RSS per idle authenticated session",
            "KiB",
            "{:.1f}",
        ),
        Scenario(
            "latency",
            scenario_latency,
            "latency_p99_ms",
            "p99 delivery latency at fixed rate",
            "ms",
            "{:.2f}",
        ),
    ]
}


async def run_scenario(
    target: Target, scenario: Scenario, params: Params, timeout: float | None = None
) -> dict:
    """One scenario against one server; a failure is returned as ``{"error": ...}``."""
    bound = timeout or (120 + 3 * (params.warmup + params.duration) + params.idle_sessions / 20)
    gc.collect()
    try:
        result = await asyncio.wait_for(scenario.run(target, params), bound)
    except Exception as e:  # noqa: BLE001 - reported in the table and the JSON
        return {"error": f"{type(e).__name__}: {e}"}
    result["value"] = result[scenario.metric]
    return result


def warm_up(target: Target, count: int = 20) -> None:
    """A few logins, so first-use costs (imports, caches) fall outside every measurement."""

    async def go() -> None:
        conns = await gather_limited(count, 10, lambda i: login(target, i, resource="warmup"))
        await logout_all(conns)

    asyncio.run(asyncio.wait_for(go(), 60))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenarios", nargs="*", default=list(SCENARIOS), help=f"of {', '.join(SCENARIOS)}")
    ap.add_argument("--pid", type=int, required=True, help="the server's process id (for /proc)")
    ap.add_argument("--c2s-port", type=int, default=5222)
    ap.add_argument("--http-port", type=int, default=5280)
    ap.add_argument("--name", default="server")
    ap.add_argument("--quick", action="store_true", help="small sizes, 1 s windows")
    ap.add_argument("--json", help="write the results here")
    for field in dataclasses.fields(Params):
        ap.add_argument("--" + field.name.replace("_", "-"), type=type(field.default), default=None)
    ns = ap.parse_args()
    params = Params.quick() if ns.quick else Params()
    for field in dataclasses.fields(Params):
        value = getattr(ns, field.name)
        if value is not None:
            setattr(params, field.name, value)
    target = Target(ns.name, ns.pid, ns.c2s_port, ns.http_port)
    warm_up(target, min(20, params.accounts))
    results = {}
    for name in ns.scenarios:
        scenario = SCENARIOS[name]
        results[name] = asyncio.run(run_scenario(target, scenario, params))
        r = results[name]
        value = (
            "error: " + r["error"] if "error" in r else scenario.fmt.format(r["value"]) + " " + scenario.unit
        )
        print(f"{scenario.label:45} {value}")
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump({"params": dataclasses.asdict(params), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
