"""Storage as an operator sees it: ``twistd xmppd`` on SQLite and on PostgreSQL, a database it must
refuse (a newer schema, an unreachable server) ending start-up with one line and exit status 1, and
``xmppdctl migrate`` against a running server.

PostgreSQL: ``XMPPD_TEST_POSTGRES_DSN`` (default ``host=127.0.0.1 port=5432 user=postgres dbname=test``);
each test uses a schema of its own. Those tests skip, saying why, only when nothing answers there.
"""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from xmppd.testing.postgres import fresh_schema, postgres_unreachable
from xmppd.testing.process import ServerProcess


@pytest.fixture
def postgres_dsn() -> Iterator[str]:
    """A dsn whose search_path is a schema of its own, dropped after the test."""
    reason = postgres_unreachable()
    if reason:
        pytest.skip(reason)
    with fresh_schema("xmppd_live") as (_, dsn):
        yield dsn


def run_twistd(server: ServerProcess, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run the server in the foreground; it must stop by itself (a server that keeps running fails)."""
    try:
        return subprocess.run(
            server.command,
            cwd=server.directory,
            env=server.env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"xmppd kept running: {e.stdout!r} {e.stderr!r}") from None


def refused_with_one_line(result: subprocess.CompletedProcess, line: str) -> None:
    """Exit status 1, the one line (logged at level critical), no traceback, no plugin loaded."""
    output = result.stdout + result.stderr
    assert result.returncode == 1, (result.returncode, output)
    assert "Traceback" not in output, output
    problems = [text for text in output.splitlines() if "#critical]" in text or "#error]" in text]
    assert len(problems) == 1, output
    assert problems[0].endswith(f" {line}"), problems
    assert "plugin disco loaded" not in output and "xmppd serving" not in output, output


def test_a_newer_database_is_refused_at_start(tmp_path):
    server = ServerProcess(tmp_path)
    server.data_dir.mkdir()
    with sqlite3.connect(server.data_dir / "xmppd.sqlite") as conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("INSERT INTO meta VALUES ('schema_version', '5')")
    conn.close()
    refused_with_one_line(
        run_twistd(server),
        "xmppd: the database has schema version 5, newer than this xmppd understands (2); upgrade xmppd",
    )


def test_an_unreachable_postgresql_is_refused_at_start(tmp_path):
    dsn = "postgresql://xmppd:not-logged@127.0.0.1:1/xmppd?connect_timeout=3"
    server = ServerProcess(tmp_path, {"storage": {"backend": "postgresql", "dsn": dsn}})
    result = run_twistd(server)
    assert "not-logged" not in result.stdout + result.stderr
    line = next(text for text in result.stdout.splitlines() if "#critical]" in text)
    prefix = "xmppd: cannot open the PostgreSQL database postgresql://xmppd@127.0.0.1:1/xmppd: "
    refused_with_one_line(result, prefix + line.split(prefix, 1)[1])


def test_migrate_while_the_server_runs_is_refused(tmp_path):
    server = ServerProcess(tmp_path).start()
    try:
        result = server.ctl("migrate", check=False)
        assert result.returncode == 1
        assert result.stderr.splitlines() == [
            "xmppdctl: xmppd is running, and applied the schema migrations when it started; stop it to run"
            " migrate"
        ]
    finally:
        server.stop()
    result = server.ctl("migrate")
    assert result.stdout.splitlines()[1:] == ["from: 2", "to: 2"]


def test_a_server_on_postgresql(tmp_path, postgres_dsn, xmpp_run):
    import psycopg

    server = ServerProcess(
        tmp_path, {"storage": {"backend": "postgresql", "dsn": postgres_dsn, "pool_size": 3}}
    )
    server.ctl("adduser", "alice@localhost", "alice-pw")  # offline: straight to PostgreSQL
    server.start()
    try:
        server.ctl("adduser", "bob@localhost", "bob-pw")  # online: through the server
        assert server.ctl("users").stdout.split() == ["alice@localhost", "bob@localhost"]

        async def body(pool):
            alice = await pool.login("alice@localhost/desk", "alice-pw")
            bob = await pool.login("bob@localhost/desk", "bob-pw")
            alice.send_message(mto="bob@localhost/desk", mbody="stored in PostgreSQL", mtype="chat")
            assert (await bob.next_message())["body"] == "stored in PostgreSQL"

        xmpp_run(server, body)
    finally:
        server.stop()
    assert not (server.data_dir / "xmppd.sqlite").exists()
    with psycopg.connect(postgres_dsn) as conn:
        rows = conn.execute(
            """SELECT "user" FROM keyval WHERE store = 'accounts' ORDER BY "user\""""
        ).fetchall()
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    assert (rows, version) == ([("alice",), ("bob",)], ("2",))
    server.start()  # again, on the same data
    try:
        xmpp_run(server, lambda pool: pool.login("bob@localhost/again", "bob-pw"))
    finally:
        server.stop()


def test_a_new_sqlite_database_gets_the_latest_schema(tmp_path):
    """SQLite's file lives in data_dir; a fresh one is created with the latest schema at the first start."""
    server = ServerProcess(tmp_path).start()
    server.stop()
    with sqlite3.connect(Path(server.data_dir) / "xmppd.sqlite") as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall() == [("2",)]
    conn.close()
