"""The built-in plugins as a user sees them: a real slixmpp client over c2s (STARTTLS, SCRAM, bind) to
``twistd xmppd`` on loopback, and plugin management of the running server with the real ``xmppdctl``,
SIGHUP, and ``plugin_paths``.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import signal
import textwrap
import time
import tomllib
from typing import Any

from slixclient import Client, Clients, error_condition, run, run_as_alice

import xmppd
from xmppd.config import DEFAULT_PLUGINS
from xmppd.testing.process import ServerProcess, write_toml

USERS = {"alice@localhost": "alice-pw", "bob@localhost": "bob-pw"}
NS_INFO = "http://jabber.org/protocol/disco#info"
NS_DATA = "jabber:x:data"
NS_TIME = "urn:xmpp:time"
DEFAULT_FEATURES = {
    NS_INFO,
    "http://jabber.org/protocol/disco#items",
    "urn:xmpp:ping",
    "jabber:iq:version",
    "urn:xmpp:time",
    "jabber:iq:last",
}


async def features(client: Client, jid: str = "localhost") -> set[str]:
    info = await client.plugin["xep_0030"].get_info(jid=jid, timeout=5)
    return set(info["disco_info"]["features"])


async def version_name(client: Client) -> str:
    answer = await client.plugin["xep_0092"].get_version("localhost", timeout=5)
    return answer["software_version"]["name"]


async def time_answered(client: Client) -> bool:
    answer = await client.plugin["xep_0202"].get_entity_time("localhost", timeout=5)
    return answer["type"] == "result"


async def ctl(proc: ServerProcess, *args: str) -> Any:
    """xmppdctl in a thread, so the clients keep answering while it runs."""
    return await asyncio.to_thread(proc.ctl, *args, check=False)


async def wait_for_log(proc: ServerProcess, text: str, count: int = 1, timeout: float = 10) -> str:
    """Wait until ``text`` appears ``count`` times in the server log; the log."""
    deadline = time.monotonic() + timeout
    while (log := proc.log()).count(text) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not logged {count} time(s):\n{log[-3000:]}")
        await asyncio.sleep(0.05)
    return log


async def assert_can_message(sender: Client, recipient: Client, body: str) -> None:
    sender.send_message(mto=recipient.boundjid.bare, mbody=body, mtype="chat")
    message = await recipient.next_message()
    assert message["body"] == body
    assert message["from"].bare == sender.boundjid.bare


def rewrite_config(proc: ServerProcess, change) -> None:
    """Apply ``change(data)`` to the server's configuration file."""
    data = tomllib.loads(proc.config_path.read_text())
    change(data)
    write_toml(proc.config_path, data)


# -- service discovery (XEP-0030) ----------------------------------------------------------------------------


def test_disco_info_of_the_server(xmpp_process):
    proc = xmpp_process(users=USERS)

    async def check(alice):
        info = await alice.plugin["xep_0030"].get_info(jid="localhost", timeout=5)
        assert info["from"] == "localhost"
        identities = {(cat, type_) for cat, type_, _lang, _name in info["disco_info"]["identities"]}
        assert ("server", "im") in identities
        assert DEFAULT_FEATURES <= set(info["disco_info"]["features"])
        # no contact addresses configured: no XEP-0157 form
        assert info.xml.findall(f"{{{NS_INFO}}}query/{{{NS_DATA}}}x") == []

    run_as_alice(proc, check)


def test_disco_items_of_the_server(xmpp_process):
    proc = xmpp_process(users=USERS)

    async def check(alice):
        items = await alice.plugin["xep_0030"].get_items(jid="localhost", timeout=5)
        assert items["type"] == "result"
        # no components yet; the MUC service is the one service of the default plugins
        assert items["disco_items"]["items"] == {("conference.localhost", None, "Chatrooms")}

    run_as_alice(proc, check)


def test_disco_info_of_accounts(xmpp_process):
    proc = xmpp_process(users=USERS)

    async def main():
        async with Clients(proc) as clients:
            alice = await clients.login("alice@localhost/phone", "alice-pw")
            await clients.login("bob@localhost/pc", "bob-pw")
            own = await alice.plugin["xep_0030"].get_info(jid="alice@localhost", timeout=5)
            assert own["from"] == "alice@localhost"
            identities = {(cat, type_) for cat, type_, _lang, _name in own["disco_info"]["identities"]}
            assert identities == {("account", "registered")}
            assert {NS_INFO, "urn:xmpp:ping"} <= set(own["disco_info"]["features"])
            # another account, without a roster subscription: as if it did not exist (s3.1)
            other = alice.plugin["xep_0030"].get_info(jid="bob@localhost", timeout=5)
            assert await error_condition(other) == "service-unavailable"

    run(main())


