"""The storage contract (xmppd.storage.base.Storage: keyval, map, archive) on every backend: memory,
SQLite (a file in a temporary directory) and PostgreSQL; then schema migrations and ``xmppdctl migrate``.

Each check is an ``async`` function taking a ``Backend`` that opens started storages on the same data
(``open`` twice = reopen). MemoryStorage answers with already-fired Deferreds, so its checks run right here
(a memory "reopen" gives the same object back). The SQL backends run their queries on adbapi thread pools
bound to the global reactor, which must run and cannot be restarted; so each SQL backend runs every check
in one subprocess (``twisted.internet.task.react``) that imports this file and reports each check's
traceback as JSON.

PostgreSQL: ``XMPPD_TEST_POSTGRES_DSN`` (default ``host=127.0.0.1 port=5432 user=postgres dbname=test``,
trust authentication). Every check gets a schema of its own (``options=-csearch_path=...``), created before
and dropped after, so checks never see each other's data. The PostgreSQL tests skip, saying why, only when
nothing answers at that address; a server that answers but refuses us fails them.
"""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.python.failure import Failure

from xmppd.storage import StorageError, open_storage
from xmppd.storage.base import ArchiveItem, ArchivePage, ArchiveQuery, SchemaError
from xmppd.storage.cache import MIB, DocumentCache
from xmppd.storage.memory import MemoryStorage
from xmppd.storage.paging import page_of
from xmppd.testing.postgres import POSTGRES_DSN, fresh_schema, postgres_unreachable

ALL = ("memory", "sqlite", "postgresql")
SQL = ("sqlite", "postgresql")

# The schema of version 1, as the code before migrations created it (xmppd/storage/sqlite.py, schema 1).
V1_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    'CREATE TABLE IF NOT EXISTS keyval (host TEXT NOT NULL, store TEXT NOT NULL, "user" TEXT NOT NULL,'
    ' value TEXT NOT NULL, PRIMARY KEY (host, store, "user"))',
    'CREATE INDEX IF NOT EXISTS keyval_user ON keyval (host, "user")',
]


class Backend:
    """Opens started storages of one kind on one set of data, and reaches that data with raw SQL."""

    def __init__(self, kind: str, directory: Path, dsn: str | None = None) -> None:
        self.kind = kind
        self.directory = directory
        self.path = directory / "data" / "xmppd.sqlite"
        self.dsn = dsn  # PostgreSQL, with this check's own search_path
        self.opened: list[Any] = []
        self._memory: MemoryStorage | None = None

    def storage(self) -> Any:
        """A storage on this backend's data, not started."""
        if self.kind == "memory":
            if self._memory is None:
                self._memory = MemoryStorage()
            return self._memory
        if self.kind == "sqlite":
            from xmppd.storage.sqlite import SQLiteStorage

            storage = SQLiteStorage(self.path)
        else:
            from xmppd.storage.postgresql import PostgreSQLStorage

            storage = PostgreSQLStorage(self.dsn, pool_size=4)
        # As the server runs them (storage_from_config): every check also checks the document cache.
        storage.cache = DocumentCache(MIB)
        return storage

    async def open(self) -> Any:
        storage = self.storage()
        await storage.start()
        self.opened.append(storage)
        return storage

    async def close(self) -> None:
        for storage in self.opened:
            await storage.stop()
        self.opened.clear()

    def execute(self, statements: list[str], args: tuple = ()) -> list[tuple]:
        """Run SQL straight on the database (``?`` placeholders), as another program would; the rows of the
        last statement."""
        rows: list[tuple] = []
        if self.kind == "sqlite":
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with sqlite3.connect(self.path) as conn:
                for statement in statements:
                    rows = conn.execute(statement, args).fetchall()
            conn.close()
            return rows
        import psycopg

        with psycopg.connect(self.dsn) as conn:
            for statement in statements:
                cursor = conn.execute(statement.replace("?", "%s"), args)
                rows = cursor.fetchall() if cursor.description else []
        return rows


Check = Callable[[Backend], Awaitable[None]]
CHECKS: dict[str, tuple[Check, tuple[str, ...]]] = {}


def check(*kinds: str) -> Callable[[Check], Check]:
    def register(fn: Check) -> Check:
        CHECKS[fn.__name__] = (fn, kinds or ALL)
        return fn

    return register


async def refused(call: Callable[[], Any], *errors: type[BaseException]) -> BaseException:
    """The error ``call`` fails with, raised at once or through its Deferred."""
    try:
        await call()
    except errors as e:
        return e
    raise AssertionError(f"accepted: {call}")


def item_values(page: ArchivePage) -> list[str]:
    return [item.value for item in page.items]


# -- keyval ----------------------------------------------------------------------------------------------


@check()
async def keyval_set_get_delete(backend: Backend) -> None:
    storage = await backend.open()
    assert await storage.get("localhost", "notes", "alice") is None
    assert await storage.set("localhost", "notes", "alice", {"text": "hi"}) is None
    assert await storage.get("localhost", "notes", "alice") == {"text": "hi"}
    await storage.set("localhost", "notes", "alice", ["replaced"])
    assert await storage.get("localhost", "notes", "alice") == ["replaced"]
    await storage.set("localhost", "notes", "alice", None)
    assert await storage.get("localhost", "notes", "alice") is None
    await storage.set("localhost", "notes", "nobody", None)  # deleting nothing is fine
    for user, value in [("a", {}), ("b", []), ("c", ""), ("d", 0), ("e", False), ("f", 1.5)]:
        await storage.set("localhost", "falsy", user, value)
        got = await storage.get("localhost", "falsy", user)
        assert got == value and type(got) is type(value), user


