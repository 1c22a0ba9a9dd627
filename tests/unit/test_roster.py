"""The roster plugin (plugins/roster.py) on a memory server, checked against RFC 6121 s2: roster get, set,
update and remove, roster pushes to interested resources (s2.1.6, s2.2), the error cases of s2.3.3 and s2.5.3,
versioning (s2.6) and the item removal's subscription side effects (s2.5.2)."""

from __future__ import annotations

from typing import Any

import pytest
from lxml import etree
from twisted.internet.defer import Deferred

from xmppd.config import DEFAULT_PLUGINS
from xmppd.jid import JID
from xmppd.xml.stanza import error_condition

PLUGINS = list(dict.fromkeys([*DEFAULT_PLUGINS, "roster", "presence"]))
NS_ROSTER = "jabber:iq:roster"
NS_ROSTERVER = "urn:xmpp:features:rosterver"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
ROSTER_GET = "<iq type='get' id='{id}'><query xmlns='jabber:iq:roster'{ver}/></iq>"


# -- helpers ---------------------------------------------------------------------------------------------


@pytest.fixture
def server(make_xmpp):
    return make_xmpp(enabled=PLUGINS)


def summary(el: etree._Element) -> tuple:
    """A stanza in a form tests compare: pushes as ("push", jid, subscription, ask, approved), presence as
    ("presence", type, from), iq answers as ("result" | "error", id[, condition])."""
    if el.tag == "iq":
        query = el.find(f"{{{NS_ROSTER}}}query")
        if el.get("type") == "set" and query is not None:
            items = query.findall(f"{{{NS_ROSTER}}}item")
            assert len(items) == 1, "a roster push carries exactly one item (s2.1.6)"
            item = items[0]
            return push(
                item.get("jid"), item.get("subscription", "none"), item.get("ask"), item.get("approved")
            )
        if el.get("type") == "error":
            return ("error", el.get("id"), error_condition(el))
        return (el.get("type"), el.get("id"))
    if el.tag == "presence":
        return ("presence", el.get("type", "available"), el.get("from"))
    return (el.tag, el.get("from"))


def push(jid: str, subscription: str = "none", ask: str | None = None, approved: str | None = None) -> tuple:
    return ("push", jid, subscription, ask, approved)


def summaries(client: Any) -> list[tuple]:
    return [summary(el) for el in client.drain()]


def roster_get(client: Any, ver: str | None = None, id_: str = "get") -> etree._Element:
    attr = "" if ver is None else f" ver='{ver}'"
    answer = client.request(ROSTER_GET.format(id=id_, ver=attr))
    assert answer.get("type") == "result", etree.tostring(answer)
    return answer


def roster_items(client: Any) -> dict[str, dict[str, Any]]:
    """The roster as the server returns it: {jid: {"name", "subscription", "ask", "approved", "groups"}}."""
    query = roster_get(client, id_="items").find(f"{{{NS_ROSTER}}}query")
    assert query is not None
    return {item.get("jid"): describe(item) for item in query.findall(f"{{{NS_ROSTER}}}item")}


def describe(item: etree._Element) -> dict[str, Any]:
    return {
        "name": item.get("name"),
        "subscription": item.get("subscription", "none"),
        "ask": item.get("ask"),
        "approved": item.get("approved"),
        "groups": [g.text for g in item.findall(f"{{{NS_ROSTER}}}group")],
    }


def roster_set(client: Any, item_xml: str, id_: str = "set") -> None:
    client.send(f"<iq type='set' id='{id_}'><query xmlns='jabber:iq:roster'>{item_xml}</query></iq>")


def interested(server: Any, jid: str) -> Any:
    """A client that asked for the roster (an interested resource, s2.2), not available."""
    client = server.login(jid)
    roster_get(client, id_="login")
    return client


def online(server: Any, jid: str) -> Any:
    """An interested and available resource, with everything it received on the way drained."""
    client = interested(server, jid)
    client.send("<presence/>")
    client.drain()
    return client


def the_push(received: list[etree._Element]) -> etree._Element:
    pushes = [el for el in received if summary(el)[0] == "push"]
    assert len(pushes) == 1, [etree.tostring(el) for el in received]
    return pushes[0]


def push_ver(el: etree._Element) -> str:
    return el.find(f"{{{NS_ROSTER}}}query").get("ver")


