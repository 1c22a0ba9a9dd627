"""Fixtures shared by the whole test suite (xmppd's own fixtures come from xmppd.testing.pytest_plugin)."""

from collections.abc import Iterator

import pytest
from twisted.logger import globalLogPublisher


@pytest.fixture
def logged() -> Iterator[list[dict]]:
    """Events emitted on the global log publisher during the test."""
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)
