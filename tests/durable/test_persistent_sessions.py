"""Persistent sessions in Redis (issue 17 item 2, "Done when"): real redis-server, real broker processes
killed with SIGKILL, paho 3.1.1 and MQTT 5 clients and raw sockets. A persistent subscriber's messages
acknowledged to their publisher survive a `kill -9` of the broker, on the same broker restarted and on
a second broker; QoS 2 stays exactly once; subscriptions keep their options; sessions expire."""

from __future__ import annotations

import json
import queue
import signal
import time
import uuid
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.helpers import mqtt5 as m5
from tests.helpers import rawmqtt as raw
from tests.helpers.mqtt import connect
from tests.helpers.servers import BrokerProcess
from tests.helpers.wait import until

N = 1000


def _cid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def config(tmp_path: Path):
    def write(extra: str = "") -> str:
        path = tmp_path / f"guard-{uuid.uuid4().hex[:6]}.yaml"
        path.write_text("auth:\n  allow_anonymous: true\nacl:\n  default: allow\n" + extra)
        return str(path)

    return write


class Sub311:
    """A paho 3.1.1 persistent subscriber (clean session 0) that records what it receives."""

    def __init__(self, port: int, cid: str) -> None:
        self.messages: queue.Queue[tuple[str, bytes, int]] = queue.Queue()
        connacked: queue.Queue[int] = queue.Queue()
        c = self.paho = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=cid, clean_session=False, protocol=paho.MQTTv311
        )
        c.reconnect_delay_set(60, 120)
        c.on_connect = lambda _c, _u, flags, _rc, _p: connacked.put(int(flags.session_present))
        c.on_message = lambda _c, _u, msg: self.messages.put((msg.topic, msg.payload, msg.qos))
        c.connect("127.0.0.1", port, keepalive=60)
        c.loop_start()
        self.present = connacked.get(timeout=10)

    def subscribe(self, topic_filter: str, qos: int) -> None:
        done: queue.Queue[int] = queue.Queue()
        self.paho.on_subscribe = lambda *_a: done.put(1)
        self.paho.subscribe(topic_filter, qos)
        done.get(timeout=5)

    def payloads(self, n: int, timeout: float = 30.0) -> list[bytes]:
        out: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(out) < n and time.monotonic() < deadline:
            try:
                out.append(self.messages.get(timeout=0.5)[1])
            except queue.Empty:
                pass
        return out

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


def _publish_acked(port: int, topic: str, n: int, qos: int = 1) -> None:
    """n QoS 1/2 messages, each acknowledged by the broker, before returning."""
    pub = connect(port, client_id=_cid("pub"))
    infos = [pub.paho.publish(topic, f"m{i}".encode(), qos=qos) for i in range(n)]
    for info in infos:
        info.wait_for_publish(30)
        assert info.is_published()
    pub.close()


def _kill(broker: BrokerProcess) -> None:
    assert broker.proc is not None
    broker.proc.send_signal(signal.SIGKILL)
    broker.proc.wait(10)
    broker.stop()


def _offline_subscriber(port: int, topic_filter: str, qos: int = 1) -> str:
    cid = _cid("psub")
    sub = Sub311(port, cid)
    assert sub.present == 0
    sub.subscribe(topic_filter, qos)
    sub.close()
    return cid


@pytest.mark.parametrize("where", ["restarted", "second broker"])
def test_1000_acknowledged_qos1_messages_survive_kill_9(start_broker, config, where):
    cfg = config()
    broker = start_broker("--config", cfg)
    other = start_broker("--config", cfg) if where == "second broker" else None
    cid = _offline_subscriber(broker.port, "dur/q1/#")
    broker.wait_log(f"client '{cid}' (")
    _publish_acked(broker.port, "dur/q1/x", N)
    _kill(broker)
    if other is None:
        other = start_broker("--config", cfg, port=broker.port)
    sub = Sub311(other.port, cid)
    try:
        assert sub.present == 1
        got = sub.payloads(N)
        assert sorted(got, key=lambda p: int(p[1:])) == [f"m{i}".encode() for i in range(N)]
        assert got == [f"m{i}".encode() for i in range(N)]  # in order
    finally:
        sub.close()
    if where == "restarted":  # (loaded at its start: the sessions it owned)
        other.wait_log("1 offline persistent session(s) this broker owned restored from Redis")
    else:  # (read at the CONNECT)
        other.wait_log(f"client '{cid}': persistent session restored from Redis")


