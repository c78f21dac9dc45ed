"""Kick records (KICK_LUA, `QuotaStore.kick`/`push`/`pop_kick`) against the real redis-server: the record
carries the MQTT 5 DISCONNECT reason its broker sends, and a record without one reads as 0x98."""

from __future__ import annotations

import asyncio
import json
import time

import redis.asyncio as aioredis

from mqtt_guard.reasons import KICKED, Reason, kick_code
from mqtt_guard.store.keys import Keys
from mqtt_guard.store.quota import QuotaStore, RegistryOp


def test_a_kick_record_carries_its_code(redis_server, prefix, rds) -> None:
    async def body() -> None:
        client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        store = QuotaStore(client, Keys(prefix))
        try:
            await store.registry("b1", [RegistryOp("o", "c1", "conn-1", "u", time.time(), 4, "c")])
            ok, broker = await store.kick("c1", "session time 10s", "sidecar", code=Reason.MAXIMUM_CONNECT_TIME)
            assert (ok, broker) == (True, "b1")
            item = await store.pop_kick(client, "b1", timeout=1)
            assert item is not None and item["conn"] == "conn-1" and kick_code(item.get("code")) == 0xA0
            ok, _ = await store.kick("c1", "maintenance", "cli")  # an admin's kick: the default
            item = await store.pop_kick(client, "b1", timeout=1)
            assert ok and item is not None and kick_code(item.get("code")) == KICKED
            # a record queued by a broker or CLI from before MQTT 5 has no code
            rds.rpush(Keys(prefix).kick_queue("b1"), json.dumps({"client_id": "c1", "conn": "", "reason": "x"}))
            item = await store.pop_kick(client, "b1", timeout=1)
            assert item is not None and "code" not in item and kick_code(item.get("code")) == KICKED
            await store.push("b1", {"client_id": "c1", "conn": "conn-1", "reason": "again", "code": 0x8E})
            item = await store.pop_kick(client, "b1", timeout=1)
            assert item is not None and kick_code(item.get("code")) == Reason.SESSION_TAKEN_OVER
        finally:
            await client.aclose()

    asyncio.run(body())
