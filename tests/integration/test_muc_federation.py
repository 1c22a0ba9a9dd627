"""Multi-User Chat (XEP-0045) across federation: rooms on xmppd's MUC service (conference.<domain>, an
in-process route of the server) with occupants from other servers, reaching the service over s2s.

* With Prosody 0.12: alice and carol of xmppd.localhost and bob of prosody.localhost share a room on
  conference.xmppd.localhost. Everyone sees everyone's presence, groupchat flows both ways, private
  messages go from the remote occupant to a local one and back, the remote occupant's nick change and
  leave are seen by the local ones, and when the owner kicks him he gets status 307 (and may no longer
  post). Prosody reaches conference.xmppd.localhost through its route table (mod_xmppd_routes), like
  xmppd.localhost itself. Two modes, as in test_prosody_interop.py: ``dialback`` (self-signed certificates,
  Prosody verifies conference.xmppd.localhost by dialback, so it connects back to that domain) and
  ``certificates`` (one TestCA, xmppd's certificate naming both xmppd.localhost and
  conference.xmppd.localhost, SASL EXTERNAL both ways).
* With two xmppd servers (a.localhost, b.localhost; dialback and SASL EXTERNAL as in
  test_federation.py): bob of b.localhost joins a room on conference.a.localhost and chats both ways; then
  b.localhost is killed (SIGKILL: no unavailable presence is ever sent). The room keeps serving its local
  occupants, and the next stanza it sends to bob bounces (b is unreachable), which removes the ghost
  occupant (status 333).

The MUC stanzas are written and inspected as XML here (not with slixmpp's xep_0045 plugin), so what is
checked is exactly what arrived. Every wait is bounded (slixclient.TIMEOUT, and an overall limit per test).
On failure the s2s / muc / error lines of the servers' logs written during the test are printed.
"""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from federation import FedClient, free_port, make_server, route, server_config, start_all
from slixclient import TIMEOUT, run, start_session, until, within
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from xmppd.testing.ca import TestCA
from xmppd.testing.process import ServerProcess
from xmppd.testing.prosody import ProsodyServer, prosody_missing

NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_USER = f"{NS_MUC}#user"
NS_MUC_ADMIN = f"{NS_MUC}#admin"
NS_MUC_OWNER = f"{NS_MUC}#owner"
NS_DATA = "jabber:x:data"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"


# -- clients -----------------------------------------------------------------------------------------------


