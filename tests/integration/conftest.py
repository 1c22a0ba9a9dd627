"""Shared helpers for whole-server tests: slixmpp clients and raw-socket clients against ``twistd xmppd``.

Servers come from ``xmpp_process`` (function scope, from xmppd.testing) or, for a module that wants one
server for many tests, from ``start_server`` in a module-scoped fixture.

slixmpp clients live inside one ``asyncio.run``; the ``xmpp_run`` fixture wraps that::

    def test_chat(xmpp_process, xmpp_run):
        server = xmpp_process(users={"alice@localhost": "pw1", "bob@localhost": "pw2"})

        async def body(pool):
            alice = await pool.login("alice@localhost/phone", "pw1")
            bob = await pool.login("bob@localhost/pc", "pw2")
            alice.send_message(mto="bob@localhost", mbody="hi", mtype="chat")
            msg = await bob.next_message()
            assert msg["body"] == "hi"

        xmpp_run(server, body)

Every client the pool made is disconnected when the body ends (also on failure), and the body as a whole
runs under a timeout. ``raw_client(server)`` gives a :class:`rawclient.RawClient` closed after the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from rawclient import RawClient
from slixmpp import ClientXMPP

from xmppd.testing.process import ServerProcess

DEFAULT_TIMEOUT = 5.0


def server_cert(server: ServerProcess) -> str:
    """The server's self-signed certificate (it names ``localhost``)."""
    return str(server.data_dir / "selfsigned.crt")


