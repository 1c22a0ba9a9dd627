"""Prometheus metrics (the ``metrics`` plugin) of a real ``twistd xmppd`` with SQLite storage: slixmpp users
log in on c2s, a WebSocket client on the HTTP site, they exchange messages, logins fail with a wrong
password; /metrics, fetched over HTTP with urllib and parsed with prometheus_client's own parser, says so.
A request from another loopback address (127.0.0.2, not in ``allowed``) gets 403."""

from __future__ import annotations

import asyncio
import http.client
import time
import urllib.error
import urllib.request
from typing import Any

import websockets
from prometheus_client.parser import text_string_to_metric_families
from slixclient import TIMEOUT, Clients, run, within
from test_websocket_live import login as websocket_login
from test_websocket_live import url as websocket_url

from xmppd.config import DEFAULT_PLUGINS

CONFIG = {
    "listen": {"http": ["tcp:0:interface=127.0.0.1"]},
    "plugins": {"enabled": [*DEFAULT_PLUGINS, "metrics"]},
}
USERS = {"alice@localhost": "alice-pw", "bob@localhost": "bob-pw", "carol@localhost": "carol-pw"}


def fetch(server: Any) -> dict[str, Any]:
    """GET /metrics from 127.0.0.1; the metric families by name."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port('http')}/metrics", timeout=10) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = answer.read().decode("utf-8")
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(families: dict[str, Any], sample: str, **labels: str) -> float:
    """The value of the one sample named ``sample`` whose labels include ``labels``."""
    name = sample
    for suffix in ("_total", "_bucket", "_count", "_sum"):
        name = name.removesuffix(suffix)
    found = [
        s.value for s in families[name].samples if s.name == sample and labels.items() <= s.labels.items()
    ]
    assert len(found) == 1, f"{sample}{labels}: {found}"
    return found[0]


async def scrape(server: Any) -> dict[str, Any]:
    return await asyncio.to_thread(fetch, server)


async def fail_login(clients: Clients, server: Any, jid: str, mechanism: str) -> None:
    """Log in with a wrong password using only ``mechanism``: one SASL failure, then the client gives up."""
    client = clients.client(jid, "not-the-password")
    client.plugin["feature_mechanisms"].use_mech = mechanism
    client.connect("127.0.0.1", server.port())
    await within(client.auth_failed.wait())
    await client.stop()


def test_metrics_of_a_running_server(xmpp_process):
    server = xmpp_process(config=CONFIG, users=USERS)

    async def body() -> None:
        before = await scrape(server)
        for transport in ("c2s", "bosh", "websocket"):
            assert value(before, "xmppd_sessions", transport=transport) == 0
        assert value(before, "xmppd_stanzas_total", direction="in", transport="c2s", kind="message") == 0

        async with Clients(server) as clients:
            alice = await clients.login("alice@localhost/phone", "alice-pw")
            bob = await clients.login("bob@localhost/pc", "bob-pw")
            async with websockets.connect(websocket_url(server), subprotocols=["xmpp"]) as ws:
                assert await websocket_login(ws, "carol", "carol-pw", "web") == "carol@localhost/web"
                for i in range(3):
                    alice.send_message(mto="bob@localhost/pc", mbody=f"hello {i}", mtype="chat")
                for i in range(3):
                    assert (await bob.next_message())["body"] == f"hello {i}"
                bob.send_message(mto="alice@localhost/phone", mbody="hi alice", mtype="chat")
                assert (await alice.next_message())["body"] == "hi alice"
                await fail_login(clients, server, "alice@localhost/x", "SCRAM-SHA-256")
                await fail_login(clients, server, "bob@localhost/x", "PLAIN")

                during = await scrape(server)
                assert value(during, "xmppd_sessions", transport="c2s") == 2
                assert value(during, "xmppd_sessions", transport="websocket") == 1
                assert value(during, "xmppd_sessions", transport="bosh") == 0
                assert value(during, "xmppd_sessions_started_total", transport="c2s") == 2
                assert value(during, "xmppd_sessions_started_total", transport="websocket") == 1

                def stanzas(direction: str, kind: str, transport: str = "c2s") -> float:
                    labels = {"direction": direction, "kind": kind, "transport": transport}
                    return value(during, "xmppd_stanzas_total", **labels)

                assert stanzas("in", "message") == 4
                assert stanzas("out", "message") == 4
                assert stanzas("in", "presence") >= 2, "initial presence of alice and bob"
                assert stanzas("out", "iq") >= 2, "at least the bind results"
                assert stanzas("out", "iq", "websocket") == 1, "carol's bind result"

                assert (
                    value(
                        during,
                        "xmppd_auth_failures_total",
                        mechanism="SCRAM-SHA-256",
                        condition="not-authorized",
                    )
                    == 1
                )
                assert (
                    value(during, "xmppd_auth_failures_total", mechanism="PLAIN", condition="not-authorized")
                    == 1
                )

                # storage: SQLite in a thread pool, timed around the backend
                gets = value(during, "xmppd_storage_seconds_count", shape="keyval", operation="get")
                assert gets >= 5, "accounts and rosters were read at each login"
                assert (
                    value(during, "xmppd_storage_seconds_bucket", shape="keyval", operation="get", le="+Inf")
                    == gets
                )
                assert (
                    0 < value(during, "xmppd_storage_seconds_sum", shape="keyval", operation="get") < gets * 5
                )
                buckets = [
                    s.value
                    for s in during["xmppd_storage_seconds"].samples
                    if s.name == "xmppd_storage_seconds_bucket"
                    and (s.labels["shape"], s.labels["operation"]) == ("keyval", "get")
                ]
                assert buckets == sorted(buckets) and buckets[-1] == gets

                # the process: memory, CPU, file descriptors, start time
                assert value(during, "process_resident_memory_bytes") > 10 * 1024 * 1024
                assert value(during, "process_cpu_seconds_total") > 0
                assert value(during, "process_open_fds") > 5
                assert 0 < time.time() - value(during, "process_start_time_seconds") < 600

                assert value(during, "xmppd_s2s_streams", direction="incoming", authenticated="true") == 0

        async def sessions_gone() -> bool:
            families = await scrape(server)
            return sum(s.value for s in families["xmppd_sessions"].samples) == 0

        deadline = time.monotonic() + TIMEOUT
        while not await sessions_gone():
            assert time.monotonic() < deadline, "sessions still counted after the clients left"
            await asyncio.sleep(0.1)

    run(body())


def test_other_addresses_get_403(xmpp_process):
    """127.0.0.2 is loopback too, but not in the default ``allowed`` (127.0.0.1 and ::1)."""
    server = xmpp_process(config=CONFIG)
    connection = http.client.HTTPConnection(
        "127.0.0.1", server.port("http"), timeout=10, source_address=("127.0.0.2", 0)
    )
    try:
        connection.request("GET", "/metrics")
        answer = connection.getresponse()
        body = answer.read().decode()
    finally:
        connection.close()
    assert answer.status == 403
    assert "xmppd_" not in body
    assert "xmppd_sessions" in {*fetch(server)}


def test_allowed_networks_from_the_configuration(xmpp_process):
    server = xmpp_process(
        config={**CONFIG, "plugins": {**CONFIG["plugins"], "metrics": {"allowed": ["127.0.0.0/30"]}}}
    )

    def status(source: str) -> int:
        connection = http.client.HTTPConnection(
            "127.0.0.1", server.port("http"), timeout=10, source_address=(source, 0)
        )
        try:
            connection.request("GET", "/metrics")
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()

    assert status("127.0.0.2") == 200
    assert status("127.0.0.5") == 403


def test_off_by_default(xmpp_process):
    server = xmpp_process(config={"listen": {"http": ["tcp:0:interface=127.0.0.1"]}})
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{server.port('http')}/metrics", timeout=10)
    except urllib.error.HTTPError as error:
        assert error.code == 404
    else:
        raise AssertionError("/metrics is served without the plugin")
