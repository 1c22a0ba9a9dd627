"""Plugins: how features are written, found, configured, loaded and unloaded.

A plugin is a ``Plugin`` subclass in an ordinary Python module. It declares its name, options, the plugins
it requires, and in ``setup(ctx)`` hooks events and adds disco features through its ``Context`` (the whole
API a plugin needs; it never reaches into the server's internals). One instance runs per domain it is
enabled on.

Discovery uses Python entry points in the group ``xmppd.plugins`` (``name = package.module:Class``), for
the built-in plugins and third-party distributions alike, plus modules found in the directories listed in
``[plugins] plugin_paths``. docs/plugins.rst explains the choice over ``twisted.plugin.getPlugins``.

Loading, unloading and reloading happen while the server runs: everything a plugin registered through its
Context (hooks, features, identities, timers) is removed when it unloads, so no session notices.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from lxml import etree
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall

from xmppd.config import Config, ConfigError
from xmppd.log import logger

if TYPE_CHECKING:
    from xmppd.server import Host, XMPPServer

ENTRY_POINT_GROUP = "xmppd.plugins"
log = logger("xmppd.plugins")


class PluginError(Exception):
    """A plugin cannot be loaded, unloaded or reloaded; the message says why."""


@dataclass(frozen=True)
class Option:
    """A typed plugin option, declared on the plugin class and set in ``[plugins.NAME]``."""

    type: type
    default: Any
    help: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] | None = None
    item_type: type | None = None  # for list options

    def check(self, plugin: str, key: str, value: Any, path: str | None) -> Any:
        where = f"[plugins.{plugin}] {key}"
        ok = isinstance(value, self.type) and not (isinstance(value, bool) and self.type is not bool)
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        fix = f"{key} = {_toml(self.default)}" + (f" ({self.help})" if self.help else "")
        if not ok:
            raise ConfigError(f"expected {self.type.__name__}, got {value!r}", path=path, key=where, fix=fix)
        if self.item_type is not None and not all(isinstance(v, self.item_type) for v in value):
            raise ConfigError(f"expected a list of {self.item_type.__name__}", path=path, key=where, fix=fix)
        if self.min is not None and value < self.min:
            raise ConfigError(f"must be at least {self.min}", path=path, key=where, fix=fix)
        if self.max is not None and value > self.max:
            raise ConfigError(f"must be at most {self.max}", path=path, key=where, fix=fix)
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"must be one of {list(self.choices)}", path=path, key=where, fix=fix)
        return value


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


class Plugin:
    """Base class of every plugin. Subclasses set ``name`` and implement ``setup``."""

    name: ClassVar[str] = ""
    #: Plugins that must be loaded on the same domain first; loaded automatically.
    requires: ClassVar[tuple[str, ...]] = ()
    #: Options read from ``[plugins.NAME]``, validated at start-up.
    options: ClassVar[dict[str, Option]] = {}

    ctx: Context

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Check the options together, once each is valid on its own (e.g. a default within a maximum);
        raise ValueError saying what is wrong. Called when the configuration is read, so a mistake stops
        the server at start-up (or a reload) with one line naming ``[plugins.NAME]``."""

    def setup(self, ctx: Context) -> None:
        """Register hooks, features and timers. Called once per domain the plugin is enabled on."""

    def teardown(self) -> None:
        """Release anything not registered through the Context. Hooks and timers are removed for you."""


@dataclass
class Identity:
    category: str
    type: str
    name: str | None = None


class PluginStore:
    """A plugin's own per-user documents on one domain (the ``store`` named after the plugin)."""

    def __init__(self, server: XMPPServer, host: str, store: str) -> None:
        self._storage = server.storage
        self.host = host
        self.store = store

    def get(self, user: str) -> Deferred[Any | None]:
        return self._storage.get(self.host, self.store, user)

    def set(self, user: str, value: Any | None) -> Deferred[None]:
        return self._storage.set(self.host, self.store, user, value)

    def users(self) -> Deferred[list[str]]:
        return self._storage.users(self.host, self.store)


