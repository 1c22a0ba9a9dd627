"""A throwaway certificate authority for federation tests.

Federation needs certificates that a peer can verify: ``TestCA`` makes a CA in a directory and issues
leaf certificates from it, each naming a domain with exactly the identifier types a test asks for
(RFC 6120 s13.7.1.2: DNS-ID, SRV-ID ``_xmpp-server.<domain>``, XmppAddr), or broken on purpose
(expired, self-signed, from an intermediate CA). Keys are EC P-256, so issuing is fast.

Typical use, with pytest's ``tmp_path``::

    ca = TestCA(tmp_path / "ca")
    cert, key = ca.issue("xmppd.test")                    # DNS-ID only
    cert2, key2 = ca.issue("prosody.test", xmpp_addr=True)
    xmppd = ServerProcess(tmp_path / "x", {
        "server": {"domains": ["xmppd.test"]},
        "tls": {"certificate": str(cert), "key": str(key)},
        "s2s": {"ca_file": str(ca.ca_path), "require_valid_certificates": True},
    })

Every issued certificate file holds the leaf first, then any intermediate (what a server sends); the
CA certificate itself is only in :attr:`TestCA.ca_path`. Files are named after the domain and the
options, so issuing the same thing twice overwrites the first.
"""

from __future__ import annotations

import datetime
import os
import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ID_ON_XMPPADDR = x509.ObjectIdentifier("1.3.6.1.5.5.7.8.5")
ID_ON_DNSSRV = x509.ObjectIdentifier("1.3.6.1.5.5.7.8.7")

