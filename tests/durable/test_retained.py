"""Retained messages in Redis (issue 17 item 1, docs/durability.md), end to end: real broker processes
on one real redis-server, paho clients. A retained message set at one broker is served by every broker
on the same Redis, outlives a `kill -9`, is cleared everywhere by an empty retained PUBLISH, expires
everywhere, and follows edits made with redis-cli."""

from __future__ import annotations

import signal
import time

from mqtt_guard.store.keys import Keys
from mqtt_guard.store.retained import RetainedRecord, decode, encode
from tests.helpers.mqtt import connect, retained_on
from tests.helpers.mqtt5 import V5, publish_properties
from tests.helpers.servers import free_port
from tests.helpers.wait import expect


def test_a_message_retained_at_one_broker_is_served_by_another_and_cleared_everywhere(guard):
    a, b = guard(), guard()
    pub = connect(a.port)
    pub.publish("conf/dev-1", b"v1", qos=1, retain=True)
    pub.publish("conf/dev-2", b"v2", qos=0, retain=True)
    assert expect(lambda: retained_on(b.port, "conf/#") == {"conf/dev-1": b"v1", "conf/dev-2": b"v2"})
    # a client already subscribed at B gets the live message, and B's copy follows the new value
    sub = connect(b.port)
    sub.subscribe(("conf/dev-1", 1))
    assert sub.receive().payload == b"v1"
    pub.publish("conf/dev-1", b"v1b", qos=1, retain=True)
    assert expect(lambda: retained_on(b.port, "conf/dev-1") == {"conf/dev-1": b"v1b"})
    pub.publish("conf/dev-1", b"", qos=1, retain=True)  # [MQTT-3.3.1-10]: clears it
    assert expect(lambda: retained_on(b.port, "conf/#") == {"conf/dev-2": b"v2"})
    assert retained_on(a.port, "conf/#") == {"conf/dev-2": b"v2"}
    pub.close()
    sub.close()


def test_an_acknowledged_retained_message_survives_kill_9_and_reaches_a_second_broker(guard, raw, prefix):
    a = guard()
    pub = connect(a.port)
    pub.publish("state/door", b"open", qos=1, retain=True)  # returns once the PUBACK is in
    v5 = V5(a.port)
    assert v5.publish("state/lock", b"locked", qos=2, retain=True) == 0  # PUBREC (and PUBCOMP) after the write
    pub.paho.loop_stop()
    v5.paho.loop_stop()
    a.stop(signal.SIGKILL)
    # the PUBACK came after the write: Redis has it, whatever the broker did next
    assert decode(raw.get(Keys(prefix).retained("state/door"))) == RetainedRecord(b"open", 1)
    restarted = guard(port=a.port)
    assert retained_on(restarted.port, "state/#") == {"state/door": b"open", "state/lock": b"locked"}
    other = guard()
    assert retained_on(other.port, "state/#") == {"state/door": b"open", "state/lock": b"locked"}


def test_message_expiry_holds_across_brokers(guard):
    a, b = guard(), guard()
    pub = V5(a.port)
    pub.publish("exp/short", b"soon gone", qos=1, retain=True, props=publish_properties(MessageExpiryInterval=2))
    pub.publish("exp/long", b"stays", qos=1, retain=True, props=publish_properties(MessageExpiryInterval=3600))
    sub = V5(b.port)
    sub.subscribe("exp/#", 1)
    got = {m.topic: m for m in [sub.receive(), sub.receive()]}
    assert got["exp/short"].payload == b"soon gone"
    assert 0 < got["exp/short"].prop("MessageExpiryInterval") <= 2  # the time left, forwarded
    assert 3590 <= got["exp/long"].prop("MessageExpiryInterval") <= 3600
    sub.close()
    time.sleep(2.5)  # past the 2 s expiry
    for port in (a.port, b.port):
        assert retained_on(port, "exp/#") == {"exp/long": b"stays"}
    pub.close()


