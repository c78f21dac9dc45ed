"""Revoked access tokens in Redis, by `jti` (docs/tokens.md "Revocation").

One STRING per revoked token, `revoked:<jti>`, holding who revoked it and when (JSON), with a TTL when
the revocation was given one (`token revoke JTI --for 30d`: past the longest token lifetime it can go).
A broker asks `revoked()` once per CONNECT that carries a token with a `jti`; connected clients are
disconnected through the invalidation listener, which tracks the key prefix (store/invalidation.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection

import redis.asyncio as aioredis

from .keys import Keys


class RevocationStore:
    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def revoked(self, jti: str) -> bool:
        return bool(await self.redis.exists(self.keys.revoked(jti)))

    async def still_revoked(self, jtis: Collection[str]) -> set[str]:
        """Those of `jtis` revoked now: one round trip (a pipeline of EXISTS) for the jtis of one
        invalidation, which says a `revoked:<jti>` key changed, not that it was written (an unrevoke, a
        TTL expiry and a revoke all notify alike)."""
        ordered = list(jtis)
        if not ordered:
            return set()
        async with self.redis.pipeline(transaction=False) as pipe:
            for jti in ordered:
                pipe.exists(self.keys.revoked(jti))
            found = await pipe.execute()
        return {jti for jti, n in zip(ordered, found, strict=True) if n}

    async def revoke(self, jti: str, *, by: str, ttl: float | None = None) -> bool:
        """Revoke `jti` (for `ttl` seconds; None: for good). False: it was revoked already (the record
        and its TTL are refreshed anyway)."""
        value = json.dumps({"by": by, "at": round(time.time())})
        key = self.keys.revoked(jti)
        fresh = not await self.redis.exists(key)
        if ttl is None:
            await self.redis.set(key, value)
        else:
            await self.redis.set(key, value, px=max(1, int(ttl * 1000)))
        return fresh

    async def unrevoke(self, jti: str) -> bool:
        return bool(await self.redis.delete(self.keys.revoked(jti)))