def test_qos2_is_delivered_once_across_a_restart(start_broker, config):
    cfg = config()
    broker = start_broker("--config", cfg)
    cid = _cid("q2")
    # online subscriber: gets PUBLISH QoS 2 and answers PUBREC; the broker marks it released
    sub, present = raw.connected(broker.port, cid, clean=False)
    with sub:
        sub.send(raw.subscribe(1, ("dur/q2/#", 2)))
        sub.expect(raw.SUBACK)
        _publish_acked(broker.port, "dur/q2/a", 1, qos=2)
        first = sub.expect(raw.PUBLISH)
        assert first.payload == b"m0"
        sub.send(raw.ack(raw.PUBREC, first.packet_id))
        sub.expect(raw.PUBREL)  # the broker has the PUBREC
    broker.wait_log(f"client '{cid}' (")
    # offline now: a second QoS 2 message waits for it
    _publish_acked(broker.port, "dur/q2/b", 1, qos=2)
    time.sleep(0.3)  # (the PUBREC's unacknowledged write: one loop iteration, one round trip)
    _kill(broker)
    again = start_broker("--config", cfg, port=broker.port)
    sub, present = raw.connected(again.port, cid, clean=False)
    with sub:
        assert present == 1
        packets = raw.drain(sub, 1.0)
        kinds = [(p.type, p.packet_id if p.type != raw.PUBLISH else p.payload) for p in packets]
        # the first message: only its PUBREL again (same packet id), never its PUBLISH
        assert (raw.PUBREL, first.packet_id) in kinds
        publishes = [p for p in packets if p.type == raw.PUBLISH]
        assert [p.payload for p in publishes] == [b"m0"]  # the second one ("m0" of its own publisher)
        assert publishes[0].topic == "dur/q2/b"
        sub.send(raw.ack(raw.PUBREC, publishes[0].packet_id))
        sub.expect(raw.PUBREL)
        sub.send(raw.ack(raw.PUBCOMP, publishes[0].packet_id))
        sub.send(raw.ack(raw.PUBCOMP, first.packet_id))
        sub.send(raw.PINGREQ_BYTES)
        sub.expect(raw.PINGRESP)
        sub.send(raw.DISCONNECT_BYTES)
    again.wait_log(f"client '{cid}' (")
    # completed: a later resume re-sends nothing
    sub, present = raw.connected(again.port, cid, clean=False)
    with sub:
        assert present == 1
        assert [p for p in raw.drain(sub, 1.0) if p.type in (raw.PUBLISH, raw.PUBREL)] == []


def test_mqtt5_subscription_options_and_session_present_survive(start_broker, config):
    cfg = config()
    broker = start_broker("--config", cfg)
    cid = _cid("v5")
    sub = m5.V5(broker.port, cid, clean_start=True, session_expiry=600)
    assert sub.subscribe("dur/v5/#", 1, no_local=True, sub_id=42) == [1]
    sub.close()
    broker.wait_log(f"client '{cid}' (")
    _publish_acked(broker.port, "dur/v5/t", 3)
    _kill(broker)
    other = start_broker("--config", cfg)  # a second broker on the same Redis
    back = m5.V5(other.port, cid, clean_start=False, session_expiry=600)
    try:
        assert back.reason == 0
        got = [back.receive(10) for _ in range(3)]
        assert [m.payload for m in got] == [b"m0", b"m1", b"m2"]
        assert all(m.prop("SubscriptionIdentifier") == [42] for m in got)
        # the subscription itself came back: a new message after the resume is delivered with its id
        _publish_acked(other.port, "dur/v5/t", 1)
        m = back.receive(10)
        assert m.payload == b"m0" and m.prop("SubscriptionIdentifier") == [42]
    finally:
        back.close()


