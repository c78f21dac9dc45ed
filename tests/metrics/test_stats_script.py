"""The analytics write path (one Lua script call per part, issue 9) against a real redis-server: it writes
exactly what the MULTI/EXEC transactions wrote, a write Redis refuses is logged and the rest applied,
a part Redis refuses as a whole is retried and counted once, and large parts come out right."""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from mqtt_guard.metrics import counters as C
from mqtt_guard.metrics.rates import DIR_IN, DIR_OUT, RESOLUTIONS, bucket_start
from mqtt_guard.store.keys import Keys
from mqtt_guard.store.stats import KIND_BROKER, KIND_CLIENT, Batch, StatsWriter, _seconds
from tests.helpers.servers import RedisServer, free_port
from tests.metrics.test_flush import close, make_guard

TTL = 30 * 86400


class Level(enum.IntEnum):
    HIGH = 3  # an int whose repr, what redis-py sends for it, has a space: "<Level.HIGH: 3>"


# -- the reference: the MULTI/EXEC writes the script replaced (commit 3de34e9), kept as the model -------
_OLD_DISCONNECT_LUA = """
local b = redis.call('HGET', KEYS[1], ARGV[1])
if b == false or b == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[3], '0', ARGV[4], ARGV[5])
end
return 0
"""


def transaction_write(r: redis.Redis, keys: Keys, me: str, b: Batch, now: float) -> None:
    pipe = r.pipeline(transaction=True)
    now_i = int(now)
    for (cid, user), counts in b.clients.items():
        k = keys.stats_client(cid)
        for name, v in counts.items():
            pipe.hincrby(k, name, v)
        fields: dict[str, Any] = {C.G_LAST_SEEN: now_i}
        if user is not None:
            fields[C.G_USERNAME] = user
        pipe.hset(k, mapping=fields)
        pipe.expire(k, TTL)
    for user, counts in b.users.items():
        k = keys.stats_user(user)
        for name, v in counts.items():
            pipe.hincrby(k, name, v)
        pipe.hset(k, C.G_LAST_SEEN, now_i)
        pipe.expire(k, TTL)
    for bucket, entries in b.rates.items():
        for res_name, seconds, keep in RESOLUTIONS:
            start = bucket_start(bucket, seconds)
            expire_at = start + seconds + keep
            if expire_at <= now:
                continue
            touched: set[str] = set()
            sums = {DIR_IN: 0, DIR_OUT: 0}  # the broker's own member: its clients added up (#20)
            for (kind, ident), (i, o) in entries.items():
                for direction, v in ((DIR_IN, i), (DIR_OUT, o)):
                    if v:
                        rk = keys.stats_rate(res_name, kind, direction, start)
                        pipe.zincrby(rk, v, ident)
                        touched.add(rk)
                        if kind == KIND_CLIENT:
                            sums[direction] += v
            for direction, v in sums.items():
                if v:
                    rk = keys.stats_rate(res_name, KIND_BROKER, direction, start)
                    pipe.zincrby(rk, v, me)
                    touched.add(rk)
            for rk in touched:
                pipe.expireat(rk, int(expire_at))
    if b.totals:
        for name, v in b.totals.items():
            pipe.hincrby(keys.stats_total(), name, v)
            pipe.hincrby(keys.stats_broker(me), name, v)
    for cid, g in b.gauges.items():
        pipe.hset(keys.stats_client(cid), mapping=g)
        pipe.expire(keys.stats_client(cid), TTL)
    for kind, cid, user, at in b.events:
        k = keys.stats_client(cid)
        if kind == "connect":
            fields = {C.G_CONNECTED: 1, C.G_CONNECTED_SINCE: round(at, 3), C.G_BROKER: me}
            if user is not None:
                fields[C.G_USERNAME] = user
            pipe.hset(k, mapping=fields)
            pipe.hdel(k, C.G_DISCONNECTED_AT)
        else:
            pipe.eval(_OLD_DISCONNECT_LUA, 1, k, C.G_BROKER, me, C.G_CONNECTED, C.G_DISCONNECTED_AT, round(at, 3))
        pipe.expire(k, TTL)
    pipe.execute(raise_on_error=False)


def snapshot(r: redis.Redis, prefix: str) -> tuple[dict[str, tuple[str, Any]], dict[str, int]]:
    """Every key under `prefix` (prefix stripped): {key: (type, content)}, {key: TTL in seconds}."""
    out, ttls = {}, {}
    for k in r.scan_iter(match=prefix + "*", count=1000):
        t = r.type(k)
        if t == "hash":
            content: Any = r.hgetall(k)
        elif t == "zset":
            content = r.zrange(k, 0, -1, withscores=True)
        else:
            content = r.get(k)
        out[k[len(prefix) :]] = (t, content)
        ttls[k[len(prefix) :]] = r.ttl(k)
    return out, ttls


