"""Multi-User Chat (plugins/muc, XEP-0045 1.34) on a memory server, privileged side: moderator use cases
(s8: kick, voice), admin use cases (s9: ban, membership, moderators, lists), owner use cases (s10:
configuration, notices, destruction), room types (s7.2.4 - s7.2.10), registration and reserved nicks (s7.10,
s7.12), XEP-0410 self-ping, the service's policy options (room creation and limits), persistence across a
plugin reload, and malformed admin/owner requests. Helpers come from test_muc.py."""

from __future__ import annotations

from typing import Any

import pytest
from lxml import etree
from test_muc import (
    NS_ADMIN,
    NS_DATA,
    NS_MUC,
    NS_OWNER,
    NS_PING,
    NS_REGISTER,
    NS_USER,
    assert_error,
    chat_works,
    codes,
    configure,
    create,
    data_form,
    disco_info,
    drain_all,
    enter,
    error_condition,
    features,
    form_values,
    groupchat,
    groupchats,
    identities,
    invite,
    iq,
    item,
    jid,
    join,
    leave,
    online,
    own_presence,
    presences,
    room_exists,
    room_identity,
    room_with,
    set_subject,
    show,
    the_error,
    x_user,
)

NS_MUC_REGISTER = f"{NS_MUC}#register"


def admin(client: Any, room: str, reason: str | None = None, **attrs: str) -> tuple[etree._Element, list]:
    """A muc#admin set with one <item/> (s8, s9); returns (answer, other stanzas received)."""
    attr = " ".join(f"{k}='{v}'" for k, v in attrs.items())
    inner = f"<reason>{reason}</reason>" if reason else ""
    return iq(client, "set", jid(room), f"<query xmlns='{NS_ADMIN}'><item {attr}>{inner}</item></query>")


def admin_ok(client: Any, room: str, **attrs: str) -> list:
    answer, others = admin(client, room, **attrs)
    assert answer.get("type") == "result", show(answer)
    return others


def admin_list(client: Any, room: str, **attrs: str) -> etree._Element:
    """A muc#admin get for the items with a role or affiliation (s8.5, s9.2, s9.5, s9.8, s10.5, s10.8)."""
    attr = " ".join(f"{k}='{v}'" for k, v in attrs.items())
    answer, _ = iq(client, "get", jid(room), f"<query xmlns='{NS_ADMIN}'><item {attr}/></query>")
    return answer


def listed(answer: etree._Element) -> list[dict[str, str]]:
    assert answer.get("type") == "result", show(answer)
    return [dict(i.attrib) for i in answer.iter(f"{{{NS_ADMIN}}}item")]


def listed_jids(answer: etree._Element) -> set[str]:
    return {i.get("jid") for i in listed(answer)}


def destroy_room(
    client: Any, room: str, alternate: str | None = None, reason: str | None = None
) -> tuple[etree._Element, list]:
    """A muc#owner <destroy/> request (s10.9), with an alternate venue and a reason if given; returns
    (answer, other stanzas received)."""
    attr = "" if alternate is None else f" jid='{alternate}'"
    inner = "" if reason is None else f"<reason>{reason}</reason>"
    return iq(client, "set", jid(room), f"<query xmlns='{NS_OWNER}'><destroy{attr}>{inner}</destroy></query>")


def self_ping(client: Any, room: str, nick: str) -> etree._Element:
    """The answer to a XEP-0410 self-ping of the occupant JID room/nick."""
    answer, _ = iq(client, "get", jid(room, nick), f"<ping xmlns='{NS_PING}'/>")
    return answer


# -- moderator use cases (s8) ----------------------------------------------------------------------------


def test_kick(server):
    """s8.2: a moderator sets role none; the kicked occupant gets unavailable with 307 and 110 (and the
    reason), the others with 307; the kicked user may come back."""
    alice, bob, carol = room_with(server, "bob", "carol")
    others = admin_ok(alice, "room", nick="Bob", role="none", reason="Avaunt")
    mine = presences(bob.drain(), jid("room", "Bob"), "unavailable")
    assert len(mine) == 1 and {307, 110} <= codes(mine[0]), show(mine)
    assert item(mine[0]).get("role") == "none", show(mine)
    assert mine[0].findtext(f"{{{NS_USER}}}x/{{{NS_USER}}}item/{{{NS_USER}}}reason") == "Avaunt", show(mine)
    for seen in (presences(carol.drain(), type_="unavailable"), presences(others, type_="unavailable")):
        assert len(seen) == 1 and seen[0].get("from") == jid("room", "Bob"), show(seen)
        assert 307 in codes(seen[0]) and 110 not in codes(seen[0]), show(seen)
    groupchat(bob, "room", "still in?")
    assert_error(the_error(bob.drain(), "message"), "not-acceptable")
    enter(bob, "room", "Bob")


def test_participant_cannot_kick(server):
    """s8.2: a non-moderator trying to kick gets <forbidden/> (auth); nothing changes."""
    alice, bob, carol = room_with(server, "bob", "carol")
    answer, _ = admin(bob, "room", nick="Carol", role="none")
    assert_error(answer, "forbidden", "auth")
    assert alice.drain() == [] and carol.drain() == []
    chat_works(carol, "room", "Carol", alice, bob)


def test_moderator_cannot_kick_an_admin_or_owner(server):
    """s8.2 (and s5.2): a moderator may not kick an occupant with a higher affiliation (admin, owner):
    <not-allowed/> (cancel)."""
    alice, bob, carol = room_with(server, "bob", "carol")
    admin_ok(alice, "room", nick="Bob", role="moderator")  # s9.6
    admin_ok(alice, "room", jid="carol@localhost", affiliation="admin")  # s10.6
    drain_all(alice, bob, carol)
    for nick in ("Carol", "Alice"):
        answer, _ = admin(bob, "room", nick=nick, role="none")
        assert_error(answer, "not-allowed", "cancel")
    assert alice.drain() == [] and carol.drain() == []
    chat_works(carol, "room", "Carol", alice, bob)


