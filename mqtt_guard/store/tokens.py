"""Admin API tokens in Redis, stored hashed (docs/admin-api.md "Tokens").

A token is 32 random bytes (URL-safe base64 behind a `mqga_` marker, so a leaked one is recognisable in a
log or a repository). Redis holds only its SHA-256: a fast hash is enough for a high-entropy secret
(nobody can guess 256 bits, so there is nothing for a slow hash to slow down), and a request is checked
with one HGETALL of `admin:token:<digest>`. The lookup is by digest, so no comparison of secrets runs
in Python at all (nothing to time).

The dashboard exchanges a token once for a session (`open_session`): a random cookie, stored hashed
like tokens, that points at the token's digest, plus a CSRF token the page sends with every change. A
session lives SESSION_TTL and dies with its token: each request reads the token's record again, so
`admin token revoke` also ends the dashboards logged in with it.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import cast

import redis.asyncio as aioredis

from .keys import Keys

TOKEN_MARKER = "mqga_"
SESSION_TTL = 12 * 3600  # seconds a dashboard login lasts


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True, slots=True)
class AdminToken:
    name: str
    read_only: bool
    created: float
    by: str


@dataclass(frozen=True, slots=True)
class AdminSession:
    token: AdminToken  # the token the session was opened with, as it is now
    csrf: str  # what the page must send in X-CSRF-Token with every request that changes something
    expires: float


class TokenStore:
    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def create(self, name: str, *, read_only: bool, by: str) -> str | None:
        """A new token named `name` (None if the name is taken); the clear token is returned once."""
        token = TOKEN_MARKER + secrets.token_urlsafe(32)
        d = digest(token)
        if not await self.redis.hsetnx(self.keys.admin_tokens(), name, d):
            return None
        await self.redis.hset(
            self.keys.admin_token(d),
            mapping={"name": name, "read_only": "1" if read_only else "0", "created": f"{time.time():.0f}", "by": by},
        )
        return token

    async def lookup(self, token: str) -> AdminToken | None:
        """The token's record, or None for an unknown (or revoked) token."""
        if not token.startswith(TOKEN_MARKER):
            return None
        h = cast("dict[str, str]", await self.redis.hgetall(self.keys.admin_token(digest(token))))
        return _record(h) if h else None

    async def list(self) -> list[AdminToken]:
        names = cast("dict[str, str]", await self.redis.hgetall(self.keys.admin_tokens()))
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in sorted(names):
                pipe.hgetall(self.keys.admin_token(names[name]))
            found = await pipe.execute()
        return [_record(h) for h in found if h]

    async def revoke(self, name: str) -> bool:
        d = cast("str | None", await self.redis.hget(self.keys.admin_tokens(), name))
        if d is None:
            return False
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.admin_token(d))
            pipe.hdel(self.keys.admin_tokens(), name)
            await pipe.execute()
        return True

    async def open_session(self, token: str, ttl: int = SESSION_TTL) -> tuple[str, AdminSession] | None:
        """A new session for a valid token: (the cookie value, shown once; the session). None: bad token."""
        if not token.startswith(TOKEN_MARKER):
            return None
        d = digest(token)
        h = cast("dict[str, str]", await self.redis.hgetall(self.keys.admin_token(d)))
        if not h:
            return None
        cookie, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        expires = time.time() + ttl
        key = self.keys.admin_session(digest(cookie))
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"token": d, "csrf": csrf, "expires": f"{expires:.0f}"})
            pipe.expire(key, ttl)
            await pipe.execute()
        return cookie, AdminSession(_record(h), csrf, round(expires))

    async def session(self, cookie: str) -> AdminSession | None:
        """The session of a cookie, or None (unknown, expired, or its token revoked)."""
        s = cast("dict[str, str]", await self.redis.hgetall(self.keys.admin_session(digest(cookie))))
        if not s.get("token"):
            return None
        h = cast("dict[str, str]", await self.redis.hgetall(self.keys.admin_token(s["token"])))
        return AdminSession(_record(h), s.get("csrf", ""), float(s.get("expires") or 0)) if h else None

    async def close_session(self, cookie: str) -> None:
        await self.redis.delete(self.keys.admin_session(digest(cookie)))


def _record(h: dict[str, str]) -> AdminToken:
    return AdminToken(h.get("name", "?"), h.get("read_only") == "1", float(h.get("created") or 0), h.get("by", ""))
