"""Tells the broker which of our Redis keys changed, whoever changed them (CLI, redis-cli, a script).

It uses Redis server-assisted client-side caching in broadcast mode (`CLIENT TRACKING on BCAST
PREFIX <prefix>acl: PREFIX <prefix>user: ... REDIRECT <id>`, Redis >= 6): Redis publishes the name of
every modified key under those prefixes on `__redis__:invalidate` to our subscriber connection. It
needs no server configuration (keyspace notifications would need `notify-keyspace-events`, which
managed Redis services often forbid).

Tracking lives on a second connection; if either connection drops, nothing guarantees we saw every
change, so after reconnecting the listener calls `on_reset()` and the owner reloads all it caches.
The subscriber speaks RESP2: with RESP3 Redis sends invalidations as push frames that redis-py's
pub/sub reader does not surface.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence

import redis.asyncio as aioredis

from ..tasks import cancel_and_wait
from .connection import REDIS_ERRORS, make_async_client

log = logging.getLogger("mqtt_guard.store.invalidation")

CHANNEL = "__redis__:invalidate"


class InvalidationListener:
    def __init__(
        self,
        url: str,
        prefixes: Sequence[str],
        on_keys: Callable[[list[str]], None],
        on_reset: Callable[[], None],
        *,
        health_interval: float = 1.0,
        retry_interval: float = 0.5,
    ) -> None:
        self.url = url
        self.prefixes = list(prefixes)
        self.on_keys = on_keys
        self.on_reset = on_reset
        self.health_interval = health_interval
        self.retry_interval = retry_interval
        self.connected = asyncio.Event()
        # Bumped whenever the listener connects, disconnects or resets: a value read while `connected`
        # is set, and unchanged later, proves no invalidation can have been missed in between.
        self.generation = 0
        self._task: asyncio.Task[None] | None = None
        self._was_connected = False  # the session that just ended had been connected

    def stale(self) -> None:
        """Whatever was read before now may be outdated (changes were seen but not applied): readers
        that keep values per `generation` read them again."""
        self.generation += 1

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="mqtt-guard-invalidation")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        first = True
        while True:
            try:
                await self._session(first)
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS + (aioredis.RedisError,) as exc:
                if self._was_connected:  # (`_session` has cleared `connected` on its way out)
                    log.warning("invalidation channel lost (%s); will reload caches on reconnect", exc)
            except Exception:
                log.exception("invalidation listener failed; restarting it")
            self.connected.clear()
            first = False
            await asyncio.sleep(self.retry_interval)

    @staticmethod
    async def _check_tracking(tracker: aioredis.Redis, sub_id: str) -> None:
        await _check_tracking_info(tracker, sub_id)

    async def _session(self, first: bool) -> None:
        name = f"mqtt-guard-inval-{uuid.uuid4().hex[:12]}"
        sub = make_async_client(self.url, socket_timeout=None, socket_connect_timeout=2, protocol=2, client_name=name)
        tracker = make_async_client(self.url, single_connection_client=True)
        pubsub = sub.pubsub()
        try:
            await pubsub.subscribe(CHANNEL)
            await pubsub.get_message(timeout=2)  # the subscribe confirmation
            sub_id = next(c["id"] for c in await tracker.client_list(_type="pubsub") if c.get("name") == name)
            args: list[str] = ["CLIENT", "TRACKING", "on", "REDIRECT", str(sub_id), "BCAST"]
            for prefix in self.prefixes:
                args += ["PREFIX", prefix]
            await tracker.execute_command(*args)  # type: ignore[no-untyped-call]  # unannotated in redis-py
            self.generation += 1
            self.connected.set()
            if not first:
                log.info("invalidation channel restored; reloading cached rules and users")
                self.on_reset()
            loop = asyncio.get_running_loop()
            next_ping = loop.time() + self.health_interval
            while True:
                message = await pubsub.get_message(timeout=self.health_interval)
                if message is not None and message.get("type") == "message":
                    keys = message.get("data")
                    if keys is None:  # FLUSHDB/FLUSHALL: everything may have changed
                        self.generation += 1
                        self.on_reset()
                    else:
                        self.on_keys(list(keys))
                if loop.time() >= next_ping:
                    await self._check_tracking(tracker, sub_id)
                    next_ping = loop.time() + self.health_interval
        finally:
            self._was_connected = self.connected.is_set()
            self.connected.clear()
            self.generation += 1
            await asyncio.gather(
                pubsub.aclose(),  # type: ignore[no-untyped-call]  # PubSub.aclose is unannotated in redis-py
                sub.aclose(),
                tracker.aclose(),
                return_exceptions=True,
            )


async def _check_tracking_info(tracker: aioredis.Redis, sub_id: str) -> None:
    """redis-py reconnects silently, and a new connection has no tracking; so ask Redis itself."""
    info = await tracker.execute_command("CLIENT", "TRACKINGINFO")  # type: ignore[no-untyped-call]  # unannotated in redis-py
    flags = info.get("flags", []) if isinstance(info, dict) else []
    redirect = info.get("redirect") if isinstance(info, dict) else None
    if "on" not in flags or "broken_redirect" in flags or int(redirect or -1) != int(sub_id):
        raise aioredis.ConnectionError(f"client tracking is no longer active ({flags}, redirect {redirect})")
