"""Presence subscriptions and presence broadcast (RFC 6121 s3, s4 and Appendix A).

Outbound, from a local client (``pre-presence/...``):

* subscribe / unsubscribe / subscribed / unsubscribed update the user's roster item per Appendix A.2 and
  go to the contact's bare JID stamped with the user's bare JID (s3.1.2, s3.2.2, s3.3.2); ``subscribed``
  with no request pending is a pre-approval (s3.4);
* presence with no 'to' is broadcast to contacts with subscription from/both (s4.2.2, s4.4.2, s4.5.2); the
  first available presence of a session also probes contacts with to/both (s4.2.3), hands the session the
  subscription requests that waited for it (s3.1.3) and the presence of the user's other resources;
* presence with a 'to' outside the subscription is directed presence (s4.6): its recipients get
  unavailable presence when the session goes unavailable or ends.

Inbound, to a local account (``presence/bare`` and ``presence/full``): subscription stanzas per
Appendix A.3, delivered before the roster push they cause (s3.1.6, s3.2.3, s3.3.3), and probes answered for
contacts with from/both, for one resource when the probe names it (s4.3.2). Pre-approval support is
advertised as the ``urn:xmpp:features:pre-approval`` stream feature (s3.4).

A session that ends for any reason, a dropped TCP connection included, reaches this plugin as unavailable
presence from the core, so its contacts always learn it left (s4.5.2).
"""

from __future__ import annotations

from typing import Any

from lxml import etree
from xmppd.plugins.roster import Doc, Roster, new_item

from xmppd.jid import JID
from xmppd.plugin import Context, Option, Plugin
from xmppd.router import StanzaEvent
from xmppd.xml.stanza import add_child, copy_stanza, make_stanza, parse_stanza
from xmppd.xml.writer import serialize

NS_PREAPPROVAL = "urn:xmpp:features:pre-approval"
SUBSCRIPTION_TYPES = ("subscribe", "subscribed", "unsubscribe", "unsubscribed")
HANDLED = True
DIRECTED = "presence.directed"  # session.data key: JIDs that got directed presence from the session