class PluginArchive:
    """A plugin's archive store on one domain: per-user lists of items (serialised stanzas) with a time
    and a JID, queried by range and paged (xmppd.storage.base.ArchiveQuery)."""

    def __init__(self, server: XMPPServer, host: str, store: str) -> None:
        self._storage = server.storage
        self.host = host
        self.store = store

    def append(
        self, user: str, value: str, *, when: float, with_: str | None = None, keep: int | None = None
    ) -> Deferred[str]:
        return self._storage.archive_append(
            self.host, self.store, user, value, when=when, with_=with_, keep=keep
        )

    def query(self, user: str, query: Any = None) -> Deferred[Any]:
        from xmppd.storage.base import ArchiveQuery

        return self._storage.archive_query(self.host, self.store, user, query or ArchiveQuery())

    def delete(
        self, user: str | None, *, before: float | None = None, ids: list[str] | None = None
    ) -> Deferred[int]:
        return self._storage.archive_delete(self.host, self.store, user, before=before, ids=ids)

    def users(self) -> Deferred[list[str]]:
        return self._storage.archive_users(self.host, self.store)


class PluginMap:
    """A plugin's map store on one domain: per user, many keys with JSON-serialisable values."""

    def __init__(self, server: XMPPServer, host: str, store: str) -> None:
        self._storage = server.storage
        self.host = host
        self.store = store

    def get(self, user: str, key: str) -> Deferred[Any | None]:
        return self._storage.map_get(self.host, self.store, user, key)

    def set(self, user: str, key: str, value: Any | None) -> Deferred[None]:
        return self._storage.map_set(self.host, self.store, user, key, value)

    def items(self, user: str) -> Deferred[dict[str, Any]]:
        return self._storage.map_items(self.host, self.store, user)


