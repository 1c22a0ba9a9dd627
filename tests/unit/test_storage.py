"""The storage contract (xmppd.storage.base.KeyValueStorage), checked on MemoryStorage and SQLiteStorage.

Each check is an ``async`` function taking a ``Backend`` that opens started storages. MemoryStorage
answers with already-fired Deferreds, so its checks run right here. SQLiteStorage runs its queries on an
adbapi thread pool bound to the global reactor, which must run and cannot be restarted; so that it never
gets in the way of other tests, every SQLite check runs in one subprocess (``python -c`` with
``twisted.internet.task.react``) that imports this file and reports each check's traceback as JSON.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.python.failure import Failure

from xmppd.storage import StorageError, open_storage
from xmppd.storage.memory import MemoryStorage
from xmppd.storage.sqlite import SCHEMA_VERSION, SQLiteStorage


class Backend:
    """Opens started storages of one kind, on the same data for SQLite (``open`` twice = reopen)."""

    def __init__(self, kind: str, directory: Path) -> None:
        self.kind = kind
        self.directory = directory
        self.path = directory / "sub" / "dir" / "xmppd.sqlite"
        self.opened: list[Any] = []

    async def open(self) -> Any:
        storage = MemoryStorage() if self.kind == "memory" else SQLiteStorage(self.path)
        await storage.start()
        self.opened.append(storage)
        return storage

    async def close(self) -> None:
        for storage in self.opened:
            await storage.stop()
        self.opened.clear()


Check = Callable[[Backend], Awaitable[None]]
CONTRACT: dict[str, Check] = {}
SQLITE_ONLY: dict[str, Check] = {}


def contract(fn: Check) -> Check:
    CONTRACT[fn.__name__] = fn
    return fn


def sqlite_only(fn: Check) -> Check:
    SQLITE_ONLY[fn.__name__] = fn
    return fn


# -- the contract ----------------------------------------------------------------------------------------


@contract
async def get_missing_is_none(backend: Backend) -> None:
    storage = await backend.open()
    assert await storage.get("localhost", "notes", "alice") is None
    assert await storage.users("localhost", "notes") == []


@contract
async def set_then_get(backend: Backend) -> None:
    storage = await backend.open()
    assert await storage.set("localhost", "notes", "alice", {"text": "hi"}) is None
    assert await storage.get("localhost", "notes", "alice") == {"text": "hi"}
    await storage.set("localhost", "notes", "alice", {"text": "replaced"})
    assert await storage.get("localhost", "notes", "alice") == {"text": "replaced"}


@contract
async def set_none_deletes(backend: Backend) -> None:
    storage = await backend.open()
    await storage.set("localhost", "notes", "alice", [1])
    await storage.set("localhost", "notes", "alice", None)
    assert await storage.get("localhost", "notes", "alice") is None
    assert await storage.users("localhost", "notes") == []
    await storage.set("localhost", "notes", "nobody", None)  # deleting nothing is fine


@contract
async def keys_are_separate(backend: Backend) -> None:
    storage = await backend.open()
    keys = [
        ("a.example", "notes", "alice"),
        ("b.example", "notes", "alice"),
        ("a.example", "drafts", "alice"),
        ("a.example", "notes", "bob"),
    ]
    for index, key in enumerate(keys):
        await storage.set(*key, {"n": index})
    for index, key in enumerate(keys):
        assert await storage.get(*key) == {"n": index}, key
    await storage.set("a.example", "notes", "alice", None)
    assert await storage.get("b.example", "notes", "alice") == {"n": 1}
    assert await storage.get("a.example", "drafts", "alice") == {"n": 2}


@contract
async def empty_and_false_values_are_stored(backend: Backend) -> None:
    storage = await backend.open()
    for user, value in [("a", {}), ("b", []), ("c", ""), ("d", 0), ("e", False)]:
        await storage.set("localhost", "s", user, value)
        assert await storage.get("localhost", "s", user) == value, user
        assert type(await storage.get("localhost", "s", user)) is type(value)
    assert await storage.users("localhost", "s") == ["a", "b", "c", "d", "e"]


@contract
async def users_sorted_per_host_and_store(backend: Backend) -> None:
    storage = await backend.open()
    for user in ["mallory", "alice", "zoe", "bob", "Émile", "carol"]:
        await storage.set("localhost", "notes", user, {"u": user})
    await storage.set("localhost", "other", "dave", 1)
    await storage.set("elsewhere", "notes", "erin", 1)
    assert await storage.users("localhost", "notes") == sorted(
        ["mallory", "alice", "zoe", "bob", "Émile", "carol"]
    )
    await storage.set("localhost", "notes", "bob", None)
    assert await storage.users("localhost", "notes") == ["alice", "carol", "mallory", "zoe", "Émile"]
    assert await storage.users("localhost", "other") == ["dave"]
    assert await storage.users("elsewhere", "notes") == ["erin"]
    assert await storage.users("nowhere", "notes") == []


@contract
async def purge_user_removes_every_store_on_that_host(backend: Backend) -> None:
    storage = await backend.open()
    for store in ("accounts", "notes", "roster"):
        await storage.set("localhost", store, "alice", {"store": store})
        await storage.set("localhost", store, "bob", {"store": store})
    await storage.set("other.example", "notes", "alice", {"keep": True})
    assert await storage.purge_user("localhost", "alice") is None
    for store in ("accounts", "notes", "roster"):
        assert await storage.get("localhost", store, "alice") is None
        assert await storage.get("localhost", store, "bob") == {"store": store}
        assert await storage.users("localhost", store) == ["bob"]
    assert await storage.get("other.example", "notes", "alice") == {"keep": True}
    await storage.purge_user("localhost", "nobody")  # purging nothing is fine


@contract
async def json_values_round_trip(backend: Backend) -> None:
    storage = await backend.open()
    value = {
        "text": "héllo ☃ 😀 \"quotes\" 'single' <xml> & \x00 nul",
        "int": 2**53,
        "negative": -7,
        "float": 0.1,
        "bool": True,
        "none": None,
        "list": [1, "two", [3, {"four": 4}], None, False],
        "nested": {"a": {"b": {"c": []}}},
        "": "empty key",
    }
    await storage.set("localhost", "docs", "alice", value)
    assert await storage.get("localhost", "docs", "alice") == value
    for user, scalar in [("s", "just a string"), ("n", 42), ("f", 1.5), ("l", [1, 2, 3])]:
        await storage.set("localhost", "docs", user, scalar)
        assert await storage.get("localhost", "docs", user) == scalar


@contract
async def tuples_come_back_as_lists(backend: Backend) -> None:
    storage = await backend.open()
    await storage.set("localhost", "docs", "alice", {"pair": (1, 2)})
    assert await storage.get("localhost", "docs", "alice") == {"pair": [1, 2]}


@contract
async def values_are_copies(backend: Backend) -> None:
    storage = await backend.open()
    value = {"items": [1, 2]}
    await storage.set("localhost", "docs", "alice", value)
    value["items"].append(3)  # the caller changing its object afterwards changes nothing stored
    got = await storage.get("localhost", "docs", "alice")
    assert got == {"items": [1, 2]}
    got["items"].append(4)  # nor does changing what get returned
    assert await storage.get("localhost", "docs", "alice") == {"items": [1, 2]}


@contract
async def non_json_values_are_refused(backend: Backend) -> None:
    storage = await backend.open()
    for bad in (object(), {"set": {1, 2}}, b"bytes", {1: {2: object()}}):
        try:
            await storage.set("localhost", "docs", "alice", bad)
        except (TypeError, ValueError):
            pass
        else:
            raise AssertionError(f"{bad!r} was accepted")
    assert await storage.get("localhost", "docs", "alice") is None


@contract
async def unicode_and_odd_keys(backend: Backend) -> None:
    storage = await backend.open()
    keys = [("ëxample.org", "störe", "ünïcode"), ("localhost", "a'b", 'quote"d'), ("localhost", "s", "a%_b")]
    for key in keys:
        await storage.set(*key, {"key": list(key)})
    for key in keys:
        assert await storage.get(*key) == {"key": list(key)}
    assert await storage.users("localhost", "s") == ["a%_b"]
    assert await storage.get("localhost", "s", "aX_b") is None  # no LIKE-style matching


@contract
async def many_writes_without_waiting_keep_their_order(backend: Backend) -> None:
    storage = await backend.open()
    writes = [storage.set("localhost", "counter", "alice", {"n": n}) for n in range(50)]
    writes += [storage.set("localhost", "counter", f"user{n:02}", n) for n in range(20)]
    await gatherResults(writes)
    assert await storage.get("localhost", "counter", "alice") == {"n": 49}
    assert len(await storage.users("localhost", "counter")) == 21


@contract
async def large_value(backend: Backend) -> None:
    storage = await backend.open()
    value = {"blob": "x" * 1_000_000, "list": list(range(10000))}
    await storage.set("localhost", "big", "alice", value)
    assert await storage.get("localhost", "big", "alice") == value


# -- SQLite only -----------------------------------------------------------------------------------------


@sqlite_only
async def persists_across_reopen(backend: Backend) -> None:
    storage = await backend.open()
    await storage.set("localhost", "notes", "alice", {"text": "kept"})
    await storage.set("localhost", "notes", "bob", {"text": "deleted"})
    await storage.set("localhost", "notes", "bob", None)
    await backend.close()
    assert backend.path.exists()
    storage = await backend.open()
    assert await storage.get("localhost", "notes", "alice") == {"text": "kept"}
    assert await storage.get("localhost", "notes", "bob") is None
    assert await storage.users("localhost", "notes") == ["alice"]


@sqlite_only
async def creates_its_directory_and_records_the_schema_version(backend: Backend) -> None:
    await backend.open()
    await backend.close()
    with sqlite3.connect(backend.path) as conn:
        rows = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()
    assert rows == [(str(SCHEMA_VERSION),)]


@sqlite_only
async def newer_schema_version_is_refused(backend: Backend) -> None:
    await backend.open()
    await backend.close()
    with sqlite3.connect(backend.path) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    storage = SQLiteStorage(backend.path)
    try:
        await storage.start()
    except StorageError as e:
        assert "schema version" in str(e) and "upgrade" in str(e), str(e)
    else:
        raise AssertionError("a newer schema was accepted")
    finally:
        await storage.stop()


@sqlite_only
async def same_schema_version_is_accepted_again(backend: Backend) -> None:
    for _ in range(3):
        storage = await backend.open()
        await storage.set("localhost", "n", "alice", 1)
        await backend.close()


@sqlite_only
async def not_started_is_a_storage_error(backend: Backend) -> None:
    storage = SQLiteStorage(backend.path)
    for call in (
        lambda: storage.get("localhost", "s", "u"),
        lambda: storage.set("localhost", "s", "u", 1),
        lambda: storage.users("localhost", "s"),
        lambda: storage.purge_user("localhost", "u"),
    ):
        try:
            await call()
        except StorageError:
            pass
        else:
            raise AssertionError("an operation worked before start()")


@sqlite_only
async def stop_then_operations_fail(backend: Backend) -> None:
    storage = await backend.open()
    await storage.stop()
    await storage.stop()  # twice is harmless
    try:
        await storage.get("localhost", "s", "u")
    except StorageError:
        pass
    else:
        raise AssertionError("an operation worked after stop()")


@sqlite_only
async def open_storage_picks_sqlite_in_data_dir(backend: Backend) -> None:
    storage = open_storage("sqlite", backend.directory / "data")
    assert isinstance(storage, SQLiteStorage)
    await storage.start()
    try:
        await storage.set("localhost", "s", "u", 1)
        assert (backend.directory / "data" / "xmppd.sqlite").exists()
    finally:
        await storage.stop()


@sqlite_only
async def a_second_connection_sees_committed_writes(backend: Backend) -> None:
    storage = await backend.open()
    await storage.set("localhost", "notes", "alice", {"text": "visible"})
    with sqlite3.connect(backend.path) as conn:  # as xmppdctl would, while the server runs
        rows = conn.execute("SELECT value FROM keyval WHERE user = 'alice'").fetchall()
        conn.execute(
            "INSERT INTO keyval (host, store, user, value) VALUES ('localhost', 'notes', 'bob', '{\"x\": 1}')"
        )
    assert [json.loads(r[0]) for r in rows] == [{"text": "visible"}]
    assert await storage.get("localhost", "notes", "bob") == {"x": 1}


# -- running the checks ----------------------------------------------------------------------------------


def run_now(check: Check, backend: Backend) -> None:
    """Run a check whose Deferreds all fire at once (MemoryStorage); fail if it would have to wait."""

    async def run() -> None:
        try:
            await check(backend)
        finally:
            await backend.close()

    outcome: list[Any] = []
    ensureDeferred(run()).addBoth(outcome.append)
    assert outcome, "the check waited on something that never fired"
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()


@pytest.mark.parametrize("name", list(CONTRACT))
def test_memory_storage(name, tmp_path):
    run_now(CONTRACT[name], Backend("memory", tmp_path))


def test_memory_storage_is_empty_after_restart():
    storage = MemoryStorage()
    storage.set("localhost", "s", "u", 1)
    got: list = []
    MemoryStorage().get("localhost", "s", "u").addCallback(got.append)
    assert got == [None]
    assert isinstance(open_storage("memory", Path("unused")), MemoryStorage)


def test_open_storage_unknown_backend():
    with pytest.raises(StorageError, match="mongo"):
        open_storage("mongo", Path("unused"))


RUNNER = """
import importlib.util, json, sys, tempfile, traceback
from pathlib import Path
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import react

