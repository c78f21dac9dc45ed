"""The generation marker: proof that the Redis a running broker reads still holds this deployment's data.

A Redis restarted empty (flushed, replaced, failed over to an empty replica) looks exactly like a
deployment in which every user, rule and quota was deleted; a broker believing it would drop messages
as its ACL rules reload empty and then disconnect every client as "user deleted". So the first broker
or writing CLI command on a Redis without a marker creates one (`ensure`, SET NX: a random token and
its creation time), each broker remembers the marker it started with, and a broker that sees it
missing or changed treats Redis as unavailable (the configured fail modes) until either

- the marker it knew comes back (an admin restored a backup), or
- an admin runs `mqtt-guard store adopt`, which writes a new marker flagged `adopted`: a broker accepts
  a different marker only when it is adopted and was created after the one it knew (so an old backup
  carrying an older adopted marker is not accepted by itself).

While distrusted, `gate` makes every command of the broker's main Redis client fail as a Redis outage
would, so each reader and writer (authenticator, ACL and quota reloads, user refreshes, quota sync,
session registry, analytics) runs the Redis-down path it already has: one rule, one implementation.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis

from ..tasks import cancel_and_wait
from . import schema
from .connection import REDIS_ERRORS
from .keys import Keys

log = logging.getLogger("mqtt_guard.store.generation")


class RedisDistrusted(aioredis.ConnectionError):
    """Raised instead of running a command while the broker distrusts Redis: a Redis outage to every
    caller (it is a ConnectionError, one of `connection.REDIS_ERRORS`)."""


@dataclass(frozen=True, slots=True)
class Generation:
    """One marker value. `adopted`: written by `mqtt-guard store adopt`."""

    token: str
    created: float
    adopted: bool = False
    by: str = ""

    def encode(self) -> str:
        return json.dumps(
            {"token": self.token, "created": self.created, "adopted": self.adopted, "by": self.by}, sort_keys=True
        )

    @classmethod
    def decode(cls, raw: str) -> Generation:
        """Never raises: a value that is not ours is a marker with that text as its token (a change)."""
        try:
            data = json.loads(raw)
            return cls(str(data["token"]), float(data["created"]), bool(data.get("adopted")), str(data.get("by", "")))
        except (ValueError, TypeError, KeyError):
            return cls(raw, 0.0)

    @classmethod
    def new(cls, *, by: str, adopted: bool = False) -> Generation:
        return cls(secrets.token_hex(8), time.time(), adopted, by)

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.created))
        return f"{self.token} (created {when} UTC by {self.by or '?'}{', adopted' if self.adopted else ''})"


def accepts(known: Generation, current: Generation | None) -> bool:
    """Whether a broker that knew `known` may trust a Redis whose marker is `current` (the rule above)."""
    if current is None:
        return False
    if current.token == known.token:
        return True
    return current.adopted and current.created > known.created


async def read(redis: aioredis.Redis, keys: Keys) -> Generation | None:
    raw = cast("str | None", await redis.get(keys.generation()))  # a decode_responses client
    return None if raw is None else Generation.decode(raw)


async def ensure(redis: aioredis.Redis, keys: Keys, *, by: str) -> Generation:
    """The marker, created first if this Redis has none (SET NX in a transaction with the GET); a new
    deployment's Redis is stamped with the key layout version of this release (store/schema.py)."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(keys.generation(), Generation.new(by=by).encode(), nx=True)
        pipe.get(keys.generation())
        created, raw = await pipe.execute()
    if created:
        await schema.stamp_new(redis, keys)
    return Generation.decode(raw)


async def adopt(redis: aioredis.Redis, keys: Keys, *, by: str) -> Generation:
    """A new adopted marker: brokers that distrust this Redis accept it and reload everything from it."""
    marker = Generation.new(by=by, adopted=True)
    await redis.set(keys.generation(), marker.encode())
    return marker


class Trust:
    """Whether the broker's main Redis client may be used: `reason` is None, or why it may not."""

    __slots__ = ("reason",)

    def __init__(self) -> None:
        self.reason: str | None = None


