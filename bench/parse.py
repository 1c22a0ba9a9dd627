"""Micro-benchmark of the XML stream layer: StreamParser and writer.serialize.

Input: a client stream of ~200-byte ``<message/>`` stanzas (attributes to/from/type/id, a body and a
chat-state payload, as in /work/shared/research/scripts/parsebench.py), fed to
:class:`xmppd.xml.parser.StreamParser` in 4 KiB chunks; the callback reads ``to`` as a router would.
Serialisation re-encodes the parsed (namespace-stripped) stanzas with :func:`xmppd.xml.writer.serialize`.

Usage: ``python bench/parse.py [--seconds N]`` (N seconds per measurement, default 3).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import lxml  # noqa: E402
from lxml import etree  # noqa: E402

from xmppd.xml.parser import StreamParser  # noqa: E402
from xmppd.xml.writer import serialize  # noqa: E402

N = 20000
CHUNK = 4096
HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0'>"
)


def stanza(i: int) -> bytes:
    return (
        f"<message to='bob@example.com/desk' from='alice@example.com/phone' type='chat' id='m{i}'>"
        f"<body>Hello Bob, this is message number {i}</body>"
        "<active xmlns='http://jabber.org/protocol/chatstates'/></message>"
    ).encode()


def measure(run_once, seconds: float) -> tuple[float, float]:
    """Repeat ``run_once`` (which handles N stanzas) for about ``seconds``; return (rate, cpu_s)."""
    run_once()  # warm up
    count = 0
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    while time.perf_counter() - wall0 < seconds:
        run_once()
        count += N
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    return count / wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="seconds per measurement (default 3)")
    args = ap.parse_args()

    body = b"".join(stanza(i) for i in range(N))
    chunks = [body[i : i + CHUNK] for i in range(0, len(body), CHUNK)]
    received: list[etree._Element] = []

    def on_stanza(el: etree._Element) -> None:
        el.get("to")

    def parse_once() -> None:
        parser = StreamParser(lambda attrs: None, on_stanza, lambda: None)
        parser.feed(HEADER)
        feed = parser.feed
        for chunk in chunks:
            feed(chunk)
        assert parser.root is not None and len(parser.root) == 0

    collector = StreamParser(lambda attrs: None, received.append, lambda: None)
    collector.feed(HEADER + body)
    assert len(received) == N

    def serialize_once() -> None:
        for el in received:
            serialize(el)

    print(
        f"Python {sys.version.split()[0]}, lxml {'.'.join(map(str, lxml.etree.LXML_VERSION[:3]))}, "
        f"libxml2 {'.'.join(map(str, etree.LIBXML_VERSION))}; {N} stanzas of {len(body) / N:.0f} B, "
        f"{CHUNK} B reads, {args.seconds:g} s per measurement"
    )
    print(f"sample: {serialize(received[0]).decode()}")
    rate, cpu = measure(parse_once, args.seconds)
    print(f"parse:     {rate:>11,.0f} stanzas/s  ({cpu:.2f} CPU s, {1e6 / rate:.2f} us/stanza)")
    rate, cpu = measure(serialize_once, args.seconds)
    print(f"serialize: {rate:>11,.0f} stanzas/s  ({cpu:.2f} CPU s, {1e6 / rate:.2f} us/stanza)")
    print(f"total CPU: {time.process_time():.2f} s")


if __name__ == "__main__":
    main()
