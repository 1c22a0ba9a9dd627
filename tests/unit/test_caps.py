"""Entity capabilities (plugins/caps.py, XEP-0115): the verification string, and the plugin on a memory
server watching clients' presence, querying, verifying and caching their caps, and advertising its own.
"""

from __future__ import annotations

import base64
import hashlib

import pytest
from lxml import etree
from xmppd.plugins.caps import (
    NS_CAPS,
    SERVER_NODE,
    DiscoInfo,
    IllFormed,
    UnsupportedHash,
    verification_string,
)

from xmppd.config import DEFAULT_PLUGINS
from xmppd.jid import parse_jid
from xmppd.testing import _sasl, parse_pattern
from xmppd.testing.scram import ScramClient
from xmppd.xml.stanza import error_condition

NS_INFO = "http://jabber.org/protocol/disco#info"
NS_DATA = "jabber:x:data"

# XEP-0115 s5.2: Exodus 0.9.1.
EXODUS_NODE = "http://code.google.com/p/exodus"
EXODUS_VER = "QgayPKawpkPSDYmwT/WM94uAlu0="
EXODUS_FEATURES = frozenset(
    {
        "http://jabber.org/protocol/caps",
        "http://jabber.org/protocol/disco#info",
        "http://jabber.org/protocol/disco#items",
        "http://jabber.org/protocol/muc",
    }
)
EXODUS_INFO = (
    f"<query xmlns='{NS_INFO}' node='{EXODUS_NODE}#{EXODUS_VER}'>"
    "<identity category='client' name='Exodus 0.9.1' type='pc'/>"
    + "".join(f"<feature var='{f}'/>" for f in sorted(EXODUS_FEATURES))
    + "</query>"
)
EXODUS_S = (
    "client/pc//Exodus 0.9.1<http://jabber.org/protocol/caps<http://jabber.org/protocol/disco#info<"
    "http://jabber.org/protocol/disco#items<http://jabber.org/protocol/muc<"
)

# XEP-0115 s5.3: Psi 0.11, with two identities in different languages and a XEP-0128 form.
PSI_INFO = f"""<query xmlns='{NS_INFO}' node='http://psi-im.org#q07IKJEyjvHSyhy//CH0CxmKi8w='>
    <identity xml:lang='en' category='client' name='Psi 0.11' type='pc'/>
    <identity xml:lang='el' category='client' name='&#936; 0.11' type='pc'/>
    <feature var='http://jabber.org/protocol/caps'/>
    <feature var='http://jabber.org/protocol/disco#info'/>
    <feature var='http://jabber.org/protocol/disco#items'/>
    <feature var='http://jabber.org/protocol/muc'/>
    <x xmlns='jabber:x:data' type='result'>
      <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:dataforms:softwareinfo</value></field>
      <field var='ip_version'><value>ipv4</value><value>ipv6</value></field>
      <field var='os'><value>Mac</value></field>
      <field var='os_version'><value>10.5.1</value></field>
      <field var='software'><value>Psi</value></field>
      <field var='software_version'><value>0.11</value></field>
    </x>
  </query>"""
PSI_VER = "q07IKJEyjvHSyhy//CH0CxmKi8w="
PSI_S = (
    "client/pc/el/\u03a8 0.11<client/pc/en/Psi 0.11<http://jabber.org/protocol/caps<"
    "http://jabber.org/protocol/disco#info<http://jabber.org/protocol/disco#items<"
    "http://jabber.org/protocol/muc<urn:xmpp:dataforms:softwareinfo<"
    "ip_version<ipv4<ipv6<os<Mac<os_version<10.5.1<software<Psi<software_version<0.11<"
)


def xml(text: str) -> etree._Element:
    return etree.fromstring(text)


def caps_presence(ver: str = EXODUS_VER, node: str = EXODUS_NODE, hash_: str | None = "sha-1") -> str:
    hash_attr = f" hash='{hash_}'" if hash_ else ""
    return f"<presence><c xmlns='{NS_CAPS}'{hash_attr} node='{node}' ver='{ver}'/></presence>"


