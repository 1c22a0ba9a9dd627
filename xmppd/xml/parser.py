"""Sans-IO XML stream parser: bytes in, stream events and stanza elements out.

An XMPP stream is one XML document that never ends (RFC 6120 s4): a ``<stream:stream>`` root whose
first-level children are the stanzas and stream-level elements (s4.1).  :class:`StreamParser` feeds the
bytes of one direction of a connection to an :class:`lxml.etree.XMLPullParser` and turns its events into
three callbacks: stream start, one callback per completed first-level child, stream end.  It knows
nothing about sockets or Twisted; the protocol calls :meth:`StreamParser.feed` from ``dataReceived``,
catches :class:`StreamError` and answers with the matching stream error (s4.9).

What the parser enforces, because neither libxml2 nor lxml does it for us (see
``/work/shared/research/architecture.md`` s1.7):

* restricted XML (s11.1): no DOCTYPE, no comments, no processing instructions, no entity references
  other than the five predefined ones and character references -> ``restricted-xml`` (undeclared
  entity references are simply not well-formed, -> ``not-well-formed``);
* UTF-8 only (s11.6): an XML declaration naming another encoding or a UTF-16/32 byte order mark ->
  ``unsupported-encoding``; invalid UTF-8 -> ``not-well-formed``;
* the stream namespace and the content namespace (s4.8.1, s4.8.2) -> ``invalid-namespace``;
* resource limits (s13.12 item 4 suggests ``policy-violation`` for oversized stanzas): bytes per
  unfinished stanza, element depth and attributes per element -> ``policy-violation``;
* memory stays flat on an endless stream: each completed stanza is detached from the root, and the
  whitespace the peer sends between stanzas as keepalives (s4.6.1) is dropped after every feed.

Stanzas are handed over "namespace neutral" (Prosody's approach): the content namespace
(``jabber:client`` or ``jabber:server``) is stripped from the stanza and from every descendant reached
through a chain of content-namespace elements, so ``<message><body/><x xmlns='foo'/></message>`` arrives
as an element tagged ``message`` with children ``body`` and ``{foo}x``.  The writer relies on the
receiving stream's default namespace for un-namespaced elements, so one element serialises correctly on
a c2s stream and on an s2s stream alike (RFC 6120 s4.8.3), and lxml never invents ``ns0:`` prefixes.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from lxml import etree

__all__ = [
    "NS_STREAMS",
    "NS_XML",
    "NS_STREAM_ERRORS",
    "STREAM_ERROR_CONDITIONS",
    "StreamError",
    "StreamParser",
]

NS_STREAMS = "http://etherx.jabber.org/streams"
NS_XML = "http://www.w3.org/XML/1998/namespace"
NS_STREAM_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"

#: The defined stream error conditions, RFC 6120 s4.9.3.
STREAM_ERROR_CONDITIONS = frozenset(
    {
        "bad-format",
        "bad-namespace-prefix",
        "conflict",
        "connection-timeout",
        "host-gone",
        "host-unknown",
        "improper-addressing",
        "internal-server-error",
        "invalid-from",
        "invalid-namespace",
        "invalid-xml",
        "not-authorized",
        "not-well-formed",
        "policy-violation",
        "remote-connection-failed",
        "reset",
        "resource-constraint",
        "restricted-xml",
        "see-other-host",
        "system-shutdown",
        "undefined-condition",
        "unsupported-encoding",
        "unsupported-feature",
        "unsupported-stanza-type",
        "unsupported-version",
    }
)

_STREAM_TAG = f"{{{NS_STREAMS}}}stream"
_EVENTS = ("start", "end", "comment", "pi")

# Larger feeds are cut into slices of this size, so that the stanza size limit overshoots by at most
# one slice however much data the caller hands over at once (Twisted reads at most 64 KiB anyway).
_MAX_SLICE = 65536

_BOM_UTF8 = b"\xef\xbb\xbf"
_XML_DECL_ENCODING = re.compile(rb"""encoding\s*=\s*(?:'([^']*)'|"([^"]*)")""")
_UTF8_NAMES = frozenset({b"utf-8", b"utf8"})
_DECL_SPACE = (b" ", b"\t", b"\r", b"\n")
_TAG_SCAN = re.compile(rb"""[>'"]""")

