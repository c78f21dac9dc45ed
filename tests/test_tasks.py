"""mqtt_guard/tasks.py: closing a background loop ends it even when code it awaits swallows a cancel."""

from __future__ import annotations

import asyncio

from mqtt_guard.tasks import Coalescer, cancel_and_wait


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


def test_coalescer_batches_what_arrives_during_a_round_and_retries_what_failed():
    async def body():
        rounds: list[set[str]] = []
        gate = asyncio.Event()
        failed_once: set[str] = set()

        async def work(batch: set[str]) -> set[str]:
            rounds.append(set(batch))
            await gate.wait()
            retry = {i for i in batch if i == "flaky" and i not in failed_once}
            failed_once.update(retry)
            return retry

        c: Coalescer[str] = Coalescer(work, "test", retry_after=0.01)
        c.add({"a"})
        await asyncio.sleep(0)
        c.add({"b", "flaky"})  # the first round is running: these wait for the next, together
        c.add({"c"})
        gate.set()
        await asyncio.wait_for(c.wait_idle(), 5)
        assert rounds == [{"a"}, {"b", "flaky", "c"}, {"flaky"}]
        c.add(set())  # nothing to do: no round
        await c.wait_idle()
        assert len(rounds) == 3
        await c.stop()

    asyncio.run(body())
