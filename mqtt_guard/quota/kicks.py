"""This broker's kick queue in Redis (`keys.kick_queue`): what other brokers, the sidecar and the CLI ask
of it, and what it asks of them.

Four kinds of message arrive: a kick of one of its connections (checked against the connection id, so
a client that reconnected meanwhile is not hit), a request to resync an entry (another broker is short
of a user's allowance that this one holds), a request to give back the session slots of a user
(another broker refused a CONNECT of it), and `mqtt-guard session drop` (sent to every live broker:
whichever holds the client's session, connected or offline, discards it). The consumer has a Redis
connection of its own: it blocks in BLPOP.

Also `over_quota`: the kick of a client that went over a limit with `on_exceed: disconnect`, sent
through this broker's own queue so that it is audited and recorded like any other.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..ports import Drop, Forget, Kick
from ..reasons import kick_code
from ..store.connection import REDIS_ERRORS, make_async_client
from ..store.generation import Trust, gate
from ..store.quota import MAX_BLOCK_SECONDS, Block, QuotaStore
from ..tasks import cancel_and_wait
from .allowance import Allowances, ClientQuota
from .caches import BlockCache
from .ledger import monotonic
from .registry import SessionRegistry

log = logging.getLogger("mqtt_guard.quota")

Spawn = Callable[[Awaitable[Any]], "asyncio.Future[Any]"]
"""Run in the background, owned by the enforcer (awaited at shutdown)."""


class KickQueue:
    def __init__(
        self,
        store: QuotaStore,
        broker_id: str,
        book: Allowances,
        registry: SessionRegistry,
        blocks: BlockCache,
        kick: Kick,
        spawn: Spawn,
        *,
        drop_session: Drop | None = None,
        forget_session: Forget | None = None,
        redis_url: str,
        sync_interval: float,
        kick_retry: float,
        trust: Trust,
    ) -> None:
        """`trust`: nothing read from a Redis that lost this deployment's data is acted on (its
        connection is gated, and a message popped just before trust went is dropped)."""
        self.store = store
        self.broker_id = broker_id
        self.book = book
        self.registry = registry
        self.blocks = blocks
        self.kick = kick
        self.spawn = spawn
        self.drop_session = drop_session
        self.forget_session = forget_session
        self.redis_url = redis_url
        self.sync_interval = sync_interval
        self.kick_retry = kick_retry
        self.trust = trust
        self.redis: Any = None  # the consumer's own connection (BLPOP blocks it)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.redis = make_async_client(self.redis_url, socket_timeout=5.0)
        gate(self.redis, self.trust)
        self._task = asyncio.create_task(self._loop(), name="mqtt-guard-kicks")

    async def stop(self) -> None:
        """Stop consuming (a broker that goes away, or crashes in a test)."""
        await cancel_and_wait(self._task)
        self._task = None

    async def close(self) -> None:
        await self.stop()
        if self.redis is not None:
            await self.redis.aclose()

    # -- what arrives ---------------------------------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            try:
                item = await self.store.pop_kick(self.redis, self.broker_id, timeout=1)
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS + (Exception,) as exc:  # any failure: wait and retry
                if isinstance(exc, REDIS_ERRORS):
                    self.book.redis_lost(exc)
                else:
                    log.exception("kick consumer failed")
                await asyncio.sleep(0.5)
                continue
            if item is not None:
                await self.execute(item)

    async def execute(self, item: dict[str, str]) -> None:
        if self.trust.reason is not None:
            log.warning(
                "%s from Redis not acted on: %s", "kick" if item.get("client_id") else "request", self.trust.reason
            )
            return
        slots = item.get("slots")
        if slots:
            # Another broker refused a CONNECT of this user while we hold unused session slots of it.
            self.registry.give_back(str(slots))
            return
        resync = item.get("resync")
        if resync:
            entry = self.book.entries.get(str(resync))
            if entry is not None:
                entry.contended_until = monotonic() + 3 * self.sync_interval
                self.book.urgent.add(entry.key)
                self.book.wake()
            return
        forgotten = item.get("forget")
        if forgotten:  # a persistent session held here offline was resumed on another broker (durable state)
            if self.forget_session is not None:
                self.forget_session(str(forgotten), str(item.get("by") or "?"))
            return
        dropped = item.get("drop")
        if dropped:
            await self._drop(str(dropped), str(item.get("reason") or "dropped by an admin"), item.get("by") or "?")
            return
        client_id = str(item.get("client_id") or "")
        conn = str(item.get("conn") or "")
        reason = str(item.get("reason") or "kicked")
        code = kick_code(item.get("code"))  # 0x98 for a record written before MQTT 5
        cq = self.book.clients.get(client_id)
        if cq is None or (conn and cq.conn != conn):
            log.info("kick for client %r (%s) ignored: not connected here any more", client_id, reason)
            return
        log.warning(
            "kicking client %r (user %r) on request of %s: %s",
            client_id,
            cq.client.username,
            item.get("by") or "?",
            reason,
        )
        try:
            if not await self.kick(client_id, reason, code):
                log.warning(
                    "kick for client %r (%s) not carried out: no such connection in the engine", client_id, reason
                )
        except Exception:
            log.exception("kicking client %r failed", client_id)

    async def _drop(self, client_id: str, reason: str, by: str) -> None:
        try:
            if self.drop_session is None or not await self.drop_session(client_id, f"{reason} (by {by})"):
                log.info("session drop for client %r (by %s) ignored: no session of it here", client_id, by)
        except Exception:
            log.exception("dropping the session of client %r failed", client_id)

    # -- what this broker sends ------------------------------------------------------------------------
    async def push_quietly(self, broker_id: str, message: dict[str, str]) -> None:
        try:
            await self.store.push(broker_id, message)
        except REDIS_ERRORS as exc:
            self.book.redis_lost(exc)

    async def push_kick(self, broker_id: str, client_id: str, conn: str, reason: str, code: int) -> None:
        await self.store.push(
            broker_id, {"client_id": client_id, "conn": conn, "reason": reason, "by": self.broker_id, "code": int(code)}
        )

    def over_quota(self, cq: ClientQuota, reason: str, block_until: float, code: int) -> None:
        """on_exceed: disconnect (Allowances.exceeded), in the background; `code`: the DISCONNECT reason."""
        self.spawn(self._over_quota(cq, reason, block_until, code))

    async def _over_quota(self, cq: ClientQuota, reason: str, block_until: float, code: int) -> None:
        """The kick goes through this broker's own kick queue (audited, and recorded on the session so
        the sidecar does not kick it again); with Redis down, directly."""
        client = cq.client
        user = client.username
        try:
            await self.registry.drain()  # its registration may still be queued: the kick needs it
            if block_until and user is not None:
                # a window ending decades away (`100/1000mo`): block for the longest time a block may last
                block_until = min(block_until, time.time() + MAX_BLOCK_SECONDS)
                key = self.store.keys.block_user(user)
                if await self.store.set_block(
                    key, reason, block_until, self.broker_id, username=user, client_id=client.client_id
                ):
                    self.blocks.note(Block(reason, block_until, self.broker_id, key))
            queued, _ = await self.store.kick(
                client.client_id,
                reason,
                self.broker_id,
                broker_id=self.broker_id,
                conn=cq.conn,
                dedupe=self.kick_retry,
                code=code,
            )
            if queued:
                return
        except REDIS_ERRORS as exc:
            self.book.redis_lost(exc)
        if self.book.clients.get(client.client_id) is cq:
            await self.kick(client.client_id, reason, code)
