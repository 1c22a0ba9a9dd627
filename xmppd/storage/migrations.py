"""The SQL schema, as the ordered list of migrations that builds it, shared by SQLite and PostgreSQL.

A database records the last migration applied in ``meta.schema_version``. ``migrate`` brings it up to
``LATEST`` in one transaction (all of the missing migrations or none), and refuses a database that is newer
than this code (SchemaError): an older xmppd must not write into a schema it does not know. Storage runs it
in ``start()``; ``xmppdctl migrate`` runs it on demand.

A migration is append-only history: never change one that has shipped, add the next version instead.
Its statements are written once for both dialects, with ``{id}`` (an auto-incremented integer primary
key) and ``{real}`` (a double-precision number) filled in by the dialect; when the SQL really has to
differ, give a dict of statements per dialect name; for data changes, a Python function given the
transaction (a DB-API cursor) and the dialect.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from xmppd.storage.base import SchemaError

if TYPE_CHECKING:
    from xmppd.storage.sql import Dialect


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    #: Statements for every dialect, or per dialect name ("sqlite", "postgresql").
    statements: Sequence[str] | Mapping[str, Sequence[str]] = ()
    #: Run after the statements, in the same transaction: function(txn, dialect).
    function: Callable[[Any, Dialect], None] | None = None

    def apply(self, txn: Any, dialect: Dialect) -> None:
        statements = self.statements
        if isinstance(statements, Mapping):
            statements = statements[dialect.name]
        for statement in statements:
            txn.execute(statement.format(**dialect.types))
        if self.function is not None:
            self.function(txn, dialect)


MIGRATIONS: list[Migration] = [
    Migration(
        1,
        "keyval: one JSON document per (host, store, user)",
        [
            # IF NOT EXISTS: databases made before migrations existed have these tables and version 1.
            "CREATE TABLE IF NOT EXISTS keyval (host TEXT NOT NULL, store TEXT NOT NULL,"
            ' "user" TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (host, store, "user"))',
            'CREATE INDEX IF NOT EXISTS keyval_user ON keyval (host, "user")',
        ],
    ),
    Migration(
        2,
        "map (many keys per user) and archive (append-only items, by time and JID)",
        [
            'CREATE TABLE map (host TEXT NOT NULL, store TEXT NOT NULL, "user" TEXT NOT NULL,'
            ' key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (host, store, "user", key))',
            'CREATE INDEX map_user ON map (host, "user")',
            # with_bare is the bare JID of with_jid, so that a bare JID finds every full JID by index
            # (XEP-0313 s4.1.1) without LIKE and its escaping.
            "CREATE TABLE archive (id {id}, host TEXT NOT NULL, store TEXT NOT NULL,"
            ' "user" TEXT NOT NULL, "when" {real} NOT NULL, with_jid TEXT, with_bare TEXT,'
            " value TEXT NOT NULL)",
            'CREATE INDEX archive_user_id ON archive (host, store, "user", id)',
            'CREATE INDEX archive_user_when ON archive (host, store, "user", "when")',
            'CREATE INDEX archive_host_user ON archive (host, "user")',
        ],
    ),
]

LATEST = MIGRATIONS[-1].version

_META = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"


def newer_error(found: int, known: int) -> SchemaError:
    return SchemaError(
        f"the database has schema version {found}, newer than this xmppd understands ({known}); upgrade xmppd"
    )


def read_version(txn: Any, dialect: Dialect) -> int:
    """The database's schema version; 0 for a database without one (new, or made before version 1)."""
    txn.execute(dialect.sql("SELECT value FROM meta WHERE key = ?"), ("schema_version",))
    row = txn.fetchone()
    if row is None:
        return 0
    try:
        return int(row[0])
    except ValueError:
        raise SchemaError(f"the database's schema version {row[0]!r} is not a number") from None


def migrate(txn: Any, dialect: Dialect, migrations: Sequence[Migration] | None = None) -> tuple[int, int]:
    """Apply every migration newer than the database, in this transaction; (version before, after).
    Run it through ``ConnectionPool.runInteraction``, which commits at the end or rolls everything back."""
    migrations = MIGRATIONS if migrations is None else migrations
    latest = migrations[-1].version
    dialect.begin_migration(txn)  # one migrator at a time: the server starting, xmppdctl migrate
    txn.execute(_META)
    found = read_version(txn, dialect)
    if found > latest:
        raise newer_error(found, latest)
    for migration in migrations:
        if migration.version > found:
            try:
                migration.apply(txn, dialect)
            except Exception as e:
                text = (str(e).strip() or type(e).__name__).splitlines()[0]
                raise SchemaError(
                    f"migrating the database to schema version {migration.version} failed, nothing was"
                    f" changed: {text}"
                ) from e
    if found != latest:
        txn.execute(dialect.sql("DELETE FROM meta WHERE key = ?"), ("schema_version",))
        txn.execute(
            dialect.sql("INSERT INTO meta (key, value) VALUES (?, ?)"), ("schema_version", str(latest))
        )
    return found, latest
