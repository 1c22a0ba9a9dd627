"""Sans-IO XML stream parser: bytes in, stream events and stanza elements out.

An XMPP stream is one XML document that never ends (RFC 6120 s4): a ``<stream:stream>`` root whose
first-level children are the stanzas and stream-level elements (s4.1).  :class:`StreamParser` feeds the
bytes of one direction of a connection to an :class:`lxml.etree.XMLPullParser` and turns its events into
three callbacks: stream start, one callback per completed first-level child, stream end.  It knows
nothing about sockets or Twisted; the protocol calls :meth:`StreamParser.feed` from ``dataReceived``,
catches :class:`StreamError` and answers with the matching stream error (s4.9).

What the parser enforces, because neither libxml2 nor lxml does it for us (see
``/work/shared/research/architecture.md`` s1.7):

* restricted XML (s11.1): no DOCTYPE, no comments, no processing instructions -> ``restricted-xml``.
  libxml2 never sees the prolog, so no DTD and no entity declaration can reach it; an entity
  reference other than the five predefined ones is then undeclared -> ``not-well-formed``;
* UTF-8 only (s11.6): an XML declaration naming another encoding or a UTF-16/32 byte order mark ->
  ``unsupported-encoding``; invalid UTF-8 -> ``not-well-formed``;
* well-formedness including namespaces (s4.9.3.13): libxml2 merely logs an undeclared prefix, the
  parser refuses it -> ``not-well-formed``;
* the stream namespace and the content namespace (s4.8.1, s4.8.2) -> ``invalid-namespace``;
* resource limits (s13.12 item 4 suggests ``policy-violation`` for oversized stanzas): bytes per
  unfinished first-level element (including markup libxml2 buffers between stanzas, such as an
  unterminated comment), element depth and attributes per element -> ``policy-violation``;
* memory stays flat on an endless stream: each completed stanza is detached from the root, and the
  whitespace the peer sends between stanzas as keepalives (s4.6.1) is dropped after every feed.

Stanzas are handed over "namespace neutral" (Prosody's approach): elements of the content namespace
(``jabber:client`` or ``jabber:server``) are un-namespaced, the stanza itself and every descendant
reached through a chain of content-namespace elements, so ``<message><body/><x xmlns='foo'/></message>``
arrives as an element tagged ``message`` with children ``body`` and ``{foo}x``.  The writer relies on the
receiving stream's default namespace for un-namespaced elements, so one element serialises correctly on
a c2s stream and on an s2s stream alike (RFC 6120 s4.8.3), and lxml never invents ``ns0:`` prefixes.
This costs nothing per stanza: libxml2 parses a copy of the stream header without the default namespace
declaration, so stanzas come out un-namespaced; only a stanza that declares the content namespace
itself is rewritten.  (A consequence: an explicit ``xmlns=''`` reads as the content namespace.)
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
_EVENTS = ("start", "end", "start-ns", "comment", "pi")

# Larger feeds are cut into slices of at most this size (and of at most max_stanza_size), so that no
# single lxml feed builds much more than a stanza's worth (Twisted reads at most 64 KiB anyway).
_MAX_SLICE = 65536

_BOM_UTF8 = b"\xef\xbb\xbf"
_XML_DECL_ENCODING = re.compile(rb"""encoding\s*=\s*(?:'([^']*)'|"([^"]*)")""")
_UTF8_NAMES = frozenset({b"utf-8", b"utf8"})
_SPACE = b" \t\r\n"
_DECL_SPACE = (b" ", b"\t", b"\r", b"\n")
_TAG_SCAN = re.compile(rb"""[>'"]""")
#: Escapes for a single-quoted attribute value (shared with the writer).
ATTR_ESCAPES = str.maketrans(
    {
        "&": "&amp;",
        "<": "&lt;",
        ">": "&gt;",
        "'": "&apos;",
        '"': "&quot;",
        "\t": "&#9;",
        "\n": "&#10;",
        "\r": "&#13;",
    }
)

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

