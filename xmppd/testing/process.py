"""``twistd xmppd`` in a subprocess on loopback ports chosen by the OS, for tests with real clients.

The server is started exactly as an operator starts it (``twistd -n xmppd --config FILE``) with a
configuration written into a temporary directory; listeners use port 0 and the bound ports are read from
``data_dir/listeners.json``. Accounts are created with the real ``xmppdctl`` over the control socket.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def toml_key(key: str) -> str:
    """A TOML key: bare when it can be (letters, digits, - and _), quoted otherwise (domains have dots)."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def write_toml(path: Path, data: dict[str, Any]) -> None:
    """A small TOML writer for test configurations (tables of scalars and lists; one level of subtables)."""
    lines: list[str] = []

    def table(name: str, values: dict[str, Any]) -> None:
        scalars = {k: v for k, v in values.items() if not isinstance(v, dict)}
        lines.append(f"[{name}]")
        lines.extend(f"{toml_key(k)} = {toml_value(v)}" for k, v in scalars.items())
        for key, sub in values.items():
            if isinstance(sub, dict):
                table(f"{name}.{json.dumps(key) if '.' in key else key}", sub)

    for name, values in data.items():
        table(name, values)
    path.write_text("\n".join(lines) + "\n")


def terminate(process: subprocess.Popen, timeout: float = 15) -> int:
    """Stop a child process as an operator would: SIGTERM, then SIGKILL if it is still there after
    ``timeout`` seconds. Returns its exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


TWISTD = "from twisted.scripts.twistd import run; run()"  # twistd, as the installed script runs it


class ServerProcess:
    """Start, query and stop one xmppd process. ``config`` sections are merged over test defaults."""

    def __init__(
        self, directory: Path, config: dict[str, Any] | None = None, env: dict[str, str] | None = None
    ):
        self.directory = Path(directory)
        self.data_dir = self.directory / "data"
        self.config_path = self.directory / "xmppd.toml"
        data: dict[str, Any] = {
            "server": {"domains": ["localhost"], "data_dir": str(self.data_dir)},
            "listen": {"c2s": ["tcp:0:interface=127.0.0.1"], "c2s_direct_tls": [], "s2s": [], "http": []},
        }
        for section, values in (config or {}).items():
            data.setdefault(section, {}).update(values)
        write_toml(self.config_path, data)
        self.env = {**os.environ, **(env or {})}
        checkout = Path(__file__).resolve().parents[2]
        if (checkout / "twisted" / "plugins" / "xmppd_plugin.py").exists():
            # An editable install from a source checkout: Twisted finds the twistd dropin by scanning
            # sys.path entries for twisted/plugins, so the checkout must be on the path.
            self.env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [str(checkout), self.env.get("PYTHONPATH")])
            )
        self.process: subprocess.Popen | None = None
        self.log_path = self.directory / "xmppd.log"
        self.listeners: dict[str, list[str]] = {}

    @property
    def command(self) -> list[str]:
        """``twistd -n xmppd --config FILE``, as the installed twistd script runs it."""
        return [
            sys.executable,
            "-c",
            TWISTD,
            "--nodaemon",
            "--pidfile=",
            "xmppd",
            "--config",
            str(self.config_path),
        ]

    def start(self, timeout: float = 30) -> ServerProcess:
        listeners = self.data_dir / "listeners.json"
        if listeners.exists():
            listeners.unlink()
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            self.command,
            cwd=self.directory,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
        )
        deadline = time.monotonic() + timeout
        while not listeners.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"xmppd exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"xmppd did not start within {timeout}s:\n{self.log()}")
            time.sleep(0.05)
        self.listeners = json.loads(listeners.read_text())
        return self

    def port(self, kind: str = "c2s") -> int:
        return int(self.listeners[kind][0].rsplit(":", 1)[1])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def ctl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``xmppdctl --config <this server's config> ARGS``."""
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                "from xmppd.ctl import main; main()",
                "--config",
                str(self.config_path),
                *args,
            ],
            cwd=self.directory,
            capture_output=True,
            text=True,
            input=input,
            env=self.env,
            timeout=60,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"xmppdctl {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    def adduser(self, jid: str, password: str) -> None:
        self.ctl("adduser", jid, password)

    def signal(self, signum: int = signal.SIGHUP) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def kill(self, timeout: float = 15) -> int | None:
        """SIGKILL the server, as a crash or the OOM killer would (no shutdown code runs), and wait until it
        is gone. Its data directory stays for the next ``start()``."""
        if self.process is None:
            return None
        self.process.kill()
        code = self.process.wait(timeout)
        self._log.close()
        self.process = None
        return code

    def stop(self, timeout: float = 15) -> int | None:
        if self.process is None:
            return None
        code = terminate(self.process, timeout)
        self._log.close()
        self.process = None
        return code