class MucClient(FedClient):
    """A FedClient (``presences``: every presence received, in order; ``inbox``) that also keeps every
    message it receives in ``messages_seen``, so that waits can look back from a mark."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.messages_seen: list[Any] = []
        # every message stanza (slixmpp's "message" event leaves out those without a body, and errors)
        self.register_handler(
            Callback("keep messages", MatchXPath("{jabber:client}message"), self.messages_seen.append)
        )


class Pool:
    """Logs clients in to any server (port + trusted certificate); all are disconnected at the end."""

    def __init__(self) -> None:
        self.clients: list[MucClient] = []

    async def __aenter__(self) -> Pool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.gather(*(client.stop() for client in self.clients), return_exceptions=True)

    async def login(self, jid: str, password: str, port: int, trusted: Path) -> MucClient:
        client = MucClient(jid, password, trusted)
        self.clients.append(client)
        client.auto_authorize = None
        client.auto_subscribe = False
        await start_session(client, port)
        return client


# -- reading MUC stanzas -----------------------------------------------------------------------------------


def muc_user(stanza: Any) -> ET.Element | None:
    return stanza.xml.find(f"{{{NS_MUC_USER}}}x")


def codes(stanza: Any) -> set[str]:
    x = muc_user(stanza)
    return set() if x is None else {s.get("code") for s in x.findall(f"{{{NS_MUC_USER}}}status")}


def item(stanza: Any) -> dict[str, str]:
    x = muc_user(stanza)
    el = None if x is None else x.find(f"{{{NS_MUC_USER}}}item")
    return {} if el is None else dict(el.attrib)


def error_of(stanza: Any) -> str | None:
    """The defined condition of an error stanza (any child of <error> in the stanzas namespace)."""
    error = stanza.xml.find("{jabber:client}error")
    if error is None:
        return None
    return next(
        (
            c.tag.split("}")[1]
            for c in error
            if c.tag.startswith(f"{{{NS_STANZAS}}}") and not c.tag.endswith("}text")
        ),
        "?",
    )


def describe(stanzas: list[Any]) -> str:
    return "\n".join(str(s) for s in stanzas[-12:])


async def wait_presence(
    client: MucClient,
    from_: str,
    *,
    since: int = 0,
    type_: str | None = None,
    code: str | None = None,
    what: str,
    timeout: float = TIMEOUT,
) -> Any:
    """The first presence ``client`` received (from index ``since`` of its presences on) from ``from_``
    with the raw 'type' ``type_`` (None: available) and, if given, status ``code``."""
    found: list[Any] = []

    def check() -> bool:
        for p in client.presences[since:]:
            if str(p["from"]) == from_ and p.xml.get("type") == type_ and (code is None or code in codes(p)):
                found.append(p)
                return True
        return False

    try:
        await until(check, what, timeout)
    except AssertionError:
        raise AssertionError(
            f"{client.boundjid}: timed out waiting for {what}; its last presences:\n"
            f"{describe(client.presences[since:])}"
        ) from None
    return found[0]


async def wait_message(
    client: MucClient,
    match: Callable[[Any], bool],
    *,
    since: int = 0,
    what: str,
    timeout: float = TIMEOUT,
) -> Any:
    found: list[Any] = []

    def check() -> bool:
        for m in client.messages_seen[since:]:
            if match(m):
                found.append(m)
                return True
        return False

    try:
        await until(check, what, timeout)
    except AssertionError:
        raise AssertionError(
            f"{client.boundjid}: timed out waiting for {what}; its last messages:\n"
            f"{describe(client.messages_seen[since:])}"
        ) from None
    return found[0]


def body_from(from_: str, body: str, type_: str = "groupchat") -> Callable[[Any], bool]:
    return lambda m: str(m["from"]) == from_ and m.xml.get("type") == type_ and m["body"] == body


# -- MUC actions -------------------------------------------------------------------------------------------


async def join(client: MucClient, occupant: str, *, what: str | None = None) -> Any:
    """Send a MUC join (XEP-0045 s7.2.1, no history) to ``occupant`` (room/nick); returns the self-presence
    (status 110), or fails with the error the room answered."""
    since = len(client.presences)
    presence = client.make_presence(pto=occupant)
    x = ET.SubElement(presence.xml, f"{{{NS_MUC}}}x")
    ET.SubElement(x, f"{{{NS_MUC}}}history", maxstanzas="0")
    presence.send()
    found: list[Any] = []

    def answered() -> bool:
        for p in client.presences[since:]:
            if str(p["from"]) == occupant and (p.xml.get("type") == "error" or "110" in codes(p)):
                found.append(p)
                return True
        return False

    try:
        await until(answered, what or f"{client.boundjid} joining {occupant}")
    except AssertionError:
        raise AssertionError(
            f"{client.boundjid} got no self-presence from {occupant}; presences since the join:\n"
            f"{describe(client.presences[since:])}"
        ) from None
    answer = found[0]
    assert answer.xml.get("type") != "error", f"join of {occupant} refused: {error_of(answer)}\n{answer}"
    return answer


async def iq_set(client: MucClient, to: str, payload: ET.Element) -> Any:
    iq = client.make_iq_set(ito=to)
    iq.append(payload)
    try:
        return await iq.send(timeout=TIMEOUT)
    except IqError as e:
        raise AssertionError(f"iq to {to} failed: {e.iq['error']['condition']}\n{e.iq}") from None
    except IqTimeout:
        raise AssertionError(f"iq to {to} was not answered") from None


async def create_room(owner: MucClient, room: str, nick: str) -> None:
    """Create ``room`` as an instant room (XEP-0045 s10.1.2): join, get 201, submit an empty form."""
    self_presence = await join(owner, f"{room}/{nick}")
    assert {"110", "201"} <= codes(self_presence), self_presence
    assert (item(self_presence).get("affiliation"), item(self_presence).get("role")) == ("owner", "moderator")
    query = ET.Element(f"{{{NS_MUC_OWNER}}}query")
    ET.SubElement(query, f"{{{NS_DATA}}}x", type="submit")
    await iq_set(owner, room, query)


def groupchat(client: MucClient, room: str, body: str, id_: str) -> None:
    message = client.make_message(mto=room, mbody=body, mtype="groupchat")
    message["id"] = id_
    message.send()


def private(client: MucClient, occupant: str, body: str) -> None:
    client.make_message(mto=occupant, mbody=body, mtype="chat").send()


async def everyone_gets(clients: list[MucClient], marks: list[int], from_: str, body: str, id_: str) -> None:
    """Each client receives the groupchat ``body`` reflected from ``from_`` (room/nick), with its id."""
    for client, mark in zip(clients, marks, strict=True):
        message = await wait_message(
            client, body_from(from_, body), since=mark, what=f"{client.boundjid} gets {body!r} from {from_}"
        )
        assert message["id"] == id_, message


def kick_payload(nick: str, reason: str) -> ET.Element:
    query = ET.Element(f"{{{NS_MUC_ADMIN}}}query")
    el = ET.SubElement(query, f"{{{NS_MUC_ADMIN}}}item", nick=nick, role="none")
    ET.SubElement(el, f"{{{NS_MUC_ADMIN}}}reason").text = reason
    return query


# -- logs on failure ---------------------------------------------------------------------------------------

KEEP = ("s2s", "muc", "MUC", "rror", "raceback", "warn")


def log_excerpt(name: str, path: Path, text: str) -> str:
    lines = [line for line in text.splitlines() if any(k in line for k in KEEP)]
    return f"--- {name} ({path}), s2s/muc/error lines:\n" + "\n".join(lines)[-15000:]


# == 1. xmppd's MUC with a Prosody occupant ================================================================

XMPPD = "xmppd.localhost"
MUC = f"conference.{XMPPD}"
PROSODY = "prosody.localhost"
ALICE, CAROL, BOB = f"alice@{XMPPD}", f"carol@{XMPPD}", f"bob@{PROSODY}"
PASSWORDS = {ALICE: "alice-pw", CAROL: "carol-pw", BOB: "bob-pw"}


@dataclass
class WithProsody:
    mode: str
    xmppd: ServerProcess
    prosody: ProsodyServer
    xmppd_trust: Path
    prosody_trust: Path

    async def login(self, pool: Pool, jid: str) -> MucClient:
        bare = jid.split("/")[0]
        if bare.endswith("@" + PROSODY):
            return await pool.login(jid, PASSWORDS[bare], self.prosody.c2s_port, self.prosody_trust)
        return await pool.login(jid, PASSWORDS[bare], self.xmppd.port(), self.xmppd_trust)


@pytest.fixture(scope="module", params=("dialback", "certificates"))
def with_prosody(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WithProsody]:
    reason = prosody_missing()
    if reason:
        pytest.skip(reason)
    mode = request.param
    base = tmp_path_factory.mktemp(f"muc-prosody-{mode}")
    s2s_port = free_port()
    # Prosody sends to the MUC service (and, for dialback, checks its keys) over s2s: both domains are
    # routed to xmppd's s2s listener.
    routes = {XMPPD: ("127.0.0.1", s2s_port), MUC: ("127.0.0.1", s2s_port)}
    config: dict[str, Any] = {
        "server": {"domains": [XMPPD]},
        "listen": {"s2s": [f"tcp:{s2s_port}:interface=127.0.0.1"]},
    }
    if mode == "certificates":
        ca = TestCA(base / "ca")
        cert, key = ca.issue(XMPPD, extra_dns=(MUC,))  # one certificate for the host and its MUC service
        config["tls"] = {"certificate": str(cert), "key": str(key)}
        s2s: dict[str, Any] = {"ca_file": str(ca.ca_path), "require_valid_certificates": True}
        prosody = ProsodyServer(
            base / "prosody",
            PROSODY,
            cert=ca.issue(PROSODY),
            ca_file=ca.ca_path,
            secure_auth=True,
            routes=routes,
        )
        trust_x = trust_p = ca.ca_path
    else:
        s2s = {"require_valid_certificates": False}
        prosody = ProsodyServer(base / "prosody", PROSODY, secure_auth=False, routes=routes)
        trust_x, trust_p = base / "xmppd" / "data" / "selfsigned.crt", prosody.cert_path
    config["s2s"] = {**s2s, "connect_timeout": 10, "routes": {PROSODY: route(prosody.s2s_port)}}
    server = make_server(base / "xmppd", config)
    try:
        prosody.register("bob", PASSWORDS[BOB])
        start_all(server.start, prosody.start)
        server.adduser(ALICE, PASSWORDS[ALICE])
        server.adduser(CAROL, PASSWORDS[CAROL])
        yield WithProsody(mode, server, prosody, trust_x, trust_p)
    finally:
        server.stop()
        prosody.stop()


@pytest.fixture
def prosody_logs(with_prosody: WithProsody) -> Iterator[WithProsody]:
    """The fixture, and on failure what both servers logged during the test (printed; pytest shows a
    failed test's output)."""
    x_from, p_from = len(with_prosody.xmppd.log()), len(with_prosody.prosody.log())
    yield with_prosody
    print(log_excerpt("xmppd", with_prosody.xmppd.log_path, with_prosody.xmppd.log()[x_from:]))
    print(log_excerpt("prosody", with_prosody.prosody.log_path, with_prosody.prosody.log()[p_from:]))


def test_prosody_user_in_an_xmppd_room(prosody_logs: WithProsody) -> None:
    fed = prosody_logs
    room = f"lobby-{fed.mode}@{MUC}"
    as_alice, as_carol, as_bob = f"{room}/Alice", f"{room}/Carol", f"{room}/Bob"

    async def main() -> None:
        async with Pool() as pool:
            alice = await fed.login(pool, f"{ALICE}/phone")
            carol = await fed.login(pool, f"{CAROL}/desk")
            bob = await fed.login(pool, f"{BOB}/pc")

            # alice creates the room; carol (local) joins
            await create_room(alice, room, "Alice")
            await join(carol, as_carol)
            await wait_presence(alice, as_carol, what="alice sees carol join")

            # bob joins from Prosody: existing occupants first, then his own presence, then the subject
            marks = [len(c.presences) for c in (alice, carol)]
            bob_mark, bob_msgs = len(bob.presences), len(bob.messages_seen)
            own = await join(bob, as_bob, what="bob (Prosody) joining over s2s")
            assert "110" in codes(own) and "201" not in codes(own), own
            assert (item(own).get("role"), item(own).get("affiliation")) == ("participant", "none"), own
            received = [str(p["from"]) for p in bob.presences[bob_mark:]]
            for other in (as_alice, as_carol):
                assert other in received and received.index(other) < received.index(as_bob), received
            alice_seen = [p for p in bob.presences[bob_mark:] if str(p["from"]) == as_alice][0]
            assert (item(alice_seen).get("role"), item(alice_seen).get("affiliation")) == (
                "moderator",
                "owner",
            )
            await wait_message(
                bob,
                lambda m: str(m["from"]) == room and m.xml.find("{jabber:client}subject") is not None,
                since=bob_msgs,
                what="bob gets the room subject after joining",
            )
            for client, mark in zip((alice, carol), marks, strict=True):
                seen = await wait_presence(
                    client, as_bob, since=mark, what=f"{client.boundjid} sees bob join"
                )
                assert item(seen).get("role") == "participant", seen
            # alice is a moderator: in a semi-anonymous room she sees bob's real JID (XEP-0045 s7.2.4)
            bob_at_alice = [p for p in alice.presences[marks[0] :] if str(p["from"]) == as_bob][0]
            assert item(bob_at_alice).get("jid") == f"{BOB}/pc", bob_at_alice

            # groupchat, local to remote and remote to local
            clients = [alice, carol, bob]
            marks = [len(c.messages_seen) for c in clients]
            groupchat(alice, room, "hello from xmppd", "gc-1")
            await everyone_gets(clients, marks, as_alice, "hello from xmppd", "gc-1")
            marks = [len(c.messages_seen) for c in clients]
            groupchat(bob, room, "hello from prosody", "gc-2")
            await everyone_gets(clients, marks, as_bob, "hello from prosody", "gc-2")

            # private messages: bob -> Alice, and Alice -> Bob
            carol_mark = len(carol.messages_seen)
            private(bob, as_alice, "psst alice")
            pm = await wait_message(
                alice, body_from(as_bob, "psst alice", "chat"), what="alice gets bob's PM"
            )
            assert muc_user(pm) is not None, f"a MUC private message carries <x xmlns='{NS_MUC_USER}'/>: {pm}"
            private(alice, as_bob, "psst bob")
            pm = await wait_message(bob, body_from(as_alice, "psst bob", "chat"), what="bob gets alice's PM")
            assert muc_user(pm) is not None, pm

            # bob changes his nick (s7.6): unavailable with 303 and the new nick, then the new occupant
            as_robert = f"{room}/Robert"
            marks = [len(c.presences) for c in clients]
            bob.make_presence(pto=as_robert).send()
            for client, mark in zip(clients, marks, strict=True):
                gone = await wait_presence(
                    client,
                    as_bob,
                    since=mark,
                    type_="unavailable",
                    code="303",
                    what=f"{client.boundjid} sees Bob's nick change (303)",
                )
                assert item(gone).get("nick") == "Robert", gone
                await wait_presence(client, as_robert, since=mark, what=f"{client.boundjid} sees Robert")
            assert "110" in codes(await wait_presence(bob, as_robert, since=marks[2], what="bob's new self"))
            assert not [m for m in carol.messages_seen[carol_mark:] if m.xml.get("type") == "chat"], (
                "carol received a private message meant for someone else"
            )

            # bob leaves (s7.14)
            marks = [len(c.presences) for c in clients]
            bob.make_presence(pto=as_robert, ptype="unavailable").send()
            for client, mark in zip((alice, carol), marks[:2], strict=True):
                await wait_presence(
                    client,
                    as_robert,
                    since=mark,
                    type_="unavailable",
                    what=f"{client.boundjid} sees bob leave",
                )
            left = await wait_presence(
                bob, as_robert, since=marks[2], type_="unavailable", what="bob's own unavailable on leaving"
            )
            assert "110" in codes(left), left

            # bob comes back; alice (owner, moderator) kicks him: 307 to him and to the others (s8.2)
            await join(bob, as_bob, what="bob rejoining")
            await wait_presence(alice, as_bob, since=marks[0], what="alice sees bob rejoin")
            marks = [len(c.presences) for c in clients]
            await iq_set(alice, room, kick_payload("Bob", "that will do"))
            kicked = await wait_presence(
                bob, as_bob, since=marks[2], type_="unavailable", code="307", what="bob is told he was kicked"
            )
            assert "110" in codes(kicked) and item(kicked).get("role") == "none", kicked
            for client, mark in zip((alice, carol), marks[:2], strict=True):
                await wait_presence(
                    client,
                    as_bob,
                    since=mark,
                    type_="unavailable",
                    code="307",
                    what=f"{client.boundjid} sees bob kicked",
                )

            # he is no occupant any more: his groupchat is refused (not-acceptable), the others go on
            bob_msgs = len(bob.messages_seen)
            groupchat(bob, room, "let me back", "gc-3")
            refused = await wait_message(
                bob,
                lambda m: m.xml.get("type") == "error" and m["id"] == "gc-3",
                since=bob_msgs,
                what="bob's groupchat after the kick bounces",
            )
            assert error_of(refused) == "not-acceptable", refused
            marks = [len(c.messages_seen) for c in clients]
            groupchat(alice, room, "back to us", "gc-4")
            await everyone_gets([alice, carol], marks[:2], as_alice, "back to us", "gc-4")
            await asyncio.sleep(0.5)
            assert not [m for m in bob.messages_seen[marks[2] :] if m["body"] == "back to us"], (
                "bob still gets the room's messages after being kicked"
            )

    run(main(), timeout=90)
    # the service's own stream to Prosody was authenticated as the mode intends
    method = {"dialback": "dialback", "certificates": "SASL EXTERNAL"}[fed.mode]
    assert f"s2s out {MUC} -> {PROSODY}: authenticated with {method}" in fed.xmppd.log()


# == 2. two xmppd servers; the remote occupant's server dies ===============================================

A, B = "a.localhost", "b.localhost"
MUC_A = f"conference.{A}"
A_ALICE, A_CAROL, B_BOB = f"alice@{A}", f"carol@{A}", f"bob@{B}"
A_PASSWORDS = {A_ALICE: "alice-pw", A_CAROL: "carol-pw", B_BOB: "bob-pw"}
CONNECT_TIMEOUT = 3


@dataclass
class Pair:
    mode: str
    a: ServerProcess
    b: ServerProcess
    trust_a: Path
    trust_b: Path

    async def login(self, pool: Pool, jid: str) -> MucClient:
        bare = jid.split("/")[0]
        server, trust = (self.b, self.trust_b) if bare.endswith("@" + B) else (self.a, self.trust_a)
        return await pool.login(jid, A_PASSWORDS[bare], server.port(), trust)


@pytest.fixture(params=("dialback", "external"))
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Pair]:
    """a.localhost and b.localhost; b routes conference.a.localhost to a's s2s listener too (for stanzas to
    the room and, with dialback, to verify the service's keys). Function scope: the test kills b."""
    mode = request.param
    port_a, port_b = free_port(), free_port()
    options: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT}
    tls_a = tls_b = None
    if mode == "external":
        ca = TestCA(tmp_path / "ca")
        tls_a, tls_b = ca.issue(A, extra_dns=(MUC_A,)), ca.issue(B)
        options.update(ca_file=str(ca.ca_path), require_valid_certificates=True)
    a = make_server(tmp_path / "a", server_config(A, port_a, {B: port_b}, s2s=options, tls=tls_a))
    b = make_server(
        tmp_path / "b", server_config(B, port_b, {A: port_a, MUC_A: port_a}, s2s=options, tls=tls_b)
    )
    try:
        start_all(a.start, b.start)
        a.adduser(A_ALICE, A_PASSWORDS[A_ALICE])
        a.adduser(A_CAROL, A_PASSWORDS[A_CAROL])
        b.adduser(B_BOB, A_PASSWORDS[B_BOB])
        if mode == "external":
            trust_a = trust_b = ca.ca_path
        else:
            trust_a, trust_b = a.data_dir / "selfsigned.crt", b.data_dir / "selfsigned.crt"
        yield Pair(mode, a, b, trust_a, trust_b)
    finally:
        a.stop()
        b.stop()
        print(log_excerpt("a.localhost", a.log_path, a.log()))
        print(log_excerpt("b.localhost", b.log_path, b.log()))