def test_contact_addresses_in_disco_info(xmpp_process):
    addresses = ["mailto:admin@example.org", "xmpp:admin@localhost"]
    proc = xmpp_process(config={"plugins": {"contact_info": {"admin_addresses": addresses}}}, users=USERS)

    async def check(alice):
        info = await alice.plugin["xep_0030"].get_info(jid="localhost", timeout=5)
        forms = info.xml.findall(f"{{{NS_INFO}}}query/{{{NS_DATA}}}x")
        assert len(forms) == 1
        assert forms[0].get("type") == "result"
        fields = {
            field.get("var"): [v.text for v in field.findall(f"{{{NS_DATA}}}value")]
            for field in forms[0].findall(f"{{{NS_DATA}}}field")
        }
        assert fields == {
            "FORM_TYPE": ["http://jabber.org/network/serverinfo"],
            "admin-addresses": addresses,
        }

    run_as_alice(proc, check)


# -- ping (XEP-0199) -----------------------------------------------------------------------------------------


def test_ping_the_server_and_own_account(xmpp_process):
    proc = xmpp_process(users=USERS)

    async def check(alice):
        # send_ping, not ping(): ping() counts an error from the own server as success
        server = await alice.plugin["xep_0199"].send_ping("localhost", timeout=5)
        assert server["type"] == "result" and server["from"] == "localhost"
        account = await alice.plugin["xep_0199"].send_ping("alice@localhost", timeout=5)
        assert account["type"] == "result" and account["from"] == "alice@localhost"

    run_as_alice(proc, check)


def test_keepalive_keeps_answering_clients_and_drops_silent_ones(xmpp_process):
    proc = xmpp_process(
        config={"plugins": {"ping": {"keepalive_interval": 1.0, "keepalive_timeout": 2.0}}}, users=USERS
    )

    async def main():
        async with Clients(proc) as clients:
            answering = await clients.login("alice@localhost/phone", "alice-pw")
            started = time.monotonic()
            silent = await clients.login("bob@localhost/dead", "bob-pw", answer_pings=False)
            # silent after login: pinged after 1 s of silence, closed when 2 s pass without an answer
            await asyncio.wait_for(silent.ended.wait(), 10)
            assert ("connection-timeout", "no answer to ping") in silent.stream_errors
            assert silent.pings_received >= 1
            await asyncio.sleep(max(0.0, 4.5 - (time.monotonic() - started)))
            assert answering.connected
            assert answering.pings_received >= 2
            assert (await answering.plugin["xep_0199"].send_ping("localhost", timeout=5))["type"] == "result"

    run(main())
    log = proc.log()
    assert "closing bob@localhost/dead: no answer to a keepalive ping" in log
    assert "closing alice@localhost" not in log


# -- software version (XEP-0092) -----------------------------------------------------------------------------


def test_version_by_default(xmpp_process):
    proc = xmpp_process(users=USERS)

    async def check(alice):
        answer = await alice.plugin["xep_0092"].get_version("localhost", timeout=5)
        version = answer.xml.find("{jabber:iq:version}query")
        assert version.findtext("{jabber:iq:version}name") == "xmppd"
        assert version.findtext("{jabber:iq:version}version") == xmppd.__version__
        assert version.find("{jabber:iq:version}os") is None

    run_as_alice(proc, check)


def test_version_options(xmpp_process):
    proc = xmpp_process(config={"plugins": {"version": {"show_os": True, "name": "MyServer"}}}, users=USERS)

    async def check(alice):
        answer = await alice.plugin["xep_0092"].get_version("localhost", timeout=5)
        assert answer["software_version"]["name"] == "MyServer"
        assert answer["software_version"]["version"] == xmppd.__version__
        assert answer["software_version"]["os"].strip()

    run_as_alice(proc, check)


# -- entity time (XEP-0202) ----------------------------------------------------------------------------------


def test_time_is_utc_now(xmpp_process):
    proc = xmpp_process(users=USERS)

    async def check(alice):
        answer = await alice.plugin["xep_0202"].get_entity_time("localhost", timeout=5)
        entity_time = answer.xml.find(f"{{{NS_TIME}}}time")
        assert entity_time.findtext(f"{{{NS_TIME}}}tzo") == "+00:00"
        utc = entity_time.findtext(f"{{{NS_TIME}}}utc")
        assert utc.endswith("Z")
        when = datetime.datetime.fromisoformat(utc)
        now = datetime.datetime.now(datetime.UTC)
        assert abs((when - now).total_seconds()) < 5

    run_as_alice(proc, check)


# -- last activity (XEP-0012); the logout-time path is in tests/unit/test_last_plugin.py ---------------------


