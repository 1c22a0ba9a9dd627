"""In-memory storage, for tests and throwaway servers. Nothing survives a restart."""

from __future__ import annotations

import itertools
import json
from typing import Any

from twisted.internet.defer import Deferred, succeed

from xmppd.storage.base import ArchiveItem, ArchivePage, ArchiveQuery
from xmppd.storage.paging import page_of


class MemoryStorage:
    """Storage in dicts. Values are copied through JSON so callers never share mutable state, and a value
    the SQL backends would refuse is refused here too."""

    def __init__(self) -> None:
        self._data: dict[tuple[str, str, str], str] = {}
        self._maps: dict[tuple[str, str, str], dict[str, str]] = {}
        self._archives: dict[tuple[str, str, str], list[ArchiveItem]] = {}
        self._ids = itertools.count(1)

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
        for table in (self._data, self._maps, self._archives):
            for key in [k for k in table if k[0] == host and k[2] == user]:
                del table[key]
        return succeed(None)

    # -- map ---------------------------------------------------------------------------------------------

    def map_get(self, host: str, store: str, user: str, key: str) -> Deferred[Any | None]:
        raw = self._maps.get((host, store, user), {}).get(key)
        return succeed(None if raw is None else json.loads(raw))

    def map_set(self, host: str, store: str, user: str, key: str, value: Any | None) -> Deferred[None]:
        if value is None:
            keys = self._maps.get((host, store, user), {})
            keys.pop(key, None)
            if not keys:
                self._maps.pop((host, store, user), None)
        else:
            self._maps.setdefault((host, store, user), {})[key] = json.dumps(value)
        return succeed(None)

    def map_items(self, host: str, store: str, user: str) -> Deferred[dict[str, Any]]:
        return succeed({k: json.loads(v) for k, v in self._maps.get((host, store, user), {}).items()})

    # -- archive -----------------------------------------------------------------------------------------

    def archive_append(
        self,
        host: str,
        store: str,
        user: str,
        value: str,
        *,
        when: float,
        with_: str | None = None,
        keep: int | None = None,
    ) -> Deferred[str]:
        if not isinstance(value, str):
            raise TypeError("archive items are text")
        if "\x00" in value:
            raise ValueError("archive items cannot contain NUL characters")  # PostgreSQL's text cannot
        if keep is not None and keep < 0:
            raise ValueError(f"keep must not be negative, got {keep}")
        items = self._archives.setdefault((host, store, user), [])
        item = ArchiveItem(f"{next(self._ids)}", float(when), with_, value)
        items.append(item)
        if keep is not None and len(items) > keep:
            del items[: len(items) - keep]
        return succeed(item.id)

    def archive_query(self, host: str, store: str, user: str, query: ArchiveQuery) -> Deferred[ArchivePage]:
        return succeed(page_of(self._archives.get((host, store, user), []), query))

    def archive_delete(
        self,
        host: str,
        store: str,
        user: str | None,
        *,
        before: float | None = None,
        ids: list[str] | None = None,
    ) -> Deferred[int]:
        deleted = 0
        for key in [k for k in self._archives if k[:2] == (host, store) and user in (None, k[2])]:
            items = self._archives[key]
            kept = [
                i for i in items if not ((before is None or i.when < before) and (ids is None or i.id in ids))
            ]
            deleted += len(items) - len(kept)
            if kept:
                self._archives[key] = kept
            else:
                del self._archives[key]
        return succeed(deleted)

    def archive_users(self, host: str, store: str) -> Deferred[list[str]]:
        return succeed(sorted(u for (h, s, u) in self._archives if (h, s) == (host, store)))
