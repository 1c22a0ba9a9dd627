"""Tests for the sans-IO SASL mechanisms: SCRAM (RFC 5802, RFC 7677), PLAIN (RFC 4616) and TLS
channel binding (RFC 5929 s4.1, RFC 9266)."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import random

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from xmppd.sasl.channel_binding import tls_channel_bindings, tls_server_end_point
from xmppd.sasl.errors import SASLError
from xmppd.sasl.plain import parse_plain
from xmppd.sasl.scram import (
    DEFAULT_ITERATIONS,
    ScramCredentials,
    ScramServer,
    derive_credentials,
    mechanism_names,
    normalize_password,
    parse_mechanism,
    verify_password,
)

# -- an independent client side, written straight from RFC 5802 s3 -----------------------------

_HASH = {"SHA-1": hashlib.sha1, "SHA-256": hashlib.sha256}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def client_final_for(
    hash_name: str,
    password: str,
    client_first_bare: str,
    server_first: bytes,
    *,
    gs2_header: str = "n,,",
    cb_data: bytes = b"",
    nonce: str | None = None,
) -> tuple[bytes, bytes]:
    """Return (client-final-message, expected server-final-message)."""
    h = _HASH[hash_name]
    attrs = dict(part.split("=", 1) for part in server_first.decode().split(","))
    salted = hashlib.pbkdf2_hmac(h().name, password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
    client_key = hmac.new(salted, b"Client Key", h).digest()
    stored_key = h(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", h).digest()
    without_proof = f"c={b64(gs2_header.encode() + cb_data)},r={nonce or attrs['r']}"
    auth_message = f"{client_first_bare},{server_first.decode()},{without_proof}".encode()
    signature = hmac.new(stored_key, auth_message, h).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    server_signature = hmac.new(server_key, auth_message, h).digest()
    return f"{without_proof},p={b64(proof)}".encode(), b"v=" + base64.b64encode(server_signature)


def make_server(hash_name: str = "SHA-256", **kw) -> ScramServer:
    kw.setdefault("plus", False)
    kw.setdefault("plus_advertised", False)
    kw.setdefault("channel_bindings", {})
    return ScramServer(hash_name, **kw)


def run_exchange(
    hash_name: str = "SHA-256",
    password: str = "pencil",
    stored_password: str = "pencil",
    *,
    gs2_header: str = "n,,",
    client_cb_data: bytes = b"",
    creds: ScramCredentials | None | str = "derive",
    **server_kw,
) -> tuple[ScramServer, bytes]:
    server = make_server(hash_name, **server_kw)
    bare = "n=user,r=clientnonce123"
    assert server.client_first((gs2_header + bare).encode()) == "user"
    if creds == "derive":
        creds = derive_credentials(stored_password, hash_name)
    server_first = server.server_first(creds)
    final, expected = client_final_for(
        hash_name, password, bare, server_first, gs2_header=gs2_header, cb_data=client_cb_data
    )
    result = server.client_final(final)
    assert result == expected
    return server, result


# -- RFC test vectors ---------------------------------------------------------------------------


def test_rfc5802_section5_scram_sha1_example() -> None:
    creds = derive_credentials("pencil", "SHA-1", salt=base64.b64decode("QSXCR+Q6sek8bf92"), iterations=4096)
    server = make_server("SHA-1", nonce="3rfcNHYJY1ZVvWVs7j")
    assert server.client_first(b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL") == "user"
    assert server.authzid is None
    assert server.server_first(creds) == (
        b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"
    )
    assert not server.authenticated
    final = b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
    assert server.client_final(final) == b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ="
    assert server.authenticated
    assert server.username == "user"
    assert server.authzid is None


def test_rfc7677_section3_scram_sha256_example() -> None:
    creds = derive_credentials(
        "pencil", "SHA-256", salt=base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="), iterations=4096
    )
    server = make_server("SHA-256", nonce="%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
    assert server.client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO") == "user"
    assert server.server_first(creds) == (
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    )
    final = (
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    )
    assert server.client_final(final) == b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    assert server.authenticated


@pytest.mark.parametrize(
    ("hash_name", "salt"),
    [("SHA-1", "QSXCR+Q6sek8bf92"), ("SHA-256", "W22ZaJ0SNY7soEsUEjb6gQ==")],
)
def test_derive_credentials_matches_rfc5802_section3_definitions(hash_name: str, salt: str) -> None:
    h = _HASH[hash_name]
    salted = hashlib.pbkdf2_hmac(h().name, b"pencil", base64.b64decode(salt), 4096)
    creds = derive_credentials("pencil", hash_name, salt=base64.b64decode(salt), iterations=4096)
    assert creds.hash_name == hash_name
    assert creds.iterations == 4096
    assert creds.salt == base64.b64decode(salt)
    assert creds.stored_key == h(hmac.new(salted, b"Client Key", h).digest()).digest()
    assert creds.server_key == hmac.new(salted, b"Server Key", h).digest()


def test_derive_credentials_known_values() -> None:
    # Regression values for the RFC 5802 s5 example user (derived once and checked above).
    creds = derive_credentials("pencil", "SHA-1", salt=base64.b64decode("QSXCR+Q6sek8bf92"))
    assert creds.iterations == DEFAULT_ITERATIONS == 4096
    assert b64(creds.stored_key) == "6dlGYMOdZcOPutkcNY8U2g7vK9Y="
    assert b64(creds.server_key) == "D+CSWLOshSulAsxiupA+qs2/fTE="


def test_derive_credentials_random_salt() -> None:
    a = derive_credentials("pencil", "SHA-256", iterations=1)
    b = derive_credentials("pencil", "SHA-256", iterations=1)
    assert len(a.salt) == 16
    assert a.salt != b.salt
    assert a.stored_key != b.stored_key


def test_derive_credentials_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        derive_credentials("", "SHA-256")  # OpaqueString forbids empty (RFC 8265 s4.2)
    with pytest.raises(ValueError):
        derive_credentials("pen\x07cil", "SHA-256")  # control character
    with pytest.raises(ValueError):
        derive_credentials("pencil", "MD5")
    with pytest.raises(ValueError):
        derive_credentials("pencil", "SHA-256", iterations=0)


def test_credentials_dict_round_trip_is_json_safe() -> None:
    creds = derive_credentials("pencil", "SHA-256", iterations=10)
    d = json.loads(json.dumps(creds.to_dict()))
    assert ScramCredentials.from_dict(d) == creds


@pytest.mark.parametrize(
    "change",
    [
        {"hash_name": "MD5"},
        {"iterations": 0},
        {"iterations": "4096"},
        {"iterations": True},
        {"salt": "not base64!"},
        {"salt": ""},
        {"stored_key": base64.b64encode(b"short").decode()},
        {"server_key": None},
        {"hash_name": None},
    ],
)
def test_credentials_from_dict_rejects_malformed(change: dict) -> None:
    d = derive_credentials("pencil", "SHA-256", iterations=10).to_dict() | change
    with pytest.raises(ValueError):
        ScramCredentials.from_dict(d)
    with pytest.raises(ValueError):
        ScramCredentials.from_dict({})


# -- passwords ----------------------------------------------------------------------------------


def test_verify_password() -> None:
    creds = derive_credentials("pencil", "SHA-256", iterations=10)
    assert verify_password("pencil", creds)
    assert not verify_password("pencil ", creds)
    assert not verify_password("Pencil", creds)
    assert not verify_password("", creds)
    assert not verify_password("pen\x00cil", creds)


def test_password_is_prepared_with_opaquestring() -> None:
    # RFC 8265 s4.2.1: non-ASCII spaces map to U+0020, and NFC applies.
    assert normalize_password("pen\u00a0cil") == "pen cil"
    assert normalize_password("cafe\u0301") == "caf\u00e9"
    creds = derive_credentials("caf\u00e9 au lait", "SHA-1", iterations=10)
    assert verify_password("cafe\u0301\u3000au\u00a0lait", creds)
    with pytest.raises(ValueError):
        normalize_password("")


# -- SCRAM exchange -----------------------------------------------------------------------------


@pytest.mark.parametrize("hash_name", ["SHA-1", "SHA-256"])
def test_full_exchange(hash_name: str) -> None:
    server, _ = run_exchange(hash_name)
    assert server.authenticated
    assert server.username == "user"
    assert server.channel_binding is None


def test_default_server_nonce_is_random_and_printable() -> None:
    nonces = set()
    for _ in range(2):
        server = make_server()
        server.client_first(b"n,,n=user,r=abc")
        first = server.server_first(derive_credentials("pencil", "SHA-256", iterations=1)).decode()
        nonce = first.split(",")[0][2:]
        assert nonce.startswith("abc") and len(nonce) > 3 + 24
        assert "," not in nonce
        nonces.add(nonce)
    assert len(nonces) == 2


def test_wrong_password_is_not_authorized() -> None:
    with pytest.raises(SASLError) as e:
        run_exchange(password="pencil", stored_password="pen")
    assert e.value.condition == "not-authorized"


def test_unknown_user_looks_normal_and_fails_at_the_end() -> None:
    def first(username: str, hash_name: str = "SHA-256") -> tuple[ScramServer, bytes]:
        server = make_server(hash_name)
        server.client_first(f"n,,n={username},r=nonce".encode())
        return server, server.server_first(None)

    server, message = first("nobody")
    r, s, i = message.decode().split(",")
    assert r.startswith("r=nonce") and len(r) > len("r=nonce")
    assert len(base64.b64decode(s[2:], validate=True)) == 16
    assert i == f"i={DEFAULT_ITERATIONS}"
    # Same salt every time for the same name, different for another name.
    assert first("nobody")[1].split(b",")[1] == message.split(b",")[1]
    assert first("someone")[1].split(b",")[1] != message.split(b",")[1]
    assert first("nobody", "SHA-1")[1].split(b",")[1] != message.split(b",")[1]
    # Spellings of the same localpart (RFC 7622 s3.3) get the same salt, as a real account would.
    assert first("NoBody")[1].split(b",")[1] == message.split(b",")[1]

    final, _ = client_final_for("SHA-256", "pencil", "n=nobody,r=nonce", message)
    with pytest.raises(SASLError) as e:
        server.client_final(final)
    assert e.value.condition == "not-authorized"
    assert e.value.text is None  # the same as a wrong password
    assert not server.authenticated


def test_nonce_mismatch_is_not_authorized() -> None:
    server = make_server()
    server.client_first(b"n,,n=user,r=abc")
    message = server.server_first(derive_credentials("pencil", "SHA-256", iterations=1))
    for nonce in ("abc", "abcX", message.decode().split(",")[0][2:] + "X"):
        server = make_server(nonce="XYZ")
        server.client_first(b"n,,n=user,r=abc")
        message = server.server_first(derive_credentials("pencil", "SHA-256", iterations=1))
        final, _ = client_final_for("SHA-256", "pencil", "n=user,r=abc", message, nonce=nonce)
        with pytest.raises(SASLError) as e:
            server.client_final(final)
        assert e.value.condition == "not-authorized"


def test_escaped_username_and_authzid() -> None:
    # RFC 5802 s5.1: "," is sent as "=2C" and "=" as "=3D" in saslnames.
    server = make_server()
    bare = "n=a=2Cb=3Dc,r=xyz"
    assert server.client_first(b"n,a=juliet@example.com=2Cx=3D," + bare.encode()) == "a,b=c"
    assert server.authzid == "juliet@example.com,x="
    message = server.server_first(derive_credentials("pencil", "SHA-256", iterations=1))
    final, expected = client_final_for(
        "SHA-256", "pencil", bare, message, gs2_header="n,a=juliet@example.com=2Cx=3D,"
    )
    assert server.client_final(final) == expected
    assert server.username == "a,b=c"


def test_non_ascii_username() -> None:
    server = make_server()
    assert server.client_first("n,,n=j\u00fcrgen,r=xyz".encode()) == "j\u00fcrgen"


def test_extensions_are_ignored() -> None:
    # RFC 5802 s7: unrecognized extension attributes MUST be ignored.
    server = make_server()
    bare = "n=user,r=xyz,x=something,y=else"
    server.client_first(b"n,," + bare.encode())
    creds = derive_credentials("pencil", "SHA-256", iterations=1)
    message = server.server_first(creds)
    final, expected = client_final_for("SHA-256", "pencil", bare, message)
    final = final.replace(b",p=", b",z=ext,p=")
    # The extension is part of client-final-message-without-proof, so recompute the proof.
    without_proof = final.rsplit(b",p=", 1)[0].decode()
    h = hashlib.sha256
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", creds.salt, 1)
    client_key = hmac.new(salted, b"Client Key", h).digest()
    auth = f"{bare},{message.decode()},{without_proof}".encode()
    sig = hmac.new(creds.stored_key, auth, h).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, sig, strict=True))
    assert server.client_final(f"{without_proof},p={b64(proof)}".encode()).startswith(b"v=")


def test_credentials_for_another_hash_are_a_programming_error() -> None:
    server = make_server("SHA-256")
    server.client_first(b"n,,n=user,r=xyz")
    with pytest.raises(ValueError):
        server.server_first(derive_credentials("pencil", "SHA-1", iterations=1))


def test_messages_out_of_order() -> None:
    server = make_server()
    with pytest.raises(RuntimeError):
        server.server_first(None)
    with pytest.raises(SASLError) as e:
        server.client_final(b"c=biws,r=x,p=AAAA")
    assert e.value.condition == "malformed-request"
    # A failed exchange stays failed.
    with pytest.raises(SASLError):
        server.client_first(b"n,,n=user,r=xyz")

    server, _ = run_exchange()
    with pytest.raises(SASLError):
        server.client_final(b"c=biws,r=x,p=AAAA")
    assert not server.authenticated


def test_failure_ends_the_exchange() -> None:
    server = make_server()
    server.client_first(b"n,,n=user,r=xyz")
    message = server.server_first(derive_credentials("pencil", "SHA-256", iterations=1))
    bad, _ = client_final_for("SHA-256", "wrong", "n=user,r=xyz", message)
    good, _ = client_final_for("SHA-256", "pencil", "n=user,r=xyz", message)
    with pytest.raises(SASLError):
        server.client_final(bad)
    with pytest.raises(SASLError):
        server.client_final(good)
    assert not server.authenticated


# -- channel binding (RFC 5802 s6) -------------------------------------------------------------

CB = {"tls-exporter": b"E" * 32, "tls-server-end-point": b"S" * 32}


@pytest.mark.parametrize("cb_type", ["tls-exporter", "tls-server-end-point"])
def test_plus_with_correct_binding_succeeds(cb_type: str) -> None:
    server, _ = run_exchange(
        gs2_header=f"p={cb_type},,",
        client_cb_data=CB[cb_type],
        plus=True,
        plus_advertised=True,
        channel_bindings=CB,
    )
    assert server.authenticated
    assert server.channel_binding == cb_type


@pytest.mark.parametrize(
    ("gs2_header", "cb_data"),
    [
        ("p=tls-exporter,,", b"X" * 32),  # a man in the middle sees another TLS session
        ("p=tls-exporter,,", CB["tls-server-end-point"]),
        ("p=tls-exporter,,", b""),
        ("n,,", b""),  # c= says something else than the GS2 header sent
    ],
)
def test_plus_with_wrong_binding_fails(gs2_header: str, cb_data: bytes) -> None:
    server = make_server(plus=True, plus_advertised=True, channel_bindings=CB)
    server.client_first(b"p=tls-exporter,,n=user,r=xyz")
    message = server.server_first(derive_credentials("pencil", "SHA-256", iterations=1))
    final, _ = client_final_for(
        "SHA-256", "pencil", "n=user,r=xyz", message, gs2_header=gs2_header, cb_data=cb_data
    )
    with pytest.raises(SASLError) as e:
        server.client_final(final)
    assert e.value.condition == "not-authorized"


def test_authzid_is_bound_through_c_attribute() -> None:
    # The GS2 header, authzid included, is repeated in c=; a changed authzid is refused.
    server = make_server()
    server.client_first(b"n,a=admin,n=user,r=xyz")
    message = server.server_first(derive_credentials("pencil", "SHA-256", iterations=1))
    final, _ = client_final_for("SHA-256", "pencil", "n=user,r=xyz", message, gs2_header="n,,")
    with pytest.raises(SASLError) as e:
        server.client_final(final)
    assert e.value.condition == "not-authorized"


def test_unsupported_channel_binding_type() -> None:
    server = make_server(plus=True, plus_advertised=True, channel_bindings={"tls-server-end-point": b"x"})
    with pytest.raises(SASLError) as e:
        server.client_first(b"p=tls-exporter,,n=user,r=xyz")
    assert e.value.condition == "not-authorized"
    server = make_server(plus=True, plus_advertised=True, channel_bindings={})
    with pytest.raises(SASLError) as e:
        server.client_first(b"p=tls-unique,,n=user,r=xyz")
    assert e.value.condition == "not-authorized"


def test_y_flag_is_a_downgrade_when_plus_was_advertised() -> None:
    server = make_server(plus_advertised=True, channel_bindings=CB)
    with pytest.raises(SASLError) as e:
        server.client_first(b"y,,n=user,r=xyz")
    assert e.value.condition == "not-authorized"


def test_y_flag_accepted_when_plus_was_not_advertised() -> None:
    server, _ = run_exchange(gs2_header="y,,", plus_advertised=False)
    assert server.authenticated


def test_n_flag_accepted_even_when_plus_was_advertised() -> None:
    server, _ = run_exchange(gs2_header="n,,", plus_advertised=True, channel_bindings=CB)
    assert server.authenticated


@pytest.mark.parametrize("flag", ["n", "y"])
def test_plus_mechanism_requires_p_flag(flag: str) -> None:
    server = make_server(plus=True, plus_advertised=True, channel_bindings=CB)
    with pytest.raises(SASLError) as e:
        server.client_first(f"{flag},,n=user,r=xyz".encode())
    assert e.value.condition == "not-authorized"


def test_p_flag_on_non_plus_mechanism_is_rejected() -> None:
    server = make_server(plus=False, plus_advertised=True, channel_bindings=CB)
    with pytest.raises(SASLError) as e:
        server.client_first(b"p=tls-exporter,,n=user,r=xyz")
    assert e.value.condition == "malformed-request"


# -- malformed messages -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"n",
        b"n,",
        b"n,,",
        b"n,,n=user",
        b"n,,r=xyz",
        b"n,,n=user,",
        b"n,,n=,r=xyz",
        b"n,,n=user,r=",
        b"n,,n=user,r=x y",
        b"n,,r=xyz,n=user",
        b"x,,n=user,r=xyz",
        b"F,n,,n=user,r=xyz",
        b"p,,n=user,r=xyz",
        b"p=,,n=user,r=xyz",
        b"p=tls exporter,,n=user,r=xyz",
        b"n,a,n=user,r=xyz",
        b"n,a=,n=user,r=xyz",
        b"n,b=x,n=user,r=xyz",
        b"n,,m=ext,n=user,r=xyz",
        b"n,,n=user,r=xyz,m=ext",
        b"n,,n=user,r=xyz,n=again",
        b"n,,n=user,r=xyz,foo",
        b"n,,n=user,r=xyz,xx=1",
        b"n,,n=user,r=xyz,x=",
        b"n,,n=us=er,r=xyz",
        b"n,,n=us=2,r=xyz",
        b"n,,n=us=2c,r=xyz",
        b"n,,n=user=,r=xyz",
        b"n,a=ad=mi,n=user,r=xyz",
        b"n,,n=us\x00er,r=xyz",
        b"n,,n=\xff\xfe,r=xyz",
        b"n,,n=user,r=\xc3\xa9",
        b"n,,n=user,r=xyz" + b"x" * 10000,
    ],
)
def test_malformed_client_first(message: bytes) -> None:
    server = make_server()
    with pytest.raises(SASLError) as e:
        server.client_first(message)
    assert e.value.condition == "malformed-request"


@pytest.fixture
def awaiting_final() -> tuple[ScramServer, str]:
    server = make_server("SHA-1", nonce="srv")
    server.client_first(b"n,,n=user,r=cli")
    server.server_first(derive_credentials("pencil", "SHA-1", iterations=1))
    return server, "clisrv"


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"c=biws",
        b"c=biws,r=clisrv",
        b"c=biws,r=clisrv,",
        b"r=clisrv,c=biws,p=AAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        b"c=biws,p=AAAAAAAAAAAAAAAAAAAAAAAAAAA=,r=clisrv",
        b"c=,r=clisrv,p=AAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        b"c=b!ws,r=clisrv,p=AAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        b"c=biw,r=clisrv,p=AAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        b"c=biws,r=clisrv,p=",
        b"c=biws,r=clisrv,p=AAAA",  # wrong length for SHA-1
        b"c=biws,r=clisrv,p=AAAAAAAAAAAAAAAAAAAAAAAAAAA",  # missing padding
        b"c=biws,r=clisrv,p=\xc3\xa9AAAAAAAAAAAAAAAAAAAAAAAAAA=",
        b"c=biws,r=clisrv,m=x,p=AAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        b"c=biws,r=clisrv,c=biws,p=AAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        b"c=biws,r=clisrv,xyz,p=AAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        b"c=biws,r=clisrv,p=AAAAAAAAAAAAAAAAAAAAAAAAAAA=,x=y",
        b"c=biws,r=clisrv\x00,p=AAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        b"\xff,r=clisrv,p=AAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    ],
)
def test_malformed_client_final(awaiting_final: tuple[ScramServer, str], message: bytes) -> None:
    server, _ = awaiting_final
    with pytest.raises(SASLError) as e:
        server.client_final(message)
    assert e.value.condition == "malformed-request"


def test_well_formed_but_wrong_client_final(awaiting_final: tuple[ScramServer, str]) -> None:
    server, _ = awaiting_final
    with pytest.raises(SASLError) as e:
        server.client_final(b"c=biws,r=clisrv,p=AAAAAAAAAAAAAAAAAAAAAAAAAAA=")
    assert e.value.condition == "not-authorized"


def test_mutated_messages_only_raise_sasl_errors() -> None:
    """Random corruption of valid messages never escapes as another exception type."""
    rng = random.Random(5802)
    creds = derive_credentials("pencil", "SHA-1", iterations=1)
    first = b"n,a=admin,n=user,r=fyko+d2lbbFgONRv9qkxdawL"
    alphabet = b",=naprcm2CD3\x00\xff\xc3 AZ+/"

    def mutate(data: bytes) -> bytes:
        out = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(3)
            pos = rng.randrange(len(out) + 1)
            if op == 0 and out:
                del out[min(pos, len(out) - 1)]
            elif op == 1:
                out.insert(pos, rng.choice(alphabet))
            elif out:
                out[min(pos, len(out) - 1)] = rng.choice(alphabet)
        return bytes(out)

    for _ in range(400):
        server = make_server("SHA-1", plus_advertised=rng.random() < 0.5)
        try:
            server.client_first(mutate(first))
            message = server.server_first(creds if rng.random() < 0.8 else None)
            final, _ = client_final_for("SHA-1", "pencil", "n=user,r=x", message)
            server.client_final(mutate(final))
        except SASLError as e:
            assert e.condition in {"malformed-request", "not-authorized"}


# -- mechanism names ----------------------------------------------------------------------------


def test_mechanism_names() -> None:
    assert mechanism_names(plus=True) == [
        "SCRAM-SHA-256-PLUS",
        "SCRAM-SHA-1-PLUS",
        "SCRAM-SHA-256",
        "SCRAM-SHA-1",
    ]
    assert mechanism_names(plus=False) == ["SCRAM-SHA-256", "SCRAM-SHA-1"]


def test_parse_mechanism() -> None:
    assert parse_mechanism("SCRAM-SHA-1") == ("SHA-1", False)
    assert parse_mechanism("SCRAM-SHA-256-PLUS") == ("SHA-256", True)
    for name in ("PLAIN", "SCRAM-SHA-512", "scram-sha-1", "SCRAM-SHA-1-plus", "SCRAM-", "SCRAM-PLUS"):
        assert parse_mechanism(name) is None


def test_unknown_hash_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        make_server("MD5")
    with pytest.raises(ValueError):
        make_server(nonce="a,b")


def test_sasl_error() -> None:
    e = SASLError("not-authorized", "bad")
    assert (e.condition, e.text) == ("not-authorized", "bad")
    assert SASLError("aborted").text is None
    with pytest.raises(ValueError):
        SASLError("no-such-condition")


# -- PLAIN (RFC 4616) ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (b"\x00tim\x00tanstaaftanstaaf", (None, "tim", "tanstaaftanstaaf")),
        (b"Ursel\x00Kurt\x00xipj3plmq", ("Ursel", "Kurt", "xipj3plmq")),
        ("\x00j\u00fcrgen\x00p\u00e4ss w\u00f6rd".encode(), (None, "j\u00fcrgen", "p\u00e4ss w\u00f6rd")),
        (b"admin@example.org\x00user\x00p", ("admin@example.org", "user", "p")),
    ],
)
def test_parse_plain(message: bytes, expected: tuple) -> None:
    assert parse_plain(message) == expected


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"tim",
        b"\x00tim",
        b"\x00tim\x00",
        b"\x00\x00pass",
        b"\x00tim\x00pa\x00ss",
        b"a\x00tim\x00pass\x00",
        b"\x00ti\xffm\x00pass",
        b"\x00tim\x00\xc3",
        b"\xed\xa0\x80\x00tim\x00pass",  # an encoded surrogate is not UTF-8
        b"\x00" + b"t" * 2000 + b"\x00pass",
    ],
)
def test_parse_plain_malformed(message: bytes) -> None:
    with pytest.raises(SASLError) as e:
        parse_plain(message)
    assert e.value.condition == "malformed-request"


# -- TLS channel binding data (RFC 9266, RFC 5929 s4.1) -----------------------------------------


def make_cert(key, algorithm: hashes.HashAlgorithm | None = hashes.SHA256()) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "example.org")])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, algorithm)
    )


def handshake(
    key, cert: x509.Certificate, max_version: int | None = None
) -> tuple[SSL.Connection, SSL.Connection]:
    """A TLS handshake between two pyOpenSSL connections over memory BIOs."""
    server_ctx = SSL.Context(SSL.TLS_METHOD)
    server_ctx.use_certificate(cert)
    server_ctx.use_privatekey(key)
    client_ctx = SSL.Context(SSL.TLS_METHOD)
    if max_version is not None:
        client_ctx.set_max_proto_version(max_version)
    server = SSL.Connection(server_ctx, None)
    server.set_accept_state()
    client = SSL.Connection(client_ctx, None)
    client.set_connect_state()
    done = {client: False, server: False}
    for _ in range(20):
        for conn in (client, server):
            if not done[conn]:
                try:
                    conn.do_handshake()
                    done[conn] = True
                except SSL.WantReadError:
                    pass
        for src, dst in ((client, server), (server, client)):
            try:
                dst.bio_write(src.bio_read(65536))
            except SSL.WantReadError:
                pass
        if all(done.values()):
            return client, server
    raise AssertionError("handshake did not finish")


def test_no_tls_no_bindings() -> None:
    assert tls_channel_bindings(None) == {}


def test_tls13_channel_bindings_match_on_both_sides() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = make_cert(key)
    client, server = handshake(key, cert)
    assert server.get_protocol_version_name() == "TLSv1.3"
    bindings = tls_channel_bindings(server)
    assert set(bindings) == {"tls-exporter", "tls-server-end-point"}
    client_exporter = client.export_keying_material(b"EXPORTER-Channel-Binding", 32)
    assert len(bindings["tls-exporter"]) == 32
    assert bindings["tls-exporter"] == client_exporter
    peer_der = client.get_peer_certificate().to_cryptography().public_bytes(Encoding.DER)
    assert bindings["tls-server-end-point"] == hashlib.sha256(peer_der).digest()
    assert peer_der == cert.public_bytes(Encoding.DER)

    # And a SCRAM-SHA-256-PLUS exchange with what the client computed succeeds.
    server_exchange, _ = run_exchange(
        gs2_header="p=tls-exporter,,",
        client_cb_data=client_exporter,
        plus=True,
        plus_advertised=True,
        channel_bindings=bindings,
    )
    assert server_exchange.authenticated

    # Another session with the same certificate has another exporter value.
    _, other_server = handshake(key, cert)
    other = tls_channel_bindings(other_server)
    assert other["tls-exporter"] != bindings["tls-exporter"]
    assert other["tls-server-end-point"] == bindings["tls-server-end-point"]


def test_tls12_offers_no_exporter() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = make_cert(key)
    _, server = handshake(key, cert, max_version=SSL.TLS1_2_VERSION)
    assert server.get_protocol_version_name() == "TLSv1.2"
    bindings = tls_channel_bindings(server)
    assert set(bindings) == {"tls-server-end-point"}


def test_tls_server_end_point_hash_choice() -> None:
    # RFC 5929 s4.1: the certificate's signature hash, but SHA-256 instead of MD5 or SHA-1.
    ec_key = ec.generate_private_key(ec.SECP384R1())
    cert384 = make_cert(ec_key, hashes.SHA384())
    assert tls_server_end_point(cert384) == hashlib.sha384(cert384.public_bytes(Encoding.DER)).digest()

    # cryptography no longer signs with SHA-1 or MD5, so present a real certificate's DER as if it had.
    class WeaklySigned:
        def __init__(self, algorithm: hashes.HashAlgorithm) -> None:
            self.signature_hash_algorithm = algorithm
            self.fingerprint = cert384.fingerprint

    der = cert384.public_bytes(Encoding.DER)
    for weak in (hashes.SHA1(), hashes.MD5()):
        assert tls_server_end_point(WeaklySigned(weak)) == hashlib.sha256(der).digest()

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert512 = make_cert(rsa_key, hashes.SHA512())
    assert tls_server_end_point(cert512) == hashlib.sha512(cert512.public_bytes(Encoding.DER)).digest()

    ed_key = ed25519.Ed25519PrivateKey.generate()
    assert tls_server_end_point(make_cert(ed_key, None)) is None
