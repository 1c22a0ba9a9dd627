"""The presence plugin (plugins/presence.py) with the roster on a memory server, checked against RFC 6121:
subscriptions (s3 and the state tables of Appendix A), presence broadcast, probes and directed presence (s4),
message delivery around priorities (s8.5.2) and last activity authorized by subscriptions (XEP-0012)."""

from __future__ import annotations

from typing import Any

import pytest
from lxml import etree

from xmppd.config import DEFAULT_PLUGINS
from xmppd.testing import parse_pattern
from xmppd.xml.stanza import error_condition

PLUGINS = list(dict.fromkeys([*DEFAULT_PLUGINS, "roster", "presence"]))
NS_ROSTER = "jabber:iq:roster"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_PREAPPROVAL = "urn:xmpp:features:pre-approval"
NS_NICK = "http://jabber.org/protocol/nick"
LAST = "<iq type='get' id='{id}' to='{to}'><query xmlns='jabber:iq:last'/></iq>"


# -- helpers ---------------------------------------------------------------------------------------------


@pytest.fixture
def server(make_xmpp):
    return make_xmpp(enabled=PLUGINS)


def summary(el: etree._Element) -> tuple:
    """Pushes as ("push", jid, subscription, ask, approved), presence as ("presence", type, from), messages
    as ("message", from, body), iq answers as ("result" | "error", id[, condition])."""
    if el.tag == "iq":
        query = el.find(f"{{{NS_ROSTER}}}query")
        if el.get("type") == "set" and query is not None:
            (item,) = query.findall(f"{{{NS_ROSTER}}}item")
            return push(
                item.get("jid"), item.get("subscription", "none"), item.get("ask"), item.get("approved")
            )
        if el.get("type") == "error":
            return ("error", el.get("id"), error_condition(el))
        return (el.get("type"), el.get("id"))
    if el.tag == "presence":
        return ("presence", el.get("type", "available"), el.get("from"))
    if el.tag == "message":
        if el.get("type") == "error":
            return ("message-error", el.get("from"), error_condition(el))
        return ("message", el.get("from"), el.findtext("body"))
    return (el.tag,)


def push(jid: str, subscription: str = "none", ask: str | None = None, approved: str | None = None) -> tuple:
    return ("push", jid, subscription, ask, approved)


def pres(type_: str, from_: str) -> tuple:
    return ("presence", type_, from_)


def summaries(client: Any) -> list[tuple]:
    return [summary(el) for el in client.drain()]


SUBSCRIPTION_TYPES = ("subscribe", "subscribed", "unsubscribe", "unsubscribed")


def without_subscription_stanzas(seen: list[tuple]) -> list[tuple]:
    """What a resource that is available but not interested saw, ignoring the subscribed, unsubscribe and
    unsubscribed notifications: RFC 6121 s3.1.6, s3.2.3 and s3.3.3 require them for interested resources
    and neither require nor forbid them for others."""
    return [s for s in seen if not (s[0] == "presence" and s[1] in SUBSCRIPTION_TYPES[1:])]


def roster_get(client: Any, id_: str = "get") -> etree._Element:
    answer = client.request(f"<iq type='get' id='{id_}'><query xmlns='jabber:iq:roster'/></iq>")
    assert answer.get("type") == "result", etree.tostring(answer)
    return answer


def roster_items(client: Any) -> dict[str, tuple]:
    """{jid: (subscription, ask, approved)} as the server returns the roster."""
    query = roster_get(client, "items").find(f"{{{NS_ROSTER}}}query")
    return {
        i.get("jid"): (i.get("subscription", "none"), i.get("ask"), i.get("approved"))
        for i in query.findall(f"{{{NS_ROSTER}}}item")
    }


def state(client: Any, contact: str) -> tuple | None:
    return roster_items(client).get(contact)


def connect(
    server: Any, jid: str, *, roster: bool = True, available: bool = True, presence: str = "<presence/>"
) -> Any:
    """A resource: interested if ``roster`` (it asked for the roster), available if ``available`` (it sent
    ``presence``). What it received while getting there is left unread."""
    client = server.login(jid)
    if roster:
        roster_get(client, "login")
    if available:
        client.send(presence)
    return client


def online(server: Any, jid: str, **kwargs: Any) -> Any:
    client = connect(server, jid, **kwargs)
    client.drain()
    return client


def bare(client: Any) -> str:
    return str(client.jid).split("/")[0]


def subscribe(user: Any, contact: Any, *others: Any) -> None:
    """``user`` subscribes to ``contact``'s presence and ``contact`` approves (s3.1); ``others`` are more
    clients whose inboxes are drained afterwards."""
    user.send(f"<presence to='{bare(contact)}' type='subscribe'/>")
    contact.send(f"<presence to='{bare(user)}' type='subscribed'/>")
    for client in (user, contact, *others):
        client.drain()


def mutual(a: Any, b: Any, *others: Any) -> None:
    subscribe(a, b, *others)
    subscribe(b, a, *others)


