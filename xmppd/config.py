"""Server configuration: a TOML file turned into typed, validated settings.

Every key the server understands is declared once in ``SCHEMA`` with its type, default and a hint on
how to fix a bad value. An unknown section or key, or a value of the wrong type, raises ``ConfigError``
naming the file, the key and the fix, so start-up stops with one clear line instead of a traceback.

Plugin options (``[plugins.NAME]``) are validated later by the plugin that declares them, and per-domain
settings live in ``[hosts."example.org"]``.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_PLUGINS = [
    "disco",
    "ping",
    "version",
    "time",
    "last",
    "contact_info",
    "roster",
    "presence",
    "offline",
    "blocking",
    "vcard",
    "private",
    "caps",
    "muc",
    "adhoc",
    "admin_commands",
    "webadmin",
]


class ConfigError(Exception):
    """A configuration problem, rendered as ``file: [section] key: problem; fix: ...``."""

    def __init__(
        self, problem: str, *, path: str | None = None, key: str | None = None, fix: str | None = None
    ):
        self.problem = problem
        self.path = path
        self.key = key
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = []
        if self.path:
            parts.append(f"{self.path}:")
        if self.key:
            parts.append(f"{self.key}:")
        parts.append(self.problem)
        text = " ".join(parts)
        if self.fix:
            text += f"; fix: {self.fix}"
        return text


@dataclass(frozen=True)
class Key:
    """One configuration key: its type, default and a fix hint for bad values."""

    type: type | tuple[type, ...]
    default: Any
    fix: str
    item_type: type | None = None  # for lists
    minimum: int | None = None


SCHEMA: dict[str, dict[str, Key]] = {
    "server": {
        "domains": Key(list, ["localhost"], 'domains = ["example.org"]', item_type=str),
        "data_dir": Key(str, "xmppd-data", 'data_dir = "/var/lib/xmppd"'),
        "max_stanza_size": Key(int, 262144, "max_stanza_size = 262144 (bytes)", minimum=10000),
        "auth_timeout": Key((int, float), 30, "auth_timeout = 30 (seconds)", minimum=1),
        "admins": Key(list, [], 'admins = ["admin@example.org"]', item_type=str),
        "max_sessions_per_user": Key(int, 10, "max_sessions_per_user = 10", minimum=1),
        "max_failed_auth": Key(int, 3, "max_failed_auth = 3", minimum=1),
        "max_connections_per_ip": Key(int, 100, "max_connections_per_ip = 100", minimum=1),
    },
    "listen": {
        "c2s": Key(
            list, ["tcp:5222:interface=127.0.0.1"], 'c2s = ["tcp:5222:interface=127.0.0.1"]', item_type=str
        ),
        "c2s_direct_tls": Key(list, [], 'c2s_direct_tls = ["tcp:5223:interface=127.0.0.1"]', item_type=str),
        "s2s": Key(
            list,
            ["tcp:5269:interface=127.0.0.1"],
            's2s = ["tcp:5269"] (to federate with the world)',
            item_type=str,
        ),
        "component": Key(list, [], 'component = ["tcp:5347:interface=127.0.0.1"]', item_type=str),
        "http": Key(
            list,
            ["tcp:5280:interface=127.0.0.1"],
            'http = ["tcp:5280:interface=127.0.0.1"] (WebSocket, BOSH, host-meta; [] for none)',
            item_type=str,
        ),
        "https": Key(
            list, [], 'https = ["tcp:5281:interface=127.0.0.1"] (uses the [tls] certificate)', item_type=str
        ),
        "control": Key(
            str, "", 'control = "/run/xmppd/xmppd.sock" (a UNIX socket path; "" means data_dir/xmppd.sock)'
        ),
    },
    "tls": {
        "certificate": Key(str, "", 'certificate = "/etc/xmppd/fullchain.pem" (or "" for self-signed)'),
        "key": Key(str, "", 'key = "/etc/xmppd/privkey.pem" (or "" for self-signed)'),
        "required": Key(bool, True, "required = true"),
    },
    "s2s": {
        "enabled": Key(bool, True, "enabled = true (false: no federation; stanzas to other domains bounce)"),
        "tls_required": Key(bool, True, "tls_required = true (STARTTLS on every s2s stream)"),
        "require_valid_certificates": Key(
            bool, False, "require_valid_certificates = true (only peers whose certificate verifies)"
        ),
        "ca_file": Key(
            str, "", 'ca_file = "/etc/ssl/certs/ca-certificates.crt" ("": the system trust store)'
        ),
        "dialback": Key(bool, True, "dialback = true (XEP-0220 for peers without a verifiable certificate)"),
        "connect_timeout": Key(
            (int, float), 30, "connect_timeout = 30 (seconds to set up a stream)", minimum=1
        ),
        "idle_timeout": Key(
            (int, float), 300, "idle_timeout = 300 (seconds before an unused stream closes)", minimum=1
        ),
        "max_stanza_size": Key(int, 524288, "max_stanza_size = 524288 (bytes)", minimum=10000),
        "queue_size": Key(
            int, 1000, "queue_size = 1000 (stanzas held per remote domain while connecting)", minimum=1
        ),
        "dialback_secret": Key(str, "", 'dialback_secret = "" (empty: random per start)'),
    },
    "http": {
        "cors_origins": Key(
            list, [], 'cors_origins = ["https://chat.example.org"] ("*" allows every origin)', item_type=str
        ),
        "consider_secure": Key(
            bool,
            False,
            "consider_secure = true (plain HTTP is behind a TLS-terminating proxy: offer SASL over it)",
        ),
    },
    "storage": {
        "backend": Key(str, "sqlite", 'backend = "sqlite", "postgresql" or "memory"'),
        "dsn": Key(
            str, "", 'dsn = "postgresql://xmppd@localhost:5432/xmppd" (only with backend = "postgresql")'
        ),
        "pool_size": Key(int, 5, "pool_size = 5 (PostgreSQL connections)", minimum=1),
        "cache_mb": Key(
            int, 16, "cache_mb = 16 (MiB of account documents kept in memory; 0: none)", minimum=0
        ),
    },
    "logging": {
        "level": Key(str, "info", 'level = "info" (debug, info, warn, error)'),
        "levels": Key(
            dict,
            {},
            'levels = { "xmppd.plugin.muc" = "debug", "xmppd.s2s" = "warn" } (namespace prefix = level)',
        ),
        "format": Key(str, "text", 'format = "text" (twistd\'s lines) or "json" (one JSON object per line)'),
        "file": Key(str, "", 'file = "/var/log/xmppd/xmppd.log" ("" for twistd\'s log)'),
    },
}

STORAGE_BACKENDS = ("sqlite", "postgresql", "memory")
LOG_LEVELS = ("debug", "info", "warn", "error")
LOG_FORMATS = ("text", "json")


@dataclass
class PluginsConfig:
    """``[plugins]``: which plugins are enabled, where to find unpackaged ones, and their options."""

    enabled: list[str] = field(default_factory=lambda: list(DEFAULT_PLUGINS))
    plugin_paths: list[str] = field(default_factory=list)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class HostConfig:
    """``[hosts."domain"]``: per-domain overrides (for now: the enabled plugin list)."""

    plugins: list[str] | None = None


@dataclass
class Config:
    """The whole validated configuration. ``path`` is the file it came from (None for defaults)."""

    path: str | None
    sections: dict[str, dict[str, Any]]
    plugins: PluginsConfig
    hosts: dict[str, HostConfig]
    s2s_routes: dict[str, str] = field(default_factory=dict)
    components: dict[str, str] = field(default_factory=dict)

    def get(self, section: str, key: str) -> Any:
        return self.sections[section][key]

    @property
    def domains(self) -> list[str]:
        return self.sections["server"]["domains"]

    @property
    def data_dir(self) -> Path:
        return Path(self.sections["server"]["data_dir"])

    def plugins_for(self, domain: str) -> list[str]:
        """The plugin names enabled on ``domain``: its own list if it has one, else the server's."""
        host = self.hosts.get(domain)
        if host is not None and host.plugins is not None:
            return host.plugins
        return self.plugins.enabled

    def error(self, problem: str, key: str | None = None, fix: str | None = None) -> ConfigError:
        """A ConfigError located in this configuration's file."""
        return ConfigError(problem, path=self.path or "(defaults)", key=key, fix=fix)


