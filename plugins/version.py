"""Software version (XEP-0092): the server's name and version, and its OS only if configured."""

from __future__ import annotations

import platform

from lxml import etree

from xmppd import __version__
from xmppd.plugin import Context, Option, Plugin
from xmppd.router import StanzaEvent
from xmppd.xml.stanza import add_child, add_text

NS_VERSION = "jabber:iq:version"


class SoftwareVersion(Plugin):
    """Answers ``<query xmlns='jabber:iq:version'/>`` sent to the domain (XEP-0092 s3)."""

    name = "version"
    options = {
        "show_os": Option(bool, False, "reveal the operating system (XEP-0092 s5 advises against it)"),
        "name": Option(str, "xmppd", "the software name reported"),
    }

    def setup(self, ctx: Context) -> None:
        ctx.add_feature(NS_VERSION)
        ctx.hook_iq("get", NS_VERSION, "query", self.on_query, to="host")

    def on_query(self, event: StanzaEvent) -> etree._Element:
        reply = event.result()
        query = add_child(reply, NS_VERSION, "query")
        add_text(query, "name", self.ctx.option("name"))
        add_text(query, "version", __version__)
        if self.ctx.option("show_os"):
            add_text(query, "os", f"{platform.system()} {platform.release()}")
        return reply
