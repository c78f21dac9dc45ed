"""Background-task plumbing shared by every long-lived loop (listeners, flushers, monitors)."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("mqtt_guard")

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
    for task in tasks:
        if task is not None and task.done() and not task.cancelled():
            task.exception()
