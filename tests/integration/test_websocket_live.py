"""XMPP over WebSocket (RFC 7395) against a real ``twistd xmppd``: a Python WebSocket client (the
``websockets`` package) logs in with SCRAM-SHA-256, binds, chats with a slixmpp user on c2s and closes;
refused handshakes, stream errors, host-meta and CORS over real HTTP."""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET

import pytest
import websockets
from slixclient import Clients, run, within

from xmppd.testing.scram import ScramClient

NS_FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_STREAMS = "http://etherx.jabber.org/streams"
OPEN = f"<open xmlns='{NS_FRAMING}' to='localhost' version='1.0'/>"
CLOSE = f"<close xmlns='{NS_FRAMING}'/>"
HTTP = {"listen": {"http": ["tcp:0:interface=127.0.0.1"]}}


def url(server, path: str = "/xmpp-websocket", scheme: str = "ws") -> str:
    return f"{scheme}://127.0.0.1:{server.port('http')}{path}"


async def receive(ws) -> ET.Element:
    message = await within(ws.recv())
    assert isinstance(message, str), "RFC 7395: text messages only"
    return ET.fromstring(message)


async def login(ws, user: str, password: str, resource: str) -> str:
    await ws.send(OPEN)
    opened = await receive(ws)
    assert opened.tag == f"{{{NS_FRAMING}}}open" and opened.get("from") == "localhost"
    features = await receive(ws)
    assert features.tag == f"{{{NS_STREAMS}}}features"
    assert features.find("{urn:ietf:params:xml:ns:xmpp-tls}starttls") is None
    mechanisms = [m.text for m in features.iter(f"{{{NS_SASL}}}mechanism")]
    assert "SCRAM-SHA-256" in mechanisms  # loopback counts as secure: SASL despite [tls] required
    scram = ScramClient(user, password, "SHA-256")
    await ws.send(
        f"<auth xmlns='{NS_SASL}' mechanism='SCRAM-SHA-256'>{base64.b64encode(scram.first()).decode()}</auth>"
    )
    challenge = await receive(ws)
    final = scram.final(base64.b64decode(challenge.text))
    await ws.send(f"<response xmlns='{NS_SASL}'>{base64.b64encode(final).decode()}</response>")
    success = await receive(ws)
    assert success.tag == f"{{{NS_SASL}}}success"
    assert scram.verify(base64.b64decode(success.text))
    await ws.send(OPEN)
    assert (await receive(ws)).tag == f"{{{NS_FRAMING}}}open"
    assert (await receive(ws)).find(f"{{{NS_BIND}}}bind") is not None
    await ws.send(
        f"<iq xmlns='jabber:client' type='set' id='b1'><bind xmlns='{NS_BIND}'>"
        f"<resource>{resource}</resource></bind></iq>"
    )
    bound = await receive(ws)
    assert bound.tag == "{jabber:client}iq" and bound.get("type") == "result"
    return bound.findtext(f".//{{{NS_BIND}}}jid")


def test_websocket_login_and_chat_with_a_c2s_user(xmpp_process):
    server = xmpp_process(config=HTTP, users={"alice@localhost": "pw1", "bob@localhost": "pw2"})

    async def body() -> None:
        async with Clients(server) as clients:
            bob = await clients.login("bob@localhost/pc", "pw2")
            async with websockets.connect(url(server), subprotocols=["xmpp"]) as ws:
                assert ws.subprotocol == "xmpp"
                assert await login(ws, "alice", "pw1", "web") == "alice@localhost/web"
                await ws.send(
                    "<message xmlns='jabber:client' to='bob@localhost/pc' type='chat'>"
                    "<body>hi bob</body></message>"
                )
                msg = await bob.next_message()
                assert msg["body"] == "hi bob" and str(msg["from"]) == "alice@localhost/web"
                bob.send_message(mto="alice@localhost/web", mbody="hi alice", mtype="chat")
                while True:
                    el = await receive(ws)
                    if el.tag == "{jabber:client}message":
                        break
                assert el.findtext("{jabber:client}body") == "hi alice"
                assert el.get("from") == "bob@localhost/pc"
                await ws.send(CLOSE)
                while (el := await receive(ws)).tag != f"{{{NS_FRAMING}}}close":
                    pass
                await within(ws.wait_closed())
                assert ws.close_code == 1000

    run(body())


def test_wrong_subprotocol_is_refused(xmpp_process):
    server = xmpp_process(config=HTTP)

    async def body() -> None:
        for protocols in (["chat"], None):
            with pytest.raises(websockets.exceptions.InvalidStatus) as info:
                async with websockets.connect(url(server), subprotocols=protocols):
                    pass
            assert info.value.response.status_code == 400

    run(body())