@check("sqlite", "postgresql")
async def keyval_document_cache_is_never_older_than_the_database(backend: Backend) -> None:
    """The SQL backends' document cache (xmppd.storage.cache): hits answer without the database, and no
    interleaving of reads and writes leaves a value older than the last write in it."""
    storage = await backend.open()
    cache = storage.cache
    await storage.set("localhost", "notes", "alice", {"n": 1})
    hits = cache.hits
    assert await storage.get("localhost", "notes", "alice") == {"n": 1}
    assert cache.hits == hits + 1  # the committed write was cached
    value = await storage.get("localhost", "notes", "alice")
    value["n"] = 99  # the caller's copy: the cache keeps its text
    assert await storage.get("localhost", "notes", "alice") == {"n": 1}
    # A write asked for while a read is in flight: the read may answer either, the cache must not keep it.
    reading = storage.get("localhost", "notes", "bob")
    writing = storage.set("localhost", "notes", "bob", {"n": 2})
    await reading
    await writing
    assert await storage.get("localhost", "notes", "bob") == {"n": 2}
    # Two writes in a row: the first one's completion must not cache its (older) value.
    first = storage.set("localhost", "notes", "alice", {"n": 3})
    second = storage.set("localhost", "notes", "alice", {"n": 4})
    await first
    assert await storage.get("localhost", "notes", "alice") == {"n": 4}
    await second
    assert await storage.get("localhost", "notes", "alice") == {"n": 4}
    await storage.set("localhost", "notes", "alice", None)
    assert await storage.get("localhost", "notes", "alice") is None
    hits = cache.hits
    assert await storage.get("localhost", "notes", "nobody") is None
    assert await storage.get("localhost", "notes", "nobody") is None
    assert cache.hits == hits + 1  # absence is cached too
    await storage.set("localhost", "notes", "nobody", {"n": 0})
    assert await storage.get("localhost", "notes", "nobody") == {"n": 0}
    await storage.set("localhost", "notes", "carol", {"n": 5})
    await storage.get("localhost", "notes", "carol")
    await storage.purge_user("localhost", "carol")
    assert await storage.get("localhost", "notes", "carol") is None
    # What another program writes while the storage is closed is seen after a reopen.
    await storage.set("localhost", "notes", "dave", {"n": 6})
    await backend.close()
    backend.execute(['UPDATE keyval SET value = ? WHERE "user" = ?'], ('{"n": 7}', "dave"))
    storage = await backend.open()
    assert await storage.get("localhost", "notes", "dave") == {"n": 7}


@check()
async def keyval_keys_are_separate_and_listed(backend: Backend) -> None:
    storage = await backend.open()
    assert await storage.users("localhost", "notes") == []
    keys = [
        ("a.example", "notes", "alice"),
        ("b.example", "notes", "alice"),
        ("a.example", "drafts", "alice"),
        ("a.example", "notes", "bob"),
    ]
    for index, key in enumerate(keys):
        await storage.set(*key, {"n": index})
    for index, key in enumerate(keys):
        assert await storage.get(*key) == {"n": index}, key
    await storage.set("a.example", "notes", "alice", None)
    assert await storage.get("b.example", "notes", "alice") == {"n": 1}
    assert await storage.get("a.example", "drafts", "alice") == {"n": 2}
    assert await storage.users("a.example", "notes") == ["bob"]  # a deleted document is not listed
    for user, scalar in [("s", "just a string"), ("n", 42), ("f", 1.5), ("l", [1, 2, 3])]:
        await storage.set("localhost", "docs", user, scalar)
        assert await storage.get("localhost", "docs", user) == scalar


@check()
async def keyval_users_sorted_by_code_point(backend: Backend) -> None:
    storage = await backend.open()
    names = ["mallory", "Zoe", "alice", "zoe", "Émile", "bob", "émile", "_x", "carol", "日本"]
    for name in names:
        await storage.set("localhost", "notes", name, 1)
    await storage.set("localhost", "other", "dave", 1)
    await storage.set("elsewhere", "notes", "erin", 1)
    # Python's order (code points), whatever the database's collation would say.
    assert await storage.users("localhost", "notes") == sorted(names)
    assert await storage.users("localhost", "other") == ["dave"]
    assert await storage.users("nowhere", "notes") == []


@check()
async def keyval_odd_keys_and_values(backend: Backend) -> None:
    storage = await backend.open()
    keys = [
        ("ëxample.org", "störe", "ünïcode 😀"),
        ("localhost", "a'b", 'quote"d'),
        ("localhost", "s", "a%_b?"),
    ]
    value = {
        "text": "héllo ☃ 😀 \"quotes\" 'single' <xml> & \x00 nul ? %s",
        "int": 2**53,
        "float": 0.1,
        "none": None,
        "nested": {"a": [1, {"b": None}, (2, 3)]},
        "": "empty key",
    }
    for key in keys:
        await storage.set(*key, value)
    expected = json.loads(json.dumps(value))  # tuples come back as lists
    for key in keys:
        assert await storage.get(*key) == expected, key
    assert await storage.get("localhost", "s", "aX_b?") is None  # no LIKE-style matching
    await storage.set("localhost", "big", "alice", {"blob": "x" * 1_000_000, "list": list(range(10000))})
    assert await storage.get("localhost", "big", "alice") == {
        "blob": "x" * 1_000_000,
        "list": list(range(10000)),
    }


@check()
async def keyval_values_are_copies_and_json_only(backend: Backend) -> None:
    storage = await backend.open()
    value = {"items": [1, 2]}
    await storage.set("localhost", "docs", "alice", value)
    value["items"].append(3)
    got = await storage.get("localhost", "docs", "alice")
    got["items"].append(4)
    assert await storage.get("localhost", "docs", "alice") == {"items": [1, 2]}
    for bad in (object(), {"set": {1, 2}}, b"bytes", {1: {2: object()}}):
        await refused(lambda bad=bad: storage.set("localhost", "docs", "bob", bad), TypeError, ValueError)
    assert await storage.get("localhost", "docs", "bob") is None


# -- map -------------------------------------------------------------------------------------------------


@check()
async def map_set_get_items(backend: Backend) -> None:
    storage = await backend.open()
    assert await storage.map_get("localhost", "private", "alice", "jabber:iq:roster") is None
    assert await storage.map_items("localhost", "private", "alice") == {}
    assert await storage.map_set("localhost", "private", "alice", "ns:one", {"xml": "<a/>"}) is None
    await storage.map_set("localhost", "private", "alice", "ns:two", [1, 2])
    await storage.map_set("localhost", "private", "alice", "ns:one", {"xml": "<b/>"})  # replaced
    assert await storage.map_get("localhost", "private", "alice", "ns:one") == {"xml": "<b/>"}
    assert await storage.map_items("localhost", "private", "alice") == {
        "ns:one": {"xml": "<b/>"},
        "ns:two": [1, 2],
    }
    await storage.map_set("localhost", "private", "alice", "ns:one", None)
    assert await storage.map_get("localhost", "private", "alice", "ns:one") is None
    assert await storage.map_items("localhost", "private", "alice") == {"ns:two": [1, 2]}
    await storage.map_set("localhost", "private", "alice", "ns:two", None)
    assert await storage.map_items("localhost", "private", "alice") == {}
    await storage.map_set("localhost", "private", "alice", "never", None)  # deleting nothing is fine


@check()
async def map_keys_are_separate(backend: Backend) -> None:
    storage = await backend.open()
    owners = [
        ("a.example", "m", "alice"),
        ("b.example", "m", "alice"),
        ("a.example", "n", "alice"),
        ("a.example", "m", "bob"),
    ]
    for index, owner in enumerate(owners):
        await storage.map_set(*owner, "k", index)
        await storage.map_set(*owner, f"k{index}", [index])
    for index, owner in enumerate(owners):
        assert await storage.map_items(*owner) == {"k": index, f"k{index}": [index]}, owner
    await storage.map_set("a.example", "m", "alice", "k", None)
    assert await storage.map_get("b.example", "m", "alice", "k") == 1
    assert await storage.map_get("a.example", "m", "bob", "k") == 3


