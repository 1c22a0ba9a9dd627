"""Entity capabilities (plugins/caps.py, XEP-0115) with real slixmpp clients against ``twistd xmppd``.

slixmpp's xep_0115 plugin is an independent implementation of the verification string on both sides:

* as a client, it hashes its own disco#info, puts the ``<c/>`` in its presence and answers the server's
  disco#info query to ``node#ver``; the server verifies that answer (and logs that it did);
* as a receiver of the server's stream feature (s6.3), it queries the server's caps node and caches the
  server's ver only if its own computation matches.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from slixclient import DEFAULT_PLUGINS as CLIENT_PLUGINS
from slixclient import Clients, run

from xmppd.config import DEFAULT_PLUGINS
from xmppd.testing.process import ServerProcess

USERS = {"alice@localhost": "alice-pw", "bob@localhost": "bob-pw"}
CONFIG = {
    "plugins": {
        "enabled": [*DEFAULT_PLUGINS, "caps"],
        # A XEP-0128 form in the domain's disco#info, so the server's ver covers a form too.
        "contact_info": {"admin_addresses": ["xmpp:admin@localhost"]},
    }
}


async def eventually(get: Callable[[], Awaitable[Any]], timeout: float = 10) -> Any:
    """Poll ``await get()`` until it gives something other than None."""
    deadline = time.monotonic() + timeout
    while (value := await get()) is None:
        if time.monotonic() > deadline:
            raise AssertionError("still None")
        await asyncio.sleep(0.05)
    return value


async def wait_for_log(proc: ServerProcess, text: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while text not in proc.log():
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not logged:\n{proc.log()[-3000:]}")
        await asyncio.sleep(0.05)


def test_caps_pass_through_and_verification_both_ways(xmpp_process):
    proc = xmpp_process(config=CONFIG, users=USERS)

    async def main() -> None:
        async with Clients(proc) as clients:
            bob = await clients.login("bob@localhost/pc", "bob-pw")
            from_alice: asyncio.Queue[Any] = asyncio.Queue()
            bob.add_event_handler(
                "presence_available",
                lambda p: p["from"].bare == "alice@localhost" and from_alice.put_nowait(p),
            )
            alice = await clients.login(
                "alice@localhost/phone", "alice-pw", plugins=[*CLIENT_PLUGINS, "xep_0115"]
            )
            caps = alice.plugin["xep_0115"]

            # s6.3: the server's caps in the stream features, verified by slixmpp against the caps node.
            assert await eventually(lambda: caps.get_verstring("localhost"))

            # The client computes its own ver; its presence then carries <c/>.
            await caps.update_caps(broadcast=False)
            ver = await caps.get_verstring(alice.boundjid.full)
            assert ver

            # Pass-through: bob receives alice's directed presence with her <c/> as she sent it.
            alice.send_presence(pto="bob@localhost")
            presence = await asyncio.wait_for(from_alice.get(), 10)
            assert (presence["caps"]["hash"], presence["caps"]["node"], presence["caps"]["ver"]) == (
                "sha-1",
                caps.caps_node,
                ver,
            )

            # Broadcast presence: the server queries alice (s6.2) and verifies her answer (s5.4).
            alice.send_presence()
            await wait_for_log(proc, f"caps sha-1 {ver} of alice@localhost/phone verified")
            assert "not verified" not in proc.log()

    run(main())
