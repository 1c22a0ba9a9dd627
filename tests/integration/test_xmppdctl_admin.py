"""``xmppdctl sessions``, ``kick``, ``announce`` and ``check`` as an operator runs them: the real console
script in a subprocess, against a server process with real slixmpp clients online, and against a stopped one.
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from xmppd.testing.ca import TestCA
from xmppd.testing.process import ServerProcess

PASSWORDS = {"alice@localhost": "alice-pw", "bob@localhost": "bob-pw"}
ONLINE_ONLY = [
    ("sessions",),
    ("kick", "alice@localhost"),
    ("announce", "hello"),
    ("reload",),
    ("plugins",),
    ("plugins", "unload", "version"),
]


async def ctl(server: ServerProcess, *args: str, **kwargs) -> object:
    """xmppdctl in a thread, so that the clients keep running meanwhile."""
    return await asyncio.to_thread(server.ctl, *args, **kwargs)


def one_error_line(result, *words: str) -> str:
    """A failed command: exit status 1 and one line on stderr, "xmppdctl: ...", holding ``words``."""
    assert result.returncode == 1, result
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("xmppdctl: ") and "Traceback" not in result.stdout, result
    for word in words:
        assert word in line, line
    return line


def lines(result) -> list[str]:
    return result.stdout.strip().splitlines()


def test_sessions_announce_kick_with_clients_online(xmpp_process, xmpp_run):
    server = xmpp_process(users=PASSWORDS)

    async def body(pool):
        alice = pool.client("alice@localhost/phone", "alice-pw")
        alice.register_plugin("xep_0115")  # advertises entity capabilities: the CLIENT column
        await alice.login("127.0.0.1", pool.port)
        await alice.plugin["xep_0115"].update_caps()  # a presence with caps (XEP-0115 s6.1)
        bob = await pool.login("bob@localhost/desk", "bob-pw")
        for _ in range(50):  # until the server has alice's presence with caps
            if json.loads((await ctl(server, "--json", "sessions")).stdout)[0]["client"]:
                break
            await asyncio.sleep(0.1)

        # sessions: a readable table, and the list as JSON
        table = lines(await ctl(server, "sessions"))
        assert table[0].split() == ["JID", "TRANSPORT", "IP", "CLIENT", "CONNECTED"]
        rows = {line.split()[0]: line.split() for line in table[1:-1]}
        assert set(rows) == {"alice@localhost/phone", "bob@localhost/desk"}
        assert table[-1] == "2 session(s)"
        for row in rows.values():
            assert row[1:3] == ["c2s", "127.0.0.1"]
            assert re.fullmatch(r"\d+s", row[-1]), row
        assert "slixmpp" in rows["alice@localhost/phone"][3]
        assert rows["bob@localhost/desk"][3] == "-"
        for args in (
            ("--json", "sessions"),
            ("sessions", "--json"),
            ("sessions", "--domain", "localhost", "--json"),
        ):
            sessions = json.loads((await ctl(server, *args)).stdout)
            assert [s["jid"] for s in sessions] == ["alice@localhost/phone", "bob@localhost/desk"]
            assert all(s["transport"] == "c2s" and s["ip"] == "127.0.0.1" for s in sessions)
            assert all(s["connected"] >= 0 for s in sessions)
        one_error_line(await ctl(server, "sessions", "--domain", "example.org", check=False), "example.org")

        # announce: every online user gets a headline from the domain
        result = await ctl(server, "announce", "maintenance at 10", "--subject", "Notice")
        assert result.stdout.strip() == "announced to 2 session(s)"
        for client in (alice, bob):
            message = await client.next_message()
            assert (str(message["from"]), message["type"]) == ("localhost", "headline")
            assert (message["subject"], message["body"]) == ("Notice", "maintenance at 10")
        result = await ctl(server, "announce", "-", input="back in 5 minutes\nreally\n")
        for client in (alice, bob):
            assert (await client.next_message())["body"] == "back in 5 minutes\nreally"
        assert (
            json.loads((await ctl(server, "--json", "announce", "again")).stdout)
            == "announced to 2 session(s)"
        )
        for client in (alice, bob):
            await client.next_message()
        one_error_line(await ctl(server, "announce", "  ", check=False), "text")

        # kick: bob's client sees the stream error with the reason; alice stays
        result = await ctl(server, "kick", "bob@localhost/desk", "--reason", "account under review")
        assert result.stdout.strip() == "kicked 1 session(s) of bob@localhost/desk"
        await bob.wait_gone()
        assert bob.stream_error_conditions == ["policy-violation"]
        assert bob.stream_errors[0]["text"] == "account under review"
        assert not alice.gone.is_set()
        assert [s["jid"] for s in json.loads((await ctl(server, "--json", "sessions")).stdout)] == [
            "alice@localhost/phone"
        ]
        one_error_line(await ctl(server, "kick", "bob@localhost", check=False), "bob@localhost", "no session")
        one_error_line(await ctl(server, "kick", "@@", check=False), "not a valid JID")
        result = await ctl(server, "--json", "kick", "alice@localhost")
        assert json.loads(result.stdout) == "kicked 1 session(s) of alice@localhost"
        await alice.wait_gone()
        assert alice.stream_error_conditions == ["policy-violation"]
        assert lines(await ctl(server, "sessions")) == ["no sessions"]

    xmpp_run(server, body)


@pytest.mark.parametrize("args", ONLINE_ONLY, ids=" ".join)
def test_online_commands_say_the_server_is_not_running(tmp_path, args):
    server = ServerProcess(tmp_path)  # configured, never started
    result = server.ctl(*args, check=False)
    line = one_error_line(result, "not running", f"{args[0]} needs the running server", "twistd -n xmppd")
    assert result.stdout == ""
    assert str(server.config_path) in line  # how to start it with this configuration


def test_account_commands_still_work_offline(tmp_path):
    server = ServerProcess(tmp_path)
    assert server.ctl("adduser", "carol@localhost", "carol-pw").stdout.strip() == "created carol@localhost"
    assert json.loads(server.ctl("users", "--json").stdout) == ["carol@localhost"]


# -- check ------------------------------------------------------------------------------------------------


def check(server: ServerProcess, *args: str) -> tuple[int, list[str], dict]:
    """``xmppdctl check``: exit status, readable lines, and the JSON report."""
    readable = server.ctl("check", *args, check=False)
    as_json = server.ctl("--json", "check", *args, check=False)
    assert readable.returncode == as_json.returncode, (readable, as_json)
    assert "Traceback" not in readable.stderr + as_json.stderr
    report = json.loads(as_json.stdout)
    return readable.returncode, lines(readable), report


def found(lines_: list[str], level: str, *words: str) -> list[str]:
    """The lines at ``level`` holding every one of ``words``."""
    return [line for line in lines_ if line.startswith(level) and all(w in line for w in words)]


def test_check_good_configuration_before_and_while_running(tmp_path):
    server = ServerProcess(tmp_path, {"server": {"domains": ["localhost", "example.org"]}})
    status, text, report = check(server)
    assert status == 0, text
    assert found(text, "OK", "config", str(server.config_path), "valid")
    assert found(text, "WARN", "certificate", "self-signed one", "when it starts")  # not made yet
    assert found(text, "NOTE", "server", "not running")
    assert text[-1].startswith("check passed: 0 errors")
    assert report["ok"] is True and report["errors"] == 0

    server.start()
    try:
        status, text, report = check(server)
    finally:
        server.stop()
    assert status == 0, text
    for domain in ("localhost", "example.org"):
        assert found(text, "OK", "certificate", f"{domain}: the certificate names it")
    # the self-signed certificate names *.example.org too, so that MUC service is covered; a wildcard
    # under a single-label name (*.localhost) is not accepted, so conference.localhost is not
    assert found(text, "OK", "certificate", "example.org: ", "names the MUC service conference.example.org")
    assert found(text, "WARN", "certificate", "localhost: ", "MUC service conference.localhost")
    assert found(text, "OK", "certificate", "the key matches the certificate")
    assert found(text, "OK", "certificate", "valid until")
    assert found(text, "WARN", "certificate", "localhost, example.org: ", "self-signed")
    assert found(text, "NOTE", "dns", "localhost: ", "not looked up")
    # this machine's DNS has no SRV record for example.org, or no DNS at all: a warning either way
    assert found(text, "WARN", "dns", "example.org: ", "_xmpp-client._tcp.example.org") or found(
        text, "WARN", "dns", "DNS did not answer"
    )
    assert found(text, "OK", "listeners", "c2s tcp:0:interface=127.0.0.1", "this machine only")
    assert found(text, "OK", "server", "running for")
    assert not found(text, "ERROR")
    assert report["errors"] == 0 and report["warnings"] >= 4
    levels = {(r["level"], r["check"]) for r in report["results"]}
    assert {("ok", "config"), ("warn", "certificate"), ("ok", "server")} <= levels
    dns = [r for r in report["results"] if r["check"] == "dns" and r["level"] == "warn"]
    assert dns and all(r["domains"] and "localhost" not in r["domains"] for r in dns)


@pytest.fixture
def ca(tmp_path) -> TestCA:
    return TestCA(tmp_path / "ca")


def with_certificate(tmp_path, cert, key, domains=("localhost",)) -> ServerProcess:
    config = {"server": {"domains": list(domains)}, "tls": {"certificate": str(cert), "key": str(key)}}
    (tmp_path / "server").mkdir()
    return ServerProcess(tmp_path / "server", config)


def test_check_expired_certificate(tmp_path, ca):
    server = with_certificate(tmp_path, *ca.issue("localhost", expired=True))
    status, text, report = check(server)
    assert status == 1
    (line,) = found(text, "ERROR", "certificate", "localhost: ", "expired on")
    assert text[-1].startswith("check failed: 1 error")
    assert report["ok"] is False and report["errors"] == 1
    (error,) = [r for r in report["results"] if r["level"] == "error"]
    assert error["domains"] == ["localhost"] and "expired" in error["message"]


def test_check_certificate_for_another_domain(tmp_path, ca):
    server = with_certificate(tmp_path, *ca.issue("other.test"), domains=("localhost", "other.test"))
    status, text, report = check(server)
    assert status == 1
    assert found(
        text, "ERROR", "certificate", "localhost: the certificate does not name localhost", "other.test"
    )
    assert found(text, "OK", "certificate", "other.test: the certificate names it")
    assert not found(text, "WARN", "self-signed")  # issued by a CA
    assert [r["domains"] for r in report["results"] if r["level"] == "error"] == [["localhost"]]


def test_check_key_that_does_not_belong_to_the_certificate(tmp_path, ca):
    cert, _ = ca.issue("localhost")
    _, other_key = ca.issue("localhost", xmpp_addr=True)
    server = with_certificate(tmp_path, cert, other_key)
    status, text, _ = check(server)
    assert status == 1
    assert found(
        text, "ERROR", "certificate", "localhost: ", "[tls] key: the key does not belong to the certificate"
    )


def test_check_broken_configuration_says_what_the_server_says(tmp_path):
    server = ServerProcess(tmp_path, {"server": {"colour": "blue"}})
    status, text, report = check(server)
    assert status == 1
    (line,) = found(text, "ERROR", "config")
    assert "[server] colour: unknown key" in line
    assert report["errors"] == 1 and report["results"][0]["check"] == "config"
    with pytest.raises(RuntimeError) as started:
        server.start()
    problem = line.split("config", 1)[1].strip()
    assert f"xmppd: {problem}" in str(started.value)  # the very line the server stops with


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"plugins": {"muc": {"max_rooms": "many"}}}, ["[plugins.muc] max_rooms", "expected int"]),
        ({"plugins": {"enabled": ["disco", "no_such_plugin"]}}, ["unknown plugin 'no_such_plugin'"]),
        ({"listen": {"c2s": ["carrier-pigeon:5222"]}}, ["[listen] c2s", "bad endpoint description"]),
    ],
    ids=["plugin option", "plugin", "listener"],
)
def test_check_configuration_problems_beyond_the_file(tmp_path, config, words):
    status, text, _ = check(ServerProcess(tmp_path, config))
    assert status == 1
    assert found(text, "ERROR", "config", *words), text


def test_check_notes_listeners_beyond_loopback(tmp_path):
    config = {"listen": {"c2s": ["tcp:0"], "component": ["tcp:0:interface=0.0.0.0"]}}
    status, text, _ = check(ServerProcess(tmp_path, config))
    assert status == 0
    assert found(text, "NOTE", "listeners", "c2s tcp:0 listens on every interface")
    assert found(text, "WARN", "listeners", "component", "XEP-0114")
