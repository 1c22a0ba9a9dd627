"""The document cache's bounds and rules (xmppd.storage.cache); its coherence with a real database is a
storage contract check (tests/unit/test_storage_contract.py, keyval_document_cache_...)."""

from __future__ import annotations

from xmppd.storage.cache import ENTRY_OVERHEAD, DocumentCache


def key(user: str) -> tuple[str, str, str]:
    return ("localhost", "roster", user)


def test_a_put_is_found_and_counts_against_the_budget() -> None:
    cache = DocumentCache(100_000)
    cache.put(key("alice"), '{"a": 1}', cache.generation)
    assert cache.get(key("alice")) == '{"a": 1}'
    assert cache.get(key("bob")) is None
    assert (cache.hits, cache.misses) == (1, 1)
    assert cache.size == len('{"a": 1}') + ENTRY_OVERHEAD


def test_the_least_recently_used_go_first_and_the_budget_holds() -> None:
    text = "x" * 800
    cost = len(text) + ENTRY_OVERHEAD
    cache = DocumentCache(cost * 16)  # room for 16; a document of one sixteenth is still cached
    for n in range(16):
        cache.put(key(f"u{n}"), text, cache.generation)
    cache.get(key("u0"))  # u0 is now the most recently used
    cache.put(key("new"), text, cache.generation)
    assert cache.get(key("u1")) is None  # the oldest went
    assert cache.get(key("u0")) == text and cache.get(key("new")) == text
    assert len(cache) == 16 and cache.size <= cache.max_bytes
    for n in range(1000):
        cache.put(key(f"v{n}"), text, cache.generation)
    assert len(cache) == 16 and cache.size == 16 * cost


def test_a_document_over_a_sixteenth_of_the_budget_is_not_cached() -> None:
    cache = DocumentCache(16_000)
    cache.put(key("alice"), "x" * 1000, cache.generation)
    assert cache.get(key("alice")) is None
    assert len(cache) == 0 and cache.size == 0


def test_a_zero_budget_caches_nothing() -> None:
    cache = DocumentCache(0)
    cache.put(key("alice"), "{}", cache.generation)
    assert cache.get(key("alice")) is None


def test_a_write_asked_for_drops_the_document_and_stale_fills_are_refused() -> None:
    cache = DocumentCache(100_000)
    cache.put(key("alice"), '"old"', cache.generation)
    read_started = cache.generation  # a read goes to the database...
    generation = cache.writing(key("alice"))  # ...and a write is asked for meanwhile
    assert cache.get(key("alice")) is None
    cache.put(key("alice"), '"old"', read_started)  # the read's answer may predate the write: refused
    assert cache.get(key("alice")) is None
    later = cache.writing(key("alice"))  # a second write before the first committed
    cache.put(key("alice"), '"first"', generation)  # the first one's commit: refused, it is not the last
    assert cache.get(key("alice")) is None
    cache.put(key("alice"), '"second"', later)
    assert cache.get(key("alice")) == '"second"'


def test_deleting_a_user_drops_all_of_its_documents_and_only_those() -> None:
    cache = DocumentCache(100_000)
    for store in ("roster", "accounts", "vcard"):
        cache.put(("localhost", store, "alice"), "{}", cache.generation)
    cache.put(("localhost", "roster", "bob"), "{}", cache.generation)
    cache.put(("example.org", "roster", "alice"), "{}", cache.generation)
    cache.writing_user("localhost", "alice")
    assert len(cache) == 2 and cache.size == 2 * (2 + ENTRY_OVERHEAD)
    assert cache.get(("localhost", "roster", "bob")) == "{}"
    cache.clear()
    assert len(cache) == 0 and cache.size == 0
