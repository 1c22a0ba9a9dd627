"""Federation with Prosody: xmppd (xmppd.localhost) and Prosody 0.12 (prosody.localhost) on loopback, with
real slixmpp clients on each side, in two modes:

* dialback: each server has a self-signed certificate (xmppd's generated one, the harness's for Prosody),
  which the other cannot verify; xmppd has ``require_valid_certificates = false`` and Prosody
  ``s2s_secure_auth = false``, so both directions authenticate with Server Dialback (XEP-0220);
* certificates: both have DNS-ID certificates from one TestCA that both trust, xmppd with
  ``require_valid_certificates = true`` and Prosody with ``s2s_secure_auth = true``, so both directions
  authenticate with SASL EXTERNAL (XEP-0178) and dialback is never needed.

In each mode alice@xmppd.localhost and bob@prosody.localhost subscribe to each other (RFC 6121 s3, ending
in 'both' on both servers), see each other's presence come and go, chat, and send iqs across (XEP-0199
pings, XEP-0092 versions). xmppd's log says how each direction was authenticated.

Prosody's outgoing streams offer ALPN "xmpp-server" on STARTTLS too; before xmppd's s2s server context had
an ALPN callback of its own, every such handshake failed (see s2s._select_alpn), so any Prosody-to-xmppd
traffic here covers that.

Both servers are started once per mode (module-scoped fixture) and always stopped. When a test fails, the
s2s lines of both servers' logs since the test began are printed with the failure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from federation import start_all
from slixclient import TIMEOUT, Client, run, start_session, until, within

from xmppd.testing.ca import TestCA
from xmppd.testing.process import ServerProcess
from xmppd.testing.prosody import ProsodyServer, free_port, prosody_missing

pytestmark = pytest.mark.skipif(prosody_missing() is not None, reason=prosody_missing() or "")

XMPPD = "xmppd.localhost"
PROSODY = "prosody.localhost"
ALICE, ALICE_PW = f"alice@{XMPPD}", "alice-pw"
BOB, BOB_PW = f"bob@{PROSODY}", "bob-pw"
NS_ROSTER = "jabber:iq:roster"
NS_VERSION = "jabber:iq:version"
MODES = ("dialback", "certificates")


@dataclass
class Federation:
    """Both servers of one mode, running, with alice and bob registered."""

    mode: str
    xmppd: ServerProcess
    prosody: ProsodyServer
    xmppd_trust: Path  # what a client of xmppd trusts: its self-signed certificate, or the CA
    prosody_trust: Path

    async def alice(self, pool: Pool, resource: str = "phone", **kwargs: Any) -> Client:
        return await pool.login(
            f"{ALICE}/{resource}", ALICE_PW, self.xmppd.port(), self.xmppd_trust, **kwargs
        )

    async def bob(self, pool: Pool, resource: str = "pc", **kwargs: Any) -> Client:
        return await pool.login(
            f"{BOB}/{resource}", BOB_PW, self.prosody.c2s_port, self.prosody_trust, **kwargs
        )


@pytest.fixture(scope="module", params=MODES)
def federation(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Federation]:
    """Both servers in one mode, running, with alice@xmppd.localhost and bob@prosody.localhost registered;
    both are stopped afterwards, Prosody cleanly (exit code 0)."""
    mode = request.param
    base = tmp_path_factory.mktemp(f"prosody-interop-{mode}")
    xmppd_s2s_port = free_port()  # Prosody's route must name it before xmppd starts
    config: dict[str, Any] = {
        "server": {"domains": [XMPPD]},
        "listen": {"s2s": [f"tcp:{xmppd_s2s_port}:interface=127.0.0.1"]},
    }
    routes = {XMPPD: ("127.0.0.1", xmppd_s2s_port)}
    if mode == "certificates":
        ca = TestCA(base / "ca")
        cert, key = ca.issue(XMPPD)  # DNS-ID: Prosody 0.12.3 rejects XmppAddr-only certificates for s2s
        config["tls"] = {"certificate": str(cert), "key": str(key)}
        s2s = {"ca_file": str(ca.ca_path), "require_valid_certificates": True}
        prosody = ProsodyServer(
            base / "prosody",
            PROSODY,
            cert=ca.issue(PROSODY),
            ca_file=ca.ca_path,
            secure_auth=True,
            routes=routes,
        )
    else:  # self-signed certificates on both sides (xmppd makes one, so does the harness)
        s2s = {"require_valid_certificates": False}
        prosody = ProsodyServer(base / "prosody", PROSODY, secure_auth=False, routes=routes)
    config["s2s"] = {
        **s2s,
        "connect_timeout": 10,
        "routes": {PROSODY: f"tcp:host=127.0.0.1:port={prosody.s2s_port}"},
    }
    (base / "xmppd").mkdir()
    xmppd = ServerProcess(base / "xmppd", config)
    try:
        prosody.register("bob", BOB_PW)  # prosodyctl works before Prosody runs
        start_all(xmppd.start, prosody.start)
        xmppd.adduser(ALICE, ALICE_PW)
        if mode == "certificates":
            yield Federation(mode, xmppd, prosody, ca.ca_path, ca.ca_path)
        else:
            yield Federation(mode, xmppd, prosody, xmppd.data_dir / "selfsigned.crt", prosody.cert_path)
    finally:
        codes = {"xmppd": xmppd.stop(), "prosody": prosody.stop()}
    assert not prosody.running
    assert codes["prosody"] == 0, f"Prosody exited with {codes['prosody']}:\n{prosody.output()}"


@pytest.fixture(autouse=True)
def s2s_logs(request: pytest.FixtureRequest) -> Iterator[None]:
    """On failure, show what both servers logged about s2s during the test (pytest prints a test's
    captured output only when it fails)."""
    if "federation" not in request.fixturenames:
        yield
        return
    fed: Federation = request.getfixturevalue("federation")
    xmppd_from, prosody_from = len(fed.xmppd.log()), len(fed.prosody.log())
    yield
    xmppd_log = fed.xmppd.log()[xmppd_from:]
    print(f"--- xmppd ({fed.xmppd.log_path}), s2s and errors:")
    print("\n".join(line for line in xmppd_log.splitlines() if "s2s" in line or "rror" in line))
    prosody_log = fed.prosody.log()[prosody_from:]
    keep = ("s2s", "dialback", "certificate", "error", "Error", "warn")
    print(f"--- prosody ({fed.prosody.log_path}), s2s lines:")
    print("\n".join(line for line in prosody_log.splitlines() if any(k in line for k in keep))[-20000:])


# -- clients -----------------------------------------------------------------------------------------------


class Pool:
    """Logs slixmpp clients in to either server; every one is disconnected when the ``async with`` ends."""

    def __init__(self) -> None:
        self.clients: list[Client] = []

    async def __aenter__(self) -> Pool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.gather(*(client.stop() for client in self.clients), return_exceptions=True)

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
    ) -> Client:
        """A client with a started session (STARTTLS trusting ``trusted``, initial presence sent), its
        roster's automatic answers set (slixmpp's roster approves and asks back by default), every presence
        stanza it receives kept in ``presences``, and its roster requested unless ``roster`` is False."""
        client = Client(jid, password, trusted)
        self.clients.append(client)
        client.auto_authorize = authorize
        client.auto_subscribe = subscribe
        client.presences = []
        client.add_event_handler("presence", client.presences.append)
        await start_session(client, port)
        if roster:
            await client.get_roster(timeout=TIMEOUT)
        return client


def subscription(client: Client, contact: str) -> str:
    return client.client_roster[contact]["subscription"]


def sees(client: Client, contact: str, resource: str) -> bool:
    """Whether ``client`` has available presence from ``contact``/``resource``."""
    return resource in client.client_roster[contact].resources


async def server_roster(client: Client) -> dict[str, tuple[str, str | None]]:
    """The roster as the client's own server has it: {jid: (subscription, ask)}."""
    answer = await client.iq_get(client.boundjid.bare, f"<query xmlns='{NS_ROSTER}'/>")
    query = answer.find(f"{{{NS_ROSTER}}}query")
    return {
        item.get("jid"): (item.get("subscription", "none"), item.get("ask"))
        for item in query.findall(f"{{{NS_ROSTER}}}item")
    }


