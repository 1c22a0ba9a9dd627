"""Logging (xmppd.log): levels per namespace prefix, text and JSON lines, ``[logging]`` checks, reload.

Events go through the same observer twistd gets from xmppd.tap, writing to an in-memory stream.
"""

from __future__ import annotations

import io
import json
import tomllib
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.logger import Logger, formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from xmppd import log as xlog
from xmppd.config import ConfigError, load, parse
from xmppd.jid import JID
from xmppd.log import LogSettings, json_line, logger
from xmppd.testing import MemoryServer
from xmppd.testing.process import write_toml

ETC = Path(__file__).resolve().parents[2] / "etc" / "xmppd.toml"


def settings(**logging: object) -> LogSettings:
    return LogSettings(parse({"logging": logging}, "(test)"))


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    """What twistd's log would receive, as text; the logging state is reset afterwards."""
    stream = io.StringIO()
    root = xlog.install(stream)
    globalLogPublisher.addObserver(root)
    try:
        yield stream
    finally:
        globalLogPublisher.removeObserver(root)
        xlog.install(None)
        settings().apply()


def emit_everywhere() -> None:
    """One event per level in a few namespaces, each event's text naming its namespace and level."""
    for namespace in (
        "xmppd.c2s",
        "xmppd.s2s",
        "xmppd.s2s.out",
        "xmppd.plugin.muc",
        "xmppd.plugin.mucky",
        "xmppd.plugin.ping",
        "twisted.web.server",
    ):
        log = logger(namespace) if namespace.startswith("xmppd") else Logger(namespace=namespace)
        for level in ("debug", "info", "warn", "error"):
            log.emit(xlog.LEVELS[level], "{ns} says {lv}", ns=namespace, lv=level)


def said(text: str) -> set[str]:
    return {line.split("] ", 1)[1] for line in text.splitlines()}


def test_default_is_info_everywhere(out):
    settings().apply()
    emit_everywhere()
    lines = said(out.getvalue())
    assert "xmppd.c2s says info" in lines
    assert "twisted.web.server says info" in lines
    assert not any(line.endswith("debug") for line in lines)


def test_longest_namespace_prefix_wins(out):
    settings(
        level="info",
        levels={"xmppd.plugin": "error", "xmppd.plugin.muc": "debug", "xmppd.s2s": "warn", "twisted": "warn"},
    ).apply()
    emit_everywhere()
    lines = said(out.getvalue())
    assert "xmppd.plugin.muc says debug" in lines  # the plugin's own level, below xmppd.plugin's
    assert "xmppd.plugin.ping says warn" not in lines  # xmppd.plugin: error
    assert "xmppd.plugin.ping says error" in lines
    assert "xmppd.plugin.mucky says warn" not in lines  # a prefix ends at a dot: mucky is not muc
    assert {"xmppd.s2s says info", "xmppd.s2s.out says info"}.isdisjoint(lines)
    assert {"xmppd.s2s says warn", "xmppd.s2s.out says warn"} <= lines
    assert "xmppd.c2s says info" in lines and "xmppd.c2s says debug" not in lines  # the global level
    assert "twisted.web.server says info" not in lines  # Twisted's own loggers obey the levels too


def test_global_level_covers_every_namespace_not_listed(out):
    settings(level="error", levels={"xmppd.c2s": "debug"}).apply()
    emit_everywhere()
    lines = said(out.getvalue())
    assert {f"xmppd.c2s says {level}" for level in ("debug", "info", "warn", "error")} <= lines
    assert {line for line in lines if not line.startswith("xmppd.c2s")} == {
        f"{ns} says error"
        for ns in (
            "xmppd.s2s",
            "xmppd.s2s.out",
            "xmppd.plugin.muc",
            "xmppd.plugin.mucky",
            "xmppd.plugin.ping",
            "twisted.web.server",
        )
    }


def test_xmppd_loggers_drop_events_below_their_level_before_publishing(out, logged):
    settings(levels={"xmppd.plugin.muc": "debug"}).apply()
    logger("xmppd.plugin.ping").debug("quiet")
    logger("xmppd.plugin.muc").debug("loud")
    assert [e["log_format"] for e in logged] == ["loud"]


def test_text_lines_are_twistds(out):
    settings().apply()
    logger("xmppd.c2s").info("c2s {id}: hello", id="c1")
    (line,) = out.getvalue().splitlines()
    assert line.endswith(" [xmppd.c2s#info] c2s c1: hello")


