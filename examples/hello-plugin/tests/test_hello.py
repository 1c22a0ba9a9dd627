"""The plugin's own tests, with xmppd's test fixture: a whole server in memory, real client negotiation."""

from hello_plugin import Hello


def test_hello_answers_and_counts(make_xmpp):
    xmpp = make_xmpp(plugins=[Hello], enabled=["hello"], options={"hello": {"greeting": "Welcome"}})
    alice = xmpp.login("alice@localhost/phone")
    for count in ("1", "2"):
        alice.send("<iq type='get' id='h1' to='localhost'><hello xmlns='urn:example:hello'/></iq>")
        alice.expect(
            f"<iq type='result' id='h1' from='localhost'>"
            f"<hello xmlns='urn:example:hello' count='{count}'>Welcome, alice@localhost/phone!</hello></iq>"
        )


def test_hello_is_in_disco(make_xmpp):
    xmpp = make_xmpp(plugins=[Hello], enabled=["hello"])
    alice = xmpp.login("alice@localhost/phone")
    alice.send(
        "<iq type='get' id='d1' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
    )
    alice.expect(
        "<iq type='result' id='d1'><query xmlns='http://jabber.org/protocol/disco#info'>"
        "<feature var='urn:example:hello'/></query></iq>"
    )
