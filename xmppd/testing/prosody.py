"""A Prosody peer for federation and interoperability tests.

``ProsodyServer`` runs Debian's ``prosody`` (0.12) as a child process with a configuration written into a
test directory: loopback only, its own data directory, log file and pid file, and listening ports picked
free when the object is made (Prosody cannot listen on port 0 and report the port), so the ports can go
into the other server's configuration before either starts::

    ca = TestCA(tmp_path / "ca")
    prosody = ProsodyServer(tmp_path / "prosody", "prosody.test",
                            cert=ca.issue("prosody.test"), ca_file=ca.ca_path)
    xmppd = ServerProcess(tmp_path / "xmppd", {..., "s2s": {"routes": {
        "prosody.test": f"tcp:host=127.0.0.1:port={prosody.s2s_port}"}}}).start()
    prosody.routes["xmppd.test"] = ("127.0.0.1", xmppd.port("s2s"))
    prosody.start()
    prosody.register("alice", "secret")
    ...
    prosody.stop()

Routing. The test domains are not in DNS, and Prosody 0.12 has no option for a static s2s route: its
mod_s2s resolves ``_xmpp-server._tcp`` SRV records (then A/AAAA on port 5269) through
``net.resolvers.service``; the ``s2sout-pre-connect`` event that prosody-modules' mod_s2sout_override
uses only exists from 0.13 on. So the harness installs a small global module (``mod_xmppd_routes``, written
next to the configuration) that wraps ``net.resolvers.service.new``: for a domain listed in ``routes`` it
returns a resolver for the fixed address instead, for normal connections and for dialback's verification
connections alike; any other domain resolves as usual. ``add_route`` changes the table on a running
Prosody (the config is rewritten and reloaded with SIGHUP).

Use :func:`prosody_missing` to skip tests on machines without Prosody.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from xmppd.testing.process import terminate

PROSODY = "/usr/bin/prosody"
PROSODYCTL = "/usr/bin/prosodyctl"
ROUTES_MODULE = "xmppd_routes"

# Installed into plugin_paths; see the module docstring for why it exists.
ROUTES_MODULE_SOURCE = """\
-- mod_xmppd_routes: static s2s routes for tests (written by xmppd.testing.prosody).
-- xmppd_s2s_routes = { ["domain"] = { "127.0.0.1", 5269 } } sends s2s traffic for "domain" to that
-- address instead of resolving DNS. Prosody 0.12 has no such option, so this wraps the SRV resolver
-- that mod_s2s asks for each new outgoing connection (looked up at call time: service.new).
module:set_global();

local service = require "net.resolvers.service";
local basic = require "net.resolvers.basic";
local manual = require "net.resolvers.manual";
local original_new = service.new;

service.new = function (hostname, service_name, conn_type, extra)
	local routes = module:get_option("xmppd_s2s_routes", {});
	local route = type(routes) == "table" and routes[hostname];
	if route and service_name == "xmpps-server" then
		return manual.new({}, conn_type, extra); -- no direct TLS (XEP-0368) here: STARTTLS below
	elseif route and service_name == "xmpp-server" then
		module:log("info", "s2s route for %s: %s port %d", hostname, route[1], route[2]);
		return basic.new(route[1], route[2], conn_type, extra);
	end
	return original_new(hostname, service_name, conn_type, extra);
end

function module.unload()
	service.new = original_new;
end
"""


def prosody_missing() -> str | None:
    """Why Prosody cannot be used here, or None when it can (for ``pytest.skip``)."""
    for path in (PROSODY, PROSODYCTL):
        if not os.access(path, os.X_OK):
            return (
                f"{path} not found: Prosody is not installed (Debian: apt-get install prosody; "
                ".ci/run installs it when run as root)"
            )
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS's choice for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def lua(value: Any) -> str:
    """A Python value as a Lua literal (strings, numbers, booleans, lists, string-keyed dicts)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        text = str(value)
        escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "{ " + ", ".join(lua(v) for v in value) + " }"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"[{lua(str(k))}] = {lua(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no Lua literal for {value!r}")


