"""The error raised by the sans-IO SASL mechanisms.

A failed exchange is reported to the client as a ``<failure/>`` element whose child names the
condition (RFC 6120 s6.5), optionally with a ``<text/>`` (RFC 6120 s6.4.5). The mechanisms raise
:class:`SASLError` carrying exactly that; the stream layer turns it into XML.
"""

from __future__ import annotations

#: The defined SASL failure conditions, RFC 6120 s6.5.1 - s6.5.11.
CONDITIONS: frozenset[str] = frozenset(
    {
        "aborted",
        "account-disabled",
        "credentials-expired",
        "encryption-required",
        "incorrect-encoding",
        "invalid-authzid",
        "invalid-mechanism",
        "malformed-request",
        "mechanism-too-weak",
        "not-authorized",
        "temporary-auth-failure",
    }
)


class SASLError(Exception):
    """A SASL exchange failed with an RFC 6120 s6.5 ``condition``.

    ``text`` is optional human-readable detail for the ``<text/>`` child of ``<failure/>``
    (RFC 6120 s6.4.5); it must never contain secrets.
    """

    condition: str
    text: str | None

    def __init__(self, condition: str, text: str | None = None) -> None:
        if condition not in CONDITIONS:
            raise ValueError(f"unknown SASL failure condition {condition!r} (RFC 6120 s6.5)")
        super().__init__(condition if text is None else f"{condition}: {text}")
        self.condition = condition
        self.text = text
