"""XMPPServer: the service tree that config turns into a running server.

Children: storage, the plugin host, and one service per listener; the server itself owns the hosts
(one event bus per served domain), the session manager and the router. ``privilegedStartService`` binds
every listener synchronously, so a port in use is a ConfigError at start-up, not a log line later.
``stopService`` closes every stream with ``<system-shutdown/>`` and then stops storage.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lxml import etree
from twisted.application.service import MultiService
from twisted.internet import defer, task
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from xmppd.accounts import Accounts
from xmppd.config import Config, ConfigError
from xmppd.delivery import CoreDelivery
from xmppd.events import EventBus
from xmppd.log import logger, set_level
from xmppd.net import write_through_reactor
from xmppd.plugin import PluginManager
from xmppd.router import Router
from xmppd.sessions import SessionManager
from xmppd.stats import Stats
from xmppd.storage import StorageError, storage_from_config
from xmppd.storage.timed import TimedStorage
from xmppd.stream.c2s import C2SFactory

log = logger("xmppd.server")
#: Seconds shutdown waits for closed client streams to flush their last bytes.
CLOSE_WAIT = 3.0


class Host:
    """A served domain: its event bus and what its plugins declare for service discovery."""

    def __init__(self, server: XMPPServer, name: str) -> None:
        self.server = server
        self.name = name
        self.bus = EventBus()
        self.features: dict[str, int] = {}  # feature var -> number of plugins declaring it
        self.account_features: dict[str, int] = {}  # features of every account (disco#info to a bare JID)
        self.identities: list[tuple[str, str, str | None, str]] = []  # (category, type, name, owner)
        self.extensions: list[tuple[etree._Element, str]] = []  # XEP-0128 forms, with their owner
        self.items: list[tuple[str, str | None, str]] = []  # disco items: (jid, name, owner)

    def __repr__(self) -> str:
        return f"<Host {self.name}>"


class SessionEvent:
    """Fired as ``session-started`` / ``session-ended``."""

    def __init__(self, session: Any) -> None:
        self.session = session


class XMPPServer(MultiService):
    """The whole server. Pass ``reactor`` (or a MemoryReactorClock in tests); only xmppd.tap uses the
    global one."""

    def __init__(
        self,
        config: Config,
        *,
        reactor: Any,
        tls_context: Any = None,
        storage: Any = None,
        plugin_classes: tuple = (),
    ) -> None:
        super().__init__()
        self.config = config
        set_level(config.get("logging", "level"))
        self.reactor = reactor
        self.clock = reactor
        self.tls_context = tls_context
        self.started_at = reactor.seconds()
        self.default_domain = config.domains[0]
        self.hosts: dict[str, Host] = {d: Host(self, d) for d in config.domains}
        self.sessions = SessionManager(config.get("server", "max_sessions_per_user"))
        self.router = Router(self)
        #: Always-on counters (stanzas by transport and kind, authentication failures, logins).
        self.stats = Stats()
        #: The backend behind a TimedStorage, which measures latency while an observer is set (metrics).
        self.storage = TimedStorage(storage or storage_from_config(config))
        self.accounts = Accounts(self.storage)
        self.streams: set = set()
        from xmppd.stream.base import ConnectionLimiter

        self.connection_limiter = ConnectionLimiter(config.get("server", "max_connections_per_ip"))
        #: Domains served by something other than a local host: domain -> deliver(stanza). External
        #: components (XEP-0114) register here while connected.
        self.routes: dict[str, Any] = {}
        from xmppd.stream.component import install_component_routes

        install_component_routes(self)  # [components] domains route here, connected or not (XEP-0114)
        self.ports: dict[str, list[Any]] = {}
        #: What the HTTP site serves: path ("/xmpp-websocket") -> twisted.web resource, looked up on every
        #: request (plugins mount theirs with ``ctx.add_http_resource``). See xmppd.http.
        self.http_resources: dict[str, Any] = {}
        self.http_mounts: dict[str, list[tuple[str, Any]]] = {}  # path -> (plugin, resource) per domain
        delivery = CoreDelivery(self)
        self.s2s = None
        if config.get("s2s", "enabled"):
            from xmppd.stream.s2s import S2SManager

            self.s2s = S2SManager(self)
        for host in self.hosts.values():
            delivery.install(host.bus)
            if self.s2s is not None:
                self.s2s.install(host.bus)
        self.plugins = PluginManager(self, plugin_classes)
        self.plugins.configure(
            config
        )  # ConfigError for unknown plugins and bad options, before anything runs

    # -- lifecycle -----------------------------------------------------------------------------------------

    def listeners(self) -> list[tuple[str, str, Any]]:
        """(kind, endpoint description, factory) for every configured listener."""
        result = []
        for desc in self.config.get("listen", "c2s"):
            result.append(("c2s", desc, C2SFactory(self)))
        for desc in self.config.get("listen", "c2s_direct_tls"):
            if self.tls_context is None:
                raise ConfigError(
                    "direct TLS needs a certificate",
                    path=self.config.path,
                    key="[listen] c2s_direct_tls",
                    fix="configure [tls] or leave it empty",
                )
            factory = TLSMemoryBIOFactory(self.tls_context, False, C2SFactory(self, direct_tls=True))
            result.append(("c2s_direct_tls", desc, factory))
        for desc in self.config.get("listen", "s2s"):
            if self.s2s is not None:
                from xmppd.stream.s2s import IncomingS2SFactory

                result.append(("s2s", desc, IncomingS2SFactory(self.s2s)))
        for desc in self.config.get("listen", "component"):
            from xmppd.stream.component import ComponentFactory

            result.append(("component", desc, ComponentFactory(self)))
        http, https = self.config.get("listen", "http"), self.config.get("listen", "https")
        if http or https:
            from xmppd.http import install_core_resources
            from xmppd.http.site import make_site

            install_core_resources(self)
            for desc in http:
                result.append(("http", desc, make_site(self)))
            for desc in https:
                if self.tls_context is None:
                    raise ConfigError(
                        "HTTPS needs a certificate",
                        path=self.config.path,
                        key="[listen] https",
                        fix="configure [tls] or leave it empty",
                    )
                result.append(("https", desc, TLSMemoryBIOFactory(self.tls_context, False, make_site(self))))
        control = self.control_endpoint()
        if control:
            from xmppd.control import ControlFactory

            result.append(("control", control, ControlFactory(self)))
        return result

    @staticmethod
    def control_socket(config: Config) -> Path:
        """Where the control socket lives: ``[listen] control``, or xmppd.sock in data_dir."""
        configured = config.get("listen", "control")
        return Path(configured) if configured else config.data_dir / "xmppd.sock"

    def control_endpoint(self) -> str:
        path = str(self.control_socket(self.config).resolve()).replace(":", "\\:")
        return f"unix:{path}:mode=600:lockfile=1"

    def bind_listeners(self) -> None:
        """Bind every configured listener now (idempotent). ConfigError, with nothing left bound, if one
        cannot be bound. xmppd.tap calls this before twistd starts logging, so the error is one line."""
        if self.ports:
            return
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        for kind, desc, factory in self.listeners():
            self._listen(kind, desc, factory)

    def privilegedStartService(self) -> None:
        self.bind_listeners()
        super().privilegedStartService()

    def _listen(self, kind: str, desc: str, factory: Any) -> None:
        def fail(problem: str, fix: str) -> ConfigError:
            return ConfigError(problem, path=self.config.path, key=f"[listen] {kind}", fix=fix)

        try:
            endpoint = serverFromString(write_through_reactor(self.reactor), desc)
        except (ValueError, KeyError, TypeError) as e:
            raise fail(
                f"bad endpoint description {desc!r} ({e})",
                'use a Twisted endpoint like "tcp:5222:interface=127.0.0.1"',
            ) from None
        outcome: list[Any] = []
        endpoint.listen(factory).addBoth(outcome.append)
        if not outcome:
            raise fail(f"{desc!r} did not start listening at once", "use a tcp:, unix: or ssl: endpoint")
        result = outcome[0]
        if isinstance(result, Failure):
            error = result.value
            reason = error.socketError if isinstance(error, CannotListenError) else error
            self.stop_listening()
            raise fail(f"cannot listen on {desc!r}: {reason}", "choose a free port or stop the other server")
        self.ports.setdefault(kind, []).append(result)
        log.info("listening for {kind} on {address}", kind=kind, address=address(result))

    def _write_listeners_file(self) -> None:
        """data_dir/listeners.json: the bound addresses, for tools and tests using port 0. Written to a
        temporary file and renamed into place, so a reader never sees it half-written."""
        data = {kind: [address(p) for p in ports] for kind, ports in self.ports.items()}
        target = self.config.data_dir / "listeners.json"
        partial = target.with_suffix(".json.tmp")
        partial.write_text(json.dumps(data))
        os.replace(partial, target)

    def stop_listening(self) -> defer.Deferred:
        ports = [p for ps in self.ports.values() for p in ps]
        self.ports = {}
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])

    def startService(self) -> None:
        super().startService()
        self.started_at = self.reactor.seconds()
        # Plugins load once storage has started (its schema migrated), so that a database the server cannot
        # use stops it before any plugin reads from it. Memory storage starts at once: plugins load right
        # here, and their errors raise here.
        started = self.storage.start()
        if started.called and not isinstance(started.result, Failure):
            self._serve()
        else:
            started.addCallback(lambda _: self._serve()).addErrback(self._start_failed)

    def _serve(self) -> None:
        if not self.running:  # stopped while storage was starting
            return
        self.plugins.load_all()
        if self.ports:
            self._write_listeners_file()  # written last: its presence says the server is ready
        log.info("xmppd serving {domains}", domains=", ".join(self.hosts))

    @defer.inlineCallbacks
    def _closing_streams(self, limit: float) -> defer.Deferred:
        """Wait (at most ``limit`` seconds) until the closed streams have gone: what was written to them
        last (goodbyes, the stream error) reaches the clients before the reactor drops every
        connection at the end of shutdown."""
        deadline = self.reactor.seconds() + limit
        while self.streams and self.reactor.seconds() < deadline:
            yield task.deferLater(self.reactor, 0.02, lambda: None)

    def _start_failed(self, failure: Any) -> None:
        """Storage could not start (the database is unreachable, or its schema is newer than this code), or
        the plugins could not load: the server stops. A StorageError or ConfigError is the operator's to
        fix, and says how in one line; anything else is a bug, logged with its traceback. ``start_error``
        tells xmppd.tap to exit with status 1."""
        if failure.check(StorageError, ConfigError):
            self.start_error = f"xmppd: {failure.value}"
            log.critical("{line}", line=self.start_error)
        else:
            self.start_error = "xmppd: failed to start"
            log.failure("failed to start; stopping", failure)
        if self.reactor.running:
            self.reactor.stop()
        else:  # failed before the reactor ran (a dsn psycopg cannot parse)
            self.reactor.callWhenRunning(self.reactor.stop)

    @defer.inlineCallbacks
    def stopService(self) -> defer.Deferred:
        yield self.stop_listening()
        # Plugins say goodbye while every stream is still open (the MUC tells occupants with status 332).
        log.info("stopping: closing every stream")
        self.fire_global("server-stopping", None)
        for stream in list(self.streams):
            stream.close("system-shutdown")
        if self.s2s is not None:
            self.s2s.close_all()
        yield self._closing_streams(CLOSE_WAIT)
        self.plugins.unload_all()
        yield super().stopService()
        yield self.storage.stop()

    # -- sessions ------------------------------------------------------------------------------------------

    def session_started(self, session: Any) -> None:
        session.bound_at = self.clock.seconds()  # for `xmppdctl sessions` and the admin interfaces
        self.stats.session_started(session.kind)
        self.hosts[session.host].bus.fire("session-started", SessionEvent(session))

    def session_ended(self, session: Any) -> None:
        """A bound session is gone, for whatever reason: tell its contacts and plugins (RFC 6121 s4.5.2)."""
        was_available = session.priority is not None
        session.priority = None
        self.sessions.unbind(session)
        self.router.cancel_pending(lambda to: to == session.jid)
        if was_available:
            presence = etree.Element("presence", type="unavailable")
            presence.set("from", str(session.jid))
            self.router.dispatch(
                presence, session.jid, session.jid.bare, origin=session, presence_change="unavailable"
            )
        self.hosts[session.host].bus.fire("session-ended", SessionEvent(session))
        log.info("session {jid} ended", jid=session.jid)

    async def delete_account(
        self, account: Any, *, before_close: Any = None, reason: str = "account deleted"
    ) -> None:
        """Delete an account the way every path must (xmppdctl, in-band removal, admin commands):
        ``user-deleting`` first, while its data still exists (the roster cancels subscriptions), then the
        account and all its data, then its sessions end with ``<not-authorized/>`` and ``user-deleted``
        fires. AccountError if it does not exist. ``before_close(session)`` runs just before the sessions
        are closed (in-band removal answers the request there)."""
        if not await self.accounts.exists(account):
            from xmppd.accounts import AccountError

            raise AccountError(f"{account} does not exist")
        bus = self.hosts[account.domain].bus
        result = bus.fire("user-deleting", account)
        if isinstance(result, defer.Deferred):
            await result
        await self.accounts.delete(account)
        if before_close is not None:
            before_close()
        for session in list(self.sessions.sessions_of(account)):
            session.close("not-authorized", reason)
        bus.fire("user-deleted", account)

    def reload_config(self) -> list[str]:
        """Re-read the configuration file (SIGHUP, ``xmppdctl reload``) and apply plugin changes.

        A bad file is reported and changes nothing. Domains, listeners, TLS and storage need a restart.
        """
        from xmppd.config import load
        from xmppd.log import LogSettings

        if self.config.path is None:
            return []
        try:
            new = load(self.config.path)
            logging = LogSettings(new)  # opens [logging] file first: one it cannot open changes nothing
            try:
                changes = self.plugins.apply_config(new)
            except ConfigError:
                logging.discard()
                raise
        except ConfigError as e:
            log.error("configuration not reloaded: {error}", error=str(e))
            raise
        for section in ("server", "listen", "tls", "http", "storage"):  # [logging] applies at once
            if new.sections[section] != self.config.sections[section]:
                log.warn("[{section}] changed; restart xmppd to apply it", section=section)
        self.config.plugins = new.plugins
        self.config.hosts = new.hosts
        self.config.sections["logging"] = new.sections["logging"]
        logging.apply()
        log.info("configuration reloaded: {changes}", changes="; ".join(changes) or "no plugin changes")
        return changes

    def serves(self, domain: str) -> bool:
        """Whether ``domain`` is served here: a host, an external component or a plugin's service
        (``ctx.add_route``); s2s accepts streams and dialback for exactly these."""
        return domain in self.hosts or domain in self.routes

    def fire_global(self, name: str, data: Any) -> None:
        """Fire a server event on every host's bus."""
        for host in self.hosts.values():
            host.bus.fire(name, data)


def address(port: Any) -> str:
    """A listening port's address as text: host:port, or the UNIX socket path."""
    addr = port.getHost()
    if hasattr(addr, "port"):
        return f"{addr.host}:{addr.port}"
    name = getattr(addr, "name", addr)
    return name.decode() if isinstance(name, bytes) else str(name)
