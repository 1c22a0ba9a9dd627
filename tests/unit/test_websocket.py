"""XMPP over WebSocket (RFC 7395) and the HTTP site, in memory: framing, a whole login through a
WebSocketSession on a fake WebSocket, the site's resource registry, CORS and host-meta."""

from __future__ import annotations

import base64
import json

import pytest
from lxml import etree
from twisted.internet.address import IPv4Address
from twisted.web.resource import Resource, getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from xmppd.http import BOSH_PATH, WEBSOCKET_PATH, install_core_resources, normalize_path
from xmppd.http.hostmeta import REL_BOSH, REL_WEBSOCKET
from xmppd.http.site import Preflight, RootResource
from xmppd.http.websocket import (
    NS_FRAMING,
    WebSocketSession,
    frame,
    framed_stream_error,
    open_element,
    parse_framing,
    stream_header_for,
)
from xmppd.plugin import Plugin, PluginError
from xmppd.testing.scram import ScramClient
from xmppd.xml.parser import NS_STREAMS, StreamError
from xmppd.xml.writer import make_element

NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
OPEN = f"<open xmlns='{NS_FRAMING}' to='localhost' version='1.0'/>"
CLOSE = f"<close xmlns='{NS_FRAMING}'/>"


# -- framing -------------------------------------------------------------------------------------------------


def test_parse_framing_open_and_close():
    assert parse_framing(OPEN.encode()) == ("open", {"to": "localhost", "version": "1.0"})
    assert parse_framing(f"<?xml version='1.0'?>{CLOSE}".encode()) == ("close", {})
    assert parse_framing(b"<message xmlns='jabber:client'/>") is None
    assert parse_framing(b"<opening xmlns='jabber:client'/>") is None


@pytest.mark.parametrize(
    ("data", "condition"),
    [
        (b"<open to='localhost' version='1.0'/>", "invalid-namespace"),
        (b"<open xmlns='jabber:client'/>", "invalid-namespace"),
        (f"<open xmlns='{NS_FRAMING}'".encode(), "not-well-formed"),
        (f"<open xmlns='{NS_FRAMING}'><x/></open>".encode(), "invalid-xml"),
        (b"<!DOCTYPE x><open/>", None),  # not a framing element at all: left to the stream parser
        (f"<open xmlns='{NS_FRAMING}'><!-- c --></open>".encode(), "restricted-xml"),
    ],
)
def test_parse_framing_errors(data, condition):
    if condition is None:
        assert parse_framing(data) is None
        return
    with pytest.raises(StreamError) as info:
        parse_framing(data)
    assert info.value.condition == condition


def test_open_translates_to_stream_header():
    header = stream_header_for({"to": "localhost", "version": "1.0", f"{{{NS_XML()}}}lang": "de"})
    assert header.startswith(b"<?xml version='1.0'?><stream:stream xmlns='jabber:client'")
    assert b"to='localhost'" in header and b"version='1.0'" in header and b"xml:lang='de'" in header
    assert b"from=" not in header and b"id=" not in header


def NS_XML() -> str:  # noqa: N802
    return "http://www.w3.org/XML/1998/namespace"


def test_open_element():
    el = etree.fromstring(open_element(from_="localhost", id_="abc"))
    assert el.tag == f"{{{NS_FRAMING}}}open"
    assert el.get("from") == "localhost" and el.get("id") == "abc" and el.get("version") == "1.0"
    assert el.get(f"{{{NS_XML()}}}lang") == "en"


def test_stanzas_are_qualified_by_jabber_client():
    message = etree.Element("message", to="bob@localhost")
    body = etree.SubElement(message, "body")
    body.text = "hi"
    payload = etree.SubElement(message, "{urn:xmpp:receipts}request", nsmap={None: "urn:xmpp:receipts"})
    el = etree.fromstring(frame(message))
    assert el.tag == "{jabber:client}message"
    assert el.find("{jabber:client}body").text == "hi"
    assert el.find("{urn:xmpp:receipts}request") is not None
    assert message.tag == "message" and payload.getparent() is message  # the original is untouched


