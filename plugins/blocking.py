"""Blocking command (XEP-0191): a user's list of JIDs whose communications the server blocks.

Protocol (iqs a client sends with no 'to', handled for the user's own account):

* ``<blocklist/>`` get returns the list (s3.2); the session is then "interested" and receives pushes;
* ``<block/>`` set with one or more ``<item jid/>`` adds them (s3.3); no item is ``bad-request``, a JID
  that does not prepare is ``jid-malformed``, one's own account is ``not-acceptable``, and a list
  growing beyond ``max_items`` is ``policy-violation`` (XEP-0191 sets no limit; RFC 6120 s8.3.3.12 is
  the condition for a local service policy, which a quota is);
* ``<unblock/>`` set with items removes them (s3.4); with none, it empties the list (s3.5).

After a change, every interested resource of the user gets the same ``<block/>`` or ``<unblock/>`` as an
iq set from the user's bare JID (s3.3, s3.4, s3.5 "push"). On block, each available resource of the user
sends unavailable presence to each newly blocked JID (s3.3), whatever the subscription: directed presence
(RFC 6121 s4.6) may have reached it without one, and unavailable presence discloses nothing. On unblock,
a JID the user's presence is subscribed to (the ``roster-subscription`` event answers ``from`` or
``both``) gets the current presence of every available resource (s3.4).

Enforcement, matching JIDs by s6 (the XEP-0016 s2.1 order: full JID, bare JID, domain/resource, domain;
a domain item also matches its subdomains):

* inbound, before anything handles it (``incoming-*`` events): a stanza from a blocked JID is not
  delivered (s3.3): ``service-unavailable`` for a chat or normal message and for an iq get or set, so
  the user appears offline; presence, other messages, iq results and errors are dropped silently.
  Stanzas from the user's own account and from the user's server are never blocked;
* outbound, a stanza the user's client sends to a blocked JID (``pre-*`` events) is not routed: message
  and iq get/set are answered ``<not-acceptable/>`` with ``<blocked xmlns='urn:xmpp:blocking:errors'/>``
  (s3.3); presence, errors and iq results are dropped silently (presence carries no request to answer,
  the same choice as Prosody's mod_blocklist);
* presence the server produces on the user's behalf (a presence plugin's broadcast or probe, routed with
  ``ctx.send``) to a blocked JID is dropped too, unless it is unavailable presence or an error, so a
  blocked contact never sees the user's presence (s3.3). This covers recipients on this domain and
  remote ones (``route/remote``), not accounts of another domain of the same server.

The lists of users with a session are kept in memory (loaded when a session starts, dropped when the
user's last session ends), so enforcement does not read storage per stanza; a stanza for a user who is
offline is checked with one storage read. Changes to one user's list run one at a time.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any

from lxml import etree
from twisted.internet.defer import Deferred
from xmppd.plugins.offline import KeyedSerializer, QueueFull

from xmppd.jid import JID, JIDError, parse_jid
from xmppd.plugin import Context, Option, Plugin
from xmppd.router import StanzaEvent
from xmppd.xml.stanza import add_child, copy_stanza, make_stanza

NS_BLOCKING = "urn:xmpp:blocking"
NS_BLOCKING_ERRORS = "urn:xmpp:blocking:errors"
ITEM = f"{{{NS_BLOCKING}}}item"
HANDLED = True
PRIORITY = 100  # before other filters and handlers (presence plugin: 50)


class Blocklist:
    """One user's blocked JIDs: ``items`` in the order they were blocked, and fast matching."""

    __slots__ = ("items", "_texts", "_jids", "_domains")

    def __init__(self, items: Iterable[str] = ()) -> None:
        self.items: tuple[str, ...] = tuple(items)
        self._texts = frozenset(self.items)
        jids = set()
        for item in self.items:
            try:
                jids.add(parse_jid(item))
            except JIDError:
                continue  # stored by an older version or by hand: ignore what cannot match
        self._jids = frozenset(jids)
        self._domains = frozenset(j.domain for j in jids if j.local is None and j.resource is None)

    def __bool__(self) -> bool:
        return bool(self._jids)

    def __contains__(self, item: str) -> bool:
        return item in self._texts

    def matches(self, jid: JID) -> bool:
        """XEP-0191 s6 / XEP-0016 s2.1: the items are checked against the sender's <user@domain/resource>,
        <user@domain>, <domain/resource> and <domain>, in that order; so a full JID item matches only
        that resource, a bare JID item any resource, a <domain/resource> item that resource at the domain
        (of any user), and a <domain> item the domain, every address at it and at its subdomains."""
        jids = self._jids
        if not jids:
            return False
        if jid in jids:
            return True
        if jid.local is not None and JID(jid.local, jid.domain) in jids:
            return True
        if jid.resource is not None and JID(None, jid.domain, jid.resource) in jids:
            return True
        domains = self._domains
        if not domains:
            return False
        domain = jid.domain
        if domain in domains:
            return True
        if domain.startswith("[") or domain.rsplit(".", 1)[-1].isdigit():
            return False  # an IP address has no subdomains
        while "." in domain:
            domain = domain.split(".", 1)[1]
            if domain in domains:
                return True
        return False