def test_json_lines_parse_back(out):
    settings(format="json").apply()
    before = datetime.now().astimezone()
    logger("xmppd.c2s").info(
        "c2s {id} from {peer}: session {jid} started",
        id="c1",
        peer="127.0.0.1:4000",
        jid=JID.parse("alice@localhost/phone"),
        count=3,
        ratio=0.5,
        ok=True,
        tags=["a", "b"],
        missing=None,
        stream=object(),  # not JSON: left out
        namespace="clash",  # named like a key of the line: left out
    )
    logger("xmppd.s2s").warn("plain")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["message"] == "c2s c1 from 127.0.0.1:4000: session alice@localhost/phone started"
    assert (first["level"], first["namespace"]) == ("info", "xmppd.c2s")
    assert first["time"].endswith("Z")
    when = datetime.fromisoformat(first["time"])
    assert when.utcoffset().total_seconds() == 0
    assert abs((when - before).total_seconds()) < 5
    fields = {k: v for k, v in first.items() if k not in ("time", "level", "namespace", "message")}
    assert fields == {
        "id": "c1",
        "peer": "127.0.0.1:4000",
        "jid": "alice@localhost/phone",
        "count": 3,
        "ratio": 0.5,
        "ok": True,
        "tags": ["a", "b"],
        "missing": None,
    }
    assert second == {"time": second["time"], "level": "warn", "namespace": "xmppd.s2s", "message": "plain"}


def test_json_failure_has_its_traceback():
    try:
        raise ValueError("boom")
    except ValueError:
        failure = Failure()
    events: list[dict] = []
    Logger(namespace="xmppd.router", observer=events.append).failure(
        "routing {what} failed", failure, what="x"
    )
    line = json.loads(json_line(events[0]))
    assert line["level"] == "critical" and line["message"] == "routing x failed"
    assert "ValueError: boom" in line["traceback"]
    assert json_line(events[0]).count("\n") == 1  # one event, one line


def test_file_gets_the_lines_instead_and_a_new_settings_reopens_it(out, tmp_path):
    path = tmp_path / "xmppd.jsonl"
    settings(format="json", file=str(path)).apply()
    logger("xmppd.server").info("first")
    path.rename(tmp_path / "xmppd.jsonl.1")  # logrotate moves it away, then reloads
    settings(format="json", file=str(path)).apply()
    logger("xmppd.server").info("second")
    settings().apply()  # back to twistd's log, as text
    logger("xmppd.server").info("third")
    assert [
        json.loads(line)["message"] for line in (tmp_path / "xmppd.jsonl.1").read_text().splitlines()
    ] == ["first"]
    assert [json.loads(line)["message"] for line in path.read_text().splitlines()] == ["second"]
    assert said(out.getvalue()) == {"third"}
    assert path.stat().st_mode & 0o777 == 0o640 & ~_umask()


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- configuration -------------------------------------------------------------------------------------


def test_sample_configuration_documents_every_logging_key():
    text = ETC.read_text()
    config = load(str(ETC))
    assert set(config.sections["logging"]) == {"level", "levels", "format", "file"}
    section = text.split("[logging]", 1)[1].split("\n[", 1)[0]
    for key in config.sections["logging"]:
        assert f"\n{key} = " in section


def test_levels_keys_may_be_unquoted_dotted_names():
    data = tomllib.loads(
        '[logging]\nlevels = { xmppd.s2s = "warn", "xmppd.plugin.muc" = "debug", twisted = "error" }'
    )
    config = parse(data, "x.toml")
    assert config.sections["logging"]["levels"] == {
        "xmppd.s2s": "warn",
        "xmppd.plugin.muc": "debug",
        "twisted": "error",
    }


@pytest.mark.parametrize(
    ("logging", "key", "words"),
    [
        ({"level": "verbose"}, "[logging] level", "verbose"),
        ({"level": 3}, "[logging] level", "expected a string"),
        ({"levels": "debug"}, "[logging] levels", "expected a table"),
        ({"levels": {"xmppd.s2s": "loud"}}, '[logging] levels "xmppd.s2s"', "loud"),
        ({"levels": {"xmppd.s2s": 10}}, '[logging] levels "xmppd.s2s"', "10"),
        ({"levels": {"xmppd s2s": "warn"}}, '[logging] levels "xmppd s2s"', "namespace"),
        ({"levels": {"xmppd..s2s": "warn"}}, '[logging] levels "xmppd..s2s"', "namespace"),
        ({"levels": {"": "warn"}}, '[logging] levels ""', "namespace"),
        ({"format": "xml"}, "[logging] format", "xml"),
        ({"file": False}, "[logging] file", "expected a string"),
        ({"colour": True}, "[logging] colour", "unknown key"),
    ],
)
def test_bad_values_are_one_line_config_errors(logging, key, words):
    with pytest.raises(ConfigError) as info:
        parse({"logging": logging}, "x.toml")
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"x.toml: {key}: ")
    assert words in text
    assert "; fix: " in text


def test_a_file_that_cannot_be_opened_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        settings(file=str(tmp_path / "missing" / "xmppd.log"))
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith("(test): [logging] file: cannot open ")
    assert "No such file or directory" in text


