"""The sans-IO XML stream layer: xmppd.xml.parser.StreamParser and xmppd.xml.writer (RFC 6120 s4, s11)."""

from __future__ import annotations

import random
import resource

import pytest
from lxml import etree

from xmppd.xml.parser import NS_STREAMS, NS_XML, StreamError, StreamParser
from xmppd.xml.writer import (
    STREAM_END,
    make_child,
    make_element,
    qualify,
    serialize,
    stream_error,
    stream_header,
)

HEADER = (
    b"<?xml version='1.0'?>"
    b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
    b" to='example.com' version='1.0' xml:lang='en'>"
)
BARE_HEADER = HEADER[len(b"<?xml version='1.0'?>") :]

# A realistic client stream: escapes, character references, CDATA, multibyte UTF-8 (2, 3 and 4 byte
# sequences), payload namespaces, a forwarded jabber:client message, stream-level elements and
# whitespace keepalives between stanzas.
STANZAS = [
    b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
    b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGp1bGlldAByMG0zMG15cjBtMzA=</auth>",
    b"<iq type='set' id='bind_1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
    b"<resource>balcony \xc3\xa9\xe2\x82\xac\xf0\x9f\x8c\xb9</resource></bind></iq>",
    b"<iq type='get' id='roster_1'><query xmlns='jabber:iq:roster'/></iq>",
    b"<presence><show>chat</show><status>Fair &amp; square &lt;3 &#x263A; &#8364;</status>"
    b"<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='http://x'"
    b" ver='QgayPKawpkPSDYmwT/WM94uAlu0='/>"
    b"</presence>",
    b"<message to='romeo@example.net/orchard' type='chat' id='m1' xml:lang='en'>"
    b"<body>Wherefore art thou, Romeo? \xd0\x96\xe4\xb8\xad 'quoted' \"dq\" &gt;"
    b" <![CDATA[<raw> & stuff]]></body>"
    b"<active xmlns='http://jabber.org/protocol/chatstates'/>"
    b"<thread>e0ffe42b28561960c6b12b944a092794b9683a38</thread></message>",
    b"<message type='chat' to='juliet@example.com'><received xmlns='urn:xmpp:carbons:2'>"
    b"<forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='a@b/c' type='chat'>"
    b"<body>inner</body></message></forwarded></received></message>",
    b"<r xmlns='urn:xmpp:sm:3'/>",
]
STREAM = HEADER + b" \n".join(STANZAS) + b"\n\n  " + STREAM_END


class Recorder:
    """Collects the callbacks of one StreamParser."""

    def __init__(self, **kwargs: object) -> None:
        self.starts: list[dict[str, str]] = []
        self.stanzas: list[etree._Element] = []
        self.ended = 0
        self.parser = StreamParser(self.on_start, self.on_stanza, self.on_end, **kwargs)

    def on_start(self, attrs: dict[str, str]) -> None:
        self.starts.append(attrs)

    def on_stanza(self, el: etree._Element) -> None:
        self.stanzas.append(el)

    def on_end(self) -> None:
        self.ended += 1

    def feed(self, *chunks: bytes) -> Recorder:
        for chunk in chunks:
            self.parser.feed(chunk)
        return self

    def serialized(self) -> list[bytes]:
        return [serialize(el) for el in self.stanzas]

    def outcome(self) -> tuple[list[dict[str, str]], list[bytes], int]:
        return self.starts, self.serialized(), self.ended


def refuse(data: bytes | list[bytes], condition: str, **kwargs: object) -> Recorder:
    rec = Recorder(**kwargs)
    chunks = [data] if isinstance(data, bytes) else data
    with pytest.raises(StreamError) as info:
        rec.feed(*chunks)
    assert info.value.condition == condition, info.value
    return rec


# -- stream start, stanzas, namespaces --------------------------------------------------------------


def test_stream_start_attributes_and_lang() -> None:
    rec = Recorder().feed(
        b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
        b" from='juliet@im.example.com' to='im.example.com' version='1.0' id='abc' xml:lang='fr'>"
    )
    assert rec.starts == [
        {
            "from": "juliet@im.example.com",
            "to": "im.example.com",
            "version": "1.0",
            "id": "abc",
            f"{{{NS_XML}}}lang": "fr",
        }
    ]
    assert type(rec.starts[0]) is dict
    assert rec.parser.root is not None and rec.stanzas == [] and rec.ended == 0


def test_stanzas_in_order_with_content_namespace_stripped() -> None:
    rec = Recorder().feed(
        HEADER,
        b"<message to='a@b'><body>hi</body><x xmlns='foo'><y/></x></message>"
        b"<presence/><iq type='get' id='1'><query xmlns='jabber:iq:version'/></iq>",
    )
    message, presence, iq = rec.stanzas
    assert [el.tag for el in message.iter()] == ["message", "body", "{foo}x", "{foo}y"]
    assert presence.tag == "presence"
    assert [el.tag for el in iq.iter()] == ["iq", "{jabber:iq:version}query"]
    assert serialize(message) == b'<message to="a@b"><body>hi</body><x xmlns="foo"><y/></x></message>'
    assert serialize(iq) == b'<iq type="get" id="1"><query xmlns="jabber:iq:version"/></iq>'
    for el in rec.stanzas:
        assert el.getparent() is None and el.tail is None
        assert b"ns0" not in serialize(el) and b"xmlns:stream" not in serialize(el)


