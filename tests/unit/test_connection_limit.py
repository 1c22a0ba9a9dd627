"""Per-IP connection limit ([server] max_connections_per_ip) for client, server and component listeners."""

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from xmppd.stream.base import ConnectionLimiter
from xmppd.stream.c2s import C2SFactory
from xmppd.testing import MemoryServer


def test_limiter_counts_per_host_and_forgets_closed_ones():
    limiter = ConnectionLimiter(2)
    assert limiter.admit("192.0.2.1") and limiter.admit("192.0.2.1")
    assert not limiter.admit("192.0.2.1")
    assert limiter.admit("192.0.2.2")  # other hosts are not affected
    limiter.release("192.0.2.1")
    assert limiter.admit("192.0.2.1")
    for _ in range(2):
        limiter.release("192.0.2.1")
    limiter.release("192.0.2.2")
    assert limiter.open_from("192.0.2.1") == 0 and not limiter._open  # nothing kept for idle hosts


def test_factory_refuses_beyond_the_limit_and_admits_again_after_a_close():
    memory = MemoryServer(config={"server": {"max_connections_per_ip": 2}})
    try:
        factory = C2SFactory(memory.server)
        addr = IPv4Address("TCP", "192.0.2.7", 40000)
        streams = [factory.buildProtocol(addr) for _ in range(2)]
        assert all(s is not None for s in streams)
        assert factory.buildProtocol(addr) is None  # Twisted closes a connection whose protocol is None
        assert factory.buildProtocol(IPv4Address("TCP", "192.0.2.8", 40001)) is not None
        streams[0].makeConnection(StringTransport(peerAddress=addr))
        streams[0].connectionLost(None)
        assert factory.buildProtocol(addr) is not None
    finally:
        memory.stop()