_KEY_USAGE = dict(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


def _der(tag: int, content: bytes) -> bytes:
    """A DER TLV (short or long length form)."""
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    length = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content


def xmpp_addr_san(jid: str) -> x509.OtherName:
    """An id-on-xmppAddr subjectAltName (RFC 6120 s13.7.1.4): the JID as a UTF8String."""
    return x509.OtherName(ID_ON_XMPPADDR, _der(0x0C, jid.encode("utf-8")))


def srv_id_san(name: str) -> x509.OtherName:
    """An id-on-dnsSRV subjectAltName (RFC 4985), e.g. ``_xmpp-server.example.org``: an IA5String."""
    return x509.OtherName(ID_ON_DNSSRV, _der(0x16, name.encode("ascii")))


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


class TestCA:
    """A CA (EC P-256, CA:true) kept in ``directory``; created on first use, reused afterwards.

    ``name`` is the CA's common name. Two TestCAs in different directories are unrelated: a
    certificate from one does not verify against the other (the "unknown CA" case).
    """

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path | str, name: str = "xmppd test CA") -> None:
        self.directory = Path(directory)
        self.name = name
        self._key: ec.EllipticCurvePrivateKey | None = None
        self._cert: x509.Certificate | None = None
        self._intermediate: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None

    # -- the CA ----------------------------------------------------------------------------------------

    @property
    def ca_path(self) -> Path:
        """The CA certificate (PEM): the file a peer trusts (``[s2s] ca_file``, Prosody's ``cafile``)."""
        self._ensure()
        return self.directory / "ca.crt"

    @property
    def certificate(self) -> x509.Certificate:
        """The CA certificate."""
        self._ensure()
        assert self._cert is not None
        return self._cert

    @property
    def private_key(self) -> ec.EllipticCurvePrivateKey:
        """The CA's key, for tests that build unusual certificates themselves."""
        self._ensure()
        assert self._key is not None
        return self._key

    def _ensure(self) -> None:
        if self._cert is not None:
            return
        cert_path, key_path = self.directory / "ca.crt", self.directory / "ca.key"
        if cert_path.exists() and key_path.exists():
            self._cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            self._key = key
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._cert = self._ca_certificate(self.name, self._key, None, None)
        _write_key(key_path, self._key)
        cert_path.write_bytes(_pem(self._cert))

    @staticmethod
    def _ca_certificate(
        name: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: x509.Certificate | None,
        issuer_key: ec.EllipticCurvePrivateKey | None,
    ) -> x509.Certificate:
        now = datetime.datetime.now(datetime.UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        signer_key = issuer_key or key
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer.subject if issuer else subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(**{**_KEY_USAGE, "key_cert_sign": True, "crl_sign": True}), critical=True
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        )
        if issuer is not None:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()), critical=False
            )
        return builder.sign(signer_key, hashes.SHA256())

    def _intermediate_ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        if self._intermediate is None:
            self._ensure()
            assert self._key is not None and self._cert is not None
            key = ec.generate_private_key(ec.SECP256R1())
            cert = self._ca_certificate(f"{self.name} intermediate", key, self._cert, self._key)
            self._intermediate = (cert, key)
        return self._intermediate

    # -- leaves ----------------------------------------------------------------------------------------

    def issue(
        self,
        domain: str,
        *,
        dns: bool = True,
        xmpp_addr: bool | str = False,
        srv: bool | str = False,
        expired: bool = False,
        self_signed: bool = False,
        intermediate: bool = False,
        extra_dns: tuple[str, ...] | list[str] = (),
    ) -> tuple[Path, Path]:
        """Write a leaf certificate and key for ``domain``; returns ``(cert_path, key_path)`` (PEM).

        The identifiers are chosen with ``dns`` (a dNSName ``domain``; pass ``"*.example.org"`` as the
        domain for a wildcard), ``srv`` (SRV-ID ``_xmpp-server.<domain>``, or the given SRV-ID text) and
        ``xmpp_addr`` (XmppAddr ``<domain>``, or the given JID); ``extra_dns`` adds more dNSNames. The
        subject CN is always ``domain`` (and names nothing to a careful verifier). ``expired`` makes one
        that ended yesterday; ``self_signed`` one signed by its own key instead of the CA;
        ``intermediate`` one issued by an intermediate CA, whose certificate follows the leaf in the file.
        Every leaf allows serverAuth and clientAuth and has digitalSignature key usage, as XMPP servers
        present the same certificate in both roles.
        """
        self._ensure()
        assert self._key is not None and self._cert is not None
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        if expired:
            not_before, not_after = now - datetime.timedelta(days=30), now - datetime.timedelta(days=1)
        else:
            not_before, not_after = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=825)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
        names: list[x509.GeneralName] = []
        if dns:
            names.append(x509.DNSName(domain))
        names.extend(x509.DNSName(n) for n in extra_dns)
        bare = domain.removeprefix("*.")
        if srv:
            names.append(srv_id_san(srv if isinstance(srv, str) else f"_xmpp-server.{bare}"))
        if xmpp_addr:
            names.append(xmpp_addr_san(xmpp_addr if isinstance(xmpp_addr, str) else bare))
        chain_extra: list[x509.Certificate] = []
        if self_signed:
            issuer_name, signer_key = subject, key
        elif intermediate:
            inter_cert, signer_key = self._intermediate_ca()
            issuer_name = inter_cert.subject
            chain_extra.append(inter_cert)
        else:
            issuer_name, signer_key = self._cert.subject, self._key
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(**{**_KEY_USAGE, "digital_signature": True}), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()), critical=False
            )
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(signer_key, hashes.SHA256())

        flags = [
            flag
            for flag, on in (
                ("dns", dns),
                ("srv", srv is True),
                ("srv-" + str(srv), isinstance(srv, str)),
                ("xmppaddr", xmpp_addr is True),
                ("xmppaddr-" + str(xmpp_addr), isinstance(xmpp_addr, str)),
                ("expired", expired),
                ("selfsigned", self_signed),
                ("intermediate", intermediate),
                ("also-" + "+".join(extra_dns), bool(extra_dns)),
            )
            if on
        ]
        stem = re.sub(r"[^A-Za-z0-9.+-]", "_", "-".join([domain, *flags]))
        cert_path, key_path = self.directory / f"{stem}.crt", self.directory / f"{stem}.key"
        _write_key(key_path, key)
        cert_path.write_bytes(_pem(cert, *chain_extra))
        return cert_path, key_path
