"""The two servers under test, configured alike: xmppd (``twistd -n xmppd``) and Prosody 0.12 (Debian).

Both serve ``localhost`` on loopback with the same certificate (EC P-256, from xmppd.testing.ca), accept
SCRAM-SHA-1 without TLS (TLS offered, not required), serve BOSH at ``/http-bind`` on plain HTTP and MUC on
``conference.localhost``, log at warn, keep data in files (xmppd: SQLite; Prosody: ``internal``) and hold
the same accounts (bench/provision.py). Per-IP connection limits are lifted on xmppd (Prosody has none
unless mod_limits is loaded).

Each object has ``name``, ``pid``, ``c2s_port``, ``http_port``, ``start()``, ``stop()`` and ``log()``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from provision import DOMAIN, write_pie, write_prosody_accounts

from xmppd.testing.ca import TestCA
from xmppd.testing.process import ServerProcess, terminate
from xmppd.testing.prosody import ProsodyServer, free_port

MUC_DOMAIN = f"conference.{DOMAIN}"


def certificate(directory: Path) -> tuple[Path, Path]:
    """One certificate for ``localhost`` and ``conference.localhost``, shared by both servers."""
    return TestCA(directory / "ca").issue(DOMAIN, extra_dns=[MUC_DOMAIN])


class Xmppd:
    """xmppd with its default plugins, as ``twistd -n xmppd`` runs it (the default epoll reactor)."""

    name = "xmppd"

    def __init__(self, directory: Path, cert: tuple[Path, Path], accounts: int) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = ServerProcess(
            self.directory,
            {
                "server": {"domains": [DOMAIN], "max_connections_per_ip": 1_000_000},
                "listen": {
                    "c2s": ["tcp:0:interface=127.0.0.1"],
                    "http": ["tcp:0:interface=127.0.0.1"],
                    "s2s": [],
                    "c2s_direct_tls": [],
                },
                "tls": {"certificate": str(cert[0]), "key": str(cert[1]), "required": False},
                "logging": {"level": "warn"},
            },
        )
        pie = write_pie(self.directory / "accounts.xml", accounts)
        self.process.ctl("import", str(pie))

    @property
    def pid(self) -> int:
        assert self.process.process is not None
        return self.process.process.pid

    @property
    def c2s_port(self) -> int:
        return self.process.port("c2s")

    @property
    def http_port(self) -> int:
        return self.process.port("http")

    def start(self) -> Xmppd:
        self.process.start()
        return self

    def stop(self) -> None:
        self.process.stop()

    def log(self) -> str:
        return self.process.log()


class BenchProsody(ProsodyServer):
    """ProsodyServer logging at warn, with BOSH, MUC and the modules matching xmppd's default plugins."""

    def __init__(
        self, directory: Path, cert: tuple[Path, Path], options: dict[str, Any] | None = None
    ) -> None:
        self.http_port = free_port()
        super().__init__(
            directory,
            DOMAIN,
            cert=cert,
            log_level="warn",
            modules=[
                "offline",
                "blocklist",
                "vcard",
                "private",
                "lastactivity",
                "server_contact_info",
                "adhoc",
                "admin_adhoc",
                "bosh",
            ],
            options={
                "c2s_require_encryption": False,
                "http_ports": [self.http_port],
                "http_interfaces": ["127.0.0.1"],
                "consider_bosh_secure": True,
                "network_backend": "epoll",
                **(options or {}),
            },
        )

    def config_text(self) -> str:
        return super().config_text() + f'\nComponent "{MUC_DOMAIN}" "muc"\n'

    def _ready(self) -> bool:
        """Ready when the ports answer: at warn, Prosody logs nothing to wait for."""
        bosh = "bosh" in self.modules
        return (not bosh or self._accepts(self.http_port)) and self._answers_stream()


class Prosody:
    name = "prosody"

    def __init__(
        self, directory: Path, cert: tuple[Path, Path], accounts: int, options: dict[str, Any] | None = None
    ) -> None:
        self.server = BenchProsody(Path(directory), cert, options)
        self.server.write_config()
        write_prosody_accounts(self.server.data_dir, accounts)

    @property
    def pid(self) -> int:
        assert self.server.process is not None
        return self.server.process.pid

    @property
    def c2s_port(self) -> int:
        return self.server.c2s_port

    @property
    def http_port(self) -> int:
        return self.server.http_port

    def start(self) -> Prosody:
        self.server.start()
        return self

    def stop(self) -> None:
        if self.server.process is not None:
            terminate(self.server.process)
            self.server._cleanup()

    def log(self) -> str:
        return self.server.log() + self.server.output()


def make_server(
    name: str,
    directory: Path,
    cert: tuple[Path, Path],
    accounts: int,
    prosody_options: dict[str, Any] | None = None,
) -> Xmppd | Prosody:
    """The server ``name`` (xmppd or prosody) in ``directory/name``, its accounts provisioned, not started."""
    if name == "xmppd":
        return Xmppd(directory / name, cert, accounts)
    if name == "prosody":
        return Prosody(directory / name, cert, accounts, prosody_options)
    raise ValueError(f"unknown server {name!r} (xmppd or prosody)")
