"""Multi-User Chat (XEP-0045) as real clients see it: slixmpp (with its xep_0045 and xep_0249 plugins)
over c2s to ``twistd xmppd``, whose ``muc`` plugin serves ``conference.localhost``.

Rooms are created and configured through the muc#owner form (s10.1), joined with presence (s7.2), and
moderated with muc#admin (s8, s9). One server serves every test but the persistence one, which restarts
its own server on the same data directory; each test uses rooms of its own.

Every client records each presence and message it receives (``Inbox``), so a test can look for "the
presence from room/nick with status 303 since I sent that" without depending on what slixmpp's own MUC
bookkeeping makes of it.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from slixclient import DEFAULT_PLUGINS as CLIENT_PLUGINS
from slixclient import NS_CLIENT, TIMEOUT, Client, Clients, run, until, within
from slixmpp import JID
from slixmpp.exceptions import IqError
from slixmpp.plugins.xep_0004 import Form
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from xmppd.config import DEFAULT_PLUGINS
from xmppd.testing.process import ServerProcess

SERVICE = "conference.localhost"
CONFIG = {"plugins": {"enabled": list(dict.fromkeys([*DEFAULT_PLUGINS, "muc"]))}}
USERS = {
    "alice@localhost": "alice-pw",
    "bob@localhost": "bob-pw",
    "carol@localhost": "carol-pw",
    "dave@localhost": "dave-pw",
    "eve@localhost": "eve-pw",
}
PLUGINS = (*CLIENT_PLUGINS, "xep_0004", "xep_0045", "xep_0203", "xep_0249")

NS_MUC = "http://jabber.org/protocol/muc"
NS_USER = "http://jabber.org/protocol/muc#user"
NS_OWNER = "http://jabber.org/protocol/muc#owner"
NS_ROOMCONFIG = "http://jabber.org/protocol/muc#roomconfig"
NS_INFO = "http://jabber.org/protocol/disco#info"
NS_ITEMS = "http://jabber.org/protocol/disco#items"
NS_DATA = "jabber:x:data"
NS_DELAY = "urn:xmpp:delay"
NS_CONFERENCE = "jabber:x:conference"
NS_PING = "urn:xmpp:ping"


def room_jid(name: str) -> str:
    return f"{name}@{SERVICE}"


# -- what a client received ----------------------------------------------------------------------------


class Inbox:
    """Every presence and message stanza a client receives, in order (error stanzas included)."""

    def __init__(self, client: Client) -> None:
        self.stanzas: list[Any] = []
        for kind in ("presence", "message"):
            client.register_handler(
                Callback(f"inbox {kind}", MatchXPath(f"{{{NS_CLIENT}}}{kind}"), self.stanzas.append)
            )

    def mark(self) -> int:
        """A position: ``since=mark`` looks only at what arrives afterwards."""
        return len(self.stanzas)

    def find(self, predicate: Callable[[Any], bool], since: int = 0) -> list[Any]:
        return [s for s in self.stanzas[since:] if predicate(s)]

    async def expect(
        self, predicate: Callable[[Any], bool], what: str, since: int = 0, timeout: float = TIMEOUT
    ) -> Any:
        """The first stanza since ``since`` satisfying ``predicate``, waiting for it if need be."""
        await until(lambda: bool(self.find(predicate, since)), what, timeout)
        return self.find(predicate, since)[0]


def inbox(client: Client) -> Inbox:
    return client.inbox  # type: ignore[attr-defined]


async def login(clients: Clients, user: str, resource: str = "pc") -> Client:
    client = await clients.login(f"{user}@localhost/{resource}", USERS[f"{user}@localhost"], plugins=PLUGINS)
    client.inbox = Inbox(client)  # type: ignore[attr-defined]
    return client


async def logins(clients: Clients, *users: str) -> list[Client]:
    """Several users logged in (resource "pc"), in order."""
    return [await login(clients, user) for user in users]


def kind(stanza: Any) -> str:
    return stanza.xml.tag.rsplit("}", 1)[-1]


def sender(stanza: Any) -> str:
    return str(stanza["from"])


def user_x(stanza: Any) -> ET.Element | None:
    return stanza.xml.find(f"{{{NS_USER}}}x")


def codes(stanza: Any) -> set[int]:
    x = user_x(stanza)
    return set() if x is None else {int(s.get("code")) for s in x.findall(f"{{{NS_USER}}}status")}


def item(stanza: Any) -> ET.Element:
    x = user_x(stanza)
    found = None if x is None else x.find(f"{{{NS_USER}}}item")
    assert found is not None, f"no muc#user item in {stanza}"
    return found


def error_of(stanza: Any) -> tuple[str, str]:
    """(type, condition) of an error stanza."""
    assert stanza["type"] == "error", f"not an error: {stanza}"
    return stanza["error"]["type"], stanza["error"]["condition"]


def presence_from(jid: str, *, unavailable: bool | None = None, code: int | None = None) -> Callable:
    def match(s: Any) -> bool:
        if kind(s) != "presence" or sender(s) != jid or s["type"] == "error":
            return False
        if unavailable is not None and (s["type"] == "unavailable") != unavailable:
            return False
        return code is None or code in codes(s)

    return match


def groupchat_from(jid: str, body: str | None = None) -> Callable:
    return lambda s: (
        kind(s) == "message"
        and s["type"] == "groupchat"
        and sender(s) == jid
        and (body is None or s["body"] == body)
    )


def error_message_from(jid: str) -> Callable:
    return lambda s: kind(s) == "message" and s["type"] == "error" and sender(s) == jid


def carrying(element: str) -> Callable:
    """A message with ``<x xmlns='muc#user'><element/></x>`` (an invitation, a decline)."""
    return lambda s: (
        kind(s) == "message"
        and user_x(s) is not None
        and user_x(s).find(f"{{{NS_USER}}}{element}") is not None
    )


def is_subject(s: Any) -> bool:
    """The subject message (s8.1): groupchat, a <subject/>, no body."""
    return (
        kind(s) == "message"
        and s["type"] == "groupchat"
        and s.xml.find(f"{{{NS_CLIENT}}}subject") is not None
        and s.xml.find(f"{{{NS_CLIENT}}}body") is None
    )


async def round_trip(client: Client) -> None:
    """A ping to the server and its answer: what the server routed to this client before is in by now."""
    await client.plugin["xep_0199"].ping("localhost", timeout=TIMEOUT)


# -- joining -------------------------------------------------------------------------------------------


class JoinRefused(AssertionError):
    def __init__(self, presence: Any) -> None:
        super().__init__(f"join refused: {error_of(presence)}")
        self.presence = presence
        self.type, self.condition = error_of(presence)


@dataclass
class Joined:
    """What a join brought, in the order of s7.2: occupants, self-presence, history, subject."""

    occupants: list[Any]
    me: Any
    history: list[Any]
    subject: Any | None


async def join(
    client: Client,
    room: str,
    nick: str,
    *,
    password: str | None = None,
    maxstanzas: int | None = None,
    subject: bool = True,
) -> Joined:
    """Enter ``room`` as ``nick`` (s7.2.1); JoinRefused with the error presence if the room says no.
    With ``subject`` (every join of an existing room, s7.2.15), wait for the subject message too."""
    box = inbox(client)
    mark = box.mark()
    me = f"{room}/{nick}"
    stanza = client.plugin["xep_0045"].make_join_stanza(
        JID(room), nick, password=password, maxstanzas=maxstanzas
    )
    stanza.send()
    answer = await box.expect(
        lambda s: kind(s) == "presence" and sender(s) == me and (s["type"] == "error" or 110 in codes(s)),
        f"{client.boundjid} entering {me}",
        since=mark,
    )
    if answer["type"] == "error":
        raise JoinRefused(answer)
    position = box.stanzas.index(answer, mark)
    occupants = [
        s
        for s in box.stanzas[mark:position]
        if kind(s) == "presence" and JID(sender(s)).bare == room and s["type"] != "error"
    ]
    found_subject = None
    history: list[Any] = []
    if subject:
        found_subject = await box.expect(
            lambda s: is_subject(s) and JID(sender(s)).bare == room, f"the subject of {room}", since=position
        )
        end = box.stanzas.index(found_subject, position)
        history = [s for s in box.stanzas[position:end] if kind(s) == "message" and s["type"] == "groupchat"]
    return Joined(occupants, answer, history, found_subject)


async def join_refused(client: Client, room: str, nick: str, **kwargs: Any) -> tuple[str, str]:
    """(type, condition) of the error presence that refuses the join."""
    try:
        joined = await join(client, room, nick, subject=False, **kwargs)
    except JoinRefused as refused:
        return refused.type, refused.condition
    raise AssertionError(f"{client.boundjid} entered {room} as {nick}: {joined.me}")


async def leave(client: Client, room: str, nick: str) -> Any:
    """Exit the room (s7.14); the unavailable self-presence (status 110)."""
    box = inbox(client)
    mark = box.mark()
    client.send_presence(pto=f"{room}/{nick}", ptype="unavailable")
    return await box.expect(
        presence_from(f"{room}/{nick}", unavailable=True, code=110), f"{nick} leaving {room}", since=mark
    )


async def configure(client: Client, room: str, values: dict[str, Any]) -> Form:
    """Fill in the room's muc#owner form (s10.2) with ``values`` and submit it; the form as received."""
    muc = client.plugin["xep_0045"]
    form = await muc.get_room_config(JID(room), timeout=TIMEOUT)
    fields = form.get_fields()
    assert fields["FORM_TYPE"]["value"] in (NS_ROOMCONFIG, [NS_ROOMCONFIG])
    received = Form(xml=ET.fromstring(ET.tostring(form.xml)))
    for field in [f for var, f in fields.items() if not var]:  # fixed text is not submitted
        form.xml.remove(field.xml)
    for var, value in values.items():
        assert var in fields, f"no {var} in the room configuration form: {sorted(fields)}"
        fields[var]["value"] = value
    await muc.set_room_config(JID(room), form, timeout=TIMEOUT)
    return received


