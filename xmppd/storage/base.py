"""The storage interface the core and plugins see.

The shape is Prosody's keyval store: per (host, store, user) one JSON-serialisable document. ``store`` names
the owner's collection ("accounts", or a plugin's own name). Values must be JSON-serialisable.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.defer import Deferred


class StorageError(Exception):
    """A storage backend failed; the operation did not happen."""


class KeyValueStorage(Protocol):
    """Per-user documents. ``set(..., None)`` deletes. All methods return Deferreds."""

    def start(self) -> Deferred[None]:
        """Open the backend (create the schema if needed)."""

    def stop(self) -> Deferred[None]:
        """Flush and close."""

    def get(self, host: str, store: str, user: str) -> Deferred[Any | None]:
        """The document, or None."""

    def set(self, host: str, store: str, user: str, value: Any | None) -> Deferred[None]:
        """Replace the document (None removes it)."""

    def users(self, host: str, store: str) -> Deferred[list[str]]:
        """The users that have a document in this store, sorted."""

    def purge_user(self, host: str, user: str) -> Deferred[None]:
        """Remove every document of this user in every store (account deletion)."""
