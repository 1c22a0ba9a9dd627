"""Stanza routing: RFC 6120 s8 and s10, RFC 6121 s8.

Every stanza becomes a short sequence of keyed events, in Prosody's vocabulary:

1. from a local client only: ``pre-<kind>/<to>`` on the sender's host (outbound filters: privacy, carbons);
2. for a served domain, on the destination host: ``incoming-<kind>/<to>`` (inbound filters such as
   blocking, for stanzas from anyone), then ``iq-<type>/<to>/<ns>:<name>`` (iq get/set only), then
   ``<kind>/<to>``; for any other domain: ``route/remote`` on the sender's host.

``<to>`` is ``host`` (the domain, with or without resource), ``bare``, ``full``, or ``self`` for an iq a user
sends to their own bare JID (or with no ``to``, RFC 6120 s10.3.3). The core's own delivery rules are the
lowest-priority handlers of ``<kind>/<to>`` (see ``xmppd.delivery``); plugins hook above them.

A handler result decides what happens: ``None`` lets the next handler run, a stanza element is routed
(a reply), anything else means "handled". A handler that raised costs that one stanza an
``internal-server-error``; the router never answers an error stanza with another error (RFC 6120 s8.3.1).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lxml import etree
from twisted.internet.defer import Deferred, fail

from xmppd.events import EventBus, HandlerFailure, is_deferred
from xmppd.jid import JID, JIDError, parse_jid
from xmppd.log import logger
from xmppd.xml.stanza import (
    IQ_TYPES,
    MESSAGE_TYPES,
    PRESENCE_TYPES,
    XML_LANG,
    make_error,
    make_result,
    payload_key,
)

if TYPE_CHECKING:
    from xmppd.server import Host, XMPPServer
    from xmppd.sessions import Session

log = logger("xmppd.router")

MAX_PENDING_IQS = 10000


class StanzaEvent:
    """What a stanza handler receives: the stanza and where it comes from and goes to."""

    __slots__ = (
        "stanza",
        "origin",
        "host",
        "from_",
        "to",
        "kind",
        "type",
        "to_type",
        "server",
        "presence_change",
    )

    def __init__(
        self,
        server: XMPPServer,
        stanza: etree._Element,
        origin: Session | None,
        from_: JID,
        to: JID,
        to_type: str,
    ) -> None:
        self.server = server
        self.stanza = stanza
        self.origin = origin  # the local client session that sent it, or None
        self.from_ = from_
        self.to = to
        self.kind: str = stanza.tag
        self.type: str | None = stanza.get("type")
        self.to_type = to_type
        self.host: Host | None = server.hosts.get(to.domain)
        #: For presence a client broadcasts (no 'to'): "initial" (the session just became available),
        #: "update", or "unavailable"; already recorded on the session when handlers run. Else None.
        self.presence_change: str | None = None

    def result(self) -> etree._Element:
        """An empty iq result answering this stanza."""
        return make_result(self.stanza)

    def error(self, condition: str, type_: str | None = None, text: str | None = None) -> etree._Element:
        """A stanza error answering this stanza (RFC 6120 s8.3)."""
        return make_error(self.stanza, condition, type_, text)

    def __repr__(self) -> str:
        return f"<StanzaEvent {self.kind}/{self.to_type} from={self.from_} to={self.to}>"


class StanzaRejected(Exception):
    """A client stanza that must be answered with a stanza error instead of being routed."""

    def __init__(self, condition: str, text: str | None = None):
        super().__init__(condition)
        self.condition = condition
        self.text = text


def to_type(kind: str, from_: JID, to: JID, from_local_client: bool) -> str:
    if to.local is None:
        return "host"
    if to.resource is None:
        if kind == "iq" and from_local_client and to == from_.bare:
            return "self"
        return "bare"
    return "full"


class Router:
    """Validates client stanzas, computes their events and fires them; tracks iqs the server sent."""

    def __init__(self, server: XMPPServer) -> None:
        self.server = server
        self._pending: dict[str, tuple[JID, Deferred, Any]] = {}
        self._ids = itertools.count(1)

    # -- stanzas from clients --------------------------------------------------------------------------

    def validate(self, session: Session, stanza: etree._Element) -> JID:
        """Check a stanza from a bound client (RFC 6120 s8.1, s8.2) and stamp its ``from``.

        Returns the ``to`` JID (the sender's bare JID when absent, RFC 6120 s10.3). Raises StanzaRejected.
        """
        kind, type_ = stanza.tag, stanza.get("type")
        if kind == "iq":
            if type_ not in IQ_TYPES:
                raise StanzaRejected("bad-request", "iq type must be get, set, result or error")
            if not stanza.get("id"):
                raise StanzaRejected("bad-request", "iq needs an id")
            if type_ in ("get", "set") and sum(1 for c in stanza if isinstance(c.tag, str)) != 1:
                raise StanzaRejected("bad-request", "an iq get or set carries exactly one payload")
        elif kind == "message":
            if type_ is not None and type_ not in MESSAGE_TYPES:
                raise StanzaRejected("bad-request", f"unknown message type {type_!r}")
        elif type_ is not None and type_ not in PRESENCE_TYPES:
            raise StanzaRejected("bad-request", f"unknown presence type {type_!r}")
        stanza.set("from", str(session.jid))
        if XML_LANG not in stanza.attrib and session.lang:
            stanza.set(XML_LANG, session.lang)  # RFC 6120 s8.1.5: the stream's default language
        to = stanza.get("to")
        if to is None:
            return session.jid.bare
        try:
            return parse_jid(to)
        except JIDError as e:
            raise StanzaRejected("jid-malformed", str(e)) from None

    def process(self, session: Session, stanza: etree._Element) -> None:
        """Route a stanza a bound client sent."""
        try:
            to = self.validate(session, stanza)
        except StanzaRejected as e:
            if stanza.get("type") != "error":
                stanza.set("from", str(session.jid))
                stanza.attrib.pop("to", None)
                reply = make_error(stanza, e.condition, text=e.text)
                reply.set("to", str(session.jid))
                session.send(reply)
            return
        change = None
        if stanza.tag == "presence" and stanza.get("to") is None:
            change = record_presence(session, stanza)
        self.dispatch(stanza, session.jid, to, origin=session, presence_change=change)

    # -- any stanza ------------------------------------------------------------------------------------

    def route(self, stanza: etree._Element) -> None:
        """Route a stanza the server itself produced (a reply, a plugin's message); ``to`` must be set.
        No ``from`` means from the addressee's own account (RFC 6120 s8.1.2.1), as in a reply to an iq
        a client sent without ``to``. Invalid addresses are logged and the stanza dropped."""
        try:
            to = parse_jid(stanza.get("to") or "")
            from_ = parse_jid(stanza.get("from")) if stanza.get("from") else to.bare
        except JIDError as e:
            log.warn("dropping a server stanza with a bad address: {error}", error=e)
            return
        self.dispatch(stanza, from_, to, origin=None)

    def dispatch(
        self,
        stanza: etree._Element,
        from_: JID,
        to: JID,
        origin: Session | None,
        presence_change: str | None = None,
    ) -> None:
        """Fire the events of one stanza and act on the result."""
        kind = stanza.tag
        if (
            kind == "iq"
            and stanza.get("type") in ("result", "error")
            and self._resolve_pending(stanza, from_)
        ):
            return
        tt = to_type(kind, from_, to, origin is not None)
        event = StanzaEvent(self.server, stanza, origin, from_, to, tt)
        event.presence_change = presence_change
        steps: list[tuple[EventBus, str]] = []
        sender_host = self.server.hosts.get(from_.domain)
        if origin is not None and sender_host is not None:
            steps.append((sender_host.bus, f"pre-{kind}/{tt}"))
        if event.host is not None:
            bus = event.host.bus
            steps.append((bus, f"incoming-{kind}/{tt}"))
            if kind == "iq" and event.type in ("get", "set"):
                steps.append((bus, f"iq-{event.type}/{tt}/{payload_key(stanza)}"))
            steps.append((bus, f"{kind}/{tt}"))
        elif to.domain not in self.server.routes:
            # Remote: federation takes it (route/remote), on the sender's host or, for an external
            # component's stanza, on the default host.
            if sender_host is None and from_.domain in self.server.routes:
                sender_host = self.server.hosts[self.server.default_domain]
            if sender_host is not None:
                steps.append((sender_host.bus, "route/remote"))
        self._fire_steps(steps, 0, event)

    def _fire_steps(self, steps: list[tuple[EventBus, str]], index: int, event: StanzaEvent) -> None:
        while index < len(steps):
            bus, name = steps[index]
            result = bus.fire(name, event)
            if is_deferred(result):
                result.addCallback(self._after_async, steps, index, event)
                result.addErrback(
                    lambda f: log.failure("routing {stanza_event} failed", f, stanza_event=event)
                )
                return
            if result is not None:
                self._handle_result(result, event)
                return
            index += 1
        self._unhandled(event)

    def _after_async(
        self, result: Any, steps: list[tuple[EventBus, str]], index: int, event: StanzaEvent
    ) -> None:
        if result is None:
            self._fire_steps(steps, index + 1, event)
        else:
            self._handle_result(result, event)

    def _handle_result(self, result: Any, event: StanzaEvent) -> None:
        if isinstance(result, HandlerFailure):
            self.bounce(event.stanza, "internal-server-error")
        elif isinstance(result, etree._Element):
            self.route(result)

    def _unhandled(self, event: StanzaEvent) -> None:
        # Reached for domains that are not served here: an external component's (XEP-0114), or one no
        # route/remote handler took (federation disabled).
        if event.host is None:
            deliver = self.server.routes.get(event.to.domain)
            if deliver is not None:
                deliver(event.stanza)
                return
            if event.kind != "presence":  # presence to an unreachable domain is dropped, not bounced
                self.bounce(event.stanza, "remote-server-not-found")
        elif event.kind == "iq":
            self.bounce(event.stanza, "service-unavailable")

    def bounce(self, stanza: etree._Element, condition: str, text: str | None = None) -> None:
        """Answer a stanza with a stanza error, unless it is an error or an iq result (RFC 6120 s8.3.1)."""
        if stanza.get("type") == "error" or (stanza.tag == "iq" and stanza.get("type") == "result"):
            return
        if not stanza.get("from"):
            return
        self.route(make_error(stanza, condition, text=text))

    # -- iq requests from the server ---------------------------------------------------------------------

    def send_iq(self, iq: etree._Element, timeout: float = 60) -> Deferred[etree._Element]:
        """Send an iq get/set and return a Deferred firing with the result iq, or failing with IQError
        (an error reply) or IQTimeout."""
        if len(self._pending) >= MAX_PENDING_IQS:
            return fail(IQTimeout("too many iq requests pending"))
        iq_id = iq.get("id") or f"xmppd-{next(self._ids)}"
        iq.set("id", iq_id)
        to = parse_jid(iq.get("to"))
        d: Deferred[etree._Element] = Deferred()
        timer = self.server.clock.callLater(timeout, self._timeout, iq_id)
        self._pending[iq_id] = (to, d, timer)
        self.route(iq)
        return d

    def _resolve_pending(self, stanza: etree._Element, from_: JID) -> bool:
        entry = self._pending.get(stanza.get("id") or "")
        if entry is None or entry[0] != from_:
            return False
        del self._pending[stanza.get("id")]
        _, d, timer = entry
        timer.cancel()
        if stanza.get("type") == "result":
            d.callback(stanza)
        else:
            d.errback(IQError(stanza))
        return True

    def _timeout(self, iq_id: str) -> None:
        entry = self._pending.pop(iq_id, None)
        if entry is not None:
            entry[1].errback(IQTimeout(f"no answer to iq {iq_id}"))

    def cancel_pending(self, predicate: Callable[[JID], bool]) -> None:
        """Fail pending iqs sent to addresses matching ``predicate`` (e.g. a session that ended)."""
        for iq_id, (to, d, timer) in list(self._pending.items()):
            if predicate(to):
                del self._pending[iq_id]
                timer.cancel()
                d.errback(IQTimeout(f"{to} went away"))


def record_presence(session: Session, presence: etree._Element) -> str | None:
    """Record a client's broadcast presence on its session (RFC 6121 s4.2, s4.4, s4.5): availability and
    priority, which message routing uses (s8.5.2). Returns "initial", "update", "unavailable", or None
    for other types (they change nothing)."""
    type_ = presence.get("type")
    if type_ is None:
        change = "initial" if session.priority is None else "update"
        session.priority = presence_priority(presence)
        session.presence = presence
        return change
    if type_ == "unavailable":
        session.priority = None
        session.presence = None
        session.last_presence = presence
        return "unavailable"
    return None


def presence_priority(presence: etree._Element) -> int:
    """The <priority/> of a presence, clamped to -128..127 (RFC 6121 s4.7.2.3); 0 when absent or bad."""
    el = presence.find("priority")
    if el is None or not el.text:
        return 0
    try:
        return max(-128, min(127, int(el.text.strip())))
    except ValueError:
        return 0


class IQError(Exception):
    """An iq request was answered with an error; ``stanza`` is the error iq."""

    def __init__(self, stanza: etree._Element):
        from xmppd.xml.stanza import error_condition

        self.stanza = stanza
        self.condition = error_condition(stanza)
        super().__init__(self.condition)


class IQTimeout(Exception):
    """An iq request got no answer in time."""