def test_stream_level_elements_keep_their_namespace() -> None:
    rec = Recorder().feed(
        HEADER,
        b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"
        b"</stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
        b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>=</auth>",
    )
    assert [el.tag for el in rec.stanzas] == [
        f"{{{NS_STREAMS}}}features",
        "{urn:ietf:params:xml:ns:xmpp-tls}starttls",
        "{urn:ietf:params:xml:ns:xmpp-sasl}auth",
    ]
    assert rec.stanzas[0][0][0].tag == "{urn:ietf:params:xml:ns:xmpp-tls}required"
    assert serialize(rec.stanzas[1]) == b'<starttls xmlns="urn:ietf:params:xml:ns:xmpp-tls"/>'


def test_content_namespace_below_a_foreign_element_is_kept() -> None:
    # A carbon-copied message: the forwarded <message xmlns='jabber:client'> must stay in
    # jabber:client and keep a default declaration, not an ns0: prefix.
    rec = Recorder().feed(HEADER, STANZAS[6])
    (el,) = rec.stanzas
    tags = [e.tag for e in el.iter()]
    assert tags == [
        "message",
        "{urn:xmpp:carbons:2}received",
        "{urn:xmpp:forward:0}forwarded",
        "{jabber:client}message",
        "{jabber:client}body",
    ]
    assert serialize(el) == (
        b'<message type="chat" to="juliet@example.com"><received xmlns="urn:xmpp:carbons:2">'
        b'<forwarded xmlns="urn:xmpp:forward:0"><message xmlns="jabber:client" from="a@b/c" type="chat">'
        b"<body>inner</body></message></forwarded></received></message>"
    )


def test_prefixed_content_namespace_and_redundant_declarations() -> None:
    rec = Recorder().feed(
        HEADER,
        b"<message xmlns='jabber:client'><body xmlns='jabber:client'>a</body></message>"
        b"<c:message xmlns:c='jabber:client'><c:body>b</c:body></c:message>",
    )
    assert rec.serialized() == [b"<message><body>a</body></message>", b"<message><body>b</body></message>"]


def test_server_content_namespace() -> None:
    rec = Recorder(content_ns="jabber:server").feed(
        b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
        b" xmlns:db='jabber:server:dialback' from='a.example' to='b.example' version='1.0'>"
        b"<db:result from='a.example' to='b.example'>abc</db:result>"
        b"<message from='x@a.example' to='y@b.example'><body>hi</body>"
        b"<forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client'/></forwarded></message>"
    )
    assert rec.stanzas[0].tag == "{jabber:server:dialback}result"
    assert serialize(rec.stanzas[1]) == (
        b'<message from="x@a.example" to="y@b.example"><body>hi</body>'
        b'<forwarded xmlns="urn:xmpp:forward:0"><message xmlns="jabber:client"/></forwarded></message>'
    )
    # A jabber:client stream rejects a jabber:server header and vice versa.
    refuse(HEADER, "invalid-namespace", content_ns="jabber:server")


@pytest.mark.parametrize(
    "header",
    [
        b"<s:stream xmlns:s='http://etherx.jabber.org/streams' xmlns='jabber:client' to='a&amp;b>c'>",
        b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:client'\n"
        b"  to=\"a&amp;b>c\" xmlns:c='jabber:client' xmlns:x='urn:x'>",
    ],
)
def test_header_variants(header: bytes) -> None:
    # Another stream prefix, ">" and entities in values, a prefix bound to the content namespace.
    end = b"</s:stream>" if header.startswith(b"<s:") else STREAM_END
    stanzas = (
        b"<message><body>a</body></message><c:message xmlns:c='jabber:client'><c:body>b</c:body></c:message>"
    )
    expected = (
        [{"to": "a&b>c"}],
        [b"<message><body>a</body></message>", b"<message><body>b</body></message>"],
        1,
    )
    data = header + stanzas + end
    assert Recorder().feed(data).outcome() == expected
    assert Recorder().feed(*[data[i : i + 1] for i in range(len(data))]).outcome() == expected
    if b"xmlns:c=" in header:
        rec = Recorder().feed(header + b"<c:iq type='get'><c:x/><query xmlns='urn:x'/></c:iq>")
        assert serialize(rec.stanzas[0]) == b'<iq type="get"><x/><query xmlns="urn:x"/></iq>'


def test_empty_stream() -> None:
    rec = Recorder().feed(BARE_HEADER[:-1] + b"/>")
    assert rec.starts[0]["to"] == "example.com" and rec.ended == 1 and rec.stanzas == []


