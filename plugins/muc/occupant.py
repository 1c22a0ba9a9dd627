"""Occupants of a room and the ``muc#user`` presence that describes them (XEP-0045 s7.2.3, s15.6.3).

An occupant is one nickname in one room. One user may be joined under that nickname from several
resources (multi-session nicks, s7.2.7): each is a session with its own last presence; the room shows
the occupant once, with the presence of the session that spoke last.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from xmppd.jid import JID
from xmppd.xml.stanza import add_child, copy_stanza

NS_MUC = "http://jabber.org/protocol/muc"
NS_USER = "http://jabber.org/protocol/muc#user"
NS_ADMIN = "http://jabber.org/protocol/muc#admin"
NS_OWNER = "http://jabber.org/protocol/muc#owner"

AFFILIATIONS = ("owner", "admin", "member", "none", "outcast")
ROLES = ("moderator", "participant", "visitor", "none")
#: s5.2: the order of affiliations, for "at or above" comparisons.
RANK = {"outcast": -1, "none": 0, "member": 1, "admin": 2, "owner": 3}

# Status codes (s15.6.2, XEP-0045 registry).
NON_ANONYMOUS = "100"
CONFIG_CHANGED = "104"
SELF = "110"
LOGGING_ON = "170"
LOGGING_OFF = "171"
NOW_NON_ANONYMOUS = "172"
NOW_SEMI_ANONYMOUS = "173"
CREATED = "201"
BANNED = "301"
NICK_CHANGED = "303"
KICKED = "307"
REMOVED_AFFILIATION = "321"
REMOVED_MEMBERS_ONLY = "322"
SHUTDOWN = "332"
REMOVED_ERROR = "333"


@dataclass
class Occupant:
    """A nickname in a room: whose it is (``bare``), its role, and the sessions joined under it."""

    nick: str
    bare: JID
    role: str
    #: full JID of each joined session -> its last presence to the room (children only matter)
    sessions: dict[JID, etree._Element] = field(default_factory=dict)
    #: the session whose presence the room shows
    current: JID | None = None

    @property
    def jid(self) -> JID:
        """The real JID shown to those allowed to see it (the session that spoke last)."""
        return self.current or next(iter(self.sessions))

    @property
    def presence(self) -> etree._Element:
        return self.sessions[self.jid]


def occupant_presence(
    room_jid: JID,
    occupant: Occupant,
    affiliation: str,
    *,
    show_jid: bool,
    unavailable: bool = False,
    codes: tuple[str, ...] = (),
    nick: str | None = None,
    actor: str | None = None,
    reason: str | None = None,
    extra: etree._Element | None = None,
) -> etree._Element:
    """The presence of ``occupant`` as the room sends it (s7.2.3): from room/nick, the occupant's own
    presence children (show, status, caps...) unless unavailable, and an ``muc#user`` ``<x/>`` with the
    item (affiliation, role, the real JID when ``show_jid``, the new ``nick`` of s7.6), ``actor`` and
    ``reason`` (s8.2, s9.1), ``extra`` (a ``<destroy/>``, s10.9) and status ``codes``."""
    presence = etree.Element("presence")
    presence.set("from", str(JID(room_jid.local, room_jid.domain, occupant.nick)))
    if unavailable:
        presence.set("type", "unavailable")
    for child in occupant.presence:
        # s7.7 / s7.14: the occupant's presence information passes through (only <status/> when leaving)
        if isinstance(child.tag, str) and child.tag not in (f"{{{NS_MUC}}}x", f"{{{NS_USER}}}x"):
            if not unavailable or child.tag == "status":
                presence.append(copy_stanza(child))
    x = add_child(presence, NS_USER, "x")
    item = add_child(x, NS_USER, "item")
    item.set("affiliation", affiliation)
    item.set("role", "none" if unavailable else occupant.role)
    if show_jid:
        item.set("jid", str(occupant.jid))
    if nick is not None:
        item.set("nick", nick)
    if actor is not None:
        add_child(item, NS_USER, "actor").set("nick", actor)
    if reason:
        add_child(item, NS_USER, "reason", reason)
    if extra is not None:
        x.append(extra)
    for code in codes:
        add_child(x, NS_USER, "status").set("code", code)
    return presence


def add_status(stanza: etree._Element, *codes: str) -> None:
    """Add status codes to the ``muc#user`` ``<x/>`` of a presence built by ``occupant_presence``."""
    x = stanza.find(f"{{{NS_USER}}}x")
    for code in codes:
        add_child(x, NS_USER, "status").set("code", code)