def inject(server: Any, xml: str) -> None:
    """A stanza arriving from elsewhere (as from another server), routed by the core as is."""
    server.server.router.route(parse_pattern(xml))


def before(seen: list[tuple], first: tuple, then: tuple) -> bool:
    return seen.index(first) < seen.index(then)


# -- the subscription handshake (s3.1) ---------------------------------------------------------------------


def test_full_handshake_with_interested_and_uninterested_resources(server):
    alice = online(server, "alice@localhost/phone")  # interested and available
    alice_tab = online(server, "alice@localhost/tab", roster=False)  # available only
    bob = online(server, "bob@localhost/pc")
    bob_tab = online(server, "bob@localhost/tab", roster=False)
    for client in (alice, alice_tab, bob, bob_tab):
        client.drain()

    # 1. alice asks (s3.1.2, s3.1.3): a push with ask to her interested resource, the request (from her bare
    #    JID) to every available resource of bob; nothing goes into bob's roster yet.
    alice.send("<presence to='bob@localhost' type='subscribe' id='sub1'/>")
    assert summaries(alice) == [push("bob@localhost", "none", "subscribe")]
    alice_tab.expect_nothing()
    for client in (bob, bob_tab):
        request = client.expect(
            "<presence type='subscribe' from='alice@localhost' to='bob@localhost' id='sub1'/>"
        )
        assert request.get("from") == "alice@localhost"
        client.expect_nothing()
    assert roster_items(bob) == {}

    # 2. bob approves (s3.1.5, s3.1.6).
    bob.send("<presence to='alice@localhost' type='subscribed'/>")
    assert summaries(bob) == [push("alice@localhost", "from")]
    bob_tab.expect_nothing()
    seen = summaries(alice)
    approval = pres("subscribed", "bob@localhost")
    bob_online = {pres("available", "bob@localhost/pc"), pres("available", "bob@localhost/tab")}
    assert set(seen) == {approval, push("bob@localhost", "to")} | bob_online and len(seen) == 4, seen
    assert before(seen, approval, push("bob@localhost", "to")), "s3.1.6: the approval before the push"
    assert seen[:2] == [approval, push("bob@localhost", "to")]
    assert set(without_subscription_stanzas(summaries(alice_tab))) == bob_online

    # 3. bob asks back.
    bob.send("<presence to='alice@localhost' type='subscribe'/>")
    assert summaries(bob) == [push("alice@localhost", "from", "subscribe")]
    bob_tab.expect_nothing()
    for client in (alice, alice_tab):
        assert summaries(client) == [pres("subscribe", "bob@localhost")]

    # 4. alice approves from the resource that never asked for the roster: pushes go to the interested one.
    alice_tab.send("<presence to='bob@localhost' type='subscribed'/>")
    alice_tab.expect_nothing()
    assert summaries(alice) == [push("bob@localhost", "both")]
    seen = summaries(bob)
    alice_online = {pres("available", "alice@localhost/phone"), pres("available", "alice@localhost/tab")}
    approval = pres("subscribed", "alice@localhost")
    assert seen[:2] == [approval, push("alice@localhost", "both")], seen
    assert set(seen[2:]) == alice_online and len(seen) == 4
    assert set(without_subscription_stanzas(summaries(bob_tab))) == alice_online

    assert roster_items(alice) == {"bob@localhost": ("both", None, None)}
    assert roster_items(bob) == {"alice@localhost": ("both", None, None)}

    # Presence now flows both ways, to every available resource.
    alice.send("<presence><show>away</show></presence>")
    for client in (bob, bob_tab):
        client.expect("<presence from='alice@localhost/phone'><show>away</show></presence>")
        client.expect_nothing()
    alice_tab.expect("<presence from='alice@localhost/phone'><show>away</show></presence>")
    alice.expect(
        "<presence from='alice@localhost/phone' to='alice@localhost/phone'><show>away</show></presence>"
    )
    alice.expect_nothing()


def test_approval_reaches_an_interested_resource_that_is_not_available(server):
    """s3.1.6: the inbound approval goes to the user's interested resources, available or not."""
    alice = connect(server, "alice@localhost/phone", available=False)
    bob = online(server, "bob@localhost/pc")
    alice.send("<presence to='bob@localhost' type='subscribe'/>")
    assert summaries(alice) == [push("bob@localhost", "none", "subscribe")]
    bob.drain()
    bob.send("<presence to='alice@localhost' type='subscribed'/>")
    seen = summaries(alice)
    assert seen == [pres("subscribed", "bob@localhost"), push("bob@localhost", "to")], seen


def test_subscribe_to_a_full_jid_is_handled_as_to_the_bare_jid(server):
    alice = online(server, "alice@localhost/phone")
    bob = online(server, "bob@localhost/pc")
    alice.send("<presence to='bob@localhost/pc' type='subscribe'/>")
    assert summaries(alice) == [push("bob@localhost", "none", "subscribe")]
    bob.expect("<presence type='subscribe' from='alice@localhost' to='bob@localhost'/>")
    bob.send("<presence to='alice@localhost/phone' type='subscribed'/>")
    assert summaries(bob) == [push("alice@localhost", "from")]
    assert summaries(alice)[:2] == [pres("subscribed", "bob@localhost"), push("bob@localhost", "to")]


