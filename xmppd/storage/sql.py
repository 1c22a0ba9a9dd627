"""The SQL backends' storage: one set of queries for SQLite and PostgreSQL over the schema that
xmppd.storage.migrations builds, with what differs between them in a small ``Dialect``.

Every query runs on an adbapi thread pool (``ConnectionPool.runInteraction``), so the reactor never waits
on the database. Operations take effect in the order they are asked for, whether or not the caller waits
for each: SQLite has one connection, which runs them one after the other; with several connections
(PostgreSQL), writes are handed to the pool one at a time, and a read waits for the writes asked for
before it, while reads run side by side. ``start()`` migrates the schema before anything else runs;
``stop()`` lets every operation already asked for finish before it closes the pool.

Values: keyval and map values are stored as JSON text, archive items as the text given. Archive ids are the
decimal form of an auto-incremented integer key (never reused, so they increase with insertion), and the
queries give exactly what ``xmppd.storage.paging.page_of`` gives.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, DeferredList, fail, inlineCallbacks, maybeDeferred, succeed
from twisted.python.failure import Failure

from xmppd.log import logger
from xmppd.storage import migrations
from xmppd.storage.base import ArchiveItem, ArchivePage, ArchiveQuery, StorageError
from xmppd.storage.cache import ABSENT, DocumentCache
from xmppd.storage.paging import item_number

log = logger("xmppd.storage")

MAX_DRAIN_ROUNDS = 100  # stop() waits through at most this many generations of follow-up operations
MAX_ID = 2**63 - 1  # the largest integer both databases store
IDS_PER_STATEMENT = 500  # archive_delete(ids=...) in chunks, under SQLite's limit on parameters


class Dialect:
    """What differs between the SQL databases. Queries are written with ``?`` placeholders."""

    name = ""
    #: Column types for migrations: ``{id}`` an auto-incremented integer primary key, ``{real}`` a double.
    types: dict[str, str] = {}
    placeholder = "?"
    #: One connection: operations already run in the order they were asked for.
    serial = True
    #: The driver's exceptions, turned into StorageError.
    errors: tuple[type[BaseException], ...] = ()

    def __init__(self) -> None:
        self._queries: dict[str, str] = {}

    def sql(self, query: str) -> str:
        """``query`` with this driver's placeholders."""
        converted = self._queries.get(query)
        if converted is None:
            converted = self._queries[query] = query.replace("?", self.placeholder)
        return converted

    def open_pool(self) -> adbapi.ConnectionPool:
        raise NotImplementedError

    def begin_migration(self, txn: Any) -> None:
        """Start the migration transaction so that no other process migrates at the same time."""

    def insert_id(self, txn: Any, query: str, args: tuple) -> int:
        """Run an INSERT into a table with an ``{id}`` column; the new row's id."""
        raise NotImplementedError

    def describe(self) -> str:
        """The database, for messages (never with a password)."""
        raise NotImplementedError


def _json(value: Any) -> str:
    return json.dumps(value)


def _settled(d: Deferred) -> Deferred[None]:
    """A Deferred that fires with None once ``d`` has a result, whichever (``d``'s result is unchanged)."""
    done: Deferred[None] = Deferred()

    def fire(result: Any) -> Any:
        done.callback(None)
        return result

    d.addBoth(fire)
    return done


