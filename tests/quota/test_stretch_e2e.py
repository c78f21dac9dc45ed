"""Quota accounting per read batch (mqtt_guard/quota/stretch.py) seen from outside: bursts of PUBLISH
packets sent with one `sendall`, so the broker reads them in large chunks and reserves the allowance
once per chunk instead of once per message. What a user sees must be what per-message checks give:
exact counts in Redis, exactly the limit delivered when a burst runs over it, the rate bucket honoured.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.helpers import rawmqtt as raw
from tests.helpers.wait import until

# lease_fraction 1: the broker may hold a user's whole allowance, so one broker can spend all of it and
# a burst that runs over the limit delivers exactly the limit (no SHORT refusals while a lease refills).
CONFIG = "quota:\n  sync_interval: 0.2s\n  broker_dead_after: 1.5s\n  lease_fraction: 1.0\n"
PAYLOAD = 12


@pytest.fixture
def config(tmp_path: Path) -> str:
    path = tmp_path / "stretch.yaml"
    path.write_text(CONFIG)
    return str(path)


@pytest.fixture
def root(add_user):
    add_user("root", "pw-root", "--superuser")
    return ("root", "pw-root")


def burst(topic: str, n: int, qos: int = 0) -> bytes:
    """n PUBLISHes numbered 0..n-1 (fixed-width payloads), as one buffer."""
    return b"".join(raw.publish(topic, b"%0*d" % (PAYLOAD, i), qos=qos, packet_id=(i % 65535) + 1) for i in range(n))


def receive(client: raw.RawClient, want: int, quiet: float = 1.5) -> list[int]:
    """The numbers of the PUBLISHes a subscriber gets, until `want` arrived or it is quiet for `quiet` s."""
    got = []
    while len(got) < want:
        try:
            pkt = client.read(quiet)
        except TimeoutError:
            break
        if pkt is None:
            break
        got.append(int(pkt.payload))
    if len(got) == want:  # anything beyond `want` would be a bug: look for it briefly
        extra = raw.drain(client, 0.3)
        got.extend(int(p.payload) for p in extra)
    return got


def used(rds, prefix: str, user: str, metric: str) -> int:
    start = int(time.time() // 3600 * 3600)
    return int(rds.hget(f"{prefix}quota:usage:{user}:{metric}:{start}", "used") or 0)


def wait_used(rds, prefix: str, user: str, metric: str, expected: int) -> None:
    value = 0

    def counted() -> bool:
        nonlocal value
        value = used(rds, prefix, user, metric)
        return value == expected

    assert until(counted, 5, interval=0.05), f"Redis counts {value} {metric} for {user}, expected {expected}"


def subscriber(port: int, user: tuple[str, str], client_id: str, topic: str) -> raw.RawClient:
    sub, _ = raw.connected(port, client_id, username=user[0], password=user[1], rcvbuf=1 << 22)
    sub.send(raw.subscribe(1, (topic, 0)))
    sub.expect(9)  # SUBACK
    return sub


def publisher(port: int, user: tuple[str, str], client_id: str) -> raw.RawClient:
    pub, _ = raw.connected(port, client_id, username=user[0], password=user[1])
    return pub


def test_a_burst_is_counted_exactly_in_both_directions(start_broker, add_user, cli, rds, prefix, config):
    add_user("fleet", "pw")
    rds.hset(f"{prefix}acl:user:fleet", "fleet/#", "readwrite")
    cli(
        "quota",
        "set",
        "fleet",
        "--events",
        "10000000/1h",
        "--events-direction",
        "both",
        "--bytes",
        "1GB/1h",
        "--rate",
        "1000000/s:1000000",
    )
    broker = start_broker("--config", config)
    sub = subscriber(broker.port, ("fleet", "pw"), "fleet-sub", "fleet/#")
    pub = publisher(broker.port, ("fleet", "pw"), "fleet-pub")
    n = 20_000
    pub.send(burst("fleet/t", n))
    got = receive(sub, n)
    assert got == list(range(n))  # all of them, once each, in order
    wait_used(rds, prefix, "fleet", "events", 2 * n)  # n published + n delivered: nothing more, nothing less
    wait_used(rds, prefix, "fleet", "bytes", 2 * n * PAYLOAD)
    # Redis keeps counting exactly once the broker is told the usage changed behind its back.
    assert cli("quota", "reset", "fleet").returncode == 0
    pub.send(burst("fleet/t", 1000))
    assert len(receive(sub, 1000)) == 1000
    wait_used(rds, prefix, "fleet", "events", 2000)


def test_a_burst_over_the_publish_limit_delivers_exactly_the_limit(
    start_broker, add_user, cli, rds, prefix, config, root
):
    add_user("dev", "pw")
    rds.hset(f"{prefix}acl:user:dev", "dev/#", "readwrite")
    limit = 100_000
    cli("quota", "set", "dev", "--events", f"{limit}/1h", "--events-direction", "in")
    broker = start_broker("--config", config)
    watcher = subscriber(broker.port, root, "watcher", "dev/#")
    pub = publisher(broker.port, ("dev", "pw"), "dev-1")
    time.sleep(0.5)  # the first lease sync
    pub.send(burst("dev/t", limit + 10_000))
    got = receive(watcher, limit + 10_000)
    assert got == list(range(limit))  # the first `limit` messages, and not one more
    wait_used(rds, prefix, "dev", "events", limit)
    broker.wait_log("over quota: message of client 'dev-1'")


def test_a_burst_over_the_delivery_limit_withholds_exactly_the_excess(
    start_broker, add_user, cli, rds, prefix, config, root
):
    add_user("reader", "pw")
    rds.hset(f"{prefix}acl:user:reader", "news/#", "read")
    limit = 100_000
    cli("quota", "set", "reader", "--events", f"{limit}/1h", "--events-direction", "out")
    broker = start_broker("--config", config)
    reader = subscriber(broker.port, ("reader", "pw"), "reader-1", "news/#")
    pub = publisher(broker.port, root, "newsroom")
    time.sleep(0.5)
    pub.send(burst("news/x", limit + 10_000))
    got = receive(reader, limit + 10_000)
    assert got == list(range(limit))
    wait_used(rds, prefix, "reader", "events", limit)


def test_a_burst_takes_the_rate_bucket_exactly(start_broker, add_user, cli, rds, prefix, config, root):
    add_user("dev", "pw")
    rds.hset(f"{prefix}acl:user:dev", "dev/#", "readwrite")
    cli("quota", "set", "dev", "--rate", "10/s:30000")
    broker = start_broker("--config", config)
    watcher = subscriber(broker.port, root, "watcher", "dev/#")
    pub = publisher(broker.port, ("dev", "pw"), "dev-1")
    started = time.monotonic()
    pub.send(burst("dev/t", 40_000))
    got = receive(watcher, 40_000)
    elapsed = time.monotonic() - started
    assert got[:30_000] == list(range(30_000))  # the whole burst allowance, in order
    assert len(got) <= 30_000 + 10 * elapsed + 1  # then no more than the rate refills
