"""xmppd.check, the checks behind ``xmppdctl check``: configuration, certificate, DNS SRV and listeners.

Certificates come from a throwaway CA (xmppd.testing.ca), DNS from a scripted resolver, time from a Clock.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.names import dns
from twisted.names.error import DNSNameError, DNSServerError

from xmppd import check
from xmppd.check import ERROR, NOTE, OK, WARN, Report, Result
from xmppd.config import ConfigError, load, parse
from xmppd.testing.ca import TestCA
from xmppd.testing.process import write_toml
from xmppd.tls import ensure_self_signed

HANG = object()


def run(coro: Any, clock: Clock | None = None, advance: float = 0) -> Any:
    """The result of a coroutine that finishes at once, or once ``clock`` has moved ``advance`` seconds."""
    found: list[Any] = []
    defer.ensureDeferred(coro).addBoth(found.append)
    if clock is not None:
        clock.advance(advance)
    (result,) = found
    if hasattr(result, "raiseException"):
        result.raiseException()
    return result


def config_file(tmp_path: Path, data: dict[str, Any]) -> str:
    path = tmp_path / "xmppd.toml"
    write_toml(path, {"server": {"data_dir": str(tmp_path / "data")}, **data})
    return str(path)


def config(tmp_path: Path, **sections: Any) -> Any:
    sections.setdefault("server", {})
    sections["server"].setdefault("data_dir", str(tmp_path / "data"))
    return parse(sections, str(tmp_path / "xmppd.toml"))


def levels(results: list[Result]) -> list[tuple[str, str]]:
    return [(r.level, r.message) for r in results]


@pytest.fixture
def ca(tmp_path) -> TestCA:
    return TestCA(tmp_path / "ca")


# -- the report --------------------------------------------------------------------------------------------


def test_report_lines_summary_json_and_exit_status():
    report = Report()
    report.add([Result(OK, "config", "fine"), Result(NOTE, "dns", "skipped", ("localhost",))])
    assert report.exit_status == 0
    assert report.lines() == [
        "OK     config       fine",
        "NOTE   dns          localhost: skipped",
        "check passed: 0 errors, 0 warnings",
    ]
    report.add([Result(WARN, "dns", "w", ("a.org", "b.org")), Result(ERROR, "certificate", "bad")])
    assert report.exit_status == 1
    assert report.summary() == "check failed: 1 error, 1 warning"
    assert report.results[2].line() == "WARN   dns          a.org, b.org: w"
    data = report.to_dict()
    assert (data["ok"], data["errors"], data["warnings"]) == (False, 1, 1)
    assert data["results"][1] == {
        "level": "note",
        "check": "dns",
        "domains": ["localhost"],
        "message": "skipped",
    }


# -- configuration -----------------------------------------------------------------------------------------


def test_a_config_file_that_does_not_load_is_one_error_with_the_servers_text(tmp_path):
    path = config_file(tmp_path, {"server": {"colour": "blue"}})
    with pytest.raises(ConfigError) as raised:
        load(path)
    loaded, results = check.load_config(path)
    assert loaded is None
    assert levels(results) == [(ERROR, str(raised.value))]
    assert "[server] colour: unknown key" in results[0].message


def test_a_missing_config_file_is_an_error(tmp_path):
    _, results = check.load_config(str(tmp_path / "nope.toml"))
    assert [r.level for r in results] == [ERROR] and "file not found" in results[0].message


@pytest.mark.parametrize(
    ("plugins", "words"),
    [
        ({"enabled": ["disco", "nonesuch"]}, "[plugins] enabled: unknown plugin 'nonesuch'"),
        ({"muc": {"max_rooms": "many"}}, "[plugins.muc] max_rooms: expected int"),
        ({"muc": {"colour": 1}}, "[plugins.muc] colour: unknown option"),
        ({"nonesuch": {"a": 1}}, "[plugins.nonesuch]: no such plugin is installed"),
    ],
)
def test_plugin_problems_are_found_as_the_server_finds_them(tmp_path, plugins, words):
    manager, results = check.check_plugins(config(tmp_path, plugins=plugins))
    assert manager is None
    (result,) = results
    assert result.level == ERROR and result.check == "config" and words in result.message


def test_an_unreadable_s2s_ca_file_is_a_config_error(tmp_path):
    results = check.check_trust_roots(config(tmp_path, s2s={"ca_file": str(tmp_path / "none.pem")}))
    assert [(r.level, r.check) for r in results] == [(ERROR, "config")]
    assert "[s2s] ca_file: cannot read" in results[0].message
    assert check.check_trust_roots(config(tmp_path, s2s={"enabled": False, "ca_file": "/none"})) == []


def test_muc_services_of_each_domain_where_muc_is_enabled(tmp_path):
    def services(**sections: Any) -> dict[str, list[str]]:
        cfg = config(tmp_path, **sections)
        manager, problems = check.check_plugins(cfg)
        assert problems == []
        return check.muc_services(cfg, manager)

    assert services() == {"localhost": ["conference.localhost"]}
    assert services(
        server={"domains": ["a.example", "b.example"]},
        plugins={"muc": {"services": ["chat.{domain}", "rooms.{domain}"]}},
        hosts={"b.example": {"plugins": ["disco", "ping"]}},
    ) == {"a.example": ["chat.a.example", "rooms.a.example"]}
    assert services(plugins={"enabled": ["disco", "ping"]}) == {}
    assert check.muc_services(config(tmp_path), None) == {}


# -- the certificate ---------------------------------------------------------------------------------------


def leaf(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


def test_names_of_the_domain_and_of_its_muc_services(ca):
    cert = leaf(ca.issue("example.org", extra_dns=["conference.example.org"])[0])
    results = check.check_names(cert, "example.org", ["conference.example.org", "rooms.example.org"])
    assert [(r.level, r.domains) for r in results] == [
        (OK, ("example.org",)),
        (OK, ("example.org",)),
        (WARN, ("example.org",)),
    ]
    assert "MUC service rooms.example.org" in results[2].message


def test_a_certificate_for_another_domain_is_an_error_naming_both(ca):
    cert = leaf(ca.issue("other.example")[0])
    (result,) = check.check_names(cert, "example.org")
    assert result.level == ERROR and result.domains == ("example.org",)
    assert "does not name example.org (it names other.example)" in result.message


def test_names_by_wildcard_srv_id_or_xmppaddr_count(ca):
    assert check.check_names(leaf(ca.issue("*.example.org")[0]), "chat.example.org")[0].level == OK
    srv_only = leaf(ca.issue("example.org", dns=False, srv=True)[0])
    assert check.check_names(srv_only, "example.org")[0].level == OK
    addr_only = leaf(ca.issue("example.org", dns=False, xmpp_addr=True)[0])
    assert check.check_names(addr_only, "example.org")[0].level == OK


def test_expiry_ok_warning_under_30_days_and_errors(ca):
    cert = leaf(ca.issue("example.org")[0])
    end, start = cert.not_valid_after_utc, cert.not_valid_before_utc
    domains = ("example.org",)
    ok = check.check_expiry(cert, domains, end - datetime.timedelta(days=200))
    assert ok.level == OK and "200 days left" in ok.message
    soon = check.check_expiry(cert, domains, end - datetime.timedelta(days=10, hours=1))
    assert soon.level == WARN and "in 10 days" in soon.message
    gone = check.check_expiry(cert, domains, end + datetime.timedelta(days=1, hours=1))
    assert gone.level == ERROR and "expired on" in gone.message and "1 day ago" in gone.message
    assert gone.domains == domains
    early = check.check_expiry(cert, domains, start - datetime.timedelta(days=1))
    assert early.level == ERROR and "not valid before" in early.message
    expired = leaf(ca.issue("example.org", expired=True)[0])
    assert check.check_expiry(expired, domains).level == ERROR


def test_self_signed_or_issued_by_a_ca(ca):
    assert check.is_self_signed(leaf(ca.issue("example.org", self_signed=True)[0]))
    assert not check.is_self_signed(leaf(ca.issue("example.org")[0]))
    assert not check.is_self_signed(leaf(ca.issue("example.org", intermediate=True)[0]))


def test_a_good_ca_certificate_from_tls(tmp_path, ca):
    cert, key = ca.issue("example.org", extra_dns=["conference.example.org"])
    cfg = config(
        tmp_path, server={"domains": ["example.org"]}, tls={"certificate": str(cert), "key": str(key)}
    )
    results = check.check_certificate(cfg, {"example.org": ["conference.example.org"]})
    assert [r.level for r in results] == [OK, OK, OK, OK]
    assert f"the key matches the certificate ({cert})" in results[0].message
    assert all(r.check == "certificate" for r in results)


def test_a_key_from_another_certificate_is_the_servers_config_error(tmp_path, ca):
    cert, _ = ca.issue("example.org")
    _, key = ca.issue("example.org", xmpp_addr=True)
    cfg = config(
        tmp_path, server={"domains": ["example.org"]}, tls={"certificate": str(cert), "key": str(key)}
    )
    results = check.check_certificate(cfg)
    assert results[0].level == ERROR and results[0].domains == ("example.org",)
    assert "[tls] key: the key does not belong to the certificate" in results[0].message
    assert [r.level for r in results[1:]] == [OK, OK]  # the certificate itself is still looked at


def test_an_unreadable_certificate_is_one_error(tmp_path):
    cfg = config(tmp_path, tls={"certificate": str(tmp_path / "none.crt"), "key": str(tmp_path / "none.key")})
    (result,) = check.check_certificate(cfg)
    assert result.level == ERROR and "[tls] certificate: cannot read" in result.message


def test_the_self_signed_certificate_in_data_dir(tmp_path):
    cfg = config(tmp_path, server={"domains": ["localhost", "example.org"]})
    (missing,) = check.check_certificate(cfg)
    assert missing.level == WARN and "when it starts" in missing.message
    assert not (tmp_path / "data").exists()  # check makes nothing

    ensure_self_signed(cfg.data_dir, cfg.domains)
    results = check.check_certificate(cfg, {"localhost": ["conference.localhost"]})
    assert [(r.level, r.domains) for r in results] == [
        (OK, ("localhost", "example.org")),  # the key matches
        (OK, ("localhost",)),
        (WARN, ("localhost",)),  # conference.localhost is not named
        (OK, ("example.org",)),
        (OK, ("localhost", "example.org")),  # valid for ten years
        (WARN, ("localhost", "example.org")),  # self-signed
    ]
    assert "self-signed (the one xmppd made)" in results[-1].message

    more = config(tmp_path, server={"domains": ["localhost", "example.org", "example.net"]})
    (stale,) = check.check_certificate(more)
    assert stale.level == WARN and "replaces it" in stale.message


def test_a_self_signed_tls_certificate_is_a_warning(tmp_path, ca):
    cert, key = ca.issue("example.org", self_signed=True)
    cfg = config(
        tmp_path, server={"domains": ["example.org"]}, tls={"certificate": str(cert), "key": str(key)}
    )
    results = check.check_certificate(cfg)
    assert results[-1].level == WARN and "self-signed (no CA issued it)" in results[-1].message


# -- DNS ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "skipped"),
    [
        ("localhost", True),
        ("chat.localhost", True),
        ("xmppd.test", True),
        ("nowhere.invalid", True),
        ("LOCALHOST.", True),
        ("127.0.0.1", True),
        ("[::1]", True),
        ("example.org", False),
        ("testing.example", False),
        ("localhost.example.org", False),
    ],
)
def test_which_domains_are_not_looked_up(domain, skipped):
    assert (check.dns_skip_reason(domain) is not None) is skipped


def srv(target: str, port: int, priority: int = 0, weight: int = 0) -> dns.RRHeader:
    """An SRV answer; "." (the service is not offered) is the root name."""
    name = b"" if target == "." else target
    return dns.RRHeader(type=dns.SRV, payload=dns.Record_SRV(priority, weight, port, name))


class ScriptedResolver:
    """Answers SRV queries from a table: records, an exception, or HANG (never answers); NXDOMAIN else."""

    def __init__(self, answers: dict[str, Any] | None = None) -> None:
        self.answers = answers or {}
        self.asked: list[tuple[str, Any]] = []

    def lookupService(self, name: str, timeout: Any = None) -> defer.Deferred:
        self.asked.append((name, timeout))
        answer = self.answers.get(name, DNSNameError())
        if answer is HANG:
            return defer.Deferred()
        if isinstance(answer, Exception):
            return defer.fail(answer)
        return defer.succeed((answer, [], []))


def test_lookup_srv_outcomes():
    clock = Clock()
    resolver = ScriptedResolver(
        {
            "_xmpp-client._tcp.a.org": [srv("two.a.org", 5223, 10), srv("one.a.org", 5222, 0)],
            "_xmpp-client._tcp.b.org": [srv(".", 0)],
            "_xmpp-client._tcp.c.org": DNSServerError("SERVFAIL"),
            "_xmpp-client._tcp.d.org": [],
            "_xmpp-client._tcp.e.org": HANG,
        }
    )

    def lookup(domain: str) -> Any:
        return run(check.lookup_srv(resolver, f"_xmpp-client._tcp.{domain}", clock, 2), clock, 3.5)

    assert lookup("a.org") == ("found", [("one.a.org", 5222), ("two.a.org", 5223)])
    assert lookup("b.org") == ("not offered", None)
    assert lookup("c.org")[0] == "failed" and "SERVFAIL" in lookup("c.org")[1]
    assert lookup("d.org") == ("none", None)
    assert lookup("nowhere.org") == ("none", None)
    assert lookup("e.org") == ("timeout", None)
    assert resolver.asked[0] == ("_xmpp-client._tcp.a.org", (2,))  # one short try, no retries


def test_check_dns_reports_each_record(tmp_path):
    cfg = config(tmp_path, server={"domains": ["localhost", "example.org"]})
    resolver = ScriptedResolver(
        {
            "_xmpp-client._tcp.example.org": [srv("xmpp.example.org", 5222)],
            "_xmpps-client._tcp.example.org": [srv(".", 0)],
        }
    )
    results = run(check.check_dns(cfg, resolver, Clock()))
    assert [(r.level, r.domains) for r in results] == [
        (NOTE, ("localhost",)),
        (OK, ("example.org",)),
        (NOTE, ("example.org",)),
        (WARN, ("example.org",)),
        (NOTE, ("example.org",)),
    ]
    assert "not looked up" in results[0].message
    assert results[1].message == "_xmpp-client._tcp.example.org -> xmpp.example.org:5222"
    assert "not offered" in results[2].message
    assert results[3].message == (
        "no SRV record _xmpp-server._tcp.example.org (servers fall back to example.org:5269)"
    )
    assert "optional" in results[4].message
    assert [name for name, _ in resolver.asked] == [
        "_xmpp-client._tcp.example.org",
        "_xmpps-client._tcp.example.org",
        "_xmpp-server._tcp.example.org",
        "_xmpps-server._tcp.example.org",
    ]


def test_check_dns_with_direct_tls_and_without_federation(tmp_path):
    cfg = config(
        tmp_path,
        server={"domains": ["example.org"]},
        listen={"c2s_direct_tls": ["tcp:5223"]},
        s2s={"enabled": False},
    )
    resolver = ScriptedResolver()
    results = run(check.check_dns(cfg, resolver, Clock()))
    assert [r.level for r in results] == [NOTE, WARN, WARN]
    assert "[s2s] enabled = false" in results[0].message
    assert "_xmpps-client._tcp.example.org (direct TLS clients (XEP-0368) need it" in results[2].message
    assert [name for name, _ in resolver.asked] == [
        "_xmpp-client._tcp.example.org",
        "_xmpps-client._tcp.example.org",
    ]


def test_no_dns_at_all_is_one_warning_after_a_short_time(tmp_path):
    cfg = config(tmp_path, server={"domains": ["example.org", "example.net", "localhost"]})
    resolver = ScriptedResolver(
        {f"{s.prefix}.{d}": HANG for s in check.srv_services(cfg) for d in cfg.domains}
    )
    clock = Clock()
    found: list[Any] = []
    defer.ensureDeferred(check.check_dns(cfg, resolver, clock, timeout=1.5)).addBoth(found.append)
    clock.advance(2)
    assert not found  # the resolver's own timeout has not run out yet...
    clock.advance(1)  # ...and this one has: every lookup has ended, together
    (results,) = found
    assert [r.level for r in results] == [NOTE, WARN]
    assert results[1].domains == ("example.org", "example.net")
    assert "DNS did not answer within 1.5s" in results[1].message
    assert not clock.getDelayedCalls()


def test_some_lookups_timing_out_are_warnings_of_their_own(tmp_path):
    cfg = config(tmp_path, server={"domains": ["example.org"]}, s2s={"enabled": False})
    resolver = ScriptedResolver({"_xmpp-client._tcp.example.org": HANG})
    clock = Clock()
    results = run(check.check_dns(cfg, resolver, clock, timeout=1), clock, 5)
    assert [(r.level, r.message) for r in results[1:]] == [
        (WARN, "_xmpp-client._tcp.example.org: no answer within 1s"),
        (NOTE, "no SRV record _xmpps-client._tcp.example.org (optional)"),
    ]


# -- listeners ---------------------------------------------------------------------------------------------


def test_listeners_on_loopback_and_beyond(tmp_path):
    cfg = config(
        tmp_path,
        listen={
            "c2s": ["tcp:5222:interface=127.0.0.1", "tcp:5222", "tcp6:5222:interface=\\:\\:1"],
            "s2s": ["tcp:5269:interface=192.0.2.7"],
            "component": ["tcp:5347:interface=0.0.0.0"],
            "http": ["unix:/run/xmppd/http.sock"],
        },
    )
    results = check.check_listeners(cfg, MemoryReactorClock())
    assert levels(results) == [
        (OK, "c2s tcp:5222:interface=127.0.0.1: this machine only"),
        (NOTE, "c2s tcp:5222 listens on every interface"),
        (OK, "c2s tcp6:5222:interface=\\:\\:1: this machine only"),
        (NOTE, "s2s tcp:5269:interface=192.0.2.7 listens on interface 192.0.2.7"),
        (WARN, results[4].message),
        (OK, "http unix:/run/xmppd/http.sock: this machine only"),
    ]
    assert "every interface" in results[4].message and "XEP-0114" in results[4].message


def test_a_bad_listener_is_the_servers_config_error(tmp_path):
    cfg = config(tmp_path, listen={"c2s": ["carrier-pigeon:5222"], "s2s": [], "http": []})
    (result,) = check.check_listeners(cfg, MemoryReactorClock())
    assert (result.level, result.check) == (ERROR, "config")
    assert result.message.startswith(f"{tmp_path / 'xmppd.toml'}: [listen] c2s: bad endpoint description")


# -- everything --------------------------------------------------------------------------------------------


def test_run_checks_on_a_good_configuration(tmp_path, ca):
    cert, key = ca.issue("example.org", extra_dns=["conference.example.org"])
    path = config_file(
        tmp_path,
        {
            "server": {"domains": ["example.org"], "data_dir": str(tmp_path / "data")},
            "tls": {"certificate": str(cert), "key": str(key)},
        },
    )
    resolver = ScriptedResolver(
        {
            f"{prefix}.example.org": [srv("xmpp.example.org", port)]
            for prefix, port in [
                ("_xmpp-client._tcp", 5222),
                ("_xmpps-client._tcp", 5223),
                ("_xmpp-server._tcp", 5269),
                ("_xmpps-server._tcp", 5270),
            ]
        }
    )
    report = run(check.run_checks(path, MemoryReactorClock(), resolver=resolver))
    assert report.config is not None and report.exit_status == 0
    assert {r.level for r in report.results} == {OK}, report.lines()
    assert [r.check for r in report.results] == ["config"] + ["certificate"] * 4 + ["dns"] * 4 + [
        "listeners"
    ] * 3
    assert report.summary() == "check passed: 0 errors, 0 warnings"


def test_run_checks_stops_at_a_config_file_that_does_not_load(tmp_path):
    path = config_file(tmp_path, {"listen": {"c2s": "tcp:5222"}})
    report = run(check.run_checks(path, MemoryReactorClock(), resolver=ScriptedResolver()))
    assert report.config is None and report.exit_status == 1
    assert [(r.level, r.check) for r in report.results] == [(ERROR, "config")]
    assert "[listen] c2s: expected a list" in report.results[0].message


def test_run_checks_lists_each_configuration_problem(tmp_path):
    path = config_file(
        tmp_path,
        {"listen": {"c2s": ["carrier-pigeon:1"]}, "plugins": {"muc": {"max_rooms": 0}}},
    )
    report = run(check.run_checks(path, MemoryReactorClock(), resolver=ScriptedResolver()))
    errors = [r.message for r in report.results if r.level == ERROR]
    assert len(errors) == 2
    assert "[plugins.muc] max_rooms: must be at least 1" in errors[0]
    assert "[listen] c2s: bad endpoint description" in errors[1]
    assert not [r for r in report.results if r.check == "config" and r.level == OK]
    assert any(r.check == "certificate" for r in report.results)  # the other checks still run
