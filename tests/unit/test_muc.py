"""Multi-User Chat (plugins/muc, XEP-0045 1.34) on a memory server, occupant side: service discovery (s6),
room creation and locking (s10.1), entering a room and its order of events (s7.1, s7.2), discussion history
(s7.2.14, s7.2.15), messages (s7.4, s7.5), nicknames (s7.2.9, s7.6), exits (s7.14), invitations (s7.8),
the subject (s8.1), and bad input that must leave the room working for everyone else.

Moderator, admin and owner use cases (s8 - s10), room types, limits, registration, self-ping and persistence
are in test_muc_admin.py, which reuses the helpers below.
"""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from typing import Any

import pytest
from lxml import etree

from xmppd.xml.stanza import error_condition

SERVICE = "conference.localhost"
NS_MUC = "http://jabber.org/protocol/muc"
NS_USER = f"{NS_MUC}#user"
NS_ADMIN = f"{NS_MUC}#admin"
NS_OWNER = f"{NS_MUC}#owner"
NS_ROOMCONFIG = f"{NS_MUC}#roomconfig"
NS_ROOMINFO = f"{NS_MUC}#roominfo"
NS_DATA = "jabber:x:data"
NS_DELAY = "urn:xmpp:delay"
NS_INFO = "http://jabber.org/protocol/disco#info"
NS_ITEMS = "http://jabber.org/protocol/disco#items"
NS_REGISTER = "jabber:iq:register"
NS_PING = "urn:xmpp:ping"
NS_VCARD = "vcard-temp"
NS_CONFERENCE = "jabber:x:conference"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
# s6.3: one disco#info feature of each room-type pair, for the default room (public, temporary, open,
# unmoderated, semi-anonymous, unsecured) and for its opposite.
DEFAULT_ROOM_TYPE_FEATURES = frozenset(
    ("muc_public", "muc_temporary", "muc_open", "muc_unmoderated", "muc_semianonymous", "muc_unsecured")
)
OPPOSITE_ROOM_TYPE_FEATURES = frozenset(
    (
        "muc_hidden",
        "muc_persistent",
        "muc_membersonly",
        "muc_moderated",
        "muc_nonanonymous",
        "muc_passwordprotected",
    )
)


# -- helpers (test_muc_admin.py imports these; the fixtures server and muc_server are in conftest.py) ------


def jid(room: str, nick: str | None = None) -> str:
    return f"{room}@{SERVICE}" + (f"/{nick}" if nick is not None else "")


def show(el: etree._Element | list) -> str:
    if isinstance(el, list):
        return "\n".join(show(e) for e in el) or "(nothing)"
    return etree.tostring(el).decode()


def online(server: Any, full: str) -> Any:
    """Logged in and available, with the presence echoes on the account's other clients read."""
    client = server.login(full, available=True)
    for other in server.clients:
        if other.jid and other.jid.split("/")[0] == full.split("/")[0]:
            other.drain()
    return client


def x_user(el: etree._Element) -> etree._Element | None:
    return el.find(f"{{{NS_USER}}}x")


def codes(el: etree._Element) -> set[int]:
    """The muc#user status codes of a stanza."""
    x = x_user(el)
    return set() if x is None else {int(s.get("code")) for s in x.findall(f"{{{NS_USER}}}status")}


def item(el: etree._Element) -> dict[str, str]:
    """The attributes of the muc#user <item/> of a presence ({} if none)."""
    x = x_user(el)
    found = None if x is None else x.find(f"{{{NS_USER}}}item")
    return {} if found is None else dict(found.attrib)


def is_presence(el: etree._Element, from_: str | None = None, type_: str | None = "available") -> bool:
    return (
        el.tag == "presence"
        and (from_ is None or el.get("from") == from_)
        and (type_ is None or el.get("type", "available") == type_)
    )


def presences(got: list, from_: str | None = None, type_: str | None = None) -> list[etree._Element]:
    return [el for el in got if is_presence(el, from_, type_)]


def groupchats(got: list) -> list[etree._Element]:
    return [el for el in got if el.tag == "message" and el.get("type") == "groupchat"]


def bodies(got: list) -> list[str]:
    return [el.findtext("body") for el in got if el.tag == "message" and el.findtext("body") is not None]


def error_type(el: etree._Element) -> str | None:
    error = el.find("error")
    return None if error is None else error.get("type")


def assert_error(el: etree._Element, condition: str, type_: str | None = None) -> None:
    assert el.get("type") == "error", show(el)
    assert error_condition(el) == condition, show(el)
    if type_ is not None:
        assert error_type(el) == type_, show(el)


def the_error(got: list, kind: str | None = None) -> etree._Element:
    """The one error stanza among ``got``."""
    errors = [el for el in got if el.get("type") == "error" and (kind is None or el.tag == kind)]
    assert len(errors) == 1, show(got)
    return errors[0]


def join(
    client: Any,
    room: str,
    nick: str,
    *,
    password: str | None = None,
    history: dict[str, Any] | None = None,
    plain: bool = False,
    extra: str = "",
) -> list[etree._Element]:
    """Send the join presence (s7.2.2; ``plain``: groupchat 1.0, s7.2.1) and return all that came back."""
    inner = "" if password is None else f"<password>{password}</password>"
    if history is not None:
        inner += "<history " + " ".join(f"{k}='{v}'" for k, v in history.items()) + "/>"
    x = "" if plain else f"<x xmlns='{NS_MUC}'>{inner}</x>"
    client.send(f"<presence to='{jid(room, nick)}'>{x}{extra}</presence>")
    return client.drain()


def own_presence(got: list, room: str, nick: str) -> etree._Element:
    """The joiner's own presence (from room/nick with status 110, s7.2.3) among ``got``."""
    own = [el for el in presences(got, jid(room, nick), "available") if 110 in codes(el)]
    assert len(own) == 1, f"no own presence (110) from {jid(room, nick)} in:\n{show(got)}"
    return own[0]


def enter(client: Any, room: str, nick: str, **kwargs: Any) -> list[etree._Element]:
    """Join an existing room, asserting success; returns what came back."""
    got = join(client, room, nick, **kwargs)
    own_presence(got, room, nick)
    return got


_ids = itertools.count(1)


def iq(client: Any, type_: str, to: str, payload: str) -> tuple[etree._Element, list[etree._Element]]:
    """Send an iq; returns (its answer, everything else that came back meanwhile)."""
    id_ = f"q{next(_ids)}"
    client.send(f"<iq type='{type_}' id='{id_}' to='{to}'>{payload}</iq>")
    got = client.drain()
    answers = [
        el for el in got if el.tag == "iq" and el.get("id") == id_ and el.get("type") in ("result", "error")
    ]
    assert len(answers) == 1, f"no single answer to iq {id_}:\n{show(got)}"
    return answers[0], [el for el in got if el is not answers[0]]


def value_xml(value: Any) -> str:
    if isinstance(value, bool):
        return f"<value>{int(value)}</value>"
    if isinstance(value, (list, tuple)):
        return "".join(f"<value>{v}</value>" for v in value)
    return f"<value>{value}</value>"


def data_form(fields: dict[str, Any], form_type: str | None = NS_ROOMCONFIG, type_: str = "submit") -> str:
    """A XEP-0004 form; no fields and no FORM_TYPE gives the empty submit form of an instant room."""
    all_fields = ({"FORM_TYPE": form_type} if form_type else {}) | fields
    if not all_fields:
        return f"<x xmlns='{NS_DATA}' type='{type_}'/>"
    inner = "".join(f"<field var='{var}'>{value_xml(v)}</field>" for var, v in all_fields.items())
    return f"<x xmlns='{NS_DATA}' type='{type_}'>{inner}</x>"


