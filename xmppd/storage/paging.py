"""Archive queries over a list of items in insertion order: the filters and XEP-0059 paging of
``ArchiveQuery``, for the memory backend and as the reference the SQL backends' queries must match.
``after`` and ``before`` compare ids, so an id whose item was deleted still marks a place."""

from __future__ import annotations

from collections.abc import Iterable

from xmppd.storage.base import ArchiveItem, ArchivePage, ArchiveQuery


def matches_with(stored: str | None, wanted: str) -> bool:
    """XEP-0313 s4.1.1: a bare JID matches itself and every full JID of it; a full JID matches exactly."""
    if stored is None:
        return False
    return stored == wanted or ("/" not in wanted and stored.startswith(wanted + "/"))


def item_number(item_id: str) -> int | None:
    """Item ids are decimal numbers that increase with insertion (every backend); None for anything else,
    which matches no item."""
    return int(item_id) if item_id.isascii() and item_id.isdigit() else None


def page_of(items: Iterable[ArchiveItem], query: ArchiveQuery) -> ArchivePage:
    """The page ``query`` asks for out of ``items`` (oldest first). ValueError for a negative limit."""
    if query.limit is not None and query.limit < 0:
        raise ValueError(f"limit must not be negative, got {query.limit}")
    chosen = [
        i
        for i in items
        if (query.start is None or i.when >= query.start)
        and (query.end is None or i.when <= query.end)
        and (query.with_ is None or matches_with(i.with_, query.with_))
    ]
    count = len(chosen)
    if query.after is not None:
        after = item_number(query.after)
        chosen = [i for i in chosen if after is not None and int(i.id) > after]
    if query.before is not None:
        before = item_number(query.before)
        chosen = [i for i in chosen if before is not None and int(i.id) < before]
    from_end = query.reverse or query.before is not None
    complete = True
    if query.limit is not None and len(chosen) > query.limit:
        complete = False
        chosen = chosen[len(chosen) - query.limit :] if from_end else chosen[: query.limit]
    return ArchivePage(chosen, complete, count)
