"""Routing and the core delivery rules (RFC 6120 s8, s10; RFC 6121 s8.5), with no plugin enabled unless
a test says so: what each client receives for messages, presences and iqs to bare and full JIDs."""

from __future__ import annotations

from typing import Any

import pytest
from lxml import etree

from xmppd.xml.stanza import error_condition

# -- helpers ---------------------------------------------------------------------------------------------


@pytest.fixture
def server(make_xmpp):
    """No plugins at all: only the core's delivery rules."""
    return make_xmpp(enabled=[])


def drain(*clients: Any) -> None:
    for client in clients:
        client._pump()
        client.inbox.clear()


def online(server: Any, jid: str, priority: int | None = 0, *, create: bool = True) -> Any:
    """A logged-in client; with a priority it sends available presence with that priority and every
    resource of the account has its presence echo drained."""
    client = server.login(jid, create=create)
    if priority is not None:
        client.send(f"<presence><priority>{priority}</priority></presence>")
        client.expect(f"<presence to='{client.jid}'><priority>{priority}</priority></presence>")
        drain(*[c for c in server.clients if c.jid and c.jid.split("/")[0] == jid.split("/")[0]])
    return client


def assert_error(stanza: etree._Element, condition: str, *, id_: str | None = None, kind: str | None = None):
    assert stanza.get("type") == "error", etree.tostring(stanza)
    assert error_condition(stanza) == condition, etree.tostring(stanza)
    if id_ is not None:
        assert stanza.get("id") == id_
    if kind is not None:
        assert stanza.tag == kind


def got_message(client: Any, body: str) -> bool:
    """Whether the client's next stanza is a message with this body (False if it received nothing)."""
    client._pump()
    if not client.inbox:
        return False
    el = client.next()
    assert el.tag == "message" and el.findtext("body") == body, etree.tostring(el)
    return True


def msg(to: str, body: str, type_: str | None = None, id_: str = "m") -> str:
    type_attr = f" type='{type_}'" if type_ else ""
    return f"<message to='{to}'{type_attr} id='{id_}'><body>{body}</body></message>"


# -- messages to a bare JID (RFC 6121 s8.5.2) ------------------------------------------------------------


def test_chat_to_bare_goes_to_the_highest_priority_resource_only(server):
    phone = online(server, "alice@localhost/phone", 5)
    laptop = online(server, "alice@localhost/laptop", 10)
    tablet = online(server, "alice@localhost/tablet", 0)
    bob = online(server, "bob@localhost/pc")
    bob.send(msg("alice@localhost", "hi", "chat"))
    assert got_message(laptop, "hi")
    assert not got_message(phone, "hi")
    assert not got_message(tablet, "hi")
    bob.expect_nothing()


def test_chat_to_bare_goes_to_all_resources_tied_at_the_top(server):
    phone = online(server, "alice@localhost/phone", 5)
    laptop = online(server, "alice@localhost/laptop", 5)
    tablet = online(server, "alice@localhost/tablet", 1)
    bob = online(server, "bob@localhost/pc")
    bob.send(msg("alice@localhost", "tie", "chat"))
    assert got_message(phone, "tie") and got_message(laptop, "tie")
    assert not got_message(tablet, "tie")


@pytest.mark.parametrize("type_", [None, "normal", "headline"])
def test_normal_and_headline_to_bare_go_to_every_non_negative_resource(server, type_):
    phone = online(server, "alice@localhost/phone", 5)
    laptop = online(server, "alice@localhost/laptop", 0)
    hidden = online(server, "alice@localhost/hidden", -1)
    idle = online(server, "alice@localhost/idle", None)  # bound, no presence sent
    bob = online(server, "bob@localhost/pc")
    bob.send(msg("alice@localhost", "news", type_))
    assert got_message(phone, "news") and got_message(laptop, "news")
    assert not got_message(hidden, "news")
    assert not got_message(idle, "news")
    bob.expect_nothing()


def test_negative_priority_gets_messages_to_its_full_jid_only(server):
    hidden = online(server, "alice@localhost/hidden", -5)
    phone = online(server, "alice@localhost/phone", 0)
    bob = online(server, "bob@localhost/pc")
    bob.send(msg("alice@localhost", "to bare", "chat"))
    assert got_message(phone, "to bare")
    assert not got_message(hidden, "to bare")
    bob.send(msg("alice@localhost/hidden", "to full", "chat"))
    delivered = hidden.expect("<message from='bob@localhost/pc' to='alice@localhost/hidden'/>")
    assert delivered.findtext("body") == "to full"
    assert not got_message(phone, "to full")


