"""A bounded cache of keyval documents in front of a SQL database (``[storage] cache_mb``).

Every login reads the same few documents (the account's SCRAM credentials, its block list, its roster),
and each read is a trip to the database thread and back: in the login benchmark (bench/RESULTS.md) those
trips were about a quarter of the server's CPU. ejabberd keeps such documents in caches for the same
reason (its ``cache_size`` and ``use_cache`` options); Prosody keeps an online user's roster in memory.

What is cached is the document's JSON text as the database holds it, so every hit decodes a fresh
object that the caller may change freely, and the size of the text is what counts against the budget.
The least recently used documents go first; a document larger than a sixteenth of the budget is never
cached, so one huge vCard cannot empty the cache. That a document is absent is cached too (as
:data:`ABSENT`): most users have no block list or vCard, and each login asks.

Coherence rests on one rule: the server process is the only writer while it runs (``xmppdctl`` sends its
commands through the control socket then, and ``xmppdctl import`` refuses to run beside a server). Within
the process a write first drops the document, and the value it wrote is cached only once it is committed
and only if no other write was asked for meanwhile; a read caches what it found only if no write was
asked for while it ran. So the cache never holds a value older than one the database committed.
"""

from __future__ import annotations

from collections import OrderedDict

Key = tuple[str, str, str]  # (host, store, user)

MIB = 1024 * 1024
#: Cached for a document that does not exist (no JSON text is empty).
ABSENT = ""
ENTRY_OVERHEAD = 200  # bytes counted per entry beyond its text: the key, the dict slot, the str header


class DocumentCache:
    """JSON texts by (host, store, user), least recently used first out, within ``max_bytes``."""

    def __init__(self, max_bytes: int = 0) -> None:
        self.max_bytes = max_bytes
        self._texts: OrderedDict[Key, str] = OrderedDict()
        self._bytes = 0
        #: Counts every write asked for; a read or write may fill the cache only if it did not move.
        self.generation = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._texts)

    @property
    def size(self) -> int:
        """Bytes counted against the budget."""
        return self._bytes

    def get(self, key: Key) -> str | None:
        """The cached text (:data:`ABSENT` for a document known not to exist), or None when not cached."""
        text = self._texts.get(key)
        if text is None:
            self.misses += 1
            return None
        self._texts.move_to_end(key)
        self.hits += 1
        return text

    def put(self, key: Key, text: str, generation: int) -> None:
        """Remember ``text`` for ``key`` if no write was asked for since ``generation`` was read."""
        if generation != self.generation or not self.max_bytes:
            return
        cost = len(text) + ENTRY_OVERHEAD
        if cost > self.max_bytes // 16:
            return
        self._drop(key)
        self._texts[key] = text
        self._bytes += cost
        while self._bytes > self.max_bytes:
            _, oldest = self._texts.popitem(last=False)
            self._bytes -= len(oldest) + ENTRY_OVERHEAD

    def writing(self, key: Key) -> int:
        """A write of ``key`` was asked for: forget it; returns the generation to ``put`` with once the
        write is committed."""
        self.generation += 1
        self._drop(key)
        return self.generation

    def writing_user(self, host: str, user: str) -> None:
        """Every document of one user is about to go (an account deleted)."""
        self.generation += 1
        for key in [k for k in self._texts if k[0] == host and k[2] == user]:
            self._drop(key)

    def clear(self) -> None:
        self.generation += 1
        self._texts.clear()
        self._bytes = 0

    def _drop(self, key: Key) -> None:
        text = self._texts.pop(key, None)
        if text is not None:
            self._bytes -= len(text) + ENTRY_OVERHEAD