class LoginFailed(Exception):
    """A login did not reach session start; ``reason`` says what happened instead."""

    def __init__(self, reason: str, detail: Any = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class XMPPClient(ClientXMPP):
    """A slixmpp client that records what a user sees: messages, stream errors, SASL failures.

    STARTTLS only by default (``direct_tls=True`` for XEP-0368 direct TLS), the server's self-signed
    certificate trusted, and ``mech`` restricting SASL to one mechanism.
    """

    def __init__(
        self,
        jid: str,
        password: str,
        *,
        cafile: str,
        mech: str | None = None,
        direct_tls: bool = False,
        presence: bool = True,
    ) -> None:
        super().__init__(jid, password, sasl_mech=mech)
        self.ssl_context.load_verify_locations(cafile)
        self.ssl_context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.enable_direct_tls = direct_tls
        self.enable_starttls = not direct_tls
        self.enable_plaintext = False
        self.send_initial_presence = presence
        self.messages: asyncio.Queue = asyncio.Queue()
        self.stream_errors: list[Any] = []
        self.auth_failures: list[str] = []
        self.started = asyncio.Event()
        self.gone = asyncio.Event()  # disconnected after having connected
        self._outcome: asyncio.Future = asyncio.get_running_loop().create_future()
        self.add_event_handler("session_start", self._on_start)
        self.add_event_handler("message", self.messages.put_nowait)
        self.add_event_handler("message_error", self.messages.put_nowait)
        self.add_event_handler("stream_error", self._on_stream_error)
        self.add_event_handler("failed_auth", self._on_failed_auth)
        self.add_event_handler("failed_all_auth", lambda _: self._finish(LoginFailed("failed_all_auth")))
        self.add_event_handler("disconnected", self._on_disconnected)
        self.add_event_handler("connection_failed", lambda e: self._finish(LoginFailed("connection", e)))

    # -- events ----------------------------------------------------------------------------------------

    def _finish(self, result: Any) -> None:
        if not self._outcome.done():
            self._outcome.set_result(result)

    async def _on_start(self, _: Any) -> None:
        if self.send_initial_presence:
            self.send_presence()
        self.started.set()
        self._finish(None)

    def _on_stream_error(self, error: Any) -> None:
        self.stream_errors.append(error)

    def _on_failed_auth(self, failure: Any) -> None:
        self.auth_failures.append(failure["condition"])
        self._finish(LoginFailed("failed_auth", failure["condition"]))

    def _on_disconnected(self, reason: Any) -> None:
        self.gone.set()
        self._finish(LoginFailed("disconnected", reason))

    # -- what a test does ------------------------------------------------------------------------------

    @property
    def mechanism(self) -> str | None:
        """The SASL mechanism of the last authentication."""
        mech = self.plugin["feature_mechanisms"].mech
        return mech.name if mech is not None else None

    @property
    def stream_error_conditions(self) -> list[str]:
        return [e["condition"] for e in self.stream_errors]

    async def login(self, host: str, port: int, timeout: float = 10) -> None:
        """Connect and wait for session start; LoginFailed otherwise."""
        self.connect(host, port)
        outcome = await asyncio.wait_for(asyncio.shield(self._outcome), timeout)
        if isinstance(outcome, Exception):
            raise outcome

    async def next_message(self, timeout: float = DEFAULT_TIMEOUT) -> Any:
        """The next message stanza received (including error messages)."""
        return await asyncio.wait_for(self.messages.get(), timeout)

    async def no_message(self, seconds: float = 0.3) -> None:
        """Assert no message arrives within ``seconds``."""
        try:
            msg = await asyncio.wait_for(self.messages.get(), seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected message: {msg}")

    async def wait_gone(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        await asyncio.wait_for(self.gone.wait(), timeout)

    async def close(self, timeout: float = 2.0) -> None:
        if self.transport is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.disconnect(wait=timeout), timeout + 1)
        if self.transport is not None:
            self.abort()
        self.cancel_connection_attempt()


class ClientPool:
    """Makes clients for one server and disconnects them all at the end."""

    def __init__(self, server: ServerProcess, kind: str = "c2s") -> None:
        self.server = server
        self.cafile = server_cert(server)
        self.port = server.port(kind)
        self.clients: list[XMPPClient] = []

    def client(self, jid: str, password: str, **options: Any) -> XMPPClient:
        client = XMPPClient(jid, password, cafile=self.cafile, **options)
        self.clients.append(client)
        return client

    async def attempt(
        self, jid: str, password: str, *, port: int | None = None, timeout: float = 10, **options: Any
    ) -> tuple[XMPPClient, LoginFailed | None]:
        """Try to log in; returns the client and None, or the LoginFailed saying why it did not."""
        client = self.client(jid, password, **options)
        try:
            await client.login("127.0.0.1", port or self.port, timeout)
        except LoginFailed as e:
            return client, e
        return client, None

    async def login(
        self, jid: str, password: str, *, port: int | None = None, timeout: float = 10, **options: Any
    ) -> XMPPClient:
        """A client that has started its session (and sent initial presence unless presence=False)."""
        client = self.client(jid, password, **options)
        await client.login("127.0.0.1", port or self.port, timeout)
        return client

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True)


def run_with_pool(
    server: ServerProcess, body: Callable[[ClientPool], Awaitable[Any]], timeout: float = 30
) -> Any:
    """Run ``body(pool)`` in a fresh event loop, under ``timeout``; disconnect every client after."""

    async def main() -> Any:
        pool = ClientPool(server)
        try:
            return await asyncio.wait_for(body(pool), timeout)
        finally:
            await pool.close()

    return asyncio.run(main())


@pytest.fixture
def xmpp_run() -> Callable[..., Any]:
    """``xmpp_run(server, body, timeout=30)``: see :func:`run_with_pool`."""
    return run_with_pool


@pytest.fixture
def raw_client() -> Iterator[Callable[..., RawClient]]:
    """``raw_client(server, direct_tls=False, timeout=5)``: a RawClient on the server's c2s port."""
    clients: list[RawClient] = []

    def make(
        server: ServerProcess, *, direct_tls: bool = False, timeout: float = DEFAULT_TIMEOUT
    ) -> RawClient:
        port = server.port("c2s_direct_tls" if direct_tls else "c2s")
        client = RawClient(port, cafile=server_cert(server), direct_tls=direct_tls, timeout=timeout)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
