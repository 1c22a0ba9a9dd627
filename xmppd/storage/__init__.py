"""Storage: per-user documents kept by the core and by plugins.

Every call returns a Deferred; nothing touches a database on the reactor thread. ``open_storage`` picks the
backend named in ``[storage] backend``; ``storage_from_config`` reads the whole ``[storage]`` section.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xmppd.storage.base import KeyValueStorage, SchemaError, StorageError
from xmppd.storage.cache import MIB, DocumentCache

__all__ = ["KeyValueStorage", "SchemaError", "StorageError", "open_storage", "storage_from_config"]


def open_storage(backend: str, data_dir: Path, *, dsn: str = "", pool_size: int = 5) -> KeyValueStorage:
    """The storage backend named ``backend`` ("sqlite": one file in data_dir; "postgresql": the database
    at ``dsn`` with ``pool_size`` connections; "memory": for tests)."""
    if backend == "memory":
        from xmppd.storage.memory import MemoryStorage

        return MemoryStorage()
    if backend == "sqlite":
        from xmppd.storage.sqlite import SQLiteStorage

        return SQLiteStorage(data_dir / "xmppd.sqlite")
    if backend == "postgresql":
        if not dsn:
            raise StorageError("the postgresql backend needs a dsn")
        from xmppd.storage.postgresql import PostgreSQLStorage

        return PostgreSQLStorage(dsn, pool_size)
    raise StorageError(f"unknown storage backend {backend!r}")


def storage_from_config(config: Any) -> KeyValueStorage:
    """The storage a configuration's ``[storage]`` section describes."""
    section = config.sections["storage"]
    storage = open_storage(
        section["backend"], config.data_dir, dsn=section["dsn"], pool_size=section["pool_size"]
    )
    if hasattr(storage, "cache"):  # the SQL backends (xmppd.storage.cache)
        storage.cache = DocumentCache(section["cache_mb"] * MIB)
    return storage