# Values of StreamParser._state.
_OPEN = 0
_ENDED = 1
_FAILED = 2
_CLOSED = 3

# Values of StreamParser._top_state: what libxml2 may be waiting for between stanzas (depth 1), see
# _pending_at_top().
_QUIET = 0  # nothing: every byte fed was consumed
_IN_TAG = 1  # the ">" of a tag
_IN_APOS = 2  # the ' closing an attribute value of a tag
_IN_QUOT = 3  # the " closing an attribute value of a tag
_IN_OTHER = 4  # the terminator (self._term) of a comment, CDATA section, PI or declaration
_IN_REF = 5  # the ";" of an entity or character reference
_PARTIAL = 6  # more bytes, to tell what the "<", "<!", "<![CD"... in self._carry starts

# Markup that libxml2 buffers whole until its terminator arrives.
_OPENERS = ((b"<!--", b"-->"), (b"<![CDATA[", b"]]>"), (b"<?", b"?>"))


class StreamError(Exception):
    """The peer broke the stream; the caller answers with ``<stream:error/>`` and closes (RFC 6120 s4.9).

    ``condition`` is one of the condition names of RFC 6120 s4.9.3 (``not-well-formed``,
    ``restricted-xml``, ``policy-violation``...); ``text`` is an optional human-readable description,
    suitable for the ``<text/>`` child of the stream error.
    """

    def __init__(self, condition: str, text: str | None = None) -> None:
        if condition not in STREAM_ERROR_CONDITIONS:
            raise ValueError(f"not an RFC 6120 stream error condition: {condition!r}")
        super().__init__(condition if text is None else f"{condition}: {text}")
        self.condition = condition
        self.text = text


