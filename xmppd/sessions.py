"""The session manager: which client sessions are bound to which full JID, and their presence priority.

A session is anything that delivers stanzas to one bound resource (a c2s TCP stream now; BOSH and
WebSocket later). The router asks the manager where a stanza for a bare or full JID goes (RFC 6121 s8.5).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Protocol

from lxml import etree

from xmppd.jid import JID


class Session(Protocol):
    """What the router needs of a bound client session."""

    id: str
    kind: str  # "c2s", later "bosh", "websocket"
    jid: JID | None  # the bound full JID
    host: str
    peer: str
    lang: str  # the stream's xml:lang, stamped on stanzas that have none (RFC 6120 s8.1.5)
    priority: int | None  # None: no available presence sent (RFC 6121 s4.2), not a presence recipient
    presence: etree._Element | None
    data: dict  # per-session state of plugins, under their names

    def send(self, stanza: etree._Element) -> None: ...

    def close(self, condition: str | None = None, text: str | None = None) -> None: ...


class ResourceLimit(Exception):
    """The account has as many sessions as it may (``[server] max_sessions_per_user``)."""


class SessionManager:
    """Full JID -> session, and bare JID -> its sessions."""

    def __init__(self, max_per_user: int = 10) -> None:
        self.max_per_user = max_per_user
        self._full: dict[JID, Session] = {}
        self._bare: dict[JID, dict[str, Session]] = {}

    def bind(self, session: Session, bare: JID, resource: str | None) -> tuple[JID, Session | None]:
        """Bind ``session`` to ``bare/resource`` (RFC 6120 s7).

        With no resource asked for, one is generated. If the resource is in use, the newer session wins
        (RFC 6120 s7.7.2.2, option 2) and the replaced session is returned for the caller to close with
        ``<conflict/>``. ResourceLimit when the account already has the maximum number of sessions.
        """
        resources = self._bare.get(bare, {})
        if resource is None:
            resource = secrets.token_hex(8)
            while resource in resources:
                resource = secrets.token_hex(8)
        replaced = resources.get(resource)
        if replaced is None and len(resources) >= self.max_per_user:
            raise ResourceLimit(f"{bare} has {len(resources)} sessions")
        full = JID(bare.local, bare.domain, resource)
        if replaced is not None:
            self.unbind(replaced)
        session.jid = full
        self._full[full] = session
        self._bare.setdefault(bare, {})[resource] = session
        return full, replaced

    def unbind(self, session: Session) -> bool:
        """Forget a session; True if it was bound."""
        full = session.jid
        if full is None or self._full.get(full) is not session:
            return False
        del self._full[full]
        resources = self._bare.get(full.bare)
        if resources is not None:
            resources.pop(full.resource, None)
            if not resources:
                del self._bare[full.bare]
        return True

    def get(self, full: JID) -> Session | None:
        return self._full.get(full)

    def sessions_of(self, bare: JID) -> list[Session]:
        """Every bound session of an account."""
        return list(self._bare.get(bare, {}).values())

    def available(self, bare: JID) -> list[Session]:
        """The account's available resources: those that sent available presence (RFC 6121 s1.4)."""
        return [s for s in self._bare.get(bare, {}).values() if s.priority is not None]

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._full.values()))

    def __len__(self) -> int:
        return len(self._full)