def test_a_repeated_request_is_delivered_once(server):
    """Table 6: a subscribe in "None + Pending In" is not delivered again; Table 2: no new push."""
    alice = online(server, "alice@localhost/phone")
    bob = online(server, "bob@localhost/pc")
    alice.send("<presence to='bob@localhost' type='subscribe'/>")
    alice.drain()
    assert summaries(bob) == [pres("subscribe", "alice@localhost")]
    alice.send("<presence to='bob@localhost' type='subscribe'/>")
    alice.expect_nothing()
    bob.expect_nothing()


def test_subscribe_when_already_subscribed_is_auto_approved(server):
    """Table 6 [2]: a subscribe from a contact with From/Both is not delivered (the server answers)."""
    alice = online(server, "alice@localhost/phone")
    bob = online(server, "bob@localhost/pc")
    mutual(alice, bob)
    alice.send("<presence to='bob@localhost' type='subscribe'/>")
    bob.expect_nothing()
    assert not [s for s in summaries(alice) if s[0] == "push" or s[1] == "subscribe"]
    assert state(alice, "bob@localhost") == ("both", None, None)


# -- requests to an offline contact (s3.1.3) ----------------------------------------------------------------


@pytest.mark.parametrize("answer", ["subscribed", "unsubscribed"])
def test_request_to_an_offline_contact_waits_until_answered(server, answer):
    server.adduser("bob@localhost")
    alice = online(server, "alice@localhost/phone")
    request = "<presence to='bob@localhost' type='subscribe' id='{}'><nick xmlns='{}'>Alice</nick></presence>"
    alice.send(request.format("s1", NS_NICK))
    alice.send(request.format("s2", NS_NICK))  # stored once only (the first or the last, s3.1.3)
    assert summaries(alice) == [push("bob@localhost", "none", "subscribe")]

    for resource in ("pc", "tab", "pc"):
        bob = connect(server, f"bob@localhost/{resource}")
        received = bob.drain()
        requests = [el for el in received if el.get("type") == "subscribe"]
        assert len(requests) == 1, [etree.tostring(el) for el in received]
        assert requests[0].get("from") == "alice@localhost"
        assert requests[0].get("id") in ("s1", "s2")
        nick = requests[0].find(f"{{{NS_NICK}}}nick")
        assert nick is not None and nick.text == "Alice", "the complete stanza is kept (s3.1.3)"
        assert roster_items(bob) == {}, "no roster item before approval (s3.1.3)"
        bob.send_raw("</stream:stream>")
        alice.drain()

    bob = connect(server, "bob@localhost/pc")
    bob.drain()
    bob.send(f"<presence to='alice@localhost' type='{answer}'/>")
    bob.drain()
    seen = summaries(alice)
    if answer == "subscribed":
        assert seen[:2] == [pres("subscribed", "bob@localhost"), push("bob@localhost", "to")], seen
        assert state(bob, "alice@localhost") == ("from", None, None)
    else:
        assert [s for s in seen if s[1] != "unavailable"] == [
            pres("unsubscribed", "bob@localhost"),
            push("bob@localhost", "none"),
        ], seen
        assert state(bob, "alice@localhost") is None
    bob.send_raw("</stream:stream>")
    alice.drain()

    again = connect(server, "bob@localhost/laptop")
    assert not [el for el in again.drain() if el.get("type") == "subscribe"], "answered: not delivered again"


def test_withdrawn_request_is_not_delivered(server):
    """s3.3.3: an unsubscribe removes the record of a pending inbound request."""
    server.adduser("bob@localhost")
    alice = online(server, "alice@localhost/phone")
    alice.send("<presence to='bob@localhost' type='subscribe'/>")
    alice.send("<presence to='bob@localhost' type='unsubscribe'/>")
    assert summaries(alice) == [push("bob@localhost", "none", "subscribe"), push("bob@localhost", "none")]
    bob = connect(server, "bob@localhost/pc")
    assert not [el for el in bob.drain() if el.get("type") in SUBSCRIPTION_TYPES]


# -- pre-approval (s3.4) ---------------------------------------------------------------------------------


def test_pre_approval_is_advertised_as_a_stream_feature(server):
    features = authenticated_features(server)
    assert features.find(f"{{{NS_PREAPPROVAL}}}sub") is not None, etree.tostring(features)  # s3.4


