"""PostgreSQL for tests: the test server's address, whether it answers, and a schema of one's own.

Tests reach PostgreSQL at ``XMPPD_TEST_POSTGRES_DSN`` (default: 127.0.0.1:5432, user postgres, database
test, as on the project's machines; .ci/run starts it when it can). Each test works in a fresh schema
(``search_path`` set in its dsn) that is dropped afterwards, so tests never see each other's data.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

POSTGRES_DSN = os.environ.get("XMPPD_TEST_POSTGRES_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=test")


def postgres_unreachable(dsn: str = POSTGRES_DSN) -> str | None:
    """Why PostgreSQL tests cannot run here (nothing answers at the dsn's address), or None."""
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(dsn)
    host, port = params.get("host", "127.0.0.1"), int(params.get("port", 5432))
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as e:
        return (
            f"no PostgreSQL answers at {host}:{port} ({e}); start one (.ci/run does when it runs as root)"
            " or set XMPPD_TEST_POSTGRES_DSN"
        )
    return None


@contextmanager
def fresh_schema(prefix: str = "xmppd_test", dsn: str = POSTGRES_DSN) -> Iterator[tuple[str, str]]:
    """``with fresh_schema() as (schema, schema_dsn)``: a new schema, and a dsn whose search_path is it;
    the schema and everything in it are dropped on leaving."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    schema = f"{prefix}_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield schema, make_conninfo(dsn, options=f"-csearch_path={schema}")
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '10s'")
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
