"""BOSH (XEP-0124, XEP-0206) on a memory server, driven with twisted.web's DummyRequest."""

from __future__ import annotations

import base64
from io import BytesIO

import pytest
from lxml import etree
from twisted.internet.address import IPv4Address
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from xmppd.http import bosh
from xmppd.http.bosh import BOSHResource
from xmppd.testing import MemoryServer
from xmppd.testing.scram import ScramClient

NS = "http://jabber.org/protocol/httpbind"
XBOSH = "urn:xmpp:xbosh"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
BIND = "urn:ietf:params:xml:ns:xmpp-bind"
CLIENT = "jabber:client"


class Req(DummyRequest):
    def __init__(
        self, data: bytes, *, method: bytes = b"POST", secure: bool = False, host: str = "127.0.0.1"
    ):
        super().__init__([])
        self.method = method
        self.content = BytesIO(data)
        self.client = IPv4Address("TCP", host, 40000)
        self._secure = secure

    def isSecure(self) -> bool:
        return self._secure

    def body(self) -> etree._Element:
        assert self.finished, "the request is still held"
        return etree.fromstring(b"".join(self.written))


def render(resource: BOSHResource, req: Req) -> Req:
    result = resource.render(req)
    if result is not NOT_DONE_YET:
        req.write(result)
        req.finish()
    return req


