"""The broker's liveness (quota/heartbeat.py, issue 15 item 8): written often enough that one late write
never makes a broker dead, and by a task and a Redis connection of its own, so a heartbeat whose
periodic work waits (here: every connection of the main pool busy, as in a CONNECT storm) does not
make a broker that still serves look dead to the others."""

from __future__ import annotations

import asyncio
import time

from mqtt_guard.config import QuotaConfig
from mqtt_guard.quota.heartbeat import LIVENESS_RATIO, beat_interval
from mqtt_guard.store.connection import POOL_SIZE
from tests.quota.helpers import attach, eventually, guards, make_config


def test_a_broker_is_dead_only_after_missing_several_liveness_writes_in_a_row():
    assert LIVENESS_RATIO >= 5
    assert beat_interval(QuotaConfig(sync_interval=1.0, broker_dead_after=10.0)) == 1.0  # defaults: 10 per
    assert beat_interval(QuotaConfig(sync_interval=1.0, broker_dead_after=2.0)) == 2.0 / LIVENESS_RATIO
    for sync, dead in ((0.2, 0.4), (1.0, 2.0), (1.0, 60.0), (5.0, 10.0)):
        assert dead / beat_interval(QuotaConfig(sync_interval=sync, broker_dead_after=dead)) >= LIVENESS_RATIO


def test_liveness_does_not_wait_behind_a_busy_main_redis_pool(redis_server, prefix, rds):
    async def body():
        config = make_config(redis_server.url, prefix, sync_interval=0.1, broker_dead_after=0.5)
        async with guards(config, 2) as (busy, other):
            await attach(busy, "c1", "u")
            b = busy.quota.broker_id
            assert await eventually(lambda: rds.hget(f"{prefix}session:c1", "broker") == b)
            epoch = rds.hget(f"{prefix}broker:{b}", "epoch")
            # Every connection of the busy broker's main pool blocked for 3 x broker_dead_after: its
            # periodic work (session reports, registry, lease syncs) waits for a connection meanwhile.
            hold = [
                asyncio.ensure_future(busy.redis.blpop([f"{prefix}nothing"], timeout=1.5)) for _ in range(POOL_SIZE)
            ]
            started, seen_dead = time.monotonic(), False
            while not all(t.done() for t in hold):
                (sec, usec), score = rds.time(), rds.zscore(f"{prefix}brokers", b)
                seen_dead |= score is None or score < sec * 1000 + usec // 1000
                await asyncio.sleep(0.05)
            assert time.monotonic() - started >= 1.4  # (the pool really was busy that long)
            assert not seen_dead  # alive in the registry all along: the other broker reaped nothing
            assert rds.hget(f"{prefix}broker:{b}", "epoch") == epoch and rds.hget(f"{prefix}session:c1", "broker") == b
            assert other.quota.broker_id != b

    asyncio.run(body())
