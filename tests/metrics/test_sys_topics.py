"""$SYS/broker/... through a real broker: published by default (`metrics.sys_interval`, 0 = off),
periodically and retained, readable only by clients the ACL allows."""

from __future__ import annotations

import queue
import time

from tests.helpers.mqtt import connect
from tests.helpers.wait import expect

SUBACK_FAILURE = 0x80


def collect(client, seconds: float) -> list:
    """What the client receives during `seconds` ($SYS keeps publishing: `received()` would never end)."""
    out = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            out.append(client.messages.get(timeout=left))
        except queue.Empty:
            break
    return out


def latest(client, seconds: float) -> dict[str, str]:
    """What the client received during `seconds`, last value per topic."""
    return {m.topic: m.payload.decode() for m in collect(client, seconds)}


def test_sys_topics_reach_only_clients_with_a_sys_grant(metrics_broker, add_user, rds, prefix):
    add_user("ops", "pw")
    add_user("alice", "pw")
    add_user("root", "pw", "--superuser")
    rds.hset(f"{prefix}acl:user:ops", "$SYS/broker/#", "read")
    rds.hset(f"{prefix}acl:user:alice", "#", "readwrite")
    broker = metrics_broker(sys_interval="1s")
    alice = connect(broker.port, "alice", "pw", client_id="alice-1")
    assert alice.subscribe("$SYS/#") == [SUBACK_FAILURE]  # `#` rules never match $ topics
    assert alice.subscribe("#") == [0]
    ops = connect(broker.port, "ops", "pw", client_id="ops-1")
    assert ops.subscribe("$SYS/broker/#") == [0]
    for _ in range(3):
        alice.publish("a/x", b"hi", qos=1)

    seen: dict[str, str] = {}

    def received_counts() -> bool:
        seen.update(latest(ops, 0.3))
        return seen.get("$SYS/broker/messages/received") == "3"

    expect(received_counts, timeout=10)
    assert seen["$SYS/broker/version"].startswith("mqtt-guard version ")
    assert seen["$SYS/broker/uptime"].endswith(" seconds")
    assert seen["$SYS/broker/clients/connected"] == "2"
    assert "$SYS/broker/load/messages/received/1min" in seen
    assert "$SYS/broker/subscriptions/count" in seen
    assert "$SYS/broker/publish/messages/dropped" in seen
    alice.publish("$SYS/broker/uptime", b"forged", qos=1)  # clients cannot publish into $SYS
    assert all(not m.topic.startswith("$SYS") for m in collect(alice, 1.5))
    assert all(m.payload != b"forged" for m in collect(ops, 1.5))

    root = connect(broker.port, "root", "pw", client_id="root-1")
    assert root.subscribe("$SYS/broker/clients/connected") == [0]
    first = root.receive(timeout=5)  # the retained value at once, no need to wait for the next round
    assert first.topic == "$SYS/broker/clients/connected" and first.retain
    expect(lambda: any(m.payload == b"3" for m in collect(root, 0.5)), timeout=10)
    for c in (alice, ops, root):
        c.close()


def test_revoking_the_sys_grant_stops_delivery(metrics_broker, add_user, rds, prefix):
    add_user("ops", "pw")
    rds.hset(f"{prefix}acl:user:ops", "$SYS/#", "read")
    broker = metrics_broker(sys_interval="1s")
    ops = connect(broker.port, "ops", "pw", client_id="ops-1")
    assert ops.subscribe("$SYS/broker/uptime") == [0]
    ops.receive(timeout=5)
    rds.hdel(f"{prefix}acl:user:ops", "$SYS/#")
    time.sleep(0.5)
    collect(ops, 0.5)  # whatever was already on its way
    assert collect(ops, 2.5) == []
    ops.close()


def test_sys_topics_are_published_by_a_plain_broker_and_sys_interval_0_turns_them_off(
    start_broker, add_user, rds, prefix, tmp_path
):
    add_user("ops", "pw")
    rds.hset(f"{prefix}acl:user:ops", "$SYS/#", "read")
    plain = start_broker()  # no config file at all: $SYS is on, as in mosquitto
    ops = connect(plain.port, "ops", "pw", client_id="ops-1")
    assert ops.subscribe("$SYS/broker/version") == [0]
    assert ops.receive(timeout=15).payload.startswith(b"mqtt-guard version ")
    ops.close()
    off = tmp_path / "off.yaml"
    off.write_text("metrics:\n  sys_interval: 0\n")
    quiet = start_broker("-c", str(off))
    ops = connect(quiet.port, "ops", "pw", client_id="ops-2")
    assert ops.subscribe("$SYS/#") == [0]
    assert collect(ops, 1.5) == []
    ops.close()