def test_voice_in_a_moderated_room(server):
    """s8.3, s8.4, s8.5, s7.4: in a moderated room newcomers without affiliation are visitors and get
    <forbidden/> (auth) when they speak; a moderator grants voice (role participant, broadcast), lists it, and
    revokes it (role visitor)."""
    alice, bob = room_with(server, "bob", config={"moderatedroom": True})
    assert admin_list(alice, "room", role="participant").get("type") == "result"
    groupchat(bob, "room", "may I?")
    assert_error(the_error(bob.drain(), "message"), "forbidden", "auth")
    assert groupchats(alice.drain()) == []
    others = admin_ok(alice, "room", nick="Bob", role="participant")
    for seen in (others, bob.drain()):
        got = presences(seen, jid("room", "Bob"), "available")
        assert len(got) == 1 and item(got[0]).get("role") == "participant", show(seen)
    chat_works(bob, "room", "Bob", alice)
    voices = [i for i in listed(admin_list(alice, "room", role="participant")) if i.get("nick") == "Bob"]
    assert len(voices) == 1, voices
    # IQ business rules: role results carry nick, role, affiliation and the occupant's full JID.
    assert voices[0].get("role") == "participant" and voices[0].get("affiliation") == "none", voices
    assert voices[0].get("jid") == "bob@localhost/b", voices
    admin_ok(alice, "room", nick="Bob", role="visitor")
    got = presences(bob.drain(), jid("room", "Bob"), "available")
    assert len(got) == 1 and item(got[0]).get("role") == "visitor", show(got)
    groupchat(bob, "room", "again?")
    assert_error(the_error(bob.drain(), "message"), "forbidden", "auth")


def test_visitor_entering_a_moderated_room_is_a_visitor(server):
    """s5.1 (default roles): a user without affiliation enters a moderated room as visitor, a member as
    participant."""
    (alice,) = room_with(server, config={"moderatedroom": True})
    admin_ok(alice, "room", jid="carol@localhost", affiliation="member")
    bob = online(server, "bob@localhost/b")
    assert item(own_presence(join(bob, "room", "Bob"), "room", "Bob")).get("role") == "visitor"
    carol = online(server, "carol@localhost/c")
    assert item(own_presence(join(carol, "room", "Carol"), "room", "Carol")).get("role") == "participant"


def test_granting_and_revoking_moderator(server):
    """s9.6, s9.7, s9.8: an admin/owner grants and revokes the moderator role by nick; the moderator list
    shows the moderators."""
    alice, bob = room_with(server, "bob")
    admin_ok(alice, "room", nick="Bob", role="moderator")
    got = presences(bob.drain(), jid("room", "Bob"))
    assert item(got[-1]).get("role") == "moderator", show(got)
    assert {"Alice", "Bob"} <= {i.get("nick") for i in listed(admin_list(alice, "room", role="moderator"))}
    admin_ok(alice, "room", nick="Bob", role="participant")
    got = presences(bob.drain(), jid("room", "Bob"))
    assert item(got[-1]).get("role") == "participant", show(got)


# -- admin use cases (s9) --------------------------------------------------------------------------------


def test_ban(server):
    """s9.1, s9.2, s7.2.8: banning (affiliation outcast by bare JID) removes the user with 301; the ban list
    shows it; the banned user is refused with <forbidden/> (auth); lifting the ban lets it in."""
    alice, bob, carol = room_with(server, "bob", "carol")
    others = admin_ok(alice, "room", jid="bob@localhost", affiliation="outcast", reason="Treason")
    mine = presences(bob.drain(), jid("room", "Bob"), "unavailable")
    assert len(mine) == 1 and {301, 110} <= codes(mine[0]), show(mine)
    assert item(mine[0]).get("affiliation") == "outcast" and item(mine[0]).get("role") == "none"
    for seen in (presences(carol.drain(), type_="unavailable"), presences(others, type_="unavailable")):
        assert len(seen) == 1 and 301 in codes(seen[0]), show(seen)
    assert listed_jids(admin_list(alice, "room", affiliation="outcast")) == {"bob@localhost"}
    refused = the_error(join(bob, "room", "Bob"), "presence")
    assert_error(refused, "forbidden", "auth")
    bob2 = online(server, "bob@localhost/other")  # by bare JID: every resource
    assert_error(the_error(join(bob2, "room", "Bobby"), "presence"), "forbidden", "auth")
    assert alice.drain() == [] and carol.drain() == []
    admin_ok(alice, "room", jid="bob@localhost", affiliation="none")
    enter(bob, "room", "Bob")


def test_ban_of_someone_not_in_the_room(server):
    """s9.1: a ban needs no occupant; the user is refused later."""
    (alice,) = room_with(server)
    admin_ok(alice, "room", jid="dave@localhost", affiliation="outcast")
    dave = online(server, "dave@localhost/d")
    assert_error(the_error(join(dave, "room", "Dave"), "presence"), "forbidden", "auth")


def test_non_admins_cannot_ban_or_see_the_lists(server):
    """s9.1, s9.2: a participant or a moderator without admin affiliation may not ban (<forbidden/>, auth) nor
    get the ban list."""
    alice, bob, carol = room_with(server, "bob", "carol")
    admin_ok(alice, "room", nick="Carol", role="moderator")
    drain_all(alice, bob, carol)
    for who in (bob, carol):
        answer, _ = admin(who, "room", jid="alice@localhost", affiliation="outcast")
        assert_error(answer, "forbidden", "auth")
        assert_error(admin_list(who, "room", affiliation="outcast"), "forbidden", "auth")
    chat_works(alice, "room", "Alice", bob, carol)