async def create(
    owner: Client, name: str, nick: str, values: dict[str, Any] | None = None
) -> tuple[str, Joined]:
    """Create room ``name`` (s10.1): enter it as its first occupant (owner, moderator, 110 + 201), then
    unlock it with an empty submit (an instant room, s10.1.2) or the form with ``values`` (s10.1.3)."""
    room = room_jid(name)
    joined = await join(owner, room, nick, subject=False)
    assert {110, 201} <= codes(joined.me), f"room {name} not created anew: {joined.me}"
    assert (item(joined.me).get("affiliation"), item(joined.me).get("role")) == ("owner", "moderator")
    if values is None:
        await owner.plugin["xep_0045"].set_room_config(JID(room), Form(), timeout=TIMEOUT)
    else:
        await configure(owner, room, values)
    return room, joined


async def disco_info(client: Client, jid: str, node: str | None = None) -> ET.Element:
    answer = await client.plugin["xep_0030"].get_info(jid=jid, node=node, timeout=TIMEOUT)
    return answer.xml.find(f"{{{NS_INFO}}}query")


def features_of(query: ET.Element) -> set[str]:
    return {f.get("var") for f in query.findall(f"{{{NS_INFO}}}feature")}


def identities_of(query: ET.Element) -> set[tuple[str, str, str | None]]:
    return {
        (i.get("category"), i.get("type"), i.get("name")) for i in query.findall(f"{{{NS_INFO}}}identity")
    }


