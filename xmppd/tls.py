"""TLS: the server certificate and the pyOpenSSL context used by STARTTLS and direct TLS.

With no certificate configured, a self-signed one naming every served domain is generated into data_dir
on first start and reused afterwards (regenerated only when the domain list changes), so a fresh install
offers TLS at once. TLS 1.2 is the minimum (RFC 7525 / RFC 9325); Twisted's defaults pick modern ciphers.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet import ssl

from xmppd.config import ConfigError

SELF_SIGNED_CERT = "selfsigned.crt"
SELF_SIGNED_KEY = "selfsigned.key"


def _covers(cert_path: Path, domains: list[str]) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    return set(domains) <= set(names.get_values_for_type(x509.DNSName))


def ensure_self_signed(data_dir: Path, domains: list[str]) -> tuple[Path, Path]:
    """Paths of a self-signed certificate and key for ``domains``, generated if missing or stale. It also
    names ``*.<domain>`` for each domain with a dot, so that services on subdomains (the MUC's
    ``conference.example.org``) are covered too (RFC 6125 s6.4.3: the wildcard is one whole label)."""
    cert_path, key_path = data_dir / SELF_SIGNED_CERT, data_dir / SELF_SIGNED_KEY
    names = [*domains, *(f"*.{d}" for d in domains if "." in d)]
    if cert_path.exists() and key_path.exists() and _covers(cert_path, names):
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domains[0])])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def alpn_selector(protocol: bytes) -> Callable[[Any, list[bytes]], Any]:
    """An ALPN select callback answering ``protocol`` ("xmpp-client" / "xmpp-server", XEP-0368 s3) when
    the peer offers it, and declining ALPN otherwise.

    It replaces the callback Twisted installs on every context, which answers b"" when nothing matches;
    pyOpenSSL passes that on as a zero-length selection and OpenSSL aborts the handshake with an
    internal_error alert. Clients and servers that offer ALPN (Prosody offers "xmpp-server" even on
    STARTTLS) then cannot connect at all."""

    def select(connection: Any, offered: list[bytes]) -> Any:
        return protocol if protocol in offered else SSL.NO_OVERLAPPING_PROTOCOLS

    return select


def context_factory(
    cert_path: Path, key_path: Path, config_path: str | None = None
) -> ssl.CertificateOptions:
    """A server TLS context from PEM files (certificate chain first, then intermediates)."""

    def fail(key: str, problem: str) -> ConfigError:
        return ConfigError(
            problem, path=config_path, key=f"[tls] {key}", fix="point it to a readable PEM file"
        )

    try:
        cert_pem = Path(cert_path).read_bytes()
    except OSError as e:
        raise fail("certificate", f"cannot read {cert_path}: {e.strerror}") from None
    try:
        key_pem = Path(key_path).read_bytes()
    except OSError as e:
        raise fail("key", f"cannot read {key_path}: {e.strerror}") from None
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise fail("certificate", f"{cert_path} holds no PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise fail("key", f"{key_path} holds no unencrypted PEM private key") from None
    if chain[0].public_key().public_numbers() != key.public_key().public_numbers():
        raise ConfigError(
            "the key does not belong to the certificate",
            path=config_path,
            key="[tls] key",
            fix="use the private key that matches [tls] certificate",
        )
    options = ssl.CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(key),
        certificate=crypto.X509.from_cryptography(chain[0]),
        extraCertChain=[crypto.X509.from_cryptography(c) for c in chain[1:]],
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )
    # c2s, on STARTTLS and on the XEP-0368 direct TLS port
    options.getContext().set_alpn_select_callback(alpn_selector(b"xmpp-client"))
    return options
