"""SQLite storage, the embedded default: one file in data_dir.

Queries run on a one-thread adbapi pool, so the reactor never waits on the disk and writes are
serialised. WAL mode lets ``xmppdctl`` read and write the same file while the server runs; with
``synchronous=NORMAL`` a committed write survives the process being killed (it is in the WAL), which is what
"the user was told it succeeded" needs short of power loss. The queries and the schema are shared with
PostgreSQL (xmppd.storage.sql, xmppd.storage.migrations).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from twisted.enterprise import adbapi

from xmppd.storage.migrations import LATEST
from xmppd.storage.sql import Dialect, SQLStorage

SCHEMA_VERSION = LATEST


def _open(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")


class SQLiteDialect(Dialect):
    name = "sqlite"
    # AUTOINCREMENT: an id is never reused, even after the newest item was deleted.
    types = {"id": "INTEGER PRIMARY KEY AUTOINCREMENT", "real": "REAL"}
    placeholder = "?"
    serial = True
    errors = (sqlite3.Error,)

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = Path(path)

    def open_pool(self) -> adbapi.ConnectionPool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return adbapi.ConnectionPool(
            "sqlite3",
            str(self.path),
            check_same_thread=False,
            cp_min=1,
            cp_max=1,
            cp_openfun=_open,
            cp_noisy=False,
        )

    def begin_migration(self, txn: Any) -> None:
        # Takes the write lock now (DDL would otherwise run outside a transaction in Python's sqlite3).
        txn.execute("BEGIN IMMEDIATE")

    def insert_id(self, txn: Any, query: str, args: tuple) -> int:
        txn.execute(self.sql(query), args)
        return txn.lastrowid

    def describe(self) -> str:
        return f"the SQLite database {self.path}"


class SQLiteStorage(SQLStorage):
    """base.Storage in one SQLite file."""

    def __init__(self, path: Path) -> None:
        super().__init__(SQLiteDialect(path))
        self.path = Path(path)