class Context:
    """What a plugin instance sees of the server: its domain, options, hooks, disco, storage, timers."""

    def __init__(self, manager: PluginManager, host: Host, plugin: Plugin, options: dict[str, Any]) -> None:
        self.manager = manager
        self.server = manager.server
        self.host = host
        self.domain = host.name
        self.plugin = plugin
        self.name = plugin.name
        self.options = options
        self.log = logger(f"xmppd.plugin.{plugin.name}")
        self.clock = self.server.clock
        self.sessions = self.server.sessions
        self._cleanups: list[Callable[[], None]] = []
        self._calls: set[Any] = set()  # pending call_later timers
        self._cleanups.append(self._cancel_calls)

    # options
    def option(self, key: str) -> Any:
        """The validated value of a declared option."""
        if key not in self.options:
            raise KeyError(f"plugin {self.name} declares no option {key!r}")
        return self.options[key]

    # events
    def hook(self, event: str, handler: Callable[[Any], Any], priority: float = 0) -> None:
        """Call ``handler(event)`` when ``event`` fires on this domain (see docs/plugins.rst for names)."""
        self._cleanups.append(self.host.bus.hook(event, handler, priority, owner=self.name))

    def hook_iq(
        self,
        type_: str,
        ns: str,
        name: str,
        handler: Callable[[Any], Any],
        to: Iterable[str] = ("host",),
        priority: float = 0,
    ) -> None:
        """Handle iqs of ``type_`` (get/set) whose payload is ``{ns}name``, addressed to ``to``: any of
        "host" (the domain), "self" (the sender's own account), "bare" (another account), "full"."""
        if type_ not in ("get", "set"):
            raise ValueError("hook_iq handles get and set; results come back through send_iq")
        for target in (to,) if isinstance(to, str) else to:
            self.hook(f"iq-{type_}/{target}/{ns}:{name}", handler, priority)

    def hook_stanza(
        self,
        kind: str,
        handler: Callable[[Any], Any],
        *,
        type_: str | Iterable[str] | None = None,
        to: Iterable[str] = ("bare", "full"),
        outbound: bool = False,
        priority: float = 0,
    ) -> None:
        """Handle ``message``, ``presence`` or ``iq`` stanzas addressed to ``to`` ("host", "bare", "full",
        and "self" for iqs), optionally only those of ``type_`` (for a message with no type attribute,
        "normal"; for presence, "available"; RFC 6121 s5.2.2, s4.7.1). ``outbound=True`` hooks the
        ``pre-`` events: stanzas local clients send, before routing."""
        if kind not in ("message", "presence", "iq"):
            raise ValueError(f"not a stanza kind: {kind!r}")
        wanted = None if type_ is None else {type_} if isinstance(type_, str) else set(type_)
        default = {"message": "normal", "presence": "available"}.get(kind)

        def filtered(event: Any) -> Any:
            if wanted is not None and (event.type or default) not in wanted:
                return None
            return handler(event)

        prefix = "pre-" if outbound else ""
        for target in (to,) if isinstance(to, str) else to:
            self.hook(f"{prefix}{kind}/{target}", filtered if wanted is not None else handler, priority)

    def fire(self, event: str, data: Any) -> Any:
        """Fire an event on this domain's bus (plugins define their own events this way)."""
        return self.host.bus.fire(event, data)

    # disco (XEP-0030), read by the disco plugin
    def add_feature(self, var: str, *, account: bool = False) -> None:
        """Announce a feature in the domain's disco#info, or with ``account=True`` in every account's."""
        features = self.host.account_features if account else self.host.features
        features[var] = features.get(var, 0) + 1

        def remove() -> None:
            features[var] -= 1
            if not features[var]:
                del features[var]

        self._cleanups.append(remove)

    def add_identity(self, category: str, type_: str, name: str | None = None) -> None:
        entry = (category, type_, name, self.name)
        self.host.identities.append(entry)
        self._cleanups.append(lambda: self.host.identities.remove(entry))

    def add_extension(self, form: etree._Element) -> None:
        """A XEP-0128 data form added to the domain's disco#info."""
        entry = (form, self.name)
        self.host.extensions.append(entry)
        self._cleanups.append(lambda: self.host.extensions.remove(entry))

    def add_item(self, jid: str, name: str | None = None) -> None:
        """A disco#items entry of the domain (a component, a service)."""
        entry = (jid, name, self.name)
        self.host.items.append(entry)
        self._cleanups.append(lambda: self.host.items.remove(entry))

    # services on their own domains (MUC, pubsub, ...)
    def add_route(self, domain: str, deliver: Callable[[etree._Element], None]) -> None:
        """Serve ``domain`` (e.g. ``conference.example.org``) in-process: every stanza addressed to it,
        from local clients and over s2s alike, is handed to ``deliver(stanza)`` with ``from`` and ``to``
        set, until the plugin unloads. The service answers stanzas itself and sends with ``ctx.send``.
        PluginError if the domain is already served (a host, a component, another plugin)."""
        routes = self.server.routes
        if domain in self.server.hosts or domain in routes:
            raise PluginError(f"plugin {self.name}: {domain} is already served")
        routes[domain] = deliver

        def remove() -> None:
            if routes.get(domain) is deliver:
                del routes[domain]

        self._cleanups.append(remove)

    # HTTP (xmppd.http)
    def add_http_resource(self, path: str, resource: Any) -> None:
        """Serve a twisted.web ``resource`` at ``path`` (e.g. ``"/upload"``, below the site root) on the
        ``[listen] http``/``https`` listeners, until the plugin unloads. Paths are server-wide: a plugin
        enabled on several domains may mount the same path from each (the first mounted serves it until it
        unloads); PluginError if the core or another plugin already serves it."""
        from xmppd.http import normalize_path

        try:
            key = normalize_path(path)
        except ValueError as e:
            raise PluginError(f"plugin {self.name}: {e}") from None
        resources, mounts = self.server.http_resources, self.server.http_mounts
        stack = mounts.get(key, [])
        if key in resources and not any(owner == self.name for owner, _ in stack):
            raise PluginError(f"plugin {self.name}: {key} is already served")
        entry = (self.name, resource)
        mounts.setdefault(key, []).append(entry)
        resources.setdefault(key, resource)

        def remove() -> None:
            stack = mounts.get(key, [])
            if entry in stack:
                stack.remove(entry)
            if resources.get(key) is resource:
                if stack:
                    resources[key] = stack[0][1]
                else:
                    del resources[key]
            if not stack:
                mounts.pop(key, None)

        self._cleanups.append(remove)

    # stanzas
    def send(self, stanza: etree._Element) -> None:
        """Route a stanza (``from`` and ``to`` set) as the server."""
        self.server.router.route(stanza)

    def send_iq(self, iq: etree._Element, timeout: float = 60) -> Deferred[etree._Element]:
        """Send an iq get/set; the Deferred fires with the result or fails with IQError / IQTimeout."""
        return self.server.router.send_iq(iq, timeout)

    # storage
    def store(self, name: str | None = None) -> PluginStore:
        """Per-user documents for this plugin on this domain (store ``name``, default the plugin's name)."""
        return PluginStore(self.server, self.domain, name or self.name)

    def archive(self, name: str | None = None) -> PluginArchive:
        """Per-user archives for this plugin on this domain (store ``name``, default the plugin's name)."""
        return PluginArchive(self.server, self.domain, name or self.name)

    def map(self, name: str | None = None) -> PluginMap:
        """Per-user maps of keys for this plugin on this domain (store ``name``, default its name)."""
        return PluginMap(self.server, self.domain, name or self.name)

    # timers
    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> Any:
        """A one-shot timer (an IDelayedCall, which may be ``cancel()``-ed), cancelled if the plugin
        unloads first. Only pending timers are remembered, so a plugin may set timers forever."""
        self._calls = {c for c in self._calls if c.active()}
        call = self.clock.callLater(delay, fn, *args)
        self._calls.add(call)
        return call

    def _cancel_calls(self) -> None:
        for call in self._calls:
            if call.active():
                call.cancel()
        self._calls = set()

    def every(self, interval: float, fn: Callable[[], Any]) -> LoopingCall:
        """A repeating timer, stopped when the plugin unloads."""
        loop = LoopingCall(fn)
        loop.clock = self.clock
        loop.start(interval, now=False).addErrback(lambda f: self.log.failure("timer failed", f))
        self._cleanups.append(lambda: loop.running and loop.stop())
        return loop

    def depends(self, name: str) -> Plugin:
        """The instance of a plugin this one requires, on the same domain."""
        if name not in type(self.plugin).requires:
            raise PluginError(f"plugin {self.name} must list {name!r} in requires to use it")
        return self.manager.instance(self.domain, name)

    def close(self) -> None:
        for cleanup in reversed(self._cleanups):
            try:
                cleanup()
            except Exception:
                self.log.failure("cleanup of plugin {plugin} failed", plugin=self.name)
        self._cleanups.clear()


