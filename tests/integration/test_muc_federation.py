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
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from federation import (
    FedClient,
    Federated,
    Pool,
    ServerPair,
    XmppdAndProsody,
    logs_shown,
    server_pair,
    xmppd_and_prosody,
)
from slixclient import TIMEOUT, run, until, within
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from xmppd.testing.process import ServerProcess
from xmppd.testing.prosody import prosody_missing

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


async def first_received(
    client: MucClient,
    stanzas: list[Any],
    match: Callable[[Any], bool],
    *,
    since: int = 0,
    what: str,
    timeout: float = TIMEOUT,
) -> Any:
    """The first stanza of ``stanzas`` (one of the lists ``client`` keeps filling), from index ``since``
    on, that ``match`` accepts; waits for it up to ``timeout``, then fails showing what did arrive."""
    found: list[Any] = []

    def check() -> bool:
        found.extend(s for s in stanzas[since:] if match(s))
        return bool(found)

    try:
        await until(check, what, timeout)
    except AssertionError:
        raise AssertionError(
            f"{client.boundjid}: timed out waiting for {what}; the last it received:\n"
            f"{describe(stanzas[since:])}"
        ) from None
    return found[0]


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
    return await first_received(
        client,
        client.presences,
        lambda p: (
            str(p["from"]) == from_ and p.xml.get("type") == type_ and (code is None or code in codes(p))
        ),
        since=since,
        what=what,
        timeout=timeout,
    )


async def all_see(
    clients: list[MucClient],
    marks: list[int],
    from_: str,
    *,
    type_: str | None = None,
    code: str | None = None,
    what: str,
) -> list[Any]:
    """What each of ``clients`` received as in ``wait_presence`` (from its mark on); ``what`` follows
    each client's JID in the messages."""
    return [
        await wait_presence(
            client, from_, since=mark, type_=type_, code=code, what=f"{client.boundjid} {what}"
        )
        for client, mark in zip(clients, marks, strict=True)
    ]


def presence_marks(clients: list[MucClient]) -> list[int]:
    return [len(client.presences) for client in clients]


async def wait_message(
    client: MucClient,
    match: Callable[[Any], bool],
    *,
    since: int = 0,
    what: str,
    timeout: float = TIMEOUT,
) -> Any:
    return await first_received(client, client.messages_seen, match, since=since, what=what, timeout=timeout)


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
    answer = await first_received(
        client,
        client.presences,
        lambda p: str(p["from"]) == occupant and (p.xml.get("type") == "error" or "110" in codes(p)),
        since=since,
        what=what or f"{client.boundjid} joining {occupant} (its self-presence)",
    )
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


async def open_room(room: str, owner: MucClient, member: MucClient) -> None:
    """``owner`` creates ``room`` as Alice; ``member`` (of the same server) joins as Carol, and the owner
    sees her join."""
    await create_room(owner, room, "Alice")
    await join(member, f"{room}/Carol")
    await wait_presence(owner, f"{room}/Carol", what=f"{owner.boundjid} sees Carol join")


def occupants(room: str) -> tuple[str, str, str]:
    """The occupant JIDs of Alice, Carol and Bob in ``room``."""
    return f"{room}/Alice", f"{room}/Carol", f"{room}/Bob"


@asynccontextmanager
async def opened_room(fed: Federated, room: str, *jids: str) -> AsyncIterator[list[MucClient]]:
    """alice, carol and bob (``jids``: full JIDs, in that order) logged in, ``room`` opened by alice with
    carol in it (see ``open_room``); all three are disconnected on leaving."""
    async with Pool(MucClient) as pool:
        # slixmpp's roster answers no subscription request (Pool.login's defaults); no roster is needed
        clients = [await fed.login(pool, jid, roster=False) for jid in jids]
        await open_room(room, clients[0], clients[1])
        yield clients


async def remote_joins(
    bob: MucClient, room: str, others: list[MucClient]
) -> tuple[Any, list[Any], list[Any]]:
    """``bob``, of another server, joins ``room`` (where ``others`` are, as Alice and Carol) as Bob, over
    s2s; waits until he has Alice's and Carol's presence and each of ``others`` has his. Returns his
    self-presence, the presences he received while joining (in order), and his presence as each of
    ``others`` received it."""
    as_alice, as_carol, as_bob = occupants(room)
    marks, bob_mark = presence_marks(others), len(bob.presences)
    own = await join(bob, as_bob, what=f"{bob.boundjid} joining {as_bob} over s2s")
    for occupant in (as_alice, as_carol):
        await wait_presence(bob, occupant, since=bob_mark, what=f"bob sees {occupant}")
    seen = await all_see(others, marks, as_bob, what="sees bob join")
    return own, bob.presences[bob_mark:], seen


def groupchat(client: MucClient, room: str, body: str, id_: str) -> None:
    message = client.make_message(mto=room, mbody=body, mtype="groupchat")
    message["id"] = id_
    message.send()


