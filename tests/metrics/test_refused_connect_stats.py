"""A burst of refused CONNECTs against a real broker process (raw sockets, random client ids, several
source addresses on the loopback): no per-client key, the user's failure count exact, the per-address
ranking exact and never over its configured size, `stats --failures` showing who is hammering."""

from __future__ import annotations

import time
import uuid

from tests.helpers import rawmqtt
from tests.helpers.mqtt import connect
from tests.helpers.wait import expect
from tests.metrics.conftest import cli_json

CONNACK_BAD_CREDENTIALS = 4  # bad username or password
CONNACK_NOT_AUTHORIZED = 5


def refused(port: int, source: str, username: str, password: str) -> int:
    """One CONNECT with a random client id from `source`; its CONNACK return code."""
    with rawmqtt.RawClient(port, source=source) as c:
        c.send(rawmqtt.connect(uuid.uuid4().hex, username=username, password=password))
        return c.connack()[1]


def today() -> int:
    return int(time.time() // 86400 * 86400)


def test_a_burst_of_refused_connects_makes_no_client_keys_and_bounded_rankings(
    metrics_broker, add_user, rds, prefix, cli
):
    add_user("alice", "alice-pw")
    broker = metrics_broker(max_failed_addresses=2, throttle=False)  # the counting of refusals, not bans
    addr_key = f"{prefix}stats:auth_failed:addr:{today()}"
    user_key = f"{prefix}stats:auth_failed:user:{today()}"
    # 300 refused CONNECTs from three addresses, half of them alice with a wrong password, half unknown
    # users; one address at a time, so each flush window holds one address (the in-memory table of 2
    # is never full). The ranking of 2 in Redis is full when 127.0.0.1 comes: it takes the place of the
    # smallest, 127.0.0.3, and starts from its 40 (space-saving: a heavy hitter always gets in).
    bursts = (("127.0.0.3", 40), ("127.0.0.2", 60), ("127.0.0.1", 200))
    for source, n in bursts:
        for i in range(n):
            if i % 2:
                rc = refused(broker.port, source, f"nobody-{uuid.uuid4().hex}", "x")
            else:
                rc = refused(broker.port, source, "alice", "wrong")
            assert rc in (CONNACK_BAD_CREDENTIALS, CONNACK_NOT_AUTHORIZED), rc
        want = n + 40 if source == "127.0.0.1" else n
        expect(lambda s=source, want=want: rds.zscore(addr_key, s) == want)
    ok = connect(broker.port, "alice", "alice-pw", client_id="alice-ok")  # an accepted client still counts
    ok.publish("t", b"x", qos=1)

    expect(lambda: int(rds.hget(f"{prefix}stats:client:alice-ok", "messages_in") or 0) == 1)
    expect(lambda: int(rds.hget(f"{prefix}stats:user:alice", "auth_failed_bad_password") or 0) == 150)
    assert rds.zrevrange(addr_key, 0, -1, withscores=True) == [("127.0.0.1", 240.0), ("127.0.0.2", 60.0)]
    assert 0 < rds.zcard(user_key) <= 2
    assert 0 < rds.ttl(addr_key) <= 8 * 86400
    client_keys = set(rds.scan_iter(f"{prefix}stats:client:*", count=1000))
    assert client_keys == {f"{prefix}stats:client:alice-ok"}
    assert [k for k in rds.scan_iter(f"{prefix}stats:user:*", count=1000)] == [f"{prefix}stats:user:alice"]
    total = rds.hgetall(f"{prefix}stats:total")
    assert (int(total["auth_failed_bad_password"]), int(total["auth_failed_unknown_user"])) == (150, 150)
    ok.close()

    report = cli_json(cli, "stats", "--failures", "--json")
    assert report["addresses"] == [
        {"address": "127.0.0.1", "failures": 240},
        {"address": "127.0.0.2", "failures": 60},
    ]
    assert 0 < len(report["users"]) <= 2
    assert report["totals"] == {"bad_password": 150, "unknown_user": 150}
    text = cli("stats", "--failures")
    assert text.returncode == 0 and "127.0.0.1" in text.stdout and "240" in text.stdout