def mutual(alice: Any, bob: Any) -> None:
    """Subscribe alice and bob to each other (s3.1), leaving nothing unread."""
    a, b = str(alice.jid).split("/")[0], str(bob.jid).split("/")[0]
    alice.send(f"<presence to='{b}' type='subscribe'/>")
    bob.send(f"<presence to='{a}' type='subscribed'/>")
    bob.send(f"<presence to='{a}' type='subscribe'/>")
    alice.send(f"<presence to='{b}' type='subscribed'/>")
    alice.drain(), bob.drain()
    assert roster_items(alice)[b]["subscription"] == "both"
    assert roster_items(bob)[a]["subscription"] == "both"


# -- roster get (s2.1.3, s2.2) ------------------------------------------------------------------------------


def test_empty_roster_is_a_query_without_items_and_with_a_version(server):
    alice = server.login("alice@localhost/phone")
    answer = roster_get(alice)
    assert answer.get("to") == "alice@localhost/phone"
    query = answer.find(f"{{{NS_ROSTER}}}query")
    assert query is not None, "an empty roster is an empty <query/>, not an empty result (s2.1.4)"
    assert len(query) == 0
    assert query.get("ver") is not None, "the server includes 'ver' on results (s2.6.3)"
    alice.expect_nothing()


def test_roster_get_addressed_to_the_own_bare_jid(server):
    alice = server.login("alice@localhost/phone")
    answer = alice.request(
        "<iq type='get' id='g1' to='alice@localhost'><query xmlns='jabber:iq:roster'/></iq>"
    )
    assert answer.get("type") == "result"
    assert answer.find(f"{{{NS_ROSTER}}}query") is not None


# -- adding, updating, removing (s2.3, s2.4, s2.5) ----------------------------------------------------------


def test_add_item_answers_the_setter_and_pushes_to_interested_resources_only(server):
    phone = interested(server, "alice@localhost/phone")
    laptop = interested(server, "alice@localhost/laptop")
    watch = server.login("alice@localhost/watch")  # connected, never asked for the roster
    watch.send("<presence/>")  # even an available resource is not interested without a roster get
    watch.drain(), phone.drain(), laptop.drain()
    before = push_ver(roster_get(phone))

    roster_set(phone, "<item jid='nurse@example.com' name='Nurse'><group>Servants</group></item>", "a1")
    got = phone.drain()
    assert sorted(summary(el) for el in got) == sorted([("result", "a1"), push("nurse@example.com")])
    phone_push = the_push(got)
    assert phone_push.get("to") == "alice@localhost/phone"
    assert phone_push.get("from") in (None, "alice@localhost"), "pushes come from the account (s2.1.6)"
    item = phone_push.find(f"{{{NS_ROSTER}}}query/{{{NS_ROSTER}}}item")
    assert describe(item) == {
        "name": "Nurse",
        "subscription": "none",
        "ask": None,
        "approved": None,
        "groups": ["Servants"],
    }
    laptop_push = the_push(laptop_got := laptop.drain())
    assert len(laptop_got) == 1
    assert laptop_push.get("to") == "alice@localhost/laptop"
    ver = push_ver(phone_push)
    assert ver is not None and ver != before
    assert push_ver(laptop_push) == ver, "one modification, one version"
    watch.expect_nothing()

    assert roster_items(phone) == {"nurse@example.com": describe(item)}
    assert push_ver(roster_get(laptop, ver="")) == ver


def test_update_replaces_the_item_as_given(server):
    alice = interested(server, "alice@localhost/phone")
    roster_set(alice, "<item jid='romeo@example.net' name='Romeo'><group>Friends</group></item>", "u1")
    first = the_push(alice.drain())
    roster_set(
        alice,
        "<item jid='romeo@example.net' name='Romeo'><group>Friends</group><group>Lovers</group></item>",
        "u2",
    )
    second = the_push(got := alice.drain())
    assert ("result", "u2") in [summary(el) for el in got]
    assert describe(second.find(f".//{{{NS_ROSTER}}}item"))["groups"] == ["Friends", "Lovers"]
    # s2.4.1: no <group/> means no group; an empty name means no name.
    roster_set(alice, "<item jid='romeo@example.net' name=''/>", "u3")
    third = the_push(alice.drain())
    assert describe(third.find(f".//{{{NS_ROSTER}}}item")) == {
        "name": None,
        "subscription": "none",
        "ask": None,
        "approved": None,
        "groups": [],
    }
    versions = [push_ver(first), push_ver(second), push_ver(third)]
    assert len(set(versions)) == 3, "the version of every push is unique (s2.6.3)"
    assert roster_items(alice)["romeo@example.net"]["groups"] == []


