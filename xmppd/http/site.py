"""The twisted.web site behind ``[listen] http`` and ``https``.

:class:`RootResource` resolves each request against ``server.http_resources`` (the longest registered path
that prefixes the request path wins), so plugins mount and unmount resources at run time. It also applies
CORS (``[http] cors_origins``) to every response and answers CORS preflight requests (``OPTIONS``) for the
resources that do not handle ``OPTIONS`` themselves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.web.http import parse_qs
from twisted.web.pages import notFound
from twisted.web.resource import Resource
from twisted.web.server import Site

if TYPE_CHECKING:
    from twisted.web.server import Request

    from xmppd.server import XMPPServer

CORS_METHODS = b"GET, POST, OPTIONS"
CORS_HEADERS = b"Content-Type"
CORS_MAX_AGE = b"86400"
FORM_TYPE = b"application/x-www-form-urlencoded"


def form_fields(request: Request) -> dict[bytes, list[bytes]]:
    """The fields of a POSTed ``application/x-www-form-urlencoded`` body (the web admin's forms).

    The site is made with ``parsePOSTFormSubmission=False``: twisted.web would otherwise parse every POST's
    Content-Type with the email package to look for a form, a sixth of the CPU of a BOSH login, whose
    bodies are XML. Parsed once per request, on first use."""
    fields = getattr(request, "xmppd_form", None)
    if fields is None:
        fields = {}
        ctype = (request.requestHeaders.getRawHeaders(b"content-type") or [b""])[0]
        if request.method == b"POST" and ctype.split(b";", 1)[0].strip().lower() == FORM_TYPE:
            request.content.seek(0)
            fields = parse_qs(request.content.read(), 1)  # twisted.web's, as it parses forms itself
            request.content.seek(0)
        request.xmppd_form = fields
    return fields


def cors_origin(request: Request, server: XMPPServer) -> str | None:
    """The Access-Control-Allow-Origin value for this request, or None when its origin is not allowed.

    An origin listed in ``[http] cors_origins`` is echoed back; ``"*"`` in the list allows every origin."""
    allowed = server.config.get("http", "cors_origins")
    origin = request.getHeader(b"origin")
    if origin is not None and origin.decode("latin-1") in allowed:
        return origin.decode("latin-1")
    if "*" in allowed:
        return "*"
    return None


def apply_cors(request: Request, server: XMPPServer) -> bool:
    """Add the CORS response headers if the request's origin is allowed; True if it is."""
    origin = cors_origin(request, server)
    if origin is None:
        return False
    request.setHeader(b"Access-Control-Allow-Origin", origin.encode("latin-1"))
    if origin != "*":
        request.setHeader(b"Vary", b"Origin")
    request.setHeader(b"Access-Control-Allow-Methods", CORS_METHODS)
    request.setHeader(b"Access-Control-Allow-Headers", CORS_HEADERS)
    request.setHeader(b"Access-Control-Max-Age", CORS_MAX_AGE)
    return True


class Preflight(Resource):
    """Answers ``OPTIONS`` (a CORS preflight) with 204; the CORS headers are already set, if allowed."""

    isLeaf = True

    def render_OPTIONS(self, request: Request) -> bytes:
        request.setResponseCode(204)
        request.setHeader(b"Allow", CORS_METHODS)
        return b""


class RootResource(Resource):
    """The site root: dispatches to ``server.http_resources`` on every request."""

    def __init__(self, server: XMPPServer) -> None:
        super().__init__()
        self.server = server

    def lookup(self, segments: list[str]) -> tuple[Any, int]:
        """The resource mounted at the longest prefix of ``segments`` and how many segments it takes."""
        resources = self.server.http_resources
        for n in range(len(segments), 0, -1):
            resource = resources.get("/" + "/".join(segments[:n]))
            if resource is not None:
                return resource, n
        return None, 0

    def getChildWithDefault(self, name: bytes, request: Request) -> Any:
        apply_cors(request, self.server)
        segments = [s.decode("utf-8", "replace") for s in (name, *request.postpath)]
        resource, taken = self.lookup(segments)
        if resource is None:
            return notFound()
        for _ in range(taken - 1):  # getChildForRequest moved ``name`` already
            request.prepath.append(request.postpath.pop(0))
        if request.method == b"OPTIONS" and not hasattr(resource, "render_OPTIONS"):
            return Preflight()
        return resource

    def render(self, request: Request) -> bytes:  # "/" with nothing mounted there
        return notFound().render(request)


def make_site(server: XMPPServer) -> Site:
    site = Site(RootResource(server), parsePOSTFormSubmission=False)  # forms: form_fields()
    site.noisy = False
    site.displayTracebacks = False
    return site
