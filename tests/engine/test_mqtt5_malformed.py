"""MQTT 5 protocol violations on raw sockets: the server sends a DISCONNECT with the reason code, then
closes (issue 16 item 1); topic aliases (client to server) and the payload format indicator."""

from __future__ import annotations

import pytest

from tests.helpers import mqtt5 as m5
from tests.helpers import rawmqtt as raw


@pytest.fixture
def broker(anon_broker):
    return anon_broker("limits:\n  max_packet_size: 2048\n  max_topic_alias: 4\n")


@pytest.mark.parametrize(
    ("packet", "code"),
    [
        pytest.param(m5.publish("t", properties=m5.props((0x11, m5.u32(5)))), 0x82, id="session expiry in PUBLISH"),
        pytest.param(m5.publish("t", properties=b"\x05\x7f\x00"), 0x81, id="unknown property"),
        pytest.param(m5.publish("t", properties=b"\x09\x01\x00"), 0x81, id="property block past the end"),
        pytest.param(m5.publish("t", properties=m5.props((0x01, b"\x02"))), 0x82, id="payload format 2"),
        pytest.param(m5.publish("", properties=b"\x00"), 0x82, id="empty topic without alias"),
        pytest.param(m5.publish("t", properties=m5.props((0x23, m5.u16(5)))), 0x94, id="alias above maximum"),
        pytest.param(m5.publish("", properties=m5.props((0x23, m5.u16(2)))), 0x82, id="alias never set"),
        pytest.param(m5.publish("t", properties=m5.props((0x23, m5.u16(0)))), 0x82, id="alias 0"),
        pytest.param(m5.publish("t", b"x" * 3000), 0x95, id="packet too large"),
        pytest.param(raw.packet(0xF0, b"\x00"), 0x82, id="AUTH"),
        pytest.param(m5.subscribe(1, ("a/#", 0x03)), 0x81, id="subscribe QoS 3"),
        pytest.param(m5.subscribe(1, ("a/#", 0x30)), 0x81, id="retain handling 3"),
        pytest.param(m5.subscribe(1, ("a/#", 0), properties=m5.props((0x0B, b"\x00"))), 0x82, id="sub id 0"),
        pytest.param(raw.packet(0x62, b"\x00\x01\x00\x05"), 0x81, id="PUBREL properties past the end"),
        pytest.param(m5.disconnect(0, b"\x03\x26\x00"), 0x81, id="DISCONNECT user property truncated"),
        pytest.param(raw.connect("again", level=5, properties=b""), 0x82, id="second CONNECT 0x82 [MQTT-3.1.0-2]"),
    ],
)
def test_a_violation_gets_a_disconnect_with_its_reason(broker, packet, code):
    c = m5.connected(broker.port, "bad5")
    try:
        c.send(packet)
        assert m5.disconnect_reason(c) == code
        assert c.closed_by_peer(3)
    finally:
        c.close()
    broker.wait_log("protocol violation")


def test_a_311_client_is_closed_without_a_disconnect(broker):
    c, _ = raw.connected(broker.port, "bad311")
    try:
        c.send(raw.publish("t", b"x" * 3000))
        assert c.read(3) is None  # closed, nothing sent
    finally:
        c.close()


def test_topic_alias_set_then_used(broker):
    sub = m5.V5(broker.port)
    c = m5.connected(broker.port, "aliaser")
    try:
        sub.subscribe("alias/#", 1)
        c.send(m5.publish("alias/long/topic", b"1", properties=m5.props((0x23, m5.u16(3)))))
        c.send(m5.publish("", b"2", properties=m5.props((0x23, m5.u16(3)))))
        c.send(m5.publish("alias/other", b"3", properties=m5.props((0x23, m5.u16(3)))))  # re-mapped
        c.send(m5.publish("", b"4", qos=1, packet_id=9, properties=m5.props((0x23, m5.u16(3)))))
        assert c.expect(raw.PUBACK).packet_id == 9
        got = [sub.receive() for _ in range(4)]
        long, other = "alias/long/topic", "alias/other"
        assert [(m.topic, m.payload) for m in got] == [(long, b"1"), (long, b"2"), (other, b"3"), (other, b"4")]
        assert all(m.prop("TopicAlias") is None for m in got)  # never forwarded
        user = (0x26, raw.s("k") + raw.s("v"))
        c.send(m5.publish("", b"5", properties=m5.props((0x23, m5.u16(3)), user)))  # the others still go on
        msg = sub.receive()
        assert (msg.topic, msg.prop("UserProperty"), msg.prop("TopicAlias")) == (other, [("k", "v")], None)
    finally:
        c.close()
        sub.close()


def test_aliases_are_per_connection(broker):
    c = m5.connected(broker.port, "alias-a")
    c.send(m5.publish("alias/x", b"1", properties=m5.props((0x23, m5.u16(1)))))
    c.close()
    d = m5.connected(broker.port, "alias-b")
    try:
        d.send(m5.publish("", b"2", properties=m5.props((0x23, m5.u16(1)))))
        assert m5.disconnect_reason(d) == 0x82
    finally:
        d.close()


def test_payload_not_utf8_as_its_format_indicator_says_is_refused(broker):
    sub = m5.V5(broker.port)
    c = m5.connected(broker.port, "fmt")
    try:
        sub.subscribe("fmt/#", 1)
        utf8 = m5.props((0x01, b"\x01"))
        c.send(m5.publish("fmt/a", b"\xff\xfe", qos=1, packet_id=3, properties=utf8))
        assert c.expect(raw.PUBACK).body[:3] == b"\x00\x03\x99"  # (then the Reason String)
        c.send(m5.publish("fmt/b", b"\xff\xfe", qos=2, packet_id=4, properties=utf8))
        assert c.expect(raw.PUBREC).body[:3] == b"\x00\x04\x99"
        c.send(m5.publish("fmt/c", b"\xff\xfe", qos=0, properties=utf8))  # dropped
        c.send(m5.publish("fmt/d", "grüße".encode(), qos=1, packet_id=5, properties=utf8))
        assert c.expect(raw.PUBACK).body == b"\x00\x05"
        msgs = sub.received(0.5)
        assert [(m.topic, m.prop("PayloadFormatIndicator")) for m in msgs] == [("fmt/d", 1)]
    finally:
        c.close()
        sub.close()
