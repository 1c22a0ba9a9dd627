"""Jabber identifiers (JIDs) per RFC 7622: parsing, preparation and an immutable value type.

Every stanza's ``to`` and ``from`` goes through :func:`parse_jid`, so prepared JIDs are kept in a bounded
LRU cache and plain ASCII parts take a fast path that gives the same result as the PRECIS profiles.
The localpart is enforced with the PRECIS UsernameCaseMapped profile and the resourcepart with
OpaqueString (RFC 7622 s3.3, s3.4; RFC 8265). The domainpart follows RFC 7622 s3.2: one trailing dot
stripped, case, width and NFC mapping (RFC 5895), then NR-LDH labels, U-labels (A-labels are converted to
U-labels, checked by IDNA2008 through the ``idna`` package), an IPv4 address or a bracketed IPv6 literal.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import unicodedata
from dataclasses import dataclass

import idna
import precis_i18n

__all__ = ["JID", "JIDError", "parse_jid", "prep_domain", "prep_local", "prep_resource"]

#: RFC 7622 s3.1: each part is 1 to 1023 octets once prepared.
MAX_PART_OCTETS = 1023
#: Cached prepared JIDs; never unbounded (DESIGN.md: nothing unbounded).
CACHE_SIZE = 8192
# Longest text that could still prepare to a valid JID: three full parts, two separators, and a
# canonical decomposition (undone by NFC) is at most 4 code points per prepared one.
_MAX_TEXT_CHARS = 4 * 3 * MAX_PART_OCTETS + 2

_USERNAME = precis_i18n.get_profile("UsernameCaseMapped")
_OPAQUE = precis_i18n.get_profile("OpaqueString")

# RFC 7622 s3.3.1: characters the localpart must not contain beyond what the PRECIS profile forbids.
_LOCAL_FORBIDDEN = re.compile("[\"&'/:<>@]")
# RFC 5890 s2.3.1 LDH label (letters, digits, hyphens; no leading or trailing hyphen), already lowercased.
_LDH_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_LDH_LABEL_RE = re.compile(_LDH_LABEL)
_LDH_NAME_RE = re.compile(rf"(?:{_LDH_LABEL}\.)*{_LDH_LABEL}")
_IPV4_LIKE_RE = re.compile(r"[0-9]+(?:\.[0-9]+){3}")


class JIDError(ValueError):
    """Raised for a string that is not a valid JID or JID part (RFC 7622 s3); the message says why."""


def _reason(exc: UnicodeError) -> str:
    # precis_i18n puts e.g. "DISALLOWED/spaces" in .reason; idna >= 3.11 a code such as "contextj". Neither
    # echoes the (possibly long, attacker-chosen) input, unlike str(exc).
    return str(getattr(exc, "code", None) or getattr(exc, "reason", None) or type(exc).__name__)


def _octets(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _check_length(text: str, part: str) -> None:
    # RFC 7622 s3.1: no part may be zero octets or more than 1023 octets in length.
    if not text:
        raise JIDError(f"empty {part}")
    if _octets(text) > MAX_PART_OCTETS:
        raise JIDError(f"{part} longer than {MAX_PART_OCTETS} octets")


def prep_local(text: str) -> str:
    """Prepare and enforce a localpart (RFC 7622 s3.3): PRECIS UsernameCaseMapped (RFC 8265 s3.3),
    minus the characters RFC 7622 s3.3.1 forbids (``" & ' / : < > @``). Raises :class:`JIDError`."""
    if not text:
        raise JIDError("empty localpart")
    if text.isascii() and text.isprintable() and " " not in text:
        # Printable ASCII but space is all IdentifierClass (RFC 8264 s9.11); the only mapping is case.
        local = text.lower()
    else:
        try:
            local = _USERNAME.enforce(text)
        except UnicodeError as exc:
            raise JIDError(f"invalid localpart ({_reason(exc)})") from None
    bad = _LOCAL_FORBIDDEN.search(local)
    if bad:
        raise JIDError(f"character {bad.group()!r} not allowed in localpart")
    _check_length(local, "localpart")
    return local


def prep_resource(text: str) -> str:
    """Prepare and enforce a resourcepart (RFC 7622 s3.4): PRECIS OpaqueString (RFC 8265 s4.2), so case
    is kept and spaces, ``@`` and ``/`` are allowed. Raises :class:`JIDError`."""
    if not text:
        raise JIDError("empty resourcepart")
    if text.isascii() and text.isprintable():
        # Printable ASCII is all FreeformClass (RFC 8264 s9.12) and OpaqueString maps none of it.
        resource = text
    else:
        try:
            resource = _OPAQUE.enforce(text)
        except UnicodeError as exc:
            raise JIDError(f"invalid resourcepart ({_reason(exc)})") from None
    _check_length(resource, "resourcepart")
    return resource


def _map_domain(text: str) -> str:
    # RFC 5895 s2 steps 1-3, as RFC 7622 s3.2.2 requires: lowercase, width mapping, NFC.
    text = text.lower()
    chars = []
    for ch in text:
        if not ch.isascii():
            decomposition = unicodedata.decomposition(ch)
            if decomposition.startswith(("<wide> ", "<narrow> ")):
                ch = chr(int(decomposition.split()[1], 16))
        chars.append(ch)
    return unicodedata.normalize("NFC", "".join(chars))


def _prep_label(label: str) -> str:
    if not label:
        raise JIDError("empty label in domainpart")
    if label.isascii():
        if len(label) > 63:
            raise JIDError("label longer than 63 octets in domainpart")
        if label.startswith("xn--"):
            # RFC 7622 s3.2.1: an A-label is converted to its U-label.
            try:
                return idna.ulabel(label)
            except idna.IDNAError as exc:
                raise JIDError(f"invalid A-label in domainpart ({_reason(exc)})") from None
        if not _LDH_LABEL_RE.fullmatch(label):
            raise JIDError("invalid character in domainpart label")
        return label
    # RFC 7622 s3.2.1: a U-label must be valid IDNA2008 (RFC 5891 s5.4) and its A-label at most 63 octets.
    try:
        idna.alabel(label)
    except idna.IDNAError as exc:
        raise JIDError(f"invalid U-label in domainpart ({_reason(exc)})") from None
    return label


def prep_domain(text: str) -> str:
    """Prepare and enforce a domainpart (RFC 7622 s3.2). Raises :class:`JIDError`.

    One trailing dot is stripped before anything else (s3.2). The rest is an IPv4 address, a bracketed
    IPv6 literal (s3.2, RFC 3986 s3.2.2; returned in its compressed form) or a domain name whose labels are
    LDH labels or U-labels, after lowercasing, width mapping and NFC (s3.2.2, RFC 5895).
    """
    if text.endswith("."):
        text = text[:-1]
    if not text:
        raise JIDError("empty domainpart")
    if text.isascii():
        domain = text.lower()
        if "xn--" not in domain and _LDH_NAME_RE.fullmatch(domain):
            if _IPV4_LIKE_RE.fullmatch(domain):
                _check_ipv4(domain)
            _check_length(domain, "domainpart")
            return domain
        if domain.startswith("["):
            return _prep_ipv6(domain)
    else:
        domain = _map_domain(text)
    domain = ".".join(_prep_label(label) for label in domain.split("."))
    _check_length(domain, "domainpart")
    return domain


def _check_ipv4(domain: str) -> None:
    # A dotted quad is an IPv4address (RFC 3986 s3.2.2); anything else of that shape is not a host name.
    try:
        ipaddress.IPv4Address(domain)
    except ValueError:
        raise JIDError("invalid IPv4 address in domainpart") from None


def _prep_ipv6(domain: str) -> str:
    if not domain.endswith("]") or "%" in domain:
        raise JIDError("invalid IPv6 literal in domainpart")
    try:
        address = ipaddress.IPv6Address(domain[1:-1])
    except ValueError:
        raise JIDError("invalid IPv6 literal in domainpart") from None
    return f"[{address.compressed}]"


@dataclass(frozen=True, slots=True)
class JID:
    """An immutable, prepared JID (RFC 7622): hashable, compared by value, rendered by ``str()``.

    The constructor trusts its arguments; build JIDs from untrusted text with :meth:`parse` or from
    separate parts with :meth:`make`, which prepare and validate them.
    """

    local: str | None
    domain: str
    resource: str | None = None

    @classmethod
    def parse(cls, text: str) -> JID:
        """Parse and prepare a JID string (RFC 7622 s3.1); same as :func:`parse_jid`, cached."""
        return parse_jid(text)

    @classmethod
    def make(cls, local: str | None, domain: str, resource: str | None = None) -> JID:
        """Prepare each part separately (RFC 7622 s3.2-3.4), e.g. for resource binding (RFC 6120 s7).

        ``None`` means the part is absent; an empty string is an error, as in :meth:`parse`.
        """
        return cls(
            None if local is None else prep_local(local),
            prep_domain(domain),
            None if resource is None else prep_resource(resource),
        )

    @property
    def bare(self) -> JID:
        """The JID without its resourcepart (RFC 6120 s1.4 "bare JID"); ``self`` when already bare."""
        if self.resource is None:
            return self
        return JID(self.local, self.domain)

    @property
    def host(self) -> JID:
        """The domain-only JID (RFC 7622 s3.2), e.g. the server or component this JID belongs to."""
        if self.local is None and self.resource is None:
            return self
        return JID(None, self.domain)

    @property
    def is_bare(self) -> bool:
        """True when there is no resourcepart (a bare or domain-only JID)."""
        return self.resource is None

    @property
    def is_full(self) -> bool:
        """True when there is a resourcepart (RFC 6120 s1.4 "full JID")."""
        return self.resource is not None

    def __str__(self) -> str:
        text = self.domain if self.local is None else f"{self.local}@{self.domain}"
        return text if self.resource is None else f"{text}/{self.resource}"


@functools.lru_cache(maxsize=CACHE_SIZE)
def parse_jid(text: str) -> JID:
    """Parse and prepare a JID string; raise :class:`JIDError` with a short reason if it is invalid.

    RFC 7622 s3.1: the resourcepart is everything after the first ``/``; of what precedes it, the
    localpart is everything before the first ``@`` and the domainpart the rest. Each part is then
    prepared (s3.2-3.4). Results are kept in a bounded LRU cache (``parse_jid.cache_info()``).
    """
    if not isinstance(text, str):
        raise TypeError(f"JID must be str, not {type(text).__name__}")
    if not text:
        raise JIDError("empty JID")
    if len(text) > _MAX_TEXT_CHARS:
        raise JIDError("JID too long")
    slash = text.find("/")
    if slash < 0:
        rest, resource = text, None
    else:
        rest, resource = text[:slash], prep_resource(text[slash + 1 :])
    at = rest.find("@")
    if at < 0:
        local, domain = None, rest
    else:
        local, domain = prep_local(rest[:at]), rest[at + 1 :]
    return JID(local, prep_domain(domain), resource)
