"""What every XML stream protocol shares (client, server-to-server, component): feeding the stream
parser, turning a parser problem into the right stream error and a close (RFC 6120 s4.9), and closing
the parser when the connection goes."""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from zope.interface import implementer

from xmppd.log import logger
from xmppd.xml.parser import StreamError, StreamParser

log = logger("xmppd.stream")


class ConnectionLimiter:
    """Open connections per IP address, bounded by ``[server] max_connections_per_ip``: one host cannot
    exhaust the server by opening connections. The table holds only hosts with open connections."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}

    def admit(self, host: str) -> bool:
        count = self._open.get(host, 0)
        if count >= self.limit:
            return False
        self._open[host] = count + 1
        return True

    def release(self, host: str) -> None:
        count = self._open.get(host, 0) - 1
        if count > 0:
            self._open[host] = count
        else:
            self._open.pop(host, None)

    def open_from(self, host: str) -> int:
        return self._open.get(host, 0)


def admit(server: Any, addr: Any, stream: XMLStream) -> XMLStream | None:
    """For a factory's buildProtocol: ``stream`` if its peer is under the connection limit, else None
    (Twisted then closes the connection before anything is read)."""
    host = getattr(addr, "host", None)
    if host is None:
        return stream  # UNIX sockets and tests without an address
    if not server.connection_limiter.admit(host):
        log.warn(
            "refusing a connection from {host}: {limit} open already (max_connections_per_ip)",
            host=host,
            limit=server.connection_limiter.limit,
        )
        return None
    stream.limited_host = host
    stream.limiter = server.connection_limiter
    return stream


def cancel(timer: Any) -> None:
    """Cancel a reactor timer if it is still pending (None is fine)."""
    if timer is not None and timer.active():
        timer.cancel()


@implementer(IPushProducer)
class XMLStream(Protocol):
    """A connection carrying one XML stream at a time (restarts reset the parser).

    Output flow control: once registered as the transport's producer, the stream is paused when the
    peer stops reading; what is written while paused is counted, and past ``max_backlog`` bytes the
    peer is cut off with ``<policy-violation/>`` instead of the server's memory growing."""

    max_backlog = 2 * 1024 * 1024
    _congested = False
    _backlog = 0
    closed = False
    _parser: StreamParser
    limited_host: str | None = None  # counted against the per-IP limit (see admit)
    limiter: ConnectionLimiter | None = None

    def log_prefix(self) -> str:
        """Who this stream is, at the start of its log lines (e.g. "c2s <id> from <ip>")."""
        raise NotImplementedError

    def data_arrived(self) -> None:
        """Called before each chunk is parsed (activity timers)."""

    def close(self, condition: str | None = None, text: str | None = None) -> None:
        raise NotImplementedError

    def _write(self, data: bytes) -> None:
        if self.closed:
            return
        if self._congested:
            self._backlog += len(data)
            if self._backlog > self.max_backlog:
                log.info("{stream} does not read its data; closing", stream=self.log_prefix())
                self._congested = False
                self.close("policy-violation", "too much unread data")
                # A graceful close would wait to flush what the peer does not read: drop it now, so
                # the session ends and its memory is freed at once.
                self.transport.abortConnection()
                return
        self.transport.write(data)

    # IPushProducer: the transport pauses us when its send buffer is full.
    def pauseProducing(self) -> None:
        if not self._congested:  # some transports (twisted.web's channel) pause again while paused
            self._congested = True
            self._backlog = 0

    def resumeProducing(self) -> None:
        self._congested = False

    def stopProducing(self) -> None:
        self._congested = False

    def dataReceived(self, data: bytes) -> None:
        if self.closed:
            return
        self.data_arrived()
        try:
            self._parser.feed(data)
        except StreamError as e:
            log.info(
                "{stream}: stream error {condition}: {text}",
                stream=self.log_prefix(),
                condition=e.condition,
                text=e.text,
            )
            self.close(e.condition, e.text)

    def connectionLost(self, reason: object = None) -> None:
        self.closed = True
        self._parser.close()
        if self.limiter is not None and self.limited_host is not None:
            self.limiter.release(self.limited_host)
            self.limited_host = None
