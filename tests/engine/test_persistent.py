"""Item 10: persistent sessions (clean_session=0), anonymous ones included. QoS 1/2 published while the
client is away are queued (bounded) and delivered on reconnect; unacknowledged QoS 1/2 are re-sent with
DUP [MQTT-4.4.0-1]; an inbound QoS 2 message re-sent after a reconnect is not routed twice."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.engine.conftest import both
from tests.helpers import rawmqtt as raw
from tests.helpers.mqtt import connect
from tests.helpers.wait import until


def _cid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _gone(target, cid: str, n: int = 1) -> None:
    """Wait until the broker has seen the n-th end of `cid`'s connection (so routing sees it offline)."""
    if not hasattr(target, "wait_log"):
        time.sleep(0.5)  # plain amqtt: no log line to wait for
        return
    assert until(lambda: target.log().count(f"client '{cid}' (") >= n, 5), f"broker did not see {cid} disconnect"


def _publish_all(port: int, *messages: tuple[str, bytes, int]) -> None:
    """Publish and complete every flow before returning."""
    with raw.connected(port, _cid("pub"))[0] as pub:
        for i, (topic, payload, qos) in enumerate(messages, start=1):
            pub.send(raw.publish(topic, payload, qos=qos, packet_id=i))
            if qos == 1:
                pub.expect(raw.PUBACK)
            elif qos == 2:
                pub.expect(raw.PUBREC)
                pub.send(raw.ack(raw.PUBREL, i))
                pub.expect(raw.PUBCOMP)
        pub.send(raw.PINGREQ_BYTES)
        pub.expect(raw.PINGRESP)


@pytest.mark.parametrize(
    "target", both("an anonymous client's persistent session is discarded when it disconnects"), indirect=True
)
def test_offline_anonymous_session_gets_qos1_and_qos2_on_reconnect(target):
    cid = _cid("offline")
    sub, present = raw.connected(target.port, cid, clean=False)
    assert present == 0
    with sub:
        sub.send(raw.subscribe(1, ("off/#", 2)))
        sub.expect(raw.SUBACK)
        sub.send(raw.DISCONNECT_BYTES)
    _gone(target, cid)
    _publish_all(target.port, ("off/q0", b"zero", 0), ("off/q1", b"one", 1), ("off/q2", b"two", 2))
    sub, present = raw.connected(target.port, cid, clean=False)
    with sub:
        assert present == 1
        got = [p for p in raw.drain(sub) if p.type == raw.PUBLISH]
        assert [(p.topic, p.payload, p.qos, p.retain, p.dup) for p in got] == [
            ("off/q1", b"one", 1, False, False),
            ("off/q2", b"two", 2, False, False),
        ]


def test_offline_queue_is_bounded(anon_broker, add_user):
    broker = anon_broker("limits:\n  max_queued_messages: 5\n")
    add_user("dev", "pw")
    cid = _cid("bounded")
    sub, _ = raw.connected(broker.port, cid, clean=False, username="dev", password="pw")
    with sub:
        sub.send(raw.subscribe(1, ("b/#", 1)))
        sub.expect(raw.SUBACK)
    # closed without DISCONNECT: the session persists all the same
    _gone(broker, cid)
    _publish_all(broker.port, *[("b/t", b"%d" % i, 1) for i in range(10)])
    sub, present = raw.connected(broker.port, cid, clean=False, username="dev", password="pw")
    with sub:
        assert present == 1
        got = [p for p in raw.drain(sub) if p.type == raw.PUBLISH]
        assert [p.payload for p in got] == [b"0", b"1", b"2", b"3", b"4"]  # the oldest kept, the rest dropped
    broker.wait_log(f"queue of client '{cid}' is full")


@pytest.mark.parametrize(
    "target", both("unacknowledged deliveries are dropped on disconnect, never re-sent"), indirect=True
)
def test_unacknowledged_qos1_is_resent_with_dup_after_reconnect(target):
    cid = _cid("dup1")
    sub, _ = raw.connected(target.port, cid, clean=False)
    with sub:
        sub.send(raw.subscribe(1, ("dup/#", 1)))
        sub.expect(raw.SUBACK)
        _publish_all(target.port, ("dup/a", b"first", 1))
        first = sub.expect(raw.PUBLISH)
        assert not first.dup
    # gone without PUBACK
    sub, present = raw.connected(target.port, cid, clean=False)
    with sub:
        assert present == 1
        again = sub.expect(raw.PUBLISH)
        assert (again.topic, again.payload, again.dup, again.packet_id) == ("dup/a", b"first", True, first.packet_id)
        sub.send(raw.ack(raw.PUBACK, again.packet_id))
        sub.send(raw.DISCONNECT_BYTES)
    sub, _ = raw.connected(target.port, cid, clean=False)
    with sub:
        assert [p for p in raw.drain(sub) if p.type == raw.PUBLISH] == []  # acknowledged: not sent a third time