def test_header_with_undeclared_prefix() -> None:
    refuse(BARE_HEADER[:-1] + b" db:x='1'>", "not-well-formed")
    refuse(BARE_HEADER[:-1] + b" to='&foo;'>", "not-well-formed")


def test_xml_lang_on_stanzas_is_preserved() -> None:
    rec = Recorder().feed(HEADER, b"<message xml:lang='de'><body xml:lang='fr'>Bonjour</body></message>")
    (el,) = rec.stanzas
    assert el.get(f"{{{NS_XML}}}lang") == "de"
    assert el[0].get(f"{{{NS_XML}}}lang") == "fr"
    assert serialize(el) == b'<message xml:lang="de"><body xml:lang="fr">Bonjour</body></message>'


def test_stream_end() -> None:
    rec = Recorder().feed(HEADER, b"<presence/></stream:stream>")
    assert rec.ended == 1 and len(rec.stanzas) == 1 and rec.parser.root is None
    rec.feed(b"<presence/>garbage</stream:stream>")  # ignored after the end
    assert rec.ended == 1 and len(rec.stanzas) == 1


def test_data_after_stream_end_in_same_feed_is_ignored() -> None:
    rec = Recorder().feed(HEADER + b"<presence/></stream:stream><message/>& not xml")
    assert rec.ended == 1 and [el.tag for el in rec.stanzas] == ["presence"]


# -- chunking ---------------------------------------------------------------------------------------


def test_whole_stream_reference() -> None:
    starts, stanzas, ended = Recorder().feed(STREAM).outcome()
    assert len(starts) == 1 and ended == 1
    assert len(stanzas) == len(STANZAS)
    assert "balcony é€🌹".encode() in stanzas[2]  # UTF-8 out, not character references
    assert "Fair &amp; square &lt;3 ☺ €".encode() in stanzas[4]
    assert b"'quoted' \"dq\" &gt; &lt;raw&gt; &amp; stuff</body>" in stanzas[5]


def test_split_at_every_byte_boundary() -> None:
    expected = Recorder().feed(STREAM).outcome()
    for cut in range(1, len(STREAM)):
        assert Recorder().feed(STREAM[:cut], STREAM[cut:]).outcome() == expected, cut


def test_fed_one_byte_at_a_time() -> None:
    expected = Recorder().feed(STREAM).outcome()
    rec = Recorder()
    for i in range(len(STREAM)):
        rec.parser.feed(STREAM[i : i + 1])
    assert rec.outcome() == expected


def test_random_chunking_with_a_tight_size_limit() -> None:
    # Chunks of any size, keepalives of any length: no stanza near the limit is refused.
    rnd = random.Random(6120)
    expected = Recorder().feed(STREAM).outcome()
    for _ in range(500):
        cuts = sorted(rnd.sample(range(1, len(STREAM)), rnd.randint(1, 30)))
        parts = [STREAM[a:b] for a, b in zip([0, *cuts], [*cuts, len(STREAM)], strict=True)]
        assert Recorder(max_stanza_size=600).feed(*parts).outcome() == expected, parts
    body = b"".join(stanza + b" " * rnd.randint(0, 3000) for stanza in STANZAS[2:] * 50)
    rec = Recorder(max_stanza_size=600).feed(HEADER)
    pos = 0
    while pos < len(body):
        size = rnd.randint(1, 5000)
        rec.feed(body[pos : pos + size])
        pos += size
    assert len(rec.stanzas) == len(STANZAS[2:]) * 50


def test_multibyte_characters_split_across_feeds() -> None:
    text = "é€🌹Ж中".encode()
    data = HEADER + b"<message><body>" + text + b"</body></message>"
    start = data.index(text)
    for cut in range(start, start + len(text) + 1):
        rec = Recorder().feed(data[:cut], data[cut:])
        assert rec.stanzas[0][0].text == "é€🌹Ж中"


def test_large_feed_is_sliced() -> None:
    many = HEADER + b"".join(
        b"<message id='%d'><body>%s</body></message>" % (i, b"x" * 100) for i in range(3000)
    )
    assert len(many) > 3 * 65536
    rec = Recorder().feed(many)
    assert [el.get("id") for el in rec.stanzas] == [str(i) for i in range(3000)]


# -- restricted XML, RFC 6120 s11.1 -----------------------------------------------------------------

DOCTYPE_CASES = {
    "plain": b"<?xml version='1.0'?><!DOCTYPE stream:stream>" + BARE_HEADER,
    "internal entity": b"<?xml version='1.0'?><!DOCTYPE stream:stream [<!ENTITY e 'EXPANDED'>]>"
    + BARE_HEADER
    + b"<message><body>&e;</body></message>",
    "no xml declaration": b"<!DOCTYPE stream:stream [<!ENTITY e 'EXPANDED'>]>"
    + BARE_HEADER
    + b"<message to='&e;'><body>&e;</body></message>",
    "billion laughs": b"<?xml version='1.0'?><!DOCTYPE s [<!ENTITY a0 'lol'>"
    + b"".join(b"<!ENTITY a%d '%s'>" % (i, (b"&a%d;" % (i - 1)) * 10) for i in range(1, 10))
    + b"]>"
    + BARE_HEADER
    + b"<message><body>&a9;</body></message>",
    "external entity": b"<?xml version='1.0'?><!DOCTYPE s [<!ENTITY x SYSTEM 'file:///etc/hostname'>]>"
    + BARE_HEADER
    + b"<message><body>&x;</body></message>",
}