def test_remove_pushes_subscription_remove(server):
    phone = interested(server, "alice@localhost/phone")
    laptop = interested(server, "alice@localhost/laptop")
    roster_set(phone, "<item jid='nurse@example.com' name='Nurse'/>")
    phone.drain(), laptop.drain()

    roster_set(phone, "<item jid='nurse@example.com' subscription='remove'/>", "r1")
    assert sorted(summaries(phone)) == sorted([("result", "r1"), push("nurse@example.com", "remove")])
    assert summaries(laptop) == [push("nurse@example.com", "remove")]
    assert roster_items(phone) == {}


def test_remove_unknown_item_is_item_not_found(server):
    alice = interested(server, "alice@localhost/phone")
    roster_set(alice, "<item jid='nobody@example.com' subscription='remove'/>", "r2")
    assert summaries(alice) == [("error", "r2", "item-not-found")]  # s2.5.3, and no push


def test_client_supplied_subscription_ask_and_approved_are_ignored(server):
    alice = interested(server, "alice@localhost/phone")
    roster_set(alice, "<item jid='bob@localhost' subscription='both' ask='subscribe' approved='true'/>", "s1")
    assert sorted(summaries(alice)) == sorted([("result", "s1"), push("bob@localhost", "none")])
    assert roster_items(alice)["bob@localhost"]["subscription"] == "none"


def test_update_keeps_the_subscription_state(server):
    alice = online(server, "alice@localhost/phone")
    bob = online(server, "bob@localhost/pc")
    mutual(alice, bob)
    roster_set(alice, "<item jid='bob@localhost' name='Bob' subscription='none'><group>Work</group></item>")
    got = alice.drain()
    assert summary(the_push(got)) == push("bob@localhost", "both")
    assert roster_items(alice)["bob@localhost"] == {
        "name": "Bob",
        "subscription": "both",
        "ask": None,
        "approved": None,
        "groups": ["Work"],
    }
    bob.expect_nothing()  # a roster set alone tells the contact nothing


# -- errors (s2.1.5, s2.3.3) ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query, condition, error_type",
    [
        pytest.param(
            "<item jid='nurse@example.com'/><item jid='mother@example.com'/>",
            "bad-request",
            "modify",
            id="two items",
        ),
        pytest.param("", "bad-request", "modify", id="no item"),
        pytest.param(
            "<item jid='nurse@example.com'><group>Servants</group><group>Servants</group></item>",
            "bad-request",
            "modify",
            id="duplicate group",
        ),
        pytest.param(
            "<item jid='nurse@example.com'><group></group></item>",
            "not-acceptable",
            "modify",
            id="empty group",
        ),
        pytest.param(
            f"<item jid='nurse@example.com' name='{'n' * 11}'/>", "not-acceptable", "modify", id="long name"
        ),
        pytest.param(
            f"<item jid='nurse@example.com'><group>{'g' * 11}</group></item>",
            "not-acceptable",
            "modify",
            id="long group",
        ),
        pytest.param("<item jid='a@b@c'/>", "jid-malformed", "modify", id="invalid jid"),
        pytest.param("<item jid='@example.com'/>", "jid-malformed", "modify", id="empty localpart"),
        pytest.param("<item name='No JID'/>", "jid-malformed", "modify", id="no jid"),
    ],
)
def test_roster_set_errors(make_xmpp, query, condition, error_type):
    server = make_xmpp(enabled=PLUGINS, options={"roster": {"max_text": 10}})
    alice = interested(server, "alice@localhost/phone")
    laptop = interested(server, "alice@localhost/laptop")
    before = roster_get(alice, id_="before").find(f"{{{NS_ROSTER}}}query").get("ver")
    alice.send(f"<iq type='set' id='e1'><query xmlns='jabber:iq:roster'>{query}</query></iq>")
    answer = alice.next()
    assert summary(answer) == ("error", "e1", condition)
    assert answer.find("error").get("type") == error_type
    alice.expect_nothing()
    laptop.expect_nothing()  # nothing changed, nothing pushed
    assert roster_get(alice, ver=before).find(f"{{{NS_ROSTER}}}query") is None


