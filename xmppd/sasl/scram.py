"""SCRAM SASL mechanisms, server side, as sans-IO code.

Implements SCRAM-SHA-1 (RFC 5802) and SCRAM-SHA-256 (RFC 7677), with and without channel binding
(the ``-PLUS`` variants, RFC 5802 s6) over ``tls-exporter`` (RFC 9266) or ``tls-server-end-point``
(RFC 5929 s4). Passwords are prepared with the PRECIS OpaqueString profile (RFC 8265 s4.2), which
replaces SASLprep (RFC 4013) for XMPP (RFC 6120 s6.3.8 as updated by RFC 7622/8265).

The server stores only :class:`ScramCredentials` (salt, iteration count, StoredKey, ServerKey;
RFC 5802 s3), never the password. :class:`ScramServer` runs one exchange; the stream layer moves its
messages in and out of ``<auth/>``, ``<challenge/>``, ``<response/>`` and ``<success/>`` and turns
:class:`~xmppd.sasl.errors.SASLError` into ``<failure/>`` (RFC 6120 s6.4).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from precis_i18n import get_profile

from xmppd.sasl.errors import SASLError

__all__ = [
    "DEFAULT_ITERATIONS",
    "HASHES",
    "MAX_MESSAGE_OCTETS",
    "ScramCredentials",
    "ScramServer",
    "derive_credentials",
    "mechanism_names",
    "normalize_password",
    "parse_mechanism",
    "verify_password",
]

#: Hash functions by the name used in the mechanism name (RFC 5802 s4, RFC 7677 s2).
HASHES: dict[str, Callable[..., Any]] = {"SHA-1": hashlib.sha1, "SHA-256": hashlib.sha256}

#: Iteration count for new credentials and for the fake exchange; RFC 7677 s4 asks for at least 4096.
DEFAULT_ITERATIONS = 4096

#: Longest SCRAM client message accepted; real ones are a few hundred octets.
MAX_MESSAGE_OCTETS = 8192

_SALT_OCTETS = 16
_MECHANISM_ORDER = ("SHA-256", "SHA-1")  # strongest first
_PLUS = "-PLUS"

# Attribute letters RFC 5802 s5.1 defines; none of them may appear as an extension attribute.
_DEFINED_ATTRIBUTES = frozenset("acimnprsv")
# printable = %x21-2B / %x2D-7E (RFC 5802 s7): the characters a nonce may use.
_NONCE_RE = re.compile(r"[\x21-\x2b\x2d-\x7e]+")
# cb-name = 1*(ALPHA / DIGIT / "." / "-") (RFC 5802 s7).
_CB_NAME_RE = re.compile(r"[A-Za-z0-9.\-]+")
# attr-val = ALPHA "=" value; value = 1*value-char (any but "," and NUL) (RFC 5802 s7).
_EXTENSION_RE = re.compile(r"([A-Za-z])=[^\x00,]+")
_POSITIVE_RE = re.compile(r"[1-9][0-9]*")

_OPAQUE_STRING = get_profile("OpaqueString")
# The JID localpart profile (RFC 7622 s3.3), used only to key fake salts for unknown users.
_USERNAME_PROFILE = get_profile("UsernameCaseMapped")

# Key for the fake salts handed out for unknown users; per process, so it never reaches a disk.
_FAKE_SALT_KEY = os.urandom(32)


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(text: str) -> bytes:
    """Strict base64 (RFC 4648 s4, with padding): raises ValueError on anything else."""
    return binascii.a2b_base64(text.encode("ascii"), strict_mode=True)


def _hmac(hash_name: str, key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, HASHES[hash_name]).digest()


def _h(hash_name: str, data: bytes) -> bytes:
    return HASHES[hash_name](data).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _check_hash_name(hash_name: str) -> None:
    if hash_name not in HASHES:
        raise ValueError(f"unsupported SCRAM hash {hash_name!r}; expected one of {sorted(HASHES)}")


# -- mechanism names ---------------------------------------------------------------------------


def mechanism_names(plus: bool) -> list[str]:
    """SCRAM mechanism names to advertise, strongest first.

    RFC 5802 s4: a server that supports channel binding advertises the ``-PLUS`` variants as well
    as the plain ones; ``plus`` says whether channel binding is possible on this connection.
    """
    plain = [f"SCRAM-{h}" for h in _MECHANISM_ORDER]
    return [name + _PLUS for name in plain] + plain if plus else plain


def parse_mechanism(name: str) -> tuple[str, bool] | None:
    """Map a SCRAM mechanism name to ``(hash_name, plus)``, or ``None`` if it is not one of ours.

    SASL mechanism names are upper case (RFC 4422 s3.1), so the match is exact.
    """
    if not name.startswith("SCRAM-"):
        return None
    rest = name[len("SCRAM-") :]
    plus = rest.endswith(_PLUS)
    if plus:
        rest = rest[: -len(_PLUS)]
    if rest not in HASHES:
        return None
    return rest, plus


# -- credentials -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScramCredentials:
    """What the server stores for one user and one hash: RFC 5802 s3 / s5.

    ``stored_key`` is H(ClientKey) and ``server_key`` HMAC(SaltedPassword, "Server Key"); neither
    lets an attacker log in as the user without an offline dictionary attack.
    """

    hash_name: str
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    def to_dict(self) -> dict[str, str | int]:
        """A JSON-safe form, byte fields as base64 strings."""
        return {
            "hash_name": self.hash_name,
            "salt": _b64encode(self.salt),
            "iterations": self.iterations,
            "stored_key": _b64encode(self.stored_key),
            "server_key": _b64encode(self.server_key),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ScramCredentials:
        """The inverse of :meth:`to_dict`; raises ValueError on anything malformed."""
        try:
            hash_name = d["hash_name"]
            iterations = d["iterations"]
            salt = _b64decode(d["salt"])
            stored_key = _b64decode(d["stored_key"])
            server_key = _b64decode(d["server_key"])
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise ValueError(f"malformed SCRAM credentials: {e!r}") from None
        if not isinstance(hash_name, str):
            raise ValueError("malformed SCRAM credentials: hash_name must be a string")
        _check_hash_name(hash_name)
        if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 1:
            raise ValueError("malformed SCRAM credentials: iterations must be a positive integer")
        size = HASHES[hash_name]().digest_size
        if len(stored_key) != size or len(server_key) != size:
            raise ValueError("malformed SCRAM credentials: key length does not match the hash")
        if not salt:
            raise ValueError("malformed SCRAM credentials: empty salt")
        return cls(hash_name, salt, iterations, stored_key, server_key)


def normalize_password(password: str) -> str:
    """Prepare a password with the PRECIS OpaqueString profile (RFC 8265 s4.2).

    Raises ValueError (a ``UnicodeEncodeError``) if the password cannot be prepared, e.g. it is
    empty or contains control characters. When setting a new password this is the user's error;
    when checking one (PLAIN) it just means the password is wrong.
    """
    return _OPAQUE_STRING.enforce(password)


def _salted_password(password: str, hash_name: str, salt: bytes, iterations: int) -> bytes:
    # Hi() of RFC 5802 s2.2 is PBKDF2 (RFC 8018) with HMAC-H and dkLen = the hash length.
    normalized = normalize_password(password).encode("utf-8")
    return hashlib.pbkdf2_hmac(HASHES[hash_name]().name, normalized, salt, iterations)


def _keys(hash_name: str, salted: bytes) -> tuple[bytes, bytes]:
    """(StoredKey, ServerKey) from SaltedPassword, RFC 5802 s3."""
    client_key = _hmac(hash_name, salted, b"Client Key")
    return _h(hash_name, client_key), _hmac(hash_name, salted, b"Server Key")


def derive_credentials(
    password: str,
    hash_name: str,
    *,
    salt: bytes | None = None,
    iterations: int = DEFAULT_ITERATIONS,
) -> ScramCredentials:
    """Compute the credentials to store for ``password`` (RFC 5802 s3).

    ``salt`` defaults to 16 random octets. Raises ValueError for an unknown hash, a non-positive
    iteration count, or a password that OpaqueString (RFC 8265 s4.2) cannot prepare.
    """
    _check_hash_name(hash_name)
    if iterations < 1:
        raise ValueError("iterations must be positive")
    if salt is None:
        salt = os.urandom(_SALT_OCTETS)
    elif not salt:
        raise ValueError("salt must not be empty")
    stored_key, server_key = _keys(hash_name, _salted_password(password, hash_name, salt, iterations))
    return ScramCredentials(hash_name, salt, iterations, stored_key, server_key)


def verify_password(password: str, creds: ScramCredentials) -> bool:
    """Check a cleartext password (from PLAIN, RFC 4616) against stored SCRAM credentials.

    The comparison is constant-time. A password OpaqueString cannot prepare never matches.
    """
    try:
        salted = _salted_password(password, creds.hash_name, creds.salt, creds.iterations)
    except ValueError:
        return False
    stored_key, _server_key = _keys(creds.hash_name, salted)
    return hmac.compare_digest(stored_key, creds.stored_key)


# -- message parsing helpers -------------------------------------------------------------------


def _decode_message(message: bytes) -> str:
    if not isinstance(message, bytes | bytearray | memoryview):
        raise SASLError("malformed-request", "SCRAM message must be bytes")
    message = bytes(message)
    if not message:
        raise SASLError("malformed-request", "empty SCRAM message")
    if len(message) > MAX_MESSAGE_OCTETS:
        raise SASLError("malformed-request", "SCRAM message too long")
    try:
        text = message.decode("utf-8")
    except UnicodeDecodeError:
        raise SASLError("malformed-request", "SCRAM message is not UTF-8") from None
    if "\x00" in text:
        raise SASLError("malformed-request", "NUL in SCRAM message")
    return text


def _unescape_saslname(value: str) -> str:
    """Decode a saslname: "," travels as "=2C" and "=" as "=3D"; any other "=" is an error.

    RFC 5802 s5.1 (attribute n) and s7 (saslname = 1*(value-safe-char / "=2C" / "=3D")).
    """
    if not value:
        raise SASLError("malformed-request", "empty name")
    out: list[str] = []
    i = 0
    while i < len(value):
        c = value[i]
        if c == "=":
            escape = value[i : i + 3]
            if escape == "=2C":
                out.append(",")
            elif escape == "=3D":
                out.append("=")
            else:
                raise SASLError("malformed-request", "bad escape in name")
            i += 3
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _attribute(part: str, name: str) -> str:
    """The value of ``name=value``; malformed-request if the attribute is not the expected one."""
    if not part.startswith(name + "="):
        raise SASLError("malformed-request", f"expected attribute {name!r}")
    return part[len(name) + 1 :]


def _check_extensions(parts: list[str]) -> None:
    """Optional extensions: RFC 5802 s7 says unrecognized ones MUST be ignored, but "m" (s5.1)
    MUST make authentication fail, and an attribute the RFC defines cannot be an extension."""
    for part in parts:
        match = _EXTENSION_RE.fullmatch(part)
        if match is None:
            raise SASLError("malformed-request", "malformed attribute")
        if match.group(1) in _DEFINED_ATTRIBUTES:
            raise SASLError("malformed-request", f"unexpected attribute {match.group(1)!r}")


def _base64_attribute(value: str, what: str) -> bytes:
    if not value:
        raise SASLError("malformed-request", f"empty {what}")
    try:
        return _b64decode(value)
    except ValueError:
        raise SASLError("malformed-request", f"{what} is not valid base64") from None


def _fake_salt(hash_name: str, username: str) -> bytes:
    """A salt for an unknown user, stable for the process and per prepared username.

    The name is prepared as a localpart first so that spellings which reach the same account
    ("User", "user") get the same salt, as they would for an existing account.
    """
    try:
        username = _USERNAME_PROFILE.enforce(username)
    except ValueError:
        pass
    key_input = f"{hash_name}\x00{username}".encode()
    return hmac.new(_FAKE_SALT_KEY, key_input, hashlib.sha256).digest()[:_SALT_OCTETS]


# -- the exchange ------------------------------------------------------------------------------


class ScramServer:
    """One server-side SCRAM exchange (RFC 5802 s5), without I/O.

    Call :meth:`client_first`, then :meth:`server_first` with the user's credentials (looked up
    from the returned username), then :meth:`client_final`. Any :class:`SASLError` ends the
    exchange; so does success. ``plus`` says the client selected a ``-PLUS`` mechanism;
    ``plus_advertised`` says this server offered ``-PLUS`` mechanisms on this connection (for the
    downgrade check of RFC 5802 s6); ``channel_bindings`` maps channel binding type names to their
    data for this TLS connection (see :mod:`xmppd.sasl.channel_binding`); ``nonce`` fixes the
    server's nonce part, for tests only.
    """

    def __init__(
        self,
        hash_name: str,
        *,
        plus: bool,
        plus_advertised: bool,
        channel_bindings: Mapping[str, bytes],
        nonce: str | None = None,
    ) -> None:
        _check_hash_name(hash_name)
        if nonce is None:
            nonce = _b64encode(os.urandom(24))
        elif not _NONCE_RE.fullmatch(nonce):
            raise ValueError("server nonce must be printable ASCII without ','")
        self.hash_name = hash_name
        self.plus = plus
        self.plus_advertised = plus_advertised
        self._channel_bindings = dict(channel_bindings)
        self._server_nonce = nonce
        self._state = "client-first"
        #: The authentication identity (authcid) the client claimed; trustworthy only once
        #: :attr:`authenticated` is true.
        self.username: str | None = None
        #: The authorization identity from the GS2 header ``a=``, or None (RFC 5802 s5.1); the
        #: caller checks it is a JID the user may act as (RFC 6120 s6.3.8, invalid-authzid).
        self.authzid: str | None = None
        #: The channel binding type the client used ("p=" flag), or None.
        self.channel_binding: str | None = None
        self._cbind_input = b""
        self._client_first_bare = ""
        self._nonce = ""
        self._server_first = ""
        self._creds: ScramCredentials | None = None
        self._fake_creds: ScramCredentials | None = None

    @property
    def authenticated(self) -> bool:
        """True once :meth:`client_final` has succeeded."""
        return self._state == "done"

    def _expect(self, state: str) -> None:
        if self._state != state:
            # Reached when a client sends a message the exchange does not expect (e.g. another
            # response after failure); a protocol error on the client's side.
            self._state = "failed"
            raise SASLError("malformed-request", "unexpected SCRAM message")

    def client_first(self, message: bytes) -> str:
        """Parse the client-first-message (RFC 5802 s5.1, s7) and return the username (authcid).

        The username is unescaped but otherwise as sent; preparing it as a JID localpart
        (RFC 7622 s3.3) is the caller's job. The GS2 authorization identity is in :attr:`authzid`.
        """
        self._expect("client-first")
        try:
            return self._client_first(message)
        except SASLError:
            self._state = "failed"
            raise

    def _client_first(self, message: bytes) -> str:
        text = _decode_message(message)
        # gs2-header = gs2-cbind-flag "," [ authzid ] ","  (RFC 5802 s7)
        parts = text.split(",", 2)
        if len(parts) != 3:
            raise SASLError("malformed-request", "missing GS2 header")
        flag, authzid_part, bare = parts
        self._check_cbind_flag(flag)
        if authzid_part:
            self.authzid = _unescape_saslname(_attribute(authzid_part, "a"))
        # client-first-message-bare = [reserved-mext ","] username "," nonce ["," extensions]
        fields = bare.split(",")
        if fields[0].startswith("m="):
            # RFC 5802 s5.1: "m" is reserved; its presence MUST cause authentication failure.
            raise SASLError("malformed-request", "mandatory extensions are not supported")
        if len(fields) < 2:
            raise SASLError("malformed-request", "missing nonce")
        username = _unescape_saslname(_attribute(fields[0], "n"))
        client_nonce = _attribute(fields[1], "r")
        if not _NONCE_RE.fullmatch(client_nonce):
            raise SASLError("malformed-request", "bad client nonce")
        _check_extensions(fields[2:])

        gs2_header = text[: len(text) - len(bare)]
        cb_data = self._channel_bindings[self.channel_binding] if self.channel_binding else b""
        self._cbind_input = gs2_header.encode("utf-8") + cb_data
        self._client_first_bare = bare
        self._nonce = client_nonce + self._server_nonce
        self.username = username
        self._state = "server-first"
        return username

    def _check_cbind_flag(self, flag: str) -> None:
        """Channel binding negotiation, RFC 5802 s6."""
        if flag.startswith("p="):
            cb_name = flag[2:]
            if not _CB_NAME_RE.fullmatch(cb_name):
                raise SASLError("malformed-request", "bad channel binding type name")
            if not self.plus:
                # The client wants channel binding but selected a mechanism without it.
                raise SASLError("malformed-request", "channel binding requested with a non-PLUS mechanism")
            if cb_name not in self._channel_bindings:
                raise SASLError("not-authorized", "unsupported channel binding type")
            self.channel_binding = cb_name
        elif flag in ("n", "y"):
            if self.plus:
                # A -PLUS mechanism always uses channel binding.
                raise SASLError("not-authorized", "a -PLUS mechanism requires channel binding")
            if flag == "y" and self.plus_advertised:
                # The client supports channel binding and thinks we do not: the -PLUS mechanisms
                # were stripped from our list on the way (a downgrade attack).
                raise SASLError("not-authorized", "channel binding downgrade detected")
        else:
            raise SASLError("malformed-request", "bad GS2 channel binding flag")

    def server_first(self, creds: ScramCredentials | None) -> bytes:
        """Return the server-first-message (RFC 5802 s5.1, s7) for the user's credentials.

        Pass ``None`` for an unknown user: the message then carries a salt derived from the
        username with a per-process secret and DEFAULT_ITERATIONS, so it looks the same as for a
        real user and repeats across attempts, and :meth:`client_final` fails with not-authorized.
        This hides which accounts exist (RFC 5802 s9 on user enumeration).

        Raises ValueError if ``creds`` are for a different hash than this mechanism.
        """
        if self._state != "server-first":
            raise RuntimeError("server_first() must follow a successful client_first()")
        if creds is None:
            salt = _fake_salt(self.hash_name, self.username or "")
            size = HASHES[self.hash_name]().digest_size
            # Random keys: the proof check then costs the same as for a real user, and fails.
            creds = ScramCredentials(
                self.hash_name, salt, DEFAULT_ITERATIONS, os.urandom(size), os.urandom(size)
            )
            self._creds = None
            self._fake_creds = creds
        else:
            if creds.hash_name != self.hash_name:
                raise ValueError(f"credentials are for {creds.hash_name}, not {self.hash_name}")
            self._creds = creds
            self._fake_creds = None
        self._server_first = f"r={self._nonce},s={_b64encode(creds.salt)},i={creds.iterations}"
        self._state = "client-final"
        return self._server_first.encode("ascii")

    def client_final(self, message: bytes) -> bytes:
        """Check the client-final-message (RFC 5802 s5.1, s7) and return the server-final-message.

        Verifies the channel binding data (``c=``, RFC 5802 s6), the nonce and the ClientProof
        (RFC 5802 s3) against StoredKey in constant time. Raises :class:`SASLError`
        ``not-authorized`` when any check fails and ``malformed-request`` for bad syntax. On
        success, :attr:`username`, :attr:`authzid` and :attr:`authenticated` are set and the
        returned ``v=`` message goes in ``<success/>`` (RFC 6120 s6.4.6).
        """
        self._expect("client-final")
        try:
            result = self._client_final(message)
        except SASLError:
            self._state = "failed"
            raise
        self._state = "done"
        return result

    def _client_final(self, message: bytes) -> bytes:
        text = _decode_message(message)
        # client-final-message = channel-binding "," nonce ["," extensions] "," proof
        fields = text.split(",")
        if len(fields) < 3:
            raise SASLError("malformed-request", "missing attributes in client-final-message")
        cbind_input = _base64_attribute(_attribute(fields[0], "c"), "channel binding")
        nonce = _attribute(fields[1], "r")
        _check_extensions(fields[2:-1])
        proof = _base64_attribute(_attribute(fields[-1], "p"), "proof")
        hash_name = self.hash_name
        if len(proof) != HASHES[hash_name]().digest_size:
            raise SASLError("malformed-request", "proof has the wrong length")

        without_proof = text[: len(text) - len(fields[-1]) - 1]
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()

        creds = self._creds if self._creds is not None else self._fake_creds
        assert creds is not None
        client_signature = _hmac(hash_name, creds.stored_key, auth_message)
        client_key = _xor(proof, client_signature)
        proof_ok = hmac.compare_digest(_h(hash_name, client_key), creds.stored_key)

        if not hmac.compare_digest(cbind_input, self._cbind_input):
            raise SASLError("not-authorized", "channel binding mismatch")
        if not hmac.compare_digest(nonce.encode(), self._nonce.encode()):
            raise SASLError("not-authorized", "nonce mismatch")
        if self._creds is None or not proof_ok:
            raise SASLError("not-authorized")
        server_signature = _hmac(hash_name, creds.server_key, auth_message)
        return b"v=" + base64.b64encode(server_signature)
