"""The per-IP connection limit on a real server: connections beyond it are closed at once, others work."""

import socket
import time

HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:client'"
    b" xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>"
)


def opened(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(HEADER)
    data = b""
    while b"</stream:features>" not in data:
        chunk = sock.recv(4096)
        assert chunk, "the server closed a connection within the limit"
        data += chunk
    return sock


def refused(port: int) -> bool:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        sock.sendall(HEADER)
        return sock.recv(4096) == b""  # closed before anything was answered
    except ConnectionResetError:
        return True
    finally:
        sock.close()


def test_connections_beyond_the_limit_are_refused(xmpp_process):
    server = xmpp_process(config={"server": {"max_connections_per_ip": 3}})
    port = server.port()
    sockets = [opened(port) for _ in range(3)]
    assert refused(port)
    assert "refusing a connection from 127.0.0.1" in server.log()
    sockets.pop().close()
    time.sleep(0.3)  # the server notices the close
    sockets.append(opened(port))  # a slot is free again
    for sock in sockets:
        sock.close()
