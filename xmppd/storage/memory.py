"""In-memory storage, for tests and throwaway servers. Nothing survives a restart."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, succeed


class MemoryStorage:
    """KeyValueStorage in a dict. Values are copied through JSON so callers never share mutable state,
    and a value the SQL backends would refuse is refused here too."""

    def __init__(self) -> None:
        self._data: dict[tuple[str, str, str], str] = {}

    def start(self) -> Deferred[None]:
        return succeed(None)

    def stop(self) -> Deferred[None]:
        return succeed(None)

    def get(self, host: str, store: str, user: str) -> Deferred[Any | None]:
        raw = self._data.get((host, store, user))
        return succeed(None if raw is None else json.loads(raw))

    def set(self, host: str, store: str, user: str, value: Any | None) -> Deferred[None]:
        if value is None:
            self._data.pop((host, store, user), None)
        else:
            self._data[(host, store, user)] = json.dumps(value)
        return succeed(None)

    def users(self, host: str, store: str) -> Deferred[list[str]]:
        return succeed(sorted(u for (h, s, u) in self._data if h == host and s == store))

    def purge_user(self, host: str, user: str) -> Deferred[None]:
        for key in [k for k in self._data if k[0] == host and k[2] == user]:
            del self._data[key]
        return succeed(None)
