"""Bulk accounts for benchmarks: N accounts with SCRAM-SHA-1 credentials, for xmppd and for Prosody.

Every account is ``user<i>@<domain>`` (i from 0) with the same password, salt and iteration count (4,096),
so the PBKDF2 work is done once, here and in the load generator; the servers never run PBKDF2 at login
anyway (they keep StoredKey and ServerKey).

* xmppd: :func:`write_pie` writes a XEP-0227 file (``<scram-credentials/>``, XEP-0227 1.1) that
  ``xmppdctl import`` reads into the configured storage (the server stopped).
* Prosody: :func:`write_prosody_accounts` writes the files of its ``internal`` storage with
  ``internal_hashed`` credentials directly (``<data_path>/<host>/accounts/<user>.dat``), exactly what
  ``prosodyctl register`` writes, without starting a Lua process per account.

Usage: ``python bench/provision.py N FILE.xml [--domain localhost]`` (the XEP-0227 file only).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import os
import re
from pathlib import Path

DOMAIN = "localhost"
PASSWORD = "bench-password"
#: Prosody stores the salt as the text it generated (a UUID); any string works as long as both servers
#: hand out the same bytes.
SALT = b"xmppd-bench-salt-0001"
ITERATIONS = 4096


def username(i: int) -> str:
    return f"user{i}"


def scram_sha1(
    password: str = PASSWORD, salt: bytes = SALT, iterations: int = ITERATIONS
) -> dict[str, bytes]:
    """SaltedPassword, StoredKey and ServerKey for SCRAM-SHA-1 (RFC 5802 s3)."""
    salted = hashlib.pbkdf2_hmac("sha1", password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha1")
    return {
        "salted": salted,
        "stored_key": hashlib.sha1(client_key).digest(),
        "server_key": hmac.digest(salted, b"Server Key", "sha1"),
    }


def write_pie(path: Path | str, count: int, domain: str = DOMAIN) -> Path:
    """A XEP-0227 file with ``count`` accounts (SCRAM-SHA-1 credentials only)."""
    keys = scram_sha1()
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    creds = (
        "<scram-credentials xmlns='urn:xmpp:pie:0#scram' mechanism='SCRAM-SHA-1'>"
        f"<iter-count>{ITERATIONS}</iter-count><salt>{b64(SALT)}</salt>"
        f"<server-key>{b64(keys['server_key'])}</server-key><stored-key>{b64(keys['stored_key'])}</stored-key>"
        "</scram-credentials>"
    )
    path = Path(path)
    with open(path, "w", encoding="utf-8") as f:
        f.write("<?xml version='1.0' encoding='UTF-8'?>\n<server-data xmlns='urn:xmpp:pie:0'>\n")
        f.write(f"<host jid='{domain}'>\n")
        for i in range(count):
            f.write(f"<user name='{username(i)}'>{creds}</user>\n")
        f.write("</host>\n</server-data>\n")
    return path


def prosody_encode(name: str) -> str:
    """Prosody's datamanager file-name encoding: every non-alphanumeric byte as %xx."""
    return re.sub(rb"[^A-Za-z0-9]", lambda m: b"%%%02x" % m.group()[0], name.encode()).decode()


def write_prosody_accounts(data_path: Path | str, count: int, domain: str = DOMAIN) -> Path:
    """The ``internal_hashed`` account files of ``count`` accounts under Prosody's ``data_path``."""
    keys = scram_sha1()
    text = (
        "return {\n"
        f'\t["salt"] = "{SALT.decode()}";\n'
        f'\t["iteration_count"] = {ITERATIONS};\n'
        f'\t["stored_key"] = "{keys["stored_key"].hex()}";\n'
        f'\t["server_key"] = "{keys["server_key"].hex()}";\n'
        "};\n"
    )
    accounts = Path(data_path) / prosody_encode(domain) / "accounts"
    accounts.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        target = accounts / f"{prosody_encode(username(i))}.dat"
        with open(target, "w") as f:
            f.write(text)
        os.chmod(target, 0o640)
    return accounts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("count", type=int)
    ap.add_argument("file")
    ap.add_argument("--domain", default=DOMAIN)
    ns = ap.parse_args()
    write_pie(ns.file, ns.count, ns.domain)
    print(f"{ns.file}: {ns.count} accounts user0..user{ns.count - 1}@{ns.domain}, password {PASSWORD!r}")


if __name__ == "__main__":
    main()