def test_owner_cannot_be_banned_by_an_admin(server):
    """s9.1: an admin may not ban an owner (or another admin): <not-allowed/> (cancel)."""
    alice, bob = room_with(server, "bob")
    admin_ok(alice, "room", jid="bob@localhost", affiliation="admin")
    answer, _ = admin(bob, "room", jid="alice@localhost", affiliation="outcast")
    assert_error(answer, "not-allowed", "cancel")
    chat_works(alice, "room", "Alice", bob)


def test_affiliation_lists(server):
    """s9.5, s10.5, s10.8: the member, admin and owner lists by affiliation; an affiliation change of an
    occupant is broadcast in its presence (s9.3)."""
    alice, bob = room_with(server, "bob")
    others = admin_ok(alice, "room", jid="bob@localhost", affiliation="member")
    got = presences(bob.drain(), jid("room", "Bob"))
    assert len(got) == 1 and item(got[0]).get("affiliation") == "member", show(got)
    assert presences(others, jid("room", "Bob")), show(others)
    admin_ok(alice, "room", jid="carol@localhost", affiliation="admin")
    admin_ok(alice, "room", jid="dave@localhost", affiliation="owner")
    assert listed_jids(admin_list(alice, "room", affiliation="member")) == {"bob@localhost"}
    assert listed_jids(admin_list(alice, "room", affiliation="admin")) == {"carol@localhost"}
    assert listed_jids(admin_list(alice, "room", affiliation="owner")) == {
        "alice@localhost",
        "dave@localhost",
    }
    for affiliation in ("member", "admin", "owner"):
        for entry in listed(admin_list(alice, "room", affiliation=affiliation)):
            # s10.5, s10.8 and the IQ business rules: affiliation and bare jid, never a role.
            assert entry.get("affiliation") == affiliation and "/" not in entry.get("jid", "/"), entry
            assert "role" not in entry, entry


def test_members_only_room(server):
    """s7.2.7, s9.3, s9.4: a non-member gets <registration-required/> (auth); once made member it enters;
    revoking the membership of an occupant removes it with 321."""
    (alice,) = room_with(server, config={"membersonly": True})
    bob = online(server, "bob@localhost/b")
    refused = the_error(join(bob, "room", "Bob"), "presence")
    assert_error(refused, "registration-required", "auth")
    assert alice.drain() == []
    admin_ok(alice, "room", jid="bob@localhost", affiliation="member")
    got = enter(bob, "room", "Bob")
    assert item(own_presence(got, "room", "Bob")).get("affiliation") == "member"
    alice.drain()
    others = admin_ok(alice, "room", jid="bob@localhost", affiliation="none")
    mine = presences(bob.drain(), jid("room", "Bob"), "unavailable")
    assert len(mine) == 1 and {321, 110} <= codes(mine[0]), show(mine)
    seen = presences(others, jid("room", "Bob"), "unavailable") or presences(
        alice.drain(), jid("room", "Bob")
    )
    assert seen and 321 in codes(seen[-1]), show(others)
    assert_error(the_error(join(bob, "room", "Bob"), "presence"), "registration-required", "auth")


def test_switching_to_members_only_removes_non_members_with_322(server):
    """s10.2 (status code 322): making a room members-only removes the occupants who are not members, with
    322; members stay; occupants get the 104 notice."""
    alice, bob, carol = room_with(server, "bob", "carol")
    admin_ok(alice, "room", jid="carol@localhost", affiliation="member")
    drain_all(alice, bob, carol)
    answer, others = configure(alice, "room", {"membersonly": True})
    assert answer.get("type") == "result", show(answer)
    mine = presences(bob.drain(), jid("room", "Bob"), "unavailable")
    assert len(mine) == 1 and {322, 110} <= codes(mine[0]), show(mine)
    seen = carol.drain()
    gone = presences(seen, jid("room", "Bob"), "unavailable")
    assert len(gone) == 1 and 322 in codes(gone[0]), show(seen)
    assert not presences(seen, jid("room", "Carol"), "unavailable")
    chat_works(carol, "room", "Carol", alice)


def test_members_only_invitations(server):
    """s7.8.2: in a members-only room only admins and owners may invite (others <forbidden/>, unless
    muc#roomconfig_allowinvites); the contract makes the invitee a member, so it can enter."""
    (alice,) = room_with(server, config={"membersonly": True, "allowinvites": False})
    admin_ok(alice, "room", jid="carol@localhost", affiliation="member")
    carol = online(server, "carol@localhost/c")
    enter(carol, "room", "Carol")
    drain_all(alice, carol)
    dave = online(server, "dave@localhost/d")
    invite(carol, "room", "dave@localhost")
    assert_error(the_error(carol.drain(), "message"), "forbidden")
    assert [m for m in dave.drain() if m.tag == "message"] == []
    invite(alice, "room", "dave@localhost")
    got = [m for m in dave.drain() if m.tag == "message"]
    assert len(got) == 1 and got[0].find(f"{{{NS_USER}}}x/{{{NS_USER}}}invite") is not None, show(got)
    enter(dave, "room", "Dave")