def info_result(iq_id: str, info: str = EXODUS_INFO) -> str:
    return f"<iq type='result' id='{iq_id}' to='localhost'>{info}</iq>"


# -- the verification string (s5) ---------------------------------------------------------------------------


def test_simple_generation_example_s5_2():
    info = DiscoInfo.from_query(xml(EXODUS_INFO))
    assert info.hash_input() == EXODUS_S
    assert info.verification_string("sha-1") == EXODUS_VER
    assert verification_string(xml(EXODUS_INFO)) == EXODUS_VER


def test_complex_generation_example_s5_3():
    info = DiscoInfo.from_query(xml(PSI_INFO))
    assert info.hash_input() == PSI_S
    assert verification_string(xml(PSI_INFO), "sha-1") == PSI_VER


def test_order_of_the_answer_does_not_matter():
    query = xml(PSI_INFO)
    query[:] = list(reversed(list(query)))
    form = query.find(f"{{{NS_DATA}}}x")
    form[:] = list(reversed(list(form)))
    assert verification_string(query) == PSI_VER


def test_other_hashes_by_their_iana_names():
    s = EXODUS_S.encode()
    info = DiscoInfo.from_query(xml(EXODUS_INFO))
    for name, fn in (("sha-256", hashlib.sha256), ("sha-512", hashlib.sha512)):
        assert info.verification_string(name) == base64.b64encode(fn(s).digest()).decode()
    with pytest.raises(UnsupportedHash):
        info.verification_string("md5")


@pytest.mark.parametrize(
    "extra, why",
    [
        ("<identity category='client' name='Exodus 0.9.1' type='pc'/>", "identity"),  # s5.4 step 3.3
        ("<feature var='http://jabber.org/protocol/muc'/>", "feature"),  # s5.4 step 3.4
        (
            "<x xmlns='jabber:x:data' type='result'><field var='FORM_TYPE' type='hidden'>"
            "<value>urn:a</value><value>urn:b</value></field></x>",
            "FORM_TYPE",
        ),  # s5.4 step 3.5
    ],
)
def test_duplicates_make_an_answer_ill_formed(extra, why):
    query = xml(EXODUS_INFO)
    query.append(xml(f"<wrap xmlns='{NS_INFO}'>{extra}</wrap>")[0])
    with pytest.raises(IllFormed, match=why):
        DiscoInfo.from_query(query)


def test_two_forms_of_one_form_type_are_ill_formed():
    form = f"<x xmlns='{NS_DATA}'><field var='FORM_TYPE' type='hidden'><value>urn:a</value></field></x>"
    query = xml(EXODUS_INFO)
    query.append(xml(form))
    query.append(xml(form))
    with pytest.raises(IllFormed, match="two forms"):
        DiscoInfo.from_query(query)


def test_forms_without_a_hidden_form_type_are_ignored():
    """s5.4 step 3.6: the verification string is that of the answer without those forms."""
    query = xml(EXODUS_INFO)
    query.append(xml(f"<x xmlns='{NS_DATA}'><field var='FORM_TYPE'><value>urn:a</value></field></x>"))
    query.append(xml(f"<x xmlns='{NS_DATA}'><field var='os'><value>Mac</value></field></x>"))
    assert verification_string(query) == EXODUS_VER


def test_only_an_identitys_own_language_counts():
    """The router stamps the stream's xml:lang on the iq; the client hashed its identities without it."""
    iq = xml(f"<iq xml:lang='en' xmlns='jabber:client'>{EXODUS_INFO}</iq>")
    assert verification_string(iq[0]) == EXODUS_VER


def test_stored_form_round_trips_and_bad_data_is_refused():
    info = DiscoInfo.from_query(xml(PSI_INFO))
    assert DiscoInfo.from_json(info.to_json()) == info
    for bad in (None, {}, {"identities": [["a"]], "features": [], "forms": []}, {"features": 3}):
        with pytest.raises(ValueError):
            DiscoInfo.from_json(bad)


