"""The metrics plugin (plugins/metrics.py) and the core's counters (xmppd.stats, xmppd.storage.timed) on
memory servers: /metrics fetched through the HTTP site's twisted.web stack (an HTTPChannel on an
in-memory transport) and parsed with prometheus_client's own parser, while clients log in, exchange
stanzas and fail to authenticate; s2s streams and WebSocket sessions on the memory transports of
test_s2s and test_websocket."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from lxml import etree
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families
from test_component import SECRET, ComponentClient
from test_s2s import REMOTE, REMOTE_ROUTE, Peer, RemoteEnd, connection_attempts, dialback_in
from test_websocket import WSClient
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import fail
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.web.server import Site

from xmppd.config import DEFAULT_PLUGINS, ConfigError, load
from xmppd.http.site import RootResource
from xmppd.server import XMPPServer
from xmppd.storage import StorageError
from xmppd.storage.base import ArchiveQuery
from xmppd.storage.memory import MemoryStorage
from xmppd.storage.timed import TimedStorage
from xmppd.stream.s2s import NS_DIALBACK, NS_DIALBACK_FEATURE, NS_SERVER
from xmppd.testing import MemoryServer, _sasl
from xmppd.testing.scram import ScramClient
from xmppd.xml.parser import NS_STREAMS

ENABLED = [*DEFAULT_PLUGINS, "metrics"]
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"


@dataclass
class Scrape:
    status: int
    content_type: str
    body: str

    def metrics(self) -> dict[str, Any]:
        assert self.status == 200, self.body
        return {family.name: family for family in text_string_to_metric_families(self.body)}


def scrape(
    xmpp: MemoryServer, address: Any = None, accept: str | None = None, path: str = "/metrics"
) -> Scrape:
    """GET ``path`` through the server's HTTP site from ``address`` (127.0.0.1 by default)."""
    address = address or IPv4Address("TCP", "127.0.0.1", 40000)
    transport = StringTransport(peerAddress=address)
    site = Site(RootResource(xmpp.server), reactor=xmpp.clock)
    channel = site.buildProtocol(address)
    channel.makeConnection(transport)
    headers = ["Host: localhost"] + ([f"Accept: {accept}"] if accept else [])
    channel.dataReceived(("\r\n".join([f"GET {path} HTTP/1.0", *headers]) + "\r\n\r\n").encode())
    head, _, body = transport.value().partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    content_type = next(
        (v.strip() for k, _, v in (h.partition(":") for h in lines) if k.lower() == "content-type"), ""
    )
    return Scrape(int(status_line.split()[1]), content_type, body.decode("utf-8"))


def value(families: dict[str, Any], sample: str, **labels: str) -> float:
    """The value of the one sample named ``sample`` whose labels include ``labels``."""
    family = families[
        sample.removesuffix("_total").removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
    ]
    found = [s.value for s in family.samples if s.name == sample and labels.items() <= s.labels.items()]
    assert len(found) == 1, f"{sample}{labels}: {len(found)} samples in {family.samples}"
    return found[0]


@pytest.fixture
def server(make_xmpp) -> MemoryServer:
    return make_xmpp(enabled=ENABLED, options={"ping": {"keepalive_interval": 0}})


def login_failing(xmpp: MemoryServer, user: str, password: str) -> Any:
    """A SCRAM-SHA-256 login with the wrong password: the server answers <failure/>."""
    client = xmpp.connect()
    client.open_stream("localhost")
    scram = ScramClient(user, password, "SHA-256")
    client.send(_sasl("auth", scram.first(), mechanism="SCRAM-SHA-256"))
    challenge = client.next()
    client.send(_sasl("response", scram.final(base64.b64decode(challenge.text))))
    outcome = client.next()
    assert etree.QName(outcome).localname == "failure"
    return client


# -- off by default, and only for allowed addresses ----------------------------------------------------------


def test_not_enabled_by_default(xmpp) -> None:
    assert "metrics" not in DEFAULT_PLUGINS
    assert "/metrics" not in xmpp.server.http_resources
    assert scrape(xmpp).status == 404
    assert xmpp.server.storage.observer is None, "storage is not timed without the plugin"


def test_served_to_loopback_by_default(server) -> None:
    answer = scrape(server)
    assert answer.status == 200
    assert answer.content_type.startswith("text/plain; version=0.0.4")
    assert "xmppd_sessions" in answer.metrics()
    assert scrape(server, IPv6Address("TCP", "::1", 40000)).status == 200
    # a dual-stack listener reports IPv4 clients as IPv4-mapped IPv6 addresses
    assert scrape(server, IPv6Address("TCP", "::ffff:127.0.0.1", 40000)).status == 200


