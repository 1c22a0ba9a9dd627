"""Write-through TCP transports (xmppd.net): bytes leave at once while nothing is queued, never out of
order, and what the kernel does not take goes through Twisted's buffered path, flow control included.

Each test runs a WriteThroughServer on one end of a real socket pair, with a recording reactor in place
of the event loop, so "sent at once" means "readable by the peer before any loop turn"."""

from __future__ import annotations

import socket

import pytest
from twisted.internet import main
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor

from xmppd.net import WriteThroughPort, WriteThroughServer, write_through_reactor


class RecordingReactor(MemoryReactor, Clock):
    """Remembers which descriptors asked to be told when they can write."""

    def __init__(self) -> None:
        MemoryReactor.__init__(self)
        Clock.__init__(self)
        self.writers: set = set()

    def addWriter(self, writer) -> None:
        self.writers.add(writer)

    def removeWriter(self, writer) -> None:
        self.writers.discard(writer)

    def addReader(self, reader) -> None:
        pass

    def removeReader(self, reader) -> None:
        pass


class Producer:
    def __init__(self) -> None:
        self.paused = 0
        self.resumed = 0

    def pauseProducing(self) -> None:
        self.paused += 1

    def resumeProducing(self) -> None:
        self.resumed += 1

    def stopProducing(self) -> None:
        pass


@pytest.fixture
def pair():
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    peer.settimeout(5)
    reactor = RecordingReactor()
    protocol = Protocol()
    transport = WriteThroughServer(ours, protocol, ("127.0.0.1", 1), None, 1, reactor)
    protocol.makeConnection(transport)
    yield transport, peer, reactor
    ours.close()
    peer.close()


def read_exactly(peer: socket.socket, count: int) -> bytes:
    chunks = []
    while count:
        chunk = peer.recv(min(count, 65536))
        assert chunk, "the connection closed early"
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


def test_a_write_is_sent_at_once_without_waking_the_loop(pair) -> None:
    transport, peer, reactor = pair
    transport.write(b"<message/>")
    transport.writeSequence([b"<iq", b"/>"])
    assert read_exactly(peer, 15) == b"<message/><iq/>"
    assert reactor.writers == set()  # no epoll registration, no deferred send
    assert not transport._tempDataBuffer and not transport.dataBuffer


def test_what_the_kernel_does_not_take_is_queued_and_nothing_overtakes_it(pair) -> None:
    transport, peer, reactor = pair
    big = bytes(range(256)) * (4 * 4096)  # 4 MiB: far more than a socket buffer
    transport.write(big)
    assert reactor.writers == {transport}  # the rest waits for writability
    transport.write(b"after")  # must not jump the queue
    received = bytearray()
    while len(received) < len(big) + 5:
        received += peer.recv(65536)
        if transport in reactor.writers:
            assert transport.doWrite() is None
    assert bytes(received) == big + b"after"
    assert reactor.writers == set()  # drained: unregistered again, later writes go straight out
    transport.write(b"again")
    assert read_exactly(peer, 5) == b"again"


def test_a_streaming_producer_is_paused_when_the_queue_is_full_and_resumed_when_drained(pair) -> None:
    transport, peer, reactor = pair
    producer = Producer()
    transport.registerProducer(producer, True)
    transport.write(b"x" * (8 * 1024 * 1024))
    assert producer.paused == 1
    drained = 0
    while drained < 8 * 1024 * 1024:
        drained += len(peer.recv(1 << 20))
        if transport in reactor.writers:
            transport.doWrite()
    assert producer.resumed == 1


def test_a_peer_that_went_away_is_reported_by_the_loop_not_by_write(pair) -> None:
    transport, peer, reactor = pair
    peer.close()
    transport.write(b"<message/>")  # no exception, no protocol callback inside write()
    transport.write(b"<message/>" * 100000)
    assert transport in reactor.writers
    assert transport.doWrite() is main.CONNECTION_LOST


def test_nothing_is_sent_after_loseConnection_is_asked_for_until_the_queue_flushes(pair) -> None:
    transport, peer, reactor = pair
    transport.loseConnection()
    transport.write(b"late")  # queued behind the close, as Twisted does
    assert transport in reactor.writers
    assert transport._tempDataBuffer == [b"late"]


def test_only_a_real_reactor_gets_write_through_ports() -> None:
    memory = MemoryReactor()
    assert write_through_reactor(memory) is memory  # tests keep their memory reactor
    from twisted.internet import reactor

    wrapped = write_through_reactor(reactor)
    assert wrapped is not reactor and wrapped.seconds() > 0  # everything else is the reactor's
    port = wrapped.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    try:
        assert isinstance(port, WriteThroughPort) and port.transport is WriteThroughServer
        assert port.getHost().port > 0
    finally:
        port.stopListening()