def test_kicking_a_multi_session_occupant_removes_every_session(server):
    """s8.2 with the contract's multi-session nicks: a kick removes the nick, so every session of it gets the
    307 unavailable."""
    alice, bob = room_with(server, "bob")
    bob2 = online(server, "bob@localhost/laptop")
    enter(bob2, "room", "Bob")
    drain_all(alice, bob, bob2)
    admin_ok(alice, "room", nick="Bob", role="none")
    for session in (bob, bob2):
        gone = presences(session.drain(), jid("room", "Bob"), "unavailable")
        assert len(gone) == 1 and {307, 110} <= codes(gone[0]), show(gone)
    for session in (bob, bob2):
        groupchat(session, "room", "still in?")
        assert_error(the_error(session.drain(), "message"), "not-acceptable")


def test_visitor_cannot_change_the_subject(server):
    """s8.1: even with muc#roomconfig_changesubject, a visitor (no voice) may not change the subject:
    <forbidden/>."""
    alice, bob = room_with(server, "bob", config={"moderatedroom": True, "changesubject": True})
    set_subject(bob, "room", "Mine")
    assert_error(the_error(bob.drain(), "message"), "forbidden")
    assert alice.drain() == []


def test_only_owners_grant_owner_and_admin(server):
    """s10.5, s10.8 (modifying the owner and admin lists): "only owners shall be allowed to modify the owner
    list" and the admin list; a non-owner (here an admin) trying to view or modify them gets <forbidden/>
    (auth)."""
    alice, bob = room_with(server, "bob")
    admin_ok(alice, "room", jid="bob@localhost", affiliation="admin")
    for affiliation in ("owner", "admin"):
        answer, _ = admin(bob, "room", jid="carol@localhost", affiliation=affiliation)
        assert_error(answer, "forbidden", "auth")
        assert_error(admin_list(bob, "room", affiliation=affiliation), "forbidden", "auth")
    assert listed_jids(admin_list(alice, "room", affiliation="admin")) == {"bob@localhost"}


def test_new_admin_in_the_room_becomes_moderator(server):
    """s10.6 (and s5.1.2 role changes): an occupant made admin SHOULD also become moderator; its presence is
    broadcast with the new affiliation."""
    alice, bob = room_with(server, "bob")
    admin_ok(alice, "room", jid="bob@localhost", affiliation="admin")
    got = presences(bob.drain(), jid("room", "Bob"), "available")
    assert got and item(got[-1]).get("affiliation") == "admin", show(got)
    assert item(got[-1]).get("role") == "moderator", show(got)


def test_modifying_the_ban_list_with_several_items(server):
    """s9.2: one muc#admin set may carry several items; all of them apply."""
    alice, bob = room_with(server, "bob")
    answer, _ = iq(
        alice,
        "set",
        jid("room"),
        f"<query xmlns='{NS_ADMIN}'><item jid='bob@localhost' affiliation='outcast'/>"
        "<item jid='dave@localhost' affiliation='outcast'><reason>spam</reason></item></query>",
    )
    assert answer.get("type") == "result", show(answer)
    assert listed_jids(admin_list(alice, "room", affiliation="outcast")) == {
        "bob@localhost",
        "dave@localhost",
    }
    assert 301 in codes(presences(bob.drain(), jid("room", "Bob"), "unavailable")[0])


def test_sole_owner_cannot_give_up_ownership(server):
    """s10.4, s10.5 (revoking owner status, modifying the owner list): the only owner may not revoke its own
    ownership: <conflict/> (cancel); with another owner it may."""
    alice, bob = room_with(server, "bob")
    answer, _ = admin(alice, "room", jid="alice@localhost", affiliation="admin")
    assert_error(answer, "conflict", "cancel")
    assert listed_jids(admin_list(alice, "room", affiliation="owner")) == {"alice@localhost"}
    admin_ok(alice, "room", jid="bob@localhost", affiliation="owner")
    admin_ok(alice, "room", jid="alice@localhost", affiliation="admin")  # now there is another owner
    assert listed_jids(admin_list(bob, "room", affiliation="owner")) == {"bob@localhost"}


def test_owners_and_admins_from_the_configuration_form(server):
    """s10.1.3 (muc#roomconfig_roomowners, muc#roomconfig_roomadmins): the form's JID lists set owners and
    admins."""
    (alice,) = room_with(server)
    answer, _ = configure(
        alice,
        "room",
        {"roomowners": ["alice@localhost", "dave@localhost"], "roomadmins": ["carol@localhost"]},
    )
    assert answer.get("type") == "result", show(answer)
    assert listed_jids(admin_list(alice, "room", affiliation="owner")) == {
        "alice@localhost",
        "dave@localhost",
    }
    assert listed_jids(admin_list(alice, "room", affiliation="admin")) == {"carol@localhost"}


# -- room types (s7.2.4 - s7.2.10) -----------------------------------------------------------------------


def test_password_protected_room(server):
    """s7.2.6: without or with a wrong password, <not-authorized/> (auth); with the right one the user
    enters."""
    (alice,) = room_with(server, config={"passwordprotectedroom": True, "roomsecret": "cauldron"})
    bob = online(server, "bob@localhost/b")
    assert_error(the_error(join(bob, "room", "Bob"), "presence"), "not-authorized", "auth")
    assert_error(the_error(join(bob, "room", "Bob", password="toad"), "presence"), "not-authorized", "auth")
    assert_error(the_error(join(bob, "room", "Bob", plain=True), "presence"), "not-authorized", "auth")
    assert alice.drain() == []
    enter(bob, "room", "Bob", password="cauldron")
    chat_works(bob, "room", "Bob", alice)