@pytest.mark.parametrize(
    "address",
    [
        IPv4Address("TCP", "192.0.2.7", 40000),
        IPv6Address("TCP", "2001:db8::7", 40000),
        IPv6Address("TCP", "::ffff:192.0.2.7", 40000),
        UNIXAddress(b"/tmp/socket"),
    ],
)
def test_other_addresses_get_403(server, address) -> None:
    answer = scrape(server, address)
    assert answer.status == 403
    assert "xmppd_" not in answer.body


def test_allowed_addresses_and_networks_are_configurable(make_xmpp) -> None:
    xmpp = make_xmpp(enabled=ENABLED, options={"metrics": {"allowed": ["192.0.2.0/24", "2001:db8::1"]}})
    assert scrape(xmpp, IPv4Address("TCP", "192.0.2.200", 1)).status == 200
    assert scrape(xmpp, IPv6Address("TCP", "2001:db8::1", 1)).status == 200
    assert scrape(xmpp, IPv6Address("TCP", "2001:db8::2", 1)).status == 403
    assert scrape(xmpp, IPv4Address("TCP", "198.51.100.1", 1)).status == 403
    assert scrape(xmpp).status == 403, "loopback is no longer listed"


def test_path_is_configurable(make_xmpp) -> None:
    xmpp = make_xmpp(enabled=ENABLED, options={"metrics": {"path": "/internal/prometheus"}})
    assert scrape(xmpp, path="/internal/prometheus").status == 200
    assert scrape(xmpp).status == 404


@pytest.mark.parametrize("bad", [["localhost"], ["10.0.0.0/33"], ["::1", "not an address"]])
def test_a_bad_allowed_entry_stops_start_up(bad) -> None:
    with pytest.raises(ConfigError) as error:
        MemoryServer(enabled=ENABLED, options={"metrics": {"allowed": bad}})
    assert "[plugins.metrics]" in str(error.value)


def test_openmetrics_when_the_scraper_asks_for_it(server) -> None:
    answer = scrape(server, accept="application/openmetrics-text; version=1.0.0,text/plain;q=0.5")
    assert answer.content_type.startswith("application/openmetrics-text")
    families = {f.name: f for f in parse_openmetrics(answer.body)}
    assert "xmppd_stanzas" in families and "xmppd_storage_seconds" in families


# -- what is counted -----------------------------------------------------------------------------------------


def test_sessions_by_transport(server) -> None:
    before = scrape(server).metrics()
    for transport in ("c2s", "bosh", "websocket"):
        assert value(before, "xmppd_sessions", transport=transport) == 0
    alice = server.login("alice@localhost/phone")
    server.login("alice@localhost/laptop", create=False)
    server.adduser("bob@localhost", "secret")
    ws = WSClient(server, secure=True)
    ws.login("bob", "secret", "web")
    after = scrape(server).metrics()
    assert value(after, "xmppd_sessions", transport="c2s") == 2
    assert value(after, "xmppd_sessions", transport="websocket") == 1
    assert value(after, "xmppd_sessions", transport="bosh") == 0
    assert value(after, "xmppd_sessions_started_total", transport="c2s") == 2
    assert value(after, "xmppd_sessions_started_total", transport="websocket") == 1
    assert value(after, "xmppd_connections", transport="c2s") == 2
    unauthenticated = server.connect()
    alice.disconnect()
    later = scrape(server).metrics()
    assert value(later, "xmppd_sessions", transport="c2s") == 1
    assert value(later, "xmppd_sessions_started_total", transport="c2s") == 2, "a counter does not go down"
    assert value(later, "xmppd_connections", transport="c2s") == 2, "bound or not"
    unauthenticated.disconnect()


