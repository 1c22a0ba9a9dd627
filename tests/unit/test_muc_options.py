"""The muc plugin's options: checked together when the configuration is read."""

from __future__ import annotations

import pytest

from xmppd.config import ConfigError


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"default_history": 30, "max_history": 10}, "default_history (30) exceeds max_history (10)"),
        ({"default_max_occupants": 600}, "default_max_occupants (600) exceeds max_occupants (500)"),
        ({"services": ["bad domain.{domain}"]}, "is not a domain"),
        ({"room_creation": "everyone"}, "must be one of"),
    ],
)
def test_inconsistent_options_stop_the_server_with_one_line(make_xmpp, options, words):
    with pytest.raises(ConfigError) as info:
        make_xmpp(options={"muc": options})
    assert "[plugins.muc]" in str(info.value) and words in str(info.value)


def test_several_services_per_host_each_in_disco_items(make_xmpp):
    server = make_xmpp(options={"muc": {"services": ["conference.{domain}", "rooms.{domain}"]}})
    alice = server.login("alice@localhost/phone")
    reply = alice.request(
        "<iq type='get' id='i1' to='localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>"
    )
    jids = {item.get("jid") for item in reply[0]}
    assert {"conference.localhost", "rooms.localhost"} <= jids
    for domain in ("conference.localhost", "rooms.localhost"):
        info = alice.request(
            f"<iq type='get' id='i2' to='{domain}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
        )
        assert info.get("type") == "result"
        identity = info[0].find("{http://jabber.org/protocol/disco#info}identity")
        assert (identity.get("category"), identity.get("type")) == ("conference", "text")
