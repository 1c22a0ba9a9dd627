"""A real browser client: Strophe.js in headless Chromium talks to ``twistd xmppd`` over BOSH (/http-bind)
and over WebSocket (/xmpp-websocket), while bob uses a normal c2s connection (slixmpp).

The page (tests/web/client.html) is served from its own loopback port, so its BOSH requests are
cross-origin and only work because xmppd's ``[http] cors_origins`` names the page's origin; WebSocket has
no CORS. A screenshot per transport is saved in test-artifacts/.

These tests skip only when the machine lacks Chromium, chromedriver, selenium or the npm packages of
tests/web (``npm ci --prefix tests/web``); .ci/run installs them.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from slixclient import Clients, run

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "web"))

import driver  # noqa: E402  (tests/web is not a package)

REASON = driver.missing()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"browser tests: {REASON}")

USERS = {"alice@localhost": "alice-pw", "bob@localhost": "bob-pw"}
PATHS = {"bosh": ("http", "/http-bind"), "websocket": ("ws", "/xmpp-websocket")}


def service_url(proc, transport: str) -> str:
    scheme, path = PATHS[transport]
    return f"{scheme}://127.0.0.1:{proc.port('http')}{path}"


def start_server(xmpp_process, pages):
    """xmppd with an HTTP listener whose CORS origins admit the test page's server."""
    proc = xmpp_process(
        config={"listen": {"http": ["tcp:0:interface=127.0.0.1"]}, "http": {"cors_origins": [pages.origin]}},
        users=USERS,
    )
    assert proc.listeners.get("http"), f"no http listener in listeners.json: {proc.listeners}"
    return proc


@pytest.mark.parametrize("transport", ["bosh", "websocket"])
def test_browser_chat(xmpp_process, transport: str) -> None:
    """alice logs in from the browser, sends presence and a message to bob (on c2s); bob answers and the
    page shows the answer; then the page disconnects cleanly."""
    with driver.PageServer() as pages:
        proc = start_server(xmpp_process, pages)
        service = service_url(proc, transport)
        with driver.Browser() as browser:
            try:
                _chat(proc, pages, browser, service, transport)
            finally:
                browser.screenshot(f"browser-{transport}")


def _chat(proc, pages, browser, service: str, transport: str) -> None:
    first = f"hello bob, this is alice over {transport}"
    answer = f"hi alice, bob got your {transport} message"
    page = pages.url(
        service=service, jid="alice@localhost/browser", password="alice-pw", to="bob@localhost", body=first
    )

    async def main() -> None:
        async with Clients(proc) as clients:
            bob = await clients.login("bob@localhost/desk", "bob-pw")
            # selenium calls block, so they run in threads while bob's client keeps its event loop going.
            # The page logs in, sends initial presence, then the message given in its query string.
            await asyncio.to_thread(browser.open, page)
            state = await asyncio.to_thread(browser.wait_connected)
            alice_jid = state["jid"]
            assert alice_jid.startswith("alice@localhost/"), alice_jid

            msg = await bob.next_message(timeout=15)
            assert msg["type"] == "chat", f"bob got {msg}"
            assert msg["body"] == first, f"bob got {msg}"
            assert str(msg["from"]) == alice_jid, f"message from {msg['from']}, the page is {alice_jid}"

            bob.send_message(mto=alice_jid, mbody=answer, mtype="chat")
            state = await asyncio.to_thread(
                browser.wait_for,
                lambda s: any(m.get("body") == answer for m in s.get("messages", [])),
                "bob's answer in the page",
            )
            received = next(m for m in state["messages"] if m.get("body") == answer)
            assert received["from"] == "bob@localhost/desk", received
            assert received["type"] == "chat", received

            # A second message, sent on demand from the already running session.
            await asyncio.to_thread(browser.send, "bob@localhost", "and one more")
            msg = await bob.next_message(timeout=15)
            assert (msg["body"], str(msg["from"])) == ("and one more", alice_jid), f"bob got {msg}"

            await asyncio.to_thread(browser.disconnect)
            state = await asyncio.to_thread(
                browser.wait_for, lambda s: s.get("status") == "DISCONNECTED", "the page to disconnect"
            )
            assert not state["errors"], f"the page reported errors\n{browser.describe(state)}"

    run(main(), timeout=90)


@pytest.mark.parametrize("transport", ["bosh", "websocket"])
def test_browser_group_chat(xmpp_process, transport: str) -> None:
    """bob (slixmpp) creates a room; alice enters it from the browser (XEP-0045 s7.2 over BOSH or
    WebSocket): she sees bob in the room and his message, and her message reaches bob from her nick."""
    room = "lobby@conference.localhost"
    with driver.PageServer() as pages:
        proc = start_server(xmpp_process, pages)
        page = pages.url(
            service=service_url(proc, transport), jid="alice@localhost/browser", password="alice-pw"
        )
        with driver.Browser() as browser:
            try:
                _group_chat(proc, browser, page, room)
            finally:
                browser.screenshot(f"browser-muc-{transport}")


def _group_chat(proc, browser, page: str, room: str) -> None:
    async def main() -> None:
        async with Clients(proc) as clients:
            bob = await clients.login("bob@localhost/desk", "bob-pw", plugins=("xep_0030", "xep_0045"))
            muc = bob.plugin["xep_0045"]
            await muc.join_muc_wait(room, "Bob", maxstanzas=0, timeout=15)
            await muc.set_room_config(room, muc.xmpp.plugin["xep_0004"].make_form(ftype="submit"), timeout=15)
            await asyncio.to_thread(browser.open, page)
            await asyncio.to_thread(browser.wait_connected)
            await asyncio.to_thread(browser.call, "window.xmppTest.join(arguments[0], 'Alice');", room)
            await asyncio.to_thread(
                browser.wait_for,
                lambda s: any(p["from"] == f"{room}/Bob" for p in s.get("presences", [])),
                "bob's presence in the room",
            )
            bob.send_message(mto=room, mbody="welcome, alice", mtype="groupchat")
            state = await asyncio.to_thread(
                browser.wait_for,
                lambda s: any(m.get("body") == "welcome, alice" for m in s.get("messages", [])),
                "bob's group message in the page",
            )
            got = next(m for m in state["messages"] if m.get("body") == "welcome, alice")
            assert (got["from"], got["type"]) == (f"{room}/Bob", "groupchat"), got

            heard = asyncio.get_running_loop().create_future()

            def on_groupchat(msg) -> None:
                if msg["body"] == "thanks, bob" and not heard.done():
                    heard.set_result(msg)

            bob.add_event_handler("groupchat_message", on_groupchat)
            await asyncio.to_thread(
                browser.call, "window.xmppTest.groupchat(arguments[0], 'thanks, bob');", room
            )
            msg = await asyncio.wait_for(heard, 15)
            assert str(msg["from"]) == f"{room}/Alice", msg
            state = browser.state()
            assert not state["errors"], f"the page reported errors\n{browser.describe(state)}"

    run(main(), timeout=90)
