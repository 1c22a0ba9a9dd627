"""Durability (issue 8): what a user was told succeeded survives ``kill -9`` of the server right after.

Every test starts ``twistd xmppd`` with real storage, does one operation with a real client (slixmpp) or
``xmppdctl``, waits for the answer that says it succeeded, SIGKILLs the server at once (no shutdown code
runs: no draining of storage work, no closing of the database), starts a new server on the same data
directory and shows, again with a real client, that the data is there.

A sender is told nothing when a message is stored offline, so that test watches the storage itself (read
only, from outside the server) until the message is committed, and only then kills the server.

The tests run over both SQL backends: SQLite (a file in data_dir) and PostgreSQL
(127.0.0.1:5432, database ``test``), each PostgreSQL run in a schema of its own, dropped afterwards.
"""

from __future__ import annotations

import asyncio
import datetime
import signal
import sqlite3
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from slixclient import DEFAULT_PLUGINS as CLIENT_PLUGINS
from slixclient import TIMEOUT, Client, Clients, run, run_as_alice, within

from xmppd.config import DEFAULT_PLUGINS
from xmppd.testing.postgres import POSTGRES_DSN, fresh_schema, postgres_unreachable
from xmppd.testing.process import ServerProcess

NS_ROSTER = "jabber:iq:roster"
USERS = {"alice@localhost": "alice-pw", "bob@localhost": "bob-pw"}

BACKENDS = ["sqlite", "postgresql"]


# -- storage ---------------------------------------------------------------------------------------------


class Storage:
    """The ``[storage]`` section of one test's server, and a read-only look into what it has committed."""

    def __init__(self, backend: str, schema: str | None = None, dsn: str | None = None) -> None:
        self.backend = backend
        self.schema = schema
        self.section: dict[str, Any] = {"backend": backend}
        if dsn is not None:
            self.section["dsn"] = dsn

    def holds(self, proc: ServerProcess, text: str) -> bool:
        """Whether some committed row of any table of the server's database contains ``text`` (the tests
        do not depend on how a backend lays out its tables)."""
        if self.backend == "sqlite":
            path = proc.data_dir / "xmppd.sqlite"
            if not path.exists():
                return False
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
            try:
                tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
                return any(
                    text in str(row) for table in tables for row in db.execute(f'SELECT * FROM "{table}"')
                )
            finally:
                db.close()
        import psycopg
        from psycopg import sql

        with psycopg.connect(POSTGRES_DSN) as db:
            tables = [
                r[0]
                for r in db.execute(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (self.schema,)
                )
            ]
            for table in tables:
                query = sql.SQL("SELECT count(*) FROM {}.{} AS r WHERE r::text LIKE %s").format(
                    sql.Identifier(self.schema), sql.Identifier(table)
                )
                if db.execute(query, (f"%{text}%",)).fetchone()[0]:
                    return True
        return False

    async def wait_holds(self, proc: ServerProcess, text: str, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not self.holds(proc, text):
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} was not committed to {self.backend} within {timeout}s")
            await asyncio.sleep(0.02)


@pytest.fixture(params=BACKENDS)
def storage(request: pytest.FixtureRequest) -> Iterator[Storage]:
    if request.param == "sqlite":
        yield Storage("sqlite")
        return
    reason = postgres_unreachable()
    if reason:
        pytest.skip(reason)
    with fresh_schema("durability") as (schema, dsn):
        yield Storage("postgresql", schema, dsn)


@pytest.fixture
def start(storage: Storage, xmpp_process: Callable[..., ServerProcess]) -> Callable[..., ServerProcess]:
    """``start(plugins=(), users=USERS)``: a server on the test's storage backend with the default plugins
    and ``plugins``. It is stopped after the test, before its PostgreSQL schema is dropped (``storage`` is
    set up first, so it is torn down last)."""

    def make(plugins: tuple[str, ...] = (), users: dict[str, str] | None = None) -> ServerProcess:
        config = {"plugins": {"enabled": [*DEFAULT_PLUGINS, *plugins]}, "storage": storage.section}
        return xmpp_process(config=config, users=USERS if users is None else users)

    return make


