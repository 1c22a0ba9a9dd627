"""pytest fixtures for xmppd and its plugins (registered through the ``pytest11`` entry point).

* ``xmpp``: a MemoryServer with the default plugins; ``xmpp.login("alice@localhost/phone")``.
* ``make_xmpp``: build MemoryServers with other plugins or options; all are stopped after the test.
* ``xmpp_process``: start ``twistd xmppd`` subprocesses on loopback; all are stopped after the test
  (``module_xmpp_process``: after the test module).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from xmppd.testing import MemoryServer
from xmppd.testing.process import ServerProcess


@pytest.fixture
def make_xmpp() -> Iterator[Callable[..., MemoryServer]]:
    servers: list[MemoryServer] = []

    def make(**kwargs: Any) -> MemoryServer:
        server = MemoryServer(**kwargs)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def xmpp(make_xmpp: Callable[..., MemoryServer]) -> MemoryServer:
    return make_xmpp()


def _process_starter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ServerProcess]]:
    processes: list[ServerProcess] = []

    def start(
        config: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        users: dict[str, str] | None = None,
    ) -> ServerProcess:
        process = ServerProcess(tmp_path_factory.mktemp("xmppd"), config, env)
        processes.append(process)
        process.start()
        for jid, password in (users or {}).items():
            process.adduser(jid, password)
        return process

    yield start
    for process in processes:
        process.stop()


@pytest.fixture
def xmpp_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ServerProcess]]:
    """``xmpp_process(config=None, env=None, users=None)`` starts a server, stopped after the test."""
    yield from _process_starter(tmp_path_factory)


@pytest.fixture(scope="module")
def module_xmpp_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ServerProcess]]:
    """Like ``xmpp_process``, but the servers live until the end of the test module (for modules that
    run many tests against one server)."""
    yield from _process_starter(tmp_path_factory)