def test_malformed_xml_is_a_stream_error_then_close(xmpp_process):
    server = xmpp_process(config=HTTP)

    async def body() -> None:
        async with websockets.connect(url(server), subprotocols=["xmpp"]) as ws:
            await ws.send(OPEN)
            await receive(ws)
            await receive(ws)
            await ws.send("<message xmlns='jabber:client'><body>oops</message>")
            error = await receive(ws)
            assert error.tag == f"{{{NS_STREAMS}}}error"
            assert error[0].tag == "{urn:ietf:params:xml:ns:xmpp-streams}not-well-formed"
            assert (await receive(ws)).tag == f"{{{NS_FRAMING}}}close"
            await within(ws.wait_closed())

    run(body())


def get(address: str, origin: str | None = None, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(address, method=method, headers={"Origin": origin} if origin else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def test_host_meta_and_cors(xmpp_process):
    config = {**HTTP, "http": {"cors_origins": ["https://chat.example.org"]}}
    server = xmpp_process(config=config)
    base = url(server, "", "http")
    port = server.port("http")
    status, headers, data = get(f"{base}/.well-known/host-meta.json", origin="https://chat.example.org")
    assert status == 200 and headers["content-type"] == "application/json"
    assert headers["access-control-allow-origin"] == "https://chat.example.org"
    links = {link["rel"]: link["href"] for link in json.loads(data)["links"]}
    assert links["urn:xmpp:alt-connections:websocket"] == f"ws://127.0.0.1:{port}/xmpp-websocket"
    status, headers, data = get(f"{base}/.well-known/host-meta", origin="https://evil.example")
    assert status == 200 and "access-control-allow-origin" not in headers
    xrd = ET.fromstring(data)
    rels = {link.get("rel"): link.get("href") for link in xrd}
    assert rels["urn:xmpp:alt-connections:websocket"] == f"ws://127.0.0.1:{port}/xmpp-websocket"
    try:
        import xmppd.http.bosh  # noqa: F401

        assert rels["urn:xmpp:alt-connections:xbosh"] == f"http://127.0.0.1:{port}/http-bind"
    except ImportError:
        assert "urn:xmpp:alt-connections:xbosh" not in rels
    status, headers, _ = get(
        f"{base}/.well-known/host-meta", origin="https://chat.example.org", method="OPTIONS"
    )
    assert status == 204 and headers["access-control-allow-origin"] == "https://chat.example.org"
    assert get(f"{base}/nothing-here")[0] == 404


def test_no_http_listener_by_default_in_tests(xmpp_process):
    server = xmpp_process()
    assert "http" not in server.listeners


def test_websocket_over_https(xmpp_process):
    server = xmpp_process(
        config={"listen": {"https": ["tcp:0:interface=127.0.0.1"]}}, users={"alice@localhost": "pw1"}
    )
    context = ssl.create_default_context(cafile=str(server.data_dir / "selfsigned.crt"))
    address = f"wss://localhost:{server.port('https')}/xmpp-websocket"

    async def body() -> None:
        async with websockets.connect(address, subprotocols=["xmpp"], ssl=context) as ws:
            assert await login(ws, "alice", "pw1", "tls") == "alice@localhost/tls"
            await ws.send(CLOSE)
            while (await receive(ws)).tag != f"{{{NS_FRAMING}}}close":
                pass

    run(body())


def test_a_websocket_client_that_stops_reading_is_cut_off(xmpp_process, raw_client):
    """Flow control reaches WebSocket sessions too: a client that stops reading is disconnected once its
    unread backlog passes the limit, instead of growing the server's memory (others keep being served)."""
    import asyncio
    import time

    server = xmpp_process(config=HTTP, users={"alice@localhost": "pw1", "bob@localhost": "pw2"})
    flooder = raw_client(server, timeout=20)
    flooder.login("bob", "pw2", "f")

    async def body() -> None:
        # max_queue=1: once one message waits unread, the client stops reading the socket
        async with websockets.connect(url(server), subprotocols=["xmpp"], max_queue=1) as ws:
            assert await login(ws, "alice", "pw1", "web") == "alice@localhost/web"
            text = "x" * 4000
            for batch in range(40):  # about 8 MB, never read by alice
                flooder.send(
                    "".join(
                        f"<message to='alice@localhost/web' type='chat' id='w{batch}-{i}'>"
                        f"<body>{text}</body></message>"
                        for i in range(50)
                    )
                )
            deadline = time.monotonic() + 30
            while "does not read its data" not in server.log():
                assert time.monotonic() < deadline, "the stuck WebSocket session was not cut off"
                await asyncio.sleep(0.2)

    run(body())
    status = json.loads(server.ctl("--json", "status").stdout)
    assert status["sessions"] == 1  # only the flooder is left; the server still answers
