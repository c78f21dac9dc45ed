"""Real traffic through a real broker process; exact counts in Redis, in the /metrics scrape and in
`mqtt-guard stats --json`; the burst in the right rate bucket; counts across restarts and brokers."""

from __future__ import annotations

import time

from mqtt_guard.metrics.rates import bucket_start
from tests.helpers.mqtt import CONNACK_NOT_AUTHORIZED, connect
from tests.helpers.wait import expect
from tests.metrics.conftest import cli_json, metric, scrape

PAYLOAD = b"12345"


def grant(rds, prefix, user, *filters):
    for f in filters:
        rds.hset(f"{prefix}acl:user:{user}", f, "readwrite")


def stats_hash(rds, prefix, kind, ident):
    return rds.hgetall(f"{prefix}stats:{kind}:{ident}")


def field(h: dict, name: str) -> int:
    return int(h.get(name, 0))


def test_published_delivered_denied_and_refused_counts_are_exact_everywhere(metrics_broker, add_user, rds, prefix, cli):
    add_user("alice", "alice-pw")
    add_user("bob", "bob-pw")
    grant(rds, prefix, "alice", "a/#")
    grant(rds, prefix, "bob", "a/#")
    assert cli("quota", "set", "alice", "--events", "1000/1d").returncode == 0  # far from reached
    broker = metrics_broker(per_client_allowlist=["alice-*"])
    bob = connect(broker.port, "bob", "bob-pw", client_id="bob-1")
    assert bob.subscribe(("a/#", 1)) == [1]
    alice = connect(broker.port, "alice", "alice-pw", client_id="alice-1")
    published, denied, delivered = 7, 3, 7
    for _ in range(published):
        alice.publish("a/t", PAYLOAD, qos=1)
    for _ in range(denied):
        alice.publish("b/secret", PAYLOAD, qos=1)  # acknowledged, dropped, counted
    got = [bob.receive() for _ in range(delivered)]
    assert {m.topic for m in got} == {"a/t"} and bob.received(0.3) == []
    assert connect(broker.port, "alice", "wrong", client_id="alice-x").rc == CONNACK_NOT_AUTHORIZED
    assert connect(broker.port, "mallory", "x", client_id="m-1").rc == CONNACK_NOT_AUTHORIZED

    expect(
        lambda: (
            field(stats_hash(rds, prefix, "client", "alice-1"), "messages_in") == published + denied
            and field(stats_hash(rds, prefix, "client", "bob-1"), "messages_out") == delivered
            and field(rds.hgetall(f"{prefix}stats:total"), "auth_failed_unknown_user") == 1
        )
    )
    a = stats_hash(rds, prefix, "client", "alice-1")
    assert {
        n: field(a, n) for n in ("messages_in", "bytes_in", "publish_denied", "over_quota", "messages_out", "connects")
    } == {"messages_in": 10, "bytes_in": 50, "publish_denied": 3, "over_quota": 0, "messages_out": 0, "connects": 1}
    assert a["username"] == "alice" and a["connected"] == "1" and a["queue_depth"] == "0"
    b = stats_hash(rds, prefix, "client", "bob-1")
    assert (field(b, "messages_out"), field(b, "bytes_out"), field(b, "messages_in")) == (7, 35, 0)
    assert not rds.exists(f"{prefix}stats:client:alice-x")  # refused: counted for the user, never per client id
    u = stats_hash(rds, prefix, "user", "alice")
    assert (field(u, "messages_in"), field(u, "publish_denied"), field(u, "auth_failed_bad_password")) == (10, 3, 1)
    total = rds.hgetall(f"{prefix}stats:total")
    assert {
        n: field(total, n)
        for n in (
            "messages_in",
            "messages_out",
            "publish_denied",
            "auth_failed_bad_password",
            "auth_failed_unknown_user",
            "connects",
        )
    } == {
        "messages_in": 10,
        "messages_out": 7,
        "publish_denied": 3,
        "auth_failed_bad_password": 1,
        "auth_failed_unknown_user": 1,
        "connects": 2,
    }
    assert not rds.exists(f"{prefix}stats:user:mallory") and not rds.exists(f"{prefix}stats:client:m-1")

    m = scrape(broker.metrics_port)
    assert metric(m, "mqtt_guard_messages_received_total") == 10
    assert metric(m, "mqtt_guard_messages_sent_total") == 7
    assert metric(m, "mqtt_guard_bytes_received_total") == 50
    assert metric(m, "mqtt_guard_publish_errors_total", reason="acl_denied") == 3
    assert metric(m, "mqtt_guard_publish_errors_total", reason="over_quota") == 0
    assert metric(m, "mqtt_guard_auth_failures_total", reason="bad_password") == 1
    assert metric(m, "mqtt_guard_auth_failures_total", reason="unknown_user") == 1
    assert metric(m, "mqtt_guard_clients_connected") == 2
    assert metric(m, "mqtt_guard_redis_up") == 1
    assert metric(m, "mqtt_guard_client_messages_received_total", client_id="alice-1", username="alice") == 10
    assert (
        metric(m, "mqtt_guard_client_publish_errors_total", client_id="alice-1", username="alice", reason="acl_denied")
        == 3
    )
    assert not any(labels and dict(labels).get("client_id") == "bob-1" for _, labels in m)  # not allow-listed
    brokers = rds.zrange(f"{prefix}stats:brokers", 0, -1)
    assert len(brokers) == 1
    assert metric(m, "mqtt_guard_broker_last_heartbeat_timestamp_seconds", broker=brokers[0]) > time.time() - 60

    s = cli_json(cli, "stats", "alice-1", "--json")
    assert s["kind"] == "client" and s["username"] == "alice" and s["connected"] is True
    assert s["counters"]["messages_in"] == 10 and s["counters"]["bytes_in"] == 50
    assert s["publish_errors"] == {"acl_denied": 3, "over_quota": 0, "too_large": 0, "queue_full": 0}
    assert s["quota"]["metrics"]["events"]["limit"] == 1000 and s["quota"]["percent"] < 100
    assert sum(s["rate"]["messages_in"]) == 10 and len(s["rate"]["messages_in"]) == 360
    assert s["rate"]["sparkline"].strip()
    user = cli_json(cli, "stats", "alice", "--json")
    assert user["kind"] == "user"
    assert (user["counters"]["messages_in"], user["auth_failures"]) == (10, {"bad_password": 1})
    bob_stats = cli_json(cli, "stats", "bob", "--json")
    assert bob_stats["counters"]["messages_out"] == 7 and "quota" not in bob_stats  # bob has no limits
    alice.close()
    bob.close()
    expect(lambda: stats_hash(rds, prefix, "client", "alice-1").get("connected") == "0")


