"""xmppd: a Twisted-based, pluggable XMPP server framework."""

__version__ = "0.1.0"
