"""Storage: per-user documents kept by the core and by plugins.

Every call returns a Deferred; nothing touches a database on the reactor thread. ``open_storage`` picks the
backend named in ``[storage] backend``.
"""

from __future__ import annotations

from pathlib import Path

from xmppd.storage.base import KeyValueStorage, StorageError

__all__ = ["KeyValueStorage", "StorageError", "open_storage"]


def open_storage(backend: str, data_dir: Path) -> KeyValueStorage:
    """The storage backend named ``backend`` ("sqlite": one file in data_dir; "memory": for tests)."""
    if backend == "memory":
        from xmppd.storage.memory import MemoryStorage

        return MemoryStorage()
    if backend == "sqlite":
        from xmppd.storage.sqlite import SQLiteStorage

        return SQLiteStorage(data_dir / "xmppd.sqlite")
    raise StorageError(f"unknown storage backend {backend!r}")
