"""The PLAIN SASL mechanism, server side (RFC 4616), as sans-IO parsing.

PLAIN sends the password in the clear inside the (TLS-protected) stream; the stream layer decides
whether to offer it (RFC 6120 s6.4.1 / s13.8). Password checking against stored SCRAM
credentials is :func:`xmppd.sasl.scram.verify_password`.
"""

from __future__ import annotations

from xmppd.sasl.errors import SASLError

__all__ = ["MAX_FIELD_OCTETS", "parse_plain"]

#: Longest field we accept. RFC 4616 s2 requires accepting at least 255 octets per field.
MAX_FIELD_OCTETS = 1024


def parse_plain(message: bytes) -> tuple[str | None, str, str]:
    """Split a PLAIN initial response into ``(authzid, authcid, password)``.

    RFC 4616 s2: ``message = [authzid] UTF8NUL authcid UTF8NUL passwd``, each field UTF-8
    without NUL, authcid and passwd non-empty. An empty authzid is returned as ``None``.
    The strings are returned as sent; preparing the authcid as a JID localpart (RFC 7622) and the
    password (RFC 8265 OpaqueString, done by ``verify_password``) is up to the caller.

    Raises :class:`SASLError` ``malformed-request`` for a wrong number of fields, an empty
    authcid or password, an over-long field or invalid UTF-8.
    """
    if not isinstance(message, bytes | bytearray | memoryview):
        raise SASLError("malformed-request", "PLAIN message must be bytes")
    fields = bytes(message).split(b"\x00")
    if len(fields) != 3:
        raise SASLError("malformed-request", "PLAIN message must have exactly three NUL-separated fields")
    raw_authzid, raw_authcid, raw_password = fields
    if not raw_authcid:
        raise SASLError("malformed-request", "empty authentication identity")
    if not raw_password:
        raise SASLError("malformed-request", "empty password")
    if any(len(f) > MAX_FIELD_OCTETS for f in fields):
        raise SASLError("malformed-request", "PLAIN field too long")
    try:
        authzid = raw_authzid.decode("utf-8") if raw_authzid else None
        authcid = raw_authcid.decode("utf-8")
        password = raw_password.decode("utf-8")
    except UnicodeDecodeError:
        raise SASLError("malformed-request", "PLAIN fields must be UTF-8") from None
    return authzid, authcid, password
