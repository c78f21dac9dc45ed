"""In-process "brokers" for the cluster tests: the cluster classes (ClusterNode) without an engine, each
registered in the quota registry by the real liveness write (QuotaStore.heartbeat), as a broker process
is, and recording what other brokers forwarded to it."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

from mqtt_guard.cluster.forward import RemoteMessage
from mqtt_guard.cluster.node import ClusterNode
from mqtt_guard.store.connection import REDIS_ERRORS, make_async_client
from mqtt_guard.store.keys import Keys
from mqtt_guard.store.quota import QuotaStore
from mqtt_guard.tasks import cancel_and_wait

DEAD_AFTER = 1.0  # seconds without a heartbeat after which a test broker counts as dead
BEAT = 0.2


class Node:
    def __init__(self, url: str, prefix: str, name: str = "", **options: Any) -> None:
        self.url = url
        self.keys = Keys(prefix)
        self.broker_id = f"{name or 'b'}-{uuid.uuid4().hex[:6]}"
        self.received: list[RemoteMessage] = []
        options = {"liveness_interval": 0.2, "retry_interval": 0.1, **options}
        self.cluster = ClusterNode(url, self.keys, self.broker_id, self.received.append, **options)
        self.filters = self.cluster.filters
        self.table = self.cluster.table
        self.link = self.cluster.link
        self.inbox = self.cluster.inbox
        self.outbox = self.cluster.outbox
        self._redis = make_async_client(url, socket_timeout=0.5)
        self._store = QuotaStore(self._redis, self.keys)
        self._epoch = ""
        self._beat: asyncio.Task[None] | None = None

    async def start(self, *, register: bool = True) -> Node:
        """`register=False`: no heartbeat (a broker the registry never knew, or lost while nobody looked)."""
        if register:
            await self.beat_once()
            self._beat = asyncio.create_task(self._beating())
        await self.cluster.start()
        return self

    async def beat_once(self) -> None:
        beat = await self._store.heartbeat(self.broker_id, DEAD_AFTER, {"test": "1"}, self._epoch)
        if beat.fenced:  # reaped, or Redis restarted empty: register anew, as quota/heartbeat.py does
            beat = await self._store.heartbeat(self.broker_id, DEAD_AFTER, {"test": "1"}, "")
        self._epoch = beat.epoch

    async def _beating(self) -> None:
        while True:
            await asyncio.sleep(BEAT)
            with contextlib.suppress(*REDIS_ERRORS):
                await self.beat_once()

    def subscribe(self, entry: str) -> None:
        self.cluster.subscribed(entry)

    def unsubscribe(self, entry: str) -> None:
        self.cluster.unsubscribed(entry)

    def publish(self, topic: str, payload: bytes, qos: int = 0, **extra: Any) -> int:
        """What the engine would do for a PUBLISH of a local client."""
        message = RemoteMessage(topic, payload, qos, client_id=extra.pop("client_id", "pub"), **extra)
        return self.cluster.forward(message)

    async def die(self) -> None:
        """Stop everything at once, as a killed process: no leave, no more heartbeats."""
        await self._stop_beating()
        await cancel_and_wait(*self.link._tasks)
        self.link._tasks = []
        await self.link._writer.aclose()
        await self.inbox.stop()
        await self.outbox.close()
        await self._redis.aclose()

    async def stop(self) -> None:
        await self._stop_beating()
        await self.cluster.stop()
        await self._redis.aclose()

    async def _stop_beating(self) -> None:
        await cancel_and_wait(self._beat)  # (a bare cancel can be swallowed by a redis-py command in flight)
        self._beat = None
