"""MQTT 5 PUBLISH/SUBSCRIBE/UNSUBSCRIBE/DISCONNECT with paho's MQTT 5 client on real sockets (issue
16 item 1), and mixed fleets (item 3): a 3.1.1 publisher reaches MQTT 5 subscribers and the reverse."""

from __future__ import annotations

import pytest

from tests.engine.mqtt5_fixtures import TRANSPORTS, listeners  # noqa: F401 - the fixture
from tests.helpers import mqtt as m3
from tests.helpers import mqtt5 as m5
from tests.helpers import rawmqtt as raw

PROPS = {
    "UserProperty": [("site", "north"), ("site", "south")],
    "ContentType": "application/json",
    "ResponseTopic": "replies/dev-1",
    "CorrelationData": b"\x00\x01req-7",
    "PayloadFormatIndicator": 1,
}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_properties_reach_an_mqtt5_subscriber_at_every_qos(listeners, transport):  # noqa: F811 - fixture
    net = listeners()
    sub = net.v5(transport)
    pub = net.v5(transport)
    try:
        assert sub.subscribe("v5/#", 2) == [2]
        for qos in (0, 1, 2):
            assert pub.publish("v5/t", b'{"n": %d}' % qos, qos=qos, props=m5.publish_properties(**PROPS)) == 0
            msg = sub.receive()
            assert (msg.topic, msg.payload, msg.qos, msg.retain) == ("v5/t", b'{"n": %d}' % qos, qos, False)
            for name, value in PROPS.items():
                assert msg.prop(name) == value, name
            assert msg.prop("MessageExpiryInterval") is None
            assert msg.prop("SubscriptionIdentifier") is None
    finally:
        pub.close()
        sub.close()


def test_message_expiry_interval_is_forwarded(listeners):  # noqa: F811 - fixture
    net = listeners()
    sub, pub = net.v5(), net.v5()
    try:
        sub.subscribe("exp/#", 1)
        pub.publish("exp/t", b"x", qos=1, props=m5.publish_properties(MessageExpiryInterval=120))
        left = sub.receive().prop("MessageExpiryInterval")
        assert 119 <= left <= 120
    finally:
        pub.close()
        sub.close()


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_a_311_publisher_reaches_an_mqtt5_subscriber(listeners, qos):  # noqa: F811 - fixture
    net = listeners()
    sub = net.v5("websockets")
    old = m3.connect(net.ports["tcp"])
    try:
        sub.subscribe("mix/#", 2)
        old.publish("mix/a", b"from 3.1.1", qos=qos)
        msg = sub.receive()
        assert (msg.topic, msg.payload, msg.qos, msg.retain) == ("mix/a", b"from 3.1.1", qos, False)
        assert msg.prop("UserProperty") is None
        old.publish("mix/kept", b"retained", qos=qos, retain=True)
        assert sub.receive().payload == b"retained"  # a live delivery: RETAIN cleared
        late = net.v5()
        late.subscribe("mix/kept", 2)
        msg = late.receive()
        assert (msg.payload, msg.qos, msg.retain) == (b"retained", qos, True)
        late.close()
    finally:
        old.close()
        sub.close()


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_an_mqtt5_publisher_reaches_a_311_subscriber_without_properties(listeners, qos):  # noqa: F811
    net = listeners()
    pub = net.v5("tls")
    c = raw.RawClient(net.ports["tcp"])
    try:
        c.send(raw.connect("old-sub"))
        assert c.connack() == (0, 0)
        c.send(raw.subscribe(1, ("mix/#", 2)))
        c.expect(raw.SUBACK)
        pub.publish("mix/b", b"from v5", qos=qos, props=m5.publish_properties(**PROPS))
        pkt = c.expect(raw.PUBLISH)
        # the plain 3.1.1 frame: topic, packet id, payload, nothing else
        assert (pkt.topic, pkt.qos, pkt.payload, pkt.retain) == ("mix/b", qos, b"from v5", False)
        if qos == 2:
            c.send(raw.ack(raw.PUBREC, pkt.packet_id))
            c.expect(raw.PUBREL)
            c.send(raw.ack(raw.PUBCOMP, pkt.packet_id))
        elif qos == 1:
            c.send(raw.ack(raw.PUBACK, pkt.packet_id))
        pub.publish("mix/kept5", b"kept", qos=qos, retain=True, props=m5.publish_properties(ContentType="a/b"))
        assert c.expect(raw.PUBLISH).payload == b"kept"
        late = m3.connect(net.ports["tcp"])
        late.subscribe(("mix/kept5", 2))
        msg = late.receive()
        assert (msg.payload, msg.qos, msg.retain) == (b"kept", qos, True)
        late.close()
        v5late = net.v5()
        v5late.subscribe("mix/kept5", 2)
        msg5 = v5late.receive()
        assert (msg5.retain, msg5.prop("ContentType")) == (True, "a/b")  # kept with the retained message
        v5late.close()
    finally:
        c.close()
        pub.close()


