"""TCP transports that send at once when nothing is queued ("write-through").

Twisted never sends inside ``transport.write()``: it appends the bytes to a buffer, registers the socket
for writability (an ``epoll_ctl`` call), sends on the next turn of the event loop and unregisters the
socket (a second ``epoll_ctl``). For a server that writes one small stanza per delivery that is two
system calls and a loop turn per stanza. Profiling the 1:1 message benchmark (bench/RESULTS.md) put
about a fifth of xmppd's CPU there; the issue 10 study measured a write-through variant of a minimal
Twisted responder 37% cheaper.

:class:`WriteThroughServer` sends straight to the socket when its buffers are empty, and buffers only what
the kernel does not take (a full send buffer, a slow reader); from there on Twisted's own write path,
producer flow control (pause at ``bufferSize``) and error handling apply unchanged. Data is never
reordered: while anything is queued, every write queues behind it. A send that fails (the peer reset
the connection) leaves the bytes to Twisted's path, which reports the loss through ``connectionLost`` on
the next loop turn as before, so no protocol callback ever runs inside ``write()``.

TLS is covered too: STARTTLS's record layer writes through the same path (``startTLS`` is given a
bypass class that writes through), and a listener wrapped in ``TLSMemoryBIOFactory`` (direct TLS,
HTTPS) sits on a :class:`WriteThroughServer` already.

:func:`write_through_reactor` gives ``serverFromString`` a reactor whose ``listenTCP`` accepts
connections as :class:`WriteThroughServer`; any other reactor (a test's memory reactor) is returned
unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet import _newtls, tcp
from twisted.internet.abstract import FileDescriptor
from twisted.internet.posixbase import PosixReactorBase

__all__ = ["WriteThroughPort", "WriteThroughServer", "write_through", "write_through_reactor"]


def write_through(fd: Any, data: bytes) -> None:
    """``FileDescriptor.write`` that first tries to send ``data`` at once when nothing is queued."""
    if (
        data
        and not fd._tempDataLen
        and not fd.dataBuffer
        and fd.connected
        and not fd.disconnecting
        and not fd._writeDisconnected
    ):
        try:
            sent = fd.socket.send(data)
        except OSError:
            # EAGAIN (the send buffer is full) or EINTR: Twisted's path will retry when writable. A reset
            # or broken pipe: its doWrite meets the same error and reports the lost connection.
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    FileDescriptor.write(fd, data)


class _WriteThroughBypass(FileDescriptor):
    """The "bypass" base that ``startTLS`` sends the encrypted TLS records through (see
    ``twisted.internet._newtls``): Twisted's FileDescriptor, with the write-through ``write``."""

    write = write_through

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        write_through(self, b"".join(iovec))


class WriteThroughServer(tcp.Server):
    """An accepted TCP connection whose writes go straight to the socket while nothing is queued."""

    def write(self, data: bytes) -> None:
        if self.TLS:  # after startTLS: through the TLS layer, which writes back through the bypass
            if self.connected:
                self.protocol.write(data)
            return
        write_through(self, data)

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        self.write(b"".join(iovec))

    def startTLS(self, ctx: Any, normal: bool = True) -> None:
        _newtls.startTLS(self, ctx, normal, _WriteThroughBypass)


class WriteThroughPort(tcp.Port):
    """A listening TCP port whose connections are :class:`WriteThroughServer`."""

    transport = WriteThroughServer


class _WriteThroughReactor:
    """A reactor that listens on TCP with :class:`WriteThroughPort`; everything else is the reactor's."""

    def __init__(self, reactor: PosixReactorBase) -> None:
        self._reactor = reactor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> WriteThroughPort:
        listening = WriteThroughPort(port, factory, backlog, interface, self._reactor)
        listening.startListening()
        return listening


def write_through_reactor(reactor: Any) -> Any:
    """``reactor`` for ``serverFromString``: with write-through TCP if it is a real (posix) reactor."""
    if isinstance(reactor, PosixReactorBase):
        return _WriteThroughReactor(reactor)
    return reactor
