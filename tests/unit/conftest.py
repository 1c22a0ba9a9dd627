"""Fixtures of the Multi-User Chat tests (test_muc.py, test_muc_admin.py): memory servers whose MUC service
(conference.localhost) has the given options. A module that defines its own ``server`` fixture keeps it."""

from collections.abc import Callable
from typing import Any

import pytest

from xmppd.testing import MemoryServer


@pytest.fixture
def muc_server(make_xmpp: Callable[..., MemoryServer]) -> Callable[..., MemoryServer]:
    """``muc_server(config=None, **muc_options)``: a memory server with [plugins.muc] options (and the other
    config sections in ``config``) that sends no keepalive pings, so that moving the clock puts nothing in
    the clients' inboxes."""

    def make(config: dict[str, Any] | None = None, **muc: Any) -> MemoryServer:
        return make_xmpp(options={"ping": {"keepalive_interval": 0}, "muc": muc}, config=config)

    return make


@pytest.fixture
def server(muc_server: Callable[..., MemoryServer]) -> MemoryServer:
    """A memory server whose MUC service has the default options (see ``muc_server``)."""
    return muc_server()