async def software(client: Client, to: str) -> str:
    """The software name ``to`` gives in its XEP-0092 version answer."""
    answer = await client.iq_get(to, f"<query xmlns='{NS_VERSION}'/>")
    return answer.findtext(f"{{{NS_VERSION}}}query/{{{NS_VERSION}}}name") or ""


def unavailable_from(client: Client, full_jid: str) -> bool:
    return any(str(p["from"]) == full_jid and p["type"] == "unavailable" for p in client.presences)


# -- tests -------------------------------------------------------------------------------------------------


def test_subscription_presence_and_chat(federation: Federation) -> None:
    fed = federation

    async def main() -> None:
        async with Pool() as pool:
            alice = await fed.alice(pool, authorize=True, subscribe=False)
            bob = await fed.bob(pool, authorize=True, subscribe=True)

            # alice asks; bob's client approves and asks back; alice's client approves (RFC 6121 s3)
            alice.send_presence(pto=BOB, ptype="subscribe")
            await until(lambda: subscription(alice, BOB) == "both", "alice's roster: bob 'both'")
            await until(lambda: subscription(bob, ALICE) == "both", "bob's roster: alice 'both'")
            assert (await server_roster(alice))[BOB] == ("both", None)
            assert (await server_roster(bob))[ALICE] == ("both", None)

            await until(lambda: sees(alice, BOB, "pc"), "alice sees bob available")
            await until(lambda: sees(bob, ALICE, "phone"), "bob sees alice available")

            alice.send_message(mto=BOB, mbody="hello from xmppd", mtype="chat")
            message = await bob.next_message()
            assert (message["body"], message["type"], str(message["from"])) == (
                "hello from xmppd",
                "chat",
                f"{ALICE}/phone",
            )
            bob.send_message(mto=ALICE, mbody="hello from prosody", mtype="chat")
            message = await alice.next_message()
            assert (message["body"], message["type"], str(message["from"])) == (
                "hello from prosody",
                "chat",
                f"{BOB}/pc",
            )

            await alice.stop()  # logout: xmppd broadcasts unavailable presence to bob
            await until(lambda: unavailable_from(bob, f"{ALICE}/phone"), "bob sees alice's logout")
            assert not sees(bob, ALICE, "phone")

            # a new session: Prosody answers xmppd's probe with bob's presence, bob gets alice's
            laptop = await fed.alice(pool, "laptop")
            assert subscription(laptop, BOB) == "both"
            await until(lambda: sees(laptop, BOB, "pc"), "alice's new session sees bob (probe)")
            await until(lambda: sees(bob, ALICE, "laptop"), "bob sees alice's new session")

            await bob.stop()  # logout: Prosody broadcasts unavailable presence to alice
            await until(lambda: unavailable_from(laptop, f"{BOB}/pc"), "alice sees bob's logout")
            assert not sees(laptop, BOB, "pc")

    run(main(), timeout=40)


