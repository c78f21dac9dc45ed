"""SessionRegistry (quota/registry.py), the broker's batched writer of the session registry, against the
real redis-server: a connection that ends before its registration was sent is folded into one 't'
operation (nothing registered, the previous holder still reported); everything else goes out as queued."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from mqtt_guard.quota.registry import SessionRegistry
from mqtt_guard.store.keys import Keys
from mqtt_guard.store.quota import QuotaStore, RegistryOp, RegistryResult


def registry_for(redis_server, prefix, broker_id):
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    errors: list[BaseException] = []
    return client, SessionRegistry(QuotaStore(client, Keys(prefix)), broker_id, errors.append)


def op_open(cid, conn, user="u", mode="c"):
    return RegistryOp("o", cid, conn, user, time.time(), None, mode)


def op_close(cid, conn, user="u"):
    return RegistryOp("c", cid, conn, user, limit=None, extra="0")


def test_open_and_close_in_one_batch_register_nothing_and_report_the_previous_holder(redis_server, prefix, rds):
    async def body():
        c1, b1 = registry_for(redis_server, prefix, "b1")
        c2, b2 = registry_for(redis_server, prefix, "b2")
        try:
            # b1 holds "dev" (registered and sent).
            assert (await b1.call(op_open("dev", "old"))).ok
            assert rds.hget(f"{prefix}session:dev", "broker") == "b1"
            # On b2, "dev" comes and goes before the batch leaves: one 't' op.
            results: list[RegistryResult | BaseException] = []
            b2.submit(op_open("dev", "brief"), results.append)
            b2.submit(op_close("dev", "brief"))
            assert b2.folded == 1
            await b2.drain()
            [res] = results
            assert isinstance(res, RegistryResult) and res.ok
            assert (res.prev_broker, res.prev_conn) == ("b1", "old")  # the take-over the caller carries out
            # b1's registration is untouched; nothing of b2's brief connection was written.
            assert rds.hgetall(f"{prefix}session:dev")["conn"] == "old"
            assert rds.hgetall(f"{prefix}sessions:user:u") == {"dev": "b1/old"}
            assert not rds.sismember(f"{prefix}broker:b2:sessions", "dev")
        finally:
            await c1.aclose()
            await c2.aclose()

    asyncio.run(body())


def test_a_close_after_its_open_was_sent_is_applied_and_other_connections_are_not_folded(redis_server, prefix, rds):
    async def body():
        client, reg = registry_for(redis_server, prefix, "b1")
        try:
            reg.submit(op_open("a", "ca"))
            await reg.drain()  # sent
            reg.submit(op_open("b", "cb"))
            reg.submit(op_close("a", "ca"))  # a's open is gone already: a real close
            reg.submit(op_close("b", "other-conn"))  # not b's connection: nothing to fold
            assert reg.folded == 0
            await reg.drain()
            assert not rds.exists(f"{prefix}session:a")
            assert rds.hget(f"{prefix}session:b", "conn") == "cb"
            # An awaited open (a CONNECT that needs Redis' answer) is never folded.
            task = asyncio.create_task(reg.call(op_open("c", "cc")))
            await asyncio.sleep(0)
            reg.submit(op_close("c", "cc"))
            assert reg.folded == 0
            assert (await task).ok
            await reg.drain()
            assert not rds.exists(f"{prefix}session:c")
        finally:
            await client.aclose()

    asyncio.run(body())


def test_a_lone_broker_answers_short_connections_itself_and_sends_the_rest(redis_server, prefix, rds):
    async def body():
        client, reg = registry_for(redis_server, prefix, "b1")
        try:
            reg.alone = True  # (the enforcer sets it from the heartbeat: no other broker in the registry)
            results: list[RegistryResult | BaseException] = []
            reg.submit(op_open("brief", "c1"), results.append)
            reg.submit(op_close("brief", "c1"))
            await reg.drain()
            assert (reg.folded, reg.answered, reg.batches) == (1, 1, 0)  # nothing sent to Redis
            [res] = results
            assert isinstance(res, RegistryResult) and res.ok and res.prev_broker == ""
            # A connection that stays is registered as always, in a batch without the answered ones.
            reg.submit(op_open("brief", "c2"), results.append)
            reg.submit(op_open("stays", "c3"), results.append)
            reg.submit(op_close("brief", "c2"))
            await reg.drain()
            assert (reg.folded, reg.answered, reg.batches) == (2, 2, 1)
            assert rds.hget(f"{prefix}session:stays", "conn") == "c3"
            assert not rds.exists(f"{prefix}session:brief")
        finally:
            await client.aclose()

    asyncio.run(body())