# -- the plugin on a memory server ------------------------------------------------------------------------


def caps_server(make_xmpp, **options):
    xmpp = make_xmpp(enabled=[*DEFAULT_PLUGINS, "caps"], options={"caps": options} if options else None)
    events = []
    xmpp.server.hosts["localhost"].bus.hook("caps-updated", events.append)
    return xmpp, xmpp.server.plugins.instance("localhost", "caps"), events


def queries(received: list[etree._Element]) -> list[etree._Element]:
    return [el for el in received if el.tag == "iq" and el.find(f"{{{NS_INFO}}}query") is not None]


def one_query(client, node: str = f"{EXODUS_NODE}#{EXODUS_VER}") -> etree._Element:
    found = queries(client.drain())
    assert len(found) == 1, found
    iq = found[0]
    assert iq.get("type") == "get"
    assert iq.get("from") == "localhost"
    assert iq.get("to") == client.jid  # s6.2: the exact full JID
    assert iq.find(f"{{{NS_INFO}}}query").get("node") == node
    return iq


def test_new_ver_is_queried_verified_cached_and_announced(make_xmpp):
    xmpp, caps, events = caps_server(make_xmpp)
    alice = xmpp.login("alice@localhost/phone")
    alice.send(caps_presence())
    query = one_query(alice)
    jid = parse_jid("alice@localhost/phone")
    assert caps.features(jid) is None  # not known until the client answered
    assert xmpp.server.sessions.get(jid).data["caps"] == (EXODUS_NODE, EXODUS_VER, "sha-1")

    alice.send(info_result(query.get("id")))
    assert caps.features(jid) == EXODUS_FEATURES
    assert caps.features("alice@localhost/phone") == EXODUS_FEATURES
    assert caps.info(jid).identities == (("client", "pc", "", "Exodus 0.9.1"),)
    assert [(e.session.jid, e.features, e.verified) for e in events] == [(jid, EXODUS_FEATURES, True)]
    stored = xmpp.server.storage.get("localhost", "caps", f"sha-1:{EXODUS_VER}").result
    assert stored["features"] == sorted(EXODUS_FEATURES)

    # s1.2, s8.2: another client advertising the same ver is not asked.
    bob = xmpp.login("bob@localhost/pc")
    bob.send(caps_presence(node="http://other.example/client"))
    assert queries(bob.drain()) == []
    assert caps.features(parse_jid("bob@localhost/pc")) == EXODUS_FEATURES
    assert [e.session.jid for e in events] == [jid, parse_jid("bob@localhost/pc")]
    assert caps.features(parse_jid("bob@localhost/nothing")) is None


def test_one_query_per_ver_in_flight(make_xmpp):
    xmpp, caps, events = caps_server(make_xmpp)
    alice = xmpp.login("alice@localhost/phone")
    bob = xmpp.login("bob@localhost/pc")
    alice.send(caps_presence())
    bob.send(caps_presence())
    query = one_query(alice)
    assert queries(bob.drain()) == []
    alice.send(info_result(query.get("id")))
    assert caps.features(parse_jid("bob@localhost/pc")) == EXODUS_FEATURES
    assert len(events) == 2


def test_wrong_answer_is_not_cached_and_another_account_is_asked(make_xmpp):
    xmpp, caps, events = caps_server(make_xmpp)
    alice = xmpp.login("alice@localhost/phone")
    laptop = xmpp.login("alice@localhost/laptop", create=False)
    bob = xmpp.login("bob@localhost/pc")
    for client in (alice, laptop, bob):
        client.send(caps_presence())
    query = one_query(alice)
    lying = EXODUS_INFO.replace("<feature var='http://jabber.org/protocol/muc'/>", "")
    alice.send(info_result(query.get("id"), lying))  # hashes to another ver (s5.4 step 3.9)
    assert caps.features(parse_jid("alice@localhost/phone")) is None
    assert xmpp.server.storage.get("localhost", "caps", f"sha-1:{EXODUS_VER}").result is None
    assert events == []
    assert queries(laptop.drain()) == []  # the same account is not asked again
    query = one_query(bob)
    bob.send(info_result(query.get("id")))
    for jid in ("alice@localhost/phone", "alice@localhost/laptop", "bob@localhost/pc"):
        assert caps.features(parse_jid(jid)) == EXODUS_FEATURES