@check()
async def map_odd_keys_and_values(backend: Backend) -> None:
    storage = await backend.open()
    keys = ["", "ünïcode 😀", "a%_b", "quote'd\"", "urn:xmpp:bookmarks:1", "k" * 1000]
    for index, key in enumerate(keys):
        await storage.map_set("localhost", "m", "alice", key, {"i": index, "text": "☃ \x00 ?"})
    items = await storage.map_items("localhost", "m", "alice")
    assert items == {key: {"i": index, "text": "☃ \x00 ?"} for index, key in enumerate(keys)}
    assert await storage.map_get("localhost", "m", "alice", "aX_b") is None
    for falsy in ({}, [], "", 0, False):
        await storage.map_set("localhost", "m", "bob", "f", falsy)
        got = await storage.map_get("localhost", "m", "bob", "f")
        assert got == falsy and type(got) is type(falsy)
    big = {"blob": "y" * 500_000}
    await storage.map_set("localhost", "m", "carol", "big", big)
    assert await storage.map_get("localhost", "m", "carol", "big") == big
    await refused(lambda: storage.map_set("localhost", "m", "dave", "k", {1, 2}), TypeError, ValueError)
    assert await storage.map_items("localhost", "m", "dave") == {}


# -- archive ---------------------------------------------------------------------------------------------


async def fill(storage: Any, user: str = "alice", count: int = 10, store: str = "log") -> list[str]:
    """``count`` items: value "m<i>", when 1000 + i, with_ alternating bob's bare and full JIDs and carol."""
    ids = []
    withs = ["bob@example.org", "bob@example.org/phone", "carol@example.org/pc", None]
    for i in range(count):
        ids.append(
            await storage.archive_append("localhost", store, user, f"m{i}", when=1000 + i, with_=withs[i % 4])
        )
    return ids


@check()
async def archive_append_and_read_back(backend: Backend) -> None:
    storage = await backend.open()
    empty = await storage.archive_query("localhost", "log", "alice", ArchiveQuery())
    assert (empty.items, empty.complete, empty.count) == ([], True, 0)
    values = ["<message>héllo ☃ 😀</message>", "", "x" * 300_000, "'quotes\" ? %s %%"]
    ids = []
    for index, value in enumerate(values):
        ids.append(
            await storage.archive_append(
                "localhost", "log", "alice", value, when=1700000000.123456 + index, with_="bob@example.org/r"
            )
        )
    assert all(isinstance(i, str) and i.isdigit() for i in ids)
    assert [int(i) for i in ids] == sorted(int(i) for i in ids) and len(set(ids)) == len(ids)
    page = await storage.archive_query("localhost", "log", "alice", ArchiveQuery())
    assert page.items == [
        ArchiveItem(i, 1700000000.123456 + index, "bob@example.org/r", value)
        for index, (i, value) in enumerate(zip(ids, values, strict=True))
    ]
    assert (page.complete, page.count) == (True, 4)
    assert all(type(item.when) is float for item in page.items)
    other = await storage.archive_append("localhost", "log", "bob", "no with", when=5)
    assert (await storage.archive_query("localhost", "log", "bob", ArchiveQuery())).items == [
        ArchiveItem(other, 5.0, None, "no with")
    ]


@check()
async def archive_refuses_what_it_cannot_store(backend: Backend) -> None:
    storage = await backend.open()
    await refused(lambda: storage.archive_append("localhost", "log", "alice", b"bytes", when=1), TypeError)
    await refused(lambda: storage.archive_append("localhost", "log", "alice", {"a": 1}, when=1), TypeError)
    await refused(lambda: storage.archive_append("localhost", "log", "alice", "a\x00b", when=1), ValueError)
    await refused(
        lambda: storage.archive_append("localhost", "log", "alice", "a", when=1, keep=-1), ValueError
    )
    await refused(
        lambda: storage.archive_query("localhost", "log", "alice", ArchiveQuery(limit=-1)), ValueError
    )
    assert (await storage.archive_query("localhost", "log", "alice", ArchiveQuery())).count == 0


@check()
async def archive_time_range(backend: Backend) -> None:
    storage = await backend.open()
    await fill(storage)
    page = await storage.archive_query("localhost", "log", "alice", ArchiveQuery(start=1003, end=1006))
    assert item_values(page) == ["m3", "m4", "m5", "m6"]  # both ends included
    assert (page.count, page.complete) == (4, True)
    assert item_values(
        await storage.archive_query("localhost", "log", "alice", ArchiveQuery(start=1008.5))
    ) == ["m9"]
    assert item_values(
        await storage.archive_query("localhost", "log", "alice", ArchiveQuery(end=1000.9))
    ) == ["m0"]
    nothing = await storage.archive_query("localhost", "log", "alice", ArchiveQuery(start=1006, end=1003))
    assert (nothing.items, nothing.count) == ([], 0)


@check()
async def archive_with_bare_and_full_jids(backend: Backend) -> None:
    storage = await backend.open()
    for index, with_ in enumerate(
        [
            "bob@example.org",
            "bob@example.org/phone",
            "bob@example.org/pc/with/slashes",
            "bob@example.org.evil",
            "bob@example.orgx/r",
            "bobby@example.org/r",
            "example.org",
            "example.org/res",
            None,
            "BOB@example.org/phone",
            "b%b@example.org/r",
        ]
    ):
        await storage.archive_append("localhost", "log", "alice", f"m{index}", when=index, with_=with_)

    async def values(with_: str) -> list[str]:
        page = await storage.archive_query("localhost", "log", "alice", ArchiveQuery(with_=with_))
        assert page.count == len(page.items)
        return item_values(page)

    assert await values("bob@example.org") == ["m0", "m1", "m2"]  # bare: itself and every full JID
    assert await values("bob@example.org/phone") == ["m1"]  # full: exactly
    assert await values("bob@example.org/pc") == []
    assert await values("bob@example.org/pc/with/slashes") == ["m2"]
    assert await values("example.org") == ["m6", "m7"]
    assert await values("b_b@example.org") == []  # no LIKE-style matching
    assert await values("b%b@example.org") == ["m10"]
    assert await values("nobody@example.org") == []