class SubscriptionQuery:
    """Asked through the ``roster-subscription`` event: the subscription ``owner`` has to ``contact``
    ("none", "to", "from" or "both"; None without a roster plugin)."""

    def __init__(self, owner: JID, contact: JID) -> None:
        self.owner = owner
        self.contact = contact


class BadRequest(Exception):
    def __init__(self, condition: str, text: str | None = None) -> None:
        super().__init__(condition)
        self.condition = condition
        self.text = text


def _when(value: Any, then: Any) -> Any:
    """``then(value)``, or a Deferred of it when ``value`` is a Deferred."""
    if isinstance(value, Deferred):
        return value.addCallback(then)
    return then(value)


class Blocking(Plugin):
    """XEP-0191: the block list protocol, pushes, and enforcement in both directions."""

    name = "blocking"
    options = {
        "max_items": Option(int, 1000, "JIDs one block list may hold (more: policy-violation)", min=1),
    }

    def setup(self, ctx: Context) -> None:
        ctx.add_feature(NS_BLOCKING)  # s3.1
        ctx.hook_iq("get", NS_BLOCKING, "blocklist", self.on_blocklist, to="self")
        ctx.hook_iq("set", NS_BLOCKING, "block", self.on_block, to="self")
        ctx.hook_iq("set", NS_BLOCKING, "unblock", self.on_unblock, to="self")
        for kind in ("message", "presence", "iq"):
            for to in ("bare", "full"):
                ctx.hook(f"incoming-{kind}/{to}", self.inbound, PRIORITY)
            for to in ("bare", "full", "host"):
                ctx.hook(f"pre-{kind}/{to}", self.outbound, PRIORITY)
        ctx.hook("route/remote", self.server_presence_remote, PRIORITY)
        ctx.hook("session-started", self.on_session_started)
        ctx.hook("session-ended", self.on_session_ended)
        ctx.hook("user-deleted", self.on_user_deleted)
        self.store = ctx.store()
        self.queue = KeyedSerializer()
        self._cache: dict[str, Blocklist] = {}  # localpart -> list, for users with a session
        self._ids = itertools.count(1)

    # -- the list --------------------------------------------------------------------------------------

    def _online(self, user: str) -> bool:
        return bool(self.ctx.sessions.sessions_of(JID(user, self.ctx.domain)))

    def blocklist(self, user: str) -> Blocklist | Deferred[Blocklist]:
        """The user's list: at once from memory when cached, else a Deferred of a storage read (cached
        if the user has a session by then)."""
        cached = self._cache.get(user)
        if cached is not None:
            return cached

        def loaded(items: list[str] | None) -> Blocklist:
            current = self._cache.get(user)
            if current is not None:
                return current  # cached (or changed) while we read
            blocklist = Blocklist(items or ())
            if self._online(user):
                self._cache[user] = blocklist
            return blocklist

        return self.store.get(user).addCallback(loaded)

    def is_blocked(self, user: str, jid: JID) -> bool | Deferred[bool]:
        """Whether ``user`` (a localpart of this domain) blocks ``jid``."""
        return _when(self.blocklist(user), lambda blocklist: blocklist.matches(jid))

    async def _current(self, user: str) -> Blocklist:
        result = self.blocklist(user)
        if isinstance(result, Deferred):
            return await result
        return result

    async def _save(self, user: str, items: Sequence[str]) -> None:
        blocklist = Blocklist(items)
        if self._online(user):
            self._cache[user] = blocklist  # enforced from now on, before the write completes
        else:
            self._cache.pop(user, None)
        await self.store.set(user, list(items) or None)

    # -- sessions --------------------------------------------------------------------------------------

    def on_session_started(self, event: Any) -> None:
        result = self.blocklist(event.session.jid.local)  # warm the cache
        if isinstance(result, Deferred):
            result.addErrback(lambda f: self.ctx.log.failure("loading a block list failed", f))

    def on_session_ended(self, event: Any) -> None:
        jid = event.session.jid
        if jid is not None and not self.ctx.sessions.sessions_of(jid.bare):
            self._cache.pop(jid.local, None)

    def on_user_deleted(self, account: Any) -> None:
        local = getattr(account, "local", None)
        if local is not None:
            self._cache.pop(local, None)

    # -- the protocol (s3.2 - s3.5) --------------------------------------------------------------------

    async def on_blocklist(self, event: StanzaEvent) -> etree._Element:
        if event.origin is not None:
            event.origin.data[self.name] = True  # s3.3: only sessions that asked get pushes
        blocklist = await self._current(event.from_.local)
        reply = event.result()
        payload = add_child(reply, NS_BLOCKING, "blocklist")
        for jid in blocklist.items:
            add_child(payload, NS_BLOCKING, "item").set("jid", jid)
        return reply

    def _items(self, event: StanzaEvent) -> list[str]:
        """The prepared JIDs of the payload's items; BadRequest for a missing or malformed one."""
        result: dict[str, None] = {}  # ordered, without duplicates
        for item in event.stanza[0].iterchildren(ITEM):
            text = item.get("jid")
            if not text:
                raise BadRequest("bad-request", "an item needs a jid")
            try:
                result[str(parse_jid(text))] = None
            except JIDError as e:
                raise BadRequest("jid-malformed", str(e)) from None
        return list(result)

    def on_block(self, event: StanzaEvent) -> Any:
        try:
            items = self._items(event)
        except BadRequest as e:
            return event.error(e.condition, text=e.text)
        if not items:
            return event.error("bad-request", text="block needs at least one item")  # s3.3
        limit = self.ctx.option("max_items")
        if len(items) > limit:
            return event.error("policy-violation", text=f"a block list holds at most {limit} JIDs")
        own = event.from_.bare
        if any(parse_jid(jid).bare == own for jid in items):
            return event.error("not-acceptable", text="an account cannot block itself")
        return self._serialized(event, self._block, event, items)

    def on_unblock(self, event: StanzaEvent) -> Any:
        try:
            items = self._items(event)
        except BadRequest as e:
            return event.error(e.condition, text=e.text)
        return self._serialized(event, self._unblock, event, items)

    def _serialized(self, event: StanzaEvent, fn: Any, *args: Any) -> Deferred[Any]:
        def busy(failure: Any) -> etree._Element:
            failure.trap(QueueFull)
            return event.error("resource-constraint")

        return self.queue.run(event.from_.local, fn, *args).addErrback(busy)

    async def _block(self, event: StanzaEvent, items: list[str]) -> Any:
        user = event.from_.local
        current = await self._current(user)
        added = [jid for jid in items if jid not in current]
        limit = self.ctx.option("max_items")
        if len(current.items) + len(added) > limit:
            return event.error("policy-violation", text=f"a block list holds at most {limit} JIDs")
        if added:
            await self._save(user, [*current.items, *added])
        owner = event.from_.bare
        self.ctx.send(event.result())  # the answer first, then the pushes (as in s3.3's examples)
        self._push(owner, "block", items)
        for jid in added:  # s3.3: the blocked JID no longer sees the user online
            for session in self.ctx.sessions.available(owner):
                self.ctx.send(make_stanza("presence", to=jid, from_=str(session.jid), type_="unavailable"))
        self.ctx.log.info("{user} blocked {count} JID(s)", user=owner, count=len(added))
        return HANDLED

    async def _unblock(self, event: StanzaEvent, items: list[str]) -> Any:
        user = event.from_.local
        current = await self._current(user)
        if items:
            removed = [jid for jid in items if jid in current]
            unblocked = set(removed)
            remaining = [jid for jid in current.items if jid not in unblocked]
        else:
            removed, remaining = list(current.items), []  # s3.5: unblock all
        if removed:
            await self._save(user, remaining)
        owner = event.from_.bare
        self.ctx.send(event.result())
        self._push(owner, "unblock", items)
        for jid in removed:
            await self._resend_presence(owner, parse_jid(jid))
        self.ctx.log.info("{user} unblocked {count} JID(s)", user=owner, count=len(removed))
        return HANDLED

    def _push(self, owner: JID, action: str, items: Sequence[str]) -> None:
        """s3.3, s3.4, s3.5: the change to every resource that asked for the list."""
        for session in self.ctx.sessions.sessions_of(owner):
            if not session.data.get(self.name):
                continue
            iq = make_stanza(
                "iq", to=str(session.jid), from_=str(owner), type_="set", id_=f"block-push-{next(self._ids)}"
            )
            payload = add_child(iq, NS_BLOCKING, action)
            for jid in items:
                add_child(payload, NS_BLOCKING, "item").set("jid", jid)
            self.ctx.send(iq)

    async def _resend_presence(self, owner: JID, contact: JID) -> None:
        """s3.4: the user's current presence to an unblocked JID that is subscribed to it."""
        answer = self.ctx.fire("roster-subscription", SubscriptionQuery(owner, contact.bare))
        if isinstance(answer, Deferred):
            answer = await answer
        if answer not in ("from", "both"):
            return
        for session in self.ctx.sessions.available(owner):
            if session.presence is None:
                continue
            presence = copy_stanza(session.presence)
            presence.tail = None
            presence.set("from", str(session.jid))
            presence.set("to", str(contact))
            self.ctx.send(presence)

    # -- enforcement -----------------------------------------------------------------------------------

    def inbound(self, event: StanzaEvent) -> Any:
        """A stanza to a local account: blocked if the account blocks the sender (s3.3), or if it is
        presence the server produced for a local user who blocks the recipient."""
        local = event.to.local
        if local is None:
            return None
        if not self._cache.get(local, True) and (event.origin is not None or event.kind != "presence"):
            return None  # the fast path: an online user who blocks nobody (checked per delivery)
        owner = event.to.bare
        sender = event.from_
        if sender.bare == owner:
            return None
        if sender.local is None and sender.domain == owner.domain:
            return None  # the user's own server

        def decide(blocked: bool) -> Any:
            if blocked:
                return self._refuse_inbound(event)
            if event.origin is None and event.kind == "presence" and sender.domain == self.ctx.domain:
                return self.server_presence(event)
            return None

        return _when(self.is_blocked(owner.local, sender), decide)

    @staticmethod
    def _refuse_inbound(event: StanzaEvent) -> Any:
        """s3.3: the user appears offline. Errors for message (chat/normal) and iq get/set, silence else."""
        if event.kind == "iq" and event.type in ("get", "set"):
            return event.error("service-unavailable")
        if event.kind == "message" and (event.type or "normal") in ("normal", "chat"):
            return event.error("service-unavailable")
        return HANDLED

    def outbound(self, event: StanzaEvent) -> Any:
        """A stanza the user's client sends to a JID it blocked (s3.3): not routed."""
        session = event.origin
        if session is None or not self._cache.get(event.from_.local, True):
            return None  # not a client's stanza, or the fast path: a sender who blocks nobody
        owner = event.from_.bare
        if event.stanza.get("to") is None or event.to.bare == owner:
            return None
        if event.to.local is None and event.to.domain == owner.domain:
            return None  # the user's own server stays reachable

        def decide(blocked: bool) -> Any:
            if not blocked:
                return None
            if event.kind == "presence" or event.type == "error" or event.type == "result":
                return HANDLED
            error = event.error("not-acceptable", "cancel")
            add_child(error.find("error"), NS_BLOCKING_ERRORS, "blocked")
            session.send(error)  # straight back: routed, it would come "from" the blocked JID
            return HANDLED

        return _when(self.is_blocked(owner.local, event.to), decide)

    def server_presence(self, event: StanzaEvent) -> Any:
        """Presence the server sends for a local user (origin None) to a JID that user blocked: dropped,
        unless it is unavailable presence or an error (s3.3: the contact must not see the presence)."""
        sender = event.from_
        if event.type in ("unavailable", "error") or sender.local is None or sender.bare == event.to.bare:
            return None
        return _when(self.is_blocked(sender.local, event.to), lambda blocked: HANDLED if blocked else None)

    def server_presence_remote(self, event: StanzaEvent) -> Any:
        if event.origin is not None or event.kind != "presence" or event.from_.domain != self.ctx.domain:
            return None  # a client's own stanzas went through outbound() already
        return self.server_presence(event)