def test_names_at_the_limit_are_accepted(make_xmpp):
    server = make_xmpp(enabled=PLUGINS, options={"roster": {"max_text": 10}})
    alice = interested(server, "alice@localhost/phone")
    roster_set(
        alice, f"<item jid='nurse@example.com' name='{'n' * 10}'><group>{'g' * 10}</group></item>", "ok"
    )
    assert ("result", "ok") in summaries(alice)


@pytest.mark.parametrize("to", ["bob@localhost", "localhost"])
@pytest.mark.parametrize("kind", ["get", "set"])
def test_roster_of_someone_else_is_forbidden(server, to, kind):
    alice = interested(server, "alice@localhost/phone")
    bob = interested(server, "bob@localhost/pc")
    roster_set(bob, "<item jid='carol@localhost' name='Carol'/>")
    bob.drain()
    payload = "<item jid='mallory@localhost'/>" if kind == "set" else ""
    answer = alice.request(
        f"<iq type='{kind}' id='f1' to='{to}'><query xmlns='jabber:iq:roster'>{payload}</query></iq>"
    )
    assert summary(answer) == ("error", "f1", "forbidden")
    assert answer.find("error").get("type") == "auth"
    assert answer.find(f"{{{NS_ROSTER}}}query/{{{NS_ROSTER}}}item") is None, "nothing of bob's roster leaks"
    bob.expect_nothing()
    assert list(roster_items(bob)) == ["carol@localhost"]


def test_roster_size_limit_is_not_allowed(make_xmpp):
    server = make_xmpp(enabled=PLUGINS, options={"roster": {"max_items": 2}})
    alice = interested(server, "alice@localhost/phone")
    for n in (1, 2):
        roster_set(alice, f"<item jid='c{n}@localhost'/>", f"a{n}")
    alice.drain()
    roster_set(alice, "<item jid='c3@localhost'/>", "a3")
    assert summaries(alice) == [("error", "a3", "not-allowed")]
    roster_set(alice, "<item jid='c2@localhost' name='Two'/>", "a4")  # updating an item is fine
    assert ("result", "a4") in summaries(alice)
    roster_set(alice, "<item jid='c1@localhost' subscription='remove'/>", "a5")
    roster_set(alice, "<item jid='c3@localhost'/>", "a6")
    assert ("result", "a6") in summaries(alice)
    assert sorted(roster_items(alice)) == ["c2@localhost", "c3@localhost"]


# -- versioning (s2.6) ------------------------------------------------------------------------------------


def test_roster_get_with_the_current_version_is_an_empty_result(server):
    alice = interested(server, "alice@localhost/phone")
    roster_set(alice, "<item jid='nurse@example.com'/>")
    ver = push_ver(the_push(alice.drain()))
    answer = roster_get(alice, ver=ver, id_="v1")
    assert len(answer) == 0, "an empty IQ-result, not an empty <query/> (s2.6.3)"


def test_roster_get_with_an_old_or_empty_version_is_the_full_roster(server):
    alice = interested(server, "alice@localhost/phone")
    roster_set(alice, "<item jid='nurse@example.com'/>")
    old = push_ver(the_push(alice.drain()))
    roster_set(alice, "<item jid='romeo@example.net'/>")
    current = push_ver(the_push(alice.drain()))
    for ver in (old, ""):
        answer = roster_get(alice, ver=ver, id_="v2")
        query = answer.find(f"{{{NS_ROSTER}}}query")
        assert query is not None and query.get("ver") == current
        assert sorted(i.get("jid") for i in query) == ["nurse@example.com", "romeo@example.net"]


def test_a_versioned_roster_get_makes_the_resource_interested(server):
    alice = interested(server, "alice@localhost/phone")
    ver = roster_get(alice).find(f"{{{NS_ROSTER}}}query").get("ver")
    laptop = server.login("alice@localhost/laptop")
    assert len(roster_get(laptop, ver=ver)) == 0
    roster_set(alice, "<item jid='nurse@example.com'/>")
    assert summaries(laptop) == [push("nurse@example.com")]


def test_stream_features_after_authentication_offer_roster_versioning(server):
    features = authenticated_features(server)
    assert features.find(f"{{{NS_ROSTERVER}}}ver") is not None, etree.tostring(features)  # s2.6.1


# -- removal and subscriptions (s2.5.2), persistence ---------------------------------------------------------


