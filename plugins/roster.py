"""Roster management (RFC 6121 s2) with roster versioning (s2.6, XEP-0237).

The roster of an account is one document in the ``roster`` store::

    {"ver": 7,
     "items": {"juliet@example.com": {"name": "Juliet", "groups": ["Friends"], "subscription": "both",
                                      "ask": false, "approved": false}},
     "pending": {"nurse@example.com": "<presence type='subscribe' .../>"}}

``items`` are the roster items; ``pending`` holds inbound subscription requests not yet answered, which are
not roster items (s3.1.3). Every change goes through ``modify``, which serialises changes per account,
bumps ``ver`` and pushes changed items to the account's interested resources (s2.1.6: those that asked for
the roster). The presence plugin drives the subscription states through the same API.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lxml import etree
from twisted.internet.defer import Deferred, DeferredLock

from xmppd.jid import JID, JIDError, parse_jid
from xmppd.plugin import Context, Option, Plugin
from xmppd.router import StanzaEvent
from xmppd.xml.stanza import add_child, add_text, make_stanza

NS_ROSTER = "jabber:iq:roster"
NS_ROSTERVER = "urn:xmpp:features:rosterver"
SUBSCRIPTIONS = ("none", "to", "from", "both")

Doc = dict[str, Any]


def empty_roster() -> Doc:
    return {"ver": 0, "items": {}, "pending": {}}


def new_item() -> dict[str, Any]:
    return {"name": None, "groups": [], "subscription": "none", "ask": False, "approved": False}


class SubscriptionQuery:
    """Asked through the ``roster-subscription`` event: the subscription ``owner`` has to ``contact``."""

    def __init__(self, owner: JID, contact: JID) -> None:
        self.owner = owner
        self.contact = contact


class Roster(Plugin):
    """jabber:iq:roster get, set and remove, pushes, versioning; the roster API for other plugins."""

    name = "roster"
    options = {
        "max_items": Option(int, 1000, "items one roster may hold", min=1),
        "max_text": Option(int, 1024, "longest item name or group name, in characters", min=1),
    }

    def setup(self, ctx: Context) -> None:
        self.store = ctx.store("roster")
        self._locks: dict[str, DeferredLock] = {}
        ctx.hook_iq("get", NS_ROSTER, "query", self.on_get, to="self")
        ctx.hook_iq("set", NS_ROSTER, "query", self.on_set, to="self")
        ctx.hook_iq("get", NS_ROSTER, "query", self.forbidden, to=("bare", "host"))
        ctx.hook_iq("set", NS_ROSTER, "query", self.forbidden, to=("bare", "host"))
        ctx.hook("stream-features", self.on_features)
        ctx.hook("roster-subscription", self.on_subscription_query)
        ctx.hook("presence-authorized", self.on_presence_authorized)
        ctx.hook("user-deleting", self.on_user_deleting)

    # -- API for other plugins -----------------------------------------------------------------------------

    async def load(self, user: str) -> Doc:
        """The roster document of account ``user`` (a localpart on this domain)."""
        doc = await self.store.get(user)
        return doc if doc is not None else empty_roster()

    async def modify(
        self,
        user: str,
        change: Callable[[Doc], list[str] | None],
        before_push: Callable[[], None] | None = None,
    ) -> Any:
        """Apply ``change(doc)`` under the account's lock and save. ``change`` returns the contact JIDs whose
        items it changed (or None); those are pushed with the new version. ``before_push`` runs once the
        change is saved, before the pushes (for stanzas that must reach the user first, RFC 6121 s3.1.6).
        Returns the list of changed contacts."""
        lock = self._locks.setdefault(user, DeferredLock())
        await lock.acquire()
        try:
            doc = await self.load(user)
            changed = change(doc) or []
            if changed:
                doc["ver"] = int(doc.get("ver", 0)) + 1
            await self.store.set(user, doc)
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._locks.pop(user, None)
        if before_push is not None:
            before_push()
        for contact in changed:
            self.push(user, contact, doc["items"].get(contact), doc["ver"])
        return changed

    async def subscription(self, user: str, contact: JID) -> str:
        """The subscription state of ``contact`` (a bare JID) in ``user``'s roster: none/to/from/both."""
        item = (await self.load(user))["items"].get(str(contact.bare))
        return item["subscription"] if item else "none"

    def interested(self, bare: JID) -> list[Any]:
        """The account's interested resources: those that asked for the roster (s2.2)."""
        return [s for s in self.ctx.sessions.sessions_of(bare) if s.data.get("roster")]

    def push(self, user: str, contact: str, item: dict[str, Any] | None, ver: int) -> None:
        """A roster push (s2.1.6) of one item, or its removal when ``item`` is None, to every interested
        resource of the account."""
        for session in self.interested(JID(user, self.ctx.domain)):
            iq = make_stanza("iq", to=str(session.jid), type_="set", id_=f"push{ver}")
            query = add_child(iq, NS_ROSTER, "query")
            query.set("ver", str(ver))
            query.append(item_element(contact, item))
            session.send(iq)

    # -- protocol ------------------------------------------------------------------------------------------

    async def on_get(self, event: StanzaEvent) -> etree._Element:
        """s2.1.3 roster get; s2.6.3: an unchanged version is answered with an empty result."""
        doc = await self.load(event.from_.local)
        if event.origin is not None:
            event.origin.data["roster"] = True  # an interested resource from now on
        asked = event.stanza[0].get("ver")
        reply = event.result()
        if asked is not None and asked == str(doc["ver"]):
            return reply
        query = add_child(reply, NS_ROSTER, "query")
        query.set("ver", str(doc["ver"]))
        for contact, item in doc["items"].items():
            query.append(item_element(contact, item))
        return reply

    async def on_set(self, event: StanzaEvent) -> etree._Element:
        """s2.1.5 roster set and s2.5 remove, with the error cases of s2.3.3 and s2.5.3."""
        items = [c for c in event.stanza[0] if c.tag == f"{{{NS_ROSTER}}}item"]
        if len(items) != 1:
            return event.error("bad-request", text="a roster set carries exactly one item")
        el = items[0]
        try:
            contact = parse_jid(el.get("jid") or "")
        except JIDError:
            return event.error("jid-malformed", text="the item's jid is not a valid JID")
        key = str(contact)
        user = event.from_.local
        if el.get("subscription") == "remove":
            return await self._remove(event, user, key)
        groups = [g.text or "" for g in el.findall(f"{{{NS_ROSTER}}}group")]
        name = el.get("name")
        limit = self.ctx.option("max_text")
        if any(not g for g in groups):
            return event.error("not-acceptable", text="a group name is empty")
        if len(set(groups)) != len(groups):
            return event.error("bad-request", text="a group is listed twice")
        if any(len(g) > limit for g in groups) or (name and len(name) > limit):
            return event.error("not-acceptable", text=f"names are limited to {limit} characters")

        def change(doc: Doc) -> list[str] | None:
            item = doc["items"].get(key)
            if item is None:
                if len(doc["items"]) >= self.ctx.option("max_items"):
                    raise RosterFull()
                item = doc["items"][key] = new_item()
            # s2.1.2.2, s2.1.2.5: 'ask' and 'subscription' (other than remove) from clients are ignored.
            item["name"] = name or None
            item["groups"] = groups
            return [key]

        try:
            await self.modify(user, change)
        except RosterFull:
            return event.error("not-allowed", text="the roster is full")
        return event.result()

    async def _remove(self, event: StanzaEvent, user: str, key: str) -> etree._Element:
        removed: dict[str, Any] = {}

        def change(doc: Doc) -> list[str] | None:
            item = doc["items"].pop(key, None)
            if item is None:
                return None
            removed.update(item)
            return [key]

        if not await self.modify(user, change):
            return event.error("item-not-found")  # s2.5.3
        # s2.5.2: cancel the subscriptions both ways by telling the contact.
        subscription = removed.get("subscription", "none")
        owner = str(event.from_.bare)
        if subscription in ("to", "both") or removed.get("ask"):
            self.ctx.send(make_stanza("presence", to=key, from_=owner, type_="unsubscribe"))
        if subscription in ("from", "both"):
            # s3.2.2: the contact gets unavailable from every available resource while still subscribed
            for session in self.ctx.sessions.available(event.from_.bare):
                self.ctx.send(make_stanza("presence", to=key, from_=str(session.jid), type_="unavailable"))
            self.ctx.send(make_stanza("presence", to=key, from_=owner, type_="unsubscribed"))
        return event.result()

    def on_user_deleting(self, account: JID) -> Any:
        """An account is being deleted: its contacts' subscriptions are cancelled both ways, as a roster
        removal of every item would (s2.5.2), so their rosters do not keep a dead subscription."""

        async def cancel() -> None:
            doc = await self.load(account.local)
            owner = str(account.bare)
            for contact, item in doc["items"].items():
                if item["subscription"] in ("to", "both") or item.get("ask"):
                    self.ctx.send(make_stanza("presence", to=contact, from_=owner, type_="unsubscribe"))
                if item["subscription"] in ("from", "both"):
                    self.ctx.send(make_stanza("presence", to=contact, from_=owner, type_="unsubscribed"))
            for contact in doc["pending"]:
                self.ctx.send(make_stanza("presence", to=contact, from_=owner, type_="unsubscribed"))

        if account.domain != self.ctx.domain or account.local is None:
            return None
        return Deferred.fromCoroutine(cancel())

    def forbidden(self, event: StanzaEvent) -> etree._Element:
        """s2.1.5: a roster is managed by its own account only."""
        return event.error("forbidden")

    def on_features(self, event: Any) -> None:
        if event.stream.user is not None and not event.stream.bound:
            add_child(event.features, NS_ROSTERVER, "ver")

    def on_subscription_query(self, query: SubscriptionQuery) -> Any:
        if query.owner.domain != self.ctx.domain or query.owner.local is None:
            return None
        return Deferred.fromCoroutine(self.subscription(query.owner.local, query.contact))

    def on_presence_authorized(self, event: StanzaEvent) -> Any:
        """Others may see presence-like data of an account they are subscribed to (from/both)."""
        if event.to.local is None:
            return None

        async def check() -> bool | None:
            state = await self.subscription(event.to.local, event.from_.bare)
            return True if state in ("from", "both") else None

        return Deferred.fromCoroutine(check())


class RosterFull(Exception):
    pass


def item_element(contact: str, item: dict[str, Any] | None) -> etree._Element:
    """The <item/> of a roster result or push; removal is subscription='remove' (s2.5.2)."""
    el = etree.Element(f"{{{NS_ROSTER}}}item", nsmap={None: NS_ROSTER})
    el.set("jid", contact)
    if item is None:
        el.set("subscription", "remove")
        return el
    if item.get("name"):
        el.set("name", item["name"])
    el.set("subscription", item.get("subscription", "none"))
    if item.get("ask"):
        el.set("ask", "subscribe")
    if item.get("approved"):
        el.set("approved", "true")
    for group in item.get("groups", []):
        add_text(el, "group", group)
    return el