def test_uptime_grows(xmpp_process):
    proc = xmpp_process(users=USERS)

    async def check(alice):
        first = await alice.plugin["xep_0012"].get_last_activity("localhost", timeout=5)
        await asyncio.sleep(1.2)
        second = await alice.plugin["xep_0012"].get_last_activity("localhost", timeout=5)
        assert first["last_activity"]["seconds"] >= 0
        assert second["last_activity"]["seconds"] >= first["last_activity"]["seconds"] + 1

    run_as_alice(proc, check)


def test_last_activity_of_accounts(xmpp_process):
    proc = xmpp_process(users=USERS)

    async def main():
        async with Clients(proc) as clients:
            alice = await clients.login("alice@localhost/phone", "alice-pw")
            bob = await clients.login("bob@localhost/r1", "bob-pw")
            # online, and asking about himself: 0 seconds
            own = await bob.plugin["xep_0012"].get_last_activity("bob@localhost", timeout=5)
            assert own["type"] == "result" and own["last_activity"]["seconds"] == 0
            # others may not know, online or not (no roster to authorize them)
            query = alice.plugin["xep_0012"].get_last_activity("bob@localhost", timeout=5)
            assert await error_condition(query) == "forbidden"
            await bob.stop()
            await asyncio.wait_for(wait_for_log(proc, "session bob@localhost/r1 ended"), 10)
            query = alice.plugin["xep_0012"].get_last_activity("bob@localhost", timeout=5)
            assert await error_condition(query) == "forbidden"
            # back with another resource: online again
            again = await clients.login("bob@localhost/r2", "bob-pw")
            own = await again.plugin["xep_0012"].get_last_activity("bob@localhost", timeout=5)
            assert own["last_activity"]["seconds"] == 0

    run(main())


# -- plugin management on a running server -------------------------------------------------------------------


def test_xmppdctl_lists_the_built_in_plugins(xmpp_process):
    proc = xmpp_process()
    rows = {row["name"]: row for row in json.loads(proc.ctl("--json", "plugins").stdout)}
    for name in DEFAULT_PLUGINS:
        assert rows[name]["enabled"] == ["localhost"], rows[name]
        assert rows[name]["loaded"] == ["localhost"], rows[name]
        assert rows[name]["origin"].startswith("entry point xmppd.plugins."), rows[name]
    text = proc.ctl("plugins").stdout
    assert {line.split()[0] for line in text.splitlines()} >= set(DEFAULT_PLUGINS)


def test_unload_load_and_reload_while_clients_stay_connected(xmpp_process):
    proc = xmpp_process(users=USERS)

    async def main():
        async with Clients(proc) as clients:
            alice = await clients.login("alice@localhost/phone", "alice-pw")
            bob = await clients.login("bob@localhost/pc", "bob-pw")
            assert await version_name(alice) == "xmppd"

            result = await ctl(proc, "plugins", "unload", "version")
            assert (result.returncode, result.stdout.strip()) == (0, "unloaded version"), result.stderr
            assert await error_condition(alice.plugin["xep_0092"].get_version("localhost", timeout=5)) == (
                "service-unavailable"
            )
            assert "jabber:iq:version" not in await features(alice)
            assert DEFAULT_FEATURES - {"jabber:iq:version"} <= await features(alice)
            assert alice.connected and bob.connected
            await assert_can_message(alice, bob, "still here after unload")
            rows = {r["name"]: r for r in json.loads((await ctl(proc, "--json", "plugins")).stdout)}
            assert rows["version"]["enabled"] == ["localhost"] and rows["version"]["loaded"] == []

            result = await ctl(proc, "plugins", "load", "version")
            assert (result.returncode, result.stdout.strip()) == (0, "loaded version"), result.stderr
            assert await version_name(alice) == "xmppd"
            assert DEFAULT_FEATURES <= await features(alice)

            result = await ctl(proc, "plugins", "reload", "version")
            assert (result.returncode, result.stdout.strip()) == (0, "reloaded version"), result.stderr
            assert await version_name(alice) == "xmppd"
            assert DEFAULT_FEATURES <= await features(alice)
            assert alice.connected and bob.connected
            await assert_can_message(bob, alice, "still here after reload")

            # disco is required by contact_info and caps: refused, and nothing changes
            result = await ctl(proc, "plugins", "unload", "disco")
            assert result.returncode == 1
            assert result.stderr.strip() == (
                "xmppdctl: plugin 'disco' is required by contact_info, caps, muc, adhoc on localhost;"
                " unload those first"
            )
            assert DEFAULT_FEATURES <= await features(alice)

            for action in ("load", "unload", "reload"):
                result = await ctl(proc, "plugins", action, "nosuch")
                assert result.returncode == 1, action
                lines = result.stderr.strip().splitlines()
                assert len(lines) == 1 and "'nosuch'" in lines[0], result.stderr
                assert lines[0].startswith("xmppdctl: "), lines
            assert alice.connected and bob.connected

    run(main())


