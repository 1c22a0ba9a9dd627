"""The plugin API (xmppd.plugin) seen from clients: plugins defined here, a whole server in memory.

Each test defines the plugins it needs, starts a MemoryServer with them and checks what logged-in clients
receive: which handler answers which stanza, priorities and propagation, async handlers, failures,
server events, options, requirements, loading and unloading at run time, timers, storage and send_iq.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from lxml import etree
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from xmppd import config as config_module
from xmppd.config import ConfigError
from xmppd.events import HandlerFailure
from xmppd.plugin import Context, Option, Plugin, PluginError
from xmppd.router import IQError, IQTimeout, StanzaEvent
from xmppd.xml.stanza import add_child, error_condition, make_stanza

NS = "urn:xmppd:test"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"


# -- helpers ---------------------------------------------------------------------------------------------


def iq(type_: str = "get", id_: str = "q1", to: str | None = None, ns: str = NS, name: str = "query") -> str:
    to_attr = f" to='{to}'" if to else ""
    return f"<iq type='{type_}' id='{id_}'{to_attr}><{name} xmlns='{ns}'/></iq>"


def answer(event: StanzaEvent, label: str, ns: str = NS) -> etree._Element:
    """An iq result carrying <query handler='label'/>, so a test sees which handler answered."""
    reply = event.result()
    add_child(reply, ns, "query").set("handler", label)
    return reply


def handler_of(reply: etree._Element) -> str | None:
    assert reply.get("type") == "result", etree.tostring(reply)
    return reply[0].get("handler")


def assert_error(stanza: etree._Element, condition: str, id_: str | None = None) -> None:
    assert stanza.get("type") == "error", etree.tostring(stanza)
    assert error_condition(stanza) == condition, etree.tostring(stanza)
    if id_ is not None:
        assert stanza.get("id") == id_


def message(to: str, body: str, from_: str) -> etree._Element:
    msg = make_stanza("message", to=to, from_=from_, type_="chat")
    add_child(msg, None, "body", body)
    return msg


def body_of(stanza: etree._Element) -> str | None:
    return stanza.findtext("body")


def disco_features(client: Any, to: str = "localhost") -> set[str]:
    reply = client.request(iq("get", "disco", to=to, ns=NS_DISCO_INFO))
    assert reply.get("type") == "result", etree.tostring(reply)
    return {f.get("var") for f in reply.iter(f"{{{NS_DISCO_INFO}}}feature")}


def make_config(domains=("localhost",), enabled=(), options=None, hosts=None) -> config_module.Config:
    """A configuration built the way MemoryServer builds its own, for apply_config."""
    plugins: dict[str, Any] = {"enabled": list(enabled)}
    plugins.update(options or {})
    data: dict[str, Any] = {
        "server": {"domains": list(domains)},
        "tls": {"required": False},
        "storage": {"backend": "memory"},
        "plugins": plugins,
    }
    if hosts:
        data["hosts"] = hosts
    return config_module.parse(data, "(test)")


class Notifier(Plugin):
    """Base for plugins that tell a watching client what happened, in a headline message."""

    watcher = "watcher@localhost/w"

    def notify(self, text: str) -> None:
        self.ctx.send(message(self.watcher, text, self.ctx.domain))


# -- handler selection -----------------------------------------------------------------------------------


class Selector(Plugin):
    name = "selector"

    def setup(self, ctx: Context) -> None:
        for target in ("host", "self", "bare", "full"):
            ctx.hook_iq("get", NS, "query", lambda e, t=target: answer(e, f"get-{t}"), to=target)
        ctx.hook_iq("set", NS, "query", lambda e: answer(e, "set-host"))
        ctx.hook_iq("get", NS, "other", lambda e: answer(e, "get-other"))
        ctx.hook_iq("get", f"{NS}:2", "query", lambda e: answer(e, "get-ns2"))


def test_iq_handlers_selected_by_type_namespace_and_name(make_xmpp):
    server = make_xmpp(enabled=["selector"], plugins=[Selector])
    alice = server.login("alice@localhost/phone")
    assert handler_of(alice.request(iq("get", to="localhost"))) == "get-host"
    assert handler_of(alice.request(iq("set", to="localhost"))) == "set-host"
    assert handler_of(alice.request(iq("get", to="localhost", name="other"))) == "get-other"
    assert handler_of(alice.request(iq("get", to="localhost", ns=f"{NS}:2"))) == "get-ns2"
    assert_error(alice.request(iq("get", "x", to="localhost", ns=f"{NS}:3")), "service-unavailable", "x")
    assert_error(alice.request(iq("set", "y", to="localhost", name="other")), "service-unavailable", "y")


def test_iq_handlers_selected_by_address_kind(make_xmpp):
    server = make_xmpp(enabled=["selector"], plugins=[Selector])
    alice = server.login("alice@localhost/phone")
    bob = server.login("bob@localhost/pc")
    reply = alice.request(iq("get", "h", to="localhost"))
    assert handler_of(reply) == "get-host"
    assert reply.get("from") == "localhost" and reply.get("to") == "alice@localhost/phone"
    assert handler_of(alice.request(iq("get", to="localhost/some-resource"))) == "get-host"
    assert handler_of(alice.request(iq("get", to="alice@localhost"))) == "get-self"
    assert handler_of(alice.request(iq("get"))) == "get-self"  # no 'to': the sender's account
    assert handler_of(alice.request(iq("get", to="bob@localhost"))) == "get-bare"
    reply = alice.request(iq("get", "f", to="bob@localhost/pc"))
    assert handler_of(reply) == "get-full"
    assert reply.get("from") == "bob@localhost/pc"
    bob.expect_nothing()  # the plugin answered for bob's resource


def test_iq_to_self_and_bare_are_distinct_events(make_xmpp):
    class OnlySelf(Plugin):
        name = "onlyself"

        def setup(self, ctx: Context) -> None:
            ctx.hook_iq("get", NS, "query", lambda e: answer(e, "self"), to="self")

    server = make_xmpp(enabled=["onlyself"], plugins=[OnlySelf])
    alice = server.login("alice@localhost/phone")
    server.login("bob@localhost/pc")
    assert handler_of(alice.request(iq("get", to="alice@localhost"))) == "self"
    assert_error(alice.request(iq("get", "b", to="bob@localhost")), "service-unavailable", "b")
    assert_error(alice.request(iq("get", "h", to="localhost")), "service-unavailable", "h")


def test_hook_iq_refuses_result_types(make_xmpp):
    class Wrong(Plugin):
        name = "wrong"

        def setup(self, ctx: Context) -> None:
            ctx.hook_iq("result", NS, "query", lambda e: None)

    with pytest.raises(PluginError, match="wrong"):
        make_xmpp(enabled=["wrong"], plugins=[Wrong])


class KindWatcher(Plugin):
    """Answers messages and presences sent to the domain, and counts what it sees per event name."""

    name = "kinds"

    def setup(self, ctx: Context) -> None:
        self.seen: list[str] = []
        for name in ("message/host", "presence/host", "message/full", "presence/full", "iq/full"):
            ctx.hook(name, lambda e, n=name: self.seen.append(n), priority=10)
        ctx.hook("message/host", self.echo)
        ctx.hook("presence/host", self.presence)

    def echo(self, event: StanzaEvent) -> etree._Element:
        return message(str(event.from_), f"echo: {body_of(event.stanza)}", str(event.to))

    def presence(self, event: StanzaEvent) -> etree._Element:
        return message(str(event.from_), f"presence {event.type or 'available'}", str(event.to))


def test_message_and_presence_handlers_by_kind(make_xmpp):
    server = make_xmpp(enabled=["kinds"], plugins=[KindWatcher])
    alice = server.login("alice@localhost/phone")
    bob = server.login("bob@localhost/pc")
    alice.send("<message to='localhost' type='chat'><body>hi</body></message>")
    reply = alice.expect("<message from='localhost' to='alice@localhost/phone'/>")
    assert body_of(reply) == "echo: hi"
    alice.send("<presence to='localhost/x' type='unavailable'/>")
    assert body_of(alice.next()) == "presence unavailable"
    alice.send("<message to='bob@localhost/pc'><body>direct</body></message>")
    bob.expect("<message from='alice@localhost/phone'><body>direct</body></message>")
    alice.send("<presence to='bob@localhost/pc'/>")
    bob.expect("<presence from='alice@localhost/phone' to='bob@localhost/pc'/>")
    alice.send(iq("get", "i", to="bob@localhost/pc"))
    bob.expect("<iq type='get' id='i' from='alice@localhost/phone'/>")
    plugin = server.server.plugins.instance("localhost", "kinds")
    # the plugin's replies to alice are messages to her full JID, and fire message/full too
    assert plugin.seen == [
        "message/host",
        "message/full",
        "presence/host",
        "message/full",
        "message/full",
        "presence/full",
        "iq/full",
    ]


class OutboundFilter(Plugin):
    """Drops messages carrying <spam/> that a local client sends to a bare JID."""

    name = "filter"

    def setup(self, ctx: Context) -> None:
        self.seen: list[str] = []
        ctx.hook("pre-message/bare", self.pre_message)

    def pre_message(self, event: StanzaEvent) -> Any:
        self.seen.append(f"{event.from_} -> {event.to}")
        if event.stanza.find(f"{{{NS}}}spam") is not None:
            return True  # handled: dropped
        return None


def test_pre_message_bare_filters_outbound_messages_from_local_clients(make_xmpp):
    server = make_xmpp(enabled=["filter"], plugins=[OutboundFilter])
    alice = server.login("alice@localhost/phone", available=True)
    bob = server.login("bob@localhost/pc", available=True)
    alice.send(f"<message to='bob@localhost' type='chat'><body>buy</body><spam xmlns='{NS}'/></message>")
    bob.expect_nothing()
    alice.expect_nothing()
    alice.send("<message to='bob@localhost' type='chat'><body>hello</body></message>")
    bob.expect("<message from='alice@localhost/phone'><body>hello</body></message>")
    # only pre-message/bare is hooked: a message to a full JID passes
    alice.send(f"<message to='bob@localhost/pc' type='chat'><body>x</body><spam xmlns='{NS}'/></message>")
    bob.expect("<message from='alice@localhost/phone'><body>x</body></message>")
    # stanzas the server itself sends do not fire pre- events
    spam = message("bob@localhost", "from the server", "localhost")
    add_child(spam, NS, "spam")
    server.server.plugins.instance("localhost", "filter").ctx.send(spam)
    bob.expect("<message from='localhost'><body>from the server</body></message>")
    plugin = server.server.plugins.instance("localhost", "filter")
    assert plugin.seen == ["alice@localhost/phone -> bob@localhost"] * 2


# -- priorities and propagation --------------------------------------------------------------------------


def ordered_plugin(name_: str, priority: float, calls: list, result: Any = None) -> type[Plugin]:
    class Ordered(Plugin):
        name = name_

        def setup(self, ctx: Context) -> None:
            ctx.hook("message/bare", self.on_message, priority=priority)

        def on_message(self, event: StanzaEvent) -> Any:
            calls.append(name_)
            return result(event) if callable(result) else result

    return Ordered


def test_priorities_higher_first_and_none_reaches_core_delivery(make_xmpp):
    calls: list[str] = []
    plugins = [
        ordered_plugin("low", -5, calls),
        ordered_plugin("high", 50, calls),
        ordered_plugin("middle", 0, calls),
    ]
    server = make_xmpp(enabled=["low", "high", "middle"], plugins=plugins)
    alice = server.login("alice@localhost/phone", available=True)
    bob = server.login("bob@localhost/pc", available=True)
    alice.send("<message to='bob@localhost' type='chat' id='m1'><body>hi</body></message>")
    assert calls == ["high", "middle", "low"]
    bob.expect("<message id='m1' from='alice@localhost/phone' to='bob@localhost'><body>hi</body></message>")


def test_returning_a_value_stops_propagation(make_xmpp):
    calls: list[str] = []
    plugins = [
        ordered_plugin("first", 10, calls),
        ordered_plugin("stopper", 5, calls, result=True),
        ordered_plugin("last", 1, calls),
    ]
    server = make_xmpp(enabled=["first", "stopper", "last"], plugins=plugins)
    alice = server.login("alice@localhost/phone", available=True)
    bob = server.login("bob@localhost/pc", available=True)
    alice.send("<message to='bob@localhost' type='chat'><body>hi</body></message>")
    assert calls == ["first", "stopper"]
    bob.expect_nothing()  # core delivery never ran
    alice.expect_nothing()


def test_returned_stanza_is_sent(make_xmpp):
    calls: list[str] = []

    def bounce(event: StanzaEvent) -> etree._Element:
        return message(str(event.from_), "not now", str(event.to))

    server = make_xmpp(enabled=["bouncer"], plugins=[ordered_plugin("bouncer", 1, calls, result=bounce)])
    alice = server.login("alice@localhost/phone", available=True)
    bob = server.login("bob@localhost/pc", available=True)
    alice.send("<message to='bob@localhost' type='chat'><body>hi</body></message>")
    alice.expect("<message from='bob@localhost' to='alice@localhost/phone'><body>not now</body></message>")
    bob.expect_nothing()


def test_equal_priorities_run_in_load_order(make_xmpp):
    calls: list[str] = []
    plugins = [ordered_plugin("one", 0, calls), ordered_plugin("two", 0, calls)]
    server = make_xmpp(enabled=["two", "one"], plugins=plugins)
    alice = server.login("alice@localhost/phone", available=True)
    alice.send("<message to='alice@localhost'><body>me</body></message>")
    alice.expect("<message><body>me</body></message>")
    assert calls == ["two", "one"]


# -- async handlers --------------------------------------------------------------------------------------


def test_async_def_handler_answers_after_clock_advance(make_xmpp):
    class Slow(Plugin):
        name = "slow"

        def setup(self, ctx: Context) -> None:
            ctx.hook_iq("get", NS, "query", self.on_query)

        async def on_query(self, event: StanzaEvent) -> etree._Element:
            await deferLater(self.ctx.clock, 5, lambda: None)
            return answer(event, "slow")

    server = make_xmpp(enabled=["slow"], plugins=[Slow])
    alice = server.login("alice@localhost/phone")
    alice.send(iq("get", "s1", to="localhost"))
    alice.expect_nothing()
    server.advance(4.9)
    alice.expect_nothing()
    server.advance(0.1)
    reply = alice.expect("<iq type='result' id='s1' from='localhost'/>")
    assert handler_of(reply) == "slow"
    # meanwhile other stanzas are served
    alice.send(iq("get", "s2", to="localhost"))
    alice.send(iq("get", "s3", to="localhost"))
    server.advance(5)
    assert {alice.next().get("id"), alice.next().get("id")} == {"s2", "s3"}


def test_deferred_firing_none_later_lets_the_next_handler_run(make_xmpp):
    class Delay(Plugin):
        """Holds every message to a bare JID for 3 seconds, then lets delivery go on."""

        name = "delay"

        def setup(self, ctx: Context) -> None:
            ctx.hook("message/bare", self.hold, priority=10)

        def hold(self, event: StanzaEvent) -> Deferred:
            d: Deferred = Deferred()
            self.ctx.call_later(3, d.callback, None)
            return d

    calls: list[str] = []
    server = make_xmpp(enabled=["delay", "after"], plugins=[Delay, ordered_plugin("after", 0, calls)])
    alice = server.login("alice@localhost/phone", available=True)
    bob = server.login("bob@localhost/pc", available=True)
    alice.send("<message to='bob@localhost' type='chat'><body>later</body></message>")
    bob.expect_nothing()
    assert calls == []
    server.advance(3)
    assert calls == ["after"]
    bob.expect("<message from='alice@localhost/phone'><body>later</body></message>")


def test_async_def_returning_none_continues(make_xmpp):
    class Audit(Plugin):
        name = "audit"

        def setup(self, ctx: Context) -> None:
            self.audited: list[str] = []
            ctx.hook_iq("get", NS, "query", self.audit, priority=5)
            ctx.hook_iq("get", NS, "query", lambda e: answer(e, "answer"))

        async def audit(self, event: StanzaEvent) -> None:
            await deferLater(self.ctx.clock, 1, lambda: None)
            self.audited.append(event.stanza.get("id"))

    server = make_xmpp(enabled=["audit"], plugins=[Audit])
    alice = server.login("alice@localhost/phone")
    alice.send(iq("get", "a1", to="localhost"))
    alice.expect_nothing()
    server.advance(1)
    assert handler_of(alice.expect("<iq id='a1'/>")) == "answer"
    assert server.server.plugins.instance("localhost", "audit").audited == ["a1"]


def test_async_none_down_to_unhandled_iq_is_service_unavailable(make_xmpp):
    class Pass(Plugin):
        name = "pass"

        def setup(self, ctx: Context) -> None:
            ctx.hook_iq("get", NS, "query", self.later)

        def later(self, event: StanzaEvent) -> Deferred:
            return deferLater(self.ctx.clock, 2, lambda: None)

    server = make_xmpp(enabled=["pass"], plugins=[Pass])
    alice = server.login("alice@localhost/phone")
    alice.send(iq("get", "p1", to="localhost"))
    alice.expect_nothing()
    server.advance(2)
    assert_error(alice.next(), "service-unavailable", "p1")


# -- failures --------------------------------------------------------------------------------------------


class Broken(Plugin):
    name = "broken"

    def setup(self, ctx: Context) -> None:
        ctx.hook_iq("get", NS, "query", self.on_query)
        ctx.hook_iq("get", NS, "late", self.late)
        ctx.hook("message/bare", self.on_message, priority=5)

    def on_query(self, event: StanzaEvent) -> etree._Element:
        if event.stanza.get("id").startswith("boom"):
            raise RuntimeError("handler bug")
        return answer(event, "fine")

    async def late(self, event: StanzaEvent) -> etree._Element:
        await deferLater(self.ctx.clock, 1, lambda: None)
        raise ValueError("late bug")

    def on_message(self, event: StanzaEvent) -> Any:
        if body_of(event.stanza) == "crash":
            raise KeyError("message bug")
        return None


def test_exception_gives_internal_server_error_for_that_stanza_only(make_xmpp, logged):
    server = make_xmpp(enabled=["broken", "ping"], plugins=[Broken])
    alice = server.login("alice@localhost/phone")
    bob = server.login("bob@localhost/pc")
    reply = alice.request(iq("get", "boom1", to="localhost"))
    assert_error(reply, "internal-server-error", "boom1")
    assert reply.get("from") == "localhost"
    bob.expect_nothing()
    assert alice.connected and not alice.stream_errors
    assert handler_of(alice.request(iq("get", "ok1", to="localhost"))) == "fine"
    assert (
        alice.request("<iq type='get' id='png' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").get("type")
        == "result"
    )
    assert handler_of(bob.request(iq("get", "ok2", to="localhost"))) == "fine"
    failures = [e for e in logged if e.get("log_failure") is not None and e.get("owner") == "broken"]
    assert len(failures) == 1
    assert failures[0]["log_failure"].check(RuntimeError)
    assert "iq-get/host" in failures[0]["event_name"]


def test_exception_in_message_handler_bounces_the_message(make_xmpp, logged):
    server = make_xmpp(enabled=["broken"], plugins=[Broken])
    alice = server.login("alice@localhost/phone", available=True)
    bob = server.login("bob@localhost/pc", available=True)
    alice.send("<message to='bob@localhost' type='chat' id='c1'><body>crash</body></message>")
    reply = alice.next()
    assert_error(reply, "internal-server-error", "c1")
    assert reply.tag == "message" and reply.get("from") == "bob@localhost"
    bob.expect_nothing()
    alice.send("<message to='bob@localhost' type='chat' id='c2'><body>fine</body></message>")
    bob.expect("<message id='c2'><body>fine</body></message>")
    assert any(e.get("owner") == "broken" and e.get("log_failure") for e in logged)


def test_exception_in_async_handler_after_advance(make_xmpp, logged):
    server = make_xmpp(enabled=["broken"], plugins=[Broken])
    alice = server.login("alice@localhost/phone")
    alice.send(iq("get", "l1", to="localhost", name="late"))
    alice.expect_nothing()
    server.advance(1)
    assert_error(alice.next(), "internal-server-error", "l1")
    failures = [e for e in logged if e.get("owner") == "broken" and e.get("log_failure")]
    assert failures and failures[0]["log_failure"].check(ValueError)
    assert handler_of(alice.request(iq("get", "ok", to="localhost"))) == "fine"


def test_handler_failure_names_the_plugin_on_the_bus(make_xmpp):
    server = make_xmpp(enabled=["broken"], plugins=[Broken])
    bus = server.server.hosts["localhost"].bus
    assert (0, "broken") in bus.handlers(f"iq-get/host/{NS}:query")
    result = bus.fire(f"iq-get/host/{NS}:query", _FakeEvent("boom"))
    assert isinstance(result, HandlerFailure) and result.owner == "broken"


class _FakeEvent:
    def __init__(self, id_: str) -> None:
        self.stanza = make_stanza("iq", id_=id_)


def test_setup_failure_at_run_time_leaves_nothing_behind(make_xmpp):
    class HalfDone(Plugin):
        name = "halfdone"

        def setup(self, ctx: Context) -> None:
            ctx.add_feature("urn:half")
            ctx.hook_iq("get", NS, "query", lambda e: answer(e, "half"))
            raise RuntimeError("setup bug")

    server = make_xmpp(enabled=["disco"], plugins=[HalfDone])
    alice = server.login("alice@localhost/phone")
    with pytest.raises(PluginError, match="halfdone"):
        server.server.plugins.load("halfdone", "localhost")
    assert "halfdone" not in server.server.plugins.loaded("localhost")
    assert_error(alice.request(iq("get", "h", to="localhost")), "service-unavailable", "h")
    assert "urn:half" not in disco_features(alice)


def test_setup_failure_at_start_is_reported(make_xmpp):
    class BadStart(Plugin):
        name = "badstart"

        def setup(self, ctx: Context) -> None:
            raise RuntimeError("cannot start")

    with pytest.raises(PluginError, match="badstart.*cannot start"):
        make_xmpp(enabled=["badstart"], plugins=[BadStart])


# -- server events and custom events ---------------------------------------------------------------------


class EventWatcher(Notifier):
    name = "eventwatcher"

    def setup(self, ctx: Context) -> None:
        ctx.hook("session-started", lambda e: self.notify(f"session-started {e.session.jid}"))
        ctx.hook("session-ended", lambda e: self.notify(f"session-ended {e.session.jid}"))
        ctx.hook("plugin-loaded", lambda e: self.notify(f"plugin-loaded {e.name} {e.domain}"))
        ctx.hook("plugin-unloaded", lambda e: self.notify(f"plugin-unloaded {e.name} {e.domain}"))
        ctx.hook("config-reloaded", lambda changes: self.notify(f"config-reloaded {'; '.join(changes)}"))


class Other(Plugin):
    name = "other"

    def setup(self, ctx: Context) -> None:
        ctx.add_feature("urn:other")
        ctx.hook_iq("get", NS, "query", lambda e: answer(e, "other"))


def bodies(client: Any) -> list[str]:
    result = []
    client._pump()
    while client.inbox:
        result.append(body_of(client.next()))
    return result


def test_session_events(make_xmpp):
    server = make_xmpp(enabled=["eventwatcher"], plugins=[EventWatcher])
    watcher = server.login("watcher@localhost/w")
    assert bodies(watcher) == ["session-started watcher@localhost/w"]
    alice = server.login("alice@localhost/phone", available=True)
    assert bodies(watcher) == ["session-started alice@localhost/phone"]
    alice.disconnect()
    assert bodies(watcher) == ["session-ended alice@localhost/phone"]
    bob = server.login("bob@localhost/pc")
    bob.send("</stream:stream>")
    assert bob.closed_by_server
    assert bodies(watcher) == ["session-started bob@localhost/pc", "session-ended bob@localhost/pc"]


def test_plugin_events_and_config_reloaded(make_xmpp):
    server = make_xmpp(enabled=["eventwatcher"], plugins=[EventWatcher, Other])
    watcher = server.login("watcher@localhost/w")
    bodies(watcher)
    manager = server.server.plugins
    manager.load("other", "localhost")
    assert bodies(watcher) == ["plugin-loaded other localhost"]
    manager.unload("other", "localhost")
    assert bodies(watcher) == ["plugin-unloaded other localhost"]
    changes = manager.apply_config(make_config(enabled=["eventwatcher", "other"]))
    assert changes == ["loaded other on localhost"]
    assert bodies(watcher) == ["plugin-loaded other localhost", "config-reloaded loaded other on localhost"]
    changes = manager.apply_config(make_config(enabled=["eventwatcher"]))
    assert bodies(watcher) == [
        "plugin-unloaded other localhost",
        "config-reloaded unloaded other on localhost",
    ]


def test_plugin_fires_and_hooks_its_own_event(make_xmpp):
    class Producer(Plugin):
        name = "producer"

        def setup(self, ctx: Context) -> None:
            ctx.hook_iq("set", NS, "query", self.on_set)

        def on_set(self, event: StanzaEvent) -> etree._Element:
            verdict = self.ctx.fire("producer/check", event.from_.local)
            return answer(event, f"verdict={verdict}")

    class Consumer(Plugin):
        name = "consumer"
        requires = ("producer",)

        def setup(self, ctx: Context) -> None:
            ctx.hook("producer/check", lambda user: "allowed" if user == "alice" else None)
            ctx.hook("producer/check", lambda user: "fallback", priority=-1)

    server = make_xmpp(enabled=["consumer"], plugins=[Producer, Consumer])
    alice = server.login("alice@localhost/phone")
    bob = server.login("bob@localhost/pc")
    assert handler_of(alice.request(iq("set", to="localhost"))) == "verdict=allowed"
    assert handler_of(bob.request(iq("set", to="localhost"))) == "verdict=fallback"
    server.server.plugins.unload("consumer", "localhost")
    assert handler_of(alice.request(iq("set", to="localhost"))) == "verdict=None"


# -- options ---------------------------------------------------------------------------------------------


class Options(Plugin):
    name = "opts"
    options = {
        "greeting": Option(str, "hello", "what to say"),
        "count": Option(int, 3, min=1, max=10),
        "ratio": Option(float, 0.5),
        "loud": Option(bool, False),
        "tags": Option(list, [], item_type=str),
        "mode": Option(str, "a", choices=("a", "b")),
    }

    def setup(self, ctx: Context) -> None:
        ctx.hook_iq("get", NS, "query", self.on_query)

    def on_query(self, event: StanzaEvent) -> etree._Element:
        values = {key: self.ctx.option(key) for key in self.options}
        return answer(event, json.dumps(values, sort_keys=True))


def option_values(client: Any) -> dict:
    return json.loads(handler_of(client.request(iq("get", to="localhost"))))


def test_option_defaults(make_xmpp):
    server = make_xmpp(enabled=["opts"], plugins=[Options])
    alice = server.login("alice@localhost/phone")
    assert option_values(alice) == {
        "greeting": "hello",
        "count": 3,
        "ratio": 0.5,
        "loud": False,
        "tags": [],
        "mode": "a",
    }


def test_option_values_given(make_xmpp):
    options = {"opts": {"greeting": "hi", "count": 10, "ratio": 2, "loud": True, "tags": ["x"], "mode": "b"}}
    server = make_xmpp(enabled=["opts"], plugins=[Options], options=options)
    alice = server.login("alice@localhost/phone")
    values = option_values(alice)
    assert values == {"greeting": "hi", "count": 10, "ratio": 2.0, "loud": True, "tags": ["x"], "mode": "b"}
    assert isinstance(server.server.plugins.instance("localhost", "opts").ctx.option("ratio"), float)


def test_option_lookup_of_undeclared_key_fails(make_xmpp):
    server = make_xmpp(enabled=["opts"], plugins=[Options])
    with pytest.raises(KeyError, match="nope"):
        server.server.plugins.instance("localhost", "opts").ctx.option("nope")


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("greeting", 5, "expected str"),
        ("count", "3", "expected int"),
        ("count", True, "expected int"),
        ("count", 2.5, "expected int"),
        ("count", 0, "at least"),
        ("count", 11, "at most"),
        ("ratio", "x", "expected float"),
        ("loud", 1, "expected bool"),
        ("tags", "x", "expected list"),
        ("tags", [1], "list of str"),
        ("mode", "c", "one of"),
    ],
)
def test_bad_option_is_a_config_error_at_construction(make_xmpp, key, value, words):
    with pytest.raises(ConfigError) as info:
        make_xmpp(enabled=["opts"], plugins=[Options], options={"opts": {key: value}})
    text = str(info.value)
    assert f"[plugins.opts] {key}" in text
    assert words in text
    assert "fix:" in text


def test_unknown_option_is_a_config_error(make_xmpp):
    with pytest.raises(ConfigError) as info:
        make_xmpp(enabled=["opts"], plugins=[Options], options={"opts": {"colour": "red"}})
    assert "[plugins.opts] colour" in str(info.value)
    assert "greeting" in str(info.value)  # the fix lists the declared options


def test_options_for_a_plugin_that_is_not_installed(make_xmpp):
    with pytest.raises(ConfigError, match=r"\[plugins.ghost\]"):
        make_xmpp(enabled=[], options={"ghost": {"x": 1}})


def test_changed_options_reload_the_plugin_on_apply_config(make_xmpp):
    server = make_xmpp(enabled=["opts"], plugins=[Options])
    alice = server.login("alice@localhost/phone")
    first = server.server.plugins.instance("localhost", "opts")
    changes = server.server.plugins.apply_config(
        make_config(enabled=["opts"], options={"opts": {"greeting": "bonjour"}})
    )
    assert changes == ["reloaded opts on localhost"]
    assert server.server.plugins.instance("localhost", "opts") is not first
    assert option_values(alice)["greeting"] == "bonjour"
    assert alice.connected


def test_bad_options_in_apply_config_change_nothing(make_xmpp):
    server = make_xmpp(enabled=["opts"], plugins=[Options])
    alice = server.login("alice@localhost/phone")
    with pytest.raises(ConfigError):
        server.server.plugins.apply_config(make_config(enabled=["opts"], options={"opts": {"count": "x"}}))
    assert option_values(alice)["count"] == 3


# -- discovery and requirements --------------------------------------------------------------------------


def test_unknown_plugin_is_a_config_error(make_xmpp):
    with pytest.raises(ConfigError) as info:
        make_xmpp(enabled=["disco", "no-such-plugin"])
    text = str(info.value)
    assert "no-such-plugin" in text and "[plugins] enabled" in text and "fix:" in text
    assert "disco" in text  # installed plugins are listed


def test_missing_requirement_names_both_plugins(make_xmpp):
    class Needy(Plugin):
        name = "needy"
        requires = ("missing-base",)

    with pytest.raises(ConfigError) as info:
        make_xmpp(enabled=["needy"], plugins=[Needy])
    text = str(info.value)
    assert "needy" in text and "missing-base" in text


def test_requirement_cycle_is_a_config_error(make_xmpp):
    class Chicken(Plugin):
        name = "chicken"
        requires = ("egg",)

    class Egg(Plugin):
        name = "egg"
        requires = ("chicken",)

    with pytest.raises(ConfigError, match="cycle"):
        make_xmpp(enabled=["chicken"], plugins=[Chicken, Egg])


class Base(Plugin):
    name = "base"
    setups = 0

    def setup(self, ctx: Context) -> None:
        type(self).setups += 1
        self.generation = type(self).setups
        ctx.add_feature("urn:base")
        ctx.hook_iq("get", NS, "base", lambda e: answer(e, f"base-{self.generation}"))

    def greet(self, who: str) -> str:
        return f"hello {who} from base-{self.generation}"


class Dependent(Plugin):
    name = "dependent"
    requires = ("base",)

    def setup(self, ctx: Context) -> None:
        self.base = ctx.depends("base")
        ctx.hook_iq("get", NS, "query", lambda e: answer(e, self.base.greet(e.from_.local)))


def base_classes() -> list[type[Plugin]]:
    class FreshBase(Base):
        setups = 0

    FreshBase.name = "base"
    return [FreshBase, Dependent]


def test_requirements_load_automatically_and_depends_gives_the_instance(make_xmpp):
    server = make_xmpp(enabled=["dependent"], plugins=base_classes())
    manager = server.server.plugins
    assert manager.loaded("localhost") == ["base", "dependent"]
    assert manager.instance("localhost", "dependent").base is manager.instance("localhost", "base")
    alice = server.login("alice@localhost/phone")
    assert handler_of(alice.request(iq("get", to="localhost"))) == "hello alice from base-1"
    assert handler_of(alice.request(iq("get", to="localhost", name="base"))) == "base-1"


def test_depends_on_an_undeclared_plugin_is_refused(make_xmpp):
    class Sneaky(Plugin):
        name = "sneaky"

        def setup(self, ctx: Context) -> None:
            ctx.depends("disco")

    with pytest.raises(PluginError, match="requires"):
        make_xmpp(enabled=["disco", "sneaky"], plugins=[Sneaky])


def test_unload_refused_while_a_dependent_is_loaded(make_xmpp):
    server = make_xmpp(enabled=["dependent"], plugins=base_classes())
    manager = server.server.plugins
    alice = server.login("alice@localhost/phone")
    with pytest.raises(PluginError, match="dependent"):
        manager.unload("base", "localhost")
    assert manager.loaded("localhost") == ["base", "dependent"]
    assert handler_of(alice.request(iq("get", to="localhost", name="base"))) == "base-1"
    manager.unload("dependent", "localhost")
    manager.unload("base", "localhost")
    assert manager.loaded("localhost") == []
    assert_error(alice.request(iq("get", "b", to="localhost", name="base")), "service-unavailable", "b")


def test_unload_of_a_plugin_not_loaded(make_xmpp):
    server = make_xmpp(enabled=[], plugins=[Other])
    with pytest.raises(PluginError, match="not loaded"):
        server.server.plugins.unload("other", "localhost")
    with pytest.raises(PluginError, match="unknown"):
        server.server.plugins.load("nothing-like-it", "localhost")


def test_reload_of_a_requirement_reloads_its_dependents(make_xmpp):
    server = make_xmpp(enabled=["dependent"], plugins=base_classes())
    manager = server.server.plugins
    alice = server.login("alice@localhost/phone")
    old_dependent = manager.instance("localhost", "dependent")
    manager.reload("base")
    assert manager.loaded("localhost") == ["base", "dependent"]
    assert manager.instance("localhost", "dependent") is not old_dependent
    assert handler_of(alice.request(iq("get", to="localhost"))) == "hello alice from base-2"
    assert alice.connected


# -- loading and unloading while clients are connected ---------------------------------------------------


def test_load_unload_reload_with_a_connected_client(make_xmpp):
    class Feature(Plugin):
        name = "feature"
        setups: list[int] = []

        def setup(self, ctx: Context) -> None:
            Feature.setups.append(id(self))
            ctx.add_feature("urn:feature")
            ctx.add_identity("automation", "test", "feature")
            ctx.add_feature(NS, account=True)
            ctx.hook_iq("get", NS, "query", lambda e: answer(e, f"feature-{len(Feature.setups)}"))

    server = make_xmpp(enabled=["disco", "ping"], plugins=[Feature])
    manager = server.server.plugins
    alice = server.login("alice@localhost/phone", available=True)
    assert_error(alice.request(iq("get", "a", to="localhost")), "service-unavailable", "a")
    assert "urn:feature" not in disco_features(alice)

    manager.load("feature", "localhost")
    assert handler_of(alice.request(iq("get", to="localhost"))) == "feature-1"
    assert "urn:feature" in disco_features(alice)
    assert NS in disco_features(alice, to="alice@localhost")

    manager.reload("feature")
    assert len(Feature.setups) == 2 and Feature.setups[0] != Feature.setups[1]
    assert handler_of(alice.request(iq("get", to="localhost"))) == "feature-2"
    assert "urn:feature" in disco_features(alice)

    manager.unload("feature", "localhost")
    assert_error(alice.request(iq("get", "b", to="localhost")), "service-unavailable", "b")
    assert "urn:feature" not in disco_features(alice)
    assert NS not in disco_features(alice, to="alice@localhost")
    reply = alice.request(iq("get", "i", to="localhost", ns=NS_DISCO_INFO))
    assert not [i for i in reply.iter(f"{{{NS_DISCO_INFO}}}identity") if i.get("category") == "automation"]

    assert alice.connected and not alice.stream_errors
    ping = alice.request("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert ping.get("type") == "result"
    alice.send("<message to='alice@localhost/phone'><body>still here</body></message>")
    alice.expect("<message><body>still here</body></message>")


def test_a_feature_declared_by_two_plugins_stays_until_both_unload(make_xmpp):
    def declaring(name_: str) -> type[Plugin]:
        class Declaring(Plugin):
            name = name_

            def setup(self, ctx: Context) -> None:
                ctx.add_feature("urn:shared")

        return Declaring

    server = make_xmpp(enabled=["disco", "d1", "d2"], plugins=[declaring("d1"), declaring("d2")])
    alice = server.login("alice@localhost/phone")
    server.server.plugins.unload("d1", "localhost")
    assert "urn:shared" in disco_features(alice)
    server.server.plugins.unload("d2", "localhost")
    assert "urn:shared" not in disco_features(alice)


def test_teardown_is_called_on_unload(make_xmpp):
    class Tidy(Plugin):
        name = "tidy"
        torn: list[str] = []

        def teardown(self) -> None:
            Tidy.torn.append(self.ctx.domain)

    server = make_xmpp(enabled=["tidy"], plugins=[Tidy])
    server.server.plugins.unload("tidy", "localhost")
    assert Tidy.torn == ["localhost"]


# -- timers ----------------------------------------------------------------------------------------------


class Timers(Notifier):
    name = "timers"

    def setup(self, ctx: Context) -> None:
        self.ticks = 0
        ctx.every(10, self.tick)
        ctx.call_later(15, self.notify, "once")

    def tick(self) -> None:
        self.ticks += 1
        self.notify(f"tick {self.ticks}")


def test_timers_fire_and_are_cancelled_on_unload(make_xmpp):
    server = make_xmpp(enabled=["timers"], plugins=[Timers])
    watcher = server.login("watcher@localhost/w")
    server.advance(10)
    assert bodies(watcher) == ["tick 1"]
    server.advance(5)
    assert bodies(watcher) == ["once"]
    server.advance(5)
    assert bodies(watcher) == ["tick 2"]
    server.server.plugins.unload("timers", "localhost")
    server.advance(100)
    watcher.expect_nothing()
    assert watcher.connected


def test_timers_cancelled_before_they_first_fire(make_xmpp):
    server = make_xmpp(enabled=["timers"], plugins=[Timers])
    watcher = server.login("watcher@localhost/w")
    before = len(server.clock.getDelayedCalls())
    server.server.plugins.unload("timers", "localhost")
    assert len(server.clock.getDelayedCalls()) == before - 2
    server.advance(60)
    watcher.expect_nothing()


def test_timers_restart_on_reload(make_xmpp):
    server = make_xmpp(enabled=["timers"], plugins=[Timers])
    watcher = server.login("watcher@localhost/w")
    server.advance(8)
    server.server.plugins.reload("timers")
    server.advance(8)
    watcher.expect_nothing()  # the old timer was cancelled; the new one started at the reload
    server.advance(2)
    assert bodies(watcher) == ["tick 1"]


def test_one_shot_timers_are_forgotten_once_fired_or_cancelled(make_xmpp):
    """A plugin that sets timers all its life (a MUC room lock per new room) holds only the pending ones."""
    server = make_xmpp(enabled=["timers"], plugins=[Timers])
    ctx = server.server.plugins.instance("localhost", "timers").ctx
    fired = []
    for n in range(1000):
        call = ctx.call_later(1, fired.append, n)
        if n % 2:
            call.cancel()
        server.advance(2)
    pending = ctx.call_later(50, fired.append, "late")
    assert len(fired) == 500 and len(ctx._calls) <= 2
    server.server.plugins.unload("timers", "localhost")
    assert not pending.active()


# -- storage ---------------------------------------------------------------------------------------------


class Notes(Plugin):
    """Keeps one note per user: iq set stores the text, iq get returns it."""

    name = "notes"

    def setup(self, ctx: Context) -> None:
        ctx.hook_iq("set", NS, "note", self.on_set, to="self")
        ctx.hook_iq("get", NS, "note", self.on_get, to="self")

    def on_set(self, event: StanzaEvent) -> Deferred:
        text = event.stanza[0].text
        value = {"text": text, "tags": ["a", 1, None, {"nested": True}]} if text else None
        d = self.ctx.store().set(event.from_.local, value)
        return d.addCallback(lambda _: event.result())

    def on_get(self, event: StanzaEvent) -> Deferred:
        def reply(value: Any) -> etree._Element:
            result = event.result()
            note = add_child(result, NS, "note")
            if value is not None:
                note.text = value["text"]
                note.set("tags", json.dumps(value["tags"]))
            return result

        return self.ctx.store().get(event.from_.local).addCallback(reply)


def note_of(client: Any) -> etree._Element:
    reply = client.request(f"<iq type='get' id='g'><note xmlns='{NS}'/></iq>")
    assert reply.get("type") == "result", etree.tostring(reply)
    return reply[0]


def test_plugin_store_round_trip(make_xmpp):
    server = make_xmpp(domains=("localhost", "other.example"), enabled=["notes"], plugins=[Notes])
    alice = server.login("alice@localhost/phone")
    bob = server.login("bob@localhost/pc")
    other_alice = server.login("alice@other.example/x")
    assert note_of(alice).text is None
    reply = alice.request(f"<iq type='set' id='s'><note xmlns='{NS}'>buy milk</note></iq>")
    assert reply.get("type") == "result" and reply.get("id") == "s"
    note = note_of(alice)
    assert note.text == "buy milk"
    assert json.loads(note.get("tags")) == ["a", 1, None, {"nested": True}]
    assert note_of(bob).text is None  # per user
    assert note_of(other_alice).text is None  # per domain
    store = server.server.plugins.instance("localhost", "notes").ctx.store()
    got: list = []
    store.users().addCallback(got.append)
    assert got == [["alice"]]
    # the document lives in the server's storage under the plugin's name; it survives a reload
    server.server.plugins.reload("notes")
    assert note_of(alice).text == "buy milk"
    stored: list = []
    server.server.storage.get("localhost", "notes", "alice").addCallback(stored.append)
    assert stored[0]["text"] == "buy milk"
    # None deletes
    alice.request(f"<iq type='set' id='d'><note xmlns='{NS}'/></iq>")
    assert note_of(alice).text is None


def test_named_stores_are_separate(make_xmpp):
    server = make_xmpp(enabled=["notes"], plugins=[Notes])
    ctx = server.server.plugins.instance("localhost", "notes").ctx
    ctx.store("drafts").set("alice", {"draft": 1})
    got: list = []
    ctx.store().get("alice").addCallback(got.append)
    ctx.store("drafts").get("alice").addCallback(got.append)
    assert got == [None, {"draft": 1}]


# -- per-domain enabling ---------------------------------------------------------------------------------


class WhereAmI(Plugin):
    name = "whereami"
    domains: list[str] = []

    def setup(self, ctx: Context) -> None:
        WhereAmI.domains.append(ctx.domain)
        ctx.hook_iq("get", NS, "query", lambda e: answer(e, f"on {ctx.domain}"))


def test_per_domain_enabling_with_hosts_overrides(make_xmpp):
    WhereAmI.domains = []
    server = make_xmpp(
        domains=("a.example", "b.example", "c.example"),
        enabled=["whereami", "ping"],
        plugins=[WhereAmI],
        config={"hosts": {"b.example": {"plugins": ["ping"]}, "c.example": {"plugins": ["whereami"]}}},
    )
    assert sorted(WhereAmI.domains) == ["a.example", "c.example"]
    a = server.login("alice@a.example/x")
    b = server.login("bob@b.example/x")
    c = server.login("carol@c.example/x")
    assert handler_of(a.request(iq("get", to="a.example"))) == "on a.example"
    assert_error(b.request(iq("get", "nb", to="b.example")), "service-unavailable", "nb")
    assert handler_of(c.request(iq("get", to="c.example"))) == "on c.example"
    ping = "<iq type='get' id='p' to='{}'><ping xmlns='urn:xmpp:ping'/></iq>"
    assert a.request(ping.format("a.example")).get("type") == "result"
    assert b.request(ping.format("b.example")).get("type") == "result"
    assert_error(c.request(ping.format("c.example")), "service-unavailable")
    # an iq to another served domain is handled by that domain's plugins
    assert handler_of(b.request(iq("get", to="a.example"))) == "on a.example"
    assert_error(a.request(iq("get", "x", to="b.example")), "service-unavailable", "x")
    manager = server.server.plugins
    assert manager.loaded("b.example") == ["ping"]
    assert manager.instance("a.example", "whereami") is not manager.instance("c.example", "whereami")


def test_per_domain_load_and_unload(make_xmpp):
    server = make_xmpp(domains=("a.example", "b.example"), enabled=["whereami"], plugins=[WhereAmI])
    a = server.login("alice@a.example/x")
    b = server.login("bob@b.example/x")
    server.server.plugins.unload("whereami", "b.example")
    assert handler_of(a.request(iq("get", to="a.example"))) == "on a.example"
    assert_error(b.request(iq("get", "x", to="b.example")), "service-unavailable", "x")
    server.server.plugins.load("whereami", "b.example")
    assert handler_of(b.request(iq("get", to="b.example"))) == "on b.example"


# -- send_iq ---------------------------------------------------------------------------------------------


class Asker(Plugin):
    """On <query/> set from a client, asks that client a question with send_iq and reports the outcome
    in a message."""

    name = "asker"

    def setup(self, ctx: Context) -> None:
        ctx.hook_iq("set", NS, "query", self.on_set)

    def on_set(self, event: StanzaEvent) -> etree._Element:
        question = make_stanza("iq", to=str(event.from_), from_=self.ctx.domain, type_="get")
        add_child(question, NS, "question")
        d = self.ctx.send_iq(question, timeout=5)
        target = str(event.from_)

        def answered(reply: etree._Element) -> None:
            self.ctx.send(
                message(
                    target, f"answer {reply.get('id')} {reply.findtext(f'{{{NS}}}question')}", "localhost"
                )
            )

        def failed(failure: Any) -> None:
            if failure.check(IQError):
                self.ctx.send(message(target, f"IQError {failure.value.condition}", "localhost"))
            else:
                failure.trap(IQTimeout)
                self.ctx.send(message(target, "IQTimeout", "localhost"))

        d.addCallbacks(answered, failed)
        return event.result()


def ask(server: Any, client: Any) -> etree._Element:
    client.send(iq("set", "ask", to="localhost"))
    question = client.expect(f"<iq type='get' from='localhost'><question xmlns='{NS}'/></iq>")
    client.expect("<iq type='result' id='ask'/>")
    return question


def test_send_iq_answered_by_the_client(make_xmpp):
    server = make_xmpp(enabled=["asker"], plugins=[Asker])
    alice = server.login("alice@localhost/phone")
    question = ask(server, alice)
    assert question.get("to") == "alice@localhost/phone" and question.get("id")
    qid = question.get("id")
    alice.send(f"<iq type='result' id='{qid}' to='localhost'><question xmlns='{NS}'>42</question></iq>")
    assert body_of(alice.next()) == f"answer {qid} 42"
    server.advance(10)
    alice.expect_nothing()  # the timeout was cancelled


def test_send_iq_error_answer(make_xmpp):
    server = make_xmpp(enabled=["asker"], plugins=[Asker])
    alice = server.login("alice@localhost/phone")
    qid = ask(server, alice).get("id")
    alice.send(
        f"<iq type='error' id='{qid}' to='localhost'><error type='cancel'>"
        "<item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
    )
    assert body_of(alice.next()) == "IQError item-not-found"


def test_send_iq_timeout(make_xmpp):
    server = make_xmpp(enabled=["asker"], plugins=[Asker])
    alice = server.login("alice@localhost/phone")
    qid = ask(server, alice).get("id")
    server.advance(4.9)
    alice.expect_nothing()
    server.advance(0.1)
    assert body_of(alice.next()) == "IQTimeout"
    # a late answer is not taken for anything else, and gets no error back
    alice.send(f"<iq type='result' id='{qid}' to='localhost'/>")
    alice.expect_nothing()


def test_send_iq_answer_from_someone_else_is_ignored(make_xmpp):
    server = make_xmpp(enabled=["asker"], plugins=[Asker])
    alice = server.login("alice@localhost/phone")
    mallory = server.login("mallory@localhost/m")
    qid = ask(server, alice).get("id")
    mallory.send(f"<iq type='result' id='{qid}' to='localhost'/>")
    mallory.expect_nothing()
    alice.expect_nothing()
    alice.send(f"<iq type='result' id='{qid}' to='localhost'/>")
    assert body_of(alice.next()) == f"answer {qid} None"


def test_send_iq_to_a_session_that_ends(make_xmpp):
    server = make_xmpp(enabled=["asker", "eventwatcher"], plugins=[Asker, EventWatcher])
    watcher = server.login("watcher@localhost/w")
    alice = server.login("alice@localhost/phone")
    bodies(watcher)
    asker = server.server.plugins.instance("localhost", "asker")
    question = make_stanza("iq", to="alice@localhost/phone", from_="localhost", type_="get")
    add_child(question, NS, "question")
    outcome: list = []
    asker.ctx.send_iq(question, timeout=30).addErrback(lambda f: outcome.append(f.type))
    alice.next()
    alice.disconnect()
    assert outcome == [IQTimeout]
    assert bodies(watcher) == ["session-ended alice@localhost/phone"]


# -- hook_stanza: selection by kind and type ---------------------------------------------------------


class TypeFilter(Plugin):
    """Counts chat messages and available presences to bare JIDs; headlines to bare JIDs are swallowed."""

    name = "typefilter"

    def setup(self, ctx):
        self.chats = []
        self.available = []
        self.outbound = []
        ctx.hook_stanza("message", self.on_chat, type_="chat", to="bare", priority=10)
        ctx.hook_stanza("message", lambda e: True, type_={"headline"}, to="bare", priority=10)
        ctx.hook_stanza("presence", self.on_available, type_="available", to="bare", priority=10)
        ctx.hook_stanza("message", self.on_outbound, type_="normal", outbound=True, priority=10)

    def on_chat(self, event):
        self.chats.append(event.stanza.findtext("body"))

    def on_available(self, event):
        self.available.append(str(event.from_))

    def on_outbound(self, event):
        self.outbound.append(event.stanza.findtext("body"))


def test_hook_stanza_selects_by_kind_and_type(make_xmpp):
    xmpp = make_xmpp(plugins=[TypeFilter], enabled=["typefilter"])
    plugin = xmpp.server.plugins.instance("localhost", "typefilter")
    alice = xmpp.login("alice@localhost/phone", available=True)
    bob = xmpp.login("bob@localhost/pc", available=True)

    bob.send("<message to='alice@localhost' type='chat'><body>one</body></message>")
    alice.expect("<message type='chat'><body>one</body></message>")  # observed, then delivered
    bob.send("<message to='alice@localhost' type='headline'><body>two</body></message>")
    alice.expect_nothing()  # swallowed by the headline hook
    bob.send("<message to='alice@localhost'><body>three</body></message>")  # no type: "normal"
    alice.expect("<message><body>three</body></message>")
    bob.send("<presence to='alice@localhost'/>")  # no type: "available"
    alice.expect("<presence from='bob@localhost/pc'/>")

    assert plugin.chats == ["one"]
    # Initial presence (no 'to') is addressed to the sender's own bare JID, so it is seen too.
    assert plugin.available == ["alice@localhost/phone", "bob@localhost/pc", "bob@localhost/pc"]
    assert plugin.outbound == ["three"]  # only the untyped (normal) message passed the outbound filter


def test_hook_stanza_rejects_unknown_kind(make_xmpp):
    class Bad(Plugin):
        name = "bad"

        def setup(self, ctx):
            ctx.hook_stanza("mesage", lambda e: None)

    with pytest.raises(PluginError, match="not a stanza kind"):
        make_xmpp(plugins=[Bad], enabled=["bad"])


class EchoService(Plugin):
    """A service on its own domain (ctx.add_route): answers every iq get with a result naming the domain."""

    name = "echo_service"
    options = {
        "domain": Option(str, "echo.{domain}", "the service domain"),
        "low": Option(int, 1, "must not exceed high"),
        "high": Option(int, 2, "must be at least low"),
    }

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        if options["low"] > options["high"]:
            raise ValueError(f"low ({options['low']}) exceeds high ({options['high']})")

    def setup(self, ctx: Context) -> None:
        self.domain = ctx.option("domain").replace("{domain}", ctx.domain)
        ctx.add_route(self.domain, self.deliver)

    def deliver(self, stanza: etree._Element) -> None:
        if stanza.tag == "iq" and stanza.get("type") == "get":
            reply = make_stanza("iq", to=stanza.get("from"), from_=stanza.get("to"), type_="result")
            reply.set("id", stanza.get("id"))
            add_child(reply, NS, "query", self.domain)
            self.ctx.send(reply)


def test_a_plugin_serves_its_own_domain_until_it_unloads(make_xmpp):
    server = make_xmpp(enabled=["echo_service"], plugins=[EchoService])
    alice = server.login("alice@localhost/phone")
    reply = alice.request(iq(to="echo.localhost"))
    assert reply.get("type") == "result" and reply.get("from") == "echo.localhost"
    assert reply.findtext(f"{{{NS}}}query") == "echo.localhost"
    assert server.server.serves("echo.localhost")
    server.server.plugins.unload("echo_service", "localhost")
    assert not server.server.serves("echo.localhost")
    reply = alice.request(iq(to="echo.localhost"))
    assert error_condition(reply) == "remote-server-not-found"  # no federation in this server


def test_a_plugin_cannot_take_a_served_domain(make_xmpp):
    server = make_xmpp(enabled=[], plugins=[EchoService], options={"echo_service": {"domain": "localhost"}})
    with pytest.raises(PluginError, match="already served"):
        server.server.plugins.load("echo_service", "localhost")
    assert server.server.serves("localhost") and "localhost" not in server.server.routes


def test_options_checked_together_are_a_config_error(make_xmpp):
    with pytest.raises(ConfigError) as info:
        make_xmpp(enabled=["echo_service"], plugins=[EchoService], options={"echo_service": {"low": 3}})
    assert "[plugins.echo_service]" in str(info.value) and "low (3) exceeds high (2)" in str(info.value)
