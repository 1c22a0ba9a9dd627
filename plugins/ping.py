"""XMPP Ping (XEP-0199): answer pings, and ping idle clients to find dead connections.

Pings to the domain and to an account's bare JID are answered by the server (s4.2, s4.3); pings to a full
JID reach the client through normal routing. With ``keepalive_interval`` set, a client that has been
silent that long is pinged (s4.1, server-to-client) and its session closed if no answer comes within
``keepalive_timeout``: a TCP connection can stay "open" for hours after the peer vanished.
"""

from __future__ import annotations

from lxml import etree

from xmppd.plugin import Context, Option, Plugin
from xmppd.router import IQError, IQTimeout, StanzaEvent
from xmppd.xml.stanza import add_child, make_stanza

NS_PING = "urn:xmpp:ping"


class Ping(Plugin):
    name = "ping"
    options = {
        "keepalive_interval": Option(
            float, 300.0, "seconds of client silence before a ping; 0 disables", min=0
        ),
        "keepalive_timeout": Option(float, 60.0, "seconds to wait for the answer", min=1),
    }

    def setup(self, ctx: Context) -> None:
        ctx.add_feature(NS_PING)
        ctx.add_feature(NS_PING, account=True)
        ctx.hook_iq("get", NS_PING, "ping", self.on_ping, to=("host", "self", "bare"))
        self._waiting: set[str] = set()
        interval = ctx.option("keepalive_interval")
        if interval:
            ctx.every(min(interval, 30.0), self.check_idle)

    def on_ping(self, event: StanzaEvent) -> etree._Element:
        return event.result()

    def check_idle(self) -> None:
        """Ping every session of this domain that has been silent for keepalive_interval."""
        now = self.ctx.clock.seconds()
        interval = self.ctx.option("keepalive_interval")
        for session in self.ctx.sessions:
            if session.host != self.ctx.domain or session.id in self._waiting:
                continue
            if now - getattr(session, "last_received", now) >= interval:
                self._ping(session)

    def _ping(self, session: object) -> None:
        iq = make_stanza("iq", to=str(session.jid), from_=self.ctx.domain, type_="get")
        add_child(iq, NS_PING, "ping")
        self._waiting.add(session.id)
        d = self.ctx.send_iq(iq, timeout=self.ctx.option("keepalive_timeout"))

        def answered(_: object) -> None:
            self._waiting.discard(session.id)

        def failed(failure) -> None:
            self._waiting.discard(session.id)
            if failure.check(IQError):
                return  # any answer, even an error, proves the client is there (s4.1)
            failure.trap(IQTimeout)
            if not session.closed:
                self.ctx.log.info("closing {jid}: no answer to a keepalive ping", jid=session.jid)
                session.close("connection-timeout", "no answer to ping")

        d.addCallbacks(answered, failed)