def kill(proc: ServerProcess) -> None:
    """SIGKILL the server: nothing it had not written by now gets written."""
    code = proc.kill()
    assert code == -signal.SIGKILL, f"the server was not killed but exited with {code}:\n{proc.log()[-3000:]}"


# -- roster ----------------------------------------------------------------------------------------------


def record_pushes(client: Client) -> asyncio.Queue:
    """Roster pushes (iq type='set' with a jabber:iq:roster query) the client receives, as XML."""
    pushes: asyncio.Queue = asyncio.Queue()

    def incoming(stanza: Any) -> Any:
        if stanza.xml.get("type") == "set" and stanza.xml.find(f"{{{NS_ROSTER}}}query") is not None:
            pushes.put_nowait(stanza.xml)
        return stanza

    client.add_filter("in", incoming)
    return pushes


async def roster_set(client: Client, jid: str, name: str, groups: list[str]) -> ET.Element:
    """A roster set (RFC 6121 s2.1.5) of one item; the answer's XML (IqError if it is an error)."""
    iq = client.make_iq_set()
    query = ET.Element(f"{{{NS_ROSTER}}}query")
    item = ET.SubElement(query, f"{{{NS_ROSTER}}}item", jid=jid, name=name)
    for group in groups:
        ET.SubElement(item, f"{{{NS_ROSTER}}}group").text = group
    iq.append(query)
    return (await iq.send(timeout=TIMEOUT)).xml


async def roster_get(client: Client) -> tuple[str | None, dict[str, dict[str, Any]]]:
    """The roster's version and its items: jid -> name, groups (a set), subscription."""
    answer = await client.iq_get(None, f"<query xmlns='{NS_ROSTER}'/>")
    query = answer.find(f"{{{NS_ROSTER}}}query")
    assert query is not None, ET.tostring(answer)
    items = {
        item.get("jid"): {
            "name": item.get("name"),
            "groups": {g.text for g in item.findall(f"{{{NS_ROSTER}}}group")},
            "subscription": item.get("subscription"),
        }
        for item in query.findall(f"{{{NS_ROSTER}}}item")
    }
    return query.get("ver"), items


def roster_after_restart(proc: ServerProcess) -> tuple[str | None, dict[str, dict[str, Any]]]:
    """Start the killed server again and read alice's roster (version and items)."""
    proc.start()
    found: list[tuple[str | None, dict[str, dict[str, Any]]]] = []

    async def read(alice: Client) -> None:
        found.append(await roster_get(alice))

    run_as_alice(proc, read)
    return found[0]


def test_roster_item_survives_kill(start):
    proc = start()

    async def add_bob() -> None:
        async with Clients(proc) as clients:
            alice = await clients.login("alice@localhost/phone", "alice-pw")
            pushes = record_pushes(alice)
            await roster_get(alice)  # an interested resource: it gets pushes (RFC 6121 s2.1.6)
            answer = await roster_set(alice, "bob@localhost", "Bobby", ["Friends", "Chess club"])
            assert answer.get("type") == "result"
            push = await within(pushes.get())
            item = push.find(f"{{{NS_ROSTER}}}query/{{{NS_ROSTER}}}item")
            assert item is not None and item.get("jid") == "bob@localhost"
            kill(proc)  # told twice (the result and the push): now crash

    run(add_bob())
    ver, items = roster_after_restart(proc)
    assert items == {
        "bob@localhost": {
            "name": "Bobby",
            "groups": {"Friends", "Chess club"},
            "subscription": "none",
        }
    }
    assert ver == "1"