class Presence(Plugin):
    name = "presence"
    requires = ("roster",)
    options = {
        "max_pending": Option(int, 100, "subscription requests kept per account while unanswered", min=1),
        "max_directed": Option(int, 100, "directed-presence recipients remembered per session", min=1),
    }

    def setup(self, ctx: Context) -> None:
        self.roster: Roster = ctx.depends("roster")  # type: ignore[assignment]
        for to in ("bare", "full", "host"):
            ctx.hook(f"pre-presence/{to}", self.outbound, priority=50)
        ctx.hook("presence/bare", self.inbound, priority=50)
        ctx.hook("presence/full", self.inbound_full, priority=50)
        ctx.hook("session-ended", self.session_ended)
        ctx.hook("stream-features", self.on_features)

    def on_features(self, event: Any) -> None:
        """s3.4: a server that supports pre-approvals MUST advertise them."""
        if event.stream.user is not None and not event.stream.bound:
            add_child(event.features, NS_PREAPPROVAL, "sub")

    # -- outbound ------------------------------------------------------------------------------------------

    def outbound(self, event: StanzaEvent) -> Any:
        session = event.origin
        if session is None:
            return None
        if event.type in SUBSCRIPTION_TYPES:
            return self._run(self._outbound_subscription(event))
        if event.type in ("probe", "error"):
            return None
        if event.stanza.get("to") is None:
            if event.presence_change is not None:
                self._background(self._broadcast(event, event.presence_change == "initial"))
            return None  # the core shows it to the user's own resources
        self._track_directed(event)
        return None

    async def _outbound_subscription(self, event: StanzaEvent) -> Any:
        """Appendix A.2: the user's server on an outbound subscription stanza."""
        user, contact = event.from_.local, str(event.to.bare)
        kind = event.type
        # s3: the client's stanza (its id, xml:lang, extended content) stamped with the user's bare JID
        stanza = copy_stanza(event.stanza)
        stanza.set("to", contact)
        stanza.set("from", str(event.from_.bare))
        route = True

        def change(doc: Doc) -> list[str] | None:
            nonlocal route
            item = doc["items"].get(contact)
            pending = contact in doc["pending"]
            if kind == "subscribe":  # s3.1.2: ask, unless already subscribed
                if item is None:
                    item = doc["items"][contact] = new_item()
                if item["subscription"] in ("none", "from") and not item["ask"]:
                    item["ask"] = True
                    return [contact]
                return None
            if kind == "unsubscribe":  # s3.3.2
                if item is None:
                    return None
                old = item["subscription"], item["ask"]
                item["subscription"] = {"to": "none", "both": "from"}.get(
                    item["subscription"], item["subscription"]
                )
                item["ask"] = False
                return [contact] if (item["subscription"], item["ask"]) != old else None
            if kind == "subscribed":
                if pending:  # s3.1.5: approve the waiting request
                    del doc["pending"][contact]
                    if item is None:
                        item = doc["items"][contact] = new_item()
                    item["subscription"] = {"none": "from", "to": "both"}.get(
                        item["subscription"], item["subscription"]
                    )
                    item["approved"] = False
                    return [contact]
                route = False  # s3.4: pre-approval, nothing is sent
                if item is not None and item["subscription"] in ("from", "both"):
                    return None
                if item is None:
                    item = doc["items"][contact] = new_item()
                if item["approved"]:
                    return None
                item["approved"] = True
                return [contact]
            # unsubscribed, s3.2.2: cancel or deny. Only a subscription or a pending request makes it go
            # out (Table 5); cancelling a mere pre-approval changes the roster and sends nothing (rule 2).
            route = pending or (item is not None and item["subscription"] in ("from", "both"))
            doc["pending"].pop(contact, None)
            if item is None:
                return None
            old = item["subscription"], item["approved"]
            item["subscription"] = {"from": "none", "both": "to"}.get(
                item["subscription"], item["subscription"]
            )
            item["approved"] = False
            return [contact] if (item["subscription"], item["approved"]) != old else None

        await self.roster.modify(user, change)
        if route:
            if kind == "unsubscribed":
                # s3.2.2: unavailable from every available resource while the contact is still subscribed
                self._send_unavailable(event.from_.bare, contact)
            self.ctx.send(stanza)
            if kind == "subscribed":
                self._send_own_presence(event.from_.bare, contact)  # s3.1.5: the contact sees us at once
        return HANDLED

    async def _broadcast(self, event: StanzaEvent, initial: bool) -> None:
        """s4.2.2 / s4.4.2 / s4.5.2: presence to contacts with from/both; s4.2.3 probes on the first."""
        session = event.origin
        doc = await self.roster.load(event.from_.local)
        targets = {c for c, item in doc["items"].items() if item["subscription"] in ("from", "both")}
        if event.type == "unavailable":
            targets |= set(session.data.pop(DIRECTED, ()))
        for contact in sorted(targets):
            stanza = copy_stanza(event.stanza)
            stanza.set("to", contact)
            stanza.set("from", str(event.from_))
            self.ctx.send(stanza)
        if not initial:
            return
        own = str(event.from_.bare)
        for contact, item in doc["items"].items():
            if item["subscription"] in ("to", "both"):
                self.ctx.send(make_stanza("presence", to=contact, from_=own, type_="probe"))
        for text in doc["pending"].values():  # s3.1.3: requests that waited for an available resource
            self._deliver_to(session, parse_stanza(text))
        for other in self.ctx.sessions.available(event.from_.bare):
            if other is not session and other.presence is not None:
                stanza = copy_stanza(other.presence)
                stanza.set("to", str(session.jid))
                session.send(stanza)

    def _track_directed(self, event: StanzaEvent) -> None:
        """s4.6: remember who got directed available presence; forget on directed unavailable."""
        directed: list[str] = event.origin.data.setdefault(DIRECTED, [])
        target = str(event.to)
        if event.type == "unavailable":
            if target in directed:
                directed.remove(target)
        elif target not in directed and len(directed) < self.ctx.option("max_directed"):
            directed.append(target)

    def session_ended(self, event: Any) -> None:
        """s4.6.3: directed-presence recipients learn the session left even if it never broadcast (an
        available session's recipients were told by the unavailable broadcast, which empties the list)."""
        session = event.session
        for target in session.data.pop(DIRECTED, ()):
            self.ctx.send(make_stanza("presence", to=target, from_=str(session.jid), type_="unavailable"))

    # -- inbound -------------------------------------------------------------------------------------------

    def inbound_full(self, event: StanzaEvent) -> Any:
        """Subscription stanzas and probes to a full JID are handled as if sent to the bare JID
        (RFC 6121 s3.1.3, s4.3)."""
        if event.type in (*SUBSCRIPTION_TYPES, "probe"):
            return self.inbound(event)
        return None

    def inbound(self, event: StanzaEvent) -> Any:
        if event.to.local is None or event.origin is not None and event.stanza.get("to") is None:
            return None  # a user's own broadcast: the core shows it to their resources
        if event.type in SUBSCRIPTION_TYPES:
            return self._run(self._inbound_subscription(event))
        if event.type == "probe":
            return self._run(self._probe(event))
        return None

    async def _inbound_subscription(self, event: StanzaEvent) -> Any:
        """Appendix A.3: the contact's server on an inbound subscription stanza."""
        if not await event.server.accounts.exists(event.to.bare):
            return HANDLED  # RFC 6121 s8.5.1: silently ignored
        user, sender = event.to.local, str(event.from_.bare)
        kind = event.type
        deliver = cancelled = False
        auto: str | None = None

        def change(doc: Doc) -> list[str] | None:
            nonlocal deliver, auto, cancelled
            item = doc["items"].get(sender)
            if kind == "subscribe":  # s3.1.3
                if item is not None and item["subscription"] in ("from", "both"):
                    auto = "subscribed"
                    return None
                if item is not None and item["approved"]:  # s3.4: pre-approved
                    item["subscription"] = {"none": "from", "to": "both"}[item["subscription"]]
                    item["approved"] = False
                    auto = "subscribed"
                    return [sender]
                if sender in doc["pending"]:  # Table 6: "Pending In" already, not delivered again
                    doc["pending"][sender] = serialize(_as_bare(event.stanza, sender)).decode()
                    return None
                if len(doc["pending"]) >= self.ctx.option("max_pending"):
                    return None
                doc["pending"][sender] = serialize(_as_bare(event.stanza, sender)).decode()
                deliver = True
                return None
            if kind == "subscribed":  # s3.1.6: only when we asked
                if item is None or not item["ask"]:
                    return None
                item["ask"] = False
                item["subscription"] = {"none": "to", "from": "both"}.get(
                    item["subscription"], item["subscription"]
                )
                deliver = True
                return [sender]
            if kind == "unsubscribe":  # s3.3.3
                had_pending = doc["pending"].pop(sender, None) is not None
                if item is None or item["subscription"] not in ("from", "both"):
                    deliver = had_pending
                    return None
                item["subscription"] = {"from": "none", "both": "to"}[item["subscription"]]
                deliver = cancelled = True
                return [sender]
            # unsubscribed, s3.2.3
            if item is None or (item["subscription"] not in ("to", "both") and not item["ask"]):
                return None
            item["subscription"] = {"to": "none", "both": "from"}.get(
                item["subscription"], item["subscription"]
            )
            item["ask"] = False
            deliver = True
            return [sender]

        def notify() -> None:
            """Deliver the stanza before the roster push it causes (s3.1.6, s3.2.3, s3.3.3): a request to
            the available resources (s3.1.3), the others to the interested ones (and the available ones)."""
            if not deliver:
                return
            owner = event.to.bare
            sessions = self.ctx.sessions.available(owner)
            if kind != "subscribe":
                sessions += [s for s in self.roster.interested(owner) if s not in sessions]
            stanza = _as_bare(event.stanza, sender)
            for session in sessions:
                self._deliver_to(session, stanza)

        await self.roster.modify(user, change, before_push=notify)
        if auto:
            self.ctx.send(make_stanza("presence", to=sender, from_=str(event.to.bare), type_=auto))
            self._send_own_presence(event.to.bare, sender)
        if cancelled:
            self._send_unavailable(event.to.bare, sender)  # s3.3.3: the user no longer sees us
        return HANDLED

    async def _probe(self, event: StanzaEvent) -> Any:
        """s4.3.2: the current presence of every available resource to a subscribed contact; a probe to a
        full JID is answered for that resource only. Answers without a presence to copy mirror the probe's
        id (s4.3.2.1)."""
        owner = event.to.bare
        if not await event.server.accounts.exists(owner):
            return HANDLED
        prober, probe_id = str(event.from_), event.stanza.get("id")
        if event.from_.bare == owner:
            state = "both"
        else:
            state = await self.roster.subscription(owner.local, event.from_.bare)
        if state not in ("from", "both"):
            reply = make_stanza("presence", to=prober, from_=str(owner), type_="unsubscribed", id_=probe_id)
            self.ctx.send(reply)
            return HANDLED
        sessions = [s for s in self.ctx.sessions.available(owner) if s.presence is not None]
        if event.to.resource is not None:
            sessions = [s for s in sessions if s.jid == event.to]
        for session in sessions:
            stanza = copy_stanza(session.presence)
            stanza.set("from", str(session.jid))
            stanza.set("to", prober)
            self.ctx.send(stanza)
        if not sessions:
            self.ctx.send(
                make_stanza("presence", to=prober, from_=str(event.to), type_="unavailable", id_=probe_id)
            )
        return HANDLED

    # -- helpers -------------------------------------------------------------------------------------------

    def _send_own_presence(self, owner: JID, contact: str) -> None:
        for session in self.ctx.sessions.available(owner):
            if session.presence is not None:
                stanza = copy_stanza(session.presence)
                stanza.set("from", str(session.jid))
                stanza.set("to", contact)
                self.ctx.send(stanza)

    def _send_unavailable(self, owner: JID, contact: str) -> None:
        for session in self.ctx.sessions.available(owner):
            self.ctx.send(make_stanza("presence", to=contact, from_=str(session.jid), type_="unavailable"))

    @staticmethod
    def _deliver_to(session: Any, stanza: etree._Element) -> None:
        copy = copy_stanza(stanza)
        copy.set("to", str(session.jid.bare))
        session.send(copy)

    def _run(self, coro: Any) -> Any:
        from twisted.internet.defer import Deferred

        return Deferred.fromCoroutine(coro)

    def _background(self, coro: Any) -> None:
        """Work that must not hold up the stanza (broadcasts): run it, and log failures."""
        self._run(coro).addErrback(lambda f: self.ctx.log.failure("presence broadcast failed", f))


def _as_bare(stanza: etree._Element, sender: str) -> etree._Element:
    """A subscription stanza as the contact's resources see it: from the sender's bare JID (s3.1.2)."""
    copy = copy_stanza(stanza)
    copy.set("from", sender)
    return copy