def test_a_retained_message_deleted_with_redis_cli_is_gone_from_a_connected_broker(guard, rds, raw, prefix):
    a = guard()
    pub = connect(a.port)
    pub.publish("cfg/x", b"1", qos=1, retain=True)
    pub.publish("cfg/y", b"2", qos=1, retain=True)
    assert retained_on(a.port, "cfg/#", wait=0.3) == {"cfg/x": b"1", "cfg/y": b"2"}
    keys = Keys(prefix)
    assert rds.delete(keys.retained("cfg/x")) == 1
    assert expect(lambda: retained_on(a.port, "cfg/#", wait=0.3) == {"cfg/y": b"2"})
    # and one written with redis-cli (a restore, a script) is served too
    raw.set(keys.retained("cfg/z"), encode(RetainedRecord(b"from redis-cli", 0)))
    assert expect(lambda: retained_on(a.port, "cfg/#", wait=0.3) == {"cfg/y": b"2", "cfg/z": b"from redis-cli"})
    pub.close()


def test_a_corrupt_retained_key_is_skipped_with_one_log_line(guard, rds, prefix):
    keys = Keys(prefix)
    rds.hset(keys.retained("bad/hash"), "payload", "x")  # another type
    rds.set(keys.retained("bad/junk"), "not a record")
    a = guard()
    pub = connect(a.port)
    pub.publish("bad/fine", b"ok", qos=1, retain=True)
    assert retained_on(a.port, "bad/#") == {"bad/fine": b"ok"}
    log = a.wait_log("'bad/junk' skipped")
    assert "retained message of topic 'bad/hash' skipped" in log
    # a change made while the broker runs is reported too, once
    rds.lpush(keys.retained("bad/list"), "x")
    a.wait_log("'bad/list' skipped")
    rds.lpush(keys.retained("bad/list"), "y")
    assert retained_on(a.port, "bad/#") == {"bad/fine": b"ok"}
    assert a.log().count("'bad/list' skipped") == 1
    # a retained PUBLISH to the topic repairs it
    pub.publish("bad/hash", b"repaired", qos=1, retain=True)
    assert expect(lambda: retained_on(a.port, "bad/#") == {"bad/fine": b"ok", "bad/hash": b"repaired"})
    pub.close()


def test_without_durability_nothing_is_written(guard, rds, prefix):
    a = guard("durable: {enabled: false}\n")
    port = a.port
    pub = connect(port)
    pub.publish("mem/only", b"1", qos=1, retain=True)
    assert retained_on(port, "mem/#") == {"mem/only": b"1"}
    assert not rds.keys(Keys(prefix).retained("*"))
    pub.close()
    a.stop()


def test_mosquitto_conf_persistence_true_keeps_retained_messages_in_redis(start_broker, rds, prefix, tmp_path):
    keys = Keys(prefix)
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n")
    a = start_broker("-c", str(conf), bind=False, wait_for_port=port)
    pub = connect(port)
    pub.publish("m/kept", b"1", qos=1, retain=True)
    assert rds.exists(keys.retained("m/kept"))
    pub.close()
    a.stop()
    a = start_broker("-c", str(conf), bind=False, wait_for_port=port)
    assert retained_on(port, "m/#") == {"m/kept": b"1"}
    a.stop()
    # without `persistence true` (mosquitto's default: false) nothing goes to Redis
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    start_broker("-c", str(conf), bind=False, wait_for_port=port)
    pub = connect(port)
    pub.publish("m/mem", b"2", qos=1, retain=True)
    assert retained_on(port, "m/#") == {"m/mem": b"2"}
    assert not rds.exists(keys.retained("m/mem"))
    pub.close()


def test_a_retained_will_is_stored_like_a_retained_publish(guard):
    a, b = guard(), guard()
    dev = V5(a.port, will=("wills/dev-9", b"offline", 1, True))
    dev.paho.loop_stop()
    dev.paho.socket().close()  # the connection is lost: the will goes out
    assert expect(lambda: retained_on(b.port, "wills/#") == {"wills/dev-9": b"offline"})