class ProsodyServer:
    """One Prosody process serving ``domain`` on loopback.

    ``cert`` is ``(certificate_path, key_path)`` (e.g. from :meth:`TestCA.issue`); without it a
    self-signed certificate for the domain is made in the directory. ``ca_file`` is a PEM file Prosody
    trusts for peers' certificates (besides the system store). ``secure_auth`` is ``s2s_secure_auth``:
    when true, peers must present a valid certificate (no dialback). ``routes`` maps remote domains to
    ``(host, port)`` of their s2s listener. ``modules`` are added to modules_enabled; ``options`` are
    extra global settings (Python values, written as Lua).
    """

    def __init__(
        self,
        directory: Path | str,
        domain: str,
        *,
        c2s_port: int | None = None,
        s2s_port: int | None = None,
        cert: tuple[Path | str, Path | str] | None = None,
        ca_file: Path | str | None = None,
        secure_auth: bool = False,
        routes: dict[str, tuple[str, int]] | None = None,
        modules: tuple[str, ...] | list[str] = (),
        options: dict[str, Any] | None = None,
        log_level: str = "debug",
    ) -> None:
        self.directory = Path(directory).resolve()
        self.domain = domain
        self.c2s_port = c2s_port or free_port()
        self.s2s_port = s2s_port or free_port()
        while self.s2s_port == self.c2s_port:
            self.s2s_port = free_port()
        self.cert = cert
        self.ca_file = ca_file
        self.secure_auth = secure_auth
        self.routes: dict[str, tuple[str, int]] = dict(routes or {})
        self.modules = list(modules)
        self.options = dict(options or {})
        self.log_level = log_level
        self.config_path = self.directory / "prosody.cfg.lua"
        self.data_dir = self.directory / "data"
        self.plugin_dir = self.directory / "plugins"
        self.log_path = self.directory / "prosody.log"
        self.output_path = self.directory / "prosody.out"  # stdout/stderr: errors before logging starts
        self.pid_path = self.directory / "prosody.pid"
        self.process: subprocess.Popen | None = None
        self._output: Any = None
        self._log_offset = 0  # bytes of the log file written before this run

    # -- configuration ---------------------------------------------------------------------------------

    @property
    def cert_path(self) -> Path:
        """The certificate Prosody presents (a client trusting it, or its CA, can log in)."""
        return Path(self._certificate()[0])

    def _certificate(self) -> tuple[Path | str, Path | str]:
        if self.cert is None:
            from xmppd.testing.ca import TestCA

            self.cert = TestCA(self.directory / "selfsigned").issue(self.domain, self_signed=True)
        return self.cert

    def config_text(self) -> str:
        cert, key = self._certificate()
        settings: dict[str, Any] = {
            "pidfile": self.pid_path,
            "data_path": self.data_dir,
            "plugin_paths": [self.plugin_dir],
            "interfaces": ["127.0.0.1"],
            "local_interfaces": ["127.0.0.1"],
            "c2s_ports": [self.c2s_port],
            "s2s_ports": [self.s2s_port],
            "c2s_direct_tls_ports": [],
            "s2s_direct_tls_ports": [],
            "legacy_ssl_ports": [],
            "http_ports": [],
            "https_ports": [],
            "use_ipv6": False,
            "authentication": "internal_hashed",
            "storage": "internal",
            "allow_registration": False,
            "c2s_require_encryption": True,
            "s2s_require_encryption": True,
            "s2s_secure_auth": self.secure_auth,
            "certificates": self.directory / "certs",
            "modules_enabled": [
                "roster",
                "saslauth",
                "tls",
                "dialback",
                "disco",
                "ping",
                "time",
                "version",
                "uptime",
                ROUTES_MODULE,
                *self.modules,
            ],
            "xmppd_s2s_routes": {d: [h, int(p)] for d, (h, p) in self.routes.items()},
        }
        if self.ca_file:
            settings["ssl"] = {"cafile": Path(self.ca_file).resolve()}
        if os.geteuid() == 0:
            # CI runs tests as root; Prosody refuses that unless told, and prosodyctl would switch to the
            # prosody user, who cannot read a root-owned test directory.
            settings["run_as_root"] = True
        settings.update(self.options)
        lines = ["-- Written by xmppd.testing.prosody for one test run; not a production configuration."]
        lines += [f"{key} = {lua(value)}" for key, value in settings.items()]
        lines.append(
            f'log = {{ {{ levels = {{ min = {lua(self.log_level)} }}, to = "file", '
            f"filename = {lua(self.log_path)} }} }}"
        )
        lines.append("")
        lines.append(f"VirtualHost {lua(self.domain)}")
        host_ssl = {"certificate": Path(cert).resolve(), "key": Path(key).resolve()}
        lines.append(f"\tssl = {lua(host_ssl)}")
        return "\n".join(lines) + "\n"

    def write_config(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        self.plugin_dir.mkdir(exist_ok=True)
        (self.directory / "certs").mkdir(exist_ok=True)  # Prosody indexes it at startup
        (self.plugin_dir / f"mod_{ROUTES_MODULE}.lua").write_text(ROUTES_MODULE_SOURCE)
        self.config_path.write_text(self.config_text())

    def add_route(self, domain: str, host: str, port: int) -> None:
        """Send s2s traffic for ``domain`` to ``host:port`` (also on a running Prosody: config reload)."""
        self.routes[domain] = (host, int(port))
        if self.running:
            self.write_config()
            assert self.process is not None
            self.process.send_signal(signal.SIGHUP)
            self._wait_for_log("Received SIGHUP", timeout=5)

    # -- process ---------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 30) -> ProsodyServer:
        """Write the configuration, start ``prosody -F`` and wait until it listens on both ports and
        answers a stream header."""
        reason = prosody_missing()
        if reason:
            raise RuntimeError(reason)
        if self.running:
            raise RuntimeError("this Prosody is already running")
        self.write_config()
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._output = open(self.output_path, "ab")
        self.process = subprocess.Popen(
            [PROSODY, "-F", "--config", str(self.config_path)],
            cwd=self.directory,
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HOME": str(self.data_dir)},
        )
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.process.poll() is not None:
                code = self.process.returncode
                self._cleanup()
                raise RuntimeError(f"prosody exited with {code}:\n{self.output()}\n{self._new_log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"prosody did not start within {timeout}s:\n{self.output()}\n{self._new_log()}"
                )
            time.sleep(0.05)
        return self

    def _ready(self) -> bool:
        """Whether the Prosody just started is ready: it logged both listeners, accepts s2s connections
        and answers a stream header. RuntimeError (and stopped) if it could not open a port."""
        log = self._new_log()
        if "Failed to open server port" in log:
            self.stop()
            raise RuntimeError(f"prosody could not listen (port taken?):\n{log}")
        expected = {"c2s": f"[127.0.0.1]:{self.c2s_port}", "s2s": f"[127.0.0.1]:{self.s2s_port}"}
        activated = all(f"Activated service '{name}' on {at}" in log for name, at in expected.items())
        return activated and self._accepts(self.s2s_port) and self._answers_stream()

    @staticmethod
    def _accepts(port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    def _answers_stream(self) -> bool:
        """Whether Prosody answers a c2s stream header: its event loop runs, so it has also installed
        its signal handlers (mod_posix does that on the loop's first turn; SIGHUP kills it before)."""
        header = (
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
            f"xmlns:stream='http://etherx.jabber.org/streams' to='{self.domain}' version='1.0'>"
        )
        try:
            with socket.create_connection(("127.0.0.1", self.c2s_port), timeout=2) as s:
                s.sendall(header.encode())
                received = b""
                while b"<stream:features" not in received:
                    chunk = s.recv(4096)
                    if not chunk:
                        return False
                    received += chunk
                s.sendall(b"</stream:stream>")
                return True
        except OSError:
            return False

    def stop(self, timeout: float = 15) -> int | None:
        """Stop Prosody (SIGTERM, then SIGKILL after ``timeout``); returns its exit code."""
        if self.process is None:
            return None
        code = terminate(self.process, timeout)
        self._cleanup()
        return code

    def _cleanup(self) -> None:
        self.process = None
        if self._output is not None:
            self._output.close()
            self._output = None

    def __enter__(self) -> ProsodyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- accounts and logs -----------------------------------------------------------------------------

    def prosodyctl(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run ``prosodyctl --config <this config> ARGS`` (works while Prosody runs, or before)."""
        if not self.config_path.exists():
            self.write_config()
        result = subprocess.run(
            [PROSODYCTL, "--config", str(self.config_path), *args],
            cwd=self.directory,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            env={**os.environ, "HOME": str(self.data_dir)},
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"prosodyctl {args[0] if args else ''} failed ({result.returncode}): "
                f"{result.stdout}{result.stderr}"
            )
        return result

    def register(self, user: str, password: str) -> None:
        """Create the account ``user@domain`` (prosodyctl register)."""
        self.prosodyctl("register", user, self.domain, password)

    def log(self) -> str:
        """Prosody's log file (all runs of this directory)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def output(self) -> str:
        """What Prosody wrote to stdout/stderr (startup errors before its log was open)."""
        return self.output_path.read_text(errors="replace") if self.output_path.exists() else ""

    def _new_log(self) -> str:
        """The log written since the last start."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def _wait_for_log(self, needle: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self._new_log() and time.monotonic() < deadline:
            time.sleep(0.05)