def test_removing_a_mutual_contact_cancels_both_subscriptions(server):
    alice = online(server, "alice@localhost/phone")
    bob = online(server, "bob@localhost/pc")
    mutual(alice, bob)

    roster_set(alice, "<item jid='bob@localhost' subscription='remove'/>", "rm")
    got = summaries(alice)
    assert ("result", "rm") in got and push("bob@localhost", "remove") in got
    # bob's server, on the unsubscribe (s3.3.3), stops showing bob to alice
    assert ("presence", "unavailable", "bob@localhost/pc") in got
    assert set(got) <= {
        ("result", "rm"),
        push("bob@localhost", "remove"),
        ("presence", "unavailable", "bob@localhost/pc"),
    }

    seen = summaries(bob)
    unsubscribe = ("presence", "unsubscribe", "alice@localhost")
    unsubscribed = ("presence", "unsubscribed", "alice@localhost")
    gone = ("presence", "unavailable", "alice@localhost/phone")
    assert set(seen) == {
        unsubscribe,
        unsubscribed,
        gone,
        push("alice@localhost", "to"),
        push("alice@localhost"),
    }
    assert len(seen) == 5, seen
    order = seen.index
    assert order(unsubscribe) < order(push("alice@localhost", "to")), "s3.3.3: the stanza before the push"
    assert order(gone) < order(unsubscribed), "s3.2.2: unavailable while alice is still subscribed"
    assert order(unsubscribed) < order(push("alice@localhost")), "s3.2.3: the stanza before the push"
    assert order(push("alice@localhost", "to")) < order(push("alice@localhost"))

    assert "bob@localhost" not in roster_items(alice)
    assert roster_items(bob)["alice@localhost"]["subscription"] == "none"
    bob.send("<presence><show>away</show></presence>")
    bob.drain()
    alice.expect_nothing()  # no subscription left either way
    alice.send("<presence><show>away</show></presence>")
    alice.drain()
    bob.expect_nothing()


def test_removing_a_contact_with_a_pending_request_cancels_it(server):
    alice = online(server, "alice@localhost/phone")
    bob = online(server, "bob@localhost/pc")
    alice.send("<presence to='bob@localhost' type='subscribe'/>")
    alice.drain(), bob.drain()
    roster_set(alice, "<item jid='bob@localhost' subscription='remove'/>", "rm")
    alice.drain()
    bob.send("<presence to='alice@localhost' type='subscribed'/>")  # too late: alice asked nothing now
    assert not [s for s in summaries(alice) if s[0] == "push" or s[1] == "subscribed"]
    assert "bob@localhost" not in roster_items(alice)


def test_roster_persists_across_sessions(server):
    alice = interested(server, "alice@localhost/phone")
    roster_set(alice, "<item jid='nurse@example.com' name='Nurse'><group>Servants</group></item>")
    ver = push_ver(the_push(alice.drain()))
    alice.send_raw("</stream:stream>")
    again = server.login("alice@localhost/laptop", create=False)
    answer = roster_get(again)
    query = answer.find(f"{{{NS_ROSTER}}}query")
    assert query.get("ver") == ver
    assert [describe(i) for i in query] == [
        {"name": "Nurse", "subscription": "none", "ask": None, "approved": None, "groups": ["Servants"]}
    ]
    assert len(roster_get(again, ver=ver)) == 0


def authenticated_features(server: Any, user: str = "alice") -> etree._Element:
    """The stream features offered after SCRAM-SHA-256 and the stream restart (RFC 6120 s6.4.6)."""
    server.adduser(f"{user}@localhost")
    return server.connect().sasl_login(user, "localhost", "password")


def test_deleting_an_account_cancels_its_contacts_subscriptions(server):
    alice = online(server, "alice@localhost/phone")
    bob = online(server, "bob@localhost/pc")
    mutual(alice, bob)
    alice.drain()

    done = Deferred.fromCoroutine(server.server.delete_account(JID("bob", "localhost")))
    assert done.called
    bob.drain()
    assert bob.stream_errors == ["not-authorized"]  # bob's session ends
    got = summaries(alice)
    # bob's unsubscribe and unsubscribed reach alice, and her roster item drops to none with the pushes
    assert ("presence", "unsubscribe", "bob@localhost") in got
    assert ("presence", "unsubscribed", "bob@localhost") in got
    assert roster_items(alice)["bob@localhost"]["subscription"] == "none"