class SQLStorage:
    """base.Storage over a SQL database; the dialect says which."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self._pool: adbapi.ConnectionPool | None = None
        self._in_flight: set[Deferred] = set()
        self._writes_done: Deferred[None] | None = None  # fires when the last write asked for has finished
        #: Keyval documents kept in memory (xmppd.storage.cache); off unless given a budget.
        self.cache = DocumentCache()
        #: The schema version found at start() and the one it was migrated to.
        self.schema_from: int | None = None
        self.schema_version: int | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Open the pool and migrate the schema (SchemaError if it is newer than the code, StorageError if
        the database cannot be opened); every operation asked for meanwhile waits for it."""
        if self._pool is not None:
            return fail(StorageError("storage is already started"))
        try:
            self._pool = self.dialect.open_pool()
        except Exception as e:
            return fail(StorageError(f"cannot open {self.dialect.describe()}: {_first_line(e)}"))
        d = self._pool.runInteraction(migrations.migrate, self.dialect)
        d.addCallbacks(self._started, self._start_failed)
        d = self._track(d)
        self._writes_done = _settled(d)  # what is asked for meanwhile waits for the migrations
        return d

    def _started(self, versions: tuple[int, int]) -> None:
        self.schema_from, self.schema_version = versions
        if versions[0] != versions[1]:
            log.info(
                "storage: migrated {database} from schema version {old} to {new}",
                database=self.dialect.describe(),
                old=versions[0],
                new=versions[1],
            )

    def _start_failed(self, failure: Failure) -> Failure:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if failure.check(StorageError):
            return failure
        if failure.check(*self.dialect.errors, adbapi.ConnectionLost):
            raise StorageError(f"cannot open {self.dialect.describe()}: {_first_line(failure.value)}")
        return failure

    @inlineCallbacks
    def stop(self) -> Deferred[None]:
        """Close the database once every operation already asked for has finished, including those
        that callers start from the callbacks of finishing ones (a read, then the write it leads to),
        so that nothing a user was told is stored gets cut off by a shutdown."""
        for _ in range(MAX_DRAIN_ROUNDS):
            if not self._in_flight:
                break
            yield DeferredList(list(self._in_flight), consumeErrors=True)
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        self._writes_done = None
        self.cache.clear()

    # -- running queries ---------------------------------------------------------------------------------

    def _track(self, d: Deferred) -> Deferred:
        self._in_flight.add(d)

        def done(result: Any) -> Any:
            self._in_flight.discard(d)
            return result

        return d.addBoth(done)

    def _interaction(self, work: Callable[..., Any], args: tuple) -> Deferred:
        if self._pool is None:
            raise StorageError("storage is not started")
        return self._pool.runInteraction(work, *args).addErrback(self._driver_error)

    def _driver_error(self, failure: Failure) -> Failure:
        if failure.check(*self.dialect.errors, adbapi.ConnectionLost):
            raise StorageError(f"{self.dialect.describe()}: {_first_line(failure.value)}") from failure.value
        return failure

    def _gate(self) -> Deferred[None] | None:
        """What an operation asked for now must wait for: start(), and the writes asked for before it."""
        if self._pool is None:
            raise StorageError("storage is not started")
        gate = self._writes_done
        if gate is not None and gate.called and self.dialect.serial:
            self._writes_done = gate = None  # started: from now on one connection keeps the order
        return gate

    def _read(self, work: Callable[..., Any], *args: Any) -> Deferred:
        return self._track(self._after(self._gate(), work, args))

    def _write(self, work: Callable[..., Any], *args: Any) -> Deferred:
        d = self._after(self._gate(), work, args)
        if not self.dialect.serial:
            self._writes_done = _settled(d)
        return self._track(d)

    def _after(self, gate: Deferred[None] | None, work: Callable[..., Any], args: tuple) -> Deferred:
        """Run ``work`` once ``gate`` has fired (at once without one)."""
        if gate is None:
            return self._interaction(work, args)
        result: Deferred = Deferred()

        def run(_: None) -> None:  # returns None: the gate's result stays None for those after us
            maybeDeferred(self._interaction, work, args).chainDeferred(result)

        gate.addCallback(run)
        return result

    # -- keyval ------------------------------------------------------------------------------------------

    def get(self, host: str, store: str, user: str) -> Deferred[Any | None]:
        key = (host, store, user)
        text = self.cache.get(key) if self._pool is not None else None
        if text is not None:
            return succeed(json.loads(text) if text else None)  # "" is ABSENT
        d = self._read(self._get, host, store, user)
        return d.addCallback(self._got, key, self.cache.generation)

    def _got(self, text: str | None, key: tuple[str, str, str], generation: int) -> Any | None:
        self.cache.put(key, ABSENT if text is None else text, generation)
        return None if text is None else json.loads(text)

    def _get(self, txn: Any, host: str, store: str, user: str) -> str | None:
        txn.execute(
            self.dialect.sql('SELECT value FROM keyval WHERE host = ? AND store = ? AND "user" = ?'),
            (host, store, user),
        )
        row = txn.fetchone()
        return None if row is None else row[0]

    def set(self, host: str, store: str, user: str, value: Any | None) -> Deferred[None]:
        raw = None if value is None else _json(value)
        key = (host, store, user)
        generation = self.cache.writing(key)
        d = self._write(self._set, host, store, user, raw)
        return d.addCallback(self._wrote, key, ABSENT if raw is None else raw, generation)

    def _wrote(self, result: None, key: tuple[str, str, str], raw: str, generation: int) -> None:
        self.cache.put(key, raw, generation)
        return result

    def _set(self, txn: Any, host: str, store: str, user: str, raw: str | None) -> None:
        if raw is None:
            txn.execute(
                self.dialect.sql('DELETE FROM keyval WHERE host = ? AND store = ? AND "user" = ?'),
                (host, store, user),
            )
        else:
            txn.execute(
                self.dialect.sql(
                    'INSERT INTO keyval (host, store, "user", value) VALUES (?, ?, ?, ?)'
                    ' ON CONFLICT (host, store, "user") DO UPDATE SET value = excluded.value'
                ),
                (host, store, user, raw),
            )

    def users(self, host: str, store: str) -> Deferred[list[str]]:
        return self._read(self._users, "keyval", host, store)

    def _users(self, txn: Any, table: str, host: str, store: str) -> list[str]:
        # Sorted here, by code point as Python sorts, whatever the database's collation.
        txn.execute(
            self.dialect.sql(f'SELECT DISTINCT "user" FROM {table} WHERE host = ? AND store = ?'),
            (host, store),
        )
        return sorted(row[0] for row in txn.fetchall())

    def purge_user(self, host: str, user: str) -> Deferred[None]:
        self.cache.writing_user(host, user)
        return self._write(self._purge_user, host, user)

    def _purge_user(self, txn: Any, host: str, user: str) -> None:
        for table in ("keyval", "map", "archive"):
            txn.execute(self.dialect.sql(f'DELETE FROM {table} WHERE host = ? AND "user" = ?'), (host, user))

    # -- map ---------------------------------------------------------------------------------------------

    def map_get(self, host: str, store: str, user: str, key: str) -> Deferred[Any | None]:
        return self._read(self._map_get, host, store, user, key)

    def _map_get(self, txn: Any, host: str, store: str, user: str, key: str) -> Any | None:
        txn.execute(
            self.dialect.sql('SELECT value FROM map WHERE host = ? AND store = ? AND "user" = ? AND key = ?'),
            (host, store, user, key),
        )
        row = txn.fetchone()
        return None if row is None else json.loads(row[0])

    def map_set(self, host: str, store: str, user: str, key: str, value: Any | None) -> Deferred[None]:
        return self._write(self._map_set, host, store, user, key, None if value is None else _json(value))

    def _map_set(self, txn: Any, host: str, store: str, user: str, key: str, raw: str | None) -> None:
        if raw is None:
            txn.execute(
                self.dialect.sql('DELETE FROM map WHERE host = ? AND store = ? AND "user" = ? AND key = ?'),
                (host, store, user, key),
            )
        else:
            txn.execute(
                self.dialect.sql(
                    'INSERT INTO map (host, store, "user", key, value) VALUES (?, ?, ?, ?, ?)'
                    ' ON CONFLICT (host, store, "user", key) DO UPDATE SET value = excluded.value'
                ),
                (host, store, user, key, raw),
            )

    def map_items(self, host: str, store: str, user: str) -> Deferred[dict[str, Any]]:
        return self._read(self._map_items, host, store, user)

    def _map_items(self, txn: Any, host: str, store: str, user: str) -> dict[str, Any]:
        txn.execute(
            self.dialect.sql('SELECT key, value FROM map WHERE host = ? AND store = ? AND "user" = ?'),
            (host, store, user),
        )
        return {key: json.loads(raw) for key, raw in txn.fetchall()}

    # -- archive -----------------------------------------------------------------------------------------

    def archive_append(
        self,
        host: str,
        store: str,
        user: str,
        value: str,
        *,
        when: float,
        with_: str | None = None,
        keep: int | None = None,
    ) -> Deferred[str]:
        if not isinstance(value, str):
            raise TypeError("archive items are text")
        if "\x00" in value:
            raise ValueError("archive items cannot contain NUL characters")
        if keep is not None and keep < 0:
            raise ValueError(f"keep must not be negative, got {keep}")
        bare = None if with_ is None else with_.split("/", 1)[0]
        return self._write(self._archive_append, host, store, user, value, float(when), with_, bare, keep)

    def _archive_append(
        self,
        txn: Any,
        host: str,
        store: str,
        user: str,
        value: str,
        when: float,
        with_: str | None,
        bare: str | None,
        keep: int | None,
    ) -> str:
        new_id = self.dialect.insert_id(
            txn,
            'INSERT INTO archive (host, store, "user", "when", with_jid, with_bare, value)'
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (host, store, user, when, with_, bare, value),
        )
        if keep is not None:
            # Everything up to the newest item beyond the ``keep`` newest (none if there are fewer).
            txn.execute(
                self.dialect.sql(
                    'DELETE FROM archive WHERE host = ? AND store = ? AND "user" = ? AND id <= ('
                    'SELECT id FROM archive WHERE host = ? AND store = ? AND "user" = ?'
                    " ORDER BY id DESC LIMIT 1 OFFSET ?)"
                ),
                (host, store, user, host, store, user, keep),
            )
        return str(new_id)

    def archive_query(self, host: str, store: str, user: str, query: ArchiveQuery) -> Deferred[ArchivePage]:
        if query.limit is not None and query.limit < 0:
            raise ValueError(f"limit must not be negative, got {query.limit}")
        return self._read(self._archive_query, host, store, user, query)

    def _archive_query(self, txn: Any, host: str, store: str, user: str, query: ArchiveQuery) -> ArchivePage:
        where = ['host = ? AND store = ? AND "user" = ?']
        args: list[Any] = [host, store, user]
        if query.start is not None:
            where.append('"when" >= ?')
            args.append(float(query.start))
        if query.end is not None:
            where.append('"when" <= ?')
            args.append(float(query.end))
        if query.with_ is not None:
            # XEP-0313 s4.1.1: a bare JID matches itself and its full JIDs (paging.matches_with).
            where.append("with_jid = ?" if "/" in query.with_ else "with_bare = ?")
            args.append(query.with_)
        filters = " AND ".join(where)
        txn.execute(self.dialect.sql(f"SELECT COUNT(*) FROM archive WHERE {filters}"), tuple(args))
        count = int(txn.fetchone()[0])

        # XEP-0059 paging: after/before compare ids, so a deleted item's id still marks a place.
        if query.after is not None:
            after = item_number(query.after)
            if after is None or after >= MAX_ID:
                return ArchivePage([], True, count)
            where.append("id > ?")
            args.append(after)
        if query.before is not None:
            before = item_number(query.before)
            if before is None:
                return ArchivePage([], True, count)
            if before <= MAX_ID:  # beyond: every id is smaller
                where.append("id < ?")
                args.append(before)
        from_end = query.reverse or query.before is not None
        sql = (
            'SELECT id, "when", with_jid, value FROM archive WHERE '
            + " AND ".join(where)
            + (" ORDER BY id DESC" if from_end else " ORDER BY id")
        )
        if query.limit is not None:
            sql += " LIMIT ?"
            args.append(query.limit + 1)  # one more tells whether the page is complete
        txn.execute(self.dialect.sql(sql), tuple(args))
        rows = txn.fetchall()
        complete = query.limit is None or len(rows) <= query.limit
        if not complete:
            rows = rows[: query.limit]
        if from_end:
            rows.reverse()
        items = [ArchiveItem(str(row[0]), float(row[1]), row[2], row[3]) for row in rows]
        return ArchivePage(items, complete, count)

    def archive_delete(
        self,
        host: str,
        store: str,
        user: str | None,
        *,
        before: float | None = None,
        ids: list[str] | None = None,
    ) -> Deferred[int]:
        numbers = None
        if ids is not None:
            # Only ids as this backend writes them can match (as string comparison would have it).
            numbers = sorted(
                {n for i in ids if (n := item_number(i)) is not None and str(n) == i and n <= MAX_ID}
            )
        return self._write(self._archive_delete, host, store, user, before, numbers)

    def _archive_delete(
        self, txn: Any, host: str, store: str, user: str | None, before: float | None, ids: list[int] | None
    ) -> int:
        where = ["host = ? AND store = ?"]
        args: list[Any] = [host, store]
        if user is not None:
            where.append('"user" = ?')
            args.append(user)
        if before is not None:
            where.append('"when" < ?')
            args.append(float(before))
        if ids is None:
            txn.execute(self.dialect.sql("DELETE FROM archive WHERE " + " AND ".join(where)), tuple(args))
            return max(txn.rowcount, 0)
        deleted = 0
        for start in range(0, len(ids), IDS_PER_STATEMENT):
            chunk = ids[start : start + IDS_PER_STATEMENT]
            marks = ", ".join("?" * len(chunk))
            txn.execute(
                self.dialect.sql("DELETE FROM archive WHERE " + " AND ".join([*where, f"id IN ({marks})"])),
                (*args, *chunk),
            )
            deleted += max(txn.rowcount, 0)
        return deleted

    def archive_users(self, host: str, store: str) -> Deferred[list[str]]:
        return self._read(self._users, "archive", host, store)


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
