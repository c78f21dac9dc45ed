"""What a broker keeps between CONNECTs (in-process Guards on the test Redis): lingering leases, cached
limits and blocks, session slots; and that each is given up or re-read when it may be stale."""

from __future__ import annotations

import asyncio
import time

import pytest

from mqtt_guard.quota.caches import LimitsCache
from mqtt_guard.quota.enforcer import QuotaRefusal
from mqtt_guard.quota.limits import parse_limits
from mqtt_guard.reasons import Reason
from tests.quota.helpers import attach, eventually, guards, make_config


def run(coro):
    return asyncio.run(coro)


def count_calls(obj, name):
    calls = []
    original = getattr(obj, name)

    async def wrapper(*args, **kwargs):
        calls.append(args)
        return await original(*args, **kwargs)

    setattr(obj, name, wrapper)
    return calls


def test_a_user_coming_back_within_the_linger_reuses_its_leases(redis_server, prefix, rds):
    config = make_config(redis_server.url, prefix, linger=1.0)
    rds.hset(f"{prefix}quota:user:u", "events", "1000/1d")
    key = f"{prefix}quota:usage:u:events:{int(time.time() // 86400 * 86400)}"

    async def body():
        async with guards(config) as [g]:
            await eventually(lambda: g.quota.blocks.loaded and g.listener.connected.is_set())
            c = await attach(g, "dev", "u")
            assert g.admit_publish(c, "t", 1, 0)
            entry = g.quota.usage_of("u", "events")
            g.detach(c)
            syncs = count_calls(g.quota.store, "sync")
            loads = count_calls(g.quota.store, "load_limits")
            await asyncio.sleep(0.3)  # a few heartbeats: the lease stays
            assert int(rds.hget(key, f"lease:{g.quota.broker_id}")) > 0
            c = await attach(g, "dev-2", "u")  # no first sync, no limits read, no block read
            assert g.quota.usage_of("u", "events") is entry and not loads
            assert not [a for a in syncs if any(r.key == key and r.want == 0 for r in a[1])]
            assert g.admit_publish(c, "t", 1, 0)
            g.detach(c)
            assert await eventually(lambda: rds.hget(key, f"lease:{g.quota.broker_id}") == "0", timeout=4)
            assert "u" not in g.quota.users
            assert rds.hget(key, "used") == "2"

    run(body())


def test_limits_cache_trusts_only_reads_that_no_change_overtook():
    connected = [True]
    cache = LimitsCache(lambda: connected[0], size=2)
    five = parse_limits({"sessions": "5"}, {})
    token = cache.begin()
    cache.invalidate({"u"})  # arrives while the read is in flight: the value read may be older
    cache.put("u", five, token)
    assert cache.get("u") is None and cache.last["u"] is five
    cache.put("u", five, cache.begin())
    assert cache.get("u") is five
    cache.invalidate(None)  # quota:default changed, or the listener reset
    assert cache.get("u") is None
    cache.put("u", five, cache.begin())
    connected[0] = False  # listener down: nothing is trusted, and nothing read now will be
    assert cache.get("u") is None
    cache.put("v", five, cache.begin())
    connected[0] = True
    assert cache.get("v") is None and cache.get("u") is five
    cache.put("w", five, cache.begin())
    cache.put("x", five, cache.begin())  # beyond the size: the oldest goes
    assert "u" not in cache.last and cache.get("u") is None


def test_limit_and_block_changes_by_plain_redis_commands_apply_to_the_next_connect(redis_server, prefix, rds):
    config = make_config(redis_server.url, prefix)
    rds.hset(f"{prefix}quota:user:u", "sessions", "100")

    async def body():
        async with guards(config) as [g]:
            await eventually(lambda: g.quota.blocks.loaded and g.listener.connected.is_set())
            g.detach(await attach(g, "warm", "u"))
            g.detach(await attach(g, "warm", "u"))
            assert g.quota.limits.get("u") is not None  # cached and trusted
            rds.hset(f"{prefix}block:user:u", mapping={"reason": "by hand", "until": int(time.time()) + 60})
            rds.expire(f"{prefix}block:user:u", 60)
            await asyncio.sleep(0.05)  # the invalidation reaches the broker, as before any real CONNECT
            with pytest.raises(QuotaRefusal, match="by hand") as refused:
                await attach(g, "a", "u")
            assert refused.value.code == Reason.BANNED  # an admin's block
            rds.delete(f"{prefix}block:user:u")
            await asyncio.sleep(0.05)
            a = await attach(g, "a", "u")
            rds.hset(f"{prefix}quota:user:u", "sessions", "1")
            await asyncio.sleep(0.05)
            with pytest.raises(QuotaRefusal, match="too many sessions"):
                await attach(g, "b", "u")
            g.detach(a)

    run(body())


def test_without_the_invalidation_listener_nothing_cached_is_trusted(redis_server, prefix, rds):
    config = make_config(redis_server.url, prefix)
    rds.hset(f"{prefix}quota:user:u", "sessions", "100")

    async def body():
        async with guards(config) as [g]:
            await eventually(lambda: g.quota.blocks.loaded and g.listener.connected.is_set())
            g.detach(await attach(g, "warm", "u"))
            g.detach(await attach(g, "warm", "u"))
            await g.listener.stop()  # no invalidations any more: the broker reads Redis at CONNECT
            rds.hset(f"{prefix}block:client:a", mapping={"reason": "listener-less", "until": int(time.time()) + 60})
            rds.expire(f"{prefix}block:client:a", 60)
            with pytest.raises(QuotaRefusal, match="listener-less"):
                await attach(g, "a", "u")
            rds.hset(f"{prefix}quota:user:u", "sessions", "1")
            b = await attach(g, "b", "u")
            with pytest.raises(QuotaRefusal, match="too many sessions"):
                await attach(g, "c", "u")
            g.detach(b)

    run(body())


