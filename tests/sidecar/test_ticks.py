"""The leader's tick against a real redis-server, in process (issue 23 review): limits that change for
many sessions at once are re-timed in Redis within the tick (RETIME_LUA), the evaluations they name are
spread over ticks (`URGENT_SLICE` a tick), and a long tick renews the lead between its parts and stops
once it is lost."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from mqtt_guard.config import load_config
from mqtt_guard.sidecar.service import Sidecar
from mqtt_guard.sidecar.work import URGENT_SLICE
from mqtt_guard.store.keys import Keys
from mqtt_guard.store.quota import QuotaStore, RegistryOp

MANY = URGENT_SLICE + 1000


def _sidecar(redis_server, prefix: str) -> tuple[aioredis.Redis, Sidecar]:
    config = load_config(None)
    config.redis.prefix = prefix
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    sidecar = Sidecar(config, redis=client)
    sidecar.sweep.start([], time.monotonic(), urgent=False)  # (the periodic sweep is not what is tested)
    return client, sidecar


async def _register(store: QuotaStore, user: str, n: int) -> None:
    await store.heartbeat("b1", 60, {"pid": 1})
    ops = [RegistryOp("o", f"{user}-{i}", f"conn-{i}", user, time.time(), 10 * n, "c") for i in range(n)]
    for start in range(0, n, 500):
        await store.registry("b1", ops[start : start + 500])


def test_a_user_with_many_sessions_is_re_timed_in_one_tick_and_evaluated_over_several(redis_server, prefix, rds):
    keys = Keys(prefix)
    due = keys.sidecar_due()

    async def body():
        client, sidecar = _sidecar(redis_server, prefix)
        try:
            await _register(sidecar.store, "many", MANY)
            rds.delete(due)  # as if every session had been evaluated with nothing due
            rds.hset(keys.quota_user("many"), "session_time", "1h")
            sidecar.leading = True
            sidecar.work.changed([keys.quota_user("many")])
            report = await sidecar.tick()
            # every session timed at its since + 1h in this tick; a slice of them evaluated
            assert rds.zcard(due) == MANY
            since = float(rds.hget(keys.session("many-7"), "since"))
            assert abs(rds.zscore(due, "many-7") - (since + 3600)) < 0.01
            assert report.sessions == URGENT_SLICE and len(sidecar.work.named) == MANY - URGENT_SLICE
            report = await sidecar.tick()
            assert report.sessions == MANY - URGENT_SLICE and not sidecar.work.named
        finally:
            await client.aclose()

    asyncio.run(body())


def test_a_default_limit_edit_re_times_every_session_without_evaluating_them(redis_server, prefix, rds):
    keys = Keys(prefix)
    due = keys.sidecar_due()

    async def body():
        client, sidecar = _sidecar(redis_server, prefix)
        try:
            await _register(sidecar.store, "fleet", 500)
            rds.hset(keys.quota_user("fleet-own"), "session_time", "1d")  # (another user: unaffected)
            rds.delete(due)
            rds.hset(keys.quota_default(), "session_time", "30m")
            sidecar.leading = True
            sidecar.work.changed([keys.quota_default()])
            report = await sidecar.tick()
            assert report.sessions == 0  # nothing due yet: no evaluation
            assert rds.zcard(due) == 500
            since = float(rds.hget(keys.session("fleet-3"), "since"))
            assert abs(rds.zscore(due, "fleet-3") - (since + 1800)) < 0.01
            # never later: an earlier deadline already there stays
            rds.zadd(due, {"fleet-3": since + 60})
            sidecar.work.changed([keys.quota_default()])
            await sidecar.tick()
            assert abs(rds.zscore(due, "fleet-3") - (since + 60)) < 0.01
        finally:
            await client.aclose()

    asyncio.run(body())


def test_a_long_tick_stops_once_another_sidecar_holds_the_lead(redis_server, prefix, rds):
    keys = Keys(prefix)

    async def body():
        client, sidecar = _sidecar(redis_server, prefix)
        try:
            await _register(sidecar.store, "many", MANY)
            assert await sidecar.store.lead("sidecar:other", 30)  # the lead is another's (this one lost it)
            sidecar.leading = True
            sidecar.work.changed([keys.quota_user("many")])
            await sidecar.tick()
            assert not sidecar.leading  # stopped after its first part instead of evaluating all
        finally:
            await client.aclose()

    asyncio.run(body())