def test_pre_approved_request_is_answered_by_the_server(server):
    alice = online(server, "alice@localhost/phone")
    bob = online(server, "bob@localhost/pc")
    bob.send("<presence to='alice@localhost' type='subscribed'/>")
    assert summaries(bob) == [push("alice@localhost", "none", None, "true")]
    alice.expect_nothing()  # s3.4.2: a pre-approval is not routed

    alice.send("<presence to='bob@localhost' type='subscribe'/>")
    seen = summaries(alice)
    assert seen[0] == push("bob@localhost", "none", "subscribe")
    assert seen[1:3] == [pres("subscribed", "bob@localhost"), push("bob@localhost", "to")], seen
    assert seen[3:] == [pres("available", "bob@localhost/pc")]
    bob_seen = summaries(bob)
    assert [s[:3] for s in bob_seen] == [push("alice@localhost", "from")[:3]], "no request delivered (s3.4.2)"
    assert state(bob, "alice@localhost")[0] == "from"
    assert state(alice, "bob@localhost") == ("to", None, None)


def test_pre_approval_of_a_contact_in_the_roster(server):
    alice = online(server, "alice@localhost/phone")
    bob = online(server, "bob@localhost/pc")
    subscribe(bob, alice)  # bob: To
    bob.send("<presence to='alice@localhost' type='subscribed'/>")
    assert summaries(bob) == [push("alice@localhost", "to", None, "true")]
    alice.expect_nothing()
    alice.send("<presence to='bob@localhost' type='subscribe'/>")
    assert [s for s in summaries(bob) if s[0] != "push"] == [], "auto-approved, not delivered"
    alice.drain()
    assert state(bob, "alice@localhost")[0] == "both"
    assert state(alice, "bob@localhost")[0] == "both"


def test_pre_approval_is_ignored_when_the_contact_is_subscribed(server):
    """s3.4.2 rule 1: From / Both: silently ignored."""
    alice = online(server, "alice@localhost/phone")
    bob = online(server, "bob@localhost/pc")
    subscribe(alice, bob)  # bob: From
    bob.send("<presence to='alice@localhost' type='subscribed'/>")
    bob.expect_nothing()
    alice.expect_nothing()
    assert state(bob, "alice@localhost") == ("from", None, None)


def test_pre_approval_is_cancelled_by_unsubscribed(server):
    """s3.2.2 rule 2 and the s3.4 note: the approval goes, and nothing is routed to the contact."""
    alice = online(server, "alice@localhost/phone")
    bob = online(server, "bob@localhost/pc")
    bob.send("<presence to='alice@localhost' type='subscribed'/>")
    bob.drain()
    bob.send("<presence to='alice@localhost' type='unsubscribed'/>")
    assert summaries(bob) == [push("alice@localhost", "none")]
    alice.expect_nothing()  # neither unsubscribed nor unavailable
    alice.send("<presence to='bob@localhost' type='subscribe'/>")
    alice.drain()
    assert summaries(bob) == [pres("subscribe", "alice@localhost")], "a request again, not auto-approved"


# -- cancelling and unsubscribing (s3.2, s3.3) ----------------------------------------------------------


@pytest.fixture
def pair(server):
    """alice and bob, each with an interested and available resource, subscribed both ways."""
    alice = online(server, "alice@localhost/phone")
    bob = online(server, "bob@localhost/pc")
    mutual(alice, bob)
    return alice, bob


@pytest.mark.parametrize("actor", ["alice", "bob"])
def test_unsubscribe(pair, actor):
    """s3.3: the user stops receiving the contact's presence; the contact's server sends unavailable."""
    user, contact = pair if actor == "alice" else pair[::-1]
    u, c = bare(user), bare(contact)
    user.send(f"<presence to='{c}' type='unsubscribe'/>")
    seen = summaries(user)
    assert set(seen) == {push(c, "from"), pres("unavailable", str(contact.jid))} and len(seen) == 2, seen
    assert summaries(contact) == [pres("unsubscribe", u), push(u, "to")], "s3.3.3: the stanza, then the push"
    assert state(user, c) == ("from", None, None)
    assert state(contact, u) == ("to", None, None)

    contact.send("<presence><show>dnd</show></presence>")
    contact.drain()
    user.expect_nothing()  # the user no longer gets the contact's presence
    user.send("<presence><show>away</show></presence>")
    user.drain()
    contact.expect(f"<presence from='{user.jid}'><show>away</show></presence>")

    # the other half: the contact unsubscribes too, both end at None
    contact.send(f"<presence to='{u}' type='unsubscribe'/>")
    seen = summaries(contact)
    assert set(seen) == {push(u, "none"), pres("unavailable", str(user.jid))} and len(seen) == 2, seen
    assert summaries(user) == [pres("unsubscribe", c), push(c, "none")]
    assert state(user, c) == ("none", None, None)
    assert state(contact, u) == ("none", None, None)


