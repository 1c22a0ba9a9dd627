"""Offline messages (XEP-0160): keep chat and normal messages for an account with no available resource,
and hand them to the first session that becomes available with a non-negative priority.

Storage (XEP-0160 s2, steps 2-4): the core fires ``message/offline`` for a ``chat`` or ``normal`` message
to an existing account that has no available resource of non-negative priority (RFC 6121 s8.5.2.2.1;
``headline`` and ``groupchat`` never get here, as XEP-0160 s3 recommends). The message is stored as the
stanza's XML text in the plugin's archive store (one item per message, with the sender and the time),
with a XEP-0203 ``<delay/>`` from the domain saying
when (XEP-0160 s2 recommends it). What is not stored:

* a message carrying the XEP-0334 ``<no-store/>`` hint (s4.2: not even temporarily for an offline
  client): the core answers it ``service-unavailable``, as for any message nobody stores, so the sender
  knows it was not delivered;
* a message with nothing to deliver later: no child but XEP-0085 chat states, ``<thread/>`` and hints.
  XEP-0160 s3 says chat messages with only chat-state content SHOULD NOT be stored, and XEP-0085
  ("Server Handling of Notifications") lets a server refuse standalone notifications; they are dropped
  silently, since bouncing "is typing" would only make noise. A ``<store/>`` hint (XEP-0334 s4.4)
  overrides this;
* anything once the account holds ``max_messages``: the sender gets ``service-unavailable`` (XEP-0160 s2,
  step 3: "because the recipient's offline message queue is full").

Delivery (XEP-0160 s2, step 5): when a session sends broadcast presence that makes it available with a
non-negative priority (its initial presence, or a priority raised from negative), every stored message
goes to that session in the order it arrived, and the store is emptied. Stored stanzas are sent as they
were, so a stanza stored for a full JID keeps that ``to``.

Reads and writes of one account's store run one at a time (a per-account queue that exists only while
work is pending), so messages arriving together are all kept and a delivery never races a store.
The domain advertises ``msgoffline`` (XEP-0160 s4). Deleting an account purges its store with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lxml import etree
from twisted.internet.defer import Deferred, DeferredLock, fail, gatherResults

from xmppd.plugin import Context, Option, Plugin
from xmppd.router import StanzaEvent
from xmppd.storage.base import ArchiveQuery
from xmppd.xml.delay import add_delay
from xmppd.xml.stanza import copy_stanza, parse_stanza
from xmppd.xml.writer import serialize

FEATURE = "msgoffline"
NS_HINTS = "urn:xmpp:hints"
NS_CHATSTATES = "http://jabber.org/protocol/chatstates"

#: Accounts with store work pending at once, and operations queued for one account, before new work is
#: refused with resource-constraint (DESIGN.md: nothing unbounded, even when storage is slow).
MAX_BUSY_ACCOUNTS = 10000
MAX_QUEUED_PER_ACCOUNT = 1000


class QueueFull(Exception):
    """Too much store work is pending (for one account, or overall)."""


class KeyedSerializer:
    """Runs operations one at a time per key (an account), in the order they were asked for.

    A key has an entry only while operations for it are running or queued, so the table empties when the
    server is idle; both the number of busy keys and the queue of one key are bounded (QueueFull).
    """

    def __init__(self, max_keys: int = MAX_BUSY_ACCOUNTS, max_queued: int = MAX_QUEUED_PER_ACCOUNT) -> None:
        self.max_keys = max_keys
        self.max_queued = max_queued
        self._locks: dict[str, DeferredLock] = {}

    def __len__(self) -> int:
        return len(self._locks)

    def run(self, key: str, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """``fn(*args)`` (a plain function, a coroutine function or one returning a Deferred) once the
        operations queued before it for ``key`` are done; a Deferred of its result."""
        lock = self._locks.get(key)
        if lock is None:
            if len(self._locks) >= self.max_keys:
                return fail(QueueFull(f"{len(self._locks)} accounts have store work pending"))
            lock = self._locks[key] = DeferredLock()
        elif len(lock.waiting) >= self.max_queued:
            return fail(QueueFull(f"{len(lock.waiting)} operations queued for {key}"))

        def done(result: Any) -> Any:
            if not lock.locked and not lock.waiting and self._locks.get(key) is lock:
                del self._locks[key]
            return result

        return lock.run(fn, *args).addBoth(done)


STORE, DROP, REFUSE = "store", "drop", "refuse"


def storage_decision(message: etree._Element) -> str:
    """What XEP-0160 s3 and the XEP-0334 hints say to do with a message for an offline account:
    STORE it, DROP it silently (chat states only, nothing to deliver) or REFUSE it (no-store)."""
    prefix = f"{{{NS_HINTS}}}"
    hints = {c.tag[len(prefix) :] for c in message if isinstance(c.tag, str) and c.tag.startswith(prefix)}
    if "no-store" in hints:
        return REFUSE  # XEP-0334 s4.2
    if "store" in hints:
        return STORE  # XEP-0334 s4.4
    for child in message:
        if not isinstance(child.tag, str) or child.tag == "thread":
            continue
        ns = etree.QName(child).namespace
        if ns not in (NS_CHATSTATES, NS_HINTS):
            return STORE  # a body, a subject, or any payload worth delivering later
    return DROP  # XEP-0160 s3, XEP-0085: standalone chat states (or nothing at all)


class OfflineMessages(Plugin):
    """XEP-0160 offline message storage and delivery, with XEP-0203 delay stamps."""

    name = "offline"
    options = {
        "max_messages": Option(int, 100, "messages kept per account while it is offline", min=1),
    }

    def setup(self, ctx: Context) -> None:
        ctx.add_feature(FEATURE)
        ctx.hook("message/offline", self.on_offline)
        # Above 0 so that it sees every broadcast presence; it never stops the presence (returns None).
        ctx.hook("pre-presence/bare", self.on_presence, priority=10)
        self.archive = ctx.archive()
        self.legacy = ctx.store()  # before archives existed: one keyval list per user, moved on first use
        self.queue = KeyedSerializer()
        # Who has messages waiting, and who has an old list, listed once at start and kept up to date
        # here: the initial presence of a user with nothing waiting then costs no storage read. None until
        # listed; users given messages meanwhile are remembered in _early.
        self._waiting: set[str] | None = None
        self._legacy_users: set[str] | None = None
        self._early: set[str] = set()
        gatherResults([self.archive.users(), self.legacy.users()], consumeErrors=True).addCallbacks(
            self._listed, lambda f: ctx.log.failure("listing stored offline messages failed", f)
        )

    def _listed(self, results: list[list[str]]) -> None:
        archived, legacy = results
        self._legacy_users = set(legacy)
        self._waiting = {*archived, *legacy, *self._early}
        self._early.clear()

    def _may_have_messages(self, user: str) -> bool:
        return self._waiting is None or user in self._waiting

    # -- storing ---------------------------------------------------------------------------------------

    def on_offline(self, event: StanzaEvent) -> Any:
        decision = storage_decision(event.stanza)
        if decision == DROP:
            return True
        if decision == REFUSE:
            return None  # the core answers service-unavailable: the message was not delivered
        d = self.queue.run(event.to.local, self._append, event)
        return d.addErrback(self._busy, event)

    def _busy(self, failure: Any, event: StanzaEvent) -> etree._Element:
        failure.trap(QueueFull)
        self.ctx.log.warn(
            "offline message for {user} refused: {reason}", user=event.to.bare, reason=failure.value
        )
        return event.error("resource-constraint")

    async def _append(self, event: StanzaEvent) -> Any:
        user = event.to.local
        await self._move_legacy(user)
        stored = (await self.archive.query(user, ArchiveQuery(limit=0))).count
        limit = self.ctx.option("max_messages")
        if stored >= limit:
            # XEP-0160 s2 step 3: a full queue means service-unavailable to the sender.
            self.ctx.log.info(
                "offline store of {user} is full ({count} messages); a message from {sender} was refused",
                user=event.to.bare,
                count=stored,
                sender=event.from_,
            )
            return event.error("service-unavailable", "cancel")
        now = self.ctx.clock.seconds()
        message = copy_stanza(event.stanza)
        message.tail = None
        add_delay(message, self.ctx.domain, now, "Offline Storage")
        await self.archive.append(user, serialize(message).decode("utf-8"), when=now, with_=str(event.from_))
        (self._early if self._waiting is None else self._waiting).add(user)
        self.ctx.log.debug(
            "stored an offline message for {user} from {sender}", user=event.to.bare, sender=event.from_
        )
        return True

    async def _move_legacy(self, user: str) -> None:
        """Messages stored by xmppd before archives (a keyval list) move to the archive, in order."""
        if self._legacy_users is not None and user not in self._legacy_users:
            return  # the common case: nothing was ever stored the old way for this user
        legacy: list[str] | None = await self.legacy.get(user)
        if not legacy:
            return
        now = self.ctx.clock.seconds()
        for text in legacy:
            try:
                sender = parse_stanza(text).get("from")
            except ValueError:
                sender = None
            await self.archive.append(user, text, when=now, with_=sender)
        await self.legacy.set(user, None)
        if self._legacy_users is not None:
            self._legacy_users.discard(user)

    # -- delivering ------------------------------------------------------------------------------------

    def on_presence(self, event: StanzaEvent) -> None:
        """Broadcast presence of a session: deliver when it turns available with priority >= 0."""
        session = event.origin
        change = event.presence_change
        if session is None or change is None or event.stanza.get("to") is not None:
            return None
        # The router has recorded the new availability and priority on the session already.
        eligible = change != "unavailable" and self._eligible(session)
        was_eligible = session.data.get(self.name, False)
        session.data[self.name] = eligible
        if eligible and not was_eligible:
            d = self.queue.run(session.jid.local, self._deliver, session)
            d.addErrback(
                lambda f: self.ctx.log.failure(
                    "delivering offline messages to {jid} failed", f, jid=session.jid
                )
            )
        return None

    def _eligible(self, session: Any) -> bool:
        """Still bound, available, and with a non-negative priority (XEP-0160 s2 step 5)."""
        return (
            self.ctx.sessions.get(session.jid) is session
            and session.priority is not None
            and session.priority >= 0
        )

    async def _deliver(self, session: Any) -> None:
        user = session.jid.local
        if not self._may_have_messages(user):
            return
        await self._move_legacy(user)
        page = await self.archive.query(user)
        if not page.items:
            if self._waiting is not None and page.complete:
                self._waiting.discard(user)
            return
        if not self._eligible(session):
            return  # the session went away meanwhile: keep them for the next one
        for item in page.items:
            try:
                message = parse_stanza(item.value)
            except ValueError as e:
                self.ctx.log.error(
                    "an offline message of {user} could not be read: {error}", user=user, error=e
                )
                continue
            session.send(message)
        await self.archive.delete(user, ids=[item.id for item in page.items])
        if self._waiting is not None and page.complete:
            self._waiting.discard(user)  # all delivered (appends wait for us in the per-user queue)
        self.ctx.log.info(
            "delivered {count} offline message(s) to {jid}", count=len(page.items), jid=session.jid
        )