def test_ill_formed_and_error_answers_are_not_cached(make_xmpp):
    xmpp, caps, _ = caps_server(make_xmpp)
    alice = xmpp.login("alice@localhost/phone")
    alice.send(caps_presence())
    query = one_query(alice)
    doubled = EXODUS_INFO.replace("</query>", "<feature var='http://jabber.org/protocol/muc'/></query>")
    alice.send(info_result(query.get("id"), doubled))
    assert caps.features(parse_jid("alice@localhost/phone")) is None

    bob = xmpp.login("bob@localhost/pc")
    bob.send(caps_presence())
    query = one_query(bob)  # nothing cached: asked again
    bob.send(
        f"<iq type='error' id='{query.get('id')}' to='localhost'><error type='cancel'>"
        "<item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
    )
    assert caps.features(parse_jid("bob@localhost/pc")) is None
    assert xmpp.server.storage.get("localhost", "caps", f"sha-1:{EXODUS_VER}").result is None


def test_timeout_leaves_the_caps_unknown(make_xmpp):
    xmpp, caps, events = caps_server(make_xmpp)
    alice = xmpp.login("alice@localhost/phone")
    alice.send(caps_presence())
    query = one_query(alice)
    xmpp.advance(31)  # query_timeout is 30 s
    assert caps.features(parse_jid("alice@localhost/phone")) is None
    alice.send(info_result(query.get("id")))  # too late: no longer awaited
    assert caps.features(parse_jid("alice@localhost/phone")) is None
    assert events == []
    bob = xmpp.login("bob@localhost/pc")
    bob.send(caps_presence())
    one_query(bob)  # the ver is asked about again


def test_query_timeout_option(make_xmpp):
    xmpp, caps, _ = caps_server(make_xmpp, query_timeout=5)
    alice = xmpp.login("alice@localhost/phone")
    alice.send(caps_presence())
    query = one_query(alice)
    xmpp.advance(6)
    alice.send(info_result(query.get("id")))
    assert caps.features(parse_jid("alice@localhost/phone")) is None


def test_unavailable_and_logout_forget_the_session(make_xmpp):
    xmpp, caps, _ = caps_server(make_xmpp)
    alice = xmpp.login("alice@localhost/phone")
    alice.send(caps_presence())
    alice.send(info_result(one_query(alice).get("id")))
    jid = parse_jid("alice@localhost/phone")
    session = xmpp.server.sessions.get(jid)
    alice.send("<presence><show>away</show></presence>")  # no <c/>: still the same client (s8.4)
    assert caps.features(jid) == EXODUS_FEATURES
    alice.send("<presence type='unavailable'/>")
    assert caps.features(jid) is None
    assert "caps" not in session.data
    alice.send(caps_presence())  # known now: no query, known at once
    assert queries(alice.drain()) == []
    assert caps.features(jid) == EXODUS_FEATURES
    alice.disconnect()
    assert "caps" not in session.data
    assert caps.features(jid) is None


def test_new_caps_replace_the_old_ones(make_xmpp):
    xmpp, caps, _ = caps_server(make_xmpp)
    alice = xmpp.login("alice@localhost/phone")
    alice.send(caps_presence())
    alice.send(info_result(one_query(alice).get("id")))
    alice.send(caps_presence(ver=PSI_VER, node="http://psi-im.org"))
    jid = parse_jid("alice@localhost/phone")
    assert caps.features(jid) is None  # not the old set while the new one is asked for
    query = one_query(alice, node=f"http://psi-im.org#{PSI_VER}")
    alice.send(info_result(query.get("id"), PSI_INFO))
    assert caps.info(jid).forms[0][0] == "urn:xmpp:dataforms:softwareinfo"


