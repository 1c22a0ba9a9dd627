"""``xmppdctl check``: is this server set up right? Like ``prosodyctl check``, it looks at

* the configuration: the file loads and is valid, plugins and their options included (each problem is the
  ConfigError line the server itself would stop with);
* the certificate xmppd would use (``[tls]`` files, or the self-signed one in data_dir): that it names every
  served domain and the MUC service domains, its expiry, that the key belongs to it, whether it is
  self-signed;
* DNS: the SRV records clients and servers use to find each domain (RFC 6120 s3.2, XEP-0368);
* listeners: which ones are reachable beyond loopback.

It reads files and asks DNS, and changes nothing (the self-signed certificate is made by the server when it
starts, not here), so it works whether or not the server runs. Each finding is a :class:`Result`; a
:class:`Report` collects them, prints them and gives the exit status (1 if any error).
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString

from xmppd.config import Config, ConfigError, load
from xmppd.s2s_identity import names_domain, presented_identifiers

OK, NOTE, WARN, ERROR = "ok", "note", "warn", "error"
LEVELS = (OK, NOTE, WARN, ERROR)
EXPIRY_WARNING_DAYS = 30
DNS_TIMEOUT = 2.0  # seconds per SRV query; a machine without DNS must not make check hang
#: Names that public DNS never holds (RFC 6761 s6.2-6.4, RFC 2606): no point asking for SRV records.
RESERVED_NAMES = ("localhost", "test", "invalid")


@dataclass(frozen=True)
class Result:
    """One finding: its level (ok, note, warn, error), which check made it, what it says, and the served
    domains it is about (none for server-wide findings)."""

    level: str
    check: str
    message: str
    domains: tuple[str, ...] = ()

    def line(self) -> str:
        """``LEVEL  check  domain: message``, the readable form."""
        where = f"{', '.join(self.domains)}: " if self.domains else ""
        return f"{self.level.upper():<5}  {self.check:<11}  {where}{self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "check": self.check,
            "domains": list(self.domains),
            "message": self.message,
        }


@dataclass
class Report:
    """The results of every check, in order, and the configuration they read (None if it did not load)."""

    results: list[Result] = field(default_factory=list)
    config: Config | None = None

    def add(self, results: Iterable[Result]) -> None:
        self.results.extend(results)

    def count(self, level: str) -> int:
        return sum(1 for r in self.results if r.level == level)

    @property
    def exit_status(self) -> int:
        """1 when any check found an error, else 0 (warnings do not fail)."""
        return 1 if self.count(ERROR) else 0

    def summary(self) -> str:
        errors, warnings = self.count(ERROR), self.count(WARN)
        counts = f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}"
        return f"check failed: {counts}" if errors else f"check passed: {counts}"

    def lines(self) -> list[str]:
        return [r.line() for r in self.results] + [self.summary()]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.exit_status == 0,
            "errors": self.count(ERROR),
            "warnings": self.count(WARN),
            "results": [r.to_dict() for r in self.results],
        }


# -- configuration -----------------------------------------------------------------------------------------


def load_config(path: str | None) -> tuple[Config | None, list[Result]]:
    """The configuration, or None and the error that stops the server from reading it."""
    try:
        return load(path), []
    except ConfigError as e:
        return None, [Result(ERROR, "config", str(e))]


class _Served:
    """What PluginManager asks of a server: the served domains."""

    def __init__(self, domains: Iterable[str]) -> None:
        self.hosts = dict.fromkeys(domains)


def check_plugins(config: Config) -> tuple[Any, list[Result]]:
    """Discover the plugins and validate ``[plugins]`` and ``[hosts]`` as the server does at start. Returns
    the configured PluginManager (None on error) and the problem found, if any."""
    from xmppd.plugin import PluginManager

    manager = PluginManager(_Served(config.domains))  # type: ignore[arg-type]
    try:
        manager.configure(config)
    except ConfigError as e:
        return None, [Result(ERROR, "config", str(e))]
    return manager, []


def check_trust_roots(config: Config) -> list[Result]:
    """``[s2s] ca_file`` is readable and holds certificates (the server loads it at start)."""
    from xmppd.s2s_identity import load_trust_roots

    if not config.get("s2s", "enabled"):
        return []
    try:
        roots = load_trust_roots(config.get("s2s", "ca_file") or None, config_path=config.path)
    except ConfigError as e:
        return [Result(ERROR, "config", str(e))]
    if roots is None and config.get("s2s", "require_valid_certificates"):
        return [
            Result(
                WARN,
                "config",
                "[s2s] require_valid_certificates is on but no system trust store was found: no peer's "
                "certificate will verify; set [s2s] ca_file",
            )
        ]
    return []


def muc_services(config: Config, plugins: Any) -> dict[str, list[str]]:
    """Served domain -> its MUC service domains (``[plugins.muc] services``), for domains where the muc
    plugin is enabled."""
    if plugins is None or "muc" not in plugins.options:
        return {}
    from xmppd.plugins.muc import service_domain

    result = {}
    for domain in config.domains:
        if "muc" in plugins.resolve(config.plugins_for(domain), config, domain):
            result[domain] = [service_domain(t, domain) for t in plugins.options["muc"]["services"]]
    return result


# -- the certificate ---------------------------------------------------------------------------------------


def certificate_files(config: Config) -> tuple[Path, Path, bool]:
    """The certificate and key the server uses: ``[tls]``'s, or the self-signed pair in data_dir (then the
    third value is True)."""
    from xmppd.tls import SELF_SIGNED_CERT, SELF_SIGNED_KEY

    tls = config.sections["tls"]
    if tls["certificate"]:
        return Path(tls["certificate"]), Path(tls["key"]), False
    return config.data_dir / SELF_SIGNED_CERT, config.data_dir / SELF_SIGNED_KEY, True


def _named(cert: x509.Certificate) -> str:
    ids = presented_identifiers(cert)
    return ", ".join(ids["dns"] + ids["srv"] + ids["xmpp"]) or "no XMPP identifier"


def check_names(cert: x509.Certificate, domain: str, services: Iterable[str] = ()) -> list[Result]:
    """Whether ``cert`` names ``domain`` (an error if not: clients and servers reject it) and each MUC
    service domain of it (a warning: remote servers cannot authenticate the service by certificate, so
    their users may not reach its rooms)."""
    if names_domain(cert, domain):
        results = [Result(OK, "certificate", "the certificate names it", (domain,))]
    else:
        results = [
            Result(
                ERROR,
                "certificate",
                f"the certificate does not name {domain} (it names {_named(cert)}); clients and servers "
                "will refuse it",
                (domain,),
            )
        ]
    for service in services:
        if names_domain(cert, service):
            results.append(
                Result(OK, "certificate", f"the certificate names the MUC service {service}", (domain,))
            )
        else:
            results.append(
                Result(
                    WARN,
                    "certificate",
                    f"the certificate does not name the MUC service {service}; other servers cannot "
                    "authenticate it by certificate (add it to the certificate)",
                    (domain,),
                )
            )
    return results


def check_expiry(
    cert: x509.Certificate, domains: tuple[str, ...], now: datetime.datetime | None = None
) -> Result:
    """An error if ``cert`` has expired or is not valid yet, a warning under 30 days before it expires."""
    now = now or datetime.datetime.now(datetime.UTC)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    day = end.strftime("%Y-%m-%d %H:%M UTC")
    if end <= now:
        return Result(
            ERROR, "certificate", f"the certificate expired on {day} ({_days(now - end)} ago)", domains
        )
    if start > now:
        return Result(
            ERROR,
            "certificate",
            f"the certificate is not valid before {start.strftime('%Y-%m-%d %H:%M UTC')}",
            domains,
        )
    if (end - now).days < EXPIRY_WARNING_DAYS:
        return Result(
            WARN, "certificate", f"the certificate expires on {day}, in {_days(end - now)}: renew it", domains
        )
    return Result(
        OK, "certificate", f"the certificate is valid until {day} ({_days(end - now)} left)", domains
    )


def _days(delta: datetime.timedelta) -> str:
    return "1 day" if delta.days == 1 else f"{delta.days} days"


def is_self_signed(cert: x509.Certificate) -> bool:
    """Whether ``cert`` is its own issuer (no CA vouches for it)."""
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except Exception:  # InvalidSignature, or a key type it cannot check: a CA's name reused
        return False
    return True


def check_certificate(
    config: Config, services: dict[str, list[str]] | None = None, now: datetime.datetime | None = None
) -> list[Result]:
    """The certificate the server would present for every served domain: readable, the key belongs to it
    (the server's own check, with its ConfigError text), the names, the expiry, self-signed or not."""
    from xmppd.tls import _covers, context_factory  # _covers: the server's test for remaking its own

    domains = tuple(config.domains)
    services = services or {}
    cert_path, key_path, generated = certificate_files(config)
    if generated:
        if not (cert_path.exists() and key_path.exists()):
            return [
                Result(
                    WARN,
                    "certificate",
                    f"no [tls] certificate and none made yet: xmppd makes a self-signed one in {cert_path} "
                    "when it starts; set [tls] certificate and key for one that clients trust",
                    domains,
                )
            ]
        if not _covers(cert_path, list(domains)):
            return [
                Result(
                    WARN,
                    "certificate",
                    f"the self-signed {cert_path} does not name every served domain; xmppd replaces it when "
                    "it next starts",
                    domains,
                )
            ]
    results = []
    try:
        context_factory(cert_path, key_path, config.path)
    except ConfigError as e:
        results.append(Result(ERROR, "certificate", str(e), domains))
    else:
        results.append(Result(OK, "certificate", f"the key matches the certificate ({cert_path})", domains))
    try:
        leaf = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
    except (OSError, ValueError):
        return results  # unreadable: the error above says so
    for domain in domains:
        results.extend(check_names(leaf, domain, services.get(domain, ())))
    results.append(check_expiry(leaf, domains, now))
    if is_self_signed(leaf):
        how = "the one xmppd made" if generated else "no CA issued it"
        results.append(
            Result(
                WARN,
                "certificate",
                f"the certificate is self-signed ({how}): clients must be told to trust it and servers that "
                "check certificates will not federate; use one from a CA (e.g. Let's Encrypt) in [tls]",
                domains,
            )
        )
    return results


# -- DNS ---------------------------------------------------------------------------------------------------


def dns_skip_reason(domain: str) -> str | None:
    """Why SRV records of ``domain`` are not worth looking up (a reserved name or an IP address), or None."""
    name = domain.rstrip(".").lower()
    labels = name.split(".")
    if labels[-1] in RESERVED_NAMES:
        return f"{name} is a reserved name, never in public DNS (RFC 6761)"
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return None
    return "an IP address has no SRV records"


@dataclass(frozen=True)
class Service:
    """An SRV service to look up, and what its absence means."""

    prefix: str
    what: str
    required: bool  # missing: a warning when True, a note when False


def srv_services(config: Config) -> list[Service]:
    """The SRV records that matter for this configuration: clients always (_xmpps-client required when a
    direct TLS port is configured), servers when federation is on (RFC 6120 s3.2.1, XEP-0368 s3)."""
    services = [
        Service("_xmpp-client._tcp", "clients", True),
        Service(
            "_xmpps-client._tcp",
            "direct TLS clients (XEP-0368)",
            bool(config.get("listen", "c2s_direct_tls")),
        ),
    ]
    if config.get("s2s", "enabled"):
        services += [
            Service("_xmpp-server._tcp", "servers", True),
            Service("_xmpps-server._tcp", "direct TLS servers (XEP-0368)", False),
        ]
    return services


async def lookup_srv(resolver: Any, name: str, clock: Any, timeout: float = DNS_TIMEOUT) -> tuple[str, Any]:
    """Ask for ``name``'s SRV records, giving up after ``timeout`` seconds. Returns ``("found",
    [(target, port), ...])`` in priority order, ``("none", None)``, ``("not offered", None)`` (a lone "."
    target, RFC 2782), ``("timeout", None)`` or ``("failed", reason)``."""
    from twisted.names import dns
    from twisted.names.error import DNSNameError

    try:
        query = name.encode("idna").decode("ascii")
    except UnicodeError:
        return "failed", "not a valid DNS name"
    d = defer.maybeDeferred(resolver.lookupService, query, timeout=(timeout,))
    d.addTimeout(timeout + 1, clock)  # the resolver's own timeout, or this one
    try:
        answers, _, _ = await d
    except DNSNameError:
        return "none", None
    except (TimeoutError, defer.TimeoutError, defer.CancelledError):
        return "timeout", None
    except Exception as e:  # refused, server failure, no UDP socket, ...
        return "failed", f"{type(e).__name__}: {e}".rstrip(": ")
    records = sorted((a.payload for a in answers if a.type == dns.SRV), key=lambda r: (r.priority, -r.weight))
    if not records:
        return "none", None
    targets = [(str(r.target).rstrip("."), r.port) for r in records]
    if all(not host for host, _ in targets):
        return "not offered", None
    return "found", [(host, port) for host, port in targets if host]


async def check_dns(config: Config, resolver: Any, clock: Any, timeout: float = DNS_TIMEOUT) -> list[Result]:
    """The SRV records of every served domain, looked up at once. Reserved names and IP addresses are
    skipped with a note; when no lookup got an answer in time, one warning says DNS did not answer."""
    services = srv_services(config)
    results: list[Result] = []
    asked: list[tuple[str, Service, Any]] = []
    for domain in config.domains:
        reason = dns_skip_reason(domain)
        if reason is not None:
            results.append(Result(NOTE, "dns", f"SRV records not looked up: {reason}", (domain,)))
            continue
        if not config.get("s2s", "enabled"):
            results.append(
                Result(NOTE, "dns", "_xmpp-server records not looked up: [s2s] enabled = false", (domain,))
            )
        for service in services:
            d = defer.ensureDeferred(lookup_srv(resolver, f"{service.prefix}.{domain}", clock, timeout))
            asked.append((domain, service, d))
    if not asked:
        return results
    answers = await defer.gatherResults([d for _, _, d in asked])
    if all(status == "timeout" for status, _ in answers):
        domains = tuple(dict.fromkeys(domain for domain, _, _ in asked))
        return results + [
            Result(
                WARN,
                "dns",
                f"DNS did not answer within {timeout:g}s (no DNS server reachable?): SRV records not checked",
                domains,
            )
        ]
    for (domain, service, _), (status, detail) in zip(asked, answers, strict=True):
        results.append(_srv_result(domain, service, status, detail, timeout))
    return results


def _srv_result(domain: str, service: Service, status: str, detail: Any, timeout: float) -> Result:
    name = f"{service.prefix}.{domain}"
    if status == "found":
        targets = ", ".join(f"{host}:{port}" for host, port in detail)
        return Result(OK, "dns", f"{name} -> {targets}", (domain,))
    if status == "not offered":
        return Result(NOTE, "dns", f"{name} says the service is not offered (target '.')", (domain,))
    if status == "timeout":
        return Result(WARN, "dns", f"{name}: no answer within {timeout:g}s", (domain,))
    if status == "failed":
        return Result(WARN, "dns", f"{name}: lookup failed ({detail})", (domain,))
    if service.prefix.startswith("_xmpps"):
        impact = f"{service.what} need it to find the port" if service.required else "optional"
    else:  # RFC 6120 s3.2.2: without SRV records, the domain itself on the default port
        impact = f"{service.what} fall back to {domain}:{5222 if 'client' in service.prefix else 5269}"
    return Result(WARN if service.required else NOTE, "dns", f"no SRV record {name} ({impact})", (domain,))


def default_resolver(reactor: Any) -> Any:
    """A twisted.names resolver reading /etc/resolv.conf (127.0.0.1 when there is none)."""
    from twisted.names import client

    return client.Resolver(resolv="/etc/resolv.conf", reactor=reactor)


# -- listeners ---------------------------------------------------------------------------------------------


def listener_scope(endpoint: Any) -> str | None:
    """Where a listening endpoint is reachable from: "loopback", "local" (a UNIX socket), "everywhere"
    (every interface) or the interface address; None when it cannot be told (e.g. systemd sockets)."""
    from twisted.internet.endpoints import UNIXServerEndpoint

    if isinstance(endpoint, UNIXServerEndpoint):
        return "local"
    interface = getattr(endpoint, "_interface", None)  # TCP and SSL endpoints keep it there
    if interface is None:
        return None
    if interface in ("", "0.0.0.0", "::"):
        return "everywhere"
    try:
        return "loopback" if ipaddress.ip_address(interface).is_loopback else interface
    except ValueError:
        return interface


def check_listeners(config: Config, reactor: Any) -> list[Result]:
    """Every ``[listen]`` endpoint parses (an error with the server's text if not), and which ones are
    reachable beyond loopback (a note; a warning for components, whose secret handshake is not encrypted)."""
    results = []
    for kind, descriptions in config.sections["listen"].items():
        if not isinstance(descriptions, list):
            continue  # control: a UNIX socket path
        for desc in descriptions:
            try:
                endpoint = serverFromString(reactor, desc)
            except (ValueError, KeyError, TypeError) as e:
                error = ConfigError(
                    f"bad endpoint description {desc!r} ({e})",
                    path=config.path,
                    key=f"[listen] {kind}",
                    fix='use a Twisted endpoint like "tcp:5222:interface=127.0.0.1"',
                )
                results.append(Result(ERROR, "config", str(error)))
                continue
            scope = listener_scope(endpoint)
            if scope in ("loopback", "local"):
                results.append(Result(OK, "listeners", f"{kind} {desc}: this machine only"))
            elif scope is None:
                results.append(
                    Result(NOTE, "listeners", f"{kind} {desc}: cannot tell which interfaces it uses")
                )
            else:
                where = "every interface" if scope == "everywhere" else f"interface {scope}"
                if kind == "component":
                    results.append(
                        Result(
                            WARN,
                            "listeners",
                            f"{kind} {desc} listens on {where}: external components send their secret "
                            "handshake unencrypted (XEP-0114); keep it on loopback or a private network",
                        )
                    )
                else:
                    results.append(Result(NOTE, "listeners", f"{kind} {desc} listens on {where}"))
    return results


# -- all of it ---------------------------------------------------------------------------------------------


async def run_checks(
    config_path: str | None,
    reactor: Any,
    *,
    resolver: Any = None,
    now: datetime.datetime | None = None,
    dns_timeout: float = DNS_TIMEOUT,
) -> Report:
    """Every check for the configuration at ``config_path`` (None: the embedded defaults). ``resolver``
    answers SRV queries (default: the system's DNS servers); ``reactor`` runs the DNS timeouts."""
    report = Report()
    config, problems = load_config(config_path)
    report.add(problems)
    if config is None:
        return report
    report.config = config
    plugins, problems = check_plugins(config)
    listeners = check_listeners(config, reactor)
    problems += check_trust_roots(config) + [r for r in listeners if r.check == "config"]
    if problems:
        report.add(problems)
    else:
        report.add([Result(OK, "config", f"{config.path or '(embedded defaults)'} loads and is valid")])
    report.add(check_certificate(config, muc_services(config, plugins), now))
    report.add(await check_dns(config, resolver or default_resolver(reactor), reactor, dns_timeout))
    report.add(r for r in listeners if r.check != "config")
    return report