@check()
async def archive_paging_forwards(backend: Backend) -> None:
    storage = await backend.open()
    ids = await fill(storage)
    seen: list[str] = []
    after = None
    while True:
        page = await storage.archive_query("localhost", "log", "alice", ArchiveQuery(after=after, limit=3))
        assert page.count == 10
        seen += item_values(page)
        if page.complete:
            break
        after = page.items[-1].id
    assert seen == [f"m{i}" for i in range(10)]
    assert len(page.items) == 1  # 3 + 3 + 3 + 1
    exact = await storage.archive_query("localhost", "log", "alice", ArchiveQuery(after=ids[6], limit=3))
    assert (item_values(exact), exact.complete) == (["m7", "m8", "m9"], True)
    first = await storage.archive_query("localhost", "log", "alice", ArchiveQuery(limit=10))
    assert (len(first.items), first.complete) == (10, True)
    zero = await storage.archive_query("localhost", "log", "alice", ArchiveQuery(limit=0))
    assert (zero.items, zero.complete, zero.count) == ([], False, 10)
    filtered = await storage.archive_query(
        "localhost", "log", "alice", ArchiveQuery(with_="bob@example.org", after=ids[0], limit=2)
    )
    assert (item_values(filtered), filtered.complete, filtered.count) == (["m1", "m4"], False, 6)


@check()
async def archive_paging_backwards(backend: Backend) -> None:
    storage = await backend.open()
    ids = await fill(storage)
    last = await storage.archive_query("localhost", "log", "alice", ArchiveQuery(reverse=True, limit=3))
    assert (item_values(last), last.complete, last.count) == (["m7", "m8", "m9"], False, 10)  # oldest first
    seen = item_values(last)
    before = last.items[0].id
    while True:
        page = await storage.archive_query("localhost", "log", "alice", ArchiveQuery(before=before, limit=3))
        seen = item_values(page) + seen
        if page.complete:
            break
        before = page.items[0].id
    assert seen == [f"m{i}" for i in range(10)]
    between = await storage.archive_query(
        "localhost", "log", "alice", ArchiveQuery(after=ids[1], before=ids[8], limit=2)
    )
    assert (item_values(between), between.complete) == (["m6", "m7"], False)  # from the end: before given
    everything = await storage.archive_query("localhost", "log", "alice", ArchiveQuery(reverse=True))
    assert (item_values(everything), everything.complete) == ([f"m{i}" for i in range(10)], True)
    ranged = await storage.archive_query(
        "localhost", "log", "alice", ArchiveQuery(start=1002, end=1007, reverse=True, limit=2)
    )
    assert (item_values(ranged), ranged.complete, ranged.count) == (["m6", "m7"], False, 6)


@check()
async def archive_paging_by_ids_that_are_gone_or_odd(backend: Backend) -> None:
    storage = await backend.open()
    ids = await fill(storage)
    assert await storage.archive_delete("localhost", "log", "alice", ids=[ids[4]]) == 1
    page = await storage.archive_query("localhost", "log", "alice", ArchiveQuery(after=ids[4], limit=2))
    assert item_values(page) == ["m5", "m6"]  # a deleted item's id still marks a place
    page = await storage.archive_query("localhost", "log", "alice", ArchiveQuery(before=ids[4], limit=2))
    assert item_values(page) == ["m2", "m3"]
    for odd in ["", "abc", "-1", "1.5", " 3", "²", "١", "0x10"]:
        for query in (ArchiveQuery(after=odd), ArchiveQuery(before=odd)):
            page = await storage.archive_query("localhost", "log", "alice", query)
            assert (page.items, page.count) == ([], 9), (odd, page)
    huge = str(10**30)
    assert (await storage.archive_query("localhost", "log", "alice", ArchiveQuery(after=huge))).items == []
    assert (
        len((await storage.archive_query("localhost", "log", "alice", ArchiveQuery(before=huge))).items) == 9
    )
    assert len((await storage.archive_query("localhost", "log", "alice", ArchiveQuery(after="0"))).items) == 9
    assert (await storage.archive_query("localhost", "log", "alice", ArchiveQuery(before="0"))).items == []


@check()
async def archive_queries_match_page_of(backend: Backend) -> None:
    """Many generated queries give exactly what the reference (xmppd.storage.paging.page_of) gives."""
    storage = await backend.open()
    rng = random.Random(20240607)
    withs = ["bob@example.org", "bob@example.org/a", "bob@example.org/b", "carol@example.org/a", None]
    for i in range(60):
        await storage.archive_append(
            "localhost",
            "log",
            "alice",
            f"m{i}",
            when=float(rng.choice(range(100, 130))),
            with_=rng.choice(withs),
        )
        if i % 7 == 0:
            await storage.archive_append("localhost", "log", "someone-else", "x", when=110.0, with_=withs[0])
    ids = [
        item.id for item in (await storage.archive_query("localhost", "log", "alice", ArchiveQuery())).items
    ]
    await storage.archive_delete("localhost", "log", "alice", ids=rng.sample(ids, 8))
    items = (await storage.archive_query("localhost", "log", "alice", ArchiveQuery())).items
    assert len(items) == 52
    marks = [*ids, "0", str(int(ids[-1]) + 5), "nope", None, None, None]
    for _ in range(300):
        query = ArchiveQuery(
            start=rng.choice([None, None, 105.0, 110.5, 120.0]),
            end=rng.choice([None, None, 108.0, 115.0, 129.0]),
            with_=rng.choice(
                [None, None, "bob@example.org", "bob@example.org/a", "carol@example.org", "x@y"]
            ),
            after=rng.choice(marks),
            before=rng.choice([*marks, None, None]),
            limit=rng.choice([None, 0, 1, 2, 5, 10, 100]),
            reverse=rng.random() < 0.3,
        )
        got = await storage.archive_query("localhost", "log", "alice", query)
        assert got == page_of(items, query), query


@check()
async def archive_keep_only_the_newest(backend: Backend) -> None:
    storage = await backend.open()
    await fill(storage, "bob", 3)
    kept = []
    for i in range(8):
        kept.append(await storage.archive_append("localhost", "log", "alice", f"m{i}", when=i, keep=3))
    page = await storage.archive_query("localhost", "log", "alice", ArchiveQuery())
    assert ([item.id for item in page.items], page.count) == (kept[-3:], 3)
    assert (await storage.archive_query("localhost", "log", "bob", ArchiveQuery())).count == 3  # untouched
    await storage.archive_append("localhost", "log", "alice", "one", when=9, keep=1)
    assert item_values(await storage.archive_query("localhost", "log", "alice", ArchiveQuery())) == ["one"]
    new = await storage.archive_append("localhost", "log", "alice", "none kept", when=10, keep=0)
    assert new.isdigit()
    assert (await storage.archive_query("localhost", "log", "alice", ArchiveQuery())).items == []
    await storage.archive_append("localhost", "log", "alice", "a", when=11, keep=100)
    assert (await storage.archive_query("localhost", "log", "alice", ArchiveQuery())).count == 1


