"""A resumed MQTT 5 session gets the limits of its new connection (issue 16 review): nothing larger than
the new Maximum Packet Size is sent, queued or re-sent [MQTT-3.1.2-24/25] (dropped as if sent, counted,
and gone from Redis too), and no more unacknowledged QoS 1/2 PUBLISHes than the new Receive Maximum
[MQTT-3.3.4-9]. Raw sockets against a real broker process and redis-server."""

from __future__ import annotations

import uuid

from tests.helpers import mqtt5 as m5
from tests.helpers import rawmqtt as raw

EXPIRY = (0x11, m5.u32(300))
CFG = "limits:\n  max_inflight_messages: 20\n"


def _plist(*items: tuple[int, bytes]) -> bytes:
    """A CONNECT property list without its length."""
    return b"".join(m5.varint(i) + v for i, v in items)


def _resume(port: int, cid: str, *items: tuple[int, bytes]) -> raw.RawClient:
    c = raw.RawClient(port)
    c.send(m5.connect(cid, properties=_plist(EXPIRY, *items), clean=False))
    pkt = c.expect(raw.CONNACK)
    assert pkt.body[1] == 0
    return c


def _publish(port: int, *messages: tuple[str, bytes]) -> None:
    """QoS 1 messages, each acknowledged by the broker."""
    pub, _ = raw.connected(port, f"pub-{uuid.uuid4().hex[:6]}")
    try:
        for i, (topic, payload) in enumerate(messages, 1):
            pub.send(raw.publish(topic, payload, qos=1, packet_id=i))
            assert pub.expect(raw.PUBACK).packet_id == i
    finally:
        pub.close()


def _subscribed(port: int, cid: str, *items: tuple[int, bytes]) -> raw.RawClient:
    c = _resume(port, cid, *items)
    c.send(m5.subscribe(1, ("r/#", 1)))
    c.expect(raw.SUBACK)
    return c


def _publishes(c: raw.RawClient) -> list[raw.Packet]:
    return [p for p in raw.drain(c, 1.5) if p.type == raw.PUBLISH]


def test_resumed_with_a_smaller_maximum_packet_size_gets_no_larger_packet(anon_broker, start_broker, guard_config):
    """In flight (sent, unacknowledged) and queued messages too large for the new connection are dropped,
    logged and removed from Redis: a second broker resuming the session does not bring them back."""
    cfg = guard_config(CFG)
    broker = start_broker("--config", cfg)
    cid = f"mps-{uuid.uuid4().hex[:6]}"
    big = b"B" * 500
    c = _subscribed(broker.port, cid)
    _publish(broker.port, ("r/1", big), ("r/2", b"small-1"))
    got = _publishes(c)
    assert [m5.publish_parts(p)[3] for p in got] == [big, b"small-1"]  # both sent, none acknowledged
    c.close()
    _publish(broker.port, ("r/3", big), ("r/4", b"small-2"))  # queued for the offline session

    c = _resume(broker.port, cid, (0x27, m5.u32(100)))
    got = _publishes(c)
    assert got, "the small messages are re-sent / sent"
    assert all(len(p.raw()) <= 100 for p in got), [len(p.raw()) for p in got]
    payloads = sorted(m5.publish_parts(p)[3] for p in got)
    assert payloads == [b"small-1", b"small-2"]
    for p in got:
        c.send(m5.ack(raw.PUBACK, m5.publish_parts(p)[1]))
    broker.wait_log("larger than the Maximum Packet Size")
    c.send(m5.disconnect())
    c.close()

    # The dropped messages left the session and Redis: a second broker restores nothing of them.
    other = start_broker("--config", cfg)
    c = _resume(other.port, cid)
    assert _publishes(c) == []
    c.close()


def test_311_persistent_session_resumed_as_mqtt5_with_a_maximum_packet_size(anon_broker):
    broker = anon_broker(CFG)
    cid = f"mps311-{uuid.uuid4().hex[:6]}"
    c, _ = raw.connected(broker.port, cid, clean=False)
    c.send(raw.subscribe(1, ("r/#", 1)))
    c.expect(raw.SUBACK)
    c.close()
    _publish(broker.port, ("r/1", b"B" * 500), ("r/2", b"ok"))

    c = _resume(broker.port, cid, (0x27, m5.u32(100)))
    got = _publishes(c)
    assert [m5.publish_parts(p)[3] for p in got] == [b"ok"]
    assert all(len(p.raw()) <= 100 for p in got)
    broker.wait_log("larger than the Maximum Packet Size")
    c.close()


def test_resumed_with_receive_maximum_1_gets_one_unacknowledged_publish_at_a_time(anon_broker):
    """Three QoS 1 in flight when the client left; it comes back with Receive Maximum 1: one re-sent
    (DUP, same packet id), the next only after its PUBACK, then the one queued while it was away."""
    broker = anon_broker(CFG)
    cid = f"rm-{uuid.uuid4().hex[:6]}"
    c = _subscribed(broker.port, cid)
    _publish(broker.port, ("r/1", b"m1"), ("r/2", b"m2"), ("r/3", b"m3"))
    first = _publishes(c)
    assert [m5.publish_parts(p)[3] for p in first] == [b"m1", b"m2", b"m3"]
    ids = [m5.publish_parts(p)[1] for p in first]
    c.close()
    _publish(broker.port, ("r/4", b"m4"))

    c = _resume(broker.port, cid, (0x21, m5.u16(1)))
    for i, want in enumerate([b"m1", b"m2", b"m3", b"m4"]):
        got = _publishes(c)
        assert len(got) == 1, f"step {i}: {[m5.publish_parts(p)[3] for p in got]}"
        _, pid, _, payload = m5.publish_parts(got[0])
        assert payload == want
        if i < 3:
            assert got[0].dup and pid == ids[i]
        c.send(m5.ack(raw.PUBACK, pid))
    assert _publishes(c) == []
    c.close()
