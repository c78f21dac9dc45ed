"""Items 1, 4, 5: what a subscriber receives. Retained messages only after its own SUBSCRIBE, delivery
QoS = min(published, granted), one copy per client for overlapping filters, and nothing lost when a
publisher disconnects right after sending."""

from __future__ import annotations

import uuid

import pytest

from tests.engine.conftest import both
from tests.helpers import rawmqtt as raw
from tests.helpers.mqtt import connect

ALLOW_ALL_TOPIC = {
    "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
    "tests.engine.faulty_plugins.AllowAllTopic": {},
}


def _cid(prefix: str = "c") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize(
    "target",
    both(
        "a new client gets every retained message matching any client's "
        "subscription at CONNECT (docs/amqtt-proofs/p3_receive.py section 5)"
    ),
    indirect=True,
)
def test_no_retained_messages_at_connect(target):
    holder = connect(target.port)  # makes the filter `secret/#` exist in the broker
    assert holder.subscribe(("secret/#", 1)) == [1]
    pub = connect(target.port)
    pub.publish("secret/key", b"retained", qos=1, retain=True)
    assert holder.receive().payload == b"retained"
    newcomer = connect(target.port)  # connects and subscribes to nothing
    assert newcomer.received(1.0) == []
    # After its own SUBSCRIBE it gets the retained message, flagged retained.
    assert newcomer.subscribe(("secret/#", 1)) == [1]
    msg = newcomer.receive()
    assert (msg.topic, msg.payload, msg.retain) == ("secret/key", b"retained", True)
    for c in (holder, pub, newcomer):
        c.close()


@pytest.mark.parametrize(
    "target",
    both("delivers at the subscription QoS: QoS 0 is upgraded to QoS 1 (docs/amqtt-proofs/p1_hooks.out)"),
    indirect=True,
)
def test_delivery_qos_is_min_of_published_and_granted(target):
    sub, _ = raw.connected(target.port, _cid("sub"))
    with sub:
        sub.send(raw.subscribe(1, ("q/#", 1)))
        sub.expect(raw.SUBACK)
        with raw.connected(target.port, _cid("pub"))[0] as pub:
            pub.send(raw.publish("q/zero", b"0", qos=0))
            pub.send(raw.publish("q/two", b"2", qos=2, packet_id=9))
            pub.expect(raw.PUBREC)
            pub.send(raw.ack(raw.PUBREL, 9))
            pub.expect(raw.PUBCOMP)
        got = {}
        for _ in range(2):
            pkt = sub.expect(raw.PUBLISH)
            got[pkt.topic] = pkt.qos
            if pkt.qos:
                sub.send(raw.ack(raw.PUBACK, pkt.packet_id))
        assert got == {"q/zero": 0, "q/two": 1}


@pytest.mark.parametrize("target", both("one copy per matching subscription"), indirect=True)
def test_overlapping_subscriptions_deliver_one_copy_at_the_highest_qos(target):
    sub, _ = raw.connected(target.port, _cid("sub"))
    with sub:
        sub.send(raw.subscribe(1, ("ov/#", 0), ("ov/+", 1)))
        sub.expect(raw.SUBACK)
        with raw.connected(target.port, _cid("pub"))[0] as pub:
            pub.send(raw.publish("ov/a", b"x", qos=1, packet_id=2))
            pub.expect(raw.PUBACK)
        got = raw.drain(sub)
        assert [(p.topic, p.qos) for p in got] == [("ov/a", 1)]


def test_resubscribing_replaces_the_granted_qos(anon_broker):
    broker = anon_broker()
    sub, _ = raw.connected(broker.port, _cid("sub"))
    with sub:
        sub.send(raw.subscribe(1, ("r/#", 0)))
        sub.expect(raw.SUBACK)
        sub.send(raw.subscribe(2, ("r/#", 1)))
        assert sub.expect(raw.SUBACK).body == b"\x00\x02\x01"
        with raw.connected(broker.port, _cid("pub"))[0] as pub:
            pub.send(raw.publish("r/a", b"x", qos=1, packet_id=3))
            pub.expect(raw.PUBACK)
        got = raw.drain(sub)
        assert [(p.topic, p.qos) for p in got] == [("r/a", 1)]


N_BURST = 3000


@pytest.mark.parametrize(
    "target",
    both(
        "a publisher's DISCONNECT discards its unrouted inbound backlog, PUBACKed "
        "QoS 1 included (docs/amqtt-proofs/p8b_disconnect_loss.py)"
    ),
    indirect=True,
)
def test_disconnect_right_after_publishing_loses_nothing(target, request):
    if request.node.callspec.params["target"] == "amqtt":  # the loss needs a topic plugin on amqtt's side
        target.stop()
        from tests.engine.conftest import start_plain_amqtt

        tmp = request.getfixturevalue("tmp_path")
        target = start_plain_amqtt(tmp, ALLOW_ALL_TOPIC)
        request.addfinalizer(target.stop)
    sub, _ = raw.connected(target.port, _cid("sub"))
    with sub:
        sub.send(raw.subscribe(1, ("burst/#", 0)))
        sub.expect(raw.SUBACK)
        pub, _ = raw.connected(target.port, _cid("pub"))
        with pub:
            pub.send(
                b"".join(raw.publish("burst/t", b"%d" % i, qos=1, packet_id=i % 60000 + 1) for i in range(N_BURST))
            )
            acked = sum(1 for _ in range(N_BURST) if pub.expect(raw.PUBACK, timeout=30))
            assert acked == N_BURST  # every message is acknowledged by the broker
            pub.send(raw.DISCONNECT_BYTES)
            assert pub.closed_by_peer(5)
        received = [p for p in raw.drain(sub, 3.0) if p.type == raw.PUBLISH]
        assert len(received) == N_BURST
        assert [p.payload for p in received] == [b"%d" % i for i in range(N_BURST)]  # in order


def test_will_is_subject_to_the_publish_acl(start_broker, add_user, rds, prefix):
    """A will goes out like a PUBLISH of its client, so it cannot be used to write where the client may
    not (amqtt published wills without any check)."""
    add_user("dev", "pw")
    add_user("watch", "pw")
    rds.hset(f"{prefix}acl:user:dev", "dev/#", "readwrite")
    rds.hset(f"{prefix}acl:user:watch", "#", "read")
    broker = start_broker()
    watcher = connect(broker.port, "watch", "pw")
    assert watcher.subscribe(("#", 0)) == [0]
    for will_topic in ("dev/status", "other/status"):
        c = raw.RawClient(broker.port)
        c.send(raw.connect(_cid("dev"), username="dev", password=b"pw", will=(will_topic, b"gone", 0, False)))
        assert c.connack() == (0, 0)
        c.close()  # no DISCONNECT: the will fires
    got = watcher.received(1.5)
    assert [(m.topic, m.payload) for m in got] == [("dev/status", b"gone")]
    broker.wait_log("will of client")
    watcher.close()
