"""Issue 16 item 5: an acknowledgement of the wrong kind for a delivery in flight closes the connection;
one for a packet id not in flight is ignored (PUBACK, PUBCOMP) or answered (PUBREC gets PUBREL, PUBREL
gets PUBCOMP). Raw MQTT 3.1.1 packets, sent to mqtt-guard and to the real mosquitto 2.0.11 side by
side: every expectation here is mosquitto's measured behaviour (docs/engine.md)."""

from __future__ import annotations

import uuid

import pytest

from mqtt_guard.engine.protocol import ProtocolViolation
from mqtt_guard.engine.queues import OutQueue
from tests.engine.conftest import vs_mosquitto
from tests.helpers import rawmqtt as raw

against_mosquitto = pytest.mark.parametrize("target", vs_mosquitto(), indirect=True)


def _delivered(port: int, qos: int, mqtt31: bool = False) -> tuple[raw.RawClient, raw.Packet, str]:
    """A subscriber (at `qos`) with one message of that QoS delivered to it and not yet acknowledged.
    `mqtt31`: the subscriber speaks MQTT 3.1 (MQIsdp)."""
    cid = f"ack-{uuid.uuid4().hex[:8]}"
    topic = f"acks/{cid}"
    if mqtt31:
        sub = raw.RawClient(port)
        sub.send(raw.connect(cid, name="MQIsdp", level=3))
        assert sub.connack() == (0, 0)
    else:
        sub, _ = raw.connected(port, cid)
    sub.send(raw.subscribe(1, (topic, qos)))
    sub.expect(raw.SUBACK)
    with raw.connected(port, f"p-{cid}")[0] as pub:
        pub.send(raw.publish(topic, b"m", qos=qos, packet_id=5))
        if qos == 2:  # mosquitto routes an inbound QoS 2 message at PUBREL
            pub.expect(raw.PUBREC)
            pub.send(raw.ack(raw.PUBREL, 5))
            pub.expect(raw.PUBCOMP)
        else:
            pub.expect(raw.PUBACK)
    delivery = sub.expect(raw.PUBLISH)
    assert delivery.qos == qos
    return sub, delivery, cid


def _alive(client: raw.RawClient) -> bool:
    client.send(raw.PINGREQ_BYTES)
    try:
        pkt = client.read(3)
    except TimeoutError:
        return False
    return pkt is not None and pkt.type == raw.PINGRESP


WRONG = [
    ("PUBREC answering QoS 1", 1, [], raw.PUBREC, "PUBREC for a QoS 1 delivery"),
    ("PUBCOMP answering QoS 1", 1, [], raw.PUBCOMP, "PUBCOMP for a QoS 1 delivery"),
    ("PUBACK answering QoS 2", 2, [], raw.PUBACK, "PUBACK for a QoS 2 delivery waiting for PUBREC"),
    ("PUBCOMP before PUBREC", 2, [], raw.PUBCOMP, "PUBCOMP for a QoS 2 delivery waiting for PUBREC"),
    ("PUBACK after PUBREC", 2, [raw.PUBREC], raw.PUBACK, "PUBACK for a QoS 2 delivery waiting for PUBCOMP"),
]


@against_mosquitto
@pytest.mark.parametrize("mqtt31", [False, True], ids=["3.1.1", "3.1"])
@pytest.mark.parametrize("name,qos,before,wrong,reason", WRONG, ids=[w[0] for w in WRONG])
def test_an_ack_of_the_wrong_kind_closes_the_connection(target, name, qos, before, wrong, reason, mqtt31):
    sub, delivery, cid = _delivered(target.port, qos, mqtt31)
    with sub:
        for kind in before:
            sub.send(raw.ack(kind, delivery.packet_id))
            assert sub.expect(raw.PUBREL).packet_id == delivery.packet_id
        sub.send(raw.ack(wrong, delivery.packet_id))
        assert sub.closed_by_peer(3), f"{name}: connection left open"
    if hasattr(target, "wait_log"):  # mqtt-guard: one line naming the client and the reason
        log = target.wait_log(f"closed connection of client '{cid}'")
        line = next(ln for ln in log.splitlines() if f"closed connection of client '{cid}'" in ln)
        assert "protocol violation" in line and reason in line


@against_mosquitto
def test_the_right_acks_and_a_repeated_pubrec_keep_the_connection(target):
    sub, delivery, _ = _delivered(target.port, 2)
    with sub:
        pid = delivery.packet_id
        for _ in range(2):  # a PUBREC again (a lost PUBREL) is answered again
            sub.send(raw.ack(raw.PUBREC, pid))
            assert sub.expect(raw.PUBREL).packet_id == pid
        sub.send(raw.ack(raw.PUBCOMP, pid))
        assert _alive(sub)


UNKNOWN = [
    ("PUBACK", raw.PUBACK, None),
    ("PUBREC", raw.PUBREC, raw.PUBREL),
    ("PUBCOMP", raw.PUBCOMP, None),
    ("PUBREL", raw.PUBREL, raw.PUBCOMP),
]


@against_mosquitto
@pytest.mark.parametrize("name,kind,answer", UNKNOWN, ids=[u[0] for u in UNKNOWN])
def test_an_ack_of_an_unknown_packet_id_is_ignored_or_answered(target, name, kind, answer):
    with raw.connected(target.port, f"unk-{uuid.uuid4().hex[:8]}")[0] as c:
        c.send(raw.ack(kind, 999))
        if answer is not None:
            assert c.expect(answer).packet_id == 999
        assert _alive(c), f"{name} of an unknown id closed the connection"


@against_mosquitto
@pytest.mark.parametrize("kind", [raw.PUBACK, raw.PUBREC], ids=["PUBACK", "PUBREC"])
def test_an_ack_after_the_delivery_completed_is_an_unknown_id(target, kind):
    """The id is no longer in flight: PUBACK again is ignored, a PUBREC (wrong kind, but nothing to be
    wrong about any more) is answered with PUBREL."""
    sub, delivery, _ = _delivered(target.port, 1)
    with sub:
        sub.send(raw.ack(raw.PUBACK, delivery.packet_id))
        sub.send(raw.ack(kind, delivery.packet_id))
        if kind == raw.PUBREC:
            assert sub.expect(raw.PUBREL).packet_id == delivery.packet_id
        assert _alive(sub)


def test_out_queue_raises_on_the_wrong_kind_and_ignores_unknown_ids():
    q = OutQueue(10, 0, 5)
    q.online = True
    q.offer(b"a", b"1", 1, False)  # not writable (no port): waits; take() puts it in flight as id 1
    q.offer(b"b", b"2", 2, False)  # id 2
    q.take(1 << 20)
    assert not q.acked(9) and not q.received(9) and not q.completed(9)
    for call in (q.received, q.completed):
        with pytest.raises(ProtocolViolation, match="QoS 1 delivery"):
            call(1)
    with pytest.raises(ProtocolViolation, match="PUBACK for a QoS 2 delivery waiting for PUBREC"):
        q.acked(2)
    with pytest.raises(ProtocolViolation, match="PUBCOMP for a QoS 2 delivery waiting for PUBREC"):
        q.completed(2)
    assert q.received(2) and q.received(2)
    with pytest.raises(ProtocolViolation, match="waiting for PUBCOMP"):
        q.acked(2)
    assert q.completed(2) and q.acked(1) and q.depth() == (0, 0)