@check()
async def archive_delete_by_age_ids_and_all(backend: Backend) -> None:
    storage = await backend.open()
    alice = await fill(storage, "alice", 10)
    bob = await fill(storage, "bob", 4)
    await fill(storage, "alice", 3, store="other-store")
    other_host = await storage.archive_append("elsewhere", "log", "alice", "far", when=1)
    assert await storage.archive_delete("localhost", "log", "alice", before=1003) == 3  # strictly older
    assert item_values(await storage.archive_query("localhost", "log", "alice", ArchiveQuery()))[0] == "m3"
    assert await storage.archive_delete("localhost", "log", "alice", before=1003) == 0
    deleted = await storage.archive_delete(
        "localhost",
        "log",
        "alice",
        ids=[alice[3], alice[5], alice[0], bob[1], "junk", "", f"0{alice[6]}", "99999999999999999999999"],
    )
    assert deleted == 2  # m0 is gone already; bob's id is not alice's; "0<id>" is not an id
    assert item_values(await storage.archive_query("localhost", "log", "alice", ArchiveQuery())) == [
        "m4",
        "m6",
        "m7",
        "m8",
        "m9",
    ]
    assert await storage.archive_delete("localhost", "log", "alice", ids=[]) == 0
    # before and ids together: both must hold.
    assert (
        await storage.archive_delete("localhost", "log", "alice", before=1007, ids=[alice[6], alice[8]]) == 1
    )
    assert item_values(await storage.archive_query("localhost", "log", "alice", ArchiveQuery())) == [
        "m4",
        "m7",
        "m8",
        "m9",
    ]
    assert await storage.archive_delete("localhost", "log", "alice") == 4
    assert await storage.archive_users("localhost", "log") == ["bob"]
    # user None: every user of this store on this host, and nothing else.
    await fill(storage, "carol", 2)
    assert await storage.archive_delete("localhost", "log", None, before=1001) == 2  # bob's m0, carol's m0
    assert await storage.archive_delete("localhost", "log", None) == 4
    assert await storage.archive_users("localhost", "log") == []
    assert (await storage.archive_query("localhost", "other-store", "alice", ArchiveQuery())).count == 3
    assert [
        i.id for i in (await storage.archive_query("elsewhere", "log", "alice", ArchiveQuery())).items
    ] == [other_host]
    assert await storage.archive_delete("localhost", "nothing-here", None) == 0


@check()
async def archive_ids_are_never_reused(backend: Backend) -> None:
    storage = await backend.open()
    first = await storage.archive_append("localhost", "log", "alice", "a", when=1)
    second = await storage.archive_append("localhost", "log", "alice", "b", when=2)
    await storage.archive_delete("localhost", "log", "alice", ids=[second])
    third = await storage.archive_append("localhost", "log", "alice", "c", when=3)
    assert int(first) < int(second) < int(third)
    await storage.archive_delete("localhost", "log", None)
    await backend.close()
    storage = await backend.open()
    fourth = await storage.archive_append("localhost", "log", "alice", "d", when=4)
    assert int(fourth) > int(third)


@check()
async def archive_users_sorted(backend: Backend) -> None:
    storage = await backend.open()
    names = ["zoe", "Zoe", "alice", "Émile", "émile", "bob"]
    for name in names:
        await storage.archive_append("localhost", "log", name, "x", when=1)
        await storage.archive_append("localhost", "log", name, "y", when=2)
    await storage.archive_append("localhost", "other", "dave", "x", when=1)
    await storage.archive_append("elsewhere", "log", "erin", "x", when=1)
    assert await storage.archive_users("localhost", "log") == sorted(names)
    assert await storage.archive_users("localhost", "other") == ["dave"]
    assert await storage.archive_users("localhost", "none") == []


# -- every shape -----------------------------------------------------------------------------------------


@check()
async def purge_user_removes_every_shape(backend: Backend) -> None:
    storage = await backend.open()
    for user in ("alice", "bob"):
        for store in ("accounts", "roster"):
            await storage.set("localhost", store, user, {"store": store})
        await storage.map_set("localhost", "private", user, "ns", {"x": 1})
        await storage.map_set("localhost", "bookmarks", user, "room", True)
        await storage.archive_append("localhost", "offline", user, "<message/>", when=1)
        await storage.archive_append("localhost", "mam", user, "<message/>", when=1)
    await storage.set("other.example", "accounts", "alice", {"keep": True})
    await storage.map_set("other.example", "private", "alice", "ns", 1)
    await storage.archive_append("other.example", "mam", "alice", "kept", when=1)
    assert await storage.purge_user("localhost", "alice") is None
    for store in ("accounts", "roster"):
        assert await storage.get("localhost", store, "alice") is None
        assert await storage.users("localhost", store) == ["bob"]
    assert await storage.map_items("localhost", "private", "alice") == {}
    assert await storage.map_items("localhost", "bookmarks", "alice") == {}
    assert await storage.map_items("localhost", "private", "bob") == {"ns": {"x": 1}}
    assert await storage.archive_users("localhost", "offline") == ["bob"]
    assert await storage.archive_users("localhost", "mam") == ["bob"]
    assert await storage.get("other.example", "accounts", "alice") == {"keep": True}
    assert await storage.map_get("other.example", "private", "alice", "ns") == 1
    assert await storage.archive_users("other.example", "mam") == ["alice"]
    await storage.purge_user("localhost", "nobody")  # purging nothing is fine


@check()
async def writes_without_waiting_keep_their_order(backend: Backend) -> None:
    storage = await backend.open()
    pending: list[Deferred] = []
    for n in range(40):
        pending.append(storage.set("localhost", "counter", "alice", {"n": n}))
        pending.append(storage.map_set("localhost", "m", "alice", "k", n))
        pending.append(storage.archive_append("localhost", "log", "alice", f"m{n}", when=n % 3, keep=30))
        if n % 10 == 9:
            pending.append(storage.map_set("localhost", "m", "alice", "k", None))
    pending += [storage.set("localhost", "counter", f"user{n:02}", n) for n in range(20)]
    # Reads asked for after writes that nobody waited for see those writes.
    reads = [
        storage.get("localhost", "counter", "alice"),
        storage.map_get("localhost", "m", "alice", "k"),
        storage.archive_query("localhost", "log", "alice", ArchiveQuery()),
    ]
    results = await gatherResults(pending)
    value, map_value, page = await gatherResults(reads)
    assert (value, map_value) == ({"n": 39}, None)
    assert item_values(page) == [f"m{n}" for n in range(10, 40)]
    appended = [r for r in results if isinstance(r, str)]
    assert [int(i) for i in appended] == sorted(int(i) for i in appended)  # ids in the order asked for
    assert [item.id for item in page.items] == appended[10:]
    assert len(await storage.users("localhost", "counter")) == 21
    purge = storage.purge_user("localhost", "alice")
    after = storage.archive_query("localhost", "log", "alice", ArchiveQuery())
    await purge
    assert (await after).items == []


