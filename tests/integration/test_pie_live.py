"""``xmppdctl export`` / ``xmppdctl import`` (XEP-0227, xmppd/pie.py) against real data directories with the
SQLite storage: the real console script in a subprocess, then ``twistd xmppd`` and slixmpp clients logging
in as the imported users with their imported passwords."""

from __future__ import annotations

import asyncio
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from xmppd.testing.process import ServerProcess

DATA = Path(__file__).resolve().parents[1] / "data" / "pie"
PROSODY = DATA / "prosody.xml"
EJABBERD = DATA / "ejabberd" / "ejabberd.xml"
BAD = DATA / "bad-records.xml"
CONFIG = {"server": {"domains": ["capulet.lit", "montague.lit"]}}


@pytest.fixture
def stopped(tmp_path_factory):
    """``stopped()``: a configured server for capulet.lit and montague.lit that is not running yet."""
    servers: list[ServerProcess] = []

    def make() -> ServerProcess:
        server = ServerProcess(tmp_path_factory.mktemp("pie"), CONFIG)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def roster_of(client) -> dict[str, tuple[str, bool, set[str], str]]:
    roster = client.client_roster
    return {
        jid: (
            roster[jid]["subscription"],
            bool(roster[jid]["pending_out"]),
            set(roster[jid]["groups"]),
            roster[jid]["name"],
        )
        for jid in roster
        if jid != client.boundjid.bare
    }


def test_import_then_log_in_as_the_imported_users(stopped, xmpp_run):
    server = stopped()
    result = server.ctl("import", str(PROSODY))
    lines = result.stdout.splitlines()
    assert lines[0] == "imported 3 users, 0 rejected"
    assert lines[1].startswith("warning: prosody.xml:8: user 'juliet' of capulet.lit: only SCRAM-SHA-1")
    assert "Traceback" not in result.stderr
    assert server.ctl("import", str(EJABBERD)).stdout.startswith("imported 3 users, 0 rejected")
    assert sorted(json.loads(server.ctl("--json", "users").stdout)) == [
        "benvolio@montague.lit",
        "juliet@capulet.lit",
        "mercutio@montague.lit",
        "nurse@capulet.lit",
        "romeo@montague.lit",
        "tybalt@capulet.lit",
    ]
    server.start()

    async def body(pool):
        # juliet: Prosody's SCRAM-SHA-1 credentials, used as they are
        juliet = await pool.login(
            "juliet@capulet.lit/balcony", "R0meo-0h-R0meo", mech="SCRAM-SHA-1", presence=False
        )
        await juliet.get_roster()
        assert roster_of(juliet) == {
            "romeo@montague.lit": ("both", False, {"Friends", "Montagues"}, "Romeo"),
            "nurse@capulet.lit": ("both", False, {"Family"}, "Nurse"),
            "tybalt@capulet.lit": ("from", False, set(), ""),
            "friar@verona.lit": ("none", True, set(), "Friar Laurence"),
        }
        # once available: the subscription request that waited for her (RFC 6121 s3.1.3) ...
        juliet.auto_authorize = None
        requests: asyncio.Queue = asyncio.Queue()
        juliet.add_event_handler("presence_subscribe", requests.put_nowait)
        juliet.send_presence()
        request = await asyncio.wait_for(requests.get(), 5)
        assert (request["from"].bare, request["status"]) == ("paris@verona.lit", "Will you be my wife?")
        # ... and her offline messages, oldest first, with their original delay stamps
        first, second = await juliet.next_message(), await juliet.next_message()
        assert first["body"] == "Neither, fair saint, if either thee dislike."
        delay = first.xml.find("{urn:xmpp:delay}delay")
        assert (delay.get("from"), delay.get("stamp")) == ("capulet.lit", "2024-07-21T00:32:29Z")
        assert second["subject"] == "Supper"

        # nurse: a plaintext password in the file became SCRAM-SHA-256 credentials (and SHA-1)
        nurse = await pool.login("nurse@capulet.lit/kitchen", "Nurse-pw-1", mech="SCRAM-SHA-256")
        iq = nurse.make_iq_get(ito="juliet@capulet.lit")
        iq.append(ET.fromstring("<vCard xmlns='vcard-temp'/>"))
        answer = await iq.send(timeout=5)
        assert answer.xml.findtext("{vcard-temp}vCard/{vcard-temp}FN") == "Juliet Capulet"
        _, failure = await pool.attempt("nurse@capulet.lit/x", "not-her-password", mech="SCRAM-SHA-256")
        assert failure is not None and failure.reason == "failed_auth"

        # romeo (ejabberd, plaintext password): his roster and his offline message
        romeo = await pool.login("romeo@montague.lit/orchard", "iLuvJuLi3T")
        await romeo.get_roster()
        assert roster_of(romeo)["rosaline@verona.lit"] == ("none", True, set(), "Rosaline")
        assert (await romeo.next_message())["body"] == "Wherefore art thou?"
        # mercutio: ejabberd's password='scram:...' (SHA-1)
        await pool.login("mercutio@montague.lit/street", "Queen-Mab", mech="SCRAM-SHA-1")
        # tybalt: SCRAM-SHA-256 credentials from the file
        await pool.login("tybalt@capulet.lit/sword", "Prince-of-Cats", mech="SCRAM-SHA-256")

    xmpp_run(server, body)