class StreamParser:
    """Incremental parser for one direction of an XMPP stream (RFC 6120 s4).

    ``on_stream_start(attributes)`` is called once the stream header is complete, with the root's
    attributes as a plain dict (``to``, ``from``, ``version``, ``id``, and ``xml:lang`` under the key
    ``"{http://www.w3.org/XML/1998/namespace}lang"``).  ``on_stanza(element)`` is called for each
    completed first-level child, detached from the stream and with the content namespace stripped
    (see the module docstring).  ``on_stream_end()`` is called on ``</stream:stream>`` (s4.4); whatever
    follows it is ignored.

    :meth:`feed` raises :class:`StreamError` for every violation; afterwards the parser is dead and
    further feeds are ignored.  Exceptions raised by the callbacks propagate out of :meth:`feed`.

    Limits: ``max_stanza_size`` bytes per unfinished first-level element (see :meth:`feed` for how
    bytes are counted), ``max_depth`` levels of nesting (the stanza itself is level 1, the stream root
    level 0), ``max_attributes`` attributes per element (namespace declarations do not count).
    """

    def __init__(
        self,
        on_stream_start: Callable[[dict[str, str]], None],
        on_stanza: Callable[[etree._Element], None],
        on_stream_end: Callable[[], None],
        *,
        content_ns: str = "jabber:client",
        max_stanza_size: int = 262144,
        max_depth: int = 64,
        max_attributes: int = 64,
    ) -> None:
        self._on_stream_start = on_stream_start
        self._on_stanza = on_stanza
        self._on_stream_end = on_stream_end
        self.content_ns = content_ns
        self._ns_prefix = f"{{{content_ns}}}"
        self._ns_star = self._ns_prefix + "*"
        self.max_stanza_size = max_stanza_size
        self.max_depth = max_depth
        self.max_attributes = max_attributes
        self._feeding = False
        self._parser: etree.XMLPullParser | None = None
        self.reset()

    # -- public API ---------------------------------------------------------------------------------

    def reset(self) -> None:
        """Start over with a fresh parser, for the new stream that follows a stream restart.

        The initiating entity opens a new stream over the same connection after TLS negotiation
        (RFC 6120 s5.4.3.3) and after SASL success (s6.4.6).  When a callback calls ``reset()`` during
        :meth:`feed`, the rest of that feed's bytes and any events the old parser still holds are
        discarded: bytes that arrived in the same packet as ``<starttls/>`` were sent in plaintext
        and must never be processed as part of the encrypted stream (the STARTTLS command injection
        attack, CVE-2011-0411 and its XMPP siblings).
        """
        # The old parser is dropped, not closed: reset() may run inside a callback while its events
        # are being iterated.
        self._parser = self._new_parser()
        self._root: etree._Element | None = None
        self._depth = 0  # open elements, the stream root included
        self._pending = 0  # bytes fed since the last point known to be between stanzas
        self._top_state = _QUIET
        self._term = b""  # terminator awaited in state _IN_OTHER
        self._carry = b""  # last bytes fed, for openers and terminators split between feeds
        self._prolog: bytearray | None = bytearray()  # bytes seen before the root's start tag
        self._prolog_pos = 0
        self._state = _OPEN

    def close(self) -> None:
        """Release the parser (connection closed).  Later calls to :meth:`feed` are ignored."""
        self._parser = None
        self._root = None
        self._prolog = None
        self._state = _CLOSED

    @property
    def root(self) -> etree._Element | None:
        """The stream root element while a stream is open (it never keeps children), else None."""
        return self._root

    def feed(self, data: bytes) -> None:
        """Parse ``data`` and dispatch the callbacks for everything it completes, in stream order.

        Raises :class:`StreamError` for any violation (see the module docstring).  Stanzas completed
        before the offending byte are dispatched first, so the result never depends on how the
        stream was cut into feeds.  Does nothing once the stream has ended, failed or been closed.

        Stanza size is counted in bytes fed since the last point where no first-level element was
        open: libxml2 does not report byte offsets, so when one stanza completes and the next one
        starts within the same feed, the counter restarts at zero and the bytes of the new stanza in
        that feed go uncounted.  A stanza can therefore exceed ``max_stanza_size`` by at most one feed
        (feeds are sliced to 64 KiB).  Between stanzas the counter follows only an unfinished tag, so
        whitespace keepalives never add up.
        """
        if self._state != _OPEN:
            return
        if self._feeding:
            raise RuntimeError("StreamParser.feed() called from one of its own callbacks")
        self._feeding = True
        try:
            if len(data) <= _MAX_SLICE:
                self._feed(data)
                return
            parser = self._parser
            for start in range(0, len(data), _MAX_SLICE):
                if self._parser is not parser or self._state != _OPEN:
                    return  # reset() or stream end inside a callback: drop the rest
                self._feed(data[start : start + _MAX_SLICE])
        except StreamError:
            self._fail()
            raise
        finally:
            self._feeding = False

    # -- internals ----------------------------------------------------------------------------------

    @staticmethod
    def _new_parser() -> etree.XMLPullParser:
        # resolve_entities="internal" rather than False: with False, lxml deliberately swallows the
        # "undeclared entity" error and libxml2 silently stops, after which the next feed() starts a
        # *new document* (measured with lxml 6.1 / libxml2 2.14; see the tests).  "internal" makes an
        # undeclared entity a fatal error and never loads an external entity (no XXE).  Internal
        # entities can only be declared in a DOCTYPE, and _scan_prolog() refuses a DOCTYPE before
        # libxml2 sees a byte of it, so nothing is ever expanded.  encoding="utf-8" pins the decoder:
        # libxml2 ignores the declared encoding (s11.6 is checked by _scan_prolog) and rejects any
        # invalid UTF-8.  collect_ids=False: no document-wide table of xml:id values on an endless
        # stream.
        return etree.XMLPullParser(
            events=_EVENTS,
            resolve_entities="internal",
            no_network=True,
            load_dtd=False,
            huge_tree=False,
            encoding="utf-8",
            collect_ids=False,
            remove_comments=False,
            remove_pis=False,
        )

    def _fail(self) -> None:
        self._parser = None
        self._root = None
        self._prolog = None
        self._state = _FAILED

    def _feed(self, data: bytes) -> None:
        parser = self._parser
        if self._prolog is not None:
            self._scan_prolog(data)
        self._pending += len(data)
        error = None
        try:
            parser.feed(data)
        except etree.XMLSyntaxError as exc:
            error = exc
        progressed = self._process(parser)
        if self._parser is not parser or self._state != _OPEN:
            return  # reset(), close() or end of stream inside a callback: forget the rest
        if error is not None:
            raise StreamError("not-well-formed", str(error)) from error
        if self._depth == 1:
            self._pending = self._pending_at_top(data, progressed)
        elif progressed:
            self._pending = 0
        if self._pending > self.max_stanza_size:
            raise StreamError("policy-violation", f"stanza larger than {self.max_stanza_size} bytes")

    def _process(self, parser: etree.XMLPullParser) -> bool:
        """Dispatch the parser's pending events.

        Returns whether the stream started or a first-level element completed: libxml2 then got past
        everything fed before that point.
        """
        depth = self._depth
        root = self._root
        max_open = self.max_depth + 1
        max_attributes = self.max_attributes
        prefix = self._ns_prefix
        completed = False
        try:
            for event, el in parser.read_events():
                if event == "end":
                    depth -= 1
                    if depth == 1:
                        tag = el.tag
                        if tag.startswith(prefix):
                            self._strip_content_ns(el, tag)
                        elif tag[0] != "{":
                            # A first-level element in no namespace (xmlns='') would be
                            # indistinguishable from a stripped stanza (RFC 6120 s4.9.3.22).
                            raise StreamError(
                                "unsupported-stanza-type", "first-level element in no namespace"
                            )
                        # Strip first, detach second: removing an element that still uses the
                        # root's namespace declarations makes lxml copy them as "ns0:" prefixes.
                        root.remove(el)
                        el.tail = None
                        etree.cleanup_namespaces(el)
                        completed = True
                        self._depth = depth
                        self._on_stanza(el)
                        if self._parser is not parser:
                            return completed
                    elif depth == 0:
                        self._depth = 0
                        self._root = root = None
                        self._state = _ENDED
                        self._on_stream_end()
                        return completed
                elif event == "start":
                    depth += 1
                    if depth > max_open:
                        raise StreamError("policy-violation", f"elements nested deeper than {self.max_depth}")
                    if len(el.attrib) > max_attributes:
                        raise StreamError(
                            "policy-violation", f"element with more than {max_attributes} attributes"
                        )
                    if depth == 1:
                        self._start_stream(el)
                        root = el
                        completed = True
                        self._depth = depth
                        self._on_stream_start(dict(el.attrib))
                        if self._parser is not parser:
                            return completed
                elif event == "comment":
                    raise StreamError("restricted-xml", "comments are not allowed")
                else:
                    raise StreamError("restricted-xml", "processing instructions are not allowed")
        finally:
            if self._parser is parser:
                self._depth = depth
                if root is not None:
                    # Drop the whitespace (keepalives, s4.6.1) the root collected.  Also required
                    # for libxml2's sake: once a stanza and its tail are removed, a leftover text
                    # node must not become the root's last child while libxml2 still tracks the
                    # length of the text node it appended last.
                    root.text = None
        return completed

    def _start_stream(self, root: etree._Element) -> None:
        """Check the stream header (RFC 6120 s4.8) and remember the root."""
        if root.tag != _STREAM_TAG:
            raise StreamError(
                "invalid-namespace", f"root element must be {{{NS_STREAMS}}}stream, not {root.tag}"
            )
        default_ns = root.nsmap.get(None)
        if default_ns != self.content_ns:
            raise StreamError(
                "invalid-namespace", f"content namespace must be {self.content_ns}, not {default_ns}"
            )
        docinfo = root.getroottree().docinfo
        if docinfo.doctype or docinfo.internalDTD is not None:  # _scan_prolog should have caught it
            raise StreamError("restricted-xml", "DOCTYPE is not allowed")
        self._root = root

    def _strip_content_ns(self, el: etree._Element, tag: str) -> None:
        """Make ``el`` and its content-namespace descendants un-namespaced (RFC 6120 s4.8.3).

        Only descendants whose whole parent chain up to ``el`` is in the content namespace are
        stripped; a content-namespace element below a foreign one (a forwarded ``<message
        xmlns='jabber:client'>`` in a carbon) keeps its namespace and its own declaration.  The
        ``iter`` filter runs in C; document order guarantees a parent is handled before its children.
        """
        cut = len(self._ns_prefix)
        el.tag = tag[cut:]
        for sub in el.iter(self._ns_star):
            if sub.getparent().tag[0] != "{":
                sub.tag = sub.tag[cut:]

    def _scan_prolog(self, data: bytes) -> None:
        """Check the bytes before the root start tag, before libxml2 sees them.

        The prolog may hold an XML declaration, comments, processing instructions and a DOCTYPE;
        RFC 6120 s11.1 forbids all but the declaration, and s11.6 requires UTF-8.  Any ``<!`` in the
        prolog is a comment or a DOCTYPE, so refusing it here guarantees that no DTD, and so no
        entity declaration, ever reaches libxml2.
        """
        buf = self._prolog
        buf += data
        if len(buf) > self.max_stanza_size:
            raise StreamError("policy-violation", "stream header too large")
        if buf[:1] in (b"\xfe", b"\xff", b"\x00") or buf[1:2] == b"\x00":
            raise StreamError("unsupported-encoding", "only UTF-8 is supported")
        start = 3 if buf.startswith(_BOM_UTF8) else 0
        pos = self._prolog_pos
        length = len(buf)
        while True:
            lt = buf.find(b"<", pos)
            if lt < 0 or lt + 1 >= length:
                pos = length if lt < 0 else lt
                break
            nxt = buf[lt + 1]
            if nxt == 0x21:  # "<!": comment or DOCTYPE
                raise StreamError("restricted-xml", "DOCTYPE and comments are not allowed")
            if nxt != 0x3F:  # not "<?": the root start tag begins here
                self._prolog = None
                return
            end = buf.find(b"?>", lt + 2)
            if end < 0:
                pos = lt
                break
            if buf[lt + 2 : lt + 5].lower() == b"xml" and buf[lt + 5 : lt + 6] in _DECL_SPACE:
                if lt != start:
                    raise StreamError("not-well-formed", "XML declaration not at the start")
                match = _XML_DECL_ENCODING.search(buf, lt, end)
                if match is not None:
                    name = match.group(1) if match.group(1) is not None else match.group(2)
                    if name.lower() not in _UTF8_NAMES:
                        raise StreamError(
                            "unsupported-encoding", f"only UTF-8 is supported, not {name.decode()!r}"
                        )
            else:
                raise StreamError("restricted-xml", "processing instructions are not allowed")
            pos = end + 2
        self._prolog_pos = pos

    def _pending_at_top(self, data: bytes, progressed: bool) -> int:
        """Return how many bytes libxml2 may still hold unparsed, at depth 1 after feeding ``data``.

        Between stanzas libxml2 hands character data over at once (and :meth:`_process` drops it),
        but it buffers a tag, comment, CDATA section, processing instruction or reference until its
        terminator arrives, without any limit of its own (measured: 90 MB for an open comment).
        Those bytes count against ``max_stanza_size``; whitespace keepalives do not.

        ``<`` cannot occur unescaped in character data or attribute values, so the last ``<`` fed
        starts the newest tag, and a ``>`` outside quotes after it closes the tag.  Comments, PIs and
        CDATA sections, which may contain ``<`` and ``>``, are recognised by opener and terminator;
        a ``&`` not followed by ``;`` is an unfinished reference.  libxml2 waits at the earliest
        unfinished construct.  What is awaited carries over between feeds, unless libxml2 made
        progress (``progressed``: an element completed), which proves it got past it.
        """
        state = _QUIET if progressed else self._top_state
        start = 0
        if state == _PARTIAL:
            data = self._carry + data
        elif state != _QUIET:
            end = self._construct_end(state, data)
            if end < 0:
                return self._pending
            start = end
        first = self._first_unfinished(data, start)
        return 0 if first < 0 else len(data) - first

    def _construct_end(self, state: int, data: bytes) -> int:
        """Continue the construct awaited since an earlier feed; return the index just after its end
        in ``data``, or -1 (and remember the progress) when it is still unfinished."""
        if state == _IN_REF:
            semicolon = data.find(b";")
            return -1 if semicolon < 0 else semicolon + 1
        if state == _IN_OTHER:
            term = self._term
            buf = self._carry + data
            found = buf.find(term)
            if found < 0:
                self._carry = buf[len(buf) - (len(term) - 1) :]
                return -1
            return found + len(term) - (len(buf) - len(data))
        state, end = _scan_tag(data, 0, state)
        self._top_state = state
        return end

    def _first_unfinished(self, data: bytes, start: int) -> int:
        """Find the earliest construct in ``data[start:]`` that libxml2 cannot finish yet; set
        ``_top_state`` (and ``_term``, ``_carry``) for it and return its index, or -1."""
        first = -1
        state = _QUIET
        lt = data.rfind(b"<", start)
        if lt >= 0:
            nxt = data[lt + 1 : lt + 2]
            head = data[lt : lt + 9]
            if not nxt or (
                nxt == b"!" and len(head) < 9 and (b"<!--".startswith(head) or b"<![CDATA[".startswith(head))
            ):
                first, state, self._carry = lt, _PARTIAL, head  # too short to tell what it opens
            elif nxt == b"!":
                if not head.startswith((b"<!--", b"<![CDATA[")) and data.find(b">", lt) < 0:
                    first, state, self._term, self._carry = lt, _IN_OTHER, b">", b""  # <!DOCTYPE...
            elif nxt != b"?":
                tag_state, end = _scan_tag(data, lt + 1, _IN_TAG)
                if end < 0:
                    first, state = lt, tag_state
        for opener, term in _OPENERS:
            closed = data.rfind(term, start)
            found = data.find(opener, start if closed < 0 else closed + len(term))
            if found >= 0 and (first < 0 or found < first):
                first, state, self._term = found, _IN_OTHER, term
                self._carry = data[len(data) - (len(term) - 1) :]
        semicolon = data.rfind(b";", start)
        cdata_end = data.rfind(b"]]>", start)  # "]]>" cannot occur in character data: "&" is in CDATA
        amp = data.find(b"&", max(start, semicolon + 1, cdata_end + 3 if cdata_end >= 0 else 0))
        if amp >= 0 and (first < 0 or amp < first):
            first, state = amp, _IN_REF
        self._top_state = state
        return first


def _scan_tag(data: bytes, pos: int, state: int) -> tuple[int, int]:
    """Follow a tag through ``data`` from ``pos`` in ``state`` (_IN_TAG, _IN_APOS or _IN_QUOT).

    Returns ``(_QUIET, index after its ">")`` when the tag ends, else ``(state at the end, -1)``.
    """
    while True:
        if state == _IN_TAG:
            match = _TAG_SCAN.search(data, pos)
            if match is None:
                return state, -1
            pos = match.end()
            char = data[pos - 1]
            if char == 0x3E:  # ">"
                return _QUIET, pos
            state = _IN_APOS if char == 0x27 else _IN_QUOT
        else:
            end = data.find(b"'" if state == _IN_APOS else b'"', pos)
            if end < 0:
                return state, -1
            pos = end + 1
            state = _IN_TAG