def test_legacy_caps_are_ignored(make_xmpp):
    """s5.4 step 1, s13: no 'hash' attribute; the legacy format is not supported."""
    xmpp, caps, _ = caps_server(make_xmpp)
    alice = xmpp.login("alice@localhost/phone")
    alice.send(caps_presence(ver="0.9", hash_=None))
    assert queries(alice.drain()) == []
    assert caps.features(parse_jid("alice@localhost/phone")) is None


def test_unsupported_hash_is_queried_but_kept_for_the_session_only(make_xmpp):
    """s5.4 step 2: no verification and no global caching."""
    xmpp, caps, events = caps_server(make_xmpp)
    alice = xmpp.login("alice@localhost/phone")
    alice.send(caps_presence(ver="whatever", hash_="md5"))
    query = one_query(alice, node=f"{EXODUS_NODE}#whatever")
    alice.send(info_result(query.get("id")))
    assert caps.features(parse_jid("alice@localhost/phone")) == EXODUS_FEATURES
    assert [e.verified for e in events] == [False]
    bob = xmpp.login("bob@localhost/pc")
    bob.send(caps_presence(ver="whatever", hash_="md5"))
    one_query(bob, node=f"{EXODUS_NODE}#whatever")  # asked too: nothing was cached
    assert caps.features(parse_jid("bob@localhost/pc")) is None


def test_sha_256_caps(make_xmpp):
    xmpp, caps, _ = caps_server(make_xmpp)
    ver = DiscoInfo.from_query(xml(EXODUS_INFO)).verification_string("sha-256")
    alice = xmpp.login("alice@localhost/phone")
    alice.send(caps_presence(ver=ver, hash_="sha-256"))
    alice.send(info_result(one_query(alice, node=f"{EXODUS_NODE}#{ver}").get("id")))
    assert caps.features(parse_jid("alice@localhost/phone")) == EXODUS_FEATURES


def test_bounded_number_of_queries_in_flight(make_xmpp):
    xmpp, caps, _ = caps_server(make_xmpp, max_queries=1)
    alice = xmpp.login("alice@localhost/phone")
    bob = xmpp.login("bob@localhost/pc")
    alice.send(caps_presence())
    bob.send(caps_presence(ver=PSI_VER, node="http://psi-im.org"))
    one_query(alice)
    assert queries(bob.drain()) == []
    assert caps.features(parse_jid("bob@localhost/pc")) is None


def test_lru_eviction_falls_back_to_storage_and_reload_keeps_sessions(make_xmpp):
    xmpp, caps, _ = caps_server(make_xmpp, cache_size=1)
    alice = xmpp.login("alice@localhost/phone")
    alice.send(caps_presence())
    alice.send(info_result(one_query(alice).get("id")))
    bob = xmpp.login("bob@localhost/pc")
    bob.send(caps_presence(ver=PSI_VER, node="http://psi-im.org"))
    bob.send(info_result(one_query(bob, node=f"http://psi-im.org#{PSI_VER}").get("id"), PSI_INFO))
    assert len(caps._cache) == 1  # Exodus was evicted from memory...
    assert caps.features(parse_jid("alice@localhost/phone")) == EXODUS_FEATURES  # ...not from alice
    carol = xmpp.login("carol@localhost/tab")
    carol.send(caps_presence())
    assert queries(carol.drain()) == []  # read back from the store
    assert caps.features(parse_jid("carol@localhost/tab")) == EXODUS_FEATURES

    xmpp.server.plugins.reload("caps")  # a new instance, memory empty: sessions are picked up again
    fresh = xmpp.server.plugins.instance("localhost", "caps")
    assert fresh is not caps
    assert fresh.features(parse_jid("alice@localhost/phone")) == EXODUS_FEATURES
    assert fresh.features(parse_jid("bob@localhost/pc")) is not None
    assert queries(alice.drain()) == [] and queries(bob.drain()) == []


