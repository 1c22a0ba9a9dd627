"""vcard-temp (XEP-0054), private XML storage (XEP-0049) and in-band registration (XEP-0077) as a user
sees them: slixmpp over c2s (STARTTLS, SCRAM, bind) to ``twistd xmppd`` on loopback, with the sqlite
storage a real server uses, so what is stored survives a restart.
"""

from __future__ import annotations

import asyncio
from typing import Any

from slixclient import DEFAULT_PLUGINS as CLIENT_PLUGINS
from slixclient import Client, Clients, error_condition, run, within
from slixmpp.exceptions import IqError

from xmppd.config import DEFAULT_PLUGINS
from xmppd.testing.process import ServerProcess

USERS = {"alice@localhost": "alice-pw", "bob@localhost": "bob-pw"}
VCARD_PLUGINS = (*CLIENT_PLUGINS, "xep_0054")
REGISTER_PLUGINS = (*CLIENT_PLUGINS, "xep_0077")
CONFIG = {"plugins": {"enabled": [*DEFAULT_PLUGINS, "vcard", "private", "register"]}}


def server(xmpp_process: Any, **register_options: Any) -> ServerProcess:
    config = {"plugins": {**CONFIG["plugins"], "register": register_options}} if register_options else CONFIG
    return xmpp_process(config=config, users=USERS)


async def domain_features(client: Client) -> set[str]:
    info = await client.plugin["xep_0030"].get_info(jid="localhost", timeout=5)
    return set(info["disco_info"]["features"])


# -- vcard-temp ----------------------------------------------------------------------------------------


async def publish(client: Client, fn: str, nick: str) -> None:
    vcard = client.plugin["xep_0054"].make_vcard()
    vcard["FN"] = fn
    vcard["NICKNAME"] = nick
    await client.plugin["xep_0054"].publish_vcard(vcard, timeout=5)


async def vcard_of(client: Client, jid: str) -> Any:
    answer = await client.plugin["xep_0054"].get_vcard(jid, timeout=5)
    return answer["vcard_temp"]


def test_vcard_publish_read_by_others_and_kept_across_restart(xmpp_process):
    proc = server(xmpp_process)

    async def before():
        async with Clients(proc) as clients:
            alice = await clients.login("alice@localhost/phone", "alice-pw", plugins=VCARD_PLUGINS)
            bob = await clients.login("bob@localhost/pc", "bob-pw", plugins=VCARD_PLUGINS)
            assert "vcard-temp" in await domain_features(alice)
            await publish(alice, "Alice Liddell", "al")
            assert (await vcard_of(alice, "alice@localhost"))["FN"] == "Alice Liddell"
            seen = await vcard_of(bob, "alice@localhost")
            assert (seen["FN"], seen["NICKNAME"]) == ("Alice Liddell", ["al"])
            # bob has none yet, and nobody may write alice's
            assert (await vcard_of(bob, "bob@localhost"))["FN"] == ""  # own, none yet: empty
            forged = bob.plugin["xep_0054"].make_vcard()
            forged["FN"] = "Mallory"
            assert (
                await error_condition(bob.plugin["xep_0054"].publish_vcard(forged, jid="alice@localhost"))
                == "forbidden"
            )

    run(before())
    proc.stop()
    proc.start()

    async def after():
        async with Clients(proc) as clients:
            bob = await clients.login("bob@localhost/pc", "bob-pw", plugins=VCARD_PLUGINS)
            assert (await vcard_of(bob, "alice@localhost"))["FN"] == "Alice Liddell"
            missing = bob.plugin["xep_0054"].get_vcard("nobody@localhost", timeout=5)
            assert await error_condition(missing) == "service-unavailable"

    run(after())


# -- private XML storage (legacy bookmarks, XEP-0048 over XEP-0049) ----------------------------------------


def test_private_storage_bookmarks(xmpp_process):
    proc = server(xmpp_process)
    plugins = (*CLIENT_PLUGINS, "xep_0048")

    async def main():
        async with Clients(proc) as clients:
            alice = await clients.login("alice@localhost/phone", "alice-pw", plugins=plugins)
            bookmarks = alice.plugin["xep_0048"].stanza.Bookmarks()
            bookmarks.add_conference("room@conference.localhost", "alice", name="Room", autojoin=True)
            await alice.plugin["xep_0048"].set_bookmarks(bookmarks, method="xep_0049", timeout=5)
        async with Clients(proc) as clients:
            again = await clients.login("alice@localhost/laptop", "alice-pw", plugins=plugins)
            answer = await again.plugin["xep_0048"].get_bookmarks(method="xep_0049", timeout=5)
            conferences = answer["private"]["bookmarks"]["conferences"]
            assert [(c["jid"], c["nick"], c["autojoin"]) for c in conferences] == [
                ("room@conference.localhost", "alice", True)
            ]
            bob = await clients.login("bob@localhost/pc", "bob-pw", plugins=plugins)
            empty = await bob.plugin["xep_0048"].get_bookmarks(method="xep_0049", timeout=5)
            assert list(empty["private"]["bookmarks"]["conferences"]) == []

    run(main())