def form_values(x: ET.Element) -> dict[str, list[str]]:
    return {
        f.get("var"): [v.text or "" for v in f.findall(f"{{{NS_DATA}}}value")]
        for f in x.findall(f"{{{NS_DATA}}}field")
    }


def roominfo(query: ET.Element) -> dict[str, list[str]]:
    """The muc#roominfo extended disco form (XEP-0128) of a room's disco#info."""
    for x in query.findall(f"{{{NS_DATA}}}x"):
        values = form_values(x)
        if values.get("FORM_TYPE") == ["http://jabber.org/protocol/muc#roominfo"]:
            return values
    raise AssertionError(f"no muc#roominfo form in {ET.tostring(query)!r}")


async def disco_items(client: Client, jid: str) -> dict[str, str | None]:
    answer = await client.plugin["xep_0030"].get_items(jid=jid, timeout=TIMEOUT)
    query = answer.xml.find(f"{{{NS_ITEMS}}}query")
    return {i.get("jid"): i.get("name") for i in query.findall(f"{{{NS_ITEMS}}}item")}


async def self_ping(client: Client, occupant: str) -> Any:
    """XEP-0410: ping one's own occupant JID."""
    ping = client.make_iq_get(ito=occupant)
    ping.append(ET.Element(f"{{{NS_PING}}}ping"))
    return await ping.send(timeout=TIMEOUT)


async def iq_error(awaitable: Any) -> tuple[str, str]:
    """(type, condition) of the error an iq request is answered with."""
    try:
        result = await awaitable
    except IqError as e:
        return e.iq["error"]["type"], e.iq["error"]["condition"]
    raise AssertionError(f"expected an error, got {result}")


@pytest.fixture(scope="module")
def server(module_xmpp_process: Any) -> ServerProcess:
    return module_xmpp_process(config=CONFIG, users=USERS)


# -- 1. a room's life: create, join, history, subject, messages, private messages, nicks, leave ----------