def configure(client: Any, room: str, fields: dict[str, Any] | None = None) -> tuple[etree._Element, list]:
    """Submit the room configuration form (s10.1.3, s10.2); an empty form when ``fields`` is None
    (instant room, s10.1.2). Field names are given without the muc#roomconfig_ prefix."""
    if fields is None:
        form = data_form({}, None)
    else:
        form = data_form({(k if "#" in k else f"muc#roomconfig_{k}"): v for k, v in fields.items()})
    return iq(client, "set", jid(room), f"<query xmlns='{NS_OWNER}'>{form}</query>")


def create(client: Any, room: str, nick: str, config: dict[str, Any] | None = None) -> None:
    """Create a room (s10.1.1) and unlock it: an instant room (s10.1.2) or the given configuration
    (s10.1.3). Everything the owner received is read."""
    got = join(client, room, nick)
    own = own_presence(got, room, nick)
    assert 201 in codes(own), show(own)
    answer, _ = configure(client, room, config)
    assert answer.get("type") == "result", show(answer)
    client.drain()


def groupchat(client: Any, room: str, body: str, id_: str | None = None, extra: str = "") -> None:
    id_attr = f" id='{id_}'" if id_ else ""
    client.send(f"<message type='groupchat' to='{jid(room)}'{id_attr}><body>{body}</body>{extra}</message>")


def set_subject(client: Any, room: str, subject: str) -> None:
    """Send a subject change to the room (s8.1)."""
    client.send(f"<message type='groupchat' to='{jid(room)}'><subject>{subject}</subject></message>")


def invite(client: Any, room: str, to: str, reason: str | None = None) -> None:
    """Send a mediated invitation of ``to`` through the room (s7.8.2)."""
    inner = "" if reason is None else f"<reason>{reason}</reason>"
    client.send(
        f"<message to='{jid(room)}'><x xmlns='{NS_USER}'><invite to='{to}'>{inner}</invite></x></message>"
    )


def leave(client: Any, room: str, nick: str) -> list[etree._Element]:
    client.send(f"<presence type='unavailable' to='{jid(room, nick)}'/>")
    return client.drain()


def drain_all(*clients: Any) -> None:
    for c in clients:
        c.drain()


def room_with(server: Any, *others: str, config: dict[str, Any] | None = None) -> list[Any]:
    """alice (owner, nick Alice, alice@localhost/phone) in room 'room' created with ``config``, then the given
    users (bob, carol, ...) entered as <name>@localhost/<initial> with capitalised nicks; all inboxes read.
    Returns [alice, *others]."""
    alice = online(server, "alice@localhost/phone")
    create(alice, "room", "Alice", config)
    clients = [alice]
    for name in others:
        client = online(server, f"{name}@localhost/{name[0]}")
        enter(client, "room", name.capitalize())
        clients.append(client)
    drain_all(*clients)
    return clients


def disco_info(client: Any, to: str, node: str | None = None) -> etree._Element:
    node_attr = f" node='{node}'" if node else ""
    answer, _ = iq(client, "get", to, f"<query xmlns='{NS_INFO}'{node_attr}/>")
    return answer


def room_identity(name: str) -> dict[str, str]:
    """The disco#info identity of a room called ``name`` (s6.3)."""
    return {"category": "conference", "type": "text", "name": name}


def features(answer: etree._Element) -> set[str]:
    return {f.get("var") for f in answer.iter(f"{{{NS_INFO}}}feature")}


def identities(answer: etree._Element) -> list[dict[str, str]]:
    return [dict(i.attrib) for i in answer.iter(f"{{{NS_INFO}}}identity")]


def form_values(form: etree._Element) -> dict[str, list[str]]:
    return {
        f.get("var"): [v.text or "" for v in f.findall(f"{{{NS_DATA}}}value")]
        for f in form.findall(f"{{{NS_DATA}}}field")
    }


def forms(answer: etree._Element) -> dict[str, dict[str, list[str]]]:
    """The data forms of a stanza by FORM_TYPE: {form_type: {var: [values]}}."""
    result = {}
    for form in answer.iter(f"{{{NS_DATA}}}x"):
        values = form_values(form)
        result[(values.get("FORM_TYPE") or [""])[0]] = values
    return result


def room_exists(client: Any, room: str) -> bool:
    answer = disco_info(client, jid(room))
    if answer.get("type") == "error":
        assert error_condition(answer) == "item-not-found", show(answer)
        return False
    return True


def chat_works(sender: Any, room: str, nick: str, *receivers: Any, body: str = "still here") -> None:
    """A groupchat message from ``sender`` (occupant ``nick``) reaches the sender and every receiver."""
    drain_all(sender, *receivers)
    groupchat(sender, room, body)
    for client in (sender, *receivers):
        got = groupchats(client.drain())
        assert [(m.get("from"), m.findtext("body")) for m in got] == [(jid(room, nick), body)], show(got)


# -- service discovery (s6) ------------------------------------------------------------------------------


def test_service_is_an_item_of_the_server(server):
    """s6.1: the MUC service is found among the server's disco#items."""
    alice = online(server, "alice@localhost/phone")
    answer, _ = iq(alice, "get", "localhost", f"<query xmlns='{NS_ITEMS}'/>")
    assert SERVICE in {i.get("jid") for i in answer.iter(f"{{{NS_ITEMS}}}item")}, show(answer)


def test_service_info_has_conference_identity_and_muc_feature(server):
    """s6.1: the service's disco#info has identity conference/text and the muc feature."""
    alice = online(server, "alice@localhost/phone")
    answer = disco_info(alice, SERVICE)
    assert answer.get("type") == "result", show(answer)
    assert any(i.get("category") == "conference" and i.get("type") == "text" for i in identities(answer))
    assert NS_MUC in features(answer)


def test_room_list_has_public_rooms_only(server):
    """s6.2: the service lists public rooms with their names, not hidden ones; a locked room that is not
    configured yet (s10.1.1) is not listed either."""
    alice = online(server, "alice@localhost/phone")
    create(alice, "open", "Alice", {"roomname": "The Open Room", "publicroom": True})
    create(alice, "secret", "Alice", {"publicroom": False})
    join(alice, "locked", "Alice")  # created, never configured
    answer, _ = iq(alice, "get", SERVICE, f"<query xmlns='{NS_ITEMS}'/>")
    assert answer.get("type") == "result", show(answer)
    listed = {i.get("jid"): i.get("name") for i in answer.iter(f"{{{NS_ITEMS}}}item")}
    assert listed == {jid("open"): "The Open Room"}, show(answer)


def test_room_info_features_and_roominfo_form(server):
    """s6.3 (and XEP-0128): identity conference/text with the room name, the muc feature, one feature of each
    room-type pair, and a muc#roominfo form with description, occupant count and subject."""
    alice, bob = room_with(
        server, "bob", config={"roomname": "Coven", "roomdesc": "Witches only", "whois": "moderators"}
    )
    set_subject(alice, "room", "Fire burn")
    answer = disco_info(bob, jid("room"))
    assert answer.get("type") == "result", show(answer)
    assert room_identity("Coven") in identities(answer), show(answer)
    assert {NS_MUC} | DEFAULT_ROOM_TYPE_FEATURES <= features(answer), show(answer)
    assert not OPPOSITE_ROOM_TYPE_FEATURES & features(answer), show(answer)
    info = forms(answer).get(NS_ROOMINFO)
    assert info is not None, show(answer)
    assert info.get("muc#roominfo_description") == ["Witches only"], info
    assert info.get("muc#roominfo_occupants") == ["2"], info
    assert info.get("muc#roominfo_subject") == ["Fire burn"], info