async def say(sender: MucClient, as_sender: str, body: str, id_: str, audience: list[MucClient]) -> None:
    """``sender``, in the room as ``as_sender`` (room/nick), posts ``body`` with id ``id_``; each of
    ``audience`` receives it reflected from ``as_sender``, with its id."""
    marks = [len(client.messages_seen) for client in audience]
    groupchat(sender, as_sender.split("/")[0], body, id_)
    for client, mark in zip(audience, marks, strict=True):
        message = await wait_message(
            client,
            body_from(as_sender, body),
            since=mark,
            what=f"{client.boundjid} gets {body!r} from {as_sender}",
        )
        assert message["id"] == id_, message


def private(client: MucClient, occupant: str, body: str) -> None:
    client.make_message(mto=occupant, mbody=body, mtype="chat").send()


def kick_payload(nick: str, reason: str) -> ET.Element:
    query = ET.Element(f"{{{NS_MUC_ADMIN}}}query")
    el = ET.SubElement(query, f"{{{NS_MUC_ADMIN}}}item", nick=nick, role="none")
    ET.SubElement(el, f"{{{NS_MUC_ADMIN}}}reason").text = reason
    return query


# -- servers -----------------------------------------------------------------------------------------------

LOG_KEEP = ("s2s", "muc", "MUC", "rror", "raceback", "warn")  # the log lines shown when a test fails
METHODS = {"dialback": "dialback", "certificates": "SASL EXTERNAL", "external": "SASL EXTERNAL"}


def assert_authenticated(server: ServerProcess, from_: str, to: str, mode: str) -> None:
    """``server`` authenticated its stream ``from_`` -> ``to`` with the method ``mode`` stands for."""
    line = f"s2s out {from_} -> {to}: authenticated with {METHODS[mode]}"
    assert line in server.log(), f"not in {server.log_path}: {line}"


# == 1. xmppd's MUC with a Prosody occupant ================================================================

XMPPD = "xmppd.localhost"
MUC = f"conference.{XMPPD}"
PROSODY = "prosody.localhost"
ALICE, CAROL, BOB = f"alice@{XMPPD}", f"carol@{XMPPD}", f"bob@{PROSODY}"
PASSWORDS = {ALICE: "alice-pw", CAROL: "carol-pw", BOB: "bob-pw"}