@pytest.mark.parametrize("name", sorted(DOCTYPE_CASES))
def test_doctype_is_restricted(name: str) -> None:
    data = DOCTYPE_CASES[name]
    rec = refuse(data, "restricted-xml")
    assert rec.starts == [] and rec.stanzas == []
    # Fed byte by byte the DOCTYPE is refused as soon as "<!" is seen, before libxml2 gets it.
    rec = refuse([data[i : i + 1] for i in range(len(data))], "restricted-xml")
    assert rec.starts == [] and rec.stanzas == []


def test_doctype_inside_the_stream_is_not_well_formed() -> None:
    refuse(HEADER + b"<!DOCTYPE x [<!ENTITY e 'EXPANDED'>]><message>&e;</message>", "not-well-formed")


@pytest.mark.parametrize(
    "data",
    [
        HEADER + b"<message><!-- hi --><body>b</body></message>",
        HEADER + b"<message/><!-- between stanzas --><message/>",
        b"<?xml version='1.0'?><!-- before the root -->" + BARE_HEADER,
        BARE_HEADER + b"<message><?pi data?></message>",
        BARE_HEADER + b"<?pi between?>",
        b"<?xml version='1.0'?><?xml-stylesheet href='x'?>" + BARE_HEADER,
    ],
)
def test_comments_and_processing_instructions_are_restricted(data: bytes) -> None:
    refuse(data, "restricted-xml")
    refuse([data[i : i + 1] for i in range(len(data))], "restricted-xml")


def test_stanza_before_a_comment_is_delivered() -> None:
    rec = refuse(HEADER + b"<presence/><!-- x -->", "restricted-xml")
    assert [el.tag for el in rec.stanzas] == ["presence"]


@pytest.mark.parametrize(
    "data",
    [
        b"<message><body>&foo;</body></message><iq type='set'/>",
        b"<message to='&foo;'/><iq type='set'/>",
        b"<message><body>&amp</body></message><iq id='x;'/>",  # missing ";": libxml2 waits for one
    ],
)
def test_undefined_entity_reference_is_not_well_formed(data: bytes) -> None:
    # With resolve_entities=False lxml would silently stop at "&foo;" and start a new document with
    # the next feed; make sure that can never happen.
    rec = refuse([HEADER, data], "not-well-formed")
    assert rec.stanzas == []
    rec.feed(b"<iq type='set' id='after'/>")  # a dead parser ignores input
    assert rec.stanzas == []


def test_predefined_entities_and_character_references() -> None:
    rec = Recorder().feed(
        HEADER, b"<message to='&lt;&amp;&gt;&apos;&quot;'><body>&#65;&#x42;&lt;&amp;</body></message>"
    )
    assert rec.stanzas[0].get("to") == "<&>'\""
    assert rec.stanzas[0][0].text == "AB<&"


# -- namespaces and encoding -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        b"<stream:stream xmlns='jabber:client' xmlns:stream='http://wrong.example/streams'>",
        b"<stream xmlns='jabber:client'>",
        b"<stream:other xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
        b"<stream:stream xmlns='jabber:wrong' xmlns:stream='http://etherx.jabber.org/streams'>",
        b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>",
    ],
)
def test_wrong_namespaces(header: bytes) -> None:
    rec = refuse(header, "invalid-namespace")
    assert rec.starts == []


def test_first_level_element_without_namespace() -> None:
    # Stanzas are un-namespaced internally, so an explicit xmlns='' reads as the content namespace.
    rec = Recorder().feed(HEADER, b"<message xmlns=''><body xmlns=''>x</body></message>")
    assert [el.tag for el in rec.stanzas[0].iter()] == ["message", "body"]


@pytest.mark.parametrize(
    "data",
    [
        b"<?xml version='1.0' encoding='ISO-8859-1'?>"
        + BARE_HEADER
        + b"<message><body>\xe9</body></message>",
        b'<?xml version="1.0" encoding="UTF-16"?>' + BARE_HEADER,
        "<?xml version='1.0'?>".encode("utf-16"),
        "<?xml version='1.0'?>".encode("utf-16-le"),
        "<?xml version='1.0'?>".encode("utf-16-be"),
    ],
)
def test_non_utf8_encoding(data: bytes) -> None:
    refuse(data, "unsupported-encoding")
    refuse([data[i : i + 1] for i in range(len(data))], "unsupported-encoding")


