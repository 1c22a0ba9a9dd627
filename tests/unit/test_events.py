"""EventBus (xmppd.events): ordering by priority, propagation, async chaining and failures."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred, succeed

from xmppd.events import EventBus, HandlerFailure


def recorder(calls: list, name: str, result=None):
    def handler(event):
        calls.append((name, event))
        return result

    return handler


def test_fire_without_handlers_returns_none():
    bus = EventBus()
    assert bus.fire("nothing", object()) is None
    assert not bus.has_handlers("nothing")
    assert bus.handlers("nothing") == []


def test_handlers_run_in_priority_order_highest_first():
    bus = EventBus()
    calls: list = []
    bus.hook("e", recorder(calls, "low"), priority=-5)
    bus.hook("e", recorder(calls, "high"), priority=10)
    bus.hook("e", recorder(calls, "mid"), priority=0)
    bus.hook("e", recorder(calls, "float"), priority=0.5)
    assert bus.fire("e", "data") is None
    assert [name for name, _ in calls] == ["high", "float", "mid", "low"]
    assert all(event == "data" for _, event in calls)


def test_equal_priorities_keep_insertion_order():
    bus = EventBus()
    calls: list = []
    for name in ("first", "second", "third"):
        bus.hook("e", recorder(calls, name), priority=1)
    bus.hook("e", recorder(calls, "zero-first"))
    bus.hook("e", recorder(calls, "zero-second"))
    bus.fire("e", None)
    assert [name for name, _ in calls] == ["first", "second", "third", "zero-first", "zero-second"]


def test_handlers_introspection_lists_priority_and_owner_in_calling_order():
    bus = EventBus()
    bus.hook("e", lambda e: None, 1, owner="a")
    bus.hook("e", lambda e: None, 5, owner="b")
    bus.hook("e", lambda e: None)
    assert bus.handlers("e") == [(5, "b"), (1, "a"), (0, "core")]
    assert bus.has_handlers("e")


def test_events_are_independent_by_name():
    bus = EventBus()
    calls: list = []
    bus.hook("message/bare", recorder(calls, "bare"))
    bus.hook("message/full", recorder(calls, "full"))
    bus.fire("message/full", 1)
    assert [name for name, _ in calls] == ["full"]


def test_first_non_none_result_stops_propagation():
    bus = EventBus()
    calls: list = []
    bus.hook("e", recorder(calls, "a"), priority=3)
    bus.hook("e", recorder(calls, "b", "stop"), priority=2)
    bus.hook("e", recorder(calls, "c", "never"), priority=1)
    assert bus.fire("e", None) == "stop"
    assert [name for name, _ in calls] == ["a", "b"]


@pytest.mark.parametrize("falsy", [False, 0, "", []])
def test_falsy_non_none_results_also_stop(falsy):
    bus = EventBus()
    calls: list = []
    bus.hook("e", recorder(calls, "a", falsy), priority=1)
    bus.hook("e", recorder(calls, "b", "later"))
    assert bus.fire("e", None) == falsy
    assert [name for name, _ in calls] == ["a"]


def test_unhook_removes_only_that_handler():
    bus = EventBus()
    calls: list = []
    unhook_a = bus.hook("e", recorder(calls, "a"))
    bus.hook("e", recorder(calls, "b"))
    unhook_a()
    bus.fire("e", None)
    assert [name for name, _ in calls] == ["b"]
    unhook_a()  # a second call is harmless
    assert bus.handlers("e") == [(0, "core")]


def test_unhook_last_handler_forgets_the_event():
    bus = EventBus()
    unhook = bus.hook("e", lambda e: "x")
    unhook()
    assert not bus.has_handlers("e")
    assert bus.fire("e", None) is None


def test_same_function_hooked_twice_is_called_twice_and_unhooked_separately():
    bus = EventBus()
    calls: list = []
    handler = recorder(calls, "h")
    unhook_one = bus.hook("e", handler)
    bus.hook("e", handler)
    bus.fire("e", None)
    assert len(calls) == 2
    unhook_one()
    bus.fire("e", None)
    assert len(calls) == 3


def test_hooking_during_fire_does_not_affect_the_running_dispatch():
    bus = EventBus()
    calls: list = []

    def adder(event):
        calls.append("adder")
        bus.hook("e", recorder(calls, "added"), priority=-1)

    bus.hook("e", adder)
    bus.fire("e", None)
    assert calls == ["adder"]
    bus.fire("e", None)
    assert calls[1] == "adder" and ("added", None) in calls


def test_deferred_result_chains_to_next_handler_when_it_fires_none():
    bus = EventBus()
    calls: list = []
    pending: Deferred = Deferred()

    def slow(event):
        calls.append("slow")
        return pending

    bus.hook("e", slow, priority=2)
    bus.hook("e", recorder(calls, "next", "answer"), priority=1)
    result = bus.fire("e", None)
    assert isinstance(result, Deferred)
    assert calls == ["slow"]  # the next handler waits for the Deferred
    got: list = []
    result.addCallback(got.append)
    pending.callback(None)
    assert calls == ["slow", ("next", None)]
    assert got == ["answer"]


def test_deferred_result_with_a_value_stops():
    bus = EventBus()
    calls: list = []
    pending: Deferred = Deferred()
    bus.hook("e", lambda e: pending, priority=2)
    bus.hook("e", recorder(calls, "next", "other"))
    got: list = []
    bus.fire("e", None).addCallback(got.append)
    pending.callback("mine")
    assert got == ["mine"]
    assert calls == []


def test_already_fired_deferred_works_too():
    bus = EventBus()
    bus.hook("e", lambda e: succeed(None), priority=1)
    bus.hook("e", lambda e: "sync")
    got: list = []
    bus.fire("e", None).addCallback(got.append)
    assert got == ["sync"]


def test_coroutine_handlers_are_awaited():
    bus = EventBus()
    calls: list = []
    gate: Deferred = Deferred()

    async def first(event):
        calls.append("first")
        await gate
        return None

    async def second(event):
        calls.append("second")
        return event * 2

    bus.hook("e", first, priority=1)
    bus.hook("e", second)
    got: list = []
    bus.fire("e", 21).addCallback(got.append)
    assert calls == ["first"] and got == []
    gate.callback(None)
    assert calls == ["first", "second"]
    assert got == [42]


def test_async_chain_that_ends_with_none_fires_none():
    bus = EventBus()

    async def nothing(event):
        return None

    bus.hook("e", nothing)
    bus.hook("e", lambda e: succeed(None))
    got: list = []
    bus.fire("e", None).addCallback(got.append)
    assert got == [None]


def test_exception_stops_propagation_and_names_the_owner(logged):
    bus = EventBus()
    calls: list = []

    def broken(event):
        raise ValueError("boom")

    bus.hook("e", recorder(calls, "before"), priority=2)
    bus.hook("e", broken, priority=1, owner="myplugin")
    bus.hook("e", recorder(calls, "after", "x"))
    result = bus.fire("e", None)
    assert isinstance(result, HandlerFailure)
    assert result.owner == "myplugin"
    assert result.failure.check(ValueError)
    assert [name for name, _ in calls] == ["before"]
    failures = [e for e in logged if e.get("log_failure") is not None and e.get("owner") == "myplugin"]
    assert failures and failures[0]["event_name"] == "e"
    # the bus keeps working: the next fire runs the handlers again
    calls.clear()
    assert isinstance(bus.fire("e", None), HandlerFailure)
    assert [name for name, _ in calls] == ["before"]


def test_failing_deferred_becomes_handler_failure(logged):
    bus = EventBus()
    pending: Deferred = Deferred()
    calls: list = []
    bus.hook("e", lambda e: pending, priority=1, owner="slowpoke")
    bus.hook("e", recorder(calls, "after", "x"))
    got: list = []
    bus.fire("e", None).addCallback(got.append)
    pending.errback(RuntimeError("late"))
    assert len(got) == 1 and isinstance(got[0], HandlerFailure)
    assert got[0].owner == "slowpoke" and got[0].failure.check(RuntimeError)
    assert calls == []
    assert any(e.get("owner") == "slowpoke" for e in logged)


def test_raising_coroutine_becomes_handler_failure(logged):
    bus = EventBus()

    async def broken(event):
        raise KeyError("nope")

    bus.hook("e", broken, owner="coro")
    result = bus.fire("e", None)
    got: list = []
    if isinstance(result, Deferred):
        result.addCallback(got.append)
    else:
        got.append(result)
    assert isinstance(got[0], HandlerFailure) and got[0].owner == "coro"
    assert got[0].failure.check(KeyError)


def test_later_handler_failure_after_async_none():
    bus = EventBus()
    pending: Deferred = Deferred()

    def broken(event):
        raise ValueError

    bus.hook("e", lambda e: pending, priority=1, owner="a")
    bus.hook("e", broken, owner="b")
    got: list = []
    bus.fire("e", None).addCallback(got.append)
    pending.callback(None)
    assert isinstance(got[0], HandlerFailure) and got[0].owner == "b"
