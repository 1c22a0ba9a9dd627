"""Peer certificate checks for federation (xmppd.s2s_identity): RFC 6120 s13.7.2, RFC 6125/9525, XEP-0178.

Every check runs on both chain validators: cryptography's (cryptography >= 45) and OpenSSL's fallback.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL, crypto

from xmppd import s2s_identity
from xmppd.config import ConfigError
from xmppd.s2s_identity import load_trust_roots, names_domain, peer_chain, presented_identifiers, verify_peer
from xmppd.testing.ca import TestCA

UTC = datetime.UTC


@pytest.fixture(params=["cryptography", "openssl"])
def backend(request, monkeypatch) -> str:
    if request.param == "cryptography" and not s2s_identity._HAVE_POLICIES:
        pytest.skip("this cryptography has no x509.verification.ExtensionPolicy (needs 45+)")
    monkeypatch.setattr(s2s_identity, "_HAVE_POLICIES", request.param == "cryptography")
    return request.param


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def roots(ca) -> list[x509.Certificate]:
    result = load_trust_roots(str(ca.ca_path))
    assert result is not None
    return result


def chain(cert_path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(Path(cert_path).read_bytes())


def issued(ca: TestCA, domain: str, **options) -> list[x509.Certificate]:
    return chain(ca.issue(domain, **options)[0])


def custom_leaf(ca: TestCA, names: list[x509.GeneralName], *, eku=None, cn="example.org") -> x509.Certificate:
    """A leaf from the test CA with exactly these subjectAltNames and extended key usages."""
    now = datetime.datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.private_key.public_key()), critical=False
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return builder.sign(ca.private_key, hashes.SHA256())


# -- identities (RFC 6120 s13.7.1.2) -----------------------------------------------------------------------


def test_dns_id_names_the_domain(ca, roots, backend):
    assert verify_peer(issued(ca, "example.org"), "example.org", roots) == (True, "")


def test_dns_id_matches_case_insensitively_and_ignores_a_trailing_dot(ca, roots, backend):
    assert verify_peer(issued(ca, "example.org"), "Example.ORG.", roots) == (True, "")


def test_wildcard_covers_exactly_one_leftmost_label(ca, roots, backend):
    certs = issued(ca, "*.example.net")
    assert verify_peer(certs, "chat.example.net", roots) == (True, "")
    ok, reason = verify_peer(certs, "example.net", roots)
    assert not ok and "not valid for example.net" in reason and "*.example.net" in reason
    assert not verify_peer(certs, "a.chat.example.net", roots)[0]


def test_srv_id_alone_names_the_domain(ca, roots, backend):
    certs = issued(ca, "srv.example", dns=False, srv=True)
    assert presented_identifiers(certs[0]) == {"dns": [], "srv": ["_xmpp-server.srv.example"], "xmpp": []}
    assert verify_peer(certs, "srv.example", roots) == (True, "")


def test_srv_id_of_the_client_service_does_not_authenticate_a_server(ca, roots, backend):
    certs = issued(ca, "c.example", dns=False, srv="_xmpp-client.c.example")
    assert not verify_peer(certs, "c.example", roots)[0]


def test_xmpp_addr_alone_names_the_domain(ca, roots, backend):
    certs = issued(ca, "addr.example", dns=False, xmpp_addr=True)
    assert presented_identifiers(certs[0])["xmpp"] == ["addr.example"]
    assert verify_peer(certs, "addr.example", roots) == (True, "")


def test_xmpp_addr_of_a_user_does_not_name_the_server(ca, roots, backend):
    certs = issued(ca, "u.example", dns=False, xmpp_addr="admin@u.example")
    assert not verify_peer(certs, "u.example", roots)[0]


def test_internationalized_domain_matches_its_a_label_and_u_label(ca, roots, backend):
    dns = issued(ca, "xn--bcher-kva.example")
    assert verify_peer(dns, "bücher.example", roots) == (True, "")
    addr = issued(ca, "idn.example", dns=False, xmpp_addr="Bücher.example")
    assert verify_peer(addr, "xn--bcher-kva.example", roots) == (True, "")


def test_wrong_domain_is_refused_with_what_the_certificate_names(ca, roots, backend):
    ok, reason = verify_peer(issued(ca, "example.org", xmpp_addr=True), "evil.example", roots)
    assert not ok
    assert reason == "certificate is not valid for evil.example (it names example.org, example.org)"


def test_common_name_alone_names_nothing(ca, roots, backend):
    """RFC 9525 removed CN-IDs; a certificate without subjectAltName does not authenticate a domain."""
    ok, reason = verify_peer(issued(ca, "cn.example", dns=False), "cn.example", roots)
    assert not ok and reason


def test_unusable_alt_names_are_skipped_not_fatal(ca, roots, backend):
    import ipaddress

    names = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.DNSName("f*o.example.org"),  # a partial wildcard: names nothing
        x509.OtherName(s2s_identity.ID_ON_XMPPADDR, b"\x04\x03abc"),  # not a UTF8String
        x509.OtherName(s2s_identity.ID_ON_DNSSRV, b"\x16\x05nodot"),
        x509.DNSName("example.org"),
    ]
    leaf = custom_leaf(ca, names, eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    assert verify_peer([leaf], "example.org", roots) == (True, "")
    assert not verify_peer([leaf], "foo.example.org", roots)[0]


# -- chains ------------------------------------------------------------------------------------------------


def test_expired_certificate_is_refused(ca, roots, backend):
    ok, reason = verify_peer(issued(ca, "old.example", expired=True), "old.example", roots)
    assert not ok and "does not verify" in reason


def test_validation_time_can_be_given(ca, roots, backend):
    certs = issued(ca, "example.org")
    later = datetime.datetime.now(UTC) + datetime.timedelta(days=900)
    assert not verify_peer(certs, "example.org", roots, now=later)[0]
    soon = datetime.datetime.now() + datetime.timedelta(days=1)  # naive: taken as UTC
    assert verify_peer(certs, "example.org", roots, now=soon) == (True, "")


def test_self_signed_certificate_is_not_trusted(ca, roots, backend):
    ok, reason = verify_peer(issued(ca, "self.example", self_signed=True), "self.example", roots)
    assert not ok and "does not verify" in reason


def test_self_signed_certificate_in_the_ca_file_is_trusted_as_itself(ca, tmp_path, backend):
    cert_path, _ = ca.issue("pinned.example", self_signed=True)
    pinned = load_trust_roots(str(cert_path))
    assert verify_peer(chain(cert_path), "pinned.example", pinned) == (True, "")
    assert not verify_peer(chain(cert_path), "other.example", pinned)[0]
    expired, _ = ca.issue("pinned.example", self_signed=True, expired=True)
    assert not verify_peer(chain(expired), "pinned.example", load_trust_roots(str(expired)))[0]


def test_certificate_from_an_unknown_ca_is_refused(tmp_path, roots, backend):
    stranger = TestCA(tmp_path / "other", name="someone else's CA")
    ok, reason = verify_peer(issued(stranger, "example.org"), "example.org", roots)
    assert not ok
    assert "does not verify" in reason


def test_chain_through_an_intermediate(ca, roots, backend):
    certs = issued(ca, "deep.example", intermediate=True)
    assert len(certs) == 2
    assert verify_peer(certs, "deep.example", roots) == (True, "")
    assert not verify_peer(certs[:1], "deep.example", roots)[0]  # intermediate not sent


def test_extended_key_usage_must_allow_tls(ca, roots, backend):
    name = [x509.DNSName("example.org")]
    for eku in ([ExtendedKeyUsageOID.SERVER_AUTH], [ExtendedKeyUsageOID.CLIENT_AUTH], None):
        assert verify_peer([custom_leaf(ca, name, eku=eku)], "example.org", roots) == (True, ""), eku
    mail_only = custom_leaf(ca, name, eku=[ExtendedKeyUsageOID.EMAIL_PROTECTION])
    ok, reason = verify_peer([mail_only], "example.org", roots)
    assert not ok and "does not verify" in reason


def test_a_ca_certificate_cannot_pose_as_a_leaf_signer(ca, roots, backend):
    """A leaf (CA:false) that signs another certificate does not make a chain."""
    leaf_path, key_path = ca.issue("middle.example")
    middle = chain(leaf_path)[0]
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    now = datetime.datetime.now(UTC)
    forged = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "victim.example")]))
        .issuer_name(middle.subject)
        .public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
        .serial_number(7)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("victim.example")]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    assert not verify_peer([forged, middle], "victim.example", roots)[0]


# -- never raises ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "chain_value",
    [None, [], [b"not a certificate"], ["PEM?"], [object()]],
)
def test_garbage_chains_are_refused_not_raised(chain_value, roots, backend):
    ok, reason = verify_peer(chain_value, "example.org", roots)
    assert not ok and reason


@pytest.mark.parametrize("domain", ["", ".", "[::1]", "127.0.0.1", "a..b", "x" * 2000, "bad domain", None])
def test_odd_domains_are_refused_not_raised(ca, roots, domain, backend):
    ok, reason = verify_peer(issued(ca, "example.org"), domain, roots)
    assert not ok and reason


def test_no_trust_roots_refuses_everything(ca, backend):
    for roots in (None, []):
        assert verify_peer(issued(ca, "example.org"), "example.org", roots) == (
            False,
            "no trusted CA certificates are configured",
        )


def test_names_domain_on_its_own(ca):
    cert = issued(ca, "example.org", srv=True, xmpp_addr=True)[0]
    assert names_domain(cert, "example.org")
    assert not names_domain(cert, "example.com")


# -- trust roots -------------------------------------------------------------------------------------------


def test_trust_roots_from_a_bundle_skip_broken_entries(ca, tmp_path):
    bundle = tmp_path / "bundle.pem"
    broken = b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"
    bundle.write_bytes(broken + ca.ca_path.read_bytes())
    assert load_trust_roots(str(bundle)) == [ca.certificate]


def test_unreadable_or_empty_ca_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"\[s2s\] ca_file: cannot read"):
        load_trust_roots(str(tmp_path / "missing.pem"))
    empty = tmp_path / "empty.pem"
    empty.write_text("nothing here\n")
    with pytest.raises(ConfigError, match="holds no PEM certificate"):
        load_trust_roots(str(empty), config_path="/etc/xmppd.toml")


def test_system_trust_store(monkeypatch):
    roots = load_trust_roots("")
    if roots is None:
        pytest.skip("this machine has no system CA store")
    assert all(isinstance(c, x509.Certificate) for c in roots)
    assert len(roots) > 10


# -- peer_chain --------------------------------------------------------------------------------------------


def _handshake(ca: TestCA, server_cert: Path, server_key: Path, client_cert=None) -> tuple:
    """A TLS handshake between two pyOpenSSL connections over memory BIOs."""
    server_ctx = SSL.Context(SSL.TLS_METHOD)
    server_ctx.use_certificate_chain_file(str(server_cert))
    server_ctx.use_privatekey_file(str(server_key))
    server_ctx.load_verify_locations(str(ca.ca_path))
    server_ctx.set_verify(SSL.VERIFY_PEER, lambda *args: True)
    client_ctx = SSL.Context(SSL.TLS_METHOD)
    client_ctx.set_verify(SSL.VERIFY_PEER, lambda *args: True)
    if client_cert:
        client_ctx.use_certificate_chain_file(str(client_cert[0]))
        client_ctx.use_privatekey_file(str(client_cert[1]))
    server, client = SSL.Connection(server_ctx, None), SSL.Connection(client_ctx, None)
    server.set_accept_state()
    client.set_connect_state()
    for _ in range(20):
        for conn in (client, server):
            try:
                conn.do_handshake()
            except SSL.WantReadError:
                pass
        for a, b in ((client, server), (server, client)):
            try:
                b.bio_write(a.bio_read(65536))
            except SSL.WantReadError:
                pass
    return server, client


def test_peer_chain_from_both_ends_of_a_tls_connection(ca, roots):
    server_cert, server_key = ca.issue("srv.example", intermediate=True)
    client_cert = ca.issue("cli.example", intermediate=True)
    server, client = _handshake(ca, server_cert, server_key, client_cert)
    seen_by_client = peer_chain(client)
    assert [c.subject for c in seen_by_client] == [c.subject for c in chain(server_cert)]
    assert verify_peer(seen_by_client, "srv.example", roots) == (True, "")
    seen_by_server = peer_chain(server)
    assert seen_by_server[0].subject.rfc4514_string() == "CN=cli.example"
    assert verify_peer(seen_by_server, "cli.example", roots) == (True, "")


def test_peer_chain_without_a_certificate(ca):
    server_cert, server_key = ca.issue("srv.example")
    server, _ = _handshake(ca, server_cert, server_key)
    assert peer_chain(server) == []

    class Broken:
        def get_peer_cert_chain(self):
            raise SSL.Error("no")

        def get_peer_certificate(self):
            return crypto.X509()  # empty: converts, but names nothing

    assert all(isinstance(c, x509.Certificate) for c in peer_chain(Broken()))