def test_sessions_expire_in_redis(start_broker, config, rds, prefix):
    cfg = config()
    broker = start_broker("--config", cfg)
    cid = _cid("exp")
    sub = m5.V5(broker.port, cid, clean_start=True, session_expiry=2)
    sub.subscribe("dur/exp/#", 1)
    sub.close()
    broker.wait_log(f"client '{cid}' (")
    _publish_acked(broker.port, "dur/exp/t", 2)
    assert rds.exists(f"{prefix}psession:r:{cid}") and rds.exists(f"{prefix}psession:q:{cid}")
    _kill(broker)
    # both keys expire with the session (its Session Expiry Interval, from when it went offline)
    assert until(lambda: not rds.exists(f"{prefix}psession:r:{cid}", f"{prefix}psession:q:{cid}"), 10)
    again = start_broker("--config", cfg, port=broker.port)
    c = m5.connected(again.port, cid, properties=b"\x11" + m5.u32(60), clean=False)
    with c:
        assert [p for p in raw.drain(c, 0.8) if p.type == raw.PUBLISH] == []


def test_311_sessions_expire_by_persistent_session_expiry(start_broker, config, rds, prefix):
    cfg = config("limits:\n  persistent_session_expiry: 2s\n")
    broker = start_broker("--config", cfg)
    cid = _offline_subscriber(broker.port, "dur/exp311/#")
    broker.wait_log(f"client '{cid}' (")
    assert until(lambda: rds.exists(f"{prefix}psession:r:{cid}"), 5)
    ttl = rds.pttl(f"{prefix}psession:r:{cid}")
    assert 0 < ttl <= 2000
    _kill(broker)
    assert until(lambda: not rds.exists(f"{prefix}psession:r:{cid}"), 10)


def test_session_drop_removes_the_stored_session(start_broker, config, rds, prefix, cli):
    cfg = config()
    broker = start_broker("--config", cfg)
    cid = _offline_subscriber(broker.port, "dur/drop/#")
    broker.wait_log(f"client '{cid}' (")
    _publish_acked(broker.port, "dur/drop/t", 5)
    assert rds.exists(f"{prefix}psession:r:{cid}")
    _kill(broker)
    result = cli("session", "drop", cid)
    assert result.returncode == 0, result.stderr
    assert not rds.exists(f"{prefix}psession:r:{cid}", f"{prefix}psession:q:{cid}")
    again = start_broker("--config", cfg, port=broker.port)
    sub = Sub311(again.port, cid)
    try:
        assert sub.present == 0
    finally:
        sub.close()


def test_a_clean_start_discards_the_stored_session(start_broker, config, rds, prefix):
    cfg = config()
    broker = start_broker("--config", cfg)
    cid = _offline_subscriber(broker.port, "dur/clean/#")
    broker.wait_log(f"client '{cid}' (")
    _kill(broker)
    other = start_broker("--config", cfg)
    clean = connect(other.port, client_id=cid, clean_session=True)
    clean.close()
    assert until(lambda: not rds.exists(f"{prefix}psession:r:{cid}"), 5)
    sub = Sub311(other.port, cid)
    try:
        assert sub.present == 0
    finally:
        sub.close()


def test_qos0_queued_offline_when_configured_survives_a_restart(start_broker, config, rds, prefix):
    cfg = config("durable:\n  queue_qos0_messages: true\n")
    broker = start_broker("--config", cfg)
    cid = _offline_subscriber(broker.port, "dur/q0/#", qos=0)
    broker.wait_log(f"client '{cid}' (")
    pub = connect(broker.port, client_id=_cid("pub"))
    for i in range(3):
        pub.paho.publish("dur/q0/t", f"z{i}".encode(), qos=0)
    pub.close()
    # (unacknowledged writes: in Redis within a batch, not before any acknowledgement)
    assert until(lambda: rds.hlen(f"{prefix}psession:q:{cid}") == 5, 10)  # 3 messages, ~n, ~b
    _kill(broker)
    again = start_broker("--config", cfg, port=broker.port)
    sub = Sub311(again.port, cid)
    try:
        assert sub.present == 1
        assert sub.payloads(3, 10) == [b"z0", b"z1", b"z2"]
    finally:
        sub.close()