def test_room_info_features_of_the_opposite_room_types(server):
    """s6.3: hidden, persistent, members-only, moderated, non-anonymous and password-protected rooms say
    so."""
    (alice,) = room_with(
        server,
        config={
            "publicroom": False,
            "persistentroom": True,
            "membersonly": True,
            "moderatedroom": True,
            "whois": "anyone",
            "passwordprotectedroom": True,
            "roomsecret": "cauldron",
        },
    )
    answer = disco_info(alice, jid("room"))
    assert OPPOSITE_ROOM_TYPE_FEATURES <= features(answer), show(answer)
    assert not DEFAULT_ROOM_TYPE_FEATURES & features(answer), show(answer)


def test_info_of_a_room_that_does_not_exist(server):
    """s6.3 / RFC 6120 s8.3.3.6: disco#info of a nonexistent room is <item-not-found/> (cancel)."""
    alice = online(server, "alice@localhost/phone")
    answer = disco_info(alice, jid("nowhere"))
    assert_error(answer, "item-not-found", "cancel")


# -- creating a room (s10.1) -----------------------------------------------------------------------------


def test_creator_becomes_owner_and_moderator_with_201(server):
    """s10.1.1: the creator enters as owner and moderator; its presence carries 110 and 201 (s7.2.3)."""
    alice = online(server, "alice@localhost/phone")
    got = join(alice, "room", "Alice")
    own = own_presence(got, "room", "Alice")
    assert {110, 201} <= codes(own), show(own)
    assert item(own).get("affiliation") == "owner" and item(own).get("role") == "moderator", show(own)
    assert own.get("to") == "alice@localhost/phone"


def test_new_room_is_locked_until_configured(server):
    """s7.2.11, s10.1.1: until the owner configures it, others get <item-not-found/> (cancel); an empty
    submit form makes it an instant room (s10.1.2) that others can enter."""
    alice = online(server, "alice@localhost/phone")
    bob = online(server, "bob@localhost/pda")
    join(alice, "room", "Alice")
    refused = the_error(join(bob, "room", "Bob"), "presence")
    assert_error(refused, "item-not-found", "cancel")
    assert refused.get("from") == jid("room", "Bob")
    assert alice.drain() == [], "a refused joiner is not announced"
    answer, _ = configure(alice, "room")  # instant room
    assert answer.get("type") == "result", show(answer)
    got = enter(bob, "room", "Bob")
    assert 201 not in codes(own_presence(got, "room", "Bob"))


def test_reserved_room_configuration_form(server):
    """s10.1.3: the owner of a new room gets the muc#roomconfig form with the standard fields; submitting it
    unlocks the room with that configuration."""
    alice = online(server, "alice@localhost/phone")
    join(alice, "room", "Alice")
    answer, _ = iq(alice, "get", jid("room"), f"<query xmlns='{NS_OWNER}'/>")
    assert answer.get("type") == "result", show(answer)
    form = answer.find(f"{{{NS_OWNER}}}query/{{{NS_DATA}}}x")
    assert form is not None and form.get("type") == "form", show(answer)
    fields = form_values(form)
    assert fields["FORM_TYPE"] == [NS_ROOMCONFIG]
    for name in (
        "roomname",
        "roomdesc",
        "changesubject",
        "allowinvites",
        "maxusers",
        "publicroom",
        "persistentroom",
        "moderatedroom",
        "membersonly",
        "passwordprotectedroom",
        "roomsecret",
        "whois",
        "roomadmins",
        "roomowners",
    ):
        assert f"muc#roomconfig_{name}" in fields, (name, sorted(fields))
    answer, _ = configure(alice, "room", {"roomname": "Heath"})
    assert answer.get("type") == "result", show(answer)
    bob = online(server, "bob@localhost/pda")
    enter(bob, "room", "Bob")
    assert room_identity("Heath") in identities(disco_info(bob, jid("room")))


def test_cancelling_the_initial_configuration_destroys_the_room(server):
    """s10.1.3: if the owner cancels the initial configuration the room is destroyed and the owner gets
    unavailable presence."""
    alice = online(server, "alice@localhost/phone")
    join(alice, "room", "Alice")
    answer, others = iq(
        alice, "set", jid("room"), f"<query xmlns='{NS_OWNER}'><x xmlns='{NS_DATA}' type='cancel'/></query>"
    )
    assert answer.get("type") == "result", show(answer)
    assert presences(others, jid("room", "Alice"), "unavailable"), show(others)
    assert not room_exists(alice, "room")
    # The name is free again: the next join creates a new room.
    got = join(alice, "room", "Alice")
    assert 201 in codes(own_presence(got, "room", "Alice"))


def test_groupchat_1_0_join_creates_an_unlocked_room(server):
    """s7.2.1, s10.1.1: a creation request without the MUC <x/> (groupchat 1.0) creates an instant room,
    which others can enter at once."""
    alice = online(server, "alice@localhost/phone")
    got = join(alice, "old", "Alice", plain=True)
    own_presence(got, "old", "Alice")
    bob = online(server, "bob@localhost/pda")
    enter(bob, "old", "Bob")


# -- entering a room (s7.1, s7.2) ------------------------------------------------------------------------


def test_order_of_events_when_entering(server):
    """s7.1, s7.2.3, s7.2.16: the joiner gets the occupants' presence, then its own presence with 110 (and
    its item), then the subject, last; the occupants get the joiner's presence (without 110)."""
    alice, carol = room_with(server, "carol")
    bob = online(server, "bob@localhost/pda")
    got = join(bob, "room", "Bob")
    froms = [(el.tag, el.get("from")) for el in got]
    assert sorted(froms[:2]) == [("presence", jid("room", "Alice")), ("presence", jid("room", "Carol"))], (
        show(got)
    )
    assert froms[2] == ("presence", jid("room", "Bob")), show(got)
    assert 110 in codes(got[2]) and not any(110 in codes(el) for el in got[:2]), show(got)
    assert item(got[2]).get("role") == "participant" and item(got[2]).get("affiliation") == "none", show(
        got[2]
    )
    alice_seen = next(el for el in got[:2] if el.get("from") == jid("room", "Alice"))
    assert item(alice_seen).get("affiliation") == "owner" and item(alice_seen).get("role") == "moderator"
    subject = got[-1]
    assert subject.tag == "message" and subject.get("type") == "groupchat", show(got)
    assert subject.find("subject") is not None and subject.find("body") is None, show(subject)
    assert (subject.findtext("subject") or "") == ""
    assert subject.get("from", "").startswith(jid("room")), show(subject)
    assert len(got) == 4, show(got)
    for occupant in (alice, carol):
        seen = occupant.drain()
        assert len(seen) == 1 and is_presence(seen[0], jid("room", "Bob")), show(seen)
        assert 110 not in codes(seen[0]) and item(seen[0]).get("role") == "participant"


