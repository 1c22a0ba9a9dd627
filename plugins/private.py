"""Private XML storage (XEP-0049): any XML an account keeps on its server for itself (client preferences,
XEP-0048 bookmarks), one element per namespace and name.

* ``<query xmlns='jabber:iq:private'>`` get or set, addressed to one's own account only (no ``to``, or
  one's bare JID). To another account: ``forbidden`` (s2.3, the preferred of the two conditions allowed;
  s3, s4: nobody but the account may read or write it).
* A set holds one or more elements, each qualified by its own namespace (s2.3: "an IQ set ... MAY contain
  multiple elements"); each replaces what was stored under its ``{namespace}name``. A get names exactly
  one element and gets back what is stored under it, or that element empty when nothing is.
* A query without a child: ``not-acceptable`` (s2.3, a MUST; the example answers it so). A get naming
  several elements: ``bad-request`` (s2.3: a client MUST NOT query for more than one namespace at once).
* Reserved namespaces (``jabber:*``, ``http://jabber.org/*``, ``vcard-temp``, s2.3): ``not-acceptable``,
  for get and set. An element without a namespace of its own inherits ``jabber:iq:private`` and is
  refused the same way.
* ``max_size`` bounds the storage of one account: the total of the serialised elements it keeps, in
  bytes (default 65536). A per-item limit would leave the number of namespaces, and so the total,
  unbounded; stanzas are already bounded by ``[server] max_stanza_size``. A set that would go over the
  limit is refused with ``not-acceptable`` and changes nothing.

Storage is one document per account: ``{"{ns}name": "<xml/>"}``. A set reads, changes and writes that
document, so the sets of one account are run one after the other (a per-account DeferredLock): two sets
sent back to back both persist, whatever the latency of the storage backend.
"""

from __future__ import annotations

from typing import Any

from lxml import etree
from twisted.internet.defer import Deferred, DeferredLock, ensureDeferred
from xmppd.plugins.vcard import parse_payload, serialize_payload

from xmppd.plugin import Context, Option, Plugin
from xmppd.router import StanzaEvent
from xmppd.xml.stanza import add_child, payload

NS_PRIVATE = "jabber:iq:private"
RESERVED_PREFIXES = ("jabber:", "http://jabber.org/")
RESERVED = ("vcard-temp",)


def reserved(ns: str | None) -> bool:
    """Whether XEP-0049 s2.3 reserves the namespace (or the element has none)."""
    return not ns or ns in RESERVED or ns.startswith(RESERVED_PREFIXES)


class PrivateStorage(Plugin):
    """XEP-0049 jabber:iq:private for the accounts of a domain."""

    name = "private"
    options = {
        "max_size": Option(
            int, 65536, "bytes of serialised XML one account may keep, all namespaces together", min=1024
        ),
    }

    def setup(self, ctx: Context) -> None:
        ctx.hook_iq("get", NS_PRIVATE, "query", self.on_get, to="self")
        ctx.hook_iq("set", NS_PRIVATE, "query", self.on_set, to="self")
        for type_ in ("get", "set"):
            ctx.hook_iq(type_, NS_PRIVATE, "query", self.forbidden, to="bare")
        self.store = ctx.store()
        self._locks: dict[str, DeferredLock] = {}

    # -- helpers --------------------------------------------------------------------------------------

    @staticmethod
    def _children(event: StanzaEvent) -> list[etree._Element]:
        return [c for c in payload(event.stanza) if isinstance(c.tag, str)]

    @staticmethod
    def _check(event: StanzaEvent, children: list[etree._Element]) -> etree._Element | None:
        """The error for a query that is not acceptable, or None."""
        if not children:
            return event.error("not-acceptable", text="name an element in its own namespace")
        for child in children:
            if reserved(etree.QName(child).namespace):
                return event.error("not-acceptable", text="that namespace is reserved")
        return None

    def _serialised(self, user: str, fn: Any) -> Deferred[Any]:
        """Run ``fn()`` (a coroutine function) after every earlier call for ``user`` has finished."""
        lock = self._locks.get(user)
        if lock is None:
            lock = self._locks[user] = DeferredLock()

        def release(result: Any) -> Any:
            if not lock.locked and not lock.waiting and self._locks.get(user) is lock:
                del self._locks[user]
            return result

        return lock.run(lambda: ensureDeferred(fn())).addBoth(release)

    # -- handlers -------------------------------------------------------------------------------------

    def forbidden(self, event: StanzaEvent) -> Any:
        return event.error("forbidden", text="private data belongs to its account alone")

    async def on_get(self, event: StanzaEvent) -> Any:
        children = self._children(event)
        error = self._check(event, children)
        if error is not None:
            return error
        if len(children) > 1:
            return event.error("bad-request", text="ask for one element at a time")
        q = etree.QName(children[0])
        stored = (await self.store.get(event.to.local) or {}).get(q.text)
        reply = event.result()
        query = add_child(reply, NS_PRIVATE, "query")
        if stored is None:
            add_child(query, q.namespace, q.localname)
        else:
            query.append(parse_payload(stored))
        return reply

    def on_set(self, event: StanzaEvent) -> Any:
        children = self._children(event)
        error = self._check(event, children)
        if error is not None:
            return error
        items = {etree.QName(c).text: serialize_payload(c) for c in children}
        return self._serialised(event.to.local, lambda: self._update(event, items))

    async def _update(self, event: StanzaEvent, items: dict[str, str]) -> Any:
        document = dict(await self.store.get(event.to.local) or {})
        document.update(items)
        limit = self.ctx.option("max_size")
        if sum(len(xml.encode("utf-8")) for xml in document.values()) > limit:
            return event.error("not-acceptable", text=f"private storage is limited to {limit} bytes")
        await self.store.set(event.to.local, document)
        return event.result()
