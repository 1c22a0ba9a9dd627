"""Offline messages (plugins/offline.py, XEP-0160) on a memory server: what a sender and a recipient who
was offline see."""

from __future__ import annotations

from typing import Any

import pytest
from lxml import etree
from twisted.internet.defer import Deferred
from xmppd.plugins.offline import (
    DROP,
    REFUSE,
    STORE,
    KeyedSerializer,
    QueueFull,
    storage_decision,
)

from xmppd.config import DEFAULT_PLUGINS
from xmppd.storage.base import ArchiveQuery
from xmppd.storage.memory import MemoryStorage
from xmppd.testing import parse_pattern
from xmppd.xml.delay import delay_stamp
from xmppd.xml.stanza import error_condition

ENABLED = [*DEFAULT_PLUGINS, "offline"]
QUIET = {"ping": {"keepalive_interval": 0}}  # no keepalive pings in the clients' inboxes
NS_DELAY = "urn:xmpp:delay"
NS_INFO = "http://jabber.org/protocol/disco#info"


@pytest.fixture
def server(make_xmpp):
    return make_xmpp(enabled=ENABLED, options=QUIET)


def chat(to: str, body: str, id_: str = "m", type_: str = "chat", extra: str = "") -> str:
    return f"<message to='{to}' type='{type_}' id='{id_}'><body>{body}</body>{extra}</message>"


def come_online(server: Any, jid: str, priority: int = 0, *, create: bool = False) -> Any:
    """Log in and send initial presence, without reading anything yet (offline messages come first)."""
    client = server.login(jid, create=create)
    client.send(f"<presence><priority>{priority}</priority></presence>")
    return client


def bodies(stanzas: list[etree._Element]) -> list[str]:
    return [s.findtext("body") for s in stanzas if s.tag == "message"]


def stored(server: Any, user: str) -> list[str]:
    """The messages kept for ``user`` (the plugin's archive store), as XML text."""
    result: list[Any] = []
    server.server.storage.archive_query("localhost", "offline", user, ArchiveQuery()).addCallback(
        result.append
    )
    return [item.value for item in result[0].items]


# -- storing and delivering (XEP-0160 s2) ----------------------------------------------------------------


def test_message_to_an_offline_user_is_delivered_with_a_delay_stamp_on_next_presence(server):
    server.adduser("bob@localhost")
    alice = server.login("alice@localhost/phone", available=True)
    server.advance(1_700_000_000.25)
    sent_at = server.clock.seconds()
    alice.send(chat("bob@localhost", "are you there?", "m1"))
    alice.expect_nothing()  # stored: no error comes back
    server.advance(3600)
    bob = come_online(server, "bob@localhost/pc")
    message = bob.expect(
        "<message from='alice@localhost/phone' to='bob@localhost' type='chat' id='m1'>"
        "<body>are you there?</body>"
        f"<delay xmlns='{NS_DELAY}' from='localhost' stamp='2023-11-14T22:13:20.250Z'/>"
        "</message>"
    )
    assert delay_stamp(sent_at) == "2023-11-14T22:13:20.250Z"
    assert message.find(f"{{{NS_DELAY}}}delay").text == "Offline Storage"
    bob.expect("<presence from='bob@localhost/pc' to='bob@localhost/pc'/>")
    bob.expect_nothing()
    assert stored(server, "bob") == []


def test_messages_are_delivered_in_the_order_they_arrived_and_only_once(server):
    server.adduser("bob@localhost")
    alice = server.login("alice@localhost/phone", available=True)
    carol = server.login("carol@localhost/pc", available=True)
    alice.send(chat("bob@localhost", "one", "1"))
    carol.send(chat("bob@localhost", "two", "2", type_="normal"))
    alice.send(chat("bob@localhost/gone", "three", "3"))  # to an absent resource: stored too (s8.5.3.2.1)
    carol.send("<message to='bob@localhost' id='4'><subject>four</subject><body>four</body></message>")
    bob = come_online(server, "bob@localhost/pc")
    got = bob.drain()
    assert bodies(got) == ["one", "two", "three", "four"]
    assert [m.get("from") for m in got if m.tag == "message"] == [
        "alice@localhost/phone",
        "carol@localhost/pc",
        "alice@localhost/phone",
        "carol@localhost/pc",
    ]
    assert got[2].get("to") == "bob@localhost/gone"
    bob.disconnect()
    again = come_online(server, "bob@localhost/laptop")
    assert bodies(again.drain()) == []


