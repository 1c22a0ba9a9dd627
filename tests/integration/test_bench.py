"""The benchmark (bench/compare.py) runs: its quick mode, two scenarios, tiny sizes, against xmppd (and
Prosody when it is installed), and its JSON has the expected keys with positive numbers. Nothing here
asserts how fast anything is: performance is shown by the benchmark itself (bench/RESULTS.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from xmppd.testing.prosody import prosody_missing

COMPARE = Path(__file__).resolve().parents[2] / "bench" / "compare.py"

SMALL = (
    "--quick --rounds 1 --accounts 12 --clients 4 --occupants 3 --idle-sessions 4 --login-concurrency 2 "
    "--warmup 0.2 --duration 0.5"
).split()


def run_compare(tmp_path: Path, servers: str, scenarios: str) -> dict:
    out = tmp_path / "results.json"
    result = subprocess.run(
        [
            sys.executable,
            str(COMPARE),
            *SMALL,
            *("--servers", servers, "--scenarios", scenarios),
            *("--json", str(out), "--workdir", str(tmp_path / "work")),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "server CPU per c2s login" in result.stdout  # the table
    return json.loads(out.read_text())


def check_results(doc: dict, servers: list[str], scenarios: list[str]) -> None:
    assert doc["servers"] == servers
    assert doc["rounds"] == 1
    assert doc["machine"]["cpus"] >= 1
    assert set(doc["summary"]) == set(scenarios)
    for scenario in scenarios:
        metric = doc["metrics"][scenario]["key"]
        for server in servers:
            (run,) = doc["runs"][scenario][server]
            assert "error" not in run, run
            for key in ("wall_s", "server_cpu_s", "loadgen_cpu_s", metric, "value"):
                assert run[key] > 0, (scenario, server, key, run)
            assert doc["summary"][scenario][server]["value"] > 0
    if "login" in scenarios:
        for server in servers:
            assert doc["runs"]["login"][server][0]["logins"] > 0
    if "messages" in scenarios:
        for server in servers:
            run = doc["runs"]["messages"][server][0]
            assert run["messages"] > 0 and run["errors"] == 0
            assert run["latency_p99_ms"] >= run["latency_p50_ms"] > 0


def test_quick_benchmark_xmppd(tmp_path: Path) -> None:
    doc = run_compare(tmp_path, "xmppd", "login,messages")
    check_results(doc, ["xmppd"], ["login", "messages"])


@pytest.mark.skipif(prosody_missing() is not None, reason=prosody_missing() or "")
def test_quick_benchmark_against_prosody(tmp_path: Path) -> None:
    doc = run_compare(tmp_path, "xmppd,prosody", "login,muc")
    check_results(doc, ["xmppd", "prosody"], ["login", "muc"])
    assert doc["summary"]["login"]["ratio"] > 0
    assert doc["summary"]["muc"]["ratio"] > 0