def test_room_life_join_history_subject_chat_private_nick_change_and_leave(server):
    async def main():
        async with Clients(server) as clients:
            alice, bob, carol = await logins(clients, "alice", "bob", "carol")

            room = room_jid("lobby")
            joined = await join(alice, room, "Alice", subject=False)
            assert {110, 201} <= codes(joined.me)
            assert (item(joined.me).get("affiliation"), item(joined.me).get("role")) == ("owner", "moderator")
            # s10.1.1: until the owner configures it, the room is locked to everyone else
            assert await join_refused(bob, room, "Bob") == ("cancel", "item-not-found")
            form = await configure(alice, room, {"muc#roomconfig_roomname": "The Lobby"})
            expected_fields = {
                "muc#roomconfig_roomname",
                "muc#roomconfig_roomdesc",
                "muc#roomconfig_persistentroom",
                "muc#roomconfig_publicroom",
                "muc#roomconfig_membersonly",
                "muc#roomconfig_moderatedroom",
                "muc#roomconfig_passwordprotectedroom",
                "muc#roomconfig_roomsecret",
                "muc#roomconfig_whois",
                "muc#roomconfig_maxusers",
                "muc#roomconfig_changesubject",
            }
            assert expected_fields <= set(form.get_fields())

            box = inbox(alice)
            mark = box.mark()
            alice.plugin["xep_0045"].set_subject(JID(room), "Plans for Friday")
            reflected = await box.expect(is_subject, "alice's subject reflected", since=mark)
            assert reflected["subject"] == "Plans for Friday" and sender(reflected) == f"{room}/Alice"
            for body in ("first", "second"):
                alice.send_message(mto=room, mbody=body, mtype="groupchat")
                await box.expect(groupchat_from(f"{room}/Alice", body), f"{body} reflected", since=mark)

            # bob: alice's presence, his own (110), the history with its delay, then the subject
            alice_mark = box.mark()
            joined = await join(bob, room, "Bob")
            assert [sender(p) for p in joined.occupants] == [f"{room}/Alice"]
            assert item(joined.occupants[0]).get("affiliation") == "owner"
            assert item(joined.occupants[0]).get("role") == "moderator"
            assert (item(joined.me).get("affiliation"), item(joined.me).get("role")) == (
                "none",
                "participant",
            )
            assert [m["body"] for m in joined.history] == ["first", "second"]
            for message in joined.history:
                assert sender(message) == f"{room}/Alice"
                delay = message.xml.find(f"{{{NS_DELAY}}}delay")
                assert delay is not None and delay.get("from") == room and delay.get("stamp")
            assert joined.subject["subject"] == "Plans for Friday"
            await box.expect(presence_from(f"{room}/Bob", unavailable=False), "alice sees bob", alice_mark)

            assert await join_refused(carol, room, "Bob") == ("cancel", "conflict")  # s7.2.9: nick taken

            # carol with slixmpp's own join (s7.2.13: at most one history message asked for)
            pres, subject, occupants, history = await carol.plugin["xep_0045"].join_muc_wait(
                JID(room), "Carol", maxstanzas=1, timeout=TIMEOUT
            )
            assert 110 in pres["muc"]["status_codes"]
            assert {f"{room}/Alice", f"{room}/Bob"} <= {str(p["from"]) for p in occupants}
            assert [m["body"] for m in history] == ["second"]
            assert subject["subject"] == "Plans for Friday"
            assert set(carol.plugin["xep_0045"].get_roster(JID(room))) == {"Alice", "Bob", "Carol"}
            for other in (alice, bob):
                await inbox(other).expect(presence_from(f"{room}/Carol", unavailable=False), "Carol seen")

            # a groupchat message reaches everyone, the sender too, from room/nick with its id (s7.4)
            marks = {c: inbox(c).mark() for c in (alice, bob, carol)}
            message = bob.make_message(mto=room, mbody="hello all", mtype="groupchat")
            message["id"] = "bob-hello-1"
            message.send()
            for c in (alice, bob, carol):
                got = await inbox(c).expect(groupchat_from(f"{room}/Bob", "hello all"), "hello", marks[c])
                assert got["id"] == "bob-hello-1"

            # a private message (s7.5): from room/Carol, to Bob only
            marks = {c: inbox(c).mark() for c in (alice, bob, carol)}
            carol.send_message(mto=f"{room}/Bob", mbody="psst", mtype="chat")
            pm = await inbox(bob).expect(
                lambda s: kind(s) == "message" and s["type"] == "chat" and s["body"] == "psst",
                "carol's private message",
                marks[bob],
            )
            assert sender(pm) == f"{room}/Carol"
            assert user_x(pm) is not None
            await round_trip(alice)
            assert not inbox(alice).find(lambda s: s["body"] == "psst", marks[alice])
            # to a nick that is not there: item-not-found
            carol.send_message(mto=f"{room}/Nobody", mbody="hello?", mtype="chat")
            bounced = await inbox(carol).expect(
                error_message_from(f"{room}/Nobody"), "PM bounce", marks[carol]
            )
            assert error_of(bounced) == ("cancel", "item-not-found")

            # XEP-0410: a self-ping to one's own occupant JID is answered by the service
            assert (await self_ping(carol, f"{room}/Carol"))["type"] == "result"

            # a nickname change (s7.6): unavailable with 303 and the new nick, then the new presence
            marks = {c: inbox(c).mark() for c in (alice, bob, carol)}
            bob.send_presence(pto=f"{room}/Robert")
            for c in (alice, carol, bob):
                box = inbox(c)
                gone = await box.expect(
                    presence_from(f"{room}/Bob", unavailable=True, code=303), "bob's 303", marks[c]
                )
                assert item(gone).get("nick") == "Robert"
                back = await box.expect(
                    presence_from(f"{room}/Robert", unavailable=False), "Robert", marks[c]
                )
                assert box.stanzas.index(gone, marks[c]) < box.stanzas.index(back, marks[c])
                assert (110 in codes(gone), 110 in codes(back)) == (
                    (True, True) if c is bob else (False, False)
                )
            mark = inbox(carol).mark()
            bob.send_message(mto=room, mbody="call me Robert", mtype="groupchat")
            await inbox(carol).expect(groupchat_from(f"{room}/Robert", "call me Robert"), "as Robert", mark)

            # leaving (s7.14): the others see carol go; she is no occupant any more
            marks = {c: inbox(c).mark() for c in (alice, bob, carol)}
            await leave(carol, room, "Carol")
            for c in (alice, bob):
                await inbox(c).expect(
                    presence_from(f"{room}/Carol", unavailable=True), "carol left", marks[c]
                )
            carol.send_message(mto=room, mbody="still here?", mtype="groupchat")
            refused = await inbox(carol).expect(
                error_message_from(room), "non-occupant refused", marks[carol]
            )
            assert error_of(refused) == ("cancel", "not-acceptable")
            assert await iq_error(self_ping(carol, f"{room}/Carol")) == ("cancel", "not-acceptable")
            assert not inbox(alice).find(groupchat_from(f"{room}/Carol"), marks[alice])

    run(main(), timeout=90)