def test_fifty_pipelined_roster_sets_survive_kill(start):
    """50 roster sets sent at once, without waiting for answers: the server answers them as fast as it
    stores them, and the kill comes right after the last answer."""
    proc = start()
    contacts = {
        f"contact{i:02}@example.net": {
            "name": f"Contact {i}",
            "groups": {f"Group {i % 7}"},
            "subscription": "none",
        }
        for i in range(50)
    }

    async def add_all() -> None:
        async with Clients(proc) as clients:
            alice = await clients.login("alice@localhost/phone", "alice-pw")
            answers = await asyncio.gather(
                *(
                    roster_set(alice, jid, item["name"], sorted(item["groups"]))
                    for jid, item in contacts.items()
                )
            )
            kill(proc)
            assert [a.get("type") for a in answers] == ["result"] * 50

    run(add_all())
    ver, items = roster_after_restart(proc)
    assert items == contacts
    assert ver == "50"


def test_roster_sets_answered_before_a_kill_in_the_middle_survive(start):
    """The kill comes while roster sets are still in flight: every set that was answered is there after
    the restart, and the roster is whole (its version counts exactly the items it holds)."""
    proc = start()
    sent = [f"contact{i:02}@example.net" for i in range(50)]
    answered: list[str] = []

    async def add_all() -> None:
        async with Clients(proc) as clients:
            alice = await clients.login("alice@localhost/phone", "alice-pw")

            killed = asyncio.Event()  # set by the 20th answer, or by any failure before it

            async def add(jid: str) -> None:
                try:
                    answer = await roster_set(alice, jid, jid.upper(), ["Flood"])
                except BaseException:
                    killed.set()
                    raise
                assert answer.get("type") == "result"
                answered.append(jid)
                if len(answered) == 20:
                    kill(proc)
                    killed.set()

            tasks = [asyncio.ensure_future(add(jid)) for jid in sent]
            await within(killed.wait())
            for task in tasks:
                task.cancel()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            failures = [o for o in outcomes if o is not None and not isinstance(o, asyncio.CancelledError)]
            assert not failures and proc.process is None, failures

    run(add_all())
    ver, items = roster_after_restart(proc)
    assert set(answered) <= set(items) <= set(sent)
    assert ver == str(len(items))
    assert all(
        item == {"name": jid.upper(), "groups": {"Flood"}, "subscription": "none"}
        for jid, item in items.items()
    )


# -- accounts --------------------------------------------------------------------------------------------


def test_account_created_with_xmppdctl_survives_kill(start):
    proc = start(users={})
    result = proc.ctl("adduser", "carol@localhost", "carol-pw")
    assert result.stdout.strip() == "created carol@localhost"
    # It went to the running server over the control socket, not straight to the storage.
    assert "control command adduser" in proc.log()
    kill(proc)
    proc.start()

    async def check() -> None:
        async with Clients(proc) as clients:
            carol = await clients.login("carol@localhost/laptop", "carol-pw")
            assert carol.connected

    run(check())


# -- offline messages ------------------------------------------------------------------------------------


def test_offline_message_survives_kill(start, storage):
    proc = start(plugins=("offline",))
    body = f"durable-{uuid.uuid4().hex}"
    sent_at: list[datetime.datetime] = []

    async def send() -> None:
        async with Clients(proc) as clients:
            alice = await clients.login("alice@localhost/phone", "alice-pw")
            sent_at.append(datetime.datetime.now(datetime.UTC))
            alice.send_message(mto="bob@localhost", mbody=body, mtype="chat")
            # The sender is told nothing; the test waits until the storage has it committed.
            await storage.wait_holds(proc, body)
            kill(proc)

    run(send())
    proc.start()

    async def receive() -> None:
        async with Clients(proc) as clients:
            bob = await clients.login("bob@localhost/pc", "bob-pw", plugins=(*CLIENT_PLUGINS, "xep_0203"))
            message = await bob.next_message()
            assert message["body"] == body
            assert message["from"].bare == "alice@localhost"
            delay = message["delay"]
            assert delay["from"] == "localhost"
            stamp = delay["stamp"]
            assert sent_at[0] - datetime.timedelta(seconds=2) <= stamp <= datetime.datetime.now(datetime.UTC)

    run(receive())
