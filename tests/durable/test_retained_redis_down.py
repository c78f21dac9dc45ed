"""Retained messages while Redis is away or refuses writes (issue 17 items 3 and 5, docs/durability.md):
a QoS 1 retained PUBLISH is not acknowledged until Redis has it; a QoS 0 one is buffered and written
when Redis is back; local subscribers are served meanwhile; a write Redis refuses is never acknowledged
as accepted (MQTT 5: PUBACK 0x80; 3.1.1: the connection is closed)."""

from __future__ import annotations

import pytest

from mqtt_guard.store.keys import Keys
from tests.helpers.mqtt import connect, retained_on
from tests.helpers.mqtt5 import V5
from tests.helpers.servers import RedisServer, free_port
from tests.helpers.wait import expect


@pytest.fixture
def own_redis():
    """A Redis of the test's own, with AOF (a restart keeps the deployment's data and its marker)."""
    server = RedisServer(persistent=True).start()
    yield server
    server.cleanup()


def test_while_redis_is_down_qos1_waits_for_its_ack_and_qos0_is_buffered(guard, own_redis, prefix):
    broker = guard("limits: {backpressure_max_stall: 120s}\n", redis_url=own_redis.url)
    keys = Keys(prefix)
    sub = connect(broker.port)
    sub.subscribe(("dev/#", 1))
    pub, pub0 = connect(broker.port), connect(broker.port)
    own_redis.stop()
    # (a publisher's packets are handled in order: its next PUBLISH waits behind the unacknowledged one)
    pending = pub.paho.publish("dev/cfg", b"qos1", qos=1, retain=True)
    pub0.publish("dev/state", b"qos0", qos=0, retain=True)
    # local subscribers are served at once, live and on SUBSCRIBE, from the broker's copy
    assert {sub.receive().payload, sub.receive().payload} == {b"qos1", b"qos0"}
    assert retained_on(broker.port, "dev/#") == {"dev/cfg": b"qos1", "dev/state": b"qos0"}
    assert not pending.is_published()  # no PUBACK: Redis does not have it
    own_redis.start()
    pending.wait_for_publish(60)  # acknowledged once written
    assert pending.is_published()
    rds = own_redis.client()
    expect(lambda: rds.exists(keys.retained("dev/cfg"), keys.retained("dev/state")) == 2, timeout=30)
    rds.close()
    pub.close()
    pub0.close()
    sub.close()


def test_a_publisher_waiting_longer_than_backpressure_max_stall_is_disconnected_unacknowledged(
    guard, own_redis, prefix
):
    broker = guard("limits: {backpressure_max_stall: 1s}\n", redis_url=own_redis.url)
    pub = connect(broker.port)
    own_redis.stop()
    pending = pub.paho.publish("dev/late", b"x", qos=1, retain=True)
    assert pub.disconnected.wait(30)
    assert not pending.is_published()
    broker.wait_log("not acknowledged: Redis did not take it within 1.0s")
    own_redis.start()  # the write still waits in the broker and lands now
    rds = own_redis.client()
    expect(lambda: rds.exists(Keys(prefix).retained("dev/late")), timeout=30)
    rds.close()


def test_a_retained_write_redis_refuses_is_not_acknowledged_as_accepted(guard, own_redis):
    broker = guard(redis_url=own_redis.url)
    v5, v3 = V5(broker.port), connect(broker.port)
    rds = own_redis.client()
    rds.config_set("maxmemory", 1)  # every write that adds memory fails with OOM
    try:
        assert v5.publish("full/a", b"x" * 1000, qos=1, retain=True) == 0x80
        v3.paho.publish("full/b", b"x" * 1000, qos=1, retain=True)
        assert v3.disconnected.wait(15)  # 3.1.1 has no negative PUBACK
        broker.wait_log("not stored in Redis")
        # the broker's copy follows what Redis holds: nothing
        assert expect(lambda: retained_on(broker.port, "full/#") == {})
    finally:
        rds.config_set("maxmemory", 0)
        rds.close()
    assert v5.publish("full/a", b"fits", qos=1, retain=True) == 0x10  # accepted (0x10: nobody subscribed)
    assert retained_on(broker.port, "full/#") == {"full/a": b"fits"}
    v5.close()


def test_persistence_true_without_redis_at_start_starts_and_persists_once_redis_answers(start_broker, prefix, tmp_path):
    """mosquitto drop-in (issue 17 item 6): file users need no Redis, so the broker starts; it says that
    state is not persisted, serves retained messages from memory, and writes them once Redis answers."""
    server = RedisServer(persistent=True)  # not started yet
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n")
    broker = start_broker("-c", str(conf), bind=False, wait_for_port=port, redis_url=server.url)
    try:
        broker.wait_log("durable state is NOT persisted")
        assert "ERROR" in next(line for line in broker.log().splitlines() if "NOT persisted" in line)
        pub = connect(port)
        pub.publish("boot/state", b"up", qos=0, retain=True)
        assert retained_on(port, "boot/#") == {"boot/state": b"up"}
        server.start()
        rds = server.client()
        expect(lambda: rds.exists(Keys(prefix).retained("boot/state")), timeout=30)
        rds.close()
        pub.close()
    finally:
        server.cleanup()


def test_qos0_retained_beyond_buffer_limit_is_counted_and_logged_as_lost(guard, own_redis, prefix):
    broker = guard("durable: {buffer_limit: 2}\n", redis_url=own_redis.url)
    keys = Keys(prefix)
    pub = connect(broker.port)
    own_redis.stop()
    for i in range(5):
        pub.publish(f"lossy/{i}", f"v{i}".encode(), qos=0, retain=True)
    every = {f"lossy/{i}": f"v{i}".encode() for i in range(5)}
    assert expect(lambda: retained_on(broker.port, "lossy/#") == every)  # served from memory
    broker.wait_log("durable-state write(s) lost")
    own_redis.start()
    rds = own_redis.client()
    # the newest two were held and written; the three oldest are counted as lost
    expect(lambda: rds.exists(keys.retained("lossy/3"), keys.retained("lossy/4")) == 2, timeout=30)
    assert not rds.exists(keys.retained("lossy/0"), keys.retained("lossy/1"), keys.retained("lossy/2"))
    expect(lambda: rds.hget(f"{prefix}stats:total", "durable_writes_lost") == "3", timeout=30)
    rds.close()
    pub.close()