def test_only_negative_resources_count_as_none_available(server):
    hidden = online(server, "alice@localhost/hidden", -1)
    bob = online(server, "bob@localhost/pc")
    bob.send(msg("alice@localhost", "anyone?", "chat", "n1"))
    assert_error(bob.next(), "service-unavailable", id_="n1", kind="message")
    assert not got_message(hidden, "anyone?")


@pytest.mark.parametrize("type_", ["chat", "normal", None])
def test_no_available_resource_is_service_unavailable_without_offline_storage(server, type_):
    server.adduser("alice@localhost")
    connected_but_not_available = online(server, "alice@localhost/idle", None, create=False)
    bob = online(server, "bob@localhost/pc")
    bob.send(msg("alice@localhost", "hello?", type_, "u1"))
    reply = bob.next()
    assert_error(reply, "service-unavailable", id_="u1", kind="message")
    assert reply.get("from") == "alice@localhost" and reply.get("to") == "bob@localhost/pc"
    connected_but_not_available.expect_nothing()


def test_headline_to_an_account_with_no_available_resource_is_dropped(server):
    server.adduser("alice@localhost")
    bob = online(server, "bob@localhost/pc")
    bob.send(msg("alice@localhost", "breaking news", "headline"))
    bob.expect_nothing()


def test_message_to_an_account_that_does_not_exist(server):
    bob = online(server, "bob@localhost/pc")
    bob.send(msg("nobody@localhost", "hello?", "chat", "x1"))
    assert_error(bob.next(), "service-unavailable", id_="x1")


def test_groupchat_to_bare_is_service_unavailable(server):
    alice = online(server, "alice@localhost/phone", 5)
    bob = online(server, "bob@localhost/pc")
    bob.send(msg("alice@localhost", "room talk", "groupchat", "g1"))
    assert_error(bob.next(), "service-unavailable", id_="g1", kind="message")
    alice.expect_nothing()


def test_message_to_own_bare_jid_reaches_own_resources(server):
    phone = online(server, "alice@localhost/phone", 1)
    laptop = online(server, "alice@localhost/laptop", 1)
    phone.send(msg("alice@localhost", "note to self", "normal"))
    assert got_message(phone, "note to self") and got_message(laptop, "note to self")


# -- messages to a full JID (RFC 6121 s8.5.3) ------------------------------------------------------------


def test_message_to_a_full_jid_goes_to_that_resource_whatever_its_presence(server):
    idle = online(server, "alice@localhost/idle", None)
    phone = online(server, "alice@localhost/phone", 10)
    bob = online(server, "bob@localhost/pc")
    bob.send(msg("alice@localhost/idle", "for idle", "chat"))
    assert got_message(idle, "for idle")
    assert not got_message(phone, "for idle")


@pytest.mark.parametrize("type_", ["chat", "normal"])
def test_message_to_a_missing_full_jid_falls_back_to_bare(server, type_):
    phone = online(server, "alice@localhost/phone", 1)
    bob = online(server, "bob@localhost/pc")
    bob.send(msg("alice@localhost/gone", "fallback", type_))
    delivered = phone.next()
    assert delivered.findtext("body") == "fallback"
    assert delivered.get("to") == "alice@localhost/gone"  # the stanza is not rewritten
    bob.expect_nothing()


def test_chat_to_a_missing_full_jid_with_no_resource_available(server):
    server.adduser("alice@localhost")
    bob = online(server, "bob@localhost/pc")
    bob.send(msg("alice@localhost/gone", "nobody home", "chat", "f1"))
    assert_error(bob.next(), "service-unavailable", id_="f1")


def test_headline_to_a_missing_full_jid_is_dropped(server):
    phone = online(server, "alice@localhost/phone", 1)
    bob = online(server, "bob@localhost/pc")
    bob.send(msg("alice@localhost/gone", "news", "headline"))
    phone.expect_nothing()
    bob.expect_nothing()


def test_groupchat_to_a_missing_full_jid_is_service_unavailable(server):
    phone = online(server, "alice@localhost/phone", 1)
    bob = online(server, "bob@localhost/pc")
    bob.send(msg("alice@localhost/gone", "room", "groupchat", "g2"))
    assert_error(bob.next(), "service-unavailable", id_="g2")
    phone.expect_nothing()


