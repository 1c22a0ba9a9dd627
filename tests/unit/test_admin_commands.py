"""The admin operations every admin interface shares (xmppd.control.Commands): sessions, kick, announce."""

from __future__ import annotations

from typing import Any

import pytest

from xmppd.control import Commands, ControlError


def run(d: Any) -> Any:
    """The result of a coroutine that finishes at once on a memory server."""
    from twisted.internet.defer import ensureDeferred

    found: list[Any] = []
    ensureDeferred(d).addBoth(found.append)
    (result,) = found
    if isinstance(result, Exception) or hasattr(result, "raiseException"):
        result.raiseException()
    return result


def test_sessions_list_every_bound_session(xmpp):
    xmpp.login("alice@localhost/phone", available=True)
    xmpp.login("bob@localhost/pc")
    xmpp.advance(5)
    sessions = run(Commands(xmpp.server).sessions())
    assert [s["jid"] for s in sessions] == ["alice@localhost/phone", "bob@localhost/pc"]
    alice = sessions[0]
    assert alice["transport"] == "c2s" and alice["priority"] == 0 and alice["connected"] == 5.0
    assert alice["ip"]


def test_kick_one_session_or_every_session_of_an_account(xmpp):
    phone = xmpp.login("alice@localhost/phone")
    laptop = xmpp.login("alice@localhost/laptop", create=False)
    commands = Commands(xmpp.server)
    assert (
        run(commands.kick("alice@localhost/phone", "go away"))
        == "kicked 1 session(s) of alice@localhost/phone"
    )
    phone.drain()
    assert phone.stream_errors == ["policy-violation"] and laptop.connected
    run(commands.kick("alice@localhost"))
    laptop.drain()
    assert laptop.stream_errors == ["policy-violation"]
    with pytest.raises(ControlError, match="no session"):
        run(commands.kick("alice@localhost"))
    with pytest.raises(ControlError, match="not a valid JID"):
        run(commands.kick("@@"))


def test_announce_reaches_every_online_user_of_the_domain(xmpp):
    alice = xmpp.login("alice@localhost/phone", available=True)
    bob = xmpp.login("bob@localhost/pc")
    assert (
        run(Commands(xmpp.server).announce("maintenance at 10", subject="Notice"))
        == "announced to 2 session(s)"
    )
    for client in (alice, bob):
        client.expect(
            "<message from='localhost' type='headline'><subject>Notice</subject>"
            "<body>maintenance at 10</body></message>"
        )
    with pytest.raises(ControlError):
        run(Commands(xmpp.server).announce("  "))
