"""Instant messaging and presence as real clients see it: slixmpp against ``twistd xmppd`` with the roster
and presence plugins. Subscriptions (RFC 6121 s3) end in a mutual subscription that survives a restart,
presence flows between contacts (s4, probes included), a dropped connection shows as unavailable, and
messages to a bare JID follow presence priority (s8.5.2).

slixmpp 1.17's roster answers subscription requests by itself: ``auto_authorize`` (default True) approves
every request and ``auto_subscribe`` (default True) then asks back. Every client here sets both explicitly.
"""

from __future__ import annotations

import asyncio
from typing import Any

from slixclient import TIMEOUT, Client, Clients, run, until, within

from xmppd.config import DEFAULT_PLUGINS

CONFIG = {"plugins": {"enabled": list(dict.fromkeys([*DEFAULT_PLUGINS, "roster", "presence"]))}}
USERS = {"alice@localhost": "alice-pw", "bob@localhost": "bob-pw"}
PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw"}
NS_ROSTER = "jabber:iq:roster"


async def login(
    clients: Clients, jid: str, *, authorize: bool | None, subscribe: bool, roster: bool = True
) -> Client:
    """A logged-in client (initial presence sent) with its roster's automatic answers set, and the roster
    requested unless ``roster`` is False (RFC 6121 s2.2: only then does it get roster pushes)."""
    client = await clients.login(jid, PASSWORDS[jid.split("@")[0]])
    client.auto_authorize = authorize
    client.auto_subscribe = subscribe
    client.presences = []  # every presence stanza received
    client.add_event_handler("presence", client.presences.append)
    if roster:
        await client.get_roster(timeout=TIMEOUT)
    return client


async def server_roster(client: Client) -> dict[str, tuple[str, str | None, str | None]]:
    """The roster as the server has it: {jid: (subscription, ask, approved)}."""
    answer = await client.iq_get(client.boundjid.bare, f"<query xmlns='{NS_ROSTER}'/>")
    query = answer.find(f"{{{NS_ROSTER}}}query")
    return {
        item.get("jid"): (item.get("subscription", "none"), item.get("ask"), item.get("approved"))
        for item in query.findall(f"{{{NS_ROSTER}}}item")
    }


def subscription(client: Client, contact: str) -> str:
    return client.client_roster[contact]["subscription"]


def sees(client: Client, contact: str, resource: str) -> bool:
    """Whether ``client`` has available presence from ``contact``/``resource``."""
    return resource in client.client_roster[contact].resources


async def handshake(alice: Client, bob: Client) -> None:
    """alice asks bob; bob's client approves and asks back (auto_authorize + auto_subscribe); alice's
    client approves (auto_authorize). Both end with 'both', as the clients and as the server see it."""
    alice.send_presence(pto="bob@localhost", ptype="subscribe")
    await until(lambda: subscription(alice, "bob@localhost") == "both", "alice: both")
    await until(lambda: subscription(bob, "alice@localhost") == "both", "bob: both")
    assert (await server_roster(alice))["bob@localhost"] == ("both", None, None)
    assert (await server_roster(bob))["alice@localhost"] == ("both", None, None)


def test_subscription_handshake_ends_in_both_and_presence_flows(xmpp_process):
    proc = xmpp_process(config=CONFIG, users=USERS)

    async def main():
        async with Clients(proc) as clients:
            alice = await login(clients, "alice@localhost/phone", authorize=True, subscribe=False)
            bob = await login(clients, "bob@localhost/pc", authorize=True, subscribe=True)
            requests: list[Any] = []
            bob.add_event_handler("presence_subscribe", requests.append)
            await handshake(alice, bob)
            assert [str(r["from"]) for r in requests] == ["alice@localhost"], "stamped with the bare JID"
            await until(lambda: sees(alice, "bob@localhost", "pc"), "alice sees bob")
            await until(lambda: sees(bob, "alice@localhost", "phone"), "bob sees alice")

            alice.send_presence(pshow="away", pstatus="lunch")
            await until(
                lambda: bob.client_roster["alice@localhost"].resources["phone"]["show"] == "away",
                "bob sees alice away",
            )
            assert bob.client_roster["alice@localhost"].resources["phone"]["status"] == "lunch"
            alice.send_presence(ptype="unavailable")
            await until(lambda: not sees(bob, "alice@localhost", "phone"), "bob sees alice leave")

    run(main())


