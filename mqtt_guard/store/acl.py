"""ACL rule hashes in Redis: read by the broker, written by the CLI."""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import redis.asyncio as aioredis

from .keys import Keys


class AclStore:
    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def load(self, subject_keys: Iterable[str]) -> dict[str, dict[str, str]]:
        """The raw hashes of several subjects in one pipelined round trip."""
        subjects = list(subject_keys)
        if not subjects:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for subject in subjects:
                pipe.hgetall(self.keys.acl(subject))
            results = await pipe.execute()
        return {s: (r or {}) for s, r in zip(subjects, results, strict=True)}

    async def set_rule(self, subject: str, topic_filter: str, value: str) -> None:
        await self.redis.hset(self.keys.acl(subject), topic_filter, value)

    async def get_rule(self, subject: str, topic_filter: str) -> str | None:
        return cast("str | None", await self.redis.hget(self.keys.acl(subject), topic_filter))  # decode_responses

    async def remove_rule(self, subject: str, topic_filter: str) -> bool:
        return bool(await self.redis.hdel(self.keys.acl(subject), topic_filter))

    async def subjects(self) -> list[str]:
        found = []
        async for key in self.redis.scan_iter(match=self.keys.acl("*"), count=500):
            subject = self.keys.acl_subject_of(key)
            if subject is not None:
                found.append(subject)
        return sorted(found)