def test_a_full_store_answers_service_unavailable(make_xmpp):
    server = make_xmpp(enabled=ENABLED, options={**QUIET, "offline": {"max_messages": 2}})
    server.adduser("bob@localhost")
    alice = server.login("alice@localhost/phone", available=True)
    alice.send(chat("bob@localhost", "one", "1"))
    alice.send(chat("bob@localhost", "two", "2"))
    alice.expect_nothing()
    alice.send(chat("bob@localhost", "three", "3"))
    error = alice.expect(
        "<message type='error' id='3' from='bob@localhost' to='alice@localhost/phone'>"
        "<error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>"
        "</message>"
    )
    assert error.find("body") is None  # the error does not echo the message
    bob = come_online(server, "bob@localhost/pc")
    assert bodies(bob.drain()) == ["one", "two"]
    bob.disconnect()
    alice.send(chat("bob@localhost", "four", "4"))  # room again once delivered
    alice.expect_nothing()


def test_headline_and_groupchat_are_not_stored(server):
    server.adduser("bob@localhost")
    alice = server.login("alice@localhost/phone", available=True)
    alice.send(chat("bob@localhost", "news", "h", type_="headline"))
    alice.expect_nothing()  # RFC 6121 s8.5.2.2.1: silently dropped
    alice.send(chat("bob@localhost", "room", "g", type_="groupchat"))
    assert error_condition(alice.next()) == "service-unavailable"
    bob = come_online(server, "bob@localhost/pc")
    assert bodies(bob.drain()) == []


def test_a_negative_priority_session_does_not_receive_them_until_it_raises_its_priority(server):
    server.adduser("bob@localhost")
    alice = server.login("alice@localhost/phone", available=True)
    shy = come_online(server, "bob@localhost/shy", priority=-1)
    shy.expect("<presence><priority>-1</priority></presence>")
    alice.send(chat("bob@localhost", "stored despite shy", "1"))  # no resource with priority >= 0
    alice.expect_nothing()
    shy.expect_nothing()
    shy.send("<presence><show>away</show><priority>-5</priority></presence>")
    shy.expect("<presence><show>away</show></presence>")
    shy.expect_nothing()
    shy.send("<presence><priority>1</priority></presence>")
    assert bodies(shy.drain()) == ["stored despite shy"]
    assert stored(server, "bob") == []


def test_a_later_non_negative_session_gets_what_a_negative_one_left(server):
    server.adduser("bob@localhost")
    alice = server.login("alice@localhost/phone", available=True)
    shy = come_online(server, "bob@localhost/shy", priority=-1)
    shy.drain()
    alice.send(chat("bob@localhost", "hello", "1"))
    bob = come_online(server, "bob@localhost/pc", priority=0)
    assert bodies(bob.drain()) == ["hello"]
    assert bodies(shy.drain()) == []


def test_nothing_is_stored_while_another_resource_is_online(server):
    server.adduser("bob@localhost")
    alice = server.login("alice@localhost/phone", available=True)
    pc = come_online(server, "bob@localhost/pc")
    pc.drain()
    alice.send(chat("bob@localhost", "live", "1"))
    assert bodies(pc.drain()) == ["live"]
    assert stored(server, "bob") == []
    phone = come_online(server, "bob@localhost/phone")
    assert bodies(phone.drain()) == []


def test_chat_state_only_messages_are_dropped_without_an_error(server):
    server.adduser("bob@localhost")
    alice = server.login("alice@localhost/phone", available=True)
    alice.send(
        "<message to='bob@localhost' type='chat' id='c'><thread>t1</thread>"
        "<composing xmlns='http://jabber.org/protocol/chatstates'/></message>"
    )
    alice.send("<message to='bob@localhost' type='chat' id='e'/>")
    alice.expect_nothing()
    alice.send(
        chat(
            "bob@localhost",
            "with a state",
            "s",
            extra="<active xmlns='http://jabber.org/protocol/chatstates'/>",
        )
    )
    bob = come_online(server, "bob@localhost/pc")
    got = [s for s in bob.drain() if s.tag == "message"]
    assert [m.get("id") for m in got] == ["s"]


def test_no_store_hint_is_honoured_and_the_sender_told(server):
    server.adduser("bob@localhost")
    alice = server.login("alice@localhost/phone", available=True)
    alice.send(chat("bob@localhost", "secret", "n", extra="<no-store xmlns='urn:xmpp:hints'/>"))
    error = alice.next()
    assert error.get("id") == "n" and error_condition(error) == "service-unavailable"
    bob = come_online(server, "bob@localhost/pc")
    assert bodies(bob.drain()) == []


def test_store_hint_keeps_even_a_chat_state(server):
    server.adduser("bob@localhost")
    alice = server.login("alice@localhost/phone", available=True)
    alice.send(
        "<message to='bob@localhost' type='chat' id='k'><gone xmlns='http://jabber.org/protocol/chatstates'/>"
        "<store xmlns='urn:xmpp:hints'/></message>"
    )
    alice.expect_nothing()
    bob = come_online(server, "bob@localhost/pc")
    assert [s.get("id") for s in bob.drain() if s.tag == "message"] == ["k"]


