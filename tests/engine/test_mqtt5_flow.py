"""MQTT 5 flow control and subscription options on real sockets (issue 16 item 1): Receive Maximum and
Maximum Packet Size in both directions, message expiry of queued messages, No Local, Retain As
Published, Retain Handling."""

from __future__ import annotations

import time

import pytest

from tests.helpers import mqtt5 as m5
from tests.helpers import rawmqtt as raw


@pytest.fixture
def broker(anon_broker):
    return anon_broker("limits:\n  max_inflight_messages: 3\n")


def test_the_clients_receive_maximum_bounds_its_in_flight_window(broker):
    pub = m5.V5(broker.port)
    c = m5.connected(broker.port, "rm2", properties=b"\x21" + m5.u16(2))  # Receive Maximum 2 (server: 3)
    try:
        c.send(m5.subscribe(1, ("rm/#", 1)))
        c.expect(raw.SUBACK)
        for i in range(5):
            pub.publish("rm/t", b"%d" % i, qos=1)
        first = [m5.publish_parts(c.expect(raw.PUBLISH)) for _ in range(2)]
        assert [p[3] for p in first] == [b"0", b"1"]
        with pytest.raises(TimeoutError):
            c.read(0.5)  # the third waits for an acknowledgement
        c.send(raw.ack(raw.PUBACK, first[0][1]))
        assert m5.publish_parts(c.expect(raw.PUBLISH))[3] == b"2"
    finally:
        c.close()
        pub.close()


def test_more_inbound_qos2_than_announced_is_disconnected_with_0x93(broker):
    c = m5.connected(broker.port, "greedy")
    try:
        for pid in (1, 2, 3):  # the CONNACK said Receive Maximum 3
            c.send(m5.publish("in/t", b"x", qos=2, packet_id=pid))
            assert c.expect(raw.PUBREC).packet_id == pid
        c.send(m5.ack(raw.PUBREL, 1))
        assert c.expect(raw.PUBCOMP).packet_id == 1
        c.send(m5.publish("in/t", b"x", qos=2, packet_id=4))  # 3 unacknowledged again: allowed
        assert c.expect(raw.PUBREC).packet_id == 4
        c.send(m5.publish("in/t", b"x", qos=2, packet_id=5))  # the 4th
        assert m5.disconnect_reason(c) == 0x93
    finally:
        c.close()
    broker.wait_log("Receive Maximum 3")


def test_nothing_larger_than_the_clients_maximum_packet_size_is_sent(broker):
    pub = m5.V5(broker.port)
    c = m5.connected(broker.port, "small", properties=b"\x27" + m5.u32(100))
    try:
        c.send(m5.subscribe(1, ("mps/#", 1)))
        c.expect(raw.SUBACK)
        for qos in (0, 1):
            pub.publish("mps/big", b"x" * 200, qos=qos)  # dropped
            pub.publish("mps/small", b"y" * 20, qos=qos)
            pkt = c.expect(raw.PUBLISH)
            assert m5.publish_parts(pkt)[3] == b"y" * 20
            if qos:
                c.send(raw.ack(raw.PUBACK, pkt.packet_id))
        # 100 bytes exactly is allowed: 1 + 1 + (2 + 8) + 2 + 1 + 85
        pub.publish("mps/edge", b"z" * 85, qos=1)
        pkt = c.expect(raw.PUBLISH)
        assert len(pkt.raw()) == 100
    finally:
        c.close()
        pub.close()
    broker.wait_log("larger than the Maximum Packet Size")


def test_a_queued_message_that_expires_is_dropped_and_the_rest_carry_the_time_left(broker):
    pub = m5.V5(broker.port)
    c = m5.connected(broker.port, "slow", properties=b"\x21" + m5.u16(1))
    try:
        c.send(m5.subscribe(1, ("exp/#", 1)))
        c.expect(raw.SUBACK)
        pub.publish("exp/t", b"first", qos=1)
        first = c.expect(raw.PUBLISH)  # in flight, not acknowledged: the others wait
        pub.publish("exp/t", b"short", qos=1, props=m5.publish_properties(MessageExpiryInterval=1))
        pub.publish("exp/t", b"long", qos=1, props=m5.publish_properties(MessageExpiryInterval=60))
        pub.publish("exp/t", b"none", qos=1)
        time.sleep(2.2)
        c.send(raw.ack(raw.PUBACK, first.packet_id))
        _, pid, props, payload = m5.publish_parts(c.expect(raw.PUBLISH))
        assert payload == b"long"
        assert props[0] == 0x02 and 56 <= int.from_bytes(props[1:5], "big") <= 58
        c.send(raw.ack(raw.PUBACK, pid))
        _, _, props, payload = m5.publish_parts(c.expect(raw.PUBLISH))
        assert (payload, props) == (b"none", b"")
    finally:
        c.close()
        pub.close()


def test_no_local(anon_broker):
    broker = anon_broker()
    c, other = m5.V5(broker.port), m5.V5(broker.port)
    try:
        c.subscribe("nl/#", 1, no_local=True)
        other.subscribe("nl/#", 1, no_local=True)
        c.publish("nl/t", b"mine", qos=1)
        assert other.receive().payload == b"mine"
        assert c.received(0.5) == []
        other.publish("nl/t", b"theirs", qos=1)
        assert c.receive().payload == b"theirs"
        c.subscribe("nl/t", 1)  # an overlapping subscription without No Local: its own come back
        c.publish("nl/t", b"again", qos=0)
        assert c.receive().payload == b"again"
    finally:
        c.close()
        other.close()


def test_retain_as_published(anon_broker):
    broker = anon_broker()
    rap, plain, pub = m5.V5(broker.port), m5.V5(broker.port), m5.V5(broker.port)
    old = raw.RawClient(broker.port)
    try:
        old.send(raw.connect("old"))
        old.connack()
        rap.subscribe("rap/#", 1, retain_as_published=True)
        plain.subscribe("rap/#", 1)
        pub.publish("rap/t", b"kept", qos=1, retain=True)
        assert rap.receive().retain is True
        assert plain.receive().retain is False
        old.send(raw.publish("rap/u", b"old", qos=0, retain=True))  # from a 3.1.1 publisher too
        assert rap.receive().retain is True
        assert plain.receive().retain is False
        pub.publish("rap/t", b"live", qos=0)
        assert rap.receive().retain is False
    finally:
        old.close()
        for c in (rap, plain, pub):
            c.close()


@pytest.mark.parametrize(("handling", "first", "again"), [(0, 1, 1), (1, 1, 0), (2, 0, 0)])
def test_retain_handling(anon_broker, handling, first, again):
    broker = anon_broker()
    pub, c = m5.V5(broker.port), m5.V5(broker.port)
    try:
        pub.publish("rh/t", b"kept", qos=1, retain=True)
        c.subscribe("rh/#", 1, retain_handling=handling)
        assert len(c.received(0.5)) == first
        c.subscribe("rh/#", 1, retain_handling=handling)  # the same subscription again
        assert len(c.received(0.5)) == again
    finally:
        c.close()
        pub.close()
