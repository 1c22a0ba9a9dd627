"""Logging: twisted.logger loggers for xmppd and its plugins, one level filter, and where lines go.

Every event, from xmppd's loggers and from Twisted's own, passes one ``FilteringLogObserver`` whose
``LogLevelFilterPredicate`` holds the ``[logging]`` levels: ``level`` for every namespace, and ``levels``
per namespace prefix (``xmppd.plugin.muc``, ``xmppd.s2s``; the longest prefix wins, compared dot by dot).
What passes is written to twistd's log (stdout with --nodaemon, twistd.log, syslog) or to ``[logging]
file``, as twistd's text lines or as JSON lines. xmppd.tap gives that observer to twistd before logging
starts; ``LogSettings(config).apply()``, at start-up and on every reload, replaces levels and output at
once. xmppd's loggers ask the same levels before building an event, so a debug line costs next to
nothing while debug is off. Plugin loggers live under ``xmppd.plugin.NAME``.

Never log a password, a SASL payload or a SCRAM value, at any level; message bodies and stanza XML only
at debug (DESIGN.md, conventions).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    formatEvent,
    textFileLogObserver,
)
from zope.interface import implementer

from xmppd.jid import JID

if TYPE_CHECKING:
    from xmppd.config import Config

LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn, "error": LogLevel.error}
FORMATS = ("text", "json")


@implementer(ILogFilterPredicate)
class _Levels:
    """The filter's predicate: a LogLevelFilterPredicate for the current levels, replaced whole when they
    change, so that no event (from any thread) sees half a configuration. Events without a level or a
    namespace, which LogLevelFilterPredicate would drop, pass."""

    def __init__(self) -> None:
        self.level = "info"
        self.levels: dict[str, str] = {}
        self.predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)

    def set(self, level: str, levels: dict[str, str]) -> None:
        predicate = LogLevelFilterPredicate(defaultLogLevel=LEVELS[level])
        for namespace, name in levels.items():
            predicate.setLogLevelForNamespace(namespace, LEVELS[name])
        self.level, self.levels, self.predicate = level, dict(levels), predicate

    def enabled(self, level: Any, namespace: str) -> bool:
        """Whether an event of ``level`` in ``namespace`` would be written."""
        try:
            return not level < self.predicate.logLevelForNamespace(namespace)
        except TypeError:  # not a LogLevel: let Logger.emit report it
            return True

    def __call__(self, event: dict[str, Any]) -> Any:
        if event.get("log_level") is None or not event.get("log_namespace"):
            return PredicateResult.maybe
        return self.predicate(event)


@implementer(ILogObserver)
class _Output:
    """Where events that pass the filter go: an observer writing text or JSON lines to ``[logging] file``
    or to ``default`` (twistd's destination, set by xmppd.tap: a stream, or an observer such as syslog's
    that only takes text). Replaced whole on reconfiguration; the file it replaces is closed."""

    def __init__(self) -> None:
        self.default: Any = None
        self.observer: Any = None
        self.file: IO[str] | None = None

    def switch(self, format: str, file: IO[str] | None) -> None:
        target = file if file is not None else self.default
        if target is None:
            observer = None
        elif not hasattr(target, "write"):
            observer = target
        elif format == "json":
            observer = FileLogObserver(target, json_line)
        else:
            observer = textFileLogObserver(target)
        old, self.file, self.observer = self.file, file, observer
        if old is not None and old is not file:
            old.close()

    def __call__(self, event: dict[str, Any]) -> None:
        observer = self.observer
        if observer is not None:
            observer(event)


_levels = _Levels()
_output = _Output()
_root = FilteringLogObserver(_output, [_levels])


class _Logger(Logger):
    """A Logger that drops events below the configured level for its namespace before building them."""

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: object) -> None:
        if _levels.enabled(level, self.namespace):
            super().emit(level, format, **kwargs)


def logger(namespace: str) -> Logger:
    """A Logger for ``namespace`` (e.g. "xmppd.c2s", "xmppd.plugin.ping") obeying the configured levels."""
    return _Logger(namespace=namespace)


def set_level(level: str, namespace: str | None = None) -> None:
    """Set the lowest level logged: the global one, or the one for ``namespace`` and those below it."""
    if namespace is None:
        _levels.set(level, _levels.levels)
    else:
        _levels.set(_levels.level, {**_levels.levels, namespace: level})


def install(default: Any) -> FilteringLogObserver:
    """The observer to give twistd (xmppd.tap does), writing to ``default`` (a text stream, or an
    observer) unless ``[logging] file`` says otherwise. Apply a LogSettings afterwards."""
    _output.default = default
    _output.switch("text", None)
    return _root


class LogSettings:
    """A ``[logging]`` section ready to apply, its file (if any) already open (appending, mode 0640).

    ConfigError naming ``[logging] file`` if the file cannot be opened, so that a bad file changes nothing:
    start-up stops with one line, a reload keeps the running settings. ``apply()`` switches levels and
    output at once; ``discard()`` closes the file of settings that will not be applied. Applying again
    reopens the file (a reload after logrotate moved it away)."""

    def __init__(self, config: Config) -> None:
        section = config.sections["logging"]
        self.level: str = section["level"]
        self.levels: dict[str, str] = dict(section["levels"])
        self.format: str = section["format"]
        self.path: str = section["file"]
        self.file: IO[str] | None = None
        if self.path:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
                self.file = os.fdopen(fd, "a", encoding="utf-8", errors="backslashreplace")
            except OSError as e:
                raise config.error(
                    f"cannot open {self.path!r}: {e.strerror}",
                    key="[logging] file",
                    fix='name a file in an existing directory xmppd may write, or "" for twistd\'s log',
                ) from None
        elif self.format == "json" and _output.default is not None and not hasattr(_output.default, "write"):
            raise config.error(
                "twistd logs to syslog here, which takes text only",
                key="[logging] format",
                fix='format = "text", or set [logging] file for JSON lines',
            )

    def apply(self) -> None:
        _levels.set(self.level, self.levels)
        _output.switch(self.format, self.file)
        self.file = None  # the output's now

    def discard(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


# -- JSON lines ----------------------------------------------------------------------------------------

#: Fields of events from the legacy twisted.python.log API, already part of the message.
_LEGACY_FIELDS = frozenset({"message", "format", "isError", "system", "time", "why", "failure", "printed"})


def json_line(event: dict[str, Any]) -> str:
    """One event as one line of JSON: ``time`` (ISO 8601, UTC), ``level``, ``namespace``, ``message`` (the
    formatted text), ``traceback`` for a failure, then the event's own fields whose values are JSON (a JID
    as its text); a field named like one of those keys is left out."""
    level = event.get("log_level")
    when = event.get("log_time")
    line: dict[str, Any] = {
        "time": _iso_time(when) if isinstance(when, int | float) else None,
        "level": getattr(level, "name", None),
        "namespace": event.get("log_namespace"),
        "message": formatEvent(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        try:
            line["traceback"] = failure.getTraceback()
        except Exception:
            line["traceback"] = repr(failure)
    for key, value in event.items():
        if key.startswith("log_") or key in _LEGACY_FIELDS or key in line:
            continue
        if isinstance(value, JID):
            line[key] = str(value)
            continue
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError, RecursionError):
            continue
        line[key] = value
    return json.dumps(line, ensure_ascii=False) + "\n"


def _iso_time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