@check()
async def stop_lets_what_was_asked_for_finish(backend: Backend) -> None:
    storage = await backend.open()
    writes = [storage.set("localhost", "s", f"u{n}", n) for n in range(30)]
    writes += [storage.archive_append("localhost", "log", "alice", f"m{n}", when=n) for n in range(30)]
    writes += [storage.map_set("localhost", "m", "alice", f"k{n}", n) for n in range(30)]
    followed: list[Any] = []

    def then_write(value: Any) -> Deferred:  # a write asked for from a finishing read, during stop()
        followed.append(value)
        return storage.set("localhost", "s", "follow-up", "written")

    chained = storage.get("localhost", "s", "u5").addCallback(then_write)
    await storage.stop()
    assert all(d.called for d in [*writes, chained])
    await gatherResults(writes)
    assert followed == [5]
    await backend.close()
    storage = await backend.open()  # the data is there after a reopen
    assert len(await storage.users("localhost", "s")) == 31
    assert await storage.get("localhost", "s", "follow-up") == "written"
    assert (await storage.archive_query("localhost", "log", "alice", ArchiveQuery())).count == 30
    assert len(await storage.map_items("localhost", "m", "alice")) == 30


@check()
async def persists_across_reopen(backend: Backend) -> None:
    storage = await backend.open()
    await storage.set("localhost", "notes", "alice", {"text": "kept"})
    await storage.set("localhost", "notes", "bob", {"text": "deleted"})
    await storage.set("localhost", "notes", "bob", None)
    await storage.map_set("localhost", "m", "alice", "k", [1])
    item = await storage.archive_append("localhost", "log", "alice", "kept", when=12.5, with_="bob@x/y")
    await backend.close()
    storage = await backend.open()
    assert await storage.get("localhost", "notes", "alice") == {"text": "kept"}
    assert await storage.get("localhost", "notes", "bob") is None
    assert await storage.users("localhost", "notes") == ["alice"]
    assert await storage.map_items("localhost", "m", "alice") == {"k": [1]}
    page = await storage.archive_query("localhost", "log", "alice", ArchiveQuery(with_="bob@x"))
    assert page.items == [ArchiveItem(item, 12.5, "bob@x/y", "kept")]


# -- SQL: lifecycle and schema ---------------------------------------------------------------------------


@check(*SQL)
async def operations_outside_start_and_stop_fail(backend: Backend) -> None:
    storage = backend.storage()
    calls = [
        lambda: storage.get("localhost", "s", "u"),
        lambda: storage.set("localhost", "s", "u", 1),
        lambda: storage.map_set("localhost", "s", "u", "k", 1),
        lambda: storage.map_items("localhost", "s", "u"),
        lambda: storage.archive_append("localhost", "s", "u", "v", when=1),
        lambda: storage.archive_query("localhost", "s", "u", ArchiveQuery()),
        lambda: storage.archive_delete("localhost", "s", None),
        lambda: storage.archive_users("localhost", "s"),
        lambda: storage.purge_user("localhost", "u"),
    ]
    for call in calls:
        await refused(call, StorageError)
    await storage.start()
    await refused(storage.start, StorageError)  # twice is a mistake
    await storage.stop()
    await storage.stop()  # twice is harmless
    for call in calls:
        await refused(call, StorageError)


@check(*SQL)
async def operations_asked_for_during_start_wait_for_it(backend: Backend) -> None:
    storage = backend.storage()
    started = storage.start()
    write = storage.set("localhost", "s", "alice", 1)
    read = storage.get("localhost", "s", "alice")
    append = storage.archive_append("localhost", "log", "alice", "x", when=1)
    await started
    assert (await write, await read) == (None, 1)
    assert (await append).isdigit()
    await storage.stop()


@check(*SQL)
async def new_database_gets_the_latest_schema(backend: Backend) -> None:
    from xmppd.storage.migrations import LATEST

    storage = await backend.open()
    assert (storage.schema_from, storage.schema_version) == (0, LATEST)
    await backend.close()
    assert backend.execute(["SELECT value FROM meta WHERE key = 'schema_version'"]) == [(str(LATEST),)]
    storage = await backend.open()  # the same version is accepted again, and nothing is applied
    assert (storage.schema_from, storage.schema_version) == (LATEST, LATEST)


@check(*SQL)
async def version_1_database_is_upgraded_keeping_its_data(backend: Backend) -> None:
    """A database the code before migrations made (keyval and meta, schema_version "1")."""
    backend.execute(V1_SCHEMA)
    backend.execute(["INSERT INTO meta (key, value) VALUES ('schema_version', '1')"])
    for user, value in [("alice", {"scram": {"x": 1}}), ("Émile", [1, "two"])]:
        backend.execute(
            ['INSERT INTO keyval (host, store, "user", value) VALUES (?, ?, ?, ?)'],
            ("localhost", "accounts", user, json.dumps(value)),
        )
    storage = await backend.open()
    assert (storage.schema_from, storage.schema_version) == (1, 2)
    assert await storage.users("localhost", "accounts") == ["alice", "Émile"]
    assert await storage.get("localhost", "accounts", "alice") == {"scram": {"x": 1}}
    assert await storage.get("localhost", "accounts", "Émile") == [1, "two"]
    await storage.map_set("localhost", "private", "alice", "ns", 1)
    await storage.archive_append("localhost", "offline", "alice", "<message/>", when=1)
    await backend.close()
    assert backend.execute(["SELECT value FROM meta WHERE key = 'schema_version'"]) == [("2",)]
    storage = await backend.open()
    assert storage.schema_from == 2
    assert await storage.map_get("localhost", "private", "alice", "ns") == 1
    assert await storage.archive_users("localhost", "offline") == ["alice"]


@check(*SQL)
async def newer_database_is_refused(backend: Backend) -> None:
    storage = await backend.open()
    await storage.set("localhost", "s", "alice", 1)
    await backend.close()
    backend.execute(["UPDATE meta SET value = '7' WHERE key = 'schema_version'"])
    storage = backend.storage()
    error = await refused(storage.start, SchemaError)
    assert str(error) == (
        "the database has schema version 7, newer than this xmppd understands (2); upgrade xmppd"
    )
    await refused(lambda: storage.get("localhost", "s", "alice"), StorageError)
    await storage.stop()
    assert backend.execute(["SELECT value FROM meta WHERE key = 'schema_version'"]) == [("7",)]
    assert backend.execute(["SELECT value FROM keyval"]) == [("1",)]


@check(*SQL)
async def a_failed_migration_changes_nothing(backend: Backend) -> None:
    from xmppd.storage import migrations

    await backend.open()
    await backend.close()
    broken = migrations.Migration(
        3,
        "creates a table, then fails",
        ["CREATE TABLE half_done (x INTEGER)", "INSERT INTO no_such_table VALUES (1)"],
    )
    migrations.MIGRATIONS.append(broken)
    try:
        error = await refused(backend.storage().start, SchemaError)
    finally:
        migrations.MIGRATIONS.remove(broken)
    assert "schema version 3" in str(error) and "no_such_table" in str(error), str(error)
    assert backend.execute(["SELECT value FROM meta WHERE key = 'schema_version'"]) == [("2",)]
    await refused(lambda: backend.execute(["SELECT * FROM half_done"]), Exception)
    storage = await backend.open()  # the database is as it was
    assert storage.schema_from == 2


