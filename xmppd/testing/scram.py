"""A SCRAM client (RFC 5802, RFC 7677), sans-IO, for tests that log in without a client library.

    client = ScramClient("alice", "secret", "SHA-256")
    send(auth(mechanism="SCRAM-SHA-256", data=client.first()))
    send(response(client.final(challenge_data)))
    assert client.verify(success_data)

``gs2_header`` and ``cb_data`` select channel binding for the -PLUS mechanisms (``"p=tls-exporter,,"`` with
the exporter bytes), or a deliberately wrong header for negative tests (``"y,,"``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets


class ScramClient:
    def __init__(
        self,
        user: str,
        password: str,
        hash_name: str = "SHA-256",
        *,
        gs2_header: str = "n,,",
        cb_data: bytes = b"",
        nonce: str | None = None,
    ) -> None:
        self.hash = hash_name.replace("-", "").lower()  # hashlib name: sha1, sha256
        self.password = password
        self.gs2_header = gs2_header
        self.cb_data = cb_data
        self.nonce = nonce or secrets.token_urlsafe(18)
        username = user.replace("=", "=3D").replace(",", "=2C")
        self.first_bare = f"n={username},r={self.nonce}"
        self._auth_message = b""
        self._salted = b""

    def first(self) -> bytes:
        """client-first-message (RFC 5802 s7)."""
        return (self.gs2_header + self.first_bare).encode()

    def final(self, server_first: bytes) -> bytes:
        """client-final-message answering the server-first-message, with the proof."""
        text = server_first.decode()
        attrs = dict(item.split("=", 1) for item in text.split(","))
        if not attrs["r"].startswith(self.nonce):
            raise ValueError("the server's nonce does not extend ours")
        self._salted = hashlib.pbkdf2_hmac(
            self.hash, self.password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"])
        )
        client_key = hmac.digest(self._salted, b"Client Key", self.hash)
        channel = base64.b64encode(self.gs2_header.encode() + self.cb_data).decode()
        final_bare = f"c={channel},r={attrs['r']}"
        self._auth_message = f"{self.first_bare},{text},{final_bare}".encode()
        signature = hmac.digest(hashlib.new(self.hash, client_key).digest(), self._auth_message, self.hash)
        proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature, strict=True))).decode()
        return f"{final_bare},p={proof}".encode()

    def verify(self, server_final: bytes) -> bool:
        """Whether the server-final-message proves the server knew our credentials (RFC 5802 s5)."""
        server_key = hmac.digest(self._salted, b"Server Key", self.hash)
        expected = base64.b64encode(hmac.digest(server_key, self._auth_message, self.hash)).decode()
        return server_final.decode() == f"v={expected}"
