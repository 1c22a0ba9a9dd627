"""SQLite storage, the embedded default: one file in data_dir.

Queries run on a one-thread adbapi pool, so the reactor never waits on the disk and writes are
serialised. WAL mode lets ``xmppdctl`` read and write the same file while the server runs; with
``synchronous=NORMAL`` a committed write survives the process being killed (it is in the WAL), which is what
"the user was told it succeeded" needs short of power loss.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks

from xmppd.storage.base import StorageError

SCHEMA_VERSION = 1
MAX_DRAIN_ROUNDS = 100  # stop() waits through at most this many generations of follow-up operations

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS keyval (host TEXT NOT NULL, store TEXT NOT NULL, user TEXT NOT NULL,"
    " value TEXT NOT NULL, PRIMARY KEY (host, store, user))",
    "CREATE INDEX IF NOT EXISTS keyval_user ON keyval (host, user)",
]


def _open(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")


class SQLiteStorage:
    """KeyValueStorage in one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._pool: adbapi.ConnectionPool | None = None
        self._in_flight: set[Deferred] = set()

    def start(self) -> Deferred[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._pool = adbapi.ConnectionPool(
            "sqlite3",
            str(self.path),
            check_same_thread=False,
            cp_min=1,
            cp_max=1,
            cp_openfun=_open,
            cp_noisy=False,
        )
        return self._pool.runInteraction(self._create_schema)

    @staticmethod
    def _create_schema(txn: Any) -> None:
        for statement in _SCHEMA:
            txn.execute(statement)
        txn.execute("SELECT value FROM meta WHERE key = 'schema_version'")
        row = txn.fetchone()
        if row is None:
            txn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) > SCHEMA_VERSION:
            raise StorageError(
                f"the database has schema version {row[0]}, newer than this xmppd understands "
                f"({SCHEMA_VERSION}); upgrade xmppd"
            )

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

    def _track(self, d: Deferred) -> Deferred:
        self._in_flight.add(d)

        def done(result: Any) -> Any:
            self._in_flight.discard(d)
            return result

        return d.addBoth(done)

    def _run(self, query: str, args: tuple) -> Deferred:
        if self._pool is None:
            raise StorageError("storage is not started")
        return self._track(self._pool.runQuery(query, args))

    def _operation(self, query: str, args: tuple) -> Deferred:
        if self._pool is None:
            raise StorageError("storage is not started")
        return self._track(self._pool.runOperation(query, args))

    def get(self, host: str, store: str, user: str) -> Deferred[Any | None]:
        d = self._run(
            "SELECT value FROM keyval WHERE host = ? AND store = ? AND user = ?", (host, store, user)
        )
        return d.addCallback(lambda rows: json.loads(rows[0][0]) if rows else None)

    def set(self, host: str, store: str, user: str, value: Any | None) -> Deferred[None]:
        if value is None:
            d = self._operation(
                "DELETE FROM keyval WHERE host = ? AND store = ? AND user = ?", (host, store, user)
            )
        else:
            d = self._operation(
                "INSERT INTO keyval (host, store, user, value) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (host, store, user) DO UPDATE SET value = excluded.value",
                (host, store, user, json.dumps(value)),
            )
        return d.addCallback(lambda _: None)

    def users(self, host: str, store: str) -> Deferred[list[str]]:
        d = self._run("SELECT user FROM keyval WHERE host = ? AND store = ? ORDER BY user", (host, store))
        return d.addCallback(lambda rows: [r[0] for r in rows])

    def purge_user(self, host: str, user: str) -> Deferred[None]:
        d = self._operation("DELETE FROM keyval WHERE host = ? AND user = ?", (host, user))
        return d.addCallback(lambda _: None)