# -- 2. moderation: kick, ban, voice in a moderated room -------------------------------------------------


def test_kick_ban_and_voice_in_a_moderated_room(server):
    async def main():
        async with Clients(server) as clients:
            alice, bob, carol, dave = await logins(clients, "alice", "bob", "carol", "dave")
            muc = alice.plugin["xep_0045"]
            room, _ = await create(alice, "moderation", "Alice")
            for client, nick in ((bob, "Bob"), (carol, "Carol"), (dave, "Dave")):
                await join(client, room, nick)

            # a participant may not kick (s8.2: only moderators)
            assert await iq_error(
                bob.plugin["xep_0045"].set_role(JID(room), "Dave", "none", timeout=TIMEOUT)
            ) == ("auth", "forbidden")

            # kick (s8.2): 307 to the kicked occupant (with 110) and to everyone else
            marks = {c: inbox(c).mark() for c in (bob, dave)}
            await muc.set_role(JID(room), "Dave", "none", reason="Be nice", timeout=TIMEOUT)
            kicked = await inbox(dave).expect(
                presence_from(f"{room}/Dave", unavailable=True, code=307), "dave kicked", marks[dave]
            )
            assert 110 in codes(kicked)
            assert item(kicked).get("role") == "none"
            assert item(kicked).findtext(f"{{{NS_USER}}}reason") == "Be nice"
            seen = await inbox(bob).expect(
                presence_from(f"{room}/Dave", unavailable=True, code=307), "bob sees the kick", marks[bob]
            )
            assert 110 not in codes(seen)
            mark = inbox(dave).mark()
            dave.send_message(mto=room, mbody="am I in?", mtype="groupchat")
            assert error_of(
                await inbox(dave).expect(error_message_from(room), "kicked: no occupant", mark)
            ) == ("cancel", "not-acceptable")

            # ban (s9.1): 301 to all, the outcast cannot come back (s7.2.7)
            marks = {c: inbox(c).mark() for c in (bob, carol)}
            await muc.set_affiliation(
                JID(room), "outcast", jid="carol@localhost", reason="Spam", timeout=TIMEOUT
            )
            banned = await inbox(carol).expect(
                presence_from(f"{room}/Carol", unavailable=True, code=301), "carol banned", marks[carol]
            )
            assert item(banned).get("affiliation") == "outcast"
            await inbox(bob).expect(
                presence_from(f"{room}/Carol", unavailable=True, code=301), "bob sees the ban", marks[bob]
            )
            assert await join_refused(carol, room, "Carol") == ("auth", "forbidden")
            outcasts = await muc.get_affiliation_list(JID(room), "outcast", timeout=TIMEOUT)
            assert [JID(j).bare for j in outcasts] == ["carol@localhost"]

            # moderated room: config change notice 104 (s10.2); a newcomer is a visitor (s5.1.1)
            mark = inbox(bob).mark()
            await configure(alice, room, {"muc#roomconfig_moderatedroom": True})
            notice = await inbox(bob).expect(
                lambda s: kind(s) == "message" and sender(s) == room and 104 in codes(s), "104", mark
            )
            assert notice["type"] == "groupchat"
            joined = await join(dave, room, "Dave")
            assert item(joined.me).get("role") == "visitor"
            marks = {c: inbox(c).mark() for c in (alice, dave)}
            dave.send_message(mto=room, mbody="may I?", mtype="groupchat")
            refused = await inbox(dave).expect(error_message_from(room), "visitor refused", marks[dave])
            assert error_of(refused) == ("auth", "forbidden")  # s7.4
            await round_trip(alice)
            assert not inbox(alice).find(groupchat_from(f"{room}/Dave"), marks[alice])

            # voice (s8.3): the new role is broadcast, then dave can speak
            marks = {c: inbox(c).mark() for c in (alice, bob, dave)}
            await muc.set_role(JID(room), "Dave", "participant", timeout=TIMEOUT)
            for c in (bob, dave):
                voiced = await inbox(c).expect(
                    presence_from(f"{room}/Dave", unavailable=False), "voice", marks[c]
                )
                assert item(voiced).get("role") == "participant"
            dave.send_message(mto=room, mbody="thanks for the voice", mtype="groupchat")
            for c in (alice, bob, dave):
                await inbox(c).expect(
                    groupchat_from(f"{room}/Dave", "thanks for the voice"), "voiced", marks[c]
                )
            assert "Dave" in await muc.get_roles_list(JID(room), "participant", timeout=TIMEOUT)

            # revoke voice (s8.4): visitor again, silenced again
            marks = {c: inbox(c).mark() for c in (bob, dave)}
            await muc.set_role(JID(room), "Dave", "visitor", timeout=TIMEOUT)
            revoked = await inbox(bob).expect(
                presence_from(f"{room}/Dave", unavailable=False), "revoke", marks[bob]
            )
            assert item(revoked).get("role") == "visitor"
            dave.send_message(mto=room, mbody="and now?", mtype="groupchat")
            refused = await inbox(dave).expect(error_message_from(room), "silenced again", marks[dave])
            assert error_of(refused) == ("auth", "forbidden")

    run(main(), timeout=90)


