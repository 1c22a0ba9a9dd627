"""Blocking command (plugins/blocking.py, XEP-0191) on a memory server: the block list protocol, pushes,
and what a blocked contact and the blocking user can (not) exchange."""

from __future__ import annotations

from typing import Any

import pytest
from lxml import etree
from xmppd.plugins.blocking import Blocklist

from xmppd.config import DEFAULT_PLUGINS
from xmppd.jid import parse_jid
from xmppd.plugin import Context, Plugin
from xmppd.xml.stanza import copy_stanza, error_condition

NS = "urn:xmpp:blocking"
NS_ERRORS = "urn:xmpp:blocking:errors"
NS_INFO = "http://jabber.org/protocol/disco#info"
# Blocking on its own: the roster/presence plugins are left out so that tests can stand in a roster.
ENABLED = [name for name in DEFAULT_PLUGINS if name not in ("roster", "presence", "blocking")] + ["blocking"]
QUIET = {"ping": {"keepalive_interval": 0}}


@pytest.fixture
def server(make_xmpp):
    return make_xmpp(enabled=ENABLED, options=QUIET)


def online(server: Any, jid: str, *, create: bool = True) -> Any:
    """Logged in, available, with every presence echo on the account's clients read."""
    client = server.login(jid, create=create, available=True)
    for other in server.clients:
        if other.jid and other.jid.split("/")[0] == jid.split("/")[0]:
            other.drain()
    return client


def items(*jids: str) -> str:
    return "".join(f"<item jid='{j}'/>" for j in jids)


def block(client: Any, *jids: str, id_: str = "b") -> etree._Element:
    client.send(f"<iq type='set' id='{id_}'><block xmlns='{NS}'>{items(*jids)}</block></iq>")
    return client.next()


def unblock(client: Any, *jids: str, id_: str = "u") -> etree._Element:
    client.send(f"<iq type='set' id='{id_}'><unblock xmlns='{NS}'>{items(*jids)}</unblock></iq>")
    return client.next()


def blocklist(client: Any, id_: str = "l") -> list[str]:
    client.send(f"<iq type='get' id='{id_}'><blocklist xmlns='{NS}'/></iq>")
    answer = client.next()
    assert answer.get("type") == "result" and answer.get("id") == id_, etree.tostring(answer)
    return [item.get("jid") for item in answer.find(f"{{{NS}}}blocklist")]


def assert_error(stanza: etree._Element, condition: str, id_: str | None = None) -> None:
    assert stanza.get("type") == "error", etree.tostring(stanza)
    assert error_condition(stanza) == condition, etree.tostring(stanza)
    if id_ is not None:
        assert stanza.get("id") == id_


# -- the protocol (s3.1 - s3.5) --------------------------------------------------------------------------


def test_feature_is_advertised_on_the_domain(server):
    alice = server.login("alice@localhost/phone")
    alice.send(f"<iq type='get' id='d' to='localhost'><query xmlns='{NS_INFO}'/></iq>")
    features = {f.get("var") for f in alice.next().iter(f"{{{NS_INFO}}}feature")}
    assert NS in features


def test_empty_list_block_get_unblock(server):
    alice = server.login("alice@localhost/phone")
    alice.send(f"<iq type='get' id='l0'><blocklist xmlns='{NS}'/></iq>")
    alice.expect(f"<iq type='result' id='l0' to='alice@localhost/phone'><blocklist xmlns='{NS}'/></iq>")
    alice.expect_nothing()
    answer = block(alice, "romeo@montague.lit", "Iago@Shakespeare.LIT/Evil", id_="b1")
    assert answer.get("type") == "result" and answer.get("id") == "b1"
    alice.expect(
        f"<iq type='set' from='alice@localhost' to='alice@localhost/phone'><block xmlns='{NS}'>"
        f"{items('romeo@montague.lit', 'iago@shakespeare.lit/Evil')}</block></iq>"
    )
    assert blocklist(alice) == ["romeo@montague.lit", "iago@shakespeare.lit/Evil"]
    assert block(alice, "romeo@montague.lit", "nurse@capulet.lit").get("type") == "result"
    alice.drain()
    assert blocklist(alice) == ["romeo@montague.lit", "iago@shakespeare.lit/Evil", "nurse@capulet.lit"]
    assert unblock(alice, "romeo@montague.lit", "unknown@x.lit").get("type") == "result"
    alice.expect(
        f"<iq type='set'><unblock xmlns='{NS}'>{items('romeo@montague.lit', 'unknown@x.lit')}</unblock></iq>"
    )
    assert blocklist(alice) == ["iago@shakespeare.lit/Evil", "nurse@capulet.lit"]
    answer = unblock(alice, id_="all")
    assert answer.get("type") == "result" and answer.get("id") == "all"
    push = alice.expect(f"<iq type='set'><unblock xmlns='{NS}'/></iq>")
    assert len(push[0]) == 0  # s3.5: an empty unblock
    assert blocklist(alice) == []


