"""slixmpp clients for integration tests against a ``ServerProcess``: what a real user's client does.

``run(coro)`` runs one test's asyncio code with an overall time limit. Inside it, ``Clients(proc)`` logs
clients in (STARTTLS on the plain c2s port, the server's self-signed certificate trusted) and, on leaving
the ``async with``, disconnects every one of them. Every wait has a timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any, Self, TypeVar

from slixmpp import ClientXMPP
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from xmppd.testing.process import ServerProcess

T = TypeVar("T")

TIMEOUT = 10.0  # any single wait: login, an iq answer, a disconnection
DEFAULT_PLUGINS = ("xep_0030", "xep_0012", "xep_0092", "xep_0199", "xep_0202")
NS_CLIENT = "jabber:client"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"

logging.getLogger("slixmpp").setLevel(logging.WARNING)


def run(coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
    """Run a test's coroutine on a fresh event loop, failing it if it takes longer than ``timeout``."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def within(awaitable: Awaitable[T], timeout: float = TIMEOUT) -> T:
    return await asyncio.wait_for(awaitable, timeout)


class Client(ClientXMPP):
    """A slixmpp client that records what a user would notice: messages, stream errors, disconnection.

    With ``answer_pings=False`` it silently drops server pings (XEP-0199), like a client whose
    connection died without the TCP connection noticing.
    """

    def __init__(
        self,
        jid: str,
        password: str,
        certificate: Path,
        *,
        plugins: Iterable[str] = DEFAULT_PLUGINS,
        answer_pings: bool = True,
    ) -> None:
        super().__init__(jid, password)
        self.enable_direct_tls = False  # the test server's c2s port is STARTTLS only
        self.enable_plaintext = False
        self.ssl_context.load_verify_locations(str(certificate))
        for plugin in plugins:
            if plugin == "xep_0199" and not answer_pings:
                continue
            self.register_plugin(plugin)
        if not answer_pings:
            self.register_handler(
                Callback(
                    "swallow pings",
                    MatchXPath(f"{{{NS_CLIENT}}}iq/{{urn:xmpp:ping}}ping"),
                    lambda iq: None,
                )
            )
        self.started = asyncio.Event()
        self.ended = asyncio.Event()
        self.auth_failed = asyncio.Event()
        self.messages: asyncio.Queue[Any] = asyncio.Queue()
        self.stream_errors: list[tuple[str, str]] = []  # (condition, text)
        self.pings_received = 0  # server-to-client pings (XEP-0199 s4.1), answered or not
        self.add_filter("in", self._count_pings)
        self.add_event_handler("session_start", self._session_start)
        self.add_event_handler("disconnected", lambda _: self.ended.set())
        self.add_event_handler("failed_auth", lambda _: self.auth_failed.set())
        self.add_event_handler("message", self.messages.put_nowait)
        self.add_event_handler(
            "stream_error", lambda e: self.stream_errors.append((e["condition"], e["text"]))
        )

    def _count_pings(self, stanza: Any) -> Any:
        if stanza.xml.find("{urn:xmpp:ping}ping") is not None and stanza.xml.get("type") == "get":
            self.pings_received += 1
        return stanza

    async def _session_start(self, _: Any) -> None:
        self.send_presence()
        self.started.set()

    @property
    def connected(self) -> bool:
        return self.is_connected() and not self.ended.is_set()

    async def stop(self) -> None:
        """Close the stream and wait for the connection to end (abort if the server does not answer)."""
        if self.is_connected():
            try:
                await within(self.disconnect(wait=2.0), 5)
            except TimeoutError:
                self.abort()
        self.cancel_connection_attempt()

    # -- requests ------------------------------------------------------------------------------------------

    async def iq_get(self, to: str, payload: str, timeout: float = TIMEOUT) -> ET.Element:
        """Send ``<iq type='get'>`` with ``payload`` (XML text) to ``to``; the answer's XML.

        An error answer raises slixmpp's IqError (see ``error_condition``)."""
        iq = self.make_iq_get(ito=to)
        iq.append(ET.fromstring(payload))
        answer = await iq.send(timeout=timeout)
        return answer.xml

    async def next_message(self, timeout: float = TIMEOUT) -> Any:
        return await within(self.messages.get(), timeout)


async def error_condition(awaitable: Awaitable[Any]) -> str:
    """The stanza error condition that ``awaitable`` (an iq request) fails with; AssertionError if it
    succeeds or times out."""
    try:
        result = await awaitable
    except IqError as e:
        return e.iq["error"]["condition"]
    except IqTimeout:
        raise AssertionError("the iq was not answered") from None
    raise AssertionError(f"expected an error, got a result: {result}")


class ClientGroup:
    """The clients a test made (in ``clients``); every one is disconnected when the ``async with`` block
    ends."""

    def __init__(self) -> None:
        self.clients: list[Client] = []

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop_all()

    async def stop_all(self) -> None:
        await asyncio.gather(*(client.stop() for client in self.clients), return_exceptions=True)
        self.clients.clear()


class Clients(ClientGroup):
    """Log in clients to ``proc``; every one is disconnected when the ``async with`` block ends."""

    def __init__(self, proc: ServerProcess) -> None:
        super().__init__()
        self.proc = proc

    def client(self, jid: str, password: str, **kwargs: Any) -> Client:
        """A client that is not connected yet."""
        client = Client(jid, password, self.proc.data_dir / "selfsigned.crt", **kwargs)
        self.clients.append(client)
        return client

    async def login(self, jid: str, password: str, timeout: float = TIMEOUT, **kwargs: Any) -> Client:
        """A client with a started session (TLS, SASL, bound resource, initial presence sent)."""
        client = self.client(jid, password, **kwargs)
        await start_session(client, self.proc.port(), timeout)
        return client


async def start_session(client: Client, port: int, timeout: float = TIMEOUT) -> None:
    """Connect ``client`` to 127.0.0.1:``port`` and wait for its session to start; AssertionError (with
    the reason: authentication failed, disconnected, or no session in time) after stopping it if not."""
    client.connect("127.0.0.1", port)
    waits = {
        "started": asyncio.ensure_future(client.started.wait()),
        "authentication failed": asyncio.ensure_future(client.auth_failed.wait()),
        "disconnected": asyncio.ensure_future(client.ended.wait()),
    }
    done, pending = await asyncio.wait(waits.values(), timeout=timeout, return_when="FIRST_COMPLETED")
    for task in pending:
        task.cancel()
    if waits["started"] not in done:
        await client.stop()
        why = next((what for what, task in waits.items() if task in done), "no session in time")
        raise AssertionError(
            f"{client.boundjid} could not log in: {why}, stream errors {client.stream_errors}"
        )


def run_as_alice(
    proc: ServerProcess, check: Any, jid: str = "alice@localhost/phone", password: str = "alice-pw"
) -> None:
    """Log one client in (alice by default) and run ``await check(client)``; the client is always
    disconnected afterwards."""

    async def main() -> None:
        async with Clients(proc) as clients:
            await check(await clients.login(jid, password))

    run(main())


async def until(predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Wait until ``predicate()`` is true, polling; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
