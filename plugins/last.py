"""Last activity (XEP-0012): the server's uptime, and when an account was last online.

A query to the domain answers the seconds since the server started (s5). A query to an account's bare
JID answers 0 while the user is online, otherwise the seconds since the last session ended with the status
it left (s4); it is answered to the account itself and to those a plugin authorizes through the
``presence-authorized`` event (the roster plugin, once there), and ``forbidden`` to others.
"""

from __future__ import annotations

from typing import Any

from lxml import etree
from xmppd.plugins.disco import presence_authorized

from xmppd.plugin import Context, Plugin
from xmppd.router import StanzaEvent
from xmppd.xml.stanza import add_child

NS_LAST = "jabber:iq:last"


class LastActivity(Plugin):
    name = "last"

    def setup(self, ctx: Context) -> None:
        ctx.add_feature(NS_LAST)
        ctx.hook_iq("get", NS_LAST, "query", self.uptime, to="host")
        ctx.hook_iq("get", NS_LAST, "query", self.account_last, to=("self", "bare"))
        ctx.hook("session-ended", self.session_ended)
        self.store = ctx.store("last")

    def _answer(self, event: StanzaEvent, seconds: int, status: str | None = None) -> etree._Element:
        reply = event.result()
        query = add_child(reply, NS_LAST, "query")
        query.set("seconds", str(max(0, seconds)))
        if status:
            query.text = status
        return reply

    def uptime(self, event: StanzaEvent) -> etree._Element:
        return self._answer(event, int(self.ctx.clock.seconds() - event.server.started_at))

    async def account_last(self, event: StanzaEvent) -> Any:
        if not await event.server.accounts.exists(event.to.bare):
            return event.error("service-unavailable")
        if not await presence_authorized(event):
            return event.error("forbidden")
        if self.ctx.sessions.available(event.to.bare):
            return self._answer(event, 0)
        record = await self.store.get(event.to.local)
        if record is None:
            return event.error("item-not-found")
        return self._answer(event, int(self.ctx.clock.seconds() - record["time"]), record.get("status"))

    def session_ended(self, event: Any) -> None:
        session = event.session
        if self.ctx.sessions.sessions_of(session.jid.bare):
            return  # another resource is still online
        status = None
        presence = getattr(session, "last_presence", None)
        if presence is not None:
            status = presence.findtext("status")
        self.store.set(session.jid.local, {"time": self.ctx.clock.seconds(), "status": status})
