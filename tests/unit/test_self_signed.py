"""The self-signed certificate xmppd makes when no [tls] files are configured."""

from __future__ import annotations

from cryptography import x509

from xmppd.s2s_identity import names_domain
from xmppd.tls import ensure_self_signed


def load(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_it_names_the_domains_and_their_service_subdomains(tmp_path):
    cert_path, _ = ensure_self_signed(tmp_path, ["example.org", "localhost"])
    cert = load(cert_path)
    for name in ("example.org", "conference.example.org", "localhost"):
        assert names_domain(cert, name), name
    assert not names_domain(cert, "a.b.example.org")  # a wildcard is one label (RFC 6125 s6.4.3)


def test_it_is_reused_while_it_covers_the_domains_and_remade_when_not(tmp_path):
    first, _ = ensure_self_signed(tmp_path, ["example.org"])
    serial = load(first).serial_number
    ensure_self_signed(tmp_path, ["example.org"])
    assert load(first).serial_number == serial
    ensure_self_signed(tmp_path, ["example.org", "example.net"])
    assert load(first).serial_number != serial
    assert names_domain(load(first), "conference.example.net")