@check(*SQL)
async def python_migrations_get_the_transaction(backend: Backend) -> None:
    from xmppd.storage import migrations

    seen: list[str] = []

    def move_data(txn: Any, dialect: Any) -> None:
        seen.append(dialect.name)
        txn.execute(
            dialect.sql('INSERT INTO keyval (host, store, "user", value) VALUES (?, ?, ?, ?)'),
            ("localhost", "migrated", "alice", json.dumps({"by": "migration 3"})),
        )

    step = migrations.Migration(3, "a data migration", {"sqlite": [], "postgresql": []}, function=move_data)
    migrations.MIGRATIONS.append(step)
    try:
        storage = await backend.open()
        assert (storage.schema_from, storage.schema_version) == (0, 3)
        assert await storage.get("localhost", "migrated", "alice") == {"by": "migration 3"}
        await backend.close()
    finally:
        migrations.MIGRATIONS.remove(step)
    assert seen == [backend.kind]
    error = await refused(backend.storage().start, SchemaError)  # this code knows only version 2
    assert "schema version 3, newer than this xmppd understands (2)" in str(error)


@check("postgresql")
async def unreachable_postgresql_is_a_storage_error(backend: Backend) -> None:
    from xmppd.storage.postgresql import PostgreSQLStorage

    storage = PostgreSQLStorage("postgresql://xmppd:secret-pw@127.0.0.1:1/xmppd?connect_timeout=3")
    error = await refused(storage.start, StorageError)
    assert str(error).startswith("cannot open the PostgreSQL database postgresql://xmppd@127.0.0.1:1/xmppd: ")
    assert "secret-pw" not in str(error)
    await storage.stop()


@check("sqlite")
async def open_storage_picks_sqlite_in_data_dir(backend: Backend) -> None:
    storage = open_storage("sqlite", backend.directory / "elsewhere")
    await storage.start()
    await storage.archive_append("localhost", "log", "alice", "x", when=1)
    await storage.stop()
    assert (backend.directory / "elsewhere" / "xmppd.sqlite").exists()


@check("sqlite")
async def a_second_connection_sees_committed_writes(backend: Backend) -> None:
    storage = await backend.open()
    await storage.set("localhost", "notes", "alice", {"text": "visible"})
    # As xmppdctl export would, while the server runs (WAL: readers and one writer at once).
    rows = backend.execute(['SELECT value FROM keyval WHERE "user" = ?'], ("alice",))
    backend.execute(
        ['INSERT INTO keyval (host, store, "user", value) VALUES (?, ?, ?, ?)'],
        ("localhost", "notes", "bob", '{"x": 1}'),
    )
    assert [json.loads(r[0]) for r in rows] == [{"text": "visible"}]
    assert await storage.get("localhost", "notes", "bob") == {"x": 1}


# -- running the checks ----------------------------------------------------------------------------------


def run_now(check: Check, backend: Backend) -> None:
    """Run a check whose Deferreds all fire at once (MemoryStorage); fail if it would have to wait."""

    async def run() -> None:
        try:
            await check(backend)
        finally:
            await backend.close()

    outcome: list[Any] = []
    ensureDeferred(run()).addBoth(outcome.append)
    assert outcome, "the check waited on something that never fired"
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()


def names_for(kind: str) -> list[str]:
    return [name for name, (_, kinds) in CHECKS.items() if kind in kinds]


@pytest.mark.parametrize("name", names_for("memory"))
def test_memory(name, tmp_path):
    run_now(CHECKS[name][0], Backend("memory", tmp_path))


def test_memory_storage_is_empty_after_restart():
    storage = MemoryStorage()
    storage.set("localhost", "s", "u", 1)
    got: list = []
    MemoryStorage().get("localhost", "s", "u").addCallback(got.append)
    assert got == [None]
    assert isinstance(open_storage("memory", Path("unused")), MemoryStorage)


def test_open_storage_unknown_backend():
    with pytest.raises(StorageError, match="mongo"):
        open_storage("mongo", Path("unused"))


RUNNER = """
import importlib.util, json, sys, tempfile, traceback
from pathlib import Path
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import react

path, kind = sys.argv[1], sys.argv[2]
spec = importlib.util.spec_from_file_location("xmppd_storage_contract", path)
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
try:  # pytest's assertion rewriting, for messages that show the compared values
    import ast
    from _pytest.assertion.rewrite import rewrite_asserts
    source = Path(path).read_bytes()
    tree = ast.parse(source)
    rewrite_asserts(tree, source, path, None)
    exec(compile(tree, path, "exec"), module.__dict__)
except ImportError:
    spec.loader.exec_module(module)

async def main(reactor):
    results = {}
    for name in module.names_for(kind):
        check = module.CHECKS[name][0]
        with tempfile.TemporaryDirectory() as directory:
            try:
                with module.database(kind, Path(directory)) as backend:
                    try:
                        await check(backend)
                    finally:
                        await backend.close()
                results[name] = None
            except BaseException:
                results[name] = traceback.format_exc()
    sys.stdout.write("RESULTS " + json.dumps(results) + "\\n")

react(lambda reactor: ensureDeferred(main(reactor)))
"""


@contextmanager
def database(kind: str, directory: Path) -> Iterator[Backend]:
    """``with database(kind, directory) as backend``: a Backend on fresh data (for PostgreSQL, a schema
    of its own, dropped afterwards)."""
    if kind != "postgresql":
        yield Backend(kind, directory)
        return
    with fresh_schema(dsn=POSTGRES_DSN) as (_, dsn):
        yield Backend(kind, directory, dsn)


