"""Storage latency, measured around whichever backend the server uses (``XMPPServer`` wraps it).

:class:`TimedStorage` forwards every call of the storage interface (xmppd.storage.base) to its backend.
While ``observer`` is set (the ``metrics`` plugin sets it), each call reports the wall-clock time from the
call until its Deferred fires as ``observer(shape, operation, seconds, ok)``: shape is "keyval", "map",
"archive" or "user" (purge_user), operation the method's verb ("get", "set", "users", "items", "append",
"query", "delete", "purge"), ``ok`` False when the call failed. Without an observer (the default) a call
costs one attribute test more than the backend's own, and nothing is timed.

Anything else (``start``, ``stop``, a backend's own attributes) is the backend's, through ``__getattr__``;
the backends themselves know nothing of this.
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from xmppd.log import logger

log = logger("xmppd.storage")

#: observer(shape, operation, seconds, ok)
Observer = Callable[[str, str, float, bool], None]

#: Every timed call: (shape, operation) pairs, as reported.
OPERATIONS = (
    ("keyval", "get"),
    ("keyval", "set"),
    ("keyval", "users"),
    ("map", "get"),
    ("map", "set"),
    ("map", "items"),
    ("archive", "append"),
    ("archive", "query"),
    ("archive", "delete"),
    ("archive", "users"),
    ("user", "purge"),
)


class TimedStorage:
    """A storage backend with optional latency reporting (see the module docstring)."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.observer: Observer | None = None

    def __getattr__(self, name: str) -> Any:  # only for what is not defined here
        return getattr(self.backend, name)

    def __repr__(self) -> str:
        return f"<TimedStorage {self.backend!r}>"

    def _timed(self, shape: str, operation: str, fn: Callable[..., Deferred], *args: Any, **kw: Any) -> Any:
        observer = self.observer
        if observer is None:
            return fn(*args, **kw)
        start = perf_counter()
        d = fn(*args, **kw)
        d.addBoth(_report, observer, shape, operation, start)
        return d

    # keyval
    def get(self, host: str, store: str, user: str) -> Deferred[Any | None]:
        return self._timed("keyval", "get", self.backend.get, host, store, user)

    def set(self, host: str, store: str, user: str, value: Any | None) -> Deferred[None]:
        return self._timed("keyval", "set", self.backend.set, host, store, user, value)

    def users(self, host: str, store: str) -> Deferred[list[str]]:
        return self._timed("keyval", "users", self.backend.users, host, store)

    # map
    def map_get(self, host: str, store: str, user: str, key: str) -> Deferred[Any | None]:
        return self._timed("map", "get", self.backend.map_get, host, store, user, key)

    def map_set(self, host: str, store: str, user: str, key: str, value: Any | None) -> Deferred[None]:
        return self._timed("map", "set", self.backend.map_set, host, store, user, key, value)

    def map_items(self, host: str, store: str, user: str) -> Deferred[dict[str, Any]]:
        return self._timed("map", "items", self.backend.map_items, host, store, user)

    # archive
    def archive_append(self, host: str, store: str, user: str, value: str, **kw: Any) -> Deferred[str]:
        return self._timed("archive", "append", self.backend.archive_append, host, store, user, value, **kw)

    def archive_query(self, host: str, store: str, user: str, query: Any) -> Deferred[Any]:
        return self._timed("archive", "query", self.backend.archive_query, host, store, user, query)

    def archive_delete(self, host: str, store: str, user: str | None, **kw: Any) -> Deferred[int]:
        return self._timed("archive", "delete", self.backend.archive_delete, host, store, user, **kw)

    def archive_users(self, host: str, store: str) -> Deferred[list[str]]:
        return self._timed("archive", "users", self.backend.archive_users, host, store)

    # every shape
    def purge_user(self, host: str, user: str) -> Deferred[None]:
        return self._timed("user", "purge", self.backend.purge_user, host, user)


def _report(result: Any, observer: Observer, shape: str, operation: str, start: float) -> Any:
    try:
        observer(shape, operation, perf_counter() - start, not isinstance(result, Failure))
    except Exception:
        log.failure("storage observer failed")
    return result
