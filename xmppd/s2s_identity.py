"""Certificate checks for federation: does a peer's TLS certificate prove it is the domain it claims?

A server-to-server peer is authenticated by its certificate (SASL EXTERNAL, XEP-0178) when two things
hold (RFC 6120 s13.7.2):

* the chain validates to a trusted root: signatures, validity periods, basic constraints and key usage.
  The leaf must allow TLS server or client use (XMPP peers present the same certificate in both roles,
  so either extended key usage is accepted, and a certificate without the extension is allowed for any use);
* the leaf names the domain (RFC 6120 s13.7.1.2, RFC 6125 s6 / RFC 9525 s6.3), by any one of:
  a DNS-ID (subjectAltName dNSName, with a ``*`` wildcard allowed as the whole leftmost label only), an
  SRV-ID (``_xmpp-server.<domain>``, otherName id-on-dnsSRV) or an XmppAddr (otherName id-on-xmppAddr,
  a UTF8String holding the bare domain). The subject common name is not used (RFC 9525 dropped CN-IDs).

A certificate that fails either check is no error: :func:`verify_peer` says why, and the s2s code falls back
to dialback (XEP-0220) or refuses the stream as configured. Load the trust roots once
(:func:`load_trust_roots`) and pass them to every check.
"""

from __future__ import annotations

import datetime
import re
import ssl
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from service_identity.exceptions import CertificateError
from service_identity.hazmat import DNS_ID, SRV_ID, DNSPattern, SRVPattern

from xmppd.config import ConfigError

try:  # cryptography >= 45: path building with replaceable extension policies
    from cryptography.x509 import verification as _verification

    _HAVE_POLICIES = hasattr(_verification, "ExtensionPolicy")
except ImportError:  # pragma: no cover - cryptography < 42
    _verification = None  # type: ignore[assignment]
    _HAVE_POLICIES = False

ID_ON_XMPPADDR = x509.ObjectIdentifier("1.3.6.1.5.5.7.8.5")  # RFC 6120 s13.7.1.4
ID_ON_DNSSRV = x509.ObjectIdentifier("1.3.6.1.5.5.7.8.7")  # RFC 4985
SRV_SERVICE = "_xmpp-server"  # RFC 6120 s13.7.1.2.1: the service name for server-to-server streams

# Where Debian/Ubuntu, Fedora/RHEL, Alpine, SUSE and OpenSSL builds keep the system trust store.
SYSTEM_CA_FILES = (
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
    "/etc/ssl/ca-bundle.pem",
)

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)
_TLS_USAGES = {
    ExtendedKeyUsageOID.SERVER_AUTH,
    ExtendedKeyUsageOID.CLIENT_AUTH,
    ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
}


# -- trust roots -------------------------------------------------------------------------------------------