def test_import_refuses_while_the_server_runs_and_export_does_not(stopped):
    server = stopped()
    server.start()
    server.adduser("alice@capulet.lit", "alice-pw")
    result = server.ctl("import", str(PROSODY), check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "xmppdctl: xmppd is running; stop the server first (import writes the storage directly)"
    )
    assert json.loads(server.ctl("--json", "users").stdout) == ["alice@capulet.lit"]

    out = server.directory / "live.xml"
    result = server.ctl("export", str(out))
    assert result.stdout.strip() == f"exported 1 users (capulet.lit 1, montague.lit 0) to {out}"
    assert '<user xmlns="urn:xmpp:pie:0" name="alice">' in out.read_text()
    # never over an existing file (the database, say)
    result = server.ctl("export", str(server.data_dir / "xmppd.sqlite"), check=False)
    assert result.returncode == 1 and "exists already" in result.stderr


def test_export_from_one_data_dir_import_into_another(stopped, xmpp_run):
    one, two = stopped(), stopped()
    one.ctl("import", str(PROSODY))
    one.ctl("import", str(EJABBERD))
    one.start()
    one.adduser("paris@capulet.lit", "paris-pw")  # made by xmppd itself, with both hashes
    exported = one.directory / "export.xml"
    result = one.ctl("--json", "export", str(exported))
    assert json.loads(result.stdout)["users"] == {"capulet.lit": 4, "montague.lit": 3}
    one.stop()

    result = two.ctl("import", "--dry-run", str(exported))
    assert result.stdout.splitlines()[0] == "would import 7 users, 0 rejected"
    assert json.loads(two.ctl("--json", "users").stdout) == []
    result = two.ctl("--json", "import", str(exported))
    report = json.loads(result.stdout)
    assert len(report["imported"]) == 7 and report["rejected"] == []

    # the second data dir holds the same data: its export is the same file
    again = two.directory / "again.xml"
    two.ctl("export", str(again))
    assert again.read_bytes() == exported.read_bytes()

    # a second import of the same file: every account exists, nothing changes, exit status 1
    result = two.ctl("import", str(exported), check=False)
    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == "imported 0 users, 7 rejected"
    assert "exists already (import --replace replaces it and all its data)" in result.stdout
    assert two.ctl("import", "--replace", str(exported)).stdout.startswith("imported 7 users, 0 rejected")

    two.start()

    async def body(pool):
        paris = await pool.login("paris@capulet.lit/court", "paris-pw", mech="SCRAM-SHA-256")
        assert paris.mechanism == "SCRAM-SHA-256"
        juliet = await pool.login(
            "juliet@capulet.lit/balcony", "R0meo-0h-R0meo", mech="SCRAM-SHA-1", presence=False
        )
        await juliet.get_roster()
        assert set(roster_of(juliet)) == {
            "romeo@montague.lit",
            "nurse@capulet.lit",
            "tybalt@capulet.lit",
            "friar@verona.lit",
        }
        juliet.send_presence()
        assert (await juliet.next_message())["body"] == "Neither, fair saint, if either thee dislike."

    xmpp_run(two, body)


def test_bad_records_are_listed_and_the_exit_status_is_1(stopped):
    server = stopped()
    result = server.ctl("import", str(BAD), check=False)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0] == "imported 1 users, 9 rejected"
    assert len([line for line in lines if line.startswith("rejected: bad-records.xml:")]) == 10
    assert "rejected: bad-records.xml:12: user 'badroster' of capulet.lit: roster item jid" in result.stdout
    assert json.loads(server.ctl("--json", "users").stdout) == ["good@capulet.lit"]

    hostile = server.directory / "hostile.xml"
    hostile.write_text("<!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]><server-data/>")
    result = server.ctl("import", str(hostile), check=False)
    assert result.returncode == 1
    assert result.stdout.strip() == (
        "refused: hostile.xml: a DOCTYPE (DTD, entity declarations) is not accepted"
    )