def test_tampered_storage_is_not_trusted(make_xmpp):
    xmpp, caps, _ = caps_server(make_xmpp)
    info = DiscoInfo.from_query(xml(EXODUS_INFO)).to_json()
    info["features"].append("urn:evil")
    xmpp.server.storage.set("localhost", "caps", f"sha-1:{EXODUS_VER}", info)
    alice = xmpp.login("alice@localhost/phone")
    alice.send(caps_presence())
    alice.send(info_result(one_query(alice).get("id")))
    assert caps.features(parse_jid("alice@localhost/phone")) == EXODUS_FEATURES


# -- presence passes through unchanged ---------------------------------------------------------------------


def test_presence_is_relayed_with_the_c_element_unchanged(make_xmpp):
    xmpp, _, _ = caps_server(make_xmpp)
    alice = xmpp.login("alice@localhost/phone", available=True)
    laptop = xmpp.login("alice@localhost/laptop", create=False, available=True)
    bob = xmpp.login("bob@localhost/pc", available=True)
    alice.drain()
    laptop.drain()
    c = f"<c xmlns='{NS_CAPS}' hash='sha-1' node='{EXODUS_NODE}' ver='{EXODUS_VER}' ext='x y'/>"
    sent = parse_pattern(f"<presence><show>dnd</show>{c}</presence>").find(f"{{{NS_CAPS}}}c")

    def same_c(presence: etree._Element) -> None:
        got = presence.findall(f"{{{NS_CAPS}}}c")
        assert len(got) == 1, etree.tostring(presence)
        assert dict(got[0].attrib) == dict(sent.attrib)
        assert len(got[0]) == 0 and not got[0].text

    alice.send(f"<presence><show>dnd</show>{c}</presence>")  # broadcast: the other resource sees it
    presences = [el for el in laptop.drain() if el.tag == "presence"]
    assert [p.get("from") for p in presences] == ["alice@localhost/phone"]
    same_c(presences[0])
    alice.send(f"<presence to='bob@localhost'>{c}</presence>")  # directed: bob sees it
    presences = [el for el in bob.drain() if el.tag == "presence"]
    assert [p.get("from") for p in presences] == ["alice@localhost/phone"]
    same_c(presences[0])


def test_broadcast_to_contacts_keeps_the_c_element(make_xmpp):
    """Through the presence plugin's broadcast to subscribers (RFC 6121 s4.2.2, s4.4.2)."""
    xmpp = make_xmpp(enabled=[*DEFAULT_PLUGINS, "roster", "presence", "caps"])
    alice = xmpp.login("alice@localhost/phone", available=True)
    bob = xmpp.login("bob@localhost/pc", available=True)
    bob.send("<presence to='alice@localhost' type='subscribe'/>")  # bob asks to see alice's presence
    alice.send("<presence to='bob@localhost' type='subscribed'/>")
    alice.drain()
    bob.drain()
    c = f"<c xmlns='{NS_CAPS}' hash='sha-1' node='{EXODUS_NODE}' ver='{EXODUS_VER}'/>"
    alice.send(f"<presence>{c}</presence>")
    presences = [el for el in bob.drain() if el.tag == "presence"]
    assert [p.get("from") for p in presences] == ["alice@localhost/phone"]
    got = presences[0].findall(f"{{{NS_CAPS}}}c")
    assert [dict(el.attrib) for el in got] == [{"hash": "sha-1", "node": EXODUS_NODE, "ver": EXODUS_VER}]
    one_query(alice)  # and the server asks alice what that ver means


# -- the server's own caps (s6.3) ---------------------------------------------------------------------------