def test_json_to_syslog_is_refused(out):
    xlog.install(lambda event: None)  # an observer, as with twistd --syslog
    with pytest.raises(ConfigError, match=r"\[logging\] format: .*syslog"):
        settings(format="json")
    settings(format="text").apply()  # text is fine


# -- reload --------------------------------------------------------------------------------------------


def write_config(path: Path, logging: dict) -> None:
    write_toml(
        path,
        {
            "server": {"domains": ["localhost"]},
            "tls": {"required": False},
            "storage": {"backend": "memory"},
            "s2s": {"enabled": False},
            "plugins": {"enabled": ["disco"]},
            "logging": logging,
        },
    )


@pytest.fixture
def reloadable(tmp_path: Path) -> Iterator[tuple[MemoryServer, Path]]:
    """A memory server at level info whose configuration file is ``tmp_path/xmppd.toml``."""
    path = tmp_path / "xmppd.toml"
    write_config(path, {"level": "info"})
    xmpp = MemoryServer(enabled=["disco"])
    xmpp.server.config.path = str(path)
    yield xmpp, path
    xmpp.stop()


def test_reload_applies_logging_at_once(out, reloadable, tmp_path):
    xmpp, path = reloadable
    emit_everywhere()
    assert "xmppd.plugin.muc says debug" not in said(out.getvalue())
    written = len(out.getvalue())

    target = tmp_path / "xmppd.jsonl"
    write_config(
        path,
        {
            "level": "warn",
            "format": "json",
            "file": str(target),
            "levels": {"xmppd.plugin.muc": "debug", "xmppd.server": "info"},
        },
    )
    xmpp.server.reload_config()
    emit_everywhere()
    messages = {json.loads(line)["message"] for line in target.read_text().splitlines()}
    assert "configuration reloaded: no plugin changes" in messages  # logged with the new settings
    assert "xmppd.plugin.muc says debug" in messages
    assert "xmppd.c2s says info" not in messages and "xmppd.c2s says warn" in messages
    assert len(out.getvalue()) == written  # nothing more to twistd's log


def test_a_bad_reload_keeps_the_running_logging(out, reloadable):
    xmpp, path = reloadable
    write_config(path, {"level": "info", "levels": {"xmppd.s2s": "warn"}})
    xmpp.server.reload_config()
    write_config(path, {"level": "debug", "file": "/nonexistent/x.log"})
    with pytest.raises(ConfigError, match=r"\[logging\] file"):
        xmpp.server.reload_config()
    write_config(path, {"level": "debug", "format": "yaml"})
    with pytest.raises(ConfigError, match=r"\[logging\] format"):
        xmpp.server.reload_config()
    emit_everywhere()
    lines = said(out.getvalue())
    assert "xmppd.c2s says debug" not in lines and "xmppd.c2s says info" in lines
    assert "xmppd.s2s says info" not in lines and "xmppd.s2s says warn" in lines
    assert sum("configuration not reloaded" in line for line in lines) == 2
    assert xmpp.server.config.sections["logging"]["levels"] == {"xmppd.s2s": "warn"}


def test_set_level_still_sets_one_level(out):
    settings(levels={"xmppd.s2s": "warn"}).apply()
    xlog.set_level("debug", "xmppd.c2s")
    xlog.set_level("error")
    emit_everywhere()
    lines = said(out.getvalue())
    assert "xmppd.c2s says debug" in lines
    assert "xmppd.s2s says warn" in lines  # kept
    assert "xmppd.plugin.ping says warn" not in lines and "xmppd.plugin.ping says error" in lines


# -- what never reaches the log ----------------------------------------------------------------------------


def test_the_web_admin_does_not_log_why_a_password_was_refused(logged):
    """The error for a refused password quotes the character refused and its position: the web admin
    shows it to the administrator but logs only that the change was refused."""
    xmpp = MemoryServer(enabled=["webadmin"])
    xmpp.adduser("alice@localhost")
    resource = xmpp.server.http_resources["/admin"]
    request = SimpleNamespace(getClientAddress=lambda: IPv4Address("TCP", "127.0.0.1", 4000))
    session = SimpleNamespace(jid=JID.parse("admin@localhost"))
    password = "hunter2\x07secret"
    acting = Deferred.fromCoroutine(
        resource._act(
            request, session, "users", "passwd", "alice@localhost", jid="alice@localhost", password=password
        )
    )
    kind, flash, _ = acting.result
    assert kind == "error" and "'\\x07' in position 7" in flash  # the administrator is told why
    (line,) = [formatEvent(e) for e in logged if "web admin" in formatEvent(e)]
    assert line == "web admin: admin@localhost from 127.0.0.1: passwd alice@localhost: refused"
    assert "x07" not in repr(logged) and "position" not in repr(logged)
    xmpp.stop()