def test_non_anonymous_room(server):
    """s7.2.4: every occupant sees every occupant's full JID in <item jid=.../>, and the joiner's own presence
    has status 100."""
    (alice,) = room_with(server, config={"whois": "anyone"})
    bob = online(server, "bob@localhost/b")
    got = enter(bob, "room", "Bob")
    assert {100, 110} <= codes(own_presence(got, "room", "Bob"))
    seen_alice = presences(got, jid("room", "Alice"), "available")
    assert item(seen_alice[0]).get("jid") == "alice@localhost/phone", show(seen_alice)
    seen_bob = presences(alice.drain(), jid("room", "Bob"), "available")
    assert item(seen_bob[0]).get("jid") == "bob@localhost/b", show(seen_bob)


def test_semi_anonymous_room(server):
    """s7.2.5: only moderators see full JIDs; no status 100."""
    (alice,) = room_with(server, config={"whois": "moderators"})
    bob = online(server, "bob@localhost/b")
    got = enter(bob, "room", "Bob")
    assert 100 not in codes(own_presence(got, "room", "Bob"))
    seen_alice = presences(got, jid("room", "Alice"), "available")
    assert "jid" not in item(seen_alice[0]) and "alice@localhost" not in show(seen_alice[0]), show(seen_alice)
    seen_bob = presences(alice.drain(), jid("room", "Bob"), "available")
    assert item(seen_bob[0]).get("jid") == "bob@localhost/b", show(seen_bob)
    carol = online(server, "carol@localhost/c")
    enter(carol, "room", "Carol")
    seen_by_bob = presences(bob.drain(), jid("room", "Carol"), "available")
    assert len(seen_by_bob) == 1 and "jid" not in item(seen_by_bob[0]), show(seen_by_bob)


def test_max_occupants(muc_server):
    """s7.2.10: a full room refuses joiners with <service-unavailable/> (wait), but admits owners and admins;
    a place freed is taken again."""
    server = muc_server(default_max_occupants=2)
    alice, bob = room_with(server, "bob", config={"persistentroom": True})
    carol = online(server, "carol@localhost/c")
    assert_error(the_error(join(carol, "room", "Carol"), "presence"), "service-unavailable", "wait")
    leave(alice, "room", "Alice")
    enter(carol, "room", "Carol")  # bob, carol: full again
    dave = online(server, "dave@localhost/d")
    assert_error(the_error(join(dave, "room", "Dave"), "presence"), "service-unavailable", "wait")
    enter(alice, "room", "Alice")  # the owner still gets in
    chat_works(alice, "room", "Alice", bob, carol)


def test_maxusers_above_the_service_limit_is_not_acceptable(muc_server):
    """s10.1.3 / s10.2 (a configuration violating service policy gets <not-acceptable/>): maxusers above
    max_occupants is refused and the room keeps its configuration."""
    server = muc_server(max_occupants=50, default_max_occupants=20)
    (alice,) = room_with(server, config={"roomname": "Kept"})
    answer, _ = configure(alice, "room", {"maxusers": 1000, "roomname": "Changed"})
    assert_error(answer, "not-acceptable")
    assert room_identity("Kept") in identities(disco_info(alice, jid("room")))
    chat_works(alice, "room", "Alice")


# -- owner use cases (s10) -------------------------------------------------------------------------------


def test_configuration_change_notice_104(server):
    """s10.2.1: after a configuration change the occupants get a groupchat message from the room with status
    104; a change to non-anonymous adds 172 (s10.2.1, status code registry)."""
    alice, bob = room_with(server, "bob", config={"whois": "moderators"})
    answer, others = configure(alice, "room", {"roomname": "Renamed"})
    assert answer.get("type") == "result", show(answer)
    notices = [m for m in bob.drain() if m.tag == "message" and m.get("from") == jid("room")]
    assert len(notices) == 1 and 104 in codes(notices[0]) and notices[0].get("type") == "groupchat", show(
        notices
    )
    assert any(104 in codes(m) for m in others if m.tag == "message"), show(others)
    configure(alice, "room", {"whois": "anyone"})
    notices = [m for m in bob.drain() if m.tag == "message" and m.get("from") == jid("room")]
    assert notices and 172 in set().union(*(codes(m) for m in notices)), show(notices)


def test_only_owners_configure(server):
    """s10.2: a non-owner (even an admin) asking for or submitting the configuration gets <forbidden/>
    (auth)."""
    alice, bob, carol = room_with(server, "bob", "carol", config={"roomname": "Mine"})
    admin_ok(alice, "room", jid="carol@localhost", affiliation="admin")
    for who in (bob, carol):
        answer, _ = iq(who, "get", jid("room"), f"<query xmlns='{NS_OWNER}'/>")
        assert_error(answer, "forbidden", "auth")
        answer, _ = configure(who, "room", {"roomname": "Theirs"})
        assert_error(answer, "forbidden", "auth")
    assert room_identity("Mine") in identities(disco_info(bob, jid("room")))


def test_cancelling_a_later_configuration_changes_nothing(server):
    """s10.2: cancelling a subsequent configuration leaves the room as it was (only cancelling the initial
    configuration destroys the room, s10.1.3)."""
    alice, bob = room_with(server, "bob", config={"roomname": "Stay"})
    answer, _ = iq(alice, "get", jid("room"), f"<query xmlns='{NS_OWNER}'/>")
    assert answer.get("type") == "result", show(answer)
    answer, others = iq(
        alice, "set", jid("room"), f"<query xmlns='{NS_OWNER}'><x xmlns='{NS_DATA}' type='cancel'/></query>"
    )
    assert answer.get("type") == "result", show(answer)
    assert not presences(others, type_="unavailable") and not presences(bob.drain(), type_="unavailable")
    assert room_identity("Stay") in identities(disco_info(bob, jid("room")))
    chat_works(alice, "room", "Alice", bob)


