"""`mqtt-guard quota set|unset|show|reset` as an admin uses them."""

from __future__ import annotations

import asyncio
import json
import time

from mqtt_guard.store.connection import make_async_client
from mqtt_guard.store.keys import Keys
from mqtt_guard.store.quota import QuotaStore, SyncRequest


def test_set_writes_validated_fields_and_unset_removes_them(cli, rds, prefix):
    r = cli(
        "quota",
        "set",
        "d17",
        "--events",
        "10000/1d",
        "--bytes",
        "50MB/1d",
        "--rate",
        "5/s:10",
        "--session-time",
        "1h",
        "--sessions",
        "2",
        "--max-queue",
        "500",
        "--queue-grace",
        "10s",
        "--on-exceed",
        "disconnect",
        "--events-direction",
        "in",
    )
    assert r.returncode == 0, r.stderr
    assert rds.hgetall(f"{prefix}quota:user:d17") == {
        "events": "10000/1d",
        "bytes": "50MB/1d",
        "rate": "5/s:10",
        "session_time": "1h",
        "sessions": "2",
        "max_queue": "500",
        "queue_grace": "10s",
        "on_exceed": "disconnect",
        "events_direction": "in",
    }
    assert cli("quota", "unset", "d17", "--field", "rate", "--field", "bytes").returncode == 0
    assert "rate" not in rds.hgetall(f"{prefix}quota:user:d17")
    assert cli("quota", "set", "--default", "--events", "100/1h", "--session-time", "none").returncode == 0
    assert rds.hgetall(f"{prefix}quota:default") == {"events": "100/1h", "session_time": "none"}


def test_set_refuses_malformed_values_and_writes_nothing(cli, rds, prefix):
    for args, message in (
        (("--events", "10000"), "expected N/WINDOW"),
        (("--events", "10/1y"), "expected a window"),
        (("--rate", "fast"), "expected RATE"),
        (("--sessions", "0"), "at least 1"),
        (("--session-time", "soon"), "expected a duration"),
    ):
        r = cli("quota", "set", "d", *args)
        assert r.returncode == 1 and message in r.stderr, (args, r.stderr)
    assert cli("quota", "set", "d").returncode == 1
    assert not rds.exists(f"{prefix}quota:user:d")


def test_show_lists_limits_with_their_origin_usage_and_reset_time(cli, rds, prefix, redis_server):
    cli("quota", "set", "--default", "--events", "100/1h", "--on-exceed", "disconnect")
    cli("quota", "set", "d", "--events", "10/1m", "--session-time", "30m")
    rds.hset(f"{prefix}quota:user:d", "bytes", "lots")  # a typo made with redis-cli

    async def spend() -> None:  # what a broker reports after its client published 7 messages
        client = make_async_client(redis_server.url)
        keys = Keys(prefix)
        start = int(time.time() // 60 * 60)
        await QuotaStore(client, keys).sync(
            "b1", [SyncRequest(keys.quota_usage("d", "events", start), "", 7, 1, 3, 10, start + 120)]
        )
        await client.aclose()

    asyncio.run(spend())
    info = json.loads(cli("quota", "show", "d", "--json").stdout)
    assert info["limits"]["events"] == {"value": "10/1m", "from": f"{prefix}quota:user:d"}
    assert info["limits"]["on_exceed"]["from"] == f"{prefix}quota:default"
    assert any("bytes" in p for p in info["problems"])
    events = info["usage"]["events"]
    if events["used"] == 7:  # (the minute did not turn meanwhile)
        assert (events["limit"], events["left"], events["held_by_brokers"], events["refused"]) == (10, 3, 3, 1)
    assert 0 < events["resets_in"] <= 60 and events["resets_at"] % 60 == 0
    assert events["resets_at_utc"].endswith(":00Z")
    text = cli("quota", "show", "d").stdout
    assert "events            10/1m" in text and "on_exceed         disconnect  (default)" in text
    assert "resets at" in text and "ignored: user bytes" in text
    default = cli("quota", "show", "--default").stdout
    assert "events            100/1h" in default


def test_reset_zeroes_usage_and_tells_brokers(cli, rds, prefix, redis_server):
    key = f"{prefix}quota:usage:d:events:{int(time.time() // 3600 * 3600)}"
    rds.hset(key, mapping={"gen": "g1", "used": "9", "spent:b1": "9", "lease:b1": "1"})
    rds.expire(key, 3600)
    rds.hset(f"{prefix}block:user:d", "reason", "x")
    r = cli("quota", "reset", "d")
    assert r.returncode == 0 and "1 window(s)" in r.stdout
    after = rds.hgetall(key)
    assert after["used"] == "0" and after["gen"] != "g1" and "lease:b1" not in after
    assert rds.ttl(key) > 0 and not rds.exists(f"{prefix}block:user:d")
    assert rds.get(f"{prefix}quota:reset:d") == after["gen"]


def test_reset_only_touches_that_user(cli, rds, prefix):
    start = int(time.time() // 3600 * 3600)
    rds.hset(f"{prefix}quota:usage:d:events:{start}", "used", "5")
    rds.hset(f"{prefix}quota:usage:d:x:events:{start}", "used", "5")  # user "d:x"
    cli("quota", "reset", "d")
    assert rds.hget(f"{prefix}quota:usage:d:events:{start}", "used") == "0"
    assert rds.hget(f"{prefix}quota:usage:d:x:events:{start}", "used") == "5"