def login_features(xmpp, jid: str = "alice@localhost/phone") -> tuple[object, etree._Element]:
    """Log in like TestClient.authenticate, keeping the stream features offered after SASL."""
    full = parse_jid(jid)
    xmpp.adduser(str(full.bare))
    client = xmpp.connect()
    before = client.open_stream("localhost")
    scram = ScramClient(full.local, "password", "SHA-256")
    client.send(_sasl("auth", scram.first(), mechanism="SCRAM-SHA-256"))
    client.send(_sasl("response", scram.final(base64.b64decode(client.next().text))))
    assert etree.QName(client.next()).localname == "success"
    after = client.open_stream("localhost")
    client.send(
        f"<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
        f"<resource>{full.resource}</resource></bind></iq>"
    )
    assert client.next().get("type") == "result"
    assert before.find(f"{{{NS_CAPS}}}c") is None  # offered only once authenticated
    return client, after


@pytest.mark.parametrize("contact", [False, True])
def test_stream_features_carry_the_servers_caps(make_xmpp, contact):
    options = {"contact_info": {"admin_addresses": ["xmpp:admin@localhost"]}} if contact else None
    xmpp = make_xmpp(enabled=[*DEFAULT_PLUGINS, "caps"], options=options)
    client, features = login_features(xmpp)
    c = features.find(f"{{{NS_CAPS}}}c")
    assert c is not None
    assert c.get("hash") == "sha-1" and c.get("node") == SERVER_NODE

    # The ver is that of the domain's disco#info, as the disco plugin answers it (s6.3).
    answer = client.request(f"<iq type='get' id='d1' to='localhost'><query xmlns='{NS_INFO}'/></iq>")
    query = answer.find(f"{{{NS_INFO}}}query")
    assert {f.get("var") for f in query.findall(f"{{{NS_INFO}}}feature")} >= {NS_CAPS, NS_INFO}
    assert (query.find(f"{{{NS_DATA}}}x") is not None) == contact
    assert verification_string(query) == c.get("ver")

    # And the caps node answers with the same info (s6.2); other nodes stay the disco plugin's.
    node = f"{SERVER_NODE}#{c.get('ver')}"
    answer = client.request(
        f"<iq type='get' id='d2' to='localhost'><query xmlns='{NS_INFO}' node='{node}'/></iq>"
    )
    assert answer.get("type") == "result"
    assert answer.find(f"{{{NS_INFO}}}query").get("node") == node
    assert verification_string(answer.find(f"{{{NS_INFO}}}query")) == c.get("ver")
    answer = client.request(
        f"<iq type='get' id='d3' to='localhost'><query xmlns='{NS_INFO}' node='{SERVER_NODE}#old'/></iq>"
    )
    assert error_condition(answer) == "item-not-found"


def test_servers_ver_follows_loaded_plugins(make_xmpp):
    xmpp = make_xmpp(enabled=[*DEFAULT_PLUGINS, "caps"])
    _, features = login_features(xmpp)
    before = features.find(f"{{{NS_CAPS}}}c").get("ver")
    xmpp.server.plugins.unload("ping", "localhost")
    _, features = login_features(xmpp, "bob@localhost/pc")
    assert features.find(f"{{{NS_CAPS}}}c").get("ver") != before


def test_caps_feature_in_the_domains_disco(make_xmpp):
    xmpp, _, _ = caps_server(make_xmpp)
    alice = xmpp.login("alice@localhost/phone")
    answer = alice.request(f"<iq type='get' id='d1' to='localhost'><query xmlns='{NS_INFO}'/></iq>")
    assert NS_CAPS in {f.get("var") for f in answer.iter(f"{{{NS_INFO}}}feature")}


def test_one_account_cannot_take_every_query_slot(make_xmpp):
    """A client that changes its ver in every presence and never answers gets three queries at once."""
    xmpp, caps, _ = caps_server(make_xmpp, max_queries=4)
    mallory = xmpp.login("mallory@localhost/a")
    for n in range(5):
        mallory.send(caps_presence(ver=f"v{n}"))
    assert len(queries(mallory.drain())) == 3
    alice = xmpp.login("alice@localhost/phone")
    alice.send(caps_presence())
    one_query(alice)  # the fourth slot is still free for others
    xmpp.advance(31)  # all timed out: the account may be asked again
    mallory.send(caps_presence(ver="v9"))
    assert len(queries(mallory.drain())) == 1
