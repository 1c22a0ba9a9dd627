"""twistd dropin: makes ``twistd xmppd`` start the server (see xmppd.tap)."""

from twisted.application.service import ServiceMaker

xmppd = ServiceMaker("xmppd", "xmppd.tap", "A pluggable XMPP server", "xmppd")
