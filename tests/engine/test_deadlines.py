"""engine/deadlines.py: connect_timeout's shared timer behaves like asyncio.timeout for the waits it guards."""

from __future__ import annotations

import asyncio
import time

import pytest

from mqtt_guard.engine.deadlines import Deadlines, Wheel


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


class _Item:
    """A keep-alive-like item: records when it was called; `again` re-adds it once that much later."""

    def __init__(self, wheel: Wheel, again: float = 0.0) -> None:
        self.wheel, self.again = wheel, again
        self.calls: list[float] = []
        self.slot = -1

    def due(self) -> None:
        now = asyncio.get_running_loop().time()
        self.calls.append(now)
        if self.again:
            self.slot = self.wheel.add(self, now + self.again)
            self.again = 0.0


def test_the_wheel_calls_each_item_within_a_tick_after_its_time_with_one_timer():
    async def body():
        loop = asyncio.get_running_loop()
        wheel = Wheel(loop, tick=0.02)
        start = loop.time()
        items = [_Item(wheel) for _ in range(300)]
        for i, item in enumerate(items):
            item.slot = wheel.add(item, start + 0.05 + (i % 3) * 0.03)
        assert wheel.size == 300 and len(wheel._slots) <= 4  # slots, not a timer per item
        await asyncio.sleep(0.25)
        for i, item in enumerate(items):
            due = start + 0.05 + (i % 3) * 0.03
            assert len(item.calls) == 1 and due <= item.calls[0] < due + 0.02 + 0.05  # (+ scheduling slack)
        assert wheel.size == 0 and not wheel._slots and wheel._timer is None  # idle: no timer left

    asyncio.run(body())


def test_a_removed_item_is_not_called_and_a_re_added_one_is_called_again():
    async def body():
        loop = asyncio.get_running_loop()
        wheel = Wheel(loop, tick=0.02)
        gone, back = _Item(wheel), _Item(wheel, again=0.05)
        gone.slot = wheel.add(gone, loop.time() + 0.04)
        back.slot = wheel.add(back, loop.time() + 0.04)
        wheel.remove(gone, gone.slot)
        wheel.remove(gone, gone.slot)  # twice: harmless
        assert wheel.size == 1
        await asyncio.sleep(0.2)
        assert gone.calls == [] and len(back.calls) == 2 and back.calls[1] - back.calls[0] >= 0.05
        assert wheel.size == 0

    asyncio.run(body())


def test_an_item_that_raises_does_not_stop_the_others_of_its_slot(caplog):
    class Boom(_Item):
        def due(self) -> None:
            raise RuntimeError("boom")

    async def body():
        loop = asyncio.get_running_loop()
        wheel = Wheel(loop, tick=0.02)
        when = loop.time() + 0.03
        bad, good = Boom(wheel), _Item(wheel)
        wheel.add(bad, when)
        wheel.add(good, when)
        await asyncio.sleep(0.15)
        assert len(good.calls) == 1 and wheel.size == 0

    asyncio.run(body())
    assert "keep-alive check failed" in caplog.text
