"""RFC 7622 JIDs: parsing, preparation of each part, and the JID value type."""

from __future__ import annotations

import precis_i18n
import pytest

from xmppd import jid as jid_module
from xmppd.jid import JID, JIDError, parse_jid, prep_domain, prep_local, prep_resource

# RFC 7622 s3.5, Table 1 (valid), with the parts each should yield.
RFC_VALID = [
    ("juliet@example.com", "juliet", "example.com", None),
    ("juliet@example.com/foo", "juliet", "example.com", "foo"),
    ("juliet@example.com/foo bar", "juliet", "example.com", "foo bar"),
    ("juliet@example.com/foo@bar", "juliet", "example.com", "foo@bar"),
    ("foo\\20bar@example.com", "foo\\20bar", "example.com", None),
    ("fussball@example.com", "fussball", "example.com", None),
    # RFC 8265 case-maps with toLowerCase, not case folding: "ß" stays, so this is a different JID.
    ("fußball@example.com", "fußball", "example.com", None),
    ("π@example.com", "π", "example.com", None),
    ("π@example.com/foo", "π", "example.com", "foo"),
    ("example.com", None, "example.com", None),
    ("example.com/foobar", None, "example.com", "foobar"),
    ("a.example.com/b@example.net", None, "a.example.com", "b@example.net"),
]

# RFC 7622 s3.5, Table 2 (invalid), less "juliet@example.com/ foo" (see test_resource_leading_space).
RFC_INVALID = [
    '"juliet"@example.com',  # s3.3.1: quotation mark
    "foo bar@example.com",  # RFC 8265 s3.3: no spaces in a localpart
    "@example.com/",  # empty localpart and resourcepart
    "henriⅣ@example.com",  # compatibility character (U+2163)
    "♚@example.com",  # symbol
    "juliet@",  # empty domainpart
    "/foobar",  # empty domainpart
]


@pytest.mark.parametrize(("text", "local", "domain", "resource"), RFC_VALID)
def test_rfc7622_valid_examples(text, local, domain, resource):
    jid = parse_jid(text)
    assert (jid.local, jid.domain, jid.resource) == (local, domain, resource)
    assert str(jid) == text
    assert JID.parse(text) == jid


@pytest.mark.parametrize("text", RFC_INVALID)
def test_rfc7622_invalid_examples(text):
    with pytest.raises(JIDError):
        parse_jid(text)


def test_resource_leading_space():
    # RFC 7622 s3.5 lists "juliet@example.com/ foo" as invalid, but no rule of s3.4 or of the
    # OpaqueString profile (RFC 8265 s4.2) forbids a leading space, and precis_i18n accepts it.
    # We follow the profile, as other implementations do: refusing it would lose stanzas.
    assert precis_i18n.get_profile("OpaqueString").enforce(" foo") == " foo"
    assert parse_jid("juliet@example.com/ foo").resource == " foo"


@pytest.mark.parametrize("text", ["", "@", "/", "@/", "a@", "@x", "a@x/", "x/", "a@b@c", "a@x/\x00"])
def test_invalid(text):
    with pytest.raises(JIDError):
        parse_jid(text)


def test_jiderror_is_valueerror_with_reason():
    with pytest.raises(ValueError, match="localpart"):
        parse_jid("a<b@example.com")


@pytest.mark.parametrize("char", list("\"&'/:<>@"))
def test_local_forbidden_chars(char):
    # RFC 7622 s3.3.1; "/" and "@" can only reach the localpart through make().
    with pytest.raises(JIDError, match="not allowed"):
        prep_local(f"a{char}b")
    with pytest.raises(JIDError):
        JID.make(f"a{char}b", "example.com")


def test_split_on_first_slash_then_first_at():
    # RFC 7622 s3.1: the resource is everything after the first "/", even with "@" and "/" in it.
    jid = parse_jid("a@example.com/b@c/d")
    assert (jid.local, jid.domain, jid.resource) == ("a", "example.com", "b@c/d")
    jid = parse_jid("example.com/a@b")
    assert (jid.local, jid.domain, jid.resource) == (None, "example.com", "a@b")


def test_case_mapping_local_and_domain_not_resource():
    jid = parse_jid("Juliet@EXAMPLE.Com/Balcony")
    assert str(jid) == "juliet@example.com/Balcony"
    assert jid == parse_jid("juliet@example.com/Balcony")
    assert jid != parse_jid("juliet@example.com/balcony")
    assert prep_local("ΣΑΣ") == "σας"
    assert prep_resource("Foo") == "Foo"


def test_width_mapping():
    assert prep_local("ｊｕｌｉｅｔ") == "juliet"
    assert prep_domain("ＥＸＡＭＰＬＥ．com") == "example.com"


def test_trailing_dot_domain():
    # RFC 7622 s3.2: one trailing dot is stripped before anything else.
    assert parse_jid("juliet@example.com./r") == parse_jid("juliet@example.com/r")
    assert prep_domain("Example.COM.") == "example.com"
    for bad in [".", "example.com..", ".example.com", "a..b"]:
        with pytest.raises(JIDError):
            prep_domain(bad)