# -- 3. members-only and password-protected rooms -------------------------------------------------------


def test_members_only_and_password_protected_rooms(server):
    async def main():
        async with Clients(server) as clients:
            alice, bob, carol = await logins(clients, "alice", "bob", "carol")
            muc = alice.plugin["xep_0045"]

            club, _ = await create(alice, "club", "Alice", {"muc#roomconfig_membersonly": True})
            assert await join_refused(bob, club, "Bob") == ("auth", "registration-required")  # s7.2.6
            await muc.set_affiliation(JID(club), "member", jid="bob@localhost", timeout=TIMEOUT)
            assert [
                JID(j).bare for j in await muc.get_affiliation_list(JID(club), "member", timeout=TIMEOUT)
            ] == ["bob@localhost"]
            joined = await join(bob, club, "Bob")
            assert item(joined.me).get("affiliation") == "member"
            # s9.5: several items in one request
            await muc.send_affiliation_list(
                JID(club), [("dave@localhost", "member"), ("eve@localhost", "member")], timeout=TIMEOUT
            )
            members = await muc.get_affiliation_list(JID(club), "member", timeout=TIMEOUT)
            assert sorted(JID(j).bare for j in members) == [
                "bob@localhost",
                "dave@localhost",
                "eve@localhost",
            ]
            assert "muc_membersonly" in features_of(await disco_info(carol, club))
            # s10.2: only owners get the configuration form
            assert await iq_error(bob.plugin["xep_0045"].get_room_config(JID(club), timeout=TIMEOUT)) == (
                "auth",
                "forbidden",
            )

            vault, _ = await create(
                alice,
                "vault",
                "Alice",
                {"muc#roomconfig_passwordprotectedroom": True, "muc#roomconfig_roomsecret": "s3cret"},
            )
            assert "muc_passwordprotected" in features_of(await disco_info(carol, vault))
            assert await join_refused(carol, vault, "Carol") == ("auth", "not-authorized")  # s7.2.5
            assert await join_refused(carol, vault, "Carol", password="guess") == ("auth", "not-authorized")
            joined = await join(carol, vault, "Carol", password="s3cret")
            assert 110 in codes(joined.me)

    run(main(), timeout=60)


# -- 4. destruction ------------------------------------------------------------------------------------


def test_destroyed_room_tells_its_occupants_where_to_go(server):
    async def main():
        async with Clients(server) as clients:
            alice, bob, carol = await logins(clients, "alice", "bob", "carol")
            room, _ = await create(alice, "doomed", "Alice")
            await join(bob, room, "Bob")
            await join(carol, room, "Carol")

            assert await iq_error(bob.plugin["xep_0045"].destroy(JID(room), "mine now", timeout=TIMEOUT)) == (
                "auth",
                "forbidden",
            )  # s10.9: owners only

            venue = room_jid("phoenix")
            marks = {c: inbox(c).mark() for c in (alice, bob, carol)}
            await alice.plugin["xep_0045"].destroy(JID(room), "Moving on", venue, timeout=TIMEOUT)
            for c, nick in ((alice, "Alice"), (bob, "Bob"), (carol, "Carol")):
                gone = await inbox(c).expect(
                    presence_from(f"{room}/{nick}", unavailable=True), f"{nick}'s destroy notice", marks[c]
                )
                destroy = user_x(gone).find(f"{{{NS_USER}}}destroy")
                assert destroy is not None, f"no <destroy/> in {gone}"
                assert destroy.get("jid") == venue
                assert destroy.findtext(f"{{{NS_USER}}}reason") == "Moving on"
                assert item(gone).get("role") == "none"
            assert await iq_error(disco_info(bob, room)) == ("cancel", "item-not-found")

    run(main(), timeout=60)


