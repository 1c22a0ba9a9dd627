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

from collections.abc import Iterator

import pytest
from federation import FedClient, Pool, XmppdAndProsody, logs_shown, xmppd_and_prosody
from slixclient import TIMEOUT, run, until, within

from xmppd.testing.prosody import prosody_missing

pytestmark = pytest.mark.skipif(prosody_missing() is not None, reason=prosody_missing() or "")

XMPPD = "xmppd.localhost"
PROSODY = "prosody.localhost"
ALICE, ALICE_PW = f"alice@{XMPPD}", "alice-pw"
BOB, BOB_PW = f"bob@{PROSODY}", "bob-pw"
NS_ROSTER = "jabber:iq:roster"
NS_VERSION = "jabber:iq:version"
MODES = ("dialback", "certificates")
LOG_KEEP = ("s2s", "dialback", "certificate", "rror", "warn")  # what to show of the servers' logs


@pytest.fixture(scope="module", params=MODES)
def federation(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[XmppdAndProsody]:
    """Both servers in one mode, running, with alice@xmppd.localhost and bob@prosody.localhost registered;
    both are stopped afterwards, Prosody cleanly (exit code 0)."""
    mode = request.param
    base = tmp_path_factory.mktemp(f"prosody-interop-{mode}")
    with xmppd_and_prosody(base, mode, XMPPD, PROSODY, {ALICE: ALICE_PW, BOB: BOB_PW}) as fed:
        yield fed
    assert not fed.prosody.running
    code = fed.exit_codes["prosody"]
    assert code == 0, f"Prosody exited with {code}:\n{fed.prosody.output()}"


@pytest.fixture(autouse=True)
def s2s_logs(request: pytest.FixtureRequest) -> Iterator[None]:
    """On failure, show what both servers logged about s2s during the test (pytest prints a test's
    captured output only when it fails)."""
    if "federation" not in request.fixturenames:
        yield
        return
    fed: XmppdAndProsody = request.getfixturevalue("federation")
    with logs_shown(LOG_KEEP, xmppd=fed.xmppd, prosody=fed.prosody):
        yield


# -- clients -----------------------------------------------------------------------------------------------


def subscription(client: FedClient, contact: str) -> str:
    return client.client_roster[contact]["subscription"]


def sees(client: FedClient, contact: str, resource: str) -> bool:
    """Whether ``client`` has available presence from ``contact``/``resource``."""
    return resource in client.client_roster[contact].resources


async def server_roster(client: FedClient) -> dict[str, tuple[str, str | None]]:
    """The roster as the client's own server has it: {jid: (subscription, ask)}."""
    answer = await client.iq_get(client.boundjid.bare, f"<query xmlns='{NS_ROSTER}'/>")
    query = answer.find(f"{{{NS_ROSTER}}}query")
    return {
        item.get("jid"): (item.get("subscription", "none"), item.get("ask"))
        for item in query.findall(f"{{{NS_ROSTER}}}item")
    }


async def software(client: FedClient, to: str) -> str:
    """The software name ``to`` gives in its XEP-0092 version answer."""
    answer = await client.iq_get(to, f"<query xmlns='{NS_VERSION}'/>")
    return answer.findtext(f"{{{NS_VERSION}}}query/{{{NS_VERSION}}}name") or ""


def unavailable_from(client: FedClient, full_jid: str) -> bool:
    return any(str(p["from"]) == full_jid and p["type"] == "unavailable" for p in client.presences)


# -- tests -------------------------------------------------------------------------------------------------


def test_subscription_presence_and_chat(federation: XmppdAndProsody) -> None:
    fed = federation

    async def main() -> None:
        async with Pool(FedClient) as pool:
            alice = await fed.login(pool, f"{ALICE}/phone", authorize=True, subscribe=False)
            bob = await fed.login(pool, f"{BOB}/pc", authorize=True, subscribe=True)

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
            laptop = await fed.login(pool, f"{ALICE}/laptop")
            assert subscription(laptop, BOB) == "both"
            await until(lambda: sees(laptop, BOB, "pc"), "alice's new session sees bob (probe)")
            await until(lambda: sees(bob, ALICE, "laptop"), "bob sees alice's new session")

            await bob.stop()  # logout: Prosody broadcasts unavailable presence to alice
            await until(lambda: unavailable_from(laptop, f"{BOB}/pc"), "alice sees bob's logout")
            assert not sees(laptop, BOB, "pc")

    run(main(), timeout=40)


def test_iqs_across(federation: XmppdAndProsody) -> None:
    fed = federation

    async def main() -> None:
        async with Pool(FedClient) as pool:
            alice = await fed.login(pool, f"{ALICE}/desk", roster=False)
            bob = await fed.login(pool, f"{BOB}/tablet", roster=False)
            assert await within(alice.plugin["xep_0199"].ping(PROSODY, timeout=TIMEOUT)) >= 0
            assert await software(alice, PROSODY) == "Prosody"
            assert await software(bob, XMPPD) == "xmppd"
            assert await within(bob.plugin["xep_0199"].ping(XMPPD, timeout=TIMEOUT)) >= 0
            # to a client on the other side (a full JID), and the answer back
            assert await software(alice, f"{BOB}/tablet") == "Slixmpp"
            assert await software(bob, f"{ALICE}/desk") == "Slixmpp"

    run(main(), timeout=30)


def test_authentication_method_in_each_direction(federation: XmppdAndProsody) -> None:
    """xmppd's log names the method of each direction: its outgoing stream to Prosody, and Prosody's
    stream to it."""
    fed = federation

    async def main() -> None:
        async with Pool(FedClient) as pool:  # traffic both ways, in case this test runs alone
            alice = await fed.login(pool, f"{ALICE}/auth", roster=False)
            bob = await fed.login(pool, f"{BOB}/auth", roster=False)
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
