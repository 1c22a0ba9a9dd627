"""Floods: one client that sends as fast as it can, or never reads what it is sent, must not stop the
server from serving everyone else, and must not make it grow without bound."""

import time

import pytest
from rawclient import NS_CLIENT

IQ, MESSAGE, PRESENCE = (f"{{{NS_CLIENT}}}{name}" for name in ("iq", "message", "presence"))
PASSWORDS = {"flooder": "f-pw", "sink": "s-pw", "carol": "c-pw", "dave": "d-pw"}


@pytest.fixture
def server(xmpp_process):
    return xmpp_process(users={f"{name}@localhost": pw for name, pw in PASSWORDS.items()})


def logged_in(raw_client, server, name: str, resource: str):
    client = raw_client(server, timeout=20)
    client.login(name, PASSWORDS[name], resource)
    client.send("<presence/>")
    client.wait_for(PRESENCE)
    return client


def ping_round_trip(client, ident: str) -> float:
    started = time.monotonic()
    client.send(f"<iq type='get' id='{ident}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    while True:
        el = client.next_element()
        if el.tag == IQ and el.get("id") == ident:
            assert el.get("type") == "result"
            return time.monotonic() - started


def test_a_message_flood_is_delivered_and_others_keep_being_served(server, raw_client):
    flooder = logged_in(raw_client, server, "flooder", "f")
    sink = logged_in(raw_client, server, "sink", "s")
    carol = logged_in(raw_client, server, "carol", "c")
    count = 3000
    burst = "".join(
        f"<message to='sink@localhost/s' type='chat' id='m{i}'><body>flood {i}</body></message>"
        for i in range(count)
    )
    flooder.send(burst)  # about 300 KB in one go
    # while the flood is processed, another user is served promptly
    assert ping_round_trip(carol, "p1") < 5
    received = 0
    while received < count:
        el = sink.next_element(timeout=30)
        if el.tag == MESSAGE:
            assert (
                el.findtext(f"{{{NS_CLIENT}}}body") == f"flood {received}"
            )  # in order, none lost or duplicated
            received += 1
    assert ping_round_trip(flooder, "p2") < 5


def test_a_client_that_never_reads_is_cut_off_and_others_are_fine(server, raw_client):
    """The server keeps a bounded backlog per client (xmppd.stream.c2s.MAX_OUTPUT_BACKLOG): a recipient
    that stops reading is disconnected with policy-violation instead of growing the server's memory."""
    logged_in(raw_client, server, "sink", "stuck")  # then never reads again
    flooder = logged_in(raw_client, server, "flooder", "f")
    dave = logged_in(raw_client, server, "dave", "d")
    body = "x" * 4000
    for batch in range(40):  # 40 x 50 x ~4 KB: far beyond the kernel buffers and the 2 MiB backlog
        flooder.send(
            "".join(
                f"<message to='sink@localhost/stuck' type='chat' id='b{batch}-{i}'>"
                f"<body>{body}</body></message>"
                for i in range(50)
            )
        )
    # the stuck client is gone (its session closed), everyone else is served
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = server.ctl("--json", "status").stdout
        if '"sessions": 2' in status:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the stuck session was not closed: {status}")
    assert ping_round_trip(dave, "p3") < 5
    assert "does not read its data" in server.log()
