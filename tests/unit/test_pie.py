"""XEP-0227 import and export (xmppd/pie.py) on memory storage: the hand-made Prosody- and ejabberd-style
files in tests/data/pie, round trips that must lose nothing, bad records reported one by one, hostile XML
refused, and imported data as the plugins and the SASL layer see it on a memory server."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from lxml import etree
from twisted.internet.defer import ensureDeferred
from twisted.python.failure import Failure

from xmppd import pie
from xmppd.sasl.scram import ScramCredentials, verify_password
from xmppd.storage.base import ArchiveQuery
from xmppd.storage.memory import MemoryStorage
from xmppd.testing import ExpectationError, MemoryServer
from xmppd.testing.scram import ScramClient

DATA = Path(__file__).resolve().parents[1] / "data" / "pie"
PROSODY = DATA / "prosody.xml"
EJABBERD = DATA / "ejabberd" / "ejabberd.xml"
BAD = DATA / "bad-records.xml"
DOMAINS = ["capulet.lit", "montague.lit"]
ITERATIONS = 16  # the derived credentials of the tests: cheap, as MemoryServer.adduser
NOW = 1_750_000_000.0
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
PLUGINS = ["disco", "roster", "presence", "offline", "vcard", "private"]  # what the import fills


def run(coro: Any) -> Any:
    """Run a coroutine over memory storage, whose Deferreds have all fired already."""
    results: list[Any] = []
    ensureDeferred(coro).addBoth(results.append)
    assert results, "the coroutine waited on something"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def do_import(storage: Any, path: Path, domains: list[str] = DOMAINS, **kwargs: Any) -> pie.ImportReport:
    kwargs.setdefault("iterations", ITERATIONS)
    kwargs.setdefault("now", NOW)
    return run(pie.import_file(storage, path, domains, **kwargs))


def get(storage: Any, host: str, store: str, user: str) -> Any:
    return run(storage.get(host, store, user))


def offline(storage: Any, host: str, user: str) -> list[tuple[float, str | None, str]]:
    page = run(storage.archive_query(host, "offline", user, ArchiveQuery()))
    return [(item.when, item.with_, item.value) for item in page.items]


def snapshot(storage: MemoryStorage) -> dict[str, Any]:
    """Everything a memory storage holds, archive ids left out (they are per storage)."""
    keyval = {key: get(storage, *key) for key in storage._data}
    archives = {key: [(i.when, i.with_, i.value) for i in items] for key, items in storage._archives.items()}
    return {"keyval": keyval, "archives": archives}


def both_fixtures() -> MemoryStorage:
    storage = MemoryStorage()
    assert do_import(storage, PROSODY).ok
    assert do_import(storage, EJABBERD).ok
    return storage


def export(storage: Any, path: Path, domains: list[str] = DOMAINS) -> pie.ExportReport:
    return run(pie.export_file(storage, domains, path))


# -- what the fixtures become ----------------------------------------------------------------------------


def test_prosody_file_imports_every_kind_of_data():
    storage = MemoryStorage()
    report = do_import(storage, PROSODY)
    assert report.ok and report.refused is None
    assert report.imported == ["juliet@capulet.lit", "nurse@capulet.lit", "tybalt@capulet.lit"]
    assert [str(w) for w in report.warnings] == [
        "prosody.xml:8: user 'juliet' of capulet.lit: only SCRAM-SHA-1 credentials: this user can log in "
        "with SCRAM-SHA-1 only (not SCRAM-SHA-256 or PLAIN) until the password is changed",
        "prosody.xml:88: user 'tybalt' of capulet.lit: ignored <pubsub "
        "xmlns='http://jabber.org/protocol/pubsub#owner'>: xmppd does not import it",
    ]

    # SCRAM credentials are stored as they are: the password still verifies, the salt is the file's
    juliet = get(storage, "capulet.lit", "accounts", "juliet")
    assert set(juliet["scram"]) == {"SHA-1"}
    creds = ScramCredentials.from_dict(juliet["scram"]["SHA-1"])
    assert (creds.iterations, creds.salt) == (10000, b"juliet-salt-0001")
    assert verify_password("R0meo-0h-R0meo", creds)
    tybalt = get(storage, "capulet.lit", "accounts", "tybalt")
    for name in ("SHA-1", "SHA-256"):
        assert verify_password("Prince-of-Cats", ScramCredentials.from_dict(tybalt["scram"][name]))
    # a password attribute gives both hashes, with the iterations asked for; the password is not kept
    nurse = get(storage, "capulet.lit", "accounts", "nurse")
    for name in ("SHA-1", "SHA-256"):
        nurse_creds = ScramCredentials.from_dict(nurse["scram"][name])
        assert nurse_creds.iterations == ITERATIONS
        assert verify_password("Nurse-pw-1", nurse_creds)
    assert "Nurse-pw-1" not in repr(snapshot(storage))

    roster = get(storage, "capulet.lit", "roster", "juliet")
    assert roster["ver"] == 4
    assert roster["items"] == {
        "romeo@montague.lit": {
            "name": "Romeo",
            "groups": ["Friends", "Montagues"],
            "subscription": "both",
            "ask": False,
            "approved": False,
        },
        "nurse@capulet.lit": {
            "name": "Nurse",
            "groups": ["Family"],
            "subscription": "both",
            "ask": False,
            "approved": False,
        },
        "tybalt@capulet.lit": {
            "name": None,
            "groups": [],
            "subscription": "from",
            "ask": False,
            "approved": False,
        },
        "friar@verona.lit": {
            "name": "Friar Laurence",
            "groups": [],
            "subscription": "none",
            "ask": True,
            "approved": False,
        },
    }
    assert roster["pending"] == {
        "paris@verona.lit": '<presence from="paris@verona.lit" to="juliet@capulet.lit" type="subscribe">'
        "<status>Will you be my wife?</status></presence>"
    }
    assert get(storage, "capulet.lit", "roster", "tybalt")["items"]["mercutio@montague.lit"]["approved"]

    assert get(storage, "capulet.lit", "vcard", "juliet") == (
        '<vCard xmlns="vcard-temp"><FN>Juliet Capulet</FN><NICKNAME>Jules</NICKNAME>'
        "<ADR><HOME/><LOCALITY>Verona</LOCALITY></ADR>"
        "<DESC>Parting is such sweet sorrow &amp; all that.</DESC></vCard>"
    )
    private = get(storage, "capulet.lit", "private", "juliet")
    assert sorted(private) == ["{exodus:prefs}exodus", "{storage:bookmarks}storage"]
    assert private["{exodus:prefs}exodus"] == (
        '<exodus xmlns="exodus:prefs"><defaultnick>Juliet</defaultnick></exodus>'
    )
    assert private["{storage:bookmarks}storage"] == (
        '<storage xmlns="storage:bookmarks"><conference jid="balcony@chat.capulet.lit" autojoin="true" '
        'name="The balcony"><nick>juliet</nick></conference></storage>'
    )

    # offline messages, oldest first, namespace-neutral as the offline plugin stores them, stored at the
    # time their delay says
    assert offline(storage, "capulet.lit", "juliet") == [
        (
            1721521949.0,
            "romeo@montague.lit/orchard",
            '<message from="romeo@montague.lit/orchard" to="juliet@capulet.lit/balcony" type="chat" id="m1">'
            "<body>Neither, fair saint, if either thee dislike.</body>"
            '<delay xmlns="urn:xmpp:delay" from="capulet.lit" stamp="2024-07-21T00:32:29Z">Offline Storage'
            "</delay></message>",
        ),
        (
            1721538062.25,
            "nurse@capulet.lit/kitchen",
            '<message from="nurse@capulet.lit/kitchen" to="juliet@capulet.lit" type="normal" xml:lang="en">'
            "<subject>Supper</subject><body>Madam! Your lady mother is coming to your chamber.</body>"
            '<delay xmlns="urn:xmpp:delay" from="capulet.lit" stamp="2024-07-21T05:01:02.250Z">'
            "Offline Storage</delay></message>",
        ),
    ]


def test_ejabberd_files_with_xinclude_old_namespace_and_scram_password_attribute():
    storage = MemoryStorage()
    report = do_import(storage, EJABBERD)
    assert report.ok
    assert report.imported == ["romeo@montague.lit", "mercutio@montague.lit", "benvolio@montague.lit"]
    assert [w.reason for w in report.warnings] == [
        "only SCRAM-SHA-1 credentials: this user can log in with SCRAM-SHA-1 only (not SCRAM-SHA-256 or "
        "PLAIN) until the password is changed",
        "ignored <query xmlns='jabber:iq:privacy'>: xmppd does not import it",
    ]
    assert report.warnings[0].where.startswith("montague.lit.xml:1: user 'mercutio'")
    # password='scram:StoredKey,ServerKey,Salt,IterationCount' is ejabberd's SHA-1 SCRAM
    mercutio = get(storage, "montague.lit", "accounts", "mercutio")["scram"]
    assert set(mercutio) == {"SHA-1"}
    assert verify_password("Queen-Mab", ScramCredentials.from_dict(mercutio["SHA-1"]))
    romeo = get(storage, "montague.lit", "roster", "romeo")
    assert romeo["ver"] == 1  # none in the file: 1, not the 0 of an empty roster
    assert romeo["items"]["rosaline@verona.lit"]["ask"] is True
    assert romeo["items"]["mercutio@montague.lit"]["groups"] == ["Friends", "Montagues"]
    assert list(romeo["pending"]) == ["benvolio@montague.lit"]
    assert get(storage, "montague.lit", "private", "romeo") == {
        "{storage:rosternotes}storage": '<storage xmlns="storage:rosternotes"><note jid="juliet@capulet.lit" '
        'cdate="2024-07-20T20:00:00Z" mdate="2024-07-20T20:00:00Z">The sun.</note></storage>'
    }
    [(when, sender, _)] = offline(storage, "montague.lit", "romeo")
    assert (when, sender) == (1721519940.0, "juliet@capulet.lit/balcony")


def test_an_offline_message_without_delay_gets_one_from_the_host_at_import_time(tmp_path):
    path = tmp_path / "nodelay.xml"
    path.write_text(
        "<server-data xmlns='urn:xmpp:pie:0'><host jid='capulet.lit'><user name='juliet' password='pw'>"
        "<offline-messages><message xmlns='jabber:client' from='romeo@montague.lit' type='chat'>"
        "<body>hi</body></message></offline-messages></user></host></server-data>"
    )
    storage = MemoryStorage()
    assert do_import(storage, path).ok
    assert offline(storage, "capulet.lit", "juliet") == [
        (
            NOW,
            "romeo@montague.lit",
            '<message from="romeo@montague.lit" type="chat"><body>hi</body><delay xmlns="urn:xmpp:delay" '
            'from="capulet.lit" stamp="2025-06-15T15:06:40.000Z">Offline Storage</delay></message>',
        )
    ]


# -- round trips -----------------------------------------------------------------------------------------


def test_import_export_import_loses_nothing_and_export_is_a_fixed_point(tmp_path):
    first = both_fixtures()
    report = export(first, tmp_path / "one.xml")
    assert report.ok
    assert report.users == {"capulet.lit": 3, "montague.lit": 3}
    assert (
        report.summary()[0] == f"exported 6 users (capulet.lit 3, montague.lit 3) to {tmp_path / 'one.xml'}"
    )
    assert stat.S_IMODE(os.stat(tmp_path / "one.xml").st_mode) == 0o600  # it holds credentials

    second = MemoryStorage()
    again = do_import(second, tmp_path / "one.xml")
    assert again.ok
    assert all("SCRAM-SHA-1 only" in w.reason for w in again.warnings)
    assert len(again.imported) == 6
    assert snapshot(second) == snapshot(first)

    export(second, tmp_path / "two.xml")
    assert (tmp_path / "two.xml").read_bytes() == (tmp_path / "one.xml").read_bytes()


def test_export_writes_scram_credentials_and_never_a_password(tmp_path):
    storage = both_fixtures()
    export(storage, tmp_path / "out.xml")
    root = etree.parse(str(tmp_path / "out.xml")).getroot()
    assert root.tag == "{urn:xmpp:pie:0}server-data"
    users = root.findall("{urn:xmpp:pie:0}host/{urn:xmpp:pie:0}user")
    assert len(users) == 6
    assert all(u.get("password") is None for u in users)
    nurse = next(u for u in users if u.get("name") == "nurse")
    mechanisms = [c.get("mechanism") for c in nurse.findall("{urn:xmpp:pie:0#scram}scram-credentials")]
    assert mechanisms == ["SCRAM-SHA-1", "SCRAM-SHA-256"]
    text = (tmp_path / "out.xml").read_text()
    for password in ("Nurse-pw-1", "iLuvJuLi3T", "Peace-Keeper"):
        assert password not in text


def test_data_written_by_the_plugins_survives_export_and_import(tmp_path, make_xmpp):
    """What xmppd itself stores (through the plugins, not through an import) comes back the same."""
    server = make_xmpp(domains=("localhost",), enabled=PLUGINS)
    server.adduser("bob@localhost", "bob-pw")
    alice = server.login("alice@localhost/phone", "alice-pw", available=True)
    alice.request(
        "<iq type='set' id='r1'><query xmlns='jabber:iq:roster'><item jid='bob@localhost' name='Bobby'>"
        "<group>Work</group><group>Chess</group></item></query></iq>"
    )
    alice.send("<presence to='bob@localhost' type='subscribe'/>")  # ask=subscribe, pending at bob's
    alice.send("<presence to='carol@example.org' type='subscribed'/>")  # a pre-approval
    alice.request(
        "<iq type='set' id='v1'><vCard xmlns='vcard-temp'><FN>Alice</FN><PHOTO><TYPE>image/png</TYPE>"
        "<BINVAL>iVBORw0KGgo=</BINVAL></PHOTO></vCard></iq>"
    )
    alice.request(
        "<iq type='set' id='p1'><query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'>"
        "<conference jid='room@conference.localhost' autojoin='true'><nick>al</nick></conference></storage>"
        "</query></iq>"
    )
    server.advance(1_700_000_000.125)
    alice.send(
        "<message to='bob@localhost' type='chat' id='o1' xml:lang='fr'><body>salut &amp; &lt;3</body>"
        "<x xmlns='jabber:x:oob'><url>https://example.org/a?b=1&amp;c=2</url></x></message>"
    )
    alice.drain()
    source = server.server.storage
    assert offline(source, "localhost", "bob"), "the offline plugin stored the message"
    assert get(source, "localhost", "roster", "bob")["pending"], "bob has a pending request"
    assert get(source, "localhost", "roster", "alice")["items"]["carol@example.org"]["approved"]

    export(source, tmp_path / "out.xml", ["localhost"])
    target = MemoryStorage()
    assert do_import(target, tmp_path / "out.xml", ["localhost"]).ok
    before, after = snapshot(source), snapshot(target)
    assert after["keyval"] == before["keyval"]
    # offline messages: the same stanzas, stored at the same time to the millisecond of their delay stamp
    assert before["archives"].keys() == after["archives"].keys()
    for key, items in before["archives"].items():
        assert [(w, v) for _, w, v in after["archives"][key]] == [(w, v) for _, w, v in items]
        assert all(abs(a[0] - b[0]) < 0.001 for a, b in zip(after["archives"][key], items, strict=True))


def test_legacy_keyval_offline_messages_are_exported_before_the_archive(tmp_path):
    storage = MemoryStorage()
    assert do_import(storage, PROSODY).ok
    run(storage.archive_delete("capulet.lit", "offline", "juliet"))
    run(storage.set("capulet.lit", "offline", "juliet", ["<message from='a@b'><body>old</body></message>"]))
    run(
        storage.archive_append(
            "capulet.lit", "offline", "juliet", "<message><body>new</body></message>", when=5
        )
    )
    root = run(pie.export_users(storage, ["capulet.lit"]))
    juliet = root.find("{urn:xmpp:pie:0}host/{urn:xmpp:pie:0}user[@name='juliet']")
    bodies = [m.findtext("{jabber:client}body") for m in juliet.iter("{jabber:client}message")]
    assert bodies == ["old", "new"]


# -- bad records, conflicts, dry runs ---------------------------------------------------------------------


def test_bad_records_are_reported_one_by_one_and_their_users_skipped():
    storage = MemoryStorage()
    report = do_import(storage, BAD)
    assert not report.ok and report.refused is None
    assert report.imported == ["good@capulet.lit"]
    assert report.rejected == [
        "nocreds@capulet.lit",
        "badroster@capulet.lit",
        "bad name@capulet.lit",
        "badscram@capulet.lit",
        "badoffline@capulet.lit",
        "badprivate@capulet.lit",
        "good@capulet.lit",
        "stranger@elsewhere.lit",
        "lost@not a jid@@",
    ]
    assert [str(p) for p in report.problems] == [
        "bad-records.xml:7: user 'nocreds' of capulet.lit: no credentials: neither a password nor "
        "SCRAM-SHA-1 or SCRAM-SHA-256 credentials",
        "bad-records.xml:12: user 'badroster' of capulet.lit: roster item jid 'romeo@@montague.lit' is "
        "malformed: invalid character in domainpart label",
        "bad-records.xml:13: user 'badroster' of capulet.lit: roster item ok@montague.lit: subscription "
        "'sometimes' is not one of ('none', 'to', 'from', 'both')",
        "bad-records.xml:17: user 'bad name' of capulet.lit: user name 'bad name' is not a valid localpart: "
        "invalid localpart (DISALLOWED/spaces)",
        "bad-records.xml:19: user 'badscram' of capulet.lit: SCRAM-SHA-1 credentials are malformed: "
        "malformed SCRAM credentials: Error('Only base64 data is allowed')",
        "bad-records.xml:28: user 'badoffline' of capulet.lit: offline message: delay stamp 'yesterday' is "
        "not a XEP-0082 DateTime",
        "bad-records.xml:33: user 'badprivate' of capulet.lit: private XML <query xmlns='jabber:iq:roster'> "
        "is in a reserved namespace (XEP-0049 s2.3)",
        "bad-records.xml:35: user 'good' of capulet.lit: good@capulet.lit appears twice in the file (first "
        "at bad-records.xml:4)",
        "bad-records.xml:38: user 'stranger' of elsewhere.lit: host elsewhere.lit is not served here "
        "(domains: capulet.lit, montague.lit)",
        "bad-records.xml:41: user 'lost' of not a jid@@: host jid 'not a jid@@' is malformed: invalid "
        "localpart (DISALLOWED/spaces)",
    ]
    assert report.summary()[0] == "imported 1 users, 9 rejected"
    # nothing at all of a rejected user was written (its good records neither)
    assert {key[2] for key in storage._data} == {"good"}
    assert storage._archives == {}
    good = get(storage, "capulet.lit", "accounts", "good")["scram"]
    assert verify_password("good-pw", ScramCredentials.from_dict(good["SHA-256"]))  # the first one


def test_an_existing_account_is_refused_unless_replace_which_drops_its_old_data():
    storage = MemoryStorage()
    assert do_import(storage, PROSODY).ok
    run(storage.set("capulet.lit", "blocking", "nurse", ["tybalt@capulet.lit"]))  # data the file lacks
    before = snapshot(storage)

    again = do_import(storage, PROSODY)
    assert again.imported == [] and len(again.rejected) == 3
    assert again.problems[1].reason == (
        "nurse@capulet.lit exists already (import --replace replaces it and all its data)"
    )
    assert snapshot(storage) == before

    replaced = do_import(storage, PROSODY, replace=True)
    assert replaced.ok and len(replaced.imported) == 3
    assert get(storage, "capulet.lit", "blocking", "nurse") is None
    assert len(offline(storage, "capulet.lit", "juliet")) == 2  # replaced, not appended twice


def test_leftovers_of_an_interrupted_import_are_replaced():
    """The account record is written last; data without an account (an import cut off midway) is redone."""
    storage = MemoryStorage()
    run(storage.archive_append("capulet.lit", "offline", "juliet", "<message/>", when=1))
    run(storage.set("capulet.lit", "roster", "juliet", {"ver": 9, "items": {}, "pending": {}}))
    assert do_import(storage, PROSODY).ok
    assert len(offline(storage, "capulet.lit", "juliet")) == 2
    assert get(storage, "capulet.lit", "roster", "juliet")["ver"] == 4


def test_dry_run_writes_nothing():
    storage = MemoryStorage()
    report = do_import(storage, BAD, dry_run=True)
    assert report.dry_run and report.imported == ["good@capulet.lit"] and len(report.rejected) == 9
    assert report.summary()[0] == "would import 1 users, 9 rejected"
    assert storage._data == {} and storage._archives == {}


def test_a_user_with_offline_messages_needs_a_storage_with_archives():
    class KeyvalOnly:
        def __init__(self) -> None:
            self.inner = MemoryStorage()

        def __getattr__(self, name: str) -> Any:
            if name.startswith("archive_"):
                raise AttributeError(name)
            return getattr(self.inner, name)

    storage = KeyvalOnly()
    report = do_import(storage, PROSODY)
    assert report.imported == ["nurse@capulet.lit", "tybalt@capulet.lit"]
    assert report.problems[0].reason == (
        "this storage backend keeps no archives, so it cannot take offline messages"
    )


def test_duplicate_records_within_a_user_and_unknown_mechanisms(tmp_path):
    path = tmp_path / "dup.xml"
    path.write_text(
        "<server-data xmlns='urn:xmpp:pie:0'><host jid='capulet.lit'>"
        "<user name='a' password='pw'><vCard xmlns='vcard-temp'/><vCard xmlns='vcard-temp'/></user>"
        "<user name='b'><scram-credentials xmlns='urn:xmpp:pie:0#scram' mechanism='SCRAM-SHA-512'>"
        "<iter-count>1</iter-count></scram-credentials></user>"
        "<user name='c' password='pw'><query xmlns='jabber:iq:roster'>"
        "<item jid='x@y' subscription='both'/><item jid='X@y' subscription='none'/>"
        "<item jid='z@y' ask='unsubscribe'/><item jid='w@y'><group/></item></query></user>"
        "<user password='pw'/>"
        "</host></server-data>"
    )
    report = do_import(MemoryStorage(), path)
    assert report.rejected == ["a@capulet.lit", "b@capulet.lit", "c@capulet.lit", "None@capulet.lit"]
    assert [p.reason for p in report.problems] == [
        "a second <vCard xmlns='vcard-temp'> (the first is at line 1)",
        "no credentials: neither a password nor SCRAM-SHA-1 or SCRAM-SHA-256 credentials",
        "roster item x@y is listed twice",
        "roster item z@y: ask 'unsubscribe' is not 'subscribe'",
        "roster item w@y has an empty group",
        "user name None is not a valid localpart: empty localpart",
    ]
    assert "SCRAM-SHA-512" in report.warnings[0].reason


# -- refused files: unsafe or not XEP-0227 -----------------------------------------------------------------


def refused(tmp_path: Path, content: bytes | str, **kwargs: Any) -> str:
    path = tmp_path / "hostile.xml"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    storage = MemoryStorage()
    report = do_import(storage, path, **kwargs)
    assert report.refused is not None and not report.ok, report
    assert report.imported == []
    assert storage._data == {} and storage._archives == {}
    assert report.summary() == [f"refused: {report.refused}"]
    return report.refused


GOOD_USER = "<user name='early' password='pw'/>"


def test_a_doctype_is_refused_before_the_parser_sees_it(tmp_path):
    laughs = (
        "<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'>"
        + "".join(
            f"<!ENTITY lol{i} '{('&lol' + str(i - 1) + ';') * 10 if i else '&lol;' * 10}'>" for i in range(9)
        )
        + "]><server-data xmlns='urn:xmpp:pie:0'><host jid='capulet.lit'><user name='a' password='&lol8;'/>"
        "</host></server-data>"
    )
    assert "DOCTYPE" in refused(tmp_path, laughs)
    external = (
        "<!-- a comment first --><!DOCTYPE x [<!ENTITY passwd SYSTEM 'file:///etc/passwd'>]>"
        "<server-data xmlns='urn:xmpp:pie:0'><host jid='capulet.lit'><user name='a' password='&passwd;'/>"
        "</host></server-data>"
    )
    assert "DOCTYPE" in refused(tmp_path, external)


def test_undeclared_entities_other_encodings_and_broken_xml_are_refused(tmp_path):
    head = f"<server-data xmlns='urn:xmpp:pie:0'><host jid='capulet.lit'>{GOOD_USER}"
    reason = refused(tmp_path, head + "<user name='a' password='&xxe;'/></host></server-data>")
    assert "not well-formed" in reason and "xxe" in reason
    assert "not UTF-8" in refused(tmp_path, (head + "</host></server-data>").encode("utf-16"))
    latin = "<?xml version='1.0' encoding='ISO-8859-1'?>" + head + "</host></server-data>"
    assert "ISO-8859-1" in refused(tmp_path, latin)
    # a file cut short: the users before the break are not imported either (the first pass writes nothing)
    assert "not well-formed" in refused(tmp_path, head + "<user name='b' password='pw'>")
    assert "not well-formed" in refused(tmp_path, head + "</host></server-data><server-data/>")
    assert "Start tag expected" in refused(tmp_path, "<?xml version='1.0'?>")
    assert "expected <server-data" in refused(
        tmp_path, "<server-data><host jid='capulet.lit'/></server-data>"
    )


def test_a_missing_file_is_refused(tmp_path):
    report = do_import(MemoryStorage(), tmp_path / "nothing-here.xml")
    assert report.refused is not None and "cannot read" in report.refused


def test_huge_files_text_and_nesting_are_refused(tmp_path):
    head = f"<server-data xmlns='urn:xmpp:pie:0'><host jid='capulet.lit'>{GOOD_USER}"
    tail = "</host></server-data>"
    assert "more than the 1000 accepted" in refused(tmp_path, head + " " * 1000 + tail, max_bytes=1000)
    # libxml2's limits (huge_tree off): a text node of more than 10 MB, elements nested deeper than 256
    big = head + "<user name='a' password='pw'><vCard xmlns='vcard-temp'><PHOTO><BINVAL>"
    assert "not well-formed" in refused(
        tmp_path, big + "A" * 11_000_000 + "</BINVAL></PHOTO></vCard></user>" + tail
    )
    deep = head + "<user name='a' password='pw'><vCard xmlns='vcard-temp'>" + "<X>" * 300 + "</X>" * 300
    assert "not well-formed" in refused(tmp_path, deep + "</vCard></user>" + tail)


def test_a_user_with_too_many_elements_is_refused_and_not_kept(tmp_path):
    path = tmp_path / "many.xml"
    items = "".join(f"<item jid='c{i}@montague.lit' subscription='none'/>" for i in range(50))
    path.write_text(
        f"<server-data xmlns='urn:xmpp:pie:0'><host jid='capulet.lit'>{GOOD_USER}"
        f"<user name='many' password='pw'><query xmlns='jabber:iq:roster'>{items}</query></user>"
        "</host></server-data>"
    )
    report = do_import(MemoryStorage(), path, max_user_elements=20)
    assert report.imported == ["early@capulet.lit"]
    assert report.rejected == ["many@capulet.lit"]
    assert report.problems[0].reason == "more than 20 elements"
    # what import ignores is not counted (nor kept): a big PEP or MAM store does not refuse its user
    items = "".join(f"<item id='{i}'><x xmlns='urn:example'/></item>" for i in range(50))
    path.write_text(
        "<server-data xmlns='urn:xmpp:pie:0'><host jid='capulet.lit'><user name='pep' password='pw'>"
        f"<pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='n'>{items}</items></pubsub>"
        "</user></host></server-data>"
    )
    report = do_import(MemoryStorage(), path, max_user_elements=20)
    assert report.ok and report.imported == ["pep@capulet.lit"]
    assert report.warnings[0].reason == (
        "ignored <pubsub xmlns='http://jabber.org/protocol/pubsub'>: xmppd does not import it"
    )


def test_xinclude_only_of_whole_files_inside_the_directory(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "outside.xml").write_text("<host xmlns='urn:xmpp:pie:0' jid='capulet.lit'/>")
    main = tmp_path / "sub" / "main.xml"

    def include(attrs: str) -> pie.ImportReport:
        main.write_text(
            "<server-data xmlns='urn:xmpp:pie:0' xmlns:xi='http://www.w3.org/2001/XInclude'>"
            f"<xi:include {attrs}/></server-data>"
        )
        return do_import(MemoryStorage(), main)

    assert "leads out of" in include("href='../outside.xml'").refused
    assert "not a relative file name" in include("href='/etc/passwd'").refused
    assert "not a relative file name" in include("href='http://example.org/x.xml'").refused
    assert "only <xi:include href/> of whole XML files" in include("href='x.txt' parse='text'").refused
    main.with_name("self.xml").write_text(
        "<host xmlns='urn:xmpp:pie:0' xmlns:xi='http://www.w3.org/2001/XInclude' jid='capulet.lit'>"
        "<xi:include href='self.xml'/></host>"
    )
    assert "too deep (or in a loop)" in include("href='self.xml'").refused
    # the XEP-0227 s5.1 layout: main file -> host file -> user files in a directory named after the host
    (tmp_path / "sub" / "capulet.lit").mkdir()
    (tmp_path / "sub" / "capulet.lit" / "juliet.xml").write_text(
        "<user xmlns='urn:xmpp:pie:0' name='juliet' password='pw'>"
        "<vCard xmlns='vcard-temp'><FN>J</FN></vCard></user>"
    )
    main.with_name("capulet.lit.xml").write_text(
        "<host xmlns='urn:xmpp:pie:0' xmlns:xi='http://www.w3.org/2001/XInclude' jid='capulet.lit'>"
        "<xi:include href='capulet.lit/juliet.xml'/></host>"
    )
    report = include("href='capulet.lit.xml'")
    assert report.ok and report.imported == ["juliet@capulet.lit"]


def test_export_refuses_to_overwrite_a_file(tmp_path):
    target = tmp_path / "xmppd.sqlite"
    target.write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        export(MemoryStorage(), target)
    assert target.read_bytes() == b"precious"
    assert list(tmp_path.iterdir()) == [target]


# -- imported data as the server sees it -----------------------------------------------------------------


def imported_server(make_xmpp: Any) -> MemoryServer:
    """A server started on what was imported, as ``xmppdctl import`` leaves it (it refuses to run beside
    a server: plugins read some of the storage once when they load)."""
    storage = MemoryStorage()
    assert do_import(storage, PROSODY).ok
    assert do_import(storage, EJABBERD).ok
    return make_xmpp(domains=DOMAINS, enabled=PLUGINS, storage=storage)


def sha1_login(server: MemoryServer, user: str, domain: str, password: str) -> Any:
    """Authenticate with SCRAM-SHA-1 (the memory client's own login uses SCRAM-SHA-256)."""
    client = server.connect()
    client.open_stream(domain)
    scram = ScramClient(user, password, "SHA-1")
    auth = etree.Element(f"{{{NS_SASL}}}auth", nsmap={None: NS_SASL}, mechanism="SCRAM-SHA-1")
    auth.text = base64.b64encode(scram.first()).decode()
    client.send(auth)
    challenge = client.next()
    response = etree.Element(f"{{{NS_SASL}}}response", nsmap={None: NS_SASL})
    response.text = base64.b64encode(scram.final(base64.b64decode(challenge.text))).decode()
    client.send(response)
    return client.next()


def test_imported_users_log_in_and_see_their_roster_vcard_private_data_and_offline_messages(make_xmpp):
    server = imported_server(make_xmpp)
    # SCRAM-SHA-256 for users with a password or SHA-256 credentials in the file
    tybalt = server.login("tybalt@capulet.lit/sword", "Prince-of-Cats", create=False)
    answer = tybalt.request("<iq type='get' id='r'><query xmlns='jabber:iq:roster'/></iq>")
    query = answer.find("{jabber:iq:roster}query")
    assert query.get("ver") == "2"
    assert {i.get("jid"): i.get("subscription") for i in query} == {
        "juliet@capulet.lit": "to",
        "mercutio@montague.lit": "none",
    }
    nurse = server.login("nurse@capulet.lit/kitchen", "Nurse-pw-1", create=False)
    vcard = nurse.request("<iq type='get' id='v' to='juliet@capulet.lit'><vCard xmlns='vcard-temp'/></iq>")
    assert vcard.findtext("{vcard-temp}vCard/{vcard-temp}NICKNAME") == "Jules"
    with pytest.raises(ExpectationError):
        server.login("nurse@capulet.lit/x", "wrong", create=False)
    # SHA-1-only credentials (Prosody's default): SCRAM-SHA-1 works
    assert etree.QName(sha1_login(server, "juliet", "capulet.lit", "R0meo-0h-R0meo")).localname == "success"
    assert etree.QName(sha1_login(server, "mercutio", "montague.lit", "Queen-Mab")).localname == "success"
    assert etree.QName(sha1_login(server, "juliet", "capulet.lit", "wrong")).localname == "failure"

    romeo = server.login("romeo@montague.lit/orchard", "iLuvJuLi3T", create=False)
    private = romeo.request(
        "<iq type='get' id='p'><query xmlns='jabber:iq:private'><storage xmlns='storage:rosternotes'/>"
        "</query></iq>"
    )
    assert private.findtext(".//{storage:rosternotes}note") == "The sun."
    romeo.send("<presence/>")
    received = romeo.drain()
    message = next(s for s in received if s.tag == "message")
    assert message.findtext("body") == "Wherefore art thou?"
    assert message.find("{urn:xmpp:delay}delay").get("stamp") == "2024-07-20T23:59:00.000000Z"
    # the pending subscription request from benvolio is shown once romeo is available (RFC 6121 s3.1.3)
    assert any(s.tag == "presence" and s.get("type") == "subscribe" for s in received)
