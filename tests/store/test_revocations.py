"""Revoked jtis (store/revocations.py) against a real redis-server: `still_revoked` answers for a batch of
jtis in one round trip which are revoked now (a revoke, an unrevoke, a TTL that ended)."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from mqtt_guard.store.keys import Keys
from mqtt_guard.store.revocations import RevocationStore


def test_still_revoked_tells_a_revocation_from_a_change_that_left_none(redis_server, prefix):
    async def body() -> None:
        client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        store = RevocationStore(client, Keys(prefix))
        try:
            assert await store.still_revoked([]) == set()
            await store.revoke("kept", by="test")
            await store.revoke("undone", by="test")
            await store.unrevoke("undone")
            await store.revoke("short", by="test", ttl=0.05)
            deadline = time.monotonic() + 10
            while await client.exists(Keys(prefix).revoked("short")) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert await store.still_revoked({"kept", "undone", "short", "never"}) == {"kept"}
        finally:
            await client.aclose()

    asyncio.run(body())
