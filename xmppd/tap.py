"""``twistd xmppd``: command-line options and the service to run. The only module that uses the global
reactor.

Configuration problems end start-up with one line (``xmppd: FILE: KEY: problem; fix: ...``) and exit
status 1, never a traceback: a ConfigError from reading the file, the certificate, the plugins, or binding a
listener becomes SystemExit with that line. Storage starts once the reactor runs: when it cannot (the
database is unreachable or its schema is newer than this xmppd), the server logs one line and stops, and
the process exits with status 1.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
from typing import Any

from twisted.application.service import MultiService
from twisted.python import usage

from xmppd.config import ConfigError, load


class Options(usage.Options):
    synopsis = "[--config FILE]"
    longdesc = "Run the xmppd XMPP server. Without --config: domain localhost, c2s on 127.0.0.1:5222."
    optParameters = [["config", "c", None, "TOML configuration file (see etc/xmppd.toml)"]]


class _Launcher(MultiService):
    """Wraps the server so twistd's start-up steps turn ConfigError into an exit (listeners are bound in
    makeService already, before logging starts; this covers anything later)."""

    def __init__(self, server: Any) -> None:
        super().__init__()
        self.server = server
        server.setServiceParent(self)

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except ConfigError as e:
            raise SystemExit(f"xmppd: {e}") from None

    def startService(self) -> None:
        super().startService()
        from twisted.internet import reactor

        reactor.addSystemEventTrigger("after", "shutdown", self._exit_status)

        def reload() -> None:
            try:
                self.server.reload_config()
            except ConfigError:
                pass  # already logged; the running configuration stays

        def on_hup(signum: int, frame: Any) -> None:
            reactor.callFromThread(reload)

        signal.signal(signal.SIGHUP, on_hup)

    def _exit_status(self) -> None:
        """A server that stopped because it could not start (its storage) exits with status 1. twistd
        itself exits 0 whatever happened once the reactor ran, so the status is set at interpreter exit,
        after twistd has cleaned up."""
        if getattr(self.server, "start_error", None):
            atexit.register(_exit_failed)


def _exit_failed() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(1)


def build(config_path: str | None, reactor: Any) -> Any:
    """The server for a configuration file, its TLS certificate prepared (generated if none is set)."""
    from xmppd.server import XMPPServer
    from xmppd.tls import context_factory, ensure_self_signed

    config = load(config_path)
    tls = config.sections["tls"]
    if tls["certificate"]:
        cert, key = tls["certificate"], tls["key"]
    else:
        cert, key = ensure_self_signed(config.data_dir, config.domains)
    tls_context = context_factory(cert, key, config.path)
    server = XMPPServer(config, reactor=reactor, tls_context=tls_context)
    server.bind_listeners()
    return server


def makeService(options: Options) -> MultiService:
    from twisted.internet import reactor

    try:
        server = build(options["config"], reactor)
    except ConfigError as e:
        raise SystemExit(f"xmppd: {e}") from None
    return _Launcher(server)