def test_the_queue_bound_holds_in_redis_and_drops_are_counted(start_broker, config, rds, prefix):
    cfg = config("limits:\n  max_queued_messages: 5\n")
    broker = start_broker("--config", cfg)
    cid = _offline_subscriber(broker.port, "dur/bound/#")
    broker.wait_log(f"client '{cid}' (")
    _publish_acked(broker.port, "dur/bound/t", 12)
    broker.wait_log(f"queue of client '{cid}' is full")
    assert int(rds.hget(f"{prefix}psession:q:{cid}", "~n")) == 5
    _kill(broker)
    again = start_broker("--config", cfg, port=broker.port)
    sub = Sub311(again.port, cid)
    try:
        assert sub.payloads(5, 10) == [f"m{i}".encode() for i in range(5)]
        assert sub.payloads(1, 1) == []
    finally:
        sub.close()


def test_a_restarted_broker_queues_for_the_offline_sessions_it_owned(start_broker, config, cli, add_user):
    """The offline sessions a broker owned come back from Redis at its start: messages published after
    the restart, before the client reconnects, are queued too, and pass the RECEIVE check of the client
    that resumes the session (what it may not receive is dropped then)."""
    add_user("dev", "pw")
    cfg = config()
    broker = start_broker("--config", cfg)
    cid = _cid("owned")
    sub = connect(broker.port, "dev", "pw", client_id=cid, clean_session=False)
    assert sub.subscribe(("own/#", 1)) == [1]
    sub.close()
    broker.wait_log(f"client '{cid}' (")
    _publish_acked(broker.port, "own/before", 2)
    _kill(broker)
    again = start_broker("--config", cfg, port=broker.port)
    again.wait_log("1 offline persistent session(s) this broker owned restored from Redis")
    _publish_acked(again.port, "own/after", 3)
    _publish_acked(again.port, "own/denied", 1)
    assert cli("acl", "deny", "--user", "dev", "own/denied", "receive").returncode == 0
    resumed = Sub311Auth(again.port, cid, "dev", "pw")
    try:
        assert resumed.present == 1
        got = resumed.messages
        seen = [got.get(timeout=10)[:2] for _ in range(5)]
        assert seen == [("own/before", b"m0"), ("own/before", b"m1")] + [("own/after", b"m%d" % i) for i in range(3)]
        assert resumed.payloads(1, 1) == []  # own/denied: queued unchecked, dropped at the resume
    finally:
        resumed.close()


class Sub311Auth(Sub311):
    def __init__(self, port: int, cid: str, username: str, password: str) -> None:
        self.messages: queue.Queue[tuple[str, bytes, int]] = queue.Queue()
        connacked: queue.Queue[int] = queue.Queue()
        c = self.paho = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=cid, clean_session=False, protocol=paho.MQTTv311
        )
        c.username_pw_set(username, password)
        c.reconnect_delay_set(60, 120)
        c.on_connect = lambda _c, _u, flags, _rc, _p: connacked.put(int(flags.session_present))
        c.on_message = lambda _c, _u, msg: self.messages.put((msg.topic, msg.payload, msg.qos))
        c.connect("127.0.0.1", port, keepalive=60)
        c.loop_start()
        self.present = connacked.get(timeout=10)


