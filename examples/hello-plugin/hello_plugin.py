"""An example xmppd plugin, packaged on its own: greets whoever sends it a hello iq.

    <iq type='get' to='localhost' id='h1'><hello xmlns='urn:example:hello'/></iq>

is answered with

    <iq type='result' from='localhost' id='h1'><hello xmlns='urn:example:hello' count='1'>Hello,
    alice@localhost/phone!</hello></iq>

where ``count`` is how many times this account has been greeted (kept in the plugin's own store, so it
survives restarts). The greeting is configurable: ``[plugins.hello] greeting = "Welcome"``.
"""

from __future__ import annotations

from lxml import etree

from xmppd.plugin import Context, Option, Plugin
from xmppd.router import StanzaEvent
from xmppd.xml.stanza import add_child

NS_HELLO = "urn:example:hello"


class Hello(Plugin):
    name = "hello"
    requires = ("disco",)  # so the feature below shows up in disco#info
    options = {"greeting": Option(str, "Hello", "the word to greet with")}

    def setup(self, ctx: Context) -> None:
        ctx.add_feature(NS_HELLO)
        ctx.hook_iq("get", NS_HELLO, "hello", self.on_hello, to="host")
        self.counts = ctx.store()

    async def on_hello(self, event: StanzaEvent) -> etree._Element:
        user = event.from_.local
        count = (await self.counts.get(user) or 0) + 1
        await self.counts.set(user, count)
        reply = event.result()
        hello = add_child(reply, NS_HELLO, "hello", f"{self.ctx.option('greeting')}, {event.from_}!")
        hello.set("count", str(count))
        return reply