def test_over_quota_publishes_are_counted_exactly(metrics_broker, add_user, rds, prefix, cli):
    add_user("alice", "pw")
    add_user("bob", "pw")
    grant(rds, prefix, "alice", "a/#")
    grant(rds, prefix, "bob", "a/#")
    quota = cli("quota", "set", "alice", "--events", "5/1d", "--events-direction", "in")
    assert quota.returncode == 0, quota.stderr
    broker = metrics_broker()
    bob = connect(broker.port, "bob", "pw", client_id="bob-q")
    assert bob.subscribe(("a/#", 1)) == [1]
    alice = connect(broker.port, "alice", "pw", client_id="alice-q")
    for _ in range(7):  # alice may publish 5 a day: 2 are refused over quota
        alice.publish("a/t", PAYLOAD, qos=1)
    assert len([bob.receive() for _ in range(5)]) == 5 and bob.received(0.3) == []
    expect(
        lambda: (
            field(stats_hash(rds, prefix, "client", "alice-q"), "messages_in") == 7
            and field(stats_hash(rds, prefix, "client", "bob-q"), "messages_out") == 5
        )
    )
    assert field(stats_hash(rds, prefix, "client", "alice-q"), "over_quota") == 2
    assert field(stats_hash(rds, prefix, "user", "alice"), "over_quota") == 2
    assert metric(scrape(broker.metrics_port), "mqtt_guard_publish_errors_total", reason="over_quota") == 2
    s = cli_json(cli, "stats", "alice-q", "--json")
    assert s["publish_errors"]["over_quota"] == 2
    # the quota module reports usage to Redis on its own schedule
    s = expect(
        lambda: (lambda d: d if d["quota"]["metrics"]["events"]["used"] == 5 else None)(
            cli_json(cli, "stats", "alice-q", "--json")
        ),
        timeout=20,
        interval=0.5,
    )
    assert s["quota"]["percent"] == 100
    top = cli_json(cli, "top", "--json")
    assert {r["id"]: r["errors"]["over_quota"] for r in top["rows"]}["alice-q"] == 2
    alice.close()
    bob.close()