@dataclass
class Discovered:
    """A plugin class that can be loaded, and where it came from."""

    name: str
    origin: str  # "entry point" or a file path
    module: str
    loader: Callable[[], type[Plugin]]
    cls: type[Plugin] | None = None
    reimport: bool = True  # False for classes handed over directly: reload re-instantiates only

    def load_class(self) -> type[Plugin]:
        if self.cls is None:
            try:
                cls = self.loader()
            except Exception as e:
                raise PluginError(f"plugin {self.name} ({self.origin}) failed to import: {e}") from e
            if not (inspect.isclass(cls) and issubclass(cls, Plugin)):
                raise PluginError(f"{self.origin} for {self.name!r} is not an xmppd.plugin.Plugin subclass")
            if cls.name != self.name:
                raise PluginError(
                    f"{self.origin} registers {self.name!r} but the class is named {cls.name!r}"
                )
            self.cls = cls
        return self.cls


@dataclass
class Loaded:
    instance: Plugin
    context: Context


@dataclass
class _HostPlugins:
    loaded: dict[str, Loaded] = field(default_factory=dict)  # in load order


def discover(plugin_paths: Iterable[str] = ()) -> dict[str, Discovered]:
    """Every installed plugin: entry points of group ``xmppd.plugins``, then ``plugin_paths`` modules
    (a later definition of the same name wins, so a development copy overrides an installed one)."""
    found: dict[str, Discovered] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found[ep.name] = Discovered(ep.name, f"entry point {ep.value}", ep.module, ep.load)
    for directory in plugin_paths:
        for path in sorted(Path(directory).glob("*.py")):
            if path.name.startswith("_"):
                continue
            for name, cls_loader, module in _scan_file(path):
                found[name] = Discovered(name, str(path), module, cls_loader)
    return found


def _scan_file(path: Path) -> list[tuple[str, Callable[[], type[Plugin]], str]]:
    """Import a plugin_paths module and list the Plugin subclasses it defines."""
    module_name = f"xmppd_local_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        return []
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[module_name]
        raise PluginError(f"{path} failed to import: {e}") from e
    result = []
    for obj in vars(module).values():
        if inspect.isclass(obj) and issubclass(obj, Plugin) and obj.__module__ == module_name and obj.name:
            result.append((obj.name, (lambda cls=obj: cls), module_name))
    return result