@pytest.mark.parametrize("actor", ["alice", "bob"])
def test_unsubscribed_cancels_the_contacts_subscription(pair, actor):
    """s3.2: unavailable from every available resource while the contact is still subscribed, then the
    unsubscribed, then the contact's push."""
    user, contact = pair if actor == "alice" else pair[::-1]
    u, c = bare(user), bare(contact)
    user.send(f"<presence to='{c}' type='unsubscribed'/>")
    assert summaries(user) == [push(c, "to")]
    assert summaries(contact) == [
        pres("unavailable", str(user.jid)),
        pres("unsubscribed", u),
        push(u, "from"),
    ]
    assert state(user, c) == ("to", None, None)
    assert state(contact, u) == ("from", None, None)

    user.send("<presence><show>away</show></presence>")
    user.drain()
    contact.expect_nothing()
    contact.send("<presence><show>dnd</show></presence>")
    contact.drain()
    user.expect(f"<presence from='{contact.jid}'><show>dnd</show></presence>")

    contact.send(f"<presence to='{u}' type='unsubscribed'/>")
    assert summaries(contact) == [push(u, "none")]
    assert summaries(user) == [
        pres("unavailable", str(contact.jid)),
        pres("unsubscribed", c),
        push(c, "none"),
    ]
    assert state(user, c) == ("none", None, None)
    assert state(contact, u) == ("none", None, None)


def test_unsubscribed_without_a_subscription_is_not_routed(server):
    """s3.2.2 rule 1: None / To: the contact gets neither unsubscribed nor unavailable."""
    alice = online(server, "alice@localhost/phone")
    bob = online(server, "bob@localhost/pc")
    subscribe(alice, bob)  # alice: To, bob: From
    alice.send("<presence to='bob@localhost' type='unsubscribed'/>")
    alice.expect_nothing()
    bob.expect_nothing()
    assert state(bob, "alice@localhost") == ("from", None, None)


@pytest.mark.parametrize(
    "setup, stanza, expected",
    [
        pytest.param(None, "subscribed", None, id="subscribed, None"),
        pytest.param("mutual", "subscribed", ("both", None, None), id="subscribed, Both"),
        pytest.param("contact-subscribed", "subscribed", ("from", None, None), id="subscribed, From"),
        pytest.param("contact-subscribed", "unsubscribed", ("from", None, None), id="unsubscribed, From"),
        pytest.param("user-subscribed", "unsubscribe", ("to", None, None), id="unsubscribe, To"),
        pytest.param(None, "unsubscribe", None, id="unsubscribe, None"),
    ],
)
def test_inbound_subscription_stanzas_without_effect_are_ignored(server, setup, stanza, expected):
    """Appendix A.3 (Tables 7-9) and s3.1.6: no state change, no delivery, no push."""
    alice = online(server, "alice@localhost/phone")
    bob = online(server, "bob@localhost/pc")
    if setup == "mutual":
        mutual(alice, bob)
    elif setup == "contact-subscribed":
        subscribe(bob, alice)  # alice: From
    elif setup == "user-subscribed":
        subscribe(alice, bob)  # alice: To
    inject(server, f"<presence from='bob@localhost' to='alice@localhost' type='{stanza}'/>")
    alice.expect_nothing()
    assert state(alice, "bob@localhost") == expected


# -- presence broadcast and probes (s4.2 - s4.5) -------------------------------------------------------------


@pytest.fixture
def contacts(server):
    """alice and contacts in every state, all online; alice then goes offline. From alice's side: bob Both,
    carol From, dave To, erin None (roster item only), frank None + Pending Out; mallory is no contact."""
    alice = online(server, "alice@localhost/phone")
    others = {
        name: online(server, f"{name}@localhost/pc") for name in ("bob", "carol", "dave", "erin", "frank")
    }
    mallory = online(server, "mallory@localhost/pc")
    everyone = (alice, mallory, *others.values())
    mutual(alice, others["bob"], *everyone)
    subscribe(others["carol"], alice, *everyone)
    subscribe(alice, others["dave"], *everyone)
    alice.send(
        "<iq type='set' id='e'><query xmlns='jabber:iq:roster'><item jid='erin@localhost'/></query></iq>"
    )
    alice.send("<presence to='frank@localhost' type='subscribe'/>")
    alice.send_raw("</stream:stream>")
    for client in everyone:
        client.drain()
    others["mallory"] = mallory
    return others


def test_initial_presence_goes_to_from_and_both_contacts_and_probes_to_and_both(server, contacts):
    alice = connect(
        server, "alice@localhost/laptop", presence="<presence id='p1'><show>chat</show></presence>"
    )
    for name in ("bob", "carol"):
        contacts[name].expect("<presence from='alice@localhost/laptop' id='p1'><show>chat</show></presence>")
        contacts[name].expect_nothing()
    for name in ("dave", "erin", "frank", "mallory"):
        assert [s for s in summaries(contacts[name]) if s[1] != "subscribe"] == [], name
    seen = summaries(alice)
    # s4.2.3 / s4.3.2: bob (Both) and dave (To) are probed and answer with their available resource.
    assert set(seen) == {
        pres("available", "bob@localhost/pc"),
        pres("available", "dave@localhost/pc"),
        pres("available", "alice@localhost/laptop"),  # s4.2.2: to her own resource
    }, seen


