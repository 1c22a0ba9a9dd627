"""Service administration (XEP-0133) over ad-hoc commands (XEP-0050) as an admin's client sees it:
slixmpp's xep_0050 and xep_0133 plugins against ``twistd xmppd`` on loopback. The admin adds a user who
then logs in, changes a password, lists and counts online users, announces to online users, ends a
user's session and deletes a user; a user who is not in ``[server] admins`` sees no admin command and is
refused each one with ``forbidden``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from slixclient import DEFAULT_PLUGINS as CLIENT_PLUGINS
from slixclient import Client, Clients, error_condition, run, within

NS_ADMIN = "http://jabber.org/protocol/admin"
ADHOC_PLUGINS = (*CLIENT_PLUGINS, "xep_0004", "xep_0050", "xep_0133")
USERS = {"admin@localhost": "admin-pw", "alice@localhost": "alice-pw", "bob@localhost": "bob-pw"}
CONFIG = {"server": {"admins": ["admin@localhost"]}}


async def admin_command(client: Client, name: str, values: dict[str, Any] | None = None) -> Any:
    """Run the XEP-0133 command ``name`` through slixmpp's command flow: execute, fill the form the
    server returns with ``values`` and complete it. The last answer (an iq result or error)."""
    answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def finish(iq: Any, session: dict[str, Any]) -> None:
        if iq["type"] == "error":
            # slixmpp keeps a failed command's session under the empty sessionid, where it would take the
            # next failure's answer: forget it.
            client.plugin["xep_0050"].terminate_command(session)
        if not answer.done():
            answer.set_result(iq)

    def fill(iq: Any, session: dict[str, Any]) -> None:
        if iq["type"] == "error" or iq["command"]["status"] == "completed" or values is None:
            finish(iq, session)
            return
        form = iq["command"]["form"]
        for var, value in values.items():
            form.field[var]["value"] = value
        form["type"] = "submit"
        session["payload"] = form
        session["next"] = finish
        client.plugin["xep_0050"].complete_command(session)

    start = getattr(client.plugin["xep_0133"], name.replace("-", "_"))
    start(jid="localhost", session={"next": fill, "error": finish})
    return await within(answer)


def notes(iq: Any) -> list[tuple[str, str]]:
    return iq["command"]["notes"]


def result_values(iq: Any) -> dict[str, Any]:
    return iq["command"]["form"].get_values()


async def admin_nodes(client: Client) -> list[str]:
    items = await client.plugin["xep_0133"].get_commands(jid="localhost", timeout=5)
    return [node for _, node, _ in items["disco_items"]["items"] if node.startswith(NS_ADMIN)]


def test_an_admin_runs_the_service_administration_commands(xmpp_process):
    proc = xmpp_process(config=CONFIG, users=USERS)

    async def main() -> None:
        async with Clients(proc) as clients:
            admin = await clients.login("admin@localhost/console", "admin-pw", plugins=ADHOC_PLUGINS)
            alice = await clients.login("alice@localhost/phone", "alice-pw")
            assert {f"{NS_ADMIN}#{n}" for n in ("add-user", "delete-user", "change-user-password")} <= set(
                await admin_nodes(admin)
            )

            # s4.1: add a user, who can then log in
            added = await admin_command(
                admin,
                "add-user",
                {"accountjid": "juliet@localhost", "password": "R0m30", "password-verify": "R0m30"},
            )
            assert added["type"] == "result" and added["command"]["status"] == "completed"
            assert notes(added) == [("info", "created juliet@localhost")]
            juliet = await clients.login("juliet@localhost/balcony", "R0m30")

            # s4.7: change her password: the new one works, the old one no longer does
            changed = await admin_command(
                admin, "change-user-password", {"accountjid": "juliet@localhost", "password": "V3r0n4"}
            )
            assert notes(changed) == [("info", "password changed for juliet@localhost")]
            await clients.login("juliet@localhost/garden", "V3r0n4")
            with pytest.raises(AssertionError, match="authentication failed"):
                await clients.login("juliet@localhost/tomb", "R0m30")

            # s4.15, s4.20: online users, counted once whatever their number of sessions
            count = await admin_command(admin, "get-online-users-num")
            assert result_values(count)["onlineusersnum"] == "3"
            listed = await admin_command(admin, "get-online-users-list", {"max_items": "none"})
            assert result_values(listed)["onlineuserjids"] == [
                "admin@localhost",
                "alice@localhost",
                "juliet@localhost",
            ]

            # s4.23: an announcement reaches every online user
            sent = await admin_command(admin, "announce", {"announcement": ["Restart at noon.", "Sorry!"]})
            assert notes(sent) == [("info", "announced to 4 session(s)")]
            message = await alice.next_message()
            assert (message["type"], str(message["from"]), message["body"]) == (
                "headline",
                "localhost",
                "Restart at noon.\nSorry!",
            )

            # s4.5: end alice's session: her client is disconnected, with the reason
            ended = await admin_command(admin, "end-user-session", {"accountjids": ["alice@localhost/phone"]})
            assert notes(ended) == [("info", "kicked 1 session(s) of alice@localhost/phone")]
            await within(alice.ended.wait())
            assert alice.stream_errors == [("policy-violation", "session ended by an administrator")]
            assert (await clients.login("alice@localhost/phone", "alice-pw")).connected  # may come back

            # s4.2: delete juliet: her sessions end and she cannot log in again
            deleted = await admin_command(admin, "delete-user", {"accountjids": ["juliet@localhost"]})
            assert notes(deleted) == [("info", "deleted juliet@localhost")]
            await within(juliet.ended.wait())
            assert [c for c, _ in juliet.stream_errors] == ["not-authorized"]
            with pytest.raises(AssertionError, match="authentication failed"):
                await clients.login("juliet@localhost/again", "V3r0n4")
            assert admin.connected

    run(main())


def test_a_user_who_is_not_an_admin_is_refused(xmpp_process):
    proc = xmpp_process(config=CONFIG, users=USERS)

    async def main() -> None:
        async with Clients(proc) as clients:
            bob = await clients.login("bob@localhost/pc", "bob-pw", plugins=ADHOC_PLUGINS)
            assert await admin_nodes(bob) == []
            for name in ("add-user", "delete-user", "get-online-users-list", "announce", "end-user-session"):
                refused = await admin_command(bob, name, {})
                assert (refused["type"], refused["error"]["condition"]) == ("error", "forbidden"), name
            request = bob.plugin["xep_0050"].send_command(
                "localhost", f"{NS_ADMIN}#change-user-password", timeout=5
            )
            assert await error_condition(request) == "forbidden"
            # and nothing happened: alice still logs in with her password
            assert (await clients.login("alice@localhost/phone", "alice-pw")).connected

    run(main())