# -- iq (RFC 6120 s10.5.3, RFC 6121 s8.5) ----------------------------------------------------------------


def test_iq_to_a_full_jid_is_delivered_and_answered(server):
    alice = online(server, "alice@localhost/phone", None)
    bob = online(server, "bob@localhost/pc", None)
    bob.send("<iq type='get' id='v1' to='alice@localhost/phone'><query xmlns='jabber:iq:version'/></iq>")
    request = alice.expect("<iq type='get' id='v1' from='bob@localhost/pc' to='alice@localhost/phone'/>")
    assert request[0].tag == "{jabber:iq:version}query"
    alice.send("<iq type='result' id='v1' to='bob@localhost/pc'><query xmlns='jabber:iq:version'/></iq>")
    bob.expect(
        "<iq type='result' id='v1' from='alice@localhost/phone'><query xmlns='jabber:iq:version'/></iq>"
    )


def test_iq_to_a_missing_full_jid_is_service_unavailable(server):
    alice = online(server, "alice@localhost/phone", 1)
    bob = online(server, "bob@localhost/pc")
    bob.send("<iq type='get' id='i1' to='alice@localhost/gone'><query xmlns='urn:x'/></iq>")
    reply = bob.next()
    assert_error(reply, "service-unavailable", id_="i1", kind="iq")
    assert reply.get("from") == "alice@localhost/gone"
    alice.expect_nothing()


def test_iq_to_another_users_bare_jid_unhandled_is_service_unavailable(server):
    alice = online(server, "alice@localhost/phone", 1)
    bob = online(server, "bob@localhost/pc")
    bob.send("<iq type='get' id='i2' to='alice@localhost'><query xmlns='urn:x'/></iq>")
    reply = bob.next()
    assert_error(reply, "service-unavailable", id_="i2", kind="iq")
    assert reply.get("from") == "alice@localhost"
    alice.expect_nothing()  # never delivered to a resource
    bob.send("<iq type='set' id='i3' to='nobody@localhost'><query xmlns='urn:x'/></iq>")
    assert_error(bob.next(), "service-unavailable", id_="i3")


def test_iq_to_the_domain_unhandled_is_service_unavailable(server):
    bob = online(server, "bob@localhost/pc")
    reply = bob.request("<iq type='get' id='d1' to='localhost'><query xmlns='urn:x'/></iq>")
    assert_error(reply, "service-unavailable", id_="d1")
    assert reply.get("from") == "localhost"


def test_iq_without_to_is_for_the_senders_account(server):
    alice = online(server, "alice@localhost/phone", None)
    reply = alice.request("<iq type='get' id='s1'><query xmlns='urn:x'/></iq>")
    assert_error(reply, "service-unavailable", id_="s1")
    assert reply.get("to") == "alice@localhost/phone"
    assert reply.get("from") in (None, "alice@localhost")  # from the account (RFC 6120 s8.1.2.1)


def test_iq_without_to_answered_by_a_plugin_on_the_account(make_xmpp):
    server = make_xmpp(enabled=["disco"])
    alice = online(server, "alice@localhost/phone", None)
    reply = alice.request(
        "<iq type='get' id='s2'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
    )
    assert reply.get("type") == "result" and reply.get("id") == "s2"
    assert reply.get("from") in (None, "alice@localhost")
    identity = reply.find(".//{http://jabber.org/protocol/disco#info}identity")
    assert identity.get("category") == "account"
    explicit = alice.request(
        "<iq type='get' id='s3' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
    )
    assert explicit.get("type") == "result" and explicit.get("from") == "alice@localhost"


def test_iq_results_and_errors_to_nowhere_get_no_answer(server):
    server.adduser("alice@localhost")
    bob = online(server, "bob@localhost/pc")
    for stanza in (
        "<iq type='result' id='r1' to='alice@localhost/gone'/>",
        "<iq type='error' id='r2' to='alice@localhost/gone'><error type='cancel'>"
        "<item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
        "<iq type='result' id='r3' to='localhost'/>",
        "<iq type='result' id='r4' to='nobody@localhost'/>",
    ):
        bob.send(stanza)
        bob.expect_nothing()


# -- errors are never answered with errors (RFC 6120 s8.3.1) ---------------------------------------------


@pytest.mark.parametrize(
    "to", ["nobody@localhost", "nobody@localhost/x", "alice@localhost", "alice@localhost/gone", "localhost"]
)
def test_error_message_to_nobody_gets_nothing_back(server, to):
    server.adduser("alice@localhost")
    bob = online(server, "bob@localhost/pc")
    bob.send(
        f"<message type='error' id='e1' to='{to}'><error type='cancel'>"
        "<service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"
    )
    bob.expect_nothing()