def test_rosters_and_presence_survive_a_restart(xmpp_process):
    proc = xmpp_process(config=CONFIG, users=USERS)

    async def main():
        async with Clients(proc) as clients:
            alice = await login(clients, "alice@localhost/phone", authorize=True, subscribe=False)
            bob = await login(clients, "bob@localhost/pc", authorize=True, subscribe=True)
            await handshake(alice, bob)
            await asyncio.to_thread(proc.stop)  # the clients are still connected
            await within(asyncio.gather(alice.ended.wait(), bob.ended.wait()))

        await asyncio.to_thread(proc.start)  # a new port: Clients reads proc.port() at each login

        async with Clients(proc) as clients:
            alice = await login(clients, "alice@localhost/laptop", authorize=None, subscribe=False)
            assert subscription(alice, "bob@localhost") == "both"
            assert await server_roster(alice) == {"bob@localhost": ("both", None, None)}
            # bob comes second: alice learns from his broadcast, bob from his probe of alice (s4.3)
            bob = await login(clients, "bob@localhost/tablet", authorize=None, subscribe=False)
            assert subscription(bob, "alice@localhost") == "both"
            await until(lambda: sees(alice, "bob@localhost", "tablet"), "alice sees bob after the restart")
            await until(lambda: sees(bob, "alice@localhost", "laptop"), "bob's probe answered with alice")

    run(main())


def test_pre_approval_with_a_raw_subscribed(xmpp_process):
    proc = xmpp_process(config=CONFIG, users=USERS)

    async def main():
        async with Clients(proc) as clients:
            alice = await login(clients, "alice@localhost/phone", authorize=None, subscribe=False)
            bob = await login(clients, "bob@localhost/pc", authorize=None, subscribe=False)
            requests: list[Any] = []
            bob.add_event_handler("presence_subscribe", requests.append)

            bob.send_presence(pto="alice@localhost", ptype="subscribed")  # no request yet: a pre-approval
            for _ in range(100):
                if (await server_roster(bob)).get("alice@localhost") == ("none", None, "true"):
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError(f"no pre-approval in bob's roster: {await server_roster(bob)}")
            assert await server_roster(alice) == {}, "a pre-approval is not routed (s3.4.2)"

            alice.send_presence(pto="bob@localhost", ptype="subscribe")
            await until(lambda: subscription(alice, "bob@localhost") == "to", "alice: to")
            await until(lambda: sees(alice, "bob@localhost", "pc"), "alice sees bob")
            assert (await server_roster(bob))["alice@localhost"][0] == "from"
            assert (await server_roster(alice))["bob@localhost"] == ("to", None, None)
            assert requests == [], "the server answered for bob: no request delivered"

    run(main())


def test_dropped_connection_is_seen_as_unavailable(xmpp_process):
    proc = xmpp_process(config=CONFIG, users=USERS)

    async def main():
        async with Clients(proc) as clients:
            alice = await login(clients, "alice@localhost/phone", authorize=True, subscribe=False)
            bob = await login(clients, "bob@localhost/pc", authorize=True, subscribe=True)
            await handshake(alice, bob)
            await until(lambda: sees(alice, "bob@localhost", "pc"), "alice sees bob")
            gone: asyncio.Queue[Any] = asyncio.Queue()
            alice.add_event_handler("presence_unavailable", gone.put_nowait)
            bob.abort()  # the TCP connection closes without </stream:stream> or unavailable presence
            presence = await within(gone.get())
            assert str(presence["from"]) == "bob@localhost/pc"
            assert not sees(alice, "bob@localhost", "pc")

    run(main())


def test_chat_to_the_bare_jid_follows_priority(xmpp_process):
    proc = xmpp_process(config=CONFIG, users=USERS)

    async def main():
        async with Clients(proc) as clients:
            high = await login(clients, "alice@localhost/high", authorize=None, subscribe=False, roster=False)
            low = await login(clients, "alice@localhost/low", authorize=None, subscribe=False, roster=False)
            negative = await login(
                clients, "alice@localhost/neg", authorize=None, subscribe=False, roster=False
            )
            bob = await login(clients, "bob@localhost/pc", authorize=None, subscribe=False, roster=False)

            async def set_priority(client: Client, priority: int) -> None:
                client.send_presence(ppriority=priority)
                me = str(client.boundjid)
                await until(
                    lambda: any(str(p["from"]) == me and p["priority"] == priority for p in client.presences),
                    f"{me} at priority {priority}",
                )

            await set_priority(high, 10)
            await set_priority(low, 1)
            await set_priority(negative, -5)

            async def chat(body: str, to: str = "alice@localhost") -> None:
                bob.send_message(mto=to, mbody=body, mtype="chat")

            await chat("to the most available")
            message = await high.next_message()
            assert message["body"] == "to the most available"
            assert str(message["from"]) == "bob@localhost/pc"

            await set_priority(high, 0)
            await chat("now to low")
            assert (await low.next_message())["body"] == "now to low"

            await chat("only for neg", to="alice@localhost/neg")  # a full JID reaches any resource
            assert (await negative.next_message())["body"] == "only for neg"
            await asyncio.sleep(0.3)
            assert high.messages.empty() and low.messages.empty() and negative.messages.empty()

    run(main())
