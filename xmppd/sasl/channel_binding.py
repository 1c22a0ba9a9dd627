"""TLS channel binding data for SCRAM-*-PLUS, server side.

Two channel binding types (RFC 5056) are offered:

- ``tls-exporter`` (RFC 9266 s2): 32 octets of exported keying material with the label
  "EXPORTER-Channel-Binding" and an empty context. RFC 9266 s2 allows it only on TLS 1.3 or on
  TLS 1.2 with the extended master secret (RFC 7627); pyOpenSSL cannot tell us whether EMS was
  negotiated, so we offer it on TLS 1.3 only.
- ``tls-server-end-point`` (RFC 5929 s4.1): the hash of the server certificate's DER encoding,
  using the hash of the certificate's signature algorithm, or SHA-256 if that is MD5 or SHA-1.
  It is undefined for signature algorithms without a single hash (e.g. Ed25519, Ed448); such
  certificates get no ``tls-server-end-point``.

``tls-unique`` (RFC 5929 s3) is deliberately absent: it is unsafe without extended master secret and
undefined for TLS 1.3 (RFC 9266 s1).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes

if TYPE_CHECKING:
    from OpenSSL.SSL import Connection

__all__ = ["EXPORTER_LABEL", "EXPORTER_LENGTH", "tls_channel_bindings", "tls_server_end_point"]

#: RFC 9266 s2: label and length of the tls-exporter keying material.
EXPORTER_LABEL = b"EXPORTER-Channel-Binding"
EXPORTER_LENGTH = 32


def tls_server_end_point(certificate: x509.Certificate) -> bytes | None:
    """The RFC 5929 s4.1 ``tls-server-end-point`` data for a server certificate, or None if the
    certificate's signature algorithm does not name one hash function."""
    try:
        algorithm = certificate.signature_hash_algorithm
    except UnsupportedAlgorithm:
        return None
    if algorithm is None:
        return None
    if isinstance(algorithm, hashes.MD5 | hashes.SHA1):
        algorithm = hashes.SHA256()
    return certificate.fingerprint(algorithm)


def tls_channel_bindings(connection: Connection | None) -> dict[str, bytes]:
    """Channel binding data by type name for a server-side pyOpenSSL connection after its handshake.

    Returns ``{}`` when ``connection`` is None (no TLS), so no -PLUS mechanism gets offered.
    """
    if connection is None:
        return {}
    bindings: dict[str, bytes] = {}
    if connection.get_protocol_version_name() == "TLSv1.3":
        bindings["tls-exporter"] = connection.export_keying_material(EXPORTER_LABEL, EXPORTER_LENGTH)
    data = _server_end_point(connection)
    if data is not None:
        bindings["tls-server-end-point"] = data
    return bindings


# The server certificate belongs to the connection's context, which serves every connection (one per
# certificate with SNI): its end-point hash is worked out once per context, not at every STARTTLS.
_END_POINTS: weakref.WeakKeyDictionary[Any, bytes | None] = weakref.WeakKeyDictionary()


def _server_end_point(connection: Connection) -> bytes | None:
    context = connection.get_context()
    try:
        return _END_POINTS[context]
    except (KeyError, TypeError):
        pass
    certificate = connection.get_certificate()
    if certificate is None:
        return None  # none configured on this context yet: not remembered
    if not isinstance(certificate, x509.Certificate):
        certificate = certificate.to_cryptography()
    data = tls_server_end_point(certificate)
    try:
        _END_POINTS[context] = data
    except TypeError:
        pass  # a context that cannot be weakly referenced (a test double): worked out each time
    return data