def write_parts(url: str, keys: Keys, me: str, batch: Batch, now: float, chunk: int = 500) -> None:
    async def main() -> None:
        r = aioredis.Redis.from_url(url, decode_responses=True)
        w = StatsWriter(r, keys, me, ttl=TTL, chunk=chunk)
        for part in w.split(batch):
            await w.write(part, now=now)
        await r.aclose()

    asyncio.run(main())


def rich_batch(now: float) -> Batch:
    """Everything a flush can carry, with names and values that would break a naive encoding."""
    old = bucket_start(now - 7200, 10)  # its 10 s buckets have expired, its 1 min one has not
    cur = bucket_start(now, 10)
    return Batch(
        clients={
            ("dev 1", "alice smith"): {C.MSGS_IN: 5, C.BYTES_IN: 2**40, C.DENIED_PUBLISH: 2},
            ("dév-2/ü", None): {C.MSGS_OUT: 3, C.kick_name("admin"): 1},
            ("@5", "@6"): {C.CONNECTS: 1, "auth_failed_bad_password": 2},
            ("3 1 2", "alice smith"): {C.MSGS_IN: -1},
        },
        users={"alice smith": {C.MSGS_IN: 4, C.BYTES_IN: 2**40}, "@6": {C.CONNECTS: 1}},
        totals={C.MSGS_IN: 4, C.MSGS_OUT: 3, C.PROTOCOL_ERRORS: 1},
        gauges={
            "dev 1": {C.G_QUEUE_DEPTH: 7, "note": "a b  c", "ratio": 0.1 + 0.2, "at": "@5"},
            "dév-2/ü": {C.G_QUEUE_DEPTH: 0},
        },
        events=[
            ("connect", "dev 1", "alice smith", now - 3.0004),
            ("connect", "dév-2/ü", None, now - 2.5),
            ("disconnect", "dév-2/ü", None, now - 1.25),
            ("connect", "moved", "bob", now - 1.0),
            ("disconnect", "moved", "bob", now - 0.5),
            ("disconnect", "never-seen", None, now - 0.1),
            # a client that comes and goes twice, and a take-over whose old connection ends last
            ("connect", "loop", None, now - 0.9),
            ("disconnect", "loop", None, now - 0.8),
            ("connect", "loop", "carol", now - 0.7),
            ("disconnect", "loop", "carol", now - 0.6),
            ("connect", "taken", "dave", now - 0.4),
            ("connect", "taken", "dave", now - 0.3),
            ("disconnect", "taken", "dave", now - 0.2),
            ("disconnect", "taken", "dave", now - 0.15),
        ],
        rates={
            cur: {("client", "dev 1"): [5, 0], ("client", "dév-2/ü"): [0, 3], ("user", "alice smith"): [5, 3]},
            old: {("client", "dev 1"): [2, 1]},
        },
    )


@pytest.mark.parametrize("chunk", [1, 3, 500])
def test_the_script_writes_exactly_what_the_transactions_wrote(redis_server, rds, prefix, chunk):
    now = time.time()
    old, new = Keys(prefix + "old:"), Keys(prefix + "new:")
    for keys in (old, new):  # "moved" is attributed to another broker: its disconnect must not stand
        rds.hset(keys.stats_client("moved"), mapping={C.G_BROKER: "B", C.G_CONNECTED: 1})
    # the transactions ran one per flush; the script parts may cut the batch anywhere: same end result
    transaction_write(rds, old, "A", rich_batch(now), now)
    write_parts(redis_server.url, new, "A", rich_batch(now), now, chunk=chunk)
    # the "moved" client's connect of broker A was in this batch, so A's disconnect applies in both
    (want, want_ttl), (got, got_ttl) = snapshot(rds, old.prefix), snapshot(rds, new.prefix)
    assert got == want
    assert got_ttl.keys() == want_ttl.keys()
    for k, ttl in got_ttl.items():
        assert abs(ttl - want_ttl[k]) <= 2 and (ttl > 0) == (want_ttl[k] > 0), (k, ttl, want_ttl[k])
    assert got["stats:client:dev 1"][1][C.G_CONNECTED_SINCE] == repr(round(now - 3.0004, 3))
    assert got["stats:client:@5"][1][C.G_USERNAME] == "@6"
    assert got["stats:client:dev 1"][1]["note"] == "a b  c"
    assert any(k.startswith("stats:rate:1m:client:in:") and v[1] == [("dev 1", 2.0)] for k, v in got.items())