def test_a_plain_mqtt5_qos0_publish_reaches_every_kind_of_subscriber(listeners):  # noqa: F811 - fixture
    """An MQTT 5 QoS 0 PUBLISH without properties is forwarded as received to the MQTT 5 subscribers that
    add nothing to it, and re-encoded for those that do (a subscription identifier) and for 3.1.1 ones;
    its own publisher with No Local gets nothing back (the broker's fast path for such packets)."""
    net = listeners()
    port = net.ports["tcp"]
    v5_sub = m5.connected(port, "plain-v5")
    v5_ids = m5.connected(port, "plain-v5-ids")
    old, _ = raw.connected(port, "plain-311")
    pub = m5.connected(port, "plain-pub")
    clients = (v5_sub, v5_ids, old, pub)
    try:
        v5_sub.send(m5.subscribe(1, ("plain/#", 0)))
        v5_ids.send(m5.subscribe(1, ("plain/#", 0), properties=m5.props((0x0B, m5.varint(9)))))
        old.send(raw.subscribe(1, ("plain/#", 0)))
        pub.send(m5.subscribe(1, ("plain/#", 0x04)))  # No Local
        for c in clients:
            c.expect(raw.SUBACK)
        sent = [m5.publish(f"plain/{i}", b"payload-%d" % i) for i in range(3)]
        pub.send(b"".join(sent))  # one read for the broker: a run of the reader's fast path
        for i, frame in enumerate(sent):
            assert v5_sub.expect(raw.PUBLISH).raw() == frame  # the MQTT 5 frame as published
            got = v5_ids.expect(raw.PUBLISH)
            assert m5.publish_parts(got) == (f"plain/{i}", 0, b"\x0b\x09", b"payload-%d" % i)
            assert old.expect(raw.PUBLISH).raw() == raw.publish(f"plain/{i}", b"payload-%d" % i)
        pub.send(raw.PINGREQ_BYTES)  # after the three: nothing came back to the publisher but its PINGRESP
        assert pub.expect_any().type == raw.PINGRESP
    finally:
        for c in clients:
            c.close()


def test_subscription_identifiers_travel_with_each_delivery(listeners):  # noqa: F811 - fixture
    net = listeners()
    sub, pub = net.v5(), net.v5()
    try:
        sub.subscribe("ids/#", 1, sub_id=5)
        sub.subscribe("ids/+/x", 1, sub_id=9)
        sub.subscribe("ids/plain/#", 1)
        pub.publish("ids/a/x", b"both", qos=1)
        assert sorted(sub.receive().prop("SubscriptionIdentifier")) == [5, 9]
        pub.publish("ids/b", b"one", qos=0)
        assert sub.receive().prop("SubscriptionIdentifier") == [5]
        pub.publish("ids/plain/p", b"one", qos=0)
        assert sub.receive().prop("SubscriptionIdentifier") == [5]
        sub.unsubscribe("ids/#")
        pub.publish("ids/plain/p", b"none", qos=0)
        assert sub.receive().prop("SubscriptionIdentifier") is None
    finally:
        pub.close()
        sub.close()


def test_suback_and_unsuback_reason_codes(start_broker, rds, prefix):
    rds.hset(f"{prefix}acl:anonymous", mapping={"open/#": "readwrite"})
    broker = start_broker("--allow-anonymous")
    c = m5.V5(broker.port)
    try:
        assert c.subscribe("open/a", 1) == [1]
        assert c.subscribe("closed/a", 1) == [0x87]  # not authorized (3.1.1: 0x80)
        assert c.subscribe("$share/g/open/a", 1) == [1]  # a shared subscription: decided on its FILTER
        assert c.subscribe("$share/g/closed/a", 1) == [0x87]
        assert c.unsubscribe("open/a", "never/subscribed") == [0x00, 0x11]
    finally:
        c.close()


