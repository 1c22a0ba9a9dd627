"""Logging of a real ``twistd xmppd`` (xmppd.log): JSON lines, what never reaches the log, and levels per
plugin, changed by SIGHUP while the server runs.

The privacy test logs in with a known password (SCRAM and PLAIN) and sends messages with known bodies, then
reads the log as an operator would: at info level neither the password, nor anything of the SASL
exchanges, nor a body may be there; at debug level the password and the SASL exchanges still may not.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from slixclient import Client, Clients, error_condition, run, start_session

from xmppd.testing.process import TWISTD, ServerProcess, write_toml

CHECKOUT = str(Path(__file__).resolve().parents[2])  # on PYTHONPATH, so that twistd finds the dropin
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_COMMANDS = "http://jabber.org/protocol/commands"
ADD_USER = "http://jabber.org/protocol/admin#add-user"
OFFLINE_DEBUG = "stored an offline message for carol@localhost"
ADHOC_DEBUG = "may not run " + ADD_USER


def users(alice_password: str = "alice-pw") -> dict[str, str]:
    return {"alice@localhost": alice_password, "bob@localhost": "bob-pw", "carol@localhost": "carol-pw"}


def wait_for(check: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def reload_logging(proc: ServerProcess, logging: dict[str, Any], log: Callable[[], str]) -> None:
    """Rewrite ``[logging]`` in the server's configuration, send SIGHUP and wait until ``log()`` (where
    the new settings write) says the configuration was reloaded."""
    data = tomllib.loads(proc.config_path.read_text())
    data["logging"] = logging
    write_toml(proc.config_path, data)
    before = log().count("configuration reloaded")
    proc.signal(signal.SIGHUP)
    wait_for(lambda: log().count("configuration reloaded") > before, "the reload")


async def message_carol(proc: ServerProcess, body: str) -> None:
    """alice writes to carol, who is offline (the offline plugin stores it)."""
    async with Clients(proc) as clients:
        alice = await clients.login("alice@localhost/phone", "alice-pw")
        alice.send_message(mto="carol@localhost", mbody=body, mtype="chat")
        await asyncio.sleep(0.3)


async def run_admin_command(proc: ServerProcess) -> None:
    """bob, who is not an administrator, tries an admin command (the adhoc plugin refuses it)."""
    async with Clients(proc) as clients:
        bob = await clients.login("bob@localhost/pc", "bob-pw")
        iq = bob.make_iq_set(ito="localhost")
        iq.append(ET.fromstring(f"<command xmlns='{NS_COMMANDS}' node='{ADD_USER}' action='execute'/>"))
        assert await error_condition(iq.send(timeout=10)) == "forbidden"


# -- JSON lines --------------------------------------------------------------------------------------------


def test_json_lines_from_a_real_server(tmp_path):
    target = tmp_path / "xmppd.jsonl"
    proc = ServerProcess(tmp_path, {"logging": {"format": "json", "file": str(target)}})
    proc.start()
    try:
        for jid, password in users().items():
            proc.adduser(jid, password)
        run(message_carol(proc, "hello"))
    finally:
        proc.stop()

    events = [json.loads(line) for line in target.read_text().splitlines()]
    for event in events:
        assert {"time", "level", "namespace", "message"} <= set(event)
        assert event["time"].endswith("Z") and datetime.fromisoformat(event["time"]).utcoffset().seconds == 0
        assert event["level"] in ("debug", "info", "warn", "error", "critical")

    def one(text: str) -> dict[str, Any]:
        found = [e for e in events if text in e["message"]]
        assert found, f"{text!r} not among {[e['message'] for e in events]}"
        return found[0]

    listening = one("listening for c2s on 127.0.0.1:")
    assert (listening["namespace"], listening["level"], listening["kind"]) == ("xmppd.server", "info", "c2s")
    authenticated = one("authenticated as alice@localhost")
    assert authenticated["namespace"] == "xmppd.c2s" and authenticated["user"] == "alice"
    assert one("session alice@localhost/phone started")["jid"] == "alice@localhost/phone"
    assert one("control command adduser")["command"] == "adduser"
    assert one("stopping: closing every stream")["namespace"] == "xmppd.server"
    assert one("plugin offline unloaded")["plugin"] == "offline"
    assert "session alice@localhost/phone started" not in proc.log()  # the file, not twistd's log, had it


def test_json_on_stdout_with_nodaemon(tmp_path):
    """Without a file, JSON lines go where twistd logs: stdout with --nodaemon."""
    proc = ServerProcess(tmp_path, {"logging": {"format": "json"}})
    proc.start()
    try:
        lines = [line for line in proc.log().splitlines() if line.strip()]
    finally:
        proc.stop()
    events = [json.loads(line) for line in lines]  # every line is JSON, Twisted's own too
    listening = next(e for e in events if e["message"].startswith("listening for c2s"))
    assert listening["kind"] == "c2s" and listening["namespace"] == "xmppd.server"
    assert any(e["namespace"].startswith("twisted") for e in events)


def test_a_log_file_that_cannot_be_opened_stops_start_up_with_one_line(tmp_path):
    config = tmp_path / "xmppd.toml"
    write_toml(
        config,
        {
            "server": {"domains": ["localhost"], "data_dir": str(tmp_path / "data")},
            "listen": {"c2s": ["tcp:0:interface=127.0.0.1"], "s2s": [], "http": []},
            "logging": {"file": str(tmp_path / "no-such-dir" / "xmppd.log")},
        },
    )
    result = subprocess.run(
        [sys.executable, "-c", TWISTD, "--nodaemon", "--pidfile=", "xmppd", "--config", str(config)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [CHECKOUT, os.environ.get("PYTHONPATH")])),
        },
    )
    assert result.returncode == 1
    output = (result.stdout + result.stderr).strip()
    assert output == (
        f"xmppd: {config}: [logging] file: cannot open {str(tmp_path / 'no-such-dir' / 'xmppd.log')!r}: "
        "No such file or directory; fix: name a file in an existing directory xmppd may write, "
        'or "" for twistd\'s log'
    )


# -- privacy ----------------------------------------------------------------------------------------------


class SASLRecorder:
    """Records the SASL payloads a client sends and receives (base64 text), and what they carry."""

    def __init__(self) -> None:
        self.payloads: list[str] = []

    def attach(self, client: Client) -> Client:
        client.add_filter("out", self._record)
        client.add_filter("in", self._record)
        return client

    def _record(self, stanza: Any) -> Any:
        xml = stanza.xml
        if xml.tag.startswith(f"{{{NS_SASL}}}") and xml.text and xml.text.strip() not in ("", "="):
            self.payloads.append(xml.text.strip())
        return stanza

    def secrets(self) -> set[str]:
        """Every payload, and the values inside (SCRAM's nonces, salt, proof, signature; PLAIN's fields)."""
        found = set(self.payloads)
        for payload in self.payloads:
            try:
                decoded = base64.b64decode(payload).decode("utf-8", "replace")
            except binascii.Error:
                continue
            for part in decoded.replace("\0", ",").split(","):
                value = part.split("=", 1)[1] if part[1:2] == "=" else part
                if len(value) >= 8:
                    found.add(value)
        return found


async def log_in_and_chat(proc: ServerProcess, password: str, body: str, sasl: SASLRecorder) -> None:
    """alice logs in with SCRAM and with PLAIN, writes ``body`` to bob (online) and to carol (offline)."""
    async with Clients(proc) as clients:
        bob = await clients.login("bob@localhost/pc", "bob-pw")
        alice = sasl.attach(clients.client("alice@localhost/scram", password))
        await start_session(alice, proc.port())
        plain = sasl.attach(clients.client("alice@localhost/plain", password))
        plain.plugin["feature_mechanisms"].use_mech = "PLAIN"
        await start_session(plain, proc.port())
        assert plain.plugin["feature_mechanisms"].mech.name == "PLAIN"
        assert alice.plugin["feature_mechanisms"].mech.name.startswith("SCRAM-")
        alice.send_message(mto="carol@localhost", mbody=body, mtype="chat")
        plain.send_message(mto="bob@localhost", mbody=body, mtype="chat")
        received = await bob.next_message()
        assert received["body"] == body


def assert_absent(log: str, *texts: str) -> None:
    for text in texts:
        assert text not in log, f"{text!r} is in the log"


def test_no_password_sasl_exchange_or_body_in_the_log(xmpp_process):
    password = f"Pa55-{secrets.token_hex(8)}"
    proc = xmpp_process(config={"logging": {"level": "info"}}, users=users(password))
    info_body = f"info-body-{secrets.token_hex(8)}"
    sasl = SASLRecorder()
    run(log_in_and_chat(proc, password, info_body, sasl))
    wait_for(lambda: "session alice@localhost/plain ended" in proc.log(), "alice's sessions to end")
    log = proc.log()
    assert "authenticated as alice@localhost" in log  # the logins are logged...
    assert len(sasl.payloads) >= 4
    assert_absent(log, password, base64.b64encode(password.encode()).decode(), info_body, *sasl.secrets())

    reload_logging(proc, {"level": "debug"}, proc.log)
    debug_body = f"debug-body-{secrets.token_hex(8)}"
    sasl = SASLRecorder()
    run(log_in_and_chat(proc, password, debug_body, sasl))
    wait_for(lambda: OFFLINE_DEBUG in proc.log(), "the offline plugin's debug line")  # debug is on
    wait_for(lambda: proc.log().count("session alice@localhost/plain ended") == 2, "alice's sessions to end")
    assert_absent(proc.log(), password, base64.b64encode(password.encode()).decode(), *sasl.secrets())


# -- levels per plugin ----------------------------------------------------------------------------------


def test_a_plugins_debug_level_shows_its_debug_lines_only(xmpp_process):
    proc = xmpp_process(users=users())
    run(message_carol(proc, "one"))
    run(run_admin_command(proc))
    log = proc.log()
    assert OFFLINE_DEBUG not in log and ADHOC_DEBUG not in log  # info: neither plugin's debug lines

    reload_logging(proc, {"levels": {"xmppd.plugin.offline": "debug"}}, proc.log)
    start = len(proc.log())
    run(message_carol(proc, "two"))
    run(run_admin_command(proc))
    wait_for(lambda: OFFLINE_DEBUG in proc.log()[start:], "the offline plugin's debug line")
    assert ADHOC_DEBUG not in proc.log()[start:]  # another plugin's debug lines stay out
    assert "#debug]" not in proc.log()[start:].replace("[xmppd.plugin.offline#debug]", "")

    reload_logging(proc, {"levels": {"xmppd.plugin.adhoc": "debug"}}, proc.log)
    start = len(proc.log())
    run(message_carol(proc, "three"))
    run(run_admin_command(proc))
    wait_for(lambda: ADHOC_DEBUG in proc.log()[start:], "the adhoc plugin's debug line")
    assert OFFLINE_DEBUG not in proc.log()[start:]
    assert f"[xmppd.plugin.adhoc#debug] bob@localhost/pc {ADHOC_DEBUG}" in proc.log()[start:]


def test_a_core_component_can_be_quietened(xmpp_process):
    proc = xmpp_process(config={"logging": {"levels": {"xmppd.c2s": "warn"}}}, users=users())
    run(message_carol(proc, "hi"))
    wait_for(
        lambda: "session alice@localhost/phone ended" in proc.log(), "the session to end"
    )  # xmppd.server
    assert "[xmppd.c2s#" not in proc.log()
