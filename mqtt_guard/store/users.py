"""Users in Redis: one hash per user plus a set of group names.

Both the broker (read path) and the CLI (write path) go through `UserStore`, so the field names and
their encodings ("1"/"0", unix seconds) live in one place.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.typing import EncodableT, FieldT

from . import keys as k


class CorruptUserError(ValueError):
    """A user hash exists but cannot be interpreted (e.g. expires_at is not a number)."""


@dataclass(frozen=True, slots=True)
class UserRecord:
    username: str
    password: str | None = None  # encoded hash, never plaintext
    superuser: bool = False
    disabled: bool = False
    expires_at: float | None = None
    groups: frozenset[str] = field(default_factory=frozenset)

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (now if now is not None else time.time()) >= self.expires_at

    @classmethod
    def from_hash(cls, username: str, h: dict[str, str], groups: set[str] | frozenset[str] = frozenset()) -> UserRecord:
        expires_raw = (h.get(k.USER_EXPIRES_AT) or "").strip()
        try:
            expires_at = float(expires_raw) if expires_raw else None
        except ValueError as exc:
            raise CorruptUserError(f"user {username!r}: field {k.USER_EXPIRES_AT} is not unix seconds") from exc
        return cls(
            username=username,
            password=h.get(k.USER_PASSWORD) or None,
            superuser=_flag(h.get(k.USER_SUPERUSER)),
            disabled=_flag(h.get(k.USER_DISABLED)),
            expires_at=expires_at,
            groups=frozenset(groups),
        )


def _flag(value: str | None) -> bool:
    """Admins type these by hand in redis-cli, so accept the obvious spellings of true."""
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


class UserStore:
    def __init__(self, redis: aioredis.Redis, keys: k.Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def get(self, username: str) -> UserRecord | None:
        """One round trip (pipelined HGETALL + SMEMBERS); None if the user hash does not exist."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.user(username))
            pipe.smembers(self.keys.user_groups(username))
            h, groups = await pipe.execute()
        if not h:
            return None
        return UserRecord.from_hash(username, h, groups or set())

    async def exists(self, username: str) -> bool:
        return bool(await self.redis.exists(self.keys.user(username)))

    async def create(self, username: str, password_hash: str, *, superuser: bool = False) -> bool:
        """Create a user; False if it already exists (HSETNX on the password makes this atomic)."""
        key = self.keys.user(username)
        if not await self.redis.hsetnx(key, k.USER_PASSWORD, password_hash):
            return False
        await self.redis.hset(key, mapping={k.USER_SUPERUSER: "1" if superuser else "0", k.USER_DISABLED: "0"})
        return True

    async def set_fields(self, username: str, **fields: str) -> None:
        mapping: dict[FieldT, EncodableT] = {f: v for f, v in fields.items()}  # Mapping is invariant in its key
        await self.redis.hset(self.keys.user(username), mapping=mapping)

    async def del_field(self, username: str, name: str) -> None:
        await self.redis.hdel(self.keys.user(username), name)

    async def delete(self, username: str) -> bool:
        n = await self.redis.delete(self.keys.user(username), self.keys.user_groups(username))
        return n > 0

    async def list(self) -> list[str]:
        names = []
        async for key in self.redis.scan_iter(match=self.keys.user_pattern(), count=500):
            name = self.keys.username_of(key)
            if name is not None and await self.redis.type(key) == "hash":
                names.append(name)
        return sorted(names)

    async def add_group(self, username: str, group: str) -> None:
        await self.redis.sadd(self.keys.user_groups(username), group)

    async def remove_group(self, username: str, group: str) -> None:
        await self.redis.srem(self.keys.user_groups(username), group)