def test_a_burst_lands_in_the_right_10s_bucket(metrics_broker, add_user, rds, prefix, cli):
    add_user("alice", "pw")
    grant(rds, prefix, "alice", "a/#")
    broker = metrics_broker()
    alice = connect(broker.port, "alice", "pw", client_id="burst-1")
    for _ in range(3):  # start well inside a bucket, so the whole burst falls into it
        expect(lambda: 1.0 <= time.time() % 10 <= 6.0, timeout=11)
        t_start = time.time()
        for _ in range(20):
            alice.publish("a/burst", PAYLOAD, qos=1)
        t_end = time.time()
        if bucket_start(t_start, 10) == bucket_start(t_end, 10):
            break
    else:
        raise AssertionError("could not fit a burst into one 10 s bucket")
    bucket = bucket_start(t_start, 10)
    expect(lambda: rds.zscore(f"{prefix}stats:rate:10s:client:in:{bucket}", "burst-1") == 20)
    s = cli_json(cli, "stats", "burst-1", "--json")
    rate = s["rate"]
    i = (bucket - rate["start"]) // rate["resolution_seconds"]
    assert rate["messages_in"][i] == 20
    assert sum(rate["messages_in"]) == 20  # and in no other bucket
    assert rds.zscore(f"{prefix}stats:rate:1m:client:in:{bucket_start(t_start, 60)}", "burst-1") == 20
    assert rds.zscore(f"{prefix}stats:rate:10s:user:in:{bucket}", "alice") == 20
    assert 3500 < rds.ttl(f"{prefix}stats:rate:10s:client:in:{bucket}") <= 3610
    alice.close()


def test_counts_add_up_across_two_brokers_and_a_restart(
    metrics_broker, start_broker, add_user, rds, prefix, cli, tmp_path
):
    add_user("dev", "pw")
    grant(rds, prefix, "dev", "a/#")
    one = metrics_broker()
    two = metrics_broker()

    def publish_from(broker, n):
        c = connect(broker.port, "dev", "pw", client_id="dev-1")
        for _ in range(n):
            c.publish("a/x", PAYLOAD, qos=1)
        c.close()

    publish_from(one, 5)
    publish_from(two, 4)
    expect(lambda: field(stats_hash(rds, prefix, "client", "dev-1"), "messages_in") == 9)
    assert one.stop() == 0  # SIGTERM: the last counts are flushed before exit
    restarted = start_broker("-c", str(tmp_path / "broker1.yaml"), port=one.port)  # same port: same broker id
    publish_from(restarted, 2)
    expect(lambda: field(stats_hash(rds, prefix, "client", "dev-1"), "messages_in") == 11)
    ids = sorted(rds.zrange(f"{prefix}stats:brokers", 0, -1))
    assert len(ids) == 2
    per_broker = {b: field(rds.hgetall(f"{prefix}stats:broker:{b}"), "messages_in") for b in ids}
    assert sorted(per_broker.values()) == [4, 7]  # broker one: 5 before and 2 after its restart
    assert field(rds.hgetall(f"{prefix}stats:total"), "messages_in") == 11
    assert field(stats_hash(rds, prefix, "user", "dev"), "connects") == 3
    top = cli_json(cli, "top", "--json")
    assert {b["id"] for b in top["brokers"]} == set(ids)
    assert top["rows"][0]["id"] == "dev-1" and top["rows"][0]["messages_in"] == 11


def test_kicks_are_counted_by_reason(metrics_broker, add_user, rds, prefix, cli):
    add_user("alice", "pw")
    add_user("bob", "pw")
    broker = metrics_broker()
    c = connect(broker.port, "alice", "pw", client_id="k-1")
    assert cli("user", "disable", "alice").returncode == 0
    assert c.disconnected.wait(5)
    expect(
        lambda: (
            field(stats_hash(rds, prefix, "client", "k-1"), "kicked_user_disabled") == 1
            and stats_hash(rds, prefix, "client", "k-1").get("connected") == "0"
        )
    )
    b = connect(broker.port, "bob", "pw", client_id="k-2")
    kick = cli("kick", "k-2", "--block", "10m")
    assert kick.returncode == 0, kick.stderr
    assert b.disconnected.wait(5)
    expect(lambda: field(stats_hash(rds, prefix, "client", "k-2"), "kicked_admin") == 1)
    assert connect(broker.port, "bob", "pw", client_id="k-2").rc == CONNACK_NOT_AUTHORIZED  # blocked
    expect(lambda: field(stats_hash(rds, prefix, "user", "bob"), "auth_failed_blocked") == 1)
    m = scrape(broker.metrics_port)
    assert metric(m, "mqtt_guard_kicks_total", reason="user_disabled") == 1
    assert metric(m, "mqtt_guard_kicks_total", reason="admin") == 1
    assert metric(m, "mqtt_guard_kicks_total", reason="other") == 0
    assert metric(m, "mqtt_guard_auth_failures_total", reason="blocked") == 1
    assert metric(m, "mqtt_guard_auth_failures_total", reason="bad_password") == 0  # present before the first
    assert cli_json(cli, "stats", "k-1", "--json")["kicks"] == {"user_disabled": 1}
    assert field(rds.hgetall(f"{prefix}stats:user:bob"), "kicked_admin") == 1
