"""vcard-temp (plugins/vcard.py, XEP-0054) and private XML storage (plugins/private.py, XEP-0049) on a
memory server."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import deferLater

from xmppd.config import DEFAULT_PLUGINS

NS_INFO = "http://jabber.org/protocol/disco#info"
VCARD = "<vCard xmlns='vcard-temp'><FN>{fn}</FN><NICKNAME>{nick}</NICKNAME></vCard>"


@pytest.fixture
def server(make_xmpp):
    return make_xmpp(enabled=[*DEFAULT_PLUGINS, "vcard", "private"])


def error_of(stanza) -> str | None:
    error = stanza.find("error")
    if error is None:
        return None
    return next(c.tag.split("}")[1] for c in error if not c.tag.endswith("}text"))


# -- vcard-temp ----------------------------------------------------------------------------------------


def test_vcard_announced_in_domain_disco(server):
    alice = server.login("alice@localhost/phone")
    answer = alice.request(f"<iq type='get' id='d1' to='localhost'><query xmlns='{NS_INFO}'/></iq>")
    features = {f.get("var") for f in answer.iter(f"{{{NS_INFO}}}feature")}
    assert "vcard-temp" in features


def test_own_vcard_empty_until_set_then_returned(server):
    alice = server.login("alice@localhost/phone")
    alice.send("<iq type='get' id='g1'><vCard xmlns='vcard-temp'/></iq>")
    empty = alice.expect("<iq type='result' id='g1'><vCard xmlns='vcard-temp'/></iq>")
    assert len(empty.find("{vcard-temp}vCard")) == 0  # XEP-0054 s3.1: an empty vCard
    alice.send(f"<iq type='set' id='s1'>{VCARD.format(fn='Alice Liddell', nick='al')}</iq>")
    alice.expect("<iq type='result' id='s1'/>")
    alice.send("<iq type='get' id='g2' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>")
    alice.expect(
        "<iq type='result' id='g2'><vCard xmlns='vcard-temp'><FN>Alice Liddell</FN>"
        "<NICKNAME>al</NICKNAME></vCard></iq>"
    )


def test_vcard_set_replaces_the_whole_vcard(server):
    alice = server.login("alice@localhost/phone")
    alice.send(f"<iq type='set' id='s1'>{VCARD.format(fn='One', nick='first')}</iq>")
    alice.expect("<iq type='result' id='s1'/>")
    alice.send("<iq type='set' id='s2'><vCard xmlns='vcard-temp'><FN>Two</FN></vCard></iq>")
    alice.expect("<iq type='result' id='s2'/>")
    answer = alice.request("<iq type='get' id='g'><vCard xmlns='vcard-temp'/></iq>")
    vcard = answer.find("{vcard-temp}vCard")
    assert vcard.findtext("{vcard-temp}FN") == "Two"
    assert vcard.find("{vcard-temp}NICKNAME") is None  # s3.2: no partial updates


def test_other_users_read_a_vcard(server):
    alice = server.login("alice@localhost/phone")
    alice.send(f"<iq type='set' id='s1'>{VCARD.format(fn='Alice', nick='al')}</iq>")
    alice.expect("<iq type='result' id='s1'/>")
    bob = server.login("bob@localhost/pc")
    bob.send("<iq type='get' id='v3' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>")
    answer = bob.expect(
        "<iq type='result' id='v3' from='alice@localhost' to='bob@localhost/pc'>"
        "<vCard xmlns='vcard-temp'><FN>Alice</FN></vCard></iq>"
    )
    assert answer.find("{vcard-temp}vCard").get("xmlns") is None
    alice.expect_nothing()  # s3.3: the server answers, the iq is not forwarded


def test_vcard_of_another_account_without_one_or_of_nobody(server):
    server.adduser("carol@localhost")
    bob = server.login("bob@localhost/pc")
    answer = bob.request("<iq type='get' id='v1' to='carol@localhost'><vCard xmlns='vcard-temp'/></iq>")
    assert answer.get("type") == "error" and error_of(answer) == "item-not-found"
    answer = bob.request("<iq type='get' id='v2' to='nobody@localhost'><vCard xmlns='vcard-temp'/></iq>")
    assert answer.get("type") == "error" and error_of(answer) == "service-unavailable"


def test_vcard_of_the_domain(server):
    bob = server.login("bob@localhost/pc")
    answer = bob.request("<iq type='get' id='v1' to='localhost'><vCard xmlns='vcard-temp'/></iq>")
    assert error_of(answer) == "item-not-found"
    answer = bob.request(f"<iq type='set' id='v2' to='localhost'>{VCARD.format(fn='x', nick='y')}</iq>")
    assert error_of(answer) == "forbidden"


def test_setting_another_users_vcard_is_forbidden(server):
    alice = server.login("alice@localhost/phone")
    alice.send(f"<iq type='set' id='s1'>{VCARD.format(fn='Alice', nick='al')}</iq>")
    alice.expect("<iq type='result' id='s1'/>")
    mallory = server.login("mallory@localhost/x")
    mallory.send(f"<iq type='set' id='m1' to='alice@localhost'>{VCARD.format(fn='Evil', nick='e')}</iq>")
    answer = mallory.expect("<iq type='error' id='m1'><error type='auth'/></iq>")
    assert error_of(answer) == "forbidden"
    answer = alice.request("<iq type='get' id='g'><vCard xmlns='vcard-temp'/></iq>")
    assert answer.find("{vcard-temp}vCard").findtext("{vcard-temp}FN") == "Alice"


def test_vcard_over_max_size_is_refused_and_not_stored(make_xmpp):
    xmpp = make_xmpp(enabled=["vcard"], options={"vcard": {"max_size": 2000}})
    alice = xmpp.login("alice@localhost/phone")
    alice.send(f"<iq type='set' id='s1'>{VCARD.format(fn='Small', nick='s')}</iq>")
    alice.expect("<iq type='result' id='s1'/>")
    photo = "A" * 2100
    alice.send(
        f"<iq type='set' id='s2'><vCard xmlns='vcard-temp'><FN>Big</FN><PHOTO><BINVAL>{photo}</BINVAL>"
        "</PHOTO></vCard></iq>"
    )
    answer = alice.expect("<iq type='error' id='s2'><error type='modify'/></iq>")
    assert error_of(answer) == "not-acceptable"
    answer = alice.request("<iq type='get' id='g'><vCard xmlns='vcard-temp'/></iq>")
    assert answer.find("{vcard-temp}vCard").findtext("{vcard-temp}FN") == "Small"


def test_vcard_keeps_attributes_nested_elements_and_foreign_namespaces(server):
    alice = server.login("alice@localhost/phone")
    alice.send(
        "<iq type='set' id='s1'><vCard xmlns='vcard-temp' version='3.0'>"
        "<TEL><HOME/><VOICE/><NUMBER>555 &amp; 1212</NUMBER></TEL>"
        "<x:extra xmlns:x='urn:example:x' a='1'>text</x:extra></vCard></iq>"
    )
    alice.expect("<iq type='result' id='s1'/>")
    answer = alice.request("<iq type='get' id='g'><vCard xmlns='vcard-temp'/></iq>")
    vcard = answer.find("{vcard-temp}vCard")
    assert vcard.get("version") == "3.0"
    assert vcard.find("{vcard-temp}TEL/{vcard-temp}HOME") is not None
    assert vcard.findtext("{vcard-temp}TEL/{vcard-temp}NUMBER") == "555 & 1212"
    assert vcard.find("{urn:example:x}extra").get("a") == "1"


def test_vcard_survives_a_new_session_and_goes_with_the_account(server):
    alice = server.login("alice@localhost/phone")
    alice.send(f"<iq type='set' id='s1'>{VCARD.format(fn='Alice', nick='al')}</iq>")
    alice.expect("<iq type='result' id='s1'/>")
    alice.disconnect()
    again = server.login("alice@localhost/laptop", create=False)
    answer = again.request("<iq type='get' id='g'><vCard xmlns='vcard-temp'/></iq>")
    assert answer.find("{vcard-temp}vCard").findtext("{vcard-temp}FN") == "Alice"
    assert server.server.storage.get("localhost", "vcard", "alice").result is not None


# -- private XML storage -------------------------------------------------------------------------------

PREFS = "<query xmlns='jabber:iq:private'><exodus xmlns='exodus:prefs'>{inner}</exodus></query>"


def test_private_set_then_get(server):
    alice = server.login("alice@localhost/phone")
    alice.send(f"<iq type='set' id='p1'>{PREFS.format(inner='<defaultnick>Hamlet</defaultnick>')}</iq>")
    alice.expect("<iq type='result' id='p1'/>")
    alice.send(f"<iq type='get' id='p2'>{PREFS.format(inner='')}</iq>")
    alice.expect(
        "<iq type='result' id='p2'><query xmlns='jabber:iq:private'><exodus xmlns='exodus:prefs'>"
        "<defaultnick>Hamlet</defaultnick></exodus></query></iq>"
    )


def test_private_get_of_nothing_stored_returns_the_empty_element(server):
    alice = server.login("alice@localhost/phone")
    answer = alice.request(
        "<iq type='get' id='p1'><query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/>"
        "</query></iq>"
    )
    assert answer.get("type") == "result"
    storage = answer.find("{jabber:iq:private}query/{storage:bookmarks}storage")
    assert storage is not None and len(storage) == 0


def test_private_namespaces_and_names_are_kept_apart(server):
    alice = server.login("alice@localhost/phone")
    alice.send(
        "<iq type='set' id='p1'><query xmlns='jabber:iq:private'>"
        "<a xmlns='urn:example:one'>1</a><b xmlns='urn:example:one'>2</b></query></iq>"
    )
    alice.expect("<iq type='result' id='p1'/>")
    alice.send(
        "<iq type='set' id='p2'><query xmlns='jabber:iq:private'><a xmlns='urn:example:two'>3</a>"
        "</query></iq>"
    )
    alice.expect("<iq type='result' id='p2'/>")
    for ns, name, text in (("one", "a", "1"), ("one", "b", "2"), ("two", "a", "3")):
        answer = alice.request(
            f"<iq type='get' id='g'><query xmlns='jabber:iq:private'><{name} xmlns='urn:example:{ns}'/>"
            "</query></iq>"
        )
        assert answer.findtext(f"{{jabber:iq:private}}query/{{urn:example:{ns}}}{name}") == text


@pytest.mark.parametrize(
    "child",
    [
        "<foo xmlns='jabber:iq:roster'/>",
        "<vCard xmlns='vcard-temp'/>",
        "<foo/>",
        "<x xmlns='http://jabber.org/protocol/muc'/>",
    ],
)
@pytest.mark.parametrize("type_", ["get", "set"])
def test_private_refuses_reserved_namespaces(server, child, type_):
    alice = server.login("alice@localhost/phone")
    answer = alice.request(f"<iq type='{type_}' id='r'><query xmlns='jabber:iq:private'>{child}</query></iq>")
    assert answer.get("type") == "error" and error_of(answer) == "not-acceptable"


def test_private_query_without_child_or_with_several_in_a_get(server):
    alice = server.login("alice@localhost/phone")
    for type_ in ("get", "set"):
        answer = alice.request(f"<iq type='{type_}' id='e'><query xmlns='jabber:iq:private'/></iq>")
        assert error_of(answer) == "not-acceptable"  # XEP-0049 s2.3
    answer = alice.request(
        "<iq type='get' id='two'><query xmlns='jabber:iq:private'><a xmlns='urn:a'/><b xmlns='urn:b'/>"
        "</query></iq>"
    )
    assert error_of(answer) == "bad-request"


@pytest.mark.parametrize("type_", ["get", "set"])
def test_private_data_of_another_user_is_forbidden(server, type_):
    alice = server.login("alice@localhost/phone")
    alice.send(f"<iq type='set' id='p1'>{PREFS.format(inner='<defaultnick>Hamlet</defaultnick>')}</iq>")
    alice.expect("<iq type='result' id='p1'/>")
    mallory = server.login("mallory@localhost/x")
    inner = "<defaultnick>Macbeth</defaultnick>" if type_ == "set" else ""
    answer = mallory.request(
        f"<iq type='{type_}' id='m' to='alice@localhost'>{PREFS.format(inner=inner)}</iq>"
    )
    assert error_of(answer) == "forbidden"
    alice.expect_nothing()
    answer = alice.request(f"<iq type='get' id='p2'>{PREFS.format(inner='')}</iq>")
    assert answer.findtext(".//{exodus:prefs}defaultnick") == "Hamlet"


def test_private_data_persists_across_sessions_and_is_per_user(server):
    alice = server.login("alice@localhost/phone")
    alice.send(f"<iq type='set' id='p1'>{PREFS.format(inner='<defaultnick>Hamlet</defaultnick>')}</iq>")
    alice.expect("<iq type='result' id='p1'/>")
    alice.disconnect()
    again = server.login("alice@localhost/laptop", create=False)
    answer = again.request(f"<iq type='get' id='p2'>{PREFS.format(inner='')}</iq>")
    assert answer.findtext(".//{exodus:prefs}defaultnick") == "Hamlet"
    bob = server.login("bob@localhost/pc")
    answer = bob.request(f"<iq type='get' id='p3'>{PREFS.format(inner='')}</iq>")
    assert answer.find(".//{exodus:prefs}defaultnick") is None


def test_private_size_limit_is_per_account_total(make_xmpp):
    xmpp = make_xmpp(enabled=["private"], options={"private": {"max_size": 1024}})
    alice = xmpp.login("alice@localhost/phone")
    filler = "x" * 400
    for i in (1, 2):
        alice.send(
            f"<iq type='set' id='p{i}'><query xmlns='jabber:iq:private'><d xmlns='urn:n{i}'>{filler}</d>"
            "</query></iq>"
        )
        alice.expect(f"<iq type='result' id='p{i}'/>")
    answer = alice.request(
        f"<iq type='set' id='p3'><query xmlns='jabber:iq:private'><d xmlns='urn:n3'>{filler}</d></query></iq>"
    )
    assert error_of(answer) == "not-acceptable"
    answer = alice.request(
        "<iq type='get' id='g'><query xmlns='jabber:iq:private'><d xmlns='urn:n3'/></query></iq>"
    )
    assert not answer.findtext(".//{urn:n3}d")
    # Replacing an item by a smaller one is fine: the total is what counts.
    alice.send(
        "<iq type='set' id='p4'><query xmlns='jabber:iq:private'><d xmlns='urn:n1'>small</d></query></iq>"
    )
    alice.expect("<iq type='result' id='p4'/>")
    alice.send(
        f"<iq type='set' id='p5'><query xmlns='jabber:iq:private'><d xmlns='urn:n3'>{filler}</d></query></iq>"
    )
    alice.expect("<iq type='result' id='p5'/>")


def slow_storage(xmpp, delay: float = 1.0) -> None:
    """Make the memory storage answer ``delay`` seconds late, as a database in another thread would."""
    storage = xmpp.server.storage
    real_get, real_set = storage.get, storage.set

    def later(fn: Any, *args: Any) -> Any:
        return deferLater(xmpp.clock, delay, lambda: fn(*args).result)

    storage.get = lambda *args: later(real_get, *args)
    storage.set = lambda *args: later(real_set, *args)


def test_private_sets_of_one_user_are_serialised(server):
    alice = server.login("alice@localhost/phone")
    slow_storage(server)
    for i in (1, 2, 3):
        alice.send(
            f"<iq type='set' id='p{i}'><query xmlns='jabber:iq:private'><d xmlns='urn:n{i}'>{i}</d>"
            "</query></iq>"
        )
    alice.expect_nothing()
    for _ in range(6):  # each set takes two storage round trips (a get, a set), one set after the other
        server.advance(1)
    for i in (1, 2, 3):
        alice.expect(f"<iq type='result' id='p{i}'/>")
    plugin = server.server.plugins.instance("localhost", "private")
    assert plugin._locks == {}  # nothing left behind
    document = server.server.storage.get("localhost", "private", "alice")
    server.advance(1)
    assert set(document.result) == {"{urn:n1}d", "{urn:n2}d", "{urn:n3}d"}
