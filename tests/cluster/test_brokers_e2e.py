"""Several broker processes on one real redis-server behave as one for live messages (issue 18 items 1, 2
and 4; docs/scaling.md): a PUBLISH on one broker reaches the subscribers on the others, once, in order,
with each receiver's ACL and MQTT 5 options applied where it is; retained messages and wills too; QoS 1
survives the receiving broker's Redis connection being cut; `--workers 2` on one port is one broker.

Each test first waits until the publishing broker routes to the subscribing one (`routed`): a filter
reaches the other brokers one Redis round trip after its SUBSCRIBE, so a probe subscribed after the
subscriptions under test is routed only once they are."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from mqtt_guard.store.keys import Keys
from tests.helpers import mqtt5 as m5
from tests.helpers.http import http_get
from tests.helpers.mqtt import connect
from tests.helpers.servers import BrokerProcess, free_port
from tests.helpers.wait import expect

OPEN = "auth:\n  allow_anonymous: true\nacl:\n  default: allow\n"


def routed(pub_port: int, sub_port: int, timeout: float = 20.0) -> None:
    """Wait until a message published on the broker at `pub_port` reaches a subscriber on the broker at
    `sub_port` that subscribed now (so every subscription made there before is routed too)."""
    topic = f"probe/{uuid.uuid4().hex[:8]}"
    probe = connect(sub_port)
    probe.subscribe((topic, 0))
    pub = connect(pub_port)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pub.publish(topic, b"probe")
            if probe.received(0.2):
                return
        raise AssertionError(f"broker :{pub_port} never routed {topic!r} to broker :{sub_port}")
    finally:
        probe.close()
        pub.close()


@pytest.fixture
def two(start_broker, tmp_path):
    """Two brokers anyone may use fully, on one Redis and one prefix: (A, B)."""

    def start(extra: str = "") -> tuple[BrokerProcess, BrokerProcess]:
        config = tmp_path / "open.yaml"
        config.write_text(OPEN + extra)
        return start_broker("--config", str(config)), start_broker("--config", str(config))

    return start


def test_a_publish_on_one_broker_reaches_the_subscribers_on_the_other_once_at_their_qos(two):
    a, b = two()
    wild = connect(b.port)
    assert wild.subscribe(("fleet/+/cmd", 2), ("fleet/#", 1)) == [2, 1]  # overlapping: one copy, at QoS 2
    low = connect(b.port)
    assert low.subscribe(("fleet/#", 0)) == [0]
    everything = connect(b.port)
    assert everything.subscribe(("#", 2)) == [2]
    local = connect(a.port)
    assert local.subscribe(("fleet/#", 2)) == [2]
    routed(a.port, b.port)
    pub = connect(a.port)
    for qos in (0, 1, 2):
        pub.publish(f"fleet/d{qos}/cmd", b"q%d" % qos, qos=qos)
    pub.publish("$SYS/fleet/x", b"dollar", qos=1)  # a filter starting with a wildcard never matches $ topics
    want = [b"q0", b"q1", b"q2"]
    for client, qos_of in ((wild, [0, 1, 2]), (low, [0, 0, 0]), (local, [0, 1, 2])):
        got = client.received(1.5)
        assert [m.payload for m in got] == want  # once each, though two filters match for `wild`
        assert [m.qos for m in got] == qos_of
    got = [m for m in everything.received(0.5) if not m.topic.startswith("probe/")]
    assert [m.payload for m in got] == want  # nothing on $SYS/...
    for c in (wild, low, everything, local, pub):
        c.close()


def test_order_per_publisher_is_kept_across_brokers(two):
    a, b = two()
    sub = connect(b.port)
    sub.subscribe(("seq/#", 1))
    routed(a.port, b.port)
    pub = connect(a.port)
    n = 1000
    for i in range(n):
        pub.paho.publish("seq/t", b"%d" % i, qos=1)
    got = [sub.receive(20).payload for _ in range(n)]
    assert got == [b"%d" % i for i in range(n)]
    assert not sub.received(0.5)  # and nothing twice
    pub.close()
    sub.close()


def test_mqtt5_properties_and_no_local_across_brokers(two):
    a, b = two()
    far = m5.V5(b.port)
    far.subscribe("nl/#", 1, no_local=True, sub_id=7)
    far.subscribe("far/only", 1)
    me = m5.V5(a.port)  # No Local on its own broker: its own messages come back from nowhere
    me.subscribe("nl/#", 1, no_local=True)
    routed(a.port, b.port)
    routed(b.port, a.port)
    props = m5.publish_properties(ContentType="text/plain", UserProperty=[("k", "v")], MessageExpiryInterval=300)
    assert me.publish("nl/x", b"hello", qos=1, props=props) == 0
    msg = far.receive(5)
    assert msg.payload == b"hello" and msg.qos == 1
    assert msg.prop("ContentType") == "text/plain"
    assert msg.prop("UserProperty") == [("k", "v")]
    assert msg.prop("SubscriptionIdentifier") == [7]  # the receiving broker's subscription, not the sender's
    assert 0 < msg.prop("MessageExpiryInterval") <= 300
    assert not me.received(1.0)  # not sent back to its publisher by the other broker either
    assert not far.received(0.2)
    # matched only on the other broker: a subscriber matched it, so no PUBACK 0x10 No matching subscribers
    assert me.publish("far/only", b"z", qos=1) == 0
    assert far.receive(5).payload == b"z"
    assert me.publish("nobody/here", b"z", qos=1) == 0x10
    far.close()
    me.close()


def test_a_subscriber_denied_receive_on_its_broker_gets_nothing(start_broker, add_user, rds, prefix, tmp_path):
    config = tmp_path / "deny.yaml"
    config.write_text("acl:\n  default: deny\n")
    a = start_broker("--config", str(config))
    b = start_broker("--config", str(config))
    for user in ("alice", "bob", "probe"):
        add_user(user, "pw")
    rds.hset(f"{prefix}acl:user:alice", mapping={"data/#": "subscribe", "data/alice/#": "read"})
    rds.hset(f"{prefix}acl:user:bob", "data/#", "readwrite")
    rds.hset(f"{prefix}acl:user:probe", "#", "readwrite")
    alice = connect(b.port, "alice", "pw")
    assert alice.subscribe(("data/#", 1)) == [1]
    bob_b = connect(b.port, "bob", "pw")
    bob_b.subscribe(("data/#", 1))
    routed_as(a.port, b.port, "probe")
    bob = connect(a.port, "bob", "pw")
    bob.publish("data/bob/t", b"secret", qos=1)
    bob.publish("data/alice/t", b"hers", qos=1)
    assert [m.payload for m in bob_b.received(1.5)] == [b"secret", b"hers"]
    assert [m.payload for m in alice.received(0.5)] == [b"hers"]  # RECEIVE checked where alice is
    b.wait_log("withheld a message on 'data/bob/t' from client")
    for c in (alice, bob_b, bob):
        c.close()


def routed_as(pub_port: int, sub_port: int, user: str) -> None:
    """`routed` for brokers that refuse anonymous clients."""
    topic = f"probe/{uuid.uuid4().hex[:8]}"
    probe = connect(sub_port, user, "pw")
    probe.subscribe((topic, 0))
    pub = connect(pub_port, user, "pw")
    try:
        expect(lambda: pub.publish(topic, b"p") or probe.received(0.2), timeout=20)
    finally:
        probe.close()
        pub.close()


def test_retained_messages_and_wills_published_on_one_broker_reach_the_others_live(two):
    a, b = two()
    v3 = connect(b.port)
    v3.subscribe(("state/#", 1), ("will/#", 1))
    rap = m5.V5(b.port)
    rap.subscribe("state/#", 1, retain_as_published=True)
    routed(a.port, b.port)
    pub = connect(a.port)
    pub.publish("state/lamp", b"on", qos=1, retain=True)
    live = v3.receive(5)
    assert (live.topic, live.payload, live.retain) == ("state/lamp", b"on", False)  # a live delivery
    kept = rap.receive(5)
    assert (kept.payload, kept.retain) == (b"on", True)  # Retain As Published
    # stored once (by A, in Redis): a later subscriber on B finds it there as a retained message
    late = expect(lambda: _retained(b.port, "state/#"), timeout=10)
    assert late == {"state/lamp": b"on"}
    dying = connect(a.port, will=("will/dev1", b"gone"))
    dying.paho.socket().close()  # a connection lost without DISCONNECT: the will goes out
    msg = v3.receive(10)
    assert (msg.topic, msg.payload) == ("will/dev1", b"gone")
    assert not v3.received(0.5)
    for c in (v3, rap, pub):
        c.close()


def _retained(port: int, topic_filter: str) -> dict[str, bytes]:
    c = connect(port)
    try:
        c.subscribe((topic_filter, 1))
        return {m.topic: m.payload for m in c.received(0.5) if m.retain}
    finally:
        c.close()


def test_qos1_between_brokers_survives_the_receivers_redis_connection_being_killed(two, rds, prefix):
    a, b = two()
    sub = connect(b.port, client_id="survivor")
    sub.subscribe(("cut/#", 1))
    routed(a.port, b.port)
    owner = rds.hget(Keys(prefix).session("survivor"), "broker")
    assert owner
    name = f"mqg-cluster-in-{owner}"
    stop = threading.Event()
    kills = []

    def killer() -> None:
        until = time.monotonic() + 3.0
        while time.monotonic() < until and not stop.is_set():
            for client in rds.client_list():
                if client.get("name") == name:
                    rds.client_kill_filter(_id=client["id"])
                    kills.append(client["id"])
            time.sleep(0.3)

    t = threading.Thread(target=killer)
    t.start()
    pub = connect(a.port)
    n = 1000
    for i in range(n):
        pub.paho.publish("cut/t", b"%d" % i, qos=1)
        if i % 100 == 0:
            time.sleep(0.3)  # spread over the ~3 s of cuts
    got = [sub.receive(30).payload for _ in range(n)]
    stop.set()
    t.join()
    assert kills  # the inbox connection was cut at least once
    assert got == [b"%d" % i for i in range(n)]  # every one, once, in order
    assert not sub.received(0.5)
    pub.close()
    sub.close()


def test_two_workers_on_one_port_deliver_between_their_clients(redis_server, prefix, tmp_path, rds):
    from tests.test_workers import Supervised

    broker = Supervised(redis_server.url, prefix, tmp_path, 2, OPEN)
    try:
        expect(broker.ready, timeout=60)
        keys = Keys(prefix)
        subs = [connect(broker.port, client_id=f"s-{i}") for i in range(8)]
        for s in subs:
            s.subscribe(("w/#", 1))
        pubs = [connect(broker.port, client_id=f"p-{i}") for i in range(8)]
        owner = {
            c: rds.hget(keys.session(c), "broker") for c in [f"s-{i}" for i in range(8)] + [f"p-{i}" for i in range(8)]
        }
        assert len({owner[f"s-{i}"] for i in range(8)}) == 2 and len({owner[f"p-{i}"] for i in range(8)}) == 2

        # until every subscriber gets a probe of every publisher (routes between workers are up)
        def all_met() -> bool:
            for i, p in enumerate(pubs):
                p.publish(f"w/probe/{i}", b"p", qos=1)
            seen = [{m.topic for m in s.received(0.3)} for s in subs]
            return all(len(s) == len(pubs) for s in seen)

        expect(all_met, timeout=30)
        for s in subs:
            s.received(0.3)
        for i, p in enumerate(pubs):
            p.publish(f"w/real/{i}", b"r%d" % i, qos=1)
        for s in subs:
            got = sorted(m.payload for m in s.received(1.0))
            assert got == sorted(b"r%d" % i for i in range(8))  # from both workers, each once
        for c in subs + pubs:
            c.close()
        assert broker.stop() == 0
        assert "not routed between workers" not in broker.log()
    finally:
        if broker.proc.poll() is None:
            broker.proc.kill()
            broker.proc.wait()


def test_the_routing_counters_are_on_each_brokers_metrics(start_broker, tmp_path):
    ports = [free_port(), free_port()]
    brokers = []
    for i, port in enumerate(ports):
        config = tmp_path / f"m{i}.yaml"
        config.write_text(OPEN + f"metrics:\n  prometheus_bind: 127.0.0.1:{port}\n")
        brokers.append(start_broker("--config", str(config)))
    a, b = brokers
    sub = connect(b.port)
    sub.subscribe(("m/#", 1))
    routed(a.port, b.port)
    pub = connect(a.port)
    for i in range(10):
        pub.publish("m/t", b"%d" % i, qos=1)
    assert len(sub.received(1.0)) == 10

    def metric(port: int, name: str) -> float:
        body = http_get(port, "/metrics")[2]
        return float(next(line.split()[1] for line in body.splitlines() if line.startswith(f"mqtt_guard_{name} ")))

    assert expect(lambda: metric(ports[0], "cluster_forwarded") >= 10)
    assert metric(ports[1], "cluster_received") >= 10
    assert metric(ports[0], "cluster_brokers") == 1 and metric(ports[0], "cluster_remote_filters") >= 1
    sub.close()
    pub.close()