def test_qos2_flow_resumes_after_reconnect(anon_broker):
    broker = anon_broker()
    cid = _cid("dup2")
    sub, _ = raw.connected(broker.port, cid, clean=False)
    with sub:
        sub.send(raw.subscribe(1, ("two/#", 2)))
        sub.expect(raw.SUBACK)
        _publish_all(broker.port, ("two/a", b"A", 2), ("two/b", b"B", 2))
        a = sub.expect(raw.PUBLISH)
        b = sub.expect(raw.PUBLISH)
        sub.send(raw.ack(raw.PUBREC, a.packet_id))  # A: PUBREC sent, B: nothing
        assert sub.expect(raw.PUBREL).packet_id == a.packet_id
    sub, _ = raw.connected(broker.port, cid, clean=False)
    with sub:
        first, second = sub.expect_any(), sub.expect_any()
        assert (first.type, first.packet_id) == (raw.PUBREL, a.packet_id)  # A continues at PUBREL
        assert (second.type, second.dup, second.packet_id, second.payload) == (raw.PUBLISH, True, b.packet_id, b"B")
        sub.send(raw.ack(raw.PUBCOMP, a.packet_id))
        sub.send(raw.ack(raw.PUBREC, b.packet_id))
        assert sub.expect(raw.PUBREL).packet_id == b.packet_id
        sub.send(raw.ack(raw.PUBCOMP, b.packet_id))
        sub.send(raw.DISCONNECT_BYTES)
    sub, _ = raw.connected(broker.port, cid, clean=False)
    with sub:
        assert raw.drain(sub) == []


def test_inbound_qos2_resent_after_reconnect_is_delivered_once(anon_broker):
    broker = anon_broker()
    watcher = connect(broker.port)
    assert watcher.subscribe(("once/#", 2)) == [2]
    cid = _cid("pub2")
    pub, _ = raw.connected(broker.port, cid, clean=False)
    with pub:
        pub.send(raw.publish("once/t", b"exactly once", qos=2, packet_id=7))
        pub.expect(raw.PUBREC)
    # reconnect before PUBREL: the client re-sends the PUBLISH with DUP, then PUBREL
    pub, present = raw.connected(broker.port, cid, clean=False)
    with pub:
        assert present == 1
        pub.send(raw.publish("once/t", b"exactly once", qos=2, packet_id=7, dup=True))
        assert pub.expect(raw.PUBREC).packet_id == 7
        pub.send(raw.ack(raw.PUBREL, 7))
        assert pub.expect(raw.PUBCOMP).packet_id == 7
    assert [m.payload for m in watcher.received(1.0)] == [b"exactly once"]
    watcher.close()


def test_clean_session_discards_the_persistent_one(anon_broker):
    broker = anon_broker()
    cid = _cid("cleaned")
    sub, _ = raw.connected(broker.port, cid, clean=False)
    with sub:
        sub.send(raw.subscribe(1, ("c/#", 1)))
        sub.expect(raw.SUBACK)
    _gone(broker, cid)
    _publish_all(broker.port, ("c/a", b"queued", 1))
    sub, present = raw.connected(broker.port, cid, clean=True)
    with sub:
        assert present == 0
        assert raw.drain(sub) == []
    _gone(broker, cid, 2)
    _publish_all(broker.port, ("c/a", b"after", 1))
    sub, present = raw.connected(broker.port, cid, clean=False)
    with sub:
        assert present == 0  # the clean session ended and left nothing behind
        assert raw.drain(sub) == []


def test_another_user_cannot_resume_a_persistent_session(start_broker, add_user, rds, prefix, tmp_path):
    """Under `auth.client_id_policy: any` (under the default `owner` mallory gets CONNACK 2 instead:
    tests/engine/test_client_id_ownership.py)."""
    add_user("alice", "pw-a")
    add_user("mallory", "pw-m")
    for user in ("alice", "mallory"):
        rds.hset(f"{prefix}acl:user:{user}", "#", "readwrite")
    config = tmp_path / "any.yaml"
    config.write_text("auth:\n  client_id_policy: any\n")
    broker = start_broker("--config", str(config))
    cid = _cid("alices-device")
    sub, _ = raw.connected(broker.port, cid, clean=False, username="alice", password="pw-a")
    with sub:
        sub.send(raw.subscribe(1, ("inbox/alice", 1)))
        sub.expect(raw.SUBACK)
    _gone(broker, cid)
    _publish_all_as(broker.port, "alice", "pw-a", ("inbox/alice", b"private", 1))
    thief, present = raw.connected(broker.port, cid, clean=False, username="mallory", password="pw-m")
    with thief:
        assert present == 0
        assert raw.drain(thief) == []
    broker.wait_log("not resumed by user 'mallory'")


def _publish_all_as(port: int, user: str, pw: str, *messages: tuple[str, bytes, int]) -> None:
    with raw.connected(port, _cid("pub"), username=user, password=pw)[0] as pub:
        for i, (topic, payload, qos) in enumerate(messages, start=1):
            pub.send(raw.publish(topic, payload, qos=qos, packet_id=i))
            pub.expect(raw.PUBACK)