def test_v5_acknowledgements_with_reason_codes_and_properties_are_accepted(listeners):  # noqa: F811
    net = listeners("limits:\n  max_inflight_messages: 1\n")
    pub = net.v5()
    c = m5.connected(net.ports["tcp"], "raw5")
    try:
        c.send(m5.subscribe(1, ("ack/#", 2)))
        assert c.expect(raw.SUBACK).body == b"\x00\x01\x00\x02"  # packet id, no properties, granted 2
        reason_string = m5.props((0x1F, raw.s("fine")))
        pub.publish("ack/1", b"a", qos=1)
        pkt = c.expect(raw.PUBLISH)
        c.send(m5.ack(raw.PUBACK, pkt.packet_id, 0x10, reason_string))  # No matching subscribers, with a string
        pub.publish("ack/2", b"b", qos=2)
        pkt = c.expect(raw.PUBLISH)  # the window of 1 was freed by that PUBACK
        c.send(m5.ack(raw.PUBREC, pkt.packet_id, 0x00))
        rel = c.expect(raw.PUBREL)
        assert rel.packet_id == pkt.packet_id
        c.send(m5.ack(raw.PUBCOMP, pkt.packet_id, 0x00, b"\x00"))
        pub.publish("ack/3", b"c", qos=2)
        pkt = c.expect(raw.PUBLISH)
        c.send(m5.ack(raw.PUBREC, pkt.packet_id, 0x80))  # refused: the flow ends, no PUBREL [MQTT-4.3.3-4]
        pub.publish("ack/4", b"d", qos=1)
        nxt = c.expect(raw.PUBLISH)  # and the window is free again
        assert m5.publish_parts(nxt)[3] == b"d"
        c.send(raw.ack(raw.PUBACK, nxt.packet_id))
        # inbound: the v5 forms the client sends for its own QoS 2 PUBLISH
        c.send(m5.publish("ack/in", b"e", qos=2, packet_id=77))
        got = {}
        for _ in range(2):
            p = c.expect_any()
            got[p.type] = p
        assert got[raw.PUBREC].packet_id == 77
        c.send(m5.ack(raw.PUBREL, 77, 0x00, reason_string))
        assert c.expect(raw.PUBCOMP).body == b"\x00\x4d"
        c.send(m5.ack(raw.PUBREL, 78))  # never published: PUBCOMP 0x92 Packet identifier not found
        assert c.expect(raw.PUBCOMP).body[:3] == b"\x00\x4e\x92"  # (then the Reason String)
    finally:
        c.close()
        pub.close()


def test_disconnect_with_will_message_publishes_the_will(listeners):  # noqa: F811 - fixture
    net = listeners()
    watcher = net.v5()
    try:
        watcher.subscribe("wills/#", 1)
        will_props = m5.Properties(m5.PacketTypes.WILLMESSAGE)
        will_props.ContentType = "text/plain"
        will_props.UserProperty = [("why", "gone")]
        dev = net.v5(will=("wills/dev", b"bye", 1, False), will_props=will_props)
        dev.close(reason=0x04)  # Disconnect with Will Message
        msg = watcher.receive()
        assert (msg.topic, msg.payload) == ("wills/dev", b"bye")
        assert msg.prop("ContentType") == "text/plain"
        assert msg.prop("UserProperty") == [("why", "gone")]
        quiet = net.v5(will=("wills/quiet", b"bye", 1, False))
        quiet.close()  # 0x00: the will is discarded
        assert watcher.received(0.5) == []
    finally:
        watcher.close()
    net.broker.wait_log("DISCONNECT with will message (0x04)")


def test_a_311_subscriber_gets_an_mqtt5_will_without_its_properties(listeners):  # noqa: F811 - fixture
    net = listeners()
    watcher = m3.connect(net.ports["tcp"])
    try:
        watcher.subscribe(("wills/#", 1))
        will_props = m5.Properties(m5.PacketTypes.WILLMESSAGE)
        will_props.UserProperty = [("why", "gone")]
        dev = net.v5(will=("wills/dev", b"bye", 1, False), will_props=will_props)
        dev.close(reason=0x04)
        msg = watcher.receive()
        assert (msg.topic, msg.payload, msg.qos) == ("wills/dev", b"bye", 1)
    finally:
        watcher.close()


def test_session_expiry_in_disconnect_after_zero_is_a_protocol_error(listeners):  # noqa: F811 - fixture
    net = listeners()
    c = m5.connected(net.ports["tcp"], "exp0")
    try:
        c.send(m5.disconnect(0, m5.props((0x11, m5.u32(60)))))
        assert m5.disconnect_reason(c) == 0x82
    finally:
        c.close()
    c = m5.connected(net.ports["tcp"], "exp60", properties=b"\x11" + m5.u32(60), clean=False)
    c.send(m5.disconnect(0, m5.props((0x11, m5.u32(0)))))  # allowed: the session ends with the connection
    assert c.closed_by_peer(3)
    c.close()
    c = m5.connected(net.ports["tcp"], "exp60", properties=b"\x11" + m5.u32(60), clean=False)
    try:
        assert c.sock  # (CONNACK read by `connected`)
    finally:
        c.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_violation_is_told_in_a_disconnect_on_every_listener(listeners, transport):  # noqa: F811 - fixture
    net = listeners()
    c = net.v5(transport)
    try:
        c.paho.publish("t", b"x", properties=m5.publish_properties(TopicAlias=50))  # above the maximum 10
        assert c.disconnected.wait(5)
        assert c.disconnect_reason == 0x94
    finally:
        c.paho.loop_stop()
