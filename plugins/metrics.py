"""Metrics for Prometheus: ``/metrics`` on the HTTP site, in the Prometheus text format (or OpenMetrics,
when the scraper asks for it), answered only to the addresses in ``allowed`` (403 to everyone else).

Not enabled by default: add "metrics" to ``[plugins] enabled`` and give ``[listen] http`` a listener.

What it serves, computed when scraped (nothing here runs per stanza):

* ``xmppd_sessions{transport}``: bound client sessions (c2s, bosh, websocket), from ``server.sessions``;
* ``xmppd_connections{transport}``: open client and component connections, authenticated or not;
* ``xmppd_sessions_started_total{transport}``: logins since start;
* ``xmppd_stanzas_total{direction, transport, kind}``: stanzas received ("in") and written ("out") on
  client, s2s and component streams, by kind (message, presence, iq), from the core's counters
  (``server.stats``, xmppd.stats);
* ``xmppd_auth_failures_total{mechanism, condition}``: failed authentications (SASL on client streams,
  SASL EXTERNAL and dialback on incoming s2s streams);
* ``xmppd_s2s_streams{direction, authenticated}``: server-to-server streams, incoming and outgoing, from
  ``server.s2s``; ``xmppd_s2s_queued_stanzas``: stanzas waiting for outgoing streams to be ready;
* ``xmppd_storage_seconds{shape, operation}``: a histogram of storage latency (keyval get/set/users, map
  get/set/items, archive append/query/delete/users, user purge), timed by the core's TimedStorage around
  whichever backend is configured, while this plugin is loaded; ``xmppd_storage_errors_total`` counts
  the calls that failed;
* ``process_*`` (memory, CPU, open files, start time; Linux), ``python_gc_*`` and ``python_info`` from
  prometheus_client's own collectors; ``xmppd_info{version}``.

Each server has its own CollectorRegistry (never prometheus_client's global one), so several servers in
one process do not clash. The plugin runs once per domain it is enabled on; the instances share one
exporter per server, and the first one loaded serves the path.
"""

from __future__ import annotations

import ipaddress
import weakref
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from twisted.web.resource import Resource

import xmppd
from xmppd.plugin import Context, Option, Plugin
from xmppd.stats import STANZA_KINDS
from xmppd.storage.timed import OPERATIONS

#: Client transports, always reported (with 0 when none is connected).
CLIENT_TRANSPORTS = ("c2s", "bosh", "websocket")
#: Upper bounds of the storage latency buckets, in seconds (+Inf is added).
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: list[str]) -> list[Network]:
    """``["127.0.0.1", "10.0.0.0/8", "::1"]`` -> networks; ValueError naming a bad entry."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"allowed: {entry!r} is not an IP address or network (CIDR)") from None
    return networks


def address_allowed(host: str | None, networks: list[Network]) -> bool:
    """Whether a client address (as twisted.web reports it) is in one of ``networks``. An IPv4 address
    seen as IPv4-mapped IPv6 (``::ffff:127.0.0.1``, a dual-stack listener) counts as the IPv4 address."""
    if not host:
        return False  # a UNIX socket or an unknown peer
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


class Histogram:
    """Storage latency of one (shape, operation): per-bucket counts and their sum. Observed on the reactor
    thread only (storage Deferreds fire there), so no lock: one bisect and two adds."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # the last is +Inf
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        result, total = [], 0
        for bound, count in zip((*map(str, BUCKETS), "+Inf"), self.counts, strict=True):
            total += count
            result.append((bound, total))
        return result


class ServerCollector:
    """The xmppd_* metrics of one server, computed from its state and counters when scraped."""

    def __init__(self, exporter: Exporter) -> None:
        self.exporter = exporter

    def collect(self) -> Iterator[Metric]:
        server = self.exporter.server
        if server is None:  # the server is gone
            return
        stats = server.stats

        info = GaugeMetricFamily("xmppd_info", "xmppd's version", labels=["version"])
        info.add_metric([xmppd.__version__], 1)
        yield info

        by_kind = Counter(session.kind for session in server.sessions)
        sessions = GaugeMetricFamily("xmppd_sessions", "Bound client sessions", labels=["transport"])
        for transport in (*CLIENT_TRANSPORTS, *sorted(set(by_kind) - set(CLIENT_TRANSPORTS))):
            sessions.add_metric([transport], by_kind.get(transport, 0))
        yield sessions

        open_streams = Counter(getattr(stream, "kind", "other") for stream in list(server.streams))
        connections = GaugeMetricFamily(
            "xmppd_connections",
            "Open client and component connections, authenticated or not",
            labels=["transport"],
        )
        kinds = (*CLIENT_TRANSPORTS, "component")
        for transport in (*kinds, *sorted(set(open_streams) - set(kinds))):
            connections.add_metric([transport], open_streams.get(transport, 0))
        yield connections

        started = CounterMetricFamily(
            "xmppd_sessions_started", "Client sessions bound since start (logins)", labels=["transport"]
        )
        for transport, count in sorted(stats.sessions_started.items()):
            if transport in CLIENT_TRANSPORTS or count:
                started.add_metric([transport], count)
        yield started

        stanzas = CounterMetricFamily(
            "xmppd_stanzas",
            "Stanzas received (in) and written (out) on client, s2s and component streams",
            labels=["direction", "transport", "kind"],
        )
        for direction, table in (("in", stats.stanzas_in), ("out", stats.stanzas_out)):
            for transport, counts in sorted(table.items()):
                for kind in STANZA_KINDS:
                    stanzas.add_metric([direction, transport, kind], counts[kind])
        yield stanzas

        failures = CounterMetricFamily(
            "xmppd_auth_failures",
            "Failed authentications by mechanism and SASL condition",
            labels=["mechanism", "condition"],
        )
        for (mechanism, condition), count in sorted(stats.auth_failures.items()):
            failures.add_metric([mechanism, condition], count)
        yield failures

        yield from self._s2s(server)
        yield from self._storage()

    def _s2s(self, server: Any) -> Iterator[Metric]:
        counts = Counter()
        queued = 0
        manager = server.s2s
        if manager is not None:
            for stream in list(manager.incoming):
                if not stream.closed:
                    counts["incoming", bool(stream.authenticated)] += 1
            for link in list(manager.links.values()):
                queued += len(link.queue)
                stream = link.stream
                if stream is not None and not stream.closed:
                    counts["outgoing", bool(link.is_authenticated)] += 1
        streams = GaugeMetricFamily(
            "xmppd_s2s_streams",
            "Server-to-server streams; authenticated: ready to carry stanzas",
            labels=["direction", "authenticated"],
        )
        for direction in ("incoming", "outgoing"):
            for authenticated in (True, False):
                streams.add_metric(
                    [direction, "true" if authenticated else "false"], counts[direction, authenticated]
                )
        yield streams
        yield GaugeMetricFamily(
            "xmppd_s2s_queued_stanzas", "Stanzas waiting for an outgoing s2s stream to be ready", value=queued
        )

    def _storage(self) -> Iterator[Metric]:
        latency = HistogramMetricFamily(
            "xmppd_storage_seconds",
            "Storage calls, from the call until the result (while the metrics plugin is loaded)",
            labels=["shape", "operation"],
        )
        errors = CounterMetricFamily(
            "xmppd_storage_errors", "Storage calls that failed", labels=["shape", "operation"]
        )
        for (shape, operation), histogram in self.exporter.latency.items():
            latency.add_metric([shape, operation], histogram.cumulative(), histogram.sum)
            errors.add_metric([shape, operation], self.exporter.errors[shape, operation])
        yield latency
        yield errors