def test_error_message_to_an_available_user_is_delivered(server):
    alice = online(server, "alice@localhost/phone", 1)
    bob = online(server, "bob@localhost/pc")
    bob.send("<message type='error' id='e2' to='alice@localhost/phone'><error type='cancel'/></message>")
    alice.expect("<message type='error' id='e2' from='bob@localhost/pc'/>")


def test_invalid_error_stanza_is_not_answered(server):
    bob = online(server, "bob@localhost/pc")
    bob.send("<message type='error' to='not@valid@jid'/>")
    bob.expect_nothing()


# -- validation of client stanzas (RFC 6120 s8.1, s8.2) --------------------------------------------------


def test_spoofed_from_is_overwritten(server):
    alice = online(server, "alice@localhost/phone", 1)
    bob = online(server, "bob@localhost/pc", 1)
    mallory = online(server, "mallory@localhost/m", 1)
    mallory.send(
        "<message from='bob@localhost/pc' to='alice@localhost' type='chat'><body>trust me</body></message>"
    )
    alice.expect("<message from='mallory@localhost/m' type='chat'><body>trust me</body></message>")
    mallory.send("<presence from='bob@localhost/pc' to='alice@localhost/phone'/>")
    alice.expect("<presence from='mallory@localhost/m'/>")
    mallory.send("<iq type='get' id='sp' from='localhost' to='alice@localhost/phone'><q xmlns='urn:x'/></iq>")
    alice.expect("<iq id='sp' from='mallory@localhost/m'/>")
    bob.expect_nothing()


@pytest.mark.parametrize("to", ["alice@", "@localhost", "a b@localhost", "alice@localhost/", "x@y@z"])
@pytest.mark.parametrize("kind", ["message", "presence", "iq"])
def test_invalid_to_is_jid_malformed(server, to, kind):
    bob = online(server, "bob@localhost/pc")
    payload = "<query xmlns='urn:x'/>" if kind == "iq" else ""
    type_ = " type='get'" if kind == "iq" else ""
    bob.send(f"<{kind}{type_} id='j1' to='{to}'>{payload}</{kind}>")
    reply = bob.next()
    assert_error(reply, "jid-malformed", id_="j1", kind=kind)
    assert reply.get("to") == "bob@localhost/pc"
    assert reply.get("type") == "error"
    assert bob.connected and not bob.stream_errors


@pytest.mark.parametrize(
    "stanza",
    [
        "<iq type='get' to='localhost'><query xmlns='urn:x'/></iq>",  # no id
        "<iq type='get' id='' to='localhost'><query xmlns='urn:x'/></iq>",  # empty id
        "<iq type='get' id='b' to='localhost'><a xmlns='urn:x'/><b xmlns='urn:x'/></iq>",  # two payloads
        "<iq type='set' id='b' to='localhost'/>",  # no payload
        "<iq id='b' to='localhost'><query xmlns='urn:x'/></iq>",  # no type
        "<iq type='fetch' id='b' to='localhost'><query xmlns='urn:x'/></iq>",
        "<message type='shout' id='b' to='alice@localhost'><body>x</body></message>",
        "<presence type='busy' id='b' to='alice@localhost'/>",
        "<presence type='invisible' id='b'/>",
    ],
)
def test_malformed_stanzas_are_bad_request(server, stanza):
    alice = online(server, "alice@localhost/phone", 1)
    bob = online(server, "bob@localhost/pc")
    bob.send(stanza)
    reply = bob.next()
    assert_error(reply, "bad-request")
    assert reply.get("to") == "bob@localhost/pc"
    alice.expect_nothing()
    assert bob.connected and not bob.stream_errors


def test_one_bad_stanza_does_not_affect_the_next(server):
    alice = online(server, "alice@localhost/phone", 1)
    bob = online(server, "bob@localhost/pc")
    bob.send("<message type='shout' to='alice@localhost'><body>x</body></message>")
    assert_error(bob.next(), "bad-request")
    bob.send(msg("alice@localhost", "fine", "chat"))
    assert got_message(alice, "fine")


# -- presence (RFC 6121 s4) ------------------------------------------------------------------------------


