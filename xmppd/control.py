"""The control channel: ``xmppdctl`` talking to a running server over a UNIX socket (Twisted AMP).

The socket lives in data_dir with mode 0600, so file permissions decide who may administer the server.
One AMP command carries a command name and JSON arguments; the answer is JSON. Commands run inside the
server, so e.g. a deleted user's sessions end at once and plugins load into the live process.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lxml import etree
from twisted.internet.defer import ensureDeferred
from twisted.internet.protocol import Factory
from twisted.protocols import amp

from xmppd.accounts import AccountError
from xmppd.config import ConfigError
from xmppd.jid import JIDError, parse_jid
from xmppd.log import logger
from xmppd.plugin import PluginError

if TYPE_CHECKING:
    from xmppd.server import XMPPServer

log = logger("xmppd.control")


class Call(amp.Command):
    """Run a control command; ``result`` is JSON: {"ok": value} or {"error": message}."""

    arguments = [(b"command", amp.Unicode()), (b"args", amp.Unicode())]
    response = [(b"result", amp.Unicode())]


class ControlError(Exception):
    """A control command that cannot be done; the message goes back to xmppdctl."""


def account_jid(text: str) -> Any:
    try:
        jid = parse_jid(text)
    except JIDError as e:
        raise ControlError(f"{text!r} is not a valid JID: {e}") from None
    if jid.local is None or jid.resource is not None:
        raise ControlError(f"{text!r} is not an account address (user@domain)")
    return jid


class Commands:
    """The operations xmppdctl can ask of a running server."""

    def __init__(self, server: XMPPServer) -> None:
        self.server = server
        self.table: dict[str, Callable[..., Any]] = {
            "status": self.status,
            "adduser": self.adduser,
            "deluser": self.deluser,
            "passwd": self.passwd,
            "users": self.users,
            "plugins": self.plugins,
            "plugin-load": self.plugin_load,
            "plugin-unload": self.plugin_unload,
            "plugin-reload": self.plugin_reload,
            "reload": self.reload,
            "sessions": self.sessions,
            "kick": self.kick,
            "announce": self.announce,
        }

    def _domain_of(self, jid: Any) -> None:
        if jid.domain not in self.server.hosts:
            raise ControlError(f"{jid.domain} is not served here; served: {', '.join(self.server.hosts)}")

    def _domains(self, domain: str | None) -> list[str]:
        if domain is None:
            return list(self.server.hosts)
        if domain not in self.server.hosts:
            raise ControlError(f"{domain} is not served here")
        return [domain]

    async def status(self) -> dict[str, Any]:
        from xmppd.server import address

        return {
            "domains": list(self.server.hosts),
            "sessions": len(self.server.sessions),
            "uptime": round(self.server.clock.seconds() - self.server.started_at, 1),
            "listeners": {k: [address(p) for p in v] for k, v in self.server.ports.items()},
        }

    async def adduser(self, jid: str, password: str) -> str:
        account = account_jid(jid)
        self._domain_of(account)
        await self.server.accounts.create(account, password)
        self.server.hosts[account.domain].bus.fire("user-created", account)
        return f"created {account}"

    async def deluser(self, jid: str) -> str:
        account = account_jid(jid)
        self._domain_of(account)
        await self.server.delete_account(account)
        return f"deleted {account}"

    async def passwd(self, jid: str, password: str) -> str:
        account = account_jid(jid)
        self._domain_of(account)
        await self.server.accounts.set_password(account, password)
        return f"password changed for {account}"

    async def users(self, domain: str | None = None) -> list[str]:
        result = []
        for d in self._domains(domain):
            result.extend(f"{user}@{d}" for user in await self.server.accounts.users(d))
        return result

    async def plugins(self) -> list[dict[str, Any]]:
        return self.server.plugins.describe()

    async def plugin_load(self, name: str, domain: str | None = None) -> str:
        for d in self._domains(domain):
            self.server.plugins.load(name, d)
        return f"loaded {name}"

    async def plugin_unload(self, name: str, domain: str | None = None) -> str:
        domains = [d for d in self._domains(domain) if name in self.server.plugins.loaded(d)]
        if not domains:
            raise ControlError(f"plugin {name!r} is not loaded")
        for d in domains:
            self.server.plugins.unload(name, d)
        return f"unloaded {name}"

    async def plugin_reload(self, name: str, domain: str | None = None) -> str:
        self.server.plugins.reload(name, self._domains(domain))
        return f"reloaded {name}"

    async def reload(self) -> list[str]:
        return self.server.reload_config()

    async def sessions(self, domain: str | None = None) -> list[dict[str, Any]]:
        """Every bound session: its JID, transport (c2s, bosh, websocket), IP address, client software
        (the XEP-0115 node it advertised, when it did) and how long it has been connected."""
        domains = set(self._domains(domain))
        now = self.server.clock.seconds()
        result = []
        for session in self.server.sessions:
            if session.jid is None or session.host not in domains:
                continue
            caps = session.data.get("caps")
            started = getattr(session, "bound_at", None)
            result.append(
                {
                    "jid": str(session.jid),
                    "transport": session.kind,
                    "ip": session.peer,
                    "client": getattr(caps, "node", None),
                    "priority": session.priority,
                    "connected": None if started is None else round(now - started, 1),
                }
            )
        return sorted(result, key=lambda s: s["jid"])

    async def kick(self, jid: str, reason: str = "kicked by an administrator") -> str:
        """End a session (a full JID) or every session of an account (a bare JID), with the stream error
        ``<policy-violation/>`` and ``reason`` as its text (RFC 6120 s4.9.3.14)."""
        try:
            target = parse_jid(jid)
        except JIDError as e:
            raise ControlError(f"{jid!r} is not a valid JID: {e}") from None
        if target.local is None:
            raise ControlError(f"{jid!r} is not a user's address")
        if target.resource is None:
            sessions = list(self.server.sessions.sessions_of(target))
        else:
            one = self.server.sessions.get(target)
            sessions = [one] if one is not None else []
        if not sessions:
            raise ControlError(f"{jid} has no session")
        for session in sessions:
            session.close("policy-violation", reason)
        log.info("kicked {jid} ({count} sessions): {reason}", jid=jid, count=len(sessions), reason=reason)
        return f"kicked {len(sessions)} session(s) of {jid}"

    async def announce(self, text: str, domain: str | None = None, subject: str | None = None) -> str:
        """A message from the domain to every online user (of ``domain``, or of every domain), as
        XEP-0133 s4.23 "Send Announcement to Online Users" does."""
        if not text.strip():
            raise ControlError("an announcement needs some text")
        domains = set(self._domains(domain))
        sent = 0
        for session in list(self.server.sessions):
            if session.jid is None or session.host not in domains:
                continue
            message = etree.Element("message", type="headline")
            message.set("from", session.host)
            message.set("to", str(session.jid))
            if subject:
                etree.SubElement(message, "subject").text = subject
            etree.SubElement(message, "body").text = text
            session.send(message)
            sent += 1
        log.info("announcement sent to {count} sessions", count=sent)
        return f"announced to {sent} session(s)"

    async def run(self, command: str, args: dict[str, Any]) -> dict[str, Any]:
        handler = self.table.get(command)
        if handler is None:
            return {"error": f"unknown command {command!r}"}
        try:
            return {"ok": await handler(**args)}
        except (ControlError, AccountError, PluginError, ConfigError) as e:
            return {"error": str(e)}
        except TypeError as e:
            return {"error": f"bad arguments for {command}: {e}"}


class ControlProtocol(amp.AMP):
    def logPrefix(self) -> str:
        return "control"

    def __init__(self, commands: Commands) -> None:
        super().__init__()
        self.commands = commands

    @Call.responder
    def call(self, command: str, args: str) -> Any:
        log.info("control command {command}", command=command)
        try:
            parsed = json.loads(args)
        except ValueError:
            return {"result": json.dumps({"error": "arguments are not JSON"})}
        d = ensureDeferred(self.commands.run(command, parsed if isinstance(parsed, dict) else {}))
        return d.addCallback(lambda r: {"result": json.dumps(r)})


class ControlFactory(Factory):
    noisy = False

    def __init__(self, server: XMPPServer) -> None:
        self.commands = Commands(server)

    def buildProtocol(self, addr: Any) -> ControlProtocol:
        return ControlProtocol(self.commands)