@pytest.mark.parametrize(
    "decl",
    [
        b"<?xml version='1.0' encoding='UTF-8'?>",
        b'<?xml version="1.0" encoding="utf-8" standalone=\'yes\'?>',
        b"\xef\xbb\xbf<?xml version='1.0'?>",
        b"",
    ],
)
def test_utf8_declarations_are_accepted(decl: bytes) -> None:
    data = decl + BARE_HEADER + b"<message><body>\xc3\xa9</body></message>"
    rec = Recorder().feed(data)
    assert rec.stanzas[0][0].text == "é"
    rec = Recorder().feed(*[data[i : i + 1] for i in range(len(data))])
    assert rec.stanzas[0][0].text == "é"


# -- malformed XML ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"<message><body></message>",  # mismatched tags
        b"<message to=juliet@example.com/>",  # unquoted attribute
        b"<message to='juliet\"/><body/></message>'>",  # mismatched quotes, then "<" in a value
        b"<message to='a' to='b'/>",  # duplicate attribute
        b"<message><body>\xff\xfe</body></message>",  # invalid UTF-8
        b"<message><body>\xc3</body></message>",  # truncated UTF-8 sequence
        b"<message><body>\xed\xa0\x80</body></message>",  # UTF-8 encoded surrogate
        b"<message><body>a\x00b</body></message>",  # NUL byte
        b"<message><body>&#0;</body></message>",  # NUL character reference
        b"<message><body>\x01</body></message>",  # control character
        b"<message><x:body/></message>",  # undeclared element prefix
        b"<message><body y:a='1'/></message>",  # undeclared attribute prefix
        b"<x:message/>",  # undeclared prefix on a first-level element
        b"<message><x xmlns='urn:a b'/></message>",  # namespace name that is not a URI
        b"</message>",  # stray end tag
        b"<message><body>a < b</body></message>",  # raw "<"
        b"  <?xml version='1.0'?>",  # declaration not at the start
    ],
)
def test_malformed_xml(data: bytes) -> None:
    refuse([HEADER, data], "not-well-formed")


def test_relative_namespace_warnings_do_not_hide_prefix_errors() -> None:
    # libxml2 warns about every xmlns='vcard-temp' (not an absolute URI); the parser's log keeps
    # only 100 warnings, but an undeclared prefix must still be noticed afterwards.
    rec = Recorder().feed(HEADER, b"<iq type='get' id='v'><vCard xmlns='vcard-temp'/></iq>" * 150)
    assert len(rec.stanzas) == 150
    with pytest.raises(StreamError) as info:
        rec.feed(b"<iq type='get' id='w'><vCard xmlns='vcard-temp'/></iq><message><x:y/></message>")
    assert info.value.condition == "not-well-formed" and "prefix" in info.value.text


def test_malformed_stream_header() -> None:
    refuse(
        b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='x<'>",
        "not-well-formed",
    )
    refuse(b"not xml at all", "not-well-formed")
    refuse([b"<?xml version='1.0'?>", b"\n x", b"<stream:stream>"], "not-well-formed")


def test_stanzas_before_the_error_are_delivered() -> None:
    rec = refuse([HEADER + b"<presence/><message id='1'/><message><body></message>"], "not-well-formed")
    assert [el.tag for el in rec.stanzas] == ["presence", "message"]


# -- limits -----------------------------------------------------------------------------------------


def test_oversized_stanza_in_small_chunks() -> None:
    body = b"<message><body>" + b"x" * 5000 + b"</body></message>"
    chunks = [HEADER] + [body[i : i + 100] for i in range(0, len(body), 100)]
    rec = refuse(chunks, "policy-violation", max_stanza_size=1000)
    assert rec.stanzas == []


def test_oversized_stanza_in_one_chunk() -> None:
    refuse([HEADER, b"<message><body>" + b"x" * 5000], "policy-violation", max_stanza_size=1000)


@pytest.mark.parametrize("chunk", [1, 7, 1000, 4096, 16384, 65536])
@pytest.mark.parametrize("before", [b"", b"   ", b"<presence/>  "])
def test_stanza_size_limit_is_exact(chunk: int, before: bytes) -> None:
    limit = 20000

    def stanza(size: int) -> bytes:
        head, tail = b"<message to='bob@example.com'><body>", b"</body></message>"
        return head + b"x" * (size - len(head) - len(tail)) + tail

    for size, accepted in ((limit, True), (limit + 1, False)):
        data = before + stanza(size) + b" <presence/>"
        rec = Recorder(max_stanza_size=limit).feed(HEADER)
        try:
            rec.feed(*[data[i : i + chunk] for i in range(0, len(data), chunk)])
        except StreamError as exc:
            assert not accepted and exc.condition == "policy-violation"
        else:
            assert accepted and rec.stanzas[-1].tag == "presence"


def test_oversized_unfinished_start_tag() -> None:
    # No start event fires until the tag is complete, and a ">" inside quotes does not close it.
    chunks = [HEADER, b"<message to='>"] + [b"a" * 100] * 20
    refuse(chunks, "policy-violation", max_stanza_size=1000)
    chunks = [HEADER, b"<message "] + [b" " * 100] * 20
    refuse(chunks, "policy-violation", max_stanza_size=1000)


