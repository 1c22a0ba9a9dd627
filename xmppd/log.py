"""Loggers for xmppd and its plugins, filtered by the configured level (``[logging] level``).

Every xmppd logger sends its events through one level filter in front of the global log publisher, so
``level = "warn"`` silences info lines from xmppd without touching what Twisted itself logs, and a debug
line costs nothing unless debug is on. Plugin loggers live under the ``xmppd.plugin.NAME`` namespace.
"""

from __future__ import annotations

from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)

_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
_observer = FilteringLogObserver(globalLogPublisher, [_predicate])

LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn, "error": LogLevel.error}


def logger(namespace: str) -> Logger:
    """A Logger for ``namespace`` (e.g. "xmppd.c2s", "xmppd.plugin.ping") obeying the configured level."""
    return Logger(namespace=namespace, observer=_observer)


def set_level(level: str, namespace: str | None = None) -> None:
    """Set the lowest level logged, for every xmppd logger or for one namespace and those below it."""
    if namespace is None:
        _predicate.defaultLogLevel = LEVELS[level]
    else:
        _predicate.setLogLevelForNamespace(namespace, LEVELS[level])