def _type_name(t: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list"}
    names[dict] = "a table"
    if isinstance(t, tuple):
        return " or ".join(names.get(x, x.__name__) for x in t)
    return names.get(t, t.__name__)


def _check_value(path: str | None, where: str, spec: Key, value: Any) -> Any:
    def fail(problem: str) -> ConfigError:
        return ConfigError(problem, path=path, key=where, fix=spec.fix)

    ok = isinstance(value, spec.type) and not (isinstance(value, bool) and spec.type in (int, (int, float)))
    if not ok:
        raise fail(f"expected {_type_name(spec.type)}, got {value!r}")
    if spec.item_type is not None:
        for item in value:
            if not isinstance(item, spec.item_type):
                raise fail(f"expected a list of {_type_name(spec.item_type)}s, found {item!r}")
    if spec.minimum is not None and value < spec.minimum:
        raise fail(f"must be at least {spec.minimum}, got {value!r}")
    return value


def _string_list(path: str | None, where: str, value: Any, fix: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"expected a list of strings, got {value!r}", path=path, key=where, fix=fix)
    return value


def parse(data: dict[str, Any], path: str | None = None) -> Config:
    """Validate a parsed TOML document and return a Config with defaults filled in."""
    data = dict(data)
    routes_table: Any = {}
    if isinstance(data.get("s2s"), dict):  # [s2s.routes] is a subtable, not a key of [s2s]
        data["s2s"] = dict(data["s2s"])
        routes_table = data["s2s"].pop("routes", {})
    sections: dict[str, dict[str, Any]] = {}
    for name, keys in SCHEMA.items():
        given = data.get(name, {})
        if not isinstance(given, dict):
            raise ConfigError(
                f"expected a table [{name}]", path=path, key=f"[{name}]", fix=f"write the keys under [{name}]"
            )
        values = {}
        for key, value in given.items():
            if key not in keys:
                known = ", ".join(keys)
                raise ConfigError(
                    "unknown key", path=path, key=f"[{name}] {key}", fix=f"remove it; known keys: {known}"
                )
            values[key] = _check_value(path, f"[{name}] {key}", keys[key], value)
        for key, spec in keys.items():
            values.setdefault(key, spec.default if not isinstance(spec.default, list) else list(spec.default))
        sections[name] = values

    for name in data:
        if name not in SCHEMA and name not in ("plugins", "hosts", "components"):
            known = ", ".join([*SCHEMA, "plugins", "hosts", "components"])
            raise ConfigError("unknown section", path=path, key=f"[{name}]", fix=f"remove it; known: {known}")

    server = sections["server"]
    if not server["domains"]:
        raise ConfigError(
            "no domain to serve", path=path, key="[server] domains", fix=SCHEMA["server"]["domains"].fix
        )
    from xmppd.jid import JIDError, prep_domain

    prepared = []
    for domain in server["domains"]:
        try:
            prepared.append(prep_domain(domain))
        except JIDError as e:
            raise ConfigError(
                f"{domain!r} is not a valid domain ({e})",
                path=path,
                key="[server] domains",
                fix="use a DNS name",
            ) from None
    server["domains"] = prepared
    if sections["storage"]["backend"] not in STORAGE_BACKENDS:
        raise ConfigError(
            f"unknown backend {sections['storage']['backend']!r}",
            path=path,
            key="[storage] backend",
            fix=SCHEMA["storage"]["backend"].fix,
        )
    _check_storage(sections["storage"], path)
    _check_logging(sections["logging"], path)
    tls = sections["tls"]
    if bool(tls["certificate"]) != bool(tls["key"]):
        raise ConfigError(
            "certificate and key must be given together",
            path=path,
            key="[tls] certificate",
            fix="set both [tls] certificate and key, or neither for a self-signed certificate",
        )

    plugins = _parse_plugins(data.get("plugins", {}), path)
    hosts = _parse_hosts(data.get("hosts", {}), path, prepared)
    routes = _parse_routes(routes_table, path)
    components = _parse_components(data.get("components", {}), path, prepared)
    return Config(
        path=path, sections=sections, plugins=plugins, hosts=hosts, s2s_routes=routes, components=components
    )


def _check_storage(storage: dict[str, Any], path: str | None) -> None:
    """``dsn`` is required by the postgresql backend and refused by the others, so that a configuration
    never looks as if it used a database it does not."""
    dsn = storage["dsn"]
    if storage["backend"] != "postgresql":
        if dsn:
            raise ConfigError(
                f'a dsn is only used with backend = "postgresql" (backend is {storage["backend"]!r})',
                path=path,
                key="[storage] dsn",
                fix='remove dsn, or set backend = "postgresql"',
            )
        return
    if not dsn:
        raise ConfigError(
            "the postgresql backend needs a dsn",
            path=path,
            key="[storage] dsn",
            fix=SCHEMA["storage"]["dsn"].fix,
        )
    try:
        from psycopg import Error
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        raise ConfigError(
            "the postgresql backend needs psycopg",
            path=path,
            key="[storage] backend",
            fix="pip install 'psycopg[binary]>=3.1'",
        ) from None
    try:
        conninfo_to_dict(dsn)
    except Error as e:
        raise ConfigError(
            f"not a PostgreSQL connection string ({str(e).strip()})",
            path=path,
            key="[storage] dsn",
            fix=SCHEMA["storage"]["dsn"].fix,
        ) from None


def _check_logging(logging: dict[str, Any], path: str | None) -> None:
    """Levels are debug, info, warn or error; ``levels`` maps logger namespaces to levels (nested tables,
    which unquoted dotted keys such as ``xmppd.s2s = "warn"`` make, are joined back with dots); the format
    is text or json. Whether ``file`` can be opened is checked when it is opened (xmppd.log)."""

    def fail(problem: str, key: str, fix_of: str) -> ConfigError:
        return ConfigError(problem, path=path, key=key, fix=SCHEMA["logging"][fix_of].fix)

    if logging["level"] not in LOG_LEVELS:
        raise fail(f"unknown level {logging['level']!r}", "[logging] level", "level")
    levels: dict[str, str] = {}
    pending = [("", logging["levels"])]
    while pending:
        prefix, table = pending.pop()
        for name, value in table.items():
            namespace = f"{prefix}.{name}" if prefix else name
            where = f'[logging] levels "{namespace}"'
            if isinstance(value, dict):
                pending.append((namespace, value))
            elif not re.fullmatch(r"[^\s.]+(\.[^\s.]+)*", namespace):
                raise fail("not a logger namespace (dotted names, no spaces)", where, "levels")
            elif value not in LOG_LEVELS:
                raise fail(f"unknown level {value!r}; levels are {', '.join(LOG_LEVELS)}", where, "levels")
            else:
                levels[namespace] = value
    logging["levels"] = levels
    if logging["format"] not in LOG_FORMATS:
        raise fail(f"unknown format {logging['format']!r}", "[logging] format", "format")


def _parse_plugins(given: Any, path: str | None) -> PluginsConfig:
    if not isinstance(given, dict):
        raise ConfigError(
            "expected a table [plugins]", path=path, key="[plugins]", fix='[plugins] enabled = ["disco"]'
        )
    result = PluginsConfig()
    for key, value in given.items():
        if key == "enabled":
            result.enabled = _string_list(path, "[plugins] enabled", value, 'enabled = ["disco", "ping"]')
        elif key == "plugin_paths":
            result.plugin_paths = _string_list(
                path, "[plugins] plugin_paths", value, 'plugin_paths = ["./myplugins"]'
            )
        elif isinstance(value, dict):
            result.options[key] = value
        else:
            raise ConfigError(
                "unknown key",
                path=path,
                key=f"[plugins] {key}",
                fix=f"plugin options go in their own table: [plugins.{key}]",
            )
    return result


def _parse_hosts(given: Any, path: str | None, domains: list[str]) -> dict[str, HostConfig]:
    if not isinstance(given, dict):
        raise ConfigError(
            "expected a table [hosts]", path=path, key="[hosts]", fix='[hosts."example.org"] plugins = [...]'
        )
    from xmppd.jid import JIDError, prep_domain

    hosts = {}
    for name, table in given.items():
        where = f'[hosts."{name}"]'
        try:
            domain = prep_domain(name)
        except JIDError:
            domain = name
        if domain not in domains:
            raise ConfigError("not a served domain", path=path, key=where, fix="add it to [server] domains")
        if not isinstance(table, dict):
            raise ConfigError("expected a table", path=path, key=where, fix=f"{where} plugins = [...]")
        host = HostConfig()
        for key, value in table.items():
            if key == "plugins":
                host.plugins = _string_list(path, f"{where} plugins", value, 'plugins = ["disco", "ping"]')
            else:
                raise ConfigError("unknown key", path=path, key=f"{where} {key}", fix="known keys: plugins")
        hosts[domain] = host
    return hosts


def _parse_routes(table: Any, path: str | None) -> dict[str, str]:
    """``[s2s.routes]``: remote domain -> endpoint description, overriding DNS (private setups, tests)."""
    from xmppd.jid import JIDError, prep_domain

    if not isinstance(table, dict):
        raise ConfigError(
            "expected a table",
            path=path,
            key="[s2s.routes]",
            fix='"example.org" = "tcp:host=127.0.0.2:port=5269"',
        )
    result = {}
    for domain, endpoint in table.items():
        where = f'[s2s.routes] "{domain}"'
        if not isinstance(endpoint, str):
            raise ConfigError(
                f"expected an endpoint string, got {endpoint!r}",
                path=path,
                key=where,
                fix=f'"{domain}" = "tcp:host=127.0.0.2:port=5269"',
            )
        try:
            result[prep_domain(domain)] = endpoint
        except JIDError as e:
            raise ConfigError(
                f"not a valid domain ({e})", path=path, key=where, fix="use a DNS name"
            ) from None
    return result


def _parse_components(given: Any, path: str | None, domains: list[str]) -> dict[str, str]:
    """``[components]``: external component domain -> shared secret (XEP-0114)."""
    from xmppd.jid import JIDError, prep_domain

    if not isinstance(given, dict):
        raise ConfigError(
            "expected a table", path=path, key="[components]", fix='"gateway.localhost" = { secret = "..." }'
        )
    result = {}
    for domain, table in given.items():
        where = f'[components] "{domain}"'
        fix = f'"{domain}" = {{ secret = "a long random string" }}'
        if (
            not isinstance(table, dict)
            or set(table) != {"secret"}
            or not isinstance(table["secret"], str)
            or not table["secret"]
        ):
            raise ConfigError(
                "expected a table with a non-empty secret and nothing else", path=path, key=where, fix=fix
            )
        try:
            prepared = prep_domain(domain)
        except JIDError as e:
            raise ConfigError(
                f"not a valid domain ({e})", path=path, key=where, fix="use a DNS name"
            ) from None
        if prepared in domains:
            raise ConfigError(
                "is a served domain, not a component",
                path=path,
                key=where,
                fix="remove it from [server] domains or pick another name",
            )
        result[prepared] = table["secret"]
    return result


def load(path: str | None) -> Config:
    """Read and validate a TOML file; ``None`` gives the embedded defaults."""
    if path is None:
        return parse({}, None)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("file not found", path=path, fix="pass an existing file to --config") from None
    except OSError as e:
        raise ConfigError(
            f"cannot read: {e.strerror}", path=path, fix="check the file's permissions"
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"not valid TOML: {e}", path=path, fix="correct the syntax at that line") from None
    return parse(data, path)
