"""The quota heartbeat (every `quota.sync_interval`): this broker's liveness in the registry, its
sessions' usage and queue depth, the leases of every entry that changed, lingering users handed back,
session slots topped up or returned, and brokers that stopped heartbeating reaped.

Also whether this broker is `alone` in the registry (registry.py answers some operations locally
then): the heartbeat learns it from Redis, and a change of the brokers key (an invalidation) makes it
doubtful until Redis is asked again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from ..config import QuotaConfig
from ..store.connection import REDIS_ERRORS
from ..store.quota import QuotaStore, RegistryOp, RegistryResult
from ..tasks import Coalescer, cancel_and_wait
from .allowance import Allowances, ClientQuota, UserQuota
from .ledger import monotonic
from .registry import SessionRegistry
from .sync import LeaseSync

log = logging.getLogger("mqtt_guard.quota")

FULL_SYNC_EVERY = 5  # heartbeats between syncs of entries that did not change
REAP_EVERY = 5  # heartbeats between looks for dead brokers
REPORT_SLICE = 200  # connections per step of the heartbeat report (the loop is given back between steps)

QueueDepth = Callable[[str], tuple[int, int]]
"""(messages, bytes) the engine holds for a client id (`ports.QueueDepths.queue_depth`)."""


class Heartbeat:
    def __init__(
        self,
        config: QuotaConfig,
        store: QuotaStore,
        broker_id: str,
        book: Allowances,
        registry: SessionRegistry,
        sync: LeaseSync,
        queue_depth: QueueDepth,
        release_user: Callable[[UserQuota], None],
    ) -> None:
        self.config = config
        self.store = store
        self.broker_id = broker_id
        self.book = book
        self.registry = registry
        self.sync = sync
        self.queue_depth = queue_depth
        self.release_user = release_user
        self.started = time.time()
        self.heartbeats = 0
        self._ticks = 0
        self._late: list[ClientQuota] = []  # admitted while Redis was unreachable: registered later
        self._alone_checks = 0  # bumped when the brokers key changes (registry.alone is then re-checked)
        self._alone: Coalescer[int] = Coalescer(self._check_alone, "mqtt-guard-quota-alone")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="mqtt-guard-quota-heartbeat")

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        await self._alone.stop()

    def register_later(self, cq: ClientQuota) -> None:
        """`cq` was admitted without a registration (Redis unreachable): register it at a heartbeat."""
        self._late.append(cq)

    # -- the brokers key ------------------------------------------------------------------------------
    def brokers_changed(self) -> None:
        """A broker joined, heartbeated or left: until Redis says again that this one is alone, it is not."""
        self.registry.alone = False
        self._alone_checks += 1
        self._alone.add((self._alone_checks,))

    async def _check_alone(self, _changes: set[int]) -> set[int] | None:
        checked = self._alone_checks
        try:
            alone = await self.store.alone(self.broker_id)
        except REDIS_ERRORS:
            return None  # the next heartbeat tells
        if checked == self._alone_checks:  # (no change arrived meanwhile: else the next round asks again)
            self.registry.alone = alone
        return None

    # -- the loop -----------------------------------------------------------------------------------------
    async def _loop(self) -> None:
        interval = self.config.sync_interval
        while True:
            started = monotonic()
            try:
                await self._tick()
                self.book.redis_back()
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS as exc:
                self.book.redis_lost(exc)
            except Exception:
                log.exception("quota heartbeat failed")
            await asyncio.sleep(max(0.01, interval - (monotonic() - started)))

    async def _tick(self) -> None:
        self._ticks += 1
        now = time.time()
        checked = self._alone_checks
        existed, _, brokers = await self.store.heartbeat(
            self.broker_id,
            self.config.broker_dead_after,
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started": f"{self.started:.0f}",
                "sessions": len(self.book.clients),
            },
        )
        if checked == self._alone_checks:  # (the brokers key did not change meanwhile)
            self.registry.alone = brokers <= 1 and existed
        self.heartbeats += 1
        if not existed:
            await self._reregister()
        failed, self.registry.failed_closes = self.registry.failed_closes, []
        for op in failed:
            self.registry.submit(op)
        self._register_late()
        self._end_lingering(monotonic())
        self._maintain_slots(monotonic(), self._ticks % FULL_SYNC_EVERY == 0)
        await self._report_sessions(now)
        self.book.prefetch(now)
        full = self._ticks % FULL_SYNC_EVERY == 0
        mono = monotonic()
        due = [
            e
            for e in self.book.entries.values()
            if full or e.dirty() or not e.synced or e.low() or mono < e.contended_until
        ]
        await self.sync.sync(due)
        if self._ticks % REAP_EVERY == 0:
            reaped = await self.store.reap_dead()
            for broker_id, sessions in reaped.items():
                if sessions >= 0:  # -1: alive again, -2: somebody else reaped it first
                    log.warning(
                        "broker %s stopped heartbeating: removed its %d session(s) and its quota leases",
                        broker_id,
                        sessions,
                    )

    async def _reregister(self) -> None:
        """This broker's record is gone (first heartbeat, Redis lost data, or we were taken for dead)."""
        if self.heartbeats > 1:
            log.warning(
                "broker %s was missing from Redis (Redis restarted empty, or this broker was taken "
                "for dead): registering its %d session(s) again",
                self.broker_id,
                len(self.book.clients),
            )
        self.registry.forget_all()  # its session slots are gone with it
        for cq in list(self.book.clients.values()):
            client = cq.client
            cq.reported = {}

            def done(res: RegistryResult | BaseException, cq: ClientQuota = cq) -> None:
                if isinstance(res, BaseException):
                    return
                cq.registered = cq.confirmed = res.ok
                if not res.ok:
                    log.warning(
                        "client %r is registered on broker %s now; not registering it here",
                        cq.client.client_id,
                        res.prev_broker,
                    )

            self.registry.submit(RegistryOp("o", client.client_id, cq.conn, client.username, cq.since, None, "r"), done)
        await self.registry.drain()

    def _register_late(self) -> None:
        """Register the connections admitted while Redis was unreachable (unless the client id went to
        another broker meanwhile), so they count for `sessions` and the sidecar sees them."""
        pending, self._late = self._late, []
        clients = self.book.clients
        for cq in pending:
            client = cq.client
            if clients.get(client.client_id) is not cq or cq.confirmed:
                continue

            def done(res: RegistryResult | BaseException, cq: ClientQuota = cq) -> None:
                if isinstance(res, BaseException):
                    self._late.append(cq)
                elif res.ok:
                    cq.confirmed = True

            self.registry.submit(RegistryOp("o", client.client_id, cq.conn, client.username, cq.since, None, "r"), done)

    def _end_lingering(self, mono: float) -> None:
        linger = self.config.linger
        for user in list(self.book.users.values()):
            if user.idle_since is not None and not user.clients and mono - user.idle_since >= linger:
                self.release_user(user)

    def _maintain_slots(self, mono: float, full: bool) -> None:
        """Session slots: top up for users that connected or disconnected here within `quota.linger` and
        are far from their limit; hand back the others'."""
        linger = self.config.linger
        for username, st in list(self.registry.slots.items()):
            self.registry.maintain(username, mono - st.last_used < linger, full)

    async def _report_sessions(self, now: float) -> None:
        updates = []
        clients = self.book.clients
        queue_depth = self.queue_depth
        for i, cq in enumerate(list(clients.values())):
            if i and i % REPORT_SLICE == 0:
                await asyncio.sleep(0)  # deliveries go on (one pass over 1,000 clients takes ms)
            if not cq.confirmed or clients.get(cq.client.client_id) is not cq:
                continue  # its registration is still queued (reported once it exists), or it has left
            fields: dict[str, Any] = dict(cq.usage)
            try:
                depth: tuple[int, int] | None = queue_depth(cq.client.client_id)
            except Exception:  # noqa: BLE001 - the engine's view is optional here
                depth = None
            if depth is not None:
                fields["queue_messages"], fields["queue_bytes"] = depth
                max_queue = cq.user.limits.max_queue if cq.user is not None else None
                if max_queue is not None and depth[0] > max_queue:
                    if cq.queue_over_since is None:
                        cq.queue_over_since = now
                else:
                    cq.queue_over_since = None
                fields["queue_over_since"] = f"{cq.queue_over_since:.3f}" if cq.queue_over_since else ""
            changed = {k: v for k, v in fields.items() if cq.reported.get(k) != v}
            if changed:
                updates.append((cq.client.client_id, cq.conn, changed, cq))
        if updates:
            await self.store.update_sessions([(cid, conn, changed) for cid, conn, changed, _ in updates])
            for _, _, changed, cq in updates:
                cq.reported.update(changed)
