"""XEP-0156 discovery: ``/.well-known/host-meta`` (XRD) and ``/.well-known/host-meta.json`` (JRD).

Both list the web transports mounted right now (``/xmpp-websocket``, ``/http-bind``) as absolute URLs made
from the request: its ``Host`` header and its scheme. The scheme is https/wss when the request came over
HTTPS, carries ``X-Forwarded-Proto: https``, or ``[http] consider_secure`` says a TLS-terminating proxy
sits in front.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

from lxml import etree
from twisted.web.resource import Resource

from xmppd.http import BOSH_PATH, WEBSOCKET_PATH

if TYPE_CHECKING:
    from twisted.web.server import Request

    from xmppd.server import XMPPServer

NS_XRD = "http://docs.oasis-open.org/ns/xri/xrd-1.0"
REL_BOSH = "urn:xmpp:alt-connections:xbosh"
REL_WEBSOCKET = "urn:xmpp:alt-connections:websocket"
# A Host header: a DNS name, IPv4 or bracketed IPv6 address, optional port. Anything else is ignored.
_HOST = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$")


def is_secure(request: Request, server: XMPPServer) -> bool:
    """Whether clients reach this site over TLS (directly or through a proxy)."""
    if request.isSecure() or server.config.get("http", "consider_secure"):
        return True
    return (request.getHeader(b"x-forwarded-proto") or b"").lower() == b"https"


def links(request: Request, server: XMPPServer) -> list[tuple[str, str]]:
    """(rel, href) of every web transport currently mounted, for this request's host and scheme."""
    host = (request.getHeader(b"host") or b"").decode("latin-1")
    if not _HOST.match(host):
        port = request.getHost().port
        host = f"{server.default_domain}:{port}"
    secure = is_secure(request, server)
    result = []
    if BOSH_PATH in server.http_resources:
        result.append((REL_BOSH, f"{'https' if secure else 'http'}://{host}{BOSH_PATH}"))
    if WEBSOCKET_PATH in server.http_resources:
        result.append((REL_WEBSOCKET, f"{'wss' if secure else 'ws'}://{host}{WEBSOCKET_PATH}"))
    return result


class HostMetaResource(Resource):
    """host-meta as XRD (``json=False``) or JRD (``json=True``)."""

    isLeaf = True

    def __init__(self, server: XMPPServer, *, json: bool) -> None:
        super().__init__()
        self.server = server
        self.json = json

    def render_GET(self, request: Request) -> bytes:
        found = links(request, self.server)
        if self.json:
            request.setHeader(b"Content-Type", b"application/json")
            body = {"links": [{"rel": rel, "href": href} for rel, href in found]}
            return json.dumps(body, indent=2).encode() + b"\n"
        request.setHeader(b"Content-Type", b"application/xrd+xml; charset=utf-8")
        xrd = etree.Element(f"{{{NS_XRD}}}XRD", nsmap={None: NS_XRD})
        for rel, href in found:
            etree.SubElement(xrd, f"{{{NS_XRD}}}Link", rel=rel, href=href)
        return etree.tostring(xrd, encoding="utf-8", xml_declaration=True, pretty_print=True)

    render_HEAD = render_GET