class Bosh:
    """A minimal BOSH client."""

    def __init__(self, memory: MemoryServer, resource: BOSHResource | None = None, host: str = "127.0.0.1"):
        self.memory = memory
        self.resource = resource or BOSHResource(memory.server)
        self.rid = 1000
        self.sid: str | None = None
        self.host = host

    def post(self, xml: str | bytes, **kw) -> Req:
        return render(self.resource, Req(xml.encode() if isinstance(xml, str) else xml, host=self.host, **kw))

    def create(
        self, to: str = "localhost", hold: int = 1, wait: int = 60, ack: str | None = None, **kw
    ) -> etree._Element:
        ack_attr = f" ack='{ack}'" if ack is not None else ""
        req = self.post(
            f"<body xmlns='{NS}' xmlns:xmpp='{XBOSH}' xmpp:version='1.0' xml:lang='en' to='{to}'"
            f" rid='{self.rid}' hold='{hold}' wait='{wait}' ver='1.11'{ack_attr}/>",
            **kw,
        )
        body = req.body()
        self.sid = body.get("sid")
        return body

    def send(self, payload: str = "", rid: int | None = None, **attrs: str) -> Req:
        if rid is None:
            self.rid += 1
            rid = self.rid
        extra = "".join(f" {k.replace('__', ':')}='{v}'" for k, v in attrs.items())
        return self.post(
            f"<body xmlns='{NS}' xmlns:xmpp='{XBOSH}' sid='{self.sid}' rid='{rid}'{extra}>{payload}</body>"
        )

    def exchange(self, payload: str = "", **attrs: str) -> etree._Element:
        """Send, and return the answer (which must come at once)."""
        return self.send(payload, **attrs).body()

    def login(self, user: str, password: str = "password", resource: str = "web") -> str:
        self.memory.adduser(f"{user}@localhost", password)
        self.create()
        scram = ScramClient(user, password, "SHA-256")
        first = base64.b64encode(scram.first()).decode()
        challenge = self.exchange(f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-256'>{first}</auth>")[0]
        assert challenge.tag == f"{{{SASL}}}challenge"
        final = base64.b64encode(scram.final(base64.b64decode(challenge.text))).decode()
        success = self.exchange(f"<response xmlns='{SASL}'>{final}</response>")[0]
        assert success.tag == f"{{{SASL}}}success"
        assert scram.verify(base64.b64decode(success.text))
        features = self.exchange(xmpp__restart="true")[0]
        assert features.find(f"{{{BIND}}}bind") is not None
        bound = self.exchange(
            f"<iq xmlns='{CLIENT}' type='set' id='b'><bind xmlns='{BIND}'><resource>{resource}</resource>"
            "</bind></iq>"
        )[0]
        assert bound.get("type") == "result"
        return bound.findtext(f".//{{{BIND}}}jid")


@pytest.fixture
def memory():
    server = MemoryServer()
    yield server
    server.stop()


def test_session_creation_attributes_and_features(memory):
    client = Bosh(memory)
    body = client.create(hold=5, wait=300)
    assert len(body.get("sid")) == 32
    assert body.get("wait") == "60"  # capped
    assert body.get("hold") == str(bosh.MAX_HOLD)
    assert body.get("requests") == str(bosh.MAX_HOLD + 1)
    assert body.get("inactivity") and body.get("polling") and body.get("maxpause")
    assert body.get("ver") == "1.11"
    assert body.get("from") == "localhost"
    assert body.get("authid")
    assert body.get(f"{{{XBOSH}}}version") == "1.0"
    assert body.get(f"{{{XBOSH}}}restartlogic") == "true"
    features = body[0]
    assert features.tag == "{http://etherx.jabber.org/streams}features"
    mechs = [m.text for m in features.iter(f"{{{SASL}}}mechanism")]
    assert "SCRAM-SHA-256" in mechs and "PLAIN" in mechs  # loopback counts as secure
    assert features.find("{urn:ietf:params:xml:ns:xmpp-tls}starttls") is None
    assert client.sid in client.resource.sessions


def test_not_secure_from_remote_host_without_tls(memory):
    client = Bosh(memory, host="192.0.2.7")
    features = client.create()[0]
    mechs = [m.text for m in features.iter(f"{{{SASL}}}mechanism")]
    assert "PLAIN" not in mechs
    assert features.find("{urn:ietf:params:xml:ns:xmpp-tls}starttls") is not None
    # over HTTPS it is secure
    features = Bosh(memory, host="192.0.2.7").create(secure=True)[0]
    assert "PLAIN" in [m.text for m in features.iter(f"{{{SASL}}}mechanism")]


def test_unknown_host(memory):
    body = Bosh(memory).create(to="elsewhere.example")
    assert body.get("type") == "terminate"


def test_login_and_chat_both_ways(memory):
    client = Bosh(memory)
    jid = client.login("alice")
    assert jid == "alice@localhost/web"
    bob = memory.login("bob@localhost/pc")
    # client -> bob
    sent = client.send(
        f"<message xmlns='{CLIENT}' to='bob@localhost/pc' type='chat'><body>hi</body></message>"
    )
    bob.expect("<message from='alice@localhost/web' type='chat'><body>hi</body></message>")
    assert not sent.finished  # nothing to say: held
    # bob -> client: a held request returns with the message
    held = client.send()
    assert sent.finished and len(sent.body()) == 0  # hold=1: the older one answered empty
    assert not held.finished
    bob.send("<message to='alice@localhost/web' type='chat'><body>hello</body></message>")
    message = held.body()[0]
    assert message.tag == f"{{{CLIENT}}}message"
    assert message.findtext(f"{{{CLIENT}}}body") == "hello"
    assert message.get("from") == "bob@localhost/pc"


def test_wait_timeout_returns_empty_body(memory):
    client = Bosh(memory)
    client.create(wait=10)
    held = client.send()
    assert not held.finished
    memory.advance(10)
    body = held.body()
    assert body.tag == f"{{{NS}}}body" and len(body) == 0 and body.get("type") is None


def test_hold_overflow_answers_oldest(memory):
    client = Bosh(memory)
    client.create(hold=1)
    first = client.send()
    assert not first.finished
    second = client.send()
    assert first.finished and len(first.body()) == 0
    assert not second.finished


def test_out_of_order_rid_is_buffered(memory):
    client = Bosh(memory)
    client.create(hold=1)
    base = client.rid
    later = client.send(rid=base + 2)
    assert not later.finished
    earlier = client.send(rid=base + 1)
    # rid base+1 processed, then base+2: hold=1 answers base+1
    assert earlier.finished and not later.finished
    assert client.resource.sessions[client.sid].rid == base + 2


def test_repeated_rid_gets_cached_response(memory):
    client = Bosh(memory)
    creation = client.create()
    again = client.send(rid=client.rid)
    assert etree.tostring(again.body()) == etree.tostring(creation)


def test_rid_out_of_window(memory):
    client = Bosh(memory)
    client.create()
    body = client.send(rid=client.rid + 10).body()
    assert body.get("type") == "terminate" and body.get("condition") == "item-not-found"
    assert client.sid not in client.resource.sessions


def test_old_rid_without_cached_response(memory):
    client = Bosh(memory)
    client.create()
    body = client.send(rid=client.rid - 50).body()
    assert body.get("condition") == "item-not-found"


def test_overactivity(memory):
    client = Bosh(memory)
    client.create(hold=1)
    base = client.rid
    client.send(rid=base + 1)  # held
    client.send(rid=base + 3)  # buffered, waiting for base + 2: two requests open
    body = client.send(rid=base + 2).body()  # a third one: more than 'requests'
    assert body.get("condition") == "policy-violation"
    assert client.sid not in client.resource.sessions


def test_wrong_sid(memory):
    client = Bosh(memory)
    client.create()
    client.sid = "0" * 32
    body = client.send().body()
    assert body.get("type") == "terminate" and body.get("condition") == "item-not-found"


@pytest.mark.parametrize(
    "data",
    [
        b"<body xmlns='http://jabber.org/protocol/httpbind' rid='1'",
        b"<notbody xmlns='http://jabber.org/protocol/httpbind' rid='1' to='localhost'/>",
        b"<!DOCTYPE body [<!ENTITY x 'y'>]>"
        b"<body xmlns='http://jabber.org/protocol/httpbind' rid='1'>&x;</body>",
        b"<body xmlns='http://jabber.org/protocol/httpbind' rid='x' to='localhost'/>",
    ],
)
def test_malformed_body(memory, data):
    body = Bosh(memory).post(data).body()
    assert body.get("type") == "terminate" and body.get("condition") == "bad-request"


def test_oversized_body(memory):
    req = Bosh(memory).post(b"<body xmlns='http://jabber.org/protocol/httpbind'>" + b" " * bosh.MAX_BODY)
    assert req.responseCode == 413


def test_get_not_allowed(memory):
    req = render(BOSHResource(memory.server), Req(b"", method=b"GET"))
    assert req.responseCode == 405


def test_terminate_by_client_makes_contact_see_unavailable(memory):
    bob = memory.login("bob@localhost/pc", available=True)
    client = Bosh(memory)
    client.login("alice")
    client.send(f"<presence xmlns='{CLIENT}'/><presence xmlns='{CLIENT}' to='bob@localhost/pc'/>")
    bob.drain()
    body = client.exchange(type="terminate")
    assert body.get("type") == "terminate"
    assert client.sid not in client.resource.sessions
    unavailable = [p for p in bob.drain() if p.get("type") == "unavailable"]
    assert unavailable and unavailable[0].get("from") == "alice@localhost/web"


def test_inactivity_terminates_session(memory):
    bob = memory.login("bob@localhost/pc", available=True)
    client = Bosh(memory)
    client.login("alice")
    client.send(f"<presence xmlns='{CLIENT}'/><presence xmlns='{CLIENT}' to='bob@localhost/pc'/>")
    bob.drain()
    memory.advance(bosh.INACTIVITY + 1)
    assert client.sid not in client.resource.sessions
    unavailable = [p for p in bob.drain() if p.get("type") == "unavailable"]
    assert unavailable and unavailable[0].get("from") == "alice@localhost/web"


def test_held_request_keeps_session_alive(memory):
    client = Bosh(memory)
    client.login("alice")  # else the c2s authentication timeout ends it
    for _ in range(3):
        held = client.send()
        memory.advance(59)
        assert not held.finished
        memory.advance(1)
        assert held.finished
    assert client.sid in client.resource.sessions


def test_pause(memory):
    client = Bosh(memory)
    client.login("alice")
    held = client.send()
    paused = client.send(pause="100")
    assert held.finished and paused.finished
    memory.advance(bosh.INACTIVITY + 1)
    assert client.sid in client.resource.sessions
    memory.advance(100)
    assert client.sid not in client.resource.sessions


def test_stanza_before_auth_ends_session_with_stream_error(memory):
    client = Bosh(memory)
    client.create()
    body = client.exchange(f"<message xmlns='{CLIENT}' to='x@localhost'/>")
    assert body.get("type") == "terminate"
    assert body.get("condition") == "remote-stream-error"
    assert body.find("{http://etherx.jabber.org/streams}error") is not None


@pytest.mark.parametrize(
    ("allowed", "origin", "expected"),
    [
        ([], b"https://evil.example", None),
        (["https://chat.example"], b"https://chat.example", b"https://chat.example"),
        (["https://chat.example"], b"https://evil.example", None),
        (["*"], b"https://any.example", b"*"),
    ],
)
def test_cors(memory, allowed, origin, expected):
    memory.server.config.sections.setdefault("http", {})["cors_origins"] = allowed
    resource = BOSHResource(memory.server)
    for method in (b"OPTIONS", b"POST"):
        req = Req(f"<body xmlns='{NS}' rid='5' to='localhost'/>".encode(), method=method)
        req.requestHeaders.setRawHeaders(b"origin", [origin])
        render(resource, req)
        assert req.responseHeaders.getRawHeaders(b"access-control-allow-origin", [None])[0] == expected


# -- acknowledgements (XEP-0124 s9) ------------------------------------------------------------------------


def test_acks_are_off_unless_the_client_asks(memory):
    client = Bosh(memory)
    assert client.create().get("ack") is None
    first = client.send()
    client.send()  # answers the first (hold=1): it is older than the newest request
    assert first.body().get("ack") is None


def test_creation_with_ack_is_acknowledged_with_its_rid(memory):
    client = Bosh(memory)
    body = client.create(ack="1")
    assert body.get("ack") == str(client.rid)  # s9.1: the rid of the creation request


def test_a_response_to_an_older_request_reports_the_newest_rid(memory):
    client = Bosh(memory)
    client.create(ack="1")
    first = client.send()
    second = client.send()  # hold=1: the first is answered now, while rid second is the newest
    assert first.finished and first.body().get("ack") == str(client.rid)
    assert not second.finished


def test_a_client_ack_releases_cached_responses(memory):
    client = Bosh(memory)
    client.create(ack="1")
    creation_rid = client.rid
    session = client.resource.sessions[client.sid]
    assert creation_rid in session._responses
    client.send(ack=str(creation_rid))  # the client says it has the creation response
    assert creation_rid not in session._responses
    # so a repeat of that rid can no longer be answered from the cache (s14.3 needs a cached response)
    assert client.send(rid=creation_rid).body().get("condition") == "item-not-found"
