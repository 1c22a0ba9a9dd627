"""``xmppdctl``: administer xmppd from the shell.

With the server running, commands go over its control socket (data_dir/xmppd.sock) and act on the live
process. Without it, the account commands (adduser, deluser, passwd, users) open the storage directly, so
accounts can be prepared before the first start; the others say the server is not running. ``migrate``
upgrades the storage schema, and only with the server stopped (the server migrates it when it starts).
``export`` and ``import`` (XEP-0227 files, xmppd.pie) open the storage directly; import only with the server
stopped. ``sessions``, ``kick`` and ``announce`` act on the running server only; ``check`` (xmppd.check) reads
the configuration and the files it names, and works whether or not the server runs.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.internet.error import ConnectError
from twisted.internet.task import react
from twisted.protocols import amp

from xmppd.config import Config, ConfigError, load
from xmppd.control import Call, Commands, ControlError

OFFLINE_COMMANDS = {"adduser", "deluser", "passwd", "users"}


class NotRunning(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xmppdctl", description="Administer an xmppd server.")
    p.add_argument("--config", "-c", help="the server's TOML configuration (default: embedded defaults)")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    sub = p.add_subparsers(dest="command", required=True)
    add = sub.add_parser("adduser", help="create an account (password prompted if not given)")
    add.add_argument("jid")
    add.add_argument("password", nargs="?")
    dele = sub.add_parser("deluser", help="delete an account and its data")
    dele.add_argument("jid")
    pw = sub.add_parser("passwd", help="change an account's password")
    pw.add_argument("jid")
    pw.add_argument("password", nargs="?")
    users = sub.add_parser("users", help="list accounts")
    users.add_argument("domain", nargs="?")
    sub.add_parser("status", help="is the server running, and what it serves")
    sub.add_parser(
        "migrate", help="upgrade the database schema (with the server stopped; it also does at start)"
    )
    sub.add_parser("reload", help="re-read the configuration file (like SIGHUP)")
    plugins = sub.add_parser("plugins", help="list plugins, or load / unload / reload one")
    plugins.add_argument("action", nargs="?", choices=["list", "load", "unload", "reload"], default="list")
    plugins.add_argument("name", nargs="?")
    plugins.add_argument("--domain", help="only this domain (default: every served domain)")
    export = sub.add_parser("export", help="write every account and its data to a XEP-0227 file")
    export.add_argument("file", help="the file to write (must not exist)")
    export.add_argument("--domain", action="append", help="only this domain (repeatable; default: all)")
    imp = sub.add_parser("import", help="read accounts and their data from a XEP-0227 file (server stopped)")
    imp.add_argument("file")
    imp.add_argument("--replace", action="store_true", help="replace existing accounts and all their data")
    imp.add_argument("--dry-run", action="store_true", help="check the file and report, write nothing")
    sessions = sub.add_parser("sessions", help="list sessions: JID, transport, IP, client, time connected")
    sessions.add_argument("--domain", help="only this domain (default: every served domain)")
    kick = sub.add_parser("kick", help="disconnect a session (full JID) or every session of an account")
    kick.add_argument("jid")
    kick.add_argument("--reason", help="the text of the stream error the client sees")
    announce = sub.add_parser("announce", help="send a message to every online user")
    announce.add_argument("text", help="the message; - reads it from stdin")
    announce.add_argument("--domain", help="only this domain's users (default: every served domain)")
    announce.add_argument("--subject", help="the message's subject")
    sub.add_parser("check", help="check configuration, certificate, DNS and listeners (exit 1 on an error)")
    for command in sub.choices.values():  # --json after the command too ("xmppdctl sessions --json")
        command.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return p


def _password(given: str | None) -> str:
    if given is not None:
        return given
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != first:
            raise ControlError("the passwords differ")
        return first
    line = sys.stdin.readline()
    return line.rstrip("\n")


def _text(given: str) -> str:
    """An announcement's text: the argument, or stdin when it is "-"."""
    return sys.stdin.read().rstrip("\n") if given == "-" else given