def test_messages_to_unknown_accounts_are_still_refused(server):
    alice = server.login("alice@localhost/phone", available=True)
    alice.send(chat("nobody@localhost", "hello?", "x"))
    assert error_condition(alice.next()) == "service-unavailable"


def test_payloads_survive_storage_namespace_neutral(server):
    server.adduser("bob@localhost")
    alice = server.login("alice@localhost/phone", available=True)
    alice.send(
        "<message to='bob@localhost' type='chat' id='p' xml:lang='fr'><body>salut &amp; &lt;3</body>"
        "<request xmlns='urn:xmpp:receipts'/><x xmlns='jabber:x:oob'><url>http://a/b?c=1&amp;d=2</url></x>"
        "</message>"
    )
    bob = come_online(server, "bob@localhost/pc")
    message = bob.drain()[0]
    assert message.tag == "message"  # no jabber:client namespace on the stanza or its body
    assert message.findtext("body") == "salut & <3"
    assert message.get("{http://www.w3.org/XML/1998/namespace}lang") == "fr"
    assert message.find("{urn:xmpp:receipts}request") is not None
    assert message.findtext("{jabber:x:oob}x/{jabber:x:oob}url") == "http://a/b?c=1&d=2"


def test_msgoffline_is_advertised(server):
    alice = server.login("alice@localhost/phone")
    alice.send(f"<iq type='get' id='d' to='localhost'><query xmlns='{NS_INFO}'/></iq>")
    features = {f.get("var") for f in alice.next().iter(f"{{{NS_INFO}}}feature")}
    assert "msgoffline" in features


def test_without_the_plugin_the_core_bounces(make_xmpp):
    server = make_xmpp(enabled=[name for name in DEFAULT_PLUGINS if name != "offline"])
    server.adduser("bob@localhost")
    alice = server.login("alice@localhost/phone", available=True)
    alice.send(chat("bob@localhost", "hi", "1"))
    assert error_condition(alice.next()) == "service-unavailable"


def test_messages_stored_before_archives_are_delivered_first_and_moved(make_xmpp):
    """An older xmppd kept a user's offline messages as one keyval list; they are delivered, in order, before
    newer ones, and the list is gone afterwards. The plugin lists such users once when it loads, so users
    without a list cost no storage read at login."""
    storage = MemoryStorage()
    storage.start()
    old = [
        "<message xmlns='jabber:client' from='carol@localhost/x' to='bob@localhost' type='chat'>"
        f"<body>old {n}</body></message>"
        for n in range(2)
    ]
    storage.set("localhost", "offline", "bob", old)
    server = make_xmpp(enabled=ENABLED, options=QUIET, storage=storage)
    server.adduser("bob@localhost")
    alice = server.login("alice@localhost/phone", available=True)
    alice.send(chat("bob@localhost", "new", "n1"))
    bob = come_online(server, "bob@localhost/pc")
    assert bodies(bob.drain()) == ["old 0", "old 1", "new"]
    found: list[Any] = []
    server.server.storage.get("localhost", "offline", "bob").addCallback(found.append)
    assert found == [None] and stored(server, "bob") == []


# -- storage calls that take time ------------------------------------------------------------------------


class SlowArchive:
    """The plugin's archive, with every call answered only when the clock moves (like a database)."""

    def __init__(self, archive: Any, clock: Any) -> None:
        self.archive = archive
        self.clock = clock

    def _later(self, d: Deferred) -> Deferred:
        slow: Deferred = Deferred()
        d.addCallback(lambda value: self.clock.callLater(0.1, slow.callback, value))
        return slow

    def query(self, user: str, query: Any = None) -> Deferred:
        return self._later(self.archive.query(user, query))

    def append(self, user: str, value: str, **kwargs: Any) -> Deferred:
        return self._later(self.archive.append(user, value, **kwargs))

    def delete(self, user: str, **kwargs: Any) -> Deferred:
        return self._later(self.archive.delete(user, **kwargs))


def test_messages_arriving_together_are_all_kept_with_slow_storage(server):
    plugin = server.server.plugins.instance("localhost", "offline")
    server.adduser("bob@localhost")
    alice = server.login("alice@localhost/phone", available=True)
    plugin.archive = SlowArchive(plugin.archive, server.clock)
    for n in range(5):
        alice.send(chat("bob@localhost", f"m{n}", str(n)))
    assert len(plugin.queue) == 1  # one account busy, its operations queued
    server.advance(0.1)
    bob = come_online(server, "bob@localhost/pc")  # delivery waits behind the stores
    for _ in range(12):
        server.advance(0.1)
    assert bodies(bob.drain()) == [f"m{n}" for n in range(5)]
    assert len(plugin.queue) == 0  # the table empties when idle
    assert stored(server, "bob") == []
    alice.expect_nothing()


