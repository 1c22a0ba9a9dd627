"""The Prosody test peer (xmppd.testing.prosody) works: it starts on loopback with a TestCA certificate,
accounts can be registered, a real client logs in and pings it, and two Prosodys federate through the
harness's static s2s routes (the mechanism federation tests use to reach xmppd's test domain)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from slixclient import Client, run, within

from xmppd.testing.ca import TestCA
from xmppd.testing.prosody import ProsodyServer, prosody_missing

pytestmark = pytest.mark.skipif(prosody_missing() is not None, reason=prosody_missing() or "")


@pytest.fixture
def ca(tmp_path) -> TestCA:
    return TestCA(tmp_path / "ca")


@pytest.fixture
def prosody(tmp_path) -> Iterator[Callable[..., ProsodyServer]]:
    """``prosody(name, domain, **options)``: a ProsodyServer (not started) stopped after the test."""
    servers: list[ProsodyServer] = []

    def make(name: str, domain: str, **options) -> ProsodyServer:
        server = ProsodyServer(tmp_path / name, domain, **options)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


async def login(jid: str, password: str, port: int, trusted: Path) -> Client:
    """A slixmpp client logged in over STARTTLS, trusting ``trusted`` (a CA or the server's own cert)."""
    client = Client(jid, password, trusted)
    client.connect("127.0.0.1", port)
    await within(client.started.wait())
    return client


def test_client_logs_in_and_pings(ca, prosody):
    server = prosody("p", "prosody.test", cert=ca.issue("prosody.test"), ca_file=ca.ca_path).start()
    server.register("alice", "alice-pw")

    async def main() -> float:
        alice = await login("alice@prosody.test/phone", "alice-pw", server.c2s_port, ca.ca_path)
        try:
            return await alice.plugin["xep_0199"].ping("prosody.test", timeout=5)
        finally:
            await alice.stop()

    assert run(main()) >= 0
    assert "Activated service 'c2s' on [127.0.0.1]" in server.log()
    assert server.stop() == 0
    assert not accepts(server.c2s_port) and not accepts(server.s2s_port)


@pytest.mark.parametrize("auth", ["certificates", "dialback"])
def test_two_prosodys_federate_over_static_routes(ca, prosody, auth):
    """s2s between two domains that are not in DNS, over the harness's routes.

    certificates: s2s_secure_auth with TestCA certificates, one with a DNS-ID, one with only an SRV-ID.
    (Not an XmppAddr-only one: Prosody 0.12.3's mod_s2s_auth_certs asks util.x509 about service
    "xmpp-server", which compares XmppAddrs only for "_xmpp-server", so it rejects those for s2s.)
    dialback: self-signed certificates, so the receiving server verifies over its own connection back
    to the sender (XEP-0220), which must take the route too.
    """
    if auth == "certificates":
        a = prosody("a", "a.test", cert=ca.issue("a.test"), ca_file=ca.ca_path, secure_auth=True)
        b_cert = ca.issue("b.test", dns=False, srv=True)
        b = prosody("b", "b.test", cert=b_cert, ca_file=ca.ca_path, secure_auth=True)
    else:
        a = prosody("a", "a.test")
        b = prosody("b", "b.test")
    trusted = {a: a.cert_path, b: b.cert_path} if auth == "dialback" else {a: ca.ca_path, b: ca.ca_path}
    a.routes["b.test"] = ("127.0.0.1", b.s2s_port)
    a.start()
    b.start()
    b.add_route("a.test", "127.0.0.1", a.s2s_port)  # on the running server: config reload
    a.register("alice", "alice-pw")
    b.register("bob", "bob-pw")

    async def main() -> tuple[str, str]:
        alice = await login("alice@a.test/phone", "alice-pw", a.c2s_port, trusted[a])
        bob = await login("bob@b.test/pc", "bob-pw", b.c2s_port, trusted[b])
        try:
            alice.send_message(mto="bob@b.test/pc", mbody="hello across the test route", mtype="chat")
            to_bob = await bob.next_message()
            bob.send_message(mto="alice@a.test/phone", mbody="and back", mtype="chat")
            to_alice = await alice.next_message()
            return to_bob["body"], to_alice["body"]
        finally:
            await alice.stop()
            await bob.stop()

    assert run(main()) == ("hello across the test route", "and back")
    assert f"s2s route for b.test: 127.0.0.1 port {b.s2s_port}" in a.log()
    assert f"s2s route for a.test: 127.0.0.1 port {a.s2s_port}" in b.log()
    for server in (a, b):
        if auth == "certificates":
            assert "certificate identity validation result: valid" in server.log()
        else:
            assert "jabber:server:dialback" in server.log()  # stanzas are logged at debug level


def test_start_fails_clearly_when_a_port_is_taken(ca, prosody):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = prosody("p", "prosody.test", cert=ca.issue("prosody.test"), c2s_port=port)
        with pytest.raises(RuntimeError, match="could not listen"):
            server.start(timeout=15)
    assert not server.running
