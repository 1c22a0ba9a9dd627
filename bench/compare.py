"""xmppd against Prosody: the same scenarios against both servers in one run, interleaved, with ratios.

Both servers run on loopback from a fresh work directory with equivalent configurations (bench/servers.py)
and the same accounts (bench/provision.py: N accounts, SCRAM-SHA-1 at 4,096 iterations). Each round runs
every scenario (bench/loadgen.py) against xmppd, then against Prosody, row by row; every run starts its
server afresh and warms it up with a few logins first. The table shows the median over the rounds and the
xmppd/Prosody ratio (below 1.0: xmppd uses less). Server CPU is read from /proc/PID/stat over each
measurement window, so it is the server's own work whatever else the machine does.

    python bench/compare.py --quick            # small sizes, 1 round, 1 s windows: under a minute
    python bench/compare.py                    # issue 10's sizes, median of 3 rounds: about 15 minutes
    python bench/compare.py --servers xmppd --scenarios login,messages --rounds 1

Results are printed and written as JSON (``--json``; default bench/out/compare-<time>.json).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

from loadgen import SCENARIOS, Params, Target, proc_rss_kib, run_scenario, warm_up  # noqa: E402
from servers import certificate, make_server  # noqa: E402

from xmppd.testing.prosody import prosody_missing  # noqa: E402

#: Issue 10's figures on this kind of machine: (Prosody 0.12, ejabberd 23.01), for reference.
REFERENCE = {
    "login": (2.96, 0.80),
    "login_tls": (3.67, 1.62),
    "messages": (0.154, 0.058),
    "messages_tls": (0.166, 0.078),
    "muc": (0.034, 0.021),
    "bosh": (6.96, 1.52),
    "idle": (34.5, 41.6),
    "latency": (18.8, 1.0),
}

#: Secondary figures shown per run and in the details table.
DETAILS = (
    "server_cpu_share",
    "loadgen_cpu_share",
    "machine_busy_cpus",
    "machine_steal_cpus",
    "logins_per_s",
    "messages_per_s",
    "deliveries_per_s",
    "latency_p50_ms",
    "latency_p99_ms",
    "loadgen_cpu_ms_per_login",
    "loadgen_cpu_s_per_1000",
    "server_cpu_ms_per_login",
    "errors",
)


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                info["memory_mib"] = int(line.split()[1]) // 1024
    except OSError:
        pass
    try:
        import lxml.etree

        import twisted

        info["twisted"] = twisted.__version__
        info["lxml"] = ".".join(map(str, lxml.etree.LXML_VERSION))
    except ImportError:
        pass
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", "prosody"], capture_output=True, text=True, timeout=10
        )
        if out.returncode == 0:
            info["prosody"] = out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        info["xmppd_commit"] = subprocess.run(
            ["git", "-C", str(HERE.parent), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the servers inherit it


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    good = [r for r in runs if "error" not in r]
    out: dict[str, Any] = {}
    if not good:
        return out
    for key in good[0]:
        values = [r[key] for r in good if isinstance(r.get(key), int | float)]
        if values and len(values) == len(good):
            out[key] = statistics.median(values)
    return out


def fmt(scenario: str, value: float | None) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return SCENARIOS[scenario].fmt.format(value)


def print_table(summary: dict[str, dict[str, Any]], names: list[str], scenarios: list[str]) -> None:
    head = f"{'work':44} {'unit':>4}"
    for name in names:
        head += f" {name:>9}"
    if len(names) == 2:
        head += f" {names[0] + '/' + names[1]:>14}"
    head += f" {'issue: Prosody / ejabberd':>26}"
    print(head)
    print("-" * len(head))
    for scenario in scenarios:
        spec = SCENARIOS[scenario]
        row = f"{spec.label:44} {spec.unit:>4}"
        values = []
        for name in names:
            value = summary[scenario].get(name, {}).get("value")
            values.append(value)
            row += f" {fmt(scenario, value):>9}"
        if len(names) == 2:
            ratio = values[0] / values[1] if values[0] and values[1] else None
            row += f" {f'{ratio:.2f}' if ratio else '-':>14}"
        ref = REFERENCE.get(scenario)
        row += f" {(fmt(scenario, ref[0]) + ' / ' + fmt(scenario, ref[1])) if ref else '':>26}"
        print(row)


def print_details(summary: dict[str, dict[str, Any]], names: list[str], scenarios: list[str]) -> None:
    print()
    print("details (medians): server and load generator CPU share of wall time, throughput, latency")
    for scenario in scenarios:
        for name in names:
            med = summary[scenario].get(name, {})
            parts = [f"{key}={med[key]:.3g}" for key in DETAILS if key in med]
            errors = summary[scenario].get(f"{name}_errors")
            if errors:
                parts.append(f"FAILED RUNS: {errors}")
            print(f"  {scenario:13} {name:8} " + " ".join(parts))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, 1 round, 1 s windows (under a minute)")
    ap.add_argument(
        "--rounds", type=int, help="runs of each scenario per server (median; default 3, quick 1)"
    )
    ap.add_argument("--servers", default="xmppd,prosody", help="comma-separated: xmppd, prosody")
    ap.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help=f"comma-separated of {', '.join(SCENARIOS)}"
    )
    ap.add_argument("--json", help="write results here (default bench/out/compare-<time>.json)")
    ap.add_argument(
        "--prosody-options",
        help='extra global Prosody settings as JSON, e.g. \'{"gc": {"mode": "generational"}}\'',
    )
    ap.add_argument("--workdir", help="server directories go here (default: a temporary directory, removed)")
    for field in dataclasses.fields(Params):
        ap.add_argument(
            "--" + field.name.replace("_", "-"), type=type(field.default), help=f"default {field.default}"
        )
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    ns = parse_args(argv)
    params = Params.quick() if ns.quick else Params()
    for field in dataclasses.fields(Params):
        value = getattr(ns, field.name)
        if value is not None:
            setattr(params, field.name, value)
    rounds = ns.rounds or (1 if ns.quick else 3)
    names = [n.strip() for n in ns.servers.split(",") if n.strip()]
    scenarios = [s.strip() for s in ns.scenarios.split(",") if s.strip()]
    for s in scenarios:
        if s not in SCENARIOS:
            raise SystemExit(f"unknown scenario {s!r}; known: {', '.join(SCENARIOS)}")
    scenarios.sort(key=list(SCENARIOS).index)
    if "prosody" in names and prosody_missing():
        print(f"prosody skipped: {prosody_missing()}", file=sys.stderr)
        names.remove("prosody")
    if not names:
        raise SystemExit("no server to run")
    prosody_options = json.loads(ns.prosody_options) if ns.prosody_options else {}
    raise_fd_limit()

    workdir = Path(ns.workdir) if ns.workdir else Path(tempfile.mkdtemp(prefix="xmppd-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    out_path = Path(ns.json) if ns.json else HERE / "out" / f"compare-{time.strftime('%Y%m%d-%H%M%S')}.json"
    started = time.monotonic()
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {s: {n: [] for n in names} for s in scenarios}
    setup: dict[str, Any] = {}
    servers: list[Any] = []
    try:
        cert = certificate(workdir)
        for name in names:
            t = time.monotonic()
            servers.append(make_server(name, workdir, cert, params.accounts, prosody_options))
            setup[f"{name}_provision_s"] = round(time.monotonic() - t, 2)
            print(f"{name}: {params.accounts} accounts provisioned in {setup[f'{name}_provision_s']} s")
        for round_no in range(1, rounds + 1):
            for scenario in scenarios:
                for server in servers:
                    result = run_fresh(server, scenario, params)
                    result["round"] = round_no
                    runs[scenario][server.name].append(result)
                    print(
                        f"round {round_no} {scenario:13} {server.name:8} {describe(scenario, result)}",
                        flush=True,
                    )
    finally:
        for server in servers:
            server.stop()
        logs = {server.name: _problems(server.log()) for server in servers}
        if not ns.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    summary: dict[str, dict[str, Any]] = {}
    for scenario in scenarios:
        summary[scenario] = {}
        for name in names:
            summary[scenario][name] = median_of(runs[scenario][name])
            failed = [r["error"] for r in runs[scenario][name] if "error" in r]
            if failed:
                summary[scenario][f"{name}_errors"] = failed
        if len(names) == 2:
            a, b = (summary[scenario][n].get("value") for n in names)
            summary[scenario]["ratio"] = a / b if a and b else None
    elapsed = time.monotonic() - started
    print()
    print(
        f"{', '.join(names)}: median of {rounds} round(s); {params.accounts} accounts, "
        f"{params.clients} clients, {params.occupants} occupants, {params.idle_sessions} idle sessions, "
        f"{params.rate:g} msg/s fixed rate, {params.duration:g} s windows; {elapsed:.0f} s in all"
    )
    print_table(summary, names, scenarios)
    print_details(summary, names, scenarios)
    for name, problems in logs.items():
        if problems:
            print(
                f"\n{name} logged {len(problems)} warning/error lines, e.g.:\n  " + "\n  ".join(problems[:5])
            )

    out_path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "bench/compare.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine(),
        "params": dataclasses.asdict(params),
        "prosody_options": prosody_options,
        "rounds": rounds,
        "servers": names,
        "setup": setup,
        "elapsed_s": round(elapsed, 1),
        "metrics": {s: {"key": SCENARIOS[s].metric, "unit": SCENARIOS[s].unit} for s in scenarios},
        "summary": summary,
        "runs": runs,
        "log_problems": logs,
    }
    out_path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nJSON: {out_path}")
    failed = any(f"{n}_errors" in summary[s] for s in scenarios for n in names)
    return 1 if failed else 0


def run_fresh(server: Any, scenario: str, params: Params) -> dict[str, Any]:
    """Start ``server``, warm it up, run one scenario, stop it: every measurement starts from the same state
    (Prosody 0.12's memory and CPU per stanza grow with the connections it has served; see RESULTS.md)."""
    server.start()
    try:
        target = Target(server.name, server.pid, server.c2s_port, server.http_port)
        warm_up(target, min(20, params.accounts))
        result = asyncio.run(run_scenario(target, SCENARIOS[scenario], params))
        result["server_rss_end_kib"] = proc_rss_kib(server.pid)
        return result
    finally:
        server.stop()


def describe(scenario: str, result: dict[str, Any]) -> str:
    if "error" in result:
        return "ERROR " + result["error"]
    return (
        f"{fmt(scenario, result['value'])} {SCENARIOS[scenario].unit}"
        f" (server CPU {result['server_cpu_share']:.0%},"
        f" load generator CPU {result['loadgen_cpu_share']:.0%} of wall time;"
        f" machine busy {result['machine_busy_cpus']:.2f} CPUs)"
    )


def _problems(log: str) -> list[str]:
    """Lines of a server log that report warnings, errors or tracebacks."""
    keys = ("warn", "error", "Traceback", "Unhandled")
    expected = ("Received SIGTERM",)  # Prosody logs its stop at warn
    return [
        line[:300]
        for line in log.splitlines()
        if any(k in line for k in keys) and not any(e in line for e in expected)
    ]


if __name__ == "__main__":
    sys.exit(main())