def test_initial_presence_is_echoed_to_all_available_resources_with_to_set(server):
    phone = online(server, "alice@localhost/phone", 1)
    idle = online(server, "alice@localhost/idle", None)
    laptop = server.login("alice@localhost/laptop", create=False)
    laptop.send("<presence><show>away</show><priority>3</priority></presence>")
    echo = laptop.expect("<presence from='alice@localhost/laptop' to='alice@localhost/laptop'/>")
    assert echo.findtext("show") == "away" and echo.findtext("priority") == "3"
    seen = phone.expect("<presence from='alice@localhost/laptop' to='alice@localhost/phone'/>")
    assert seen.findtext("show") == "away"
    idle.expect_nothing()  # not available: not a presence recipient
    phone.expect_nothing()
    laptop.expect_nothing()


def test_presence_priority_is_recorded_and_used_for_routing(server):
    phone = online(server, "alice@localhost/phone", 1)
    laptop = online(server, "alice@localhost/laptop", 2)
    bob = online(server, "bob@localhost/pc")
    bob.send(msg("alice@localhost", "first", "chat"))
    assert got_message(laptop, "first") and not got_message(phone, "first")
    phone.send("<presence><priority>9</priority></presence>")
    drain(phone, laptop)
    bob.send(msg("alice@localhost", "second", "chat"))
    assert got_message(phone, "second") and not got_message(laptop, "second")
    # a presence without <priority/> means priority 0
    phone.send("<presence/>")
    drain(phone, laptop)
    bob.send(msg("alice@localhost", "third", "chat"))
    assert got_message(laptop, "third") and not got_message(phone, "third")


@pytest.mark.parametrize(("given", "beats_one"), [("1000", True), ("abc", False), ("-1000", False)])
def test_out_of_range_and_bad_priorities(server, given, beats_one):
    odd = server.login("alice@localhost/odd")
    odd.send(f"<presence><priority>{given}</priority></presence>")
    drain(odd)
    one = online(server, "alice@localhost/one", 1)
    bob = online(server, "bob@localhost/pc")
    bob.send(msg("alice@localhost", "who", "chat"))
    assert got_message(odd, "who") is beats_one
    assert got_message(one, "who") is not beats_one


def test_unavailable_presence_stops_bare_delivery(server):
    phone = online(server, "alice@localhost/phone", 1)
    laptop = online(server, "alice@localhost/laptop", 1)
    bob = online(server, "bob@localhost/pc")
    phone.send("<presence type='unavailable'/>")
    phone.expect("<presence type='unavailable' from='alice@localhost/phone' to='alice@localhost/phone'/>")
    laptop.expect("<presence type='unavailable' from='alice@localhost/phone' to='alice@localhost/laptop'/>")
    bob.send(msg("alice@localhost", "still there?", "normal"))
    assert got_message(laptop, "still there?")
    assert not got_message(phone, "still there?")
    # still reachable at its full JID, and still connected
    bob.send(msg("alice@localhost/phone", "direct", "chat"))
    assert got_message(phone, "direct")
    laptop.send("<presence type='unavailable'/>")
    drain(phone, laptop)
    bob.send(msg("alice@localhost", "anyone?", "chat", "gone"))
    assert_error(bob.next(), "service-unavailable", id_="gone")


def test_directed_presence_to_another_users_full_and_bare_jid(server):
    phone = online(server, "alice@localhost/phone", 1)
    laptop = online(server, "alice@localhost/laptop", 0)
    idle = online(server, "alice@localhost/idle", None)
    bob = online(server, "bob@localhost/pc")
    bob.send("<presence to='alice@localhost/laptop'><status>hi laptop</status></presence>")
    seen = laptop.expect("<presence from='bob@localhost/pc' to='alice@localhost/laptop'/>")
    assert seen.findtext("status") == "hi laptop"
    phone.expect_nothing()
    bob.send("<presence to='alice@localhost'><status>hi all</status></presence>")
    for client in (phone, laptop):
        client.expect(
            "<presence from='bob@localhost/pc' to='alice@localhost'><status>hi all</status></presence>"
        )
    idle.expect_nothing()
    bob.expect_nothing()


def test_presence_to_nobody_is_silently_dropped(server):
    server.adduser("alice@localhost")
    bob = online(server, "bob@localhost/pc")
    for to in ("alice@localhost", "alice@localhost/gone", "nobody@localhost", "localhost"):
        bob.send(f"<presence to='{to}'/>")
        bob.expect_nothing()