@cache
def sql_results(kind: str) -> dict[str, str | None]:
    """Run every check of ``kind`` in a subprocess with a running reactor; name -> traceback or None."""
    with tempfile.TemporaryDirectory() as cwd:
        proc = subprocess.run(
            [sys.executable, "-c", RUNNER, str(Path(__file__).resolve()), kind],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=cwd,
        )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULTS ")]
    if proc.returncode != 0 or not lines:
        pytest.fail(f"the {kind} runner failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return json.loads(lines[-1][len("RESULTS ") :])


def sql_check(kind: str, name: str) -> None:
    results = sql_results(kind)
    assert name in results, f"{name} did not run"
    if results[name] is not None:
        pytest.fail(f"{kind} failed {name}:\n{results[name]}", pytrace=False)


@pytest.mark.parametrize("name", names_for("sqlite"))
def test_sqlite(name):
    sql_check("sqlite", name)


@pytest.mark.parametrize("name", names_for("postgresql"))
def test_postgresql(name):
    reason = postgres_unreachable()
    if reason:
        pytest.skip(reason)
    sql_check("postgresql", name)


# -- xmppdctl migrate ------------------------------------------------------------------------------------


def write_config(directory: Path, storage: dict[str, Any]) -> Path:
    from xmppd.testing.process import write_toml

    path = directory / "xmppd.toml"
    write_toml(
        path,
        {
            "server": {"domains": ["localhost"], "data_dir": str(directory / "data")},
            "listen": {"control": str(directory / "data" / "ctl.sock")},
            "storage": storage,
        },
    )
    return path


def xmppdctl(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from xmppd.ctl import main; main()", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=config.parent,
    )


def test_migrate_upgrades_a_version_1_file(tmp_path):
    config = write_config(tmp_path, {"backend": "sqlite"})
    database_path = tmp_path / "data" / "xmppd.sqlite"
    database_path.parent.mkdir()
    with sqlite3.connect(database_path) as conn:
        for statement in V1_SCHEMA:
            conn.execute(statement)
        conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        conn.execute("INSERT INTO keyval VALUES ('localhost', 'accounts', 'alice', '{\"a\": 1}')")
    conn.close()
    result = xmppdctl(config, "migrate")
    assert result.returncode == 0, result
    assert result.stdout.splitlines() == [
        f"database: the SQLite database {database_path}",
        "from: 1",
        "to: 2",
    ]
    result = xmppdctl(config, "--json", "migrate")
    assert result.returncode == 0, result
    assert json.loads(result.stdout) == {
        "database": f"the SQLite database {database_path}",
        "from": 2,
        "to": 2,
    }
    with sqlite3.connect(database_path) as conn:
        assert conn.execute("SELECT value FROM keyval WHERE user = 'alice'").fetchall() == [('{"a": 1}',)]
        assert conn.execute("SELECT count(*) FROM archive").fetchall() == [(0,)]
    conn.close()
    assert xmppdctl(config, "users").stdout.split() == ["alice@localhost"]  # the offline commands still work


def test_migrate_refuses_a_newer_database(tmp_path):
    config = write_config(tmp_path, {"backend": "sqlite"})
    assert xmppdctl(config, "migrate").returncode == 0
    with sqlite3.connect(tmp_path / "data" / "xmppd.sqlite") as conn:
        conn.execute("UPDATE meta SET value = '9' WHERE key = 'schema_version'")
    conn.close()
    result = xmppdctl(config, "migrate")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "xmppdctl: the database has schema version 9, newer than this xmppd understands (2); upgrade xmppd"
    ]


def test_migrate_memory_storage(tmp_path):
    result = xmppdctl(write_config(tmp_path, {"backend": "memory"}), "migrate")
    assert (result.returncode, result.stderr.strip()) == (
        1,
        "xmppdctl: memory storage has no schema to migrate",
    )


def test_migrate_postgresql(tmp_path):
    reason = postgres_unreachable()
    if reason:
        pytest.skip(reason)
    with database("postgresql", tmp_path) as backend:
        config = write_config(tmp_path, {"backend": "postgresql", "dsn": backend.dsn, "pool_size": 2})
        result = xmppdctl(config, "--json", "migrate")
        assert result.returncode == 0, result
        answer = json.loads(result.stdout)
        assert (answer["from"], answer["to"]) == (0, 2)
        assert answer["database"].startswith("the PostgreSQL database postgresql://postgres@")
        assert backend.execute(["SELECT value FROM meta WHERE key = 'schema_version'"]) == [("2",)]
        assert xmppdctl(config, "adduser", "alice@localhost", "pw").returncode == 0
        assert xmppdctl(config, "users").stdout.split() == ["alice@localhost"]


# -- [storage] configuration -----------------------------------------------------------------------------


def storage_config(**storage: Any) -> Any:
    from xmppd.config import parse

    return parse({"storage": storage}, "xmppd.toml")


@pytest.mark.parametrize(
    ("storage", "words"),
    [
        ({"backend": "postgresql"}, ["[storage] dsn", "needs a dsn"]),
        ({"backend": "sqlite", "dsn": "postgresql://x@localhost/x"}, ["[storage] dsn", "only used with"]),
        ({"dsn": "postgresql://x@localhost/x"}, ["[storage] dsn", 'backend = "postgresql"']),
        (
            {"backend": "postgresql", "dsn": "nonsense"},
            ["[storage] dsn", "not a PostgreSQL connection string"],
        ),
        ({"backend": "postgresql", "dsn": "host=a pool=3"}, ["[storage] dsn", "pool"]),
        ({"backend": "postgresql", "dsn": "host=a", "pool_size": 0}, ["[storage] pool_size", "at least 1"]),
        ({"backend": "mysql"}, ["[storage] backend", "mysql", "postgresql"]),
    ],
)
def test_storage_config_errors(storage, words):
    from xmppd.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        storage_config(**storage)
    line = str(caught.value)
    assert line.startswith("xmppd.toml: ") and "fix: " in line, line
    for word in words:
        assert word in line, (word, line)


def test_storage_config_picks_the_backend(tmp_path):
    from xmppd.storage import storage_from_config
    from xmppd.storage.postgresql import PostgreSQLStorage
    from xmppd.storage.sqlite import SQLiteStorage

    config = storage_config(
        backend="postgresql", dsn="postgresql://xmppd:pw@db.example:6543/chat", pool_size=3
    )
    storage = storage_from_config(config)
    assert isinstance(storage, PostgreSQLStorage)
    assert storage.dialect.pool_size == 3
    assert storage.dialect.describe() == "the PostgreSQL database postgresql://xmppd@db.example:6543/chat"
    defaults = storage_config()
    assert defaults.sections["storage"] == {"backend": "sqlite", "dsn": "", "pool_size": 5, "cache_mb": 16}
    assert isinstance(storage_from_config(defaults), SQLiteStorage)
    assert storage_from_config(defaults).cache.max_bytes == 16 * 1024 * 1024
    assert storage_from_config(storage_config(cache_mb=0)).cache.max_bytes == 0
    assert isinstance(storage_from_config(storage_config(backend="memory")), MemoryStorage)
    with pytest.raises(StorageError, match="dsn"):
        open_storage("postgresql", tmp_path)


def test_example_configuration_documents_the_storage_keys():
    from xmppd.config import SCHEMA, load

    path = Path(__file__).resolve().parents[2] / "etc" / "xmppd.toml"
    config = load(str(path))
    assert config.sections["storage"] == {"backend": "sqlite", "dsn": "", "pool_size": 5, "cache_mb": 16}
    text = path.read_text()
    for key in SCHEMA["storage"]:
        assert f"\n{key} = " in text, key