def test_probe_of_an_offline_contact_is_answered_unavailable(server, contacts):
    contacts["bob"].send_raw("</stream:stream>")
    alice = connect(server, "alice@localhost/laptop")
    seen = summaries(alice)
    assert pres("unavailable", "bob@localhost") in seen, "s4.3.2 rule 3: from the bare JID"
    assert pres("available", "dave@localhost/pc") in seen
    assert not [s for s in seen if str(s[-1]).startswith("bob@localhost/")]


def test_probe_of_an_offline_account_mirrors_the_probe_id(server, contacts):
    """s4.3.2 rule 3 and s4.3.2.1: unavailable from the bare JID, with the probe's id."""
    carol = contacts["carol"]  # subscribed to alice, who is offline
    carol.send("<presence to='alice@localhost' type='probe' id='pr1'/>")
    carol.expect("<presence from='alice@localhost' type='unavailable' id='pr1'/>")
    carol.expect_nothing()


def test_probe_answers_carry_the_full_presence(server, contacts):
    contacts["dave"].send(
        "<presence id='d1'><show>away</show><status>lunch</status><priority>3</priority></presence>"
    )
    contacts["dave"].drain()
    alice = connect(server, "alice@localhost/laptop")
    answers = [el for el in alice.drain() if el.get("from") == "dave@localhost/pc"]
    assert len(answers) == 1
    answer = answers[0]
    assert answer.get("id") == "d1", "s4.3.2.1: the contact's own id is preserved"
    assert answer.findtext("show") == "away" and answer.findtext("status") == "lunch"
    assert answer.findtext("priority") == "3"


def test_probe_from_a_non_subscriber_reveals_nothing(server, contacts):
    """s4.3.2 rule 1: the answer is unsubscribed from the bare JID, which the prober's server ignores when
    the prober has no subscription (Table 9); no presence leaks either way."""
    alice = online(server, "alice@localhost/laptop")
    for name in ("erin", "dave", "mallory"):  # None, From (from dave's side), no roster item
        client = contacts[name]
        client.send(f"<presence to='alice@localhost' type='probe' id='pr-{name}'/>")
        seen = summaries(client)
        assert not [s for s in seen if s[1] == "available"], (name, seen)
        assert not [s for s in seen if str(s[-1]).startswith("alice@localhost/")], (name, seen)
    alice.drain()


def test_probe_from_a_subscriber_is_answered_with_every_available_resource(server, contacts):
    alice = online(server, "alice@localhost/laptop")
    online(server, "alice@localhost/phone", presence="<presence><show>xa</show></presence>")
    carol = contacts["carol"]
    carol.drain()
    carol.send("<presence to='alice@localhost' type='probe'/>")
    seen = summaries(carol)
    assert sorted(seen) == [
        pres("available", "alice@localhost/laptop"),
        pres("available", "alice@localhost/phone"),
    ]
    alice.drain()


def test_probe_to_a_full_jid_answers_for_that_resource_only(server, contacts):
    """s4.3.2: a probe to a full JID MUST NOT return presence of any other resource."""
    online(server, "alice@localhost/laptop")
    online(server, "alice@localhost/phone")
    carol = contacts["carol"]
    carol.drain()
    carol.send("<presence to='alice@localhost/phone' type='probe'/>")
    seen = summaries(carol)
    assert seen == [pres("available", "alice@localhost/phone")], seen


def test_probe_answered_unsubscribed_repairs_a_stale_subscription(server):
    """s4.3.2 rule 1: alice's roster says To, bob's says nothing: bob's unsubscribed answer to the probe
    cancels alice's subscription (Table 9: To -> None, delivered, pushed)."""
    bob = online(server, "bob@localhost/pc")
    alice = online(server, "alice@localhost/phone")
    alice.send("<presence to='bob@localhost' type='subscribe'/>")
    alice.drain(), bob.drain()
    inject(server, "<presence from='bob@localhost' to='alice@localhost' type='subscribed'/>")
    assert summaries(alice) == [pres("subscribed", "bob@localhost"), push("bob@localhost", "to")]
    assert state(alice, "bob@localhost") == ("to", None, None)
    assert state(bob, "alice@localhost") is None  # bob never approved
    alice.send("<presence type='unavailable'/>")
    alice.drain()
    alice.send("<presence/>")  # a new presence session: probes again
    seen = summaries(alice)
    assert pres("unsubscribed", "bob@localhost") in seen and push("bob@localhost", "none") in seen, seen
    assert not [s for s in seen if s[-1] == "bob@localhost/pc"], "no presence of bob leaks"
    assert state(alice, "bob@localhost") == ("none", None, None)


def test_probe_does_not_cancel_a_pre_approval(server):
    alice = online(server, "alice@localhost/phone")
    bob = online(server, "bob@localhost/pc")
    bob.send("<presence to='alice@localhost' type='subscribed'/>")
    bob.drain()
    alice.send("<presence to='bob@localhost' type='probe'/>")
    alice.drain()
    bob.expect_nothing()
    assert state(bob, "alice@localhost") == ("none", None, "true")