def test_remote_occupant_whose_server_dies(pair: Pair) -> None:
    room = f"dev-{pair.mode}@{MUC_A}"
    as_alice, as_carol, as_bob = f"{room}/Alice", f"{room}/Carol", f"{room}/Bob"

    async def main() -> None:
        async with Pool() as pool:
            alice = await pair.login(pool, f"{A_ALICE}/phone")
            carol = await pair.login(pool, f"{A_CAROL}/desk")
            bob = await pair.login(pool, f"{B_BOB}/pc")
            await create_room(alice, room, "Alice")
            await join(carol, as_carol)
            marks = [len(c.presences) for c in (alice, carol)]
            bob_mark = len(bob.presences)
            await join(bob, as_bob, what="bob (b.localhost) joining over s2s")
            for other in (as_alice, as_carol):
                await wait_presence(bob, other, since=bob_mark, what=f"bob sees {other}")
            for client, mark in zip((alice, carol), marks, strict=True):
                await wait_presence(client, as_bob, since=mark, what=f"{client.boundjid} sees bob join")

            clients = [alice, carol, bob]
            marks = [len(c.messages_seen) for c in clients]
            groupchat(alice, room, "hi bob", "d-1")
            await everyone_gets(clients, marks, as_alice, "hi bob", "d-1")
            marks = [len(c.messages_seen) for c in clients]
            groupchat(bob, room, "hi all", "d-2")
            await everyone_gets(clients, marks, as_bob, "hi all", "d-2")

            # b.localhost dies: no unavailable presence for bob ever reaches the room
            assert pair.b.process is not None
            pair.b.process.kill()
            await asyncio.to_thread(pair.b.process.wait, 10)
            await within(bob.ended.wait())

            # the room keeps serving its local occupants; what it sends to bob cannot be delivered (b
            # refuses connections), and the bounce removes him (an error from an occupant's real JID:
            # status 333). A stanza written to the dead stream before its loss was noticed is lost without
            # a bounce, so the locals keep talking, one message a second, until the ghost is gone.
            marks = [len(c.presences) for c in (alice, carol)]

            def ghost_gone() -> bool:
                return any(
                    str(p["from"]) == as_bob and p.xml.get("type") == "unavailable"
                    for p in alice.presences[marks[0] :]
                )

            deadline = asyncio.get_running_loop().time() + CONNECT_TIMEOUT + TIMEOUT
            n = 0
            while not ghost_gone():
                assert asyncio.get_running_loop().time() < deadline, (
                    f"the ghost occupant {as_bob} is still in the room after {n} messages; alice's "
                    f"presences since b died:\n{describe(alice.presences[marks[0] :])}"
                )
                n += 1
                msg_marks = [len(c.messages_seen) for c in (alice, carol)]
                groupchat(alice, room, f"is bob still there? ({n})", f"d-3-{n}")
                await everyone_gets(
                    [alice, carol], msg_marks, as_alice, f"is bob still there? ({n})", f"d-3-{n}"
                )
                await asyncio.sleep(1)
            await wait_presence(
                carol, as_bob, since=marks[1], type_="unavailable", what="carol sees the ghost bob removed"
            )
            gone = [p for p in alice.presences[marks[0] :] if str(p["from"]) == as_bob][0]
            assert "333" in codes(gone), f"removal of an unreachable occupant has status 333: {gone}"

            # and the room still works for the locals afterwards
            msg_marks = [len(c.messages_seen) for c in (alice, carol)]
            groupchat(carol, room, "just us now", "d-4")
            await everyone_gets([alice, carol], msg_marks, as_carol, "just us now", "d-4")

    run(main(), timeout=90)
    method = {"dialback": "dialback", "external": "SASL EXTERNAL"}[pair.mode]
    assert f"s2s out {MUC_A} -> {B}: authenticated with {method}" in pair.a.log()
    assert f"s2s out {B} -> {MUC_A}: authenticated with {method}" in pair.b.log()