def test_owner_leaving_a_locked_room_destroys_it(server):
    """s10.1.3: if the owner of a new, still locked room becomes unavailable before configuring it, the room
    is destroyed."""
    alice = online(server, "alice@localhost/phone")
    join(alice, "room", "Alice")
    leave(alice, "room", "Alice")
    assert not room_exists(alice, "room")
    bob = online(server, "bob@localhost/b")
    got = join(bob, "room", "Bob")
    assert 201 in codes(own_presence(got, "room", "Bob")), show(got)


def test_destroying_a_room(server):
    """s10.9: the owner destroys the room; each occupant gets one unavailable presence, its own (the service
    SHOULD NOT broadcast every occupant's), with role none and <destroy jid=alternate> plus the reason in
    muc#user; the room is gone."""
    alice, bob, carol = room_with(server, "bob", "carol")
    answer, others = destroy_room(alice, "room", alternate=jid("heath"), reason="Macbeth doth come")
    assert answer.get("type") == "result", show(answer)
    for seen, nick in ((bob.drain(), "Bob"), (carol.drain(), "Carol"), (others, "Alice")):
        gone = presences(seen, type_="unavailable")
        assert [p.get("from") for p in gone] == [jid("room", nick)], show(seen)
        destroy = x_user(gone[0]).find(f"{{{NS_USER}}}destroy")
        assert destroy is not None and destroy.get("jid") == jid("heath"), show(gone)
        assert destroy.findtext(f"{{{NS_USER}}}reason") == "Macbeth doth come"
        assert item(gone[0]).get("role") == "none", show(gone)
    assert not room_exists(bob, "room")
    groupchat(bob, "room", "hello?")
    assert the_error(bob.drain(), "message").get("type") == "error"


def test_destroyed_room_notice_reaches_every_occupant(server):
    """s10.9: whatever else is sent, every occupant learns of the destruction (unavailable from its own
    occupant JID with <destroy/>) and the room is gone."""
    alice, bob = room_with(server, "bob")
    answer, others = destroy_room(alice, "room")
    assert answer.get("type") == "result", show(answer)
    for seen, nick in ((bob.drain(), "Bob"), (others, "Alice")):
        own = presences(seen, jid("room", nick), "unavailable")
        assert len(own) == 1 and x_user(own[0]).find(f"{{{NS_USER}}}destroy") is not None, show(seen)
    assert not room_exists(alice, "room")


def test_only_owners_destroy(server):
    """s10.9: a non-owner asking to destroy the room gets <forbidden/> (auth); the room stays."""
    alice, bob = room_with(server, "bob")
    admin_ok(alice, "room", jid="bob@localhost", affiliation="admin")
    answer, _ = destroy_room(bob, "room")
    assert_error(answer, "forbidden", "auth")
    assert room_exists(bob, "room")
    chat_works(alice, "room", "Alice", bob)


def test_owner_outside_the_room_can_destroy_it(server):
    """s10.9: the owner need not be an occupant to destroy a (persistent) room."""
    alice = online(server, "alice@localhost/phone")
    create(alice, "keep", "Alice", {"persistentroom": True})
    leave(alice, "keep", "Alice")
    answer, _ = destroy_room(alice, "keep")
    assert answer.get("type") == "result", show(answer)
    assert not room_exists(alice, "keep")


def test_self_ping_from_another_resource_of_a_joined_account(server):
    """XEP-0410 s3.2: self-ping tells whether the pinging client (full JID) is joined: a second resource of a
    joined account that never joined gets <not-acceptable/>; a joined multi-session resource gets a result."""
    alice, bob = room_with(server, "bob")
    tablet = online(server, "bob@localhost/tablet")
    answer = self_ping(tablet, "room", "Bob")
    assert_error(answer, "not-acceptable")
    enter(tablet, "room", "Bob")
    answer = self_ping(tablet, "room", "Bob")
    assert answer.get("type") == "result", show(answer)


# -- registration and reserved nicks (s7.10, s7.12, s7.2.9) ----------------------------------------------


def register_form(client: Any, room: str) -> etree._Element:
    answer, _ = iq(client, "get", jid(room), f"<query xmlns='{NS_REGISTER}'/>")
    return answer


def register(client: Any, room: str, nick: str) -> etree._Element:
    form = data_form({"muc#register_roomnick": nick}, NS_MUC_REGISTER)
    answer, _ = iq(client, "set", jid(room), f"<query xmlns='{NS_REGISTER}'>{form}</query>")
    return answer


def test_registration_reserves_a_nick(server):
    """s7.10: the registration form has muc#register_roomnick; submitting it makes the user a member with that
    nick; s7.12: disco#info node x-roomuser-item returns it; s7.2.9: another user cannot take it."""
    (alice,) = room_with(server)
    bob = online(server, "bob@localhost/b")
    answer = register_form(bob, "room")
    assert answer.get("type") == "result", show(answer)
    form = answer.find(f"{{{NS_REGISTER}}}query/{{{NS_DATA}}}x")
    assert form is not None, show(answer)
    fields = form_values(form)
    assert fields.get("FORM_TYPE") == [NS_MUC_REGISTER] and "muc#register_roomnick" in fields, fields
    answer = register(bob, "room", "Bobby")
    assert answer.get("type") == "result", show(answer)
    assert "bob@localhost" in listed_jids(admin_list(alice, "room", affiliation="member"))
    info = disco_info(bob, jid("room"), node="x-roomuser-item")
    assert info.get("type") == "result", show(info)
    assert [(i.get("category"), i.get("type"), i.get("name")) for i in identities(info)] == [
        ("conference", "text", "Bobby")
    ], show(info)
    carol = online(server, "carol@localhost/c")
    assert_error(the_error(join(carol, "room", "Bobby"), "presence"), "conflict", "cancel")
    enter(carol, "room", "Carol")
    carol.send(f"<presence to='{jid('room', 'Bobby')}'/>")  # s7.6: nor change to it
    assert_error(the_error(carol.drain(), "presence"), "conflict", "cancel")
    got = enter(bob, "room", "Bobby")
    assert item(own_presence(got, "room", "Bobby")).get("affiliation") == "member"