# -- in-band registration ------------------------------------------------------------------------------


async def register_and_login(clients: Clients, jid: str, password: str) -> tuple[Client, list[str]]:
    """A slixmpp client that registers ``jid`` in-band when the server offers it, then logs in.

    Returns the client (``started`` set if it logged in) and the conditions of failed registrations."""
    client = clients.client(jid, password, plugins=REGISTER_PLUGINS)
    failures: list[str] = []

    async def on_register(_form: Any) -> None:
        iq = client.Iq()
        iq["type"] = "set"
        iq["register"]["username"] = client.boundjid.user
        iq["register"]["password"] = client.password
        try:
            await iq.send(timeout=5)
        except IqError as e:
            failures.append(e.iq["error"]["condition"])

    client.add_event_handler("register", on_register)
    client.connect("127.0.0.1", clients.proc.port())
    waits = [asyncio.ensure_future(e.wait()) for e in (client.started, client.auth_failed, client.ended)]
    await within(asyncio.wait(waits, return_when="FIRST_COMPLETED"))
    for wait in waits:
        wait.cancel()
    return client, failures


def test_register_change_password_and_cancel(xmpp_process):
    proc = server(xmpp_process)

    async def main():
        async with Clients(proc) as clients:
            carol, failures = await register_and_login(clients, "carol@localhost/new", "first-pw")
            assert failures == [] and carol.started.is_set()
            assert "jabber:iq:register" in await domain_features(carol)
            form = await carol.plugin["xep_0077"].get_registration(timeout=5)
            assert form["register"]["registered"] and form["register"]["username"] == "carol"
            await carol.plugin["xep_0077"].change_password("second-pw", timeout=5)

        async with Clients(proc) as clients:
            old = clients.client("carol@localhost/old", "first-pw")
            old.connect("127.0.0.1", proc.port())
            await within(old.auth_failed.wait())
            carol = await clients.login("carol@localhost/phone", "second-pw", plugins=REGISTER_PLUGINS)
            other = await clients.login("carol@localhost/laptop", "second-pw")
            await carol.plugin["xep_0077"].cancel_registration(timeout=5)
            await within(carol.ended.wait())
            await within(other.ended.wait())
            assert ("not-authorized", "account removed") in other.stream_errors

        async with Clients(proc) as clients:
            gone = clients.client("carol@localhost/phone", "second-pw")
            gone.connect("127.0.0.1", proc.port())
            await within(gone.auth_failed.wait())

    run(main())
    assert "account carol@localhost registered in-band" in proc.log()
    assert "account carol@localhost removed in-band" in proc.log()
    assert "carol" not in proc.ctl("users").stdout


def test_registration_conflict_and_rate_limit(xmpp_process):
    proc = server(xmpp_process, max_per_ip=1, window=3600)

    async def main():
        async with Clients(proc) as clients:
            # alice exists: conflict, and the login that follows fails with the wrong password
            taken, failures = await register_and_login(clients, "alice@localhost/x", "not-alice")
            assert failures == ["conflict"] and not taken.started.is_set()
            first, failures = await register_and_login(clients, "dave@localhost/x", "dave-pw")
            assert failures == [] and first.started.is_set()
            second, failures = await register_and_login(clients, "erin@localhost/x", "erin-pw")
            assert failures == ["resource-constraint"] and not second.started.is_set()

    run(main())
    users = proc.ctl("users").stdout
    assert "dave@localhost" in users and "erin@localhost" not in users


def test_registration_not_offered_by_default(xmpp_process):
    proc = xmpp_process(users=USERS)

    async def main():
        async with Clients(proc) as clients:
            client, failures = await register_and_login(clients, "frank@localhost/x", "pw")
            assert failures == [] and not client.started.is_set()  # no form: it just tried to log in
            assert client.auth_failed.is_set()

    run(main())
