"""The muc plugin's stored rooms: what is kept, what a damaged record does, and per-nickname bounds."""

from __future__ import annotations

from lxml import etree
from xmppd.plugins.muc.room import MAX_SESSIONS

from xmppd.xml.stanza import error_condition

SERVICE = "conference.localhost"
NS_INFO = "http://jabber.org/protocol/disco#info"
NS_MUC = "http://jabber.org/protocol/muc"
NS_OWNER = "http://jabber.org/protocol/muc#owner"
QUIET = {"ping": {"keepalive_interval": 0}}


def stored(server, name):
    found = []
    server.server.storage.get(SERVICE, "muc_rooms", name).addCallback(found.append)
    return found[0]


def info(client, room):
    return client.request(f"<iq type='get' id='i' to='{room}@{SERVICE}'><query xmlns='{NS_INFO}'/></iq>")


def test_a_persistent_room_is_stored_and_read_back_and_a_damaged_record_is_kept_aside(make_xmpp):
    server = make_xmpp(options={**QUIET, "muc": {"persistent_rooms": True}})
    alice = server.login("alice@localhost/phone", available=True)
    alice.send(f"<presence to='good@{SERVICE}/Alice'><x xmlns='{NS_MUC}'/></presence>")
    alice.request(
        f"<iq type='set' id='c' to='good@{SERVICE}'><query xmlns='{NS_OWNER}'>"
        "<x xmlns='jabber:x:data' type='submit'><field var='muc#roomconfig_roomname'><value>Good</value>"
        "</field></x></query></iq>"
    )
    doc = stored(server, "good")
    assert doc["config"]["name"] == "Good" and doc["affiliations"] == {"alice@localhost": "owner"}
    damaged = {"config": {"maxusers": "lots"}, "affiliations": {}}
    server.server.storage.set(SERVICE, "muc_rooms", "bad", damaged)
    server.server.plugins.reload("muc")  # rooms are read from storage again
    alice.drain()
    name = info(alice, "good")[0].find(f"{{{NS_INFO}}}identity").get("name")
    assert name == "Good"
    assert error_condition(info(alice, "bad")) == "item-not-found"
    assert stored(server, "bad") == damaged  # not deleted: the operator can repair it


def test_one_user_has_a_bounded_number_of_sessions_under_one_nickname(make_xmpp):
    server = make_xmpp(options=QUIET, config={"server": {"max_sessions_per_user": MAX_SESSIONS + 5}})
    server.adduser("alice@localhost")
    clients = [server.login(f"alice@localhost/r{i}", create=False) for i in range(MAX_SESSIONS + 1)]
    for client in clients:
        client.send(f"<presence to='room@{SERVICE}/Alice'/>")
    last = [el for el in clients[-1].drain() if el.tag == "presence"]
    assert [error_condition(el) for el in last] == ["resource-constraint"]
    for client in clients[:-1]:
        assert not any(el.get("type") == "error" for el in client.drain())
    clients[0].send(f"<message to='room@{SERVICE}' type='groupchat'><body>still here</body></message>")
    assert any(
        isinstance(el, etree._Element) and el.findtext("body") == "still here" for el in clients[1].drain()
    )


def test_a_room_its_owner_never_configures_is_destroyed_after_the_lock_timeout(make_xmpp):
    """A locked new room (XEP-0045 s10.1.1) left unconfigured goes after lock_timeout, freeing its name."""
    server = make_xmpp(options={**QUIET, "muc": {"lock_timeout": 60.0}})
    alice = server.login("alice@localhost/phone", available=True)
    alice.send(f"<presence to='slow@{SERVICE}/Alice'><x xmlns='{NS_MUC}'/></presence>")
    alice.drain()
    server.advance(59)
    assert alice.drain() == []
    server.advance(2)
    (gone,) = [el for el in alice.drain() if el.tag == "presence"]
    destroy = gone.find("{http://jabber.org/protocol/muc#user}x/{http://jabber.org/protocol/muc#user}destroy")
    assert gone.get("type") == "unavailable" and destroy is not None
    assert "not configured" in destroy.findtext("{http://jabber.org/protocol/muc#user}reason")
    assert error_condition(info(alice, "slow")) == "item-not-found"


def test_a_persistent_rooms_history_outlives_a_reload_and_goes_with_the_room(make_xmpp):
    """History of a persistent room is kept in the archive store (its last max_history messages): after the
    service restarts, a newcomer still gets it, with its original delay stamps (XEP-0045 s7.2.15)."""
    server = make_xmpp(
        options={**QUIET, "muc": {"persistent_rooms": True, "max_history": 3, "default_history": 3}}
    )
    alice = server.login("alice@localhost/phone", available=True)
    alice.send(f"<presence to='keep@{SERVICE}/Alice'/>")
    for n in range(5):
        alice.send(f"<message to='keep@{SERVICE}' type='groupchat'><body>m{n}</body></message>")
    server.server.plugins.reload("muc")
    bob = server.login("bob@localhost/pc", available=True)
    bob.send(f"<presence to='keep@{SERVICE}/Bob'/>")
    history = [
        el for el in bob.drain() if el.tag == "message" and el.find("{urn:xmpp:delay}delay") is not None
    ]
    assert [m.findtext("body") for m in history] == ["m2", "m3", "m4"]
    assert {m.get("from") for m in history} == {f"keep@{SERVICE}/Alice"}
    found = []
    server.server.storage.archive_users(SERVICE, "muc_history").addCallback(found.append)
    assert found == [["keep"]]
    owner = f"<iq type='set' id='d' to='keep@{SERVICE}'><query xmlns='{NS_OWNER}'><destroy/></query></iq>"
    alice.drain()  # the 332 of the reload
    assert alice.request(owner).get("type") == "result"
    server.server.storage.archive_users(SERVICE, "muc_history").addCallback(found.append)
    assert found[-1] == []