def _request(ns: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    command = ns.command
    if command == "sessions":
        return command, {"domain": ns.domain}
    if command == "kick":
        return command, {"jid": ns.jid, **({"reason": ns.reason} if ns.reason else {})}
    if command == "announce":
        return command, {"text": _text(ns.text), "domain": ns.domain, "subject": ns.subject}
    if command == "adduser" or command == "passwd":
        return command, {"jid": ns.jid, "password": _password(ns.password)}
    if command == "deluser":
        return command, {"jid": ns.jid}
    if command == "users":
        return command, {"domain": ns.domain}
    if command == "plugins":
        if ns.action == "list":
            return "plugins", {}
        if not ns.name:
            raise ControlError(f"plugins {ns.action} needs a plugin name")
        return f"plugin-{ns.action}", {"name": ns.name, "domain": ns.domain}
    return command, {}


async def _online(reactor: Any, config: Config, command: str, args: dict[str, Any]) -> dict[str, Any]:
    from xmppd.server import XMPPServer

    socket = XMPPServer.control_socket(config).resolve()
    path = str(socket).replace(":", "\\:")
    endpoint = clientFromString(reactor, f"unix:path={path}:timeout=5")
    try:
        proto = await connectProtocol(endpoint, amp.AMP())
    except (ConnectError, OSError) as e:
        code = getattr(e, "osError", None) or getattr(e, "errno", None)
        reason = f": {os.strerror(code).lower()}" if isinstance(code, int) else ""
        raise NotRunning(f"nothing answers on {socket}{reason}") from None
    try:
        answer = await proto.callRemote(Call, command=command, args=json.dumps(args))
    finally:
        proto.transport.loseConnection()
    return json.loads(answer["result"])


async def _offline(config: Config, command: str, args: dict[str, Any]) -> dict[str, Any]:
    """Account commands straight on the storage, for a server that is not running."""
    from xmppd.accounts import Accounts
    from xmppd.storage import storage_from_config

    if config.get("storage", "backend") == "memory":
        raise ControlError("the server is not running and memory storage keeps no accounts")
    storage = storage_from_config(config)
    await storage.start()
    try:
        offline = _OfflineServer(config, Accounts(storage))
        return await Commands(offline).run(command, args)
    finally:
        await storage.stop()


async def _dispatch(reactor: Any, config: Config, command: str, args: dict[str, Any]) -> dict[str, Any]:
    """Commands with their own way of running; the others go to the running server (NotRunning)."""
    if command == "migrate":
        return await _migrate(reactor, config)
    return await _online(reactor, config, command, args)


async def _migrate(reactor: Any, config: Config) -> dict[str, Any]:
    """``xmppdctl migrate``: apply the storage's schema migrations, with the server stopped (a running
    server applied them when it started, and must not see its schema change under it)."""
    from xmppd.storage import StorageError, storage_from_config

    try:
        await _online(reactor, config, "status", {})
    except NotRunning:
        pass
    else:
        raise ControlError(
            "xmppd is running, and applied the schema migrations when it started; stop it to run migrate"
        )
    backend = config.get("storage", "backend")
    if backend == "memory":
        raise ControlError("memory storage has no schema to migrate")
    storage = storage_from_config(config)
    try:
        await storage.start()
    except StorageError as e:
        raise ControlError(str(e)) from None
    try:
        return {
            "ok": {
                "database": storage.dialect.describe(),
                "from": storage.schema_from,
                "to": storage.schema_version,
            }
        }
    finally:
        await storage.stop()


class _OfflineServer:
    """Just enough of a server for the account commands."""

    def __init__(self, config: Config, accounts: Any) -> None:
        from xmppd.events import EventBus
        from xmppd.sessions import SessionManager

        self.accounts = accounts
        self.sessions = SessionManager()
        self.hosts = {d: type("H", (), {"bus": EventBus(), "name": d})() for d in config.domains}

    async def delete_account(self, account: Any) -> None:
        """Offline there are no sessions or plugins to tell: delete the account and its data."""
        await self.accounts.delete(account)


async def _pie(reactor: Any, config: Config, ns: argparse.Namespace) -> None:
    """``export`` / ``import`` (xmppd.pie) straight on the configured storage. Export may run beside a
    running server (SQLite's WAL lets it read); import refuses to, as the live server would race it on the
    same accounts (roster changes, offline deliveries). Exits 1 when anything was left out or rejected."""
    from xmppd import pie
    from xmppd.storage import StorageError, storage_from_config

    if ns.command == "import":
        try:
            await _online(reactor, config, "status", {})
        except NotRunning:
            pass
        else:
            raise ControlError("xmppd is running; stop the server first (import writes the storage directly)")
    if config.get("storage", "backend") == "memory":
        raise ControlError("memory storage keeps nothing to export or import into")
    storage = storage_from_config(config)
    try:
        await storage.start()
        if ns.command == "export":
            unknown = set(ns.domain or ()) - set(config.domains)
            if unknown:
                raise ControlError(f"not served here: {', '.join(sorted(unknown))}")
            report: Any = await pie.export_file(storage, ns.domain or config.domains, ns.file)
        else:
            report = await pie.import_file(
                storage, ns.file, config.domains, replace=ns.replace, dry_run=ns.dry_run
            )
    except (OSError, StorageError) as e:
        raise ControlError(str(e)) from None
    finally:
        await storage.stop()
    if ns.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print("\n".join(report.summary()))
    if not report.ok:
        raise SystemExit(1)


async def _check(reactor: Any, ns: argparse.Namespace) -> None:
    """``xmppdctl check``: xmppd.check's findings and whether the server runs; exit status 1 on any error."""
    from xmppd import check

    report = await check.run_checks(ns.config, reactor)
    if report.config is not None:
        try:
            status = (await _online(reactor, report.config, "status", {})).get("ok") or {}
        except NotRunning:
            report.add([check.Result(check.NOTE, "server", "not running (checked the configuration file)")])
        else:
            line = f"running for {_duration(status.get('uptime'))}, {status.get('sessions')} session(s)"
            report.add([check.Result(check.OK, "server", line)])
    if ns.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print("\n".join(report.lines()))
    if report.exit_status:
        raise SystemExit(report.exit_status)


def _duration(seconds: float | None) -> str:
    """``42s``, ``5m 03s``, ``2h 07m``, ``3d 4h``: how long, at a glance."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def _sessions_table(sessions: list[dict[str, Any]]) -> list[str]:
    """``xmppdctl sessions``: one aligned row per session, then how many."""
    if not sessions:
        return ["no sessions"]
    header = ("JID", "TRANSPORT", "IP", "CLIENT", "CONNECTED")
    rows = [
        (s["jid"], s["transport"], s["ip"] or "-", s["client"] or "-", _duration(s["connected"]))
        for s in sessions
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    return [*lines, f"{len(rows)} session(s)"]


def _print(result: Any, as_json: bool, command: str = "") -> None:
    if as_json:
        print(json.dumps(result, indent=2))
    elif command == "sessions":
        print("\n".join(_sessions_table(result)))
    elif isinstance(result, list):
        for row in result:
            if isinstance(row, dict):
                enabled = ",".join(row["enabled"]) or "-"
                loaded = ",".join(row["loaded"]) or "-"
                print(f"{row['name']:16} enabled: {enabled:20} loaded: {loaded:20} {row['origin']}")
            else:
                print(row)
    elif isinstance(result, dict):
        for key, value in result.items():
            print(f"{key}: {value}")
    else:
        print(result)


async def _main(reactor: Any, argv: list[str]) -> None:
    ns = _parser().parse_args(argv)
    if ns.command == "check":
        return await _check(reactor, ns)
    try:
        config = load(ns.config)
        if ns.command in ("export", "import"):
            return await _pie(reactor, config, ns)
        command, args = _request(ns)
        try:
            answer = await _dispatch(reactor, config, command, args)
        except NotRunning as e:
            if command not in OFFLINE_COMMANDS:
                start = "twistd -n xmppd" + (f" --config {ns.config}" if ns.config else "")
                raise ControlError(
                    f"xmppd is not running ({e}); {ns.command} needs the running server; "
                    f"start it with: {start}"
                ) from None
            answer = await _offline(config, command, args)
    except (ConfigError, ControlError) as e:
        print(f"xmppdctl: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    if "error" in answer:
        print(f"xmppdctl: {answer['error']}", file=sys.stderr)
        raise SystemExit(1)
    _print(answer["ok"], ns.json, command)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    react(lambda reactor: ensureDeferred(_main(reactor, args)))
