"""Lease sync: report what this broker spent and refill what it holds, in one pipelined batch.

The heartbeat syncs every entry that changed; an entry that ran low or a window that rolled is synced
sooner, by the urgent loop, at most every `URGENT_GAP` (allowance.py puts its key in `urgent` and calls
`wake`). A sync that finds this broker short while other brokers hold allowance of the same user asks
them to resync at once (kicks.py executes that request on their side).
"""

from __future__ import annotations

import asyncio
import logging

from ..store.connection import REDIS_ERRORS
from ..store.quota import QuotaStore
from ..tasks import cancel_and_wait
from .allowance import URGENT_GAP, Allowances, UserQuota
from .ledger import Entry, monotonic

log = logging.getLogger("mqtt_guard.quota")


class LeaseSync:
    def __init__(self, store: QuotaStore, broker_id: str, book: Allowances, sync_interval: float) -> None:
        self.store = store
        self.broker_id = broker_id
        self.book = book
        self.sync_interval = sync_interval
        self._task: asyncio.Task[None] | None = None

    async def sync(self, entries: list[Entry]) -> None:
        """Report and refill `entries` (those with a sync in flight are left to it)."""
        entries = [e for e in entries if not e.in_flight]
        if not entries:
            return
        mono = monotonic()
        requests = []
        for e in entries:
            e.in_flight = True
            requests.append(e.request(mono))
        try:
            results = await self.store.sync(self.broker_id, requests)
        finally:
            for e in entries:
                e.in_flight = False
        window = 3 * self.sync_interval
        holders: dict[str, set[str]] = {}
        known = self.book.entries
        for entry, req, res in zip(entries, requests, results, strict=True):
            entry.apply(req, res, self.broker_id, mono, window)
            if entry.release and res.mine == 0 and entry.total == entry.reported:
                if known.get(entry.key) is entry:
                    del known[entry.key]
            for broker_id in res.holders:
                holders.setdefault(broker_id, set()).add(entry.key)
        self.book.redis_back()
        for broker_id, keys in holders.items():
            # We are short while another broker holds allowance of the same user: ask it to resync now
            # (it then keeps only about what it spends, see Entry.want) instead of at its next full sync.
            for key in sorted(keys):
                await self.store.push(broker_id, {"resync": key, "by": self.broker_id})

    async def first_sync(self, user: UserQuota) -> None:
        """The first lease of a user that connected here (a CONNECT of it awaits this)."""
        try:
            await self.sync(list(user.current.values()))
        except REDIS_ERRORS as exc:
            self.book.redis_lost(exc)

    def wake(self) -> None:
        """Sync the book's `urgent` entries soon (one task at a time). Not a `tasks.Coalescer`: rounds are
        paced (URGENT_GAP) and a batch that fails is left to the heartbeat, not retried here."""
        if self.book.urgent and (self._task is None or self._task.done()):
            try:
                self._task = asyncio.get_running_loop().create_task(self._urgent_loop())
            except RuntimeError:  # no loop (closing): the heartbeat or shutdown will sync
                pass

    async def _urgent_loop(self) -> None:
        book = self.book
        while book.urgent:
            batch, book.urgent = book.urgent, set()
            entries = [book.entries[k] for k in batch if k in book.entries]
            try:
                await self.sync(entries)
            except REDIS_ERRORS as exc:
                book.redis_lost(exc)
                return  # the heartbeat retries
            except Exception:
                log.exception("quota sync failed")
                return
            await asyncio.sleep(URGENT_GAP)

    async def close(self) -> None:
        await cancel_and_wait(self._task)