def test_pushes_go_only_to_resources_that_asked_for_the_list(server):
    phone = server.login("alice@localhost/phone")
    pc = server.login("alice@localhost/pc", create=False)
    tablet = server.login("alice@localhost/tablet", create=False)
    assert blocklist(phone) == []
    assert blocklist(tablet) == []
    assert block(pc, "romeo@montague.lit").get("type") == "result"
    pc.expect_nothing()  # it never asked for the list
    for interested in (phone, tablet):
        push = interested.expect(
            f"<iq type='set' from='alice@localhost'><block xmlns='{NS}'>{items('romeo@montague.lit')}</block>"
            "</iq>"
        )
        assert push.get("to") == interested.jid
        interested.send(f"<iq type='result' id='{push.get('id')}'/>")  # the client's answer goes nowhere
        interested.expect_nothing()
    unblock(pc)
    phone.expect(f"<iq type='set'><unblock xmlns='{NS}'/></iq>")
    tablet.expect(f"<iq type='set'><unblock xmlns='{NS}'/></iq>")
    pc.expect_nothing()


@pytest.mark.parametrize(
    ("payload", "condition"),
    [
        (f"<block xmlns='{NS}'/>", "bad-request"),
        (f"<block xmlns='{NS}'><item/></block>", "bad-request"),
        (f"<block xmlns='{NS}'><item jid='a@b@c'/></block>", "jid-malformed"),
        (f"<unblock xmlns='{NS}'><item jid='@example.org'/></unblock>", "jid-malformed"),
        (f"<block xmlns='{NS}'><item jid='alice@localhost/other'/></block>", "not-acceptable"),
    ],
)
def test_bad_commands(server, payload, condition):
    alice = server.login("alice@localhost/phone")
    alice.send(f"<iq type='set' id='x'>{payload}</iq>")
    assert_error(alice.next(), condition, "x")
    assert blocklist(alice) == []


def test_max_items_is_a_policy_violation(make_xmpp):
    server = make_xmpp(enabled=ENABLED, options={**QUIET, "blocking": {"max_items": 2}})
    alice = server.login("alice@localhost/phone")
    assert block(alice, "a@x.lit", "b@x.lit").get("type") == "result"
    assert_error(block(alice, "c@x.lit", id_="over"), "policy-violation", "over")
    assert block(alice, "a@x.lit").get("type") == "result"  # already there: no growth
    assert blocklist(alice) == ["a@x.lit", "b@x.lit"]


def test_the_list_is_kept_across_sessions(server):
    alice = server.login("alice@localhost/phone")
    block(alice, "romeo@montague.lit")
    alice.disconnect()
    plugin = server.server.plugins.instance("localhost", "blocking")
    assert "alice" not in plugin._cache  # dropped with the last session
    again = server.login("alice@localhost/pc", create=False)
    assert blocklist(again) == ["romeo@montague.lit"]


# -- inbound: the blocked contact's stanzas (s3.3) -------------------------------------------------------


def test_messages_from_a_blocked_contact_are_refused(server):
    alice = online(server, "alice@localhost/phone")
    bob = online(server, "bob@localhost/pc")
    block(alice, "bob@localhost")
    alice.drain()
    bob.drain()
    bob.send("<message to='alice@localhost' type='chat' id='m1'><body>hi</body></message>")
    bob.expect(
        "<message type='error' id='m1' from='alice@localhost' to='bob@localhost/pc'>"
        "<error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>"
        "</message>"
    )
    bob.send("<message to='alice@localhost/phone' id='m2'><body>hi</body></message>")
    assert_error(bob.next(), "service-unavailable", "m2")
    bob.send("<message to='alice@localhost/phone' type='headline' id='m3'><body>news</body></message>")
    bob.expect_nothing()
    alice.expect_nothing()


