"""``twistd xmppd``: command-line options and the service to run. The only module that uses the global
reactor.

Configuration problems end start-up with one line (``xmppd: FILE: KEY: problem; fix: ...``) and exit
status 1, never a traceback: a ConfigError from reading the file, the certificate, the plugins, or binding a
listener becomes SystemExit with that line. Storage starts once the reactor runs: when it cannot (the
database is unreachable or its schema is newer than this xmppd), the server logs one line and stops, and
the process exits with status 1.

Logging: the service gives twistd its log observer (xmppd.log's level filter in front of the output) as
the application's ILogObserver, so ``[logging]`` levels also apply to Twisted's own lines. It writes
where twistd would (--logfile, --syslog, stdout with --nodaemon, else twistd.log, rotated like twistd
rotates it), or to ``[logging] file``, in ``[logging] format``. twistd's ``--logger`` replaces all that
(xmppd's own loggers still obey the levels).
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
from typing import Any

from twisted.application.service import MultiService
from twisted.logger import ILogObserver
from twisted.python import usage
from twisted.python.components import Componentized

from xmppd.config import ConfigError, load
from xmppd.log import LogSettings, install


class Options(usage.Options):
    synopsis = "[--config FILE]"
    longdesc = "Run the xmppd XMPP server. Without --config: domain localhost, c2s on 127.0.0.1:5222."
    optParameters = [["config", "c", None, "TOML configuration file (see etc/xmppd.toml)"]]


class _Launcher(MultiService):
    """Wraps the server so twistd's start-up steps turn ConfigError into an exit (listeners are bound in
    makeService already, before logging starts; this covers anything later)."""

    def __init__(self, server: Any, log_observer: Any = None) -> None:
        super().__init__()
        self.server = server
        self.log_observer = log_observer
        server.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:
        if isinstance(parent, Componentized) and self.log_observer is not None:
            # twistd's Application: AppLogger.start logs to its ILogObserver, once this returns
            parent.setComponent(ILogObserver, self.log_observer)
        super().setServiceParent(parent)

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


def twistd_log_destination(twistd_options: Any) -> Any:
    """Where twistd itself would log with these command-line options (its ServerOptions; None when not
    run by twistd): a syslog observer, stdout, or a LogFile (twistd.log by default) that rotates at 1 MB and
    on SIGUSR1, exactly as twistd's own UnixAppLogger chooses."""
    options = twistd_options if twistd_options is not None else {"nodaemon": True}
    if options.get("syslog"):
        from twisted.logger import LegacyLogObserverWrapper
        from twisted.python import syslog

        return LegacyLogObserverWrapper(syslog.SyslogObserver(options.get("prefix") or "twisted").emit)
    name = options.get("logfile") or ""
    if name == "-" and not options.get("nodaemon"):
        raise SystemExit("Daemons cannot log to stdout, exiting!")
    if name == "-" or (not name and options.get("nodaemon")):
        return sys.stdout
    from twisted.python.logfile import LogFile

    try:
        logfile = LogFile.fromFullPath(name or "twistd.log")
    except OSError as e:
        raise SystemExit(f"xmppd: cannot open the log file {name or 'twistd.log'!r}: {e.strerror}") from None
    if not signal.getsignal(signal.SIGUSR1):

        def rotate(signum: int, frame: Any) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(logfile.rotate)

        signal.signal(signal.SIGUSR1, rotate)
    return logfile


def makeService(options: Options) -> MultiService:
    from twisted.internet import reactor

    try:
        server = build(options["config"], reactor)
        observer = install(twistd_log_destination(options.parent))
        LogSettings(server.config).apply()  # a [logging] file it cannot open is a ConfigError too
    except ConfigError as e:
        raise SystemExit(f"xmppd: {e}") from None
    return _Launcher(server, observer)
