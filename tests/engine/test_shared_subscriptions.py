"""Shared subscriptions (`$share/GROUP/FILTER`, issue 16 item 2) with real clients on real sockets: one
delivery per group, round robin (or least loaded) among the members that can take it, for MQTT 5 and
3.1.1 members alike; the Redis ACL decides the subscription on FILTER and receiving per delivery. (What
mosquitto 2.0 does under an acl_file, the `mosquitto` strategy, is checked against the real mosquitto by
tests/compat, mosquitto-compat/SHARED.md.)"""

from __future__ import annotations

import time

from mqtt_guard.reasons import Reason
from tests.engine.mqtt5_fixtures import listeners  # noqa: F401 - the fixture
from tests.helpers import mqtt as m3
from tests.helpers import mqtt5 as m5
from tests.helpers import rawmqtt as raw


def _payloads(client) -> list[bytes]:
    return [m.payload for m in client.received(0.5)]


def test_each_message_goes_to_one_member_in_turn_whatever_its_protocol(listeners):  # noqa: F811 - fixture
    net = listeners()
    a, b = net.v5(), net.v5("websockets")
    c = m3.connect(net.ports["tcp"])
    plain = net.v5()
    pub = net.v5()
    try:
        assert net.broker.port
        assert a.subscribe("$share/g/t/#", 1) == [1]
        assert b.subscribe("$share/g/t/#", 1) == [1]
        assert c.subscribe(("$share/g/t/#", 1)) == [1]
        assert plain.subscribe("t/#", 1) == [1]
        for i in range(6):
            assert pub.publish("t/1", b"m%d" % i, qos=1) == 0
        assert _payloads(a) == [b"m0", b"m3"]
        assert _payloads(b) == [b"m1", b"m4"]
        assert [m.payload for m in c.received(0.5)] == [b"m2", b"m5"]
        assert len(_payloads(plain)) == 6  # an ordinary subscriber gets every message
    finally:
        for client in (a, b, plain, pub):
            client.close()
        c.close()


def test_groups_are_group_and_filter_and_each_gets_a_copy(listeners):  # noqa: F811 - fixture
    net = listeners()
    g1, g1b, g2 = net.v5(), net.v5(), net.v5()
    pub = net.v5()
    try:
        g1.subscribe("$share/g1/t/#", 0)
        g1b.subscribe("$share/g1/t/+", 0)  # same name, another filter: another group
        g2.subscribe("$share/g2/t/#", 0, sub_id=7)
        for i in range(3):
            pub.publish("t/x", b"%d" % i)
        time.sleep(0.3)
        assert len(g1.received()) == 3 and len(g1b.received()) == 3
        got = g2.received()
        assert len(got) == 3 and got[0].prop("SubscriptionIdentifier") == [7]
    finally:
        for client in (g1, g1b, g2, pub):
            client.close()


def test_a_member_that_leaves_drops_out_of_the_rotation(listeners):  # noqa: F811 - fixture
    net = listeners()
    a, b, c = net.v5(), net.v5(), net.v5()
    pub = net.v5()
    try:
        for member in (a, b, c):
            member.subscribe("$share/g/u/#", 1)
        pub.publish("u/1", b"0", qos=1)
        assert a.unsubscribe("$share/g/u/#") == [0]
        c.close()  # (a disconnected member leaves too)
        for i in range(1, 4):
            pub.publish("u/1", b"%d" % i, qos=1)
        assert _payloads(a) == [b"0"]
        assert _payloads(b) == [b"1", b"2", b"3"]
    finally:
        for client in (a, b, pub):
            client.close()


def test_retained_messages_are_not_sent_to_a_shared_subscription(listeners):  # noqa: F811 - fixture
    net = listeners()
    pub = net.v5()
    member, plain = net.v5(), net.v5()
    try:
        assert pub.publish("r/1", b"kept", qos=1, retain=True) == Reason.NO_MATCHING_SUBSCRIBERS  # (kept)
        member.subscribe("$share/g/r/#", 1)
        plain.subscribe("r/#", 1)
        assert member.received() == []  # MQTT 5 4.8.2
        assert [m.payload for m in plain.received()] == [b"kept"]
    finally:
        for client in (pub, member, plain):
            client.close()


