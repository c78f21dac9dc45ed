"""Background-task plumbing shared by every long-lived loop (listeners, flushers, monitors) and by the
reloads that follow changes in Redis."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Generic, TypeVar

log = logging.getLogger("mqtt_guard")

T = TypeVar("T")

RECANCEL_EVERY = 0.1  # seconds between cancels of a task that is still running


async def cancel_and_wait(*tasks: asyncio.Task[object] | None) -> None:
    """Cancel the tasks and wait until they have really finished, so nothing outlives its owner.

    A task is cancelled again while it keeps running: a cancellation can be swallowed by code it awaits
    (seen with a redis-py command in flight: the heartbeat loop went on to its sleep, and a close that
    awaited it once hung forever). Whatever the tasks raised is retrieved, not re-raised."""
    live = [t for t in tasks if t is not None and not t.done()]
    tries = 0
    while live:
        for task in live:
            task.cancel()
        await asyncio.wait(live, timeout=RECANCEL_EVERY)
        live = [t for t in live if not t.done()]
        tries += 1
        if live and tries == 10:
            log.warning("background task(s) %s still running after %d cancels", [t.get_name() for t in live], tries)
    for maybe in tasks:
        if maybe is not None and maybe.done() and not maybe.cancelled():
            maybe.exception()


class Coalescer(Generic[T]):
    """Work on changed items (users, ACL subjects, quota limits) in one background task: items that
    arrive while a round runs join the next round, so a burst of invalidations costs one reload per
    item, not one task per notification.

    `work(batch)` returns the items it could not handle (Redis unreachable): they are retried after
    `retry_after` seconds, together with whatever arrived meanwhile. A task is started only when there
    is something to do, and ends when nothing is left."""

    def __init__(self, work: Callable[[set[T]], Awaitable[set[T] | None]], name: str, retry_after: float = 0.5) -> None:
        self._work = work
        self._name = name
        self._retry_after = retry_after
        self.pending: set[T] = set()
        self._task: asyncio.Task[None] | None = None

    def add(self, items: Iterable[T]) -> None:
        """Queue items for the next round; needs a running event loop."""
        self.pending.update(items)
        if self.pending and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self._name)

    async def _run(self) -> None:
        while self.pending:
            batch, self.pending = self.pending, set()
            failed = await self._work(batch)
            if failed:
                self.pending |= failed
                await asyncio.sleep(self._retry_after)

    async def wait_idle(self) -> None:
        """Until no round is running (a round may start new ones: waited for too)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def stop(self) -> None:
        self.pending.clear()
        await cancel_and_wait(self._task)
