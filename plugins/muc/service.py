"""A MUC service on its own domain (``conference.example.org``): routing of stanzas to rooms, room
creation and its limits, persistence of persistent rooms, and service discovery (XEP-0045 s6, s10.1).

The service receives every stanza addressed to its domain (``ctx.add_route``), from local clients and
over s2s alike, with ``from`` and ``to`` set by the router or checked by the s2s stream.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lxml import etree
from twisted.internet.defer import Deferred
from xmppd.plugins.muc import admin
from xmppd.plugins.muc.config import NS_ROOMINFO, default_config, info_form
from xmppd.plugins.muc.occupant import NS_ADMIN, NS_MUC, NS_OWNER, SHUTDOWN
from xmppd.plugins.muc.room import NS_PING, Refused, Room

from xmppd.jid import JID, JIDError, parse_jid
from xmppd.storage.base import ArchiveQuery
from xmppd.xml.stanza import add_child, make_error, make_result, payload

NS_INFO = "http://jabber.org/protocol/disco#info"
NS_ITEMS = "http://jabber.org/protocol/disco#items"
NS_SELF_PING = "http://jabber.org/protocol/muc#self-ping-optimization"
NS_CONFERENCE = "jabber:x:conference"
STORE = "muc_rooms"
HISTORY = "muc_history"  # archive store: a persistent room's last messages
ROOMUSER_NODE = "x-roomuser-item"  # s7.12: discovering one's reserved nickname
MAX_WAITING = 1000  # stanzas held while the stored rooms are read at start


class Service:
    """The rooms of one service domain."""

    def __init__(self, ctx: Any, domain: str) -> None:
        self.ctx = ctx
        self.domain = domain
        self.jid = JID(None, domain, None)
        self.rooms: dict[str, Room] = {}
        self.max_history: int = ctx.option("max_history")
        self.max_occupants: int = ctx.option("max_occupants")
        self.ready = False
        self._waiting: list[etree._Element] = []
        self._joined: dict[JID, set[str]] = {}  # a local or remote session -> the rooms it is in

    # -- life ------------------------------------------------------------------------------------------

    def start(self) -> Deferred:
        """Read the persistent rooms from storage; stanzas that arrive meanwhile wait (up to a bound)."""
        storage = self.ctx.server.storage

        async def load() -> None:
            for name in await storage.users(self.domain, STORE):
                doc = await storage.get(self.domain, STORE, name)
                try:
                    room = self.rooms[name] = self._restore(name, doc)
                    await self._restore_history(room)
                except (TypeError, ValueError, KeyError, AttributeError, IndexError) as e:
                    # Left in storage untouched, for the operator to repair; the other rooms still load.
                    self.ctx.log.error(
                        "{domain}: room {name} not loaded: {error!r}", domain=self.domain, name=name, error=e
                    )
            self.ctx.log.info("{domain}: {count} persistent rooms", domain=self.domain, count=len(self.rooms))

        def done(result: Any) -> Any:
            self.ready = True
            waiting, self._waiting = self._waiting, []
            for stanza in waiting:
                self.receive(stanza)
            return result

        d = Deferred.fromCoroutine(load())
        d.addErrback(lambda f: self.ctx.log.failure("{domain}: reading rooms failed", f, domain=self.domain))
        return d.addBoth(done)

    def _restore(self, name: str, doc: dict[str, Any]) -> Room:
        config = default_config(self.ctx.option)
        stored = doc.get("config") or {}
        unknown = set(stored) - set(config)
        if unknown or any(type(stored[k]) is not type(config[k]) for k in stored):
            raise ValueError(f"bad configuration keys or values: {sorted(stored)}")
        config.update(stored)
        subject = doc.get("subject") or ["", ""]
        return Room(
            self,
            name,
            config,
            affiliations=doc.get("affiliations") or {},
            nicks=doc.get("nicks") or {},
            subject=(subject[0], subject[1]),
        )

    async def _restore_history(self, room: Room) -> None:
        length = room.history_length
        if not length:
            return
        query = ArchiveQuery(limit=length, reverse=True)
        page = await self.ctx.server.storage.archive_query(self.domain, HISTORY, room.name, query)
        room.history.restore([(item.when, item.value) for item in page.items])

    def store_history(self, room: Room, text: str, when: float) -> None:
        """A persistent room's history is kept in the archive store (its last ``max_history`` messages),
        so that it outlives a restart; a temporary room's lives in memory only."""
        if room.config["persistent"]:
            d = self.ctx.server.storage.archive_append(
                self.domain, HISTORY, room.name, text, when=when, keep=self.max_history
            )
            d.addErrback(lambda f: self.ctx.log.failure("storing history of {room} failed", f, room=room.jid))

    def shutdown(self) -> None:
        """The service goes away (unload, shutdown): every occupant is told with status 332 (s15.6.2)."""
        for room in list(self.rooms.values()):
            for occupant in list(room.occupants.values()):
                room.remove_occupant(occupant, codes=(SHUTDOWN,))

    def now(self) -> float:
        return self.ctx.clock.seconds()

    def send(self, stanza: etree._Element) -> None:
        self.ctx.send(stanza)

    # -- rooms -----------------------------------------------------------------------------------------

    def may_create(self, creator: JID) -> None:
        """s10.1.1: may ``creator`` create a room here? Raises Refused."""
        policy = self.ctx.option("room_creation")
        admins = self.ctx.server.config.get("server", "admins")
        allowed = (
            policy == "anyone"
            or (policy == "local" and creator.domain in self.ctx.server.hosts)
            or str(creator.bare) in admins
        )
        if not allowed:
            raise Refused("not-allowed", "you may not create rooms here")
        owned = sum(1 for r in self.rooms.values() if r.affiliation(creator.bare) == "owner")
        if owned >= self.ctx.option("max_rooms_per_user") and str(creator.bare) not in admins:
            raise Refused("not-allowed", "you own as many rooms as you may")
        if len(self.rooms) >= self.ctx.option("max_rooms"):
            raise Refused("resource-constraint", "this service has as many rooms as it may", "wait")

    def create(self, name: str, creator: JID, *, locked: bool) -> Room:
        room = Room(
            self,
            name,
            default_config(self.ctx.option),
            affiliations={str(creator.bare): "owner"},
            locked=locked,
        )
        self.rooms[name] = room
        self.save(room)  # persistent by default ([plugins.muc] persistent_rooms): stored from the start
        self.ctx.log.info("{room} created by {creator}", room=room.jid, creator=creator.bare)
        timeout = self.ctx.option("lock_timeout")
        if locked and timeout:
            self.ctx.call_later(timeout, self._lock_expired, room)
        return room

    def _lock_expired(self, room: Room) -> None:
        """A new room its owner never configured goes (as Prosody's muc_room_lock_timeout does), so
        abandoned locked rooms do not hold their names and count against the limits."""
        if room.locked and self.rooms.get(room.name) is room:
            destroy = etree.Element(f"{{{NS_OWNER}}}destroy")
            add_child(destroy, NS_OWNER, "reason", "the room was not configured in time")
            admin.destroy_room(room, destroy)

    def save(self, room: Room) -> None:
        """Store a persistent room's state (after any change to it)."""
        if room.config["persistent"] and self.rooms.get(room.name) is room:
            self._store(room.name, room.to_doc())

    def saved_config(self, room: Room, old: dict[str, Any]) -> None:
        """After a configuration change: store, or forget a room that is no longer persistent."""
        if room.config["persistent"]:
            self.save(room)
        elif old["persistent"]:
            self._store(room.name, None)
            if not room.occupants:
                self.destroy(room)

    def _store(self, name: str, doc: dict[str, Any] | None) -> None:
        """Store a room's state; None forgets the room, its stored history included."""
        storage = self.ctx.server.storage
        d = storage.set(self.domain, STORE, name, doc)
        if doc is None:
            d.addCallback(lambda _: storage.archive_delete(self.domain, HISTORY, name))
        d.addErrback(lambda f: self.ctx.log.failure("storing room {name} failed", f, name=name))

    def emptied(self, room: Room) -> None:
        """s10.1 / s16.1.1: a temporary room goes when its last occupant leaves."""
        if not room.config["persistent"]:
            self.destroy(room)

    def destroy(self, room: Room) -> None:
        if self.rooms.get(room.name) is not room:
            return
        del self.rooms[room.name]
        for occupant in list(room.occupants.values()):
            room.remove_occupant(occupant)
        if room.config["persistent"]:
            self._store(room.name, None)
        self.ctx.log.info("{room} destroyed", room=room.jid)

    def joined(self, room: Room, session: JID) -> None:
        self._joined.setdefault(session, set()).add(room.name)

    def left(self, room: Room, session: JID) -> None:
        rooms = self._joined.get(session)
        if rooms is not None:
            rooms.discard(room.name)
            if not rooms:
                del self._joined[session]

    def session_gone(self, session: JID) -> None:
        """A local session ended: it leaves every room it was in (s7.14; the presence plugin usually
        already sent unavailable presence for it)."""
        for name in list(self._joined.get(session, ())):
            room = self.rooms.get(name)
            if room is not None:
                room.leave(session)

    # -- stanzas -----------------------------------------------------------------------------------------

    def receive(self, stanza: etree._Element) -> None:
        """Every stanza addressed to the service's domain."""
        if not self.ready:
            if len(self._waiting) < MAX_WAITING:
                self._waiting.append(stanza)
            elif stanza.get("type") != "error":
                self.send(make_error(stanza, "resource-constraint", "wait", "the service is starting"))
            return
        try:
            sender, to = parse_jid(stanza.get("from") or ""), parse_jid(stanza.get("to") or "")
        except JIDError:
            return  # the router and s2s check addresses; nothing sane to answer
        try:
            if to.local is None:
                self.to_service(stanza, sender, to)
            else:
                self.to_room(stanza, sender, to)
        except Refused as e:
            if stanza.get("type") != "error" and not (stanza.tag == "iq" and stanza.get("type") == "result"):
                self.send(
                    make_error(stanza, e.condition, e.type, e.text, include_payload=stanza.tag == "presence")
                )

    def to_service(self, stanza: etree._Element, sender: JID, to: JID) -> None:
        if stanza.tag != "iq" or stanza.get("type") not in ("get", "set"):
            if stanza.tag == "message" and stanza.get("type") != "error":
                raise Refused("service-unavailable")
            return
        query = payload(stanza)
        key = (stanza.get("type"), query.tag if query is not None else None)
        if key == ("get", f"{{{NS_INFO}}}query") and not query.get("node"):
            reply = make_result(stanza)
            out = add_child(reply, NS_INFO, "query")
            self._identity(out, self.ctx.option("name"))
            for var in (NS_INFO, NS_ITEMS, NS_MUC, NS_SELF_PING, NS_PING):
                add_child(out, NS_INFO, "feature").set("var", var)
            self.send(reply)
        elif key == ("get", f"{{{NS_ITEMS}}}query") and not query.get("node"):
            reply = make_result(stanza)
            out = add_child(reply, NS_ITEMS, "query")
            for name, room in sorted(self.rooms.items()):
                if room.config["public"] and not room.locked:
                    item = add_child(out, NS_ITEMS, "item")
                    item.set("jid", str(room.jid))
                    item.set("name", room.config["name"] or name)
            self.send(reply)
        elif key == ("get", f"{{{NS_PING}}}ping"):
            self.send(make_result(stanza))
        else:
            raise Refused("service-unavailable")

    def _identity(self, query: etree._Element, name: str) -> None:
        identity = add_child(query, NS_INFO, "identity")
        identity.set("category", "conference")
        identity.set("type", "text")
        if name:
            identity.set("name", name)

    def to_room(self, stanza: etree._Element, sender: JID, to: JID) -> None:
        room = self.rooms.get(to.local or "")
        kind = stanza.tag
        if kind == "presence":
            if to.resource is None:
                if stanza.get("type") is None:
                    raise Refused("jid-malformed", "enter a room as room@service/nickname")  # s7.2.1
                if stanza.get("type") == "unavailable" and room is not None:
                    room.leave(sender)
                return
            created = False
            if room is None:
                if stanza.get("type") is not None:
                    return
                self.may_create(sender)
                # s7.1.1 / s10.1.1: a groupchat 1.0 client (no <x/>) cannot configure, so its room is instant
                muc_client = stanza.find(f"{{{NS_MUC}}}x") is not None
                room = self.create(to.local, sender, locked=muc_client and self.ctx.option("lock_new_rooms"))
                created = True
            room.on_presence(stanza, sender, to.resource, created=created)
            if created and not room.occupants:
                self.destroy(room)  # entry failed after all
            return
        if room is None or (
            room.locked and room.affiliation(sender.bare) != "owner" and sender not in room.by_jid
        ):
            if kind == "iq" and stanza.get("type") in ("result", "error"):
                return
            raise Refused("item-not-found", "no such room")  # s6.3 example 7
        if kind == "message":
            room.on_message(stanza, sender, to.resource)
        elif to.resource is not None:
            room.occupant_iq(stanza, sender, to.resource)
        elif stanza.get("type") in ("get", "set"):
            self.send(self.room_iq(room, stanza, sender))

    def room_iq(self, room: Room, iq: etree._Element, sender: JID) -> etree._Element:
        query = payload(iq)
        handler = ROOM_IQS.get((iq.get("type"), query.tag if query is not None else None))
        if handler is None:
            raise Refused("service-unavailable")
        return handler(self, room, iq, sender)

    def room_info(self, room: Room, iq: etree._Element, sender: JID) -> etree._Element:
        """s6.4 (room information, with the XEP-0128 room info form) and s7.12 (reserved nickname)."""
        node = iq[0].get("node")
        reply = make_result(iq)
        out = add_child(reply, NS_INFO, "query")
        if node == ROOMUSER_NODE:
            out.set("node", node)
            nick = room.nicks.get(str(sender.bare))
            if nick:
                self._identity(out, nick)
            return reply
        if node:
            raise Refused("item-not-found")
        config = room.config
        self._identity(out, config["name"] or room.name)
        features = [
            NS_MUC,
            NS_SELF_PING,
            "jabber:iq:register",
            NS_CONFERENCE,
            "muc_public" if config["public"] else "muc_hidden",
            "muc_persistent" if config["persistent"] else "muc_temporary",
            "muc_membersonly" if config["membersonly"] else "muc_open",
            "muc_moderated" if config["moderated"] else "muc_unmoderated",
            "muc_nonanonymous" if config["whois"] == "anyone" else "muc_semianonymous",
            "muc_passwordprotected" if config["passwordprotected"] else "muc_unsecured",
        ]
        for var in sorted([NS_INFO, *features]):
            add_child(out, NS_INFO, "feature").set("var", var)
        out.append(info_form(config, len(room.occupants), room.subject[0]))
        return reply

    def room_items(self, room: Room, iq: etree._Element, sender: JID) -> etree._Element:
        """s6.5: occupants are listed to other occupants only (the list reveals who is there)."""
        reply = make_result(iq)
        out = add_child(reply, NS_ITEMS, "query")
        if sender in room.by_jid and not iq[0].get("node"):
            for nick in sorted(room.occupants):
                add_child(out, NS_ITEMS, "item").set("jid", room.occupant_jid(nick))
        return reply


def _room_handler(fn: Callable[[Room, etree._Element, JID], etree._Element]) -> Callable[..., etree._Element]:
    return lambda service, room, iq, sender: fn(room, iq, sender)


ROOM_IQS: dict[tuple[str, str], Callable[..., etree._Element]] = {
    ("get", f"{{{NS_INFO}}}query"): Service.room_info,
    ("get", f"{{{NS_ITEMS}}}query"): Service.room_items,
    ("get", f"{{{NS_PING}}}ping"): lambda service, room, iq, sender: make_result(iq),
    ("get", f"{{{NS_ADMIN}}}query"): _room_handler(admin.admin_get),
    ("set", f"{{{NS_ADMIN}}}query"): _room_handler(admin.admin_set),
    ("get", f"{{{NS_OWNER}}}query"): _room_handler(admin.owner_get),
    ("set", f"{{{NS_OWNER}}}query"): _room_handler(admin.owner_set),
    ("get", f"{{{admin.NS_REGISTER}}}query"): _room_handler(admin.register_get),
    ("set", f"{{{admin.NS_REGISTER}}}query"): _room_handler(admin.register_set),
}

__all__ = ["Service", "NS_ROOMINFO"]