def test_a_sessions_change_hands_the_slots_back_and_the_new_limit_is_exact(redis_server, prefix, rds):
    config = make_config(redis_server.url, prefix)
    rds.hset(f"{prefix}quota:user:u", "sessions", "100")

    async def body():
        async with guards(config, 2) as [g1, g2]:
            for g in (g1, g2):
                await eventually(lambda g=g: g.listener.connected.is_set())
                g.detach(await attach(g, "warm", "u"))
            # Both brokers reserve slots (a block of 10 for sessions 100) while the user is far from it.
            assert await eventually(lambda: len(rds.hgetall(f"{prefix}sessions:slots:u")) == 2)
            rds.hset(f"{prefix}quota:user:u", "sessions", "3")
            assert await eventually(lambda: not rds.exists(f"{prefix}sessions:slots:u"))
            held = [await attach(g1, "a", "u"), await attach(g2, "b", "u"), await attach(g1, "c", "u")]
            for g, cid in ((g1, "d"), (g2, "d")):
                with pytest.raises(QuotaRefusal, match="user 'u' has 3 connected"):
                    await attach(g, cid, "u")
            g1.detach(held[0])
            await g1.quota.registry.drain()
            await attach(g2, "d", "u")

    run(body())


def test_a_connect_while_redis_is_down_is_admitted_with_the_limits_known_so_far(prefix):
    from tests.helpers.servers import RedisServer

    server = RedisServer(persistent=True).start()  # restarts with its data: the broker's record survives
    config = make_config(server.url, prefix)
    rds = server.client()
    rds.hset(f"{prefix}quota:user:u", mapping={"sessions": "100", "rate": "1/s:2"})

    async def body():
        async with guards(config) as [g]:
            await eventually(lambda: g.listener.connected.is_set())
            g.detach(await attach(g, "warm", "u"))
            server.stop()
            assert await eventually(lambda: not g.listener.connected.is_set())
            c = await attach(g, "dev", "u")  # documented: admitted, limits known so far apply
            assert [g.admit_publish(c, "t", 1, 0) for _ in range(3)] == [True, True, False]
            server.start()
            assert await eventually(lambda: g.listener.connected.is_set(), timeout=10)
            assert await eventually(lambda: g.quota.blocks.loaded)
            # Registered once Redis is back, so it counts for `sessions` and the sidecar sees it.
            assert await eventually(lambda: rds.hget(f"{prefix}session:dev", "broker") == g.quota.broker_id, timeout=5)
            assert rds.hexists(f"{prefix}sessions:user:u", "dev")
            g.detach(c)
            assert await eventually(lambda: not rds.exists(f"{prefix}session:dev"))

    try:
        run(body())
    finally:
        rds.close()
        server.cleanup()


def test_slots_go_back_when_the_user_gets_close_to_its_limit(redis_server, prefix, rds):
    config = make_config(redis_server.url, prefix)
    rds.hset(f"{prefix}quota:user:u", "sessions", "40")  # slot block: 4

    async def body():
        async with guards(config, 2) as [g1, g2]:
            for g in (g1, g2):
                await eventually(lambda g=g: g.listener.connected.is_set())
                g.detach(await attach(g, "warm", "u"))
            assert await eventually(lambda: len(rds.hgetall(f"{prefix}sessions:slots:u")) == 2)
            held = [await attach(g2, f"c{i}", "u") for i in range(28)]
            # 28 connected + 8 reserved: fewer than 2 x 4 places would be free, so both hand theirs back.
            assert await eventually(lambda: not rds.exists(f"{prefix}sessions:slots:u"), timeout=3)
            for i in range(28, 40):
                held.append(await attach(g1 if i % 2 else g2, f"c{i}", "u"))
            with pytest.raises(QuotaRefusal, match="user 'u' has 40 connected"):
                await attach(g1, "c40", "u")
            assert rds.hlen(f"{prefix}sessions:user:u") == 40

    run(body())


def test_a_refusal_caused_by_another_brokers_slots_makes_it_hand_them_back(redis_server, prefix, rds):
    # Heartbeats 5 s apart: what returns the slot here is the refusing broker's request, not a heartbeat.
    config = make_config(redis_server.url, prefix, sync_interval=5.0, broker_dead_after=10.0)
    rds.hset(f"{prefix}quota:user:u", "sessions", "10")  # slot block 1

    async def body():
        async with guards(config, 2) as [g1, g2]:
            for g in (g1, g2):
                await eventually(lambda g=g: g.listener.connected.is_set())
            g1.detach(await attach(g1, "warm", "u"))  # the freed place stays with g1 as a slot
            await g1.quota.registry.drain()
            assert rds.hgetall(f"{prefix}sessions:slots:u") == {f"lease:{g1.quota.broker_id}": "1"}
            held = [await attach(g2, f"c{i}", "u") for i in range(9)]
            with pytest.raises(QuotaRefusal, match="has 9 connected and brokers reserve 1 slot"):
                await attach(g2, "c9", "u")
            assert await eventually(lambda: not rds.exists(f"{prefix}sessions:slots:u"), timeout=2)
            held.append(await attach(g2, "c9", "u"))
            with pytest.raises(QuotaRefusal, match="has 10 connected"):
                await attach(g2, "c10", "u")

    run(body())