def test_history_is_sent_after_presence_with_delay_and_before_the_subject(server):
    """s7.2.14: discussion history comes after the presences, each message from the sender's occupant JID
    with a XEP-0203 <delay/> whose 'from' is the room; the subject comes after it (s7.2.16)."""
    (alice,) = room_with(server)
    for n in range(3):
        groupchat(alice, "room", f"old {n}")
    set_subject(alice, "room", "Toil")
    alice.drain()
    bob = online(server, "bob@localhost/pda")
    got = join(bob, "room", "Bob")
    kinds = [el.tag for el in got]
    assert kinds == ["presence", "presence", "message", "message", "message", "message"], show(got)
    history = got[2:5]
    assert [m.findtext("body") for m in history] == ["old 0", "old 1", "old 2"]
    for m in history:
        assert m.get("type") == "groupchat" and m.get("from") == jid("room", "Alice"), show(m)
        assert m.get("to") == "bob@localhost/pda"
        delay = m.find(f"{{{NS_DELAY}}}delay")
        assert delay is not None and delay.get("from") == jid("room") and delay.get("stamp"), show(m)
    assert got[5].findtext("subject") == "Toil" and got[5].find("body") is None, show(got[5])


def join_history(server: Any, who: str, history: dict[str, Any]) -> list[str]:
    """Bodies of the history ``who`` gets on entering room 'room' with the <history/> attributes."""
    client = online(server, f"{who}@localhost/x")
    got = enter(client, "room", who.capitalize(), history=history)
    return [
        m.findtext("body") for m in got if m.tag == "message" and m.find(f"{{{NS_DELAY}}}delay") is not None
    ]


@pytest.fixture
def five_messages(server):
    (alice,) = room_with(server)
    for n in range(5):
        groupchat(alice, "room", f"m{n}")
    alice.drain()
    return server


def test_history_maxstanzas(five_messages):
    """s7.2.15: maxstanzas limits the number of history messages (the most recent ones); 0 sends none."""
    assert join_history(five_messages, "bob", {"maxstanzas": 2}) == ["m3", "m4"]
    assert join_history(five_messages, "carol", {"maxstanzas": 0}) == []
    assert join_history(five_messages, "dave", {}) == ["m0", "m1", "m2", "m3", "m4"]


def test_history_maxchars(server):
    """s7.2.15: maxchars counts the characters of whole stanzas and only complete stanzas are sent; 0 means
    no history at all."""
    (alice,) = room_with(server)
    groupchat(alice, "room", "long " + "x" * 2000)
    groupchat(alice, "room", "short")
    alice.drain()
    assert join_history(server, "bob", {"maxchars": 1000}) == ["short"]
    assert join_history(server, "carol", {"maxchars": 0}) == []


def test_history_seconds(server):
    """s7.2.15: seconds sends only the messages of the last X seconds; combined with maxstanzas the smaller
    set wins."""
    (alice,) = room_with(server)
    groupchat(alice, "room", "early")
    server.advance(100)
    groupchat(alice, "room", "late 1")
    groupchat(alice, "room", "late 2")
    alice.drain()
    server.advance(10)
    assert join_history(server, "bob", {"seconds": 50}) == ["late 1", "late 2"]
    assert join_history(server, "carol", {"seconds": 500}) == ["early", "late 1", "late 2"]
    assert join_history(server, "dave", {"seconds": 500, "maxstanzas": 1}) == ["late 2"]


