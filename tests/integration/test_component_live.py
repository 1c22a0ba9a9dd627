"""External components (XEP-0114) against ``twistd xmppd``: wokkel's component client (Twisted's
``jabber:component:accept`` initiator) connects to the ``component`` listener and echoes messages; a
slixmpp user talks to it through the server, sees it in the domain's disco#items while it is connected,
and gets ``service-unavailable`` once it is gone. A wrong secret is refused with ``<not-authorized/>``.

wokkel's Component is a Twisted service on the global reactor, so it runs in a subprocess of its own
(``ECHO_COMPONENT`` below) that reports on stdout.
"""

from __future__ import annotations

import asyncio
import queue
import subprocess
import sys
import threading
import time

from slixclient import Clients, error_condition, run

CONFIG = {
    "listen": {"component": ["tcp:0:interface=127.0.0.1"]},
    "components": {"gateway.localhost": {"secret": "s3cret"}},
}
USERS = {"alice@localhost": "alice-pw"}
NS_ITEMS = "http://jabber.org/protocol/disco#items"
NS_INFO = "http://jabber.org/protocol/disco#info"

# A component built on wokkel: prints READY once the handshake succeeded, STREAM_ERROR <condition> if
# the server ends the stream with an error; echoes every message back to its sender.
ECHO_COMPONENT = """
import sys

import xmppd._compat.wokkel  # noqa: F401  (makes wokkel importable on current Twisted)
from twisted.internet import reactor
from twisted.words.protocols.jabber import xmlstream
from twisted.words.xish import domish
from wokkel.component import Component
from wokkel.subprotocols import XMPPHandler

NS = "jabber:component:accept"


class Echo(XMPPHandler):
    def connectionInitialized(self):
        self.xmlstream.addObserver("/message", self.on_message)
        print("READY", flush=True)

    def on_message(self, message):
        if message.getAttribute("type") == "error":
            return
        reply = domish.Element((NS, "message"))
        reply["to"] = message["from"]
        reply["from"] = message["to"]
        if message.getAttribute("type"):
            reply["type"] = message["type"]
        reply.addElement("body", content="echo: " + str(message.body))
        self.send(reply)


def stream_error(failure):
    print("STREAM_ERROR", failure.value.condition, flush=True)
    reactor.stop()


host, port, domain, secret = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
component = Component(host, port, domain, secret)
component.factory.addBootstrap(xmlstream.STREAM_ERROR_EVENT, stream_error)
Echo().setHandlerParent(component)
component.startService()
reactor.run()
"""


class EchoComponent:
    """The wokkel echo component in a subprocess; ``line()`` reads what it reports."""

    def __init__(self, port: int, secret: str, domain: str = "gateway.localhost") -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", ECHO_COMPONENT, "127.0.0.1", str(port), domain, secret],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.strip())

    def line(self, timeout: float = 15) -> str:
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            self.stop()
            stderr = self.process.stderr.read() if self.process.stderr else ""
            raise AssertionError(f"the component reported nothing in {timeout}s:\n{stderr}") from None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def test_component_listener_is_bound(xmpp_process):
    proc = xmpp_process(config=CONFIG)
    assert proc.listeners["component"][0].startswith("127.0.0.1:")
    assert proc.port("component") > 0


def test_wokkel_component_echoes_a_user_and_is_listed_while_connected(xmpp_process):
    proc = xmpp_process(config=CONFIG, users=USERS)
    component = EchoComponent(proc.port("component"), "s3cret")
    try:
        assert component.line() == "READY"

        async def main() -> None:
            async with Clients(proc) as clients:
                alice = await clients.login("alice@localhost/phone", "alice-pw")
                items = await alice.iq_get("localhost", f"<query xmlns='{NS_ITEMS}'/>")
                jids = [i.get("jid") for i in items.iter(f"{{{NS_ITEMS}}}item")]
                assert sorted(jids) == ["conference.localhost", "gateway.localhost"]  # components, services

                alice.send_message(mto="echo@gateway.localhost", mbody="hello", mtype="chat")
                reply = await alice.next_message()
                assert reply["from"] == "echo@gateway.localhost"
                assert reply["to"] == "alice@localhost/phone"
                assert reply["type"] == "chat"
                assert reply["body"] == "echo: hello"

                component.stop()  # the component goes away: unlisted, and its domain bounces
                deadline = time.monotonic() + 10
                while True:
                    items = await alice.iq_get("localhost", f"<query xmlns='{NS_ITEMS}'/>")
                    if "gateway.localhost" not in [i.get("jid") for i in items.iter(f"{{{NS_ITEMS}}}item")]:
                        break
                    assert time.monotonic() < deadline, "the component is still listed"
                    await asyncio.sleep(0.05)
                info = alice.iq_get("gateway.localhost", f"<query xmlns='{NS_INFO}'/>")
                assert await error_condition(info) == "service-unavailable"

        run(main())
    finally:
        component.stop()


def test_wrong_secret_is_refused(xmpp_process):
    proc = xmpp_process(config=CONFIG)
    component = EchoComponent(proc.port("component"), "not-the-secret")
    try:
        assert component.line() == "STREAM_ERROR not-authorized"
    finally:
        component.stop()


def test_unconfigured_component_domain_is_refused(xmpp_process):
    proc = xmpp_process(config=CONFIG)
    component = EchoComponent(proc.port("component"), "s3cret", domain="stranger.localhost")
    try:
        assert component.line() == "STREAM_ERROR host-unknown"
    finally:
        component.stop()