def test_iq_and_presence_from_a_blocked_contact(server):
    alice = online(server, "alice@localhost/phone")
    bob = online(server, "bob@localhost/pc")
    block(alice, "bob@localhost")
    alice.drain()
    bob.drain()
    bob.send("<iq type='get' id='v' to='alice@localhost/phone'><query xmlns='jabber:iq:version'/></iq>")
    assert_error(bob.next(), "service-unavailable", "v")
    bob.send("<iq type='get' id='p' to='alice@localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert_error(bob.next(), "service-unavailable", "p")
    bob.send("<iq type='result' id='r' to='alice@localhost/phone'/>")
    bob.send("<presence to='alice@localhost'/>")
    bob.send("<presence to='alice@localhost/phone' type='subscribe'/>")
    bob.expect_nothing()  # s3.3: no answer and no error for presence
    alice.expect_nothing()


def test_a_blocked_full_jid_blocks_only_that_resource(server):
    alice = online(server, "alice@localhost/phone")
    bob_pc = online(server, "bob@localhost/pc")
    bob_phone = online(server, "bob@localhost/phone", create=False)
    block(alice, "bob@localhost/pc")
    alice.drain()
    bob_pc.expect("<presence type='unavailable' from='alice@localhost/phone' to='bob@localhost/pc'/>")
    bob_phone.expect_nothing()
    bob_pc.send("<message to='alice@localhost' type='chat' id='1'><body>a</body></message>")
    assert_error(bob_pc.next(), "service-unavailable", "1")
    bob_phone.send("<message to='alice@localhost' type='chat' id='2'><body>b</body></message>")
    assert alice.next().findtext("body") == "b"


def test_a_blocked_domain_blocks_every_account_there(make_xmpp):
    server = make_xmpp(enabled=ENABLED, options=QUIET, domains=["localhost", "example.org"])
    alice = online(server, "alice@localhost/phone")
    carol = online(server, "carol@example.org/pc")
    bob = online(server, "bob@localhost/pc")
    block(alice, "example.org")
    alice.drain()
    carol.send("<message to='alice@localhost' type='chat' id='1'><body>a</body></message>")
    assert_error(carol.next(), "service-unavailable", "1")
    bob.send("<message to='alice@localhost' type='chat' id='2'><body>b</body></message>")
    assert alice.next().findtext("body") == "b"
    alice.send("<message to='carol@example.org/pc' type='chat' id='3'><body>c</body></message>")
    assert_error(alice.next(), "not-acceptable", "3")
    carol.expect_nothing()


def test_a_user_who_is_offline_is_protected_too(make_xmpp):
    server = make_xmpp(enabled=[*ENABLED, "offline"], options=QUIET)
    alice = server.login("alice@localhost/phone")
    block(alice, "bob@localhost")
    alice.disconnect()
    bob = online(server, "bob@localhost/pc")
    bob.send("<message to='alice@localhost' type='chat' id='1'><body>let me in</body></message>")
    assert_error(bob.next(), "service-unavailable", "1")  # not stored offline either
    alice = server.login("alice@localhost/phone", create=False)
    alice.send("<presence/>")
    alice.expect("<presence/>")
    alice.expect_nothing()


def test_unblocking_lets_stanzas_through_again(server):
    alice = online(server, "alice@localhost/phone")
    bob = online(server, "bob@localhost/pc")
    block(alice, "bob@localhost")
    alice.drain()
    bob.drain()
    unblock(alice, "bob@localhost")
    alice.drain()
    bob.send("<message to='alice@localhost' type='chat' id='1'><body>back</body></message>")
    assert alice.next().findtext("body") == "back"
    bob.expect_nothing()


# -- outbound: the user's stanzas to a blocked JID (s3.3) ------------------------------------------------


def test_sending_to_a_blocked_jid_is_not_acceptable(server):
    alice = online(server, "alice@localhost/phone")
    bob = online(server, "bob@localhost/pc")
    block(alice, "bob@localhost")
    alice.drain()
    bob.drain()
    alice.send(
        "<message to='bob@localhost/pc' type='chat' id='m'><body>Can you hear me now?</body></message>"
    )
    error = alice.expect(
        "<message type='error' id='m' from='bob@localhost/pc' to='alice@localhost/phone'>"
        "<error type='cancel'><not-acceptable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
        f"<blocked xmlns='{NS_ERRORS}'/></error></message>"
    )
    assert error.find("body") is None
    alice.send("<iq type='get' id='i' to='bob@localhost/pc'><ping xmlns='urn:xmpp:ping'/></iq>")
    alice.expect(f"<iq type='error' id='i'><error type='cancel'><blocked xmlns='{NS_ERRORS}'/></error></iq>")
    alice.send("<presence to='bob@localhost'/>")  # directed presence: dropped without a word
    alice.send("<presence to='bob@localhost' type='subscribe'/>")
    alice.send("<iq type='result' id='r' to='bob@localhost/pc'/>")
    alice.expect_nothing()
    bob.expect_nothing()


def test_the_own_server_and_account_stay_reachable_when_blocking_the_own_domain(server):
    alice = online(server, "alice@localhost/phone")
    phone2 = online(server, "alice@localhost/pc", create=False)
    block(alice, "localhost")
    alice.drain()
    alice.send("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    alice.expect("<iq type='result' id='p' from='localhost'/>")
    alice.send("<message to='alice@localhost/pc' type='chat' id='s'><body>note to self</body></message>")
    assert phone2.next().findtext("body") == "note to self"
    alice.expect_nothing()


# -- presence on block and unblock (s3.3, s3.4) ----------------------------------------------------------


class FakeRoster(Plugin):
    """Stands in for the roster: answers ``roster-subscription`` from a table, and broadcasts a user's
    presence to everyone in the table the way a presence plugin does (routed with ctx.send)."""

    name = "fake_roster"
    table: dict[tuple[str, str], str] = {}

    def setup(self, ctx: Context) -> None:
        ctx.hook("roster-subscription", self.subscription)
        ctx.hook("pre-presence/bare", self.broadcast, priority=50)

    def subscription(self, query: Any) -> Any:
        return self.table.get((str(query.owner), str(query.contact)), "none")

    def broadcast(self, event: Any) -> None:
        if event.origin is None or event.stanza.get("to") is not None:
            return None
        for (owner, contact), state in self.table.items():
            if owner == str(event.from_.bare) and state in ("from", "both"):
                stanza = copy_stanza(event.stanza)
                stanza.set("to", contact)
                self.ctx.send(stanza)
        return None


@pytest.fixture
def with_roster(make_xmpp):
    FakeRoster.table = {
        ("alice@localhost", "bob@localhost"): "from",
        ("alice@localhost", "carol@localhost"): "to",
    }
    return make_xmpp(plugins=[FakeRoster], enabled=[*ENABLED, "fake_roster"], options=QUIET)


def test_blocking_sends_unavailable_presence_from_each_resource(with_roster):
    server = with_roster
    bob = online(server, "bob@localhost/pc")
    alice = online(server, "alice@localhost/phone")
    pc = online(server, "alice@localhost/pc", create=False)
    bob.drain()
    block(alice, "bob@localhost")
    got = bob.drain()
    assert sorted((p.tag, p.get("type"), p.get("from"), p.get("to")) for p in got) == [
        ("presence", "unavailable", "alice@localhost/pc", "bob@localhost"),
        ("presence", "unavailable", "alice@localhost/phone", "bob@localhost"),
    ]
    # and later broadcasts no longer reach bob
    alice.drain()
    pc.send("<presence><show>away</show></presence>")
    pc.drain()
    bob.expect_nothing()


def test_unblocking_sends_current_presence_to_a_subscribed_contact_only(with_roster):
    server = with_roster
    bob = online(server, "bob@localhost/pc")
    carol = online(server, "carol@localhost/pc")
    alice = online(server, "alice@localhost/phone")
    bob.drain()
    block(alice, "bob@localhost", "carol@localhost")
    alice.send("<presence><show>dnd</show><status>busy</status></presence>")
    alice.drain()
    bob.drain()
    carol.drain()
    unblock(alice)
    bob.expect(
        "<presence from='alice@localhost/phone' to='bob@localhost'>"
        "<show>dnd</show><status>busy</status></presence>"
    )
    bob.expect_nothing()
    carol.expect_nothing()  # subscription "to": she may not see alice's presence


# -- JID matching (s6, XEP-0016 s2.1) --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "matching", "not_matching"),
    [
        (
            "romeo@montague.lit/orchard",
            ["romeo@montague.lit/orchard"],
            ["romeo@montague.lit", "romeo@montague.lit/home"],
        ),
        (
            "romeo@montague.lit",
            ["romeo@montague.lit", "romeo@montague.lit/any"],
            ["juliet@montague.lit", "montague.lit"],
        ),
        # the sender's <domain/resource> is the third candidate checked (XEP-0016 s2.1), whatever its user
        (
            "montague.lit/bot",
            ["montague.lit/bot", "romeo@montague.lit/bot"],
            ["montague.lit", "montague.lit/other"],
        ),
        (
            "montague.lit",
            [
                "montague.lit",
                "montague.lit/x",
                "romeo@montague.lit/y",
                "chat.montague.lit",
                "a@b.montague.lit",
            ],
            ["capulet.lit", "xmontague.lit", "montague.lit.evil"],
        ),
        ("10.0.0.1", ["10.0.0.1", "u@10.0.0.1"], ["0.0.1", "u@0.1"]),
    ],
)
def test_jid_matching(item, matching, not_matching):
    blocklist = Blocklist([str(parse_jid(item))])
    for jid in matching:
        assert blocklist.matches(parse_jid(jid)), jid
    for jid in not_matching:
        assert not blocklist.matches(parse_jid(jid)), jid


def test_ip_domains_do_not_match_by_label():
    assert not Blocklist(["0.1"]).matches(parse_jid("u@10.0.0.1"))
