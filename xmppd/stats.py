"""Counters the core keeps for monitoring, always on: ``server.stats``.

Plain integers in dicts, incremented where stanzas are parsed and written and where authentication
fails, and read by whoever wants them (the ``metrics`` plugin, at scrape time). Counting costs a dict
lookup and an add on paths that already serialise or parse XML; nothing is allocated per stanza.

A stream keeps the two dicts of its transport (``stanza_counters``) and counts a stanza with::

    counts = self._stanzas_out
    if tag in counts:        # message, presence, iq; stream-level elements (features, SASL) are not stanzas
        counts[tag] += 1

What is measured elsewhere is not kept here: bound sessions and server-to-server streams are computed from
the server's state when asked (``server.sessions``, ``server.s2s``), storage latency by
:class:`xmppd.storage.timed.TimedStorage`.
"""

from __future__ import annotations

STANZA_KINDS = ("message", "presence", "iq")
#: The transports counted from the start (others, if any, appear when first used).
TRANSPORTS = ("c2s", "bosh", "websocket", "s2s", "component")


class Stats:
    """The server's counters. Every number only grows while the process runs."""

    def __init__(self) -> None:
        #: transport -> stanza kind -> stanzas received on streams of that transport
        self.stanzas_in: dict[str, dict[str, int]] = {}
        #: transport -> stanza kind -> stanzas written to streams of that transport
        self.stanzas_out: dict[str, dict[str, int]] = {}
        #: (mechanism, condition) -> failed authentications. The mechanism is one the server offered
        #: ("SCRAM-SHA-256", "PLAIN", "EXTERNAL", "dialback"), or "none" when the client named none it
        #: offered; the condition is the SASL failure's (RFC 6120 s6.5), e.g. "not-authorized".
        self.auth_failures: dict[tuple[str, str], int] = {}
        #: transport -> client sessions bound (logins) since start
        self.sessions_started: dict[str, int] = {}
        for transport in TRANSPORTS:
            self.stanza_counters(transport)
            self.sessions_started[transport] = 0

    def stanza_counters(self, transport: str) -> tuple[dict[str, int], dict[str, int]]:
        """The (received, sent) counters of one transport, kind -> count, for a stream to keep."""
        received = self.stanzas_in.get(transport)
        if received is None:
            received = self.stanzas_in[transport] = dict.fromkeys(STANZA_KINDS, 0)
            self.stanzas_out[transport] = dict.fromkeys(STANZA_KINDS, 0)
        return received, self.stanzas_out[transport]

    def auth_failed(self, mechanism: str | None, condition: str) -> None:
        key = (mechanism or "none", condition)
        self.auth_failures[key] = self.auth_failures.get(key, 0) + 1

    def session_started(self, transport: str) -> None:
        self.sessions_started[transport] = self.sessions_started.get(transport, 0) + 1
