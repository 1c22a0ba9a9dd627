"""Service discovery (XEP-0030): disco#info and disco#items for the server and for accounts.

Nothing here knows other features: every plugin announces its own through ``ctx.add_feature``,
``add_identity``, ``add_extension`` (XEP-0128 forms) and ``add_item``, and this plugin reports what the
domain has at the moment of the query, so loading or unloading a plugin changes the answer at once.
"""

from __future__ import annotations

from typing import Any

from lxml import etree
from twisted.internet.defer import Deferred, succeed

from xmppd.plugin import Context, Plugin
from xmppd.router import StanzaEvent
from xmppd.xml.stanza import add_child, copy_stanza

NS_INFO = "http://jabber.org/protocol/disco#info"
NS_ITEMS = "http://jabber.org/protocol/disco#items"


def info_query(host: Any) -> etree._Element:
    """The domain's disco#info ``<query/>`` (XEP-0030 s3.1): identities (each once), features and
    XEP-0128 forms as the loaded plugins declare them now. The caps plugin hashes the same query."""
    query = etree.Element(f"{{{NS_INFO}}}query", nsmap={None: NS_INFO})
    for category, type_, name in sorted({(c, t, n or "") for c, t, n, _ in host.identities}):
        identity = add_child(query, NS_INFO, "identity")
        identity.set("category", category)
        identity.set("type", type_)
        if name:
            identity.set("name", name)
    for var in sorted(host.features):
        add_child(query, NS_INFO, "feature").set("var", var)
    for form, _ in host.extensions:
        query.append(copy_stanza(form))
    return query


def presence_authorized(event: StanzaEvent) -> Deferred[bool]:
    """Whether the sender may see the addressed account's presence-like data: its owner always; others
    when a plugin (the roster: a subscription from/both) answers the ``presence-authorized`` event with
    True."""
    if event.from_.bare == event.to.bare:
        return succeed(True)
    answer = event.host.bus.fire("presence-authorized", event)
    if isinstance(answer, Deferred):
        return answer.addCallback(lambda result: result is True)
    return succeed(answer is True)


class ServiceDiscovery(Plugin):
    """XEP-0030 for the domain (s3, s4) and for accounts answered by the server (s3.1, s4.1)."""

    name = "disco"

    def setup(self, ctx: Context) -> None:
        ctx.add_feature(NS_INFO)
        ctx.add_feature(NS_ITEMS)
        ctx.add_identity("server", "im", "xmppd")
        ctx.add_feature(NS_INFO, account=True)
        ctx.add_feature(NS_ITEMS, account=True)
        ctx.hook_iq("get", NS_INFO, "query", self.host_info, to="host")
        ctx.hook_iq("get", NS_ITEMS, "query", self.host_items, to="host")
        ctx.hook_iq("get", NS_INFO, "query", self.account_info, to=("self", "bare"))
        ctx.hook_iq("get", NS_ITEMS, "query", self.account_items, to=("self", "bare"))

    def _reply(self, event: StanzaEvent, ns: str) -> tuple[etree._Element, etree._Element]:
        reply = event.result()
        query = add_child(reply, ns, "query")
        node = event.stanza[0].get("node")
        if node:
            query.set("node", node)
        return reply, query

    def host_info(self, event: StanzaEvent) -> Any:
        if event.stanza[0].get("node"):
            return event.error("item-not-found")  # no nodes are defined on the domain yet
        reply = event.result()
        reply.append(info_query(event.host))
        return reply

    def host_items(self, event: StanzaEvent) -> Any:
        if event.stanza[0].get("node"):
            return event.error("item-not-found")
        reply, query = self._reply(event, NS_ITEMS)
        for jid, name, _ in event.host.items:
            item = add_child(query, NS_ITEMS, "item")
            item.set("jid", jid)
            if name:
                item.set("name", name)
        return reply

    async def _account(self, event: StanzaEvent, answer: Any) -> Any:
        # s3.1: to someone not authorized, answer as if the account did not exist.
        if not await presence_authorized(event) or not await event.server.accounts.exists(event.to.bare):
            return event.error("service-unavailable")
        return answer(event)

    def account_info(self, event: StanzaEvent) -> Any:
        def answer(event: StanzaEvent) -> etree._Element:
            if event.stanza[0].get("node"):
                return event.error("item-not-found")
            reply, query = self._reply(event, NS_INFO)
            identity = add_child(query, NS_INFO, "identity")
            identity.set("category", "account")
            identity.set("type", "registered")
            for var in sorted(event.host.account_features):
                add_child(query, NS_INFO, "feature").set("var", var)
            return reply

        return self._account(event, answer)

    def account_items(self, event: StanzaEvent) -> Any:
        return self._account(event, lambda e: self._reply(e, NS_ITEMS)[0])