def test_nobody_may_publish_to_a_share_topic_name(listeners):  # noqa: F811 - fixture
    net = listeners()
    pub, member = net.v5(), net.v5()
    try:
        member.subscribe("$share/g/t/#", 1)
        assert pub.publish("$share/g/t/1", b"x", qos=1) == 0x87
        assert member.received() == []
    finally:
        pub.close()
        member.close()


def test_malformed_shared_subscriptions_and_no_local_are_protocol_errors(listeners):  # noqa: F811 - fixture
    net = listeners()
    for packet in (
        m5.subscribe(1, ("$share/g", 1)),  # no filter [MQTT-4.8.2-2]
        m5.subscribe(1, ("$share//t", 1)),  # empty group [MQTT-4.8.2-1]
        m5.subscribe(1, ("$share/g/t", 1 | 0x04)),  # No Local on a shared subscription [MQTT-3.8.3-4]
    ):
        client = m5.connected(net.ports["tcp"], "bad-share")
        client.send(packet)
        assert m5.disconnect_reason(client) == 0x82
        client.close()
    old = raw.connected(net.ports["tcp"], "bad-share-311")[0]
    old.send(raw.subscribe(1, ("$share/g", 1)))
    assert old.closed_by_peer(5)  # a 3.1.1 client is closed without a word
    old.close()


def test_the_acl_decides_on_the_filter_and_a_member_that_may_not_receive_is_passed_over(
    start_broker, add_user, rds, prefix, tmp_path
):
    for name in ("m1", "m2", "m3", "pub"):
        add_user(name, "pw")
    rds.hset(f"{prefix}acl:user:m1", "s/#", "read")
    rds.hset(f"{prefix}acl:user:m2", "s/#", "read")
    rds.hset(f"{prefix}acl:user:m2", "s/secret", "deny-receive")
    rds.hset(f"{prefix}acl:user:m3", "other/#", "read")
    rds.hset(f"{prefix}acl:user:pub", "s/#", "write")
    broker = start_broker()
    m1 = m5.V5(broker.port, username="m1", password="pw")
    m2 = m5.V5(broker.port, username="m2", password="pw")
    m3_ = m5.V5(broker.port, username="m3", password="pw")
    pub = m5.V5(broker.port, username="pub", password="pw")
    try:
        assert m1.subscribe("$share/g/s/#", 1) == [1]
        assert m2.subscribe("$share/g/s/#", 1) == [1]
        assert m3_.subscribe("$share/g/s/#", 1) == [0x87]  # decided on FILTER s/#
        for i in range(4):
            assert pub.publish("s/secret", b"%d" % i, qos=1) == 0
        assert _payloads(m1) == [b"0", b"1", b"2", b"3"]  # m2 may not receive s/secret: passed over
        assert _payloads(m2) == []
        for i in range(4):
            pub.publish("s/open", b"%d" % i, qos=1)
        # (m2's turn was next all along: it is skipped only while it may not receive)
        assert _payloads(m2) == [b"0", b"2"] and _payloads(m1) == [b"1", b"3"]
    finally:
        for client in (m1, m2, m3_, pub):
            client.close()


def test_least_loaded_prefers_the_member_with_the_shorter_queue(listeners):  # noqa: F811 - fixture
    net = listeners("limits:\n  shared_subscription_strategy: least_loaded\n")
    stuck, _ = raw.connected(net.ports["tcp"], "stuck")  # never acknowledges: its window fills
    quick = net.v5()
    pub = net.v5()
    try:
        stuck.send(raw.subscribe(1, ("$share/g/l/#", 1)))
        stuck.expect(raw.SUBACK)
        quick.subscribe("$share/g/l/#", 1)
        for i in range(10):
            pub.publish("l/1", b"%d" % i, qos=1)
            time.sleep(0.02)
        assert len(_payloads(quick)) >= 8  # round robin would give it 5
    finally:
        stuck.close()
        quick.close()
        pub.close()
