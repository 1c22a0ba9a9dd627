"""vcard-temp (XEP-0054): each account's vCard, stored by the server and readable by everyone.

* A get to one's own account (no ``to``, or one's bare JID) answers the stored ``<vCard/>``, or an empty
  ``<vCard xmlns='vcard-temp'/>`` when none was stored (s3.1 allows either that or item-not-found; the
  empty result is what ejabberd answers and what clients treat as "no vCard yet" without an error path).
* A get to another account's bare JID answers its vCard (s3.3; the server answers on the account's
  behalf and never forwards the iq). s3.3 requires an error when there is nothing to show: item-not-found
  when the account exists without a vCard, service-unavailable when there is no such account. vCards are
  world-readable (s5), so no presence authorization is asked.
* A set to one's own account replaces the whole vCard (s3.2: there are no partial updates). A set to any
  other address is refused with ``forbidden`` (s3.2: forbidden or not-allowed; forbidden is the one the
  example uses). A vCard whose serialisation exceeds ``max_size`` bytes is refused with
  ``not-acceptable`` and nothing is stored: the request is understood but does not meet the server's
  criteria, and the client can fix it (a smaller photo); this is the condition XEP-0060 uses for a
  payload that is too big. ``policy-violation`` would suggest the content itself broke a rule.
* The domain itself has no vCard: a get to it answers item-not-found, a set forbidden.
* ``vcard-temp`` is announced in the domain's disco#info (s4).

The vCard is kept as serialised XML (a string) in the plugin's per-user store, so it survives restarts
with a persistent storage backend and disappears with the account.
"""

from __future__ import annotations

from typing import Any

from lxml import etree

from xmppd.plugin import Context, Option, Plugin
from xmppd.router import StanzaEvent
from xmppd.xml.stanza import add_child, payload

NS_VCARD = "vcard-temp"

#: For XML the server serialised itself: no DTDs, entities or network, whatever the input.
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, remove_comments=True)


def serialize_payload(el: etree._Element) -> str:
    """A payload element as text, for storage (no tail; namespaces it uses declared on it)."""
    return etree.tostring(el, encoding="unicode", with_tail=False)


def parse_payload(text: str) -> etree._Element:
    """A stored payload element back as an element."""
    return etree.fromstring(text.encode("utf-8"), _PARSER)


class VCardTemp(Plugin):
    """XEP-0054 vcard-temp for the accounts of a domain."""

    name = "vcard"
    options = {
        "max_size": Option(
            int, 65536, "largest vCard stored, in bytes of serialised XML (photos count)", min=1024
        ),
    }

    def setup(self, ctx: Context) -> None:
        ctx.add_feature(NS_VCARD)
        ctx.hook_iq("get", NS_VCARD, "vCard", self.get_vcard, to=("self", "bare"))
        ctx.hook_iq("set", NS_VCARD, "vCard", self.set_vcard, to="self")
        ctx.hook_iq("set", NS_VCARD, "vCard", self.forbidden, to=("bare", "host"))
        ctx.hook_iq("get", NS_VCARD, "vCard", self.no_vcard, to="host")
        self.store = ctx.store()

    async def get_vcard(self, event: StanzaEvent) -> Any:
        own = event.to_type == "self"
        if not own and not await event.server.accounts.exists(event.to.bare):
            return event.error("service-unavailable")  # s3.3: the user does not exist
        stored = await self.store.get(event.to.local)
        reply = event.result()
        if stored is None:
            if not own:
                return event.error("item-not-found")  # s3.3: no vCard exists
            add_child(reply, NS_VCARD, "vCard")  # s3.1: an empty vCard
        else:
            reply.append(parse_payload(stored))
        return reply

    async def set_vcard(self, event: StanzaEvent) -> Any:
        vcard = payload(event.stanza)
        text = serialize_payload(vcard)
        limit = self.ctx.option("max_size")
        if len(text.encode("utf-8")) > limit:
            return event.error("not-acceptable", text=f"a vCard may have at most {limit} bytes")
        await self.store.set(event.to.local, text)
        return event.result()

    def forbidden(self, event: StanzaEvent) -> Any:
        return event.error("forbidden", text="only the owner of a vCard may change it")  # s3.2

    def no_vcard(self, event: StanzaEvent) -> Any:
        return event.error("item-not-found")