@pytest.fixture(scope="module", params=("dialback", "certificates"))
def with_prosody(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[XmppdAndProsody]:
    reason = prosody_missing()
    if reason:
        pytest.skip(reason)
    mode = request.param
    base = tmp_path_factory.mktemp(f"muc-prosody-{mode}")
    # Prosody sends to the MUC service (and, for dialback, checks its keys) over s2s: the service is routed
    # to xmppd's s2s listener like xmppd.localhost, and named in xmppd's certificate too.
    with xmppd_and_prosody(base, mode, XMPPD, PROSODY, PASSWORDS, services=(MUC,)) as fed:
        yield fed


@pytest.fixture
def prosody_logs(with_prosody: XmppdAndProsody) -> Iterator[XmppdAndProsody]:
    """The fixture, and on failure what both servers logged during the test (printed; pytest shows a
    failed test's output)."""
    with logs_shown(LOG_KEEP, xmppd=with_prosody.xmppd, prosody=with_prosody.prosody):
        yield with_prosody


def test_prosody_user_in_an_xmppd_room(prosody_logs: XmppdAndProsody) -> None:
    fed = prosody_logs
    room = f"lobby-{fed.mode}@{MUC}"
    as_alice, as_carol, as_bob = occupants(room)

    async def main() -> None:
        async with opened_room(fed, room, f"{ALICE}/phone", f"{CAROL}/desk", f"{BOB}/pc") as clients:
            alice, carol, bob = clients

            # bob joins from Prosody: existing occupants first, then his own presence, then the subject
            bob_msgs = len(bob.messages_seen)
            own, received, seen = await remote_joins(bob, room, [alice, carol])
            assert "110" in codes(own) and "201" not in codes(own), own
            assert (item(own).get("role"), item(own).get("affiliation")) == ("participant", "none"), own
            order = [str(p["from"]) for p in received]
            for other in (as_alice, as_carol):
                assert other in order and order.index(other) < order.index(as_bob), order
            alice_seen = [p for p in received if str(p["from"]) == as_alice][0]
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
            for presence in seen:
                assert item(presence).get("role") == "participant", presence
            # alice is a moderator: in a semi-anonymous room she sees bob's real JID (XEP-0045 s7.2.4)
            assert item(seen[0]).get("jid") == f"{BOB}/pc", seen[0]

            # groupchat, local to remote and remote to local
            await say(alice, as_alice, "hello from xmppd", "gc-1", clients)
            await say(bob, as_bob, "hello from prosody", "gc-2", clients)

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
            marks = presence_marks(clients)
            bob.make_presence(pto=as_robert).send()
            for gone in await all_see(
                clients, marks, as_bob, type_="unavailable", code="303", what="sees Bob's nick change (303)"
            ):
                assert item(gone).get("nick") == "Robert", gone
            await all_see(clients, marks, as_robert, what="sees Robert")
            assert "110" in codes(await wait_presence(bob, as_robert, since=marks[2], what="bob's new self"))
            assert not [m for m in carol.messages_seen[carol_mark:] if m.xml.get("type") == "chat"], (
                "carol received a private message meant for someone else"
            )

            # bob leaves (s7.14)
            marks = presence_marks(clients)
            bob.make_presence(pto=as_robert, ptype="unavailable").send()
            await all_see([alice, carol], marks[:2], as_robert, type_="unavailable", what="sees bob leave")
            left = await wait_presence(
                bob, as_robert, since=marks[2], type_="unavailable", what="bob's own unavailable on leaving"
            )
            assert "110" in codes(left), left

            # bob comes back; alice (owner, moderator) kicks him: 307 to him and to the others (s8.2)
            await join(bob, as_bob, what="bob rejoining")
            await wait_presence(alice, as_bob, since=marks[0], what="alice sees bob rejoin")
            marks = presence_marks(clients)
            await iq_set(alice, room, kick_payload("Bob", "that will do"))
            kicked = await wait_presence(
                bob, as_bob, since=marks[2], type_="unavailable", code="307", what="bob is told he was kicked"
            )
            assert "110" in codes(kicked) and item(kicked).get("role") == "none", kicked
            await all_see(
                [alice, carol], marks[:2], as_bob, type_="unavailable", code="307", what="sees bob kicked"
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
            bob_msgs = len(bob.messages_seen)
            await say(alice, as_alice, "back to us", "gc-4", [alice, carol])
            await asyncio.sleep(0.5)
            assert not [m for m in bob.messages_seen[bob_msgs:] if m["body"] == "back to us"], (
                "bob still gets the room's messages after being kicked"
            )

    run(main(), timeout=90)
    # the service's own stream to Prosody was authenticated as the mode intends
    assert_authenticated(fed.xmppd, MUC, PROSODY, fed.mode)


# == 2. two xmppd servers; the remote occupant's server dies ===============================================

A, B = "a.localhost", "b.localhost"
MUC_A = f"conference.{A}"
A_ALICE, A_CAROL, B_BOB = f"alice@{A}", f"carol@{A}", f"bob@{B}"
A_PASSWORDS = {A_ALICE: "alice-pw", A_CAROL: "carol-pw", B_BOB: "bob-pw"}
CONNECT_TIMEOUT = 3


@pytest.fixture(params=("dialback", "external"))
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerPair]:
    """a.localhost and b.localhost; b routes conference.a.localhost to a's s2s listener too (for stanzas to
    the room and, with dialback, to verify the service's keys). Function scope: the test kills b."""
    with server_pair(
        tmp_path,
        request.param,
        A,
        B,
        A_PASSWORDS,
        services_a=(MUC_A,),
        connect_timeout=CONNECT_TIMEOUT,
    ) as servers:
        with logs_shown(LOG_KEEP, a=servers.a, b=servers.b):
            yield servers


def test_remote_occupant_whose_server_dies(pair: ServerPair) -> None:
    room = f"dev-{pair.mode}@{MUC_A}"
    as_alice, as_carol, as_bob = occupants(room)

    async def main() -> None:
        async with opened_room(pair, room, f"{A_ALICE}/phone", f"{A_CAROL}/desk", f"{B_BOB}/pc") as clients:
            alice, carol, bob = clients
            await remote_joins(bob, room, [alice, carol])

            await say(alice, as_alice, "hi bob", "d-1", clients)
            await say(bob, as_bob, "hi all", "d-2", clients)

            # b.localhost dies: no unavailable presence for bob ever reaches the room
            assert pair.b.process is not None
            pair.b.process.kill()
            await asyncio.to_thread(pair.b.process.wait, 10)
            await within(bob.ended.wait())

            # the room keeps serving its local occupants; what it sends to bob cannot be delivered (b
            # refuses connections), and the bounce removes him (an error from an occupant's real JID:
            # status 333). A stanza written to the dead stream before its loss was noticed is lost without
            # a bounce, so the locals keep talking, one message a second, until the ghost is gone.
            marks = presence_marks([alice, carol])

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
                await say(alice, as_alice, f"is bob still there? ({n})", f"d-3-{n}", [alice, carol])
                await asyncio.sleep(1)
            await wait_presence(
                carol, as_bob, since=marks[1], type_="unavailable", what="carol sees the ghost bob removed"
            )
            gone = [p for p in alice.presences[marks[0] :] if str(p["from"]) == as_bob][0]
            assert "333" in codes(gone), f"removal of an unreachable occupant has status 333: {gone}"

            # and the room still works for the locals afterwards
            await say(carol, as_carol, "just us now", "d-4", [alice, carol])

    run(main(), timeout=90)
    assert_authenticated(pair.a, MUC_A, B, pair.mode)
    assert_authenticated(pair.b, B, MUC_A, pair.mode)