def test_history_since(server):
    """s7.2.15: since (a XEP-0082 dateTime) sends only the messages received after it."""
    (alice,) = room_with(server)
    groupchat(alice, "room", "before")
    server.advance(100)
    groupchat(alice, "room", "after")
    alice.drain()
    bob = online(server, "bob@localhost/pda")
    got = enter(bob, "room", "Bob")
    stamps = {
        m.findtext("body"): m.find(f"{{{NS_DELAY}}}delay").get("stamp")
        for m in got
        if m.tag == "message" and m.find(f"{{{NS_DELAY}}}delay") is not None
    }
    assert set(stamps) == {"before", "after"}, show(got)
    first = datetime.fromisoformat(stamps["before"].replace("Z", "+00:00"))
    since = (first + timedelta(seconds=50)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert join_history(server, "carol", {"since": since}) == ["after"]


def test_history_is_bounded(muc_server):
    """Contract (s7.2.14 leaves the amount to the service): a room keeps and sends at most default_history
    messages, the most recent ones."""
    server = muc_server(default_history=5)
    (alice,) = room_with(server)
    for n in range(12):
        groupchat(alice, "room", f"m{n}")
    alice.drain()
    assert join_history(server, "bob", {}) == [f"m{n}" for n in range(7, 12)]
    assert join_history(server, "carol", {"maxstanzas": 100}) == [f"m{n}" for n in range(7, 12)]


def test_nickname_conflict(server):
    """s7.2.9: a nick used by another user is refused with <conflict/> (cancel) from room/nick; the room is
    unaffected."""
    (alice,) = room_with(server)
    bob = online(server, "bob@localhost/pda")
    refused = the_error(join(bob, "room", "Alice"), "presence")
    assert_error(refused, "conflict", "cancel")
    assert refused.get("from") == jid("room", "Alice")
    assert alice.drain() == []
    enter(bob, "room", "Bob")
    chat_works(alice, "room", "Alice", bob)


def test_multi_session_nick(server):
    """Contract (multi-session nicks): two resources of one account share a nick; others still see one
    occupant, and room traffic and private messages reach both sessions."""
    phone, bob = room_with(server, "bob")
    laptop = online(server, "alice@localhost/laptop")
    got = enter(laptop, "room", "Alice")
    assert item(own_presence(got, "room", "Alice")).get("affiliation") == "owner"
    assert presences(got, jid("room", "Bob"), "available"), show(got)
    seen = bob.drain()
    assert all(el.get("from") == jid("room", "Alice") for el in seen), show(seen)
    assert not presences(seen, type_="unavailable"), show(seen)
    phone.drain()
    groupchat(bob, "room", "hello both", id_="g1")
    for session in (phone, laptop):
        got = groupchats(session.drain())
        assert [(m.get("from"), m.findtext("body")) for m in got] == [(jid("room", "Bob"), "hello both")]
    bob.drain()
    bob.send(f"<message type='chat' to='{jid('room', 'Alice')}'><body>psst</body></message>")
    for session in (phone, laptop):
        got = [m for m in session.drain() if m.tag == "message"]
        assert [(m.get("from"), m.findtext("body")) for m in got] == [(jid("room", "Bob"), "psst")], show(got)
    # One session leaving: it gets its unavailable, the others still see Alice.
    got = leave(laptop, "room", "Alice")
    assert any(110 in codes(p) for p in presences(got, jid("room", "Alice"), "unavailable")), show(got)
    assert not presences(bob.drain(), jid("room", "Alice"), "unavailable")
    chat_works(phone, "room", "Alice", bob)
    assert groupchats(laptop.drain()) == []


def test_join_without_a_nick_is_jid_malformed(server):
    """s7.2.2 (no nickname specified): presence to the bare room JID gets <jid-malformed/> (modify)."""
    (alice,) = room_with(server)
    bob = online(server, "bob@localhost/pda")
    bob.send(f"<presence to='{jid('room')}'><x xmlns='{NS_MUC}'/></presence>")
    assert_error(the_error(bob.drain(), "presence"), "jid-malformed", "modify")
    assert alice.drain() == []
    enter(bob, "room", "Bob")


@pytest.mark.parametrize(
    "nick",
    ["x" * 2000, "bell\x7f", "unassigned\u0378", "line\u2028sep", ""],
    ids=["2000-bytes", "control", "unassigned", "line-separator", "empty"],
)
def test_invalid_nick_is_jid_malformed(server, nick):
    """RFC 7622 s3.4 (nicks are resourceparts, XEP-0045 s7.2.1): an impossible nick never reaches the room;
    the router answers <jid-malformed/>, and the room works on."""
    alice, bob = room_with(server, "bob")
    mallory = online(server, "mallory@localhost/evil")
    mallory.send(f"<presence to='{jid('room')}/{nick}'><x xmlns='{NS_MUC}'/></presence>")
    assert_error(the_error(mallory.drain(), "presence"), "jid-malformed")
    assert alice.drain() == [] and bob.drain() == []
    chat_works(alice, "room", "Alice", bob)
    enter(mallory, "room", "Mallory")


@pytest.mark.parametrize("nick", ["   ", " ", "\u00a0"], ids=["spaces", "one-space", "nbsp"])
def test_nick_of_spaces_only_is_refused(server, nick):
    """Business rules, addresses: "a MUC service MUST NOT allow empty or invisible Room Nicknames (i.e., Room
    Nicknames that consist only of one or more space characters)"; a valid resourcepart made of spaces is
    refused (<jid-malformed/> or <not-acceptable/>), on entry and as a nick change; the room works on."""
    (alice,) = room_with(server)
    bob = online(server, "bob@localhost/pda")
    refused = the_error(join(bob, "room", nick), "presence")
    assert error_condition(refused) in ("jid-malformed", "not-acceptable"), show(refused)
    assert alice.drain() == []
    enter(bob, "room", "Bob")
    alice.drain()
    bob.send(f"<presence to='{jid('room', nick)}'/>")
    refused = the_error(bob.drain(), "presence")
    assert error_condition(refused) in ("jid-malformed", "not-acceptable"), show(refused)
    chat_works(bob, "room", "Bob", alice)


def test_forged_muc_user_data_in_presence_is_not_reflected(server):
    """Business rules, presence: only the service generates muc#user data; muc#user items and status codes an
    occupant puts in its presence are not reflected to the others."""
    alice, bob = room_with(server, "bob")
    bob.send(
        f"<presence to='{jid('room', 'Bob')}'><show>dnd</show><x xmlns='{NS_USER}'>"
        "<item affiliation='owner' role='moderator' jid='alice@localhost/phone'/><status code='201'/>"
        "</x></presence>"
    )
    got = presences(alice.drain(), jid("room", "Bob"))
    assert got, "the presence change itself is broadcast"
    for p in got:
        xs = p.findall(f"{{{NS_USER}}}x")
        assert len(xs) == 1, show(p)
        assert item(p).get("role") == "participant" and item(p).get("affiliation") == "none", show(p)
        assert 201 not in codes(p) and item(p).get("jid") != "alice@localhost/phone", show(p)


ODD_STANZAS = {
    "presence-subscribe": "<presence type='subscribe' to='{occupant}'/>",
    "presence-probe": "<presence type='probe' to='{occupant}'/>",
    "presence-subscribed-to-room": "<presence type='subscribed' to='{room}'/>",
    "stray-iq-result": "<iq type='result' id='stray1' to='{room}'/>",
    "stray-iq-error": (
        f"<iq type='error' id='stray2' to='{{occupant}}'><error type='cancel'>"
        f"<item-not-found xmlns='{NS_STANZAS}'/></error></iq>"
    ),
    "invite-without-to": f"<message to='{{room}}'><x xmlns='{NS_USER}'><invite/></x></message>",
    "invite-bad-jid": f"<message to='{{room}}'><x xmlns='{NS_USER}'><invite to='a@@b'/></x></message>",
    "decline-without-to": f"<message to='{{room}}'><x xmlns='{NS_USER}'><decline/></x></message>",
    "empty-muc-user": f"<message to='{{room}}'><x xmlns='{NS_USER}'/></message>",
}


@pytest.mark.parametrize("sender", ["occupant", "outsider"])
@pytest.mark.parametrize("name", sorted(ODD_STANZAS))
def test_odd_stanzas_leave_the_room_working(server, name, sender):
    """Bad input (RFC 6120 s8.3 and the XEP-0045 business rules): subscriptions and probes to occupant JIDs,
    stray iq answers, invitations and declines without a usable address get an error or nothing; no occupant
    sees anything and the room works on with everyone still in it."""
    alice, bob = room_with(server, "bob")
    client = bob if sender == "occupant" else online(server, "mallory@localhost/evil")
    client.send(ODD_STANZAS[name].format(room=jid("room"), occupant=jid("room", "Alice")))
    answers = client.drain()
    assert all(el.get("type") == "error" for el in answers), show(answers)
    assert alice.drain() == []
    chat_works(alice, "room", "Alice", bob)
    chat_works(bob, "room", "Bob", alice)


def test_unavailable_from_a_non_occupant_is_ignored(server):
    """Business rules, presence: a room silently ignores unavailable presence from someone who is not in
    it."""
    (alice,) = room_with(server)
    mallory = online(server, "mallory@localhost/evil")
    for to in (jid("room", "Alice"), jid("room", "Mallory"), jid("room")):
        mallory.send(f"<presence type='unavailable' to='{to}'/>")
    assert mallory.drain() == [] and alice.drain() == []
    chat_works(alice, "room", "Alice")


def test_changing_availability_is_broadcast(server):
    """s7.7: presence with <show/> or <status/> to the room is broadcast from the occupant JID."""
    alice, bob = room_with(server, "bob")
    bob.send(f"<presence to='{jid('room', 'Bob')}'><show>away</show><status>brewing</status></presence>")
    for client in (alice, bob):
        got = presences(client.drain(), jid("room", "Bob"), "available")
        assert len(got) == 1 and got[0].findtext("show") == "away", show(got)
        assert got[0].findtext("status") == "brewing"
        assert item(got[0]).get("role") == "participant"
    assert 110 in codes(got[0])


def test_room_names_are_case_insensitive(server):
    """RFC 7622 s3.3 (a room JID's localpart is prepared like any localpart, XEP-0045 s4.1): ROOM@service is
    the same room as room@service."""
    (alice,) = room_with(server)
    bob = online(server, "bob@localhost/pda")
    bob.send(f"<presence to='ROOM@{SERVICE}/Bob'><x xmlns='{NS_MUC}'/></presence>")
    got = bob.drain()
    own = [p for p in presences(got, type_="available") if 110 in codes(p)]
    assert len(own) == 1 and 201 not in codes(own[0]), show(got)
    assert presences(alice.drain(), jid("room", "Bob"), "available")


def test_join_presence_sent_again_is_not_a_second_occupant(server):
    """s7.7 (presence from an occupant is a status change): a client re-sending its join presence stays one
    occupant; a single exit removes it."""
    alice, bob = room_with(server, "bob")
    join(bob, "room", "Bob")
    seen = alice.drain()
    assert not presences(seen, type_="unavailable") and {p.get("from") for p in seen} <= {jid("room", "Bob")}
    leave(bob, "room", "Bob")
    assert len(presences(alice.drain(), jid("room", "Bob"), "unavailable")) == 1
    groupchat(bob, "room", "am I in?")
    assert_error(the_error(bob.drain(), "message"), "not-acceptable")


def test_multi_session_one_session_dropping(server):
    """Contract (multi-session nicks) with s7.14: one session of a shared nick losing its connection does not
    take the nick out of the room."""
    phone, bob = room_with(server, "bob")
    laptop = online(server, "alice@localhost/laptop")
    enter(laptop, "room", "Alice")
    drain_all(phone, bob)
    laptop.disconnect()
    assert not presences(bob.drain(), jid("room", "Alice"), "unavailable")
    chat_works(bob, "room", "Bob", phone)


def test_private_messages_are_not_history(server):
    """s7.2.14 (history is the room's groupchat discussion) with s7.5: a private message never shows up in the
    history a newcomer gets."""
    alice, bob = room_with(server, "bob")
    bob.send(f"<message type='chat' to='{jid('room', 'Alice')}'><body>secret</body></message>")
    groupchat(bob, "room", "public")
    drain_all(alice, bob)
    assert join_history(server, "carol", {}) == ["public"]


def test_groupchat_to_an_occupant_jid_is_a_bad_request(server):
    """s7.5: a private message of type groupchat (to room/nick) is not delivered; <bad-request/>."""
    alice, bob = room_with(server, "bob")
    bob.send(f"<message type='groupchat' to='{jid('room', 'Alice')}'><body>psst</body></message>")
    assert_error(the_error(bob.drain(), "message"), "bad-request")
    assert alice.drain() == []
    chat_works(bob, "room", "Bob", alice)


def test_room_items_never_show_real_jids(server):
    """s6.4 (querying for room items): in a semi-anonymous room the items are occupant JIDs at most, never the
    occupants' real JIDs."""
    alice, bob = room_with(server, "bob", config={"whois": "moderators"})
    answer, _ = iq(bob, "get", jid("room"), f"<query xmlns='{NS_ITEMS}'/>")
    if answer.get("type") == "result":
        assert {i.get("jid") for i in answer.iter(f"{{{NS_ITEMS}}}item")} <= {
            jid("room", "Alice"),
            jid("room", "Bob"),
        }, show(answer)
    assert "alice@localhost" not in show(answer), show(answer)


# -- messages (s7.4, s7.5, s8.1) -------------------------------------------------------------------------


def test_groupchat_is_reflected_to_all_with_its_id(server):
    """s7.4: a groupchat message goes to every occupant, the sender included, from the sender's occupant JID,
    with the sender's id kept."""
    alice, bob = room_with(server, "bob")
    groupchat(bob, "room", "Harpier cries", id_="msg-17")
    for client, full in ((alice, "alice@localhost/phone"), (bob, "bob@localhost/b")):
        got = client.drain()
        assert len(got) == 1, show(got)
        m = got[0]
        assert (m.get("type"), m.get("from"), m.get("to"), m.get("id"), m.findtext("body")) == (
            "groupchat",
            jid("room", "Bob"),
            full,
            "msg-17",
            "Harpier cries",
        ), show(m)


def test_groupchat_from_a_non_occupant_is_not_acceptable(server):
    """s7.4: a groupchat message from someone not in the room gets <not-acceptable/> and reaches no one."""
    (alice,) = room_with(server)
    carol = online(server, "carol@localhost/web")
    groupchat(carol, "room", "let me in", id_="x1")
    error = the_error(carol.drain(), "message")
    assert_error(error, "not-acceptable")
    assert error.get("id") == "x1" and error.get("from") == jid("room")
    assert alice.drain() == []
    chat_works(alice, "room", "Alice")


def test_groupchat_to_a_room_that_does_not_exist(server):
    """s7.4 (not an occupant) / s6.3: a groupchat message to a nonexistent room is an error, not a new
    room."""
    carol = online(server, "carol@localhost/web")
    groupchat(carol, "ghost", "anyone?")
    assert the_error(carol.drain(), "message").get("type") == "error"
    assert not room_exists(carol, "ghost")


@pytest.mark.parametrize("type_", ["normal", "headline"])
def test_normal_and_headline_messages_to_the_room_are_not_broadcast(server, type_):
    """s7.4 (messages to all occupants are of type groupchat; the service may ignore or reject others): a
    normal or headline message with a body reaches no occupant as room traffic, and the room works on."""
    alice, bob = room_with(server, "bob")
    bob.send(f"<message type='{type_}' to='{jid('room')}'><body>not groupchat</body></message>")
    answer = bob.drain()
    assert all(el.get("type") == "error" for el in answer), show(answer)
    assert "not groupchat" not in bodies(alice.drain())
    chat_works(bob, "room", "Bob", alice)


def test_private_message(server):
    """s7.5: a chat message to room/nick reaches that occupant from the sender's occupant JID, with a muc#user
    <x/>; the sender's real JID is not shown."""
    alice, bob = room_with(server, "bob")
    bob.send(f"<message type='chat' to='{jid('room', 'Alice')}' id='pm1'><body>a word</body></message>")
    got = alice.drain()
    assert len(got) == 1, show(got)
    m = got[0]
    assert (m.get("type"), m.get("from"), m.get("to"), m.findtext("body")) == (
        "chat",
        jid("room", "Bob"),
        "alice@localhost/phone",
        "a word",
    ), show(m)
    assert x_user(m) is not None, show(m)
    assert "bob@localhost" not in show(m)
    assert bob.drain() == []


def test_private_message_errors(server):
    """s7.5: to a nick not in the room, <item-not-found/> (cancel); from a non-occupant, <not-acceptable/>."""
    alice, bob = room_with(server, "bob")
    bob.send(f"<message type='chat' to='{jid('room', 'Nobody')}'><body>hello?</body></message>")
    assert_error(the_error(bob.drain(), "message"), "item-not-found", "cancel")
    carol = online(server, "carol@localhost/web")
    carol.send(f"<message type='chat' to='{jid('room', 'Alice')}'><body>from outside</body></message>")
    assert_error(the_error(carol.drain(), "message"), "not-acceptable")
    assert alice.drain() == []
    chat_works(alice, "room", "Alice", bob)


def test_subject_change_rules(server):
    """s8.1: a moderator may always change the subject (broadcast to all); a participant only if
    muc#roomconfig_changesubject allows it, else <forbidden/> (auth); new occupants get the subject last
    (s7.2.16)."""
    alice, bob = room_with(server, "bob", config={"changesubject": False})
    set_subject(bob, "room", "Mine now")
    assert_error(the_error(bob.drain(), "message"), "forbidden", "auth")
    assert alice.drain() == []
    set_subject(alice, "room", "Cauldron")
    for client in (alice, bob):
        got = groupchats(client.drain())
        assert [(m.get("from"), m.findtext("subject")) for m in got] == [(jid("room", "Alice"), "Cauldron")]
    answer, _ = configure(alice, "room", {"changesubject": True})
    assert answer.get("type") == "result", show(answer)
    drain_all(alice, bob)
    set_subject(bob, "room", "Eye of newt")
    assert [m.findtext("subject") for m in groupchats(alice.drain())] == ["Eye of newt"]
    carol = online(server, "carol@localhost/web")
    got = enter(carol, "room", "Carol")
    assert got[-1].tag == "message" and got[-1].findtext("subject") == "Eye of newt", show(got)


# -- nick changes and exits (s7.6, s7.14) -----------------------------------------------------------------


def test_nick_change(server):
    """s7.6: unavailable from the old nick with 303 and the new nick in <item/>, then available from the new
    nick; the changer's own copies carry 110."""
    alice, bob = room_with(server, "bob")
    bob.send(f"<presence to='{jid('room', 'Robert')}'/>")
    for client, own in ((alice, False), (bob, True)):
        got = client.drain()
        assert [(p.get("from"), p.get("type", "available")) for p in got] == [
            (jid("room", "Bob"), "unavailable"),
            (jid("room", "Robert"), "available"),
        ], show(got)
        assert 303 in codes(got[0]) and item(got[0]).get("nick") == "Robert", show(got[0])
        assert (110 in codes(got[0])) == own and (110 in codes(got[1])) == own, show(got)
    groupchat(bob, "room", "renamed")
    assert [m.get("from") for m in groupchats(alice.drain())] == [jid("room", "Robert")]
    bob.drain()
    # The old nick is free again.
    carol = online(server, "carol@localhost/web")
    enter(carol, "room", "Bob")


def test_nick_change_to_a_taken_nick_is_a_conflict(server):
    """s7.6: changing to a nick another occupant uses gets <conflict/> (cancel); nothing changes."""
    alice, bob = room_with(server, "bob")
    bob.send(f"<presence to='{jid('room', 'Alice')}'/>")
    assert_error(the_error(bob.drain(), "presence"), "conflict", "cancel")
    assert alice.drain() == []
    chat_works(bob, "room", "Bob", alice)


def test_leaving_a_room(server):
    """s7.14: unavailable presence to the room is broadcast; the leaver's copy has 110; it no longer gets room
    traffic."""
    alice, bob = room_with(server, "bob")
    got = leave(bob, "room", "Bob")
    mine = presences(got, jid("room", "Bob"), "unavailable")
    assert len(mine) == 1 and 110 in codes(mine[0]) and item(mine[0]).get("role") == "none", show(got)
    seen = presences(alice.drain(), jid("room", "Bob"), "unavailable")
    assert len(seen) == 1 and 110 not in codes(seen[0]), show(seen)
    groupchat(alice, "room", "gone?")
    assert bob.drain() == []
    groupchat(bob, "room", "still here?")
    assert_error(the_error(bob.drain(), "message"), "not-acceptable")


def test_exit_status_text_is_broadcast(server):
    """s7.14 with the presence business rules ("a client MAY send a custom exit message ... by including a
    <status/> element in the presence stanza of type unavailable"; "a MUC service SHOULD allow all other
    presence information to pass through"): the others get the exit status text."""
    alice, bob = room_with(server, "bob")
    bob.send(
        f"<presence type='unavailable' to='{jid('room', 'Bob')}'>"
        "<status>gone where the goblins go</status></presence>"
    )
    got = presences(alice.drain(), jid("room", "Bob"), "unavailable")
    assert len(got) == 1 and got[0].findtext("status") == "gone where the goblins go", show(got)


def test_temporary_room_is_destroyed_when_the_last_occupant_leaves(server):
    """s7.14, s10.1.2 (temporary room): when the last occupant leaves, the room is gone; the next join creates
    a new one (201)."""
    (alice,) = room_with(server, config={"roomname": "Old"})
    leave(alice, "room", "Alice")
    assert not room_exists(alice, "room")
    bob = online(server, "bob@localhost/pda")
    got = join(bob, "room", "Bob")
    own = own_presence(got, "room", "Bob")
    assert 201 in codes(own) and item(own).get("affiliation") == "owner", show(own)


def test_session_end_removes_the_occupant(server):
    """s7.14 / RFC 6121 s4.6.3: a session that ends without leaving (lost connection) leaves every room."""
    alice, bob = room_with(server, "bob")
    create(alice, "other", "Alice")
    enter(bob, "other", "Robert")
    alice.drain()
    bob.disconnect()
    got = alice.drain()
    assert {p.get("from") for p in presences(got, type_="unavailable")} == {
        jid("room", "Bob"),
        jid("other", "Robert"),
    }, show(got)
    carol = online(server, "carol@localhost/web")
    got = enter(carol, "room", "Bob")  # the nick is free
    assert [p.get("from") for p in presences(got, type_="available")] == [
        jid("room", "Alice"),
        jid("room", "Bob"),
    ]


def test_logging_out_with_unavailable_presence_leaves_rooms(server):
    """RFC 6121 s4.6.3 with s7.14: broadcast unavailable presence also leaves the rooms."""
    alice, bob = room_with(server, "bob")
    bob.send("<presence type='unavailable'/>")
    assert presences(alice.drain(), jid("room", "Bob"), "unavailable")


def test_error_bounced_by_an_occupant_removes_it(server):
    """Contract, status code 333 (XEP-0045 status code registry: removed because of an error reply): an error
    stanza from an occupant's real JID in reply to room traffic removes that occupant."""
    alice, bob = room_with(server, "bob")
    groupchat(alice, "room", "ping", id_="g9")
    bob.drain()
    bob.send(
        f"<message type='error' id='g9' to='{jid('room', 'Alice')}'><error type='cancel'>"
        f"<service-unavailable xmlns='{NS_STANZAS}'/></error></message>"
    )
    got = presences(alice.drain(), jid("room", "Bob"), "unavailable")
    assert len(got) == 1 and 333 in codes(got[0]), show(got)
    chat_works(alice, "room", "Alice")


# -- invitations (s7.8) ----------------------------------------------------------------------------------


def test_mediated_invitation(server):
    """s7.8.2: an invite sent to the room reaches the invitee from the room, with <invite from=inviter/> and
    the reason; with a password-protected room, the password too."""
    (alice,) = room_with(server, config={"passwordprotectedroom": True, "roomsecret": "cauldron"})
    carol = online(server, "carol@localhost/web")
    invite(alice, "room", "carol@localhost", reason="Hey Hecate")
    assert [el for el in alice.drain() if el.get("type") == "error"] == []
    got = [m for m in carol.drain() if m.tag == "message"]
    assert len(got) == 1, show(got)
    m = got[0]
    assert m.get("from") == jid("room"), show(m)
    invitation = m.find(f"{{{NS_USER}}}x/{{{NS_USER}}}invite")
    assert invitation is not None, show(m)
    # s7.8.2: 'from' is the inviter's bare JID, full JID or occupant JID.
    assert invitation.get("from") in ("alice@localhost", "alice@localhost/phone", jid("room", "Alice")), show(
        m
    )
    assert invitation.findtext(f"{{{NS_USER}}}reason") == "Hey Hecate"
    assert m.findtext(f"{{{NS_USER}}}x/{{{NS_USER}}}password") == "cauldron", show(m)
    enter(carol, "room", "Carol", password="cauldron")


def test_declining_an_invitation(server):
    """s7.8.2: a <decline to=inviter/> sent to the room is forwarded to the inviter from the room, with
    <decline from=invitee/>."""
    (alice,) = room_with(server)
    carol = online(server, "carol@localhost/web")
    invite(alice, "room", "carol@localhost")
    carol.drain()
    alice.drain()
    carol.send(
        f"<message to='{jid('room')}'><x xmlns='{NS_USER}'><decline to='alice@localhost'>"
        "<reason>Too busy</reason></decline></x></message>"
    )
    got = [m for m in alice.drain() if m.tag == "message"]
    assert len(got) == 1 and got[0].get("from") == jid("room"), show(got)
    decline = got[0].find(f"{{{NS_USER}}}x/{{{NS_USER}}}decline")
    assert decline is not None and decline.get("from") in ("carol@localhost", "carol@localhost/web"), show(
        got
    )
    assert decline.findtext(f"{{{NS_USER}}}reason") == "Too busy"
    assert [el for el in carol.drain() if el.get("type") == "error"] == []


def test_invitation_from_a_non_occupant_of_an_open_room(server):
    """s7.8.2 (the inviter is an occupant): the room stays usable whatever it does with an outsider's invite,
    and never lets the outsider in."""
    (alice,) = room_with(server)
    mallory = online(server, "mallory@localhost/evil")
    invite(mallory, "room", "alice@localhost")
    mallory.drain()
    alice.drain()
    chat_works(alice, "room", "Alice")
    assert groupchats(mallory.drain()) == []


def test_direct_invitation_passes_through(server):
    """XEP-0249 s2: a direct invitation is a message from client to client; the server delivers it as is."""
    (alice,) = room_with(server)
    carol = online(server, "carol@localhost/web")
    alice.send(
        f"<message to='carol@localhost'><x xmlns='{NS_CONFERENCE}' jid='{jid('room')}' reason='join us'/>"
        "</message>"
    )
    got = [m for m in carol.drain() if m.tag == "message"]
    assert len(got) == 1 and got[0].get("from") == "alice@localhost/phone", show(got)
    x = got[0].find(f"{{{NS_CONFERENCE}}}x")
    assert x is not None and x.get("jid") == jid("room") and x.get("reason") == "join us"


# -- iqs to rooms and occupants, bad input ---------------------------------------------------------------


@pytest.mark.parametrize("to", ["room", "service"])
def test_iq_with_an_unknown_namespace(server, to):
    """RFC 6120 s8.4 / XEP-0045 s16 (business rules): an iq the room or service does not understand gets
    <service-unavailable/> or <feature-not-implemented/>; the room works on."""
    (alice,) = room_with(server)
    target = jid("room") if to == "room" else SERVICE
    for payload in ("<query xmlns='urn:example:nothing'/>", f"<query xmlns='{NS_USER}'/>"):
        answer, _ = iq(alice, "get", target, payload)
        assert answer.get("type") == "error", show(answer)
        assert error_condition(answer) in ("service-unavailable", "feature-not-implemented"), show(answer)
    chat_works(alice, "room", "Alice")


def test_iq_to_an_occupant_is_forwarded_to_its_real_jid(server):
    """s7.5 / business rules on iqs to an occupant JID: a request to room/nick reaches the occupant from the
    requester's occupant JID; the answer comes back from the addressed occupant JID with the original id."""
    alice, bob = room_with(server, "bob")
    bob.send(f"<iq type='get' id='v1' to='{jid('room', 'Alice')}'><query xmlns='jabber:iq:version'/></iq>")
    got = alice.drain()
    assert len(got) == 1 and got[0].tag == "iq" and got[0].get("from") == jid("room", "Bob"), show(got)
    assert got[0].get("to") == "alice@localhost/phone" and "bob@localhost" not in show(got[0]), show(got)
    alice.send(
        f"<iq type='result' id='{got[0].get('id')}' to='{jid('room', 'Bob')}'>"
        "<query xmlns='jabber:iq:version'><name>cauldron</name></query></iq>"
    )
    answer = bob.drain()
    assert len(answer) == 1, show(answer)
    assert (answer[0].get("type"), answer[0].get("id"), answer[0].get("from")) == (
        "result",
        "v1",
        jid("room", "Alice"),
    ), show(answer)
    assert answer[0].findtext("{jabber:iq:version}query/{jabber:iq:version}name") == "cauldron"


def test_vcard_request_to_an_occupant_is_answered_for_its_account(server):
    """XEP-0054 s3.3 with XEP-0045 (iqs to an occupant JID): a vCard request to room/nick is answered with the
    occupant's account vCard, from the occupant JID, with the original id."""
    alice, bob = room_with(server, "bob")
    answer, _ = iq(alice, "set", "alice@localhost", f"<vCard xmlns='{NS_VCARD}'><FN>Alice A.</FN></vCard>")
    assert answer.get("type") == "result", show(answer)
    bob.send(f"<iq type='get' id='vc1' to='{jid('room', 'Alice')}'><vCard xmlns='{NS_VCARD}'/></iq>")
    answer = bob.drain()
    assert len(answer) == 1, show(answer)
    assert (answer[0].get("type"), answer[0].get("id"), answer[0].get("from")) == (
        "result",
        "vc1",
        jid("room", "Alice"),
    ), show(answer)
    assert answer[0].findtext(f"{{{NS_VCARD}}}vCard/{{{NS_VCARD}}}FN") == "Alice A."
    bob.send(f"<iq type='get' id='vc2' to='{jid('room', 'Nobody')}'><vCard xmlns='{NS_VCARD}'/></iq>")
    assert_error(the_error(bob.drain(), "iq"), "item-not-found")


def test_bad_history_attributes_do_not_break_the_room(server):
    """s7.2.15 (bad input): a <history/> with non-numeric attributes either is ignored or refused with a
    modify/cancel error; either way the room works for everyone."""
    (alice,) = room_with(server)
    groupchat(alice, "room", "m0")
    alice.drain()
    bob = online(server, "bob@localhost/pda")
    got = join(bob, "room", "Bob", history={"maxstanzas": "lots", "seconds": "-5", "since": "yesterday"})
    errors = [el for el in got if el.get("type") == "error"]
    if errors:
        assert error_condition(errors[0]) in ("bad-request", "not-acceptable"), show(errors)
        enter(bob, "room", "Bob")
    chat_works(alice, "room", "Alice", bob)


def test_presence_errors_from_outsiders_are_ignored(server):
    """s7.14 / RFC 6120 s8.3.1 (never answer an error with an error): a presence error sent to a room/nick by
    a non-occupant changes nothing."""
    (alice,) = room_with(server)
    mallory = online(server, "mallory@localhost/evil")
    mallory.send(
        f"<presence type='error' to='{jid('room', 'Alice')}'><error type='cancel'>"
        f"<gone xmlns='{NS_STANZAS}'/></error></presence>"
    )
    assert mallory.drain() == []
    assert alice.drain() == []
    chat_works(alice, "room", "Alice")


def test_flood_of_joins_into_a_full_room(muc_server):
    """s7.2.10: with muc#roomconfig_maxusers reached, joiners get <service-unavailable/> (wait); 200 distinct
    joiners leave exactly the limit in the room, and the room works for those inside."""
    server = muc_server(default_max_occupants=10)
    (alice,) = room_with(server)
    admitted, refused = [], 0
    for n in range(200):
        client = online(server, f"u{n}@localhost/r")
        got = join(client, "room", f"U{n}")
        error = [el for el in got if el.get("type") == "error"]
        if error:
            assert_error(error[0], "service-unavailable", "wait")
            refused += 1
            client.disconnect()
        else:
            own_presence(got, "room", f"U{n}")
            admitted.append(client)
    assert len(admitted) == 9 and refused == 191
    joins = presences(alice.drain(), type_="available")
    assert len({p.get("from") for p in joins}) == 9, show(joins)
    answer = disco_info(alice, jid("room"))
    assert forms(answer).get(NS_ROOMINFO, {}).get("muc#roominfo_occupants") in (None, ["10"]), show(answer)
    chat_works(alice, "room", "Alice", *admitted)