def test_stanzas_in_and_out_by_kind(server) -> None:
    alice = server.login("alice@localhost/phone", available=True)
    bob = server.login("bob@localhost/desk", available=True)
    start = scrape(server).metrics()

    def moved(families: dict[str, Any], direction: str, kind: str, transport: str = "c2s") -> float:
        labels = {"direction": direction, "kind": kind, "transport": transport}
        return value(families, "xmppd_stanzas_total", **labels) - value(
            start, "xmppd_stanzas_total", **labels
        )

    for i in range(3):
        alice.send(f"<message to='bob@localhost/desk' type='chat' id='m{i}'><body>{i}</body></message>")
    assert len(bob.drain()) == 3
    alice.send("<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    alice.expect("<iq type='result' id='p1'/>")
    bob.send("<presence><show>away</show></presence>")
    alice.drain()
    bob.drain()
    now = scrape(server).metrics()
    assert moved(now, "in", "message") == 3
    assert moved(now, "out", "message") == 3
    assert moved(now, "in", "iq") == 1
    assert moved(now, "out", "iq") == 1
    assert moved(now, "in", "presence") == 1
    assert moved(now, "out", "presence") == 1, "bob's own echo (they are not each other's contacts)"
    assert moved(now, "in", "message", "s2s") == 0


def test_stream_level_elements_are_not_stanzas(make_xmpp) -> None:
    xmpp = make_xmpp(enabled=ENABLED)
    xmpp.login("alice@localhost/phone")  # features, SASL and the bind iq: only the bind iqs count
    families = scrape(xmpp).metrics()
    assert value(families, "xmppd_stanzas_total", direction="in", kind="iq", transport="c2s") == 0
    assert value(families, "xmppd_stanzas_total", direction="out", kind="iq", transport="c2s") == 1


def test_authentication_failures_by_mechanism(server) -> None:
    server.adduser("alice@localhost", "right")
    login_failing(server, "alice", "wrong")
    login_failing(server, "nobody", "wrong")
    client = server.connect()
    client.open_stream("localhost")
    client.send(f"<auth xmlns='{NS_SASL}' mechanism='X-INVENTED'>=</auth>")
    assert etree.QName(client.next()).localname == "failure"
    families = scrape(server).metrics()
    assert (
        value(families, "xmppd_auth_failures_total", mechanism="SCRAM-SHA-256", condition="not-authorized")
        == 2
    )
    # a mechanism the server did not offer is not a label value (the client chooses the text)
    assert value(families, "xmppd_auth_failures_total", mechanism="none", condition="invalid-mechanism") == 1
    assert "X-INVENTED" not in scrape(server).body
    server.login("alice@localhost/phone", "right", create=False)
    again = scrape(server).metrics()
    assert sum(s.value for s in again["xmppd_auth_failures"].samples) == 3, "a success is no failure"


def test_storage_latency_histograms(server) -> None:
    server.login("alice@localhost/phone")  # the account and roster are read
    server.login("bob@localhost/desk").disconnect()
    families = scrape(server).metrics()
    gets = value(families, "xmppd_storage_seconds_count", shape="keyval", operation="get")
    assert gets >= 2
    assert value(families, "xmppd_storage_seconds_bucket", shape="keyval", operation="get", le="+Inf") == gets
    assert value(families, "xmppd_storage_seconds_sum", shape="keyval", operation="get") > 0
    assert value(families, "xmppd_storage_seconds_count", shape="keyval", operation="set") >= 2  # adduser
    # an offline message is appended to an archive; maps are timed like everything else
    alice = server.clients[0]
    alice.send("<message to='bob@localhost' type='chat'><body>later</body></message>")
    storage = server.server.storage
    storage.map_set("localhost", "notes", "alice", "k", {"v": 1})
    storage.map_get("localhost", "notes", "alice", "k")
    storage.archive_query("localhost", "offline", "bob", ArchiveQuery())
    after = scrape(server).metrics()
    assert value(after, "xmppd_storage_seconds_count", shape="archive", operation="append") == 1
    assert value(after, "xmppd_storage_seconds_count", shape="archive", operation="query") >= 1
    assert value(after, "xmppd_storage_seconds_count", shape="map", operation="set") == 1
    assert value(after, "xmppd_storage_seconds_count", shape="map", operation="get") == 1
    buckets = [s for s in after["xmppd_storage_seconds"].samples if s.name.endswith("_bucket")]
    for operation in {(s.labels["shape"], s.labels["operation"]) for s in buckets}:
        counts = [s.value for s in buckets if (s.labels["shape"], s.labels["operation"]) == operation]
        assert counts == sorted(counts), "buckets are cumulative"


def test_storage_errors_are_counted_and_still_fail(server) -> None:
    storage = server.server.storage
    storage.backend.get = lambda *args: fail(StorageError("the database is down"))
    failures = []
    storage.get("localhost", "roster", "alice").addErrback(failures.append)
    assert failures and failures[0].check(StorageError), "the caller still sees the failure"
    families = scrape(server).metrics()
    assert value(families, "xmppd_storage_errors_total", shape="keyval", operation="get") == 1


def test_process_metrics(server) -> None:
    families = scrape(server).metrics()
    assert value(families, "process_resident_memory_bytes") > 0
    assert value(families, "process_virtual_memory_bytes") > 0
    assert value(families, "process_cpu_seconds_total") > 0
    assert value(families, "process_start_time_seconds") > 0
    assert "python_info" in families and "python_gc_collections" in families


def test_s2s_streams_and_stanzas(make_xmpp) -> None:
    xmpp = make_xmpp(
        enabled=ENABLED,
        config={"s2s": {"enabled": True, "tls_required": False, "routes": {REMOTE: REMOTE_ROUTE}}},
    )
    alice = xmpp.login("alice@localhost/phone", available=True)
    families = scrape(xmpp).metrics()
    for direction in ("incoming", "outgoing"):
        for authenticated in ("true", "false"):
            labels = {"direction": direction, "authenticated": authenticated}
            assert value(families, "xmppd_s2s_streams", **labels) == 0
    # incoming, authenticated with dialback, carrying one message to alice
    peer = Peer(xmpp)
    peer.open()
    peer.next()
    assert (
        value(scrape(xmpp).metrics(), "xmppd_s2s_streams", direction="incoming", authenticated="false") == 1
    )
    peer = Peer(xmpp)
    dialback_in(xmpp, peer, valid=True)
    peer.send(f"<message from='bob@{REMOTE}/pc' to='alice@localhost' type='chat'><body>hi</body></message>")
    alice.drain()
    # outgoing: a message waits while the stream is set up, then goes out
    alice.send(f"<message to='bob@{REMOTE}' id='out1' type='chat'><body>hello</body></message>")
    families = scrape(xmpp).metrics()
    assert value(families, "xmppd_s2s_streams", direction="incoming", authenticated="true") == 1
    assert value(families, "xmppd_s2s_streams", direction="incoming", authenticated="false") == 1
    assert value(families, "xmppd_s2s_queued_stanzas") == 1
    assert value(families, "xmppd_stanzas_total", direction="in", transport="s2s", kind="message") == 1
    remote = RemoteEnd(xmpp, connection_attempts(xmpp)[0])
    remote.send(
        f"<?xml version='1.0'?><stream:stream xmlns='{NS_SERVER}' xmlns:stream='{NS_STREAMS}'"
        f" xmlns:db='{NS_DIALBACK}' from='{REMOTE}' to='localhost' id='s1' version='1.0'>"
        f"<stream:features><dialback xmlns='{NS_DIALBACK_FEATURE}'/></stream:features>"
    )
    assert (
        value(scrape(xmpp).metrics(), "xmppd_s2s_streams", direction="outgoing", authenticated="false") == 1
    )
    remote.send(f"<db:result from='{REMOTE}' to='localhost' type='valid'/>")
    families = scrape(xmpp).metrics()
    assert value(families, "xmppd_s2s_streams", direction="outgoing", authenticated="true") == 1
    assert value(families, "xmppd_s2s_streams", direction="outgoing", authenticated="false") == 0
    assert value(families, "xmppd_s2s_queued_stanzas") == 0
    assert value(families, "xmppd_stanzas_total", direction="out", transport="s2s", kind="message") == 1
    # a rejected dialback key is an authentication failure of the peer
    rejected = Peer(xmpp)
    dialback_in(xmpp, rejected, valid=False)
    families = scrape(xmpp).metrics()
    assert value(families, "xmppd_auth_failures_total", mechanism="dialback", condition="not-authorized") == 1


# -- several servers, plugin life cycle ----------------------------------------------------------------------


def test_servers_in_one_process_keep_their_own_metrics(make_xmpp) -> None:
    first = make_xmpp(enabled=ENABLED)
    second = make_xmpp(enabled=ENABLED)
    first.login("alice@localhost/phone")
    first.login("bob@localhost/phone")
    second.login("carol@localhost/phone")
    assert value(scrape(first).metrics(), "xmppd_sessions", transport="c2s") == 2
    assert value(scrape(second).metrics(), "xmppd_sessions", transport="c2s") == 1
    ours = first.server.http_resources["/metrics"].exporter
    assert ours is not second.server.http_resources["/metrics"].exporter
    from prometheus_client import REGISTRY

    assert ours.registry is not REGISTRY
    assert not [n for n in REGISTRY._names_to_collectors if n.startswith("xmppd_")], "nothing global"


def test_several_domains_share_one_exporter(make_xmpp) -> None:
    xmpp = make_xmpp(domains=("a.test", "b.test"), enabled=ENABLED)
    xmpp.login("alice@a.test/phone")
    xmpp.login("bob@b.test/phone")
    assert value(scrape(xmpp).metrics(), "xmppd_sessions", transport="c2s") == 2
    plugins = xmpp.server.plugins
    assert plugins.instance("a.test", "metrics").exporter is plugins.instance("b.test", "metrics").exporter
    plugins.unload("metrics", "a.test")
    assert scrape(xmpp).status == 200, "b.test's instance serves it now"
    assert xmpp.server.storage.observer is not None
    plugins.unload("metrics", "b.test")
    assert scrape(xmpp).status == 404
    assert xmpp.server.storage.observer is None, "storage is no longer timed"
    plugins.load("metrics", "a.test")
    families = scrape(xmpp).metrics()
    assert value(families, "xmppd_sessions", transport="c2s") == 2
    assert value(families, "xmppd_sessions_started_total", transport="c2s") == 2, "the core kept counting"


def test_counting_is_always_on(xmpp) -> None:
    """server.stats counts without the plugin (cheap enough for that); the plugin only reads it."""
    alice = xmpp.login("alice@localhost/phone")
    alice.send("<message to='nobody@localhost' type='chat'><body>x</body></message>")
    stats = xmpp.server.stats
    assert stats.stanzas_in["c2s"]["message"] == 1
    assert stats.sessions_started["c2s"] == 1


def test_the_sample_configuration_documents_the_plugin(tmp_path) -> None:
    """etc/xmppd.toml loads as shipped (metrics off), and with its [plugins.metrics] table uncommented and
    the plugin enabled, a server accepts the documented options."""
    sample = Path(__file__).resolve().parents[2] / "etc" / "xmppd.toml"
    text = sample.read_text()
    shipped = load(str(sample))
    assert "metrics" not in shipped.plugins.enabled and "metrics" not in shipped.plugins.options
    for line in ("[plugins.metrics]", 'path = "/metrics"', 'allowed = ["127.0.0.1", "::1"]'):
        assert f"# {line}\n" in text, line
        text = text.replace(f"# {line}\n", f"{line}\n")
    text = text.replace('    "webadmin",\n]', '    "webadmin", "metrics",\n]')
    path = tmp_path / "xmppd.toml"
    path.write_text(text)
    config = load(str(path))
    assert "metrics" in config.plugins.enabled
    server = XMPPServer(config, reactor=MemoryReactorClock(), storage=MemoryStorage())
    assert server.plugins.options["metrics"] == {"path": "/metrics", "allowed": ["127.0.0.1", "::1"]}


def test_component_stanzas_and_connections(make_xmpp) -> None:
    xmpp = make_xmpp(enabled=ENABLED, config={"components": {"gateway.localhost": {"secret": SECRET}}})
    alice = xmpp.login("alice@localhost/phone")
    gateway = ComponentClient(xmpp)
    gateway.open()
    gateway.handshake()
    assert gateway.next().tag == "handshake"  # a stream-level element, not counted
    alice.send("<message to='user@gateway.localhost' type='chat'><body>to the gateway</body></message>")
    assert gateway.next().tag == "message"
    gateway.send(
        "<message from='user@gateway.localhost' to='alice@localhost/phone'><body>back</body></message>"
    )
    alice.expect("<message from='user@gateway.localhost'/>")
    families = scrape(xmpp).metrics()
    assert value(families, "xmppd_connections", transport="component") == 1
    for direction in ("in", "out"):
        labels = {"direction": direction, "transport": "component"}
        assert value(families, "xmppd_stanzas_total", kind="message", **labels) == 1
        assert value(families, "xmppd_stanzas_total", kind="iq", **labels) == 0
    gateway.disconnect()


def test_timed_storage_forwards_everything_and_times_only_when_observed() -> None:
    backend = MemoryStorage()
    storage = TimedStorage(backend)
    assert storage._data is backend._data, "the backend's own attributes"
    assert storage.start().called
    reports: list[tuple[str, str, float, bool]] = []
    storage.set("h", "s", "u", {"a": 1})
    assert reports == []
    storage.observer = lambda *report: reports.append(report)
    results: list[Any] = []
    storage.get("h", "s", "u").addCallback(results.append)
    storage.archive_append("h", "s", "u", "<x/>", when=1.0, keep=5).addCallback(results.append)
    storage.archive_delete("h", "s", None, before=2.0).addCallback(results.append)
    storage.purge_user("h", "u")
    assert results == [{"a": 1}, "1", 1], "results pass through unchanged"
    assert [(shape, operation, ok) for shape, operation, _, ok in reports] == [
        ("keyval", "get", True),
        ("archive", "append", True),
        ("archive", "delete", True),
        ("user", "purge", True),
    ]
    assert all(seconds >= 0 for _, _, seconds, _ in reports)
    storage.observer = lambda *report: 1 / 0  # a broken observer costs the caller nothing
    storage.get("h", "s", "u").addCallback(results.append)
    assert results[-1] is None