def gate(client: aioredis.Redis, trust: Trust) -> None:
    """Make every command of `client` (plain, pipelined, scripts, transactions: all take a connection
    from its pool) fail with `RedisDistrusted` while `trust.reason` is set."""
    pool = client.connection_pool
    get_connection: Callable[..., Awaitable[Any]] = pool.get_connection  # unannotated in redis-py

    async def gated(*args: Any, **kwargs: Any) -> Any:
        reason = trust.reason
        if reason is not None:
            raise RedisDistrusted(reason)
        return await get_connection(*args, **kwargs)

    setattr(pool, "get_connection", gated)  # noqa: B010 - an instance attribute shadowing the method, on purpose


class GenerationWatch:
    """A broker's side of the marker: remembers the one it started with, closes `trust` while it checks
    the marker (after the invalidation channel reconnected or saw a FLUSH, or the marker key changed)
    and while the marker is missing or changed, and calls `on_trusted` (reload everything) each time a
    check passes. It reads through its own small client, which `gate` leaves open."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        trust: Trust,
        *,
        by: str,
        on_trusted: Callable[[], None],
        retry_interval: float = 0.5,
        poll_interval: float = 5.0,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.trust = trust
        self.by = by
        self.on_trusted = on_trusted
        self.retry_interval = retry_interval
        self.poll_interval = poll_interval  # while distrusted, in case a restore sent no invalidation
        self.known: Generation | None = None
        self.distrusted = False  # the marker is missing or changed (logged once per episode)
        self._again = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Create or read the marker; a Redis that is down now is checked when it comes back. A key
        layout this release cannot run on raises `schema.SchemaMismatch` (the broker refuses to start)."""
        try:
            self.known = await ensure(self.redis, self.keys, by=self.by)
            await schema.check(self.redis, self.keys)
        except REDIS_ERRORS:
            pass

    def check(self, *, suspect: bool = True) -> None:
        """Distrust Redis until the marker has been read again (needs a running event loop). One flag,
        not a set of items, and a loop that also polls while distrusted: not a `tasks.Coalescer`.
        `suspect=False` (the layout version key changed: Redis still holds our data) reads it again
        without distrusting Redis meanwhile."""
        if suspect and self.trust.reason is None:
            self.trust.reason = "checking this deployment's generation marker in Redis"
        self._again = True
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="mqtt-guard-generation")

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        await self.redis.aclose()

    async def _run(self) -> None:
        while self._again:
            self._again = False
            self._wake.clear()
            try:
                if self.known is None:
                    current: Generation | None = await ensure(self.redis, self.keys, by=self.by)
                else:
                    current = await read(self.redis, self.keys)
                await schema.check(self.redis, self.keys)
            except REDIS_ERRORS:
                self._again = True  # Redis is down: the commands the gate refuses would fail anyway
                await asyncio.sleep(self.retry_interval)
                continue
            except schema.SchemaMismatch as exc:  # the layout changed under a running broker
                self._distrust_layout(str(exc))
                await self._idle()
                continue
            if self.known is None or accepts(self.known, current):
                self._trust(current)
            else:
                self._distrust(current)
                await self._idle()

    async def _idle(self) -> None:
        """While distrusted: wait for a change of the watched keys, or poll (a restore may send none)."""
        if not self._again:
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            except TimeoutError:
                pass
            self._again = True

    def _trust(self, current: Generation | None) -> None:
        if self.known is not None and current is not None and current.token != self.known.token:
            log.warning("Redis generation marker adopted: %s (was %s)", current.describe(), self.known.describe())
        if self.distrusted:
            log.warning("Redis holds this deployment's data again: trusting it; reloading users, rules and quotas")
        self.known = current or self.known
        self.distrusted = False
        self.trust.reason = None
        self.on_trusted()

    def _distrust(self, current: Generation | None) -> None:
        assert self.known is not None
        what = "missing" if current is None else f"changed to {current.describe()}"
        reason = (
            f"Redis lost this deployment's data (generation marker {self.known.describe()} {what}): treating "
            "Redis as unavailable until it comes back or `mqtt-guard store adopt`"
        )
        self.trust.reason = f"Redis distrusted: generation marker {self.known.token} {what.split(' ', 1)[0]}"
        if not self.distrusted:
            log.error("%s", reason)
        self.distrusted = True

    def _distrust_layout(self, problem: str) -> None:
        """The key layout changed to one this release cannot read (store/schema.py)."""
        self.trust.reason = "Redis distrusted: key layout version"
        if not self.distrusted:
            log.error("%s; treating Redis as unavailable", problem)
        self.distrusted = True
