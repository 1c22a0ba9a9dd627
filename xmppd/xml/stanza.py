"""Stanza helpers over plain lxml elements: building replies, stanza errors and payload children.

Stanzas are content-namespace neutral (see xmppd.xml.parser): ``<message>``, ``<iq>`` and their
``jabber:client`` children carry no namespace, payload elements carry their own
(``{jabber:iq:version}query``).
The stream's writer relies on the stream's default namespace, so one stanza serves c2s and s2s alike.
"""

from __future__ import annotations

from lxml import etree

NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_XML = "http://www.w3.org/XML/1998/namespace"
XML_LANG = f"{{{NS_XML}}}lang"

STANZA_KINDS = ("message", "presence", "iq")
IQ_TYPES = ("get", "set", "result", "error")
MESSAGE_TYPES = ("normal", "chat", "groupchat", "headline", "error")
PRESENCE_TYPES = ("unavailable", "subscribe", "subscribed", "unsubscribe", "unsubscribed", "probe", "error")

# RFC 6120 s8.3.3: the error type each defined condition usually goes with.
ERROR_TYPES = {
    "bad-request": "modify",
    "conflict": "cancel",
    "feature-not-implemented": "cancel",
    "forbidden": "auth",
    "gone": "cancel",
    "internal-server-error": "cancel",
    "item-not-found": "cancel",
    "jid-malformed": "modify",
    "not-acceptable": "modify",
    "not-allowed": "cancel",
    "not-authorized": "auth",
    "policy-violation": "modify",
    "recipient-unavailable": "wait",
    "redirect": "modify",
    "registration-required": "auth",
    "remote-server-not-found": "cancel",
    "remote-server-timeout": "wait",
    "resource-constraint": "wait",
    "service-unavailable": "cancel",
    "subscription-required": "auth",
    "undefined-condition": "cancel",
    "unexpected-request": "wait",
}


def qname(ns: str | None, name: str) -> str:
    """lxml's Clark notation: ``{ns}name``, or ``name`` for content-namespace elements."""
    return f"{{{ns}}}{name}" if ns else name


def add_child(parent: etree._Element, ns: str | None, name: str, text: str | None = None) -> etree._Element:
    """Append a child element. A payload namespace is declared as the child's default namespace, so it
    serialises as ``<query xmlns='ns'/>`` rather than with an invented prefix."""
    parent_ns = etree.QName(parent).namespace
    if ns and ns != parent_ns:
        child = etree.SubElement(parent, qname(ns, name), nsmap={None: ns})
    else:
        child = etree.SubElement(parent, qname(ns, name))
    if text is not None:
        child.text = text
    return child


def add_text(parent: etree._Element, name: str, text: str) -> etree._Element:
    """Append ``<name>text</name>`` in the parent's own namespace (the common case inside a payload)."""
    return add_child(parent, etree.QName(parent).namespace, name, text)


def make_stanza(
    kind: str,
    *,
    to: str | None = None,
    from_: str | None = None,
    type_: str | None = None,
    id_: str | None = None,
) -> etree._Element:
    """A new top-level stanza element with the given addressing attributes."""
    el = etree.Element(kind)
    for key, value in (("to", to), ("from", from_), ("type", type_), ("id", id_)):
        if value is not None:
            el.set(key, value)
    return el


def payload(stanza: etree._Element) -> etree._Element | None:
    """The single payload child of an iq (RFC 6120 s8.2.3), or None."""
    for child in stanza:
        if isinstance(child.tag, str):
            return child
    return None


def payload_key(stanza: etree._Element) -> str | None:
    """``ns:name`` of an iq's payload, the suffix of ``iq-get/host/<ns>:<name>`` event names."""
    child = payload(stanza)
    if child is None:
        return None
    q = etree.QName(child)
    return f"{q.namespace}:{q.localname}" if q.namespace else q.localname


def make_result(iq: etree._Element) -> etree._Element:
    """An empty ``type='result'`` answer to an iq (RFC 6120 s8.2.3), addressed back to its sender."""
    return make_stanza("iq", to=iq.get("from"), from_=iq.get("to"), type_="result", id_=iq.get("id"))


def make_error(
    stanza: etree._Element,
    condition: str,
    type_: str | None = None,
    text: str | None = None,
    *,
    include_payload: bool = False,
) -> etree._Element:
    """A stanza error answering ``stanza`` (RFC 6120 s8.3): same kind and id, addresses swapped.

    The original payload is left out by default (s8.3.1 makes it optional) so an error never
    amplifies a large stanza.
    """
    reply = make_stanza(
        stanza.tag, to=stanza.get("from"), from_=stanza.get("to"), type_="error", id_=stanza.get("id")
    )
    if include_payload:
        for child in stanza:
            if isinstance(child.tag, str) and child.tag != "error":
                reply.append(copy_stanza(child))
    error = etree.SubElement(reply, "error", type=type_ or ERROR_TYPES.get(condition, "cancel"))
    add_child(error, NS_STANZAS, condition)
    if text:
        add_child(error, NS_STANZAS, "text", text)
    return reply


def error_condition(stanza: etree._Element) -> str | None:
    """The defined condition of an error stanza, or None."""
    error = stanza.find("error")
    if error is None:
        return None
    for child in error:
        if (
            isinstance(child.tag, str)
            and child.tag.startswith(f"{{{NS_STANZAS}}}")
            and not child.tag.endswith("}text")
        ):
            return etree.QName(child).localname
    return None


def parse_stanza(text: str | bytes) -> etree._Element:
    """Parse one stanza as written on a c2s stream (``jabber:client`` default namespace) into the same
    namespace-neutral form live stanzas have; for stanzas the server stored itself (offline messages,
    pending subscription requests). ValueError if ``text`` is not exactly one well-formed element."""
    from xmppd.xml.parser import StreamError, StreamParser

    found: list[etree._Element] = []
    parser = StreamParser(lambda attrs: None, found.append, lambda: None, max_stanza_size=16 * 1024 * 1024)
    data = text.encode() if isinstance(text, str) else text
    try:
        parser.feed(_PARSE_HEADER + data)
    except StreamError as e:
        raise ValueError(f"not a stanza: {e.condition}") from None
    if len(found) != 1:
        raise ValueError(f"expected one element, found {len(found)}")
    return found[0]


_PARSE_HEADER = (
    b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
)


def copy_stanza(el: etree._Element) -> etree._Element:
    """An independent copy of an element (a stanza, a payload, a form) that can be changed or re-parented.

    lxml's ``__copy__`` copies the whole subtree, as ``copy.deepcopy`` does, without the copy module's
    memo bookkeeping: half the cost, and the MUC copies each message once per occupant."""
    return el.__copy__()
