"""``xmppdctl`` against a running server (control socket) and a stopped one (the SQLite file directly).

Each command is the real console script run in a subprocess; logins are real slixmpp clients.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from xmppd.testing.process import ServerProcess


async def can_login(pool, jid: str, password: str) -> bool:
    client, failure = await pool.attempt(f"{jid}/ctl-test", password, mech="SCRAM-SHA-256")
    if failure is None:
        await client.close()
        return True
    assert failure.reason == "failed_auth", failure
    return False


def users(server: ServerProcess) -> list[str]:
    result = server.ctl("--json", "users")
    return sorted(json.loads(result.stdout))


def one_error_line(result, *words: str) -> str:
    """A failed command: exit status 1, exactly one line on stderr starting with "xmppdctl:"."""
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("xmppdctl: "), lines
    assert "Traceback" not in result.stderr + result.stdout
    for word in words:
        assert word in lines[0], lines
    return lines[0]


@pytest.fixture
def stopped_server(tmp_path):
    """A configured server that is not running (started by the test if it wants)."""
    server = ServerProcess(tmp_path)
    yield server
    server.stop()


def test_account_commands_online(xmpp_process, xmpp_run):
    server = xmpp_process()
    result = server.ctl("adduser", "alice@localhost", "alice-pw-1")
    assert result.stdout.strip() == "created alice@localhost"
    result = server.ctl("adduser", "bob@localhost", input="bob-pw-1\n")  # the password on stdin
    assert result.stdout.strip() == "created bob@localhost"
    assert server.ctl("users").stdout.split() == ["alice@localhost", "bob@localhost"]
    assert users(server) == ["alice@localhost", "bob@localhost"]
    one_error_line(server.ctl("adduser", "alice@localhost", "again", check=False), "alice@localhost")
    one_error_line(server.ctl("adduser", "carol@example.org", "pw", check=False), "example.org")

    result = server.ctl("passwd", "alice@localhost", "alice-pw-2")
    assert result.stdout.strip() == "password changed for alice@localhost"

    async def body(pool):
        assert not await can_login(pool, "alice@localhost", "alice-pw-1")
        assert await can_login(pool, "alice@localhost", "alice-pw-2")
        bob = await pool.login("bob@localhost/desk", "bob-pw-1")
        alice = await pool.login("alice@localhost/desk", "alice-pw-2")

        result = await asyncio.to_thread(server.ctl, "deluser", "bob@localhost")
        assert result.stdout.strip() == "deleted bob@localhost"
        await bob.wait_gone()
        assert bob.stream_error_conditions == ["not-authorized"]
        assert not await can_login(pool, "bob@localhost", "bob-pw-1")
        # alice's session is untouched; a message to the deleted account bounces
        alice.send_message(mto="bob@localhost", mbody="bob?", mtype="chat")
        reply = await alice.next_message()
        assert reply["type"] == "error" and reply["error"]["condition"] == "service-unavailable"

    xmpp_run(server, body)
    assert users(server) == ["alice@localhost"]
    one_error_line(server.ctl("deluser", "bob@localhost", check=False), "bob@localhost")


def test_passwd_on_stdin(xmpp_process, xmpp_run):
    server = xmpp_process(users={"dave@localhost": "dave-pw-1"})
    server.ctl("passwd", "dave@localhost", input="dave-pw-2\n")

    async def body(pool):
        assert not await can_login(pool, "dave@localhost", "dave-pw-1")
        assert await can_login(pool, "dave@localhost", "dave-pw-2")

    xmpp_run(server, body)


def test_account_commands_offline_then_server_sees_them(stopped_server, xmpp_run):
    server = stopped_server
    status = server.ctl("status", check=False)
    line = one_error_line(status, "not running")
    assert status.stdout == ""
    assert line

    assert (
        server.ctl("adduser", "alice@localhost", "alice-offline-1").stdout.strip()
        == "created alice@localhost"
    )
    server.ctl("adduser", "bob@localhost", input="bob-offline-1\n")
    server.ctl("adduser", "carol@localhost", "carol-offline-1")
    server.ctl("passwd", "alice@localhost", "alice-offline-2")
    assert server.ctl("deluser", "carol@localhost").stdout.strip() == "deleted carol@localhost"
    assert users(server) == ["alice@localhost", "bob@localhost"]
    one_error_line(server.ctl("adduser", "bob@localhost", "dup", check=False), "bob@localhost")

    server.start()

    async def body(pool):
        assert await can_login(pool, "alice@localhost", "alice-offline-2")
        assert not await can_login(pool, "alice@localhost", "alice-offline-1")
        assert await can_login(pool, "bob@localhost", "bob-offline-1")
        assert not await can_login(pool, "carol@localhost", "carol-offline-1")

    xmpp_run(server, body)
    assert users(server) == ["alice@localhost", "bob@localhost"]


def test_status_online_and_offline(stopped_server):
    server = stopped_server
    server.start()
    result = server.ctl("status")
    assert result.returncode == 0
    assert "domains: ['localhost']" in result.stdout
    assert f"127.0.0.1:{server.port()}" in result.stdout
    status = json.loads(server.ctl("--json", "status").stdout)
    assert status["domains"] == ["localhost"]
    assert status["sessions"] == 0

    server.stop()
    result = server.ctl("status", check=False)
    one_error_line(result, "not running")
    assert result.stdout == ""


def test_accounts_survive_restart_and_no_password_on_disk(stopped_server, xmpp_run):
    server = stopped_server
    server.start()
    passwords = {"alice@localhost": "Unmistakable-Passw0rd-A", "bob@localhost": "Unmistakable-Passw0rd-B"}
    server.ctl("adduser", "alice@localhost", passwords["alice@localhost"])
    server.ctl("adduser", "bob@localhost", input=passwords["bob@localhost"] + "\n")
    server.ctl("passwd", "bob@localhost", "Unmistakable-Passw0rd-C")
    passwords["bob@localhost"] = "Unmistakable-Passw0rd-C"
    server.stop()
    server.start()
    assert users(server) == sorted(passwords)

    async def body(pool):
        for jid, password in passwords.items():
            assert await can_login(pool, jid, password)

    xmpp_run(server, body)
    server.stop()

    files = [p for p in server.data_dir.rglob("*") if p.is_file() and not p.is_socket()]
    databases = [p for p in files if p.read_bytes()[:16] == b"SQLite format 3\x00"]
    assert databases, f"no SQLite database in {files}"
    for path in files:
        data = path.read_bytes()
        for secret in ["Unmistakable-Passw0rd-A", "Unmistakable-Passw0rd-B", "Unmistakable-Passw0rd-C"]:
            for encoding in ("utf-8", "utf-16-le", "utf-16-be"):
                assert secret.encode(encoding) not in data, f"{secret} stored in {path}"
    log = server.log()
    for secret in ["Unmistakable-Passw0rd-A", "Unmistakable-Passw0rd-B", "Unmistakable-Passw0rd-C"]:
        assert secret not in log, "a password was written to the log"
