"""Serialising stanzas and stream framing to bytes (sans-IO).

Stanzas are namespace neutral (see :mod:`xmppd.xml.parser`): elements of the stream's content
namespace (``jabber:client`` or ``jabber:server``) are un-namespaced and serialise without an
``xmlns``, relying on the default namespace the stream header declares (RFC 6120 s4.8.2, s4.8.3).
Payload elements carry their own namespace as a default declaration
(``<query xmlns="jabber:iq:roster"/>``), never an invented prefix.

Two lxml behaviours shape the helpers here:

* ``etree.Element("{jabber:iq:version}query")`` or ``SubElement(iq, "{ns}query")`` without an
  ``nsmap`` declares the namespace under a generated prefix: ``<ns0:query xmlns:ns0="...">``.  Many
  XMPP clients do not resolve prefixes, so build namespaced elements with :func:`make_element` and
  :func:`make_child`, which declare the namespace as the default one.
* An un-namespaced element below an element with a default namespace is written without
  ``xmlns=""`` and so silently lands in that namespace when parsed again.  :func:`make_child` refuses
  to build one; to embed a stanza inside a payload (XEP-0297 forwarding, carbons, MAM), qualify it
  first with :func:`qualify`.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping

from lxml import etree

from xmppd.xml.parser import ATTR_ESCAPES as _ATTR_ESCAPES
from xmppd.xml.parser import NS_STREAM_ERRORS, NS_STREAMS, STREAM_ERROR_CONDITIONS

__all__ = [
    "STREAM_END",
    "make_child",
    "make_element",
    "qualify",
    "serialize",
    "stream_error",
    "stream_header",
]

#: Closes the stream (RFC 6120 s4.4).
STREAM_END = b"</stream:stream>"

_tostring = etree.tostring
_TEXT_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})
# Characters XML 1.0 cannot carry at all (s2.2), replaced rather than written into the stream.
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def serialize(el: etree._Element) -> bytes:
    """Return the UTF-8 bytes of one stanza or stream-level element, without XML declaration or tail.

    Text and attribute values are escaped by libxml2 (``&``, ``<``, ``>`` always, ``"`` in attribute
    values, control whitespace in attribute values as character references).  Un-namespaced elements
    get no ``xmlns`` and take the stream's default namespace (RFC 6120 s4.8.3).
    """
    return _tostring(el, encoding="utf-8", with_tail=False)


def make_element(name: str, attrib: Mapping[str, str] | None = None, ns: str | None = None) -> etree._Element:
    """Create a free-standing element: un-namespaced (content namespace) if ``ns`` is None, else
    ``{ns}name`` with ``ns`` declared as the default namespace (no generated prefix).  Elements of
    the stream namespace (``<stream:features/>``, ``<stream:error/>``) use the ``stream`` prefix."""
    if ns is None:
        return etree.Element(name, attrib)
    if ns == NS_STREAMS:  # stream-level elements keep the conventional "stream:" prefix (s4.8.5)
        return etree.Element(f"{{{ns}}}{name}", attrib, nsmap={"stream": ns})
    return etree.Element(f"{{{ns}}}{name}", attrib, nsmap={None: ns})


def make_child(
    parent: etree._Element, ns: str | None, name: str, attrib: Mapping[str, str] | None = None
) -> etree._Element:
    """Append a child ``name`` in namespace ``ns`` (None: the content namespace) to ``parent``.

    A child in its parent's namespace inherits the parent's declaration; a child in another namespace
    declares it as its own default namespace, so the output never carries an ``ns0:`` prefix.  Raises
    ValueError for an un-namespaced child of a namespaced parent, which lxml would serialise inside
    the parent's namespace.
    """
    ptag = parent.tag
    if ns is None:
        if ptag[0] == "{":
            raise ValueError(f"an un-namespaced <{name}/> cannot be placed inside {ptag}")
        return etree.SubElement(parent, name, attrib)
    tag = f"{{{ns}}}{name}"
    if ptag.startswith(f"{{{ns}}}"):
        return etree.SubElement(parent, tag, attrib)
    return etree.SubElement(parent, tag, attrib, nsmap={None: ns})


def qualify(el: etree._Element, ns: str = "jabber:client") -> etree._Element:
    """Return a copy of a namespace-neutral stanza with its content-namespace elements put back into
    ``ns`` (declared as default), for embedding it inside a payload: XEP-0297 requires a forwarded
    stanza to be qualified by ``jabber:client`` and clients parse it without the stream's default.
    ``el`` itself is left untouched; already namespaced elements are copied as they are."""
    if el.tag[0] == "{":
        new = copy.deepcopy(el)
        new.tail = None
        return new
    return _qualified_copy(el, None, f"{{{ns}}}", ns)


def _qualified_copy(
    src: etree._Element, parent: etree._Element | None, prefix: str, ns: str
) -> etree._Element:
    if parent is None:
        new = etree.Element(prefix + src.tag, src.attrib, nsmap={None: ns})
    else:
        new = etree.SubElement(parent, prefix + src.tag, src.attrib)
    new.text = src.text
    for child in src:
        tag = child.tag
        if not isinstance(tag, str):
            continue  # comments and processing instructions have no place in a stanza
        if tag[0] == "{":
            sub = copy.deepcopy(child)
            new.append(sub)
        else:
            sub = _qualified_copy(child, new, prefix, ns)
        sub.tail = child.tail
    return new


def _attr(name: str, value: str) -> str:
    escaped = _NOT_XML_CHAR.sub("\ufffd", value).translate(_ATTR_ESCAPES)
    return f" {name}='{escaped}'"


def stream_header(
    *,
    content_ns: str,
    from_: str | None,
    to: str | None,
    id_: str | None,
    version: str | None = "1.0",
    lang: str | None = "en",
) -> bytes:
    """Return the XML declaration and the ``<stream:stream>`` open tag (RFC 6120 s4.7).

    ``content_ns`` (``jabber:client``, ``jabber:server``...) becomes the default namespace (s4.8.2)
    and ``stream`` the prefix of the stream namespace (s4.8.5).  Attributes that are None are left
    out; values are escaped.  ``version`` None omits the version, as an answer to a pre-1.0 peer
    must (s4.7.5).
    """
    parts = [
        "<?xml version='1.0'?><stream:stream",
        _attr("xmlns", content_ns),
        _attr("xmlns:stream", NS_STREAMS),
    ]
    for name, value in (("from", from_), ("to", to), ("id", id_), ("version", version), ("xml:lang", lang)):
        if value is not None:
            parts.append(_attr(name, value))
    parts.append(">")
    return "".join(parts).encode("utf-8")


def stream_error(condition: str, text: str | None = None) -> bytes:
    """Return ``<stream:error>`` with the given RFC 6120 s4.9.3 condition and optional ``<text/>``
    (s4.9.2).  The caller then writes :data:`STREAM_END` and closes the connection (s4.9.1.1)."""
    if condition not in STREAM_ERROR_CONDITIONS:
        raise ValueError(f"not an RFC 6120 stream error condition: {condition!r}")
    out = f"<stream:error><{condition} xmlns='{NS_STREAM_ERRORS}'/>"
    if text is not None:
        escaped = _NOT_XML_CHAR.sub("\ufffd", text).translate(_TEXT_ESCAPES)
        out += f"<text xmlns='{NS_STREAM_ERRORS}'>{escaped}</text>"
    return (out + "</stream:error>").encode("utf-8")