spec = importlib.util.spec_from_file_location("xmppd_storage_contract", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
try:  # pytest's assertion rewriting, for messages that show the compared values
    import ast
    from _pytest.assertion.rewrite import rewrite_asserts
    source = Path(sys.argv[1]).read_bytes()
    tree = ast.parse(source)
    rewrite_asserts(tree, source, sys.argv[1], None)
    exec(compile(tree, sys.argv[1], "exec"), module.__dict__)
except ImportError:
    spec.loader.exec_module(module)

async def main(reactor):
    results = {}
    for name, check in {**module.CONTRACT, **module.SQLITE_ONLY}.items():
        with tempfile.TemporaryDirectory() as directory:
            backend = module.Backend("sqlite", Path(directory))
            try:
                await check(backend)
                results[name] = None
            except BaseException:
                results[name] = traceback.format_exc()
            finally:
                await backend.close()
    sys.stdout.write("RESULTS " + json.dumps(results) + "\\n")

react(lambda reactor: ensureDeferred(main(reactor)))
"""


@pytest.fixture(scope="module")
def sqlite_results() -> dict[str, str | None]:
    """Run every check on SQLiteStorage in a subprocess with a running reactor; name -> traceback|None."""
    with tempfile.TemporaryDirectory() as cwd:
        proc = subprocess.run(
            [sys.executable, "-c", RUNNER, str(Path(__file__).resolve())],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=cwd,
        )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULTS ")]
    if proc.returncode != 0 or not lines:
        pytest.fail(f"the SQLite runner failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return json.loads(lines[-1][len("RESULTS ") :])


@pytest.mark.parametrize("name", [*CONTRACT, *SQLITE_ONLY])
def test_sqlite_storage(name, sqlite_results):
    assert name in sqlite_results, f"{name} did not run"
    if sqlite_results[name] is not None:
        pytest.fail(f"SQLiteStorage failed {name}:\n{sqlite_results[name]}", pytrace=False)
