"""ALPN (XEP-0368 s3): a peer that offers ALPN must complete the TLS handshake, whether or not it offers
our protocol. Twisted's default callback aborted such handshakes (found by Prosody, which offers
"xmpp-server" even on STARTTLS); these checks need no Prosody."""

import socket
import ssl

import pytest

S2S_HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
    b" xmlns:db='jabber:server:dialback' from='peer.example' to='localhost' version='1.0'>"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tls_context(offer: list[str] | None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the server's certificate is self-signed; ALPN is the point here
    if offer:
        context.set_alpn_protocols(offer)
    return context


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(4096)
        assert chunk, f"connection closed before {marker!r}: {data!r}"
        data += chunk
    return data


@pytest.fixture(scope="module")
def server(module_xmpp_process):
    return module_xmpp_process(
        config={
            "listen": {
                "c2s_direct_tls": ["tcp:0:interface=127.0.0.1"],
                "s2s": [f"tcp:{free_port()}:interface=127.0.0.1"],
            }
        }
    )


@pytest.mark.parametrize(
    ("offer", "selected"), [(["xmpp-client"], "xmpp-client"), (["h2"], None), (None, None)]
)
def test_direct_tls_c2s_with_alpn_offers(server, offer, selected):
    raw = socket.create_connection(("127.0.0.1", server.port("c2s_direct_tls")), timeout=10)
    with tls_context(offer).wrap_socket(raw, server_hostname="localhost") as sock:
        assert sock.selected_alpn_protocol() == selected
        sock.sendall(
            b"<?xml version='1.0'?><stream:stream xmlns='jabber:client'"
            b" xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>"
        )
        assert b"<mechanism>SCRAM-SHA-256</mechanism>" in read_until(sock, b"</stream:features>")


@pytest.mark.parametrize(("offer", "selected"), [(["xmpp-server"], "xmpp-server"), (["h2"], None)])
def test_s2s_starttls_with_alpn_offers(server, offer, selected):
    raw = socket.create_connection(("127.0.0.1", server.port("s2s")), timeout=10)
    raw.sendall(S2S_HEADER)
    assert b"<starttls" in read_until(raw, b"</stream:features>")
    raw.sendall(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    read_until(raw, b"<proceed")
    with tls_context(offer).wrap_socket(raw, server_hostname="localhost") as sock:
        assert sock.selected_alpn_protocol() == selected
        sock.sendall(S2S_HEADER)
        assert b"urn:xmpp:features:dialback" in read_until(sock, b"</stream:features>")
