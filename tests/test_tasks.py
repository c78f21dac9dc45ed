"""mqtt_guard/tasks.py: closing a background loop ends it even when code it awaits swallows a cancel."""

from __future__ import annotations

import asyncio

from mqtt_guard.tasks import cancel_and_wait


def test_a_loop_whose_first_cancel_is_swallowed_still_ends():
    async def body():
        swallowed = []

        async def loop_like_the_heartbeat():
            while True:
                try:
                    await asyncio.sleep(10)  # stands for a library call that eats the CancelledError
                except asyncio.CancelledError:
                    if not swallowed:
                        swallowed.append(True)
                        continue
                    raise

        task = asyncio.create_task(loop_like_the_heartbeat())
        await asyncio.sleep(0.01)
        await asyncio.wait_for(cancel_and_wait(task), 5)
        assert task.cancelled() and swallowed == [True]

    asyncio.run(body())


def test_finished_and_failed_tasks_are_waited_for_quietly():
    async def body():
        async def fails():
            raise RuntimeError("logged by its own loop")

        done = asyncio.create_task(asyncio.sleep(0))
        failed = asyncio.create_task(fails())
        await asyncio.sleep(0.01)
        await cancel_and_wait(done, failed, None)
        assert done.done() and failed.done()

    asyncio.run(body())
