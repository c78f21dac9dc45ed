"""ACLs from Redis enforced by a running broker, with real clients, and edits that apply at once."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.helpers.mqtt import connect
from tests.helpers.wait import until

SUBACK_FAILURE = 128


def redis_cli(redis_server, prefix, *args: str) -> str:
    """Edit Redis exactly as an admin would: with the redis-cli binary."""
    out = subprocess.run(
        ["redis-cli", "-p", str(redis_server.port), *args], capture_output=True, text=True, check=True, timeout=10
    )
    return out.stdout.strip()


@pytest.fixture
def world(start_broker, add_user, rds, prefix):
    add_user("alice", "pw-a")
    add_user("bob", "pw-b")
    add_user("root", "pw-r", "--superuser")
    rds.hset(
        f"{prefix}acl:user:alice",
        mapping={"sensors/alice/#": "readwrite", "sensors/alice/secret": "deny-read", "public/#": "read"},
    )
    rds.hset(f"{prefix}acl:user:bob", mapping={"public/#": "readwrite", "sensors/#": "write"})
    return start_broker()


def test_denied_filter_gets_0x80_and_the_others_in_the_packet_succeed(world):
    alice = connect(world.port, "alice", "pw-a")
    assert alice.subscribe(("sensors/alice/#", 1), ("sensors/bob/#", 0), ("public/news", 1)) == [1, SUBACK_FAILURE, 1]
    alice.close()


def test_denied_publish_is_acknowledged_but_not_delivered(world):
    root = connect(world.port, "root", "pw-r")
    root.subscribe("#")
    alice = connect(world.port, "alice", "pw-a")
    alice.publish("public/x", b"nope", qos=1)  # alice may only read public/#: PUBACK still comes
    alice.publish("sensors/alice/t", b"ok", qos=1)
    assert [m.payload for m in root.received(1.0)] == [b"ok"]
    assert not alice.disconnected.is_set()
    world.wait_log("denied PUBLISH of client")
    alice.close()
    root.close()


def test_wildcard_subscriber_only_receives_what_it_may_read(world, add_user, rds, prefix):
    rds.hset(f"{prefix}acl:user:alice", "sensors/#", "subscribe")  # may subscribe broadly, read only its own
    alice = connect(world.port, "alice", "pw-a")
    assert alice.subscribe("sensors/#") == [0]
    bob = connect(world.port, "bob", "pw-b")
    for topic in ("sensors/bob/t", "sensors/alice/t", "sensors/alice/secret", "sensors/carol/x"):
        bob.publish(topic, topic.encode(), qos=1)
    assert [m.topic for m in alice.received(1.0)] == ["sensors/alice/t"]
    # what was withheld is in the broker log (a line a minute per client and filter), not only in `stats`
    log = world.wait_log("(user 'alice', subscribed to 'sensors/#'): no receive permission for it")
    assert "withheld a message on 'sensors/bob/t' from client" in log
    assert log.count("(user 'alice', subscribed to") == 1  # the filter's other withheld topics: held back
    alice.close()
    bob.close()


def test_retained_messages_obey_receive_rules(world):
    bob = connect(world.port, "bob", "pw-b")
    root = connect(world.port, "root", "pw-r")
    root.publish("sensors/alice/secret", b"s", qos=1, retain=True)
    root.publish("sensors/alice/temp", b"21", qos=1, retain=True)
    root.publish("public/motd", b"hi", qos=1, retain=True)
    time.sleep(0.2)
    # A client that connects and subscribes to nothing gets nothing (amqtt sent all matching retained).
    idle = connect(world.port, "alice", "pw-a")
    assert idle.received(0.7) == []
    assert idle.subscribe("sensors/alice/#", "public/#") == [0, 0]
    got = {(m.topic, m.retain) for m in idle.received(1.0)}
    assert got == {("sensors/alice/temp", True), ("public/motd", True)}
    for c in (idle, bob, root):
        c.close()


def test_raw_redis_cli_edit_applies_to_connected_clients_at_once(world, redis_server, prefix):
    alice = connect(world.port, "alice", "pw-a")
    alice.subscribe("public/#")
    bob = connect(world.port, "bob", "pw-b")
    bob.publish("public/a", b"1")
    assert alice.receive().payload == b"1"

    # Revoke read: the existing subscription stops delivering, no reconnect.
    redis_cli(redis_server, prefix, "HSET", f"{prefix}acl:user:alice", "public/#", "deny-read")

    def delivered_after_revoke():
        bob.publish("public/a", b"2")
        return alice.received(0.1) == []

    assert until(delivered_after_revoke)
    assert alice.received(0.5) == []

    # Grant publish to a new topic: bob's very next publish there goes through.
    redis_cli(redis_server, prefix, "HDEL", f"{prefix}acl:user:alice", "public/#")
    redis_cli(redis_server, prefix, "HSET", f"{prefix}acl:user:alice", "public/#", "read")
    root = connect(world.port, "root", "pw-r")
    root.subscribe("news/#")
    assert bob.received(0.1) == []
    bob.publish("news/x", b"denied")
    redis_cli(redis_server, prefix, "HSET", f"{prefix}acl:user:bob", "news/#", "write")

    def bob_can_publish():
        bob.publish("news/x", b"allowed")
        return any(m.payload == b"allowed" for m in root.received(0.1))

    assert until(bob_can_publish)
    for c in (alice, bob, root):
        c.close()


def test_group_membership_change_applies_without_reconnect(world, cli, rds, prefix):
    rds.hset(f"{prefix}acl:group:ops", "ops/#", "readwrite")
    alice = connect(world.port, "alice", "pw-a")
    assert alice.subscribe("ops/#") == [SUBACK_FAILURE]
    assert cli("group", "add-user", "ops", "alice").returncode == 0
    assert until(lambda: alice.subscribe("ops/#") == [0])
    assert cli("group", "del-user", "ops", "alice").returncode == 0
    assert until(lambda: alice.subscribe("ops/y") == [SUBACK_FAILURE])
    alice.close()


def test_pattern_rules_substitute_whole_levels_and_resist_wildcard_usernames(start_broker, add_user, rds, prefix):
    rds.hset(f"{prefix}acl:pattern", mapping={"devices/%u/#": "readwrite", "clients/%c": "write"})
    add_user("d1", "pw")
    add_user("+", "pw")
    add_user("a/#", "pw")
    broker = start_broker()
    d1 = connect(broker.port, "d1", "pw", client_id="cid-1")
    assert d1.subscribe("devices/d1/#", "devices/d2/#") == [0, SUBACK_FAILURE]
    watcher = connect(broker.port, "d1", "pw", client_id="watch")
    watcher.subscribe("devices/d1/#")
    d1.publish("devices/d1/state", b"own")
    assert watcher.receive().payload == b"own"
    evil_plus = connect(broker.port, "+", "pw")
    evil_hash = connect(broker.port, "a/#", "pw")
    assert evil_plus.subscribe("devices/+/#", "devices/d1/state") == [SUBACK_FAILURE, SUBACK_FAILURE]
    assert evil_hash.subscribe("devices/a/#") == [SUBACK_FAILURE]
    evil_plus.publish("devices/d1/state", b"forged")
    evil_hash.publish("devices/a/b", b"forged")
    assert watcher.received(0.7) == []
    # %c: a client id with a wildcard matches nothing either.
    tricky = connect(broker.port, "d1", "pw", client_id="x/#")
    tricky.publish("clients/x/y", b"forged")
    ok = connect(broker.port, "d1", "pw", client_id="good")
    root_watch = connect(broker.port, "d1", "pw", client_id="w2")
    rds.hset(f"{prefix}acl:user:d1", "clients/#", "read")
    assert until(lambda: root_watch.subscribe("clients/#") == [0])
    ok.publish("clients/good", b"mine")
    assert [m.payload for m in root_watch.received(0.7)] == [b"mine"]
    for c in (d1, watcher, evil_plus, evil_hash, tricky, ok, root_watch):
        c.close()


def test_malformed_rules_are_skipped_and_reported(start_broker, add_user, rds, prefix):
    rds.hset(f"{prefix}acl:user:eve", mapping={"a/#/b": "readwrite", "ok/#": "readwrite", "x/#": "fly,read", "y/#": ""})
    add_user("eve", "pw")
    broker = start_broker()
    eve = connect(broker.port, "eve", "pw")
    assert eve.subscribe("ok/1", "a/#", "x/1", "y/1") == [0, SUBACK_FAILURE, SUBACK_FAILURE, SUBACK_FAILURE]
    broker.wait_log("skipped malformed ACL rule")
    eve.close()


def test_superuser_and_dollar_topics(world):
    root = connect(world.port, "root", "pw-r")
    assert root.subscribe("$SYS/#", "#") == [0, 0]
    bob = connect(world.port, "bob", "pw-b")
    # bob's public/# rule does not reach $-topics; a '#' grant does not either.
    assert bob.subscribe("$SYS/broker/x") == [SUBACK_FAILURE]
    root.close()
    bob.close()


def test_anonymous_rules(start_broker, rds, prefix):
    rds.hset(f"{prefix}acl:anonymous", mapping={"open/#": "readwrite", "anon/%c": "write"})
    broker = start_broker("--allow-anonymous")
    a = connect(broker.port, client_id="guest")
    assert a.subscribe("open/#", "closed/#") == [0, SUBACK_FAILURE]
    a.publish("anon/guest", b"x")
    a.publish("open/t", b"y")
    assert [m.payload for m in a.received(0.7)] == [b"y"]
    a.close()


def test_deny_publish_action_disconnect(start_broker, add_user, rds, prefix, tmp_path):
    add_user("bob", "pw")
    rds.hset(f"{prefix}acl:user:bob", "ok/#", "write")
    cfg = tmp_path / "g.yaml"
    cfg.write_text("acl:\n  deny_publish_action: disconnect\n")
    broker = start_broker("--config", str(cfg))
    bob = connect(broker.port, "bob", "pw")
    bob.publish("ok/1", b"fine")
    assert not bob.disconnected.wait(0.3)
    bob.paho.publish("forbidden/1", b"x")
    assert bob.disconnected.wait(5)


def test_rules_reload_after_the_invalidation_channel_drops(world, rds, prefix):
    alice = connect(world.port, "alice", "pw-a")
    assert alice.subscribe("extra/#") == [SUBACK_FAILURE]
    rds.execute_command("CLIENT", "KILL", "TYPE", "pubsub")  # the broker's invalidation subscriber
    rds.hset(f"{prefix}acl:user:alice", "extra/#", "read")  # may happen before it is back
    assert until(lambda: alice.subscribe("extra/#") == [0])
    alice.close()