def test_registering_a_nick_reserved_by_someone_else_is_a_conflict(server):
    """s7.10: a nick already reserved in the room gets <conflict/> (cancel)."""
    (alice,) = room_with(server)
    bob = online(server, "bob@localhost/b")
    assert register(bob, "room", "Bobby").get("type") == "result"
    carol = online(server, "carol@localhost/c")
    assert_error(register(carol, "room", "Bobby"), "conflict", "cancel")


def test_reserved_nick_of_an_unregistered_user(server):
    """s7.12: with no reserved nick the x-roomuser-item answer has no identity (or is an item-not-found
    error)."""
    (alice,) = room_with(server)
    carol = online(server, "carol@localhost/c")
    info = disco_info(carol, jid("room"), node="x-roomuser-item")
    if info.get("type") == "error":
        assert error_condition(info) == "item-not-found", show(info)
    else:
        assert identities(info) == [], show(info)


@pytest.mark.parametrize(
    "payload",
    [
        data_form({}, NS_MUC_REGISTER),
        data_form({"muc#register_roomnick": "Bobby"}, "urn:example:wrong"),
        f"<x xmlns='{NS_DATA}' type='submit'><field var='muc#register_roomnick'/></x>",
        "",
    ],
    ids=["no-nick", "wrong-form-type", "empty-nick", "no-form"],
)
def test_malformed_registration_form(server, payload):
    """s7.10 with XEP-0004/XEP-0068 (bad input): a submission without a nick, without a form, or whose
    FORM_TYPE is not muc#register gets <bad-request/> or <not-acceptable/>; the user does not become a
    member."""
    (alice,) = room_with(server)
    bob = online(server, "bob@localhost/b")
    answer, _ = iq(bob, "set", jid("room"), f"<query xmlns='{NS_REGISTER}'>{payload}</query>")
    assert answer.get("type") == "error", show(answer)
    assert error_condition(answer) in ("bad-request", "not-acceptable"), show(answer)
    assert "bob@localhost" not in listed_jids(admin_list(alice, "room", affiliation="member"))
    chat_works(alice, "room", "Alice")


# -- XEP-0410 self-ping ----------------------------------------------------------------------------------


def test_self_ping(server):
    """XEP-0410 s3.2: a ping from an occupant's real JID to its own occupant JID gets a result while joined,
    and <not-acceptable/> when not joined (s3.2 fixes the condition, not the error type)."""
    alice, bob = room_with(server, "bob")
    answer = self_ping(bob, "room", "Bob")
    assert answer.get("type") == "result" and answer.get("from") == jid("room", "Bob"), show(answer)
    assert alice.drain() == []
    carol = online(server, "carol@localhost/c")
    answer = self_ping(carol, "room", "Carol")
    assert_error(answer, "not-acceptable")
    leave(bob, "room", "Bob")
    answer = self_ping(bob, "room", "Bob")
    assert_error(answer, "not-acceptable")


# -- service policy: creation and limits (s10.1.1 "subject to local policies") ---------------------------


def test_room_creation_by_admins_only(muc_server):
    """s10.1.1 (creation subject to service policy), contract room_creation="admins": others get
    <not-allowed/> (cancel) from room/nick; a server admin creates; then anyone may enter."""
    server = muc_server(config={"server": {"admins": ["root@localhost"]}}, room_creation="admins")
    alice = online(server, "alice@localhost/phone")
    refused = the_error(join(alice, "room", "Alice"), "presence")
    assert_error(refused, "not-allowed", "cancel")
    assert refused.get("from") == jid("room", "Alice")
    assert not room_exists(alice, "room")
    root = online(server, "root@localhost/console")
    create(root, "room", "Root")
    enter(alice, "room", "Alice")


def test_max_rooms_per_user(muc_server):
    """Contract max_rooms_per_user: one more room than allowed gets <not-allowed/> (cancel); others may still
    create rooms, and a destroyed room frees a place."""
    server = muc_server(max_rooms_per_user=2)
    alice = online(server, "alice@localhost/phone")
    create(alice, "r1", "Alice", {"persistentroom": True})
    create(alice, "r2", "Alice", {"persistentroom": True})
    assert_error(the_error(join(alice, "r3", "Alice"), "presence"), "not-allowed", "cancel")
    assert not room_exists(alice, "r3")
    bob = online(server, "bob@localhost/b")
    create(bob, "b1", "Bob")
    answer, _ = destroy_room(alice, "r1")
    assert answer.get("type") == "result", show(answer)
    alice.drain()
    create(alice, "r3", "Alice")


def test_max_rooms(muc_server):
    """Contract max_rooms: a room beyond the service's limit gets <resource-constraint/> (wait)."""
    server = muc_server(max_rooms=2)
    alice = online(server, "alice@localhost/phone")
    create(alice, "r1", "Alice")
    bob = online(server, "bob@localhost/b")
    create(bob, "r2", "Bob")
    carol = online(server, "carol@localhost/c")
    assert_error(the_error(join(carol, "r3", "Carol"), "presence"), "resource-constraint", "wait")
    enter(carol, "r1", "Carol")  # existing rooms still work


# -- persistence -----------------------------------------------------------------------------------------