class CountingArchive:
    """The plugin's archive, counting the queries made of it."""

    def __init__(self, archive: Any) -> None:
        self.archive = archive
        self.queries: list[str] = []

    def query(self, user: str, query: Any = None) -> Deferred:
        self.queries.append(user)
        return self.archive.query(user, query)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.archive, name)


def test_only_users_with_messages_waiting_cost_a_storage_read_when_they_come_online(make_xmpp):
    storage = MemoryStorage()
    storage.start()
    storage.archive_append("localhost", "offline", "carol", chat("carol@localhost", "early"), when=1.0)
    server = make_xmpp(enabled=ENABLED, options=QUIET, storage=storage)
    plugin = server.server.plugins.instance("localhost", "offline")
    plugin.archive = archive = CountingArchive(plugin.archive)
    server.adduser("bob@localhost")
    server.adduser("carol@localhost")
    come_online(server, "bob@localhost/pc").disconnect()
    assert archive.queries == []  # nothing waits for bob: no read at his initial presence
    carol = come_online(server, "carol@localhost/pc")  # stored before the server started
    assert bodies(carol.drain()) == ["early"] and archive.queries == ["carol"]
    alice = server.login("alice@localhost/phone", available=True)
    alice.send(chat("bob@localhost", "later", "1"))
    archive.queries.clear()
    bob = come_online(server, "bob@localhost/laptop")
    assert bodies(bob.drain()) == ["later"] and "bob" in archive.queries
    archive.queries.clear()
    come_online(server, "bob@localhost/tablet")
    come_online(server, "carol@localhost/tablet")
    assert archive.queries == []  # all delivered: nothing waits any more


def test_a_session_that_leaves_before_the_read_finishes_leaves_them_stored(server):
    plugin = server.server.plugins.instance("localhost", "offline")
    server.adduser("bob@localhost")
    alice = server.login("alice@localhost/phone", available=True)
    alice.send(chat("bob@localhost", "keep me", "1"))
    plugin.archive = SlowArchive(plugin.archive, server.clock)
    bob = come_online(server, "bob@localhost/pc")
    bob.disconnect()
    server.advance(1)
    assert len(stored(server, "bob")) == 1


# -- pieces ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("xml", "decision"),
    [
        ("<message><body>hi</body></message>", STORE),
        ("<message><subject>s</subject></message>", STORE),
        ("<message><received xmlns='urn:xmpp:receipts' id='x'/></message>", STORE),
        ("<message><composing xmlns='http://jabber.org/protocol/chatstates'/></message>", DROP),
        (
            "<message><thread>t</thread><paused xmlns='http://jabber.org/protocol/chatstates'/></message>",
            DROP,
        ),
        ("<message/>", DROP),
        ("<message><body>x</body><no-store xmlns='urn:xmpp:hints'/></message>", REFUSE),
        ("<message><body>x</body><no-permanent-store xmlns='urn:xmpp:hints'/></message>", STORE),
        (
            "<message><active xmlns='http://jabber.org/protocol/chatstates'/>"
            "<store xmlns='urn:xmpp:hints'/></message>",
            STORE,
        ),
    ],
)
def test_storage_decision(xml, decision):
    assert storage_decision(parse_pattern(xml)) == decision


def test_delay_stamp_is_utc_with_milliseconds():
    assert delay_stamp(0) == "1970-01-01T00:00:00.000Z"
    assert delay_stamp(1031699305.5) == "2002-09-10T23:08:25.500Z"


def test_keyed_serializer_runs_one_at_a_time_per_key_and_bounds_its_queues():
    queue = KeyedSerializer(max_keys=2, max_queued=1)
    first: Deferred = Deferred()
    other: Deferred = Deferred()
    order: list[str] = []
    a1 = queue.run("a", lambda: first)
    a2 = queue.run("a", lambda: order.append("a2"))
    b1 = queue.run("b", lambda: order.append("b1") or other)
    assert order == ["b1"]  # another key does not wait
    failures: list[Any] = []
    queue.run("a", lambda: None).addErrback(failures.append)  # a's queue is full
    queue.run("c", lambda: None).addErrback(failures.append)  # too many keys busy
    assert [f.check(QueueFull) for f in failures] == [QueueFull, QueueFull]
    assert len(queue) == 2
    first.callback("done")
    assert order == ["b1", "a2"]
    assert a1.result == "done" and a2.called
    assert len(queue) == 1
    other.callback(None)
    assert b1.called and len(queue) == 0