def test_presence_updates_and_unavailable_are_broadcast(server):
    alice = online(server, "alice@localhost/phone")
    tab = online(server, "alice@localhost/tab", roster=False)
    bob = online(server, "bob@localhost/pc")
    carol = online(server, "carol@localhost/pc")
    mutual(alice, bob, tab)
    subscribe(alice, carol, tab)  # carol: From, so she gets nothing of alice
    carol.drain()

    alice.send("<presence id='u1'><show>away</show><status>lunch</status></presence>")
    update = (
        "<presence from='alice@localhost/phone' id='u1'><show>away</show><status>lunch</status></presence>"
    )
    for client in (bob, tab, alice):
        client.expect(update)
        client.expect_nothing()
    carol.expect_nothing()

    alice.send("<presence type='unavailable'><status>vacation</status></presence>")
    gone = "<presence type='unavailable' from='alice@localhost/phone'><status>vacation</status></presence>"
    for client in (bob, tab, alice):
        client.expect(gone)
        client.expect_nothing()
    carol.expect_nothing()

    # a new presence session after unavailable counts as initial presence (s4.5.2)
    alice.send("<presence/>")
    bob.expect("<presence from='alice@localhost/phone'/>")
    assert pres("available", "bob@localhost/pc") in summaries(alice)


def test_abrupt_disconnect_is_broadcast_as_unavailable(server):
    alice = online(server, "alice@localhost/phone")
    bob = online(server, "bob@localhost/pc")
    mutual(alice, bob)
    bob.disconnect()
    alice.expect("<presence type='unavailable' from='bob@localhost/pc'/>")
    alice.expect_nothing()


# -- directed presence (s4.6) ---------------------------------------------------------------------------


@pytest.fixture
def directed(server):
    """alice (Both with bob) has sent directed presence to carol, who is no contact."""
    alice = online(server, "alice@localhost/phone")
    bob = online(server, "bob@localhost/pc")
    carol = online(server, "carol@localhost/pc")
    carol_tab = online(server, "carol@localhost/tab", roster=False)
    mutual(alice, bob)
    carol.drain(), carol_tab.drain()
    alice.send("<presence to='carol@localhost/pc' id='d1'><show>chat</show></presence>")
    carol.expect(
        "<presence from='alice@localhost/phone' to='carol@localhost/pc' id='d1'><show>chat</show></presence>"
    )
    carol.expect_nothing()
    carol_tab.expect_nothing()
    alice.expect_nothing()
    bob.expect_nothing()
    return alice, bob, carol, carol_tab


def test_directed_presence_is_not_part_of_later_broadcasts(directed):
    alice, bob, carol, _ = directed
    alice.send("<presence><show>away</show></presence>")
    bob.expect("<presence from='alice@localhost/phone'><show>away</show></presence>")
    carol.expect_nothing()


def test_unavailable_goes_to_directed_presence_recipients(directed):
    alice, bob, carol, carol_tab = directed
    alice.send("<presence type='unavailable'/>")
    carol.expect("<presence type='unavailable' from='alice@localhost/phone'/>")
    carol.expect_nothing()
    carol_tab.expect_nothing()
    bob.expect("<presence type='unavailable' from='alice@localhost/phone'/>")


def test_abrupt_disconnect_sends_unavailable_to_directed_presence_recipients(directed):
    alice, bob, carol, _ = directed
    alice.disconnect()
    carol.expect("<presence type='unavailable' from='alice@localhost/phone'/>")
    carol.expect_nothing()
    bob.expect("<presence type='unavailable' from='alice@localhost/phone'/>")


def test_stream_close_sends_unavailable_to_directed_presence_recipients(directed):
    alice, bob, carol, _ = directed
    alice.send_raw("</stream:stream>")
    carol.expect("<presence type='unavailable' from='alice@localhost/phone'/>")
    bob.expect("<presence type='unavailable' from='alice@localhost/phone'/>")


def test_directed_unavailable_ends_the_directed_presence(directed):
    alice, bob, carol, _ = directed
    alice.send("<presence to='carol@localhost/pc' type='unavailable'/>")
    carol.expect("<presence type='unavailable' from='alice@localhost/phone'/>")
    alice.send("<presence type='unavailable'/>")
    carol.expect_nothing()
    bob.expect("<presence type='unavailable' from='alice@localhost/phone'/>")


def test_directed_presence_to_a_bare_jid_reaches_every_available_resource(directed):
    alice, bob, carol, carol_tab = directed
    alice.send("<presence to='carol@localhost'><status>hi</status></presence>")
    for client in (carol, carol_tab):
        client.expect("<presence from='alice@localhost/phone'><status>hi</status></presence>")
    alice.disconnect()
    carol_tab.expect("<presence type='unavailable' from='alice@localhost/phone'/>")
    carol_tab.expect_nothing()
    seen = summaries(carol)  # directed to both carol@localhost and carol@localhost/pc: once or twice
    assert seen and set(seen) == {pres("unavailable", "alice@localhost/phone")}, seen


# -- resources and priorities (s4.2.2, s8.5.2) ------------------------------------------------------------