def test_gauge_values_whose_text_has_spaces_do_not_break_the_records(redis_server, rds, prefix):
    now = time.time()
    keys = Keys(prefix)
    batch = Batch(
        gauges={"a": {"level": Level.HIGH, C.G_QUEUE_DEPTH: 4}, "b": {C.G_QUEUE_DEPTH: 5}},
        events=[("connect", "b", None, now)],
    )
    write_parts(redis_server.url, keys, "A", batch, now)
    assert rds.hgetall(keys.stats_client("a")) == {"level": repr(Level.HIGH), C.G_QUEUE_DEPTH: "4"}
    b = rds.hgetall(keys.stats_client("b"))
    assert b[C.G_QUEUE_DEPTH] == "5" and b[C.G_CONNECTED] == "1"


def test_disconnect_of_a_client_now_on_another_broker_leaves_it_connected(redis_server, rds, prefix):
    now = time.time()
    keys = Keys(prefix)
    rds.hset(keys.stats_client("moved"), mapping={C.G_BROKER: "B", C.G_CONNECTED: 1})
    write_parts(
        redis_server.url,
        keys,
        "A",
        Batch(events=[("disconnect", "moved", None, now), ("disconnect", "gone", None, now)]),
        now,
    )
    assert rds.hgetall(keys.stats_client("moved")) == {C.G_BROKER: "B", C.G_CONNECTED: "1"}
    assert rds.hget(keys.stats_client("gone"), C.G_CONNECTED) == "0"
    assert 0 < rds.ttl(keys.stats_client("moved")) <= TTL


def test_a_part_with_wrong_type_keys_is_logged_and_the_rest_applied(redis_server, rds, prefix, caplog):
    now = time.time()
    keys = Keys(prefix)
    bucket = bucket_start(now, 10)
    rate_key = keys.stats_rate("10s", "client", "in", bucket)
    for k in (keys.stats_client("bad"), keys.stats_user("alice"), rate_key):
        rds.set(k, "edited by hand")
    batch = Batch(
        clients={("bad", "alice"): {C.MSGS_IN: 1}, ("good", "alice"): {C.MSGS_IN: 2}},
        users={"alice": {C.MSGS_IN: 3}},
        totals={C.MSGS_IN: 3},
        events=[
            ("disconnect", "bad", "alice", now),
            ("connect", "bad", "alice", now),
            ("connect", "good", "alice", now),
        ],
        rates={bucket: {("client", "bad"): [1, 0], ("client", "good"): [2, 1]}},
    )
    with caplog.at_level(logging.WARNING, logger="mqtt_guard.metrics"):
        write_parts(redis_server.url, keys, "A", batch, now, chunk=100)  # one part; its first write fails
    for k in (keys.stats_client("bad"), keys.stats_user("alice"), rate_key):
        assert rds.get(k) == "edited by hand"
    good = rds.hgetall(keys.stats_client("good"))
    assert good[C.MSGS_IN] == "2" and good[C.G_CONNECTED] == "1" and good[C.G_USERNAME] == "alice"
    assert rds.zscore(keys.stats_rate("10s", "client", "out", bucket), "good") == 1
    assert rds.zscore(keys.stats_rate("1m", "client", "in", bucket_start(now, 60)), "good") == 2
    assert rds.hget(keys.stats_total(), C.MSGS_IN) == "3" and rds.hget(keys.stats_broker("A"), C.MSGS_IN) == "3"
    [record] = [r for r in caplog.records if "refused" in r.getMessage()]
    text = record.getMessage()
    # client hash: HINCRBY, HSET last_seen, HGET of the disconnect, HSET connect, HDEL; user: HINCRBY,
    # HSET; rate: 2 ZINCRBY (the EXPIREAT of a string key works)
    assert "refused 9 stats writes" in text and "WRONGTYPE" in text
    assert f"HINCRBY {keys.stats_client('bad')}" in text and f"ZINCRBY {rate_key}" in text
    assert f"HGET {keys.stats_client('bad')}" in text


