"""A third-party plugin distribution (examples/hello-plugin) installed with pip next to xmppd: found
through its entry point, answering a real client, and tested by its own test suite with xmppd's fixtures.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from slixclient import Clients, run

from xmppd.config import DEFAULT_PLUGINS

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello-plugin"
NS_HELLO = "urn:example:hello"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/hello-plugin installed into a directory of its own (offline, no build isolation)."""
    root = tmp_path_factory.mktemp("hello")
    source = root / "src"  # build from a copy: a build writes build/ and *.egg-info beside the sources
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = root / "site"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--disable-pip-version-check",
            "--target",
            str(target),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (target / "hello_plugin.py").exists()
    return target


def python_path(*entries: Path) -> str:
    return os.pathsep.join([*map(str, entries), *filter(None, [os.environ.get("PYTHONPATH")])])


def test_installed_plugin_is_discovered_and_answers(xmpp_process, installed):
    proc = xmpp_process(
        config={"plugins": {"enabled": [*DEFAULT_PLUGINS, "hello"], "hello": {"greeting": "Welcome"}}},
        env={"PYTHONPATH": python_path(installed)},
        users={"alice@localhost": "alice-pw"},
    )
    rows = {row["name"]: row for row in json.loads(proc.ctl("--json", "plugins").stdout)}
    assert rows["hello"] == {
        "name": "hello",
        "origin": "entry point hello_plugin:Hello",
        "enabled": ["localhost"],
        "loaded": ["localhost"],
    }
    line = next(x for x in proc.ctl("plugins").stdout.splitlines() if x.startswith("hello "))
    assert "enabled: localhost" in line and "loaded: localhost" in line

    async def main():
        async with Clients(proc) as clients:
            alice = await clients.login("alice@localhost/phone", "alice-pw")
            for count in ("1", "2"):
                answer = await alice.iq_get("localhost", f"<hello xmlns='{NS_HELLO}'/>")
                assert answer.get("type") == "result"
                hello = answer.find(f"{{{NS_HELLO}}}hello")
                assert hello.text == "Welcome, alice@localhost/phone!"
                assert hello.get("count") == count
            info = await alice.plugin["xep_0030"].get_info(jid="localhost", timeout=5)
            assert NS_HELLO in info["disco_info"]["features"]

    run(main())


def test_the_plugins_own_tests_pass_with_xmppds_fixtures(installed, tmp_path):
    env = {**os.environ, "PYTHONPATH": python_path(installed), "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
        cwd=tmp_path,  # not the example's directory: hello_plugin must come from the installed copy
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout, result.stdout