def test_second_resource_sees_the_first_and_is_seen(server):
    phone = online(server, "alice@localhost/phone", presence="<presence><show>dnd</show></presence>")
    tab = connect(server, "alice@localhost/tab", presence="<presence><priority>5</priority></presence>")
    seen = tab.drain()
    assert sorted(summary(el) for el in seen) == [
        pres("available", "alice@localhost/phone"),
        pres("available", "alice@localhost/tab"),
    ]
    (of_phone,) = [el for el in seen if el.get("from") == "alice@localhost/phone"]
    assert of_phone.findtext("show") == "dnd"
    phone.expect("<presence from='alice@localhost/tab'><priority>5</priority></presence>")
    phone.expect_nothing()


def test_negative_priority_gets_presence_and_pushes_but_no_bare_jid_messages(server):
    low = online(server, "alice@localhost/low", presence="<presence><priority>-1</priority></presence>")
    high = online(server, "alice@localhost/high")
    bob = online(server, "bob@localhost/pc")
    mutual(high, bob, low)

    bob.send("<message to='alice@localhost' type='chat' id='m1'><body>hi</body></message>")
    high.expect("<message from='bob@localhost/pc' type='chat'><body>hi</body></message>")
    bob.send("<message to='alice@localhost' id='m2'><body>normal</body></message>")
    high.expect("<message from='bob@localhost/pc'><body>normal</body></message>")
    low.expect_nothing()

    bob.send("<presence><show>away</show></presence>")
    low.expect("<presence from='bob@localhost/pc'><show>away</show></presence>")
    high.expect("<presence from='bob@localhost/pc'><show>away</show></presence>")
    low.send(
        "<iq type='set' id='r'><query xmlns='jabber:iq:roster'><item jid='carol@localhost'/></query></iq>"
    )
    high.expect("<iq type='set'><query xmlns='jabber:iq:roster'><item jid='carol@localhost'/></query></iq>")
    assert push("carol@localhost") in summaries(low)
    bob.send("<message to='alice@localhost/low' type='chat'><body>direct</body></message>")
    low.expect("<message from='bob@localhost/pc'><body>direct</body></message>")

    # with only the negative resource left, a message to the bare JID is handled as for an offline user
    # (s8.5.2.1.1): stored by an offline-storage plugin if one is enabled, else an error (s8.5.2.2.1)
    high.send("<presence type='unavailable'/>")
    high.drain(), low.drain(), bob.drain()
    bob.send("<message to='alice@localhost' type='chat' id='m3'><body>anyone?</body></message>")
    low.expect_nothing()
    assert summaries(bob) in ([], [("message-error", "alice@localhost", "service-unavailable")])


def test_chat_to_the_bare_jid_goes_to_the_highest_priority(server):
    one = online(server, "alice@localhost/one", presence="<presence><priority>1</priority></presence>")
    ten = online(server, "alice@localhost/ten", presence="<presence><priority>10</priority></presence>")
    bob = online(server, "bob@localhost/pc")
    one.drain()
    bob.send("<message to='alice@localhost' type='chat'><body>first</body></message>")
    ten.expect("<message><body>first</body></message>")
    one.expect_nothing()
    ten.send("<presence><priority>0</priority></presence>")
    ten.drain(), one.drain()
    bob.send("<message to='alice@localhost' type='chat'><body>second</body></message>")
    one.expect("<message><body>second</body></message>")
    ten.expect_nothing()


# -- last activity authorized by subscription (XEP-0012 s4) ------------------------------------------------


def test_last_activity_of_an_account_follows_the_subscription(server):
    alice = online(server, "alice@localhost/phone")
    bob = online(server, "bob@localhost/pc")  # will be From for alice (bob subscribed to alice)
    carol = online(server, "carol@localhost/pc")  # no relation
    dave = online(server, "dave@localhost/pc")  # alice subscribed to dave: To for alice
    erin = online(server, "erin@localhost/pc")  # Both
    subscribe(bob, alice)
    subscribe(alice, dave)
    mutual(alice, erin)
    alice.send("<presence type='unavailable'><status>gone fishing</status></presence>")
    alice.send_raw("</stream:stream>")
    server.advance(30)
    for name, client in (("bob", bob), ("erin", erin)):
        client.drain()
        answer = client.request(LAST.format(id=f"l-{name}", to="alice@localhost"))
        assert answer.get("type") == "result", etree.tostring(answer)
        query = answer.find("{jabber:iq:last}query")
        assert query.get("seconds") == "30"
        assert query.text == "gone fishing"
    for name, client in (("carol", carol), ("dave", dave)):
        client.drain()
        answer = client.request(LAST.format(id=f"l-{name}", to="alice@localhost"))
        assert summary(answer) == ("error", f"l-{name}", "forbidden"), name


def authenticated_features(server: Any, user: str = "alice") -> etree._Element:
    """The stream features offered after SCRAM-SHA-256 and the stream restart (RFC 6120 s6.4.6)."""
    server.adduser(f"{user}@localhost")
    return server.connect().sasl_login(user, "localhost", "password")
