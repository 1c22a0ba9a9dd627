"""The core's delivery rules for local addresses (RFC 6121 s8.5), as the lowest-priority handlers.

Plugins hook the same events at higher priorities and return a value to take over (an offline store for
``message/offline``, presence subscriptions, ...). What is left here is what a server must do with no
plugin at all: deliver to the right resources, and answer what nobody handles with the right error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lxml import etree
from twisted.internet.defer import Deferred

from xmppd.events import EventBus, is_deferred
from xmppd.router import StanzaEvent
from xmppd.xml.stanza import copy_stanza

if TYPE_CHECKING:
    from xmppd.server import XMPPServer

CORE_PRIORITY = -1000
HANDLED = True


class CoreDelivery:
    """Default handlers for ``<kind>/<to>`` events on one host's bus."""

    def __init__(self, server: XMPPServer) -> None:
        self.server = server
        self.sessions = server.sessions

    def install(self, bus: EventBus) -> None:
        for name, handler in (
            ("message/bare", self.message_bare),
            ("message/full", self.message_full),
            ("message/host", self.to_host),
            ("message/self", self.message_bare),
            ("presence/bare", self.presence_bare),
            ("presence/full", self.presence_full),
            ("presence/host", self.to_host),
            ("iq/bare", self.iq_bare),
            ("iq/self", self.iq_bare),
            ("iq/host", self.to_host),
            ("iq/full", self.iq_full),
            ("message/offline", self.message_offline),
        ):
            bus.hook(name, handler, CORE_PRIORITY, owner="core")

    def _error(self, event: StanzaEvent, condition: str) -> etree._Element | bool:
        """A stanza error for ``event`` unless it is one already (RFC 6120 s8.3.1)."""
        if event.type == "error" or (event.kind == "iq" and event.type == "result"):
            return HANDLED
        return event.error(condition)

    def _exists(self, event: StanzaEvent) -> bool | Deferred[bool]:
        if self.sessions.sessions_of(event.to.bare):
            return True
        return self.server.accounts.exists(event.to.bare)

    def _when_exists(self, event: StanzaEvent, then: Any) -> Any:
        """Run ``then(event)`` if the addressed account exists, else answer service-unavailable
        (RFC 6121 s8.5.1: silently ignore presence, error for message and iq)."""

        def decide(exists: bool) -> Any:
            if exists:
                return then(event)
            if event.kind == "presence":
                return HANDLED
            return self._error(event, "service-unavailable")

        exists = self._exists(event)
        if is_deferred(exists):
            return exists.addCallback(decide)
        return decide(exists)

    # -- message (RFC 6121 s8.5.2, s8.5.3) -------------------------------------------------------------

    def message_bare(self, event: StanzaEvent) -> Any:
        return self._when_exists(event, self._message_to_account)

    def _message_to_account(self, event: StanzaEvent) -> Any:
        type_ = event.type or "normal"
        if type_ == "error":
            return HANDLED
        if type_ == "groupchat":
            return self._error(event, "service-unavailable")
        candidates = [s for s in self.sessions.available(event.to.bare) if s.priority >= 0]
        if not candidates:
            # s8.5.2.2.1: offline storage (a plugin's), else an error for normal/chat; headlines vanish.
            if type_ == "headline":
                return HANDLED
            return event.host.bus.fire("message/offline", event)
        if type_ == "chat":
            # s8.5.2.1.1: chat goes to the highest-priority resource(s).
            top = max(s.priority for s in candidates)
            candidates = [s for s in candidates if s.priority == top]
        for session in candidates:
            session.send(event.stanza)
        return HANDLED

    def message_offline(self, event: StanzaEvent) -> Any:
        """No offline storage enabled: the sender learns the message was not delivered."""
        return self._error(event, "service-unavailable")

    def message_full(self, event: StanzaEvent) -> Any:
        session = self.sessions.get(event.to)
        if session is not None:
            session.send(event.stanza)
            return HANDLED
        type_ = event.type or "normal"
        if type_ in ("chat", "normal"):
            # s8.5.3.2.1: no such resource; treat as addressed to the bare JID.
            return self.message_bare(event)
        if type_ == "groupchat":
            return self._error(event, "service-unavailable")
        return HANDLED  # headline and error: silently ignored

    # -- presence (RFC 6121 s4, s8.5.2.1.2) -----------------------------------------------------------

    def presence_bare(self, event: StanzaEvent) -> Any:
        origin = event.origin
        if origin is not None and event.stanza.get("to") is None:
            return self._broadcast_own(event)
        if event.type in ("probe", "error"):
            return HANDLED  # answered by the presence plugin when enabled
        for session in self.sessions.available(event.to.bare):
            session.send(event.stanza)
        return HANDLED

    def _broadcast_own(self, event: StanzaEvent) -> Any:
        """Presence with no 'to' from a client: its availability (RFC 6121 s4.2, s4.4, s4.5). The core
        records priority for routing and shows it to the user's own available resources (s4.2.2, s4.4.2);
        broadcasting to contacts is the presence plugin's work. The router has recorded the change on the
        session already (xmppd.router.record_presence)."""
        origin = event.origin
        if event.presence_change is None:
            return HANDLED  # subscription types need a 'to'; nothing to do without one
        recipients = self.sessions.available(event.from_.bare)
        if event.presence_change == "unavailable":
            recipients.append(origin)
        for session in recipients:
            stanza = etree.Element("presence", attrib=dict(event.stanza.attrib))
            stanza[:] = [copy_stanza(c) for c in event.stanza]
            stanza.set("to", str(session.jid))
            session.send(stanza)
        return HANDLED

    def presence_full(self, event: StanzaEvent) -> Any:
        session = self.sessions.get(event.to)
        if session is not None and event.type not in ("probe",):
            session.send(event.stanza)
        return HANDLED

    # -- iq (RFC 6120 s10.5.3, RFC 6121 s8.5.3) --------------------------------------------------------

    def iq_bare(self, event: StanzaEvent) -> Any:
        """An iq to an account is for the server to answer on the user's behalf; nobody did."""
        return self._when_exists(event, lambda e: self._error(e, "service-unavailable"))

    def iq_full(self, event: StanzaEvent) -> Any:
        session = self.sessions.get(event.to)
        if session is not None:
            session.send(event.stanza)
            return HANDLED
        return self._error(event, "service-unavailable")

    def to_host(self, event: StanzaEvent) -> Any:
        """Stanzas to the server itself that no plugin handled (RFC 6120 s10.3, s8.3.3.19)."""
        if event.kind == "presence" or (event.kind == "message" and event.type in ("headline", "error")):
            return HANDLED
        return self._error(event, "service-unavailable")
