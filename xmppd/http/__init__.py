"""HTTP services: one twisted.web site for the web transports and what plugins mount on it.

``[listen] http`` / ``https`` bind the site (HTTPS with the server's [tls] certificate). The site looks up
every request in ``server.http_resources`` (path -> twisted.web resource), so resources added or removed
while the server runs (``ctx.add_http_resource`` in a plugin) take effect at once. The core mounts:

* ``/xmpp-websocket``: XMPP over WebSocket (RFC 7395), :mod:`xmppd.http.websocket`;
* ``/http-bind``: BOSH (XEP-0124/0206), :mod:`xmppd.http.bosh`, when that module is present;
* ``/.well-known/host-meta`` and ``/.well-known/host-meta.json``: XEP-0156 discovery of both.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from xmppd.log import logger

if TYPE_CHECKING:
    from xmppd.server import XMPPServer

log = logger("xmppd.http")

WEBSOCKET_PATH = "/xmpp-websocket"
BOSH_PATH = "/http-bind"
HOST_META_PATH = "/.well-known/host-meta"
HOST_META_JSON_PATH = "/.well-known/host-meta.json"


def normalize_path(path: str) -> str:
    """``"xmpp-websocket/"`` -> ``"/xmpp-websocket"``: the registry's key form. ValueError for the root or
    a path with empty, ``.`` or ``..`` segments."""
    segments = path.strip("/").split("/")
    if not path.strip("/") or any(s in ("", ".", "..") for s in segments):
        raise ValueError(f"not a resource path: {path!r}")
    return "/" + "/".join(segments)


def install_core_resources(server: XMPPServer) -> None:
    """Mount the core resources in ``server.http_resources`` (those already mounted stay)."""
    from xmppd.http.hostmeta import HostMetaResource
    from xmppd.http.websocket import websocket_resource

    resources = server.http_resources
    if WEBSOCKET_PATH not in resources:
        resources[WEBSOCKET_PATH] = websocket_resource(server)
    if BOSH_PATH not in resources:
        bosh = bosh_resource(server)
        if bosh is not None:
            resources[BOSH_PATH] = bosh
    resources.setdefault(HOST_META_PATH, HostMetaResource(server, json=False))
    resources.setdefault(HOST_META_JSON_PATH, HostMetaResource(server, json=True))


def bosh_resource(server: XMPPServer) -> Any:
    """``xmppd.http.bosh.BOSHResource(server)``, or None when that module is not there."""
    try:
        found = importlib.util.find_spec("xmppd.http.bosh") is not None
    except ImportError:
        found = False
    if not found:
        return None
    from xmppd.http import bosh  # type: ignore[attr-defined]

    return bosh.BOSHResource(server)
