"""Delayed delivery (XEP-0203) and XEP-0082 date-times: the stamps on offline messages and MUC history."""

from __future__ import annotations

import datetime

from lxml import etree

from xmppd.xml.stanza import add_child

NS_DELAY = "urn:xmpp:delay"


def delay_stamp(seconds: float) -> str:
    """A XEP-0082 DateTime in UTC with milliseconds, as XEP-0203 uses: ``2002-09-10T23:08:25.000Z``."""
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_datetime(text: str) -> float:
    """Seconds since the epoch of a XEP-0082 DateTime (``CCYY-MM-DDThh:mm:ss[.sss]TZD``); ValueError if
    it is not one. A time without a zone is not a XEP-0082 DateTime and is refused."""
    value = text.strip()
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    moment = datetime.datetime.fromisoformat(value)
    if moment.tzinfo is None or "T" not in value:
        raise ValueError(f"not a XEP-0082 DateTime: {text!r}")
    return moment.timestamp()


def add_delay(
    stanza: etree._Element, from_: str, seconds: float, reason: str | None = None
) -> etree._Element:
    """Add ``<delay xmlns='urn:xmpp:delay' from stamp/>`` (XEP-0203 s2) to a stanza being delivered late."""
    delay = add_child(stanza, NS_DELAY, "delay", reason)
    delay.set("from", from_)
    delay.set("stamp", delay_stamp(seconds))
    return delay
