"""Entity time (XEP-0202): the server's current UTC time."""

from __future__ import annotations

import datetime

from lxml import etree

from xmppd.plugin import Context, Plugin
from xmppd.router import StanzaEvent
from xmppd.xml.stanza import add_child, add_text

NS_TIME = "urn:xmpp:time"


class EntityTime(Plugin):
    """Answers ``<time xmlns='urn:xmpp:time'/>`` sent to the domain (XEP-0202 s4), in UTC (XEP-0082)."""

    name = "time"

    def setup(self, ctx: Context) -> None:
        ctx.add_feature(NS_TIME)
        ctx.hook_iq("get", NS_TIME, "time", self.on_query, to="host")

    def on_query(self, event: StanzaEvent) -> etree._Element:
        now = datetime.datetime.fromtimestamp(event.server.clock.seconds(), datetime.UTC)
        reply = event.result()
        time = add_child(reply, NS_TIME, "time")
        add_text(time, "tzo", "+00:00")
        add_text(time, "utc", now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z")
        return reply