def test_stream_level_elements_declare_their_prefix():
    features = make_element("features", ns=NS_STREAMS)
    data = frame(features)
    assert data.startswith(b"<stream:features") and NS_STREAMS.encode() in data
    assert etree.fromstring(data).tag == f"{{{NS_STREAMS}}}features"
    error = etree.fromstring(framed_stream_error("not-well-formed", "bad"))
    assert error.tag == f"{{{NS_STREAMS}}}error"
    assert error[0].tag == "{urn:ietf:params:xml:ns:xmpp-streams}not-well-formed"


# -- a session on a fake WebSocket ------------------------------------------------------------------------


class FakeWebSocket:
    """The transport a WebSocketSession writes to: one message per write."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.messages.append(data)

    def loseConnection(self) -> None:  # noqa: N802
        self.closed = True

    def getPeer(self):  # noqa: N802
        return IPv4Address("TCP", "127.0.0.1", 50000)

    def getHost(self):  # noqa: N802
        return IPv4Address("TCP", "127.0.0.1", 5280)

    def getHandle(self):  # noqa: N802
        return None

    def registerProducer(self, producer, streaming):  # noqa: N802
        pass

    def unregisterProducer(self):  # noqa: N802
        pass


class WSClient:
    def __init__(self, xmpp, *, secure: bool = True) -> None:
        self.ws = FakeWebSocket()
        self.session = WebSocketSession(xmpp.server, secure=secure)
        self.session.makeConnection(self.ws)

    def send(self, data: str) -> None:
        self.session.message_received(data.encode())

    def received(self) -> list[etree._Element]:
        messages, self.ws.messages = self.ws.messages, []
        return [etree.fromstring(m) for m in messages]

    def open(self) -> list[etree._Element]:
        self.send(OPEN)
        return self.received()

    def login(self, user: str, password: str, resource: str) -> str:
        self.open()
        scram = ScramClient(user, password, "SHA-256")
        first = base64.b64encode(scram.first()).decode()
        self.send(f"<auth xmlns='{NS_SASL}' mechanism='SCRAM-SHA-256'>{first}</auth>")
        [challenge] = self.received()
        final = base64.b64encode(scram.final(base64.b64decode(challenge.text))).decode()
        self.send(f"<response xmlns='{NS_SASL}'>{final}</response>")
        [success] = self.received()
        assert success.tag == f"{{{NS_SASL}}}success"
        assert scram.verify(base64.b64decode(success.text))
        opened, features = self.open()
        assert features.find(f"{{{NS_BIND}}}bind") is not None
        self.send(
            f"<iq xmlns='jabber:client' type='set' id='b1'><bind xmlns='{NS_BIND}'>"
            f"<resource>{resource}</resource></bind></iq>"
        )
        [bound] = self.received()
        assert bound.tag == "{jabber:client}iq" and bound.get("type") == "result"
        return bound.findtext(f".//{{{NS_BIND}}}jid")


def test_open_answers_open_and_features_without_starttls(xmpp):
    client = WSClient(xmpp)
    opened, features = client.open()
    assert opened.tag == f"{{{NS_FRAMING}}}open"
    assert opened.get("from") == "localhost" and opened.get("id") == client.session.id
    assert features.tag == f"{{{NS_STREAMS}}}features"
    assert features.find("{urn:ietf:params:xml:ns:xmpp-tls}starttls") is None
    mechanisms = [m.text for m in features.iter(f"{{{NS_SASL}}}mechanism")]
    assert "SCRAM-SHA-256" in mechanisms and "PLAIN" in mechanisms  # secure: PLAIN is offered too
    assert client.session.kind == "websocket"


def test_insecure_connection_offers_no_plain_and_never_starttls(xmpp):
    client = WSClient(xmpp, secure=False)  # MemoryServer: [tls] required = false
    _, features = client.open()
    assert features.find("{urn:ietf:params:xml:ns:xmpp-tls}starttls") is None
    mechanisms = [m.text for m in features.iter(f"{{{NS_SASL}}}mechanism")]
    assert "PLAIN" not in mechanisms and "SCRAM-SHA-256" in mechanisms


def test_login_bind_and_chat_with_a_tcp_client(xmpp):
    xmpp.adduser("alice@localhost", "pw")
    client = WSClient(xmpp)
    jid = client.login("alice", "pw", "web")
    assert jid == "alice@localhost/web"
    bob = xmpp.login("bob@localhost/pc")
    client.send("<message xmlns='jabber:client' to='bob@localhost/pc' type='chat'><body>hi</body></message>")
    bob.expect("<message from='alice@localhost/web' type='chat'><body>hi</body></message>")
    bob.send("<message to='alice@localhost/web' type='chat'><body>hello</body></message>")
    [message] = client.received()
    assert message.tag == "{jabber:client}message" and message.get("from") == "bob@localhost/pc"
    assert message.findtext("{jabber:client}body") == "hello"
    assert xmpp.server.sessions.sessions_of  # the session is routable like any other
    client.send(CLOSE)
    [close] = client.received()
    assert close.tag == f"{{{NS_FRAMING}}}close"
    assert client.ws.closed
    client.session.connectionLost()
    assert not client.session.bound


def test_malformed_message_is_a_stream_error_then_close(xmpp):
    client = WSClient(xmpp)
    client.open()
    client.send("<message><body>hi</message>")
    error, close = client.received()
    assert error.tag == f"{{{NS_STREAMS}}}error"
    assert error[0].tag == "{urn:ietf:params:xml:ns:xmpp-streams}not-well-formed"
    assert close.tag == f"{{{NS_FRAMING}}}close"
    assert client.ws.closed


@pytest.mark.parametrize(
    "message",
    [
        "<iq xmlns='jabber:client' type='get' id='1'>",  # incomplete
        "<presence xmlns='jabber:client'/><presence xmlns='jabber:client'/>",  # two elements
    ],
)
def test_a_message_is_exactly_one_element(xmpp, message):
    client = WSClient(xmpp)
    client.open()
    client.send(message)
    received = client.received()
    assert received[-2].tag == f"{{{NS_STREAMS}}}error" and received[-1].tag == f"{{{NS_FRAMING}}}close"


def test_stanza_before_open_is_refused(xmpp):
    client = WSClient(xmpp)
    client.send("<presence xmlns='jabber:client'/>")
    opened, error, close = client.received()
    assert opened.tag == f"{{{NS_FRAMING}}}open"
    assert error[0].tag == "{urn:ietf:params:xml:ns:xmpp-streams}not-well-formed"
    assert close.tag == f"{{{NS_FRAMING}}}close"


def test_unknown_host_in_open(xmpp):
    client = WSClient(xmpp)
    client.send(f"<open xmlns='{NS_FRAMING}' to='elsewhere.example' version='1.0'/>")
    opened, error, close = client.received()
    assert error[0].tag == "{urn:ietf:params:xml:ns:xmpp-streams}host-unknown"


def test_starttls_is_refused(xmpp):
    client = WSClient(xmpp, secure=False)
    client.open()
    client.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    failure, close = client.received()
    assert failure.tag == "{urn:ietf:params:xml:ns:xmpp-tls}failure"
    assert client.ws.closed


# -- the site ------------------------------------------------------------------------------------------------


def request(path: str, *, method: bytes = b"GET", headers: dict[str, str] | None = None) -> DummyRequest:
    req = DummyRequest([s.encode() for s in path.lstrip("/").split("/")])
    req.method = method
    req.isSecure = lambda: False
    for name, value in (headers or {}).items():
        req.requestHeaders.setRawHeaders(name.encode(), [value.encode()])
    return req


def render(resource, req: DummyRequest) -> bytes:
    body = resource.render(req)
    return body if isinstance(body, bytes) else b"".join(req.written)


def not_found(root, path: str) -> bool:
    req = request(path)
    render(getChildForRequest(root, req), req)
    return req.responseCode == 404


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"hello"


def test_normalize_path():
    assert normalize_path("upload/") == "/upload"
    assert normalize_path("/a/b") == "/a/b"
    for bad in ("/", "", "/a//b", "/../x"):
        with pytest.raises(ValueError):
            normalize_path(bad)


def test_site_dispatches_on_the_registry_at_request_time(xmpp):
    root = RootResource(xmpp.server)
    install_core_resources(xmpp.server)
    assert WEBSOCKET_PATH in xmpp.server.http_resources
    assert "/.well-known/host-meta.json" in xmpp.server.http_resources
    assert not_found(root, "/nothing")
    xmpp.server.http_resources["/files/hello"] = Hello()
    req = request("/files/hello/extra")
    found = getChildForRequest(root, req)
    assert isinstance(found, Hello) and req.prepath == [b"files", b"hello"] and req.postpath == [b"extra"]
    del xmpp.server.http_resources["/files/hello"]
    assert not_found(root, "/files/hello")


def test_plugins_mount_resources_until_unloaded(make_xmpp):
    class Upload(Plugin):
        name = "upload"

        def setup(self, ctx):
            ctx.add_http_resource("/upload", Hello())

    xmpp = make_xmpp(domains=("localhost", "example.org"), enabled=["upload"], plugins=[Upload])
    resources = xmpp.server.http_resources
    assert isinstance(resources["/upload"], Hello)  # one path, mounted from both domains
    xmpp.server.plugins.unload("upload", "localhost")
    assert "/upload" in resources
    xmpp.server.plugins.unload("upload", "example.org")
    assert "/upload" not in resources


def test_a_path_served_by_someone_else_is_refused(make_xmpp):
    class Squatter(Plugin):
        name = "squatter"

        def setup(self, ctx):
            ctx.add_http_resource(WEBSOCKET_PATH, Hello())

    xmpp = make_xmpp(enabled=[], plugins=[Squatter])
    install_core_resources(xmpp.server)
    core = xmpp.server.http_resources[WEBSOCKET_PATH]
    with pytest.raises(PluginError, match="already served"):
        xmpp.server.plugins.load("squatter", "localhost")
    assert xmpp.server.http_resources[WEBSOCKET_PATH] is core


def test_cors_only_for_configured_origins(make_xmpp):
    xmpp = make_xmpp(config={"http": {"cors_origins": ["https://chat.example.org"]}})
    install_core_resources(xmpp.server)
    root = RootResource(xmpp.server)
    allowed = request("/.well-known/host-meta.json", headers={"Origin": "https://chat.example.org"})
    render(getChildForRequest(root, allowed), allowed)
    assert allowed.responseHeaders.getRawHeaders(b"access-control-allow-origin") == [
        b"https://chat.example.org"
    ]
    other = request("/.well-known/host-meta.json", headers={"Origin": "https://evil.example"})
    render(getChildForRequest(root, other), other)
    assert other.responseHeaders.getRawHeaders(b"access-control-allow-origin") is None
    preflight = request(
        "/.well-known/host-meta", method=b"OPTIONS", headers={"Origin": "https://chat.example.org"}
    )
    resource = getChildForRequest(root, preflight)
    assert isinstance(resource, Preflight)
    resource.render(preflight)
    assert preflight.responseCode == 204
    assert preflight.responseHeaders.getRawHeaders(b"access-control-allow-methods") == [b"GET, POST, OPTIONS"]


def test_cors_wildcard_only_when_configured(make_xmpp):
    xmpp = make_xmpp(config={"http": {"cors_origins": ["*"]}})
    install_core_resources(xmpp.server)
    req = request("/.well-known/host-meta", headers={"Origin": "https://any.example"})
    render(getChildForRequest(RootResource(xmpp.server), req), req)
    assert req.responseHeaders.getRawHeaders(b"access-control-allow-origin") == [b"*"]


def test_host_meta_lists_the_mounted_endpoints(xmpp):
    install_core_resources(xmpp.server)
    xmpp.server.http_resources.setdefault(BOSH_PATH, Hello())
    root = RootResource(xmpp.server)
    req = request("/.well-known/host-meta.json", headers={"Host": "chat.example.org:5280"})
    links = json.loads(render(getChildForRequest(root, req), req))["links"]
    assert {"rel": REL_WEBSOCKET, "href": "ws://chat.example.org:5280/xmpp-websocket"} in links
    assert {"rel": REL_BOSH, "href": "http://chat.example.org:5280/http-bind"} in links
    req = request(
        "/.well-known/host-meta", headers={"Host": "chat.example.org", "X-Forwarded-Proto": "https"}
    )
    xrd = etree.fromstring(render(getChildForRequest(root, req), req))
    hrefs = {link.get("rel"): link.get("href") for link in xrd}
    assert hrefs == {
        REL_WEBSOCKET: "wss://chat.example.org/xmpp-websocket",
        REL_BOSH: "https://chat.example.org/http-bind",
    }
    assert req.responseHeaders.getRawHeaders(b"content-type")[0].startswith(b"application/xrd+xml")
