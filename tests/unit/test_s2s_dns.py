"""DNS SRV target selection for outgoing server streams (RFC 6120 s3.2, XEP-0368, RFC 2782)."""

from twisted.names import dns

from xmppd.stream.s2s import srv_targets


def srv(target: str, port: int, priority: int = 0, weight: int = 0) -> dns.RRHeader:
    return dns.RRHeader(
        name="_xmpp-server._tcp.example.org",
        type=dns.SRV,
        payload=dns.Record_SRV(priority=priority, weight=weight, port=port, target=target),
    )


def test_no_records_fall_back_to_the_domain_on_5269():
    assert srv_targets("example.org", [], []) == [("example.org", 5269, False)]


def test_priority_then_weight_orders_the_targets():
    records = [
        srv("b.example.org", 5270, priority=20),
        srv("a.example.org", 5269, priority=10, weight=5),
        srv("c.example.org", 5271, priority=10, weight=50),
    ]
    assert srv_targets("example.org", [], records) == [
        ("c.example.org", 5271, False),
        ("a.example.org", 5269, False),
        ("b.example.org", 5270, False),
    ]


def test_direct_tls_records_come_first():
    assert srv_targets("example.org", [srv("tls.example.org", 5270)], [srv("tcp.example.org", 5269)]) == [
        ("tls.example.org", 5270, True),
        ("tcp.example.org", 5269, False),
    ]


def test_a_dot_target_means_the_service_is_not_offered():
    # RFC 2782: a target of "." (the root, an empty name on the wire) says the service is decidedly not
    # available at this domain.
    assert srv_targets("example.org", [], [srv("", 0)]) == [("example.org", 5269, False)]