# -- configuration reload: SIGHUP and xmppdctl reload --------------------------------------------------------


def test_sighup_applies_plugin_changes_and_ignores_a_broken_file(xmpp_process):
    proc = xmpp_process(users=USERS)

    async def check(alice):
        assert await time_answered(alice)

        def change(data):
            data["plugins"] = {
                "enabled": [p for p in DEFAULT_PLUGINS if p != "time"],
                "version": {"name": "Renamed"},
            }

        rewrite_config(proc, change)
        proc.signal(signal.SIGHUP)
        log = await wait_for_log(proc, "configuration reloaded")
        assert "unloaded time on localhost" in log and "reloaded version on localhost" in log
        time_query = alice.plugin["xep_0202"].get_entity_time("localhost", timeout=5)
        assert await error_condition(time_query) == "service-unavailable"
        assert await version_name(alice) == "Renamed"
        assert "urn:xmpp:time" not in await features(alice)

        # a file that is not TOML: logged, and the running plugins stay as they are
        proc.config_path.write_text(proc.config_path.read_text() + "\n[plugins\nenabled = \n")
        proc.signal(signal.SIGHUP)
        await wait_for_log(proc, "configuration not reloaded")
        line = next(x for x in proc.log().splitlines() if "configuration not reloaded" in x)
        assert f"{proc.config_path}: not valid TOML" in line
        assert await version_name(alice) == "Renamed"
        time_query = alice.plugin["xep_0202"].get_entity_time("localhost", timeout=5)
        assert await error_condition(time_query) == "service-unavailable"
        assert alice.connected
        assert proc.process.poll() is None

    run_as_alice(proc, check)


def test_xmppdctl_reload_applies_plugin_changes_and_refuses_a_bad_one(xmpp_process):
    proc = xmpp_process(users=USERS)

    async def check(alice):

        def change(data):
            data["plugins"] = {"enabled": [p for p in DEFAULT_PLUGINS if p != "version"]}

        rewrite_config(proc, change)
        result = await ctl(proc, "reload")
        assert result.returncode == 0, result.stderr
        assert "unloaded version on localhost" in result.stdout
        query = alice.plugin["xep_0092"].get_version("localhost", timeout=5)
        assert await error_condition(query) == "service-unavailable"

        # valid TOML, but an unknown plugin: refused with the reason, nothing changes
        def broken(data):
            data["plugins"] = {"enabled": ["disco", "version", "nosuch"]}

        rewrite_config(proc, broken)
        result = await ctl(proc, "reload")
        assert result.returncode == 1
        assert "unknown plugin 'nosuch'" in result.stderr and "[plugins] enabled" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "configuration not reloaded" in proc.log()
        query = alice.plugin["xep_0092"].get_version("localhost", timeout=5)
        assert await error_condition(query) == "service-unavailable"
        assert await time_answered(alice)
        assert alice.connected

    run_as_alice(proc, check)


# -- plugin_paths: an unpackaged plugin module ---------------------------------------------------------------

ECHO_PLUGIN = textwrap.dedent(
    """
    from xmppd.plugin import Plugin
    from xmppd.xml.stanza import add_child

    NS = "urn:example:echo"


    class Echo(Plugin):
        name = "echo"

        def setup(self, ctx):
            ctx.add_feature(NS)
            ctx.hook_iq("get", NS, "echo", self.on_echo, to="host")

        def on_echo(self, event):
            reply = event.result()
            add_child(reply, NS, "echo", "echo: " + (event.stanza[0].text or ""))
            return reply
    """
)


def test_plugin_from_plugin_paths(xmpp_process, tmp_path):
    directory = tmp_path / "myplugins"
    directory.mkdir()
    (directory / "echo.py").write_text(ECHO_PLUGIN)
    config = {"plugins": {"plugin_paths": [str(directory)], "enabled": [*DEFAULT_PLUGINS, "echo"]}}
    proc = xmpp_process(config=config, users=USERS)
    rows = {row["name"]: row for row in json.loads(proc.ctl("--json", "plugins").stdout)}
    assert rows["echo"]["origin"] == str(directory / "echo.py")
    assert rows["echo"]["loaded"] == ["localhost"]

    async def check(alice):
        answer = await alice.iq_get("localhost", "<echo xmlns='urn:example:echo'>hi</echo>")
        assert answer.get("type") == "result"
        assert answer.findtext("{urn:example:echo}echo") == "echo: hi"
        assert "urn:example:echo" in await features(alice)

    run_as_alice(proc, check)