def test_a_flush_that_fails_midway_is_retried_and_counts_once(redis_server, rds, prefix):
    async def main() -> None:
        g = make_guard(redis_server.url, prefix, "A")
        g.metrics.writer.chunk = 4  # 10 clients, a user, 11 rate entries, 20 events: 11 parts
        for i in range(10):
            g.counters.connected(f"dev-{i}", "alice")
            g.counters.incr(f"dev-{i}", C.MSGS_IN, i + 1)
            g.counters.disconnected(f"dev-{i}")
        g.metrics.tick()
        real = g.metrics.writer.write
        calls = []

        async def flaky(part: Batch, now: float | None = None) -> None:
            calls.append(part)
            if len(calls) == 5:
                raise redis.exceptions.ConnectionError("injected: Redis went away")
            await real(part, now)

        g.metrics.writer.write = flaky  # type: ignore[method-assign]  # a failing writer, for the test
        assert not await g.metrics.flush()
        assert g.metrics.redis_up is False and not g.metrics.backlog.empty()
        g.counters.connected("dev-0", "alice")  # counted meanwhile: goes after what was not written
        g.counters.incr("dev-0", C.MSGS_IN, 100)
        g.metrics.tick()
        assert await g.metrics.flush()
        assert g.metrics.backlog.empty()
        assert await g.metrics.flush()
        await close(g)

    asyncio.run(main())
    k = Keys(prefix)
    for i in range(10):
        h = rds.hgetall(k.stats_client(f"dev-{i}"))
        assert int(h[C.MSGS_IN]) == i + 1 + (100 if i == 0 else 0), (i, h)
        assert int(h[C.CONNECTS]) == (2 if i == 0 else 1)
        assert h[C.G_CONNECTED] == ("1" if i == 0 else "0")  # dev-0's reconnect came after its disconnect
    assert rds.hget(k.stats_user("alice"), C.MSGS_IN) == str(55 + 100)
    assert rds.hget(k.stats_total(), C.MSGS_IN) == str(55 + 100)
    bucket_total = sum(
        int(s)
        for key in rds.scan_iter(match=prefix + "stats:rate:10s:client:in:*")
        for _, s in rds.zrange(key, 0, -1, withscores=True)
    )
    assert bucket_total == 155


@pytest.fixture
def private_redis():
    server = RedisServer().start()  # its state is changed (maxmemory, replication): not the shared one
    yield server
    server.cleanup()


@pytest.mark.parametrize("refusal", ["out of memory", "read-only replica"])
def test_redis_refusing_every_write_fails_the_part_whole_and_the_retry_counts_once(private_redis, prefix, refusal):
    r = private_redis.client()

    def refuse(on: bool) -> None:
        if refusal == "out of memory":
            r.config_set("maxmemory", 1 if on else 0)  # noeviction: writes refused, reads allowed
        elif on:
            r.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))  # a master that never answers
        else:
            r.execute_command("REPLICAOF", "NO", "ONE")

    async def main() -> None:
        g = make_guard(private_redis.url, prefix, "A")
        g.counters.connected("dev-1", "alice")
        g.counters.incr("dev-1", C.MSGS_IN, 3)
        g.metrics.tick()
        assert await g.metrics.flush()
        refuse(True)
        try:
            g.counters.incr("dev-1", C.MSGS_IN, 10)
            g.counters.connected("dev-2", "alice")
            g.metrics.tick()
            assert not await g.metrics.flush()
            assert not await g.metrics.flush()
            assert r.hget(g.keys.stats_client("dev-1"), C.MSGS_IN) == "3"  # nothing of the part was written
            assert not r.exists(g.keys.stats_client("dev-2"))
        finally:
            refuse(False)
        assert await g.metrics.flush()
        assert await g.metrics.flush()
        await close(g)

    asyncio.run(main())
    k = Keys(prefix)
    assert r.hget(k.stats_client("dev-1"), C.MSGS_IN) == "13"
    assert r.hget(k.stats_client("dev-2"), C.CONNECTS) == "1"
    assert r.hget(k.stats_user("alice"), C.MSGS_IN) == "13" and r.hget(k.stats_total(), C.CONNECTS) == "2"
    r.close()


