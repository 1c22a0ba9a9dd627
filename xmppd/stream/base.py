"""What every XML stream protocol shares (client, server-to-server, component): feeding the stream
parser, turning a parser problem into the right stream error and a close (RFC 6120 s4.9), and closing
the parser when the connection goes."""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import Protocol

from xmppd.log import logger
from xmppd.xml.parser import StreamError, StreamParser

log = logger("xmppd.stream")


def cancel(timer: Any) -> None:
    """Cancel a reactor timer if it is still pending (None is fine)."""
    if timer is not None and timer.active():
        timer.cancel()


class XMLStream(Protocol):
    """A connection carrying one XML stream at a time (restarts reset the parser)."""

    closed = False
    _parser: StreamParser

    def log_prefix(self) -> str:
        """Who this stream is, at the start of its log lines (e.g. "c2s <id> from <ip>")."""
        raise NotImplementedError

    def data_arrived(self) -> None:
        """Called before each chunk is parsed (activity timers)."""

    def close(self, condition: str | None = None, text: str | None = None) -> None:
        raise NotImplementedError

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