def test_ending_session_sends_unavailable_to_other_resources(server):
    phone = online(server, "alice@localhost/phone", 1)
    laptop = online(server, "alice@localhost/laptop", 1)
    idle = online(server, "alice@localhost/idle", None)
    bob = online(server, "bob@localhost/pc", 1)
    phone.disconnect()
    laptop.expect("<presence type='unavailable' from='alice@localhost/phone' to='alice@localhost/laptop'/>")
    laptop.expect_nothing()
    idle.expect_nothing()
    bob.expect_nothing()  # contacts are the presence plugin's business
    bob.send(msg("alice@localhost/phone", "gone?", "chat"))
    assert got_message(laptop, "gone?")  # falls back to the bare JID


def test_ending_a_session_that_was_not_available_sends_nothing(server):
    phone = online(server, "alice@localhost/phone", 1)
    idle = online(server, "alice@localhost/idle", None)
    idle.disconnect()
    phone.expect_nothing()


def test_stream_close_ends_the_session_too(server):
    phone = online(server, "alice@localhost/phone", 1)
    laptop = online(server, "alice@localhost/laptop", 1)
    phone.send("</stream:stream>")
    assert phone.closed_by_server
    laptop.expect("<presence type='unavailable' from='alice@localhost/phone'/>")
    assert [str(s.jid) for s in server.server.sessions] == ["alice@localhost/laptop"]


# -- resource conflicts (RFC 6120 s7.7.2.2) --------------------------------------------------------------


def test_resource_conflict_replaces_the_old_session(server):
    old = online(server, "alice@localhost/phone", 1)
    other = online(server, "alice@localhost/laptop", 1)
    new = server.login("alice@localhost/phone", create=False)
    assert new.jid == "alice@localhost/phone"
    old._pump()
    assert old.stream_errors == ["conflict"]
    assert old.closed_by_server and not old.connected
    # the old session was available: the other resource hears it leave
    other.expect("<presence type='unavailable' from='alice@localhost/phone'/>")
    bob = online(server, "bob@localhost/pc")
    bob.send(msg("alice@localhost/phone", "to the new one", "chat"))
    assert got_message(new, "to the new one")
    assert [s for s in server.server.sessions if str(s.jid) == "alice@localhost/phone"] == [new.stream]


# -- several domains and remote domains ------------------------------------------------------------------


def test_messages_between_two_served_domains(make_xmpp):
    server = make_xmpp(domains=("a.example", "b.example"), enabled=[])
    alice = online(server, "alice@a.example/phone", 1)
    bob = online(server, "bob@b.example/pc", 1)
    alice.send(msg("bob@b.example", "across", "chat"))
    bob.expect("<message from='alice@a.example/phone' to='bob@b.example'><body>across</body></message>")
    bob.send(msg("alice@a.example/phone", "back", "chat"))
    alice.expect("<message from='bob@b.example/pc'><body>back</body></message>")
    alice.send(msg("nobody@b.example", "lost", "chat", "l1"))
    reply = alice.next()
    assert_error(reply, "service-unavailable", id_="l1")
    assert reply.get("from") == "nobody@b.example"
    # same local part on two domains: two different accounts
    other_alice = online(server, "alice@b.example/x", 1)
    bob.send(msg("alice@b.example", "which alice?", "chat"))
    assert got_message(other_alice, "which alice?")
    assert not got_message(alice, "which alice?")


def test_domain_names_are_case_insensitive_in_addresses(make_xmpp):
    server = make_xmpp(domains=("a.example",), enabled=[])
    alice = online(server, "alice@a.example/phone", 1)
    bob = online(server, "bob@a.example/pc", 1)
    bob.send(msg("Alice@A.Example", "case", "chat"))
    assert got_message(alice, "case")


def test_message_to_an_unserved_domain_without_s2s(server):
    bob = online(server, "bob@localhost/pc")
    bob.send(msg("someone@elsewhere.example", "far away", "chat", "r1"))
    reply = bob.next()
    assert_error(reply, "remote-server-not-found", id_="r1")
    assert reply.get("from") == "someone@elsewhere.example"


def test_stanzas_to_the_domain_with_no_plugin(server):
    bob = online(server, "bob@localhost/pc")
    bob.send("<message to='localhost' type='chat' id='h1'><body>hello server</body></message>")
    assert_error(bob.next(), "service-unavailable", id_="h1")
    bob.send("<message to='localhost' type='headline'><body>x</body></message>")
    bob.expect_nothing()
    bob.send("<presence to='localhost'/>")
    bob.expect_nothing()