class MetricsResource(Resource):
    """``GET /metrics``: the registry, in the format the scraper accepts; 403 to addresses not allowed."""

    isLeaf = True

    def __init__(self, exporter: Exporter) -> None:
        super().__init__()
        self.exporter = exporter

    def render_GET(self, request: Any) -> bytes:
        host = getattr(request.getClientAddress(), "host", None)
        if not address_allowed(host, self.exporter.allowed):
            request.setResponseCode(403)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"403 Forbidden: this address may not read the metrics ([plugins.metrics] allowed)\n"
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")
        encoder, content_type = choose_encoder(accept)
        request.setHeader(b"Content-Type", content_type.encode("latin-1"))
        request.setHeader(b"Cache-Control", b"no-store")
        return encoder(self.exporter.registry)


class Exporter:
    """One server's registry, storage latency and resource, shared by the plugin's instances (one per
    domain) and dropped when the last unloads."""

    _by_server: weakref.WeakKeyDictionary[Any, Exporter] = weakref.WeakKeyDictionary()

    @classmethod
    def acquire(cls, server: Any) -> Exporter:
        exporter = cls._by_server.get(server)
        if exporter is None:
            exporter = cls._by_server[server] = cls(server)
        exporter.users += 1
        return exporter

    def release(self) -> None:
        self.users -= 1
        server = self.server
        if self.users == 0 and server is not None:
            if server.storage.observer == self.observe_storage:
                server.storage.observer = None
            self._by_server.pop(server, None)

    def __init__(self, server: Any) -> None:
        # Weak: the server holds the exporter (its storage's observer), not the other way round, so a
        # server that is dropped without unloading its plugins does not stay in _by_server.
        self._server = weakref.ref(server)
        self.users = 0
        self.allowed: list[Network] = []
        self.latency: dict[tuple[str, str], Histogram] = {key: Histogram() for key in OPERATIONS}
        self.errors: dict[tuple[str, str], int] = dict.fromkeys(OPERATIONS, 0)
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(ServerCollector(self))
        ProcessCollector(registry=self.registry)  # process_*: memory, CPU, fds (Linux /proc)
        PlatformCollector(registry=self.registry)  # python_info
        GCCollector(registry=self.registry)  # python_gc_*
        self.resource = MetricsResource(self)
        server.storage.observer = self.observe_storage

    @property
    def server(self) -> Any:
        return self._server()

    def observe_storage(self, shape: str, operation: str, seconds: float, ok: bool) -> None:
        key = (shape, operation)
        histogram = self.latency.get(key)
        if histogram is None:  # an operation this plugin does not know yet
            histogram = self.latency[key] = Histogram()
            self.errors[key] = 0
        histogram.observe(seconds)
        if not ok:
            self.errors[key] += 1


class Metrics(Plugin):
    """Prometheus metrics at ``path`` on the HTTP site, for the addresses in ``allowed``."""

    name = "metrics"
    options = {
        "path": Option(str, "/metrics", "where the metrics are served on the HTTP site"),
        "allowed": Option(
            list,
            ["127.0.0.1", "::1"],
            "addresses or networks (CIDR) that may read the metrics; others get 403",
            item_type=str,
        ),
    }

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        parse_networks(options["allowed"])

    def setup(self, ctx: Context) -> None:
        self.exporter = Exporter.acquire(ctx.server)
        # Options are server-wide ([plugins.metrics]); the latest loaded instance's apply (a reload).
        self.exporter.allowed = parse_networks(ctx.option("allowed"))
        try:
            ctx.add_http_resource(ctx.option("path"), self.exporter.resource)
        except Exception:
            self.exporter.release()  # teardown is not called when setup fails
            raise

    def teardown(self) -> None:
        self.exporter.release()