# -- 5. invitations ------------------------------------------------------------------------------------


def test_mediated_and_direct_invitations(server):
    async def main():
        async with Clients(server) as clients:
            alice, bob, carol, dave = await logins(clients, "alice", "bob", "carol", "dave")
            room, _ = await create(alice, "party", "Alice")

            # mediated (s7.8.2): the invitee hears it from the room, with the inviter's JID
            mark = inbox(bob).mark()
            alice.plugin["xep_0045"].invite(JID(room), "bob@localhost", "Cake at five")
            invitation = await inbox(bob).expect(
                carrying("invite"),
                "bob's invitation",
                mark,
            )
            assert sender(invitation) == room
            invite = user_x(invitation).find(f"{{{NS_USER}}}invite")
            # s7.8.2: the inviter's bare JID, full JID or occupant JID
            assert invite.get("from") in ("alice@localhost", "alice@localhost/pc", f"{room}/Alice")
            assert invite.findtext(f"{{{NS_USER}}}reason") == "Cake at five"

            # decline (s7.8.3): forwarded to the inviter from the room
            mark = inbox(alice).mark()
            bob.plugin["xep_0045"].decline(JID(room), "alice@localhost/pc", "Diet")
            declined = await inbox(alice).expect(
                carrying("decline"),
                "bob's decline",
                mark,
            )
            assert sender(declined) == room
            decline = user_x(declined).find(f"{{{NS_USER}}}decline")
            assert JID(decline.get("from")).bare == "bob@localhost"
            assert decline.findtext(f"{{{NS_USER}}}reason") == "Diet"

            # direct (XEP-0249): passes from client to client untouched
            mark = inbox(carol).mark()
            alice.plugin["xep_0249"].send_invitation(JID("carol@localhost/pc"), JID(room), reason="Join us")
            direct = await inbox(carol).expect(
                lambda s: kind(s) == "message" and s.xml.find(f"{{{NS_CONFERENCE}}}x") is not None,
                "carol's direct invitation",
                mark,
            )
            assert sender(direct) == "alice@localhost/pc"
            x = direct.xml.find(f"{{{NS_CONFERENCE}}}x")
            assert (x.get("jid"), x.get("reason")) == (room, "Join us")
            await join(carol, x.get("jid"), "Carol")

            # in a members-only room an owner's invitation makes the invitee a member (s7.8.2)
            secret, _ = await create(alice, "secret-party", "Alice", {"muc#roomconfig_membersonly": True})
            assert await join_refused(dave, secret, "Dave") == ("auth", "registration-required")
            mark = inbox(dave).mark()
            alice.plugin["xep_0045"].invite(JID(secret), "dave@localhost")
            await inbox(dave).expect(
                lambda s: carrying("invite")(s) and sender(s) == secret, "dave's invitation", mark
            )
            joined = await join(dave, secret, "Dave")
            assert item(joined.me).get("affiliation") == "member"

    run(main(), timeout=60)


# -- 7. service discovery ------------------------------------------------------------------------------


def test_service_and_rooms_in_service_discovery(server):
    async def main():
        async with Clients(server) as clients:
            alice, bob = await logins(clients, "alice", "bob")

            assert SERVICE in await disco_items(bob, "localhost")
            service = await disco_info(bob, SERVICE)
            assert ("conference", "text") in {(c, t) for c, t, _ in identities_of(service)}
            assert NS_MUC in features_of(service)

            square, _ = await create(
                alice,
                "townsquare",
                "Alice",
                {"muc#roomconfig_roomname": "Town Square", "muc#roomconfig_roomdesc": "Everyone welcome"},
            )
            back, _ = await create(alice, "backroom", "Alice", {"muc#roomconfig_publicroom": False})
            locked = room_jid("unfinished")
            await join(alice, locked, "Alice", subject=False)  # created, not configured: locked

            rooms = await disco_items(bob, SERVICE)
            assert rooms.get(square) == "Town Square"
            assert back not in rooms, "a hidden room is not listed (s6.3)"
            assert locked not in rooms, "a locked room is not listed"

            info = await disco_info(bob, square)
            assert ("conference", "text", "Town Square") in identities_of(info)
            assert {
                NS_MUC,
                "muc_public",
                "muc_temporary",
                "muc_open",
                "muc_unmoderated",
                "muc_unsecured",
            } <= features_of(info)
            assert {"muc_nonanonymous", "muc_semianonymous"} & features_of(info)
            extended = roominfo(info)
            assert extended.get("muc#roominfo_description") == ["Everyone welcome"]
            assert extended.get("muc#roominfo_occupants") == ["1"]

            hidden = features_of(await disco_info(bob, back))
            assert "muc_hidden" in hidden and "muc_public" not in hidden
            assert await iq_error(disco_info(bob, room_jid("nowhere"))) == ("cancel", "item-not-found")

    run(main(), timeout=60)