def test_oversized_stream_header() -> None:
    refuse([b"<stream:stream to='"] + [b"a" * 100] * 20, "policy-violation", max_stanza_size=1000)


@pytest.mark.parametrize(
    "opening",
    [
        [b"<!--"],
        [b"<!", b"-", b"-"],
        [b"<?pi "],
        [b"<![CDATA["],
        [b"<![CD", b"ATA["],
        [b" &"],
        [b"<", b"!--"],
        [b"<message to='>"],
        [b"<message to=\"'>\" from='"],
    ],
)
def test_unfinished_markup_between_stanzas_counts(opening: list[bytes]) -> None:
    # libxml2 buffers these whole until their terminator arrives, without a limit of its own
    # (measured: 90 MB), so the bytes count even though no stanza is open and they contain tags.
    chunks = [HEADER, b"<presence/>  "] + opening + [b"<b>x</b>" * 12] * 20
    rec = refuse(chunks, "policy-violation", max_stanza_size=1000)
    assert len(rec.stanzas) == 1


def test_keepalives_after_tricky_stanzas_do_not_count() -> None:
    rec = Recorder(max_stanza_size=1000).feed(HEADER)
    tricky = [
        b"<message><body><![CDATA[a & b < c <!-- <? ]]></body></message>",
        b"<message to='a>b' id=\"'\"><body>x</body></message>",
        b"<message><body>&amp;&lt;&#65;</body></message>",
        b"<presence/>",
    ]
    for stanza in tricky:
        rec.feed(stanza)
        for _ in range(200):  # 20 KB of keepalives, 20 times the limit
            rec.feed(b" " * 100)
        for i in range(len(stanza)):  # and the same stanza split at each byte, then keepalives
            rec.feed(stanza[:i], stanza[i:], b" " * 1000, b"\n" * 1000)
    assert len(rec.stanzas) == sum(len(stanza) + 1 for stanza in tricky)


def test_stanzas_within_the_limit_pass() -> None:
    stanza = b"<message><body>" + b"x" * 900 + b"</body></message>"
    rec = Recorder(max_stanza_size=1000)
    rec.feed(HEADER)
    for _ in range(50):
        for i in range(0, len(stanza), 37):
            rec.feed(stanza[i : i + 37])
        rec.feed(b" " * 700)
    assert len(rec.stanzas) == 50


def test_depth_limit() -> None:
    def nested(n: int) -> bytes:
        return b"<message>" + b"<x xmlns='urn:x'>" * (n - 1) + b"</x>" * (n - 1) + b"</message>"

    rec = Recorder(max_depth=8).feed(HEADER, nested(8))
    assert len(rec.stanzas) == 1
    refuse([HEADER, nested(9)], "policy-violation", max_depth=8)
    refuse([HEADER, nested(200)], "policy-violation")


def test_attribute_limit() -> None:
    def attrs(n: int) -> bytes:
        return b"".join(b" a%d='v'" % i for i in range(n))

    rec = Recorder(max_attributes=10).feed(HEADER, b"<message" + attrs(10) + b"/>")
    assert len(rec.stanzas) == 1
    refuse([HEADER, b"<message><body" + attrs(11) + b"/></message>"], "policy-violation", max_attributes=10)
    refuse([BARE_HEADER[:-1] + attrs(70) + b">"], "policy-violation")


# -- memory on endless streams ------------------------------------------------------------------------


def test_whitespace_keepalives_do_not_accumulate() -> None:
    rec = Recorder(max_stanza_size=1000).feed(HEADER)
    root = rec.parser.root
    chunk = b" \n\t " * 1024
    for i in range(2048):  # 8 MiB of keepalives
        rec.feed(chunk)
        assert root.text is None
        if i % 256 == 0:
            rec.feed(b"<presence/>" + chunk)
    assert root.text is None and len(root) == 0 and len(rec.stanzas) == 8


def test_memory_stays_flat_on_an_endless_stream() -> None:
    # 64 MiB of keepalives and 200,000 stanzas: the process peak must not grow with the input.
    rec = Recorder().feed(HEADER)
    spaces = b" " * 65536
    stanzas = b"".join(b"<message id='%d'><body>hello</body></message> " % i for i in range(2000))
    rec.feed(spaces, stanzas)
    rec.stanzas.clear()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(1024):
        rec.feed(spaces)
    for _ in range(100):
        rec.feed(stanzas)
        rec.stanzas.clear()
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 16 * 1024, grown_kib
    assert rec.parser.root.text is None and len(rec.parser.root) == 0