def test_iqs_across(federation: Federation) -> None:
    fed = federation

    async def main() -> None:
        async with Pool() as pool:
            alice = await fed.alice(pool, "desk", roster=False)
            bob = await fed.bob(pool, "tablet", roster=False)
            assert await within(alice.plugin["xep_0199"].ping(PROSODY, timeout=TIMEOUT)) >= 0
            assert await software(alice, PROSODY) == "Prosody"
            assert await software(bob, XMPPD) == "xmppd"
            assert await within(bob.plugin["xep_0199"].ping(XMPPD, timeout=TIMEOUT)) >= 0
            # to a client on the other side (a full JID), and the answer back
            assert await software(alice, f"{BOB}/tablet") == "Slixmpp"
            assert await software(bob, f"{ALICE}/desk") == "Slixmpp"

    run(main(), timeout=30)


def test_authentication_method_in_each_direction(federation: Federation) -> None:
    """xmppd's log names the method of each direction: its outgoing stream to Prosody, and Prosody's
    stream to it."""
    fed = federation

    async def main() -> None:
        async with Pool() as pool:  # traffic both ways, in case this test runs alone
            alice = await fed.alice(pool, "auth", roster=False)
            bob = await fed.bob(pool, "auth", roster=False)
            assert await software(alice, PROSODY) == "Prosody"
            assert await software(bob, XMPPD) == "xmppd"

    run(main(), timeout=30)
    method = {"dialback": "dialback", "certificates": "SASL EXTERNAL"}[fed.mode]
    other = {"dialback": "SASL EXTERNAL", "certificates": "dialback"}[fed.mode]
    lines = [line for line in fed.xmppd.log().splitlines() if "[xmppd.s2s#" in line]
    outgoing = [line for line in lines if f"s2s out {XMPPD} -> {PROSODY}: authenticated with" in line]
    incoming = [line for line in lines if f": {PROSODY} authenticated with" in line and "s2s in " in line]
    assert outgoing and all(line.endswith(f"authenticated with {method}") for line in outgoing), outgoing
    assert incoming and all(line.endswith(f"authenticated with {method}") for line in incoming), incoming
    assert not [line for line in lines if f"authenticated with {other}" in line]
    assert not [line for line in lines if " failed: " in line], "no stream failed to set up"
    unverified = [line for line in lines if "does not verify" in line]
    if fed.mode == "certificates":
        assert not unverified
        # and Prosody, for its part, accepted xmppd's certificate for xmppd.localhost
        assert "certificate identity validation result: valid" in fed.prosody.log()
    else:
        assert unverified, "Prosody's self-signed certificate does not verify, so dialback was used"
        assert "jabber:server:dialback" in fed.prosody.log()  # Prosody logs stanzas at debug level
