"""Start-up as an operator sees it: ``twistd -n xmppd --config FILE`` with a bad configuration stops with
exit status 1 and one line ``xmppd: FILE: KEY: problem; fix: ...``, never a traceback; with no
configuration at all it runs on the embedded defaults.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rawclient import RawClient

from xmppd.testing.process import TWISTD

CHECKOUT = Path(__file__).resolve().parents[2]


def twistd_env() -> dict[str, str]:
    """The environment ServerProcess uses: the checkout on PYTHONPATH so twistd finds the dropin."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CHECKOUT), env.get("PYTHONPATH")]))
    return env


def twistd_command(config: Path | None) -> list[str]:
    command = [sys.executable, "-c", TWISTD, "--nodaemon", "--pidfile=", "xmppd"]
    if config is not None:
        command += ["--config", str(config)]
    return command


def run_twistd(config: Path, cwd: Path, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run the server; a bad configuration must stop it at once (a running server fails the test)."""
    try:
        return subprocess.run(
            twistd_command(config),
            cwd=cwd,
            env=twistd_env(),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        raise AssertionError(
            f"xmppd kept running with a bad configuration: {e.stdout!r} {e.stderr!r}"
        ) from None


def base_config(tmp_path: Path) -> str:
    """A good configuration: loopback, an OS-chosen port, everything in tmp_path/data."""
    return (
        "[server]\n"
        'domains = ["localhost"]\n'
        f"data_dir = {json.dumps(str(tmp_path / 'data'))}\n"
        "[listen]\n"
        'c2s = ["tcp:0:interface=127.0.0.1"]\n'
    )


def check_one_line(result: subprocess.CompletedProcess, path: Path, *words: str) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 1, (result.returncode, output)
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    line = lines[0]
    assert line.startswith(f"xmppd: {path}: "), line
    for word in words:
        assert word in line, (word, line)
    return line


def tls_section(certificate: Path, key: Path) -> str:
    return f"[tls]\ncertificate = {json.dumps(str(certificate))}\nkey = {json.dumps(str(key))}\n"


def make_cert(directory: Path) -> tuple[Path, Path]:
    from xmppd.tls import ensure_self_signed

    return ensure_self_signed(directory, ["localhost"])


CASES = {
    # name: (extra TOML, words the error line must contain)
    "unknown-key": ("[tls]\nrequierd = true\n", ["[tls] requierd", "unknown key"]),
    "wrong-type": ('[server]\nauth_timeout = "soon"\n', ["[server] auth_timeout", "soon"]),
    "wrong-list-item": ("[server]\nadmins = [1]\n", ["[server] admins"]),
    "below-minimum": ("[server]\nmax_stanza_size = 10\n", ["[server] max_stanza_size"]),
    "unknown-section": ("[srever]\ndomains = []\n", ["[srever]", "unknown section"]),
    "unknown-plugin": ('[plugins]\nenabled = ["disco", "no_such_plugin"]\n', ["[plugins]", "no_such_plugin"]),
    "bad-plugin-option-type": (
        '[plugins.ping]\nkeepalive_interval = "often"\n',
        ["[plugins.ping] keepalive_interval", "often"],
    ),
    "unknown-plugin-option": ("[plugins.ping]\nkeepalive = 5\n", ["[plugins.ping] keepalive"]),
    "bad-endpoint": (
        '[listen]\nc2s_direct_tls = ["nonsense:1:2"]\n',
        ["[listen] c2s_direct_tls", "nonsense"],
    ),
    "unknown-storage": ('[storage]\nbackend = "mongodb"\n', ["[storage] backend", "mongodb"]),
}


def merge(base: str, extra: str) -> str:
    """Append ``extra``; a table already in ``base`` gets the keys instead of a second header."""
    for table in ("[server]\n", "[listen]\n"):
        if extra.startswith(table):
            return base.replace(table, extra, 1)
    return base + extra


@pytest.mark.parametrize("case", list(CASES))
def test_bad_value(tmp_path, case):
    extra, words = CASES[case]
    config = tmp_path / "xmppd.toml"
    config.write_text(merge(base_config(tmp_path), extra))
    check_one_line(run_twistd(config, tmp_path), config, *words)


def test_missing_certificate_file(tmp_path):
    config = tmp_path / "xmppd.toml"
    missing = tmp_path / "nope" / "cert.pem"
    _, key = make_cert(tmp_path / "certs")
    config.write_text(base_config(tmp_path) + tls_section(missing, key))
    check_one_line(run_twistd(config, tmp_path), config, "[tls] certificate", str(missing))


def test_unreadable_certificate(tmp_path):
    """A certificate path that cannot be read as a file (a directory: permissions do not stop root)."""
    config = tmp_path / "xmppd.toml"
    _, key = make_cert(tmp_path / "certs")
    unreadable = tmp_path / "a-directory.pem"
    unreadable.mkdir()
    config.write_text(base_config(tmp_path) + tls_section(unreadable, key))
    check_one_line(run_twistd(config, tmp_path), config, "[tls] certificate")


def test_certificate_file_without_pem(tmp_path):
    config = tmp_path / "xmppd.toml"
    _, key = make_cert(tmp_path / "certs")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("this is not a certificate\n")
    config.write_text(base_config(tmp_path) + tls_section(garbage, key))
    check_one_line(run_twistd(config, tmp_path), config, "[tls] certificate")


def test_key_not_matching_certificate(tmp_path):
    config = tmp_path / "xmppd.toml"
    cert, _ = make_cert(tmp_path / "one")
    _, other_key = make_cert(tmp_path / "two")
    config.write_text(base_config(tmp_path) + tls_section(cert, other_key))
    check_one_line(run_twistd(config, tmp_path), config, "[tls] key")


def test_certificate_without_key(tmp_path):
    config = tmp_path / "xmppd.toml"
    cert, _ = make_cert(tmp_path / "one")
    config.write_text(base_config(tmp_path) + f"[tls]\ncertificate = {json.dumps(str(cert))}\n")
    check_one_line(run_twistd(config, tmp_path), config, "[tls]")


def test_invalid_toml(tmp_path):
    config = tmp_path / "xmppd.toml"
    config.write_text(base_config(tmp_path) + "[plugins\nenabled = [\n")
    check_one_line(run_twistd(config, tmp_path), config, "TOML", "line")


def test_missing_config_file(tmp_path):
    config = tmp_path / "does-not-exist.toml"
    line = check_one_line(run_twistd(config, tmp_path), config, "not found")
    assert not (tmp_path / "xmppd-data").exists(), line


def test_port_in_use(tmp_path):
    busy = socket.socket()
    try:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = tmp_path / "xmppd.toml"
        config.write_text(
            base_config(tmp_path).replace("tcp:0:interface=127.0.0.1", f"tcp:{port}:interface=127.0.0.1")
        )
        check_one_line(run_twistd(config, tmp_path), config, "[listen] c2s", str(port), "in use")
    finally:
        busy.close()


# -- the embedded defaults ------------------------------------------------------------------------------


def port_free(port: int) -> bool:
    probe = socket.socket()
    try:
        probe.bind(("127.0.0.1", port))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def start_defaults(cwd: Path, log: Path, timeout: float = 30) -> subprocess.Popen:
    """``twistd -n xmppd`` without --config in ``cwd``; returns once it listens."""
    listeners = cwd / "xmppd-data" / "listeners.json"
    if listeners.exists():
        listeners.unlink()
    with open(log, "ab") as out:
        process = subprocess.Popen(
            twistd_command(None),
            cwd=cwd,
            env=twistd_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + timeout
    while not listeners.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            text = log.read_text(errors="replace")
            if "Address already in use" in text:
                pytest.skip("port 5222 was taken while the test ran")
            raise AssertionError(f"xmppd did not start on the defaults:\n{text}")
        time.sleep(0.05)
    return process


def stop(process: subprocess.Popen) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def test_embedded_defaults(tmp_path):
    if not port_free(5222):
        pytest.skip("127.0.0.1:5222 is in use on this machine; the embedded defaults listen there")
    log = tmp_path / "xmppd.log"
    process = start_defaults(tmp_path, log)
    try:
        data = tmp_path / "xmppd-data"
        listeners = json.loads((data / "listeners.json").read_text())
        assert listeners["c2s"] == ["127.0.0.1:5222"]
        cert = data / "selfsigned.crt"
        first_cert = cert.read_bytes()
        assert first_cert.startswith(b"-----BEGIN CERTIFICATE-----")
        assert (data / "selfsigned.key").stat().st_mode & 0o077 == 0  # the key is private
        with RawClient(5222, cafile=str(cert)) as client:
            features = client.starttls()  # the generated certificate verifies for "localhost"
            assert client.header["from"] == "localhost"
            assert features is not None
    finally:
        stop(process)

    process = start_defaults(tmp_path, log)
    try:
        assert cert.read_bytes() == first_cert  # reused, not regenerated
        with RawClient(5222, cafile=str(cert)) as client:
            client.starttls()
    finally:
        stop(process)
    assert "Traceback" not in log.read_text(errors="replace")