def test_root_never_keeps_children() -> None:
    rec = Recorder().feed(HEADER)
    root = rec.parser.root
    data = b"".join(b"  <message id='%d'><body>hello</body></message>\n" % i for i in range(5000))
    for i in range(0, len(data), 333):  # cuts inside stanzas, tags and whitespace
        rec.feed(data[i : i + 333])
        assert len(root) <= 1  # at most the stanza currently being parsed
        assert not (root.text or "").strip()
    assert len(rec.stanzas) == 5000 and len(root) == 0 and root.text is None
    assert all(el.getparent() is None and el.tail is None for el in rec.stanzas)


# -- stream restarts and callbacks -----------------------------------------------------------------


def test_reset_inside_on_stanza_discards_the_rest_of_the_feed() -> None:
    # STARTTLS command injection: the plaintext <iq/> sent in the same packet as <starttls/> must
    # never be processed, neither as an event the old parser already produced nor as later bytes.
    seen: list[str] = []
    parser: StreamParser

    def on_stanza(el: etree._Element) -> None:
        seen.append(el.tag)
        if el.tag == "{urn:ietf:params:xml:ns:xmpp-tls}starttls":
            parser.reset()

    parser = StreamParser(lambda attrs: seen.append("start"), on_stanza, lambda: seen.append("end"))
    parser.feed(
        HEADER
        + b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
        + b"<iq type='set' id='inject'><query xmlns='jabber:iq:roster'><item jid='evil@x'/></query></iq>"
        + b"</stream:stream>"
    )
    assert seen == ["start", "{urn:ietf:params:xml:ns:xmpp-tls}starttls"]
    # The new stream starts from scratch; the injected bytes left no trace.
    parser.feed(HEADER + b"<presence/>")
    assert seen == ["start", "{urn:ietf:params:xml:ns:xmpp-tls}starttls", "start", "presence"]