def test_the_broker_that_held_a_session_forgets_it_when_it_resumes_elsewhere(start_broker, config, rds, prefix):
    cfg = config("limits:\n  persistent_session_expiry: 3s\n")
    a = start_broker("--config", cfg)
    b = start_broker("--config", cfg)
    cid = _offline_subscriber(a.port, "dur/move/#")
    a.wait_log(f"client '{cid}' (")
    _publish_acked(a.port, "dur/move/t", 2)
    sub = Sub311(b.port, cid)
    try:
        assert sub.present == 1
        assert sub.payloads(2, 10) == [b"m0", b"m1"]
        a.wait_log(f"offline session of client '{cid}' resumed on broker")
        # A's copy is gone: its expiry (3 s after the client left it) does not delete the session B owns now
        time.sleep(3.5)
        assert "expired" not in "\n".join(ln for ln in a.log().splitlines() if cid in ln)
        assert rds.exists(f"{prefix}psession:r:{cid}")
        sub.close()
        b.wait_log(f"client '{cid}' (")
        _publish_acked(b.port, "dur/move/t", 1)
        again = Sub311(b.port, cid)
        try:
            assert again.present == 1 and again.payloads(1, 10) == [b"m0"]
        finally:
            again.close()
    finally:
        sub.paho.loop_stop()


def test_a_connected_session_taken_over_on_another_broker_moves_there(start_broker, config, rds, prefix):
    cfg = config()
    a = start_broker("--config", cfg)
    b = start_broker("--config", cfg)
    cid = _cid("take")
    first = Sub311(a.port, cid)
    first.subscribe("dur/take/#", 1)
    c, present = raw.connected(b.port, cid, clean=False)  # the same client id, on B, while A serves it
    with c:
        assert present == 1
        a.wait_log(f"offline session of client '{cid}' resumed on broker")  # A forgot it when it closed there
        assert "kept in" not in a.log()
        _publish_acked(b.port, "dur/take/t", 1)
        got = c.expect(raw.PUBLISH)
        assert got.payload == b"m0"
        c.send(raw.ack(raw.PUBACK, got.packet_id))
        c.send(raw.DISCONNECT_BYTES)
    b.wait_log(f"client '{cid}' (")
    first.paho.loop_stop()
    record = json.loads(rds.get(f"{prefix}psession:r:{cid}"))
    assert record["subs"] == [["dur/take/#", 1, 1, 0]] and record["offline_since"] is not None
    assert record["proc"] != "" and f"{b.port}" in record["broker"]


def test_a_corrupt_stored_session_is_logged_and_treated_as_none(start_broker, config, rds, prefix):
    cfg = config()
    broker = start_broker("--config", cfg)
    cid = _cid("corrupt")
    rds.set(f"{prefix}psession:r:{cid}", '{"v": 1, "client_id": 7}')
    rds.hset(f"{prefix}psession:q:{cid}", "m:0000000000000001", "garbage")
    sub = Sub311(broker.port, cid)  # accepted: a new session
    try:
        assert sub.present == 0
    finally:
        sub.close()
    line = broker.wait_log(f"client '{cid}': its stored session is corrupt and is discarded")
    assert " ERROR " in next(ln for ln in line.splitlines() if "is corrupt" in ln)
    # its own session replaced it: a later resume finds that one
    broker.wait_log(f"client '{cid}' (")
    again = Sub311(broker.port, cid)
    try:
        assert again.present == 1
    finally:
        again.close()


def test_a_stored_session_resumed_with_expiry_0_ends_with_that_connection(start_broker, config, rds, prefix):
    cfg = config()
    broker = start_broker("--config", cfg)
    cid = _cid("end0")
    first = m5.V5(broker.port, cid, clean_start=True, session_expiry=600)
    first.subscribe("dur/end0/#", 1)
    first.close()
    broker.wait_log(f"client '{cid}' (")
    _kill(broker)
    other = start_broker("--config", cfg)
    c = m5.connected(other.port, cid, properties=b"\x11" + m5.u32(0), clean=False)  # Clean Start 0, expiry 0
    with c:
        c.send(m5.disconnect())
    other.wait_log(f"client '{cid}' (")
    assert until(lambda: not rds.exists(f"{prefix}psession:r:{cid}", f"{prefix}psession:q:{cid}"), 5)
