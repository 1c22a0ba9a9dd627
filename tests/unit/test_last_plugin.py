"""Last activity (plugins/last.py, XEP-0012) on a memory server: uptime, and an account's last logout.

The logout path needs someone allowed to see another account's presence-like data. The roster will
answer the ``presence-authorized`` event for contacts; here a plugin defined in the test answers it.
"""

from __future__ import annotations

from xmppd.config import DEFAULT_PLUGINS
from xmppd.plugin import Context, Plugin

LAST = "<iq type='get' id='{id}' to='{to}'><query xmlns='jabber:iq:last'/></iq>"


class AuthorizeEveryone(Plugin):
    """Stands in for the roster: everyone may see everyone's presence (and so last activity)."""

    name = "authorize_everyone"

    def setup(self, ctx: Context) -> None:
        ctx.hook("presence-authorized", lambda event: True)


def authorized_server(make_xmpp):
    return make_xmpp(plugins=[AuthorizeEveryone], enabled=[*DEFAULT_PLUGINS, "authorize_everyone"])


def test_uptime_of_the_server_follows_the_clock(xmpp):
    alice = xmpp.login("alice@localhost/phone")
    xmpp.advance(42)
    alice.send(LAST.format(id="u1", to="localhost"))
    alice.expect(
        "<iq type='result' id='u1' from='localhost'><query xmlns='jabber:iq:last' seconds='42'/></iq>"
    )
    xmpp.advance(8)
    alice.send(LAST.format(id="u2", to="localhost"))
    alice.expect("<iq type='result' id='u2'><query xmlns='jabber:iq:last' seconds='50'/></iq>")


def test_last_logout_seconds_and_status(make_xmpp):
    xmpp = authorized_server(make_xmpp)
    bob = xmpp.login("bob@localhost/r1", available=True)
    bob.send("<presence type='unavailable'><status>gone</status></presence>")
    bob.disconnect()
    xmpp.advance(100)
    alice = xmpp.login("alice@localhost/phone")
    answer = alice.request(LAST.format(id="l1", to="bob@localhost"))
    assert answer.get("type") == "result", answer
    assert answer.get("from") == "bob@localhost"
    query = answer.find("{jabber:iq:last}query")
    assert query.get("seconds") == "100"
    assert (query.text or "").strip() == "gone"


def test_last_logout_without_status(make_xmpp):
    xmpp = authorized_server(make_xmpp)
    bob = xmpp.login("bob@localhost/r1", available=True)
    bob.disconnect()
    xmpp.advance(7)
    alice = xmpp.login("alice@localhost/phone")
    alice.send(LAST.format(id="l1", to="bob@localhost"))
    received = alice.expect("<iq type='result' id='l1'><query xmlns='jabber:iq:last' seconds='7'/></iq>")
    assert not (received.find("{jabber:iq:last}query").text or "").strip()


def test_logout_is_recorded_only_when_the_last_resource_leaves(make_xmpp):
    xmpp = authorized_server(make_xmpp)
    first = xmpp.login("bob@localhost/r1", available=True)
    second = xmpp.login("bob@localhost/r2", create=False, available=True)
    alice = xmpp.login("alice@localhost/phone")
    first.disconnect()
    xmpp.advance(30)
    alice.send(LAST.format(id="l1", to="bob@localhost"))
    alice.expect("<iq type='result' id='l1'><query xmlns='jabber:iq:last' seconds='0'/></iq>")
    second.disconnect()
    xmpp.advance(5)
    alice.send(LAST.format(id="l2", to="bob@localhost"))
    alice.expect("<iq type='result' id='l2'><query xmlns='jabber:iq:last' seconds='5'/></iq>")


def test_online_account_answers_zero(make_xmpp):
    xmpp = authorized_server(make_xmpp)
    xmpp.login("bob@localhost/r1", available=True)
    xmpp.advance(60)
    alice = xmpp.login("alice@localhost/phone")
    alice.send(LAST.format(id="l1", to="bob@localhost"))
    alice.expect("<iq type='result' id='l1'><query xmlns='jabber:iq:last' seconds='0'/></iq>")


def test_own_account_is_answered_without_authorization(xmpp):
    alice = xmpp.login("alice@localhost/phone", available=True)
    alice.send(LAST.format(id="l1", to="alice@localhost"))
    alice.expect("<iq type='result' id='l1'><query xmlns='jabber:iq:last' seconds='0'/></iq>")


def test_others_are_forbidden_without_authorization(xmpp):
    bob = xmpp.login("bob@localhost/r1", available=True)
    bob.disconnect()
    alice = xmpp.login("alice@localhost/phone")
    alice.send(LAST.format(id="l1", to="bob@localhost"))
    alice.expect(
        "<iq type='error' id='l1'><error type='auth'>"
        "<forbidden xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
    )


def test_never_logged_in_account_is_item_not_found(make_xmpp):
    xmpp = authorized_server(make_xmpp)
    xmpp.adduser("carol@localhost")
    alice = xmpp.login("alice@localhost/phone")
    alice.send(LAST.format(id="l1", to="carol@localhost"))
    alice.expect(
        "<iq type='error' id='l1'><error><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
        "</error></iq>"
    )


def test_unknown_account_is_service_unavailable(make_xmpp):
    xmpp = authorized_server(make_xmpp)
    alice = xmpp.login("alice@localhost/phone")
    alice.send(LAST.format(id="l1", to="nobody@localhost"))
    alice.expect(
        "<iq type='error' id='l1'><error><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
        "</error></iq>"
    )