# -- 6. persistence across a restart -------------------------------------------------------------------


async def wait_stored(proc: ServerProcess, text: str, timeout: float = 5) -> bool:
    """Wait (a little) until ``text`` appears in a stored value: the server answers the owner before its
    write is done. A clean stop finishes writes in flight anyway; this only narrows the window."""
    path = proc.data_dir / "xmppd.sqlite"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
                rows = db.execute("SELECT value FROM keyval WHERE value LIKE ?", (f"%{text}%",)).fetchall()
            if rows:
                return True
        except sqlite3.Error:
            pass
        await asyncio.sleep(0.05)
    return False


def test_persistent_room_survives_a_restart_and_a_temporary_one_does_not(xmpp_process):
    proc = xmpp_process(config=CONFIG, users=USERS)
    archive, ephemeral = room_jid("archive"), room_jid("ephemeral")

    async def before():
        async with Clients(proc) as clients:
            alice, bob = await logins(clients, "alice", "bob")
            muc = alice.plugin["xep_0045"]
            await create(
                alice,
                "archive",
                "Alice",
                {
                    "muc#roomconfig_roomname": "The Archive",
                    "muc#roomconfig_roomdesc": "Old stuff",
                    "muc#roomconfig_persistentroom": True,
                    "muc#roomconfig_membersonly": True,
                },
            )
            for jid, affiliation in (
                ("bob@localhost", "member"),
                ("carol@localhost", "admin"),
                ("dave@localhost", "outcast"),
            ):
                await muc.set_affiliation(JID(archive), affiliation, jid=jid, timeout=TIMEOUT)
            mark = inbox(alice).mark()
            muc.set_subject(JID(archive), "Catalogue")
            await inbox(alice).expect(is_subject, "subject reflected", mark)
            await leave(alice, archive, "Alice")
            # persistent: still there with nobody in it
            assert "muc_persistent" in features_of(await disco_info(bob, archive))

            await create(alice, "ephemeral", "Alice", {"muc#roomconfig_roomname": "Here today"})
            await join(bob, ephemeral, "Bob")
            await wait_stored(proc, "Catalogue")
            await wait_stored(proc, "dave@localhost")

            marks = {c: inbox(c).mark() for c in (alice, bob)}
            await asyncio.to_thread(proc.stop)  # alice and bob are still in 'ephemeral'
            await within(asyncio.gather(alice.ended.wait(), bob.ended.wait()))
            for c, nick in ((alice, "Alice"), (bob, "Bob")):
                assert inbox(c).find(
                    presence_from(f"{ephemeral}/{nick}", unavailable=True, code=332), marks[c]
                ), f"{nick}: no 332 on shutdown"

    async def after():
        async with Clients(proc) as clients:
            alice, bob, dave, eve = await logins(clients, "alice", "bob", "dave", "eve")
            muc = alice.plugin["xep_0045"]

            assert await iq_error(disco_info(bob, ephemeral)) == ("cancel", "item-not-found")
            info = await disco_info(eve, archive)
            assert ("conference", "text", "The Archive") in identities_of(info)
            assert {"muc_persistent", "muc_membersonly"} <= features_of(info)
            assert roominfo(info).get("muc#roominfo_description") == ["Old stuff"]

            form = (await muc.get_room_config(JID(archive), timeout=TIMEOUT)).get_fields()
            assert form["muc#roomconfig_roomname"]["value"] == "The Archive"
            assert form["muc#roomconfig_roomdesc"]["value"] == "Old stuff"
            assert form["muc#roomconfig_persistentroom"]["value"] is True
            assert form["muc#roomconfig_membersonly"]["value"] is True

            async def bare(affiliation: str) -> list[str]:
                jids = await muc.get_affiliation_list(JID(archive), affiliation, timeout=TIMEOUT)
                return sorted(JID(j).bare for j in jids)

            assert await bare("owner") == ["alice@localhost"]
            assert await bare("admin") == ["carol@localhost"]
            assert await bare("member") == ["bob@localhost"]
            assert await bare("outcast") == ["dave@localhost"]

            assert await join_refused(eve, archive, "Eve") == ("auth", "registration-required")
            # an outcast of a members-only room: banned (s7.2.7) or not a member (s7.2.6), refused either way
            assert await join_refused(dave, archive, "Dave") in {
                ("auth", "forbidden"),
                ("auth", "registration-required"),
            }
            joined = await join(bob, archive, "Bob")
            assert 201 not in codes(joined.me), "an existing room, not a new one"
            assert item(joined.me).get("affiliation") == "member"
            assert joined.subject["subject"] == "Catalogue"

    run(before(), timeout=60)
    proc.start()  # same data directory, another port: Clients asks proc.port() again
    run(after(), timeout=60)