def _pem_certificates(data: bytes) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle that parses; one malformed entry does not spoil the rest."""
    certs = []
    with warnings.catch_warnings():  # old roots with non-positive serials: cryptography warns, we accept
        warnings.simplefilter("ignore")
        for block in _PEM_CERT.findall(data):
            try:
                certs.append(x509.load_pem_x509_certificate(block))
            except ValueError:
                continue
    return certs


def _system_ca_file() -> str | None:
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile, *SYSTEM_CA_FILES):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def _system_ca_dir_certs() -> list[x509.Certificate]:
    """The hashed-directory form of the system store (``/etc/ssl/certs/*.0``), when there is no bundle."""
    paths = ssl.get_default_verify_paths()
    directory = paths.capath or paths.openssl_capath
    certs: list[x509.Certificate] = []
    if directory and Path(directory).is_dir():
        for entry in sorted(Path(directory).iterdir()):
            if re.fullmatch(r"[0-9a-f]{8}\.\d+", entry.name):
                try:
                    certs.extend(_pem_certificates(entry.read_bytes()))
                except OSError:
                    continue
    return certs


def load_trust_roots(
    ca_file: str | None = None, *, config_path: str | None = None
) -> list[x509.Certificate] | None:
    """The CA certificates s2s peers are checked against.

    ``ca_file`` (``[s2s] ca_file``) is a PEM bundle; a certificate in it that is not a CA (a peer's
    self-signed certificate) is trusted as exactly that certificate. Without it, the system trust store
    is used. Returns None when no system store can be found (then no peer certificate verifies).
    Raises :class:`ConfigError` when ``ca_file`` is given but unreadable or holds no certificate.
    """
    if ca_file:
        try:
            data = Path(ca_file).read_bytes()
        except OSError as e:
            raise ConfigError(
                f"cannot read {ca_file}: {e.strerror}",
                path=config_path,
                key="[s2s] ca_file",
                fix='point it to a readable PEM file, or set ca_file = "" for the system trust store',
            ) from None
        certs = _pem_certificates(data)
        if not certs:
            raise ConfigError(
                f"{ca_file} holds no PEM certificate",
                path=config_path,
                key="[s2s] ca_file",
                fix="use a PEM bundle of CA certificates (-----BEGIN CERTIFICATE-----)",
            )
        return certs
    system = _system_ca_file()
    if system:
        try:
            certs = _pem_certificates(Path(system).read_bytes())
        except OSError:
            certs = []
        if certs:
            return certs
    return _system_ca_dir_certs() or None


# -- chain validation --------------------------------------------------------------------------------------


def _check_tls_usage(policy: Any, cert: x509.Certificate, eku: x509.ExtendedKeyUsage | None) -> None:
    """Extended key usage, when present, must allow TLS server or client authentication (either role)."""
    if eku is not None and not _TLS_USAGES.intersection(eku):
        raise ValueError("extended key usage allows neither serverAuth nor clientAuth")


def _verify_chain_cryptography(
    leaf: x509.Certificate, intermediates: list[x509.Certificate], roots: list[x509.Certificate], now
) -> None:
    """Path building and RFC 5280 checks with cryptography's verifier (raises on failure).

    The client verifier validates a chain without a name, which XmppAddr- and SRV-ID-only certificates
    need (the server verifier insists on a matching dNSName). Its fixed clientAuth EKU requirement is
    replaced by :func:`_check_tls_usage`, and the CA/Browser Forum's demand for an authority key
    identifier is dropped (private XMPP CAs often omit it; it only helps path building).
    """
    v = _verification
    agnostic = v.Criticality.AGNOSTIC
    ee = (
        v.ExtensionPolicy.webpki_defaults_ee()
        .may_be_present(x509.ExtendedKeyUsage, agnostic, _check_tls_usage)
        .may_be_present(x509.AuthorityKeyIdentifier, v.Criticality.NON_CRITICAL, None)
    )
    ca = (
        v.ExtensionPolicy.webpki_defaults_ca()
        .may_be_present(x509.ExtendedKeyUsage, agnostic, _check_tls_usage)
        .may_be_present(x509.AuthorityKeyIdentifier, v.Criticality.NON_CRITICAL, None)
    )
    builder = v.PolicyBuilder().store(v.Store(roots)).extension_policies(ca_policy=ca, ee_policy=ee)
    if now is not None:
        builder = builder.time(now)
    builder.build_client_verifier().verify(leaf, intermediates)


def _verify_chain_openssl(
    leaf: x509.Certificate, intermediates: list[x509.Certificate], roots: list[x509.Certificate], now
) -> None:
    """The same with OpenSSL's verifier, for cryptography releases without extension policies."""
    from OpenSSL import crypto

    store = crypto.X509Store()
    for root in roots:
        store.add_cert(crypto.X509.from_cryptography(root))
    if now is not None:
        store.set_time(now)
    chain = [crypto.X509.from_cryptography(c) for c in intermediates]
    try:
        crypto.X509StoreContext(store, crypto.X509.from_cryptography(leaf), chain).verify_certificate()
    except crypto.X509StoreContextError as e:
        raise ValueError(str(e)) from None
    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = None
    _check_tls_usage(None, leaf, eku)


def _valid_at(cert: x509.Certificate, now: datetime.datetime) -> bool:
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def _verify_chain(
    chain: list[x509.Certificate], roots: list[x509.Certificate], now: datetime.datetime | None
) -> None:
    leaf, intermediates = chain[0], chain[1:]
    if any(leaf == root for root in roots):
        # A pinned certificate (a peer's self-signed one placed in ca_file): trusted as itself.
        when = now or datetime.datetime.now(datetime.UTC)
        if not _valid_at(leaf, when):
            raise ValueError("certificate is not valid at this time (expired or not yet valid)")
        return
    if _HAVE_POLICIES:
        _verify_chain_cryptography(leaf, intermediates, roots, now)
    else:
        _verify_chain_openssl(leaf, intermediates, roots, now)


# -- identity ----------------------------------------------------------------------------------------------


def _der_string(data: bytes, tag: int) -> str | None:
    """The text of a DER-encoded string of one universal ``tag`` (UTF8String 0x0C, IA5String 0x16)."""
    if len(data) < 2 or data[0] != tag:
        return None
    length, offset = data[1], 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or len(data) < 2 + count:
            return None
        length = int.from_bytes(data[2 : 2 + count], "big")
        offset = 2 + count
    if offset + length != len(data):
        return None
    try:
        return data[offset:].decode("utf-8" if tag == 0x0C else "ascii")
    except UnicodeDecodeError:
        return None


def presented_identifiers(cert: x509.Certificate) -> dict[str, list[str]]:
    """The identifiers a certificate presents: ``{"dns": [...], "srv": [...], "xmpp": [...]}``.

    Undecodable entries are left out. For logs and error messages, and for :func:`names_domain`.
    """
    result: dict[str, list[str]] = {"dns": [], "srv": [], "xmpp": []}
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return result
    result["dns"] = [n for n in san.get_values_for_type(x509.DNSName) if isinstance(n, str)]
    for other in san.get_values_for_type(x509.OtherName):
        if other.type_id == ID_ON_DNSSRV:
            text = _der_string(other.value, 0x16)
            if text:
                result["srv"].append(text)
        elif other.type_id == ID_ON_XMPPADDR:
            text = _der_string(other.value, 0x0C)
            if text:
                result["xmpp"].append(text)
    return result


def _prep(domain: str) -> str | None:
    from xmppd.jid import JIDError, prep_domain

    try:
        return prep_domain(domain)
    except (JIDError, UnicodeError, ValueError):
        return None


def _matches_any(reference: Any, patterns: Iterable[Any]) -> bool:
    return any(reference.verify(p) for p in patterns)


def names_domain(cert: x509.Certificate, domain: str) -> bool:
    """Whether the certificate names ``domain`` by a DNS-ID, an SRV-ID or an XmppAddr (RFC 6120 s13.7.1.2)."""
    ids = presented_identifiers(cert)
    domain = domain.strip().rstrip(".")
    dns_patterns, srv_patterns = [], []
    for name in ids["dns"]:
        try:
            dns_patterns.append(DNSPattern.from_bytes(name.encode("utf-8")))
        except CertificateError:  # an IP address, a misplaced wildcard: names nothing
            continue
    for name in ids["srv"]:
        try:
            srv_patterns.append(SRVPattern.from_bytes(name.encode("ascii")))
        except (CertificateError, UnicodeError, IndexError):
            continue
    try:
        if _matches_any(DNS_ID(domain), dns_patterns):
            return True
        if _matches_any(SRV_ID(f"{SRV_SERVICE}.{domain}"), srv_patterns):
            return True
    except (ValueError, UnicodeError, ImportError):
        pass  # not a DNS name (an IP literal, say): only an XmppAddr can name it
    prepared = _prep(domain)
    if prepared is None:
        return False
    # RFC 6120 s13.7.1.4: a server certificate's XmppAddr is a domain JID (no localpart, no resource).
    return any("@" not in a and "/" not in a and _prep(a) == prepared for a in ids["xmpp"])


def verify_peer(
    chain: Sequence[x509.Certificate] | None,
    domain: str,
    roots: Sequence[x509.Certificate] | None,
    *,
    now: datetime.datetime | None = None,
) -> tuple[bool, str]:
    """Whether ``chain`` (leaf first, as the peer sent it) authenticates ``domain``.

    Returns ``(True, "")`` or ``(False, reason)``, the reason fit for a log line or a stream error's
    text. Never raises for a bad, garbled or missing certificate. ``now`` fixes the validation time
    (tests); the default is the current time.
    """
    try:
        certs = list(chain or [])
        if not certs:
            return False, "no certificate presented"
        if not all(isinstance(c, x509.Certificate) for c in certs):
            return False, "the certificate chain holds something that is not a certificate"
        if not roots:
            return False, "no trusted CA certificates are configured"
        if not isinstance(domain, str) or not domain.strip(".").strip():
            return False, "no domain to check the certificate against"
        if now is not None and now.tzinfo is None:
            now = now.replace(tzinfo=datetime.UTC)
        try:
            _verify_chain(certs, list(roots), now)
        except Exception as e:  # VerificationError, ValueError from a policy callback, OpenSSL errors
            return False, f"certificate chain does not verify: {_chain_reason(e, certs[0])}"
        if not names_domain(certs[0], domain):
            ids = presented_identifiers(certs[0])
            shown = ", ".join(ids["dns"] + ids["srv"] + ids["xmpp"]) or "no XMPP identifiers"
            return False, f"certificate is not valid for {domain} (it names {shown})"
        return True, ""
    except Exception as e:  # a malformed certificate can make any accessor raise
        return False, f"certificate could not be checked: {_short(e)}"


_EXTENSION_NAMES = {
    "2.5.29.14": "subjectKeyIdentifier",
    "2.5.29.15": "keyUsage",
    "2.5.29.17": "subjectAltName",
    "2.5.29.19": "basicConstraints",
    "2.5.29.35": "authorityKeyIdentifier",
    "2.5.29.37": "extendedKeyUsage",
}


def _chain_reason(error: Exception, leaf: x509.Certificate) -> str:
    """cryptography's and OpenSSL's verification errors, made readable for a log line."""
    text = _short(error).removeprefix("validation failed: ")
    text = text.removeprefix("candidates exhausted: ")
    if "no interior errors" in text or "unable to get local issuer" in text:
        try:
            if leaf.issuer == leaf.subject:
                return "self-signed certificate"
            issuer = leaf.issuer.rfc4514_string()
        except ValueError:
            issuer = "?"
        return f"issued by a CA that is not trusted ({issuer})"
    if "not valid at validation time" in text:
        return "certificate has expired or is not yet valid"
    return re.sub(r"\b2\.5\.29\.\d+\b", lambda m: _EXTENSION_NAMES.get(m.group(0), m.group(0)), text)


def _short(error: Exception) -> str:
    text = str(error) or type(error).__name__
    return re.sub(r"\s*\(encountered processing <Certificate\(.*$", "", text)


def peer_chain(tls_connection: Any) -> list[x509.Certificate]:
    """The peer's certificates, leaf first, from a pyOpenSSL ``Connection`` (empty when it sent none).

    On the server side OpenSSL's chain omits the leaf (a client's certificate comes alone from
    ``get_peer_certificate``); on the client side it starts with it. Both are normalised here.
    """
    try:
        chain = tls_connection.get_peer_cert_chain() or []
    except Exception:
        chain = []
    try:
        leaf = tls_connection.get_peer_certificate()
    except Exception:
        leaf = None
    certs: list[x509.Certificate] = []
    for item in ([leaf] if leaf is not None else []) + list(chain):
        try:
            cert = item.to_cryptography() if hasattr(item, "to_cryptography") else item
        except Exception:
            continue
        if isinstance(cert, x509.Certificate) and cert not in certs:
            certs.append(cert)
    return certs