def test_a_large_part_is_written_correctly_and_the_script_is_reloaded_after_script_flush(redis_server, rds, prefix):
    now = time.time()
    keys = Keys(prefix)
    n = 6000
    batch = Batch(
        clients={(f"c{i}", f"u{i % 7}"): {C.MSGS_IN: i, C.BYTES_IN: 64 * i, C.CONNECTS: 1} for i in range(n)},
        events=[("connect", f"c{i}", f"u{i % 7}", now) for i in range(n)],
        totals={C.CONNECTS: n},
        rates={bucket_start(now, 10): {("client", f"c{i}"): [i, 1] for i in range(n)}},
    )

    async def main() -> None:
        r = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        w = StatsWriter(r, keys, "A", ttl=TTL, chunk=10**6)
        [part] = w.split(batch)
        await r.script_flush()  # NOSCRIPT on the first call: redis-py loads the script and calls again
        await w.write(part, now=now)
        await r.aclose()

    asyncio.run(main())
    for i in random.Random(7).sample(range(n), 50) + [0, n - 1]:
        h = rds.hgetall(keys.stats_client(f"c{i}"))
        assert h[C.MSGS_IN] == str(i) and h[C.BYTES_IN] == str(64 * i) and h[C.G_USERNAME] == f"u{i % 7}"
        assert h[C.G_CONNECTED] == "1" and h[C.G_BROKER] == "A" and h[C.G_LAST_SEEN] == str(int(now))
        assert TTL - 60 < rds.ttl(keys.stats_client(f"c{i}")) <= TTL
    assert rds.hget(keys.stats_total(), C.CONNECTS) == str(n)
    rk = keys.stats_rate("10s", "client", "in", bucket_start(now, 10))
    assert rds.zcard(rk) == n - 1 and rds.zscore(rk, f"c{n - 1}") == n - 1  # c0 published nothing
    assert rds.zcard(keys.stats_rate("1m", "client", "out", bucket_start(now, 60))) == n


def test_split_bounds_parts_keeps_events_in_order_and_totals_in_the_last_part():
    b = Batch(
        clients={(f"c{i}", None): {C.MSGS_IN: 1} for i in range(5)},
        users={"u": {C.MSGS_IN: 5}},
        totals={C.MSGS_IN: 5},
        gauges={"c1": {C.G_QUEUE_DEPTH: 2}},
        events=[("connect", f"c{i}", None, float(i)) for i in range(7)],
        rates={10: {("client", f"c{i}"): [1, 0] for i in range(3)}, 20: {("user", "u"): [5, 0]}},
    )
    unused = aioredis.Redis()  # never connects: split is pure
    w = StatsWriter(unused, Keys("x:"), "A", ttl=TTL, chunk=4)
    parts = w.split(b)
    assert [p.size() for p in parts] == [4, 4, 4, 4, 2]
    assert all(not p.totals for p in parts[:-1]) and parts[-1].totals == b.totals
    merged = Batch()
    for p in parts:
        merged.merge(p)
    assert merged.clients == b.clients and merged.users == b.users and merged.gauges == b.gauges
    assert merged.events == b.events and merged.rates == b.rates and merged.totals == b.totals
    assert StatsWriter(unused, Keys("x:"), "A", ttl=TTL, chunk=100).split(Batch()) == [Batch()]


def test_timestamps_are_formatted_as_redis_py_formatted_them():
    rnd = random.Random(3)
    values = [rnd.uniform(1.6e9, 2.2e9) for _ in range(20000)] + [
        1764232654.0,
        1764232654.1,
        1764232654.0625,
        1764232654.9995,
        0.0,
        0.0005,
        2.675,
        1e16,
        -1.5,
        1764232654,
        0,
    ]
    for v in values:
        assert _seconds(v) == repr(round(v, 3)), v


def test_failure_rankings_stay_bounded_let_newcomers_in_and_expire_a_week_after_their_day(redis_server, rds, prefix):
    keys = Keys(prefix)

    async def main() -> None:
        r = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        w = StatsWriter(r, keys, "A", ttl=TTL, chunk=2, max_failed=3)
        first = Batch(failed={("addr", "10.0.0.1"): 5, ("addr", "::1"): 1, ("user", "a b"): 2, ("user", "@5"): 1})
        second = Batch(failed={("addr", "10.0.0.1"): 1, ("addr", "10.0.0.2"): 3, ("addr", "10.0.0.3"): 2})
        for b in (first, second):
            for part in w.split(b):  # parts of 2 entries: the trim runs per part, the result is the same
                await w.write(part, now=time.time())
        await r.aclose()

    # the writer takes the day from the wall clock: write "now", then check against today's keys
    now = time.time()
    day = int(now // 86400 * 86400)
    asyncio.run(main())
    addr, user = keys.stats_failed("addr", day), keys.stats_failed("user", day)
    # the ranking of 3 was full when 10.0.0.3 came: it took the place of the smallest (::1, 1) from its count
    assert dict(rds.zrange(addr, 0, -1, withscores=True)) == {"10.0.0.1": 6.0, "10.0.0.2": 3.0, "10.0.0.3": 3.0}
    assert rds.zrevrange(user, 0, -1, withscores=True) == [("a b", 2.0), ("@5", 1.0)]
    for k in (addr, user):
        assert abs(rds.ttl(k) - (day + 86400 + 7 * 86400 - now)) <= 5
