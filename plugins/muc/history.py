"""Discussion history a room sends on entering (XEP-0045 s7.2.15) and its limits (s7.2.16)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from lxml import etree

from xmppd.xml.delay import add_delay, parse_datetime
from xmppd.xml.stanza import copy_stanza, parse_stanza
from xmppd.xml.writer import serialize

NS_MUC = "http://jabber.org/protocol/muc"


@dataclass(frozen=True)
class Entry:
    time: float
    stanza: etree._Element  # the message as reflected, from room/nick, without 'to'
    size: int  # characters of the XML as sent (s7.2.16: maxchars counts the complete stanzas)


class HistoryRequest:
    """What a joining user asks for in ``<history/>`` (s7.2.16); None where it sets no limit."""

    def __init__(self, x: etree._Element | None) -> None:
        self.maxstanzas: int | None = None
        self.maxchars: int | None = None
        self.seconds: float | None = None
        self.since: float | None = None
        history = x.find(f"{{{NS_MUC}}}history") if x is not None else None
        if history is None:
            return
        self.maxstanzas = _count(history.get("maxstanzas"))
        self.maxchars = _count(history.get("maxchars"))
        seconds = _count(history.get("seconds"))
        self.seconds = float(seconds) if seconds is not None else None
        since = history.get("since")
        if since:
            try:
                self.since = parse_datetime(since)
            except ValueError:
                self.since = None  # an unreadable 'since' limits nothing rather than refusing the join


def _count(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return max(0, int(value))
    except ValueError:
        return None


class History:
    """The last messages of a room, at most ``length`` of them."""

    def __init__(self, length: int) -> None:
        self.entries: deque[Entry] = deque(maxlen=length)

    def resize(self, length: int) -> None:
        if length != self.entries.maxlen:
            self.entries = deque(self.entries, maxlen=length)

    def add(self, stanza: etree._Element, now: float) -> str | None:
        """Keep a reflected message; its XML text (what a persistent room stores), or None when the
        room keeps no history."""
        if self.entries.maxlen == 0:
            return None
        kept = copy_stanza(stanza)
        kept.attrib.pop("to", None)
        text = serialize(kept).decode("utf-8")
        self.entries.append(Entry(now, kept, len(text)))
        return text

    def restore(self, items: list[tuple[float, str]]) -> None:
        """Stored messages (time, XML text), oldest first, as a restarted persistent room finds them."""
        for when, text in items:
            try:
                stanza = parse_stanza(text)
            except ValueError:
                continue
            self.entries.append(Entry(when, stanza, len(text)))

    def select(self, request: HistoryRequest, now: float, room_jid: str) -> list[etree._Element]:
        """The messages to send a joining user, oldest first, each with a XEP-0203 delay from the room
        (s7.2.15). Every limit the request gives applies; the newest messages are kept."""
        chosen: list[etree._Element] = []
        chars = 0
        for entry in reversed(self.entries):
            if request.maxstanzas is not None and len(chosen) >= request.maxstanzas:
                break
            if request.seconds is not None and entry.time < now - request.seconds:
                break
            if request.since is not None and entry.time <= request.since:
                break
            if request.maxchars is not None and chars + entry.size > request.maxchars:
                break
            chars += entry.size
            message = copy_stanza(entry.stanza)
            add_delay(message, room_jid, entry.time)
            chosen.append(message)
        chosen.reverse()
        return chosen
