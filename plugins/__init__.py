"""Built-in feature plugins, installed as ``xmppd.plugins`` and discovered through entry points."""