_NAMESPACE_DOMAIN = etree.ErrorDomains.NAMESPACE
_ERROR_LEVEL = etree.ErrorLevels.ERROR

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
    completed first-level child, detached from the stream and namespace neutral (see the module
    docstring).  ``on_stream_end()`` is called on ``</stream:stream>`` (s4.4); whatever follows it
    is ignored.

    :meth:`feed` raises :class:`StreamError` for every violation; afterwards the parser is dead and
    further feeds are ignored.  Exceptions raised by the callbacks propagate out of :meth:`feed`; the
    parser stays usable, and events not yet dispatched are dispatched by the next feed.

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
        # A stanza that fits in one slice is never larger than the limit.
        self._slice = min(_MAX_SLICE, max_stanza_size)
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
        and must never be processed as part of the encrypted stream (STARTTLS command injection,
        CVE-2011-0411 and its XMPP siblings).
        """
        # The old parser is dropped, not closed: reset() may run inside a callback while its events
        # are being iterated.
        self._parser = self._new_parser()
        self._root: etree._Element | None = None
        self._depth = 0  # open elements, the stream root included
        self._pending = 0  # bytes libxml2 may hold for an unfinished first-level element
        self._log_seen = 0  # entries of the parser's error log already checked
        self._redeclared = False  # the current stanza declares the content namespace itself
        self._strip_always = False  # the stream header binds a prefix to the content namespace
        self._top_state = _QUIET  # what libxml2 awaits between stanzas, see _pending_at_top()
        self._term = b""  # terminator awaited in state _IN_OTHER
        self._carry = b""  # last bytes fed, for openers and terminators split between feeds
        self._prolog: bytearray | None = bytearray()  # bytes up to the end of the stream header
        self._prolog_pos = 0
        self._header_start = -1  # index of the root's "<" in _prolog, once seen
        self._header_state = _IN_TAG
        self._stream_attrs: dict[str, str] = {}
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
        before a syntax error are dispatched first (not before a namespace error, see
        :meth:`_check_namespace_errors`).  Does nothing once the stream has ended, failed or been
        closed.

        Stanza size: libxml2 reports no byte offsets, so the parser counts a lower bound of the
        bytes of the open first-level element: from the first ``<`` of the feed in which it started
        or, when another element completed in that feed, from the last ``<name`` in it; and before
        a feed that would go over the limit, up to where its end tag can be at the earliest (see
        :meth:`_check_budget`).  Feeds are sliced to ``min(64 KiB, max_stanza_size)``, so a stanza
        within one slice is within the limit.  The count is exact unless the element's name occurs
        again inside it (a forwarded ``<message/>`` in a ``<message/>`` that started in the feed in
        which another stanza ended); it never misses by more than one slice.  Between stanzas only
        markup libxml2 still holds is counted (an unfinished tag, comment, CDATA section, PI or
        reference), so whitespace keepalives never add up.
        """
        if self._state != _OPEN:
            return
        if self._feeding:
            raise RuntimeError("StreamParser.feed() called from one of its own callbacks")
        self._feeding = True
        try:
            size = self._slice
            if len(data) <= size:
                self._feed(data)
                return
            parser = self._parser
            for start in range(0, len(data), size):
                if self._parser is not parser or self._state != _OPEN:
                    return  # reset() or stream end inside a callback: drop the rest
                self._feed(data[start : start + size])
        except StreamError:
            self._fail()
            raise
        finally:
            self._feeding = False

    # -- internals ----------------------------------------------------------------------------------

    @staticmethod
    def _new_parser(events: tuple[str, ...] = _EVENTS) -> etree.XMLPullParser:
        # resolve_entities="internal" rather than False: with False, lxml deliberately swallows the
        # "undeclared entity" error and libxml2 silently stops, after which the next feed() starts a
        # *new document* (measured with lxml 6.1 / libxml2 2.14; see the tests).  "internal" makes an
        # undeclared entity a fatal error and never loads an external entity (no XXE).  Internal
        # entities can only be declared in a DOCTYPE, and libxml2 never sees the prolog (see
        # _scan_prolog), so nothing is ever expanded.  encoding="utf-8" pins the decoder, so any
        # invalid UTF-8 is an error.  collect_ids=False: no document-wide table of xml:id values
        # on an endless stream.
        return etree.XMLPullParser(
            events=events,
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
            data = self._scan_prolog(data)
            if not data:
                return  # the stream header is not complete yet
        if self._depth > 1 and len(data) > self.max_stanza_size - self._pending:
            self._check_budget(data)
        self._pending += len(data)
        quiet_before = self._depth == 1 and self._top_state == _QUIET
        error = None
        try:
            parser.feed(data)
        except etree.XMLSyntaxError as exc:
            error = exc
        self._check_namespace_errors(parser)
        try:
            progressed = self._process(parser)
        except BaseException:
            # After a syntax error lxml would parse the next feed as a new document: the parser
            # must be dead even when a callback raised while the last good events were dispatched.
            if error is not None and self._parser is parser:
                self._fail()
            raise
        if self._parser is not parser or self._state != _OPEN:
            return  # reset(), close() or end of stream inside a callback: forget the rest
        if error is not None:
            raise StreamError("not-well-formed", str(error)) from error
        if self._depth == 1:
            self._pending = self._pending_at_top(data, progressed)
        elif progressed:
            # A stanza started after one completed in this feed: at the last "<name" at the latest.
            start = data.rfind(b"<" + self._open_qname())
            self._pending = 0 if start < 0 else len(data) - start
        elif quiet_before:
            # A stanza started in this feed, after nothing libxml2 held: at the first "<".
            self._pending = len(data) - data.find(b"<")
        if self._pending > self.max_stanza_size:
            raise StreamError("policy-violation", f"stanza larger than {self.max_stanza_size} bytes")

    def _open_qname(self) -> bytes:
        """The qualified name, as written, of the first-level element being parsed."""
        el = self._root[-1]
        local = el.tag.rpartition("}")[2]
        return (f"{el.prefix}:{local}" if el.prefix else local).encode()

    def _check_budget(self, data: bytes) -> None:
        """Refuse ``data`` before parsing it if the open stanza cannot end within the size limit.

        The stanza's end tag closes with a ``>``, so it cannot end before the first ``>`` in
        ``data``; and unless ``data`` starts with the rest of an end tag that began in the previous
        feed, not before the first ``</name`` either (the only other place that string can occur is
        CDATA content, which comes first too).  Either way this is a lower bound of what ``data``
        adds to the stanza.
        """
        end_tag = b"</" + self._open_qname()
        gt = data.find(b">")
        least = len(data) + 1 if gt < 0 else gt + 1
        split = gt >= 0 and any(
            end_tag.endswith(data[:k]) and not data[k:gt].strip(_SPACE)
            for k in range(min(gt, len(end_tag) - 1) + 1)
        )
        if not split:
            end = data.find(end_tag)
            least = max(least, len(data) + 1 if end < 0 else end + len(end_tag) + 1)
        if least > self.max_stanza_size - self._pending:
            raise StreamError("policy-violation", f"stanza larger than {self.max_stanza_size} bytes")

    def _check_namespace_errors(self, parser: etree.XMLPullParser) -> None:
        """Refuse XML that is well-formed but not namespace-well-formed (XML-NAMES, RFC 6120 s4.9.3.13).

        libxml2 only logs an undeclared prefix (``<x:body/>``, ``<body y:a='1'/>``) and goes on,
        handing over an element or attribute literally named ``x:body``; relayed as is, it would break
        every recipient's stream.  The parser's log keeps its first 100 warnings but every error, so
        new entries are the ones past the count seen so far.  Checked before dispatching, because
        the offending element may already be complete: earlier stanzas of the same feed are dropped.
        """
        log = parser.feed_error_log
        count = len(log)
        if count == self._log_seen:
            return
        for entry in log[self._log_seen :]:
            if entry.domain == _NAMESPACE_DOMAIN and entry.level >= _ERROR_LEVEL:
                raise StreamError("not-well-formed", entry.message)
        self._log_seen = count

    def _process(self, parser: etree.XMLPullParser) -> bool:
        """Dispatch the parser's pending events.

        Returns whether the stream started or a first-level element completed: libxml2 then got past
        everything fed before that point.
        """
        depth = self._depth
        root = self._root
        redeclared = self._redeclared
        strip_always = self._strip_always
        content_ns = self.content_ns
        max_open = self.max_depth + 1
        max_attributes = self.max_attributes
        progressed = False
        try:
            for event, el in parser.read_events():
                if event == "end":
                    depth -= 1
                    if depth == 1:
                        # Strip first, detach second: removing an element that still uses the
                        # root's namespace declarations makes lxml copy them as "ns0:" prefixes.
                        stripped = (redeclared or strip_always) and self._strip_content_ns(el)
                        redeclared = False
                        root.remove(el)
                        el.tail = None
                        if stripped:
                            etree.cleanup_namespaces(el)
                        progressed = True
                        self._depth = depth
                        self._redeclared = False
                        self._on_stanza(el)
                        if self._parser is not parser:
                            return progressed
                    elif depth == 0:
                        self._depth = 0
                        self._root = root = None
                        self._state = _ENDED
                        self._on_stream_end()
                        return progressed
                elif event == "start":
                    depth += 1
                    if depth > max_open:
                        raise StreamError("policy-violation", f"elements nested deeper than {self.max_depth}")
                    if len(el.attrib) > max_attributes:
                        raise StreamError(
                            "policy-violation", f"element with more than {max_attributes} attributes"
                        )
                    if depth == 1:
                        self._root = root = el
                        progressed = True
                        self._depth = depth
                        self._on_stream_start(self._stream_attrs)
                        if self._parser is not parser:
                            return progressed
                elif event == "start-ns":
                    if el[1] == content_ns:
                        redeclared = True
                elif event == "comment":
                    raise StreamError("restricted-xml", "comments are not allowed")
                else:
                    raise StreamError("restricted-xml", "processing instructions are not allowed")
        finally:
            if self._parser is parser:
                self._depth = depth
                self._redeclared = redeclared
                if root is not None:
                    # Drop the whitespace (keepalives, s4.6.1) the root collected.  Also required
                    # for libxml2's sake: once a stanza and its tail are removed, a leftover text
                    # node must not become the root's last child while libxml2 still tracks the
                    # length of the text node it appended last.
                    root.text = None
        return progressed

    def _strip_content_ns(self, el: etree._Element) -> bool:
        """Make content-namespace elements that a stanza declares itself un-namespaced (s4.8.3).

        Needed only when the peer declares the content namespace inside a stanza
        (``<message xmlns='jabber:client'>``) or binds a prefix to it in the stream header.  Only
        elements whose whole parent chain up to the stanza is in the content namespace are stripped;
        one below a foreign element (a forwarded ``<message xmlns='jabber:client'>`` in a carbon)
        keeps its namespace and its own declaration.  Returns whether anything changed.
        """
        prefix = self._ns_prefix
        cut = len(prefix)
        tag = el.tag
        if tag.startswith(prefix):
            el.tag = tag[cut:]
        elif tag[0] == "{":
            return False  # a stream-level element: its content-namespace descendants are foreign
        changed = False
        # The filter runs in C; document order guarantees that a parent is handled before its
        # children.
        for sub in el.iter(self._ns_star):
            if sub.getparent().tag[0] != "{":
                sub.tag = sub.tag[cut:]
                changed = True
        return changed or tag[0] == "{"

    def _scan_prolog(self, data: bytes) -> bytes:
        """Check the bytes up to the end of the stream header; return what libxml2 is to parse.

        Nothing reaches libxml2 until the root start tag is complete.  The prolog may hold an XML
        declaration, comments, processing instructions and a DOCTYPE; RFC 6120 s11.1 forbids all but
        the declaration, and s11.6 requires UTF-8.  Any ``<!`` in the prolog is a comment or a
        DOCTYPE, so no DTD, and so no entity declaration, ever reaches libxml2.  The header is then
        checked by :meth:`_open_stream`, which hands libxml2 a rewritten one.
        """
        buf = self._prolog
        buf += data
        if len(buf) - len(data) > self.max_stanza_size:  # the header was still incomplete
            raise StreamError("policy-violation", "stream header too large")
        if buf[:1] in (b"\xfe", b"\xff", b"\x00") or buf[1:2] == b"\x00":
            raise StreamError("unsupported-encoding", "only UTF-8 is supported")
        if self._header_start < 0:
            if len(buf) < 3 and _BOM_UTF8.startswith(buf):
                return b""  # maybe a byte order mark, maybe not: wait
            start = 3 if buf.startswith(_BOM_UTF8) else 0
            pos = max(self._prolog_pos, start)
            length = len(buf)
            while True:
                lt = buf.find(b"<", pos)
                if buf[pos : length if lt < 0 else lt].strip(_SPACE):
                    raise StreamError("not-well-formed", "text before the stream header")
                if lt < 0 or lt + 1 >= length:
                    self._prolog_pos = length if lt < 0 else lt
                    return b""
                nxt = buf[lt + 1]
                if nxt == 0x21:  # "<!": comment or DOCTYPE
                    raise StreamError("restricted-xml", "DOCTYPE and comments are not allowed")
                if nxt != 0x3F:  # not "<?": the root start tag begins here
                    self._header_start = lt
                    self._prolog_pos = lt + 1
                    break
                end = buf.find(b"?>", lt + 2)
                if end < 0:
                    self._prolog_pos = lt
                    return b""
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
        state, end = _scan_tag(buf, self._prolog_pos, self._header_state)
        if end < 0:
            self._header_state = state
            self._prolog_pos = len(buf)
            return b""
        header = bytes(buf[self._header_start : end])
        rest = bytes(buf[end:])
        self._prolog = None
        return self._open_stream(header) + rest

    def _open_stream(self, header: bytes) -> bytes:
        """Check the stream header (RFC 6120 s4.7, s4.8) and return the one libxml2 gets instead.

        The header is parsed on its own.  libxml2 then gets a copy without the default namespace
        declaration, keeping only the prefixed ones: stanzas then come out of libxml2 in no
        namespace, which is the namespace-neutral form, at no cost per stanza.
        """
        parser = self._new_parser(("start",))
        try:
            parser.feed(header)
        except etree.XMLSyntaxError as exc:
            raise StreamError("not-well-formed", str(exc)) from exc
        self._check_namespace_errors(parser)
        self._log_seen = 0
        root = next((el for _, el in parser.read_events()), None)
        if root is None:  # pragma: no cover - a complete start tag always yields its event
            raise StreamError("not-well-formed", "incomplete stream header")
        if root.tag != _STREAM_TAG:
            raise StreamError("invalid-namespace", f"root element must be {_STREAM_TAG}, not {root.tag}")
        nsmap = root.nsmap
        if nsmap.get(None) != self.content_ns:
            raise StreamError(
                "invalid-namespace", f"content namespace must be {self.content_ns}, not {nsmap.get(None)}"
            )
        if len(root.attrib) > self.max_attributes:
            raise StreamError("policy-violation", f"element with more than {self.max_attributes} attributes")
        self._stream_attrs = dict(root.attrib)
        declarations = []
        for prefix, uri in nsmap.items():
            if prefix is not None:
                declarations.append(f" xmlns:{prefix}='{uri.translate(ATTR_ESCAPES)}'")
                if uri == self.content_ns:
                    self._strip_always = True
        close = "/>" if header.endswith(b"/>") else ">"
        return f"<{root.prefix}:stream{''.join(declarations)}{close}".encode()

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
        if data.find(b"<!", start) < 0 and data.find(b"<?", start) < 0 and data.find(b"&", start) < 0:
            # The common case, stanzas and nothing else: only the newest tag can be unfinished.
            lt = data.rfind(b"<", start)
            if lt >= 0:
                if lt + 1 == len(data):
                    first, state, self._carry = lt, _PARTIAL, b"<"  # "<!--" may follow, or a tag
                else:
                    tag_state, end = _scan_tag(data, lt + 1, _IN_TAG)
                    if end < 0:
                        first, state = lt, tag_state
            self._top_state = state
            return first
        # "]]>" cannot occur in character data, so whatever precedes the last one may be CDATA
        # content, where "<!--", "<?" and "&" mean nothing.
        cdata_end = data.rfind(b"]]>", start)
        after_cdata = start if cdata_end < 0 else max(start, cdata_end + 3)
        lt = data.rfind(b"<", start)
        if lt >= 0:
            nxt = data[lt + 1 : lt + 2]
            head = data[lt : lt + 9]
            if not nxt or (
                nxt == b"!"
                and (
                    (len(head) < 4 and b"<!--".startswith(head))
                    or (len(head) < 9 and b"<![CDATA[".startswith(head))
                )
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
            since = start if closed < 0 else closed + len(term)
            found = data.find(opener, since if opener == b"<![CDATA[" else max(since, after_cdata))
            if found >= 0 and (first < 0 or found < first):
                first, state, self._term = found, _IN_OTHER, term
                self._carry = data[len(data) - (len(term) - 1) :]
        semicolon = data.rfind(b";", start)
        amp = data.find(b"&", max(after_cdata, semicolon + 1))
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
