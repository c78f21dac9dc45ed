"""Bans and failed-login counts in Redis: every Redis call of login throttling (auth/throttle.py holds
the rules, auth/gate.py the broker's side, cli/ban.py the admin's).

Nothing here runs per CONNECT: a broker adds its failure counts in one pipeline per flush (`add`,
~every 100 ms while there are failures) and reads ban keys when the invalidation listener says they
changed (`read`) or at start (`all`). Keys come from `Keys` (`ban:<id>`, `throttle:addr|user:...`).
"""

from __future__ import annotations

import math
import time

import redis.asyncio as aioredis
from redis.typing import EncodableT, FieldT

from ..auth.throttle import Ban, parse_ban_id
from .keys import Keys, glob_escape

F_REASON = "reason"
F_BY = "by"
F_AT = "at"
F_FAILURES = "failures"
F_KICK = "kick"


class BanStore:
    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def add(
        self, addr: dict[str, int], pair: dict[tuple[str, str], int], window: float
    ) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
        """Add failure counts in one round trip; the cluster-wide count of each key's window after it. A
        window starts at its key's first failure (SET NX with the window's TTL; INCRBY keeps the TTL)."""
        ms = max(1, int(window * 1000))
        names = [self.keys.throttle_addr(a) for a in addr] + [self.keys.throttle_user(a, u) for a, u in pair]
        async with self.redis.pipeline(transaction=False) as pipe:
            for name, n in zip(names, [*addr.values(), *pair.values()], strict=True):
                pipe.set(name, 0, px=ms, nx=True)
                pipe.incrby(name, n)
            out = await pipe.execute()
        totals = [int(v) for v in out[1::2]]
        return dict(zip(addr, totals[: len(addr)], strict=True)), dict(zip(pair, totals[len(addr) :], strict=True))

    async def put(self, ban: Ban) -> None:
        """Write a ban (replacing one with the same id); `ban.until` is unix seconds (inf: no expiry)."""
        key = self.keys.ban(ban.id)
        fields: dict[FieldT, EncodableT] = {F_REASON: ban.reason, F_BY: ban.by, F_AT: f"{time.time():.3f}"}
        if ban.failures:
            fields[F_FAILURES] = ban.failures
        if ban.kick:
            fields[F_KICK] = 1
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping=fields)
            if not math.isinf(ban.until):
                pipe.pexpireat(key, max(1, int(ban.until * 1000)))
            await pipe.execute()

    async def read(self, ban_ids: list[str]) -> dict[str, Ban | None]:
        """The ban each id holds now (None: none), in one round trip."""
        if not ban_ids:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for ban_id in ban_ids:
                key = self.keys.ban(ban_id)
                pipe.hgetall(key)
                pipe.pttl(key)
            out = await pipe.execute()
        now = time.time()
        found: dict[str, Ban | None] = {}
        for i, ban_id in enumerate(ban_ids):
            h, pttl = out[2 * i], out[2 * i + 1]
            parsed = parse_ban_id(ban_id)
            if not h or pttl == -2 or parsed is None:
                found[ban_id] = None
                continue
            kind, network, username = parsed
            found[ban_id] = Ban(
                kind,
                network,
                now + pttl / 1000 if pttl > 0 else math.inf,
                reason=h.get(F_REASON, ""),
                by=h.get(F_BY, ""),
                username=username,
                failures=int(h.get(F_FAILURES, 0) or 0),
                kick=h.get(F_KICK) == "1",
            )
        return found

    async def ids(self) -> list[str]:
        head = self.keys.bans_head()
        return [key[len(head) :] async for key in self.redis.scan_iter(match=glob_escape(head) + "*", count=1000)]

    async def all(self) -> list[Ban]:
        """Every ban in force (SCAN of `ban:*`)."""
        return [ban for ban in (await self.read(await self.ids())).values() if ban is not None]

    async def remove(self, ban_ids: list[str], addresses: list[str] | None = None) -> int:
        """Delete bans, and the failure counts of `addresses` (so an unbanned address starts afresh);
        the number of bans deleted."""
        if not ban_ids:
            return 0
        addresses = addresses or []
        counts = [self.keys.throttle_addr(a) for a in addresses]
        head = glob_escape(self.keys.throttle_head() + "user:")
        for a in addresses:
            counts += [key async for key in self.redis.scan_iter(match=f"{head}{glob_escape(a)} *", count=1000)]
        removed = int(await self.redis.delete(*[self.keys.ban(b) for b in ban_ids]))
        if counts:
            await self.redis.delete(*counts)
        return removed
