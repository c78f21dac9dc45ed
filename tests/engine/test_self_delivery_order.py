"""Issue 16 item 5: a client subscribed to the topic it publishes to at QoS 2 gets the PUBREC before the
delivery of its own message (mqtt-guard wrote the delivery first: it was coalesced into the same write
and flushed ahead of the PUBREC). QoS 1: the delivery comes before the PUBACK, as from mosquitto. Raw
MQTT 3.1.1 packets, against mqtt-guard and the real mosquitto 2.0.11 (which routes an inbound QoS 2
message at PUBREL, so its delivery always follows the PUBREC)."""

from __future__ import annotations

import uuid

import pytest

from tests.engine.conftest import vs_mosquitto
from tests.helpers import rawmqtt as raw


def _self_subscribed(port: int) -> tuple[raw.RawClient, str]:
    cid = f"self-{uuid.uuid4().hex[:8]}"
    c, _ = raw.connected(port, cid)
    c.send(raw.subscribe(1, (f"self/{cid}", 2)))
    c.expect(raw.SUBACK)
    return c, f"self/{cid}"


def _kinds(packets: list[raw.Packet]) -> list[tuple[int, int]]:
    """(type, packet id) of each packet; a PUBLISH is told by its payload (b"0", b"1"...) instead."""
    return [(p.type, int(p.payload) if p.type == raw.PUBLISH else p.packet_id) for p in packets]


@pytest.mark.parametrize("target", vs_mosquitto(), indirect=True)
def test_own_qos2_message_pubrec_comes_before_the_delivery(target):
    c, topic = _self_subscribed(target.port)
    with c:
        c.send(raw.publish(topic, b"0", qos=2, packet_id=9))
        assert c.expect_any().type == raw.PUBREC
        c.send(raw.ack(raw.PUBREL, 9))
        rest = raw.drain(c, 0.5)
        assert sorted(_kinds(rest)) == [(raw.PUBLISH, 0), (raw.PUBCOMP, 9)]


@pytest.mark.parametrize("target", vs_mosquitto(), indirect=True)
def test_pubrecs_of_a_burst_keep_their_order_each_before_its_delivery(target):
    """Several QoS 2 PUBLISHes in one write: PUBRECs in the order of the PUBLISHes [MQTT-4.6.0-3], each
    ahead of its own delivery (which mosquitto sends only after the PUBREL)."""
    c, topic = _self_subscribed(target.port)
    with c:
        c.send(b"".join(raw.publish(topic, b"%d" % i, qos=2, packet_id=10 + i) for i in range(5)))
        seen: list[tuple[int, int]] = []
        while sum(1 for kind, _ in seen if kind == raw.PUBREC) < 5:
            seen += _kinds([c.expect_any()])
        recs = [pid for kind, pid in seen if kind == raw.PUBREC]
        assert recs == [10, 11, 12, 13, 14]
        for i, (kind, n) in enumerate(seen):
            if kind == raw.PUBLISH:
                assert (raw.PUBREC, 10 + n) in seen[:i], f"delivery {n} before its PUBREC: {seen}"
        c.send(b"".join(raw.ack(raw.PUBREL, 10 + i) for i in range(5)))
        seen += _kinds(raw.drain(c, 0.7))
        assert sorted(n for kind, n in seen if kind == raw.PUBLISH) == [0, 1, 2, 3, 4]
        assert sorted(pid for kind, pid in seen if kind == raw.PUBCOMP) == [10, 11, 12, 13, 14]


@pytest.mark.parametrize("target", vs_mosquitto(), indirect=True)
def test_own_qos1_message_is_delivered_before_the_puback(target):
    c, topic = _self_subscribed(target.port)
    with c:
        c.send(raw.publish(topic, b"0", qos=1, packet_id=9))
        assert _kinds(raw.drain(c, 0.5)) == [(raw.PUBLISH, 0), (raw.PUBACK, 9)]
