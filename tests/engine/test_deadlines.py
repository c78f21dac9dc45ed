"""engine/deadlines.py: connect_timeout's shared timer behaves like asyncio.timeout for the waits it guards."""

from __future__ import annotations

import asyncio
import time

import pytest

from mqtt_guard.engine.deadlines import Deadlines


def test_a_wait_past_its_deadline_gets_timeout_error_and_the_task_goes_on():
    async def body():
        d = Deadlines(0.02)
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            async with d.deadline(0.1):
                await asyncio.sleep(10)
        assert time.monotonic() - start >= 0.1
        assert asyncio.current_task().cancelling() == 0  # un-cancelled: later awaits are unaffected
        await asyncio.sleep(0.05)
        async with d.deadline(5):  # a wait that ends in time is left alone
            await asyncio.sleep(0.01)
        assert not d._due and not d._expired  # nothing left behind

    asyncio.run(body())


def test_an_outside_cancel_is_not_turned_into_a_timeout():
    async def body():
        d = Deadlines(0.02)

        async def waiter():
            async with d.deadline(10):
                await asyncio.sleep(10)

        task = asyncio.create_task(waiter())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not d._due and not d._expired

    asyncio.run(body())


def test_many_waits_share_one_timer_and_each_expires_on_its_own():
    async def body():
        d = Deadlines(0.02)
        results = []

        async def waiter(seconds, wait):
            try:
                async with d.deadline(seconds):
                    await asyncio.sleep(wait)
                results.append("done")
            except TimeoutError:
                results.append("timeout")

        await asyncio.gather(*(waiter(0.05, 1) for _ in range(50)), *(waiter(1, 0.01) for _ in range(50)))
        assert results.count("timeout") == 50 and results.count("done") == 50

    asyncio.run(body())