def test_persistent_room_outlives_its_occupants_and_a_plugin_reload(server):
    """s10.1.3 (muc#roomconfig_persistentroom), contract: a persistent room stays when empty; its
    configuration, affiliations and subject survive a plugin reload, and occupants present at the unload
    get 332."""
    alice = online(server, "alice@localhost/phone")
    create(alice, "keep", "Alice", {"persistentroom": True, "roomname": "Keep"})
    admin_ok(alice, "keep", jid="bob@localhost", affiliation="member")
    admin_ok(alice, "keep", jid="dave@localhost", affiliation="outcast")
    set_subject(alice, "keep", "Kept subject")
    leave(alice, "keep", "Alice")
    assert room_exists(alice, "keep")
    bob = online(server, "bob@localhost/b")
    enter(bob, "keep", "Bob")
    server.server.plugins.reload("muc")
    gone = presences(bob.drain(), jid("keep", "Bob"), "unavailable")
    assert len(gone) == 1 and 332 in codes(gone[0]), show(gone)
    info = disco_info(alice, jid("keep"))
    assert info.get("type") == "result", show(info)
    assert "muc_persistent" in features(info)
    assert room_identity("Keep") in identities(info)
    got = enter(bob, "keep", "Bob")
    assert item(own_presence(got, "keep", "Bob")).get("affiliation") == "member"
    assert got[-1].findtext("subject") == "Kept subject", show(got)
    dave = online(server, "dave@localhost/d")
    assert_error(the_error(join(dave, "keep", "Dave"), "presence"), "forbidden", "auth")
    got = enter(alice, "keep", "Alice")
    assert item(own_presence(got, "keep", "Alice")).get("affiliation") == "owner"
    assert listed_jids(admin_list(alice, "keep", affiliation="owner")) == {"alice@localhost"}


def test_temporary_room_does_not_survive_a_reload(server):
    """Contract (only persistent rooms are stored): a temporary room's occupants get 332 and the room is
    gone."""
    alice, bob = room_with(server, "bob")
    server.server.plugins.reload("muc")
    for client, nick in ((alice, "Alice"), (bob, "Bob")):
        gone = presences(client.drain(), jid("room", nick), "unavailable")
        assert len(gone) == 1 and 332 in codes(gone[0]), show(gone)
    assert not room_exists(alice, "room")


# -- malformed admin and owner requests ------------------------------------------------------------------


@pytest.mark.parametrize(
    "attrs",
    [
        {"nick": "Bob", "role": "overlord"},
        {"jid": "bob@localhost", "affiliation": "emperor"},
        {"nick": "Bob", "jid": "bob@localhost", "role": "none", "affiliation": "outcast"},
        {"role": "none"},
        {"affiliation": "member"},
    ],
    ids=["unknown-role", "unknown-affiliation", "role-and-affiliation", "no-nick", "no-jid"],
)
def test_malformed_admin_items_are_bad_requests(server, attrs):
    """s8, s9 (item syntax; s16 business rules: only one of role and affiliation per item): an item with an
    unknown role or affiliation, both, or no target gets <bad-request/> (modify); the room is unchanged."""
    alice, bob = room_with(server, "bob")
    answer, _ = admin(alice, "room", **attrs)
    assert_error(answer, "bad-request", "modify")
    assert bob.drain() == []
    chat_works(bob, "room", "Bob", alice)


def test_admin_query_without_items(server):
    """s9 (bad input): a muc#admin set or get with no item is an error (<bad-request/>); the room works on."""
    alice, bob = room_with(server, "bob")
    for type_ in ("set", "get"):
        answer, _ = iq(alice, type_, jid("room"), f"<query xmlns='{NS_ADMIN}'/>")
        assert_error(answer, "bad-request")
    chat_works(bob, "room", "Bob", alice)


@pytest.mark.parametrize(
    "payload",
    [
        data_form({"muc#roomconfig_roomname": "Hijacked"}, "urn:example:not-roomconfig"),
        data_form({"muc#roomconfig_maxusers": "many", "muc#roomconfig_roomname": "Hijacked"}),
        data_form({"muc#roomconfig_whois": "everybody", "muc#roomconfig_roomname": "Hijacked"}),
        data_form({"muc#roomconfig_persistentroom": "perhaps", "muc#roomconfig_roomname": "Hijacked"}),
        f"<x xmlns='{NS_DATA}' type='bogus'><field var='muc#roomconfig_roomname'><value>Hijacked</value>"
        "</field></x>",
        "",
    ],
    ids=[
        "wrong-form-type",
        "maxusers-not-a-number",
        "whois-unknown",
        "boolean-garbage",
        "form-type-attr",
        "no-form",
    ],
)
def test_malformed_configuration_forms(server, payload):
    """s10.2 / XEP-0004 (bad input): an unusable configuration submission gets <bad-request/> or
    <not-acceptable/>; the configuration is unchanged and the room works on."""
    alice, bob = room_with(server, "bob", config={"roomname": "Original"})
    answer, _ = iq(alice, "set", jid("room"), f"<query xmlns='{NS_OWNER}'>{payload}</query>")
    assert answer.get("type") == "error", show(answer)
    assert error_condition(answer) in ("bad-request", "not-acceptable"), show(answer)
    info = disco_info(bob, jid("room"))
    assert room_identity("Original") in identities(info), show(info)
    assert not [m for m in bob.drain() if 104 in codes(m)]
    chat_works(bob, "room", "Bob", alice)


def test_unknown_muc_owner_payload_is_an_error(server):
    """s10 (bad input): a muc#owner query with an unknown child is refused; the room stays."""
    alice, bob = room_with(server, "bob")
    answer, _ = iq(alice, "set", jid("room"), f"<query xmlns='{NS_OWNER}'><explode/></query>")
    assert answer.get("type") == "error", show(answer)
    assert room_exists(alice, "room")
    chat_works(bob, "room", "Bob", alice)