class PluginManager:
    """Discovers plugins, validates their configuration, and loads them per domain."""

    def __init__(self, server: XMPPServer, classes: Iterable[type[Plugin]] = ()) -> None:
        self.server = server
        #: Plugin classes given directly (tests, embedding), available besides the discovered ones.
        self.given = {cls.name: cls for cls in classes}
        self.available: dict[str, Discovered] = {}
        self.options: dict[str, dict[str, Any]] = {}
        self._hosts: dict[str, _HostPlugins] = {name: _HostPlugins() for name in server.hosts}
        self._config: Config | None = None

    # -- configuration -------------------------------------------------------------------------------------

    def configure(self, config: Config) -> None:
        """Discover plugins and validate ``[plugins]`` and ``[hosts]``; ConfigError on any problem."""
        try:
            self.available = discover(config.plugins.plugin_paths)
            for name, cls in self.given.items():
                self.available[name] = Discovered(
                    name,
                    f"class {cls.__module__}.{cls.__qualname__}",
                    cls.__module__,
                    lambda cls=cls: cls,
                    reimport=False,
                )
        except PluginError as e:
            raise config.error(
                str(e), key="[plugins] plugin_paths", fix="correct or remove that module"
            ) from None
        options = {}
        for name in config.plugins.options:
            if name not in self.available:
                raise config.error(
                    "no such plugin is installed",
                    key=f"[plugins.{name}]",
                    fix=f"install it or remove the table; installed: {self._names()}",
                )
        for domain in self.server.hosts:
            for name in self.resolve(config.plugins_for(domain), config, domain):
                if name not in options:
                    options[name] = self._options(name, config)
        self.options = options
        self._config = config

    def _names(self) -> str:
        return ", ".join(sorted(self.available)) or "none"

    def resolve(self, names: Iterable[str], config: Config, domain: str) -> list[str]:
        """The load order of ``names`` and their requirements (requirements first)."""
        order: list[str] = []
        key = (
            f'[hosts."{domain}"] plugins'
            if config.hosts.get(domain, None) and config.hosts[domain].plugins is not None
            else "[plugins] enabled"
        )

        def visit(name: str, chain: tuple[str, ...]) -> None:
            if name in order:
                return
            if name in chain:
                raise config.error(
                    f"plugins require each other in a cycle: {' -> '.join((*chain, name))}", key=key
                )
            found = self.available.get(name)
            if found is None:
                if chain:
                    raise config.error(
                        f"plugin {chain[-1]!r} requires {name!r}, which is not installed",
                        key=key,
                        fix=f"install the plugin {name!r}",
                    )
                raise config.error(
                    f"unknown plugin {name!r}",
                    key=key,
                    fix=f"remove it or install it; installed: {self._names()}",
                )
            try:
                cls = found.load_class()
            except PluginError as e:
                raise config.error(str(e), key=key) from None
            for required in cls.requires:
                visit(required, (*chain, name))
            order.append(name)

        for name in names:
            visit(name, ())
        return order

    def _options(self, name: str, config: Config) -> dict[str, Any]:
        cls = self.available[name].load_class()
        given = config.plugins.options.get(name, {})
        values = {}
        for key, value in given.items():
            if key not in cls.options:
                declared = ", ".join(cls.options) or "none"
                raise config.error(
                    "unknown option",
                    key=f"[plugins.{name}] {key}",
                    fix=f"remove it; {name} declares: {declared}",
                )
            values[key] = cls.options[key].check(name, key, value, config.path)
        for key, opt in cls.options.items():
            values.setdefault(key, opt.default)
        try:
            cls.check_options(values)
        except ValueError as e:
            raise config.error(str(e), key=f"[plugins.{name}]", fix="correct the options") from None
        return values

    # -- loading -------------------------------------------------------------------------------------------

    def load_all(self) -> None:
        config = self._config
        for domain in self.server.hosts:
            for name in self.resolve(config.plugins_for(domain), config, domain):
                self.load(name, domain)

    def unload_all(self) -> None:
        for domain, state in self._hosts.items():
            for name in reversed(list(state.loaded)):
                self.unload(name, domain, force=True)

    def load(self, name: str, domain: str) -> None:
        """Load ``name`` (and what it requires) on ``domain``."""
        state = self._hosts[domain]
        if name in state.loaded:
            return
        found = self.available.get(name)
        if found is None:
            raise PluginError(f"unknown plugin {name!r}; installed: {self._names()}")
        cls = found.load_class()
        for required in cls.requires:
            if required not in self.available:
                raise PluginError(f"plugin {name!r} requires {required!r}, which is not installed")
            self.load(required, domain)
        if name not in self.options:
            self.options[name] = self._options(name, self._config)
        host = self.server.hosts[domain]
        instance = cls()
        ctx = Context(self, host, instance, dict(self.options[name]))
        instance.ctx = ctx
        try:
            instance.setup(ctx)
        except Exception as e:
            ctx.close()
            log.failure("plugin {plugin} failed to set up on {domain}", plugin=name, domain=domain)
            raise PluginError(f"plugin {name!r} failed to set up on {domain}: {e}") from e
        state.loaded[name] = Loaded(instance, ctx)
        log.info("plugin {plugin} loaded on {domain}", plugin=name, domain=domain)
        host.bus.fire("plugin-loaded", PluginEvent(name, domain))

    def dependents(self, name: str, domain: str) -> list[str]:
        return [
            other
            for other, entry in self._hosts[domain].loaded.items()
            if name in type(entry.instance).requires
        ]

    def unload(self, name: str, domain: str, *, force: bool = False) -> None:
        """Unload ``name`` from ``domain``. Refused while a loaded plugin requires it, unless ``force``."""
        state = self._hosts[domain]
        entry = state.loaded.get(name)
        if entry is None:
            raise PluginError(f"plugin {name!r} is not loaded on {domain}")
        users = self.dependents(name, domain)
        if users and not force:
            raise PluginError(
                f"plugin {name!r} is required by {', '.join(users)} on {domain}; unload those first"
            )
        entry.context.close()
        try:
            entry.instance.teardown()
        except Exception:
            log.failure("plugin {plugin} failed to tear down", plugin=name)
        del state.loaded[name]
        log.info("plugin {plugin} unloaded from {domain}", plugin=name, domain=domain)
        self.server.hosts[domain].bus.fire("plugin-unloaded", PluginEvent(name, domain))

    def reload(self, name: str, domains: Iterable[str] | None = None) -> None:
        """Re-import the plugin's module and load the new code where it was loaded (and its dependents)."""
        found = self.available.get(name)
        if found is None:
            raise PluginError(f"unknown plugin {name!r}")
        where = [d for d in (domains or self.server.hosts) if name in self._hosts[d].loaded]
        chains = {d: self._dependents_closure(name, d) for d in where}
        for domain in where:
            for dependent in reversed(chains[domain]):
                self.unload(dependent, domain, force=True)
            self.unload(name, domain, force=True)
        module = sys.modules.get(found.module) if found.reimport else None
        if module is not None:
            try:
                importlib.reload(module)
            except Exception as e:
                raise PluginError(f"plugin {name!r} failed to re-import: {e}") from e
            cls = getattr(module, getattr(found.cls, "__name__", ""), None)
            found.cls = cls if cls is not None else None
        for domain in where:
            self.load(name, domain)
            for dependent in chains[domain]:
                self.load(dependent, domain)

    def _dependents_closure(self, name: str, domain: str) -> list[str]:
        result: list[str] = []
        for dependent in self.dependents(name, domain):
            for inner in [dependent, *self._dependents_closure(dependent, domain)]:
                if inner not in result:
                    result.append(inner)
        return result

    def apply_config(self, config: Config) -> list[str]:
        """Bring loaded plugins in line with a new configuration (SIGHUP / ``xmppdctl reload``).

        Validates everything first (ConfigError leaves the running set untouched), then unloads plugins no
        longer enabled, reloads those whose options changed, and loads new ones. Returns what changed.
        """
        old_options = self.options
        self.configure(config)
        changes = []
        for domain in self.server.hosts:
            wanted = self.resolve(config.plugins_for(domain), config, domain)
            state = self._hosts[domain]
            for name in reversed(list(state.loaded)):
                if name not in wanted:
                    self.unload(name, domain, force=True)
                    changes.append(f"unloaded {name} on {domain}")
            for name in wanted:
                if name in state.loaded and old_options.get(name) != self.options.get(name):
                    self.unload(name, domain, force=True)
                    self.load(name, domain)
                    changes.append(f"reloaded {name} on {domain}")
                elif name not in state.loaded:
                    self.load(name, domain)
                    changes.append(f"loaded {name} on {domain}")
        self.server.fire_global("config-reloaded", changes)
        return changes

    # -- introspection ------------------------------------------------------------------------------------

    def instance(self, domain: str, name: str) -> Plugin:
        entry = self._hosts[domain].loaded.get(name)
        if entry is None:
            raise PluginError(f"plugin {name!r} is not loaded on {domain}")
        return entry.instance

    def loaded(self, domain: str) -> list[str]:
        return list(self._hosts[domain].loaded)

    def describe(self) -> list[dict[str, Any]]:
        """Every discovered plugin with where it came from and the domains it is enabled and loaded on."""
        config = self._config
        rows = []
        for name, found in sorted(self.available.items()):
            enabled = [d for d in self.server.hosts if name in config.plugins_for(d)]
            loaded = [d for d in self.server.hosts if name in self._hosts[d].loaded]
            rows.append({"name": name, "origin": found.origin, "enabled": enabled, "loaded": loaded})
        return rows


@dataclass(frozen=True)
class PluginEvent:
    """Fired as ``plugin-loaded`` and ``plugin-unloaded``."""

    name: str
    domain: str
