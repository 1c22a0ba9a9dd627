"""The storage interface the core and plugins see: three shapes of data, as Prosody's storage API has them.

* **keyval**: per (host, store, user) one JSON-serialisable document (an account, a roster, a vCard);
* **map**: per (host, store, user) many keys, each with a JSON-serialisable value (one key read or written
  without the others: a private XML namespace, a room's affiliation);
* **archive**: per (host, store, user) an append-only list of items (a serialised stanza, the time, the
  JID it was exchanged with), queried by time range and JID and paged with XEP-0059 result set
  management, and deleted by age (offline messages, MUC history, message archives).

``store`` names the owner's collection ("accounts", or a plugin's own name). Every method returns a
Deferred; no backend touches a database on the reactor thread. The same contract tests
(tests/unit/test_storage_contract.py) run against every backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.defer import Deferred


class StorageError(Exception):
    """A storage backend failed; the operation did not happen."""


class SchemaError(StorageError):
    """The database's schema is newer than this xmppd understands, or cannot be migrated."""


@dataclass(frozen=True)
class ArchiveItem:
    id: str  # opaque, unique within the archive, increasing with insertion order
    when: float  # seconds since the epoch
    with_: str | None  # the JID the item was exchanged with, as given to append
    value: str  # the item itself, usually a serialised stanza


@dataclass(frozen=True)
class ArchiveQuery:
    """Which items to return. Every given filter applies. ``with_`` matches the stored JID exactly, or a
    bare JID matches every full JID of it (XEP-0313 s4.1.1). Paging (XEP-0059): ``after`` / ``before``
    are item ids; ``limit`` items are returned from the start of the range, or from its end when
    ``before`` is given or ``reverse`` is set (the newest first in the range, returned oldest first)."""

    start: float | None = None
    end: float | None = None
    with_: str | None = None
    after: str | None = None
    before: str | None = None
    limit: int | None = None
    reverse: bool = False


@dataclass
class ArchivePage:
    items: list[ArchiveItem] = field(default_factory=list)  # oldest first
    complete: bool = True  # no more items in the range beyond this page (in the paging direction)
    count: int = 0  # items matching the filters, ignoring paging (the RSM <count/>)


class Storage(Protocol):
    """What every backend implements. ``set``/``map_set`` with ``None`` delete."""

    def start(self) -> Deferred[None]:
        """Open the backend: create or migrate the schema (SchemaError if it is newer than the code)."""

    def stop(self) -> Deferred[None]:
        """Finish every operation already asked for, then close."""

    # keyval
    def get(self, host: str, store: str, user: str) -> Deferred[Any | None]:
        """The document, or None."""

    def set(self, host: str, store: str, user: str, value: Any | None) -> Deferred[None]:
        """Replace the document (None removes it)."""

    def users(self, host: str, store: str) -> Deferred[list[str]]:
        """The users that have a document in this keyval store, sorted."""

    # map
    def map_get(self, host: str, store: str, user: str, key: str) -> Deferred[Any | None]:
        """One key's value, or None."""

    def map_set(self, host: str, store: str, user: str, key: str, value: Any | None) -> Deferred[None]:
        """Replace one key's value (None removes the key)."""

    def map_items(self, host: str, store: str, user: str) -> Deferred[dict[str, Any]]:
        """Every key of the user in this map store, with its value."""

    # archive
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
        """Append an item; its id. With ``keep``, only the newest ``keep`` items of the user stay."""

    def archive_query(self, host: str, store: str, user: str, query: ArchiveQuery) -> Deferred[ArchivePage]:
        """The items matching ``query``, oldest first."""

    def archive_delete(
        self,
        host: str,
        store: str,
        user: str | None,
        *,
        before: float | None = None,
        ids: list[str] | None = None,
    ) -> Deferred[int]:
        """Delete the user's items (every user's with None) older than ``before``, or those in ``ids``,
        or all of them; how many were deleted."""

    def archive_users(self, host: str, store: str) -> Deferred[list[str]]:
        """The users that have items in this archive store, sorted."""

    # every shape
    def purge_user(self, host: str, user: str) -> Deferred[None]:
        """Remove everything of this user in every store of every shape (account deletion)."""


#: The name the rest of the code used before maps and archives existed.
KeyValueStorage = Storage