@pytest.mark.parametrize(
    "bad", ["a_b.example", "ex ample.com", "a!.example", "-a.example", "a-.example", "a:b"]
)
def test_domain_ascii_rules(bad):
    with pytest.raises(JIDError):
        prep_domain(bad)


def test_domain_unicode():
    assert prep_domain("BÜCHER.example") == "bücher.example"
    # RFC 7622 s3.2.1: A-labels are converted to U-labels, so both spellings are one JID.
    assert prep_domain("xn--bcher-kva.example") == "bücher.example"
    assert prep_domain("u\u0308.example") == "ü.example"  # NFC
    for bad in ["♚.example", "xn--zz.example", "a\u200db.example"]:
        with pytest.raises(JIDError):
            prep_domain(bad)


def test_ip_literals():
    assert str(parse_jid("user@192.0.2.1/r")) == "user@192.0.2.1/r"
    assert parse_jid("[::1]").domain == "[::1]"
    assert parse_jid("a@[2001:DB8:0:0::1]/r").domain == "[2001:db8::1]"
    for bad in ["[::1", "[example.com]", "[fe80::1%eth0]", "[::g]", "999.0.2.1", "::1"]:
        with pytest.raises(JIDError):
            prep_domain(bad)


def test_length_limits():
    # RFC 7622 s3.1: each part 1..1023 octets after preparation; DNS labels at most 63 octets.
    assert prep_local("a" * 1023) == "a" * 1023
    with pytest.raises(JIDError, match="1023"):
        prep_local("a" * 1024)
    assert prep_resource("R" * 1023) == "R" * 1023
    with pytest.raises(JIDError, match="1023"):
        prep_resource("R" * 1024)
    with pytest.raises(JIDError, match="1023"):
        prep_resource("é" * 512)  # 1024 octets in UTF-8
    domain = ".".join(["a" * 63] * 16)
    assert len(domain) == 1023 and prep_domain(domain) == domain
    with pytest.raises(JIDError, match="1023"):
        prep_domain(".".join(["a" * 63] * 15 + ["a" * 62, "b"]))
    with pytest.raises(JIDError, match="63"):
        prep_domain("a" * 64 + ".example")
    with pytest.raises(JIDError):
        prep_domain("ü" * 63 + ".example")  # its A-label is longer than 63 octets
    with pytest.raises(JIDError):
        parse_jid("a@example.com/" + "x" * 20000)


def test_ascii_fast_path_matches_precis():
    username = precis_i18n.get_profile("UsernameCaseMapped")
    opaque = precis_i18n.get_profile("OpaqueString")
    for code in range(0x20, 0x7F):
        text = f"A{chr(code)}1"
        try:
            expected = username.enforce(text)
        except UnicodeError:
            expected = None
        if expected is None or jid_module._LOCAL_FORBIDDEN.search(expected):
            with pytest.raises(JIDError):
                prep_local(text)
        else:
            assert prep_local(text) == expected
        assert prep_resource(text) == opaque.enforce(text)


def test_bare_full_host():
    full = parse_jid("juliet@example.com/balcony")
    assert full.is_full and not full.is_bare
    assert full.bare == parse_jid("juliet@example.com")
    assert full.bare.is_bare and not full.bare.is_full
    bare = full.bare
    assert bare.bare is bare
    assert full.host == JID(None, "example.com")
    host = full.host
    assert host.host is host
    assert str(full.host) == "example.com"
    domain_full = parse_jid("example.com/foobar")
    assert domain_full.is_full
    assert domain_full.bare == domain_full.host == parse_jid("example.com")


def test_hash_and_equality():
    a = parse_jid("Juliet@Example.com/r")
    b = JID("juliet", "example.com", "r")
    assert a == b and hash(a) == hash(b)
    assert len({a, b, a.bare, b.bare}) == 2
    assert {a: 1}[b] == 1
    assert a != parse_jid("juliet@example.com/R")
    with pytest.raises(AttributeError):
        a.local = "romeo"


def test_make():
    jid = JID.make("Juliet", "Example.com.", "Balcony")
    assert jid == JID("juliet", "example.com", "Balcony")
    assert JID.make(None, "example.com") == parse_jid("example.com")
    # Parts come separately, so "@" and "/" are allowed in a resource without any splitting.
    assert JID.make("romeo", "example.net", "a/b@c").resource == "a/b@c"
    for args in [("", "example.com"), ("a", ""), ("a", "example.com", ""), ("a b", "example.com")]:
        with pytest.raises(JIDError):
            JID.make(*args)


def test_cache_is_bounded():
    info = parse_jid.cache_info()
    assert info.maxsize == jid_module.CACHE_SIZE == 8192
    parse_jid("cached@example.com/r")
    hits = parse_jid.cache_info().hits
    assert parse_jid("cached@example.com/r") is parse_jid("cached@example.com/r")
    assert parse_jid.cache_info().hits == hits + 2
