"""Offline messages (XEP-0160) and the blocking command (XEP-0191) as a user sees them: real slixmpp
clients over c2s (STARTTLS, SCRAM, bind) to ``twistd xmppd`` on loopback, with SQLite storage that has to
survive a restart of the server."""

from __future__ import annotations

import asyncio
import datetime
import sqlite3
import time
from typing import Any

from slixclient import DEFAULT_PLUGINS as CLIENT_PLUGINS
from slixclient import Client, Clients, run, within

from xmppd.config import DEFAULT_PLUGINS

USERS = {"alice@localhost": "alice-pw", "bob@localhost": "bob-pw"}
PLUGINS = (*CLIENT_PLUGINS, "xep_0191", "xep_0203")
NS_DELAY = "urn:xmpp:delay"
NS_BLOCKING_ERRORS = "urn:xmpp:blocking:errors"


def server(xmpp_process: Any) -> Any:
    return xmpp_process(
        config={
            "plugins": {"enabled": [*DEFAULT_PLUGINS, "offline", "blocking"]},
            "storage": {"backend": "sqlite"},
        },
        users=USERS,
    )


def record_errors(client: Client) -> asyncio.Queue:
    """Error messages the client receives (slixmpp reports them as ``message_error``, not ``message``)."""
    errors: asyncio.Queue = asyncio.Queue()
    client.add_event_handler("message_error", errors.put_nowait)
    return errors


async def round_trip(client: Client) -> None:
    """A ping to the server and its answer: what the server sent the client before is in by now."""
    await client.plugin["xep_0199"].ping("localhost", timeout=5)


async def wait_stored(proc: Any, user: str, count: int, timeout: float = 10) -> None:
    """Wait until ``user`` has ``count`` offline messages in the server's SQLite file. A sender gets no
    acknowledgement of storage, and the server does not finish storage work still in flight when it is
    stopped, so the test waits for the write before restarting the server."""
    path = proc.data_dir / "xmppd.sqlite"
    deadline = time.monotonic() + timeout
    while True:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            row = db.execute(
                "SELECT count(*) FROM archive"
                " WHERE host = 'localhost' AND store = 'offline' AND \"user\" = ?",
                (user,),
            ).fetchone()
        if row is not None and row[0] >= count:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{count} offline message(s) for {user} not stored: {row}")
        await asyncio.sleep(0.05)


def test_offline_message_is_delivered_with_its_delay_after_a_restart(xmpp_process):
    proc = server(xmpp_process)
    sent_at: list[datetime.datetime] = []

    async def before():
        async with Clients(proc) as clients:
            alice = await clients.login("alice@localhost/phone", "alice-pw", plugins=PLUGINS)
            info = await alice.plugin["xep_0030"].get_info(jid="localhost", timeout=5)
            assert {"msgoffline", "urn:xmpp:blocking"} <= set(info["disco_info"]["features"])
            errors = record_errors(alice)
            sent_at.append(datetime.datetime.now(datetime.UTC))
            alice.send_message(mto="bob@localhost", mbody="See you tomorrow", mtype="chat")
            alice.send_message(mto="bob@localhost", mbody="Bring the map", mtype="chat")
            await round_trip(alice)
            await wait_stored(proc, "bob", 2)
            assert errors.empty()  # stored, not bounced

    run(before())
    proc.stop()
    proc.start()  # same data directory, perhaps another port: Clients asks proc.port() again

    async def after():
        async with Clients(proc) as clients:
            bob = await clients.login("bob@localhost/pc", "bob-pw", plugins=PLUGINS)
            first = await bob.next_message()
            second = await bob.next_message()
            assert [first["body"], second["body"]] == ["See you tomorrow", "Bring the map"]
            assert first["from"] == "alice@localhost/phone"
            delay = first.xml.find(f"{{{NS_DELAY}}}delay")
            assert delay is not None and delay.get("from") == "localhost"
            stamp = first["delay"]["stamp"]
            assert (
                sent_at[0] - datetime.timedelta(seconds=5)
                <= stamp
                <= sent_at[0] + datetime.timedelta(seconds=30)
            )
            await round_trip(bob)
            assert bob.messages.empty()
        async with Clients(proc) as clients:  # delivered once: the store is empty now
            again = await clients.login("bob@localhost/laptop", "bob-pw", plugins=PLUGINS)
            await round_trip(again)
            assert again.messages.empty()

    run(after())


def test_a_blocked_contact_cannot_reach_the_user_even_after_a_restart(xmpp_process):
    proc = server(xmpp_process)

    async def block_bob():
        async with Clients(proc) as clients:
            alice = await clients.login("alice@localhost/phone", "alice-pw", plugins=PLUGINS)
            bob = await clients.login("bob@localhost/pc", "bob-pw", plugins=PLUGINS)
            bob_errors = record_errors(bob)
            alice_errors = record_errors(alice)
            assert await alice.plugin["xep_0191"].get_blocked_jids(timeout=5) == set()
            await alice.plugin["xep_0191"].block("bob@localhost", timeout=5)
            assert await alice.plugin["xep_0191"].get_blocked_jids(timeout=5) == {"bob@localhost"}

            bob.send_message(mto="alice@localhost", mbody="Let me in", mtype="chat")
            error = await within(bob_errors.get())
            assert error["error"]["condition"] == "service-unavailable"
            await round_trip(alice)
            assert alice.messages.empty()

            alice.send_message(mto="bob@localhost", mbody="Never mind", mtype="chat")
            error = await within(alice_errors.get())
            assert error["error"]["condition"] == "not-acceptable"
            assert error.xml.find(f".//{{{NS_BLOCKING_ERRORS}}}blocked") is not None
            await round_trip(bob)
            assert bob.messages.empty()

    run(block_bob())
    proc.stop()
    proc.start()

    async def still_blocked():
        async with Clients(proc) as clients:
            bob = await clients.login("bob@localhost/pc", "bob-pw", plugins=PLUGINS)
            bob_errors = record_errors(bob)
            # alice is offline: the block holds, and nothing is stored for her either
            bob.send_message(mto="alice@localhost", mbody="Are you there?", mtype="chat")
            assert (await within(bob_errors.get()))["error"]["condition"] == "service-unavailable"
            alice = await clients.login("alice@localhost/phone", "alice-pw", plugins=PLUGINS)
            assert await alice.plugin["xep_0191"].get_blocked_jids(timeout=5) == {"bob@localhost"}
            await round_trip(alice)
            assert alice.messages.empty()
            await alice.plugin["xep_0191"].unblock("bob@localhost", timeout=5)
            bob.send_message(mto="alice@localhost", mbody="Friends again?", mtype="chat")
            message = await alice.next_message()
            assert message["body"] == "Friends again?"
            assert bob_errors.empty()

    run(still_blocked())
