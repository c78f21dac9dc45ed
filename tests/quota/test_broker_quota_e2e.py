"""Per-message quota enforcement by real broker processes (paho clients, real Redis, a sidecar).

They rely on the engine calling `Guard.admit_publish` / `Guard.admit_delivery` and `Guard.bind_engine`
(docs/quotas.md, "Engine call sites").
"""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import pytest

from tests.helpers.mqtt import CONNACK_NOT_AUTHORIZED, connect
from tests.helpers.wait import until
from tests.sidecar.helpers import fast_config


def wait_window(seconds: int, need: float) -> None:
    left = seconds - time.time() % seconds
    if left < need:
        time.sleep(left + 0.05)


@pytest.fixture
def root(add_user):
    add_user("root", "pw-root", "--superuser")  # superusers pass every ACL; no quota is set for root
    return ("root", "pw-root")


def test_events_10_per_minute_drops_the_11th_publish_and_disconnects_until_reset(
    start_broker, start_sidecar, add_user, cli, rds, prefix, tmp_path, root
):
    add_user("d17", "pw")
    rds.hset(f"{prefix}acl:user:d17", "d17/#", "readwrite")
    cli("quota", "set", "d17", "--events", "10/1m", "--events-direction", "in")
    broker = start_broker("--config", fast_config(tmp_path))
    wait_window(60, 12)
    watcher = connect(broker.port, *root)
    watcher.subscribe(("d17/#", 1))
    dev = connect(broker.port, "d17", "pw", client_id="d17-a")
    for i in range(11):
        dev.publish("d17/t", str(i), qos=1)  # every QoS 1 publish is acknowledged, the 11th included
    assert [m.payload for m in watcher.received(1.0)] == [str(i).encode() for i in range(10)]
    assert not dev.disconnected.is_set()  # on_exceed: drop (the default)
    broker.wait_log("over quota: message of client 'd17-a'")
    dev.close()

    cli("quota", "set", "d17", "--on-exceed", "disconnect")
    dev = connect(broker.port, "d17", "pw", client_id="d17-a")
    dev.publish("d17/t", "more", qos=1)
    assert dev.disconnected.wait(3)
    refused = connect(broker.port, "d17", "pw", client_id="d17-a")
    assert refused.rc == CONNACK_NOT_AUTHORIZED
    broker.wait_log("blocked for")
    window_end = (time.time() // 60 + 1) * 60
    assert rds.pttl(f"{prefix}block:user:d17") <= (window_end - time.time()) * 1000 + 100
    assert cli("quota", "reset", "d17").returncode == 0
    again = connect(broker.port, "d17", "pw", client_id="d17-a")
    assert again.rc == 0
    again.close()
    watcher.close()


def test_blocked_until_the_window_resets(start_broker, add_user, cli, rds, prefix, tmp_path):
    add_user("d", "pw")
    rds.hset(f"{prefix}acl:user:d", "d/#", "readwrite")
    cli("quota", "set", "d", "--events", "3/5s", "--on-exceed", "disconnect")
    broker = start_broker("--config", fast_config(tmp_path))
    wait_window(5, 3)
    dev = connect(broker.port, "d", "pw")
    for _ in range(4):
        dev.publish("d/t", "x", qos=1)
    assert dev.disconnected.wait(3)
    assert connect(broker.port, "d", "pw").rc == CONNACK_NOT_AUTHORIZED
    time.sleep(5 - time.time() % 5 + 0.1)
    assert connect(broker.port, "d", "pw").rc == 0


def test_deliveries_over_quota_are_withheld(start_broker, add_user, cli, rds, prefix, tmp_path, root):
    add_user("reader", "pw")
    rds.hset(f"{prefix}acl:user:reader", "news/#", "read")
    cli("quota", "set", "reader", "--events", "3/1h", "--events-direction", "out")
    broker = start_broker("--config", fast_config(tmp_path))
    reader = connect(broker.port, "reader", "pw")
    reader.subscribe(("news/#", 1))
    pub = connect(broker.port, *root)
    for i in range(6):
        pub.publish("news/x", str(i), qos=1)
    assert len(reader.received(1.0)) == 3


def test_rate_limit(start_broker, add_user, cli, rds, prefix, tmp_path, root):
    add_user("d", "pw")
    rds.hset(f"{prefix}acl:user:d", "d/#", "readwrite")
    cli("quota", "set", "d", "--rate", "1/s:3")
    broker = start_broker("--config", fast_config(tmp_path))
    watcher = connect(broker.port, *root)
    watcher.subscribe(("d/#", 0))
    dev = connect(broker.port, "d", "pw")
    started = time.monotonic()
    for i in range(10):
        dev.publish("d/t", str(i), qos=1)
    elapsed = time.monotonic() - started
    got = watcher.received(0.5)
    assert 3 <= len(got) <= 3 + int(elapsed) + 1


def test_one_quota_shared_by_two_brokers_holds(start_broker, add_user, cli, rds, prefix, tmp_path, root):
    add_user("fleet", "pw")
    rds.hset(f"{prefix}acl:user:fleet", "fleet/#", "readwrite")
    cli("quota", "set", "fleet", "--events", "20/1h", "--events-direction", "in")
    b1 = start_broker("--config", fast_config(tmp_path))
    b2 = start_broker("--config", fast_config(tmp_path))
    w1, w2 = connect(b1.port, *root), connect(b2.port, *root)
    w1.subscribe(("fleet/#", 1))
    w2.subscribe(("fleet/#", 1))
    d1, d2 = connect(b1.port, "fleet", "pw"), connect(b2.port, "fleet", "pw")
    for i in range(15):
        d1.publish("fleet/a", str(i), qos=1)
        d2.publish("fleet/b", str(i), qos=1)
        time.sleep(0.02)
    # distinct messages: the brokers route to each other (docs/scaling.md), so a watcher may see both's
    delivered = len({(m.topic, m.payload) for m in w1.received(1.0) + w2.received(0.2)})
    assert 0 < delivered <= 20  # exact: leases partition the allowance (docs/quotas.md)
    start = int(time.time() // 3600 * 3600)
    counted = until(lambda: rds.hget(f"{prefix}quota:usage:fleet:events:{start}", "used") == str(delivered), 3, 0.05)
    assert counted, "Redis does not count what was delivered"


def _packet(kind: int, body: bytes) -> bytes:
    n, out = len(body), bytearray([kind])
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out) + body


def _s(text: str) -> bytes:
    return struct.pack("!H", len(text)) + text.encode()


def stalled_subscriber(port: int, username: str, password: str, topic: str) -> socket.socket:
    """A client that subscribes and then never reads its socket again."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(
        _packet(
            0x10, _s("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 60) + _s("slow-1") + _s(username) + _s(password)
        )
    )
    assert s.recv(4)[3] == 0
    s.sendall(_packet(0x82, struct.pack("!H", 1) + _s(topic) + bytes([1])))
    return s


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_a_slow_subscriber_is_disconnected_while_a_fast_one_loses_nothing(
    start_broker, start_sidecar, add_user, cli, rds, prefix, tmp_path, root
):
    add_user("slow", "pw")
    add_user("fast", "pw")
    rds.hset(f"{prefix}acl:user:slow", "feed/#", "read")
    rds.hset(f"{prefix}acl:user:fast", "feed/#", "read")
    cli("quota", "set", "slow", "--max-queue", "50", "--queue-grace", "1s")
    broker = start_broker("--config", fast_config(tmp_path, "limits:\n  max_queued_messages: 200\n"))
    start_sidecar("--interval", "0.2")
    slow = stalled_subscriber(broker.port, "slow", "pw", "feed/#")
    fast = connect(broker.port, "fast", "pw")
    fast.subscribe(("feed/#", 1))
    pub = connect(broker.port, *root)
    before = rss_kib(broker.proc.pid)
    payload = b"x" * 4096
    for i in range(1500):
        pub.publish("feed/t", payload + str(i).encode(), qos=1, timeout=10)
    got = []

    def all_in() -> bool:
        got.extend(fast.received(0.5))  # waits 0.5 s itself
        return len(got) >= 1500

    until(all_in, 20, interval=0)
    assert len(got) == 1500
    broker.wait_log("slow consumer", timeout=10)
    assert rds.exists(f"{prefix}session:slow-1") == 0
    assert rss_kib(broker.proc.pid) - before < 64 * 1024  # bounded: not 1500 x 4 KiB per stalled client
    slow.close()