def test_reset_inside_on_stanza_discards_later_slices() -> None:
    seen: list[str] = []
    parser: StreamParser

    def on_stanza(el: etree._Element) -> None:
        seen.append(el.tag)
        parser.reset()

    parser = StreamParser(lambda attrs: None, on_stanza, lambda: None)
    parser.feed(HEADER + b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>" + b"<presence/>" * 20000)
    assert seen == ["{urn:ietf:params:xml:ns:xmpp-tls}starttls"]


def test_reset_inside_on_stream_start() -> None:
    seen: list[str] = []
    parser = StreamParser(lambda attrs: parser.reset(), lambda el: seen.append(el.tag), lambda: None)
    parser.feed(HEADER + b"<presence/>")
    assert seen == []


def test_close() -> None:
    rec = Recorder().feed(HEADER)
    rec.parser.close()
    rec.feed(b"<presence/>")
    assert rec.stanzas == [] and rec.parser.root is None


def test_callback_exceptions_propagate_and_parsing_can_continue() -> None:
    seen: list[str] = []

    def on_stanza(el: etree._Element) -> None:
        seen.append(el.get("id"))
        if el.get("id") == "1":
            raise KeyError("boom")

    parser = StreamParser(lambda attrs: None, on_stanza, lambda: None)
    with pytest.raises(KeyError):
        parser.feed(HEADER + b"<message id='1'/> <message id='2'/>  ")
    assert seen == ["1"]
    parser.feed(b"<message id='3'/>")
    assert seen == ["1", "2", "3"]
    assert len(parser.root) == 0 and parser.root.text is None


def test_callback_exception_next_to_a_syntax_error_leaves_the_parser_dead() -> None:
    # lxml restarts a new document on the feed after a syntax error; that feed must be ignored.
    seen: list[str] = []

    def on_stanza(el: etree._Element) -> None:
        seen.append(el.tag)
        raise KeyError("boom")

    parser = StreamParser(lambda attrs: None, on_stanza, lambda: None)
    with pytest.raises(KeyError):
        parser.feed(HEADER + b"<presence/><message><body></message>")
    parser.feed(b"<iq type='set'><query xmlns='jabber:iq:roster'/></iq>")
    assert seen == ["presence"] and parser.root is None


def test_namespace_error_next_to_a_syntax_error() -> None:
    rec = refuse([HEADER, b"<message><x:y/></message><bad</>"], "not-well-formed")
    assert rec.stanzas == []


def test_reentrant_feed_is_refused() -> None:
    parser = StreamParser(lambda attrs: parser.feed(b"<presence/>"), lambda el: None, lambda: None)
    with pytest.raises(RuntimeError):
        parser.feed(HEADER)


def test_stream_error_needs_a_known_condition() -> None:
    with pytest.raises(ValueError):
        StreamError("no-such-condition")
    with pytest.raises(ValueError):
        stream_error("no-such-condition")


# -- writer -------------------------------------------------------------------------------------------


def reparse(data: bytes) -> etree._Element:
    """Parse serialised stanza bytes the way a peer does: inside a jabber:client stream."""
    rec = Recorder().feed(HEADER, data)
    (el,) = rec.stanzas
    return el


def test_serialize_escaping_round_trip() -> None:
    msg = make_element("message", {"to": "a'b\"c<d&e>f", "id": "tab\there\nnl\rcr"})
    body = make_child(msg, None, "body")
    body.text = "5 > 3 & 2 < 4 'single' \"double\" ]]> \r\n é€🌹"
    data = serialize(msg)
    assert b"&lt;" in data and b"&amp;" in data and b"\xf0\x9f\x8c\xb9" in data
    again = reparse(data)
    assert again.get("to") == "a'b\"c<d&e>f"
    assert again.get("id") == "tab\there\nnl\rcr"
    assert again[0].text == body.text
    assert serialize(again) == data


def test_serialize_programmatic_payloads_have_no_invented_prefixes() -> None:
    # Plain lxml invents a prefix; that is what the helpers are for.
    assert serialize(etree.Element("{jabber:iq:version}query")).startswith(b"<ns0:query")
    iq = make_element("iq", {"type": "result", "id": "v1"})
    query = make_child(iq, "jabber:iq:version", "query")
    make_child(query, "jabber:iq:version", "name").text = "xmppd"
    make_child(query, "jabber:iq:version", "version").text = "0.1"
    make_child(iq, "urn:xmpp:extra", "x", {"a": "1"})
    data = serialize(iq)
    assert data == (
        b'<iq type="result" id="v1"><query xmlns="jabber:iq:version"><name>xmppd</name>'
        b'<version>0.1</version></query><x xmlns="urn:xmpp:extra" a="1"/></iq>'
    )
    again = reparse(data)
    assert [el.tag for el in again.iter()] == [
        "iq",
        "{jabber:iq:version}query",
        "{jabber:iq:version}name",
        "{jabber:iq:version}version",
        "{urn:xmpp:extra}x",
    ]
    roster = make_element("query", ns="jabber:iq:roster")
    assert serialize(roster) == b'<query xmlns="jabber:iq:roster"/>'
    features = make_element("features", ns=NS_STREAMS)
    assert serialize(features) == b'<stream:features xmlns:stream="http://etherx.jabber.org/streams"/>'


def test_serialize_has_no_tail_and_lang_is_xml_lang() -> None:
    parent = make_element("message", {f"{{{NS_XML}}}lang": "en"})
    body = make_child(parent, None, "body")
    body.tail = "tail"
    assert serialize(parent) == b'<message xml:lang="en"><body/>tail</message>'
    assert serialize(body) == b"<body/>"


def test_make_child_refuses_unnamespaced_child_of_namespaced_parent() -> None:
    query = make_element("query", ns="jabber:iq:roster")
    with pytest.raises(ValueError):
        make_child(query, None, "item")


def test_qualify_for_embedding() -> None:
    stanza = reparse(
        b"<message to='a@b' xml:lang='en'><body>hi</body><active xmlns='http://jabber.org/protocol/chatstates'/></message>"
    )
    forwarded = make_element("forwarded", ns="urn:xmpp:forward:0")
    forwarded.append(qualify(stanza))
    outer = make_element("message", {"to": "c@d"})
    make_child(outer, "urn:xmpp:carbons:2", "sent").append(forwarded)
    data = serialize(outer)
    assert data == (
        b'<message to="c@d"><sent xmlns="urn:xmpp:carbons:2"><forwarded xmlns="urn:xmpp:forward:0">'
        b'<message xmlns="jabber:client" to="a@b" xml:lang="en"><body>hi</body>'
        b'<active xmlns="http://jabber.org/protocol/chatstates"/></message></forwarded></sent></message>'
    )
    assert serialize(stanza).startswith(b'<message to="a@b"')  # the original is untouched
    assert serialize(qualify(make_element("query", ns="urn:x"))) == b'<query xmlns="urn:x"/>'
    again = reparse(data)
    assert [el.tag for el in again.iter()][3:5] == ["{jabber:client}message", "{jabber:client}body"]


def test_stream_header_and_error() -> None:
    header = stream_header(
        content_ns="jabber:client", from_="im.example.com", to="juliet@im.example.com", id_="t'<&>\""
    )
    assert header == (
        b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
        b" from='im.example.com' to='juliet@im.example.com' id='t&apos;&lt;&amp;&gt;&quot;' version='1.0'"
        b" xml:lang='en'>"
    )
    assert stream_header(
        content_ns="jabber:server", from_=None, to=None, id_=None, version=None, lang=None
    ) == (
        b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'>"
    )
    error = stream_error("not-well-formed", "bad <xml> & more")
    assert error == (
        b"<stream:error><not-well-formed xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
        b"<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>bad &lt;xml&gt; &amp; more</text></stream:error>"
    )
    # What the writer produces, the parser accepts.
    rec = Recorder().feed(header + error + stream_error("conflict") + STREAM_END)
    assert rec.starts[0]["id"] == "t'<&>\""
    assert [el[0].tag for el in rec.stanzas] == [
        "{urn:ietf:params:xml:ns:xmpp-streams}not-well-formed",
        "{urn:ietf:params:xml:ns:xmpp-streams}conflict",
    ]
    assert rec.stanzas[0][1].text == "bad <xml> & more"
    assert rec.ended == 1
